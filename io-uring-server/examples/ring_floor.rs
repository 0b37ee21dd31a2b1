//! The floor below monoio: the same four socket operations per no-op request as
//! `monoio_floor` (read the client's head, write a fixed request to a kept-alive
//! backend connection, read its answer, write that answer to the client), submitted to
//! one io_uring directly: no future, no waker, no operation slab. Each completion names
//! its connection and operation in its `user_data` and goes straight to that
//! connection's step. What this costs per request beside `monoio_floor` is what a
//! driver of our own on the ring would buy (issue 30 asks for that figure before
//! anything is replaced). Same ring setup as the gateway's shards (COOP_TASKRUN,
//! SINGLE_ISSUER, DEFER_TASKRUN).
//!
//! `cargo run --release -p sluice-uring --example ring_floor -- LISTEN_PORT BACKEND_PORT`;
//! `benches/load/run.py --instructions --floor` counts it under callgrind.
//!
//! A measuring tool, not a server: the backend is dialled with a blocking connect at
//! accept, and any error ends that connection.
#![allow(unsafe_code, reason = "io_uring operations borrow buffers the kernel writes into")]

#[path = "../../benches/load/floor/frame.rs"]
mod frame;

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, squeue, types};

/// The operation a completion finishes, in the low bits of its `user_data`.
#[derive(Clone, Copy)]
enum Op {
    Accept = 0,
    ReadClient = 1,
    WriteBackend = 2,
    ReadBackend = 3,
    WriteClient = 4,
}

const OPS: [Op; 5] = [Op::Accept, Op::ReadClient, Op::WriteBackend, Op::ReadBackend, Op::WriteClient];

/// One client connection and its backend connection. Buffers are allocated at accept
/// and never grown while an operation on them is out.
struct Conn {
    client: TcpStream,
    backend: TcpStream,
    request: Vec<u8>,
    answer: Vec<u8>,
    /// Bytes of the current write already written.
    sent: usize,
}

fn main() {
    let (listen, backend_port) = frame::ports();
    let listener = TcpListener::bind(("127.0.0.1", listen)).expect("the listening port");
    let mut builder = IoUring::builder();
    builder.setup_coop_taskrun().setup_single_issuer().setup_defer_taskrun();
    let mut ring = builder.build(1024).expect("an io_uring (Linux 6.1 or later)");
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let fd = types::Fd(listener.as_raw_fd());
    let accept = || opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut()).build();
    // SAFETY: an accept points at no buffer.
    unsafe { push(&mut ring, accept().user_data(Op::Accept as u64)) };
    let mut done: Vec<(u64, i32)> = Vec::with_capacity(1024);
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            // A signal (valgrind's control ones too): enter again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("io_uring_enter: {e}"),
        }
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for (data, result) in done.drain(..) {
            let (id, op) = ((data >> 3) as usize, OPS[(data & 7) as usize]);
            if let Op::Accept = op {
                // SAFETY: as above.
                unsafe { push(&mut ring, accept().user_data(Op::Accept as u64)) };
                if result >= 0 {
                    open(&mut ring, &mut conns, result, backend_port);
                }
                continue;
            }
            let Some(conn) = conns.get_mut(id).and_then(Option::as_mut) else { continue };
            if result <= 0 || step(&mut ring, id, conn, op, result as usize).is_none() {
                conns[id] = None;
            }
        }
    }
}

/// A new client connection (`fd`): its backend connection, its first read.
fn open(ring: &mut IoUring, conns: &mut Vec<Option<Conn>>, fd: i32, backend_port: u16) {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just accepted and belongs to nothing else.
    let client = unsafe { TcpStream::from_raw_fd(fd) };
    let Ok(backend) = TcpStream::connect(("127.0.0.1", backend_port)) else { return };
    let _ = backend.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let conn = Conn { client, backend, request: Vec::with_capacity(1024), answer: Vec::with_capacity(4096), sent: 0 };
    let id = match conns.iter().position(Option::is_none) {
        Some(free) => free,
        None => {
            conns.push(None);
            conns.len() - 1
        }
    };
    let conn = conns[id].insert(conn);
    // SAFETY: the buffer is the connection's own (or static), untouched until this completes.
    unsafe { read(ring, id, Op::ReadClient, conn.client.as_raw_fd(), &mut conn.request) };
}

