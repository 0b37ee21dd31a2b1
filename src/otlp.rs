//! The OTLP trace exporter: a thread that takes finished spans from core's queue
//! ([`sluice_core::ops::trace::Spans`]) in batches and posts each batch, as OTLP's
//! protobuf `ExportTraceServiceRequest`, to `/v1/traces` of every collector the
//! configuration names (`exporters.otlp` with `use_http`). It runs off the request
//! path: a connection only pushes a span into the queue, and a full queue drops it
//! (counted on `/stats`).
//!
//! The posts go through the gateway's own backend client, as [`crate::fetch`] does:
//! a small gateway on a loopback port has one `no-op` endpoint per collector, so an
//! `https://` collector is verified against the same roots, and the proxy settings
//! apply, with no second HTTP client in the binary.
//!
//! Batching follows OpenTelemetry's batch span processor and reads its variables:
//! `OTEL_BSP_SCHEDULE_DELAY` (milliseconds between exports, default 5000),
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (default 512), `OTEL_BSP_MAX_QUEUE_SIZE` (default
//! 2048), `OTEL_BSP_EXPORT_TIMEOUT` (milliseconds, default 30000).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_core::StopSignal;
use sluice_core::ops::trace::{Spans, TraceSettings};
use sluice_core::plan::Gateway;
use sluice_core::tls::Environment;

/// The batch span processor's settings.
#[derive(Debug, Clone, Copy)]
struct Batching {
    delay: Duration,
    batch: usize,
    queue: usize,
    timeout: Duration,
}

impl Batching {
    fn from_env() -> Batching {
        let var = |name: &str, default: u64| {
            std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok()).filter(|&n| n > 0).unwrap_or(default)
        };
        Batching {
            delay: Duration::from_millis(var("OTEL_BSP_SCHEDULE_DELAY", 5000)),
            batch: var("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512) as usize,
            queue: var("OTEL_BSP_MAX_QUEUE_SIZE", 2048) as usize,
            timeout: Duration::from_millis(var("OTEL_BSP_EXPORT_TIMEOUT", 30_000)),
        }
    }
}

/// A running exporter: the queue every plan served shares, and its thread.
pub(crate) struct Exporter {
    spans: Arc<Spans>,
    stop: StopSignal,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Starts exporting `gateway`'s spans, when it makes any: its queue becomes one
    /// the exporter owns (and every reloaded plan is given, [`Exporter::adopt`]).
    /// `env` gives the roots and proxy settings of the collectors' connections.
    pub(crate) fn start(gateway: &mut Gateway, env: Environment) -> Result<Option<Exporter>, String> {
        let Some(tracer) = gateway.tracer.as_mut() else { return Ok(None) };
        let batching = Batching::from_env();
        let spans = Arc::new(Spans::new(batching.queue));
        tracer.spans = Arc::clone(&spans);
        let settings = tracer.settings.clone();
        let client = Client::start(&settings, &env, batching.timeout)?;
        let stop = StopSignal::new();
        let thread = {
            let (spans, stop) = (Arc::clone(&spans), stop.clone());
            std::thread::Builder::new()
                .name("sluice-otlp".into())
                .spawn(move || export(&settings, &spans, &client, batching, &stop))
                .map_err(|e| format!("no thread for the OTLP exporter: {e}"))?
        };
        let to: Vec<String> = tracer
            .settings
            .exporters
            .iter()
            .filter(|e| e.sends_traces())
            .map(|e| format!("{} ({}/v1/traces)", e.name, sluice_core::config::redact_userinfo(&e.origin())))
            .collect();
        tracing::info!(
            target: "sluice::trace",
            "traces to {}: sample rate {}, a batch every {} ms",
            to.join(", "),
            tracer.settings.sample_rate,
            batching.delay.as_millis()
        );
        Ok(Some(Exporter { spans, stop, thread: Some(thread) }))
    }

    /// `gateway` (a reloaded plan) puts its spans into the queue exported.
    pub(crate) fn adopt(&self, gateway: &mut Gateway) {
        if let Some(tracer) = gateway.tracer.as_mut() {
            tracer.spans = Arc::clone(&self.spans);
        }
    }

    /// Exports what is queued, then ends.
    pub(crate) fn finish(mut self) {
        self.stop.trigger();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The loopback gateway whose endpoint `/N` posts to collector N.
struct Client {
    at: SocketAddr,
    /// Per collector: its name and `/N`.
    paths: Vec<(String, String)>,
    server: Option<sluice_tokio::Server>,
    stop: StopSignal,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(server) = self.server.take() {
            server.join();
        }
    }
}

impl Client {
    fn start(settings: &TraceSettings, env: &Environment, timeout: Duration) -> Result<Client, String> {
        let mut endpoints = Vec::new();
        let mut paths = Vec::new();
        for (i, e) in settings.exporters.iter().filter(|e| e.sends_traces()).enumerate() {
            let path = format!("/{i}");
            endpoints.push(serde_json::json!({
                "endpoint": path,
                "method": "POST",
                "output_encoding": "no-op",
                "input_headers": ["Content-Type"],
                "backend": [{"host": [e.origin()], "url_pattern": "/v1/traces", "encoding": "no-op",
                    "extra_config": {"backend/http/client": {"no_redirect": true}}}]
            }));
            paths.push((e.name.clone(), path));
        }
        let config = serde_json::json!({
            "version": 3,
            "timeout": format!("{}ms", timeout.as_millis()),
            "extra_config": {"router": {"return_error_msg": true}},
            "endpoints": endpoints,
        });
        let (server, stop) = crate::fetch::loopback(&config, env)
            .map_err(|e| format!("telemetry/opentelemetry: the exporter cannot reach its collectors: {e}"))?;
        Ok(Client { at: server.listening.gateway, paths, server: Some(server), stop })
    }

    /// Posts `body` to every collector, each within `timeout`: per collector, why it
    /// did not take it.
    fn post(&self, body: &[u8], timeout: Duration) -> Vec<Result<(), String>> {
        let mut results = Vec::new();
        for (name, path) in &self.paths {
            let mut request = format!(
                "POST {path} HTTP/1.1\r\nHost: sluice\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            request.extend_from_slice(body);
            results.push(match crate::fetch::ask(self.at, &request, timeout) {
                Ok((status, _)) if (200..300).contains(&status) => Ok(()),
                Ok((status, answer)) => {
                    let why = crate::fetch::shown(&answer).map(|text| format!(" ({text})")).unwrap_or_default();
                    Err(format!("{name}: answered {status}{why}"))
                }
                Err(e) => Err(format!("{name}: {e}")),
            });
        }
        results
    }
}

/// How long the last export at a stop may take, all collectors together: what is
/// still queued then is counted as failed.
const LAST_EXPORT: Duration = Duration::from_secs(5);

/// The exporter's loop: a batch when the delay is up or a batch is full, and what is
/// left once `stop` is triggered (within [`LAST_EXPORT`]).
fn export(settings: &TraceSettings, spans: &Spans, client: &Client, b: Batching, stop: &StopSignal) {
    let mut last = Instant::now();
    // Per collector: whether its last export failed (said once, and when it recovers).
    let mut failing = vec![false; client.paths.len()];
    let mut dropped = 0;
    let mut end = None;
    loop {
        let stopping = stop.is_triggered();
        if !stopping && spans.len() < b.batch && last.elapsed() < b.delay {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        // The stop's deadline, set the first time the stop is seen.
        if stopping && end.is_none() {
            end = Some(Instant::now() + LAST_EXPORT);
        }
        last = Instant::now();
        loop {
            let timeout = match end {
                Some(end) => end.saturating_duration_since(Instant::now()).min(b.timeout),
                None => b.timeout,
            };
            if timeout.is_zero() {
                // Out of time at a stop: what is left is not sent.
                let left = spans.take(usize::MAX).len();
                spans.count_export(left * client.paths.len(), false);
                tracing::warn!(target: "sluice::trace", "{left} span(s) not exported: the stop's last export ran out of time");
                break;
            }
            let batch = spans.take(b.batch);
            if batch.is_empty() {
                break;
            }
            let results = client.post(&settings.encode(&batch), timeout);
            for (result, failing) in results.iter().zip(failing.iter_mut()) {
                spans.count_export(batch.len(), result.is_ok());
                match (result, *failing) {
                    (Err(why), false) => tracing::warn!(target: "sluice::trace", "spans not exported: {why}"),
                    (Ok(()), true) => tracing::info!(target: "sluice::trace", "spans exported again"),
                    _ => {}
                }
                *failing = result.is_err();
            }
            if batch.len() < b.batch {
                break;
            }
        }
        if spans.dropped() != dropped {
            dropped = spans.dropped();
            tracing::warn!(target: "sluice::trace", "{dropped} span(s) dropped so far: the queue was full");
        }
        if stopping {
            return;
        }
    }
}
