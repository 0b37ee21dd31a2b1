//! HTTPS backends, on every driver: core's connection runs rustls, the drivers move
//! ciphertext. The backend is Python's `ssl` server (OpenSSL: a TLS stack other than
//! ours), with certificates made here by rcgen: a CA and its leaves, a self-signed
//! leaf, an expired one, one for another name, and a client CA for mutual TLS. Through
//! proxies, with `CONNECT` tunnels: real tinyproxy and squid, and scripted proxies for
//! what real ones do not do on demand (closing a tunnel in the middle).

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_core::call::proxy::ProxyEnv;
use support::proxies::{squid, tinyproxy};
use support::tls::{Pki, Server, new_ca, serve, serve_closing_idle};
use support::{Gw, Mode, files_env};

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
/// no-op and aggregation, TLS 1.3 by default, 1.2 when `max_version` says so, the suites `cipher_suites` names.
fn verified_backend(mode: Mode) {
    let pki = Pki::new();
    let ca = new_ca("Sluice test CA");
    let ca_file = pki.write("ca.crt", &ca.cert.pem());
    let (cert, key) = pki.leaf("localhost", &["localhost"], Some(&ca), false);
    let server = serve(&cert, &key, None);
    let tls = format!(r#"{{"ca_certs": ["{}"], "disable_system_ca_pool": true}}"#, ca_file.display());
    let gw = start(&config(server.port, &tls), mode);
    let mut carried = Vec::new();
    for _ in 0..3 {
        let r = gw.get("/p");
        assert_eq!((r.status, r.text()), (200, r#"{"path":"/raw?x=1","tls":"TLSv1.3","client":null}"#));
        carried.push(r.header("x-connection").unwrap().to_string());
    }
    // The TLS connection is pooled with its session: one connection carried them all.
    assert_eq!(carried, ["1", "1", "1"]);
    let r = gw.get("/agg");
    assert_eq!((r.status, r.text()), (200, r#"{"a":{"path":"/a","tls":"TLSv1.3","client":null}}"#));
    drop(gw);
    let tls12 = format!(r#"{{"ca_certs": ["{}"], "max_version": "TLS12"}}"#, ca_file.display());
    let gw = start(&config(server.port, &tls12), mode);
    assert_eq!(gw.get("/p").text(), r#"{"path":"/raw?x=1","tls":"TLSv1.2","client":null}"#);
    drop(gw);
    // cipher_suites, as Go numbers them: 49196 is ECDHE-ECDSA with AES-256-GCM (10, a
    // CBC suite rustls does not have, is ignored).
    for (suites, cipher) in
        [("[49196, 10]", "ECDHE-ECDSA-AES256-GCM-SHA384"), ("[49195]", "ECDHE-ECDSA-AES128-GCM-SHA256")]
    {
        let tls =
            format!(r#"{{"ca_certs": ["{}"], "max_version": "TLS12", "cipher_suites": {suites}}}"#, ca_file.display());
        let gw = start(&config(server.port, &tls), mode);
        let r = gw.get("/p");
        assert_eq!((r.status, r.header("x-cipher")), (200, Some(cipher)), "{suites}");
    }
}

/// A pooled TLS connection the backend closed while it was idle: the request that
/// finds it closed is sent again on a new connection, and answered.
fn stale_pooled_connection(mode: Mode) {
    let pki = Pki::new();
    let ca = new_ca("Sluice test CA");
    let ca_file = pki.write("ca.crt", &ca.cert.pem());
    let (cert, key) = pki.leaf("localhost", &["localhost"], Some(&ca), false);
    let server = serve_closing_idle(&cert, &key, 0.2);
    let tls = format!(r#"{{"ca_certs": ["{}"]}}"#, ca_file.display());
    let gw = start(&config(server.port, &tls), mode);
    let r = gw.get("/p");
    assert_eq!((r.status, r.header("x-connection")), (200, Some("1")));
    std::thread::sleep(Duration::from_millis(600));
    let r = gw.get("/p");
    let want = r#"{"path":"/raw?x=1","tls":"TLSv1.3","client":null}"#;
    assert_eq!((r.status, r.text(), r.header("x-connection")), (200, want, Some("2")));
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

/// `/p` (no-op) and `/agg` on `https://localhost:port` trusting `ca`, reached through
/// a proxy named by `proxy` (a `"backend/http/client"` or `"plugin/http-client"`
/// member), with `return_error_msg` so that failures say why.
fn tunnel_config(port: u16, ca: &Path, proxy: &str) -> String {
    format!(
        r#"{{"version": 3, "host": ["https://localhost:{port}"],
            "client_tls": {{"ca_certs": ["{ca}"], "disable_system_ca_pool": true}},
            "extra_config": {{"router": {{"return_error_msg": true}}}},
            "endpoints": [
            {{"endpoint": "/p", "output_encoding": "no-op",
              "backend": [{{"url_pattern": "/raw?x=1", "encoding": "no-op", "extra_config": {{{proxy}}}}}]}},
            {{"endpoint": "/agg", "backend": [{{"url_pattern": "/a", "group": "a", "extra_config": {{{proxy}}}}}]}}]}}"#,
        ca = ca.display()
    )
}

/// A CA file and an HTTPS backend for `localhost` whose certificate it signed.
fn trusted_backend(pki: &Pki) -> (std::path::PathBuf, Server) {
    let ca = new_ca("Sluice test CA");
    let ca_file = pki.write("ca.crt", &ca.cert.pem());
    let (cert, key) = pki.leaf("localhost", &["localhost"], Some(&ca), false);
    (ca_file, serve(&cert, &key, None))
}

fn proxy_address(port: u16) -> String {
    format!(r#""backend/http/client": {{"proxy_address": "http://127.0.0.1:{port}"}}"#)
}

/// HTTPS backends through tinyproxy (`proxy_address`) and squid (the `http-proxy`
/// plugin): `CONNECT` then TLS inside the tunnel, exact answers, and the tunnel kept
/// and reused with its session (one backend connection carries every request).
fn https_through_proxies(mode: Mode) {
    let pki = Pki::new();
    let (ca_file, server) = trusted_backend(&pki);
    let tiny = tinyproxy("");
    let sq = squid();
    let plugin =
        format!(r#""plugin/http-client": {{"name": "http-proxy", "proxy_address": "http://127.0.0.1:{}"}}"#, sq.port);
    let mut carried = Vec::new();
    for proxy in [proxy_address(tiny.port), plugin] {
        let gw = start(&tunnel_config(server.port, &ca_file, &proxy), mode);
        let mut seen = Vec::new();
        for _ in 0..3 {
            let r = gw.get("/p");
            assert_eq!((r.status, r.text()), (200, r#"{"path":"/raw?x=1","tls":"TLSv1.3","client":null}"#), "{proxy}");
            seen.push(r.header("x-connection").unwrap().to_string());
        }
        let r = gw.get("/agg");
        assert_eq!((r.status, r.text()), (200, r#"{"a":{"path":"/a","tls":"TLSv1.3","client":null}}"#), "{proxy}");
        assert!(seen.iter().all(|c| *c == seen[0]), "{proxy}: one tunnel for all: {seen:?}");
        carried.push(seen[0].clone());
    }
    // Each proxy opened its own connection to the backend: the requests went through it.
    assert_eq!(carried, ["1", "2"]);
}

/// Proxies that refuse the tunnel fail the call with what they said: tinyproxy
/// allowing CONNECT to port 443 only (403), and asking for credentials (407). Nothing
/// reaches the backend.
fn proxy_refuses_connect(mode: Mode) {
    let pki = Pki::new();
    let (ca_file, server) = trusted_backend(&pki);
    let port_443_only = tinyproxy("ConnectPort 443");
    let gw = start(&tunnel_config(server.port, &ca_file, &proxy_address(port_443_only.port)), mode);
    let r = gw.get("/p");
    let said = format!(
        "[GET /raw]: https://localhost:{sp}/raw: proxy http://127.0.0.1:{} (proxy_address) could not open a tunnel to localhost:{}: it answered CONNECT with 403 Access violation",
        port_443_only.port,
        server.port,
        sp = server.port
    );
    assert_eq!((r.status, r.text()), (502, said.as_str()));
    let r = gw.get("/agg");
    assert_eq!(r.status, 500);
    assert!(r.text().contains("it answered CONNECT with 403"), "{}", r.text());
    drop(gw);
    let guarded = tinyproxy("BasicAuth sluice s3cr3t");
    let gw = start(&tunnel_config(server.port, &ca_file, &proxy_address(guarded.port)), mode);
    let r = gw.get("/p");
    let said = format!(
        "[GET /raw]: https://localhost:{sp}/raw: proxy http://127.0.0.1:{} (proxy_address) could not open a tunnel to localhost:{}: it answered CONNECT with 407 Proxy Authentication Required (the proxy wants credentials: put them in its URL)",
        guarded.port,
        server.port,
        sp = server.port
    );
    assert_eq!((r.status, r.text()), (502, said.as_str()));
    drop(gw);
    let with =
        format!(r#""backend/http/client": {{"proxy_address": "http://sluice:s3cr3t@127.0.0.1:{}"}}"#, guarded.port);
    let gw = start(&tunnel_config(server.port, &ca_file, &with), mode);
    let r = gw.get("/p");
    assert_eq!((r.status, r.text()), (200, r#"{"path":"/raw?x=1","tls":"TLSv1.3","client":null}"#));
    // The refused attempts never reached the backend: this is its first connection.
    assert_eq!(r.header("x-connection"), Some("1"));
}

/// A scripted proxy that records each CONNECT head and then does `then` with the
/// client socket (after answering 200). Serves `n` connections.
fn scripted_proxy(n: usize, then: fn(&mut std::net::TcpStream)) -> (u16, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(n) {
            let Ok(mut s) = stream else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).is_ok_and(|k| k == 1) {
                head.push(byte[0]);
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            then(&mut s);
        }
    });
    (port, rx)
}

/// A proxy that opens the tunnel and closes it during the TLS handshake, and one that
/// answers CONNECT with garbage: the call fails at once saying so, nothing hangs. The
/// CONNECT request itself is exact.
fn proxy_breaks_the_tunnel(mode: Mode) {
    let pki = Pki::new();
    let (ca_file, server) = trusted_backend(&pki);
    let (port, heads) = scripted_proxy(2, |s| {
        let _ = s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
        // The ClientHello, one TLS record, read whole (closing with bytes unread would
        // reset the connection instead), then closed in the middle of the handshake.
        let mut header = [0u8; 5];
        if s.read_exact(&mut header).is_ok() {
            let mut hello = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
            let _ = s.read_exact(&mut hello);
        }
    });
    let gw = start(&tunnel_config(server.port, &ca_file, &proxy_address(port)), mode);
    let started = Instant::now();
    let r = gw.get("/p");
    let said = format!(
        "[GET /raw]: https://localhost:{sp}/raw: proxy http://127.0.0.1:{port} (proxy_address) could not open a tunnel to localhost:{}: the tunnel closed during the TLS handshake",
        server.port,
        sp = server.port
    );
    assert_eq!((r.status, r.text()), (502, said.as_str()));
    assert_eq!(gw.get("/agg").status, 500);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let want = format!("CONNECT localhost:{0} HTTP/1.1\r\nhost: localhost:{0}\r\n\r\n", server.port);
    assert_eq!(heads.recv_timeout(Duration::from_secs(1)).unwrap(), want);
    drop(gw);
    let (port, _) = scripted_proxy(1, |s| drop(s.write_all(b"SSH-2.0-OpenSSH\r\n\r\n")));
    let gw = start(&tunnel_config(server.port, &ca_file, &proxy_address(port)), mode);
    let r = gw.get("/p");
    let said = format!(
        "[GET /raw]: https://localhost:{sp}/raw: proxy http://127.0.0.1:{port} (proxy_address) could not open a tunnel to localhost:{}: its answer is not HTTP (invalid HTTP version)",
        server.port,
        sp = server.port
    );
    assert_eq!((r.status, r.text()), (502, said.as_str()));
}

/// Endpoints on one gateway, each a no-op call to `host` with its own
/// `"backend/http/client"` members (`(endpoint, members)`), failures said in the body.
fn endpoints_config(host: &str, client_tls: &str, endpoints: &[(&str, String)]) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|(path, members)| {
            format!(
                r#"{{"endpoint": "{path}", "output_encoding": "no-op",
                    "backend": [{{"url_pattern": "/raw", "encoding": "no-op",
                                  "extra_config": {{"backend/http/client": {{{members}}}}}}}]}}"#
            )
        })
        .collect();
    format!(
        r#"{{"version": 3, "host": ["{host}"], {client_tls}
            "extra_config": {{"router": {{"return_error_msg": true}}}},
            "endpoints": [{}]}}"#,
        endpoints.join(",")
    )
}

/// A pooled connection is reused only under the TLS profile it was made with. On one
/// shard (one pool), again and again: an unverified connection to a server of an
/// unknown CA is never lent to the endpoint that verifies (it refuses the server, and
/// the server sees no request from it).
fn pooled_connections_keep_to_their_verification(mode: Mode) {
    let pki = Pki::new();
    let ca = new_ca("Sluice test CA");
    let ca_file = pki.write("ca.crt", &ca.cert.pem());
    let (self_signed, self_key) = pki.leaf("self", &["localhost"], None, false);
    let unknown_ca = serve(&self_signed, &self_key, None);
    let verify = format!(r#""client_tls": {{"ca_certs": ["{}"], "disable_system_ca_pool": true}}"#, ca_file.display());
    let cfg = endpoints_config(
        &format!("https://localhost:{}", unknown_ca.port),
        "",
        &[
            ("/tls/insecure", r#""client_tls": {"allow_insecure_connections": true}"#.to_string()),
            ("/tls/unknown-ca", verify.clone()),
        ],
    );
    let gw = start(&cfg, mode);
    for i in 1..=20 {
        let r = gw.get("/tls/insecure");
        assert_eq!((r.status, r.text()), (200, r#"{"path":"/raw","tls":"TLSv1.3","client":null}"#), "round {i}");
        // One pooled connection carried every answered request, and nothing else came.
        let (conn, n) = (r.header("x-connection"), r.header("x-request").map(str::to_string));
        assert_eq!((conn, n), (Some("1"), Some(i.to_string())), "round {i}");
        let r = gw.get("/tls/unknown-ca");
        assert_eq!(r.status, 502, "round {i}: {}", r.text());
        assert!(r.text().contains("UnknownIssuer"), "round {i}: {}", r.text());
    }
    assert_eq!(gw.get("/tls/insecure").header("x-request"), Some("21"));
}

/// A connection that presented a client certificate is never lent to the endpoint that
/// has none: on one shard, again and again, the server refuses that endpoint's own
/// connection, and sees no request from it.
fn pooled_connections_keep_to_their_client_certificate(mode: Mode) {
    let pki = Pki::new();
    let ca = new_ca("Sluice test CA");
    let ca_file = pki.write("ca.crt", &ca.cert.pem());
    let verify = format!(r#""client_tls": {{"ca_certs": ["{}"], "disable_system_ca_pool": true}}"#, ca_file.display());
    let clients = new_ca("Sluice client CA");
    let clients_file = pki.write("clients.crt", &clients.cert.pem());
    let (cert, key) = pki.leaf("localhost", &["localhost"], Some(&ca), false);
    let (client, client_key) = pki.leaf("gateway", &["gateway.sluice.test"], Some(&clients), false);
    let mtls = serve(&cert, &key, Some(&clients_file));
    let with_cert = format!(
        r#""client_tls": {{"ca_certs": ["{}"], "disable_system_ca_pool": true,
                           "client_certs": [{{"certificate": "{}", "private_key": "{}"}}]}}"#,
        ca_file.display(),
        client.display(),
        client_key.display()
    );
    let cfg = endpoints_config(
        &format!("https://localhost:{}", mtls.port),
        "",
        &[("/mtls/cert", with_cert), ("/mtls/nocert", verify)],
    );
    let gw = start(&cfg, mode);
    for i in 1..=20 {
        let r = gw.get("/mtls/cert");
        let want = r#"{"path":"/raw","tls":"TLSv1.3","client":"gateway.sluice.test"}"#;
        assert_eq!((r.status, r.text()), (200, want), "round {i}");
        let (conn, n) = (r.header("x-connection"), r.header("x-request").map(str::to_string));
        assert_eq!((conn, n), (Some("1"), Some(i.to_string())), "round {i}");
        let r = gw.get("/mtls/nocert");
        assert_eq!(r.status, 502, "round {i}: {}", r.text());
        // TLS 1.3: the handshake ends on the client's side before the server checks the
        // certificate; its refusal comes as an alert, or as the connection closing.
        let said = r.text();
        let refused = ["CertificateRequired", "closed", "reset"].iter().any(|w| said.contains(w));
        assert!(refused, "round {i}: {said}");
    }
    assert_eq!(gw.get("/mtls/cert").header("x-request"), Some("21"));
}

/// A tunnel is reused only by a call that would have opened the same one: through the
/// same proxy with the same credentials. On one shard, again and again, to one HTTPS
/// backend: through tinyproxy with its credentials (a tunnel, kept), through it with
/// wrong ones (tinyproxy refuses them with 401, the backend sees nothing), straight (a connection of its
/// own), through squid (a tunnel of its own).
fn pooled_tunnels_keep_to_their_route(mode: Mode) {
    let pki = Pki::new();
    let (ca_file, server) = trusted_backend(&pki);
    let guarded = tinyproxy("BasicAuth sluice s3cr3t");
    let sq = squid();
    let proxy = |url: String| format!(r#""proxy_address": "{url}""#);
    let client_tls =
        format!(r#""client_tls": {{"ca_certs": ["{}"], "disable_system_ca_pool": true}},"#, ca_file.display());
    let cfg = endpoints_config(
        &format!("https://localhost:{}", server.port),
        &client_tls,
        &[
            ("/via/tinyproxy", proxy(format!("http://sluice:s3cr3t@127.0.0.1:{}", guarded.port))),
            ("/via/tinyproxy-wrong", proxy(format!("http://sluice:wrong@127.0.0.1:{}", guarded.port))),
            ("/direct", r#""no_redirect": false"#.to_string()),
            ("/via/squid", proxy(format!("http://127.0.0.1:{}", sq.port))),
        ],
    );
    let gw = start(&cfg, mode);
    let body = r#"{"path":"/raw","tls":"TLSv1.3","client":null}"#;
    for i in 0..20 {
        let r = gw.get("/via/tinyproxy");
        assert_eq!((r.status, r.text(), r.header("x-connection")), (200, body, Some("1")), "round {i}");
        assert_eq!(r.header("x-request"), Some((3 * i + 1).to_string().as_str()), "round {i}");
        let r = gw.get("/via/tinyproxy-wrong");
        assert_eq!(r.status, 502, "round {i}: {}", r.text());
        assert!(r.text().contains("it answered CONNECT with 401 Unauthorized"), "round {i}: {}", r.text());
        let r = gw.get("/direct");
        assert_eq!((r.status, r.text(), r.header("x-connection")), (200, body, Some("2")), "round {i}");
        assert_eq!(r.header("x-request"), Some((3 * i + 2).to_string().as_str()), "round {i}");
        let r = gw.get("/via/squid");
        assert_eq!((r.status, r.text(), r.header("x-connection")), (200, body, Some("3")), "round {i}");
        assert_eq!(r.header("x-request"), Some((3 * i + 3).to_string().as_str()), "round {i}");
    }
}

every_driver!(
    pooled_connections_keep_to_their_verification,
    pooled_connections_keep_to_their_client_certificate,
    pooled_tunnels_keep_to_their_route,
    verified_backend,
    untrusted_backends,
    mutual_tls,
    plain_http_behind_https,
    stale_pooled_connection,
    https_through_proxies,
    proxy_refuses_connect,
    proxy_breaks_the_tunnel
);

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
        (
            r#"{"cipher_suites": [10, 47]}"#.to_string(),
            "client_tls.cipher_suites: none of [10, 47] is a cipher suite rustls offers".to_string(),
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
