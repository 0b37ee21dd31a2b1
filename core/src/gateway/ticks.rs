//! Client plugins' ticks (proxy-wasm's `set_tick_period_milliseconds` and `on_tick`),
//! kept by core's clock so a driver only sleeps until [`Ticker::poll_timeout`] and
//! calls [`Ticker::handle_timeout`], and a test drives it in virtual time.
//!
//! A driver whose threads each keep their plugins' instances for good (a uring shard)
//! runs one ticker per thread: each tick is that thread's instance's
//! ([`ClientPlugin::on_tick`]), as each Envoy worker ticks its own. A driver whose
//! tasks move between threads (tokio) runs one ticker for the process, ticking every
//! instance each time ([`ClientPlugin::on_tick_all`]).
//!
//! The period is the plugin's: a plugin without one that sets one is taken up at the
//! next look (a driver looks at least every [`LOOK_EVERY`]); a changed or stopped
//! period counts from the next tick (which comes at the old time). A tick that comes
//! late is not made up: the next one is a period after it. Between two looks a driver
//! leaves at least [`MIN_GAP`], so ticks slower than their period cannot hold a
//! thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gateway::plugin::ClientPlugin;
use crate::plan::Gateway;

/// The plugins of a gateway that tick, and when each is due.
#[derive(Debug)]
pub struct Ticker {
    due: Vec<(Arc<dyn ClientPlugin>, Option<Instant>)>,
    every_instance: bool,
}

impl Ticker {
    /// The ticks of `gw`'s bound plugins from `now`: for this thread's instances, or
    /// for every instance (`every_instance`).
    pub fn new(gw: &Gateway, now: Instant, every_instance: bool) -> Ticker {
        let due = gw
            .endpoints
            .iter()
            .flat_map(|ep| ep.backends.iter())
            .filter_map(|b| b.plugin.as_ref())
            .filter(|b| b.plugin.may_tick())
            .map(|b| (b.plugin.clone(), None))
            .collect();
        let mut ticker = Ticker { due, every_instance };
        ticker.plan(now);
        ticker
    }

    /// Sets when each plugin ticks next: a period from `now` (never, while it has no
    /// period).
    fn plan(&mut self, now: Instant) {
        for (plugin, next) in &mut self.due {
            *next = plugin.tick_period().and_then(|p| now.checked_add(p));
        }
    }

    /// Whether no bound plugin may ever tick.
    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }

    /// When [`Ticker::handle_timeout`] has a tick to make next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due.iter().filter_map(|(_, next)| *next).min()
    }

    /// Makes the ticks due by `now`; each plugin's next one is its period after `now`
    /// (ticks missed meanwhile are not made up). A plugin that had no period and has
    /// one now ticks a period from now.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (plugin, next) in &mut self.due {
            if next.is_none() {
                *next = plugin.tick_period().and_then(|p| now.checked_add(p));
            } else if next.is_some_and(|at| at <= now) {
                if self.every_instance {
                    plugin.on_tick_all();
                } else {
                    plugin.on_tick();
                }
                *next = plugin.tick_period().and_then(|p| now.checked_add(p));
            }
        }
    }
}

/// How long a driver sleeps at most between two looks at its stop signal while it
/// waits for the next tick.
pub const LOOK_EVERY: Duration = Duration::from_millis(100);

/// The least time a driver sleeps between two looks.
pub const MIN_GAP: Duration = Duration::from_millis(1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::plugin::{BackendRequest, PluginFault, Verdict};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    #[derive(Debug, Default)]
    struct Clock {
        period_ms: AtomicU64,
        ticks: AtomicUsize,
        all: AtomicUsize,
    }

    impl ClientPlugin for Clock {
        fn on_request(&self, _: &mut BackendRequest) -> Result<Verdict, PluginFault> {
            Ok(Verdict::Continue)
        }
        fn may_tick(&self) -> bool {
            true
        }
        fn tick_period(&self) -> Option<Duration> {
            match self.period_ms.load(Ordering::SeqCst) {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            }
        }
        fn on_tick(&self) {
            self.ticks.fetch_add(1, Ordering::SeqCst);
        }
        fn on_tick_all(&self) {
            self.all.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn gateway(clock: &Arc<Clock>) -> Gateway {
        let config = r#"{"version": 3, "endpoints": [{"endpoint": "/a", "backend": [
            {"host": ["http://127.0.0.1:9"], "url_pattern": "/a"}, {"host": ["http://127.0.0.1:9"], "url_pattern": "/b"}]}]}"#;
        let mut gw = Gateway::load(config).map(|l| l.gateway).unwrap();
        assert!(gw.bind_plugin(0, 0, "clock", clock.clone()));
        gw
    }

    /// In virtual time: ticks every period, none made up after a late look, the
    /// period read again at each tick, none once it is stopped.
    #[test]
    fn ticks_follow_the_plugins_period() {
        let clock = Arc::new(Clock::default());
        clock.period_ms.store(100, Ordering::SeqCst);
        let gw = gateway(&clock);
        let t0 = Instant::now();
        let mut ticker = Ticker::new(&gw, t0, false);
        assert!(!ticker.is_empty());
        assert_eq!(ticker.poll_timeout(), Some(t0 + Duration::from_millis(100)));
        ticker.handle_timeout(t0 + Duration::from_millis(99));
        assert_eq!(clock.ticks.load(Ordering::SeqCst), 0);
        ticker.handle_timeout(t0 + Duration::from_millis(100));
        assert_eq!(clock.ticks.load(Ordering::SeqCst), 1);
        // Looked at 350 ms late: one tick, the next a period later.
        ticker.handle_timeout(t0 + Duration::from_millis(550));
        assert_eq!(clock.ticks.load(Ordering::SeqCst), 2);
        assert_eq!(ticker.poll_timeout(), Some(t0 + Duration::from_millis(650)));
        clock.period_ms.store(20, Ordering::SeqCst);
        ticker.handle_timeout(t0 + Duration::from_millis(650));
        assert_eq!(ticker.poll_timeout(), Some(t0 + Duration::from_millis(670)));
        clock.period_ms.store(0, Ordering::SeqCst);
        ticker.handle_timeout(t0 + Duration::from_millis(670));
        assert_eq!((clock.ticks.load(Ordering::SeqCst), ticker.poll_timeout()), (4, None));
        assert_eq!(clock.all.load(Ordering::SeqCst), 0);

        // A process-wide ticker ticks every instance.
        clock.period_ms.store(50, Ordering::SeqCst);
        let mut ticker = Ticker::new(&gw, t0, true);
        ticker.handle_timeout(t0 + Duration::from_millis(50));
        assert_eq!((clock.ticks.load(Ordering::SeqCst), clock.all.load(Ordering::SeqCst)), (4, 1));

        // No period at the start, one set later: taken up at the next look.
        clock.period_ms.store(0, Ordering::SeqCst);
        let mut ticker = Ticker::new(&gw, t0, false);
        assert!(!ticker.is_empty(), "a bound plugin may set a period later");
        assert_eq!(ticker.poll_timeout(), None);
        ticker.handle_timeout(t0 + Duration::from_millis(100));
        assert_eq!(ticker.poll_timeout(), None);
        clock.period_ms.store(30, Ordering::SeqCst);
        ticker.handle_timeout(t0 + Duration::from_millis(200));
        assert_eq!(ticker.poll_timeout(), Some(t0 + Duration::from_millis(230)));
        ticker.handle_timeout(t0 + Duration::from_millis(230));
        assert_eq!(clock.ticks.load(Ordering::SeqCst), 5);
    }
}
