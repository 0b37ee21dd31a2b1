//! HTTP client plugins end to end, on every driver: the example plugins
//! (`examples/plugins`, proxy-wasm modules built for wasm32-wasip1) bound to backends
//! as KrakenD's configuration binds them, and a plain Rust plugin bound by an embedding
//! application. Scripted backends on loopback record what each call sent.

mod support;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode};
use sluice_core::Gateway;
use sluice_core::gateway::plugin::{BackendRequest, BackendResponse, ClientPlugin, PluginFault, Verdict};
use support::{Backend, Gw, Mode, Reply, Seen, plugins};

fn field<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn target(seen: &Seen) -> &str {
    seen.head.split(' ').nth(1).unwrap_or_default()
}

/// `/hello/{id}` (hello, hijacking `/b/hijack-me`), `/post` (hello, a body through it),
/// `/raw/{id}` (no-op, faulty tagging both ways and misbehaving on cue), `/rawpost`
/// (a no-op POST through hello), `/wrap/{id}`
/// (faulty wrapping the backend's JSON before it is decoded), all on `host`.
fn config(host: &str) -> String {
    let faulty = r#""faulty": {"tag": "t1", "trap_on": "/b/trap", "loop_on": "/b/loop", "grow_on": "/b/grow"}"#;
    format!(
        r#"{{"version": 3, "plugin": {{"folder": "PLUGINS", "pattern": ".wasm"}},
        "extra_config": {{"router": {{"return_error_msg": true}}}},
        "endpoints": [
          {{"endpoint": "/hello/{{id}}", "backend": [{{"host": ["{host}"], "url_pattern": "/b/{{id}}",
            "extra_config": {{"plugin/http-client": {{"name": "hello", "hello": {{"path": "/b/hijack-me"}}}}}}}}]}},
          {{"endpoint": "/post", "method": "POST", "backend": [{{"host": ["{host}"], "url_pattern": "/b/post",
            "extra_config": {{"plugin/http-client": {{"name": "hello", "hello": {{"path": "/b/hijack-me"}}}}}}}}]}},
          {{"endpoint": "/raw/{{id}}", "output_encoding": "no-op", "backend": [{{"host": ["{host}"],
            "url_pattern": "/b/{{id}}", "encoding": "no-op",
            "extra_config": {{"plugin/http-client": {{"name": "faulty", {faulty}}}}}}}]}},
          {{"endpoint": "/rawpost", "method": "POST", "output_encoding": "no-op", "backend": [{{"host": ["{host}"],
            "url_pattern": "/b/post", "encoding": "no-op",
            "extra_config": {{"plugin/http-client": {{"name": "hello", "hello": {{"path": "/b/hijack-me"}}}}}}}}]}},
          {{"endpoint": "/wrap/{{id}}", "backend": [{{"host": ["{host}"], "url_pattern": "/b/{{id}}",
            "extra_config": {{"plugin/http-client": {{"name": "faulty", "faulty": {{"tag": "t2", "wrap": true}}}}}}}}]}}
        ]}}"#
    )
}

