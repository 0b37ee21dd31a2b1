//! Backend calls: each backend connection of a client connection is a
//! `BackendCall`, a state machine of its own that `Calls` keeps by [`BackendId`]
//! (both crate-private: the client connection drives them). A call connects (a pooled connection or a new one, under its pool
//! key: see [`crate::call::backend::pool_key`]), asks a proxy for a `CONNECT` tunnel when it
//! goes through one, runs its TLS session (a `TlsLink`, see [`crate::tls`]), writes the
//! request (and relays a streamed body), reads the answer (whole, or its head to
//! pump the body), undoes a gzip or deflate coding of a whole answer the gateway
//! decodes ([`coding`]), follows redirects, retries once on a fresh connection when a
//! pooled one turns out closed, and is pooled, closed, or kept for its client connection's
//! next call to the same pool key and given to the pool when that client waits idle,
//! ends, or has not come back within [`KEEP_FOR`] (`Calls::keep`).
//!
//! Its `handle_*` methods take what the driver reports for it; `Calls::poll` gives
//! its next socket operation; `Calls::step` moves it on with what it read and says
//! what that means for the request (a `CallEvent`). The client connection
//! ([`crate::conn`]) owns the calls and the output queue they add to; the service
//! that asked for the call (the gateway's exchange, the forward proxy) hears the
//! outcome.

pub mod backend;
pub mod coding;
pub mod proxy;
pub mod redirect;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::{Method, StatusCode};

use crate::buf::ReadBuf;
use crate::call::backend::{Failure, Fetch, IDLE_EXPIRY, Progress, StreamedHead, may_retry};
use crate::call::proxy::Proxy;
use crate::config::{HostAddr, Scheme};
use crate::event::Log;
use crate::http1::{BodyLength, HeaderFields, Limits};
use crate::io::{BackendId, Output, Session};
use crate::plan::Gateway;
use crate::resolve::dns::{self, DnsError};
use crate::resolve::srv::SrvSet;
use crate::tls::TlsTarget;
use crate::tls::link::{BackendSide, Decrypted, TLS_READ, TlsLink, Undecryptable};

/// The largest read buffer a free backend slot keeps for its next call.
const KEEP_READ: usize = 16 * 1024;

/// How long a call's connection, reusable when the call ended, is kept by its client
/// connection for that client's next call under the same pool key (see
/// [`Calls::keep`]); then it goes to the pool (the client connection wakes for it:
/// [`Calls::kept_deadline`]), so a quiet client holds no backend connection longer.
pub(crate) const KEEP_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// How a backend call sends its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallBody {
    None,
    /// The whole client body (the exchange's).
    Full,
    /// The client body, streamed as it arrives, with this framing.
    Stream(BodyLength),
}

/// A backend call to make: what a service asks of one (the gateway's exchange writes
/// its request; the crate-private `Calls::open` gets the bytes).
#[derive(Debug, Clone)]
pub struct Call<'g> {
    /// The backend's position in the endpoint: give it back with the result.
    pub id: usize,
    pub method: Method,
    /// Where to connect: the backend host, or the proxy it is reached through.
    pub host: &'g HostAddr,
    /// Idle connections to `host` are kept under this key.
    pub pool_key: &'g str,
    /// The backend's scheme (`host`'s, unless proxied).
    pub scheme: Scheme,
    /// The backend's authority, for the `Host` header.
    pub authority: &'g str,
    /// The proxy the request goes through: a plain request is written to it in
    /// absolute form, an `https://` one goes through a `CONNECT` tunnel.
    pub via: Option<&'g Proxy>,
    /// An `https://` backend: the TLS profile and server name core's connection uses.
    pub tls: Option<&'g TlsTarget>,
    /// Through a proxy to an `https://` backend: the `host:port` to `CONNECT` to.
    pub connect: Option<&'g str>,
    /// The backend host itself (`host` is the proxy's when there is one).
    pub origin: &'g HostAddr,
    /// Redirects are followed, with this profile for an `https://` target (see
    /// [`crate::call::redirect`]); `false`: `no_redirect`, a 3xx is the answer.
    pub follow: bool,
    pub redirect_tls: Option<&'g crate::tls::TlsProfile>,
    /// Origin-form target: path and query.
    pub target: String,
    pub body: CallBody,
    /// `no-op`: read only the response head, then stream the body through.
    pub stream_response: bool,
    /// The body is read whole for the gateway to decode: a `gzip` or `deflate` one is
    /// inflated first (see [`coding`]); the request asks for gzip unless the client's
    /// `Accept-Encoding` is forwarded.
    pub inflate: bool,
    /// `"sd": "dns"`: `origin.host` is a name to ask SRV records of; the call goes to
    /// the target they give (see [`crate::resolve::srv`]).
    pub srv: bool,
    /// `host`'s address when it is an IP literal (worked out once, in the plan): what
    /// a new connection dials; `None` for a name, which is resolved when needed.
    pub dial: Option<SocketAddr>,
}

/// What a call holds for whoever admitted it (the forward proxy's circuit breakers:
/// [`crate::forward::breaker::Permit`]): told when its connection opens, asked before
/// the request is sent again, and given back when the call ends (dropped).
pub trait Admission: fmt::Debug + Send {
    /// The connection is open (or a pooled one was taken).
    fn connected(&mut self);
    /// May the request be sent again?
    fn retry(&mut self) -> bool;
}

