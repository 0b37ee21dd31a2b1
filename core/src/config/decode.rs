//! Walks a parsed JSON document into a [`Config`], collecting every error with its path.
//!
//! Each object is read through an [`Obj`], which remembers the keys it was asked for so
//! that the rest can be reported as unknown. Leaf values go through serde; a bad value
//! is reported and replaced by its default, so decoding always goes on to the end.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::Method;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::net::{has_explicit_port, redact_userinfo};
use super::template::{self, Piece, Placeholder};
use super::{
    Backend, BackendHttp, BotDetectorConfig, BreakerConfig, ClientCert, ClientPlugin, ClientTls, Config, ConfigError,
    ConnectTunnels, CorsConfig, Diagnostic, DnsSettings, EgressPolicy, Encoding, Endpoint, FlatmapOp, ForwardProxy,
    HostAddr, HttpClientOptions, IpNet, JwtConfig, KeyStrategy, LimitStrategy, LookupFamily, OutputEncoding, Parsed,
    PluginLoader, PortRange, PropagatedParam, ProxyRateLimit, RateLimitConfig, RouterOptions, ScopesMatcher, ServerTls,
    ServiceDiscovery, StaticResponse, StaticStrategy, is_write_method, parse_duration,
};
use crate::plan::route::Router;

/// Collected diagnostics.
#[derive(Default)]
struct Ctx {
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    notices: Vec<Diagnostic>,
}

impl Ctx {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(Diagnostic { path: path.to_string(), message: message.into() });
    }

    fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(Diagnostic { path: path.to_string(), message: message.into() });
    }

    /// Something the configuration asks for that Sluice leaves out without weakening
    /// what it enforces: said by `check` and at `run`, not only with `--lint`.
    fn notice(&mut self, path: &str, message: impl Into<String>) {
        self.notices.push(Diagnostic { path: path.to_string(), message: message.into() });
    }
}

/// `parent.key`, or `parent["odd/key"]` when the key is not a plain identifier.
/// `parent.key`, or `parent["key"]` for a key that is not a plain name: the JSON paths
/// every configuration error names.
pub(crate) fn join(parent: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (true, false) => format!("[{key:?}]"),
        (false, true) => format!("{parent}.{key}"),
        (false, false) => format!("{parent}[{key:?}]"),
    }
}

fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads a leaf value with serde. serde's message is kept, in a config user's words
/// ("unknown value \"jsonn\", expected one of \"json\", ...").
fn leaf<T: DeserializeOwned>(v: &Value, path: &str, cx: &mut Ctx) -> Option<T> {
    match T::deserialize(v) {
        Ok(t) => Some(t),
        Err(e) => {
            cx.error(path, e.to_string().replace("unknown variant", "unknown value").replace('`', "\""));
            None
        }
    }
}

/// An object being read; remembers which keys were read.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
    seen: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    fn new(v: &'a Value, path: String, cx: &mut Ctx) -> Option<Obj<'a>> {
        match v {
            Value::Object(map) => Some(Obj { map, path, seen: Vec::new() }),
            other if path.is_empty() => {
                cx.error(&path, format!("a configuration is a JSON object (KrakenD v3), found {}", kind(other)));
                None
            }
            other => {
                cx.error(&path, format!("expected an object, found {}", kind(other)));
                None
            }
        }
    }

    fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value of `key`; `null` counts as absent.
    fn take(&mut self, key: &'static str) -> Option<&'a Value> {
        self.seen.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn leaf<T: DeserializeOwned>(&mut self, key: &'static str, cx: &mut Ctx) -> Option<T> {
        let v = self.take(key)?;
        leaf(v, &self.at(key), cx)
    }

    /// Whether `key` asks for something: present and not `null`, `false`, `0`, `""`,
    /// `[]` or `{}` (a KrakenD setting left at its zero value changes nothing).
    fn asks(&mut self, key: &'static str) -> bool {
        self.take(key).is_some_and(|v| match v {
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(m) => !m.is_empty(),
            Value::Null => false,
        })
    }

    fn flag(&mut self, key: &'static str, cx: &mut Ctx) -> bool {
        self.leaf(key, cx).unwrap_or(false)
    }

    fn string(&mut self, key: &'static str, cx: &mut Ctx) -> Option<String> {
        self.leaf(key, cx)
    }

    /// A string that, when empty, counts as absent.
    fn non_empty(&mut self, key: &'static str, cx: &mut Ctx) -> Option<String> {
        self.string(key, cx).filter(|s| !s.is_empty())
    }

    fn required_string(&mut self, key: &'static str, cx: &mut Ctx) -> Option<String> {
        if self.map.get(key).is_none_or(Value::is_null) {
            self.seen.push(key);
            cx.error(&self.at(key), "missing (required)");
            return None;
        }
        self.string(key, cx)
    }

    fn uint(&mut self, key: &'static str, min: u64, max: u64, cx: &mut Ctx) -> Option<u64> {
        let v = self.take(key)?;
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                let found = match v {
                    Value::Number(n) => n.to_string(),
                    other => kind(other).to_string(),
                };
                cx.error(&self.at(key), format!("expected a whole number from {min} to {max}, found {found}"));
                None
            }
        }
    }

    fn duration(&mut self, key: &'static str, cx: &mut Ctx) -> Option<Duration> {
        let v = self.take(key)?;
        let path = self.at(key);
        match v {
            Value::String(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(msg) => {
                    cx.error(&path, msg);
                    None
                }
            },
            other => {
                cx.error(&path, format!("expected a duration string such as \"2s\", found {}", kind(other)));
                None
            }
        }
    }

    /// A duration that must be more than zero.
    fn positive_duration(&mut self, key: &'static str, cx: &mut Ctx) -> Option<Duration> {
        let d = self.duration(key, cx)?;
        if d.is_zero() {
            cx.error(&self.at(key), "must be greater than 0");
            return None;
        }
        Some(d)
    }

    fn strings(&mut self, key: &'static str, cx: &mut Ctx) -> Option<Vec<String>> {
        let v = self.take(key)?;
        let path = self.at(key);
        let Value::Array(items) = v else {
            cx.error(&path, format!("expected an array of strings, found {}", kind(v)));
            return None;
        };
        Some(items.iter().enumerate().filter_map(|(i, item)| leaf(item, &index(&path, i), cx)).collect())
    }

    fn object(&mut self, key: &'static str, cx: &mut Ctx) -> Option<Obj<'a>> {
        let v = self.take(key)?;
        Obj::new(v, self.at(key), cx)
    }

    fn method(&mut self, key: &'static str, cx: &mut Ctx) -> Option<Method> {
        let s = self.string(key, cx)?;
        let path = self.at(key);
        parse_method(&s).map_err(|m| cx.error(&path, m)).ok()
    }

    /// Reports the keys nobody asked for as lint warnings, naming the v3 key where an
    /// old KrakenD name was used (see [`RENAMED`]).
    fn finish(self, cx: &mut Ctx) {
        for key in self.map.keys() {
            if self.seen.contains(&key.as_str()) || key == "$schema" {
                continue;
            }
            let path = join(&self.path, key);
            match RENAMED.iter().find(|(old, _)| old == key) {
                Some((_, new)) => cx.warn(&path, format!("unknown key, ignored (KrakenD v3 calls it {new:?})")),
                None => cx.warn(&path, "unknown key, ignored"),
            }
        }
    }
}

/// Keys of KrakenD's `proxy` namespace that change what an endpoint answers, not yet
/// implemented: refused, as an unimplemented enforcing namespace is (serving without
/// them would answer something else than the file describes).
const ENDPOINT_PROXY_UNIMPLEMENTED: &[(&str, &str)] = &[("combiner", "a custom way of merging backends")];

/// The same, for a backend's `proxy` namespace.
const BACKEND_PROXY_UNIMPLEMENTED: &[(&str, &str)] =
    &[("shadow", "a shadow backend, called and its answer discarded; here it would be merged")];

/// `proxy.static`: `{"strategy": "...", "data": {...}}`. lura serves an unknown
/// strategy as `always` and skips a missing `data` without a word; both are errors
/// here.
fn static_config(mut o: Obj<'_>, cx: &mut Ctx) -> Option<StaticResponse> {
    let strategy = o.leaf("strategy", cx);
    let data = match o.take("data") {
        Some(Value::Object(m)) => Some(m.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()),
        Some(other) => {
            cx.error(&o.at("data"), format!("expected an object (merged into the answer), found {}", kind(other)));
            None
        }
        None => {
            cx.error(&o.at("data"), "missing (required): the object merged into the answer");
            None
        }
    };
    o.finish(cx);
    Some(StaticResponse { strategy: strategy.unwrap_or(StaticStrategy::Always), data: data? })
}

/// `plugin/http-client.upstreams`: `{"name": "http://host:port"}` or a list of URLs per
/// name (checked as URLs when the plan is compiled).
fn plugin_upstreams(e: &mut Obj, plugin: &str, cx: &mut Ctx) -> Vec<(String, Vec<String>)> {
    let at = e.at("upstreams");
    let Some(v) = e.map.get("upstreams").cloned() else { return Vec::new() };
    let Value::Object(map) = v else {
        cx.error(&at, "must be an object of upstream names to URLs");
        return Vec::new();
    };
    if plugin == "http-proxy" {
        cx.error(&at, "the built-in http-proxy plugin makes no calls out");
        return Vec::new();
    }
    let mut out = Vec::with_capacity(map.len());
    for (name, v) in map {
        let urls = match v {
            Value::String(u) => vec![u],
            Value::Array(list) if !list.is_empty() => {
                let urls: Vec<String> = list.iter().filter_map(|u| u.as_str().map(str::to_string)).collect();
                if urls.len() != list.len() {
                    cx.error(&format!("{at}.{name}"), "must be a URL or a list of URLs");
                    continue;
                }
                urls
            }
            _ => {
                cx.error(&format!("{at}.{name}"), "must be a URL or a non-empty list of URLs");
                continue;
            }
        };
        out.push((name, urls));
    }
    out
}

/// `proxy.flatmap_filter`: a list of `{"type": "move" | "append" | "del", "args":
/// [...]}`. lura skips an entry of unknown type and panics on a `move` short of
/// arguments, at request time; here both are errors.
fn flatmap_config(v: &Value, path: &str, cx: &mut Ctx) -> Vec<FlatmapOp> {
    let Value::Array(items) = v else {
        cx.error(path, format!("expected an array of {{\"type\": ..., \"args\": [...]}}, found {}", kind(v)));
        return Vec::new();
    };
    let mut ops = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(mut o) = Obj::new(item, index(path, i), cx) else { continue };
        let kind_of = o.required_string("type", cx);
        let type_at = o.at("type");
        let args_at = o.at("args");
        let args = match o.take("args") {
            None => {
                cx.error(&args_at, "missing (required): the dotted paths the operation works on");
                None
            }
            Some(_) => o.strings("args", cx),
        };
        o.finish(cx);
        let (Some(kind_of), Some(args)) = (kind_of, args) else { continue };
        let mut paths = Vec::with_capacity(args.len());
        for (j, a) in args.iter().enumerate() {
            let steps: Vec<String> = a.split('.').map(str::to_string).collect();
            if steps.iter().any(String::is_empty) {
                cx.error(&index(&args_at, j), format!("{a:?} is not a dotted path (an empty step)"));
                continue;
            }
            paths.push(steps);
        }
        if paths.len() != args.len() {
            continue;
        }
        let two = |paths: Vec<Vec<String>>, cx: &mut Ctx| -> Option<(Vec<String>, Vec<String>)> {
            if paths.len() != 2 {
                cx.error(&args_at, format!("{kind_of:?} takes two paths (from, to), found {}", paths.len()));
                return None;
            }
            let mut it = paths.into_iter();
            Some((it.next()?, it.next()?))
        };
        match kind_of.as_str() {
            "move" => {
                let Some((from, to)) = two(paths, cx) else { continue };
                if from.last().is_some_and(|s| s == "*") || to.last().is_some_and(|s| s == "*") {
                    cx.error(&args_at, "a move names one key at the end of each path, not \"*\"");
                    continue;
                }
                ops.push(FlatmapOp::Move(from, to));
            }
            "append" => {
                let Some((from, to)) = two(paths, cx) else { continue };
                ops.push(FlatmapOp::Append(from, to));
            }
            "del" if paths.is_empty() => cx.error(&args_at, "\"del\" takes at least one path"),
            "del" => ops.push(FlatmapOp::Del(paths)),
            other => cx.error(&type_at, format!("unknown operation {other:?} (one of \"move\", \"append\", \"del\")")),
        }
    }
    ops
}

