//! One client connection: bytes in and out, timers, and the calls `core` asks for.
//! The same steps as `sluice-uring`'s, on tokio's sockets and timers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::StatusCode;
use sluice_core::backend::{Failure, Fetch, Progress, Pumped, StreamedHead, may_retry, pool_key, pump_body};
use sluice_core::builtin;
use sluice_core::deadline::{HeadWait, body_deadline};
use sluice_core::dispatch::{Dispatch, Route};
use sluice_core::exchange::{Action, CallBody, Exchange};
use sluice_core::http1::{ClientConn, Next, Request, ResponseHead, ServerConn, ServerEvent};
use sluice_core::request::{AccessLog, ClientRequest, Reply, RequestBody};

use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::Shared;
use crate::backend::{self, lock};
use crate::socket::{Io, READ_CHUNK, Read, from_now, with_deadline};

/// Output is flushed when it grows past this while streaming.
const FLUSH_AT: usize = 64 * 1024;

/// A client connection.
struct Conn {
    io: Io,
    server: ServerConn,
    out: Vec<u8>,
    write_timeout: Duration,
}

impl Conn {
    /// Answers a protocol error and gives up on the connection.
    async fn fail(&mut self, status: StatusCode, reason: &str) {
        self.server.write_error(status, reason, &mut self.out);
        let _ = self.io.write(&mut self.out, self.write_timeout).await;
    }

    async fn respond(&mut self, reply: &Reply, close: bool) -> Option<Next> {
        let next = reply.write(&mut self.server, close, &mut self.out).ok()?;
        self.io.write(&mut self.out, self.write_timeout).await.then_some(next)
    }

    /// Reads the whole request body (answering `100 Continue` first when asked).
    /// `None`: the connection is done (an error was answered, or the peer left).
    async fn read_body(&mut self, deadline: Option<Instant>) -> Option<Vec<u8>> {
        self.server.write_continue(&mut self.out);
        if !self.io.write(&mut self.out, self.write_timeout).await {
            return None;
        }
        let mut body = Vec::new();
        loop {
            match self.server.read_body_into(self.io.pending(), &mut body) {
                Ok((n, done)) => {
                    self.io.buf.consume(n);
                    if done {
                        return Some(body);
                    }
                }
                Err(e) => {
                    self.fail(e.status(), e.reason()).await;
                    return None;
                }
            }
            match self.io.read(deadline, None).await {
                Read::Data => {}
                Read::TimedOut => {
                    self.fail(StatusCode::REQUEST_TIMEOUT, "request body timeout").await;
                    return None;
                }
                _ => return None,
            }
        }
    }
}

/// Serves one client connection until it closes. `stop` turns true when the server
/// stops: an idle connection closes then, one with a request under way finishes it.
pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, mut stop: watch::Receiver<bool>) {
    let shard = &shared;
    let cfg = &shard.gw.config;
    let mut c = Conn {
        io: Io::new(stream, 1024),
        server: ServerConn::new(shard.limits),
        out: Vec::new(),
        write_timeout: cfg.write_timeout,
    };
    let mut first = true;
    loop {
        let Some(req) = read_head(shard, &mut c, &mut stop, first).await else { return };
        first = false;
        let started = Instant::now();
        // Boxed: an idle connection's task then holds only the read state, not the
        // largest request state (memory per idle connection).
        match Box::pin(handle(shard, &mut c, *req, peer, started)).await {
            Some(Next::KeepAlive) if !*stop.borrow() => {}
            _ => return,
        }
        if c.out.capacity() > 16 * 1024 {
            c.out = Vec::new();
        }
        c.io.buf.shrink_idle(1024, 8 * 1024);
    }
}

/// Reads the next request head, under the deadline `HeadWait` gives.
async fn read_head(
    shard: &Shared,
    c: &mut Conn,
    stop: &mut watch::Receiver<bool>,
    first: bool,
) -> Option<Box<Request>> {
    let mut wait = HeadWait::new(first, Instant::now());
    let mut need_more = c.io.pending().is_empty();
    loop {
        if !need_more {
            wait.bytes_arrived(Instant::now());
            match c.server.handle_input(c.io.pending()) {
                Ok((n, ServerEvent::Request(r))) => {
                    c.io.buf.consume(n);
                    return Some(r);
                }
                Ok((n, ServerEvent::NeedMore)) => c.io.buf.consume(n),
                Ok(_) => return None,
                Err(e) => {
                    c.fail(e.status(), e.reason()).await;
                    return None;
                }
            }
        }
        // Only an idle connection gives way to a stop: a head under way is answered.
        if wait.is_idle() && *stop.borrow() {
            return None;
        }
        let stop = wait.is_idle().then_some(&mut *stop);
        match c.io.read(wait.deadline(&shard.gw.config), stop).await {
            Read::Data => need_more = false,
            Read::TimedOut => {
                if let Some((status, reason)) = wait.expired() {
                    c.fail(status, reason).await;
                }
                return None;
            }
            _ => return None,
        }
    }
}

