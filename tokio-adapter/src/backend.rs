//! Backend sockets shared by the runtime's workers: idle ones kept for reuse (policy
//! from `sluice_core::call::backend`), names core asks for resolved through one DNS cache
//! (`sluice_core::resolve::dns`), SRV sets through one SRV cache (`sluice_core::resolve::srv`, queries
//! over a UDP socket), and dialling the address core gives.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use sluice_core::call::backend::IdlePool;
use sluice_core::conn::Session;
use sluice_core::resolve::dns::{DnsCache, DnsCacheConfig, DnsError, DnsStats, Lookup};
use sluice_core::resolve::srv::{ResolverConfig, SrvAnswer, SrvCache, SrvQuery, SrvSet};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;

type Answer = Result<Vec<IpAddr>, DnsError>;
type SrvFound = Result<Arc<SrvSet>, DnsError>;

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
    srv: Arc<Mutex<SrvCache<oneshot::Sender<SrvFound>>>>,
    resolver: Arc<ResolverConfig>,
}

impl Pool {
    pub(crate) fn new(max_idle: usize, dns: DnsCacheConfig, resolver: ResolverConfig) -> Pool {
        Pool {
            idle: Mutex::new(IdlePool::new(max_idle)),
            dns: Arc::new(Mutex::new(DnsCache::new(dns))),
            srv: Arc::default(),
            resolver: Arc::new(resolver),
        }
    }

    pub(crate) fn take(&self, key: &str) -> Option<(TcpStream, Session)> {
        lock(&self.idle).take(key, Instant::now())
    }

    /// Keeps a socket idle; what the pool hands back (this one over the limit,
    /// expired ones) is closed outside the lock.
    pub(crate) fn put(&self, key: &str, stream: TcpStream, session: Session) {
        let closed = lock(&self.idle).put(key, (stream, session), Instant::now());
        drop(closed);
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

    /// The SRV set of `name` (`"sd": "dns"`), through the cache: as
    /// [`Pool::resolve`], the query in its own task.
    pub(crate) async fn discover(&self, name: &str) -> SrvFound {
        let (tx, rx) = oneshot::channel();
        let found = lock(&self.srv).lookup(name, Instant::now(), || tx);
        if found.query() {
            let (srv, conf, name) = (self.srv.clone(), self.resolver.clone(), name.to_string());
            tokio::spawn(async move {
                let answer = ask_srv(&name, &conf).await;
                let (waiters, answer) = lock(&srv).resolved(&name, answer, Instant::now());
                for w in waiters {
                    let _ = w.send(answer.clone());
                }
            });
        }
        match found.answer() {
            Some(answer) => answer,
            None => rx.await.unwrap_or_else(|_| Err(DnsError::Failed("the SRV lookup was cancelled".to_string()))),
        }
    }
}

/// Asks `name`'s SRV records: core's query, each try on a new UDP socket connected
/// to the server asked (a fresh source port; an unreachable port fails the try at once).
async fn ask_srv(name: &str, conf: &ResolverConfig) -> Result<SrvAnswer, DnsError> {
    let mut q = SrvQuery::new(name, conf, Instant::now())?;
    let mut socket: Option<(UdpSocket, SocketAddr)> = None;
    let mut buf = vec![0u8; 1500];
    loop {
        if let Some(answer) = q.result() {
            return answer;
        }
        if let Some(t) = q.poll_transmit() {
            socket = None;
            let local = t.local();
            let sent = async {
                let s = UdpSocket::bind(local).await?;
                s.connect(t.to).await?;
                s.send(&t.payload).await?;
                Ok::<_, std::io::Error>(s)
            };
            match sent.await {
                Ok(s) => socket = Some((s, t.to)),
                Err(e) => q.handle_failed(&e.to_string(), Instant::now()),
            }
            continue;
        }
        let (Some(deadline), Some((s, from))) = (q.poll_timeout(), socket.as_ref()) else {
            // Not reached (a try always has its socket); moving on keeps the loop finite.
            q.handle_failed("no socket", Instant::now());
            continue;
        };
        match tokio::time::timeout_at(deadline.into(), s.recv(&mut buf)).await {
            Ok(Ok(n)) => q.handle_datagram(*from, &buf[..n], Instant::now()),
            Ok(Err(e)) => q.handle_failed(&e.to_string(), Instant::now()),
            Err(_) => q.handle_timeout(Instant::now()),
        }
    }
}

/// A new socket to `addr` (a backend, its proxy, or a tunnel's destination: core
/// resolved the name, if there was one), with Nagle off.
pub(crate) async fn dial(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
