//! Backend connections: a keep-alive pool per shard, and one request/response on a
//! connection, read whole (aggregating endpoints) through `core::http1::ClientConn`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, StatusCode};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use sluice_core::config::{HostAddr, Scheme};
use sluice_core::http1::{ClientConn, ClientEvent, Limits};

use crate::Shard;
use crate::socket::{Io, READ_CHUNK, Read};

/// Idle backend connections older than this are not reused (backends commonly close
/// idle connections after 60 to 120 s; reusing one they closed costs a retry).
const IDLE_EXPIRY: Duration = Duration::from_secs(50);
/// How long a resolved backend name is reused.
const DNS_TTL: Duration = Duration::from_secs(60);

/// The shard's backend connections and resolved names.
pub(crate) struct Pool {
    max_idle: usize,
    /// Idle connections with the read buffer they keep (so reuse allocates nothing),
    /// and since when they are idle.
    idle: RefCell<HashMap<String, Vec<(Io, Instant)>>>,
    dns: RefCell<HashMap<String, (SocketAddr, Instant)>>,
}

impl Pool {
    pub(crate) fn new(max_idle: usize) -> Pool {
        Pool { max_idle, idle: RefCell::default(), dns: RefCell::default() }
    }

    pub(crate) fn take(&self, key: &str) -> Option<Io> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(key)?;
        while let Some((io, since)) = list.pop() {
            if since.elapsed() < IDLE_EXPIRY {
                return Some(io);
            }
        }
        None
    }

    /// Keeps a connection whose last response was read whole.
    pub(crate) fn put(&self, key: &str, mut io: Io) {
        let mut idle = self.idle.borrow_mut();
        let list = match idle.get_mut(key) {
            Some(list) => list,
            None => idle.entry(key.to_string()).or_default(),
        };
        if list.len() < self.max_idle {
            io.buf.clear();
            io.pos = 0;
            if io.buf.capacity() > 4 * READ_CHUNK {
                io.buf = Vec::with_capacity(READ_CHUNK);
            }
            list.push((io, Instant::now()));
        }
    }

    /// Resolves a backend host. IP literals need nothing; names are resolved with the
    /// system resolver (blocking: the first request to a name pays for it) and cached
    /// for a minute. A non-blocking DNS cache comes with the forward proxy work.
    fn resolve(&self, host: &HostAddr) -> Result<SocketAddr, String> {
        let name = host.host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, host.port));
        }
        let key = format!("{name}:{}", host.port);
        if let Some((addr, at)) = self.dns.borrow().get(&key)
            && at.elapsed() < DNS_TTL
        {
            return Ok(*addr);
        }
        let addr = (name, host.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {name}: {e}"))?
            .next()
            .ok_or_else(|| format!("cannot resolve {name}: no address"))?;
        self.dns.borrow_mut().insert(key, (addr, Instant::now()));
        Ok(addr)
    }
}

/// A whole backend response.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

/// Why one attempt failed, and whether the request may be retried on a fresh
/// connection (nothing came back on a reused one: it was stale).
struct Failure {
    reason: String,
    stale: bool,
}

/// The pool key of a backend host.
pub(crate) fn pool_key(host: &HostAddr) -> String {
    format!("{}://{}:{}", host.scheme.as_str(), host.host, host.port)
}

/// Makes one backend call: `request` is the head and body, already written out.
/// A reused connection that turns out stale is retried once on a fresh one, for
/// idempotent methods only.
pub(crate) async fn call(
    shard: Rc<Shard>,
    host: HostAddr,
    method: Method,
    request: Rc<Vec<u8>>,
    limits: Limits,
) -> Result<Answer, String> {
    let pool = &shard.pool;
    let key = pool_key(&host);
    let idempotent = matches!(method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE);
    if let Some(io) = pool.take(&key) {
        match once(pool, &key, io, &method, request.clone(), limits, true).await {
            Ok(a) => return Ok(a),
            Err(f) if f.stale && idempotent => {}
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
    let (res, _) = io.stream.write_all(request).await;
    if let Err(e) = res {
        return Err(Failure { reason: format!("cannot send the request: {e}"), stale: reused });
    }
    let mut conn = ClientConn::new(method.clone(), limits);
    let mut received = false;
    let mut head: Option<(StatusCode, HeaderMap)> = None;
    let mut body = Vec::new();
    let mut eof = false;
    loop {
        // Take every event the bytes at hand give; `End` may come on a call with none.
        let r = if eof && io.pending().is_empty() {
            conn.handle_eof().map(|e| (0, e))
        } else {
            conn.handle_input(io.pending())
        };
        match r {
            Ok((n, ClientEvent::Response(r))) => {
                io.pos += n;
                head = Some((r.status, r.head.to_header_map()));
                continue;
            }
            Ok((n, ClientEvent::Data(d))) => {
                if body.len() + d.len() > limits.max_body_bytes as usize {
                    return Err(Failure { reason: "response body too large".into(), stale: false });
                }
                body.extend_from_slice(d);
                io.pos += n;
                continue;
            }
            Ok((n, ClientEvent::End(_))) => {
                io.pos += n;
                break;
            }
            Ok((_, ClientEvent::NeedMore)) if eof => {
                return Err(Failure {
                    reason: "the backend closed the connection before answering".into(),
                    stale: reused && !received,
                });
            }
            Ok((n, ClientEvent::NeedMore)) => io.pos += n,
            Ok((_, ClientEvent::Switched)) => {
                return Err(Failure { reason: "the backend switched protocols".into(), stale: false });
            }
            Err(e) => return Err(Failure { reason: format!("invalid response: {}", e.reason()), stale: false }),
        }
        // No read timeout here: the endpoint deadline drops this future.
        match io.read(Duration::ZERO, None).await {
            Read::Eof => eof = true,
            Read::Data => received = true,
            Read::Failed(e) => {
                return Err(Failure { reason: format!("cannot read the response: {e}"), stale: reused && !received });
            }
            Read::TimedOut | Read::Stopped => {
                return Err(Failure { reason: "cannot read the response".into(), stale: false });
            }
        }
    }
    let Some((status, headers)) = head else {
        return Err(Failure { reason: "no response".into(), stale: false });
    };
    if conn.reusable() && io.pending().is_empty() {
        pool.put(key, io);
    }
    Ok(Answer { status, headers, body })
}
