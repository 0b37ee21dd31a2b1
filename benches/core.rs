//! Instructions core spends on one request, counted by callgrind through gungraun: a
//! scripted client and backend drive `sluice_core::conn::Connection` with no socket,
//! no clock and no driver, so the count is the same on every run. It is core's and the
//! rig's: the rig's share is small (copying the answers into the read buffers, its
//! output loop), and what a driver adds per log line (`Stats::observe`) is left out.
//!
//! The requests `benches/load/instructions.sh` sends through a whole gateway, and one more:
//! - `noop`: `GET /noop` to a no-op endpoint, a 100-byte answer from an nginx-like
//!   backend, passed through;
//! - `aggregation`: `GET /agg` merging two 2 KB JSON bodies (`allow` + `mapping` on one,
//!   `group` on the other);
//! - `noop_cors`: the no-op request with an `Origin`, under `security/cors` (what CORS
//!   costs a request from a browser's page, against `noop`);
//! - `noop_guards`: the no-op request with a browser's `User-Agent` through a bot
//!   detector and the endpoint's and a client's rate limits (the guard stage's cost).
//!
//! Each benchmark gets a connection already warm (ten requests answered, the backend
//! connections pooled, every buffer grown), runs one request through it (read the
//! client's head, call the backends, write the answer, log it) and checks the
//! client's bytes afterwards, outside the count. Run it with the runner of the same
//! version installed: `cargo install gungraun-runner --version 0.20.0` (valgrind
//! too), then `cargo bench --bench core`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant, UNIX_EPOCH};

use gungraun::{library_benchmark, library_benchmark_group, main};
use sluice_core::Gateway;
use sluice_core::conn::{BackendId, Connection, Input, Output, Session};
use sluice_core::event::Log;
use sluice_core::gateway::upstream::Balancer;

const CLIENT_REQUEST: &[u8] = b"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n{fields}\r\n";

