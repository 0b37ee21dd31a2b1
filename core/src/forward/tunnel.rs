//! A CONNECT tunnel's two byte streams, Sans-IO: what to read, write and shut next on
//! each side, with the half-close carried through. Nothing in the bytes is looked at.
//!
//! Each direction ([`Pipe`]) reads its source into one buffer while the buffer read
//! before is written to its sink, so a slow side slows its direction only, and at
//! most two buffers are in use per direction. Reads start at [`PIPE_MIN`] and grow
//! (x4 per read that filled its buffer) to [`PIPE_MAX`] while bytes stream, and shrink
//! back when they trickle: an idle tunnel holds two small buffers, a bulk one reads
//! 256 KiB at a time (load harness `--forward`, one shard: fixed 64 KiB reads moved
//! 13 Gbit/s at 0.52 CPU s per GiB, 256 KiB 20 Gbit/s at 0.31; separate runs). When a source closes
//! its side (a read of 0), what was read is written and then the sink's write side is
//! shut: the other direction goes on until its source closes too.
//!
//! Where the driver can, a direction splices instead ([`PipeOp::Splice`]): the driver
//! moves what the source has through a kernel pipe into the sink (`splice(2)`), and the
//! bytes never enter the gateway; the direction is told how many moved. On the 16-core
//! device (load harness `--forward`, 1 GiB through one tunnel) copying moved 0.73x of a
//! direct loopback copy and a blocking splice through a 256 KiB pipe 1.31x. Bytes read
//! before the tunnel opened go out first as a write; a driver that cannot splice these
//! sockets says so before moving anything, and the direction copies from then on.

use std::io;
use std::mem;

/// The smallest and the largest read.
pub(crate) const PIPE_MIN: usize = 16 * 1024;
pub(crate) const PIPE_MAX: usize = 256 * 1024;

/// One direction of a tunnel.
#[derive(Debug, Default)]
pub(crate) struct Pipe {
    reading: bool,
    writing: bool,
    /// Read, not yet handed to a write.
    ready: Option<Vec<u8>>,
    /// A buffer for the next read.
    spare: Vec<u8>,
    /// The source closed its side.
    eof: bool,
    /// The sink's write side: shutdown asked, and done.
    shutting: bool,
    shut: bool,
    /// Bytes carried, and of those the bytes spliced.
    pub(crate) bytes: u64,
    pub(crate) spliced: u64,
    /// The next read's size (0: [`PIPE_MIN`]).
    size: usize,
    /// Splice rather than read and write (the driver can).
    splice: bool,
    /// A splice is out.
    splicing: bool,
}

/// What a direction asks for next.
#[derive(Debug)]
pub(crate) enum PipeOp {
    /// Read from the source into this buffer (appending after its length).
    Read(Vec<u8>),
    /// Write all of these to the sink.
    Write(Vec<u8>),
    /// Shut the sink's write side.
    Shutdown,
    /// Move what the source has (once it has some) into the sink, through the kernel.
    Splice,
}

/// The kernel pipe a driver asks for per spliced direction: 256 KiB moved as much as
/// 1 MiB on the 16-core device (blocking splice, load harness pushes) and counts 64
/// pages against the user's pipe quota (`/proc/sys/fs/pipe-user-pages-soft`).
pub const SPLICE_PIPE: usize = 256 * 1024;

/// Whether a pipe that holds `size` bytes is worth splicing through: below 64 KiB (a
/// user past the quota gets 2-page pipes) copying moves more per call, and the tunnel
/// should copy ([`Spliced::Unsupported`]).
pub fn splice_pipe_fits(size: usize) -> std::io::Result<()> {
    match size >= 64 * 1024 {
        true => Ok(()),
        false => Err(std::io::Error::other(format!("a pipe holds {size} bytes only (the user's pipe quota is spent)"))),
    }
}

/// How a splice (`Output::Splice`) ended, as the driver tells it.
#[derive(Debug)]
pub enum Spliced {
    /// This many bytes went from the source into the sink (more than 0).
    Moved(usize),
    /// The source closed its side: nothing was left to move.
    Closed,
    /// Reading the source failed.
    ReadFailed(io::Error),
    /// Writing the sink failed (what was taken from the source is lost with it).
    WriteFailed(io::Error),
    /// The driver cannot splice this tunnel (no pipe, or one too small to be worth
    /// it): nothing moved and nothing changed on its sockets; it answers every splice
    /// of the tunnel so, and both directions read and write from now on.
    Unsupported,
}

/// A direction broke: a read or write failed.
#[derive(Debug)]
pub(crate) struct Broken(pub(crate) io::Error);

