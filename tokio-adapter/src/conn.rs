//! One client connection on tokio: `sluice_core::conn::Connection` decides; this task
//! moves its bytes, sleeps until its deadline and keeps its idle backend sockets.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use sluice_core::conn::{BackendId, Connection, Input, Output, Spliced};
use sluice_core::io::Make;
use sluice_core::serve::Listener;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::Shared;
use crate::tell::Notice;

/// A rare operation under way (opening a connection, a lookup, a splice), boxed when
/// started; it hands back what it held with what happened.
type Task<'s> = Pin<Box<dyn Future<Output = (Held, Input)> + Send + 's>>;

/// A socket read or write: the operations every request makes, run in [`Slot`]s (a
/// box per operation cost a malloc and a free each, five per no-op request); a write
/// comes here only for what the socket had no room for at once ([`write_half`]).
/// The client's or the tunnel's: `back` says which half it hands back, `done` which
/// input it makes.
enum Job {
    Read {
        half: OwnedReadHalf,
        buf: Vec<u8>,
        back: fn(OwnedReadHalf) -> Held,
        done: ReadDone,
    },
    /// Write `bytes` from `from` on (what is before it went at once: [`sent`]).
    Write {
        half: OwnedWriteHalf,
        bytes: Vec<u8>,
        from: usize,
        back: fn(OwnedWriteHalf) -> Held,
        done: WriteDone,
    },
    Shutdown {
        half: OwnedWriteHalf,
        back: fn(OwnedWriteHalf) -> Held,
        done: fn(io::Result<()>) -> Input,
    },
    ReadBackend(BackendId, TcpStream, Vec<u8>),
    /// Write the bytes from the offset on (as [`Job::Write`]).
    WriteBackend(BackendId, TcpStream, Vec<u8>, usize),
}

type ReadDone = fn(Vec<u8>, io::Result<usize>) -> Input;
type WriteDone = fn(Vec<u8>, io::Result<()>) -> Input;

async fn hot_op(job: Job) -> (Held, Input) {
    match job {
        Job::Read { mut half, mut buf, back, done } => {
            let res = half.read_buf(&mut buf).await;
            (back(half), done(buf, res))
        }
        Job::Write { mut half, bytes, from, back, done } => {
            let res = half.write_all(bytes.get(from..).unwrap_or_default()).await;
            (back(half), done(bytes, res))
        }
        Job::Shutdown { mut half, back, done } => {
            let res = half.shutdown().await;
            (back(half), done(res))
        }
        Job::ReadBackend(id, mut s, mut buf) => {
            let res = s.read_buf(&mut buf).await;
            (Held::Upstream(id, s), Input::BackendRead(id, buf, res))
        }
        Job::WriteBackend(id, mut s, bytes, from) => {
            let res = s.write_all(bytes.get(from..).unwrap_or_default()).await;
            (Held::Upstream(id, s), Input::BackendWritten(id, bytes, res))
        }
    }
}

/// The future of [`hot_op`].
trait HotOp: Future<Output = (Held, Input)> + Send {}
impl<F: Future<Output = (Held, Input)> + Send> HotOp for F {}

/// What makes them: [`hot_op`] itself (see `sluice_core::io::Make`).
trait HotMake: Make<Job, Op: HotOp> {}
impl<M: Make<Job, Op: HotOp>> HotMake for M {}

/// Where one socket's reads (or writes) run, one at a time, without a box each.
type Slot<M> = sluice_core::io::Slot<Job, M>;

/// What an operation held while it ran.
enum Held {
    ClientReader(OwnedReadHalf),
    ClientWriter(OwnedWriteHalf),
    Upstream(BackendId, TcpStream),
    /// A CONNECT tunnel's connection, just opened, and its halves.
    Tunnel(TcpStream),
    TunnelReader(OwnedReadHalf),
    TunnelWriter(OwnedWriteHalf),
    /// A splice's source and sink halves and its direction's pipe (`true`: up).
    #[cfg(target_os = "linux")]
    Spliced(bool, OwnedReadHalf, OwnedWriteHalf, splice::KernelPipe),
    Empty,
}

