//! One socket with the buffer monoio reads into (io_uring reads need an owned buffer),
//! and the timing helpers every read and write goes through.

use std::future::Future;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::signal::{LocalStop, Slot};

pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// Runs `fut` for at most `limit` (zero: no limit). `None` when time ran out.
pub(crate) async fn with_limit<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    if limit.is_zero() { Some(fut.await) } else { monoio::time::timeout(limit, fut).await.ok() }
}

/// The time left until `deadline`, as `with_limit` takes it (`None`: no limit).
pub(crate) fn until(deadline: Option<Instant>) -> Duration {
    deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)))
}

pub(crate) enum Read {
    Data,
    Eof,
    TimedOut,
    Stopped,
    Failed(std::io::Error),
}

/// Bytes in and out of one socket, with the buffer monoio reads into.
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

    /// Reads more bytes (appended after what is pending). A timeout or stop loses the
    /// buffer: the caller closes the connection then.
    pub(crate) async fn read(&mut self, limit: Duration, stop: Option<(&LocalStop, &Slot)>) -> Read {
        self.make_room();
        let (len, cap) = (self.buf.len(), self.buf.capacity());
        let buf = std::mem::take(&mut self.buf);
        let read = with_limit(limit, self.stream.read(buf.slice_mut(len..cap)));
        let result = match stop {
            Some((stop, slot)) => {
                monoio::select! {
                    r = read => r,
                    _ = stop.wait(slot) => return Read::Stopped,
                }
            }
            None => read.await,
        };
        let Some((res, slice)) = result else { return Read::TimedOut };
        self.buf = slice.into_inner();
        match res {
            Ok(0) => Read::Eof,
            Ok(_) => Read::Data,
            Err(e) => Read::Failed(e),
        }
    }

    /// Writes all of `out` and clears it.
    pub(crate) async fn write(&mut self, out: &mut Vec<u8>, limit: Duration) -> bool {
        if out.is_empty() {
            return true;
        }
        let data = std::mem::take(out);
        match with_limit(limit, self.stream.write_all(data)).await {
            Some((Ok(_), mut data)) => {
                data.clear();
                *out = data;
                true
            }
            _ => false,
        }
    }
}
