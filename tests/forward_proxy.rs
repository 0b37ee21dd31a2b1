//! The dynamic forward proxy end to end, on every driver, with real clients: curl
//! `-x`, Python `requests` with `proxies=`, CONNECT tunnels to a local HTTPS server,
//! the rewrite header, and refusals (CONNECT off, a port not allowed, a denied range)
//! that never reach a socket. Every destination is on 127.0.0.1.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::tls::{Pki, new_ca, serve};
use support::{Backend, Gw, Mode, Reply, read_response};

every_driver!(
    curl_and_python_requests_through_the_proxy,
    origin_form_and_rewrite_header,
    connect_tunnel_to_https_with_curl,
    tunnel_carries_half_close_both_ways,
    tunnel_idle_timeout,
    tunnel_ends_when_the_destination_goes,
    connect_disabled_is_refused_and_closed,
    refused_destinations_are_never_dialled,
    bad_destinations_get_400,
    bodies_stream_both_ways,
    unreachable_destinations,
    via_head_and_fragments_as_rfc_9110_says,
);

/// A forward proxy allowing loopback destinations on `ports`, CONNECT to `tunnel_ports`.
fn config(ports: &[u16], tunnel_ports: &[u16], extra: &str) -> String {
    let list = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    format!(
        r#"{{"version": 3, "endpoints": [], "extra_config": {{"sluice/forward-proxy": {{
            "auto_host_rewrite_header": "X-Rewrite-Me",
            "connect": {{"enabled": true, "allowed_ports": [{}]}},
            "egress": {{"ports": [{}], "allow_cidrs": ["127.0.0.0/8"]}}{extra}}}}}}}"#,
        list(tunnel_ports),
        list(ports)
    )
}

fn proxy(gw: &Gw) -> String {
    format!("http://{}", gw.forward.expect("a forward proxy listener"))
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().expect("curl");
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A Python with `requests` (the first of `python3` and `/usr/bin/python3` that has it).
fn python_with_requests() -> &'static str {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|p| Command::new(p).args(["-c", "import requests"]).status().is_ok_and(|s| s.success()))
        .expect("Python requests (.ci/run installs python3-requests)")
}

