//! `telemetry/opentelemetry` through the real binary on every runtime: spans posted
//! over OTLP/HTTP to a local receiver that decodes them with the OpenTelemetry
//! project's own protobuf classes (tests/otlp_receiver.py), checked span by span
//! (names, kinds, parents, attributes, status), and the `traceparent` each backend
//! received.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Backend, Reaped, Reply, Scratch, get_once, sluice_run};

/// The receiver: its port, and the span lines it printed so far.
struct Receiver {
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    _child: Reaped,
}

impl Receiver {
    fn start() -> Receiver {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otlp_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("60")
            .stdout(Stdio::piped())
            .spawn()
            .map(Reaped)
            .expect("python3 with opentelemetry-proto (pip install opentelemetry-proto)");
        let mut out = BufReader::new(child.0.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let port =
            first.trim().strip_prefix("PORT ").unwrap_or_else(|| panic!("receiver said {first:?}")).parse().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push(line);
            }
        });
        Receiver { port, lines, _child: child }
    }

    /// The spans, once `n` came (at most 10 s), by id.
    fn spans(&self, n: usize) -> Vec<Value> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.lines.lock().unwrap().clone();
            assert!(!lines.iter().any(|l| l.starts_with("BAD")), "{lines:#?}");
            if lines.len() >= n || Instant::now() > end {
                assert_eq!(lines.len(), n, "{lines:#?}");
                return lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A request header as a backend saw it.
fn field(seen: &str, name: &str) -> Option<String> {
    seen.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// Starts `sluice run` on `file` with `args` (spans exported every 50 ms), and reads
/// its gateway and admin ports from the start-up line (`...; listening on A; admin
/// on http://B/stats`), waiting at most 20 s. Its log lines, then and later, go to
/// the vector returned.
fn start(file: &std::path::Path, args: &[&str]) -> (Reaped, u16, u16, Arc<Mutex<Vec<String>>>) {
    let mut child = sluice_run(file, args, None)
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(Reaped)
        .unwrap();
    let lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some((_, rest)) = line.split_once("; listening on ") {
                let port_of = |a: &str| a.trim().rsplit(':').next().unwrap().parse::<u16>().unwrap();
                let (gw, admin) = rest.split_once("; admin on http://").unwrap();
                let _ = tx.send((port_of(gw), port_of(admin.trim().trim_end_matches("/stats"))));
            }
            sink.lock().unwrap().push(line);
        }
    });
    let (port, admin) = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no start-up line in 20 s: {:#?}", log.lock().unwrap()));
    (child, port, admin, log)
}

