//! HTTP/1.1 codec: parse a browser request head, parse a response head, encode a
//! response head, decode a 64 KiB chunked body.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use sluice_core::http1::{
    BodyDecoder, BodyEvent, BodyLength, ClientConn, ClientEvent, Framing, Limits, ResponseHead, ServerConn,
    ServerEvent, write_chunk,
};

/// A typical browser request head, about 400 bytes.
const BROWSER_HEAD: &[u8] = b"GET /v1/products/12345?lang=en&currency=EUR HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: application/json, text/plain, */*\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Referer: https://www.example.com/shop\r\n\
Connection: keep-alive\r\n\
Cookie: session=abc123def456; theme=dark\r\n\
\r\n";

const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: application/json; charset=utf-8\r\n\
Content-Length: 2048\r\n\
Date: Sat, 21 Nov 2026 21:00:00 GMT\r\n\
Cache-Control: public, max-age=300\r\n\
Vary: Accept-Encoding\r\n\
X-Request-Id: 4f9c2a7e-1b3d-4e5f-8a9b-0c1d2e3f4a5b\r\n\
\r\n";

fn http1(c: &mut Criterion) {
    let mut group = c.benchmark_group("http1");

    group.throughput(Throughput::Bytes(BROWSER_HEAD.len() as u64));
    group.bench_function("parse_request_head", |b| {
        b.iter(|| {
            let mut conn = ServerConn::new(Limits::default());
            match conn.handle_input(black_box(BROWSER_HEAD)) {
                Ok((n, ServerEvent::Request(r))) => n + r.head.len(),
                other => panic!("{other:?}"),
            }
        })
    });

    group.throughput(Throughput::Bytes(RESPONSE_HEAD.len() as u64));
    group.bench_function("parse_response_head", |b| {
        b.iter(|| {
            let mut conn = ClientConn::new(Method::GET, Limits::default());
            match conn.handle_input(black_box(RESPONSE_HEAD)) {
                Ok((n, ClientEvent::Response(r))) => n + r.head.len(),
                other => panic!("{other:?}"),
            }
        })
    });

    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
    headers.insert("cache-control", HeaderValue::from_static("public, max-age=300"));
    headers.insert("x-krakend-completed", HeaderValue::from_static("true"));
    headers.insert("vary", HeaderValue::from_static("Accept-Encoding"));
    let mut ready = ServerConn::new(Limits::default());
    let _ = ready.handle_input(BROWSER_HEAD);
    let _ = ready.handle_input(b"");
    let mut out = Vec::with_capacity(512);
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_response_head", |b| {
        b.iter(|| {
            let mut conn = ready.clone();
            out.clear();
            let head =
                ResponseHead { status: StatusCode::OK, headers: &headers, body: BodyLength::Known(2048), close: false };
            match conn.write_response_head(black_box(&head), &mut out) {
                Ok(()) => out.len(),
                Err(e) => panic!("{e}"),
            }
        })
    });

    // 64 KiB of payload in 4 KiB chunks, as a backend streaming JSON might send it.
    let payload: Vec<u8> = (0..65_536u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut chunked = Vec::new();
    for piece in payload.chunks(4096) {
        write_chunk(piece, &mut chunked);
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("decode_chunked_64k", |b| {
        b.iter(|| {
            let mut decoder = match BodyDecoder::new(Framing::Chunked, &Limits::default()) {
                Ok(d) => d,
                Err(e) => panic!("{e}"),
            };
            let mut input = black_box(&chunked[..]);
            let mut total = 0;
            loop {
                match decoder.decode(input) {
                    Ok((n, BodyEvent::Data(d))) => {
                        total += d.len();
                        input = &input[n..];
                    }
                    Ok((_, BodyEvent::End(_))) => break total,
                    other => panic!("{other:?}"),
                }
            }
        })
    });
    group.finish();
}

criterion_group!(benches, http1);
criterion_main!(benches);
