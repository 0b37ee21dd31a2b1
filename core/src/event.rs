//! What happened, to be logged and counted: [`Log`], one line each (the access
//! line, backend failures and redirects, TLS failures, forward-proxy and egress
//! events, backend call outcomes). Drivers write them with [`emit`] (the `tracing`
//! feature); [`crate::ops::stats`] counts them.

use std::fmt;
use std::net::IpAddr;

use http::StatusCode;

use crate::request::AccessLine;
#[cfg(feature = "tracing")]
use crate::request::Scope;

/// A line to log.
#[derive(Debug)]
pub enum Log<'g> {
    /// One per answered request (`sluice::access`, info; an admin page's
    /// `sluice::admin`, debug).
    Access(AccessLine),
    /// A backend call failed or broke off (`sluice::backend`, warn).
    Backend { endpoint: &'g str, backend: usize, reason: String },
    /// A client's TLS handshake or session failed (`sluice::tls`, info).
    Tls { peer: IpAddr, reason: String },
    /// A backend call was redirected (`sluice::backend`, info).
    Redirect { endpoint: &'g str, backend: usize, status: StatusCode, to: String },
    /// A forwarded request or tunnel failed or broke off (`sluice::forward`, warn).
    Forward { dest: String, reason: String },
    /// The egress policy refused a destination (`sluice::egress`, warn).
    Denied { peer: IpAddr, dest: String, reason: String },
    /// A CONNECT tunnel opened (`sluice::forward`, debug); its access line comes when
    /// it closes.
    Tunnel { dest: String },
    /// A backend call of gateway endpoint `endpoint` (its index) ended: the status it
    /// answered, `None` when it failed (`sluice::backend`, trace; counted by
    /// [`crate::ops::stats`]).
    Call { endpoint: usize, backend: usize, status: Option<StatusCode> },
    /// Why a request got its CORS fields or not, with `security/cors`'s `debug`
    /// (`sluice::cors`, debug).
    Cors { peer: IpAddr, path: String, note: String },
    /// Why a token was refused, with `auth/validator`'s `operation_debug`
    /// (`sluice::jwt`, debug).
    Jwt { peer: IpAddr, path: String, why: &'static str },
    /// A backend's circuit breaker changed state, with its `log_status_change`
    /// (`sluice::backend`, warn; KrakenD's words).
    Breaker { name: &'g str, from: &'static str, to: &'static str },
}

impl fmt::Display for Log<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Log::Access(line) => line.fmt(f),
            Log::Backend { endpoint, backend, reason } => write!(f, "backend {backend} of {endpoint}: {reason}"),
            Log::Tls { peer, reason } => write!(f, "client {peer}: {reason}"),
            Log::Redirect { endpoint, backend, status, to } => {
                write!(f, "backend {backend} of {endpoint}: {} redirect to {to}", status.as_u16())
            }
            Log::Forward { dest, reason } => write!(f, "forward to {dest}: {reason}"),
            Log::Denied { peer, dest, reason } => write!(f, "client {peer} to {dest} denied: {reason}"),
            Log::Tunnel { dest } => write!(f, "tunnel to {dest} open"),
            Log::Call { endpoint, backend, status: Some(s) } => {
                write!(f, "backend {backend} of endpoint {endpoint}: {}", s.as_u16())
            }
            Log::Call { endpoint, backend, status: None } => {
                write!(f, "backend {backend} of endpoint {endpoint}: failed")
            }
            Log::Cors { peer, path, note } => write!(f, "client {peer} {path}: {note}"),
            Log::Jwt { peer, path, why } => write!(f, "client {peer} {path}: token refused: {why}"),
            Log::Breaker { name, from, to } => {
                write!(f, "[CB] Circuit breaker named '{name}' went from '{from}' to '{to}'")
            }
        }
    }
}

/// Writes `line` to `tracing` under its target and level: the one table of them, for
/// every driver (the `tracing` feature, which the drivers turn on), which call it
/// through [`crate::plan::Gateway::emit`] (a quiet gateway writes nothing). It hands a
/// finished line to the logging facade and does nothing else: without a subscriber
/// nothing is written.
#[cfg(feature = "tracing")]
pub fn emit(line: &Log<'_>) {
    match line {
        Log::Access(l) if *l.scope() == Scope::Admin => tracing::debug!(target: "sluice::admin", "{line}"),
        Log::Access(_) => tracing::info!(target: "sluice::access", "{line}"),
        Log::Tls { .. } => tracing::info!(target: "sluice::tls", "{line}"),
        Log::Redirect { .. } => tracing::info!(target: "sluice::backend", "{line}"),
        Log::Forward { .. } => tracing::warn!(target: "sluice::forward", "{line}"),
        Log::Tunnel { .. } => tracing::debug!(target: "sluice::forward", "{line}"),
        Log::Denied { .. } => tracing::warn!(target: "sluice::egress", "{line}"),
        Log::Backend { .. } => tracing::warn!(target: "sluice::backend", "{line}"),
        Log::Call { .. } => tracing::trace!(target: "sluice::backend", "{line}"),
        Log::Cors { .. } => tracing::debug!(target: "sluice::cors", "{line}"),
        Log::Jwt { .. } => tracing::debug!(target: "sluice::jwt", "{line}"),
        Log::Breaker { .. } => tracing::warn!(target: "sluice::backend", "{line}"),
    }
}
