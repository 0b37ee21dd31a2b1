//! Endpoint matching, as KrakenD's router (gin) does it.
//!
//! - `{var}` matches one whole path segment (with `disable_rest`, a placeholder may sit
//!   inside a segment: `/file.{ext}`); a static segment wins over a parameter.
//! - One tree per method, so `GET /users/{id}` and `DELETE /users/{user}` coexist.
//! - A miss whose path with the trailing slash toggled matches is a redirect: 301 for
//!   GET, 307 otherwise (the method and body are kept).
//! - Then, as gin's `RedirectFixedPath` (on in KrakenD), a miss whose cleaned path
//!   (`.`, `..` and repeated slashes resolved) matches a route with the case of its
//!   static segments ignored, the trailing slash either way, redirects the same way to
//!   the route's own spelling (`/StAtic` -> `/static`; a parameter keeps its value).
//! - Then a path known under other methods is a 405 with `Allow`; anything else is 404.
//! - `extra_config.router` turns each of these off as in KrakenD
//!   (`disable_redirect_trailing_slash`, `disable_redirect_fixed_path`,
//!   `disable_handle_method_not_allowed`: see [`Rules`]), and `error_body` gives the
//!   404 and 405 JSON bodies.
//!
//! The path given to [`Router::lookup`] is the raw request path, without the query and
//! still percent-encoded, so `%2F` inside a parameter never splits it. Parameter values
//! come back percent-encoded; decoding is the business of whoever uses them.

use std::collections::HashMap;

use http::{HeaderValue, Method, StatusCode};

use crate::config::RouterOptions;
use crate::request::Reply;

/// Body of the 404 answer (KrakenD's, byte for byte).
pub const NOT_FOUND_BODY: &str = "404 page not found";
/// Body of the 405 answer (KrakenD's, byte for byte).
pub const METHOD_NOT_ALLOWED_BODY: &str = "405 method not allowed";
/// The `Content-Type` of both (gin's, without a charset).
pub const ROUTER_TEXT: &str = "text/plain";

/// The router's own answers, as gin writes them: `text/plain`, no charset.
pub fn router_reply(status: StatusCode, body: &str) -> Reply {
    Reply::typed(status, ROUTER_TEXT, body.as_bytes().to_vec())
}

/// KrakenD's 404: gin's, with `X-KrakenD-Completed: false` (KrakenD CE's NoRoute
/// handler); `error_body`'s `404` as JSON when it is set.
pub fn not_found(opts: &RouterOptions) -> Reply {
    router_error(StatusCode::NOT_FOUND, NOT_FOUND_BODY, opts.error_body_404.as_deref())
}

/// KrakenD's 405: gin's, with `Allow` and `X-KrakenD-Completed: false` (KrakenD CE's
/// NoMethod handler); `error_body`'s `405` as JSON when it is set.
pub fn method_not_allowed(allow: &str, opts: &RouterOptions) -> Reply {
    let mut reply =
        router_error(StatusCode::METHOD_NOT_ALLOWED, METHOD_NOT_ALLOWED_BODY, opts.error_body_405.as_deref());
    if let Ok(v) = HeaderValue::from_str(allow) {
        reply.headers.insert(http::header::ALLOW, v);
    }
    reply
}

fn router_error(status: StatusCode, text: &str, json: Option<&str>) -> Reply {
    let mut reply = match json {
        Some(body) => Reply::typed(status, crate::gateway::response::JSON, body.as_bytes().to_vec()),
        None => router_reply(status, text),
    };
    reply.headers.insert("x-krakend-completed", HeaderValue::from_static("false"));
    reply
}

/// Which of gin's answers to a miss are on (all of them by default, as in KrakenD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub trailing_slash: bool,
    pub fixed_path: bool,
    pub method_not_allowed: bool,
    /// `auto_options`: every endpoint path answers `OPTIONS`, which an `Allow` lists.
    pub auto_options: bool,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules { trailing_slash: true, fixed_path: true, method_not_allowed: true, auto_options: false }
    }
}

impl Rules {
    pub fn of(opts: &RouterOptions) -> Rules {
        Rules {
            trailing_slash: opts.redirect_trailing_slash,
            fixed_path: opts.redirect_fixed_path,
            method_not_allowed: opts.method_not_allowed,
            auto_options: opts.auto_options,
        }
    }
}

/// The compiled route table.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// One tree per method, in [`METHOD_ORDER`] order; the value is the endpoint index.
    tables: Vec<(Method, matchit::Router<usize>)>,
    /// Each method's route patterns, for the fixed-path redirect (a miss only).
    patterns: Vec<(Method, Vec<String>)>,
    pub rules: Rules,
}

