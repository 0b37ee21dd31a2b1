//! Backend redirects, on every driver, followed as Go's client does for KrakenD (at
//! most 10; 301/302/303 become GET without a body, 307/308 keep both), with the
//! credentials dropped when a redirect leaves the origin, `no_redirect` passing the
//! 3xx through, and bad redirects failing the call. Scripted backends on loopback
//! record exactly what each hop was sent; one hop goes to an HTTPS backend.

mod support;

use sluice_core::call::proxy::ProxyEnv;
use support::tls::{Pki, new_ca, serve};
use support::{Backend, Gw, Mode, Reply, Seen, files_env};

fn redirect(status: u16, location: &str) -> Reply {
    Reply::Raw(format!("HTTP/1.1 {status} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n").into_bytes())
}

fn target(seen: &Seen) -> &str {
    seen.head.split(' ').nth(1).unwrap_or_default()
}

fn field<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// What each hop saw: `METHOD target body`.
fn hops(b: &Backend) -> Vec<String> {
    b.requests()
        .iter()
        .map(|s| {
            format!("{} {} {}", s.head.split(' ').next().unwrap_or(""), target(s), String::from_utf8_lossy(&s.body))
        })
        .collect()
}

/// `/p` (no-op GET), `/agg` (GET), `/post` and `/put` (aggregating writes) on
/// `host`, forwarding Authorization and Cookie, with `extra` as each backend's
/// extra_config, and `return_error_msg`.
fn config(host: &str, extra: &str) -> String {
    let backend = |pattern: &str, more: &str| {
        format!(r#"{{"host": ["{host}"], "url_pattern": "{pattern}", "extra_config": {{{extra}}}{more}}}"#)
    };
    format!(
        r#"{{"version": 3, "extra_config": {{"router": {{"return_error_msg": true}}}}, "endpoints": [
            {{"endpoint": "/p", "output_encoding": "no-op", "input_headers": ["Authorization", "Cookie"],
              "backend": [{}]}},
            {{"endpoint": "/agg", "input_headers": ["Authorization", "Cookie"], "backend": [{}]}},
            {{"endpoint": "/post", "method": "POST", "backend": [{}]}},
            {{"endpoint": "/put", "method": "PUT", "backend": [{}]}}]}}"#,
        backend("/start", r#", "encoding": "no-op""#),
        backend("/start", r#", "group": "g""#),
        backend("/form", ""),
        backend("/upload", ""),
    )
}

