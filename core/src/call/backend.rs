//! Backend connection policy, one for every driver: the key an idle connection is
//! pooled under ([`pool_key`]), which idle connection is reused ([`IdlePool`]), when a
//! failed call may be sent again, and reading one response off a backend connection
//! ([`Fetch`]). Names are resolved through [`crate::resolve::dns`].
//!
//! Sans-IO like the rest of `core`: the drivers own the sockets and the resolver and
//! pass `now` in; the pool here holds whatever connection type the driver has.

use std::collections::HashMap;
use std::fmt::Display;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::call::proxy::Proxy;
use crate::config::HostAddr;
use crate::http1::{BodyLength, ClientConn, ClientEvent, Error, Framing, Head, HeaderFields, Limits, ServerConn};
use crate::tls::TlsTarget;

/// Idle backend connections older than this are not reused: backends commonly close
/// idle connections after 60 to 120 s, and reusing one they closed costs a retry.
pub const IDLE_EXPIRY: Duration = Duration::from_secs(50);

/// The pool key of a backend connection: everything that decides which connection a
/// call opens, so that an idle connection is only ever reused by a call that would
/// have opened the same one.
///
/// - Straight to a plain `http://` origin: its scheme, host and port
///   (`http://api:8080`).
/// - Straight to an `https://` origin: the same, the TLS profile it was made under
///   ([`crate::tls::TlsProfile::id`]: verification on or off, the roots, the client
///   certificate, versions, cipher suites, ALPN) and the name it was verified for
///   (SNI): `https://api:443 tls#3 sni api`.
/// - A plain request through a proxy: the proxy and the credentials it was given
///   ([`Proxy::pool_key`], `proxy corp:3128` or `proxy corp:3128 as 5f0c...`): such
///   connections carry absolute-form requests for any origin, so every origin behind
///   that proxy with those credentials shares them.
/// - An `https://` origin through a proxy (a `CONNECT` tunnel, TLS inside): the
///   origin's key as above, then `via` and the proxy's key.
///
/// A host name is dialled through the DNS cache: its connections are keyed by the
/// name, as every HTTP client keys them. The forward proxy keys its own by the vetted
/// address ([`forward_pool_key`]), apart from every gateway backend.
pub fn pool_key(origin: &HostAddr, tls: Option<&TlsTarget>, via: Option<&Proxy>) -> String {
    use std::fmt::Write;
    let mut key = match (tls, via) {
        (None, Some(proxy)) => return proxy.pool_key.clone(),
        _ => format!("{}://{}:{}", origin.scheme.as_str(), origin.host, origin.port),
    };
    if let Some(t) = tls {
        let _ = write!(key, " tls#{} sni {}", t.profile.id(), t.server_name.to_str());
    }
    if let Some(proxy) = via {
        let _ = write!(key, " via {}", proxy.pool_key);
    }
    key
}

/// The pool key of a forward-proxy connection to the vetted address `addr`: never
/// shared with the gateway's backends.
pub fn forward_pool_key(addr: &std::net::SocketAddr) -> String {
    format!("forward {addr}")
}

/// How often [`IdlePool::put`] sweeps every key for expired connections.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Idle keep-alive connections by [`pool_key`], at most `max_idle` per key
/// (`max_idle_connections_per_host`), newest reused first.
///
/// Expired connections are dropped (closed) when met under their key and, at most
/// every 10 s, by a sweep of every key on [`IdlePool::put`] (handed back to close
/// outside the caller's lock), which also forgets keys left with none: a forward proxy pools by destination, so without it every
/// destination ever reached would keep its key, and its last idle sockets, for good.
/// Keys hash with foldhash (seeded per process), not SipHash: the lookup is on every
/// backend call.
#[derive(Debug)]
pub struct IdlePool<C> {
    max_idle: usize,
    idle: HashMap<String, Vec<(C, Instant)>, foldhash::fast::RandomState>,
    /// The last sweep (or the first put).
    swept: Option<Instant>,
}

