//! KrakenD v3 configuration: the typed model, its defaults, and validation.
//!
//! [`parse`] turns the text of a `krakend.json` into a [`Config`], or into every error
//! it finds at once, each with a JSON path (`endpoints[2].backend[0].host[1]: ...`).
//! Leaf values are read with serde; objects are walked field by field so that one bad
//! value does not hide the next. Unknown keys are warnings (shown by `sluice check
//! --lint`), never errors. A namespace Sluice does not implement is refused when it
//! enforces or changes what is served (`auth/*`, `security/*` but CORS and the bot detector, CEL response checks,
//! `qos/*`, `modifier/*`, ...: serving without it would be a hole) and is a notice
//! otherwise (`telemetry/*`, `documentation/*`, unknown ones), said by `check` and at
//! `run`.
//!
//! Every default is written on its field. Where Sluice's default differs from
//! KrakenD's, the field says so and why.

mod decode;
pub mod duration;
pub mod net;
pub mod template;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::Method;
use serde::Deserialize;
use serde_json::{Map, Value};

pub(crate) use decode::join;
pub use duration::parse_duration;
pub(crate) use net::has_explicit_port;
pub use net::{HostAddr, IpNet, Scheme, percent_decode, redact_userinfo};

/// One problem found in a configuration, located by its JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// `endpoints[2].backend[0].host[1]`; empty for the document itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// One value a configuration cannot take, and why (a duration, a host, a network, a
/// proxy URL): the decoder reports it as a [`Diagnostic`] at the value's JSON path,
/// and the configuration is refused (`sluice check` exits 1). The reason names the
/// value, never a secret in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue(pub String);

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadValue {}

impl From<String> for BadValue {
    fn from(reason: String) -> BadValue {
        BadValue(reason)
    }
}

/// The reason, for a [`Diagnostic`]'s message.
impl From<BadValue> for String {
    fn from(bad: BadValue) -> String {
        bad.0
    }
}

impl From<&str> for BadValue {
    fn from(reason: &str) -> BadValue {
        BadValue(reason.to_string())
    }
}

impl PartialEq<&str> for BadValue {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Envoy's circuit breaker thresholds (its defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// Publish `remaining_*` gauges (how far each breaker is from opening).
    pub track_remaining: bool,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            track_remaining: false,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The text is not JSON. Line and column are 1-based.
    Syntax { line: usize, column: usize, message: String },
    /// The JSON is not a valid Sluice configuration: every problem found, in document order.
    Invalid(Vec<Diagnostic>),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Syntax { line, column, message } => {
                write!(f, "invalid JSON at line {line}, column {column}: {message}")
            }
            ConfigError::Invalid(diags) => {
                for (i, d) in diags.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{d}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// A configuration that passed validation, with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub config: Config,
    /// Unknown keys: reported by `sluice check --lint`.
    pub warnings: Vec<Diagnostic>,
    /// What is left out without weakening what Sluice enforces (namespaces that only
    /// observe, or that it does not know): said by `sluice check` and at `sluice run`.
    pub notices: Vec<Diagnostic>,
}

/// Parses and validates the text of a KrakenD v3 configuration file.
pub fn parse(text: &str) -> Result<Parsed, ConfigError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::Invalid(vec![Diagnostic { path: String::new(), message: too_large(text.len()) }]));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
        line: e.line(),
        column: e.column(),
        message: syntax_message(&e),
    })?;
    decode::decode(&value)
}

/// The largest configuration read: 8 MiB. A 6.5 MB file of 34,000 endpoints checks in
/// 0.5 s and 260 MB; the limit keeps a wrong file (`-c /dev/zero`, a log) from taking
/// the machine's memory.
pub const MAX_CONFIG_BYTES: usize = 8 << 20;

/// The message for a file over [`MAX_CONFIG_BYTES`] (`size`: what was read, at least).
pub fn too_large(size: usize) -> String {
    format!("the configuration is larger than {} MiB ({size} bytes or more): refused", MAX_CONFIG_BYTES >> 20)
}

/// serde_json's message without its trailing " at line L column C" (we print our own).
fn syntax_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    }
}

