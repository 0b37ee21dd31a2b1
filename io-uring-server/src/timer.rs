//! The shard's one timer. Each connection has one deadline at most (its
//! `Connection::poll_timeout`); they wait here, earliest first, and one monoio sleep,
//! run by [`Timers::pump`], is set for the earliest of them.
//!
//! A monoio `Sleep` per connection was 640 bytes of heap (its timer entry is
//! cache-line aligned), a fifth of what an idle keep-alive connection held. Here a
//! connection's deadline costs an [`Entry`] (40 bytes) and a heap element (24).
//!
//! A deadline that is set again (earlier: a connection only ever moves its timer
//! earlier, see `Ops::arm`) or whose connection has gone leaves a stale element in
//! the heap; it is dropped when it comes up, and the heap is swept of them whenever
//! they outnumber the live ones by more than 64 (so connections that come and go
//! with long deadlines do not pile them up).

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::{Future, poll_fn};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Every connection's deadline on this shard.
#[derive(Default)]
pub(crate) struct Timers {
    inner: RefCell<Inner>,
    /// The deadlines that have gone off here: a connection looks at its own timer only
    /// when this moved since it last looked ([`Timer::poll`]).
    fires: Events,
}

/// A count of what went off in a shard (deadlines, stops, retirements), shared by its
/// connections: each keeps what it last [`Seen`] of it and looks at its own state only
/// when the count moved, a load and a compare. 32 bits keep what a connection holds
/// small (its timer 16 bytes); a look would be missed only if exactly a multiple of
/// 2^32 events came between two wakes of one connection.
#[derive(Default)]
pub(crate) struct Events(Cell<u32>);

impl Events {
    pub(crate) fn add(&self, n: u32) {
        self.0.set(self.0.get().wrapping_add(n));
    }

    pub(crate) fn get(&self) -> u32 {
        self.0.get()
    }

    /// What one that never looked has seen: the count differs from it.
    pub(crate) fn unseen(&self) -> Seen {
        Seen(self.0.get().wrapping_sub(1))
    }
}

/// The count of [`Events`] at one connection's last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen(u32);

impl Seen {
    /// Whether `events` moved since the last look (always, at the first); this is a look.
    #[inline(always)]
    pub(crate) fn moved(&mut self, events: &Events) -> bool {
        let now = events.get();
        let moved = now != self.0;
        self.0 = now;
        moved
    }
}

#[derive(Default)]
struct Inner {
    /// (deadline, entry, the entry's generation then), earliest first.
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    entries: Vec<Entry>,
    /// Entries of connections that have gone, for the next ones.
    free: Vec<u32>,
    /// Entries with a deadline set.
    live: usize,
    /// The pump, parked, and the deadline its sleep is set for.
    pump: Option<Waker>,
    pump_at: Option<Instant>,
    /// The shard has ended: the pump ends too.
    closed: bool,
}

/// One connection's timer.
#[derive(Default)]
struct Entry {
    /// Bumped when the connection goes: its elements in the heap are stale then.
    generation: u32,
    /// The deadline set.
    at: Option<Instant>,
    /// The deadline has passed (told once, by [`Timer::poll`]).
    fired: bool,
    /// The connection's task, from its first poll until it goes (kept when woken: a
    /// connection's task is the same at every poll).
    waker: Option<Waker>,
}

impl Inner {
    /// Marks what is due at `now` fired and wakes its connections; returns how many.
    fn fire_due(&mut self, now: Instant) -> u32 {
        let mut fired = 0;
        while let Some(&Reverse((at, index, generation))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            let Some(entry) = self.entries.get_mut(index as usize) else { continue };
            if entry.generation == generation && entry.at == Some(at) {
                entry.at = None;
                entry.fired = true;
                self.live -= 1;
                fired += 1;
                // monoio's wake only queues the task: nothing runs inside this borrow.
                if let Some(waker) = &entry.waker {
                    waker.wake_by_ref();
                }
            }
        }
        fired
    }

    /// Drops the stale elements once they outnumber the live ones.
    fn sweep(&mut self) {
        if self.heap.len() > 2 * self.live + 64 {
            let entries = &self.entries;
            self.heap.retain(|&Reverse((at, index, generation))| {
                entries.get(index as usize).is_some_and(|e| e.generation == generation && e.at == Some(at))
            });
        }
    }
}

