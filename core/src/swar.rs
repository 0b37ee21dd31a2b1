//! Byte searches eight bytes at a time in a `u64` ("SIMD within a register"), shared
//! by the HTTP/1.1 head search and response parser and the JSON string scan and key
//! compare.

/// `b` in each of the eight bytes.
pub(crate) const fn splat(b: u8) -> u64 {
    0x0101_0101_0101_0101 * b as u64
}

/// Flags (sets the high bit of) each byte of `v` below `n` (`n` at most 0x80), the
/// classic has-zero-byte test when `n` is 1. Never misses one; a byte just above a
/// flagged one may be flagged too (a borrow), so the lowest flag is always a true one
/// and "any flag" can be a false alarm, never a false "none".
pub(crate) const fn below(v: u64, n: u8) -> u64 {
    v.wrapping_sub(splat(n)) & !v & splat(0x80)
}

/// Flags each byte of `v` equal to `b` (as [`below`]: the lowest flag is a true one).
pub(crate) const fn equal(v: u64, b: u8) -> u64 {
    below(v ^ splat(b), 1)
}

#[cfg(test)]
mod tests {
    use super::{below, equal};

    #[test]
    fn flags_the_bytes_asked_for_lowest_first() {
        let v = u64::from_le_bytes(*b"ab\ncd\n\x1fz");
        assert_eq!(equal(v, b'\n').trailing_zeros() / 8, 2);
        assert_eq!(equal(v, b'q'), 0);
        assert_eq!(below(v, 0x20).trailing_zeros() / 8, 2);
        assert_eq!(below(u64::from_le_bytes(*b"abcdefgh"), 0x20), 0);
    }
}
