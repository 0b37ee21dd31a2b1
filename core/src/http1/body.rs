//! Body decoding for both roles: Content-Length, chunked (extensions, trailers), or
//! until close.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::framing::{Framing, trim};
use super::{Error, Limits, MAX_HEADERS};

/// Longest chunk-size line (size plus extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// What the decoder found.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyEvent<'b> {
    /// Body bytes (chunk framing removed), borrowed from the input.
    Data(&'b [u8]),
    /// The body is complete; trailers when a chunked body had any.
    End(Option<Box<HeaderMap>>),
    /// Nothing more can be decoded from this input: feed more bytes.
    NeedMore,
}

/// Decodes one message body.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
    limit: u64,
    received: u64,
    max_trailer_bytes: usize,
    max_headers: usize,
    scanned: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length { remaining: u64 },
    ChunkSize,
    ChunkData { remaining: u64 },
    ChunkDataEnd,
    Trailers,
    UntilClose,
    Done,
}

impl BodyDecoder {
    /// A decoder for a body with this framing. A known length over the limit is refused
    /// at the first [`BodyDecoder::decode`], before a byte of it is read (and never,
    /// once [`BodyDecoder::unlimited`] lifted the limit); [`BodyDecoder::fits`] says so
    /// before that.
    pub fn new(framing: Framing, limits: &Limits) -> Result<BodyDecoder, Error> {
        let state = match framing {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length { remaining: n },
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        Ok(BodyDecoder {
            state,
            limit: limits.max_body_bytes,
            received: 0,
            max_trailer_bytes: limits.max_head_bytes,
            max_headers: limits.max_headers.min(MAX_HEADERS),
            scanned: 0,
        })
    }

    /// Lifts the size limit: for a body passed on as it comes and never held.
    pub fn unlimited(&mut self) {
        self.limit = u64::MAX;
    }

    /// `Err(BodyTooLarge)` when the body says its length and that is over the limit.
    pub fn fits(&self) -> Result<(), Error> {
        match self.state {
            State::Length { remaining } if remaining > self.limit => Err(Error::BodyTooLarge),
            _ => Ok(()),
        }
    }

    /// Whether the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`; returns the bytes consumed and what was found. Call again
    /// with the unconsumed rest until it says [`BodyEvent::NeedMore`] or `End`.
    pub fn decode<'b>(&mut self, input: &'b [u8]) -> Result<(usize, BodyEvent<'b>), Error> {
        match self.state {
            State::Done => Ok((0, BodyEvent::End(None))),
            State::Length { remaining } => {
                self.fits()?;
                if input.is_empty() {
                    return Ok((0, BodyEvent::NeedMore));
                }
                let n = clamp(remaining, input.len());
                self.state =
                    if remaining == n as u64 { State::Done } else { State::Length { remaining: remaining - n as u64 } };
                Ok((n, BodyEvent::Data(&input[..n])))
            }
            State::UntilClose => {
                if input.is_empty() {
                    return Ok((0, BodyEvent::NeedMore));
                }
                self.count(input.len() as u64)?;
                Ok((input.len(), BodyEvent::Data(input)))
            }
            State::ChunkSize => {
                let Some((line_len, size)) = chunk_size_line(input)? else {
                    return Ok((0, BodyEvent::NeedMore));
                };
                self.state = if size == 0 {
                    self.scanned = 0;
                    State::Trailers
                } else {
                    self.count(size)?;
                    State::ChunkData { remaining: size }
                };
                // Consume the line and go on to what follows it.
                self.after(line_len, input)
            }
            State::ChunkData { remaining } => {
                if input.is_empty() {
                    return Ok((0, BodyEvent::NeedMore));
                }
                let n = clamp(remaining, input.len());
                self.state = if remaining == n as u64 {
                    State::ChunkDataEnd
                } else {
                    State::ChunkData { remaining: remaining - n as u64 }
                };
                Ok((n, BodyEvent::Data(&input[..n])))
            }
            State::ChunkDataEnd => match input {
                [b'\r', b'\n', ..] => {
                    self.state = State::ChunkSize;
                    self.after(2, input)
                }
                [] | [b'\r'] => Ok((0, BodyEvent::NeedMore)),
                _ => Err(Error::Malformed("chunk data must end with CRLF")),
            },
            State::Trailers => self.trailers(input),
        }
    }

