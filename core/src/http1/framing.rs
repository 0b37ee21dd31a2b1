//! Body framing and connection semantics of a head: every RFC 9112 rule, in one place,
//! for both roles.

use http::{Method, StatusCode};

use super::Error;
use super::head::Kind;

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// The length of a body about to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// Exactly this many bytes (`Content-Length`).
    Known(u64),
    /// Not known in advance: chunked.
    Unknown,
}

/// What the headers of a head say, found in one pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    pub content_length: Option<u64>,
    /// `None`: no Transfer-Encoding header; otherwise what its codings amount to.
    pub transfer_encoding: Option<TransferEncoding>,
    pub close: bool,
    pub keep_alive: bool,
    pub connection_upgrade: bool,
    pub upgrade: bool,
    pub expect_continue: bool,
    pub hosts: usize,
    /// Every `Host` value is an RFC 9110 authority (`host[:port]`, not empty).
    pub hosts_valid: bool,
}

impl Scan {
    /// One `Content-Length` value more: each must say the same length.
    fn set_length(&mut self, n: u64) -> Result<(), Error> {
        match self.content_length {
            Some(prev) if prev != n => Err(Error::Malformed("differing Content-Length values")),
            _ => {
                self.content_length = Some(n);
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransferEncoding {
    /// Only `chunked`.
    Chunked,
    /// Ends in `chunked` after codings we do not decode (`gzip, chunked`).
    OtherThenChunked,
    /// Does not end in `chunked`.
    NotChunked,
}

/// Strips optional whitespace (SP, HTAB) from both ends.
pub(crate) fn trim(v: &[u8]) -> &[u8] {
    // Usually nothing to trim: two looks.
    match (v.first(), v.last()) {
        (Some(a), Some(b)) if !matches!(a, b' ' | b'\t') && !matches!(b, b' ' | b'\t') => return v,
        _ => {}
    }
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |i| i + 1);
    v.get(start..end).unwrap_or_default()
}

/// Comma-separated list elements, trimmed, empty ones skipped (RFC 9110 5.6.1).
fn list(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim).filter(|e| !e.is_empty())
}

fn parse_length(v: &[u8]) -> Result<u64, Error> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(Error::Malformed("invalid Content-Length"));
    }
    v.iter()
        .try_fold(0u64, |acc, d| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))
        .ok_or(Error::Malformed("invalid Content-Length"))
}

/// The bytes a reg-name may hold: letters, digits, `-._~`, `%` (escapes) and the
/// sub-delims, looked up a byte at a time.
static REG_NAME: [bool; 256] = {
    let mut map = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        map[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        i += 1;
    }
    map
};

/// Whether `v` is a `Host` value as RFC 9110 4.2.3 / RFC 3986 3.2 have it: a host (an
/// IP literal in brackets, or a reg-name: letters, digits, `-._~`, `%` escapes and the
/// sub-delims) and an optional `:port`. Empty is refused too (as nginx does): there is
/// no origin-form request without an authority. `evil.example/secret?x` is not one.
pub(crate) fn valid_authority(v: &[u8]) -> bool {
    let (host, port) = if v.first() == Some(&b'[') {
        let Some(end) = v.iter().position(|&b| b == b']') else { return false };
        let literal = &v[1..end];
        if literal.is_empty() || !literal.iter().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')) {
            return false;
        }
        match &v[end + 1..] {
            [] => (&v[..=end], None),
            [b':', port @ ..] => (&v[..=end], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(colon) => (&v[..colon], Some(&v[colon + 1..])),
            None => (v, None),
        }
    };
    !host.is_empty()
        && (host[0] == b'[' || host.iter().all(|&b| REG_NAME[usize::from(b)]))
        && port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit))
}