/// The root of a KrakenD v3 file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Must be 3. Required.
    pub version: u64,
    /// Free-form name of the gateway. Default: none.
    pub name: Option<String>,
    /// Port to listen on. Default: 8080.
    pub port: u16,
    /// Address to listen on. Default: `0.0.0.0` (all interfaces), as KrakenD.
    pub listen_ip: IpAddr,
    /// Hosts used by backends that declare none. Default: empty.
    pub host: Vec<String>,
    /// Default endpoint timeout. Default: 2s.
    pub timeout: Duration,
    /// Default `Cache-Control: public, max-age` for complete responses. Default: none.
    pub cache_ttl: Option<Duration>,
    /// Default output encoding of endpoints. Default: `json`.
    pub output_encoding: OutputEncoding,
    /// Allows `{placeholders}` inside a path segment (`/file.{ext}`). Default: false.
    pub disable_rest: bool,
    /// Skips certificate verification of every HTTPS backend. Default: false.
    pub allow_insecure_connections: bool,
    /// TLS settings for every backend. Default: system roots, TLS 1.2 and 1.3.
    pub client_tls: Option<ClientTls>,
    /// The gateway's own listener over TLS (root `tls`). Default: plain HTTP.
    pub tls: Option<ServerTls>,
    /// Where HTTP client plugins are loaded from. Default: no plugins.
    pub plugin: Option<PluginLoader>,
    /// Serves `/__debug/*` (a backend that logs and answers `{"message":"pong"}`). Default: false.
    pub debug_endpoint: bool,
    /// Serves `/__echo/*` (a backend that answers the request it got). Default: false.
    pub echo_endpoint: bool,
    /// Time to read a whole request, head and body. Default: 30s.
    /// KrakenD's 0 means unlimited; Sluice picks a bound so no client can hold a
    /// connection forever. `"0s"` still means unlimited.
    pub read_timeout: Duration,
    /// Time to write a response. Default: 30s (KrakenD: unlimited; `"0s"` means that).
    pub write_timeout: Duration,
    /// Time a keep-alive connection may sit idle between requests. Default: 60s
    /// (KrakenD: unlimited; `"0s"` means that).
    pub idle_timeout: Duration,
    /// Time to receive a request head: the slowloris guard. Default: 10s
    /// (KrakenD: unlimited; `"0s"` means that).
    pub read_header_timeout: Duration,
    /// On SIGTERM/SIGINT, the longest wait for requests in flight. Default: 10s
    /// (`sluice run --max-shutdown-wait` overrides it).
    pub max_shutdown_wait_time: Duration,
    /// Largest request head accepted (request line plus headers), in bytes; more is
    /// answered 431. Default: 65,536 (KrakenD: 1 MiB, Go's default: a smaller bound
    /// costs less memory per connection and no real client needs more). 1,024 to 16 MiB.
    pub max_header_bytes: usize,
    /// Idle keep-alive connections kept per backend host (per shard). Default: 250.
    pub max_idle_connections_per_host: usize,
    /// Backends are not asked for gzip (a gzip or deflate answer is still inflated
    /// before decoding; see `call::coding`). Default: false.
    pub disable_compression: bool,
    /// `extra_config."router"`: client-facing router options.
    pub router: RouterOptions,
    /// `extra_config."sluice/forward-proxy"`: the dynamic forward proxy listener.
    /// Default: none.
    pub forward_proxy: Option<ForwardProxy>,
    /// `extra_config."sluice/admin"`: the admin listener (`/stats`, `/config_dump`,
    /// `/ready`). Default: none; `{}` listens on 127.0.0.1:9901 (Envoy's port).
    pub admin: Option<SocketAddr>,
    /// `extra_config."sluice/dns"`: where `"sd": "dns"` backends' SRV queries go.
    /// Default: `/etc/resolv.conf`'s nameservers and options.
    pub dns: DnsSettings,
    /// `extra_config."telemetry/logging"`: the log's level, format and destinations
    /// (see [`crate::ops::logging`]). Default: none (Sluice's own lines on stderr).
    pub logging: Option<crate::ops::logging::Logging>,
    /// `extra_config."telemetry/opentelemetry"`: traces, when an OTLP exporter over
    /// HTTP takes them (see [`crate::ops::trace`]). Default: none.
    pub tracing: Option<crate::ops::trace::TraceSettings>,
    /// `extra_config."security/cors"`: CORS for every request, answered before
    /// routing (see [`crate::gateway::cors`]). Default: none.
    pub cors: Option<CorsConfig>,
    /// `extra_config."security/bot-detector"` at the root: for every request but the
    /// health page's (see [`crate::gateway::bots`]). Default: none.
    pub bot_detector: Option<BotDetectorConfig>,
    /// The raw `extra_config` object, for namespaces read elsewhere.
    pub extra_config: Map<String, Value>,
    pub endpoints: Vec<Endpoint>,
}

