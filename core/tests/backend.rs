//! The backend connection policy every driver shares: the idle pool, the DNS cache, the
//! retry rule, reading a response (`Fetch`), and the client connection deadlines.
//! Virtual time throughout.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use sluice_core::call::backend::{Answer, Failure, Fetch, IDLE_EXPIRY, IdlePool, Progress, may_retry, pool_key};
use sluice_core::config::{self, HostAddr};
use sluice_core::conn::deadline::{HeadWait, body_deadline};
use sluice_core::http1::{Framing, Limits};

fn host(raw: &str) -> HostAddr {
    HostAddr::parse(raw).unwrap()
}

#[test]
fn idle_pool_reuses_newest_first_and_drops_expired() {
    let t0 = Instant::now();
    let key = pool_key(&host("http://10.0.0.1:8080"), None, None);
    assert_eq!(key, "http://10.0.0.1:8080");
    let mut pool: IdlePool<&str> = IdlePool::new(2);
    assert_eq!(pool.put(&key, "old", t0), Vec::<&str>::new());
    assert_eq!(pool.put(&key, "new", t0 + Duration::from_secs(10)), Vec::<&str>::new());
    // Over max_idle_connections_per_host: handed back to be closed.
    assert_eq!(pool.put(&key, "third", t0 + Duration::from_secs(11)), ["third"]);
    assert_eq!(pool.len(), 2);
    assert_eq!(pool.take("http://other:80", t0), None);
    assert_eq!(pool.take(&key, t0 + Duration::from_secs(20)), Some("new"));
    // "old" is past the expiry by now: dropped, not handed out.
    assert_eq!(pool.take(&key, t0 + IDLE_EXPIRY + Duration::from_secs(1)), None);
    assert!(pool.is_empty());
    // Just inside the expiry it is reused.
    pool.put(&key, "fresh", t0);
    assert_eq!(pool.take(&key, t0 + IDLE_EXPIRY - Duration::from_millis(1)), Some("fresh"));
    // A pool of zero keeps nothing.
    let mut none: IdlePool<u8> = IdlePool::new(0);
    assert_eq!(none.put(&key, 1, t0), [1]);
    // Expired connections do not count toward the limit: handed back, the new one kept.
    let mut pool: IdlePool<&str> = IdlePool::new(1);
    assert!(pool.put(&key, "stale", t0).is_empty());
    assert_eq!(pool.put(&key, "fresh", t0 + IDLE_EXPIRY + Duration::from_secs(1)), ["stale"]);
    assert_eq!(pool.take(&key, t0 + IDLE_EXPIRY + Duration::from_secs(2)), Some("fresh"));
}

/// A sweep, on a put at most every 10 s, hands back the expired connections under every
/// key (for the caller to close outside its lock) and forgets keys left with none: the
/// forward proxy pools by destination, and without it every destination ever reached
/// would keep its key and its last sockets for good.
#[test]
fn idle_pool_sweeps_expired_connections_and_empty_keys() {
    use std::rc::Rc;
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let conn = Rc::new(());
    let mut pool: IdlePool<Rc<()>> = IdlePool::new(4);
    for i in 0..100 {
        assert!(pool.put(&format!("forward 10.0.0.{i}:80"), conn.clone(), t0).is_empty());
    }
    assert_eq!((pool.keys(), pool.len(), Rc::strong_count(&conn)), (100, 100, 101));
    // Taken and not put back: its key stays, empty, until a sweep.
    drop(pool.take("forward 10.0.0.0:80", t0));
    // Within 10 s of the first put: no sweep.
    assert!(pool.put("http://backend:80", conn.clone(), at(5)).is_empty());
    assert_eq!((pool.keys(), pool.len(), Rc::strong_count(&conn)), (101, 100, 101));
    // Past the expiry and the sweep interval: the 99 expired connections handed back,
    // the 100 keys left empty forgotten; the backend's connection (46 s idle) stays.
    let closed = pool.put("http://backend:80", conn.clone(), at(51));
    assert_eq!((closed.len(), pool.keys(), pool.len()), (99, 1, 2));
    drop(closed);
    assert_eq!(Rc::strong_count(&conn), 3);
    // Within 10 s of that sweep: no sweep, though the first backend connection expires.
    assert!(pool.put("http://other:80", conn.clone(), at(58)).is_empty());
    assert_eq!((pool.keys(), pool.len()), (2, 3));
    // A clock that went back (an earlier instant than the last sweep): no sweep, no panic.
    assert!(pool.put("http://other:80", conn.clone(), at(40)).is_empty());
    assert_eq!((pool.keys(), pool.len()), (2, 4));
    // 10 s after the last sweep: the backend's first connection (put at 5 s) goes.
    assert_eq!(pool.put("http://third:80", conn.clone(), at(61)).len(), 1);
    assert_eq!((pool.keys(), pool.len(), Rc::strong_count(&conn)), (3, 4, 5));
}

