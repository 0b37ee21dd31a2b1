//! Server role: any bytes parse or give a protocol error, never a panic; and the events
//! for the input fed whole equal those for the same input fed in splits chosen by the
//! first byte.
#![no_main]

use http::{HeaderMap, StatusCode};
use libfuzzer_sys::fuzz_target;
use sluice_core::http1::{BodyLength, Limits, Next, ResponseHead, ServerConn, ServerEvent};

/// Feeds `input` in pieces of at most `step` bytes; answers each request with an empty
/// 200. Returns a transcript of events.
fn run(input: &[u8], step: usize) -> Vec<String> {
    let limits = Limits { max_head_bytes: 2048, max_uri_bytes: 256, max_headers: 16, max_body_bytes: 4096 };
    let mut conn = ServerConn::new(limits);
    let mut log = Vec::new();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut data = Vec::new();
    for piece in input.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let (n, ev) = match conn.handle_input(&buf) {
                Ok(r) => r,
                Err(e) => {
                    log.push(format!("error {e:?} status {}", e.status()));
                    return log;
                }
            };
            let mut stop = false;
            match ev {
                ServerEvent::Request(r) => log.push(format!("{} {} {:?}", r.method, r.target(), r.framing)),
                ServerEvent::Data(d) => data.extend_from_slice(d),
                ServerEvent::End(t) => {
                    log.push(format!("data {data:?} end {:?}", t.map(|t| t.len())));
                    data.clear();
                }
                ServerEvent::NeedMore => stop = true,
                ServerEvent::Switched => return log,
                ServerEvent::Paused => {
                    let headers = HeaderMap::new();
                    let head = ResponseHead {
                        status: StatusCode::OK,
                        headers: &headers,
                        body: BodyLength::Known(0),
                        close: false,
                    };
                    if conn.write_response_head(&head, &mut out).is_err() {
                        panic!("a paused connection must accept a response");
                    }
                    match conn.finish_response(&mut out) {
                        Ok(Next::KeepAlive) => {}
                        Ok(_) => return log,
                        Err(e) => panic!("finishing an empty response failed: {e}"),
                    }
                }
            }
            buf.drain(..n);
            if stop {
                break;
            }
        }
    }
    log
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, rest)) = input.split_first() else { return };
    let whole = run(rest, rest.len());
    let split = run(rest, usize::from(first % 16) + 1);
    assert_eq!(whole, split);
});
