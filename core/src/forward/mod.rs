//! The dynamic forward proxy's decisions, as small pure functions and types: where a
//! request goes (the rewrite header, the absolute-form target, `Host`, or CONNECT's
//! authority), the request written to the destination (origin-form, hop-by-hop and
//! `Proxy-*` fields dropped, `Via` added), and the egress policy (host and port rules
//! before resolution, the resolved address after it).
//!
//! [`Forwarder`] is the service a forward-proxy listener's connections ask (through
//! the connection's `service` module): what a request head becomes ([`Forwarder::route`]) and whether
//! its address may be dialled ([`Forwarder::admit`]); [`crate::conn::Connection`]
//! carries that out (the name resolved, the tunnel or the call opened). Nothing here
//! does I/O, and the egress table is tested here without a single connect.

pub mod breaker;
pub(crate) mod tunnel;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use http::{Method, StatusCode};

use crate::config::{ForwardProxy, IpNet, LookupFamily, PortRange};
use crate::event::Log;
use crate::forward::breaker::{Breakers, Permit};
use crate::http1::{self, BodyLength, HopByHop, Request, RequestTarget, TargetForm};
use crate::request::{AccessLog, LineRoom, Reply, RequestBody};

/// The forward proxy as the service of its listener's connections: its plan, and the
/// circuit breakers every connection of the process counts in.
#[derive(Debug, Clone, Copy)]
pub struct Forwarder<'g> {
    pub plan: &'g ForwardPlan,
    pub breakers: &'g Breakers,
}

/// A forward-proxy request between its head and its connection: its destination's
/// name resolving, or its tunnel's connection opening.
#[derive(Debug)]
pub struct Pending<'g> {
    pub proxy: Forwarder<'g>,
    pub dest: Destination,
    /// The request to send (empty for a tunnel).
    pub request: Vec<u8>,
    pub method: Method,
    /// The request body's length, relayed as it comes; `None`: no body (or a tunnel).
    pub body: Option<BodyLength>,
    pub tunnel: bool,
    pub line: AccessLog,
    /// The request's start plus the proxy's `timeout`.
    pub deadline: Instant,
    /// The vetted address a tunnel's connection is opened to.
    pub addr: Option<SocketAddr>,
    /// Taken when the address is known (see [`crate::forward::breaker`]).
    pub permit: Option<Permit>,
}

/// What the forward proxy makes of a request head.
#[derive(Debug)]
pub enum Routed<'g> {
    /// On to the destination (its name resolved first, when it is one).
    Go(Box<Pending<'g>>),
    /// A request it cannot send on: this status and reason, and the connection closes.
    Bad(StatusCode, &'static str, AccessLog),
    /// The egress policy refused it (see [`Refusal`]).
    Refused { refusal: Refusal, dest: String, line: AccessLog, tunnel: bool },
}

impl<'g> Forwarder<'g> {
    /// A request head on the forward proxy's listener: a CONNECT opens a tunnel,
    /// anything else is sent on to the host it names; both under the egress policy
    /// (the host and port here, the address once known: [`Forwarder::admit`]).
    /// `room`: what the connection keeps for its access lines (see
    /// [`crate::request::LineRoom`]).
    pub fn route(&self, req: &Request, peer: IpAddr, now: Instant, room: &mut LineRoom) -> Routed<'g> {
        let (plan, tunnel) = (self.plan, req.method == Method::CONNECT);
        let dest = if tunnel { plan.tunnel_destination(req) } else { plan.destination(req) };
        let dest = match dest {
            Ok(dest) => dest,
            Err(reason) => return Routed::Bad(StatusCode::BAD_REQUEST, reason, AccessLog::refused(req, peer, now)),
        };
        let line = AccessLog::forwarded(req, (&dest.authority, &dest.target), peer, now, room);
        if tunnel && !plan.config.connect.enabled {
            // Envoy without the CONNECT upgrade: refused, and the connection closed
            // (what the client sent after its CONNECT is never read as HTTP).
            return Routed::Bad(StatusCode::FORBIDDEN, "CONNECT is not enabled on this proxy", line);
        }
        let body = match RequestBody::relayed(req.framing) {
            RequestBody::Stream(length) if !tunnel => Some(length),
            _ => None,
        };
        if let Err(denied) = plan.egress.check_host(&dest.host, dest.port, tunnel) {
            return Routed::Refused { refusal: Refusal::Denied(denied), dest: dest.authority, line, tunnel };
        }
        let mut request = Vec::new();
        if !tunnel && let Err(reason) = plan.write_request(req, &dest, body, &mut request) {
            return Routed::Bad(StatusCode::BAD_REQUEST, reason, line);
        }
        Routed::Go(Box::new(Pending {
            proxy: *self,
            request,
            method: req.method.clone(),
            body,
            tunnel,
            line,
            deadline: now + plan.config.timeout,
            dest,
            addr: None,
            permit: None,
        }))
    }

    /// The destination's address is `ip`: vetted by the egress policy, then admitted
    /// by the destination's circuit breakers (the permit kept in `p`). The address to
    /// dial (that one and no other), or why not.
    pub fn admit(&self, p: &mut Pending<'g>, ip: IpAddr) -> Result<SocketAddr, Refusal> {
        let addr = SocketAddr::new(ip, p.dest.port);
        self.plan.egress.check_addr(addr).map_err(Refusal::Denied)?;
        p.permit = Some(self.breakers.admit(&p.dest.authority).map_err(Refusal::BreakerOpen)?);
        Ok(addr)
    }
}

