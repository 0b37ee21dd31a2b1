//! `sluice-tokio`: the portable driver of the Sluice core, on tokio.
//!
//! The same `sluice_core::conn::Connection` as `sluice-uring`, for hosts without
//! io_uring (Docker's default seccomp profile, older kernels, macOS) and for embedding
//! the gateway in a tokio application. This crate owns sockets, timers and tasks,
//! nothing else: every HTTP decision, the retry and pool-return rules and the client
//! deadlines are `sluice_core`'s.
//!
//! # Serving a gateway inside your own runtime
//!
//! Compile a [`Gateway`] once, bind a [`tokio::net::TcpListener`] and hand both to
//! [`serve`] with a future that says when to stop. `serve` spawns one task per
//! connection on the runtime it runs on and returns once stopped: no more accepts,
//! idle connections closed, requests in flight finished (for at most the config's
//! `max_shutdown_wait_time`, then cut).
//!
//! ```
//! use std::sync::Arc;
//!
//! use sluice_core::Gateway;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = r#"{"version": 3, "name": "embedded", "endpoints": []}"#;
//! let gateway = Arc::new(Gateway::load(config)?.gateway);
//!
//! // Someone else's runtime, with their own tasks on it.
//! let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//!     let addr = listener.local_addr()?;
//!     let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//!     let server = tokio::spawn(sluice_tokio::serve(listener, gateway, async {
//!         let _ = stopped.await;
//!     }));
//!
//!     let mut client = tokio::net::TcpStream::connect(addr).await?;
//!     client.write_all(b"GET /__health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").await?;
//!     let mut response = String::new();
//!     client.read_to_string(&mut response).await?;
//!     assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
//!     assert!(response.contains("\r\ncontent-type: application/json; charset=utf-8\r\n"), "{response}");
//!     assert!(response.ends_with(r#""status":"ok"}"#), "{response}");
//!
//!     stop.send(()).ok();
//!     server.await?;
//!     Ok(())
//! })
//! # }
//! ```
//!
//! [`start`] is the other way in, used by `sluice run --runtime tokio`: it builds a
//! multi-thread runtime of its own on a background thread, with the options and the
//! server API every driver gives (`sluice_core::serve`).

mod backend;
mod conn;
mod tell;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_core::Gateway;
pub use sluice_core::StopSignal;
use sluice_core::gateway::ticks::{self, Ticker};
use sluice_core::ops::runtime::Runtime;
use sluice_core::serve::{Current, Plan, Refused};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinSet;

/// How a server runs: the options every driver takes. `threads` is the number of
/// worker threads [`start`] gives its runtime; inside your own runtime ([`serve_with`])
/// only `max_connections_per_thread` (times `threads`) and `shutdown_wait` apply, the
/// listeners being yours.
pub use sluice_core::serve::{Listener, Listening, Options, Running};

/// What every connection task shares. Locks guard a map lookup or a counter update,
/// never I/O; the round-robin counters are atomics.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The server's plan, and the copy connections start from (see [`Shared::plan`]).
    current: Arc<Current>,
    plan: std::sync::Mutex<Arc<Plan>>,
    /// The newest plan's generation, and whether the server stops: what connections
    /// on an older plan, and every connection at the stop, wait for.
    pub(crate) tell: tell::Tell,
    /// What every worker counts in together (the forward proxy's breakers).
    pub(crate) runtime: Runtime,
    pub(crate) pool: backend::Pool,
    /// The counters of every worker together: this portable driver has no shards, so
    /// a log entry is counted under a short lock (`sluice-uring` counts per shard with
    /// none).
    pub(crate) stats: std::sync::Mutex<Keyed>,
}

/// The counters, and the generation of the plan whose endpoint indices key them.
#[derive(Debug, Default)]
pub(crate) struct Keyed {
    pub(crate) generation: u64,
    pub(crate) stats: sluice_core::ops::stats::Stats,
}

impl Shared {
    /// The plan to serve a new connection with: the server's latest, taken up here
    /// when a reload made a new one (one short lock per connection).
    /// Taking it up re-keys the counters and tells connections on older plans to close
    /// at their next request boundary.
    pub(crate) fn plan(&self) -> Arc<Plan> {
        let mut plan = self.plan.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if plan.generation != self.current.generation() {
            let (generation, gw) = self.current.get();
            let new = Arc::new(Plan::new(generation, gw));
            let mut keyed = self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            keyed.stats.carry_over(&plan.gw, &new.gw);
            keyed.generation = generation;
            drop(keyed);
            *plan = new;
            self.tell.reload(generation);
            tracing::info!("serving the reloaded configuration (generation {generation})");
        }
        plan.clone()
    }

