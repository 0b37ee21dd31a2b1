//! KrakenD's `"sd": "dns"` end to end: SRV records from dnsmasq (a real DNS server)
//! and from a scripted server here, on 127.0.0.1 only, through every driver.

mod support;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::SRV;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use support::tls::{Pki, new_ca, serve};
use support::{Backend, Gw, Mode, Reaped, Reply, files_env};

const NAME: &str = "_api._tcp.sluice.test";

/// One endpoint, `/who`, whose backend is `host` with `"sd": "dns"`, asking `dns`.
fn config(dns: SocketAddr, host: &str, extra: &str) -> String {
    format!(
        r#"{{"version": 3, "timeout": "3s",
            "extra_config": {{"sluice/dns": {{"nameservers": ["{dns}"], "timeout": "300ms", "attempts": 1}}}},
            "endpoints": [{{"endpoint": "/who", "backend": [
                {{"host": ["{host}"], "sd": "dns", "disable_host_sanitize": true, "url_pattern": "/who"{extra}}}]}}]}}"#
    )
}

/// A backend answering `{"who": name}`.
fn named(name: &'static str) -> Backend {
    Backend::start(move |_| Reply::Json(format!(r#"{{"who":"{name}"}}"#)))
}

/// A query for `name`'s SRV records, its answer read within `wait`.
fn ask(server: SocketAddr, name: &str, wait: Duration) -> Option<Message> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(format!("{name}.")).unwrap(), RecordType::SRV));
    s.send_to(&m.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Message::from_vec(&buf[..n]).ok()
}

/// A port free for both UDP and TCP on 127.0.0.1 (dnsmasq listens on both).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// dnsmasq on 127.0.0.1 serving these SRV records (`name,target,port,priority,weight`)
/// and nothing else (no upstream, no hosts file), stopped when dropped. A start that
/// fails (its port taken meanwhile by another test) is tried again on another port.
fn dnsmasq(records: &[String]) -> (Reaped, SocketAddr) {
    let mut said = String::new();
    for _ in 0..5 {
        let port = free_port();
        let mut cmd = Command::new("/usr/sbin/dnsmasq");
        cmd.args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll", "--conf-file=/dev/null"])
            .args(["--bind-interfaces", "--listen-address=127.0.0.1", "--pid-file=", "--local-ttl=60"])
            .arg(format!("--port={port}"))
            .args(records.iter().map(|r| format!("--srv-host={r}")))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = Reaped(cmd.spawn().expect("dnsmasq (apt-get install dnsmasq-base)"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ask(addr, NAME, Duration::from_millis(200)).is_some() {
                return (child, addr);
            }
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        if let Some(mut err) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut said);
        }
    }
    panic!("dnsmasq did not start: {said}");
}

/// The `who` of each of `n` calls to `/who`.
fn calls(gw: &Gw, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = gw.get("/who");
            assert_eq!(r.status, 200, "{}", r.text());
            r.text().to_string()
        })
        .collect()
}

