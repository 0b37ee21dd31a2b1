//! A client request as the gateway sees it, the complete answers it gives, and the
//! access log line: the vocabulary shared by [`crate::gateway::builtin`], [`crate::gateway::dispatch`],
//! [`crate::gateway::exchange`] and [`crate::conn`].

use std::mem;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::http1::{self, BodyLength, Framing, Head, Next, Request, ResponseHead, ServerConn, TargetForm};
use crate::ops::trace::RequestTrace;

/// The body of a client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    None,
    /// Read whole (endpoints that are not `no-op`, built-ins).
    Full(Vec<u8>),
    /// Left on the connection, to be streamed to the backend (`no-op`).
    Stream(BodyLength),
}

/// Both ends of a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    /// The client's address and port.
    pub peer: std::net::SocketAddr,
    /// The gateway's address and port the connection came to.
    pub local: std::net::SocketAddr,
}

/// A client request, as the exchange needs it.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    pub method: Method,
    /// The path as received, still percent-encoded ([`ClientRequest::path`]): in
    /// the head's bytes for a request read from a client.
    pub path: Piece,
    /// The query string, without `?` ([`ClientRequest::query`]).
    pub query: Option<Piece>,
    /// The header section as received (names as sent, values as bytes), read in
    /// place: no header map is built per request.
    pub headers: Head,
    /// The socket peer.
    pub peer: IpAddr,
    /// Both ends of the connection with their ports, where a driver gave them
    /// ([`crate::conn::Connection::set_ends`]: only for client plugins that read them).
    pub ends: Option<Box<Ends>>,
    pub body: RequestBody,
    /// The token `auth/validator` let through (the guard stage sets it).
    pub token: Option<Box<crate::gateway::jwt::Token>>,
}

/// A part of a request's target: where it is in the request's head bytes (a request
/// read from a client: no copy), or its own text (one made otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes `start..end` of [`ClientRequest::headers`].
    InHead(u32, u32),
    Own(Box<str>),
}

impl From<&str> for Piece {
    fn from(text: &str) -> Piece {
        Piece::Own(text.into())
    }
}

impl From<String> for Piece {
    fn from(text: String) -> Piece {
        Piece::Own(text.into_boxed_str())
    }
}

impl RequestBody {
    /// How a `no-op` endpoint relays a request body framed as `framing`: streamed with
    /// its length, re-chunked when it came chunked, nothing when it has none.
    pub fn relayed(framing: Framing) -> RequestBody {
        match framing {
            Framing::Length(0) | Framing::None | Framing::UntilClose => RequestBody::None,
            Framing::Length(n) => RequestBody::Stream(BodyLength::Known(n)),
            Framing::Chunked => RequestBody::Stream(BodyLength::Unknown),
        }
    }
}

impl ClientRequest {
    /// The path as received, still percent-encoded.
    pub fn path(&self) -> &str {
        self.piece(&self.path)
    }

    /// The query string, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.as_ref().map(|q| self.piece(q))
    }

    fn piece<'a>(&'a self, piece: &'a Piece) -> &'a str {
        match piece {
            Piece::InHead(start, end) => self.headers.str_range((*start, *end)),
            Piece::Own(text) => text,
        }
    }

    /// The gateway's view of a parsed request head from `peer`, without its body yet.
    /// A gateway takes origin-form targets only: anything else is refused with the
    /// reason to answer 400 with. The header section is moved out of `req` (its head is
    /// left empty), not copied.
    pub fn from_head(req: &mut Request, peer: IpAddr) -> Result<ClientRequest, &'static str> {
        match ClientRequest::refusal(req) {
            Some(reason) => Err(reason),
            None => Ok(ClientRequest::read(req, peer, None)),
        }
    }

    /// Why a gateway refuses `req` ([`ClientRequest::from_head`]), if it does.
    pub(crate) fn refusal(req: &Request) -> Option<&'static str> {
        (req.form != TargetForm::Origin).then_some("this gateway takes origin-form request targets (/path?query)")
    }

    /// [`ClientRequest::from_head`] for a request [`ClientRequest::refusal`] let
    /// through (it does not check the target's form itself), with both ends of its
    /// connection when the driver gave them.
    #[inline]
    pub(crate) fn read(req: &mut Request, peer: IpAddr, ends: Option<&Ends>) -> ClientRequest {
        // The target's span in the head: the path up to a `?`, the query after it. Found
        // in the bytes: the parser has checked them as UTF-8, and each `&str` of them
        // checks again.
        let (start, end) = req.target;
        let path_end = match req.head.range(req.target).iter().position(|&b| b == b'?') {
            Some(at) => start + at as u32,
            None => end,
        };
        let query = (path_end < end).then(|| Piece::InHead(path_end + 1, end));
        ClientRequest {
            method: req.method.clone(),
            path: Piece::InHead(start, path_end),
            query,
            headers: std::mem::take(&mut req.head),
            peer,
            ends: ends.map(|ends| Box::new(*ends)),
            body: RequestBody::None,
            token: None,
        }
    }
}