/// What nginx's static module answers, less the date.
fn nginx_answer(content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 12:00:00 GMT\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nLast-Modified: Thu, 03 Dec 2026 11:00:00 GMT\r\n\
         Connection: keep-alive\r\nETag: \"6751f0c0-64\"\r\nAccept-Ranges: bytes\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The load harness's 2 KB documents: 40 fields under `key`, a count, padding.
fn two_kb_json(key: &str, name: &str) -> String {
    let fields: Vec<String> = (0..40).map(|i| format!("\"field_{i}\":\"value number {i} of {name}\"")).collect();
    let text = format!("{{\"{key}\":{{{}}},\"{key}_count\":40", fields.join(","));
    let pad = 2048usize.saturating_sub(text.len() + 20);
    format!("{text},\"{key}_pad\":\"{}\"}}", "p".repeat(pad))
}

/// One backend connection as the rig sees it.
#[derive(Default)]
struct Socket {
    /// The read core has out on it.
    read: Option<Vec<u8>>,
    /// Requests written to it and not yet answered.
    owed: usize,
    /// Which answer it gives (by the path it was asked).
    answer: usize,
}

/// A client connection and what is around it.
struct Rig {
    conn: Connection<'static>,
    at: Instant,
    request: Vec<u8>,
    /// Answers by the backend path that asks for them.
    answers: Vec<(&'static str, Vec<u8>)>,
    client_read: Option<Vec<u8>>,
    client_await: bool,
    socks: Vec<Option<Socket>>,
    /// Pooled backend connections (all to the one host).
    idle: usize,
    ready: VecDeque<Input>,
    /// Bytes the client has been sent since the last [`Rig::take_answer`] (its capacity
    /// kept, so that the rig allocates nothing inside the count).
    to_client: Vec<u8>,
    /// Access lines written.
    logged: usize,
}

impl Rig {
    /// A rig whose client asks for `path`, with `fields` (whole lines) in its head.
    fn new(config: &str, (path, fields): (&str, &str), answers: Vec<(&'static str, Vec<u8>)>) -> Rig {
        let gw: &'static Gateway = Box::leak(Box::new(Gateway::load(config).expect("a valid config").gateway));
        let lb: &'static Balancer = Box::leak(Box::new(Balancer::new(gw.backend_count)));
        let at = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_796_300_000);
        let request =
            String::from_utf8_lossy(CLIENT_REQUEST).replace("{path}", path).replace("{fields}", fields).into_bytes();
        let mut rig = Rig {
            conn: Connection::new(gw, lb, "127.0.0.1".parse().unwrap(), at, wall),
            at,
            request,
            answers,
            client_read: None,
            client_await: false,
            socks: Vec::new(),
            idle: 0,
            ready: VecDeque::new(),
            to_client: Vec::new(),
            logged: 0,
        };
        rig.settle();
        rig
    }

    /// Ten requests, so that every pool, buffer and vector is at its steady size.
    fn warm(mut self) -> Rig {
        for _ in 0..10 {
            self.request();
            self.take_answer();
        }
        self
    }

    /// The client sends its request; everything runs until nothing is left to do.
    fn request(&mut self) {
        if std::mem::take(&mut self.client_await) {
            // A keep-alive connection waits for its next request without a buffer.
            self.conn.handle(Input::ClientReady(Ok(())), self.at);
            self.settle();
        }
        let mut buf = self.client_read.take().expect("the connection reads its client");
        buf.extend_from_slice(&self.request);
        let n = self.request.len();
        self.conn.handle(Input::ClientRead(buf, Ok(n)), self.at);
        self.settle();
    }

    fn settle(&mut self) {
        loop {
            while let Some(output) = self.conn.poll() {
                self.start(output);
            }
            // A driver asks for the deadline each time it has started what was asked
            // for, before it waits for the next input.
            std::hint::black_box(self.conn.poll_timeout());
            if let Some(input) = self.ready.pop_front() {
                self.conn.handle(input, self.at);
                continue;
            }
            // A backend answers a request once its read is out.
            let owed = self.socks.iter_mut().enumerate().find_map(|(id, s)| match s {
                Some(s) if s.owed > 0 && s.read.is_some() => Some((id, s)),
                _ => None,
            });
            let Some((id, sock)) = owed else { return };
            sock.owed -= 1;
            let mut buf = sock.read.take().unwrap();
            let answer = &self.answers[sock.answer].1;
            buf.extend_from_slice(answer);
            self.conn.handle(Input::BackendRead(id, buf, Ok(answer.len())), self.at);
        }
    }

    fn start(&mut self, output: Output<'_>) {
        match output {
            Output::ReadClient(buf) => self.client_read = Some(buf),
            Output::AwaitClient => self.client_await = true,
            Output::WriteClient(bytes) => {
                self.to_client.extend_from_slice(&bytes);
                self.ready.push_back(Input::ClientWritten(bytes, Ok(())));
            }
            Output::Connect { id, pooled, .. } => {
                let reused = pooled && self.idle > 0;
                let sock = match reused {
                    true => {
                        self.idle -= 1;
                        Some(Session::default())
                    }
                    false => None,
                };
                if self.socks.len() <= id {
                    self.socks.resize_with(id + 1, || None);
                }
                self.socks[id] = Some(Socket::default());
                self.ready.push_back(Input::Connected(id, sock));
            }
            Output::ReadBackend { id, buf } => self.sock(id).read = Some(buf),
            Output::WriteBackend { id, bytes } => {
                // The harness's requests are heads alone, each in one write.
                assert!(bytes.ends_with(b"\r\n\r\n"), "{}", String::from_utf8_lossy(&bytes));
                let line = bytes.split(|b| *b == b' ').nth(1).expect("a request line");
                let answer = self.answers.iter().position(|(path, _)| path.as_bytes() == line);
                let sock = self.sock(id);
                sock.answer = answer.expect("a scripted path");
                sock.owed += 1;
                self.ready.push_back(Input::BackendWritten(id, bytes, Ok(())));
            }
            Output::PoolBackend { id, .. } => {
                self.socks[id] = None;
                self.idle += 1;
            }
            Output::CloseBackend { id } => self.socks[id] = None,
            Output::Log(line) => {
                if matches!(line, Log::Access(_)) {
                    self.logged += 1;
                }
                black_box(line);
            }
            other => panic!("the rig does not do {other:?}"),
        }
    }

    fn sock(&mut self, id: BackendId) -> &mut Socket {
        self.socks[id].as_mut().expect("an open backend connection")
    }

    /// What the client got since the last call, checked to be one whole 200 answer.
    fn take_answer(&mut self) -> String {
        let text = String::from_utf8(self.to_client.clone()).expect("a text answer");
        self.to_client.clear();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        text
    }
}

fn noop_rig() -> Rig {
    noop_rig_with("{}", "{}", "")
}

/// The no-op request, with `root` and `endpoint` as the root's and the endpoint's
/// `extra_config` and `fields` (whole lines) in the client's head.
fn noop_rig_with(root: &str, endpoint: &str, fields: &str) -> Rig {
    let config = format!(
        r#"{{"version": 3, "timeout": "5s", "idle_timeout": "120s",
        "host": ["http://127.0.0.1:9001"], "extra_config": {root},
        "endpoints": [{{"endpoint": "/noop", "output_encoding": "no-op", "extra_config": {endpoint},
            "backend": [{{"url_pattern": "/100b", "encoding": "no-op"}}]}}]}}"#
    );
    let body = format!("{}\n", "x".repeat(99));
    Rig::new(&config, ("/noop", fields), vec![("/100b", nginx_answer("application/octet-stream", &body))]).warm()
}

