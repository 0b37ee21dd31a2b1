//! `sluice-uring`: the thread-per-core driver of the Sluice core.
//!
//! One shard per core (or `Options::threads`): a named thread pinned with
//! `core_affinity`, running its own monoio runtime (io_uring, or the epoll driver when
//! io_uring is unavailable or `force_epoll` is set) and its own `SO_REUSEPORT`
//! listener. Per-shard state (backend pools, the DNS cache, round-robin counters, the
//! connection count, the admin counters) lives in `Rc`/`Cell`/`RefCell`; the compiled
//! `Gateway` is shared as `Arc` and only read, and so is the one
//! `sluice_core::ops::runtime::Runtime` of the server. No lock and no cross-shard message
//! on a gateway request's path (a forward proxy request takes one short lock for its
//! destination's circuit breaker counts, in the `Runtime`, shared by every shard by
//! design: `sluice_core::forward::breaker`). It gives the API every driver gives
//! (`sluice_core::serve`).
//!
//! This crate owns sockets, timers and idle backend sockets, nothing else: every HTTP
//! decision is `sluice_core::conn`'s, whose `Connection` each client connection's
//! task drives (`conn.rs`).

mod admin;
mod backend;
mod conn;
mod signal;
mod timer;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::net::{ListenerOpts, TcpListener};
use sluice_core::Gateway;
use sluice_core::gateway::ticks::{self, Ticker};
use sluice_core::ops::runtime::Runtime;
use sluice_core::serve::{Current, Plan, Refused};

pub use sluice_core::StopSignal;

/// How the server runs: the options every driver takes. `threads` is the number of
/// shards; `max_connections_per_thread` is per shard.
pub use sluice_core::serve::{Listener, Listening, Options, Running};

/// Which monoio driver a shard got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    /// epoll: forced, or io_uring was unavailable.
    Epoll {
        forced: bool,
    },
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Driver::IoUring => f.write_str("io_uring"),
            Driver::Epoll { forced: true } => f.write_str("epoll (forced)"),
            Driver::Epoll { forced: false } => f.write_str("epoll (io_uring unavailable)"),
        }
    }
}

/// The ring each shard sets up: `IORING_SETUP_COOP_TASKRUN` (completion work runs
/// when the shard enters the kernel, instead of interrupting it), `SINGLE_ISSUER` (the
/// shard is the only thread that submits, so the kernel skips the locking for others)
/// and `DEFER_TASKRUN` (completion work runs only when the shard asks for completions,
/// in batches). Linux 6.1 or later; elsewhere the default ring is used.
/// `SLUICE_URING_FLAGS=plain` asks for the default ring anyway. Measured (no-op, 1
/// shard, wrk -c64): 0.21 CPU s per 10k requests with the default ring, 0.14-0.16
/// with these; req/s up from 43,700 to 51,000-61,000.
fn tuned_ring() -> io_uring::Builder {
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun().setup_single_issuer().setup_defer_taskrun();
    urb
}

/// Whether io_uring works here: sets up (and drops) one ring. `Err` says why not
/// (ENOSYS on old kernels, EPERM under Docker's default seccomp profile, ...).
pub fn probe() -> io::Result<()> {
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().with_entries(8).build().map(drop)
}

/// A started server.
#[derive(Debug)]
pub struct Server {
    /// Where every shard listens.
    pub listening: Listening,
    /// The driver each shard got, by shard number.
    pub drivers: Vec<Driver>,
    stop: StopSignal,
    current: Arc<Current>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Asks every shard to stop accepting and finish what is in flight.
    pub fn stop(&self) {
        self.stop.trigger();
    }

    /// Waits for every shard to finish.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

impl Running for Server {
    fn listening(&self) -> Listening {
        self.listening
    }

    fn describe(&self) -> String {
        let drivers: Vec<String> = self.drivers.iter().map(ToString::to_string).collect();
        format!("{} shard(s), driver {}", drivers.len(), drivers.join(", "))
    }

    fn stop(&self) {
        Server::stop(self);
    }

    fn reload(&self, gw: Arc<Gateway>) -> Result<u64, Refused> {
        // Each shard looks at least every WATCH_EVERY, and at every accept.
        self.current.replace(gw)
    }

