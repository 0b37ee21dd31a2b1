//! Backends through corporate HTTP proxies (seed 000), on every driver: real tinyproxy
//! and squid started on loopback, a backend's own `proxy_address`, the built-in
//! `http-proxy` plugin, and the environment (`HTTP_PROXY`, `NO_PROXY`) with a scripted
//! proxy that records exactly what it was sent. `.ci/run` installs tinyproxy and squid.

mod support;

use std::time::{Duration, Instant};

use sluice_core::call::proxy::ProxyEnv;
use support::proxies::{free_port, squid, tinyproxy};
use support::{Backend, Gw, Mode, Reply, files_env};

fn backend() -> Backend {
    Backend::start(|seen| {
        let path = seen.head.split(' ').nth(1).unwrap_or_default().to_string();
        Reply::Json(format!(r#"{{"path":"{path}","n":1}}"#))
    })
}

/// One endpoint `/p` with one no-op backend and one aggregating endpoint `/agg`, on
/// `host`, with `extra` as the backends' extra_config.
fn config(host: &str, extra: &str) -> String {
    format!(
        r#"{{"version": 3, "endpoints": [
            {{"endpoint": "/p", "output_encoding": "no-op",
              "backend": [{{"host": ["{host}"], "url_pattern": "/raw?x=1", "encoding": "no-op", "extra_config": {{{extra}}}}}]}},
            {{"endpoint": "/agg",
              "backend": [{{"host": ["{host}"], "url_pattern": "/a", "group": "a", "extra_config": {{{extra}}}}}]}}]}}"#
    )
}

