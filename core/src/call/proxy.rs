//! Backends reached through an HTTP proxy (seed 000): the environment, read as Go's
//! `ProxyFromEnvironment` reads it for KrakenD (`HTTP_PROXY`, `HTTPS_PROXY`,
//! `NO_PROXY`, or their lowercase forms), and a backend's own proxy
//! (`"backend/http/client": {"proxy_address"}` or the built-in `http-proxy` client
//! plugin), which overrides the environment.
//!
//! Core stays Sans-IO: the loader reads the variables and hands them over
//! ([`ProxyEnv::from_vars`]). A plain-HTTP backend behind a proxy gets absolute-form
//! requests (`GET http://backend:8080/path HTTP/1.1`) over kept-alive connections to
//! the proxy, pooled per proxy and credentials. Credentials in a proxy URL become a
//! `Proxy-Authorization: Basic` header; they are never printed: every message shows
//! [`Proxy::shown`], with the user information replaced by `***`.

use std::net::IpAddr;

use crate::config::{BadValue, HostAddr, IpNet, Scheme, has_explicit_port, percent_decode, redact_userinfo};

/// A proxy that backend requests go through. Its `Debug` leaves the credentials out.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Where to connect.
    pub addr: HostAddr,
    /// Idle connections to the proxy are kept under this key (every backend behind the
    /// proxy with the same credentials shares them: absolute-form requests name their
    /// destination): `proxy host:port`, and when the URL has credentials, ` as ` and a
    /// tag that tells them apart without showing them (a keyed hash).
    pub pool_key: String,
    /// `Basic ...` from the URL's user information.
    pub authorization: Option<String>,
    /// The URL with its credentials redacted: what logs and errors show.
    pub shown: String,
    /// Where it was configured: `HTTP_PROXY`, `proxy_address`, ...
    pub source: String,
}

impl Proxy {
    /// Parses a proxy URL. `strict` (a configured `proxy_address`, whose documentation
    /// asks for both): the scheme and the port must be written. From the environment,
    /// as Go: no scheme means `http://`, no port means the scheme's.
    pub fn parse(raw: &str, strict: bool, source: &str) -> Result<Proxy, BadValue> {
        let shown = redact_userinfo(raw.trim());
        let raw = raw.trim();
        let (scheme, rest) = match raw.split_once("://") {
            Some((s, rest)) => (s.to_ascii_lowercase(), rest),
            None if strict => return Err(BadValue(format!("{shown:?} must contain the protocol and the port"))),
            None => ("http".to_string(), raw),
        };
        match scheme.as_str() {
            "http" => {}
            "https" => {
                return Err(BadValue(format!(
                    "{shown:?}: proxies reached over TLS (https://) are not supported yet; use an http:// proxy"
                )));
            }
            other => return Err(BadValue(format!("{shown:?}: unsupported proxy scheme {other:?} (use http://)"))),
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (userinfo, authority) = match rest.rsplit_once('@') {
            Some((u, a)) => (Some(u), a),
            None => (None, rest),
        };
        if authority.contains(['/', '?', '#']) {
            return Err(BadValue(format!("{shown:?}: a proxy address has no path")));
        }
        let addr = HostAddr::parse(&format!("http://{authority}")).map_err(|m| format!("{shown:?}: {m}"))?;
        if strict && !has_explicit_port(authority) {
            return Err(BadValue(format!("{shown:?} must contain the port (\"http://proxy:3128\")")));
        }
        let authorization = userinfo.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let mut plain = percent_decode(user).into_owned();
            plain.push(b':');
            plain.extend_from_slice(&percent_decode(pass));
            format!("Basic {}", base64(&plain))
        });
        let pool_key = match &authorization {
            None => format!("proxy {}", addr.authority()),
            Some(secret) => format!("proxy {} as {}", addr.authority(), credential_tag(secret)),
        };
        Ok(Proxy { addr, pool_key, authorization, shown, source: source.to_string() })
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("shown", &self.shown)
            .field("source", &self.source)
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// A tag for proxy credentials in a pool key: connections (and tunnels) a proxy opened
/// for one user are never reused for another. A keyed hash (SipHash, its key drawn
/// once per process) in hex: equal credentials get equal tags within the process, and
/// the tag says nothing of the secret to whoever reads a key in a debug print.
fn credential_tag(secret: &str) -> String {
    use std::hash::BuildHasher;
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    format!("{:016x}", KEY.get_or_init(Default::default).hash_one(secret))
}

/// Standard base64 with padding (RFC 4648), for `Basic` credentials.
fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// One `NO_PROXY` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bypass {
    /// `10.0.0.0/8`: any address in it (names are not resolved for this).
    Net(IpNet),
    /// `10.1.2.3` or `10.1.2.3:8080`.
    Ip(IpAddr, Option<u16>),
    /// `example.com` (the name and its subdomains), `.example.com` or `*.example.com`
    /// (subdomains only), each optionally with `:port`. Stored with a leading dot.
    Domain { suffix: String, and_itself: bool, port: Option<u16> },
}

