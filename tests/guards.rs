//! What the gateway checks and answers before any backend is called, end to end on
//! every driver with curl as the client: CORS (`security/cors`) preflights answered at
//! the gateway for any path, credentialed requests, the fields on every kind of answer
//! (an endpoint's, a `no-op` backend's passed through, a 404), passthrough; the bot
//! detector at the root and on an endpoint; the endpoint's and a client's rate limits;
//! a backend's rate limit; request bodies checked against a JSON schema; CEL request
//! checks on an endpoint and on a backend; JWT validation (`auth/validator`) with its
//! claims passed to backends as headers and in their paths.

mod support;

use support::{Backend, Got, Gw, Mode, Reply, curl};

every_driver!(
    cors_preflights_and_requests,
    cors_options_passthrough,
    bots_and_rate_limits,
    backend_rate_limit,
    json_schema_on_request_bodies,
    cel_request_checks,
    cel_response_checks,
    jwt_validation
);

const PREFLIGHT_VARY: &str = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

fn cors_preflights_and_requests(mode: Mode) {
    let api = Backend::start(|_| Reply::Json(r#"{"id":7}"#.into()));
    // A no-op backend with fields of its own (a Vary among them).
    let raw = Backend::start(|_| {
        Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nVary: Accept-Encoding\r\nX-Request-Id: r1\r\nContent-Length: 2\r\n\r\nok".to_vec())
    });
    let config = format!(
        r#"{{"version": 3, "extra_config": {{"security/cors": {{
              "allow_origins": ["https://app.example", "https://*.example.org"],
              "allow_methods": ["GET", "POST"],
              "allow_headers": ["Content-Type", "Authorization"],
              "expose_headers": ["x-request-id"],
              "allow_credentials": true,
              "max_age": "12h"}}}},
            "endpoints": [
              {{"endpoint": "/api", "backend": [{{"host": ["{}"], "url_pattern": "/"}}]}},
              {{"endpoint": "/raw", "output_encoding": "no-op",
                "backend": [{{"host": ["{}"], "url_pattern": "/", "encoding": "no-op"}}]}}]}}"#,
        api.url(),
        raw.url()
    );
    let gw = Gw::start(&config, mode);
    let url = |path: &str| format!("http://{}{path}", gw.addr);

    // A preflight, answered at the gateway: 204, no body, the backend never asked.
    let pre = |path: &str, origin: &str, method: &str, headers: &str| {
        let (o, m, h) = (format!("Origin: {origin}"), format!("Access-Control-Request-Method: {method}"), headers);
        let mut args = vec!["-X", "OPTIONS", "-H", &o, "-H", &m];
        let h = format!("Access-Control-Request-Headers: {h}");
        if !headers.is_empty() {
            args.extend(["-H", &h]);
        }
        let u = url(path);
        args.push(&u);
        curl(&args)
    };
    let got = pre("/api", "https://app.example", "POST", "authorization,content-type");
    assert_eq!((got.status, got.body.as_str()), (204, ""));
    assert_eq!(
        got.cors(),
        [
            ("vary", PREFLIGHT_VARY),
            ("access-control-allow-origin", "https://app.example"),
            ("access-control-allow-methods", "POST"),
            ("access-control-allow-headers", "authorization,content-type"),
            ("access-control-allow-credentials", "true"),
            ("access-control-max-age", "43200"),
        ]
    );
    // Any path, endpoint or not; a wildcard origin.
    let got = pre("/nowhere", "https://eu.example.org", "GET", "");
    assert_eq!(got.status, 204);
    assert_eq!(got.field("access-control-allow-origin"), Some("https://eu.example.org"));
    // Not allowed (origin, method, a header not lowercase and sorted): still 204, with
    // Vary alone, so the browser refuses.
    for (origin, method, headers) in [
        ("https://evil.example", "GET", ""),
        ("https://app.example", "DELETE", ""),
        ("https://app.example", "GET", "Content-Type"),
        ("https://app.example", "GET", "x-custom"),
    ] {
        let got = pre("/api", origin, method, headers);
        assert_eq!((got.status, got.cors()), (204, vec![("vary", PREFLIGHT_VARY)]), "{origin} {method} {headers}");
    }
    assert_eq!(api.requests().len(), 0, "no preflight reached a backend");

    // A credentialed request: the endpoint's answer with the allow fields.
    let got = curl(&["-H", "Origin: https://app.example", "-b", "session=s1", &url("/api")]);
    assert_eq!((got.status, got.body.as_str()), (200, r#"{"id":7}"#));
    assert_eq!(
        got.cors(),
        [
            ("vary", "Origin"),
            ("access-control-allow-origin", "https://app.example"),
            ("access-control-expose-headers", "X-Request-Id"),
            ("access-control-allow-credentials", "true"),
        ]
    );
    // A no-op backend's own fields follow the gateway's, as lura adds them.
    let got = curl(&["-H", "Origin: https://app.example", &url("/raw")]);
    assert_eq!((got.status, got.body.as_str()), (200, "ok"));
    assert_eq!(
        got.cors(),
        [
            ("vary", "Origin"),
            ("access-control-allow-origin", "https://app.example"),
            ("access-control-expose-headers", "X-Request-Id"),
            ("access-control-allow-credentials", "true"),
            ("vary", "Accept-Encoding"),
        ]
    );
    assert_eq!(got.field("x-request-id"), Some("r1"));
    // A 404 gets them too; a request from another origin, or with none, gets Vary alone.
    let got = curl(&["-H", "Origin: https://app.example", &url("/missing")]);
    assert_eq!(got.status, 404);
    assert_eq!(got.field("access-control-allow-origin"), Some("https://app.example"));
    let got = curl(&["-H", "Origin: https://evil.example", &url("/api")]);
    assert_eq!((got.status, got.cors()), (200, vec![("vary", "Origin")]));
    let got = curl(&[&url("/api")]);
    assert_eq!((got.status, got.cors()), (200, vec![("vary", "Origin")]));
    assert_eq!(api.requests().len(), 3);
}

fn cors_options_passthrough(mode: Mode) {
    let api = Backend::start(|_| Reply::Json(r#"{"id":7}"#.into()));
    // An empty object turns CORS on with every default: any origin, any header,
    // GET/POST/HEAD.
    let config = format!(
        r#"{{"version": 3, "extra_config": {{"security/cors": {{"options_passthrough": true}}}},
            "endpoints": [{{"endpoint": "/api", "backend": [{{"host": ["{}"], "url_pattern": "/"}}]}}]}}"#,
        api.url()
    );
    let gw = Gw::start(&config, mode);
    // Passed on to routing: /api has no OPTIONS endpoint, so 405, with the preflight's
    // fields.
    let got = curl(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://any.example",
        "-H",
        "Access-Control-Request-Method: GET",
        "-H",
        "Access-Control-Request-Headers: X-Anything",
        &format!("http://{}/api", gw.addr),
    ]);
    assert_eq!(got.status, 405);
    assert_eq!(
        got.cors(),
        [
            ("vary", PREFLIGHT_VARY),
            ("access-control-allow-origin", "*"),
            ("access-control-allow-methods", "GET"),
            ("access-control-allow-headers", "X-Anything"),
        ]
    );
    let got = curl(&["-H", "Origin: https://any.example", &format!("http://{}/api", gw.addr)]);
    assert_eq!(got.cors(), [("vary", "Origin"), ("access-control-allow-origin", "*")]);
    assert_eq!(api.requests().len(), 1);
}

