//! Backend sockets shared by the runtime's workers: idle ones kept for reuse (policy
//! from `sluice_core::backend`), names resolved through one DNS cache
//! (`sluice_core::dns`), and opening a new one.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use sluice_core::backend::IdlePool;
use sluice_core::config::HostAddr;
use sluice_core::conn::Session;
use sluice_core::dns::{self, DnsCache, DnsCacheConfig, DnsError, DnsStats, Lookup};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

type Answer = Result<Vec<IpAddr>, DnsError>;

/// Locks a mutex that only ever guards plain data: a panic elsewhere cannot leave it
/// half-changed, so a poisoned lock is used as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Locks are held for a map lookup, never across I/O.
#[derive(Debug)]
pub(crate) struct Pool {
    idle: Mutex<IdlePool<(TcpStream, Session)>>,
    dns: Arc<Mutex<DnsCache<oneshot::Sender<Answer>>>>,
}

impl Pool {
    pub(crate) fn new(max_idle: usize, dns: DnsCacheConfig) -> Pool {
        Pool { idle: Mutex::new(IdlePool::new(max_idle)), dns: Arc::new(Mutex::new(DnsCache::new(dns))) }
    }

    pub(crate) fn take(&self, key: &str) -> Option<(TcpStream, Session)> {
        lock(&self.idle).take(key, Instant::now())
    }

    /// Keeps a socket idle (over the limit, it is closed outside the lock).
    pub(crate) fn put(&self, key: &str, stream: TcpStream, session: Session) {
        let over = lock(&self.idle).put(key, (stream, session), Instant::now());
        drop(over);
    }

    /// The DNS cache's counters now (names unused for `host_ttl` dropped first).
    pub(crate) fn dns_stats(&self) -> DnsStats {
        let mut dns = lock(&self.dns);
        dns.sweep(Instant::now());
        dns.stats()
    }

    /// Every address of `name`, through the cache: a fresh answer at once, a query
    /// under way joined, a new one started (tokio's resolver: the system's, on a
    /// blocking thread) in its own task, so a connection that goes away while it waits
    /// leaves the others their answer.
    pub(crate) async fn resolve(&self, name: &str) -> Answer {
        let (tx, rx) = oneshot::channel();
        let found = lock(&self.dns).lookup(name, Instant::now(), || tx);
        if found.query() {
            self.query(name);
        }
        match found {
            Lookup::Ready { addrs, .. } => Ok(addrs),
            Lookup::Queued { .. } => {
                rx.await.unwrap_or_else(|_| Err(DnsError::Failed("the lookup was cancelled".to_string())))
            }
            Lookup::Overflow => Err(DnsError::Overflow),
        }
    }

    fn query(&self, name: &str) {
        let (dns, name) = (self.dns.clone(), name.to_string());
        tokio::spawn(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await;
            let answer = found.map(|it| it.map(|a| a.ip()).collect()).map_err(|e| e.to_string());
            let (waiters, answer) = lock(&dns).resolved(&name, answer, Instant::now());
            for w in waiters {
                let _ = w.send(answer.clone());
            }
        });
    }

    /// Opens a socket to `host`: an IP literal as it is, a name through the cache (its
    /// first address, in the resolver's order).
    pub(crate) async fn connect(&self, host: &HostAddr) -> Result<TcpStream, String> {
        let ip = match dns::ip_literal(&host.host) {
            Ok(ip) => ip,
            Err(name) => dns::first_address(name, self.resolve(name).await)?,
        };
        let addr = SocketAddr::new(ip, host.port);
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}
