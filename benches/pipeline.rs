//! The request pipeline in core: rendering a backend request, and shaping + merging
//! two 2 KB JSON bodies (allow + mapping + group) beside the same work done the
//! obvious way through `serde_json::Value` and through simd-json's borrowed value,
//! in the same run; and validating those bodies alone, our scanner beside simd-json's
//! tape (the project card's parser).
//!
//! `cargo bench --bench pipeline`

use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::Method;
use serde_json::{Map, Value};
use sluice_core::Gateway;
use sluice_core::config::OutputEncoding;
use sluice_core::gateway::dispatch::Dispatch;
use sluice_core::gateway::exchange::{Action, Exchange};
use sluice_core::gateway::response::{self, Shape};
use sluice_core::gateway::upstream::Balancer;
use sluice_core::http1::Head;
use sluice_core::request::{ClientRequest, RequestBody};

const CONFIG: &str = r#"{
  "version": 3, "host": ["http://users.internal:8080"],
  "endpoints": [{
    "endpoint": "/v1/users/{id}", "input_query_strings": ["lang"], "input_headers": ["X-Tenant", "Accept"],
    "backend": [
      {"url_pattern": "/users/{id}?fields=all", "allow": ["id", "name", "email", "address.city", "address.geo", "roles", "stats.followers"],
       "mapping": {"name": "full_name", "email": "contact"}, "group": "user"},
      {"url_pattern": "/orders?user={id}", "allow": ["count", "items", "page.next"], "mapping": {"items": "orders"}, "group": "orders"}
    ]}]}"#;

/// A user document of about 2 KB.
fn user_body() -> String {
    let mut extra = String::new();
    for i in 0..24 {
        extra.push_str(&format!(
            r#","pref_{i}":{{"enabled":{},"level":{i},"label":"preference number {i}"}}"#,
            i % 2 == 0
        ));
    }
    format!(
        r#"{{"id":12345678901234567890,"name":"Ada Lovelace","email":"ada@example.com","bio":"Mathematician and writer, chiefly known for her work on the Analytical Engine.","address":{{"street":"12 St James's Square","city":"London","zip":"SW1Y 4JH","country":"GB","geo":{{"lat":51.5074,"lng":-0.1338}}}},"roles":["admin","dev","reviewer"],"stats":{{"followers":1815,"following":52,"posts":117}},"created":"1815-12-10T00:00:00Z"{extra}}}"#
    )
}