/// What the access log keeps of a request. The path only: query strings carry tokens
/// often enough to keep them out of logs (and headers are never logged).
///
/// The line's fields are written in a box from the start ([`Ended`], in a box the
/// connection's [`LineRoom`] hands back once the driver has let the last line go),
/// so that what moves with the request, and waits in a connection between its
/// requests, is two pointers. The box is the request's own until its line is written:
/// only [`AccessLog::line_in`] shares it.
#[derive(Debug)]
pub struct AccessLog {
    entry: Arc<Ended>,
    /// A traced request's server span, ended with the line (see [`crate::ops::trace`]).
    trace: Option<Box<RequestTrace>>,
}

/// The largest path string a connection keeps for its next access line.
const LOG_PATH_KEPT: usize = 1024;

/// What a connection keeps of its access lines for the next ones, so that a
/// keep-alive connection's lines take no allocation each: the last line's box. Once
/// the driver has let that line go, the next request's line is written in that box,
/// its path in the string the box has. While it is still alive (pipelined requests),
/// each gets a new one. A line whose path string is over 1 KiB is not kept, and a
/// connection that waits idle lets the box go.
#[derive(Debug, Default)]
pub struct LineRoom {
    last: Option<Arc<Ended>>,
}

impl LineRoom {
    /// A box for the next line: the last line's, when that line is gone, else a new
    /// one.
    fn entry_for(&mut self, peer: IpAddr, method: &Method, path: &str, started: Instant) -> Arc<Ended> {
        if let Some(mut last) = self.last.take()
            && let Some(gone) = Arc::get_mut(&mut last)
        {
            gone.path.clear();
            gone.path.push_str(path);
            let path = mem::take(&mut gone.path);
            *gone = Ended::new(peer, Some(method.clone()), path, started, Scope::Other);
            return last;
        }
        Arc::new(Ended::new(peer, Some(method.clone()), path.to_string(), started, Scope::Other))
    }

    /// A box for a line whose path and scope are made already (a forward proxy's):
    /// the last line's, as [`LineRoom::entry_for`], else a new one.
    fn entry_with(
        &mut self,
        peer: IpAddr,
        method: &Method,
        path: String,
        started: Instant,
        scope: Scope,
    ) -> Arc<Ended> {
        let ended = Ended::new(peer, Some(method.clone()), path, started, scope);
        if let Some(mut last) = self.last.take()
            && let Some(gone) = Arc::get_mut(&mut last)
        {
            *gone = ended;
            return last;
        }
        Arc::new(ended)
    }

    /// Keeps a share of `entry`'s box for the next line, unless its path is large.
    fn keep(&mut self, entry: &Arc<Ended>) {
        if entry.path.capacity() <= LOG_PATH_KEPT {
            self.last = Some(Arc::clone(entry));
        }
    }
}

