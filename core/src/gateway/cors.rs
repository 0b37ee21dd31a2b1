//! CORS (`extra_config."security/cors"`), as KrakenD answers it: krakend-cors wraps
//! the whole router in rs/cors (v1.11), so it runs on every request before routing.
//!
//! - A preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered at the
//!   gateway with `options_success_status` (204) and never reaches a backend, whatever
//!   its path; with `options_passthrough` it gets its CORS fields and goes on to
//!   routing like any request (an endpoint, 404 or 405).
//! - A preflight that is not allowed (no `Origin`, an origin, method or header not
//!   allowed) still gets its status, with `Vary` alone: the browser sees no
//!   `Access-Control-Allow-Origin` and refuses the request itself.
//! - Any other request is served as usual; its answer gets `Vary: Origin` and, when its
//!   origin and method are allowed, `Access-Control-Allow-Origin` (`*` when any origin
//!   is allowed, else the request's), `Access-Control-Expose-Headers` and
//!   `Access-Control-Allow-Credentials`. A request that is not allowed is not refused
//!   (the browser keeps the answer from the page).
//!
//! Matching as rs/cors does: origins compared lowercased, `*` allows any, one `*`
//! inside a pattern stands for any run of characters; methods compared as written
//! (`OPTIONS` always allowed); a preflight's requested headers must be lowercase,
//! sorted and each allowed, unless `allow_headers` has `*` (the default).
//!
//! The fields go on whatever answers the request (an endpoint's, a backend's passed
//! through, an error): they are added by the response head writer
//! ([`crate::http1::ServerConn::add_fields`]). A `no-op` backend that sends CORS fields
//! of its own adds them beside these, as lura does (two `Access-Control-Allow-Origin`
//! lines, which browsers refuse): turn CORS off in one of the two.

use http::{Method, StatusCode};

use crate::config::CorsConfig;
use crate::http1::Head;

/// The compiled `security/cors` (see the module docs).
#[derive(Debug, Clone)]
pub struct Cors {
    any_origin: bool,
    /// Exact origins, lowercased.
    origins: Vec<String>,
    /// `prefix*suffix` patterns, lowercased.
    patterns: Vec<(String, String)>,
    methods: Vec<String>,
    any_header: bool,
    /// Lowercased, sorted, without repeats.
    headers: Vec<String>,
    /// The `Vary` field of a preflight answer, whole.
    preflight_vary: &'static [u8],
    /// `access-control-expose-headers: ...` (names in canonical case), whole, or empty.
    expose: Vec<u8>,
    credentials: bool,
    private_network: bool,
    passthrough: bool,
    status: StatusCode,
    /// `access-control-max-age: N`, whole, or empty.
    max_age: Vec<u8>,
    debug: bool,
}

/// What CORS makes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Answer now with this status (a preflight); its fields are written.
    Answer(StatusCode),
    /// Serve it; its answer gets the fields written.
    Serve,
}

const VARY_PREFLIGHT: &[u8] = b"vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n";
const VARY_PREFLIGHT_PNA: &[u8] = b"vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers, \
    Access-Control-Request-Private-Network\r\n";

/// Empty elements a preflight's header list may have (rs/cors's bound).
const MAX_EMPTY_ELEMENTS: usize = 16;

impl Cors {
    pub fn compile(c: &CorsConfig) -> Cors {
        let mut origins = Vec::new();
        let mut patterns = Vec::new();
        for o in &c.allow_origins {
            let o = o.to_ascii_lowercase();
            match o.split_once('*') {
                _ if o == "*" => {}
                Some((prefix, suffix)) => patterns.push((prefix.to_string(), suffix.to_string())),
                None => origins.push(o),
            }
        }
        let mut headers: Vec<String> = c.allow_headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        headers.sort();
        headers.dedup();
        let mut expose = Vec::new();
        if !c.expose_headers.is_empty() {
            let names: Vec<String> = c.expose_headers.iter().map(|h| crate::http1::canonical_name(h)).collect();
            expose = format!("access-control-expose-headers: {}\r\n", names.join(", ")).into_bytes();
        }
        let secs = c.max_age.as_secs();
        Cors {
            any_origin: c.allow_origins.iter().any(|o| o == "*"),
            origins,
            patterns,
            methods: c.allow_methods.clone(),
            any_header: headers.iter().any(|h| h == "*"),
            headers,
            preflight_vary: if c.allow_private_network { VARY_PREFLIGHT_PNA } else { VARY_PREFLIGHT },
            expose,
            credentials: c.allow_credentials,
            private_network: c.allow_private_network,
            passthrough: c.options_passthrough,
            status: StatusCode::from_u16(c.options_success_status).unwrap_or(StatusCode::NO_CONTENT),
            max_age: if secs > 0 { format!("access-control-max-age: {secs}\r\n").into_bytes() } else { Vec::new() },
            debug: c.debug,
        }
    }

