//! `modifier/martian` on a backend: header, query, body, URL and cookie changes to the
//! backend call and its answer, read as krakend-martian reads them (Google's martian
//! 2.1 `parse.FromJSON`: one modifier per object, `fifo.Group` to chain several).
//!
//! Every modifier takes `scope`: `["request"]`, `["response"]`, both (the default), or
//! none (`[]`). Request changes are made to the call as the gateway built it (after its
//! rate limit and CEL checks, before a client plugin sees it); response changes to the
//! backend's answer before it is decoded. Changes to an answer's header fields reach
//! the client only from a `no-op` endpoint (KrakenD's too): an aggregating endpoint
//! writes its own.
//!
//! | modifier | fields | request | response |
//! |---|---|---|---|
//! | `header.Modifier` | `name`, `value` | set (replaces); `Host` sets the `Host` field | set |
//! | `header.Append` | `name`, `value` | adds a value | adds a value |
//! | `header.Blacklist` | `names` | removes | removes |
//! | `querystring.Modifier` | `name`, `value` | sets the parameter; the query is written again sorted by name and escaped, as Go's `url.Values.Encode` | - |
//! | `body.Modifier` | `contentType`, `body` (base64) | replaces the body and `Content-Type`, drops `Content-Encoding` | the same |
//! | `url.Modifier` | `scheme`, `host`, `path`, `query` | each one given replaces that part; the call is then made to the new scheme and host, its `Host` field unchanged (as Go's client) | - |
//! | `cookie.Modifier` | `name`, `value`, `path`, `domain`, `expires`, `secure`, `httpOnly`, `maxAge` | adds `name=value` to `Cookie` | adds a `Set-Cookie` |
//! | `fifo.Group` | `modifiers`, `aggregateErrors` | each in order | each in order |
//!
//! Refused when read, where martian or Go would do something a gateway should not or
//! would fail each call: any other modifier (by name), a scope a modifier does not
//! have, header names that frame the message or name the hop (`Content-Length`,
//! `Transfer-Encoding`, `Connection`, ...: the gateway writes those), appending a
//! second `Host`, values that are not valid header values, a `body` that is not
//! base64. One difference, deliberate: a response `body.Modifier` ignores the call's
//! `Range` field (martian answers 206 with a slice of the new body).

use std::fmt::Write as _;

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::config::join;
use crate::gateway::plugin::{BackendRequest, BackendResponse, ClientPlugin, PluginFault, Verdict};

/// The modifiers the gateway knows, in the refusal's words.
const KNOWN: &str = "header.Modifier, header.Append, header.Blacklist, querystring.Modifier, body.Modifier, \
                     url.Modifier, cookie.Modifier, fifo.Group";

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    SetHeader(HeaderName, HeaderValue),
    AddHeader(HeaderName, HeaderValue),
    SetHost(String),
    Remove(Vec<HeaderName>),
    SetQuery(String, String),
    Body(HeaderValue, Vec<u8>),
    Url { path: Option<String>, query: Option<String> },
    RequestCookie(String),
    ResponseCookie(HeaderValue),
}

/// A backend's modifiers, compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Martian {
    request: Vec<Step>,
    response: Vec<Step>,
    /// `url.Modifier`'s `scheme` and `host` (the last one given of each): where the
    /// call goes instead, applied to the backend's hosts when the plan is built.
    pub scheme: Option<String>,
    pub host: Option<String>,
}

type Failure = (String, String);

/// Which of request and response a modifier's `scope` names.
fn scope(o: &Map<String, Value>, at: &str, has: (bool, bool)) -> Result<(bool, bool), Failure> {
    let at = join(at, "scope");
    let (mut req, mut resp) = (false, false);
    match o.get("scope") {
        None | Some(Value::Null) => return Ok(has),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some("request") if has.0 => req = true,
                    Some("response") if has.1 => resp = true,
                    Some(s @ ("request" | "response")) => {
                        return Err((format!("{at}[{i}]"), format!("this modifier has no {s:?} scope")));
                    }
                    _ => return Err((format!("{at}[{i}]"), format!("{item} is not \"request\" or \"response\""))),
                }
            }
        }
        Some(other) => return Err((at, format!("expected a list such as [\"request\", \"response\"], found {other}"))),
    }
    Ok((req, resp))
}

