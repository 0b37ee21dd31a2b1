//! `qos/circuit-breaker` on a backend: a backend that keeps failing stops being
//! called for a while, as krakend-circuitbreaker (gobreaker) does it.
//!
//! **States.** Closed: calls go through; a failure counts, a success sets the count
//! back to 0, and the count starts again every `interval` (0: never). One failure more
//! than `max_errors` in a row opens it. Open: calls fail at once, without being made,
//! with `circuit breaker is open`, for `timeout` (0: 60 s). Then the first call is let
//! through (half-open) and the others fail with `too many requests` until it ends: a
//! success closes the breaker, a failure opens it again. Every change of state starts
//! the count again, and a call that started before the change is not counted after it.
//!
//! **What fails.** As KrakenD counts it: anything but an answer the endpoint takes
//! (200 or 201, decoded; any status from a `no-op` backend), so a status, a timeout, a
//! connection failure, a body that does not decode, and a call stopped by the
//! backend's own rate limit or CEL checks (they sit inside the breaker in KrakenD).
//! A call the request no longer waits for (the client left, another backend's answer
//! ended a sequence) is not counted either way.
//!
//! **One breaker per backend, for the whole process.** It belongs to the backend as
//! configured (all its hosts together, as KrakenD's), and every shard shares it: its
//! state is one atomic word (state, the half-open call, a generation, the failure
//! count, when the current state ends) changed by compare-and-swap. No lock, and no
//! shard sees another's count late. Times are those the connection gives the exchange
//! (a call is counted when its answer was handled).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

/// What a call refused while open fails with (gobreaker's words).
pub const OPEN: &str = "circuit breaker is open";
/// What a call refused while half-open fails with.
pub const TOO_MANY: &str = "too many requests";

/// A breaker's state, as gobreaker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half-open",
            State::Open => "open",
        }
    }
}

/// A change of state, for the log (`log_status_change`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: State,
    pub to: State,
}

/// A call let through: which generation it counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u8);

/// The packed word: bits 0-1 state, bit 2 the half-open call taken, bits 3-10 the
/// generation, bits 11-26 consecutive failures, bits 27-63 when the state ends, in
/// 1/64 s from the epoch (0: not set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word {
    state: State,
    probe: bool,
    generation: u64,
    failures: u64,
    ends: u64,
}

const TICKS_PER_SEC: u64 = 64;

impl Word {
    fn pack(self) -> u64 {
        let s = match self.state {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        };
        s | (u64::from(self.probe) << 2)
            | ((self.generation & 0xff) << 3)
            | ((self.failures & 0xffff) << 11)
            | (self.ends << 27)
    }

    fn unpack(w: u64) -> Word {
        Word {
            state: match w & 3 {
                1 => State::Open,
                2 => State::HalfOpen,
                _ => State::Closed,
            },
            probe: w & 4 != 0,
            generation: (w >> 3) & 0xff,
            failures: (w >> 11) & 0xffff,
            ends: w >> 27,
        }
    }
}

#[derive(Debug)]
struct Inner {
    name: String,
    interval: u64,
    timeout: u64,
    max_errors: u64,
    log: bool,
    epoch: std::sync::OnceLock<Instant>,
    word: AtomicU64,
}

/// A backend's breaker, shared by every shard (cloning shares it).
#[derive(Debug, Clone)]
pub struct Breaker(Arc<Inner>);

fn ticks(d: Duration) -> u64 {
    // Rounded up: a state never ends early.
    (d.as_nanos().div_ceil(1_000_000_000 / u128::from(TICKS_PER_SEC))).min(u128::from(u64::MAX >> 28)) as u64
}

impl Breaker {
    pub fn new(c: &BreakerConfig) -> Breaker {
        let timeout = if c.timeout.is_zero() { Duration::from_secs(60) } else { c.timeout };
        Breaker(Arc::new(Inner {
            name: c.name.clone(),
            interval: ticks(c.interval),
            timeout: ticks(timeout),
            max_errors: u64::from(c.max_errors),
            log: c.log_status_change,
            epoch: std::sync::OnceLock::new(),
            word: AtomicU64::new(
                Word { state: State::Closed, probe: false, generation: 0, failures: 0, ends: 0 }.pack(),
            ),
        }))
    }

    /// Its `name`.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Whether changes of state are logged (`log_status_change`).
    pub fn logs_changes(&self) -> bool {
        self.0.log
    }