/// The connection's sockets, each either at rest or held by its operation.
struct Sockets<'s, M: HotMake> {
    reader: Option<OwnedReadHalf>,
    writer: Option<OwnedWriteHalf>,
    /// Client read, client write.
    client: [Slot<M>; 2],
    /// Waiting for an idle client to send: the reader stays here, polled for
    /// readiness (no future, no box; every slot's box is given back meanwhile).
    awaiting: bool,
    /// A CONNECT tunnel's sockets, made when one opens (out of line: every
    /// connection's task, an idle one's too, would carry them).
    tunnel: Option<Box<Tunnel<'s, M>>>,
    /// By backend id: the socket at rest, its read or write, and the task opening
    /// (or looking up) it.
    upstream: Vec<Upstream<'s, M>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    deadline: Option<Instant>,
}

/// A CONNECT tunnel's connection: its halves at rest, its read and write, and its
/// opening; splicing it: each direction's pipe at rest (up, down) once made, or `Err`
/// when this tunnel cannot be spliced, and each direction's splice.
struct Tunnel<'s, M: HotMake> {
    reader: Option<OwnedReadHalf>,
    writer: Option<OwnedWriteHalf>,
    io: [Slot<M>; 2],
    opening: Option<Task<'s>>,
    #[cfg(target_os = "linux")]
    pipes: Option<Result<[Option<splice::KernelPipe>; 2], ()>>,
    splices: [Option<Task<'s>>; 2],
}

/// The tunnel's sockets, made at first use.
fn tunnel<'a, 's, M: HotMake>(tunnel: &'a mut Option<Box<Tunnel<'s, M>>>, make: M) -> &'a mut Tunnel<'s, M> {
    tunnel.get_or_insert_with(|| {
        Box::new(Tunnel {
            reader: None,
            writer: None,
            io: [Slot::new(make), Slot::new(make)],
            opening: None,
            #[cfg(target_os = "linux")]
            pipes: None,
            splices: [None, None],
        })
    })
}

struct Upstream<'s, M: HotMake> {
    stream: Option<TcpStream>,
    io: Slot<M>,
    task: Option<Task<'s>>,
}

impl<'s, M: HotMake> Sockets<'s, M> {
    /// Backend `id`'s entry, the table grown to hold it (out of line: a connection's
    /// table has its entries after its first request).
    #[inline]
    fn upstream(&mut self, id: BackendId) -> &mut Upstream<'s, M> {
        if self.upstream.len() <= id {
            self.grow_upstream(id);
        }
        &mut self.upstream[id]
    }

    #[inline(never)]
    fn grow_upstream(&mut self, id: BackendId) {
        while self.upstream.len() <= id {
            let io = Slot::new(self.client[0].maker());
            self.upstream.push(Upstream { stream: None, io, task: None });
        }
    }

    fn take_upstream(&mut self, id: BackendId) -> Option<TcpStream> {
        self.upstream(id).stream.take()
    }

    fn run_upstream(&mut self, id: BackendId, task: Task<'s>) {
        self.upstream(id).task = Some(task);
    }

    /// Whichever comes first: an operation's end, the deadline, or `stop` (while not
    /// seen).
    ///
    /// Plain loops, not chained iterators: this runs at every wake (about eight per
    /// aggregation request), and the chains cost it about 60 instructions each time.
    #[inline(always)]
    fn next(&mut self, cx: &mut Context<'_>, stop: Option<&mut Notice<'_>>) -> Poll<(Held, Input)> {
        for slot in &mut self.client {
            if let Poll::Ready(done) = slot.poll(cx) {
                return Poll::Ready(done);
            }
        }
        if let Some(tunnel) = self.tunnel.as_deref_mut() {
            for slot in &mut tunnel.io {
                if let Poll::Ready(done) = slot.poll(cx) {
                    return Poll::Ready(done);
                }
            }
        }
        for upstream in &mut self.upstream {
            if let Poll::Ready(done) = upstream.io.poll(cx) {
                return Poll::Ready(done);
            }
        }
        if self.awaiting
            && let Some(r) = &self.reader
            && let Poll::Ready(res) = r.as_ref().poll_read_ready(cx)
        {
            self.awaiting = false;
            return Poll::Ready((Held::Empty, Input::ClientReady(res)));
        }
        if let Some(Tunnel { opening, splices: [up, down], .. }) = self.tunnel.as_deref_mut() {
            for slot in [opening, up, down] {
                if let Some(done) = poll_task(slot, cx) {
                    return Poll::Ready(done);
                }
            }
        }
        for upstream in &mut self.upstream {
            if let Some(done) = poll_task(&mut upstream.task, cx) {
                return Poll::Ready(done);
            }
        }
        if self.deadline.is_some() && self.sleep.as_mut().poll(cx).is_ready() {
            self.deadline = None;
            return Poll::Ready((Held::Empty, Input::Timeout));
        }
        if stop.is_some_and(|stop| stop.poll(cx).is_ready()) {
            return Poll::Ready((Held::Empty, Input::Stop));
        }
        Poll::Pending
    }

    /// Makes sure the sleep ends by `deadline`; one set for earlier is kept (ending
    /// early is harmless: the connection finds nothing due), so it is reset about once
    /// per endpoint timeout rather than several times per request.
    fn sleep_until(&mut self, deadline: Option<Instant>) {
        let Some(d) = deadline else { return };
        if self.deadline.is_some_and(|at| at <= d) {
            return;
        }
        self.sleep.as_mut().reset(d.into());
        self.deadline = Some(d);
    }

    #[inline]
    fn restore(&mut self, held: Held) {
        match held {
            Held::ClientReader(r) => self.reader = Some(r),
            Held::ClientWriter(w) => self.writer = Some(w),
            Held::Upstream(id, s) => self.upstream(id).stream = Some(s),
            Held::Tunnel(s) => {
                let (r, w) = s.into_split();
                let t = tunnel(&mut self.tunnel, self.client[0].maker());
                (t.reader, t.writer) = (Some(r), Some(w));
            }
            Held::TunnelReader(r) => tunnel(&mut self.tunnel, self.client[0].maker()).reader = Some(r),
            Held::TunnelWriter(w) => tunnel(&mut self.tunnel, self.client[0].maker()).writer = Some(w),
            #[cfg(target_os = "linux")]
            Held::Spliced(up, from, to, pipe) => {
                let t = tunnel(&mut self.tunnel, self.client[0].maker());
                if up {
                    (self.reader, t.writer) = (Some(from), Some(to));
                } else {
                    (t.reader, self.writer) = (Some(from), Some(to));
                }
                if let Some(Ok(pipes)) = &mut t.pipes {
                    pipes[usize::from(!up)] = Some(pipe);
                }
            }
            Held::Empty => {}
        }
    }
}