fn text<'v>(o: &'v Map<String, Value>, key: &str, at: &str, required: bool) -> Result<Option<&'v str>, Failure> {
    match o.get(key) {
        None | Some(Value::Null) if required => Err((join(at, key), "missing (required)".into())),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err((join(at, key), format!("expected a string, found {other}"))),
    }
}

/// A header name a modifier may touch (the framing and the hop are the gateway's).
fn header_name(name: &str, at: &str) -> Result<HeaderName, Failure> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| (at.to_string(), format!("{name:?} is not a header name")))?;
    if crate::http1::is_hop_by_hop_name(n.as_str().as_bytes())
        || matches!(n.as_str(), "content-length" | "transfer-encoding")
    {
        return Err((at.to_string(), format!("{name:?} frames the message or names the hop: the gateway writes it")));
    }
    Ok(n)
}

fn header_value(value: &str, at: &str) -> Result<HeaderValue, Failure> {
    HeaderValue::from_str(value).map_err(|_| (at.to_string(), format!("{value:?} is not a valid header value")))
}

impl Martian {
    /// Reads the value of `extra_config."modifier/martian"`, written at `at`; on error,
    /// where (`at` and below, such as `...["fifo.Group"].modifiers[1]`) and why.
    pub fn parse(v: &Value, at: &str) -> Result<Martian, Failure> {
        let mut m = Martian::default();
        m.read(v, at, (true, true))?;
        Ok(m)
    }

