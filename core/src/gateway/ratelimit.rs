//! An endpoint's rate limits (`qos/ratelimit/router`), and a backend's
//! (`qos/ratelimit/proxy`, [`CallLimit`]): one bucket for the whole
//! endpoint (`max_rate`, `capacity`: over it, 503) and one per client (`client_max_rate`,
//! `client_capacity`, told apart by `strategy` and `key`: over it, 429), the client's
//! checked first, both answered with an empty body as krakend-ratelimit answers.
//!
//! **One limit for the whole process.** The buckets are shared by every shard, each an
//! atomic word updated by compare-and-swap: no lock, no shard's share. A bucket is kept
//! as the time it will be full again (GCRA): a request is let through when that time is
//! at most `capacity - 1` refills ahead of now, and moves it one refill on. So at most
//! `capacity` requests pass at once, then one per `1 / rate` seconds. (KrakenD's bucket
//! refills only once empty, and after a long quiet spell lets through `2 x capacity + 1`
//! at once; here a burst is never more than `capacity`.)
//!
//! **Client buckets are bounded.** They live in a fixed table (8 per KrakenD
//! `num_shards`: 16,384 for the default, 8 bytes each), found by a keyed hash of the
//! client's key (seeded per process, so a client cannot aim at another's bucket): a
//! word holds a 16-bit tag of the key and the bucket's time in microseconds. A client
//! takes its own bucket if one of four in a row is, else the first of them back to
//! full (whose client then has nothing to forget); when all four belong to clients
//! still limited, it shares the first one (limited with that client: stricter, never
//! looser). A client rotating keys therefore holds at most the table; keeping its rows
//! busy makes newcomers there share a limited bucket (the price of bounded memory).

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::config::{LimitStrategy, RateLimitConfig, RouterOptions};
use crate::request::{ClientRequest, Reply};

/// The compiled `qos/ratelimit/router` of one endpoint.
#[derive(Debug, Clone)]
pub struct RouterLimit(Arc<Limits>);

/// Where a limit's clock starts: the first instant a request brings (core reads no
/// clock; a bucket is full until its first token is taken, so only differences
/// count). An instant before it counts as it.
#[derive(Debug, Default)]
struct Epoch(OnceLock<Instant>);

impl Epoch {
    fn since(&self, now: Instant) -> Duration {
        now.saturating_duration_since(*self.0.get_or_init(|| now))
    }
}

#[derive(Debug)]
struct Limits {
    epoch: Epoch,
    endpoint: Option<Bucket>,
    clients: Option<(Clients, LimitStrategy)>,
}

/// One shared bucket: the time (ns from the epoch) it is full again.
#[derive(Debug)]
struct Bucket {
    full_at: AtomicU64,
    /// Nanoseconds per token.
    step: u64,
    /// How far ahead of now `full_at` may be for a request to pass: `capacity - 1` steps.
    ahead: u64,
}

impl Bucket {
    fn new(rate: f64, capacity: u64, unit: f64) -> Bucket {
        // The configuration bounds capacity / rate (two years for a client's); the clamp
        // keeps the arithmetic in range whatever it is given.
        let step = (unit / rate).clamp(1.0, (1u64 << 40) as f64) as u64;
        Bucket { full_at: AtomicU64::new(0), step, ahead: step.saturating_mul(capacity.max(1) - 1) }
    }

    /// Takes a token at `now` if there is one.
    fn take(&self, now: u64) -> bool {
        let mut seen = self.full_at.load(Ordering::Relaxed);
        loop {
            let Some(next) = next_full(seen, now, self.step, self.ahead) else { return false };
            match self.full_at.compare_exchange_weak(seen, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now_seen) => seen = now_seen,
            }
        }
    }
}

/// GCRA: a bucket full again at `full_at` lets a request through at `now` when that is
/// at most `ahead` later; it is then full one `step` later.
fn next_full(full_at: u64, now: u64, step: u64, ahead: u64) -> Option<u64> {
    let from = full_at.max(now);
    (from - now <= ahead).then(|| from.saturating_add(step))
}

/// The client buckets: tag (16 bits) and full-again time in microseconds (48 bits).
#[derive(Debug)]
struct Clients {
    slots: Box<[AtomicU64]>,
    step: u64,
    ahead: u64,
    hasher: foldhash::fast::RandomState,
}

const TIME_BITS: u32 = 48;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
/// The longest a client bucket may take to refill whole (capacity / rate), in seconds:
/// two years, far inside the 48 bits of microseconds (8.9 years) its time is kept in.
pub const CLIENT_REFILL_MAX_SECS: f64 = 2.0 * 365.0 * 86_400.0;
/// Buckets a client may take, from the one its key hashes to.
const PROBES: usize = 4;