/// `proxy.sequential_propagated_params`: `respN` (the whole answer of backend N, read
/// only from a `no-op` backend, as lura) or `respN_a.b` (a value in it).
/// Each with its index as written (for the warnings made once the backends are read).
fn propagated_params(o: &mut Obj<'_>, backends: usize, cx: &mut Ctx) -> Vec<(usize, PropagatedParam)> {
    let path = o.at("sequential_propagated_params");
    // Non-strings are reported by `strings`; the rest are read here by their index.
    o.strings("sequential_propagated_params", cx);
    let raw = o.map.get("sequential_propagated_params").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut list = Vec::new();
    for (i, p) in raw.iter().enumerate().filter_map(|(i, v)| Some((i, v.as_str()?))) {
        let rest = p.strip_prefix("resp").or_else(|| p.strip_prefix("Resp"));
        let (n, tail) = rest.map_or(("", None), |r| match r.split_once('_') {
            Some((n, tail)) => (n, Some(tail)),
            None => (r, None),
        });
        match n.parse::<usize>() {
            Ok(n) if tail != Some("") && n < backends.saturating_sub(1) => {
                let path = tail.map(|t| t.split('.').map(str::to_string).collect()).unwrap_or_default();
                list.push((i, PropagatedParam { backend: n, path }));
            }
            Ok(n) if tail != Some("") => cx.error(
                &index(&path, i),
                format!("{p:?}: backend[{n}] is not followed by another backend (the endpoint has {backends})"),
            ),
            _ => cx.error(&index(&path, i), format!("{p:?} is not \"respN\" or \"respN_key.path\"")),
        }
    }
    list
}

/// Refuses each of `keys` that asks for something (see [`Obj::asks`]).
fn refuse_unimplemented(o: &mut Obj<'_>, keys: &[(&'static str, &str)], cx: &mut Ctx) {
    for (key, what) in keys {
        if o.asks(key) {
            cx.error(
                &o.at(key),
                format!(
                    "not supported by Sluice yet ({what}): refusing to serve without it; remove it to run without \
                     it (README, \"What Sluice refuses\")"
                ),
            );
        }
    }
}

/// gin router options KrakenD reads that Sluice does not, and why that is safe to say
/// and go on: each is a notice on `check` and `run`.
const ROUTER_NOT_SUPPORTED: &[(&str, &str)] = &[
    ("disable_access_log", "every request is logged at the sluice::access target; filter it with RUST_LOG"),
    ("logger_skip_paths", "every request is logged at the sluice::access target; filter it with RUST_LOG"),
    ("remove_extra_slash", "repeated slashes are redirected to the cleaned path (gin's fixed-path redirect) instead"),
    ("use_h2c", "the listener speaks HTTP/1.1 only"),
    ("app_engine", "Google App Engine headers are not read"),
    ("max_multipart_memory", "bodies are passed to backends, never parsed as multipart"),
];

/// Keys of older KrakenD versions and what v3 calls them.
const RENAMED: &[(&str, &str)] = &[
    ("headers_to_pass", "input_headers"),
    ("querystring_params", "input_query_strings"),
    ("whitelist", "allow"),
    ("blacklist", "deny"),
];

fn parse_method(s: &str) -> Result<Method, String> {
    const ALLOWED: [Method; 5] = [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
    if let Some(m) = ALLOWED.iter().find(|m| m.as_str() == s) {
        return Ok(m.clone());
    }
    let upper = s.to_ascii_uppercase();
    if ALLOWED.iter().any(|m| m.as_str() == upper) {
        return Err(format!("method {s:?} must be written in uppercase ({upper:?})"));
    }
    Err(format!("unsupported method {s:?} (one of GET, POST, PUT, PATCH, DELETE)"))
}

/// Endpoint paths reserved for the gateway's own endpoints (and the health page's
/// path, wherever `health_path` puts it). Kept even when an endpoint is turned off or
/// moved, so that turning it back on never shadows an endpoint.
const RESERVED: &[&str] = &["/__health", "/__debug", "/__echo"];

pub(super) fn decode(root: &Value) -> Result<Parsed, ConfigError> {
    let mut cx = Ctx::default();
    let config = decode_root(root, &mut cx);
    match config {
        Some(config) if cx.errors.is_empty() => Ok(Parsed { config, warnings: cx.warnings, notices: cx.notices }),
        _ => Err(ConfigError::Invalid(cx.errors)),
    }
}

fn decode_root(root: &Value, cx: &mut Ctx) -> Option<Config> {
    let mut o = Obj::new(root, String::new(), cx)?;
    let version = match o.take("version") {
        None => {
            cx.error("version", "missing (required): Sluice reads KrakenD v3 files (\"version\": 3)");
            0
        }
        Some(v) => {
            let n = v.as_u64();
            if n != Some(3) {
                let found = match v {
                    Value::Number(n) => n.to_string(),
                    other => kind(other).to_string(),
                };
                cx.error(
                    "version",
                    format!("unsupported version {found}: Sluice reads KrakenD v3 files (\"version\": 3)"),
                );
            }
            n.unwrap_or(0)
        }
    };
    let name = o.string("name", cx);
    let port = o.uint("port", 0, 65535, cx).map_or(8080, |p| p as u16);
    let listen_ip = o
        .string("listen_ip", cx)
        .filter(|s| !s.is_empty())
        .and_then(|s| match s.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                cx.error("listen_ip", format!("invalid IP address {s:?}"));
                None
            }
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let host = hosts(&mut o, "host", false, cx).unwrap_or_default();
    let timeout = o.positive_duration("timeout", cx).unwrap_or(Duration::from_secs(2));
    let cache_ttl = o.duration("cache_ttl", cx).filter(|d| !d.is_zero());
    let output_encoding = o.leaf("output_encoding", cx).unwrap_or(OutputEncoding::Json);
    let disable_rest = o.flag("disable_rest", cx);
    let allow_insecure_connections = o.flag("allow_insecure_connections", cx);
    let client_tls = o.object("client_tls", cx).map(|t| client_tls(t, cx));
    let tls = o.object("tls", cx).map(|t| server_tls(t, cx));
    let plugin = o.object("plugin", cx).and_then(|mut p| {
        let folder = p.required_string("folder", cx);
        let pattern = p.string("pattern", cx).unwrap_or_else(|| ".wasm".to_string());
        p.finish(cx);
        Some(PluginLoader { folder: folder?, pattern })
    });
    let debug_endpoint = o.flag("debug_endpoint", cx);
    let echo_endpoint = o.flag("echo_endpoint", cx);
    let read_timeout = o.duration("read_timeout", cx).unwrap_or(Duration::from_secs(30));
    let write_timeout = o.duration("write_timeout", cx).unwrap_or(Duration::from_secs(30));
    let idle_timeout = o.duration("idle_timeout", cx).unwrap_or(Duration::from_secs(60));
    let read_header_timeout = o.duration("read_header_timeout", cx).unwrap_or(Duration::from_secs(10));
    let max_shutdown_wait_time = o.duration("max_shutdown_wait_time", cx).unwrap_or(Duration::from_secs(10));
    let max_header_bytes = o.uint("max_header_bytes", 1024, 16 << 20, cx).map_or(65_536, |n| n as usize);
    let max_idle_connections_per_host =
        o.uint("max_idle_connections_per_host", 0, 1 << 20, cx).map_or(250, |n| n as usize);
    let disable_compression = o.flag("disable_compression", cx);

    let mut router = RouterOptions::default();
    let mut forward_proxy = None;
    let mut admin = None;
    let mut dns = DnsSettings::default();
    let mut cors = None;
    let mut bot_detector = None;
    let mut logging = None;
    let mut tracing = None;
    let extra_config = extra_config(&mut o, cx, |ns, v, path, cx| match ns {
        "telemetry/opentelemetry" => {
            tracing = otel_config(Obj::new(v, path.to_string(), cx)?, name.as_deref(), cx);
            Some(())
        }
        // KrakenD's name and the module's own.
        "telemetry/logging" | "github_com/devopsfaith/krakend-gologging" => {
            logging = logging_config(Obj::new(v, path.to_string(), cx)?, cx);
            Some(())
        }
        // KrakenD's alias and the module's own name (lura renames the one to the other).
        "security/cors" | "github_com/devopsfaith/krakend-cors" => {
            cors = Some(cors_config(Obj::new(v, path.to_string(), cx)?, cx));
            Some(())
        }
        "security/bot-detector" | "github_com/devopsfaith/krakend-botdetector" => {
            bot_detector = Some(bot_detector_config(Obj::new(v, path.to_string(), cx)?, cx));
            Some(())
        }
        "router" => {
            let mut r = Obj::new(v, path.to_string(), cx)?;
            router.return_error_msg = r.flag("return_error_msg", cx);
            router.forwarded_by_client_ip = r.flag("forwarded_by_client_ip", cx);
            if let Some(h) = r.strings("remote_ip_headers", cx) {
                router.remote_ip_headers = h;
            }
            if let Some(list) = r.strings("trusted_proxies", cx) {
                let list_path = r.at("trusted_proxies");
                for (i, s) in list.iter().enumerate() {
                    match IpNet::parse(s) {
                        Ok(net) => router.trusted_proxies.push(net),
                        Err(m) => cx.error(&index(&list_path, i), m),
                    }
                }
            }
            router.redirect_trailing_slash = !r.flag("disable_redirect_trailing_slash", cx);
            router.redirect_fixed_path = !r.flag("disable_redirect_fixed_path", cx);
            router.method_not_allowed = !r.flag("disable_handle_method_not_allowed", cx);
            router.auto_options = r.flag("auto_options", cx);
            router.refuse_encoded_params = !r.flag("disable_path_decoding", cx);
            // Sluice never sends KrakenD's version header: there is nothing to hide.
            r.flag("hide_version_header", cx);
            if r.flag("disable_health", cx) {
                router.health_path = None;
            } else if let Some(p) = r.non_empty("health_path", cx) {
                if p.starts_with('/') {
                    router.health_path = Some(p);
                } else {
                    cx.error(&r.at("health_path"), format!("{p:?} must start with /"));
                }
            }
            if let Some(mut bodies) = r.object("error_body", cx) {
                router.error_body_404 = bodies.take("404").map(crate::gateway::json::go_marshal);
                router.error_body_405 = bodies.take("405").map(crate::gateway::json::go_marshal);
                bodies.finish(cx);
            }
            for (key, why) in ROUTER_NOT_SUPPORTED {
                // Said only when it asks for something.
                if r.asks(key) {
                    cx.notice(&r.at(key), format!("not supported by Sluice, ignored: {why}"));
                }
            }
            r.finish(cx);
            Some(())
        }
        "sluice/forward-proxy" => {
            forward_proxy = Some(forward(Obj::new(v, path.to_string(), cx)?, cx));
            Some(())
        }
        "sluice/admin" => {
            let mut a = Obj::new(v, path.to_string(), cx)?;
            let ip = a.non_empty("listen_ip", cx).map_or(Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), |s| {
                s.parse::<IpAddr>().map_err(|_| cx.error(&a.at("listen_ip"), format!("invalid IP address {s:?}"))).ok()
            });
            let port = a.uint("port", 0, 65535, cx).map_or(9901, |p| p as u16);
            a.finish(cx);
            admin = ip.map(|ip| SocketAddr::new(ip, port));
            Some(())
        }
        "sluice/dns" => {
            let mut d = Obj::new(v, path.to_string(), cx)?;
            let listed = d.at("nameservers");
            for (i, s) in d.strings("nameservers", cx).unwrap_or_default().iter().enumerate() {
                match s.parse::<SocketAddr>().or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53))) {
                    Ok(a) if a.port() != 0 => dns.nameservers.push(a),
                    _ => cx.error(
                        &index(&listed, i),
                        format!("{s:?} is not a nameserver address (\"IP\" or \"IP:port\", \"[IPv6]:port\")"),
                    ),
                }
            }
            dns.timeout = d.positive_duration("timeout", cx);
            dns.attempts = d.uint("attempts", 1, 5, cx).map(|n| n as u32);
            d.finish(cx);
            Some(())
        }
        _ => None,
    });
    if let Some(f) = &forward_proxy
        && f.port == port
        && f.port != 0
        && (f.listen_ip == listen_ip || listen_ip.is_unspecified() || f.listen_ip.is_unspecified())
    {
        cx.error(
            "extra_config[\"sluice/forward-proxy\"].port",
            format!("{} is the gateway's port too: the forward proxy needs its own", f.port),
        );
    }

    if let Some(a) = admin
        && a.port() != 0
    {
        let same =
            |ip: IpAddr, p: u16| p == a.port() && (ip == a.ip() || ip.is_unspecified() || a.ip().is_unspecified());
        let taken = if same(listen_ip, port) {
            Some("the gateway's")
        } else if forward_proxy.as_ref().is_some_and(|f| same(f.listen_ip, f.port)) {
            Some("the forward proxy's")
        } else {
            None
        };
        if let Some(whose) = taken {
            cx.error(
                "extra_config[\"sluice/admin\"].port",
                format!("{} is {whose} port too: the admin listener needs its own", a.port()),
            );
        }
    }

    let ctx = RootCtx {
        disable_rest,
        has_root_host: !host.is_empty(),
        output_encoding,
        health_path: router.health_path.clone(),
    };
    let mut endpoints = Vec::new();
    match o.take("endpoints") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(e) = endpoint(item, index("endpoints", i), &ctx, cx) {
                    endpoints.push((i, e));
                }
            }
        }
        Some(other) => cx.error("endpoints", format!("expected an array, found {}", kind(other))),
    }
    o.finish(cx);

    // Route conflicts are found by building the router itself, so that what `check`
    // accepts is exactly what the router can serve.
    if let Err(errors) = Router::build(endpoints.iter().map(|(i, e)| (*i, &e.method, e.endpoint.as_str()))) {
        cx.errors.extend(errors.into_iter().map(|e| Diagnostic { path: e.json_path(), message: e.message }));
    }

    Some(Config {
        version,
        name,
        port,
        listen_ip,
        host,
        timeout,
        cache_ttl,
        output_encoding,
        disable_rest,
        allow_insecure_connections,
        client_tls,
        tls,
        plugin,
        debug_endpoint,
        echo_endpoint,
        read_timeout,
        write_timeout,
        idle_timeout,
        read_header_timeout,
        max_shutdown_wait_time,
        max_header_bytes,
        max_idle_connections_per_host,
        disable_compression,
        router,
        forward_proxy,
        admin,
        dns,
        cors,
        bot_detector,
        logging,
        tracing,
        extra_config,
        endpoints: endpoints.into_iter().map(|(_, e)| e).collect(),
    })
}

