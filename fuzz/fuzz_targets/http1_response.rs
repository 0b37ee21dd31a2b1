//! Client role: any backend bytes parse or give a protocol error, never a panic; whole
//! and split feeding agree. The first byte picks the request method. Our response
//! head parser reads every input as httparse (the parser it replaced) does.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use sluice_core::http1::{ClientConn, ClientEvent, Error, Limits, ReadHead, read_response_head};

fn run(method: &Method, input: &[u8], step: usize) -> Vec<String> {
    let limits = Limits { max_head_bytes: 2048, max_uri_bytes: 256, max_headers: 16, max_body_bytes: 4096 };
    let mut conn = ClientConn::new(method.clone(), limits);
    let mut log = Vec::new();
    let mut buf = Vec::new();
    let mut data = Vec::new();
    for piece in input.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let (n, ev) = match conn.handle_input(&buf) {
                Ok(r) => r,
                Err(e) => {
                    log.push(format!("error {e:?}"));
                    return log;
                }
            };
            match ev {
                ClientEvent::Response(r) => log.push(format!("{} {:?} {}", r.status, r.framing, r.keep_alive)),
                ClientEvent::Data(d) => data.extend_from_slice(d),
                ClientEvent::End(t) => {
                    log.push(format!("data {data:?} end {:?}", t.map(|t| t.len())));
                    return log;
                }
                ClientEvent::Switched => {
                    log.push("switched".into());
                    return log;
                }
                ClientEvent::NeedMore => {
                    buf.drain(..n);
                    break;
                }
            }
            buf.drain(..n);
        }
    }
    match conn.handle_eof() {
        Ok(ev) => log.push(format!("eof {ev:?} data {data:?}")),
        Err(e) => log.push(format!("eof error {e:?}")),
    }
    log
}

/// What httparse makes of a head, in the codec's terms.
fn httparse_reads(raw: &[u8], max: usize) -> Result<ReadHead<'_>, Error> {
    let mut headers = vec![httparse::EMPTY_HEADER; max];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(raw) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Error::Malformed("incomplete response head")),
        Err(e) => {
            return Err(match e {
                httparse::Error::TooManyHeaders => Error::HeadTooLarge,
                httparse::Error::Version => Error::UnsupportedVersion,
                httparse::Error::HeaderName => Error::Malformed("invalid header name"),
                httparse::Error::HeaderValue => Error::Malformed("invalid header value"),
                httparse::Error::NewLine => Error::Malformed("invalid line ending"),
                httparse::Error::Status => Error::Malformed("invalid status"),
                httparse::Error::Token => Error::Malformed("invalid request line"),
            });
        }
    }
    let fields = resp.headers.iter().map(|h| (h.name.as_bytes(), h.value)).collect();
    let reason = resp.reason.unwrap_or("").as_bytes();
    Ok((resp.version == Some(0), resp.code.unwrap_or(0), reason, fields))
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, rest)) = input.split_first() else { return };
    let method = match first % 4 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::CONNECT,
        _ => Method::POST,
    };
    let max = usize::from(first / 64) * 3;
    assert_eq!(read_response_head(rest, max), httparse_reads(rest, max));
    let whole = run(&method, rest, rest.len());
    let split = run(&method, rest, usize::from(first / 4 % 16) + 1);
    assert_eq!(whole, split);
});
