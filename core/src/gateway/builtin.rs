//! Endpoints the gateway answers itself, as KrakenD does:
//! - `/__health` (GET; `health_path` moves it, `disable_health` turns it off): `{"agents":{},"now":"<RFC 3339 UTC>","status":"ok"}`;
//! - `/__debug/*` (any method, with `debug_endpoint`): `{"message":"pong"}`;
//! - `/__echo/*` (any method, with `echo_endpoint`): the request as received, in
//!   KrakenD's shape (`req_uri`, `req_uri_details`, `req_method`, `req_querystring`,
//!   `req_body`, `req_headers`; map keys sorted, header names in canonical case).
//!
//! With them a configuration can use the gateway itself as a backend
//! (`examples/krakend.json`). Keys inside maps are sorted, as Go's encoder writes them,
//! so answers are byte-identical to KrakenD's for the same request.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::date::rfc3339;
use crate::gateway::json::write_string;
use crate::gateway::response::JSON;
use crate::gateway::upstream::{percent_decode, query_pairs};
use crate::http1::canonical_name;
use crate::request::{ClientRequest, Reply, RequestBody};

/// A built-in endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Health,
    Debug,
    Echo,
}

/// Which built-in endpoint a path names, if it is enabled.
pub fn lookup(path: &str, health: Option<&str>, debug: bool, echo: bool) -> Option<Builtin> {
    let under = |prefix: &str| path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if health == Some(path) {
        Some(Builtin::Health)
    } else if debug && under("/__debug") {
        Some(Builtin::Debug)
    } else if echo && under("/__echo") {
        Some(Builtin::Echo)
    } else {
        None
    }
}

fn json_reply(body: Vec<u8>) -> Reply {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    Reply { status: StatusCode::OK, headers, body }
}

/// Answers a built-in endpoint. `wall` is the wall-clock time (for `/__health`).
pub fn answer(which: Builtin, req: &ClientRequest, wall: SystemTime) -> Reply {
    match which {
        Builtin::Health => {
            let secs = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            json_reply(format!("{{\"agents\":{{}},\"now\":\"{}\",\"status\":\"ok\"}}", rfc3339(secs)).into_bytes())
        }
        Builtin::Debug => json_reply(b"{\"message\":\"pong\"}".to_vec()),
        Builtin::Echo => json_reply(echo(req)),
    }
}

fn echo(req: &ClientRequest) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let uri = match req.query() {
        Some(q) => format!("{}?{q}", req.path()),
        None => req.path().to_string(),
    };
    out.extend_from_slice(b"{\"req_uri\":");
    write_string(&uri, &mut out);
    out.extend_from_slice(b",\"req_uri_details\":{\"fragment\":\"\",\"host\":\"\",\"path\":");
    write_string(&String::from_utf8_lossy(&percent_decode(req.path())), &mut out);
    out.extend_from_slice(b",\"query\":");
    write_string(req.query().unwrap_or(""), &mut out);
    out.extend_from_slice(b",\"user\":\"\"},\"req_method\":");
    write_string(req.method.as_str(), &mut out);
    out.extend_from_slice(b",\"req_querystring\":");
    let mut query: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in query_pairs(req.query().unwrap_or("")) {
        query.entry(k).or_default().push(v);
    }
    write_map(&query, &mut out);
    out.extend_from_slice(b",\"req_body\":");
    let body = match &req.body {
        RequestBody::Full(b) => String::from_utf8_lossy(b),
        _ => "".into(),
    };
    write_string(&body, &mut out);
    out.extend_from_slice(b",\"req_headers\":");
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers.iter() {
        if name.eq_ignore_ascii_case("host") {
            continue;
        }
        headers.entry(canonical_name(name)).or_default().push(String::from_utf8_lossy(value).into_owned());
    }
    write_map(&headers, &mut out);
    out.push(b'}');
    out
}

fn write_map(map: &BTreeMap<String, Vec<String>>, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (k, values)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(k, out);
        out.extend_from_slice(b":[");
        for (j, v) in values.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            write_string(v, out);
        }
        out.push(b']');
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_names() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_300_000), "2026-11-21T22:26:40Z");
        assert_eq!(canonical_name("x-forwarded-for"), "X-Forwarded-For");
        assert_eq!(canonical_name("accept"), "Accept");
        const H: Option<&str> = Some("/__health");
        assert_eq!(lookup("/__health", H, false, false), Some(Builtin::Health));
        assert_eq!(lookup("/__debug/x", H, true, false), Some(Builtin::Debug));
        assert_eq!(lookup("/__debug", H, true, false), Some(Builtin::Debug));
        assert_eq!(lookup("/__debugx", H, true, false), None);
        assert_eq!(lookup("/__debug/x", H, false, true), None);
        assert_eq!(lookup("/__echo/a/b", H, false, true), Some(Builtin::Echo));
        assert_eq!(lookup("/__health", Some("/ping"), false, false), None);
        assert_eq!(lookup("/ping", Some("/ping"), false, false), Some(Builtin::Health));
        assert_eq!(lookup("/__health", None, false, false), None);
    }
}
