//! One socket with its read buffer, and the deadlines every read and write runs under.

use std::future::Future;
use std::time::{Duration, Instant};

use sluice_core::buf::ReadBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Runs `fut` until `deadline` (`None`: no limit). `None` when time ran out.
pub(crate) async fn with_deadline<F: Future>(deadline: Option<Instant>, fut: F) -> Option<F::Output> {
    match deadline {
        None => Some(fut.await),
        Some(d) => tokio::time::timeout_at(d.into(), fut).await.ok(),
    }
}

/// `limit` from now (zero: no limit).
pub(crate) fn from_now(limit: Duration) -> Option<Instant> {
    (!limit.is_zero()).then(|| Instant::now() + limit)
}

pub(crate) enum Read {
    Data,
    Eof,
    TimedOut,
    Stopped,
    Failed(std::io::Error),
}

/// Bytes in and out of one socket.
#[derive(Debug)]
pub(crate) struct Io {
    pub(crate) stream: TcpStream,
    pub(crate) buf: ReadBuf,
}

impl Io {
    pub(crate) fn new(stream: TcpStream, capacity: usize) -> Io {
        Io { stream, buf: ReadBuf::with_capacity(capacity) }
    }

    /// The bytes read and not yet consumed.
    pub(crate) fn pending(&self) -> &[u8] {
        self.buf.pending()
    }

    /// Reads more bytes (appended after what is pending), until `deadline`, or until
    /// `stop` turns true.
    pub(crate) async fn read(&mut self, deadline: Option<Instant>, stop: Option<&mut watch::Receiver<bool>>) -> Read {
        let read = with_deadline(deadline, self.stream.read_buf(self.buf.prepare()));
        let result = match stop {
            Some(stop) => tokio::select! {
                r = read => r,
                _ = stop.wait_for(|stopped| *stopped) => return Read::Stopped,
            },
            None => read.await,
        };
        match result {
            None => Read::TimedOut,
            Some(Ok(0)) => Read::Eof,
            Some(Ok(_)) => Read::Data,
            Some(Err(e)) => Read::Failed(e),
        }
    }

    /// Writes all of `out` and clears it.
    pub(crate) async fn write(&mut self, out: &mut Vec<u8>, limit: Duration) -> bool {
        if out.is_empty() {
            return true;
        }
        let written = with_deadline(from_now(limit), self.stream.write_all(out)).await;
        out.clear();
        matches!(written, Some(Ok(())))
    }
}