/// The order methods are listed in an `Allow` header.
const METHOD_ORDER: [Method; 5] = [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];

/// Why an endpoint cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// Its index in `endpoints[]`.
    pub endpoint: usize,
    pub message: String,
}

impl RouteError {
    /// The error as a configuration diagnostic's path and message.
    pub fn json_path(&self) -> String {
        format!("endpoints[{}].endpoint", self.endpoint)
    }
}

/// The parameters of a matched route, percent-encoded as they came.
#[derive(Debug, Clone)]
pub struct Params<'r, 'p>(matchit::Params<'r, 'p>);

impl<'r, 'p> Params<'r, 'p> {
    pub fn get(&self, name: &str) -> Option<&'p str> {
        self.0.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'r str, &'p str)> + '_ {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the router says about a request.
#[derive(Debug)]
pub enum RouteMatch<'r, 'p> {
    /// Serve endpoint number `endpoint` with these parameters.
    Found {
        endpoint: usize,
        params: Params<'r, 'p>,
    },
    /// Redirect to `path` (the caller appends the query string).
    Redirect {
        path: String,
        status: StatusCode,
    },
    /// The path exists under other methods; `allow` is the `Allow` header value.
    MethodNotAllowed {
        allow: String,
    },
    /// `auto_options`: an `OPTIONS` request for an endpoint path; 200 with `Allow`.
    Options {
        allow: String,
    },
    NotFound,
}

/// Whether a browser would read this path, as a `Location`, as a network-path
/// reference (another host): it starts with two slashes, either way round.
fn other_origin(path: &str) -> bool {
    matches!(path.as_bytes(), [b'/' | b'\\', b'/' | b'\\', ..])
}

/// Named parameters one route may have: the router (matchit) renames them `{a}`..`{y}`
/// inside and panics past that.
pub const MAX_PARAMS: usize = 25;

impl Router {
    /// Builds the table from `(index in endpoints[], method, path)` triples. Errors name
    /// the endpoint by its index: duplicates and conflicting patterns.
    pub fn build<'a>(
        endpoints: impl IntoIterator<Item = (usize, &'a Method, &'a str)>,
    ) -> Result<Router, Vec<RouteError>> {
        let mut router = Router::default();
        let mut errors = Vec::new();
        let mut declared: HashMap<(Method, &'a str), usize> = HashMap::new();
        for (i, method, path) in endpoints {
            let key = (method.clone(), path);
            if let Some(first) = declared.get(&key) {
                errors.push(RouteError {
                    endpoint: i,
                    message: format!("duplicate route {method} {path}: endpoints[{first}] declares it too"),
                });
                continue;
            }
            let params = path.as_bytes().windows(2).filter(|w| w[0] == b'{' && w[1] != b'*').count();
            if params > MAX_PARAMS {
                errors.push(RouteError {
                    endpoint: i,
                    message: format!(
                        "route {method} {path} has {params} parameters: at most {MAX_PARAMS} are supported"
                    ),
                });
                continue;
            }
            let table = router.table_mut(method);
            match table.insert(path, i) {
                Ok(()) => {
                    declared.insert(key, i);
                    match router.patterns.iter_mut().find(|(m, _)| m == method) {
                        Some((_, list)) => list.push(path.to_string()),
                        None => router.patterns.push((method.clone(), vec![path.to_string()])),
                    }
                }
                Err(matchit::InsertError::Conflict { with }) => {
                    let owner = declared
                        .get(&(method.clone(), with.as_str()))
                        .map(|j| format!(" (endpoints[{j}])"))
                        .unwrap_or_default();
                    errors.push(RouteError {
                        endpoint: i,
                        message: format!("route {method} {path} conflicts with {with}{owner}"),
                    });
                }
                Err(other) => errors.push(RouteError {
                    endpoint: i,
                    message: format!("route {method} {path} cannot be routed: {other}"),
                }),
            }
        }
        if errors.is_empty() { Ok(router) } else { Err(errors) }
    }

    fn table_mut(&mut self, method: &Method) -> &mut matchit::Router<usize> {
        let pos = match self.tables.iter().position(|(m, _)| m == method) {
            Some(pos) => pos,
            None => {
                let rank = |m: &Method| METHOD_ORDER.iter().position(|x| x == m).unwrap_or(METHOD_ORDER.len());
                let at = self.tables.iter().position(|(m, _)| rank(m) > rank(method)).unwrap_or(self.tables.len());
                self.tables.insert(at, (method.clone(), matchit::Router::new()));
                at
            }
        };
        &mut self.tables[pos].1
    }

    fn table(&self, method: &Method) -> Option<&matchit::Router<usize>> {
        self.tables.iter().find(|(m, _)| m == method).map(|(_, t)| t)
    }

    /// Matches a request. `path` is the raw path, without the query string.
    pub fn lookup<'r, 'p>(&'r self, method: &Method, path: &'p str) -> RouteMatch<'r, 'p> {
        let table = self.table(method);
        if let Some(t) = table {
            if let Ok(m) = t.at(path) {
                return RouteMatch::Found { endpoint: *m.value, params: Params(m.params) };
            }
            if path.len() > 1 && (self.rules.trailing_slash || self.rules.fixed_path) {
                let toggled = match path.strip_suffix('/') {
                    Some(p) => p.to_string(),
                    None => format!("{path}/"),
                };
                // Never a Location a browser reads as another origin: `//evil.example`
                // and `/\evil.example` both lead to http://evil.example/.
                let status =
                    if method == Method::GET { StatusCode::MOVED_PERMANENTLY } else { StatusCode::TEMPORARY_REDIRECT };
                if self.rules.trailing_slash && t.at(&toggled).is_ok() && !other_origin(&toggled) {
                    return RouteMatch::Redirect { path: toggled, status };
                }
                let patterns = self.patterns.iter().find(|(m, _)| m == method).map_or(&[][..], |(_, p)| p);
                if self.rules.fixed_path
                    && let Some(fixed) = fixed_path(patterns, path)
                    && fixed != path
                    && t.at(&fixed).is_ok()
                    && !other_origin(&fixed)
                {
                    return RouteMatch::Redirect { path: fixed, status };
                }
            }
        }
        if method == Method::OPTIONS && self.rules.auto_options {
            // gin's OPTIONS route for the path: 200, the methods sorted by name.
            let mut methods: Vec<&str> =
                self.tables.iter().filter(|(_, t)| t.at(path).is_ok()).map(|(m, _)| m.as_str()).collect();
            if !methods.is_empty() {
                methods.sort_unstable();
                return RouteMatch::Options { allow: methods.join(", ") };
            }
        }
        if !self.rules.method_not_allowed {
            return RouteMatch::NotFound;
        }
        let mut allow = String::new();
        for (m, t) in &self.tables {
            if m != method && t.at(path).is_ok() {
                if !allow.is_empty() {
                    allow.push_str(", ");
                }
                allow.push_str(m.as_str());
            }
        }
        if self.rules.auto_options && !allow.is_empty() {
            allow.push_str(", OPTIONS");
        }
        if allow.is_empty() { RouteMatch::NotFound } else { RouteMatch::MethodNotAllowed { allow } }
    }
}

