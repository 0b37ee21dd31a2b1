//! The services a client connection asks what to do with a request: the gateway
//! (routing, the guard stage, built-in endpoints, then an exchange), the forward proxy
//! ([`crate::forward::Forwarder`]) and the admin pages ([`crate::ops::admin`]). A
//! connection gets one when it is accepted, by the listener it came to
//! ([`Service::on`]); [`Service::route`] is the one place that tells them apart.
//!
//! A service answers a request head with an [`Outcome`], and the connection carries
//! it out: respond now, read the body and serve it, stream it to a `no-op` backend,
//! reach a forward-proxy destination (resolve its name, then open its tunnel or call
//! it), or gather the shards' counters for an admin page. The connection keeps the
//! codec, the deadlines, the client's TLS and the access line; a service keeps what
//! a request means.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Instant;

use super::Clock;

use http::StatusCode;

use crate::event::Log;
use crate::forward::{Forwarder, Pending, Refusal, Routed};
use crate::gateway::builtin::Builtin;
use crate::gateway::cors::Step;
use crate::gateway::dispatch::{Dispatch, Route};
use crate::gateway::guard::Verdict;
use crate::http1::{Framing, Request};
use crate::io::Output;
use crate::ops::admin::{self, Page};
use crate::ops::runtime::Runtime;
use crate::ops::stats::Stats;
use crate::ops::trace::{Incoming, Tracer};
use crate::plan::Gateway;
use crate::request::{AccessLog, ClientRequest, LineRoom, Reply, RequestBody};
use crate::serve::Listener;
use crate::tls::ServerProfile;