/// `extra_config."security/cors"` as KrakenD reads it (krakend-cors on rs/cors): an
/// empty object turns CORS on with every default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    /// Origins allowed (`*` for any, one `*` inside a pattern for any run of
    /// characters). Default: `["*"]`.
    pub allow_origins: Vec<String>,
    /// Methods allowed, compared as written. Default: `GET`, `POST`, `HEAD`.
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for. Default: `["*"]` (any).
    pub allow_headers: Vec<String>,
    /// Response headers the browser lets scripts read. Default: none.
    pub expose_headers: Vec<String>,
    /// `Access-Control-Allow-Credentials: true`. Default: false.
    pub allow_credentials: bool,
    /// Answers a private-network preflight. Default: false.
    pub allow_private_network: bool,
    /// A preflight goes on to routing with its CORS headers instead of being answered.
    /// Default: false.
    pub options_passthrough: bool,
    /// The status of an answered preflight. Default: 204.
    pub options_success_status: u16,
    /// `Access-Control-Max-Age`, whole seconds (none when under a second). Default: none.
    pub max_age: Duration,
    /// Logs why each CORS request was or was not allowed (`sluice::cors`, debug).
    pub debug: bool,
}

/// `extra_config."sluice/dns"`: the resolver `"sd": "dns"` asks for SRV records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSettings {
    /// Nameservers asked in order (`"ip"` on port 53, or `"ip:port"`, `"[v6]:port"`).
    /// Default: none listed, `/etc/resolv.conf`'s.
    pub nameservers: Vec<SocketAddr>,
    /// How long one try waits for its answer. Default: resolv.conf's `timeout:` (5s).
    pub timeout: Option<Duration>,
    /// Rounds over the nameservers. Default: resolv.conf's `attempts:` (2).
    pub attempts: Option<u32>,
}

/// `extra_config."sluice/forward-proxy"`: a dynamic forward proxy (Envoy's, as Gloo
/// configures it) on its own listener. Clients use it as an HTTP proxy (`curl -x`,
/// `HTTP_PROXY`); each request goes "blindly" to the host it names, under the egress
/// policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardProxy {
    /// Address to listen on. Default: `127.0.0.1` (binding elsewhere is the operator's
    /// explicit choice: a proxy reachable by everyone is an open proxy).
    pub listen_ip: IpAddr,
    /// Port to listen on. Default: 3128 (Squid's).
    pub port: u16,
    /// Gloo's `autoHostRewriteHeader`: when a request has this header, its value is the
    /// destination (and the `Host` sent); the header itself is not forwarded. Default: none.
    pub auto_host_rewrite_header: Option<String>,
    /// Time from a request's start to the destination's response head (504 after).
    /// Default: 30s.
    pub timeout: Duration,
    /// Longest quiet spell while a response body or a tunnel's bytes flow. Default: 300s.
    pub idle_timeout: Duration,
    /// `connect`: CONNECT tunnels.
    pub connect: ConnectTunnels,
    /// `dns_cache.dns_lookup_family`. Default: `V4_PREFERRED`.
    pub dns_lookup_family: LookupFamily,
    /// `dns_cache.host_ttl`, `.max_hosts`, `.dns_refresh_rate` (Envoy's names and
    /// defaults: 300s, 1024, 60s). The gateway's backend hosts share the cache.
    pub dns_cache: crate::resolve::dns::DnsCacheConfig,
    /// `circuit_breakers`: per destination (Envoy's names and defaults).
    pub circuit_breakers: Thresholds,
    /// `egress`: where requests may go.
    pub egress: EgressPolicy,
}

/// `connect` of the forward proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectTunnels {
    /// Default: false (CONNECT is answered 403 and the connection closed, as Envoy
    /// without the CONNECT upgrade).
    pub enabled: bool,
    /// Ports a tunnel may open to. Default: 443 (Squid's `SSL_ports`).
    pub allowed_ports: Vec<PortRange>,
    /// Move a tunnel's bytes with `splice(2)` through a kernel pipe, where the driver
    /// can, instead of reading them into the gateway and writing them out. Default:
    /// true; false copies (for a kernel or sandbox whose splice misbehaves).
    pub splice: bool,
}

/// An inclusive port range (`443`, or `"8000-8999"` in the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.0..=self.1).contains(&port)
    }
}

/// Envoy's `dns_lookup_family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum LookupFamily {
    /// IPv4 addresses only.
    #[serde(rename = "V4_ONLY")]
    V4Only,
    /// IPv6 addresses only.
    #[serde(rename = "V6_ONLY")]
    V6Only,
    /// IPv6 when the name has one, else IPv4 (Envoy's `AUTO`).
    #[serde(rename = "AUTO")]
    Auto,
    /// IPv4 when the name has one, else IPv6.
    #[serde(rename = "V4_PREFERRED")]
    V4Preferred,
}

/// `egress` of the forward proxy: host and port rules first, then the address the
/// destination resolved to (see `sluice_core::forward::Egress`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EgressPolicy {
    /// When not empty, only hosts matching one of these (`example.com`, `*.example.com`).
    pub allow_hosts: Vec<String>,
    /// Hosts refused whatever else says (same patterns).
    pub deny_hosts: Vec<String>,
    /// Ports plain requests may go to. Default: 80 and 443.
    pub ports: Vec<PortRange>,
    /// Internal ranges allowed anyway (loopback, private, link-local, ... are refused
    /// unless named here). Default: none.
    pub allow_cidrs: Vec<IpNet>,
}

