//! Traces, as krakend-otel makes them for `telemetry/opentelemetry`: the W3C trace
//! context taken from the client (`traceparent`, `tracestate`) or started, sampled as
//! configured, and four kinds of span per request (the gateway's server span, stage
//! `global`; the endpoint's span, stage `proxy`; per backend its stage span, `backend`;
//! and its call's client span, `backend-request`, whose id the backend receives in
//! `traceparent`). Finished spans go into a bounded queue ([`Spans`]) that a program
//! drains off the request path (the `sluice` binary's OTLP exporter); a full queue
//! drops the span and counts it. [`TraceSettings::encode`] writes a batch as OTLP's
//! protobuf `ExportTraceServiceRequest`.
//!
//! Nothing here is on the path of a request that is not traced: a plan without
//! `telemetry/opentelemetry` (or without an exporter that takes traces) has no
//! [`Tracer`], and an unsampled request carries no [`RequestTrace`].

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// `telemetry/opentelemetry`, read (krakend-otel's defaults applied).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// `service_name`: the configuration's `name` when empty, else `KrakenD`.
    pub service_name: String,
    pub service_version: String,
    pub deploy_env: String,
    /// `trace_sample_rate`: in (0, 1), the parent's decision, else this share of new
    /// traces; otherwise (1, the default, 0 or below, above 1) every trace, whatever
    /// the parent said (krakend-otel's `AlwaysSample`).
    pub sample_rate: f64,
    /// `skip_paths`: request paths (exact) and endpoint patterns with no spans.
    pub skip_paths: Vec<String>,
    /// `exporters.otlp`.
    pub exporters: Vec<OtlpExporter>,
    /// `layers.global`.
    pub global: GlobalLayer,
    /// `layers.proxy` (an endpoint's own replaces it whole).
    pub proxy: ProxyLayer,
    /// `layers.backend.traces` (a backend's own replaces it whole).
    pub backend: BackendLayer,
}

/// A collector, `exporters.otlp[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpExporter {
    pub name: String,
    /// As written: `collector`, `http://collector` or `https://collector`.
    pub host: String,
    pub port: u16,
    /// `use_http`: OTLP over HTTP with protobuf. `false` (krakend-otel's default) is
    /// gRPC, which Sluice does not send (said at `check` and start).
    pub use_http: bool,
    /// Not `disable_traces`.
    pub traces: bool,
}

impl OtlpExporter {
    /// Whether Sluice sends it traces: over HTTP, traces not disabled.
    pub fn sends_traces(&self) -> bool {
        self.use_http && self.traces
    }

    /// `scheme://host:port` of the collector, as krakend-otel makes its endpoint:
    /// `host:port`, with TLS only when `host` starts with `https://`.
    pub fn origin(&self) -> String {
        format!("{}:{}", self.base(), self.port)
    }

    /// [`OtlpExporter::origin`] without the port: `scheme://host`.
    pub fn base(&self) -> String {
        // Schemes are case-insensitive (RFC 3986 3.1): `HTTPS://` is TLS too. `check`
        // refuses any scheme but these two.
        let (scheme, host) = match self.host.split_once("://") {
            Some((s, h)) if s.eq_ignore_ascii_case("https") => ("https", h),
            Some((_, h)) => ("http", h),
            None => ("http", self.host.as_str()),
        };
        format!("{scheme}://{}", host.trim_end_matches('/'))
    }
}

/// A span attribute given in the configuration (`traces_static_attributes`,
/// `static_attributes`): key and string value.
pub type StaticAttribute = (String, String);

/// `layers.global`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GlobalLayer {
    /// Not `disable_traces`: the gateway's server span is made.
    pub traces: bool,
    /// Not `disable_propagation`: a client's `traceparent` is taken.
    pub propagation: bool,
    pub attributes: Vec<StaticAttribute>,
}

/// `layers.proxy`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProxyLayer {
    /// Not `disable_traces`: the endpoint's span is made.
    pub traces: bool,
    pub attributes: Vec<StaticAttribute>,
}

/// `layers.backend.traces`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackendLayer {
    /// Not `disable_stage`: the backend's stage span is made.
    pub stage: bool,
    /// `round_trip`: the call's client span is made, and its id sent in `traceparent`.
    pub round_trip: bool,
    pub attributes: Vec<StaticAttribute>,
}

impl TraceSettings {
    /// Whether a span is made for a request trace with this trace id and, when the
    /// client sent one, its parent's sampled flag (OpenTelemetry Go's
    /// `ParentBased(TraceIDRatioBased)`, or `AlwaysSample`).
    pub fn sampled(&self, trace: &[u8; 16], parent: Option<bool>) -> bool {
        if !(self.sample_rate > 0.0 && self.sample_rate < 1.0) {
            return true;
        }
        match parent {
            Some(sampled) => sampled,
            None => {
                let mut low = [0; 8];
                low.copy_from_slice(&trace[8..]);
                let bound = (self.sample_rate * (1u64 << 63) as f64) as u64;
                (u64::from_be_bytes(low) >> 1) < bound
            }
        }
    }