/// What answers a connection's requests (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Service<'g> {
    Gateway(&'g Gateway),
    Forward(Forwarder<'g>),
    Admin(&'g Gateway, &'g Runtime),
}

/// What serves a gateway request once its whole body is read.
#[derive(Debug)]
pub(crate) enum Serve<'g> {
    Builtin(Builtin),
    Endpoint(Route<'g>),
}

/// What a service asks the connection to do with a request.
#[derive(Debug)]
pub(crate) enum Outcome<'g> {
    /// Answer now. A body the request has is not read (the codec closes after
    /// answering); `close` closes the connection in any case.
    Respond { reply: Reply, line: AccessLog, close: bool },
    /// The request cannot be served: an error answer, then the connection closes.
    Fail { status: StatusCode, reason: &'static str, line: AccessLog },
    /// Read the whole body, then serve it.
    ReadBody { req: ClientRequest, serve: Serve<'g>, line: AccessLog },
    /// Stream it to a `no-op` endpoint's backend, the bodies both ways as they come.
    Stream { req: ClientRequest, route: Route<'g>, line: AccessLog },
    /// Reach a forward-proxy destination: its name resolved first when it is one,
    /// its address admitted ([`Forwarder::admit`]), then its tunnel opened or the
    /// request sent on as a backend call.
    Forward(Box<Pending<'g>>),
    /// The forward proxy answers itself ([`Refusal`]).
    Refuse { refusal: Refusal, dest: String, line: AccessLog, tunnel: bool },
    /// Ask the driver for every shard's counters, then answer with the admin page.
    Gather { page: AdminPage<'g>, line: AccessLog },
}

impl Outcome<'_> {
    /// The access line this outcome would have written (`None`: a forwarded request,
    /// whose line comes later).
    pub(crate) fn into_line(self) -> Option<AccessLog> {
        match self {
            Outcome::Respond { line, .. }
            | Outcome::Fail { line, .. }
            | Outcome::ReadBody { line, .. }
            | Outcome::Stream { line, .. }
            | Outcome::Refuse { line, .. }
            | Outcome::Gather { line, .. } => Some(line),
            Outcome::Forward(_) => None,
        }
    }
}

/// An admin page waiting for the counters it shows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdminPage<'g> {
    gw: &'g Gateway,
    runtime: &'g Runtime,
    page: Page,
}

impl AdminPage<'_> {
    /// The page, with every shard's counters added up.
    pub(crate) fn answer(&self, stats: &Stats) -> Reply {
        admin::answer(self.gw, self.runtime, self.page, stats)
    }
}

impl<'g> Service<'g> {
    /// The service of a connection accepted on `listener`; `None` for the forward
    /// proxy's when the gateway has none.
    pub(crate) fn on(listener: Listener, gw: &'g Gateway, runtime: &'g Runtime) -> Option<Service<'g>> {
        match listener {
            Listener::Gateway => Some(Service::Gateway(gw)),
            Listener::Forward => {
                gw.forward.as_ref().map(|plan| Service::Forward(Forwarder { plan, breakers: runtime.breakers() }))
            }
            Listener::Admin => Some(Service::Admin(gw, runtime)),
        }
    }

    /// The longest request head it reads (a longer one gets 431): the admin pages'
    /// own limit, else the gateway's `max_header_bytes` (`gateway`).
    pub(crate) fn max_head(&self, gateway: usize) -> usize {
        match self {
            Service::Admin(..) => admin::MAX_HEAD,
            Service::Gateway(_) | Service::Forward(_) => gateway,
        }
    }

    /// The listener's TLS: the gateway's, when its configuration has a certificate.
    pub(crate) fn server_tls(&self) -> Option<&'g ServerProfile> {
        match self {
            Service::Gateway(gw) => gw.server_tls.as_ref(),
            Service::Forward(_) | Service::Admin(..) => None,
        }
    }

    /// The access line of a head that could not be read (see
    /// [`AccessLog::unreadable`]): counted as unrouted, except on the admin listener,
    /// whose requests are never counted.
    pub(crate) fn unreadable(&self, peer: IpAddr, head: &[u8], started: Instant) -> AccessLog {
        let line = AccessLog::unreadable(peer, head, started);
        match self {
            Service::Admin(..) => line.for_admin(),
            Service::Gateway(_) | Service::Forward(_) => line,
        }
    }

    /// What to do with the request whose head is `req`, from `peer`, read at `now`.
    /// What to do with `req`. `added` gets the fields its answer carries besides its
    /// own (CORS's: [`crate::http1::ServerConn::add_fields`]); `logs` any line the
    /// service says about it; `log_room` what the connection keeps for its access
    /// lines ([`AccessLog::new_in`]).
    pub(crate) fn route(
        &self,
        req: &mut Request,
        (peer, ends, clock): (IpAddr, Option<&crate::request::Ends>, Clock),
        added: &mut Vec<u8>,
        (logs, log_room): (&mut VecDeque<Output<'g>>, &mut LineRoom),
    ) -> Outcome<'g> {
        let now = clock.now;
        match *self {
            Service::Gateway(gw) => gateway(gw, req, (peer, ends, clock), added, (logs, log_room)),
            Service::Forward(proxy) => match proxy.route(req, peer, now, log_room) {
                Routed::Go(p) => Outcome::Forward(p),
                Routed::Bad(status, reason, line) => Outcome::Fail { status, reason, line },
                Routed::Refused { refusal, dest, line, tunnel } => Outcome::Refuse { refusal, dest, line, tunnel },
            },
            Service::Admin(gw, runtime) => {
                let line = AccessLog::admin(req, peer, now);
                match admin::route(&req.method, req.target()) {
                    Err(reply) => Outcome::Respond { reply: *reply, line, close: true },
                    Ok(page) if page.needs_stats() => Outcome::Gather { page: AdminPage { gw, runtime, page }, line },
                    Ok(page) => {
                        let reply = admin::answer(gw, runtime, page, &Stats::default());
                        Outcome::Respond { reply, line, close: true }
                    }
                }
            }
        }
    }
}

/// Starts `creq`'s trace, when `tracer` samples it. Out of line: a plan that traces
/// nothing pays one check for it.
#[cold]
#[inline(never)]
fn start_trace(tracer: &Tracer, creq: &ClientRequest, framing: Framing, clock: Clock, line: &mut AccessLog) {
    let head = &creq.headers;
    let incoming = Incoming {
        method: creq.method.as_str(),
        path: creq.path(),
        query: creq.query(),
        host: head.host(),
        user_agent: head.get("user-agent"),
        length: match framing {
            Framing::Length(n) => Some(n),
            Framing::Chunked | Framing::UntilClose => None,
            Framing::None => Some(0),
        },
        peer: creq.peer,
        traceparent: head.get("traceparent"),
        tracestate: &head.get_all("tracestate").collect::<Vec<_>>(),
    };
    if let Some(trace) = tracer.start(&incoming, (clock.now, clock.wall())) {
        line.traced(trace);
    }
}