fn start(mode: Mode) -> (Backend, Gw) {
    let backend = Backend::start(|seen| {
        if target(seen) == "/b/post" { Reply::Echo } else { Reply::Json(r#"{"from":"backend"}"#.into()) }
    });
    let gw = Gw::start_gateway(plugins::gateway(&config(&backend.url())), mode);
    (backend, gw)
}

/// The source document's example: the configured path is answered by the plugin, with
/// `{"message": "<path>"}`, and the backend is never called; any other path, query
/// string or not, goes to the backend.
fn hijacked_and_passed(mode: Mode) {
    let (backend, gw) = start(mode);
    let r = gw.get("/hello/hijack-me");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), r#"{"message":"/b/hijack-me"}"#);
    assert_eq!(r.header("content-type"), Some("application/json; charset=utf-8"));
    assert_eq!(r.header("x-krakend-completed"), Some("true"));
    assert!(backend.requests().is_empty(), "the backend was called: {:?}", backend.requests());

    let r = gw.get("/hello/other");
    assert_eq!((r.status, r.text()), (200, r#"{"from":"backend"}"#));
    let seen = backend.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].head.starts_with("GET /b/other HTTP/1.1\r\n"), "{}", seen[0].head);

    // The plugin compares the path, not the query (as req.URL.Path in Go).
    let r = gw.get("/hello/hijack-me?debug=1");
    assert_eq!(r.text(), r#"{"message":"/b/hijack-me"}"#);
    assert_eq!(backend.requests().len(), 1);
}

/// A body goes through a plugin that lets the call pass: same bytes, same length.
fn body_through_plugin(mode: Mode) {
    let (backend, gw) = start(mode);
    let body = support::pattern(100_000);
    let r = gw.request("POST", "/post", &[("Content-Type", "application/octet-stream")], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let sum = support::checksum(&body);
    assert_eq!(r.text(), format!(r#"{{"method":"POST","length":100000,"sum":{sum}}}"#));
    let seen = backend.requests();
    assert_eq!(field(&seen[0], "content-length"), Some("100000"));
    assert_eq!(seen[0].body, body);
    // A no-op body goes through a bound plugin whole too (the plugin sees all of it), so
    // it is held to the 16 MiB limit on bodies read whole, unlike a plain no-op stream.
    let r = gw.request("POST", "/rawpost", &[], &body);
    let echoed = format!(r#"{{"method":"POST","length":100000,"sum":{sum}}}"#);
    assert_eq!((r.status, r.text()), (200, echoed.as_str()));
    let mut s = gw.connect();
    write!(s, "POST /rawpost HTTP/1.1\r\nHost: gw\r\nContent-Length: 17000000\r\n\r\n").unwrap();
    let r = support::read_response(&mut std::io::BufReader::new(s)).unwrap();
    assert_eq!((r.status, r.text()), (413, "body too large"));
    assert_eq!(backend.requests().len(), 2, "the refused body reached the backend");
}

/// A plugin changes both ways: a header on the request the backend sees, headers on the
/// answer (one of them the request's path, kept in the call's context), and the body
/// before the gateway decodes it.
fn headers_both_ways(mode: Mode) {
    let (backend, gw) = start(mode);
    let r = gw.get("/raw/x?q=1");
    assert_eq!((r.status, r.text()), (200, r#"{"from":"backend"}"#));
    assert_eq!(r.header("x-plugin-tag"), Some("t1"));
    assert_eq!(r.header("x-plugin-saw"), Some("/b/x"));
    assert_eq!(r.header("content-length"), Some("18"));
    let seen = backend.requests();
    assert_eq!(target(&seen[0]), "/b/x", "KrakenD forwards no query string unless input_query_strings says");
    assert_eq!(field(&seen[0], "x-plugin-tag"), Some("t1"));

    let r = gw.get("/wrap/y");
    assert_eq!((r.status, r.text()), (200, r#"{"wrapped":{"from":"backend"}}"#));
    assert_eq!(field(&backend.requests()[1], "x-plugin-tag"), Some("t2"));
}

/// A plugin that traps, loops forever or asks for too much memory fails that call
/// with a 500 naming it; the backend is not called; the next call gets a new instance
/// and works.
fn misbehaving_plugin_fails_the_call_only(mode: Mode) {
    let (backend, gw) = start(mode);
    for (path, least) in
        [("/raw/trap", Duration::ZERO), ("/raw/loop", Duration::from_millis(90)), ("/raw/grow", Duration::ZERO)]
    {
        let began = Instant::now();
        let r = gw.get(path);
        assert_eq!((r.status, r.text()), (500, "plugin faulty failed"), "{path}");
        assert!(began.elapsed() >= least, "{path} answered in {:?}", began.elapsed());
        assert!(backend.requests().is_empty(), "{path}: the backend was called");
        let r = gw.get("/raw/after");
        assert_eq!((r.status, r.header("x-plugin-saw")), (200, Some("/b/after")), "after {path}");
        assert_eq!(backend.requests().len(), 1);
        backend.seen.lock().unwrap().clear();
    }
}

/// An embedding application's own plugin: a plain Rust object, no WebAssembly.
#[derive(Debug, Default)]
struct Stamp {
    done: AtomicUsize,
}

impl ClientPlugin for Stamp {
    fn on_request(&self, call: &mut BackendRequest) -> Result<Verdict, PluginFault> {
        match call.path.as_str() {
            "/b/local" => {
                let mut headers = http::HeaderMap::new();
                headers.insert("x-answered-by", HeaderValue::from_static("stamp"));
                Ok(Verdict::Respond(BackendResponse {
                    status: StatusCode::OK,
                    headers,
                    body: br#"{"local":true}"#.to_vec(),
                }))
            }
            "/b/fail" => Err(PluginFault("refused".into())),
            _ => {
                call.headers.insert("x-stamp", HeaderValue::from_static("on"));
                call.path = format!("{}/stamped", call.path);
                Ok(Verdict::Continue)
            }
        }
    }

    fn on_response(&self, _call: &BackendRequest, response: &mut BackendResponse) -> Result<(), PluginFault> {
        response.body = br#"{"from":"stamp"}"#.to_vec();
        Ok(())
    }

    fn on_done(&self, _call: &BackendRequest) {
        self.done.fetch_add(1, Ordering::SeqCst);
    }
}

fn rust_object_plugin(mode: Mode) {
    let backend = Backend::start(|_| Reply::Json(r#"{"from":"backend"}"#.into()));
    let config = format!(
        r#"{{"version": 3, "endpoints": [{{"endpoint": "/s/{{id}}", "backend": [
            {{"host": ["{}"], "url_pattern": "/b/{{id}}", "group": "g"}}]}}]}}"#,
        backend.url()
    );
    let mut gw: Gateway = Gateway::load(&config).unwrap().gateway;
    let stamp = Arc::new(Stamp::default());
    assert!(gw.bind_plugin(0, 0, "stamp", stamp.clone()));
    assert!(!gw.bind_plugin(0, 1, "stamp", stamp.clone()), "no such backend");
    let gw = Gw::start_gateway(gw, mode);

    let r = gw.get("/s/x");
    assert_eq!((r.status, r.text()), (200, r#"{"g":{"from":"stamp"}}"#));
    let seen = backend.requests();
    assert!(seen[0].head.starts_with("GET /b/x/stamped HTTP/1.1\r\n"), "{}", seen[0].head);
    assert_eq!(field(&seen[0], "x-stamp"), Some("on"));

    let r = gw.get("/s/local");
    assert_eq!((r.status, r.text()), (200, r#"{"g":{"local":true}}"#));
    let r = gw.get("/s/fail");
    assert_eq!(r.status, 500);
    assert_eq!(backend.requests().len(), 1);
    assert_eq!(stamp.done.load(Ordering::SeqCst), 3);
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::IoUring => "uring",
        Mode::Epoll => "epoll",
        Mode::Tokio => "tokio",
    }
}

/// One no-op endpoint `/p/{id}` to `/b/{id}` on `host`, with the probe bound under
/// `name` with `binding` as its configuration, and the admin listener.
fn probe_config(host: &str, name: &str, binding: &str) -> String {
    format!(
        r#"{{"version": 3, "plugin": {{"folder": "PLUGINS", "pattern": ".wasm"}},
        "extra_config": {{"sluice/admin": {{}}}},
        "endpoints": [{{"endpoint": "/p/{{id}}", "output_encoding": "no-op",
          "input_headers": ["X-Call-Id", "X-Request-Id", "User-Agent", "Referer"],
          "input_query_strings": ["q"],
          "backend": [{{"host": ["{host}"], "url_pattern": "/b/{{id}}", "encoding": "no-op",
            "extra_config": {{"plugin/http-client": {{"name": "{name}", "{name}": {binding}}}}}}}]}}]}}"#
    )
}

/// The probe renamed `{prefix}_{mode}`, bound with `binding` on `probe_config`'s
/// endpoint in front of a backend answering by `script`, on a gateway of `mode`.
struct Probe {
    name: String,
    backend: Backend,
    gw: Gw,
    /// The renamed module's folder, kept while the gateway runs.
    _dir: support::Scratch,
}

fn probe_gateway(
    prefix: &str,
    mode: Mode,
    binding: &str,
    script: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
) -> Probe {
    let name = format!("{prefix}_{}", mode_name(mode));
    let dir = plugins::renamed(&[("probe", &name)]);
    let backend = Backend::start(script);
    let config = probe_config(&backend.url(), &name, binding);
    let gw = Gw::start_gateway(plugins::gateway_from(&config, &dir.0), mode);
    Probe { name, backend, gw, _dir: dir }
}

fn admin_page(gw: &Gw, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(gw.admin.expect("an admin listener")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").unwrap();
    support::read_response(&mut std::io::BufReader::new(s)).unwrap().text().to_string()
}

fn stat(page: &str, name: &str) -> Option<u64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.parse().ok())
}

/// Issue 32's acceptance: 200 concurrent calls through a stateful plugin, 4 tokio
/// workers (2 uring shards): every response phase runs in the context its request
/// ran in (it sees the call's own id), and every call ends with one `on_log`.
fn plugin_state_follows_each_call(mode: Mode) {
    plugins::record_log();
    let name = format!("state_{}", mode_name(mode));
    let dir = plugins::renamed(&[("probe", &name)]);
    let backend = Backend::start(|_| Reply::Slow(Duration::from_millis(20), r#"{"ok":true}"#.into()));
    let config = probe_config(&backend.url(), &name, r#""hi""#);
    let threads = if mode == Mode::Tokio { 4 } else { 2 };
    let gw = Gw::start_with(plugins::gateway_from(&config, &dir.0), mode, |o| o.threads = threads);
    let addr = gw.addr;
    let calls: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                write!(s, "GET /p/x HTTP/1.1\r\nHost: gw\r\nX-Call-Id: call-{i}\r\nConnection: close\r\n\r\n").unwrap();
                let r = support::read_response(&mut std::io::BufReader::new(s)).unwrap();
                (i, r.status, r.header("x-call-state").map(str::to_string))
            })
        })
        .collect();
    let mut own = 0;
    for call in calls {
        let (i, status, state) = call.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(state.as_deref(), Some(format!("call-{i}").as_str()), "call {i} saw another call's state");
        own += 1;
    }
    assert_eq!(own, 200);
    let page = admin_page(&gw, "/stats");
    let at = |m: &str| stat(&page, &format!("plugin.{name}.{m}"));
    assert_eq!(
        (at("calls"), at("logs"), at("logs_2xx"), at("open")),
        (Some(200), Some(200), Some(200), Some(0)),
        "{page}"
    );
    assert_eq!(backend.requests().len(), 200);
    // One `on_log call=<id>` line per call, each with its own call's id (the last
    // ones may still be written as the metric is read).
    let began = Instant::now();
    let logged = loop {
        let prefix = format!("INFO [PLUGIN: {name}] on_log call=");
        let logged: Vec<String> = plugins::log_of(&name)
            .iter()
            .filter_map(|l| Some(l.strip_prefix(&prefix)?.split(' ').next()?.to_string()))
            .collect();
        if logged.len() >= 200 || began.elapsed() > Duration::from_secs(5) {
            break logged;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut ids = logged.clone();
    ids.sort();
    let mut expected: Vec<String> = (0..200).map(|i| format!("call-{i}")).collect();
    expected.sort();
    assert_eq!(ids, expected, "{logged:?}");
}

/// A local reply goes through the plugin's own response callbacks, with Envoy's
/// default `content-type`; a string configuration arrives as it is written; trailer
/// maps are empty, not missing; the header counts include the pseudo-headers.
fn plugin_local_reply_config_and_maps(mode: Mode) {
    let Probe { backend, gw, _dir, .. } =
        probe_gateway("local", mode, r#""The secret to life, the universe and everything""#, |_| {
            Reply::Json(r#"{"from":"backend"}"#.into())
        });

    let r = gw.get("/p/hello");
    assert_eq!((r.status, r.text()), (200, "Hello, World!\n"));
    assert_eq!(r.header("hello"), Some("World"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("content-length"), Some("14"));
    // What the response callbacks saw of the local reply, and added to it.
    assert_eq!(r.header("powered-by"), Some("proxy-wasm"));
    assert_eq!(r.header("x-seen-status"), Some("200"));
    assert_eq!(r.header("x-seen-type"), Some("text/plain"));
    assert_eq!(r.header("x-response-fields"), Some("4"), ":status, hello, content-type, content-length");
    assert_eq!(r.header("x-trailers"), Some("0/0"));
    assert!(backend.requests().is_empty(), "the backend was called");

    let r = gw.request("GET", "/p/other", &[("User-Agent", "probe/1")], &[]);
    assert_eq!((r.status, r.text()), (200, r#"{"from":"backend"}"#));
    let seen = backend.requests();
    assert_eq!(field(&seen[0], "x-greeting"), Some("The secret to life, the universe and everything"));
    // :authority, :path, :method, :scheme, then user-agent, x-forwarded-for,
    // x-forwarded-host, x-forwarded-via (what the gateway sends a backend).
    assert_eq!(r.header("x-request-fields"), Some("8"), "{:?}", seen[0].head);
    assert_eq!(r.header("x-seen-status"), Some("200"));
    assert_eq!(r.header("x-trailers"), Some("0/0"));
    assert_eq!(r.header("x-call-state"), Some("-"));
}

/// The properties a filter reads, with the values docs/plugins.md gives.
fn plugin_properties(mode: Mode) {
    let Probe { name, backend, gw, _dir } =
        probe_gateway("props", mode, r#"{"greeting": "hi"}"#, |_| Reply::Json("{}".into()));
    let fields = [("User-Agent", "probe/1"), ("Referer", "http://ref.test/"), ("X-Request-Id", "req-7")];
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let mut s = gw.connect();
    let me = s.local_addr().unwrap();
    let mut head = "GET /p/props?q=1 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n".to_string();
    for (n, v) in fields {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    write!(s, "{head}\r\n").unwrap();
    let r = support::read_response(&mut std::io::BufReader::new(s)).unwrap();
    let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    assert_eq!(r.status, 200);
    let mut props: serde_json::Value = serde_json::from_str(r.header("x-props").expect("x-props")).unwrap();
    let time = props["request.time"].as_i64().unwrap();
    assert!(before <= time && time <= after, "{before} <= {time} <= {after}");
    props["request.time"] = serde_json::Value::Null;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    assert_eq!(
        props,
        serde_json::json!({
            "request.scheme": "http", "request.id": "req-7", "request.time": null,
            "request.useragent": "probe/1", "request.referer": "http://ref.test/",
            "request.method": "GET", "request.url_path": "/b/props", "request.query": "q=1",
            "source.address": me.to_string(), "source.port": me.port(),
            "destination.address": gw.addr.to_string(), "destination.port": gw.addr.port(),
            "upstream.address": backend.addr.to_string(),
            "plugin_name": name, "plugin_vm_id": name, "node.id": host,
            "response.code": 200, "response.size": 2, ":scheme": "http"
        })
    );
    // Without an X-Request-Id, one is made for the call: a UUID.
    let r = gw.get("/p/props");
    let props: serde_json::Value = serde_json::from_str(r.header("x-props").unwrap()).unwrap();
    let id = props["request.id"].as_str().unwrap();
    assert_eq!((id.len(), id.as_bytes()[14], id.matches('-').count()), (36, b'4', 4), "{id}");
}

/// Metrics on the admin pages, shared data counted up with compare-and-swap, a shared
/// queue's item delivered to the instance that registered it.
fn plugin_metrics_shared_data_and_queues(mode: Mode) {
    let Probe { name, gw, _dir, .. } = probe_gateway("shared", mode, r#""hi""#, |_| Reply::Json(r#"{"n":1}"#.into()));
    assert_eq!(gw.get("/p/count").header("x-count"), Some("1"));
    assert_eq!(gw.get("/p/count").header("x-count"), Some("2"));
    assert_eq!(gw.get("/p/enqueue").status, 200);
    // The queue's owner hears of the item before its next callback.
    let r = gw.get("/p/after");
    assert_eq!(r.header("x-calls"), Some("4"));
    let page = admin_page(&gw, "/stats");
    let at = |m: &str| stat(&page, &format!("plugin.{name}.{m}"));
    assert_eq!(
        (at("calls"), at("logs"), at("open"), at("events"), at("body_bytes.count"), at("body_bytes.sum")),
        (Some(4), Some(4), Some(0), Some(1), Some(4), Some(28)),
        "{page}"
    );
    let prom = admin_page(&gw, "/stats/prometheus");
    for line in [
        "# TYPE sluice_plugin_counter counter".to_string(),
        format!("sluice_plugin_counter{{plugin=\"{name}\",name=\"calls\"}} 4"),
        format!("sluice_plugin_gauge{{plugin=\"{name}\",name=\"open\"}} 0"),
        format!("sluice_plugin_histogram_count{{plugin=\"{name}\",name=\"body_bytes\"}} 4"),
        format!("sluice_plugin_histogram_sum{{plugin=\"{name}\",name=\"body_bytes\"}} 28"),
    ] {
        assert!(prom.lines().any(|l| l == line), "no {line:?} in\n{prom}");
    }
}

/// The external-auth pattern: the plugin holds the call, asks an upstream of its
/// binding through the gateway's client, and resumes the call (with what it learnt) or
/// answers it itself; a call out that fails, times out or names no upstream is the
/// plugin's to answer; gRPC calls out are refused with the plugin named.
fn plugin_calls_out_and_resumes(mode: Mode) {
    plugins::record_log();
    let name = format!("auth_{}", mode_name(mode));
    let dir = plugins::renamed(&[("probe", &name)]);
    let backend = Backend::start(|_| Reply::Json(r#"{"from":"backend"}"#.into()));
    let auth = Backend::start(|seen| match target(seen) {
        "/check?who=ok" => Reply::Json("alice".into()),
        _ => Reply::Raw(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno".to_vec()),
    });
    let slow = Backend::start(|_| Reply::Hang);
    // Closes every connection unanswered (a free port could be taken meanwhile by
    // another test's listener).
    let closing = Backend::start(|_| Reply::Close);
    let down = closing.url();
    let config = format!(
        r#"{{"version": 3, "plugin": {{"folder": "PLUGINS", "pattern": ".wasm"}},
        "extra_config": {{"router": {{"return_error_msg": true}}}},
        "endpoints": [{{"endpoint": "/p/{{id}}", "output_encoding": "no-op", "input_headers": ["X-Call-Id"],
          "backend": [{{"host": ["{}"], "url_pattern": "/b/{{id}}", "encoding": "no-op",
            "extra_config": {{"plugin/http-client": {{"name": "{name}", "{name}": "hi",
              "upstreams": {{"auth": "{}", "slow": ["{}"], "down": "{down}"}}}}}}}}]}}]}}"#,
        backend.url(),
        auth.url(),
        slow.url()
    );
    let gw = Gw::start_gateway(plugins::gateway_from(&config, &dir.0), mode);
    let call = |path: &str, who: &str| gw.request("GET", path, &[("X-Call-Id", who)], &[]);

    let r = call("/p/auth", "ok");
    assert_eq!((r.status, r.text()), (200, r#"{"from":"backend"}"#));
    assert_eq!(r.header("x-call-state"), Some("ok"));
    let seen = backend.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(field(&seen[0], "x-auth"), Some("alice"), "{}", seen[0].head);
    let asked = auth.requests();
    assert!(asked[0].head.starts_with("GET /check?who=ok HTTP/1.1\r\n"), "{}", asked[0].head);
    assert_eq!(field(&asked[0], "host"), Some("auth.internal"));

    let r = call("/p/auth", "mallory");
    assert_eq!((r.status, r.text(), r.header("x-denied")), (403, "denied", Some("yes")));
    assert_eq!(r.header("powered-by"), Some("proxy-wasm"), "a local reply runs the response callbacks");
    assert_eq!(backend.requests().len(), 1, "a denied call reached the backend");
    assert_eq!(auth.requests().len(), 2);

    let r = call("/p/auth-down", "ok");
    assert_eq!((r.status, r.text()), (503, "auth unavailable"));
    let began = Instant::now();
    let r = call("/p/auth-slow", "ok");
    assert_eq!((r.status, r.text()), (503, "auth unavailable"));
    assert!(began.elapsed() >= Duration::from_millis(290), "the call out's 300 ms: {:?}", began.elapsed());
    assert!(began.elapsed() < Duration::from_secs(2), "{:?}", began.elapsed());
    let r = call("/p/auth-unknown", "ok");
    assert_eq!((r.status, r.text()), (500, "cannot call out: BadArgument"));
    // A :authority that is not one (a line break in it) is refused at dispatch.
    let r = call("/p/auth-bad", "ok");
    assert_eq!((r.status, r.text()), (500, "cannot call out: BadArgument"));
    assert_eq!(auth.requests().len(), 2, "a malformed call out reached the upstream");
    // A plugin that resets the call and lets it go on fails it: it is not sent.
    let r = call("/p/reset", "ok");
    assert_eq!((r.status, r.text()), (500, format!("plugin {name} failed").as_str()));
    let r = call("/p/grpc", "ok");
    assert_eq!((r.status, r.text()), (500, format!("plugin {name} failed").as_str()));
    assert_eq!(backend.requests().len(), 1);
    // The log names the call that is not implemented, then the trap it led to.
    let logged = plugins::log_of(&name);
    let warned = format!("WARN [PLUGIN: {name}] proxy_grpc_call is not implemented (gRPC calls out): Unimplemented");
    assert_eq!(logged.iter().filter(|l| **l == warned).count(), 1, "{logged:#?}");
    let after = "(after calling env.proxy_grpc_call, which Sluice does not implement); the call fails with 500 and \
                 the instance is started again";
    let trapped: Vec<&String> = logged.iter().filter(|l| l.ends_with(after)).collect();
    assert_eq!(trapped.len(), 1, "{logged:#?}");
    let panicked =
        format!("ERROR [PLUGIN: {name}] trapped (unreachable: a panic or an abort in the plugin): panicked at ");
    assert!(trapped[0].starts_with(&panicked) && trapped[0].contains(": unexpected status: 12 "), "{}", trapped[0]);
}

/// A host call that answers an error status makes the SDK panic (a request trailer
/// set: `BadArgument`, calls carry no trailers): the call fails with 500, and the log
/// line of the trap names that call and its status; the next call works.
fn plugin_trap_names_the_failing_host_call(mode: Mode) {
    plugins::record_log();
    let Probe { name, backend, gw, _dir } =
        probe_gateway("trailer", mode, r#""hi""#, |_| Reply::Json(r#"{"from":"backend"}"#.into()));
    let r = gw.get("/p/trailer");
    assert_eq!((r.status, r.text()), (500, format!("plugin {name} failed").as_str()));
    assert!(backend.requests().is_empty(), "the backend was called");
    let logged = plugins::log_of(&name);
    let trapped: Vec<&String> = logged.iter().filter(|l| l.contains("instance is started again")).collect();
    assert_eq!(trapped.len(), 1, "{logged:#?}");
    let (start, end) = (
        format!("ERROR [PLUGIN: {name}] trapped (unreachable: a panic or an abort in the plugin): panicked at "),
        ": unexpected status: 2 (after proxy_replace_header_map_value returned BadArgument); the call fails with \
         500 and the instance is started again",
    );
    assert!(trapped[0].starts_with(&start) && trapped[0].ends_with(end), "{}", trapped[0]);
    // A limit the module runs into after a host call answered an error is not put on
    // that call: the time budget, the memory limit.
    for path in ["/p/fail-then-spin", "/p/fail-then-grow"] {
        let r = gw.get(path);
        assert_eq!((r.status, r.text()), (500, format!("plugin {name} failed").as_str()), "{path}");
    }
    let logged = plugins::log_of(&name);
    let trapped: Vec<&String> = logged.iter().filter(|l| l.contains("instance is started again")).collect();
    assert_eq!(trapped.len(), 3, "{logged:#?}");
    let lost = "; the call fails with 500 and the instance is started again";
    assert_eq!(*trapped[1], format!("ERROR [PLUGIN: {name}] ran past its time budget of 100 ms{lost}"));
    assert_eq!(*trapped[2], format!("ERROR [PLUGIN: {name}] asked for more than 64 MiB of memory{lost}"));
    assert_eq!(logged.iter().filter(|l| l.contains(" (after ")).count(), 1, "{logged:#?}");
    let r = gw.get("/p/after");
    assert_eq!((r.status, r.text()), (200, r#"{"from":"backend"}"#));
    assert_eq!(backend.requests().len(), 1);
}

/// The time budget is CPU time: a callback whose thread is kept off the CPU past 100 ms
/// (here inside its log call, as a busy machine's scheduler would) goes on, its call
/// answered, its instance kept; one that spins is still cut.
fn plugin_time_budget_counts_cpu_time(mode: Mode) {
    plugins::record_log();
    let Probe { name, backend, gw, _dir } =
        probe_gateway("held", mode, r#""hi""#, |_| Reply::Json(r#"{"from":"backend"}"#.into()));
    let started = std::time::Instant::now();
    let r = gw.request("GET", "/p/hold", &[("X-Call-Id", "held")], b"");
    assert!(started.elapsed() >= Duration::from_millis(150), "the thread was not held");
    assert_eq!((r.status, r.text()), (200, r#"{"from":"backend"}"#));
    assert_eq!(r.header("x-call-state"), Some("held"));
    let sent = backend.requests();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].head.contains("\r\nx-held: 1000\r\n"), "the callback ran on after its host call: {}", sent[0].head);
    let logged = plugins::log_of(&name);
    assert!(!logged.iter().any(|l| l.contains("time budget") || l.contains("started again")), "{logged:#?}");
    let r = gw.get("/p/fail-then-spin");
    assert_eq!((r.status, r.text()), (500, format!("plugin {name} failed").as_str()));
    let logged = plugins::log_of(&name);
    let cut = format!(
        "ERROR [PLUGIN: {name}] ran past its time budget of 100 ms; the call fails with 500 and the instance is started again"
    );
    assert_eq!(logged.iter().filter(|l| **l == cut).count(), 1, "{logged:#?}");
}

/// A host call Sluice does not implement, whose status the module takes and goes on:
/// warned about once per instance, however many calls make it (one instance here: one
/// worker, one shard); the instance started again after a trap is warned about again.
fn plugin_unimplemented_call_is_said_once(mode: Mode) {
    plugins::record_log();
    let Probe { name, backend, gw, _dir } =
        probe_gateway("unimplemented", mode, r#""hi""#, |_| Reply::Json(r#"{"from":"backend"}"#.into()));
    let warned = format!("WARN [PLUGIN: {name}] proxy_grpc_cancel is not implemented (gRPC calls out): Unimplemented");
    let count = || plugins::log_of(&name).iter().filter(|l| **l == warned).count();
    for _ in 0..3 {
        let r = gw.get("/p/unimplemented");
        assert_eq!((r.status, r.text()), (200, r#"{"from":"backend"}"#));
    }
    let seen = backend.requests();
    assert_eq!(seen.len(), 3);
    // Two calls each, both answered Unimplemented (12).
    assert!(seen.iter().all(|s| field(s, "x-raw-status") == Some("12,12")), "{}", seen[0].head);
    assert_eq!(count(), 1, "{:#?}", plugins::log_of(&name));
    assert_eq!(gw.get("/p/trailer").status, 500);
    for _ in 0..2 {
        assert_eq!(gw.get("/p/unimplemented").status, 200);
    }
    assert_eq!(count(), 2, "{:#?}", plugins::log_of(&name));
}

/// Ticks: the period a plugin sets (here during a call, after the start) drives
/// `on_tick`, through core's ticker on every driver (each shard's instance on uring,
/// every instance on tokio).
fn plugin_ticks(mode: Mode) {
    let name = format!("ticks_{}", mode_name(mode));
    let dir = plugins::renamed(&[("probe", &name)]);
    let backend = Backend::start(|_| Reply::Json("{}".into()));
    let config = probe_config(&backend.url(), &name, r#"{"greeting": "no ticks yet"}"#);
    let gw = Gw::start_with(plugins::gateway_from(&config, &dir.0), mode, |o| o.threads = 2);
    std::thread::sleep(Duration::from_millis(150));
    let page = admin_page(&gw, "/stats");
    assert_eq!(stat(&page, &format!("plugin.{name}.ticks")), Some(0), "{page}");
    // A period set during a call, after the start, is taken up.
    assert_eq!(gw.get("/p/start-ticks").status, 200);
    let began = Instant::now();
    let ticks = loop {
        let page = admin_page(&gw, "/stats");
        let n = stat(&page, &format!("plugin.{name}.ticks")).unwrap_or(0);
        if n >= 10 || began.elapsed() > Duration::from_secs(10) {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(ticks >= 10, "{ticks} ticks in {:?}", began.elapsed());
    assert_eq!(gw.get("/p/x").status, 200);
    assert_eq!(backend.requests().len(), 2);
}

/// `on_done`, `on_log` and `on_delete` run once for every call, however it ends: a
/// backend that fails, the endpoint's timeout, the client gone.
fn plugin_calls_end_however_they_end(mode: Mode) {
    let name = format!("ends_{}", mode_name(mode));
    let dir = plugins::renamed(&[("probe", &name)]);
    let backend = Backend::start(|seen| match target(seen) {
        "/b/close" => Reply::Close,
        "/b/hang" => Reply::Hang,
        _ => Reply::Json("{}".into()),
    });
    let config = probe_config(&backend.url(), &name, r#""hi""#)
        .replace(r#""endpoint": "/p/{id}","#, r#""endpoint": "/p/{id}", "timeout": "400ms","#);
    let gw = Gw::start_gateway(plugins::gateway_from(&config, &dir.0), mode);
    assert_eq!(gw.get("/p/close").status, 502);
    assert_eq!(gw.get("/p/hang").status, 504);
    // The client leaves while the backend keeps the call.
    let mut s = gw.connect();
    write!(s, "GET /p/hang HTTP/1.1\r\nHost: gw\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(s);
    let began = Instant::now();
    let page = loop {
        let page = admin_page(&gw, "/stats");
        if stat(&page, &format!("plugin.{name}.logs")) == Some(3) || began.elapsed() > Duration::from_secs(5) {
            break page;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let at = |m: &str| stat(&page, &format!("plugin.{name}.{m}"));
    assert_eq!((at("calls"), at("logs"), at("logs_2xx"), at("open")), (Some(3), Some(3), Some(0), Some(0)), "{page}");
}

every_driver!(
    plugin_time_budget_counts_cpu_time,
    plugin_calls_end_however_they_end,
    plugin_ticks,
    plugin_calls_out_and_resumes,
    plugin_trap_names_the_failing_host_call,
    plugin_unimplemented_call_is_said_once,
    plugin_state_follows_each_call,
    plugin_local_reply_config_and_maps,
    plugin_properties,
    plugin_metrics_shared_data_and_queues,
    hijacked_and_passed,
    body_through_plugin,
    headers_both_ways,
    misbehaving_plugin_fails_the_call_only,
    rust_object_plugin
);
