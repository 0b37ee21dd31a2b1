//! The life of one client request, as a state machine driven with virtual time.
//!
//! A driver (io_uring or tokio) does this:
//! 1. parse a request head, then [`Gateway::dispatch`] it: an endpoint, a built-in
//!    endpoint, or an immediate [`Reply`] (404, 405, redirect);
//! 2. read the body (whole, or leave it streaming for `no-op` endpoints, as
//!    [`Route::streaming`] says), then [`Exchange::new`];
//! 3. loop on [`Exchange::poll`]: [`Action::Call`] a backend (it may make several calls
//!    before waiting), [`Action::Wait`] until an instant or a backend result, then feed
//!    results back with [`Exchange::handle_response`], [`Exchange::handle_head`]
//!    (`no-op`), [`Exchange::handle_failure`] or [`Exchange::handle_timeout`];
//! 4. [`Action::Respond`] ends it with a complete response, [`Action::Stream`] by
//!    passing the backend's response through. Calls still in flight then are
//!    abandoned: the driver drops them.
//!
//! After every `handle_*` call, drain `poll` until it says [`Action::Wait`] (nothing
//! more until a result or the deadline) or the request is answered. The canonical
//! driver loop, with a backend answered in place:
//!
//! ```
//! use std::time::{Instant, SystemTime};
//! use http::{HeaderMap, Method, StatusCode};
//! use sluice_core::Gateway;
//! use sluice_core::gateway::dispatch::Dispatch;
//! use sluice_core::gateway::exchange::{Action, Exchange};
//! use sluice_core::http1::Head;
//! use sluice_core::request::{ClientRequest, RequestBody};
//! use sluice_core::gateway::upstream::Balancer;
//!
//! let gw = Gateway::load(r#"{"version": 3, "host": ["http://users:8080"],
//!     "endpoints": [{"endpoint": "/u/{id}", "backend": [{"url_pattern": "/users/{id}", "group": "user"}]}]}"#)
//!     .unwrap().gateway;
//! let balancer = Balancer::new(gw.backend_count); // one per shard
//! let Dispatch::Endpoint(route) = gw.dispatch(&Method::GET, "/u/7", None) else { unreachable!() };
//! let req = ClientRequest { method: Method::GET, path: "/u/7".into(), query: None,
//!     headers: Head::default(), peer: "127.0.0.1".parse().unwrap(), ends: None, body: RequestBody::None, token: None };
//! let mut ex = Exchange::new(&gw, route, req, (Instant::now(), SystemTime::now()));
//! let reply = loop {
//!     match ex.poll(&balancer) {
//!         Action::Call(call) => {
//!             let mut head = Vec::new();
//!             ex.write_head(&call, &mut head).unwrap();
//!             assert!(head.starts_with(b"GET /users/7 HTTP/1.1\r\nhost: users:8080\r\n"));
//!             // A real driver writes `head` to a pooled connection and reads the answer
//!             // later; here it comes back at once.
//!             ex.handle_response(call.id, StatusCode::OK, HeaderMap::new(), br#"{"id":7}"#.to_vec());
//!         }
//!         Action::Wait(deadline) => {
//!             // Sleep until a backend result or `deadline`; on the deadline:
//!             ex.handle_timeout(deadline);
//!         }
//!         Action::Respond(reply) => break reply,
//!         Action::Stream(_) | Action::Done => unreachable!("not a no-op endpoint"),
//!     }
//! };
//! assert_eq!(reply.body, br#"{"user":{"id":7}}"#);
//! ```
//!
//! Status rules (KrakenD's): only 200 and 201 from a backend count as success. Some
//! parts missing → 200 with `X-KrakenD-Completed: false`; all there (and something in
//! the merged object) → `true`, plus `Cache-Control: public, max-age=N` with a
//! `cache_ttl`; no part at all → 500, with the reasons (one line per backend, see
//! `reason`) in the body only under `extra_config.router.return_error_msg`. A `no-op`
//! backend of an aggregating endpoint is called and adds nothing, whatever its status.
//! `backend/http` `return_error_code` passes a failing backend's status (with its body
//! when `return_error_msg` is set); `return_error_details` adds an `error_<alias>` part.
//! Sequential: a failing backend stops the chain; the first failing fails the request.
//! `no-op`: the backend's status, headers and body, streamed; a backend that fails
//! before its head is 502, one that is too slow 504.

use std::borrow::Cow;
use std::mem;
use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use smallvec::SmallVec;

use crate::call::{Call, CallBody};
use crate::config::{Encoding, OutputEncoding, StaticStrategy, is_write_method};
use crate::event::Log;
use crate::gateway::breaker::{Breaker, Change, Ticket};
use crate::gateway::dispatch::Route;
use crate::gateway::json;
use crate::gateway::plugin::{self, BackendRequest, BackendResponse, Verdict};
use crate::gateway::response::{self, Entry, Key, Node};
use crate::gateway::upstream::{self, Balancer, RenderError, UrlInputs};
use crate::http1::{self, BodyLength, Head, HeaderFields, RequestTarget};
use crate::ops::trace::{Context, Ended, ExchangeTrace};
use crate::plan::{BackendHost, BackendPlan, EndpointPlan, Gateway, HeaderPolicy, QueryPolicy};
use crate::request::{ClientRequest, Reply, RequestBody};

/// The largest URL string kept for a later URL ([`Exchange::give_back`]).
const URL_ROOM_KEPT: usize = 1024;

/// The largest reply body buffer a kept exchange holds for the next reply.
const REPLY_ROOM_KEPT: usize = 8 * 1024;

/// `X-KrakenD-Completed`.
pub static COMPLETED: HeaderName = HeaderName::from_static("x-krakend-completed");

/// The head of a backend response passed through (`no-op`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHead {
    pub id: usize,
    pub status: StatusCode,
}

/// What the driver does next.
#[derive(Debug)]
pub enum Action<'g> {
    Call(Call<'g>),
    /// Nothing to do until a result comes in or this instant passes.
    Wait(Instant),
    Respond(Reply),
    Stream(StreamHead),
    /// Already answered.
    Done,
}

#[derive(Debug)]
enum CallState {
    Pending,
    InFlight,
    Answered {
        status: StatusCode,
        headers: HeaderFields,
        body: Vec<u8>,
    },
    Failed(String),
    /// Not made: over its backend's rate limit (`qos/ratelimit/proxy`) or refused by
    /// its request checks (`validation/cel`); the reason as lura gives it, bare.
    Stopped(String),
    TimedOut,
    /// Not called: an earlier backend of a sequence failed, or the request ended first.
    Skipped,
}

impl CallState {
    fn settled(&self) -> bool {
        !matches!(self, CallState::Pending | CallState::InFlight)
    }
}

/// Calls out plugins made while holding their backend calls. A call out's id (the
/// one the connection opens it under) is the number of backends plus its index here.
#[derive(Debug, Default)]
struct Callouts<'g> {
    /// Per backend: the call as it will be sent once its plugin resumes it.
    parked: Vec<Option<Call<'g>>>,
    outs: Vec<Out<'g>>,
    /// Backend calls their plugin resumed, to send.
    resumed: Vec<Call<'g>>,
}

/// One call out.
#[derive(Debug)]
struct Out<'g> {
    /// The backend whose plugin made it.
    owner: usize,
    req: plugin::CallOut,
    /// Where it goes; `None` when the binding has no such upstream (it fails).
    host: Option<&'g BackendHost>,
    state: OutState,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    Pending,
    InFlight,
    /// Failed before it was made: its plugin is told at the next poll.
    Unsent,
    Done,
}

