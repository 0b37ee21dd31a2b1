//! The gateway's guard stage: the checks an endpoint makes on a request before any
//! backend is called. It runs on the request head, right after routing and before the
//! body is read: each guard of the endpoint, in order, passes the request on or
//! answers it itself (403 for a bot, 429 or 503 for a rate limit), and then no backend
//! is called and no body is read.
//!
//! The guards are compiled into the endpoint's plan ([`crate::plan::EndpointPlan`]).
//! Two exist: the bot detector and the router rate limits; `auth/validator` comes
//! here next (the configuration refuses it until then). What needs the body or a call
//! is the exchange's: the CEL request checks ([`crate::gateway::cel`]), the JSON schema
//! ([`crate::gateway::schema`]) and a backend's rate limit. The stage is called on every endpoint request by the gateway
//! service (the connection's `service` module). CORS is not one of them: KrakenD runs
//! it around the whole router, so it answers before routing, for every path
//! ([`crate::gateway::cors`]); a root bot detector runs there too, after CORS.

use std::time::Instant;

use crate::config::RouterOptions;
use crate::gateway::bots::BotDetector;
use crate::gateway::ratelimit::RouterLimit;
use crate::request::{ClientRequest, Reply};

/// What the stage says of a request.
#[derive(Debug)]
pub enum Verdict {
    /// On to the backends.
    Pass,
    /// This is the answer; no backend is called.
    Answer(Reply),
}

/// One check an endpoint makes.
#[derive(Debug, Clone)]
pub enum Guard {
    /// `security/bot-detector`: 403 for a bot ([`crate::gateway::bots`]).
    Bots(Box<BotDetector>),
    /// `qos/ratelimit/router`: 429 over the client's limit, 503 over the endpoint's
    /// ([`crate::gateway::ratelimit`]).
    RateLimit(RouterLimit),
}

/// An endpoint's guards, in the order they run (KrakenD's: the bot detector, then
/// the rate limits).
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

    /// Runs each guard on `req` (its path's `params`) at `now`, in order; the first
    /// answer stops it.
    pub fn check(
        &self,
        req: &ClientRequest,
        params: &[(String, String)],
        router: &RouterOptions,
        now: Instant,
    ) -> Verdict {
        for guard in &self.0 {
            let answer = match guard {
                Guard::Bots(d) => d.refuse(&req.headers),
                Guard::RateLimit(l) => l.check(req, params, router, now),
            };
            if let Some(reply) = answer {
                return Verdict::Answer(reply);
            }
        }
        Verdict::Pass
    }
}
