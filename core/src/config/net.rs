//! Backend host addresses, IP networks and URL pieces, as written in a KrakenD file.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use super::BadValue;

/// The schemes a backend host may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A sanitized backend host: `scheme://host[:port]`, nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostAddr {
    pub scheme: Scheme,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl HostAddr {
    /// Its socket address when the host is an IP literal (`[::1]` as written in a URL
    /// too); `None` for a name.
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        let literal = self.host.trim_start_matches('[').trim_end_matches(']');
        literal.parse().ok().map(|ip| std::net::SocketAddr::new(ip, self.port))
    }

    /// Parses a host the way KrakenD sanitizes it: a missing scheme means `http://`, a
    /// trailing `/` is dropped; a path, query, fragment, credentials, another scheme or a
    /// bad port is an error.
    pub fn parse(raw: &str) -> Result<HostAddr, BadValue> {
        let (scheme, rest) = match raw.split_once("://") {
            Some((s, rest)) => {
                let scheme = match s.to_ascii_lowercase().as_str() {
                    "http" => Scheme::Http,
                    "https" => Scheme::Https,
                    _ => {
                        return Err(BadValue(format!(
                            "unsupported scheme {s:?} in {raw:?} (use http:// or https://, or set disable_host_sanitize)"
                        )));
                    }
                };
                (scheme, rest)
            }
            None => (Scheme::Http, raw),
        };
        // Credentials first, wherever the `@` is: a password may hold `/`, `?` or `#`,
        // and the messages below show the host.
        if rest.contains('@') {
            return Err(BadValue(format!("a host must not carry credentials ({:?})", redact_userinfo(raw))));
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        match tail {
            "" | "/" => {}
            t if t.starts_with('/') => {
                return Err(BadValue(format!("a host must not have a path ({t:?} in {raw:?}): put it in url_pattern")));
            }
            _ => return Err(BadValue(format!("a host must not have a query or fragment ({raw:?})"))),
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((addr, after)) = v6.split_once(']') else {
                return Err(BadValue(format!("unclosed \"[\" in host {raw:?}")));
            };
            if addr.parse::<Ipv6Addr>().is_err() {
                return Err(BadValue(format!("invalid IPv6 address {addr:?} in host {raw:?}")));
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| format!("invalid host {raw:?}"))?),
            };
            (addr, port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(BadValue(format!("missing host name in {raw:?}")));
        }
        if !authority.starts_with('[')
            && !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(BadValue(format!("invalid host name {host:?} in {raw:?}")));
        }
        let port = match port {
            None => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(BadValue(format!("invalid port {p:?} in host {raw:?} (1 to 65535)"))),
            },
        };
        Ok(HostAddr { scheme, host: host.to_ascii_lowercase(), port })
    }

    /// `host:port` as sent in a `Host` header (port left out when it is the default).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == self.scheme.default_port() { host } else { format!("{host}:{}", self.port) }
    }
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority())
    }
}

/// Whether an authority (`host:port`, `[v6]:port`) writes its port.
pub(crate) fn has_explicit_port(authority: &str) -> bool {
    let authority = authority.trim_end_matches('/');
    let after_host = match authority.rfind(']') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    after_host.contains(':')
}

/// `.` or `..`.
pub fn is_dot_segment(seg: &[u8]) -> bool {
    seg == b"." || seg == b".."
}

/// A rendered backend path made ready to send: `false` when its path (up to any `?`)
/// has a segment that is `.` or `..` once percent-decoded (a backend path never may),
/// else given a leading `/` when it has none. The plan and each request's rendering
/// both finish a path so.
pub fn finish_backend_path(url: &mut String) -> bool {
    let path = url.split_once('?').map_or(url.as_str(), |(p, _)| p);
    if path.split('/').any(|seg| is_dot_segment(&percent_decode(seg))) {
        return false;
    }
    if !url.starts_with('/') {
        url.insert(0, '/');
    }
    true
}

/// Percent-decodes once; a `%` not followed by two hex digits stays as it is.
pub fn percent_decode(s: &str) -> Cow<'_, [u8]> {
    if !s.contains('%') {
        return Cow::Borrowed(s.as_bytes());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = b.get(i + 1..i + 3)
            && let Ok(h) = std::str::from_utf8(h)
            && let Ok(v) = u8::from_str_radix(h, 16)
            && h.bytes().all(|c| c.is_ascii_hexdigit())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Cow::Owned(out)
}