impl Clients {
    fn new(rate: f64, capacity: u64, slots: usize) -> Clients {
        let b = Bucket::new(rate, capacity, 1e6);
        let slots = slots.next_power_of_two();
        Clients {
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            step: b.step,
            ahead: b.ahead,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Takes a token from `key`'s bucket at `now` (microseconds from the epoch).
    fn take(&self, key: impl Hash, now: u64) -> bool {
        let hash = self.hasher.hash_one(key);
        // Never 0: an empty slot (0) belongs to nobody.
        let tag = (hash >> TIME_BITS) | 1;
        let mask = self.slots.len() - 1;
        let first = hash as usize & mask;
        let now = now & TIME_MASK;
        let row = |probe: usize| &self.slots[(first + probe) & mask];
        // Its own bucket first, wherever in the row it is (a bucket further on must
        // not be passed over for one that came back to full before it); then the
        // first one back to full, whose client has nothing left to forget.
        let own = (0..PROBES).find(|&p| row(p).load(Ordering::Relaxed) >> TIME_BITS == tag);
        for probe in own.into_iter().chain(0..PROBES) {
            let slot = row(probe);
            let mut seen = slot.load(Ordering::Relaxed);
            loop {
                let (owner, full_at) = (seen >> TIME_BITS, seen & TIME_MASK);
                let full_at = if owner == tag {
                    full_at
                } else if full_at <= now && own.is_none() {
                    0
                } else {
                    break;
                };
                let Some(next) = next_full(full_at, now, self.step, self.ahead) else { return false };
                let word = (tag << TIME_BITS) | (next & TIME_MASK);
                match slot.compare_exchange_weak(seen, word, Ordering::AcqRel, Ordering::Relaxed) {
                    Ok(_) => return true,
                    Err(now_seen) => seen = now_seen,
                }
            }
        }
        // Four clients still limited hold the row: share the first bucket, keeping its tag.
        let slot = &self.slots[first];
        let mut seen = slot.load(Ordering::Relaxed);
        loop {
            let Some(next) = next_full(seen & TIME_MASK, now, self.step, self.ahead) else { return false };
            let word = (seen & !TIME_MASK) | (next & TIME_MASK);
            match slot.compare_exchange_weak(seen, word, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now_seen) => seen = now_seen,
            }
        }
    }
}

impl RouterLimit {
    pub fn compile(c: &RateLimitConfig) -> RouterLimit {
        let endpoint = (c.max_rate > 0.0).then(|| Bucket::new(c.max_rate, c.capacity, 1e9));
        let clients = match (&c.strategy, c.client_max_rate > 0.0) {
            (Some(strategy), true) => {
                Some((Clients::new(c.client_max_rate, c.client_capacity, c.client_slots), strategy.clone()))
            }
            _ => None,
        };
        RouterLimit(Arc::new(Limits { epoch: Epoch::default(), endpoint, clients }))
    }

    /// The answer when `req` (its path's `params`) is over a limit at `now`: 429 for
    /// its client's, 503 for the endpoint's.
    pub fn check(
        &self,
        req: &ClientRequest,
        params: &[(String, String)],
        router: &RouterOptions,
        now: Instant,
    ) -> Option<Reply> {
        let since = self.0.epoch.since(now);
        if let Some((clients, strategy)) = &self.0.clients {
            let micros = u64::try_from(since.as_micros()).unwrap_or(u64::MAX);
            let passed = match client_key(strategy, req, params, router) {
                Some(Key::Ip(ip)) => clients.take(ip, micros),
                Some(Key::Bytes(k)) => clients.take(k, micros),
                // No key to tell the client by (a header or parameter missing or
                // empty): refused as KrakenD refuses it.
                None => false,
            };
            if !passed {
                return Some(Reply::empty(StatusCode::TOO_MANY_REQUESTS));
            }
        }
        if let Some(bucket) = &self.0.endpoint
            && !bucket.take(nanos(since))
        {
            return Some(Reply::empty(StatusCode::SERVICE_UNAVAILABLE));
        }
        None
    }
}

/// A backend's `qos/ratelimit/proxy`: one bucket for every call to it, from every
/// client and shard. A call over it is not made: it fails with KrakenD's reason, and
/// the endpoint answers as for any failed backend (a partial answer when others
/// answered, else 500).
#[derive(Debug, Clone)]
pub struct CallLimit(Arc<(Epoch, Bucket)>);

/// What a call over its backend's limit fails with (KrakenD's text, its spelling kept:
/// `return_error_msg` shows it to clients).
pub const LIMITED: &str = "rate limit exceded";

impl CallLimit {
    pub fn compile(c: &crate::config::ProxyRateLimit) -> CallLimit {
        CallLimit(Arc::new((Epoch::default(), Bucket::new(c.max_rate, c.capacity, 1e9))))
    }

