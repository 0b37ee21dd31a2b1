//! Backend connections: the server's keep-alive pool and DNS cache (policy in
//! `sluice_core::backend`), and one request/response on a connection.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use http::Method;
use sluice_core::backend::{Answer, DnsCache, Failure, Fetch, IdlePool, Progress, Resolve, may_retry, pool_key};
use sluice_core::config::{HostAddr, Scheme};
use sluice_core::http1::Limits;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::socket::{Io, READ_CHUNK, Read};

/// Locks a mutex that only ever guards plain data: a panic elsewhere cannot leave it
/// half-changed, so a poisoned lock is used as it is.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Idle backend connections (each with its read buffer) and resolved names, shared by
/// the runtime's worker threads. Locks are held for a map lookup, never across I/O.
#[derive(Debug)]
pub(crate) struct Pool {
    idle: Mutex<IdlePool<Io>>,
    dns: Mutex<DnsCache>,
}

impl Pool {
    pub(crate) fn new(max_idle: usize) -> Pool {
        Pool { idle: Mutex::new(IdlePool::new(max_idle)), dns: Mutex::default() }
    }

    pub(crate) fn take(&self, key: &str) -> Option<Io> {
        lock(&self.idle).take(key, Instant::now())
    }

    /// Keeps a connection whose last response was read whole (over the limit, it closes).
    pub(crate) fn put(&self, key: &str, mut io: Io) {
        io.buf.clear();
        io.buf.shrink_idle(READ_CHUNK, 4 * READ_CHUNK);
        let over = lock(&self.idle).put(key, io, Instant::now());
        drop(over);
    }

    /// IP literals need nothing; names go through tokio's resolver (the system one, on
    /// a blocking thread) and are cached.
    async fn resolve(&self, host: &HostAddr) -> Result<SocketAddr, String> {
        let lookup = lock(&self.dns).get(host, Instant::now());
        let (name, port) = match lookup {
            Resolve::Ready(addr) => return Ok(addr),
            Resolve::Lookup { name, port } => (name, port),
        };
        let addr = tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {name}: {e}"))?
            .next()
            .ok_or_else(|| format!("cannot resolve {name}: no address"))?;
        lock(&self.dns).insert(&name, port, addr, Instant::now());
        Ok(addr)
    }
}

/// Makes one backend call: `request` is the head and body, already written out.
/// A reused connection that turns out stale is retried once on a fresh one when
/// `may_retry` allows.
pub(crate) async fn call(
    pool: &Pool,
    host: &HostAddr,
    method: &Method,
    request: &[u8],
    limits: Limits,
) -> Result<Answer, String> {
    let key = pool_key(host);
    if let Some(io) = pool.take(&key) {
        match once(pool, &key, io, method, request, limits, true).await {
            Ok(a) => return Ok(a),
            Err(f) if may_retry(method, &f, false) => {}
            Err(f) => return Err(f.reason),
        }
    }
    let io = Io::new(connect(pool, host).await?, READ_CHUNK);
    once(pool, &key, io, method, request, limits, false).await.map_err(|f| f.reason)
}

/// A fresh connection to a backend host (plain HTTP).
pub(crate) async fn connect(pool: &Pool, host: &HostAddr) -> Result<TcpStream, String> {
    if host.scheme == Scheme::Https {
        return Err("https backends need TLS, which this build does not have yet".into());
    }
    let addr = pool.resolve(host).await?;
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn once(
    pool: &Pool,
    key: &str,
    mut io: Io,
    method: &Method,
    request: &[u8],
    limits: Limits,
    reused: bool,
) -> Result<Answer, Failure> {
    let mut fetch = Fetch::new(method.clone(), limits, reused);
    if let Err(e) = io.stream.write_all(request).await {
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
