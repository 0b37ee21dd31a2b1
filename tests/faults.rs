//! Fault injection through real sockets, on every driver: misbehaving clients and
//! backends, and a stop under load. Each test here was a finding of a fault-and-abuse
//! run (issue 12) and fails on the code before its fix.

mod support;

use std::io::{BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{Backend, Gw, Mode, Reply, read_response};

every_driver!(
    a_stop_under_load_loses_no_request,
    a_bad_no_op_body_is_a_502_when_nothing_went_out,
    a_trickling_no_op_body_is_cut_at_the_endpoint_timeout,
    a_no_op_body_cut_by_the_backend_ends_the_connection,
    no_redirect_to_another_origin,
    an_invalid_host_is_refused_and_never_forwarded,
);

fn config(endpoints: &str) -> String {
    format!(r#"{{"version": 3, "timeout": "2s", "read_header_timeout": "1s", "endpoints": [{endpoints}]}}"#)
}

/// What one looping keep-alive client saw.
#[derive(Debug, Default)]
struct Tally {
    answered: usize,
    /// A request written, then EOF or a reset instead of its answer.
    lost: usize,
    /// The connection ended without an answer that said `Connection: close` first.
    unannounced: usize,
}

fn a_stop_under_load_loses_no_request(mode: Mode) {
    // 16 clients loop requests on kept-alive connections; the server stops while they
    // run. Every request written must be answered, the last answer on each connection
    // must say `Connection: close`, and no client may see EOF or a reset instead.
    let backend = Backend::start(|_| Reply::Json(r#"{"ok":true}"#.into()));
    let mut gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/a", "backend": [{{"host": ["{}"], "url_pattern": "/a"}}]}}"#,
            backend.url()
        )),
        mode,
    );
    let addr = gw.addr;
    let started = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let started = started.clone();
            std::thread::spawn(move || {
                let mut tally = Tally::default();
                let s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                started.fetch_add(1, Ordering::SeqCst);
                // Bounded: at most 20,000 requests per client, or the stop ends it.
                for _ in 0..20_000 {
                    if w.write_all(b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\n").is_err() {
                        tally.unannounced += 1;
                        break;
                    }
                    match read_response(&mut r) {
                        Some(resp) => {
                            assert_eq!((resp.status, resp.text()), (200, r#"{"ok":true}"#));
                            tally.answered += 1;
                            if resp.header("connection") == Some("close") {
                                return tally;
                            }
                        }
                        None => {
                            tally.lost += 1;
                            tally.unannounced += 1;
                            return tally;
                        }
                    }
                }
                tally
            })
        })
        .collect();
    while started.load(Ordering::SeqCst) < 16 {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stopping = gw.stop_async();
    let tallies: Vec<Tally> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    stopping.join().unwrap();
    let answered: usize = tallies.iter().map(|t| t.answered).sum();
    assert!(answered > 16, "the clients ran before the stop: {tallies:?}");
    assert_eq!(tallies.iter().map(|t| t.lost).sum::<usize>(), 0, "{tallies:?}");
    assert_eq!(tallies.iter().map(|t| t.unannounced).sum::<usize>(), 0, "{tallies:?}");
    assert!(std::net::TcpStream::connect(addr).is_err(), "no longer accepting");
}

fn no_op(backend: &Backend, timeout: &str) -> String {
    format!(
        r#"{{"version": 3, "timeout": "{timeout}", "endpoints": [{{"endpoint": "/raw", "output_encoding": "no-op",
            "backend": [{{"host": ["{}"], "url_pattern": "/d", "encoding": "no-op"}}]}}]}}"#,
        backend.url()
    )
}

const CHUNKED_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";

