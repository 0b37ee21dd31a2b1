//! A whole client connection: any client bytes and any backend bytes, cut in any
//! pieces, with time passing, end in a closed connection, never a panic or a hang.
//! The first byte says where the client's bytes end and the backend's begin, the
//! second how big each piece delivered is (its low 6 bits) and, from 128 on, that the
//! connection is on the forward proxy's listener (the backend's bytes then also come
//! back through CONNECT tunnels).
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use sluice_core::Gateway;
use sluice_core::conn::{Connection, Input, Output, Session, Spliced};
use sluice_core::resolve::dns::DnsError;
use sluice_core::resolve::srv::{SrvRecord, SrvSet};
use sluice_core::ops::runtime::Runtime;
use sluice_core::serve::Listener;
use sluice_core::gateway::upstream::Balancer;

fn gateway() -> &'static Gateway {
    static GW: OnceLock<Gateway> = OnceLock::new();
    GW.get_or_init(|| {
        let config = r#"{"version": 3, "timeout": "1s", "read_header_timeout": "2s", "idle_timeout": "3s",
            "max_header_bytes": 4096, "echo_endpoint": true, "endpoints": [
            {"endpoint": "/a/{id}", "backend": [
                {"host": ["http://127.0.0.1:9001"], "url_pattern": "/x/{id}", "allow": ["a"]},
                {"host": ["http://127.0.0.1:9002"], "url_pattern": "/y", "group": "g"}]},
            {"endpoint": "/s", "extra_config": {"proxy": {"sequential": true}}, "backend": [
                {"host": ["http://127.0.0.1:9001"], "url_pattern": "/x"},
                {"host": ["http://127.0.0.1:9002"], "url_pattern": "/y/{resp0_a}"}]},
            {"endpoint": "/raw", "method": "POST", "output_encoding": "no-op", "backend": [
                {"host": ["http://127.0.0.1:9001"], "url_pattern": "/up", "encoding": "no-op"}]},
            {"endpoint": "/raw", "output_encoding": "no-op", "backend": [
                {"host": ["http://127.0.0.1:9001"], "url_pattern": "/down", "encoding": "no-op"}]},
            {"endpoint": "/srv/{id}", "backend": [
                {"host": ["_api._tcp.sluice.test"], "sd": "dns", "url_pattern": "/z/{id}"}]}],
            "extra_config": {"sluice/forward-proxy": {"auto_host_rewrite_header": "x-to", "timeout": "1s",
                "idle_timeout": "2s", "connect": {"enabled": true, "allowed_ports": ["1-65535"]},
                "egress": {"ports": ["1-65535"], "deny_hosts": ["*.denied.test"], "allow_cidrs": ["127.0.0.0/8"]}}}}"#;
        Gateway::load(config).expect("a valid config").gateway
    })
}

