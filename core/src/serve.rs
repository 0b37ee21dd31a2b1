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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
    /// Serves `gw` from now on (see [`Current::replace`]): new connections get it at
    /// once; a connection open on an older plan finishes its request in flight on that
    /// plan and closes at its next request boundary (as an nginx worker does on reload).
    /// `Ok`: the new plan's generation. `Err`: nothing changed, and why.
    fn reload(&self, gw: Arc<Gateway>) -> Result<u64, Refused>;
    /// Waits until it has stopped.
    fn join(self: Box<Self>);
}

/// A driver's start, boxed: what a caller that picks the driver at run time holds.
pub type Start = fn(Arc<Gateway>, Options, StopSignal) -> io::Result<Box<dyn Running>>;

/// The plan a running server serves: replaced whole by a reload, numbered by
/// generation. Drivers read the generation (one atomic load) where they may take a new
/// plan (an accept, a shard's periodic look) and the plan itself only when it changed.
#[derive(Debug)]
pub struct Current {
    generation: AtomicU64,
    plan: Mutex<Arc<Gateway>>,
    /// Where the servers' pools send SRV queries: the first plan's resolver, which a
    /// plan with `"sd": "dns"` backends must keep.
    resolver: crate::resolve::srv::ResolverConfig,
}

impl Current {
    /// Serving `gw` as generation 0.
    pub fn new(gw: Arc<Gateway>) -> Current {
        Current { generation: AtomicU64::new(0), resolver: gw.resolver.clone(), plan: Mutex::new(gw) }
    }

    /// The generation served now.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The plan served now, with its generation.
    pub fn get(&self) -> (u64, Arc<Gateway>) {
        let plan = self.plan.lock().unwrap_or_else(PoisonError::into_inner);
        (self.generation(), plan.clone())
    }

    /// Serves `new` from now on, unless it changes what only a restart can
    /// ([`restart_only`]): then nothing changes and the error lists each difference.
    pub fn replace(&self, new: Arc<Gateway>) -> Result<u64, Refused> {
        let mut plan = self.plan.lock().unwrap_or_else(PoisonError::into_inner);
        let mut differences = restart_only(&plan, &new);
        // The pools ask the resolver they started with: a plan that asks it anything
        // (an `"sd": "dns"` backend) must name the same one.
        if uses_srv(&new) && new.resolver != self.resolver {
            differences.push(
                "the SRV resolver (sluice/dns, or resolv.conf when it names none) is not the one the server \
                 started with: it needs a restart"
                    .to_string(),
            );
        }
        if !differences.is_empty() {
            return Err(Refused(differences));
        }
        *plan = new;
        // Under the lock: a reader that sees the new generation finds the new plan.
        Ok(self.generation.fetch_add(1, Ordering::AcqRel) + 1)
    }
}

/// A plan as a driver serves it: the gateway, its round-robin counters and what a
/// connection needs to know of it, numbered by generation. A connection accepted under
/// it keeps it to its end.
#[derive(Debug)]
pub struct Plan {
    pub generation: u64,
    pub gw: Arc<Gateway>,
    pub balancer: crate::gateway::upstream::Balancer,
    /// Client plugins read the connections' ports and local addresses.
    pub read_ends: bool,
}

impl Plan {
    pub fn new(generation: u64, gw: Arc<Gateway>) -> Plan {
        Plan {
            generation,
            balancer: crate::gateway::upstream::Balancer::new(gw.backend_count),
            read_ends: gw.plugins_read_ends(),
            gw,
        }
    }
}

/// A reload refused: what it would change that only a restart can, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub Vec<String>);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reload refused, nothing changed: {}", self.0.join("; "))
    }
}

