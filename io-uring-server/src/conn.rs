//! One client connection: `sluice_core::conn::Connection` decides, this loop moves its
//! bytes over monoio sockets, sets its deadline in the shard's timer (`timer.rs`) and
//! keeps its idle backend sockets.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use rustix::io::Errno;
use rustix::pipe::{PipeFlags, SpliceFlags};
use sluice_core::conn::{BackendId, Connection, Input, Output, SPLICE_PIPE, Spliced, splice_pipe_fits};
use sluice_core::io::Make;
use sluice_core::serve::Listener;

use crate::Shard;
use crate::backend::BackendStream;
use crate::timer::Timer;

/// A rare operation (opening a connection, a lookup, a splice, an admin page): boxed
/// when started.
type Op<'a> = Pin<Box<dyn Future<Output = (Back, Input)> + 'a>>;

/// The future of [`hot_op`]: what every socket read and write of a connection is.
trait HotOp: Future<Output = (Back, Input)> {}
impl<F: Future<Output = (Back, Input)>> HotOp for F {}

/// What makes them: [`hot_op`] itself (see `sluice_core::io::Make`).
trait HotMake: Make<Job, Op: HotOp> {}
impl<M: Make<Job, Op: HotOp>> HotMake for M {}

/// Where one socket's reads (or writes) run, one at a time, without a box each.
type Slot<M> = sluice_core::io::Slot<Job, M>;

/// The byte streams a connection reads and writes as such, by index: the client's
/// socket, and a CONNECT tunnel's connection.
const CLIENT: usize = 0;
const TUNNEL: usize = 1;

/// The socket (half) a finished operation hands back.
enum Back {
    /// A read half of the client ([`CLIENT`]) or the tunnel ([`TUNNEL`]).
    Reader(usize, OwnedReadHalf<TcpStream>),
    Writer(usize, OwnedWriteHalf<TcpStream>),
    /// The client, after waiting for it whole (its stream is in [`Ops::waiting`]).
    Waited,
    Backend(BackendId, BackendStream),
    /// A CONNECT tunnel's connection, just opened (boxed: `Back` is in every
    /// operation's output, and the stream is 80 bytes).
    Tunnel(Box<TcpStream>),
    /// A spliced direction's kernel pipe (`true`: up).
    Pipe(bool, KernelPipe),
    Nothing,
}

/// A socket read or write: the operations every request makes, run in [`Slot`]s (a
/// box per operation cost a malloc and a free each, five per no-op request).
enum Job {
    /// Read from stream `side` into the spare room of `buf`.
    Read {
        side: usize,
        half: OwnedReadHalf<TcpStream>,
        buf: Vec<u8>,
        done: fn(Vec<u8>, io::Result<usize>) -> Input,
    },
    /// Write all of `bytes` to stream `side`.
    Write {
        side: usize,
        half: OwnedWriteHalf<TcpStream>,
        bytes: Vec<u8>,
        done: fn(Vec<u8>, io::Result<()>) -> Input,
    },
    /// Shut stream `side`'s write side.
    Shutdown {
        side: usize,
        half: OwnedWriteHalf<TcpStream>,
        done: fn(io::Result<()>) -> Input,
    },
    ReadBackend(BackendId, BackendStream, Vec<u8>),
    WriteBackend(BackendId, BackendStream, Vec<u8>),
}

