//! HTTP/1.1 codec: every framing rule with exact inputs and expected events or errors,
//! and a property test that feeding input whole or in random splits gives the same events.

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use proptest::prelude::*;
use sluice_core::http1::{
    BodyLength, ClientConn, ClientEvent, Error, Limits, Next, RequestTarget, ResponseHead, ServerConn, ServerEvent,
    write_request,
};

/// An owned, comparable event. Adjacent `Data` are merged so splits do not matter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Head(String),
    Data(Vec<u8>),
    End(Vec<String>),
    Switched,
    Err(Error),
}

fn push(evs: &mut Vec<Ev>, ev: Ev) {
    if let (Some(Ev::Data(prev)), Ev::Data(more)) = (evs.last_mut(), &ev) {
        prev.extend_from_slice(more);
        return;
    }
    evs.push(ev);
}

fn trailers(t: Option<Box<HeaderMap>>) -> Vec<String> {
    t.map(|m| m.iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?"))).collect()).unwrap_or_default()
}

/// `input` cut at those of `cuts` inside it, in order: the reads it arrives in.
fn pieces<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c > 0 && c < input.len()).collect();
    bounds.sort_unstable();
    bounds.dedup();
    bounds.push(input.len());
    let mut start = 0;
    bounds
        .into_iter()
        .map(|end| {
            let piece = &input[start..end];
            start = end;
            piece
        })
        .collect()
}

/// Feeds `input` to a server connection in pieces cut at `cuts`; answers every request
/// with an empty 200 when it pauses. Returns the events and the responses written.
fn serve_with(input: &[u8], cuts: &[usize], limits: Limits) -> (Vec<Ev>, Vec<u8>) {
    let mut conn = ServerConn::new(limits);
    let mut evs = Vec::new();
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for piece in pieces(input, cuts) {
        buf.extend_from_slice(piece);
        loop {
            match conn.handle_input(&buf) {
                Err(e) => {
                    evs.push(Ev::Err(e));
                    return (evs, out);
                }
                Ok((n, ev)) => {
                    let stop = match ev {
                        ServerEvent::Request(r) => {
                            let headers: Vec<String> =
                                r.head.iter().map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v))).collect();
                            push(
                                &mut evs,
                                Ev::Head(format!(
                                    "{} {} {:?} {:?} ka={} [{}]",
                                    r.method,
                                    r.target(),
                                    r.version,
                                    r.framing,
                                    r.keep_alive,
                                    headers.join(", ")
                                )),
                            );
                            false
                        }
                        ServerEvent::Data(d) => {
                            push(&mut evs, Ev::Data(d.to_vec()));
                            false
                        }
                        ServerEvent::End(t) => {
                            push(&mut evs, Ev::End(trailers(t)));
                            false
                        }
                        ServerEvent::NeedMore => true,
                        ServerEvent::Switched => {
                            push(&mut evs, Ev::Switched);
                            true
                        }
                        ServerEvent::Paused => {
                            let headers = HeaderMap::new();
                            let head = ResponseHead {
                                status: StatusCode::OK,
                                headers: &headers,
                                body: BodyLength::Known(0),
                                close: false,
                            };
                            conn.write_response_head(&head, &mut out).unwrap_or_else(|e| panic!("{e}"));
                            match conn.finish_response(&mut out) {
                                Ok(Next::KeepAlive) => false,
                                Ok(_) => return (evs, out),
                                Err(e) => panic!("{e}"),
                            }
                        }
                    };
                    buf.drain(..n);
                    if stop {
                        break;
                    }
                }
            }
        }
    }
    (evs, out)
}

fn serve(input: &[u8]) -> Vec<Ev> {
    serve_with(input, &[], Limits::default()).0
}

fn head(s: &str) -> Ev {
    Ev::Head(s.to_string())
}

fn data(s: &str) -> Ev {
    Ev::Data(s.as_bytes().to_vec())
}

fn end() -> Ev {
    Ev::End(Vec::new())
}

fn err(input: &[u8]) -> Error {
    match serve(input).pop() {
        Some(Ev::Err(e)) => e,
        other => panic!("expected an error for {:?}, got {other:?}", String::from_utf8_lossy(input)),
    }
}

#[test]
fn host_values_that_are_authorities_pass() {
    for host in
        ["h", "api.example.com", "api.example.com:8080", "127.0.0.1:80", "[::1]", "[::1]:8443", "h:", "a-b_c~d%41"]
    {
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert_eq!(serve(req.as_bytes()).len(), 2, "{host}");
    }
}

