//! Building backend requests from a client request: URL, query string, headers, host.
//!
//! Security rules, each tested in `core/tests/exchange.rs`:
//! - Every value put into a URL (path parameter, `{input_headers.X}`, `{respN_x}`) is
//!   percent-decoded once and re-encoded so that only unreserved characters and a few
//!   harmless sub-delimiters stay literal: it can never add a `/`, `?`, `#`, `&`, `=`,
//!   `%`, CR or LF to the backend URL. A value that contains a `.` or `..` segment
//!   (`..`, `../x`, `a\..`) is refused, and so is a rendered path with a dot segment,
//!   because many backends resolve `%2E%2E` as `..`.
//! - Forwarded query pairs are re-encoded byte by byte where they are not visible ASCII.
//! - Header values are copied from the parsed client head, whose parser refused CR, LF
//!   and NUL in them (and non-tokens in names). Hop-by-hop
//!   headers (and those named in `Connection`) never cross. `X-Forwarded-For` is always
//!   written by the gateway (the socket peer, or a trusted proxy's claim), never copied.

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use http::{HeaderName, HeaderValue};

use crate::config::net::{finish_backend_path, is_dot_segment};
use crate::gateway::jwt::Token;

use crate::http1::{self, Head, HopByHop};
use crate::plan::{BackendHost, BackendPlan, HeaderPolicy, UrlPiece};

/// Round-robin position per backend. One per shard (`sluice-uring`) or one per server
/// (`sluice-tokio`): the counters are relaxed atomics, so picking takes no lock and a
/// connection can pick through a shared reference.
#[derive(Debug, Default)]
pub struct Balancer {
    next: Vec<AtomicU32>,
}

impl Balancer {
    /// Counters for `backends` backends (`Gateway::backend_count`).
    pub fn new(backends: usize) -> Balancer {
        Balancer { next: (0..backends).map(|_| AtomicU32::new(0)).collect() }
    }

    /// The next host of a backend (the first, for a backend this balancer has no
    /// counter for).
    pub fn pick<'h>(&self, backend: &'h BackendPlan) -> Option<&'h BackendHost> {
        let n = backend.hosts.len();
        if n <= 1 {
            return backend.hosts.first();
        }
        let i = self.next.get(backend.slot).map_or(0, |c| c.fetch_add(1, Ordering::Relaxed) as usize % n);
        backend.hosts.get(i)
    }
}

/// Why a backend URL could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// A client-supplied value would change the URL's structure: answered 400.
    Refused(String),
    /// A `{respN_x}` value is missing or not a scalar: the call fails.
    Missing(String),
}

/// Characters left as they are in a URL value: RFC 3986 unreserved plus sub-delimiters
/// that mean nothing to paths or to `name=value&` query strings.
fn keep_literal(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(b, b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'\'' | b'(' | b')' | b'*' | b',' | b';' | b':' | b'@')
}

fn push_encoded(b: u8, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// Percent-encodes a decoded value for a URL.
pub fn encode_value(value: &[u8], out: &mut String) {
    for &b in value {
        if keep_literal(b) {
            out.push(char::from(b));
        } else {
            push_encoded(b, out);
        }
    }
}

pub use crate::config::percent_decode;

/// A query string's `name=value` pairs, decoded as Go's `url.ParseQuery` decodes
/// them (`+` is a space, then percent-decoding), empty pairs skipped.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    let decode = |s: &str| String::from_utf8_lossy(&percent_decode(&s.replace('+', " "))).into_owned();
    query.split('&').filter(|p| !p.is_empty()).map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k), decode(v))
    })
}

/// Renders a URL value, refusing dot segments.
fn put_value(name: &str, value: &[u8], out: &mut String) -> Result<(), RenderError> {
    if value.split(|&b| b == b'/' || b == b'\\').any(is_dot_segment) {
        return Err(RenderError::Refused(format!("the value of {{{name}}} is a dot segment")));
    }
    encode_value(value, out);
    Ok(())
}

/// What [`render_url`] needs from the exchange.
pub struct UrlInputs<'a> {
    /// Endpoint parameters, percent-encoded as they came.
    pub params: &'a [(String, String)],
    pub headers: &'a Head,
    /// Looks up `{respN_path}`: the text of a scalar in an earlier response.
    pub response: &'a dyn Fn(usize, &[String]) -> Option<String>,
    /// The request's token, for `{JWT.claim}`.
    pub token: Option<&'a crate::gateway::jwt::Token>,
}

