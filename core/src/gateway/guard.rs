//! The gateway's guard stage: the checks an endpoint makes on a request before any
//! backend is called. It runs on the request head, right after routing and before the
//! body is read: each guard of the endpoint, in order, passes the request on or
//! answers it itself (a CORS preflight, 401 or 403 for a token, 429 for a rate limit),
//! and then no backend is called and no body is read.
//!
//! The guards are compiled into the endpoint's plan ([`crate::plan::EndpointPlan`]).
//! None is implemented yet, so today every request passes: `auth/validator` and the
//! rate limits come here next (the configuration refuses `auth/*`, `security/*` but
//! `security/cors`, `validation/*` and `qos/*` until then). The stage is where they
//! plug in, called on every endpoint request by the gateway service (the connection's
//! `service` module). CORS is not one of them: KrakenD runs it around the whole router,
//! so it answers before routing, for every path ([`crate::gateway::cors`]).

use std::time::Instant;

use crate::request::{ClientRequest, Reply};

/// What the stage says of a request.
#[derive(Debug)]
pub enum Verdict {
    /// On to the backends.
    Pass,
    /// This is the answer; no backend is called.
    Answer(Reply),
}

/// One check an endpoint makes (none exists yet: see the module docs).
#[derive(Debug, Clone)]
pub enum Guard {}

/// An endpoint's guards, in the order they run.
#[derive(Debug, Clone, Default)]
pub struct Guards(Vec<Guard>);

impl Guards {
    /// Whether the endpoint has none (the stage costs nothing then).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs each guard on `req` at `now`, in order; the first answer stops it. (With
    /// no kind of guard yet, there is none to run: the match has no arm to take.)
    pub fn check(&self, _req: &ClientRequest, _now: Instant) -> Verdict {
        match self.0.first() {
            None => Verdict::Pass,
            Some(guard) => match *guard {},
        }
    }
}
