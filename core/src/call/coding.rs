//! Content codings of a backend answer the gateway reads whole to decode (`json`,
//! `xml`, `string`, ...): what Go's HTTP client does for KrakenD, which asks for
//! `gzip` and undoes it before the body reaches a decoder.
//!
//! - [`ASK`]: the `Accept-Encoding` a decoding call sends when the client's own is not
//!   forwarded (and the request is not `HEAD` and asks for no `Range`, as Go's client).
//! - [`decode`]: a `gzip` (also `x-gzip`, several members) or `deflate` (zlib, or raw
//!   deflate as some servers send it) body is inflated, never past the response limit:
//!   a body that would grow past it fails the call as an oversized one does, so a
//!   compression bomb costs at most the limit in memory. `identity` or no
//!   `Content-Encoding` leaves the body as it is; any other coding (`br`, `zstd`, a list
//!   of codings) fails the call, naming it, rather than handing compressed bytes to a
//!   decoder. On success `Content-Encoding` and `Content-Length` are removed, as Go's
//!   client removes them.
//!
//! `no-op` answers are streamed through untouched and never come here.

use std::io::Read;

use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
use http::{HeaderMap, header};

/// The `Accept-Encoding` a decoding call asks with.
pub const ASK: &[u8] = b"gzip";

/// Undoes the content coding of a whole body, to at most `limit` bytes. `Err`: why the
/// call fails.
pub fn decode(headers: &mut HeaderMap, body: Vec<u8>, limit: u64) -> Result<Vec<u8>, String> {
    // Every Content-Encoding field, as one list (several fields are one list).
    let codings: Vec<String> = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes()).split(',').map(|c| c.trim().to_ascii_lowercase()).collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    let coding = match codings.as_slice() {
        [] => return Ok(body),
        [one] => one.as_str(),
        _ => {
            return Err(format!(
                "the backend answered with Content-Encoding: {}, which Sluice does not decode",
                codings.join(", ")
            ));
        }
    };
    // An empty body is empty whatever it says it is coded with (Go reads it so).
    if body.is_empty() {
        headers.remove(header::CONTENT_ENCODING);
        return Ok(body);
    }
    let inflated = match coding {
        "gzip" | "x-gzip" => inflate(MultiGzDecoder::new(&body[..]), limit, "gzip")?,
        "deflate" => match inflate(ZlibDecoder::new(&body[..]), limit, "deflate") {
            Ok(b) => b,
            // Not zlib-wrapped: raw deflate, as some servers send it.
            Err(e) if !e.contains("too large") => inflate(DeflateDecoder::new(&body[..]), limit, "deflate")?,
            Err(e) => return Err(e),
        },
        other => {
            return Err(format!("the backend answered with Content-Encoding: {other}, which Sluice does not decode"));
        }
    };
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    Ok(inflated)
}

/// Inflates into a buffer that never holds more than `limit` + 1 bytes of room: it
/// grows by doubling, each step capped at what is left of the limit.
fn inflate(mut reader: impl Read, limit: u64, name: &str) -> Result<Vec<u8>, String> {
    let cap = usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX);
    let mut out: Vec<u8> = Vec::with_capacity(cap.min(16 * 1024));
    loop {
        if out.len() == out.capacity() {
            if out.len() >= cap {
                return Err(format!("response body too large (past {limit} bytes once inflated)"));
            }
            let more = out.capacity().max(16 * 1024).min(cap - out.len());
            out.reserve_exact(more);
        }
        let start = out.len();
        out.resize(out.capacity(), 0);
        match reader.read(&mut out[start..]) {
            Ok(0) => {
                out.truncate(start);
                return Ok(out);
            }
            Ok(n) => out.truncate(start + n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => out.truncate(start),
            Err(e) => return Err(format!("the {name} body does not inflate: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use http::HeaderValue;
    use std::io::Write;

    fn headers(coding: &str, length: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_str(coding).unwrap());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        h
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_and_deflate_are_undone() {
        let text = br#"{"a":"hello hello hello"}"#;
        let mut h = headers("gzip", 10);
        assert_eq!(decode(&mut h, gzip(text), 1 << 20).unwrap(), text);
        assert!(h.is_empty(), "Content-Encoding and Content-Length go");
        // Two gzip members read as one body; x-gzip and any case.
        let mut two = gzip(b"{\"a\":");
        two.extend(gzip(b"1}"));
        assert_eq!(decode(&mut headers("X-Gzip", 1), two, 100).unwrap(), b"{\"a\":1}");
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(text).unwrap();
        assert_eq!(decode(&mut headers("deflate", 1), z.finish().unwrap(), 100).unwrap(), text);
        let mut raw = DeflateEncoder::new(Vec::new(), Compression::default());
        raw.write_all(text).unwrap();
        assert_eq!(decode(&mut headers("deflate", 1), raw.finish().unwrap(), 100).unwrap(), text);
        // identity and no coding: untouched, headers kept.
        let mut h = headers("identity", 3);
        assert_eq!(decode(&mut h, b"abc".to_vec(), 100).unwrap(), b"abc");
        assert_eq!(h.len(), 2);
        assert_eq!(decode(&mut HeaderMap::new(), b"abc".to_vec(), 1).unwrap(), b"abc");
        // An empty body: empty, whatever its coding says (Go's client reads it so).
        let mut h = headers("gzip", 0);
        assert_eq!(decode(&mut h, Vec::new(), 100).unwrap(), b"");
        assert!(h.get(header::CONTENT_ENCODING).is_none());
        // Two fields, identity then gzip: one list, gzip undone.
        let mut h = headers("identity", 1);
        h.append(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(decode(&mut h, gzip(text), 100).unwrap(), text);
    }

    #[test]
    fn bad_codings_fail_with_a_reason() {
        // A bomb: 64 MiB of zeros in about 64 KiB, stopped at the limit.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 100_000);
        let e = decode(&mut headers("gzip", bomb.len()), bomb, 1 << 20).unwrap_err();
        assert_eq!(e, "response body too large (past 1048576 bytes once inflated)");
        let mut exact = headers("gzip", 1);
        assert_eq!(decode(&mut exact, gzip(&[7u8; 100]), 100).unwrap().len(), 100);
        // The buffer never gets room past the limit (and one byte to tell).
        let grown = inflate(MultiGzDecoder::new(&gzip(&[7u8; 100_000])[..]), 100_000, "gzip").unwrap();
        assert!(grown.capacity() <= 100_001, "{}", grown.capacity());
        assert!(decode(&mut headers("gzip", 1), gzip(&[7u8; 101]), 100).is_err());
        // Not gzip at all, and cut short.
        let e = decode(&mut headers("gzip", 5), b"hello".to_vec(), 100).unwrap_err();
        assert!(e.starts_with("the gzip body does not inflate: "), "{e}");
        let whole = gzip(b"{\"a\":1}");
        let e = decode(&mut headers("gzip", 5), whole[..whole.len() - 6].to_vec(), 100).unwrap_err();
        assert!(e.starts_with("the gzip body does not inflate: "), "{e}");
        assert_eq!(
            decode(&mut headers("br", 5), b"\x0b\x02\x80hi\x03".to_vec(), 100).unwrap_err(),
            "the backend answered with Content-Encoding: br, which Sluice does not decode"
        );
        assert_eq!(
            decode(&mut headers("gzip, br", 5), vec![1], 100).unwrap_err(),
            "the backend answered with Content-Encoding: gzip, br, which Sluice does not decode"
        );
        let mut twice = headers("gzip", 5);
        twice.append(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(decode(&mut twice, gzip(b"x"), 100).is_err());
    }
}
