//! Router behaviour: params, 404, 405, trailing-slash redirects, 1,000 endpoints.

use http::{Method, StatusCode};
use serde_json::json;
use sluice_core::Gateway;
use sluice_core::plan::route::{METHOD_NOT_ALLOWED_BODY, NOT_FOUND_BODY, RouteMatch};

fn gateway(endpoints: &[(&str, &str)], disable_rest: bool) -> Gateway {
    with_router(endpoints, disable_rest, json!({}))
}

fn with_router(endpoints: &[(&str, &str)], disable_rest: bool, router: serde_json::Value) -> Gateway {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(m, p)| json!({"endpoint": p, "method": m, "backend": [{"url_pattern": "/x", "method": "GET"}]}))
        .collect();
    let config = json!({"version": 3, "host": ["http://api"], "disable_rest": disable_rest, "endpoints": endpoints,
        "extra_config": {"router": router}});
    Gateway::load(&config.to_string()).unwrap_or_else(|e| panic!("{e}")).gateway
}

/// The router's answer in a comparable form.
fn answer(gw: &Gateway, method: Method, path: &str) -> String {
    match gw.route(&method, path) {
        RouteMatch::Found { endpoint, params } => {
            let params: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("endpoint {endpoint} [{}]", params.join(","))
        }
        RouteMatch::Redirect { path, status } => format!("{} -> {path}", status.as_u16()),
        RouteMatch::MethodNotAllowed { allow } => format!("405 allow {allow}"),
        RouteMatch::Options { allow } => format!("200 allow {allow}"),
        RouteMatch::NotFound => "404".to_string(),
    }
}

#[test]
fn params_match_whole_segments() {
    let gw = gateway(&[("GET", "/users/{id}"), ("GET", "/users/{id}/orders/{order}"), ("GET", "/users/me")], false);
    assert_eq!(answer(&gw, Method::GET, "/users/42"), "endpoint 0 [id=42]");
    assert_eq!(answer(&gw, Method::GET, "/users/42/orders/7"), "endpoint 1 [id=42,order=7]");
    assert_eq!(answer(&gw, Method::GET, "/users/me"), "endpoint 2 []", "static wins over a parameter");
    assert_eq!(answer(&gw, Method::GET, "/users"), "404");
    assert_eq!(answer(&gw, Method::GET, "/users/42/orders"), "404");
    assert_eq!(answer(&gw, Method::GET, "/users/42/extra/segments"), "404");
    // Percent-encoded slashes stay inside the parameter, still encoded.
    assert_eq!(answer(&gw, Method::GET, "/users/a%2Fb"), "endpoint 0 [id=a%2Fb]");
    assert_eq!(answer(&gw, Method::GET, "/users/..%2F..%2Fadmin"), "endpoint 0 [id=..%2F..%2Fadmin]");
}

#[test]
fn params_inside_a_segment_with_disable_rest() {
    let gw = gateway(&[("GET", "/file.{ext}"), ("GET", "/img/{name}.png")], true);
    assert_eq!(answer(&gw, Method::GET, "/file.json"), "endpoint 0 [ext=json]");
    assert_eq!(answer(&gw, Method::GET, "/img/logo.png"), "endpoint 1 [name=logo]");
    assert_eq!(answer(&gw, Method::GET, "/img/logo.jpg"), "404");
}

#[test]
fn not_found_and_method_not_allowed() {
    let gw = gateway(
        &[("GET", "/items/{id}"), ("DELETE", "/items/{item}"), ("POST", "/items/{x}"), ("PUT", "/other")],
        false,
    );
    assert_eq!(answer(&gw, Method::GET, "/nothing"), "404");
    assert_eq!(answer(&gw, Method::DELETE, "/items/9"), "endpoint 1 [item=9]");
    assert_eq!(answer(&gw, Method::PATCH, "/items/9"), "405 allow GET, POST, DELETE");
    assert_eq!(answer(&gw, Method::GET, "/other"), "405 allow PUT");
    assert_eq!(answer(&gw, Method::HEAD, "/items/9"), "405 allow GET, POST, DELETE", "HEAD is not GET, as in KrakenD");
    assert_eq!(NOT_FOUND_BODY, "404 page not found");
    assert_eq!(METHOD_NOT_ALLOWED_BODY, "405 method not allowed");
}

#[test]
fn trailing_slash_redirects() {
    let gw = gateway(&[("GET", "/foo"), ("POST", "/foo"), ("GET", "/bar/"), ("PUT", "/baz")], false);
    assert_eq!(answer(&gw, Method::GET, "/foo/"), "301 -> /foo");
    assert_eq!(answer(&gw, Method::POST, "/foo/"), "307 -> /foo");
    assert_eq!(answer(&gw, Method::GET, "/bar"), "301 -> /bar/");
    assert_eq!(answer(&gw, Method::PUT, "/baz/"), "307 -> /baz");
    // Redirects only within the method: another method's /baz/ is a 405 on /baz only.
    assert_eq!(answer(&gw, Method::GET, "/baz/"), "404");
    assert_eq!(answer(&gw, Method::GET, "/"), "404");
    match gw.route(&Method::GET, "/foo/") {
        RouteMatch::Redirect { status, .. } => assert_eq!(status, StatusCode::MOVED_PERMANENTLY),
        other => panic!("{other:?}"),
    }
}

