//! Real sockets for the end-to-end suite: scripted backends, a raw HTTP/1.1 client, and
//! the gateway started in-process on port 0 with a chosen driver.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use sluice_core::serve::{Options, Running, Start};
use sluice_core::{Gateway, StopSignal};

pub mod plugins;
pub mod proxies;
pub mod tls;

/// Declares one `#[test]` per driver for each named scenario `fn name(mode: Mode)`:
/// sluice-uring on io_uring and on forced epoll (Linux), and sluice-tokio.
#[macro_export]
macro_rules! every_driver {
    ($($name:ident),* $(,)?) => {
        #[cfg(target_os = "linux")]
        mod io_uring { $( #[test] fn $name() { super::$name(super::Mode::IoUring) } )* }
        #[cfg(target_os = "linux")]
        mod epoll { $( #[test] fn $name() { super::$name(super::Mode::Epoll) } )* }
        mod tokio { $( #[test] fn $name() { super::$name(super::Mode::Tokio) } )* }
    };
}

/// Which driver a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// sluice-uring on io_uring (Linux).
    IoUring,
    /// sluice-uring on monoio's epoll driver (Linux).
    Epoll,
    /// sluice-tokio.
    Tokio,
}

/// The gateway, running until dropped.
pub struct Gw {
    server: Option<Box<dyn Running>>,
    pub addr: SocketAddr,
    /// The forward proxy's listener (127.0.0.1:0), when the config has one.
    pub forward: Option<SocketAddr>,
    /// The admin listener (127.0.0.1:0), when the config has `sluice/admin`.
    pub admin: Option<SocketAddr>,
}

impl Gw {
    /// Starts `config` on 127.0.0.1:0 with one shard (uring) or one worker (tokio), so a
    /// test sees one pool and one round-robin counter whatever the machine.
    pub fn start(config: &str, mode: Mode) -> Gw {
        Gw::start_env(config, mode, &files_env(sluice_core::call::proxy::ProxyEnv::default()))
    }

    /// [`Gw::start`] with what a loader hands over (proxy variables, files, roots).
    pub fn start_env(config: &str, mode: Mode, env: &sluice_core::tls::Environment) -> Gw {
        Gw::start_gateway(
            Gateway::load_with(config, env).unwrap_or_else(|e| panic!("config: {e}\n{config}")).gateway,
            mode,
        )
    }

    /// [`Gw::start`] with a compiled gateway (plugins bound to it, say).
    pub fn start_gateway(gw: Gateway, mode: Mode) -> Gw {
        Gw::start_with(gw, mode, |_| {})
    }

    /// [`Gw::start_gateway`], with `tweak` changing the options last.
    pub fn start_with(gw: Gateway, mode: Mode, tweak: impl FnOnce(&mut Options)) -> Gw {
        let gw = Arc::new(gw);
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let start: Start = match mode {
            #[cfg(target_os = "linux")]
            Mode::IoUring | Mode::Epoll => sluice_uring::start_boxed,
            #[cfg(not(target_os = "linux"))]
            Mode::IoUring | Mode::Epoll => unreachable!("uring modes run on Linux only"),
            Mode::Tokio => sluice_tokio::start_boxed,
        };
        let mut opts = Options::new(&gw, listen);
        // Every listener on port 0; one shard or worker.
        opts.forward_listen = opts.forward_listen.map(|_| listen);
        opts.admin_listen = opts.admin_listen.map(|_| listen);
        opts.threads = 1;
        opts.force_epoll = mode == Mode::Epoll;
        opts.shutdown_wait = Duration::from_secs(5);
        tweak(&mut opts);
        let server = start(gw, opts, StopSignal::new()).expect("start");
        let (addr, forward, admin) = (server.local_addr(), server.forward_addr(), server.admin_addr());
        Gw { server: Some(server), addr, forward, admin }
    }

    /// Stops accepting and waits for requests in flight (what SIGTERM does).
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
            s.join();
        }
    }

    pub fn stop_async(&mut self) -> thread::JoinHandle<()> {
        let s = self.server.take().expect("running");
        thread::spawn(move || {
            s.stop();
            s.join();
        })
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// One request on a fresh connection.
    pub fn get(&self, target: &str) -> Response {
        let mut s = self.connect();
        write!(s, "GET {target} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n").unwrap();
        read_response(&mut BufReader::new(s)).expect("a response")
    }

    /// One request with `fields` and a Content-Length framed `body` (none for an empty
    /// body) on a fresh connection.
    pub fn request(&self, method: &str, target: &str, fields: &[(&str, &str)], body: &[u8]) -> Response {
        let mut s = self.connect();
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n");
        for (name, value) in fields {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        read_response(&mut BufReader::new(s)).expect("a response")
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A response as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Lowercased names, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// Reads one response (Content-Length, chunked, or until close). `None` on a clean EOF
/// before any byte.
pub fn read_response(r: &mut impl BufRead) -> Option<Response> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if status == 204 || status == 304 || (100..200).contains(&status) {
    } else if let Some(len) = get("content-length") {
        body.resize(len.parse().ok()?, 0);
        r.read_exact(&mut body).ok()?;
    } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if n == 0 {
                let mut end = String::new();
                r.read_line(&mut end).ok()?;
                break;
            }
            let start = body.len();
            body.resize(start + n, 0);
            r.read_exact(&mut body[start..]).ok()?;
            let mut crlf = [0; 2];
            r.read_exact(&mut crlf).ok()?;
        }
    } else {
        r.read_to_end(&mut body).ok()?;
    }
    Some(Response { status, headers, body })
}

/// An environment that reads the files a configuration names from disk (as the
/// binary's loader does), with `proxy` and no system roots (tests trust their own CAs).
pub fn files_env(proxy: sluice_core::call::proxy::ProxyEnv) -> sluice_core::tls::Environment {
    sluice_core::tls::Environment {
        proxy,
        read_file: Box::new(|path| std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))),
        ..Default::default()
    }
}

/// A child process killed and reaped when dropped (a failing test leaves none behind).
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A folder of its own under the temporary directory, removed when dropped.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sluice-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A response as curl printed it with `-i`: status, fields (names lowercased, in
/// order), body.
pub struct Got {
    pub status: u16,
    pub fields: Vec<(String, String)>,
    pub body: String,
}

impl Got {
    /// The CORS fields (and `Vary`), in order: what these tests compare exactly.
    pub fn cors(&self) -> Vec<(&str, &str)> {
        self.fields
            .iter()
            .filter(|(n, _)| n.starts_with("access-control-") || n == "vary")
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

pub fn curl(args: &[&str]) -> Got {
    let out =
        std::process::Command::new("curl").args(["-sS", "-i", "--max-time", "10"]).args(args).output().expect("curl");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let fields = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    Got { status, fields, body: body.to_string() }
}

/// What a scripted backend does with a request.
#[derive(Clone)]
pub enum Reply {
    /// 200 with this JSON body.
    Json(String),
    /// Raw bytes written as they are, then the connection stays open.
    Raw(Vec<u8>),
    /// Waits, then answers 200 with this JSON body.
    Slow(Duration, String),
    /// Closes the connection without answering (a reset if unread data is pending).
    Close,
    /// Never answers.
    Hang,
    /// Answers with the request's body, length and method as JSON.
    Echo,
    /// A body of this many bytes (a repeating pattern), Content-Length framed.
    Big(usize),
    /// Raw pieces, each after its pause; then the connection closes.
    Pieces(Vec<(Duration, Vec<u8>)>),
}

/// A request as a backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub head: String,
    pub body: Vec<u8>,
}

/// A backend on a real socket, answering from a script, counting connections.
pub struct Backend {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    pub fn start(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let (c, s) = (connections.clone(), seen.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let (script, seen) = (script.clone(), s.clone());
                thread::spawn(move || serve(stream, &*script, &seen));
            }
        });
        Backend { addr, connections, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, script: &(dyn Fn(&Seen) -> Reply + Send + Sync), seen: &Mutex<Vec<Seen>>) {
    let mut out = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let lower = head.to_ascii_lowercase();
        let mut body = Vec::new();
        if let Some(len) = lower.lines().find_map(|l| l.strip_prefix("content-length:")) {
            body.resize(len.trim().parse().unwrap(), 0);
            if r.read_exact(&mut body).is_err() {
                return;
            }
        } else if lower.contains("transfer-encoding: chunked") {
            loop {
                // A body cut short (the gateway closed the connection) ends the request.
                let mut size = String::new();
                let Ok(n) = r.read_line(&mut size).map(|_| usize::from_str_radix(size.trim(), 16)) else { return };
                let Ok(n) = n else { return };
                let mut chunk = vec![0; n + 2];
                if r.read_exact(&mut chunk).is_err() {
                    return;
                }
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        let req = Seen { head, body };
        seen.lock().unwrap().push(req.clone());
        let json = |b: &str| {
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len())
                .into_bytes()
        };
        let bytes = match script(&req) {
            Reply::Json(b) => json(&b),
            Reply::Raw(b) => b,
            Reply::Slow(d, b) => {
                thread::sleep(d);
                json(&b)
            }
            Reply::Close => {
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
            Reply::Hang => {
                thread::sleep(Duration::from_secs(30));
                return;
            }
            Reply::Echo => {
                let method = req.head.split(' ').next().unwrap_or("");
                json(&format!(r#"{{"method":"{method}","length":{},"sum":{}}}"#, req.body.len(), checksum(&req.body)))
            }
            Reply::Pieces(pieces) => {
                for (pause, piece) in pieces {
                    thread::sleep(pause);
                    if out.write_all(&piece).is_err() {
                        return;
                    }
                }
                return;
            }
            Reply::Big(n) => {
                let mut b =
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n")
                        .into_bytes();
                out.write_all(&b).unwrap();
                b.clear();
                for part in pattern(n).chunks(64 * 1024) {
                    if out.write_all(part).is_err() {
                        return;
                    }
                }
                continue;
            }
        };
        if out.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// A deterministic byte pattern.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A cheap order-sensitive checksum.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0u64, |acc, &b| acc.wrapping_mul(31).wrapping_add(u64::from(b)))
}

/// The port a child process listens on, from /proc (for a child started with `-p 0`
/// whose logs cannot be read): its socket inodes, then the LISTEN rows of /proc/net/tcp.
/// Waits up to 10 s for the listener.
pub fn listening_port(pid: u32) -> u16 {
    for _ in 0..200 {
        let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| {
                dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        for row in table.lines().skip(1) {
            let cols: Vec<&str> = row.split_whitespace().collect();
            // local_address is "IP:PORT" in hex; state 0A is LISTEN; column 9 the inode.
            if cols.len() > 9 && cols[3] == "0A" && inodes.iter().any(|i| i == cols[9]) {
                let port = cols[1].rsplit(':').next().unwrap();
                return u16::from_str_radix(port, 16).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("process {pid} listens on nothing after 10 s");
}

/// `GET target` on a connection of its own to 127.0.0.1:`port` (`Host: localhost`,
/// `extra` header lines, `Connection: close`), its answer read whole.
pub fn get_once(port: u16, target: &str, extra: &str) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {target} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n").unwrap();
    read_response(&mut BufReader::new(s)).unwrap()
}

/// `sluice run -c CONFIG ARGS...` as the suites start the real binary: no colour,
/// `RUST_LOG` as given (`None`: unset, so the file's `telemetry/logging` level
/// applies), stdout and stderr piped. Spawn it with `.spawn().map(Reaped)`.
pub fn sluice_run(config: &std::path::Path, args: &[&str], rust_log: Option<&str>) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(["run", "-c"]).arg(config).args(args).env("NO_COLOR", "1");
    match rust_log {
        Some(level) => cmd.env("RUST_LOG", level),
        None => cmd.env_remove("RUST_LOG"),
    };
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    cmd
}
