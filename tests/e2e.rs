//! End to end through real sockets: scripted backends, the gateway on port 0, a raw
//! client (and curl). Every test runs once per driver: sluice-uring on io_uring and on
//! forced epoll (Linux), and sluice-tokio.

mod support;

use std::io::{BufReader, Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::{Backend, Gw, Mode, Reply, checksum, pattern, read_response};

every_driver!(
    aggregation_with_shaping,
    sequential_calls,
    no_op_streams_both_ways,
    partial_on_timeout,
    failing_backends,
    keep_alive_reuses_backend_connections,
    pipelined_requests,
    client_garbage_is_400_and_closed,
    malformed_chunked_upload_is_400,
    oversize_head_is_431,
    oversize_body_is_413,
    slowloris_is_closed,
    graceful_stop_finishes_in_flight,
    curl_sees_the_aggregate,
    a_placeholder_may_start_a_segment_of_a_url_pattern,
    a_path_in_the_wrong_case_is_redirected,
    negotiated_answers_as_krakend_writes_them,
    a_no_op_backend_in_an_aggregating_endpoint_is_called_and_adds_nothing,
    router_options_as_krakend_reads_them,
);

fn config(endpoints: &str) -> String {
    format!(r#"{{"version": 3, "timeout": "1s", "read_header_timeout": "400ms", "endpoints": [{endpoints}]}}"#)
}

fn aggregation_with_shaping(mode: Mode) {
    let users =
        Backend::start(|_| Reply::Json(r#"{"id":42,"name":"Ada","secret":"x","big":12345678901234567890123}"#.into()));
    let orders = Backend::start(|_| Reply::Json(r#"{"items":[{"id":"o-1","total":1.50}],"next":null}"#.into()));
    let gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/u/{{id}}", "cache_ttl": "60s", "backend": [
                {{"host": ["{}"], "url_pattern": "/users/{{id}}", "deny": ["secret"], "mapping": {{"name": "full_name"}}}},
                {{"host": ["{}"], "url_pattern": "/orders?user={{id}}", "allow": ["items"], "group": "orders"}}]}}"#,
            users.url(),
            orders.url()
        )),
        mode,
    );
    let r = gw.get("/u/42");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers,
        [
            ("content-type".to_string(), "application/json; charset=utf-8".to_string()),
            ("x-krakend-completed".to_string(), "true".to_string()),
            ("cache-control".to_string(), "public, max-age=60".to_string()),
            ("content-length".to_string(), "104".to_string()),
            ("connection".to_string(), "close".to_string()),
        ]
    );
    assert_eq!(
        r.text(),
        r#"{"id":42,"full_name":"Ada","big":12345678901234567890123,"orders":{"items":[{"id":"o-1","total":1.50}]}}"#
    );
    let seen = users.requests();
    assert!(seen[0].head.starts_with("GET /users/42 HTTP/1.1\r\nhost: 127.0.0.1:"), "{}", seen[0].head);
    assert!(seen[0].head.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"));
    assert!(orders.requests()[0].head.starts_with("GET /orders?user=42 HTTP/1.1\r\n"));
}

fn sequential_calls(mode: Mode) {
    let first = Backend::start(|_| Reply::Json(r#"{"user":{"team":"core/ops"}}"#.into()));
    let second = Backend::start(|s| {
        let path = s.head.split(' ').nth(1).unwrap_or("").to_string();
        Reply::Json(format!(r#"{{"asked":"{path}"}}"#))
    });
    let gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/s", "extra_config": {{"proxy": {{"sequential": true}}}}, "backend": [
                {{"host": ["{}"], "url_pattern": "/a"}},
                {{"host": ["{}"], "url_pattern": "/teams/{{resp0_user.team}}"}}]}}"#,
            first.url(),
            second.url()
        )),
        mode,
    );
    let r = gw.get("/s");
    assert_eq!(r.text(), r#"{"user":{"team":"core/ops"},"asked":"/teams/core%2Fops"}"#);
    assert_eq!(r.header("x-krakend-completed"), Some("true"));
}