impl Timers {
    /// A timer for a new connection, with no deadline.
    pub(crate) fn timer(&self) -> Timer<'_> {
        let mut inner = self.inner.borrow_mut();
        let index = match inner.free.pop() {
            Some(i) => i,
            None => {
                inner.entries.push(Entry::default());
                u32::try_from(inner.entries.len() - 1).unwrap_or(u32::MAX)
            }
        };
        // Never looked: any count differs from this one.
        Timer { timers: self, index, seen: self.fires.unseen() }
    }

    /// Wakes each connection whose deadline passed, until [`Timers::close`]. (monoio
    /// frees a task only when it ends or its last waker goes: one that never ended
    /// would keep what it holds, the shard with its idle backend sockets, for good.)
    pub(crate) fn pump(&self) -> impl Future<Output = ()> + '_ {
        let mut sleep = Box::pin(monoio::time::sleep_until(Instant::now().into()));
        poll_fn(move |cx| {
            loop {
                let mut inner = self.inner.borrow_mut();
                if inner.closed {
                    inner.pump = None;
                    return Poll::Ready(());
                }
                let fired = inner.fire_due(Instant::now());
                self.fires.add(fired);
                let Some(&Reverse((at, ..))) = inner.heap.peek() else {
                    (inner.pump, inner.pump_at) = (Some(cx.waker().clone()), None);
                    return Poll::Pending;
                };
                if inner.pump_at != Some(at) {
                    sleep.as_mut().reset(at.into());
                    inner.pump_at = Some(at);
                }
                inner.pump = Some(cx.waker().clone());
                drop(inner);
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // Gone off: what is due is fired on the next turn, and the sleep set
                // again for what is left.
                self.inner.borrow_mut().pump_at = None;
            }
        })
    }

    /// Ends the pump (the shard has ended: no deadline fires after this).
    pub(crate) fn close(&self) {
        let pump = {
            let mut inner = self.inner.borrow_mut();
            inner.closed = true;
            inner.pump.take()
        };
        if let Some(pump) = pump {
            pump.wake();
        }
    }
}

/// A connection's timer: one deadline at most, set by [`Timer::arm`], told once by
/// [`Timer::poll`].
pub(crate) struct Timer<'a> {
    timers: &'a Timers,
    index: u32,
    /// [`Timers::fires`] when this timer last looked at its entry.
    seen: Seen,
}

