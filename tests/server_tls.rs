//! The gateway's own listener over TLS (root `tls`), on every driver: core's
//! connection runs rustls' server side, the drivers move ciphertext. Checked with the
//! clients users have: curl and Python's `ssl` (OpenSSL), with certificates made here by
//! rcgen. Bad input: a plain-HTTP client on the TLS port, handshake garbage, a client
//! without the certificate mutual TLS asks for, a TLS version the listener refuses.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_core::call::proxy::ProxyEnv;
use support::tls::{Issuer, Pki, new_ca};
use support::{Backend, Gw, Mode, Reply, files_env};

/// A Python client on one kept-alive HTTPS connection: a 300 KB POST to `/echo` (the
/// backend answers its length and checksum), a 4 MiB download from `/big` (checked
/// against the pattern), and the TLS version and cipher it got; or the error.
const CLIENT: &str = r#"
import http.client, json, ssl, sys
port, ca, tls12, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
if tls12:
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
if cert != "-":
    ctx.load_cert_chain(cert, key)
def checksum(data):
    acc = 0
    for b in data:
        acc = (acc * 31 + b) % (1 << 64)
    return acc
try:
    c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    body = b"0123456789" * 30000
    c.request("POST", "/echo", body=body)
    r = c.getresponse()
    echo = json.loads(r.read())
    ok = echo == {"method": "POST", "length": len(body), "sum": checksum(body)}
    c.request("GET", "/big")
    r = c.getresponse()
    big = r.read()
    n = 4 * 1024 * 1024
    print(json.dumps({"echo": [r.status, ok], "big": [len(big), big == bytes(i % 251 for i in range(n))],
                      "version": c.sock.version(), "cipher": c.sock.cipher()[0]}))
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
"#;

