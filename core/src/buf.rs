//! A connection's read buffer and how it grows and shrinks, the same for every driver
//! and every socket (client or backend side).

/// Bytes read and not yet consumed. Reads append after [`ReadBuf::pending`]; the codec
/// says how many bytes it consumed.
#[derive(Debug, Default)]
pub struct ReadBuf {
    buf: Vec<u8>,
    /// How much of `buf` is consumed.
    pos: usize,
}

/// The most a buffer grows by at once to fit what is pending.
const MAX_STEP: usize = 64 * 1024;

/// The largest room a read gets when reads keep filling all they are given (a body
/// streaming through): one read and one write per 256 KiB, not per KiB.
pub const MAX_READ: usize = 256 * 1024;

impl ReadBuf {
    pub fn with_capacity(capacity: usize) -> ReadBuf {
        ReadBuf { buf: Vec::with_capacity(capacity), pos: 0 }
    }

    /// The bytes read and not yet consumed.
    pub fn pending(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// `n` pending bytes were used.
    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }

    /// Makes room for a read and hands out the vector to append to (after its length,
    /// up to its capacity). Consumed bytes are dropped; the buffer grows by doubling
    /// (1 KiB to 64 KiB at a time), so small messages never need more than they had.
    /// When the last read filled all the room it had (the socket held more), the room
    /// doubles, up to [`MAX_READ`]: a large body moves in large reads.
    pub fn prepare(&mut self) -> &mut Vec<u8> {
        let capacity = self.buf.capacity();
        let filled = capacity > 0 && self.buf.len() == capacity;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(self.buf.capacity().clamp(1024, MAX_STEP));
        }
        let room = (capacity * 2).min(MAX_READ);
        if filled && self.buf.capacity() - self.buf.len() < room {
            self.buf.reserve(room);
        }
        &mut self.buf
    }

    /// [`ReadBuf::prepare`] for runtimes whose reads own the buffer while pending
    /// (io_uring): hand the vector out, then [`ReadBuf::restore`] it with the bytes
    /// read appended. Until then nothing is pending.
    pub fn take_for_read(&mut self) -> Vec<u8> {
        self.prepare();
        std::mem::take(&mut self.buf)
    }

    pub fn restore(&mut self, buf: Vec<u8>) {
        self.buf = buf;
    }

    /// Between requests: with nothing pending, a buffer grown past `max` is replaced by
    /// one of `keep` bytes (memory per idle connection stays small).
    pub fn shrink_idle(&mut self, keep: usize, max: usize) {
        if self.pos == self.buf.len() && self.buf.capacity() > max {
            self.buf = Vec::with_capacity(keep);
            self.pos = 0;
        }
    }

    /// Drops everything pending (a pooled connection starts clean).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::ReadBuf;

    #[test]
    fn grows_by_doubling_compacts_and_shrinks() {
        let mut b = ReadBuf::with_capacity(16);
        // Under 512 bytes of room: at least 1 KiB more.
        assert!(b.prepare().capacity() >= 1024);
        b.prepare().extend_from_slice(b"hello world");
        b.consume(6);
        assert_eq!(b.pending(), b"world");
        b.consume(100);
        assert_eq!(b.pending(), b"");
        // Fully consumed: the next read starts at the front.
        assert_eq!(b.prepare().len(), 0);
        // Full: it doubles.
        let v = b.prepare();
        let full = v.capacity();
        v.resize(full, b'x');
        assert!(b.prepare().capacity() >= 2 * full);
        assert_eq!(b.pending().len(), full);
        b.consume(usize::MAX);
        b.shrink_idle(1024, 1500);
        assert_eq!(b.prepare().capacity(), 1024);
    }

    /// A stream whose reads fill all the room they get: read once, consumed whole,
    /// read again. The room doubles each time up to MAX_READ; reads that leave room
    /// change nothing.
    #[test]
    fn reads_that_fill_the_buffer_make_it_grow() {
        let mut b = ReadBuf::default();
        let mut rooms = Vec::new();
        for _ in 0..12 {
            let v = b.prepare();
            let room = v.capacity() - v.len();
            rooms.push(room);
            v.resize(v.capacity(), 7);
            b.consume(usize::MAX);
        }
        assert_eq!(rooms[0], 1024);
        assert!(rooms.windows(2).all(|w| w[1] >= w[0]), "{rooms:?}");
        assert_eq!(*rooms.last().unwrap(), super::MAX_READ);
        assert!(rooms[8] >= super::MAX_READ, "{rooms:?}");
        // A short read: no growth.
        let mut b = ReadBuf::default();
        let v = b.prepare();
        v.extend_from_slice(b"abc");
        b.consume(3);
        assert_eq!(b.prepare().capacity(), 1024);
    }
}
