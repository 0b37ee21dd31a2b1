//! monoio's floor for a no-op request: what the runtime alone costs for the socket
//! operations the gateway does per request, with no HTTP beyond finding where a message
//! ends. Each client connection gets one kept-alive backend connection; per request:
//! read the client's head, write a fixed request to the backend, read its answer
//! (`Content-Length`), write that answer to the client. Four operations, as the
//! gateway's no-op endpoint, on the same ring setup (1,024 entries, COOP_TASKRUN,
//! SINGLE_ISSUER, DEFER_TASKRUN), each an `.await` on monoio's own futures.
//!
//! `cargo run --release -p sluice-uring --example monoio_floor -- LISTEN_PORT BACKEND_PORT`;
//! `benches/load/run.py --instructions --floor` counts it under callgrind beside nginx
//! and the gateway.

#[path = "../../benches/load/floor/frame.rs"]
mod frame;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

fn main() {
    let (listen, backend) = frame::ports();
    let mut ring = io_uring::IoUring::builder();
    ring.setup_coop_taskrun().setup_single_issuer().setup_defer_taskrun();
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(1024)
        .enable_timer()
        .uring_builder(ring)
        .build()
        .expect("an io_uring runtime (Linux 6.1 or later)");
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", listen)).expect("the listening port");
        loop {
            let Ok((client, _)) = listener.accept().await else { continue };
            monoio::spawn(relay(client, backend));
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
            request = read_more(&mut client, request).await?;
        }
        let (written, _) = upstream.write_all(frame::BACKEND_REQUEST).await;
        written?;
        answer.clear();
        while frame::response_end(&answer).is_none() {
            answer = read_more(&mut upstream, answer).await?;
        }
        let (written, back) = client.write_all(answer).await;
        written?;
        answer = back;
    }
}

/// Reads what `from` has into the spare room of `buf` (grown when full); closed is an error.
async fn read_more(from: &mut TcpStream, mut buf: Vec<u8>) -> std::io::Result<Vec<u8>> {
    if buf.len() == buf.capacity() {
        buf.reserve(1024);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let (res, slice) = from.read(buf.slice_mut(len..cap)).await;
    let buf = slice.into_inner();
    match res? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(buf),
    }
}