/// `extra_config."router"` (KrakenD's gin router namespace): the keys Sluice reads.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterOptions {
    /// Puts the reason of a failed request in the 500 body. Default: false.
    pub return_error_msg: bool,
    /// Takes the client address from `remote_ip_headers` when the socket peer is one of
    /// `trusted_proxies`. Default: false (the socket peer is the client).
    pub forwarded_by_client_ip: bool,
    /// Headers that carry the client address. Default: `X-Forwarded-For`, `X-Real-IP`.
    pub remote_ip_headers: Vec<String>,
    /// Peers whose `remote_ip_headers` are believed. Default: none.
    pub trusted_proxies: Vec<IpNet>,
    /// gin's redirects of a path that misses: to the other trailing slash, and to the
    /// cleaned, case-corrected form. Default: both on (`disable_redirect_*` turn them off).
    pub redirect_trailing_slash: bool,
    pub redirect_fixed_path: bool,
    /// A path served under other methods is a 405 (otherwise a 404). Default: on
    /// (`disable_handle_method_not_allowed`).
    pub method_not_allowed: bool,
    /// `OPTIONS` on every endpoint path answers 200 with `Allow`. Default: off.
    pub auto_options: bool,
    /// `error_body`: the JSON bodies of the router's 404 and 405, as gin writes them
    /// (keys sorted, `<`, `>`, `&` escaped). Default: gin's plain text.
    pub error_body_404: Option<String>,
    pub error_body_405: Option<String>,
    /// An endpoint parameter holding a percent-encoded character is refused with 400
    /// (`error: encoded url params`), as KrakenD's parameter check does. Default: on
    /// (`disable_path_decoding` turns it off).
    pub refuse_encoded_params: bool,
    /// Where the health page answers; `None`: `disable_health`. Default: `/__health`.
    pub health_path: Option<String>,
}

impl RouterOptions {
    /// The client's address: the socket peer, unless `forwarded_by_client_ip` is set and
    /// the peer is a trusted proxy. Then each of `remote_ip_headers` is read right to left,
    /// skipping trusted proxies: the first untrusted address is the client (gin's rule).
    /// A header with anything but addresses in it is ignored.
    /// Whether [`RouterOptions::client_ip`] is the peer's, whatever the headers say
    /// (the peer is not a trusted proxy, or forwarded addresses are not read).
    pub fn peer_is_client(&self, peer: IpAddr) -> bool {
        !self.forwarded_by_client_ip || !self.trusted_proxies.iter().any(|net| net.contains(peer))
    }

    pub fn client_ip(&self, peer: IpAddr, headers: &crate::http1::Head) -> IpAddr {
        if !self.forwarded_by_client_ip {
            return peer;
        }
        self.forwarded_ip(peer, headers, self.remote_ip_headers.iter().map(String::as_str))
    }

    /// The client's address as the headers `names` say it, read as
    /// [`RouterOptions::client_ip`] reads them, when the peer is a trusted proxy; else
    /// the peer.
    pub fn forwarded_ip<'n>(
        &self,
        peer: IpAddr,
        headers: &crate::http1::Head,
        names: impl IntoIterator<Item = &'n str>,
    ) -> IpAddr {
        let trusted = |ip: IpAddr| self.trusted_proxies.iter().any(|net| net.contains(ip));
        if !trusted(peer) {
            return peer;
        }
        for name in names {
            let Some(value) = headers.get(name).and_then(|v| std::str::from_utf8(v).ok()) else { continue };
            let list: Option<Vec<IpAddr>> = value.split(',').map(|s| s.trim().parse().ok()).collect();
            let Some(list) = list else { continue };
            for (i, ip) in list.iter().enumerate().rev() {
                if i == 0 || !trusted(*ip) {
                    return *ip;
                }
            }
        }
        peer
    }
}

impl Default for RouterOptions {
    fn default() -> RouterOptions {
        RouterOptions {
            return_error_msg: false,
            forwarded_by_client_ip: false,
            remote_ip_headers: vec!["X-Forwarded-For".to_string(), "X-Real-IP".to_string()],
            trusted_proxies: Vec::new(),
            redirect_trailing_slash: true,
            redirect_fixed_path: true,
            method_not_allowed: true,
            auto_options: false,
            error_body_404: None,
            error_body_405: None,
            refuse_encoded_params: true,
            health_path: Some("/__health".to_string()),
        }
    }
}