/// Serves one client connection accepted on `listener` until it closes. When the
/// server stops, or a reload made a newer plan, the connection is told
/// (`shared.tell`), and closes as soon as it has nothing under way.
///
/// An async block, not an async fn: an async fn's arguments are stored twice in its
/// future (as given and as its locals), and the future is most of what an idle
/// connection costs (its task's one allocation).
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: Listener,
) -> impl Future<Output = ()> + Send {
    async move {
        let shared = &*shared;
        // The plan this connection serves to its end: a reload tells it to close at its
        // next request boundary, as the stop does.
        let plan = shared.plan();
        let (gw, balancer, now, wall) = (&plan.gw, &plan.balancer, Instant::now(), SystemTime::now());
        let mut conn = Connection::accept(listener, gw, balancer, &shared.runtime, peer.ip(), now, wall);
        if plan.read_ends
            && listener == Listener::Gateway
            && let Ok(local) = stream.local_addr()
        {
            conn.set_ends(sluice_core::request::Ends { peer, local });
        }
        conn.splice_tunnels(cfg!(target_os = "linux"));
        let (reader, writer) = stream.into_split();
        let mut sockets = Sockets {
            reader: Some(reader),
            writer: Some(writer),
            client: [Slot::new(hot_op), Slot::new(hot_op)],
            awaiting: false,
            tunnel: None,
            upstream: Vec::new(),
            sleep: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            deadline: None,
        };
        let mut notice = shared.tell.notice(plan.generation);
        let mut told = false;
        loop {
            // Outputs answered at once since this drain began (since the last wait or
            // unit of budget).
            let mut at_once = 0u32;
            while let Some(output) = conn.poll() {
                let Some(answered) = begin(shared, &plan, &mut sockets, output) else { return };
                if let Some(input) = answered {
                    conn.handle(input, Instant::now());
                    at_once += 1;
                    if at_once == AT_ONCE_RUN {
                        break;
                    }
                }
            }
            if at_once == AT_ONCE_RUN {
                // What is answered at once takes none of tokio's budget, where the
                // slot's operation it stands for took a unit. A request has a few
                // such answers between its waits (each wait takes a unit); a run of
                // them takes one here, so that a connection answering pipelined
                // requests from what it has read (its writes at once, no wait between
                // them) still lets the worker's other connections run. Out of the
                // drain's loop: an await in it kept the loop's output and answer in
                // the task (128 bytes), and made the loop about 200 instructions a
                // request dearer.
                tokio::task::coop::consume_budget().await;
                continue;
            }
            sockets.sleep_until(conn.poll_timeout());
            let (held, input) = poll_fn(|cx| sockets.next(cx, (!told).then_some(&mut notice))).await;
            told |= matches!(input, Input::Stop);
            sockets.restore(held);
            conn.handle(input, Instant::now());
        }
    }
}

