//! Whole client connections through `core::conn::Connection`, with virtual time and
//! scripted peers: client bytes in (at given instants), backend answers from a script,
//! and the exact bytes the client gets, the backend requests, the pool and close
//! decisions and the log lines out. Nothing here opens a socket or reads a clock.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, UNIX_EPOCH};

use sluice_core::Gateway;
use sluice_core::conn::{BackendId, Connection, Input, Output, Session, Spliced};
use sluice_core::gateway::upstream::Balancer;
use sluice_core::ops::runtime::Runtime;
use sluice_core::ops::stats::Stats;
use sluice_core::resolve::dns::DnsError;
use sluice_core::resolve::srv::{SrvRecord, SrvSet};
use sluice_core::serve::Listener;

/// What the client does, in order.
#[derive(Clone, Copy)]
enum Client<'a> {
    Send(&'a str),
    /// The next step comes this much later.
    Wait(u64),
    /// The client closes its side.
    Eof,
    /// The server starts stopping.
    Stop,
    /// The backend closes the idle connections the gateway keeps in its pool.
    DropIdle,
    /// The client is gone: every write from now on fails.
    Gone,
}
use Client::{DropIdle, Eof, Gone, Send, Stop, Wait};

/// What a backend host does with the next request it receives.
#[derive(Clone)]
enum Serve {
    /// These bytes, this many ms after the request is whole.
    After(u64, String),
    /// Pieces, each this many ms after the request is whole; then the connection
    /// stays open, saying nothing.
    Pieces(Vec<(u64, String)>),
    /// Never answers.
    Hang,
    /// The connection is refused (the next connect to this host).
    Refuse,
}

fn json(body: &str) -> Serve {
    Serve::After(
        0,
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
    )
}

struct Sock {
    key: String,
    received: Vec<u8>,
    /// Bytes the backend has sent, from this instant.
    sending: VecDeque<(Instant, Vec<u8>)>,
    /// The backend closed its side (an idle pooled connection it dropped).
    closed: bool,
    read: Option<Vec<u8>>,
    answered: usize,
}

/// The whole world of one client connection.
struct World<'g> {
    conn: Connection<'g>,
    t0: Instant,
    now: Instant,
    client: VecDeque<(Instant, Client<'g>)>,
    client_read: Option<Vec<u8>>,
    /// An `Output::AwaitClient` is out: the client's next bytes first make it ready.
    client_await: bool,
    /// How many times the connection waited for its client without a buffer.
    awaits: usize,
    /// The times the connection's timer went off (at its `poll_timeout`).
    timeouts: Vec<u64>,
    to_client: String,
    socks: BTreeMap<BackendId, Sock>,
    pool: BTreeMap<String, Vec<Sock>>,
    scripts: BTreeMap<String, VecDeque<Serve>>,
    /// Inputs due now (writes and connects finish at once).
    ready: VecDeque<Input>,
    trace: Vec<String>,
    /// Every request a backend received, whole, in order.
    requests: Vec<String>,
    closed_at: Option<Instant>,
    client_gone: bool,
    /// The gateway shut its write side (the lingering close after a last answer).
    shut_at: Option<Instant>,
    /// Forward proxy: what each name resolves to (answered at once; a name missing
    /// here is never answered).
    dns: BTreeMap<String, Result<Vec<std::net::IpAddr>, DnsError>>,
    /// Forward proxy: the tunnel's destination got these bytes.
    tunnelled: Vec<u8>,
    /// A splice from the client is out.
    splice_up: bool,
    /// [`World::run_for`]: no event after this.
    until: Option<Instant>,
    /// `"sd": "dns"`: each name's SRV set (answered at once; a name missing here is
    /// never answered).
    srv: BTreeMap<String, Result<std::sync::Arc<SrvSet>, DnsError>>,
    /// A call that found nothing idle for a name: the host key it asked for.
    wanted: BTreeMap<BackendId, String>,
    /// Admin listener: the shards' counters (answered at once; never, without them).
    counters: Option<Stats>,
}

const CONFIG_HEAD: &str = r#""version": 3, "timeout": "1s", "read_header_timeout": "400ms", "idle_timeout": "2s""#;

fn gateway(endpoints: &str) -> Gateway {
    Gateway::load(&format!(r#"{{{CONFIG_HEAD}, "endpoints": [{endpoints}]}}"#)).unwrap().gateway
}

/// Heap allocations made on this thread while core runs (`Connection::handle` and
/// `poll`, as the harness calls them): the counting allocator below counts only
/// inside [`World::feed`] and [`World::next_output`], so the harness's own bookkeeping
/// is left out.
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ON: Cell<bool> = const { Cell::new(false) };
        static COUNT: Cell<u64> = const { Cell::new(0) };
        /// Bytes allocated less bytes freed while counting: what core holds.
        static LIVE: Cell<i64> = const { Cell::new(0) };
    }

    pub(crate) struct Counting;

    fn note(grew: i64) {
        if ON.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
            LIVE.with(|l| l.set(l.get() + grew));
        }
    }

    fn freed(size: usize) {
        if ON.with(Cell::get) {
            LIVE.with(|l| l.set(l.get() - size as i64));
        }
    }

    // SAFETY: every call is passed to the system allocator unchanged; the counter is a
    // thread-local Cell, which neither allocates nor locks.
    #[allow(unsafe_code)]
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size() as i64);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            freed(layout.size());
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size() as i64);
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size as i64 - layout.size() as i64);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Runs `f` with this thread's allocations counted.
    pub(crate) fn counted<T>(f: impl FnOnce() -> T) -> T {
        ON.with(|on| on.set(true));
        let out = f();
        ON.with(|on| on.set(false));
        out
    }

    /// Allocations counted on this thread so far.
    pub(crate) fn count() -> u64 {
        COUNT.with(Cell::get)
    }

    /// Heap bytes allocated and not freed while counting, on this thread so far.
    pub(crate) fn live() -> i64 {
        LIVE.with(Cell::get)
    }
}

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

impl<'g> World<'g> {
    /// An input to the connection, its allocations counted.
    fn feed(&mut self, input: Input, at: Instant) {
        counting::counted(|| self.conn.handle(input, at));
    }

    /// The connection's next output, its allocations counted.
    fn next_output(&mut self) -> Option<Output<'g>> {
        counting::counted(|| self.conn.poll())
    }

    fn new(gw: &'g Gateway, lb: &'g Balancer, script: &[Client<'g>]) -> World<'g> {
        let t0 = Instant::now();
        let mut at = t0;
        let mut client = VecDeque::new();
        for step in script {
            match step {
                Wait(ms) => at += Duration::from_millis(*ms),
                other => client.push_back((at, *other)),
            }
        }
        let wall = UNIX_EPOCH + Duration::from_secs(1_795_300_000);
        World {
            // Counted from its start: what the connection allocates at accept (its first
            // read buffer) and frees later balances out in `counting::live`.
            conn: counting::counted(|| Connection::new(gw, lb, "192.0.2.9".parse().unwrap(), t0, wall)),
            t0,
            now: t0,
            client,
            client_read: None,
            client_await: false,
            awaits: 0,
            timeouts: Vec::new(),
            to_client: String::new(),
            socks: BTreeMap::new(),
            pool: BTreeMap::new(),
            scripts: BTreeMap::new(),
            ready: VecDeque::new(),
            trace: Vec::new(),
            requests: Vec::new(),
            closed_at: None,
            client_gone: false,
            shut_at: None,
            dns: BTreeMap::new(),
            tunnelled: Vec::new(),
            srv: BTreeMap::new(),
            wanted: BTreeMap::new(),
            splice_up: false,
            until: None,
            counters: None,
        }
    }

    /// A connection on the admin listener; `counters` answers [`Output::Stats`].
    fn admin(gw: &'g Gateway, lb: &'g Balancer, rt: &'g Runtime, script: &[Client<'g>]) -> World<'g> {
        let mut w = World::new(gw, lb, script);
        w.conn = Connection::accept(Listener::Admin, gw, lb, rt, "192.0.2.9".parse().unwrap(), w.t0, UNIX_EPOCH);
        w
    }

    fn counters(mut self, stats: Stats) -> Self {
        self.counters = Some(stats);
        self
    }

    /// The driver splices tunnels: a splice up takes each of the client's sends.
    fn splicing(mut self) -> Self {
        self.conn.splice_tunnels(true);
        self
    }

    /// A connection on the forward proxy's listener.
    fn forward(gw: &'g Gateway, lb: &'g Balancer, rt: &'g Runtime, script: &[Client<'g>]) -> World<'g> {
        let mut w = World::new(gw, lb, script);
        w.conn = Connection::accept(Listener::Forward, gw, lb, rt, "192.0.2.9".parse().unwrap(), w.t0, UNIX_EPOCH);
        w
    }

    fn resolves(mut self, name: &str, answer: Result<&[&str], &str>) -> Self {
        let answer = answer.map(|ips| ips.iter().map(|ip| ip.parse().unwrap()).collect()).map_err(|why| match why {
            "overflow" => DnsError::Overflow,
            why => DnsError::Failed(why.to_string()),
        });
        self.dns.insert(name.to_string(), answer);
        self
    }

    /// `name`'s SRV records, `(priority, weight, port, target)`, or why there are none.
    fn discovers(mut self, name: &str, answer: Result<&[(u16, u16, u16, &str)], &str>) -> Self {
        let answer = match answer {
            Ok(records) => {
                let records: Vec<SrvRecord> = records
                    .iter()
                    .map(|&(priority, weight, port, target)| SrvRecord {
                        priority,
                        weight,
                        port,
                        target: target.into(),
                    })
                    .collect();
                Ok(std::sync::Arc::new(SrvSet::new(&records).expect("a usable record")))
            }
            Err(why) => Err(DnsError::Failed(why.to_string())),
        };
        self.srv.insert(name.to_string(), answer);
        self
    }

    fn backend(mut self, host: &str, serves: &[Serve]) -> Self {
        self.scripts.insert(format!("http://{host}"), serves.iter().cloned().collect());
        self
    }

    fn ms(&self) -> u128 {
        self.now.duration_since(self.t0).as_millis()
    }

    fn note(&mut self, what: String) {
        let line = format!("{:>4}ms {what}", self.ms());
        self.trace.push(line);
    }

    /// Runs until `ms` into the conversation (or as [`World::run`]).
    fn run_for(mut self, ms: u64) -> Self {
        self.until = Some(self.t0 + Duration::from_millis(ms));
        self.run()
    }

    /// Runs until the connection closes or nothing more can happen.
    fn run(mut self) -> Self {
        for _ in 0..10_000 {
            while let Some(output) = self.next_output() {
                self.start(output);
            }
            if self.closed_at.is_some() {
                return self;
            }
            if let Some(input) = self.ready.pop_front() {
                self.feed(input, self.now);
                continue;
            }
            if !self.next_event() {
                return self;
            }
        }
        panic!("the conversation did not settle");
    }

    fn start(&mut self, output: Output<'_>) {
        match output {
            Output::ReadClient(buf) => {
                assert!(!self.client_await, "a read while the connection waits for its client");
                self.client_read = Some(buf);
            }
            Output::AwaitClient => {
                assert!(self.client_read.is_none() && !self.client_await, "a second client read");
                self.client_await = true;
                self.awaits += 1;
            }
            Output::WriteClient(_) if self.client_await => {
                panic!("a client write while the connection waits for its client")
            }
            Output::WriteClient(bytes) if self.client_gone => {
                self.ready.push_back(Input::ClientWritten(bytes, Err(std::io::ErrorKind::BrokenPipe.into())));
            }
            Output::WriteClient(bytes) => {
                self.to_client.push_str(std::str::from_utf8(&bytes).unwrap());
                self.ready.push_back(Input::ClientWritten(bytes, Ok(())));
            }
            Output::Connect { id, pool_key, pooled, addr } => {
                // A socket still held under `id` (a kept one) is given back or closed
                // first: never dropped by a Connect.
                assert!(!self.socks.contains_key(&id), "a Connect for backend {id} while its socket is held");
                match (pool_key.strip_prefix("forward "), addr) {
                    // The forward proxy pools by the vetted address.
                    (Some(vetted), Some(addr)) => assert_eq!(vetted, addr.to_string()),
                    // An IP literal host comes with its address.
                    (None, Some(addr)) => assert!(
                        self.wanted.contains_key(&id) || pool_key == format!("http://{addr}"),
                        "{pool_key} {addr}"
                    ),
                    // A name comes without: resolved only when nothing is idle.
                    (None, None) => {}
                    (Some(_), None) => panic!("a forward connection without its address"),
                }
                let key = pool_key.to_string();
                if let Some(sock) = self.pool.get_mut(&key).and_then(Vec::pop).filter(|_| pooled) {
                    self.note(format!("backend {id}: pooled connection to {key}"));
                    self.socks.insert(id, sock);
                    self.ready.push_back(Input::Connected(id, Some(Session::default())));
                    return;
                }
                let Some(addr) = addr else {
                    self.note(format!("backend {id}: nothing idle under {key}"));
                    self.wanted.insert(id, key.clone());
                    self.ready.push_back(Input::NoIdle(id));
                    return;
                };
                // The script of the host asked for (a name resolved to addr), else of addr.
                let host_key = self.wanted.remove(&id).unwrap_or_else(|| format!("http://{addr}"));
                let script = self.scripts.get_mut(&host_key).expect("a scripted host");
                if matches!(script.front(), Some(Serve::Refuse)) {
                    script.pop_front();
                    self.note(format!("backend {id}: refused by {key}"));
                    let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
                    self.ready.push_back(Input::ConnectFailed(id, refused));
                    return;
                }
                match host_key == format!("http://{addr}") {
                    true => self.note(format!("backend {id}: new connection to {key}")),
                    false => self.note(format!("backend {id}: new connection to {key} at {addr}")),
                }
                let sock = Sock {
                    key: host_key,
                    received: Vec::new(),
                    sending: VecDeque::new(),
                    closed: false,
                    read: None,
                    answered: 0,
                };
                self.socks.insert(id, sock);
                self.ready.push_back(Input::Connected(id, None));
            }
            Output::ReadBackend { id, buf } => self.socks.get_mut(&id).expect("an open backend").read = Some(buf),
            Output::WriteBackend { id, bytes } => {
                let now = self.now;
                let sock = self.socks.get_mut(&id).expect("an open backend");
                sock.received.extend_from_slice(&bytes);
                self.ready.push_back(Input::BackendWritten(id, bytes, Ok(())));
                if let Some(request) = whole_request(&sock.received, sock.answered) {
                    sock.answered += 1;
                    self.requests.push(request);
                    // A connection the backend closed takes the bytes and never answers.
                    let serve = match sock.closed {
                        true => Serve::Hang,
                        false => self.scripts.get_mut(&sock.key).and_then(VecDeque::pop_front).unwrap_or(Serve::Hang),
                    };
                    match serve {
                        Serve::After(ms, bytes) => {
                            sock.sending.push_back((now + Duration::from_millis(ms), bytes.into_bytes()));
                        }
                        Serve::Pieces(pieces) => {
                            for (ms, bytes) in pieces {
                                sock.sending.push_back((now + Duration::from_millis(ms), bytes.into_bytes()));
                            }
                        }
                        Serve::Hang | Serve::Refuse => {}
                    }
                }
            }
            Output::PoolBackend { id, pool_key, .. } => {
                let sock = self.socks.remove(&id).expect("an open backend");
                self.note(format!("backend {id}: pooled"));
                self.pool.entry(pool_key.to_string()).or_default().push(sock);
            }
            Output::CloseBackend { id } => {
                if self.socks.remove(&id).is_some() {
                    self.note(format!("backend {id}: closed"));
                }
            }
            Output::Log(line) => {
                self.note(format!("log: {line}"));
                // Core allocated the line: freed where it is counted, so that
                // `counting::live` says what core itself still holds.
                counting::counted(|| drop(line));
            }
            Output::Stats => {
                self.note("counters asked".into());
                if let Some(stats) = &self.counters {
                    self.ready.push_back(Input::Stats(Box::new(stats.clone())));
                }
            }
            Output::Resolve { id, name } => {
                self.note(format!("resolve {name}"));
                if let Some(answer) = self.dns.get(&name) {
                    self.ready.push_back(Input::Resolved(id, answer.clone()));
                }
            }
            Output::Discover { id, name } => {
                self.note(format!("backend {id}: SRV of {name}"));
                if let Some(answer) = self.srv.get(name) {
                    self.ready.push_back(Input::Discovered(id, answer.clone()));
                }
            }
            Output::OpenTunnel { addr } => {
                self.note(format!("tunnel: connection to {addr}"));
                self.ready.push_back(Input::TunnelOpened(Ok(())));
            }
            // The destination never says anything.
            Output::ReadTunnel(_) => {}
            Output::WriteTunnel(bytes) => {
                self.tunnelled.extend_from_slice(&bytes);
                self.ready.push_back(Input::TunnelWritten(bytes, Ok(())));
            }
            Output::Splice { up: true } => {
                assert!(!self.splice_up, "one splice per direction");
                self.note("splice: client to destination".into());
                self.splice_up = true;
            }
            // The destination never says anything.
            Output::Splice { up: false } => self.note("splice: destination to client".into()),
            Output::ShutdownTunnel => {
                self.note("tunnel: write side shut".into());
                self.ready.push_back(Input::TunnelShutdown(Ok(())));
            }
            Output::ShutdownClient => {
                assert!(!self.client_await, "a client shutdown while the connection waits for its client");
                self.note("client: write side shut".into());
                self.shut_at = Some(self.now);
                self.ready.push_back(Input::ClientShutdown(Ok(())));
            }
            Output::Close => {
                // Every backend socket was pooled or closed before: none is dropped
                // (a kept connection goes to the pool at the end).
                let held: Vec<_> = self.socks.keys().collect();
                assert!(held.is_empty(), "backend sockets {held:?} still held at the close");
                self.note("client: closed".into());
                self.closed_at = Some(self.now);
            }
        }
    }

    /// Moves time to the next event and delivers it; `false` when there is none.
    fn next_event(&mut self) -> bool {
        let mut best: Option<(Instant, u8, BackendId)> = None;
        let mut consider = |at: Instant, kind: u8, id: BackendId| {
            if best.is_none_or(|(b, k, _)| (at, kind) < (b, k)) {
                best = Some((at, kind, id));
            }
        };
        if (self.client_read.is_some() || self.client_await || self.splice_up)
            && let Some((at, _)) = self.client.front()
        {
            consider(*at, 0, 0);
        } else if let Some((at, Stop | DropIdle | Gone)) = self.client.front() {
            consider(*at, 0, 0);
        }
        for (id, sock) in &self.socks {
            if sock.read.is_some() {
                if let Some((at, _)) = sock.sending.front() {
                    consider(*at, 1, *id);
                } else if sock.closed {
                    consider(self.now, 1, *id);
                }
            }
        }
        if let Some(at) = self.conn.poll_timeout() {
            consider(at.max(self.now), 2, 0);
        }
        let Some((at, kind, id)) = best.filter(|(at, _, _)| self.until.is_none_or(|u| *at <= u)) else { return false };
        self.now = at;
        match kind {
            0 => {
                let (_, step) = self.client.pop_front().unwrap();
                if self.client_await && matches!(step, Send(_) | Eof) {
                    // Readable: the connection reads next, and gets these bytes then.
                    self.client_await = false;
                    self.client.push_front((at, step));
                    self.feed(Input::ClientReady(Ok(())), at);
                    return true;
                }
                match step {
                    Send(text) if self.splice_up => {
                        self.splice_up = false;
                        self.tunnelled.extend_from_slice(text.as_bytes());
                        self.feed(Input::Spliced { up: true, result: Spliced::Moved(text.len()) }, at);
                    }
                    Eof if self.splice_up => {
                        self.splice_up = false;
                        self.feed(Input::Spliced { up: true, result: Spliced::Closed }, at);
                    }
                    Send(text) => {
                        let mut buf = self.client_read.take().unwrap();
                        buf.extend_from_slice(text.as_bytes());
                        self.feed(Input::ClientRead(buf, Ok(text.len())), at);
                    }
                    Eof => {
                        let buf = self.client_read.take().unwrap();
                        self.feed(Input::ClientRead(buf, Ok(0)), at);
                    }
                    Stop => self.feed(Input::Stop, at),
                    Gone => self.client_gone = true,
                    DropIdle => {
                        for sock in self.pool.values_mut().flatten() {
                            sock.closed = true;
                        }
                    }
                    Wait(_) => unreachable!(),
                }
            }
            1 => {
                let sock = self.socks.get_mut(&id).unwrap();
                let mut buf = sock.read.take().unwrap();
                let n = match sock.sending.pop_front() {
                    Some((_, bytes)) => {
                        buf.extend_from_slice(&bytes);
                        bytes.len()
                    }
                    None => 0,
                };
                self.feed(Input::BackendRead(id, buf, Ok(n)), at);
            }
            _ => {
                self.timeouts.push(at.duration_since(self.t0).as_millis() as u64);
                self.feed(Input::Timeout, at)
            }
        }
        true
    }

    /// When the gateway was done with the client: its write side shut (a lingering
    /// close), or the connection closed.
    fn ended(&self) -> Option<Duration> {
        self.shut_at.or(self.closed_at).map(|t| t - self.t0)
    }

    fn trace(&self) -> String {
        self.trace.join("\n")
    }
}