/// One endpoint: a path and method that fans out to backends.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The path, with `{params}`. Required; must start with `/`.
    pub endpoint: String,
    /// The method. Default: GET. One of GET, POST, PUT, PATCH, DELETE.
    pub method: Method,
    /// The backends. Required, at least one.
    pub backend: Vec<Backend>,
    /// Deadline for the whole endpoint. Default: the root `timeout`.
    pub timeout: Option<Duration>,
    /// `Cache-Control` max-age. Default: the root `cache_ttl`.
    pub cache_ttl: Option<Duration>,
    /// Query string names forwarded to backends; `["*"]` forwards all. Default: none.
    pub input_query_strings: Vec<String>,
    /// Header names forwarded to backends; `["*"]` forwards all. Default: none
    /// (only `Content-Type` crosses).
    pub input_headers: Vec<String>,
    /// Output encoding. Default: the root `output_encoding`.
    pub output_encoding: Option<OutputEncoding>,
    /// `extra_config."proxy".sequential`: call backends one after the other, each able to
    /// use earlier responses in its `url_pattern`. Default: false (parallel).
    pub sequential: bool,
    /// `extra_config."auth/validator"`: the token every request must bring (401, 403).
    /// Default: none.
    pub jwt: Option<Box<JwtConfig>>,
    /// `extra_config."security/bot-detector"`: requests refused by User-Agent (403).
    /// Default: none.
    pub bot_detector: Option<BotDetectorConfig>,
    /// `extra_config."qos/ratelimit/router"`: the endpoint's rate limits. Default: none.
    pub rate_limit: Option<RateLimitConfig>,
    /// `extra_config."validation/json-schema"`: the schema every request body must
    /// meet (checked to compile when read). Default: none.
    pub json_schema: Option<Value>,
    /// `extra_config."validation/cel"`: request checks (`check_expr`), in order.
    /// Default: none.
    pub cel: Vec<String>,
    /// `extra_config.proxy.static`: data merged into the answer. Default: none.
    pub static_response: Option<StaticResponse>,
    /// `extra_config.proxy.flatmap_filter`: operations on the merged answer (of an
    /// endpoint with two backends or more, as lura). Default: none.
    pub flatmap: Vec<FlatmapOp>,
    /// `extra_config.proxy.sequential_propagated_params`: values of earlier answers
    /// made request parameters of the later backends of a sequence. Default: none.
    pub propagated_params: Vec<PropagatedParam>,
    /// `extra_config."telemetry/opentelemetry".proxy`: the endpoint's own `proxy`
    /// layer, in place of the root's. Default: none.
    pub trace_proxy: Option<crate::ops::trace::ProxyLayer>,
    /// `extra_config."telemetry/opentelemetry".global.traces_static_attributes`: added
    /// to the gateway's span of this endpoint's requests. Default: none.
    pub trace_attributes: Vec<crate::ops::trace::StaticAttribute>,
    /// The raw `extra_config` object.
    pub extra_config: Map<String, Value>,
}

/// `extra_config.proxy.static` on an endpoint (lura's static middleware): `data`
/// merged over the answer's top-level keys when `strategy` says so.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticResponse {
    pub strategy: StaticStrategy,
    /// The members of `data`, each value as JSON text, in the file's order.
    pub data: Vec<(String, String)>,
}

/// One of `proxy.sequential_propagated_params`: `respN_a.b` (a value of backend N's
/// answer) or `respN` (its whole body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropagatedParam {
    pub backend: usize,
    /// The dotted path, split; empty for the whole body.
    pub path: Vec<String>,
}

impl PropagatedParam {
    /// The request parameter's name, as lura gives it: `Resp0_a.b`, `Resp0`.
    pub fn name(&self) -> String {
        match self.path.is_empty() {
            true => format!("Resp{}", self.backend),
            false => format!("Resp{}_{}", self.backend, self.path.join(".")),
        }
    }
}

/// When static data is merged: lura's five matchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaticStrategy {
    /// Every answer.
    Always,
    /// No backend failed.
    Success,
    /// No backend failed and the answer is complete (the same as `success` here: a
    /// successful answer is complete).
    Complete,
    /// Some backend failed.
    Errored,
    /// Some backend failed, or none answered.
    Incomplete,
}

/// One `proxy.flatmap_filter` operation (see [`crate::gateway::response::flatmap`]); paths are
/// the dotted `args`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlatmapOp {
    Move(Vec<String>, Vec<String>),
    Append(Vec<String>, Vec<String>),
    Del(Vec<Vec<String>>),
}

