//! The admin listener's pages (Envoy's convention: its own listener, by default
//! 127.0.0.1:9901): `/ready`, `/stats` (plain `name: value` lines), `/stats/prometheus`
//! (the Prometheus text exposition format) and `/config_dump` (the effective
//! configuration as JSON, secrets left out).
//!
//! The admin listener's connections run through [`crate::conn::Connection`] as every
//! other does (its codec, its deadlines, heads of at most [`MAX_HEAD`] bytes): it
//! asks [`route`] what a request wants, asks the driver for every shard's [`Stats`]
//! when the page shows them, and writes what [`answer`] gives. Every answer closes
//! the connection (`connection: close`), as before the pages ran through core.

use std::fmt::Write as _;

use http::{HeaderValue, Method, StatusCode};
use serde_json::{Value, json};

use crate::Gateway;
use crate::config::LookupFamily;
use crate::forward::breaker::Gauges;
use crate::ops::runtime::Runtime;
use crate::ops::stats::{Counts, LATENCY_BOUNDS_MS, Stats};
use crate::request::Reply;

/// Largest admin request head read (a longer one gets 431).
pub const MAX_HEAD: usize = 8192;

/// An admin page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Ready,
    Stats,
    Prometheus,
    ConfigDump,
}

impl Page {
    /// Whether the page shows the shards' counters (the connection asks the driver
    /// for them first: [`crate::io::Output::Stats`]).
    pub fn needs_stats(self) -> bool {
        matches!(self, Page::Stats | Page::Prometheus)
    }
}

/// What an admin request asks for: the page, or the answer it gets instead (an
/// unknown page, a method other than GET). The query string is ignored.
pub fn route(method: &Method, target: &str) -> Result<Page, Box<Reply>> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let page = match path {
        "/ready" => Page::Ready,
        "/stats" => Page::Stats,
        "/stats/prometheus" => Page::Prometheus,
        "/config_dump" => Page::ConfigDump,
        _ => {
            let body = "not found: the admin pages are /ready, /stats, /stats/prometheus, /config_dump\n";
            return Err(Box::new(Reply::text(StatusCode::NOT_FOUND, body)));
        }
    };
    if method != Method::GET {
        let mut reply = Reply::text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        reply.headers.insert(http::header::ALLOW, HeaderValue::from_static("GET"));
        return Err(Box::new(reply));
    }
    Ok(page)
}

/// The answer to `page`; `stats` is every shard's counters added up (only read by
/// pages that [`Page::needs_stats`]).
pub fn answer(gw: &Gateway, runtime: &Runtime, page: Page, stats: &Stats) -> Reply {
    match page {
        Page::Ready => Reply::text(StatusCode::OK, "LIVE\n"),
        Page::Stats => Reply::text(StatusCode::OK, &stats_text(gw, runtime, stats)),
        Page::Prometheus => {
            let body = prometheus(gw, runtime, stats).into_bytes();
            Reply::typed(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body)
        }
        Page::ConfigDump => {
            let mut body = serde_json::to_vec_pretty(&config_dump(gw)).unwrap_or_default();
            body.push(b'\n');
            Reply::typed(StatusCode::OK, "application/json", body)
        }
    }
}

/// The breaker counts of every destination, when there is a forward proxy.
fn gauges(gw: &Gateway, runtime: &Runtime) -> Vec<Gauges> {
    gw.forward.as_ref().map(|_| runtime.breakers().gauges()).unwrap_or_default()
}

/// Every backend's `qos/circuit-breaker`: (endpoint, backend, breaker).
fn breakers(gw: &Gateway) -> Vec<(usize, usize, &crate::gateway::breaker::Breaker)> {
    let mut out = Vec::new();
    for (i, ep) in gw.endpoints.iter().enumerate() {
        for (b, backend) in ep.backends.iter().enumerate() {
            if let Some(breaker) = &backend.breaker {
                out.push((i, b, breaker));
            }
        }
    }
    out
}

/// The metrics plugins defined, each `(plugin, name)` once, sorted.
fn plugin_metrics(gw: &Gateway) -> Vec<crate::gateway::plugin::Metric> {
    let mut out: Vec<_> = gw
        .endpoints
        .iter()
        .flat_map(|ep| ep.backends.iter())
        .filter_map(|b| b.plugin.as_ref())
        .flat_map(|p| p.plugin.metrics())
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.plugin == b.plugin && a.name == b.name);
    out
}

