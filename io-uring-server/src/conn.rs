//! One client connection: `sluice_core::conn::Connection` decides, this loop moves its
//! bytes over monoio sockets, runs its one timer and keeps its idle backend sockets.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use rustix::io::Errno;
use rustix::pipe::{PipeFlags, SpliceFlags};
use sluice_core::conn::{BackendId, Connection, Input, Output, SPLICE_PIPE, Spliced, splice_pipe_fits};
use sluice_core::serve::Listener;

use crate::Shard;

type Op<'a> = Pin<Box<dyn Future<Output = (Back, Input)> + 'a>>;

/// The socket (half) a finished operation hands back.
enum Back {
    Reader(OwnedReadHalf<TcpStream>),
    Writer(OwnedWriteHalf<TcpStream>),
    Backend(BackendId, TcpStream),
    /// A CONNECT tunnel's connection, just opened, and its halves.
    Tunnel(TcpStream),
    TunnelReader(OwnedReadHalf<TcpStream>),
    TunnelWriter(OwnedWriteHalf<TcpStream>),
    /// A spliced direction's kernel pipe (`true`: up).
    Pipe(bool, KernelPipe),
    Nothing,
}

/// A backend socket of this connection: idle in `stream`, or held by `op`.
#[derive(Default)]
struct Backend<'a> {
    stream: Option<TcpStream>,
    op: Option<Op<'a>>,
}

/// The operations under way on one connection's sockets.
struct Ops<'a> {
    reader: Option<OwnedReadHalf<TcpStream>>,
    writer: Option<OwnedWriteHalf<TcpStream>>,
    read: Option<Op<'a>>,
    write: Option<Op<'a>>,
    backends: Vec<Backend<'a>>,
    /// A CONNECT tunnel's connection: its halves at rest, its read and its write.
    tunnel_reader: Option<OwnedReadHalf<TcpStream>>,
    tunnel_writer: Option<OwnedWriteHalf<TcpStream>>,
    tunnel_read: Option<Op<'a>>,
    tunnel_write: Option<Op<'a>>,
    /// The sockets' descriptors (kept open by their halves), for splicing.
    client_fd: RawFd,
    tunnel_fd: Option<RawFd>,
    /// Splicing the tunnel: not tried yet, ready, or impossible (then never again).
    splicer: Option<Result<Rc<Splicer>, ()>>,
    /// Each direction's pipe at rest (up, down) and its splice.
    pipes: [Option<KernelPipe>; 2],
    splices: [Option<Op<'a>>; 2],
    /// Every shard's counters being gathered (an admin page).
    gather: Option<Op<'a>>,
    /// The connection's one timer (made at its first deadline, then reset) and the
    /// instant it is set for, while it is.
    timer: Option<Pin<Box<monoio::time::Sleep>>>,
    armed: Option<Instant>,
}