/// One client request in progress.
#[derive(Debug)]
pub struct Exchange<'g> {
    gw: &'g Gateway,
    ep: &'g EndpointPlan,
    req: ClientRequest,
    params: Vec<(String, String)>,
    client_ip: IpAddr,
    /// When the request came (a backend's rate limit is counted then: a sequence's
    /// later calls count early, which is the stricter side).
    started: Instant,
    /// The same on the wall clock: CEL's `now`, one for the whole request as
    /// krakend-cel's.
    wall: SystemTime,
    /// The latest time the connection told it ([`Exchange::at`]): when a circuit
    /// breaker counts a call.
    clock: Instant,
    deadline: Instant,
    calls: Vec<CallState>,
    /// URLs rendered up front (`None`: it needs an earlier response, or its call was
    /// made and took it).
    rendered: SmallVec<[Option<String>; 2]>,
    /// Strings calls gave back ([`Exchange::give_back`]), for the next URLs.
    url_room: SmallVec<[String; 2]>,
    /// The buffer the last aggregated reply's body was written in and its header map,
    /// given back once it went out ([`Exchange::give_reply_room`]), for the next reply.
    reply_room: Vec<u8>,
    reply_fields: HeaderMap,
    /// Set when the answer is decided (before any call, for a refused request).
    answer: Option<Answer>,
    done: bool,
    /// Per call with a client plugin bound: the request as the plugin left it, sent
    /// instead of the one the gateway built, until the call is over.
    plugged: Vec<Option<Box<BackendRequest>>>,
    /// Per call, the host it was sent to (for the error detail naming its URL).
    sent: SmallVec<[Option<&'g BackendHost>; 4]>,
    /// Per call let through its backend's circuit breaker, until it settles.
    tickets: SmallVec<[Option<Ticket>; 8]>,
    /// Lines for the log (a breaker changing state), taken by the connection.
    logs: Vec<Log<'g>>,
    /// Calls out plugins made, and the backend calls they hold: made when a plugin
    /// first waits (see [`Verdict::Wait`]).
    outs: Option<Box<Callouts<'g>>>,
    /// A traced request's endpoint spans (see [`crate::ops::trace`]).
    trace: Option<Box<ExchangeTrace<'g>>>,
}

#[derive(Debug)]
enum Answer {
    Reply(Reply),
    Stream(StreamHead),
}

fn is_success(status: StatusCode) -> bool {
    status == StatusCode::OK || status == StatusCode::CREATED
}

