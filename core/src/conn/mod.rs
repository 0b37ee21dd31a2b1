//! One client connection's whole life, Sans-IO: [`Connection`].
//!
//! The connection owns the server codec (and, on an HTTPS listener, the client's TLS
//! session, a `link::ServerLink`), the head, body, idle and write deadlines, every
//! status the client can get, and the access line. What a request means is its
//! service's (the gateway, the forward proxy or the admin pages, by the listener: see
//! the `service` module): the connection asks it once per request head and carries out
//! its outcome (an answer at once, a whole-body [`Exchange`], a streamed `no-op`
//! pass-through, a built-in endpoint, a forward-proxy request or tunnel, an admin
//! page).
//! The backend connections a request uses are calls of their own
//! (`call`: connecting, TLS, `CONNECT` through a proxy, redirects, the
//! stale-connection retry, the pool); the connection owns them and their output. A
//! driver moves bytes, runs one timer, keeps idle backend sockets and spawns the
//! connection's task; it decides nothing.
//!
//! # The driver loop
//!
//! `handle_*` (or [`Connection::handle`] with an [`Input`]) says what happened;
//! [`Connection::poll`] says what to do next ([`Output`], in [`crate::io`]). After
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
//!             Output::AwaitClient => wait until the client socket is readable,
//!                 holding no buffer; Input::ClientReady,
//!             Output::WriteClient(bytes) => start writing all of bytes,
//!             Output::ShutdownClient => shut the client socket's write side,
//!             Output::Connect { id, pool_key, pooled, addr } => take an idle socket
//!                 and its session from the pool under pool_key if pooled allows and one
//!                 is there, else connect to addr; then Input::Connected (with the
//!                 session, or None for a new socket) / Input::ConnectFailed; with
//!                 neither (a host name, nothing idle), Input::NoIdle,
//!             Output::ReadBackend { id, buf } / Output::WriteBackend { id, bytes } => as for the client,
//!             Output::PoolBackend { id, pool_key, session } => keep socket id and
//!                 session idle under pool_key,
//!             Output::CloseBackend { id } => drop socket id and its operation,
//!             Output::Resolve { id, name } => resolve name without blocking; Input::Resolved,
//!             Output::Discover { id, name } => the SRV set of name; Input::Discovered,
//!             Output::OpenTunnel { addr } => connect to addr; Input::TunnelOpened,
//!             Output::ReadTunnel(buf) / Output::WriteTunnel(bytes) / Output::ShutdownTunnel
//!                 => as for the client, on the tunnel's socket,
//!             Output::Splice { up } => splice one direction of the tunnel; Input::Spliced,
//!             Output::Stats => every shard's counters added up; Input::Stats,
//!             Output::Log(line) => log it,
//!             Output::Close => return,
//!         }
//!     }
//!     wait for an operation to finish, the timer, or the stop; feed it back with
//!     handle(Input::..., now) / handle_timeout(now) / handle_stop(now)
//! }
//! ```
//!
//! The same loop runs as a doc test in the crate's documentation.
//!
//! Buffers travel with the operations: a read gets the connection's buffer (append
//! after its length, within its capacity) and hands it back; a write gets the bytes
//! and hands the vector back for reuse. One read and one write may be out on the
//! client socket at once (a `408` is written while a read waits), so a driver keeps
//! the client socket's two halves apart; the one exception is [`Output::AwaitClient`],
//! out alone on the client socket (but for a TLS close_notify as the connection
//! closes, which a driver may end the wait to write), during which a driver may hold
//! both. On a backend socket one operation at most is ever out.
//!
//! An operation that ends at once (a write the socket had room for, an idle socket
//! from the pool) may be handed back straight away, inside the drain, before the next
//! `poll`: core's state says what is out before `poll` returns it (the tokio driver
//! answers its writes and its pool hits so, the io_uring one its pool hits).
//!
//! Time is a parameter: every `handle_*` takes `now`, and the same inputs always give
//! the same outputs (`core/tests/conn.rs` plays whole conversations with virtual time).
//!
//! # The forward proxy and tunnels
//!
//! On the forward proxy's listener ([`Connection::accept`] with [`Listener::Forward`])
//! a request goes to
//! the host it names (see [`crate::forward`]): its name is resolved with
//! [`Output::Resolve`], the address is vetted, then dialled as a pooled backend call
//! and streamed as `no-op` is. A `CONNECT` turns the connection into a tunnel:
//! [`Output::OpenTunnel`], `200`, then the tunnel's reads and writes and the
//! client's, untouched, with the half-close carried through (so the client socket may
//! have a read and a write out at once, and the tunnel's too). A driver that can
//! splice ([`Connection::splice_tunnels`]) gets [`Output::Splice`] per direction
//! instead and says how many bytes moved.
//!
//! A client plugin that answers a backend call itself settles the call in
//! [`Exchange`] before any call is opened: no [`Output::Connect`] is given.