    /// Ticks since the epoch (the first time asked), at least 1.
    fn tick(&self, now: Instant) -> u64 {
        let epoch = *self.0.epoch.get_or_init(|| now);
        1 + ticks(now.saturating_duration_since(epoch))
    }

    /// A new generation of `state` starting at `now`.
    fn fresh(&self, w: Word, state: State, now: u64) -> Word {
        let ends = match state {
            State::Closed if self.0.interval > 0 => now + self.0.interval,
            State::Closed | State::HalfOpen => 0,
            State::Open => now + self.0.timeout,
        };
        Word { state, probe: false, generation: (w.generation + 1) & 0xff, failures: 0, ends }
    }

    /// The word as it stands at `now` (a closed count or an open state that ran out).
    fn current(&self, w: Word, now: u64) -> (Word, Option<Change>) {
        match w.state {
            State::Closed if w.ends == 0 && self.0.interval > 0 => (Word { ends: now + self.0.interval, ..w }, None),
            State::Closed if w.ends != 0 && w.ends <= now => (self.fresh(w, State::Closed, now), None),
            State::Open if w.ends <= now => {
                (self.fresh(w, State::HalfOpen, now), Some(Change { from: State::Open, to: State::HalfOpen }))
            }
            _ => (w, None),
        }
    }