impl Pipe {
    /// A direction starting with bytes already read (what a client sent right after
    /// its CONNECT head).
    pub(crate) fn with(first: Vec<u8>) -> Pipe {
        let bytes = first.len() as u64;
        Pipe { ready: (!first.is_empty()).then_some(first), bytes, ..Pipe::default() }
    }

    /// Splices from now on (after what was read before).
    pub(crate) fn splicing(mut self, on: bool) -> Pipe {
        self.splice = on;
        self
    }

    /// The next operation, if any: a write of what was read first, then the shutdown
    /// once the source closed and all is written, and a read while nothing waits.
    #[cfg(test)]
    pub(crate) fn next(&mut self) -> Option<PipeOp> {
        self.next_with(true)
    }

    /// [`Pipe::next`]; `quiet`: no read or write is out on either socket of the tunnel,
    /// which a splice waits for (a driver may change how its sockets block for it).
    pub(crate) fn next_with(&mut self, quiet: bool) -> Option<PipeOp> {
        if self.splicing {
            return None;
        }
        if !self.writing {
            if let Some(bytes) = self.ready.take() {
                self.writing = true;
                return Some(PipeOp::Write(bytes));
            }
            if self.eof && !self.shutting {
                self.shutting = true;
                return Some(PipeOp::Shutdown);
            }
        }
        if self.splice {
            // After the write of what was read before: the sink takes bytes in order.
            if quiet && !self.writing && self.ready.is_none() && !self.eof {
                self.splicing = true;
                return Some(PipeOp::Splice);
            }
            return None;
        }
        if !self.reading && self.ready.is_none() && !self.eof {
            self.reading = true;
            let size = self.size.max(PIPE_MIN);
            let mut buf = mem::take(&mut self.spare);
            if buf.capacity() > size * 2 {
                // Grown for a burst that is over.
                buf = Vec::new();
            }
            buf.clear();
            buf.reserve_exact(size);
            return Some(PipeOp::Read(buf));
        }
        None
    }

    /// A read finished: `Ok(true)` when bytes came.
    pub(crate) fn read_done(&mut self, buf: Vec<u8>, result: io::Result<usize>) -> Result<bool, Broken> {
        self.reading = false;
        match result {
            Ok(0) => {
                self.eof = true;
                self.spare = buf;
                Ok(false)
            }
            Ok(n) => {
                self.bytes += n as u64;
                let size = self.size.max(PIPE_MIN);
                if n >= buf.capacity() {
                    self.size = (size * 4).min(PIPE_MAX);
                } else if n < size / 8 {
                    self.size = (size / 4).max(PIPE_MIN);
                }
                self.ready = Some(buf);
                Ok(true)
            }
            Err(e) => Err(Broken(e)),
        }
    }

    /// A splice finished: `Ok(true)` when bytes moved.
    pub(crate) fn spliced(&mut self, result: Spliced) -> Result<bool, Broken> {
        self.splicing = false;
        match result {
            Spliced::Moved(n) => {
                self.bytes += n as u64;
                self.spliced += n as u64;
                Ok(true)
            }
            Spliced::Closed => {
                self.eof = true;
                Ok(false)
            }
            Spliced::Unsupported => {
                self.splice = false;
                Ok(false)
            }
            Spliced::ReadFailed(e) | Spliced::WriteFailed(e) => Err(Broken(e)),
        }
    }

    /// A write finished; its buffer is kept for a later read.
    pub(crate) fn written(&mut self, mut buf: Vec<u8>, result: io::Result<()>) -> Result<(), Broken> {
        self.writing = false;
        result.map_err(Broken)?;
        buf.clear();
        if buf.capacity() > self.spare.capacity() {
            self.spare = buf;
        }
        Ok(())
    }

    /// The sink's write side is shut.
    pub(crate) fn shut_done(&mut self, result: io::Result<()>) -> Result<(), Broken> {
        self.shut = true;
        result.map_err(Broken)
    }

    /// Reads and writes from now on (the driver cannot splice this tunnel).
    pub(crate) fn copy(&mut self) {
        self.splice = false;
    }

    /// A read or a write is out (not a splice, not a shutdown).
    pub(crate) fn has_io(&self) -> bool {
        self.reading || self.writing
    }

    pub(crate) fn is_writing(&self) -> bool {
        self.writing || self.shutting && !self.shut
    }

