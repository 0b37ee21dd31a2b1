//! The forward proxy's decisions: destinations, the request sent on, the egress table.
//! Nothing here connects anywhere: the policy is decided on values.

use std::net::{IpAddr, SocketAddr};

use sluice_core::config::{self, ForwardProxy};
use sluice_core::forward::{Denied, ForwardPlan, host_matches, reserved};
use sluice_core::http1::{Limits, Request, ServerConn, ServerEvent};
use sluice_core::request::RequestBody;

fn plan(fp: &str) -> ForwardPlan {
    let text = format!(r#"{{"version": 3, "extra_config": {{"sluice/forward-proxy": {fp}}}}}"#);
    let parsed = config::parse(&text).unwrap();
    ForwardPlan::new(parsed.config.forward_proxy.as_ref().unwrap())
}

fn fp_config(fp: &str) -> ForwardProxy {
    let text = format!(r#"{{"version": 3, "extra_config": {{"sluice/forward-proxy": {fp}}}}}"#);
    config::parse(&text).unwrap().config.forward_proxy.unwrap()
}

fn request(raw: &str) -> Request {
    let mut s = ServerConn::new(Limits::default());
    match s.handle_input(raw.as_bytes()).unwrap() {
        (_, ServerEvent::Request(r)) => *r,
        other => panic!("no request: {other:?}"),
    }
}

fn sent(p: &ForwardPlan, raw: &str) -> Result<String, &'static str> {
    let req = request(raw);
    let dest = p.destination(&req)?;
    let mut out = Vec::new();
    let body = match RequestBody::relayed(req.framing) {
        RequestBody::Stream(length) => Some(length),
        _ => None,
    };
    p.write_request(&req, &dest, body, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn defaults() {
    let c = fp_config("{}");
    assert_eq!(c.listen_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(c.port, 3128);
    assert!(!c.connect.enabled);
    assert_eq!(c.connect.allowed_ports, vec![config::PortRange(443, 443)]);
    assert!(c.connect.splice);
    assert!(!fp_config(r#"{"connect": {"splice": false}}"#).connect.splice);
    assert_eq!(c.egress.ports, vec![config::PortRange(80, 80), config::PortRange(443, 443)]);
    assert_eq!(c.dns_lookup_family, config::LookupFamily::V4Preferred);
    assert_eq!(c.timeout, std::time::Duration::from_secs(30));
    assert_eq!(c.idle_timeout, std::time::Duration::from_secs(300));
}

#[test]
fn absolute_form_goes_out_in_origin_form_without_hop_by_hop_or_proxy_fields() {
    let p = plan("{}");
    let raw = "GET http://Example.COM:8080/a/b?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nProxy-Connection: keep-alive\r\n\
               Proxy-Authorization: Basic Zm9vOmJhcg==\r\nConnection: x-drop\r\nX-Drop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n\
               User-Agent: t\r\nVia: 1.0 other\r\nAccept: */*\r\n\r\n";
    assert_eq!(
        sent(&p, raw).unwrap(),
        "GET /a/b?x=1 HTTP/1.1\r\nhost: example.com:8080\r\nuser-agent: t\r\nvia: 1.0 other\r\naccept: */*\r\nvia: 1.1 sluice\r\n\r\n"
    );
}

#[test]
fn destination_order_rewrite_header_then_target_then_host() {
    let p = plan(r#"{"auto_host_rewrite_header": "X-Rewrite-Me"}"#);
    // The rewrite header wins over the target and Host, and is not sent on.
    let raw = "POST http://a.test/p HTTP/1.1\r\nHost: a.test\r\nx-rewrite-me: b.test:81\r\nContent-Length: 2\r\n\r\nhi";
    assert_eq!(
        sent(&p, raw).unwrap(),
        "POST /p HTTP/1.1\r\nhost: b.test:81\r\nvia: 1.1 sluice\r\ncontent-length: 2\r\n\r\n"
    );
    // Target over Host.
    let req = request("GET http://c.test:82/ HTTP/1.1\r\nHost: d.test\r\n\r\n");
    let d = p.destination(&req).unwrap();
    assert_eq!((d.host.as_str(), d.port, d.authority.as_str(), d.target.as_str()), ("c.test", 82, "c.test:82", "/"));
    // Host alone, default port 80; query kept; a path-less absolute target gets "/".
    let req = request("GET /q?z=1 HTTP/1.1\r\nHost: e.test\r\n\r\n");
    let d = p.destination(&req).unwrap();
    assert_eq!((d.host.as_str(), d.port, d.authority.as_str(), d.target.as_str()), ("e.test", 80, "e.test", "/q?z=1"));
    let req = request("GET http://f.test?y HTTP/1.1\r\nHost: f.test\r\n\r\n");
    assert_eq!(p.destination(&req).unwrap().target, "/?y");
    // IPv6 literal.
    let req = request("GET http://[::1]:8080/ HTTP/1.1\r\nHost: x\r\n\r\n");
    let d = p.destination(&req).unwrap();
    assert_eq!((d.host.as_str(), d.authority.as_str()), ("::1", "[::1]:8080"));
    // Chunked bodies are relayed chunked; Expect is the proxy's to answer.
    let raw = "PUT /u HTTP/1.1\r\nHost: g.test\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n";
    assert_eq!(
        sent(&p, raw).unwrap(),
        "PUT /u HTTP/1.1\r\nhost: g.test\r\nvia: 1.1 sluice\r\ntransfer-encoding: chunked\r\n\r\n"
    );
}

#[test]
fn bad_destinations_get_their_reason() {
    let p = plan(r#"{"auto_host_rewrite_header": "x-to"}"#);
    let cases = [
        ("GET / HTTP/1.0\r\n\r\n", "no destination: neither an absolute-form target nor Host"),
        ("GET / HTTP/1.1\r\nHost: \r\n\r\n", "invalid Host header"),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "invalid Host header"),
        ("GET / HTTP/1.1\r\nHost: a.test:0\r\n\r\n", "Host's port is not a number from 1 to 65535"),
        ("GET / HTTP/1.1\r\nHost: a.test:99999\r\n\r\n", "Host's port is not a number from 1 to 65535"),
        ("GET / HTTP/1.1\r\nHost: a.test:+80\r\n\r\n", "invalid Host header"),
        ("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", "invalid Host header"),
        ("GET / HTTP/1.1\r\nHost: a..test\r\n\r\n", "Host is empty or malformed"),
        ("GET / HTTP/1.1\r\nHost: a%2etest\r\n\r\n", "Host is empty or malformed"),
        ("GET / HTTP/1.1\r\nHost: a.test\r\nx-to: \r\n\r\n", "the rewrite header's value is not a host[:port]"),
        ("GET / HTTP/1.1\r\nHost: a.test\r\nx-to: u@b.test\r\n\r\n", "the rewrite header's value is not a host[:port]"),
        (
            "GET http://u:p@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "the request target's port is not a number from 1 to 65535",
        ),
        ("GET http:///x HTTP/1.1\r\nHost: a.test\r\n\r\n", "the request target's host is empty or malformed"),
        (
            "GET https://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "https:// targets go through a CONNECT tunnel (curl -x does that by itself)",
        ),
        ("GET ftp://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", "invalid request target"),
    ];
    for (raw, want) in cases {
        // The codec refuses some before the proxy sees them ("invalid Host header",
        // "invalid request target"): a 400 all the same.
        let mut s = ServerConn::new(Limits::default());
        let got = match s.handle_input(raw.as_bytes()) {
            Ok((_, ServerEvent::Request(r))) => p.destination(&r).unwrap_err(),
            Err(e) => e.reason(),
            Ok(other) => panic!("{other:?}"),
        };
        assert_eq!(got, want, "{raw:?}");
    }
    let connect = |t: &str| {
        let mut s = ServerConn::new(Limits::default());
        match s.handle_input(format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n").as_bytes()) {
            Ok((_, ServerEvent::Request(r))) => p.tunnel_destination(&r),
            Err(e) => Err(e.reason()),
            Ok(other) => panic!("{other:?}"),
        }
    };
    assert_eq!(connect("a.test:443").unwrap().authority, "a.test:443");
    assert_eq!(connect("[::1]:8443").unwrap().host, "::1");
    assert_eq!(connect("a.test:x").unwrap_err(), "CONNECT needs a host:port target");
    assert_eq!(connect("a.test:0").unwrap_err(), "CONNECT needs a host:port target");
    assert_eq!(connect("a.test").unwrap_err(), "CONNECT needs a host:port target");
    assert_eq!(connect("-:1").map(|d| d.host), Ok("-".to_string()));
}

#[test]
fn host_patterns() {
    assert!(host_matches("example.com", "example.com"));
    assert!(!host_matches("example.com", "a.example.com"));
    assert!(host_matches("*.example.com", "a.example.com"));
    assert!(host_matches("*.example.com", "a.b.example.com"));
    assert!(!host_matches("*.example.com", "example.com"));
    assert!(!host_matches("*.example.com", "badexample.com"));
    let p = plan(
        r#"{"egress": {"allow_hosts": ["*.good.test", "one.test"], "deny_hosts": ["bad.good.test"], "ports": [80, "8000-8010"]}}"#,
    );
    let e = &p.egress;
    assert_eq!(e.check_host("a.good.test", 80, false), Ok(()));
    assert_eq!(e.check_host("one.test", 8005, false), Ok(()));
    assert_eq!(e.check_host("bad.good.test", 80, false), Err(Denied::Host("bad.good.test".into())));
    assert_eq!(e.check_host("two.test", 80, false), Err(Denied::NotAllowed("two.test".into())));
    assert_eq!(e.check_host("one.test", 8011, false), Err(Denied::Port { port: 8011, tunnel: false }));
    // CONNECT has its own port list: 443 by default.
    assert_eq!(e.check_host("one.test", 443, true), Ok(()));
    assert_eq!(e.check_host("one.test", 80, true), Err(Denied::Port { port: 80, tunnel: true }));
    assert_eq!(Denied::Port { port: 80, tunnel: true }.to_string(), "CONNECT to port 80 is not allowed");
}

#[test]
fn egress_table_every_range_and_ipv6_form() {
    let cases: &[(&str, Option<&str>)] = &[
        ("0.0.0.0", Some("unspecified (0.0.0.0/8)")),
        ("0.1.2.3", Some("unspecified (0.0.0.0/8)")),
        ("10.0.0.1", Some("private (RFC 1918, 10.0.0.0/8)")),
        ("10.255.255.255", Some("private (RFC 1918, 10.0.0.0/8)")),
        ("11.0.0.1", None),
        ("100.63.255.255", None),
        ("100.64.0.1", Some("shared address space (CGNAT, 100.64.0.0/10)")),
        ("100.127.255.255", Some("shared address space (CGNAT, 100.64.0.0/10)")),
        ("100.128.0.0", None),
        ("127.0.0.1", Some("loopback (127.0.0.0/8)")),
        ("127.255.0.9", Some("loopback (127.0.0.0/8)")),
        ("169.254.169.254", Some("link-local (169.254.0.0/16, cloud metadata)")),
        ("172.15.255.255", None),
        ("172.16.0.1", Some("private (RFC 1918, 172.16.0.0/12)")),
        ("172.31.255.255", Some("private (RFC 1918, 172.16.0.0/12)")),
        ("172.32.0.0", None),
        ("192.0.0.8", Some("IETF protocol assignments (192.0.0.0/24)")),
        ("192.0.2.1", Some("documentation (192.0.2.0/24)")),
        ("192.168.1.1", Some("private (RFC 1918, 192.168.0.0/16)")),
        ("192.169.0.1", None),
        ("198.18.0.1", Some("benchmarking (198.18.0.0/15)")),
        ("198.51.100.7", Some("documentation (198.51.100.0/24)")),
        ("203.0.113.7", Some("documentation (203.0.113.0/24)")),
        ("224.0.0.1", Some("multicast (224.0.0.0/4)")),
        ("239.255.255.250", Some("multicast (224.0.0.0/4)")),
        ("240.0.0.1", Some("reserved (240.0.0.0/4, broadcast)")),
        ("255.255.255.255", Some("reserved (240.0.0.0/4, broadcast)")),
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("::", Some("unspecified (::)")),
        ("::1", Some("loopback (::1)")),
        ("::ffff:127.0.0.1", Some("IPv4-mapped IPv6 (::ffff:0:0/96)")),
        ("::ffff:8.8.8.8", Some("IPv4-mapped IPv6 (::ffff:0:0/96)")),
        ("::127.0.0.1", Some("IPv4-compatible IPv6 (::/96)")),
        ("64:ff9b::a00:1", Some("NAT64 (64:ff9b::/96)")),
        ("64:ff9b:1::1", Some("local NAT64 (64:ff9b:1::/48)")),
        ("2002:7f00:1::", Some("6to4 (2002::/16)")),
        ("2001:0:4136:e378::1", Some("Teredo (2001::/32)")),
        ("100::1", Some("discard-only (100::/64)")),
        ("2001:db8::1", Some("documentation (2001:db8::/32)")),
        ("fc00::1", Some("unique local (fc00::/7)")),
        ("fd12:3456::1", Some("unique local (fc00::/7)")),
        ("fe80::1", Some("link-local (fe80::/10)")),
        ("febf::1", Some("link-local (fe80::/10)")),
        ("fec0::1", Some("site-local (fec0::/10)")),
        ("ff02::1", Some("multicast (ff00::/8)")),
        ("2001:4860:4860::8888", None),
        ("2a00:1450::1", None),
    ];
    let p = plan("{}");
    for (ip, want) in cases {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(reserved(ip), *want, "{ip}");
        let decided = p.egress.check_addr(SocketAddr::new(ip, 80));
        match want {
            Some(range) => assert_eq!(decided, Err(Denied::Address { ip, range })),
            None => assert_eq!(decided, Ok(())),
        }
    }
}

#[test]
fn allow_cidrs_open_named_ranges_only_and_loops_are_refused() {
    let p = plan(r#"{"port": 3128, "egress": {"allow_cidrs": ["127.0.0.0/8", "fd00::/8"]}}"#);
    let at = |s: &str, port| p.egress.check_addr(SocketAddr::new(s.parse().unwrap(), port));
    assert_eq!(at("127.0.0.1", 8080), Ok(()));
    assert_eq!(at("127.9.9.9", 80), Ok(()));
    assert_eq!(at("fd00::5", 80), Ok(()));
    assert_eq!(
        at("10.0.0.1", 80),
        Err(Denied::Address { ip: "10.0.0.1".parse().unwrap(), range: "private (RFC 1918, 10.0.0.0/8)" })
    );
    assert_eq!(at("::1", 80), Err(Denied::Address { ip: "::1".parse().unwrap(), range: "loopback (::1)" }));
    // The proxy's own listener, by any loopback address.
    assert_eq!(at("127.0.0.1", 3128), Err(Denied::Loop));
    assert_eq!(at("127.0.0.2", 3128), Err(Denied::Loop));
}

#[test]
fn lookup_family_picks() {
    let addrs: Vec<IpAddr> = vec!["2001:4860::1".parse().unwrap(), "8.8.8.8".parse().unwrap()];
    let pick = |fam: &str| plan(&format!(r#"{{"dns_cache": {{"dns_lookup_family": "{fam}"}}}}"#)).pick(&addrs);
    assert_eq!(pick("V4_ONLY"), Some(addrs[1]));
    assert_eq!(pick("V6_ONLY"), Some(addrs[0]));
    assert_eq!(pick("AUTO"), Some(addrs[0]));
    assert_eq!(pick("V4_PREFERRED"), Some(addrs[1]));
    let v6: Vec<IpAddr> = vec![addrs[0]];
    assert_eq!(plan(r#"{"dns_cache": {"dns_lookup_family": "V4_ONLY"}}"#).pick(&v6), None);
    assert_eq!(plan("{}").pick(&v6), Some(addrs[0]));
}

#[test]
fn config_errors_have_json_paths() {
    let text = r#"{"version": 3, "port": 8080, "extra_config": {"sluice/forward-proxy": {
        "listen_ip": "nope", "port": 8080, "auto_host_rewrite_header": "Connection", "timeout": "0s",
        "connect": {"enabled": "yes", "allowed_ports": [0, "9-1", "x"], "splice": "no"},
        "dns_cache": {"dns_lookup_family": "V5", "host_ttl": "0s", "max_hosts": 0, "dns_refresh_rate": "soon"},
        "circuit_breakers": {"max_requests": -1, "max_retries": "3", "track_remaining": 1, "max_conns": 5},
        "egress": {"allow_hosts": ["ok.test", "bad host"], "ports": 80, "allow_cidrs": ["10.0.0.0/33"]}},
        "sluice/admin": {"listen_ip": "everywhere", "port": 70000, "path": "/"}}}"#;
    let err = config::parse(text).unwrap_err().to_string();
    let ns = r#"extra_config["sluice/forward-proxy"]"#;
    let want = [
        format!(r#"{ns}.listen_ip: invalid IP address "nope""#),
        format!(r#"{ns}.auto_host_rewrite_header: "Connection" cannot carry the destination: name another header"#),
        format!("{ns}.timeout: must be greater than 0"),
        format!("{ns}.connect.enabled: invalid type: string \"yes\", expected a boolean"),
        format!("{ns}.connect.allowed_ports[0]: expected a port from 1 to 65535 or a range \"from-to\", found 0"),
        format!("{ns}.connect.allowed_ports[1]: expected a port from 1 to 65535 or a range \"from-to\", found \"9-1\""),
        format!("{ns}.connect.allowed_ports[2]: expected a port from 1 to 65535 or a range \"from-to\", found \"x\""),
        format!("{ns}.connect.splice: invalid type: string \"no\", expected a boolean"),
        format!(
            "{ns}.dns_cache.dns_lookup_family: unknown value \"V5\", expected one of \"V4_ONLY\", \"V6_ONLY\", \"AUTO\", \"V4_PREFERRED\""
        ),
        format!("{ns}.dns_cache.host_ttl: must be greater than 0"),
        format!("{ns}.dns_cache.max_hosts: expected a whole number from 1 to 16777216, found 0"),
        format!(r#"{ns}.dns_cache.dns_refresh_rate: invalid duration "soon" (use Go syntax: "2s", "150ms", "1m30s")"#),
        format!("{ns}.circuit_breakers.max_requests: expected a whole number from 0 to 4294967295, found -1"),
        format!("{ns}.circuit_breakers.max_retries: expected a whole number from 0 to 4294967295, found a string"),
        format!(r#"{ns}.circuit_breakers.track_remaining: invalid type: integer "1", expected a boolean"#),
        format!(r#"{ns}.egress.allow_hosts[1]: "bad host" is not a host name or a "*.suffix" pattern"#),
        format!("{ns}.egress.ports: expected an array of ports (443, or \"8000-8999\"), found a number"),
        format!(r#"{ns}.egress.allow_cidrs[0]: invalid prefix length "33" in "10.0.0.0/33" (0 to 32)"#),
        r#"extra_config["sluice/admin"].listen_ip: invalid IP address "everywhere""#.to_string(),
        r#"extra_config["sluice/admin"].port: expected a whole number from 0 to 65535, found 70000"#.to_string(),
        format!("{ns}.port: 8080 is the gateway's port too: the forward proxy needs its own"),
    ];
    assert_eq!(err, want.join("\n"));
    // The admin listener needs a port of its own.
    for (admin, whose) in [(8080, "the gateway's"), (3128, "the forward proxy's")] {
        let text = format!(
            r#"{{"version": 3, "port": 8080, "extra_config": {{"sluice/forward-proxy": {{}}, "sluice/admin": {{"port": {admin}}}}}}}"#
        );
        let err = config::parse(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                r#"extra_config["sluice/admin"].port: {admin} is {whose} port too: the admin listener needs its own"#
            )
        );
    }
}
