//! The shard's backend sockets: idle ones kept for reuse and resolved names (both
//! policies are `sluice_core::backend`'s), and opening a new one.

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Instant;

use monoio::net::TcpStream;
use sluice_core::backend::{DnsCache, IdlePool, Resolve};
use sluice_core::config::HostAddr;
use sluice_core::conn::Session;

/// Idle backend sockets and resolved names, one per shard (no lock).
pub(crate) struct Pool {
    idle: RefCell<IdlePool<(TcpStream, Session)>>,
    dns: RefCell<DnsCache>,
}

impl Pool {
    pub(crate) fn new(max_idle: usize) -> Pool {
        Pool { idle: RefCell::new(IdlePool::new(max_idle)), dns: RefCell::default() }
    }

    pub(crate) fn take(&self, key: &str) -> Option<(TcpStream, Session)> {
        self.idle.borrow_mut().take(key, Instant::now())
    }

    /// Keeps a socket idle (over the limit, it is closed).
    pub(crate) fn put(&self, key: &str, stream: TcpStream, session: Session) {
        drop(self.idle.borrow_mut().put(key, (stream, session), Instant::now()));
    }

    /// IP literals need nothing; names are resolved with the system resolver
    /// (blocking: the first request to a name pays for it) and cached. A non-blocking
    /// DNS cache comes with the forward proxy work.
    fn resolve(&self, host: &HostAddr) -> Result<SocketAddr, String> {
        let lookup = self.dns.borrow().get(host, Instant::now());
        let (name, port) = match lookup {
            Resolve::Ready(addr) => return Ok(addr),
            Resolve::Lookup { name, port } => (name, port),
        };
        let addr = (name.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {name}: {e}"))?
            .next()
            .ok_or_else(|| format!("cannot resolve {name}: no address"))?;
        self.dns.borrow_mut().insert(&name, port, addr, Instant::now());
        Ok(addr)
    }

    /// A new socket to a backend host.
    pub(crate) async fn connect(&self, host: &HostAddr) -> Result<TcpStream, String> {
        let addr = self.resolve(host)?;
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}
