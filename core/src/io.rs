//! The driver surface: what a driver is asked to do ([`Output`]), what it reports
//! back ([`Input`]), the ids of a connection's backend connections, and the
//! [`Session`] a pooled backend socket carries. Everything a driver matches on is
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
/// connection is pooled or closed.
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
    /// write or shutdown is out, and neither is given until it is answered (a driver
    /// may hold both socket halves for the wait).
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
