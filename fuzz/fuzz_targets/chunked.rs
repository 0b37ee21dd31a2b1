//! Chunked body decoding alone: decode or error, never a panic; the decoded bytes never
//! exceed the input; whole and byte-by-byte feeding agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::http1::{BodyDecoder, BodyEvent, Framing, Limits};

fn run(input: &[u8], step: usize) -> Result<(Vec<u8>, bool, usize), sluice_core::http1::Error> {
    let limits = Limits { max_body_bytes: 1 << 20, ..Limits::default() };
    let mut decoder = BodyDecoder::new(Framing::Chunked, &limits)?;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for piece in input.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let (n, ev) = decoder.decode(&buf)?;
            let ev = match ev {
                BodyEvent::Data(d) => {
                    out.extend_from_slice(d);
                    None
                }
                BodyEvent::End(t) => Some(t.map_or(0, |t| t.len())),
                BodyEvent::NeedMore => {
                    buf.drain(..n);
                    break;
                }
            };
            buf.drain(..n);
            if let Some(trailers) = ev {
                return Ok((out, true, trailers));
            }
        }
    }
    Ok((out, false, 0))
}

fuzz_target!(|input: &[u8]| {
    let whole = run(input, input.len());
    if let Ok((data, _, _)) = &whole {
        assert!(data.len() <= input.len());
    }
    assert_eq!(whole, run(input, 1));
});
