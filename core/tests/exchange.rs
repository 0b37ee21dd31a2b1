//! The exchange, table-driven: canned backend answers, virtual time, exact bytes.
//!
//! Each case runs a configuration and one client request through `Gateway::dispatch`
//! and `Exchange`, answering backend calls from a table. Parallel answers are
//! delivered in reverse call order, so merge order is seen to follow declaration, not
//! arrival. Calls are recorded as the exact bytes the gateway would send.

use std::net::IpAddr;
use std::time::{Duration, Instant, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use sluice_core::Gateway;
use sluice_core::gateway::builtin;
use sluice_core::gateway::dispatch::Dispatch;
use sluice_core::gateway::exchange::{Action, Exchange};
use sluice_core::gateway::upstream::Balancer;
use sluice_core::http1::Head;
use sluice_core::request::{ClientRequest, Reply, RequestBody};

/// How a backend answers a call.
#[derive(Clone)]
enum Canned {
    /// 200, `application/json`.
    Json(&'static str),
    Status(u16, &'static str),
    Typed(u16, &'static str, &'static str),
    Fail(&'static str),
    /// Never answers.
    Hang,
}

struct Outcome {
    reply: Reply,
    /// Each call: request head and body as sent.
    calls: Vec<String>,
    /// When the answer came, from the start.
    elapsed: Duration,
}

impl Outcome {
    fn body(&self) -> &str {
        std::str::from_utf8(&self.reply.body).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.reply.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Status, then every header as `name: value`, then the body.
    fn show(&self) -> String {
        let mut s = format!("{}\n", self.reply.status.as_u16());
        for (n, v) in &self.reply.headers {
            s.push_str(&format!("{}: {}\n", n, v.to_str().unwrap()));
        }
        s.push('\n');
        s.push_str(self.body());
        s
    }
}

struct Req<'a> {
    method: Method,
    target: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    body: Option<&'a str>,
    peer: &'a str,
}

/// The wall clock the exchanges run at (CEL's `now`): 2025-06-15T15:06:40Z.
fn wall() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

/// A GET of `path` with no header, query or body, from 127.0.0.1.
fn bare_get(path: &str) -> ClientRequest {
    ClientRequest {
        method: Method::GET,
        path: path.into(),
        query: None,
        headers: Head::default(),
        peer: "127.0.0.1".parse().unwrap(),
        ends: None,
        body: RequestBody::None,
        token: None,
    }
}

fn get(target: &str) -> Req<'_> {
    Req { method: Method::GET, target, headers: vec![("host", "gw.example")], body: None, peer: "10.0.0.1" }
}

fn run(config: &str, req: Req<'_>, answer: impl Fn(usize) -> Canned) -> Outcome {
    let gw = Gateway::load(config).unwrap_or_else(|e| panic!("config: {e}")).gateway;
    run_on(&gw, &Balancer::new(gw.backend_count), req, answer)
}

fn run_on(gw: &Gateway, lb: &Balancer, req: Req<'_>, answer: impl Fn(usize) -> Canned) -> Outcome {
    let t0 = Instant::now();
    let (path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (req.target, None),
    };
    let headers = Head::from_fields(req.headers.iter().map(|(n, v)| (*n, v.as_bytes())));
    let client = ClientRequest {
        method: req.method.clone(),
        path: path.into(),
        query: query.clone().map(Into::into),
        headers,
        peer: req.peer.parse::<IpAddr>().unwrap(),
        ends: None,
        body: req.body.map_or(RequestBody::None, |b| RequestBody::Full(b.as_bytes().to_vec())),
        token: None,
    };
    let route = match gw.dispatch(&req.method, path, query.as_deref()) {
        Dispatch::Reply(reply) => return Outcome { reply, calls: vec![], elapsed: Duration::ZERO },
        Dispatch::Builtin(b) => {
            let wall = UNIX_EPOCH + Duration::from_secs(1_795_300_000);
            return Outcome { reply: builtin::answer(b, &client, wall), calls: vec![], elapsed: Duration::ZERO };
        }
        Dispatch::Endpoint(route) => route,
    };
    let mut ex = Exchange::new(gw, route, client, (t0, wall()));
    let mut calls = Vec::new();
    let mut pending: Vec<(usize, Canned)> = Vec::new();
    let mut now = t0;
    loop {
        match ex.poll(lb) {
            Action::Call(call) => {
                let mut head = Vec::new();
                ex.write_head(&call, &mut head).unwrap();
                if call.body == sluice_core::call::CallBody::Full {
                    head.extend_from_slice(ex.call_body(call.id));
                }
                calls.push(String::from_utf8(head).unwrap());
                pending.push((call.id, answer(call.id)));
            }
            Action::Wait(deadline) => {
                // Deliver the latest call that answers; with none left, time passes.
                match pending.iter().rposition(|(_, c)| !matches!(c, Canned::Hang)) {
                    Some(i) => {
                        let (id, canned) = pending.remove(i);
                        now += Duration::from_millis(1);
                        deliver(&mut ex, id, canned);
                    }
                    None => {
                        now = deadline;
                        ex.handle_timeout(now);
                    }
                }
            }
            Action::Respond(reply) => return Outcome { reply, calls, elapsed: now - t0 },
            Action::Stream(head) => {
                // The backend's headers go from its parsed head to the client in core::conn
                // (ServerConn::write_passthrough_head): the exchange decides the status.
                let reply = Reply { status: head.status, headers: HeaderMap::new(), body: b"<streamed>".to_vec() };
                return Outcome { reply, calls, elapsed: now - t0 };
            }
            Action::Done => panic!("poll after the answer"),
        }
    }
}

fn deliver(ex: &mut Exchange<'_>, id: usize, canned: Canned) {
    // The fields as the codec hands them on: a parsed head, read in place (the
    // exchange makes a map of it only where one is wanted).
    let typed = |status: u16, ct: &str, body: &str| {
        let h = Head::from_fields([("Content-Type", ct.as_bytes()), ("Server", &b"nginx"[..])]);
        (StatusCode::from_u16(status).unwrap(), h, body.as_bytes().to_vec())
    };
    let (status, headers, body) = match canned {
        Canned::Json(b) => typed(200, "application/json", b),
        Canned::Status(s, b) => typed(s, "text/plain; charset=utf-8", b),
        Canned::Typed(s, ct, b) => typed(s, ct, b),
        Canned::Fail(why) => return ex.handle_failure(id, why),
        Canned::Hang => unreachable!(),
    };
    if ex.endpoint().output == sluice_core::config::OutputEncoding::NoOp {
        let _ = headers;
        ex.handle_head(id, status);
    } else {
        ex.handle_response(id, status, headers, body);
    }
}

/// A config with one endpoint and these backends (JSON of the `backend` array).
fn one(endpoint_extra: &str, backends: &str) -> String {
    format!(
        r#"{{"version": 3, "host": ["http://backend:8000"], "timeout": "2s",
            "endpoints": [{{"endpoint": "/api/{{id}}", {endpoint_extra} "backend": {backends}}}]}}"#
    )
}

const USER: &str = r#"{"id":42,"name":"Ada","email":"ada@example.com","address":{"city":"London","zip":"N1","geo":{"lat":51.5,"lng":-0.1}},"roles":["admin","dev"]}"#;
const ORDERS: &str =
    r#"{"count":2,"items":[{"id":"o-1","total":1.50},{"id":"o-2","total":12345678901234567890123}],"next":null}"#;

#[test]
fn aggregation_merges_in_declaration_order_with_shaping() {
    let cfg = one(
        r#""cache_ttl": "300s","#,
        r#"[{"url_pattern": "/users/{id}", "allow": ["id", "name", "address.city"], "mapping": {"name": "full_name"}},
            {"url_pattern": "/orders?user={id}", "group": "orders", "deny": ["next"]}]"#,
    );
    let out = run(&cfg, get("/api/42"), |i| Canned::Json(if i == 0 { USER } else { ORDERS }));
    assert_eq!(
        out.show(),
        "200\ncontent-type: application/json; charset=utf-8\nx-krakend-completed: true\ncache-control: public, max-age=300\n\n\
         {\"id\":42,\"full_name\":\"Ada\",\"address\":{\"city\":\"London\"},\"orders\":{\"count\":2,\"items\":[{\"id\":\"o-1\",\"total\":1.50},{\"id\":\"o-2\",\"total\":12345678901234567890123}]}}"
    );
    assert_eq!(
        out.calls,
        [
            "GET /users/42 HTTP/1.1\r\nhost: backend:8000\r\nx-forwarded-for: 10.0.0.1\r\nx-forwarded-host: gw.example\r\nuser-agent: Sluice/0.1.0\r\naccept-encoding: gzip\r\n\r\n",
            "GET /orders?user=42 HTTP/1.1\r\nhost: backend:8000\r\nx-forwarded-for: 10.0.0.1\r\nx-forwarded-host: gw.example\r\nuser-agent: Sluice/0.1.0\r\naccept-encoding: gzip\r\n\r\n",
        ]
    );
}