    /// Writes the CORS fields of the answer to a request (`method`, `head`) into `out`
    /// and says whether to answer it now. With `debug`, `note` gets why it was (not)
    /// allowed.
    pub fn apply(&self, method: &Method, head: &Head, out: &mut Vec<u8>, note: &mut Option<String>) -> Step {
        let requested = head.get("access-control-request-method");
        match requested {
            Some(requested) if method == Method::OPTIONS => {
                let verdict = self.preflight(requested, head, out);
                self.say(note, "preflight", verdict);
                if self.passthrough { Step::Serve } else { Step::Answer(self.status) }
            }
            _ => {
                let verdict = self.actual(method, head, out);
                self.say(note, "request", verdict);
                Step::Serve
            }
        }
    }

    fn say(&self, note: &mut Option<String>, what: &str, verdict: Result<(), String>) {
        if self.debug {
            *note = Some(match verdict {
                Ok(()) => format!("{what} allowed"),
                Err(why) => format!("{what}: no CORS fields, {why}"),
            });
        }
    }

    fn preflight(&self, requested: &[u8], head: &Head, out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(self.preflight_vary);
        let origin = self.allowed_origin(head)?;
        let method = String::from_utf8_lossy(requested);
        if !self.method_allowed(&method) {
            return Err(format!("method {method:?} not allowed"));
        }
        let asked: Vec<&[u8]> = head.get_all("access-control-request-headers").collect();
        if !asked.is_empty() && !self.any_header && !self.headers_allowed(&asked) {
            return Err(format!(
                "headers {:?} not allowed",
                asked.iter().map(|h| String::from_utf8_lossy(h)).collect::<Vec<_>>()
            ));
        }
        self.allow_origin(origin, out);
        for m in head.get_all("access-control-request-method") {
            field(out, b"access-control-allow-methods", m);
        }
        if asked.first().is_some_and(|h| !h.is_empty()) {
            for h in &asked {
                field(out, b"access-control-allow-headers", h);
            }
        }
        if self.credentials {
            out.extend_from_slice(b"access-control-allow-credentials: true\r\n");
        }
        if self.private_network && head.get("access-control-request-private-network") == Some(b"true") {
            out.extend_from_slice(b"access-control-allow-private-network: true\r\n");
        }
        out.extend_from_slice(&self.max_age);
        Ok(())
    }

    fn actual(&self, method: &Method, head: &Head, out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(b"vary: Origin\r\n");
        let origin = self.allowed_origin(head)?;
        if !self.method_allowed(method.as_str()) {
            return Err(format!("method {method} not allowed"));
        }
        self.allow_origin(origin, out);
        out.extend_from_slice(&self.expose);
        if self.credentials {
            out.extend_from_slice(b"access-control-allow-credentials: true\r\n");
        }
        Ok(())
    }