/// `extra_config."telemetry/logging"`, as krakend-gologging reads it (`level`
/// required; `stdout` and `syslog` false unless set).
fn logging_config(mut o: Obj<'_>, cx: &mut Ctx) -> Option<crate::ops::logging::Logging> {
    use crate::ops::logging::{FACILITIES, Format, Level, Logging, Pattern};
    let level = o.required_string("level", cx).and_then(|l| {
        let level = Level::parse(&l);
        if level.is_none() {
            cx.error(
                &o.at("level"),
                format!("unknown level {l:?}, expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
            );
        }
        level
    });
    let prefix = o.string("prefix", cx).unwrap_or_default();
    let stdout = o.flag("stdout", cx);
    let syslog = o.flag("syslog", cx);
    let facility = match o.string("syslog_facility", cx) {
        None => Some(19),
        Some(f) => {
            let code = FACILITIES.iter().find(|(name, _)| *name == f).map(|(_, c)| *c);
            if code.is_none() {
                let names: Vec<&str> = FACILITIES.iter().map(|(n, _)| *n).collect();
                cx.error(
                    &o.at("syslog_facility"),
                    format!("unknown facility {f:?}, expected one of {}", names.join(", ")),
                );
            }
            code
        }
    };
    let custom_at = o.at("custom_format");
    let custom = o.string("custom_format", cx);
    let format = match o.string("format", cx).as_deref() {
        None | Some("default") => Some(Format::Default),
        Some("logstash") => Some(Format::Logstash),
        Some("custom") => match custom.as_deref().map(Pattern::parse) {
            Some(Ok(p)) => Some(Format::Custom(p)),
            Some(Err(e)) => {
                cx.error(&custom_at, e);
                None
            }
            None => {
                cx.error(&custom_at, "missing: the custom format needs its pattern (\"%{message}\", ...)");
                None
            }
        },
        Some(other) => {
            cx.error(&o.at("format"), format!("unknown format {other:?}, expected one of default, logstash, custom"));
            None
        }
    };
    o.finish(cx);
    Some(Logging { level: level?, prefix, stdout, syslog, facility: facility?, format: format? })
}

/// `extra_config."security/cors"`, with krakend-cors's defaults.
fn cors_config(mut o: Obj<'_>, cx: &mut Ctx) -> CorsConfig {
    let allow_origins = o.strings("allow_origins", cx).filter(|v| !v.is_empty()).unwrap_or_else(|| vec!["*".into()]);
    let origins_path = o.at("allow_origins");
    for (i, origin) in allow_origins.iter().enumerate() {
        if origin.is_empty() || origin.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            cx.error(&index(&origins_path, i), format!("{origin:?} is not an origin (scheme://host[:port]) or \"*\""));
        }
    }
    let allow_methods = o
        .strings("allow_methods", cx)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| ["GET", "POST", "HEAD"].map(String::from).to_vec());
    let methods_path = o.at("allow_methods");
    for (i, m) in allow_methods.iter().enumerate() {
        if http::Method::from_bytes(m.as_bytes()).is_err() {
            cx.error(&index(&methods_path, i), format!("{m:?} is not a method"));
        }
    }
    let allow_headers = o.strings("allow_headers", cx).filter(|v| !v.is_empty()).unwrap_or_else(|| vec!["*".into()]);
    let expose_headers = o.strings("expose_headers", cx).unwrap_or_default();
    for key in ["allow_headers", "expose_headers"] {
        let list = if key == "allow_headers" { &allow_headers } else { &expose_headers };
        let path = o.at(key);
        for (i, h) in list.iter().enumerate() {
            if h != "*" && http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                cx.error(&index(&path, i), format!("{h:?} is not a header name"));
            }
        }
    }
    let allow_credentials = o.flag("allow_credentials", cx);
    let allow_private_network = o.flag("allow_private_network", cx);
    let options_passthrough = o.flag("options_passthrough", cx);
    let options_success_status = o.uint("options_success_status", 200, 299, cx).map_or(204, |n| n as u16);
    let max_age = o.duration("max_age", cx).unwrap_or_default();
    let debug = o.flag("debug", cx);
    o.finish(cx);
    CorsConfig {
        allow_origins,
        allow_methods,
        allow_headers,
        expose_headers,
        allow_credentials,
        allow_private_network,
        options_passthrough,
        options_success_status,
        max_age,
        debug,
    }
}

/// A header a backend never gets from the client: framing, hop-by-hop, `Host`, and
/// those the gateway writes itself.
fn gateway_sets(name: &str) -> bool {
    crate::http1::is_hop_by_hop_name(name.as_bytes()) || crate::gateway::upstream::is_gateway_owned(name.as_bytes())
}

/// KrakenD's default `cache_duration`, in seconds.
const JWK_CACHE_DURATION: u64 = 900;

/// `extra_config."auth/validator"` on an endpoint. KrakenD answers 401 to every
/// request when its block is wrong (or stops, for a bad `alg`); here it is an error.
fn jwt_config(mut o: Obj<'_>, cx: &mut Ctx) -> Option<JwtConfig> {
    use crate::gateway::jwt::Alg;
    let alg_path = o.at("alg");
    let alg = o.required_string("alg", cx).filter(|a| {
        let known = Alg::parse(a).is_some();
        if !known {
            cx.error(&alg_path, format!("{a:?} is not an algorithm KrakenD validates: {}", Alg::NAMES));
        }
        known
    });
    let disable_jwk_security = o.flag("disable_jwk_security", cx);
    let jwk_url = o.non_empty("jwk_url", cx);
    let jwk_local_path = o.non_empty("jwk_local_path", cx);
    let jwk_local_ca = o.non_empty("jwk_local_ca", cx);
    match (&jwk_url, &jwk_local_path) {
        (None, None) => cx.error(&o.path, "no keys: give jwk_url or jwk_local_path"),
        (Some(_), Some(_)) => {
            cx.notice(&o.at("jwk_url"), "not used: jwk_local_path is given (KrakenD reads the file then)")
        }
        (Some(url), None) => {
            let https = url.starts_with("https://");
            if !https && !url.starts_with("http://") {
                cx.error(&o.at("jwk_url"), format!("{url:?} is not an http(s) URL"));
            } else if !https && !disable_jwk_security {
                cx.error(&o.at("jwk_url"), "not https: set disable_jwk_security to fetch keys over plain HTTP");
            }
        }
        (None, Some(_)) => {}
    }
    if disable_jwk_security {
        cx.notice(
            &o.at("disable_jwk_security"),
            "the key set's server is not verified (plain HTTP or any certificate)",
        );
    }
    // A fetched set is kept and fetched again every cache_duration, whether `cache`
    // is on or not (KrakenD without it fetches on every request).
    let _ = o.flag("cache", cx);
    let cache_duration =
        Duration::from_secs(o.uint("cache_duration", 1, u64::from(u32::MAX), cx).unwrap_or(JWK_CACHE_DURATION));
    let failed_jwk_key_cooldown =
        o.duration("failed_jwk_key_cooldown", cx).unwrap_or(Duration::from_secs(10)).max(Duration::from_secs(1));
    let strategy_path = o.at("key_identify_strategy");
    let key_identify_strategy = match o.non_empty("key_identify_strategy", cx).as_deref() {
        None | Some("kid") => KeyStrategy::Kid,
        Some("x5t") => KeyStrategy::X5t,
        Some("kid_x5t") => KeyStrategy::KidX5t,
        Some(other) => {
            cx.error(
                &strategy_path,
                format!("{other:?} is not a strategy Sluice knows: \"kid\", \"x5t\" or \"kid_x5t\""),
            );
            KeyStrategy::Kid
        }
    };
    let header_path = o.at("auth_header_name");
    let auth_header_name = o.non_empty("auth_header_name", cx).unwrap_or_else(|| "Authorization".into());
    if http::HeaderName::from_bytes(auth_header_name.as_bytes()).is_err() {
        cx.error(&header_path, format!("{auth_header_name:?} is not a header name"));
    }
    let cookie_key = o.non_empty("cookie_key", cx).unwrap_or_else(|| "access_token".into());
    let leeway = o.duration("leeway", cx).unwrap_or(Duration::from_secs(1)).max(Duration::from_secs(1));
    let issuer = o.non_empty("issuer", cx);
    let audience = o.strings("audience", cx).unwrap_or_default();
    let roles_key = o.non_empty("roles_key", cx).unwrap_or_else(|| "roles".into());
    let roles_key_is_nested = o.flag("roles_key_is_nested", cx);
    let roles = o.strings("roles", cx).unwrap_or_default();
    let scopes_key = o.non_empty("scopes_key", cx);
    let scopes = o.strings("scopes", cx).unwrap_or_default();
    if !scopes.is_empty() && scopes_key.is_none() {
        // KrakenD checks no scope then: serving so would be a hole.
        cx.error(&o.at("scopes_key"), "missing: scopes needs the claim that holds them");
    }
    let matcher_path = o.at("scopes_matcher");
    let scopes_matcher = match o.non_empty("scopes_matcher", cx).as_deref() {
        None | Some("any") => ScopesMatcher::Any,
        Some("all") => ScopesMatcher::All,
        Some(other) => {
            cx.error(&matcher_path, format!("{other:?} is not a matcher: \"any\" or \"all\""));
            ScopesMatcher::Any
        }
    };
    let mut propagate_claims = Vec::new();
    if let Some(v) = o.take("propagate_claims") {
        let path = o.at("propagate_claims");
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let at = index(&path, i);
                    match item.as_array().map(Vec::as_slice) {
                        Some([Value::String(claim), Value::String(header)]) if !claim.is_empty() => {
                            match http::HeaderName::from_bytes(header.as_bytes()) {
                                Ok(name) if gateway_sets(name.as_str()) => cx.error(
                                    &index(&at, 1),
                                    format!("{header:?} is set by the gateway or ends at it: it cannot carry a claim"),
                                ),
                                Ok(name) => propagate_claims.push((claim.clone(), name)),
                                Err(_) => cx.error(&index(&at, 1), format!("{header:?} is not a header name")),
                            }
                        }
                        _ => cx.error(&at, "expected [\"claim\", \"Header-Name\"]"),
                    }
                }
            }
            other => {
                cx.error(&path, format!("expected an array of [\"claim\", \"Header-Name\"], found {}", kind(other)))
            }
        }
    }
    let propagate_claims_preserve_array = o.flag("propagate_claims_preserve_array", cx);
    let operation_debug = o.flag("operation_debug", cx);
    if o.asks("cipher_suites") {
        cx.notice(
            &o.at("cipher_suites"),
            "not used: the key set is fetched with rustls's suites (TLS 1.2 and 1.3, none weak)",
        );
    }
    for (key, what) in [
        ("jwk_fingerprints", "certificate pinning of the key set's server"),
        ("secret_url", "an encrypted key file"),
        ("cypher_key", "an encrypted key file"),
    ] {
        if o.asks(key) {
            cx.error(
                &o.at(key),
                format!("not supported by Sluice ({what}): refusing to serve without it; remove it to run without it"),
            );
        }
    }
    o.finish(cx);
    Some(JwtConfig {
        alg: alg?,
        jwk_url,
        jwk_local_path,
        jwk_local_ca,
        disable_jwk_security,
        cache_duration,
        failed_jwk_key_cooldown,
        key_identify_strategy,
        auth_header_name,
        cookie_key,
        leeway,
        issuer,
        audience,
        roles_key,
        roles_key_is_nested,
        roles,
        scopes_key,
        scopes,
        scopes_matcher,
        propagate_claims,
        propagate_claims_preserve_array,
        operation_debug,
    })
}

