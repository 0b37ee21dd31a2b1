//! Backend connections: a keep-alive pool per shard, and one request/response on a
//! connection, read whole (aggregating endpoints) through `core::http1::ClientConn`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, StatusCode};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use sluice_core::config::{HostAddr, Scheme};
use sluice_core::http1::{ClientConn, ClientEvent, Limits};

/// Idle backend connections older than this are not reused (backends commonly close
/// idle connections after 60 to 120 s; reusing one they closed costs a retry).
const IDLE_EXPIRY: Duration = Duration::from_secs(50);
/// How long a resolved backend name is reused.
const DNS_TTL: Duration = Duration::from_secs(60);
const READ_CHUNK: usize = 16 * 1024;

/// An idle connection, its read buffer, and since when it is idle.
type Idle = (TcpStream, Vec<u8>, Instant);

/// The shard's backend connections and resolved names.
pub(crate) struct Pool {
    max_idle: usize,
    /// Idle connections with the read buffer they keep (so reuse allocates nothing).
    idle: RefCell<HashMap<String, Vec<Idle>>>,
    dns: RefCell<HashMap<String, (SocketAddr, Instant)>>,
}

impl Pool {
    pub(crate) fn new(max_idle: usize) -> Pool {
        Pool { max_idle, idle: RefCell::default(), dns: RefCell::default() }
    }

    pub(crate) fn take(&self, key: &str) -> Option<(TcpStream, Vec<u8>)> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(key)?;
        while let Some((stream, buf, since)) = list.pop() {
            if since.elapsed() < IDLE_EXPIRY {
                return Some((stream, buf));
            }
        }
        None
    }

    pub(crate) fn put(&self, key: &str, stream: TcpStream, mut buf: Vec<u8>) {
        let mut idle = self.idle.borrow_mut();
        let list = match idle.get_mut(key) {
            Some(list) => list,
            None => idle.entry(key.to_string()).or_default(),
        };
        if list.len() < self.max_idle {
            buf.clear();
            if buf.capacity() > 4 * READ_CHUNK {
                buf = Vec::with_capacity(READ_CHUNK);
            }
            list.push((stream, buf, Instant::now()));
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
    pool: Rc<PoolRef>,
    host: HostAddr,
    method: Method,
    request: Rc<Vec<u8>>,
    limits: Limits,
) -> Result<Answer, String> {
    if host.scheme == Scheme::Https {
        return Err("https backends need TLS, which this build does not have yet".into());
    }
    let key = pool_key(&host);
    let idempotent = matches!(method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE);
    if let Some(conn) = pool.get().take(&key) {
        match once(&pool, &key, conn, &method, request.clone(), limits, true).await {
            Ok(a) => return Ok(a),
            Err(f) if f.stale && idempotent => {}
            Err(f) => return Err(f.reason),
        }
    }
    let stream = connect(pool.get(), &host).await?;
    once(&pool, &key, (stream, Vec::with_capacity(READ_CHUNK)), &method, request, limits, false)
        .await
        .map_err(|f| f.reason)
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

/// A handle on the shard's pool that backend futures can own.
pub(crate) struct PoolRef(pub(crate) Rc<crate::Shard>);

impl PoolRef {
    fn get(&self) -> &Pool {
        &self.0.pool
    }
}

async fn once(
    pool: &PoolRef,
    key: &str,
    (mut stream, mut buf): (TcpStream, Vec<u8>),
    method: &Method,
    request: Rc<Vec<u8>>,
    limits: Limits,
    reused: bool,
) -> Result<Answer, Failure> {
    let (res, _) = stream.write_all(request).await;
    if let Err(e) = res {
        return Err(Failure { reason: format!("cannot send the request: {e}"), stale: reused });
    }
    let mut conn = ClientConn::new(method.clone(), limits);
    let mut pos = 0;
    let mut received = false;
    let mut head: Option<(StatusCode, HeaderMap)> = None;
    let mut body = Vec::new();
    let mut eof = false;
    loop {
        // Take every event the bytes at hand give; `End` may come on a call with none.
        let r =
            if eof && pos == buf.len() { conn.handle_eof().map(|e| (0, e)) } else { conn.handle_input(&buf[pos..]) };
        match r {
            Ok((n, ClientEvent::Response(r))) => {
                pos += n;
                head = Some((r.status, r.head.to_header_map()));
                continue;
            }
            Ok((n, ClientEvent::Data(d))) => {
                if body.len() + d.len() > limits.max_body_bytes as usize {
                    return Err(Failure { reason: "response body too large".into(), stale: false });
                }
                body.extend_from_slice(d);
                pos += n;
                continue;
            }
            Ok((n, ClientEvent::End(_))) => {
                pos += n;
                break;
            }
            Ok((_, ClientEvent::NeedMore)) if eof => {
                return Err(Failure {
                    reason: "the backend closed the connection before answering".into(),
                    stale: reused && !received,
                });
            }
            Ok((n, ClientEvent::NeedMore)) => pos += n,
            Ok((_, ClientEvent::Switched)) => {
                return Err(Failure { reason: "the backend switched protocols".into(), stale: false });
            }
            Err(e) => return Err(Failure { reason: format!("invalid response: {}", e.reason()), stale: false }),
        }
        if pos == buf.len() {
            buf.clear();
            pos = 0;
        } else if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.drain(..pos);
            pos = 0;
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, slice) = stream.read(buf.slice_mut(len..cap)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) => eof = true,
            Ok(_) => received = true,
            Err(e) => {
                return Err(Failure { reason: format!("cannot read the response: {e}"), stale: reused && !received });
            }
        }
    }
    let Some((status, headers)) = head else {
        return Err(Failure { reason: "no response".into(), stale: false });
    };
    if conn.reusable() && pos == buf.len() {
        pool.get().put(key, stream, buf);
    }
    Ok(Answer { status, headers, body })
}
