//! The gateway service: what serves a request on the gateway's listener, from its
//! head to its answer. CORS ([`cors`]) goes first, on every request; [`dispatch`] picks a built-in endpoint ([`builtin`]) or an
//! endpoint ([`crate::plan::route`] matches it); the endpoint's guards run
//! ([`guard`]); its [`exchange`] calls the backends ([`upstream`] builds each request,
//! [`plugin`] lets a client plugin answer a call, [`martian`] modifies it, [`breaker`]
//! stops calling a failing backend; [`ticks`] keeps plugins' timers) and shapes, merges and encodes the answer
//! ([`response`] and its flatmap filters, on the byte-preserving JSON scanner [`json`]). The client
//! connection asks this service through `conn::service` and carries out what it says.

pub mod bots;
pub mod breaker;
pub mod builtin;
pub mod cel;
pub mod cors;
pub mod dispatch;
pub mod exchange;
pub mod guard;
pub mod json;
pub mod jwt;
pub mod martian;
pub mod plugin;
pub mod ratelimit;
pub mod response;
pub mod schema;
pub mod ticks;
pub mod upstream;