/// `extra_config."security/bot-detector"` (root or endpoint). KrakenD runs without
/// the detector when its block is wrong (a warning in its log); here it is an error.
fn bot_detector_config(mut o: Obj<'_>, cx: &mut Ctx) -> BotDetectorConfig {
    let allow = o.strings("allow", cx).unwrap_or_default();
    let deny = o.strings("deny", cx).unwrap_or_default();
    let patterns = o.strings("patterns", cx).unwrap_or_default();
    let patterns_path = o.at("patterns");
    for (i, p) in patterns.iter().enumerate() {
        if let Err(e) = regex::bytes::Regex::new(p) {
            let first = e.to_string().lines().last().unwrap_or_default().trim().to_string();
            cx.error(&index(&patterns_path, i), format!("{p:?} is not a regular expression: {first}"));
        }
    }
    let cache_size = o.uint("cache_size", 0, u64::from(u32::MAX), cx).unwrap_or(0);
    let empty_user_agent_is_bot = o.flag("empty_user_agent_is_bot", cx);
    o.finish(cx);
    BotDetectorConfig { allow, deny, patterns, cache_size, empty_user_agent_is_bot }
}

/// A non-negative number (`max_rate`: KrakenD takes fractions).
fn rate(o: &mut Obj<'_>, key: &'static str, cx: &mut Ctx) -> f64 {
    let Some(v) = o.take(key) else { return 0.0 };
    match v.as_f64() {
        Some(r) if r >= 0.0 && r.is_finite() => r,
        _ => {
            cx.error(&o.at(key), format!("expected a number of requests, 0 or more, found {}", kind(v)));
            0.0
        }
    }
}

/// `extra_config."qos/ratelimit/router"` on an endpoint whose path has `params`.
fn rate_limit_config(mut o: Obj<'_>, params: Option<&[String]>, cx: &mut Ctx) -> Option<RateLimitConfig> {
    let here = o.path.clone();
    let max_rate = rate(&mut o, "max_rate", cx);
    let client_max_rate = rate(&mut o, "client_max_rate", cx);
    let capacity = o.uint("capacity", 0, u64::from(u32::MAX), cx).unwrap_or(0);
    let client_capacity = o.uint("client_capacity", 0, u64::from(u32::MAX), cx).unwrap_or(0);
    let every = match o.duration("every", cx) {
        Some(d) if d < Duration::from_secs(1) => {
            cx.notice(&o.at("every"), "under 1s: taken as 1s, as KrakenD does");
            Duration::from_secs(1)
        }
        Some(d) => d,
        None => Duration::from_secs(1),
    };
    let strategy_path = o.at("strategy");
    let strategy = o.string("strategy", cx).filter(|s| !s.is_empty());
    let key = o.string("key", cx).filter(|s| !s.is_empty());
    let key_path = o.at("key");
    let mut said = false;
    let strategy = match (strategy.map(|s| s.to_ascii_lowercase()).as_deref(), key) {
        (None, _) => None,
        (Some("ip"), key) => {
            if let Some(k) = &key
                && http::HeaderName::from_bytes(k.as_bytes()).is_err()
            {
                cx.error(&key_path, format!("{k:?} is not a header name"));
            }
            Some(LimitStrategy::Ip(key))
        }
        (Some("header"), Some(k)) => {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                cx.error(&key_path, format!("{k:?} is not a header name"));
            }
            Some(LimitStrategy::Header(k))
        }
        (Some("param"), Some(k)) => {
            if !params.unwrap_or_default().contains(&k) {
                cx.error(&key_path, format!("the endpoint's path has no {{{k}}} parameter"));
            }
            Some(LimitStrategy::Param(k))
        }
        (Some(s @ ("header" | "param")), None) => {
            // KrakenD answers every request 429 then (an empty key for everyone).
            cx.error(&key_path, format!("missing: strategy {s:?} needs the name of the {s} to tell clients apart"));
            said = true;
            None
        }
        (Some(other), _) => {
            said = true;
            cx.error(&strategy_path, format!("{other:?} is not a strategy: \"ip\", \"header\" or \"param\""));
            None
        }
    };
    if client_max_rate > 0.0 && strategy.is_none() && !said {
        // KrakenD drops the client limit then, with a warning: serving without it
        // would be a hole.
        cx.error(&strategy_path, "missing: client_max_rate needs a strategy (\"ip\", \"header\" or \"param\")");
    }
    let shards = o.uint("num_shards", 0, 1 << 20, cx).unwrap_or(2048).max(1);
    // Read for their checks: the bucket table needs no cleaning.
    let _ = o.duration("cleanup_period", cx);
    let _ = o.uint("cleanup_threads", 0, 1 << 16, cx);
    o.finish(cx);
    if max_rate == 0.0 && client_max_rate == 0.0 {
        cx.error(&here, "sets no limit: give max_rate or client_max_rate");
        return None;
    }
    let per_second = |r: f64| r * Duration::from_secs(1).as_secs_f64() / every.as_secs_f64();
    let (max_rate, client_max_rate) = (per_second(max_rate), per_second(client_max_rate));

    let burst = |given: u64, rate: f64| if given > 0 { given } else { (rate as u64).max(1) };
    // KrakenD's default client capacity looks at the endpoint's rate: under 1 a second
    // (or none), a client gets no burst. The running KrakenD is what users have tuned.
    let client_default = if max_rate < 1.0 { 1.0 } else { client_max_rate };
    let client_capacity = burst(client_capacity, client_default);
    // A client bucket keeps its time in 48 bits of microseconds: one that takes more
    // than about two years to refill could not be told from a full one.
    if client_max_rate > 0.0
        && client_capacity as f64 / client_max_rate > crate::gateway::ratelimit::CLIENT_REFILL_MAX_SECS
    {
        cx.error(
            &join(&here, "client_max_rate"),
            "a client's bucket would take more than two years to refill: raise client_max_rate or lower \
             client_capacity",
        );
        return None;
    }
    Some(RateLimitConfig {
        max_rate,
        capacity: burst(capacity, max_rate),
        client_max_rate,
        client_capacity,
        strategy,
        client_slots: (shards as usize).saturating_mul(8).clamp(64, 1 << 22),
    })
}

/// `extra_config."sluice/forward-proxy"`.
fn forward(mut o: Obj<'_>, cx: &mut Ctx) -> ForwardProxy {
    let listen_ip = o.string("listen_ip", cx).filter(|s| !s.is_empty()).and_then(|s| match s.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            cx.error(&o.at("listen_ip"), format!("invalid IP address {s:?}"));
            None
        }
    });
    let port = o.uint("port", 0, 65535, cx).map_or(3128, |p| p as u16);
    let auto_host_rewrite_header = o.non_empty("auto_host_rewrite_header", cx);
    if let Some(h) = &auto_host_rewrite_header {
        check_header_names(std::slice::from_ref(h), &o.at("auto_host_rewrite_header"), cx);
        if h.eq_ignore_ascii_case("host") || crate::http1::is_hop_by_hop_name(h.as_bytes()) {
            cx.error(
                &o.at("auto_host_rewrite_header"),
                format!("{h:?} cannot carry the destination: name another header"),
            );
        }
    }
    let timeout = o.positive_duration("timeout", cx).unwrap_or(Duration::from_secs(30));
    let idle_timeout = o.positive_duration("idle_timeout", cx).unwrap_or(Duration::from_secs(300));
    let mut connect = ConnectTunnels { enabled: false, allowed_ports: vec![PortRange(443, 443)], splice: true };
    if let Some(mut c) = o.object("connect", cx) {
        connect.enabled = c.flag("enabled", cx);
        if let Some(p) = ports(&mut c, "allowed_ports", cx) {
            connect.allowed_ports = p;
        }
        connect.splice = c.leaf("splice", cx).unwrap_or(true);
        c.finish(cx);
    }
    let mut dns_lookup_family = LookupFamily::V4Preferred;
    let mut dns_cache = crate::resolve::dns::DnsCacheConfig::default();
    if let Some(mut d) = o.object("dns_cache", cx) {
        if let Some(f) = d.leaf("dns_lookup_family", cx) {
            dns_lookup_family = f;
        }
        if let Some(t) = d.positive_duration("host_ttl", cx) {
            dns_cache.host_ttl = t;
        }
        if let Some(n) = d.uint("max_hosts", 1, 1 << 24, cx) {
            dns_cache.max_hosts = n as usize;
        }
        if let Some(t) = d.positive_duration("dns_refresh_rate", cx) {
            dns_cache.dns_refresh_rate = t;
        }
        d.finish(cx);
    }
    let mut circuit_breakers = super::Thresholds::default();
    if let Some(mut b) = o.object("circuit_breakers", cx) {
        let limit = |b: &mut Obj<'_>, key, cx: &mut Ctx| b.uint(key, 0, u64::from(u32::MAX), cx).map(|n| n as u32);
        let t = &mut circuit_breakers;
        t.max_connections = limit(&mut b, "max_connections", cx).unwrap_or(t.max_connections);
        t.max_pending_requests = limit(&mut b, "max_pending_requests", cx).unwrap_or(t.max_pending_requests);
        t.max_requests = limit(&mut b, "max_requests", cx).unwrap_or(t.max_requests);
        t.max_retries = limit(&mut b, "max_retries", cx).unwrap_or(t.max_retries);
        t.track_remaining = b.flag("track_remaining", cx);
        b.finish(cx);
    }
    let mut egress = EgressPolicy { ports: vec![PortRange(80, 80), PortRange(443, 443)], ..EgressPolicy::default() };
    if let Some(mut e) = o.object("egress", cx) {
        egress.allow_hosts = host_patterns(&mut e, "allow_hosts", cx);
        egress.deny_hosts = host_patterns(&mut e, "deny_hosts", cx);
        if let Some(p) = ports(&mut e, "ports", cx) {
            egress.ports = p;
        }
        if let Some(list) = e.strings("allow_cidrs", cx) {
            let list_path = e.at("allow_cidrs");
            for (i, s) in list.iter().enumerate() {
                match IpNet::parse(s) {
                    Ok(net) => egress.allow_cidrs.push(net),
                    Err(m) => cx.error(&index(&list_path, i), m),
                }
            }
        }
        e.finish(cx);
    }
    o.finish(cx);
    ForwardProxy {
        listen_ip: listen_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        port,
        auto_host_rewrite_header,
        timeout,
        idle_timeout,
        connect,
        dns_lookup_family,
        dns_cache,
        circuit_breakers,
        egress,
    }
}