impl<'a> Ops<'a> {
    fn backend(&mut self, id: BackendId) -> &mut Backend<'a> {
        if self.backends.len() <= id {
            self.backends.resize_with(id + 1, Backend::default);
        }
        &mut self.backends[id]
    }

    /// Makes sure the timer goes off by `deadline`. A timer already set for earlier is
    /// kept: going off early is harmless (the connection finds nothing due and gives
    /// its next deadline), and most deadlines move later (a keep-alive connection's
    /// next exchange deadline is after its last one), so the timer is reset about once
    /// per endpoint timeout instead of several times per request.
    fn arm(&mut self, deadline: Option<Instant>) {
        let Some(d) = deadline else { return };
        if self.armed.is_some_and(|at| at <= d) {
            return;
        }
        match &mut self.timer {
            Some(sleep) => sleep.as_mut().reset(d.into()),
            None => self.timer = Some(Box::pin(monoio::time::sleep_until(d.into()))),
        }
        self.armed = Some(d);
    }

    /// The first operation to finish, the timer, or the stop (`stop`: not seen yet).
    fn poll_wake(
        &mut self,
        cx: &mut Context<'_>,
        stop: Option<Pin<&mut impl Future<Output = ()>>>,
    ) -> Poll<(Back, Input)> {
        let [up, down] = &mut self.splices;
        let (tunnel_read, tunnel_write, gather) = (&mut self.tunnel_read, &mut self.tunnel_write, &mut self.gather);
        let ops = [&mut self.read, &mut self.write, tunnel_read, tunnel_write, up, down, gather]
            .into_iter()
            .chain(self.backends.iter_mut().map(|b| &mut b.op));
        for op in ops {
            if let Some(Poll::Ready(done)) = op.as_mut().map(|fut| fut.as_mut().poll(cx)) {
                *op = None;
                return Poll::Ready(done);
            }
        }
        if self.armed.is_some() && self.timer.as_mut().is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready()) {
            self.armed = None;
            return Poll::Ready((Back::Nothing, Input::Timeout));
        }
        match stop.map(|stop| stop.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready((Back::Nothing, Input::Stop)),
            _ => Poll::Pending,
        }
    }

    /// What a splice of direction `up` needs, made at the tunnel's first splice, or how
    /// the splice ends at once: unsupported when this tunnel cannot be spliced (nothing
    /// was changed on its sockets then).
    fn splice_kit(&mut self, up: bool) -> Result<(Rc<Splicer>, KernelPipe), Spliced> {
        if self.splicer.is_none() {
            let made = self.tunnel_fd.ok_or_else(gone).and_then(|tunnel| Splicer::new(self.client_fd, tunnel));
            self.splicer = Some(match made {
                Ok((splicer, pipes)) => {
                    self.pipes = pipes.map(Some);
                    Ok(Rc::new(splicer))
                }
                Err(e) => {
                    tracing::debug!(target: "sluice::forward", "the tunnel copies: cannot splice: {e}");
                    Err(())
                }
            });
        }
        let Some(Ok(splicer)) = &self.splicer else { return Err(Spliced::Unsupported) };
        match self.pipes[usize::from(!up)].take() {
            Some(pipe) => Ok((splicer.clone(), pipe)),
            // A second splice of one direction (the connection never asks for that).
            None => Err(Spliced::ReadFailed(gone())),
        }
    }

    fn give_back(&mut self, back: Back) {
        match back {
            Back::Reader(r) => self.reader = Some(r),
            Back::Writer(w) => self.writer = Some(w),
            Back::Backend(id, s) => self.backend(id).stream = Some(s),
            Back::Tunnel(s) => {
                self.tunnel_fd = Some(s.as_raw_fd());
                let (r, w) = s.into_split();
                (self.tunnel_reader, self.tunnel_writer) = (Some(r), Some(w));
            }
            Back::TunnelReader(r) => self.tunnel_reader = Some(r),
            Back::TunnelWriter(w) => self.tunnel_writer = Some(w),
            Back::Pipe(up, pipe) => self.pipes[usize::from(!up)] = Some(pipe),
            Back::Nothing => {}
        }
    }
}

struct Active(Rc<Shard>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get().saturating_sub(1));
    }
}

