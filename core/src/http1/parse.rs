//! The response head parser: a backend's status line and header fields, read in place
//! into a [`Head`]'s field positions, with no array of parsed fields in between.
//!
//! It accepts and refuses exactly what httparse 1.10 does with its default
//! configuration (the request side still uses httparse): leading empty lines skipped;
//! `HTTP/1.0` or `HTTP/1.1`; one space, three digits, then a space and a reason or the
//! line's end; each field a token name, a colon with no whitespace before it, optional
//! spaces or tabs, a value of tabs, visible bytes, spaces and obs-text (0x80-0xFF),
//! its trailing spaces and tabs trimmed; lines ending in CRLF or a bare LF; no obs-fold
//! (a line starting with whitespace is a bad name); a reason holding obs-text reads as
//! empty. `sluice_core::http1::read_response_head` is compared with httparse on
//! generated heads in this module's tests and in the `http1_response` fuzz target.
//!
//! Why not httparse here: a backend answer's head is parsed on every call, and
//! httparse spent about 250 instructions a field (a name table lookup a byte, a
//! feature check and a vector scan per value, then our copy of its field array into
//! spans). A value is scanned here eight bytes a step (`crate::swar`).

use super::head::{Kind, Span};
use crate::swar::{below, equal};

/// Why a head was refused: httparse's errors (ours for a response head, httparse's
/// own for a request head), and `Partial` for a response head that ends before its
/// fields do (not all of it has come yet; or, where the caller had found its end, a
/// malformed head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Partial,
    Version,
    Status,
    HeaderName,
    HeaderValue,
    NewLine,
    TooManyHeaders,
    /// A bad request line (httparse, request heads only).
    Token,
}

impl From<httparse::Error> for Fault {
    fn from(e: httparse::Error) -> Fault {
        match e {
            httparse::Error::TooManyHeaders => Fault::TooManyHeaders,
            httparse::Error::Version => Fault::Version,
            httparse::Error::HeaderName => Fault::HeaderName,
            httparse::Error::HeaderValue => Fault::HeaderValue,
            httparse::Error::NewLine => Fault::NewLine,
            httparse::Error::Status => Fault::Status,
            httparse::Error::Token => Fault::Token,
        }
    }
}

impl Fault {
    /// The codec's error for it: one mapping for both parsers.
    pub(crate) fn error(self) -> super::Error {
        use super::Error;
        match self {
            Fault::Partial => Error::Malformed("incomplete response head"),
            Fault::Version => Error::UnsupportedVersion,
            Fault::Status => Error::Malformed("invalid status"),
            Fault::HeaderName => Error::Malformed("invalid header name"),
            Fault::HeaderValue => Error::Malformed("invalid header value"),
            Fault::NewLine => Error::Malformed("invalid line ending"),
            Fault::TooManyHeaders => Error::HeadTooLarge,
            Fault::Token => Error::Malformed("invalid request line"),
        }
    }
}

/// A status line as read: the version (`true`: HTTP/1.0), the three digits as a
/// number (any, 000 to 999: the caller checks the range) and the reason's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusLine {
    pub(crate) http10: bool,
    pub(crate) code: u16,
    pub(crate) reason: (u32, u32),
}

