//! The test suite's Envoy-behaviour plugin: what filters written for Envoy rely on,
//! each visible in the answer so a test can check it.
//!
//! Configuration: a JSON string is the greeting itself (Envoy hands a string
//! configuration as it is); an object may say `{"greeting": "...", "panic": "text",
//! "tick_ms": N}` (`panic` makes `on_configure` panic with that text; `tick_ms` sets
//! the tick period, and each tick counts the `ticks` metric).
//!
//! At start: metrics `calls` (counter), `logs` (counter), `open` (gauge), `body_bytes`
//! (histogram), `events` (counter); a shared queue `events`; shared data `configured`
//! counted up with compare-and-swap.
//!
//! Per call (one HTTP context, its state kept from request to response):
//! - request: keeps `x-call-id` and the number of header fields it was told of; adds
//!   `x-greeting`; `/b/hello` is answered locally (`200`, `hello: World`, body
//!   `Hello, World!\n`, as the SDK's http_headers example); `/b/count` counts up the
//!   shared `count`; `/b/enqueue` puts `call <id>` on the `events` queue; `/b/auth`
//!   holds the call and asks upstream `auth` `GET /check?who=<call id>` (300 ms at
//!   most; `/b/auth-down`, `/b/auth-slow`, `/b/auth-unknown` ask `down`, `slow`,
//!   `nowhere`; `/b/auth-bad` with a malformed `:authority`): a 200 resumes the call with `x-auth: <its body>`, another status
//!   answers `403 denied` (`x-denied: yes`), a failed call out `503 auth unavailable`,
//!   a refused one `500 cannot call out: <status>`; `/b/grpc` tries a gRPC call;
//!   `/b/trailer` sets a request trailer (the host answers `BadArgument`: the SDK panics);
//!   `/b/unimplemented` calls `proxy_grpc_cancel` twice without the SDK (the host does
//!   not implement it: the module takes the status and goes on; the request gets
//!   `x-raw-status: <the statuses>`); `/b/fail-then-spin` and `/b/fail-then-grow` set a
//!   request trailer without the SDK (`BadArgument`, taken), then spin forever or ask
//!   for 256 MiB;
//!   `/b/reset` resets the call and lets it go on; `/b/start-ticks` sets a 20 ms tick
//!   period; `/b/hold` logs `hold the thread` (the suite's log recorder then keeps the
//!   thread 150 ms, as a busy machine would) and runs on a little.
//! - response: `x-call-state` (the call id kept from the request side),
//!   `powered-by: proxy-wasm`, `x-request-fields`, `x-response-fields`,
//!   `x-seen-status`, `x-seen-type`, `x-trailers` (request/response trailer counts),
//!   `x-count`, `x-calls` (the `calls` metric), and on `/b/props` `x-props`: the
//!   properties as JSON.
//! - end: `on_log` counts `logs` (and `logs_2xx` when the `response.code` it reads is
//!   2xx), takes one from `open`, logs `on_log call=<id>`.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default, Clone, Copy)]
struct Metrics {
    calls: u32,
    logs: u32,
    open: u32,
    body_bytes: u32,
    events: u32,
    ticks: u32,
    logs_2xx: u32,
}

#[derive(Default)]
struct Root {
    greeting: String,
    metrics: Metrics,
    queue: u32,
}

impl Context for Root {}

