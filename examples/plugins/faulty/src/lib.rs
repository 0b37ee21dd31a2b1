//! The test suite's misbehaving plugin (and a small example of a filter that works on
//! both sides of a call). Configuration, every key optional:
//! `{"trap_on": "/p", "loop_on": "/p", "grow_on": "/p", "tag": "t"}`.
//!
//! - a call whose path is `trap_on` panics (a trap), `loop_on` spins forever (past the
//!   host's time budget), `grow_on` asks for 256 MiB (past the host's memory limit);
//! - every other call gets `x-plugin-tag: <tag>` on the request, and on the response
//!   `x-plugin-tag: <tag>` and `x-plugin-saw: <the request's path>` (kept in the call's
//!   context from the request side), and a response body wrapped as
//!   `{"wrapped": <body>}` when `wrap` is true and the body is JSON.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default, Clone)]
struct Config {
    trap_on: Option<String>,
    loop_on: Option<String>,
    grow_on: Option<String>,
    tag: String,
    wrap: bool,
}

#[derive(Default)]
struct Root {
    config: Config,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            let _ = proxy_wasm::hostcalls::log(LogLevel::Error, "the configuration is not a JSON object");
            return false;
        };
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        self.config = Config {
            trap_on: s("trap_on"),
            loop_on: s("loop_on"),
            grow_on: s("grow_on"),
            tag: s("tag").unwrap_or_else(|| "faulty".into()),
            wrap: v.get("wrap").and_then(|x| x.as_bool()).unwrap_or(false),
        };
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Call { config: self.config.clone(), saw: String::new() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Call {
    config: Config,
    saw: String,
}

impl Context for Call {}

impl HttpContext for Call {
    fn on_http_request_headers(&mut self, _fields: usize, _end_of_stream: bool) -> Action {
        let target = self.get_http_request_header(":path").unwrap_or_default();
        let path = target.split('?').next().unwrap_or_default().to_string();
        if self.config.trap_on.as_deref() == Some(path.as_str()) {
            panic!("asked to trap on {path}");
        }
        if self.config.loop_on.as_deref() == Some(path.as_str()) {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if self.config.grow_on.as_deref() == Some(path.as_str()) {
            let big = vec![1u8; 256 << 20];
            std::hint::black_box(&big);
        }
        self.add_http_request_header("x-plugin-tag", &self.config.tag);
        self.saw = path;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _fields: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-plugin-tag", &self.config.tag);
        self.add_http_response_header("x-plugin-saw", &self.saw);
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !self.config.wrap || !end_of_stream {
            return Action::Continue;
        }
        let body = self.get_http_response_body(0, size).unwrap_or_default();
        if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
            let mut wrapped = b"{\"wrapped\":".to_vec();
            wrapped.extend_from_slice(&body);
            wrapped.push(b'}');
            self.set_http_response_body(0, size, &wrapped);
        }
        Action::Continue
    }
}
