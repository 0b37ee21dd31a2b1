//! HTTP client plugins (KrakenD's `plugin/http-client`, seed 002): one per backend, asked
//! just before a backend call is sent, answering it itself or letting it through, and
//! seeing the backend's answer on its way back.
//!
//! Core calls a plugin through [`ClientPlugin`], synchronously, from
//! [`crate::gateway::exchange::Exchange`], and knows nothing of what runs behind it: the
//! proxy-wasm host (crate `sluice-plugins`, WebAssembly on wasmtime) implements it, and
//! so can a plain Rust object an embedding application binds with
//! [`crate::Gateway::bind_plugin`].
//!
//! The life of one backend call with a plugin bound:
//! 1. [`ClientPlugin::on_request`] gets the call as it would be sent ([`BackendRequest`]:
//!    method, path, query, `Host` authority, end-to-end header fields, the whole body)
//!    and may change any of it. It answers [`Verdict::Continue`] (the possibly changed
//!    request is sent) or [`Verdict::Respond`] (that response takes the place of the
//!    backend's; nothing is sent, no connection opened).
//!    It may also answer [`Verdict::Wait`] with calls out ([`CallOut`]) to upstreams of
//!    its binding: the exchange makes them as calls of its own and hands each answer to
//!    [`ClientPlugin::on_call_response`], which resumes the call, answers it, or waits
//!    on.
//! 2. The backend's whole response comes back ([`BackendResponse`]) and
//!    [`ClientPlugin::on_response`] may change its status, header fields and body before
//!    the gateway decodes it (`no-op` endpoints read it whole when a plugin is bound).
//! 3. [`ClientPlugin::on_done`] ends the call in every case (answered, failed, timed
//!    out, abandoned), so the plugin can drop what it keeps per call.
//!
//! A plugin that fails ([`PluginFault`]: a trap, a time or memory budget overrun, an
//! error of its own) fails that call only: it settles as a `500` from the plugin, and
//! the endpoint answers as for any backend answering 500. The plugin logs the details;
//! the 500's body names only the plugin.
//!
//! Framing is the gateway's: `Content-Length` and `Transfer-Encoding` are not among the
//! header fields a plugin sees, and whatever it sets of them (and of the hop-by-hop
//! fields) is ignored; the body length is counted again after it ran.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// A backend call as it is about to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRequest {
    pub method: Method,
    /// The path as sent (percent-encoded), starting with `/`.
    pub path: String,
    /// The query string as sent, without `?`.
    pub query: Option<String>,
    /// The `Host` field: the backend's authority. Changing it does not change where
    /// the gateway connects.
    pub authority: String,
    /// End-to-end header fields, as the backend's header policy lets them through.
    pub headers: HeaderMap,
    /// The whole request body (empty for a call that sends none).
    pub body: Vec<u8>,
    /// `http` or `https`: how the backend is reached. Read only: a plugin changing it
    /// changes nothing.
    pub scheme: &'static str,
    /// The backend's `host:port` the call goes to (the backend's, not a proxy's).
    pub upstream: String,
    /// The client as the gateway takes it: the peer's address, or the one
    /// `X-Forwarded-For` names under the router's trusted proxies.
    pub client: IpAddr,
    /// The client's port, when `client` is the connection's peer and the driver gave
    /// the connection's ends.
    pub client_port: Option<u16>,
    /// The gateway's address and port the client connected to, when the driver gave
    /// them.
    pub local: Option<std::net::SocketAddr>,
    /// The plugin's own: set in [`ClientPlugin::on_request`], handed back unchanged
    /// with the rest of the call (e.g. which per-call context it opened).
    pub ticket: u64,
}

impl Default for BackendRequest {
    fn default() -> BackendRequest {
        BackendRequest {
            method: Method::GET,
            path: "/".into(),
            query: None,
            authority: String::new(),
            headers: HeaderMap::new(),
            body: Vec::new(),
            scheme: "http",
            upstream: String::new(),
            client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            client_port: None,
            local: None,
            ticket: 0,
        }
    }
}

impl BackendRequest {
    /// Path and query as the request target (`/a/b?c=d`).
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// A whole backend response, or one a plugin gives in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// What a plugin says of a call it was asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send the call (as the plugin left it).
    Continue,
    /// Do not call the backend: this is its answer.
    Respond(BackendResponse),
    /// Hold the call: make these calls out first (none: the plugin waits for ones it
    /// made before). Each answer, or its failure, comes back through
    /// [`ClientPlugin::on_call_response`]. A plugin that waits with no call out left
    /// fails its call (nothing would ever resume it).
    Wait(Vec<CallOut>),
}

/// A call a plugin makes to an upstream of its binding (proxy-wasm's
/// `proxy_http_call`), through the gateway's backend client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOut {
    /// The plugin's own name for it, handed back with the answer.
    pub token: u32,
    /// One of the binding's `upstreams`.
    pub upstream: String,
    pub method: Method,
    /// Path and query.
    pub target: String,
    /// The `Host` field.
    pub authority: String,
    /// End-to-end fields (framing is the gateway's).
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// Its answer is awaited this long at most (and never past the endpoint's timeout).
    pub timeout: Duration,
}

