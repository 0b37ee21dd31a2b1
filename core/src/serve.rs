//! The public API every driver gives, so that a program (the `sluice` binary, the
//! end-to-end tests, an embedder) starts, stops and waits for any of them the same
//! way and holds no switch over which one runs: [`Options`] say how to serve,
//! a driver's `start(gateway, options, stop)` returns a [`Running`] server. Each
//! driver also has a [`Start`] function that boxes it, for a caller that picks the
//! driver at run time.
//!
//! Nothing here does I/O: these are the words the drivers agree on.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::StopSignal;
use crate::plan::Gateway;

/// How a driver serves a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The gateway's listener.
    pub listen: SocketAddr,
    /// The forward proxy's listener (for `gw.forward`), when it has one.
    pub forward_listen: Option<SocketAddr>,
    /// The admin listener (`/stats`, ...), when there is one.
    pub admin_listen: Option<SocketAddr>,
    /// Threads serving connections: `sluice-uring`'s shards, `sluice-tokio`'s worker
    /// threads. 0 (the default): one per core, as the driver counts them
    /// (`sluice-uring`: the cores it can pin shards to; `sluice-tokio`: the available
    /// parallelism).
    pub threads: usize,
    /// `sluice-uring` only: monoio's epoll driver even where io_uring works
    /// (`sluice-tokio` has nothing to force and ignores it).
    pub force_epoll: bool,
    /// Open client connections per thread; more are closed at once.
    pub max_connections_per_thread: usize,
    /// How long a stop waits for requests in flight.
    pub shutdown_wait: Duration,
}

impl Options {
    /// Serving `gw` on `listen`: its forward proxy and admin listeners where its
    /// configuration has them (set them to `None`, or to port 0, to leave them out or
    /// let the system pick), one thread per core, 25,000 connections a thread, and the
    /// configuration's `max_shutdown_wait_time`.
    pub fn new(gw: &Gateway, listen: SocketAddr) -> Options {
        Options {
            listen,
            forward_listen: gw.forward.as_ref().map(|f| SocketAddr::new(f.config.listen_ip, f.config.port)),
            admin_listen: gw.config.admin,
            threads: 0,
            force_epoll: false,
            max_connections_per_thread: 25_000,
            shutdown_wait: gw.config.max_shutdown_wait_time,
        }
    }
}

/// Which listener accepted a connection: it picks the service that answers the
/// connection's requests ([`crate::conn::Connection::accept`]). A driver passes on
/// which socket it accepted from; it never looks inside a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The gateway's (HTTPS when the configuration has a certificate).
    Gateway,
    /// The forward proxy's (`gw.forward`).
    Forward,
    /// The admin pages' (`/stats`, `/ready`, ...).
    Admin,
}

impl Listener {
    /// Whether the per-thread connection limit refuses its connections: not the admin
    /// pages', which stay reachable when the gateway is full (and still count).
    pub fn limited(self) -> bool {
        self != Listener::Admin
    }
}

/// Where a started server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// The gateway's listener.
    pub gateway: SocketAddr,
    /// The forward proxy's, when there is one.
    pub forward: Option<SocketAddr>,
    /// The admin listener's, when there is one.
    pub admin: Option<SocketAddr>,
}

/// A started server, of any driver.
pub trait Running: fmt::Debug + Send {
    /// Where it listens.
    fn listening(&self) -> Listening;
    /// The address the gateway listens on.
    fn local_addr(&self) -> SocketAddr {
        self.listening().gateway
    }
    /// The forward proxy's, when there is one.
    fn forward_addr(&self) -> Option<SocketAddr> {
        self.listening().forward
    }
    /// The admin listener's, when there is one.
    fn admin_addr(&self) -> Option<SocketAddr> {
        self.listening().admin
    }
    /// How it runs, for the start-up line: `2 shard(s), driver io_uring, io_uring`.
    fn describe(&self) -> String;
    /// Stops accepting and finishes what is in flight (within the shutdown wait).
    fn stop(&self);
    /// Waits until it has stopped.
    fn join(self: Box<Self>);
}

/// A driver's start, boxed: what a caller that picks the driver at run time holds.
pub type Start = fn(Arc<Gateway>, Options, StopSignal) -> io::Result<Box<dyn Running>>;