fn bots_and_rate_limits(mode: Mode) {
    let api = Backend::start(|_| Reply::Json(r#"{"id":7}"#.into()));
    let config = format!(
        r#"{{"version": 3, "extra_config": {{"security/bot-detector": {{"deny": ["BadBot/1"]}}}},
            "endpoints": [
              {{"endpoint": "/api", "extra_config": {{
                  "security/bot-detector": {{"patterns": ["(?i)bot"], "empty_user_agent_is_bot": true}},
                  "qos/ratelimit/router": {{"client_max_rate": 2, "client_capacity": 2, "every": "1m",
                    "strategy": "header", "key": "X-Client"}}}},
                "backend": [{{"host": ["{0}"], "url_pattern": "/"}}]}},
              {{"endpoint": "/scarce", "extra_config": {{"qos/ratelimit/router": {{"max_rate": 1, "every": "1m"}}}},
                "backend": [{{"host": ["{0}"], "url_pattern": "/"}}]}}]}}"#,
        api.url()
    );
    let gw = Gw::start(&config, mode);
    let url = |path: &str| format!("http://{}{path}", gw.addr);
    let (api_url, scarce) = (url("/api"), url("/scarce"));
    let status = |got: &Got| (got.status, got.body.clone(), got.field("content-length").map(str::to_string));
    let refused = |code: u16| (code, String::new(), Some("0".to_string()));
    // Bots: by pattern, by an empty User-Agent (curl -A "" sends none), by the root's
    // deny list on a path with no endpoint; the health page is not checked.
    let got = curl(&["-A", "Googlebot/2.1", "-H", "X-Client: a", &api_url]);
    assert_eq!(status(&got), refused(403));
    assert_eq!(status(&curl(&["-A", "", "-H", "X-Client: a", &api_url])), refused(403));
    assert_eq!(status(&curl(&["-A", "BadBot/1", &url("/missing")])), refused(403));
    assert_eq!(curl(&["-A", "BadBot/1", &url("/__health")]).status, 200);
    assert_eq!(curl(&["-A", "Mozilla/5.0", &url("/missing")]).status, 404);
    assert_eq!(api.requests().len(), 0);
    // A client's limit: two at once and two a minute each, told apart by X-Client (no
    // capacity given, a rate under 1 a second would allow one at once, as in KrakenD);
    // none: 429.
    let as_client = |c: &str| curl(&["-A", "Mozilla/5.0", "-H", &format!("X-Client: {c}"), &api_url]);
    let codes: Vec<u16> = ["a", "a", "a", "b", "a", "b", "b"].iter().map(|c| as_client(c).status).collect();
    assert_eq!(codes, [200, 200, 429, 200, 429, 200, 429]);
    assert_eq!(status(&as_client("a")), refused(429));
    assert_eq!(status(&curl(&["-A", "Mozilla/5.0", &api_url])), refused(429));
    assert_eq!(api.requests().len(), 4);
    // The endpoint's limit: one a minute for everyone, then 503.
    let codes: Vec<u16> = (0..3).map(|_| curl(&[&scarce]).status).collect();
    assert_eq!(codes, [200, 503, 503]);
    assert_eq!(status(&curl(&[&scarce])), refused(503));
    assert_eq!(api.requests().len(), 5);
}

