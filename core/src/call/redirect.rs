//! Following backend redirects as Go's `net/http` client does for KrakenD: at most
//! [`MAX_REDIRECTS`]; 301, 302 and 303 turn the request into a GET without a body (a
//! HEAD stays a HEAD), 307 and 308 keep the method and the body. Beyond Go: the
//! `Authorization`, `Cookie` and `Proxy-Authorization` headers are dropped when a
//! redirect leaves the origin (scheme, host and port), and a `Location` that is not
//! http(s) fails the call. `"backend/http/client": {"no_redirect": true}` passes the
//! 3xx through instead.
//!
//! Pure functions over bytes: [`crate::conn`] asks [`next`] what a 3xx means and
//! [`rewrite`] for the request to send next, from the one it sent.

use http::{Method, StatusCode};

use crate::config::{HostAddr, Scheme};

/// Go stops at the tenth redirect (`stopped after 10 redirects`).
pub const MAX_REDIRECTS: u8 = 10;

/// Where a redirect sends the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub addr: HostAddr,
    /// `addr`'s authority for the `Host` header.
    pub authority: String,
    /// Origin-form target: path and query.
    pub target: String,
    pub method: Method,
    /// The body goes again (307, 308).
    pub keep_body: bool,
    /// Another scheme, host or port than the request's.
    pub cross_origin: bool,
    /// The `Referer` Go's client sets on the hop: the URL that redirected, without
    /// credentials; none from `https` to `http` (RFC 9110 10.1.3).
    pub referer: Option<String>,
}

/// The method a redirect status asks for and whether the body goes with it; `None`
/// for a status that is not a redirect to follow.
pub fn method_after(status: StatusCode, method: &Method) -> Option<(Method, bool)> {
    match status.as_u16() {
        301..=303 if *method == Method::HEAD => Some((Method::HEAD, false)),
        301..=303 => Some((Method::GET, false)),
        307 | 308 => Some((method.clone(), true)),
        _ => None,
    }
}

/// Resolves `location` against the request that got it (`from`, `target`): the next
/// hop, `Ok(None)` when `status` is no redirect, or why the call fails.
pub fn next(
    status: StatusCode,
    method: &Method,
    from: &HostAddr,
    target: &str,
    location: Option<&[u8]>,
) -> Result<Option<Hop>, String> {
    let Some((method, keep_body)) = method_after(status, method) else { return Ok(None) };
    // Go hands a 3xx without Location back as it is.
    let Some(location) = location else { return Ok(None) };
    let location = std::str::from_utf8(location).map_err(|_| "the redirect's Location is not text".to_string())?.trim();
    if location.is_empty() || location.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("the redirect's Location {location:?} is not a URL"));
    }
    let target_before = target;
    let (addr, target) = if let Some(rest) = location.strip_prefix("//") {
        // Scheme-relative.
        absolute(&format!("{}://{rest}", from.scheme.as_str()))?
    } else if has_scheme(location) {
        absolute(location)?
    } else if location.starts_with('/') {
        (from.clone(), location.to_string())
    } else {
        // Relative to the request's path: its last segment replaced.
        let path = target.split(['?', '#']).next().unwrap_or("/");
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        (from.clone(), format!("{dir}{location}"))
    };
    // The fragment is the client's business.
    let target = target.split('#').next().unwrap_or_default().to_string();
    let target = if target.is_empty() || target.starts_with('?') { format!("/{target}") } else { target };
    let cross_origin =
        addr.scheme != from.scheme || !addr.host.eq_ignore_ascii_case(&from.host) || addr.port != from.port;
    let downgrade = from.scheme == Scheme::Https && addr.scheme == Scheme::Http;
    let sent = target_before;
    let referer = (!downgrade).then(|| format!("{}://{}{sent}", from.scheme.as_str(), from.authority()));
    Ok(Some(Hop { authority: addr.authority(), addr, target, method, keep_body, cross_origin, referer }))
}

/// Whether `s` starts with a URL scheme (`letter *(letter / digit / + - .) ":"`).
fn has_scheme(s: &str) -> bool {
    let Some(colon) = s.find(':') else { return false };
    let scheme = &s[..colon];
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !s[..colon].contains('/')
}

