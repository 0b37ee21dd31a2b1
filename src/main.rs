//! The `sluice` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use sluice_core::{ConfigError, Gateway};

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
        /// Number of shards (threads, one pinned per core). Default: one per core.
        #[arg(long)]
        shards: Option<usize>,
        /// Uses the epoll driver even where io_uring works (also: SLUICE_FORCE_EPOLL=1).
        #[arg(long)]
        force_epoll: bool,
        /// Longest wait for requests in flight on SIGTERM/SIGINT, in seconds
        /// (default: the file's `max_shutdown_wait_time`, else 10).
        #[arg(long)]
        max_shutdown_wait: Option<u64>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config, lint } => check(&config, lint),
        Command::Run { config, port, debug, shards, force_epoll, max_shutdown_wait } => {
            let force_epoll = force_epoll || std::env::var("SLUICE_FORCE_EPOLL").is_ok_and(|v| v == "1" || v == "true");
            run(&config, port, debug, shards, force_epoll, max_shutdown_wait)
        }
    }
}

/// Reads and compiles a configuration, printing every error as `sluice check` does.
fn load(path: &Path) -> Result<sluice_core::plan::Loaded, ExitCode> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", path.display());
            return Err(ExitCode::FAILURE);
        }
    };
    match Gateway::load(&text) {
        Ok(loaded) => Ok(loaded),
        Err(ConfigError::Syntax { line, column, message }) => {
            eprintln!("{}:{line}:{column}: invalid JSON: {message}", path.display());
            Err(ExitCode::FAILURE)
        }
        Err(ConfigError::Invalid(errors)) => {
            for e in &errors {
                eprintln!("{e}");
            }
            Err(ExitCode::FAILURE)
        }
    }
}

fn check(path: &Path, lint: bool) -> ExitCode {
    match load(path) {
        Ok(loaded) => {
            if lint {
                for w in &loaded.warnings {
                    eprintln!("warning: {w}");
                }
            }
            println!("Syntax OK!");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn run(
    path: &Path,
    port: Option<u16>,
    debug: bool,
    shards: Option<usize>,
    force_epoll: bool,
    wait: Option<u64>,
) -> ExitCode {
    let mut gateway = match load(path) {
        Ok(loaded) => loaded.gateway,
        Err(code) => return code,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    if debug {
        gateway.config.debug_endpoint = true;
    }
    let cfg = &gateway.config;
    let listen = SocketAddr::new(cfg.listen_ip, port.unwrap_or(cfg.port));
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
    let mut opts = sluice_uring::Options::new(listen);
    if let Some(n) = shards {
        opts.shards = n.max(1);
    }
    opts.force_epoll = force_epoll;
    opts.shutdown_wait = wait.map_or(cfg.max_shutdown_wait_time, std::time::Duration::from_secs);
    let wait = opts.shutdown_wait.as_secs_f64();
    let stop = sluice_uring::StopSignal::new();
    let server = match sluice_uring::start(Arc::new(gateway), opts.clone(), stop.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::FAILURE;
        }
    };
    let drivers: Vec<String> = server.drivers.iter().map(ToString::to_string).collect();
    tracing::info!("{} shard(s), driver {}; listening on {}", drivers.len(), drivers.join(", "), server.local_addr);
    let mut signals =
        match signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sluice: cannot handle signals: {e}");
                stop.trigger();
                server.join();
                return ExitCode::FAILURE;
            }
        };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!("signal {sig}: stopping (waiting up to {wait}s for requests in flight)");
            stop.trigger();
        }
    });
    server.join();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