/// Where one backend connection is in its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// `"sd": "dns"`: waiting for the SRV set of the backend's name
    /// ([`Output::Discover`]); the request is written for the name, and rewritten
    /// for the target picked.
    Discover,
    /// Waiting for the driver to connect it.
    Connecting,
    /// The host is a name and no idle connection was there to take: waiting for its
    /// address ([`Output::Resolve`]), to connect to it.
    Resolve,
    /// Through a proxy to an `https://` backend: `CONNECT` is written, then its
    /// answer read (the request waits in `held`).
    ProxyConnect,
    /// Writing the request (head, and the whole body when there is one).
    Send,
    /// `no-op`: streaming the client's body after the head; `done` once it ended.
    Relay { length: BodyLength, done: bool },
    /// Reading the response (whole, or its head when streaming).
    Receive,
    /// `no-op`: the response body is pumped to the client.
    Pump,
}

/// One backend connection of this client connection.
#[derive(Debug)]
pub(crate) struct BackendCall<'g> {
    pub(crate) in_use: bool,
    /// The exchange's call id.
    pub(crate) call: usize,
    pub(crate) method: Method,
    /// The endpoint, for log lines.
    pub(crate) endpoint: &'g str,
    /// Where to connect (the backend, or its proxy), and the backend itself: the
    /// configuration's, or a redirect's.
    pub(crate) host: Cow<'g, HostAddr>,
    pub(crate) origin: Cow<'g, HostAddr>,
    pub(crate) pool_key: Cow<'g, str>,
    /// `host`'s address when it is an IP literal: what a new connection dials.
    pub(crate) dial: Option<SocketAddr>,
    /// The proxy `host` is, when the backend is reached through one.
    pub(crate) via: Option<&'g Proxy>,
    /// `host:port` to ask the proxy a tunnel to (see [`Call::connect`]).
    pub(crate) connect: Option<Cow<'g, str>>,
    /// Redirects left to follow (none with `no_redirect`), and the profile for an
    /// `https://` target.
    pub(crate) redirects: u8,
    /// Times it was sent again on a fresh connection (0 or 1).
    pub(crate) retries: u8,
    /// Whether the request as first sent had its own `Referer` (kept on every hop);
    /// known at the first redirect.
    explicit_referer: Option<bool>,
    pub(crate) follow: bool,
    pub(crate) redirect_tls: Option<&'g crate::tls::TlsProfile>,
    /// The request, while the tunnel it goes through opens.
    pub(crate) held: Vec<u8>,
    /// The buffer of the last streamed response head, for the next one to be copied
    /// into ([`Calls::give_head_room`]).
    head_room: crate::http1::Head,
    /// The buffer of an earlier whole answer's body, for the next one to be read into
    /// ([`Calls::give_answer_room`]).
    body_room: Vec<u8>,
    /// An `https://` backend's profile; its session once connected.
    pub(crate) tls_target: Option<Cow<'g, TlsTarget>>,
    pub(crate) tls: Option<Box<TlsLink>>,
    /// Read only the response head (`no-op`), the body is pumped.
    pub(crate) stream: bool,
    /// Undo a content coding of the whole body (see [`Call::inflate`]).
    pub(crate) inflate: bool,
    pub(crate) body: CallBody,
    pub(crate) phase: Phase,
    pub(crate) connected: bool,
    pub(crate) reused: bool,
    /// The last [`Output::Connect`] allowed a pooled connection (a retry does not).
    pub(crate) pooled: bool,
    /// A forward-proxy request (its connection is pooled, never kept).
    forward: bool,
    /// The call ended at this instant with its connection reusable, and the
    /// connection stays with the driver for this client's next call under the same
    /// pool key (the slot is free: see [`Calls::keep`]).
    kept: Option<Instant>,
    /// A forward proxy request's hold on its destination's circuit breakers.
    pub(crate) permit: Option<Box<dyn Admission>>,
    /// Bytes to write next (the request, or a relayed body piece).
    pub(crate) out: Vec<u8>,
    /// The request as written, kept until the answer starts for a retry.
    pub(crate) sent: Vec<u8>,
    pub(crate) writing: bool,
    pub(crate) input: ReadBuf,
    pub(crate) reading: bool,
    /// The codec needs more bytes than are pending.
    pub(crate) hungry: bool,
    pub(crate) eof: bool,
    /// The call's response reader; after a streamed answer's head, the codec its
    /// body is pumped with ([`Fetch::codec`]), in place.
    pub(crate) fetch: Option<Fetch>,
    pub(crate) failure: Option<Failure>,
}

/// The largest answer body buffer a slot keeps for the next answer (see
/// [`Calls::give_answer_room`]): a JSON API's usual answer fits; a larger one is
/// allocated for itself.
const BODY_ROOM_KEPT: usize = 8 * 1024;