/// What `new` changes of `old` that a running server cannot take without a restart,
/// one line each (empty: a reload can serve it). These are the settings held by the
/// sockets and per-thread state a server made at its start: its listeners (`port`,
/// `listen_ip`, the admin listener, the forward proxy and its listener), the backend
/// pools' size (`max_idle_connections_per_host`) and `max_shutdown_wait_time` (read
/// once, for the stop); [`Current::replace`] also keeps the SRV resolver the pools
/// started with. Everything else (endpoints, backends, guards, TLS certificates of the
/// listener, plugins, ...) reloads.
pub fn restart_only(old: &Gateway, new: &Gateway) -> Vec<String> {
    let (a, b) = (&old.config, &new.config);
    let mut out = Vec::new();
    let mut differ = |what: &str, was: String, now: String| {
        if was != now {
            out.push(format!("{what} changes from {was} to {now}: it needs a restart"));
        }
    };
    differ("port", a.port.to_string(), b.port.to_string());
    differ("listen_ip", a.listen_ip.to_string(), b.listen_ip.to_string());
    let admin = |c: &crate::config::Config| c.admin.map_or_else(|| "none".to_string(), |a| a.to_string());
    differ("the admin listener (sluice/admin)", admin(a), admin(b));
    differ(
        "max_idle_connections_per_host",
        a.max_idle_connections_per_host.to_string(),
        b.max_idle_connections_per_host.to_string(),
    );
    differ(
        "max_shutdown_wait_time",
        format!("{:?}", a.max_shutdown_wait_time),
        format!("{:?}", b.max_shutdown_wait_time),
    );
    if a.forward_proxy != b.forward_proxy {
        out.push("the forward proxy (sluice/forward-proxy) changes: it needs a restart".to_string());
    }
    // The exporter runs from the first start: its collectors and the resource it
    // names. Sampling, skip paths and layers may change.
    fn exporter(c: &crate::config::Config) -> Option<(&Vec<crate::ops::trace::OtlpExporter>, [&String; 3])> {
        c.tracing.as_ref().map(|t| (&t.exporters, [&t.service_name, &t.service_version, &t.deploy_env]))
    }
    if exporter(a) != exporter(b) {
        out.push(
            "telemetry/opentelemetry's exporters or service (name, version, deploy_env) change, or traces are \
             turned on or off: it needs a restart"
                .to_string(),
        );
    }
    out
}

/// Whether a plan has `"sd": "dns"` backends (that ask the SRV resolver).
fn uses_srv(gw: &Gateway) -> bool {
    gw.endpoints.iter().flat_map(|e| &e.backends).flat_map(|b| &b.hosts).any(|h| h.srv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Arc<Gateway> {
        match Gateway::load(text) {
            Ok(loaded) => Arc::new(loaded.gateway),
            Err(e) => panic!("{e:?}"),
        }
    }

    const A: &str = r#"{"version": 3, "port": 8080, "endpoints": [
        {"endpoint": "/a", "backend": [{"host": ["http://127.0.0.1:1"], "url_pattern": "/"}]}]}"#;

    #[test]
    fn a_reload_replaces_the_plan_and_counts_generations() {
        let current = Current::new(plan(A));
        assert_eq!(current.generation(), 0);
        let b = plan(&A.replace("/a", "/b"));
        assert_eq!(current.replace(b), Ok(1));
        let (generation, now) = current.get();
        assert_eq!((generation, now.endpoints[0].path.as_str()), (1, "/b"));
    }

    #[test]
    fn what_needs_a_restart_is_refused_and_changes_nothing() {
        let current = Current::new(plan(A));
        let moved = A.replace("8080", "8081").replace(r#""version": 3,"#, r#""version": 3, "max_idle_connections_per_host": 7, "max_shutdown_wait_time": "3s", "extra_config": {"sluice/admin": {"port": 9000}},"#);
        let refused = current.replace(plan(&moved));
        assert_eq!(
            refused,
            Err(Refused(vec![
                "port changes from 8080 to 8081: it needs a restart".into(),
                "the admin listener (sluice/admin) changes from none to 127.0.0.1:9000: it needs a restart".into(),
                "max_idle_connections_per_host changes from 250 to 7: it needs a restart".into(),
                "max_shutdown_wait_time changes from 10s to 3s: it needs a restart".into(),
            ]))
        );
        assert_eq!(current.generation(), 0);
        assert_eq!(current.get().1.config.port, 8080);
    }

    #[test]
    fn srv_backends_keep_the_resolver_the_server_started_with() {
        let srv = |ns: &str| {
            format!(
                r#"{{"version": 3, "port": 8080, "extra_config": {{"sluice/dns": {{"nameservers": ["{ns}"]}}}},
                "endpoints": [{{"endpoint": "/a", "backend": [{{"host": ["_api._tcp.example"], "sd": "dns", "url_pattern": "/"}}]}}]}}"#
            )
        };
        let current = Current::new(plan(&srv("10.0.0.1:53")));
        assert_eq!(
            current.replace(plan(&srv("10.0.0.2:53"))),
            Err(Refused(vec![
                "the SRV resolver (sluice/dns, or resolv.conf when it names none) is not the one the server started \
                 with: it needs a restart"
                    .into()
            ]))
        );
        // No SRV backend left: nothing asks the resolver, the reload is served.
        assert_eq!(current.replace(plan(A)), Ok(1));
        assert_eq!(current.replace(plan(&srv("10.0.0.1:53"))), Ok(2));
    }
}
