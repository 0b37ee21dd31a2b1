//! Operations: what serving changes as it goes ([`runtime`]: the breaker counts every
//! shard shares), the counters each shard keeps ([`stats`]), and the admin listener's
//! pages built from them ([`admin`]).

pub mod admin;
pub mod logging;
pub mod runtime;
pub mod stats;
