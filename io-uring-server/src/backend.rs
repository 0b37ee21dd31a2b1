//! The shard's backend sockets: idle ones kept for reuse (`sluice_core::call::backend`'s
//! policy), names core asks for resolved through the shard's DNS cache
//! (`sluice_core::resolve::dns`), SRV sets through its SRV cache (`sluice_core::resolve::srv`, queries
//! over a UDP socket), and dialling the address core gives.

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use monoio::net::TcpStream;
use monoio::net::udp::UdpSocket;
use sluice_core::call::backend::IdlePool;
use sluice_core::conn::Session;
use sluice_core::resolve::dns::{DnsCache, DnsCacheConfig, DnsError, DnsStats, Lookup};
use sluice_core::resolve::srv::{ResolverConfig, SrvAnswer, SrvCache, SrvQuery, SrvSet};

type Answer = Result<Vec<IpAddr>, DnsError>;
type SrvFound = Result<Arc<SrvSet>, DnsError>;

/// A connection waiting for a name's answer (one per lookup that found a query under
/// way or started one).
pub(crate) struct Waiter<A> {
    answer: RefCell<Option<A>>,
    waker: RefCell<Option<Waker>>,
}

impl<A> Default for Waiter<A> {
    fn default() -> Self {
        Waiter { answer: RefCell::new(None), waker: RefCell::new(None) }
    }
}

impl<A> Waiter<A> {
    fn wake(&self, answer: A) {
        *self.answer.borrow_mut() = Some(answer);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    async fn wait(&self) -> A {
        poll_fn(|cx| match self.answer.borrow_mut().take() {
            Some(answer) => Poll::Ready(answer),
            None => {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// A backend socket as a connection holds it: boxed, so that the future of each read
/// and write moves 8 bytes for it, not the stream's 80 (see `conn::Job`).
pub(crate) type BackendStream = Box<TcpStream>;

/// Idle backend sockets, resolved names and SRV sets, one per shard (no lock).
pub(crate) struct Pool {
    idle: RefCell<IdlePool<(BackendStream, Session)>>,
    dns: Rc<RefCell<DnsCache<Rc<Waiter<Answer>>>>>,
    srv: Rc<RefCell<SrvCache<Rc<Waiter<SrvFound>>>>>,
    resolver: Rc<ResolverConfig>,
}

impl Pool {
    pub(crate) fn new(max_idle: usize, dns: DnsCacheConfig, resolver: ResolverConfig) -> Pool {
        Pool {
            idle: RefCell::new(IdlePool::new(max_idle)),
            dns: Rc::new(RefCell::new(DnsCache::new(dns))),
            srv: Rc::default(),
            resolver: Rc::new(resolver),
        }
    }

    pub(crate) fn take(&self, key: &str) -> Option<(BackendStream, Session)> {
        self.idle.borrow_mut().take(key, Instant::now())
    }

    /// Keeps a socket idle; what the pool hands back (this one over the limit,
    /// expired ones) is closed.
    pub(crate) fn put(&self, key: &str, stream: BackendStream, session: Session) {
        drop(self.idle.borrow_mut().put(key, (stream, session), Instant::now()));
    }

    /// The DNS cache's counters now (names unused for `host_ttl` dropped first).
    pub(crate) fn dns_stats(&self) -> DnsStats {
        let mut dns = self.dns.borrow_mut();
        dns.sweep(Instant::now());
        dns.stats()
    }

    /// Every address of `name`, through the shard's cache: a fresh answer at once, a
    /// query under way joined, a new one started on the process's lookup threads
    /// (never on the shard). The query runs in its own task, so a connection that
    /// goes away while it waits leaves the others their answer.
    pub(crate) async fn resolve(&self, name: &str) -> Answer {
        let waiter = Rc::new(Waiter::default());
        let found = self.dns.borrow_mut().lookup(name, Instant::now(), || waiter.clone());
        if found.query() {
            self.query(name);
        }
        match found {
            Lookup::Ready { addrs, .. } => Ok(addrs),
            Lookup::Queued { .. } => waiter.wait().await,
            Lookup::Overflow => Err(DnsError::Overflow),
        }
    }

    fn query(&self, name: &str) {
        let (dns, name) = (self.dns.clone(), name.to_string());
        monoio::spawn(async move {
            // The system resolver, on the process's lookup threads.
            let asked = name.clone();
            let found = monoio::blocking::spawn_blocking(move || {
                (asked.as_str(), 0).to_socket_addrs().map(|it| it.map(|a| a.ip()).collect::<Vec<_>>())
            })
            .await;
            let answer = match found {
                Ok(Ok(addrs)) => Ok(addrs),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the lookup was cancelled".to_string()),
            };
            let (waiters, answer) = dns.borrow_mut().resolved(&name, answer, Instant::now());
            for w in waiters {
                w.wake(answer.clone());
            }
        });
    }

    /// The SRV set of `name` (`"sd": "dns"`), through the shard's cache: as
    /// [`Pool::resolve`], the query in its own task.
    pub(crate) async fn discover(&self, name: &str) -> SrvFound {
        let waiter = Rc::new(Waiter::default());
        let found = self.srv.borrow_mut().lookup(name, Instant::now(), || waiter.clone());
        if found.query() {
            let (srv, conf, name) = (self.srv.clone(), self.resolver.clone(), name.to_string());
            monoio::spawn(async move {
                let answer = ask_srv(&name, &conf).await;
                let (waiters, answer) = srv.borrow_mut().resolved(&name, answer, Instant::now());
                for w in waiters {
                    w.wake(answer.clone());
                }
            });
        }
        match found.answer() {
            Some(answer) => answer,
            None => waiter.wait().await,
        }
    }
}

/// Asks `name`'s SRV records: core's query, each try on a new UDP socket connected
/// to the server asked (a fresh source port; an unreachable port fails the try at once).
async fn ask_srv(name: &str, conf: &ResolverConfig) -> Result<SrvAnswer, DnsError> {
    let mut q = SrvQuery::new(name, conf, Instant::now())?;
    let mut socket: Option<(UdpSocket, SocketAddr)> = None;
    loop {
        if let Some(answer) = q.result() {
            return answer;
        }
        if let Some(t) = q.poll_transmit() {
            socket = None;
            let local = t.local();
            let opened = match UdpSocket::bind(local) {
                Ok(s) => s.connect(t.to).await.map(|()| s),
                Err(e) => Err(e),
            };
            let sent = match opened {
                Ok(s) => s.send(t.payload).await.0.map(|_| s),
                Err(e) => Err(e),
            };
            match sent {
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
        let wait = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(wait, s.recv(vec![0u8; 1500])).await {
            Ok((Ok(n), buf)) => q.handle_datagram(*from, &buf[..n], Instant::now()),
            Ok((Err(e), _)) => q.handle_failed(&e.to_string(), Instant::now()),
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
