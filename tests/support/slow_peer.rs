//! A loopback connection whose near end sends through a small buffer, with a thread
//! at its far end: the drivers' write tests (monoio's in `io-uring-server`, tokio's in
//! `tokio-adapter`) include it by `#[path]`, each driving the near end on its runtime.

use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

/// The near end (blocking, its send buffer set to 4 KiB, which Linux doubles) and the
/// thread running `peer` on the far end, whose reads time out after 10 s (a writer
/// that stops early fails the test rather than hang it).
pub(crate) fn slow_peer<T: Send + 'static>(
    peer: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (TcpStream, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let thread = std::thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        peer(s)
    });
    let stream = TcpStream::connect(addr).expect("connect");
    rustix::net::sockopt::set_socket_send_buffer_size(&stream, 4096).expect("SO_SNDBUF");
    (stream, thread)
}