impl<'g> BackendCall<'g> {
    fn new(call: &Call<'g>, endpoint: &'g str, stream: bool) -> BackendCall<'g> {
        BackendCall {
            via: call.via,
            connect: call.connect.map(Cow::Borrowed),
            redirects: if call.follow { redirect::MAX_REDIRECTS } else { 0 },
            follow: call.follow,
            redirect_tls: call.redirect_tls,
            tls_target: call.tls.map(Cow::Borrowed),
            dial: call.dial,
            inflate: call.inflate,
            ..BackendCall::base(
                (call.id, call.method.clone(), endpoint),
                (Cow::Borrowed(call.host), Cow::Borrowed(call.origin), Cow::Borrowed(call.pool_key)),
                stream,
                call.body,
            )
        }
    }

    /// This slot, free, set up for `call` in place as [`BackendCall::new`] makes one
    /// (no slot-sized value built and moved), keeping its vectors' room (`out`,
    /// `sent`, `input`, `head_room`, `body_room`): the TLS session its kept connection had, if any.
    fn renew(&mut self, call: &Call<'g>, endpoint: &'g str, stream: bool) -> Option<Box<TlsLink>> {
        // Every field named: one added later must be set here too.
        let BackendCall {
            in_use,
            call: id,
            method,
            endpoint: for_endpoint,
            host,
            origin,
            pool_key,
            dial,
            via,
            connect,
            redirects,
            retries,
            explicit_referer,
            follow,
            redirect_tls,
            held,
            head_room: _,
            body_room: _,
            tls_target,
            tls,
            stream: streams,
            inflate,
            body,
            phase,
            connected,
            reused,
            pooled,
            forward,
            kept,
            permit,
            out: _,
            sent: _,
            writing,
            input: _,
            reading,
            hungry,
            eof,
            fetch,
            failure,
        } = self;
        (*in_use, *id, *method, *for_endpoint) = (true, call.id, call.method.clone(), endpoint);
        (*host, *origin, *pool_key) =
            (Cow::Borrowed(call.host), Cow::Borrowed(call.origin), Cow::Borrowed(call.pool_key));
        (*dial, *via, *connect) = (call.dial, call.via, call.connect.map(Cow::Borrowed));
        *redirects = if call.follow { redirect::MAX_REDIRECTS } else { 0 };
        (*retries, *explicit_referer, *follow, *redirect_tls) = (0, None, call.follow, call.redirect_tls);
        *held = Vec::new();
        *tls_target = call.tls.map(Cow::Borrowed);
        (*streams, *inflate, *body, *phase) = (stream, call.inflate, call.body, Phase::Connecting);
        (*connected, *reused, *pooled, *forward, *kept) = (false, false, true, false, None);
        *permit = None;
        (*writing, *reading, *hungry, *eof) = (false, false, false, false);
        (*fetch, *failure) = (None, None);
        tls.take()
    }

    /// A request the forward proxy sends on, written in `request`: plain HTTP, no
    /// proxy, no redirects followed.
    pub(crate) fn forward(
        method: Method,
        host: HostAddr,
        pool_key: String,
        body: Option<BodyLength>,
        request: Vec<u8>,
        permit: Option<Box<dyn Admission>>,
    ) -> BackendCall<'g> {
        let body = body.map_or(CallBody::None, CallBody::Stream);
        let dial = host.socket_addr();
        let place = (Cow::Owned(host.clone()), Cow::Owned(host), Cow::Owned(pool_key));
        let base = BackendCall::base((0, method, "forward proxy"), place, true, body);
        BackendCall { out: request, permit, dial, forward: true, ..base }
    }

    /// A slot for call `id` (its method, its endpoint), connecting to `host` for
    /// `origin` under `pool_key`, directly and over plain HTTP.
    fn base(
        (call, method, endpoint): (usize, Method, &'g str),
        (host, origin, pool_key): (Cow<'g, HostAddr>, Cow<'g, HostAddr>, Cow<'g, str>),
        stream: bool,
        body: CallBody,
    ) -> BackendCall<'g> {
        BackendCall {
            in_use: true,
            call,
            method,
            endpoint,
            host,
            origin,
            pool_key,
            dial: None,
            via: None,
            connect: None,
            redirects: 0,
            retries: 0,
            explicit_referer: None,
            follow: false,
            redirect_tls: None,
            held: Vec::new(),
            head_room: crate::http1::Head::default(),
            body_room: Vec::new(),
            tls_target: None,
            tls: None,
            stream,
            inflate: false,
            body,
            phase: Phase::Connecting,
            connected: false,
            reused: false,
            pooled: true,
            forward: false,
            kept: None,
            permit: None,
            out: Vec::new(),
            sent: Vec::new(),
            writing: false,
            input: ReadBuf::default(),
            reading: false,
            hungry: false,
            eof: false,
            fetch: None,
            failure: None,
        }
    }

    /// Its connection pooled (`reusable`, and a TLS session with nothing under way goes
    /// with it) or closed.
    fn put_away(&mut self, id: BackendId, reusable: bool) -> Output<'g> {
        if reusable && self.poolable() {
            Output::PoolBackend { id, pool_key: self.pool_key.clone(), session: Session(self.tls.take()) }
        } else {
            Output::CloseBackend { id }
        }
    }

    /// Whether its connection, its answer read whole, can serve another request.
    fn poolable(&self) -> bool {
        let idle_tls =
            self.tls.as_deref().is_none_or(|l| !l.side.busy && l.side.plain.is_none() && !l.conn.wants_write());
        self.connected && idle_tls && self.phase != Phase::ProxyConnect
    }

    /// A kept connection (see [`Calls::keep`]) given back at `now`: to the pool (whose
    /// clock then starts, at most about [`KEEP_FOR`] late), or closed when it has been
    /// idle as long as the pool keeps one ([`IDLE_EXPIRY`]). `None`: none is kept.
    fn let_go(&mut self, id: BackendId, now: Instant) -> Option<Output<'g>> {
        let at = self.kept.take()?;
        // The answer room is held only while the slot keeps a connection (see
        // [`Calls::give_answer_room`]): a client gone quiet holds it 2 s at most.
        self.body_room = Vec::new();
        Some(match now.saturating_duration_since(at) < IDLE_EXPIRY {
            true => Output::PoolBackend { id, pool_key: self.pool_key.clone(), session: Session(self.tls.take()) },
            false => {
                self.tls = None;
                Output::CloseBackend { id }
            }
        })
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
        self.tls = None;
        self.input.clear();
        self.connect(id, pooled)
    }

    /// The [`Output::Connect`] for `host`: with its address when it is an IP literal; a
    /// name is resolved only when no idle connection is there ([`Calls::handle_no_idle`]).
    fn connect(&self, id: BackendId, pooled: bool) -> Output<'g> {
        Output::Connect { id, pool_key: self.pool_key.clone(), pooled, addr: self.dial }
    }

    /// Why connecting failed, through its proxy when it has one.
    fn connect_failure(&self, reason: impl fmt::Display) -> Failure {
        Failure::new(match self.via {
            Some(proxy) => format!("proxy {} ({}): {reason}", proxy.shown, proxy.source),
            None => reason.to_string(),
        })
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
        let pool_key = crate::call::backend::pool_key(addr, tls_target.as_ref(), via);
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
    fn apply(self, slot: &mut BackendCall<'g>, origin: HostAddr) {
        slot.dial = self.host.socket_addr();
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
pub(crate) enum CallEvent {
    Nothing,
    Answer { status: StatusCode, headers: HeaderFields, body: Vec<u8> },
    Head(StreamedHead),
    Failed(Failure),
}

/// The backend connections of one client connection, by [`BackendId`]: a slot is
/// reused once its call ended (its vectors kept, so a call allocates nothing).
#[derive(Debug, Default)]
pub(crate) struct Calls<'g> {
    slots: Vec<BackendCall<'g>>,
    /// [`Calls::kept_deadline`], set again wherever a slot's `kept` changes: it is asked
    /// at every wake of the connection and changes about once per call.
    kept_until: Option<Instant>,
}

impl<'g> Calls<'g> {
    /// Call `id`, while it is in use.
    pub(crate) fn get_mut(&mut self, id: BackendId) -> Option<&mut BackendCall<'g>> {
        self.slots.get_mut(id).filter(|s| s.in_use)
    }

    /// Slots held (in use or free): ids run below this.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The exchange's index of call `id`, in use or just released (a call that ended
    /// is asked what it was for); 0 for an id never used.
    pub(crate) fn index(&self, id: BackendId) -> usize {
        self.slots.get(id).map_or(0, |s| s.call)
    }

    /// How often call `id` (in use or just released) was sent again on a fresh
    /// connection, and how many redirects it followed: for its span.
    pub(crate) fn hops(&self, id: BackendId) -> (u8, u8) {
        self.slots.get(id).map_or((0, 0), |s| {
            let followed = if s.follow { redirect::MAX_REDIRECTS.saturating_sub(s.redirects) } else { 0 };
            (s.retries, followed)
        })
    }

    fn slot(&mut self, id: BackendId, expected: impl Fn(&BackendCall<'g>) -> bool) -> Option<&mut BackendCall<'g>> {
        self.slots.get_mut(id).filter(|s| s.in_use && expected(s))
    }

    /// Opens a backend connection for `call` of `endpoint`: `write` writes its request
    /// (head, and a whole body) out now, sent once connected. Returns the slot, or why
    /// the request cannot be written.
    /// A connection this client kept from its last call under the same pool key (see
    /// [`Calls::keep`]) is used at once, fresh; a slot whose kept connection is for
    /// another key lets it go first.
    pub(crate) fn open(
        &mut self,
        (call, endpoint): (&Call<'g>, &'g str),
        stream: bool,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), &'static str>,
        (now, limits): (Instant, Limits),
        queue: &mut VecDeque<Output<'g>>,
    ) -> Result<BackendId, &'static str> {
        if call.scheme == Scheme::Https && call.tls.is_none() {
            return Err("https backend without a TLS profile");
        }
        // What is due goes first (a client back just as its kept connection's time ran
        // out, before the timer did): the call may find it in the pool.
        self.let_go_due(now, queue);
        // Every kept connection is fresh now (what was due went first).
        let kept = match call.srv {
            false => self.slots.iter().position(|s| !s.in_use && s.kept.is_some() && *s.pool_key == *call.pool_key),
            true => None,
        };
        // A slot with nothing kept, else one whose kept connection is for another key.
        let free = kept
            .or_else(|| self.slots.iter().position(|s| !s.in_use && s.kept.is_none()))
            .or_else(|| self.slots.iter().position(|s| !s.in_use));
        let mut session = None;
        let id = match free {
            Some(free) => {
                if kept.is_none() {
                    queue.extend(self.slots[free].let_go(free, now));
                }
                // The vectors of the last use are kept (no allocation per call). The
                // request went out in `out` and came back as `sent`: the one with the
                // room is written into.
                let slot = &mut self.slots[free];
                let tls = slot.renew(call, endpoint, stream);
                if kept.is_some() {
                    session = Some(Session(tls));
                }
                if slot.out.capacity() < slot.sent.capacity() {
                    mem::swap(&mut slot.out, &mut slot.sent);
                }
                slot.out.clear();
                slot.sent.clear();
                free
            }
            None => {
                let mut slot = BackendCall::new(call, endpoint, stream);
                slot.out.reserve(512);
                // One slot more, not four: a BackendCall is about 900 bytes, and a
                // Vec's first growth would make room for four, held by every idle
                // keep-alive connection.
                self.slots.reserve_exact(1);
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        // A kept connection may have been taken or let go.
        self.refresh_kept_until();
        let slot = &mut self.slots[id];
        if let Err(reason) = write(&mut slot.out) {
            slot.in_use = false;
            if let Some(session) = session {
                // Idle, its last answer read whole: as good as before.
                queue.push_back(Output::PoolBackend { id, pool_key: slot.pool_key.clone(), session });
            }
            return Err(reason);
        }
        if call.srv {
            slot.phase = Phase::Discover;
            queue.push_back(Output::Discover { id, name: call.origin.host.as_str() });
            return Ok(id);
        }
        match session {
            // As the pool would have answered, without asking the driver.
            Some(session) => self.handle_connected(id, Some(session), limits),
            None => queue.push_back(slot.connect(id, true)),
        }
        Ok(id)
    }

    /// Backend connection `id` is open: a new one (`None`), or one from the pool with
    /// the session it was kept with.
    pub(crate) fn handle_connected(&mut self, id: BackendId, pooled: Option<Session>, limits: Limits) {
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
        let profile = slot.tls_target.as_ref().map(|t| t.profile.id());
        match (pooled.map(|s| s.0), profile) {
            // A kept TLS connection goes on in its session (through its tunnel, if
            // any), made under this very profile: the pool key says so, and the
            // session is asked again here.
            (Some(Some(link)), Some(profile)) if link.side.profile == profile => slot.tls = Some(link),
            (Some(None), None) => {}
            (Some(_), _) => slot.failure = Some(Failure::new("a pooled connection of the wrong kind".to_string())),
            (None, None) => {}
            (None, Some(_)) => match (slot.via, slot.connect.as_deref()) {
                (Some(proxy), Some(authority)) => {
                    slot.phase = Phase::ProxyConnect;
                    slot.held = mem::replace(&mut slot.out, mem::take(&mut slot.held));
                    slot.out.clear();
                    proxy.write_connect(authority, &mut slot.out);
                }
                _ => start_tls(slot),
            },
        }
        let mut fetch = if slot.stream {
            Fetch::streaming(slot.method.clone(), limits, reused)
        } else {
            Fetch::new(slot.method.clone(), limits, reused).inflating(slot.inflate)
        };
        fetch.give_room(mem::take(&mut slot.head_room));
        if !slot.stream {
            fetch.give_body_room(mem::take(&mut slot.body_room));
        }
        slot.fetch = Some(fetch);
    }

    /// Backend connection `id` could not be opened (`reason` is for the log and, with
    /// `return_error_msg`, the client).
    pub(crate) fn handle_connect_failed(&mut self, id: BackendId, error: &io::Error) {
        let Some(slot) = self.slot(id, |s| s.phase == Phase::Connecting) else { return };
        let reason = match slot.dial {
            Some(addr) => format!("cannot connect to {addr}: {error}"),
            None => format!("cannot connect to {}: {error}", slot.host.authority()),
        };
        slot.failure = Some(slot.connect_failure(reason));
    }

    /// [`Output::Connect`] without an address found no idle connection: the host's
    /// name is resolved ([`Output::Resolve`]), then a new connection asked for.
    pub(crate) fn handle_no_idle(&mut self, id: BackendId, queue: &mut VecDeque<Output<'g>>) {
        let Some(slot) = self.slot(id, |s| s.phase == Phase::Connecting) else { return };
        if slot.dial.is_some() {
            // An address was given: the driver had nothing to answer NoIdle for.
            slot.failure = Some(Failure::new("the driver did not connect to the address given".to_string()));
            return;
        }
        slot.phase = Phase::Resolve;
        queue.push_back(Output::Resolve { id, name: slot.host.host.clone() });
    }

    /// Whether call `id` waits for its host's address.
    pub(crate) fn resolving(&self, id: BackendId) -> bool {
        self.slots.get(id).is_some_and(|s| s.in_use && s.phase == Phase::Resolve)
    }

    /// The addresses of call `id`'s host (or why there are none): a new connection to
    /// the first (in the resolver's order), or the call fails saying why.
    pub(crate) fn handle_resolved(
        &mut self,
        id: BackendId,
        result: Result<Vec<IpAddr>, DnsError>,
        queue: &mut VecDeque<Output<'g>>,
    ) {
        let Some(slot) = self.slot(id, |s| s.phase == Phase::Resolve) else { return };
        slot.phase = Phase::Connecting;
        match dns::first_address(result) {
            Ok(ip) => {
                let addr = Some(SocketAddr::new(ip, slot.host.port));
                queue.push_back(Output::Connect { id, pool_key: slot.pool_key.clone(), pooled: false, addr });
            }
            Err(why) => slot.failure = Some(slot.connect_failure(format!("cannot resolve {}: {why}", slot.host.host))),
        }
    }

    /// A read on backend connection `id` finished (as [`Connection::handle_client_read`]).
    pub(crate) fn handle_read(&mut self, id: BackendId, buf: Vec<u8>, result: io::Result<usize>) {
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
        if slot.phase == Phase::ProxyConnect && slot.failure.is_none() {
            tunnel_answer(slot);
        }
    }

    /// A write on backend connection `id` finished.
    pub(crate) fn handle_written(&mut self, id: BackendId, buf: Vec<u8>, result: io::Result<()>) {
        if self.slots.get(id).is_some_and(|s| s.in_use && s.tls.is_some()) {
            self.tls_written(id, buf, result);
        } else {
            self.plain_written(id, buf, result);
        }
    }

    /// Ciphertext came in on a TLS backend connection: decrypted into the slot's
    /// input, as a plain read would have put it there.
    fn tls_read(&mut self, id: BackendId, mut buf: Vec<u8>, result: io::Result<usize>) {
        let Some(slot) = self.slots.get_mut(id) else { return };
        let Some(link) = slot.tls.as_deref_mut().filter(|l| l.side.busy) else { return };
        link.side.busy = false;
        slot.reading = false;
        slot.hungry = false;
        match result {
            Ok(n) => match link.decrypt(buf.get(..n).unwrap_or_default(), &mut slot.input) {
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
    }

    /// Ciphertext went out on a TLS backend connection. The slot's own write completes
    /// once the handshake is done and rustls has nothing left to send.
    fn tls_written(&mut self, id: BackendId, mut buf: Vec<u8>, result: io::Result<()>) {
        let Some(slot) = self.slots.get_mut(id) else { return };
        let Some(link) = slot.tls.as_deref_mut().filter(|l| l.side.busy) else { return };
        link.side.busy = false;
        buf.clear();
        link.cipher_out = buf;
        let done = result.is_err() || (!link.conn.wants_write() && !link.conn.is_handshaking());
        if done && let Some(plain) = link.side.plain.take() {
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
        } else if slot.phase == Phase::ProxyConnect {
            // CONNECT is out: its answer comes next.
            buf.clear();
            slot.out = buf;
            slot.hungry = true;
        } else {
            buf.clear();
            slot.out = buf;
        }
    }

    /// The SRV set [`Output::Discover`] asked for backend connection `id`: the call
    /// goes to the target it picks (the request rewritten for it), or fails with why
    /// there is none (the name asked is in the reason, and so in the log line).
    pub(crate) fn handle_discovered(
        &mut self,
        gw: &'g Gateway,
        id: BackendId,
        result: Result<Arc<SrvSet>, DnsError>,
        queue: &mut VecDeque<Output<'g>>,
    ) {
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
                referer: None,
            };
            let request =
                redirect::rewrite(&slot.out, &hop, aim.form, (aim.proxy_auth(), None)).ok_or_else(unsendable)?;
            Ok((aim, hop.addr, request))
        });
        match aimed {
            Ok((aim, origin, request)) => {
                aim.apply(slot, origin);
                slot.out = request;
                slot.phase = Phase::Connecting;
                let connect = slot.connect(id, true);
                queue.push_back(connect);
            }
            Err(why) => {
                slot.phase = Phase::Connecting;
                slot.failure = Some(Failure::new(why));
            }
        }
    }

    /// Moves backend connection `id` on with what it has; says what that means.
    pub(crate) fn step(
        &mut self,
        gw: &'g Gateway,
        id: BackendId,
        now: Instant,
        queue: &mut VecDeque<Output<'g>>,
    ) -> CallEvent {
        let Some(slot) = self.slots.get_mut(id).filter(|s| s.in_use) else { return CallEvent::Nothing };
        if let Some(failure) = slot.failure.take() {
            return self.failed(id, failure, queue);
        }
        if slot.phase != Phase::Receive || slot.reading || slot.hungry {
            return CallEvent::Nothing;
        }
        let Some(fetch) = slot.fetch.as_mut() else { return CallEvent::Nothing };
        let progress = match fetch.handle_input(slot.input.pending()) {
            Ok((n, Progress::NeedMore)) => {
                slot.input.consume(n);
                if !slot.eof {
                    slot.hungry = true;
                    return CallEvent::Nothing;
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
            self.release(id, false, queue);
            return CallEvent::Failed(Failure::new(reason));
        }
        if let Some(status) = status.filter(|s| slot.follow && redirect::method_after(*s, &slot.method).is_some()) {
            let location = match &progress {
                Ok(Progress::Done(a)) => a.headers.get("location").map(<[u8]>::to_vec),
                Ok(Progress::Head(h)) => h.head.get("location").map(<[u8]>::to_vec),
                _ => None,
            };
            match self.redirect(gw, id, (status, location.as_deref(), reusable), queue) {
                Ok(true) => return CallEvent::Nothing,
                Ok(false) => {}
                Err(why) => {
                    self.release(id, false, queue);
                    return CallEvent::Failed(Failure::new(why));
                }
            }
        }
        match progress {
            Ok(Progress::Done(answer)) => {
                self.keep(gw, id, reusable, now, queue);
                CallEvent::Answer { status: answer.status, headers: answer.headers, body: answer.body }
            }
            Ok(Progress::Head(head)) => {
                let slot = &mut self.slots[id];
                // The fetch stays: its codec pumps the body (`Calls::step` reads no
                // more in this phase).
                slot.phase = Phase::Pump;
                slot.sent.clear();
                CallEvent::Head(head)
            }
            Ok(Progress::NeedMore) => CallEvent::Nothing,
            Err(failure) => self.failed(id, failure, queue),
        }
    }

    /// A redirect came on backend connection `id`: `Ok(true)` when the slot now makes
    /// the next request (the connection that got the 3xx pooled or closed, a new one
    /// asked for), `Ok(false)` when the 3xx is the answer (no Location, or a body
    /// streamed from the client that cannot be sent again), or why the call fails.
    fn redirect(
        &mut self,
        gw: &'g Gateway,
        id: BackendId,
        (status, location, reusable): (StatusCode, Option<&[u8]>, bool),
        queue: &mut VecDeque<Output<'g>>,
    ) -> Result<bool, String> {
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
        // Go's client sets the hop's Referer unless the first request had its own.
        let explicit = *slot.explicit_referer.get_or_insert_with(|| redirect::sent_has(&slot.sent, "referer"));
        let referer = (!explicit).then_some(hop.referer.as_deref());
        let request =
            redirect::rewrite(&slot.sent, &hop, aim.form, (aim.proxy_auth(), referer)).ok_or_else(unsendable)?;
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
        queue.extend([done, Output::Log(line), next]);
        Ok(true)
    }

    /// A backend connection failed: retried on a fresh connection when the policy
    /// allows (a pooled connection the backend had closed), else given up.
    fn failed(&mut self, id: BackendId, failure: Failure, queue: &mut VecDeque<Output<'g>>) -> CallEvent {
        let Some(slot) = self.slots.get_mut(id) else { return CallEvent::Failed(failure) };
        if slot.reused
            && !slot.sent.is_empty()
            && may_retry(&slot.method, &failure, slot.body_streamed())
            && slot.permit.as_mut().is_none_or(|p| p.retry())
        {
            let request = mem::take(&mut slot.sent);
            slot.retries = slot.retries.saturating_add(1);
            let next = slot.reconnect(id, request, false);
            queue.extend([Output::CloseBackend { id }, next]);
            return CallEvent::Nothing;
        }
        self.release(id, false, queue);
        CallEvent::Failed(failure)
    }

    /// Pools (`reusable`) or closes backend connection `id`, and frees its slot.
    pub(crate) fn release(&mut self, id: BackendId, reusable: bool, queue: &mut VecDeque<Output<'g>>) {
        let Some(slot) = self.slots.get_mut(id).filter(|s| s.in_use) else { return };
        let output = slot.put_away(id, reusable);
        slot.tls = None;
        free(slot);
        queue.push_back(output);
    }

    /// Call `id` ended with its answer read whole (`reusable`): its connection stays
    /// with the driver for this client's next call under the same pool key, which
    /// then goes out at once (no [`Output::PoolBackend`] and [`Output::Connect`], no
    /// pool lookup: a busy client's calls ride one connection as long as it keeps
    /// coming back within [`KEEP_FOR`]). It is let go ([`BackendCall::let_go`]: to
    /// the pool, or closed past [`IDLE_EXPIRY`]) when a client that is not busy
    /// waits for its next request, when the connection ends, when the slot is needed
    /// for another key, or [`KEEP_FOR`] after the call. A forward-proxy call,
    /// one whose connection cannot be reused, or any call of a gateway that pools
    /// nothing (`max_idle_connections_per_host` 0) is released as [`Calls::release`]
    /// does.
    pub(crate) fn keep(
        &mut self,
        gw: &Gateway,
        id: BackendId,
        reusable: bool,
        now: Instant,
        queue: &mut VecDeque<Output<'g>>,
    ) {
        let Some(slot) = self.slots.get_mut(id).filter(|s| s.in_use) else { return };
        if !reusable || slot.forward || !slot.poolable() || gw.config.max_idle_connections_per_host == 0 {
            return self.release(id, reusable, queue);
        }
        slot.kept = Some(now);
        free(slot);
        let due = now + KEEP_FOR;
        self.kept_until = Some(self.kept_until.map_or(due, |until| until.min(due)));
    }

    /// Lets every kept connection go (see [`BackendCall::let_go`]); whether there was one.
    pub(crate) fn let_go_kept(&mut self, now: Instant, queue: &mut VecDeque<Output<'g>>) -> bool {
        let before = queue.len();
        for (id, slot) in self.slots.iter_mut().enumerate() {
            queue.extend(slot.let_go(id, now));
        }
        self.kept_until = None;
        queue.len() > before
    }

    /// When the oldest kept connection has been kept [`KEEP_FOR`].
    pub(crate) fn kept_deadline(&self) -> Option<Instant> {
        self.kept_until
    }

    fn refresh_kept_until(&mut self) {
        self.kept_until = self.slots.iter().filter_map(|s| s.kept).min().map(|at| at + KEEP_FOR);
    }

    /// Lets go the kept connections kept [`KEEP_FOR`] by `now`.
    pub(crate) fn let_go_due(&mut self, now: Instant, queue: &mut VecDeque<Output<'g>>) {
        if self.kept_until.is_none_or(|until| now < until) {
            return;
        }
        for (id, slot) in self.slots.iter_mut().enumerate() {
            if slot.kept.is_some_and(|at| now >= at + KEEP_FOR) {
                queue.extend(slot.let_go(id, now));
            }
        }
        self.refresh_kept_until();
    }

    /// A streamed response head was written on: its buffer stays with slot `id` for
    /// the next call's head.
    pub(crate) fn give_head_room(&mut self, id: BackendId, head: crate::http1::Head) {
        if let Some(slot) = self.slots.get_mut(id) {
            slot.head_room = head.into_room();
        }
    }

    /// A whole answer's head and body, done with: their buffers stay with a slot that
    /// has none and keeps its backend connection for the client's next call, for that
    /// call's answer to be read into (an aggregating endpoint's answers then cost no
    /// allocation on a busy connection). The body's goes when the slot lets its
    /// connection go ([`Calls::let_go_due`]: a client quiet for 2 s, or waiting idle),
    /// so a quiet busy connection does not hold it longer. A body buffer over
    /// [`BODY_ROOM_KEPT`] is not kept, nor a head's over its own limits.
    pub(crate) fn give_answer_room(&mut self, head: crate::http1::Head, mut body: Vec<u8>) {
        let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| s.kept.is_some() && s.body_room.capacity() == 0 && s.head_room.is_room_empty())
        else {
            return;
        };
        slot.head_room = head.into_room();
        if body.capacity() <= BODY_ROOM_KEPT {
            body.clear();
            slot.body_room = body;
        }
    }

    /// With no call in use and no connection kept, gives back every slot and what it
    /// kept (a connection going idle: its next request takes a slot again).
    pub(crate) fn shed(&mut self) {
        if self.slots.iter().all(|s| !s.in_use && s.kept.is_none()) {
            self.slots = Vec::new();
        }
    }

    /// Closes every call under way (kept connections stay: see [`Calls::let_go_kept`]).
    pub(crate) fn close_all(&mut self, queue: &mut VecDeque<Output<'g>>) {
        for id in 0..self.slots.len() {
            self.release(id, false, queue);
        }
    }

    /// A forward-proxy request written in `call` (see [`BackendCall::forward`]): a slot
    /// for it, and its connection asked for.
    pub(crate) fn open_forward(&mut self, call: BackendCall<'g>, queue: &mut VecDeque<Output<'g>>) -> BackendId {
        let id = match self.slots.iter().position(|s| !s.in_use && s.kept.is_none()) {
            Some(free) => {
                let old = mem::replace(&mut self.slots[free], call);
                self.slots[free].input = old.input;
                free
            }
            None => {
                self.slots.reserve_exact(1);
                self.slots.push(call);
                self.slots.len() - 1
            }
        };
        let s = &self.slots[id];
        queue.push_back(s.connect(id, true));
        id
    }

    /// The next socket operation a call wants: its request or body piece to write, a
    /// read while it waits for bytes; under TLS, what the session asks for.
    #[inline]
    pub(crate) fn poll(&mut self) -> Option<Output<'g>> {
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
}

/// Frees a slot whose call ended: what only a call uses is dropped; its vectors stay
/// for the slot's next call while the client is busy (a connection that waits for its
/// next request sheds its slots, buffers and all), but a read buffer grown by a
/// streamed body goes back to the allocator.
fn free(slot: &mut BackendCall<'_>) {
    slot.in_use = false;
    slot.permit = None;
    slot.fetch = None;
    slot.input.clear();
    slot.input.shrink_idle(0, KEEP_READ);
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
    if link.side.busy {
        return None;
    }
    if link.side.plain.is_none() && !out.is_empty() {
        let plain = mem::take(out);
        // rustls buffers it (no limit is set at connect): the slot writes one request
        // head or one body piece at a time, and waits for it to complete first.
        let _ = io::Write::write_all(&mut link.conn.writer(), &plain);
        link.side.plain = Some(plain);
        *writing = true;
    }
    if link.conn.wants_write() {
        let mut bytes = mem::take(&mut link.cipher_out);
        bytes.clear();
        link.encrypt_pending(&mut bytes);
        link.side.busy = true;
        return Some(Output::WriteBackend { id, bytes });
    }
    if (link.conn.is_handshaking() || wants_plain) && link.conn.wants_read() {
        let mut buf = mem::take(&mut link.cipher_in);
        buf.clear();
        buf.reserve(TLS_READ);
        link.side.busy = true;
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
fn start_tls(slot: &mut BackendCall<'_>) {
    let Some(target) = slot.tls_target.as_deref() else { return };
    match rustls::ClientConnection::new(target.profile.config.clone(), target.server_name.clone()) {
        Ok(mut conn) => {
            conn.set_buffer_limit(None);
            let side = BackendSide { profile: target.profile.id(), busy: false, plain: None };
            slot.tls = Some(Box::new(TlsLink::new(conn, side)));
        }
        Err(e) => slot.failure = Some(Failure::new(format!("TLS: {e}"))),
    }
}

/// Why a request cannot go to a redirect's or an SRV record's target.
fn unsendable() -> String {
    "the request sent cannot be sent again".to_string()
}

/// The proxy's answer to `CONNECT` came in (part of it, or all): a 2xx opens the
/// tunnel and TLS starts inside it with the held request; anything else fails the
/// call, saying what the proxy said.
fn tunnel_answer(slot: &mut BackendCall<'_>) {
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
        Err(bad) => slot.failure = Some(fail(&bad.to_string())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{Environment, TlsProfile};

    /// A pooled TLS session is taken up only under the profile it was made with (the
    /// pool key already keeps them apart; this is the second lock), and a plain
    /// connection never stands in for a TLS one.
    #[test]
    fn a_pooled_session_of_another_profile_is_refused() {
        let env = Environment::default();
        let insecure = crate::config::ClientTls { allow_insecure_connections: true, ..Default::default() };
        let (a, b) =
            (crate::tls::profile(Some(&insecure), &env).unwrap(), crate::tls::profile(Some(&insecure), &env).unwrap());
        let name = rustls_pki_types::ServerName::try_from("api.test").unwrap();
        let host = HostAddr::parse("https://api.test").unwrap();
        let session = |p: &TlsProfile| {
            let conn = rustls::ClientConnection::new(p.config.clone(), name.clone()).unwrap();
            let link = TlsLink::new(conn, BackendSide { profile: p.id(), busy: false, plain: None });
            Session(Some(Box::new(link)))
        };
        let wrong = Some("a pooled connection of the wrong kind");
        let mut calls = Calls::default();
        let mut queue = VecDeque::new();
        for (pooled, want) in [(session(&a), None), (session(&b), wrong), (Session::default(), wrong)] {
            let place = (Cow::Owned(host.clone()), Cow::Owned(host.clone()), Cow::Owned(String::new()));
            let mut call = BackendCall::base((0, Method::GET, "/e"), place, false, CallBody::None);
            call.tls_target = Some(Cow::Owned(TlsTarget { profile: a.clone(), server_name: name.clone() }));
            let id = calls.open_forward(call, &mut queue);
            calls.handle_connected(id, Some(pooled), Limits::default());
            let call = calls.get_mut(id).unwrap();
            assert_eq!(call.failure.take().map(|f| f.reason).as_deref(), want);
            assert_eq!(call.tls.as_ref().map(|l| l.side.profile), want.is_none().then(|| a.id()));
            calls.release(id, false, &mut queue);
        }
    }

    /// A driver that answers NoIdle to a call that gave it an address (it should have
    /// dialled it) fails that call, saying so, and asks for no lookup.
    #[test]
    fn no_idle_for_an_address_fails_the_call() {
        let host = HostAddr::parse("http://127.0.0.1:9001").unwrap();
        let place = (Cow::Owned(host.clone()), Cow::Owned(host.clone()), Cow::Owned(String::new()));
        let mut call = BackendCall::base((0, Method::GET, "/e"), place, false, CallBody::None);
        call.dial = host.socket_addr();
        let (mut calls, mut queue) = (Calls::default(), VecDeque::new());
        let id = calls.open_forward(call, &mut queue);
        queue.clear();
        calls.handle_no_idle(id, &mut queue);
        assert!(queue.is_empty(), "{queue:?}");
        let failure = calls.get_mut(id).unwrap().failure.take().map(|f| f.reason);
        assert_eq!(failure.as_deref(), Some("the driver did not connect to the address given"));
    }
}
