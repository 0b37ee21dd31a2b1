//! HTTP/1.1 for both roles, Sans-IO.
//!
//! A request head is parsed by httparse; a response head by our own parser
//! (`parse.rs`: it reads exactly what httparse reads, and is fuzzed against it), which
//! writes field positions straight into the [`Head`]. Each field's name is classified
//! once there (framing, `Connection`, hop-by-hop or other), and framing, the
//! `Connection` tokens and what is passed on read that.
//!
//! - [`ServerConn`]: the client-facing side. Feed it the bytes you have with
//!   [`ServerConn::handle_input`]; it says how many it consumed and what happened (a
//!   request head, body data, the end of the message, or that it needs more). Write the
//!   answer with [`ServerConn::write_response_head`], [`ServerConn::write_body`] and
//!   [`ServerConn::finish_response`] into your own buffer.
//! - [`ClientConn`] and [`write_request`]: the backend-facing side.
//!
//! The caller owns every buffer: input is a `&[u8]` plus the consumed count handed back,
//! output is appended to a `Vec<u8>`. Body data events borrow the caller's input.
//!
//! All framing rules live in [`framing`] and [`body`], once for both roles, including the
//! request-smuggling rules of RFC 9112: Transfer-Encoding with Content-Length, differing
//! Content-Lengths, a Transfer-Encoding whose last coding is not chunked, obs-fold,
//! whitespace before a colon, bare CR, bad or overflowing sizes, Transfer-Encoding in
//! HTTP/1.0. Every error carries the status to answer with and closes the connection.

mod body;
mod client;
mod framing;
mod head;
mod parse;
mod server;

pub use body::{BodyDecoder, BodyEvent};
pub use client::{ClientConn, ClientEvent, RequestTarget, write_request, write_request_with};
pub use framing::{BodyLength, Framing};
pub use head::{Head, HeaderFields, HopByHop, Request, Response, TargetForm};
pub(crate) use head::{write_field, write_lower_field};
pub(crate) use server::no_fields;
pub use server::{Next, ResponseHead, ServerConn, ServerEvent};

/// A response head as [`ClientConn`] reads it: HTTP/1.0 or not, the status digits,
/// the reason (empty when it holds obs-text) and the fields, or the error it answers.
/// `raw` starts with the head (what follows its empty line is not read). For comparing our parser with
/// httparse (the `http1_response` fuzz target); the codec itself goes through
/// [`ClientConn::handle_input`].
pub type ReadHead<'a> = (bool, u16, &'a [u8], Vec<(&'a [u8], &'a [u8])>);

#[doc(hidden)]
pub fn read_response_head(raw: &[u8], max_headers: usize) -> Result<ReadHead<'_>, Error> {
    let mut spans = Vec::new();
    let (line, _) = parse::response(raw, &mut spans, max_headers).map_err(parse::Fault::error)?;
    let at = |(start, end): (u32, u32)| raw.get(start as usize..end as usize).unwrap_or_default();
    let fields = spans.iter().map(|s| (at(s.name), at(s.value))).collect();
    Ok((line.http10, line.code, at(line.reason), fields))
}

use http::StatusCode;

/// Limits, with safe defaults. The head and URI limits come from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest head (start line plus headers, or a trailer section). Over it: 431.
    pub max_head_bytes: usize,
    /// Longest request target. Over it: 414.
    pub max_uri_bytes: usize,
    /// Most header fields in one head. Over it: 431.
    pub max_headers: usize,
    /// Largest body. Over it: 413.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head_bytes: 64 * 1024, max_uri_bytes: 8 * 1024, max_headers: 100, max_body_bytes: 16 << 20 }
    }
}

/// Largest number of header fields any head may hold (the parser's array size).
pub const MAX_HEADERS: usize = 256;