/// Serves one client connection accepted on `listener` until it closes.
pub(crate) async fn serve(shard: Rc<Shard>, stream: TcpStream, peer: SocketAddr, listener: Listener) {
    shard.active.set(shard.active.get() + 1);
    let _active = Active(shard.clone());
    let place = shard.stopping.register();
    let mut stop = std::pin::pin!(place.wait());
    let mut stop_seen = false;
    let (gw, balancer, now, wall) = (&shard.gw, &shard.balancer, Instant::now(), SystemTime::now());
    let mut conn = Connection::accept(listener, gw, balancer, &shard.runtime, peer.ip(), now, wall);
    conn.splice_tunnels(true);
    let client_fd = stream.as_raw_fd();
    let (reader, writer) = stream.into_split();
    let mut ops = Ops {
        reader: Some(reader),
        writer: Some(writer),
        read: None,
        write: None,
        backends: Vec::new(),
        tunnel_reader: None,
        tunnel_writer: None,
        tunnel_read: None,
        tunnel_write: None,
        client_fd,
        tunnel_fd: None,
        splicer: None,
        pipes: [None, None],
        splices: [None, None],
        gather: None,
        timer: None,
        armed: None,
    };
    loop {
        while let Some(output) = conn.poll() {
            if !start(&shard, &mut ops, output, &mut conn) {
                return;
            }
        }
        ops.arm(conn.poll_timeout());
        let (back, input) = poll_fn(|cx| ops.poll_wake(cx, (!stop_seen).then_some(stop.as_mut()))).await;
        stop_seen |= matches!(input, Input::Stop);
        ops.give_back(back);
        conn.handle(input, Instant::now());
    }
}

/// Starts what the connection asked for. `false`: the connection is over.
fn start<'a>(shard: &'a Rc<Shard>, ops: &mut Ops<'a>, output: Output<'a>, conn: &mut Connection<'_>) -> bool {
    match output {
        Output::ReadClient(buf) => match ops.reader.take() {
            Some(r) => ops.read = Some(Box::pin(read_client(r, buf))),
            None => conn.handle(Input::ClientRead(buf, Err(gone())), Instant::now()),
        },
        Output::WriteClient(bytes) => match ops.writer.take() {
            Some(w) => ops.write = Some(Box::pin(write_client(w, bytes))),
            None => conn.handle(Input::ClientWritten(bytes, Err(gone())), Instant::now()),
        },
        Output::ShutdownClient => match ops.writer.take() {
            Some(mut w) => {
                ops.write = Some(Box::pin(async move {
                    let res = w.shutdown().await;
                    (Back::Writer(w), Input::ClientShutdown(res))
                }));
            }
            None => conn.handle(Input::ClientShutdown(Err(gone())), Instant::now()),
        },
        Output::Connect { id, pool_key, pooled, addr } => {
            let idle = if pooled { shard.pool.take(&pool_key) } else { None };
            let b = ops.backend(id);
            *b = Backend::default();
            b.op = match (idle, addr) {
                (Some((s, session)), _) => {
                    Some(Box::pin(async move { (Back::Backend(id, s), Input::Connected(id, Some(session))) }))
                }
                (None, Some(addr)) => Some(Box::pin(async move {
                    match crate::backend::dial(addr).await {
                        Ok(s) => (Back::Backend(id, s), Input::Connected(id, None)),
                        Err(e) => (Back::Nothing, Input::ConnectFailed(id, e)),
                    }
                })),
                (None, None) => {
                    conn.handle(Input::NoIdle(id), Instant::now());
                    None
                }
            };
        }
        Output::ReadBackend { id, buf } => match ops.backend(id).stream.take() {
            Some(s) => ops.backend(id).op = Some(Box::pin(read_backend(id, s, buf))),
            None => conn.handle(Input::BackendRead(id, buf, Err(gone())), Instant::now()),
        },
        Output::WriteBackend { id, bytes } => match ops.backend(id).stream.take() {
            Some(s) => ops.backend(id).op = Some(Box::pin(write_backend(id, s, bytes))),
            None => conn.handle(Input::BackendWritten(id, bytes, Err(gone())), Instant::now()),
        },
        Output::PoolBackend { id, pool_key, session } => {
            if let Some(s) = ops.backend(id).stream.take() {
                shard.pool.put(&pool_key, s, session);
            }
        }
        Output::CloseBackend { id } => *ops.backend(id) = Backend::default(),
        Output::Resolve { id, name } => {
            ops.backend(id).op =
                Some(Box::pin(async move { (Back::Nothing, Input::Resolved(id, shard.pool.resolve(&name).await)) }));
        }
        Output::Discover { id, name } => {
            ops.backend(id).op =
                Some(Box::pin(async move { (Back::Nothing, Input::Discovered(id, shard.pool.discover(name).await)) }));
        }
        Output::OpenTunnel { addr } => {
            ops.tunnel_write = Some(Box::pin(async move {
                match crate::backend::dial(addr).await {
                    Ok(s) => (Back::Tunnel(s), Input::TunnelOpened(Ok(()))),
                    Err(e) => (Back::Nothing, Input::TunnelOpened(Err(e))),
                }
            }));
        }
        Output::ReadTunnel(buf) => match ops.tunnel_reader.take() {
            Some(mut r) => {
                ops.tunnel_read = Some(Box::pin(async move {
                    let (len, cap) = (buf.len(), buf.capacity());
                    let (res, slice) = r.read(buf.slice_mut(len..cap)).await;
                    (Back::TunnelReader(r), Input::TunnelRead(slice.into_inner(), res))
                }));
            }
            None => conn.handle(Input::TunnelRead(buf, Err(gone())), Instant::now()),
        },
        Output::WriteTunnel(bytes) => match ops.tunnel_writer.take() {
            Some(mut w) => {
                ops.tunnel_write = Some(Box::pin(async move {
                    let (res, bytes) = w.write_all(bytes).await;
                    (Back::TunnelWriter(w), Input::TunnelWritten(bytes, res.map(drop)))
                }));
            }
            None => conn.handle(Input::TunnelWritten(bytes, Err(gone())), Instant::now()),
        },
        Output::ShutdownTunnel => match ops.tunnel_writer.take() {
            Some(mut w) => {
                ops.tunnel_write = Some(Box::pin(async move {
                    let res = w.shutdown().await;
                    (Back::TunnelWriter(w), Input::TunnelShutdown(res))
                }));
            }
            None => conn.handle(Input::TunnelShutdown(Err(gone())), Instant::now()),
        },
        Output::Splice { up } => match ops.splice_kit(up) {
            Ok((splicer, pipe)) => ops.splices[usize::from(!up)] = Some(Box::pin(splice(splicer, up, pipe))),
            Err(result) => conn.handle(Input::Spliced { up, result }, Instant::now()),
        },
        Output::Stats => {
            ops.gather = Some(Box::pin(async move {
                (Back::Nothing, Input::Stats(Box::new(crate::admin::gather(&shard.published).await)))
            }));
        }
        Output::Log(line) => {
            shard.stats.borrow_mut().observe(&line);
            sluice_core::event::emit(&line);
        }
        Output::Close => return false,
    }
    true
}

