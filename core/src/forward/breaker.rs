//! Circuit breakers of the forward proxy, per destination (`host:port`), with Envoy's
//! names and defaults.
//!
//! - `max_requests`: requests in flight to the destination, tunnels included.
//! - `max_pending_requests`: requests waiting for their connection to open.
//! - `max_connections`: connections in use by requests and tunnels. Over HTTP/1.1 a
//!   connection carries one request at a time, so this and `max_requests` open
//!   together unless set apart; idle pooled connections are not counted (they are
//!   bounded by `max_idle_connections_per_host`, per shard).
//! - `max_retries`: retries in flight (a request sent again after a pooled connection
//!   turned out closed). Over it, the retry is not made and the first failure stands.
//!
//! The counts are shared by every shard, as Envoy's are shared by its workers: a
//! limit means the same whatever the number of shards, and a destination cannot get
//! `shards × max_requests` at once. They are atomics; finding a destination's counts
//! takes one short lock on one of [`STRIPES`] maps (by the name's hash) per request or
//! tunnel, never held across anything else. A [`Permit`] gives back what it holds
//! when dropped, so no path can leak a count.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The thresholds are configuration (`circuit_breakers`).
pub use crate::config::Thresholds;

/// Which breaker refused (its Envoy threshold name goes in [`HEADER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    MaxConnections,
    MaxPendingRequests,
    MaxRequests,
    MaxRetries,
}

impl Breaker {
    pub fn name(self) -> &'static str {
        match self {
            Breaker::MaxConnections => "max_connections",
            Breaker::MaxPendingRequests => "max_pending_requests",
            Breaker::MaxRequests => "max_requests",
            Breaker::MaxRetries => "max_retries",
        }
    }
}

/// The response header naming the breaker that refused a request (with 503).
pub const HEADER: &str = "x-sluice-circuit-breaker";

/// Maps the destinations are spread over.
pub const STRIPES: usize = 16;

/// Destinations kept per stripe before idle ones (nothing in flight) are dropped.
const KEEP_PER_STRIPE: usize = 1024;

/// One destination's counts, shared by every shard.
#[derive(Debug, Default)]
pub struct Resources {
    connections: AtomicU32,
    pending: AtomicU32,
    requests: AtomicU32,
    retries: AtomicU32,
    /// Envoy's `upstream_cx_overflow`, `upstream_rq_pending_overflow`,
    /// `upstream_rq_overflow` (ours: `max_requests` has no Envoy counter of its own
    /// over HTTP/1), `upstream_rq_retry_overflow`.
    cx_overflow: AtomicU64,
    pending_overflow: AtomicU64,
    rq_overflow: AtomicU64,
    retry_overflow: AtomicU64,
}

/// What a destination's counts were when read (for the admin pages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gauges {
    pub destination: String,
    pub connections: u32,
    pub pending: u32,
    pub requests: u32,
    pub retries: u32,
    pub cx_overflow: u64,
    pub pending_overflow: u64,
    pub rq_overflow: u64,
    pub retry_overflow: u64,
}

/// Takes one unit of `count` if it is under `max`.
fn take(count: &AtomicU32, max: u32) -> bool {
    count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
}

fn give(count: &AtomicU32) {
    let _ = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

/// Every destination's counts (one per process, shared by the shards).
#[derive(Debug)]
pub struct Breakers {
    thresholds: Thresholds,
    stripes: Vec<Mutex<HashMap<String, Arc<Resources>>>>,
}

impl Breakers {
    pub fn new(thresholds: Thresholds) -> Breakers {
        Breakers { thresholds, stripes: (0..STRIPES).map(|_| Mutex::default()).collect() }
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    fn resources(&self, destination: &str) -> Arc<Resources> {
        let mut h = DefaultHasher::new();
        destination.hash(&mut h);
        let stripe = &self.stripes[(h.finish() as usize) % STRIPES];
        let mut map = stripe.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = map.get(destination) {
            return r.clone();
        }
        if map.len() >= KEEP_PER_STRIPE {
            // Only this map holds them: nothing in flight.
            map.retain(|_, r| Arc::strong_count(r) > 1);
        }
        let r = Arc::new(Resources::default());
        map.insert(destination.to_string(), r.clone());
        r
    }

    /// A request (or tunnel) to `destination` that needs a connection: holds a
    /// request, a connection and a pending slot, or says which breaker is open.
    pub fn admit(&self, destination: &str) -> Result<Permit, Breaker> {
        let r = self.resources(destination);
        let t = &self.thresholds;
        if !take(&r.requests, t.max_requests) {
            r.rq_overflow.fetch_add(1, Ordering::Relaxed);
            return Err(Breaker::MaxRequests);
        }
        if !take(&r.pending, t.max_pending_requests) {
            give(&r.requests);
            r.pending_overflow.fetch_add(1, Ordering::Relaxed);
            return Err(Breaker::MaxPendingRequests);
        }
        if !take(&r.connections, t.max_connections) {
            give(&r.requests);
            give(&r.pending);
            r.cx_overflow.fetch_add(1, Ordering::Relaxed);
            return Err(Breaker::MaxConnections);
        }
        Ok(Permit { r, max_retries: t.max_retries, pending: true, retry: false })
    }

    /// Every destination's counts now, by name.
    pub fn gauges(&self) -> Vec<Gauges> {
        let mut out = Vec::new();
        for stripe in &self.stripes {
            let map = stripe.lock().unwrap_or_else(PoisonError::into_inner);
            for (name, r) in map.iter() {
                out.push(Gauges {
                    destination: name.clone(),
                    connections: r.connections.load(Ordering::Relaxed),
                    pending: r.pending.load(Ordering::Relaxed),
                    requests: r.requests.load(Ordering::Relaxed),
                    retries: r.retries.load(Ordering::Relaxed),
                    cx_overflow: r.cx_overflow.load(Ordering::Relaxed),
                    pending_overflow: r.pending_overflow.load(Ordering::Relaxed),
                    rq_overflow: r.rq_overflow.load(Ordering::Relaxed),
                    retry_overflow: r.retry_overflow.load(Ordering::Relaxed),
                });
            }
        }
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        out
    }
}

/// What one request or tunnel holds of its destination's counts; given back on drop.
#[derive(Debug)]
pub struct Permit {
    r: Arc<Resources>,
    max_retries: u32,
    pending: bool,
    retry: bool,
}

impl Permit {
    /// The connection is open (or a pooled one was taken): no longer pending.
    pub fn connected(&mut self) {
        if std::mem::take(&mut self.pending) {
            give(&self.r.pending);
        }
    }

    /// May the request be sent again? Holds a retry until the permit drops; `false`
    /// (counted as an overflow) when `max_retries` retries are in flight.
    pub fn retry(&mut self) -> bool {
        if self.retry {
            return true;
        }
        if take(&self.r.retries, self.max_retries) {
            self.retry = true;
            true
        } else {
            self.r.retry_overflow.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

impl crate::call::Admission for Permit {
    fn connected(&mut self) {
        Permit::connected(self);
    }

    fn retry(&mut self) -> bool {
        Permit::retry(self)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        give(&self.r.requests);
        give(&self.r.connections);
        if self.pending {
            give(&self.r.pending);
        }
        if self.retry {
            give(&self.r.retries);
        }
    }
}
