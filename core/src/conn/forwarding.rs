//! The forward proxy's side of a connection: a request to the host it names
//! (resolved, vetted, dialled as a pooled backend call, then streamed as `no-op` is),
//! or a `CONNECT` tunnel (opened, then bytes both ways, spliced where the driver can),
//! and the answers it gets when refused (egress policy, breakers, DNS, timeouts).

use super::*;

/// A CONNECT tunnel: client to destination (`up`) and back (`down`).
#[derive(Debug)]
pub(super) struct Tunnel {
    pub(super) up: Pipe,
    pub(super) down: Pipe,
    pub(super) dest: String,
    /// The last bytes either way; the tunnel closes `idle` after.
    pub(super) last: Instant,
    pub(super) idle: Duration,
    pub(super) line: AccessLog,
    /// Held while the tunnel is open.
    pub(super) _permit: Option<Permit>,
}

/// A request the forward proxy sent on.
#[derive(Debug)]
pub(super) struct Forwarded<'g> {
    /// `host:port`, for log lines.
    pub(super) dest: String,
    /// Until the response head: the request's start plus `timeout`; then, while the
    /// body flows, the last progress plus `idle_timeout`.
    pub(super) deadline: Instant,
    /// The proxy's `idle_timeout`.
    pub(super) idle: Duration,
    /// The fields its responses get (`Via`).
    pub(super) via: &'g crate::http1::Fields,
}

impl<'g> Connection<'g> {
    /// The tunnel's connection ([`Output::OpenTunnel`]) is open, or why not.
    pub fn handle_tunnel_opened(&mut self, result: io::Result<()>, now: Instant) {
        self.now = now;
        // An answer that comes in any other state is dropped.
        let p = match mem::replace(&mut self.state, State::Closed) {
            State::Opening(p) => p,
            other => {
                self.state = other;
                return;
            }
        };
        self.state = match result {
            Ok(()) => self.open_tunnel(p),
            Err(e) => {
                let reason = match p.addr {
                    Some(addr) => format!("cannot connect to {addr}: {e}"),
                    None => format!("cannot connect to {}: {e}", p.dest.authority),
                };
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
    pub(super) fn tunnel_moved(&mut self, moved: Result<bool, String>) {
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
    pub(super) fn end_tunnel(&mut self, broke: Option<String>) {
        let State::Tunnel(t) = mem::replace(&mut self.state, State::Closed) else { return };
        if let Some(reason) = broke {
            self.log_forward(t.dest, reason);
        }
        let line = t.line.tunnel_line(t.up.bytes, t.down.bytes, t.up.spliced + t.down.spliced, self.now);
        self.queue.push_back(Output::Log(Log::Access(line)));
        self.queue.push_back(Output::Close);
    }

    /// A forward-proxy request its service let through ([`crate::forward::Forwarder::route`]):
    /// a request without a body ends now (the codec sees it), then its destination's
    /// name is resolved, or its address admitted and dialled.
    pub(super) fn start_forward(&mut self, p: Box<Pending<'g>>) -> State<'g> {
        if p.body.is_none() && !p.tunnel {
            match self.server.handle_input(self.input.pending()) {
                Ok((n, ServerEvent::End(_))) => self.input.consume(n),
                Ok(_) => {}
                Err(e) => return self.fail(e.status(), e.reason(), p.line),
            }
        }
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
    pub(super) fn dial(&mut self, mut p: Box<Pending<'g>>, ip: IpAddr) -> State<'g> {
        let proxy = p.proxy;
        let addr = match proxy.admit(&mut p, ip) {
            Ok(addr) => addr,
            Err(refusal) => return self.refuse(refusal, p.dest.authority, p.line, p.tunnel),
        };
        if p.tunnel {
            p.addr = Some(addr);
            self.queue.push_back(Output::OpenTunnel { addr });
            return State::Opening(p);
        }
        let Pending { dest, request, method, body, line, deadline, permit, .. } = *p;
        let host = HostAddr { scheme: Scheme::Http, host: ip.to_string(), port: dest.port };
        // Pooled by the vetted address: never shared with the gateway's backends.
        let pool_key = crate::call::backend::forward_pool_key(&addr);
        let permit = permit.map(|p| Box::new(p) as Box<dyn crate::call::Admission>);
        let call = BackendCall::forward(method, host, pool_key, body, request, permit);
        let id = self.calls.open_forward(call, &mut self.queue);
        let (idle, via) = (proxy.plan.config.idle_timeout, &proxy.plan.via);
        let forwarded = Forwarded { dest: dest.authority, deadline, idle, via };
        self.line = Some(line);
        State::Stream { leg: Leg::Forward(Box::new(forwarded)), id }
    }

    /// The forward proxy answers itself (see [`Refusal`]): its line logged, its reply
    /// written, the connection closed when it says so.
    pub(super) fn refuse(&mut self, refusal: Refusal, dest: String, line: AccessLog, tunnel: bool) -> State<'g> {
        self.queue.push_back(Output::Log(refusal.log(self.peer, dest)));
        self.respond(refusal.reply(), line, refusal.closes(tunnel))
    }

    /// The tunnel's connection is open: `200` to the client, then bytes both ways;
    /// what the client sent after its CONNECT head goes first.
    pub(super) fn open_tunnel(&mut self, mut p: Box<Pending<'g>>) -> State<'g> {
        let fp = p.proxy.plan;
        let head =
            ResponseHead { status: StatusCode::OK, headers: no_fields(), body: BodyLength::Known(0), close: false };
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

    pub(super) fn log_forward(&mut self, dest: String, reason: String) {
        self.queue.push_back(Output::Log(Log::Forward { dest, reason }));
    }
}
