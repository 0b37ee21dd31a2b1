//! Fetching what a configuration names by URL while it loads (an `auth/validator`
//! key set, `jwk_url`), through the gateway's own backend client: the URL becomes
//! the one `no-op` backend of a small gateway served by the tokio driver on a
//! loopback port for the length of one request. So the fetch verifies TLS, trusts
//! the roots and follows the proxy settings (`HTTPS_PROXY`, `NO_PROXY`) as any
//! backend call does, with no second HTTP client in the binary. [`refresh`] fetches
//! such sets again while the gateway serves, when core says they are due.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::StopSignal;
use sluice_core::gateway::jwt::{KeySet, KeySource};
use sluice_core::plan::Gateway;
use sluice_core::serve::Options;
use sluice_core::tls::{Environment, FetchRequest};

/// The largest document fetched: 1 MiB (a key set is a few KiB).
const MAX_BYTES: usize = 1 << 20;

/// How long the fetch may take, all told.
const DEADLINE: Duration = Duration::from_secs(10);

/// Fetches `req.url` with the proxy settings and roots of `env` (whose own `fetch`
/// is not used): the body of a 200 answer, or why not.
pub(crate) fn fetch(req: &FetchRequest, env: &Environment) -> Result<Vec<u8>, String> {
    let url = &req.url;
    let (origin, target) = split_url(url)?;
    let mut client_tls = serde_json::Map::new();
    if req.insecure {
        client_tls.insert("allow_insecure_connections".into(), true.into());
    }
    if let Some(ca) = &req.ca {
        client_tls.insert("ca_certs".into(), vec![ca.clone()].into());
    }
    let config = serde_json::json!({
        "version": 3,
        "timeout": format!("{}s", DEADLINE.as_secs()),
        "client_tls": client_tls,
        // The reason a call failed comes back in the answer's body, for the error.
        "extra_config": {"router": {"return_error_msg": true}},
        "endpoints": [{
            "endpoint": "/fetch",
            "output_encoding": "no-op",
            // A redirect is not followed: it could lead from https to plain HTTP.
            "backend": [{"host": [origin], "url_pattern": target, "encoding": "no-op",
                "extra_config": {"backend/http/client": {"no_redirect": true}}}]
        }]
    });
    let (server, stop) = loopback(&config, env).map_err(|e| format!("cannot fetch {url}: {e}"))?;
    let answer = get(server.listening.gateway);
    stop.trigger();
    server.join();
    let (status, body) = answer.map_err(|e| format!("cannot fetch {url}: {e}"))?;
    if status != 200 {
        let why = match (status, shown(&body)) {
            (300..=399, _) => " (a redirect, not followed: name the URL it leads to)".to_string(),
            (_, None) => String::new(),
            (_, Some(text)) => format!(" ({text})"),
        };
        return Err(format!("cannot fetch {url}: it answered {status}{why}"));
    }
    Ok(body)
}

/// The most of an answer's body a message shows.
const SHOWN: usize = 200;

/// An answer's body (a key set server's, a collector's, or the loopback gateway's
/// reason) as a log line or an error shows it: its first 200 bytes, trimmed, quoted
/// and escaped as `{:?}` writes a string, as other messages quote a peer's text (a
/// line break, a control character, a quote show escaped: they cannot end the line
/// or forge another), a byte that is not UTF-8 as `\xNN`, with `...` after it when
/// cut. `None` when there is nothing to show.
pub(crate) fn shown(body: &[u8]) -> Option<String> {
    let text = body[..body.len().min(SHOWN)].trim_ascii();
    if text.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 8);
    out.push('"');
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                // As `{:?}` writes a string: a single quote as it is.
                '\'' => out.push(c),
                c => out.extend(c.escape_debug()),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    if body.len() > SHOWN {
        out.push_str("...");
    }
    Some(out)
}

/// Serves `config` on a loopback port with one tokio worker and no admin listener:
/// the small gateway through whose backend client the binary's own requests go. It is
/// [`Gateway::quiet`]: its access lines and backend failures are not logged (an
/// export every few seconds would fill the log with them); the caller says what
/// failed, once, in its own words.
pub(crate) fn loopback(
    config: &serde_json::Value,
    env: &Environment,
) -> Result<(sluice_tokio::Server, StopSignal), String> {
    let mut gw = Gateway::load_with(&config.to_string(), env).map_err(|e| e.to_string())?.gateway;
    gw.quiet = true;
    let mut opts = Options::new(&gw, SocketAddr::from(([127, 0, 0, 1], 0)));
    opts.threads = 1;
    opts.admin_listen = None;
    let stop = StopSignal::new();
    let server = sluice_tokio::start(Arc::new(gw), opts, stop.clone()).map_err(|e| format!("no loopback port: {e}"))?;
    Ok((server, stop))
}