    /// Counts a log entry of a connection serving `plan`.
    pub(crate) fn observe(&self, line: &sluice_core::event::Log<'_>, plan: &Plan) {
        {
            // Counters keyed by this connection's plan: no lock but theirs.
            let mut keyed = self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if keyed.generation == plan.generation {
                keyed.stats.observe(line);
                return;
            }
        }
        // Keyed by a newer plan: counted under the endpoint's index there. The plan is
        // read before the counters (the lock order of `plan`), and read again if a
        // reload re-keyed them in between.
        loop {
            let now = self.plan.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let mut keyed = self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if keyed.generation == now.generation {
                match now.generation == plan.generation {
                    true => keyed.stats.observe(line),
                    false => keyed.stats.observe_moved(line, &plan.gw, &now.gw),
                }
                return;
            }
        }
    }
}

/// Serves `gw` on `listener` until `shutdown` resolves, with [`Options::new`].
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    let at = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let opts = Options::new(&gw, at);
    serve_with(listener, gw, opts, shutdown).await;
}

/// Serves `gw` on `listener` until `shutdown` resolves. Connection tasks are spawned
/// on the current runtime; when this returns none of them is left running.
pub async fn serve_with(listener: TcpListener, gw: Arc<Gateway>, opts: Options, shutdown: impl Future<Output = ()>) {
    serve_listeners(listener, None, None, gw, opts, shutdown).await;
}

/// [`serve_with`], the forward proxy (`gw.forward`) on `forward` and the admin pages
/// on `admin` when given.
pub async fn serve_listeners(
    listener: TcpListener,
    forward: Option<TcpListener>,
    admin: Option<TcpListener>,
    gw: Arc<Gateway>,
    opts: Options,
    shutdown: impl Future<Output = ()>,
) {
    serve_current(listener, forward, admin, Arc::new(Current::new(gw)), opts, shutdown).await;
}

/// [`serve_listeners`] of the plan in `current`, and of the plans a reload puts
/// there ([`Current::replace`]) from then on.
pub async fn serve_current(
    listener: TcpListener,
    forward: Option<TcpListener>,
    admin: Option<TcpListener>,
    current: Arc<Current>,
    opts: Options,
    shutdown: impl Future<Output = ()>,
) {
    let (generation, gw) = current.get();
    let shared = Arc::new(Shared {
        runtime: Runtime::new(&gw),
        pool: backend::Pool::new(gw.config.max_idle_connections_per_host, gw.dns_cache_config(), gw.resolver.clone()),
        plan: std::sync::Mutex::new(Arc::new(Plan::new(generation, gw))),
        current,
        tell: tell::Tell::new(generation),
        stats: std::sync::Mutex::new(Keyed { generation, ..Keyed::default() }),
    });
    let mut tasks = JoinSet::new();
    // Plugins' ticks: one ticker for the process (a task moves between workers, so
    // each tick reaches every worker's instance; see sluice_core::gateway::ticks).
    let mut ticking = ticks_of(&shared.plan());
    let mut ticked = generation;
    let mut shutdown = std::pin::pin!(shutdown);
    let max_connections = opts.max_connections_per_thread.saturating_mul(threads(&opts));
    // A reload is taken up at the next accept, or within WATCH_EVERY when none comes
    // (connections on the old plan are told then).
    let mut watch = tokio::time::interval(WATCH_EVERY);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = watch.tick() => {
                let plan = shared.plan();
                if plan.generation != ticked {
                    if let Some(t) = ticking.take() {
                        t.abort();
                    }
                    (ticking, ticked) = (ticks_of(&plan), plan.generation);
                }
            }
            (accepted, kind) = accept(&listener, forward.as_ref(), admin.as_ref()) => match accepted {
                Ok((stream, peer)) => {
                    if tasks.len() >= max_connections && kind.limited() {
                        tracing::warn!("connection limit reached ({max_connections}): closing {peer}");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    tasks.spawn(conn::serve(shared.clone(), stream, peer, kind));
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    // What the kernel queued for the gateway's listener and nobody accepted yet would
    // be reset by the close: a process started beside this one on the same port
    // (SO_REUSEPORT) would have served it. Accepted and served here instead.
    // Asked of the socket itself until it has none (tokio's readiness may not have
    // seen the latest yet).
    if let Ok(listener) = listener.into_std() {
        let mut queued = 0;
        while queued < 4096 {
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                // Gone before it was accepted: the next one.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("accept failed at the stop: {e}");
                    break;
                }
            };
            queued += 1;
            let accepted = stream.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(stream));
            if let Ok(stream) = accepted {
                let _ = stream.set_nodelay(true);
                tasks.spawn(conn::serve(shared.clone(), stream, peer, Listener::Gateway));
            }
        }
    }
    drop((forward, admin));
    if let Some(t) = ticking {
        t.abort();
    }
    shared.tell.stop();
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(opts.shutdown_wait, drain).await.is_err() {
        tracing::warn!("stopping with {} connection(s) still open", tasks.len());
        tasks.shutdown().await;
    }
}

