//! What serving a gateway changes as it goes, beside its compiled plan: the plan
//! ([`Gateway`]) is immutable and shared read-only; what counts, opens and closes at
//! run time lives here, one [`Runtime`] per started server (each driver's `start`
//! makes one), shared by every shard or worker of it.
//! Today that is the forward proxy's circuit breakers (see [`crate::forward::breaker`]: their
//! counts are shared by the shards as Envoy's are by its workers). Per-shard state
//! (round-robin counters, [`crate::gateway::upstream::Balancer`]; the counters of
//! [`crate::ops::stats`]) stays with each shard.

use crate::forward::breaker::{Breakers, Thresholds};
use crate::plan::Gateway;

/// The run-time state of one gateway (see the module docs).
#[derive(Debug)]
pub struct Runtime {
    breakers: Breakers,
}

impl Runtime {
    /// Fresh state for `gw`: no destination counted yet, the forward proxy's breaker
    /// thresholds (Envoy's defaults when it has none).
    pub fn new(gw: &Gateway) -> Runtime {
        let thresholds = gw.forward.as_ref().map_or_else(Thresholds::default, |f| f.config.circuit_breakers);
        Runtime { breakers: Breakers::new(thresholds) }
    }

    /// The forward proxy's circuit breakers, per destination.
    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }
}