    /// Reads one `{"name": {...}}` at `at`, used where `within` allows.
    fn read(&mut self, v: &Value, at: &str, within: (bool, bool)) -> Result<(), Failure> {
        let Value::Object(outer) = v else {
            return Err((at.to_string(), format!("expected an object naming one modifier, found {v}")));
        };
        if outer.len() != 1 {
            let names: Vec<&str> = outer.keys().map(String::as_str).collect();
            return Err((
                at.to_string(),
                format!("expected one modifier, found {}: {names:?} (chain several in a fifo.Group)", outer.len()),
            ));
        }
        let Some((name, body)) = outer.iter().next() else {
            return Err((at.to_string(), "expected one modifier, found none".into()));
        };
        let at = join(at, name);
        let Value::Object(o) = body else {
            return Err((at, format!("expected an object, found {body}")));
        };
        let both = (true, true);
        let (req, resp) = match name.as_str() {
            "querystring.Modifier" | "url.Modifier" => scope(o, &at, (true, false))?,
            "header.Modifier" | "header.Append" | "header.Blacklist" | "body.Modifier" | "cookie.Modifier"
            | "fifo.Group" => scope(o, &at, both)?,
            other => {
                return Err((at.clone(), format!("modifier {other:?} is not supported by Sluice (it serves {KNOWN})")));
            }
        };
        let fields: &[&str] = match name.as_str() {
            "header.Modifier" | "header.Append" | "querystring.Modifier" => &["name", "value"],
            "header.Blacklist" => &["names"],
            "body.Modifier" => &["contentType", "body"],
            "url.Modifier" => &["scheme", "host", "path", "query"],
            "cookie.Modifier" => &["name", "value", "path", "domain", "expires", "secure", "httpOnly", "maxAge"],
            _ => &["modifiers", "aggregateErrors"],
        };
        if let Some(k) = o.keys().find(|k| *k != "scope" && !fields.contains(&k.as_str())) {
            return Err((join(&at, k), format!("unknown field (martian reads {}, scope)", fields.join(", "))));
        }
        let (req, resp) = (req && within.0, resp && within.1);
        let push = |m: &mut Martian, step: Step, on: (bool, bool)| {
            if on.0 {
                m.request.push(step.clone());
            }
            if on.1 {
                m.response.push(step);
            }
        };
        match name.as_str() {
            "header.Modifier" | "header.Append" => {
                let raw = text(o, "name", &at, true)?.unwrap_or_default();
                let value = text(o, "value", &at, false)?.unwrap_or_default();
                let value_at = join(&at, "value");
                if raw.eq_ignore_ascii_case("host") {
                    if name == "header.Append" {
                        return Err((join(&at, "name"), "a request has one Host: use header.Modifier".into()));
                    }
                    header_value(value, &value_at)?;
                    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~:[]".contains(&b))
                    {
                        return Err((value_at, format!("{value:?} is not host[:port]")));
                    }
                    // On an answer, Go sets nothing.
                    push(self, Step::SetHost(value.to_string()), (req, false));
                    return Ok(());
                }
                let n = header_name(raw, &join(&at, "name"))?;
                let v = header_value(value, &value_at)?;
                let step = if name == "header.Modifier" { Step::SetHeader(n, v) } else { Step::AddHeader(n, v) };
                push(self, step, (req, resp));
            }
            "header.Blacklist" => {
                let names_at = join(&at, "names");
                let Some(Value::Array(list)) = o.get("names") else {
                    return Err((names_at, "missing (required): a list of header names".into()));
                };
                let mut names = Vec::with_capacity(list.len());
                for (i, n) in list.iter().enumerate() {
                    let item_at = format!("{names_at}[{i}]");
                    let Some(s) = n.as_str() else { return Err((item_at, format!("expected a string, found {n}"))) };
                    // The Host field is the backend's authority: removing it changes nothing.
                    if s.eq_ignore_ascii_case("host") {
                        continue;
                    }
                    names.push(header_name(s, &item_at)?);
                }
                push(self, Step::Remove(names), (req, resp));
            }
            "querystring.Modifier" => {
                let n = text(o, "name", &at, true)?.unwrap_or_default();
                let v = text(o, "value", &at, false)?.unwrap_or_default();
                push(self, Step::SetQuery(n.to_string(), v.to_string()), (req, false));
            }
            "body.Modifier" => {
                let ct =
                    header_value(text(o, "contentType", &at, false)?.unwrap_or_default(), &join(&at, "contentType"))?;
                let encoded = text(o, "body", &at, false)?.unwrap_or_default();
                let body = base64_decode(encoded).map_err(|why| (join(&at, "body"), why))?;
                push(self, Step::Body(ct, body), (req, resp));
            }
            "url.Modifier" => {
                let path = text(o, "path", &at, false)?.filter(|s| !s.is_empty());
                if let Some(p) = path
                    && (!p.starts_with('/')
                        || p.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'#' || b == b'?'))
                {
                    return Err((
                        join(&at, "path"),
                        format!("{p:?} is not a path (it starts with \"/\", without spaces, \"?\" or \"#\")"),
                    ));
                }
                let query = text(o, "query", &at, false)?.filter(|s| !s.is_empty());
                if let Some(q) = query
                    && q.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'#')
                {
                    return Err((join(&at, "query"), format!("{q:?} is not a query string")));
                }
                if req {
                    if let Some(s) = text(o, "scheme", &at, false)?.filter(|s| !s.is_empty()) {
                        if !matches!(s, "http" | "https") {
                            return Err((join(&at, "scheme"), format!("{s:?}: \"http\" or \"https\"")));
                        }
                        self.scheme = Some(s.to_string());
                    }
                    if let Some(h) = text(o, "host", &at, false)?.filter(|s| !s.is_empty()) {
                        if !h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~:[]".contains(&b)) {
                            return Err((join(&at, "host"), format!("{h:?} is not host[:port]")));
                        }
                        self.host = Some(h.to_string());
                    }
                }
                if path.is_some() || query.is_some() {
                    push(
                        self,
                        Step::Url { path: path.map(str::to_string), query: query.map(str::to_string) },
                        (req, false),
                    );
                }
            }
            "cookie.Modifier" => {
                let n = text(o, "name", &at, true)?.unwrap_or_default();
                let v = text(o, "value", &at, false)?.unwrap_or_default();
                if n.is_empty() || !n.bytes().all(is_token) {
                    return Err((join(&at, "name"), format!("{n:?} is not a cookie name")));
                }
                let value = cookie_value(v);
                push(self, Step::RequestCookie(format!("{n}={value}")), (req, false));
                if resp {
                    let set = set_cookie(n, &value, o, &at)?;
                    push(self, Step::ResponseCookie(header_value(&set, &at)?), (false, true));
                }
            }
            _ => {
                // fifo.Group
                let list_at = join(&at, "modifiers");
                let Some(Value::Array(list)) = o.get("modifiers") else {
                    return Err((list_at, "missing (required): a list of modifiers".into()));
                };
                if let Some(a) = o.get("aggregateErrors")
                    && !a.is_boolean()
                {
                    return Err((join(&at, "aggregateErrors"), format!("expected true or false, found {a}")));
                }
                for (i, item) in list.iter().enumerate() {
                    self.read(item, &format!("{list_at}[{i}]"), (req, resp))?;
                }
            }
        }
        Ok(())
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A query set as it is (Go's `RawQuery`), with the bytes a request line cannot carry
/// (non-ASCII, `"`, `<`, `>`, `\\`, `^`, `` ` ``, `{`, `|`, `}`) percent-encoded.
fn raw_query(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    for &b in q.as_bytes() {
        if b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A cookie value as Go's `sanitizeCookieValue` leaves it: bytes it does not allow
/// dropped, quoted when it has a space or a comma.
fn cookie_value(v: &str) -> String {
    let kept: String =
        v.chars().filter(|&c| (c as u32) >= 0x20 && (c as u32) < 0x7f && c != '"' && c != ';' && c != '\\').collect();
    if kept.starts_with(' ') || kept.ends_with(' ') || kept.contains(',') || kept.contains(' ') {
        format!("\"{kept}\"")
    } else {
        kept
    }
}

/// `Set-Cookie` as Go's `Cookie.String` writes it.
fn set_cookie(name: &str, value: &str, o: &Map<String, Value>, at: &str) -> Result<String, Failure> {
    let mut s = format!("{name}={value}");
    if let Some(p) = text(o, "path", at, false)?.filter(|p| !p.is_empty()) {
        let p: String = p.chars().filter(|&c| (c as u32) >= 0x20 && (c as u32) < 0x7f && c != ';').collect();
        let _ = write!(s, "; Path={p}");
    }
    if let Some(d) = text(o, "domain", at, false)?.filter(|d| !d.is_empty()) {
        let d = d.strip_prefix('.').unwrap_or(d);
        if !d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            return Err((join(at, "domain"), format!("{d:?} is not a domain")));
        }
        let _ = write!(s, "; Domain={d}");
    }
    if let Some(e) = text(o, "expires", at, false)? {
        let secs = crate::date::parse_rfc3339(e)
            .ok_or_else(|| (join(at, "expires"), format!("{e:?} is not an RFC 3339 time (2026-01-02T15:04:05Z)")))?;
        let _ = write!(s, "; Expires={}", crate::date::http_date(secs));
    }
    match o.get("maxAge") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_i64().is_some() => {
            let n = n.as_i64().unwrap_or(0);
            if n > 0 {
                let _ = write!(s, "; Max-Age={n}");
            } else if n < 0 {
                s.push_str("; Max-Age=0");
            }
        }
        Some(other) => return Err((join(at, "maxAge"), format!("expected a whole number of seconds, found {other}"))),
    }
    for (key, attr) in [("httpOnly", "HttpOnly"), ("secure", "Secure")] {
        match o.get(key) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => {
                let _ = write!(s, "; {attr}");
            }
            Some(other) => return Err((join(at, key), format!("expected true or false, found {other}"))),
        }
    }
    Ok(s)
}