/// A list of ports: numbers, or `"from-to"` ranges.
fn ports(o: &mut Obj<'_>, key: &'static str, cx: &mut Ctx) -> Option<Vec<PortRange>> {
    let v = o.take(key)?;
    let path = o.at(key);
    let Value::Array(items) = v else {
        cx.error(&path, format!("expected an array of ports (443, or \"8000-8999\"), found {}", kind(v)));
        return None;
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let one = |n: &str| n.trim().parse::<u16>().ok().filter(|p| *p > 0);
        let range = match item {
            Value::Number(n) => {
                n.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|p| *p > 0).map(|p| PortRange(p, p))
            }
            Value::String(s) => match s.split_once('-') {
                Some((a, b)) => one(a).zip(one(b)).filter(|(a, b)| a <= b).map(|(a, b)| PortRange(a, b)),
                None => one(s).map(|p| PortRange(p, p)),
            },
            _ => None,
        };
        match range {
            Some(r) => out.push(r),
            None => cx.error(
                &index(&path, i),
                format!("expected a port from 1 to 65535 or a range \"from-to\", found {item}"),
            ),
        }
    }
    Some(out)
}

/// Host patterns: a host name (`example.com`) or a suffix (`*.example.com`, which
/// matches `a.example.com` and `a.b.example.com`, not `example.com` itself). Kept
/// lowercase.
fn host_patterns(o: &mut Obj<'_>, key: &'static str, cx: &mut Ctx) -> Vec<String> {
    let Some(list) = o.strings(key, cx) else { return Vec::new() };
    let path = o.at(key);
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let name = p.strip_prefix("*.").unwrap_or(p);
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if ok || p.parse::<IpAddr>().is_ok() {
            out.push(p.to_ascii_lowercase());
        } else {
            cx.error(&index(&path, i), format!("{p:?} is not a host name or a \"*.suffix\" pattern"));
        }
    }
    out
}

/// What a namespace Sluice does not implement would have done, by its prefix: those
/// that enforce or change what is served are refused (serving without them would be a
/// hole, or another gateway than the file describes); those that only observe are a
/// notice. The second part is what the refusal says.
const UNIMPLEMENTED: &[(&str, Option<&str>)] = &[
    ("auth/", Some("authentication and authorization")),
    ("security/", Some("a security policy (CORS, bot detection, HTTP security headers, ...)")),
    ("validation/", Some("request validation")),
    ("qos/", Some("rate limits, circuit breakers or caching")),
    ("governance/", Some("quotas")),
    ("modifier/", Some("request or response modification")),
    ("plugin/", Some("a plugin stage Sluice does not run")),
    ("server/", Some("a server feature")),
    ("backend/", Some("a backend type other than HTTP")),
    ("websocket", Some("WebSockets")),
    ("grpc", Some("gRPC")),
    ("telemetry/", None),
    ("documentation/", None),
];

/// Reads `extra_config`: `known` decodes the namespaces this level understands (and
/// returns `None` for the others). Of the rest, one that enforces or changes what is
/// served is refused with what it would have done ([`UNIMPLEMENTED`]); any other is a
/// notice, said by `check` and at `run`.
fn extra_config<'a>(
    o: &mut Obj<'a>,
    cx: &mut Ctx,
    mut known: impl FnMut(&str, &'a Value, &str, &mut Ctx) -> Option<()>,
) -> Map<String, Value> {
    let Some(v) = o.take("extra_config") else {
        return Map::new();
    };
    let path = o.at("extra_config");
    let Value::Object(map) = v else {
        cx.error(&path, format!("expected an object, found {}", kind(v)));
        return Map::new();
    };
    for (ns, value) in map {
        let ns_path = join(&path, ns);
        if known(ns, value, &ns_path, cx).is_some() {
            continue;
        }
        match UNIMPLEMENTED.iter().find(|(prefix, _)| ns.starts_with(prefix)) {
            Some((_, Some(what))) => cx.error(
                &ns_path,
                format!(
                    "not supported by Sluice ({what}): refusing to serve without it; remove the namespace to run \
                     without it (README, \"What Sluice refuses\")"
                ),
            ),
            Some((_, None)) => cx.notice(&ns_path, "only observes: not supported by Sluice, ignored"),
            None => cx.notice(&ns_path, "namespace not supported by Sluice, ignored"),
        }
    }
    map.clone()
}

/// Reads a list of hosts, checking each one unless `disable_sanitize`.
fn hosts(o: &mut Obj<'_>, key: &'static str, disable_sanitize: bool, cx: &mut Ctx) -> Option<Vec<String>> {
    let list = o.strings(key, cx)?;
    if !disable_sanitize {
        let path = o.at(key);
        for (i, h) in list.iter().enumerate() {
            if let Err(m) = HostAddr::parse(h) {
                cx.error(&index(&path, i), m);
            }
        }
    }
    Some(list)
}

fn client_tls(mut t: Obj<'_>, cx: &mut Ctx) -> ClientTls {
    let allow_insecure_connections = t.flag("allow_insecure_connections", cx);
    let ca_certs = t.strings("ca_certs", cx).unwrap_or_default();
    let disable_system_ca_pool = t.flag("disable_system_ca_pool", cx);
    let min_version = t.leaf("min_version", cx);
    let max_version = t.leaf("max_version", cx);
    if let (Some(min), Some(max)) = (min_version, max_version)
        && min > max
    {
        cx.error(&t.at("min_version"), "min_version is above max_version");
    }
    let client_certs = cert_pairs(&mut t, "client_certs", "certificate", cx);
    if disable_system_ca_pool && ca_certs.is_empty() && !allow_insecure_connections {
        cx.error(&t.at("disable_system_ca_pool"), "no CA left to trust: add ca_certs or keep the system pool");
    }
    let cipher_suites = cipher_suites(&mut t, cx);
    t.finish(cx);
    ClientTls {
        allow_insecure_connections,
        ca_certs,
        disable_system_ca_pool,
        min_version,
        max_version,
        client_certs,
        cipher_suites,
    }
}

/// An array of `{cert_name, "private_key"}` objects (`client_certs`, `tls.keys`).
fn cert_pairs(t: &mut Obj<'_>, key: &'static str, cert_name: &'static str, cx: &mut Ctx) -> Vec<ClientCert> {
    let mut pairs = Vec::new();
    match t.take(key) {
        None => {}
        Some(Value::Array(items)) => {
            let path = t.at(key);
            for (i, item) in items.iter().enumerate() {
                if let Some(mut c) = Obj::new(item, index(&path, i), cx) {
                    let certificate = c.required_string(cert_name, cx);
                    let private_key = c.required_string("private_key", cx);
                    c.finish(cx);
                    if let (Some(certificate), Some(private_key)) = (certificate, private_key) {
                        pairs.push(ClientCert { certificate, private_key });
                    }
                }
            }
        }
        Some(other) => cx.error(&t.at(key), format!("expected an array, found {}", kind(other))),
    }
    pairs
}

/// `cipher_suites`: IANA numbers, as Go's `tls` package writes them.
fn cipher_suites(t: &mut Obj<'_>, cx: &mut Ctx) -> Vec<u16> {
    let Some(v) = t.take("cipher_suites") else { return Vec::new() };
    let path = t.at("cipher_suites");
    let Value::Array(items) = v else {
        cx.error(&path, format!("expected an array of cipher suite numbers (such as 4865), found {}", kind(v)));
        return Vec::new();
    };
    let mut ids = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.as_u64().and_then(|n| u16::try_from(n).ok()) {
            Some(id) => ids.push(id),
            None => cx.error(&index(&path, i), format!("expected a cipher suite number from 0 to 65535, found {item}")),
        }
    }
    ids
}

/// The root `tls` object (KrakenD's server TLS).
fn server_tls(mut t: Obj<'_>, cx: &mut Ctx) -> ServerTls {
    let disabled = t.flag("disabled", cx);
    let public_key = t.string("public_key", cx);
    let private_key = t.string("private_key", cx);
    let mut keys = Vec::new();
    let half = public_key.is_some() != private_key.is_some();
    match (public_key, private_key) {
        (Some(certificate), Some(private_key)) => keys.push(ClientCert { certificate, private_key }),
        (Some(_), None) => cx.error(&t.at("private_key"), "missing: public_key needs its private_key"),
        (None, Some(_)) => cx.error(&t.at("public_key"), "missing: private_key needs its public_key"),
        (None, None) => {}
    }
    let listed = cert_pairs(&mut t, "keys", "public_key", cx);
    let from_keys = keys.is_empty() && !listed.is_empty();
    keys.extend(listed);
    if keys.is_empty() && !disabled && !half {
        cx.error(&t.at("public_key"), "missing: the certificate (public_key) and its private_key");
    }
    if keys.len() > 1 {
        cx.error(
            &t.at("keys"),
            "Sluice serves one certificate for now: one of public_key/private_key or keys[0], not both or more",
        );
    }
    let min_version = t.leaf("min_version", cx);
    let max_version = t.leaf("max_version", cx);
    if let (Some(min), Some(max)) = (min_version, max_version)
        && min > max
    {
        cx.error(&t.at("min_version"), "min_version is above max_version");
    }
    let cipher_suites = cipher_suites(&mut t, cx);
    let enable_mtls = t.flag("enable_mtls", cx);
    let ca_certs = t.strings("ca_certs", cx).unwrap_or_default();
    let disable_system_ca_pool = t.flag("disable_system_ca_pool", cx);
    if enable_mtls && disable_system_ca_pool && ca_certs.is_empty() {
        cx.error(&t.at("disable_system_ca_pool"), "no CA left to check client certificates against: add ca_certs");
    }
    t.finish(cx);
    ServerTls {
        from_keys,
        keys,
        disabled,
        min_version,
        max_version,
        cipher_suites,
        enable_mtls,
        ca_certs,
        disable_system_ca_pool,
    }
}

/// Checks a proxy address: `http://host:port` or `https://host:port`, port required.
fn proxy_address(o: &mut Obj<'_>, key: &'static str, cx: &mut Ctx) -> Option<String> {
    let raw = o.non_empty(key, cx)?;
    let path = o.at(key);
    let Some((scheme, rest)) = raw.split_once("://") else {
        cx.error(
            &path,
            format!("{:?} must contain the protocol and the port (\"http://proxy:3128\")", redact_userinfo(&raw)),
        );
        return None;
    };
    if !matches!(scheme, "http" | "https") {
        cx.error(&path, format!("unsupported proxy scheme {scheme:?} (http or https)"));
        return None;
    }
    // Credentials are allowed in a proxy address (they become Proxy-Authorization).
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    match HostAddr::parse(&format!("{scheme}://{rest}")) {
        Err(m) => {
            cx.error(&path, m);
            None
        }
        Ok(_) if !has_explicit_port(rest) => {
            cx.error(&path, format!("{:?} must contain the port (\"http://proxy:3128\")", redact_userinfo(&raw)));
            None
        }
        Ok(_) => Some(raw),
    }
}

