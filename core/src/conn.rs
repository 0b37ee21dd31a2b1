//! One client connection's whole life, Sans-IO: [`Connection`].
//!
//! The connection owns the server codec, the head, body, idle and write deadlines, the
//! request being served (a whole-body [`Exchange`], a streamed `no-op` pass-through, a
//! built-in endpoint or an answer the router gives at once), the backend connections
//! that request uses (their codecs, their reads and writes, the stale-connection
//! retry, whether each goes back to the pool), every status the client can get, and
//! the access line. A driver moves bytes, runs one timer, keeps idle backend sockets
//! and spawns the connection's task; it decides nothing.
//!
//! # The driver loop
//!
//! `handle_*` says what happened; [`Connection::poll`] says what to do next. After
//! every `handle_*` call, drain `poll` until it returns `None`, start what it asked
//! for, then wait for the first of: an I/O operation finishing, the instant
//! [`Connection::poll_timeout`] gives (then [`Connection::handle_timeout`]), or the
//! server stopping ([`Connection::handle_stop`]). On [`Output::Close`] drop the client
//! socket and every backend socket and operation of this connection, and end.
//!
//! ```text
//! let mut conn = Connection::new(&gateway, &balancer, peer, Instant::now(), SystemTime::now());
//! loop {
//!     while let Some(output) = conn.poll() {
//!         match output {
//!             Output::ReadClient(buf) => start a read appending to buf,
//!             Output::WriteClient(bytes) => start writing all of bytes,
//!             Output::Connect { id, host, pool_key, pooled } => take an idle socket
//!                 and its session from the pool under pool_key if pooled allows and one
//!                 is there, else connect to host; then handle_connected (with the
//!                 session, or None for a new socket) / handle_connect_failed,
//!             Output::ReadBackend { id, buf } / Output::WriteBackend { id, bytes } => as for the client,
//!             Output::PoolBackend { id, pool_key, session } => keep socket id and
//!                 session idle under pool_key,
//!             Output::CloseBackend { id } => drop socket id and its operation,
//!             Output::Log(line) => log it,
//!             Output::Close => return,
//!         }
//!     }
//!     wait for an operation to finish, the timer, or the stop; feed it back with
//!     handle_client_read / handle_client_written / handle_backend_read /
//!     handle_backend_written / handle_timeout(now) / handle_stop(now)
//! }
//! ```
//!
//! Buffers travel with the operations: a read gets the connection's buffer (append
//! after its length, within its capacity) and hands it back; a write gets the bytes
//! and hands the vector back for reuse. One read and one write may be out on the
//! client socket at once (a `408` is written while a read waits), so a driver keeps
//! the client socket's two halves apart; on a backend socket one operation at most is
//! ever out.
//!
//! Time is a parameter: every `handle_*` takes `now`, and the same inputs always give
//! the same outputs (`core/tests/conn.rs` plays whole conversations with virtual time).
//!
//! # What comes next, and where it goes
//!
//! - **TLS to backends** is here: a backend slot holds a rustls `ClientConnection`
//!   between its socket bytes and its HTTP codec ([`Output::ReadBackend`] and
//!   [`Output::WriteBackend`] carry ciphertext), and the session is pooled with the
//!   socket as an opaque [`Session`]. Through a proxy, the slot first writes
//!   `CONNECT host:port` and reads the answer (phase `Tunnel`), then starts TLS on
//!   the same socket. **Server TLS** comes the same way: a `ServerConnection` in
//!   front of the server codec; the drivers already move opaque bytes.
//! - **The forward proxy** ([`Connection::forward_proxy`]): a request goes to the host
//!   it names (see [`crate::forward`]): its name is resolved with [`Output::Resolve`]
//!   (the driver answers without blocking the shard), the address is vetted, then
//!   dialled as a pooled backend connection and streamed as `no-op` is. A `CONNECT`
//!   turns the connection into a tunnel: [`Output::OpenTunnel`], `200`, then the
//!   tunnel's reads and writes ([`Output::ReadTunnel`], [`Output::WriteTunnel`],
//!   [`Output::ShutdownTunnel`]) and the client's, untouched, with the half-close
//!   carried through. That is why the client socket may have a read and a write out at
//!   once, and the tunnel's too. A driver that can splice ([`Connection::splice_tunnels`])
//!   gets [`Output::Splice`] per direction instead and says how many bytes moved.
//! - **Client plugins.** A plugin that answers a backend call itself settles the call
//!   in [`Exchange`] before any slot is opened: no [`Output::Connect`] is given.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, Method, StatusCode};

use crate::backend::{Failure, Fetch, Progress, Pumped, StreamedHead, may_retry, pump_body};
use crate::breaker::{self, Breaker, Permit};
use crate::buf::ReadBuf;
use crate::builtin::{self, Builtin};
use crate::config::{HostAddr, Scheme};
use crate::deadline::{HeadWait, after, body_deadline};
use crate::dispatch::{Dispatch, Route};
use crate::dns::DnsError;
use crate::exchange::{Action, Call, CallBody, Exchange};
use crate::forward::{self, Denied, Destination, ForwardPlan};
use crate::http1::{BodyLength, ClientConn, Limits, Next, Request, ResponseHead, ServerConn, ServerEvent};
use crate::plan::Gateway;
use crate::proxy::Proxy;
use crate::redirect;
use crate::request::{AccessLine, AccessLog, ClientRequest, Reply, RequestBody};
use crate::srv::SrvSet;
use crate::tls::TlsTarget;
use crate::tunnel::{Pipe, PipeOp};
pub use crate::tunnel::{SPLICE_PIPE, Spliced, splice_pipe_fits};
use crate::upstream::Balancer;

/// Names a backend connection of one client connection. Ids are reused once a
/// connection is pooled or closed.
pub type BackendId = usize;

/// Client output is handed to the driver once it reaches this while a body streams.
const FLUSH_AT: usize = 64 * 1024;
/// A fresh client connection's read buffer.
const CLIENT_READ: usize = 1024;
/// At stop, how long a keep-alive connection must have been quiet since its last answer
/// before it is closed as idle: a client that loops sends its next request within
/// this, and that request is answered (with `Connection: close`) rather than lost to a
/// close racing it.
pub const STOP_GRACE: Duration = Duration::from_secs(1);
/// After the last answer, the write side is shut and the client's bytes read and
/// dropped for at most this long, until it closes: closing with unread bytes would
/// reset the connection and could destroy that answer before the client reads it.
pub const LINGER: Duration = Duration::from_secs(2);

/// What the driver does next (see the module docs for the loop).
#[derive(Debug)]
pub enum Output<'g> {
    /// Read from the client, appending to this buffer (after its length, within its
    /// capacity); then [`Connection::handle_client_read`] with it.
    ReadClient(Vec<u8>),
    /// Write all of these bytes to the client; then [`Connection::handle_client_written`].
    WriteClient(Vec<u8>),
    /// Open backend connection `id`: an idle one kept under `pool_key` when `pooled`
    /// allows it and there is one, else a new one to `host`. Then
    /// [`Connection::handle_connected`] (saying which) or
    /// [`Connection::handle_connect_failed`].
    Connect { id: BackendId, host: Cow<'g, HostAddr>, pool_key: Cow<'g, str>, pooled: bool },
    /// Read from backend connection `id` into this buffer, as for the client.
    ReadBackend { id: BackendId, buf: Vec<u8> },
    /// Write all of these bytes to backend connection `id`.
    WriteBackend { id: BackendId, bytes: Vec<u8> },
    /// Backend connection `id` finished its response cleanly: keep it idle under
    /// `pool_key` with `session` beside it (the pool may still close it when full).
    PoolBackend { id: BackendId, pool_key: Cow<'g, str>, session: Session },
    /// Close backend connection `id`, dropping any operation on it.
    CloseBackend { id: BackendId },
    /// Resolve the DNS name `name` (never an IP literal) for backend connection `id`;
    /// then [`Connection::handle_resolved`] with its addresses, without blocking.
    Resolve { id: BackendId, name: String },
    /// `"sd": "dns"`: the SRV set of `name` for backend connection `id` (through the
    /// shard's [`crate::srv::SrvCache`]); then [`Connection::handle_discovered`].
    Discover { id: BackendId, name: &'g str },
    /// Open the connection of a CONNECT tunnel to `addr` (vetted by the egress policy:
    /// dial exactly this); then [`Connection::handle_tunnel_opened`].
    OpenTunnel { addr: SocketAddr },
    /// Read from the tunnel's connection into this buffer (as for the client); then
    /// [`Connection::handle_tunnel_read`]. May be out while a tunnel write is.
    ReadTunnel(Vec<u8>),
    /// Write all of these to the tunnel's connection; then
    /// [`Connection::handle_tunnel_written`].
    WriteTunnel(Vec<u8>),
    /// Shut the tunnel connection's write side (send FIN); then
    /// [`Connection::handle_tunnel_shutdown`].
    ShutdownTunnel,
    /// Move bytes from the client into the tunnel's connection (`up`) or back, through
    /// the kernel: wait until the source has some, move what it has (a pipe's worth at
    /// most) into the sink, all of it; then [`Connection::handle_spliced`]. Given only
    /// to a driver that said it can ([`Connection::splice_tunnels`]); one per direction
    /// at a time, beside the other direction's, and never while a read or write is out
    /// on either socket (what the client sent after its CONNECT head is written first).
    Splice { up: bool },
    /// A log line.
    Log(Log<'g>),
    /// Shut the client socket's write side (send FIN), keep its read side: the last
    /// answer is out and the client's late bytes are read and dropped until it closes.
    /// Then [`Connection::handle_client_shutdown`].
    ShutdownClient,
    /// Close the client connection and every backend connection still open; the
    /// connection is over.
    Close,
}

/// What happened, for [`Connection::handle`]: the same as the `handle_*` methods, as
/// one value a driver's operations can return.
#[derive(Debug)]
pub enum Input {
    ClientRead(Vec<u8>, io::Result<usize>),
    ClientWritten(Vec<u8>, io::Result<()>),
    ClientShutdown(io::Result<()>),
    /// `Some`: the connection came from the pool, with the session it was kept with.
    Connected(BackendId, Option<Session>),
    ConnectFailed(BackendId, String),
    BackendRead(BackendId, Vec<u8>, io::Result<usize>),
    BackendWritten(BackendId, Vec<u8>, io::Result<()>),
    /// The addresses a name resolved to, or why it did not (through the shard's
    /// [`crate::dns::DnsCache`]).
    Resolved(BackendId, Result<Vec<IpAddr>, DnsError>),
    /// The SRV set [`Output::Discover`] asked for, or why there is none.
    Discovered(BackendId, Result<Arc<SrvSet>, DnsError>),
    TunnelOpened(Result<(), String>),
    TunnelRead(Vec<u8>, io::Result<usize>),
    TunnelWritten(Vec<u8>, io::Result<()>),
    TunnelShutdown(io::Result<()>),
    Spliced {
        up: bool,
        result: Spliced,
    },
    Timeout,
    Stop,
}

/// A line to log.
#[derive(Debug)]
pub enum Log<'g> {
    /// One per answered request (`sluice::access`, info).
    Access(AccessLine),
    /// A backend call failed or broke off (`sluice::backend`, warn).
    Backend { endpoint: &'g str, backend: usize, reason: String },
    /// A client's TLS handshake or session failed (`sluice::tls`, info).
    Tls { peer: IpAddr, reason: String },
    /// A backend call was redirected (`sluice::backend`, info).
    Redirect { endpoint: &'g str, backend: usize, status: StatusCode, to: String },
    /// A forwarded request or tunnel failed or broke off (`sluice::forward`, warn).
    Forward { dest: String, reason: String },
    /// The egress policy refused a destination (`sluice::egress`, warn).
    Denied { peer: IpAddr, dest: String, reason: String },
    /// A CONNECT tunnel opened (`sluice::forward`, debug); its access line comes when
    /// it closes.
    Tunnel { dest: String },
    /// A backend call of gateway endpoint `endpoint` (its index) ended: the status it
    /// answered, `None` when it failed (`sluice::backend`, trace; counted by
    /// [`crate::stats`]).
    Call { endpoint: usize, backend: usize, status: Option<StatusCode> },
}

impl fmt::Display for Log<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Log::Access(line) => line.fmt(f),
            Log::Backend { endpoint, backend, reason } => write!(f, "backend {backend} of {endpoint}: {reason}"),
            Log::Tls { peer, reason } => write!(f, "client {peer}: {reason}"),
            Log::Redirect { endpoint, backend, status, to } => {
                write!(f, "backend {backend} of {endpoint}: {} redirect to {to}", status.as_u16())
            }
            Log::Forward { dest, reason } => write!(f, "forward to {dest}: {reason}"),
            Log::Denied { peer, dest, reason } => write!(f, "client {peer} to {dest} denied: {reason}"),
            Log::Tunnel { dest } => write!(f, "tunnel to {dest} open"),
            Log::Call { endpoint, backend, status: Some(s) } => {
                write!(f, "backend {backend} of endpoint {endpoint}: {}", s.as_u16())
            }
            Log::Call { endpoint, backend, status: None } => {
                write!(f, "backend {backend} of endpoint {endpoint}: failed")
            }
        }
    }
}