/// Starts the thread that keeps `sources` fresh: once a second it fetches again each
/// set that is due ([`KeySource::due`]: its `cache_duration` over, or a token naming a
/// key it lacks after its cooldown), with an environment from `env`, and puts a set
/// that parses in place. A failed fetch keeps the set in use and is logged; it counts
/// as a fetch for the timing, so an unreachable server is not hammered. Ends with
/// `stop`.
pub(crate) fn refresh(sources: Vec<Arc<KeySource>>, env: impl Fn() -> Environment + Send + 'static, stop: StopSignal) {
    let spawned = std::thread::Builder::new().name("sluice-keys".into()).spawn(move || {
        let started = Instant::now();
        let mut last = vec![started; sources.len()];
        while !stop.is_triggered() {
            std::thread::sleep(Duration::from_secs(1));
            let now = Instant::now();
            for (source, last) in sources.iter().zip(last.iter_mut()) {
                let Some(req) = source.request().filter(|_| source.due(*last, now)) else { continue };
                *last = now;
                // A fetch that panics is a failed fetch: the thread goes on.
                let fetched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    fetch(req, &env()).and_then(|bytes| KeySet::parse(&bytes).map_err(|e| format!("{}: {e}", req.url)))
                }))
                .unwrap_or_else(|_| Err(format!("cannot fetch {}: the fetch failed (a panic)", req.url)));
                match fetched {
                    Ok(keys) => {
                        let count = keys.len();
                        source.replace(keys);
                        tracing::info!(target: "sluice::jwt", "key set {} fetched again: {count} key(s)", req.url);
                    }
                    Err(e) => tracing::warn!(target: "sluice::jwt", "{e}; the key set in use is kept"),
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(target: "sluice::jwt", "fetched key sets will not be refreshed: no thread: {e}");
    }
}

/// `scheme://authority` and the path with its query, of an `http(s)` URL.
fn split_url(url: &str) -> Result<(String, String), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(format!("{url:?} is not an absolute URL"));
    };
    if !matches!(scheme, "http" | "https") || authority.as_str().contains('@') {
        return Err(format!("{url:?}: only http(s) URLs without credentials are fetched"));
    }
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    if target.contains(['{', '}']) {
        return Err(format!("{url:?}: braces in the path are not fetched"));
    }
    Ok((format!("{scheme}://{authority}"), target.to_string()))
}

/// One `GET /fetch` to the loopback gateway: the status and the whole body.
fn get(at: SocketAddr) -> Result<(u16, Vec<u8>), String> {
    ask(at, b"GET /fetch HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n", DEADLINE)
}

/// Sends `request` (a whole HTTP/1.1 request, `Connection: close`) to the loopback
/// gateway at `at`, and reads the status and the whole body with core's HTTP/1.1
/// client codec (its framing, chunked or not, and its limits), within `deadline`.
pub(crate) fn ask(at: SocketAddr, request: &[u8], deadline: Duration) -> Result<(u16, Vec<u8>), String> {
    use sluice_core::http1::{ClientConn, ClientEvent, Limits};
    let mut s = TcpStream::connect_timeout(&at, deadline).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(deadline + Duration::from_secs(2))).map_err(|e| e.to_string())?;
    s.write_all(request).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.take((MAX_BYTES + 64 * 1024) as u64).read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let method = if request.starts_with(b"HEAD ") { http::Method::HEAD } else { http::Method::GET };
    let mut codec = ClientConn::new(method, Limits::default());
    let (mut status, mut body, mut rest) = (0, Vec::new(), &raw[..]);
    loop {
        let (used, event) = codec.handle_input(rest).map_err(|e| format!("an answer that does not parse: {e:?}"))?;
        rest = &rest[used..];
        match event {
            ClientEvent::Response(r) => status = r.status.as_u16(),
            ClientEvent::Data(d) => body.extend_from_slice(d),
            ClientEvent::End(_) => break,
            ClientEvent::NeedMore if used == 0 => {
                // All there is was read: a body delimited by the close ends here.
                match codec.handle_eof() {
                    Ok(ClientEvent::End(_)) => break,
                    _ => return Err("the answer was cut short".into()),
                }
            }
            ClientEvent::NeedMore => {}
            ClientEvent::Switched => return Err("the answer switched protocols".into()),
        }
        if body.len() > MAX_BYTES {
            return Err(format!("the answer is over {} KiB", MAX_BYTES >> 10));
        }
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_origin_and_target() {
        assert_eq!(
            split_url("https://idp.example/.well-known/jwks.json?x=1"),
            Ok(("https://idp.example".into(), "/.well-known/jwks.json?x=1".into()))
        );
        assert_eq!(split_url("http://127.0.0.1:8089"), Ok(("http://127.0.0.1:8089".into(), "/".into())));
        assert!(split_url("ftp://x/y").is_err());
        assert!(split_url("https://user:pw@x/y").is_err());
        assert!(split_url("/relative").is_err());
        assert!(split_url("https://x/{a}").is_err());
    }

    #[test]
    fn a_body_is_shown_escaped_and_bounded() {
        assert_eq!(shown(b" \r\n"), None);
        assert_eq!(shown(b"no such key\n").as_deref(), Some(r#""no such key""#));
        assert_eq!(
            shown(b"bad\nWARN forged \"line\" it's\x1b[31m\xff\xc3\xa9").as_deref(),
            Some(r#""bad\nWARN forged \"line\" it's\u{1b}[31m\xffé""#)
        );
        let long = [b'x'; 300];
        assert_eq!(shown(&long), Some(format!("\"{}\"...", "x".repeat(200))));
    }
}
