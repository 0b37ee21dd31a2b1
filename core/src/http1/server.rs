//! The client-facing (server) role: parse requests, write responses.

use std::mem::MaybeUninit;

use http::{HeaderMap, Method, StatusCode, Version};

use super::body::{BodyDecoder, BodyEvent};
use super::framing::{self, BodyLength, Framing};
use super::head::{Head, HopByHop, Kind, Request, TargetForm, offset};
use super::parse::Fault;
use super::{Error, Fields, Limits, MAX_HEADERS, find_head_end, write_chunk, write_headers, write_last_chunk};

/// What [`ServerConn::handle_input`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerEvent<'b> {
    /// A request head. Its body (if any) follows as `Data` events, then `End`.
    Request(Box<Request>),
    /// Request body bytes, borrowed from the input.
    Data(&'b [u8]),
    /// The request is complete (with trailers, when a chunked body had any).
    End(Option<Box<HeaderMap>>),
    /// Feed more bytes.
    NeedMore,
    /// The request is read; the next one waits until the response is finished
    /// (pipelined requests are answered in order). Keep the unconsumed bytes.
    Paused,
    /// The connection switched protocols (CONNECT answered 2xx, Upgrade answered 101):
    /// every byte from here on, including the unconsumed ones, is the new protocol's.
    Switched,
}

/// What to do with the connection after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the next request (feed the unconsumed bytes again).
    KeepAlive,
    /// Close the connection once the output is written.
    Close,
    /// The connection is now a tunnel (see [`ServerEvent::Switched`]).
    Switch,
}

/// A response head to write.
#[derive(Debug, Clone, Copy)]
pub struct ResponseHead<'a> {
    pub status: StatusCode,
    /// End-to-end headers. Framing and connection headers (`Content-Length`,
    /// `Transfer-Encoding`, `Connection`, ...) are the codec's and are skipped.
    pub headers: &'a HeaderMap,
    /// The body length; ignored where the response has no body (HEAD, 1xx, 204, 304).
    pub body: BodyLength,
    /// Ask for the connection to be closed after this response.
    pub close: bool,
}

/// An empty field map, for a head whose fields are written another way (a passed-on
/// head's from its spans, a tunnel's `200` has none): made once, where one made and
/// dropped per response cost about 80 instructions.
pub(crate) fn no_fields() -> &'static HeaderMap {
    static NONE: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);
    &NONE
}

#[derive(Debug, Clone)]
enum Reading {
    Head,
    Body(BodyDecoder),
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writing {
    /// No request yet.
    Idle,
    /// A request head was read; no response started.
    Ready,
    /// Writing the body of a response.
    Body { chunked: bool, remaining: Option<u64>, allowed: bool },
}

/// One client connection: requests in, responses out, in order.
#[derive(Debug, Clone)]
pub struct ServerConn {
    limits: Limits,
    reading: Reading,
    writing: Writing,
    /// How far the end-of-head search has looked.
    scanned: usize,
    /// Of the current request.
    method: Method,
    http10: bool,
    keep_alive: bool,
    upgrade: bool,
    expect_continue: bool,
    /// Decided when the response head is written.
    response_keep_alive: bool,
    switch: bool,
    switched: bool,
    closed: bool,
    /// The box the last request came in, given back ([`ServerConn::recycle`]) for the
    /// next one: a keep-alive connection allocates it once.
    spare: Option<Box<Request>>,
    /// Fields the answer to the current request gets besides its own, whatever writes
    /// it ([`ServerConn::add_fields`]).
    added: Vec<u8>,
}

impl ServerConn {
    /// The limits this connection reads its client's requests under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn new(limits: Limits) -> ServerConn {
        ServerConn {
            limits,
            reading: Reading::Head,
            writing: Writing::Idle,
            scanned: 0,
            method: Method::GET,
            http10: false,
            keep_alive: true,
            upgrade: false,
            expect_continue: false,
            response_keep_alive: false,
            switch: false,
            switched: false,
            closed: false,
            spare: None,
            added: Vec::new(),
        }
    }

    /// Where the service puts fields for the answer to the request just read, whatever
    /// answers it (an endpoint's reply, a backend's head passed through, an error):
    /// whole lines, `name: value\r\n`, from names and values that hold no CR or LF.
    /// Written first after the status line; dropped when the next request comes.
    pub fn add_fields(&mut self) -> &mut Vec<u8> {
        &mut self.added
    }

