//! The log sink: lines go to stderr from a thread of their own, so that writing a log
//! line never blocks a shard and never fails a request.
//!
//! The request path formats a line and hands it to a bounded queue; a full queue drops
//! the line and counts it. The writer thread writes what it gets to stderr; a write
//! error (a closed pipe, a full disk) drops that line and counts it too, and is never
//! fatal. The counts are printed, best effort, when the process stops.
//!
//! Colour only when stderr is a terminal and `NO_COLOR` is unset or empty
//! (<https://no-color.org>).
//!
//! A configuration's `telemetry/logging` ([`configure`]) changes the lines' format
//! (KrakenD's `default`, `logstash` or `custom`, rendered by
//! `sluice_core::ops::logging`), their level (unless `RUST_LOG` is set), and where they
//! go: standard output (`stdout`), and the local syslog socket (`syslog`: `/dev/log`,
//! or `SLUICE_SYSLOG_SOCKET`), from the same writer thread.

use std::io::{self, IsTerminal, Write};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use sluice_core::ops::logging::{Level, Logging, Stamp};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, reload};

/// Lines waiting for the writer thread at most; more are dropped (and counted).
const QUEUE: usize = 8192;

/// Lines dropped because the queue was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Lines lost to a failed write on stderr.
static FAILED: AtomicU64 = AtomicU64::new(0);
/// The queue's sending end, for [`flush`].
static SENDER: OnceLock<SyncSender<Msg>> = OnceLock::new();

enum Msg {
    Line(Vec<u8>),
    /// A datagram for the syslog socket.
    Syslog(Vec<u8>),
    /// From now on, lines go to this syslog socket (`None`: none).
    SyslogTo(Option<UnixDatagram>),
    /// Answered once every line queued before it was written (or dropped).
    Flush(mpsc::Sender<()>),
}

/// The `MakeWriter` handed to tracing-subscriber.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    tx: SyncSender<Msg>,
}

/// What tracing-subscriber writes one event through. It writes a whole formatted event
/// with one `write_all`, so one `write` is one line.
#[derive(Debug)]
pub(crate) struct LineWriter<'a> {
    tx: &'a SyncSender<Msg>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A line that goes only to syslog leaves nothing for the stream.
        if buf.is_empty() {
            return Ok(0);
        }
        match self.tx.try_send(Msg::Line(buf.to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Never an error: tracing-subscriber reports those on stderr with eprintln!,
        // which panics when stderr is the thing that failed.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { tx: &self.tx }
    }
}

/// The filter directives: `RUST_LOG` (default `info`), with the plugin host's compiler
/// (cranelift, wasmtime) held at `warn` unless `RUST_LOG` names it: `RUST_LOG=debug`
/// is for the gateway's lines, not thousands of lines of code generation.
fn filter(rust_log: Option<&str>) -> String {
    let asked = rust_log.filter(|v| !v.trim().is_empty()).unwrap_or("info");
    let mut directives = asked.to_string();
    for quiet in ["cranelift_codegen", "cranelift_frontend", "wasmtime", "wasmtime_internal_cranelift", "regalloc2"] {
        if !asked.contains(quiet) {
            directives.push_str(&format!(",{quiet}=warn"));
        }
    }
    directives
}

