//! The admin listener (on shard 0) and how it reads every shard's counters without a
//! lock on the request path: each shard keeps its `Stats` in a `RefCell` only it
//! touches, and copies them out when asked (`Published`): the admin bumps `wanted`,
//! each shard's publisher (a task that looks every few milliseconds while an admin
//! listener exists) copies its counters under the one lock a scrape takes and sets
//! `done`. The pages themselves are `sluice_core::admin`'s.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use sluice_core::StopSignal;
use sluice_core::admin::{self, Request};
use sluice_core::stats::Stats;

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
            let mut copy = shard.stats.borrow().clone();
            copy.dns = shard.pool.dns_stats();
            *mine.stats.lock().unwrap_or_else(PoisonError::into_inner) = copy;
            mine.done.store(wanted, Ordering::Release);
        }
        monoio::time::sleep(LOOK_EVERY).await;
    }
}

/// Every shard's counters, added up.
async fn gather(all: &[Arc<Published>]) -> Stats {
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

/// Serves the admin pages on `listener` until the stop.
pub(crate) async fn serve(
    listener: TcpListener,
    shard: Rc<Shard>,
    all: Arc<Vec<Arc<Published>>>,
    stop: StopSignal,
    cancel: monoio::io::CancelHandle,
) {
    loop {
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((stream, _)) => {
                monoio::spawn(answer(stream, shard.clone(), all.clone()));
            }
            Err(_) if stop.is_triggered() => break,
            Err(e) => {
                tracing::warn!("admin: accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Reads one request (for at most 5 s), answers it, closes.
async fn answer(mut stream: TcpStream, shard: Rc<Shard>, all: Arc<Vec<Arc<Published>>>) {
    let mut buf = Vec::with_capacity(1024);
    let read = monoio::time::timeout(Duration::from_secs(5), async {
        loop {
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(1024);
            }
            let (len, cap) = (buf.len(), buf.capacity());
            let (res, slice) = stream.read(std::mem::take(&mut buf).slice_mut(len..cap)).await;
            buf = slice.into_inner();
            match res {
                Ok(0) | Err(_) => return None,
                Ok(_) => match admin::request(&buf) {
                    Request::Incomplete => {}
                    done => return Some(done),
                },
            }
        }
    })
    .await;
    let bytes = match read {
        Ok(Some(Request::Page(page))) => {
            let stats = if page.needs_stats() { gather(&all).await } else { Stats::default() };
            admin::answer(&shard.gw, &shard.runtime, page, &stats)
        }
        Ok(Some(Request::Reply(bytes))) => bytes,
        _ => return,
    };
    let _ = stream.write_all(bytes).await;
    // Closed only once the client has what it sent read (at most 64 KiB, 1 s): closing
    // with its bytes unread would reset the connection and could lose the answer.
    let _ = stream.shutdown().await;
    let _ = monoio::time::timeout(Duration::from_secs(1), async {
        let mut left = 64 * 1024;
        let mut buf = Vec::with_capacity(4096);
        while left > 0 {
            buf.clear();
            let (res, b) = stream.read(buf).await;
            buf = b;
            match res {
                Ok(n) if n > 0 => left -= n.min(left),
                _ => break,
            }
        }
    })
    .await;
}