/// What one completion of `op` (`n` bytes) leads to; `None` ends the connection.
fn step(ring: &mut IoUring, id: usize, conn: &mut Conn, op: Op, n: usize) -> Option<()> {
    match op {
        Op::ReadClient => {
            // SAFETY: the kernel wrote `n` bytes after the length it was given.
            unsafe { conn.request.set_len(conn.request.len() + n) };
            if frame::head_end(&conn.request).is_none() {
                // SAFETY: the buffer is the connection's own, untouched until this completes.
                unsafe {
                    read_more(ring, id, Op::ReadClient, conn.client.as_raw_fd(), &mut conn.request)?;
                }
                return Some(());
            }
            conn.request.clear();
            conn.sent = 0;
            // SAFETY: the buffer is the connection's own (or static), untouched until this completes.
            unsafe { write(ring, id, Op::WriteBackend, conn.backend.as_raw_fd(), frame::BACKEND_REQUEST) };
        }
        Op::WriteBackend => {
            conn.sent += n;
            if conn.sent < frame::BACKEND_REQUEST.len() {
                let rest = &frame::BACKEND_REQUEST[conn.sent..];
                // SAFETY: the buffer is the connection's own (or static), untouched until this completes.
                unsafe { write(ring, id, Op::WriteBackend, conn.backend.as_raw_fd(), rest) };
                return Some(());
            }
            conn.answer.clear();
            // SAFETY: the buffer is the connection's own (or static), untouched until this completes.
            unsafe { read(ring, id, Op::ReadBackend, conn.backend.as_raw_fd(), &mut conn.answer) };
        }
        Op::ReadBackend => {
            // SAFETY: as for the client's read.
            unsafe { conn.answer.set_len(conn.answer.len() + n) };
            if frame::response_end(&conn.answer).is_none() {
                // SAFETY: the buffer is the connection's own, untouched until this completes.
                unsafe {
                    read_more(ring, id, Op::ReadBackend, conn.backend.as_raw_fd(), &mut conn.answer)?;
                }
                return Some(());
            }
            conn.sent = 0;
            // SAFETY: the buffer is the connection's own (or static), untouched until this completes.
            unsafe { write(ring, id, Op::WriteClient, conn.client.as_raw_fd(), &conn.answer) };
        }
        Op::WriteClient => {
            conn.sent += n;
            if conn.sent < conn.answer.len() {
                // SAFETY: the buffer is the connection's own (or static), untouched until this completes.
                unsafe { write(ring, id, Op::WriteClient, conn.client.as_raw_fd(), &conn.answer[conn.sent..]) };
                return Some(());
            }
            // SAFETY: the buffer is the connection's own (or static), untouched until this completes.
            unsafe { read(ring, id, Op::ReadClient, conn.client.as_raw_fd(), &mut conn.request) };
        }
        Op::Accept => {}
    }
    Some(())
}

/// A read into the spare room of `buf`, which must have some (a head or an answer
/// larger than the buffer ends the connection: this is a floor, not a proxy).
///
/// # Safety
/// As [`read`].
unsafe fn read_more(ring: &mut IoUring, id: usize, op: Op, fd: i32, buf: &mut Vec<u8>) -> Option<()> {
    // SAFETY: the caller's promise.
    (buf.len() < buf.capacity()).then(|| unsafe { read(ring, id, op, fd, buf) })
}

/// A receive into the spare room of `buf`.
///
/// # Safety
/// `buf` is neither grown, moved out, read nor dropped until the operation completes.
unsafe fn read(ring: &mut IoUring, id: usize, op: Op, fd: i32, buf: &mut Vec<u8>) {
    let spare = buf.spare_capacity_mut();
    let recv = opcode::Recv::new(types::Fd(fd), spare.as_mut_ptr().cast(), spare.len() as u32);
    // SAFETY: the caller's promise.
    unsafe { push(ring, recv.build().user_data(((id as u64) << 3) | op as u64)) };
}

/// A send of `bytes`.
///
/// # Safety
/// `bytes` stays where it is, unchanged, until the operation completes.
unsafe fn write(ring: &mut IoUring, id: usize, op: Op, fd: i32, bytes: &[u8]) {
    let send = opcode::Send::new(types::Fd(fd), bytes.as_ptr(), bytes.len() as u32);
    // SAFETY: the caller's promise.
    unsafe { push(ring, send.build().user_data(((id as u64) << 3) | op as u64)) };
}

/// Queues `sqe` (submitting what is queued first if the queue is full).
///
/// # Safety
/// Every buffer `sqe` points into outlives the operation unchanged (see [`read`],
/// [`write`]); a connection is dropped only once its one operation completed.
unsafe fn push(ring: &mut IoUring, sqe: squeue::Entry) {
    // SAFETY: the caller's promise.
    while unsafe { ring.submission().push(&sqe) }.is_err() {
        ring.submit().expect("io_uring_enter");
    }
}