/// The `Via` field added both ways (RFC 9110 7.6.3: protocol version and a pseudonym).
pub const VIA: &str = "1.1 sluice";

/// The header a refused request's answer names the reason in.
pub const DENIED_HEADER: &str = "x-sluice-egress-denied";

/// The forward proxy, compiled once from its configuration; shared read-only by every
/// shard.
#[derive(Debug, Clone)]
pub struct ForwardPlan {
    pub config: ForwardProxy,
    /// The rewrite header, lowercased.
    rewrite: Option<String>,
    pub egress: Egress,
    /// `Via` for responses, rendered once.
    pub via: crate::http1::Fields,
}

impl ForwardPlan {
    pub fn new(config: &ForwardProxy) -> ForwardPlan {
        ForwardPlan {
            rewrite: config.auto_host_rewrite_header.as_ref().map(|h| h.to_ascii_lowercase()),
            egress: Egress {
                allow_hosts: config.egress.allow_hosts.clone(),
                deny_hosts: config.egress.deny_hosts.clone(),
                ports: config.egress.ports.clone(),
                tunnel_ports: config.connect.allowed_ports.clone(),
                allow_cidrs: config.egress.allow_cidrs.clone(),
                listener: SocketAddr::new(config.listen_ip, config.port),
            },
            config: config.clone(),
            via: crate::http1::Fields::render(
                &std::iter::once((http::header::VIA, http::HeaderValue::from_static(VIA))).collect(),
            ),
        }
    }