    /// Changes the word with `f` (given the current word) until no other shard changed
    /// it in between.
    fn update<T>(&self, now: Instant, mut f: impl FnMut(Word, u64) -> (Word, T)) -> T {
        let now = self.tick(now);
        let mut old = self.0.word.load(Ordering::Acquire);
        loop {
            let (new, out) = f(Word::unpack(old), now);
            match self.0.word.compare_exchange_weak(old, new.pack(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return out,
                Err(seen) => old = seen,
            }
        }
    }

    /// A call wants to go at `now`: its ticket, or why not; with the change of state
    /// asking made (open to half-open).
    pub fn admit(&self, now: Instant) -> (Result<Ticket, &'static str>, Option<Change>) {
        self.update(now, |w, now| {
            let (w, change) = self.current(w, now);
            match w.state {
                State::Open => (w, (Err(OPEN), change)),
                State::HalfOpen if w.probe => (w, (Err(TOO_MANY), change)),
                State::HalfOpen => (Word { probe: true, ..w }, (Ok(Ticket(w.generation as u8)), change)),
                State::Closed => (w, (Ok(Ticket(w.generation as u8)), change)),
            }
        })
    }

    /// A call let through with `ticket` ended at `now`: `Some(true)` a success,
    /// `Some(false)` a failure, `None` not counted (abandoned). The change of state it
    /// made, if any.
    pub fn record(&self, ticket: Ticket, now: Instant, outcome: Option<bool>) -> Option<Change> {
        let Some(outcome) = outcome else {
            // Not counted: a half-open call frees its place; no state changes here.
            self.update(now, |w, _| match w.state {
                State::HalfOpen if w.generation == u64::from(ticket.0) => (Word { probe: false, ..w }, ()),
                _ => (w, ()),
            });
            return None;
        };
        let outcome = Some(outcome);
        self.update(now, |w, now| {
            let (w, change) = self.current(w, now);
            if w.generation != u64::from(ticket.0) {
                return (w, change);
            }
            match (w.state, outcome) {
                (_, None) => (w, change),
                (State::Closed, Some(true)) => (Word { failures: 0, ..w }, change),
                (State::Closed, Some(false)) => {
                    let failures = (w.failures + 1).min(0xffff);
                    if failures > self.0.max_errors {
                        (self.fresh(w, State::Open, now), Some(Change { from: State::Closed, to: State::Open }))
                    } else {
                        (Word { failures, ..w }, change)
                    }
                }
                (State::HalfOpen, Some(true)) => {
                    (self.fresh(w, State::Closed, now), Some(Change { from: State::HalfOpen, to: State::Closed }))
                }
                (State::HalfOpen, Some(false)) => {
                    (self.fresh(w, State::Open, now), Some(Change { from: State::HalfOpen, to: State::Open }))
                }
                (State::Open, Some(_)) => (w, change),
            }
        })
    }

    /// The state and the consecutive failures counted, as stored (for the admin pages;
    /// an open state whose time ran out turns half-open on the next call).
    pub fn state(&self) -> (State, u64) {
        let w = Word::unpack(self.0.word.load(Ordering::Acquire));
        (w.state, w.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(interval: u64, timeout: u64, max_errors: u32) -> Breaker {
        Breaker::new(&BreakerConfig {
            name: "b".into(),
            interval: Duration::from_secs(interval),
            timeout: Duration::from_secs(timeout),
            max_errors,
            log_status_change: true,
        })
    }

    fn ok(b: &Breaker, now: Instant) -> Ticket {
        b.admit(now).0.expect("let through")
    }

    #[test]
    fn opens_after_max_errors_plus_one_in_a_row() {
        let t0 = Instant::now();
        let b = breaker(60, 10, 1);
        // A success between failures sets the count back.
        let t = ok(&b, t0);
        assert_eq!(b.record(t, t0, Some(false)), None);
        let t = ok(&b, t0);
        assert_eq!(b.record(t, t0, Some(true)), None);
        let t = ok(&b, t0);
        assert_eq!(b.record(t, t0, Some(false)), None);
        assert_eq!(b.state(), (State::Closed, 1));
        let t = ok(&b, t0);
        assert_eq!(b.record(t, t0, Some(false)), Some(Change { from: State::Closed, to: State::Open }));
        assert_eq!(b.admit(t0 + Duration::from_secs(9)).0, Err(OPEN));
        // After `timeout`: one call through, the next refused while it runs.
        let later = t0 + Duration::from_secs(10);
        let (probe, change) = b.admit(later);
        assert_eq!(change, Some(Change { from: State::Open, to: State::HalfOpen }));
        assert_eq!(b.admit(later).0, Err(TOO_MANY));
        assert_eq!(
            b.record(probe.unwrap(), later, Some(true)),
            Some(Change { from: State::HalfOpen, to: State::Closed })
        );
        assert_eq!(b.state(), (State::Closed, 0));
    }

    #[test]
    fn half_open_failure_opens_again_and_stale_calls_do_not_count() {
        let t0 = Instant::now();
        let b = breaker(0, 5, 0);
        let early = ok(&b, t0);
        let t = ok(&b, t0);
        assert_eq!(b.record(t, t0, Some(false)).map(|c| c.to), Some(State::Open));
        // A call of the closed generation ending now changes nothing.
        assert_eq!(b.record(early, t0, Some(true)), None);
        assert_eq!(b.state().0, State::Open);
        let probe = b.admit(t0 + Duration::from_secs(5)).0.unwrap();
        assert_eq!(
            b.record(probe, t0 + Duration::from_secs(6), Some(false)),
            Some(Change { from: State::HalfOpen, to: State::Open })
        );
        assert_eq!(b.admit(t0 + Duration::from_secs(10)).0, Err(OPEN));
        // An abandoned probe frees the half-open slot.
        let probe = b.admit(t0 + Duration::from_secs(11)).0.unwrap();
        assert_eq!(b.record(probe, t0 + Duration::from_secs(11), None), None);
        assert!(b.admit(t0 + Duration::from_secs(11)).0.is_ok());
    }

    #[test]
    fn the_interval_forgets_failures_and_timeout_zero_is_a_minute() {
        let t0 = Instant::now();
        let b = breaker(2, 0, 1);
        let t = ok(&b, t0);
        b.record(t, t0, Some(false));
        assert_eq!(b.state(), (State::Closed, 1));
        // The count starts again after the interval.
        let t = ok(&b, t0 + Duration::from_secs(3));
        assert_eq!(b.record(t, t0 + Duration::from_secs(3), Some(false)), None);
        assert_eq!(b.state(), (State::Closed, 1));
        let t = ok(&b, t0 + Duration::from_secs(3));
        assert!(b.record(t, t0 + Duration::from_secs(3), Some(false)).is_some());
        assert_eq!(b.admit(t0 + Duration::from_secs(62)).0, Err(OPEN));
        assert!(b.admit(t0 + Duration::from_secs(64)).0.is_ok());
    }

    #[test]
    fn shards_share_one_count() {
        let t0 = Instant::now();
        let b = breaker(0, 30, 99);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut changes = Vec::new();
                    for _ in 0..25 {
                        if let Ok(t) = b.admit(t0).0 {
                            changes.extend(b.record(t, t0, Some(false)));
                        }
                    }
                    changes
                })
            })
            .collect();
        let changes: Vec<Change> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        // 100 failures in a row: the 100th opened it, exactly once.
        assert_eq!(changes, [Change { from: State::Closed, to: State::Open }]);
        assert_eq!(b.state().0, State::Open);
    }
}