/// How many outputs answered at once in one drain take a unit of tokio's budget (see
/// `serve`): more than a request's own between two waits (a pooled socket, a write to
/// each backend, the answer).
const AT_ONCE_RUN: u32 = 8;

/// A rare task's end, once (its box is dropped then). The check for one is inline and
/// the poll out of line (as `Slot::poll`): every wake asks each backend's, nearly
/// always for none.
#[inline]
fn poll_task<'s>(slot: &mut Option<Task<'s>>, cx: &mut Context<'_>) -> Option<(Held, Input)> {
    if slot.is_none() {
        return None;
    }
    poll_task_out(slot, cx)
}

#[inline(never)]
fn poll_task_out<'s>(slot: &mut Option<Task<'s>>, cx: &mut Context<'_>) -> Option<(Held, Input)> {
    let task = slot.as_mut()?;
    let Poll::Ready(done) = task.as_mut().poll(cx) else { return None };
    *slot = None;
    Some(done)
}

/// Starts an output. `None`: the connection is over; `Some(Some(input))`: answered at
/// once (a write the socket had room for, or that failed: [`write_half`], [`sent`];
/// an idle socket from the pool: [`Input::Connected`]; nothing idle for a name:
/// [`Input::NoIdle`]; the counters: [`Input::Stats`]; or the socket it needs is busy,
/// never the case with a well-behaved core).
#[inline(always)]
fn begin<'s, M: HotMake>(
    shared: &'s Shared,
    plan: &sluice_core::serve::Plan,
    sockets: &mut Sockets<'s, M>,
    output: Output<'s>,
) -> Option<Option<Input>> {
    let busy = || io::Error::from(io::ErrorKind::WouldBlock);
    match output {
        Output::ReadClient(buf) => {
            // Not while the wait is out (core never asks for that).
            let Some(r) = sockets.reader.take_if(|_| !sockets.awaiting) else {
                return Some(Some(Input::ClientRead(buf, Err(busy()))));
            };
            sockets.client[0].start(Job::Read { half: r, buf, back: Held::ClientReader, done: Input::ClientRead });
        }
        Output::AwaitClient => {
            if sockets.reader.is_none() {
                return Some(Some(Input::ClientReady(Err(busy()))));
            }
            sockets.awaiting = true;
            let tunnel = sockets.tunnel.iter_mut().flat_map(|t| &mut t.io);
            sockets.client.iter_mut().chain(tunnel).for_each(Slot::shed);
            // Core has pooled or closed every backend socket before it waits: the
            // table goes too (it is made again at the next call).
            if sockets.upstream.iter().all(|u| u.stream.is_none() && u.task.is_none() && u.io.idle()) {
                sockets.upstream = Vec::new();
            } else {
                sockets.upstream.iter_mut().for_each(|u| u.io.shed());
            }
        }
        Output::WriteClient(bytes) => {
            let (writer, slot) = (&mut sockets.writer, &mut sockets.client[1]);
            return Some(write_half(writer, slot, bytes, Held::ClientWriter, Input::ClientWritten));
        }
        Output::ShutdownClient => {
            let Some(w) = sockets.writer.take() else { return Some(Some(Input::ClientShutdown(Err(busy())))) };
            sockets.client[1].start(Job::Shutdown { half: w, back: Held::ClientWriter, done: Input::ClientShutdown });
        }
        Output::Connect { id, pool_key, pooled, addr } => {
            let upstream = sockets.upstream(id);
            (upstream.stream, upstream.task) = (None, None);
            upstream.io.cancel();
            let idle = if pooled { shared.pool.take(&pool_key) } else { None };
            match (idle, addr) {
                (Some((s, session)), _) => {
                    sockets.upstream(id).stream = Some(s);
                    return Some(Some(Input::Connected(id, Some(session))));
                }
                (None, Some(addr)) => sockets.run_upstream(
                    id,
                    Box::pin(async move {
                        match crate::backend::dial(addr).await {
                            Ok(s) => (Held::Upstream(id, s), Input::Connected(id, None)),
                            Err(e) => (Held::Empty, Input::ConnectFailed(id, e)),
                        }
                    }),
                ),
                (None, None) => return Some(Some(Input::NoIdle(id))),
            }
        }
        Output::ReadBackend { id, buf } => {
            let Some(s) = sockets.take_upstream(id) else {
                return Some(Some(Input::BackendRead(id, buf, Err(busy()))));
            };
            sockets.upstream(id).io.start(Job::ReadBackend(id, s, buf));
        }
        Output::WriteBackend { id, bytes } => {
            let Some(s) = sockets.take_upstream(id) else {
                return Some(Some(Input::BackendWritten(id, bytes, Err(busy()))));
            };
            let res = sent(try_write(&bytes, |b| s.try_write(b)), bytes.len());
            let upstream = sockets.upstream(id);
            match res {
                Ok(None) => {
                    upstream.stream = Some(s);
                    return Some(Some(Input::BackendWritten(id, bytes, Ok(()))));
                }
                Ok(Some(from)) => upstream.io.start(Job::WriteBackend(id, s, bytes, from)),
                Err(e) => {
                    upstream.stream = Some(s);
                    return Some(Some(Input::BackendWritten(id, bytes, Err(e))));
                }
            }
        }
        Output::PoolBackend { id, pool_key, session } => {
            if let Some(s) = sockets.take_upstream(id) {
                shared.pool.put(&pool_key, s, session);
            }
        }
        Output::CloseBackend { id } => {
            let upstream = sockets.upstream(id);
            (upstream.stream, upstream.task) = (None, None);
            upstream.io.cancel();
        }
        Output::Resolve { id, name } => sockets.run_upstream(
            id,
            Box::pin(async move { (Held::Empty, Input::Resolved(id, shared.pool.resolve(&name).await)) }),
        ),
        Output::Discover { id, name } => {
            let name = name.to_string();
            sockets.run_upstream(
                id,
                Box::pin(async move { (Held::Empty, Input::Discovered(id, shared.pool.discover(&name).await)) }),
            )
        }
        Output::OpenTunnel { addr } => {
            tunnel(&mut sockets.tunnel, sockets.client[0].maker()).opening = Some(Box::pin(async move {
                match crate::backend::dial(addr).await {
                    Ok(s) => (Held::Tunnel(s), Input::TunnelOpened(Ok(()))),
                    Err(e) => (Held::Empty, Input::TunnelOpened(Err(e))),
                }
            }));
        }
        Output::ReadTunnel(buf) => {
            let t = tunnel(&mut sockets.tunnel, sockets.client[0].maker());
            let Some(r) = t.reader.take() else {
                return Some(Some(Input::TunnelRead(buf, Err(busy()))));
            };
            t.io[0].start(Job::Read { half: r, buf, back: Held::TunnelReader, done: Input::TunnelRead });
        }
        Output::WriteTunnel(bytes) => {
            let t = tunnel(&mut sockets.tunnel, sockets.client[0].maker());
            return Some(write_half(&mut t.writer, &mut t.io[1], bytes, Held::TunnelWriter, Input::TunnelWritten));
        }
        Output::ShutdownTunnel => {
            let t = tunnel(&mut sockets.tunnel, sockets.client[0].maker());
            let Some(w) = t.writer.take() else {
                return Some(Some(Input::TunnelShutdown(Err(busy()))));
            };
            t.io[1].start(Job::Shutdown { half: w, back: Held::TunnelWriter, done: Input::TunnelShutdown });
        }
        #[cfg(target_os = "linux")]
        Output::Splice { up } => {
            let t = tunnel(&mut sockets.tunnel, sockets.client[0].maker());
            let pipes = t.pipes.get_or_insert_with(|| match splice::KernelPipe::pair() {
                Ok(pipes) => Ok(pipes.map(Some)),
                Err(e) => {
                    tracing::debug!(target: "sluice::forward", "the tunnel copies: cannot splice: {e}");
                    Err(())
                }
            });
            let Ok(pipes) = pipes else { return Some(Some(Input::Spliced { up, result: Spliced::Unsupported })) };
            let pipe = pipes[usize::from(!up)].take();
            let (from, to) = match up {
                true => (sockets.reader.take(), t.writer.take()),
                false => (t.reader.take(), sockets.writer.take()),
            };
            let (Some(pipe), Some(from), Some(to)) = (pipe, from, to) else {
                return Some(Some(Input::Spliced { up, result: Spliced::ReadFailed(busy()) }));
            };
            t.splices[usize::from(!up)] = Some(Box::pin(async move {
                let result = splice::move_once(&from, &to, &pipe).await;
                (Held::Spliced(up, from, to, pipe), Input::Spliced { up, result })
            }));
        }
        #[cfg(not(target_os = "linux"))]
        Output::Splice { up } => return Some(Some(Input::Spliced { up, result: Spliced::Unsupported })),
        Output::Stats => {
            // Keyed by the latest plan, as the page that shows them.
            shared.plan();
            let mut stats = shared.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).stats.clone();
            stats.dns = shared.pool.dns_stats();
            return Some(Some(Input::Stats(Box::new(stats))));
        }
        Output::Log(line) => {
            shared.observe(&line, plan);
            plan.gw.emit(&line);
        }
        Output::Close => return None,
    }
    Some(None)
}

