//! What serves a request head: a built-in endpoint, a routed endpoint, or an answer
//! the router gives at once (404, 405, trailing-slash redirect).

use http::{HeaderValue, Method, header};

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
        if let Some(b) = builtin::lookup(path, self.config.debug_endpoint, self.config.echo_endpoint) {
            return Dispatch::Builtin(b);
        }
        match self.route(method, path) {
            RouteMatch::Found { endpoint, params } => match self.endpoints.get(endpoint) {
                Some(endpoint) => Dispatch::Endpoint(Route {
                    endpoint,
                    params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    streaming: endpoint.streams(),
                }),
                // The router and the endpoint list are compiled together: not reached.
                None => Dispatch::Reply(route::not_found()),
            },
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
            RouteMatch::MethodNotAllowed { allow } => Dispatch::Reply(route::method_not_allowed(&allow)),
            RouteMatch::NotFound => Dispatch::Reply(route::not_found()),
        }
    }
}