    /// Gives back the box a request came in, once it was read: the next request is
    /// parsed into it.
    pub fn recycle(&mut self, request: Box<Request>) {
        self.spare = Some(request);
    }

    /// A request is over: its head's buffer is kept (in the box kept for the next
    /// request, when there is one) for the next head to be copied into.
    pub fn recycle_head(&mut self, head: Head) {
        if let Some(spare) = &mut self.spare {
            spare.head.put_room(head);
        }
    }

    /// Drops the box kept for the next request and the added fields' room (a
    /// connection going idle holds none).
    pub fn shed(&mut self) {
        self.spare = None;
        self.added = Vec::new();
    }

    /// Feeds received bytes. Returns how many were consumed and what was found; call
    /// again with the rest until it answers `NeedMore`, `Paused` or `Switched`.
    pub fn handle_input<'b>(&mut self, input: &'b [u8]) -> Result<(usize, ServerEvent<'b>), Error> {
        if self.switched {
            return Ok((0, ServerEvent::Switched));
        }
        if self.closed {
            return Err(Error::Usage("connection is closed"));
        }
        match &mut self.reading {
            Reading::Head if self.writing != Writing::Idle => Ok((0, ServerEvent::Paused)),
            Reading::Head => self.read_head(input),
            Reading::Body(decoder) => match decoder.decode(input)? {
                (n, BodyEvent::Data(d)) => Ok((n, ServerEvent::Data(d))),
                (n, BodyEvent::NeedMore) => Ok((n, ServerEvent::NeedMore)),
                (n, BodyEvent::End(trailers)) => {
                    self.reading = Reading::Done;
                    Ok((n, ServerEvent::End(trailers)))
                }
            },
            Reading::Done => Ok((0, ServerEvent::Paused)),
        }
    }

    fn read_head<'b>(&mut self, input: &'b [u8]) -> Result<(usize, ServerEvent<'b>), Error> {
        self.added.clear();
        // RFC 9112 2.2: ignore empty lines before a request line.
        let skip = input.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
        if skip > 0 {
            self.scanned = 0;
            if skip == input.len() {
                return Ok((skip, ServerEvent::NeedMore));
            }
        }
        let buf = &input[skip..];
        // A head's first look parses it in place: nearly every request head comes whole
        // in one read, and httparse finds its end (no search for it first). Otherwise
        // the search finds the end, and only then is the head parsed or refused, as
        // the in-place look would have (it stops at the same empty line): the answer
        // is the same whatever the reads were.
        let first_look = self.scanned == 0;
        let found = match first_look {
            true => None,
            false => match find_head_end(buf, &mut self.scanned) {
                Some(head_len) => Some(head_len),
                None => return self.head_not_whole(skip, buf),
            },
        };
        if found.is_some_and(|head_len| head_len > self.limits.max_head_bytes) {
            return Err(self.oversize(buf));
        }
        // The first look goes no further than a head may: what ends later is refused.
        let read = buf.get(..found.unwrap_or(self.limits.max_head_bytes)).unwrap_or(buf);
        // Uninitialized header slots: zeroing 256 of them would cost more than the parse.
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let headers = headers.get_mut(..self.limits.max_headers.min(MAX_HEADERS)).unwrap_or_default();
        let mut req = httparse::Request::new(&mut []);
        let parsed = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, read, headers)
        {
            Ok(httparse::Status::Complete(head_len)) => Ok(head_len),
            Ok(httparse::Status::Partial) => Err(Error::Malformed("incomplete request head")),
            Err(e) => Err(Fault::from(e).error()),
        };
        let head_len = match parsed {
            Ok(head_len) => head_len,
            Err(refused) => {
                // Not whole at the first look (or refused before it was): the search
                // says whether the head has come whole yet.
                if first_look {
                    let Some(head_len) = find_head_end(buf, &mut self.scanned) else {
                        return self.head_not_whole(skip, buf);
                    };
                    if head_len > self.limits.max_head_bytes {
                        return Err(self.oversize(buf));
                    }
                }
                return Err(refused);
            }
        };
        // Within the limit: the first look read no further, and a head found by the
        // search was held to it above.
        let raw = &buf[..head_len];
        let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
            return Err(Error::Malformed("incomplete request line"));
        };
        if target.len() > self.limits.max_uri_bytes {
            return Err(Error::UriTooLong);
        }
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| Error::Malformed("invalid method"))?;
        let form = target_form(&method, target)?;
        let http10 = version == 0;
        // Into the buffer of the head before, when the connection gave it back.
        let room = self.spare.as_mut().map(|s| s.head.take_room()).unwrap_or_default();
        let head = Head::new_in(room, raw, req.headers);
        let scan = framing::scan(head.codec_fields())?;
        match (http10, scan.hosts) {
            (false, 0) => return Err(Error::Malformed("missing Host header")),
            (_, n) if n > 1 => return Err(Error::Malformed("more than one Host header")),
            (_, 1) if !scan.hosts_valid => return Err(Error::Malformed("invalid Host header")),
            _ => {}
        }
        let framing = if method == Method::CONNECT { Framing::None } else { framing::request_framing(http10, &scan)? };
        let decoder = BodyDecoder::new(framing, &self.limits)?;
        let target_span = offset(raw, target.as_bytes());
        let keep_alive = framing::keep_alive(http10, &scan);
        let upgrade = scan.upgrade && scan.connection_upgrade && !http10;
        let expect_continue = scan.expect_continue && !http10 && framing != Framing::None;

        self.method = method.clone();
        self.http10 = http10;
        self.keep_alive = keep_alive;
        self.upgrade = upgrade;
        self.expect_continue = expect_continue;
        self.scanned = 0;
        self.writing = Writing::Ready;
        // Always through the decoder, so every request ends with an `End` event.
        self.reading = Reading::Body(decoder);
        let request = Request {
            method,
            version: if http10 { Version::HTTP_10 } else { Version::HTTP_11 },
            form,
            target: target_span,
            head,
            framing,
            keep_alive,
            expect_continue,
            upgrade,
        };
        let request = match self.spare.take() {
            Some(mut spare) => {
                *spare = request;
                spare
            }
            None => Box::new(request),
        };
        Ok((skip + head_len, ServerEvent::Request(request)))
    }

    /// The current request's body is passed on as it comes, never held: it is not held
    /// to `max_body_bytes` either (a `no-op` endpoint's upload, a forwarded request).
    pub fn stream_body(&mut self) {
        if let Reading::Body(decoder) = &mut self.reading {
            decoder.unlimited();
        }
    }

    /// `Err(BodyTooLarge)` when the current request's body says its length and that is
    /// over `max_body_bytes`: answer 413 before reading a byte of it. (A chunked body
    /// is refused as it crosses the limit, while it is read.)
    pub fn body_fits(&self) -> Result<(), Error> {
        match &self.reading {
            Reading::Body(decoder) => decoder.fits(),
            _ => Ok(()),
        }
    }

    /// A head not all here yet: more is read, unless what has come is already over
    /// the head limit.
    fn head_not_whole<'b>(&self, skip: usize, buf: &[u8]) -> Result<(usize, ServerEvent<'b>), Error> {
        if buf.len() > self.limits.max_head_bytes {
            return Err(self.oversize(buf));
        }
        Ok((skip, ServerEvent::NeedMore))
    }

    /// 414 when the request line alone is over the URI limit, else 431.
    fn oversize(&self, buf: &[u8]) -> Error {
        let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
        if line_end > self.limits.max_uri_bytes + 16 { Error::UriTooLong } else { Error::HeadTooLarge }
    }

    /// Reads request body bytes into `body`. Returns how many input bytes were consumed
    /// and whether the body is complete (a request without a body is, even with no
    /// input). The driver reads more while it is not.
    pub fn read_body_into(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<(usize, bool), Error> {
        self.drain_body(input, |d| body.extend_from_slice(d))
    }

    /// Relays request body bytes to a backend whose request head said `length`:
    /// appended to `out` as they are for a known length, as chunks otherwise, with the
    /// last chunk once the body ends. Returns the bytes consumed and whether the body
    /// is complete; the driver writes `out` to the backend and reads more while not.
    pub fn relay_body(&mut self, input: &[u8], length: BodyLength, out: &mut Vec<u8>) -> Result<(usize, bool), Error> {
        let chunked = length == BodyLength::Unknown;
        let (n, done) =
            self.drain_body(input, |d| if chunked { write_chunk(d, out) } else { out.extend_from_slice(d) })?;
        if done && chunked {
            write_last_chunk(out);
        }
        Ok((n, done))
    }

    fn drain_body(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<(usize, bool), Error> {
        let mut consumed = 0;
        loop {
            let rest = input.get(consumed..).unwrap_or_default();
            match self.handle_input(rest)? {
                (n, ServerEvent::Data(d)) => {
                    data(d);
                    consumed += n;
                }
                (n, ServerEvent::End(_)) => return Ok((consumed + n, true)),
                (n, ServerEvent::NeedMore) => return Ok((consumed + n, false)),
                _ => return Err(Error::Usage("no request body is being read")),
            }
        }
    }

    /// Writes `100 Continue` for a request that asked for it, before its body is read.
    /// Does nothing otherwise.
    pub fn write_continue(&mut self, out: &mut Vec<u8>) {
        if self.expect_continue && self.writing == Writing::Ready {
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            self.expect_continue = false;
        }
    }

    /// Writes the head of the response to the current request.
    pub fn write_response_head(&mut self, resp: &ResponseHead<'_>, out: &mut Vec<u8>) -> Result<(), Error> {
        self.write_head_with(resp, out, |out| write_headers(resp.headers, out))
    }

    /// Writes the head of a response passed through from a backend: `resp`'s status,
    /// length and close, then the backend's own header fields straight from its parsed
    /// head, names lowercased, without its framing, `Host` and hop-by-hop fields (the
    /// fixed list and those its `Connection` names), then `resp.headers` and `ours`
    /// (fields rendered once): a `Via` added there follows the origin's own (RFC 9110
    /// 7.6.3). The answer to a `HEAD` keeps
    /// the backend's `Content-Length` (the size a `GET` would get, RFC 9110 9.3.2). No
    /// header map is built.
    pub fn write_passthrough_head(
        &mut self,
        resp: &ResponseHead<'_>,
        backend: &Head,
        ours: &Fields,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let keep_length = self.method == Method::HEAD && resp.body == BodyLength::Unknown;
        self.write_head_with(resp, out, |out| {
            write_passthrough_fields(backend, keep_length, out);
            write_headers(resp.headers, out);
            out.extend_from_slice(ours.as_bytes());
        })
    }

    fn write_head_with(
        &mut self,
        resp: &ResponseHead<'_>,
        out: &mut Vec<u8>,
        fields: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Error> {
        if self.writing != Writing::Ready {
            return Err(Error::Usage("no request is waiting for a response"));
        }
        let status = resp.status;
        if status.is_informational() && !(status == StatusCode::SWITCHING_PROTOCOLS && self.upgrade) {
            return Err(Error::Usage("1xx responses other than 101 to an Upgrade are not written this way"));
        }
        let switch = (self.method == Method::CONNECT && status.is_success())
            || (self.upgrade && status == StatusCode::SWITCHING_PROTOCOLS);
        let allowed = !(self.method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status.is_informational()
            || switch);
        let request_read = matches!(self.reading, Reading::Done);
        // A request body left unread makes the connection unusable for the next request.
        let mut keep_alive = self.keep_alive && !resp.close && request_read && !switch;
        let mut chunked = false;
        let mut remaining = None;
        write_status_line(self.http10, status, out);
        out.extend_from_slice(&self.added);
        fields(out);
        match resp.body {
            BodyLength::Known(n) if allowed || self.method == Method::HEAD => {
                write_content_length(n, out);
                if allowed {
                    remaining = Some(n);
                }
            }
            BodyLength::Known(_) => {}
            BodyLength::Unknown if !allowed => {}
            BodyLength::Unknown if self.http10 => keep_alive = false,
            BodyLength::Unknown => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                chunked = true;
            }
        }
        if switch && self.upgrade {
            out.extend_from_slice(b"connection: upgrade\r\n");
        } else if !keep_alive && !switch {
            out.extend_from_slice(b"connection: close\r\n");
        } else if self.http10 && keep_alive {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        self.response_keep_alive = keep_alive;
        self.switch = switch;
        self.writing = Writing::Body { chunked, remaining, allowed };
        Ok(())
    }

    /// Forgets a response head written into an output that was then truncated (none of
    /// it was sent): the request waits for a response again. Nothing otherwise.
    pub fn take_back_head(&mut self) {
        if matches!(self.writing, Writing::Body { .. }) {
            self.writing = Writing::Ready;
        }
    }

    /// Writes response body bytes (chunk-framed when the length was unknown).
    pub fn write_body(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let Writing::Body { chunked, remaining, allowed } = &mut self.writing else {
            return Err(Error::Usage("no response body is being written"));
        };
        if data.is_empty() {
            return Ok(());
        }
        if !*allowed {
            return Err(Error::Usage("this response has no body"));
        }
        if let Some(r) = remaining {
            let n = data.len() as u64;
            if n > *r {
                return Err(Error::Usage("body longer than its Content-Length"));
            }
            *r -= n;
        }
        if *chunked {
            write_chunk(data, out);
        } else {
            out.extend_from_slice(data);
        }
        Ok(())
    }

    /// Ends the response; says what becomes of the connection.
    pub fn finish_response(&mut self, out: &mut Vec<u8>) -> Result<Next, Error> {
        let Writing::Body { chunked, remaining, .. } = self.writing else {
            return Err(Error::Usage("no response is being written"));
        };
        if chunked {
            write_last_chunk(out);
        }
        if remaining.is_some_and(|r| r > 0) {
            self.closed = true;
            return Err(Error::Usage("body shorter than its Content-Length"));
        }
        self.writing = Writing::Idle;
        if self.switch {
            self.switched = true;
            return Ok(Next::Switch);
        }
        if self.response_keep_alive {
            self.reading = Reading::Head;
            self.scanned = 0;
            Ok(Next::KeepAlive)
        } else {
            self.closed = true;
            Ok(Next::Close)
        }
    }

    /// Writes a complete error response (`text/plain`, the reason as body) and marks the
    /// connection for closing: for protocol errors and for failures before any response
    /// bytes went out.
    pub fn write_error(&mut self, status: StatusCode, body: &str, out: &mut Vec<u8>) {
        write_status_line(false, status, out);
        out.extend_from_slice(&self.added);
        out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\n");
        write_content_length(body.len() as u64, out);
        out.extend_from_slice(b"connection: close\r\n\r\n");
        if self.method != Method::HEAD || matches!(self.writing, Writing::Idle) {
            out.extend_from_slice(body.as_bytes());
        }
        self.closed = true;
    }
}

/// A backend head's end-to-end fields (see [`ServerConn::write_passthrough_head`]).
/// Raw bytes throughout (the parser checked names are tokens and values hold no CR,
/// LF or NUL); `Connection` is read once.
fn write_passthrough_fields(head: &Head, keep_length: bool, out: &mut Vec<u8>) {
    let hop = HopByHop::of(head);
    // Framing, `Host` and the hop-by-hop names are not passed on.
    head.write_fields(out, |kind, name| match kind {
        Kind::Other | Kind::Expect => !hop.names(name),
        Kind::ContentLength => keep_length,
        _ => false,
    });
}

fn write_status_line(http10: bool, status: StatusCode, out: &mut Vec<u8>) {
    out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn write_content_length(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa_u64(n, &mut [0; 20]));
    out.extend_from_slice(b"\r\n");
}

/// Formats a u64 in decimal without allocating.
pub(crate) fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

fn target_form(method: &Method, target: &str) -> Result<TargetForm, Error> {
    if target.contains('#') {
        // A fragment is the client's own (RFC 9112 3.2: no form of request-target has
        // one); Envoy refuses it since 1.16.5 rather than forward or route on it.
        return Err(Error::Malformed("a fragment (#) in the request target"));
    }
    if method == Method::CONNECT {
        // authority-form: host:port, nothing else.
        let ok = !target.is_empty()
            && !target.contains(['/', '?', '#', '@'])
            && target.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        return if ok { Ok(TargetForm::Authority) } else { Err(Error::Malformed("CONNECT needs a host:port target")) };
    }
    if target == "*" {
        return if method == Method::OPTIONS {
            Ok(TargetForm::Asterisk)
        } else {
            Err(Error::Malformed("\"*\" is only a target for OPTIONS"))
        };
    }
    if target.starts_with('/') {
        return Ok(TargetForm::Origin);
    }
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(TargetForm::Absolute);
    }
    Err(Error::Malformed("invalid request target"))
}