fuzz_target!(|input: &[u8]| {
    let (Some(&cut), Some(&step)) = (input.first(), input.get(1)) else { return };
    let rest = &input[2..];
    let split = (usize::from(cut) * rest.len() / 255).min(rest.len());
    let (client, backend) = rest.split_at(split);
    let forward = step >= 128;
    // Bit 6: the driver splices tunnels (the forward proxy's listener), or the admin
    // listener (otherwise).
    let splice = step & 64 != 0;
    let listener = match (forward, splice) {
        (true, _) => Listener::Forward,
        (false, true) => Listener::Admin,
        (false, false) => Listener::Gateway,
    };
    let step = usize::from(step % 64) + 1;
    let gw = gateway();
    let lb = Balancer::new(gw.backend_count);
    let rt = Runtime::new(gw);
    let t0 = Instant::now();
    let mut now = t0;
    let mut conn = Connection::accept(listener, gw, &lb, &rt, "192.0.2.1".parse().unwrap(), t0, UNIX_EPOCH);
    conn.splice_tunnels(splice);
    let mut tunnel = backend.chunks(step);
    let mut client = client.chunks(step);
    // Every backend connection answers with the same bytes, piece by piece.
    let mut backends: Vec<Option<std::slice::Chunks<'_, u8>>> = Vec::new();
    let mut ready: Vec<Input> = Vec::new();
    // An Output::AwaitClient is out: nothing else may use the client socket until it
    // is answered (a driver may hold both halves for it).
    let mut awaiting = false;
    for _ in 0..20_000 {
        while let Some(output) = conn.poll() {
            match output {
                Output::ReadClient(_) | Output::WriteClient(_) | Output::ShutdownClient | Output::AwaitClient
                    if awaiting =>
                {
                    panic!("the client socket was used while the connection waited for it")
                }
                Output::ReadClient(mut buf) => match client.next() {
                    Some(piece) => {
                        buf.extend_from_slice(piece);
                        ready.push(Input::ClientRead(buf, Ok(piece.len())));
                    }
                    // The client closes once it has said everything.
                    None => ready.push(Input::ClientRead(buf, Ok(0))),
                },
                Output::AwaitClient => {
                    awaiting = true;
                    // Sometimes the wait itself fails: the read that follows finds out.
                    let waited = if step % 3 == 0 { Err(std::io::ErrorKind::ConnectionReset.into()) } else { Ok(()) };
                    ready.push(Input::ClientReady(waited));
                }
                Output::WriteClient(bytes) => ready.push(Input::ClientWritten(bytes, Ok(()))),
                Output::ShutdownClient => ready.push(Input::ClientShutdown(Ok(()))),
                Output::Connect { id, pooled, addr, .. } => {
                    if backends.len() <= id {
                        backends.resize_with(id + 1, || None);
                    }
                    let idle = pooled && id % 2 == 1;
                    if addr.is_none() && !idle {
                        // A name, nothing idle: core resolves it and asks again.
                        ready.push(Input::NoIdle(id));
                    } else if backend.first() == Some(&b'!') {
                        ready.push(Input::ConnectFailed(id, std::io::ErrorKind::ConnectionRefused.into()));
                    } else {
                        backends[id] = Some(backend.chunks(step));
                        ready.push(Input::Connected(id, idle.then(Session::default)));
                    }
                }
                Output::ReadBackend { id, mut buf } => {
                    let piece = backends.get_mut(id).and_then(Option::as_mut).and_then(Iterator::next);
                    let n = piece.map_or(0, |p| {
                        buf.extend_from_slice(p);
                        p.len()
                    });
                    ready.push(Input::BackendRead(id, buf, Ok(n)));
                }
                Output::WriteBackend { id, bytes } => ready.push(Input::BackendWritten(id, bytes, Ok(()))),
                Output::PoolBackend { id, .. } | Output::CloseBackend { id } => {
                    if let Some(b) = backends.get_mut(id) {
                        *b = None;
                    }
                }
                Output::Log(line) => drop(line.to_string()),
                Output::Stats => ready.push(Input::Stats(Box::default())),
                // Names resolve to loopback (or fail, with the refusing backend).
                Output::Resolve { id, .. } => ready.push(Input::Resolved(
                    id,
                    if backend.first() == Some(&b'!') {
                        Err(DnsError::Failed("no such name".into()))
                    } else {
                        Ok(vec![[127, 0, 0, 1].into()])
                    },
                )),
                Output::Discover { id, .. } => ready.push(Input::Discovered(
                    id,
                    if backend.first() == Some(&b'!') {
                        Err(DnsError::Failed("no SRV records for _api._tcp.sluice.test".into()))
                    } else {
                        let records =
                            [SrvRecord { priority: 0, weight: 1, port: 9003, target: "api.sluice.test".into() }];
                        Ok(Arc::new(SrvSet::new(&records).expect("a target")))
                    },
                )),
                Output::OpenTunnel { .. } => ready.push(Input::TunnelOpened(Ok(()))),
                Output::ReadTunnel(mut buf) => {
                    let n = tunnel.next().map_or(0, |p| {
                        buf.extend_from_slice(p);
                        p.len()
                    });
                    ready.push(Input::TunnelRead(buf, Ok(n)));
                }
                Output::WriteTunnel(bytes) => ready.push(Input::TunnelWritten(bytes, Ok(()))),
                Output::ShutdownTunnel => ready.push(Input::TunnelShutdown(Ok(()))),
                // A piece starting with 0 finds the driver unable to splice.
                Output::Splice { up } => {
                    let piece = if up { client.next() } else { tunnel.next() };
                    let result = match piece {
                        Some([0, ..]) => Spliced::Unsupported,
                        Some(p) => Spliced::Moved(p.len()),
                        None => Spliced::Closed,
                    };
                    ready.push(Input::Spliced { up, result });
                }
                Output::Close => return,
            }
        }
        if ready.is_empty() {
            // Nothing to do but wait: time passes to the next deadline.
            match conn.poll_timeout() {
                Some(at) => {
                    now = at.max(now);
                    conn.handle(Input::Timeout, now);
                }
                None => panic!("the connection waits for nothing and never closes"),
            }
        } else {
            for input in ready.drain(..) {
                awaiting &= !matches!(input, Input::ClientReady(_));
                now += Duration::from_millis(1);
                conn.handle(input, now);
            }
        }
        assert!(now - t0 < Duration::from_secs(3600), "the connection outlived every deadline");
    }
    panic!("the connection did not close");
});
