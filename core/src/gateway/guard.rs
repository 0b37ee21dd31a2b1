//! The gateway's guard stage: the checks an endpoint makes on a request before any
//! backend is called. It runs on the request head, right after routing and before the
//! body is read: each guard of the endpoint, in order, passes the request on or
//! answers it itself (403 for a bot, 429 or 503 for a rate limit), and then no backend
//! is called and no body is read.
//!
//! The guards are compiled into the endpoint's plan ([`crate::plan::EndpointPlan`]).
//! Three exist, run in KrakenD's order: the bot detector, the token check
//! (`auth/validator`: the token that passes stays on the request, for the backends'
//! headers and URLs) and the router rate limits. What needs the body or a call is
//! the exchange's: the CEL request and response checks ([`crate::gateway::cel`]), the
//! JSON schema ([`crate::gateway::schema`]) and a backend's rate limit. The stage is
//! called on every endpoint request by the gateway service (the connection's
//! `service` module). CORS is not one of them: KrakenD runs it around the whole
//! router, so it answers before routing, for every path ([`crate::gateway::cors`]); a
//! root bot detector runs there too, after CORS.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::config::RouterOptions;
use crate::gateway::bots::BotDetector;
use crate::gateway::jwt::Validator;
use crate::gateway::ratelimit::RouterLimit;
use crate::request::{ClientRequest, Reply};

/// What the stage says of a request.
#[derive(Debug)]
pub enum Verdict {
    /// On to the backends.
    Pass,
    /// This is the answer; no backend is called. With it, why, when the guard was
    /// asked to say (`auth/validator`'s `operation_debug`).
    Answer(Reply, Option<&'static str>),
}

/// One check an endpoint makes.
#[derive(Debug, Clone)]
pub enum Guard {
    /// `security/bot-detector`: 403 for a bot ([`crate::gateway::bots`]).
    Bots(Box<BotDetector>),
    /// `auth/validator`: 401 without a valid token, 403 without the roles or scopes
    /// ([`crate::gateway::jwt`]).
    Jwt(Arc<Validator>, bool),
    /// `qos/ratelimit/router`: 429 over the client's limit, 503 over the endpoint's
    /// ([`crate::gateway::ratelimit`]).
    RateLimit(RouterLimit),
}

/// An endpoint's guards, in the order they run (KrakenD's: the bot detector, the
/// token, then the rate limits).
#[derive(Debug, Clone, Default)]
pub struct Guards(Vec<Guard>);

impl Guards {
    pub fn new(guards: Vec<Guard>) -> Guards {
        Guards(guards)
    }

    /// Whether the endpoint has none (the stage costs nothing then).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs each guard on `req` (its path's `params`) at `now` (`wall`: the same
    /// instant on the wall clock, for token dates), in order; the first answer stops
    /// it. A token that passes is kept in `req.token`.
    pub fn check(
        &self,
        req: &mut ClientRequest,
        params: &[(String, String)],
        router: &RouterOptions,
        (now, wall): (Instant, SystemTime),
    ) -> Verdict {
        for guard in &self.0 {
            let answer = match guard {
                Guard::Bots(d) => d.refuse(&req.headers),
                Guard::Jwt(v, debug) => match v.check(&req.headers, wall) {
                    Ok(token) => {
                        req.token = Some(Box::new(token));
                        None
                    }
                    Err((status, why)) => return Verdict::Answer(Reply::empty(status), debug.then_some(why)),
                },
                Guard::RateLimit(l) => l.check(req, params, router, now),
            };
            if let Some(reply) = answer {
                return Verdict::Answer(reply, None);
            }
        }
        Verdict::Pass
    }
}