/// `raw` (a URL, or a CONNECT's `host:port`) with its user info shown as `***`:
/// everything before the last `@`, whatever a password holds (`/`, `?` and `#`
/// included). An `@` later in a path is redacted with it: a message may lose a few
/// characters, never show a secret.
pub fn redact_userinfo(raw: &str) -> String {
    let Some(at) = raw.rfind('@') else { return raw.to_string() };
    let start = raw.find("://").map(|i| i + 3).filter(|&i| i <= at).unwrap_or(0);
    format!("{}***{}", &raw[..start], &raw[at..])
}

/// An IP network in CIDR notation (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn parse(text: &str) -> Result<IpNet, BadValue> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("invalid IP address {addr:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(BadValue(format!("invalid prefix length {p:?} in {text:?} (0 to {max})"))),
            },
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        let (net, ip, bits) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u128::from(u32::from(n)) << 96, u128::from(u32::from(i)) << 96, 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        let prefix = u32::from(self.prefix.min(bits));
        let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
        net & mask == ip & mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> Result<String, String> {
        HostAddr::parse(s).map(|h| h.to_string()).map_err(String::from)
    }

    #[test]
    fn sanitizes_hosts() {
        assert_eq!(host("http://api:8000"), Ok("http://api:8000".into()));
        assert_eq!(host("https://API.example.com/"), Ok("https://api.example.com".into()));
        assert_eq!(host("localhost:8080"), Ok("http://localhost:8080".into()));
        assert_eq!(host("https://api:443"), Ok("https://api".into()));
        assert_eq!(host("http://[::1]:9000"), Ok("http://[::1]:9000".into()));
        assert_eq!(host("http://svc_name.local"), Ok("http://svc_name.local".into()));
    }

    #[test]
    fn user_info_is_redacted_whatever_the_password_holds() {
        assert_eq!(redact_userinfo("http://u:p/ss@proxy:3128"), "http://***@proxy:3128");
        assert_eq!(redact_userinfo("http://u:p#s?s@proxy:3128/x"), "http://***@proxy:3128/x");
        assert_eq!(redact_userinfo("u:pw@api:443"), "***@api:443");
        assert_eq!(redact_userinfo("http://proxy:3128"), "http://proxy:3128");
    }

    #[test]
    fn rejects_bad_hosts() {
        assert_eq!(
            host("http://api/v1"),
            Err("a host must not have a path (\"/v1\" in \"http://api/v1\"): put it in url_pattern".into())
        );
        assert_eq!(
            host("ftp://api"),
            Err("unsupported scheme \"ftp\" in \"ftp://api\" (use http:// or https://, or set disable_host_sanitize)"
                .into())
        );
        assert_eq!(
            host("http://api:99999"),
            Err("invalid port \"99999\" in host \"http://api:99999\" (1 to 65535)".into())
        );
        assert_eq!(host("http://api:0"), Err("invalid port \"0\" in host \"http://api:0\" (1 to 65535)".into()));
        assert_eq!(host("http://api:+80"), Err("invalid port \"+80\" in host \"http://api:+80\" (1 to 65535)".into()));
        assert_eq!(host("http://"), Err("missing host name in \"http://\"".into()));
        assert_eq!(host("http://a b"), Err("invalid host name \"a b\" in \"http://a b\"".into()));
        assert_eq!(host("http://api?x=1"), Err("a host must not have a query or fragment (\"http://api?x=1\")".into()));
        assert_eq!(
            host("http://user:secret@api"),
            Err("a host must not carry credentials (\"http://***@api\")".into())
        );
        assert_eq!(host("http://[::1"), Err("unclosed \"[\" in host \"http://[::1\"".into()));
        assert_eq!(host("http://[zz]"), Err("invalid IPv6 address \"zz\" in host \"http://[zz]\"".into()));
        // A password holding `/` or `?` is not shown as a path or query.
        assert_eq!(host("http://u:p/ss@api"), Err("a host must not carry credentials (\"http://***@api\")".into()));
        assert_eq!(host("http://u:p?s@api/x"), Err("a host must not carry credentials (\"http://***@api/x\")".into()));
    }

    #[test]
    fn ip_networks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.1.2.3")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.9.9.9")));
        assert_eq!(IpNet::parse("::1").map(|n| n.prefix), Ok(128));
        assert_eq!(
            IpNet::parse("10.0.0.0/33"),
            Err("invalid prefix length \"33\" in \"10.0.0.0/33\" (0 to 32)".into())
        );
        assert_eq!(IpNet::parse("nope"), Err("invalid IP address \"nope\"".into()));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains(ip("192.0.2.1")));
        assert!(IpNet::parse("2001:db8::/32").unwrap().contains(ip("2001:db8::7")));
    }
}