/// A breaker's state as a gauge: 0 closed, 1 open, 2 half-open.
fn state_code(state: crate::gateway::breaker::State) -> u64 {
    use crate::gateway::breaker::State;
    match state {
        State::Closed => 0,
        State::Open => 1,
        State::HalfOpen => 2,
    }
}

/// An endpoint's name in the counters: `METHOD path`.
fn endpoint_name(gw: &Gateway, i: usize) -> String {
    match gw.endpoints.get(i) {
        Some(e) => format!("{} {}", e.method, e.path),
        None => format!("endpoint {i}"),
    }
}

/// `/stats`: one `name: value` line per counter, sorted by name.
fn stats_text(gw: &Gateway, runtime: &Runtime, stats: &Stats) -> String {
    let mut lines: Vec<(String, u64)> = Vec::new();
    let d = &stats.dns;
    for (name, v) in [
        ("dns_query_attempt", d.dns_query_attempt),
        ("dns_query_success", d.dns_query_success),
        ("dns_query_failure", d.dns_query_failure),
        ("host_added", d.host_added),
        ("host_removed", d.host_removed),
        ("host_overflow", d.host_overflow),
        ("num_hosts", d.num_hosts),
    ] {
        lines.push((format!("dns_cache.{name}"), v));
    }
    if let Some(t) = &gw.tracer {
        let (queued, dropped, exported, failed) = t.spans.counts();
        for (name, v) in [("queued", queued), ("dropped", dropped), ("exported", exported), ("export_failed", failed)] {
            lines.push((format!("tracing.spans_{name}"), v));
        }
    }
    let counts = |lines: &mut Vec<(String, u64)>, prefix: &str, c: &Counts| {
        lines.push((format!("{prefix}.rq_total"), c.count));
        for (status, n) in c.sorted_statuses() {
            lines.push((format!("{prefix}.rq_{status}"), n));
        }
    };
    for i in 0..gw.endpoints.len() {
        let c = stats.endpoints.get(i).cloned().unwrap_or_default();
        counts(&mut lines, &format!("gateway.endpoint.{}", endpoint_name(gw, i)), &c);
    }
    counts(&mut lines, "gateway.unrouted", &stats.unrouted);
    for ((e, b), list) in &stats.calls {
        let mut list = list.clone();
        list.sort_unstable();
        for (code, n) in list {
            let code = if code == 0 { "failed".to_string() } else { code.to_string() };
            lines.push((format!("gateway.endpoint.{}.backend.{b}.call_{code}", endpoint_name(gw, *e)), n));
        }
    }
    for (i, b, breaker) in breakers(gw) {
        let (state, failures) = breaker.state();
        let p = format!("gateway.endpoint.{}.backend.{b}.circuit_breaker", endpoint_name(gw, i));
        lines.push((format!("{p}.state"), state_code(state)));
        lines.push((format!("{p}.consecutive_failures"), failures));
    }
    for m in plugin_metrics(gw) {
        use crate::gateway::plugin::MetricValue;
        let p = format!("plugin.{}.{}", m.plugin, m.name);
        match m.value {
            MetricValue::Counter(v) | MetricValue::Gauge(v) => lines.push((p, v)),
            MetricValue::Histogram { count, sum } => {
                lines.push((format!("{p}.count"), count));
                lines.push((format!("{p}.sum"), sum));
            }
        }
    }
    if let Some(f) = &gw.forward {
        lines.push(("forward.tunnels_open".into(), stats.tunnels_open()));
        lines.push(("forward.tunnels_total".into(), stats.tunnels_opened));
        lines.push(("forward.tunnel_bytes_up".into(), stats.tunnel_bytes_up));
        lines.push(("forward.tunnel_bytes_down".into(), stats.tunnel_bytes_down));
        lines.push(("forward.tunnel_bytes_spliced".into(), stats.tunnel_bytes_spliced));
        for (dest, c) in &stats.destinations {
            counts(&mut lines, &format!("forward.destination.{dest}"), c);
        }
        let t = &f.config.circuit_breakers;
        for g in gauges(gw, runtime) {
            let p = format!("forward.destination.{}", g.destination);
            for (name, v) in breaker_lines(&g, t) {
                lines.push((format!("{p}.{name}"), v));
            }
        }
    }
    lines.sort();
    let mut out = String::new();
    for (name, v) in lines {
        let _ = writeln!(out, "{name}: {v}");
    }
    out
}