/// Shaped data as the JSON value CEL reads it from (only for a response check).
fn as_json(entries: &[Entry<'_>]) -> serde_json::Value {
    let mut text = Vec::with_capacity(256);
    response::render(OutputEncoding::Json, None, entries, &mut text);
    serde_json::from_slice(&text).unwrap_or(serde_json::Value::Null)
}

/// Whether backend `b`'s answer with `status` counts (lura's status handlers): 200 and
/// 201, or any status from a `no-op` backend of an aggregating endpoint, whose answer
/// is not decoded and adds nothing (`Shape::apply` gives it no members).
fn accepted(b: &BackendPlan, status: StatusCode) -> bool {
    b.shape.encoding == Encoding::NoOp || is_success(status)
}

impl<'g> Exchange<'g> {
    /// Starts serving a request routed by [`Gateway::dispatch`] at `now` (`wall`: the
    /// same instant on the wall clock, CEL's `now`).
    pub fn new(
        gw: &'g Gateway,
        route: Route<'g>,
        req: ClientRequest,
        (now, wall): (Instant, SystemTime),
    ) -> Exchange<'g> {
        let ep = route.endpoint;
        let client_ip = gw.config.router.client_ip(req.peer, &req.headers);
        let mut ex = Exchange {
            gw,
            ep,
            req,
            params: route.params,
            client_ip,
            started: now,
            wall,
            clock: now,
            deadline: now + ep.timeout,
            calls: ep.backends.iter().map(|_| CallState::Pending).collect(),
            rendered: SmallVec::with_capacity(ep.backends.len()),
            url_room: SmallVec::new(),
            reply_room: Vec::new(),
            reply_fields: HeaderMap::new(),
            answer: None,
            done: false,
            plugged: Vec::new(),
            sent: smallvec::smallvec![None; ep.backends.len()],
            tickets: smallvec::smallvec![None; ep.backends.len()],
            logs: Vec::new(),
            outs: None,
            trace: None,
        };
        ex.begin();
        ex
    }

    /// Serves the connection's next request in this exchange's place, as
    /// [`Exchange::new`] would, keeping the room its vectors have: no allocation when
    /// the endpoint has as many backends as the last one (or fewer). The exchange was
    /// [`Exchange::clear`]ed when its last request ended (the connection keeps none
    /// otherwise: `Connection::keep_exchange`), so it is not cleared again here.
    pub(crate) fn renew(
        &mut self,
        gw: &'g Gateway,
        route: Route<'g>,
        req: ClientRequest,
        (now, wall): (Instant, SystemTime),
    ) {
        let ep = route.endpoint;
        let n = ep.backends.len();
        self.client_ip = gw.config.router.client_ip(req.peer, &req.headers);
        (self.gw, self.ep, self.req, self.params) = (gw, ep, req, route.params);
        (self.started, self.wall, self.clock, self.deadline) = (now, wall, now, now + ep.timeout);
        self.calls.resize_with(n, || CallState::Pending);
        self.sent.resize(n, None);
        self.tickets.resize(n, None);
        self.done = false;
        self.begin();
    }

    /// Drops what the request left (its calls' answers, the reply, plugin state,
    /// spans), keeping the vectors' room: an exchange kept for the connection's next
    /// request ([`Exchange::renew`]) holds no answer meanwhile.
    pub(crate) fn clear(&mut self) {
        self.calls.clear();
        self.rendered.clear();
        self.answer = None;
        self.plugged.clear();
        self.sent.clear();
        self.tickets.clear();
        self.logs.clear();
        self.outs = None;
        self.trace = None;
        self.req.body = RequestBody::None;
        self.req.token = None;
    }

    /// Hands each answer's head (as read: not an inflated or rebuilt one) and body to
    /// `give`, for the next backend calls to read into (see
    /// [`crate::call::Calls::give_answer_room`]); their states become pending. Only
    /// once the reply is made.
    pub(crate) fn give_answers(&mut self, mut give: impl FnMut(crate::http1::Head, Vec<u8>)) {
        for call in &mut self.calls {
            if let CallState::Answered { headers: HeaderFields::Head(head), body, .. } = call {
                give(mem::take(head), mem::take(body));
                *call = CallState::Pending;
            }
        }
    }

    /// The body of the reply this exchange made, once written: kept (when not over
    /// [`REPLY_ROOM_KEPT`]) for the next aggregated reply to be written in, until
    /// [`Exchange::drop_reply_room`].
    pub(crate) fn give_reply_room(&mut self, reply: Reply) {
        let Reply { mut headers, mut body, .. } = reply;
        if body.capacity() <= REPLY_ROOM_KEPT {
            body.clear();
            self.reply_room = body;
        }
        // A map grown past a reply's few fields is not kept.
        if headers.capacity() <= 16 {
            headers.clear();
            self.reply_fields = headers;
        }
    }

    /// Lets the kept reply buffer go (a client quiet for a while).
    pub(crate) fn drop_reply_room(&mut self) {
        (self.reply_room, self.reply_fields) = (Vec::new(), HeaderMap::new());
    }

    /// Call `call` is on its way (its request written): its target's string is kept
    /// for a later URL, when it is not large (then taken out of `call`, which is
    /// left with an empty one).
    pub fn give_back(&mut self, call: &mut Call<'g>) {
        if call.target.capacity() <= URL_ROOM_KEPT && self.url_room.len() < self.ep.backends.len().max(1) {
            self.url_room.push(std::mem::take(&mut call.target));
        }
    }

    /// What starts every request: the request checks, then the URLs rendered up front.
    fn begin(&mut self) {
        let ex = self;
        let ep = ex.ep;
        // The endpoint's request checks (`validation/cel`), then the body's schema
        // (`validation/json-schema`), before any backend is called, in KrakenD's order.
        if let Some(checks) = &ep.cel
            && let Err(why) =
                checks.check(&ex.cel_view(ex.req.method.as_str(), ex.req.path(), (&ep.cel_sees.0, &ep.cel_sees.1)))
        {
            ex.answer = Some(Answer::Reply(ex.error_reply(StatusCode::INTERNAL_SERVER_ERROR, &why)));
            return;
        }
        if let Some(schema) = &ep.schema {
            let body = match &ex.req.body {
                RequestBody::Full(b) => b.as_slice(),
                _ => &[],
            };
            if let Err(why) = schema.check(body) {
                ex.answer = Some(Answer::Reply(ex.error_reply(StatusCode::BAD_REQUEST, &why)));
                return;
            }
        }
        // Render every URL that does not wait on an earlier response now, so that an
        // injection attempt is refused (400, with the reason: it is the client's own
        // input) before any backend is called.
        for b in &ep.backends {
            let room = ex.url_room.pop().unwrap_or_default();
            match ex.render(b, room) {
                Ok(url) => ex.rendered.push(Some(url)),
                Err(RenderError::Missing(_)) => ex.rendered.push(None),
                Err(RenderError::Refused(why)) => {
                    ex.answer =
                        Some(Answer::Reply(Reply::text(StatusCode::BAD_REQUEST, &format!("400 bad request: {why}"))));
                    break;
                }
            }
        }
    }

    /// The request is traced under `ctx`: the endpoint's spans are made, and each
    /// backend's request carries its call's `traceparent`.
    pub fn traced(&mut self, ctx: Context) {
        let plan = self.gw.tracer.as_ref().and_then(|t| t.endpoints.get(self.ep.index));
        self.trace = plan.and_then(|p| ExchangeTrace::new(ctx, p, (self.started, self.wall))).map(Box::new);
    }

    /// Whether its spans are made (the connection then tells [`Exchange::hops`]).
    pub fn is_traced(&self) -> bool {
        self.trace.is_some()
    }

    /// Backend call `id` was sent again `retries` times and followed `redirects`
    /// redirects (for its span).
    pub fn hops(&mut self, id: usize, retries: u8, redirects: u8) {
        if let Some(t) = &mut self.trace {
            t.hops(id, retries, redirects);
        }
    }

    /// CEL's `now`: seconds and milliseconds since the Unix epoch.
    fn now(&self) -> (u64, u32) {
        self.wall.duration_since(std::time::UNIX_EPOCH).map_or((0, 0), |d| (d.as_secs(), d.subsec_millis()))
    }

    /// The request as `validation/cel` sees it, sent with `method` to `path` (still
    /// percent-encoded: decoded once here, as gin gives lura its path and parameters),
    /// with the headers and query parameters `headers` and `query` pass on, and those
    /// the gateway adds.
    fn cel_view(
        &self,
        method: &str,
        path: &str,
        (headers, query): (&HeaderPolicy, &QueryPolicy),
    ) -> crate::gateway::cel::RequestView {
        use crate::gateway::cel::param_name;
        use crate::gateway::upstream::{USER_AGENT_VALUE, percent_decode};
        use crate::http1::canonical_name as canonical;
        let decode = |s: &str| String::from_utf8_lossy(&percent_decode(s)).into_owned();
        let mut view = crate::gateway::cel::RequestView {
            now: self.now(),
            method: method.to_string(),
            path: decode(path),
            params: self.params.iter().map(|(k, v)| (param_name(k), decode(v))).collect(),
            ..Default::default()
        };
        for (name, value) in self.req.headers.iter() {
            if headers.allows(name) {
                let value = String::from_utf8_lossy(value).into_owned();
                view.headers.entry(canonical(name)).or_default().push(value);
            }
        }
        let host = self.req.headers.host().map(|h| String::from_utf8_lossy(h).into_owned());
        view.headers.insert("X-Forwarded-For".into(), vec![self.client_ip.to_string()]);
        view.headers.insert("X-Forwarded-Host".into(), vec![host.unwrap_or_default()]);
        // The client's User-Agent when it is passed on (the gateway's goes in
        // X-Forwarded-Via then), else the gateway's.
        let ours = vec![USER_AGENT_VALUE.to_string()];
        if view.headers.contains_key("User-Agent") {
            view.headers.insert("X-Forwarded-Via".into(), ours);
        } else {
            view.headers.insert("User-Agent".into(), ours);
        }
        for (k, v) in crate::gateway::upstream::query_pairs(self.req.query().unwrap_or_default()) {
            if query.allows(&k) {
                view.query.entry(k).or_default().push(v);
            }
        }
        view
    }

    /// The endpoint being served.
    pub fn endpoint(&self) -> &'g EndpointPlan {
        self.ep
    }

    /// The whole client body, sent with every [`CallBody::Full`] call.
    pub fn body(&self) -> &[u8] {
        match &self.req.body {
            RequestBody::Full(b) => b,
            _ => &[],
        }
    }

    /// The body a [`CallBody::Full`] call `id` sends: the client's, or what a client
    /// plugin made of it.
    pub fn call_body(&self, id: usize) -> &[u8] {
        if let Some(out) = self.out(id) {
            return &out.req.body;
        }
        match self.plugged(id) {
            Some(r) => &r.body,
            None => self.body(),
        }
    }

    /// Call `id` when it is a plugin's call out.
    fn out(&self, id: usize) -> Option<&Out<'g>> {
        let k = id.checked_sub(self.ep.backends.len())?;
        self.outs.as_ref()?.outs.get(k)
    }

    /// Whether call `id` is a plugin's call out (not one of the endpoint's backends:
    /// not counted or logged as one).
    pub fn is_call_out(&self, id: usize) -> bool {
        id >= self.ep.backends.len()
    }

    fn plugged(&self, id: usize) -> Option<&BackendRequest> {
        self.plugged.get(id).and_then(Option::as_deref)
    }

    /// Writes the request head of `call` (origin form, straight to the backend): its
    /// header fields come from the client's parsed head under the backend's header
    /// policy, with no header map built ([`upstream::write_backend_headers`]).
    pub fn write_head(&self, call: &Call<'_>, out: &mut Vec<u8>) -> Result<(), http1::Error> {
        if let Some(o) = self.out(call.id) {
            let r = &o.req;
            let length =
                (!r.body.is_empty() || is_write_method(&r.method)).then_some(BodyLength::Known(r.body.len() as u64));
            let absolute;
            let target = match call.via {
                Some(_) if call.connect.is_none() => {
                    absolute = format!("{}{}", call.origin, call.target);
                    RequestTarget::Absolute(&absolute)
                }
                _ => RequestTarget::Origin(&call.target),
            };
            let proxy_auth = call.via.filter(|_| call.connect.is_none()).and_then(|p| p.authorization.as_deref());
            return http1::write_request_with(&r.method, target, &r.authority, length, out, |out| {
                for (n, v) in &r.headers {
                    if !plugin::gateway_owned(n) && !n.as_str().starts_with("proxy-") {
                        http1::write_lower_field(n.as_str().as_bytes(), v.as_bytes(), out);
                    }
                }
                if let Some(auth) = proxy_auth {
                    http1::write_lower_field(b"proxy-authorization", auth.as_bytes(), out);
                }
            });
        }
        let length = match call.body {
            CallBody::None => None,
            CallBody::Full => Some(BodyLength::Known(self.body().len() as u64)),
            CallBody::Stream(l) => Some(l),
        };
        let policy = &self.ep.backends[call.id].headers;
        let (client, ip) = (&self.req.headers, self.client_ip);
        let plugged = self.plugged(call.id);
        let length = match plugged {
            Some(r) if !r.body.is_empty() || length.is_some() => Some(BodyLength::Known(r.body.len() as u64)),
            _ => length,
        };
        let authority = plugged.map_or(call.authority, |r| r.authority.as_str());
        // Through a proxy, the absolute form names the backend, and the proxy's own
        // credentials go with it (the client's Proxy-Authorization never does: it is
        // hop-by-hop).
        let absolute;
        let target = match call.via {
            Some(_) if call.connect.is_none() => {
                // Where the call goes, whatever `Host` says (a plugin or a martian
                // modifier may change that field, never the destination).
                absolute = format!("{}{}", call.origin, call.target);
                RequestTarget::Absolute(&absolute)
            }
            _ => RequestTarget::Origin(&call.target),
        };
        let proxy_auth = call.via.filter(|_| call.connect.is_none()).and_then(|p| p.authorization.as_deref());
        // A traced call's own context replaces any the client sent.
        let traced = self.trace.as_ref().and_then(|t| t.header(call.id));
        http1::write_request_with(&call.method, target, authority, length, out, |out| {
            match plugged {
                Some(r) => {
                    for (n, v) in &r.headers {
                        let ours = traced.is_some() && upstream::is_trace_field(n.as_str().as_bytes());
                        if !plugin::gateway_owned(n) && !n.as_str().starts_with("proxy-") && !ours {
                            http1::write_lower_field(n.as_str().as_bytes(), v.as_bytes(), out);
                        }
                    }
                }
                None => upstream::write_backend_headers(
                    policy,
                    client,
                    ip,
                    (self.ask_coding(call), self.req.token.as_deref(), traced.is_some()),
                    out,
                ),
            }
            if let Some((parent, state)) = &traced {
                http1::write_lower_field(b"traceparent", parent, out);
                if let Some(state) = state {
                    http1::write_lower_field(b"tracestate", state.as_bytes(), out);
                }
            }
            if let Some(auth) = proxy_auth {
                http1::write_lower_field(b"proxy-authorization", auth.as_bytes(), out);
            }
        })
    }

    /// The endpoint deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    fn render(&self, b: &BackendPlan, room: String) -> Result<String, RenderError> {
        let lookup = |index: usize, path: &[String]| self.response_value(index, path);
        let inputs = UrlInputs {
            params: &self.params,
            headers: &self.req.headers,
            response: &lookup,
            token: self.req.token.as_deref(),
        };
        upstream::render_url(b, &inputs, self.req.query(), room)
    }

    /// `{respN_a.b}`: a scalar of an earlier backend's shaped response.
    fn response_value(&self, index: usize, path: &[String]) -> Option<String> {
        let CallState::Answered { body, .. } = self.calls.get(index)? else { return None };
        let entries = self.ep.backends.get(index)?.shape.apply(body).ok()?;
        let (first, rest) = path.split_first()?;
        let node = entries.iter().rev().find(|(k, _)| k.is(first)).map(|(_, v)| v)?;
        node_lookup(node, rest)
    }

    /// `proxy.sequential_propagated_params` for backend `i`: the values of earlier
    /// answers it gets as request parameters (`Resp0_a.b`), as lura sets them: a value
    /// as [`json::go_param_text`], `Resp0` the whole body of a `no-op` backend; one
    /// that is missing is not set.
    fn propagated(&self, i: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (p, name) in &self.ep.propagated {
            let n = p.backend;
            if n >= i {
                continue;
            }
            let value = match (p.path.is_empty(), self.calls.get(n)) {
                (true, Some(CallState::Answered { body, .. })) if self.ep.backends[n].encoding == Encoding::NoOp => {
                    Some(String::from_utf8_lossy(body).into_owned())
                }
                (false, _) => self.response_value(n, &p.path),
                _ => None,
            };
            if let Some(v) = value {
                out.push((name.clone(), v));
            }
        }
        out
    }

    /// The client request's head, taken out when the exchange is over (its buffer
    /// serves the connection's next request: `ServerConn::recycle_head`); the
    /// exchange sees an empty head after.
    pub fn take_head(&mut self) -> Head {
        mem::take(&mut self.req.headers)
    }

    /// What to do next.
    pub fn poll(&mut self, balancer: &Balancer) -> Action<'g> {
        if self.done {
            return Action::Done;
        }
        if let Some(answer) = self.answer.take() {
            self.done = true;
            return match answer {
                Answer::Reply(r) => {
                    self.answered(&r);
                    Action::Respond(r)
                }
                Answer::Stream(s) => {
                    if let Some(t) = &mut self.trace {
                        t.answered(s.status.as_u16(), true);
                    }
                    Action::Stream(s)
                }
            };
        }
        if self.outs.is_some()
            && let Some(action) = self.poll_outs()
        {
            return action;
        }
        let next = if self.ep.sequential {
            // The first backend not settled, if it is its turn.
            self.calls.iter().position(|c| !c.settled()).filter(|&i| matches!(self.calls[i], CallState::Pending))
        } else {
            self.calls.iter().position(|c| matches!(c, CallState::Pending))
        };
        if let Some(i) = next {
            // The backend's circuit breaker, outside everything else (as KrakenD's).
            if let Some(breaker) = &self.ep.backends[i].breaker {
                let (admitted, change) = breaker.admit(self.clock);
                self.note(breaker, change);
                match admitted {
                    Ok(ticket) => self.tickets[i] = Some(ticket),
                    Err(why) => {
                        self.settle(i, CallState::Stopped(why.to_string()));
                        return self.poll(balancer);
                    }
                }
            }
            // The backend's rate limit: a call over it is not made, it fails.
            if let Some(limit) = &self.ep.backends[i].limit
                && !limit.take(self.started)
            {
                self.settle(i, CallState::Stopped(crate::gateway::ratelimit::LIMITED.to_string()));
                return self.poll(balancer);
            }
            // The backend's request checks, on the request as it would be sent (a URL
            // that cannot be rendered fails the call with its own reason below).
            let b = &self.ep.backends[i];
            if let Some(checks) = &b.cel
                && let Some(url) = match self.rendered.get(i) {
                    Some(Some(url)) => Some(Cow::Borrowed(url.as_str())),
                    _ => self.render(b, String::new()).ok().map(Cow::Owned),
                }
            {
                let path = url.split('?').next().unwrap_or_default();
                let mut view = self.cel_view(b.method.as_str(), path, (&b.headers, &b.query));
                view.params.extend(self.propagated(i));
                if let Err(why) = checks.check(&view) {
                    self.settle(i, CallState::Stopped(why));
                    return self.poll(balancer);
                }
            }
            match self.make_call(i, balancer) {
                Ok((call, host)) => {
                    if self.trace.is_some() {
                        let length = match call.body {
                            CallBody::None => Some(0),
                            CallBody::Full => Some(self.body().len() as u64),
                            CallBody::Stream(BodyLength::Known(n)) => Some(n),
                            CallBody::Stream(_) => None,
                        };
                        let url = format!("{}{}", call.origin, call.target);
                        if let Some(t) = &mut self.trace {
                            t.sent(i, self.clock, url, call.authority, length);
                        }
                    }
                    self.sent[i] = Some(host);
                    self.calls[i] = CallState::InFlight;
                    if let Some(binding) = &self.ep.backends[i].plugin {
                        return match self.ask_plugin(binding, call) {
                            Some(call) => Action::Call(call),
                            None => self.poll(balancer),
                        };
                    }
                    return Action::Call(call);
                }
                Err(why) => {
                    // Not made (no host, a URL that cannot be written): lura fails it
                    // before its breaker, which does not count it.
                    self.count(i, None);
                    self.settle(i, CallState::Failed(why));
                    return self.poll(balancer);
                }
            }
        }
        if self.calls.iter().all(CallState::settled) {
            self.done = true;
            let reply = self.finish();
            self.answered(&reply);
            return Action::Respond(reply);
        }
        let first_out = self
            .outs
            .as_ref()
            .and_then(|c| c.outs.iter().filter(|o| o.state == OutState::InFlight).map(|o| o.deadline).min());
        Action::Wait(first_out.map_or(self.deadline, |d| d.min(self.deadline)))
    }

    /// What the calls out ask for: one to make, a failed one's plugin told, a resumed
    /// backend call to send. `None` when they have nothing to do.
    fn poll_outs(&mut self) -> Option<Action<'g>> {
        let n = self.ep.backends.len();
        // Calls out that failed before they were made: their plugins hear of it first.
        while let Some(k) = self.outs.as_ref()?.outs.iter().position(|o| o.state == OutState::Unsent) {
            self.out_answered(k, None);
        }
        let (calls, in_time) = (&self.calls, self.clock < self.deadline);
        let live = |i: usize| in_time && matches!(calls.get(i), Some(CallState::InFlight));
        let c = self.outs.as_mut()?;
        // A resumed call whose time ran out meanwhile is not sent; a call out of a call
        // already settled is not made.
        while let Some(call) = c.resumed.pop() {
            if live(call.id) {
                return Some(Action::Call(call));
            }
        }
        for o in c.outs.iter_mut().filter(|o| o.state == OutState::Pending && !live(o.owner)) {
            o.state = OutState::Done;
        }
        let k = c.outs.iter().position(|o| o.state == OutState::Pending)?;
        let o = &mut c.outs[k];
        let host = o.host?;
        o.state = OutState::InFlight;
        let to = host.proxy.as_ref().map_or(&host.addr, |p| &p.addr);
        Some(Action::Call(Call {
            id: n + k,
            method: o.req.method.clone(),
            host: to,
            pool_key: host.pool_key.as_str(),
            scheme: host.addr.scheme,
            authority: &host.authority,
            via: host.proxy.as_ref(),
            tls: host.tls.as_ref(),
            connect: host.connect.as_deref(),
            origin: &host.addr,
            follow: false,
            redirect_tls: None,
            target: o.req.target.clone(),
            body: if o.req.body.is_empty() && !is_write_method(&o.req.method) {
                CallBody::None
            } else {
                CallBody::Full
            },
            stream_response: false,
            inflate: false,
            srv: false,
            dial: host.dial,
        }))
    }

    /// The call to backend `i`, made once: its URL rendered up front is moved into it
    /// (a message that names it later renders it again).
    fn make_call(&mut self, i: usize, balancer: &Balancer) -> Result<(Call<'g>, &'g BackendHost), String> {
        let ep = self.ep;
        let b = &ep.backends[i];
        let host = balancer.pick(b).ok_or_else(|| format!("backend {i} has no host"))?;
        let url = match self.rendered.get_mut(i).and_then(Option::take) {
            Some(url) => url,
            None => {
                let room = self.url_room.pop().unwrap_or_default();
                self.render(b, room).map_err(|(RenderError::Refused(m) | RenderError::Missing(m))| m)?
            }
        };
        let mut target = url;
        if !host.path_prefix.is_empty() {
            target.insert_str(0, &host.path_prefix);
        }
        // The body goes to every backend whose method carries one; POST, PUT and PATCH
        // always say how long it is, even when it is empty.
        let body = match &self.req.body {
            RequestBody::Stream(l) => CallBody::Stream(*l),
            _ if matches!(b.method, Method::GET | Method::HEAD) => CallBody::None,
            RequestBody::Full(_) => CallBody::Full,
            RequestBody::None if is_write_method(&b.method) && b.method != Method::DELETE => CallBody::Full,
            RequestBody::None => CallBody::None,
        };
        // The host's pool key says which connections it may reuse (see
        // backend::pool_key): through a proxy, the proxy is dialled.
        let to = host.proxy.as_ref().map_or(&host.addr, |p| &p.addr);
        let pool_key = host.pool_key.as_str();
        let call = Call {
            id: i,
            method: b.method.clone(),
            host: to,
            pool_key,
            scheme: host.addr.scheme,
            authority: &host.authority,
            via: host.proxy.as_ref(),
            tls: host.tls.as_ref(),
            connect: host.connect.as_deref(),
            origin: &host.addr,
            follow: !b.no_redirect,
            redirect_tls: b.redirect_tls.as_ref(),
            target,
            body,
            stream_response: self.ep.streams(),
            // Bodies the gateway decodes are inflated (`no-op` ones pass untouched).
            inflate: !self.ep.streams() && b.encoding != Encoding::NoOp,
            srv: host.srv,
            dial: host.dial,
        };
        Ok((call, host))
    }

    /// Asks the plugin bound to `call`'s backend: the call to send (as the plugin left
    /// it, kept in `plugged`), or `None` when the plugin settled it (its own answer, or
    /// a 500 when it failed) or holds it for its calls out.
    fn ask_plugin(&mut self, binding: &'g plugin::Binding, call: Call<'g>) -> Option<Call<'g>> {
        let mut req = Box::new(self.backend_request(&call));
        let verdict = binding.plugin.on_request(&mut req);
        self.follow_plugin(call.id, binding, call, req, verdict)
    }

    /// Does what a plugin said of backend call `i` (`call`, as `req` now describes it):
    /// the call to send, or `None` (settled, or held for calls out).
    fn follow_plugin(
        &mut self,
        i: usize,
        binding: &'g plugin::Binding,
        mut call: Call<'g>,
        req: Box<BackendRequest>,
        verdict: Result<Verdict, plugin::PluginFault>,
    ) -> Option<Call<'g>> {
        let answer = match verdict {
            Ok(Verdict::Continue) => {
                // What is sent is what the plugin left: method, target, body.
                call.method = req.method.clone();
                call.target = req.target();
                if call.body == CallBody::None && !req.body.is_empty() {
                    call.body = CallBody::Full;
                }
                self.plug(i, req);
                return Some(call);
            }
            Ok(Verdict::Wait(calls)) => {
                let waiting = self.outs.as_ref().is_some_and(|c| {
                    c.outs.iter().any(|o| o.owner == i && matches!(o.state, OutState::Pending | OutState::InFlight))
                });
                if calls.is_empty() && !waiting {
                    // Nothing would ever resume it.
                    plugin::fault_response(&binding.name)
                } else {
                    self.add_outs(i, calls);
                    let c = self.outs.get_or_insert_with(Box::default);
                    if c.parked.len() <= i {
                        c.parked.resize_with(i + 1, || None);
                    }
                    c.parked[i] = Some(call);
                    self.plug(i, req);
                    return None;
                }
            }
            Ok(Verdict::Respond(r)) => r,
            Err(_) => plugin::fault_response(&binding.name),
        };
        binding.plugin.on_done(&req);
        self.settle(
            i,
            CallState::Answered { status: answer.status, headers: answer.headers.into(), body: answer.body },
        );
        None
    }

    /// What a plugin said, in a call out's answer, of backend call `i` it had already
    /// let go: an answer (or a fault, a reset) settles the call in place of the
    /// backend's; calls out are made (their answers come back the same way).
    fn after_sent(&mut self, i: usize, binding: &'g plugin::Binding, verdict: Result<Verdict, plugin::PluginFault>) {
        let answer = match verdict {
            Ok(Verdict::Continue) => return,
            Ok(Verdict::Wait(calls)) => {
                self.add_outs(i, calls);
                return;
            }
            Ok(Verdict::Respond(r)) => r,
            Err(_) => plugin::fault_response(&binding.name),
        };
        self.unplug(i);
        self.settle(
            i,
            CallState::Answered { status: answer.status, headers: answer.headers.into(), body: answer.body },
        );
    }

    /// Calls out backend call `i`'s plugin asks for, each to its upstream (one the
    /// binding lacks fails at the next poll), within its timeout and the endpoint's.
    fn add_outs(&mut self, i: usize, calls: Vec<plugin::CallOut>) {
        let (now, deadline) = (self.clock, self.deadline);
        let upstreams = &self.ep.backends[i].upstreams;
        let c = self.outs.get_or_insert_with(Box::default);
        for req in calls {
            let host = upstreams
                .iter()
                .find(|(name, _)| *name == req.upstream)
                .and_then(|(_, hosts)| hosts.get(req.token as usize % hosts.len().max(1)));
            let state = if host.is_some() { OutState::Pending } else { OutState::Unsent };
            let deadline = now.checked_add(req.timeout).map_or(deadline, |d| d.min(deadline));
            c.outs.push(Out { owner: i, req, host, state, deadline });
        }
    }

    /// Keeps `req` as backend call `i` goes out (or waits): its plugin hears of its end.
    fn plug(&mut self, i: usize, req: Box<BackendRequest>) {
        if self.plugged.len() <= i {
            self.plugged.resize_with(i + 1, || None);
        }
        self.plugged[i] = Some(req);
    }

    /// Call out `k` answered (`None`: it failed, or timed out): its plugin says what
    /// becomes of the backend call it holds.
    fn out_answered(&mut self, k: usize, answer: Option<BackendResponse>) {
        let Some(c) = self.outs.as_mut() else { return };
        let Some(o) = c.outs.get_mut(k).filter(|o| o.state != OutState::Done) else { return };
        o.state = OutState::Done;
        let (i, token) = (o.owner, o.req.token);
        let ep = self.ep;
        // The plugin let the call go before this answer came: it still hears of it
        // while the call lasts, and what it says then acts on the call sent.
        let Some(call) = c.parked.get_mut(i).and_then(Option::take) else {
            if let (Some(binding), Some(Some(req)), Some(CallState::InFlight)) =
                (&ep.backends[i].plugin, self.plugged.get(i), self.calls.get(i))
            {
                let mut copy = (**req).clone();
                let verdict = binding.plugin.on_call_response(&mut copy, token, answer);
                self.after_sent(i, binding, verdict);
            }
            return;
        };
        let (Some(binding), Some(mut req)) = (&ep.backends[i].plugin, self.plugged.get_mut(i).and_then(Option::take))
        else {
            return;
        };
        if !matches!(self.calls.get(i), Some(CallState::InFlight)) || self.done {
            binding.plugin.on_done(&req);
            return;
        }
        let verdict = binding.plugin.on_call_response(&mut req, token, answer);
        if let Some(call) = self.follow_plugin(i, binding, call, req, verdict)
            && let Some(c) = self.outs.as_mut()
        {
            c.resumed.push(call);
        }
    }

    /// The `Accept-Encoding` a call asks with: gzip for a body the gateway decodes (not
    /// for `HEAD`, nor under `disable_compression`, as Go's client).
    fn ask_coding(&self, call: &Call<'_>) -> Option<&'static [u8]> {
        (call.inflate && call.method != Method::HEAD && !self.gw.config.disable_compression)
            .then_some(crate::call::coding::ASK)
    }

    /// The call as it would be sent, for a plugin: the header fields the backend's
    /// policy lets through (the same writer as [`Exchange::write_head`], read back).
    fn backend_request(&self, call: &Call<'_>) -> BackendRequest {
        let mut fields = Vec::with_capacity(256);
        let policy = &self.ep.backends[call.id].headers;
        let extra = (self.ask_coding(call), self.req.token.as_deref());
        upstream::write_backend_headers(
            policy,
            &self.req.headers,
            self.client_ip,
            (extra.0, extra.1, false),
            &mut fields,
        );
        let mut headers = HeaderMap::new();
        for line in fields.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
            let value = line[colon + 1..].strip_prefix(b" ").unwrap_or(&line[colon + 1..]);
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(value)) {
                headers.append(n, v);
            }
        }
        let (path, query) = match call.target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (call.target.clone(), None),
        };
        let body = if call.body == CallBody::Full { self.body().to_vec() } else { Vec::new() };
        BackendRequest {
            method: call.method.clone(),
            path,
            query,
            authority: call.authority.to_string(),
            headers,
            body,
            scheme: call.scheme.as_str(),
            upstream: crate::plan::connect_authority(call.origin),
            client: self.client_ip,
            client_port: self
                .req
                .ends
                .as_ref()
                .filter(|_| self.gw.config.router.peer_is_client(self.req.peer))
                .map(|e| e.peer.port()),
            local: self.req.ends.as_ref().map(|e| e.local),
            ticket: 0,
        }
    }

    /// Ends a plugged call `id`: the plugin is told, the request dropped.
    fn unplug(&mut self, id: usize) -> Option<Box<BackendRequest>> {
        let req = self.plugged.get_mut(id)?.take()?;
        if let Some(binding) = &self.ep.backends[id].plugin {
            binding.plugin.on_done(&req);
        }
        Some(req)
    }

    /// A breaker's change of state, logged when its `log_status_change` says so.
    fn note(&mut self, breaker: &'g Breaker, change: Option<Change>) {
        if let Some(Change { from, to }) = change
            && breaker.logs_changes()
        {
            self.logs.push(Log::Breaker { name: breaker.name(), from: from.as_str(), to: to.as_str() });
        }
    }

    /// Lines the exchange has for the log (a circuit breaker changing state): taken by
    /// the connection after [`Exchange::poll`].
    pub fn take_logs(&mut self) -> std::vec::Drain<'_, Log<'g>> {
        self.logs.drain(..)
    }

    /// Whether [`Exchange::take_logs`] has anything.
    pub fn has_logs(&self) -> bool {
        !self.logs.is_empty()
    }

    /// Ends call `i`'s breaker ticket: a success, a failure, or not counted (`None`).
    fn count(&mut self, i: usize, outcome: Option<bool>) {
        let ep = self.ep;
        if let Some(ticket) = self.tickets.get_mut(i).and_then(Option::take)
            && let Some(breaker) = &ep.backends[i].breaker
        {
            let change = breaker.record(ticket, self.clock, outcome);
            self.note(breaker, change);
        }
    }

    /// Settles call `i`. In a sequence, a call that did not succeed skips the rest.
    fn settle(&mut self, i: usize, state: CallState) {
        if let Some(t) = &mut self.trace {
            let how = match &state {
                CallState::Answered { status, body, .. } => {
                    Some(Ended::Answered(status.as_u16(), Some(body.len() as u64)))
                }
                CallState::Failed(why) | CallState::Stopped(why) => Some(Ended::Failed(why)),
                CallState::TimedOut => Some(Ended::Failed("timed out")),
                _ => None,
            };
            if let Some(how) = how {
                t.ended(i, self.clock, how);
            }
        }
        // Whether the call succeeded (its body decodes) matters only to a breaker and
        // to a sequence; otherwise the body is decoded once, when the answer is merged.
        let ticketed = self.tickets.get(i).is_some_and(Option::is_some);
        let succeeded = (ticketed || self.ep.sequential)
            && match &state {
                CallState::Answered { status, body, .. } => {
                    self.ep.backends.get(i).is_some_and(|b| accepted(b, *status) && b.shape.apply(body).is_ok())
                }
                _ => false,
            };
        if ticketed {
            // KrakenD's breaker takes a status under `return_error_details` for a
            // success (the error becomes data).
            let detailed = match &state {
                CallState::Answered { status, .. } => self
                    .ep
                    .backends
                    .get(i)
                    .is_some_and(|b| !accepted(b, *status) && b.http.return_error_details.is_some()),
                _ => false,
            };
            self.count(i, Some(succeeded || detailed));
        }
        if let Some(slot) = self.calls.get_mut(i) {
            *slot = state;
        }
        if self.ep.sequential && !succeeded {
            for c in self.calls.iter_mut().skip(i + 1) {
                if matches!(c, CallState::Pending) {
                    *c = CallState::Skipped;
                }
            }
        }
    }

    /// A complete backend response. Ignored unless the call is in flight.
    pub fn handle_response(&mut self, id: usize, status: StatusCode, headers: impl Into<HeaderFields>, body: Vec<u8>) {
        let headers = headers.into();
        if let Some(k) = id.checked_sub(self.ep.backends.len()) {
            if !self.done {
                self.out_answered(k, Some(BackendResponse { status, headers: headers.into_map(), body }));
            }
            return;
        }
        if !matches!(self.calls.get(id), Some(CallState::InFlight)) || self.done {
            return;
        }
        // A plugin sees (and may change) the answer as a header map; otherwise its fields
        // stay as parsed until something reads one.
        let plugged = self.plugged.get_mut(id).and_then(Option::take);
        let (status, headers, body) = match (plugged, &self.ep.backends[id].plugin) {
            (Some(req), Some(binding)) => {
                let mut answer = BackendResponse { status, headers: headers.into_map(), body };
                if binding.plugin.on_response(&req, &mut answer).is_err() {
                    answer = plugin::fault_response(&binding.name);
                }
                binding.plugin.on_done(&req);
                (answer.status, HeaderFields::Map(answer.headers), answer.body)
            }
            _ => (status, headers, body),
        };
        // The backend's response checks, on its data once shaped (krakend-cel wraps
        // the backend outside lura's formatter); one that refuses fails the call.
        let b = &self.ep.backends[id];
        if let Some(checks) = &b.cel_response
            && accepted(b, status)
            && let Ok(part) = b.shape.apply(&body)
            && let Err(why) = checks.check_response(&as_json(&part), true, self.now())
        {
            self.settle(id, CallState::Stopped(why));
            return;
        }
        self.settle(id, CallState::Answered { status, headers, body });
    }

    /// The head of a `no-op` backend response came: the status is the client's; the
    /// connection writes the backend's end-to-end headers on from its parsed head.
    pub fn handle_head(&mut self, id: usize, status: StatusCode) {
        if !matches!(self.calls.get(id), Some(CallState::InFlight)) || self.done {
            return;
        }
        if let Some(t) = &mut self.trace {
            t.ended(id, self.clock, Ended::Answered(status.as_u16(), None));
        }
        self.calls[id] = CallState::Answered { status, headers: HeaderFields::default(), body: Vec::new() };
        // Any status of a `no-op` backend is its answer: a success for its breaker.
        self.count(id, Some(true));
        self.answer = Some(Answer::Stream(StreamHead { id, status }));
    }

    /// A call that could not be sent (its head could not be written, no connection to
    /// send it on): it fails, and its breaker does not count it (it was never made).
    pub fn handle_unsent(&mut self, id: usize, reason: &str) {
        self.count(id, None);
        self.handle_failure(id, reason);
    }

    /// A call that failed without an HTTP response (refused, reset, garbage, ...).
    pub fn handle_failure(&mut self, id: usize, reason: &str) {
        if let Some(k) = id.checked_sub(self.ep.backends.len()) {
            if !self.done {
                self.out_answered(k, None);
            }
            return;
        }
        if !matches!(self.calls.get(id), Some(CallState::InFlight)) || self.done {
            return;
        }
        self.unplug(id);
        self.settle(id, CallState::Failed(reason.to_string()));
    }

    /// The time is `now` (the connection says so before handing in results, so that
    /// a circuit breaker counts each call when it ended).
    pub fn at(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        if let Some(t) = &mut self.trace {
            t.at(now);
        }
    }

    /// Time has come to `now`: past the deadline, every unsettled call is cut.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.at(now);
        if self.done {
            return;
        }
        if now < self.deadline {
            // Calls out past their own timeout fail (their plugins are told).
            while let Some(k) = self
                .outs
                .as_ref()
                .and_then(|c| c.outs.iter().position(|o| o.state == OutState::InFlight && o.deadline <= now))
            {
                self.out_answered(k, None);
            }
            return;
        }
        // The endpoint's time is up: calls out end unanswered with their calls.
        if let Some(c) = self.outs.as_mut() {
            c.resumed.clear();
            for o in &mut c.outs {
                o.state = OutState::Done;
            }
        }
        for i in 0..self.calls.len() {
            match self.calls[i] {
                CallState::InFlight => {
                    self.unplug(i);
                    self.settle(i, CallState::TimedOut)
                }
                CallState::Pending => self.calls[i] = CallState::Skipped,
                _ => {}
            }
        }
    }

    /// Why call `i` gave nothing to merge, as KrakenD words it where it can: a status
    /// other than 200/201 is `invalid status code 404 [GET /users/{id}]:
    /// http://api/users/42` (the backend's method, `url_pattern`, the URL called, less
    /// its query); anything else is `[GET /users/{id}]: http://api/users/42: <why>`.
    fn reason(&self, i: usize) -> String {
        let b = &self.ep.backends[i];
        let pattern = self
            .gw
            .config
            .endpoints
            .get(self.ep.index)
            .and_then(|e| e.backend.get(i))
            .map_or("", |c| c.url_pattern.split('?').next().unwrap_or_default());
        let prefix = format!("[{} {pattern}]:", b.method);
        let url = match self.sent.get(i).copied().flatten() {
            Some(host) => {
                let target = match self.rendered.get(i) {
                    Some(Some(url)) => Cow::Borrowed(url.as_str()),
                    _ => Cow::Owned(self.render(b, String::new()).unwrap_or_default()),
                };
                // Without the query: it may carry a key the configuration puts there
                // (KrakenD writes it; a client reading return_error_msg should not).
                let path = target.split('?').next().unwrap_or_default();
                format!("{}{}{path}", host.addr, host.path_prefix)
            }
            None => String::new(),
        };
        match &self.calls[i] {
            CallState::Answered { status, .. } if !accepted(b, *status) => {
                format!("invalid status code {} {prefix} {url}", status.as_u16())
            }
            CallState::Answered { body, .. } => match b.shape.apply(body) {
                Err(e) => format!("{prefix} {url}: {e}"),
                Ok(_) => String::new(),
            },
            // lura's limiter and CEL sit before the HTTP client that names the call:
            // the bare reason.
            CallState::Stopped(why) => why.clone(),
            CallState::Failed(why) if url.is_empty() => format!("{prefix} {why}"),
            CallState::Failed(why) => format!("{prefix} {url}: {why}"),
            CallState::TimedOut => format!("{prefix} {url}: timed out"),
            CallState::Skipped => format!("{prefix} not called"),
            CallState::Pending | CallState::InFlight => format!("{prefix} {url}: no answer"),
        }
    }

    /// A `no-op` answer whose body failed before any byte of it reached the client:
    /// the 502 (504 when the endpoint timeout cut it) a failure before its head gets.
    pub fn stream_failed(&self, timed_out: bool, why: &str) -> Reply {
        if timed_out {
            self.error_reply(StatusCode::GATEWAY_TIMEOUT, "the backend did not answer in time")
        } else {
            self.error_reply(StatusCode::BAD_GATEWAY, why)
        }
    }

    fn error_reply(&self, status: StatusCode, why: &str) -> Reply {
        let body = if self.gw.config.router.return_error_msg { why } else { "" };
        let mut r = Reply::text(status, body);
        r.headers.insert(COMPLETED.clone(), HeaderValue::from_static("false"));
        r
    }

    /// The exchange answers `reply`: the endpoint's span gets its status.
    fn answered(&mut self, reply: &Reply) {
        if let Some(t) = &mut self.trace {
            let complete = reply.headers.get(&COMPLETED).is_none_or(|v| v.as_bytes() == b"true");
            t.answered(reply.status.as_u16(), complete && reply.status.is_success());
        }
    }

    fn finish(&mut self) -> Reply {
        let ep = self.ep;
        if ep.output == OutputEncoding::NoOp {
            // With a plugin bound the answer was read whole, and is passed on as it is
            // (less what the gateway frames itself).
            if let Some(CallState::Answered { status, headers, body }) = self.calls.first_mut()
                && !ep.streams()
            {
                let mut reply =
                    Reply { status: *status, headers: mem::take(headers).into_map(), body: mem::take(body) };
                let owned: Vec<HeaderName> =
                    reply.headers.keys().filter(|n| plugin::gateway_owned(n)).cloned().collect();
                for n in owned {
                    reply.headers.remove(n);
                }
                return reply;
            }
            // A no-op answer that came is streamed (`handle_head`); here it did not come.
            let timed_out = matches!(self.calls.first(), Some(CallState::TimedOut));
            return self.stream_failed(timed_out, &self.reason(0));
        }
        let router = &self.gw.config.router;
        let mut parts: SmallVec<[Vec<Entry<'_>>; 4]> = SmallVec::new();
        let mut complete = true;
        // A failure lura hands on as an error (a backend with `return_error_details`
        // answering a status hands its data instead: incomplete, not errored).
        let mut errored = false;
        let mut reasons = Vec::new();
        let mut error_code: Option<Reply> = None;
        // The bytes the parts are made of: the document written is about as long.
        let mut made_of = 0;
        for (i, (call, b)) in self.calls.iter().zip(&ep.backends).enumerate() {
            match call {
                CallState::Answered { status, body, .. } if accepted(b, *status) => match b.shape.apply(body) {
                    Ok(part) => {
                        made_of += body.len();
                        parts.push(part);
                    }
                    Err(_) => {
                        (complete, errored) = (false, true);
                        reasons.push(self.reason(i));
                    }
                },
                CallState::Answered { status, headers, body } => {
                    complete = false;
                    reasons.push(self.reason(i));
                    if b.http.return_error_code && error_code.is_none() {
                        let mut r = Reply { status: *status, headers: HeaderMap::new(), body: Vec::new() };
                        if router.return_error_msg {
                            r.body = body.clone();
                            if let Some(ct) = headers.get("content-type").and_then(|v| HeaderValue::from_bytes(v).ok())
                            {
                                r.headers.insert(header::CONTENT_TYPE, ct);
                            }
                        }
                        r.headers.insert(COMPLETED.clone(), HeaderValue::from_static("false"));
                        error_code = Some(r);
                    }
                    match &b.http.return_error_details {
                        Some(alias) => parts.push(error_details(alias, *status, headers, body)),
                        None => errored = true,
                    }
                }
                _ => {
                    (complete, errored) = (false, true);
                    reasons.push(self.reason(i));
                }
            }
        }
        let none_failed = complete;
        // `proxy.static`, outside everything lura does, with its matchers. It makes an
        // answer of a failure: 200, with its data.
        let statik = ep.static_response.as_ref().filter(|s| match s.strategy {
            StaticStrategy::Always => true,
            StaticStrategy::Success => !errored,
            StaticStrategy::Complete => none_failed,
            StaticStrategy::Errored => errored,
            StaticStrategy::Incomplete => !none_failed,
        });
        if statik.is_none() {
            if let Some(r) = error_code {
                return r;
            }
            if parts.is_empty() {
                return self.error_reply(StatusCode::INTERNAL_SERVER_ERROR, &reasons.join("\n"));
            }
        }
        let mut merged = response::merge(parts);
        // The endpoint's flatmap filter runs on a merge without an error (as lura's).
        if !errored && !ep.flatmap.is_empty() {
            merged = crate::gateway::response::flatmap::apply(&ep.flatmap, merged).unwrap_or_default();
        }
        if let Some(s) = statik {
            let data = s.data.iter().map(|(k, v)| (Key::Text(Cow::Borrowed(k.as_str())), Node::Raw(v.as_str())));
            merged = response::merge([merged, data.collect()]);
        }
        // lura says complete only of an answer with data in it.
        let complete = complete && !merged.is_empty();
        // The endpoint's response checks, on the merged data; as krakend-cel, only when
        // no backend failed (lura hands a partial answer on with its error, unchecked).
        if none_failed
            && let Some(checks) = &ep.cel_response
            && let Err(why) = checks.check_response(&as_json(&merged), complete, self.now())
        {
            return self.error_reply(StatusCode::INTERNAL_SERVER_ERROR, &why);
        }
        // Room for the whole document at once, about as long as what it was made of,
        // rather than growing by doubling (and copying) as it is written; a large one
        // (whose filters may keep little of it) grows past 64 KiB as it is written.
        let mut body = mem::take(&mut self.reply_room);
        body.clear();
        body.reserve(made_of.min(64 << 10) + 256);
        let accept = self.req.headers.get("accept").and_then(|v| std::str::from_utf8(v).ok());
        let content_type = response::render(ep.output, accept, &merged, &mut body);
        let mut headers = mem::take(&mut self.reply_fields);
        headers.clear();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(COMPLETED.clone(), HeaderValue::from_static(if complete { "true" } else { "false" }));
        if complete
            && let Some(ttl) = ep.cache_ttl
            && let Ok(v) = HeaderValue::from_str(&format!("public, max-age={}", ttl.as_secs()))
        {
            headers.insert(header::CACHE_CONTROL, v);
        }
        Reply { status: StatusCode::OK, headers, body }
    }
}