/// `NO_PROXY`: which destinations go direct although a proxy is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    /// `*`: no destination is proxied.
    all: bool,
    entries: Vec<Bypass>,
}

impl NoProxy {
    /// Parses a comma-separated list. Entries that are none of the forms above are
    /// ignored, as Go ignores them.
    pub fn parse(list: &str) -> NoProxy {
        let mut out = NoProxy::default();
        for entry in list.split(',').map(|e| e.trim().to_ascii_lowercase()).filter(|e| !e.is_empty()) {
            if entry == "*" {
                out.all = true;
                continue;
            }
            if entry.contains('/') {
                if let Ok(net) = IpNet::parse(&entry) {
                    out.entries.push(Bypass::Net(net));
                }
                continue;
            }
            let (host, port) = split_port(&entry);
            let port = match port {
                Some(p) => match p.parse::<u16>() {
                    Ok(p) => Some(p),
                    Err(_) => continue,
                },
                None => None,
            };
            if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                out.entries.push(Bypass::Ip(ip, port));
                continue;
            }
            let host = host.strip_prefix('*').unwrap_or(host);
            if host.is_empty() || host == "." {
                continue;
            }
            let (suffix, and_itself) = match host.strip_prefix('.') {
                Some(_) => (host.to_string(), false),
                None => (format!(".{host}"), true),
            };
            out.entries.push(Bypass::Domain { suffix, and_itself, port });
        }
        out
    }

    /// Whether `host:port` goes direct.
    pub fn bypasses(&self, host: &str, port: u16) -> bool {
        if self.all {
            return true;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.entries.iter().any(|e| match e {
            Bypass::Net(net) => ip.is_some_and(|ip| net.contains(ip)),
            Bypass::Ip(want, p) => ip == Some(*want) && p.is_none_or(|p| p == port),
            Bypass::Domain { suffix, and_itself, port: p } => {
                ip.is_none()
                    && (host.ends_with(suffix.as_str()) || (*and_itself && host == suffix[1..]))
                    && p.is_none_or(|p| p == port)
            }
        })
    }
}

/// `host:port` or `[v6]:port` into its parts (a bare IPv6 address has no port).
fn split_port(entry: &str) -> (&str, Option<&str>) {
    if let Some(rest) = entry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, after)) => (h, after.strip_prefix(':')),
            None => (entry, None),
        };
    }
    match entry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (entry, None),
    }
}

/// The proxy settings of the process environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    pub http: Option<Proxy>,
    pub https: Option<Proxy>,
    pub no_proxy: NoProxy,
}

impl ProxyEnv {
    /// Reads `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` through `var` (the uppercase
    /// name first, then the lowercase one; empty is unset). A proxy URL that cannot be
    /// used is an error naming the variable (credentials redacted).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<ProxyEnv, BadValue> {
        let get = |upper: &'static str| {
            let lower = upper.to_ascii_lowercase();
            [(upper.to_string(), var(upper)), (lower.clone(), var(&lower))]
                .into_iter()
                .find_map(|(name, v)| v.filter(|v| !v.trim().is_empty()).map(|v| (name, v)))
        };
        let proxy = |upper: &'static str| -> Result<Option<Proxy>, String> {
            match get(upper) {
                None => Ok(None),
                Some((name, value)) => Proxy::parse(&value, false, &name).map(Some).map_err(|m| format!("{name}: {m}")),
            }
        };
        Ok(ProxyEnv {
            http: proxy("HTTP_PROXY")?,
            https: proxy("HTTPS_PROXY")?,
            no_proxy: get("NO_PROXY").map(|(_, v)| NoProxy::parse(&v)).unwrap_or_default(),
        })
    }

    /// The proxy for a backend at `host` under this environment: none for
    /// `localhost` and loopback addresses (never proxied, as Go), nor for what
    /// `NO_PROXY` lists.
    pub fn for_host(&self, host: &HostAddr) -> Option<&Proxy> {
        let proxy = match host.scheme {
            Scheme::Http => self.http.as_ref(),
            Scheme::Https => self.https.as_ref(),
        }?;
        let name = host.host.trim_end_matches('.');
        let loopback =
            name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        (!loopback && !self.no_proxy.bypasses(name, host.port)).then_some(proxy)
    }
}

/// A proxy's answer to `CONNECT`, once its head is whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectAnswer {
    /// Bytes of the head (the tunnel starts after them).
    pub len: usize,
    pub status: u16,
    pub reason: String,
}

/// Why a proxy's answer to `CONNECT` is not one: the backend call fails, saying so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadConnectAnswer {
    /// Not an HTTP response head.
    NotHttp(httparse::Error),
    /// No end of head within 16 KiB.
    TooLong,
}