/// How often the server looks for a reload when no connection comes.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// The ticking task of `plan`'s plugins (none without plugins).
fn ticks_of(plan: &Plan) -> Option<tokio::task::JoinHandle<()>> {
    let ticker = Ticker::new(&plan.gw, Instant::now(), true);
    (!ticker.is_empty()).then(|| tokio::spawn(tick(ticker)))
}

/// Makes plugins' ticks when they are due, looking at least every
/// [`ticks::LOOK_EVERY`] (a period may be set later), until aborted.
async fn tick(mut ticker: Ticker) {
    loop {
        let now = Instant::now();
        let wait = ticker.poll_timeout().map_or(ticks::LOOK_EVERY, |n| n.saturating_duration_since(now));
        tokio::time::sleep(wait.clamp(ticks::MIN_GAP, ticks::LOOK_EVERY)).await;
        ticker.handle_timeout(Instant::now());
    }
}

/// A connection on `l`; never, without it.
async fn on(l: Option<&TcpListener>) -> io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// The next connection on any listener, and which one it came to.
async fn accept(
    gateway: &TcpListener,
    forward: Option<&TcpListener>,
    admin: Option<&TcpListener>,
) -> (io::Result<(tokio::net::TcpStream, SocketAddr)>, Listener) {
    tokio::select! {
        a = gateway.accept() => (a, Listener::Gateway),
        a = on(forward) => (a, Listener::Forward),
        a = on(admin) => (a, Listener::Admin),
    }
}

/// A server started with [`start`].
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub listening: Listening,
    /// Worker threads of the runtime.
    pub threads: usize,
    stop: StopSignal,
    current: Arc<Current>,
    thread: JoinHandle<()>,
}

impl Server {
    /// Asks the server to stop accepting and finish what is in flight.
    pub fn stop(&self) {
        self.stop.trigger();
    }

    /// Waits for the server to finish.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

impl Running for Server {
    fn listening(&self) -> Listening {
        self.listening
    }

    fn describe(&self) -> String {
        format!("{} worker thread(s), runtime tokio", self.threads)
    }

    fn stop(&self) {
        Server::stop(self);
    }

    fn reload(&self, gw: Arc<Gateway>) -> Result<u64, Refused> {
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

/// Serves `gw` on `opts.listen` (its forward proxy and admin pages on theirs, when
/// given) from a multi-thread runtime of `opts.threads` workers, built on a thread of
/// its own. Returns once listening (or with the bind error); stops when `stop` is
/// triggered.
pub fn start(gw: Arc<Gateway>, opts: Options, stop: StopSignal) -> io::Result<Server> {
    let threads = threads(&opts);
    let (listen, forward) = (opts.listen, opts.forward_listen);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("sluice-tokio")
        .enable_all()
        .build()?;
    let (ready, bound) = mpsc::channel();
    let stop2 = stop.clone();
    let current = Arc::new(Current::new(gw));
    let serving = current.clone();
    let thread = std::thread::Builder::new().name("sluice-tokio-main".into()).spawn(move || {
        runtime.block_on(async move {
            let listener = match bind(listen) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready.send(Err(io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}"))));
                    return;
                }
            };
            let forward_listener = match forward.map(|at| (at, bind(at))) {
                None => None,
                Some((_, Ok(l))) => Some(l),
                Some((at, Err(e))) => {
                    let why = format!("cannot listen on {at} (forward proxy): {e}");
                    let _ = ready.send(Err(io::Error::new(e.kind(), why)));
                    return;
                }
            };
            let admin_listener = match opts.admin_listen.map(|at| (at, bind(at))) {
                None => None,
                Some((_, Ok(l))) => Some(l),
                Some((at, Err(e))) => {
                    let _ = ready.send(Err(io::Error::new(e.kind(), format!("cannot listen on {at} (admin): {e}"))));
                    return;
                }
            };
            let addrs = listener.local_addr().and_then(|a| {
                let f = forward_listener.as_ref().map(TcpListener::local_addr).transpose()?;
                let m = admin_listener.as_ref().map(TcpListener::local_addr).transpose()?;
                Ok((a, f, m))
            });
            let _ = ready.send(addrs);
            let stopped = async move {
                while !stop2.is_triggered() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            serve_current(listener, forward_listener, admin_listener, serving, opts, stopped).await;
        });
    })?;
    match bound.recv() {
        Ok(Ok((gateway, forward, admin))) => {
            Ok(Server { listening: Listening { gateway, forward, admin }, threads, stop, current, thread })
        }
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(io::Error::other("the server thread ended before listening")),
    }
}

/// The worker threads `opts` asks for: 0 means one per available core.
fn threads(opts: &Options) -> usize {
    match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// A listener with a backlog fit for bursts of connections (the standard library's
/// is 128), shared with any other process listening on the same port with
/// `SO_REUSEPORT` (a new version started beside this one: the kernel spreads
/// connections over both until this one stops), as `sluice-uring`'s shards share it.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    #[cfg(all(unix, not(target_os = "solaris"), not(target_os = "illumos")))]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