impl<C> IdlePool<C> {
    pub fn new(max_idle: usize) -> IdlePool<C> {
        IdlePool { max_idle, idle: HashMap::default(), swept: None }
    }

    /// The newest idle connection for `key` that has not expired; expired ones met on
    /// the way are dropped (closed).
    pub fn take(&mut self, key: &str, now: Instant) -> Option<C> {
        let list = self.idle.get_mut(key)?;
        while let Some((conn, since)) = list.pop() {
            if now.saturating_duration_since(since) < IDLE_EXPIRY {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a connection whose last response was read whole. Hands back the
    /// connections for the caller to close (outside any lock it holds on the pool):
    /// this one when its key already has `max_idle` that have not expired, and any a
    /// sweep or its key's list found expired. Empty: kept, nothing to close.
    pub fn put(&mut self, key: &str, conn: C, now: Instant) -> Vec<C> {
        let mut closed = Vec::new();
        match self.swept {
            Some(at) if now.saturating_duration_since(at) < SWEEP_EVERY => {}
            Some(_) => {
                self.sweep(now, &mut closed);
                self.swept = Some(now);
            }
            None => self.swept = Some(now),
        }
        let list = match self.idle.get_mut(key) {
            Some(list) => list,
            None => self.idle.entry(key.to_string()).or_default(),
        };
        // Expired ones do not count toward the limit.
        drain_expired(list, now, &mut closed);
        if list.len() >= self.max_idle {
            closed.push(conn);
        } else {
            list.push((conn, now));
        }
        closed
    }

    /// Moves every expired connection to `closed`, forgets every key left with none,
    /// and gives back the map's room when it is mostly empty.
    fn sweep(&mut self, now: Instant, closed: &mut Vec<C>) {
        self.idle.retain(|_, list| {
            drain_expired(list, now, closed);
            !list.is_empty()
        });
        if self.idle.capacity() > 4 * self.idle.len().max(16) {
            self.idle.shrink_to_fit();
        }
    }

    /// Keys held (each with at least one connection once swept).
    pub fn keys(&self) -> usize {
        self.idle.len()
    }

    /// Idle connections held, all keys together.
    pub fn len(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Moves the expired connections at the front of `list` (oldest first) to `closed`.
fn drain_expired<C>(list: &mut Vec<(C, Instant)>, now: Instant, closed: &mut Vec<C>) {
    let fresh = list.iter().position(|(_, since)| now.saturating_duration_since(*since) < IDLE_EXPIRY);
    closed.extend(list.drain(..fresh.unwrap_or(list.len())).map(|(c, _)| c));
}

/// Whether a call that failed may be sent again on a fresh connection: only when it
/// failed on a reused connection before anything came back (the backend had closed
/// it while idle), the method is idempotent (RFC 9110 9.2.2), and the body is still at
/// hand (not streamed from the client).
pub fn may_retry(method: &Method, failure: &Failure, body_streamed: bool) -> bool {
    failure.stale
        && !body_streamed
        && matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
        )
}

/// Why a backend call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    /// Nothing came back on a reused connection: it was most likely closed while idle.
    pub stale: bool,
}

impl Failure {
    /// A failure that a retry would not mend.
    pub fn new(reason: impl Into<String>) -> Failure {
        Failure { reason: reason.into(), stale: false }
    }
}

/// A whole backend response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    /// As parsed; a map only after its body was inflated (the coding's fields gone).
    pub headers: HeaderFields,
    pub body: Vec<u8>,
}

/// The head of a response whose body is streamed through ([`Fetch::streaming`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamedHead {
    pub status: StatusCode,
    /// The head as received: written on to the client from its spans
    /// ([`crate::http1::ServerConn::write_passthrough_head`]), no header map built.
    pub head: Head,
    pub framing: Framing,
}

impl StreamedHead {
    /// How the body is framed towards the client: the backend's length when it gave
    /// one, chunked otherwise (the server codec writes no body at all where the
    /// status or the request method allows none).
    pub fn body_length(&self) -> BodyLength {
        match self.framing {
            Framing::Length(n) => BodyLength::Known(n),
            _ => BodyLength::Unknown,
        }
    }
}

/// What [`pump_body`] got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// The input is used up: write `out` to the client, read more from the backend.
    NeedMore,
    /// `out` holds at least `flush_at` bytes: write it, then call again.
    Full,
    /// The body ended: finish the response.
    End,
}