/// Reads the headers that decide framing and connection handling.
pub(crate) fn scan<'h>(headers: impl Iterator<Item = (Kind, &'h [u8])>) -> Result<Scan, Error> {
    let mut s = Scan::default();
    let mut codings: Vec<&[u8]> = Vec::new();
    let mut te_seen = false;
    for (kind, value) in headers {
        match kind {
            Kind::ContentLength => {
                // Usually digits alone: read at once, no list to split.
                if let Ok(n) = parse_length(value) {
                    s.set_length(n)?;
                    continue;
                }
                for v in value.split(|&b| b == b',').map(trim) {
                    s.set_length(parse_length(v)?)?;
                }
            }
            Kind::TransferEncoding => {
                te_seen = true;
                codings.extend(list(value));
            }
            Kind::Connection => {
                // Usually one token: matched whole, no list to split.
                if crate::swar::eq_lower(value, b"keep-alive") {
                    s.keep_alive = true;
                    continue;
                }
                for token in list(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        s.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        s.keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        s.connection_upgrade = true;
                    }
                }
            }
            Kind::Host => {
                s.hosts += 1;
                s.hosts_valid = (s.hosts == 1 || s.hosts_valid) && valid_authority(trim(value));
            }
            Kind::Expect => s.expect_continue = trim(value).eq_ignore_ascii_case(b"100-continue"),
            Kind::Upgrade => s.upgrade = true,
            Kind::HopByHop | Kind::Other => {}
        }
    }
    if te_seen {
        let chunked = |c: &&[u8]| c.eq_ignore_ascii_case(b"chunked");
        s.transfer_encoding = Some(match codings.split_last() {
            Some((last, rest)) if chunked(last) => {
                if rest.iter().any(chunked) {
                    return Err(Error::Malformed("chunked applied more than once"));
                }
                if rest.is_empty() { TransferEncoding::Chunked } else { TransferEncoding::OtherThenChunked }
            }
            _ => TransferEncoding::NotChunked,
        });
    }
    Ok(s)
}

/// The framing of a request body, by RFC 9112 section 6.
pub(crate) fn request_framing(http10: bool, s: &Scan) -> Result<Framing, Error> {
    match (s.transfer_encoding, s.content_length) {
        (Some(_), _) if http10 => Err(Error::Malformed("Transfer-Encoding in an HTTP/1.0 request")),
        (Some(_), Some(_)) => Err(Error::Malformed("both Transfer-Encoding and Content-Length")),
        (Some(TransferEncoding::Chunked), None) => Ok(Framing::Chunked),
        (Some(TransferEncoding::OtherThenChunked), None) => Err(Error::UnsupportedTransferEncoding),
        (Some(TransferEncoding::NotChunked), None) => Err(Error::Malformed("Transfer-Encoding must end in chunked")),
        (None, Some(0)) | (None, None) => Ok(Framing::None),
        (None, Some(n)) => Ok(Framing::Length(n)),
    }
}

/// The framing of a response body to a request made with `method`.
pub(crate) fn response_framing(method: &Method, status: StatusCode, http10: bool, s: &Scan) -> Result<Framing, Error> {
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || method == Method::HEAD
        || (method == Method::CONNECT && status.is_success())
    {
        return Ok(Framing::None);
    }
    match (s.transfer_encoding, s.content_length) {
        (Some(_), _) if http10 => Err(Error::Malformed("Transfer-Encoding in an HTTP/1.0 response")),
        // RFC 9112 lets a recipient let TE win; a proxy must not guess: refuse.
        (Some(_), Some(_)) => Err(Error::Malformed("both Transfer-Encoding and Content-Length")),
        (Some(TransferEncoding::Chunked), None) => Ok(Framing::Chunked),
        (Some(_), None) => Err(Error::UnsupportedTransferEncoding),
        (None, Some(0)) => Ok(Framing::None),
        (None, Some(n)) => Ok(Framing::Length(n)),
        (None, None) => Ok(Framing::UntilClose),
    }
}

/// Whether the connection stays open after this message, by version and `Connection`.
pub(crate) fn keep_alive(http10: bool, s: &Scan) -> bool {
    !s.close && (!http10 || s.keep_alive)
}