    /// Where a (non-CONNECT) request goes: the rewrite header's value, else the
    /// absolute-form target's authority, else `Host`. The reason for a 400 otherwise.
    pub fn destination(&self, req: &Request) -> Result<Destination, &'static str> {
        let target = req.target();
        let path = match req.form {
            TargetForm::Absolute => {
                let Some(rest) = strip_scheme(target, "http://") else {
                    return Err(if strip_scheme(target, "https://").is_some() {
                        "https:// targets go through a CONNECT tunnel (curl -x does that by itself)"
                    } else {
                        "the request target's scheme is not http://"
                    });
                };
                let end = rest.find(['/', '?']).unwrap_or(rest.len());
                let path = &rest[end..];
                Some((&rest[..end], if path.starts_with('/') { path.to_string() } else { format!("/{path}") }))
            }
            TargetForm::Origin => None,
            TargetForm::Authority | TargetForm::Asterisk => return Err("this request target cannot be forwarded"),
        };
        let rewritten = self.rewrite.as_deref().and_then(|h| req.head.get(h));
        let (authority, source) = match (rewritten, &path) {
            (Some(v), _) => (std::str::from_utf8(v).map_err(|_| "the rewrite header is not a host")?, Source::Rewrite),
            (None, Some((a, _))) => (*a, Source::Target),
            (None, None) => {
                let host = req.head.host().ok_or("no destination: neither an absolute-form target nor Host")?;
                (std::str::from_utf8(host).map_err(|_| "Host is not a host name")?, Source::Host)
            }
        };
        let (host, port) = parse_authority(authority, Some(80)).map_err(|e| match source {
            Source::Rewrite => e.rewrite,
            Source::Target => e.target,
            Source::Host => e.host,
        })?;
        let target = match path {
            Some((_, p)) => p,
            None => target.to_string(),
        };
        let authority = if port == 80 { bracketed(&host) } else { format!("{}:{port}", bracketed(&host)) };
        Ok(Destination { host, port, authority, target })
    }

    /// A CONNECT request's destination (`host:port`, port required).
    pub fn tunnel_destination(&self, req: &Request) -> Result<Destination, &'static str> {
        let (host, port) = parse_authority(req.target(), None).map_err(|e| e.target)?;
        let authority = format!("{}:{port}", bracketed(&host));
        Ok(Destination { host, port, authority, target: String::new() })
    }

    /// Writes the request for `dest` in origin-form: `Host` is the destination's, the
    /// client's end-to-end fields follow except hop-by-hop ones (the fixed list and
    /// what `Connection` names), any `Proxy-*`, `Expect` (the proxy answers it), and the
    /// rewrite header; then `Via`, then the framing `body` says.
    pub fn write_request(
        &self,
        req: &Request,
        dest: &Destination,
        body: Option<BodyLength>,
        out: &mut Vec<u8>,
    ) -> Result<(), &'static str> {
        let hop = HopByHop::of(&req.head);
        let rewrite = self.rewrite.as_deref();
        http1::write_request_with(&req.method, RequestTarget::Origin(&dest.target), &dest.authority, body, out, |out| {
            for (name, value) in req.head.iter_raw() {
                let skip = hop.contains(name)
                    || name.len() >= 6 && name[..6].eq_ignore_ascii_case(b"proxy-")
                    || name.eq_ignore_ascii_case(b"host")
                    || name.eq_ignore_ascii_case(b"content-length")
                    || name.eq_ignore_ascii_case(b"expect")
                    || rewrite.is_some_and(|r| name.eq_ignore_ascii_case(r.as_bytes()));
                if !skip {
                    http1::write_field(name, value, out);
                }
            }
            http1::write_lower_field(b"via", VIA.as_bytes(), out);
        })
        .map_err(|_| "the request target cannot be sent on")
    }

    /// The address to dial among those a name resolved to, by `dns_lookup_family`.
    pub fn pick(&self, addrs: &[IpAddr]) -> Option<IpAddr> {
        let v4 = addrs.iter().copied().find(IpAddr::is_ipv4);
        let v6 = addrs.iter().copied().find(IpAddr::is_ipv6);
        match self.config.dns_lookup_family {
            LookupFamily::V4Only => v4,
            LookupFamily::V6Only => v6,
            LookupFamily::Auto => v6.or(v4),
            LookupFamily::V4Preferred => v4.or(v6),
        }
    }
}

enum Source {
    Rewrite,
    Target,
    Host,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Lowercase host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// `Host` as sent (`host`, `host:port`, `[v6]:port`).
    pub authority: String,
    /// The origin-form target (empty for a tunnel).
    pub target: String,
}

impl Destination {
    /// An IP literal needs no lookup.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

fn strip_scheme<'a>(target: &'a str, scheme: &str) -> Option<&'a str> {
    let head = target.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme).then(|| &target[scheme.len()..])
}

fn bracketed(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_string() }
}