/// An orders document of about 2 KB.
fn orders_body() -> String {
    let items: Vec<String> = (0..24)
        .map(|i| {
            format!(r#"{{"id":"ord-{i:04}","total":{i}.50,"currency":"EUR","status":"shipped","lines":{}}}"#, i % 4 + 1)
        })
        .collect();
    format!(
        r#"{{"count":24,"items":[{}],"page":{{"next":"/orders?page=2","prev":null,"size":12}},"generated":"2026-11-21T00:00:00Z","server":"orders-7"}}"#,
        items.join(",")
    )
}

fn sluice_shape_merge(shapes: &[&Shape; 2], bodies: &[&[u8]; 2], out: &mut Vec<u8>) {
    let a = shapes[0].apply(bodies[0]).unwrap_or_default();
    let b = shapes[1].apply(bodies[1]).unwrap_or_default();
    let merged = response::merge([a, b]);
    response::render(OutputEncoding::Json, None, &merged, out);
}

/// CONFIG's shaping, spelled out for the baselines.
const USER_ALLOW: &[&[&str]] =
    &[&["id"], &["name"], &["email"], &["address", "city"], &["address", "geo"], &["roles"], &["stats", "followers"]];
const USER_MAPPING: &[(&str, &str)] = &[("name", "full_name"), ("email", "contact")];
const ORDERS_ALLOW: &[&[&str]] = &[&["count"], &["items"], &["page", "next"]];
const ORDERS_MAPPING: &[(&str, &str)] = &[("items", "orders")];

/// The same work the obvious way: parse into serde_json::Value, prune, rename, wrap,
/// merge into a map, serialize.
mod naive {
    use super::*;

    fn allow(v: &mut Map<String, Value>, paths: &[&[&str]]) {
        let keys: Vec<String> = v.keys().cloned().collect();
        for k in keys {
            let subs: Vec<&[&str]> = paths.iter().filter(|p| p[0] == k).map(|p| &p[1..]).collect();
            if subs.is_empty() {
                v.shift_remove(&k);
            } else if subs.iter().any(|p| p.is_empty()) {
                // kept whole
            } else if let Some(Value::Object(inner)) = v.get_mut(&k) {
                allow(inner, &subs);
                if inner.is_empty() {
                    v.shift_remove(&k);
                }
            } else {
                v.shift_remove(&k);
            }
        }
    }

    pub(super) fn shape(
        body: &[u8],
        allow_list: &[&[&str]],
        mapping: &[(&str, &str)],
        group: &str,
    ) -> Map<String, Value> {
        let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(body) else { return Map::new() };
        allow(&mut m, allow_list);
        for (from, to) in mapping {
            if let Some(v) = m.shift_remove(*from) {
                m.insert(to.to_string(), v);
            }
        }
        let mut g = Map::new();
        g.insert(group.to_string(), Value::Object(m));
        g
    }

    pub(super) fn shape_merge(bodies: &[&[u8]; 2], out: &mut Vec<u8>) {
        let mut merged = shape(bodies[0], USER_ALLOW, USER_MAPPING, "user");
        let b = shape(bodies[1], ORDERS_ALLOW, ORDERS_MAPPING, "orders");
        for (k, v) in b {
            merged.insert(k, v);
        }
        serde_json::to_writer(out, &Value::Object(merged)).unwrap_or_default();
    }
}

/// The same work through simd-json: parse in place into a borrowed value (strings
/// borrowed from the buffer), prune, rename, wrap, merge, write.
mod simd {
    use std::borrow::Cow;

    use simd_json::Buffers;
    use simd_json::borrowed::{Object, Value};
    use simd_json::prelude::*;

    fn allow<'a>(v: &mut Object<'a>, paths: &[&[&str]]) {
        // The keys borrow the body (no copy unless escaped); `subs` allocates only for
        // the few keys that are allowed partly.
        let keys: Vec<Cow<'a, str>> = v.keys().cloned().collect();
        for k in keys {
            let subs: Vec<&[&str]> = paths.iter().filter(|p| p[0] == k).map(|p| &p[1..]).collect();
            if subs.is_empty() {
                v.remove(k.as_ref());
            } else if subs.iter().any(|p| p.is_empty()) {
                // kept whole
            } else if let Some(Value::Object(inner)) = v.get_mut(k.as_ref()) {
                allow(inner, &subs);
                if inner.is_empty() {
                    v.remove(k.as_ref());
                }
            } else {
                v.remove(k.as_ref());
            }
        }
    }

    fn shape<'a>(
        body: &'a mut [u8],
        buffers: &mut Buffers,
        allow_list: &[&[&str]],
        mapping: &[(&str, &str)],
        group: &'a str,
    ) -> Object<'a> {
        let Ok(Value::Object(mut m)) = simd_json::borrowed::to_value_with_buffers(body, buffers) else {
            return Object::new();
        };
        allow(&mut m, allow_list);
        for (from, to) in mapping {
            if let Some(v) = m.remove(*from) {
                m.insert(to.to_string().into(), v);
            }
        }
        let mut g = Object::new();
        g.insert(group.into(), Value::Object(m));
        g
    }

    /// `buffers`: simd-json's scratch space, kept from call to call as a gateway would.
    pub(super) fn shape_merge(bodies: &mut [Vec<u8>; 2], buffers: &mut Buffers, out: &mut Vec<u8>) {
        let [a, b] = bodies;
        let mut merged = shape(a, buffers, super::USER_ALLOW, super::USER_MAPPING, "user");
        let b = shape(b, buffers, super::ORDERS_ALLOW, super::ORDERS_MAPPING, "orders");
        for (k, v) in b {
            merged.insert(k, v);
        }
        Value::Object(Box::new(merged)).write(out).unwrap_or_default();
    }
}

