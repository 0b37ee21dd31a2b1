//! The validated configuration compiled once into an immutable [`Gateway`], shared
//! read-only by every shard.

pub mod route;

use std::net::SocketAddr;
use std::time::Duration;

use rustls_pki_types::ServerName;

use http::{HeaderName, Method};

use crate::call::backend::pool_key;
use crate::call::proxy::{Proxy, ProxyEnv};
use crate::config::template::{self, Piece, Placeholder};
use crate::config::{self, BackendHttp, BadValue, Config, ConfigError, Diagnostic, Encoding, HostAddr, OutputEncoding};
use crate::gateway::response::Shape;
use crate::plan::route::{RouteMatch, Router};
use crate::tls::{self, Environment, ServerProfile, TlsProfile, TlsTarget};

/// Which client headers a backend receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderPolicy {
    /// Every end-to-end header (`["*"]`).
    All,
    /// These names (case-insensitive), plus `Content-Type`.
    Names(Vec<HeaderName>),
}

/// Which client query parameters a backend receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryPolicy {
    /// Every parameter (`["*"]`).
    All,
    /// These names (exact, as KrakenD); empty: none.
    Names(Vec<String>),
}

impl HeaderPolicy {
    /// Whether a client header named `name` is passed on under this policy (`Host`
    /// and the hop-by-hop ones never are; `Content-Type` always is).
    pub fn allows(&self, name: &str) -> bool {
        if name.eq_ignore_ascii_case("host") || crate::http1::is_hop_by_hop_name(name.as_bytes()) {
            return false;
        }
        match self {
            HeaderPolicy::All => true,
            HeaderPolicy::Names(list) => {
                name.eq_ignore_ascii_case("content-type") || list.iter().any(|n| n.as_str().eq_ignore_ascii_case(name))
            }
        }
    }

    /// The endpoint's list, filtered again by the backend's when it has one.
    pub fn compile(endpoint: &[String], backend: Option<&[String]>) -> HeaderPolicy {
        let names = effective(endpoint, backend, |a, b| a.eq_ignore_ascii_case(b));
        match names {
            None => HeaderPolicy::All,
            Some(list) => {
                HeaderPolicy::Names(list.iter().filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()).collect())
            }
        }
    }
}

impl QueryPolicy {
    pub fn compile(endpoint: &[String], backend: Option<&[String]>) -> QueryPolicy {
        match effective(endpoint, backend, |a, b| a == b) {
            None => QueryPolicy::All,
            Some(list) => QueryPolicy::Names(list),
        }
    }

    /// Whether a query parameter named `name` is forwarded.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            QueryPolicy::All => true,
            QueryPolicy::Names(list) => list.iter().any(|n| n == name),
        }
    }
}

/// `None` means everything; otherwise the names both lists let through.
fn effective(endpoint: &[String], backend: Option<&[String]>, eq: fn(&str, &str) -> bool) -> Option<Vec<String>> {
    let all = |l: &[String]| l.iter().any(|n| n == "*");
    match backend {
        None => (!all(endpoint)).then(|| endpoint.to_vec()),
        Some(b) if all(b) => (!all(endpoint)).then(|| endpoint.to_vec()),
        Some(b) if all(endpoint) => Some(b.to_vec()),
        Some(b) => Some(endpoint.iter().filter(|e| b.iter().any(|n| eq(n, e))).cloned().collect()),
    }
}

/// Everything the gateway needs to serve, compiled from a [`Config`].
#[derive(Debug, Clone)]
pub struct Gateway {
    pub config: Config,
    pub router: Router,
    /// One per `config.endpoints`, same order (the router's values index this).
    pub endpoints: Vec<EndpointPlan>,
    /// How many backends all endpoints have together (each has a `slot` below this).
    pub backend_count: usize,
    /// The listener's TLS (root `tls`, unless `disabled`): connections start with a
    /// handshake.
    pub server_tls: Option<ServerProfile>,
    /// The proxy variables, for redirects to hosts the configuration does not name.
    pub proxy_env: ProxyEnv,
    /// The dynamic forward proxy (`extra_config."sluice/forward-proxy"`), served on
    /// its own listener.
    pub forward: Option<crate::forward::ForwardPlan>,
    /// Where `"sd": "dns"` backends' SRV queries go: `"sluice/dns"`, else
    /// `/etc/resolv.conf` (read only when a backend uses `"sd": "dns"`).
    pub resolver: crate::resolve::srv::ResolverConfig,
    /// `security/cors`, compiled: run on every request before routing.
    pub cors: Option<crate::gateway::cors::Cors>,
    /// The root's `security/bot-detector`, compiled: run on every request but the
    /// health page's, after CORS.
    pub bots: Option<Box<crate::gateway::bots::BotDetector>>,
    /// The `auth/validator` key sets fetched from a URL, one per distinct fetch
    /// (endpoints naming the same `jwk_url` share it): what a driver's refresher
    /// fetches again ([`crate::gateway::jwt::KeySource::due`]).
    pub key_sources: Vec<std::sync::Arc<crate::gateway::jwt::KeySource>>,
    /// `telemetry/opentelemetry`, when it makes spans: what each endpoint traces, and
    /// the queue its spans go to (see [`crate::ops::trace`]).
    pub tracer: Option<Box<crate::ops::trace::Tracer>>,
    /// A server of the embedding program's own (the `sluice` binary's loopback gateway,
    /// through which it fetches key sets and posts spans): its lines
    /// ([`crate::event::Log`]: the access line, backend failures, ...) are counted but
    /// not written ([`Gateway::emit`]), the program reporting what failed in its
    /// own words. No configuration sets it: `false` from [`Gateway::load`].
    pub quiet: bool,
}

