//! Which deadline each read and write of a client connection runs under, one rule for
//! every driver. Durations of zero in the config mean "no limit" (`None` here).

use std::time::{Duration, Instant};

use http::StatusCode;

use crate::config::Config;

/// `limit` after `since`; `None` for a zero limit (no limit).
pub(crate) fn after(since: Instant, limit: Duration) -> Option<Instant> {
    (!limit.is_zero()).then(|| since + limit)
}

/// Waiting for the next request head on a client connection.
///
/// Before the first request the header timeout runs from the accept (a client that
/// connects and says nothing is a slowloris too); between keep-alive requests the idle
/// timeout applies until a byte arrives, then the header timeout from that byte.
#[derive(Debug, Clone, Copy)]
pub struct HeadWait {
    since: Instant,
    first: bool,
    started: Option<Instant>,
}

impl HeadWait {
    /// `first`: no request has been read on this connection yet (`now` is the accept).
    pub fn new(first: bool, now: Instant) -> HeadWait {
        HeadWait { since: now, first, started: None }
    }

    /// Bytes of the head are at hand (call before feeding them to the codec).
    pub fn bytes_arrived(&mut self, now: Instant) {
        self.started.get_or_insert(now);
    }

    /// The accept (first request) or the end of the last answer.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// When the first byte of the head came, if one has.
    pub fn started(&self) -> Option<Instant> {
        self.started
    }

    /// No byte of the next request has come: a stopping server may close the
    /// connection now without losing anything.
    pub fn is_idle(&self) -> bool {
        self.started.is_none()
    }

    /// Waiting between keep-alive requests, no byte of the next one come yet.
    pub fn between_requests(&self) -> bool {
        !self.first && self.started.is_none()
    }

    /// When the wait ends.
    pub fn deadline(&self, cfg: &Config) -> Option<Instant> {
        match self.started {
            Some(at) => after(at, cfg.read_header_timeout),
            None if self.first && !cfg.read_header_timeout.is_zero() => after(self.since, cfg.read_header_timeout),
            None => after(self.since, cfg.idle_timeout),
        }
    }

    /// What the deadline passing means: `Some` is the answer to send before closing
    /// (a head was under way), `None` closes silently (an idle connection).
    pub fn expired(&self) -> Option<(StatusCode, &'static str)> {
        self.started.map(|_| (StatusCode::REQUEST_TIMEOUT, "request header timeout"))
    }
}

/// The deadline for reading a whole request body, counted from the request's start
/// (`read_timeout`). Past it the answer is 408 "request body timeout".
pub fn body_deadline(cfg: &Config, started: Instant) -> Option<Instant> {
    after(started, cfg.read_timeout)
}
