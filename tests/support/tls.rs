//! HTTPS backends for the end-to-end suite: Python's `ssl` server (OpenSSL: a TLS
//! stack other than ours) with certificates made by rcgen. The server answers GET with
//! JSON naming the path, the TLS version and the client certificate's name, and says in
//! `X-Connection` which of its connections (1, 2, ...) carried the request, in
//! `X-Request` how many requests it has answered with this one (1, 2, ...: a request
//! that reached it is never left uncounted), in `X-Cipher` the cipher suite (OpenSSL's
//! name).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, date_time_ymd};

use super::{Reaped, Scratch};

pub const SERVER: &str = r#"
import itertools, json, os, ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
cert, key, client_ca = sys.argv[1], sys.argv[2], sys.argv[3]
connections = itertools.count(1)
requests = itertools.count(1)
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else None
    def setup(self):
        super().setup()
        self.connection_number = next(connections)
    def do_GET(self):
        served = os.environ.get("SERVE_DIR")
        if served and os.path.isfile(os.path.join(served, self.path.lstrip("/"))):
            with open(os.path.join(served, self.path.lstrip("/")), "rb") as f:
                body = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        peer = self.request.getpeercert()
        body = json.dumps({"path": self.path, "tls": self.request.version(),
                           "client": dict(x[0] for x in peer["subject"])["commonName"] if peer else None},
                          separators=(",", ":")).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Connection", str(self.connection_number))
        self.send_header("X-Request", str(next(requests)))
        self.send_header("X-Cipher", self.request.cipher()[0])
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
pub struct Server {
    _child: Reaped,
    pub port: u16,
}

pub fn serve(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Server {
    serve_with(cert, key, client_ca, &[])
}

/// [`serve`], closing a connection idle for `secs` (without a close_notify).
pub fn serve_closing_idle(cert: &Path, key: &Path, secs: f64) -> Server {
    serve_with(cert, key, None, &[secs.to_string()])
}

/// [`serve`], answering `GET /name` with the file `dir/name` when there is one (as
/// `application/json`).
pub fn serve_dir(cert: &Path, key: &Path, dir: &Path) -> Server {
    serve_env(cert, key, None, &[], Some(dir))
}

fn serve_with(cert: &Path, key: &Path, client_ca: Option<&Path>, more: &[String]) -> Server {
    serve_env(cert, key, client_ca, more, None)
}

fn serve_env(cert: &Path, key: &Path, client_ca: Option<&Path>, more: &[String], dir: Option<&Path>) -> Server {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SERVER)
        .arg(cert)
        .arg(key)
        .arg(client_ca.map_or("-".into(), |p| p.display().to_string()))
        .args(more)
        .envs(dir.map(|d| ("SERVE_DIR", d)))
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
pub struct Pki {
    pub dir: Scratch,
}

pub struct Issuer {
    pub cert: Certificate,
    pub key: KeyPair,
}

pub fn new_ca(name: &str) -> Issuer {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Issuer { cert: params.self_signed(&key).unwrap(), key }
}

impl Pki {
    pub fn new() -> Pki {
        Pki { dir: Scratch::new("tls") }
    }

    pub fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.dir.0.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// A leaf for `names`, signed by `by` (self-signed without), valid now unless
    /// `expired`: (certificate, key) paths.
    pub fn leaf(&self, file: &str, names: &[&str], by: Option<&Issuer>, expired: bool) -> (PathBuf, PathBuf) {
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