fn head_line<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Sends `rounds` no-op requests and one aggregated request through `gw`, checks the
/// exact answers, and that the backend saw each through `via_name` (its `Via`).
fn answered_through(gw: &Gw, b: &Backend, rounds: usize, via_name: &str) {
    for _ in 0..rounds {
        let r = gw.get("/p");
        assert_eq!((r.status, r.text()), (200, r#"{"path":"/raw?x=1","n":1}"#));
    }
    let r = gw.get("/agg");
    assert_eq!((r.status, r.text()), (200, r#"{"a":{"path":"/a","n":1}}"#));
    let seen = b.requests();
    assert_eq!(seen.len(), rounds + 1);
    for s in &seen {
        let via = head_line(&s.head, "via").unwrap_or_default();
        assert!(via.contains(via_name), "not through {via_name}: {}", s.head);
        assert_eq!(head_line(&s.head, "host"), Some(b.addr.to_string().as_str()));
        assert_eq!(head_line(&s.head, "user-agent"), Some("Sluice/0.1.0"));
    }
}

/// Through tinyproxy, configured per backend as `proxy_address`: the backend sees the
/// request tinyproxy forwarded (its Via), the client gets the backend's exact answer.
fn through_tinyproxy(mode: Mode) {
    let proxy = tinyproxy("");
    let b = backend();
    let extra = format!(r#""backend/http/client": {{"proxy_address": "http://127.0.0.1:{}"}}"#, proxy.port);
    answered_through(&Gw::start(&config(&b.url(), &extra), mode), &b, 3, "tinyproxy");
}

/// The same through squid, named by the built-in `http-proxy` plugin (seed 000's form).
fn through_squid_plugin(mode: Mode) {
    let proxy = squid();
    let b = backend();
    let extra = format!(
        r#""plugin/http-client": {{"name": "http-proxy", "proxy_address": "http://127.0.0.1:{}"}}"#,
        proxy.port
    );
    answered_through(&Gw::start(&config(&b.url(), &extra), mode), &b, 1, "squid");
}

/// tinyproxy asking for credentials: the right ones in the proxy URL pass; none get
/// the proxy's 407 turned into a failed backend call (502 on no-op, 500 when
/// aggregating), never a 407 to the client, and nothing reaches the backend.
fn tinyproxy_credentials(mode: Mode) {
    let proxy = tinyproxy("BasicAuth sluice s3cr3t");
    let b = backend();
    let with =
        format!(r#""backend/http/client": {{"proxy_address": "http://sluice:s3cr3t@127.0.0.1:{}"}}"#, proxy.port);
    let gw = Gw::start(&config(&b.url(), &with), mode);
    let r = gw.get("/p");
    assert_eq!((r.status, r.text()), (200, r#"{"path":"/raw?x=1","n":1}"#));
    // The proxy's credentials are the proxy's: the backend does not see them.
    assert_eq!(head_line(&b.requests()[0].head, "proxy-authorization"), None);
    drop(gw);
    let without = format!(r#""backend/http/client": {{"proxy_address": "http://127.0.0.1:{}"}}"#, proxy.port);
    let gw = Gw::start(&config(&b.url(), &without), mode);
    assert_eq!(gw.get("/p").status, 502);
    assert_eq!(gw.get("/agg").status, 500);
    assert_eq!(b.requests().len(), 1);
}

/// `HTTP_PROXY` applies to every backend but loopback ones and what `NO_PROXY` names.
/// The proxy is scripted: it records the absolute-form request line exactly.
fn environment_proxy(mode: Mode) {
    let proxy = Backend::start(|seen| {
        let target = seen.head.split(' ').nth(1).unwrap_or_default().to_string();
        Reply::Json(format!(r#"{{"proxied":"{target}"}}"#))
    });
    let direct = backend();
    let env = files_env(
        ProxyEnv::from_vars(|name| match name {
            "HTTP_PROXY" => Some(format!("http://u:p@{}", proxy.addr)),
            "NO_PROXY" => Some("skip.example, 10.0.0.0/8".into()),
            _ => None,
        })
        .unwrap(),
    );
    let cfg = |host: &str| config(host, "");
    // A name: proxied (the gateway never resolves it; the proxy would).
    let gw = Gw::start_env(&cfg("http://api.example:8080"), mode, &env);
    let r = gw.get("/p");
    assert_eq!((r.status, r.text()), (200, r#"{"proxied":"http://api.example:8080/raw?x=1"}"#));
    let head = &proxy.requests()[0].head;
    assert!(head.starts_with("GET http://api.example:8080/raw?x=1 HTTP/1.1\r\n"), "{head}");
    assert_eq!(head_line(head, "host"), Some("api.example:8080"));
    assert_eq!(head_line(head, "proxy-authorization"), Some("Basic dTpw"));
    drop(gw);
    // Loopback: direct, whatever the environment says.
    let gw = Gw::start_env(&cfg(&direct.url()), mode, &env);
    assert_eq!(gw.get("/p").text(), r#"{"path":"/raw?x=1","n":1}"#);
    assert_eq!(direct.requests().len(), 1);
    drop(gw);
    assert_eq!(proxy.requests().len(), 1);
    // NO_PROXY: direct. Checked in the plan: going direct to a name that does not
    // resolve would wait on the machine's DNS, and nothing leaves loopback here.
    for (host, proxied) in
        [("http://api.skip.example:8080", false), ("http://10.1.2.3", false), ("http://x.example", true)]
    {
        let g = sluice_core::Gateway::load_with(&cfg(host), &env).unwrap().gateway;
        let via = g.endpoints[0].backends[0].hosts[0].proxy.as_ref();
        assert_eq!(
            via.map(|p| p.shown.as_str()),
            proxied.then(|| format!("http://***@{}", proxy.addr)).as_deref(),
            "{host}"
        );
    }
}

/// An unreachable proxy fails the call as a refused backend would: 502 on no-op,
/// 500 when aggregating, at once.
fn unreachable_proxy(mode: Mode) {
    let b = backend();
    let dead = free_port();
    let extra = format!(r#""backend/http/client": {{"proxy_address": "http://127.0.0.1:{dead}"}}"#);
    let gw = Gw::start(&config(&b.url(), &extra), mode);
    let start = Instant::now();
    assert_eq!(gw.get("/p").status, 502);
    assert_eq!(gw.get("/agg").status, 500);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(b.requests().is_empty());
}

every_driver!(through_tinyproxy, through_squid_plugin, tinyproxy_credentials, environment_proxy, unreachable_proxy);
