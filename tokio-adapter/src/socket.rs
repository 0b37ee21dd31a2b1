//! One socket with its read buffer, and the deadlines every read and write runs under.

use std::future::Future;
use std::time::{Duration, Instant};

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
    pub(crate) buf: Vec<u8>,
    /// How much of `buf` is consumed.
    pub(crate) pos: usize,
}

impl Io {
    pub(crate) fn new(stream: TcpStream, capacity: usize) -> Io {
        Io { stream, buf: Vec::with_capacity(capacity), pos: 0 }
    }

    /// The bytes read and not yet consumed.
    pub(crate) fn pending(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    fn make_room(&mut self) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        // Grow by doubling: small messages never need more than they had.
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(self.buf.capacity().clamp(1024, 4 * READ_CHUNK));
        }
    }

    /// Reads more bytes (appended after what is pending), until `deadline`, or until
    /// `stop` turns true.
    pub(crate) async fn read(&mut self, deadline: Option<Instant>, stop: Option<&mut watch::Receiver<bool>>) -> Read {
        self.make_room();
        let read = with_deadline(deadline, self.stream.read_buf(&mut self.buf));
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
