//! The admin listener end to end, on every driver: `/stats` with exact lines after
//! gateway requests, forward proxy requests and a tunnel; `/stats/prometheus`;
//! `/config_dump` with the circuit breaker thresholds; `/ready`; bad requests; and a
//! circuit breaker opening and closing under real traffic (curl `-x`). Every
//! destination is on 127.0.0.1.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Backend, Gw, Mode, Reply};

every_driver!(
    admin_pages_count_what_went_through,
    a_circuit_breaker_opens_and_closes,
    admin_bad_requests,
    admin_pages_answer_when_the_gateway_is_full
);

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().expect("curl");
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn admin(gw: &Gw, path: &str) -> String {
    let at = gw.admin.expect("an admin listener");
    curl(&[&format!("http://{at}{path}")]).0
}

/// Sends raw bytes to the admin listener and reads everything until it closes.
fn admin_raw(at: SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect(at).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Polls `/stats` until `line` is in it (the end of a tunnel is counted when both
/// sides closed, a moment after the client saw its last byte).
fn stats_with(gw: &Gw, line: &str) -> String {
    let since = Instant::now();
    loop {
        let page = admin(gw, "/stats");
        if page.lines().any(|l| l == line) || since.elapsed() > Duration::from_secs(10) {
            return page;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn admin_pages_count_what_went_through(mode: Mode) {
    let backend = Backend::start(|_| Reply::Json(r#"{"a":1}"#.into()));
    let port = backend.addr.port();
    // A tunnel destination: reads "ping", answers "pong", closes.
    let dest = TcpListener::bind("127.0.0.1:0").unwrap();
    let tport = dest.local_addr().unwrap().port();
    let dest_thread = std::thread::spawn(move || {
        let (mut s, _) = dest.accept().unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        s.write_all(b"pong").unwrap();
    });
    let config = format!(
        r#"{{"version": 3, "endpoints": [{{"endpoint": "/a", "backend": [{{"host": ["http://127.0.0.1:{port}"], "url_pattern": "/"}}]}}],
        "extra_config": {{"sluice/admin": {{}}, "sluice/forward-proxy": {{
            "connect": {{"enabled": true, "allowed_ports": [{tport}]}},
            "egress": {{"ports": [{port}], "allow_cidrs": ["127.0.0.0/8"]}},
            "circuit_breakers": {{"max_connections": 40000, "max_pending_requests": 40000, "max_requests": 40000,
                                  "max_retries": 40000, "track_remaining": true}}}}}}}}"#
    );
    let gw = Gw::start(&config, mode);
    assert_eq!(admin(&gw, "/ready"), "LIVE\n");
    for path in ["/a", "/a", "/missing"] {
        curl(&[&format!("http://{}{path}", gw.addr)]);
    }
    let proxy = format!("http://{}", gw.forward.unwrap());
    let (out, err) = curl(&["-x", &proxy, &format!("http://localhost:{port}/x")]);
    assert_eq!(out, r#"{"a":1}"#, "{err}");
    // The tunnel.
    let mut s = TcpStream::connect(gw.forward.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("CONNECT 127.0.0.1:{tport} HTTP/1.1\r\nHost: 127.0.0.1:{tport}\r\n\r\nping").as_bytes())
        .unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "HTTP/1.1 200 OK\r\n\r\npong");
    drop(s);
    dest_thread.join().unwrap();

    let page = stats_with(&gw, "forward.tunnels_total: 1");
    let page = if page.contains("forward.tunnels_open: 0") { page } else { stats_with(&gw, "forward.tunnels_open: 0") };
    let breakers = |dest: &str, rq_200: u64| {
        format!(
            "forward.destination.{dest}.circuit_breakers.cx_open: 0\n\
             forward.destination.{dest}.circuit_breakers.remaining_cx: 40000\n\
             forward.destination.{dest}.circuit_breakers.remaining_pending: 40000\n\
             forward.destination.{dest}.circuit_breakers.remaining_retries: 40000\n\
             forward.destination.{dest}.circuit_breakers.remaining_rq: 40000\n\
             forward.destination.{dest}.circuit_breakers.rq_open: 0\n\
             forward.destination.{dest}.circuit_breakers.rq_pending_open: 0\n\
             forward.destination.{dest}.circuit_breakers.rq_retry_open: 0\n\
             forward.destination.{dest}.rq_200: {rq_200}\n\
             forward.destination.{dest}.rq_total: {rq_200}\n\
             forward.destination.{dest}.upstream_cx_overflow: 0\n\
             forward.destination.{dest}.upstream_rq_overflow: 0\n\
             forward.destination.{dest}.upstream_rq_pending_overflow: 0\n\
             forward.destination.{dest}.upstream_rq_retry_overflow: 0\n"
        )
    };
    let expected = format!(
        "dns_cache.dns_query_attempt: 1\n\
         dns_cache.dns_query_failure: 0\n\
         dns_cache.dns_query_success: 1\n\
         dns_cache.host_added: 1\n\
         dns_cache.host_overflow: 0\n\
         dns_cache.host_removed: 0\n\
         dns_cache.num_hosts: 1\n\
         {}{}\
         forward.tunnel_bytes_down: 4\n\
         forward.tunnel_bytes_spliced: 4\n\
         forward.tunnel_bytes_up: 4\n\
         forward.tunnels_open: 0\n\
         forward.tunnels_total: 1\n\
         gateway.endpoint.GET /a.backend.0.call_200: 2\n\
         gateway.endpoint.GET /a.rq_200: 2\n\
         gateway.endpoint.GET /a.rq_total: 2\n\
         gateway.unrouted.rq_404: 1\n\
         gateway.unrouted.rq_total: 1\n",
        breakers(&format!("127.0.0.1:{tport}"), 1),
        breakers(&format!("localhost:{port}"), 1),
    );
    assert_eq!(page, expected);

    let prom = admin(&gw, "/stats/prometheus");
    for line in [
        "# TYPE sluice_gateway_requests_total counter".to_string(),
        r#"sluice_gateway_requests_total{method="GET",endpoint="/a",code="200"} 2"#.to_string(),
        r#"sluice_gateway_requests_total{method="-",endpoint="(unrouted)",code="404"} 1"#.to_string(),
        r#"sluice_gateway_backend_calls_total{method="GET",endpoint="/a",backend="0",code="200"} 2"#.to_string(),
        r#"sluice_gateway_request_duration_seconds_bucket{method="GET",endpoint="/a",le="+Inf"} 2"#.to_string(),
        r#"sluice_gateway_request_duration_seconds_count{method="GET",endpoint="/a"} 2"#.to_string(),
        format!(r#"sluice_forward_requests_total{{destination="localhost:{port}",code="200"}} 1"#),
        "# TYPE sluice_forward_tunnels_open gauge".to_string(),
        "sluice_forward_tunnels_open 0".to_string(),
        r#"sluice_forward_tunnel_bytes_total{direction="up"} 4"#.to_string(),
        r#"sluice_forward_tunnel_bytes_total{direction="down"} 4"#.to_string(),
        // "ping" rode with the CONNECT head and was written; "pong" was spliced.
        "sluice_forward_tunnel_bytes_spliced_total 4".to_string(),
        "# TYPE sluice_dns_cache_num_hosts gauge".to_string(),
        "sluice_dns_cache_num_hosts 1".to_string(),
        "# TYPE sluice_forward_circuit_breakers_rq_open gauge".to_string(),
        format!(r#"sluice_forward_circuit_breakers_remaining_rq{{destination="127.0.0.1:{tport}"}} 40000"#),
        format!(r#"sluice_forward_upstream_rq_overflow_total{{destination="localhost:{port}"}} 0"#),
    ] {
        assert!(prom.lines().any(|l| l == line), "{line} missing from\n{prom}");
    }
    // Every sample line is `name{labels} value` or `name value`, under a TYPE line.
    for l in prom.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = l.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{l}");
    }

    let dump: serde_json::Value = serde_json::from_str(&admin(&gw, "/config_dump")).unwrap();
    let fwd = dump["configs"].as_array().unwrap().iter().find(|c| c["@type"] == "sluice.forward_proxy").unwrap();
    assert_eq!(
        fwd["circuit_breakers"],
        serde_json::json!({"thresholds": [{
            "max_connections": 40000, "max_pending_requests": 40000, "max_requests": 40000,
            "max_retries": 40000, "track_remaining": true
        }]})
    );
    assert_eq!(
        fwd["connect"],
        serde_json::json!({"enabled": true, "allowed_ports": [tport.to_string()], "splice": true})
    );
    assert_eq!(
        fwd["dns_cache_config"],
        serde_json::json!({"dns_lookup_family": "V4_PREFERRED", "host_ttl": "300s", "max_hosts": 1024, "dns_refresh_rate": "60s"})
    );
    let gwc = dump["configs"].as_array().unwrap().iter().find(|c| c["@type"] == "sluice.gateway").unwrap();
    assert_eq!(
        gwc["endpoints"],
        serde_json::json!([{"endpoint": "/a", "method": "GET", "timeout": "2s",
            "backend": [{"host": [format!("http://127.0.0.1:{port}")], "method": "GET", "plugin": false}]}])
    );
}

fn a_circuit_breaker_opens_and_closes(mode: Mode) {
    let backend = Backend::start(|seen| {
        if seen.head.starts_with("GET /slow") {
            Reply::Slow(Duration::from_millis(1500), r#"{"slow":true}"#.into())
        } else {
            Reply::Json(r#"{"fast":true}"#.into())
        }
    });
    let port = backend.addr.port();
    let config = format!(
        r#"{{"version": 3, "endpoints": [], "extra_config": {{"sluice/admin": {{}}, "sluice/forward-proxy": {{
            "egress": {{"ports": [{port}], "allow_cidrs": ["127.0.0.0/8"]}},
            "circuit_breakers": {{"max_requests": 1}}}}}}}}"#
    );
    let gw = Gw::start(&config, mode);
    let proxy = format!("http://{}", gw.forward.unwrap());
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let slow = {
        let (proxy, url) = (proxy.clone(), url("/slow"));
        std::thread::spawn(move || curl(&["-x", &proxy, &url]))
    };
    // Wait until the slow request holds the destination's one request.
    let dest = format!("forward.destination.127.0.0.1:{port}");
    let page = stats_with(&gw, &format!("{dest}.circuit_breakers.rq_open: 1"));
    assert!(page.contains(&format!("{dest}.circuit_breakers.rq_open: 1\n")), "{page}");
    let (out, err) = curl(&["-i", "-x", &proxy, &url("/fast")]);
    assert!(out.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{out}{err}");
    assert!(out.contains("\r\nx-sluice-circuit-breaker: max_requests\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\ncircuit breaker open: max_requests"), "{out}");
    assert_eq!(slow.join().unwrap().0, r#"{"slow":true}"#);
    // Closed again.
    let (out, err) = curl(&["-x", &proxy, &url("/fast")]);
    assert_eq!(out, r#"{"fast":true}"#, "{err}");
    let page = admin(&gw, "/stats");
    for line in [
        format!("{dest}.circuit_breakers.rq_open: 0"),
        format!("{dest}.upstream_rq_overflow: 1"),
        format!("{dest}.rq_200: 2"),
        format!("{dest}.rq_503: 1"),
        format!("{dest}.rq_total: 3"),
    ] {
        assert!(page.lines().any(|l| l == line), "{line} missing from\n{page}");
    }
    // No remaining_* without track_remaining.
    assert!(!page.contains("remaining_"), "{page}");
}

fn admin_bad_requests(mode: Mode) {
    let gw = Gw::start(r#"{"version": 3, "endpoints": [], "extra_config": {"sluice/admin": {}}}"#, mode);
    let at = gw.admin.unwrap();
    assert_eq!(
        admin_raw(at, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"),
        "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 79\r\nconnection: close\r\n\r\n\
         not found: the admin pages are /ready, /stats, /stats/prometheus, /config_dump\n"
    );
    assert_eq!(
        admin_raw(at, "POST /stats HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
        "HTTP/1.1 405 Method Not Allowed\r\ncontent-type: text/plain; charset=utf-8\r\nallow: GET\r\n\
         content-length: 9\r\nconnection: close\r\n\r\nonly GET\n"
    );
    let bad = admin_raw(at, "GET /stats HTTP/1.1\r\nBad Header\r\n\r\n");
    assert!(bad.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{bad}");
    let huge = format!("GET /stats HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
    assert!(admin_raw(at, &huge).starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    // Without forward proxy, the page has the gateway's and the DNS cache's counters only.
    let page = admin(&gw, "/stats");
    assert!(page.starts_with("dns_cache.dns_query_attempt: 0\n"), "{page}");
    assert!(page.ends_with("gateway.unrouted.rq_total: 0\n"), "{page}");
    assert!(!page.contains("forward."), "{page}");
}

/// The connection limit closes a gateway connection past it at once; the admin pages
/// stay reachable (they are how an operator sees why).
fn admin_pages_answer_when_the_gateway_is_full(mode: Mode) {
    let config = r#"{"version": 3, "endpoints": [], "extra_config": {"sluice/admin": {}}}"#;
    let gateway = sluice_core::Gateway::load(config).unwrap().gateway;
    let gw = Gw::start_with(gateway, mode, |opts| opts.max_connections_per_thread = 1);
    // One gateway connection, kept open once it has been served.
    let mut held = gw.connect();
    held.write_all(b"GET /__health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let r = support::read_response(&mut std::io::BufReader::new(&held)).unwrap();
    assert_eq!(r.status, 200);
    // The next one is closed without an answer.
    let mut refused = gw.connect();
    let _ = refused.write_all(b"GET /__health HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut got = Vec::new();
    let _ = refused.read_to_end(&mut got);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    // The admin listener answers all the same, twice.
    for _ in 0..2 {
        assert_eq!(admin(&gw, "/ready"), "LIVE\n");
    }
    drop(held);
}
