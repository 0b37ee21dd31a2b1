//! Stopping a server: one flag every shard and connection of a driver can read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Asks a server to stop: stop accepting, finish requests in flight, close. Shared by
/// the drivers so the CLI and embedders stop either the same way.
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Arc<AtomicBool>);

impl StopSignal {
    pub fn new() -> StopSignal {
        StopSignal::default()
    }

    pub fn trigger(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