/// An absolute http(s) URL: where to connect and the origin-form target.
fn absolute(url: &str) -> Result<(HostAddr, String), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("the redirect to {url:?} is not http(s)"))?;
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return Err(format!("the redirect to {url:?} is not http(s)"));
    }
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(split);
    if authority.contains('@') {
        return Err(format!("the redirect to {url:?} carries credentials"));
    }
    let addr = HostAddr::parse(&format!("{scheme}://{authority}"))
        .map_err(|e| format!("the redirect to {url:?} has no usable host: {e}"))?;
    Ok((addr, target.to_string()))
}

/// The target of the request line in `sent`, in origin form (an absolute-form target,
/// written to a proxy, loses its scheme and authority).
pub fn sent_target(sent: &[u8]) -> String {
    let line = sent.split(|&b| b == b'\r').next().unwrap_or_default();
    let target = line.split(|&b| b == b' ').nth(1).unwrap_or(b"/");
    let target = String::from_utf8_lossy(target);
    match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/".to_string(), |i| rest[i..].to_string()),
        None => target.into_owned(),
    }
}

/// Whether the head of `sent` has a field `name` (lowercase).
pub fn sent_has(sent: &[u8], name: &str) -> bool {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut fields);
    req.parse(sent).is_ok() && req.headers.iter().any(|f| f.name.eq_ignore_ascii_case(name))
}

/// The request line's target form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `GET /path` (direct, or in a CONNECT tunnel).
    Origin,
    /// `GET http://host/path` (to a proxy).
    Absolute,
}