    fn join(self: Box<Self>) {
        Server::join(*self);
    }
}

/// [`start`], boxed: a [`sluice_core::serve::Start`].
pub fn start_boxed(gw: Arc<Gateway>, opts: Options, stop: StopSignal) -> io::Result<Box<dyn Running>> {
    Ok(Box::new(start(gw, opts, stop)?))
}

/// What every shard of a server starts from.
#[derive(Clone)]
struct Common {
    /// The plan served now (a reload replaces it).
    current: Arc<Current>,
    /// What every shard counts in together (the forward proxy's breakers).
    runtime: Arc<Runtime>,
    opts: Options,
    stop: StopSignal,
    /// Name lookups run here, off the shards (the system resolver blocks): one pool
    /// for the process.
    lookups: monoio::blocking::DefaultThreadPool,
    published: Arc<Vec<Arc<admin::Published>>>,
}

/// Per-shard state, owned by its thread.
pub(crate) struct Shard {
    id: usize,
    stop: StopSignal,
    /// Open connections at most (`max_connections_per_thread`).
    max: usize,
    /// The server's plan, and this shard's copy of it (taken up by [`Shard::plan`]).
    current: Arc<Current>,
    plan: RefCell<Rc<Plan>>,
    /// What every shard counts in together.
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) pool: backend::Pool,
    pub(crate) active: Cell<usize>,
    pub(crate) stopping: signal::LocalStop,
    /// The shard's counters (see `admin`).
    pub(crate) stats: RefCell<sluice_core::ops::stats::Stats>,
    /// Every shard's counters as last copied out for a scrape.
    pub(crate) published: Arc<Vec<Arc<admin::Published>>>,
    /// Every connection's deadline.
    pub(crate) timers: timer::Timers,
}

impl Shard {
    /// The plan to serve a new connection with: the server's latest, taken up here
    /// when a reload made a new one (one atomic load otherwise). Taking it up re-keys
    /// the shard's counters and tells connections on older plans to close at their next
    /// request boundary.
    pub(crate) fn plan(&self) -> Rc<Plan> {
        let generation = self.current.generation();
        if self.plan.borrow().generation != generation {
            let (generation, gw) = self.current.get();
            let old = self.plan.replace(Rc::new(Plan::new(generation, gw)));
            let new = self.plan.borrow().clone();
            self.stats.borrow_mut().carry_over(&old.gw, &new.gw);
            self.stopping.retire(generation);
            tracing::info!(shard = self.id, "serving the reloaded configuration (generation {generation})");
        }
        self.plan.borrow().clone()
    }

    /// Counts a log entry of a connection serving `plan`.
    pub(crate) fn observe(&self, line: &sluice_core::event::Log<'_>, plan: &Plan) {
        let now = self.plan.borrow();
        if now.generation == plan.generation {
            self.stats.borrow_mut().observe(line);
        } else {
            self.stats.borrow_mut().observe_moved(line, &plan.gw, &now.gw);
        }
    }
}

/// Starts the shards. Returns once every shard listens, or with the first error (the
/// port is taken, ...), in which case nothing keeps running.
pub fn start(gw: Arc<Gateway>, opts: Options, stop: StopSignal) -> io::Result<Server> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut threads = Vec::new();
    let mut drivers = Vec::new();
    let mut addr = (opts.listen, opts.forward_listen, opts.admin_listen);
    // 0: one shard per core we can pin to (as before the options were shared).
    let shards = match opts.threads {
        0 => cores.len().max(1),
        n => n,
    };
    let current = Arc::new(Current::new(gw));
    let common = Common {
        published: Arc::new((0..shards).map(|_| Arc::default()).collect()),
        lookups: monoio::blocking::DefaultThreadPool::new(LOOKUP_THREADS),
        runtime: Arc::new(Runtime::new(&current.get().1)),
        current: current.clone(),
        opts,
        stop: stop.clone(),
    };
    for id in 0..shards {
        let (tx, rx) = mpsc::channel();
        let core = if cores.is_empty() { None } else { cores.get(id % cores.len()).copied() };
        let (common, listen) = (common.clone(), addr);
        let t = std::thread::Builder::new()
            .name(format!("sluice-shard-{id}"))
            .spawn(move || shard_thread(id, core, common, listen, tx))?;
        threads.push(t);
        match rx.recv() {
            Ok(Ok((bound, driver))) => {
                // Port 0: the first shard's ports are everyone's.
                addr = bound;
                drivers.push(driver);
            }
            Ok(Err(e)) => {
                stop.trigger();
                for t in threads {
                    let _ = t.join();
                }
                return Err(e);
            }
            Err(_) => {
                stop.trigger();
                return Err(io::Error::other("a shard thread ended before listening"));
            }
        }
    }
    let listening = Listening { gateway: addr.0, forward: addr.1, admin: addr.2 };
    Ok(Server { listening, drivers, stop, current, threads })
}

/// Threads doing name lookups for every shard.
const LOOKUP_THREADS: usize = 4;

/// The gateway's, the forward proxy's and the admin listening addresses.
type Addrs = (SocketAddr, Option<SocketAddr>, Option<SocketAddr>);

type Ready = mpsc::Sender<io::Result<(Addrs, Driver)>>;

