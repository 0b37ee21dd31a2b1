//! What serves a request head: a built-in endpoint, a routed endpoint, or an answer
//! the router gives at once (404, 405, trailing-slash redirect).

use http::{HeaderValue, Method, StatusCode, header};

use crate::gateway::builtin::{self, Builtin};
use crate::plan::route::{self, RouteMatch};
use crate::plan::{EndpointPlan, Gateway};
use crate::request::Reply;

/// A routed endpoint.
#[derive(Debug, Clone)]
pub struct Route<'g> {
    pub endpoint: &'g EndpointPlan,
    /// Parameters, percent-encoded as they came.
    pub params: Vec<(String, String)>,
    /// `no-op`: the request body is streamed to the backend, not read first.
    pub streaming: bool,
}

/// What to do with a request head.
#[derive(Debug, Clone)]
pub enum Dispatch<'g> {
    Endpoint(Route<'g>),
    /// Read the body, then answer with [`builtin::answer`].
    Builtin(Builtin),
    Reply(Reply),
}

impl Gateway {
    /// Decides what serves a request: built-in endpoints first, then the router.
    pub fn dispatch(&self, method: &Method, path: &str, query: Option<&str>) -> Dispatch<'_> {
        let router = &self.config.router;
        if let Some(b) =
            builtin::lookup(path, router.health_path.as_deref(), self.config.debug_endpoint, self.config.echo_endpoint)
        {
            // The health page is gin's GET route: other methods get the router's 405
            // (its 404 when 405s are off).
            if b == Builtin::Health && method != Method::GET {
                return Dispatch::Reply(match router.method_not_allowed {
                    true => route::method_not_allowed("GET", router),
                    false => route::not_found(router),
                });
            }
            return Dispatch::Builtin(b);
        }
        match self.route(method, path) {
            RouteMatch::Found { endpoint, params } => {
                if router.refuse_encoded_params
                    && let Some(why) = params.iter().find_map(|(_, v)| encoded_param(v))
                {
                    return Dispatch::Reply(Reply::text(StatusCode::BAD_REQUEST, &why));
                }
                match self.endpoints.get(endpoint) {
                    Some(endpoint) => Dispatch::Endpoint(Route {
                        endpoint,
                        params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                        streaming: endpoint.streams(),
                    }),
                    // The router and the endpoint list are compiled together: not reached.
                    None => Dispatch::Reply(route::not_found(router)),
                }
            }
            RouteMatch::Redirect { path, status } => {
                let location = match query {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                };
                let mut reply = Reply::text(status, "");
                if let Ok(v) = HeaderValue::from_str(&location) {
                    reply.headers.insert(header::LOCATION, v);
                }
                Dispatch::Reply(reply)
            }
            RouteMatch::MethodNotAllowed { allow } => Dispatch::Reply(route::method_not_allowed(&allow, router)),
            RouteMatch::Options { allow } => {
                // gin's empty 200 (no Content-Type).
                let mut reply = Reply { status: StatusCode::OK, headers: http::HeaderMap::new(), body: Vec::new() };
                if let Ok(v) = HeaderValue::from_str(&allow) {
                    reply.headers.insert(header::ALLOW, v);
                }
                Dispatch::Reply(reply)
            }
            RouteMatch::NotFound => Dispatch::Reply(route::not_found(router)),
        }
    }
}

/// KrakenD's parameter check (lura's `paramChecker`), on by default: gin routes on the
/// decoded path, so a parameter that still holds a `%` after one decoding was encoded
/// twice (`%252F`), and one holding `?` or `#` had them encoded; both are refused, with
/// lura's words. Sluice routes on the path as sent and decodes a parameter once, so the
/// same check is made on the once-decoded value.
fn encoded_param(raw: &str) -> Option<String> {
    if !raw.contains('%') {
        return None;
    }
    let once = crate::gateway::upstream::percent_decode(raw);
    let b: &[u8] = &once;
    // lura also refuses a parameter holding `?` or `#` (gin's decoded path has them
    // only when they were encoded).
    if b.iter().any(|&c| c == b'?' || c == b'#') && !b.contains(&b'%') {
        return Some("error: encoded url params".to_string());
    }
    let at = b.iter().position(|&c| c == b'%')?;
    let escape = &b[at..b.len().min(at + 3)];
    let valid = escape.len() == 3 && escape[1..].iter().all(u8::is_ascii_hexdigit);
    Some(if valid {
        "error: encoded url params".to_string()
    } else {
        // Go's url.PathUnescape error, quoted as Go quotes it.
        format!("error: invalid URL escape {:?}", String::from_utf8_lossy(escape))
    })
}