/// A destination's breaker gauges and overflow counters, with Envoy's names.
fn breaker_lines(g: &Gauges, t: &crate::forward::breaker::Thresholds) -> Vec<(String, u64)> {
    let open = |n: u32, max: u32| u64::from(n >= max);
    let mut out = vec![
        ("circuit_breakers.cx_open".to_string(), open(g.connections, t.max_connections)),
        ("circuit_breakers.rq_pending_open".to_string(), open(g.pending, t.max_pending_requests)),
        ("circuit_breakers.rq_open".to_string(), open(g.requests, t.max_requests)),
        ("circuit_breakers.rq_retry_open".to_string(), open(g.retries, t.max_retries)),
        ("upstream_cx_overflow".to_string(), g.cx_overflow),
        ("upstream_rq_pending_overflow".to_string(), g.pending_overflow),
        ("upstream_rq_overflow".to_string(), g.rq_overflow),
        ("upstream_rq_retry_overflow".to_string(), g.retry_overflow),
    ];
    if t.track_remaining {
        let left = |n: u32, max: u32| u64::from(max.saturating_sub(n));
        out.extend([
            ("circuit_breakers.remaining_cx".to_string(), left(g.connections, t.max_connections)),
            ("circuit_breakers.remaining_pending".to_string(), left(g.pending, t.max_pending_requests)),
            ("circuit_breakers.remaining_rq".to_string(), left(g.requests, t.max_requests)),
            ("circuit_breakers.remaining_retries".to_string(), left(g.retries, t.max_retries)),
        ]);
    }
    out
}