/// Sends `raw` to the forward proxy and reads one response.
fn ask(gw: &Gw, raw: &str) -> support::Response {
    let mut s = TcpStream::connect(gw.forward.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    read_response(&mut BufReader::new(s)).expect("a response")
}

fn curl_and_python_requests_through_the_proxy(mode: Mode) {
    let backend = Backend::start(|seen| {
        let first = seen.head.lines().next().unwrap_or("").to_string();
        Reply::Json(format!(r#"{{"line":"{first}"}}"#))
    });
    let port = backend.addr.port();
    let gw = Gw::start(&config(&[port], &[], ""), mode);
    let p = proxy(&gw);

    let (out, err) = curl(&["-i", "-x", &p, &format!("http://localhost:{port}/a/b?c=1")]);
    assert!(out.starts_with("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nvia: 1.1 sluice\r\n"), "{out}{err}");
    assert!(out.ends_with("\r\n\r\n{\"line\":\"GET /a/b?c=1 HTTP/1.1\"}"), "{out}");
    // What the destination got: origin-form, its own Host, no Proxy-Connection, Via.
    let head = &backend.requests()[0].head;
    assert_eq!(
        head,
        &format!(
            "GET /a/b?c=1 HTTP/1.1\r\nhost: localhost:{port}\r\nuser-agent: curl/{}\r\naccept: */*\r\nvia: 1.1 sluice\r\n\r\n",
            head.split("user-agent: curl/").nth(1).and_then(|r| r.split("\r\n").next()).unwrap_or("?")
        )
    );

    let script = format!(
        r#"
import requests
r = requests.post("http://127.0.0.1:{port}/form", data=b"x=1", proxies={{"http": "{p}"}}, timeout=10)
print(r.status_code, r.headers["via"], r.text)
"#
    );
    let out = Command::new(python_with_requests()).args(["-c", &script]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said, "200 1.1 sluice {\"line\":\"POST /form HTTP/1.1\"}\n", "{}", String::from_utf8_lossy(&out.stderr));
    let seen = backend.requests();
    assert_eq!(seen[1].body, b"x=1");
    assert!(
        seen[1].head.starts_with(&format!("POST /form HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n")),
        "{}",
        seen[1].head
    );
    assert!(seen[1].head.ends_with("via: 1.1 sluice\r\ncontent-length: 3\r\n\r\n"), "{}", seen[1].head);
}

fn origin_form_and_rewrite_header(mode: Mode) {
    let backend = Backend::start(|_| Reply::Json("{}".into()));
    let port = backend.addr.port();
    let gw = Gw::start(&config(&[port], &[], ""), mode);
    // Host alone names the destination (a client that treats the proxy as the server).
    let r = ask(
        &gw,
        &format!("GET /h HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nProxy-Authorization: Basic eDp5\r\nX-Keep: 1\r\n\r\n"),
    );
    assert_eq!(r.status, 200);
    // The rewrite header wins over the target and Host, and is not forwarded.
    let r = ask(
        &gw,
        &format!(
            "GET http://elsewhere.test/r HTTP/1.1\r\nHost: elsewhere.test\r\nX-Rewrite-Me: localhost:{port}\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 200);
    let seen = backend.requests();
    assert_eq!(
        seen[0].head,
        format!("GET /h HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nx-keep: 1\r\nvia: 1.1 sluice\r\n\r\n")
    );
    assert_eq!(seen[1].head, format!("GET /r HTTP/1.1\r\nhost: localhost:{port}\r\nvia: 1.1 sluice\r\n\r\n"));
    // Keep-alive to the destination: both requests went over one pooled connection
    // (both destinations are 127.0.0.1:port).
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

fn connect_tunnel_to_https_with_curl(mode: Mode) {
    let pki = Pki::new();
    let ca = new_ca("Forward Test CA");
    let ca_file = pki.write("ca.crt", &ca.cert.pem());
    let (cert, key) = pki.leaf("server", &["localhost"], Some(&ca), false);
    let server = serve(&cert, &key, None);
    let gw = Gw::start(&config(&[], &[server.port], ""), mode);
    let url = format!("https://localhost:{}/through/the/tunnel", server.port);
    let (out, err) = curl(&["-v", "-x", &proxy(&gw), "--cacert", ca_file.to_str().unwrap(), &url]);
    assert_eq!(out, r#"{"path":"/through/the/tunnel","tls":"TLSv1.3","client":null}"#, "{err}");
    assert!(err.contains(&format!("CONNECT localhost:{} HTTP/1.1", server.port)), "{err}");
    assert!(err.contains("HTTP/1.1 200 OK"), "{err}");
    // Untouched bytes: the certificate curl checked is the server's own.
    assert!(err.contains("CN=localhost") || err.contains("subject: CN=localhost"), "{err}");
}

/// A destination that reads until the client's FIN, then answers with what it got
/// and closes: the half-close must cross the tunnel both ways.
fn tunnel_carries_half_close_both_ways(mode: Mode) {
    // Spliced (the default; tests/admin.rs shows the bytes were) and copied.
    for splice in [true, false] {
        tunnel_half_close(mode, splice);
    }
}

fn tunnel_half_close(mode: Mode, splice: bool) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dest = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(format!("got {} bytes, sum {}", got.len(), support::checksum(&got)).as_bytes()).unwrap();
    });
    let cfg =
        config(&[], &[port], "").replace(r#""enabled": true"#, &format!(r#""enabled": true, "splice": {splice}"#));
    let gw = Gw::start(&cfg, mode);
    let mut s = TcpStream::connect(gw.forward.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let data = support::pattern(3 * 1024 * 1024 + 7);
    // The first bytes ride with the CONNECT head: they go first, untouched.
    let mut first = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes();
    first.extend_from_slice(&data[..1000]);
    s.write_all(&first).unwrap();
    s.write_all(&data[1000..]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let want = format!("HTTP/1.1 200 OK\r\n\r\ngot {} bytes, sum {}", data.len(), support::checksum(&data));
    assert_eq!(String::from_utf8_lossy(&answer), want);
    dest.join().unwrap();
}

fn tunnel_ends_when_the_destination_goes(mode: Mode) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The first connection is closed at once, unread; the second answers.
    let dest = std::thread::spawn(move || {
        drop(listener.accept().unwrap());
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"second").unwrap();
    });
    let gw = Gw::start(&config(&[], &[port], ""), mode);
    let connect = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    let mut s = TcpStream::connect(gw.forward.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(connect.as_bytes()).unwrap();
    let mut head = [0u8; 19];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 OK\r\n\r\n");
    // Bytes into a destination that is gone: the write fails (a reset, a broken pipe)
    // and the tunnel ends; the client sees its connection end, never a hang.
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let hung = |e: &std::io::Error| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
    let chunk = vec![7u8; 64 * 1024];
    let mut refused = None;
    for _ in 0..256 {
        if let Err(e) = s.write_all(&chunk) {
            refused = Some(e);
            break;
        }
    }
    match refused {
        Some(e) => assert!(!hung(&e), "the tunnel did not end: {e}"),
        None => {
            let mut rest = Vec::new();
            match s.read_to_end(&mut rest) {
                Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
                Err(e) => assert!(!hung(&e), "the tunnel did not end: {e}"),
            }
        }
    }
    // The gateway goes on: the next tunnel works.
    let mut s = TcpStream::connect(gw.forward.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(connect.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.ends_with(b"second") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\nsecond");
    dest.join().unwrap();
}

fn tunnel_idle_timeout(mode: Mode) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let gw = Gw::start(&config(&[], &[port], r#", "idle_timeout": "1s""#), mode);
    let mut s = TcpStream::connect(gw.forward.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\n");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "{waited:?}");
    // The destination's side was closed too.
    let mut dest = held.join().unwrap().unwrap();
    dest.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(dest.read(&mut [0; 8]).unwrap(), 0);
}

fn connect_disabled_is_refused_and_closed(mode: Mode) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = config(&[port], &[port], "").replace(r#""enabled": true"#, r#""enabled": false"#);
    let gw = Gw::start(&cfg, mode);
    let mut s = TcpStream::connect(gw.forward.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Bytes after the head (a TLS hello, say) are never read as a request.
    s.write_all(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(
        answer,
        "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 36\r\nconnection: close\r\n\r\nCONNECT is not enabled on this proxy"
    );
    assert!(listener.accept().is_err(), "no connection was attempted");
}

fn refused_destinations_are_never_dialled(mode: Mode) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let other = port.wrapping_add(1).max(1024);
    // Loopback allowed, but CONNECT only to `other`, plain requests only to `other`.
    let gw = Gw::start(&config(&[other], &[other], ""), mode);
    let r = ask(&gw, &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-sluice-egress-denied"), Some(format!("CONNECT to port {port} is not allowed").as_str()));
    assert_eq!(r.header("connection"), Some("close"));
    let r = ask(&gw, &format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(
        (r.status, r.header("x-sluice-egress-denied")),
        (403, Some(format!("port {port} is not allowed").as_str()))
    );
    assert_eq!(r.text(), format!("egress denied: port {port} is not allowed"));
    assert!(listener.accept().is_err(), "no connection was attempted");

    // Without allow_cidrs loopback is refused after resolution: localhost too, and
    // IPv6 loopback and mapped forms.
    let cfg = config(&[port], &[port], "").replace(r#", "allow_cidrs": ["127.0.0.0/8"]"#, "");
    let gw = Gw::start(&cfg, mode);
    for (target, why) in [
        (format!("http://127.0.0.1:{port}/"), "address 127.0.0.1 is loopback (127.0.0.0/8)".to_string()),
        (format!("http://localhost:{port}/"), "address 127.0.0.1 is loopback (127.0.0.0/8)".to_string()),
        (format!("http://[::1]:{port}/"), "address ::1 is loopback (::1)".to_string()),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            "address ::ffff:127.0.0.1 is IPv4-mapped IPv6 (::ffff:0:0/96)".to_string(),
        ),
        (
            format!("http://169.254.169.254:{port}/"),
            "address 169.254.169.254 is link-local (169.254.0.0/16, cloud metadata)".to_string(),
        ),
        (format!("http://10.1.2.3:{port}/"), "address 10.1.2.3 is private (RFC 1918, 10.0.0.0/8)".to_string()),
    ] {
        let r = ask(&gw, &format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!((r.status, r.header("x-sluice-egress-denied")), (403, Some(why.as_str())), "{target}");
    }
    let r = ask(&gw, &format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(
        (r.status, r.header("x-sluice-egress-denied")),
        (403, Some("address 127.0.0.1 is loopback (127.0.0.0/8)"))
    );
    assert!(listener.accept().is_err(), "no connection was attempted");
}

fn bad_destinations_get_400(mode: Mode) {
    let gw = Gw::start(&config(&[80], &[443], ""), mode);
    for (raw, why) in [
        ("GET / HTTP/1.0\r\n\r\n", "no destination: neither an absolute-form target nor Host"),
        ("GET / HTTP/1.1\r\nHost: a..b\r\n\r\n", "Host is empty or malformed"),
        (
            "GET / HTTP/1.1\r\nHost: a.test\r\nX-Rewrite-Me: a b\r\n\r\n",
            "the rewrite header's value is not a host[:port]",
        ),
        (
            "GET https://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "https:// targets go through a CONNECT tunnel (curl -x does that by itself)",
        ),
        ("CONNECT a.test HTTP/1.1\r\nHost: a.test\r\n\r\n", "CONNECT needs a host:port target"),
    ] {
        let r = ask(&gw, raw);
        assert_eq!((r.status, r.text()), (400, why), "{raw:?}");
    }
}

fn bodies_stream_both_ways(mode: Mode) {
    let backend =
        Backend::start(|seen| if seen.head.starts_with("GET") { Reply::Big(5 * 1024 * 1024) } else { Reply::Echo });
    let port = backend.addr.port();
    let gw = Gw::start(&config(&[port], &[], ""), mode);
    let mut s = TcpStream::connect(gw.forward.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    s.write_all(format!("GET http://127.0.0.1:{port}/big HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    let big = read_response(&mut r).unwrap();
    assert_eq!((big.status, big.body.len()), (200, 5 * 1024 * 1024));
    assert_eq!(support::checksum(&big.body), support::checksum(&support::pattern(5 * 1024 * 1024)));
    // A chunked upload on the same client connection: relayed chunked.
    let data = support::pattern(1024 * 1024);
    s.write_all(
        format!("POST http://127.0.0.1:{port}/up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes(),
    )
    .unwrap();
    for part in data.chunks(100_000) {
        s.write_all(format!("{:x}\r\n", part.len()).as_bytes()).unwrap();
        s.write_all(part).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let echo = read_response(&mut r).unwrap();
    assert_eq!(echo.text(), format!(r#"{{"method":"POST","length":1048576,"sum":{}}}"#, support::checksum(&data)));
    assert!(backend.requests()[1].head.contains("transfer-encoding: chunked\r\n"));
    // 17 MiB with a Content-Length, over the 16 MiB limit on bodies read whole: a
    // forwarded body streams, so no limit holds it (squid and tinyproxy set none either).
    let data = support::pattern(17 << 20);
    s.write_all(
        format!("PUT http://127.0.0.1:{port}/up HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", data.len())
            .as_bytes(),
    )
    .unwrap();
    s.write_all(&data).unwrap();
    let echo = read_response(&mut r).unwrap();
    assert_eq!(
        echo.text(),
        format!(r#"{{"method":"PUT","length":{},"sum":{}}}"#, data.len(), support::checksum(&data))
    );
    assert!(backend.requests()[2].head.contains("content-length: 17825792\r\n"));
}

fn unreachable_destinations(mode: Mode) {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let gw = Gw::start(&config(&[port], &[port], ""), mode);
    let r = ask(&gw, &format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(r.status, 502);
    assert!(r.text().starts_with(&format!("cannot connect to 127.0.0.1:{port}: ")), "{}", r.text());
    let r = ask(&gw, &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(r.status, 502);
    // (A name that does not resolve is core's test: asking the system resolver for
    // one would send a query off this host.)
}

/// What the destination said is kept as it said it: its own `Via` first, then ours
/// (RFC 9110 7.6.3); a `HEAD` answer keeps its `Content-Length` (9.3.2). A target with
/// a fragment never leaves (400, as Envoy since 1.16.5), on this listener and the
/// gateway's.
fn via_head_and_fragments_as_rfc_9110_says(mode: Mode) {
    let backend = Backend::start(|seen| {
        let head = seen.head.starts_with("HEAD ");
        let body = if head { "" } else { "{\"a\":1}" };
        Reply::Raw(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nVia: 1.0 origin-cache\r\nContent-Length: 7\r\n\r\n{body}"
            )
            .into_bytes(),
        )
    });
    let port = backend.addr.port();
    let gw = Gw::start(&config(&[port], &[], ""), mode);
    let r = ask(&gw, &format!("GET http://127.0.0.1:{port}/v HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"));
    let fields: Vec<(&str, &str)> = r.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(
        fields,
        [
            ("content-type", "application/json"),
            ("via", "1.0 origin-cache"),
            ("via", "1.1 sluice"),
            ("content-length", "7")
        ]
    );
    assert_eq!(r.text(), "{\"a\":1}");
    // curl reads both Via lines, in that order.
    let (out, err) = curl(&["-sI", "-x", &proxy(&gw), &format!("http://127.0.0.1:{port}/h")]);
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nvia: 1.0 origin-cache\r\ncontent-length: 7\r\n\
         via: 1.1 sluice\r\n\r\n",
        "{err}"
    );
    assert!(backend.requests()[1].head.starts_with("HEAD /h HTTP/1.1\r\n"), "{}", backend.requests()[1].head);
    // A fragment: 400 before anything is dialled, on both listeners.
    let r = ask(&gw, &format!("GET http://127.0.0.1:{port}/v#top HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"));
    assert_eq!((r.status, r.text()), (400, "a fragment (#) in the request target"));
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /__health#x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let r = read_response(&mut BufReader::new(s)).expect("a response");
    assert_eq!((r.status, r.text()), (400, "a fragment (#) in the request target"));
    assert_eq!(backend.requests().len(), 2);
}