/// Writes `bytes` to the client's or the tunnel's write half (at rest in `writer`):
/// at once when it can ([`sent`]), else what is left in `slot`. The input when the
/// write is over already (all of it went, it failed, or the half is out: never the
/// case with core), the half back in `writer`.
#[inline(always)]
fn write_half<M: HotMake>(
    writer: &mut Option<OwnedWriteHalf>,
    slot: &mut Slot<M>,
    bytes: Vec<u8>,
    back: fn(OwnedWriteHalf) -> Held,
    done: WriteDone,
) -> Option<Input> {
    let Some(half) = writer.take() else { return Some(done(bytes, Err(io::ErrorKind::WouldBlock.into()))) };
    match sent(try_write(&bytes, |b| half.try_write(b)), bytes.len()) {
        Ok(Some(from)) => {
            slot.start(Job::Write { half, bytes, from, back, done });
            None
        }
        res => {
            *writer = Some(half);
            Some(done(bytes, res.map(drop)))
        }
    }
}

/// `write` (a `try_write`) of `bytes`, but no system call for none (core never asks
/// for that; a slot's `write_all` made none either).
#[inline(always)]
fn try_write(bytes: &[u8], write: impl FnOnce(&[u8]) -> io::Result<usize>) -> io::Result<usize> {
    if bytes.is_empty() { Ok(0) } else { write(bytes) }
}