/// Standard base64 with padding, as Go's `[]byte` fields are written in JSON.
fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| format!("not base64 (standard, padded): {e}"))
}

/// Escapes bytes as Go's `url.QueryEscape` (`+` for a space).
fn query_escape(s: &[u8], out: &mut String) {
    for &b in s {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}

/// `query` with `name` set to `value`, written as Go's `url.Values.Encode` writes it:
/// pairs decoded (`+` a space, then percent-decoding; bytes kept as they are, valid
/// UTF-8 or not), names sorted (values of one name in their order), each escaped as
/// `url.QueryEscape` escapes it.
fn set_query(query: &str, name: &str, value: &str) -> String {
    let decode = |s: &str| crate::config::percent_decode(&s.replace('+', " ")).into_owned();
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .filter(|(k, _)| k[..] != *name.as_bytes())
        .collect();
    pairs.push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::with_capacity(query.len() + name.len() + value.len() + 2);
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        query_escape(&k, &mut out);
        out.push('=');
        query_escape(&v, &mut out);
    }
    out
}

/// A path as Go writes a URL's `Path` (`EscapedPath`, `shouldEscape` for a path): bytes
/// outside the unreserved and `$&+,/:;=@` escaped (a `%` too: the path is taken as
/// written, not as encoded).
fn escape_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~$&+,;=:@/".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

