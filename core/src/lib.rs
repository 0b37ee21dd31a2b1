//! `sluice-core`: the Sans-IO protocol core of the Sluice API gateway.
//!
//! Nothing here does I/O, reads a clock, spawns or blocks: bytes and `Instant`s come in,
//! decisions come out, and the same input always gives the same output. The drivers
//! (`sluice-uring`, `sluice-tokio`) own sockets and timers and nothing else.
//!
//! A driver's whole surface is [`conn::Connection`]: one per client connection,
//! `handle_*` (or `handle` with an [`io::Input`]) for what happened, `poll` for what
//! to do next ([`io::Output`]), `poll_timeout` for when to wake it. Drain `poll` after
//! every `handle_*` call; [`conn`] has the canonical driver loop. Bytes, addresses and
//! log lines ([`event::Log`]) cross it; how heads are parsed and written inside can
//! change without touching a driver. Every driver gives the same API ([`serve`]).
//!
//! - [`io`]: the driver surface ([`io::Output`], [`io::Input`], the session a pooled
//!   socket carries); [`event`]: the lines to log (and [`event::emit`] with the
//!   `tracing` feature); [`serve`]: the options and server API every driver shares.
//! - [`conn`]: one client connection's whole life (codec, deadlines, the request being
//!   served, the listener's TLS session, the forward proxy's requests and tunnels,
//!   every status, the access line). Each backend connection of it is a call of its
//!   own (the private `call` module: connect, TLS through the private `link` adapter,
//!   `CONNECT` through a proxy, request, response, redirects, retry, pool).
//! - [`runtime`]: what serving changes as it goes (the forward proxy's breaker
//!   counts), beside the immutable plan, one per process.
//! - [`config`]: KrakenD v3 JSON → typed, validated [`config::Config`], with every
//!   error reported at once with its JSON path.
//! - [`plan`]: the config compiled once into an immutable [`plan::Gateway`].
//! - [`route`]: endpoint matching with `{params}`, 404, 405 and trailing-slash redirects.
//! - [`http1`]: the HTTP/1.1 codec, both roles.
//! - [`request`]: a client request, a complete reply and the access line;
//!   [`dispatch`]: what serves a request head (built-in, endpoint, or an answer at once).
//! - [`exchange`]: the life of one client request as a state machine (fan-out,
//!   sequential calls, deadlines, the final response), driven with virtual time.
//! - [`upstream`]: backend request building; [`response`]: decoding, shaping, merging
//!   and output encodings; [`json`]: the byte-preserving JSON scanner under them.
//! - [`backend`]: backend connection policy (pool, retries, DNS cache) and reading a
//!   response off a backend connection, shared by the drivers.
//! - [`dns`]: the DNS cache every connection to a name goes through (Envoy's
//!   `dns_cache_config`).
//! - [`deadline`]: which deadline each client read runs under; [`buf`]: the read
//!   buffer every connection uses.
//! - [`builtin`]: `/__health`, `/__debug/*` and `/__echo/*`.
//! - [`plugin`]: the HTTP client plugin contract (one plugin per backend call).
//! - [`breaker`]: the forward proxy's circuit breakers per destination.
//! - [`stats`]: per-shard counters; [`admin`]: the admin pages built from them.
//! - [`forward`]: the dynamic forward proxy's decisions (destination, the request
//!   sent on, the egress policy).
//!
//! # The driver loop, runnable
//!
//! The loop [`conn`] describes, as a driver with no sockets at all: one request that
//! needs no backend (a client sends it, reads the answer and closes).
//!
//! ```
//! use std::time::{Instant, SystemTime};
//!
//! use sluice_core::Gateway;
//! use sluice_core::conn::{Connection, Input, Output};
//! use sluice_core::upstream::Balancer;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gateway = Gateway::load(r#"{"version": 3, "endpoints": []}"#)?.gateway;
//! let balancer = Balancer::new(gateway.backend_count);
//! let wall = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_300_000);
//! let mut conn = Connection::new(&gateway, &balancer, "127.0.0.1".parse()?, Instant::now(), wall);
//! let mut request: &[u8] = b"GET /__health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";
//! let mut answer = Vec::new();
//! 'connection: loop {
//!     // Drain poll, start what it asks for (here each operation finishes at once).
//!     let mut done = Vec::new();
//!     while let Some(output) = conn.poll() {
//!         match output {
//!             Output::ReadClient(mut buf) => {
//!                 let n = request.len(); // 0 once it is sent: the client closed
//!                 buf.extend_from_slice(std::mem::take(&mut request));
//!                 done.push(Input::ClientRead(buf, Ok(n)));
//!             }
//!             Output::WriteClient(bytes) => {
//!                 answer.extend_from_slice(&bytes);
//!                 done.push(Input::ClientWritten(bytes, Ok(())));
//!             }
//!             Output::ShutdownClient => done.push(Input::ClientShutdown(Ok(()))),
//!             Output::Log(line) => println!("{line}"),
//!             Output::Close => break 'connection,
//!             // No backend, tunnel or name in this request; a driver does each as
//!             // conn's table says.
//!             other => unreachable!("{other:?}"),
//!         }
//!     }
//!     // Feed back what happened; a real driver also waits for poll_timeout().
//!     for input in done {
//!         conn.handle(input, Instant::now());
//!     }
//! }
//! let answer = String::from_utf8(answer)?;
//! assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
//! assert!(answer.ends_with(r#"{"agents":{},"now":"2026-11-21T22:26:40Z","status":"ok"}"#), "{answer}");
//! # Ok(())
//! # }
//! ```
//!
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admin;
pub mod backend;
pub mod breaker;
pub mod buf;
pub mod builtin;
mod call;
pub mod config;
pub mod conn;
pub mod deadline;
pub mod dispatch;
pub mod dns;
pub mod event;
pub mod exchange;
pub mod forward;
pub mod guard;
pub mod http1;
pub mod io;
pub mod json;
mod link;
pub mod plan;
pub mod plugin;
pub mod proxy;
pub mod redirect;
pub mod request;
pub mod response;
pub mod route;
pub mod runtime;
pub mod serve;
mod service;
pub mod srv;
pub mod stats;
mod stop;
pub mod tls;
mod tunnel;
pub mod upstream;

pub use config::{ConfigError, Diagnostic};
pub use plan::Gateway;
pub use stop::StopSignal;

/// The version of Sluice, as in `User-Agent: Sluice/<version>`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