pub mod deadline;
mod forwarding;
mod service;
mod stream;
mod tls;
mod whole;

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;

use crate::buf::ReadBuf;
use crate::call::backend::{Pumped, pump_body};
use crate::call::{BackendCall, CallEvent, Calls, Phase};
use crate::call::{Call, CallBody};
use crate::config::{HostAddr, Scheme};
use crate::conn::deadline::{HeadWait, after, body_deadline};
use crate::conn::service::{AdminPage, Outcome, Serve, Service};
pub use crate::event::Log;
use crate::forward::breaker::Permit;
use crate::forward::tunnel::{Pipe, PipeOp};
pub use crate::forward::tunnel::{SPLICE_PIPE, Spliced, splice_pipe_fits};
use crate::forward::{Pending, Refusal};
use crate::gateway::builtin;
use crate::gateway::dispatch::Route;
use crate::gateway::exchange::{Action, Exchange};
use crate::gateway::upstream::Balancer;
use crate::http1::{BodyLength, Limits, Next, Request, ResponseHead, ServerConn, ServerEvent, no_fields};
pub use crate::io::{BackendId, Input, Output, Session};
use crate::ops::runtime::Runtime;
use crate::ops::stats::Stats;
use crate::plan::Gateway;
use crate::request::{AccessLog, ClientRequest, LineRoom, Reply, RequestBody};
use crate::resolve::dns::DnsError;
use crate::resolve::srv::SrvSet;
use crate::serve::Listener;
use crate::tls::link::{ListenerSide, ServerLink, TLS_CLIENT_READ, TLS_READ};
use forwarding::{Forwarded, Tunnel};
use stream::{Cut, Leg, Pumping};

/// How long an admin page waits for the driver to give the shards' counters
/// ([`Output::Stats`]) before it answers 503.
const GATHER_WAIT: Duration = Duration::from_secs(5);
/// Client output is handed to the driver once it reaches this while a body streams.
const FLUSH_AT: usize = 64 * 1024;
/// A fresh client connection's read buffer.
const CLIENT_READ: usize = 1024;
/// At stop, how long a keep-alive connection must have been quiet since its last answer
/// before it is closed as idle: a client that loops sends its next request within
/// this, and that request is answered (with `Connection: close`) rather than lost to a
/// close racing it.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// A client whose next request came within this of its last answer is busy: its
/// connection reads for the next one with a buffer (one operation per request). Any
/// other waits between requests holding nothing on the heap ([`Output::AwaitClient`]:
/// a second operation per request, and its buffers, backend slot and output queue
/// taken again when its request comes; measured with every request waiting when
/// this was written, about 8,700 instructions and 10 allocations more per no-op
/// request on io_uring, 5,900 instructions on tokio; today's allocation count is in
/// `allocations_per_request_in_steady_state`, `core/tests/conn.rs`). So a
/// connection that goes quiet after a slow request, or after its first, holds no
/// heap in core while it is quiet; one that goes quiet after a burst keeps its read
/// buffer (1 KiB, up to 8 KiB after a large head), its last backend slot, write
/// vectors, output queue, the vectors its heads were copied into, its last
/// exchange's box (about 700 bytes) and its last access line's box with the line's
/// path string (about 3 KiB in all for a no-op request) until its next request or
/// its idle timeout, and the backend connection its last call kept for its next one
/// (`Calls::keep`) for at most 2 s. A TLS connection waits so too once its session
/// has nothing to send (`ServerLink::quiet`), giving back its ciphertext vectors;
/// its rustls session stays, with rustls' own buffers.
const BUSY_GAP: Duration = Duration::from_millis(250);
/// Room the write vector is given when a connection starts, or wakes from its idle
/// wait with its vectors given back: a usual answer's head and a small body in one
/// allocation. Grown from empty it took six, five more, each leaving a smaller block
/// free in the heap between a burst's live ones. A busy connection keeps its vectors,
/// so the steady state allocates nothing either way; an idle one gives it back as
/// before. A connection waiting for its first request holds these bytes beside its
/// read buffer.
const OUT_ROOM: usize = 512;
/// After the last answer, the write side is shut and the client's bytes read and
/// dropped for at most this long, until it closes: closing with unread bytes would
/// reset the connection and could destroy that answer before the client reads it.
pub const LINGER: Duration = Duration::from_secs(2);

