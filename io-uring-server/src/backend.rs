//! Backend connections: the shard's keep-alive pool and DNS cache (policy in
//! `sluice_core::backend`), and one request/response on a connection.

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Instant;

use http::Method;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use sluice_core::backend::{Answer, DnsCache, Failure, Fetch, IdlePool, Progress, Resolve, may_retry, pool_key};
use sluice_core::config::{HostAddr, Scheme};
use sluice_core::http1::Limits;

use crate::Shard;
use crate::socket::{Io, READ_CHUNK, Read};

/// The shard's idle backend connections (each with the read buffer it keeps, so reuse
/// allocates nothing) and resolved names.
pub(crate) struct Pool {
    idle: RefCell<IdlePool<Io>>,
    dns: RefCell<DnsCache>,
}

impl Pool {
    pub(crate) fn new(max_idle: usize) -> Pool {
        Pool { idle: RefCell::new(IdlePool::new(max_idle)), dns: RefCell::default() }
    }

    pub(crate) fn take(&self, key: &str) -> Option<Io> {
        self.idle.borrow_mut().take(key, Instant::now())
    }

    /// Keeps a connection whose last response was read whole (over the limit, it closes).
    pub(crate) fn put(&self, key: &str, mut io: Io) {
        io.buf.clear();
        io.buf.shrink_idle(READ_CHUNK, 4 * READ_CHUNK);
        drop(self.idle.borrow_mut().put(key, io, Instant::now()));
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
}

/// Makes one backend call: `request` is the head and body, already written out.
/// A reused connection that turns out stale is retried once on a fresh one when
/// `may_retry` allows.
pub(crate) async fn call(
    shard: Rc<Shard>,
    host: HostAddr,
    method: Method,
    request: Rc<Vec<u8>>,
    limits: Limits,
) -> Result<Answer, String> {
    let pool = &shard.pool;
    let key = pool_key(&host);
    if let Some(io) = pool.take(&key) {
        match once(pool, &key, io, &method, request.clone(), limits, true).await {
            Ok(a) => return Ok(a),
            Err(f) if may_retry(&method, &f, false) => {}
            Err(f) => return Err(f.reason),
        }
    }
    let io = Io::new(connect(pool, &host).await?, READ_CHUNK);
    once(pool, &key, io, &method, request, limits, false).await.map_err(|f| f.reason)
}

/// A fresh connection to a backend host (plain HTTP).
pub(crate) async fn connect(pool: &Pool, host: &HostAddr) -> Result<TcpStream, String> {
    if host.scheme == Scheme::Https {
        return Err("https backends need TLS, which this build does not have yet".into());
    }
    let addr = pool.resolve(host)?;
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn once(
    pool: &Pool,
    key: &str,
    mut io: Io,
    method: &Method,
    request: Rc<Vec<u8>>,
    limits: Limits,
    reused: bool,
) -> Result<Answer, Failure> {
    let mut fetch = Fetch::new(method.clone(), limits, reused);
    let (res, _) = io.stream.write_all(request).await;
    if let Err(e) = res {
        return Err(fetch.write_failed(e));
    }
    match read_response(&mut io, &mut fetch).await? {
        Progress::Done(answer) => {
            if fetch.reusable() && io.pending().is_empty() {
                pool.put(key, io);
            }
            Ok(answer)
        }
        _ => Err(Failure::new("unexpected response")),
    }
}

/// Feeds `fetch` until it has the response (or, streaming, its head). No read timeout
/// here: the endpoint deadline drops this future.
pub(crate) async fn read_response(io: &mut Io, fetch: &mut Fetch) -> Result<Progress, Failure> {
    loop {
        let (n, progress) = fetch.handle_input(io.pending())?;
        io.buf.consume(n);
        if !matches!(progress, Progress::NeedMore) {
            return Ok(progress);
        }
        match io.read(None, None).await {
            Read::Data => {}
            Read::Eof => return fetch.handle_eof(),
            Read::Failed(e) => return Err(fetch.read_failed(e)),
            Read::TimedOut | Read::Stopped => return Err(fetch.read_failed("interrupted")),
        }
    }
}