struct RootCtx {
    disable_rest: bool,
    has_root_host: bool,
    output_encoding: OutputEncoding,
    /// Where the health page answers (`None`: `disable_health`).
    health_path: Option<String>,
}

fn endpoint(v: &Value, path: String, root: &RootCtx, cx: &mut Ctx) -> Option<Endpoint> {
    let mut o = Obj::new(v, path, cx)?;
    let ep_path = o.required_string("endpoint", cx);
    let params = ep_path.as_deref().and_then(|p| endpoint_params(p, &o.at("endpoint"), root, cx));
    let method = o.method("method", cx).unwrap_or(Method::GET);
    let timeout = o.positive_duration("timeout", cx);
    let cache_ttl = o.duration("cache_ttl", cx).filter(|d| !d.is_zero());
    let input_query_strings = o.strings("input_query_strings", cx).unwrap_or_default();
    let input_headers = o.strings("input_headers", cx).unwrap_or_default();
    check_header_names(&input_headers, &o.at("input_headers"), cx);
    let output_encoding: Option<OutputEncoding> = o.leaf("output_encoding", cx);
    let mut sequential = false;
    let mut jwt = None;
    let mut bot_detector = None;
    let mut rate_limit = None;
    let mut json_schema = None;
    let mut cel = Vec::new();
    let mut static_response = None;
    let mut flatmap = Vec::new();
    let mut propagated = Vec::new();
    let mut trace_proxy = None;
    let mut trace_attributes = Vec::new();
    let o_backends = o.map.get("backend").and_then(Value::as_array).map_or(0, Vec::len);
    let extra_config = extra_config(&mut o, cx, |ns, v, path, cx| match ns {
        "auth/validator" | "github.com/devopsfaith/krakend-jose/validator" => {
            jwt = jwt_config(Obj::new(v, path.to_string(), cx)?, cx).map(Box::new);
            Some(())
        }
        "security/bot-detector" | "github_com/devopsfaith/krakend-botdetector" => {
            bot_detector = Some(bot_detector_config(Obj::new(v, path.to_string(), cx)?, cx));
            Some(())
        }
        "qos/ratelimit/router" => {
            rate_limit = rate_limit_config(Obj::new(v, path.to_string(), cx)?, params.as_deref(), cx);
            Some(())
        }
        "validation/cel" | "github.com/devopsfaith/krakend-cel" => {
            cel = cel_checks(v, path, cx);
            Some(())
        }
        "telemetry/opentelemetry" => {
            // krakend-otel reads the `proxy` layer here, and the static attributes of
            // `global` (for the gateway's span of the endpoint's requests).
            let mut t = Obj::new(v, path.to_string(), cx)?;
            if let Some(p) = t.object("proxy", cx) {
                trace_proxy = Some(proxy_layer(p, cx));
            }
            if let Some(mut g) = t.object("global", cx) {
                trace_attributes = static_attributes(&mut g, "traces_static_attributes", cx);
                g.take("metrics_static_attributes");
                for key in [
                    "disable_metrics",
                    "disable_traces",
                    "disable_propagation",
                    "report_headers",
                    "skip_headers",
                    "semantic_convention",
                ] {
                    if g.map.contains_key(key) {
                        cx.notice(
                            &g.at(key),
                            "ignored at an endpoint: krakend-otel reads only the root's (the static attributes are read here)",
                        );
                    }
                    g.take(key);
                }
                g.finish(cx);
            }
            if t.map.contains_key("backend") {
                cx.notice(&t.at("backend"), "ignored at an endpoint: krakend-otel reads a backend's own here");
            }
            t.take("backend");
            t.finish(cx);
            Some(())
        }
        "validation/json-schema" | "github.com/devopsfaith/krakend-jsonschema" => {
            // KrakenD serves unchecked when the schema does not compile (a log line).
            match crate::gateway::schema::BodySchema::compile(v) {
                Ok(_) => json_schema = Some(v.clone()),
                Err(e) => cx.error(path, format!("not a JSON schema: {e}")),
            }
            Some(())
        }
        "proxy" => {
            let mut p = Obj::new(v, path.to_string(), cx)?;
            sequential = p.flag("sequential", cx);
            if let Some(s) = p.object("static", cx) {
                static_response = static_config(s, cx);
            }
            if let Some(f) = p.take("flatmap_filter") {
                flatmap = flatmap_config(f, &p.at("flatmap_filter"), cx);
            }
            let count = o_backends;
            propagated = propagated_params(&mut p, count, cx);
            if !propagated.is_empty() && !sequential {
                cx.error(
                    &p.at("sequential_propagated_params"),
                    "needs a sequential proxy (extra_config.proxy.sequential: true)",
                );
            }
            refuse_unimplemented(&mut p, ENDPOINT_PROXY_UNIMPLEMENTED, cx);
            p.finish(cx);
            Some(())
        }
        _ => None,
    });

    let output = output_encoding.unwrap_or(root.output_encoding);
    {
        use crate::gateway::cel::Site;
        let site = if jwt.is_some() { Site::TokenEndpoint } else { Site::Endpoint };
        let streamed = output == OutputEncoding::NoOp;
        cel_compiles(&cel, &join(&o.at("extra_config"), "validation/cel"), (site, streamed), cx);
    }
    let proxy_at = join(&o.at("extra_config"), "proxy");
    if output == OutputEncoding::NoOp && static_response.is_some() {
        cx.error(
            &join(&proxy_at, "static"),
            "a no-op endpoint passes its backend's answer through; static data cannot be merged into it",
        );
    }
    if !flatmap.is_empty() {
        if output == OutputEncoding::NoOp {
            cx.error(
                &join(&proxy_at, "flatmap_filter"),
                "a no-op endpoint passes its backend's answer through undecoded",
            );
        } else if o_backends < 2 {
            cx.error(
                &join(&proxy_at, "flatmap_filter"),
                "on an endpoint with one backend KrakenD does not run it (it runs after merging two or more): \
                 put it on the backend",
            );
        }
    }
    if output == OutputEncoding::NoOp && json_schema.is_some() {
        cx.error(
            &join(&o.at("extra_config"), "validation/json-schema"),
            "a no-op endpoint streams the request body to its backend; the schema needs it whole: \
             use another output_encoding, or validate in the backend",
        );
    }
    let backend_path = o.at("backend");
    let mut backends: Vec<(usize, Backend)> = Vec::new();
    match o.take("backend") {
        None => cx.error(&backend_path, "missing: an endpoint needs at least one backend"),
        Some(Value::Array(items)) if items.is_empty() => {
            cx.error(&backend_path, "empty: an endpoint needs at least one backend");
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let ctx =
                    BackendCtx { root, params: params.as_deref(), sequential, position: i, output, jwt: jwt.is_some() };
                if let Some(b) = backend(item, index(&backend_path, i), &ctx, cx) {
                    backends.push((i, b));
                }
            }
        }
        Some(other) => cx.error(&backend_path, format!("expected an array, found {}", kind(other))),
    }

    // no-op passes one backend's answer through untouched. A no-op backend of an
    // aggregating endpoint is called and adds nothing (see `gateway::exchange`).
    let count = o.map.get("backend").and_then(Value::as_array).map_or(0, Vec::len);
    if output == OutputEncoding::NoOp && count > 1 {
        cx.error(&o.at("output_encoding"), format!("\"no-op\" passes one backend through; this endpoint has {count}"));
    }

    // At most one write backend, and then last of a sequential proxy (seed 003).
    let writes: Vec<(usize, Method)> = backends
        .iter()
        .map(|(i, b)| (*i, b.method.clone().unwrap_or_else(|| method.clone())))
        .filter(|(_, m)| is_write_method(m))
        .collect();
    if writes.len() > 1 {
        let list: Vec<String> = writes.iter().map(|(i, m)| format!("backend[{i}] {m}")).collect();
        cx.error(
            &backend_path,
            format!("at most one backend may use a write method; found {}: {}", writes.len(), list.join(", ")),
        );
    } else if let Some((i, m)) = writes.first()
        && count > 1
        && (!sequential || *i + 1 != count)
    {
        cx.error(
            &index(&backend_path, *i),
            format!(
                "uses {m}: a write backend must be the last one of a sequential proxy \
                 (extra_config.proxy.sequential: true)"
            ),
        );
    }

    // lura keeps `Resp0` only from a `no-op` backend, and only plugins and Lua read
    // these parameters there; here a later backend's CEL checks do.
    let list_at = join(&proxy_at, "sequential_propagated_params");
    for (i, p) in &propagated {
        let n = p.backend;
        if p.path.is_empty() && backends.iter().any(|(j, b)| *j == n && b.encoding != Encoding::NoOp) {
            cx.warn(
                &index(&list_at, *i),
                format!("sets nothing: the whole answer of backend[{n}] is kept only from a no-op backend (as lura)"),
            );
        } else if !backends.iter().any(|(j, b)| *j > n && !b.cel.is_empty()) {
            cx.warn(
                &index(&list_at, *i),
                format!(
                    "nothing reads it: no backend after backend[{n}] has validation/cel checks (lura hands it to Lua \
                     and plugins)"
                ),
            );
        }
    }
    o.finish(cx);
    // An endpoint whose path was refused stays out of the router: one error, not two.
    params?;
    let endpoint = ep_path?;
    Some(Endpoint {
        endpoint,
        method,
        backend: backends.into_iter().map(|(_, b)| b).collect(),
        timeout,
        cache_ttl,
        input_query_strings,
        input_headers,
        output_encoding,
        sequential,
        jwt,
        bot_detector,
        rate_limit,
        json_schema,
        cel,
        static_response,
        flatmap,
        propagated_params: propagated.into_iter().map(|(_, p)| p).collect(),
        trace_proxy,
        trace_attributes,
        extra_config,
    })
}

/// `extra_config."validation/cel"`: a list of `{"check_expr": "..."}`. Compiled by
/// [`cel_compiles`] once it is known where it stands.
fn cel_checks(v: &Value, path: &str, cx: &mut Ctx) -> Vec<String> {
    let Value::Array(items) = v else {
        cx.error(path, format!("expected an array of {{\"check_expr\": ...}}, found {}", kind(v)));
        return Vec::new();
    };
    let mut list = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(mut o) = Obj::new(item, index(path, i), cx) else { continue };
        if let Some(expr) = o.required_string("check_expr", cx) {
            list.push(expr);
        }
        // KrakenD reads it and does nothing with it.
        if o.asks("mod_expr") {
            cx.notice(&o.at("mod_expr"), "not used (KrakenD does not evaluate it either)");
        }
        o.finish(cx);
    }
    list
}

/// Compiles a `validation/cel` list at `path` written at `site` (whose answer is
/// `streamed` or not), so that `check` names the expression that cannot be served.
fn cel_compiles(list: &[String], path: &str, (site, streamed): (crate::gateway::cel::Site, bool), cx: &mut Ctx) {
    if !list.is_empty()
        && let Err((i, why)) = crate::gateway::cel::Phases::compile(list, site, streamed)
    {
        cx.error(&join(&index(path, i), "check_expr"), why);
    }
}

