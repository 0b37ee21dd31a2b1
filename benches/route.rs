//! Route lookup among 1,000 endpoints (a mix of static paths and `{params}`).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use sluice_core::Gateway;
use sluice_core::plan::route::RouteMatch;

/// 1,000 endpoints over 100 resources: list, item, sub-list, sub-item, and writes.
fn thousand_endpoints() -> String {
    let mut endpoints = Vec::new();
    for r in 0..100 {
        for (method, path) in [
            ("GET", format!("/v1/resource{r}")),
            ("POST", format!("/v1/resource{r}")),
            ("GET", format!("/v1/resource{r}/{{id}}")),
            ("PUT", format!("/v1/resource{r}/{{id}}")),
            ("DELETE", format!("/v1/resource{r}/{{id}}")),
            ("GET", format!("/v1/resource{r}/{{id}}/items")),
            ("GET", format!("/v1/resource{r}/{{id}}/items/{{item}}")),
            ("GET", format!("/v2/resource{r}/search")),
            ("GET", format!("/v2/resource{r}/stats/daily")),
            ("GET", format!("/v2/resource{r}/{{id}}/history")),
        ] {
            endpoints.push(serde_json::json!({
                "endpoint": path,
                "method": method,
                "backend": [{"host": ["http://backend:8080"], "url_pattern": "/x", "method": method}],
            }));
        }
    }
    serde_json::json!({"version": 3, "endpoints": endpoints}).to_string()
}

fn route_lookup(c: &mut Criterion) {
    let gateway = match Gateway::load(&thousand_endpoints()) {
        Ok(l) => l.gateway,
        Err(e) => panic!("bench config refused: {e}"),
    };
    assert_eq!(gateway.endpoints.len(), 1000);
    let mut group = c.benchmark_group("route");
    let cases = [
        ("static", Method::GET, "/v2/resource57/stats/daily"),
        ("two_params", Method::GET, "/v1/resource57/12345/items/678"),
        ("not_found", Method::GET, "/v3/nothing/here"),
        ("method_not_allowed", Method::PATCH, "/v1/resource57/12345"),
    ];
    for (name, method, path) in cases {
        group.bench_function(name, |b| {
            b.iter(|| match gateway.route(black_box(&method), black_box(path)) {
                RouteMatch::Found { endpoint, params } => endpoint + params.len(),
                RouteMatch::NotFound => 0,
                RouteMatch::MethodNotAllowed { allow } | RouteMatch::Options { allow } => allow.len(),
                RouteMatch::Redirect { path, .. } => path.len(),
            })
        });
    }
    group.finish();
}

criterion_group!(benches, route_lookup);
criterion_main!(benches);