/// The 400 reason for a bad authority, by where it came from.
struct BadAuthority {
    rewrite: &'static str,
    target: &'static str,
    host: &'static str,
}

const BAD_HOST: BadAuthority = BadAuthority {
    rewrite: "the rewrite header's value is not a host[:port]",
    target: "the request target's host is empty or malformed",
    host: "Host is empty or malformed",
};

const BAD_PORT: BadAuthority = BadAuthority {
    rewrite: "the rewrite header's port is not a number from 1 to 65535",
    target: "the request target's port is not a number from 1 to 65535",
    host: "Host's port is not a number from 1 to 65535",
};

/// `host[:port]` (`[v6][:port]`): a DNS name (letters, digits, `-`, `_`, dots), an
/// IPv4 or a bracketed IPv6 literal; no user info, no percent-encoding. `default_port`
/// `None`: the port is required.
fn parse_authority(a: &str, default_port: Option<u16>) -> Result<(String, u16), BadAuthority> {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(BAD_HOST)?;
        v6.parse::<Ipv6Addr>().map_err(|_| BAD_HOST)?;
        match after {
            "" => (v6, None),
            p => (v6, Some(p.strip_prefix(':').ok_or(BAD_HOST)?)),
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    let port = match (port, default_port) {
        (Some(p), _) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(BAD_PORT),
        },
        (None, Some(d)) => d,
        (None, None) => return Err(BAD_PORT),
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let ok = !host.is_empty()
        && host.len() <= 253
        && (host.parse::<Ipv6Addr>().is_ok() && a.starts_with('[')
            || host.split('.').all(|l| {
                !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }));
    if !ok {
        return Err(BAD_HOST);
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// The egress policy: host patterns and ports before resolution, the address after.
#[derive(Debug, Clone)]
pub struct Egress {
    allow_hosts: Vec<String>,
    deny_hosts: Vec<String>,
    ports: Vec<PortRange>,
    tunnel_ports: Vec<PortRange>,
    allow_cidrs: Vec<IpNet>,
    /// The forward proxy's own listener: a request to it would loop.
    listener: SocketAddr,
}

/// Why the forward proxy answers a request itself instead of sending it on (or
/// opening its tunnel): each carries its status, its body, the header that names it,
/// the line logged, and whether the connection closes. The connection writes it as
/// [`Refusal::reply`] says; it decides nothing of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The egress policy refused the destination: 403, `egress denied: <reason>`, the
    /// reason in [`DENIED_HEADER`]; logged under `sluice::egress`.
    Denied(Denied),
    /// A circuit breaker of the destination is open: 503, `circuit breaker open:
    /// <name>`, the name in [`crate::forward::breaker::HEADER`].
    BreakerOpen(crate::forward::breaker::Breaker),
    /// The destination's name gave no address: 503 `DNS resolution failure`, or
    /// `DNS cache overflow` when the cache had no room for it (Envoy's words).
    Dns { host: String, error: crate::resolve::dns::DnsError },
    /// No response head within the proxy's `timeout`: 504, and the connection closes.
    Timeout,
}

impl Refusal {
    /// The answer the client gets.
    pub fn reply(&self) -> Reply {
        use crate::resolve::dns::DnsError;
        match self {
            Refusal::Denied(denied) => {
                let reason = denied.to_string();
                let mut reply = Reply::text(StatusCode::FORBIDDEN, &format!("egress denied: {reason}"));
                if let Ok(v) = http::HeaderValue::from_str(&reason) {
                    reply.headers.insert(DENIED_HEADER, v);
                }
                reply
            }
            Refusal::BreakerOpen(open) => {
                let name = open.name();
                let mut reply = Reply::text(StatusCode::SERVICE_UNAVAILABLE, &format!("circuit breaker open: {name}"));
                reply.headers.insert(crate::forward::breaker::HEADER, http::HeaderValue::from_static(name));
                reply
            }
            Refusal::Dns { error: DnsError::Overflow, .. } => {
                Reply::text(StatusCode::SERVICE_UNAVAILABLE, "DNS cache overflow")
            }
            Refusal::Dns { error: DnsError::Failed(_), .. } => {
                Reply::text(StatusCode::SERVICE_UNAVAILABLE, "DNS resolution failure")
            }
            Refusal::Timeout => Reply::text(StatusCode::GATEWAY_TIMEOUT, TIMED_OUT),
        }
    }

    /// The line logged for refusing `peer`'s request to `dest` (`host:port`).
    pub fn log(&self, peer: IpAddr, dest: String) -> Log<'static> {
        use crate::resolve::dns::DnsError;
        match self {
            Refusal::Denied(denied) => Log::Denied { peer, dest, reason: denied.to_string() },
            Refusal::BreakerOpen(open) => {
                Log::Forward { dest, reason: format!("circuit breaker open: {}", open.name()) }
            }
            Refusal::Dns { host, error: DnsError::Overflow } => {
                Log::Forward { dest, reason: format!("cannot resolve {host}: DNS cache overflow") }
            }
            Refusal::Dns { host, error: DnsError::Failed(why) } => {
                Log::Forward { dest, reason: format!("cannot resolve {host}: {why}") }
            }
            Refusal::Timeout => Log::Forward { dest, reason: TIMED_OUT.to_string() },
        }
    }

    /// Whether the connection closes after the answer: always at a timeout (the
    /// request may be half sent), and for a refused tunnel (what the client sent after
    /// its CONNECT is never read as HTTP).
    pub fn closes(&self, tunnel: bool) -> bool {
        tunnel || *self == Refusal::Timeout
    }
}

/// What a timed-out forward says, to the client and in the log.
const TIMED_OUT: &str = "the destination did not answer in time";

/// Why the egress policy refused a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The host matches `deny_hosts`.
    Host(String),
    /// `allow_hosts` is set and the host matches none of it.
    NotAllowed(String),
    /// The port is not among the allowed ones (`tunnel`: CONNECT's list).
    Port { port: u16, tunnel: bool },
    /// The destination resolved to an address in a range refused unless allowed.
    Address { ip: IpAddr, range: &'static str },
    /// The destination is this proxy's own listener.
    Loop,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::Host(h) => write!(f, "host {h} is denied"),
            Denied::NotAllowed(h) => write!(f, "host {h} is not in the allowed hosts"),
            Denied::Port { port, tunnel: true } => write!(f, "CONNECT to port {port} is not allowed"),
            Denied::Port { port, tunnel: false } => write!(f, "port {port} is not allowed"),
            Denied::Address { ip, range } => write!(f, "address {ip} is {range}"),
            Denied::Loop => f.write_str("the destination is this proxy"),
        }
    }
}

