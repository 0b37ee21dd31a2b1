//! HTTPS backends, on every driver: core's connection runs rustls, the drivers move
//! ciphertext. The backend is Python's `ssl` server (OpenSSL: a TLS stack other than
//! ours), with certificates made here by rcgen: a CA and its leaves, a self-signed
//! leaf, an expired one, one for another name, and a client CA for mutual TLS.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, date_time_ymd};
use sluice_core::proxy::ProxyEnv;
use support::{Gw, Mode, Reaped, Scratch, files_env};

const SERVER: &str = r#"
import json, ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
cert, key, client_ca = sys.argv[1], sys.argv[2], sys.argv[3]
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        peer = self.request.getpeercert()
        body = json.dumps({"path": self.path, "tls": self.request.version(),
                           "client": dict(x[0] for x in peer["subject"])["commonName"] if peer else None},
                          separators=(",", ":")).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
if client_ca != "-":
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(client_ca)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// A Python HTTPS server, stopped when dropped.
struct Server {
    _child: Reaped,
    port: u16,
}

fn serve(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Server {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SERVER)
        .arg(cert)
        .arg(key)
        .arg(client_ca.map_or("-".into(), |p| p.display().to_string()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().parse().unwrap_or_else(|_| panic!("the TLS server did not start: {line:?}"));
    Server { _child: Reaped(child), port }
}

/// Certificates and keys as PEM files in a scratch folder.
struct Pki {
    dir: Scratch,
}

struct Issuer {
    cert: Certificate,
    key: KeyPair,
}

fn new_ca(name: &str) -> Issuer {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Issuer { cert: params.self_signed(&key).unwrap(), key }
}

impl Pki {
    fn new() -> Pki {
        Pki { dir: Scratch::new("tls") }
    }

    fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.dir.0.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// A leaf for `names`, signed by `by` (self-signed without), valid now unless
    /// `expired`: (certificate, key) paths.
    fn leaf(&self, file: &str, names: &[&str], by: Option<&Issuer>, expired: bool) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let cert = match by {
            Some(ca) => params.signed_by(&key, &ca.cert, &ca.key).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        (self.write(&format!("{file}.crt"), &cert.pem()), self.write(&format!("{file}.key"), &key.serialize_pem()))
    }
}

/// `/p` (no-op) and `/agg` on `https://localhost:port`, with `client_tls` for the
/// backend (JSON object text, or empty for none).
fn config(port: u16, client_tls: &str) -> String {
    let extra = if client_tls.is_empty() {
        String::new()
    } else {
        format!(r#""backend/http/client": {{"client_tls": {client_tls}}}"#)
    };
    format!(
        r#"{{"version": 3, "host": ["https://localhost:{port}"], "endpoints": [
            {{"endpoint": "/p", "output_encoding": "no-op",
              "backend": [{{"url_pattern": "/raw?x=1", "encoding": "no-op", "extra_config": {{{extra}}}}}]}},
            {{"endpoint": "/agg", "backend": [{{"url_pattern": "/a", "group": "a", "extra_config": {{{extra}}}}}]}}]}}"#
    )
}

fn start(cfg: &str, mode: Mode) -> Gw {
    Gw::start_env(cfg, mode, &files_env(ProxyEnv::default()))
}