impl Drop for Exchange<'_> {
    /// Calls abandoned in flight (the client left, the answer came first) end too.
    fn drop(&mut self) {
        for id in 0..self.plugged.len() {
            self.unplug(id);
        }
        // Calls nobody waits for any more are not counted by their breakers.
        for id in 0..self.tickets.len() {
            self.count(id, None);
        }
    }
}

/// `{"error_<alias>": {"http_status_code": N, "http_body": "...", "http_body_encoding": "..."}}`
fn error_details<'a>(alias: &str, status: StatusCode, headers: &HeaderFields, body: &'a [u8]) -> Vec<Entry<'a>> {
    let encoding = headers.get("content-type").map(|v| String::from_utf8_lossy(v).into_owned());
    let details = vec![
        (Key::Text(Cow::Borrowed("http_status_code")), Node::Number(status.as_u16().into())),
        (Key::Text(Cow::Borrowed("http_body")), Node::Str(String::from_utf8_lossy(body))),
        (Key::Text(Cow::Borrowed("http_body_encoding")), Node::Str(Cow::Owned(encoding.unwrap_or_default()))),
    ];
    vec![(Key::Text(Cow::Owned(format!("error_{alias}"))), Node::Obj(details))]
}

/// Follows the rest of a `{respN_...}` path from a shaped value to its text as lura
/// gives it ([`json::go_param_text`]).
fn node_lookup(node: &Node<'_>, path: &[String]) -> Option<String> {
    match node {
        Node::Raw(raw) => Some(json::go_param_text(json::lookup(raw, path)?)),
        Node::Str(s) => path.is_empty().then(|| s.to_string()),
        Node::Number(n) => path.is_empty().then(|| n.to_string()),
        Node::Obj(entries) => match path.split_first() {
            Some((first, rest)) => node_lookup(entries.iter().rev().find(|(k, _)| k.is(first)).map(|(_, v)| v)?, rest),
            None => Some(json::go_param_text(&written(node))),
        },
        Node::Arr(items) => match path.split_first() {
            Some((first, rest)) => node_lookup(items.get(first.parse::<usize>().ok()?)?, rest),
            None => Some(json::go_param_text(&written(node))),
        },
    }
}

/// A shaped value written as JSON.
fn written(node: &Node<'_>) -> String {
    let mut out = Vec::with_capacity(64);
    node.write(&mut out);
    String::from_utf8(out).unwrap_or_default()
}
