//! What the server tells its connections: it stops, or a reload made a newer plan
//! than theirs (they close at their next request boundary either way).
//!
//! Each connection keeps a [`Notice`]: a word to read on every wake and its waker
//! registered here once (again only when its task's waker changes). A tokio `watch`
//! receiver's `wait_for` future was 216 bytes of every connection's task, an idle one's
//! too, and was polled on every wake.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

/// Set in [`Tell::state`] once the server stops.
const STOPPING: u64 = 1 << 63;

/// What every connection is told, and the wakers of those listening.
#[derive(Debug)]
pub(crate) struct Tell {
    /// The newest plan's generation, with [`STOPPING`] set once the server stops.
    state: AtomicU64,
    listening: Mutex<Listening>,
}

#[derive(Debug, Default)]
struct Listening {
    wakers: Vec<Option<Waker>>,
    /// Places of connections gone, for the next ones.
    free: Vec<usize>,
}

impl Tell {
    pub(crate) fn new(generation: u64) -> Tell {
        Tell { state: AtomicU64::new(generation & !STOPPING), listening: Mutex::default() }
    }

    /// Tells every connection the server stops.
    pub(crate) fn stop(&self) {
        self.state.fetch_or(STOPPING, Ordering::SeqCst);
        self.wake_all();
    }

    /// Tells connections on a plan older than `generation`.
    pub(crate) fn reload(&self, generation: u64) {
        let newer = |s: u64| Some((s & STOPPING) | (s & !STOPPING).max(generation & !STOPPING));
        let _ = self.state.fetch_update(Ordering::SeqCst, Ordering::SeqCst, newer);
        self.wake_all();
    }

    /// The state is written before the lock is taken here, and a connection reads it
    /// after registering under the same lock: either it reads what was told, or its
    /// waker is woken.
    fn wake_all(&self) {
        let listening = self.listening.lock().unwrap_or_else(PoisonError::into_inner);
        listening.wakers.iter().flatten().for_each(Waker::wake_by_ref);
    }

    /// What a connection serving generation `mine` listens with.
    pub(crate) fn notice(&self, mine: u64) -> Notice<'_> {
        Notice { tell: self, mine, place: None, waker: None }
    }
}

/// One connection's ear: ready once it is told (and again on every poll after).
#[derive(Debug)]
pub(crate) struct Notice<'a> {
    tell: &'a Tell,
    mine: u64,
    /// Its place among the wakers, and the waker registered there.
    place: Option<usize>,
    waker: Option<Waker>,
}

impl Notice<'_> {
    fn told(&self) -> bool {
        let state = self.tell.state.load(Ordering::SeqCst);
        state & STOPPING != 0 || state & !STOPPING > self.mine
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.told() {
            return Poll::Ready(());
        }
        if self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let waker = cx.waker().clone();
        let mut listening = self.tell.listening.lock().unwrap_or_else(PoisonError::into_inner);
        let place = match self.place {
            Some(place) => place,
            None => match listening.free.pop() {
                Some(place) => place,
                None => {
                    listening.wakers.push(None);
                    listening.wakers.len() - 1
                }
            },
        };
        if let Some(slot) = listening.wakers.get_mut(place) {
            *slot = Some(waker.clone());
        }
        drop(listening);
        (self.place, self.waker) = (Some(place), Some(waker));
        // Told between the first look and the registration.
        if self.told() { Poll::Ready(()) } else { Poll::Pending }
    }
}

impl Drop for Notice<'_> {
    fn drop(&mut self) {
        let Some(place) = self.place else { return };
        let mut listening = self.tell.listening.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = listening.wakers.get_mut(place) {
            *slot = None;
        }
        listening.free.push(place);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counted() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn a_stop_wakes_and_tells_every_connection() {
        let tell = Tell::new(3);
        let ((a_count, a), (b_count, b)) = (counted(), counted());
        let (mut first, mut second) = (tell.notice(3), tell.notice(3));
        assert_eq!(first.poll(&mut Context::from_waker(&a)), Poll::Pending);
        assert_eq!(second.poll(&mut Context::from_waker(&b)), Poll::Pending);
        tell.stop();
        assert_eq!((a_count.0.load(Ordering::SeqCst), b_count.0.load(Ordering::SeqCst)), (1, 1));
        assert_eq!(first.poll(&mut Context::from_waker(&a)), Poll::Ready(()));
        assert_eq!(second.poll(&mut Context::from_waker(&b)), Poll::Ready(()));
        // A connection that comes after the stop is told at once.
        assert_eq!(tell.notice(3).poll(&mut Context::from_waker(&a)), Poll::Ready(()));
    }

    #[test]
    fn a_reload_tells_only_connections_on_an_older_plan() {
        let tell = Tell::new(1);
        let (_count, w) = counted();
        let mut cx = Context::from_waker(&w);
        let (mut old, mut new) = (tell.notice(1), tell.notice(2));
        assert_eq!((old.poll(&mut cx), new.poll(&mut cx)), (Poll::Pending, Poll::Pending));
        tell.reload(2);
        assert_eq!((old.poll(&mut cx), new.poll(&mut cx)), (Poll::Ready(()), Poll::Pending));
        // An older generation never takes the state back.
        tell.reload(1);
        assert_eq!(tell.notice(1).poll(&mut cx), Poll::Ready(()));
        tell.stop();
        tell.reload(5);
        assert_eq!(new.poll(&mut cx), Poll::Ready(()), "still stopping after a reload");
    }

    #[test]
    fn a_connection_gone_gives_its_place_to_the_next() {
        let tell = Tell::new(0);
        let (count, w) = counted();
        let mut gone = tell.notice(0);
        assert_eq!(gone.poll(&mut Context::from_waker(&w)), Poll::Pending);
        drop(gone);
        let (_other, v) = counted();
        let mut next = tell.notice(0);
        assert_eq!(next.poll(&mut Context::from_waker(&v)), Poll::Pending);
        assert_eq!(tell.listening.lock().unwrap().wakers.len(), 1);
        tell.stop();
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "the gone connection's waker was dropped");
    }
}