/// What served a request, for the counters ([`crate::ops::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// No endpoint: a 404, a built-in page, a refused head.
    #[default]
    Other,
    /// The gateway endpoint of this index (configuration order).
    Endpoint(usize),
    /// A forward proxy request to `host:port`.
    Forward(String),
    /// A CONNECT tunnel to `host:port`.
    Tunnel(String),
    /// An admin page: logged (at debug), never counted on the pages themselves.
    Admin,
}

impl AccessLog {
    pub fn new(req: &ClientRequest, started: Instant) -> AccessLog {
        AccessLog::new_in(req, req.path(), started, &mut LineRoom::default())
    }

    /// [`AccessLog::new`], written in the box `room` kept (see [`LineRoom`]). `path`
    /// is `req`'s ([`ClientRequest::path`]), which the caller has at hand: each
    /// `&str` of it is checked as UTF-8 again.
    pub fn new_in(req: &ClientRequest, path: &str, started: Instant, room: &mut LineRoom) -> AccessLog {
        AccessLog { entry: room.entry_for(req.peer, &req.method, path, started), trace: None }
    }

    /// A line in a box of its own.
    fn boxed(peer: IpAddr, method: Option<Method>, path: String, started: Instant, scope: Scope) -> AccessLog {
        AccessLog { entry: Arc::new(Ended::new(peer, method, path, started, scope)), trace: None }
    }

    /// The line's fields, to write. The box is this request's alone until its line is
    /// written ([`AccessLog::line_in`]), so this never copies it (`make_mut` would, if
    /// it were shared).
    fn entry(&mut self) -> &mut Ended {
        Arc::make_mut(&mut self.entry)
    }

    /// A request refused before it became a [`ClientRequest`] (absolute-form, CONNECT):
    /// its method and target as sent, without a query string.
    pub fn refused(req: &Request, peer: IpAddr, started: Instant) -> AccessLog {
        let path = loggable_target(req.target());
        AccessLog::boxed(peer, Some(req.method.clone()), path, started, Scope::Other)
    }

    /// A forward proxy's request: its method and where it goes (`http://host[:port]/path`,
    /// or `host:port` for a tunnel), without the query string. `(authority, target)`:
    /// the destination the forward proxy found.
    /// Written in the box `room` kept (see [`LineRoom`]).
    pub fn forwarded(
        req: &Request,
        (authority, target): (&str, &str),
        peer: IpAddr,
        started: Instant,
        room: &mut LineRoom,
    ) -> AccessLog {
        let (path, scope) = if req.method == Method::CONNECT {
            (authority.to_string(), Scope::Tunnel(authority.to_string()))
        } else {
            let path = format!("http://{authority}{}", target.split_once('?').map_or(target, |(p, _)| p));
            (path, Scope::Forward(authority.to_string()))
        };
        AccessLog { entry: room.entry_with(peer, &req.method, path, started, scope), trace: None }
    }

    /// A request to the admin listener (its method and path, without the query).
    pub fn admin(req: &Request, peer: IpAddr, started: Instant) -> AccessLog {
        AccessLog::refused(req, peer, started).for_admin()
    }

    /// Counted as the admin listener's (that is, not at all).
    pub fn for_admin(mut self) -> AccessLog {
        self.entry().scope = Scope::Admin;
        self
    }

    /// Counted for gateway endpoint `index`.
    pub fn for_endpoint(&mut self, index: usize) {
        self.entry().scope = Scope::Endpoint(index);
    }