/// The gateway's front: a built-in endpoint, an endpoint's guard stage and then its
/// exchange (streamed for `no-op`), or the router's answer (404, 405, a redirect).
fn gateway<'g>(
    gw: &'g Gateway,
    req: &mut Request,
    (peer, ends, clock): (IpAddr, Option<&crate::request::Ends>, Clock),
    added: &mut Vec<u8>,
    (logs, log_room): (&mut VecDeque<Output<'g>>, &mut LineRoom),
) -> Outcome<'g> {
    let now = clock.now;
    // Checked first, then made in place: a request moved out of a `Result` is one
    // copy of its 176 bytes more.
    if let Some(reason) = ClientRequest::refusal(req) {
        return Outcome::Fail { status: StatusCode::BAD_REQUEST, reason, line: AccessLog::refused(req, peer, now) };
    }
    let mut creq = ClientRequest::read(req, peer, ends);
    let path = creq.path();
    let mut line = AccessLog::new_in(&creq, path, now, log_room);
    if let Some(tracer) = &gw.tracer {
        start_trace(tracer, &creq, req.framing, clock, &mut line);
    }
    // CORS first, on every request whatever its path (KrakenD wraps its router in it):
    // a preflight is answered here; any other answer gets the fields.
    if let Some(cors) = &gw.cors {
        let mut note = None;
        let step = cors.apply(&creq.method, &creq.headers, added, &mut note);
        if let Some(note) = note {
            logs.push_back(Output::Log(Log::Cors { peer, path: creq.path().to_string(), note }));
        }
        if let Step::Answer(status) = step {
            return Outcome::Respond { reply: Reply::empty(status), line, close: false };
        }
    }
    let dispatch = gw.dispatch(&creq.method, path, creq.query());
    // The root's bot detector: on every request gin's handlers see (not the health
    // page, not a router redirect), before the endpoint's own checks.
    if let Some(bots) = &gw.bots {
        let exempt = match &dispatch {
            Dispatch::Builtin(b) => *b == Builtin::Health,
            Dispatch::Reply(r) => r.status.is_redirection(),
            Dispatch::Endpoint(_) => false,
        };
        if !exempt && let Some(reply) = bots.refuse(&creq.headers) {
            if let Dispatch::Endpoint(route) = &dispatch {
                line.for_endpoint(route.endpoint.index);
            }
            return Outcome::Respond { reply, line, close: false };
        }
    }
    match dispatch {
        Dispatch::Endpoint(route) => {
            line.for_endpoint(route.endpoint.index);
            if let Some(trace) = line.trace_mut()
                && let Some(ep) = gw.tracer.as_ref().and_then(|t| t.endpoints.get(route.endpoint.index))
            {
                trace.routed(ep);
            }
            // The guard stage: the endpoint's checks, before its body is read or any
            // backend called; an answer from it is the reply, as a router's is.
            if !route.endpoint.guards.is_empty()
                && let Verdict::Answer(reply, why) =
                    route.endpoint.guards.check(&mut creq, &route.params, &gw.config.router, (now, clock.wall()))
            {
                if let Some(why) = why {
                    logs.push_back(Output::Log(Log::Jwt { peer, path: creq.path().to_string(), why }));
                }
                return Outcome::Respond { reply, line, close: false };
            }
            if route.streaming {
                creq.body = RequestBody::relayed(req.framing);
                Outcome::Stream { req: creq, route, line }
            } else {
                Outcome::ReadBody { req: creq, serve: Serve::Endpoint(route), line }
            }
        }
        Dispatch::Builtin(b) => Outcome::ReadBody { req: creq, serve: Serve::Builtin(b), line },
        Dispatch::Reply(reply) => Outcome::Respond { reply, line, close: false },
    }
}