#[test]
fn only_stale_idempotent_calls_with_their_body_at_hand_are_retried() {
    let stale = Failure { reason: "closed".into(), stale: true };
    let fresh = Failure::new("invalid response: bad status");
    for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE, Method::PUT, Method::DELETE] {
        assert!(may_retry(&m, &stale, false), "{m}");
        assert!(!may_retry(&m, &stale, true), "{m} with a streamed body");
        assert!(!may_retry(&m, &fresh, false), "{m} not stale");
    }
    for m in [Method::POST, Method::PATCH, Method::CONNECT] {
        assert!(!may_retry(&m, &stale, false), "{m}");
    }
}

fn done(p: Progress) -> Answer {
    match p {
        Progress::Done(a) => a,
        other => panic!("not done: {other:?}"),
    }
}

#[test]
fn fetch_reads_a_whole_response_fed_in_pieces() {
    let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
    for split in 0..wire.len() {
        let mut f = Fetch::new(Method::POST, Limits::default(), false);
        let (a, b) = wire.split_at(split);
        let (n, p) = f.handle_input(a).unwrap();
        let mut rest = a[n..].to_vec();
        let progress = if matches!(p, Progress::Done(_)) {
            p
        } else {
            rest.extend_from_slice(b);
            let (m, p) = f.handle_input(&rest).unwrap();
            assert_eq!(m, rest.len(), "split at {split}");
            p
        };
        let answer = done(progress);
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(answer.headers.get("content-type"), Some(&b"application/json"[..]));
        assert_eq!(answer.body, b"{\"a\":1}");
        assert!(f.reusable());
    }
}

/// A decoding call's answer: one with a `Content-Encoding` is inflated and its coding's
/// fields go (the fields become a map); one without keeps its fields as parsed, each
/// read the same.
#[test]
fn fetch_inflates_a_coded_body_and_keeps_the_fields_of_one_that_is_not() {
    use sluice_core::http1::HeaderFields;
    use std::io::Write;
    let text = br#"{"a":"hello hello hello hello"}"#;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text).unwrap();
    let coded = gz.finish().unwrap();
    let mut wire = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nETag: \"x\"\r\n\r\n",
        coded.len()
    )
    .into_bytes();
    wire.extend_from_slice(&coded);
    let mut f = Fetch::new(Method::GET, Limits::default(), false).inflating(true);
    let (n, p) = f.handle_input(&wire).unwrap();
    assert_eq!(n, wire.len());
    let answer = done(p);
    assert_eq!(answer.body, text);
    let HeaderFields::Map(map) = &answer.headers else { panic!("an inflated answer's fields are a map") };
    assert_eq!(map.len(), 2, "{map:?}");
    assert_eq!(map["content-type"], "application/json");
    assert_eq!(map["etag"], "\"x\"");

    let plain =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\nETag: \"y\"\r\n\r\n{\"a\":1}";
    let mut f = Fetch::new(Method::GET, Limits::default(), false).inflating(true);
    let answer = done(f.handle_input(plain).unwrap().1);
    assert_eq!(answer.body, b"{\"a\":1}");
    assert!(matches!(answer.headers, HeaderFields::Head(_)), "kept as parsed");
    assert_eq!(answer.headers.get("etag"), Some(&b"\"y\""[..]));
    assert_eq!(answer.headers.get("Content-Length"), Some(&b"7"[..]));

    // A coding it does not undo fails the call, naming it.
    let br = b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 3\r\n\r\nabc";
    let mut f = Fetch::new(Method::GET, Limits::default(), false).inflating(true);
    let why = f.handle_input(br).unwrap_err().reason;
    assert_eq!(why, "the backend answered with Content-Encoding: br, which Sluice does not decode");
}

#[test]
fn fetch_close_delimited_body_ends_at_eof_and_is_not_reused() {
    let mut f = Fetch::new(Method::GET, Limits::default(), true);
    let (n, p) = f.handle_input(b"HTTP/1.1 200 OK\r\n\r\nhello").unwrap();
    assert_eq!((n, p), (24, Progress::NeedMore));
    let answer = done(f.handle_eof().unwrap());
    assert_eq!(answer.body, b"hello");
    assert!(!f.reusable());
}