/// Moves a streamed response body from the backend codec (`client`) into the client
/// connection's output (`server` writes it into `out`, framed). `eof`: the backend
/// closed and `input` is all there is. Returns the input consumed, the body bytes
/// moved, and how far it got; an error (the backend broke off mid-body, or sent a bad
/// body) means the client connection must close: its response cannot end well.
pub fn pump_body(
    client: &mut ClientConn,
    input: &[u8],
    eof: bool,
    server: &mut ServerConn,
    out: &mut Vec<u8>,
    flush_at: usize,
) -> Result<(usize, u64, Pumped), Error> {
    let (mut consumed, mut moved) = (0, 0u64);
    loop {
        let rest = input.get(consumed..).unwrap_or_default();
        let (n, event) = if eof && rest.is_empty() { (0, client.handle_eof()?) } else { client.handle_input(rest)? };
        consumed += n;
        match event {
            ClientEvent::Data(d) => {
                server.write_body(d, out)?;
                moved += d.len() as u64;
                if out.len() >= flush_at {
                    return Ok((consumed, moved, Pumped::Full));
                }
            }
            ClientEvent::End(_) => return Ok((consumed, moved, Pumped::End)),
            ClientEvent::NeedMore if !eof => return Ok((consumed, moved, Pumped::NeedMore)),
            ClientEvent::NeedMore => return Err(Error::Malformed("connection closed before the body ended")),
            ClientEvent::Response(_) | ClientEvent::Switched => {
                return Err(Error::Malformed("unexpected response event in a body"));
            }
        }
    }
}

/// What [`Fetch::handle_input`] got to.
// `Head` keeps its header positions inline (no allocation per response); the value is
// moved a couple of times per request, which costs less than a box would.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Read more (or call [`Fetch::handle_eof`] when the backend closed).
    NeedMore,
    /// The whole response.
    Done(Answer),
    /// The head of a streamed response: pump the body with [`Fetch::codec`].
    Head(StreamedHead),
}

/// Reads the response to one request on a backend connection: whole (bodies up to
/// `limits.max_body_bytes`), or only the head when the body is streamed through.
/// Classifies failures as stale or not for [`may_retry`].
#[derive(Debug)]
pub struct Fetch {
    conn: ClientConn,
    stream: bool,
    reused: bool,
    received: bool,
    head: Option<(StatusCode, Head)>,
    body: Vec<u8>,
    /// Undo a content coding, within `limit` (see [`crate::call::coding`]).
    inflate: bool,
    limit: u64,
}

impl Fetch {
    /// Reads a whole response to a `method` request; `reused`: the connection came
    /// from the pool.
    pub fn new(method: Method, limits: Limits, reused: bool) -> Fetch {
        Fetch {
            conn: ClientConn::new(method, limits),
            stream: false,
            reused,
            received: false,
            head: None,
            body: Vec::new(),
            inflate: false,
            limit: limits.max_body_bytes,
        }
    }

    /// The response head is copied into `room` (see [`ClientConn::give_room`]).
    pub fn give_room(&mut self, room: crate::http1::Head) {
        self.conn.give_room(room);
    }

    /// The body is read into `room` (emptied), rather than into a new buffer.
    pub(crate) fn give_body_room(&mut self, mut room: Vec<u8>) {
        room.clear();
        self.body = room;
    }

    /// A whole response whose `gzip`/`deflate` body is inflated before it is handed on.
    pub fn inflating(self, inflate: bool) -> Fetch {
        Fetch { inflate, ..self }
    }