/// A plugin failed on a call: the call fails with 500. The text is for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFault(pub String);

impl fmt::Display for PluginFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client plugin bound to a backend. Calls come from every shard (thread) at once:
/// an implementation keeps per-thread state where it needs `&mut` (the proxy-wasm host
/// keeps one WebAssembly instance per thread), never a lock held across a call.
pub trait ClientPlugin: Send + Sync + fmt::Debug {
    /// The call is about to be sent: change it, let it through, or answer it.
    fn on_request(&self, call: &mut BackendRequest) -> Result<Verdict, PluginFault>;

    /// The backend answered `call` (as sent): change the answer before it is decoded.
    fn on_response(&self, call: &BackendRequest, response: &mut BackendResponse) -> Result<(), PluginFault> {
        let _ = (call, response);
        Ok(())
    }

    /// The call is over, however it ended.
    fn on_done(&self, call: &BackendRequest) {
        let _ = call;
    }

    /// A call out the plugin made for `call` ([`Verdict::Wait`]) answered (`None`: it
    /// failed or timed out): resume the call, answer it, or wait on.
    fn on_call_response(
        &self,
        call: &mut BackendRequest,
        token: u32,
        response: Option<BackendResponse>,
    ) -> Result<Verdict, PluginFault> {
        let _ = (call, token, response);
        Err(PluginFault("an answer to a call out it never made".into()))
    }

    /// Whether the plugin reads the connection's ports and local address (a driver
    /// then finds them for each connection). Default: no.
    fn reads_ends(&self) -> bool {
        false
    }

    /// Whether the plugin may ever tick (a driver keeps a ticker only for such
    /// plugins). Default: no.
    fn may_tick(&self) -> bool {
        false
    }

    /// How often the plugin wants [`ClientPlugin::on_tick`] (proxy-wasm's
    /// `set_tick_period_milliseconds`); `None`: never. Read at each tick.
    fn tick_period(&self) -> Option<Duration> {
        None
    }

    /// A tick, for this thread's part of the plugin (see [`crate::gateway::ticks`]).
    fn on_tick(&self) {}

    /// A tick for every thread's part of the plugin at once (a driver whose tasks
    /// move between threads ticks this way).
    fn on_tick_all(&self) {
        self.on_tick();
    }

    /// The metrics the plugin defined, for the admin pages (`/stats`,
    /// `/stats/prometheus`). Two bindings of one plugin may give the same metrics: the
    /// pages show each `(plugin, name)` once.
    fn metrics(&self) -> Vec<Metric> {
        Vec::new()
    }
}

/// A metric a plugin defined (proxy-wasm's `define_metric`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Metric {
    /// The plugin's name (the one bindings use).
    pub plugin: String,
    /// The name the plugin gave it.
    pub name: String,
    pub value: MetricValue,
}

/// What a metric holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MetricValue {
    /// Only goes up.
    Counter(u64),
    /// Set, or moved up and down.
    Gauge(u64),
    /// Values recorded: how many, and their sum.
    Histogram { count: u64, sum: u64 },
}

/// Client plugins run in turn on one call: on the way out in order, on the way back in
/// reverse (martian wraps the client a plugin replaces, as in KrakenD).
#[derive(Debug)]
pub struct Chain(pub Vec<Arc<dyn ClientPlugin>>);

impl ClientPlugin for Chain {
    fn on_request(&self, call: &mut BackendRequest) -> Result<Verdict, PluginFault> {
        for (i, p) in self.0.iter().enumerate() {
            match p.on_request(call) {
                Ok(Verdict::Continue) => {}
                other => {
                    // An answer (or a fault) from this one: the ones before see it back.
                    let mut answer = match other {
                        Ok(Verdict::Respond(r)) => r,
                        // Calls out come back to the last plugin (see on_call_response).
                        Ok(Verdict::Wait(calls)) => return Ok(Verdict::Wait(calls)),
                        Err(e) => return Err(e),
                        Ok(Verdict::Continue) => unreachable!("matched above"),
                    };
                    for q in self.0[..i].iter().rev() {
                        q.on_response(call, &mut answer)?;
                    }
                    return Ok(Verdict::Respond(answer));
                }
            }
        }
        Ok(Verdict::Continue)
    }

    fn on_response(&self, call: &BackendRequest, response: &mut BackendResponse) -> Result<(), PluginFault> {
        for p in self.0.iter().rev() {
            p.on_response(call, response)?;
        }
        Ok(())
    }

    fn on_done(&self, call: &BackendRequest) {
        for p in &self.0 {
            p.on_done(call);
        }
    }

    fn metrics(&self) -> Vec<Metric> {
        self.0.iter().flat_map(|p| p.metrics()).collect()
    }