/// What a pooled backend connection keeps beside its socket: its TLS session, when it
/// has one (the socket's bytes mean nothing without it). Opaque to the driver, which
/// keeps it with the socket ([`Output::PoolBackend`]) and hands it back with it
/// ([`Input::Connected`]); `Session::default()` is a plain connection's.
#[derive(Debug, Default)]
pub struct Session(Option<Box<TlsLink>>);

/// Where one backend connection is in its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `"sd": "dns"`: waiting for the SRV set of the backend's name
    /// ([`Output::Discover`]); the request is written for the name, and rewritten
    /// for the target picked.
    Discover,
    /// Waiting for the driver to connect it.
    Connecting,
    /// Through a proxy to an `https://` backend: `CONNECT` is written, then its
    /// answer read (the request waits in `held`).
    Tunnel,
    /// Writing the request (head, and the whole body when there is one).
    Send,
    /// `no-op`: streaming the client's body after the head; `done` once it ended.
    Relay { length: BodyLength, done: bool },
    /// Reading the response (whole, or its head when streaming).
    Receive,
    /// `no-op`: the response body is pumped to the client.
    Pump,
}

/// The TLS session of a backend connection (rustls is Sans-IO): it encrypts what the
/// slot writes and decrypts what it reads, so the slot above it deals in plaintext
/// and the driver below moves only ciphertext. One socket operation at a time, as
/// for a plain connection.
#[derive(Debug)]
struct TlsLink {
    conn: rustls::ClientConnection,
    /// Ciphertext handed to the driver, and the vector reads come back in.
    cipher_out: Vec<u8>,
    cipher_in: Vec<u8>,
    /// A ciphertext read or write is out with the driver.
    busy: bool,
    /// Plaintext the slot wrote, taken by rustls: the slot's write completes once
    /// the handshake is done and all of it went out.
    plain: Option<Vec<u8>>,
}

/// Why feeding ciphertext to a TLS session failed.
#[derive(Debug)]
enum Undecryptable {
    /// rustls could not take the bytes or hand the plaintext out.
    Io(io::Error),
    /// The peer broke the protocol (or the handshake failed).
    Tls(rustls::Error),
}

impl fmt::Display for Undecryptable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Undecryptable::Io(e) => e.fmt(f),
            Undecryptable::Tls(e) => e.fmt(f),
        }
    }
}

/// What a batch of ciphertext gave: the peer is done sending (close_notify, or a
/// close without one: the HTTP framing tells a cut body), and whether any plaintext
/// came.
struct Decrypted {
    closed: bool,
    got: bool,
}

/// Feeds ciphertext (`data`; empty: the peer closed) to a TLS session, either side,
/// and appends the plaintext it yields to `input`.
fn decrypt<S: rustls::SideData>(
    conn: &mut rustls::ConnectionCommon<S>,
    mut data: &[u8],
    input: &mut ReadBuf,
) -> Result<Decrypted, Undecryptable> {
    let mut out = Decrypted { closed: data.is_empty(), got: false };
    loop {
        conn.read_tls(&mut data).map_err(Undecryptable::Io)?;
        conn.process_new_packets().map_err(Undecryptable::Tls)?;
        let mut chunk = [0u8; 4096];
        loop {
            match io::Read::read(&mut conn.reader(), &mut chunk) {
                Ok(0) => {
                    out.closed = true;
                    break;
                }
                Ok(k) => {
                    input.prepare().extend_from_slice(&chunk[..k]);
                    out.got = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    out.closed = true;
                    break;
                }
                Err(e) => return Err(Undecryptable::Io(e)),
            }
        }
        if data.is_empty() {
            return Ok(out);
        }
    }
}

/// Appends all the ciphertext a TLS session wants sent to `out`.
fn encrypt_pending<S: rustls::SideData>(conn: &mut rustls::ConnectionCommon<S>, out: &mut Vec<u8>) {
    while conn.wants_write() {
        if conn.write_tls(out).is_err() {
            break;
        }
    }
}

/// The client's TLS session on an HTTPS listener: it decrypts what the client sends
/// into the connection's input and encrypts its output, so the codec above deals in
/// plaintext and the driver moves ciphertext.
#[derive(Debug)]
struct ServerLink {
    conn: rustls::ServerConnection,
    /// The vector ciphertext reads go out in, and the one writes go out in.
    cipher_in: Vec<u8>,
    cipher_out: Vec<u8>,
    /// Some bytes came: the first tell a ClientHello from plain HTTP.
    started: bool,
    /// close_notify is queued, or the session failed: nothing more goes into it.
    closed: bool,
    /// The session failed: what the client still sends is dropped unread.
    failed: bool,
    /// The last read filled its buffer: the next asks for a whole record's worth.
    big_reads: bool,
}

/// A ciphertext read on an idle client connection: small (a request fits), grown to
/// [`TLS_READ`] while reads fill it.
const TLS_CLIENT_READ: usize = 2048;

/// Ciphertext read size: one TLS record and its overhead.
const TLS_READ: usize = 16 * 1024 + 512;

/// One backend connection of this client connection.
#[derive(Debug)]
struct Slot<'g> {
    in_use: bool,
    /// The exchange's call id.
    call: usize,
    method: Method,
    /// The endpoint, for log lines.
    endpoint: &'g str,
    /// Where to connect (the backend, or its proxy), and the backend itself: the
    /// configuration's, or a redirect's.
    host: Cow<'g, HostAddr>,
    origin: Cow<'g, HostAddr>,
    pool_key: Cow<'g, str>,
    /// The proxy `host` is, when the backend is reached through one.
    via: Option<&'g Proxy>,
    /// `host:port` to ask the proxy a tunnel to (see [`Call::connect`]).
    connect: Option<Cow<'g, str>>,
    /// Redirects left to follow (none with `no_redirect`), and the profile for an
    /// `https://` target.
    redirects: u8,
    follow: bool,
    redirect_tls: Option<&'g crate::tls::TlsProfile>,
    /// The request, while the tunnel it goes through opens.
    held: Vec<u8>,
    /// An `https://` backend's profile; its session once connected.
    tls_target: Option<Cow<'g, TlsTarget>>,
    tls: Option<Box<TlsLink>>,
    /// Read only the response head (`no-op`), the body is pumped.
    stream: bool,
    body: CallBody,
    phase: Phase,
    connected: bool,
    reused: bool,
    /// The last [`Output::Connect`] allowed a pooled connection (a retry does not).
    pooled: bool,
    /// A forward proxy request's hold on its destination's circuit breakers.
    permit: Option<Permit>,
    /// Bytes to write next (the request, or a relayed body piece).
    out: Vec<u8>,
    /// The request as written, kept until the answer starts for a retry.
    sent: Vec<u8>,
    writing: bool,
    input: ReadBuf,
    reading: bool,
    /// The codec needs more bytes than are pending.
    hungry: bool,
    eof: bool,
    fetch: Option<Fetch>,
    /// The codec a streamed body is pumped with.
    codec: Option<ClientConn>,
    failure: Option<Failure>,
}

impl<'g> Slot<'g> {
    fn new(call: &Call<'g>, endpoint: &'g str, stream: bool) -> Slot<'g> {
        Slot {
            via: call.via,
            connect: call.connect.map(Cow::Borrowed),
            redirects: if call.follow { redirect::MAX_REDIRECTS } else { 0 },
            follow: call.follow,
            redirect_tls: call.redirect_tls,
            tls_target: call.tls.map(Cow::Borrowed),
            ..Slot::base(
                (call.id, call.method.clone(), endpoint),
                (Cow::Borrowed(call.host), Cow::Borrowed(call.origin), Cow::Borrowed(call.pool_key)),
                stream,
                call.body,
            )
        }
    }

    /// A request the forward proxy sends on, written in `request`: plain HTTP, no
    /// proxy, no redirects followed.
    fn forward(
        method: Method,
        host: HostAddr,
        pool_key: String,
        body: Option<BodyLength>,
        request: Vec<u8>,
        permit: Option<Permit>,
    ) -> Slot<'g> {
        let body = body.map_or(CallBody::None, CallBody::Stream);
        let place = (Cow::Owned(host.clone()), Cow::Owned(host), Cow::Owned(pool_key));
        Slot { out: request, permit, ..Slot::base((0, method, "forward proxy"), place, true, body) }
    }

    /// A slot for call `id` (its method, its endpoint), connecting to `host` for
    /// `origin` under `pool_key`, directly and over plain HTTP.
    fn base(
        (call, method, endpoint): (usize, Method, &'g str),
        (host, origin, pool_key): (Cow<'g, HostAddr>, Cow<'g, HostAddr>, Cow<'g, str>),
        stream: bool,
        body: CallBody,
    ) -> Slot<'g> {
        Slot {
            in_use: true,
            call,
            method,
            endpoint,
            host,
            origin,
            pool_key,
            via: None,
            connect: None,
            redirects: 0,
            follow: false,
            redirect_tls: None,
            held: Vec::new(),
            tls_target: None,
            tls: None,
            stream,
            body,
            phase: Phase::Connecting,
            connected: false,
            reused: false,
            pooled: true,
            permit: None,
            out: Vec::new(),
            sent: Vec::new(),
            writing: false,
            input: ReadBuf::default(),
            reading: false,
            hungry: false,
            eof: false,
            fetch: None,
            codec: None,
            failure: None,
        }
    }

    /// Its connection pooled (`reusable`, and a TLS session with nothing under way goes
    /// with it) or closed.
    fn put_away(&mut self, id: BackendId, reusable: bool) -> Output<'g> {
        let idle_tls = self.tls.as_deref().is_none_or(|l| !l.busy && l.plain.is_none() && !l.conn.wants_write());
        if reusable && self.connected && idle_tls && self.phase != Phase::Tunnel {
            Output::PoolBackend { id, pool_key: self.pool_key.clone(), session: Session(self.tls.take()) }
        } else {
            Output::CloseBackend { id }
        }
    }

    /// Starts over on another connection with `request` (a retry: `pooled` false; a
    /// redirect): the [`Output::Connect`] to give.
    fn reconnect(&mut self, id: BackendId, request: Vec<u8>, pooled: bool) -> Output<'g> {
        self.out = request;
        self.phase = Phase::Connecting;
        self.connected = false;
        self.reused = false;
        self.pooled = pooled;
        self.writing = false;
        self.reading = false;
        self.hungry = false;
        self.eof = false;
        self.fetch = None;
        self.codec = None;
        self.tls = None;
        self.input.clear();
        Output::Connect { id, host: self.host.clone(), pool_key: self.pool_key.clone(), pooled }
    }

    /// Whether the client body was (partly) streamed on it: it cannot be sent again.
    fn body_streamed(&self) -> bool {
        matches!(self.body, CallBody::Stream(_))
    }
}

/// Where a call to a host the configuration does not list goes (a redirect's target,
/// an SRV record's): through `via` when the slot has a proxy, else the environment's
/// proxy for that host, else straight; with `profile` for an `https://` host.
struct Aim<'g> {
    host: HostAddr,
    pool_key: String,
    via: Option<&'g Proxy>,
    connect: Option<String>,
    tls_target: Option<TlsTarget>,
    /// How the request names its target.
    form: redirect::Form,
}

impl<'g> Aim<'g> {
    fn new(
        gw: &'g Gateway,
        via: Option<&'g Proxy>,
        addr: &HostAddr,
        profile: Option<&crate::tls::TlsProfile>,
        what: &str,
    ) -> Result<Aim<'g>, String> {
        let via = via.or_else(|| gw.proxy_env.for_host(addr));
        let tls_target = match (addr.scheme, profile) {
            (Scheme::Http, _) => None,
            (Scheme::Https, None) => return Err(format!("no usable TLS profile for {what} {:?}", addr.host)),
            (Scheme::Https, Some(profile)) => {
                let server_name = rustls_pki_types::ServerName::try_from(addr.host.clone())
                    .map_err(|e| format!("{what} {:?} cannot be a TLS server name: {e}", addr.host))?;
                Some(TlsTarget { profile: profile.clone(), server_name })
            }
        };
        let pool_key = crate::backend::pool_key(addr, tls_target.as_ref(), via);
        let (host, connect, form) = match via {
            Some(p) if tls_target.is_some() => {
                (p.addr.clone(), Some(crate::plan::connect_authority(addr)), redirect::Form::Origin)
            }
            Some(p) => (p.addr.clone(), None, redirect::Form::Absolute),
            None => (addr.clone(), None, redirect::Form::Origin),
        };
        Ok(Aim { host, pool_key, via, connect, tls_target, form })
    }

    /// The proxy credentials the request carries (a plain request through a proxy).
    fn proxy_auth(&self) -> Option<&'g str> {
        self.via.filter(|_| self.form == redirect::Form::Absolute).and_then(|p| p.authorization.as_deref())
    }

    /// Points `slot` at `origin` this way.
    fn apply(self, slot: &mut Slot<'g>, origin: HostAddr) {
        slot.host = Cow::Owned(self.host);
        slot.origin = Cow::Owned(origin);
        slot.pool_key = Cow::Owned(self.pool_key);
        slot.via = self.via;
        slot.connect = self.connect.map(Cow::Owned);
        slot.tls_target = self.tls_target.map(Cow::Owned);
    }
}