/// The stopped child's exit code, within 20 s (killed and failed past that).
fn exit_code(child: &mut Reaped) -> Option<i32> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > end {
            let _ = child.0.kill();
            panic!("sluice did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traces_reach_the_collector(runtime: &[&str]) {
    let receiver = Receiver::start();
    let backend = Backend::start(|_| Reply::Json(r#"{"a":1}"#.into()));
    let dir = Scratch::new("traces");
    let file = dir.0.join("krakend.json");
    let config = format!(
        r#"{{"version": 3, "name": "gw", "extra_config": {{
            "telemetry/opentelemetry": {{"service_version": "1.2", "deploy_env": "test",
                "skip_paths": ["/__health", "/skipped/:id"],
                "exporters": {{"otlp": [{{"name": "local", "host": "127.0.0.1", "port": {rp}, "use_http": true,
                    "disable_metrics": true}}]}},
                "layers": {{"global": {{"traces_static_attributes": [{{"key": "team", "value": "edge"}}]}}}}}},
            "sluice/admin": {{"port": 0}}}},
          "endpoints": [
            {{"endpoint": "/agg/{{id}}", "input_headers": ["*"], "input_query_strings": ["q"],
              "extra_config": {{"telemetry/opentelemetry": {{"global": {{"traces_static_attributes": [{{"key": "ep", "value": "agg"}}]}}}}}},
              "backend": [
                {{"host": ["{b}"], "url_pattern": "/users/{{id}}"}},
                {{"host": ["http://127.0.0.1:1"], "url_pattern": "/x"}}]}},
            {{"endpoint": "/noop", "output_encoding": "no-op",
              "backend": [{{"host": ["{b}"], "url_pattern": "/n", "encoding": "no-op"}}]}},
            {{"endpoint": "/quiet", "input_headers": ["*"],
              "extra_config": {{"telemetry/opentelemetry": {{"proxy": {{"disable_traces": true}}}}}},
              "backend": [{{"host": ["{b}"], "url_pattern": "/q",
                "extra_config": {{"telemetry/opentelemetry": {{"backend": {{"traces":
                    {{"disable_stage": true, "round_trip": true}}}}}}}}}}]}},
            {{"endpoint": "/skipped/{{id}}", "backend": [{{"host": ["{b}"], "url_pattern": "/s"}}]}},
            {{"endpoint": "/dark",
              "backend": [{{"host": ["{b}"], "url_pattern": "/d",
                "extra_config": {{"telemetry/opentelemetry": {{"backend": {{"traces": {{}}}}}}}}}}]}}]}}"#,
        rp = receiver.port,
        b = backend.url(),
    );
    std::fs::write(&file, config).unwrap();
    let mut args = vec!["-p", "0", "--shards", "2"];
    args.extend_from_slice(runtime);
    let (mut child, port, admin, log) = start(&file, &args);

    // 1. A client's context: continued, and each backend call's own passed on.
    let parent = format!("traceparent: 00-{CLIENT_TRACE}-{CLIENT_SPAN}-01\r\ntracestate: a=1,b=2\r\n");
    let r = get_once(port, "/agg/7?q=1", &parent);
    assert_eq!(r.status, 200);
    let body_len = r.body.len() as i64;
    let spans = receiver.spans(6);
    let by_stage =
        |stage: &str| -> Vec<&Value> { spans.iter().filter(|s| attr(s, "krakend.stage") == stage).collect() };
    for s in &spans {
        assert_eq!(s["trace"], CLIENT_TRACE, "{s}");
        assert_eq!(s["state"], "a=1,b=2", "{s}");
        assert_eq!(s["flags"], 1, "{s}");
        assert_eq!(s["scope"], "sluice");
        assert_eq!(s["schema"], "https://opentelemetry.io/schemas/1.21.0");
        let resource: BTreeMap<String, Value> = serde_json::from_value(s["resource"].clone()).unwrap();
        assert_eq!(
            resource,
            BTreeMap::from([
                ("service.name".into(), "gw".into()),
                ("service.version".into(), "1.2".into()),
                ("deployment.environment".into(), "test".into()),
            ])
        );
        assert!(s["end"].as_u64() >= s["start"].as_u64() && s["start"].as_u64() > Some(1_700_000_000_000_000_000));
    }
    let server = by_stage("global");
    assert_eq!(server.len(), 1);
    let server = server[0];
    assert_eq!((server["name"].as_str(), server["kind"].as_i64()), (Some("/agg/7"), Some(2)));
    assert_eq!(server["parent"], CLIENT_SPAN);
    assert_eq!(server["status"], serde_json::json!([1, ""]));
    let expected = serde_json::json!({
        "krakend.stage": "global", "team": "edge", "ep": "agg", "url.full": "/agg/7", "server.address": "localhost",
        "http.request.method": "GET", "http.request.body.size": 0, "client.address": "127.0.0.1",
        "http.route": "/agg/:id", "http.response.status_code": 200, "http.response.body.size": body_len,
    });
    assert_eq!(server["attributes"], expected);
    let proxy = by_stage("proxy");
    assert_eq!(proxy.len(), 1);
    let proxy = proxy[0];
    // lura hands the endpoint on as gin's pattern: `{id}` is `:id`.
    assert_eq!((proxy["name"].as_str(), proxy["kind"].as_i64()), (Some("/agg/:id"), Some(1)));
    assert_eq!(proxy["parent"], server["id"]);
    assert_eq!(
        proxy["attributes"],
        serde_json::json!({"http.request.method": "GET", "http.route": "/agg/:id", "krakend.stage": "proxy",
            "http.response.status_code": 200, "complete": false})
    );
    let stages = by_stage("backend");
    let calls = by_stage("backend-request");
    assert_eq!((stages.len(), calls.len()), (2, 2));
    let stage = |name: &str| *stages.iter().find(|s| s["name"] == name).unwrap();
    let call = |name: &str| *calls.iter().find(|s| s["name"] == name).unwrap();
    let (good, bad) = (stage("/users/:id"), stage("/x"));
    for s in [good, bad] {
        assert_eq!((s["kind"].as_i64(), &s["parent"]), (Some(1), &proxy["id"]));
        assert_eq!(s["status"], serde_json::json!([0, ""]));
    }
    let fixed = |route: &str, stage: &str| {
        serde_json::json!({"http.request.method": "GET", "http.route": route,
            "krakend.endpoint.route": "/agg/:id", "krakend.endpoint.method": "GET", "krakend.stage": stage})
    };
    let with = |mut base: Value, more: Value| {
        base.as_object_mut().unwrap().extend(more.as_object().unwrap().clone());
        base
    };
    assert_eq!(
        good["attributes"],
        with(fixed("/users/:id", "backend"), serde_json::json!({"http.response.status_code": 200, "complete": true}))
    );
    let refused = bad["attributes"]["error"].as_str().unwrap().to_string();
    assert!(refused.starts_with("cannot connect to 127.0.0.1:1"), "{refused}");
    assert_eq!(
        bad["attributes"],
        with(
            fixed("/x", "backend"),
            serde_json::json!({"error": refused, "http.response.status_code": 500, "complete": false})
        )
    );
    let (ok_call, failed_call) = (call("/users/:id"), call("/x"));
    assert_eq!((ok_call["kind"].as_i64(), &ok_call["parent"]), (Some(3), &good["id"]));
    assert_eq!((failed_call["kind"].as_i64(), &failed_call["parent"]), (Some(3), &bad["id"]));
    assert_eq!(ok_call["status"], serde_json::json!([1, ""]));
    assert_eq!(failed_call["status"], serde_json::json!([2, refused]));
    let took = attr(ok_call, "response-duration").as_f64().unwrap();
    assert!((0.0..5.0).contains(&took), "{took}");
    assert_eq!(
        ok_call["attributes"],
        with(
            fixed("/users/:id", "backend-request"),
            serde_json::json!({"url.full": format!("{}/users/7", backend.url()),
                "server.address": backend.addr.to_string(), "http.request.body.size": 0,
                "sluice.retries": 0, "sluice.redirects": 0, "http.response.status_code": 200,
                "http.response.body.size": 7, "response-duration": took})
        )
    );
    assert_eq!(
        failed_call["attributes"],
        with(
            fixed("/x", "backend-request"),
            serde_json::json!({"url.full": "http://127.0.0.1:1/x", "server.address": "127.0.0.1:1",
                "http.request.body.size": 0, "sluice.retries": 0, "sluice.redirects": 0})
        )
    );
    // The backend got its call's context in place of the client's (passed by "*"),
    // and the query, which no url.full carries (it may hold secrets).
    let seen = backend.requests();
    assert_eq!(seen.len(), 1);
    let head = &seen[0].head;
    assert!(head.starts_with("GET /users/7?q=1 HTTP/1.1\r\n"), "{head}");
    assert_eq!(field(head, "traceparent"), Some(format!("00-{CLIENT_TRACE}-{}-01", ok_call["id"].as_str().unwrap())));
    assert_eq!(field(head, "tracestate").as_deref(), Some("a=1,b=2"));
    assert_eq!(head.to_ascii_lowercase().matches("traceparent:").count(), 1, "{head}");

    // 2. A no-op endpoint, no client context: a trace starts here.
    let r = get_once(port, "/noop", "");
    assert_eq!((r.status, r.text()), (200, r#"{"a":1}"#));
    let spans = receiver.spans(10);
    let new: Vec<&Value> = spans[6..].iter().collect();
    let trace = new[0]["trace"].as_str().unwrap();
    assert!(trace != CLIENT_TRACE && trace.len() == 32 && trace != "0".repeat(32));
    assert!(new.iter().all(|s| s["trace"] == trace && s["state"] == ""));
    let named = |stage: &str| *new.iter().find(|s| attr(s, "krakend.stage") == stage).unwrap();
    let (server, proxy, stage, call) = (named("global"), named("proxy"), named("backend"), named("backend-request"));
    assert_eq!(server["parent"], "");
    assert_eq!(
        (server["name"].as_str(), proxy["name"].as_str(), call["name"].as_str()),
        (Some("/noop"), Some("/noop"), Some("/n"))
    );
    assert_eq!((&proxy["parent"], &stage["parent"], &call["parent"]), (&server["id"], &proxy["id"], &stage["id"]));
    // A streamed answer's size is not known when its head comes.
    assert_eq!(
        (attr(call, "http.response.status_code"), attr(call, "http.response.body.size")),
        (&200.into(), &(-1).into())
    );
    assert_eq!(attr(server, "http.response.body.size"), 7);
    let seen = backend.requests();
    assert_eq!(field(&seen[1].head, "traceparent"), Some(format!("00-{trace}-{}-01", call["id"].as_str().unwrap())));
    assert_eq!(field(&seen[1].head, "tracestate"), None);

    // 3. Skipped paths make no spans; an endpoint's and a backend's own layers
    // replace the root's: no proxy span, no stage span, the call's span under the
    // server's.
    assert_eq!(get_once(port, "/__health", "").status, 200);
    assert_eq!(get_once(port, "/quiet", "").status, 200);
    let spans = receiver.spans(12);
    let stages: Vec<&Value> = spans[10..].iter().map(|s| attr(s, "krakend.stage")).collect();
    let (server, call) = if stages[0] == "global" { (&spans[10], &spans[11]) } else { (&spans[11], &spans[10]) };
    assert_eq!(attr(call, "krakend.stage"), "backend-request");
    assert_eq!((server["name"].as_str(), call["name"].as_str()), (Some("/quiet"), Some("/q")));
    assert_eq!(call["parent"], server["id"]);
    // A backend's "traces" object replaces the defaults: round_trip is false unless
    // written, so no client span, and no context sent (krakend-otel injects only
    // from a span it records).
    assert_eq!(get_once(port, "/dark", "").status, 200);
    let spans = receiver.spans(15);
    let mut stages: Vec<&str> = spans[12..].iter().map(|s| attr(s, "krakend.stage").as_str().unwrap()).collect();
    stages.sort_unstable();
    assert_eq!(stages, ["backend", "global", "proxy"]);
    let seen = backend.requests();
    assert_eq!(field(&seen[2].head, "traceparent").map(|t| t.len()), Some(55));
    assert_eq!(seen[3].head.lines().next(), Some("GET /d HTTP/1.1"));
    assert_eq!(field(&seen[3].head, "traceparent"), None);
    // An endpoint pattern in skip_paths: the gateway's span only (its path is not).
    assert_eq!(get_once(port, "/skipped/1", "").status, 200);
    let spans = receiver.spans(16);
    assert_eq!(
        (spans[15]["name"].as_str(), attr(&spans[15], "krakend.stage").as_str()),
        (Some("/skipped/1"), Some("global"))
    );
    assert_eq!(attr(&spans[15], "http.route"), "/skipped/:id");
    assert_eq!(field(&backend.requests()[4].head, "traceparent"), None);

    // Every span counted as exported; none dropped.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = get_once(admin, "/stats", "").text().to_string();
        if stats.contains("tracing.spans_exported: 16\n") || Instant::now() > end {
            for line in ["tracing.spans_dropped: 0", "tracing.spans_export_failed: 0", "tracing.spans_queued: 0"] {
                assert!(stats.contains(line), "{stats}");
            }
            assert!(stats.contains("tracing.spans_exported: 16\n"), "{stats}");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert_eq!(exit_code(&mut child), Some(0));
    assert_eq!(receiver.spans(16).len(), 16);
    // The exports went through the binary's loopback gateway, which writes no line of
    // its own: the log has the gateway's access lines, none for a post (every request
    // above is a GET).
    std::thread::sleep(Duration::from_millis(100));
    let log = log.lock().unwrap().clone();
    assert!(log.iter().any(|l| l.contains("\"GET /noop\" 200 ")), "{log:#?}");
    assert!(!log.iter().any(|l| l.contains("\"POST /")), "{log:#?}");
}

#[test]
fn traces_reach_the_collector_uring() {
    traces_reach_the_collector(&["--runtime", "uring"]);
}

#[test]
fn traces_reach_the_collector_epoll() {
    traces_reach_the_collector(&["--runtime", "uring", "--force-epoll"]);
}

#[test]
fn traces_reach_the_collector_tokio() {
    traces_reach_the_collector(&["--runtime", "tokio"]);
}

/// A collector that refuses: every request is still answered, the spans are counted
/// as failed, the failure is said once, and a stop does not wait on it.
#[test]
fn a_collector_down_costs_no_request() {
    let backend = Backend::start(|_| Reply::Json(r#"{"a":1}"#.into()));
    let dir = Scratch::new("traces-down");
    let file = dir.0.join("krakend.json");
    let config = format!(
        r#"{{"version": 3, "extra_config": {{
            "telemetry/opentelemetry": {{"exporters": {{"otlp": [{{"name": "gone", "host": "127.0.0.1", "port": 1,
                "use_http": true, "disable_metrics": true}}]}}}},
            "sluice/admin": {{"port": 0}}}},
          "endpoints": [{{"endpoint": "/a", "backend": [{{"host": ["{}"], "url_pattern": "/"}}]}}]}}"#,
        backend.url()
    );
    std::fs::write(&file, config).unwrap();
    let (mut child, port, admin, log) = start(&file, &["-p", "0", "--shards", "1"]);
    for _ in 0..3 {
        let r = get_once(port, "/a", "");
        assert_eq!((r.status, r.text()), (200, r#"{"a":1}"#));
        std::thread::sleep(Duration::from_millis(150));
    }
    let end = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = get_once(admin, "/stats", "").text().to_string();
        if stats.contains("tracing.spans_export_failed: 12\n") || Instant::now() > end {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Three requests, four spans each.
    for line in ["tracing.spans_export_failed: 12\n", "tracing.spans_exported: 0\n", "tracing.spans_dropped: 0\n"] {
        assert!(stats.contains(line), "{stats}");
    }
    let started = Instant::now();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert_eq!(exit_code(&mut child), Some(0));
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    std::thread::sleep(Duration::from_millis(100));
    let log = log.lock().unwrap().clone();
    let said: Vec<&String> = log.iter().filter(|l| l.contains("spans not exported")).collect();
    assert_eq!(said.len(), 1, "{log:#?}");
    assert!(said[0].contains("gone: answered 5"), "{said:?}");
    // Nothing else of the failed posts: no access line, no backend warning per post
    // (the gateway's own backend answered every request).
    assert_eq!(log.iter().filter(|l| l.contains("\"GET /a\" 200 ")).count(), 3, "{log:#?}");
    assert!(!log.iter().any(|l| l.contains("\"POST /") || l.contains("backend 0 of")), "{log:#?}");
    assert!(log.iter().any(|l| l.contains("traces to gone (http://127.0.0.1:1/v1/traces)")), "{log:#?}");
}

/// A collector that refuses with a body: the line that says so shows the body quoted
/// and escaped, and at most 200 bytes of it (a line break in it cannot forge a line).
#[test]
fn a_collector_s_answer_is_shown_escaped() {
    let filler = "x".repeat(300);
    let body = format!("bad\nWARN forged \"line\"\x1b[31m{filler}");
    let answer =
        format!("HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let collector = Backend::start(move |_| Reply::Raw(answer.clone().into_bytes()));
    let backend = Backend::start(|_| Reply::Json(r#"{"a":1}"#.into()));
    let dir = Scratch::new("traces-refused");
    let file = dir.0.join("krakend.json");
    let config = format!(
        r#"{{"version": 3, "extra_config": {{
            "telemetry/opentelemetry": {{"exporters": {{"otlp": [{{"name": "picky", "host": "127.0.0.1",
                "port": {}, "use_http": true, "disable_metrics": true}}]}}}},
            "sluice/admin": {{"port": 0}}}},
          "endpoints": [{{"endpoint": "/a", "backend": [{{"host": ["{}"], "url_pattern": "/"}}]}}]}}"#,
        collector.addr.port(),
        backend.url()
    );
    std::fs::write(&file, config).unwrap();
    let (mut child, port, admin, log) = start(&file, &["-p", "0", "--shards", "1"]);
    assert_eq!(get_once(port, "/a", "").status, 200);
    let end = Instant::now() + Duration::from_secs(10);
    while !get_once(admin, "/stats", "").text().contains("tracing.spans_export_failed: 4\n") {
        assert!(Instant::now() < end, "{}", get_once(admin, "/stats", "").text());
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert_eq!(exit_code(&mut child), Some(0));
    std::thread::sleep(Duration::from_millis(100));
    let log = log.lock().unwrap().clone();
    let said: Vec<&String> = log.iter().filter(|l| l.contains("spans not exported")).collect();
    assert_eq!(said.len(), 1, "{log:#?}");
    // 200 bytes of the body: its first 27, and 173 of the filler.
    let shown = format!(r#"picky: answered 400 ("bad\nWARN forged \"line\"\u{{1b}}[31m{}"...)"#, &filler[..173]);
    assert!(said[0].ends_with(&shown), "{}\n{shown}", said[0]);
    assert!(!log.iter().any(|l| l.starts_with("WARN forged")), "{log:#?}");
    assert_eq!(collector.requests().len(), 1);
}