#[derive(Debug)]
// The state moves by value at every step, a dozen times per request: it holds the
// exchange boxed (a few words, not 700 bytes; a busy connection reuses the box) and
// not the access line (see `Connection::line`), so that it is 88 bytes.
enum State<'g> {
    /// Waiting for a request head.
    Head(HeadWait),
    /// Reading a whole request body.
    Body { req: Box<ClientRequest>, serve: Serve<'g>, body: Vec<u8>, deadline: Option<Instant> },
    /// An aggregating exchange: backend calls in flight until `deadline`.
    Exchange { ex: Box<Exchange<'g>>, deadline: Instant },
    /// `no-op` or a forwarded request, before the response head: connecting, sending
    /// the head, relaying the body, waiting for the head.
    Stream { leg: Leg<'g>, id: BackendId },
    /// Forward proxy: the destination's name is being resolved ([`Output::Resolve`]).
    Resolve(Box<Pending<'g>>),
    /// Forward proxy: a CONNECT's connection is opening ([`Output::OpenTunnel`]).
    Opening(Box<Pending<'g>>),
    /// An admin page waits for the shards' counters ([`Output::Stats`]) until
    /// `deadline`.
    Gather { page: AdminPage<'g>, deadline: Instant },
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

/// One client connection (see the module docs).
#[derive(Debug)]
pub struct Connection<'g> {
    gw: &'g Gateway,
    /// What answers this connection's requests (by the listener it came to).
    service: Service<'g>,
    /// The driver can splice a tunnel's bytes ([`Connection::splice_tunnels`]).
    splice: bool,
    balancer: &'g Balancer,
    peer: IpAddr,
    /// Both ends with their ports, when the driver gave them (for client plugins).
    ends: Option<Box<crate::request::Ends>>,
    /// The accept, on both clocks: `/__health` tells wall-clock time from it.
    epoch: (Instant, SystemTime),
    now: Instant,
    server: ServerConn,
    input: ReadBuf,
    /// The input buffer is out with a read, or an [`Output::AwaitClient`] is out.
    reading: bool,
    /// The client socket said it is readable since the last read (no second
    /// [`Output::AwaitClient`] before a read).
    ready: bool,
    /// The last request came within [`BUSY_GAP`] of the answer before it.
    busy: bool,
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
    calls: Calls<'g>,
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
    /// The last request's exchange, cleared, for the next one
    /// ([`Exchange::renew`]: no allocation per request); given back when the
    /// connection waits idle.
    kept: Option<Box<Exchange<'g>>>,
    /// The last access line's box, with its path string, for the next request's
    /// line ([`LineRoom`]); given back when the connection waits idle.
    log_room: LineRoom,
    /// The access line of the request under way, while its state is one of `Body`,
    /// `Exchange`, `Stream`, `Gather` and `Pump` (kept here rather than in the state,
    /// which moves at every step). Two pointers: the line is written in its box from
    /// the request's start ([`AccessLog`]).
    line: Option<AccessLog>,
}

/// The time a request came, on both clocks: `now`, and the wall clock worked out
/// from the connection's accept (core reads no clock).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) now: Instant,
    /// The accept, on both clocks.
    pub(crate) epoch: (Instant, SystemTime),
}

impl Clock {
    /// `now` on the wall clock.
    pub(crate) fn wall(&self) -> SystemTime {
        self.epoch.1 + self.now.saturating_duration_since(self.epoch.0)
    }
}

impl Connection<'_> {
    /// Now on the wall clock (see [`Clock::wall`]).
    fn wall(&self) -> SystemTime {
        Clock { now: self.now, epoch: self.epoch }.wall()
    }
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
        Connection::serving(Service::Gateway(gw), gw, balancer, peer, now, wall)
    }

    /// A connection accepted on `listener`: the gateway's (as [`Connection::new`]), the
    /// forward proxy's (`gw.forward`: requests go to the host they name, CONNECT opens
    /// tunnels; plain HTTP) or the admin pages'. `runtime` is the server's (the
    /// breakers every connection counts in).
    pub fn accept(
        listener: Listener,
        gw: &'g Gateway,
        balancer: &'g Balancer,
        runtime: &'g Runtime,
        peer: IpAddr,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        match Service::on(listener, gw, runtime) {
            Some(service) => Connection::serving(service, gw, balancer, peer, now, wall),
            // A forward proxy listener without a forward proxy: closed at once.
            None => {
                let mut c = Connection::new(gw, balancer, peer, now, wall);
                c.tls = None;
                c.state = State::Closing;
                c
            }
        }
    }

    fn serving(
        service: Service<'g>,
        gw: &'g Gateway,
        balancer: &'g Balancer,
        peer: IpAddr,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        let limits = Limits { max_head_bytes: service.max_head(gw.config.max_header_bytes), ..Limits::default() };
        let mut c = Connection {
            gw,
            service,
            splice: false,
            balancer,
            peer,
            ends: None,
            epoch: (now, wall),
            now,
            server: ServerConn::new(limits),
            input: ReadBuf::with_capacity(CLIENT_READ),
            reading: false,
            ready: false,
            busy: false,
            hungry: true,
            eof: false,
            out: Vec::with_capacity(OUT_ROOM),
            spare: Vec::new(),
            write_since: None,
            state: State::Head(HeadWait::new(true, now)),
            calls: Calls::default(),
            queue: VecDeque::new(),
            stopping: false,
            answered: false,
            handed: 0,
            tls: None,
            plain_on_tls: false,
            kept: None,
            log_room: LineRoom::default(),
            line: None,
        };
        if let Some(profile) = service.server_tls() {
            match rustls::ServerConnection::new(profile.config.clone()) {
                Ok(mut conn) => {
                    conn.set_buffer_limit(None);
                    c.tls = Some(Box::new(ServerLink::new(conn, ListenerSide::default())));
                }
                // Never plain HTTP on an HTTPS listener: closed at once.
                Err(_) => c.state = State::Closing,
            }
        }
        c
    }

    // ----- what happened -----

    /// Both ends of the connection with their ports, which the gateway's client plugins
    /// read (a driver gives them when [`crate::plan::Gateway::plugins_read_ends`]; the
    /// connection keeps only the peer's address otherwise).
    pub fn set_ends(&mut self, ends: crate::request::Ends) {
        self.ends = Some(Box::new(ends));
    }

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
            Input::ClientReady(result) => self.handle_client_ready(result, now),
            Input::ClientWritten(buf, result) => self.handle_client_written(buf, result, now),
            Input::ClientShutdown(result) => self.handle_client_shutdown(result, now),
            Input::Connected(id, pooled) => self.handle_connected(id, pooled, now),
            Input::ConnectFailed(id, error) => self.handle_connect_failed(id, &error, now),
            Input::BackendRead(id, buf, result) => self.handle_backend_read(id, buf, result, now),
            Input::BackendWritten(id, buf, result) => self.handle_backend_written(id, buf, result, now),
            Input::Resolved(id, result) => self.handle_resolved(id, result, now),
            Input::NoIdle(id) => self.handle_no_idle(id, now),
            Input::Discovered(id, result) => self.handle_discovered(id, result, now),
            Input::TunnelOpened(result) => self.handle_tunnel_opened(result, now),
            Input::TunnelRead(buf, result) => self.handle_tunnel_read(buf, result, now),
            Input::TunnelWritten(buf, result) => self.handle_tunnel_written(buf, result, now),
            Input::TunnelShutdown(result) => self.handle_tunnel_shutdown(result, now),
            Input::Spliced { up, result } => self.handle_spliced(up, result, now),
            Input::Stats(stats) => self.handle_stats(&stats, now),
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
        self.ready = false;
        match result {
            Ok(0) | Err(_) => self.eof = true,
            Ok(_) => {}
        }
        self.hungry = false;
        self.progress();
    }

    /// [`Output::AwaitClient`] ended: the client socket is readable (`Err`: waiting
    /// failed; the read that follows finds out how).
    pub fn handle_client_ready(&mut self, result: io::Result<()>, now: Instant) {
        self.now = now;
        self.reading = false;
        self.ready = true;
        if self.out.capacity() == 0 {
            self.out.reserve(OUT_ROOM);
        }
        // A failed wait is not the end yet: the read that follows says what happened.
        drop(result);
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

    /// Backend connection `id` is open: `pooled` is the session it was kept with when
    /// it came from the pool, `None` for a new socket.
    pub fn handle_connected(&mut self, id: BackendId, pooled: Option<Session>, now: Instant) {
        self.now = now;
        self.calls.handle_connected(id, pooled, self.server.limits());
        self.progress();
    }

    /// [`Output::Connect`] without an address found no idle connection for call `id`:
    /// its host's name is resolved next.
    pub fn handle_no_idle(&mut self, id: BackendId, now: Instant) {
        self.now = now;
        self.calls.handle_no_idle(id, &mut self.queue);
        self.progress();
    }

    /// Backend connection `id` could not be opened (`reason` is for the log and, with
    /// `return_error_msg`, the client).
    pub fn handle_connect_failed(&mut self, id: BackendId, error: &io::Error, now: Instant) {
        self.now = now;
        self.calls.handle_connect_failed(id, error);
        self.progress();
    }

    /// A read on backend connection `id` finished (as [`Connection::handle_client_read`]).
    pub fn handle_backend_read(&mut self, id: BackendId, buf: Vec<u8>, result: io::Result<usize>, now: Instant) {
        self.now = now;
        self.calls.handle_read(id, buf, result);
        self.progress();
    }

    /// A write on backend connection `id` finished.
    pub fn handle_backend_written(&mut self, id: BackendId, buf: Vec<u8>, result: io::Result<()>, now: Instant) {
        self.now = now;
        self.calls.handle_written(id, buf, result);
        self.progress();
    }

    /// The SRV set [`Output::Discover`] asked for backend connection `id`: the call
    /// goes to the target it picks (the request rewritten for it), or fails with why
    /// there is none (the name asked is in the reason, and so in the log line).
    pub fn handle_discovered(&mut self, id: BackendId, result: Result<Arc<SrvSet>, DnsError>, now: Instant) {
        self.now = now;
        self.calls.handle_discovered(self.gw, id, result, &mut self.queue);
        self.progress();
    }

    /// The name [`Output::Resolve`] asked for resolved to `result` (every address, in
    /// the resolver's order): a backend call's host (it dials the first), or the
    /// forward proxy's destination (picked by `dns_lookup_family`).
    pub fn handle_resolved(&mut self, id: BackendId, result: Result<Vec<IpAddr>, DnsError>, now: Instant) {
        self.now = now;
        if self.calls.resolving(id) {
            // A backend call's host (see Input::NoIdle).
            self.calls.handle_resolved(id, result, &mut self.queue);
            self.progress();
            return;
        }
        // The forward proxy's destination; an answer that comes too late is dropped.
        let p = match mem::replace(&mut self.state, State::Closed) {
            State::Resolve(p) => p,
            other => {
                self.state = other;
                return;
            }
        };
        self.state = match result.map(|addrs| p.proxy.plan.pick(&addrs)) {
            Ok(Some(ip)) => self.dial(p, ip),
            Ok(None) => {
                let error = DnsError::Failed("no address of the configured family".to_string());
                self.refuse(Refusal::Dns { host: p.dest.host, error }, p.dest.authority, p.line, p.tunnel)
            }
            Err(error) => self.refuse(Refusal::Dns { host: p.dest.host, error }, p.dest.authority, p.line, p.tunnel),
        };
        self.progress();
    }

    /// The counters [`Output::Stats`] asked for: the admin page waiting for them is
    /// answered.
    pub fn handle_stats(&mut self, stats: &Stats, now: Instant) {
        self.now = now;
        // Counters that come too late (after the 503) are dropped; the state stays.
        let page = match mem::replace(&mut self.state, State::Closed) {
            State::Gather { page, .. } => page,
            other => {
                self.state = other;
                return;
            }
        };
        self.state = self.respond_parked(page.answer(stats), true);
        self.progress();
    }

    /// Time has come to `now`. Calling it early is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if matches!(self.state, State::Closed) {
            return;
        }
        self.calls.let_go_due(now, &mut self.queue);
        if self.calls.kept_deadline().is_none()
            && let Some(ex) = self.kept.as_mut()
        {
            // Quiet since its kept backend connections went: its last reply's buffer goes too.
            ex.drop_reply_room();
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
                    let line = self.service.unreadable(self.peer, self.input.pending(), wait.started().unwrap_or(now));
                    self.fail(status, reason, line)
                }
                None => State::Closing,
            },
            State::Body { deadline: Some(d), .. } if now >= d => {
                self.fail_parked(StatusCode::REQUEST_TIMEOUT, "request body timeout")
            }
            State::Exchange { mut ex, deadline } if now >= deadline => {
                ex.handle_timeout(now);
                self.drive(ex)
            }
            State::Stream { leg, .. } if now >= leg.deadline() => self.leg_timed_out(leg),
            State::Pump(p) if now >= p.leg.deadline() => self.cut(p, Cut::Timeout),
            State::Gather { deadline, .. } if now >= deadline => {
                self.fail_parked(StatusCode::SERVICE_UNAVAILABLE, "the counters did not come in time")
            }
            State::Resolve(p) | State::Opening(p) if now >= p.deadline => {
                self.refuse(Refusal::Timeout, p.dest.authority, p.line, p.tunnel)
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
                    tls.encrypt_pending(&mut bytes);
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
            if self.idle_between_requests() && self.calls.let_go_kept(self.now, &mut self.queue) {
                // A client that is not busy: the connections kept from its last
                // request go back to the pool before it waits (TLS clients too, which
                // then read as usual).
                return self.queue.pop_front();
            }
            if self.idle_between_requests() && self.tls.as_deref().is_none_or(ServerLink::quiet) {
                // Nothing of the next request yet: wait for it holding no buffer, and
                // give back what the last request kept for the next one (its backend
                // slots, the write vectors, the output queue: empty here, the box its
                // head came in; a TLS session's ciphertext vectors: rustls keeps its
                // own).
                self.reading = true;
                self.input = ReadBuf::default();
                self.calls.shed();
                self.server.shed();
                self.out = Vec::new();
                self.spare = Vec::new();
                self.queue = VecDeque::new();
                self.kept = None;
                self.log_room = LineRoom::default();
                if let Some(tls) = self.tls.as_deref_mut() {
                    (tls.cipher_in, tls.cipher_out) = (Vec::new(), Vec::new());
                }
                return Some(Output::AwaitClient);
            }
            self.reading = true;
            if let Some(tls) = self.tls.as_deref_mut() {
                let mut buf = mem::take(&mut tls.cipher_in);
                buf.clear();
                buf.reserve(if tls.side.big_reads { TLS_READ } else { TLS_CLIENT_READ });
                return Some(Output::ReadClient(buf));
            }
            return Some(Output::ReadClient(self.input.take_for_read()));
        }
        self.calls.poll()
    }

    /// A keep-alive connection waiting for its next request, with nothing of it read
    /// and nothing being written, whose client is not busy (see [`BUSY_GAP`]; after
    /// the first answer it is not yet): [`Output::AwaitClient`] rather than a read, so
    /// an idle connection holds no read buffer (a TLS connection too, when its session
    /// has nothing to send: [`ServerLink::quiet`]), and its kept backend connections go
    /// to the pool first. Not before the first request (a new connection's head is
    /// usually there at once).
    fn idle_between_requests(&self) -> bool {
        !self.busy
            && !self.ready
            && self.write_since.is_none()
            && self.out.is_empty()
            && self.input.pending().is_empty()
            && matches!(&self.state, State::Head(wait) if wait.between_requests())
    }

    /// When [`Connection::handle_timeout`] has work to do next.
    #[inline]
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
            State::Gather { deadline, .. } => Some(*deadline),
            State::Tunnel(t) => Some(t.last + t.idle),
            State::Linger { until } => Some(*until),
            State::Flush(_) | State::Closing | State::Closed => None,
        };
        earliest(earliest(write, state), self.calls.kept_deadline())
    }

    // ----- inside -----

    /// The exchange serving `req` routed to `route`: the last request's, renewed,
    /// where the connection kept it. Inline: as a call, the 176-byte request was
    /// copied once more on its way in (38 instructions a request).
    #[inline(always)]
    fn exchange(&mut self, route: Route<'g>, req: ClientRequest) -> Box<Exchange<'g>> {
        let at = (self.now, self.wall());
        match self.kept.take() {
            Some(mut ex) => {
                ex.renew(self.gw, route, req, at);
                ex
            }
            None => Box::new(Exchange::new(self.gw, route, req, at)),
        }
    }

    /// Keeps a finished exchange for the next request (see [`Connection::exchange`]).
    fn keep_exchange(&mut self, mut ex: Box<Exchange<'g>>) {
        ex.give_answers(|head, body| self.calls.give_answer_room(head, body));
        ex.clear();
        self.kept = Some(ex);
    }

    /// Opens a backend call for `call` of `ex`, with the request `ex` writes for it
    /// (see [`Calls::open`]).
    fn open(&mut self, ex: &Exchange<'g>, call: &Call<'g>, stream: bool) -> Result<BackendId, &'static str> {
        let write = |out: &mut Vec<u8>| {
            ex.write_head(call, out).map_err(|e| e.reason())?;
            if call.body == CallBody::Full {
                out.extend_from_slice(ex.call_body(call.id));
            }
            Ok(())
        };
        let at = (self.now, self.server.limits());
        self.calls.open((call, ex.endpoint().path.as_str()), stream, write, at, &mut self.queue)
    }

    /// Moves backend call `id` on (see [`Calls::step`]).
    fn slot_step(&mut self, id: BackendId) -> CallEvent {
        self.calls.step(self.gw, id, self.now, &mut self.queue)
    }

    /// Keeps for the next call (`reusable`: see [`Calls::keep`]) or closes backend
    /// call `id`'s connection.
    fn end_call(&mut self, id: BackendId, reusable: bool) {
        self.calls.keep(self.gw, id, reusable, self.now, &mut self.queue);
    }

    /// Closes the calls under way (an answer that will not wait for them, or the
    /// connection's end).
    fn close_slots(&mut self) {
        self.calls.close_all(&mut self.queue);
    }

    /// The connection ends: its calls under way are closed, the connections it kept
    /// go back to the pool (see [`Calls::keep`]).
    fn end_backends(&mut self) {
        self.close_slots();
        self.calls.let_go_kept(self.now, &mut self.queue);
    }

    /// The client is gone or too slow: close everything now.
    fn abort(&mut self) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.end_backends();
        // A request under way still gets its access line: a body cut by the client's
        // going with the status and bytes sent, one not answered yet as 499 (nginx's
        // "client closed request").
        let parked = self.line.take();
        let line = match mem::replace(&mut self.state, State::Closed) {
            State::Pump(p) => parked.map(|line| (line, p.status, p.sent)),
            State::Body { .. } | State::Exchange { .. } | State::Stream { .. } | State::Gather { .. } => {
                parked.zip(StatusCode::from_u16(499).ok()).map(|(line, status)| (line, status, 0))
            }
            State::Resolve(p) | State::Opening(p) => StatusCode::from_u16(499).ok().map(|status| (p.line, status, 0)),
            State::Tunnel(t) => Some((t.line, StatusCode::OK, t.down.bytes)),
            _ => None,
        };
        if let Some((line, status, bytes)) = line {
            self.log_access(line, status, bytes);
        }
        self.queue.push_back(Output::Close);
    }

    fn progress(&mut self) {
        // Each step either changes the state or waits for I/O; a step that changed
        // something runs the next one.
        for _ in 0..256 {
            if !self.step() {
                return;
            }
        }
    }

    /// One step of the state machine; says whether anything changed. A step that
    /// waits leaves the state where it is (moving the whole state out and back at
    /// each look cost a no-op request about 600 instructions); one that goes on takes
    /// it ([`Connection::take_state`]) or sets the next. Nothing a step calls looks at
    /// `self.state`.
    fn step(&mut self) -> bool {
        match self.state {
            State::Head(wait) => self.step_head(wait),
            State::Body { .. } => self.step_body(),
            State::Exchange { .. } => self.step_exchange(),
            State::Stream { id, .. } => self.step_stream(id),
            State::Pump(_) => self.step_pump(),
            State::Resolve(_) | State::Opening(_) | State::Gather { .. } | State::Tunnel(_) | State::Closed => false,
            State::Flush(next) => {
                if self.client_busy() {
                    return false;
                }
                self.state = match next {
                    // Stopping too: this answer went out without `Connection: close`, so
                    // the client may send another request; the head wait closes the
                    // connection once it has been quiet for STOP_GRACE.
                    Next::KeepAlive => self.next_request(),
                    Next::Close | Next::Switch => State::Closing,
                };
                true
            }
            State::Closing => {
                if self.client_busy() {
                    return false;
                }
                if let Some(tls) = self.tls.as_deref_mut().filter(|t| !t.side.closed) {
                    // The session ends with close_notify: written, then on as plain.
                    tls.side.closed = true;
                    tls.conn.send_close_notify();
                    return false;
                }
                self.end_backends();
                if self.answered && !self.eof {
                    self.queue.push_back(Output::ShutdownClient);
                    self.state = State::Linger { until: self.now + LINGER };
                    return true;
                }
                self.queue.push_back(Output::Close);
                self.state = State::Closed;
                false
            }
            State::Linger { .. } => {
                if self.eof {
                    self.queue.push_back(Output::Close);
                    self.state = State::Closed;
                    return false;
                }
                if !self.reading {
                    // Whatever came is dropped; read on.
                    self.input.clear();
                    self.hungry = true;
                }
                false
            }
        }
    }

    /// The state, taken to go on from it; `Closed` stands in until the next is set.
    fn take_state(&mut self) -> State<'g> {
        mem::replace(&mut self.state, State::Closed)
    }

    /// A step took another state than the one it was called for. It cannot happen
    /// (each step is called for its own state); were it to, the connection closes
    /// rather than hang.
    fn lost_state(&mut self) -> bool {
        self.state = State::Closing;
        true
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

    fn step_head(&mut self, mut wait: HeadWait) -> bool {
        if mem::take(&mut self.plain_on_tls) {
            let line = self.service.unreadable(self.peer, self.input.pending(), self.now);
            self.state = self.fail(StatusCode::BAD_REQUEST, "plain HTTP request sent to the HTTPS port", line);
            return true;
        }
        if self.stopping && wait.is_idle() && self.input.pending().is_empty() && self.now >= wait.since() + STOP_GRACE {
            self.state = State::Closing;
            return true;
        }
        if self.hungry || self.reading {
            return false;
        }
        if self.input.pending().is_empty() {
            return self.starve_or_close();
        }
        if wait.between_requests() {
            self.busy = self.now.saturating_duration_since(wait.since()) < BUSY_GAP;
        }
        wait.bytes_arrived(self.now);
        if let State::Head(kept) = &mut self.state {
            *kept = wait;
        }
        match self.server.handle_input(self.input.pending()) {
            Ok((n, ServerEvent::Request(req))) => {
                self.input.consume(n);
                self.state = self.start_request(req);
                true
            }
            Ok((n, ServerEvent::NeedMore)) => {
                self.input.consume(n);
                // A head cut short by the client's close gets no answer.
                self.starve_or_close()
            }
            Ok(_) => {
                self.state = State::Closing;
                true
            }
            Err(e) => {
                let line = self.service.unreadable(self.peer, self.input.pending(), wait.started().unwrap_or(self.now));
                self.state = self.fail(e.status(), e.reason(), line);
                true
            }
        }
    }

    /// [`Connection::starve`] for a state that waits for more bytes, or closes when
    /// none will come; says whether the state changed.
    fn starve_or_close(&mut self) -> bool {
        if self.starve() {
            return false;
        }
        self.state = State::Closing;
        true
    }

    /// A request head came: its service says what to do with it (see
    /// [`crate::conn::service`]), and the connection does it.
    fn start_request(&mut self, mut req: Box<Request>) -> State<'g> {
        let clock = Clock { now: self.now, epoch: self.epoch };
        let outcome = self.service.route(
            &mut req,
            (self.peer, self.ends.as_deref(), clock),
            self.server.add_fields(),
            (&mut self.queue, &mut self.log_room),
        );
        self.server.recycle(req);
        // A body passed on as it comes (a no-op endpoint's, a forwarded one) is never
        // held, so no size limit; any other is refused at once when it says it is over.
        if matches!(outcome, Outcome::Stream { .. } | Outcome::Forward(_)) {
            self.server.stream_body();
        } else if let Err(e) = self.server.body_fits() {
            return match outcome.into_line() {
                Some(line) => self.fail(e.status(), e.reason(), line),
                None => State::Closing,
            };
        }
        match outcome {
            Outcome::Respond { reply, line, close } => {
                self.end_unread();
                self.respond(reply, line, close)
            }
            Outcome::Fail { status, reason, line } => self.fail(status, reason, line),
            Outcome::ReadBody { req, serve, line } => self.read_body(req, serve, line),
            Outcome::Stream { req, route, line } => self.start_stream(req, route, line),
            Outcome::Forward(p) => self.start_forward(p),
            Outcome::Refuse { refusal, dest, line, tunnel } => {
                if !tunnel {
                    self.end_unread();
                }
                self.refuse(refusal, dest, line, tunnel)
            }
            Outcome::Gather { page, line } => {
                self.end_unread();
                self.queue.push_back(Output::Stats);
                self.line = Some(line);
                State::Gather { page, deadline: self.now + GATHER_WAIT }
            }
        }
    }

    /// A request answered without reading its body: one without a body ends here and
    /// the connection stays open; a body nobody needs is not read (the codec closes
    /// after answering).
    fn end_unread(&mut self) {
        if let Ok((n, ServerEvent::End(_))) = self.server.handle_input(self.input.pending()) {
            self.input.consume(n);
        }
    }

    // ----- answers -----

    /// The access line of the request under way, taken from where its state keeps it
    /// ([`Connection::line`]). Those states always have one; were it missing, the
    /// answer is still logged, as a request whose line could not be read (`"-"`).
    fn take_line(&mut self) -> AccessLog {
        match self.line.take() {
            Some(line) => line,
            None => AccessLog::unreadable(self.peer, &[], self.now),
        }
    }

    /// Writes a whole reply; the connection goes on as the codec says once written.
    fn respond(&mut self, reply: Reply, line: AccessLog, close: bool) -> State<'g> {
        self.write_reply(&reply, line, close)
    }

    /// [`Connection::respond`], giving the reply back once it is written (for the next
    /// reply to be written in its buffers).
    fn respond_giving_back(&mut self, reply: Reply, line: AccessLog, close: bool) -> (State<'g>, Reply) {
        let state = self.write_reply(&reply, line, close);
        (state, reply)
    }

    fn write_reply(&mut self, reply: &Reply, line: AccessLog, close: bool) -> State<'g> {
        match reply.write(&mut self.server, close || self.stopping, &mut self.out) {
            Ok(next) => {
                self.answered = true;
                self.log_access(line, reply.status, reply.body.len() as u64);
                State::Flush(next)
            }
            Err(_) => State::Closing,
        }
    }

    /// [`Connection::respond`] with the access line the connection keeps aside.
    fn respond_parked(&mut self, reply: Reply, close: bool) -> State<'g> {
        let line = self.take_line();
        self.respond(reply, line, close)
    }

    /// [`Connection::fail`] with the access line the connection keeps aside.
    fn fail_parked(&mut self, status: StatusCode, reason: &str) -> State<'g> {
        let line = self.take_line();
        self.fail(status, reason, line)
    }

    /// Answers an error and closes: protocol errors and failures before any response
    /// byte went out.
    fn fail(&mut self, status: StatusCode, reason: &str, line: AccessLog) -> State<'g> {
        self.server.write_error(status, reason, &mut self.out);
        self.answered = true;
        self.log_access(line, status, reason.len() as u64);
        State::Closing
    }

    /// Queues the access line of an answer given; a share of its box stays for the
    /// next request's line ([`LineRoom`]).
    fn log_access(&mut self, line: AccessLog, status: StatusCode, bytes: u64) {
        let line = line.line_in(status, bytes, self.now, &mut self.log_room);
        self.queue.push_back(Output::Log(Log::Access(line)));
    }
}
