//! Backend sockets shared by the runtime's workers: idle ones kept for reuse and
//! resolved names (policies from `sluice_core::backend`), and opening a new one.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use sluice_core::backend::{DnsCache, IdlePool, Resolve};
use sluice_core::config::HostAddr;
use sluice_core::conn::Session;
use tokio::net::TcpStream;

/// Locks a mutex that only ever guards plain data: a panic elsewhere cannot leave it
/// half-changed, so a poisoned lock is used as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Locks are held for a map lookup, never across I/O.
#[derive(Debug)]
pub(crate) struct Pool {
    idle: Mutex<IdlePool<(TcpStream, Session)>>,
    dns: Mutex<DnsCache>,
}

impl Pool {
    pub(crate) fn new(max_idle: usize) -> Pool {
        Pool { idle: Mutex::new(IdlePool::new(max_idle)), dns: Mutex::default() }
    }

    pub(crate) fn take(&self, key: &str) -> Option<(TcpStream, Session)> {
        lock(&self.idle).take(key, Instant::now())
    }

    /// Keeps a socket idle (over the limit, it is closed outside the lock).
    pub(crate) fn put(&self, key: &str, stream: TcpStream, session: Session) {
        let over = lock(&self.idle).put(key, (stream, session), Instant::now());
        drop(over);
    }

    /// Opens a socket to `host`. Names go through tokio's resolver (the system one, on
    /// a blocking thread) and are cached; IP literals need nothing.
    pub(crate) async fn connect(&self, host: &HostAddr) -> Result<TcpStream, String> {
        let cached = lock(&self.dns).get(host, Instant::now());
        let addr: SocketAddr = match cached {
            Resolve::Ready(addr) => addr,
            Resolve::Lookup { name, port } => {
                let found = tokio::net::lookup_host((name.as_str(), port)).await;
                let addr = found
                    .map_err(|e| format!("cannot resolve {name}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("cannot resolve {name}: no address"))?;
                lock(&self.dns).insert(&name, port, addr, Instant::now());
                addr
            }
        };
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}