/// What a backend connection's progress means to the request.
#[allow(clippy::large_enum_variant)] // see backend::Progress
#[derive(Debug)]
enum SlotEvent {
    Nothing,
    Answer { status: StatusCode, headers: HeaderMap, body: Vec<u8> },
    Head(StreamedHead),
    Failed(Failure),
}

/// What serves a request once its whole body is read.
#[derive(Debug)]
enum Serve<'g> {
    Builtin(Builtin),
    Endpoint(Route<'g>),
}

#[derive(Debug)]
// The exchange is boxed: the state moves by value a dozen times per request, and a
// boxed exchange makes that a few words instead of a kilobyte (one allocation instead of
// about 6,000 instructions of memcpy per request, callgrind).
enum State<'g> {
    /// Waiting for a request head.
    Head(HeadWait),
    /// Reading a whole request body.
    Body { req: Box<ClientRequest>, serve: Serve<'g>, body: Vec<u8>, deadline: Option<Instant>, line: AccessLog },
    /// An aggregating exchange: backend calls in flight until `deadline`.
    Exchange { ex: Box<Exchange<'g>>, line: AccessLog, deadline: Instant },
    /// `no-op` or a forwarded request, before the response head: connecting, sending
    /// the head, relaying the body, waiting for the head.
    Stream { leg: Leg<'g>, line: AccessLog, id: BackendId },
    /// Forward proxy: the destination's name is being resolved ([`Output::Resolve`]).
    Resolve(Box<Pending>),
    /// Forward proxy: a CONNECT's connection is opening ([`Output::OpenTunnel`]).
    Opening(Box<Pending>),
    /// A CONNECT tunnel: bytes both ways until both sides closed.
    Tunnel(Box<Tunnel>),
    /// `no-op`: the backend's body is pumped to the client.
    Pump(Pumping<'g>),
    /// A whole response is in the output: once written, the connection goes on so.
    Flush(Next),
    /// Close once the output is written.
    Closing,
    /// The write side is shut; client bytes are dropped until it closes or `until`.
    Linger { until: Instant },
    /// Over: [`Output::Close`] was given.
    Closed,
}

/// A `no-op` response body on its way from backend connection `id` to the client.
///
/// The endpoint timeout bounds the whole exchange, body included, from the request's
/// start ([`Exchange::deadline`]): as KrakenD, whose request context covers the
/// response body too. A trickling backend cannot hold the client longer, and a
/// download that needs longer needs a longer endpoint `timeout`.
#[derive(Debug)]
struct Pumping<'g> {
    /// Kept for the 502 a failure gets while nothing reached the client.
    leg: Leg<'g>,
    line: AccessLog,
    id: BackendId,
    status: StatusCode,
    /// Body bytes written for the client so far.
    sent: u64,
    /// Where the response head starts in the output and the count of client writes
    /// then: while no write was handed out since, the head can still be taken back.
    head: (usize, u64),
}

/// What a streamed response comes from: a `no-op` endpoint's exchange, or a request
/// the forward proxy sent on.
#[derive(Debug)]
enum Leg<'g> {
    Endpoint(Box<Exchange<'g>>),
    Forward(Box<Forwarded>),
}

/// A request the forward proxy sent on.
#[derive(Debug)]
struct Forwarded {
    /// `host:port`, for log lines.
    dest: String,
    /// Until the response head: the request's start plus `timeout`; then, while the
    /// body flows, the last progress plus `idle_timeout`.
    deadline: Instant,
}

impl Leg<'_> {
    fn deadline(&self) -> Instant {
        match self {
            Leg::Endpoint(ex) => ex.deadline(),
            Leg::Forward(f) => f.deadline,
        }
    }
}

/// A forward-proxy request between its head and its connection: its destination's
/// name resolving, or its tunnel's connection opening.
#[derive(Debug)]
struct Pending {
    dest: Destination,
    /// The request to send (empty for a tunnel).
    request: Vec<u8>,
    method: Method,
    body: Option<BodyLength>,
    tunnel: bool,
    line: AccessLog,
    deadline: Instant,
    /// Taken when the address is known (see [`crate::breaker`]).
    permit: Option<Permit>,
}

/// A CONNECT tunnel: client to destination (`up`) and back (`down`).
#[derive(Debug)]
struct Tunnel {
    up: Pipe,
    down: Pipe,
    dest: String,
    /// The last bytes either way; the tunnel closes `idle` after.
    last: Instant,
    idle: Duration,
    line: AccessLog,
    /// Held while the tunnel is open.
    _permit: Option<Permit>,
}

/// One client connection (see the module docs).
#[derive(Debug)]
pub struct Connection<'g> {
    gw: &'g Gateway,
    /// On the forward proxy's listener: its plan.
    fwd: Option<&'g ForwardPlan>,
    /// The driver can splice a tunnel's bytes ([`Connection::splice_tunnels`]).
    splice: bool,
    balancer: &'g Balancer,
    limits: Limits,
    peer: IpAddr,
    /// The accept, on both clocks: `/__health` tells wall-clock time from it.
    epoch: (Instant, SystemTime),
    now: Instant,
    server: ServerConn,
    input: ReadBuf,
    /// The input buffer is out with a read.
    reading: bool,
    /// The client codec needs more bytes than are pending.
    hungry: bool,
    eof: bool,
    /// Bytes for the client not handed out yet.
    out: Vec<u8>,
    /// A written buffer handed back, reused for the next output.
    spare: Vec<u8>,
    /// A client write is out, since then.
    write_since: Option<Instant>,
    state: State<'g>,
    slots: Vec<Slot<'g>>,
    queue: VecDeque<Output<'g>>,
    stopping: bool,
    /// An answer (or part of one) went out for the current request: a close lingers.
    answered: bool,
    /// Client writes handed to the driver so far.
    handed: u64,
    /// The client's TLS session (an HTTPS listener).
    tls: Option<Box<ServerLink>>,
    /// Plain HTTP came to the HTTPS listener: it gets a plain 400.
    plain_on_tls: bool,
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl<'g> Connection<'g> {
    /// A connection accepted from `peer` at `now` (`wall`: the same instant on the
    /// wall clock). `balancer` is the shard's.
    pub fn new(gw: &'g Gateway, balancer: &'g Balancer, peer: IpAddr, now: Instant, wall: SystemTime) -> Self {
        let limits = Limits { max_head_bytes: gw.config.max_header_bytes, ..Limits::default() };
        let mut c = Connection {
            gw,
            fwd: None,
            splice: false,
            balancer,
            limits,
            peer,
            epoch: (now, wall),
            now,
            server: ServerConn::new(limits),
            input: ReadBuf::with_capacity(CLIENT_READ),
            reading: false,
            hungry: true,
            eof: false,
            out: Vec::new(),
            spare: Vec::new(),
            write_since: None,
            state: State::Head(HeadWait::new(true, now)),
            slots: Vec::new(),
            queue: VecDeque::new(),
            stopping: false,
            answered: false,
            handed: 0,
            tls: None,
            plain_on_tls: false,
        };
        if let Some(profile) = &gw.server_tls {
            match rustls::ServerConnection::new(profile.config.clone()) {
                Ok(mut conn) => {
                    conn.set_buffer_limit(None);
                    c.tls = Some(Box::new(ServerLink {
                        conn,
                        cipher_in: Vec::new(),
                        cipher_out: Vec::new(),
                        started: false,
                        closed: false,
                        failed: false,
                        big_reads: false,
                    }));
                }
                // Never plain HTTP on an HTTPS listener: closed at once.
                Err(_) => c.state = State::Closing,
            }
        }
        c
    }

    /// A connection accepted on the forward proxy's listener (`gw.forward`): requests
    /// are forwarded to the host they name, CONNECT opens tunnels. Plain HTTP.
    pub fn forward_proxy(
        gw: &'g Gateway,
        balancer: &'g Balancer,
        peer: IpAddr,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        let mut c = Connection::new(gw, balancer, peer, now, wall);
        c.tls = None;
        c.fwd = gw.forward.as_ref();
        c.state = match c.fwd {
            Some(_) => State::Head(HeadWait::new(true, now)),
            None => State::Closing,
        };
        c
    }

    // ----- what happened -----

    /// The driver can carry out [`Output::Splice`]: a CONNECT tunnel opened from now
    /// on moves its bytes that way, unless the forward proxy's `connect.splice` is
    /// false. Off until called.
    pub fn splice_tunnels(&mut self, on: bool) {
        self.splice = on;
    }

    /// Feeds one [`Input`] at `now`.
    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::ClientRead(buf, result) => self.handle_client_read(buf, result, now),
            Input::ClientWritten(buf, result) => self.handle_client_written(buf, result, now),
            Input::ClientShutdown(result) => self.handle_client_shutdown(result, now),
            Input::Connected(id, pooled) => self.handle_connected(id, pooled, now),
            Input::ConnectFailed(id, reason) => self.handle_connect_failed(id, reason, now),
            Input::BackendRead(id, buf, result) => self.handle_backend_read(id, buf, result, now),
            Input::BackendWritten(id, buf, result) => self.handle_backend_written(id, buf, result, now),
            Input::Resolved(id, result) => self.handle_resolved(id, result, now),
            Input::Discovered(id, result) => self.handle_discovered(id, result, now),
            Input::TunnelOpened(result) => self.handle_tunnel_opened(result, now),
            Input::TunnelRead(buf, result) => self.handle_tunnel_read(buf, result, now),
            Input::TunnelWritten(buf, result) => self.handle_tunnel_written(buf, result, now),
            Input::TunnelShutdown(result) => self.handle_tunnel_shutdown(result, now),
            Input::Spliced { up, result } => self.handle_spliced(up, result, now),
            Input::Timeout => self.handle_timeout(now),
            Input::Stop => self.handle_stop(now),
        }
    }

    /// A client read finished: `buf` is the buffer [`Output::ReadClient`] gave, with
    /// `Ok(n)` bytes appended (`Ok(0)`: the client closed its side).
    pub fn handle_client_read(&mut self, buf: Vec<u8>, result: io::Result<usize>, now: Instant) {
        self.now = now;
        if let State::Tunnel(t) = &mut self.state {
            let read = t.up.read_done(buf, result);
            self.tunnel_moved(read.map_err(|e| format!("client read failed: {}", e.0)));
            return;
        }
        if self.tls.is_some() {
            self.tls_client_read(buf, result);
            self.progress();
            return;
        }
        self.input.restore(buf);
        self.reading = false;
        match result {
            Ok(0) | Err(_) => self.eof = true,
            Ok(_) => {}
        }
        self.hungry = false;
        self.progress();
    }

    /// A client write finished; `buf` is the vector [`Output::WriteClient`] gave.
    pub fn handle_client_written(&mut self, mut buf: Vec<u8>, result: io::Result<()>, now: Instant) {
        self.now = now;
        if let State::Tunnel(t) = &mut self.state
            && t.down.is_writing()
        {
            let written = t.down.written(buf, result);
            self.tunnel_moved(written.map(|()| false).map_err(|e| format!("client write failed: {}", e.0)));
            return;
        }
        self.write_since = None;
        if result.is_err() {
            // The client is gone: nothing can reach it any more.
            self.abort();
            return;
        }
        buf.clear();
        match self.tls.as_deref_mut() {
            Some(tls) => tls.cipher_out = buf,
            None if buf.capacity() > self.spare.capacity() => self.spare = buf,
            None => {}
        }
        self.progress();
    }

    /// Ciphertext came from the client (or its close): decrypted into the input, as a
    /// plain read would have put it there.
    fn tls_client_read(&mut self, mut buf: Vec<u8>, result: io::Result<usize>) {
        self.reading = false;
        let Some(tls) = self.tls.as_deref_mut() else { return };
        let n = result.map_or(0, |n| n.min(buf.len()));
        self.eof |= n == 0;
        tls.big_reads = n > 0 && n >= buf.capacity();
        if tls.failed {
            buf.clear();
            tls.cipher_in = buf;
            self.hungry = false;
            return;
        }
        if !tls.started && n > 0 {
            tls.started = true;
            // A TLS connection opens with a handshake record (22); a request line with
            // a method's letters.
            if buf[0] != 0x16 && buf[0].is_ascii_alphabetic() {
                self.input.prepare().extend_from_slice(&buf[..n]);
                self.tls = None;
                self.plain_on_tls = true;
                self.hungry = false;
                return;
            }
        }
        let decrypted = decrypt(&mut tls.conn, &buf[..n], &mut self.input);
        buf.clear();
        tls.cipher_in = buf;
        match decrypted {
            Ok(d) => {
                self.eof |= d.closed;
                // Only handshake or partial records: nothing for the codec yet, read on.
                self.hungry = !d.got && !self.eof;
            }
            Err(e) => {
                let stage = if tls.conn.is_handshaking() { "TLS handshake failed" } else { "TLS session failed" };
                self.tls_broken(format!("{stage}: {e}"));
            }
        }
    }

    /// The client's TLS session failed: the alert rustls queued goes out, then the
    /// connection closes as after an error answer (write side shut, what the client
    /// still sends read and dropped for a while: closing on unread bytes would reset
    /// the connection and could destroy the alert). A request under way is cut, as
    /// when the client goes.
    fn tls_broken(&mut self, reason: String) {
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.closed = true;
            tls.failed = true;
        }
        self.hungry = false;
        self.queue.push_back(Output::Log(Log::Tls { peer: self.peer, reason }));
        match self.state {
            State::Head(_) | State::Flush(_) | State::Closing => {
                self.answered = true;
                self.state = State::Closing;
            }
            State::Linger { .. } | State::Closed => {}
            _ => self.abort(),
        }
    }

    /// Client output not written yet: in `out`, out with the driver, or encrypted and
    /// waiting in the TLS session.
    fn client_busy(&self) -> bool {
        !self.out.is_empty() || self.write_since.is_some() || self.tls.as_ref().is_some_and(|t| t.conn.wants_write())
    }

    /// The write side shut down ([`Output::ShutdownClient`]); an error ends the
    /// connection.
    pub fn handle_client_shutdown(&mut self, result: io::Result<()>, now: Instant) {
        self.now = now;
        if let State::Tunnel(t) = &mut self.state {
            let shut = t.down.shut_done(result);
            self.tunnel_moved(shut.map(|()| false).map_err(|e| format!("client shutdown failed: {}", e.0)));
            return;
        }
        if result.is_err() {
            self.abort();
            return;
        }
        self.progress();
    }

    /// Backend connection `id` is open: a new one (`None`), or one from the pool with
    /// the session it was kept with.
    pub fn handle_connected(&mut self, id: BackendId, pooled: Option<Session>, now: Instant) {
        self.now = now;
        let limits = self.limits;
        let Some(slot) = self.slot(id, |s| s.phase == Phase::Connecting) else { return };
        slot.connected = true;
        if let Some(permit) = &mut slot.permit {
            permit.connected();
        }
        let reused = pooled.is_some();
        // A connection asked for new is new, whatever the driver says: a retry is never
        // retried again.
        slot.reused = reused && slot.pooled;
        slot.phase = Phase::Send;
        match (pooled.map(|s| s.0), slot.tls_target.is_some()) {
            // A kept TLS connection goes on in its session (through its tunnel, if any).
            (Some(Some(link)), true) => slot.tls = Some(link),
            (Some(None), false) => {}
            (Some(_), _) => slot.failure = Some(Failure::new("a pooled connection of the wrong kind".to_string())),
            (None, false) => {}
            (None, true) => match (slot.via, slot.connect.as_deref()) {
                (Some(proxy), Some(authority)) => {
                    slot.phase = Phase::Tunnel;
                    slot.held = mem::replace(&mut slot.out, mem::take(&mut slot.held));
                    slot.out.clear();
                    proxy.write_connect(authority, &mut slot.out);
                }
                _ => start_tls(slot),
            },
        }
        slot.fetch = Some(if slot.stream {
            Fetch::streaming(slot.method.clone(), limits, reused)
        } else {
            Fetch::new(slot.method.clone(), limits, reused)
        });
        self.progress();
    }

    /// Backend connection `id` could not be opened (`reason` is for the log and, with
    /// `return_error_msg`, the client).
    pub fn handle_connect_failed(&mut self, id: BackendId, reason: impl fmt::Display, now: Instant) {
        self.now = now;
        let Some(slot) = self.slot(id, |s| s.phase == Phase::Connecting) else { return };
        slot.failure = Some(Failure::new(match slot.via {
            Some(proxy) => format!("proxy {} ({}): {reason}", proxy.shown, proxy.source),
            None => reason.to_string(),
        }));
        self.progress();
    }

    /// A read on backend connection `id` finished (as [`Connection::handle_client_read`]).
    pub fn handle_backend_read(&mut self, id: BackendId, buf: Vec<u8>, result: io::Result<usize>, now: Instant) {
        self.now = now;
        if self.slots.get(id).is_some_and(|s| s.in_use && s.tls.is_some()) {
            self.tls_read(id, buf, result);
            return;
        }
        let Some(slot) = self.slot(id, |s| s.reading) else { return };
        slot.input.restore(buf);
        slot.reading = false;
        slot.hungry = false;
        match result {
            Ok(0) => slot.eof = true,
            Ok(_) => {}
            Err(e) => slot.failure = Some(read_failure(slot.fetch.as_ref(), e)),
        }
        if slot.phase == Phase::Tunnel && slot.failure.is_none() {
            tunnel_answer(slot);
        }
        self.progress();
    }

    /// A write on backend connection `id` finished.
    pub fn handle_backend_written(&mut self, id: BackendId, buf: Vec<u8>, result: io::Result<()>, now: Instant) {
        self.now = now;
        if self.slots.get(id).is_some_and(|s| s.in_use && s.tls.is_some()) {
            self.tls_written(id, buf, result);
        } else {
            self.plain_written(id, buf, result);
        }
        self.progress();
    }

    /// Ciphertext came in on a TLS backend connection: decrypted into the slot's
    /// input, as a plain read would have put it there.
    fn tls_read(&mut self, id: BackendId, mut buf: Vec<u8>, result: io::Result<usize>) {
        let Some(slot) = self.slots.get_mut(id) else { return };
        let Some(link) = slot.tls.as_deref_mut().filter(|l| l.busy) else { return };
        link.busy = false;
        slot.reading = false;
        slot.hungry = false;
        match result {
            Ok(n) => match decrypt(&mut link.conn, buf.get(..n).unwrap_or_default(), &mut slot.input) {
                Ok(Decrypted { closed: true, .. }) if link.conn.is_handshaking() => {
                    slot.failure = Some(cut_handshake(slot.via, slot.connect.as_deref(), "closed"))
                }
                Ok(d) => slot.eof |= d.closed,
                Err(Undecryptable::Io(e)) => slot.failure = Some(Failure::new(format!("TLS: {e}"))),
                Err(Undecryptable::Tls(e)) => slot.failure = Some(Failure::new(tls_failure(&e))),
            },
            Err(e) if link.conn.is_handshaking() => {
                slot.failure = Some(cut_handshake(slot.via, slot.connect.as_deref(), &format!("broke ({e})")));
            }
            Err(e) => slot.failure = Some(read_failure(slot.fetch.as_ref(), e)),
        }
        buf.clear();
        link.cipher_in = buf;
        self.progress();
    }

    /// Ciphertext went out on a TLS backend connection. The slot's own write completes
    /// once the handshake is done and rustls has nothing left to send.
    fn tls_written(&mut self, id: BackendId, mut buf: Vec<u8>, result: io::Result<()>) {
        let Some(slot) = self.slots.get_mut(id) else { return };
        let Some(link) = slot.tls.as_deref_mut().filter(|l| l.busy) else { return };
        link.busy = false;
        buf.clear();
        link.cipher_out = buf;
        let done = result.is_err() || (!link.conn.wants_write() && !link.conn.is_handshaking());
        if done && let Some(plain) = link.plain.take() {
            self.plain_written(id, plain, result);
        } else if let Err(e) = result {
            slot.failure = Some(Failure::new(format!("cannot send to the backend: {e}")));
        }
    }

    /// The slot's write finished (on a plain connection, the socket write; under TLS,
    /// the ciphertext that carried it).
    fn plain_written(&mut self, id: BackendId, mut buf: Vec<u8>, result: io::Result<()>) {
        let Some(slot) = self.slot(id, |s| s.writing) else { return };
        slot.writing = false;
        if let Err(e) = result {
            if slot.phase == Phase::Send {
                // Kept: a retry sends it again.
                slot.sent = buf;
            }
            let failure = match &slot.fetch {
                Some(fetch) => fetch.write_failed(e),
                None => Failure::new(format!("cannot send the request: {e}")),
            };
            slot.failure = Some(failure);
        } else if slot.phase == Phase::Send {
            // Kept for a retry until the answer starts.
            slot.sent = buf;
            slot.phase = match slot.body {
                CallBody::Stream(length) => Phase::Relay { length, done: false },
                _ => Phase::Receive,
            };
            slot.hungry = slot.phase == Phase::Receive;
        } else if slot.phase == Phase::Tunnel {
            // CONNECT is out: its answer comes next.
            buf.clear();
            slot.out = buf;
            slot.hungry = true;
        } else {
            buf.clear();
            slot.out = buf;
        }
    }

    /// The name [`Output::Resolve`] asked for resolved to `result` (every address, in
    /// the resolver's order; the connection picks by `dns_lookup_family`).
    pub fn handle_resolved(&mut self, _id: BackendId, result: Result<Vec<IpAddr>, DnsError>, now: Instant) {
        self.now = now;
        let State::Resolve(p) = mem::replace(&mut self.state, State::Closed) else { return };
        let Some(fp) = self.fwd else { return };
        self.state = match result.map(|addrs| fp.pick(&addrs)) {
            Ok(Some(ip)) => self.dial(p, ip),
            Ok(None) => self.dns_failed(p, DnsError::Failed("no address of the configured family".to_string())),
            Err(e) => self.dns_failed(p, e),
        };
        self.progress();
    }

    /// The SRV set [`Output::Discover`] asked for backend connection `id`: the call
    /// goes to the target it picks (the request rewritten for it), or fails with why
    /// there is none (the name asked is in the reason, and so in the log line).
    pub fn handle_discovered(&mut self, id: BackendId, result: Result<Arc<SrvSet>, DnsError>, now: Instant) {
        self.now = now;
        let gw = self.gw;
        let Some(slot) = self.slot(id, |s| s.phase == Phase::Discover) else { return };
        let aimed = result.map_err(|e| e.to_string()).and_then(|set| {
            let (target, port) = set.pick();
            let addr = HostAddr { scheme: slot.origin.scheme, host: target.to_string(), port };
            let profile = slot.tls_target.as_ref().map(|t| t.profile.clone());
            let aim = Aim::new(gw, slot.via, &addr, profile.as_ref(), "the SRV target")?;
            let hop = redirect::Hop {
                authority: addr.authority(),
                addr,
                target: redirect::sent_target(&slot.out),
                method: slot.method.clone(),
                keep_body: true,
                cross_origin: false,
            };
            let request = redirect::rewrite(&slot.out, &hop, aim.form, aim.proxy_auth())?;
            Ok((aim, hop.addr, request))
        });
        match aimed {
            Ok((aim, origin, request)) => {
                aim.apply(slot, origin);
                slot.out = request;
                slot.phase = Phase::Connecting;
                let connect =
                    Output::Connect { id, host: slot.host.clone(), pool_key: slot.pool_key.clone(), pooled: true };
                self.queue.push_back(connect);
            }
            Err(why) => {
                slot.phase = Phase::Connecting;
                slot.failure = Some(Failure::new(why));
            }
        }
        self.progress();
    }

    /// The tunnel's connection ([`Output::OpenTunnel`]) is open, or why not.
    pub fn handle_tunnel_opened(&mut self, result: Result<(), String>, now: Instant) {
        self.now = now;
        let State::Opening(p) = mem::replace(&mut self.state, State::Closed) else { return };
        self.state = match result {
            Ok(()) => self.open_tunnel(p),
            Err(reason) => {
                self.log_forward(p.dest.authority.clone(), reason.clone());
                self.fail(StatusCode::BAD_GATEWAY, &reason, p.line)
            }
        };
        self.progress();
    }

    /// A read on the tunnel's connection finished (as [`Connection::handle_client_read`]).
    pub fn handle_tunnel_read(&mut self, buf: Vec<u8>, result: io::Result<usize>, now: Instant) {
        self.now = now;
        let State::Tunnel(t) = &mut self.state else { return };
        let read = t.down.read_done(buf, result);
        self.tunnel_moved(read.map_err(|e| format!("destination read failed: {}", e.0)));
    }

    /// A write on the tunnel's connection finished.
    pub fn handle_tunnel_written(&mut self, buf: Vec<u8>, result: io::Result<()>, now: Instant) {
        self.now = now;
        let State::Tunnel(t) = &mut self.state else { return };
        let written = t.up.written(buf, result);
        self.tunnel_moved(written.map(|()| false).map_err(|e| format!("destination write failed: {}", e.0)));
    }

    /// The tunnel connection's write side is shut.
    pub fn handle_tunnel_shutdown(&mut self, result: io::Result<()>, now: Instant) {
        self.now = now;
        let State::Tunnel(t) = &mut self.state else { return };
        let shut = t.up.shut_done(result);
        self.tunnel_moved(shut.map(|()| false).map_err(|e| format!("destination shutdown failed: {}", e.0)));
    }

    /// A splice ([`Output::Splice`]) ended.
    pub fn handle_spliced(&mut self, up: bool, result: Spliced, now: Instant) {
        self.now = now;
        let State::Tunnel(t) = &mut self.state else { return };
        let (pipe, from, to) =
            if up { (&mut t.up, "client", "destination") } else { (&mut t.down, "destination", "client") };
        let why = match &result {
            Spliced::ReadFailed(e) => Some(format!("{from} read failed: {e}")),
            Spliced::WriteFailed(e) => Some(format!("{to} write failed: {e}")),
            _ => None,
        };
        let unsupported = matches!(result, Spliced::Unsupported);
        let moved = pipe.spliced(result);
        if unsupported {
            t.up.copy();
            t.down.copy();
        }
        self.tunnel_moved(match why {
            Some(why) => Err(why),
            None => moved.map_err(|e| e.0.to_string()),
        });
    }

    /// After a tunnel operation: `Ok(true)` when bytes came in (the idle clock
    /// restarts), an error ends the tunnel at once, and the tunnel ends when both
    /// directions are closed.
    fn tunnel_moved(&mut self, moved: Result<bool, String>) {
        let State::Tunnel(t) = &mut self.state else { return };
        match moved {
            Ok(true) => t.last = self.now,
            Ok(false) => {}
            Err(reason) => return self.end_tunnel(Some(reason)),
        }
        if t.up.is_done() && t.down.is_done() {
            self.end_tunnel(None);
        }
    }

    /// The tunnel is over: its access line (200, the bytes sent to the client), a log
    /// line when it broke, and the connection closes.
    fn end_tunnel(&mut self, broke: Option<String>) {
        let State::Tunnel(t) = mem::replace(&mut self.state, State::Closed) else { return };
        if let Some(reason) = broke {
            self.log_forward(t.dest, reason);
        }
        let line = t.line.tunnel_line(t.up.bytes, t.down.bytes, t.up.spliced + t.down.spliced, self.now);
        self.queue.push_back(Output::Log(Log::Access(line)));
        self.queue.push_back(Output::Close);
    }

    /// Time has come to `now`. Calling it early is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if matches!(self.state, State::Closed) {
            return;
        }
        let cfg = &self.gw.config;
        if let Some(at) = self.write_since.and_then(|since| after(since, cfg.write_timeout))
            && now >= at
        {
            // A client that does not read its answer is cut.
            self.abort();
            return;
        }
        if let State::Linger { until } = self.state
            && now >= until
        {
            self.abort();
            return;
        }
        let state = mem::replace(&mut self.state, State::Closed);
        self.state = match state {
            State::Head(wait) if wait.deadline(cfg).is_some_and(|d| now >= d) => match wait.expired() {
                Some((status, reason)) => {
                    let line = AccessLog::unreadable(self.peer, self.input.pending(), wait.started().unwrap_or(now));
                    self.fail(status, reason, line)
                }
                None => State::Closing,
            },
            State::Body { deadline: Some(d), line, .. } if now >= d => {
                self.fail(StatusCode::REQUEST_TIMEOUT, "request body timeout", line)
            }
            State::Exchange { mut ex, line, deadline } if now >= deadline => {
                ex.handle_timeout(now);
                self.drive(ex, line)
            }
            State::Stream { leg: Leg::Endpoint(mut ex), line, .. } if now >= ex.deadline() => {
                ex.handle_timeout(now);
                self.close_slots();
                self.settle_stream(ex, line)
            }
            State::Stream { leg: Leg::Forward(f), line, .. } if now >= f.deadline => {
                self.close_slots();
                self.forward_timed_out(f.dest, line)
            }
            State::Pump(p) if now >= p.leg.deadline() => self.cut(p, Cut::Timeout),
            State::Resolve(p) | State::Opening(p) if now >= p.deadline => {
                self.forward_timed_out(p.dest.authority, p.line)
            }
            State::Tunnel(t) if now >= t.last + t.idle => {
                self.state = State::Tunnel(t);
                self.end_tunnel(Some("idle timeout".to_string()));
                return;
            }
            other => other,
        };
        self.progress();
    }

    /// The server is stopping: a connection idle for [`STOP_GRACE`] since its last
    /// answer closes now, one that answered more recently when that much has passed; a
    /// request under way or arriving before then is answered with `Connection: close`.
    pub fn handle_stop(&mut self, now: Instant) {
        self.now = now;
        self.stopping = true;
        self.progress();
    }

    // ----- what to do -----

    /// The next thing to do, or `None` until something happens.
    pub fn poll(&mut self) -> Option<Output<'g>> {
        if let Some(o) = self.queue.pop_front() {
            return Some(o);
        }
        if matches!(self.state, State::Closed) {
            return None;
        }
        if let Some(tls) = self.tls.as_deref_mut() {
            if self.write_since.is_none() {
                if !self.out.is_empty() {
                    // rustls takes it all (no limit set): the next write carries it.
                    self.handed += 1;
                    let _ = io::Write::write_all(&mut tls.conn.writer(), &self.out);
                    self.out.clear();
                }
                if tls.conn.wants_write() {
                    let mut bytes = mem::take(&mut tls.cipher_out);
                    encrypt_pending(&mut tls.conn, &mut bytes);
                    self.write_since = Some(self.now);
                    return Some(Output::WriteClient(bytes));
                }
            }
        } else if !self.out.is_empty() && self.write_since.is_none() {
            self.write_since = Some(self.now);
            self.handed += 1;
            let bytes = mem::replace(&mut self.out, mem::take(&mut self.spare));
            return Some(Output::WriteClient(bytes));
        }
        if let State::Tunnel(t) = &mut self.state {
            // The 200 goes out first.
            if self.write_since.is_some() || !self.out.is_empty() {
                return None;
            }
            let quiet = !t.up.has_io() && !t.down.has_io();
            if let Some(op) = t.up.next_with(quiet) {
                return Some(match op {
                    PipeOp::Read(buf) => Output::ReadClient(buf),
                    PipeOp::Write(bytes) => Output::WriteTunnel(bytes),
                    PipeOp::Shutdown => Output::ShutdownTunnel,
                    PipeOp::Splice => Output::Splice { up: true },
                });
            }
            let quiet = !t.up.has_io() && !t.down.has_io();
            return t.down.next_with(quiet).map(|op| match op {
                PipeOp::Read(buf) => Output::ReadTunnel(buf),
                PipeOp::Write(bytes) => Output::WriteClient(bytes),
                PipeOp::Shutdown => Output::ShutdownClient,
                PipeOp::Splice => Output::Splice { up: false },
            });
        }
        let reads_client =
            matches!(self.state, State::Head(_) | State::Body { .. } | State::Stream { .. } | State::Linger { .. });
        if self.hungry && reads_client && !self.reading && !self.eof {
            self.reading = true;
            if let Some(tls) = self.tls.as_deref_mut() {
                let mut buf = mem::take(&mut tls.cipher_in);
                buf.clear();
                buf.reserve(if tls.big_reads { TLS_READ } else { TLS_CLIENT_READ });
                return Some(Output::ReadClient(buf));
            }
            return Some(Output::ReadClient(self.input.take_for_read()));
        }
        for (id, slot) in self.slots.iter_mut().enumerate() {
            if !slot.in_use || !slot.connected || slot.failure.is_some() {
                continue;
            }
            if let Some(link) = slot.tls.as_deref_mut() {
                if let Some(output) = tls_poll(id, link, &mut slot.out, &mut slot.writing, slot.hungry && !slot.eof) {
                    slot.reading = matches!(output, Output::ReadBackend { .. });
                    return Some(output);
                }
                continue;
            }
            if !slot.writing && !slot.out.is_empty() {
                slot.writing = true;
                return Some(Output::WriteBackend { id, bytes: mem::take(&mut slot.out) });
            }
            if slot.hungry && !slot.reading && !slot.eof && !slot.writing {
                slot.reading = true;
                return Some(Output::ReadBackend { id, buf: slot.input.take_for_read() });
            }
        }
        None
    }

    /// When [`Connection::handle_timeout`] has work to do next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let cfg = &self.gw.config;
        let write = self.write_since.and_then(|since| after(since, cfg.write_timeout));
        let state = match &self.state {
            State::Head(wait) if self.stopping && wait.is_idle() => {
                earliest(wait.deadline(cfg), Some(wait.since() + STOP_GRACE))
            }
            State::Head(wait) => wait.deadline(cfg),
            State::Body { deadline, .. } => *deadline,
            State::Exchange { deadline, .. } => Some(*deadline),
            State::Stream { leg, .. } => Some(leg.deadline()),
            State::Pump(p) => Some(p.leg.deadline()),
            State::Resolve(p) | State::Opening(p) => Some(p.deadline),
            State::Tunnel(t) => Some(t.last + t.idle),
            State::Linger { until } => Some(*until),
            State::Flush(_) | State::Closing | State::Closed => None,
        };
        earliest(write, state)
    }

    // ----- inside -----

    fn slot(&mut self, id: BackendId, expected: impl Fn(&Slot<'g>) -> bool) -> Option<&mut Slot<'g>> {
        self.slots.get_mut(id).filter(|s| s.in_use && expected(s))
    }

    /// The client is gone or too slow: close everything now.
    fn abort(&mut self) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.close_slots();
        // A request under way still gets its access line: a body cut by the client's
        // going with the status and bytes sent, one not answered yet as 499 (nginx's
        // "client closed request").
        let line = match mem::replace(&mut self.state, State::Closed) {
            State::Pump(p) => Some(p.line.line(p.status, p.sent, self.now)),
            State::Body { line, .. } | State::Exchange { line, .. } | State::Stream { line, .. } => {
                StatusCode::from_u16(499).ok().map(|status| line.line(status, 0, self.now))
            }
            State::Resolve(p) | State::Opening(p) => {
                StatusCode::from_u16(499).ok().map(|status| p.line.line(status, 0, self.now))
            }
            State::Tunnel(t) => Some(t.line.line(StatusCode::OK, t.down.bytes, self.now)),
            _ => None,
        };
        if let Some(line) = line {
            self.queue.push_back(Output::Log(Log::Access(line)));
        }
        self.queue.push_back(Output::Close);
    }

    fn progress(&mut self) {
        // Each step either changes the state or waits for I/O; a step that changed
        // something runs the next one.
        for _ in 0..256 {
            let state = mem::replace(&mut self.state, State::Closed);
            let (state, moved) = self.step(state);
            self.state = state;
            if !moved {
                return;
            }
        }
    }

    fn step(&mut self, state: State<'g>) -> (State<'g>, bool) {
        match state {
            State::Head(wait) => self.step_head(wait),
            State::Body { req, serve, body, deadline, line } => self.step_body(req, serve, body, deadline, line),
            State::Exchange { ex, line, deadline } => self.step_exchange(ex, line, deadline),
            State::Stream { leg, line, id } => self.step_stream(leg, line, id),
            State::Resolve(p) => (State::Resolve(p), false),
            State::Opening(p) => (State::Opening(p), false),
            State::Tunnel(t) => (State::Tunnel(t), false),
            State::Pump(p) => self.step_pump(p),
            State::Flush(next) => {
                if self.client_busy() {
                    return (State::Flush(next), false);
                }
                match next {
                    // Stopping too: this answer went out without `Connection: close`, so
                    // the client may send another request; the head wait closes the
                    // connection once it has been quiet for STOP_GRACE.
                    Next::KeepAlive => (self.next_request(), true),
                    Next::Close | Next::Switch => (State::Closing, true),
                }
            }
            State::Closing => {
                if self.client_busy() {
                    return (State::Closing, false);
                }
                if let Some(tls) = self.tls.as_deref_mut().filter(|t| !t.closed) {
                    // The session ends with close_notify: written, then on as plain.
                    tls.closed = true;
                    tls.conn.send_close_notify();
                    return (State::Closing, false);
                }
                self.close_slots();
                if self.answered && !self.eof {
                    self.queue.push_back(Output::ShutdownClient);
                    return (State::Linger { until: self.now + LINGER }, true);
                }
                self.queue.push_back(Output::Close);
                (State::Closed, false)
            }
            State::Linger { until } => {
                if self.eof {
                    self.queue.push_back(Output::Close);
                    return (State::Closed, false);
                }
                if !self.reading {
                    // Whatever came is dropped; read on.
                    self.input.clear();
                    self.hungry = true;
                }
                (State::Linger { until }, false)
            }
            State::Closed => (State::Closed, false),
        }
    }

    /// Between keep-alive requests: buffers grown by the last one are given back.
    fn next_request(&mut self) -> State<'g> {
        if self.out.capacity() > 16 * 1024 {
            self.out = Vec::new();
        }
        if self.spare.capacity() > 16 * 1024 {
            self.spare = Vec::new();
        }
        self.input.shrink_idle(CLIENT_READ, 8 * 1024);
        self.hungry = self.input.pending().is_empty();
        self.answered = false;
        State::Head(HeadWait::new(false, self.now))
    }

    /// The codec needs more client bytes: `false` when none will come.
    fn starve(&mut self) -> bool {
        self.hungry = true;
        !self.eof
    }

    fn step_head(&mut self, mut wait: HeadWait) -> (State<'g>, bool) {
        if mem::take(&mut self.plain_on_tls) {
            let line = AccessLog::unreadable(self.peer, self.input.pending(), self.now);
            return (self.fail(StatusCode::BAD_REQUEST, "plain HTTP request sent to the HTTPS port", line), true);
        }
        if self.stopping && wait.is_idle() && self.input.pending().is_empty() && self.now >= wait.since() + STOP_GRACE {
            return (State::Closing, true);
        }
        if self.hungry || self.reading {
            return (State::Head(wait), false);
        }
        if self.input.pending().is_empty() {
            return if self.starve() { (State::Head(wait), false) } else { (State::Closing, true) };
        }
        wait.bytes_arrived(self.now);
        match self.server.handle_input(self.input.pending()) {
            Ok((n, ServerEvent::Request(req))) => {
                self.input.consume(n);
                (self.start_request(*req), true)
            }
            Ok((n, ServerEvent::NeedMore)) => {
                self.input.consume(n);
                // A head cut short by the client's close gets no answer.
                if self.starve() { (State::Head(wait), false) } else { (State::Closing, true) }
            }
            Ok(_) => (State::Closing, true),
            Err(e) => {
                let line = AccessLog::unreadable(self.peer, self.input.pending(), wait.started().unwrap_or(self.now));
                (self.fail(e.status(), e.reason(), line), true)
            }
        }
    }

    fn start_request(&mut self, mut req: Request) -> State<'g> {
        let now = self.now;
        if let Some(fp) = self.fwd {
            return self.start_forward(req, fp);
        }
        let mut creq = match ClientRequest::from_head(&mut req, self.peer) {
            Ok(creq) => creq,
            Err(reason) => return self.fail(StatusCode::BAD_REQUEST, reason, AccessLog::refused(&req, self.peer, now)),
        };
        let mut line = AccessLog::new(&creq, now);
        let gw = self.gw;
        match gw.dispatch(&creq.method, &creq.path, creq.query.as_deref()) {
            Dispatch::Endpoint(route) if route.streaming => {
                line.for_endpoint(route.endpoint.index);
                creq.body = RequestBody::relayed(req.framing);
                self.start_stream(creq, route, line)
            }
            Dispatch::Endpoint(route) => {
                line.for_endpoint(route.endpoint.index);
                self.read_body(creq, Serve::Endpoint(route), line)
            }
            Dispatch::Builtin(b) => self.read_body(creq, Serve::Builtin(b), line),
            Dispatch::Reply(reply) => {
                // A request without a body ends here and the connection stays open; a
                // body nobody needs is not read: the codec closes after answering.
                if let Ok((n, ServerEvent::End(_))) = self.server.handle_input(self.input.pending()) {
                    self.input.consume(n);
                }
                self.respond(reply, line, false)
            }
        }
    }

    // ----- the forward proxy -----

    /// A request on the forward proxy's listener: a CONNECT opens a tunnel, anything
    /// else is sent on to the host it names; both under the egress policy.
    fn start_forward(&mut self, req: Request, fp: &'g ForwardPlan) -> State<'g> {
        let (now, peer) = (self.now, self.peer);
        let tunnel = req.method == Method::CONNECT;
        let dest = if tunnel { fp.tunnel_destination(&req) } else { fp.destination(&req) };
        let dest = match dest {
            Ok(dest) => dest,
            Err(reason) => return self.fail(StatusCode::BAD_REQUEST, reason, AccessLog::refused(&req, peer, now)),
        };
        let line = AccessLog::forwarded(&req, &dest, peer, now);
        if tunnel && !fp.config.connect.enabled {
            // Envoy without the CONNECT upgrade: refused, and the connection closed
            // (what the client sent after its CONNECT is never read as HTTP).
            return self.fail(StatusCode::FORBIDDEN, "CONNECT is not enabled on this proxy", line);
        }
        let body = match RequestBody::relayed(req.framing) {
            RequestBody::Stream(length) if !tunnel => Some(length),
            _ => None,
        };
        if body.is_none() && !tunnel {
            // No body: the codec sees the request end now.
            match self.server.handle_input(self.input.pending()) {
                Ok((n, ServerEvent::End(_))) => self.input.consume(n),
                Ok(_) => {}
                Err(e) => return self.fail(e.status(), e.reason(), line),
            }
        }
        if let Err(denied) = fp.egress.check_host(&dest.host, dest.port, tunnel) {
            return self.denied(denied, &dest, line, tunnel);
        }
        let mut request = Vec::new();
        if !tunnel && let Err(reason) = fp.write_request(&req, &dest, body, &mut request) {
            return self.fail(StatusCode::BAD_REQUEST, reason, line);
        }
        let p = Box::new(Pending {
            request,
            method: req.method.clone(),
            body,
            tunnel,
            line,
            deadline: now + fp.config.timeout,
            dest,
            permit: None,
        });
        match p.dest.ip() {
            Some(ip) => self.dial(p, ip),
            None => {
                self.queue.push_back(Output::Resolve { id: 0, name: p.dest.host.clone() });
                State::Resolve(p)
            }
        }
    }

    /// The destination's address is known: vetted, then dialled (that address and no
    /// other): a tunnel's connection, or a backend connection for the request.
    fn dial(&mut self, mut p: Box<Pending>, ip: IpAddr) -> State<'g> {
        let Some(fp) = self.fwd else { return State::Closing };
        let addr = SocketAddr::new(ip, p.dest.port);
        if let Err(denied) = fp.egress.check_addr(addr) {
            return self.denied(denied, &p.dest, p.line, p.tunnel);
        }
        match fp.breakers.admit(&p.dest.authority) {
            Ok(permit) => p.permit = Some(permit),
            Err(open) => return self.overflowed(open, p),
        }
        if p.tunnel {
            self.queue.push_back(Output::OpenTunnel { addr });
            return State::Opening(p);
        }
        let Pending { dest, request, method, body, line, deadline, permit, .. } = *p;
        let host = HostAddr { scheme: Scheme::Http, host: ip.to_string(), port: dest.port };
        // Pooled by the vetted address: never shared with the gateway's backends.
        let pool_key = crate::backend::forward_pool_key(&addr);
        let slot = Slot::forward(method, host, pool_key, body, request, permit);
        let id = match self.slots.iter().position(|s| !s.in_use) {
            Some(free) => {
                self.slots[free] = slot;
                free
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        let s = &self.slots[id];
        self.queue.push_back(Output::Connect { id, host: s.host.clone(), pool_key: s.pool_key.clone(), pooled: true });
        State::Stream { leg: Leg::Forward(Box::new(Forwarded { dest: dest.authority, deadline })), line, id }
    }

    /// A circuit breaker of the destination is open: 503, the breaker named in
    /// [`breaker::HEADER`] and the body, and a log line.
    fn overflowed(&mut self, open: Breaker, p: Box<Pending>) -> State<'g> {
        let name = open.name();
        self.log_forward(p.dest.authority, format!("circuit breaker open: {name}"));
        let mut reply = Reply::text(StatusCode::SERVICE_UNAVAILABLE, &format!("circuit breaker open: {name}"));
        reply.headers.insert(breaker::HEADER, http::HeaderValue::from_static(name));
        self.respond(reply, p.line, p.tunnel)
    }

    /// No response head from `dest` within the forward proxy's `timeout`: 504, closed.
    fn forward_timed_out(&mut self, dest: String, line: AccessLog) -> State<'g> {
        let reason = "the destination did not answer in time";
        self.log_forward(dest, reason.to_string());
        self.respond(Reply::text(StatusCode::GATEWAY_TIMEOUT, reason), line, true)
    }

    /// The destination's name did not resolve: 503 `DNS resolution failure`, or 503
    /// `DNS cache overflow` when the cache had no room for it (Envoy's words), the
    /// reason in the log.
    fn dns_failed(&mut self, p: Box<Pending>, error: DnsError) -> State<'g> {
        let (body, reason) = match error {
            DnsError::Overflow => ("DNS cache overflow", format!("cannot resolve {}: DNS cache overflow", p.dest.host)),
            DnsError::Failed(why) => ("DNS resolution failure", format!("cannot resolve {}: {why}", p.dest.host)),
        };
        self.log_forward(p.dest.authority, reason);
        self.respond(Reply::text(StatusCode::SERVICE_UNAVAILABLE, body), p.line, p.tunnel)
    }

    /// The egress policy refused the destination: 403, the reason in
    /// [`forward::DENIED_HEADER`] and the body, and a log line. A refused tunnel closes
    /// the connection.
    fn denied(&mut self, denied: Denied, dest: &Destination, line: AccessLog, close: bool) -> State<'g> {
        let reason = denied.to_string();
        self.queue.push_back(Output::Log(Log::Denied {
            peer: self.peer,
            dest: dest.authority.clone(),
            reason: reason.clone(),
        }));
        let mut reply = Reply::text(StatusCode::FORBIDDEN, &format!("egress denied: {reason}"));
        if let Ok(v) = http::HeaderValue::from_str(&reason) {
            reply.headers.insert(forward::DENIED_HEADER, v);
        }
        self.respond(reply, line, close)
    }

    /// The tunnel's connection is open: `200` to the client, then bytes both ways;
    /// what the client sent after its CONNECT head goes first.
    fn open_tunnel(&mut self, mut p: Box<Pending>) -> State<'g> {
        let Some(fp) = self.fwd else { return State::Closing };
        let none = HeaderMap::new();
        let head = ResponseHead { status: StatusCode::OK, headers: &none, body: BodyLength::Known(0), close: false };
        if self.server.write_response_head(&head, &mut self.out).is_err()
            || self.server.finish_response(&mut self.out) != Ok(Next::Switch)
        {
            return State::Closing;
        }
        self.answered = true;
        let early = self.input.pending().to_vec();
        self.input.clear();
        self.queue.push_back(Output::Log(Log::Tunnel { dest: p.dest.authority.clone() }));
        let splice = self.splice && fp.config.connect.splice;
        State::Tunnel(Box::new(Tunnel {
            up: Pipe::with(early).splicing(splice),
            down: Pipe::default().splicing(splice),
            dest: p.dest.authority,
            last: self.now,
            idle: fp.config.idle_timeout,
            line: p.line,
            _permit: p.permit.take().map(|mut permit| {
                permit.connected();
                permit
            }),
        }))
    }

    fn read_body(&mut self, req: ClientRequest, serve: Serve<'g>, line: AccessLog) -> State<'g> {
        self.server.write_continue(&mut self.out);
        let deadline = body_deadline(&self.gw.config, line.started());
        self.hungry = false;
        State::Body { req: Box::new(req), serve, body: Vec::new(), deadline, line }
    }

    fn step_body(
        &mut self,
        mut req: Box<ClientRequest>,
        serve: Serve<'g>,
        mut body: Vec<u8>,
        deadline: Option<Instant>,
        line: AccessLog,
    ) -> (State<'g>, bool) {
        if self.hungry || self.reading {
            return (State::Body { req, serve, body, deadline, line }, false);
        }
        match self.server.read_body_into(self.input.pending(), &mut body) {
            Ok((n, true)) => {
                self.input.consume(n);
                req.body = RequestBody::Full(body);
                (self.serve(req, serve, line), true)
            }
            Ok((n, false)) => {
                self.input.consume(n);
                if self.starve() {
                    (State::Body { req, serve, body, deadline, line }, false)
                } else {
                    // The client left before its body ended.
                    (State::Closing, true)
                }
            }
            Err(e) => (self.fail(e.status(), e.reason(), line), true),
        }
    }

    fn serve(&mut self, req: Box<ClientRequest>, serve: Serve<'g>, line: AccessLog) -> State<'g> {
        match serve {
            Serve::Builtin(b) => {
                let (at, wall) = self.epoch;
                let reply = builtin::answer(b, &req, wall + self.now.saturating_duration_since(at));
                self.respond(reply, line, false)
            }
            Serve::Endpoint(route) => {
                let ex = Box::new(Exchange::new(self.gw, route, *req, self.now));
                self.drive(ex, line)
            }
        }
    }

    /// Runs an aggregating exchange until it waits or answers.
    fn drive(&mut self, mut ex: Box<Exchange<'g>>, line: AccessLog) -> State<'g> {
        loop {
            match ex.poll(self.balancer) {
                Action::Call(call) => {
                    if let Err(reason) = self.open(&ex, &call, false) {
                        ex.handle_failure(call.id, reason);
                    }
                }
                Action::Wait(deadline) => return State::Exchange { ex, line, deadline },
                Action::Respond(reply) => {
                    // Calls still in flight are abandoned.
                    self.close_slots();
                    return self.respond(reply, line, false);
                }
                Action::Stream(_) | Action::Done => {
                    self.close_slots();
                    return self.respond(Reply::text(StatusCode::INTERNAL_SERVER_ERROR, ""), line, true);
                }
            }
        }
    }

    /// Opens a backend connection for `call`: its request is written out now, sent
    /// once connected. Returns the slot, or why the request cannot be written.
    fn open(&mut self, ex: &Exchange<'g>, call: &Call<'g>, stream: bool) -> Result<BackendId, &'static str> {
        if call.scheme == Scheme::Https && call.tls.is_none() {
            return Err("https backend without a TLS profile");
        }
        let mut slot = Slot::new(call, ex.endpoint().path.as_str(), stream);
        let id = match self.slots.iter().position(|s| !s.in_use) {
            Some(free) => {
                // The vectors of the last use are kept (no allocation per call). The
                // request went out in `out` and came back as `sent`: the one with the
                // room is written into.
                let old = mem::replace(&mut self.slots[free], slot);
                let slot = &mut self.slots[free];
                (slot.out, slot.sent) = (old.out, old.sent);
                if slot.out.capacity() < slot.sent.capacity() {
                    mem::swap(&mut slot.out, &mut slot.sent);
                }
                slot.out.clear();
                slot.sent.clear();
                free
            }
            None => {
                slot.out.reserve(512);
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[id];
        let written = ex.write_head(call, &mut slot.out);
        if let Err(e) = written {
            slot.in_use = false;
            return Err(e.reason());
        }
        if call.body == CallBody::Full {
            slot.out.extend_from_slice(ex.call_body(call.id));
        }
        if call.srv {
            slot.phase = Phase::Discover;
            self.queue.push_back(Output::Discover { id, name: call.origin.host.as_str() });
            return Ok(id);
        }
        self.queue.push_back(Output::Connect {
            id,
            host: Cow::Borrowed(call.host),
            pool_key: Cow::Borrowed(call.pool_key),
            pooled: true,
        });
        Ok(id)
    }

    fn step_exchange(&mut self, mut ex: Box<Exchange<'g>>, line: AccessLog, deadline: Instant) -> (State<'g>, bool) {
        let mut changed = false;
        for id in 0..self.slots.len() {
            match self.slot_step(id) {
                SlotEvent::Nothing => {}
                SlotEvent::Answer { status, headers, body } => {
                    let call = self.slots[id].call;
                    self.log_call(ex.endpoint().index, call, Some(status));
                    ex.handle_response(call, status, headers, body);
                    changed = true;
                }
                SlotEvent::Failed(f) => {
                    let call = self.slots[id].call;
                    self.log_call(ex.endpoint().index, call, None);
                    self.log_backend(ex.endpoint().path.as_str(), call, f.reason.clone());
                    ex.handle_failure(call, &f.reason);
                    changed = true;
                }
                SlotEvent::Head(_) => {
                    let call = self.slots[id].call;
                    ex.handle_failure(call, "unexpected response");
                    changed = true;
                }
            }
        }
        if changed { (self.drive(ex, line), true) } else { (State::Exchange { ex, line, deadline }, false) }
    }

    /// Moves backend connection `id` on with what it has; says what that means.
    fn slot_step(&mut self, id: BackendId) -> SlotEvent {
        let Some(slot) = self.slots.get_mut(id).filter(|s| s.in_use) else { return SlotEvent::Nothing };
        if let Some(failure) = slot.failure.take() {
            return self.failed(id, failure);
        }
        if slot.phase != Phase::Receive || slot.reading || slot.hungry {
            return SlotEvent::Nothing;
        }
        let Some(fetch) = slot.fetch.as_mut() else { return SlotEvent::Nothing };
        let progress = match fetch.handle_input(slot.input.pending()) {
            Ok((n, Progress::NeedMore)) => {
                slot.input.consume(n);
                if !slot.eof {
                    slot.hungry = true;
                    return SlotEvent::Nothing;
                }
                fetch.handle_eof()
            }
            Ok((n, progress)) => {
                slot.input.consume(n);
                Ok(progress)
            }
            Err(f) => Err(f),
        };
        let reusable = matches!(progress, Ok(Progress::Done(_)))
            && fetch.reusable()
            && slot.input.pending().is_empty()
            && !slot.eof;
        // A 407 can only be the proxy's own answer: the call failed there, and the
        // client must not be asked for the gateway's proxy credentials.
        let status = match &progress {
            Ok(Progress::Done(a)) => Some(a.status),
            Ok(Progress::Head(h)) => Some(h.status),
            _ => None,
        };
        // (Through a tunnel, the answer is the backend's.)
        if let (Some(StatusCode::PROXY_AUTHENTICATION_REQUIRED), Some(proxy), None) =
            (status, slot.via, slot.connect.as_deref())
        {
            let reason = format!(
                "proxy {} ({}) refused the request: 407 Proxy Authentication Required{}",
                proxy.shown,
                proxy.source,
                if proxy.authorization.is_some() { " (the credentials were not accepted)" } else { "" }
            );
            self.release(id, false);
            return SlotEvent::Failed(Failure::new(reason));
        }
        if let Some(status) = status.filter(|s| slot.follow && redirect::method_after(*s, &slot.method).is_some()) {
            let location = match &progress {
                Ok(Progress::Done(a)) => a.headers.get(http::header::LOCATION).map(|v| v.as_bytes().to_vec()),
                Ok(Progress::Head(h)) => h.head.get("location").map(<[u8]>::to_vec),
                _ => None,
            };
            match self.redirect(id, status, location.as_deref(), reusable) {
                Ok(true) => return SlotEvent::Nothing,
                Ok(false) => {}
                Err(why) => {
                    self.release(id, false);
                    return SlotEvent::Failed(Failure::new(why));
                }
            }
        }
        match progress {
            Ok(Progress::Done(answer)) => {
                self.release(id, reusable);
                SlotEvent::Answer { status: answer.status, headers: answer.headers, body: answer.body }
            }
            Ok(Progress::Head(head)) => {
                let slot = &mut self.slots[id];
                slot.codec = slot.fetch.take().map(Fetch::into_conn);
                slot.phase = Phase::Pump;
                slot.sent.clear();
                SlotEvent::Head(head)
            }
            Ok(Progress::NeedMore) => SlotEvent::Nothing,
            Err(failure) => self.failed(id, failure),
        }
    }

    /// A redirect came on backend connection `id`: `Ok(true)` when the slot now makes
    /// the next request (the connection that got the 3xx pooled or closed, a new one
    /// asked for), `Ok(false)` when the 3xx is the answer (no Location, or a body
    /// streamed from the client that cannot be sent again), or why the call fails.
    fn redirect(
        &mut self,
        id: BackendId,
        status: StatusCode,
        location: Option<&[u8]>,
        reusable: bool,
    ) -> Result<bool, String> {
        let gw = self.gw;
        let slot = &mut self.slots[id];
        if slot.body_streamed() {
            return Ok(false);
        }
        let target = redirect::sent_target(&slot.sent);
        let Some(hop) = redirect::next(status, &slot.method, &slot.origin, &target, location)? else {
            return Ok(false);
        };
        if slot.redirects == 0 {
            return Err(format!("stopped after {} redirects", redirect::MAX_REDIRECTS));
        }
        if hop.addr.scheme == Scheme::Https && slot.redirect_tls.is_none() {
            return Err("no usable TLS profile for an https redirect".to_string());
        }
        let aim = Aim::new(gw, slot.via, &hop.addr, slot.redirect_tls, "the redirect's host")?;
        let request = redirect::rewrite(&slot.sent, &hop, aim.form, aim.proxy_auth())?;
        // The connection that brought the 3xx: kept when its answer was read whole.
        let done = slot.put_away(id, reusable);
        let line = Log::Redirect {
            endpoint: slot.endpoint,
            backend: slot.call,
            status,
            to: format!("{}://{}{}", hop.addr.scheme.as_str(), hop.authority, hop.target),
        };
        slot.redirects -= 1;
        if !hop.keep_body {
            slot.body = CallBody::None;
        }
        slot.method = hop.method;
        aim.apply(slot, hop.addr);
        slot.sent.clear();
        let next = slot.reconnect(id, request, true);
        self.queue.extend([done, Output::Log(line), next]);
        Ok(true)
    }

    /// A backend connection failed: retried on a fresh connection when the policy
    /// allows (a pooled connection the backend had closed), else given up.
    fn failed(&mut self, id: BackendId, failure: Failure) -> SlotEvent {
        let Some(slot) = self.slots.get_mut(id) else { return SlotEvent::Failed(failure) };
        if slot.reused
            && !slot.sent.is_empty()
            && may_retry(&slot.method, &failure, slot.body_streamed())
            && slot.permit.as_mut().is_none_or(Permit::retry)
        {
            let request = mem::take(&mut slot.sent);
            let next = slot.reconnect(id, request, false);
            self.queue.extend([Output::CloseBackend { id }, next]);
            return SlotEvent::Nothing;
        }
        self.release(id, false);
        SlotEvent::Failed(failure)
    }

    /// Pools (`reusable`) or closes backend connection `id`, and frees its slot.
    fn release(&mut self, id: BackendId, reusable: bool) {
        let Some(slot) = self.slots.get_mut(id).filter(|s| s.in_use) else { return };
        let output = slot.put_away(id, reusable);
        slot.in_use = false;
        slot.permit = None;
        slot.fetch = None;
        slot.codec = None;
        slot.tls = None;
        // Not kept: an idle keep-alive connection would hold it (about 1 KiB each, for
        // about 400 instructions per request saved).
        slot.input = ReadBuf::default();
        self.queue.push_back(output);
    }

    fn close_slots(&mut self) {
        for id in 0..self.slots.len() {
            self.release(id, false);
        }
    }

    fn log_forward(&mut self, dest: String, reason: String) {
        self.queue.push_back(Output::Log(Log::Forward { dest, reason }));
    }

    fn log_call(&mut self, endpoint: usize, backend: usize, status: Option<StatusCode>) {
        self.queue.push_back(Output::Log(Log::Call { endpoint, backend, status }));
    }

    fn log_backend(&mut self, endpoint: &'g str, backend: usize, reason: String) {
        self.queue.push_back(Output::Log(Log::Backend { endpoint, backend, reason }));
    }

    // ----- no-op: streamed both ways -----

    fn start_stream(&mut self, creq: ClientRequest, route: Route<'g>, line: AccessLog) -> State<'g> {
        if creq.body == RequestBody::None {
            // No body to stream: the codec sees the request end now.
            match self.server.handle_input(self.input.pending()) {
                Ok((n, ServerEvent::End(_))) => self.input.consume(n),
                Ok(_) => {}
                Err(e) => return self.fail(e.status(), e.reason(), line),
            }
        }
        let mut ex = Box::new(Exchange::new(self.gw, route, creq, self.now));
        match ex.poll(self.balancer) {
            Action::Call(call) => match self.open(&ex, &call, true) {
                Ok(id) => State::Stream { leg: Leg::Endpoint(ex), line, id },
                Err(reason) => {
                    ex.handle_failure(call.id, reason);
                    self.settle_stream(ex, line)
                }
            },
            Action::Respond(reply) => self.respond(reply, line, false),
            _ => self.respond(Reply::text(StatusCode::INTERNAL_SERVER_ERROR, ""), line, true),
        }
    }

    /// A `no-op` exchange that ended without a response head: its answer (502, 504),
    /// and the connection closes (the request body may be half read).
    fn settle_stream(&mut self, mut ex: Box<Exchange<'g>>, line: AccessLog) -> State<'g> {
        let reply = match ex.poll(self.balancer) {
            Action::Respond(reply) => reply,
            _ => Reply::text(StatusCode::BAD_GATEWAY, ""),
        };
        self.respond(reply, line, true)
    }

    fn step_stream(&mut self, mut leg: Leg<'g>, line: AccessLog, id: BackendId) -> (State<'g>, bool) {
        let relayed = match self.relay(id) {
            Ok(moved) => moved,
            Err(Relay::BadBody(status, reason)) => {
                // The client's body is malformed: its fault, not the backend's. The
                // backend connection got part of it: it is closed, never pooled.
                self.close_slots();
                return (self.fail(status, reason, line), true);
            }
            Err(Relay::ClientGone) => {
                self.close_slots();
                return (State::Closing, true);
            }
        };
        let call = self.slots.get(id).map_or(0, |s| s.call);
        match self.slot_step(id) {
            SlotEvent::Nothing => (State::Stream { leg, line, id }, relayed),
            SlotEvent::Head(head) => {
                let none = HeaderMap::new();
                let (status, headers) = match &mut leg {
                    Leg::Endpoint(ex) => {
                        self.log_call(ex.endpoint().index, call, Some(head.status));
                        ex.handle_head(call, head.status);
                        let Action::Stream(stream) = ex.poll(self.balancer) else {
                            self.close_slots();
                            let Leg::Endpoint(ex) = leg else { return (State::Closing, true) };
                            return (self.settle_stream(ex, line), true);
                        };
                        (stream.status, &none)
                    }
                    Leg::Forward(f) => {
                        f.deadline = self.now + self.fwd.map_or(Duration::ZERO, |fp| fp.config.idle_timeout);
                        (head.status, self.fwd.map_or(&none, |fp| &fp.via))
                    }
                };
                let response = ResponseHead { status, headers, body: head.body_length(), close: self.stopping };
                let head_at = (self.out.len(), self.handed);
                if self.server.write_passthrough_head(&response, &head.head, &mut self.out).is_err() {
                    self.close_slots();
                    return (State::Closing, true);
                }
                self.answered = true;
                (State::Pump(Pumping { leg, line, id, status, sent: 0, head: head_at }), true)
            }
            SlotEvent::Failed(f) => (self.leg_failed(leg, call, f.reason, line), true),
            SlotEvent::Answer { .. } => {
                self.close_slots();
                (self.leg_failed(leg, call, "unexpected response".to_string(), line), true)
            }
        }
    }

    /// A streamed call failed before its response head: a `no-op` endpoint answers as
    /// its exchange says, the forward proxy 502 with the reason.
    fn leg_failed(&mut self, leg: Leg<'g>, call: usize, reason: String, line: AccessLog) -> State<'g> {
        match leg {
            Leg::Endpoint(mut ex) => {
                self.log_call(ex.endpoint().index, call, None);
                self.log_backend(ex.endpoint().path.as_str(), call, reason.clone());
                ex.handle_failure(call, &reason);
                self.settle_stream(ex, line)
            }
            Leg::Forward(f) => {
                self.log_forward(f.dest, reason.clone());
                self.respond(Reply::text(StatusCode::BAD_GATEWAY, &reason), line, true)
            }
        }
    }

    /// Moves client body bytes to backend connection `id` while it relays; says
    /// whether anything moved.
    fn relay(&mut self, id: BackendId) -> Result<bool, Relay> {
        let Some(slot) = self.slots.get_mut(id).filter(|s| s.in_use) else { return Ok(false) };
        let Phase::Relay { length, done } = slot.phase else { return Ok(false) };
        if slot.writing || !slot.out.is_empty() || slot.failure.is_some() {
            return Ok(false);
        }
        if done {
            slot.phase = Phase::Receive;
            slot.hungry = true;
            return Ok(true);
        }
        if self.hungry || self.reading {
            return Ok(false);
        }
        // `100 Continue` first, when the client asked for it (once).
        self.server.write_continue(&mut self.out);
        match self.server.relay_body(self.input.pending(), length, &mut slot.out) {
            Ok((n, true)) => {
                self.input.consume(n);
                slot.phase = Phase::Relay { length, done: true };
                Ok(true)
            }
            Ok((n, false)) => {
                self.input.consume(n);
                if slot.out.is_empty() {
                    self.hungry = true;
                    if self.eof {
                        return Err(Relay::ClientGone);
                    }
                }
                Ok(n > 0)
            }
            Err(e) => Err(Relay::BadBody(e.status(), e.reason())),
        }
    }

    fn step_pump(&mut self, mut p: Pumping<'g>) -> (State<'g>, bool) {
        let Some(slot) = self.slots.get_mut(p.id).filter(|s| s.in_use) else { return (State::Pump(p), false) };
        if let Some(failure) = slot.failure.take() {
            // The backend broke off (a reset, a failed read).
            return (self.cut(p, Cut::Failed(failure.reason)), true);
        }
        if self.out.len() >= FLUSH_AT || slot.reading || slot.hungry {
            return (State::Pump(p), false);
        }
        let Some(codec) = slot.codec.as_mut() else { return (self.cut(p, Cut::Failed("no codec".into())), true) };
        match pump_body(codec, slot.input.pending(), slot.eof, &mut self.server, &mut self.out, FLUSH_AT) {
            Ok((n, moved, Pumped::End)) => {
                slot.input.consume(n);
                p.sent += moved;
                let reusable = codec.reusable() && slot.input.pending().is_empty() && !slot.eof;
                self.release(p.id, reusable);
                let line = p.line.line(p.status, p.sent, self.now);
                self.queue.push_back(Output::Log(Log::Access(line)));
                match self.server.finish_response(&mut self.out) {
                    Ok(next) => (State::Flush(next), true),
                    Err(_) => (State::Closing, true),
                }
            }
            Ok((n, moved, pumped)) => {
                slot.input.consume(n);
                p.sent += moved;
                if let (Leg::Forward(f), true, Some(fp)) = (&mut p.leg, n > 0, self.fwd) {
                    f.deadline = self.now + fp.config.idle_timeout;
                }
                if pumped == Pumped::NeedMore {
                    slot.hungry = true;
                }
                (State::Pump(p), n > 0)
            }
            Err(e) => (self.cut(p, Cut::Failed(format!("invalid response body: {}", e.reason()))), true),
        }
    }

    /// A `no-op` response body that cannot end well. While no byte of the answer has
    /// reached the client, it is taken back and the client gets the 502 (504 at the
    /// timeout) it would have had before the head; after that the body is cut (the
    /// client sees a short body: no chunk terminator, or fewer bytes than announced)
    /// and the connection closes. Either way, a backend line and the access line.
    fn cut(&mut self, p: Pumping<'g>, cut: Cut) -> State<'g> {
        let call = self.slots.get(p.id).map_or(0, |s| s.call);
        self.close_slots();
        let (timed_out, reason) = match (cut, &p.leg) {
            (Cut::Timeout, Leg::Endpoint(_)) => {
                (true, "the endpoint timeout passed before the response body ended".to_string())
            }
            (Cut::Timeout, Leg::Forward(_)) => (true, "idle timeout while the response body flowed".to_string()),
            (Cut::Failed(reason), _) => (false, reason),
        };
        let (head_at, handed) = p.head;
        if handed == self.handed && self.out.len() >= head_at {
            self.out.truncate(head_at);
            self.server.take_back_head();
            let reply = match &p.leg {
                Leg::Endpoint(ex) => {
                    self.log_backend(ex.endpoint().path.as_str(), call, reason.clone());
                    ex.stream_failed(timed_out, &reason)
                }
                Leg::Forward(f) => {
                    self.log_forward(f.dest.clone(), reason.clone());
                    let status = if timed_out { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::BAD_GATEWAY };
                    Reply::text(status, &reason)
                }
            };
            return self.respond(reply, p.line, true);
        }
        let reason = format!("response body cut after {} bytes: {reason}", p.sent);
        match &p.leg {
            Leg::Endpoint(ex) => self.log_backend(ex.endpoint().path.as_str(), call, reason),
            Leg::Forward(f) => self.log_forward(f.dest.clone(), reason),
        }
        let line = p.line.line(p.status, p.sent, self.now);
        self.queue.push_back(Output::Log(Log::Access(line)));
        State::Closing
    }

    // ----- answers -----

    /// Writes a whole reply; the connection goes on as the codec says once written.
    fn respond(&mut self, reply: Reply, line: AccessLog, close: bool) -> State<'g> {
        match reply.write(&mut self.server, close || self.stopping, &mut self.out) {
            Ok(next) => {
                self.answered = true;
                let line = line.line(reply.status, reply.body.len() as u64, self.now);
                self.queue.push_back(Output::Log(Log::Access(line)));
                State::Flush(next)
            }
            Err(_) => State::Closing,
        }
    }

    /// Answers an error and closes: protocol errors and failures before any response
    /// byte went out.
    fn fail(&mut self, status: StatusCode, reason: &str, line: AccessLog) -> State<'g> {
        self.server.write_error(status, reason, &mut self.out);
        self.answered = true;
        let line = line.line(status, reason.len() as u64, self.now);
        self.queue.push_back(Output::Log(Log::Access(line)));
        State::Closing
    }
}

/// Why a pumped body ends early.
#[derive(Debug)]
enum Cut {
    Timeout,
    Failed(String),
}

/// Why relaying a client body stopped.
#[derive(Debug)]
enum Relay {
    BadBody(StatusCode, &'static str),
    ClientGone,
}

/// What a TLS backend connection asks the driver for next: the slot's pending
/// plaintext is handed to rustls (the slot's write is then under way), ciphertext
/// rustls wants sent goes out, and a read is asked for while the handshake needs one
/// or the slot wants bytes (`wants_plain`).
fn tls_poll<'g>(
    id: BackendId,
    link: &mut TlsLink,
    out: &mut Vec<u8>,
    writing: &mut bool,
    wants_plain: bool,
) -> Option<Output<'g>> {
    if link.busy {
        return None;
    }
    if link.plain.is_none() && !out.is_empty() {
        let plain = mem::take(out);
        // rustls buffers it (no limit is set at connect): the slot writes one request
        // head or one body piece at a time, and waits for it to complete first.
        let _ = io::Write::write_all(&mut link.conn.writer(), &plain);
        link.plain = Some(plain);
        *writing = true;
    }
    if link.conn.wants_write() {
        link.cipher_out.clear();
        encrypt_pending(&mut link.conn, &mut link.cipher_out);
        link.busy = true;
        return Some(Output::WriteBackend { id, bytes: mem::take(&mut link.cipher_out) });
    }
    if (link.conn.is_handshaking() || wants_plain) && link.conn.wants_read() {
        let mut buf = mem::take(&mut link.cipher_in);
        buf.clear();
        buf.reserve(TLS_READ);
        link.busy = true;
        return Some(Output::ReadBackend { id, buf });
    }
    None
}

/// A backend connection closed (`how`) in the middle of its TLS handshake: through a
/// proxy, the tunnel did.
fn cut_handshake(via: Option<&Proxy>, connect: Option<&str>, how: &str) -> Failure {
    Failure::new(match (via, connect) {
        (Some(proxy), Some(authority)) => {
            proxy.connect_failed(authority, &format!("the tunnel {how} during the TLS handshake"))
        }
        _ => format!("TLS: the backend's connection {how} during the handshake"),
    })
}

/// Starts the TLS session of a slot whose socket (or tunnel) is open.
fn start_tls(slot: &mut Slot<'_>) {
    let Some(target) = slot.tls_target.as_deref() else { return };
    match rustls::ClientConnection::new(target.profile.config.clone(), target.server_name.clone()) {
        Ok(mut conn) => {
            conn.set_buffer_limit(None);
            slot.tls = Some(Box::new(TlsLink {
                conn,
                cipher_out: Vec::new(),
                cipher_in: Vec::new(),
                busy: false,
                plain: None,
            }));
        }
        Err(e) => slot.failure = Some(Failure::new(format!("TLS: {e}"))),
    }
}

/// The proxy's answer to `CONNECT` came in (part of it, or all): a 2xx opens the
/// tunnel and TLS starts inside it with the held request; anything else fails the
/// call, saying what the proxy said.
fn tunnel_answer(slot: &mut Slot<'_>) {
    let (Some(proxy), Some(authority)) = (slot.via, slot.connect.clone()) else { return };
    let authority = &*authority;
    let fail = |why: &str| Failure::new(proxy.connect_failed(authority, why));
    match Proxy::connect_answer(slot.input.pending()) {
        Ok(None) if slot.eof => slot.failure = Some(fail("it closed the connection without answering CONNECT")),
        Ok(None) => slot.hungry = true,
        Ok(Some(answer)) if (200..300).contains(&answer.status) => {
            slot.input.consume(answer.len);
            if !slot.input.pending().is_empty() || slot.eof {
                // Bytes before the TLS handshake could only come from the proxy.
                slot.failure = Some(fail("it sent more than its CONNECT answer, or closed the tunnel at once"));
                return;
            }
            slot.phase = Phase::Send;
            mem::swap(&mut slot.out, &mut slot.held);
            start_tls(slot);
        }
        Ok(Some(answer)) => slot.failure = Some(Failure::new(proxy.connect_refused(authority, &answer))),
        Err(why) => slot.failure = Some(fail(&why)),
    }
}

/// A failed read on a backend connection, classified for a retry by its fetch.
fn read_failure(fetch: Option<&Fetch>, e: io::Error) -> Failure {
    match fetch {
        Some(fetch) => fetch.read_failed(e),
        None => Failure::new(format!("cannot read the response: {e}")),
    }
}

/// A TLS failure as the log and `return_error_msg` say it.
fn tls_failure(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => format!("TLS: the backend's certificate is not trusted: {c:?}"),
        rustls::Error::AlertReceived(a) => format!("TLS: the backend refused the handshake: {a:?}"),
        e => format!("TLS: {e}"),
    }
}