fn shard_thread(id: usize, core: Option<core_affinity::CoreId>, common: Common, listen: Addrs, ready: Ready) {
    if let Some(core) = core {
        core_affinity::set_for_current(core);
    }
    let (lookups, force_epoll) = (common.lookups.clone(), common.opts.force_epoll);
    let run = |driver: Driver| shard_main(id, common, listen, ready.clone(), driver);
    // Each shard's runtime: 1,024 ring entries, timers, the lookup threads.
    macro_rules! runtime {
        ($driver:ty) => {
            monoio::RuntimeBuilder::<$driver>::new()
                .with_entries(1024)
                .enable_timer()
                .attach_thread_pool(Box::new(lookups.clone()))
        };
    }
    // The tuned ring first (see `tuned_ring`); where the kernel refuses its flags, the
    // default ring, and epoll where there is no io_uring at all (or when forced).
    let tuned = !force_epoll && std::env::var("SLUICE_URING_FLAGS").map_or(true, |v| v != "plain");
    if tuned {
        match runtime!(monoio::IoUringDriver).uring_builder(tuned_ring()).build() {
            Ok(mut rt) => return rt.block_on(run(Driver::IoUring)),
            Err(e) => tracing::debug!(
                shard = id,
                "io_uring with COOP/SINGLE_ISSUER/DEFER_TASKRUN refused ({e}): default ring"
            ),
        }
    }
    let built = match force_epoll {
        true => runtime!(monoio::LegacyDriver).build().map(monoio::FusionRuntime::Legacy),
        false => runtime!(monoio::FusionDriver).build(),
    };
    match built {
        Ok(monoio::FusionRuntime::Uring(mut rt)) => rt.block_on(run(Driver::IoUring)),
        Ok(monoio::FusionRuntime::Legacy(mut rt)) => rt.block_on(run(Driver::Epoll { forced: force_epoll })),
        Err(e) => {
            let _ = ready.send(Err(e));
        }
    }
}