/// An endpoint with every default resolved.
#[derive(Debug, Clone)]
pub struct EndpointPlan {
    /// Its place in the configuration (and in [`Gateway::endpoints`]).
    pub index: usize,
    pub path: String,
    pub method: Method,
    pub timeout: Duration,
    pub cache_ttl: Option<Duration>,
    pub output: OutputEncoding,
    pub sequential: bool,
    pub backends: Vec<BackendPlan>,
    /// What it checks before any backend call (see [`crate::gateway::guard`]).
    pub guards: crate::gateway::guard::Guards,
    /// `validation/json-schema`: what every request body must meet, checked once the
    /// body is read, before any backend call (see [`crate::gateway::schema`]).
    pub schema: Option<std::sync::Arc<crate::gateway::schema::BodySchema>>,
    /// `validation/cel`: response checks on the merged answer (see
    /// [`crate::gateway::cel`]).
    pub cel_response: Option<std::sync::Arc<crate::gateway::cel::Checks>>,
    /// `validation/cel`: request checks before any backend call (see
    /// [`crate::gateway::cel`]), and the endpoint's own header and query lists they
    /// see the request through.
    pub cel: Option<std::sync::Arc<crate::gateway::cel::Checks>>,
    pub cel_sees: (HeaderPolicy, QueryPolicy),
    /// The fields a streamed (`no-op`) answer's head gets before the backend's own:
    /// `X-KrakenD-Completed: false`, as lura sets it on every answer whose data it did
    /// not decode. Built once.
    pub noop_fields: crate::http1::Fields,
    /// `proxy.static`: data merged into the answer.
    pub static_response: Option<crate::config::StaticResponse>,
    /// `proxy.flatmap_filter` on the merged answer.
    pub flatmap: Vec<crate::config::FlatmapOp>,
    /// `proxy.sequential_propagated_params`, each with its parameter's name.
    pub propagated: Vec<(crate::config::PropagatedParam, String)>,
}

impl EndpointPlan {
    /// `no-op` bodies stream through, both ways, unless a client plugin is bound (it
    /// sees whole bodies).
    pub fn streams(&self) -> bool {
        self.output == OutputEncoding::NoOp && self.backends.iter().all(|b| b.plugin.is_none())
    }
}

/// A backend with every default resolved and its `url_pattern` pre-parsed.
#[derive(Debug, Clone)]
pub struct BackendPlan {
    /// Hosts to balance over (the root `host` when the backend has none).
    pub hosts: Vec<BackendHost>,
    pub url_pattern: Vec<UrlPiece>,
    /// The path `url_pattern` renders to when it has no placeholder (and no dot
    /// segment): written as it is, with nothing to check per request.
    pub fixed_path: Option<Box<str>>,
    pub method: Method,
    pub encoding: Encoding,
    /// Unique index of this backend in the whole gateway (per-shard state is kept by it).
    pub slot: usize,
    /// Decoding and shaping of its responses.
    pub shape: Shape,
    /// Client headers it receives.
    pub headers: HeaderPolicy,
    /// Client query parameters it receives.
    pub query: QueryPolicy,
    /// `extra_config."backend/http"`.
    pub http: BackendHttp,
    /// `"backend/http/client": {"no_redirect": true}`: a 3xx is the answer.
    pub no_redirect: bool,
    /// The TLS profile for an `https://` host a redirect sends the call to (none with
    /// `no_redirect`, or when the profile has errors, which are reported).
    pub redirect_tls: Option<TlsProfile>,
    /// The client plugin bound to it (see [`crate::gateway::plugin`]), once bound.
    pub plugin: Option<crate::gateway::plugin::Binding>,
    /// Where its plugin may call out to (`proxy_http_call`), by name: the
    /// `upstreams` of its `plugin/http-client` namespace, hosts compiled as the
    /// backend's own (its TLS settings and proxy).
    pub upstreams: Vec<(String, Vec<BackendHost>)>,
    /// `qos/ratelimit/proxy`: calls over it are not made.
    pub limit: Option<crate::gateway::ratelimit::CallLimit>,
    /// `validation/cel`: request checks before each call (see [`crate::gateway::cel`]).
    pub cel: Option<std::sync::Arc<crate::gateway::cel::Checks>>,
    /// `validation/cel`: response checks on each answer, once shaped.
    pub cel_response: Option<std::sync::Arc<crate::gateway::cel::Checks>>,
    /// `qos/circuit-breaker`, shared by every shard.
    pub breaker: Option<crate::gateway::breaker::Breaker>,
}

/// A backend host. `path_prefix` is only ever non-empty with `disable_host_sanitize`,
/// where KrakenD joins host and url_pattern as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendHost {
    pub addr: HostAddr,
    pub path_prefix: String,
    /// [`pool_key`] of `addr` with its TLS target and proxy, computed once: idle
    /// connections are kept under it (for a proxied plain host, the proxy's key).
    pub pool_key: String,
    /// `addr`'s authority for the `Host` header, computed once.
    pub authority: String,
    /// The HTTP proxy requests to this host go through (see [`crate::call::proxy`]).
    pub proxy: Option<Proxy>,
    /// For an `https://` host: its TLS profile and the name to verify.
    pub tls: Option<TlsTarget>,
    /// An `https://` host behind a proxy: the `host:port` the proxy is asked to
    /// `CONNECT` to (the tunnels are pooled per proxy, credentials, host and TLS
    /// profile: `pool_key` names them all).
    pub connect: Option<String>,
    /// `"sd": "dns"`: `addr.host` is a name whose SRV records say where calls go (see
    /// [`crate::resolve::srv`]); `proxy` is only the backend's own (the environment's is chosen
    /// per target), `tls` carries the profile the targets get.
    pub srv: bool,
    /// The address a new connection dials when the host (or its proxy) is an IP
    /// literal, worked out once; `None` for a name (resolved when needed).
    pub dial: Option<SocketAddr>,
}