/// Whether `host` matches `pattern` (`name`, or `*.suffix`: any name under the suffix,
/// not the suffix itself). Both lowercase.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1 && host.ends_with(suffix) && {
                let dot = host.len() - suffix.len() - 1;
                host.as_bytes()[dot] == b'.'
            }
        }
        None => pattern == host,
    }
}

impl Egress {
    /// The rules that need no resolution: `deny_hosts`, `allow_hosts`, then the port
    /// (`tunnel`: CONNECT's `allowed_ports`, else `ports`).
    pub fn check_host(&self, host: &str, port: u16, tunnel: bool) -> Result<(), Denied> {
        if self.deny_hosts.iter().any(|p| host_matches(p, host)) {
            return Err(Denied::Host(host.to_string()));
        }
        if !self.allow_hosts.is_empty() && !self.allow_hosts.iter().any(|p| host_matches(p, host)) {
            return Err(Denied::NotAllowed(host.to_string()));
        }
        let ports = if tunnel { &self.tunnel_ports } else { &self.ports };
        if !ports.iter().any(|r| r.contains(port)) {
            return Err(Denied::Port { port, tunnel });
        }
        Ok(())
    }

    /// The address a destination resolved to (the one that will be dialled): refused
    /// when it is in a [`reserved`] range that `allow_cidrs` does not name, or is this
    /// proxy's listener.
    pub fn check_addr(&self, addr: SocketAddr) -> Result<(), Denied> {
        let ip = addr.ip();
        let own = self.listener.ip();
        if addr.port() == self.listener.port()
            && (ip == own || own.is_unspecified() || ip.is_loopback() && own.is_loopback())
        {
            return Err(Denied::Loop);
        }
        match reserved(ip) {
            Some(range) if !self.allow_cidrs.iter().any(|net| net.contains(ip)) => Err(Denied::Address { ip, range }),
            _ => Ok(()),
        }
    }
}