/// The level filter, replaced by [`configure`].
static FILTER: OnceLock<reload::Handle<EnvFilter, tracing_subscriber::Registry>> = OnceLock::new();
/// `telemetry/logging`, once configured.
static STYLE: RwLock<Option<Arc<Logging>>> = RwLock::new(None);
/// Lines go to standard output instead of stderr.
static TO_STDOUT: AtomicBool = AtomicBool::new(false);
/// go-logging's `%{id}`: lines written so far.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Starts the writer thread and installs the global subscriber (`RUST_LOG`, default
/// `info`).
pub(crate) fn init() {
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let started = std::thread::Builder::new().name("sluice-log".into()).spawn(move || write_lines(&rx, Out));
    if started.is_err() {
        // No thread: lines are counted as dropped, the gateway serves on.
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
    let _ = SENDER.set(tx.clone());
    let (filter, handle) = reload::Layer::new(EnvFilter::new(filter(std::env::var("RUST_LOG").ok().as_deref())));
    let _ = FILTER.set(handle);
    let layer = tracing_subscriber::fmt::layer()
        .event_format(Styled { own: format::format().with_target(false), tx: tx.clone() })
        .with_ansi(colour(io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref()))
        .with_writer(Sink { tx });
    let _ = tracing_subscriber::registry().with(filter).with(layer).try_init();
}

/// Takes up a configuration's `telemetry/logging` (`None`: Sluice's own lines on
/// stderr): format, destinations, and level unless `RUST_LOG` is set. `Err`: its syslog
/// socket cannot be reached (KrakenD does not start then either), and nothing changed.
pub(crate) fn configure(logging: Option<&Logging>) -> Result<(), String> {
    let syslog = match logging.filter(|l| l.syslog) {
        Some(_) => Some(syslog_socket()?),
        None => None,
    };
    // What was logged so far goes where it was meant to.
    flush_queue();
    if let Some(tx) = SENDER.get() {
        let _ = tx.send(Msg::SyslogTo(syslog));
    }
    TO_STDOUT.store(logging.is_some_and(|l| l.stdout), Ordering::Release);
    *STYLE.write().unwrap_or_else(std::sync::PoisonError::into_inner) = logging.cloned().map(Arc::new);
    let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    if let Some(handle) = FILTER.get() {
        let level = logging.map(|l| match l.level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warning => "warn",
            Level::Error | Level::Critical => "error",
        });
        let _ = handle.reload(EnvFilter::new(filter(rust_log.as_deref().or(level))));
    }
    Ok(())
}

/// The local syslog socket, connected: `SLUICE_SYSLOG_SOCKET`, else the first of
/// `/dev/log`, `/var/run/syslog`, `/var/run/log` that takes a connection (as Go's
/// `log/syslog`).
fn syslog_socket() -> Result<UnixDatagram, String> {
    let paths: Vec<PathBuf> = match std::env::var_os("SLUICE_SYSLOG_SOCKET") {
        Some(p) => vec![p.into()],
        None => ["/dev/log", "/var/run/syslog", "/var/run/log"].iter().map(PathBuf::from).collect(),
    };
    let mut why = Vec::new();
    for path in &paths {
        let tried = UnixDatagram::unbound().and_then(|s| s.connect(path).map(|()| s));
        match tried {
            Ok(s) => {
                // The writer thread waits for a slow syslog daemon (its queue holds the
                // lines meanwhile), a second at most per line.
                let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                return Ok(s);
            }
            Err(e) => why.push(format!("{}: {e}", path.display())),
        }
    }
    Err(format!("telemetry/logging: syslog is on, but no syslog socket takes lines ({})", why.join("; ")))
}

/// Where the writer thread writes lines: stderr, or stdout once configured so.
struct Out;

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match TO_STDOUT.load(Ordering::Acquire) {
            true => io::stdout().write(buf),
            false => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match TO_STDOUT.load(Ordering::Acquire) {
            true => io::stdout().flush(),
            false => io::stderr().flush(),
        }
    }
}

/// Sluice's own line format, or the configured `telemetry/logging` one.
struct Styled {
    own: format::Format<format::Full>,
    tx: SyncSender<Msg>,
}

impl<S, N> FormatEvent<S, N> for Styled
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let style = STYLE.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(style) = style else { return self.own.format_event(ctx, writer, event) };
        let mut message = Message::default();
        event.record(&mut message);
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => Level::Error,
            tracing::Level::WARN => Level::Warning,
            tracing::Level::INFO => Level::Info,
            _ => Level::Debug,
        };
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let stamp = Stamp {
            secs: now.as_secs(),
            nanos: now.subsec_nanos(),
            pid: std::process::id(),
            id: SEQUENCE.fetch_add(1, Ordering::Relaxed) + 1,
            program: "sluice",
        };
        if style.syslog && self.tx.try_send(Msg::Syslog(style.syslog_datagram(level, &message.0, &stamp))).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        if style.stdout {
            writer.write_str(&style.line(level, &message.0, &stamp))?;
        }
        Ok(())
    }
}

