//! tokio's floor for a no-op request: what the runtime alone costs for the socket
//! operations the gateway does per request, with no HTTP beyond finding where a message
//! ends. Each client connection gets one kept-alive backend connection; per request:
//! read the client's head, write a fixed request to the backend, read its answer
//! (`Content-Length`), write that answer to the client. Four operations, as the
//! gateway's no-op endpoint, on the same runtime (multi-thread, one worker per
//! `--threads 1`, I/O and timers enabled).
//!
//! `cargo run --release -p sluice-tokio --example tokio_floor -- LISTEN_PORT BACKEND_PORT`;
//! `benches/load/run.py --instructions --floor` counts it under callgrind beside nginx
//! and the gateway.

#[path = "../../benches/load/floor/frame.rs"]
mod frame;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let (listen, backend) = frame::ports();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a tokio runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", listen)).await.expect("the listening port");
        loop {
            let Ok((client, _)) = listener.accept().await else { continue };
            tokio::spawn(relay(client, backend));
        }
    });
}

/// Serves one client connection until either side closes or fails.
async fn relay(mut client: TcpStream, backend: u16) -> std::io::Result<()> {
    let mut upstream = TcpStream::connect(("127.0.0.1", backend)).await?;
    let (mut request, mut answer) = (Vec::with_capacity(1024), Vec::with_capacity(1024));
    loop {
        request.clear();
        while frame::head_end(&request).is_none() {
            read_more(&mut client, &mut request).await?;
        }
        upstream.write_all(frame::BACKEND_REQUEST).await?;
        answer.clear();
        while frame::response_end(&answer).is_none() {
            read_more(&mut upstream, &mut answer).await?;
        }
        client.write_all(&answer).await?;
    }
}

/// Reads what `from` has into the spare room of `buf` (grown when full); closed is an error.
async fn read_more(from: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    if buf.len() == buf.capacity() {
        buf.reserve(1024);
    }
    match from.read_buf(buf).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}
