//! How an admin page (served on shard 0, through core like every connection) reads
//! every shard's counters without a lock on the request path: each shard keeps its
//! `Stats` in a `RefCell` only it touches, and copies them out when asked
//! (`Published`): a scrape bumps `wanted`, each shard's publisher (a task that looks
//! every few milliseconds while an admin listener exists) copies its counters under
//! the one lock a scrape takes and sets `done`.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sluice_core::StopSignal;
use sluice_core::ops::stats::Stats;

use crate::Shard;

/// One shard's counters as last copied out for a scrape.
#[derive(Debug, Default)]
pub(crate) struct Published {
    wanted: AtomicU64,
    done: AtomicU64,
    stats: Mutex<Stats>,
}

/// How often a shard looks whether a scrape wants its counters.
const LOOK_EVERY: Duration = Duration::from_millis(5);

/// Longest wait for the shards' counters; a shard that does not answer in time (a
/// stuck one) is left out of that scrape, which says so in its log line.
const GATHER_WAIT: Duration = Duration::from_secs(2);

/// Copies this shard's counters out whenever a scrape asks, until the stop.
pub(crate) async fn publish(shard: Rc<Shard>, mine: Arc<Published>, stop: StopSignal) {
    while !stop.is_triggered() {
        let wanted = mine.wanted.load(Ordering::Acquire);
        if wanted != mine.done.load(Ordering::Acquire) {
            // Counters keyed by the latest plan, as the page that shows them.
            shard.plan();
            let mut copy = shard.stats.borrow().clone();
            copy.dns = shard.pool.dns_stats();
            *mine.stats.lock().unwrap_or_else(PoisonError::into_inner) = copy;
            mine.done.store(wanted, Ordering::Release);
        }
        monoio::time::sleep(LOOK_EVERY).await;
    }
}

/// Every shard's counters, added up.
pub(crate) async fn gather(all: &[Arc<Published>]) -> Stats {
    let round: Vec<u64> = all.iter().map(|p| p.wanted.fetch_add(1, Ordering::AcqRel) + 1).collect();
    let since = Instant::now();
    while since.elapsed() < GATHER_WAIT && all.iter().zip(&round).any(|(p, r)| p.done.load(Ordering::Acquire) < *r) {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut sum = Stats::default();
    for (i, (p, r)) in all.iter().zip(&round).enumerate() {
        if p.done.load(Ordering::Acquire) < *r {
            tracing::warn!(shard = i, "admin: the shard did not give its counters in time; left out");
            continue;
        }
        sum.merge(&p.stats.lock().unwrap_or_else(PoisonError::into_inner));
    }
    sum
}