/// `extra_config."qos/circuit-breaker"` on a backend, as krakend-circuitbreaker reads
/// it (see [`crate::gateway::breaker`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// The name in its log lines and on the admin pages. Default: empty.
    pub name: String,
    /// While closed, how often the failure count starts again (0: never).
    pub interval: Duration,
    /// How long it stays open before one call is let through (0: 60 s, as gobreaker).
    pub timeout: Duration,
    /// Consecutive failures tolerated: one more opens it.
    pub max_errors: u32,
    /// Log each change of state (a warning). Default: false.
    pub log_status_change: bool,
}

/// `extra_config."auth/validator"` on an endpoint, as krakend-jose reads it (see
/// [`crate::gateway::jwt`] for what each check does).
#[derive(Debug, Clone, PartialEq)]
pub struct JwtConfig {
    /// The one signature algorithm tokens must use, as KrakenD names it (`RS256`).
    /// Required.
    pub alg: String,
    /// Where the JWK set is fetched from, when the configuration is loaded. `https`
    /// unless `disable_jwk_security`. One of it or `jwk_local_path` is required.
    pub jwk_url: Option<String>,
    /// A JWK set file, read when the configuration is loaded.
    pub jwk_local_path: Option<String>,
    /// A PEM file of roots trusted for `jwk_url`, beside the system's.
    pub jwk_local_ca: Option<String>,
    /// `jwk_url` may be plain HTTP, and its certificate is not verified. Default: false.
    pub disable_jwk_security: bool,
    /// How often a fetched key set is fetched again. Default: 15 minutes (KrakenD's
    /// `cache_duration` default).
    pub cache_duration: Duration,
    /// The least time between two fetches asked for by tokens naming a key the set
    /// lacks. Default: 10s (at least 1s).
    pub failed_jwk_key_cooldown: Duration,
    /// How a token's key is found. Default: `kid`.
    pub key_identify_strategy: KeyStrategy,
    /// The header the token comes in. Default: `Authorization`.
    pub auth_header_name: String,
    /// The cookie read when that header is absent. Default: `access_token`.
    pub cookie_key: String,
    /// Clock skew allowed on `exp`, `nbf`, `iat`. Default (and least): 1s.
    pub leeway: Duration,
    /// The `iss` tokens must carry. Default: any.
    pub issuer: Option<String>,
    /// Every one of these must be in `aud`. Default: none asked.
    pub audience: Vec<String>,
    /// The claim holding the roles. Default: `roles`.
    pub roles_key: String,
    /// `roles_key` is a dotted path into nested objects. Default: false.
    pub roles_key_is_nested: bool,
    /// A token must hold one of these roles (else 403). Default: none asked.
    pub roles: Vec<String>,
    /// The claim holding the scopes (dotted: nested). Default: none (no scope check).
    pub scopes_key: Option<String>,
    /// The scopes asked for (else 403). Default: none.
    pub scopes: Vec<String>,
    /// Whether any or all of `scopes` are needed. Default: any.
    pub scopes_matcher: ScopesMatcher,
    /// Claims copied to request headers: `(claim, header)`.
    pub propagate_claims: Vec<(String, http::HeaderName)>,
    /// An array claim propagated as one header value per item. Default: false (joined).
    pub propagate_claims_preserve_array: bool,
    /// One `sluice::jwt` debug line per refused token, saying why. Default: false.
    pub operation_debug: bool,
}

/// `key_identify_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyStrategy {
    /// The token's `kid` names the key.
    #[default]
    Kid,
    /// The token's `x5t` (else its `kid`) is the key's `x5t`.
    X5t,
    /// Both.
    KidX5t,
}

/// `scopes_matcher`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScopesMatcher {
    #[default]
    Any,
    All,
}

/// `extra_config."security/bot-detector"` (root or endpoint), as krakend-botdetector
/// reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BotDetectorConfig {
    /// User-Agents that are never bots (whole string, exact). Default: none.
    pub allow: Vec<String>,
    /// User-Agents that are bots (whole string, exact). Default: none.
    pub deny: Vec<String>,
    /// Regular expressions (RE2 syntax, matched anywhere in the User-Agent). Default: none.
    pub patterns: Vec<String>,
    /// KrakenD's verdict cache size: accepted and checked, not needed (the patterns are
    /// one compiled set). Default: 0.
    pub cache_size: u64,
    /// A request without a User-Agent (or an empty one) is a bot. Default: false.
    pub empty_user_agent_is_bot: bool,
}

/// How `qos/ratelimit/router` tells clients apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitStrategy {
    /// The client's address (the socket peer, or as `router.forwarded_by_client_ip`
    /// says); with a `key`, the first address in that header when it parses.
    Ip(Option<String>),
    /// The value of this header.
    Header(String),
    /// The value of this `{param}` of the endpoint's path.
    Param(String),
}