/// The request to send for `hop`, from the one sent before (`sent`: its head and, when
/// it had one, its whole body). The fields the gateway set are kept but `Host`, the
/// framing when the body is dropped, the credentials when the origin changes, and the
/// proxy's credentials, which `proxy_auth` gives again for the next hop's proxy.
/// `referer`: `None` keeps the sent `Referer` (the client's own, forwarded); `Some`
/// replaces it with the hop's (or drops it, for `Some(None)`), as Go's client does.
/// `None` when `sent` cannot be read again (its head has more than 128 fields).
pub fn rewrite(
    sent: &[u8],
    hop: &Hop,
    form: Form,
    (proxy_auth, referer): (Option<&str>, Option<Option<&str>>),
) -> Option<Vec<u8>> {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(sent) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let mut out = Vec::with_capacity(sent.len() + 64);
    out.extend_from_slice(hop.method.as_str().as_bytes());
    out.push(b' ');
    if form == Form::Absolute {
        out.extend_from_slice(hop.addr.scheme.as_str().as_bytes());
        out.extend_from_slice(b"://");
        out.extend_from_slice(hop.authority.as_bytes());
    }
    out.extend_from_slice(hop.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(hop.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    for field in req.headers.iter() {
        let name = field.name.to_ascii_lowercase();
        let dropped = match name.as_str() {
            "host" | "proxy-authorization" => true,
            "referer" => referer.is_some(),
            "content-length" | "transfer-encoding" | "content-type" => !hop.keep_body,
            "authorization" | "cookie" => hop.cross_origin,
            _ => false,
        };
        if !dropped {
            crate::http1::write_field(field.name.as_bytes(), field.value, &mut out);
        }
    }
    if let Some(auth) = proxy_auth {
        crate::http1::write_lower_field(b"proxy-authorization", auth.as_bytes(), &mut out);
    }
    if let Some(Some(referer)) = referer {
        crate::http1::write_lower_field(b"referer", referer.as_bytes(), &mut out);
    }
    out.extend_from_slice(b"\r\n");
    if hop.keep_body {
        out.extend_from_slice(&sent[head_len..]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scheme;

    fn at(raw: &str) -> HostAddr {
        HostAddr::parse(raw).unwrap()
    }

    fn hop(status: u16, method: Method, location: &str) -> Result<Option<Hop>, String> {
        let status = StatusCode::from_u16(status).unwrap();
        next(status, &method, &at("http://api.local:8080"), "/v1/items?page=2", Some(location.as_bytes()))
    }

    #[test]
    fn locations_resolve_against_the_request() {
        let h = hop(302, Method::POST, "/login?next=%2F#top").unwrap().unwrap();
        assert_eq!(
            (h.addr.clone(), h.target.as_str(), h.method.clone()),
            (at("http://api.local:8080"), "/login?next=%2F", Method::GET)
        );
        assert!(!h.keep_body && !h.cross_origin);
        let h = hop(307, Method::PUT, "other").unwrap().unwrap();
        assert_eq!((h.target.as_str(), h.method.clone(), h.keep_body), ("/v1/other", Method::PUT, true));
        let h = hop(308, Method::GET, "https://API.local:8080").unwrap().unwrap();
        assert_eq!((h.addr.scheme, h.target.as_str(), h.cross_origin), (Scheme::Https, "/", true));
        let h = hop(301, Method::HEAD, "//cdn.local/x").unwrap().unwrap();
        assert_eq!((h.authority.as_str(), h.target.as_str(), h.method.clone()), ("cdn.local", "/x", Method::HEAD));
        let h = hop(303, Method::GET, "http://api.local:8080?q=1").unwrap().unwrap();
        assert_eq!((h.target.as_str(), h.cross_origin), ("/?q=1", false));
        assert_eq!(hop(304, Method::GET, "/x"), Ok(None));
        assert_eq!(hop(300, Method::GET, "/x"), Ok(None));
        assert_eq!(
            next(StatusCode::FOUND, &Method::GET, &at("http://a"), "/", None),
            Ok(None),
            "no Location: the 3xx is the answer"
        );
    }

    #[test]
    fn bad_locations_fail_the_call() {
        assert_eq!(
            hop(302, Method::GET, "ftp://files.local/x"),
            Err(r#"the redirect to "ftp://files.local/x" is not http(s)"#.into())
        );
        assert_eq!(
            hop(302, Method::GET, "javascript:alert(1)"),
            Err(r#"the redirect to "javascript:alert(1)" is not http(s)"#.into())
        );
        assert_eq!(
            hop(302, Method::GET, "http://u:p@evil.local/"),
            Err(r#"the redirect to "http://u:p@evil.local/" carries credentials"#.into())
        );
        assert!(
            hop(302, Method::GET, "http://:99999/")
                .unwrap_err()
                .starts_with("the redirect to \"http://:99999/\" has no usable host")
        );
        assert_eq!(hop(302, Method::GET, "/a b"), Err(r#"the redirect's Location "/a b" is not a URL"#.into()));
        assert_eq!(hop(302, Method::GET, ""), Err(r#"the redirect's Location "" is not a URL"#.into()));
    }

    #[test]
    fn requests_are_rewritten() {
        let sent = b"POST /v1/items HTTP/1.1\r\nhost: api.local:8080\r\nauthorization: Bearer t\r\ncookie: a=1\r\n\
                     x-trace: 7\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        let h = hop(307, Method::POST, "https://auth.local/v2").unwrap().unwrap();
        let out = rewrite(sent, &h, Form::Origin, (None, Some(None))).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v2 HTTP/1.1\r\nhost: auth.local\r\nx-trace: 7\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
        let h = hop(302, Method::POST, "/done").unwrap().unwrap();
        let out = rewrite(sent, &h, Form::Absolute, (Some("Basic eDp5"), Some(h.referer.as_deref()))).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET http://api.local:8080/done HTTP/1.1\r\nhost: api.local:8080\r\nauthorization: Bearer t\r\ncookie: a=1\r\n\
             x-trace: 7\r\nproxy-authorization: Basic eDp5\r\nreferer: http://api.local:8080/v1/items?page=2\r\n\r\n"
        );
        // The client's own Referer is kept (None); the hop's replaces an earlier hop's.
        let with = b"GET /a HTTP/1.1\r\nhost: api.local:8080\r\nreferer: https://app/x\r\n\r\n";
        assert!(sent_has(with, "referer") && !sent_has(sent, "referer"));
        let h = hop(302, Method::GET, "/b").unwrap().unwrap();
        let kept = String::from_utf8(rewrite(with, &h, Form::Origin, (None, None)).unwrap()).unwrap();
        assert!(kept.ends_with("\r\nreferer: https://app/x\r\n\r\n"), "{kept}");
        let replaced =
            String::from_utf8(rewrite(with, &h, Form::Origin, (None, Some(Some("http://a/1")))).unwrap()).unwrap();
        assert_eq!(replaced, "GET /b HTTP/1.1\r\nhost: api.local:8080\r\nreferer: http://a/1\r\n\r\n");
        // From https to http: no Referer at all.
        let secure = HostAddr::parse("https://api.local").unwrap();
        let down = next(StatusCode::FOUND, &Method::GET, &secure, "/s", Some(b"http://api.local/p")).unwrap().unwrap();
        assert_eq!(down.referer, None);
        let up = next(StatusCode::FOUND, &Method::GET, &secure, "/s?q=1", Some(b"/p")).unwrap().unwrap();
        assert_eq!(up.referer.as_deref(), Some("https://api.local/s?q=1"));
    }
}
