//! Operations: what serving changes as it goes ([`runtime`]: the breaker counts every
//! shard shares), the counters each shard keeps ([`stats`]), the admin listener's
//! pages built from them ([`admin`]), KrakenD's `telemetry/logging` formats
//! ([`logging`]) and `telemetry/opentelemetry` traces ([`trace`]).

pub mod admin;
pub mod logging;
pub mod runtime;
pub mod stats;
pub mod trace;