    /// Whether a request path or endpoint pattern has no spans (`skip_paths`).
    pub fn skips(&self, path: &str) -> bool {
        self.skip_paths.iter().any(|p| p == path)
    }

    /// `spans` as OTLP's `ExportTraceServiceRequest` in protobuf: one resource
    /// (`service.name`, `service.version`, `deployment.environment` when set), one
    /// scope (`sluice`).
    pub fn encode(&self, spans: &[Span]) -> Vec<u8> {
        let mut resource = Vec::new();
        let mut attrs = vec![
            ("service.name", Value::Str(self.service_name.clone())),
            ("service.version", Value::Str(self.service_version.clone())),
        ];
        if !self.deploy_env.is_empty() {
            attrs.push(("deployment.environment", Value::Str(self.deploy_env.clone())));
        }
        for (k, v) in &attrs {
            pb::message(1, &key_value(k, v), &mut resource);
        }
        let mut scope = Vec::new();
        pb::string(1, "sluice", &mut scope);
        pb::string(2, env!("CARGO_PKG_VERSION"), &mut scope);
        let mut scope_spans = Vec::new();
        pb::message(1, &scope, &mut scope_spans);
        for span in spans {
            pb::message(2, &span.encode(), &mut scope_spans);
        }
        let mut resource_spans = Vec::new();
        pb::message(1, &resource, &mut resource_spans);
        pb::message(2, &scope_spans, &mut resource_spans);
        pb::string(3, SCHEMA_URL, &mut resource_spans);
        let mut request = Vec::new();
        pb::message(1, &resource_spans, &mut request);
        request
    }
}

/// The semantic conventions the attribute names follow (krakend-otel's).
const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.21.0";

// ----- ids -----

thread_local! {
    /// This thread's id generator state (splitmix64), seeded from the system's
    /// randomness the first time.
    static SEED: Cell<u64> = Cell::new(RandomState::new().build_hasher().finish() | 1);
}

/// A random 64-bit number, never 0.
fn random() -> u64 {
    SEED.with(|s| {
        loop {
            let next = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            s.set(next);
            let mut z = next;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            if z != 0 {
                return z;
            }
        }
    })
}

/// A new span id.
pub fn span_id() -> [u8; 8] {
    random().to_be_bytes()
}

/// A new trace id.
pub fn trace_id() -> [u8; 16] {
    let mut id = [0; 16];
    id[..8].copy_from_slice(&random().to_be_bytes());
    id[8..].copy_from_slice(&random().to_be_bytes());
    id
}

fn hex(bytes: &[u8], out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// A client's `traceparent` (W3C Trace Context, level 1), when it is valid: version
/// two lowercase hex digits but `ff` (a later version may add fields after a `-`),
/// a trace id and a parent id not all zeros, the flags.
pub fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], bool)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = unhex::<1>(&v[..2])?[0];
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace = unhex::<16>(&v[3..35])?;
    let parent = unhex::<8>(&v[36..52])?;
    let flags = unhex::<1>(&v[53..55])?[0];
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags & 1 == 1))
}

/// A client's `tracestate` fields, joined with commas as W3C says, kept when the
/// list may be sent on: not empty, at most 512 bytes of visible ASCII and spaces (it
/// is passed on as it came, never parsed).
fn tracestate(fields: &[&[u8]]) -> Option<Arc<str>> {
    let mut joined = String::new();
    for v in fields {
        let v = v.trim_ascii();
        if v.is_empty() || !v.iter().all(|&b| (0x20..0x7f).contains(&b)) {
            continue;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(&String::from_utf8_lossy(v));
    }
    (!joined.is_empty() && joined.len() <= 512).then(|| Arc::from(joined))
}

// ----- spans -----

/// What a span is (OTLP's `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// How a span ended (OTLP's `Status`).
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Unset,
    Ok,
    Error(String),
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// A finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace: [u8; 16],
    pub id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    /// The client's `tracestate`, when it sent one.
    pub state: Option<Arc<str>>,
    pub name: String,
    pub kind: Kind,
    /// Nanoseconds since the Unix epoch.
    pub start: u64,
    pub end: u64,
    pub attributes: Vec<(Cow<'static, str>, Value)>,
    pub status: Status,
}

impl Span {
    /// OTLP's `Span` message.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        pb::bytes(1, &self.trace, &mut out);
        pb::bytes(2, &self.id, &mut out);
        if let Some(state) = &self.state {
            pb::string(3, state, &mut out);
        }
        if let Some(parent) = &self.parent {
            pb::bytes(4, parent, &mut out);
        }
        pb::string(5, &self.name, &mut out);
        pb::varint_field(6, self.kind as u64, &mut out);
        pb::fixed64(7, self.start, &mut out);
        pb::fixed64(8, self.end, &mut out);
        for (k, v) in &self.attributes {
            pb::message(9, &key_value(k, v), &mut out);
        }
        let mut status = Vec::new();
        match &self.status {
            Status::Unset => {}
            Status::Ok => pb::varint_field(3, 1, &mut status),
            Status::Error(message) => {
                pb::string(2, message, &mut status);
                pb::varint_field(3, 2, &mut status);
            }
        }
        pb::message(15, &status, &mut out);
        // The W3C flags: sampled (every exported span is).
        pb::fixed32(16, 1, &mut out);
        out
    }
}

