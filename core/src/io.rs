//! The driver surface: what a driver is asked to do ([`Output`]), what it reports
//! back ([`Input`]), the ids of a connection's backend connections, the
//! [`Session`] a pooled backend socket carries, and the [`Slot`] both drivers run
//! socket operations in. Everything a driver matches on is
//! here; [`crate::conn::Connection`] is the state machine that speaks it.

use std::borrow::Cow;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::event::Log;
use crate::forward::tunnel::Spliced;
use crate::ops::stats::Stats;
use crate::resolve::dns::DnsError;
use crate::resolve::srv::SrvSet;
use crate::tls::link::TlsLink;

/// Names a backend connection of one client connection. Ids are reused once a
/// connection is pooled or closed, and by the next call a kept connection serves
/// (see [`Output::PoolBackend`]).
pub type BackendId = usize;

/// What the driver does next (see [`crate::conn`] for the loop).
#[derive(Debug)]
pub enum Output<'g> {
    /// Read from the client, appending to this buffer (after its length, within its
    /// capacity); then [`crate::conn::Connection::handle_client_read`] with it.
    ReadClient(Vec<u8>),
    /// Wait until the client socket has bytes to read (or is closed, or failed),
    /// holding no buffer; then [`Input::ClientReady`]. Given instead of
    /// [`Output::ReadClient`] while a keep-alive connection waits for its next
    /// request, so that an idle connection holds no read buffer; never while a client
    /// write or shutdown is out (a driver may hold both socket halves for the wait).
    /// The one write given while it is out is a TLS session's close_notify as the
    /// connection closes (idle timeout, stop): the driver may then end the wait without
    /// an answer, since core reads no more.
    AwaitClient,
    /// Write all of these bytes to the client; then [`crate::conn::Connection::handle_client_written`].
    WriteClient(Vec<u8>),
    /// Open backend connection `id`: an idle one kept under `pool_key` when `pooled`
    /// allows it and there is one, else a new one to `addr`. Then [`Input::Connected`]
    /// (saying which) or [`Input::ConnectFailed`]. Without an `addr` (the host is a
    /// name) and no idle connection to take, answer [`Input::NoIdle`]: core then
    /// resolves the name ([`Output::Resolve`]) and asks again with its address. The
    /// driver never resolves a name itself.
    Connect { id: BackendId, pool_key: Cow<'g, str>, pooled: bool, addr: Option<SocketAddr> },
    /// Read from backend connection `id` into this buffer, as for the client.
    ReadBackend { id: BackendId, buf: Vec<u8> },
    /// Write all of these bytes to backend connection `id`.
    WriteBackend { id: BackendId, bytes: Vec<u8> },
    /// Backend connection `id` finished its response cleanly: keep it idle under
    /// `pool_key` with `session` beside it (the pool may still close it when full).
    /// Until this or [`Output::CloseBackend`] comes, the socket stays the
    /// connection's under `id` even after its call ended: core keeps a client's
    /// reusable backend connection for that client's next call (until the client
    /// waits idle, goes, or 2 s have passed) and writes to it again without an
    /// [`Output::Connect`].
    PoolBackend { id: BackendId, pool_key: Cow<'g, str>, session: Session },
    /// Close backend connection `id`, dropping any operation on it: a pending
    /// [`Output::Resolve`] or [`Output::Discover`] for `id` is cancelled too (its answer
    /// must never reach the next call that gets the id). A new [`Output::Connect`] for
    /// `id` does the same.
    CloseBackend { id: BackendId },
    /// Resolve the DNS name `name` (never an IP literal) for backend connection `id`
    /// (a backend call's host, or the forward proxy's destination); then
    /// [`Input::Resolved`] with its addresses, without blocking.
    Resolve { id: BackendId, name: String },
    /// `"sd": "dns"`: the SRV set of `name` for backend connection `id` (through the
    /// shard's [`crate::resolve::srv::SrvCache`]); then [`crate::conn::Connection::handle_discovered`].
    Discover { id: BackendId, name: &'g str },
    /// Open the connection of a CONNECT tunnel to `addr` (vetted by the egress policy:
    /// dial exactly this); then [`crate::conn::Connection::handle_tunnel_opened`].
    OpenTunnel { addr: SocketAddr },
    /// Read from the tunnel's connection into this buffer (as for the client); then
    /// [`crate::conn::Connection::handle_tunnel_read`]. May be out while a tunnel write is.
    ReadTunnel(Vec<u8>),
    /// Write all of these to the tunnel's connection; then
    /// [`crate::conn::Connection::handle_tunnel_written`].
    WriteTunnel(Vec<u8>),
    /// Shut the tunnel connection's write side (send FIN); then
    /// [`crate::conn::Connection::handle_tunnel_shutdown`].
    ShutdownTunnel,
    /// Move bytes from the client into the tunnel's connection (`up`) or back, through
    /// the kernel: wait until the source has some, move what it has (a pipe's worth at
    /// most) into the sink, all of it; then [`crate::conn::Connection::handle_spliced`]. Given only
    /// to a driver that said it can ([`crate::conn::Connection::splice_tunnels`]); one per direction
    /// at a time, beside the other direction's, and never while a read or write is out
    /// on either socket (what the client sent after its CONNECT head is written first).
    Splice { up: bool },
    /// Every shard's counters added up (the DNS caches' included), for an admin
    /// page; then [`Input::Stats`]. Given only on the admin listener's connections.
    Stats,
    /// A log line.
    Log(Log<'g>),
    /// Shut the client socket's write side (send FIN), keep its read side: the last
    /// answer is out and the client's late bytes are read and dropped until it closes.
    /// Then [`crate::conn::Connection::handle_client_shutdown`].
    ShutdownClient,
    /// Close the client connection and every backend connection still open; the
    /// connection is over.
    Close,
}

/// What happened, for [`crate::conn::Connection::handle`]: the same as the `handle_*` methods, as
/// one value a driver's operations can return.
#[derive(Debug)]
pub enum Input {
    ClientRead(Vec<u8>, io::Result<usize>),
    /// [`Output::AwaitClient`]: the client socket is readable (bytes, its close, or an
    /// error waiting: core reads next and finds out which).
    ClientReady(io::Result<()>),
    ClientWritten(Vec<u8>, io::Result<()>),
    ClientShutdown(io::Result<()>),
    /// `Some`: the connection came from the pool, with the session it was kept with.
    Connected(BackendId, Option<Session>),
    /// [`Output::Connect`]'s new connection could not be opened: the system's error
    /// (core says to what, and through which proxy).
    ConnectFailed(BackendId, io::Error),
    BackendRead(BackendId, Vec<u8>, io::Result<usize>),
    BackendWritten(BackendId, Vec<u8>, io::Result<()>),
    /// The addresses a name resolved to, or why it did not (through the shard's
    /// [`crate::resolve::dns::DnsCache`]).
    Resolved(BackendId, Result<Vec<IpAddr>, DnsError>),
    /// [`Output::Connect`] without an address found no idle connection to take.
    NoIdle(BackendId),
    /// The SRV set [`Output::Discover`] asked for, or why there is none.
    Discovered(BackendId, Result<Arc<SrvSet>, DnsError>),
    /// [`Output::OpenTunnel`]'s connection is open, or the system's error.
    TunnelOpened(io::Result<()>),
    TunnelRead(Vec<u8>, io::Result<usize>),
    TunnelWritten(Vec<u8>, io::Result<()>),
    TunnelShutdown(io::Result<()>),
    Spliced {
        up: bool,
        result: Spliced,
    },
    /// The counters [`Output::Stats`] asked for.
    Stats(Box<Stats>),
    Timeout,
    Stop,
}

/// What a pooled backend connection keeps beside its socket: its TLS session, when it
/// has one (the socket's bytes mean nothing without it). Opaque to the driver, which
/// keeps it with the socket ([`Output::PoolBackend`]) and hands it back with it
/// ([`Input::Connected`]); `Session::default()` is a plain connection's.
#[derive(Debug, Default)]
pub struct Session(pub(crate) Option<Box<TlsLink>>);

/// What makes a [`Slot`]'s operations: a function from a job to its future, usually
/// an async fn. Every `Fn(J) -> F` that is `Copy` is one; a slot keeps the function
/// itself (an async fn's item, no bytes) rather than a pointer to it, so the call
/// that makes each operation's future is inlined where the slot starts it, and the
/// future is written into its box without being built on the stack and copied (a
/// call through a pointer cost a copy of the whole future at every start: 384 bytes
/// for the io_uring driver's).
pub trait Make<J>: Copy {
    type Op: std::future::Future;
    fn make(self, job: J) -> Self::Op;
}

impl<J, F: std::future::Future, M: Fn(J) -> F + Copy> Make<J> for M {
    type Op = F;
    #[inline(always)]
    fn make(self, job: J) -> F {
        self(job)
    }
}

/// A home a driver keeps for one kind of operation of a connection (its client reads,
/// its writes to one backend), run one at a time: each operation's future, made by
/// `make` from its job `J`, is set in place in a box the slot keeps. So a kept-alive
/// connection's reads and writes allocate nothing after the first, where boxing each
/// operation's future cost a malloc and a free (five per no-op request). The future
/// is one async fn's, whose type has no name: the slot learns it from `make` (see
/// [`Make`]). [`Slot::shed`] gives the box back while the connection is idle.
pub struct Slot<J, M: Make<J>> {
    op: Option<std::pin::Pin<Box<Option<M::Op>>>>,
    make: M,
}

impl<J, M: Make<J>> std::fmt::Debug for Slot<J, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.op {
            None => "empty",
            Some(op) if op.is_none() => "kept",
            Some(_) => "busy",
        };
        f.debug_struct("Slot").field("op", &state).finish()
    }
}

impl<J, M: Make<J>> Slot<J, M> {
    pub fn new(make: M) -> Self {
        Slot { op: None, make }
    }

    /// The maker, for more slots of the same kind.
    pub fn maker(&self) -> M {
        self.make
    }

    /// Starts `job`, dropping (cancelling) an operation still in the slot.
    #[inline(always)]
    pub fn start(&mut self, job: J) {
        match &mut self.op {
            Some(op) => op.set(Some(self.make.make(job))),
            None => self.op = Some(Box::pin(Some(self.make.make(job)))),
        }
    }

    /// The operation's end, once: pending while none is under way. The check for one
    /// is inline and the poll out of line: a driver asks each of its slots at every
    /// wake, most of them idle, and the whole poll's call (the operation's future
    /// inlined in it) cost about 20 instructions even so.
    #[inline]
    pub fn poll(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<<M::Op as std::future::Future>::Output> {
        match &self.op {
            Some(op) if op.is_some() => self.poll_busy(cx),
            _ => std::task::Poll::Pending,
        }
    }

    #[inline(never)]
    fn poll_busy(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<<M::Op as std::future::Future>::Output> {
        let Some(op) = &mut self.op else { return std::task::Poll::Pending };
        let Some(fut) = op.as_mut().as_pin_mut() else { return std::task::Poll::Pending };
        let done = std::task::ready!(fut.poll(cx));
        op.set(None);
        std::task::Poll::Ready(done)
    }

    /// Drops the operation under way, keeping the box.
    pub fn cancel(&mut self) {
        if let Some(op) = &mut self.op {
            op.set(None);
        }
    }

    /// No operation is under way.
    pub fn idle(&self) -> bool {
        self.op.as_ref().is_none_or(|op| op.is_none())
    }

    /// Gives the box back when no operation is in it.
    pub fn shed(&mut self) {
        if self.op.as_ref().is_some_and(|op| op.is_none()) {
            self.op = None;
        }
    }
}

#[cfg(test)]
mod slot_tests {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::task::{Context, Poll, Waker};

    use super::Slot;

    /// A job: the value to give, and a counter its future bumps when dropped.
    struct Job(u32, Rc<Cell<u32>>);

    struct Dropped(Rc<Cell<u32>>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    /// Pending on its first poll, ready with the job's value on the second.
    async fn op(Job(value, drops): Job) -> u32 {
        let _guard = Dropped(drops);
        let mut first = true;
        std::future::poll_fn(|_| if std::mem::take(&mut first) { Poll::Pending } else { Poll::Ready(()) }).await;
        value
    }

    #[test]
    fn a_slot_runs_one_operation_at_a_time_and_keeps_its_box() {
        let mut cx = Context::from_waker(Waker::noop());
        let drops = Rc::new(Cell::new(0));
        let mut slot = Slot::new(op);
        assert_eq!(slot.poll(&mut cx), Poll::Pending, "nothing under way");
        slot.start(Job(7, drops.clone()));
        assert_eq!(format!("{slot:?}"), r#"Slot { op: "busy" }"#);
        assert_eq!(slot.poll(&mut cx), Poll::Pending);
        assert_eq!(slot.poll(&mut cx), Poll::Ready(7));
        assert_eq!(drops.get(), 1, "the finished future is dropped at once");
        assert_eq!(slot.poll(&mut cx), Poll::Pending, "an end is given once");
        assert_eq!(format!("{slot:?}"), r#"Slot { op: "kept" }"#);
        // The next operation goes into the same box.
        slot.start(Job(8, drops.clone()));
        assert_eq!(slot.poll(&mut cx), Poll::Pending);
        assert!(!slot.idle());
        slot.shed();
        assert_eq!(format!("{slot:?}"), r#"Slot { op: "busy" }"#, "a busy slot keeps its box");
        slot.cancel();
        assert!(slot.idle(), "a kept box with nothing in it");
        assert_eq!(drops.get(), 2, "cancelling drops the future");
        assert_eq!(slot.poll(&mut cx), Poll::Pending);
        slot.shed();
        assert_eq!(format!("{slot:?}"), r#"Slot { op: "empty" }"#);
        assert!(slot.idle());
        slot.start(Job(9, drops.clone()));
        assert_eq!((slot.poll(&mut cx), slot.poll(&mut cx)), (Poll::Pending, Poll::Ready(9)));
        assert_eq!(drops.get(), 3);
        // Starting over a busy slot drops (cancels) the operation in it.
        slot.start(Job(10, drops.clone()));
        assert_eq!(slot.poll(&mut cx), Poll::Pending);
        slot.start(Job(11, drops.clone()));
        assert_eq!(drops.get(), 4, "the replaced operation is dropped");
        assert_eq!((slot.poll(&mut cx), slot.poll(&mut cx)), (Poll::Pending, Poll::Ready(11)));
    }
}