impl ClientPlugin for Martian {
    fn on_request(&self, call: &mut BackendRequest) -> Result<Verdict, PluginFault> {
        for step in &self.request {
            match step {
                Step::SetHeader(n, v) => {
                    call.headers.insert(n.clone(), v.clone());
                }
                Step::AddHeader(n, v) => {
                    call.headers.append(n.clone(), v.clone());
                }
                Step::SetHost(h) => call.authority = h.clone(),
                Step::Remove(names) => {
                    for n in names {
                        call.headers.remove(n);
                    }
                }
                Step::SetQuery(n, v) => call.query = Some(set_query(call.query.as_deref().unwrap_or_default(), n, v)),
                Step::Body(ct, body) => {
                    call.headers.insert(http::header::CONTENT_TYPE, ct.clone());
                    call.headers.remove(http::header::CONTENT_ENCODING);
                    call.body = body.clone();
                }
                Step::Url { path, query } => {
                    if let Some(p) = path {
                        call.path = escape_path(p);
                    }
                    if let Some(q) = query {
                        call.query = Some(raw_query(q));
                    }
                }
                Step::RequestCookie(pair) => {
                    let joined = match call.headers.get(http::header::COOKIE).map(HeaderValue::as_bytes) {
                        Some(c) if !c.is_empty() => [c, b"; ", pair.as_bytes()].concat(),
                        _ => pair.clone().into_bytes(),
                    };
                    if let Ok(v) = HeaderValue::from_bytes(&joined) {
                        call.headers.insert(http::header::COOKIE, v);
                    }
                }
                Step::ResponseCookie(_) => {}
            }
        }
        Ok(Verdict::Continue)
    }

