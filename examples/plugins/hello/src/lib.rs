//! KrakenD's "hello world" HTTP client plugin (its documentation's
//! `krakend-client-example`), as a proxy-wasm module for Sluice.
//!
//! Configuration (`extra_config."plugin/http-client"` of a backend):
//! `{"name": "hello", "hello": {"path": "/__debug/hijack-me"}}`. When the backend call's
//! path (without its query) is exactly `path`, the plugin answers it itself with
//! `200 {"message":"<path>"}` (`application/json`; the path HTML-escaped, as the Go
//! example does) and the backend is not called. Every other call goes through.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { path: String::new() }) });
}}

struct Root {
    path: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let value: serde_json::Value = match serde_json::from_slice(&config) {
            Ok(v) => v,
            Err(_) if config.is_empty() => serde_json::Value::Null,
            Err(e) => {
                log::error(&format!("the configuration is not JSON: {e}"));
                return false;
            }
        };
        match value.get("path") {
            Some(serde_json::Value::String(p)) => self.path = p.clone(),
            None => {}
            Some(_) => {
                log::error("\"path\" must be a string");
                return false;
            }
        }
        log::debug(&format!("The plugin is now hijacking the path {}", self.path));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Hello { path: self.path.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Hello {
    path: String,
}

impl Context for Hello {}

impl HttpContext for Hello {
    fn on_http_request_headers(&mut self, _fields: usize, _end_of_stream: bool) -> Action {
        let target = self.get_http_request_header(":path").unwrap_or_default();
        let path = target.split('?').next().unwrap_or_default();
        if self.path.is_empty() || path != self.path {
            return Action::Continue;
        }
        let escaped = html_escape(path);
        log::debug(&format!("request: {escaped}"));
        let body = serde_json::json!({ "message": escaped }).to_string();
        self.send_http_response(200, vec![("Content-Type", "application/json")], Some(body.as_bytes()));
        Action::Pause
    }
}

/// Go's `html.EscapeString`: `<`, `>`, `&`, `'` and `"`.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&#39;"),
            '"' => out.push_str("&#34;"),
            c => out.push(c),
        }
    }
    out
}

mod log {
    use proxy_wasm::hostcalls;
    use proxy_wasm::types::LogLevel;

    pub fn debug(message: &str) {
        let _ = hostcalls::log(LogLevel::Debug, message);
    }

    pub fn error(message: &str) {
        let _ = hostcalls::log(LogLevel::Error, message);
    }
}