/// What a `url_pattern` without placeholders renders to (see
/// [`BackendPlan::fixed_path`]): its text, with a leading `/`; `None` when it has a
/// placeholder, or when its path would hold a dot segment (refused at each request,
/// as any rendered path is).
fn fixed_path(pattern: &[UrlPiece]) -> Option<Box<str>> {
    let mut url = String::new();
    for piece in pattern {
        let UrlPiece::Literal(l) = piece else { return None };
        url.push_str(l);
    }
    config::net::finish_backend_path(&mut url).then(|| url.into_boxed_str())
}

/// A pre-parsed piece of a `url_pattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlPiece {
    Literal(String),
    /// An endpoint parameter.
    Param(String),
    /// A header of the client request.
    InputHeader(HeaderName),
    /// A field of an earlier response in a sequential proxy: `resp{index}_{path}`.
    Response {
        index: usize,
        path: Vec<String>,
    },
    /// A top-level claim of the request's token: `JWT.{claim}`.
    Jwt(String),
}

/// What [`Gateway::load`] hands back: the gateway, the lint warnings and the notices
/// (see [`config::Parsed`]).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub gateway: Gateway,
    pub warnings: Vec<Diagnostic>,
    pub notices: Vec<Diagnostic>,
}

impl Gateway {
    /// Writes a line of a connection serving this gateway ([`crate::event::emit`]),
    /// unless the gateway is [`Gateway::quiet`].
    #[cfg(feature = "tracing")]
    pub fn emit(&self, line: &crate::event::Log<'_>) {
        if !self.quiet {
            crate::event::emit(line);
        }
    }

    /// Parses, validates and compiles a KrakenD v3 file, with nothing from the
    /// environment: no proxy variables, no files, no system roots.
    pub fn load(text: &str) -> Result<Loaded, ConfigError> {
        Gateway::load_with(text, &Environment::default())
    }

    /// [`Gateway::load`] with what the loader read: proxy variables, certificate
    /// files, the system's trusted roots.
    pub fn load_with(text: &str, env: &Environment) -> Result<Loaded, ConfigError> {
        let parsed = config::parse(text)?;
        let gateway = Gateway::compile_with(parsed.config, env)?;
        Ok(Loaded { gateway, warnings: parsed.warnings, notices: parsed.notices })
    }

    /// Compiles a validated configuration.
    pub fn compile(config: Config) -> Result<Gateway, ConfigError> {
        Gateway::compile_with(config, &Environment::default())
    }