/// gin's RedirectFixedPath, on in KrakenD: the cleaned path, static segments in any
/// case, the trailing slash either way; a parameter keeps its value as sent.
#[test]
fn fixed_path_redirects() {
    let gw = gateway(
        &[("GET", "/static"), ("POST", "/Users/{id}/Orders"), ("GET", "/users/me"), ("GET", "/users/{id}")],
        false,
    );
    assert_eq!(answer(&gw, Method::GET, "/StAtic"), "301 -> /static");
    assert_eq!(answer(&gw, Method::GET, "/STATIC/"), "301 -> /static");
    assert_eq!(answer(&gw, Method::GET, "/a/../static"), "301 -> /static");
    assert_eq!(answer(&gw, Method::GET, "/./static"), "301 -> /static");
    assert_eq!(answer(&gw, Method::GET, "//static"), "301 -> /static");
    assert_eq!(answer(&gw, Method::POST, "/users/AbC/orders"), "307 -> /Users/AbC/Orders");
    // A static segment wins over a parameter, whatever the case.
    assert_eq!(answer(&gw, Method::GET, "/USERS/ME"), "301 -> /users/me");
    assert_eq!(answer(&gw, Method::GET, "/USERS/Ada"), "301 -> /users/Ada");
    // Within the method only; nothing like it: 405 or 404 as before.
    assert_eq!(answer(&gw, Method::GET, "/users/abc/orders"), "404");
    assert_eq!(answer(&gw, Method::GET, "/Users/abc/Orders"), "405 allow POST");
    assert_eq!(answer(&gw, Method::GET, "/nothing"), "404");
    assert_eq!(answer(&gw, Method::DELETE, "/StAtic"), "404");
}

#[test]
fn no_redirect_leads_to_another_origin() {
    // `/{x}` matches `/\evil.example`; its trailing-slash twin must not be echoed as a
    // Location: browsers read `/\host` and `//host` as http://host/.
    let gw = gateway(&[("GET", "/{x}"), ("GET", "/{x}/{y}/")], false);
    assert_eq!(answer(&gw, Method::GET, "/\\evil.example/"), "404");
    assert_eq!(answer(&gw, Method::GET, "/\\/evil.example"), "404");
    // `//evil.example` cleans to a path on this origin: that is where it goes.
    assert_eq!(answer(&gw, Method::GET, "//evil.example"), "301 -> /evil.example");
    // The same shapes that stay on this origin still redirect.
    assert_eq!(answer(&gw, Method::GET, "/safe/"), "301 -> /safe");
    assert_eq!(answer(&gw, Method::GET, "/a/b"), "301 -> /a/b/");
}

#[test]
fn a_thousand_endpoints_each_route_to_themselves() {
    let mut endpoints = Vec::new();
    for r in 0..250 {
        endpoints.push(("GET".to_string(), format!("/api/r{r}")));
        endpoints.push(("GET".to_string(), format!("/api/r{r}/{{id}}")));
        endpoints.push(("POST".to_string(), format!("/api/r{r}/{{id}}/sub")));
        endpoints.push(("GET".to_string(), format!("/api/r{r}/{{id}}/sub/{{sid}}")));
    }
    let refs: Vec<(&str, &str)> = endpoints.iter().map(|(m, p)| (m.as_str(), p.as_str())).collect();
    let gw = gateway(&refs, false);
    assert_eq!(gw.endpoints.len(), 1000);
    for (i, (m, p)) in endpoints.iter().enumerate() {
        let concrete = p.replace("{id}", "123").replace("{sid}", "x-9");
        let method: Method = m.parse().unwrap_or_else(|e| panic!("{e}"));
        let got = answer(&gw, method, &concrete);
        assert!(got.starts_with(&format!("endpoint {i} [")), "{m} {concrete} gave {got}");
    }
    assert_eq!(answer(&gw, Method::GET, "/api/r250"), "404");
    assert_eq!(answer(&gw, Method::GET, "/api/r7/1/sub"), "405 allow POST");
}

/// KrakenD's router switches (lura's gin options), each turning one answer off.
#[test]
fn router_options_turn_gins_answers_off() {
    let routes = [("GET", "/static"), ("POST", "/static"), ("DELETE", "/users/{id}")];
    // gin's fixed-path lookup toggles the trailing slash itself: only both off give 404.
    let gw = with_router(&routes, false, json!({"disable_redirect_trailing_slash": true}));
    assert_eq!(answer(&gw, Method::GET, "/static/"), "301 -> /static");
    assert_eq!(answer(&gw, Method::GET, "/STATIC"), "301 -> /static");
    let both = json!({"disable_redirect_trailing_slash": true, "disable_redirect_fixed_path": true});
    let gw = with_router(&routes, false, both);
    assert_eq!(answer(&gw, Method::GET, "/static/"), "404");
    assert_eq!(answer(&gw, Method::GET, "/STATIC"), "404");
    let gw = with_router(&routes, false, json!({"disable_redirect_fixed_path": true}));
    assert_eq!(answer(&gw, Method::GET, "/STATIC"), "404");
    assert_eq!(answer(&gw, Method::GET, "/static/"), "301 -> /static");
    let gw = with_router(&routes, false, json!({"disable_handle_method_not_allowed": true}));
    assert_eq!(answer(&gw, Method::PUT, "/static"), "404");
    // auto_options: OPTIONS lists the path's methods sorted (gin's OPTIONS route), and a
    // 405 names OPTIONS too.
    let gw = with_router(&routes, false, json!({"auto_options": true}));
    assert_eq!(answer(&gw, Method::OPTIONS, "/static"), "200 allow GET, POST");
    assert_eq!(answer(&gw, Method::OPTIONS, "/users/7"), "200 allow DELETE");
    assert_eq!(answer(&gw, Method::OPTIONS, "/nowhere"), "404");
    assert_eq!(answer(&gw, Method::PUT, "/static"), "405 allow GET, POST, OPTIONS");
    // Without it, OPTIONS is one more method the path does not have.
    let gw = gateway(&routes, false);
    assert_eq!(answer(&gw, Method::OPTIONS, "/static"), "405 allow GET, POST");
}