fn bench(c: &mut Criterion) {
    let gw = Gateway::load(CONFIG).unwrap().gateway;
    let user = user_body();
    let orders = orders_body();
    let bodies: [&[u8]; 2] = [user.as_bytes(), orders.as_bytes()];
    let shapes = [&gw.endpoints[0].backends[0].shape, &gw.endpoints[0].backends[1].shape];

    // All must produce the same document, compared as values: the naive one parses
    // numbers into f64 and may differ in their digits, and simd-json's objects do not
    // keep key order (ours and serde_json's with preserve_order do), so key order is
    // not compared.
    let mut ours = Vec::new();
    sluice_shape_merge(&shapes, &bodies, &mut ours);
    let mut theirs = Vec::new();
    naive::shape_merge(&bodies, &mut theirs);
    let a: Value = serde_json::from_slice(&ours).unwrap();
    let b: Value = serde_json::from_slice(&theirs).unwrap();
    assert_eq!(a, b, "the two implementations disagree");
    let mut simd_out = Vec::new();
    let mut buffers = simd_json::Buffers::new(4096);
    simd::shape_merge(&mut [user.clone().into_bytes(), orders.clone().into_bytes()], &mut buffers, &mut simd_out);
    let c_: Value = serde_json::from_slice(&simd_out).unwrap();
    assert_eq!(a, c_, "simd-json's result disagrees");
    eprintln!("bodies: {} B and {} B; merged output {} B", user.len(), orders.len(), ours.len());

    let mut g = c.benchmark_group("shape_merge_2x2KB");
    g.bench_function("sluice", |b| {
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            out.clear();
            sluice_shape_merge(black_box(&shapes), black_box(&bodies), &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("serde_json_value", |b| {
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            out.clear();
            naive::shape_merge(black_box(&bodies), &mut out);
            black_box(out.len())
        })
    });
    // simd-json parses in place: each iteration gets fresh copies of the bodies, made
    // outside the timing.
    let copies = || [user.clone().into_bytes(), orders.clone().into_bytes()];
    g.bench_function("simd_json_value", |b| {
        let mut out = Vec::with_capacity(4096);
        b.iter_batched_ref(
            copies,
            |bodies| {
                out.clear();
                simd::shape_merge(black_box(bodies), &mut buffers, &mut out);
                black_box(out.len())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // Validation alone: every byte of both bodies checked as UTF-8 and JSON. Ours
    // gives the document's extent (UTF-8 checked by simdutf8, as `Shape::decode` does);
    // simd-json's tape also indexes every value.
    let mut g = c.benchmark_group("validate_2x2KB");
    g.bench_function("sluice_scan", |b| {
        b.iter(|| {
            let mut n = 0;
            for body in black_box(&bodies) {
                let text = simdutf8::basic::from_utf8(body).unwrap();
                n += sluice_core::gateway::json::parse_document(text).unwrap().len();
            }
            n
        })
    });
    g.bench_function("simd_json_tape", |b| {
        b.iter_batched_ref(
            copies,
            |bodies| {
                let mut n = 0;
                for body in bodies.iter_mut() {
                    n += simd_json::to_tape_with_buffers(black_box(body), &mut buffers).unwrap().0.len();
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let headers = Head::from_fields(
        [
            ("host", "api.example.com"),
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/132.0"),
            ("accept", "application/json"),
            ("x-tenant", "acme"),
            ("authorization", "Bearer abc.def.ghi"),
            ("cookie", "session=0123456789abcdef"),
        ]
        .map(|(n, v)| (n, v.as_bytes())),
    );
    let request = ClientRequest {
        method: Method::GET,
        path: "/v1/users/42".into(),
        query: Some("lang=en&utm_source=mail".into()),
        headers,
        peer: "192.0.2.7".parse().unwrap(),
        ends: None,
        body: RequestBody::None,
        token: None,
    };
    let lb = Balancer::new(gw.backend_count);
    let now = Instant::now();
    c.bench_function("render_backend_request", |b| {
        let mut out = Vec::with_capacity(512);
        b.iter_batched(
            || request.clone(),
            |req| {
                let Dispatch::Endpoint(route) = gw.dispatch(&req.method, req.path(), req.query()) else {
                    unreachable!()
                };
                let mut ex = Exchange::new(&gw, route, req, (now, std::time::SystemTime::now()));
                let Action::Call(call) = ex.poll(&lb) else { unreachable!() };
                out.clear();
                ex.write_head(&call, &mut out).unwrap();
                black_box(out.len())
            },
            BatchSize::SmallInput,
        )
    });
}

/// The guards' own work on one request, beside nothing (each is skipped entirely by
/// an endpoint without it): CORS on a request from a page, the bot detector on a
/// browser's agent, the JSON schema on the 2 KB user document.
fn guards(c: &mut Criterion) {
    let loaded = Gateway::load(
        &serde_json::json!({"version": 3,
        "extra_config": {"security/cors": {"allow_origins": ["https://app.example", "https://*.example.org"],
            "expose_headers": ["X-Request-Id"], "allow_credentials": true},
          "security/bot-detector": {"deny": ["a", "b"], "patterns": ["(?i)bot", "spider", "crawl(er)?/"]}},
        "endpoints": [{"endpoint": "/u", "method": "POST",
            "extra_config": {"validation/json-schema": {"type": "object", "required": ["id", "name", "email"],
                "properties": {"name": {"type": "string"}, "email": {"type": "string"},
                    "roles": {"type": "array", "items": {"type": "string"}}, "address": {"type": "object"}}}},
            "backend": [{"host": ["http://api"], "url_pattern": "/x"}]}]})
        .to_string(),
    )
    .expect("a valid config");
    let gw = &loaded.gateway;
    let head = Head::from_fields([
        ("Host", &b"gw"[..]),
        ("User-Agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
        ("Origin", b"https://app.example"),
        ("Accept", b"application/json"),
    ]);
    let cors = gw.cors.as_ref().expect("cors");
    let bots = gw.bots.as_ref().expect("bots");
    let schema = gw.endpoints[0].schema.as_ref().expect("a schema");
    let body = user_body();
    assert_eq!(schema.check(body.as_bytes()), Ok(()), "the document meets the schema");
    let mut out = Vec::with_capacity(512);
    let mut g = c.benchmark_group("guards");
    g.bench_function("cors_request", |b| {
        b.iter(|| {
            out.clear();
            let mut note = None;
            black_box(cors.apply(&Method::GET, black_box(&head), &mut out, &mut note));
        })
    });
    g.bench_function("bot_detector", |b| b.iter(|| black_box(bots.is_bot(head.get("user-agent")))));
    // Two request checks on a request's view (building the view is the exchange's).
    use sluice_core::gateway::cel::{Phases, Site};
    let checks = Phases::compile(
        &[
            "req_method == 'GET'".to_string(),
            "req_params.Id.matches('^[0-9]+$') && 'acme' in req_headers['X-Tenant']".to_string(),
        ],
        Site::Endpoint,
        false,
    )
    .expect("checks")
    .request;
    let view = sluice_core::gateway::cel::RequestView {
        now: (1_750_000_000, 0),
        method: "GET".into(),
        path: "/users/7".into(),
        params: [("Id".to_string(), "7".to_string())].into(),
        headers: [("X-Tenant".to_string(), vec!["acme".to_string()])].into(),
        query: Default::default(),
    };
    assert_eq!(checks.check(&view), Ok(()));
    g.bench_function("cel_two_checks", |b| b.iter(|| black_box(checks.check(black_box(&view)))));
    g.bench_function("json_schema_2KB", |b| b.iter(|| black_box(schema.check(black_box(body.as_bytes())))));
    // Of which: the parse into the `serde_json::Value` the validator reads.
    g.bench_function("json_schema_2KB_parse_only", |b| {
        b.iter(|| black_box(serde_json::from_slice::<Value>(black_box(body.as_bytes())).is_ok()))
    });
    // The same Value through simd-json (the card's parser; it parses a mutable copy).
    g.bench_function("json_schema_2KB_parse_simd_json", |b| {
        b.iter_batched_ref(
            || body.as_bytes().to_vec(),
            |copy| black_box(simd_json::serde::from_slice::<Value>(copy).is_ok()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
    jwt(c);
}

/// `auth/validator` on one request: a token of the test fixtures (signed by Python's
/// `cryptography`) checked with RS256, ES256 and HS256, with two claims propagated.
fn jwt(c: &mut Criterion) {
    use sluice_core::gateway::jwt::{KeySet, KeySource, Validator};
    let tokens: Value = serde_json::from_str(include_str!("../core/tests/fixtures/jwt/tokens.json")).unwrap();
    let keys = KeySet::parse(include_bytes!("../core/tests/fixtures/jwt/keys.json")).unwrap();
    let wall = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_750_000_000);
    let mut g = c.benchmark_group("guards");
    for alg in ["RS256", "ES256", "HS256"] {
        let text = format!(
            r#"{{"version": 3, "endpoints": [{{"endpoint": "/a", "backend": [{{"host": ["http://b"], "url_pattern": "/"}}],
                "extra_config": {{"auth/validator": {{"alg": "{alg}", "jwk_local_path": "k", "audience": ["sluice"],
                  "roles": ["admin"], "propagate_claims": [["sub", "X-User"], ["tenant.id", "X-Tenant"]]}}}}}}]}}"#
        );
        let parsed = sluice_core::config::parse(&text).expect("a valid config");
        let v = Validator::compile(parsed.config.endpoints[0].jwt.as_ref().unwrap(), KeySource::fixed(keys.clone()))
            .unwrap();
        let head = Head::from_fields([
            ("Host", &b"gw"[..]),
            ("Authorization", format!("Bearer {}", tokens["tokens"][alg].as_str().unwrap()).as_bytes()),
        ]);
        assert!(v.check(&head, wall).is_ok(), "{alg}");
        g.bench_function(format!("jwt_{alg}"), |b| b.iter(|| black_box(v.check(black_box(&head), wall).is_ok())));
    }
    g.finish();
}

/// What the pipeline features cost a call that uses them: a flatmap filter against the
/// `allow`/`mapping` shaping it replaces, on the same 2 KB document; martian request
/// modifiers on a call; a circuit breaker letting a call through and counting it.
fn features(c: &mut Criterion) {
    let loaded = Gateway::load(
        &serde_json::json!({"version": 3, "host": ["http://api"], "endpoints": [{"endpoint": "/u", "backend": [
            {"url_pattern": "/a", "allow": ["id", "name", "address.city", "roles"], "mapping": {"name": "full_name"}},
            {"url_pattern": "/b", "extra_config": {"proxy": {"flatmap_filter": [
                {"type": "move", "args": ["name", "full_name"]},
                {"type": "del", "args": ["bio", "created", "stats", "address.street", "address.geo"]},
                {"type": "move", "args": ["roles.0", "first_role"]}]},
              "modifier/martian": {"fifo.Group": {"scope": ["request"], "modifiers": [
                {"header.Modifier": {"name": "X-Api-Version", "value": "2"}},
                {"header.Blacklist": {"names": ["Cookie"]}},
                {"querystring.Modifier": {"name": "lang", "value": "en"}}]}},
              "qos/circuit-breaker": {"interval": 60, "timeout": 10, "max_errors": 3}}}]}]})
        .to_string(),
    )
    .expect("a valid config");
    let gw = &loaded.gateway;
    let (plain, filtered) = (&gw.endpoints[0].backends[0], &gw.endpoints[0].backends[1]);
    let body = user_body();
    let mut out = Vec::with_capacity(4096);
    let mut g = c.benchmark_group("features");
    for (name, shape) in [("shape_allow_mapping", &plain.shape), ("shape_flatmap", &filtered.shape)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let entries = shape.apply(black_box(body.as_bytes())).expect("decodes");
                response::write_object(&entries, &mut out);
                black_box(out.len())
            })
        });
    }
    let martian = filtered.plugin.as_ref().expect("martian bound");
    let call = sluice_core::gateway::plugin::BackendRequest {
        method: Method::GET,
        path: "/b".into(),
        query: Some("lang=fr&page=2".into()),
        authority: "api".into(),
        headers: [("accept", "application/json"), ("cookie", "a=1")]
            .into_iter()
            .map(|(n, v)| (http::HeaderName::from_static(n), http::HeaderValue::from_static(v)))
            .collect(),
        body: Vec::new(),
        ..Default::default()
    };
    g.bench_function("martian_request", |b| {
        b.iter_batched(
            || call.clone(),
            |mut call| {
                martian.plugin.on_request(&mut call).expect("no fault");
                call
            },
            BatchSize::SmallInput,
        )
    });
    let breaker = filtered.breaker.as_ref().expect("a breaker");
    let now = Instant::now();
    g.bench_function("breaker_admit_and_count", |b| {
        b.iter(|| {
            let (ticket, _) = breaker.admit(now);
            breaker.record(ticket.expect("closed"), now, Some(true))
        })
    });
    g.finish();
}

criterion_group!(benches, bench, guards, features);
criterion_main!(benches);