/// `extra_config."qos/ratelimit/router"` on an endpoint, as krakend-ratelimit reads
/// it, rates already per second (`every` applied).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Requests per second for the whole endpoint; 0: none. Default: 0.
    pub max_rate: f64,
    /// Burst for the whole endpoint. Default: the rate, at least 1.
    pub capacity: u64,
    /// Requests per second per client; 0: none. Default: 0.
    pub client_max_rate: f64,
    /// Burst per client. Default: the client rate, at least 1; but 1 when the
    /// endpoint's rate is under 1 a second or none (KrakenD's default reads it).
    pub client_capacity: u64,
    /// How clients are told apart (required with `client_max_rate`).
    pub strategy: Option<LimitStrategy>,
    /// Client buckets the endpoint keeps: 8 per KrakenD `num_shards` (default 2048, so
    /// 16,384 buckets, 128 KiB); a bucket back to full is reused for another client.
    pub client_slots: usize,
}

/// One backend of an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// Hosts to balance over, `scheme://host:port`. Default: the root `host`.
    pub host: Vec<String>,
    /// Path (and optional static query) on the backend, with `{placeholders}`. Required.
    pub url_pattern: String,
    /// Method sent to the backend. Default: the endpoint's method.
    pub method: Option<Method>,
    /// How to decode the response. Default: `json`.
    pub encoding: Encoding,
    /// The backend answers an array; it is returned as `{"collection": [...]}`.
    /// Default: false (the seed's "true" is a documentation slip; KrakenD defaults to false).
    pub is_collection: bool,
    /// Returns only the content of this key. Default: none.
    pub target: Option<String>,
    /// Dotted paths to keep (wins over `deny`). Default: none.
    pub allow: Vec<String>,
    /// Dotted paths to remove. Default: none.
    pub deny: Vec<String>,
    /// Renames top-level keys, `{"from": "to"}`, in the order written. Default: none.
    pub mapping: Vec<(String, String)>,
    /// Wraps the response under this key. Default: none.
    pub group: Option<String>,
    /// Service discovery. Default: static.
    pub sd: ServiceDiscovery,
    /// Skips the host checks (for `sd: dns` or non-HTTP hosts). Default: false.
    pub disable_host_sanitize: bool,
    /// Backend-level filter of the endpoint's `input_headers`. Default: none (all of them).
    pub input_headers: Option<Vec<String>>,
    /// Backend-level filter of the endpoint's `input_query_strings`. Default: none (all).
    pub input_query_strings: Option<Vec<String>>,
    /// `extra_config."backend/http"`.
    pub http: BackendHttp,
    /// `extra_config."backend/http/client"`.
    pub http_client: Option<HttpClientOptions>,
    /// `extra_config."plugin/http-client"`.
    pub plugin: Option<ClientPlugin>,
    /// `extra_config."qos/ratelimit/proxy"`: calls to this backend, per second, for
    /// every client together. Default: none.
    pub rate_limit: Option<ProxyRateLimit>,
    /// `extra_config."validation/cel"`: request checks before each call. Default: none.
    pub cel: Vec<String>,
    /// `extra_config.proxy.flatmap_filter`: operations on this backend's answer, in
    /// place of `allow`, `deny` and `mapping` (as lura). Default: none.
    pub flatmap: Vec<FlatmapOp>,
    /// `extra_config."qos/circuit-breaker"`. Default: none.
    pub circuit_breaker: Option<BreakerConfig>,
    /// `extra_config."modifier/martian"`: the modifier, checked when read (see
    /// [`crate::gateway::martian`]). Default: none.
    pub martian: Option<Value>,
    /// `extra_config."telemetry/opentelemetry".backend`: the backend's own layer, in
    /// place of the root's. Default: none.
    pub trace_backend: Option<crate::ops::trace::BackendLayer>,
    /// The raw `extra_config` object.
    pub extra_config: Map<String, Value>,
}

/// `extra_config."qos/ratelimit/proxy"` as krakend-ratelimit reads it, the rate per
/// second (`every` applied).
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyRateLimit {
    pub max_rate: f64,
    /// Burst. Default: the rate per second, at least 1.
    pub capacity: u64,
}

/// `extra_config."backend/http"`: how backend errors reach the client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendHttp {
    /// Returns the backend's status code instead of KrakenD's 500/partial. Default: false.
    pub return_error_code: bool,
    /// Puts the failing backend's status and body under this key. Default: none.
    pub return_error_details: Option<String>,
}

/// `extra_config."backend/http/client"` (seed 001).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpClientOptions {
    /// Returns 3xx responses to the client instead of following them. Default: false.
    pub no_redirect: bool,
    /// TLS settings replacing the root `client_tls` for this backend. Default: none.
    pub client_tls: Option<ClientTls>,
    /// HTTP proxy for this backend, `http://proxy:port`. Default: none (`HTTP_PROXY` applies).
    pub proxy_address: Option<String>,
}