/// What a write tried at once (`try_write`) of `len` bytes did: `Ok(None)`, all of them
/// went; `Ok(Some(from))`, those before `from` went and the rest waits for room in a
/// slot; `Err`, the socket failed. A write nearly always finds room (a request to a
/// backend, an answer to a client), and tokio's write makes the same one system call
/// when tokio knows the socket writable, so trying it here costs nothing more, and
/// saves the slot's start and poll and the wake's walk over the slots.
fn sent(res: io::Result<usize>, len: usize) -> io::Result<Option<usize>> {
    match res {
        Ok(n) if n >= len => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(Some(0)),
        Err(e) => Err(e),
    }
}

/// Splicing a tunnel's bytes: tokio's sockets are non-blocking already, so each splice
/// call runs when tokio says its socket is ready.
#[cfg(target_os = "linux")]
mod splice {
    use std::io;
    use std::os::fd::OwnedFd;

    use rustix::pipe::{PipeFlags, SpliceFlags};
    use sluice_core::conn::{SPLICE_PIPE, Spliced, splice_pipe_fits};
    use tokio::io::Interest;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    /// The kernel pipe a spliced direction moves its bytes through.
    #[derive(Debug)]
    pub(super) struct KernelPipe {
        read: OwnedFd,
        write: OwnedFd,
        /// Bytes it holds.
        size: usize,
    }

    impl KernelPipe {
        /// One pipe per direction.
        pub(super) fn pair() -> io::Result<[KernelPipe; 2]> {
            Ok([KernelPipe::new()?, KernelPipe::new()?])
        }