async fn shard_main(id: usize, common: Common, listen: Addrs, ready: Ready, driver: Driver) {
    let listener_opts = ListenerOpts::new().reuse_port(true).reuse_addr(true).backlog(4096);
    let bind = |at: SocketAddr, what: &str| {
        TcpListener::bind_with_config(at, &listener_opts)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {at}{what}: {e}")))
    };
    // The admin listener is shard 0's alone.
    let listeners = bind(listen.0, "").and_then(|gateway| {
        let forward = listen.1.map(|at| bind(at, " (forward proxy)")).transpose()?;
        Ok((gateway, forward, listen.2.filter(|_| id == 0).map(|at| bind(at, " (admin)")).transpose()?))
    });
    let (listener, forward, admin_listener) = match listeners {
        Ok(all) => all,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // Port 0: where the system put it.
    let at = |l: Option<&TcpListener>, asked: Option<SocketAddr>| l.and_then(|l| l.local_addr().ok()).or(asked);
    let bound = (
        at(Some(&listener), Some(listen.0)).unwrap_or(listen.0),
        at(forward.as_ref(), listen.1),
        at(admin_listener.as_ref(), listen.2),
    );
    let Common { current, runtime, opts, stop, published, .. } = common;
    let (generation, gw) = current.get();
    let shard = Rc::new(Shard {
        id,
        stop: stop.clone(),
        max: opts.max_connections_per_thread,
        pool: backend::Pool::new(gw.config.max_idle_connections_per_host, gw.dns_cache_config(), gw.resolver.clone()),
        plan: RefCell::new(Rc::new(Plan::new(generation, gw))),
        current,
        runtime,
        active: Cell::new(0),
        stopping: signal::LocalStop::default(),
        stats: RefCell::default(),
        published,
        timers: timer::Timers::default(),
    });
    let forwarding = bound.1.map(|f| format!(" (forward proxy on {f})")).unwrap_or_default();
    tracing::info!(shard = id, driver = %driver, "shard listening on {}{forwarding}", bound.0);
    let _ = ready.send(Ok((bound, driver)));
    drop(ready);

    // The accept is never dropped while it is out: an io_uring accept dropped in
    // flight still completes in the kernel, and monoio throws its result (the new
    // socket's fd) away: a client connection nobody reads or closes. (It was raced
    // against a 100 ms sleep to notice the stop; under a burst, one in a few thousand
    // connections was lost so.) The stop cancels the accept instead, and the accept is
    // always awaited to its end: a socket it brings is served.
    let canceller = monoio::io::Canceller::new();
    let cancel = canceller.handle();
    // Every WATCH_EVERY: the stop, and a reload (taken up here even when no
    // connection comes, so that connections on the old plan are told).
    let watched = shard.clone();
    monoio::spawn(async move {
        while !watched.stop.is_triggered() {
            monoio::time::sleep(WATCH_EVERY).await;
            watched.plan();
        }
        canceller.cancel();
    });
    if listen.2.is_some()
        && let Some(mine) = shard.published.get(id)
    {
        monoio::spawn(admin::publish(shard.clone(), mine.clone(), stop.clone()));
    }
    // Plugins' ticks: this shard's instances tick here, as each Envoy worker's.
    monoio::spawn(tick(shard.clone()));
    let timed = shard.clone();
    let pumping = monoio::spawn(async move { timed.timers.pump().await });
    let others: Vec<_> = [(forward, Listener::Forward), (admin_listener, Listener::Admin)]
        .into_iter()
        .filter_map(|(l, kind)| Some((l?, kind)))
        .map(|(l, kind)| {
            let (shard, cancel) = (shard.clone(), cancel.clone());
            monoio::spawn(async move { accept_loop(&l, &shard, cancel, kind).await })
        })
        .collect();
    accept_loop(&listener, &shard, cancel, Listener::Gateway).await;
    for other in others {
        other.await;
    }
    // What the kernel queued for this listener and nobody accepted yet would be reset
    // by the close: a process started beside this one on the same port (SO_REUSEPORT)
    // would have served it. Accepted and served here instead.
    for (stream, peer) in drain_backlog(&listener) {
        monoio::spawn(conn::serve(shard.clone(), stream, peer, Listener::Gateway));
    }
    drop(listener);
    shard.stopping.trigger();
    let waited = std::time::Instant::now();
    while shard.active.get() > 0 && waited.elapsed() < opts.shutdown_wait {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    if shard.active.get() > 0 {
        tracing::warn!(shard = id, "stopping with {} connection(s) still open", shard.active.get());
    }
    // The timer's task holds the shard: it ends here, as every other task of the shard
    // has at the stop (monoio never drops a task that is still waiting).
    shard.timers.close();
    pumping.await;
}

/// How often a shard looks for a stop or a reload when nothing else wakes it.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Makes this shard's plugin ticks when they are due, until the stop (looking at
/// least every [`ticks::LOOK_EVERY`]: a period may be set later); the plan's plugins,
/// and after a reload the new plan's.
async fn tick(shard: Rc<Shard>) {
    let mut plan = shard.plan.borrow().clone();
    let mut ticker = Ticker::new(&plan.gw, Instant::now(), false);
    while !shard.stop.is_triggered() {
        let now = Instant::now();
        let wait = ticker.poll_timeout().map_or(ticks::LOOK_EVERY, |n| n.saturating_duration_since(now));
        monoio::time::sleep(wait.clamp(ticks::MIN_GAP, ticks::LOOK_EVERY)).await;
        let latest = shard.plan.borrow().clone();
        if latest.generation != plan.generation {
            plan = latest;
            ticker = Ticker::new(&plan.gw, Instant::now(), false);
        }
        // What is due ticks; a period set since the last look is taken up.
        ticker.handle_timeout(Instant::now());
    }
}

/// The connections queued on `listener` (made non-blocking for this) at the stop,
/// non-blocking (as both of monoio's drivers take them).
#[allow(unsafe_code)]
fn drain_backlog(listener: &TcpListener) -> Vec<(monoio::net::TcpStream, SocketAddr)> {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the listener owns the descriptor and outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(listener.as_raw_fd()) };
    let mut out = Vec::new();
    if rustix::io::ioctl_fionbio(fd, true).is_err() {
        return out;
    }
    while out.len() < 4096 {
        let flags = rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK;
        let (socket, peer) = match rustix::net::acceptfrom_with(fd, flags) {
            Ok(accepted) => accepted,
            // Gone before it was accepted: the next one.
            Err(rustix::io::Errno::CONNABORTED) => continue,
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => {
                tracing::warn!("accept failed at the stop: {e}");
                break;
            }
        };
        let peer = peer.and_then(|a| SocketAddr::try_from(a).ok());
        let std = std::net::TcpStream::from(socket);
        let _ = std.set_nodelay(true);
        match (monoio::net::TcpStream::from_std(std), peer) {
            (Ok(stream), Some(peer)) => out.push((stream, peer)),
            _ => continue,
        }
    }
    out
}

/// Accepts connections on `listener` (of kind `kind`) until the stop.
async fn accept_loop(listener: &TcpListener, shard: &Rc<Shard>, cancel: monoio::io::CancelHandle, kind: Listener) {
    let (id, max, stop) = (shard.id, shard.max, &shard.stop);
    loop {
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((stream, peer)) => {
                if shard.active.get() >= max && kind.limited() {
                    tracing::warn!(shard = id, "connection limit reached ({max}): closing {peer}");
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                monoio::spawn(conn::serve(shard.clone(), stream, peer, kind));
            }
            // Canceled at the stop: nothing to say.
            Err(_) if stop.is_triggered() => {}
            Err(e) => {
                tracing::warn!(shard = id, "accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if stop.is_triggered() {
            break;
        }
    }
}