#[test]
fn request_target_forms() {
    assert_eq!(
        serve(b"GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"),
        [head("GET /a/b?x=1 HTTP/1.1 None ka=true [Host=h]"), end()]
    );
    assert_eq!(
        serve(b"GET http://example.com/x HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        [head("GET http://example.com/x HTTP/1.1 None ka=true [Host=example.com]"), end()]
    );
    assert_eq!(
        serve(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")[..2],
        [head("CONNECT example.com:443 HTTP/1.1 None ka=true [Host=example.com:443]"), end()]
    );
    assert_eq!(
        serve(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"),
        [head("OPTIONS * HTTP/1.1 None ka=true [Host=h]"), end()]
    );
    assert_eq!(err(b"GET * HTTP/1.1\r\nHost: h\r\n\r\n"), Error::Malformed("\"*\" is only a target for OPTIONS"));
    assert_eq!(err(b"CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n"), Error::Malformed("CONNECT needs a host:port target"));
    assert_eq!(err(b"CONNECT h HTTP/1.1\r\nHost: h\r\n\r\n"), Error::Malformed("CONNECT needs a host:port target"));
    assert_eq!(err(b"GET ftp://x/ HTTP/1.1\r\nHost: h\r\n\r\n"), Error::Malformed("invalid request target"));
}

#[test]
fn content_length_and_chunked_bodies() {
    assert_eq!(
        serve(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"),
        [head("POST /p HTTP/1.1 Length(5) ka=true [Host=h, Content-Length=5]"), data("hello"), end()]
    );
    assert_eq!(
        serve(b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1;x\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        [head("POST /p HTTP/1.1 Chunked ka=true [Host=h, Transfer-Encoding=chunked]"), data("hello world"), end()]
    );
    // Trailers come with the end.
    assert_eq!(
        serve(b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\nX-Sum: 42\r\nX-B: b\r\n\r\n"),
        [
            head("POST /p HTTP/1.1 Chunked ka=true [Host=h, Transfer-Encoding=chunked]"),
            data("0123456789"),
            Ev::End(vec!["x-sum: 42".into(), "x-b: b".into()])
        ]
    );
    // Identical Content-Length values are one value.
    assert_eq!(
        serve(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok")[1..],
        [data("ok"), end()]
    );
    // Content-Length: 0 and no framing headers both mean no body.
    assert_eq!(serve(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n").len(), 2);
}

#[test]
fn smuggling_rules() {
    let cases: &[(&[u8], Error)] = &[
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            Error::Malformed("both Transfer-Encoding and Content-Length"),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            Error::Malformed("differing Content-Length values"),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 4\r\n\r\n",
            Error::Malformed("differing Content-Length values"),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3, 4\r\n\r\n",
            Error::Malformed("differing Content-Length values"),
        ),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3,\r\n\r\n", Error::Malformed("invalid Content-Length")),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\n", Error::Malformed("invalid Content-Length")),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n", Error::Malformed("invalid Content-Length")),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n",
            Error::Malformed("invalid Content-Length"),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            Error::Malformed("Transfer-Encoding must end in chunked"),
        ),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Error::UnsupportedTransferEncoding),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            Error::Malformed("chunked applied more than once"),
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            Error::Malformed("Transfer-Encoding in an HTTP/1.0 request"),
        ),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n", Error::Malformed("invalid header name")),
        (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", Error::Malformed("invalid header name")),
        (b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", Error::Malformed("invalid header value")),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX\r: y\r\n\r\n", Error::Malformed("invalid header name")),
        (b"GET / HTTP/1.1\r\n\r\n", Error::Malformed("missing Host header")),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Error::Malformed("more than one Host header")),
        (b"GET / HTTP/1.1\r\nHost: evil.example/secret?x\r\n\r\n", Error::Malformed("invalid Host header")),
        (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", Error::Malformed("invalid Host header")),
        (b"GET / HTTP/1.1\r\nHost:  \r\n\r\n", Error::Malformed("invalid Host header")),
        (b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n", Error::Malformed("invalid Host header")),
        (b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", Error::Malformed("invalid Host header")),
        (b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", Error::Malformed("invalid Host header")),
        (b"GET / HTTP/1.1\r\nHost: h:8x\r\n\r\n", Error::Malformed("invalid Host header")),
        (b"GET / HTTP/1.1\r\nHost: h:1:2\r\n\r\n", Error::Malformed("invalid Host header")),
        (b"GET / HTTP/1.1\r\nHost: ::1\r\n\r\n", Error::Malformed("invalid Host header")),
        (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", Error::Malformed("invalid Host header")),
        (b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", Error::Malformed("invalid Host header")),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", Error::UnsupportedVersion),
        (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", Error::Malformed("invalid request line")),
        (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", Error::Malformed("invalid request line")),
    ];
    for (input, expected) in cases {
        assert_eq!(err(input), *expected, "{:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn chunk_framing_errors() {
    let chunked = |body: &str| {
        let mut v = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        v.extend_from_slice(body.as_bytes());
        err(&v)
    };
    assert_eq!(chunked("zz\r\n"), Error::Malformed("invalid chunk size"));
    assert_eq!(chunked("-1\r\n"), Error::Malformed("invalid chunk size"));
    assert_eq!(chunked("0x5\r\n"), Error::Malformed("invalid chunk size"));
    assert_eq!(chunked(" 5\r\n"), Error::Malformed("invalid chunk size"));
    assert_eq!(chunked("5 x\r\n"), Error::Malformed("invalid chunk size"));
    assert_eq!(chunked("10000000000000000\r\n"), Error::Malformed("chunk size overflows"));
    assert_eq!(chunked("5\nhello\r\n"), Error::Malformed("bare LF in chunked framing"));
    assert_eq!(chunked("5;a\rb\r\nhello\r\n"), Error::Malformed("invalid character in chunk extension"));
    assert_eq!(chunked("5\r\nhelloXX"), Error::Malformed("chunk data must end with CRLF"));
    assert_eq!(chunked("0\r\n\n"), Error::Malformed("bare LF in chunked framing"));
    assert_eq!(chunked(&"1".repeat(5000)), Error::Malformed("chunk size line too long"));
    // Tabs and spaces before an extension are allowed (BWS).
    let ok = serve(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3 \t;e=\"v\"\r\nabc\r\n0\r\n\r\n");
    assert_eq!(ok[1..], [data("abc"), end()]);
}

#[test]
fn limits_give_their_status() {
    let limits = Limits { max_head_bytes: 1024, max_uri_bytes: 64, max_headers: 4, max_body_bytes: 10 };
    let run = |input: &[u8]| match serve_with(input, &[], limits).0.pop() {
        Some(Ev::Err(e)) => e,
        other => panic!("{other:?}"),
    };
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(100));
    assert_eq!(run(long_uri.as_bytes()), Error::UriTooLong);
    assert_eq!(run(long_uri.as_bytes()).status(), StatusCode::URI_TOO_LONG);
    // A request line that never ends, over the head limit: 414, not 431.
    let endless = format!("GET /{}", "a".repeat(2000));
    assert_eq!(run(endless.as_bytes()), Error::UriTooLong);
    let big_head = format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n", "b".repeat(2000));
    assert_eq!(run(big_head.as_bytes()), Error::HeadTooLarge);
    assert_eq!(run(big_head.as_bytes()).status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let unfinished = format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}", "b".repeat(2000));
    assert_eq!(run(unfinished.as_bytes()), Error::HeadTooLarge);
    assert_eq!(run(b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"), Error::HeadTooLarge);
    assert_eq!(run(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n"), Error::BodyTooLarge);
    assert_eq!(
        run(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n123456\r\n6\r\n"),
        Error::BodyTooLarge
    );
    assert_eq!(Error::BodyTooLarge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(Error::UnsupportedTransferEncoding.status(), StatusCode::NOT_IMPLEMENTED);
    assert_eq!(Error::Malformed("x").status(), StatusCode::BAD_REQUEST);
}

#[test]
fn keep_alive_pipelining_and_responses() {
    // Two pipelined requests: both read, in order, each answered before the next.
    let (evs, out) = serve_with(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi\r\n",
        &[],
        Limits::default(),
    );
    assert_eq!(
        evs,
        [
            head("GET /1 HTTP/1.1 None ka=true [Host=h]"),
            end(),
            head("POST /2 HTTP/1.1 Length(2) ka=true [Host=h, Content-Length=2]"),
            data("hi"),
            end()
        ]
    );
    assert_eq!(
        String::from_utf8_lossy(&out),
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    );
    // HTTP/1.0 closes unless asked; Connection: close closes 1.1. Tokens in any case;
    // in a list, close wins.
    let cases: [(&[u8], &str); 6] = [
        (b"GET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.0 None ka=false []"),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "GET / HTTP/1.0 None ka=true [Connection=keep-alive]"),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            "GET / HTTP/1.1 None ka=false [Host=h, Connection=close]",
        ),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", "GET / HTTP/1.0 None ka=true [Connection=Keep-Alive]"),
        (
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
            "GET / HTTP/1.0 None ka=false [Connection=keep-alive, close]",
        ),
        (
            b"GET / HTTP/1.0\r\nConnection: x, keep-alive\r\n\r\n",
            "GET / HTTP/1.0 None ka=true [Connection=x, keep-alive]",
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(serve(request)[0], head(expected), "{}", String::from_utf8_lossy(request));
    }
}

fn respond(request: &[u8], status: StatusCode, body: BodyLength, chunks: &[&[u8]]) -> (String, Next) {
    let mut conn = ServerConn::new(Limits::default());
    let mut input = request;
    loop {
        let (n, ev) = conn.handle_input(input).unwrap_or_else(|e| panic!("{e}"));
        input = &input[n..];
        if matches!(ev, ServerEvent::Paused | ServerEvent::NeedMore) {
            break;
        }
    }
    let mut out = Vec::new();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    headers.insert("connection", HeaderValue::from_static("keep-alive"));
    headers.insert("transfer-encoding", HeaderValue::from_static("gzip"));
    conn.write_response_head(&ResponseHead { status, headers: &headers, body, close: false }, &mut out)
        .unwrap_or_else(|e| panic!("{e}"));
    for c in chunks {
        conn.write_body(c, &mut out).unwrap_or_else(|e| panic!("{e}"));
    }
    let next = conn.finish_response(&mut out).unwrap_or_else(|e| panic!("{e}"));
    (String::from_utf8_lossy(&out).into_owned(), next)
}

#[test]
fn response_encoding() {
    let get = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    assert_eq!(
        respond(get, StatusCode::OK, BodyLength::Known(5), &[b"he", b"llo"]),
        ("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello".into(), Next::KeepAlive)
    );
    assert_eq!(
        respond(get, StatusCode::OK, BodyLength::Unknown, &[b"hello", b"", b" world!"]),
        (
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n world!\r\n0\r\n\r\n"
                .into(),
            Next::KeepAlive
        )
    );
    // No body for HEAD (Content-Length still says how long it would be), 204 and 304.
    assert_eq!(
        respond(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", StatusCode::OK, BodyLength::Known(5), &[]),
        ("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\n".into(), Next::KeepAlive)
    );
    assert_eq!(
        respond(get, StatusCode::NO_CONTENT, BodyLength::Unknown, &[]).0,
        "HTTP/1.1 204 No Content\r\ncontent-type: text/plain\r\n\r\n"
    );
    assert_eq!(
        respond(get, StatusCode::NOT_MODIFIED, BodyLength::Known(10), &[]).0,
        "HTTP/1.1 304 Not Modified\r\ncontent-type: text/plain\r\n\r\n"
    );
    // HTTP/1.0 with an unknown length: close-delimited.
    assert_eq!(
        respond(b"GET / HTTP/1.0\r\n\r\n", StatusCode::OK, BodyLength::Unknown, &[b"abc"]),
        ("HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nabc".into(), Next::Close)
    );
    // An unread request body makes the connection close.
    assert_eq!(
        respond(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc",
            StatusCode::OK,
            BodyLength::Known(0),
            &[]
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
            Next::Close
        )
    );
}

#[test]
fn response_contract_errors() {
    let mut conn = ServerConn::new(Limits::default());
    let headers = HeaderMap::new();
    let head = ResponseHead { status: StatusCode::OK, headers: &headers, body: BodyLength::Known(2), close: false };
    let mut out = Vec::new();
    assert_eq!(conn.write_response_head(&head, &mut out), Err(Error::Usage("no request is waiting for a response")));
    let _ = conn.handle_input(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(conn.write_response_head(&head, &mut out), Ok(()));
    assert_eq!(conn.write_body(b"abc", &mut out), Err(Error::Usage("body longer than its Content-Length")));
    assert_eq!(conn.write_body(b"a", &mut out), Ok(()));
    assert_eq!(conn.finish_response(&mut out), Err(Error::Usage("body shorter than its Content-Length")));
}

#[test]
fn expect_continue_and_protocol_switches() {
    let mut conn = ServerConn::new(Limits::default());
    let input = b"PUT /u HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
    let (n, ev) = conn.handle_input(input).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n, input.len());
    let ServerEvent::Request(req) = ev else { panic!("{ev:?}") };
    assert!(req.expect_continue);
    let mut out = Vec::new();
    conn.write_continue(&mut out);
    conn.write_continue(&mut out);
    assert_eq!(out, b"HTTP/1.1 100 Continue\r\n\r\n");

    // CONNECT answered 200: switched, and the bytes after the head are the tunnel's.
    let mut conn = ServerConn::new(Limits::default());
    let input = b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n\x00TUNNEL";
    let (n, _) = conn.handle_input(input).unwrap_or_else(|e| panic!("{e}"));
    let (m, ev) = conn.handle_input(&input[n..]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((m, ev), (0, ServerEvent::End(None)));
    let mut out = Vec::new();
    let headers = HeaderMap::new();
    let ok = ResponseHead { status: StatusCode::OK, headers: &headers, body: BodyLength::Known(0), close: false };
    conn.write_response_head(&ok, &mut out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(conn.finish_response(&mut out), Ok(Next::Switch));
    assert_eq!(out, b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(conn.handle_input(&input[n..]), Ok((0, ServerEvent::Switched)));
    assert_eq!(&input[n..], b"\x00TUNNEL");

    // Upgrade answered with something else than 101: an ordinary response.
    let (text, next) = respond(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        StatusCode::OK,
        BodyLength::Known(0),
        &[],
    );
    assert_eq!(
        (text.as_str(), next),
        ("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 0\r\n\r\n", Next::KeepAlive)
    );
}

#[test]
fn error_response_closes() {
    let mut conn = ServerConn::new(Limits::default());
    let mut out = Vec::new();
    conn.write_error(StatusCode::BAD_REQUEST, "invalid header name", &mut out);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 19\r\nconnection: close\r\n\r\ninvalid header name"
    );
    assert_eq!(conn.handle_input(b"GET / HTTP/1.1\r\n"), Err(Error::Usage("connection is closed")));
}

// ---- client role ----

fn client(method: Method, input: &[u8], eof: bool) -> Vec<Ev> {
    let mut conn = ClientConn::new(method, Limits::default());
    let mut evs = Vec::new();
    let mut buf = input;
    loop {
        match conn.handle_input(buf) {
            Err(e) => {
                evs.push(Ev::Err(e));
                return evs;
            }
            Ok((n, ev)) => {
                buf = &buf[n..];
                match ev {
                    ClientEvent::Response(r) => push(
                        &mut evs,
                        Ev::Head(format!("{} {} {:?} ka={}", r.status.as_u16(), r.reason(), r.framing, r.keep_alive)),
                    ),
                    ClientEvent::Data(d) => push(&mut evs, Ev::Data(d.to_vec())),
                    ClientEvent::End(t) => {
                        push(&mut evs, Ev::End(trailers(t)));
                        return evs;
                    }
                    ClientEvent::Switched => {
                        push(&mut evs, Ev::Switched);
                        return evs;
                    }
                    ClientEvent::NeedMore => {
                        if eof {
                            match conn.handle_eof() {
                                Ok(ClientEvent::End(t)) => push(&mut evs, Ev::End(trailers(t))),
                                Ok(other) => panic!("{other:?}"),
                                Err(e) => evs.push(Ev::Err(e)),
                            }
                        }
                        return evs;
                    }
                }
            }
        }
    }
}

#[test]
fn client_parses_responses() {
    assert_eq!(
        client(Method::GET, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
        [head("200 OK Length(2) ka=true"), data("ok"), end()]
    );
    assert_eq!(
        client(Method::GET, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false),
        [head("200 OK Chunked ka=true"), data("ok"), end()]
    );
    assert_eq!(
        client(Method::GET, b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true),
        [head("200 OK UntilClose ka=false"), data("until the end"), end()]
    );
    // 1xx are skipped; the final response follows in the same input.
    assert_eq!(
        client(Method::POST, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", false),
        [head("201 Created None ka=true"), end()]
    );
    // No body for HEAD, 204, 304, nor for a 2xx to CONNECT (a tunnel).
    assert_eq!(
        client(Method::HEAD, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", false),
        [head("200 OK None ka=true"), end()]
    );
    assert_eq!(
        client(Method::GET, b"HTTP/1.1 204 No Content\r\n\r\n", false),
        [head("204 No Content None ka=true"), end()]
    );
    assert_eq!(
        client(Method::GET, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", false),
        [head("304 Not Modified None ka=true"), end()]
    );
    assert_eq!(
        client(Method::CONNECT, b"HTTP/1.1 200 Connection established\r\n\r\nTLS...", false),
        [head("200 Connection established None ka=true"), Ev::Switched]
    );
    // Errors: truncated body, smuggling, garbage.
    assert_eq!(
        client(Method::GET, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok", true),
        [
            head("200 OK Length(5) ka=true"),
            data("ok"),
            Ev::Err(Error::Malformed("connection closed before the body ended"))
        ]
    );
    assert_eq!(
        client(Method::GET, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", false),
        [Ev::Err(Error::Malformed("both Transfer-Encoding and Content-Length"))]
    );
    assert_eq!(client(Method::GET, b"SSH-2.0-OpenSSH\r\n\r\n", false), [Ev::Err(Error::UnsupportedVersion)]);
    assert_eq!(client(Method::GET, b"", true), [Ev::Err(Error::Malformed("connection closed before a response"))]);
}

/// A backend's head that breaks the grammar is refused with the codec's error for
/// what broke it (the same as httparse gave before our parser read response heads),
/// and nothing of it is taken as a response.
#[test]
fn client_refuses_malformed_response_heads_with_the_reason() {
    let bad: &[(&[u8], Error)] = &[
        (b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\n\r\n", Error::Malformed("invalid header name")),
        (b"HTTP/1.1 200 OK\r\nX-A : a\r\n\r\n", Error::Malformed("invalid header name")),
        (b"HTTP/1.1 200 OK\r\nX(A): a\r\n\r\n", Error::Malformed("invalid header name")),
        (b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n", Error::Malformed("invalid header value")),
        (b"HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\n\r\n", Error::Malformed("invalid header value")),
        (b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n", Error::Malformed("invalid header value")),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", Error::Malformed("invalid status")),
        (b"HTTP/1.1 200 O\x01K\r\n\r\n", Error::Malformed("invalid status")),
        (b"HTTP/1.1 099 Low\r\n\r\n", Error::Malformed("invalid status")),
        (b"HTTP/1.2 200 OK\r\n\r\n", Error::UnsupportedVersion),
        (b"HTTP/1.1 200 OK\r\r\n\r\n", Error::Malformed("invalid status")),
        (b"\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", Error::Malformed("incomplete response head")),
    ];
    for (head, error) in bad {
        assert_eq!(client(Method::GET, head, false), [Ev::Err(*error)], "{:?}", String::from_utf8_lossy(head));
    }
    // One field more than the limit.
    let mut conn = ClientConn::new(Method::GET, Limits { max_headers: 2, ..Limits::default() });
    assert_eq!(conn.handle_input(b"HTTP/1.1 204 No Content\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"), Err(Error::HeadTooLarge));
    // Tabs and obs-text are a value's, and a reason with obs-text reads as empty.
    assert_eq!(
        client(Method::GET, b"HTTP/1.1 204 caf\xc3\xa9\r\nX-A: \ta\tb\x80 \r\n\r\n", false),
        [head("204  None ka=true"), end()]
    );
}

#[test]
fn client_writes_requests_in_every_form() {
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("acme"));
    headers.insert("connection", HeaderValue::from_static("close"));
    headers.insert("host", HeaderValue::from_static("evil"));
    let mut out = Vec::new();
    write_request(&Method::GET, RequestTarget::Origin("/a?b=1"), "api:8080", &headers, None, &mut out)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(String::from_utf8_lossy(&out), "GET /a?b=1 HTTP/1.1\r\nhost: api:8080\r\nx-tenant: acme\r\n\r\n");
    out.clear();
    write_request(
        &Method::POST,
        RequestTarget::Absolute("http://api:8080/a"),
        "api:8080",
        &HeaderMap::new(),
        Some(BodyLength::Known(3)),
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        String::from_utf8_lossy(&out),
        "POST http://api:8080/a HTTP/1.1\r\nhost: api:8080\r\ncontent-length: 3\r\n\r\n"
    );
    out.clear();
    write_request(&Method::CONNECT, RequestTarget::Authority("api:443"), "api:443", &HeaderMap::new(), None, &mut out)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(String::from_utf8_lossy(&out), "CONNECT api:443 HTTP/1.1\r\nhost: api:443\r\n\r\n");
    out.clear();
    write_request(
        &Method::PUT,
        RequestTarget::Origin("/u"),
        "api",
        &HeaderMap::new(),
        Some(BodyLength::Unknown),
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    sluice_core::http1::write_chunk(b"0123456789abcdefX", &mut out);
    sluice_core::http1::write_last_chunk(&mut out);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "PUT /u HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\n\r\n11\r\n0123456789abcdefX\r\n0\r\n\r\n"
    );
    // Injection attempts: a_request_head_is_written_only_with_a_valid_target_and_host.
}

// ---- whole versus split ----

const SAMPLES: &[&[u8]] = &[
    b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world",
    b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
    b"\r\nGET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\nPOST /3 HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx",
    b"GET / HTTP/1.0\n\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
];

/// Limits some samples' heads go over: 60 bytes, two fields, a 16-byte request target
/// (414 or 431 by the request line's length).
const SMALL_HEADS: Limits = Limits { max_head_bytes: 60, max_uri_bytes: 16, max_headers: 2, max_body_bytes: 1 << 20 };

proptest! {
    #[test]
    fn whole_and_split_feeding_agree(
        sample in 0..SAMPLES.len(),
        cuts in proptest::collection::vec(0usize..200, 0..12),
        small in any::<bool>(),
    ) {
        let (input, limits) = (SAMPLES[sample], if small { SMALL_HEADS } else { Limits::default() });
        let whole = serve_with(input, &[], limits);
        let split = serve_with(input, &cuts, limits);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn every_byte_alone_agrees_and_nothing_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        prefix in 0..SAMPLES.len(),
        small in any::<bool>(),
    ) {
        let mut input = SAMPLES[prefix].to_vec();
        input.extend_from_slice(&bytes);
        let limits = if small { SMALL_HEADS } else { Limits::default() };
        let whole = serve_with(&input, &[], limits);
        let cuts: Vec<usize> = (1..input.len()).collect();
        let split = serve_with(&input, &cuts, limits);
        prop_assert_eq!(whole, split);
    }
}

/// Feeds a backend's `input` to a client connection in pieces cut at `cuts` (each
/// piece added to what is left unread, as a driver does), then the end of input.
/// The head is parsed in place at its first look, else found by a search: both must
/// give the same events whatever the cuts.
fn read_response_with(method: Method, input: &[u8], cuts: &[usize], limits: Limits) -> Vec<Ev> {
    let mut conn = ClientConn::new(method, limits);
    let mut evs = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for piece in pieces(input, cuts) {
        buf.extend_from_slice(piece);
        loop {
            let (n, ev) = match conn.handle_input(&buf) {
                Ok(read) => read,
                Err(e) => {
                    evs.push(Ev::Err(e));
                    return evs;
                }
            };
            let more = match ev {
                ClientEvent::Response(r) => {
                    let fields: Vec<String> =
                        r.head.iter().map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v))).collect();
                    let (status, framing) = (r.status.as_u16(), r.framing);
                    let head =
                        format!("{status} {} {framing:?} ka={} [{}]", r.reason(), r.keep_alive, fields.join(", "));
                    push(&mut evs, Ev::Head(head));
                    false
                }
                ClientEvent::Data(d) => {
                    push(&mut evs, Ev::Data(d.to_vec()));
                    false
                }
                ClientEvent::End(t) => {
                    push(&mut evs, Ev::End(trailers(t)));
                    return evs;
                }
                ClientEvent::Switched => {
                    push(&mut evs, Ev::Switched);
                    return evs;
                }
                ClientEvent::NeedMore => true,
            };
            buf.drain(..n);
            if more {
                break;
            }
        }
    }
    match conn.handle_eof() {
        Ok(ClientEvent::End(t)) => push(&mut evs, Ev::End(trailers(t))),
        Ok(other) => push(&mut evs, Ev::Head(format!("at the end: {other:?}"))),
        Err(e) => evs.push(Ev::Err(e)),
    }
    evs
}

const RESPONSES: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\nhello world",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    b"HTTP/1.0 200 OK\nX: a\n\nuntil the close",
    // One empty line first is skipped; two end the head before any status line.
    b"\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"\n\nHTTP/1.1 200 OK\r\n\r\n",
    // Refused heads: a bad byte early, before the head is whole, and at its end.
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\x00b",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\r\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Long: 0123456789abcdef0123456789abcdef0123456789abcdef\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Na",
];

proptest! {
    #[test]
    fn a_response_read_whole_or_split_gives_the_same_events(
        sample in 0..RESPONSES.len(),
        cuts in proptest::collection::vec(0usize..120, 0..12),
        small in any::<bool>(),
    ) {
        let (input, limits) = (RESPONSES[sample], if small { SMALL_HEADS } else { Limits::default() });
        let whole = read_response_with(Method::GET, input, &[], limits);
        let split = read_response_with(Method::GET, input, &cuts, limits);
        prop_assert_eq!(whole, split);
    }

    /// Fed a byte at a time, every look after the first goes through the search for
    /// the head's end (the way before heads were parsed in place): this compares the
    /// two.
    #[test]
    fn a_response_read_a_byte_at_a_time_gives_the_same_events(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        prefix in 0..RESPONSES.len(),
        at in 0usize..120,
        small in any::<bool>(),
    ) {
        // Bytes of any kind put inside a sample, so heads go wrong in every place.
        let mut input = RESPONSES[prefix].to_vec();
        let at = at.min(input.len());
        input.splice(at..at, bytes);
        let limits = if small { SMALL_HEADS } else { Limits::default() };
        let whole = read_response_with(Method::GET, &input, &[], limits);
        let cuts: Vec<usize> = (1..input.len()).collect();
        let split = read_response_with(Method::GET, &input, &cuts, limits);
        prop_assert_eq!(whole, split);
    }
}

/// The events of the samples read whole: what the in-place parse answers.
#[test]
fn responses_read_whole() {
    let read = |input: &[u8], limits| read_response_with(Method::GET, input, &[], limits);
    assert_eq!(
        read(RESPONSES[0], Limits::default()),
        [
            Ev::Head(
                "200 OK Length(11) ka=true [Server=nginx, Content-Type=application/json, Content-Length=11]".into()
            ),
            Ev::Data(b"hello world".to_vec()),
            Ev::End(vec![]),
        ]
    );
    assert_eq!(
        read(RESPONSES[3], Limits::default()),
        [Ev::Head("204 No Content None ka=true []".into()), Ev::End(vec![])]
    );
    let cut_short = Ev::Err(Error::Malformed("incomplete response head"));
    assert_eq!(read(RESPONSES[4], Limits::default()), std::slice::from_ref(&cut_short));
    assert_eq!(read(RESPONSES[5], Limits::default()), [cut_short]);
    assert_eq!(read(RESPONSES[6], Limits::default()), [Ev::Err(Error::Malformed("invalid header value"))]);
    // Not whole when the input ends: the backend closed before answering.
    assert_eq!(
        read(RESPONSES[7], Limits::default()),
        [Ev::Err(Error::Malformed("connection closed before a response"))]
    );
    assert_eq!(read(RESPONSES[8], Limits::default()), [Ev::Err(Error::Malformed("differing Content-Length values"))]);
    assert_eq!(read(RESPONSES[9], Limits::default()), [Ev::Err(Error::Malformed("invalid header value"))]);
    assert_eq!(read(RESPONSES[10], SMALL_HEADS), [Ev::Err(Error::HeadTooLarge)]);
    assert_eq!(read(RESPONSES[11], SMALL_HEADS), [Ev::Err(Error::HeadTooLarge)]);
    assert_eq!(read(RESPONSES[12], SMALL_HEADS), [Ev::Err(Error::Malformed("connection closed before a response"))]);
}

#[test]
fn a_request_head_is_written_only_with_a_valid_target_and_host() {
    let write = |method: Method, target: RequestTarget<'_>, host: &str| {
        let mut out = Vec::new();
        write_request(&method, target, host, &HeaderMap::new(), None, &mut out)
            .map(|()| String::from_utf8(out).unwrap())
    };
    let target = Err(Error::Usage("invalid request target"));
    let host = Err(Error::Usage("invalid Host"));
    assert_eq!(
        write(Method::GET, RequestTarget::Origin("/a?b=c"), "h:80"),
        Ok("GET /a?b=c HTTP/1.1\r\nhost: h:80\r\n\r\n".into())
    );
    assert_eq!(
        write(Method::CONNECT, RequestTarget::Authority("h:443"), "h:443"),
        Ok("CONNECT h:443 HTTP/1.1\r\nhost: h:443\r\n\r\n".into())
    );
    assert_eq!(
        write(Method::GET, RequestTarget::Absolute("http://h/x"), "h"),
        Ok("GET http://h/x HTTP/1.1\r\nhost: h\r\n\r\n".into())
    );
    for (method, bad) in [
        (Method::GET, RequestTarget::Origin("a")),
        (Method::GET, RequestTarget::Origin("/a b")),
        (Method::GET, RequestTarget::Origin("/a\r\nx: y")),
        (Method::GET, RequestTarget::Origin("/é")),
        (Method::GET, RequestTarget::Absolute("ftp://h/")),
        (Method::GET, RequestTarget::Authority("h:443")),
        (Method::CONNECT, RequestTarget::Authority("h/x:443")),
        (Method::CONNECT, RequestTarget::Authority("u@h:443")),
    ] {
        assert_eq!(write(method, bad, "h"), target, "{bad:?}");
    }
    for bad in ["", "h/x", "u@h", "h?x", "h#x", "h x", "h\tx", "h\x7f", "h\r\nx: y", "hé", "/"] {
        assert_eq!(write(Method::GET, RequestTarget::Origin("/"), bad), host, "{bad:?}");
    }
}