        fn new() -> io::Result<KernelPipe> {
            let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
            let size = rustix::pipe::fcntl_setpipe_size(&write, SPLICE_PIPE)
                .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))?;
            splice_pipe_fits(size)?;
            Ok(KernelPipe { read, write, size })
        }
    }

    /// One splice: what `from` has, through the pipe, into `to`.
    pub(super) async fn move_once(from: &OwnedReadHalf, to: &OwnedWriteHalf, pipe: &KernelPipe) -> Spliced {
        let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
        let (src, dst) = (from.as_ref(), to.as_ref());
        let n = loop {
            if let Err(e) = src.readable().await {
                return Spliced::ReadFailed(e);
            }
            let spliced = src.try_io(Interest::READABLE, || {
                rustix::pipe::splice(src, None, &pipe.write, None, pipe.size, flags).map_err(io::Error::from)
            });
            match spliced {
                Ok(0) => return Spliced::Closed,
                Ok(n) => break n,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => return Spliced::ReadFailed(e),
            }
        };
        let mut left = n;
        while left > 0 {
            if let Err(e) = dst.writable().await {
                return Spliced::WriteFailed(e);
            }
            let spliced = dst.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(&pipe.read, None, dst, None, left, flags).map_err(io::Error::from)
            });
            match spliced {
                Ok(0) => return Spliced::WriteFailed(io::ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => return Spliced::WriteFailed(e),
            }
        }
        Spliced::Moved(n)
    }
}

// rustix (the send buffer's size) is a dependency on Linux alone.
#[cfg(all(test, target_os = "linux"))]
#[path = "../../tests/support/slow_peer.rs"]
mod slow_peer;

#[cfg(all(test, target_os = "linux"))]
mod writes {
    use std::io::{self, Read};
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    use super::{Held, Input, Job, Slot, hot_op, sent, write_half};