    /// An answer to a head that was refused (a bad head, one too large, a head
    /// timeout): `head` is what came of it. Its request line is logged when it has the
    /// shape of one (a method token, a target, a version), the target without its
    /// query and cut at 1 KiB; otherwise the request shows as `"-"`.
    pub fn unreadable(peer: IpAddr, head: &[u8], started: Instant) -> AccessLog {
        let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut parts = line.split(|&b| b == b' ');
        let (method, target) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(t), Some(v), None) if v.starts_with(b"HTTP/") && !t.is_empty() => {
                (Method::from_bytes(m).ok(), t)
            }
            _ => (None, &[][..]),
        };
        let path = if method.is_some() { loggable_target(&String::from_utf8_lossy(target)) } else { String::new() };
        AccessLog::boxed(peer, method, path, started, Scope::Other)
    }

    /// When the request's head was read.
    pub fn started(&self) -> Instant {
        self.entry.started
    }

    /// The request is traced: its server span ends with the line.
    pub fn traced(&mut self, trace: Box<RequestTrace>) {
        self.trace = Some(trace);
    }

    /// A traced request's server span, while the request is served.
    pub fn trace_mut(&mut self) -> Option<&mut RequestTrace> {
        self.trace.as_deref_mut()
    }

    /// A traced request's server span, while the request is served.
    pub fn trace(&self) -> Option<&RequestTrace> {
        self.trace.as_deref()
    }

    /// The line for the answer given: `PEER "METHOD PATH" STATUS BYTES 1.2ms`, formatted
    /// only when displayed (a log filtered out costs nothing). A traced request's
    /// server span ends here.
    pub fn line(self, status: StatusCode, bytes: u64, now: Instant) -> AccessLine {
        self.line_in(status, bytes, now, &mut LineRoom::default())
    }

    /// [`AccessLog::line`]; a share of its box stays in `room` for the next line (see
    /// [`LineRoom`]).
    pub fn line_in(mut self, status: StatusCode, bytes: u64, now: Instant, room: &mut LineRoom) -> AccessLine {
        if self.trace.is_some() {
            self.end_trace(status, bytes, now);
        }
        let entry = self.entry();
        (entry.status, entry.bytes, entry.now) = (status, bytes, now);
        room.keep(&self.entry);
        AccessLine(self.entry)
    }

    /// Out of line: an untraced request pays one check.
    #[cold]
    #[inline(never)]
    fn end_trace(&mut self, status: StatusCode, bytes: u64, now: Instant) {
        if let Some(trace) = self.trace.take() {
            trace.finish(status.as_u16(), bytes, now);
        }
    }

    /// A tunnel's line: `down` bytes to the client (logged), `up` to the destination.
    pub fn tunnel_line(mut self, up: u64, down: u64, spliced: u64, now: Instant) -> AccessLine {
        let entry = self.entry();
        (entry.status, entry.bytes, entry.up, entry.spliced, entry.now) = (StatusCode::OK, down, up, spliced, now);
        AccessLine(self.entry)
    }
}