#[test]
fn fetch_failures_say_whether_the_connection_was_stale() {
    // Reused, nothing came back: stale (a retry may mend it).
    let mut f = Fetch::new(Method::GET, Limits::default(), true);
    let e = f.handle_eof().unwrap_err();
    assert_eq!(e, Failure { reason: "the backend closed the connection before answering".into(), stale: true });
    assert!(f.read_failed("connection reset").stale);
    assert_eq!(f.write_failed("broken pipe").reason, "cannot send the request: broken pipe");
    assert!(f.write_failed("broken pipe").stale);
    // Reused, half a head came back: the backend did see the request.
    let mut f = Fetch::new(Method::GET, Limits::default(), true);
    f.handle_input(b"HTTP/1.1 200").unwrap();
    assert!(!f.handle_eof().unwrap_err().stale);
    assert!(!f.read_failed("reset").stale);
    // A fresh connection is never stale.
    let mut f = Fetch::new(Method::GET, Limits::default(), false);
    assert!(!f.handle_eof().unwrap_err().stale);
    assert!(!f.write_failed("broken pipe").stale);
    // Cut off mid-body.
    let mut f = Fetch::new(Method::GET, Limits::default(), true);
    f.handle_input(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").unwrap();
    let e = f.handle_eof().unwrap_err();
    assert_eq!(e, Failure::new("invalid response: connection closed before the body ended"));
    // Garbage.
    let mut f = Fetch::new(Method::GET, Limits::default(), true);
    let e = f.handle_input(b"SSH-2.0-OpenSSH\r\n\r\n").unwrap_err();
    assert!(e.reason.starts_with("invalid response: "), "{e:?}");
    assert!(!e.stale);
    // Over the body limit.
    let limits = Limits { max_body_bytes: 4, ..Limits::default() };
    let mut f = Fetch::new(Method::GET, limits, false);
    let e = f.handle_input(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n");
    assert_eq!(e.unwrap_err(), Failure::new("response body too large"));
    // A protocol switch is no answer for an aggregating call.
    let mut f = Fetch::new(Method::GET, Limits::default(), false);
    let e = f.handle_input(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n").unwrap_err();
    assert_eq!(e, Failure::new("invalid response: the backend switched protocols"));
}

#[test]
fn fetch_streaming_stops_at_the_head_without_a_body_limit() {
    let limits = Limits { max_body_bytes: 4, ..Limits::default() };
    let mut f = Fetch::streaming(Method::GET, limits, false);
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-A: 1\r\n\r\nfirst bytes";
    let (n, p) = f.handle_input(wire).unwrap();
    assert_eq!(n, wire.len() - b"first bytes".len());
    let Progress::Head(head) = p else { panic!("{p:?}") };
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.head.get("x-a"), Some(&b"1"[..]));
    assert_eq!(head.framing, Framing::Length(100));
    // The codec goes on with the body, past the buffered limit.
    let conn = f.codec();
    let (m, event) = conn.handle_input(b"first bytes").unwrap();
    assert_eq!(m, 11);
    assert_eq!(event, sluice_core::http1::ClientEvent::Data(b"first bytes"));
}

fn config(extra: &str) -> config::Config {
    config::parse(&format!(r#"{{"version": 3 {extra}, "endpoints": []}}"#)).unwrap().config
}

#[test]
fn head_wait_deadlines() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let cfg = config(r#", "read_header_timeout": "2s", "idle_timeout": "30s""#);
    // First request: the header timeout runs from the accept, and an idle expiry is silent.
    let mut w = HeadWait::new(true, t0);
    assert!(w.is_idle());
    assert_eq!(w.deadline(&cfg), Some(t0 + s(2)));
    assert_eq!(w.expired(), None);
    // Once bytes come, from the first byte, and the expiry is a 408.
    w.bytes_arrived(t0 + s(1));
    w.bytes_arrived(t0 + s(2));
    assert!(!w.is_idle());
    assert_eq!(w.deadline(&cfg), Some(t0 + s(3)));
    assert_eq!(w.expired(), Some((StatusCode::REQUEST_TIMEOUT, "request header timeout")));
    // Between keep-alive requests: the idle timeout.
    let w = HeadWait::new(false, t0);
    assert_eq!(w.deadline(&cfg), Some(t0 + s(30)));
    // Without a header timeout, the first request waits the idle timeout too, and a
    // head under way has no limit.
    let cfg = config(r#", "read_header_timeout": "0s", "idle_timeout": "30s""#);
    let mut w = HeadWait::new(true, t0);
    assert_eq!(w.deadline(&cfg), Some(t0 + s(30)));
    w.bytes_arrived(t0);
    assert_eq!(w.deadline(&cfg), None);
    let cfg = config(r#", "read_timeout": "5s""#);
    assert_eq!(body_deadline(&cfg, t0), Some(t0 + s(5)));
    let cfg = config(r#", "read_timeout": "0s""#);
    assert_eq!(body_deadline(&cfg, t0), None);
}

fn server_after(wire: &[u8]) -> (sluice_core::http1::ServerConn, usize) {
    use sluice_core::http1::{ServerConn, ServerEvent};
    let mut server = ServerConn::new(Limits::default());
    let Ok((n, ServerEvent::Request(_))) = server.handle_input(wire) else { panic!("a request head") };
    (server, n)
}

#[test]
fn request_bodies_are_read_whole_or_relayed_reframed() {
    use sluice_core::http1::BodyLength;
    // Chunked, fed in two pieces: read whole.
    let wire = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    let (mut server, head) = server_after(wire);
    let mut body = Vec::new();
    let (n, done) = server.read_body_into(&wire[head..head + 8], &mut body).unwrap();
    assert!(!done);
    let mut rest = wire[head + n..].to_vec();
    let (m, done) = server.read_body_into(&rest, &mut body).unwrap();
    assert!(done);
    assert_eq!((m, body.as_slice()), (rest.len(), &b"abcde"[..]));
    // No body: complete at once, with no input at all.
    let (mut server, _) = server_after(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(server.read_body_into(&[], &mut Vec::new()).unwrap(), (0, true));
    // Relayed: a chunked body is re-chunked (as it is read), a sized one goes as it is.
    let (mut server, head) = server_after(wire);
    let mut out = Vec::new();
    let (n, done) = server.relay_body(&wire[head..head + 8], BodyLength::Unknown, &mut out).unwrap();
    assert!(!done);
    rest = wire[head + n..].to_vec();
    assert!(server.relay_body(&rest, BodyLength::Unknown, &mut out).unwrap().1);
    assert_eq!(out, b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
    let wire = b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    let (mut server, head) = server_after(wire);
    let mut out = Vec::new();
    assert_eq!(server.relay_body(&wire[head..], BodyLength::Known(5), &mut out).unwrap(), (5, true));
    assert_eq!(out, b"hello");
    // A bad chunk size is the codec's error, with its status.
    let wire = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    let (mut server, head) = server_after(wire);
    let e = server.read_body_into(&wire[head..], &mut Vec::new()).unwrap_err();
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn pump_moves_a_streamed_body_and_refuses_a_cut_one() {
    use sluice_core::call::backend::{Pumped, pump_body};
    use sluice_core::http1::{BodyLength, ResponseHead};
    let start = |framing_head: &str| {
        let (mut server, _) = server_after(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        server.read_body_into(&[], &mut Vec::new()).unwrap();
        let headers = http::HeaderMap::new();
        let head = ResponseHead { status: StatusCode::OK, headers: &headers, body: BodyLength::Unknown, close: false };
        let mut out = Vec::new();
        server.write_response_head(&head, &mut out).unwrap();
        let mut f = Fetch::streaming(Method::GET, Limits::default(), false);
        let wire = format!("HTTP/1.1 200 OK\r\n{framing_head}\r\n");
        let (_, p) = f.handle_input(wire.as_bytes()).unwrap();
        assert!(matches!(p, Progress::Head(_)));
        (server, f)
    };
    // A sized body in two reads, the output flushed when it reaches flush_at.
    let (mut server, mut client) = start("Content-Length: 10\r\n");
    let mut out = Vec::new();
    let (n, moved, p) = pump_body(client.codec(), b"0123456", false, &mut server, &mut out, 4).unwrap();
    assert_eq!((n, moved, p), (7, 7, Pumped::Full));
    assert_eq!(out, b"7\r\n0123456\r\n");
    out.clear();
    let (n, moved, p) = pump_body(client.codec(), b"", false, &mut server, &mut out, 4).unwrap();
    assert_eq!((n, moved, p), (0, 0, Pumped::NeedMore));
    let (n, moved, p) = pump_body(client.codec(), b"789", false, &mut server, &mut out, 1024).unwrap();
    assert_eq!((n, moved, p), (3, 3, Pumped::End));
    assert_eq!(out, b"3\r\n789\r\n");
    // Close-delimited: the backend's close ends it.
    let (mut server, mut client) = start("Connection: close\r\n");
    let mut out = Vec::new();
    assert_eq!(
        pump_body(client.codec(), b"abc", false, &mut server, &mut out, 1024).unwrap(),
        (3, 3, Pumped::NeedMore)
    );
    assert_eq!(pump_body(client.codec(), b"", true, &mut server, &mut out, 1024).unwrap(), (0, 0, Pumped::End));
    // Cut short: an error, never a response that looks complete.
    let (mut server, mut client) = start("Content-Length: 10\r\n");
    let mut out = Vec::new();
    pump_body(client.codec(), b"0123", false, &mut server, &mut out, 1024).unwrap();
    assert!(pump_body(client.codec(), b"", true, &mut server, &mut out, 1024).is_err());
    let (mut server, mut client) = start("Transfer-Encoding: chunked\r\n");
    assert!(pump_body(client.codec(), b"5\r\nab", true, &mut server, &mut Vec::new(), 1024).is_err());
}