/// Plugins' metrics: `sluice_plugin_counter`, `sluice_plugin_gauge`,
/// `sluice_plugin_histogram_count`/`_sum`, labelled by plugin and name.
fn plugin_prometheus(o: &mut String, gw: &Gateway) {
    use crate::gateway::plugin::MetricValue;
    let metrics = plugin_metrics(gw);
    type Pick = fn(&MetricValue) -> Option<u64>;
    let families: [(&str, &str, Pick); 4] = [
        ("sluice_plugin_counter", "counter", |v| match v {
            MetricValue::Counter(n) => Some(*n),
            _ => None,
        }),
        ("sluice_plugin_gauge", "gauge", |v| match v {
            MetricValue::Gauge(n) => Some(*n),
            _ => None,
        }),
        ("sluice_plugin_histogram_count", "counter", |v| match v {
            MetricValue::Histogram { count, .. } => Some(*count),
            _ => None,
        }),
        ("sluice_plugin_histogram_sum", "counter", |v| match v {
            MetricValue::Histogram { sum, .. } => Some(*sum),
            _ => None,
        }),
    ];
    for (family, kind, pick) in families {
        let rows: Vec<_> = metrics.iter().filter_map(|m| pick(&m.value).map(|v| (m, v))).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(o, "# TYPE {family} {kind}");
        for (m, v) in rows {
            let _ = writeln!(o, "{family}{{plugin=\"{}\",name=\"{}\"}} {v}", label(&m.plugin), label(&m.name));
        }
    }
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `/stats/prometheus`: the same counters, `sluice_` names, labels for what varies.
fn prometheus(gw: &Gateway, runtime: &Runtime, stats: &Stats) -> String {
    let mut o = String::new();
    let d = &stats.dns;
    for (name, v, kind) in [
        ("dns_query_attempt", d.dns_query_attempt, "counter"),
        ("dns_query_success", d.dns_query_success, "counter"),
        ("dns_query_failure", d.dns_query_failure, "counter"),
        ("host_added", d.host_added, "counter"),
        ("host_removed", d.host_removed, "counter"),
        ("host_overflow", d.host_overflow, "counter"),
        ("num_hosts", d.num_hosts, "gauge"),
    ] {
        let _ = writeln!(o, "# TYPE sluice_dns_cache_{name} {kind}\nsluice_dns_cache_{name} {v}");
    }
    if let Some(t) = &gw.tracer {
        let (queued, dropped, exported, failed) = t.spans.counts();
        for (name, v, kind) in [
            ("queued", queued, "gauge"),
            ("dropped_total", dropped, "counter"),
            ("exported_total", exported, "counter"),
            ("export_failed_total", failed, "counter"),
        ] {
            let _ = writeln!(o, "# TYPE sluice_tracing_spans_{name} {kind}\nsluice_tracing_spans_{name} {v}");
        }
    }
    // Gateway endpoints: requests by status, and the latency histogram.
    let _ = writeln!(o, "# TYPE sluice_gateway_requests_total counter");
    let mut rows: Vec<(String, String, &Counts)> = Vec::new();
    let none = Counts::default();
    for (i, e) in gw.endpoints.iter().enumerate() {
        rows.push((e.method.to_string(), e.path.clone(), stats.endpoints.get(i).unwrap_or(&none)));
    }
    rows.push(("-".to_string(), "(unrouted)".to_string(), &stats.unrouted));
    for (method, path, c) in &rows {
        for (status, n) in c.sorted_statuses() {
            let _ = writeln!(
                o,
                "sluice_gateway_requests_total{{method=\"{}\",endpoint=\"{}\",code=\"{status}\"}} {n}",
                label(method),
                label(path)
            );
        }
    }
    let _ = writeln!(o, "# TYPE sluice_gateway_backend_calls_total counter");
    for ((e, b), list) in &stats.calls {
        let Some(ep) = gw.endpoints.get(*e) else { continue };
        let mut list = list.clone();
        list.sort_unstable();
        for (code, n) in list {
            let code = if code == 0 { "failed".to_string() } else { code.to_string() };
            let _ = writeln!(
                o,
                "sluice_gateway_backend_calls_total{{method=\"{}\",endpoint=\"{}\",backend=\"{b}\",code=\"{code}\"}} {n}",
                label(ep.method.as_str()),
                label(&ep.path)
            );
        }
    }
    let _ = writeln!(o, "# TYPE sluice_gateway_request_duration_seconds histogram");
    for (method, path, c) in &rows {
        let labels = format!("method=\"{}\",endpoint=\"{}\"", label(method), label(path));
        histogram(&mut o, "sluice_gateway_request_duration_seconds", &labels, c);
    }
    let all = breakers(gw);
    if !all.is_empty() {
        let _ = writeln!(o, "# TYPE sluice_gateway_circuit_breaker_state gauge");
        for (i, b, breaker) in all {
            let ep = &gw.endpoints[i];
            let _ = writeln!(
                o,
                "sluice_gateway_circuit_breaker_state{{method=\"{}\",endpoint=\"{}\",backend=\"{b}\",name=\"{}\"}} {}",
                label(ep.method.as_str()),
                label(&ep.path),
                label(breaker.name()),
                state_code(breaker.state().0)
            );
        }
    }
    plugin_prometheus(&mut o, gw);
    let Some(f) = &gw.forward else { return o };
    let _ = writeln!(o, "# TYPE sluice_forward_requests_total counter");
    for (dest, c) in &stats.destinations {
        for (status, n) in c.sorted_statuses() {
            let _ =
                writeln!(o, "sluice_forward_requests_total{{destination=\"{}\",code=\"{status}\"}} {n}", label(dest));
        }
    }
    let _ = writeln!(o, "# TYPE sluice_forward_request_duration_seconds histogram");
    for (dest, c) in &stats.destinations {
        histogram(&mut o, "sluice_forward_request_duration_seconds", &format!("destination=\"{}\"", label(dest)), c);
    }
    let _ =
        writeln!(o, "# TYPE sluice_forward_tunnels_open gauge\nsluice_forward_tunnels_open {}", stats.tunnels_open());
    let _ = writeln!(
        o,
        "# TYPE sluice_forward_tunnels_total counter\nsluice_forward_tunnels_total {}",
        stats.tunnels_opened
    );
    let _ = writeln!(o, "# TYPE sluice_forward_tunnel_bytes_total counter");
    let _ = writeln!(o, "sluice_forward_tunnel_bytes_total{{direction=\"up\"}} {}", stats.tunnel_bytes_up);
    let _ = writeln!(o, "sluice_forward_tunnel_bytes_total{{direction=\"down\"}} {}", stats.tunnel_bytes_down);
    let _ = writeln!(
        o,
        "# TYPE sluice_forward_tunnel_bytes_spliced_total counter\nsluice_forward_tunnel_bytes_spliced_total {}",
        stats.tunnel_bytes_spliced
    );
    let t = &f.config.circuit_breakers;
    let all = gauges(gw, runtime);
    let mut families: Vec<(String, &'static str, Vec<String>)> = Vec::new();
    for g in &all {
        for (name, v) in breaker_lines(g, t) {
            let (family, kind) = match name.strip_prefix("circuit_breakers.") {
                Some(gauge) => (format!("sluice_forward_circuit_breakers_{gauge}"), "gauge"),
                None => (format!("sluice_forward_{name}_total"), "counter"),
            };
            let sample = format!("{family}{{destination=\"{}\"}} {v}", label(&g.destination));
            match families.iter_mut().find(|(f, _, _)| *f == family) {
                Some((_, _, samples)) => samples.push(sample),
                None => families.push((family, kind, vec![sample])),
            }
        }
    }
    for (family, kind, samples) in families {
        let _ = writeln!(o, "# TYPE {family} {kind}");
        for s in samples {
            let _ = writeln!(o, "{s}");
        }
    }
    o
}

fn histogram(o: &mut String, name: &str, labels: &str, c: &Counts) {
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BOUNDS_MS.iter().enumerate() {
        cumulative += c.buckets[i];
        let le = *bound as f64 / 1000.0;
        let _ = writeln!(o, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(o, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", c.count);
    let _ = writeln!(o, "{name}_sum{{{labels}}} {}", c.sum_micros as f64 / 1e6);
    let _ = writeln!(o, "{name}_count{{{labels}}} {}", c.count);
}

fn secs(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// `/config_dump`: the configuration in effect, defaults filled in. Left out: plugin
/// settings and anything from `extra_config` Sluice does not read (they may hold
/// credentials); backend hosts are shown as scheme, host and port (no user info).
pub fn config_dump(gw: &Gateway) -> Value {
    let c = &gw.config;
    let endpoints: Vec<Value> = gw
        .endpoints
        .iter()
        .map(|e| {
            let backends: Vec<Value> = e
                .backends
                .iter()
                .map(|b| {
                    let hosts: Vec<String> = b
                        .hosts
                        .iter()
                        .map(|h| format!("{}://{}:{}", h.addr.scheme.as_str(), h.addr.host, h.addr.port))
                        .collect();
                    json!({"host": hosts, "method": b.method.as_str(), "plugin": b.plugin.as_ref().is_some_and(|p| p.name != "modifier/martian")})
                })
                .collect();
            json!({"endpoint": e.path, "method": e.method.as_str(), "timeout": secs(e.timeout), "backend": backends})
        })
        .collect();
    let mut configs = vec![json!({
        "@type": "sluice.gateway",
        "name": c.name,
        "listen": std::net::SocketAddr::new(c.listen_ip, c.port).to_string(),
        "timeout": secs(c.timeout),
        "read_timeout": secs(c.read_timeout),
        "write_timeout": secs(c.write_timeout),
        "idle_timeout": secs(c.idle_timeout),
        "read_header_timeout": secs(c.read_header_timeout),
        "max_header_bytes": c.max_header_bytes,
        "max_idle_connections_per_host": c.max_idle_connections_per_host,
        "tls": c.tls.as_ref().is_some_and(|t| !t.disabled),
        "endpoints": endpoints,
    })];
    let dns = gw.dns_cache_config();
    if let Some(f) = &gw.forward {
        let fc = &f.config;
        let t = &f.config.circuit_breakers;
        let ports = |list: &[crate::config::PortRange]| -> Vec<String> {
            list.iter().map(|r| if r.0 == r.1 { r.0.to_string() } else { format!("{}-{}", r.0, r.1) }).collect()
        };
        configs.push(json!({
            "@type": "sluice.forward_proxy",
            "listen": std::net::SocketAddr::new(fc.listen_ip, fc.port).to_string(),
            "auto_host_rewrite_header": fc.auto_host_rewrite_header,
            "timeout": secs(fc.timeout),
            "idle_timeout": secs(fc.idle_timeout),
            "connect": {"enabled": fc.connect.enabled, "allowed_ports": ports(&fc.connect.allowed_ports),
                "splice": fc.connect.splice},
            "dns_cache_config": {
                "dns_lookup_family": match fc.dns_lookup_family {
                    LookupFamily::V4Only => "V4_ONLY",
                    LookupFamily::V6Only => "V6_ONLY",
                    LookupFamily::Auto => "AUTO",
                    LookupFamily::V4Preferred => "V4_PREFERRED",
                },
                "host_ttl": secs(dns.host_ttl),
                "max_hosts": dns.max_hosts,
                "dns_refresh_rate": secs(dns.dns_refresh_rate),
            },
            "circuit_breakers": {"thresholds": [{
                "max_connections": t.max_connections,
                "max_pending_requests": t.max_pending_requests,
                "max_requests": t.max_requests,
                "max_retries": t.max_retries,
                "track_remaining": t.track_remaining,
            }]},
            "egress": {
                "allow_hosts": fc.egress.allow_hosts,
                "deny_hosts": fc.egress.deny_hosts,
                "ports": ports(&fc.egress.ports),
                "allow_cidrs": fc.egress.allow_cidrs.iter().map(|n| format!("{}/{}", n.addr, n.prefix)).collect::<Vec<_>>(),
            },
        }));
    }
    json!({ "configs": configs })
}
