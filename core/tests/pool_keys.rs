//! Which pooled backend connection a call may reuse: the pool key names everything a
//! connection was made with (origin, TLS profile, server name, proxy and its
//! credentials), and TLS sessions are never resumed under another profile.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, HandshakeKind, ServerConfig, ServerConnection};
use sluice_core::Gateway;
use sluice_core::call::backend::{forward_pool_key, pool_key};
use sluice_core::call::proxy::Proxy;
use sluice_core::config::{ClientTls, HostAddr};
use sluice_core::plan::BackendHost;
use sluice_core::tls::{self, Environment, TlsTarget};

/// A CA, a client certificate it signed, and an environment that reads them by name.
fn env() -> Environment {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client =
        rcgen::CertificateParams::new(vec!["gateway.test".to_string()]).unwrap().signed_by(&client_key, &ca, &ca_key);
    let files: HashMap<&str, String> = HashMap::from([
        ("ca.pem", ca.pem()),
        ("client.crt", client.unwrap().pem()),
        ("client.key", client_key.serialize_pem()),
    ]);
    Environment {
        read_file: Box::new(move |path| files.get(path).map(|f| f.as_bytes().to_vec()).ok_or(format!("no {path}"))),
        ..Environment::default()
    }
}

/// One endpoint per backend `extra_config` (JSON object text), each calling `host`.
fn gateway(backends: &[(&str, &str)], env: &Environment) -> Gateway {
    let endpoints: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, (host, extra))| {
            format!(r#"{{"endpoint": "/e{i}", "backend": [{{"host": ["{host}"], "url_pattern": "/", "extra_config": {{{extra}}}}}]}}"#)
        })
        .collect();
    let text = format!(r#"{{"version": 3, "endpoints": [{}]}}"#, endpoints.join(","));
    Gateway::load_with(&text, env).unwrap_or_else(|e| panic!("{e}\n{text}")).gateway
}

fn host(gw: &Gateway, i: usize) -> &BackendHost {
    &gw.endpoints[i].backends[0].hosts[0]
}

fn profile_id(gw: &Gateway, i: usize) -> u64 {
    host(gw, i).tls.as_ref().expect("an https host").profile.id()
}

