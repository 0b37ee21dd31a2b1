//! A request read whole, then served: a built-in endpoint's answer, or an aggregating
//! exchange whose backend calls run until it answers (the `no-op` counterpart, with
//! both bodies streamed, is `stream`).

use super::*;

impl<'g> Connection<'g> {
    pub(super) fn read_body(&mut self, req: ClientRequest, serve: Serve<'g>, line: AccessLog) -> State<'g> {
        self.server.write_continue(&mut self.out);
        let deadline = body_deadline(&self.gw.config, line.started());
        self.hungry = false;
        self.line = Some(line);
        State::Body { req: Box::new(req), serve, body: Vec::new(), deadline }
    }

    pub(super) fn step_body(&mut self) -> bool {
        if self.hungry || self.reading {
            return false;
        }
        let State::Body { body, .. } = &mut self.state else { return false };
        match self.server.read_body_into(self.input.pending(), body) {
            Ok((n, true)) => {
                self.input.consume(n);
                let State::Body { mut req, serve, body, .. } = self.take_state() else { return self.lost_state() };
                req.body = RequestBody::Full(body);
                self.state = self.serve(req, serve);
                true
            }
            Ok((n, false)) => {
                self.input.consume(n);
                if self.starve() {
                    return false;
                }
                // The client left before its body ended.
                self.line = None;
                self.state = State::Closing;
                true
            }
            Err(e) => {
                self.state = self.fail_parked(e.status(), e.reason());
                true
            }
        }
    }

    /// Serves a request read whole; its access line is the one the connection keeps.
    pub(super) fn serve(&mut self, req: Box<ClientRequest>, serve: Serve<'g>) -> State<'g> {
        match serve {
            Serve::Builtin(b) => {
                let reply = builtin::answer(b, &req, self.wall());
                self.respond_parked(reply, false)
            }
            Serve::Endpoint(route) => {
                let mut ex = self.exchange(route, *req);
                if let Some(trace) = self.line.as_ref().and_then(AccessLog::trace) {
                    ex.traced(trace.context());
                }
                self.drive(ex)
            }
        }
    }

    /// Runs an aggregating exchange until it waits or answers.
    pub(super) fn drive(&mut self, mut ex: Box<Exchange<'g>>) -> State<'g> {
        loop {
            let mut action = ex.poll(self.balancer);
            if ex.has_logs() {
                self.queue.extend(ex.take_logs().map(Output::Log));
            }
            match action {
                Action::Call(ref mut call) => match self.open(&ex, call, false) {
                    Ok(_) => ex.give_back(call),
                    Err(reason) => ex.handle_unsent(call.id, reason),
                },
                Action::Wait(deadline) => return State::Exchange { ex, deadline },
                Action::Respond(reply) => {
                    // Calls still in flight are abandoned.
                    self.close_slots();
                    self.server.recycle_head(ex.take_head());
                    let line = self.take_line();
                    let (next, written) = self.respond_giving_back(reply, line, false);
                    ex.give_reply_room(written);
                    // After the access line: a traced exchange's spans end first, as
                    // when it was dropped here.
                    self.keep_exchange(ex);
                    return next;
                }
                Action::Stream(_) | Action::Done => {
                    self.close_slots();
                    return self.respond_parked(Reply::text(StatusCode::INTERNAL_SERVER_ERROR, ""), true);
                }
            }
        }
    }

    pub(super) fn step_exchange(&mut self) -> bool {
        // The exchange is stepped where it lies; taken only when it goes on.
        let State::Exchange { ex, .. } = &mut self.state else { return false };
        let queue = &mut self.queue;
        let mut changed = false;
        ex.at(self.now);
        for id in 0..self.calls.len() {
            let event = self.calls.step(self.gw, id, self.now, queue);
            if ex.is_traced() && !matches!(event, CallEvent::Nothing) {
                let (retries, redirects) = self.calls.hops(id);
                ex.hops(self.calls.index(id), retries, redirects);
            }
            match event {
                CallEvent::Nothing => {}
                CallEvent::Answer { status, headers, body } => {
                    let call = self.calls.index(id);
                    // A plugin's call out is the plugin's business, not a backend's.
                    if !ex.is_call_out(call) {
                        log_call(queue, ex.endpoint().index, call, Some(status));
                    }
                    ex.handle_response(call, status, headers, body);
                    changed = true;
                }
                CallEvent::Failed(f) => {
                    let call = self.calls.index(id);
                    if !ex.is_call_out(call) {
                        log_call(queue, ex.endpoint().index, call, None);
                        let line = Log::Backend {
                            endpoint: ex.endpoint().path.as_str(),
                            backend: call,
                            reason: f.reason.clone(),
                        };
                        queue.push_back(Output::Log(line));
                    }
                    ex.handle_failure(call, &f.reason);
                    changed = true;
                }
                CallEvent::Head(_) => {
                    let call = self.calls.index(id);
                    ex.handle_failure(call, "unexpected response");
                    changed = true;
                }
            }
        }
        if !changed {
            return false;
        }
        let State::Exchange { ex, .. } = self.take_state() else { return self.lost_state() };
        self.state = self.drive(ex);
        true
    }
}

/// The admin pages' count of one backend call (`None`: it failed).
fn log_call<'g>(queue: &mut VecDeque<Output<'g>>, endpoint: usize, backend: usize, status: Option<StatusCode>) {
    queue.push_back(Output::Log(Log::Call { endpoint, backend, status }));
}