/// A request target as it may be logged: credentials first (`http://user:password@host/`,
/// a CONNECT's `user:password@host:443`: [`crate::config::redact_userinfo`] on a target
/// that is not origin-form), then the query string, then cut at 1 KiB. An origin-form target
/// (`/path`) keeps its `@`: in a path it is no credential.
fn loggable_target(target: &str) -> String {
    let redacted = match target.starts_with('/') {
        true => target.to_string(),
        false => crate::config::redact_userinfo(target),
    };
    let mut path = redacted.split('?').next().unwrap_or_default().to_string();
    if path.len() > 1024 {
        let cut = (0..=1024).rev().find(|&i| path.is_char_boundary(i)).unwrap_or(0);
        path.truncate(cut);
    }
    path
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use http::StatusCode;

    use super::{AccessLine, AccessLog, ClientRequest, LOG_PATH_KEPT, LineRoom, Piece, Scope, loggable_target};
    use crate::http1::{Limits, ServerConn, ServerEvent};

    fn request(wire: &str) -> ClientRequest {
        let mut server = ServerConn::new(Limits::default());
        let Ok((_, ServerEvent::Request(mut head))) = server.handle_input(wire.as_bytes()) else { panic!("{wire}") };
        ClientRequest::from_head(&mut head, "192.0.2.7".parse().unwrap()).unwrap()
    }

    #[test]
    fn path_and_query_are_read_in_the_head() {
        for (target, path, query) in [
            ("/", "/", None),
            ("/a/b%20c", "/a/b%20c", None),
            ("/a?", "/a", Some("")),
            ("/a?x=1&y=2", "/a", Some("x=1&y=2")),
            ("/a?b?c=/d", "/a", Some("b?c=/d")),
            ("/?q", "/", Some("q")),
        ] {
            let req = request(&format!("GET {target} HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\n\r\n"));
            assert!(matches!(req.path, Piece::InHead(..)), "{target}: {:?}", req.path);
            assert_eq!((req.path(), req.query()), (path, query), "{target}");
            assert_eq!(req.headers.get("x-a"), Some(&b"1"[..]));
        }
        // One made otherwise has its own.
        let mut req = request("GET /x HTTP/1.1\r\nHost: gw\r\n\r\n");
        (req.path, req.query) = ("/own".into(), Some(String::from("k=v").into()));
        assert_eq!((req.path(), req.query()), ("/own", Some("k=v")));
    }

    #[test]
    fn a_target_that_is_not_utf8_never_becomes_a_request() {
        // Refused by the codec (400), so a path or query read in the head is text.
        for wire in
            [&b"GET /a\xff\xfeb HTTP/1.1\r\nHost: gw\r\n\r\n"[..], b"GET /a?q=\xc3 HTTP/1.1\r\nHost: gw\r\n\r\n"]
        {
            let mut server = ServerConn::new(Limits::default());
            let got = server.handle_input(wire);
            assert!(got.as_ref().is_err_and(|e| e.status() == StatusCode::BAD_REQUEST), "{:?}", got.map(|(n, _)| n));
        }
    }

    #[test]
    fn an_access_line_is_written_in_the_box_of_the_last_once_it_is_gone() {
        let now = Instant::now();
        let mut room = LineRoom::default();
        let log_in = |head: &str, room: &mut LineRoom| {
            let req = request(head);
            AccessLog::new_in(&req, req.path(), now, room)
        };
        let line_in = |log: AccessLog, room: &mut LineRoom| log.line_in(StatusCode::OK, 0, now, room);
        let box_of = |line: &AccessLine| Arc::as_ptr(&line.0);
        let path_of = |line: &AccessLine| line.0.path.as_ptr();
        let first = line_in(log_in("GET /first/path?secret=1 HTTP/1.1\r\nHost: gw\r\n\r\n", &mut room), &mut room);
        // While the first line is alive its box and string are not written over: the
        // second gets its own, and each line keeps its path.
        let second = line_in(log_in("GET /second HTTP/1.1\r\nHost: gw\r\n\r\n", &mut room), &mut room);
        assert_ne!(box_of(&first), box_of(&second));
        assert_ne!(path_of(&first), path_of(&second));
        assert!(first.to_string().contains("\"GET /first/path\" 200"), "{first}");
        assert!(second.to_string().contains("\"GET /second\" 200"), "{second}");
        // Both gone: the third request's line is written in the second's box from
        // its start, its path in the second's string.
        let (second_box, second_path) = (box_of(&second), path_of(&second));
        drop((first, second));
        let third = log_in("GET /3 HTTP/1.1\r\nHost: gw\r\n\r\n", &mut room);
        assert_eq!((Arc::as_ptr(&third.entry), third.entry.path.as_ptr()), (second_box, second_path));
        assert!(room.last.is_none(), "the box is the request's own while it is served");
        let third = line_in(third, &mut room);
        assert_eq!((box_of(&third), path_of(&third)), (second_box, second_path));
        assert!(third.to_string().contains("\"GET /3\" 200"), "{third}");
        // A request read while the third line is alive gets a box and string of its
        // own, and the room keeps that box once its line is written.
        let fourth = log_in("GET /4 HTTP/1.1\r\nHost: gw\r\n\r\n", &mut room);
        assert_ne!(Arc::as_ptr(&fourth.entry), second_box);
        assert_ne!(fourth.entry.path.as_ptr(), second_path);
        assert!(third.to_string().contains("\"GET /3\" 200"), "the third line is not written over: {third}");
        drop(third);
        let fourth = line_in(fourth, &mut room);
        assert!(room.last.as_ref().is_some_and(|kept| Arc::ptr_eq(kept, &fourth.0)));
        assert!(fourth.to_string().contains("\"GET /4\" 200"), "{fourth}");
        // A path longer than the string kept is logged whole, and its line is not
        // kept: the next line gets a new box.
        drop(fourth);
        let long = format!("/{}", "p".repeat(LOG_PATH_KEPT));
        let big = line_in(log_in(&format!("GET {long} HTTP/1.1\r\nHost: gw\r\n\r\n"), &mut room), &mut room);
        assert!(big.to_string().contains(&format!("\"GET {long}\" 200")));
        assert!(room.last.is_none(), "the line with the long path is let go");
        drop(big);
        let after = line_in(log_in("GET /5 HTTP/1.1\r\nHost: gw\r\n\r\n", &mut room), &mut room);
        assert!(after.to_string().contains("\"GET /5\" 200"), "{after}");
        assert!(room.last.as_ref().is_some_and(|kept| Arc::ptr_eq(kept, &after.0)));
        // A box used again starts afresh: the last line's scope is not kept.
        let kept = box_of(&after);
        drop(after);
        let mut sixth = log_in("GET /6 HTTP/1.1\r\nHost: gw\r\n\r\n", &mut room);
        sixth.for_endpoint(3);
        let sixth = line_in(sixth, &mut room);
        assert_eq!((box_of(&sixth), sixth.scope()), (kept, &Scope::Endpoint(3)));
        drop(sixth);
        let seventh = line_in(log_in("GET /7 HTTP/1.1\r\nHost: gw\r\n\r\n", &mut room), &mut room);
        assert_eq!((box_of(&seventh), seventh.scope()), (kept, &Scope::Other));
        // A forward proxy's line is written in the kept box too.
        drop(seventh);
        let mut server = ServerConn::new(Limits::default());
        let wire = b"GET http://api.test/x?q=1 HTTP/1.1\r\nHost: api.test\r\n\r\n";
        let Ok((_, ServerEvent::Request(head))) = server.handle_input(wire) else { panic!("a forward request") };
        let peer = "192.0.2.7".parse().unwrap();
        let forwarded = AccessLog::forwarded(&head, ("api.test", "/x?q=1"), peer, now, &mut room);
        let forwarded = line_in(forwarded, &mut room);
        assert_eq!((box_of(&forwarded), forwarded.scope()), (kept, &Scope::Forward("api.test".into())));
        assert!(forwarded.to_string().contains("\"GET http://api.test/x\" 200"), "{forwarded}");
    }

    #[test]
    fn credentials_never_survive_in_a_logged_target() {
        for (target, logged) in [
            ("http://alice:s3cret@api.test/x?token=t", "http://***@api.test/x"),
            ("http://alice:pa#ss@api.test/", "http://***@api.test/"),
            ("http://alice:p?ss@api.test/x?q=1", "http://***@api.test/x"),
            ("http://alice:p/ss@api.test/x", "http://***@api.test/x"),
            ("alice:s3cret@api.test:443", "***@api.test:443"),
            ("user@[::1]:443", "***@[::1]:443"),
            ("/a@b/c?d=e", "/a@b/c"),
            ("http://api.test/plain?q", "http://api.test/plain"),
        ] {
            assert_eq!(loggable_target(target), logged, "{target}");
        }
        // A user-info part longer than the cut is still redacted before the cut.
        let long = format!("http://{}:x@api.test/{}", "u".repeat(2000), "p".repeat(2000));
        let logged = loggable_target(&long);
        assert!(logged.starts_with("http://***@api.test/ppp") && logged.len() == 1024, "{}", logged.len());
    }
}