/// Serves one request; says what becomes of the connection (`None`: close it).
async fn handle(shard: &Shared, c: &mut Conn, req: Request, peer: SocketAddr, started: Instant) -> Option<Next> {
    let gw = &shard.gw;
    let cfg = &gw.config;
    let mut creq = match ClientRequest::from_head(&req, peer.ip()) {
        Ok(creq) => creq,
        Err(reason) => {
            c.fail(StatusCode::BAD_REQUEST, reason).await;
            return None;
        }
    };
    let line = AccessLog::new(&creq, started);
    let dispatch = gw.dispatch(&creq.method, &creq.path, creq.query.as_deref());
    let (reply, next) = match dispatch {
        Dispatch::Endpoint(route) if route.streaming => {
            return pass_through(shard, c, &req, creq, route, &line).await;
        }
        Dispatch::Endpoint(route) => {
            creq.body = RequestBody::Full(c.read_body(body_deadline(cfg, started)).await?);
            let reply = aggregate(shard, creq, route).await;
            let next = c.respond(&reply, false).await;
            (reply, next)
        }
        Dispatch::Builtin(b) => {
            creq.body = RequestBody::Full(c.read_body(body_deadline(cfg, started)).await?);
            let reply = builtin::answer(b, &creq, SystemTime::now());
            let next = c.respond(&reply, false).await;
            (reply, next)
        }
        Dispatch::Reply(reply) => {
            // A request without a body ends here and the connection stays open; a body
            // nobody needs is not read: the codec closes the connection after answering.
            if let Ok((n, ServerEvent::End(_))) = c.server.handle_input(c.io.pending()) {
                c.io.buf.consume(n);
            }
            let next = c.respond(&reply, false).await;
            (reply, next)
        }
    };
    log(&line, reply.status, reply.body.len() as u64);
    next
}

/// Writes the access log line of a request.
fn log(line: &AccessLog, status: StatusCode, bytes: u64) {
    tracing::info!(target: "sluice::access", "{}", line.line(status, bytes, Instant::now()));
}

/// Runs an aggregating exchange: calls in parallel (or in sequence), merged reply.
async fn aggregate(shard: &Shared, creq: ClientRequest, route: Route<'_>) -> Reply {
    let gw = &shard.gw;
    let mut ex = Exchange::new(gw, route, creq, Instant::now());
    let mut calls = FuturesUnordered::new();
    loop {
        let action = ex.poll(&mut lock(&shard.balancer));
        match action {
            Action::Call(call) => {
                let mut request = Vec::with_capacity(512);
                if let Err(e) = call.write_head(ex.body().len(), &mut request) {
                    ex.handle_failure(call.id, e.reason());
                    continue;
                }
                if call.body == CallBody::Full {
                    request.extend_from_slice(ex.body());
                }
                let (id, host, method, pool, limits) =
                    (call.id, call.host.clone(), call.method.clone(), &shard.pool, shard.limits);
                calls.push(async move { (id, backend::call(pool, &host, &method, &request, limits).await) });
            }
            Action::Wait(deadline) => {
                let sleep = tokio::time::sleep_until(deadline.into());
                tokio::select! {
                    Some((id, result)) = calls.next() => match result {
                        Ok(a) => ex.handle_response(id, a.status, a.headers, a.body),
                        Err(why) => {
                            tracing::warn!(target: "sluice::backend", "backend {id} of {}: {why}", ex.endpoint().path);
                            ex.handle_failure(id, &why)
                        }
                    },
                    _ = sleep => ex.handle_timeout(Instant::now()),
                }
            }
            Action::Respond(reply) => return reply,
            Action::Stream(_) | Action::Done => return Reply::text(StatusCode::INTERNAL_SERVER_ERROR, ""),
        }
    }
}

