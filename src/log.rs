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

use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

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

/// Starts the writer thread and installs the global subscriber (`RUST_LOG`, default
/// `info`).
pub(crate) fn init() {
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let started = std::thread::Builder::new().name("sluice-log".into()).spawn(move || write_lines(&rx, io::stderr()));
    if started.is_err() {
        // No thread: lines are counted as dropped, the gateway serves on.
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
    let _ = SENDER.set(tx.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter(std::env::var("RUST_LOG").ok().as_deref())))
        .with_target(false)
        .with_ansi(colour(io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref()))
        .with_writer(Sink { tx })
        .init();
}

/// Whether to colour: on a terminal, unless `NO_COLOR` is set to anything non-empty.
pub(crate) fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// The writer thread: batches what is queued into one write.
fn write_lines(rx: &Receiver<Msg>, mut out: impl Write) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut lines = 0u64;
    let mut acks = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => {
                    batch.extend_from_slice(&line);
                    lines += 1;
                }
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

/// Waits (up to a second) until the lines logged so far are written, then prints what
/// was lost, if anything, best effort.
pub(crate) fn flush() {
    if let Some(tx) = SENDER.get() {
        let (ack, done) = mpsc::channel();
        if tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
    }
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