/// A socket asked for while an operation holds it (the connection never does that).
fn gone() -> io::Error {
    io::ErrorKind::NotConnected.into()
}

async fn read_client(mut r: OwnedReadHalf<TcpStream>, buf: Vec<u8>) -> (Back, Input) {
    let (len, cap) = (buf.len(), buf.capacity());
    let (res, slice) = r.read(buf.slice_mut(len..cap)).await;
    (Back::Reader(r), Input::ClientRead(slice.into_inner(), res))
}

async fn write_client(mut w: OwnedWriteHalf<TcpStream>, bytes: Vec<u8>) -> (Back, Input) {
    let (res, bytes) = w.write_all(bytes).await;
    (Back::Writer(w), Input::ClientWritten(bytes, res.map(drop)))
}

async fn read_backend(id: BackendId, mut s: TcpStream, buf: Vec<u8>) -> (Back, Input) {
    let (len, cap) = (buf.len(), buf.capacity());
    let (res, slice) = s.read(buf.slice_mut(len..cap)).await;
    (Back::Backend(id, s), Input::BackendRead(id, slice.into_inner(), res))
}

async fn write_backend(id: BackendId, mut s: TcpStream, bytes: Vec<u8>) -> (Back, Input) {
    let (res, bytes) = s.write_all(bytes).await;
    (Back::Backend(id, s), Input::BackendWritten(id, bytes, res.map(drop)))
}