fn no_op_streams_both_ways(mode: Mode) {
    let backend = Backend::start(|s| if s.head.starts_with("GET") { Reply::Big(20 << 20) } else { Reply::Echo });
    let gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/raw", "method": "GET", "output_encoding": "no-op", "timeout": "10s", "backend": [{{"host": ["{0}"], "url_pattern": "/big", "encoding": "no-op"}}]}},
               {{"endpoint": "/raw", "method": "POST", "output_encoding": "no-op", "timeout": "10s", "backend": [{{"host": ["{0}"], "url_pattern": "/up", "encoding": "no-op"}}]}}"#,
            backend.url()
        )),
        mode,
    );
    // Download: 20 MiB (over the 16 MiB limit on buffered bodies: streams have none), byte for byte.
    let r = gw.get("/raw");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("20971520"));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.body.len(), 20 << 20);
    assert!(r.body == pattern(20 << 20)[..], "body differs");
    // Upload: an 18 MiB chunked body (no length said up front, over the 16 MiB limit on
    // bodies read whole) reaches the backend whole, re-chunked as it streams.
    let body = pattern(18 << 20);
    let mut s = gw.connect();
    write!(s, "POST /raw HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").unwrap();
    for part in body.chunks(1 << 20) {
        write!(s, "{:x}\r\n", part.len()).unwrap();
        s.write_all(part).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let r = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(r.text(), format!(r#"{{"method":"POST","length":{},"sum":{}}}"#, body.len(), checksum(&body)));
    assert!(backend.requests().last().unwrap().head.contains("transfer-encoding: chunked"));
    // Upload: 20 MiB with a Content-Length, over the 16 MiB limit on bodies read whole: a
    // stream is never held, so it is not held to that limit (it was refused with 413).
    let body = pattern(20 << 20);
    let mut s = gw.connect();
    write!(s, "POST /raw HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
    s.write_all(&body).unwrap();
    let r = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(r.text(), format!(r#"{{"method":"POST","length":{},"sum":{}}}"#, body.len(), checksum(&body)));
    assert!(backend.requests().last().unwrap().head.contains("content-length: 20971520"));
}

fn partial_on_timeout(mode: Mode) {
    let fast = Backend::start(|_| Reply::Json(r#"{"fast":1}"#.into()));
    let slow = Backend::start(|_| Reply::Slow(Duration::from_secs(3), r#"{"slow":1}"#.into()));
    let gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/p", "timeout": "300ms", "backend": [{{"host": ["{}"], "url_pattern": "/f"}}, {{"host": ["{}"], "url_pattern": "/s"}}]}}"#,
            fast.url(),
            slow.url()
        )),
        mode,
    );
    let t = Instant::now();
    let r = gw.get("/p");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!((r.status, r.text(), r.header("x-krakend-completed")), (200, r#"{"fast":1}"#, Some("false")));
}

fn failing_backends(mode: Mode) {
    let ok = Backend::start(|_| Reply::Json(r#"{"ok":true}"#.into()));
    let garbage = Backend::start(|_| Reply::Raw(b"NOT HTTP AT ALL\r\n\r\n".to_vec()));
    let reset = Backend::start(|_| Reply::Close);
    let error =
        Backend::start(|_| Reply::Raw(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy".to_vec()));
    // Over the 16 MiB a buffered (aggregated) backend body may have.
    let huge = Backend::start(|_| Reply::Big(17 << 20));
    // A port nothing listens on: bind one, read its number, close it.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let eps: Vec<String> = [
        ("garbage", garbage.url()),
        ("reset", reset.url()),
        ("error", error.url()),
        ("refused", refused.clone()),
        ("huge", huge.url()),
    ]
        .iter()
        .map(|(name, url)| {
            format!(
                r#"{{"endpoint": "/{name}", "backend": [{{"host": ["{url}"], "url_pattern": "/x"}}, {{"host": ["{}"], "url_pattern": "/ok"}}]}},
                   {{"endpoint": "/{name}/alone", "backend": [{{"host": ["{url}"], "url_pattern": "/x"}}]}},
                   {{"endpoint": "/{name}/raw", "output_encoding": "no-op", "backend": [{{"host": ["{url}"], "url_pattern": "/x", "encoding": "no-op"}}]}}"#,
                ok.url()
            )
        })
        .collect();
    let gw = Gw::start(&config(&eps.join(",")), mode);
    for name in ["garbage", "reset", "error", "refused"] {
        let r = gw.get(&format!("/{name}"));
        assert_eq!(
            (r.status, r.text(), r.header("x-krakend-completed")),
            (200, r#"{"ok":true}"#, Some("false")),
            "{name}"
        );
        let r = gw.get(&format!("/{name}/alone"));
        assert_eq!((r.status, r.text()), (500, ""), "{name}");
        let r = gw.get(&format!("/{name}/raw"));
        let expected = if name == "error" { 503 } else { 502 };
        assert_eq!(r.status, expected, "{name} no-op");
    }
}

fn keep_alive_reuses_backend_connections(mode: Mode) {
    let backend = Backend::start(|_| Reply::Json(r#"{"n":1}"#.into()));
    let gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/k", "backend": [{{"host": ["{}"], "url_pattern": "/x"}}]}}"#,
            backend.url()
        )),
        mode,
    );
    let s = gw.connect();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    // A 404 and a 405 keep the connection too.
    write!(w, "GET /nope HTTP/1.1\r\nHost: gw\r\n\r\nPOST /k HTTP/1.1\r\nHost: gw\r\n\r\n").unwrap();
    let resp = read_response(&mut r).unwrap();
    assert_eq!((resp.status, resp.text(), resp.header("connection")), (404, "404 page not found", None));
    let resp = read_response(&mut r).unwrap();
    assert_eq!((resp.status, resp.header("allow"), resp.header("connection")), (405, Some("GET"), None));
    assert_eq!(
        (resp.header("content-type"), resp.header("x-krakend-completed"), resp.text()),
        (Some("text/plain"), Some("false"), "405 method not allowed")
    );
    for _ in 0..20 {
        write!(w, "GET /k HTTP/1.1\r\nHost: gw\r\n\r\n").unwrap();
        let resp = read_response(&mut r).unwrap();
        assert_eq!((resp.status, resp.text()), (200, r#"{"n":1}"#));
        assert_eq!(resp.header("connection"), None);
    }
    // A busy client that goes quiet: its last call's backend connection, kept for its
    // next call, goes to the pool 2 s after that call, where another client's request
    // finds it (still one backend connection).
    // (3 s: the 2 s timer with room for a loaded machine.)
    std::thread::sleep(Duration::from_millis(3000));
    let other = gw.connect();
    let mut other_w = other.try_clone().unwrap();
    write!(other_w, "GET /k HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").unwrap();
    let resp = read_response(&mut BufReader::new(other)).unwrap();
    assert_eq!((resp.status, resp.text()), (200, r#"{"n":1}"#));
    // A client that comes back slowly (over 250 ms) has its connection wait for the
    // next request holding no read buffer (the driver waits for the socket to be
    // readable). The first request after a pause still finds the buffered read of a
    // busy client; the second, and the client's close, find the wait: the request is
    // read whole and the close ends the connection (EOF, nothing written).
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(300));
        write!(w, "GET /k HTTP/1.1\r\nHost: gw\r\n\r\n").unwrap();
        let resp = read_response(&mut r).unwrap();
        assert_eq!((resp.status, resp.text()), (200, r#"{"n":1}"#));
    }
    assert_eq!(backend.requests().len(), 23);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1, "23 requests from two clients, one backend connection");
    w.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"");
}

fn pipelined_requests(mode: Mode) {
    let backend = Backend::start(|s| {
        let path = s.head.split(' ').nth(1).unwrap_or("").to_string();
        Reply::Json(format!(r#"{{"p":"{path}"}}"#))
    });
    let gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/q/{{n}}", "backend": [{{"host": ["{}"], "url_pattern": "/b/{{n}}"}}]}}"#,
            backend.url()
        )),
        mode,
    );
    let mut s = gw.connect();
    let mut all = String::new();
    for i in 0..5 {
        all.push_str(&format!("GET /q/{i} HTTP/1.1\r\nHost: gw\r\n\r\n"));
    }
    all.push_str("GET /__health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    s.write_all(all.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    for i in 0..5 {
        assert_eq!(read_response(&mut r).unwrap().text(), format!(r#"{{"p":"/b/{i}"}}"#));
    }
    assert_eq!(read_response(&mut r).unwrap().status, 200);
    assert!(read_response(&mut r).is_none(), "closed after Connection: close");
}

fn client_garbage_is_400_and_closed(mode: Mode) {
    let gw = Gw::start(
        &config(r#"{"endpoint": "/x", "backend": [{"host": ["http://127.0.0.1:9"], "url_pattern": "/x"}]}"#),
        mode,
    );
    for bad in [
        &b"HELLO\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n",
    ] {
        let mut s = gw.connect();
        s.write_all(bad).unwrap();
        let mut r = BufReader::new(s);
        let resp = read_response(&mut r).unwrap();
        assert_eq!((resp.status, resp.header("connection")), (400, Some("close")), "{}", String::from_utf8_lossy(bad));
        assert!(read_response(&mut r).is_none());
    }
}

fn malformed_chunked_upload_is_400(mode: Mode) {
    // A no-op endpoint streams the body as it comes: a bad chunk is found after the
    // backend got the head (and maybe a first chunk). It is the client's fault: 400 and
    // close, and the backend connection that got part of it is closed, never pooled.
    let backend = Backend::start(|_| Reply::Echo);
    let gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/up", "method": "POST", "output_encoding": "no-op", "backend": [{{"host": ["{}"], "url_pattern": "/up", "encoding": "no-op"}}]}}"#,
            backend.url()
        )),
        mode,
    );
    let head = "POST /up HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases: [(&str, &str); 3] = [
        ("5\r\nhello\r\n0x1\r\nX\r\n0\r\n\r\n", "invalid chunk size"),
        ("5\r\nhelloXX0\r\n\r\n", "chunk data must end with CRLF"),
        ("ffffffffffffffffff1\r\nX\r\n0\r\n\r\n", "chunk size overflows"),
    ];
    for (i, (body, reason)) in cases.into_iter().enumerate() {
        let mut s = gw.connect();
        s.write_all(head.as_bytes()).unwrap();
        // The head first, so the backend call is under way when the body goes wrong.
        thread_pause();
        s.write_all(body.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let resp = read_response(&mut r).unwrap();
        assert_eq!(resp.status, 400, "{body:?}");
        assert_eq!(resp.header("connection"), Some("close"), "{body:?}");
        assert_eq!(resp.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(resp.text(), reason);
        assert!(read_response(&mut r).is_none(), "the connection closes after {body:?}");
        assert_eq!(backend.connections.load(Ordering::SeqCst), i + 1, "a new backend connection per request");
    }
    assert!(backend.requests().is_empty(), "no backend saw a whole request");
    // A good upload after them gets a fresh backend connection (none was pooled).
    let mut s = gw.connect();
    write!(s, "{head}5\r\nhello\r\n0\r\n\r\n").unwrap();
    let r = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(r.text(), format!(r#"{{"method":"POST","length":5,"sum":{}}}"#, checksum(b"hello")));
    assert_eq!(backend.connections.load(Ordering::SeqCst), 4);
}

fn thread_pause() {
    std::thread::sleep(Duration::from_millis(50));
}

fn oversize_body_is_413(mode: Mode) {
    let backend = Backend::start(|_| Reply::Echo);
    let gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/up", "method": "POST", "backend": [{{"host": ["{}"], "url_pattern": "/x"}}]}}"#,
            backend.url()
        )),
        mode,
    );
    // Declared too large: refused before any byte of the body is read.
    let mut s = gw.connect();
    write!(s, "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", 17 << 20).unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).unwrap();
    assert_eq!((resp.status, resp.header("connection")), (413, Some("close")));
    assert!(read_response(&mut r).is_none());
    // Chunked and too large: refused as it crosses the limit.
    let mut s = gw.connect();
    write!(s, "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut refused = false;
    for _ in 0..20 {
        if write!(s, "{:x}\r\n", chunk.len())
            .and_then(|_| s.write_all(&chunk))
            .and_then(|_| s.write_all(b"\r\n"))
            .is_err()
        {
            refused = true;
            break;
        }
    }
    let resp = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(resp.status, 413, "write refused early: {refused}");
    assert!(backend.requests().is_empty(), "nothing reached the backend");
}

fn oversize_head_is_431(mode: Mode) {
    let gw = Gw::start(
        r#"{"version": 3, "max_header_bytes": 2048, "endpoints": [{"endpoint": "/x", "backend": [{"host": ["http://127.0.0.1:9"], "url_pattern": "/x"}]}]}"#,
        mode,
    );
    let mut s = gw.connect();
    write!(s, "GET /x HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(4000)).unwrap();
    let resp = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(resp.status, 431);
}

fn slowloris_is_closed(mode: Mode) {
    let gw = Gw::start(
        &config(r#"{"endpoint": "/x", "backend": [{"host": ["http://127.0.0.1:9"], "url_pattern": "/x"}]}"#),
        mode,
    );
    let mut s = gw.connect();
    let t = Instant::now();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n").unwrap();
    let mut rest = Vec::new();
    // Trickle a header byte every 100 ms: the head deadline (400 ms) still passes.
    for b in b"X-Slow: 1234567890" {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if t.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let _ = s.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // A connection that says nothing at all is closed by the same deadline, not the
    // (longer) idle timeout.
    let mut silent = gw.connect();
    let t = Instant::now();
    let mut nothing = Vec::new();
    let _ = silent.read_to_end(&mut nothing);
    assert!(nothing.is_empty());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

fn graceful_stop_finishes_in_flight(mode: Mode) {
    let slow = Backend::start(|_| Reply::Slow(Duration::from_millis(600), r#"{"done":true}"#.into()));
    let mut gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/slow", "backend": [{{"host": ["{}"], "url_pattern": "/x"}}]}}"#,
            slow.url()
        )),
        mode,
    );
    let addr = gw.addr;
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET /slow HTTP/1.1\r\nHost: gw\r\n\r\n").unwrap();
        read_response(&mut BufReader::new(s)).unwrap()
    });
    std::thread::sleep(Duration::from_millis(200));
    let stopping = gw.stop_async();
    let resp = client.join().unwrap();
    assert_eq!((resp.status, resp.text()), (200, r#"{"done":true}"#));
    stopping.join().unwrap();
    assert!(std::net::TcpStream::connect(addr).is_err(), "no longer accepting");
}

fn curl_sees_the_aggregate(mode: Mode) {
    let a = Backend::start(|_| Reply::Json(r#"{"a":"\u00e9"}"#.into()));
    let b = Backend::start(|_| Reply::Json(r#"{"b":[1,2]}"#.into()));
    let gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/c", "backend": [{{"host": ["{}"], "url_pattern": "/a"}}, {{"host": ["{}"], "url_pattern": "/b", "group": "g"}}]}}"#,
            a.url(),
            b.url()
        )),
        mode,
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "-D", "-", &format!("http://{}/c", gw.addr)])
        .output()
        .expect("curl is installed (CI installs it)");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\nx-krakend-completed: true\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n{\"a\":\"\\u00e9\",\"g\":{\"b\":[1,2]}}"), "{text}");
}

/// KrakenD substitutes a placeholder that follows a `/` even with more text after it in
/// the segment (lura's strict-REST pattern), as the KrakenD docs' `/schedule/{id}.rss`.
fn a_placeholder_may_start_a_segment_of_a_url_pattern(mode: Mode) {
    let feed = Backend::start(|_| Reply::Json(r#"{"ok":true}"#.into()));
    let gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/user/{{id}}/schedule", "backend": [
                {{"host": ["{}"], "url_pattern": "/user/schedule/{{id}}.rss"}}]}}"#,
            feed.url()
        )),
        mode,
    );
    let r = gw.get("/user/42/schedule");
    assert_eq!((r.status, r.text()), (200, r#"{"ok":true}"#));
    assert!(
        feed.requests()[0].head.starts_with("GET /user/schedule/42.rss HTTP/1.1\r\n"),
        "{}",
        feed.requests()[0].head
    );
}

/// gin's fixed-path redirect (on in KrakenD): the path in another case or with `..`
/// goes to the route's own spelling, the query kept; curl -L lands on the endpoint.
fn a_path_in_the_wrong_case_is_redirected(mode: Mode) {
    let backend = Backend::start(|_| Reply::Json(r#"{"ok":true}"#.into()));
    let gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/static", "backend": [{{"host": ["{}"], "url_pattern": "/s"}}]}}"#,
            backend.url()
        )),
        mode,
    );
    let r = gw.get("/StAtic?x=1");
    assert_eq!((r.status, r.header("location")), (301, Some("/static?x=1")));
    let r = gw.get("/a/../static");
    assert_eq!((r.status, r.header("location")), (301, Some("/static")));
    let out = std::process::Command::new("curl")
        .args(["-sSL", "--max-time", "10", &format!("http://{}/STATIC", gw.addr)])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), r#"{"ok":true}"#);
}

/// `negotiate` as KrakenD answers it: XML without a declaration, the lone key as the
/// root; YAML for text/plain with keys in order and numbers quoted; JSON otherwise.
fn negotiated_answers_as_krakend_writes_them(mode: Mode) {
    let backend = Backend::start(|_| Reply::Json(r#"{"user":{"-type":"admin","name":"Ada & co","id":7}}"#.into()));
    let gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/n", "output_encoding": "negotiate", "backend": [{{"host": ["{}"], "url_pattern": "/u"}}]}}"#,
            backend.url()
        )),
        mode,
    );
    let ask = |accept: &str| {
        let r = gw.request("GET", "/n", &[("Accept", accept)], b"");
        (r.status, r.header("content-type").map(str::to_string), r.text().to_string())
    };
    assert_eq!(
        ask("application/xml"),
        (
            200,
            Some("application/xml".into()),
            r#"<user type="admin"><id>7</id><name>Ada &amp; co</name></user>"#.into()
        )
    );
    assert_eq!(
        ask("text/plain"),
        (
            200,
            Some("application/yaml; charset=utf-8".into()),
            "user:\n  -type: admin\n  id: \"7\"\n  name: Ada & co\n".into()
        )
    );
    assert_eq!(
        ask("text/html, */*;q=0.8"),
        (
            200,
            Some("application/json; charset=utf-8".into()),
            r#"{"user":{"-type":"admin","name":"Ada & co","id":7}}"#.into()
        )
    );
}

/// lura calls a `no-op` backend of an aggregating endpoint, takes any status from it
/// and merges nothing of it.
fn a_no_op_backend_in_an_aggregating_endpoint_is_called_and_adds_nothing(mode: Mode) {
    let hook =
        Backend::start(|_| Reply::Raw(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown".to_vec()));
    let data = Backend::start(|_| Reply::Json(r#"{"a":1}"#.into()));
    let gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/agg", "backend": [
                {{"host": ["{}"], "url_pattern": "/hook", "encoding": "no-op"}},
                {{"host": ["{}"], "url_pattern": "/data"}}]}}"#,
            hook.url(),
            data.url()
        )),
        mode,
    );
    let r = gw.get("/agg");
    assert_eq!((r.status, r.header("x-krakend-completed"), r.text()), (200, Some("true"), r#"{"a":1}"#));
    assert_eq!(hook.requests().len(), 1);
    assert!(hook.requests()[0].head.starts_with("GET /hook HTTP/1.1\r\n"));
}

/// KrakenD's router options on the wire: `error_body` JSON for 404 and 405 (keys
/// sorted and HTML characters escaped, as gin's JSON writer does), `auto_options`,
/// `health_path`, and the parameter check lura runs by default.
fn router_options_as_krakend_reads_them(mode: Mode) {
    let backend = Backend::start(|_| Reply::Json(r#"{"ok":true}"#.into()));
    let gw = Gw::start(
        &format!(
            r#"{{"version": 3, "timeout": "1s", "extra_config": {{"router": {{"auto_options": true, "health_path": "/ping",
                "error_body": {{"404": {{"status": 404, "error": "<nope> & gone"}}, "405": {{"msg": "no"}}}}}}}},
                "endpoints": [{{"endpoint": "/u/{{id}}", "backend": [{{"host": ["{0}"], "url_pattern": "/u/{{id}}"}}]}},
                              {{"endpoint": "/u/{{id}}", "method": "DELETE", "backend": [{{"host": ["{0}"], "url_pattern": "/u/{{id}}"}}]}}]}}"#,
            backend.url()
        ),
        mode,
    );
    let r = gw.get("/nowhere");
    assert_eq!(
        (r.status, r.header("content-type"), r.header("x-krakend-completed"), r.text()),
        (
            404,
            Some("application/json; charset=utf-8"),
            Some("false"),
            r#"{"error":"\u003cnope\u003e \u0026 gone","status":404}"#
        )
    );
    let r = gw.request("PUT", "/u/1", &[], b"");
    assert_eq!((r.status, r.header("allow"), r.text()), (405, Some("GET, DELETE, OPTIONS"), r#"{"msg":"no"}"#));
    let r = gw.request("OPTIONS", "/u/1", &[], b"");
    assert_eq!((r.status, r.header("allow"), r.header("content-type"), r.text()), (200, Some("DELETE, GET"), None, ""));
    assert_eq!(gw.get("/ping").status, 200);
    assert_eq!(gw.get("/__health").status, 404);
    let r = gw.get("/u/%25252F");
    assert_eq!((r.status, r.text()), (400, "error: encoded url params"));
    assert_eq!(gw.get("/u/a%20b").text(), r#"{"ok":true}"#);
    assert_eq!(backend.requests().len(), 1);
    assert!(backend.requests()[0].head.starts_with("GET /u/a%20b HTTP/1.1\r\n"));
}
