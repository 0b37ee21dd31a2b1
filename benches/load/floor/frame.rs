//! The framing the runtime-floor programs need, and nothing more: where a request head
//! without a body ends, and where a response with a `Content-Length` ends. Shared by
//! `io-uring-server/examples/monoio_floor.rs`, `io-uring-server/examples/ring_floor.rs`
//! and `tokio-adapter/examples/tokio_floor.rs`.

/// The end of the head in `buf` (just past the blank line), once it is all there.
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find(|&i| blank_line_at(buf, i)).map(|i| i + 1)
}

/// The end of the response in `buf` (head and `Content-Length` body), once it is all
/// there: one pass over the head's line ends.
pub(crate) fn response_end(buf: &[u8]) -> Option<usize> {
    const NAME: &[u8] = b"content-length:";
    let mut length = None;
    for i in memchr::memchr_iter(b'\n', buf) {
        if blank_line_at(buf, i) {
            let end = i + 1 + length?;
            return (buf.len() >= end).then_some(end);
        }
        let line = &buf[i + 1..];
        if line.len() > NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME) {
            let mut digits = line[NAME.len()..].iter().skip_while(|&&b| b == b' ').take_while(|b| b.is_ascii_digit());
            length = digits.try_fold(0usize, |n, &b| n.checked_mul(10)?.checked_add(usize::from(b - b'0')));
        }
    }
    None
}

/// Whether the line end at `i` ends an empty line (`\r\n\r\n`).
fn blank_line_at(buf: &[u8], i: usize) -> bool {
    i >= 3 && &buf[i - 3..=i] == b"\r\n\r\n"
}

/// The request sent to the backend for every client request: what the gateway's no-op
/// endpoint sends, give or take its headers.
pub(crate) const BACKEND_REQUEST: &[u8] = b"GET /100b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// `LISTEN_PORT BACKEND_PORT` from the command line.
pub(crate) fn ports() -> (u16, u16) {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u16>().expect("a port number"));
    match (args.next(), args.next()) {
        (Some(listen), Some(backend)) => (listen, backend),
        _ => {
            eprintln!("usage: monoio_floor|tokio_floor LISTEN_PORT BACKEND_PORT");
            std::process::exit(2)
        }
    }
}