/// Adds one to shared `key`, retrying on a compare-and-swap mismatch; the new value.
fn count_up(ctx: &dyn Context, key: &str) -> u64 {
    loop {
        let (value, cas) = ctx.get_shared_data(key);
        let n = value.and_then(|v| String::from_utf8(v).ok()).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0) + 1;
        if ctx.set_shared_data(key, Some(n.to_string().as_bytes()), cas).is_ok() {
            return n;
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(o)) => {
                if let Some(text) = o.get("panic").and_then(|v| v.as_str()) {
                    panic!("told to panic: {text}");
                }
                self.greeting = o.get("greeting").and_then(|v| v.as_str()).unwrap_or_default().to_string();
                if let Some(ms) = o.get("tick_ms").and_then(|v| v.as_u64()) {
                    self.set_tick_period(Duration::from_millis(ms));
                }
            }
            // Not an object: the configuration is the greeting, as written.
            _ => self.greeting = String::from_utf8_lossy(&bytes).into_owned(),
        }
        let define = |kind, name| hostcalls::define_metric(kind, name).unwrap_or(u32::MAX);
        self.metrics = Metrics {
            calls: define(MetricType::Counter, "calls"),
            logs: define(MetricType::Counter, "logs"),
            open: define(MetricType::Gauge, "open"),
            body_bytes: define(MetricType::Histogram, "body_bytes"),
            events: define(MetricType::Counter, "events"),
            ticks: define(MetricType::Counter, "ticks"),
            logs_2xx: define(MetricType::Counter, "logs_2xx"),
        };
        self.queue = self.register_shared_queue("events");
        count_up(self, "configured");
        true
    }

    fn on_tick(&mut self) {
        let _ = hostcalls::increment_metric(self.metrics.ticks, 1);
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(_item)) = self.dequeue_shared_queue(queue_id) {
            let _ = hostcalls::increment_metric(self.metrics.events, 1);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Call {
            context_id,
            greeting: self.greeting.clone(),
            metrics: self.metrics,
            queue: self.queue,
            call_id: None,
            request_fields: 0,
            request_trailers: 0,
            count: None,
            path: String::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Call {
    context_id: u32,
    greeting: String,
    metrics: Metrics,
    queue: u32,
    call_id: Option<String>,
    request_fields: usize,
    request_trailers: usize,
    count: Option<u64>,
    path: String,
}

/// A property as JSON: text, or an 8-byte little-endian integer.
fn prop(ctx: &dyn Context, path: &str, int: bool) -> serde_json::Value {
    match ctx.get_property(path.split('.').collect()) {
        None => serde_json::Value::Null,
        Some(b) if int && b.len() == 8 => {
            serde_json::json!(i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        }
        Some(b) => serde_json::Value::String(String::from_utf8_lossy(&b).into_owned()),
    }
}

impl Context for Call {
    fn on_http_call_response(&mut self, _token: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        if num_headers == 0 {
            // The call out failed or timed out.
            self.send_http_response(503, vec![], Some(b"auth unavailable"));
            return;
        }
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        if status == "200" {
            self.set_http_request_header("x-auth", Some(&String::from_utf8_lossy(&body)));
            self.resume_http_request();
        } else {
            self.send_http_response(403, vec![("x-denied", "yes")], Some(b"denied"));
        }
    }
}

impl HttpContext for Call {
    fn on_http_request_headers(&mut self, num_headers: usize, _end_of_stream: bool) -> Action {
        self.request_fields = num_headers;
        self.call_id = self.get_http_request_header("x-call-id");
        self.request_trailers = self.get_http_request_trailers().len();
        let _ = hostcalls::increment_metric(self.metrics.calls, 1);
        let _ = hostcalls::increment_metric(self.metrics.open, 1);
        self.set_http_request_header("x-greeting", Some(&self.greeting));
        let target = self.get_http_request_header(":path").unwrap_or_default();
        self.path = target.split('?').next().unwrap_or_default().to_string();
        match self.path.as_str() {
            "/b/hello" => {
                self.send_http_response(200, vec![("hello", "World")], Some(b"Hello, World!\n"));
                return Action::Pause;
            }
            "/b/count" => self.count = Some(count_up(self, "count")),
            "/b/auth" | "/b/auth-down" | "/b/auth-slow" | "/b/auth-unknown" | "/b/auth-bad" => {
                // The external-auth pattern (the SDK's http_auth_random): ask an
                // upstream, hold the call until it answers.
                let upstream = match self.path.as_str() {
                    "/b/auth-down" => "down",
                    "/b/auth-slow" => "slow",
                    "/b/auth-unknown" => "nowhere",
                    _ => "auth",
                };
                let who = self.call_id.clone().unwrap_or_default();
                let path = format!("/check?who={who}");
                // `/b/auth-bad` names a Host that is not one.
                let authority = if self.path == "/b/auth-bad" { "auth internal\r\nx: y" } else { "auth.internal" };
                let headers = vec![(":method", "GET"), (":path", path.as_str()), (":authority", authority)];
                return match self.dispatch_http_call(upstream, headers, None, vec![], Duration::from_millis(300)) {
                    Ok(_) => Action::Pause,
                    Err(status) => {
                        let body = format!("cannot call out: {status:?}");
                        self.send_http_response(500, vec![], Some(body.as_bytes()));
                        Action::Pause
                    }
                };
            }
            "/b/reset" => {
                self.reset_http_request();
            }
            "/b/hold" => {
                let _ = hostcalls::log(LogLevel::Info, "hold the thread");
                // Code after the host call: the engine looks at its deadline here.
                let mut n: u64 = 0;
                for _ in 0..1_000 {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
                self.set_http_request_header("x-held", Some(&n.to_string()));
            }
            "/b/start-ticks" => {
                let _ = hostcalls::set_tick_period(Duration::from_millis(20));
            }
            "/b/trailer" => self.set_http_request_trailer("x-trailer", Some("1")),
            "/b/unimplemented" => {
                let statuses = format!("{},{}", raw::grpc_cancel(), raw::grpc_cancel());
                self.set_http_request_header("x-raw-status", Some(&statuses));
            }
            "/b/fail-then-spin" => {
                std::hint::black_box(raw::set_request_trailer());
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "/b/fail-then-grow" => {
                std::hint::black_box(raw::set_request_trailer());
                let big = vec![1u8; 256 << 20];
                std::hint::black_box(&big);
            }
            "/b/grpc" => {
                let _ = self.dispatch_grpc_call("auth", "svc", "Check", vec![], None, Duration::from_secs(1));
            }
            "/b/enqueue" => {
                let item = format!("call {}", self.call_id.as_deref().unwrap_or("-"));
                let _ = self.enqueue_shared_queue(self.queue, Some(item.as_bytes()));
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, num_headers: usize, _end_of_stream: bool) -> Action {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        let kind = self.get_http_response_header("content-type").unwrap_or_default();
        let trailers = format!("{}/{}", self.request_trailers, self.get_http_response_trailers().len());
        let calls = hostcalls::get_metric(self.metrics.calls).map(|n| n.to_string()).unwrap_or_default();
        let state = self.call_id.clone().unwrap_or_else(|| "-".into());
        self.set_http_response_header("x-call-state", Some(&state));
        self.add_http_response_header("powered-by", "proxy-wasm");
        self.set_http_response_header("x-request-fields", Some(&self.request_fields.to_string()));
        self.set_http_response_header("x-response-fields", Some(&num_headers.to_string()));
        self.set_http_response_header("x-seen-status", Some(&status));
        self.set_http_response_header("x-seen-type", Some(&kind));
        self.set_http_response_header("x-trailers", Some(&trailers));
        self.set_http_response_header("x-calls", Some(&calls));
        if let Some(n) = self.count {
            self.set_http_response_header("x-count", Some(&n.to_string()));
        }
        if self.path == "/b/props" {
            let mut props = serde_json::Map::new();
            for (path, int) in [
                ("request.scheme", false),
                ("request.id", false),
                ("request.time", true),
                ("request.useragent", false),
                ("request.referer", false),
                ("request.method", false),
                ("request.url_path", false),
                ("request.query", false),
                ("source.address", false),
                ("source.port", true),
                ("destination.address", false),
                ("destination.port", true),
                ("upstream.address", false),
                ("plugin_name", false),
                ("plugin_vm_id", false),
                ("node.id", false),
                ("response.code", true),
                ("response.size", true),
            ] {
                props.insert(path.into(), prop(self, path, int));
            }
            props.insert(":scheme".into(), self.get_http_request_header(":scheme").into());
            self.set_http_response_header("x-props", Some(&serde_json::Value::Object(props).to_string()));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        let _ = hostcalls::record_metric(self.metrics.body_bytes, body_size as u64);
        Action::Continue
    }

    fn on_log(&mut self) {
        let _ = hostcalls::increment_metric(self.metrics.logs, 1);
        if let serde_json::Value::Number(code) = prop(self, "response.code", true)
            && code.as_i64().is_some_and(|c| (200..300).contains(&c))
        {
            let _ = hostcalls::increment_metric(self.metrics.logs_2xx, 1);
        }
        let _ = hostcalls::increment_metric(self.metrics.open, -1);
        let id = self.call_id.clone().unwrap_or_else(|| "-".into());
        let _ = hostcalls::log(LogLevel::Info, &format!("on_log call={id} context={}", self.context_id));
    }
}

/// Host calls made without the SDK, which panics on a status it does not expect: the
/// module takes the status and goes on, as one written against another SDK may.
mod raw {
    use proxy_wasm::types::{MapType, Status};

    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        fn proxy_grpc_cancel(token_id: u32) -> Status;
        fn proxy_replace_header_map_value(
            map_type: MapType,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> Status;
    }

    /// `proxy_grpc_cancel` (Sluice does not implement it): the status.
    pub fn grpc_cancel() -> u32 {
        // SAFETY: a call with no pointers.
        unsafe { proxy_grpc_cancel(1) as u32 }
    }

    /// Sets request trailer `x-trailer: 1` (calls carry none: `BadArgument`): the status.
    pub fn set_request_trailer() -> u32 {
        let (key, value) = ("x-trailer", "1");
        // SAFETY: the pointers and lengths are those of two live strings.
        unsafe {
            proxy_replace_header_map_value(
                MapType::HttpRequestTrailers,
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
            ) as u32
        }
    }
}