/// Everything the gateway sends on one connection for `GET /raw`, until it closes.
fn raw_exchange(gw: &Gw) -> (String, Duration) {
    use std::io::Read;
    let started = Instant::now();
    let mut s = gw.connect();
    s.write_all(b"GET /raw HTTP/1.1\r\nHost: gw\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    (String::from_utf8_lossy(&got).into_owned(), started.elapsed())
}

fn a_bad_no_op_body_is_a_502_when_nothing_went_out(mode: Mode) {
    // Was: `curl: (52) Empty reply` (then: the head and a cut body). The whole answer
    // came in one write, so nothing had reached the client: a 502 is due.
    let mut bad = CHUNKED_HEAD.to_vec();
    bad.extend_from_slice(b"zz\r\nhello\r\n0\r\n\r\n");
    let backend = Backend::start(move |_| Reply::Raw(bad.clone()));
    let gw = Gw::start(&no_op(&backend, "2s"), mode);
    let (got, _) = raw_exchange(&gw);
    assert_eq!(
        got,
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\nx-krakend-completed: false\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
}

fn a_trickling_no_op_body_is_cut_at_the_endpoint_timeout(mode: Mode) {
    // A byte every 100 ms for 6 s under a 500 ms endpoint timeout: was held for the
    // whole 6 s (each read had the timeout, not the body). Cut at the timeout now.
    let mut pieces = vec![(Duration::ZERO, CHUNKED_HEAD.to_vec())];
    pieces.extend((0..60).map(|_| (Duration::from_millis(100), b"1\r\nx\r\n".to_vec())));
    let backend = Backend::start(move |_| Reply::Pieces(pieces.clone()));
    let gw = Gw::start(&no_op(&backend, "500ms"), mode);
    let (got, took) = raw_exchange(&gw);
    assert!(
        got.starts_with(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-krakend-completed: false\r\ntransfer-encoding: chunked\r\n\r\n"
        ),
        "{got}"
    );
    assert!(!got.ends_with("0\r\n\r\n"), "cut, not ended: {got}");
    let pieces = got.matches("1\r\nx\r\n").count();
    assert!((2..=6).contains(&pieces), "about 500 ms worth: {pieces} in {got:?}");
    assert!(took < Duration::from_secs(3), "the connection ended at the timeout, not after {took:?}");
}

fn a_no_op_body_cut_by_the_backend_ends_the_connection(mode: Mode) {
    // 10 of 100 announced bytes, then the backend closes: the client sees the short
    // body and the connection's end (never a hang, never a keep-alive reuse).
    let pieces = vec![
        (Duration::ZERO, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec()),
        (Duration::from_millis(100), Vec::new()),
    ];
    let backend = Backend::start(move |_| Reply::Pieces(pieces.clone()));
    let gw = Gw::start(&no_op(&backend, "2s"), mode);
    let (got, took) = raw_exchange(&gw);
    assert_eq!(got, "HTTP/1.1 200 OK\r\nx-krakend-completed: false\r\ncontent-length: 100\r\n\r\n0123456789");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

fn no_redirect_to_another_origin(mode: Mode) {
    let backend = Backend::start(|_| Reply::Json("{}".into()));
    let gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/{{x}}", "backend": [{{"host": ["{}"], "url_pattern": "/"}}]}}"#,
            backend.url()
        )),
        mode,
    );
    let r = gw.get("/\\evil.example/");
    assert_eq!((r.status, r.header("location"), r.text()), (404, None, "404 page not found"));
    // `//evil.example/` cleans to a path on this origin (gin's fixed-path redirect):
    // the Location is that path, never `//host`.
    let r = gw.get("//evil.example/");
    assert_eq!((r.status, r.header("location")), (301, Some("/evil.example")));
    let r = gw.get("/fine/");
    assert_eq!((r.status, r.header("location")), (301, Some("/fine")));
}

fn an_invalid_host_is_refused_and_never_forwarded(mode: Mode) {
    // Was accepted and sent to the backend as X-Forwarded-Host.
    use std::io::Read;
    let backend = Backend::start(|_| Reply::Json("{}".into()));
    let gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/a", "backend": [{{"host": ["{}"], "url_pattern": "/a"}}]}}"#,
            backend.url()
        )),
        mode,
    );
    for host in ["evil.example/secret?x", "", "a b", "[::1"] {
        let mut s = gw.connect();
        write!(s, "GET /a HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        let mut got = String::new();
        let _ = s.read_to_string(&mut got);
        assert_eq!(
            got,
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 19\r\nconnection: close\r\n\r\ninvalid Host header",
            "{host:?}"
        );
    }
    assert!(backend.requests().is_empty(), "nothing reached the backend");
    // A valid one still goes through, forwarded as it came.
    let mut s = gw.connect();
    write!(s, "GET /a HTTP/1.1\r\nHost: api.example:8443\r\nConnection: close\r\n\r\n").unwrap();
    let r = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(r.status, 200);
    let seen = backend.requests();
    assert!(seen[0].head.contains("\r\nx-forwarded-host: api.example:8443\r\n"), "{}", seen[0].head);
}