/// One access log line; see [`AccessLog::line`]. A share of its box: a pointer to
/// move through the output queue (see [`LineRoom`]).
#[derive(Debug)]
pub struct AccessLine(Arc<Ended>);

/// What an [`AccessLine`] says: the request's fields from its start, the answer's
/// when its line is written. `Clone` only for [`AccessLog::entry`]'s `make_mut`,
/// which never copies (a request's box is its own until its line is written).
#[derive(Debug, Clone)]
struct Ended {
    peer: IpAddr,
    /// `None`: no request line could be read (logged as `"-"`).
    method: Option<Method>,
    path: String,
    started: Instant,
    scope: Scope,
    status: StatusCode,
    bytes: u64,
    /// A tunnel's bytes from the client.
    up: u64,
    /// Of a tunnel's bytes both ways, those spliced.
    spliced: u64,
    now: Instant,
}

impl Ended {
    /// A request's fields, before its answer.
    fn new(peer: IpAddr, method: Option<Method>, path: String, started: Instant, scope: Scope) -> Ended {
        Ended { peer, method, path, started, scope, status: StatusCode::OK, bytes: 0, up: 0, spliced: 0, now: started }
    }
}

impl AccessLine {
    /// The status the client got.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn scope(&self) -> &Scope {
        &self.0.scope
    }

    /// Response body bytes (a tunnel's: bytes to the client).
    pub fn bytes(&self) -> u64 {
        self.0.bytes
    }

    /// A tunnel's bytes from the client (0 otherwise).
    pub fn bytes_up(&self) -> u64 {
        self.0.up
    }

    /// Of a tunnel's bytes both ways, those spliced (moved in the kernel).
    pub fn bytes_spliced(&self) -> u64 {
        self.0.spliced
    }

    /// From the request's start to its answer.
    pub fn elapsed(&self) -> std::time::Duration {
        self.0.now.saturating_duration_since(self.0.started)
    }
}