/// The kernel pipe a spliced direction moves its bytes through.
struct KernelPipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes it holds.
    size: usize,
}

impl KernelPipe {
    fn new() -> io::Result<KernelPipe> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let size = rustix::pipe::fcntl_setpipe_size(&write, SPLICE_PIPE)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))?;
        splice_pipe_fits(size).map_err(io::Error::other)?;
        Ok(KernelPipe { read, write, size })
    }
}

/// A spliced tunnel's second handle on each socket: splice calls and readiness waits
/// go through these, in non-blocking mode (set on the socket, so the halves' uring
/// reads and writes are not used while splicing: core gives no splice while one is
/// out, and none after).
struct Splicer {
    client: TcpStream,
    tunnel: TcpStream,
}

impl Splicer {
    fn new(client: RawFd, tunnel: RawFd) -> io::Result<(Splicer, [KernelPipe; 2])> {
        let pipes = [KernelPipe::new()?, KernelPipe::new()?];
        let (client, tunnel) = (dup(client)?, dup(tunnel)?);
        rustix::io::ioctl_fionbio(fd(&client), true)?;
        if let Err(e) = rustix::io::ioctl_fionbio(fd(&tunnel), true) {
            rustix::io::ioctl_fionbio(fd(&client), false)?;
            return Err(e.into());
        }
        Ok((Splicer { client, tunnel }, pipes))
    }
}

/// A monoio stream on a duplicate of this connection's socket `raw`.
#[allow(unsafe_code)]
fn dup(raw: RawFd) -> io::Result<TcpStream> {
    // SAFETY: `raw` belongs to a socket whose halves this connection holds until it
    // ends; it is only borrowed here, to duplicate it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    TcpStream::from_std(std::net::TcpStream::from(borrowed.try_clone_to_owned()?))
}

#[allow(unsafe_code)]
fn fd(s: &TcpStream) -> BorrowedFd<'_> {
    // SAFETY: the stream owns its descriptor for as long as it lives, and the borrow
    // lives no longer than `s`.
    unsafe { BorrowedFd::borrow_raw(s.as_raw_fd()) }
}

/// One splice of direction `up`: what the source has, through the pipe, into the sink.
async fn splice(s: Rc<Splicer>, up: bool, pipe: KernelPipe) -> (Back, Input) {
    let (from, to) = if up { (&s.client, &s.tunnel) } else { (&s.tunnel, &s.client) };
    let result = move_once(from, to, &pipe).await;
    (Back::Pipe(up, pipe), Input::Spliced { up, result })
}

/// A sink whose peer is gone fails with EPIPE; splice has no MSG_NOSIGNAL, so the
/// process must ignore SIGPIPE (Rust programs do from start-up).
async fn move_once(from: &TcpStream, to: &TcpStream, pipe: &KernelPipe) -> Spliced {
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    let n = loop {
        match rustix::pipe::splice(fd(from), None, &pipe.write, None, pipe.size, flags) {
            Ok(0) => return Spliced::Closed,
            Ok(n) => break n,
            Err(Errno::AGAIN) => {
                if let Err(e) = from.readable(false).await {
                    return Spliced::ReadFailed(e);
                }
            }
            Err(Errno::INTR) => {}
            Err(e) => return Spliced::ReadFailed(e.into()),
        }
    };
    let mut left = n;
    while left > 0 {
        match rustix::pipe::splice(&pipe.read, None, fd(to), None, left, flags) {
            Ok(0) => return Spliced::WriteFailed(io::ErrorKind::WriteZero.into()),
            Ok(m) => left -= m,
            Err(Errno::AGAIN) => {
                if let Err(e) = to.writable(false).await {
                    return Spliced::WriteFailed(e);
                }
            }
            Err(Errno::INTR) => {}
            Err(e) => return Spliced::WriteFailed(e.into()),
        }
    }
    Spliced::Moved(n)
}