    fn may_tick(&self) -> bool {
        self.0.iter().any(|p| p.may_tick())
    }

    fn reads_ends(&self) -> bool {
        self.0.iter().any(|p| p.reads_ends())
    }

    fn tick_period(&self) -> Option<Duration> {
        self.0.iter().filter_map(|p| p.tick_period()).min()
    }

    fn on_tick(&self) {
        for p in &self.0 {
            p.on_tick();
        }
    }

    fn on_tick_all(&self) {
        for p in &self.0 {
            p.on_tick_all();
        }
    }

    /// Only the last plugin of a chain can call out (a proxy-wasm plugin is bound after
    /// `modifier/martian`, which never does): its answers go to it.
    fn on_call_response(
        &self,
        call: &mut BackendRequest,
        token: u32,
        response: Option<BackendResponse>,
    ) -> Result<Verdict, PluginFault> {
        let Some((last, before)) = self.0.split_last() else {
            return Err(PluginFault("an empty chain made no calls out".into()));
        };
        match last.on_call_response(call, token, response)? {
            // Its answer goes back through the ones before, as one made at once would.
            Verdict::Respond(mut answer) => {
                for p in before.iter().rev() {
                    p.on_response(call, &mut answer)?;
                }
                Ok(Verdict::Respond(answer))
            }
            other => Ok(other),
        }
    }
}

/// A plugin bound to a backend, with the name it was bound under (for logs and the 500).
#[derive(Debug, Clone)]
pub struct Binding {
    pub name: String,
    pub plugin: Arc<dyn ClientPlugin>,
}

/// Where a configuration binds a plugin: a backend whose
/// `extra_config."plugin/http-client"` names one (other than the built-in `http-proxy`).
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub endpoint: usize,
    pub backend: usize,
    /// The endpoint's path, for `[BACKEND: /path] Injecting plugin NAME`.
    pub endpoint_path: String,
    /// The name the backend asks for.
    pub name: String,
    /// The plugin's configuration: the object under its name, as JSON (empty when
    /// there is none).
    pub config: Vec<u8>,
    /// The names of the upstreams it may call out to.
    pub upstreams: Vec<String>,
    /// The JSON path of `name`, for errors.
    pub at: String,
}

/// Header fields a plugin may not set: the gateway frames the message and owns the hop
/// (the hop-by-hop fields of [`crate::http1::HOP_BY_HOP`], `Content-Length`, `Host`).
pub fn gateway_owned(name: &HeaderName) -> bool {
    crate::http1::is_hop_by_hop_name(name.as_str().as_bytes()) || matches!(name.as_str(), "content-length" | "host")
}

/// A plugin's answer to a call it failed on: 500, naming the plugin only.
pub fn fault_response(name: &str) -> BackendResponse {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    BackendResponse {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        headers,
        body: format!("plugin {name} failed").into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what it is asked, under its name; `answers` answers the call itself.
    #[derive(Debug)]
    struct Rec(&'static str, bool, Arc<Mutex<Vec<String>>>);

    impl ClientPlugin for Rec {
        fn on_request(&self, _: &mut BackendRequest) -> Result<Verdict, PluginFault> {
            self.2.lock().unwrap().push(format!("{} request", self.0));
            Ok(match self.1 {
                true => Verdict::Respond(BackendResponse {
                    status: StatusCode::OK,
                    headers: HeaderMap::new(),
                    body: Vec::new(),
                }),
                false => Verdict::Continue,
            })
        }

        fn on_response(&self, _: &BackendRequest, _: &mut BackendResponse) -> Result<(), PluginFault> {
            self.2.lock().unwrap().push(format!("{} response", self.0));
            Ok(())
        }

        fn on_done(&self, _: &BackendRequest) {
            self.2.lock().unwrap().push(format!("{} done", self.0));
        }
    }

    #[test]
    fn a_chain_runs_out_in_order_and_back_in_reverse() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let call = BackendRequest { authority: "a".into(), ..BackendRequest::default() };
        let chain = |answers: bool| {
            Chain(vec![Arc::new(Rec("outer", false, seen.clone())), Arc::new(Rec("inner", answers, seen.clone()))])
        };
        let (c, mut call2) = (chain(false), call.clone());
        assert_eq!(c.on_request(&mut call2), Ok(Verdict::Continue));
        let mut r = BackendResponse { status: StatusCode::OK, headers: HeaderMap::new(), body: Vec::new() };
        c.on_response(&call2, &mut r).unwrap();
        c.on_done(&call2);
        assert_eq!(
            *seen.lock().unwrap(),
            ["outer request", "inner request", "inner response", "outer response", "outer done", "inner done"]
        );
        // The inner one answers: the outer one sees that answer come back.
        seen.lock().unwrap().clear();
        let mut call3 = call.clone();
        assert!(matches!(chain(true).on_request(&mut call3), Ok(Verdict::Respond(_))));
        assert_eq!(*seen.lock().unwrap(), ["outer request", "inner request", "outer response"]);
    }
}