    /// Reads only the head: the body is streamed, never held, so it has no size limit.
    pub fn streaming(method: Method, limits: Limits, reused: bool) -> Fetch {
        let limits = Limits { max_body_bytes: u64::MAX, ..limits };
        Fetch { stream: true, ..Fetch::new(method, limits, reused) }
    }

    /// Feeds bytes read from the backend; says how many were consumed and how far the
    /// response got.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<(usize, Progress), Failure> {
        if !input.is_empty() {
            self.received = true;
        }
        let mut consumed = 0;
        loop {
            let rest = input.get(consumed..).unwrap_or_default();
            let (n, event) = self.conn.handle_input(rest).map_err(|e| match e {
                // The codec holds the body to `max_body_bytes`.
                Error::BodyTooLarge => Failure::new("response body too large"),
                e => self.invalid(e.reason()),
            })?;
            consumed += n;
            match event {
                ClientEvent::Response(r) if self.stream => {
                    let head = StreamedHead { status: r.status, head: r.head, framing: r.framing };
                    return Ok((consumed, Progress::Head(head)));
                }
                ClientEvent::Response(r) => self.head = Some((r.status, r.head)),
                ClientEvent::Data(d) => self.body.extend_from_slice(d),
                ClientEvent::End(_) => return Ok((consumed, self.done()?)),
                ClientEvent::NeedMore => return Ok((consumed, Progress::NeedMore)),
                ClientEvent::Switched => return Err(self.invalid("the backend switched protocols")),
            }
        }
    }

    /// The backend closed the connection (all bytes read were fed first). `Ok` is
    /// always [`Progress::Done`]: only a close-delimited body ends this way.
    pub fn handle_eof(&mut self) -> Result<Progress, Failure> {
        match self.conn.handle_eof() {
            Ok(ClientEvent::End(_)) => self.done(),
            Ok(_) => Err(self.invalid("the backend switched protocols")),
            Err(_) if self.head.is_none() => Err(self.io_failure("the backend closed the connection before answering")),
            Err(e) => Err(self.invalid(e.reason())),
        }
    }

    /// Sending the request failed.
    pub fn write_failed(&self, e: impl Display) -> Failure {
        Failure { reason: format!("cannot send the request: {e}"), stale: self.reused }
    }

    /// Reading the response failed.
    pub fn read_failed(&self, e: impl Display) -> Failure {
        self.io_failure(&format!("cannot read the response: {e}"))
    }

    /// Whether the connection may go back to the pool: the response ended and both
    /// sides keep the connection alive. (The driver also checks that no bytes are left
    /// over.)
    pub fn reusable(&self) -> bool {
        self.conn.reusable()
    }

    /// The codec, to pump a streamed body with after [`Progress::Head`].
    pub fn codec(&mut self) -> &mut ClientConn {
        &mut self.conn
    }

    fn done(&mut self) -> Result<Progress, Failure> {
        let (status, head) = self.head.take().ok_or_else(|| self.invalid("no response"))?;
        let mut body = std::mem::take(&mut self.body);
        // A redirect's body is dropped when it is followed: it is not inflated. An answer
        // with no Content-Encoding has nothing to undo (and keeps its fields as parsed).
        if self.inflate && !status.is_redirection() && head.get("content-encoding").is_some() {
            let mut headers = head.into_header_map();
            body = crate::call::coding::decode(&mut headers, body, self.limit).map_err(Failure::new)?;
            return Ok(Progress::Done(Answer { status, headers: HeaderFields::Map(headers), body }));
        }
        Ok(Progress::Done(Answer { status, headers: head.into(), body }))
    }

    fn invalid(&self, reason: &str) -> Failure {
        Failure::new(format!("invalid response: {reason}"))
    }

    fn io_failure(&self, reason: &str) -> Failure {
        Failure { reason: reason.to_string(), stale: self.reused && !self.received }
    }
}