    /// Both ends of this direction are closed.
    pub(crate) fn is_done(&self) -> bool {
        self.shut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_while_writing_then_shuts_after_the_last_write() {
        let mut p = Pipe::with(b"early".to_vec());
        let Some(PipeOp::Write(first)) = p.next() else { panic!() };
        assert_eq!(first, b"early");
        // A read goes out while the write is under way.
        let Some(PipeOp::Read(mut buf)) = p.next() else { panic!() };
        assert!(buf.capacity() >= PIPE_MIN && buf.capacity() < PIPE_MAX);
        assert!(p.next().is_none());
        buf.extend_from_slice(b"more");
        assert!(p.read_done(buf, Ok(4)).unwrap());
        // The second read waits for the first write: no third buffer.
        assert!(p.next().is_none());
        p.written(first, Ok(())).unwrap();
        let Some(PipeOp::Write(second)) = p.next() else { panic!() };
        assert_eq!(second, b"more");
        let Some(PipeOp::Read(buf)) = p.next() else { panic!() };
        assert!(!p.read_done(buf, Ok(0)).unwrap());
        // The source closed: the shutdown waits for the write in flight.
        assert!(p.next().is_none());
        assert!(p.is_writing());
        p.written(second, Ok(())).unwrap();
        assert!(matches!(p.next(), Some(PipeOp::Shutdown)));
        assert!(p.next().is_none());
        assert!(!p.is_done());
        p.shut_done(Ok(())).unwrap();
        assert!(p.is_done());
        assert_eq!(p.bytes, 9);
    }

    #[test]
    fn reads_grow_while_they_fill_and_shrink_when_bytes_trickle() {
        let mut p = Pipe::default();
        let mut sizes = Vec::new();
        for fill in [true, true, true, true, false, false, false] {
            let Some(PipeOp::Read(mut buf)) = p.next() else { panic!() };
            sizes.push(buf.capacity() / 1024);
            let n = if fill { buf.capacity() } else { 10 };
            buf.resize(n, 0);
            p.read_done(buf, Ok(n)).unwrap();
            let Some(PipeOp::Write(b)) = p.next() else { panic!() };
            p.written(b, Ok(())).unwrap();
        }
        assert_eq!(sizes, [16, 64, 256, 256, 256, 64, 16]);
    }

    #[test]
    fn splices_after_the_early_bytes_then_shuts() {
        let mut p = Pipe::with(b"early".to_vec()).splicing(true);
        let Some(PipeOp::Write(first)) = p.next() else { panic!() };
        // Nothing is spliced into the sink before the early bytes are in it.
        assert!(p.next().is_none());
        p.written(first, Ok(())).unwrap();
        // Nor while the other direction has a read or write out.
        assert!(p.next_with(false).is_none());
        assert!(matches!(p.next(), Some(PipeOp::Splice)));
        assert!(p.next().is_none());
        assert!(p.spliced(Spliced::Moved(1000)).unwrap());
        assert!(matches!(p.next(), Some(PipeOp::Splice)));
        assert!(!p.spliced(Spliced::Closed).unwrap());
        assert!(matches!(p.next(), Some(PipeOp::Shutdown)));
        assert!(p.next().is_none());
        p.shut_done(Ok(())).unwrap();
        assert!(p.is_done());
        assert_eq!(p.bytes, 1005);
    }

    #[test]
    fn a_driver_that_cannot_splice_gets_reads_and_writes() {
        let mut p = Pipe::default().splicing(true);
        assert!(matches!(p.next(), Some(PipeOp::Splice)));
        assert!(!p.spliced(Spliced::Unsupported).unwrap());
        let Some(PipeOp::Read(buf)) = p.next() else { panic!() };
        assert!(p.read_done(buf, Ok(0)).is_ok());
        assert!(matches!(p.next(), Some(PipeOp::Shutdown)));
        assert_eq!(p.bytes, 0);
        let mut p = Pipe::default().splicing(true);
        p.next();
        assert!(p.spliced(Spliced::WriteFailed(io::ErrorKind::BrokenPipe.into())).is_err());
        let mut p = Pipe::default().splicing(true);
        p.next();
        assert!(p.spliced(Spliced::ReadFailed(io::ErrorKind::ConnectionReset.into())).is_err());
    }

    #[test]
    fn errors_break_the_direction() {
        let mut p = Pipe::default();
        let Some(PipeOp::Read(buf)) = p.next() else { panic!() };
        assert!(p.read_done(buf, Err(io::ErrorKind::ConnectionReset.into())).is_err());
        let mut p = Pipe::with(b"x".to_vec());
        let Some(PipeOp::Write(b)) = p.next() else { panic!() };
        assert!(p.written(b, Err(io::ErrorKind::BrokenPipe.into())).is_err());
    }
}
