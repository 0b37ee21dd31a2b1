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
//! The modules, from the driver's side down (a request's path reads down this list:
//! connection, service, call):
//!
//! - [`io`]: the driver surface ([`io::Output`], [`io::Input`], the session a pooled
//!   socket carries); [`event`]: the lines to log (and `event::emit` with the
//!   `tracing` feature); [`serve`]: the options, listeners and server API every driver
//!   shares.
//! - [`conn`]: one client connection's life (codec, deadlines, the client's TLS
//!   session, every status, the access line), and which service serves a request
//!   (its private `service` module); [`conn::deadline`] says which deadline each
//!   client read runs under.
//! - [`gateway`]: the gateway service (dispatch, built-in endpoints, the guard stage,
//!   the exchange with its backends, client plugins, response shaping and encodings,
//!   the JSON scanner).
//! - [`forward`]: the forward-proxy service (destination, egress policy, tunnels and
//!   splicing, [`forward::breaker`] circuit breakers).
//! - [`ops`]: the admin pages ([`ops::admin`]), per-shard counters ([`ops::stats`]) and
//!   the run-time state beside the plan ([`ops::runtime`]).
//! - [`call`]: one backend call as a state machine (connect or pooled, TLS, `CONNECT`
//!   through a proxy, request, response, redirect, retry, pool or close), with its
//!   policies: [`call::backend`] (pool keys, retries, reading a response),
//!   [`call::proxy`] (backends through a proxy), [`call::redirect`].
//! - [`resolve`]: the DNS cache ([`resolve::dns`]) and SRV lookups ([`resolve::srv`]).
//! - [`tls`]: TLS profiles of both sides, and the one rustls adapter both use.
//! - [`plan`]: the configuration compiled once into an immutable [`plan::Gateway`],
//!   with the router ([`plan::route`]).
//! - [`config`]: KrakenD v3 JSON → typed, validated [`config::Config`], every error
//!   reported at once with its JSON path.
//! - [`http1`]: the HTTP/1.1 codec, both roles; [`request`]: a client request, a
//!   complete reply and the access line; [`buf`]: the read buffer every connection
//!   uses.
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
//! use sluice_core::gateway::upstream::Balancer;
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
//!             // Between keep-alive requests: wait for the client, holding no buffer.
//!             Output::AwaitClient => done.push(Input::ClientReady(Ok(()))),
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

pub mod buf;
pub mod call;
pub mod config;
pub mod conn;
pub mod date;
pub mod event;
pub mod forward;
pub mod gateway;
pub mod http1;
pub mod io;
pub mod ops;
pub mod plan;
pub mod request;
pub mod resolve;
pub mod serve;
mod stop;
mod swar;
pub mod tls;

pub use config::{ConfigError, Diagnostic};
pub use plan::Gateway;
pub use stop::StopSignal;

/// The version of Sluice, as in `User-Agent: Sluice/<version>`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
