//! The cost of a client plugin on a backend call: one request through the exchange
//! (dispatch, the call written, the backend's answer decoded and shaped, the reply),
//! with no plugin, with the example `hello` plugin (a proxy-wasm module on wasmtime)
//! letting the call through, and with it answering the call itself.
//!
//! `cargo bench --bench plugin` (builds examples/plugins for wasm32-wasip1 first).

use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method, StatusCode};
use sluice_core::Gateway;
use sluice_core::gateway::dispatch::Dispatch;
use sluice_core::gateway::exchange::{Action, Exchange};
use sluice_core::gateway::upstream::Balancer;
use sluice_core::http1::Head;
use sluice_core::request::{ClientRequest, RequestBody};

fn plugins() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip1", "--manifest-path"])
        .arg(root.join("examples/plugins/Cargo.toml"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "examples/plugins did not build (rustup target add wasm32-wasip1)");
    root.join("examples/plugins/target/wasm32-wasip1/release")
}

fn gateway(with_plugin: bool) -> Gateway {
    let binding = if with_plugin {
        r#", "extra_config": {"plugin/http-client": {"name": "hello", "hello": {"path": "/users/hijack-me"}}}"#
    } else {
        ""
    };
    let config = format!(
        r#"{{"version": 3, "host": ["http://users:8080"], "plugin": {{"folder": "{}", "pattern": ".wasm"}},
        "endpoints": [{{"endpoint": "/u/{{id}}", "input_headers": ["Accept", "X-Tenant"],
          "backend": [{{"url_pattern": "/users/{{id}}", "group": "user"{binding}}}]}}]}}"#,
        plugins().display()
    );
    let mut gw = Gateway::load(&config).unwrap().gateway;
    let library = sluice_plugins::Library::load(gw.config.plugin.as_ref()).unwrap();
    library.bind(&mut gw).unwrap();
    gw
}

/// One request served: the reply's body length.
fn serve(gw: &Gateway, lb: &Balancer, req: ClientRequest, head: &mut Vec<u8>) -> usize {
    let Dispatch::Endpoint(route) = gw.dispatch(&req.method, req.path(), req.query()) else { unreachable!() };
    let mut ex = Exchange::new(gw, route, req, (Instant::now(), std::time::SystemTime::now()));
    loop {
        match ex.poll(lb) {
            Action::Call(call) => {
                head.clear();
                ex.write_head(&call, head).unwrap();
                ex.handle_response(call.id, StatusCode::OK, HeaderMap::new(), br#"{"id":42,"name":"Ada"}"#.to_vec());
            }
            Action::Respond(reply) => return reply.body.len(),
            other => unreachable!("{other:?}"),
        }
    }
}

fn bench(c: &mut Criterion) {
    let request = |path: &str| ClientRequest {
        method: Method::GET,
        path: path.into(),
        query: None,
        headers: Head::from_fields(
            [("host", "api.example.com"), ("accept", "application/json"), ("x-tenant", "acme")]
                .map(|(n, v)| (n, v.as_bytes())),
        ),
        peer: "192.0.2.7".parse().unwrap(),
        ends: None,
        body: RequestBody::None,
        token: None,
    };
    let mut g = c.benchmark_group("backend_call");
    for (name, with_plugin, path) in
        [("no_plugin", false, "/u/42"), ("hello_passes", true, "/u/42"), ("hello_answers", true, "/u/hijack-me")]
    {
        let gw = gateway(with_plugin);
        let lb = Balancer::new(gw.backend_count);
        let mut head = Vec::with_capacity(512);
        g.bench_function(name, |b| {
            b.iter_batched(|| request(path), |req| black_box(serve(&gw, &lb, req, &mut head)), BatchSize::SmallInput)
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