/// A protocol error: what went wrong, and so which status to answer with.
/// Every protocol error leaves the connection unusable: close it after answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The head (or a trailer section) is over `max_head_bytes`, or has too many fields.
    HeadTooLarge,
    /// The request target is over `max_uri_bytes`.
    UriTooLong,
    /// The body is over `max_body_bytes`.
    BodyTooLarge,
    /// A transfer coding other than chunked.
    UnsupportedTransferEncoding,
    /// Not HTTP/1.0 or HTTP/1.1.
    UnsupportedVersion,
    /// Any other framing or syntax error; the text says which.
    Malformed(&'static str),
    /// The caller broke the codec's contract (wrote a body where none may be, ...).
    Usage(&'static str),
}

impl Error {
    /// The status to answer a client with.
    pub fn status(self) -> StatusCode {
        match self {
            Error::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::UriTooLong => StatusCode::URI_TOO_LONG,
            Error::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedTransferEncoding => StatusCode::NOT_IMPLEMENTED,
            Error::UnsupportedVersion => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            Error::Malformed(_) => StatusCode::BAD_REQUEST,
            Error::Usage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short reason, fit for a response body or a log line.
    pub fn reason(self) -> &'static str {
        match self {
            Error::HeadTooLarge => "request header fields too large",
            Error::UriTooLong => "URI too long",
            Error::BodyTooLarge => "body too large",
            Error::UnsupportedTransferEncoding => "unsupported transfer coding",
            Error::UnsupportedVersion => "HTTP version not supported",
            Error::Malformed(why) | Error::Usage(why) => why,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.reason(), self.status().as_u16())
    }
}

impl std::error::Error for Error {}

/// Finds the end of a head (`\r\n\r\n`, or `\n\n` which RFC 9112 lets a recipient accept)
/// in `buf`, starting the search at `*scanned` and remembering how far it looked, so a
/// head that arrives byte by byte is scanned once in total. Returns the head length.
/// A head's first look parses it in place instead (the parsers stop at its end); the
/// search runs for a head that did not come whole in that look, or that was refused.
pub(crate) fn find_head_end(buf: &[u8], scanned: &mut usize) -> Option<usize> {
    // Back up 3 bytes: the terminator may straddle the previous end of input.
    let start = scanned.saturating_sub(3);
    let mut i = start;
    while let Some(off) = buf.get(i..).and_then(find_lf) {
        let lf = i + off;
        // "\n\n" or "\n\r\n" ends the head.
        match (buf.get(lf + 1), buf.get(lf + 2)) {
            (Some(b'\n'), _) => return Some(lf + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(lf + 3),
            (None, _) | (Some(b'\r'), None) => break,
            _ => i = lf + 1,
        }
    }
    *scanned = buf.len();
    None
}

/// Headers that describe one hop's connection or framing, never copied across.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// A header name in Go's canonical form (`x-tenant` -> `X-Tenant`), as KrakenD shows
/// names to CEL and writes them in `Access-Control-Expose-Headers`.
pub fn canonical_name(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let c = if upper { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() };
            upper = c == '-';
            c
        })
        .collect()
}

/// Whether `n` (a header name, any case) is one of [`HOP_BY_HOP`]: by length first,
/// then one or two comparisons (it runs for every header of every message). The same
/// list as the hop-by-hop kinds of `head::Kind::of` (a test holds the two together):
/// kept apart because going through `Kind::of`, which also looks for the framing
/// names, cost the no-op request 275 instructions in `cargo bench --bench core`.
#[inline]
pub fn is_hop_by_hop_name(n: &[u8]) -> bool {
    let is = |name: &str| n.eq_ignore_ascii_case(name.as_bytes());
    match n.len() {
        2 => is("te"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        18 => is("proxy-authenticate"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

/// Writes end-to-end headers, skipping those the codec owns (framing and connection).
/// `HeaderName`/`HeaderValue` cannot hold CR or LF, so nothing can be injected here.
/// Header fields rendered once (`name: value\r\n` each), from a header map, so the
/// same fields cost one copy per response: a `no-op` answer's `X-KrakenD-Completed`,
/// the forward proxy's `Via`. Built only from a map: the bytes hold no CR or LF but
/// the line ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(Vec<u8>);

impl Fields {
    /// The fields of `headers`, as a response head would write them.
    pub fn render(headers: &http::HeaderMap) -> Fields {
        let mut out = Vec::new();
        write_headers(headers, &mut out);
        Fields(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

pub(crate) fn write_headers(headers: &http::HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in headers {
        let n = name.as_str();
        if n == "content-length" || n == "host" || (is_hop_by_hop_name(n.as_bytes()) && n != "upgrade") {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes one chunk of a chunked body. Empty data writes nothing (an empty chunk would
/// end the body).
pub fn write_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let len = data.len();
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[(len >> (i * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The first `\n` in `buf`, eight bytes at a time: a head's lines are tens of bytes,
/// and a byte-by-byte search cost about 900 instructions per response head of nine
/// fields (benches/core.rs), a third of what parsing the head costs.
fn find_lf(buf: &[u8]) -> Option<usize> {
    let mut words = buf.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        // The lowest byte flagged is always a `\n`, so little-endian order finds the first.
        let zero = crate::swar::equal(u64::from_le_bytes(bytes), b'\n');
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words.remainder().iter().position(|&b| b == b'\n').map(|p| at + p)
}

/// Writes the last chunk of a chunked body (no trailers).
pub fn write_last_chunk(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n\r\n");
}

#[cfg(test)]
mod tests {
    #[test]
    fn canonical_names_as_go_writes_them() {
        assert_eq!(super::canonical_name("x-REQUEST-id"), "X-Request-Id");
        assert_eq!(super::canonical_name("content-type"), "Content-Type");
    }

    use super::{find_head_end, find_lf};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn lf_is_found_as_a_byte_search_finds_it(buf in proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'\r'), Just(0x8a_u8), Just(0x0b_u8), Just(0x09_u8), any::<u8>()], 0..40)) {
            prop_assert_eq!(find_lf(&buf), buf.iter().position(|&b| b == b'\n'));
        }
    }

    #[test]
    fn head_end_is_found_across_calls() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        let mut scanned = 0;
        for end in 1..head.len() {
            let found = find_head_end(&head[..end], &mut scanned);
            if end < 27 {
                assert_eq!(found, None, "at {end}");
            } else {
                assert_eq!(found, Some(27), "at {end}");
                scanned = 0;
            }
        }
        let mut s = 0;
        assert_eq!(find_head_end(b"GET / HTTP/1.0\n\nx", &mut s), Some(16));
        let mut s = 0;
        assert_eq!(find_head_end(b"\r\n\r\n", &mut s), Some(4));
    }
}