/// `no-op`: the request body streams to the backend, the response streams back, each
/// through a bounded buffer.
async fn pass_through(
    shard: &Shared,
    c: &mut Conn,
    req: &Request,
    mut creq: ClientRequest,
    route: Route<'_>,
    line: &AccessLog,
) -> Option<Next> {
    let gw = &shard.gw;
    creq.body = RequestBody::relayed(req.framing);
    if creq.body == RequestBody::None {
        // No body to stream: let the codec see the request end now.
        match c.server.handle_input(c.io.pending()) {
            Ok((n, ServerEvent::End(_))) => c.io.buf.consume(n),
            Ok(_) => {}
            Err(e) => {
                c.fail(e.status(), e.reason()).await;
                return None;
            }
        }
    }
    let mut ex = Exchange::new(gw, route, creq, Instant::now());
    let deadline = ex.deadline();
    let first = ex.poll(&mut lock(&shard.balancer));
    let call = match first {
        Action::Call(call) => call,
        Action::Respond(reply) => {
            let next = c.respond(&reply, false).await;
            log(line, reply.status, reply.body.len() as u64);
            return next;
        }
        _ => return None,
    };
    let (id, method, body_mode, host) = (call.id, call.method.clone(), call.body, call.host.clone());
    let mut head = Vec::with_capacity(512);
    let opened = match call.write_head(0, &mut head) {
        Err(e) => Err(e.reason().to_string()),
        Ok(()) => match with_deadline(Some(deadline), open_stream(shard, c, &host, head, body_mode, &method)).await {
            Some(r) => r,
            None => {
                ex.handle_timeout(deadline);
                Err(String::new())
            }
        },
    };
    let (mut backend_io, mut client, response) = match opened {
        Ok(x) => x,
        Err(why) => {
            if !why.is_empty() {
                tracing::warn!(target: "sluice::backend", "backend of {}: {why}", ex.endpoint().path);
                ex.handle_failure(id, &why);
            }
            let answer = ex.poll(&mut lock(&shard.balancer));
            let reply = match answer {
                Action::Respond(r) => r,
                _ => Reply::text(StatusCode::BAD_GATEWAY, ""),
            };
            let next = c.respond(&reply, true).await;
            log(line, reply.status, reply.body.len() as u64);
            return next;
        }
    };
    ex.handle_head(id, response.status, &response.headers);
    let Action::Stream(stream) = ex.poll(&mut lock(&shard.balancer)) else { return None };
    let length = response.body_length();
    let head = ResponseHead { status: stream.status, headers: &stream.headers, body: length, close: false };
    c.server.write_response_head(&head, &mut c.out).ok()?;
    let mut sent: u64 = 0;
    // Pump the backend body to the client. A backend that breaks off mid-body leaves the
    // client nothing but a closed connection.
    let mut eof = false;
    loop {
        let (n, moved, pumped) =
            pump_body(&mut client, backend_io.pending(), eof, &mut c.server, &mut c.out, FLUSH_AT).ok()?;
        backend_io.buf.consume(n);
        sent += moved;
        if !c.io.write(&mut c.out, c.write_timeout).await {
            return None;
        }
        match pumped {
            Pumped::End => break,
            Pumped::Full => {}
            // Each read may take as long as the endpoint timeout; the whole body may take
            // longer (a large download).
            Pumped::NeedMore => match backend_io.read(from_now(ex.endpoint().timeout), None).await {
                Read::Data => {}
                Read::Eof => eof = true,
                _ => return None,
            },
        }
    }
    let next = c.server.finish_response(&mut c.out).ok()?;
    if !c.io.write(&mut c.out, c.write_timeout).await {
        return None;
    }
    if client.reusable() && backend_io.pending().is_empty() {
        shard.pool.put(&pool_key(&host), backend_io);
    }
    log(line, stream.status, sent);
    Some(next)
}

type Opened = (Io, ClientConn, StreamedHead);

/// Connects, sends the head, streams the client body, reads the response head.
async fn open_stream(
    shard: &Shared,
    c: &mut Conn,
    host: &sluice_core::config::HostAddr,
    head: Vec<u8>,
    body: CallBody,
    method: &http::Method,
) -> Result<Opened, String> {
    // A pooled connection first; a stale one is retried on a fresh connection when
    // `may_retry` allows (never once a client body has been streamed).
    let key = pool_key(host);
    let mut head = head;
    if let Some(mut b) = shard.pool.take(&key) {
        let mut h = head.clone();
        // A failed head write sent nothing and read no client body: a fresh connection
        // can always take over then.
        if b.write(&mut h, Duration::ZERO).await {
            match finish_open(shard, c, b, body, method, true).await {
                Ok(opened) => return Ok(opened),
                Err(f) if may_retry(method, &f, body != CallBody::None) => {}
                Err(f) => return Err(f.reason),
            }
        }
    }
    let stream = backend::connect(&shard.pool, host).await?;
    let mut b = Io::new(stream, READ_CHUNK);
    if !b.write(&mut head, Duration::ZERO).await {
        return Err("cannot send the request".into());
    }
    finish_open(shard, c, b, body, method, false).await.map_err(|f| f.reason)
}

/// Streams the client body (if any) and reads the response head.
async fn finish_open(
    shard: &Shared,
    c: &mut Conn,
    mut b: Io,
    body: CallBody,
    method: &http::Method,
    reused: bool,
) -> Result<Opened, Failure> {
    if let CallBody::Stream(length) = body {
        c.server.write_continue(&mut c.out);
        if !c.io.write(&mut c.out, c.write_timeout).await {
            return Err(Failure::new("client went away"));
        }
        let mut chunk = Vec::with_capacity(READ_CHUNK + 32);
        loop {
            let (n, done) = c
                .server
                .relay_body(c.io.pending(), length, &mut chunk)
                .map_err(|e| Failure::new(format!("bad request body: {}", e.reason())))?;
            c.io.buf.consume(n);
            if !b.write(&mut chunk, Duration::ZERO).await {
                return Err(Failure::new("cannot send the request body"));
            }
            if done {
                break;
            }
            match c.io.read(None, None).await {
                Read::Data => {}
                _ => return Err(Failure::new("the client went away while sending its body")),
            }
        }
    }
    let mut fetch = Fetch::streaming(method.clone(), shard.limits, reused);
    match backend::read_response(&mut b, &mut fetch).await? {
        Progress::Head(head) => Ok((b, fetch.into_conn(), head)),
        _ => Err(Failure::new("unexpected response")),
    }
}