/// Checks an endpoint path and returns its parameter names.
fn endpoint_params(p: &str, path: &str, root: &RootCtx, cx: &mut Ctx) -> Option<Vec<String>> {
    if !p.starts_with('/') {
        cx.error(path, format!("{p:?} must start with \"/\""));
        return None;
    }
    if p.contains(['?', '#']) {
        cx.error(path, format!("{p:?} must not contain \"?\" or \"#\""));
        return None;
    }
    if let Some(r) = RESERVED.iter().find(|r| p == **r || p.strip_prefix(**r).is_some_and(|t| t.starts_with('/'))) {
        cx.error(path, format!("{p:?} is under {r}, which the gateway serves itself"));
        return None;
    }
    if root.health_path.as_deref() == Some(p) {
        cx.error(path, format!("{p:?} is the health page's path (extra_config.router.health_path)"));
        return None;
    }
    let pieces = match template::pieces(p) {
        Ok(pieces) => pieces,
        Err(m) => {
            cx.error(path, m);
            return None;
        }
    };
    let mut names: Vec<String> = Vec::new();
    let mut ok = true;
    for piece in &pieces {
        if let Piece::Var(name) = piece {
            if !template::is_param_name(name) {
                cx.error(path, format!("invalid parameter name {{{name}}} (letters, digits, \"_\" and \"-\")"));
                ok = false;
            } else if names.iter().any(|n| n == name) {
                cx.error(path, format!("parameter {{{name}}} appears twice"));
                ok = false;
            } else {
                names.push((*name).to_string());
            }
        }
    }
    if !root.disable_rest
        && let Some(name) = template::first_partial_segment_var(&pieces)
    {
        cx.error(
            path,
            format!("{{{name}}} must fill a whole path segment (set \"disable_rest\": true to allow it inside one)"),
        );
        ok = false;
    }
    ok.then_some(names)
}

fn check_header_names(names: &[String], path: &str, cx: &mut Ctx) {
    for (i, name) in names.iter().enumerate() {
        if name != "*" && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            cx.error(&index(path, i), format!("invalid header name {name:?}"));
        }
    }
}

struct BackendCtx<'a> {
    root: &'a RootCtx,
    /// The endpoint's parameters; `None` when the endpoint path itself was invalid.
    params: Option<&'a [String]>,
    sequential: bool,
    position: usize,
    /// The endpoint's output encoding: a `no-op` endpoint's backend is `no-op` too.
    output: OutputEncoding,
    /// The endpoint checks tokens (`auth/validator`): `{JWT.claim}` has a value.
    jwt: bool,
}

fn backend(v: &Value, path: String, ctx: &BackendCtx<'_>, cx: &mut Ctx) -> Option<Backend> {
    let mut o = Obj::new(v, path, cx)?;
    let disable_host_sanitize = o.flag("disable_host_sanitize", cx);
    let host_declared = match o.map.get("host") {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    let host = hosts(&mut o, "host", disable_host_sanitize, cx).unwrap_or_default();
    if !host_declared && !ctx.root.has_root_host {
        cx.error(&o.at("host"), "no host for this backend, and no root-level \"host\" to fall back on");
    }
    let url_pattern = o.required_string("url_pattern", cx);
    if let Some(u) = &url_pattern {
        check_url_pattern(u, &o.at("url_pattern"), ctx, cx);
    }
    let method = o.method("method", cx);
    let said = o.map.get("encoding").and_then(Value::as_str).unwrap_or_default().to_string();
    let encoding = match (o.leaf("encoding", cx), ctx.output) {
        // As lura does: a no-op endpoint passes its backend through, whatever its
        // encoding says; one that says something else is told so.
        (Some(e), OutputEncoding::NoOp) if e != Encoding::NoOp => {
            cx.notice(
                &o.at("encoding"),
                format!("{said:?} is not used: the endpoint's \"no-op\" output passes this backend through undecoded"),
            );
            Encoding::NoOp
        }
        (_, OutputEncoding::NoOp) => Encoding::NoOp,
        (e, _) => e.unwrap_or(Encoding::Json),
    };
    let is_collection = o.flag("is_collection", cx);
    let target = o.non_empty("target", cx);
    let allow = o.strings("allow", cx).unwrap_or_default();
    let deny = o.strings("deny", cx).unwrap_or_default();
    if !allow.is_empty() && !deny.is_empty() {
        cx.warn(&o.at("deny"), "ignored: allow and deny are both set, and allow wins");
    }
    let mut mapping = Vec::new();
    if let Some(m) = o.object("mapping", cx) {
        for (from, to) in m.map {
            if let Some(to) = leaf::<String>(to, &join(&m.path, from), cx) {
                mapping.push((from.clone(), to));
            }
        }
    }
    let group = o.non_empty("group", cx);
    let sd = o.leaf("sd", cx).unwrap_or(ServiceDiscovery::Static);
    let input_headers = o.strings("input_headers", cx);
    if let Some(h) = &input_headers {
        check_header_names(h, &o.at("input_headers"), cx);
    }
    let input_query_strings = o.strings("input_query_strings", cx);

    let mut http = BackendHttp::default();
    let mut http_client = None;
    let mut plugin = None;
    let mut rate_limit = None;
    let mut cel = Vec::new();
    let mut flatmap = Vec::new();
    let mut circuit_breaker = None;
    let mut martian = None;
    let mut trace_backend = None;
    let extra_config = extra_config(&mut o, cx, |ns, v, path, cx| {
        if !matches!(
            ns,
            "backend/http" | "backend/http/client" | "plugin/http-client" | "proxy" | "qos/ratelimit/proxy"
        ) {
            match ns {
                "validation/cel" | "github.com/devopsfaith/krakend-cel" => {
                    cel = cel_checks(v, path, cx);
                    cel_compiles(&cel, path, (crate::gateway::cel::Site::Backend, encoding == Encoding::NoOp), cx);
                }
                "qos/circuit-breaker" | "github.com/devopsfaith/krakend-circuitbreaker/gobreaker" => {
                    if let Some(o) = Obj::new(v, path.to_string(), cx) {
                        circuit_breaker = breaker_config(o, cx);
                    }
                }
                "modifier/martian" | "github.com/devopsfaith/krakend-martian" => {
                    match crate::gateway::martian::Martian::parse(v, path) {
                        Ok(_) => martian = Some(v.clone()),
                        Err((at, why)) => cx.error(&at, why),
                    }
                }
                "telemetry/opentelemetry" => {
                    // krakend-otel reads only the `backend` layer here.
                    if let Some(mut t) = Obj::new(v, path.to_string(), cx) {
                        if let Some(b) = t.object("backend", cx) {
                            trace_backend = Some(backend_layer(b, cx));
                        }
                        for key in ["global", "proxy"] {
                            if t.map.contains_key(key) {
                                cx.notice(&t.at(key), "ignored at a backend: krakend-otel reads only \"backend\" here");
                            }
                            t.take(key);
                        }
                        t.finish(cx);
                    }
                }
                _ => return None,
            }
            return Some(());
        }
        let Some(mut e) = Obj::new(v, path.to_string(), cx) else { return Some(()) };
        match ns {
            "qos/ratelimit/proxy" => rate_limit = proxy_rate_limit(e, cx),
            "proxy" => {
                if let Some(f) = e.take("flatmap_filter") {
                    flatmap = flatmap_config(f, &e.at("flatmap_filter"), cx);
                    if !flatmap.is_empty() && encoding == Encoding::NoOp {
                        cx.error(&e.at("flatmap_filter"), "a no-op backend's answer is passed on undecoded");
                    }
                }
                refuse_unimplemented(&mut e, BACKEND_PROXY_UNIMPLEMENTED, cx);
                e.finish(cx);
            }
            "backend/http" => {
                http.return_error_code = e.flag("return_error_code", cx);
                http.return_error_details = e.non_empty("return_error_details", cx);
                e.finish(cx);
            }
            "backend/http/client" => {
                let no_redirect = e.flag("no_redirect", cx);
                let client_tls = e.object("client_tls", cx).map(|t| client_tls(t, cx));
                let proxy_address = proxy_address(&mut e, "proxy_address", cx);
                http_client = Some(HttpClientOptions { no_redirect, client_tls, proxy_address });
                e.finish(cx);
            }
            _ => {
                // plugin/http-client. Every key but `name` belongs to the plugin, so
                // none is linted; `proxy_address` is read for the built-in http-proxy.
                let name = e.required_string("name", cx).unwrap_or_default();
                let proxy_address = proxy_address(&mut e, "proxy_address", cx);
                if name == "http-proxy" && e.map.get("proxy_address").is_none_or(Value::is_null) {
                    cx.error(&e.at("proxy_address"), "missing: the http-proxy plugin needs a proxy_address");
                }
                let upstreams = plugin_upstreams(&mut e, &name, cx);
                let options = e.map.iter().filter(|(k, _)| *k != "name").map(|(k, v)| (k.clone(), v.clone())).collect();
                if !name.is_empty() {
                    plugin = Some(ClientPlugin { name, proxy_address, options, upstreams });
                }
            }
        }
        Some(())
    });
    if !flatmap.is_empty() {
        for (key, set) in [("allow", !allow.is_empty()), ("deny", !deny.is_empty()), ("mapping", !mapping.is_empty())] {
            if set {
                cx.warn(
                    &o.at(key),
                    "ignored: the backend's proxy.flatmap_filter takes the place of allow, deny and mapping",
                );
            }
        }
    }
    o.finish(cx);
    Some(Backend {
        host,
        url_pattern: url_pattern?,
        method,
        encoding,
        is_collection,
        target,
        allow,
        deny,
        mapping,
        group,
        sd,
        disable_host_sanitize,
        input_headers,
        input_query_strings,
        http,
        http_client,
        plugin,
        rate_limit,
        cel,
        flatmap,
        circuit_breaker,
        martian,
        trace_backend,
        extra_config,
    })
}

/// `extra_config."qos/circuit-breaker"`: seconds as whole numbers, as
/// krakend-circuitbreaker reads them (it takes a string such as `"10s"` as 0 without a
/// word; here that is an error). With every field 0 it builds no breaker, and neither
/// does Sluice (a warning says so).
fn breaker_config(mut o: Obj<'_>, cx: &mut Ctx) -> Option<BreakerConfig> {
    let here = o.path.clone();
    let seconds = |o: &mut Obj<'_>, key: &'static str, cx: &mut Ctx| -> u64 {
        match o.take(key) {
            Some(Value::String(s)) => {
                cx.error(
                    &o.at(key),
                    format!("expected a whole number of seconds, found the string {s:?} (KrakenD would read it as 0)"),
                );
                0
            }
            Some(_) => o.uint(key, 0, 100 * 365 * 86_400, cx).unwrap_or(0),
            None => 0,
        }
    };
    let interval = seconds(&mut o, "interval", cx);
    let timeout = seconds(&mut o, "timeout", cx);
    let max_errors = o.uint("max_errors", 0, 65_000, cx).unwrap_or(0);
    let name = o.string("name", cx).unwrap_or_default();
    let log_status_change = o.flag("log_status_change", cx);
    o.finish(cx);
    if interval == 0 && timeout == 0 && max_errors == 0 && name.is_empty() && !log_status_change {
        cx.warn(&here, "sets nothing: KrakenD builds no breaker, and neither does Sluice");
        return None;
    }
    Some(BreakerConfig {
        name,
        interval: Duration::from_secs(interval),
        timeout: Duration::from_secs(timeout),
        max_errors: max_errors as u32,
        log_status_change,
    })
}

/// `extra_config."qos/ratelimit/proxy"` on a backend: one bucket for every call to it.
fn proxy_rate_limit(mut o: Obj<'_>, cx: &mut Ctx) -> Option<ProxyRateLimit> {
    let here = o.path.clone();
    let max_rate = rate(&mut o, "max_rate", cx);
    let capacity = o.uint("capacity", 0, u64::from(u32::MAX), cx).unwrap_or(0);
    // No floor here, as KrakenD; but none at all would divide by zero.
    let every = o.positive_duration("every", cx).unwrap_or(Duration::from_secs(1));
    o.finish(cx);
    if max_rate == 0.0 {
        cx.error(&here, "sets no limit: give max_rate");
        return None;
    }
    let max_rate = max_rate / every.as_secs_f64();
    Some(ProxyRateLimit { max_rate, capacity: if capacity > 0 { capacity } else { (max_rate as u64).max(1) } })
}

fn check_url_pattern(u: &str, path: &str, ctx: &BackendCtx<'_>, cx: &mut Ctx) {
    if !u.starts_with('/') {
        cx.error(path, format!("{u:?} must start with \"/\""));
        return;
    }
    if u.contains('#') || u.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        cx.error(path, format!("{u:?} must not contain \"#\", spaces or control characters"));
        return;
    }
    let (path_part, _query) = u.split_once('?').unwrap_or((u, ""));
    let pieces = match template::pieces(u) {
        Ok(p) => p,
        Err(m) => {
            cx.error(path, m);
            return;
        }
    };
    if !ctx.root.disable_rest
        && let Ok(path_pieces) = template::pieces(path_part)
        && let Some(name) = template::first_var_not_starting_a_segment(&path_pieces)
    {
        cx.error(
            path,
            format!(
                "{{{name}}} must start a path segment, right after \"/\" (KrakenD would send it as written; set \
                 \"disable_rest\": true to allow it anywhere)"
            ),
        );
    }
    let mut seen = HashSet::new();
    for piece in pieces {
        let Piece::Var(name) = piece else { continue };
        if !seen.insert(name) {
            continue;
        }
        match Placeholder::classify(name) {
            Placeholder::Param(p) => {
                if let Some(params) = ctx.params
                    && !params.iter().any(|x| x == p)
                {
                    let declared = if params.is_empty() {
                        "the endpoint declares no parameters".to_string()
                    } else {
                        let names: Vec<String> = params.iter().map(|n| format!("{{{n}}}")).collect();
                        format!("the endpoint declares {}", names.join(", "))
                    };
                    cx.error(path, format!("{{{p}}} is not a parameter of the endpoint ({declared})"));
                }
            }
            Placeholder::InputHeader(h) => {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    cx.error(path, format!("{{input_headers.{h}}}: invalid header name"));
                }
            }
            Placeholder::Jwt(claim) => {
                if !ctx.jwt {
                    cx.error(path, format!("{{JWT.{claim}}} needs the endpoint's auth/validator (a token to read)"));
                }
            }
            Placeholder::Response { index: n, .. } => {
                if !ctx.sequential {
                    cx.error(
                        path,
                        format!("{{{name}}} needs a sequential proxy (extra_config.proxy.sequential: true)"),
                    );
                } else if n >= ctx.position {
                    cx.error(
                        path,
                        format!(
                            "{{{name}}} refers to backend[{n}], which is not called before backend[{}]",
                            ctx.position
                        ),
                    );
                }
            }
        }
    }
}