/// `path` with `.`, `..` and empty segments resolved, as Go's `path.Clean` (gin's
/// `cleanPath`): rooted, and a trailing slash kept.
fn clean_path(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut cleaned = format!("/{}", out.join("/"));
    if path.ends_with('/') && cleaned.len() > 1 {
        cleaned.push('/');
    }
    cleaned
}

/// The route `path` means with its case and shape fixed (gin's
/// `findCaseInsensitivePath` over the cleaned path, the trailing slash either way): a
/// static segment matches whatever its case and is written as the route writes it, a
/// `{param}` segment matches any non-empty segment and keeps it. Of several, the one
/// with the most static segments; patterns with a placeholder inside a segment or a
/// catch-all are not tried.
fn fixed_path(patterns: &[String], path: &str) -> Option<String> {
    let cleaned = clean_path(path);
    let toggled = match cleaned.strip_suffix('/') {
        Some(p) if !p.is_empty() => p.to_string(),
        Some(_) => cleaned.clone(),
        None => format!("{cleaned}/"),
    };
    let mut best: Option<(usize, String)> = None;
    for candidate in [&cleaned, &toggled] {
        let segments: Vec<&str> = candidate.split('/').collect();
        for pattern in patterns {
            let wanted: Vec<&str> = pattern.split('/').collect();
            if wanted.len() != segments.len() {
                continue;
            }
            let mut fixed = Vec::with_capacity(wanted.len());
            let mut statics = 0;
            let fits = wanted.iter().zip(&segments).all(|(w, s)| {
                let whole_param = w.len() > 2 && w.starts_with('{') && w.ends_with('}') && !w[1..].contains(['{', '*']);
                if whole_param {
                    fixed.push(*s);
                    !s.is_empty()
                } else if w.contains(['{', '}']) {
                    false
                } else {
                    statics += 1;
                    fixed.push(*w);
                    w.eq_ignore_ascii_case(s)
                }
            });
            if fits && best.as_ref().is_none_or(|(n, _)| statics > *n) {
                best = Some((statics, fixed.join("/")));
            }
        }
        if best.is_some() {
            break;
        }
    }
    best.map(|(_, path)| path)
}
