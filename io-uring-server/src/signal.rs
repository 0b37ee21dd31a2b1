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
        Stopped { place: self }
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
}

impl Future for Stopped<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
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