    fn on_response(&self, _call: &BackendRequest, response: &mut BackendResponse) -> Result<(), PluginFault> {
        for step in &self.response {
            match step {
                Step::SetHeader(n, v) => {
                    response.headers.insert(n.clone(), v.clone());
                }
                Step::AddHeader(n, v) => {
                    response.headers.append(n.clone(), v.clone());
                }
                Step::Remove(names) => {
                    for n in names {
                        response.headers.remove(n);
                    }
                }
                Step::Body(ct, body) => {
                    response.headers.insert(http::header::CONTENT_TYPE, ct.clone());
                    response.headers.remove(http::header::CONTENT_ENCODING);
                    response.body = body.clone();
                }
                Step::ResponseCookie(c) => {
                    response.headers.append(http::header::SET_COOKIE, c.clone());
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, Method, StatusCode};

    fn call() -> BackendRequest {
        let mut headers = HeaderMap::new();
        headers.insert("x-old", HeaderValue::from_static("1"));
        headers.insert("cookie", HeaderValue::from_static("a=1"));
        BackendRequest {
            method: Method::GET,
            path: "/p".into(),
            query: Some("z=1&b=x%20y&b=2".into()),
            authority: "api:80".into(),
            headers,
            body: Vec::new(),
            ..BackendRequest::default()
        }
    }

    #[test]
    fn request_and_response() {
        let m = Martian::parse(&serde_json::json!({"fifo.Group": {"modifiers": [
            {"header.Modifier": {"name": "X-Set", "value": "v", "scope": ["request", "response"]}},
            {"header.Append": {"name": "X-Old", "value": "2"}},
            {"header.Blacklist": {"names": ["Cookie"], "scope": ["response"]}},
            {"querystring.Modifier": {"name": "b", "value": "n w"}},
            {"cookie.Modifier": {"name": "s", "value": "t", "path": "/", "maxAge": 60, "httpOnly": true,
                                 "expires": "2030-01-02T03:04:05Z"}},
            {"body.Modifier": {"contentType": "application/json", "body": "eyJtc2ciOiJ5b3Ugcm9jayEifQ==", "scope": ["request"]}},
            {"header.Modifier": {"name": "Host", "value": "other.example"}}
        ]}}), "")
        .unwrap();
        let mut c = call();
        assert_eq!(m.on_request(&mut c), Ok(Verdict::Continue));
        assert_eq!(c.headers["x-set"], "v");
        assert_eq!(c.headers.get_all("x-old").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(c.query.as_deref(), Some("b=n+w&z=1"));
        assert_eq!(c.headers["cookie"], "a=1; s=t");
        assert_eq!(c.body, br#"{"msg":"you rock!"}"#);
        assert_eq!(c.headers["content-type"], "application/json");
        assert_eq!(c.authority, "other.example");
        let mut r = BackendResponse { status: StatusCode::OK, headers: HeaderMap::new(), body: b"x".to_vec() };
        r.headers.insert("cookie", HeaderValue::from_static("c"));
        m.on_response(&c, &mut r).unwrap();
        assert_eq!(r.headers["x-set"], "v");
        assert_eq!(r.headers["x-old"], "2");
        assert!(r.headers.get("cookie").is_none());
        assert_eq!(r.headers["set-cookie"], "s=t; Path=/; Expires=Wed, 02 Jan 2030 03:04:05 GMT; Max-Age=60; HttpOnly");
        assert_eq!(r.body, b"x");
    }

    #[test]
    fn refusals_name_the_place() {
        let bad = |v: Value| Martian::parse(&v, "").unwrap_err();
        assert_eq!(bad(serde_json::json!({"status.Modifier": {"statusCode": 200}})).0, "[\"status.Modifier\"]");
        assert!(bad(serde_json::json!({"a": {}, "b": {}})).1.contains("expected one modifier, found 2"));
        let (at, why) = bad(
            serde_json::json!({"fifo.Group": {"modifiers": [{"querystring.Modifier": {"name": "a", "scope": ["response"]}}]}}),
        );
        assert_eq!(at, "[\"fifo.Group\"].modifiers[0][\"querystring.Modifier\"].scope[0]");
        assert_eq!(why, "this modifier has no \"response\" scope");
        assert!(
            bad(serde_json::json!({"header.Modifier": {"name": "Content-Length", "value": "1"}})).1.contains("frames")
        );
        assert!(bad(serde_json::json!({"header.Append": {"name": "host", "value": "a"}})).1.contains("one Host"));
        assert!(bad(serde_json::json!({"body.Modifier": {"body": "%%%="}})).1.contains("not base64"));
        assert!(bad(serde_json::json!({"header.Modifier": {"value": "v"}})).1.contains("missing"));
        assert!(bad(serde_json::json!({"header.Modifier": {"name": "a", "value": "x\ny"}})).1.contains("header value"));
        assert!(bad(serde_json::json!({"header.Modifier": {"name": "Host", "value": ""}})).1.contains("host[:port]"));
        assert!(
            bad(serde_json::json!({"header.Modifier": {"name": "Host", "value": "a\tb"}})).1.contains("host[:port]")
        );
        assert!(bad(serde_json::json!({"url.Modifier": {"host": "a b:1"}})).1.contains("host[:port]"));
        let (at, why) = bad(serde_json::json!({"header.Modifier": {"name": "a", "value": "1", "scopes": ["request"]}}));
        assert_eq!(
            (at.as_str(), why.as_str()),
            ("[\"header.Modifier\"].scopes", "unknown field (martian reads name, value, scope)")
        );
    }

    #[test]
    fn base64_and_query() {
        assert_eq!(base64_decode("eyJtc2ciOiJ5b3Ugcm9jayEifQ==").unwrap(), br#"{"msg":"you rock!"}"#);
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("abc").is_err());
        assert_eq!(set_query("b=%C3%A9%26&sig=%FF&b=2", "a", "1 2"), "a=1+2&b=%C3%A9%26&b=2&sig=%FF");
        assert_eq!(set_query("", "a", "x"), "a=x");
        assert_eq!(escape_path("/a b/%/é/(1)!*'"), "/a%20b/%25/%C3%A9/%281%29%21%2A%27");
        assert_eq!(raw_query("q=café&a=1|2"), "q=caf%C3%A9&a=1%7C2");
    }
}