/// Same origin: a relative and an absolute-path Location are followed (the hop keeps
/// the client's credentials), 303 turns a POST into a GET without a body, 307 sends
/// the PUT and its body again.
fn same_origin(mode: Mode) {
    let b = Backend::start(|seen| match target(seen) {
        "/start" => redirect(302, "next/step?x=1"),
        "/next/step?x=1" => redirect(301, "/final"),
        "/form" => redirect(303, "/thanks"),
        "/upload" => redirect(307, "/upload/v2"),
        t => Reply::Json(format!(r#"{{"at":"{t}"}}"#)),
    });
    let gw = Gw::start(&config(&b.url(), ""), mode);
    let r = gw.request("GET", "/p", &[("Authorization", "Bearer t0k"), ("Cookie", "s=1")], b"");
    assert_eq!((r.status, r.text()), (200, r#"{"at":"/final"}"#));
    let seen = b.requests();
    assert_eq!(hops(&b), ["GET /start ", "GET /next/step?x=1 ", "GET /final "]);
    assert!(seen.iter().all(|s| field(s, "authorization") == Some("Bearer t0k") && field(s, "cookie") == Some("s=1")));
    // Each hop names the URL that redirected it, as Go's client does.
    let referers: Vec<Option<&str>> = seen.iter().map(|s| field(s, "referer")).collect();
    let (start, step) = (format!("{}/start", b.url()), format!("{}/next/step?x=1", b.url()));
    assert_eq!(referers, [None, Some(start.as_str()), Some(step.as_str())]);
    let r = gw.get("/agg");
    assert_eq!((r.status, r.text()), (200, r#"{"g":{"at":"/final"}}"#));
    let r = gw.request("POST", "/post", &[("Content-Type", "application/json")], br#"{"a":1}"#);
    assert_eq!((r.status, r.text()), (200, r#"{"at":"/thanks"}"#));
    let r = gw.request("PUT", "/put", &[("Content-Type", "application/json")], br#"{"b":2}"#);
    assert_eq!((r.status, r.text()), (200, r#"{"at":"/upload/v2"}"#));
    let all = hops(&b);
    assert_eq!(all[6..], ["POST /form {\"a\":1}", "GET /thanks ", "PUT /upload {\"b\":2}", "PUT /upload/v2 {\"b\":2}"]);
    let seen = b.requests();
    assert_eq!(field(&seen[7], "content-length"), None, "the 303's GET carries no body");
    assert_eq!(field(&seen[9], "content-length"), Some("7"));
}

/// Leaving the origin (another port): the next host gets the request without the
/// client's Authorization and Cookie, and with its own Host.
fn cross_origin(mode: Mode) {
    let other = Backend::start(|seen| Reply::Json(format!(r#"{{"landed":"{}"}}"#, target(seen))));
    let to = format!("{}/landing?from=a", other.url());
    let b = Backend::start(move |_| redirect(302, &to));
    let gw = Gw::start(&config(&b.url(), ""), mode);
    let r = gw.request("GET", "/p", &[("Authorization", "Bearer t0k"), ("Cookie", "s=1")], b"");
    assert_eq!((r.status, r.text()), (200, r#"{"landed":"/landing?from=a"}"#));
    let first = &b.requests()[0];
    assert_eq!((field(first, "authorization"), field(first, "cookie")), (Some("Bearer t0k"), Some("s=1")));
    let landed = &other.requests()[0];
    assert_eq!((field(landed, "authorization"), field(landed, "cookie")), (None, None));
    assert_eq!(field(landed, "host"), Some(other.addr.to_string().as_str()));
}

/// `no_redirect`: the 3xx is the answer (no-op passes it through, Location and all).
fn no_redirect(mode: Mode) {
    let b = Backend::start(|_| redirect(302, "/elsewhere"));
    let gw = Gw::start(&config(&b.url(), r#""backend/http/client": {"no_redirect": true}"#), mode);
    let r = gw.get("/p");
    assert_eq!((r.status, r.header("location"), r.text()), (302, Some("/elsewhere"), ""));
    assert_eq!(hops(&b), ["GET /start "]);
}

/// Bad redirects fail the call, saying why: a Location that is not http(s), and a
/// loop, stopped after 10 redirects (11 requests).
fn bad_redirects(mode: Mode) {
    let b = Backend::start(|seen| match target(seen) {
        "/start" => redirect(302, "ftp://files.example/x"),
        _ => redirect(307, "/upload"),
    });
    let gw = Gw::start(&config(&b.url(), ""), mode);
    let r = gw.get("/p");
    assert_eq!(
        (r.status, r.text()),
        (
            502,
            format!(r#"[GET /start]: {}/start: the redirect to "ftp://files.example/x" is not http(s)"#, b.url())
                .as_str()
        )
    );
    let r = gw.request("PUT", "/put", &[("Content-Type", "application/json")], b"{}");
    assert_eq!(r.status, 500);
    assert_eq!(hops(&b).iter().filter(|h| h.starts_with("PUT /upload")).count(), 11);
    assert!(r.text().contains("stopped after 10 redirects"), "{}", r.text());
}

/// A plain-HTTP backend redirecting to an HTTPS one: the hop runs TLS with the
/// configuration's client_tls (here, the test CA).
fn to_https(mode: Mode) {
    let pki = Pki::new();
    let ca = new_ca("Sluice test CA");
    let ca_file = pki.write("ca.crt", &ca.cert.pem());
    let (cert, key) = pki.leaf("localhost", &["localhost"], Some(&ca), false);
    let server = serve(&cert, &key, None);
    let to = format!("https://localhost:{}/secure", server.port);
    let b = Backend::start(move |_| redirect(308, &to));
    let cfg = config(&b.url(), "").replacen(
        r#""version": 3,"#,
        &format!(r#""version": 3, "client_tls": {{"ca_certs": ["{}"]}},"#, ca_file.display()),
        1,
    );
    let gw = Gw::start_env(&cfg, mode, &files_env(ProxyEnv::default()));
    let r = gw.get("/p");
    assert_eq!((r.status, r.text()), (200, r#"{"path":"/secure","tls":"TLSv1.3","client":null}"#));
}

every_driver!(same_origin, cross_origin, no_redirect, bad_redirects, to_https);