/// `extra_config."plugin/http-client"` (seed 002): one client plugin per backend.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientPlugin {
    /// The plugin's registered name. Required. `http-proxy` is built in (seed 000).
    pub name: String,
    /// For `http-proxy`: the proxy, with scheme and port.
    pub proxy_address: Option<String>,
    /// Every other key of the namespace, handed to the plugin as its options.
    pub options: Map<String, Value>,
    /// `upstreams`: where the plugin may call out to (`proxy_http_call`), by the name
    /// it calls them: each a URL, or a list of URLs taken in turn. Default: none.
    pub upstreams: Vec<(String, Vec<String>)>,
}

/// Root `plugin`: where client plugins are loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLoader {
    /// Folder scanned for plugins. Required.
    pub folder: String,
    /// File name suffix of plugins. Default: `.wasm` (KrakenD's `.so` Go plugins cannot
    /// load here: `sluice-plugins` says why).
    pub pattern: String,
}

/// Client TLS settings (root `client_tls`, or per backend in `backend/http/client`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// Skips certificate verification. Default: false.
    pub allow_insecure_connections: bool,
    /// Extra CA certificate files (PEM). Default: none.
    pub ca_certs: Vec<String>,
    /// Trusts only `ca_certs`, not the system roots. Default: false.
    pub disable_system_ca_pool: bool,
    /// Lowest TLS version. Default: TLS12 (rustls speaks only TLS12 and TLS13).
    pub min_version: Option<TlsVersion>,
    /// Highest TLS version. Default: TLS13.
    pub max_version: Option<TlsVersion>,
    /// Client certificates for mutual TLS. Default: none.
    pub client_certs: Vec<ClientCert>,
    /// Cipher suites offered, by IANA number as Go writes them (`49199`). Default: all
    /// rustls has (see [`crate::tls`] for how a list applies).
    pub cipher_suites: Vec<u16>,
}

/// The root `tls` object: the gateway listens on HTTPS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerTls {
    /// The certificate chain and its key (`public_key`/`private_key`, or the one
    /// entry of `keys`).
    pub keys: Vec<ClientCert>,
    /// The pair came from `keys` (errors name `keys[0]`).
    pub from_keys: bool,
    /// Listens on plain HTTP after all (KrakenD's switch for development). Default: false.
    pub disabled: bool,
    /// Lowest TLS version. Default: TLS13 (KrakenD's default).
    pub min_version: Option<TlsVersion>,
    /// Highest TLS version. Default: TLS13.
    pub max_version: Option<TlsVersion>,
    /// As [`ClientTls::cipher_suites`].
    pub cipher_suites: Vec<u16>,
    /// Asks every client for a certificate chaining to `ca_certs` (and the system roots
    /// unless `disable_system_ca_pool`). Default: false.
    pub enable_mtls: bool,
    pub ca_certs: Vec<String>,
    pub disable_system_ca_pool: bool,
}

/// A client certificate and its key, as PEM file paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub certificate: String,
    pub private_key: String,
}

/// TLS versions rustls speaks, written as KrakenD writes them (`"TLS12"`, `"TLS13"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "TLS12")]
    Tls12,
    #[serde(rename = "TLS13")]
    Tls13,
}

/// How a backend response is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Encoding {
    #[serde(rename = "json")]
    Json,
    #[serde(rename = "safejson")]
    SafeJson,
    #[serde(rename = "fast-json")]
    FastJson,
    #[serde(rename = "xml")]
    Xml,
    #[serde(rename = "rss")]
    Rss,
    #[serde(rename = "string")]
    String,
    #[serde(rename = "no-op")]
    NoOp,
}

/// How an endpoint encodes its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OutputEncoding {
    #[serde(rename = "json")]
    Json,
    #[serde(rename = "json-collection")]
    JsonCollection,
    #[serde(rename = "string")]
    String,
    #[serde(rename = "xml")]
    Xml,
    #[serde(rename = "yaml")]
    Yaml,
    #[serde(rename = "negotiate")]
    Negotiate,
    #[serde(rename = "no-op")]
    NoOp,
}

/// Service discovery of a backend's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceDiscovery {
    Static,
    Dns,
}

impl Config {
    /// The effective timeout of an endpoint.
    pub fn endpoint_timeout(&self, e: &Endpoint) -> Duration {
        e.timeout.unwrap_or(self.timeout)
    }

    /// The effective output encoding of an endpoint.
    pub fn endpoint_output(&self, e: &Endpoint) -> OutputEncoding {
        e.output_encoding.unwrap_or(self.output_encoding)
    }
}

/// Whether a method may change state (KrakenD's "non-safe" backends).
pub fn is_write_method(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}