impl Timer<'_> {
    /// Sets the deadline to `at` (replacing the one set).
    pub(crate) fn arm(&self, at: Instant) {
        let mut inner = self.timers.inner.borrow_mut();
        let Some(entry) = inner.entries.get_mut(self.index as usize) else { return };
        let (was, generation) = (entry.at.replace(at), entry.generation);
        entry.fired = false;
        if was.is_none() {
            inner.live += 1;
        }
        inner.heap.push(Reverse((at, self.index, generation)));
        inner.sweep();
        // The pump sleeps for a later deadline, or for none.
        if inner.pump_at.is_none_or(|p| at < p)
            && let Some(pump) = inner.pump.take()
        {
            pump.wake();
        }
    }

    /// Ready once when the deadline has passed; pending while one is set, and forever
    /// when none is. The task woken when it passes is the one of the first look.
    ///
    /// The connection polls its timer at every wake, and nearly every wake is for an
    /// operation: the entry is looked at only when some deadline of the shard went off
    /// since the last look (a load and a compare otherwise). The waker is kept from the
    /// first look, so a deadline set later wakes the task without a poll in between;
    /// that holds because a connection's timer is only ever polled by its own task,
    /// whose waker is the same at every poll.
    #[inline(always)]
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.seen.moved(&self.timers.fires) {
            return Poll::Pending;
        }
        self.look(cx)
    }

    #[inline(never)]
    fn look(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.timers.inner.borrow_mut();
        let Some(entry) = inner.entries.get_mut(self.index as usize) else { return Poll::Pending };
        if std::mem::take(&mut entry.fired) {
            return Poll::Ready(());
        }
        if !entry.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            entry.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        let mut inner = self.timers.inner.borrow_mut();
        let Some(entry) = inner.entries.get_mut(self.index as usize) else { return };
        let had = entry.at.take().is_some();
        entry.generation = entry.generation.wrapping_add(1);
        (entry.fired, entry.waker) = (false, None);
        if had {
            inner.live -= 1;
        }
        inner.free.push(self.index);
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::time::Duration;

    use super::*;

    /// Runs `f` on a monoio runtime with timers.
    fn on_runtime<F: Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().expect("runtime").block_on(f)
    }

    /// Timers with their pump running (on the runtime of the caller).
    fn pumped() -> (Rc<Timers>, monoio::task::JoinHandle<()>) {
        let timers = Rc::new(Timers::default());
        let pump = timers.clone();
        (timers, monoio::spawn(async move { pump.pump().await }))
    }

    #[test]
    fn each_connection_is_woken_at_its_own_deadline_once() {
        on_runtime(async {
            let (timers, _pumping) = pumped();
            let start = Instant::now();
            let (mut a, mut b) = (timers.timer(), timers.timer());
            b.arm(start + Duration::from_millis(60));
            a.arm(start + Duration::from_millis(20));
            poll_fn(|cx| a.poll(cx)).await;
            let at_a = start.elapsed();
            poll_fn(|cx| b.poll(cx)).await;
            let at_b = start.elapsed();
            assert!(at_a >= Duration::from_millis(20) && at_a < Duration::from_millis(60), "{at_a:?}");
            assert!(at_b >= Duration::from_millis(60), "{at_b:?}");
            // Told once: nothing set, nothing more.
            let mut cx = Context::from_waker(Waker::noop());
            assert_eq!((a.poll(&mut cx), b.poll(&mut cx)), (Poll::Pending, Poll::Pending));
            assert_eq!(timers.inner.borrow().live, 0);
        });
    }

    #[test]
    fn a_deadline_set_again_replaces_the_one_set() {
        on_runtime(async {
            let (timers, _pumping) = pumped();
            let start = Instant::now();
            let mut t = timers.timer();
            t.arm(start + Duration::from_secs(60));
            // Earlier: the pump, asleep for 60 s, is woken for it.
            t.arm(start + Duration::from_millis(10));
            poll_fn(|cx| t.poll(cx)).await;
            assert!(start.elapsed() < Duration::from_secs(5));
            // The 60 s element left in the heap is stale: it fires nobody.
            let mut inner = timers.inner.borrow_mut();
            assert_eq!((inner.heap.len(), inner.live), (1, 0));
            inner.fire_due(start + Duration::from_secs(61));
            assert!(!inner.entries[0].fired);
            assert!(inner.heap.is_empty());
        });
    }

    #[test]
    fn a_timer_set_again_after_going_off_wakes_its_task_without_another_look() {
        on_runtime(async {
            let (timers, _pumping) = pumped();
            let mut t = timers.timer();
            t.arm(Instant::now() + Duration::from_millis(10));
            poll_fn(|cx| t.poll(cx)).await;
            let (seen, start) = (t.seen, Instant::now());
            t.arm(start + Duration::from_millis(20));
            // Nothing went off since the last look: the entry is not looked at (so the
            // waker given now is not taken), and the task's waker from the first look
            // is the one woken.
            let mut cx = Context::from_waker(Waker::noop());
            assert_eq!(t.poll(&mut cx), Poll::Pending);
            assert_eq!(t.seen, seen);
            assert!(timers.inner.borrow().entries[0].waker.as_ref().is_some_and(|w| !w.will_wake(Waker::noop())));
            // A wake that never came fails here rather than hanging.
            let woken = monoio::time::timeout(Duration::from_secs(5), poll_fn(|cx| t.poll(cx))).await;
            assert!(woken.is_ok(), "the kept waker was not woken");
            assert!(start.elapsed() >= Duration::from_millis(20));
            assert_eq!(timers.fires.get(), 2);
        });
    }

    #[test]
    fn the_pump_ends_when_the_timers_close() {
        on_runtime(async {
            let (timers, pumping) = pumped();
            let t = timers.timer();
            t.arm(Instant::now() + Duration::from_secs(60));
            // Let the pump take up the deadline and park.
            monoio::time::sleep(Duration::from_millis(5)).await;
            timers.close();
            pumping.await;
            assert_eq!(Rc::strong_count(&timers), 1, "the pump's hold on the timers is gone");
        });
    }

    #[test]
    fn the_timer_of_a_connection_gone_fires_nothing_and_its_entry_is_reused() {
        let timers = Timers::default();
        let now = Instant::now();
        let gone = timers.timer();
        gone.arm(now + Duration::from_secs(1));
        drop(gone);
        let next = timers.timer();
        assert_eq!(next.index, 0, "the entry is reused");
        let mut inner = timers.inner.borrow_mut();
        inner.fire_due(now + Duration::from_secs(2));
        assert!(!inner.entries[0].fired, "the old deadline was the gone connection's");
        assert_eq!((inner.heap.len(), inner.live), (0, 0));
    }

    #[test]
    fn stale_elements_are_swept_when_they_outnumber_the_live_ones() {
        let timers = Timers::default();
        let now = Instant::now();
        // Connections that come and go, each with a long deadline.
        for i in 0..1_000u64 {
            let t = timers.timer();
            t.arm(now + Duration::from_secs(120 + i));
        }
        let kept = timers.timer();
        kept.arm(now + Duration::from_secs(5));
        let inner = timers.inner.borrow();
        assert_eq!(inner.live, 1);
        assert!(inner.heap.len() <= 2 * inner.live + 64 + 1, "{} elements", inner.heap.len());
        assert_eq!(inner.entries.len(), 1, "each connection took the entry of the one gone before it");
    }
}
