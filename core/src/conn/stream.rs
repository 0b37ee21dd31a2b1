//! `no-op`, streamed both ways: the client's body relayed to the backend as it
//! comes, the backend's answer pumped back as it comes, and what happens when either
//! breaks off (a 502 or 504 while nothing reached the client, else a cut body).

use super::*;
use crate::call::backend::Fetch;
use crate::http1::Fields;

/// A `no-op` response body on its way from backend connection `id` to the client.
///
/// The endpoint timeout bounds the whole exchange, body included, from the request's
/// start ([`Exchange::deadline`]): as KrakenD, whose request context covers the
/// response body too. A trickling backend cannot hold the client longer, and a
/// download that needs longer needs a longer endpoint `timeout`.
#[derive(Debug)]
pub(super) struct Pumping<'g> {
    /// Kept for the 502 a failure gets while nothing reached the client.
    pub(super) leg: Leg<'g>,
    pub(super) id: BackendId,
    pub(super) status: StatusCode,
    /// Body bytes written for the client so far.
    pub(super) sent: u64,
    /// Where the response head starts in the output and the count of client writes
    /// then: while no write was handed out since, the head can still be taken back.
    pub(super) head: (usize, u64),
}

/// What a streamed response comes from: a `no-op` endpoint's exchange, or a request
/// the forward proxy sent on.
#[derive(Debug)]
pub(super) enum Leg<'g> {
    Endpoint(Box<Exchange<'g>>),
    Forward(Box<Forwarded<'g>>),
}

/// The one place a streamed response tells a `no-op` endpoint from a forwarded
/// request: each answers for itself what the connection asks of it, and puts its own
/// log lines on `logs`.
impl<'g> Leg<'g> {
    pub(super) fn deadline(&self) -> Instant {
        match self {
            Leg::Endpoint(ex) => ex.deadline(),
            Leg::Forward(f) => f.deadline,
        }
    }

    /// The head of backend call `call` came with `status`: the status and the fields
    /// the client's head gets besides the backend's own (a `no-op` endpoint's
    /// `X-KrakenD-Completed: false`, the forward proxy's `Via`),
    /// or `None` when the exchange will not stream it (it answers itself:
    /// [`Leg::settle`]).
    fn head(
        &mut self,
        (call, status): (usize, StatusCode),
        now: Instant,
        balancer: &Balancer,
        logs: &mut VecDeque<Output<'g>>,
    ) -> Option<(StatusCode, &'g Fields)> {
        match self {
            Leg::Endpoint(ex) => {
                logs.push_back(Output::Log(Log::Call {
                    endpoint: ex.endpoint().index,
                    backend: call,
                    status: Some(status),
                }));
                ex.at(now);
                ex.handle_head(call, status);
                let action = ex.poll(balancer);
                if ex.has_logs() {
                    logs.extend(ex.take_logs().map(Output::Log));
                }
                match action {
                    Action::Stream(stream) => Some((stream.status, &ex.endpoint().noop_fields)),
                    _ => None,
                }
            }
            Leg::Forward(f) => {
                f.deadline = now + f.idle;
                Some((status, f.via))
            }
        }
    }

    /// Body bytes moved at `now`: a forwarded response's idle clock restarts (an
    /// endpoint's timeout bounds the whole exchange instead).
    fn progressed(&mut self, now: Instant) {
        if let Leg::Forward(f) = self {
            f.deadline = now + f.idle;
        }
    }

    /// The answer when nothing reached the client: a `no-op` endpoint answers as its
    /// exchange says (502, 504, ...), the forward proxy 502 with the reason.
    fn settle(self, failed: Option<(usize, &str)>, balancer: &Balancer, logs: &mut VecDeque<Output<'g>>) -> Reply {
        match self {
            Leg::Endpoint(mut ex) => {
                if let Some((call, reason)) = failed {
                    let endpoint = ex.endpoint();
                    logs.push_back(Output::Log(Log::Call { endpoint: endpoint.index, backend: call, status: None }));
                    let (endpoint, reason_line) = (endpoint.path.as_str(), reason.to_string());
                    logs.push_back(Output::Log(Log::Backend { endpoint, backend: call, reason: reason_line }));
                    ex.handle_failure(call, reason);
                }
                let action = ex.poll(balancer);
                if ex.has_logs() {
                    logs.extend(ex.take_logs().map(Output::Log));
                }
                match action {
                    Action::Respond(reply) => reply,
                    _ => Reply::text(StatusCode::BAD_GATEWAY, ""),
                }
            }
            Leg::Forward(f) => {
                let reason = failed.map_or("", |(_, reason)| reason);
                logs.push_back(Output::Log(Log::Forward { dest: f.dest, reason: reason.to_string() }));
                Reply::text(StatusCode::BAD_GATEWAY, reason)
            }
        }
    }

    /// No response head by the deadline: the endpoint's timeout answer, or the
    /// forward proxy's 504.
    fn timed_out(self, now: Instant, peer: IpAddr, balancer: &Balancer, logs: &mut VecDeque<Output<'g>>) -> Reply {
        match self {
            Leg::Endpoint(mut ex) => {
                ex.handle_timeout(now);
                Leg::Endpoint(ex).settle(None, balancer, logs)
            }
            Leg::Forward(f) => {
                logs.push_back(Output::Log(Refusal::Timeout.log(peer, f.dest)));
                Refusal::Timeout.reply()
            }
        }
    }

    /// Why a response body cannot end (`Cut`): whether it is a timeout, and the reason.
    fn cut_reason(&self, cut: Cut) -> (bool, String) {
        match (cut, self) {
            (Cut::Timeout, Leg::Endpoint(_)) => {
                (true, "the endpoint timeout passed before the response body ended".to_string())
            }
            (Cut::Timeout, Leg::Forward(_)) => (true, "idle timeout while the response body flowed".to_string()),
            (Cut::Failed(reason), _) => (false, reason),
        }
    }

    /// The answer a broken-off response body gets instead, while its head can still
    /// be taken back (nothing reached the client).
    fn instead(&self, timed_out: bool, reason: &str) -> Reply {
        match self {
            Leg::Endpoint(ex) => ex.stream_failed(timed_out, reason),
            Leg::Forward(_) if timed_out => Reply::text(StatusCode::GATEWAY_TIMEOUT, reason),
            Leg::Forward(_) => Reply::text(StatusCode::BAD_GATEWAY, reason),
        }
    }

    /// The log line of call `call`'s response broken off for `reason`.
    fn broke(&self, call: usize, reason: String, logs: &mut VecDeque<Output<'g>>) {
        let line = match self {
            Leg::Endpoint(ex) => Log::Backend { endpoint: ex.endpoint().path.as_str(), backend: call, reason },
            Leg::Forward(f) => Log::Forward { dest: f.dest.clone(), reason },
        };
        logs.push_back(Output::Log(line));
    }
}

/// Why a pumped body ends early.
#[derive(Debug)]
pub(super) enum Cut {
    Timeout,
    Failed(String),
}

/// Why relaying a client body stopped.
#[derive(Debug)]
pub(super) enum Relay {
    BadBody(StatusCode, &'static str),
    ClientGone,
}

impl<'g> Connection<'g> {
    pub(super) fn start_stream(&mut self, creq: ClientRequest, route: Route<'g>, line: AccessLog) -> State<'g> {
        if creq.body == RequestBody::None {
            // No body to stream: the codec sees the request end now.
            match self.server.handle_input(self.input.pending()) {
                Ok((n, ServerEvent::End(_))) => self.input.consume(n),
                Ok(_) => {}
                Err(e) => return self.fail(e.status(), e.reason(), line),
            }
        }
        let mut ex = self.exchange(route, creq);
        if let Some(trace) = line.trace() {
            ex.traced(trace.context());
        }
        let mut action = ex.poll(self.balancer);
        if ex.has_logs() {
            self.queue.extend(ex.take_logs().map(Output::Log));
        }
        match action {
            // By reference: the call is 200 bytes.
            Action::Call(ref mut call) => match self.open(&ex, call, true) {
                Ok(id) => {
                    ex.give_back(call);
                    self.line = Some(line);
                    State::Stream { leg: Leg::Endpoint(ex), id }
                }
                Err(reason) => {
                    ex.handle_unsent(call.id, reason);
                    let reply = Leg::Endpoint(ex).settle(None, self.balancer, &mut self.queue);
                    self.respond(reply, line, true)
                }
            },
            Action::Respond(reply) => self.respond(reply, line, false),
            _ => self.respond(Reply::text(StatusCode::INTERNAL_SERVER_ERROR, ""), line, true),
        }
    }

    pub(super) fn step_stream(&mut self, id: BackendId) -> bool {
        let relayed = match self.relay(id) {
            Ok(moved) => moved,
            Err(Relay::BadBody(status, reason)) => {
                // The client's body is malformed: its fault, not the backend's. The
                // backend connection got part of it: it is closed, never pooled.
                self.close_slots();
                self.state = self.fail_parked(status, reason);
                return true;
            }
            Err(Relay::ClientGone) => {
                self.close_slots();
                self.state = State::Closing;
                return true;
            }
        };
        let call = self.calls.index(id);
        let event = self.slot_step(id);
        if matches!(event, CallEvent::Nothing) {
            return relayed;
        }
        let State::Stream { mut leg, .. } = self.take_state() else { return self.lost_state() };
        if let Leg::Endpoint(ex) = &mut leg
            && ex.is_traced()
        {
            let (retries, redirects) = self.calls.hops(id);
            ex.hops(call, retries, redirects);
        }
        self.state = match event {
            // Not here: a step that found nothing returned above, the state in place.
            CallEvent::Nothing => State::Stream { leg, id },
            CallEvent::Head(head) => {
                let Some((status, ours)) = leg.head((call, head.status), self.now, self.balancer, &mut self.queue)
                else {
                    self.close_slots();
                    let reply = leg.settle(None, self.balancer, &mut self.queue);
                    self.state = self.respond_parked(reply, true);
                    return true;
                };
                let response =
                    ResponseHead { status, headers: no_fields(), body: head.body_length(), close: self.stopping };
                let head_at = (self.out.len(), self.handed);
                if self.server.write_passthrough_head(&response, &head.head, ours, &mut self.out).is_err() {
                    self.close_slots();
                    self.state = State::Closing;
                    return true;
                }
                self.calls.give_head_room(id, head.head);
                self.answered = true;
                State::Pump(Pumping { leg, id, status, sent: 0, head: head_at })
            }
            CallEvent::Failed(f) => self.leg_failed(leg, call, f.reason),
            CallEvent::Answer { .. } => {
                self.close_slots();
                self.leg_failed(leg, call, "unexpected response".to_string())
            }
        };
        true
    }

    /// A streamed call failed before its response head: the answer its leg gives, and
    /// the connection closes (the request body may be half read).
    pub(super) fn leg_failed(&mut self, mut leg: Leg<'g>, call: usize, reason: String) -> State<'g> {
        if let Leg::Endpoint(ex) = &mut leg {
            ex.at(self.now);
        }
        let reply = leg.settle(Some((call, &reason)), self.balancer, &mut self.queue);
        self.respond_parked(reply, true)
    }

    /// No response head by the leg's deadline: every call is closed, and the answer
    /// the leg gives for it.
    pub(super) fn leg_timed_out(&mut self, leg: Leg<'g>) -> State<'g> {
        self.close_slots();
        let reply = leg.timed_out(self.now, self.peer, self.balancer, &mut self.queue);
        self.respond_parked(reply, true)
    }

    /// Moves client body bytes to backend connection `id` while it relays; says
    /// whether anything moved.
    pub(super) fn relay(&mut self, id: BackendId) -> Result<bool, Relay> {
        let Some(slot) = self.calls.get_mut(id) else { return Ok(false) };
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

    pub(super) fn step_pump(&mut self) -> bool {
        let State::Pump(p) = &mut self.state else { return false };
        let Some(slot) = self.calls.get_mut(p.id) else { return false };
        if let Some(failure) = slot.failure.take() {
            // The backend broke off (a reset, a failed read).
            return self.cut_pump(Cut::Failed(failure.reason));
        }
        if self.out.len() >= FLUSH_AT || slot.reading || slot.hungry {
            return false;
        }
        let Some(codec) = slot.fetch.as_mut().map(Fetch::codec) else {
            return self.cut_pump(Cut::Failed("no codec".into()));
        };
        match pump_body(codec, slot.input.pending(), slot.eof, &mut self.server, &mut self.out, FLUSH_AT) {
            Ok((n, moved, Pumped::End)) => {
                slot.input.consume(n);
                p.sent += moved;
                let reusable = codec.reusable() && slot.input.pending().is_empty() && !slot.eof;
                let State::Pump(p) = self.take_state() else { return self.lost_state() };
                self.end_call(p.id, reusable);
                let line = self.take_line();
                self.log_access(line, p.status, p.sent);
                if let Leg::Endpoint(mut ex) = p.leg {
                    self.server.recycle_head(ex.take_head());
                    self.keep_exchange(ex);
                }
                self.state = match self.server.finish_response(&mut self.out) {
                    Ok(next) => State::Flush(next),
                    Err(_) => State::Closing,
                };
                true
            }
            Ok((n, moved, pumped)) => {
                slot.input.consume(n);
                p.sent += moved;
                if n > 0 {
                    p.leg.progressed(self.now);
                }
                if pumped == Pumped::NeedMore {
                    slot.hungry = true;
                }
                n > 0
            }
            Err(e) => self.cut_pump(Cut::Failed(format!("invalid response body: {}", e.reason()))),
        }
    }

    /// [`Connection::cut`] for the body being pumped.
    fn cut_pump(&mut self, cut: Cut) -> bool {
        let State::Pump(p) = self.take_state() else { return self.lost_state() };
        self.state = self.cut(p, cut);
        true
    }

    /// A `no-op` response body that cannot end well. While no byte of the answer has
    /// reached the client, it is taken back and the client gets the 502 (504 at the
    /// timeout) it would have had before the head; after that the body is cut (the
    /// client sees a short body: no chunk terminator, or fewer bytes than announced)
    /// and the connection closes. Either way, a backend line and the access line.
    pub(super) fn cut(&mut self, p: Pumping<'g>, cut: Cut) -> State<'g> {
        let call = self.calls.index(p.id);
        self.close_slots();
        let (timed_out, reason) = p.leg.cut_reason(cut);
        let (head_at, handed) = p.head;
        if handed == self.handed && self.out.len() >= head_at {
            self.out.truncate(head_at);
            self.server.take_back_head();
            let reply = p.leg.instead(timed_out, &reason);
            p.leg.broke(call, reason, &mut self.queue);
            return self.respond_parked(reply, true);
        }
        p.leg.broke(call, format!("response body cut after {} bytes: {reason}", p.sent), &mut self.queue);
        let line = self.take_line();
        self.log_access(line, p.status, p.sent);
        State::Closing
    }
}