fn key_value(key: &str, value: &Value) -> Vec<u8> {
    let mut any = Vec::new();
    match value {
        Value::Str(s) => pb::string(1, s, &mut any),
        Value::Bool(b) => pb::varint_field(2, u64::from(*b), &mut any),
        Value::Int(i) => pb::varint_field(3, *i as u64, &mut any),
        Value::Float(f) => pb::fixed64(4, f.to_bits(), &mut any),
    }
    let mut kv = Vec::new();
    pb::string(1, key, &mut kv);
    pb::message(2, &any, &mut kv);
    kv
}

/// The protobuf wire format, as much of it as OTLP's trace messages need.
mod pb {
    pub(super) fn varint(mut n: u64, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    fn key(field: u32, wire: u8, out: &mut Vec<u8>) {
        varint(u64::from(field) << 3 | u64::from(wire), out);
    }

    pub(super) fn varint_field(field: u32, n: u64, out: &mut Vec<u8>) {
        key(field, 0, out);
        varint(n, out);
    }

    pub(super) fn fixed64(field: u32, n: u64, out: &mut Vec<u8>) {
        key(field, 1, out);
        out.extend_from_slice(&n.to_le_bytes());
    }

    pub(super) fn fixed32(field: u32, n: u32, out: &mut Vec<u8>) {
        key(field, 5, out);
        out.extend_from_slice(&n.to_le_bytes());
    }

    pub(super) fn bytes(field: u32, b: &[u8], out: &mut Vec<u8>) {
        key(field, 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    pub(super) fn string(field: u32, s: &str, out: &mut Vec<u8>) {
        bytes(field, s.as_bytes(), out);
    }

    pub(super) fn message(field: u32, m: &[u8], out: &mut Vec<u8>) {
        bytes(field, m, out);
    }
}

/// Finished spans on their way to the exporter: a bounded queue shared by every
/// thread that serves (one short lock per span). A span that finds it full is dropped
/// and counted.
#[derive(Debug)]
pub struct Spans {
    queue: Mutex<VecDeque<Span>>,
    cap: usize,
    dropped: AtomicU64,
    /// Spans the exporter sent, and those it could not (counted by the exporter).
    exported: AtomicU64,
    failed: AtomicU64,
}

impl Default for Spans {
    /// OpenTelemetry's default queue: 2,048 spans.
    fn default() -> Spans {
        Spans::new(2048)
    }
}

impl Spans {
    pub fn new(cap: usize) -> Spans {
        Spans {
            queue: Mutex::new(VecDeque::new()),
            cap: cap.max(1),
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub fn push(&self, span: Span) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.len() >= self.cap {
            drop(queue);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            queue.push_back(span);
        }
    }

    /// Up to `max` spans, oldest first.
    pub fn take(&self, max: usize) -> Vec<Span> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let n = queue.len().min(max);
        queue.drain(..n).collect()
    }

    pub fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Spans dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The exporter sent `n` spans (`ok`), or could not.
    pub fn count_export(&self, n: usize, ok: bool) {
        let counter = if ok { &self.exported } else { &self.failed };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `(queued, dropped, exported, failed)`: the admin pages' counters.
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (self.len() as u64, self.dropped(), load(&self.exported), load(&self.failed))
    }
}

/// Nanoseconds since the Unix epoch.
fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn attrs(list: &[StaticAttribute]) -> impl Iterator<Item = (Cow<'static, str>, Value)> + '_ {
    list.iter()
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .map(|(k, v)| (Cow::Owned(k.clone()), Value::Str(v.clone())))
}

fn attr(key: &'static str, v: Value) -> (Cow<'static, str>, Value) {
    (Cow::Borrowed(key), v)
}

fn text(b: &[u8]) -> Value {
    Value::Str(String::from_utf8_lossy(b).into_owned())
}

// ----- the compiled plan's part -----

/// What the plan traces: the settings, each endpoint's spans, and the queue.
#[derive(Debug, Clone)]
pub struct Tracer {
    pub settings: TraceSettings,
    /// Per endpoint, in configuration order.
    pub endpoints: Vec<EndpointTrace>,
    /// Where finished spans go. The `sluice` binary gives every plan it serves the
    /// same queue, so spans outlive a reload.
    pub spans: Arc<Spans>,
}

/// An endpoint's part.
#[derive(Debug, Clone)]
pub struct EndpointTrace {
    /// Its pattern is in `skip_paths`: none of its spans are made.
    pub skip: bool,
    /// The endpoint pattern as lura hands it on, `{id}` written `:id` (the `proxy`
    /// span's name, `http.route`, and what `skip_paths` is compared with).
    pub route: String,
    /// Its own `global.traces_static_attributes`, added to the gateway's span.
    pub server_attributes: Vec<StaticAttribute>,
    pub method: String,
    /// `layers.proxy` as it applies here.
    pub proxy: ProxyLayer,
    pub backends: Vec<BackendTrace>,
}

/// A backend's part.
#[derive(Debug, Clone)]
pub struct BackendTrace {
    /// Its `url_pattern` with `{param}` written `:param` (krakend-otel's
    /// `NormalizeURLPattern`): its spans' name and `http.route`.
    pub route: String,
    pub method: String,
    pub layer: BackendLayer,
}

/// What a request's head says, for its server span.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Not on the span (`url.full` is the path alone, as in the access line).
    pub query: Option<&'a str>,
    pub host: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    /// `Content-Length`, when the body has one (0 without a body).
    pub length: Option<u64>,
    pub peer: IpAddr,
    /// The first `traceparent` (as Go's propagator reads it).
    pub traceparent: Option<&'a [u8]>,
    /// Every `tracestate` field.
    pub tracestate: &'a [&'a [u8]],
}

impl Tracer {
    /// A request's trace, when it has one: not for a path in `skip_paths`, nor when
    /// the sampler says no (then nothing is recorded and nothing propagated, as
    /// krakend-otel does not inject a context it does not record).
    pub fn start(&self, head: &Incoming<'_>, (now, wall): (Instant, SystemTime)) -> Option<Box<RequestTrace>> {
        let s = &self.settings;
        if s.skips(head.path) {
            return None;
        }
        let remote = head.traceparent.filter(|_| s.global.propagation).and_then(parse_traceparent);
        let (trace, parent, state) = match remote {
            Some((trace, parent, sampled)) => {
                if !s.sampled(&trace, Some(sampled)) {
                    return None;
                }
                (trace, Some(parent), tracestate(head.tracestate))
            }
            None => {
                let trace = trace_id();
                if !s.sampled(&trace, None) {
                    return None;
                }
                (trace, None, None)
            }
        };
        let server = s.global.traces.then(span_id);
        let mut attributes = Vec::new();
        if server.is_some() {
            attributes.push(attr("krakend.stage", Value::Str("global".into())));
            attributes.extend(attrs(&s.global.attributes));
            // The path alone, as the access line has it: a query string may carry
            // secrets (KrakenD users pass keys in them).
            attributes.push(attr("url.full", Value::Str(head.path.to_string())));
            if let Some(host) = head.host {
                attributes.push(attr("server.address", text(host)));
            }
            attributes.push(attr("http.request.method", Value::Str(head.method.to_string())));
            if let Some(n) = head.length {
                attributes.push(attr("http.request.body.size", Value::Int(n.min(i64::MAX as u64) as i64)));
            }
            if let Some(ua) = head.user_agent.filter(|ua| !ua.is_empty()) {
                attributes.push(attr("user_agent.original", text(ua)));
            }
            attributes.push(attr("client.address", Value::Str(head.peer.to_string())));
        }
        Some(Box::new(RequestTrace {
            ctx: Context { trace, parent: server.or(parent), state, spans: Arc::clone(&self.spans) },
            server,
            remote: parent,
            start: wall,
            started: now,
            name: head.path.to_string(),
            attributes,
            route: None,
        }))
    }
}

/// Where a request's spans belong: its trace, the span its children hang from, the
/// client's `tracestate`, and the queue.
#[derive(Debug, Clone)]
pub struct Context {
    trace: [u8; 16],
    parent: Option<[u8; 8]>,
    state: Option<Arc<str>>,
    spans: Arc<Spans>,
}

impl Context {
    fn span(&self, id: [u8; 8], parent: Option<[u8; 8]>, name: String, kind: Kind) -> Span {
        Span {
            trace: self.trace,
            id,
            parent,
            state: self.state.clone(),
            name,
            kind,
            start: 0,
            end: 0,
            attributes: Vec::new(),
            status: Status::Unset,
        }
    }
}

/// A traced request: its server span until the answer is written (carried by the
/// access line), and the context its endpoint's spans take.
#[derive(Debug)]
pub struct RequestTrace {
    ctx: Context,
    /// The server span's id (`None`: `layers.global.disable_traces`).
    server: Option<[u8; 8]>,
    /// The client's span, when it sent a `traceparent`.
    remote: Option<[u8; 8]>,
    start: SystemTime,
    started: Instant,
    name: String,
    attributes: Vec<(Cow<'static, str>, Value)>,
    /// The endpoint pattern it was routed to.
    route: Option<String>,
}

impl RequestTrace {
    /// The context of the spans under this request's.
    pub fn context(&self) -> Context {
        self.ctx.clone()
    }

    /// It was routed to endpoint `ep`: its pattern is `http.route`, and its own
    /// `global.traces_static_attributes` join the span's.
    pub fn routed(&mut self, ep: &EndpointTrace) {
        self.route = Some(ep.route.clone());
        if self.server.is_some() {
            self.attributes.extend(attrs(&ep.server_attributes));
        }
    }

    /// The answer is written: `status`, with `bytes` of body, at `now`. The server
    /// span goes to the queue (its status `Ok`, as krakend-otel's whatever the code).
    pub fn finish(mut self, status: u16, bytes: u64, now: Instant) {
        let end = self.start + now.saturating_duration_since(self.started);
        self.end(status, bytes, end, Status::Ok);
    }

    fn end(&mut self, status: u16, bytes: u64, end: SystemTime, how: Status) {
        let Some(id) = self.server.take() else { return };
        let mut span = self.ctx.span(id, self.remote, std::mem::take(&mut self.name), Kind::Server);
        span.start = nanos(self.start);
        span.end = nanos(end.max(self.start));
        span.attributes = std::mem::take(&mut self.attributes);
        if let Some(route) = self.route.take() {
            span.attributes.push(attr("http.route", Value::Str(route)));
        }
        span.attributes.push(attr("http.response.status_code", Value::Int(i64::from(status))));
        span.attributes.push(attr("http.response.body.size", Value::Int(bytes.min(i64::MAX as u64) as i64)));
        span.status = how;
        self.ctx.spans.push(span);
    }
}

impl Drop for RequestTrace {
    /// A request whose answer was never written (the client left, a write failed):
    /// its span still ends, as 499 (nginx's "client closed request") with an error,
    /// so that the spans under it have their parent. Core reads no clock and the
    /// connection gives none here: the span ends where it started.
    fn drop(&mut self) {
        if self.server.is_some() {
            let how = Status::Error("the answer was not written: the client left, or the write failed".into());
            self.end(499, 0, self.start, how);
        }
    }
}

/// How a backend call ended, for its spans.
#[derive(Debug, Clone, Copy)]
pub enum Ended<'a> {
    /// It answered with this status (and this many body bytes, when known).
    Answered(u16, Option<u64>),
    /// It failed, or was not made, for this reason.
    Failed(&'a str),
}

/// An endpoint's spans while its exchange runs: the `proxy` span until the exchange
/// ends (dropped), and per backend its stage and client spans. Spans of calls still
/// open when it ends are ended then, marked `canceled`.
#[derive(Debug)]
pub struct ExchangeTrace<'g> {
    ctx: Context,
    plan: &'g EndpointTrace,
    proxy: Option<[u8; 8]>,
    start: SystemTime,
    started: Instant,
    /// The latest time it was told.
    clock: Instant,
    calls: Vec<CallTrace>,
    status: Option<u16>,
    complete: bool,
}

#[derive(Debug, Default)]
struct CallTrace {
    stage: [u8; 8],
    client: [u8; 8],
    /// When it was sent, with its URL, its authority and its body's length.
    sent: Option<(Instant, String, String, Option<u64>)>,
    retries: u8,
    redirects: u8,
    ended: bool,
}

impl<'g> ExchangeTrace<'g> {
    /// The spans of endpoint `plan` under `ctx`, from `now`; `None` when its pattern
    /// is skipped.
    pub fn new(ctx: Context, plan: &'g EndpointTrace, (now, wall): (Instant, SystemTime)) -> Option<ExchangeTrace<'g>> {
        if plan.skip {
            return None;
        }
        let calls =
            plan.backends.iter().map(|_| CallTrace { stage: span_id(), client: span_id(), ..Default::default() });
        Some(ExchangeTrace {
            proxy: plan.proxy.traces.then(span_id),
            ctx,
            plan,
            start: wall,
            started: now,
            clock: now,
            calls: calls.collect(),
            status: None,
            complete: false,
        })
    }

    /// The `traceparent` backend `i`'s request carries (its client span's id), and
    /// the client's `tracestate`; `None` without a client span (`round_trip` off).
    pub fn header(&self, i: usize) -> Option<(Vec<u8>, Option<&str>)> {
        let b = self.plan.backends.get(i)?;
        if !b.layer.round_trip {
            return None;
        }
        let mut v = Vec::with_capacity(55);
        v.extend_from_slice(b"00-");
        hex(&self.ctx.trace, &mut v);
        v.push(b'-');
        hex(&self.calls.get(i)?.client, &mut v);
        v.extend_from_slice(b"-01");
        Some((v, self.ctx.state.as_deref()))
    }

    /// The time is `now` (what a span still open when the exchange ends ends at).
    pub fn at(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
    }

    /// `now` on the wall clock.
    fn wall(&self, now: Instant) -> u64 {
        nanos(self.start + now.saturating_duration_since(self.started))
    }

    /// Backend `i`'s call went out at `now` to `url` (`authority`: its `Host`), with
    /// a body of `length` bytes when known. The span's `url.full` is `url` without its
    /// query, as the server span's (a query string may carry secrets).
    pub fn sent(&mut self, i: usize, now: Instant, mut url: String, authority: &str, length: Option<u64>) {
        self.at(now);
        if let Some(c) = self.calls.get_mut(i)
            && c.sent.is_none()
        {
            if let Some(q) = url.find('?') {
                url.truncate(q);
            }
            c.sent = Some((now, url, authority.to_string(), length));
        }
    }

    /// Backend `i`'s call was sent again on a fresh connection `retries` times and
    /// followed `redirects` redirects.
    pub fn hops(&mut self, i: usize, retries: u8, redirects: u8) {
        if let Some(c) = self.calls.get_mut(i) {
            (c.retries, c.redirects) = (retries, redirects);
        }
    }

    /// The exchange answered `status`; `complete`: every backend answered as it
    /// should.
    pub fn answered(&mut self, status: u16, complete: bool) {
        self.status = Some(status);
        self.complete = complete;
    }

    /// Backend `i`'s call ended at `now`, as `how` says: its spans go to the queue.
    pub fn ended(&mut self, i: usize, now: Instant, how: Ended<'_>) {
        self.at(now);
        let end = self.wall(now);
        let sent = self.calls.get(i).and_then(|c| c.sent.as_ref()).map(|s| self.wall(s.0));
        let (Some(c), Some(b)) = (self.calls.get_mut(i), self.plan.backends.get(i)) else { return };
        if c.ended {
            return;
        }
        c.ended = true;
        let fixed = |stage: &'static str| {
            let mut list = vec![
                attr("http.request.method", Value::Str(b.method.clone())),
                attr("http.route", Value::Str(b.route.clone())),
                attr("krakend.endpoint.route", Value::Str(self.plan.route.clone())),
                attr("krakend.endpoint.method", Value::Str(self.plan.method.clone())),
                attr("krakend.stage", Value::Str(stage.into())),
            ];
            list.extend(attrs(&b.layer.attributes));
            list
        };
        let start = sent.unwrap_or(end);
        let (client_parent, stage_parent) = {
            let above = self.proxy.or(self.ctx.parent);
            (if b.layer.stage { Some(c.stage) } else { above }, above)
        };
        if b.layer.round_trip
            && let Some((sent_at, url, authority, length)) = &c.sent
        {
            let mut span = self.ctx.span(c.client, client_parent, b.route.clone(), Kind::Client);
            span.start = start;
            span.end = end;
            span.attributes = fixed("backend-request");
            span.attributes.push(attr("url.full", Value::Str(url.clone())));
            span.attributes.push(attr("server.address", Value::Str(authority.clone())));
            if let Some(n) = length {
                span.attributes.push(attr("http.request.body.size", Value::Int(*n as i64)));
            }
            span.attributes.push(attr("sluice.retries", Value::Int(i64::from(c.retries))));
            span.attributes.push(attr("sluice.redirects", Value::Int(i64::from(c.redirects))));
            match how {
                Ended::Answered(status, size) => {
                    span.attributes.push(attr("http.response.status_code", Value::Int(i64::from(status))));
                    span.attributes.push(attr("http.response.body.size", Value::Int(size.map_or(-1, |n| n as i64))));
                    let took = now.saturating_duration_since(*sent_at).as_secs_f64();
                    span.attributes.push(attr("response-duration", Value::Float(took)));
                    span.status = Status::Ok;
                }
                Ended::Failed(why) => span.status = Status::Error(why.to_string()),
            }
            self.ctx.spans.push(span);
        }
        if b.layer.stage {
            let mut span = self.ctx.span(c.stage, stage_parent, b.route.clone(), Kind::Internal);
            span.start = start;
            span.end = end;
            span.attributes = fixed("backend");
            match how {
                Ended::Answered(status, _) => {
                    span.attributes.push(attr("http.response.status_code", Value::Int(i64::from(status))));
                    span.attributes.push(attr("complete", Value::Bool((200..300).contains(&status))));
                }
                Ended::Failed(why) => {
                    span.attributes.push(attr("error", Value::Str(why.to_string())));
                    span.attributes.push(attr("http.response.status_code", Value::Int(500)));
                    span.attributes.push(attr("complete", Value::Bool(false)));
                }
            }
            self.ctx.spans.push(span);
        }
    }
}

impl Drop for ExchangeTrace<'_> {
    /// The exchange is over: calls still open end `canceled`, then the `proxy` span.
    fn drop(&mut self) {
        let now = self.clock;
        for i in 0..self.calls.len() {
            if self.calls.get(i).is_some_and(|c| !c.ended && c.sent.is_some()) {
                self.ended(i, now, Ended::Failed("canceled"));
            }
        }
        let Some(id) = self.proxy else { return };
        let parent = self.ctx.parent;
        let mut span = self.ctx.span(id, parent, self.plan.route.clone(), Kind::Internal);
        span.start = nanos(self.start);
        span.end = self.wall(now);
        span.attributes = vec![
            attr("http.request.method", Value::Str(self.plan.method.clone())),
            attr("http.route", Value::Str(self.plan.route.clone())),
        ];
        span.attributes.extend(attrs(&self.plan.proxy.attributes));
        span.attributes.push(attr("krakend.stage", Value::Str("proxy".into())));
        match self.status {
            Some(status) => span.attributes.push(attr("http.response.status_code", Value::Int(i64::from(status)))),
            None => span.attributes.push(attr("canceled", Value::Bool(true))),
        }
        span.attributes.push(attr("complete", Value::Bool(self.complete)));
        self.ctx.spans.push(span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_as_w3c_says() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, p, s) = parse_traceparent(ok).unwrap();
        let mut out = Vec::new();
        hex(&t, &mut out);
        assert_eq!(out, b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(s);
        assert_eq!(
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").map(|x| x.2),
            Some(false)
        );
        // A later version may carry more after a dash.
        assert!(parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_some());
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    fn settings(rate: f64) -> TraceSettings {
        TraceSettings {
            service_name: "KrakenD".into(),
            service_version: String::new(),
            deploy_env: String::new(),
            sample_rate: rate,
            skip_paths: vec!["/__health".into()],
            exporters: Vec::new(),
            global: GlobalLayer { traces: true, propagation: true, attributes: Vec::new() },
            proxy: ProxyLayer { traces: true, attributes: Vec::new() },
            backend: BackendLayer { stage: true, round_trip: true, attributes: Vec::new() },
        }
    }

    #[test]
    fn sampling_as_opentelemetry_go() {
        let mut id = [0u8; 16];
        // The low half, shifted right once, below rate * 2^63.
        id[8..].copy_from_slice(&(0x3fff_ffff_ffff_fffeu64).to_be_bytes());
        assert!(settings(0.5).sampled(&id, None));
        id[8..].copy_from_slice(&(0x8000_0000_0000_0000u64).to_be_bytes());
        assert!(!settings(0.5).sampled(&id, None));
        // The parent decides under a ratio; always sampled at 1, 0 or below (AlwaysSample).
        assert!(settings(0.5).sampled(&id, Some(true)));
        assert!(!settings(0.5).sampled(&[0xff; 16], Some(false)));
        for rate in [1.0, 0.0, -1.0, 2.0] {
            assert!(settings(rate).sampled(&id, Some(false)), "{rate}");
        }
        // About the rate asked, over random ids.
        let n = (0..10_000).filter(|_| settings(0.25).sampled(&trace_id(), None)).count();
        assert!((2_000..3_000).contains(&n), "{n}");
    }

    #[test]
    fn origins_as_krakend_otel() {
        let e =
            |host: &str| OtlpExporter { name: "a".into(), host: host.into(), port: 4318, use_http: true, traces: true };
        assert_eq!(e("collector").origin(), "http://collector:4318");
        assert_eq!(e("http://collector").origin(), "http://collector:4318");
        assert_eq!(e("https://collector").origin(), "https://collector:4318");
        assert_eq!(e("HTTPS://collector").origin(), "https://collector:4318", "never plain for TLS in capitals");
        assert_eq!(e("Http://collector").origin(), "http://collector:4318");
    }

    #[test]
    fn protobuf_by_hand() {
        let mut out = Vec::new();
        pb::varint(300, &mut out);
        assert_eq!(out, [0xac, 0x02]);
        let span = Span {
            trace: [1; 16],
            id: [2; 8],
            parent: None,
            state: None,
            name: "x".into(),
            kind: Kind::Server,
            start: 5,
            end: 6,
            attributes: vec![attr("a", Value::Int(-1))],
            status: Status::Ok,
        };
        let b = span.encode();
        // trace id: field 1, length 16.
        assert_eq!(&b[..2], &[0x0a, 16]);
        // a negative int64 is ten bytes of varint.
        let kv = key_value("a", &Value::Int(-1));
        assert_eq!(kv.len(), 3 + 2 + 1 + 10);
    }

    fn incoming<'a>(path: &'a str, parent: Option<&'a [u8]>) -> Incoming<'a> {
        Incoming {
            method: "GET",
            path,
            query: None,
            host: None,
            user_agent: None,
            length: Some(0),
            peer: IpAddr::from([127, 0, 0, 1]),
            traceparent: parent,
            tracestate: &[b" k=v ", b"", b"l=w"],
        }
    }

    #[test]
    fn a_request_is_traced_as_sampled_and_propagated() {
        let tracer = |s: TraceSettings| Tracer { settings: s, endpoints: Vec::new(), spans: Arc::default() };
        let now = (Instant::now(), SystemTime::now());
        let sampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        // Under a ratio the parent decides: nothing is made for an unsampled one.
        assert!(tracer(settings(0.5)).start(&incoming("/a", Some(unsampled)), now).is_none());
        let t = tracer(settings(0.5)).start(&incoming("/a", Some(sampled)), now).unwrap();
        assert_eq!(t.ctx.trace[..2], [0x4b, 0xf9]);
        assert_eq!(
            (t.remote, t.ctx.state.as_deref()),
            (Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]), Some("k=v,l=w"))
        );
        assert_eq!(t.ctx.parent, t.server);
        // At 1, even an unsampled parent's trace is recorded (AlwaysSample).
        assert!(tracer(settings(1.0)).start(&incoming("/a", Some(unsampled)), now).is_some());
        // Skipped paths, exactly.
        assert!(tracer(settings(1.0)).start(&incoming("/__health", None), now).is_none());
        assert!(tracer(settings(1.0)).start(&incoming("/__health/x", None), now).is_some());
        // disable_propagation: the client's context is not taken.
        let mut s = settings(1.0);
        s.global.propagation = false;
        let t = tracer(s).start(&incoming("/a", Some(sampled)), now).unwrap();
        assert!(t.remote.is_none() && t.ctx.trace[..2] != [0x4b, 0xf9] && t.ctx.state.is_none());
        // disable_traces: no server span, the endpoint's spans hang from the client's.
        let mut s = settings(1.0);
        s.global.traces = false;
        let t = tracer(s).start(&incoming("/a", Some(sampled)), now).unwrap();
        assert_eq!((t.server, t.ctx.parent), (None, t.remote));
        t.finish(200, 0, Instant::now());
        // A request never answered still ends its span, as 499.
        let tracer = tracer(settings(1.0));
        drop(tracer.start(&incoming("/gone", None), now));
        let spans = tracer.spans.take(9);
        assert_eq!(spans.len(), 1);
        assert_eq!((spans[0].name.as_str(), spans[0].kind), ("/gone", Kind::Server));
        assert!(matches!(&spans[0].status, Status::Error(why) if why.starts_with("the answer was not written")));
        assert!(spans[0].attributes.contains(&attr("http.response.status_code", Value::Int(499))));
    }

    /// `url.full` is a path without its query, on the gateway's span and on a call's:
    /// a query string may carry secrets, and the access line drops it too.
    #[test]
    fn url_full_has_no_query() {
        let now = (Instant::now(), SystemTime::now());
        let tracer = Tracer { settings: settings(1.0), endpoints: Vec::new(), spans: Arc::default() };
        let head = Incoming { query: Some("key=secret"), ..incoming("/a", None) };
        let t = tracer.start(&head, now).unwrap();
        let ctx = t.context();
        t.finish(200, 0, Instant::now());
        let plan = EndpointTrace {
            skip: false,
            route: "/a".into(),
            server_attributes: Vec::new(),
            method: "GET".into(),
            proxy: ProxyLayer { traces: false, attributes: Vec::new() },
            backends: vec![BackendTrace {
                route: "/b".into(),
                method: "GET".into(),
                layer: BackendLayer { stage: false, round_trip: true, attributes: Vec::new() },
            }],
        };
        let mut x = ExchangeTrace::new(ctx, &plan, now).unwrap();
        x.sent(0, Instant::now(), "http://api:8080/b?token=secret&x=1".into(), "api:8080", Some(0));
        x.ended(0, Instant::now(), Ended::Answered(200, Some(2)));
        let spans = tracer.spans.take(9);
        let url = |kind: Kind| {
            let span = spans.iter().find(|s| s.kind == kind).unwrap();
            span.attributes.iter().find(|(k, _)| k == "url.full").map(|(_, v)| v.clone())
        };
        assert_eq!(url(Kind::Server), Some(Value::Str("/a".into())));
        assert_eq!(url(Kind::Client), Some(Value::Str("http://api:8080/b".into())));
    }

    #[test]
    fn tracestate_is_joined_and_bounded() {
        assert_eq!(tracestate(&[b"a=1", b" b=2 "]).as_deref(), Some("a=1,b=2"));
        assert_eq!(tracestate(&[b"  ", b""]), None);
        assert_eq!(tracestate(&[b"a=\x01"]), None);
        let long = vec![b'x'; 513];
        assert_eq!(tracestate(&[&long]), None);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let q = Spans::new(2);
        let ctx = Context { trace: [1; 16], parent: None, state: None, spans: Arc::new(Spans::new(1)) };
        for _ in 0..3 {
            q.push(ctx.span([1; 8], None, "s".into(), Kind::Internal));
        }
        assert_eq!((q.len(), q.dropped()), (2, 1));
        assert_eq!(q.take(10).len(), 2);
        assert!(q.is_empty());
    }
}