    /// The request's `Origin`, when it has one and it is allowed.
    fn allowed_origin<'h>(&self, head: &'h Head) -> Result<&'h [u8], String> {
        let Some(origin) = head.get("origin").filter(|o| !o.is_empty()) else {
            return Err("no Origin".to_string());
        };
        if self.origin_allowed(origin) {
            Ok(origin)
        } else {
            Err(format!("origin {:?} not allowed", String::from_utf8_lossy(origin)))
        }
    }

    fn origin_allowed(&self, origin: &[u8]) -> bool {
        if self.any_origin {
            return true;
        }
        // The configured ones are lowercased: compared without case, no copy made.
        self.origins.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(origin))
            || self.patterns.iter().any(|(prefix, suffix)| {
                let (p, s) = (prefix.as_bytes(), suffix.as_bytes());
                origin.len() >= p.len() + s.len()
                    && origin[..p.len()].eq_ignore_ascii_case(p)
                    && origin[origin.len() - s.len()..].eq_ignore_ascii_case(s)
            })
    }

    fn method_allowed(&self, method: &str) -> bool {
        !self.methods.is_empty() && (method == "OPTIONS" || self.methods.iter().any(|m| m == method))
    }

    /// A preflight's requested headers (one list over every field line): lowercase,
    /// sorted, no repeats, each allowed; an element may have one space or tab either
    /// side, and a few may be empty.
    fn headers_allowed(&self, lines: &[&[u8]]) -> bool {
        let mut empty = 0;
        let mut last: Option<&[u8]> = None;
        for element in lines.iter().flat_map(|l| l.split(|&b| b == b',')) {
            let element = trim_one(element);
            if element.is_empty() {
                empty += 1;
                if empty > MAX_EMPTY_ELEMENTS {
                    return false;
                }
                continue;
            }
            if last.is_some_and(|l| element <= l) || !self.headers.iter().any(|h| h.as_bytes() == element) {
                return false;
            }
            last = Some(element);
        }
        true
    }

    fn allow_origin(&self, origin: &[u8], out: &mut Vec<u8>) {
        field(out, b"access-control-allow-origin", if self.any_origin { b"*" } else { origin });
    }
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// At most one space or tab off either end.
fn trim_one(mut s: &[u8]) -> &[u8] {
    if let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    if let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cors(f: impl FnOnce(&mut CorsConfig)) -> Cors {
        let mut c = CorsConfig {
            allow_origins: vec!["*".into()],
            allow_methods: ["GET", "POST", "HEAD"].map(String::from).to_vec(),
            allow_headers: vec!["*".into()],
            expose_headers: Vec::new(),
            allow_credentials: false,
            allow_private_network: false,
            options_passthrough: false,
            options_success_status: 204,
            max_age: Duration::ZERO,
            debug: true,
        };
        f(&mut c);
        Cors::compile(&c)
    }

    fn run(c: &Cors, method: Method, fields: &[(&str, &str)]) -> (Step, String, Option<String>) {
        let head = Head::from_fields(fields.iter().map(|(n, v)| (*n, v.as_bytes())));
        let (mut out, mut note) = (Vec::new(), None);
        let step = c.apply(&method, &head, &mut out, &mut note);
        (step, String::from_utf8(out).unwrap(), note)
    }

    #[test]
    fn defaults_answer_any_preflight_with_a_star() {
        let c = cors(|_| {});
        let (step, fields, note) = run(
            &c,
            Method::OPTIONS,
            &[
                ("Origin", "https://App.example"),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "Content-Type,X-A"),
            ],
        );
        assert_eq!(step, Step::Answer(StatusCode::NO_CONTENT));
        assert_eq!(
            fields,
            "vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n\
             access-control-allow-origin: *\r\n\
             access-control-allow-methods: GET\r\n\
             access-control-allow-headers: Content-Type,X-A\r\n"
        );
        assert_eq!(note.as_deref(), Some("preflight allowed"));
    }

    #[test]
    fn a_preflight_not_allowed_gets_vary_alone() {
        let c = cors(|c| {
            c.allow_origins = vec!["https://*.example.com".into(), "http://localhost:8080".into()];
            c.allow_headers = vec!["Content-Type".into(), "Authorization".into()];
            c.allow_methods = vec!["GET".into(), "PUT".into()];
        });
        let vary = "vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n";
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("Access-Control-Request-Method", "GET")], "preflight: no CORS fields, no Origin"),
            (
                &[("Origin", "https://evil.com"), ("Access-Control-Request-Method", "GET")],
                "preflight: no CORS fields, origin \"https://evil.com\" not allowed",
            ),
            // The pattern needs at least its two ends.
            (
                &[("Origin", "https://.example.co"), ("Access-Control-Request-Method", "GET")],
                "preflight: no CORS fields, origin \"https://.example.co\" not allowed",
            ),
            (
                &[("Origin", "https://a.example.com"), ("Access-Control-Request-Method", "DELETE")],
                "preflight: no CORS fields, method \"DELETE\" not allowed",
            ),
            // Methods are compared as written.
            (
                &[("Origin", "https://a.example.com"), ("Access-Control-Request-Method", "put")],
                "preflight: no CORS fields, method \"put\" not allowed",
            ),
            // Requested headers must be lowercase, sorted, allowed.
            (
                &[
                    ("Origin", "https://a.example.com"),
                    ("Access-Control-Request-Method", "PUT"),
                    ("Access-Control-Request-Headers", "Content-Type"),
                ],
                "preflight: no CORS fields, headers [\"Content-Type\"] not allowed",
            ),
            (
                &[
                    ("Origin", "https://a.example.com"),
                    ("Access-Control-Request-Method", "PUT"),
                    ("Access-Control-Request-Headers", "content-type,authorization"),
                ],
                "preflight: no CORS fields, headers [\"content-type,authorization\"] not allowed",
            ),
            (
                &[
                    ("Origin", "https://a.example.com"),
                    ("Access-Control-Request-Method", "PUT"),
                    ("Access-Control-Request-Headers", "x-other"),
                ],
                "preflight: no CORS fields, headers [\"x-other\"] not allowed",
            ),
        ];
        for (fields, why) in cases {
            let (step, out, note) = run(&c, Method::OPTIONS, fields);
            assert_eq!((step, out.as_str(), note.as_deref()), (Step::Answer(StatusCode::NO_CONTENT), vary, Some(*why)));
        }
        // Allowed: a wildcard origin (any case), echoed as sent; headers sorted with
        // one space around each, over two lines.
        let (step, out, _) = run(
            &c,
            Method::OPTIONS,
            &[
                ("Origin", "https://API.example.com"),
                ("Access-Control-Request-Method", "PUT"),
                ("Access-Control-Request-Headers", "authorization, content-type"),
                ("Access-Control-Request-Headers", ""),
            ],
        );
        assert_eq!(step, Step::Answer(StatusCode::NO_CONTENT));
        assert_eq!(
            out,
            format!(
                "{vary}access-control-allow-origin: https://API.example.com\r\naccess-control-allow-methods: PUT\r\n\
                 access-control-allow-headers: authorization, content-type\r\naccess-control-allow-headers: \r\n"
            )
        );
        // OPTIONS is always allowed; an exact origin.
        let (_, out, _) = run(
            &c,
            Method::OPTIONS,
            &[("Origin", "http://localhost:8080"), ("Access-Control-Request-Method", "OPTIONS")],
        );
        assert!(out.contains("access-control-allow-origin: http://localhost:8080\r\n"), "{out}");
    }

    #[test]
    fn preflight_extras_and_passthrough() {
        let c = cors(|c| {
            c.allow_credentials = true;
            c.allow_private_network = true;
            c.max_age = Duration::from_secs(12 * 3600);
            c.options_passthrough = true;
        });
        let (step, out, _) = run(
            &c,
            Method::OPTIONS,
            &[
                ("Origin", "https://a.example"),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Private-Network", "true"),
            ],
        );
        assert_eq!(step, Step::Serve);
        assert_eq!(
            out,
            "vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers, \
             Access-Control-Request-Private-Network\r\n\
             access-control-allow-origin: *\r\n\
             access-control-allow-methods: POST\r\n\
             access-control-allow-credentials: true\r\n\
             access-control-allow-private-network: true\r\n\
             access-control-max-age: 43200\r\n"
        );
        // Under a second: no max age. Another status.
        let c = cors(|c| {
            c.max_age = Duration::from_millis(500);
            c.options_success_status = 200;
        });
        let (step, out, _) =
            run(&c, Method::OPTIONS, &[("Origin", "https://a.example"), ("Access-Control-Request-Method", "GET")]);
        assert_eq!(step, Step::Answer(StatusCode::OK));
        assert!(!out.contains("max-age"), "{out}");
    }

    #[test]
    fn actual_requests_get_vary_and_the_allow_fields() {
        let c = cors(|c| {
            c.allow_origins = vec!["https://app.example".into()];
            c.expose_headers = vec!["x-request-id".into(), "content-length".into()];
            c.allow_credentials = true;
        });
        let (step, out, note) = run(&c, Method::GET, &[("Origin", "https://app.example")]);
        assert_eq!(step, Step::Serve);
        assert_eq!(
            out,
            "vary: Origin\r\naccess-control-allow-origin: https://app.example\r\n\
             access-control-expose-headers: X-Request-Id, Content-Length\r\naccess-control-allow-credentials: true\r\n"
        );
        assert_eq!(note.as_deref(), Some("request allowed"));
        // No origin, another origin, a method not allowed: served, with Vary alone.
        for (method, fields, why) in [
            (Method::GET, &[][..], "request: no CORS fields, no Origin"),
            (
                Method::GET,
                &[("Origin", "https://b.example")][..],
                "request: no CORS fields, origin \"https://b.example\" not allowed",
            ),
            (
                Method::DELETE,
                &[("Origin", "https://app.example")][..],
                "request: no CORS fields, method DELETE not allowed",
            ),
        ] {
            let (step, out, note) = run(&c, method, fields);
            assert_eq!((step, out.as_str(), note.as_deref()), (Step::Serve, "vary: Origin\r\n", Some(why)));
        }
        // An OPTIONS without Access-Control-Request-Method is a request like any.
        let (step, out, _) = run(&c, Method::OPTIONS, &[("Origin", "https://app.example")]);
        assert_eq!(step, Step::Serve);
        assert!(out.starts_with("vary: Origin\r\naccess-control-allow-origin: https://app.example\r\n"), "{out}");
    }

    #[test]
    fn header_lists_as_rs_cors_reads_them() {
        let c = cors(|c| c.allow_headers = vec!["A".into(), "b".into(), "c".into()]);
        let ok = |lines: &[&str]| c.headers_allowed(&lines.iter().map(|l| l.as_bytes()).collect::<Vec<_>>());
        assert!(ok(&["a,b,c"]));
        assert!(ok(&["a", "c"]));
        assert!(ok(&["\ta , b"]));
        assert!(ok(&[",,a,,"]));
        assert!(!ok(&["b,a"]), "not sorted");
        assert!(!ok(&["a,a"]), "repeated");
        assert!(!ok(&["a,  b"]), "two spaces");
        assert!(!ok(&["d"]));
        assert!(ok(&[&",".repeat(15)]), "16 empty elements");
        assert!(!ok(&[&",".repeat(16)]), "17 empty elements");
    }
}
