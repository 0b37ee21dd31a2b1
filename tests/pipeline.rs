//! KrakenD's pipeline features end to end on every driver, curl as the client, with
//! exact bodies and fields: static data (`proxy.static`, every strategy), flatmap
//! filters on a backend and on an endpoint, sequential parameters (`{respN_...}` and
//! `sequential_propagated_params`), a backend's circuit breaker opening, refusing and
//! closing again (with its state on the admin page), and martian modifiers on the
//! backend call and on a streamed answer.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{Backend, Got, Gw, Mode, Reply, curl};

every_driver!(static_responses, flatmap_filters, sequential_params, circuit_breaker, martian_modifiers);

const FAIL: &[u8] = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nnope";

fn get(gw: &Gw, path: &str) -> Got {
    curl(&[&format!("http://{}{path}", gw.addr)])
}

/// Status, body and `X-KrakenD-Completed`.
fn answer(g: &Got) -> (u16, &str, Option<&str>) {
    (g.status, g.body.as_str(), g.field("x-krakend-completed"))
}

fn static_responses(mode: Mode) {
    let api = Backend::start(|_| Reply::Json(r#"{"message":"pong"}"#.into()));
    let down = Backend::start(|_| Reply::Raw(FAIL.to_vec()));
    let (api, down) = (api.url(), down.url());
    let endpoint = |path: &str, backends: &[(&str, &str)], strategy: &str, data: &str| {
        let list: Vec<String> = backends
            .iter()
            .map(|(host, extra)| format!(r#"{{"host": ["{host}"], "url_pattern": "/" {extra}}}"#))
            .collect();
        format!(
            r#"{{"endpoint": "{path}", "backend": [{}],
                "extra_config": {{"proxy": {{"static": {{"strategy": "{strategy}", "data": {data}}}}}}}}}"#,
            list.join(",")
        )
    };
    let eps = [
        // KrakenD CE's own fixture (specs/static.json): the backend's data denied away.
        endpoint("/static", &[(&api, r#", "deny": ["message"]"#)], "always", r#"{"foo": 42, "bar": "foobar"}"#),
        endpoint("/errored", &[(&api, r#", "group": "a""#), (&down, "")], "errored", r#"{"fallback": true}"#),
        endpoint("/errored-all", &[(&down, "")], "errored", r#"{"fallback": true}"#),
        endpoint("/incomplete", &[(&api, r#", "group": "a""#), (&down, "")], "incomplete", r#"{"fallback": 1}"#),
        endpoint("/success-down", &[(&down, "")], "success", r#"{"s": 1}"#),
        endpoint("/success", &[(&api, "")], "success", r#"{"message": "static", "more": [1, 2]}"#),
        endpoint("/complete-down", &[(&api, r#", "group": "a""#), (&down, "")], "complete", r#"{"c": 1}"#),
        endpoint("/errored-ok", &[(&api, "")], "errored", r#"{"e": 1}"#),
        // A status with return_error_details is data, not an error (lura's): `success`
        // matches, `errored` does not.
        endpoint(
            "/details",
            &[
                (&api, r#", "group": "a""#),
                (&down, r#", "extra_config": {"backend/http": {"return_error_details": "d"}}"#),
            ],
            "success",
            r#"{"s": 1}"#,
        ),
        endpoint(
            "/details-errored",
            &[(&down, r#", "extra_config": {"backend/http": {"return_error_details": "d"}}"#)],
            "errored",
            r#"{"s": 1}"#,
        ),
    ];
    let config = format!(r#"{{"version": 3, "cache_ttl": "1h", "endpoints": [{}]}}"#, eps.join(","));
    let gw = Gw::start(&config, mode);

    let g = get(&gw, "/static");
    assert_eq!(answer(&g), (200, r#"{"foo":42,"bar":"foobar"}"#, Some("true")));
    assert_eq!(g.field("cache-control"), Some("public, max-age=3600"));
    assert_eq!(g.field("content-type"), Some("application/json; charset=utf-8"));
    // A failure with static data is an answer: 200, the data over what came, never
    // complete (and so never cached).
    let g = get(&gw, "/errored");
    assert_eq!(answer(&g), (200, r#"{"a":{"message":"pong"},"fallback":true}"#, Some("false")));
    assert_eq!(g.field("cache-control"), None);
    assert_eq!(answer(&get(&gw, "/errored-all")), (200, r#"{"fallback":true}"#, Some("false")));
    assert_eq!(answer(&get(&gw, "/incomplete")), (200, r#"{"a":{"message":"pong"},"fallback":1}"#, Some("false")));
    // Strategies that do not match leave the answer as it was.
    assert_eq!(answer(&get(&gw, "/success-down")), (500, "", Some("false")));
    assert_eq!(answer(&get(&gw, "/complete-down")), (200, r#"{"a":{"message":"pong"}}"#, Some("false")));
    assert_eq!(answer(&get(&gw, "/errored-ok")), (200, r#"{"message":"pong"}"#, Some("true")));
    let details = r#""error_d":{"http_status_code":500,"http_body":"nope","http_body_encoding":""}"#;
    assert_eq!(
        answer(&get(&gw, "/details")),
        (200, format!(r#"{{"a":{{"message":"pong"}},{details},"s":1}}"#).as_str(), Some("false"))
    );
    assert_eq!(answer(&get(&gw, "/details-errored")), (200, format!("{{{details}}}").as_str(), Some("false")));
    // Static data replaces a backend's key of the same name.
    assert_eq!(answer(&get(&gw, "/success")), (200, r#"{"message":"static","more":[1,2]}"#, Some("true")));
}

fn flatmap_filters(mode: Mode) {
    // KrakenD CE's fixture (specs/flatmap_1.json): a collection of {path, i}.
    let coll = Backend::start(|seen| {
        let path = seen.head.split(' ').nth(1).unwrap_or_default().to_string();
        let items: Vec<String> = (0..3).map(|i| format!(r#"{{"path":"{path}","i":{i}}}"#)).collect();
        Reply::Json(format!("[{}]", items.join(",")))
    });
    let users =
        Backend::start(|_| Reply::Json(r#"{"users":[{"id":1,"name":"a"},{"id":2,"name":"b"}],"page":{"n":1}}"#.into()));
    let meta = Backend::start(|_| Reply::Json(r#"{"total":2,"tags":["x"]}"#.into()));
    let down = Backend::start(|_| Reply::Raw(FAIL.to_vec()));
    let config = format!(
        r#"{{"version": 3, "endpoints": [
            {{"endpoint": "/flatmap/{{id}}", "backend": [{{"host": ["{coll}"], "url_pattern": "/collection/{{id}}",
                "is_collection": true, "extra_config": {{"proxy": {{"flatmap_filter": [
                    {{"type": "move", "args": ["collection", "paths"]}},
                    {{"type": "del", "args": ["paths.*.i"]}},
                    {{"type": "move", "args": ["paths.*.path", "paths.*.url"]}}]}}}}}}]}},
            {{"endpoint": "/merged", "backend": [
                {{"host": ["{users}"], "url_pattern": "/"}},
                {{"host": ["{meta}"], "url_pattern": "/", "group": "meta"}}],
              "extra_config": {{"proxy": {{"flatmap_filter": [
                    {{"type": "move", "args": ["users.*.name", "users.*.login"]}},
                    {{"type": "append", "args": ["meta.tags", "users"]}},
                    {{"type": "del", "args": ["page", "meta.total"]}}]}}}}}},
            {{"endpoint": "/partial", "backend": [
                {{"host": ["{users}"], "url_pattern": "/"}},
                {{"host": ["{down}"], "url_pattern": "/"}}],
              "extra_config": {{"proxy": {{"flatmap_filter": [{{"type": "del", "args": ["users"]}}]}}}}}}]}}"#,
        coll = coll.url(),
        users = users.url(),
        meta = meta.url(),
        down = down.url()
    );
    let gw = Gw::start(&config, mode);
    let url = r#"{"url":"/collection/2"}"#;
    assert_eq!(
        answer(&get(&gw, "/flatmap/2")),
        (200, format!(r#"{{"paths":[{url},{url},{url}]}}"#).as_str(), Some("true"))
    );
    // On the merged answer: names moved in every item, an array appended, keys deleted
    // (the emptied `meta` left as null, as flatmap leaves it).
    assert_eq!(
        answer(&get(&gw, "/merged")),
        (200, r#"{"users":[{"id":1,"login":"a"},{"id":2,"login":"b"},"x"],"meta":null}"#, Some("true"))
    );
    // A merge some backend failed is passed on unfiltered (lura's).
    assert_eq!(
        answer(&get(&gw, "/partial")),
        (200, r#"{"users":[{"id":1,"name":"a"},{"id":2,"name":"b"}],"page":{"n":1}}"#, Some("false"))
    );
}

fn sequential_params(mode: Mode) {
    let first = Backend::start(|_| Reply::Json(r#"{"foo":42,"ids":[1,"a"],"first":{"foo":"x y"},"flag":true}"#.into()));
    let next = Backend::start(|_| Reply::Json(r#"{"second":true}"#.into()));
    let endpoint = |path: &str, check: &str| {
        format!(
            r#"{{"endpoint": "{path}", "backend": [
                {{"host": ["{}"], "url_pattern": "/param/{{p}}", "allow": ["foo", "ids", "first", "flag"]}},
                {{"host": ["{}"], "url_pattern": "/next/{{resp0_foo}}/{{resp0_ids}}/{{resp0_flag}}/{{resp0_first.foo}}",
                  "group": "next", "extra_config": {{"validation/cel": [{{"check_expr": "{check}"}}]}}}}],
              "extra_config": {{"proxy": {{"sequential": true, "sequential_propagated_params": ["resp0_first.foo", "resp0_foo"]}}}}}}"#,
            first.url(),
            next.url()
        )
    };
    let config = format!(
        r#"{{"version": 3, "endpoints": [{}, {}]}}"#,
        endpoint("/seq/{p}", "req_params['Resp0_first.foo'] == 'x y' && req_params.Resp0_foo == '42'"),
        endpoint("/refused/{p}", "req_params['Resp0_first.foo'] == 'nope'")
    );
    let gw = Gw::start(&config, mode);
    let g = get(&gw, "/seq/abc");
    assert_eq!(
        answer(&g),
        (200, r#"{"foo":42,"ids":[1,"a"],"first":{"foo":"x y"},"flag":true,"next":{"second":true}}"#, Some("true"))
    );
    // Values as lura writes them: numbers as written, arrays joined by commas.
    let seen: Vec<String> = next.requests().iter().map(|s| s.head.lines().next().unwrap().to_string()).collect();
    assert_eq!(seen, ["GET /next/42/1,a/true/x%20y HTTP/1.1"]);
    assert_eq!(first.requests()[0].head.lines().next(), Some("GET /param/abc HTTP/1.1"));
    // The second backend's check reads the propagated parameter and refuses: the
    // sequence ends there, its first answer passed on as partial.
    let g = get(&gw, "/refused/abc");
    assert_eq!(answer(&g), (200, r#"{"foo":42,"ids":[1,"a"],"first":{"foo":"x y"},"flag":true}"#, Some("false")));
    assert_eq!(next.requests().len(), 1);
}

fn circuit_breaker(mode: Mode) {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let api = Backend::start(move |_| {
        if h.load(Ordering::SeqCst) { Reply::Json(r#"{"ok":true}"#.into()) } else { Reply::Raw(FAIL.to_vec()) }
    });
    let config = format!(
        r#"{{"version": 3, "extra_config": {{"router": {{"return_error_msg": true}}, "sluice/admin": {{}}}},
            "endpoints": [{{"endpoint": "/cb", "backend": [{{"host": ["{}"], "url_pattern": "/fail",
                "extra_config": {{"qos/circuit-breaker": {{"interval": 60, "timeout": 1, "max_errors": 1,
                                   "name": "cb-test", "log_status_change": true}}}}}}]}}]}}"#,
        api.url()
    );
    let gw = Gw::start(&config, mode);
    let admin = |gw: &Gw| {
        let page = curl(&[&format!("http://{}/stats", gw.admin.unwrap())]).body;
        page.lines().filter(|l| l.contains("circuit_breaker")).map(str::to_string).collect::<Vec<_>>()
    };
    let failed = format!("invalid status code 500 [GET /fail]: {}/fail", api.url());
    // max_errors 1: the second failure in a row opens it.
    assert_eq!(answer(&get(&gw, "/cb")), (500, failed.as_str(), Some("false")));
    assert_eq!(
        admin(&gw),
        [
            "gateway.endpoint.GET /cb.backend.0.circuit_breaker.consecutive_failures: 1",
            "gateway.endpoint.GET /cb.backend.0.circuit_breaker.state: 0"
        ]
    );
    assert_eq!(answer(&get(&gw, "/cb")), (500, failed.as_str(), Some("false")));
    // Open: refused without a call, with gobreaker's words.
    assert_eq!(answer(&get(&gw, "/cb")), (500, "circuit breaker is open", Some("false")));
    assert_eq!(answer(&get(&gw, "/cb")), (500, "circuit breaker is open", Some("false")));
    assert_eq!(api.requests().len(), 2);
    assert_eq!(
        admin(&gw),
        [
            "gateway.endpoint.GET /cb.backend.0.circuit_breaker.consecutive_failures: 0",
            "gateway.endpoint.GET /cb.backend.0.circuit_breaker.state: 1"
        ]
    );
    let prom = curl(&[&format!("http://{}/stats/prometheus", gw.admin.unwrap())]).body;
    assert!(
        prom.contains(
            "sluice_gateway_circuit_breaker_state{method=\"GET\",endpoint=\"/cb\",backend=\"0\",name=\"cb-test\"} 1\n"
        ),
        "{prom}"
    );
    // After `timeout` one call goes through; it succeeds, and the breaker closes.
    healthy.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(answer(&get(&gw, "/cb")), (200, r#"{"ok":true}"#, Some("true")));
    assert_eq!(answer(&get(&gw, "/cb")), (200, r#"{"ok":true}"#, Some("true")));
    assert_eq!(api.requests().len(), 4);
    assert_eq!(admin(&gw)[1], "gateway.endpoint.GET /cb.backend.0.circuit_breaker.state: 0");
}

/// A header field of a request a backend saw, by name (any case).
fn field<'s>(head: &'s str, name: &str) -> Vec<&'s str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

fn martian_modifiers(mode: Mode) {
    let api = Backend::start(|_| Reply::Json(r#"{"ok":true}"#.into()));
    let raw = Backend::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Secret: s3\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        )
    });
    let elsewhere = Backend::start(|_| Reply::Json(r#"{"where":"elsewhere"}"#.into()));
    let config = format!(
        r#"{{"version": 3, "endpoints": [
            {{"endpoint": "/m", "method": "POST", "input_headers": ["X-Drop", "Cookie", "Content-Type"],
              "input_query_strings": ["z", "q"],
              "backend": [{{"host": ["{api}"], "url_pattern": "/m", "extra_config": {{"modifier/martian":
                {{"fifo.Group": {{"scope": ["request", "response"], "aggregateErrors": true, "modifiers": [
                    {{"header.Modifier": {{"scope": ["request"], "name": "X-Added", "value": "yes"}}}},
                    {{"header.Append": {{"scope": ["request"], "name": "X-Added", "value": "again"}}}},
                    {{"header.Blacklist": {{"scope": ["request"], "names": ["X-Drop"]}}}},
                    {{"querystring.Modifier": {{"scope": ["request"], "name": "q", "value": "a b"}}}},
                    {{"cookie.Modifier": {{"scope": ["request"], "name": "s", "value": "t"}}}},
                    {{"body.Modifier": {{"scope": ["request"], "contentType": "application/json",
                                         "body": "eyJtc2ciOiJ5b3Ugcm9jayEifQ=="}}}}]}}}}}}}}]}},
            {{"endpoint": "/raw", "output_encoding": "no-op", "backend": [{{"host": ["{raw}"], "url_pattern": "/",
              "extra_config": {{"modifier/martian": {{"fifo.Group": {{"modifiers": [
                    {{"header.Modifier": {{"scope": ["response"], "name": "X-Resp", "value": "1"}}}},
                    {{"header.Blacklist": {{"scope": ["response"], "names": ["X-Secret"]}}}},
                    {{"cookie.Modifier": {{"scope": ["response"], "name": "sid", "value": "v", "path": "/",
                                           "maxAge": 60, "secure": true}}}}]}}}}}}}}]}},
            {{"endpoint": "/moved", "backend": [{{"host": ["{api}"], "url_pattern": "/orig", "extra_config":
              {{"modifier/martian": {{"url.Modifier": {{"scope": ["request"], "host": "{other}", "path": "/elsewhere"}}}}}}}}]}}]}}"#,
        api = api.url(),
        raw = raw.url(),
        other = elsewhere.addr,
    );
    let gw = Gw::start(&config, mode);
    let g = curl(&[
        "-X",
        "POST",
        "-H",
        "X-Drop: 1",
        "-H",
        "Cookie: c=1",
        "-H",
        "Content-Type: text/plain",
        "--data-binary",
        "original",
        &format!("http://{}/m?z=9&q=old", gw.addr),
    ]);
    assert_eq!(answer(&g), (200, r#"{"ok":true}"#, Some("true")));
    let seen = &api.requests()[0];
    assert_eq!(seen.head.lines().next(), Some("POST /m?q=a+b&z=9 HTTP/1.1"));
    assert_eq!(field(&seen.head, "x-added"), ["yes", "again"]);
    assert_eq!(field(&seen.head, "x-drop"), Vec::<&str>::new());
    assert_eq!(field(&seen.head, "cookie"), ["c=1; s=t"]);
    assert_eq!(field(&seen.head, "content-type"), ["application/json"]);
    assert_eq!(field(&seen.head, "content-length"), ["19"]);
    assert_eq!(seen.body, br#"{"msg":"you rock!"}"#);

    // A streamed endpoint's answer, changed: the client sees the changes.
    let g = get(&gw, "/raw");
    assert_eq!((g.status, g.body.as_str()), (200, "ok"));
    assert_eq!(g.field("x-resp"), Some("1"));
    assert_eq!(g.field("x-secret"), None);
    assert_eq!(g.field("set-cookie"), Some("sid=v; Path=/; Max-Age=60; Secure"));
    assert_eq!(g.field("content-type"), Some("text/plain"));

    // url.Modifier: the call goes to the new host and path; its Host field stays.
    let g = get(&gw, "/moved");
    assert_eq!(answer(&g), (200, r#"{"where":"elsewhere"}"#, Some("true")));
    let seen = &elsewhere.requests()[0];
    assert_eq!(seen.head.lines().next(), Some("GET /elsewhere HTTP/1.1"));
    assert_eq!(field(&seen.head, "host"), [api.addr.to_string().as_str()]);
    assert_eq!(api.requests().len(), 1);
}