/// The range an address belongs to when it is not a public unicast one: what an
/// egress proxy must not reach unless told (Smokescreen's list, by and large).
pub fn reserved(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => reserved_v4(v4),
        IpAddr::V6(v6) => reserved_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn reserved_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const TABLE: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "unspecified (0.0.0.0/8)"),
        ([10, 0, 0, 0], 8, "private (RFC 1918, 10.0.0.0/8)"),
        ([100, 64, 0, 0], 10, "shared address space (CGNAT, 100.64.0.0/10)"),
        ([127, 0, 0, 0], 8, "loopback (127.0.0.0/8)"),
        ([169, 254, 0, 0], 16, "link-local (169.254.0.0/16, cloud metadata)"),
        ([172, 16, 0, 0], 12, "private (RFC 1918, 172.16.0.0/12)"),
        ([192, 0, 0, 0], 24, "IETF protocol assignments (192.0.0.0/24)"),
        ([192, 0, 2, 0], 24, "documentation (192.0.2.0/24)"),
        ([192, 168, 0, 0], 16, "private (RFC 1918, 192.168.0.0/16)"),
        ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
        ([198, 51, 100, 0], 24, "documentation (198.51.100.0/24)"),
        ([203, 0, 113, 0], 24, "documentation (203.0.113.0/24)"),
        ([224, 0, 0, 0], 4, "multicast (224.0.0.0/4)"),
        ([240, 0, 0, 0], 4, "reserved (240.0.0.0/4, broadcast)"),
    ];
    TABLE.iter().find(|(net, prefix, _)| in_v4(ip, *net, *prefix)).map(|(_, _, name)| *name)
}

fn reserved_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let bits = u128::from(ip);
    let within = |net: u128, prefix: u32| bits >> (128 - prefix) == net >> (128 - prefix);
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    // Forms that carry an IPv4 address: refused whatever the IPv4 address is (unless
    // allowed by CIDR), since where they lead depends on translators the policy
    // cannot see.
    if within(0xffff_0000_0000, 96) {
        return Some("IPv4-mapped IPv6 (::ffff:0:0/96)");
    }
    if within(0, 96) {
        return Some("IPv4-compatible IPv6 (::/96)");
    }
    if within(0x0064_ff9b << 96, 96) {
        return Some("NAT64 (64:ff9b::/96)");
    }
    if within(0x0064_ff9b_0001 << 80, 48) {
        return Some("local NAT64 (64:ff9b:1::/48)");
    }
    if s[0] == 0x2002 {
        return Some("6to4 (2002::/16)");
    }
    if s[0] == 0x2001 && s[1] == 0 {
        return Some("Teredo (2001::/32)");
    }
    if within(0x0100 << 112, 64) {
        return Some("discard-only (100::/64)");
    }
    if s[0] == 0x2001 && s[1] == 0x0db8 {
        return Some("documentation (2001:db8::/32)");
    }
    if s[0] & 0xfe00 == 0xfc00 {
        return Some("unique local (fc00::/7)");
    }
    if s[0] & 0xffc0 == 0xfe80 {
        return Some("link-local (fe80::/10)");
    }
    if s[0] & 0xffc0 == 0xfec0 {
        return Some("site-local (fec0::/10)");
    }
    if s[0] & 0xff00 == 0xff00 {
        return Some("multicast (ff00::/8)");
    }
    None
}
