//! One socket with the buffer monoio reads into (io_uring reads need an owned buffer),
//! and the timing helpers every read and write goes through.

use std::future::Future;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use sluice_core::buf::ReadBuf;

use crate::signal::{LocalStop, Slot};

pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// Runs `fut` until `deadline` (`None`: no limit). `None` when time ran out.
pub(crate) async fn with_deadline<F: Future>(deadline: Option<Instant>, fut: F) -> Option<F::Output> {
    match deadline {
        None => Some(fut.await),
        Some(d) => monoio::time::timeout_at(monoio::time::Instant::from_std(d), fut).await.ok(),
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

/// Bytes in and out of one socket, with the buffer monoio reads into.
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

    /// Reads more bytes (appended after what is pending), until `deadline`, or until the
    /// shard stops. A timeout or stop loses the buffer: the caller closes the connection
    /// then.
    pub(crate) async fn read(&mut self, deadline: Option<Instant>, stop: Option<(&LocalStop, &Slot)>) -> Read {
        let buf = self.buf.take_for_read();
        let (len, cap) = (buf.len(), buf.capacity());
        let read = with_deadline(deadline, self.stream.read(buf.slice_mut(len..cap)));
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
        self.buf.restore(slice.into_inner());
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
        match with_deadline(from_now(limit), self.stream.write_all(data)).await {
            Some((Ok(_), mut data)) => {
                data.clear();
                *out = data;
                true
            }
            _ => false,
        }
    }
}