impl std::fmt::Display for BadConnectAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadConnectAnswer::NotHttp(e) => write!(f, "its answer is not HTTP ({e})"),
            BadConnectAnswer::TooLong => write!(f, "its answer head is over {} KiB", CONNECT_ANSWER_MAX / 1024),
        }
    }
}

/// A proxy answer head longer than this is refused.
const CONNECT_ANSWER_MAX: usize = 16 * 1024;

impl Proxy {
    /// Writes `CONNECT authority HTTP/1.1`, with the proxy's credentials when it has
    /// some. `authority` is `host:port` (a bracketed IPv6 address keeps its brackets).
    pub fn write_connect(&self, authority: &str, out: &mut Vec<u8>) {
        for piece in ["CONNECT ", authority, " HTTP/1.1\r\nhost: ", authority, "\r\n"] {
            out.extend_from_slice(piece.as_bytes());
        }
        if let Some(auth) = &self.authorization {
            out.extend_from_slice(b"proxy-authorization: ");
            out.extend_from_slice(auth.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Reads the proxy's answer to `CONNECT` from `input`: `Ok(None)` while its head is
    /// not whole, or why it is not an HTTP answer.
    pub fn connect_answer(input: &[u8]) -> Result<Option<ConnectAnswer>, BadConnectAnswer> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(input) {
            Ok(httparse::Status::Complete(len)) => Ok(Some(ConnectAnswer {
                len,
                status: response.code.unwrap_or(0),
                reason: response.reason.unwrap_or("").to_string(),
            })),
            Ok(httparse::Status::Partial) if input.len() > CONNECT_ANSWER_MAX => Err(BadConnectAnswer::TooLong),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(BadConnectAnswer::NotHttp(e)),
        }
    }

    /// What a failed `CONNECT` to `authority` says in the log and, with
    /// `return_error_msg`, to the client.
    pub fn connect_failed(&self, authority: &str, why: &str) -> String {
        format!("proxy {} ({}) could not open a tunnel to {authority}: {why}", self.shown, self.source)
    }

    /// [`Proxy::connect_failed`] for a proxy that answered with a refusal.
    pub fn connect_refused(&self, authority: &str, answer: &ConnectAnswer) -> String {
        let credentials = match (answer.status, &self.authorization) {
            (407, Some(_)) => " (the credentials were not accepted)",
            (407, None) => " (the proxy wants credentials: put them in its URL)",
            _ => "",
        };
        let why = format!("it answered CONNECT with {} {}{credentials}", answer.status, answer.reason.trim());
        self.connect_failed(authority, &why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(raw: &str) -> HostAddr {
        HostAddr::parse(raw).unwrap()
    }

    #[test]
    fn connect_requests_and_answers() {
        let p = Proxy::parse("http://user:pw@proxy.corp:3128", true, "proxy_address").unwrap();
        let mut out = Vec::new();
        p.write_connect("[::1]:8443", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "CONNECT [::1]:8443 HTTP/1.1\r\nhost: [::1]:8443\r\nproxy-authorization: Basic dXNlcjpwdw==\r\n\r\n"
        );
        let answer = b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\n\x16\x03";
        assert_eq!(
            Proxy::connect_answer(answer),
            Ok(Some(ConnectAnswer { len: answer.len() - 2, status: 200, reason: "Connection established".into() }))
        );
        assert_eq!(Proxy::connect_answer(b"HTTP/1.1 200 OK\r\n"), Ok(None));
        let not_http = Proxy::connect_answer(b"\x16\x03\x01").unwrap_err();
        assert_eq!(not_http.to_string(), "its answer is not HTTP (invalid HTTP version)");
        let long = [b"HTTP/1.1 200 OK\r\nx: ".as_slice(), &[b'a'; 17 * 1024]].concat();
        assert_eq!(Proxy::connect_answer(&long), Err(BadConnectAnswer::TooLong));
        assert_eq!(BadConnectAnswer::TooLong.to_string(), "its answer head is over 16 KiB");
        let refused = ConnectAnswer { len: 0, status: 407, reason: "Proxy Authentication Required".into() };
        assert_eq!(
            p.connect_refused("api:443", &refused),
            "proxy http://***@proxy.corp:3128 (proxy_address) could not open a tunnel to api:443: \
             it answered CONNECT with 407 Proxy Authentication Required (the credentials were not accepted)"
        );
    }

    #[test]
    fn proxy_urls() {
        let p = Proxy::parse("http://user:p%40ss@proxy.corp:3128", true, "proxy_address").unwrap();
        assert_eq!((p.addr.host.as_str(), p.addr.port), ("proxy.corp", 3128));
        assert_eq!(p.authorization.as_deref(), Some("Basic dXNlcjpwQHNz"));
        assert_eq!(p.shown, "http://***@proxy.corp:3128");
        let tag = p.pool_key.strip_prefix("proxy proxy.corp:3128 as ").unwrap();
        assert!(tag.len() == 16 && !tag.contains("dXNlcjpwQHNz"), "{tag}");
        // The same credentials, the same key; others (or none), another.
        let same = Proxy::parse("http://user:p%40ss@proxy.corp:3128", true, "HTTP_PROXY").unwrap();
        assert_eq!(same.pool_key, p.pool_key);
        let other = Proxy::parse("http://user:other@proxy.corp:3128", true, "proxy_address").unwrap();
        assert_ne!(other.pool_key, p.pool_key);
        let none = Proxy::parse("http://proxy.corp:3128", true, "proxy_address").unwrap();
        assert_eq!(none.pool_key, "proxy proxy.corp:3128");
        let debug = format!("{p:?}");
        assert!(!debug.contains("dXNlcjpwQHNz") && !debug.contains("p@ss"), "{debug}");
        // From the environment, Go's leniency: no scheme, no port.
        let p = Proxy::parse("proxy.corp", false, "HTTP_PROXY").unwrap();
        assert_eq!((p.addr.port, p.authorization), (80, None));
        let p = Proxy::parse("[::1]:8080/", false, "HTTP_PROXY").unwrap();
        assert_eq!((p.addr.host.as_str(), p.addr.port), ("::1", 8080));
        // Configured addresses must say both; no secret in any message.
        for (raw, strict, want) in [
            ("proxy:3128", true, "must contain the protocol"),
            ("http://u:secret@proxy", true, "must contain the port"),
            ("socks5://u:secret@proxy:1080", false, "unsupported proxy scheme"),
            ("https://u:secret@proxy:443", false, "not supported yet"),
            ("http://u:secret@proxy:99999", false, "port"),
            ("http://u:secret@proxy:3128/path", false, "no path"),
        ] {
            let e = Proxy::parse(raw, strict, "x").unwrap_err();
            assert!(e.0.contains(want) && !e.0.contains("secret"), "{raw}: {e}");
        }
    }

    #[test]
    fn base64_as_rfc_4648() {
        for (plain, enc) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg==")] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
    }

    #[test]
    fn no_proxy_forms() {
        let n = NoProxy::parse(
            " example.com, .sub.org,*.star.net, 10.0.0.0/8, 192.0.2.7, api.io:8443, [2001:db8::1]:80, bogus:x ",
        );
        let yes = [
            ("example.com", 80),
            ("a.example.com", 80),
            ("EXAMPLE.COM.", 80),
            ("x.sub.org", 80),
            ("x.star.net", 80),
            ("10.9.8.7", 1),
            ("192.0.2.7", 9),
            ("api.io", 8443),
            ("2001:db8::1", 80),
        ];
        let no = [
            ("notexample.com", 80),
            ("sub.org", 80),
            ("star.net", 80),
            ("11.0.0.1", 80),
            ("192.0.2.8", 80),
            ("api.io", 443),
            ("2001:db8::1", 81),
            ("bogus", 80),
        ];
        for (h, p) in yes {
            assert!(n.bypasses(h, p), "{h}:{p} goes direct");
        }
        for (h, p) in no {
            assert!(!n.bypasses(h, p), "{h}:{p} is proxied");
        }
        assert!(NoProxy::parse("*").bypasses("anything", 1));
        assert!(!NoProxy::parse("").bypasses("anything", 1));
    }

    #[test]
    fn environment() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
        };
        let env = ProxyEnv::from_vars(vars(&[
            ("http_proxy", "http://lower:1"),
            ("HTTP_PROXY", "http://upper:2"),
            ("https_proxy", "http://secure:3"),
            ("no_proxy", "internal.corp"),
        ]))
        .unwrap();
        assert_eq!(env.for_host(&host("http://api.example.com")).map(|p| p.shown.as_str()), Some("http://upper:2"));
        assert_eq!(env.for_host(&host("https://api.example.com")).map(|p| p.source.as_str()), Some("https_proxy"));
        for direct in ["http://localhost:8080", "http://127.0.0.2", "http://[::1]:80", "http://db.internal.corp"] {
            assert_eq!(env.for_host(&host(direct)), None, "{direct}");
        }
        // An empty variable is unset; a bad one is an error naming it, secrets redacted.
        let env = ProxyEnv::from_vars(vars(&[("HTTP_PROXY", " ")])).unwrap();
        assert_eq!(env.http, None);
        let e = ProxyEnv::from_vars(vars(&[("HTTPS_PROXY", "ftp://me:pw@x:1")])).unwrap_err();
        assert!(e.0.starts_with("HTTPS_PROXY: ") && !e.0.contains("pw"), "{e}");
    }
}