#[test]
fn later_backend_wins_a_key_in_the_earlier_place() {
    let cfg = one("", r#"[{"url_pattern": "/a"}, {"url_pattern": "/b"}]"#);
    let out =
        run(&cfg, get("/api/1"), |i| Canned::Json(if i == 0 { r#"{"x":1,"y":2}"# } else { r#"{"z":3,"x":"b"}"# }));
    assert_eq!(out.body(), r#"{"x":"b","y":2,"z":3}"#);
}

#[test]
fn numbers_strings_and_key_order_survive_byte_for_byte() {
    let body = "{\"big\":12345678901234567890123,\"price\":1.50,\"exp\":1e3,\"neg\":-0.0,\"name\":\"caf\\u00e9 \\ud83d\\ude00\",\"z\":{\"b\":1,\"a\":[1.0, 2E+2]},\"a\":true}";
    let cfg = one("", r#"[{"url_pattern": "/a"}]"#);
    let out = run(&cfg, get("/api/1"), |_| Canned::Json(Box::leak(body.to_string().into_boxed_str())));
    assert_eq!(out.body(), body);
    // Shaping keeps the kept values' bytes too.
    let cfg = one("", r#"[{"url_pattern": "/a", "deny": ["z.b"], "mapping": {"exp": "e"}}]"#);
    let out = run(&cfg, get("/api/1"), |_| Canned::Json(Box::leak(body.to_string().into_boxed_str())));
    assert_eq!(
        out.body(),
        "{\"big\":12345678901234567890123,\"price\":1.50,\"e\":1e3,\"neg\":-0.0,\"name\":\"caf\\u00e9 \\ud83d\\ude00\",\"z\":{\"a\":[1.0, 2E+2]},\"a\":true}"
    );
}

#[test]
fn shaping_rules() {
    // (backend fields, body, expected output)
    let cases: &[(&str, &str, &str)] = &[
        (r#""target": "data""#, r#"{"data":{"a":1},"meta":2}"#, r#"{"a":1}"#),
        (r#""target": "data.inner""#, r#"{"data":{"inner":{"a":1}}}"#, r#"{"a":1}"#),
        (r#""target": "missing""#, r#"{"data":{"a":1}}"#, r#"{}"#),
        (r#""target": "data""#, r#"{"data":[1,2]}"#, r#"{}"#),
        (r#""allow": ["a", "b.c"]"#, r#"{"a":1,"b":{"c":2,"d":3},"e":4}"#, r#"{"a":1,"b":{"c":2}}"#),
        (r#""allow": ["b.x"]"#, r#"{"a":1,"b":{"c":2}}"#, r#"{}"#),
        (r#""allow": ["b.c"]"#, r#"{"b":[{"c":1}]}"#, r#"{}"#),
        (r#""allow": ["b", "b.c"]"#, r#"{"b":{"c":2,"d":3}}"#, r#"{"b":{"c":2,"d":3}}"#),
        (r#""deny": ["a", "b.c"]"#, r#"{"a":1,"b":{"c":2,"d":3},"e":4}"#, r#"{"b":{"d":3},"e":4}"#),
        (r#""deny": ["b.c.x"]"#, r#"{"b":"text"}"#, r#"{"b":"text"}"#),
        (r#""allow": ["a"], "deny": ["a"]"#, r#"{"a":1,"b":2}"#, r#"{"a":1}"#),
        (r#""mapping": {"a": "b", "b": "a"}"#, r#"{"a":1,"b":2,"c":3}"#, r#"{"b":1,"a":2,"c":3}"#),
        (r#""mapping": {"a": "c"}"#, r#"{"a":1,"b":2,"c":3}"#, r#"{"c":1,"b":2}"#),
        (r#""mapping": {"a\"q": "q"}"#, r#"{"a\u0022q":1}"#, r#"{"q":1}"#),
        (r#""group": "g""#, r#"{"a":1}"#, r#"{"g":{"a":1}}"#),
        (
            r#""target": "d", "allow": ["x", "y"], "mapping": {"x": "ex"}, "group": "g""#,
            r#"{"d":{"x":1,"y":2,"z":3}}"#,
            r#"{"g":{"ex":1,"y":2}}"#,
        ),
        (r#""is_collection": true"#, r#"[1,{"a":2}]"#, r#"{"collection":[1,{"a":2}]}"#),
        (r#""is_collection": true, "mapping": {"collection": "list"}"#, r#"[1]"#, r#"{"list":[1]}"#),
        (r#""encoding": "safejson""#, r#"[1,2]"#, r#"{"collection":[1,2]}"#),
        (r#""encoding": "safejson""#, r#"  "hi" "#, r#"{"content":"hi"}"#),
        (r#""encoding": "safejson""#, r#"3.10"#, r#"{"content":3.10}"#),
        (r#""encoding": "safejson""#, r#"{"a":1}"#, r#"{"a":1}"#),
        (r#""encoding": "fast-json""#, r#"{"a":1.0}"#, r#"{"a":1.0}"#),
        (r#""encoding": "string""#, "plain \"text\"\n", r#"{"content":"plain \"text\"\n"}"#),
        (
            r#""encoding": "xml""#,
            r#"<?xml version="1.0"?><user id="7"><name>Ada &amp; co</name><tag>a</tag><tag>b</tag><note lang="en">hi</note><empty/></user>"#,
            r##"{"user":{"-id":"7","name":"Ada & co","tag":["a","b"],"note":{"-lang":"en","#text":"hi"},"empty":""}}"##,
        ),
        (
            r#""encoding": "rss", "target": "rss.channel", "allow": ["title"]"#,
            r#"<rss version="2.0"><channel><title>News</title><item><title>One</title></item></channel></rss>"#,
            r#"{"title":"News"}"#,
        ),
    ];
    for (fields, body, expected) in cases {
        let cfg = one("", &format!(r#"[{{"url_pattern": "/a", {fields}}}]"#));
        let out = run(&cfg, get("/api/1"), |_| Canned::Json(body));
        assert_eq!(out.body(), *expected, "{fields}");
        // lura calls an answer complete only when it has data.
        let complete = if *expected == "{}" { "false" } else { "true" };
        assert_eq!(out.header("x-krakend-completed"), Some(complete), "{fields}");
    }
}

#[test]
fn undecodable_bodies_fail_the_backend() {
    let cases: &[(&str, &str)] = &[
        ("", r#"[1,2]"#),
        ("", r#"{"a":1"#),
        ("", r#"{"a":01}"#),
        ("", ""),
        ("", "\"just a string\""),
        (r#""is_collection": true"#, r#"{"a":1}"#),
        (r#""encoding": "xml""#, "<a><b></a>"),
        (r#""encoding": "xml""#, "<!DOCTYPE a [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><a>&x;</a>"),
        (r#""encoding": "xml""#, "<a/><b/>"),
    ];
    for (fields, body) in cases {
        let cfg = format!(
            r#"{{"version": 3, "host": ["http://backend:8000"], "extra_config": {{"router": {{"return_error_msg": true}}}},
                "endpoints": [{{"endpoint": "/api/{{id}}", "backend": [{{"url_pattern": "/a", {fields}}}, {{"url_pattern": "/ok"}}]}}]}}"#,
            fields = if fields.is_empty() { r#""group": "first""# } else { fields }
        );
        let out =
            run(&cfg, get("/api/1"), |i| if i == 0 { Canned::Json(body) } else { Canned::Json(r#"{"ok":true}"#) });
        assert_eq!(out.reply.status, 200, "{fields} {body:?}");
        assert_eq!(out.body(), r#"{"ok":true}"#, "{fields} {body:?}");
        assert_eq!(out.header("x-krakend-completed"), Some("false"), "{fields} {body:?}");
    }
}

#[test]
fn failing_backends_give_partial_or_500() {
    let two = r#"[{"url_pattern": "/a"}, {"url_pattern": "/b"}]"#;
    let cfg = one(r#""cache_ttl": "60s","#, two);
    for failing in [
        Canned::Status(404, "nope"),
        Canned::Status(500, "boom"),
        Canned::Fail("connection refused"),
        Canned::Status(204, ""),
        Canned::Status(302, ""),
    ] {
        let out = run(&cfg, get("/api/1"), |i| if i == 0 { failing.clone() } else { Canned::Json(r#"{"b":1}"#) });
        assert_eq!(
            out.show(),
            "200\ncontent-type: application/json; charset=utf-8\nx-krakend-completed: false\n\n{\"b\":1}"
        );
    }
    // 201 counts as success.
    let out = run(&cfg, get("/api/1"), |i| {
        if i == 0 { Canned::Typed(201, "application/json", r#"{"a":1}"#) } else { Canned::Json(r#"{"b":1}"#) }
    });
    assert_eq!(out.body(), r#"{"a":1,"b":1}"#);
    assert_eq!(out.header("x-krakend-completed"), Some("true"));
    // Nothing to return: 500, no reason without return_error_msg.
    let out = run(&cfg, get("/api/1"), |_| Canned::Status(503, "down"));
    assert_eq!(out.show(), "500\ncontent-type: text/plain; charset=utf-8\nx-krakend-completed: false\n\n");
    let cfg = format!(
        r#"{{"version": 3, "host": ["http://backend:8000"], "extra_config": {{"router": {{"return_error_msg": true}}}},
            "endpoints": [{{"endpoint": "/api/{{id}}", "backend": {two}}}]}}"#
    );
    let out =
        run(
            &cfg,
            get("/api/1"),
            |i| if i == 0 { Canned::Status(503, "down") } else { Canned::Fail("connection reset") },
        );
    assert_eq!(
        out.show(),
        "500\ncontent-type: text/plain; charset=utf-8\nx-krakend-completed: false\n\ninvalid status code 503 [GET /a]: http://backend:8000/a\n[GET /b]: http://backend:8000/b: connection reset"
    );
}

#[test]
fn return_error_code_and_details() {
    let cfg = |router: &str, http: &str| {
        format!(
            r#"{{"version": 3, "host": ["http://backend:8000"], "extra_config": {{"router": {{{router}}}}},
                "endpoints": [{{"endpoint": "/api/{{id}}", "backend": [
                    {{"url_pattern": "/a", "extra_config": {{"backend/http": {{{http}}}}}}},
                    {{"url_pattern": "/b"}}]}}]}}"#
        )
    };
    let answer = |i| {
        if i == 0 {
            Canned::Typed(404, "application/json", r#"{"error":"no user"}"#)
        } else {
            Canned::Json(r#"{"b":1}"#)
        }
    };
    let out = run(&cfg("", r#""return_error_code": true"#), get("/api/1"), answer);
    assert_eq!(out.show(), "404\nx-krakend-completed: false\n\n");
    let out = run(&cfg(r#""return_error_msg": true"#, r#""return_error_code": true"#), get("/api/1"), answer);
    assert_eq!(
        out.show(),
        "404\ncontent-type: application/json\nx-krakend-completed: false\n\n{\"error\":\"no user\"}"
    );
    let out = run(&cfg("", r#""return_error_details": "users""#), get("/api/1"), answer);
    assert_eq!(
        out.show(),
        "200\ncontent-type: application/json; charset=utf-8\nx-krakend-completed: false\n\n\
         {\"error_users\":{\"http_status_code\":404,\"http_body\":\"{\\\"error\\\":\\\"no user\\\"}\",\"http_body_encoding\":\"application/json\"},\"b\":1}"
    );
    // A success needs neither.
    let out = run(&cfg("", r#""return_error_code": true, "return_error_details": "users""#), get("/api/1"), |_| {
        Canned::Json(r#"{"a":1}"#)
    });
    assert_eq!(out.body(), r#"{"a":1}"#);
    assert_eq!(out.header("x-krakend-completed"), Some("true"));
}

#[test]
fn endpoint_timeout_cuts_slow_backends() {
    let cfg =
        one(r#""timeout": "800ms", "cache_ttl": "60s","#, r#"[{"url_pattern": "/fast"}, {"url_pattern": "/slow"}]"#);
    let out = run(&cfg, get("/api/1"), |i| if i == 0 { Canned::Json(r#"{"fast":true}"#) } else { Canned::Hang });
    assert_eq!(
        out.show(),
        "200\ncontent-type: application/json; charset=utf-8\nx-krakend-completed: false\n\n{\"fast\":true}"
    );
    assert_eq!(out.elapsed, Duration::from_millis(800));
    let out = run(&cfg, get("/api/1"), |_| Canned::Hang);
    assert_eq!(out.reply.status, 500);
    assert_eq!(out.elapsed, Duration::from_millis(800));
    // The root timeout applies when the endpoint has none.
    let out = run(&one("", r#"[{"url_pattern": "/slow"}]"#), get("/api/1"), |_| Canned::Hang);
    assert_eq!(out.elapsed, Duration::from_secs(2));
    assert_eq!(out.reply.status, 500);
}

#[test]
fn late_answers_and_unknown_ids_are_ignored() {
    let gw = Gateway::load(&one(r#""timeout": "1s","#, r#"[{"url_pattern": "/a"}]"#)).unwrap().gateway;
    let t0 = Instant::now();
    let Dispatch::Endpoint(route) = gw.dispatch(&Method::GET, "/api/1", None) else { panic!() };
    let mut ex = Exchange::new(&gw, route, bare_get("/api/1"), (t0, wall()));
    let lb = Balancer::new(gw.backend_count);
    assert!(matches!(ex.poll(&lb), Action::Call(_)));
    ex.handle_response(7, StatusCode::OK, HeaderMap::new(), b"{}".to_vec());
    ex.handle_timeout(t0 + Duration::from_millis(999));
    assert!(matches!(ex.poll(&lb), Action::Wait(d) if d == t0 + Duration::from_secs(1)));
    ex.handle_timeout(t0 + Duration::from_secs(1));
    assert!(matches!(ex.poll(&lb), Action::Respond(r) if r.status == 500));
    ex.handle_response(0, StatusCode::OK, HeaderMap::new(), b"{}".to_vec());
    assert!(matches!(ex.poll(&lb), Action::Done));
}

const SEQ: &str = r#""extra_config": {"proxy": {"sequential": true}},"#;

#[test]
fn sequential_uses_earlier_responses() {
    let cfg = one(
        SEQ,
        r#"[{"url_pattern": "/users/{id}", "group": "user"},
            {"url_pattern": "/orders/{resp0_user.items.1.id}/{resp0_user.name}?total={resp0_user.items.0.total}"},
            {"url_pattern": "/flags/{resp1_flag}", "group": "flags"}]"#,
    );
    let out = run(&cfg, get("/api/7"), |i| match i {
        0 => Canned::Json(r#"{"name":"A b/c","items":[{"id":"o-1","total":1.50},{"id":"o 2"}]}"#),
        1 => Canned::Json(r#"{"flag":true}"#),
        _ => Canned::Json(r#"{"on":1}"#),
    });
    assert_eq!(
        out.calls.iter().map(|c| c.lines().next().unwrap()).collect::<Vec<_>>(),
        ["GET /users/7 HTTP/1.1", "GET /orders/o%202/A%20b%2Fc?total=1.50 HTTP/1.1", "GET /flags/true HTTP/1.1"]
    );
    assert_eq!(
        out.body(),
        r#"{"user":{"name":"A b/c","items":[{"id":"o-1","total":1.50},{"id":"o 2"}]},"flag":true,"flags":{"on":1}}"#
    );
    assert_eq!(out.header("x-krakend-completed"), Some("true"));
}

#[test]
fn sequential_first_failure_fails_the_request() {
    let cfg = one(SEQ, r#"[{"url_pattern": "/a"}, {"url_pattern": "/b/{resp0_x}"}, {"url_pattern": "/c"}]"#);
    let out = run(&cfg, get("/api/7"), |_| Canned::Status(500, "x"));
    assert_eq!(out.reply.status, 500);
    assert_eq!(out.calls.len(), 1);
}

#[test]
fn sequential_later_failure_is_partial() {
    let cfg = one(SEQ, r#"[{"url_pattern": "/a"}, {"url_pattern": "/b/{resp0_x}"}, {"url_pattern": "/c"}]"#);
    let out = run(&cfg, get("/api/7"), |i| if i == 0 { Canned::Json(r#"{"x":"1"}"#) } else { Canned::Fail("reset") });
    assert_eq!(
        out.show(),
        "200\ncontent-type: application/json; charset=utf-8\nx-krakend-completed: false\n\n{\"x\":\"1\"}"
    );
    assert_eq!(out.calls.len(), 2);
    // A value that is missing fails that call (not the request).
    let body = r#"{"y":1}"#;
    let out = run(&cfg, get("/api/7"), |i| if i == 0 { Canned::Json(body) } else { Canned::Json(r#"{"c":1}"#) });
    assert_eq!(out.body(), body);
    assert_eq!(out.header("x-krakend-completed"), Some("false"));
    assert_eq!(out.calls.len(), 1);
    // null, objects and arrays are written as lura writes them, then encoded.
    for (body, path) in [
        (r#"{"x":null}"#, "/b/%3Cnil%3E"),
        (r#"{"x":{"b":[1,"a"],"a":true}}"#, "/b/map%5Ba:true%20b:%5B1%20a%5D%5D"),
        (r#"{"x":[1,"a b",2.50]}"#, "/b/1,a%20b,2.50"),
    ] {
        let out = run(&cfg, get("/api/7"), |i| if i == 0 { Canned::Json(body) } else { Canned::Json(r#"{"c":1}"#) });
        assert_eq!(out.calls.len(), 3, "{body}");
        assert!(out.calls[1].starts_with(&format!("GET {path} HTTP/1.1\r\n")), "{body}: {}", out.calls[1]);
    }
    // A dot segment from a response is refused the same way.
    let out =
        run(&cfg, get("/api/7"), |i| if i == 0 { Canned::Json(r#"{"x":".."}"#) } else { Canned::Json(r#"{"c":1}"#) });
    assert_eq!(out.calls.len(), 1);
    assert_eq!(out.header("x-krakend-completed"), Some("false"));
}

#[test]
fn sequential_timeout_mid_chain_is_partial() {
    let cfg = one(
        &format!(r#""timeout": "1s", {SEQ}"#),
        r#"[{"url_pattern": "/a"}, {"url_pattern": "/b"}, {"url_pattern": "/c"}]"#,
    );
    let out = run(&cfg, get("/api/7"), |i| if i == 0 { Canned::Json(r#"{"a":1}"#) } else { Canned::Hang });
    assert_eq!(out.body(), r#"{"a":1}"#);
    assert_eq!(out.header("x-krakend-completed"), Some("false"));
    assert_eq!(out.calls.len(), 2);
}

/// A `url_pattern` without placeholders is rendered once, when the gateway is planned
/// (`BackendPlan::fixed_path`): what reaches the backend is what rendering it per
/// request gave, the forwarded query included, and a literal dot segment is still
/// refused at each request.
#[test]
fn a_fixed_url_pattern_is_sent_as_rendered() {
    let rows: &[(&str, &str, &str)] = &[
        ("/users/profile?v=1", "/api/7?q=2&z=3", "/users/profile?v=1&q=2"),
        ("/users/profile", "/api/7?q=a%20b", "/users/profile?q=a%20b"),
        ("/", "/api/7?q=1", "/?q=1"),
        ("/a/./b", "/api/7", "400"),
        ("/a/%2E%2E/b", "/api/7", "400"),
        ("/a/x..y?p=../", "/api/7", "/a/x..y?p=../"),
    ];
    for (pattern, path, sent) in rows {
        let cfg = one(r#""input_query_strings": ["q"],"#, &format!(r#"[{{"url_pattern": "{pattern}"}}]"#));
        let gw = Gateway::load(&cfg).unwrap().gateway;
        let fixed = gw.endpoints[0].backends[0].fixed_path.as_deref();
        let out = run(&cfg, get(path), |_| Canned::Json("{}"));
        if *sent == "400" {
            assert_eq!(fixed, None, "{pattern}");
            assert_eq!(
                out.show(),
                "400\ncontent-type: text/plain; charset=utf-8\n\n400 bad request: the backend path would contain a dot segment",
                "{pattern}"
            );
            assert!(out.calls.is_empty(), "{pattern}");
        } else {
            assert!(fixed.is_some(), "{pattern}");
            assert_eq!(out.calls[0].lines().next().unwrap(), format!("GET {sent} HTTP/1.1"), "{pattern}");
        }
    }
    // One with a placeholder is rendered per request.
    let gw = Gateway::load(&one("", r#"[{"url_pattern": "/u/{id}"}]"#)).unwrap().gateway;
    assert_eq!(gw.endpoints[0].backends[0].fixed_path, None);
}

#[test]
fn parameters_cannot_change_the_backend_url() {
    let cfg = one("", r#"[{"url_pattern": "/users/{id}/profile?v=1"}]"#);
    let ok: &[(&str, &str)] = &[
        ("/api/42", "/users/42/profile?v=1"),
        ("/api/a%2Fb", "/users/a%2Fb/profile?v=1"),
        ("/api/a%2fadmin", "/users/a%2Fadmin/profile?v=1"),
        ("/api/%0D%0AX-Injected:%201", "/users/%0D%0AX-Injected:%201/profile?v=1"),
        ("/api/a&b=c", "/users/a%26b%3Dc/profile?v=1"),
        ("/api/...", "/users/.../profile?v=1"),
        ("/api/a..b", "/users/a..b/profile?v=1"),
        ("/api/caf%C3%A9", "/users/caf%C3%A9/profile?v=1"),
    ];
    for (path, backend) in ok {
        let out = run(&cfg, get(path), |_| Canned::Json("{}"));
        assert_eq!(out.reply.status, 200, "{path}");
        assert_eq!(out.calls[0].lines().next().unwrap(), format!("GET {backend} HTTP/1.1"), "{path}");
    }
    // A parameter encoded twice, or holding a bad escape, is refused as KrakenD's
    // parameter check refuses it; `disable_path_decoding` lets it through, re-encoded.
    let lenient = r#"{"version": 3, "host": ["http://backend:8000"], "extra_config": {"router": {"disable_path_decoding": true}},
            "endpoints": [{"endpoint": "/api/{id}", "backend": [{"url_pattern": "/users/{id}/profile?v=1"}]}]}"#;
    let refused: &[(&str, &str, &str)] = &[
        ("/api/%25252F", "error: encoded url params", "/users/%25252F/profile?v=1"),
        ("/api/100%25", "error: invalid URL escape \"%\"", "/users/100%25/profile?v=1"),
        ("/api/%zz", "error: invalid URL escape \"%zz\"", "/users/%25zz/profile?v=1"),
        ("/api/a%3Fx=1", "error: encoded url params", "/users/a%3Fx%3D1/profile?v=1"),
        ("/api/a%23frag", "error: encoded url params", "/users/a%23frag/profile?v=1"),
    ];
    for (path, said, backend) in refused {
        let out = run(&cfg, get(path), |_| Canned::Json("{}"));
        assert_eq!(out.show(), format!("400\ncontent-type: text/plain; charset=utf-8\n\n{said}"), "{path}");
        assert!(out.calls.is_empty());
        let out = run(lenient, get(path), |_| Canned::Json("{}"));
        assert_eq!(out.calls[0].lines().next().unwrap(), format!("GET {backend} HTTP/1.1"), "{path}");
    }
    for path in ["/api/..", "/api/%2E%2E", "/api/%2e", "/api/..%2Fadmin", "/api/x%2F..%2F..%2Fadmin", "/api/..%5Cadmin"]
    {
        let out = run(&cfg, get(path), |_| Canned::Json("{}"));
        assert_eq!(
            out.show(),
            "400\ncontent-type: text/plain; charset=utf-8\n\n400 bad request: the value of {id} is a dot segment",
            "{path}"
        );
        assert!(out.calls.is_empty(), "{path}");
    }
}

#[test]
fn input_header_placeholders_are_encoded() {
    let cfg = one(r#""input_headers": ["X-Tenant"],"#, r#"[{"url_pattern": "/t/{input_headers.X-Tenant}/x"}]"#);
    for (value, expected) in [("acme", "/t/acme/x"), ("a/b?c", "/t/a%2Fb%3Fc/x"), ("a%2F", "/t/a%252F/x")] {
        let mut req = get("/api/1");
        req.headers.push(("x-tenant", value));
        let out = run(&cfg, req, |_| Canned::Json("{}"));
        assert_eq!(out.calls[0].lines().next().unwrap(), format!("GET {expected} HTTP/1.1"));
    }
    let mut req = get("/api/1");
    req.headers.push(("x-tenant", ".."));
    assert_eq!(run(&cfg, req, |_| Canned::Json("{}")).reply.status, 400);
    // Missing: empty.
    let out = run(&cfg, get("/api/1"), |_| Canned::Json("{}"));
    assert_eq!(out.calls[0].lines().next().unwrap(), "GET /t//x HTTP/1.1");
}

#[test]
fn query_strings() {
    let target = "/api/1?a=1&b=2&a=3&c=%20x&d";
    let cases: &[(&str, &str, &str)] = &[
        ("", r#""url_pattern": "/x""#, "/x"),
        (r#""input_query_strings": ["a", "d"],"#, r#""url_pattern": "/x""#, "/x?a=1&a=3&d"),
        (r#""input_query_strings": ["*"],"#, r#""url_pattern": "/x""#, "/x?a=1&b=2&a=3&c=%20x&d"),
        (r#""input_query_strings": ["*"],"#, r#""url_pattern": "/x", "input_query_strings": ["b"]"#, "/x?b=2"),
        (
            r#""input_query_strings": ["a", "b"],"#,
            r#""url_pattern": "/x", "input_query_strings": ["b", "c"]"#,
            "/x?b=2",
        ),
        (r#""input_query_strings": ["c"],"#, r#""url_pattern": "/x?static=1""#, "/x?static=1&c=%20x"),
        (r#""input_query_strings": ["A"],"#, r#""url_pattern": "/x""#, "/x"),
    ];
    for (ep, backend, expected) in cases {
        let cfg = one(ep, &format!("[{{{backend}}}]"));
        let out = run(&cfg, get(target), |_| Canned::Json("{}"));
        assert_eq!(out.calls[0].lines().next().unwrap(), format!("GET {expected} HTTP/1.1"), "{ep} {backend}");
    }
}

fn headers_of(call: &str) -> Vec<&str> {
    call.split("\r\n").skip(1).take_while(|l| !l.is_empty()).collect()
}

#[test]
fn headers_forwarded_by_policy() {
    let client = vec![
        ("host", "gw.example"),
        ("content-type", "application/json"),
        ("x-tenant", "acme"),
        ("X-Other", "o"),
        ("connection", "keep-alive, x-secret-hop"),
        ("x-secret-hop", "s"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "evil"),
        ("proxy-authorization", "Basic eA=="),
        ("user-agent", "curl/8.5"),
        ("accept", "a"),
        ("accept", "b"),
        ("accept-encoding", "br"),
    ];
    let req = |c: &[(&'static str, &'static str)]| Req { headers: c.to_vec(), ..get("/api/1") };
    let cases: &[(&str, &[&str])] = &[
        (
            "",
            &[
                "host: backend:8000",
                "content-type: application/json",
                "x-forwarded-for: 10.0.0.1",
                "x-forwarded-host: gw.example",
                "user-agent: Sluice/0.1.0",
                "accept-encoding: gzip",
            ],
        ),
        (
            r#""input_headers": ["X-TENANT", "Accept", "X-Secret-Hop", "Connection"],"#,
            &[
                "host: backend:8000",
                "x-tenant: acme",
                "accept: a",
                "accept: b",
                "content-type: application/json",
                "x-forwarded-for: 10.0.0.1",
                "x-forwarded-host: gw.example",
                "user-agent: Sluice/0.1.0",
                "accept-encoding: gzip",
            ],
        ),
        (
            r#""input_headers": ["*"],"#,
            &[
                "host: backend:8000",
                "content-type: application/json",
                "x-tenant: acme",
                "x-other: o",
                "user-agent: curl/8.5",
                "accept: a",
                "accept: b",
                // The client's own Accept-Encoding is forwarded: no gzip is asked for.
                "accept-encoding: br",
                "x-forwarded-for: 10.0.0.1",
                "x-forwarded-host: gw.example",
                "x-forwarded-via: Sluice/0.1.0",
            ],
        ),
    ];
    for (ep, expected) in cases {
        let out = run(&one(ep, r#"[{"url_pattern": "/x"}]"#), req(&client), |_| Canned::Json("{}"));
        assert_eq!(headers_of(&out.calls[0]), *expected, "{ep}");
    }
    // A backend-level list filters the endpoint's.
    let out = run(
        &one(
            r#""input_headers": ["X-Tenant", "X-Other"],"#,
            r#"[{"url_pattern": "/x", "input_headers": ["x-other"]}]"#,
        ),
        req(&client),
        |_| Canned::Json("{}"),
    );
    assert_eq!(headers_of(&out.calls[0])[1], "x-other: o");
    assert!(!out.calls[0].contains("acme"));
}

/// The backend head is written from the client's head as received: repeated fields
/// keep the client's order (a header map would have grouped them), names are
/// lowercased, and `Connection` tokens remove headers whatever their case.
#[test]
fn forwarded_headers_keep_the_client_order() {
    let client = vec![
        ("Host", "gw.example"),
        ("Accept", "a"),
        ("X-Tenant", "acme"),
        ("accept", "b"),
        ("Connection", "X-SECRET-HOP"),
        ("x-Secret-hop", "s"),
        ("CONTENT-TYPE", "text/plain"),
    ];
    let out = run(
        &one(r#""input_headers": ["*"],"#, r#"[{"url_pattern": "/x"}]"#),
        Req { headers: client, ..get("/api/1") },
        |_| Canned::Json("{}"),
    );
    assert_eq!(
        headers_of(&out.calls[0]),
        [
            "host: backend:8000",
            "accept: a",
            "x-tenant: acme",
            "accept: b",
            "content-type: text/plain",
            "x-forwarded-for: 10.0.0.1",
            "x-forwarded-host: gw.example",
            "user-agent: Sluice/0.1.0",
            "accept-encoding: gzip",
        ]
    );
}

#[test]
fn client_ip_from_trusted_proxies_only() {
    let cfg = |router: &str| {
        format!(
            r#"{{"version": 3, "host": ["http://b:1"], "extra_config": {{"router": {{{router}}}}},
                "endpoints": [{{"endpoint": "/api/{{id}}", "backend": [{{"url_pattern": "/x"}}]}}]}}"#
        )
    };
    let trusting = cfg(r#""forwarded_by_client_ip": true, "trusted_proxies": ["10.0.0.0/8"]"#);
    let xff = |cfg: &str, peer: &'static str, value: &'static str| {
        let req = Req { peer, headers: vec![("x-forwarded-for", value)], ..get("/api/1") };
        let out = run(cfg, req, |_| Canned::Json("{}"));
        headers_of(&out.calls[0]).iter().find_map(|h| h.strip_prefix("x-forwarded-for: ")).unwrap().to_string()
    };
    assert_eq!(xff(&cfg(""), "10.0.0.1", "1.2.3.4"), "10.0.0.1");
    assert_eq!(xff(&trusting, "10.0.0.1", "1.2.3.4"), "1.2.3.4");
    assert_eq!(xff(&trusting, "10.0.0.1", "9.9.9.9, 1.2.3.4, 10.0.0.7"), "1.2.3.4");
    assert_eq!(xff(&trusting, "10.0.0.1", "10.1.1.1, 10.0.0.7"), "10.1.1.1");
    assert_eq!(xff(&trusting, "10.0.0.1", "1.2.3.4, garbage"), "10.0.0.1");
    assert_eq!(xff(&trusting, "192.0.2.9", "1.2.3.4"), "192.0.2.9");
    let real_ip = cfg(
        r#""forwarded_by_client_ip": true, "trusted_proxies": ["10.0.0.1/32"], "remote_ip_headers": ["X-Real-IP"]"#,
    );
    let req = Req { headers: vec![("x-real-ip", "2001:db8::1"), ("x-forwarded-for", "1.1.1.1")], ..get("/api/1") };
    let out = run(&real_ip, req, |_| Canned::Json("{}"));
    assert!(headers_of(&out.calls[0]).contains(&"x-forwarded-for: 2001:db8::1"));
}

#[test]
fn methods_and_bodies() {
    let cfg = r#"{"version": 3, "host": ["http://b:1"], "extra_config": {"router": {"return_error_msg": true}},
        "endpoints": [{"endpoint": "/orders", "method": "POST", "input_headers": ["Content-Type"],
            "extra_config": {"proxy": {"sequential": true}},
            "backend": [{"url_pattern": "/validate", "method": "GET"}, {"url_pattern": "/orders"}]}]}"#;
    let req = Req {
        method: Method::POST,
        target: "/orders",
        headers: vec![("host", "gw"), ("content-type", "application/json")],
        body: Some(r#"{"item":1}"#),
        peer: "127.0.0.1",
    };
    let out = run(cfg, req, |i| Canned::Typed(if i == 0 { 200 } else { 201 }, "application/json", r#"{"ok":1}"#));
    assert_eq!(
        out.calls,
        [
            "GET /validate HTTP/1.1\r\nhost: b:1\r\ncontent-type: application/json\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-host: gw\r\nuser-agent: Sluice/0.1.0\r\naccept-encoding: gzip\r\n\r\n",
            "POST /orders HTTP/1.1\r\nhost: b:1\r\ncontent-type: application/json\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-host: gw\r\nuser-agent: Sluice/0.1.0\r\naccept-encoding: gzip\r\ncontent-length: 10\r\n\r\n{\"item\":1}",
        ]
    );
    assert_eq!(out.reply.status, 200);
    // An empty POST still says its length.
    let req = Req { method: Method::POST, target: "/orders", headers: vec![], body: None, peer: "127.0.0.1" };
    let out = run(cfg, req, |_| Canned::Json("{}"));
    assert!(out.calls[1].ends_with("content-length: 0\r\n\r\n"), "{}", out.calls[1]);
}

#[test]
fn hosts_are_balanced_round_robin() {
    let cfg = r#"{"version": 3, "endpoints": [{"endpoint": "/a", "backend": [
        {"host": ["http://h1:1", "http://h2:2", "http://h3"], "url_pattern": "/x"},
        {"host": ["https://only:8443"], "url_pattern": "/y"}]}]}"#;
    let gw = Gateway::load(cfg).unwrap().gateway;
    let lb = Balancer::new(gw.backend_count);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let out = run_on(&gw, &lb, get("/a"), |_| Canned::Json("{}"));
        seen.push(out.calls.iter().map(|c| headers_of(c)[0].to_string()).collect::<Vec<_>>().join(" "));
    }
    assert_eq!(
        seen,
        [
            "host: h1:1 host: only:8443",
            "host: h2:2 host: only:8443",
            "host: h3 host: only:8443",
            "host: h1:1 host: only:8443"
        ]
    );
}

#[test]
fn output_encodings() {
    const YAML: &str = "application/yaml; charset=utf-8";
    let cfg = |output: &str, backend: &str| {
        format!(
            r#"{{"version": 3, "host": ["http://b:1"], "endpoints": [{{"endpoint": "/a", "output_encoding": "{output}",
                "backend": [{backend}]}}]}}"#
        )
    };
    let list = r#"{"url_pattern": "/x", "is_collection": true}"#;
    let plain = r#"{"url_pattern": "/x"}"#;
    let text = r#"{"url_pattern": "/x", "encoding": "string"}"#;
    // (output_encoding, backend, body, Accept, content type, body out)
    type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, &'a str, &'a str);
    let cases: &[Case<'_>] = &[
        ("json-collection", list, r#"[1,"a"]"#, None, "application/json; charset=utf-8", r#"[1,"a"]"#),
        ("json-collection", plain, r#"{"a":1}"#, None, "application/json; charset=utf-8", "[]"),
        ("string", text, "hello <b>", None, "text/plain; charset=utf-8", "hello <b>"),
        ("string", plain, r#"{"content":"x\ty"}"#, None, "text/plain; charset=utf-8", "x\ty"),
        ("string", plain, r#"{"content":1}"#, None, "text/plain; charset=utf-8", ""),
        // As KrakenD's XML renderer writes them: keys in order, `<doc>` around more
        // than one, no declaration (the first is krakend-xml's own test case).
        (
            "xml",
            plain,
            r#"{"a":{"content":"supu & tupu"},"content":"tupu","foo":42}"#,
            None,
            "application/xml",
            "<doc><a><content>supu &amp; tupu</content></a><content>tupu</content><foo>42</foo></doc>",
        ),
        (
            "xml",
            plain,
            r##"{"user":{"-id":"7","name":"A & B","tags":["x","y"],"n":1.50,"nil":null,"#text":"t"},"bad key":true}"##,
            None,
            "application/xml",
            "<doc><bad_key>true</bad_key><user id=\"7\">t<n>1.50</n><name>A &amp; B</name><nil/><tags>x</tags><tags>y</tags></user></doc>",
        ),
        (
            "xml",
            plain,
            r#"{"user":{"-type":"admin","name":"ada"}}"#,
            None,
            "application/xml",
            r#"<user type="admin"><name>ada</name></user>"#,
        ),
        ("xml", plain, r#"{"list":[1,2]}"#, None, "application/xml", "<doc><list>1</list><list>2</list></doc>"),
        ("xml", plain, r#"{}"#, None, "application/xml", "<doc/>"),
        ("negotiate", plain, r#"{"a":1}"#, Some("application/xml"), "application/xml", "<a>1</a>"),
        (
            "yaml",
            plain,
            r#"{"name":"x","id":42,"ok":true,"tags":["a"]}"#,
            None,
            YAML,
            "id: \"42\"\nname: x\nok: true\ntags:\n- a\n",
        ),
        ("negotiate", plain, r#"{"a":{"b":"c"}}"#, Some("text/plain"), YAML, "a:\n  b: c\n"),
        ("negotiate", plain, r#"{"a":1}"#, Some("application/x-yaml"), YAML, "a: \"1\"\n"),
        ("negotiate", plain, r#"{"a":1}"#, Some("text/xml"), "application/json; charset=utf-8", r#"{"a":1}"#),
        (
            "negotiate",
            plain,
            r#"{"a":1}"#,
            Some("text/html, */*;q=0.1"),
            "application/json; charset=utf-8",
            r#"{"a":1}"#,
        ),
        ("negotiate", plain, r#"{"a":1}"#, None, "application/json; charset=utf-8", r#"{"a":1}"#),
        ("negotiate", text, "hi", Some("text/plain"), YAML, "content: hi\n"),
    ];
    for (output, backend, body, accept, ct, expected) in cases {
        let mut req = get("/a");
        if let Some(a) = accept {
            req.headers.push(("accept", a));
        }
        let out = run(&cfg(output, backend), req, |_| Canned::Json(body));
        assert_eq!(out.header("content-type"), Some(*ct), "{output} {body}");
        assert_eq!(out.body(), *expected, "{output} {body}");
    }
}

const NOOP: &str = r#"{"version": 3, "host": ["http://b:1"], "timeout": "1s",
    "endpoints": [{"endpoint": "/raw/{id}", "method": "POST", "output_encoding": "no-op", "input_query_strings": ["*"],
        "backend": [{"url_pattern": "/r/{id}", "encoding": "no-op"}]}]}"#;

#[test]
fn no_op_passes_the_backend_through() {
    let gw = Gateway::load(NOOP).unwrap().gateway;
    let Dispatch::Endpoint(route) = gw.dispatch(&Method::POST, "/raw/9", None) else { panic!() };
    assert!(route.streaming);
    let headers = Head::from_fields([("host", &b"gw"[..]), ("transfer-encoding", b"chunked")]);
    let req = ClientRequest {
        method: Method::POST,
        path: "/raw/9".into(),
        query: Some("q=1".into()),
        headers,
        peer: "127.0.0.1".parse().unwrap(),
        ends: None,
        body: RequestBody::Stream(sluice_core::http1::BodyLength::Unknown),
        token: None,
    };
    let t0 = Instant::now();
    let mut ex = Exchange::new(&gw, route, req, (t0, wall()));
    let lb = Balancer::new(1);
    let Action::Call(call) = ex.poll(&lb) else { panic!() };
    assert!(call.stream_response);
    let mut head = Vec::new();
    ex.write_head(&call, &mut head).unwrap();
    assert_eq!(
        String::from_utf8(head).unwrap(),
        "POST /r/9?q=1 HTTP/1.1\r\nhost: b:1\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-host: gw\r\nuser-agent: Sluice/0.1.0\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert!(matches!(ex.poll(&lb), Action::Wait(_)));
    // Which backend headers reach the client is core::conn's (tests/conn.rs,
    // no_op_passes_end_to_end_headers_only).
    ex.handle_head(0, StatusCode::IM_A_TEAPOT);
    let Action::Stream(s) = ex.poll(&lb) else { panic!() };
    assert_eq!(s.status, StatusCode::IM_A_TEAPOT);
    assert!(matches!(ex.poll(&lb), Action::Done));
}

#[test]
fn no_op_failures_are_502_and_504() {
    let post = || Req { method: Method::POST, ..get("/raw/1") };
    let out = run(NOOP, post(), |_| Canned::Fail("connection refused"));
    assert_eq!(out.show(), "502\ncontent-type: text/plain; charset=utf-8\nx-krakend-completed: false\n\n");
    let out = run(NOOP, post(), |_| Canned::Hang);
    assert_eq!(out.reply.status, 504);
    assert_eq!(out.elapsed, Duration::from_secs(1));
    // A backend error status is passed through, not replaced.
    let out = run(NOOP, post(), |_| Canned::Status(503, "busy"));
    // (its headers are written on by core::conn, not the exchange)
    assert_eq!(out.show(), "503\n\n<streamed>");
}

#[test]
fn routing_answers_and_builtins() {
    let cfg = r#"{"version": 3, "host": ["http://b:1"], "debug_endpoint": true, "echo_endpoint": true,
        "endpoints": [{"endpoint": "/a/{id}", "backend": [{"url_pattern": "/x"}]},
                      {"endpoint": "/b/", "backend": [{"url_pattern": "/x"}]}]}"#;
    let cases: &[(Method, &str, &str)] = &[
        (Method::GET, "/nope", "404\ncontent-type: text/plain\nx-krakend-completed: false\n\n404 page not found"),
        (
            Method::POST,
            "/a/1",
            "405\ncontent-type: text/plain\nx-krakend-completed: false\nallow: GET\n\n405 method not allowed",
        ),
        (Method::GET, "/b?x=1", "301\ncontent-type: text/plain; charset=utf-8\nlocation: /b/?x=1\n\n"),
        (
            Method::GET,
            "/__health",
            "200\ncontent-type: application/json; charset=utf-8\n\n{\"agents\":{},\"now\":\"2026-11-21T22:26:40Z\",\"status\":\"ok\"}",
        ),
        (
            Method::POST,
            "/__health",
            "405\ncontent-type: text/plain\nx-krakend-completed: false\nallow: GET\n\n405 method not allowed",
        ),
        (
            Method::DELETE,
            "/__debug/anything",
            "200\ncontent-type: application/json; charset=utf-8\n\n{\"message\":\"pong\"}",
        ),
    ];
    for (method, target, expected) in cases {
        let out = run(cfg, Req { method: method.clone(), ..get(target) }, |_| Canned::Json("{}"));
        assert_eq!(out.show(), *expected, "{method} {target}");
    }
    let req = Req {
        method: Method::PUT,
        target: "/__echo/a%20b?x=1&x=2&y=caf%C3%A9+ok",
        headers: vec![("host", "gw"), ("x-b", "2"), ("x-a", "1"), ("x-a", "0"), ("accept", "*/*")],
        body: Some("{\"k\":\"v\"}"),
        peer: "127.0.0.1",
    };
    let out = run(cfg, req, |_| Canned::Json("{}"));
    assert_eq!(
        out.body(),
        r#"{"req_uri":"/__echo/a%20b?x=1&x=2&y=caf%C3%A9+ok","req_uri_details":{"fragment":"","host":"","path":"/__echo/a b","query":"x=1&x=2&y=caf%C3%A9+ok","user":""},"req_method":"PUT","req_querystring":{"x":["1","2"],"y":["café ok"]},"req_body":"{\"k\":\"v\"}","req_headers":{"Accept":["*/*"],"X-A":["1","0"],"X-B":["2"]}}"#
    );
    // Built-ins are off unless enabled.
    let off = r#"{"version": 3, "host": ["http://b:1"], "endpoints": [{"endpoint": "/a", "backend": [{"url_pattern": "/x"}]}]}"#;
    assert_eq!(run(off, get("/__echo/x"), |_| Canned::Json("{}")).reply.status, 404);
    assert_eq!(run(off, get("/__debug/x"), |_| Canned::Json("{}")).reply.status, 404);
    assert_eq!(run(off, get("/__health"), |_| Canned::Json("{}")).reply.status, 200);
}

#[test]
fn the_example_config_aggregates_through_the_builtins() {
    // examples/krakend.json calls the gateway's own /__echo and /__debug: play them here.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/krakend.json")).unwrap();
    let gw = Gateway::load(&text).unwrap().gateway;
    let lb = Balancer::new(gw.backend_count);
    let mut req = get("/v1/profile/42?lang=en&drop=1");
    req.headers.push(("x-tenant", "acme"));
    let out = run_on(&gw, &lb, req, |i| {
        // Answer each call as the built-in it names would.
        if i == 0 {
            Canned::Json(
                r#"{"req_uri":"/__echo/users/42?lang=en","req_uri_details":{"fragment":"","host":"","path":"/__echo/users/42","query":"lang=en","user":""},"req_method":"GET","req_querystring":{"lang":["en"]},"req_body":"","req_headers":{"User-Agent":["Sluice/0.1.0"]}}"#,
            )
        } else {
            Canned::Json(r#"{"message":"pong"}"#)
        }
    });
    assert_eq!(
        out.calls.iter().map(|c| c.lines().next().unwrap()).collect::<Vec<_>>(),
        ["GET /__echo/users/42?lang=en HTTP/1.1", "GET /__debug/status?lang=en HTTP/1.1"]
    );
    assert!(out.calls[0].contains("\r\nx-tenant: acme\r\n"));
    assert_eq!(
        out.body(),
        r#"{"user":{"path":"/__echo/users/42?lang=en","req_method":"GET","req_querystring":{"lang":["en"]}},"status":"pong"}"#
    );
    assert_eq!(out.header("cache-control"), Some("public, max-age=300"));
}

#[test]
fn request_heads_become_client_requests_and_access_lines_leave_the_query_out() {
    use sluice_core::http1::{BodyLength, Framing, Limits, ServerConn, ServerEvent};
    use sluice_core::request::AccessLog;
    let mut server = ServerConn::new(Limits::default());
    let wire = b"POST /v1/items?token=secret HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let Ok((_, ServerEvent::Request(mut head))) = server.handle_input(wire) else { panic!("a request") };
    let peer: IpAddr = "192.0.2.7".parse().unwrap();
    let req = ClientRequest::from_head(&mut head, peer).unwrap();
    assert_eq!((req.method.as_str(), req.path(), req.query()), ("POST", "/v1/items", Some("token=secret")));
    assert_eq!(req.headers.get("authorization"), Some(&b"Bearer x"[..]));
    assert_eq!(req.body, RequestBody::None);
    assert_eq!(RequestBody::relayed(head.framing), RequestBody::Stream(BodyLength::Unknown));
    assert_eq!(RequestBody::relayed(Framing::Length(5)), RequestBody::Stream(BodyLength::Known(5)));
    assert_eq!(RequestBody::relayed(Framing::Length(0)), RequestBody::None);
    assert_eq!(RequestBody::relayed(Framing::None), RequestBody::None);
    let t0 = Instant::now();
    let line = AccessLog::new(&req, t0).line(StatusCode::CREATED, 42, t0 + Duration::from_micros(1250)).to_string();
    assert_eq!(line, "192.0.2.7 \"POST /v1/items\" 201 42 1.2ms");
    // Only origin-form targets reach the gateway.
    for target in ["http://gw/v1/items", "*"] {
        let mut server = ServerConn::new(Limits::default());
        let method = if target == "*" { "OPTIONS" } else { "GET" };
        let wire = format!("{method} {target} HTTP/1.1\r\nHost: gw\r\n\r\n");
        let Ok((_, ServerEvent::Request(mut head))) = server.handle_input(wire.as_bytes()) else { panic!("{target}") };
        assert_eq!(
            ClientRequest::from_head(&mut head, peer).unwrap_err(),
            "this gateway takes origin-form request targets (/path?query)"
        );
    }
}

/// A client plugin, as an embedding application binds one (a plain Rust object): it
/// sees each call as it would be sent, changes it, answers it itself, or fails; and it
/// changes the backend's answer before it is decoded.
#[derive(Debug, Default)]
struct Rewrite {
    done: std::sync::atomic::AtomicUsize,
}

impl sluice_core::gateway::plugin::ClientPlugin for Rewrite {
    fn on_request(
        &self,
        call: &mut sluice_core::gateway::plugin::BackendRequest,
    ) -> Result<sluice_core::gateway::plugin::Verdict, sluice_core::gateway::plugin::PluginFault> {
        use sluice_core::gateway::plugin::{BackendResponse, PluginFault, Verdict};
        assert_eq!(call.headers.get("x-forwarded-for").unwrap(), "10.0.0.1");
        match call.path.as_str() {
            "/a" => {
                call.method = Method::POST;
                call.path = "/a2".into();
                call.query = Some("k=v".into());
                call.authority = "other.example".into();
                call.headers.remove("user-agent");
                call.headers.insert("x-added", HeaderValue::from_static("yes"));
                // Framing is the gateway's: these are dropped, the length counted again.
                call.headers.insert("content-length", HeaderValue::from_static("999"));
                call.headers.insert("connection", HeaderValue::from_static("close"));
                call.body = b"{\"n\":1}".to_vec();
                call.ticket = 7;
                Ok(Verdict::Continue)
            }
            "/local" => Ok(Verdict::Respond(BackendResponse {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: br#"{"local":1}"#.to_vec(),
            })),
            _ => Err(PluginFault("no".into())),
        }
    }

    fn on_response(
        &self,
        call: &sluice_core::gateway::plugin::BackendRequest,
        response: &mut sluice_core::gateway::plugin::BackendResponse,
    ) -> Result<(), sluice_core::gateway::plugin::PluginFault> {
        assert_eq!((call.ticket, call.path.as_str()), (7, "/a2"));
        response.body = br#"{"changed":true}"#.to_vec();
        Ok(())
    }

    fn on_done(&self, _call: &sluice_core::gateway::plugin::BackendRequest) {
        self.done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn client_plugin_rewrites_answers_and_fails_calls() {
    let config = r#"{"version": 3, "host": ["http://b:1"], "extra_config": {"router": {"return_error_msg": true}},
        "endpoints": [{"endpoint": "/e", "backend": [
            {"url_pattern": "/a", "group": "a"}, {"url_pattern": "/local", "group": "l"},
            {"url_pattern": "/fails", "group": "f"}]}]}"#;
    let mut gw = Gateway::load(config).unwrap().gateway;
    let plugin = std::sync::Arc::new(Rewrite::default());
    for b in 0..3 {
        assert!(gw.bind_plugin(0, b, "rewrite", plugin.clone()));
    }
    let out = run_on(&gw, &Balancer::new(gw.backend_count), get("/e"), |_| Canned::Json(r#"{"x":1}"#));
    // Only the first backend is called, as the plugin left the call.
    assert_eq!(
        out.calls,
        vec![
            "POST /a2?k=v HTTP/1.1\r\nhost: other.example\r\nx-forwarded-for: 10.0.0.1\r\n\
             x-forwarded-host: gw.example\r\naccept-encoding: gzip\r\nx-added: yes\r\ncontent-length: 7\r\n\r\n{\"n\":1}"
        ]
    );
    assert_eq!(out.reply.status, 200);
    assert_eq!(out.body(), r#"{"a":{"changed":true},"l":{"local":1}}"#);
    assert_eq!(out.header("x-krakend-completed"), Some("false"), "the failed call makes it partial");
    assert_eq!(plugin.done.load(std::sync::atomic::Ordering::SeqCst), 3, "every call ends, however it ended");
}

/// As lura: a `no-op` backend of an aggregating endpoint is called, its answer is
/// neither decoded nor checked (a 500 counts as done) and adds nothing to the merge.
#[test]
fn a_no_op_backend_in_an_aggregating_endpoint_adds_nothing() {
    let cfg = r#"{"version": 3, "host": ["http://b:1"], "endpoints": [{"endpoint": "/a", "backend": [
        {"url_pattern": "/notify", "encoding": "no-op", "group": "hook"}, {"url_pattern": "/data"}]}]}"#;
    let out =
        run(cfg, get("/a"), |i| if i == 0 { Canned::Status(500, "not json") } else { Canned::Json(r#"{"a":1}"#) });
    assert_eq!(out.calls.len(), 2);
    assert_eq!(out.reply.status.as_u16(), 200);
    assert_eq!(out.header("x-krakend-completed"), Some("true"));
    assert_eq!(out.body(), r#"{"a":1}"#);
    // Alone, it gives an empty object; failing to connect still makes it incomplete.
    let alone = r#"{"version": 3, "host": ["http://b:1"], "endpoints": [{"endpoint": "/a", "backend": [
        {"url_pattern": "/notify", "encoding": "no-op"}, {"url_pattern": "/data", "encoding": "no-op"}]}]}"#;
    let out = run(alone, get("/a"), |i| if i == 0 { Canned::Status(404, "gone") } else { Canned::Fail("refused") });
    assert_eq!((out.reply.status.as_u16(), out.header("x-krakend-completed"), out.body()), (200, Some("false"), "{}"));
}

/// As Go's client asks for KrakenD: a backend whose body the gateway decodes is asked
/// for gzip, unless the client's `Accept-Encoding` or `Range` is forwarded; a `no-op`
/// backend is never asked (its body passes untouched).
#[test]
fn gzip_is_asked_for_bodies_the_gateway_decodes() {
    let asked = |endpoint: &str, backend: &str, req: Req<'_>| {
        let out = run(&one(endpoint, &format!("[{{\"url_pattern\": \"/x\"{backend}}}]")), req, |_| Canned::Json("{}"));
        headers_of(&out.calls[0])
            .iter()
            .filter(|h| h.starts_with("accept-encoding:"))
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(asked("", "", get("/api/1")), ["accept-encoding: gzip"]);
    // disable_compression (lura's root key): never asked.
    let quiet = r#"{"version": 3, "host": ["http://b:1"], "disable_compression": true,
        "endpoints": [{"endpoint": "/api/{id}", "backend": [{"url_pattern": "/x"}]}]}"#;
    let out = run(quiet, get("/api/1"), |_| Canned::Json("{}"));
    assert!(!out.calls[0].contains("accept-encoding"), "{}", out.calls[0]);
    let ranged = Req { headers: vec![("range", "bytes=0-9")], ..get("/api/1") };
    assert_eq!(asked(r#""input_headers": ["Range"],"#, "", ranged), Vec::<String>::new());
    let coded = Req { headers: vec![("accept-encoding", "gzip, br")], ..get("/api/1") };
    assert_eq!(asked(r#""output_encoding": "no-op","#, "", coded), Vec::<String>::new());
    let coded = Req { headers: vec![("accept-encoding", "gzip, br")], ..get("/api/1") };
    assert_eq!(
        asked(r#""output_encoding": "no-op", "input_headers": ["*"],"#, "", coded),
        ["accept-encoding: gzip, br"]
    );
}

#[test]
fn a_circuit_breaker_opens_refuses_and_closes_in_virtual_time() {
    let config = r#"{"version": 3, "host": ["http://backend:8000"], "extra_config": {"router": {"return_error_msg": true}},
        "endpoints": [{"endpoint": "/cb", "backend": [{"url_pattern": "/x", "extra_config": {"qos/circuit-breaker":
            {"interval": 60, "timeout": 10, "max_errors": 0, "name": "api", "log_status_change": true}}}]}]}"#;
    let gw = Gateway::load(config).unwrap().gateway;
    let lb = Balancer::new(gw.backend_count);
    let t0 = Instant::now();
    // One request at `at`, its call (if made) answered with `status`: the answer, the
    // calls made and the log lines.
    let request = |at: Instant, status: u16| -> (u16, String, usize, Vec<String>) {
        let Dispatch::Endpoint(route) = gw.dispatch(&Method::GET, "/cb", None) else { panic!("routed") };
        let mut ex = Exchange::new(&gw, route, bare_get("/cb"), (at, wall()));
        let (mut calls, mut logs) = (0, Vec::new());
        loop {
            let action = ex.poll(&lb);
            logs.extend(ex.take_logs().map(|l| l.to_string()));
            match action {
                Action::Call(call) => {
                    calls += 1;
                    ex.handle_response(
                        call.id,
                        StatusCode::from_u16(status).unwrap(),
                        HeaderMap::new(),
                        b"{}".to_vec(),
                    );
                }
                Action::Respond(r) => {
                    return (r.status.as_u16(), String::from_utf8(r.body).unwrap(), calls, logs);
                }
                other => panic!("{other:?}"),
            }
        }
    };
    let open = "[CB] Circuit breaker named 'api' went from 'closed' to 'open'".to_string();
    let failed = "invalid status code 503 [GET /x]: http://backend:8000/x".to_string();
    assert_eq!(request(t0, 503), (500, failed.clone(), 1, vec![open]));
    assert_eq!(request(t0 + Duration::from_secs(9), 200), (500, "circuit breaker is open".into(), 0, vec![]));
    // After `timeout`, one call through: it fails, and the breaker opens again.
    assert_eq!(
        request(t0 + Duration::from_secs(10), 503),
        (
            500,
            failed,
            1,
            vec![
                "[CB] Circuit breaker named 'api' went from 'open' to 'half-open'".into(),
                "[CB] Circuit breaker named 'api' went from 'half-open' to 'open'".into()
            ]
        )
    );
    assert_eq!(request(t0 + Duration::from_secs(19), 200).2, 0);
    let (status, body, calls, logs) = request(t0 + Duration::from_secs(20), 200);
    assert_eq!((status, body.as_str(), calls), (200, "{}", 1));
    assert_eq!(
        logs.last().map(String::as_str),
        Some("[CB] Circuit breaker named 'api' went from 'half-open' to 'closed'")
    );
    // A call that could not be sent is not counted: the breaker (max_errors 0) stays
    // closed.
    let Dispatch::Endpoint(route) = gw.dispatch(&Method::GET, "/cb", None) else { panic!("routed") };
    let mut ex = Exchange::new(&gw, route, bare_get("/cb"), (t0 + Duration::from_secs(21), wall()));
    let Action::Call(call) = ex.poll(&lb) else { panic!("a call") };
    ex.handle_unsent(call.id, "no connection");
    assert!(matches!(ex.poll(&lb), Action::Respond(r) if r.status == StatusCode::INTERNAL_SERVER_ERROR));
    drop(ex);
    assert_eq!(request(t0 + Duration::from_secs(21), 200).2, 1);
}