#[test]
fn the_key_names_origin_tls_profile_server_name_and_proxy() {
    let env = env();
    let tls = |json: &str| format!(r#""backend/http/client": {{"client_tls": {json}}}"#);
    let proxy = |url: &str| format!(r#""backend/http/client": {{"proxy_address": "{url}"}}"#);
    let tls_and_proxy =
        |json: &str, url: &str| format!(r#""backend/http/client": {{"client_tls": {json}, "proxy_address": "{url}"}}"#);
    let api = "https://api.test:8443";
    let backends = [
        (api, String::new()),                                  // 0: root (default) profile
        (api, tls(r#"{"allow_insecure_connections": true}"#)), // 1
        (api, tls("{}")),                                      // 2: equal to the default
        (api, tls(r#"{"ca_certs": ["ca.pem"], "disable_system_ca_pool": true}"#)), // 3
        (
            api,
            tls(r#"{"ca_certs": ["ca.pem"], "disable_system_ca_pool": true,
                    "client_certs": [{"certificate": "client.crt", "private_key": "client.key"}]}"#),
        ), // 4
        (api, tls(r#"{"max_version": "TLS12"}"#)),             // 5
        (api, tls(r#"{"cipher_suites": [4865]}"#)),            // 6
        (api, tls(r#"{"allow_insecure_connections": true}"#)), // 7: as 1
        ("http://api.test:8443", String::new()),               // 8
        (api, proxy("http://127.0.0.1:3128")),                 // 9
        (api, proxy("http://u:p@127.0.0.1:3128")),             // 10
        (api, proxy("http://u:other@127.0.0.1:3128")),         // 11
        ("http://api.test:8443", proxy("http://127.0.0.1:3128")), // 12
        ("http://api.test:8443", proxy("http://u:p@127.0.0.1:3128")), // 13
        ("http://other.test:80", proxy("http://u:p@127.0.0.1:3128")), // 14
        (api, proxy("http://127.0.0.1:3129")),                 // 15
        (api, tls_and_proxy(r#"{"allow_insecure_connections": true}"#, "http://127.0.0.1:3128")), // 16
        ("https://127.0.0.1:8443", String::new()),             // 17
        ("https://other.test:8443", String::new()),            // 18
    ];
    let backends: Vec<(&str, &str)> = backends.iter().map(|(h, e)| (*h, e.as_str())).collect();
    let gw = gateway(&backends, &env);
    let id = |i| profile_id(&gw, i);
    // Equal settings share a compiled profile (and so their connections); any
    // difference in verification, roots, client certificate, versions or suites is
    // another profile.
    assert_eq!((id(2), id(7), id(9), id(16), id(17), id(18)), (id(0), id(1), id(0), id(1), id(0), id(0)));
    let distinct = [id(0), id(1), id(3), id(4), id(5), id(6)];
    for (a, x) in distinct.iter().enumerate() {
        for y in &distinct[a + 1..] {
            assert_ne!(x, y, "profiles {distinct:?}");
        }
    }
    let tag = |i: usize| {
        let key = &host(&gw, i).proxy.as_ref().unwrap().pool_key;
        key.rsplit_once(" as ").map(|(_, t)| t.to_string()).unwrap()
    };
    let (p, other) = (tag(10), tag(11));
    assert_ne!(p, other);
    assert_eq!(tag(13), p);
    let want = [
        format!("https://api.test:8443 tls#{} sni api.test", id(0)),
        format!("https://api.test:8443 tls#{} sni api.test", id(1)),
        format!("https://api.test:8443 tls#{} sni api.test", id(0)),
        format!("https://api.test:8443 tls#{} sni api.test", id(3)),
        format!("https://api.test:8443 tls#{} sni api.test", id(4)),
        format!("https://api.test:8443 tls#{} sni api.test", id(5)),
        format!("https://api.test:8443 tls#{} sni api.test", id(6)),
        format!("https://api.test:8443 tls#{} sni api.test", id(1)),
        "http://api.test:8443".to_string(),
        format!("https://api.test:8443 tls#{} sni api.test via proxy 127.0.0.1:3128", id(0)),
        format!("https://api.test:8443 tls#{} sni api.test via proxy 127.0.0.1:3128 as {p}", id(0)),
        format!("https://api.test:8443 tls#{} sni api.test via proxy 127.0.0.1:3128 as {other}", id(0)),
        "proxy 127.0.0.1:3128".to_string(),
        format!("proxy 127.0.0.1:3128 as {p}"),
        format!("proxy 127.0.0.1:3128 as {p}"),
        format!("https://api.test:8443 tls#{} sni api.test via proxy 127.0.0.1:3129", id(0)),
        format!("https://api.test:8443 tls#{} sni api.test via proxy 127.0.0.1:3128", id(1)),
        format!("https://127.0.0.1:8443 tls#{} sni 127.0.0.1", id(0)),
        format!("https://other.test:8443 tls#{} sni other.test", id(0)),
    ];
    for (i, want) in want.iter().enumerate() {
        assert_eq!(&host(&gw, i).pool_key, want, "backend {i}");
    }
    // The key is the one function every path uses (redirect and SRV targets too).
    let h = host(&gw, 16);
    assert_eq!(pool_key(&h.addr, h.tls.as_ref(), h.proxy.as_ref()), h.pool_key);
    // The credentials never show in a key.
    for i in [10, 11, 13] {
        assert!(!host(&gw, i).pool_key.contains("dTpw") && !host(&gw, i).pool_key.contains("u:p"), "{i}");
    }
    // The forward proxy's connections are apart from every backend's.
    assert_eq!(forward_pool_key(&"127.0.0.1:80".parse().unwrap()), "forward 127.0.0.1:80");
}

#[test]
fn a_redirect_or_srv_target_gets_a_key_of_its_own_profile() {
    let env = env();
    let insecure = ClientTls { allow_insecure_connections: true, ..ClientTls::default() };
    let (a, b) = (tls::profile(Some(&insecure), &env).unwrap(), tls::profile(Some(&insecure), &env).unwrap());
    // Two compilations are two profiles (only the plan shares equal settings).
    assert_ne!(a.id(), b.id());
    let addr = HostAddr::parse("https://api.test").unwrap();
    let target = |p: &tls::TlsProfile, name: &str| TlsTarget {
        profile: p.clone(),
        server_name: ServerName::try_from(name.to_string()).unwrap(),
    };
    let via = Proxy::parse("http://10.0.0.1:3128", true, "proxy_address").unwrap();
    assert_eq!(
        pool_key(&addr, Some(&target(&a, "api.test")), None),
        format!("https://api.test:443 tls#{} sni api.test", a.id())
    );
    assert_ne!(
        pool_key(&addr, Some(&target(&a, "api.test")), None),
        pool_key(&addr, Some(&target(&b, "api.test")), None)
    );
    assert_ne!(
        pool_key(&addr, Some(&target(&a, "api.test")), None),
        pool_key(&addr, Some(&target(&a, "x.test")), None)
    );
    assert_eq!(
        pool_key(&addr, Some(&target(&a, "api.test")), Some(&via)),
        format!("https://api.test:443 tls#{} sni api.test via proxy 10.0.0.1:3128", a.id())
    );
    let plain = HostAddr::parse("http://api.test").unwrap();
    assert_eq!(pool_key(&plain, None, None), "http://api.test:80");
    assert_eq!(pool_key(&plain, None, Some(&via)), "proxy 10.0.0.1:3128");
}

/// Runs a handshake between `client` and `server` in memory, and the server's
/// session tickets after it; the client's error if it failed.
fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), rustls::Error> {
    for _ in 0..20 {
        let mut flight = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut flight).unwrap();
        }
        let mut rd = flight.as_slice();
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
            if server.process_new_packets().is_err() {
                break;
            }
        }
        let mut back = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut back).unwrap();
        }
        let mut rd = back.as_slice();
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets()?;
        }
        if flight.is_empty() && back.is_empty() {
            break;
        }
    }
    match client.is_handshaking() {
        true => Err(rustls::Error::General("the handshake did not finish".into())),
        false => Ok(()),
    }
}

#[test]
fn a_session_ticket_is_never_offered_under_another_profile() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let leaf = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let chain = vec![CertificateDer::from(leaf.cert.der().to_vec())];
    let key = PrivateKeyDer::try_from(leaf.key_pair.serialize_der()).unwrap();
    let server = Arc::new(ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key).unwrap());
    let env = env();
    let insecure = tls::profile(Some(&ClientTls { allow_insecure_connections: true, ..ClientTls::default() }), &env);
    let verifying = ClientTls { ca_certs: vec!["ca.pem".into()], disable_system_ca_pool: true, ..ClientTls::default() };
    let (insecure, verifying) = (insecure.unwrap(), tls::profile(Some(&verifying), &env).unwrap());
    let name = ServerName::try_from("localhost").unwrap();
    let connect = |profile: &tls::TlsProfile| {
        let mut client = ClientConnection::new(profile.config.clone(), name.clone()).unwrap();
        let mut srv = ServerConnection::new(server.clone()).unwrap();
        handshake(&mut client, &mut srv).map(|()| client.handshake_kind())
    };
    // Unverified, the self-signed server is taken, and its tickets kept.
    assert_eq!(connect(&insecure), Ok(Some(HandshakeKind::Full)));
    // The same profile resumes with them: the tickets are there to be (mis)used.
    assert_eq!(connect(&insecure), Ok(Some(HandshakeKind::Resumed)));
    // The verifying profile does a full handshake of its own and refuses the
    // certificate, every time: it never resumes the unverified session. (Two things
    // keep it so: each profile's ClientConfig has its own session store, and rustls
    // itself declines a ticket got under another verifier; this shows the outcome.)
    for _ in 0..3 {
        let refused = connect(&verifying).unwrap_err();
        assert!(matches!(refused, rustls::Error::InvalidCertificate(_)), "{refused:?}");
    }
}