/// The bytes a header name may hold (RFC 9110 `tchar`).
static TOKEN: [bool; 256] = {
    let mut map = [false; 256];
    let mut i = 0;
    while i < 256 {
        map[i] = matches!(i as u8,
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9'
            | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~');
        i += 1;
    }
    map
};

fn is_token(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

/// Whether `b` may stand in a field value: a tab, a visible byte, a space or obs-text.
fn is_value(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Where the run of value bytes from `i` ends: at the first byte that may not stand in
/// a value (a control other than a tab, or DEL), or at the end. Eight bytes a step;
/// the lowest flag is a true one (`crate::swar`), and a tab, the one control a value
/// may hold, is stepped over.
#[inline(always)]
fn value_run_end(b: &[u8], mut i: usize) -> usize {
    loop {
        let mut rest = b.get(i..).unwrap_or_default();
        let at = loop {
            let Some((eight, tail)) = rest.split_first_chunk::<8>() else {
                break b.len() - rest.len() + rest.iter().take_while(|&&c| is_value(c)).count();
            };
            let v = u64::from_le_bytes(*eight);
            let flags = below(v, 0x20) | equal(v, 0x7f);
            if flags != 0 {
                break b.len() - rest.len() + (flags.trailing_zeros() / 8) as usize;
            }
            rest = tail;
        };
        if b.get(at) == Some(&b'\t') {
            i = at + 1;
        } else {
            return at;
        }
    }
}

/// Where the name from `i` ends: at the first byte that is not a token byte, or at
/// the end. Eight bytes a step, each looked up in the table (the step has no bounds
/// checks, and names are short: a search for the colon first cost more).
fn name_end(b: &[u8], i: usize) -> usize {
    let mut rest = b.get(i..).unwrap_or_default();
    while let Some((eight, tail)) = rest.split_first_chunk::<8>() {
        if let Some(k) = eight.iter().position(|&c| !is_token(c)) {
            return b.len() - rest.len() + k;
        }
        rest = tail;
    }
    b.len() - rest.len() + rest.iter().take_while(|&&c| is_token(c)).count()
}

/// The byte at `i`, or the head ended early.
fn at(b: &[u8], i: usize) -> Result<u8, Fault> {
    b.get(i).copied().ok_or(Fault::Partial)
}

/// Reads the response head at the start of `raw` (which may go on past it: the
/// parser stops at the empty line that ends it), pushing each field's name and value
/// position onto `spans`, at most `max_headers` of them. Returns the status line and
/// the head's length, its empty line included.
pub(crate) fn response(raw: &[u8], spans: &mut Vec<Span>, max_headers: usize) -> Result<(StatusLine, usize), Fault> {
    let mut i = 0;
    // Empty lines before the status line are skipped.
    loop {
        match at(raw, i)? {
            b'\r' if at(raw, i + 1)? == b'\n' => i += 2,
            b'\r' => return Err(Fault::NewLine),
            b'\n' => i += 1,
            _ => break,
        }
    }
    let http10 = match raw.get(i..i + 8) {
        Some(b"HTTP/1.1") => false,
        Some(b"HTTP/1.0") => true,
        Some(_) => return Err(Fault::Version),
        None => {
            // Fewer than eight bytes: a wrong one is a bad version, else it ends early.
            let rest = raw.get(i..).unwrap_or_default();
            return Err(if b"HTTP/1.".starts_with(rest) { Fault::Partial } else { Fault::Version });
        }
    };
    i += 8;
    if at(raw, i)? != b' ' {
        return Err(Fault::Version);
    }
    let mut code = 0u16;
    for k in 1..=3 {
        let d = at(raw, i + k)?;
        if !d.is_ascii_digit() {
            return Err(Fault::Status);
        }
        code = code * 10 + u16::from(d - b'0');
    }
    i += 4;
    let mut reason = (0, 0);
    match at(raw, i)? {
        b' ' => {
            let start = i + 1;
            let mut obs_text = false;
            i = start;
            let end = loop {
                match at(raw, i)? {
                    b'\r' if at(raw, i + 1)? == b'\n' => break i,
                    b'\r' => return Err(Fault::Status),
                    b'\n' => break i,
                    b'\t' | b' '..=0x7e => {}
                    0x80.. => obs_text = true,
                    _ => return Err(Fault::Status),
                }
                i += 1;
            };
            if !obs_text {
                reason = (start as u32, end as u32);
            }
            i = end + if raw.get(end) == Some(&b'\r') { 2 } else { 1 };
        }
        b'\r' if at(raw, i + 1)? == b'\n' => i += 2,
        b'\r' => return Err(Fault::Status),
        b'\n' => i += 1,
        _ => return Err(Fault::Status),
    }
    let line = StatusLine { http10, code, reason };
    // The fields, a line at a time: `rest` starts at a line, `base` is where.
    let mut base = i;
    let mut rest = raw.get(i..).unwrap_or_default();
    loop {
        let (&first, after) = rest.split_first().ok_or(Fault::Partial)?;
        if !is_token(first) {
            return match (first, after.first()) {
                (b'\r', Some(b'\n')) => Ok((line, base + 2)),
                (b'\n', _) => Ok((line, base + 1)),
                (b'\r', None) => Err(Fault::Partial),
                (b'\r', Some(_)) => Err(Fault::NewLine),
                _ => Err(Fault::HeaderName),
            };
        }
        let colon = name_end(rest, 1);
        match rest.get(colon) {
            Some(b':') => {}
            Some(_) => return Err(Fault::HeaderName),
            None => return Err(Fault::Partial),
        }
        // Usually one space: then no loop.
        let mut start = colon + 1 + usize::from(rest.get(colon + 1) == Some(&b' '));
        while let Some(b' ' | b'\t') = rest.get(start) {
            start += 1;
        }
        let end = value_run_end(rest, start);
        // The line's end: CRLF or a bare LF, nothing else.
        let next = match rest.get(end..end + 2) {
            Some([b'\r', b'\n', ..]) => end + 2,
            Some([b'\n', ..]) => end + 1,
            Some(_) => return Err(Fault::HeaderValue),
            None => match rest.get(end) {
                Some(b'\n') => end + 1,
                Some(b'\r') | None => return Err(Fault::Partial),
                Some(_) => return Err(Fault::HeaderValue),
            },
        };
        if spans.len() == max_headers {
            return Err(Fault::TooManyHeaders);
        }
        let mut kept = end;
        // A value ends at a visible byte unless it was padded (the run found by a
        // scan, not trimmed a byte at a time).
        if kept > start && matches!(rest.get(kept - 1), Some(b' ' | b'\t')) {
            kept -= 1;
            while kept > start && matches!(rest.get(kept - 1), Some(b' ' | b'\t')) {
                kept -= 1;
            }
        }
        let at = |k: usize| (base + k) as u32;
        let kind = Kind::of(rest.get(..colon).unwrap_or_default());
        spans.push(Span { name: (at(0), at(colon)), value: (at(start), at(kept)), kind });
        rest = rest.get(next..).unwrap_or_default();
        base += next;
    }
}

#[cfg(test)]
mod tests {
    use std::mem::MaybeUninit;

    use proptest::prelude::*;

    use super::{Fault, response};
    use crate::http1::head::Head;

    /// What httparse makes of `raw`: the status line's parts and the fields, or why
    /// it refused (in our terms).
    type Read = Result<(bool, u16, Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>, usize), Fault>;

    fn httparse_reads(raw: &[u8], max: usize) -> Read {
        let mut headers = vec![MaybeUninit::<httparse::Header<'_>>::uninit(); max];
        let mut resp = httparse::Response::new(&mut []);
        let len =
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, raw, &mut headers) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Err(Fault::Partial),
                Err(e) => return Err(Fault::from(e)),
            };
        let fields = resp.headers.iter().map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec())).collect();
        let reason = resp.reason.unwrap_or("").as_bytes().to_vec();
        Ok((resp.version == Some(0), resp.code.unwrap_or(0), reason, fields, len))
    }

    fn ours(raw: &[u8], max: usize) -> Read {
        let mut head = Head::default();
        let (line, len) = head.parse_response(raw, max)?;
        let fields = head.iter_raw().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
        let reason = raw.get(line.reason.0 as usize..line.reason.1 as usize).unwrap_or_default().to_vec();
        Ok((line.http10, line.code, reason, fields, len))
    }

    fn same(raw: &[u8], max: usize) {
        assert_eq!(ours(raw, max), httparse_reads(raw, max), "{:?}", String::from_utf8_lossy(raw));
    }

    #[test]
    fn reads_what_httparse_reads_on_known_heads() {
        let heads: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.0 404 Not Found\nA: b\n\n",
            b"\r\n\nHTTP/1.1 204\r\n\r\n",
            b"HTTP/1.1 200\n\n",
            b"HTTP/1.1 200 \r\n\r\n",
            b"HTTP/1.1 200 caf\xc3\xa9\r\nX: y\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX:\r\nY:  \t \r\nZ: a \t\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\tb\x80\xff c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\x7fb\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n X: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\r\n",
            b"HTTP/1.1 200 OK\r\nX-Na",
            b"HTTP/1.1 200 OK\r\nX-Name:",
            b"HTTP/1.1 200 OK\r\nX-Name: va",
            b"HTTP/1.1 200 OK\r\nX-Name: va\r",
            b"HTTP/1.1 200 OK\r\nX-Name: a long value at the end",
            b"HTTP/1.1 200 OK\r\r\n\r\n",
            b"HTTP/1.2 200 OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.",
            b"HTTP/1.1",
            b"HTTP/1.1 20",
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/1.1 200OK\r\n\r\n",
            b"HTTP/1.1 200 O\x01K\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
            b"\r\n\r\n",
            b"\rX",
            b"",
            b"HTTP/1.1 200 OK\r\nX-Long: 0123456789abcdef0123456789abcdef\t0123456789\r\n\r\n",
            // The parser stops at the empty line: what follows is not read.
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\n\n\x00\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
        ];
        for head in heads {
            for max in [0, 1, 2, 3, 100] {
                same(head, max);
            }
        }
    }

    /// Pieces heads are made of, valid and not, so that generated heads reach every
    /// branch rather than failing at their first byte.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"HTTP/1.1 ".to_vec()),
            Just(b"HTTP/1.0 ".to_vec()),
            Just(b"200 OK".to_vec()),
            Just(b"204".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"Content-Length: 5".to_vec()),
            Just(b"X-Name:".to_vec()),
            Just(b": ".to_vec()),
            Just(b" ".to_vec()),
            Just(b"\t".to_vec()),
            Just(b"value with words".to_vec()),
            prop::collection::vec(any::<u8>(), 0..12),
            prop::collection::vec(prop::sample::select(b"aZ09-_:; \t\r\n\x00\x7f\x80\xff\"(".to_vec()), 0..24),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn reads_what_httparse_reads(pieces in prop::collection::vec(piece(), 0..16), max in 0usize..6) {
            let raw: Vec<u8> = pieces.concat();
            same(&raw, max);
            // And the same head made well-formed at its start.
            let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
            head.extend_from_slice(&raw);
            head.extend_from_slice(b"\r\n\r\n");
            same(&head, max);
        }
    }

    #[test]
    fn a_head_that_ends_before_its_fields_do_is_partial() {
        assert_eq!(response(b"HTTP/1.1 200 OK\r\nX: y", &mut Vec::new(), 10), Err(Fault::Partial));
        assert_eq!(response(b"\r\n\r\n", &mut Vec::new(), 10), Err(Fault::Partial));
    }
}