/// The no-op request from a browser's page with CORS on: the same exchange, the
/// request checked and the answer given its allow fields.
fn noop_cors_rig() -> Rig {
    let cors = r#"{"security/cors": {"allow_origins": ["https://app.example", "https://*.example.org"],
        "expose_headers": ["X-Request-Id"], "allow_credentials": true}}"#;
    noop_rig_with(cors, "{}", "Origin: https://app.example\r\n")
}

/// The no-op request through an endpoint's guard stage: a bot detector with patterns
/// and the endpoint's and a client's rate limits, none of them refusing.
fn noop_guards_rig() -> Rig {
    let guards = r#"{
        "security/bot-detector": {"deny": ["a", "b"], "patterns": ["(?i)bot", "spider", "crawl(er)?/"]},
        "qos/ratelimit/router": {"max_rate": 1000000, "client_max_rate": 1000000, "strategy": "ip"}}"#;
    let agent = "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n";
    noop_rig_with("{}", guards, agent)
}

fn aggregation_rig() -> Rig {
    let config = r#"{"version": 3, "timeout": "5s", "idle_timeout": "120s",
        "host": ["http://127.0.0.1:9001"],
        "endpoints": [{"endpoint": "/agg", "backend": [
            {"url_pattern": "/a.json", "allow": ["user", "user_count"], "mapping": {"user_count": "count"}},
            {"url_pattern": "/b.json", "group": "orders"}]}]}"#;
    let answers = vec![
        ("/a.json", nginx_answer("application/json", &two_kb_json("user", "a.json"))),
        ("/b.json", nginx_answer("application/json", &two_kb_json("orders", "b.json"))),
    ];
    Rig::new(config, ("/agg", ""), answers).warm()
}

/// The answer went out whole, and the access line with it.
fn check(mut rig: Rig) {
    let logged = rig.logged;
    let text = rig.take_answer();
    assert_eq!(logged, 11, "one access line per request");
    if text.contains("\r\nvary: Origin\r\n") {
        let allowed = "\r\nvary: Origin\r\naccess-control-allow-origin: https://app.example\r\n\
                       access-control-expose-headers: X-Request-Id\r\naccess-control-allow-credentials: true\r\n";
        assert!(text.starts_with("HTTP/1.1 200 OK") && text.contains(allowed), "{text}");
    }
    if text.contains("application/octet-stream") {
        assert!(text.ends_with(&format!("\r\n\r\n{}\n", "x".repeat(99))), "{text}");
    } else {
        let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
        let length = format!("content-length: {}", body.len());
        assert!(head.split("\r\n").any(|line| line == length), "{text}");
        assert!(body.starts_with("{\"user\":{\"field_0\":\"value number 0 of a.json\""), "{text}");
        assert!(body.contains(",\"count\":40") && body.contains(",\"orders\":{\"orders\":{\"field_0\""), "{text}");
    }
}

#[library_benchmark]
#[bench::noop(setup = noop_rig, teardown = check)]
#[bench::noop_cors(setup = noop_cors_rig, teardown = check)]
#[bench::noop_guards(setup = noop_guards_rig, teardown = check)]
#[bench::aggregation(setup = aggregation_rig, teardown = check)]
fn one_request(mut rig: Rig) -> Rig {
    rig.request();
    rig
}

library_benchmark_group!(name = connection; benchmarks = one_request);

main!(library_benchmark_groups = connection);