/// A backend whose certificate chains to a CA given in `ca_certs`: exact answers on
/// no-op and aggregation, TLS 1.3 by default, 1.2 when `max_version` says so.
fn verified_backend(mode: Mode) {
    let pki = Pki::new();
    let ca = new_ca("Sluice test CA");
    let ca_file = pki.write("ca.crt", &ca.cert.pem());
    let (cert, key) = pki.leaf("localhost", &["localhost"], Some(&ca), false);
    let server = serve(&cert, &key, None);
    let tls = format!(r#"{{"ca_certs": ["{}"], "disable_system_ca_pool": true}}"#, ca_file.display());
    let gw = start(&config(server.port, &tls), mode);
    for _ in 0..2 {
        let r = gw.get("/p");
        assert_eq!((r.status, r.text()), (200, r#"{"path":"/raw?x=1","tls":"TLSv1.3","client":null}"#));
    }
    let r = gw.get("/agg");
    assert_eq!((r.status, r.text()), (200, r#"{"a":{"path":"/a","tls":"TLSv1.3","client":null}}"#));
    drop(gw);
    let tls12 = format!(r#"{{"ca_certs": ["{}"], "max_version": "TLS12"}}"#, ca_file.display());
    let gw = start(&config(server.port, &tls12), mode);
    assert_eq!(gw.get("/p").text(), r#"{"path":"/raw?x=1","tls":"TLSv1.2","client":null}"#);
}

/// Certificates that must not be trusted fail the call (502 on no-op, 500 when
/// aggregating): an unknown CA, another host's name, an expired one. With
/// `allow_insecure_connections`, a self-signed one is taken.
fn untrusted_backends(mode: Mode) {
    let pki = Pki::new();
    let ca = new_ca("Sluice test CA");
    let ca_file = pki.write("ca.crt", &ca.cert.pem());
    let trusting = format!(r#"{{"ca_certs": ["{}"], "disable_system_ca_pool": true}}"#, ca_file.display());
    let (self_signed, self_key) = pki.leaf("self", &["localhost"], None, false);
    let (other, other_key) = pki.leaf("other", &["other.test"], Some(&ca), false);
    let (old, old_key) = pki.leaf("old", &["localhost"], Some(&ca), true);
    for (what, cert, key) in
        [("unknown CA", &self_signed, &self_key), ("other name", &other, &other_key), ("expired", &old, &old_key)]
    {
        let server = serve(cert, key, None);
        let gw = start(&config(server.port, &trusting), mode);
        assert_eq!(gw.get("/p").status, 502, "{what}");
        assert_eq!(gw.get("/agg").status, 500, "{what}");
    }
    let server = serve(&self_signed, &self_key, None);
    let gw = start(&config(server.port, r#"{"allow_insecure_connections": true}"#), mode);
    assert_eq!(gw.get("/p").text(), r#"{"path":"/raw?x=1","tls":"TLSv1.3","client":null}"#);
}

/// Mutual TLS: the backend asks for a client certificate from its own CA; with
/// `client_certs` it gets one, without it refuses the handshake.
fn mutual_tls(mode: Mode) {
    let pki = Pki::new();
    let ca = new_ca("Sluice test CA");
    let clients = new_ca("Sluice client CA");
    let ca_file = pki.write("ca.crt", &ca.cert.pem());
    let clients_file = pki.write("clients.crt", &clients.cert.pem());
    let (cert, key) = pki.leaf("localhost", &["localhost"], Some(&ca), false);
    let (client, client_key) = pki.leaf("gateway", &["gateway.sluice.test"], Some(&clients), false);
    let server = serve(&cert, &key, Some(&clients_file));
    let with = format!(
        r#"{{"ca_certs": ["{}"], "client_certs": [{{"certificate": "{}", "private_key": "{}"}}]}}"#,
        ca_file.display(),
        client.display(),
        client_key.display()
    );
    let gw = start(&config(server.port, &with), mode);
    let r = gw.get("/p");
    assert_eq!((r.status, r.text()), (200, r#"{"path":"/raw?x=1","tls":"TLSv1.3","client":"gateway.sluice.test"}"#));
    drop(gw);
    let without = format!(r#"{{"ca_certs": ["{}"]}}"#, ca_file.display());
    let gw = start(&config(server.port, &without), mode);
    assert_eq!(gw.get("/p").status, 502);
}

/// A backend that answers the ClientHello in plain HTTP (an http service behind an
/// https:// URL): the handshake fails at once, 502/500, nothing hangs.
fn plain_http_behind_https(mode: Mode) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let Ok(mut s) = stream else { return };
            let _ = std::io::Write::write_all(&mut s, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let gw = start(&config(port, r#"{"allow_insecure_connections": true}"#), mode);
    let started = std::time::Instant::now();
    assert_eq!(gw.get("/p").status, 502);
    assert_eq!(gw.get("/agg").status, 500);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
}

every_driver!(verified_backend, untrusted_backends, mutual_tls, plain_http_behind_https);

/// Files that cannot serve are configuration errors with their JSON path: missing, not
/// PEM, a key that does not go with its certificate.
#[test]
fn bad_tls_files_are_check_errors() {
    let pki = Pki::new();
    let ca = new_ca("Sluice test CA");
    let (cert, _) = pki.leaf("a", &["localhost"], Some(&ca), false);
    let (_, other_key) = pki.leaf("b", &["localhost"], Some(&ca), false);
    let junk = pki.write("junk.pem", "not a certificate\n");
    let cases = [
        (
            r#"{"ca_certs": ["/nonexistent/ca.pem"]}"#.to_string(),
            r#"client_tls.ca_certs[0]: cannot read "/nonexistent/ca.pem": No such file or directory (os error 2)"#
                .to_string(),
        ),
        (
            format!(r#"{{"ca_certs": ["{}"]}}"#, junk.display()),
            format!(
                r#"client_tls.ca_certs[0]: "{}": no certificate in it (PEM "BEGIN CERTIFICATE" expected)"#,
                junk.display()
            ),
        ),
        (
            format!(
                r#"{{"client_certs": [{{"certificate": "{}", "private_key": "{}"}}]}}"#,
                cert.display(),
                other_key.display()
            ),
            format!(r#"client_tls.client_certs[0]: the key does not go with the certificate "{}""#, cert.display()),
        ),
    ];
    for (tls, want) in cases {
        let cfg = format!(
            r#"{{"version": 3, "client_tls": {tls}, "host": ["https://localhost:1"],
                "endpoints": [{{"endpoint": "/a", "backend": [{{"url_pattern": "/x"}}]}}]}}"#
        );
        let err = sluice_core::Gateway::load_with(&cfg, &files_env(ProxyEnv::default())).unwrap_err().to_string();
        assert!(err.starts_with(&want), "{err}\nwanted: {want}");
    }
}
