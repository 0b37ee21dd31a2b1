//! Byte searches eight bytes at a time in a `u64` ("SIMD within a register"), shared
//! by the HTTP/1.1 head search and response parser and the JSON string scan and key
//! compare; and field names lowercased and compared, any case, eight bytes a step.

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

/// `v` with each ASCII capital letter made small and every other byte as it was. Exact
/// (no borrow reaches a neighbour: each byte is looked at through its low seven bits,
/// whose sums stay below 0x100).
pub(crate) const fn lower(v: u64) -> u64 {
    let low = v & splat(0x7f);
    // The high bit of each byte: from 'A' up, and past 'Z'.
    let from_a = low + splat(0x80 - b'A');
    let past_z = low + splat(0x80 - b'Z' - 1);
    let capital = from_a & !past_z & !v & splat(0x80);
    v | (capital >> 2)
}

/// Lowercases the ASCII letters of `b` in place, eight bytes a step (a name from a
/// head: the byte loop of `make_ascii_lowercase` cost about eight instructions a byte).
pub(crate) fn make_lower(b: &mut [u8]) {
    if b.len() < 8 {
        b.make_ascii_lowercase();
        return;
    }
    let (chunks, _) = b.as_chunks_mut::<8>();
    for c in chunks {
        *c = lower(u64::from_le_bytes(*c)).to_le_bytes();
    }
    // The tail: the last eight bytes again (lowercasing twice changes nothing).
    if let Some(last) = b.last_chunk_mut::<8>() {
        *last = lower(u64::from_le_bytes(*last)).to_le_bytes();
    }
}

/// Lowercases the ASCII letters of the first `len` bytes of `b`, where `b` may go on
/// past them (a name copied with the rest of its line): a name shorter than eight is
/// done in one step when eight bytes follow from its start, the bytes past it written
/// back as they were; a longer one, or a short one with fewer than eight bytes from
/// its start, as [`make_lower`].
pub(crate) fn make_lower_prefix(b: &mut [u8], len: usize) {
    if len < 8
        && let Some(word) = b.first_chunk_mut::<8>()
    {
        let v = u64::from_le_bytes(*word);
        // The changed bits, kept in the name's bytes alone (`len` < 8: the shift fits).
        let name = !(!0u64 << (8 * len));
        *word = (v ^ ((lower(v) ^ v) & name)).to_le_bytes();
    } else if let Some(name) = b.get_mut(..len) {
        make_lower(name);
    }
}

/// Whether `name` is `known` in any case, eight bytes a step. `known` must be
/// lowercase (every caller passes a literal): a capital in it never matches.
pub(crate) fn eq_lower(name: &[u8], known: &[u8]) -> bool {
    if name.len() != known.len() {
        return false;
    }
    if name.len() < 8 {
        return name.eq_ignore_ascii_case(known);
    }
    let (a, _) = name.as_chunks::<8>();
    let (b, _) = known.as_chunks::<8>();
    let word = |c: &[u8; 8]| u64::from_le_bytes(*c);
    let tails = match (name.last_chunk::<8>(), known.last_chunk::<8>()) {
        (Some(x), Some(y)) => lower(word(x)) == word(y),
        _ => false,
    };
    tails && a.iter().zip(b).all(|(x, y)| lower(word(x)) == word(y))
}

#[cfg(test)]
mod tests {
    use super::{below, eq_lower, equal, lower, make_lower, make_lower_prefix};

    #[test]
    fn a_prefix_is_lowercased_and_the_bytes_after_it_left_as_they_were() {
        // Capitals and their neighbours on both sides of the prefix's end, every
        // prefix length up to 20, with from none to ten bytes after it.
        let text: Vec<u8> = b"@AZ[`az{Content-TYPE: X-Y\r\nAZaz\xc3\x89".to_vec();
        for len in 0..=20 {
            for after in 0..=10 {
                for shift in 0..4 {
                    let b: Vec<u8> = text.iter().cycle().skip(shift).take(len + after).copied().collect();
                    let mut expected = b.clone();
                    expected[..len].make_ascii_lowercase();
                    let mut got = b.clone();
                    make_lower_prefix(&mut got, len);
                    assert_eq!(got, expected, "len {len}, after {after}: {:?}", String::from_utf8_lossy(&b));
                }
            }
        }
    }

    #[test]
    fn lower_changes_capitals_alone_every_byte_value() {
        for b in 0..=255u8 {
            // Each position, the neighbours the byte's own extremes.
            for at in 0..8 {
                for fill in [0u8, 0x40, 0x5a, 0x5b, 0x7f, 0x80, 0xc1, 0xff] {
                    let mut word = [fill; 8];
                    word[at] = b;
                    let mut want = word;
                    want.make_ascii_lowercase();
                    assert_eq!(lower(u64::from_le_bytes(word)).to_le_bytes(), want, "{b:#x} at {at} among {fill:#x}");
                }
            }
        }
    }

    #[test]
    fn make_lower_is_make_ascii_lowercase_at_every_length() {
        let text = b"Content-Length-X-FORWARDED-FOR-@[`{Zz\xc3\x89-END";
        for n in 0..=text.len() {
            let mut ours = text[..n].to_vec();
            make_lower(&mut ours);
            let mut std = text[..n].to_vec();
            std.make_ascii_lowercase();
            assert_eq!(ours, std, "{n}");
        }
    }

    #[test]
    fn eq_lower_is_eq_ignore_ascii_case_with_a_lowercase_name() {
        let names: [&[u8]; 9] = [
            b"connection",
            b"Connection",
            b"CONNECTION",
            b"connectioN",
            b"connectiom",
            b"Content-Length",
            b"content-lengtH",
            b"content_length",
            b"keep-alive",
        ];
        for known in [&b"connection"[..], b"content-length", b"keep-alive", b"te", b"host", b"transfer-encoding"] {
            for name in names.iter().chain([&b"TE"[..], b"Host", b"hosT", b"hos", b"Transfer-Encoding"].iter()) {
                assert_eq!(eq_lower(name, known), name.eq_ignore_ascii_case(known), "{name:?} {known:?}");
            }
        }
        // Lengths of whole words (16: two) and of a word and a tail, differing in the
        // first word alone or in the tail alone.
        assert!(eq_lower(b"Proxy-Connection", b"proxy-connection"));
        assert!(!eq_lower(b"Proxy-Connectiom", b"proxy-connection"));
        assert!(!eq_lower(b"Qroxy-Connection", b"proxy-connection"));
        assert!(eq_lower(b"TRANSFER-ENCODING", b"transfer-encoding"));
        assert!(!eq_lower(b"TRANSFER-ENCODINH", b"transfer-encoding"));
        assert!(!eq_lower(b"TRANSFEQ-ENCODING", b"transfer-encoding"));
        // Bytes past ASCII are themselves alone.
        assert!(!eq_lower(b"keep-aliv\xc5", b"keep-alive"));
        // A byte that is a capital letter's neighbour (`@`, `[`) is not the letter.
        assert!(!eq_lower(b"@onnection", b"`onnection"));
        assert!(!eq_lower(b"connection[", b"connection{"));
    }

    #[test]
    fn flags_the_bytes_asked_for_lowest_first() {
        let v = u64::from_le_bytes(*b"ab\ncd\n\x1fz");
        assert_eq!(equal(v, b'\n').trailing_zeros() / 8, 2);
        assert_eq!(equal(v, b'q'), 0);
        assert_eq!(below(v, 0x20).trailing_zeros() / 8, 2);
        assert_eq!(below(u64::from_le_bytes(*b"abcdefgh"), 0x20), 0);
    }
}