fn backend_rate_limit(mode: Mode) {
    let api = Backend::start(|_| Reply::Json(r#"{"id":7}"#.into()));
    let config = format!(
        r#"{{"version": 3, "extra_config": {{"router": {{"return_error_msg": true}}}}, "endpoints": [
            {{"endpoint": "/api", "backend": [{{"host": ["{}"], "url_pattern": "/",
                "extra_config": {{"qos/ratelimit/proxy": {{"max_rate": 2, "capacity": 2, "every": "1m"}}}}}}]}}]}}"#,
        api.url()
    );
    let gw = Gw::start(&config, mode);
    let url = format!("http://{}/api", gw.addr);
    let got: Vec<(u16, String)> = (0..4).map(|_| curl(&[&url])).map(|g| (g.status, g.body)).collect();
    let ok = (200, r#"{"id":7}"#.to_string());
    // Over the backend's limit the call is not made; with return_error_msg the client
    // reads KrakenD's reason.
    let limited = (500, "rate limit exceded".to_string());
    assert_eq!(got, [ok.clone(), ok, limited.clone(), limited]);
    assert_eq!(api.requests().len(), 2);
}

fn json_schema_on_request_bodies(mode: Mode) {
    let api = Backend::start(|_| Reply::Echo);
    let schema = r#"{"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "minLength": 1}, "age": {"type": "integer", "minimum": 0}}}"#;
    let config = |return_error_msg: bool| {
        format!(
            r#"{{"version": 3, "extra_config": {{"router": {{"return_error_msg": {return_error_msg}}}}},
                "endpoints": [{{"endpoint": "/users", "method": "POST",
                    "extra_config": {{"validation/json-schema": {schema}}},
                    "backend": [{{"host": ["{}"], "url_pattern": "/"}}]}}]}}"#,
            api.url()
        )
    };
    let gw = Gw::start(&config(true), mode);
    let url = format!("http://{}/users", gw.addr);
    let post = |body: &str| curl(&["-H", "Content-Type: application/json", "--data-binary", body, &url]);
    // Valid: the backend gets the body as sent.
    let got = post(r#"{"name":"ann","age":3}"#);
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(api.requests().len(), 1);
    assert_eq!(api.requests()[0].body, br#"{"name":"ann","age":3}"#);
    // Refused before any backend call, with the reasons (return_error_msg).
    let got = post(r#"{"name":"","age":-1}"#);
    assert_eq!((got.status, got.field("x-krakend-completed")), (400, Some("false")));
    assert_eq!(
        got.body,
        "- at '/name': value is shorter than 1 character\n- at '/age': value is less than the minimum of 0"
    );
    assert_eq!(post("not json").body, "expected ident at line 1 column 2");
    let got = curl(&["-X", "POST", &url]);
    assert_eq!((got.status, got.body.as_str()), (400, "could not validate an empty body"));
    assert_eq!(api.requests().len(), 1);
    drop(gw);
    // Without return_error_msg: 400 and no body.
    let gw = Gw::start(&config(false), mode);
    let got = curl(&["--data-binary", "[]", &format!("http://{}/users", gw.addr)]);
    assert_eq!((got.status, got.body.as_str(), got.field("content-length")), (400, "", Some("0")));
    assert_eq!(api.requests().len(), 1);
}

fn cel_request_checks(mode: Mode) {
    let api = Backend::start(|_| Reply::Json(r#"{"a":1}"#.into()));
    let other = Backend::start(|_| Reply::Json(r#"{"b":2}"#.into()));
    let config = format!(
        r#"{{"version": 3, "extra_config": {{"router": {{"return_error_msg": true}}}}, "endpoints": [
            {{"endpoint": "/users/{{id}}", "input_headers": ["X-Tenant"], "input_query_strings": ["lang"],
              "extra_config": {{"validation/cel": [
                {{"check_expr": "req_params.Id.matches('^[0-9]+$')"}},
                {{"check_expr": "'acme' in req_headers['X-Tenant'] && req_headers['User-Agent'][0].startsWith('Sluice/')"}}]}},
              "backend": [
                {{"host": ["{0}"], "url_pattern": "/a/{{id}}"}},
                {{"host": ["{1}"], "url_pattern": "/b/{{id}}", "extra_config": {{"validation/cel": [
                    {{"check_expr": "req_path == '/b/7' && req_querystring.lang[0] == 'en'"}}]}}}}]}}]}}"#,
        api.url(),
        other.url()
    );
    let gw = Gw::start(&config, mode);
    let url = |target: &str| format!("http://{}{target}", gw.addr);
    let tenant = "X-Tenant: acme";
    // Both checks pass on the endpoint and on the second backend: both answers merged.
    let got = curl(&["-H", tenant, &url("/users/7?lang=en")]);
    assert_eq!((got.status, got.body.as_str()), (200, r#"{"a":1,"b":2}"#));
    // The backend's check fails (another path): its call is not made, the answer is partial.
    let got = curl(&["-H", tenant, &url("/users/8?lang=en")]);
    assert_eq!((got.status, got.body.as_str(), got.field("x-krakend-completed")), (200, r#"{"a":1}"#, Some("false")));
    // The endpoint's checks: KrakenD's 500, with the number of the check that stopped it.
    let got = curl(&["-H", tenant, &url("/users/x7")]);
    assert_eq!((got.status, got.body.as_str()), (500, "request aborted by evaluator #0"));
    let got = curl(&[&url("/users/7")]);
    assert_eq!((got.status, got.body.as_str()), (500, "request aborted by evaluator #1"));
    assert_eq!((api.requests().len(), other.requests().len()), (2, 1));
    drop(gw);

    // What the checks see is what is sent on: the path and its parameters decoded once
    // (a check cannot be passed by percent-encoding), the client's User-Agent when
    // it is passed on, query names exact, a backend's own header list.
    let config = format!(
        r#"{{"version": 3, "extra_config": {{"router": {{"return_error_msg": true}}}}, "endpoints": [
            {{"endpoint": "/files/{{name}}", "input_headers": ["User-Agent", "X-Tenant"], "input_query_strings": ["lang"],
              "extra_config": {{"validation/cel": [
                {{"check_expr": "req_params.Name != 'root' && !req_path.contains('secret')"}},
                {{"check_expr": "!req_headers['User-Agent'][0].startsWith('curl/') || !('Content-Type' in req_headers)"}},
                {{"check_expr": "!('LANG' in req_querystring)"}}]}},
              "backend": [{{"host": ["{0}"], "url_pattern": "/f/{{name}}", "input_headers": ["User-Agent"],
                "extra_config": {{"validation/cel": [{{"check_expr": "!('X-Tenant' in req_headers)"}}]}}}}]}}]}}"#,
        api.url()
    );
    let gw = Gw::start(&config, mode);
    let url = |target: &str| format!("http://{}{target}", gw.addr);
    let before = api.requests().len();
    for target in ["/files/%72oot", "/files/my%73ecret"] {
        let got = curl(&["-A", "curl/8", &url(target)]);
        assert_eq!((got.status, got.body.as_str()), (500, "request aborted by evaluator #0"), "{target}");
    }
    // The client's agent is what the check reads (curl's, passed on by input_headers).
    let got = curl(&["-A", "curl/8", "-H", "Content-Type: text/plain", &url("/files/a")]);
    assert_eq!((got.status, got.body.as_str()), (500, "request aborted by evaluator #1"));
    // LANG is not lang: not passed on, not seen.
    let got = curl(&["-A", "curl/8", &url("/files/a?LANG=en")]);
    assert_eq!(got.status, 200, "{}", got.body);
    // The backend's list leaves X-Tenant out: its check passes though the client sent it.
    let got = curl(&["-A", "curl/8", "-H", "X-Tenant: acme", &url("/files/a")]);
    assert_eq!((got.status, got.body.as_str()), (200, r#"{"a":1}"#));
    assert_eq!(api.requests().len(), before + 2);
}

fn cel_response_checks(mode: Mode) {
    let a = Backend::start(|_| Reply::Json(r#"{"a":1,"ok":true,"secret":"s"}"#.into()));
    let b = Backend::start(|_| Reply::Json(r#"{"b":2}"#.into()));
    let config = format!(
        r#"{{"version": 3, "extra_config": {{"router": {{"return_error_msg": true}}}}, "endpoints": [
            {{"endpoint": "/agg", "backend": [
                {{"host": ["{0}"], "url_pattern": "/", "mapping": {{"a": "alpha"}}, "deny": ["secret"],
                  "extra_config": {{"validation/cel": [{{"check_expr": "resp_data.alpha == 1 && !has(resp_data.secret) && resp_completed"}}]}}}},
                {{"host": ["{1}"], "url_pattern": "/", "extra_config": {{"validation/cel": [
                    {{"check_expr": "req_method == 'GET'"}}, {{"check_expr": "resp_data.b > 5"}}]}}}}]}},
            {{"endpoint": "/whole", "extra_config": {{"validation/cel": [
                {{"check_expr": "resp_data.a == 1 && resp_data.b == 2 && resp_metadata_status == 0 && timestamp(now) > timestamp('2025-01-01T00:00:00Z')"}}]}},
              "backend": [{{"host": ["{0}"], "url_pattern": "/", "allow": ["a"]}}, {{"host": ["{1}"], "url_pattern": "/"}}]}},
            {{"endpoint": "/refused", "extra_config": {{"validation/cel": [
                {{"check_expr": "req_path == '/refused' && timestamp(now) < timestamp('2100-01-01T00:00:00Z')"}},
                {{"check_expr": "has(resp_data.missing)"}}]}},
              "backend": [{{"host": ["{0}"], "url_pattern": "/", "allow": ["a"]}}]}}]}}"#,
        a.url(),
        b.url()
    );
    let gw = Gw::start(&config, mode);
    let url = |path: &str| format!("http://{}{path}", gw.addr);
    // A backend's check sees its data once shaped; the second backend's refuses: its
    // part is left out, as a failed backend's (200, X-KrakenD-Completed: false).
    let got = curl(&[&url("/agg")]);
    assert_eq!(
        (got.status, got.body.as_str(), got.field("x-krakend-completed")),
        (200, r#"{"alpha":1,"ok":true}"#, Some("false"))
    );
    // The endpoint's check sees the merged data.
    let got = curl(&[&url("/whole")]);
    assert_eq!(
        (got.status, got.body.as_str(), got.field("x-krakend-completed")),
        (200, r#"{"a":1,"b":2}"#, Some("true"))
    );
    // One that refuses: KrakenD's 500, numbered among the response checks.
    let got = curl(&[&url("/refused")]);
    assert_eq!(
        (got.status, got.body.as_str(), got.field("x-krakend-completed")),
        (500, "request aborted by evaluator #0", Some("false"))
    );
    assert_eq!((a.requests().len(), b.requests().len()), (3, 2));
}

/// A token of the fixtures (`core/tests/fixtures/jwt`, signed by Python's
/// `cryptography`; valid until 2096).
fn jwt(name: &str) -> String {
    let all: serde_json::Value = serde_json::from_str(include_str!("../core/tests/fixtures/jwt/tokens.json")).unwrap();
    all["tokens"][name].as_str().unwrap().to_string()
}

fn jwt_validation(mode: Mode) {
    let api = Backend::start(|_| Reply::Json(r#"{"id":7}"#.into()));
    let raw = Backend::start(|_| Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()));
    let validator = |roles: &str| {
        format!(
            r#""auth/validator": {{"alg": "RS256", "jwk_local_path": "core/tests/fixtures/jwt/keys.json",
                "audience": ["sluice"], "issuer": "https://idp.example", "roles": {roles},
                "propagate_claims": [["sub", "X-User"], ["tenant.id", "X-Tenant"], ["groups", "X-Groups"]]}}"#
        )
    };
    let config = format!(
        r#"{{"version": 3, "endpoints": [
            {{"endpoint": "/me", "input_headers": ["X-User", "X-Tenant"], "extra_config": {{{0}}},
              "backend": [{{"host": ["{2}"], "url_pattern": "/users/{{JWT.sub}}/{{JWT.name}}"}}]}},
            {{"endpoint": "/admin", "extra_config": {{{1}}}, "backend": [{{"host": ["{2}"], "url_pattern": "/"}}]}},
            {{"endpoint": "/tier/{{n}}", "extra_config": {{{0}, "validation/cel": [
                {{"check_expr": "JWT.tenant.tier >= 2 && 'admin' in JWT.roles && timestamp(now) > timestamp('2025-01-01T00:00:00Z')"}},
                {{"check_expr": "req_params.N == '1'"}}]}},
              "backend": [{{"host": ["{2}"], "url_pattern": "/"}}]}},
            {{"endpoint": "/strict", "extra_config": {{{0}, "validation/cel": [{{"check_expr": "JWT.level > 5"}}]}},
              "backend": [{{"host": ["{2}"], "url_pattern": "/"}}]}},
            {{"endpoint": "/raw", "output_encoding": "no-op", "input_headers": ["*"], "extra_config": {{{0}}},
              "backend": [{{"host": ["{3}"], "url_pattern": "/raw/{{JWT.tenant}}", "encoding": "no-op"}}]}}]}}"#,
        validator(r#"["admin"]"#),
        validator(r#"["root"]"#),
        api.url(),
        raw.url()
    );
    let gw = Gw::start(&config, mode);
    let url = |path: &str| format!("http://{}{path}", gw.addr);
    let with = |token: &str| format!("Authorization: Bearer {token}");
    let refused = |got: &Got| (got.status, got.body.clone(), got.field("content-length").map(str::to_string));
    // No token; a bad signature, another algorithm, `none`, an unknown kid, expired,
    // another audience, HMAC keyed with the RSA public key; a good token without the
    // role: KrakenD's empty 401 and 403; no backend called.
    assert_eq!(refused(&curl(&[&url("/me")])), (401, String::new(), Some("0".into())));
    for bad in [
        "RS256-bad-signature",
        "ES256",
        "none",
        "RS256-unknown-kid",
        "RS256-expired",
        "RS256-other-aud",
        "RS256-confused-pem",
    ] {
        assert_eq!(refused(&curl(&["-H", &with(&jwt(bad)), &url("/me")])), (401, String::new(), Some("0".into())));
    }
    assert_eq!(refused(&curl(&["-H", &with(&jwt("RS256")), &url("/admin")])), (403, String::new(), Some("0".into())));
    assert_eq!(api.requests().len(), 0);
    // A good token: the claims go on as headers (replacing what the client sent,
    // under input_headers: X-Groups is not listed) and in the path (percent-encoded).
    let got = curl(&["-H", &with(&jwt("RS256")), "-H", "X-User: mallory", "-H", "X-Groups: g", &url("/me")]);
    assert_eq!((got.status, got.body.as_str()), (200, r#"{"id":7}"#));
    let seen = api.requests();
    let head = seen[0].head.to_ascii_lowercase();
    assert!(head.starts_with("get /users/1234567890/ada http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nx-user: 1234567890\r\n") && head.contains("\r\nx-tenant: t-7\r\n"), "{head}");
    assert!(!head.contains("mallory") && !head.contains("x-groups"), "{head}");
    // The cookie, when there is no Authorization header.
    let got = curl(&["-b", &format!("access_token={}", jwt("RS256")), &url("/me")]);
    assert_eq!(got.status, 200);
    // CEL token checks (KrakenD's rejecter) see the claims and `now`; one that refuses
    // is a 401 (the fixture's level is 3); the list's request checks run as before.
    let token = with(&jwt("RS256"));
    assert_eq!(curl(&["-H", &token, &url("/tier/1")]).status, 200);
    assert_eq!(curl(&["-H", &token, &url("/tier/2")]).status, 500);
    assert_eq!(refused(&curl(&["-H", &token, &url("/strict")])), (401, String::new(), Some("0".into())));
    assert_eq!(api.requests().len(), 3);
    // A no-op endpoint: the same check, the headers and path on the streamed call.
    assert_eq!(curl(&[&url("/raw")]).status, 401);
    let got = curl(&["-H", &with(&jwt("RS256")), &url("/raw")]);
    assert_eq!((got.status, got.body.as_str()), (200, "ok"));
    let head = raw.requests()[0].head.to_ascii_lowercase();
    assert!(head.starts_with("get /raw/%7b%22id%22:%22t-7%22,%22tier%22:2%7d http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nx-groups: a,b,1.7e+09\r\n") && head.contains("\r\nauthorization: bearer "), "{head}");
    assert_eq!((api.requests().len(), raw.requests().len()), (3, 1));
}
