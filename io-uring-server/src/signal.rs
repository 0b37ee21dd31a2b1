//! Stopping: per shard, a local signal that wakes idle connections so they close at
//! once (the server-wide flag is `sluice_core::StopSignal`). A reload retires the
//! connections of older plans the same way, and only them.
//!
//! Each connection holds a numbered place for its waker, given back when it ends. (It
//! was an `Rc` per connection kept in a list of `Weak`s: every dead connection's
//! allocation stayed until the list was swept, one small block in each page its
//! connection had used, so that after a burst of 10,000 connections the allocator
//! could give none of those pages back.)

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::timer::{Events, Seen};

/// The shard's side of a stop.
#[derive(Default)]
pub(crate) struct LocalStop {
    stopped: Cell<bool>,
    /// Connections serving a plan of a generation below this one stop.
    retired: Cell<u64>,
    /// By place: the waker of the connection holding it (`None` until it waits), and
    /// the generation of its plan.
    wakers: RefCell<Vec<(Option<Waker>, u64)>>,
    /// Places given back, for the next connections.
    free: RefCell<Vec<usize>>,
    /// The stops and retirements: a connection looks at its place only when this
    /// moved since it last looked ([`Stopped`]).
    signals: Events,
}

impl LocalStop {
    /// A place for a new connection serving a plan of `generation`, given back when
    /// the returned value drops.
    pub(crate) fn register(&self, generation: u64) -> Place<'_> {
        let index = match self.free.borrow_mut().pop() {
            Some(i) => {
                if let Some(place) = self.wakers.borrow_mut().get_mut(i) {
                    *place = (None, generation);
                }
                i
            }
            None => {
                let mut wakers = self.wakers.borrow_mut();
                wakers.push((None, generation));
                wakers.len() - 1
            }
        };
        Place { stop: self, index, generation }
    }

    pub(crate) fn trigger(&self) {
        self.stopped.set(true);
        self.wake(|_| true);
    }

    /// Stops the connections serving plans older than `generation`.
    pub(crate) fn retire(&self, generation: u64) {
        self.retired.set(generation);
        self.wake(|g| g < generation);
    }

    fn wake(&self, which: impl Fn(u64) -> bool) {
        self.signals.add(1);
        let wakers: Vec<Waker> =
            self.wakers.borrow_mut().iter_mut().filter(|(_, g)| which(*g)).filter_map(|(w, _)| w.take()).collect();
        for w in wakers {
            w.wake();
        }
    }
}

/// A connection's place in its shard's stop list.
pub(crate) struct Place<'a> {
    stop: &'a LocalStop,
    index: usize,
    generation: u64,
}

impl Place<'_> {
    /// Resolves once the shard stops.
    pub(crate) fn wait(&self) -> Stopped<'_> {
        // Never looked: any count differs from this one.
        Stopped { place: self, seen: self.stop.signals.unseen() }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if let Some((w, _)) = self.stop.wakers.borrow_mut().get_mut(self.index) {
            *w = None;
        }
        self.stop.free.borrow_mut().push(self.index);
    }
}

pub(crate) struct Stopped<'a> {
    place: &'a Place<'a>,
    /// [`LocalStop::signals`] when this last looked.
    seen: Seen,
}

impl Future for Stopped<'_> {
    type Output = ();

    /// Polled at every wake of its connection, it looks at the flags and its place only
    /// when the shard was told to stop or retire since the last look. The waker is kept
    /// from the first look until the stop wakes it: a connection's stop is only ever
    /// polled by its own task, whose waker is the same at every poll.
    #[inline(always)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let signals = &self.place.stop.signals;
        if !self.seen.moved(signals) {
            return Poll::Pending;
        }
        self.look(cx)
    }
}

impl Stopped<'_> {
    #[inline(never)]
    fn look(&self, cx: &mut Context<'_>) -> Poll<()> {
        let stop = self.place.stop;
        if stop.stopped.get() || self.place.generation < stop.retired.get() {
            return Poll::Ready(());
        }
        if let Some((slot, _)) = stop.wakers.borrow_mut().get_mut(self.place.index) {
            match slot {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *slot = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn woken(count: &Count) -> usize {
        count.0.load(Ordering::SeqCst)
    }

    #[test]
    fn a_retirement_wakes_older_plans_and_a_stop_wakes_the_rest_each_once() {
        let stop = LocalStop::default();
        let (old, new) = (stop.register(1), stop.register(2));
        let (mut a, mut b) = (pin!(old.wait()), pin!(new.wait()));
        let (ca, cb) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let (wa, wb) = (Waker::from(ca.clone()), Waker::from(cb.clone()));
        assert_eq!(a.as_mut().poll(&mut Context::from_waker(&wa)), Poll::Pending);
        assert_eq!(b.as_mut().poll(&mut Context::from_waker(&wb)), Poll::Pending);
        // Nothing signalled since: the place is not looked at, and a waker given now is
        // not kept (the retirement below wakes the first one).
        assert_eq!(a.as_mut().poll(&mut Context::from_waker(Waker::noop())), Poll::Pending);
        stop.retire(2);
        assert_eq!((woken(&ca), woken(&cb)), (1, 0));
        assert_eq!(a.as_mut().poll(&mut Context::from_waker(&wa)), Poll::Ready(()));
        // Looked at (a signal came), still not its turn: its waker is kept.
        assert_eq!(b.as_mut().poll(&mut Context::from_waker(&wb)), Poll::Pending);
        stop.trigger();
        assert_eq!((woken(&ca), woken(&cb)), (1, 1));
        assert_eq!(b.as_mut().poll(&mut Context::from_waker(&wb)), Poll::Ready(()));
    }

    #[test]
    fn a_stop_before_the_first_poll_is_seen_at_once() {
        let stop = LocalStop::default();
        stop.trigger();
        let place = stop.register(1);
        let mut wait = pin!(place.wait());
        assert_eq!(wait.as_mut().poll(&mut Context::from_waker(Waker::noop())), Poll::Ready(()));
    }
}