/// Runs [`CLIENT`]: its one line of JSON.
fn python(port: u16, ca: &Path, tls12: bool, client: Option<(&Path, &Path)>) -> String {
    let (cert, key) =
        client.map_or(("-".into(), "-".into()), |(c, k)| (c.display().to_string(), k.display().to_string()));
    let out = Command::new("python3")
        .arg("-c")
        .arg(CLIENT)
        .arg(port.to_string())
        .arg(ca)
        .arg(if tls12 { "1" } else { "0" })
        .arg(cert)
        .arg(key)
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// curl: each URL on one connection, then `|status|new connections` per answer.
fn curl(ca: &Path, urls: &[String], more: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(more)
        .args(["-w", "|%{http_code}|%{num_connects}\\n"])
        .args(urls)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA, and the listener's certificate for `localhost` signed by it.
struct Certs {
    pki: Pki,
    ca: Issuer,
    ca_file: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn certs() -> Certs {
    let pki = Pki::new();
    let ca = new_ca("Sluice test CA");
    let ca_file = pki.write("ca.crt", &ca.cert.pem());
    let (cert, key) = pki.leaf("localhost", &["localhost"], Some(&ca), false);
    Certs { pki, ca, ca_file, cert, key }
}

/// `/p` (no-op to a JSON backend), `/echo` (no-op, the backend echoes what it got) and
/// `/big` (no-op, 4 MiB), listening with `tls` (the JSON object's members after the
/// keys).
fn config(c: &Certs, b: &Backend, tls: &str) -> String {
    let url = b.url();
    format!(
        r#"{{"version": 3, "host": ["{url}"],
            "tls": {{"public_key": "{}", "private_key": "{}"{tls}}},
            "endpoints": [
            {{"endpoint": "/p", "output_encoding": "no-op", "backend": [{{"url_pattern": "/p", "encoding": "no-op"}}]}},
            {{"endpoint": "/echo", "method": "POST", "output_encoding": "no-op",
              "backend": [{{"url_pattern": "/echo", "encoding": "no-op"}}]}},
            {{"endpoint": "/big", "output_encoding": "no-op", "backend": [{{"url_pattern": "/big", "encoding": "no-op"}}]}}]}}"#,
        c.cert.display(),
        c.key.display()
    )
}

fn backend() -> Backend {
    Backend::start(|seen| match seen.head.split(' ').nth(1).unwrap_or_default() {
        "/echo" => Reply::Echo,
        "/big" => Reply::Big(4 * 1024 * 1024),
        _ => Reply::Json(r#"{"a":1}"#.into()),
    })
}

fn start(cfg: &str, mode: Mode) -> Gw {
    Gw::start_env(cfg, mode, &files_env(ProxyEnv::default()))
}

/// curl and Python over HTTPS: exact answers, keep-alive (one connection for several
/// requests), a request body and a 4 MiB answer through the TLS session, TLS 1.3 by
/// default.
fn https_listener(mode: Mode) {
    let c = certs();
    let b = backend();
    let gw = start(&config(&c, &b, ""), mode);
    let port = gw.addr.port();
    let url = format!("https://localhost:{port}/p");
    assert_eq!(curl(&c.ca_file, &[url.clone(), url], &[]), "{\"a\":1}|200|1\n{\"a\":1}|200|0\n");
    assert_eq!(
        python(port, &c.ca_file, false, None),
        r#"{"echo": [200, true], "big": [4194304, true], "version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}"#
    );
}

/// KrakenD's default is TLS 1.3 only: a TLS 1.2 client is refused. `min_version` TLS12
/// lets it in; `cipher_suites` then picks its suite.
fn versions_and_suites(mode: Mode) {
    let c = certs();
    let b = backend();
    let gw = start(&config(&c, &b, ""), mode);
    let refused = python(gw.addr.port(), &c.ca_file, true, None);
    assert!(refused.starts_with(r#"{"error": "SSLError: "#) && refused.contains("PROTOCOL_VERSION"), "{refused}");
    drop(gw);
    // 49195: TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 (rcgen's keys are ECDSA P-256).
    let gw = start(&config(&c, &b, r#", "min_version": "TLS12", "cipher_suites": [49195, 4865]"#), mode);
    assert_eq!(
        python(gw.addr.port(), &c.ca_file, true, None),
        r#"{"echo": [200, true], "big": [4194304, true], "version": "TLSv1.2", "cipher": "ECDHE-ECDSA-AES128-GCM-SHA256"}"#
    );
    assert_eq!(
        python(gw.addr.port(), &c.ca_file, false, None),
        r#"{"echo": [200, true], "big": [4194304, true], "version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256"}"#
    );
}

/// `enable_mtls`: a client with a certificate from the configured CA is served; one
/// without is refused in the handshake (curl too), and nothing reaches the backend.
fn mutual_tls(mode: Mode) {
    let c = certs();
    let clients = new_ca("Sluice client CA");
    let clients_file = c.pki.write("clients.crt", &clients.cert.pem());
    let (client, client_key) = c.pki.leaf("client", &["client.sluice.test"], Some(&clients), false);
    let (stranger, stranger_key) = c.pki.leaf("stranger", &["stranger.sluice.test"], Some(&c.ca), false);
    let b = backend();
    let mtls =
        format!(r#", "enable_mtls": true, "ca_certs": ["{}"], "disable_system_ca_pool": true"#, clients_file.display());
    let gw = start(&config(&c, &b, &mtls), mode);
    let port = gw.addr.port();
    assert_eq!(
        python(port, &c.ca_file, false, Some((&client, &client_key))),
        r#"{"echo": [200, true], "big": [4194304, true], "version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}"#
    );
    let before = b.requests().len();
    let none = python(port, &c.ca_file, false, None);
    assert!(none.contains("CERTIFICATE_REQUIRED"), "{none}");
    let other_ca = python(port, &c.ca_file, false, Some((&stranger, &stranger_key)));
    assert!(other_ca.contains("UNKNOWN_CA"), "{other_ca}");
    let url = format!("https://localhost:{port}/p");
    assert_eq!(curl(&c.ca_file, &[url], &[]), "|000|1\n");
    assert_eq!(b.requests().len(), before);
}

/// Bytes that are not TLS: a plain-HTTP request gets nginx's kind of answer, in plain
/// HTTP; handshake garbage gets an alert and a close. Both at once, and the listener
/// serves the next client.
fn not_tls(mode: Mode) {
    let c = certs();
    let b = backend();
    let gw = start(&config(&c, &b, ""), mode);
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /p HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(
        answer,
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 41\r\n\
         connection: close\r\n\r\nplain HTTP request sent to the HTTPS port"
    );
    // A ClientHello one byte long, a record of an unknown type, a record longer than
    // TLS allows.
    let garbage: [&[u8]; 3] = [b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", &[0u8; 64], b"\x16\x03\x03\xff\xff"];
    for garbage in garbage {
        let started = Instant::now();
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(garbage).unwrap();
        let mut back = Vec::new();
        let _ = s.read_to_end(&mut back);
        // A TLS alert record (21), then the close.
        assert_eq!(back.first(), Some(&21), "{garbage:?}: {back:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{garbage:?}");
    }
    let url = format!("https://localhost:{}/p", gw.addr.port());
    assert_eq!(curl(&c.ca_file, &[url], &[]), "{\"a\":1}|200|1\n");
    assert!(b.requests().iter().all(|s| s.head.starts_with("GET /p ")));
}

/// One kept-alive connection driven through OpenSSL's memory BIOs (the set-up and
/// `ask` and `ending` shared by [`IDLE_CLIENT`], [`IDLE_CLOSE_CLIENT`] and [`IDLE_JUNK_CLIENT`]).
const IDLE_CLIENT_BASE: &str = r#"
import json, socket, ssl, sys, time
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(inc, out, server_hostname="localhost")
s = socket.create_connection(("127.0.0.1", port), timeout=10)
def flush(split=False):
    data = out.read()
    if split:
        s.sendall(data[:len(data) // 2]); time.sleep(0.4); s.sendall(data[len(data) // 2:])
    elif data:
        s.sendall(data)
def more():
    chunk = s.recv(65536)
    if not chunk:
        raise EOFError("the gateway closed the connection")
    inc.write(chunk)
while True:
    try:
        tls.do_handshake()
        break
    except ssl.SSLWantReadError:
        flush(); more()
flush()
def ask(split):
    tls.write(b"GET /p HTTP/1.1\r\nHost: localhost\r\n\r\n")
    flush(split)
    got = b""
    while True:
        try:
            got += tls.read(65536)
        except ssl.SSLWantReadError:
            more(); continue
        head, _, body = got.partition(b"\r\n\r\n")
        length = [l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
        if length and len(body) >= int(length[0]):
            return head.split(b"\r\n")[0].decode() + " " + body.decode()
def ending():
    """How the session ends (within 10 s), and after how long."""
    started, end = time.monotonic(), None
    while end is None and time.monotonic() - started < 10:
        try:
            # An SSLObject reads b"" once the peer's close_notify has come.
            end = "more bytes" if tls.read(65536) else "close_notify"
        except ssl.SSLWantReadError:
            chunk = s.recv(65536)
            if chunk:
                inc.write(chunk)
            else:
                inc.write_eof()
        except ssl.SSLEOFError:
            end = "closed without close_notify"
        except ssl.SSLError as e:
            end = e.reason
        except Exception as e:
            end = f"{type(e).__name__}: {e}"
    return end, time.monotonic() - started
"#;

/// Three requests, each after a pause longer than core's busy gap (a client that is
/// not busy), the third's record sent in two halves 400 ms apart. Prints the three
/// answers' status lines and bodies.
const IDLE_CLIENT: &str = r#"
answers = []
try:
    for split in (False, False, True):
        time.sleep(0.4)
        answers.append(ask(split))
except Exception as e:
    answers.append(f"{type(e).__name__}: {e}")
print(json.dumps(answers))
"#;

/// `python3 -c IDLE_CLIENT_BASE + script PORT CA`, its output piped.
fn idle_client(script: &str, gw: &Gw, c: &Certs) -> std::process::Child {
    Command::new("python3")
        .arg("-c")
        .arg(format!("{IDLE_CLIENT_BASE}{script}"))
        .arg(gw.addr.port().to_string())
        .arg(&c.ca_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3")
}

const IDLE_ANSWER: &str = r#"HTTP/1.1 200 OK {\"a\":1}"#;

/// A client that pauses between requests on a kept-alive HTTPS connection, and sends
/// a request's record in two parts with a pause between: each answered whole. Exact
/// answers, one connection, three requests at the backend.
fn idle_https_connection(mode: Mode) {
    let c = certs();
    let b = backend();
    let gw = start(&config(&c, &b, ""), mode);
    let out = idle_client(IDLE_CLIENT, &gw, &c).wait_with_output().expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(r#"["{IDLE_ANSWER}", "{IDLE_ANSWER}", "{IDLE_ANSWER}"]"#)
    );
    assert_eq!(b.requests().len(), 3);
}

/// One request after a pause, then nothing until the gateway closes the connection at
/// its idle timeout: how the session ended (a close_notify, or the TCP close alone) and
/// after how long.
const IDLE_CLOSE_CLIENT: &str = r#"
time.sleep(0.4)
answer = ask(False)
end, took = ending()
print(json.dumps([answer, end, 0.5 < took < 5]))
"#;

/// [`IDLE_CLOSE_CLIENT`]'s output: its one request answered, then a close_notify
/// between 0.5 and 5 s later; one request at the backend.
fn closed_with_close_notify(out: std::process::Output, b: &Backend) {
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(r#"["{IDLE_ANSWER}", "close_notify", true]"#),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(b.requests().len(), 1);
}

/// An idle HTTPS connection (waiting for its next request holding no buffer) that
/// reaches its idle timeout ends its session with a close_notify, as a busy one does:
/// the wait is ended to write it.
fn idle_https_connection_times_out_with_close_notify(mode: Mode) {
    let c = certs();
    let b = backend();
    let cfg = config(&c, &b, "").replacen(r#"{"version": 3,"#, r#"{"version": 3, "idle_timeout": "1s","#, 1);
    let gw = start(&cfg, mode);
    closed_with_close_notify(idle_client(IDLE_CLOSE_CLIENT, &gw, &c).wait_with_output().expect("python3"), &b);
}

/// As above when the gateway stops instead: the idle connection closes (a second
/// after its last answer) with a close_notify, and the stop completes.
fn idle_https_connection_closes_with_close_notify_at_stop(mode: Mode) {
    let c = certs();
    let b = backend();
    let mut gw = start(&config(&c, &b, ""), mode);
    let client = idle_client(IDLE_CLOSE_CLIENT, &gw, &c);
    // Its request is answered about 0.4 s in; it then waits.
    std::thread::sleep(Duration::from_millis(1200));
    let stopping = gw.stop_async();
    let out = client.wait_with_output().expect("python3");
    stopping.join().expect("the stop completes");
    closed_with_close_notify(out, &b);
}

/// One request, a pause past the busy gap (the connection then waits for its client),
/// then plaintext where a TLS record should come: how the session ended.
const IDLE_JUNK_CLIENT: &str = r#"
time.sleep(0.4)
answer = ask(False)
time.sleep(0.4)
s.sendall(b"GET /p HTTP/1.1\r\nHost: localhost\r\n\r\n")
print(json.dumps([answer, ending()[0]]))
"#;

/// Bytes that are not a TLS record, sent to a connection waiting for its next request:
/// the session fails with rustls' alert (the client reads it) and the connection
/// closes; the junk never reaches the backend.
fn junk_after_an_idle_wait_is_refused_with_an_alert(mode: Mode) {
    let c = certs();
    let b = backend();
    let gw = start(&config(&c, &b, ""), mode);
    let out = idle_client(IDLE_JUNK_CLIENT, &gw, &c).wait_with_output().expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(r#"["{IDLE_ANSWER}", "TLSV1_ALERT_DECODE_ERROR"]"#),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(b.requests().len(), 1);
}

every_driver!(
    https_listener,
    versions_and_suites,
    mutual_tls,
    not_tls,
    idle_https_connection,
    idle_https_connection_times_out_with_close_notify,
    idle_https_connection_closes_with_close_notify_at_stop,
    junk_after_an_idle_wait_is_refused_with_an_alert
);

/// A listener that cannot serve is a configuration error with its JSON path.
#[test]
fn bad_listener_tls_is_a_check_error() {
    let c = certs();
    let (_, other_key) = c.pki.leaf("other", &["localhost"], Some(&c.ca), false);
    let junk = c.pki.write("junk.pem", "not a key\n");
    let (cert, key) = (c.cert.display().to_string(), c.key.display().to_string());
    let cases = [
        (
            r#""public_key": "/nonexistent/cert.pem", "private_key": "/nonexistent/key.pem""#.to_string(),
            r#"tls.public_key: cannot read "/nonexistent/cert.pem": No such file or directory (os error 2)"#
                .to_string(),
        ),
        (
            format!(r#""public_key": "{cert}", "private_key": "{}""#, junk.display()),
            format!(r#"tls.private_key: "{}": no private key in it"#, junk.display()),
        ),
        (
            format!(r#""keys": [{{"public_key": "{cert}", "private_key": "{}"}}]"#, other_key.display()),
            format!(r#"tls.keys[0].private_key: the key does not go with the certificate "{cert}""#),
        ),
        (format!(r#""public_key": "{cert}""#), "tls.private_key: missing: public_key needs its private_key".into()),
        (r#""min_version": "TLS12""#.into(), "tls.public_key: missing: the certificate (public_key)".into()),
        (
            format!(r#""public_key": "{cert}", "private_key": "{key}", "cipher_suites": [10, 47]"#),
            "tls.cipher_suites: none of [10, 47] is a cipher suite rustls offers".into(),
        ),
        (
            format!(r#""public_key": "{cert}", "private_key": "{key}", "cipher_suites": ["x"]"#),
            "tls.cipher_suites[0]: expected a cipher suite number from 0 to 65535".into(),
        ),
        (
            format!(
                r#""public_key": "{cert}", "private_key": "{key}", "enable_mtls": true, "ca_certs": ["{}"]"#,
                junk.display()
            ),
            format!(r#"tls.ca_certs[0]: "{}": no certificate in it"#, junk.display()),
        ),
    ];
    for (tls, want) in cases {
        let cfg = format!(r#"{{"version": 3, "tls": {{{tls}}}, "endpoints": []}}"#);
        let err = match sluice_core::Gateway::load_with(&cfg, &files_env(ProxyEnv::default())) {
            Ok(_) => panic!("accepted: {tls}"),
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with(&want), "{err}\nwanted: {want}");
    }
    // `disabled`: plain HTTP, no files read.
    let cfg = r#"{"version": 3, "tls": {"disabled": true, "public_key": "/nonexistent", "private_key": "/nonexistent"}, "endpoints": []}"#;
    let gw = sluice_core::Gateway::load_with(cfg, &files_env(ProxyEnv::default()));
    assert!(gw.is_ok_and(|g| g.gateway.server_tls.is_none()));
}
