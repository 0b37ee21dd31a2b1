//! Stopping: per shard, a local signal that wakes idle connections so they close at
//! once (the server-wide flag is `sluice_core::StopSignal`).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

/// A connection's place in its shard's stop list: one waker, replaced on each wait,
/// so a long keep-alive connection does not pile wakers up.
#[derive(Default)]
pub(crate) struct Slot {
    waker: RefCell<Option<Waker>>,
}

/// The shard's side of a stop.
#[derive(Default)]
pub(crate) struct LocalStop {
    stopped: Cell<bool>,
    slots: RefCell<Vec<Weak<Slot>>>,
}

impl LocalStop {
    /// A slot for a new connection (dead slots are swept as the list grows).
    pub(crate) fn register(&self) -> Rc<Slot> {
        let slot = Rc::new(Slot::default());
        let mut slots = self.slots.borrow_mut();
        if slots.len() >= 64 && slots.len() == slots.capacity() {
            slots.retain(|s| s.strong_count() > 0);
        }
        slots.push(Rc::downgrade(&slot));
        slot
    }

    pub(crate) fn trigger(&self) {
        self.stopped.set(true);
        for slot in self.slots.borrow_mut().drain(..) {
            if let Some(w) = slot.upgrade().and_then(|s| s.waker.borrow_mut().take()) {
                w.wake();
            }
        }
    }

    /// Resolves once the shard stops.
    pub(crate) fn wait<'a>(&'a self, slot: &'a Slot) -> Stopped<'a> {
        Stopped { stop: self, slot }
    }
}

pub(crate) struct Stopped<'a> {
    stop: &'a LocalStop,
    slot: &'a Slot,
}

impl Future for Stopped<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stop.stopped.get() {
            return Poll::Ready(());
        }
        *self.slot.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}