impl std::fmt::Display for AccessLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} \"", self.0.peer)?;
        match &self.0.method {
            Some(method) => {
                write!(f, "{method} ")?;
                escape(&self.0.path, f)?;
            }
            None => f.write_str("-")?,
        }
        write!(
            f,
            "\" {} {} {:.1}ms",
            self.0.status.as_u16(),
            self.0.bytes,
            self.0.now.saturating_duration_since(self.0.started).as_secs_f64() * 1000.0
        )
    }
}

/// Writes `text` so that a log line stays one line and its quoted field cannot be
/// closed early: `"` and `\` are escaped with `\`, bytes outside printable ASCII as
/// `\xNN` (as nginx's access log does).
fn escape(text: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    let bytes = text.as_bytes();
    // Runs of printable ASCII between escapes: always valid UTF-8 on their own.
    let plain = |from: usize, to: usize| std::str::from_utf8(&bytes[from..to]).unwrap_or_default();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\' {
            continue;
        }
        f.write_str(plain(start, i))?;
        match b {
            b'"' => f.write_str("\\\"")?,
            b'\\' => f.write_str("\\\\")?,
            _ => write!(f, "\\x{b:02X}")?,
        }
        start = i + 1;
    }
    f.write_str(plain(start, bytes.len()))
}

/// The `Content-Type` of a plain-text answer.
pub const TEXT: &str = "text/plain; charset=utf-8";

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// Writes the reply as the response to the request `server` is answering: head
    /// (with its Content-Length), body, end. Says what becomes of the connection.
    pub fn write(&self, server: &mut ServerConn, close: bool, out: &mut Vec<u8>) -> Result<Next, http1::Error> {
        let head = ResponseHead {
            status: self.status,
            headers: &self.headers,
            body: BodyLength::Known(self.body.len() as u64),
            close,
        };
        server.write_response_head(&head, out)?;
        server.write_body(&self.body, out)?;
        server.finish_response(out)
    }

    /// A `text/plain` response.
    pub fn text(status: StatusCode, body: &str) -> Reply {
        Reply::typed(status, TEXT, body.as_bytes().to_vec())
    }

    /// A response with no body and no field of its own (a refusal as KrakenD's gin
    /// middlewares write it: `Content-Length: 0`, no `Content-Type`; none at all for a
    /// 204).
    pub fn empty(status: StatusCode) -> Reply {
        Reply { status, headers: HeaderMap::new(), body: Vec::new() }
    }

    /// A response of this `Content-Type`.
    pub fn typed(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Reply {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        Reply { status, headers, body }
    }
}