    /// Compiles a validated configuration with what the loader read.
    pub fn compile_with(config: Config, env: &Environment) -> Result<Gateway, ConfigError> {
        let routes = config.endpoints.iter().enumerate().map(|(i, e)| (i, &e.method, e.endpoint.as_str()));
        let mut router = Router::build(routes).map_err(|errors| {
            ConfigError::Invalid(
                errors.into_iter().map(|e| Diagnostic { path: e.json_path(), message: e.message }).collect(),
            )
        })?;
        router.rules = route::Rules::of(&config.router);
        let mut errors = Vec::new();
        // The root TLS profile, built once when an https host needs it.
        let mut root_profile: Option<Result<TlsProfile, Vec<Diagnostic>>> = None;
        // Every distinct client_tls setting is compiled once: backends with equal
        // settings share a profile, and so their pooled connections and sessions.
        let mut compiled = Vec::new();
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        let mut key_sources = Vec::new();
        let mut backend_count = 0;
        let mut uses_srv = false;
        for (i, e) in config.endpoints.iter().enumerate() {
            let mut backends = Vec::with_capacity(e.backend.len());
            for (j, b) in e.backend.iter().enumerate() {
                let path = format!("endpoints[{i}].backend[{j}]");
                let raw_hosts = if b.host.is_empty() { &config.host } else { &b.host };
                let own_proxy = match own_proxy(b, &path) {
                    Ok(p) => p,
                    Err(d) => {
                        errors.push(d);
                        None
                    }
                };
                let mut hosts = Vec::with_capacity(raw_hosts.len());
                // The backend's own TLS profile, built when an https host needs it.
                let mut own_profile = None;
                let srv = b.sd == config::ServiceDiscovery::Dns;
                uses_srv |= srv;
                // `modifier/martian`, compiled when the file was read (its url.Modifier
                // may send the calls elsewhere).
                let at = format!(r#"{path}.extra_config["modifier/martian"]"#);
                let martian = b.martian.as_ref().and_then(|v| match crate::gateway::martian::Martian::parse(v, &at) {
                    Ok(m) => Some(m),
                    Err((path, message)) => {
                        errors.push(Diagnostic { path, message });
                        None
                    }
                });
                // What every host of the backend gets (and every upstream its plugin
                // calls out to): its proxy, its TLS target, its pool key.
                let mut finish = |mut host: BackendHost, srv: bool, at: &str, errors: &mut Vec<Diagnostic>| {
                    host.proxy = match srv {
                        // The environment's proxy depends on the target's name.
                        true => own_proxy.clone(),
                        false => own_proxy.clone().or_else(|| env.proxy.for_host(&host.addr).cloned()),
                    };
                    if host.addr.scheme == config::Scheme::Https {
                        let profile = match b.http_client.as_ref().and_then(|c| c.client_tls.as_ref()) {
                            Some(t) => own_profile.get_or_insert_with(|| {
                                let at = format!(r#"{path}.extra_config["backend/http/client"].client_tls"#);
                                compiled_profile(Some(t), env, &at, &mut compiled)
                            }),
                            None => root_profile.get_or_insert_with(|| {
                                compiled_profile(config.client_tls.as_ref(), env, "client_tls", &mut compiled)
                            }),
                        };
                        match tls_target(&host.addr, profile, at) {
                            Ok(target) => host.tls = Some(target),
                            Err(mut diags) => errors.append(&mut diags),
                        }
                    }
                    if let (Some(_), Some(_)) = (&host.tls, &host.proxy) {
                        host.connect = Some(connect_authority(&host.addr));
                    }
                    host.pool_key = pool_key(&host.addr, host.tls.as_ref(), host.proxy.as_ref());
                    host.dial = host.proxy.as_ref().map_or(&host.addr, |p| &p.addr).socket_addr();
                    host
                };
                for (k, h) in raw_hosts.iter().enumerate() {
                    let host = compile_host(h, b.disable_host_sanitize)
                        .and_then(|host| redirected(host, martian.as_ref(), b.disable_host_sanitize))
                        .and_then(|host| srv_name(h, host, srv));
                    match host {
                        Ok(host) => hosts.push(finish(host, srv, &format!("{path}.host[{k}]"), &mut errors)),
                        Err(bad) => errors.push(Diagnostic { path: format!("{path}.host[{k}]"), message: bad.into() }),
                    }
                }
                // The upstreams the backend's plugin may call out to, by name.
                let mut upstreams = Vec::new();
                for (name, urls) in b.plugin.as_ref().map_or(&[][..], |p| &p.upstreams[..]) {
                    let mut list = Vec::with_capacity(urls.len());
                    for (k, u) in urls.iter().enumerate() {
                        let mut at = format!(r#"{path}.extra_config["plugin/http-client"].upstreams.{name}"#);
                        if urls.len() > 1 {
                            at.push_str(&format!("[{k}]"));
                        }
                        match compile_host(u, false) {
                            Ok(host) => list.push(finish(host, false, &at, &mut errors)),
                            Err(bad) => {
                                // The hints of a backend host do not apply here.
                                let message = String::from(bad)
                                    .replace(", or set disable_host_sanitize)", ")")
                                    .replace(": put it in url_pattern", ": the call out's :path gives it");
                                errors.push(Diagnostic { path: at, message })
                            }
                        }
                    }
                    upstreams.push((name.clone(), list));
                }
                let client = b.http_client.as_ref();
                let no_redirect = client.is_some_and(|c| c.no_redirect);
                // The profile an https redirect target gets: the backend's own, or the root one.
                let redirect_tls = if no_redirect {
                    None
                } else {
                    let profile = match client.and_then(|c| c.client_tls.as_ref()) {
                        Some(t) => own_profile.get_or_insert_with(|| {
                            let at = format!(r#"{path}.extra_config["backend/http/client"].client_tls"#);
                            compiled_profile(Some(t), env, &at, &mut compiled)
                        }),
                        None => root_profile.get_or_insert_with(|| {
                            compiled_profile(config.client_tls.as_ref(), env, "client_tls", &mut compiled)
                        }),
                    };
                    profile.as_ref().ok().cloned()
                };
                if let Some(Err(diags)) = &mut own_profile {
                    errors.append(diags);
                }
                let url_pattern = match compile_url_pattern(&b.url_pattern) {
                    Ok(u) => u,
                    Err(message) => {
                        errors.push(Diagnostic { path: format!("{path}.url_pattern"), message });
                        Vec::new()
                    }
                };
                let streamed = b.encoding == crate::config::Encoding::NoOp;
                let backend_cel =
                    cel_phases(&b.cel, (crate::gateway::cel::Site::Backend, streamed), &path, &mut errors);
                let fixed_path = fixed_path(&url_pattern);
                backends.push(BackendPlan {
                    hosts,
                    url_pattern,
                    fixed_path,
                    method: b.method.clone().unwrap_or_else(|| e.method.clone()),
                    encoding: b.encoding,
                    slot: backend_count,
                    shape: Shape::new(b),
                    headers: HeaderPolicy::compile(&e.input_headers, b.input_headers.as_deref()),
                    query: QueryPolicy::compile(&e.input_query_strings, b.input_query_strings.as_deref()),
                    http: b.http.clone(),
                    no_redirect,
                    redirect_tls,
                    plugin: martian.filter(|m| *m != crate::gateway::martian::Martian::default()).map(|m| {
                        crate::gateway::plugin::Binding {
                            name: "modifier/martian".into(),
                            plugin: std::sync::Arc::new(m),
                        }
                    }),
                    limit: b.rate_limit.as_ref().map(crate::gateway::ratelimit::CallLimit::compile),
                    cel: backend_cel.0,
                    cel_response: backend_cel.2,
                    breaker: b.circuit_breaker.as_ref().map(crate::gateway::breaker::Breaker::new),
                    upstreams,
                });
                backend_count += 1;
            }
            // The endpoint's CEL list: its request checks run in the exchange, its token
            // checks in the validator.
            let (request_checks, token_checks, response_checks) =
                endpoint_cel(e, config.endpoint_output(e), &format!("endpoints[{i}]"), &mut errors);
            endpoints.push(EndpointPlan {
                index: endpoints.len(),
                path: e.endpoint.clone(),
                method: e.method.clone(),
                timeout: config.endpoint_timeout(e),
                cache_ttl: e.cache_ttl.or(config.cache_ttl),
                output: config.endpoint_output(e),
                sequential: e.sequential,
                backends,
                guards: guards(e, &format!("endpoints[{i}]"), (env, &mut key_sources, token_checks), &mut errors),
                cel: request_checks,
                cel_response: response_checks,
                cel_sees: (
                    HeaderPolicy::compile(&e.input_headers, None),
                    QueryPolicy::compile(&e.input_query_strings, None),
                ),
                // It compiled when the file was read; a configuration built in code
                // is checked here.
                schema: e.json_schema.as_ref().and_then(|s| match crate::gateway::schema::BodySchema::compile(s) {
                    Ok(schema) => Some(std::sync::Arc::new(schema)),
                    Err(message) => {
                        let path = format!(r#"endpoints[{i}].extra_config["validation/json-schema"]"#);
                        errors.push(Diagnostic { path, message: format!("not a JSON schema: {message}") });
                        None
                    }
                }),
                noop_fields: crate::http1::Fields::render(
                    &std::iter::once((
                        http::HeaderName::from_static("x-krakend-completed"),
                        http::HeaderValue::from_static("false"),
                    ))
                    .collect(),
                ),
                static_response: e.static_response.clone(),
                flatmap: e.flatmap.clone(),
                propagated: e.propagated_params.iter().map(|p| (p.clone(), p.name())).collect(),
            });
        }
        if let Some(Err(diags)) = &mut root_profile {
            errors.append(diags);
        }
        let server_tls = match config.tls.as_ref().filter(|t| !t.disabled).map(|t| tls::server_profile(t, env)) {
            None => None,
            Some(Ok(profile)) => Some(profile),
            Some(Err(diags)) => {
                errors
                    .extend(diags.into_iter().map(|(sub, message)| Diagnostic { path: format!("tls.{sub}"), message }));
                None
            }
        };
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        let forward = config.forward_proxy.as_ref().map(crate::forward::ForwardPlan::new);
        let resolver =
            if uses_srv { resolver(&config.dns, env) } else { crate::resolve::srv::ResolverConfig::default() };
        let cors = config.cors.as_ref().map(crate::gateway::cors::Cors::compile);
        let bots = config.bot_detector.as_ref().and_then(|b| bot_detector(b, "", &mut errors)).map(Box::new);
        let tracer = config.tracing.as_ref().map(|t| Box::new(tracer(t, &config.endpoints)));
        Ok(Gateway {
            config,
            router,
            endpoints,
            backend_count,
            server_tls,
            proxy_env: env.proxy.clone(),
            forward,
            resolver,
            cors,
            bots,
            key_sources,
            tracer,
            quiet: false,
        })
    }

    /// The DNS cache's settings: the forward proxy's `dns_cache` (Envoy's defaults
    /// without one). The gateway's backend hosts go through the same cache.
    pub fn dns_cache_config(&self) -> crate::resolve::dns::DnsCacheConfig {
        self.config.forward_proxy.as_ref().map(|f| f.dns_cache).unwrap_or_default()
    }

    /// Every backend whose configuration names a client plugin other than the built-in
    /// `http-proxy`, in configuration order: what a loader binds.
    pub fn plugin_sites(&self) -> Vec<crate::gateway::plugin::Site> {
        let mut sites = Vec::new();
        for (i, e) in self.config.endpoints.iter().enumerate() {
            for (j, b) in e.backend.iter().enumerate() {
                let Some(p) = b.plugin.as_ref().filter(|p| p.name != "http-proxy") else { continue };
                let config = p.options.get(&p.name).map(|v| v.to_string().into_bytes()).unwrap_or_default();
                sites.push(crate::gateway::plugin::Site {
                    endpoint: i,
                    backend: j,
                    endpoint_path: e.endpoint.clone(),
                    name: p.name.clone(),
                    config,
                    upstreams: p.upstreams.iter().map(|(n, _)| n.clone()).collect(),
                    at: format!(r#"endpoints[{i}].backend[{j}].extra_config["plugin/http-client"].name"#),
                });
            }
        }
        sites
    }

    /// Binds `plugin` to backend `backend` of endpoint `endpoint` under `name` (an
    /// embedding application can bind any [`crate::gateway::plugin::ClientPlugin`] this way, to
    /// any backend). `false` when there is no such backend. A `no-op` endpoint with a
    /// plugin reads request and response bodies whole (the plugin sees them whole).
    pub fn bind_plugin(
        &mut self,
        endpoint: usize,
        backend: usize,
        name: &str,
        plugin: std::sync::Arc<dyn crate::gateway::plugin::ClientPlugin>,
    ) -> bool {
        let Some(ep) = self.endpoints.get_mut(endpoint) else { return false };
        let Some(b) = ep.backends.get_mut(backend) else { return false };
        // Beside `modifier/martian`, both run: martian first on the way out, last on
        // the way back (it wraps the client the plugin replaces, as in KrakenD).
        let plugin = match b.plugin.take() {
            Some(m) if m.name == "modifier/martian" => {
                std::sync::Arc::new(crate::gateway::plugin::Chain(vec![m.plugin, plugin]))
            }
            _ => plugin,
        };
        b.plugin = Some(crate::gateway::plugin::Binding { name: name.to_string(), plugin });
        true
    }

    /// Whether a client plugin bound here reads the connections' ports and local
    /// addresses: a driver then gives each connection its ends
    /// ([`crate::conn::Connection::set_ends`]; one `getsockname` per connection).
    pub fn plugins_read_ends(&self) -> bool {
        self.endpoints
            .iter()
            .flat_map(|ep| ep.backends.iter())
            .filter_map(|b| b.plugin.as_ref())
            .any(|b| b.plugin.reads_ends())
    }

    /// Routes a request: see [`crate::plan::route`].
    pub fn route<'r, 'p>(&'r self, method: &Method, path: &'p str) -> RouteMatch<'r, 'p> {
        self.router.lookup(method, path)
    }
}

/// `host:port` for `CONNECT` (an IPv6 address in brackets).
pub fn connect_authority(addr: &HostAddr) -> String {
    if addr.host.contains(':') {
        format!("[{}]:{}", addr.host, addr.port)
    } else {
        format!("{}:{}", addr.host, addr.port)
    }
}

/// A TLS profile, its errors as diagnostics under `at`: the one already in `compiled`
/// for equal settings (no settings are the defaults), else a new one, kept there.
fn compiled_profile(
    settings: Option<&config::ClientTls>,
    env: &Environment,
    at: &str,
    compiled: &mut Vec<(config::ClientTls, TlsProfile)>,
) -> Result<TlsProfile, Vec<Diagnostic>> {
    let settings = settings.cloned().unwrap_or_default();
    if let Some((_, profile)) = compiled.iter().find(|(s, _)| *s == settings) {
        return Ok(profile.clone());
    }
    let profile = tls::profile(Some(&settings), env).map_err(|errors| {
        errors.into_iter().map(|(sub, message)| Diagnostic { path: format!("{at}.{sub}"), message }).collect::<Vec<_>>()
    })?;
    compiled.push((settings, profile.clone()));
    Ok(profile)
}

/// An https host's TLS target under `profile` (whose errors are reported once: they
/// are taken out by the first host that meets them).
fn tls_target(
    addr: &HostAddr,
    profile: &mut Result<TlsProfile, Vec<Diagnostic>>,
    at: &str,
) -> Result<TlsTarget, Vec<Diagnostic>> {
    let profile = match profile {
        Ok(p) => p.clone(),
        Err(diags) => return Err(std::mem::take(diags)),
    };
    let server_name = ServerName::try_from(addr.host.clone()).map_err(|e| {
        vec![Diagnostic { path: at.to_string(), message: format!("{:?} cannot be a TLS server name: {e}", addr.host) }]
    })?;
    Ok(TlsTarget { profile, server_name })
}

/// A backend's own proxy: `"backend/http/client": {"proxy_address"}` or the built-in
/// `http-proxy` client plugin. Both at once is an error (which one would win is not
/// obvious to whoever reads the file).
fn own_proxy(b: &config::Backend, path: &str) -> Result<Option<Proxy>, Diagnostic> {
    let client = b.http_client.as_ref().and_then(|c| c.proxy_address.as_deref());
    let plugin = b.plugin.as_ref().filter(|p| p.name == "http-proxy").and_then(|p| p.proxy_address.as_deref());
    let (raw, at, source) = match (client, plugin) {
        (Some(_), Some(_)) => {
            return Err(Diagnostic {
                path: format!("{path}.extra_config"),
                message: "two proxies for one backend: \"backend/http/client\".proxy_address and the http-proxy plugin; keep one".into(),
            });
        }
        (Some(raw), None) => (raw, r#"extra_config["backend/http/client"].proxy_address"#, "proxy_address"),
        (None, Some(raw)) => (raw, r#"extra_config["plugin/http-client"].proxy_address"#, "http-proxy plugin"),
        (None, None) => return Ok(None),
    };
    Proxy::parse(raw, true, source)
        .map(Some)
        .map_err(|bad| Diagnostic { path: format!("{path}.{at}"), message: bad.into() })
}

/// The resolver settings: the configuration's nameservers, else resolv.conf's (the
/// C library's defaults when it cannot be read); the configuration's timeout and
/// attempts over resolv.conf's.
fn resolver(settings: &config::DnsSettings, env: &Environment) -> crate::resolve::srv::ResolverConfig {
    let mut conf = match settings.nameservers.is_empty() {
        true => (env.read_file)("/etc/resolv.conf")
            .map(|text| crate::resolve::srv::ResolverConfig::from_resolv_conf(&String::from_utf8_lossy(&text)))
            .unwrap_or_default(),
        false => {
            crate::resolve::srv::ResolverConfig { nameservers: settings.nameservers.clone(), ..Default::default() }
        }
    };
    if let Some(t) = settings.timeout {
        conf.timeout = t;
    }
    if let Some(n) = settings.attempts {
        conf.attempts = n;
    }
    conf
}

/// An `"sd": "dns"` host is a name to ask SRV records of: no port (the records give
/// it), no IP address.
fn srv_name(raw: &str, mut host: BackendHost, srv: bool) -> Result<BackendHost, BadValue> {
    if !srv {
        return Ok(host);
    }
    let authority = raw.split_once("://").map_or(raw, |(_, rest)| rest);
    if authority.split('/').next().unwrap_or("").contains(':') {
        return Err(BadValue(format!(
            "{raw:?}: with \"sd\": \"dns\" the SRV records give the port; list the name alone"
        )));
    }
    if crate::resolve::dns::ip_literal(&host.addr.host).is_ok() {
        return Err(BadValue(format!(
            "{raw:?}: with \"sd\": \"dns\" a host is a name to ask SRV records of, not an address"
        )));
    }
    host.srv = true;
    Ok(host)
}

/// A host as a `url.Modifier` with a `scheme` or `host` sends calls: there instead,
/// the `Host` field unchanged (as Go's client sends a request whose URL was changed).
fn redirected(
    host: BackendHost,
    martian: Option<&crate::gateway::martian::Martian>,
    disable_sanitize: bool,
) -> Result<BackendHost, BadValue> {
    let Some(m) = martian.filter(|m| m.scheme.is_some() || m.host.is_some()) else { return Ok(host) };
    let scheme = m.scheme.as_deref().unwrap_or(host.addr.scheme.as_str());
    let authority = m.host.as_deref().unwrap_or(&host.authority);
    let mut to = compile_host(&format!("{scheme}://{authority}{}", host.path_prefix), disable_sanitize)?;
    to.authority = host.authority;
    Ok(to)
}

fn compile_host(raw: &str, disable_sanitize: bool) -> Result<BackendHost, BadValue> {
    match HostAddr::parse(raw) {
        Ok(addr) => Ok(BackendHost {
            pool_key: pool_key(&addr, None, None),
            authority: addr.authority(),
            addr,
            path_prefix: String::new(),
            proxy: None,
            tls: None,
            connect: None,
            srv: false,
            dial: None,
        }),
        Err(strict) if disable_sanitize => {
            // Without sanitizing, a path after the authority is kept as a prefix.
            let after_scheme = raw.find("://").map_or(0, |i| i + 3);
            let split = raw[after_scheme..].find('/').map_or(raw.len(), |i| after_scheme + i);
            let (authority, prefix) = raw.split_at(split);
            let addr = HostAddr::parse(authority).map_err(|m| {
                BadValue(format!("{m} (Sluice reaches backends over http or https, even with disable_host_sanitize)"))
            })?;
            if prefix.contains(['?', '#']) {
                return Err(strict);
            }
            Ok(BackendHost {
                pool_key: pool_key(&addr, None, None),
                authority: addr.authority(),
                addr,
                path_prefix: prefix.trim_end_matches('/').to_string(),
                proxy: None,
                tls: None,
                connect: None,
                srv: false,
                dial: None,
            })
        }
        Err(m) => Err(m),
    }
}

fn compile_url_pattern(u: &str) -> Result<Vec<UrlPiece>, String> {
    let pieces = template::pieces(u)?;
    pieces
        .into_iter()
        .map(|p| match p {
            Piece::Literal(l) => Ok(UrlPiece::Literal(l.to_string())),
            Piece::Var(name) => Ok(match Placeholder::classify(name) {
                Placeholder::Param(p) => UrlPiece::Param(p.to_string()),
                Placeholder::InputHeader(h) => UrlPiece::InputHeader(
                    HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("invalid header name {h:?}"))?,
                ),
                Placeholder::Response { index, path } => {
                    UrlPiece::Response { index, path: path.split('.').map(str::to_string).collect() }
                }
                Placeholder::Jwt(claim) => UrlPiece::Jwt(claim.to_string()),
            }),
        })
        .collect()
}

/// An endpoint's `validation/cel` list (`at`: its JSON path), compiled by phase (each
/// `None` when it has none).
fn endpoint_cel(
    e: &crate::config::Endpoint,
    output: OutputEncoding,
    at: &str,
    errors: &mut Vec<Diagnostic>,
) -> CelPhases {
    use crate::gateway::cel::Site;
    let site = if e.jwt.is_some() { Site::TokenEndpoint } else { Site::Endpoint };
    cel_phases(&e.cel, (site, output == OutputEncoding::NoOp), at, errors)
}

/// Compiled CEL checks by phase: request, token, response.
type CelPhases = (
    Option<std::sync::Arc<crate::gateway::cel::Checks>>,
    Option<std::sync::Arc<crate::gateway::cel::Checks>>,
    Option<std::sync::Arc<crate::gateway::cel::Checks>>,
);

/// A `validation/cel` list (`at`: the JSON path of its level) written at `site`
/// (whose answer is `streamed` or not), compiled by phase.
fn cel_phases(
    list: &[String],
    (site, streamed): (crate::gateway::cel::Site, bool),
    at: &str,
    errors: &mut Vec<Diagnostic>,
) -> CelPhases {
    if list.is_empty() {
        return (None, None, None);
    }
    let some = |c: crate::gateway::cel::Checks| (!c.is_empty()).then(|| std::sync::Arc::new(c));
    match crate::gateway::cel::Phases::compile(list, site, streamed) {
        Ok(p) => (some(p.request), some(p.token), some(p.response)),
        Err((i, message)) => {
            errors
                .push(Diagnostic { path: format!(r#"{at}.extra_config["validation/cel"][{i}].check_expr"#), message });
            (None, None, None)
        }
    }
}

/// An endpoint's guard stage (`at`: its JSON path), in KrakenD's order: the bot
/// detector, the token (with the list's token checks), then the rate limits.
fn guards(
    e: &crate::config::Endpoint,
    at: &str,
    (env, sources, token_checks): (
        &Environment,
        &mut Vec<std::sync::Arc<crate::gateway::jwt::KeySource>>,
        Option<std::sync::Arc<crate::gateway::cel::Checks>>,
    ),
    errors: &mut Vec<Diagnostic>,
) -> crate::gateway::guard::Guards {
    use crate::gateway::guard::Guard;
    let mut list = Vec::new();
    if let Some(b) = e.bot_detector.as_ref().and_then(|b| bot_detector(b, at, errors)) {
        list.push(Guard::Bots(Box::new(b)));
    }
    if let Some(j) = &e.jwt {
        let at = format!(r#"{at}.extra_config["auth/validator"]"#);
        let compiled = jwt_keys(j, env, sources)
            .and_then(|keys| crate::gateway::jwt::Validator::compile(j, keys).map_err(|e| ("alg", e)));
        match compiled {
            Ok(v) => list.push(Guard::Jwt(std::sync::Arc::new(v.with_checks(token_checks)), j.operation_debug)),
            Err((field, message)) => errors.push(Diagnostic { path: format!("{at}.{field}"), message }),
        }
    }
    if let Some(r) = &e.rate_limit {
        list.push(Guard::RateLimit(crate::gateway::ratelimit::RouterLimit::compile(r)));
    }
    crate::gateway::guard::Guards::new(list)
}

/// The key set of an `auth/validator`: its file read, or its URL fetched, once per
/// distinct fetch (`sources`: those fetched so far) (the field at fault, and why not).
fn jwt_keys(
    j: &crate::config::JwtConfig,
    env: &Environment,
    sources: &mut Vec<std::sync::Arc<crate::gateway::jwt::KeySource>>,
) -> Result<std::sync::Arc<crate::gateway::jwt::KeySource>, (&'static str, String)> {
    use crate::gateway::jwt::{KeySet, KeySource};
    if let Some(path) = &j.jwk_local_path {
        let bytes = (env.read_file)(path).map_err(|e| ("jwk_local_path", e))?;
        let keys = KeySet::parse(&bytes).map_err(|e| ("jwk_local_path", format!("{path}: {e}")))?;
        return Ok(KeySource::fixed(keys));
    }
    let Some(url) = &j.jwk_url else { return Err(("jwk_url", "missing: no key set".into())) };
    let request =
        crate::tls::FetchRequest { url: url.clone(), ca: j.jwk_local_ca.clone(), insecure: j.disable_jwk_security };
    if let Some(known) = sources.iter().find(|s| s.is(&request, j.cache_duration, j.failed_jwk_key_cooldown)) {
        return Ok(known.clone());
    }
    let bytes = (env.fetch)(&request).map_err(|e| ("jwk_url", e))?;
    let keys = KeySet::parse(&bytes).map_err(|e| ("jwk_url", format!("{url}: {e}")))?;
    let source = KeySource::fetched(keys, request, j.cache_duration, j.failed_jwk_key_cooldown);
    sources.push(source.clone());
    Ok(source)
}

/// A bot detector (`at`: the JSON path of its level). Each pattern compiled when the
/// file was read; the set of them can still be too large to compile together.
fn bot_detector(
    c: &crate::config::BotDetectorConfig,
    at: &str,
    errors: &mut Vec<Diagnostic>,
) -> Option<crate::gateway::bots::BotDetector> {
    crate::gateway::bots::BotDetector::compile(c)
        .map_err(|e| {
            let dot = if at.is_empty() { "" } else { "." };
            errors.push(Diagnostic {
                path: format!(r#"{at}{dot}extra_config["security/bot-detector"].patterns"#),
                message: format!("the patterns do not compile together: {e}"),
            });
        })
        .ok()
}

/// What each endpoint traces under `settings`: an endpoint's own `proxy` layer or a
/// backend's own `backend` layer in place of the root's (krakend-otel replaces, never
/// merges), and backend names as krakend-otel writes them (`{id}` as `:id`).
fn tracer(settings: &crate::ops::trace::TraceSettings, endpoints: &[config::Endpoint]) -> crate::ops::trace::Tracer {
    use crate::ops::trace::{BackendTrace, EndpointTrace, Spans, Tracer};
    let endpoints = endpoints
        .iter()
        .map(|e| EndpointTrace {
            skip: settings.skips(&colon_pattern(&e.endpoint)),
            route: colon_pattern(&e.endpoint),
            server_attributes: e.trace_attributes.clone(),
            method: e.method.to_string(),
            proxy: e.trace_proxy.clone().unwrap_or_else(|| settings.proxy.clone()),
            backends: e
                .backend
                .iter()
                .map(|b| BackendTrace {
                    route: normalized_pattern(&b.url_pattern),
                    method: b.method.as_ref().unwrap_or(&e.method).to_string(),
                    layer: b.trace_backend.clone().unwrap_or_else(|| settings.backend.clone()),
                })
                .collect(),
        })
        .collect();
    Tracer { settings: settings.clone(), endpoints, spans: std::sync::Arc::new(Spans::default()) }
}

/// An endpoint pattern as lura hands it on to krakend-otel (gin's): each `{param}`
/// written `:param`, as written.
fn colon_pattern(pattern: &str) -> String {
    colons(pattern, false)
}

/// `pattern` with each `{param}` written `:param` (in lowercase with `lower`).
fn colons(pattern: &str, lower: bool) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        out.push_str(&rest[..open]);
        out.push(':');
        let name = &rest[open + 1..open + close];
        out.push_str(&if lower { name.to_lowercase() } else { name.to_string() });
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// A `url_pattern` as krakend-otel names its spans: each `{param}` written `:param`,
/// in lowercase (lura makes `{id}` `{{.Id}}`, krakend-otel lowercases it back).
fn normalized_pattern(pattern: &str) -> String {
    colons(pattern, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(QueryPolicy::compile(&s(&[]), None), QueryPolicy::Names(vec![]));
        assert_eq!(QueryPolicy::compile(&s(&["*"]), None), QueryPolicy::All);
        assert_eq!(QueryPolicy::compile(&s(&["*"]), Some(&s(&["a"]))), QueryPolicy::Names(s(&["a"])));
        assert_eq!(QueryPolicy::compile(&s(&["a", "b"]), Some(&s(&["b", "c"]))), QueryPolicy::Names(s(&["b"])));
        assert_eq!(QueryPolicy::compile(&s(&["a"]), Some(&s(&["*"]))), QueryPolicy::Names(s(&["a"])));
        assert_eq!(
            HeaderPolicy::compile(&s(&["X-A", "x-b"]), Some(&s(&["x-a"]))),
            HeaderPolicy::Names(vec![HeaderName::from_static("x-a")])
        );
    }
}
