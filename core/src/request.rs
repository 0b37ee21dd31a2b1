//! A client request as the gateway sees it, the complete answers it gives, and the
//! access log line: the vocabulary shared by [`crate::builtin`], [`crate::dispatch`],
//! [`crate::exchange`] and [`crate::conn`].

use std::net::IpAddr;
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::http1::{self, BodyLength, Framing, Next, Request, ResponseHead, ServerConn, TargetForm};
use crate::response::TEXT;

/// The body of a client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    None,
    /// Read whole (endpoints that are not `no-op`, built-ins).
    Full(Vec<u8>),
    /// Left on the connection, to be streamed to the backend (`no-op`).
    Stream(BodyLength),
}

/// A client request, as the exchange needs it.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    pub method: Method,
    /// The path as received, still percent-encoded.
    pub path: String,
    /// The query string, without `?`.
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The socket peer.
    pub peer: IpAddr,
    pub body: RequestBody,
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
    /// The gateway's view of a parsed request head from `peer`, without its body yet.
    /// A gateway takes origin-form targets only: anything else is refused with the
    /// reason to answer 400 with.
    pub fn from_head(req: &Request, peer: IpAddr) -> Result<ClientRequest, &'static str> {
        if req.form != TargetForm::Origin {
            return Err("this gateway takes origin-form request targets (/path?query)");
        }
        Ok(ClientRequest {
            method: req.method.clone(),
            path: req.path().to_string(),
            query: req.query().map(str::to_string),
            headers: req.head.to_header_map(),
            peer,
            body: RequestBody::None,
        })
    }
}

/// What the access log keeps of a request. The path only: query strings carry tokens
/// often enough to keep them out of logs (and headers are never logged).
#[derive(Debug, Clone)]
pub struct AccessLog {
    peer: IpAddr,
    method: Method,
    path: String,
    started: Instant,
}

impl AccessLog {
    pub fn new(req: &ClientRequest, started: Instant) -> AccessLog {
        AccessLog { peer: req.peer, method: req.method.clone(), path: req.path.clone(), started }
    }

    /// When the request's head was read.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The line for the answer given: `PEER "METHOD PATH" STATUS BYTES 1.2ms`, formatted
    /// only when displayed (a log filtered out costs nothing).
    pub fn line(self, status: StatusCode, bytes: u64, now: Instant) -> AccessLine {
        AccessLine { log: self, status, bytes, now }
    }
}

/// One access log line; see [`AccessLog::line`].
#[derive(Debug, Clone)]
pub struct AccessLine {
    log: AccessLog,
    status: StatusCode,
    bytes: u64,
    now: Instant,
}

impl AccessLine {
    /// The status the client got.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl std::fmt::Display for AccessLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} \"{} {}\" {} {} {:.1}ms",
            self.log.peer,
            self.log.method,
            self.log.path,
            self.status.as_u16(),
            self.bytes,
            self.now.saturating_duration_since(self.log.started).as_secs_f64() * 1000.0
        )
    }
}

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
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT));
        Reply { status, headers, body: body.as_bytes().to_vec() }
    }
}