/// The `n`th whole request in `received`, once it is all there (Content-Length or
/// chunked framing, as the gateway writes them).
fn whole_request(received: &[u8], n: usize) -> Option<String> {
    let text = String::from_utf8_lossy(received).into_owned();
    let mut rest = text.as_str();
    let mut found = Vec::new();
    while let Some(head_end) = rest.find("\r\n\r\n") {
        let head = &rest[..head_end + 4];
        let lower = head.to_ascii_lowercase();
        let body_len = if let Some(l) = lower.lines().find_map(|l| l.strip_prefix("content-length: ")) {
            l.trim().parse::<usize>().ok()?
        } else if lower.contains("transfer-encoding: chunked") {
            rest[head.len()..].find("0\r\n\r\n").filter(|at| *at == 0 || rest[head.len()..][..*at].ends_with("\r\n"))?
                + 5
        } else {
            0
        };
        if rest.len() < head.len() + body_len {
            return None;
        }
        found.push(rest[..head.len() + body_len].to_string());
        rest = &rest[head.len() + body_len..];
    }
    found.get(n).cloned()
}

fn upstream(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

const GET_A: &str = "GET /a HTTP/1.1\r\nHost: gw\r\n\r\n";

fn one_backend() -> Gateway {
    gateway(r#"{"endpoint": "/a", "backend": [{"host": ["http://127.0.0.1:9001"], "url_pattern": "/users/1"}]}"#)
}

const ANSWER_A: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\nx-krakend-completed: true\r\ncontent-length: 8\r\n\r\n{\"id\":1}";

const REQUEST_A: &str = "GET /users/1 HTTP/1.1\r\nhost: 127.0.0.1:9001\r\nx-forwarded-for: 192.0.2.9\r\nx-forwarded-host: gw\r\nuser-agent: Sluice/0.1.0\r\naccept-encoding: gzip\r\n\r\n";

/// CORS on a keep-alive connection: a preflight answered without a backend call, then
/// a request whose answer gets the allow fields, then one from no origin that gets
/// `Vary` alone (nothing left over from the request before), and an answer from the
/// codec's error writer that gets them too.
#[test]
fn cors_fields_belong_to_their_own_request() {
    let gw = Gateway::load(&format!(
        r#"{{{CONFIG_HEAD}, "extra_config": {{"security/cors": {{"allow_origins": ["https://app.example"]}}}},
            "endpoints": [{{"endpoint": "/a", "backend": [{{"host": ["http://127.0.0.1:9001"], "url_pattern": "/users/1"}}]}},
              {{"endpoint": "/p", "method": "POST", "backend": [{{"host": ["http://127.0.0.1:9001"], "url_pattern": "/users/1"}}]}}]}}"#
    ))
    .unwrap()
    .gateway;
    let lb = Balancer::new(gw.backend_count);
    let preflight =
        "OPTIONS /a HTTP/1.1\r\nHost: gw\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: GET\r\n\r\n";
    let from_app = "GET /a HTTP/1.1\r\nHost: gw\r\nOrigin: https://app.example\r\n\r\n";
    // Refused by the codec's error writer (413, then the connection closes).
    let too_big = "POST /p HTTP/1.1\r\nHost: gw\r\nOrigin: https://app.example\r\nContent-Length: 99999999\r\n\r\n";
    let script =
        [Send(preflight), Wait(10), Send(from_app), Wait(10), Send(GET_A), Wait(10), Send(too_big), Wait(10), Eof];
    let w = World::new(&gw, &lb, &script).backend(&upstream(9001), &[json(r#"{"id":1}"#), json(r#"{"id":1}"#)]).run();
    let vary = "vary: Origin\r\n";
    let allowed = format!("{vary}access-control-allow-origin: https://app.example\r\n");
    let body = "content-type: application/json; charset=utf-8\r\nx-krakend-completed: true\r\ncontent-length: 8\r\n\r\n{\"id\":1}";
    assert_eq!(
        w.to_client,
        format!(
            "HTTP/1.1 204 No Content\r\nvary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n\
             access-control-allow-origin: https://app.example\r\naccess-control-allow-methods: GET\r\n\r\n\
             HTTP/1.1 200 OK\r\n{allowed}{body}HTTP/1.1 200 OK\r\n{vary}{body}\
             HTTP/1.1 413 Payload Too Large\r\n{allowed}content-type: text/plain; charset=utf-8\r\n\
             content-length: 14\r\nconnection: close\r\n\r\nbody too large"
        )
    );
    assert_eq!(w.requests.len(), 2, "the preflight reached no backend");
}

/// Rate limits in virtual time, on one keep-alive connection: the endpoint's bucket
/// lets its capacity through, then 503 until a refill; a client's lets its own through,
/// then 429, while another client goes on; a bot is refused before any of it.
#[test]
fn rate_limits_and_bots_answer_before_any_backend() {
    let gw = Gateway::load(&format!(
        r#"{{{CONFIG_HEAD}, "endpoints": [
            {{"endpoint": "/g", "extra_config": {{"qos/ratelimit/router": {{"max_rate": 2, "capacity": 2}},
                "security/bot-detector": {{"deny": ["evil/1.0"]}}}},
              "backend": [{{"host": ["http://127.0.0.1:9001"], "url_pattern": "/users/1"}}]}},
            {{"endpoint": "/c/{{user}}", "extra_config": {{"qos/ratelimit/router": {{
                "client_max_rate": 1, "strategy": "param", "key": "user"}}}},
              "backend": [{{"host": ["http://127.0.0.1:9001"], "url_pattern": "/users/1"}}]}}]}}"#
    ))
    .unwrap()
    .gateway;
    let lb = Balancer::new(gw.backend_count);
    let get = |path: &'static str| -> &'static str {
        Box::leak(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").into_boxed_str())
    };
    let bot = "GET /g HTTP/1.1\r\nHost: gw\r\nUser-Agent: evil/1.0\r\n\r\n";
    let mut script = Vec::new();
    for step in [get("/g"), get("/g"), get("/g"), bot] {
        script.extend([Send(step), Wait(10)]);
    }
    // Half a second on (2 per second): one more token.
    script.extend([Wait(470), Send(get("/g")), Wait(10), Send(get("/g")), Wait(10)]);
    for step in [get("/c/ann"), get("/c/ann"), get("/c/bob")] {
        script.extend([Send(step), Wait(10)]);
    }
    script.extend([Wait(1000), Send(get("/c/ann")), Wait(10), Eof]);
    let serves: Vec<Serve> = (0..6).map(|_| json(r#"{"id":1}"#)).collect();
    let w = World::new(&gw, &lb, &script).backend(&upstream(9001), &serves).run();
    let statuses: Vec<&str> =
        w.to_client.split("HTTP/1.1 ").skip(1).map(|answer| answer.split("\r\n").next().unwrap()).collect();
    assert_eq!(
        statuses,
        [
            "200 OK",
            "200 OK",
            "503 Service Unavailable",
            "403 Forbidden",
            "200 OK",
            "503 Service Unavailable",
            "200 OK",
            "429 Too Many Requests",
            "200 OK",
            "200 OK"
        ]
    );
    assert_eq!(w.requests.len(), 6, "no refused request reached the backend");
    // Refusals as KrakenD's gin middlewares write them: no body, no type.
    assert!(
        w.to_client.contains("HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK"),
        "{}",
        w.to_client
    );
    assert!(w.to_client.contains("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n"), "{}", w.to_client);
}

/// A backend's rate limit (`qos/ratelimit/proxy`): a call over it is not made; alone,
/// the endpoint answers 500 as for any failed backend, beside another backend the
/// answer is partial (`X-KrakenD-Completed: false`), as lura merges it.
#[test]
fn a_backend_over_its_rate_limit_is_not_called() {
    let gw = Gateway::load(&format!(
        r#"{{{CONFIG_HEAD}, "endpoints": [
            {{"endpoint": "/one", "backend": [{{"host": ["http://127.0.0.1:9001"], "url_pattern": "/users/1",
                "extra_config": {{"qos/ratelimit/proxy": {{"max_rate": 1, "every": "1m"}}}}}}]}},
            {{"endpoint": "/two", "backend": [
                {{"host": ["http://127.0.0.1:9001"], "url_pattern": "/users/1", "group": "limited",
                  "extra_config": {{"qos/ratelimit/proxy": {{"max_rate": 1, "capacity": 1, "every": "1h"}}}}}},
                {{"host": ["http://127.0.0.1:9001"], "url_pattern": "/users/1", "group": "free"}}]}}]}}"#
    ))
    .unwrap()
    .gateway;
    let lb = Balancer::new(gw.backend_count);
    let (one, two) = ("GET /one HTTP/1.1\r\nHost: gw\r\n\r\n", "GET /two HTTP/1.1\r\nHost: gw\r\n\r\n");
    let script = [Send(one), Wait(10), Send(one), Wait(10), Send(two), Wait(10), Send(two), Wait(10), Eof];
    let serves: Vec<Serve> = (0..4).map(|_| json(r#"{"id":1}"#)).collect();
    let w = World::new(&gw, &lb, &script).backend(&upstream(9001), &serves).run();
    let id = r#"{"id":1}"#;
    let answers: Vec<String> = (0..4).map(|n| whole_request(w.to_client.as_bytes(), n).unwrap_or_default()).collect();
    assert!(answers[0].starts_with("HTTP/1.1 200 OK\r\n") && answers[0].ends_with(id), "{}", answers[0]);
    assert_eq!(
        answers[1],
        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n\
         x-krakend-completed: false\r\ncontent-length: 0\r\n\r\n"
    );
    assert!(answers[2].ends_with(&format!(r#"{{"limited":{id},"free":{id}}}"#)), "{}", answers[2]);
    assert!(answers[3].contains("x-krakend-completed: false\r\n"), "{}", answers[3]);
    assert!(answers[3].ends_with(&format!(r#"{{"free":{id}}}"#)), "{}", answers[3]);
    assert_eq!(w.requests.len(), 4, "the two calls over the limit were not made");
}

#[test]
fn keep_alive_reuses_the_backend_connection() {
    let gw = one_backend();
    let lb = Balancer::new(gw.backend_count);
    let w = World::new(&gw, &lb, &[Send(GET_A), Wait(10), Send(GET_A), Wait(10), Eof])
        .backend(&upstream(9001), &[json(r#"{"id":1}"#), json(r#"{"id":1}"#)])
        .run();
    assert_eq!(w.to_client, format!("{ANSWER_A}{ANSWER_A}"));
    assert_eq!(w.requests, [REQUEST_A, REQUEST_A]);
    assert_eq!(
        w.trace(),
        [
            "   0ms backend 0: new connection to http://127.0.0.1:9001",
            "   0ms log: backend 0 of endpoint 0: 200",
            "   0ms log: 192.0.2.9 \"GET /a\" 200 8 0.0ms",
            "   0ms backend 0: pooled",
            "  10ms backend 0: pooled connection to http://127.0.0.1:9001",
            "  10ms log: backend 0 of endpoint 0: 200",
            "  10ms log: 192.0.2.9 \"GET /a\" 200 8 0.0ms",
            "  20ms backend 0: pooled",
            "  20ms client: closed",
        ]
        .join("\n")
    );
}

fn named_backend() -> Gateway {
    gateway(r#"{"endpoint": "/a", "backend": [{"host": ["http://api.test:9001"], "url_pattern": "/users/1"}]}"#)
}

/// A backend named by a host name: core resolves it (Output::Resolve) only when there
/// is no idle connection to take, dials the first address, and pools the connection
/// under the name; a name that does not resolve fails the call saying why.
#[test]
fn a_named_backend_is_resolved_only_when_nothing_is_idle() {
    let gw = named_backend();
    let lb = Balancer::new(gw.backend_count);
    let w = World::new(&gw, &lb, &[Send(GET_A), Wait(10), Send(GET_A), Wait(10), Eof])
        .resolves("api.test", Ok(&["127.0.0.7", "127.0.0.8"]))
        .backend("api.test:9001", &[json(r#"{"id":1}"#), json(r#"{"id":1}"#)])
        .run();
    assert_eq!(w.to_client, format!("{ANSWER_A}{ANSWER_A}"));
    assert_eq!(
        w.trace(),
        [
            "   0ms backend 0: nothing idle under http://api.test:9001",
            "   0ms resolve api.test",
            "   0ms backend 0: new connection to http://api.test:9001 at 127.0.0.7:9001",
            "   0ms log: backend 0 of endpoint 0: 200",
            "   0ms log: 192.0.2.9 \"GET /a\" 200 8 0.0ms",
            "   0ms backend 0: pooled",
            "  10ms backend 0: pooled connection to http://api.test:9001",
            "  10ms log: backend 0 of endpoint 0: 200",
            "  10ms log: 192.0.2.9 \"GET /a\" 200 8 0.0ms",
            "  20ms backend 0: pooled",
            "  20ms client: closed",
        ]
        .join("\n")
    );
    let gw = gateway(
        r#"{"endpoint": "/a", "backend": [{"host": ["http://nowhere.test:9001"], "url_pattern": "/users/1"}]}"#,
    );
    let lb = Balancer::new(gw.backend_count);
    let w = World::new(&gw, &lb, &[Send(GET_A), Wait(10), Eof]).resolves("nowhere.test", Err("no such name")).run();
    assert!(w.to_client.starts_with("HTTP/1.1 500 Internal Server Error\r\n"), "{}", w.to_client);
    assert!(w.requests.is_empty());
    let said = "log: backend 0 of /a: cannot resolve nowhere.test: no such name";
    assert!(w.trace().contains(said), "{}", w.trace());
    // A name that resolves to nothing fails the same way, saying so.
    let gw = named_backend();
    let lb = Balancer::new(gw.backend_count);
    let w = World::new(&gw, &lb, &[Send(GET_A), Wait(10), Eof]).resolves("api.test", Ok(&[])).run();
    assert!(w.to_client.starts_with("HTTP/1.1 500 Internal Server Error\r\n"), "{}", w.to_client);
    assert!(w.requests.is_empty());
    let said = "log: backend 0 of /a: cannot resolve api.test: no address";
    assert!(w.trace().contains(said), "{}", w.trace());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let gw = one_backend();
    let lb = Balancer::new(gw.backend_count);
    let two = format!("{GET_A}GET /nowhere HTTP/1.1\r\nHost: gw\r\n\r\n");
    let w = World::new(&gw, &lb, &[Send(&two), Wait(5), Eof]).backend(&upstream(9001), &[json(r#"{"id":1}"#)]).run();
    assert_eq!(
        w.to_client,
        format!(
            "{ANSWER_A}HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\nx-krakend-completed: false\r\ncontent-length: 18\r\n\r\n404 page not found"
        )
    );
    assert_eq!(w.closed_at.map(|t| t - w.t0), Some(Duration::from_millis(5)));
}

/// Between keep-alive requests a connection waits for its client holding no read
/// buffer (Output::AwaitClient, once per wait; the harness fails on a read or a write
/// given while one is out), unless the client is busy: its last request came within
/// 250 ms of the answer before it. A new connection reads at once, and pipelined
/// requests are read from what is pending without a wait.
#[test]
fn an_idle_keep_alive_connection_waits_without_a_read_buffer() {
    let gw = one_backend();
    let lb = Balancer::new(gw.backend_count);
    let answers = |n| vec![json(r#"{"id":1}"#); n];
    // A slow client (300 ms between requests): a wait after every answer.
    let w = World::new(&gw, &lb, &[Send(GET_A), Wait(300), Send(GET_A), Wait(300), Send(GET_A), Wait(10), Eof])
        .backend(&upstream(9001), &answers(3))
        .run();
    assert_eq!(w.to_client, ANSWER_A.repeat(3));
    assert_eq!((w.awaits, w.ended()), (3, Some(Duration::from_millis(610))));
    // A busy one (10 ms): a wait after the first answer only; then it goes quiet for
    // 300 ms holding its buffer, and after that slow request it waits again.
    let w = World::new(&gw, &lb, &[Send(GET_A), Wait(10), Send(GET_A), Wait(300), Send(GET_A), Wait(10), Eof])
        .backend(&upstream(9001), &answers(3))
        .run();
    assert_eq!(w.to_client, ANSWER_A.repeat(3));
    assert_eq!((w.awaits, w.ended()), (2, Some(Duration::from_millis(320))));
    let two_answers = || answers(2);
    // Two pipelined in one send: the second is read from what is pending (busy); no wait.
    let two = format!("{GET_A}{GET_A}");
    let w = World::new(&gw, &lb, &[Send(&two), Wait(5), Eof]).backend(&upstream(9001), &two_answers()).run();
    assert_eq!(w.to_client, format!("{ANSWER_A}{ANSWER_A}"));
    assert_eq!((w.awaits, w.ended()), (0, Some(Duration::from_millis(5))));
    // Silent after its answer: closed at the idle timeout while waiting, nothing written.
    let w = World::new(&gw, &lb, &[Send(GET_A)]).backend(&upstream(9001), &two_answers()).run();
    assert_eq!(w.to_client, ANSWER_A);
    assert_eq!((w.awaits, w.ended()), (1, Some(Duration::from_millis(2000))));
    // A new connection that says nothing reads at once (no wait) and closes at the header timeout.
    let w = World::new(&gw, &lb, &[]).run();
    assert_eq!((w.awaits, w.to_client.as_str(), w.ended()), (0, "", Some(Duration::from_millis(400))));
    // A head split over two sends after a wait: read on, no second wait mid-head.
    let (first, rest) = GET_A.split_at(7);
    let w = World::new(&gw, &lb, &[Send(GET_A), Wait(300), Send(first), Wait(5), Send(rest), Wait(300), Eof])
        .backend(&upstream(9001), &two_answers())
        .run();
    assert_eq!(w.to_client, format!("{ANSWER_A}{ANSWER_A}"));
    assert_eq!(w.awaits, 2);
}

#[test]
fn client_errors_and_limits() {
    // (what the client sends, what it gets back, when the connection closes)
    let gw = one_backend();
    let lb = Balancer::new(gw.backend_count);
    let big_header = format!("GET /a HTTP/1.1\r\nHost: gw\r\nX-Big: {}\r\n\r\n", "x".repeat(70_000));
    let rows: [(Vec<Client<'_>>, String, u64); 7] = [
        // 408: a head that does not end within read_header_timeout.
        (vec![Send("GET /a HTTP/1.1\r\nHo")], error(408, "Request Timeout", "request header timeout"), 400),
        // An idle connection that says nothing is closed silently after the header timeout.
        (vec![], String::new(), 400),
        // Between keep-alive requests the idle timeout applies, then silence.
        (vec![Send(GET_A)], ANSWER_A.to_string(), 2000),
        // 413: a declared body over the limit is refused before a byte of it is read.
        (
            vec![Send("POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 17000000\r\n\r\n")],
            error(413, "Payload Too Large", "body too large"),
            0,
        ),
        // 413 before 404: a path nobody serves with such a body.
        (
            vec![Send("POST /nowhere HTTP/1.1\r\nHost: gw\r\nContent-Length: 17000000\r\n\r\n")],
            error(413, "Payload Too Large", "body too large"),
            0,
        ),
        // 431: a head over max_header_bytes (64 KiB).
        (vec![Send(&big_header)], error(431, "Request Header Fields Too Large", "request header fields too large"), 0),
        // 400: garbage.
        (vec![Send("HELLO\r\n\r\n")], error(400, "Bad Request", "invalid request line"), 0),
    ];
    for (script, expected, closed_ms) in rows {
        let w = World::new(&gw, &lb, &script).backend(&upstream(9001), &[json(r#"{"id":1}"#)]).run();
        assert_eq!(w.to_client, expected);
        assert_eq!(w.ended(), Some(Duration::from_millis(closed_ms)), "{expected}");
    }
}

fn error(code: u16, reason: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn a_slow_backend_gives_a_partial_answer_at_the_endpoint_timeout() {
    let gw = gateway(
        r#"{"endpoint": "/p", "timeout": "300ms", "backend": [
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/fast"},
            {"host": ["http://127.0.0.1:9002"], "url_pattern": "/slow"}]}"#,
    );
    let lb = Balancer::new(gw.backend_count);
    let w = World::new(&gw, &lb, &[Send("GET /p HTTP/1.1\r\nHost: gw\r\n\r\n"), Wait(1000), Eof])
        .backend(&upstream(9001), &[json(r#"{"fast":1}"#)])
        .backend(&upstream(9002), &[Serve::Hang])
        .run();
    assert_eq!(
        w.to_client,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\nx-krakend-completed: false\r\ncontent-length: 10\r\n\r\n{\"fast\":1}"
    );
    assert_eq!(
        w.trace(),
        [
            "   0ms backend 0: new connection to http://127.0.0.1:9001",
            "   0ms backend 1: new connection to http://127.0.0.1:9002",
            "   0ms log: backend 0 of endpoint 0: 200",
            " 300ms backend 1: closed",
            " 300ms log: 192.0.2.9 \"GET /p\" 200 10 300.0ms",
            " 300ms backend 0: pooled",
            "1000ms client: closed",
        ]
        .join("\n")
    );
}

/// Each answer goes to the call it was for, whichever backend answers first: here the
/// first is refused and the second answers (a call is asked which backend it served
/// after it ended).
#[test]
fn each_answer_goes_to_its_own_backend() {
    let gw = gateway(
        r#"{"endpoint": "/p", "backend": [
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/a", "group": "a"},
            {"host": ["http://127.0.0.1:9002"], "url_pattern": "/b", "group": "b"}]}"#,
    );
    let lb = Balancer::new(gw.backend_count);
    let w = World::new(&gw, &lb, &[Send("GET /p HTTP/1.1\r\nHost: gw\r\n\r\n"), Wait(10), Eof])
        .backend(&upstream(9001), &[Serve::Refuse])
        .backend(&upstream(9002), &[json(r#"{"n":2}"#)])
        .run();
    assert_eq!(
        w.to_client,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\nx-krakend-completed: false\r\ncontent-length: 13\r\n\r\n{\"b\":{\"n\":2}}"
    );
    assert_eq!(
        w.trace(),
        [
            "   0ms backend 0: refused by http://127.0.0.1:9001",
            "   0ms backend 1: new connection to http://127.0.0.1:9002",
            "   0ms log: backend 0 of endpoint 0: failed",
            "   0ms log: backend 0 of /p: cannot connect to 127.0.0.1:9001: refused",
            "   0ms log: backend 1 of endpoint 0: 200",
            "   0ms log: 192.0.2.9 \"GET /p\" 200 13 0.0ms",
            "   0ms backend 1: pooled",
            "  10ms client: closed",
        ]
        .join("\n")
    );
}

#[test]
fn a_pooled_connection_the_backend_closed_is_retried_on_a_new_one() {
    let gw = one_backend();
    let lb = Balancer::new(gw.backend_count);
    let w = World::new(&gw, &lb, &[Send(GET_A), Wait(10), DropIdle, Wait(10), Send(GET_A), Wait(10), Eof])
        .backend(&upstream(9001), &[json(r#"{"id":1}"#), json(r#"{"id":1}"#)])
        .run();
    assert_eq!(w.to_client, format!("{ANSWER_A}{ANSWER_A}"));
    // The stale connection took the request and said nothing: sent again, once.
    assert_eq!(w.requests, [REQUEST_A, REQUEST_A, REQUEST_A]);
    assert_eq!(
        w.trace[4..].join("\n"),
        [
            "  20ms backend 0: pooled connection to http://127.0.0.1:9001",
            "  20ms backend 0: closed",
            "  20ms backend 0: new connection to http://127.0.0.1:9001",
            "  20ms log: backend 0 of endpoint 0: 200",
            "  20ms log: 192.0.2.9 \"GET /a\" 200 8 0.0ms",
            "  30ms backend 0: pooled",
            "  30ms client: closed",
        ]
        .join("\n")
    );
}

/// The retry of a stale pooled connection to a named backend: it may not take an idle
/// connection, so the name is resolved again and one new connection is opened.
#[test]
fn a_stale_pooled_connection_to_a_named_backend_is_retried_after_resolving() {
    let gw = named_backend();
    let lb = Balancer::new(gw.backend_count);
    let w = World::new(&gw, &lb, &[Send(GET_A), Wait(10), DropIdle, Wait(10), Send(GET_A), Wait(10), Eof])
        .resolves("api.test", Ok(&["127.0.0.7"]))
        .backend("api.test:9001", &[json(r#"{"id":1}"#), json(r#"{"id":1}"#)])
        .run();
    assert_eq!(w.to_client, format!("{ANSWER_A}{ANSWER_A}"));
    assert_eq!(w.requests.len(), 3, "{:?}", w.requests);
    assert_eq!(
        w.trace[6..].join("\n"),
        [
            "  20ms backend 0: pooled connection to http://api.test:9001",
            "  20ms backend 0: closed",
            "  20ms backend 0: nothing idle under http://api.test:9001",
            "  20ms resolve api.test",
            "  20ms backend 0: new connection to http://api.test:9001 at 127.0.0.7:9001",
            "  20ms log: backend 0 of endpoint 0: 200",
            "  20ms log: 192.0.2.9 \"GET /a\" 200 8 0.0ms",
            "  30ms backend 0: pooled",
            "  30ms client: closed",
        ]
        .join("\n")
    );
}

fn no_op() -> Gateway {
    gateway(
        r#"{"endpoint": "/raw", "method": "POST", "output_encoding": "no-op",
            "backend": [{"host": ["http://127.0.0.1:9001"], "url_pattern": "/up", "encoding": "no-op"}]}"#,
    )
}

const UPLOAD_HEAD: &str =
    "POST /raw HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n";

#[test]
fn no_op_streams_the_body_up_and_the_answer_down() {
    let gw = no_op();
    let lb = Balancer::new(gw.backend_count);
    let answer = "HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nX-Upstream: yes\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    let w = World::new(
        &gw,
        &lb,
        &[
            Send(UPLOAD_HEAD),
            Wait(10),
            Send("5\r\nhello\r\n"),
            Wait(10),
            Send("6\r\n world\r\n0\r\n\r\n"),
            Wait(10),
            Eof,
        ],
    )
    .backend(&upstream(9001), &[Serve::After(5, answer.into())])
    .run();
    // Up: re-chunked as it came, piece by piece.
    assert_eq!(
        w.requests,
        [
            "POST /up HTTP/1.1\r\nhost: 127.0.0.1:9001\r\ncontent-type: text/plain\r\nx-forwarded-for: 192.0.2.9\r\nx-forwarded-host: gw\r\nuser-agent: Sluice/0.1.0\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        ]
    );
    // Down: status and end-to-end headers as the backend sent them, the body streamed.
    assert_eq!(
        w.to_client,
        "HTTP/1.1 201 Created\r\ncontent-type: text/plain\r\nx-upstream: yes\r\nx-krakend-completed: false\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    );
    assert!(
        w.trace().contains("  25ms log: 192.0.2.9 \"POST /raw\" 201 5 25.0ms\n  25ms backend 0: pooled"),
        "{}",
        w.trace()
    );
}

#[test]
fn a_malformed_streamed_body_is_400_and_the_backend_connection_is_closed() {
    let gw = no_op();
    let lb = Balancer::new(gw.backend_count);
    for (body, reason) in [
        ("5\r\nhello\r\n0x1\r\nX\r\n0\r\n\r\n", "invalid chunk size"),
        ("5\r\nhelloXX0\r\n\r\n", "chunk data must end with CRLF"),
        ("ffffffffffffffffff1\r\nX\r\n0\r\n\r\n", "chunk size overflows"),
    ] {
        let w = World::new(&gw, &lb, &[Send(UPLOAD_HEAD), Wait(10), Send(body), Wait(10), Eof])
            .backend(&upstream(9001), &[json("{}")])
            .run();
        assert_eq!(w.to_client, error(400, "Bad Request", reason), "{body:?}");
        assert!(w.requests.is_empty(), "{body:?}");
        assert!(w.pool.is_empty(), "{body:?}");
        assert_eq!(
            w.trace(),
            [
                "   0ms backend 0: new connection to http://127.0.0.1:9001".to_string(),
                "  10ms backend 0: closed".into(),
                format!("  10ms log: 192.0.2.9 \"POST /raw\" 400 {} 10.0ms", reason.len()),
                "  10ms client: write side shut".into(),
                "  20ms client: closed".into(),
            ]
            .join("\n"),
            "{body:?}"
        );
    }
}

/// A backend answer whose head breaks the grammar (here a folded field, which a
/// proxy must not pass on) is a 502 to the client, and that backend connection is
/// closed, not pooled.
#[test]
fn a_backend_head_that_breaks_the_grammar_is_502_and_its_connection_closed() {
    let gw = gateway(
        r#"{"endpoint": "/raw", "output_encoding": "no-op",
            "backend": [{"host": ["http://127.0.0.1:9001"], "url_pattern": "/d", "encoding": "no-op"}]}"#,
    );
    let lb = Balancer::new(gw.backend_count);
    let get = "GET /raw HTTP/1.1\r\nHost: gw\r\n\r\n";
    let folded = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\r\n b\r\n\r\nok".to_string();
    let w = World::new(&gw, &lb, &[Send(get)]).backend(&upstream(9001), &[Serve::After(0, folded)]).run();
    assert_eq!(
        w.to_client,
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\nx-krakend-completed: false\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    let trace = w.trace();
    assert!(trace.contains("invalid header name"), "{trace}");
    assert!(trace.contains("backend 0: closed") && !trace.contains("pooled"), "{trace}");
}

#[test]
fn a_no_op_backend_that_fails_is_502_and_one_too_slow_is_504() {
    let gw = gateway(
        r#"{"endpoint": "/raw", "output_encoding": "no-op", "timeout": "200ms",
            "backend": [{"host": ["http://127.0.0.1:9001"], "url_pattern": "/d", "encoding": "no-op"}]}"#,
    );
    let lb = Balancer::new(gw.backend_count);
    let get = "GET /raw HTTP/1.1\r\nHost: gw\r\n\r\n";
    let w = World::new(&gw, &lb, &[Send(get)]).backend(&upstream(9001), &[Serve::Refuse]).run();
    assert_eq!(
        w.to_client,
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\nx-krakend-completed: false\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    assert!(w.trace().contains("log: backend 0 of /raw: cannot connect to 127.0.0.1:9001: refused"), "{}", w.trace());
    let w = World::new(&gw, &lb, &[Send(get)]).backend(&upstream(9001), &[Serve::Hang]).run();
    assert_eq!(
        w.to_client,
        "HTTP/1.1 504 Gateway Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nx-krakend-completed: false\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    assert_eq!(w.ended(), Some(Duration::from_millis(200)));
}

#[test]
fn a_stop_closes_idle_connections_and_lets_a_request_in_flight_finish() {
    let gw = one_backend();
    let lb = Balancer::new(gw.backend_count);
    // Idle for longer than the grace: closed at the stop, nothing written.
    let w =
        World::new(&gw, &lb, &[Send(GET_A), Wait(1500), Stop]).backend(&upstream(9001), &[json(r#"{"id":1}"#)]).run();
    assert_eq!(w.to_client, ANSWER_A);
    assert_eq!((w.shut_at, w.closed_at.map(|t| t - w.t0)), (None, Some(Duration::from_millis(1500))));
    // Answered 50 ms before the stop: a client that loops sends its next request right
    // after, and it is answered with Connection: close instead of being lost to a close
    // racing it. Then the write side is shut and the connection closes at the client's EOF.
    let w = World::new(&gw, &lb, &[Send(GET_A), Wait(50), Stop, Wait(20), Send(GET_A), Wait(10), Eof])
        .backend(&upstream(9001), &[json(r#"{"id":1}"#), json(r#"{"id":1}"#)])
        .run();
    let closing = ANSWER_A.replace("content-length: 8\r\n", "content-length: 8\r\nconnection: close\r\n");
    assert_eq!(w.to_client, format!("{ANSWER_A}{closing}"));
    assert_eq!(
        w.trace[6..].join("\n"),
        [
            "  70ms log: 192.0.2.9 \"GET /a\" 200 8 0.0ms",
            // The connection kept for the next request goes to the pool at the end.
            "  70ms backend 0: pooled",
            "  70ms client: write side shut",
            "  80ms client: closed"
        ]
        .join("\n")
    );
    // The same client quiet after the stop: closed once the grace has run from its last answer.
    let w = World::new(&gw, &lb, &[Send(GET_A), Wait(50), Stop]).backend(&upstream(9001), &[json(r#"{"id":1}"#)]).run();
    assert_eq!(w.to_client, ANSWER_A);
    assert_eq!((w.shut_at, w.closed_at.map(|t| t - w.t0)), (None, Some(Duration::from_millis(1000))));
    // In flight: answered (with Connection: close), then closed.
    let w = World::new(&gw, &lb, &[Send(GET_A), Wait(10), Stop])
        .backend(&upstream(9001), &[Serve::After(100, answer_json(r#"{"id":1}"#))])
        .run();
    assert_eq!(w.to_client, ANSWER_A.replace("content-length: 8\r\n", "content-length: 8\r\nconnection: close\r\n"));
    assert_eq!(w.ended(), Some(Duration::from_millis(100)));
}

#[test]
fn a_last_answer_is_followed_by_a_lingering_close() {
    // 413 for a body the gateway will not read: the client goes on sending it. Its bytes
    // are read and dropped after the write side is shut (closing with them unread would
    // reset the connection and could destroy the 413 before the client reads it); the
    // connection closes at the client's EOF, or after LINGER at most.
    let gw = one_backend();
    let lb = Balancer::new(gw.backend_count);
    let post = "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 17000000\r\n\r\n";
    let chunk = "x".repeat(900);
    let w = World::new(&gw, &lb, &[Send(post), Wait(5), Send(&chunk), Wait(5), Send(&chunk), Wait(5), Eof]).run();
    assert_eq!(w.to_client, error(413, "Payload Too Large", "body too large"));
    assert_eq!(
        w.trace(),
        ["   0ms log: 192.0.2.9 \"POST /a\" 413 14 0.0ms", "   0ms client: write side shut", "  15ms client: closed"]
            .join("\n")
    );
    // A client that never closes: closed when the linger runs out.
    let w = World::new(&gw, &lb, &[Send(post), Wait(5), Send(&chunk)]).run();
    assert_eq!(w.to_client, error(413, "Payload Too Large", "body too large"));
    assert_eq!(
        w.trace(),
        ["   0ms log: 192.0.2.9 \"POST /a\" 413 14 0.0ms", "   0ms client: write side shut", "2000ms client: closed"]
            .join("\n")
    );
    assert_eq!(sluice_core::conn::LINGER, Duration::from_secs(2));
}

fn answer_json(body: &str) -> String {
    match json(body) {
        Serve::After(_, text) => text,
        _ => unreachable!(),
    }
}

#[test]
fn health_uses_the_wall_clock_given_at_accept() {
    let gw = one_backend();
    let lb = Balancer::new(gw.backend_count);
    let w = World::new(&gw, &lb, &[Wait(1500), Send("GET /__health HTTP/1.1\r\nHost: gw\r\n\r\n")]);
    let w = w.run();
    assert!(w.to_client.is_empty(), "the header timeout closed the silent connection first");
    let w = World::new(&gw, &lb, &[Wait(300), Send("GET /__health HTTP/1.1\r\nHost: gw\r\n\r\n"), Eof]).run();
    assert!(w.to_client.ends_with(r#"{"agents":{},"now":"2026-11-21T22:26:40Z","status":"ok"}"#), "{}", w.to_client);
}

fn no_op_get(timeout: &str) -> Gateway {
    gateway(&format!(
        r#"{{"endpoint": "/raw", "output_encoding": "no-op", "timeout": "{timeout}",
            "backend": [{{"host": ["http://127.0.0.1:9001"], "url_pattern": "/d", "encoding": "no-op"}}]}}"#
    ))
}

const GET_RAW: &str = "GET /raw HTTP/1.1\r\nHost: gw\r\n\r\n";

const CHUNKED_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";

#[test]
fn a_bad_no_op_body_before_any_byte_went_out_is_a_502() {
    // The head and a malformed body in one read: nothing reached the client yet, so the
    // head is taken back and the client gets the 502 a failure before the head gets.
    let gw = no_op_get("1s");
    let lb = Balancer::new(gw.backend_count);
    let w = World::new(&gw, &lb, &[Send(GET_RAW), Wait(10), Eof])
        .backend(&upstream(9001), &[Serve::After(0, format!("{CHUNKED_HEAD}zz\r\nhello\r\n0\r\n\r\n"))])
        .run();
    assert_eq!(
        w.to_client,
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\nx-krakend-completed: false\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    assert_eq!(
        w.trace(),
        [
            "   0ms backend 0: new connection to http://127.0.0.1:9001",
            "   0ms log: backend 0 of endpoint 0: 200",
            "   0ms backend 0: closed",
            "   0ms log: backend 0 of /raw: invalid response body: invalid chunk size",
            "   0ms log: 192.0.2.9 \"GET /raw\" 502 0 0.0ms",
            "   0ms client: write side shut",
            "  10ms client: closed",
        ]
        .join("\n")
    );
}

#[test]
fn a_no_op_body_that_breaks_after_bytes_went_out_is_cut_and_logged() {
    // 5 bytes went out, then garbage: the client's chunked body never ends (no last
    // chunk), the connection closes, and both the cut and the access line are logged.
    let gw = no_op_get("1s");
    let lb = Balancer::new(gw.backend_count);
    let w = World::new(&gw, &lb, &[Send(GET_RAW), Wait(100), Eof])
        .backend(
            &upstream(9001),
            &[Serve::Pieces(vec![(0, format!("{CHUNKED_HEAD}5\r\nhello\r\n")), (20, "zz\r\n".into())])],
        )
        .run();
    assert_eq!(
        w.to_client,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-krakend-completed: false\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
    );
    assert_eq!(
        w.trace()[w.trace().find("  20ms").unwrap()..],
        [
            "  20ms backend 0: closed",
            "  20ms log: backend 0 of /raw: response body cut after 5 bytes: invalid response body: invalid chunk size",
            "  20ms log: 192.0.2.9 \"GET /raw\" 200 5 20.0ms",
            "  20ms client: write side shut",
            " 100ms client: closed",
        ]
        .join("\n")
    );
}

#[test]
fn a_trickling_no_op_body_is_cut_at_the_endpoint_timeout() {
    // One byte every 50 ms, for ever: the endpoint timeout (300 ms) bounds the whole
    // exchange, body included, counted from the request's start (as KrakenD).
    let gw = no_op_get("300ms");
    let lb = Balancer::new(gw.backend_count);
    let mut pieces = vec![(0, CHUNKED_HEAD.to_string())];
    pieces.extend((1..100).map(|i| (i * 50, "1\r\nx\r\n".to_string())));
    let w = World::new(&gw, &lb, &[Send(GET_RAW), Wait(10_000), Eof])
        .backend(&upstream(9001), &[Serve::Pieces(pieces)])
        .run();
    assert!(w.to_client.starts_with("HTTP/1.1 200 OK\r\n"), "{}", w.to_client);
    // Pieces at 50..=300 ms (the one due at the deadline itself is read first).
    assert_eq!(w.to_client.matches("1\r\nx\r\n").count(), 6, "{}", w.to_client);
    assert!(!w.to_client.ends_with("0\r\n\r\n"), "cut, not ended");
    assert_eq!(
        w.trace()[w.trace().find(" 300ms").unwrap()..],
        [
            " 300ms backend 0: closed",
            " 300ms log: backend 0 of /raw: response body cut after 6 bytes: the endpoint timeout passed before the response body ended",
            " 300ms log: 192.0.2.9 \"GET /raw\" 200 6 300.0ms",
            " 300ms client: write side shut",
            "2300ms client: closed",
        ]
        .join("\n")
    );
}

#[test]
fn every_answer_is_logged_and_log_fields_are_escaped() {
    // (what the client sends, the access line). Refused heads are logged too, with
    // their request line when it has the shape of one; queries never; quotes, control
    // and non-ASCII bytes escaped so a line stays one line with one quoted field.
    let gw = one_backend();
    let lb = Balancer::new(gw.backend_count);
    let big = format!("GET /big?token=s HTTP/1.1\r\nHost: gw\r\nX-Big: {}\r\n\r\n", "x".repeat(70_000));
    let rows: [(&str, &str); 9] = [
        ("HELLO\r\n\r\n", r#""-" 400 20"#),
        ("GET /a HTTP/1.1\r\nHost: evil.example/secret?x\r\n\r\n", r#""GET /a" 400 19"#),
        (
            "GET http://evil.example/x?token=s HTTP/1.1\r\nHost: evil.example\r\n\r\n",
            r#""GET http://evil.example/x" 400 60"#,
        ),
        ("CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", r#""CONNECT evil.example:443" 400 60"#),
        (&big, r#""GET /big" 431 31"#),
        ("GET /a\"b HTTP/1.1\r\nHost: gw\r\n\r\n", r#""GET /a\"b" 404 18"#),
        ("GET /a\\b%22\x7f HTTP/1.1\r\nHost: gw\r\n\r\n", r#""GET /a\\b%22\x7F" 400 20"#),
        ("GET /\u{e9}t\u{e9} HTTP/1.1\r\nHost: gw\r\n\r\n", r#""GET /\xC3\xA9t\xC3\xA9" 404 18"#),
        // A head cut short: no request line to log (the read buffer is with the driver).
        ("GET /a HTTP/1.1\r\nHo", r#""-" 408 22 400.0ms"#),
    ];
    for (request, logged) in rows {
        let w = World::new(&gw, &lb, &[Send(request), Wait(1000), Eof]).backend(&upstream(9001), &[]).run();
        let line = w.trace.iter().find(|l| l.contains(" log: ")).unwrap_or_else(|| panic!("no line for {request:?}"));
        let fields = line.split(" log: 192.0.2.9 ").nth(1).unwrap();
        assert!(fields.starts_with(logged), "{request:?}: {fields}");
    }
}

#[test]
fn no_op_passes_end_to_end_headers_only() {
    // The backend's head goes to the client from its spans: names lowercased, values
    // as sent, order kept; framing, Host and hop-by-hop fields (the fixed list and what
    // Connection names) left out; the codec writes its own framing.
    let gw = no_op_get("1s");
    let lb = Balancer::new(gw.backend_count);
    let answer = "HTTP/1.1 418 I'm a teapot\r\nContent-Type: image/png\r\nContent-Length: 5\r\nConnection: X-Hop, close\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=b\r\nHost: x\r\nTransfer-Encoding-Not: kept\r\nX-Multi: 1\r\nx-multi: 2\r\n\r\nhello";
    let w = World::new(&gw, &lb, &[Send(GET_RAW), Wait(10), Eof])
        .backend(&upstream(9001), &[Serve::After(0, answer.into())])
        .run();
    assert_eq!(
        w.to_client,
        "HTTP/1.1 418 I'm a teapot\r\ncontent-type: image/png\r\nset-cookie: a=b\r\ntransfer-encoding-not: kept\r\nx-multi: 1\r\nx-multi: 2\r\nx-krakend-completed: false\r\ncontent-length: 5\r\n\r\nhello"
    );
}

#[test]
fn a_client_that_goes_mid_body_still_gets_its_access_line() {
    // A download the client walks away from: the write fails, everything closes, and
    // the access line says what was sent (it had none).
    let gw = no_op_get("1s");
    let lb = Balancer::new(gw.backend_count);
    let pieces = vec![(0, format!("{CHUNKED_HEAD}5\r\nhello\r\n")), (50, "5\r\nworld\r\n".into())];
    let w =
        World::new(&gw, &lb, &[Send(GET_RAW), Wait(20), Gone]).backend(&upstream(9001), &[Serve::Pieces(pieces)]).run();
    assert_eq!(
        w.trace()[w.trace().find("  50ms").unwrap()..],
        ["  50ms backend 0: closed", "  50ms log: 192.0.2.9 \"GET /raw\" 200 10 50.0ms", "  50ms client: closed"]
            .join("\n")
    );
}

// ----- the forward proxy -----

fn forward_gateway(extra: &str) -> Gateway {
    Gateway::load(&format!(
        r#"{{{CONFIG_HEAD}, "endpoints": [], "extra_config": {{"sluice/forward-proxy": {{
            "timeout": "500ms", "idle_timeout": "1s", "connect": {{"enabled": true, "allowed_ports": [443]}},
            "egress": {{"ports": [9001], "allow_cidrs": ["127.0.0.0/8"]}}{extra}}}}}}}"#
    ))
    .unwrap()
    .gateway
}

const FWD_GET: &str =
    "GET http://api.test:9001/x?q=1 HTTP/1.1\r\nHost: api.test:9001\r\nProxy-Connection: keep-alive\r\n\r\n";

#[test]
fn forward_resolves_picks_the_family_and_dials_the_vetted_address() {
    let gw = forward_gateway("");
    let lb = Balancer::new(0);
    let rt = Runtime::new(&gw);
    let w = World::forward(&gw, &lb, &rt, &[Send(FWD_GET), Wait(10), Send(FWD_GET), Wait(10), Eof])
        .resolves("api.test", Ok(&["::1", "127.0.0.1"]))
        .backend("127.0.0.1:9001", &[json("{}"), json("{}")])
        .run();
    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nvia: 1.1 sluice\r\ncontent-length: 2\r\n\r\n{}";
    assert_eq!(w.to_client, format!("{answer}{answer}"));
    let request = "GET /x?q=1 HTTP/1.1\r\nhost: api.test:9001\r\nvia: 1.1 sluice\r\n\r\n";
    assert_eq!(w.requests, [request, request]);
    assert_eq!(
        w.trace(),
        [
            "   0ms resolve api.test",
            "   0ms backend 0: new connection to forward 127.0.0.1:9001",
            "   0ms backend 0: pooled",
            "   0ms log: 192.0.2.9 \"GET http://api.test:9001/x\" 200 2 0.0ms",
            "  10ms resolve api.test",
            "  10ms backend 0: pooled connection to forward 127.0.0.1:9001",
            "  10ms backend 0: pooled",
            "  10ms log: 192.0.2.9 \"GET http://api.test:9001/x\" 200 2 0.0ms",
            "  20ms client: closed",
        ]
        .join("\n")
    );
}

#[test]
fn forward_dns_failures_denials_and_timeouts() {
    let gw = forward_gateway("");
    let lb = Balancer::new(0);
    let rt = Runtime::new(&gw);
    // The lookup fails: 503, Envoy's words; the reason in the log.
    let w =
        World::forward(&gw, &lb, &rt, &[Send(FWD_GET), Wait(10), Eof]).resolves("api.test", Err("no such name")).run();
    assert_eq!(
        w.to_client,
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 22\r\n\r\nDNS resolution failure"
    );
    // The shard's cache had no room for the name: 503, Envoy's words.
    let o = World::forward(&gw, &lb, &rt, &[Send(FWD_GET), Wait(10), Eof]).resolves("api.test", Err("overflow")).run();
    assert_eq!(
        o.to_client,
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 18\r\n\r\nDNS cache overflow"
    );
    assert!(
        o.trace().contains("log: forward to api.test:9001: cannot resolve api.test: DNS cache overflow"),
        "{}",
        o.trace()
    );
    assert!(
        w.trace().contains("log: forward to api.test:9001: cannot resolve api.test: no such name"),
        "{}",
        w.trace()
    );
    // Only IPv6 when V4_ONLY is configured: a failure too.
    let gw4 = forward_gateway(r#", "dns_cache": {"dns_lookup_family": "V4_ONLY"}"#);
    let rt4 = Runtime::new(&gw4);
    let w = World::forward(&gw4, &lb, &rt4, &[Send(FWD_GET), Wait(10), Eof]).resolves("api.test", Ok(&["::1"])).run();
    assert!(w.to_client.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{}", w.to_client);
    assert!(w.trace().contains("no address of the configured family"), "{}", w.trace());
    // Resolved into a denied range: 403, and no connection asked for.
    let w =
        World::forward(&gw, &lb, &rt, &[Send(FWD_GET), Wait(10), Eof]).resolves("api.test", Ok(&["10.0.0.7"])).run();
    assert_eq!(
        w.to_client,
        "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\nx-sluice-egress-denied: address 10.0.0.7 is private (RFC 1918, 10.0.0.0/8)\r\ncontent-length: 65\r\n\r\negress denied: address 10.0.0.7 is private (RFC 1918, 10.0.0.0/8)"
    );
    assert!(!w.trace().contains("backend 0"), "{}", w.trace());
    assert!(
        w.trace().contains("log: client 192.0.2.9 to api.test:9001 denied: address 10.0.0.7 is private"),
        "{}",
        w.trace()
    );
    // No answer from the resolver: 504 at `timeout` (500ms), and the connection closes.
    let w = World::forward(&gw, &lb, &rt, &[Send(FWD_GET), Wait(2000), Eof]).run();
    assert_eq!(
        w.to_client,
        "HTTP/1.1 504 Gateway Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 38\r\nconnection: close\r\n\r\nthe destination did not answer in time"
    );
    assert!(w.trace().starts_with("   0ms resolve api.test\n 500ms log: forward to api.test:9001"), "{}", w.trace());
    // A destination that hangs after the request: 504 at the same deadline.
    let w = World::forward(&gw, &lb, &rt, &[Send(FWD_GET), Wait(2000), Eof])
        .resolves("api.test", Ok(&["127.0.0.1"]))
        .backend("127.0.0.1:9001", &[Serve::Hang])
        .run();
    assert!(w.to_client.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"), "{}", w.to_client);
    assert!(w.trace().contains(" 500ms backend 0: closed"), "{}", w.trace());
}

#[test]
fn forward_tunnel_in_virtual_time() {
    let gw = forward_gateway("");
    let lb = Balancer::new(0);
    let rt = Runtime::new(&gw);
    let connect = "CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\nearly";
    let w = World::forward(&gw, &lb, &rt, &[Send(connect), Wait(300), Send("late"), Wait(100), Eof, Wait(5000)])
        .resolves("api.test", Ok(&["127.0.0.1"]))
        .run();
    assert_eq!(w.to_client, "HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(w.tunnelled, b"earlylate");
    // The client's FIN goes through as the destination's; the destination never
    // closes, so the tunnel closes `idle_timeout` (1s) after the last bytes (300ms).
    assert_eq!(
        w.trace(),
        [
            "   0ms resolve api.test",
            "   0ms tunnel: connection to 127.0.0.1:443",
            "   0ms log: tunnel to api.test:443 open",
            " 400ms tunnel: write side shut",
            "1300ms log: forward to api.test:443: idle timeout",
            "1300ms log: 192.0.2.9 \"CONNECT api.test:443\" 200 0 1300.0ms",
            "1300ms client: closed",
        ]
        .join("\n")
    );
    // CONNECT to a port not allowed: 403 and closed, nothing resolved or dialled.
    let w =
        World::forward(&gw, &lb, &rt, &[Send("CONNECT api.test:22 HTTP/1.1\r\nHost: x\r\n\r\n"), Wait(10), Eof]).run();
    assert!(
        w.to_client.contains("\r\nx-sluice-egress-denied: CONNECT to port 22 is not allowed\r\n"),
        "{}",
        w.to_client
    );
    assert!(w.to_client.contains("\r\nconnection: close\r\n"), "{}", w.to_client);
    assert!(!w.trace().contains("resolve") && !w.trace().contains("tunnel:"), "{}", w.trace());
}

#[test]
fn forward_tunnel_splices_where_the_driver_can() {
    let gw = forward_gateway("");
    let lb = Balancer::new(0);
    let rt = Runtime::new(&gw);
    let connect = "CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\nearly";
    let script = [Send(connect), Wait(300), Send("late"), Wait(100), Eof, Wait(5000)];
    let w = World::forward(&gw, &lb, &rt, &script).resolves("api.test", Ok(&["127.0.0.1"])).splicing().run();
    assert_eq!(w.to_client, "HTTP/1.1 200 OK\r\n\r\n");
    // The early bytes are written first, then the rest is spliced (neither direction
    // splices while that write is out); the half-close and the idle timeout as when
    // copying.
    assert_eq!(w.tunnelled, b"earlylate");
    assert_eq!(
        w.trace(),
        [
            "   0ms resolve api.test",
            "   0ms tunnel: connection to 127.0.0.1:443",
            "   0ms log: tunnel to api.test:443 open",
            "   0ms splice: client to destination",
            "   0ms splice: destination to client",
            " 300ms splice: client to destination",
            " 400ms tunnel: write side shut",
            "1300ms log: forward to api.test:443: idle timeout",
            "1300ms log: 192.0.2.9 \"CONNECT api.test:443\" 200 0 1300.0ms",
            "1300ms client: closed",
        ]
        .join("\n")
    );
    // `"splice": false`: reads and writes, whatever the driver can do.
    let copying = forward_gateway(r#", "connect": {"enabled": true, "allowed_ports": [443], "splice": false}"#);
    let rt = Runtime::new(&copying);
    let w = World::forward(&copying, &lb, &rt, &script).resolves("api.test", Ok(&["127.0.0.1"])).splicing().run();
    assert_eq!(w.tunnelled, b"earlylate");
    assert!(!w.trace().contains("splice"), "{}", w.trace());
}

#[test]
fn forward_splice_failures_end_the_tunnel_and_say_which_side() {
    let gw = forward_gateway("");
    let lb = Balancer::new(0);
    let rt = Runtime::new(&gw);
    let connect = "CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n";
    let cases = [
        (true, Spliced::ReadFailed(std::io::ErrorKind::ConnectionReset.into()), "client read failed: connection reset"),
        (true, Spliced::WriteFailed(std::io::ErrorKind::BrokenPipe.into()), "destination write failed: broken pipe"),
        (
            false,
            Spliced::ReadFailed(std::io::ErrorKind::ConnectionReset.into()),
            "destination read failed: connection reset",
        ),
        (false, Spliced::WriteFailed(std::io::ErrorKind::BrokenPipe.into()), "client write failed: broken pipe"),
    ];
    for (up, result, why) in cases {
        let mut w = World::forward(&gw, &lb, &rt, &[Send(connect)])
            .resolves("api.test", Ok(&["127.0.0.1"]))
            .splicing()
            .run_for(10);
        let at = w.now + Duration::from_millis(10);
        w.conn.handle(Input::Spliced { up, result }, at);
        let mut out = Vec::new();
        while let Some(o) = w.conn.poll() {
            out.push(match o {
                Output::Log(line) => line.to_string(),
                other => format!("{other:?}"),
            });
        }
        assert_eq!(
            out,
            [
                format!("forward to api.test:443: {why}"),
                "192.0.2.9 \"CONNECT api.test:443\" 200 0 10.0ms".into(),
                "Close".into()
            ]
        );
    }
    // A driver that cannot splice: the direction reads and writes instead, nothing lost.
    let mut w =
        World::forward(&gw, &lb, &rt, &[Send(connect)]).resolves("api.test", Ok(&["127.0.0.1"])).splicing().run_for(10);
    let at = w.now;
    w.conn.handle(Input::Spliced { up: false, result: Spliced::Unsupported }, at);
    assert!(matches!(w.conn.poll(), Some(Output::ReadTunnel(_))));
    assert!(w.conn.poll().is_none());
}

#[test]
fn forward_circuit_breakers_refuse_with_503_naming_the_breaker_and_close_again() {
    let gw = forward_gateway(r#", "circuit_breakers": {"max_requests": 1, "max_connections": 5}"#);
    let lb = Balancer::new(0);
    let rt = Runtime::new(&gw);
    let breakers = rt.breakers();
    // Another connection's request to the same destination is in flight.
    let held = breakers.admit("api.test:9001").unwrap();
    let w =
        World::forward(&gw, &lb, &rt, &[Send(FWD_GET), Wait(10), Eof]).resolves("api.test", Ok(&["127.0.0.1"])).run();
    assert_eq!(
        w.to_client,
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         x-sluice-circuit-breaker: max_requests\r\ncontent-length: 34\r\n\r\ncircuit breaker open: max_requests"
    );
    assert!(w.trace().contains("log: forward to api.test:9001: circuit breaker open: max_requests"), "{}", w.trace());
    assert!(!w.trace().contains("connection to"), "no connection asked for: {}", w.trace());
    // Another destination has its own counts.
    let other = breakers.admit("other.test:9001").unwrap();
    drop(other);
    // It is given back: the breaker closes, and the request's own hold is given back
    // when its response ends (the next one is admitted too).
    drop(held);
    let w = World::forward(&gw, &lb, &rt, &[Send(FWD_GET), Wait(10), Send(FWD_GET), Wait(10), Eof])
        .resolves("api.test", Ok(&["127.0.0.1"]))
        .backend("127.0.0.1:9001", &[json("{}"), json("{}")])
        .run();
    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nvia: 1.1 sluice\r\ncontent-length: 2\r\n\r\n{}";
    assert_eq!(w.to_client, format!("{answer}{answer}"));
    let g = breakers.gauges();
    let g = g.iter().find(|g| g.destination == "api.test:9001").unwrap();
    assert_eq!((g.requests, g.connections, g.pending, g.retries, g.rq_overflow), (0, 0, 0, 0, 1));
}

#[test]
fn forward_tunnels_hold_a_request_while_open() {
    let gw = forward_gateway(r#", "circuit_breakers": {"max_requests": 1}"#);
    let lb = Balancer::new(0);
    let rt = Runtime::new(&gw);
    let breakers = rt.breakers();
    let held = breakers.admit("127.0.0.1:443").unwrap();
    let w = World::forward(
        &gw,
        &lb,
        &rt,
        &[Send("CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n"), Wait(10), Eof],
    )
    .run();
    assert_eq!(
        w.to_client,
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         x-sluice-circuit-breaker: max_requests\r\ncontent-length: 34\r\nconnection: close\r\n\r\n\
         circuit breaker open: max_requests"
    );
    assert!(!w.trace().contains("tunnel: connection"), "{}", w.trace());
    drop(held);
    let w = World::forward(
        &gw,
        &lb,
        &rt,
        &[Send("CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n"), Wait(10), Eof],
    )
    .run();
    assert!(w.to_client.starts_with("HTTP/1.1 200 OK\r\n"), "{}", w.to_client);
    let g = breakers.gauges();
    assert_eq!(g[0].requests, 0, "given back when the tunnel ended");
}

fn srv_backend() -> Gateway {
    gateway(
        r#"{"endpoint": "/a", "backend": [{"host": ["_api._tcp.sluice.test"], "sd": "dns", "disable_host_sanitize": true, "url_pattern": "/users/1"}]}"#,
    )
}

#[test]
fn sd_dns_sends_each_call_to_a_target_of_the_srv_set_with_its_host() {
    let gw = srv_backend();
    let lb = Balancer::new(gw.backend_count);
    let w = World::new(&gw, &lb, &[Send(GET_A), Wait(10), Send(GET_A), Wait(10), Send(GET_A), Wait(10), Eof])
        .discovers(
            "_api._tcp.sluice.test",
            Ok(&[(0, 1, 9001, "api-1.test"), (0, 1, 9002, "api-2.test"), (1, 9, 9003, "standby.test")]),
        )
        // The targets' names resolve through the connection (core asks, the driver's
        // cache answers) when nothing is idle for them.
        .resolves("api-1.test", Ok(&["127.0.0.1"]))
        .resolves("api-2.test", Ok(&["127.0.0.2"]))
        .backend("api-1.test:9001", &[json(r#"{"id":1}"#), json(r#"{"id":1}"#)])
        .backend("api-2.test:9002", &[json(r#"{"id":1}"#)])
        .run();
    assert_eq!(w.to_client, [ANSWER_A; 3].concat());
    // The request names the target picked, not the SRV name; the priority 1 record is
    // never used while priority 0 has targets.
    let to = |host: &str| REQUEST_A.replace("127.0.0.1:9001", host);
    assert_eq!(w.requests, [to("api-1.test:9001"), to("api-2.test:9002"), to("api-1.test:9001")]);
    assert!(w.trace().contains("backend 0: SRV of _api._tcp.sluice.test\n"), "{}", w.trace());
    assert!(w.trace().contains("new connection to http://api-2.test:9002"), "{}", w.trace());
    // Each name was resolved once: for the first connection to it, not when reused.
    assert_eq!(w.trace().matches("resolve api-1.test").count(), 1, "{}", w.trace());
    assert_eq!(w.trace().matches("resolve api-2.test").count(), 1, "{}", w.trace());
    // Back to api-1: its pooled connection is reused (pooled under the target's key).
    assert!(w.trace().contains("pooled connection to http://api-1.test:9001"), "{}", w.trace());
}

#[test]
fn sd_dns_without_records_fails_the_call_and_logs_the_name_asked() {
    let gw = srv_backend();
    let lb = Balancer::new(gw.backend_count);
    let w = World::new(&gw, &lb, &[Send(GET_A), Wait(10), Eof])
        .discovers("_api._tcp.sluice.test", Err("no SRV records for _api._tcp.sluice.test"))
        .run();
    assert!(w.to_client.starts_with("HTTP/1.1 500 Internal Server Error\r\n"), "{}", w.to_client);
    assert!(w.requests.is_empty());
    assert!(w.trace().contains("log: backend 0 of /a: no SRV records for _api._tcp.sluice.test"), "{}", w.trace());
    assert!(!w.trace().contains("connection to"), "{}", w.trace());
}

#[test]
fn admin_pages_are_served_by_the_connection_and_close_it() {
    let gw = gateway("");
    let lb = Balancer::new(0);
    let rt = Runtime::new(&gw);
    const READY: &str = "GET /ready HTTP/1.1\r\nHost: x\r\n\r\n";
    // A page without counters: answered at once, nothing asked of the driver, the
    // connection closed after it (a second request in the same packet is never read).
    let twice = format!("{READY}{READY}");
    let w = World::admin(&gw, &lb, &rt, &[Send(&twice), Wait(10), Eof]).run();
    assert_eq!(
        w.to_client,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 5\r\nconnection: close\r\n\r\nLIVE\n"
    );
    assert_eq!(
        w.trace(),
        [
            "   0ms log: 192.0.2.9 \"GET /ready\" 200 5 0.0ms",
            "   0ms client: write side shut",
            "  10ms client: closed",
        ]
        .join("\n")
    );
    // /stats asks the driver for every shard's counters and shows them.
    let mut stats = Stats::default();
    stats.unrouted.count = 7;
    let w = World::admin(&gw, &lb, &rt, &[Send("GET /stats?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"), Wait(10), Eof])
        .counters(stats)
        .run();
    assert!(w.trace().starts_with("   0ms counters asked\n   0ms log: 192.0.2.9 \"GET /stats\" 200 "), "{}", w.trace());
    assert!(
        w.to_client.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n"),
        "{}",
        w.to_client
    );
    assert!(w.to_client.contains("\r\nconnection: close\r\n\r\n"), "{}", w.to_client);
    assert!(w.to_client.ends_with("gateway.unrouted.rq_total: 7\n"), "{}", w.to_client);
    // A driver that does not give them within 5 s: 503, and the connection closes.
    let get = Send("GET /stats/prometheus HTTP/1.1\r\nHost: x\r\n\r\n");
    let w = World::admin(&gw, &lb, &rt, &[get, Wait(6000), Eof]).run();
    assert_eq!(
        w.to_client,
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 33\r\n\
         connection: close\r\n\r\nthe counters did not come in time"
    );
    assert_eq!(
        w.trace(),
        [
            "   0ms counters asked",
            "5000ms log: 192.0.2.9 \"GET /stats/prometheus\" 503 33 5000.0ms",
            "5000ms client: write side shut",
            "6000ms client: closed",
        ]
        .join("\n")
    );
    // An unknown page, another method, a bad head, no Host, a head over 8 KiB.
    let w = World::admin(&gw, &lb, &rt, &[Send("DELETE /stats HTTP/1.1\r\nHost: x\r\n\r\n"), Wait(10), Eof]).run();
    assert_eq!(
        w.to_client,
        "HTTP/1.1 405 Method Not Allowed\r\ncontent-type: text/plain; charset=utf-8\r\nallow: GET\r\n\
         content-length: 9\r\nconnection: close\r\n\r\nonly GET\n"
    );
    let w = World::admin(&gw, &lb, &rt, &[Send("GET /quitquitquit HTTP/1.1\r\nHost: x\r\n\r\n"), Wait(10), Eof]).run();
    assert!(w.to_client.starts_with("HTTP/1.1 404 Not Found\r\n"), "{}", w.to_client);
    assert!(w.to_client.ends_with("the admin pages are /ready, /stats, /stats/prometheus, /config_dump\n"));
    let w = World::admin(&gw, &lb, &rt, &[Send("GET /stats HTTP/1.1\r\nHost\r\n\r\n"), Wait(10), Eof]).run();
    assert!(w.to_client.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{}", w.to_client);
    // The same HTTP/1.1 rules as every listener: no Host, no page.
    let w = World::admin(&gw, &lb, &rt, &[Send("GET /ready HTTP/1.1\r\n\r\n"), Wait(10), Eof]).run();
    assert!(w.to_client.ends_with("\r\n\r\nmissing Host header"), "{}", w.to_client);
    let big = format!("GET /stats HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
    let w = World::admin(&gw, &lb, &rt, &[Send(&big), Wait(10), Eof]).run();
    assert!(w.to_client.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{}", w.to_client);
    assert!(!w.trace().contains("counters asked"));
}

#[test]
fn credentials_in_a_refused_target_never_reach_the_log() {
    let gw = forward_gateway("");
    let lb = Balancer::new(0);
    let rt = Runtime::new(&gw);
    // Userinfo makes the target's host malformed: 400, and the line shows `***`.
    let get = Send("GET http://alice:s3cret@api.test/x?token=t HTTP/1.1\r\nHost: api.test\r\n\r\n");
    let w = World::forward(&gw, &lb, &rt, &[get, Wait(10), Eof]).run();
    assert!(w.to_client.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{}", w.to_client);
    // A CONNECT with userinfo fails at the codec: the line from the raw head.
    let connect = Send("CONNECT alice:s3cret@api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n");
    let c = World::forward(&gw, &lb, &rt, &[connect, Wait(10), Eof]).run();
    assert!(c.to_client.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{}", c.to_client);
    let lines: Vec<String> = [&w, &c].iter().map(|w| w.trace()).collect();
    assert!(lines[0].contains("log: 192.0.2.9 \"GET http://***@api.test/x\" 400 "), "{}", lines[0]);
    assert!(lines[1].contains("log: 192.0.2.9 \"CONNECT ***@api.test:443\" 400 "), "{}", lines[1]);
    assert!(!lines.concat().contains("s3cret") && !lines.concat().contains("alice"), "{lines:?}");
}

/// A wait for the client that fails (the driver's readiness wait gave an error): the
/// read that follows is made as usual and says what happened; a failed read closes the
/// connection cleanly, nothing written, nothing panics.
#[test]
fn a_failed_wait_for_the_client_is_followed_by_a_read_that_closes() {
    let gw = gateway("");
    let lb = Balancer::new(0);
    let t0 = Instant::now();
    let mut c = Connection::new(&gw, &lb, "192.0.2.9".parse().unwrap(), t0, UNIX_EPOCH);
    let reset = || std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    // Outputs until none is left, written ones answered at once, read buffers kept.
    fn drain(c: &mut Connection<'_>, at: Instant, read: &mut Option<Vec<u8>>) -> Vec<&'static str> {
        let mut seen = Vec::new();
        while let Some(o) = c.poll() {
            seen.push(match o {
                Output::ReadClient(buf) => {
                    *read = Some(buf);
                    "read"
                }
                Output::AwaitClient => "await",
                Output::WriteClient(bytes) => {
                    c.handle(Input::ClientWritten(bytes, Ok(())), at);
                    "write"
                }
                Output::Log(_) => "log",
                Output::Close => "close",
                other => panic!("unexpected {other:?}"),
            });
        }
        seen
    }
    let mut read = None;
    assert_eq!(drain(&mut c, t0, &mut read), ["read"]);
    let mut buf = read.take().unwrap();
    let request = b"GET /__health HTTP/1.1\r\nHost: gw\r\n\r\n";
    buf.extend_from_slice(request);
    c.handle(Input::ClientRead(buf, Ok(request.len())), t0);
    // Answered; after its first answer the connection waits without a buffer.
    assert_eq!(drain(&mut c, t0, &mut read), ["log", "write", "await"]);
    c.handle(Input::ClientReady(Err(reset())), t0);
    assert_eq!(drain(&mut c, t0, &mut read), ["read"]);
    c.handle(Input::ClientRead(read.take().unwrap(), Err(reset())), t0);
    assert_eq!(drain(&mut c, t0, &mut read), ["close"]);
    assert!(c.poll().is_none());
}

/// Counters that come after the 503 (a shard that answered late) leave the connection
/// as it was: it lingers, then closes when the client does.
#[test]
fn counters_after_the_503_change_nothing() {
    let gw = gateway("");
    let lb = Balancer::new(0);
    let rt = Runtime::new(&gw);
    let t0 = Instant::now();
    let mut c = Connection::accept(Listener::Admin, &gw, &lb, &rt, "192.0.2.9".parse().unwrap(), t0, UNIX_EPOCH);
    // Drains the outputs, finishing writes and shutdowns at once; says what it saw.
    fn drain(c: &mut Connection<'_>, at: Instant, read: &mut Option<Vec<u8>>) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(o) = c.poll() {
            match o {
                Output::ReadClient(buf) => *read = Some(buf),
                Output::WriteClient(bytes) => {
                    seen.push(String::from_utf8_lossy(&bytes).lines().next().unwrap_or_default().to_string());
                    c.handle(Input::ClientWritten(bytes, Ok(())), at);
                }
                Output::ShutdownClient => {
                    seen.push("shutdown".into());
                    c.handle(Input::ClientShutdown(Ok(())), at);
                }
                Output::Stats => seen.push("stats".into()),
                Output::Log(_) => {}
                Output::Close => seen.push("close".into()),
                other => panic!("unexpected {other:?}"),
            }
        }
        seen
    }
    let mut read = None;
    assert!(drain(&mut c, t0, &mut read).is_empty());
    let mut buf = read.take().unwrap();
    let request = b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n";
    buf.extend_from_slice(request);
    c.handle(Input::ClientRead(buf, Ok(request.len())), t0);
    assert_eq!(drain(&mut c, t0, &mut read), ["stats"]);
    let t5 = t0 + Duration::from_secs(5);
    c.handle_timeout(t5);
    assert_eq!(drain(&mut c, t5, &mut read), ["HTTP/1.1 503 Service Unavailable", "shutdown"]);
    c.handle(Input::Stats(Box::default()), t5);
    assert_eq!(drain(&mut c, t5, &mut read), Vec::<String>::new());
    let buf = read.take().expect("the lingering read is still out");
    c.handle(Input::ClientRead(buf, Ok(0)), t5);
    assert_eq!(drain(&mut c, t5, &mut read), ["close"]);
}

/// Heap allocations core makes per request once a keep-alive connection is warm:
/// 22 requests against 12 (each connection grows its vectors over its first few), the
/// difference over ten. Issue 30's goal is none: a no-op request meets it; for the
/// rest this holds the line (a change that allocates more per request fails here and
/// says how many), and the figure goes to docs/performance.md.
fn allocations_per_request(gw: &Gateway, request: &'static str, answers: &[&str], gap_ms: u64) -> f64 {
    let lb = Balancer::new(gw.backend_count);
    let run = |n: usize| {
        let mut script = Vec::new();
        for _ in 0..n {
            script.extend([Send(request), Wait(gap_ms)]);
        }
        script.push(Eof);
        let mut serves = Vec::new();
        for _ in 0..n {
            serves.extend(answers.iter().map(|a| Serve::After(0, a.to_string())));
        }
        let before = counting::count();
        let w = World::new(gw, &lb, &script).backend(&upstream(9001), &serves).run();
        let made = counting::count() - before;
        assert_eq!(w.requests.len(), n * answers.len());
        made
    };
    let (twelve, twenty_two) = (run(12), run(22));
    (twenty_two - twelve) as f64 / 10.0
}

#[test]
fn allocations_per_request_in_steady_state() {
    let backend = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n";
    let body = "x".repeat(100);
    let noop_answer: &'static str = Box::leak(format!("{backend}{body}").into_boxed_str());
    let noop = gateway(
        r#"{"endpoint": "/noop", "output_encoding": "no-op",
            "backend": [{"host": ["http://127.0.0.1:9001"], "url_pattern": "/100b", "encoding": "no-op"}]}"#,
    );
    let get_noop = "GET /noop HTTP/1.1\r\nHost: gw\r\n\r\n";
    let per_noop = allocations_per_request(&noop, get_noop, &[noop_answer], 10);
    // A client that is not busy (300 ms between requests): its connection waits for
    // each request holding nothing, and takes its buffers again when it comes.
    let per_idle_noop = allocations_per_request(&noop, get_noop, &[noop_answer], 300);
    let agg = gateway(
        r#"{"endpoint": "/agg", "backend": [
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/a", "allow": ["user"]},
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/b", "group": "orders"}]}"#,
    );
    let a =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 24\r\n\r\n{\"user\":{\"id\":1},\"x\":2} ";
    let per_agg = allocations_per_request(&agg, "GET /agg HTTP/1.1\r\nHost: gw\r\n\r\n", &[a, a], 10);
    println!(
        "heap allocations per request in steady state: no-op {per_noop}, aggregation {per_agg}; \
         no-op from a client 300 ms apart {per_idle_noop}"
    );
    // Measured: 12 and 44 when this test was written; 9 and 39 since a free backend
    // slot keeps its read buffer, the request head's box is reused and the response
    // head comes unboxed; 27 for aggregation since a backend answer's fields stay as
    // parsed (no header map); 4 and 22 since the heads' buffers are reused, the path
    // is shared with the access line, the rendered URL moves into its call and the
    // rendered URLs' list holds two inline; 0 and 17 since the connection keeps its
    // last exchange (its box, its call list, its URLs' strings) for the next request,
    // the path is read in the head's bytes, and the access line's path is written in
    // the string the last line had. A connection that waits for its next request
    // gives all it kept back and takes it again (21: the access line's path string
    // and its shared count are two, and each head's field positions one since they
    // are a vector beside its bytes); 16 since the write vector is given room for a
    // usual answer at once when the connection wakes (grown from empty it took six);
    // still 16 since the access line is written in the last line's box (after a
    // wait: that box and the path string, where the path's string and its shared
    // count were).
    assert_eq!(per_noop, 0.0, "a no-op request now makes {per_noop} allocations (was none)");
    assert!(per_agg <= 4.0, "an aggregation request now makes {per_agg} allocations (was 4)");
    assert!(per_idle_noop <= 16.0, "a no-op request after a wait now makes {per_idle_noop} allocations (was 16)");
}

/// Heap bytes core holds for an idle keep-alive connection after one no-op request
/// (none: while it waits for its next request it holds no read buffer, backend slot,
/// write vector or output queue), counted by the allocator above from its accept; `size_of::<Connection>()` comes on
/// top, inside the driver's task. Issue 30's goal for the whole connection is 2 KiB.
#[test]
fn heap_held_by_an_idle_keep_alive_connection() {
    let backend = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n";
    let answer = format!("{backend}{}", "x".repeat(100));
    let noop = gateway(
        r#"{"endpoint": "/noop", "output_encoding": "no-op",
            "backend": [{"host": ["http://127.0.0.1:9001"], "url_pattern": "/100b", "encoding": "no-op"}]}"#,
    );
    let lb = Balancer::new(noop.backend_count);
    let before = counting::live();
    // Stopped 1 s in: answered, waiting for the next request (the idle timeout, 2 s
    // here, has not closed it).
    let w = World::new(&noop, &lb, &[Send("GET /noop HTTP/1.1\r\nHost: gw\r\n\r\n"), Wait(10)])
        .backend(&upstream(9001), &[Serve::After(0, answer)])
        .run_for(1000);
    let held = counting::live() - before;
    assert_eq!((w.requests.len(), w.awaits, w.closed_at), (1, 1, None));
    let inline = std::mem::size_of::<Connection<'_>>();
    println!("heap held by an idle keep-alive connection (core): {held} bytes; Connection itself {inline} bytes");
    // Measured: 5,149 bytes while the backend slots' vector grew by four slots of ~900
    // bytes at once; 2,437 since it grows by one (both leaving out the first read
    // buffer, allocated at accept where nothing was counted, and a closed connection's
    // output queue); none since a connection that waits for its next request gives back
    // its read buffer, its backend slots, its write vectors and its output queue.
    assert_eq!(held, 0, "an idle connection now holds {held} bytes of heap in core (was none)");
    drop(w);
}

/// What the output queue moves at every output: 80 bytes since the access line went
/// into a box the connection keeps (`request::LineRoom`); it was 176 with the line in
/// it, and each move a memcpy call.
#[test]
fn an_output_stays_small() {
    let size = std::mem::size_of::<sluice_core::io::Output<'_>>();
    assert!(size <= 80, "an Output is now {size} bytes (was 80)");
    assert_eq!(std::mem::size_of::<sluice_core::request::AccessLine>(), std::mem::size_of::<usize>());
}

/// What an idle connection costs beside its heap (none, above): the `Connection`
/// inside the driver's task. 616 bytes since a request's access line is written in
/// its box from the start (`request::AccessLog`: two pointers, where its 128 bytes
/// sat in the connection and moved with the request) and the connection reads its
/// limits in its codec's; it was 760. Tokio's task is then 1,024 bytes (it aligns
/// a task to 128) with room for 32 bytes more: 40 more would make it 1,152 again.
#[test]
fn a_connection_stays_small() {
    let size = std::mem::size_of::<Connection<'_>>();
    println!("Connection: {size} bytes");
    assert!(size <= 616, "a Connection is now {size} bytes (was 616)");
    assert_eq!(std::mem::size_of::<sluice_core::request::AccessLog>(), 2 * std::mem::size_of::<usize>());
}

/// A busy aggregating connection keeps its last answers' and reply's buffers for the
/// next request only while it keeps its backend connections: when its client has been
/// quiet 2 s (`KEEP_FOR`) they go with them, though the connection still reads.
#[test]
fn a_quiet_busy_connection_lets_its_answer_and_reply_buffers_go() {
    let config = r#"{"version": 3, "timeout": "1s", "idle_timeout": "10s", "endpoints": [{"endpoint": "/two",
        "backend": [{"host": ["http://127.0.0.1:9001"], "url_pattern": "/a", "group": "a"},
                    {"host": ["http://127.0.0.1:9001"], "url_pattern": "/b", "group": "b"}]}]}"#;
    let gw = Gateway::load(config).unwrap().gateway;
    let lb = Balancer::new(gw.backend_count);
    let get = Send("GET /two HTTP/1.1\r\nHost: gw\r\n\r\n");
    let body = format!("{{\"s\":\"{}\"}}", "x".repeat(3000));
    let held_after = |ms: u64| {
        let answers: Vec<Serve> = (0..6).map(|_| json(&body)).collect();
        let before = counting::live();
        let w = World::new(&gw, &lb, &[get, Wait(10), get, Wait(10), get, Wait(10)])
            .backend(&upstream(9001), &answers)
            .run_for(ms);
        let held = counting::live() - before;
        assert_eq!((w.requests.len(), w.awaits, w.closed_at), (6, 1, None), "busy from the second request on");
        drop(w);
        held
    };
    let (soon, later) = (held_after(1000), held_after(3000));
    println!("heap held by a busy aggregating connection gone quiet: {soon} bytes at 1 s, {later} at 3 s");
    // Two answer bodies of 3,008 bytes and the 6,031-byte reply's buffer at least.
    assert!(soon - later >= 2 * 3008 + 6031, "held {soon} bytes at 1 s and {later} at 3 s");
}

/// A busy client's next call goes out on the connection its last call kept: no pool
/// lookup, no connect (the third request, which came within the busy gap). The
/// connection goes to the pool when the client connection waits idle or closes.
#[test]
fn a_busy_client_s_next_call_rides_the_connection_its_last_call_kept() {
    let gw = one_backend();
    let lb = Balancer::new(gw.backend_count);
    let script = [Send(GET_A), Wait(10), Send(GET_A), Wait(10), Send(GET_A), Wait(10), Eof];
    let w = World::new(&gw, &lb, &script)
        .backend(&upstream(9001), &std::array::from_fn::<_, 3, _>(|_| json(r#"{"id":1}"#)))
        .run();
    assert_eq!(w.to_client, ANSWER_A.repeat(3));
    assert_eq!(w.requests, [REQUEST_A; 3]);
    assert_eq!(
        w.trace(),
        [
            "   0ms backend 0: new connection to http://127.0.0.1:9001",
            "   0ms log: backend 0 of endpoint 0: 200",
            "   0ms log: 192.0.2.9 \"GET /a\" 200 8 0.0ms",
            // The first answer: the client is not busy yet, so its connection waits
            // holding nothing, and what it kept goes to the pool.
            "   0ms backend 0: pooled",
            "  10ms backend 0: pooled connection to http://127.0.0.1:9001",
            "  10ms log: backend 0 of endpoint 0: 200",
            "  10ms log: 192.0.2.9 \"GET /a\" 200 8 0.0ms",
            "  20ms log: backend 0 of endpoint 0: 200",
            "  20ms log: 192.0.2.9 \"GET /a\" 200 8 0.0ms",
            "  30ms backend 0: pooled",
            "  30ms client: closed",
        ]
        .join("\n")
    );
}

/// A kept connection goes to the pool `KEEP_FOR` (2 s) after its call ended when the
/// client has not come back (the connection wakes for it), and the client's next call
/// takes it from there.
#[test]
fn a_kept_connection_goes_to_the_pool_when_the_client_stays_quiet() {
    let config = r#"{"version": 3, "timeout": "1s", "idle_timeout": "10s", "endpoints": [{"endpoint": "/a",
        "backend": [{"host": ["http://127.0.0.1:9001"], "url_pattern": "/users/1"}]}]}"#;
    let gw = Gateway::load(config).unwrap().gateway;
    let lb = Balancer::new(gw.backend_count);
    let script = [Send(GET_A), Wait(10), Send(GET_A), Wait(3000), Send(GET_A), Wait(10), Eof];
    let w = World::new(&gw, &lb, &script)
        .backend(&upstream(9001), &std::array::from_fn::<_, 3, _>(|_| json(r#"{"id":1}"#)))
        .run();
    assert_eq!(w.to_client, ANSWER_A.repeat(3));
    assert_eq!(
        w.trace(),
        [
            "   0ms backend 0: new connection to http://127.0.0.1:9001",
            "   0ms log: backend 0 of endpoint 0: 200",
            "   0ms log: 192.0.2.9 \"GET /a\" 200 8 0.0ms",
            "   0ms backend 0: pooled",
            "  10ms backend 0: pooled connection to http://127.0.0.1:9001",
            "  10ms log: backend 0 of endpoint 0: 200",
            "  10ms log: 192.0.2.9 \"GET /a\" 200 8 0.0ms",
            "2010ms backend 0: pooled",
            "3010ms backend 0: pooled connection to http://127.0.0.1:9001",
            "3010ms log: backend 0 of endpoint 0: 200",
            "3010ms log: 192.0.2.9 \"GET /a\" 200 8 0.0ms",
            "3010ms backend 0: pooled",
            "3020ms client: closed",
        ]
        .join("\n")
    );
}

/// A call that takes the connection the last call kept takes its deadline too: the
/// connection's timer is not set for a kept connection that is no longer kept (here a
/// slow second answer, 2.5 s, past the first call's 2 s keep).
#[test]
fn a_kept_connection_taken_by_the_next_call_sets_no_timer() {
    let config = r#"{"version": 3, "timeout": "4s", "idle_timeout": "10s", "endpoints": [{"endpoint": "/a",
        "backend": [{"host": ["http://127.0.0.1:9001"], "url_pattern": "/users/1"}]}]}"#;
    let gw = Gateway::load(config).unwrap().gateway;
    let lb = Balancer::new(gw.backend_count);
    let Serve::After(_, raw) = json(r#"{"id":1}"#) else { unreachable!() };
    let script = [Send(GET_A), Wait(10), Send(GET_A), Wait(10), Send(GET_A), Wait(5000), Eof];
    let w = World::new(&gw, &lb, &script)
        .backend(&upstream(9001), &[json(r#"{"id":1}"#), json(r#"{"id":1}"#), Serve::After(2500, raw)])
        .run();
    assert_eq!(w.to_client, ANSWER_A.repeat(3));
    // The second call's connection, kept at 10 ms, is the third call's from 20 ms: no
    // wake at 2,010 ms. The one wake: that connection kept again at the third answer
    // (2,520 ms) goes to the pool 2 s later.
    assert_eq!(w.timeouts, [4520]);
    assert!(w.trace().contains("4520ms backend 0: pooled"), "{}", w.trace());
}

/// A busy client's call to another backend takes the slot of the connection the last
/// call kept: that one goes to the pool first, and the new call asks for its own.
#[test]
fn a_kept_connection_goes_to_the_pool_when_its_slot_is_needed_for_another_key() {
    let gw = gateway(
        r#"{"endpoint": "/a", "backend": [{"host": ["http://127.0.0.1:9001"], "url_pattern": "/users/1"}]},
           {"endpoint": "/b", "backend": [{"host": ["http://127.0.0.1:9002"], "url_pattern": "/users/1"}]}"#,
    );
    let lb = Balancer::new(gw.backend_count);
    let get_b = "GET /b HTTP/1.1\r\nHost: gw\r\n\r\n";
    let script = [Send(GET_A), Wait(10), Send(GET_A), Wait(10), Send(get_b), Wait(10), Eof];
    let w = World::new(&gw, &lb, &script)
        .backend(&upstream(9001), &[json(r#"{"id":1}"#), json(r#"{"id":1}"#)])
        .backend(&upstream(9002), &[json(r#"{"id":1}"#)])
        .run();
    assert_eq!(w.to_client, ANSWER_A.repeat(3));
    assert_eq!(
        w.trace(),
        [
            "   0ms backend 0: new connection to http://127.0.0.1:9001",
            "   0ms log: backend 0 of endpoint 0: 200",
            "   0ms log: 192.0.2.9 \"GET /a\" 200 8 0.0ms",
            "   0ms backend 0: pooled",
            "  10ms backend 0: pooled connection to http://127.0.0.1:9001",
            "  10ms log: backend 0 of endpoint 0: 200",
            "  10ms log: 192.0.2.9 \"GET /a\" 200 8 0.0ms",
            "  20ms backend 0: pooled",
            "  20ms backend 0: new connection to http://127.0.0.1:9002",
            "  20ms log: backend 0 of endpoint 1: 200",
            "  20ms log: 192.0.2.9 \"GET /b\" 200 8 0.0ms",
            "  30ms backend 0: pooled",
            "  30ms client: closed",
        ]
        .join("\n")
    );
}

/// A gateway that pools nothing (`max_idle_connections_per_host` 0) keeps nothing
/// either: a busy client's every call asks the driver for a connection.
#[test]
fn nothing_is_kept_when_the_pool_keeps_nothing() {
    let config = r#"{"version": 3, "timeout": "1s", "max_idle_connections_per_host": 0, "endpoints": [{"endpoint": "/a",
        "backend": [{"host": ["http://127.0.0.1:9001"], "url_pattern": "/users/1"}]}]}"#;
    let gw = Gateway::load(config).unwrap().gateway;
    let lb = Balancer::new(gw.backend_count);
    let script = [Send(GET_A), Wait(10), Send(GET_A), Wait(10), Send(GET_A), Wait(10), Eof];
    let w = World::new(&gw, &lb, &script)
        .backend(&upstream(9001), &std::array::from_fn::<_, 3, _>(|_| json(r#"{"id":1}"#)))
        .run();
    assert_eq!(w.to_client, ANSWER_A.repeat(3));
    let connects = w.trace.iter().filter(|l| l.contains("connection to http://127.0.0.1:9001")).count();
    let pooled = w.trace.iter().filter(|l| l.ends_with("backend 0: pooled")).count();
    assert_eq!((connects, pooled), (3, 3), "{}", w.trace());
}

/// A busy keep-alive connection serves each request in the exchange its last request
/// left (renewed, with the room of its vectors): nothing of one request reaches the
/// next, whatever the endpoints' backend counts, and a request refused before any call
/// leaves no answer behind.
#[test]
fn each_request_on_a_connection_starts_clean() {
    let gw = gateway(
        r#"{"endpoint": "/two", "backend": [
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/a", "group": "a"},
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/b", "group": "b"}]},
           {"endpoint": "/three", "backend": [
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/a", "group": "a"},
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/b", "group": "b"},
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/c", "group": "c"}]},
           {"endpoint": "/r/{id}", "backend": [
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/items/{id}"}]},
           {"endpoint": "/one", "output_encoding": "no-op", "input_query_strings": ["x"], "backend": [
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/c", "encoding": "no-op"}]}"#,
    );
    let lb = Balancer::new(gw.backend_count);
    let script = [
        Send("GET /two HTTP/1.1\r\nHost: gw\r\n\r\n"),
        Wait(10),
        Send("GET /r/%2e%2e HTTP/1.1\r\nHost: gw\r\n\r\n"),
        Wait(10),
        Send("GET /three HTTP/1.1\r\nHost: gw\r\n\r\n"),
        Wait(10),
        Send("GET /one?x=1&y=2 HTTP/1.1\r\nHost: gw\r\n\r\n"),
        Wait(10),
        Send("GET /two?x=3 HTTP/1.1\r\nHost: gw\r\n\r\n"),
        Wait(10),
        Eof,
    ];
    let answers: Vec<Serve> = (1..=8).map(|n| json(&format!("{{\"n\":{n}}}"))).collect();
    let w = World::new(&gw, &lb, &script).backend(&upstream(9001), &answers).run();
    let lines: Vec<&str> = w.requests.iter().map(|r| r.lines().next().unwrap()).collect();
    assert_eq!(
        lines,
        [
            "GET /a HTTP/1.1",
            "GET /b HTTP/1.1",
            "GET /a HTTP/1.1",
            "GET /b HTTP/1.1",
            "GET /c HTTP/1.1",
            "GET /c?x=1 HTTP/1.1",
            "GET /a HTTP/1.1",
            "GET /b HTTP/1.1",
        ]
    );
    let json_head = |len: usize| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\nx-krakend-completed: true\r\ncontent-length: {len}\r\n\r\n"
        )
    };
    let two = r#"{"a":{"n":1},"b":{"n":2}}"#;
    let three = r#"{"a":{"n":3},"b":{"n":4},"c":{"n":5}}"#;
    let two_again = r#"{"a":{"n":7},"b":{"n":8}}"#;
    let expected = [
        format!("{}{two}", json_head(two.len())),
        {
            let body = "400 bad request: the value of {id} is a dot segment";
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        },
        format!("{}{three}", json_head(three.len())),
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-krakend-completed: false\r\ncontent-length: 7\r\n\r\n{\"n\":6}"
            .to_string(),
        format!("{}{two_again}", json_head(two_again.len())),
    ]
    .concat();
    assert_eq!(w.to_client, expected);
    let logged: Vec<&str> =
        w.trace.iter().filter(|l| l.contains(" log: 192.0.2.9 ")).map(|l| l.split(" log: ").nth(1).unwrap()).collect();
    let paths: Vec<&str> = logged.iter().map(|l| l.split('"').nth(1).unwrap()).collect();
    assert_eq!(paths, ["GET /two", "GET /r/%2e%2e", "GET /three", "GET /one", "GET /two"]);
}

/// A busy connection's aggregated answers are read into the buffers earlier answers
/// left (`Calls::give_answer_room`), and its replies written into the last reply's
/// (`Exchange::give_reply_room`): each is read whole and as it came, a short one
/// after a long one, a head of two fields after one of five, a chunked body, and one
/// over the kept size (not kept for the next).
#[test]
fn answers_read_into_an_earlier_answer_s_buffers_are_their_own() {
    let gw = gateway(
        r#"{"endpoint": "/two", "backend": [
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/a", "group": "a"},
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/b", "group": "b"}]}"#,
    );
    let lb = Balancer::new(gw.backend_count);
    let get = Send("GET /two HTTP/1.1\r\nHost: gw\r\n\r\n");
    let script = [get, Wait(10), get, Wait(10), get, Wait(10), get, Wait(10), Eof];
    let long = format!("{{\"s\":\"{}\"}}", "x".repeat(3000));
    let huge = format!("{{\"s\":\"{}\"}}", "y".repeat(20_000));
    let fields = "X-One: 1\r\nX-Two: 2\r\nX-Three: 3\r\n";
    let answers = [
        Serve::After(
            0,
            format!(
                "HTTP/1.1 200 OK\r\n{fields}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{long}",
                long.len()
            ),
        ),
        json(r#"{"n":2}"#),
        json(r#"{"n":3}"#),
        json(&huge),
        Serve::After(
            0,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"n\r\n4\r\n\":5}\r\n0\r\n\r\n".to_string(),
        ),
        json(r#"{"n":6}"#),
        json(r#"{"n":7}"#),
        json(r#"{"n":8}"#),
    ];
    let w = World::new(&gw, &lb, &script).backend(&upstream(9001), &answers).run();
    let bodies = [
        format!(r#"{{"a":{long},"b":{{"n":2}}}}"#),
        format!(r#"{{"a":{{"n":3}},"b":{huge}}}"#),
        r#"{"a":{"n":5},"b":{"n":6}}"#.to_string(),
        r#"{"a":{"n":7},"b":{"n":8}}"#.to_string(),
    ];
    let expected: String = bodies
        .iter()
        .map(|body| {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\nx-krakend-completed: true\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        })
        .collect();
    assert_eq!(w.to_client, expected);
    assert_eq!(w.requests.len(), 8);
}

/// The access line of a request waiting in each state is the request's own when its
/// wait times out (the connection keeps the line aside while the state moves): the
/// aggregated backend (500 at the endpoint's timeout: no part), the body (408 at
/// the body timeout), the no-op backend's head (504).
#[test]
fn a_request_that_times_out_in_any_state_logs_its_own_line() {
    let gw = gateway(
        r#"{"endpoint": "/agg", "method": "POST", "backend": [
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/a", "group": "a"}]},
           {"endpoint": "/noop", "output_encoding": "no-op", "backend": [
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/n", "encoding": "no-op"}]}"#,
    );
    let lb = Balancer::new(gw.backend_count);
    let cases: [(&str, &[&str]); 3] = [
        (
            "POST /agg HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}",
            &[
                "   0ms backend 0: new connection to http://127.0.0.1:9001",
                "1000ms backend 0: closed",
                "1000ms log: 192.0.2.9 \"POST /agg\" 500 0 1000.0ms",
                "1000ms client: closed",
            ],
        ),
        (
            "POST /agg HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\n{}",
            &["30000ms log: 192.0.2.9 \"POST /agg\" 408 20 30000.0ms", "30000ms client: closed"],
        ),
        (
            "GET /noop HTTP/1.1\r\nHost: gw\r\n\r\n",
            &[
                "   0ms backend 0: new connection to http://127.0.0.1:9001",
                "1000ms backend 0: closed",
                "1000ms log: 192.0.2.9 \"GET /noop\" 504 0 1000.0ms",
                "1000ms client: closed",
            ],
        ),
    ];
    for (request, trace) in cases {
        let w = World::new(&gw, &lb, &[Send(request), Wait(20), Gone]).backend(&upstream(9001), &[Serve::Hang]).run();
        assert_eq!(w.trace(), trace.join("\n"), "{request:?}");
    }
}

/// Each request on a busy connection keeps its own body, in the exchange the last
/// request left: a POST to an aggregating endpoint sends its body to the backend, one
/// to a `no-op` endpoint streams it, request after request.
#[test]
fn a_busy_connection_s_requests_keep_their_bodies() {
    let gw = gateway(
        r#"{"endpoint": "/agg", "method": "POST", "backend": [
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/a", "method": "POST"}]},
           {"endpoint": "/raw", "method": "POST", "output_encoding": "no-op", "backend": [
            {"host": ["http://127.0.0.1:9001"], "url_pattern": "/r", "encoding": "no-op"}]}"#,
    );
    let lb = Balancer::new(gw.backend_count);
    let post = |path: &str, body: &str| {
        &*Box::leak(
            format!("POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .into_boxed_str(),
        )
    };
    let bodies =
        [("/agg", r#"{"n":1}"#), ("/agg", r#"{"n":22}"#), ("/raw", "abc"), ("/raw", "defgh"), ("/agg", r#"{"n":3}"#)];
    let mut script = Vec::new();
    for (path, body) in bodies {
        script.extend([Send(post(path, body)), Wait(10)]);
    }
    script.push(Eof);
    let answers: Vec<Serve> = (0..bodies.len()).map(|_| json(r#"{"ok":true}"#)).collect();
    let w = World::new(&gw, &lb, &script).backend(&upstream(9001), &answers).run();
    assert_eq!(w.requests.len(), bodies.len(), "{}", w.trace());
    for (sent, (path, body)) in w.requests.iter().zip(bodies) {
        let target = if path == "/agg" { "/a" } else { "/r" };
        assert!(sent.starts_with(&format!("POST {target} HTTP/1.1\r\n")), "{sent}");
        assert!(sent.to_ascii_lowercase().contains(&format!("\r\ncontent-length: {}\r\n", body.len())), "{sent}");
        assert!(sent.ends_with(&format!("\r\n\r\n{body}")), "{sent}");
    }
    assert_eq!(w.to_client.matches("HTTP/1.1 200 OK\r\n").count(), bodies.len(), "{}", w.to_client);
}

/// The token the guard stage let through stays with its own request on a busy
/// connection (its exchange renewed from the last one's): its claims go to the
/// backend in the path and as headers, request after request.
#[test]
fn a_busy_connection_s_requests_keep_their_tokens() {
    let tokens: serde_json::Value = serde_json::from_str(include_str!("fixtures/jwt/tokens.json")).unwrap();
    let token = tokens["tokens"]["RS256"].as_str().unwrap();
    let endpoint = r#"{"endpoint": "/me", "input_headers": ["X-User"], "extra_config": {"auth/validator": {"alg": "RS256",
              "jwk_local_path": "keys.json", "propagate_claims": [["sub", "X-User"]]}},
            "backend": [{"host": ["http://127.0.0.1:9001"], "url_pattern": "/users/{JWT.sub}"}]}"#;
    let env = sluice_core::tls::Environment {
        read_file: Box::new(|path| match path {
            "keys.json" => Ok(include_bytes!("fixtures/jwt/keys.json").to_vec()),
            other => Err(format!("cannot read {other:?}: no such file")),
        }),
        ..Default::default()
    };
    let gw = Gateway::load_with(&format!(r#"{{{CONFIG_HEAD}, "endpoints": [{endpoint}]}}"#), &env).unwrap().gateway;
    let lb = Balancer::new(gw.backend_count);
    let get =
        &*Box::leak(format!("GET /me HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n").into_boxed_str());
    let script = [Send(get), Wait(10), Send(get), Wait(10), Send(get), Wait(10), Eof];
    let w = World::new(&gw, &lb, &script).backend(&upstream(9001), &[json("{}"), json("{}"), json("{}")]).run();
    assert_eq!(w.requests.len(), 3, "{}", w.trace());
    for sent in &w.requests {
        let sent = sent.to_ascii_lowercase();
        assert!(sent.starts_with("get /users/1234567890 http/1.1\r\n"), "{sent}");
        assert!(sent.contains("\r\nx-user: 1234567890\r\n"), "{sent}");
    }
}
