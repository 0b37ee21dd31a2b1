//! The `sluice` command line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use sluice_core::serve::{Options, Running, Start};
use sluice_core::{ConfigError, Gateway};

mod fetch;
mod log;
mod mem;
mod otlp;

/// `eprintln!` that never panics: a closed stderr (`sluice check ... 2>&1 | head -1`) loses
/// the line, not the process.
macro_rules! say_err {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` that never panics.
macro_rules! say_out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "A fast, trustworthy API gateway that reads KrakenD v3 configuration")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validates a configuration file: prints "Syntax OK!" or every error with its JSON path.
    Check {
        /// Path to the KrakenD v3 configuration file.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Also reports unknown keys and unsupported namespaces as warnings.
        #[arg(long)]
        lint: bool,
    },
    /// Serves a configuration: one shard per core (io_uring, or epoll where io_uring is
    /// unavailable). SIGTERM or SIGINT stops accepting, finishes requests in flight, exits 0.
    /// SIGHUP reads the file again and serves it (an invalid file changes nothing).
    Run {
        /// Path to the KrakenD v3 configuration file.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Port to listen on (overrides the file's `port`).
        #[arg(short = 'p', long = "port")]
        port: Option<u16>,
        /// Enables the `/__debug/` endpoint (as KrakenD's `-d`).
        #[arg(short = 'd', long = "debug")]
        debug: bool,
        /// Number of shards (uring: threads, one pinned per core; tokio: worker threads).
        /// Default: one per core.
        #[arg(long)]
        shards: Option<usize>,
        /// Which driver serves: `uring` (sluice-uring, monoio, one pinned shard per core)
        /// or `tokio` (sluice-tokio). Default: uring where io_uring works, else tokio.
        #[arg(long, value_enum)]
        runtime: Option<Runtime>,
        /// With the uring runtime: monoio's epoll driver even where io_uring works
        /// (also: SLUICE_FORCE_EPOLL=1).
        #[arg(long)]
        force_epoll: bool,
        /// Longest wait for requests in flight on SIGTERM/SIGINT, in seconds
        /// (default: the file's `max_shutdown_wait_time`, else 10).
        #[arg(long)]
        max_shutdown_wait: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Runtime {
    Uring,
    Tokio,
}

/// How `run` serves.
#[derive(Debug)]
struct Serving {
    port: Option<u16>,
    debug: bool,
    shards: Option<usize>,
    runtime: Option<Runtime>,
    force_epoll: bool,
    wait: Option<u64>,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config, lint } => check(&config, lint),
        Command::Run { config, port, debug, shards, runtime, force_epoll, max_shutdown_wait } => {
            let force_epoll = force_epoll || std::env::var("SLUICE_FORCE_EPOLL").is_ok_and(|v| v == "1" || v == "true");
            run(&config, Serving { port, debug, shards, runtime, force_epoll, wait: max_shutdown_wait })
        }
    }
}

/// The runtime to serve with, and why (for the log).
fn choose(asked: Option<Runtime>, force_epoll: bool) -> (Runtime, String) {
    match asked {
        Some(Runtime::Uring) => (Runtime::Uring, "asked for with --runtime".into()),
        Some(Runtime::Tokio) => (Runtime::Tokio, "asked for with --runtime".into()),
        None if force_epoll => (Runtime::Uring, "--force-epoll asks for monoio's epoll driver".into()),
        None => default_runtime(),
    }
}

/// uring where a ring can be set up, else tokio. `SLUICE_IO_URING=off` keeps io_uring
/// out (for hosts where it is allowed but unwanted, and to test the fallback).
#[cfg(target_os = "linux")]
fn default_runtime() -> (Runtime, String) {
    if std::env::var("SLUICE_IO_URING").is_ok_and(|v| v == "off" || v == "0") {
        return (Runtime::Tokio, "io_uring is turned off (SLUICE_IO_URING=off)".into());
    }
    match sluice_uring::probe() {
        Ok(()) => (Runtime::Uring, "io_uring is available".into()),
        Err(e) => (Runtime::Tokio, format!("io_uring is unavailable ({e})")),
    }
}

#[cfg(not(target_os = "linux"))]
fn default_runtime() -> (Runtime, String) {
    (Runtime::Tokio, "io_uring is Linux-only".into())
}

/// Reads and compiles a configuration and binds its client plugins, printing every
/// error as `sluice check` does. With it, the lines that say which plugins were loaded
/// and bound.
fn load(path: &Path) -> Result<(sluice_core::plan::Loaded, Vec<String>), ExitCode> {
    load_or_say(path).map_err(|errors| {
        for e in errors {
            say_err!("{e}");
        }
        ExitCode::FAILURE
    })
}

/// [`load`], with the errors as lines.
fn load_or_say(path: &Path) -> Result<(sluice_core::plan::Loaded, Vec<String>), Vec<String>> {
    let text = read_config(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    // The proxy settings of the environment, as Go reads them for KrakenD.
    let proxy = sluice_core::call::proxy::ProxyEnv::from_vars(|name| std::env::var(name).ok())
        .map_err(|e| vec![format!("sluice: {e}")])?;
    // A URL the configuration names (an auth/validator key set) is fetched through
    // a gateway of its own, with the same proxies, files and roots.
    let inner = proxy.clone();
    let env = sluice_core::tls::Environment {
        fetch: Box::new(move |req| fetch::fetch(req, &fetch_env(inner.clone()))),
        ..fetch_env(proxy)
    };
    match Gateway::load_with(&text, &env).and_then(plugins) {
        Ok(loaded) => Ok(loaded),
        Err(ConfigError::Syntax { line, column, message }) => {
            Err(vec![format!("{}:{line}:{column}: invalid JSON: {message}", path.display())])
        }
        Err(ConfigError::Invalid(errors)) => Err(errors
            .iter()
            .map(|e| match e.path.is_empty() {
                // About the whole document: the file names it.
                true => format!("{}: {}", path.display(), e.message),
                false => e.to_string(),
            })
            .collect()),
    }
}

/// What a fetch's own gateway is loaded with: the proxy settings, files and roots of
/// the gateway's, and no fetch of its own.
fn fetch_env(proxy: sluice_core::call::proxy::ProxyEnv) -> sluice_core::tls::Environment {
    sluice_core::tls::Environment {
        proxy,
        read_file: Box::new(read_small_file),
        system_roots: Box::new(|| rustls_native_certs::load_native_certs().certs),
        ..Default::default()
    }
}

/// Loads the root `plugin` folder's modules and binds them to the backends that name
/// them (sluice-plugins).
fn plugins(mut loaded: sluice_core::plan::Loaded) -> Result<(sluice_core::plan::Loaded, Vec<String>), ConfigError> {
    let gw = &mut loaded.gateway;
    if gw.config.plugin.is_none() && gw.plugin_sites().is_empty() {
        return Ok((loaded, Vec::new()));
    }
    let library = sluice_plugins::Library::load(gw.config.plugin.as_ref()).map_err(ConfigError::Invalid)?;
    let mut lines = Vec::new();
    if let Some(ignored) = library.notice() {
        loaded.notices.push(ignored.clone());
    } else if let Some(p) = &gw.config.plugin {
        let names = library.names();
        lines.push(format!("{} plugin(s) loaded from {:?}: {}", names.len(), p.folder, names.join(", ")));
    }
    lines.extend(library.bind(gw).map_err(ConfigError::Invalid)?);
    Ok((loaded, lines))
}

/// A certificate or key file the configuration names (at most 1 MiB: PEM files are
/// a few KiB).
fn read_small_file(path: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(1 << 20 | 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    if bytes.len() > 1 << 20 {
        return Err(format!("{path:?} is over 1 MiB: not a certificate or key file"));
    }
    Ok(bytes)
}

/// Reads at most [`sluice_core::config::MAX_CONFIG_BYTES`] (and one more byte, to tell
/// a file over the limit): `-c /dev/zero` is refused, not read forever.
fn read_config(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let limit = sluice_core::config::MAX_CONFIG_BYTES;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() > limit {
        return Err(sluice_core::config::too_large(bytes.len()));
    }
    String::from_utf8(bytes)
        .map_err(|e| format!("not UTF-8 text (byte {}): not a JSON configuration", e.utf8_error().valid_up_to()))
}

fn check(path: &Path, lint: bool) -> ExitCode {
    match load(path) {
        Ok((loaded, _)) => {
            for w in &loaded.notices {
                say_err!("warning: {w}");
            }
            if lint {
                for w in &loaded.warnings {
                    say_err!("warning: {w}");
                }
            }
            say_out!("Syntax OK!");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn run(path: &Path, serving: Serving) -> ExitCode {
    // Logging first: plugins log while they start (on_configure).
    log::init();
    let (mut gateway, plugin_lines) = match load(path) {
        Ok((loaded, lines)) => {
            // telemetry/logging: every line from here on in its format.
            if let Err(e) = log::configure(loaded.gateway.config.logging.as_ref()) {
                log::flush();
                say_err!("{}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            // What the configuration asks for and Sluice leaves out, said every start.
            for notice in &loaded.notices {
                tracing::warn!("{notice}");
            }
            (loaded.gateway, lines)
        }
        Err(code) => {
            log::flush();
            return code;
        }
    };
    mem::start();
    if serving.debug {
        gateway.config.debug_endpoint = true;
    }
    let cfg = &gateway.config;
    let listen = SocketAddr::new(cfg.listen_ip, serving.port.unwrap_or(cfg.port));
    let mut hosts: Vec<String> =
        gateway.endpoints.iter().flat_map(|e| &e.backends).flat_map(|b| &b.hosts).map(|h| h.addr.to_string()).collect();
    hosts.sort();
    hosts.dedup();
    tracing::info!(
        "config {} ({}): {} endpoint(s), {} backend(s) on {}",
        path.display(),
        cfg.name.as_deref().unwrap_or("unnamed"),
        gateway.endpoints.len(),
        gateway.backend_count,
        hosts.join(", ")
    );
    for (e, b) in gateway.endpoints.iter().flat_map(|e| e.backends.iter().map(move |b| (e, b))) {
        for h in &b.hosts {
            let route = match &h.proxy {
                Some(p) if h.connect.is_some() => format!("through proxy {} ({}), CONNECT tunnel", p.shown, p.source),
                Some(p) => format!("through proxy {} ({})", p.shown, p.source),
                None => "direct".to_string(),
            };
            match &h.tls {
                Some(t) if t.profile.insecure => tracing::warn!(
                    "[BACKEND: {} {}] {} {route}; TLS certificate NOT verified (allow_insecure_connections)",
                    e.method,
                    e.path,
                    h.addr
                ),
                Some(t) => {
                    tracing::info!("[BACKEND: {} {}] {} {route}; TLS: {}", e.method, e.path, h.addr, t.profile.label)
                }
                None => tracing::info!("[BACKEND: {} {}] {} {route}", e.method, e.path, h.addr),
            }
        }
    }
    for line in &plugin_lines {
        tracing::info!("{line}");
    }
    match (&gateway.server_tls, cfg.tls.as_ref().is_some_and(|t| t.disabled)) {
        (Some(t), _) => tracing::info!("listener: HTTPS ({})", t.label),
        (None, true) => tracing::warn!("listener: plain HTTP: tls.disabled is set"),
        (None, false) => tracing::info!("listener: plain HTTP"),
    }
    let wait = serving.wait.map_or(cfg.max_shutdown_wait_time, std::time::Duration::from_secs);
    let (runtime, why) = choose(serving.runtime, serving.force_epoll);
    if runtime == Runtime::Tokio && serving.force_epoll {
        tracing::warn!("--force-epoll applies to the uring runtime only; tokio uses its own poller");
    }
    tracing::info!("runtime {}: {why}", if runtime == Runtime::Uring { "uring" } else { "tokio" });
    let stop = sluice_core::StopSignal::new();
    // Before anything listens: a SIGHUP's default action would end the process.
    let Some(signals) = signals(stop.clone(), wait) else {
        log::flush();
        return ExitCode::FAILURE;
    };
    let mut keys = refresh_keys(&gateway);
    // What a reload keeps of the first start: the port `-p` chose, `-d`.
    let kept = Kept { port: serving.port.map(|_| cfg.port), debug: serving.debug };
    let collectors = fetch_env(gateway.proxy_env.clone());
    let exporter = match otlp::Exporter::start(&mut gateway, collectors) {
        Ok(e) => e,
        Err(e) => {
            keys.trigger();
            log::flush();
            say_err!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let server = match start(runtime, Arc::new(gateway), listen, &serving, wait, stop.clone()) {
        Ok(s) => s,
        Err(e) => {
            log::flush();
            say_err!("sluice: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A stop is triggered by the signal thread itself: a reload under way here (key
    // sets fetched, plugins compiled) does not hold it up.
    for signal in signals {
        match signal {
            Signal::Reload if !stop.is_triggered() => {
                if let Some(refreshing) = reload(path, &*server, kept, exporter.as_ref()) {
                    keys.trigger();
                    keys = refreshing;
                }
            }
            Signal::Reload => {}
            Signal::Stop => break,
        }
    }
    // Ended without a stop (the signal thread is gone): stop now rather than hang.
    stop.trigger();
    keys.trigger();
    server.join();
    // Spans of the last requests are sent before the end.
    if let Some(exporter) = exporter {
        exporter.finish();
    }
    tracing::info!("stopped");
    log::flush();
    ExitCode::SUCCESS
}

/// What a reloaded file does not change: the port given with `-p` (the file's, as
/// first read, stands for it), and `-d`.
#[derive(Debug, Clone, Copy)]
struct Kept {
    port: Option<u16>,
    debug: bool,
}

/// Starts fetching `gateway`'s key sets again while it serves; the signal ends that.
fn refresh_keys(gateway: &Gateway) -> sluice_core::StopSignal {
    let stop = sluice_core::StopSignal::new();
    if !gateway.key_sources.is_empty() {
        let proxy = gateway.proxy_env.clone();
        fetch::refresh(gateway.key_sources.clone(), move || fetch_env(proxy.clone()), stop.clone());
    }
    stop
}

/// Reads `path` again and hands it to `server` (SIGHUP). An invalid file, or one that
/// changes what needs a restart, changes nothing: each error is logged with its path.
/// `Some`: served, with the new plan's key refresher.
fn reload(
    path: &Path,
    server: &dyn Running,
    kept: Kept,
    exporter: Option<&otlp::Exporter>,
) -> Option<sluice_core::StopSignal> {
    tracing::info!("SIGHUP: reading {} again", path.display());
    let (mut gateway, lines) = match load_or_say(path) {
        Ok((loaded, lines)) => {
            for notice in &loaded.notices {
                tracing::warn!("{notice}");
            }
            (loaded.gateway, lines)
        }
        Err(errors) => {
            for e in &errors {
                tracing::error!("{e}");
            }
            tracing::error!(
                "reload refused ({} error(s)): still serving the configuration loaded before",
                errors.len()
            );
            return None;
        }
    };
    if let Some(port) = kept.port {
        gateway.config.port = port;
    }
    gateway.config.debug_endpoint |= kept.debug;
    if let Some(exporter) = exporter {
        exporter.adopt(&mut gateway);
    }
    for line in &lines {
        tracing::info!("{line}");
    }
    let (endpoints, backends) = (gateway.endpoints.len(), gateway.backend_count);
    let keys = refresh_keys(&gateway);
    let logging = gateway.config.logging.clone();
    match server.reload(Arc::new(gateway)) {
        Ok(generation) => {
            if let Err(e) = log::configure(logging.as_ref()) {
                tracing::error!("{}: {e}; the log keeps its settings", path.display());
            }
            tracing::info!(
                "reloaded {}: {endpoints} endpoint(s), {backends} backend(s) (generation {generation}); requests in flight finish on the configuration before",
                path.display()
            );
            Some(keys)
        }
        Err(refused) => {
            keys.trigger();
            for line in &refused.0 {
                tracing::error!("{}: {line}", path.display());
            }
            tracing::error!("reload refused: still serving the configuration loaded before");
            None
        }
    }
}

/// Starts the chosen driver: both take the same options and give the same
/// [`sluice_core::serve::Running`] server.
fn start(
    runtime: Runtime,
    gateway: Arc<Gateway>,
    listen: SocketAddr,
    serving: &Serving,
    wait: std::time::Duration,
    stop: sluice_core::StopSignal,
) -> std::io::Result<Box<dyn Running>> {
    let start: Start = match runtime {
        #[cfg(target_os = "linux")]
        Runtime::Uring => sluice_uring::start_boxed,
        #[cfg(not(target_os = "linux"))]
        Runtime::Uring => return Err(std::io::Error::other("the uring runtime needs Linux; use --runtime tokio")),
        Runtime::Tokio => sluice_tokio::start_boxed,
    };
    let mut opts = Options::new(&gateway, listen);
    if let Some(n) = serving.shards {
        opts.threads = n.max(1);
    }
    opts.force_epoll = serving.force_epoll;
    opts.shutdown_wait = wait;
    let server = start(gateway, opts, stop)?;
    let f = server.forward_addr().map(|a| format!("; forward proxy on {a}")).unwrap_or_default();
    let m = server.admin_addr().map(|a| format!("; admin on http://{a}/stats")).unwrap_or_default();
    tracing::info!("{}; listening on {}{f}{m}", server.describe(), server.local_addr());
    Ok(server)
}

/// What a signal asks of `run`.
#[derive(Debug, Clone, Copy)]
enum Signal {
    /// SIGHUP: read the configuration again.
    Reload,
    /// SIGTERM or SIGINT: `stop` is triggered already.
    Stop,
}

/// The signals `run` handles, from a thread of their own: SIGTERM and SIGINT trigger
/// `stop` there and then, SIGHUP comes out of the iterator. `None`: they cannot be
/// handled (said on stderr).
#[cfg(unix)]
fn signals(stop: sluice_core::StopSignal, wait: std::time::Duration) -> Option<impl Iterator<Item = Signal>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            say_err!("sluice: cannot handle signals ({e})");
            return None;
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == SIGHUP {
                let _ = tx.send(Signal::Reload);
                continue;
            }
            // Stop first: logging the signal must not be what stands between it and the stop.
            stop.trigger();
            tracing::info!("signal {sig}: stopping (waiting up to {}s for requests in flight)", wait.as_secs_f64());
            let _ = tx.send(Signal::Stop);
            return;
        }
    });
    Some(rx.into_iter())
}

/// Elsewhere the process ends on Ctrl-C without the graceful stop: no signal ever
/// comes.
#[cfg(not(unix))]
fn signals(_stop: sluice_core::StopSignal, _wait: std::time::Duration) -> Option<impl Iterator<Item = Signal>> {
    Some(std::iter::from_fn(|| {
        loop {
            std::thread::park();
        }
    }))
}