    /// Consumes `n` bytes of framing, then goes on decoding what follows so that one call
    /// always makes progress to an event.
    fn after<'b>(&mut self, n: usize, input: &'b [u8]) -> Result<(usize, BodyEvent<'b>), Error> {
        let rest = input.get(n..).unwrap_or_default();
        let (m, event) = self.decode(rest)?;
        Ok((n + m, event))
    }

    /// The connection closed: the end of an until-close body, an error for any other.
    pub fn finish_eof(&mut self) -> Result<BodyEvent<'static>, Error> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(BodyEvent::End(None))
            }
            _ => Err(Error::Malformed("connection closed before the body ended")),
        }
    }

    fn count(&mut self, n: u64) -> Result<(), Error> {
        self.received = self.received.saturating_add(n);
        if self.received > self.limit { Err(Error::BodyTooLarge) } else { Ok(()) }
    }

    fn trailers<'b>(&mut self, input: &'b [u8]) -> Result<(usize, BodyEvent<'b>), Error> {
        match input {
            [b'\r', b'\n', ..] => {
                self.state = State::Done;
                return Ok((2, BodyEvent::End(None)));
            }
            [] | [b'\r'] => return Ok((0, BodyEvent::NeedMore)),
            [b'\n', ..] => return Err(Error::Malformed("bare LF in chunked framing")),
            _ => {}
        }
        let Some(end) = find_crlf_crlf(input, &mut self.scanned) else {
            if input.len() > self.max_trailer_bytes {
                return Err(Error::HeadTooLarge);
            }
            return Ok((0, BodyEvent::NeedMore));
        };
        if end > self.max_trailer_bytes {
            return Err(Error::HeadTooLarge);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let headers = headers.get_mut(..self.max_headers).unwrap_or_default();
        let parsed = match httparse::parse_headers(&input[..end], headers) {
            Ok(httparse::Status::Complete((_, parsed))) => parsed,
            Ok(httparse::Status::Partial) => return Err(Error::Malformed("invalid trailer section")),
            Err(httparse::Error::TooManyHeaders) => return Err(Error::HeadTooLarge),
            Err(_) => return Err(Error::Malformed("invalid trailer section")),
        };
        let mut map = HeaderMap::with_capacity(parsed.len());
        for h in parsed.iter() {
            let name =
                HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Error::Malformed("invalid trailer name"))?;
            let value = HeaderValue::from_bytes(h.value).map_err(|_| Error::Malformed("invalid trailer value"))?;
            map.append(name, value);
        }
        self.state = State::Done;
        Ok((end, BodyEvent::End(Some(Box::new(map)))))
    }
}

fn clamp(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

/// Parses `1a;ext=v\r\n`. `Ok(None)`: the line is not complete yet.
fn chunk_size_line(input: &[u8]) -> Result<Option<(usize, u64)>, Error> {
    let window = input.get(..MAX_CHUNK_LINE).unwrap_or(input);
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if input.len() >= MAX_CHUNK_LINE {
            return Err(Error::Malformed("chunk size line too long"));
        }
        return Ok(None);
    };
    let line = match window.get(..lf).and_then(|l| l.strip_suffix(b"\r")) {
        Some(line) => line,
        None => return Err(Error::Malformed("bare LF in chunked framing")),
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Error::Malformed("invalid chunk size"));
    }
    if digits > 16 {
        return Err(Error::Malformed("chunk size overflows"));
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16).unwrap_or(0);
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or(Error::Malformed("chunk size overflows"))?;
    }
    let ext = &line[digits..];
    if ext.iter().any(|&b| b == b'\r' || (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(Error::Malformed("invalid character in chunk extension"));
    }
    let after_ws = trim(ext);
    if !after_ws.is_empty() && after_ws.first() != Some(&b';') {
        return Err(Error::Malformed("invalid chunk size"));
    }
    Ok(Some((lf + 1, size)))
}

/// Finds `\r\n\r\n` (strict: trailers get no bare-LF leniency), resuming at `*scanned`.
fn find_crlf_crlf(buf: &[u8], scanned: &mut usize) -> Option<usize> {
    let start = scanned.saturating_sub(3);
    let found = buf.get(start..)?.windows(4).position(|w| w == b"\r\n\r\n").map(|i| start + i + 4);
    if found.is_none() {
        *scanned = buf.len();
    }
    found
}

#[cfg(test)]
mod tests {
    use super::{BodyDecoder, BodyEvent, Error, Framing, Limits};

    const TEN: Limits = Limits { max_head_bytes: 1024, max_uri_bytes: 64, max_headers: 4, max_body_bytes: 10 };

    #[test]
    fn a_length_over_the_limit_is_refused_before_a_byte_unless_the_limit_is_lifted() {
        let mut d = BodyDecoder::new(Framing::Length(11), &TEN).unwrap();
        assert_eq!(d.fits(), Err(Error::BodyTooLarge));
        assert_eq!(d.decode(b"hello"), Err(Error::BodyTooLarge));
        let mut d = BodyDecoder::new(Framing::Length(11), &TEN).unwrap();
        d.unlimited();
        assert_eq!(d.fits(), Ok(()));
        assert_eq!(d.decode(b"hello world!"), Ok((11, BodyEvent::Data(b"hello world"))));
        assert!(d.is_done());
        // At the limit: fits.
        assert_eq!(BodyDecoder::new(Framing::Length(10), &TEN).unwrap().fits(), Ok(()));
    }

    /// Decodes all of `input`: the data, or the error.
    fn decode_all(d: &mut BodyDecoder, mut input: &[u8]) -> Result<Vec<u8>, Error> {
        let mut data = Vec::new();
        loop {
            match d.decode(input)? {
                (n, BodyEvent::Data(bytes)) => {
                    data.extend_from_slice(bytes);
                    input = &input[n..];
                }
                (_, BodyEvent::End(_)) => return Ok(data),
                (_, BodyEvent::NeedMore) => panic!("the body is whole"),
            }
        }
    }

    #[test]
    fn a_chunked_body_is_refused_as_it_crosses_the_limit_unless_it_is_lifted() {
        let body: &[u8] = b"6\r\n123456\r\n6\r\n123456\r\n0\r\n\r\n";
        let mut d = BodyDecoder::new(Framing::Chunked, &TEN).unwrap();
        assert_eq!(d.fits(), Ok(()), "a chunked body says no length");
        assert_eq!(decode_all(&mut d, body), Err(Error::BodyTooLarge));
        let mut d = BodyDecoder::new(Framing::Chunked, &TEN).unwrap();
        d.unlimited();
        assert_eq!(decode_all(&mut d, body).as_deref(), Ok(&b"123456123456"[..]));
    }
}