    /// `test` on a current-thread runtime writing to a peer running `peer` on a thread
    /// (`slow_peer`: a 4 KiB send buffer asked, which Linux doubles); the thread's
    /// result.
    fn written_to<T: Send + 'static>(
        peer: impl FnOnce(std::net::TcpStream) -> T + Send + 'static,
        test: impl AsyncFnOnce(TcpStream),
    ) -> T {
        let (stream, thread) = super::slow_peer::slow_peer(peer);
        stream.set_nonblocking(true).expect("non-blocking");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move { test(TcpStream::from_std(stream).expect("tokio stream")).await });
        thread.join().expect("peer")
    }

    fn pattern() -> Vec<u8> {
        (0..4u32 << 20).map(|i| (i % 253) as u8).collect()
    }

    /// `test` writing 4 MiB ([`pattern`]) to a peer that pauses (the send buffer
    /// fills) and then reads every byte to the writer's close: they all come, in order.
    fn whole_in_order(test: impl AsyncFnOnce(TcpStream)) {
        let got = written_to(
            |mut s| {
                std::thread::sleep(Duration::from_millis(50));
                let mut got = Vec::new();
                s.read_to_end(&mut got).expect("read to the writer's close");
                got
            },
            test,
        );
        assert_eq!(got.len(), 4 << 20);
        assert!(got == pattern(), "out of order");
    }

    /// A write at once of [`pattern`] to a socket tokio has just said is writable: a
    /// part goes (it has room), not all (its send buffer is small); where it stopped.
    fn part_at_once(write: impl FnOnce(&[u8]) -> io::Result<usize>) -> usize {
        let all = pattern();
        let from = match sent(super::try_write(&all, write), all.len()) {
            Ok(Some(from)) => from,
            other => panic!("4 MiB at once into a small send buffer: {other:?}"),
        };
        assert!(from > 0 && from < all.len(), "{from}");
        from
    }

    /// What a 4 MiB write's operation ended with: no error, the bytes back, and the
    /// socket it held.
    async fn ended(op: impl Future<Output = (Held, Input)>) -> Held {
        let (held, input) = tokio::time::timeout(Duration::from_secs(10), op).await.expect("written within 10 s");
        let (Input::ClientWritten(back, res) | Input::BackendWritten(_, back, res)) = input else {
            panic!("{input:?}")
        };
        assert!(res.is_ok(), "{res:?}");
        assert_eq!(back.len(), 4 << 20, "the bytes come back");
        held
    }

    /// The write at once takes a part, and the slot's write goes on from where it
    /// stopped.
    #[test]
    fn a_write_at_once_that_takes_a_part_is_finished_from_where_it_stopped() {
        whole_in_order(async move |s| {
            let (_, w) = s.into_split();
            // tokio knows a new socket writable only once it has polled it.
            w.writable().await.expect("writable");
            let from = part_at_once(|b| w.try_write(b));
            let job =
                Job::Write { half: w, bytes: pattern(), from, back: Held::ClientWriter, done: Input::ClientWritten };
            assert!(matches!(ended(hot_op(job)).await, Held::ClientWriter(_)), "the write half comes back");
        });
    }

    /// The driver's own path (`write_half`, as `begin` calls it for a client write):
    /// what does not go at once is left to the slot, which finishes it; the half comes
    /// back when the slot ends.
    #[test]
    fn a_write_too_big_to_go_at_once_ends_in_its_slot() {
        whole_in_order(async move |s| {
            let (_, w) = s.into_split();
            w.writable().await.expect("writable");
            let mut writer = Some(w);
            let mut slot = Slot::new(hot_op);
            let answer = write_half(&mut writer, &mut slot, pattern(), Held::ClientWriter, Input::ClientWritten);
            assert!(answer.is_none(), "4 MiB answered at once: {answer:?}");
            assert!(writer.is_none() && !slot.idle(), "the half is out with the slot's write");
            let held = ended(std::future::poll_fn(|cx| slot.poll(cx))).await;
            assert!(matches!(held, Held::ClientWriter(_)), "the write half comes back");
        });
    }

    /// A backend write's part that did not go at once is finished by its slot's job
    /// from where the write at once stopped (`Job::WriteBackend`'s offset), and the
    /// stream comes back under its id.
    #[test]
    fn a_backend_write_goes_on_from_where_the_write_at_once_stopped() {
        whole_in_order(async move |s| {
            s.writable().await.expect("writable");
            let from = part_at_once(|b| s.try_write(b));
            let held = ended(hot_op(Job::WriteBackend(3, s, pattern(), from))).await;
            assert!(matches!(held, Held::Upstream(3, _)), "the stream comes back under its id");
        });
    }

    /// A short write goes at once: answered in `write_half`, the half back where it
    /// was, nothing in the slot; an empty one too, without a system call.
    #[test]
    fn a_short_write_is_answered_at_once() {
        let read_all = |mut s: std::net::TcpStream| {
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("read to the writer's close");
            got
        };
        let got = written_to(read_all, async move |s| {
            let (_, w) = s.into_split();
            w.writable().await.expect("writable");
            let mut writer = Some(w);
            let mut slot = Slot::new(hot_op);
            for bytes in [b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec(), Vec::new()] {
                let len = bytes.len();
                match write_half(&mut writer, &mut slot, bytes, Held::ClientWriter, Input::ClientWritten) {
                    Some(Input::ClientWritten(back, Ok(()))) => assert_eq!(back.len(), len),
                    other => panic!("{other:?}"),
                }
                assert!(writer.is_some() && slot.idle(), "the half is back, the slot unused");
            }
        });
        assert_eq!(got, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        let none = super::try_write(&[], |_| unreachable!("a system call for nothing"));
        assert_eq!(none.ok(), Some(0));
    }

    /// A write at once to a peer that has closed: once its close has come, a write
    /// may still go (the peer answers it with a reset), then one fails with the
    /// system's error, which is the write's answer. No hang, no panic.
    #[test]
    fn a_write_at_once_to_a_closed_peer_fails() {
        written_to(drop, async move |mut s| {
            let closed = tokio::time::timeout(Duration::from_secs(10), s.read(&mut [0; 1])).await;
            assert!(matches!(closed, Ok(Ok(0))), "the peer's close: {closed:?}");
            let fails = async {
                loop {
                    s.writable().await.expect("writable");
                    if let Err(e) = sent(s.try_write(b"GET / HTTP/1.1\r\n\r\n"), 18) {
                        break e;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            let e = tokio::time::timeout(Duration::from_secs(10), fails).await.expect("a write failed within 10 s");
            assert!(matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset), "{e}");
        });
    }

    /// What `sent` makes of each answer a write at once can get.
    #[test]
    fn what_a_write_at_once_did() {
        assert_eq!(sent(Ok(10), 10).ok(), Some(None), "all of it");
        assert_eq!(sent(Ok(0), 0).ok(), Some(None), "nothing to write");
        assert_eq!(sent(Ok(4), 10).ok(), Some(Some(4)), "a part: the rest from 4");
        assert_eq!(sent(Ok(0), 10).ok(), Some(Some(0)), "none: all of it in the slot");
        assert_eq!(sent(Err(io::ErrorKind::WouldBlock.into()), 10).ok(), Some(Some(0)), "no room");
        assert_eq!(sent(Err(io::ErrorKind::Interrupted.into()), 10).ok(), Some(Some(0)), "interrupted");
        let e = sent(Err(io::ErrorKind::BrokenPipe.into()), 10).expect_err("a failure is the write's answer");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