    /// Takes a call's token at `now`, if there is one.
    pub fn take(&self, now: Instant) -> bool {
        self.0.1.take(nanos(self.0.0.since(now)))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

enum Key<'r> {
    Ip(std::net::IpAddr),
    Bytes(&'r [u8]),
}

/// What tells the client of `req` apart, as krakend-ratelimit reads it.
fn client_key<'r>(
    strategy: &LimitStrategy,
    req: &'r ClientRequest,
    params: &'r [(String, String)],
    router: &RouterOptions,
) -> Option<Key<'r>> {
    match strategy {
        LimitStrategy::Ip(None) => Some(Key::Ip(router.client_ip(req.peer, &req.headers))),
        // The address the header gives, read only from a trusted proxy and right to left
        // past the trusted ones (KrakenD believes its first address from anyone, which
        // lets a client pick a new bucket per request).
        LimitStrategy::Ip(Some(header)) => {
            Some(Key::Ip(router.forwarded_ip(req.peer, &req.headers, [header.as_str()])))
        }
        LimitStrategy::Header(name) => req.headers.get(name).filter(|v| !v.is_empty()).map(Key::Bytes),
        LimitStrategy::Param(name) => {
            params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_bytes()).filter(|v| !v.is_empty()).map(Key::Bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_capacity_through_then_one_per_step() {
        let b = Bucket::new(2.0, 5, 1e9);
        let ms = |n: u64| n * 1_000_000;
        assert_eq!((0..8).filter(|_| b.take(0)).count(), 5);
        assert!(!b.take(ms(499)));
        assert!(b.take(ms(500)));
        assert!(!b.take(ms(999)));
        assert!(b.take(ms(1000)));
        // Quiet for a minute: full again, capacity and no more.
        assert_eq!((0..20).filter(|_| b.take(ms(61_000))).count(), 5);
        // Capacity 1: no burst.
        let one = Bucket::new(0.5, 1, 1e9);
        assert!(one.take(0) && !one.take(ms(1999)) && one.take(ms(2000)));
    }

    #[test]
    fn clients_have_their_own_buckets_in_a_bounded_table() {
        let c = Clients::new(1.0, 2, 64);
        assert_eq!(c.slots.len(), 64);
        assert_eq!((0..5).filter(|_| c.take("alice", 0)).count(), 2);
        assert_eq!((0..5).filter(|_| c.take("bob", 0)).count(), 2);
        assert!(!c.take("alice", 999_999));
        assert!(c.take("alice", 1_000_000));
        // Ten thousand clients in a table of 64, each asking twice: the table does not
        // grow; at most two per bucket get through (each bucket's capacity, owned or
        // shared), and alice, limited now, is not let through more than her rate.
        let through = (0..10_000).flat_map(|i| [i, i]).filter(|i| c.take(format!("client {i}"), 1_000_000)).count();
        assert_eq!(c.slots.len(), 64);
        assert!((64..=128).contains(&through), "{through}");
        let alice = (0..5).filter(|_| c.take("alice", 1_000_000)).count();
        assert_eq!(alice, 0);
    }

    /// A client whose bucket is second in its row, the first one coming back to full:
    /// it keeps taking from its own (limited) bucket, not from the full one before it.
    #[test]
    fn a_client_is_not_given_a_fresh_bucket_ahead_of_its_own() {
        let c = Clients::new(1.0, 2, 64);
        let home = |k: &str| c.hasher.hash_one(k) as usize & 63;
        // Two keys whose rows start at the same bucket.
        let first = "key 0".to_string();
        let second = (1..100_000).map(|i| format!("key {i}")).find(|k| home(k) == home(&first)).unwrap();
        let now = 10_000_000;
        assert!(c.take(&first, now));
        // The second lands in the next bucket of the row and empties it.
        assert_eq!((0..3).filter(|_| c.take(&second, now)).count(), 2);
        // A second on, the first bucket is full again; the second's own has one token
        // back (1 a second): one, not a fresh bucket's two.
        let later = now + 1_000_000;
        assert_eq!((0..3).filter(|_| c.take(&second, later)).count(), 1);
        assert_eq!((0..3).filter(|_| c.take(&second, later + 500_000)).count(), 0);
        assert_eq!((0..3).filter(|_| c.take(&first, later)).count(), 2, "the first key's bucket is full again");
    }
}