impl std::fmt::Debug for UrlInputs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlInputs").field("params", &self.params).finish_non_exhaustive()
    }
}

/// Renders a backend's `url_pattern` with its placeholders, then appends the forwarded
/// query pairs (after the url_pattern's own static query, if any). The host's path
/// prefix (`disable_host_sanitize`) is the caller's to put in front. It is written in
/// `room` (emptied first): a string an earlier URL left, or a new one.
pub fn render_url(
    backend: &BackendPlan,
    inputs: &UrlInputs<'_>,
    client_query: Option<&str>,
    room: String,
) -> Result<String, RenderError> {
    let mut url = room;
    url.clear();
    url.reserve(64);
    match &backend.fixed_path {
        Some(path) => url.push_str(path),
        None => render_path(backend, inputs, &mut url)?,
    }
    if let Some(q) = client_query {
        let mut first = !url.contains('?');
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            if name.is_empty() || !backend.query.allows(&String::from_utf8_lossy(&percent_decode(name))) {
                continue;
            }
            if first {
                url.push('?');
                first = false;
            } else if !url.ends_with(['?', '&']) {
                url.push('&');
            }
            for &b in pair.as_bytes() {
                if b > 0x20 && b < 0x7f && b != b'#' {
                    url.push(char::from(b));
                } else {
                    push_encoded(b, &mut url);
                }
            }
        }
    }
    Ok(url)
}

/// The path of `backend`'s `url_pattern` with its placeholders filled in `url`: refused
/// when it would hold a dot segment, and given a leading `/` when it has none.
fn render_path(backend: &BackendPlan, inputs: &UrlInputs<'_>, url: &mut String) -> Result<(), RenderError> {
    for piece in &backend.url_pattern {
        match piece {
            UrlPiece::Literal(l) => url.push_str(l),
            UrlPiece::Param(name) => {
                let raw = inputs.params.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str());
                put_value(name, &percent_decode(raw), url)?;
            }
            UrlPiece::InputHeader(h) => {
                let v = inputs.headers.get(h.as_str()).unwrap_or_default();
                put_value(h.as_str(), v, url)?;
            }
            UrlPiece::Jwt(claim) => {
                let name = format!("JWT.{claim}");
                // KrakenD writes the claim as it is; here it is a value like any other,
                // percent-encoded and never a dot segment, so it stays in its segment.
                let Some(v) = inputs.token.and_then(|t| t.claim_text(claim)) else {
                    return Err(RenderError::Missing(format!("{{{name}}}: the token has no such claim")));
                };
                put_value(&name, v.as_bytes(), url)?;
            }
            UrlPiece::Response { index, path } => {
                let name = format!("resp{index}_{}", path.join("."));
                let Some(v) = (inputs.response)(*index, path) else {
                    return Err(RenderError::Missing(format!("{{{name}}} has no value in response {index}")));
                };
                put_value(&name, v.as_bytes(), url)?;
            }
        }
    }
    if !finish_backend_path(url) {
        return Err(RenderError::Refused("the backend path would contain a dot segment".into()));
    }
    Ok(())
}

/// `Sluice/<version>`.
pub fn user_agent() -> HeaderValue {
    HeaderValue::from_static(USER_AGENT_VALUE)
}

pub(crate) const USER_AGENT_VALUE: &str = concat!("Sluice/", env!("CARGO_PKG_VERSION"));

/// Headers the gateway sets itself: never copied from the client.
pub(crate) fn is_gateway_owned(name: &[u8]) -> bool {
    ["host", "content-length", "x-forwarded-for", "x-forwarded-host", "x-forwarded-via"]
        .iter()
        .any(|own| own.len() == name.len() && own.as_bytes().eq_ignore_ascii_case(name))
}

/// Writes an address as `Display` does; IPv4 digit by digit (the formatter costs
/// more than the rest of the header).
fn put_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        // Writing into a Vec cannot fail.
        IpAddr::V6(v6) => drop(write!(out, "{v6}")),
    }
}

/// `traceparent` or `tracestate` (any case): a trace context's fields.
pub(crate) fn is_trace_field(n: &[u8]) -> bool {
    n.eq_ignore_ascii_case(b"traceparent") || n.eq_ignore_ascii_case(b"tracestate")
}