/// Why the binary could not post to collector `e`: its `host` is read as a backend's
/// (the binary posts through a loopback gateway whose backend host is
/// [`OtlpExporter::origin`]), so a name or IP address with `http://`, `https://` or no
/// scheme, and no credentials, path, query or port (`port` gives it).
fn collector_host(e: &crate::ops::trace::OtlpExporter) -> Result<(), String> {
    if let Some((scheme, _)) = e.host.split_once("://")
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
    {
        return Err(format!("a collector is reached over http:// or https://, not {scheme:?}"));
    }
    let base = e.base();
    if let Err(m) = HostAddr::parse(&base) {
        return Err(String::from(m).replace(": put it in url_pattern", ": the spans go to /v1/traces of the host"));
    }
    if has_explicit_port(base.split_once("://").map_or(base.as_str(), |(_, a)| a)) {
        return Err(format!("a host must not have a port ({:?}): \"port\" gives it", e.host));
    }
    HostAddr::parse(&e.origin()).map(drop).map_err(String::from)
}

/// `extra_config."telemetry/opentelemetry"` at the root, as krakend-otel reads it:
/// its defaults (every layer traced, `trace_sample_rate` 1, KrakenD's skip paths), the
/// OTLP exporters (names unique), and a notice for each part Sluice does not make
/// (OTLP metrics, gRPC exporters, Prometheus exporters, header reporting, read-payload
/// spans, connection details). `None`, with a notice, when no exporter takes traces.
fn otel_config(mut o: Obj<'_>, name: Option<&str>, cx: &mut Ctx) -> Option<crate::ops::trace::TraceSettings> {
    use crate::ops::trace::{OtlpExporter, TraceSettings};
    let service_name = o
        .non_empty("service_name", cx)
        .or_else(|| name.filter(|n| !n.is_empty()).map(str::to_string))
        .unwrap_or_else(|| "KrakenD".to_string());
    let service_version = o.string("service_version", cx).unwrap_or_default();
    let deploy_env = o.string("deploy_env", cx).unwrap_or_default();
    let rate_at = o.at("trace_sample_rate");
    let sample_rate = match o.take("trace_sample_rate") {
        None => 1.0,
        Some(v) => match v.as_f64() {
            Some(r) => {
                if r <= 0.0 {
                    cx.notice(&rate_at, "0 or below samples every trace, as KrakenD does (it means \"not set\")");
                }
                r
            }
            None => {
                cx.error(&rate_at, format!("expected a number from 0 to 1, found {}", kind(v)));
                1.0
            }
        },
    };
    let skip_paths = o
        .strings("skip_paths", cx)
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| ["/__health", "/__debug/", "/__echo/", "/__stats/"].map(String::from).to_vec());
    if o.asks("metric_reporting_period") {
        cx.notice(&o.at("metric_reporting_period"), "OTLP metrics are not sent by Sluice: ignored");
    }
    let mut exporters = Vec::new();
    let mut names: Vec<String> = Vec::new();
    if let Some(mut e) = o.object("exporters", cx) {
        let otlp_at = e.at("otlp");
        if let Some(list) = e.take("otlp") {
            match list {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let Some(mut x) = Obj::new(item, index(&otlp_at, i), cx) else { continue };
                        let name = x.string("name", cx).unwrap_or_default();
                        if names.contains(&name) {
                            cx.error(&x.at("name"), format!("OTLP exporter with duplicate name: {name:?}"));
                        }
                        names.push(name.clone());
                        let host = x.required_string("host", cx).unwrap_or_default();
                        let port = x.uint("port", 1, 65535, cx).map_or(0, |p| p as u16);
                        if x.map.get("port").is_none() {
                            cx.error(&x.at("port"), "missing (required)");
                        }
                        let use_http = x.flag("use_http", cx);
                        let traces = !x.flag("disable_traces", cx);
                        let metrics = !x.flag("disable_metrics", cx);
                        x.take("custom_metric_reporting_period");
                        if traces && !use_http {
                            cx.notice(
                                &x.at("use_http"),
                                "OTLP over gRPC is not sent by Sluice: this exporter gets no spans; set \"use_http\": \
                                 true and the collector's OTLP/HTTP port (4318 by default)",
                            );
                        }
                        if metrics {
                            cx.notice(
                                &x.at("disable_metrics"),
                                "OTLP metrics are not sent by Sluice (traces are): the admin listener's \
                                 /stats/prometheus has the counters",
                            );
                        }
                        let exporter = OtlpExporter { name, host, port, use_http, traces };
                        if exporter.sends_traces()
                            && !exporter.host.is_empty()
                            && let Err(why) = collector_host(&exporter)
                        {
                            cx.error(&x.at("host"), why);
                        }
                        x.finish(cx);
                        exporters.push(exporter);
                    }
                }
                other => cx.error(&otlp_at, format!("expected an array of exporters, found {}", kind(other))),
            }
        }
        let prom_at = e.at("prometheus");
        if let Some(list) = e.take("prometheus") {
            match list {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let name = item.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
                        if names.contains(&name) {
                            cx.error(&index(&prom_at, i), format!("prometheus exporter with duplicate name: {name:?}"));
                        }
                        names.push(name);
                        cx.notice(
                            &index(&prom_at, i),
                            "not started by Sluice: the admin listener's /stats/prometheus serves the counters",
                        );
                    }
                }
                other => cx.error(&prom_at, format!("expected an array of exporters, found {}", kind(other))),
            }
        }
        e.finish(cx);
    }
    let (mut global, mut proxy, mut backend) = (
        crate::ops::trace::GlobalLayer { traces: true, propagation: true, attributes: Vec::new() },
        crate::ops::trace::ProxyLayer { traces: true, attributes: Vec::new() },
        crate::ops::trace::BackendLayer { stage: true, round_trip: true, attributes: Vec::new() },
    );
    if let Some(mut l) = o.object("layers", cx) {
        if let Some(mut g) = l.object("global", cx) {
            global.traces = !g.flag("disable_traces", cx);
            global.propagation = !g.flag("disable_propagation", cx);
            global.attributes = static_attributes(&mut g, "traces_static_attributes", cx);
            otel_unsupported(&mut g, cx);
            g.finish(cx);
        }
        if let Some(p) = l.object("proxy", cx) {
            proxy = proxy_layer(p, cx);
        }
        if let Some(b) = l.object("backend", cx) {
            backend = backend_layer(b, cx);
        }
        l.finish(cx);
    }
    let here = o.path.clone();
    o.finish(cx);
    if !exporters.iter().any(OtlpExporter::sends_traces) {
        cx.notice(&here, "no OTLP exporter over HTTP takes traces: no spans are made");
        return None;
    }
    Some(TraceSettings {
        service_name,
        service_version,
        deploy_env,
        sample_rate,
        skip_paths,
        exporters,
        global,
        proxy,
        backend,
    })
}

/// krakend-otel's `[{"key": ..., "value": ...}]` span attributes.
fn static_attributes(o: &mut Obj<'_>, key: &'static str, cx: &mut Ctx) -> Vec<crate::ops::trace::StaticAttribute> {
    let at = o.at(key);
    let Some(v) = o.take(key) else { return Vec::new() };
    let Value::Array(items) = v else {
        cx.error(&at, format!("expected an array of {{\"key\", \"value\"}} objects, found {}", kind(v)));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(mut kv) = Obj::new(item, index(&at, i), cx) else { continue };
        let key = kv.string("key", cx).unwrap_or_default();
        let value = kv.string("value", cx).unwrap_or_default();
        kv.finish(cx);
        out.push((key, value));
    }
    out
}

/// What a layer may ask that Sluice does not put on spans: said, not ignored in silence.
fn otel_unsupported(o: &mut Obj<'_>, cx: &mut Ctx) {
    for (key, why) in [
        ("report_headers", "header values are not put on spans by Sluice"),
        ("semantic_convention", "Sluice names attributes as krakend-otel's default does"),
    ] {
        if o.asks(key) {
            cx.notice(&o.at(key), format!("not supported: {why}; ignored"));
        }
    }
    // Metrics are not sent (said at the exporter); what only shapes them is read.
    for key in ["disable_metrics", "metrics_static_attributes", "skip_headers"] {
        o.take(key);
    }
}

/// `layers.proxy` (or an endpoint's own).
fn proxy_layer(mut p: Obj<'_>, cx: &mut Ctx) -> crate::ops::trace::ProxyLayer {
    let traces = !p.flag("disable_traces", cx);
    let attributes = static_attributes(&mut p, "traces_static_attributes", cx);
    otel_unsupported(&mut p, cx);
    p.finish(cx);
    crate::ops::trace::ProxyLayer { traces, attributes }
}

/// `layers.backend` (or a backend's own): its `traces` part, krakend-otel's defaults
/// when absent (stage and round trip on).
fn backend_layer(mut b: Obj<'_>, cx: &mut Ctx) -> crate::ops::trace::BackendLayer {
    let mut layer = crate::ops::trace::BackendLayer { stage: true, round_trip: true, attributes: Vec::new() };
    if let Some(mut m) = b.object("metrics", cx) {
        for key in ["disable_stage", "round_trip", "read_payload", "detailed_connection", "static_attributes"] {
            m.take(key);
        }
        m.finish(cx);
    }
    if let Some(mut t) = b.object("traces", cx) {
        layer.stage = !t.flag("disable_stage", cx);
        layer.round_trip = t.flag("round_trip", cx);
        layer.attributes = static_attributes(&mut t, "static_attributes", cx);
        for (key, why) in [
            ("read_payload", "Sluice makes no span for reading a response body"),
            ("detailed_connection", "connection timings are not put on spans by Sluice"),
            ("report_headers", "header values are not put on spans by Sluice"),
        ] {
            if t.asks(key) {
                cx.notice(&t.at(key), format!("not supported: {why}; ignored"));
            }
        }
        t.take("skip_headers");
        t.finish(cx);
    }
    b.finish(cx);
    layer
}