/// An event's message, then its other fields as ` key=value`.
#[derive(Default)]
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

/// Whether to colour: on a terminal, unless `NO_COLOR` is set to anything non-empty.
pub(crate) fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// The writer thread: batches what is queued into one write; sends syslog datagrams
/// as they come.
fn write_lines(rx: &Receiver<Msg>, mut out: impl Write) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut lines = 0u64;
    let mut acks = Vec::new();
    let mut syslog: Option<UnixDatagram> = None;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => {
                    batch.extend_from_slice(&line);
                    lines += 1;
                }
                Msg::Syslog(datagram) => match &syslog {
                    Some(s) if s.send(&datagram).is_ok() => {}
                    _ => {
                        FAILED.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Msg::SyslogTo(socket) => syslog = socket,
                Msg::Flush(ack) => acks.push(ack),
            }
            next = if batch.len() < 64 * 1024 { rx.try_recv().ok() } else { None };
        }
        if !batch.is_empty() && out.write_all(&batch).and_then(|()| out.flush()).is_err() {
            FAILED.fetch_add(lines, Ordering::Relaxed);
        }
        batch.clear();
        lines = 0;
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// Waits (up to a second) until the lines logged so far are written.
fn flush_queue() {
    if let Some(tx) = SENDER.get() {
        let (ack, done) = mpsc::channel();
        if tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
    }
}

/// Waits (up to a second) until the lines logged so far are written, then prints what
/// was lost, if anything, best effort.
pub(crate) fn flush() {
    flush_queue();
    let (dropped, failed) = (DROPPED.load(Ordering::Relaxed), FAILED.load(Ordering::Relaxed));
    if dropped + failed > 0 {
        let _ =
            writeln!(io::stderr(), "sluice: {dropped} log line(s) dropped (queue full), {failed} lost to write errors");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that fails every write, as a closed pipe does.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_plugin_compiler_stays_quiet_unless_named() {
        let q = ",cranelift_codegen=warn,cranelift_frontend=warn,wasmtime=warn,wasmtime_internal_cranelift=warn,regalloc2=warn";
        assert_eq!(filter(None), format!("info{q}"));
        assert_eq!(filter(Some(" ")), format!("info{q}"));
        assert_eq!(filter(Some("debug")), format!("debug{q}"));
        assert_eq!(
            filter(Some("debug,wasmtime=trace")),
            "debug,wasmtime=trace,cranelift_codegen=warn,cranelift_frontend=warn,wasmtime_internal_cranelift=warn,regalloc2=warn"
        );
    }

    #[test]
    fn write_errors_are_counted_and_the_writer_goes_on() {
        let (tx, rx) = mpsc::sync_channel(4);
        let before = FAILED.load(Ordering::Relaxed);
        let writer = std::thread::spawn(move || write_lines(&rx, Closed));
        let sink = Sink { tx: tx.clone() };
        for _ in 0..3 {
            assert_eq!(sink.make_writer().write(b"line\n").unwrap(), 5);
        }
        let (ack, done) = mpsc::channel();
        tx.send(Msg::Flush(ack)).unwrap();
        done.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(FAILED.load(Ordering::Relaxed) - before >= 3);
        drop((sink, tx));
        writer.join().unwrap();
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (tx, _rx) = mpsc::sync_channel(1);
        let sink = Sink { tx };
        let before = DROPPED.load(Ordering::Relaxed);
        for _ in 0..5 {
            assert_eq!(sink.make_writer().write(b"x\n").unwrap(), 2);
        }
        assert!(DROPPED.load(Ordering::Relaxed) - before >= 4);
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }
}