/// Writes the header fields a backend receives, straight from the client's parsed
/// head (no header map is built): the client's end-to-end headers the policy passes
/// (names lowercased, values as received; hop-by-hop ones, those its `Connection`
/// names, and those the gateway sets left out), `Content-Type` whatever the policy,
/// `X-Forwarded-For` (`client_ip`), `X-Forwarded-Host` (the client's `Host`), and
/// `User-Agent: Sluice/<version>`, or `X-Forwarded-Via` with it when the client's
/// `User-Agent` was passed; and `Accept-Encoding: <ask>` when asked to and neither the
/// client's `Accept-Encoding` nor a `Range` was passed (Go's client asks for gzip so;
/// see [`crate::call::coding`]). `token` is what `auth/validator` let through: its
/// `propagate_claims` headers replace the client's of their names (even when a claim
/// gives one no value), and cross as those would, under the policy. The client
/// head's names are tokens and its values hold no CR, LF or NUL (the parser refused
/// them), nor do a [`HeaderValue`]'s, so nothing can be injected. `traced`: the call
/// carries its own trace context, so the client's `traceparent` and `tracestate` stay
/// out.
pub fn write_backend_headers(
    policy: &HeaderPolicy,
    client: &Head,
    client_ip: IpAddr,
    (ask, token, traced): (Option<&[u8]>, Option<&Token>, bool),
    out: &mut Vec<u8>,
) {
    let hop = HopByHop::of(client);
    let (replaces, claims): (&[HeaderName], &[(HeaderName, HeaderValue)]) =
        token.map_or((&[], &[]), |t| (&t.replaces, &t.headers));
    let replaced = |n: &[u8]| replaces.iter().any(|c| n.eq_ignore_ascii_case(c.as_str().as_bytes()));
    let skip = |n: &[u8]| {
        is_gateway_owned(n) || hop.contains(n) || (!replaces.is_empty() && replaced(n)) || (traced && is_trace_field(n))
    };
    let (mut content_type, mut user_agent, mut coded) = (false, false, false);
    let mut put = |n: &[u8], v: &[u8], out: &mut Vec<u8>| {
        content_type |= n.eq_ignore_ascii_case(b"content-type");
        user_agent |= n.eq_ignore_ascii_case(b"user-agent");
        coded |= n.eq_ignore_ascii_case(b"accept-encoding") || n.eq_ignore_ascii_case(b"range");
        http1::write_field(n, v, out);
    };
    match policy {
        HeaderPolicy::All => {
            for (n, v) in client.iter_raw() {
                if !skip(n) {
                    put(n, v, out);
                }
            }
        }
        HeaderPolicy::Names(names) => {
            for n in names {
                let n = n.as_str();
                if skip(n.as_bytes()) {
                    continue;
                }
                for v in client.get_all(n) {
                    put(n.as_bytes(), v, out);
                }
            }
        }
    }
    for (n, v) in claims {
        let name = n.as_str().as_bytes();
        if policy.allows(n.as_str()) && !is_gateway_owned(name) && !(traced && is_trace_field(name)) {
            put(n.as_str().as_bytes(), v.as_bytes(), out);
        }
    }
    if !content_type && let Some(ct) = client.get("content-type") {
        http1::write_lower_field(b"content-type", ct, out);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    put_ip(client_ip, out);
    out.extend_from_slice(b"\r\n");
    if let Some(host) = client.host() {
        http1::write_lower_field(b"x-forwarded-host", host, out);
    }
    let ua = if user_agent { b"x-forwarded-via" } else { &b"user-agent"[..] };
    http1::write_lower_field(ua, USER_AGENT_VALUE.as_bytes(), out);
    if let Some(ask) = ask
        && !coded
    {
        http1::write_lower_field(b"accept-encoding", ask, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_written_as_display_does() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "127.0.0.1",
            "192.168.100.9",
            "255.255.255.255",
            "1.20.199.250",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            put_ip(ip, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn decoding_and_encoding() {
        assert_eq!(&*percent_decode("a%2Fb%zz%4"), b"a/b%zz%4");
        let mut out = String::new();
        encode_value(b"a b/c?d#e&f=g%\r\n..+~", &mut out);
        assert_eq!(out, "a%20b%2Fc%3Fd%23e%26f%3Dg%25%0D%0A..%2B~");
    }
}
