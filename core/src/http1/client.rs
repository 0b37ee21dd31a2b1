//! The backend-facing (client) role: write requests, parse responses.

use http::{HeaderMap, Method, StatusCode, Version};

use super::body::{BodyDecoder, BodyEvent};
use super::framing::{self, BodyLength};
use super::head::{Head, Response};
use super::parse::{Fault, StatusLine};
use super::server::itoa_u64;
use super::{Error, Limits, MAX_HEADERS, find_head_end, write_headers};

/// The request target, in the form the next hop needs (RFC 9112 section 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestTarget<'a> {
    /// `/path?query`, to an origin server.
    Origin(&'a str),
    /// `http://host/path?query`, to an HTTP proxy.
    Absolute(&'a str),
    /// `host:port`, for CONNECT.
    Authority(&'a str),
}

/// Whether `s` is safe on a request line or in a Host header: visible ASCII, no space.
fn is_visible(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b > 0x20 && b < 0x7f)
}

/// Writes a request head. `host` is the `Host` header value. Framing headers are the
/// codec's: `body` decides them (`None`: no body).
pub fn write_request(
    method: &Method,
    target: RequestTarget<'_>,
    host: &str,
    headers: &HeaderMap,
    body: Option<BodyLength>,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    write_request_with(method, target, host, body, out, |out| write_headers(headers, out))
}

/// [`write_request`] with the header fields written by `fields`, between `Host` and
/// the framing headers. `fields` must write whole, valid `name: value\r\n` lines and
/// no framing (`Content-Length`, `Transfer-Encoding`) or `Host` of its own.
pub fn write_request_with(
    method: &Method,
    target: RequestTarget<'_>,
    host: &str,
    body: Option<BodyLength>,
    out: &mut Vec<u8>,
    fields: impl FnOnce(&mut Vec<u8>),
) -> Result<(), Error> {
    let target_ok = match target {
        RequestTarget::Origin(t) => t.starts_with('/') && is_visible(t),
        RequestTarget::Absolute(t) => (t.starts_with("http://") || t.starts_with("https://")) && is_visible(t),
        RequestTarget::Authority(t) => {
            is_visible(t) && !t.bytes().any(|b| b == b'/' || b == b'@') && *method == Method::CONNECT
        }
    };
    let t = match target {
        RequestTarget::Origin(t) | RequestTarget::Absolute(t) | RequestTarget::Authority(t) => t,
    };
    if !target_ok {
        return Err(Error::Usage("invalid request target"));
    }
    // On bytes, in one pass: a pattern of chars decodes each char first.
    let host_byte = |b: u8| b > 0x20 && b < 0x7f && !matches!(b, b'/' | b'@' | b'?' | b'#');
    if host.is_empty() || !host.bytes().all(host_byte) {
        return Err(Error::Usage("invalid Host"));
    }
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(t.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    fields(out);
    match body {
        Some(BodyLength::Known(n)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa_u64(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        Some(BodyLength::Unknown) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        None => {}
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// What [`ClientConn::handle_input`] found.
#[derive(Debug, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one head per response, moved on at once: a box would be an allocation per backend call"
)]
pub enum ClientEvent<'b> {
    /// The final response head (1xx interim responses are skipped).
    Response(Response),
    /// Response body bytes, borrowed from the input.
    Data(&'b [u8]),
    /// The response is complete.
    End(Option<Box<HeaderMap>>),
    /// Feed more bytes (or call [`ClientConn::handle_eof`] if the connection closed).
    NeedMore,
    /// A 2xx to CONNECT or a 101: the connection is a tunnel from here on.
    Switched,
}

#[derive(Debug, Clone)]
enum State {
    Head,
    Body(BodyDecoder),
    Done,
    Switched,
}

/// Whether `b` starts with two empty lines (each CRLF or a bare LF).
fn two_empty_lines_first(b: &[u8]) -> bool {
    let after_one = match b {
        [b'\r', b'\n', rest @ ..] | [b'\n', rest @ ..] => rest,
        _ => return false,
    };
    matches!(after_one, [b'\n', ..] | [b'\r', b'\n', ..])
}

/// Reads the response to one request sent on a backend connection.
#[derive(Debug, Clone)]
pub struct ClientConn {
    method: Method,
    limits: Limits,
    state: State,
    scanned: usize,
    keep_alive: bool,
    /// A buffer the response head is copied into ([`ClientConn::give_room`]).
    room: Head,
}

impl ClientConn {
    /// Expects the response to a request made with `method` (HEAD and CONNECT change
    /// how the response is framed).
    pub fn new(method: Method, limits: Limits) -> ClientConn {
        ClientConn { method, limits, state: State::Head, scanned: 0, keep_alive: false, room: Head::default() }
    }

    /// A buffer an earlier head gave back ([`Head::into_room`]): the response head is
    /// copied into it rather than into a new one.
    pub fn give_room(&mut self, room: Head) {
        self.room = room;
    }

    /// Whether the connection can carry another request once the response has ended.
    pub fn reusable(&self) -> bool {
        matches!(self.state, State::Done) && self.keep_alive
    }

    pub fn handle_input<'b>(&mut self, input: &'b [u8]) -> Result<(usize, ClientEvent<'b>), Error> {
        let mut consumed = 0;
        loop {
            let rest = input.get(consumed..).unwrap_or_default();
            match &mut self.state {
                State::Switched => return Ok((consumed, ClientEvent::Switched)),
                State::Done => return Ok((consumed, ClientEvent::End(None))),
                State::Body(decoder) => {
                    return match decoder.decode(rest)? {
                        (n, BodyEvent::Data(d)) => Ok((consumed + n, ClientEvent::Data(d))),
                        (n, BodyEvent::NeedMore) => Ok((consumed + n, ClientEvent::NeedMore)),
                        (n, BodyEvent::End(t)) => {
                            self.state = State::Done;
                            Ok((consumed + n, ClientEvent::End(t)))
                        }
                    };
                }
                State::Head => {
                    let max = self.limits.max_headers.min(MAX_HEADERS);
                    let mut head = std::mem::take(&mut self.room);
                    // A head's first look parses it in place: nearly every answer's head
                    // comes whole in one read, and the parser finds its end (no search
                    // for it first). Anything else goes the search's way, which answers
                    // the same whatever the reads were: a head not all here, one the
                    // parser refuses (it may not have come whole), and one after two
                    // empty lines (they end a head in the search; the parser skips them).
                    let in_place = match self.scanned == 0 && !two_empty_lines_first(rest) {
                        // No further than a head may go (a head read here is within the
                        // limit): what ends later is refused anyway.
                        true => head.parse_response(rest.get(..self.limits.max_head_bytes).unwrap_or(rest), max).ok(),
                        false => None,
                    };
                    let (line, head_len) = match in_place {
                        Some(read) => read,
                        None => {
                            let Some(head_len) = find_head_end(rest, &mut self.scanned) else {
                                self.room = head;
                                if rest.len() > self.limits.max_head_bytes {
                                    return Err(Error::HeadTooLarge);
                                }
                                return Ok((consumed, ClientEvent::NeedMore));
                            };
                            if head_len > self.limits.max_head_bytes {
                                return Err(Error::HeadTooLarge);
                            }
                            self.scanned = 0;
                            let (line, _) = head.parse_response(&rest[..head_len], max).map_err(Fault::error)?;
                            (line, head_len)
                        }
                    };
                    match self.read_head(line, head)? {
                        Some(response) => return Ok((consumed + head_len, ClientEvent::Response(response))),
                        // An interim 1xx: skip it and read the next head.
                        None => consumed += head_len,
                    }
                }
            }
        }
    }

    /// What a head read whole says: the response, or `None` for an interim 1xx (its
    /// room kept for the next head).
    fn read_head(&mut self, line: StatusLine, head: Head) -> Result<Option<Response>, Error> {
        let status = StatusCode::from_u16(line.code).map_err(|_| Error::Malformed("invalid status"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            self.state = State::Switched;
        } else if status.is_informational() {
            self.room = head.into_room();
            return Ok(None);
        }
        let http10 = line.http10;
        let scan = framing::scan(head.codec_fields())?;
        let framing = framing::response_framing(&self.method, status, http10, &scan)?;
        let keep_alive = framing::keep_alive(http10, &scan) && framing != framing::Framing::UntilClose;
        let reason = line.reason;
        let decoder = BodyDecoder::new(framing, &self.limits)?;
        if self.method == Method::CONNECT && status.is_success() {
            self.state = State::Switched;
        } else if !matches!(self.state, State::Switched) {
            self.state = if decoder.is_done() { State::Done } else { State::Body(decoder) };
        }
        self.keep_alive = keep_alive;
        Ok(Some(Response {
            status,
            version: if http10 { Version::HTTP_10 } else { Version::HTTP_11 },
            reason,
            head,
            framing,
            keep_alive,
        }))
    }

    /// The backend closed the connection: ends a close-delimited body, and is an error
    /// anywhere else in a response.
    pub fn handle_eof(&mut self) -> Result<ClientEvent<'static>, Error> {
        match &mut self.state {
            State::Body(decoder) => match decoder.finish_eof()? {
                BodyEvent::End(t) => {
                    self.state = State::Done;
                    self.keep_alive = false;
                    Ok(ClientEvent::End(t))
                }
                _ => Err(Error::Malformed("connection closed before the body ended")),
            },
            State::Done => Ok(ClientEvent::End(None)),
            State::Switched => Ok(ClientEvent::Switched),
            State::Head => Err(Error::Malformed("connection closed before a response")),
        }
    }
}