/// Priority and weight from a real DNS server: the priority 0 targets share the calls
/// 3:1, spread out; the priority 1 target is never called; each request names its
/// target in Host.
fn dnsmasq_records_route_and_weight_the_calls(mode: Mode) {
    let (a, b, standby) = (named("a"), named("b"), named("standby"));
    let records = [
        format!("{NAME},localhost,{},0,3", a.addr.port()),
        format!("{NAME},localhost,{},0,1", b.addr.port()),
        format!("{NAME},localhost,{},1,100", standby.addr.port()),
    ];
    let (_dns, addr) = dnsmasq(&records);
    let gw = Gw::start(&config(addr, NAME, ""), mode);
    // Each round of 4 has 3 a's and one b (where b falls in it depends on the ports'
    // order, which the targets are sorted by).
    let got = calls(&gw, 8);
    for round in got.chunks(4) {
        let bs = round.iter().filter(|w| *w == r#"{"who":"b"}"#).count();
        assert_eq!((round.len() - bs, bs), (3, 1), "{got:?}");
        assert!(round.iter().all(|w| w == r#"{"who":"a"}"# || w == r#"{"who":"b"}"#), "{got:?}");
    }
    assert_eq!(got[..4], got[4..], "the same order each round");
    assert!(standby.requests().is_empty());
    let seen = a.requests();
    assert_eq!(seen.len(), 6);
    let host = format!("host: localhost:{}\r\n", a.addr.port());
    assert!(seen[0].head.to_ascii_lowercase().contains(&host), "{}", seen[0].head);
    assert!(seen[0].head.starts_with("GET /who HTTP/1.1\r\n"), "{}", seen[0].head);
    // One query for all of them (the answer is cached for its TTL), and the pooled
    // connections were reused: one per target.
    assert_eq!((a.connections.load(Ordering::SeqCst), b.connections.load(Ordering::SeqCst)), (1, 1));
}

/// Each name's SRV records `(priority, weight, port, target)` and their TTL.
type Zone = Arc<Mutex<HashMap<String, (Vec<(u16, u16, u16, String)>, u32)>>>;

/// A DNS server scripted here: each name's records `(priority, weight, port, target)`
/// and TTL (a name it does not have: NXDOMAIN); or silent. Counts queries.
struct Scripted {
    addr: SocketAddr,
    zone: Zone,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Scripted {
    fn start(silent: bool) -> Scripted {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = socket.local_addr().unwrap();
        let zone: Zone = Arc::default();
        let (queries, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (z, q, s) = (zone.clone(), queries.clone(), stop.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::SeqCst) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let Ok(asked) = Message::from_vec(&buf[..n]) else { continue };
                q.fetch_add(1, Ordering::SeqCst);
                if silent {
                    continue;
                }
                let question = asked.queries[0].clone();
                let name = question.name().to_ascii();
                let mut m = Message::new(asked.metadata.id, MessageType::Response, OpCode::Query);
                m.add_query(question.clone());
                match z.lock().unwrap().get(name.trim_end_matches('.')) {
                    None => m.metadata.response_code = ResponseCode::NXDomain,
                    Some((records, ttl)) => {
                        for (priority, weight, port, target) in records {
                            let target = Name::from_ascii(format!("{target}.")).unwrap();
                            let srv = SRV::new(*priority, *weight, *port, target);
                            m.add_answer(Record::from_rdata(question.name().clone(), *ttl, RData::SRV(srv)));
                        }
                    }
                }
                let _ = socket.send_to(&m.to_vec().unwrap(), from);
            }
        });
        Scripted { addr, zone, queries, stop }
    }

    fn set(&self, name: &str, records: &[(u16, u16, u16, &str)], ttl: u32) {
        let records = records.iter().map(|&(p, w, port, t)| (p, w, port, t.to_string())).collect();
        self.zone.lock().unwrap().insert(name.to_string(), (records, ttl));
    }

    /// Waits (bounded) until `n` queries came.
    fn wait_queries(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.queries.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "{} queries, not {n}", self.queries.load(Ordering::SeqCst));
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The set is kept for its TTL, then refreshed while the old one serves; an empty
/// answer fails the calls (500, the name asked in the log) until records come back.
fn answers_are_refreshed_by_ttl_and_empty_ones_fail_the_call(mode: Mode) {
    let (a, b) = (named("a"), named("b"));
    let dns = Scripted::start(false);
    dns.set(NAME, &[(0, 0, a.addr.port(), "localhost")], 1);
    let gw = Gw::start(&config(dns.addr, NAME, ""), mode);
    assert_eq!(calls(&gw, 2), [r#"{"who":"a"}"#; 2]);
    assert_eq!(dns.queries.load(Ordering::SeqCst), 1);
    // The records move to b. Within the TTL nothing is asked; after it, the call that
    // finds the set stale still goes to a and starts the refresh; once that is
    // answered, calls go to b.
    dns.set(NAME, &[(0, 0, b.addr.port(), "localhost")], 1);
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(calls(&gw, 1), [r#"{"who":"a"}"#]);
    dns.wait_queries(2);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(calls(&gw, 2), [r#"{"who":"b"}"#; 2]);
    // The name disappears (NXDOMAIN): after the TTL and its refresh, calls fail.
    dns.zone.lock().unwrap().clear();
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(calls(&gw, 1), [r#"{"who":"b"}"#]);
    dns.wait_queries(3);
    thread::sleep(Duration::from_millis(50));
    let r = gw.get("/who");
    assert_eq!((r.status, r.text()), (500, ""));
    assert_eq!(b.requests().len(), 3);
    // The empty answer is kept 5s: no query per call.
    let r = gw.get("/who");
    assert_eq!(r.status, 500);
    assert_eq!(dns.queries.load(Ordering::SeqCst), 3);
}

/// A nameserver that never answers: the call fails after the configured timeout (one
/// try), long before the endpoint's; one query went out; nothing was dialled.
fn a_silent_nameserver_fails_the_call_after_its_timeout(mode: Mode) {
    let a = named("a");
    let dns = Scripted::start(true);
    let gw = Gw::start(&config(dns.addr, NAME, ""), mode);
    let t0 = Instant::now();
    let r = gw.get("/who");
    let took = t0.elapsed();
    assert_eq!((r.status, r.text()), (500, ""));
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(dns.queries.load(Ordering::SeqCst), 1);
    assert_eq!(a.connections.load(Ordering::SeqCst), 0);
}

/// `https://` with `"sd": "dns"`: the target's name is the one verified (OpenSSL's
/// server, a certificate for localhost), and the request names it.
fn https_targets_are_verified_by_their_own_name(mode: Mode) {
    let pki = Pki::new();
    let ca = new_ca("Sluice test CA");
    let ca_file = pki.write("ca.crt", &ca.cert.pem());
    let (cert, key) = pki.leaf("localhost", &["localhost"], Some(&ca), false);
    let server = serve(&cert, &key, None);
    let dns = Scripted::start(false);
    dns.set("_api._tls.sluice.test", &[(0, 0, server.port, "localhost")], 60);
    let tls = format!(
        r#", "extra_config": {{"backend/http/client": {{"client_tls": {{"ca_certs": ["{}"], "disable_system_ca_pool": true}}}}}}"#,
        ca_file.display()
    );
    let cfg = config(dns.addr, "https://_api._tls.sluice.test", &tls);
    let gw = Gw::start_env(&cfg, mode, &files_env(Default::default()));
    let r = gw.get("/who");
    assert_eq!((r.status, r.text()), (200, r#"{"path":"/who","tls":"TLSv1.3","client":null}"#));
    // A target whose certificate does not name it: refused.
    dns.set("_api._tls.sluice.test", &[(0, 0, server.port, "127.0.0.1")], 60);
    let other = config(dns.addr, "https://_api._tls.sluice.test", &tls);
    drop(gw);
    let gw = Gw::start_env(&other, mode, &files_env(Default::default()));
    let r = gw.get("/who");
    assert_eq!(r.status, 500);
}

every_driver!(
    dnsmasq_records_route_and_weight_the_calls,
    answers_are_refreshed_by_ttl_and_empty_ones_fail_the_call,
    a_silent_nameserver_fails_the_call_after_its_timeout,
    https_targets_are_verified_by_their_own_name,
);