/// Writes all of `$bytes` (a `Vec<u8>`) to `$stream`, as monoio's `write_all` does
/// (a write of no bytes is an error, an interrupted one is tried again), but inline in
/// the future it is in: `write_all` is an async fn of its own, whose future was built
/// and moved into [`hot_op`]'s at every write. Gives back the result and the bytes.
macro_rules! write_whole {
    ($stream:expr, $bytes:expr) => {{
        let mut bytes: Vec<u8> = $bytes;
        let (len, mut written, mut res) = (bytes.len(), 0, Ok(()));
        while written < len {
            let (wrote, slice) = $stream.write(bytes.slice(written..)).await;
            bytes = slice.into_inner();
            match wrote {
                Ok(0) => {
                    res = Err(io::Error::new(io::ErrorKind::WriteZero, "failed to write whole buffer"));
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        (res, bytes)
    }};
}

async fn hot_op(job: Job) -> (Back, Input) {
    match job {
        Job::Read { side, mut half, buf, done } => {
            let (len, cap) = (buf.len(), buf.capacity());
            let (res, slice) = half.read(buf.slice_mut(len..cap)).await;
            (Back::Reader(side, half), done(slice.into_inner(), res))
        }
        Job::Write { side, mut half, bytes, done } => {
            let (res, bytes) = write_whole!(half, bytes);
            (Back::Writer(side, half), done(bytes, res))
        }
        Job::Shutdown { side, mut half, done } => {
            let res = half.shutdown().await;
            (Back::Writer(side, half), done(res))
        }
        Job::ReadBackend(id, mut s, buf) => {
            let (len, cap) = (buf.len(), buf.capacity());
            let (res, slice) = s.read(buf.slice_mut(len..cap)).await;
            (Back::Backend(id, s), Input::BackendRead(id, slice.into_inner(), res))
        }
        Job::WriteBackend(id, mut s, bytes) => {
            let (res, bytes) = write_whole!(s, bytes);
            (Back::Backend(id, s), Input::BackendWritten(id, bytes, res))
        }
    }
}

/// A backend socket of this connection: idle in `stream`, held by a read or write in
/// `io`, or being opened (or looked up) in `op`.
struct Backend<'a, M: HotMake> {
    stream: Option<BackendStream>,
    op: Option<Op<'a>>,
    io: Slot<M>,
}

/// The operations under way on one connection's sockets.
struct Ops<'a, M: HotMake> {
    /// The client's and the tunnel's halves at rest ([`CLIENT`], [`TUNNEL`]), and
    /// the read and the write out on each.
    readers: [Option<OwnedReadHalf<TcpStream>>; 2],
    writers: [Option<OwnedWriteHalf<TcpStream>>; 2],
    reads: [Slot<M>; 2],
    writes: [Slot<M>; 2],
    /// The wait for an idle client to send (boxed: every slot's box is given back
    /// meanwhile), and the client's stream it waits on (shared with it, so that a
    /// write can end the wait and take the stream back: [`Ops::end_wait`]).
    awaiting: Option<Op<'a>>,
    waiting: Option<Rc<TcpStream>>,
    backends: Vec<Backend<'a, M>>,
    /// The client socket's descriptor (kept open by its halves), for splicing.
    client_fd: RawFd,
    /// What only a tunnel or an admin page uses, made at its first use (out of line:
    /// every connection's task, an idle one's too, would carry it).
    rare: Option<Box<Rare<'a>>>,
    /// What an output's start answered at once.
    at_once: Option<Input>,
    /// The connection's deadline in the shard's timer, and the instant it is set for,
    /// while it is.
    timer: Timer<'a>,
    armed: Option<Instant>,
}

/// A CONNECT tunnel's and an admin page's operations.
#[derive(Default)]
struct Rare<'a> {
    /// The tunnel's connection being opened, and its descriptor (kept open by its
    /// halves), for splicing.
    opening: Option<Op<'a>>,
    tunnel_fd: Option<RawFd>,
    /// Splicing the tunnel: not tried yet, ready, or impossible (then never again).
    splicer: Option<Result<Rc<Splicer>, ()>>,
    /// Each direction's pipe at rest (up, down) and its splice.
    pipes: [Option<KernelPipe>; 2],
    splices: [Option<Op<'a>>; 2],
    /// Every shard's counters being gathered (an admin page).
    gather: Option<Op<'a>>,
}

impl<'a, M: HotMake> Ops<'a, M> {
    fn new(client: TcpStream, make: M, timer: Timer<'a>) -> Self {
        let client_fd = client.as_raw_fd();
        let (reader, writer) = client.into_split();
        Ops {
            readers: [Some(reader), None],
            writers: [Some(writer), None],
            reads: [Slot::new(make), Slot::new(make)],
            writes: [Slot::new(make), Slot::new(make)],
            awaiting: None,
            waiting: None,
            backends: Vec::new(),
            client_fd,
            rare: None,
            at_once: None,
            timer,
            armed: None,
        }
    }

    fn rare(&mut self) -> &mut Rare<'a> {
        self.rare.get_or_insert_default()
    }

    /// Backend `id`'s entry, the table grown to hold it (out of line: a connection's
    /// table has its entries after its first request).
    #[inline]
    fn backend(&mut self, id: BackendId) -> &mut Backend<'a, M> {
        if self.backends.len() <= id {
            self.grow_backends(id);
        }
        &mut self.backends[id]
    }

    #[inline(never)]
    fn grow_backends(&mut self, id: BackendId) {
        let make = self.reads[CLIENT].maker();
        self.backends.resize_with(id + 1, || Backend { stream: None, op: None, io: Slot::new(make) });
    }

    /// Makes sure the timer goes off by `deadline`. A timer already set for earlier is
    /// kept: going off early is harmless (the connection finds nothing due and gives
    /// its next deadline), and most deadlines move later (a keep-alive connection's
    /// next exchange deadline is after its last one), so the timer is set about once
    /// per endpoint timeout instead of several times per request.
    fn arm(&mut self, deadline: Option<Instant>) {
        let Some(d) = deadline else { return };
        if self.armed.is_some_and(|at| at <= d) {
            return;
        }
        self.timer.arm(d);
        self.armed = Some(d);
    }

    /// The first operation to finish, the timer, or the stop (`stop`: not seen yet).
    #[inline(always)]
    fn poll_wake(
        &mut self,
        cx: &mut Context<'_>,
        stop: Option<Pin<&mut impl Future<Output = ()>>>,
    ) -> Poll<(Back, Input)> {
        let ([read, tunnel_read], [write, tunnel_write]) = (&mut self.reads, &mut self.writes);
        for slot in [read, write, tunnel_read, tunnel_write] {
            if let Poll::Ready(done) = slot.poll(cx) {
                return Poll::Ready(done);
            }
        }
        for backend in &mut self.backends {
            if let Poll::Ready(done) = backend.io.poll(cx) {
                return Poll::Ready(done);
            }
            if let Some(done) = poll_op(&mut backend.op, cx) {
                return Poll::Ready(done);
            }
        }
        if let Some(done) = poll_op(&mut self.awaiting, cx) {
            return Poll::Ready(done);
        }
        if let Some(Rare { opening, splices: [up, down], gather, .. }) = self.rare.as_deref_mut() {
            for op in [opening, up, down, gather] {
                if let Some(done) = poll_op(op, cx) {
                    return Poll::Ready(done);
                }
            }
        }
        if self.armed.is_some() && self.timer.poll(cx).is_ready() {
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
        let client_fd = self.client_fd;
        let rare = self.rare();
        if rare.splicer.is_none() {
            let made = rare.tunnel_fd.ok_or_else(gone).and_then(|tunnel| Splicer::new(client_fd, tunnel));
            rare.splicer = Some(match made {
                Ok((splicer, pipes)) => {
                    rare.pipes = pipes.map(Some);
                    Ok(Rc::new(splicer))
                }
                Err(e) => {
                    tracing::debug!(target: "sluice::forward", "the tunnel copies: cannot splice: {e}");
                    Err(())
                }
            });
        }
        let Some(Ok(splicer)) = &rare.splicer else { return Err(Spliced::Unsupported) };
        match rare.pipes[usize::from(!up)].take() {
            Some(pipe) => Ok((splicer.clone(), pipe)),
            // A second splice of one direction (the connection never asks for that).
            None => Err(Spliced::ReadFailed(gone())),
        }
    }

    /// Reads from `side` into `buf`; `done` makes the input (at once when the half is
    /// out: the connection never asks for that).
    fn read(&mut self, side: usize, buf: Vec<u8>, done: fn(Vec<u8>, io::Result<usize>) -> Input) {
        let Some(half) = self.readers[side].take() else { return self.at_once = Some(done(buf, Err(gone()))) };
        self.reads[side].start(Job::Read { side, half, buf, done });
    }

    /// Waits until the client socket is readable, holding no buffer. monoio waits on a
    /// whole stream, so the halves are put together for the wait and split again
    /// after. A write or shutdown asked for meanwhile (a TLS session's close_notify
    /// when an idle connection times out or the gateway stops) ends the wait first
    /// ([`Ops::end_wait`]); core then asks for no `ClientReady`. Either half out (never
    /// the case with core): ready at once, both halves left where they are, and core's
    /// read goes ahead as usual. The slots' boxes are given back while the client is
    /// idle.
    fn await_client(&mut self) {
        match (self.readers[CLIENT].take(), self.writers[CLIENT].take()) {
            (Some(r), Some(w)) => match r.reunite(w) {
                Ok(stream) => {
                    let stream = Rc::new(stream);
                    let waited = stream.clone();
                    self.awaiting = Some(Box::pin(async move {
                        let res = waited.readable(false).await;
                        drop(waited);
                        (Back::Waited, Input::ClientReady(res))
                    }));
                    self.waiting = Some(stream);
                    self.reads.iter_mut().chain(&mut self.writes).for_each(Slot::shed);
                    // Core has pooled or closed every backend socket before it waits:
                    // the table goes too (it is made again at the next call).
                    if self.backends.iter().all(|b| b.stream.is_none() && b.op.is_none() && b.io.idle()) {
                        self.backends = Vec::new();
                    } else {
                        self.backends.iter_mut().for_each(|b| b.io.shed());
                    }
                }
                Err(halves) => {
                    (self.readers[CLIENT], self.writers[CLIENT]) = (Some(halves.0), Some(halves.1));
                    self.at_once = Some(Input::ClientReady(Ok(())));
                }
            },
            (r, w) => {
                (self.readers[CLIENT], self.writers[CLIENT]) = (r, w);
                self.at_once = Some(Input::ClientReady(Ok(())));
            }
        }
    }

    /// Ends the wait for the client, if one is out (its readiness operation is dropped,
    /// which cancels it), and puts the client's halves back.
    fn end_wait(&mut self) {
        self.awaiting = None;
        if let Some(stream) = self.waiting.take().and_then(|s| Rc::try_unwrap(s).ok()) {
            let (r, w) = stream.into_split();
            (self.readers[CLIENT], self.writers[CLIENT]) = (Some(r), Some(w));
        }
    }

    /// Writes all of `bytes` to `side` (as [`Ops::read`]).
    fn write(&mut self, side: usize, bytes: Vec<u8>, done: fn(Vec<u8>, io::Result<()>) -> Input) {
        if side == CLIENT && self.waiting.is_some() {
            self.end_wait();
        }
        let Some(half) = self.writers[side].take() else { return self.at_once = Some(done(bytes, Err(gone()))) };
        self.writes[side].start(Job::Write { side, half, bytes, done });
    }

    /// Shuts `side`'s write side (as [`Ops::read`]).
    fn shutdown(&mut self, side: usize, done: fn(io::Result<()>) -> Input) {
        if side == CLIENT && self.waiting.is_some() {
            self.end_wait();
        }
        let Some(half) = self.writers[side].take() else { return self.at_once = Some(done(Err(gone()))) };
        self.writes[side].start(Job::Shutdown { side, half, done });
    }

    #[inline]
    fn give_back(&mut self, back: Back) {
        match back {
            Back::Reader(side, r) => self.readers[side] = Some(r),
            Back::Writer(side, w) => self.writers[side] = Some(w),
            Back::Waited => self.end_wait(),
            Back::Backend(id, s) => self.backend(id).stream = Some(s),
            Back::Tunnel(s) => {
                self.rare().tunnel_fd = Some(s.as_raw_fd());
                let (r, w) = (*s).into_split();
                (self.readers[TUNNEL], self.writers[TUNNEL]) = (Some(r), Some(w));
            }
            Back::Pipe(up, pipe) => self.rare().pipes[usize::from(!up)] = Some(pipe),
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
/// Counted open from the call (before the task first runs: a stop that waits for open
/// connections waits for this one too).
///
/// One async block, not an async fn inside one: an async fn's arguments are stored
/// twice in its future (as given and as its locals), and the wrapper's once more, and
/// the future is what an idle connection costs (its task's one allocation).
pub(crate) fn serve(
    shard: Rc<Shard>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: Listener,
) -> impl std::future::Future<Output = ()> {
    shard.active.set(shard.active.get() + 1);
    let active = Active(shard);
    async move {
        // Dropped last: the connection counts as open until all of it is gone.
        let counted = active;
        let shard = &counted.0;
        // The plan this connection serves to its end (a reload closes it at its next
        // request boundary: `signal`).
        let plan = shard.plan();
        let place = shard.stopping.register(plan.generation);
        let mut stop = std::pin::pin!(place.wait());
        let mut stop_seen = false;
        let (gw, balancer, now, wall) = (&plan.gw, &plan.balancer, Instant::now(), SystemTime::now());
        let mut conn = Connection::accept(listener, gw, balancer, &shard.runtime, peer.ip(), now, wall);
        if plan.read_ends
            && listener == Listener::Gateway
            && let Ok(local) = stream.local_addr()
        {
            conn.set_ends(sluice_core::request::Ends { peer, local });
        }
        conn.splice_tunnels(true);
        let mut ops = Ops::new(stream, hot_op, shard.timers.timer());
        loop {
            while let Some(output) = conn.poll() {
                if !start(shard, &plan, &mut ops, output, &mut conn) {
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
}

/// Starts what the connection asked for. `false`: the connection is over.
#[inline(always)]
fn start<'a, M: HotMake>(
    shard: &'a Rc<Shard>,
    plan: &sluice_core::serve::Plan,
    ops: &mut Ops<'a, M>,
    output: Output<'a>,
    conn: &mut Connection<'_>,
) -> bool {
    match output {
        Output::ReadClient(buf) => ops.read(CLIENT, buf, Input::ClientRead),
        Output::AwaitClient => ops.await_client(),
        Output::WriteClient(bytes) => ops.write(CLIENT, bytes, Input::ClientWritten),
        Output::ShutdownClient => ops.shutdown(CLIENT, Input::ClientShutdown),
        Output::ReadTunnel(buf) => ops.read(TUNNEL, buf, Input::TunnelRead),
        Output::WriteTunnel(bytes) => ops.write(TUNNEL, bytes, Input::TunnelWritten),
        Output::ShutdownTunnel => ops.shutdown(TUNNEL, Input::TunnelShutdown),
        Output::Connect { id, pool_key, pooled, addr } => {
            let idle = if pooled { shard.pool.take(&pool_key) } else { None };
            let (stream, op): (_, Option<Op<'a>>) = match (idle, addr) {
                (Some((s, session)), _) => {
                    ops.at_once = Some(Input::Connected(id, Some(session)));
                    (Some(s), None)
                }
                (None, Some(addr)) => (
                    None,
                    Some(Box::pin(async move {
                        match crate::backend::dial(addr).await {
                            Ok(s) => (Back::Backend(id, Box::new(s)), Input::Connected(id, None)),
                            Err(e) => (Back::Nothing, Input::ConnectFailed(id, e)),
                        }
                    })),
                ),
                (None, None) => {
                    ops.at_once = Some(Input::NoIdle(id));
                    (None, None)
                }
            };
            let backend = ops.backend(id);
            (backend.stream, backend.op) = (stream, op);
            backend.io.cancel();
        }
        Output::ReadBackend { id, buf } => {
            let backend = ops.backend(id);
            match backend.stream.take() {
                Some(s) => backend.io.start(Job::ReadBackend(id, s, buf)),
                None => ops.at_once = Some(Input::BackendRead(id, buf, Err(gone()))),
            }
        }
        Output::WriteBackend { id, bytes } => {
            let backend = ops.backend(id);
            match backend.stream.take() {
                Some(s) => backend.io.start(Job::WriteBackend(id, s, bytes)),
                None => ops.at_once = Some(Input::BackendWritten(id, bytes, Err(gone()))),
            }
        }
        Output::PoolBackend { id, pool_key, session } => {
            if let Some(s) = ops.backend(id).stream.take() {
                shard.pool.put(&pool_key, s, session);
            }
        }
        Output::CloseBackend { id } => {
            let backend = ops.backend(id);
            (backend.stream, backend.op) = (None, None);
            backend.io.cancel();
        }
        Output::Resolve { id, name } => {
            ops.backend(id).op =
                Some(Box::pin(async move { (Back::Nothing, Input::Resolved(id, shard.pool.resolve(&name).await)) }));
        }
        Output::Discover { id, name } => {
            ops.backend(id).op =
                Some(Box::pin(async move { (Back::Nothing, Input::Discovered(id, shard.pool.discover(name).await)) }));
        }
        Output::OpenTunnel { addr } => {
            ops.rare().opening = Some(Box::pin(async move {
                match crate::backend::dial(addr).await {
                    Ok(s) => (Back::Tunnel(Box::new(s)), Input::TunnelOpened(Ok(()))),
                    Err(e) => (Back::Nothing, Input::TunnelOpened(Err(e))),
                }
            }));
        }
        Output::Splice { up } => match ops.splice_kit(up) {
            Ok((splicer, pipe)) => ops.rare().splices[usize::from(!up)] = Some(Box::pin(splice(splicer, up, pipe))),
            Err(result) => ops.at_once = Some(Input::Spliced { up, result }),
        },
        Output::Stats => {
            ops.rare().gather = Some(Box::pin(async move {
                (Back::Nothing, Input::Stats(Box::new(crate::admin::gather(&shard.published).await)))
            }));
        }
        Output::Log(line) => {
            shard.observe(&line, plan);
            plan.gw.emit(&line);
        }
        Output::Close => return false,
    }
    if let Some(input) = ops.at_once.take() {
        conn.handle(input, Instant::now());
    }
    true
}

/// Polls a rare operation, if one is out; `Some` once, when it ends. The check for
/// one is inline and the poll out of line (as `Slot::poll`): every wake asks each
/// backend's and the idle wait's, nearly always for none, and the call alone cost
/// about 18 instructions an ask.
#[inline]
fn poll_op(op: &mut Option<Op<'_>>, cx: &mut Context<'_>) -> Option<(Back, Input)> {
    if op.is_none() {
        return None;
    }
    poll_op_out(op, cx)
}

#[inline(never)]
fn poll_op_out(op: &mut Option<Op<'_>>, cx: &mut Context<'_>) -> Option<(Back, Input)> {
    let done = match op.as_mut()?.as_mut().poll(cx) {
        Poll::Ready(done) => done,
        Poll::Pending => return None,
    };
    *op = None;
    Some(done)
}

/// A socket asked for while an operation holds it (the connection never does that).
fn gone() -> io::Error {
    io::ErrorKind::NotConnected.into()
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
        splice_pipe_fits(size)?;
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

#[cfg(test)]
mod sizes {
    /// The size of what a maker returns: the future of an async fn has no name.
    fn made<J, F>(_: fn(J) -> F) -> usize {
        size_of::<F>()
    }

    /// Every socket read and write writes its job into its slot's future (in the
    /// slot's box) and moves its `(Back, Input)` out of it: a backend stream held by
    /// value there (80 bytes) made the future 576 bytes, `Job` 120 and `Back` 96
    /// (the aggregation request 850 instructions dearer on the whole, 670 of them in
    /// memcpy). Now 352 (384 before the write loop was inlined, `write_whole`), 56 and 24.
    #[test]
    fn an_operations_job_future_and_what_it_hands_back_stay_small() {
        assert!(size_of::<super::Job>() <= 64, "Job: {} bytes", size_of::<super::Job>());
        assert!(size_of::<super::Back>() <= 32, "Back: {} bytes", size_of::<super::Back>());
        assert!(made(super::hot_op) <= 400, "hot_op's future: {} bytes", made(super::hot_op));
    }
}

#[cfg(test)]
#[path = "../../tests/support/slow_peer.rs"]
mod slow_peer;

#[cfg(test)]
mod writes {
    use std::io::{self, Read};
    use std::time::Duration;

    use monoio::buf::IoBuf;
    use monoio::io::AsyncWriteRent;
    use monoio::net::TcpStream;

    async fn write_whole(s: &mut TcpStream, bytes: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        write_whole!(s, bytes)
    }

    /// `test` on a monoio runtime (io_uring where the kernel has it, as the server)
    /// writing to a peer running `peer` on a thread (`slow_peer`); the thread's result.
    fn written_to<T: Send + 'static>(
        peer: impl FnOnce(std::net::TcpStream) -> T + Send + 'static,
        test: impl AsyncFnOnce(TcpStream),
    ) -> T {
        let (stream, thread) = super::slow_peer::slow_peer(peer);
        let mut runtime =
            monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().expect("runtime");
        runtime.block_on(async move { test(TcpStream::from_std(stream).expect("monoio stream")).await });
        thread.join().expect("peer")
    }

    /// `write_whole`, failing the test after 10 s (a loop that never ends).
    async fn write_within(s: &mut TcpStream, bytes: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        monoio::time::timeout(Duration::from_secs(10), write_whole(s, bytes)).await.expect("written within 10 s")
    }

    /// 4 MiB into a 4 KiB send buffer, read after a pause: the sends come back short,
    /// and each next one starts where the last stopped.
    #[test]
    fn bytes_more_than_a_send_takes_are_written_whole_in_order() {
        let bytes: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let sent = bytes.clone();
        let got = written_to(
            |mut s| {
                std::thread::sleep(Duration::from_millis(50));
                let mut got = Vec::new();
                s.read_to_end(&mut got).expect("read to the writer's shutdown");
                got
            },
            async move |mut s| {
                let (res, back) = write_within(&mut s, sent).await;
                assert!(res.is_ok(), "{res:?}");
                assert_eq!(back.len(), 4 << 20, "the bytes come back");
                s.shutdown().await.expect("shutdown");
            },
        );
        assert_eq!(got.len(), bytes.len());
        assert!(got == bytes, "out of order");
    }

    /// A peer that closes at once: the write fails (reset, broken pipe) and the bytes
    /// come back; no hang, no panic.
    #[test]
    fn a_write_to_a_closed_peer_fails_and_gives_the_bytes_back() {
        written_to(
            |s| {
                // Unread bytes at the close make it a reset.
                std::thread::sleep(Duration::from_millis(20));
                drop(s);
            },
            async move |mut s| {
                let (res, back) = write_within(&mut s, vec![7; 8 << 20]).await;
                assert!(res.is_err(), "8 MiB to a closed peer: {res:?}");
                assert_eq!(back.len(), 8 << 20);
            },
        );
    }
}
