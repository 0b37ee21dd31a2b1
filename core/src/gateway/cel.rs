//! `validation/cel`: expressions a request must meet, as krakend-cel runs them,
//! evaluated with the `cel` crate (the maintained Rust CEL interpreter): request checks
//! on an endpoint (before any backend is called) or on a backend (before its call),
//! and token checks on an endpoint with `auth/validator`.
//!
//! KrakenD gives an expression its phase by the text it contains: `req` makes it a
//! request check, `resp` a response check (also run after the backends answer), `JWT`
//! a token check (run by the endpoint's `auth/validator`, after the token's signature
//! and dates, before its roles). Request checks see KrakenD's variables:
//!
//! - `req_method`, `req_path`: strings (on a backend: the backend's method and path),
//!   the path percent-decoded once;
//! - `req_params`: the path's `{params}`, decoded once, each key with its first letter
//!   upper-cased (`{id}` is `Id`), as lura names them;
//! - `req_headers`: the headers passed on (`input_headers`, the backend's own list on a
//!   backend; `Content-Type` always), and `X-Forwarded-For`, `X-Forwarded-Host` and
//!   `User-Agent` (the client's when passed on, the gateway's going in
//!   `X-Forwarded-Via` then), each a list of strings under its canonical name;
//! - `req_querystring`: the query parameters passed on (`input_query_strings`, names
//!   exact), each a list of strings.
//!
//! Token checks see `JWT` (the claims: every number a double, as Go decodes JSON);
//! response checks `resp_data`, `resp_completed`, `resp_metadata_status` and
//! `resp_metadata_headers`; every phase `now` (the request's time, RFC 3339 text in
//! UTC with milliseconds, as KrakenD writes it: `timestamp(now)` reads it).
//!
//! The `cel` crate has no type checker: an expression cel-go would refuse to type
//! (KrakenD then skips it, with a debug line) fails to evaluate here and stops every
//! request, which `check` cannot foresee.
//!
//! A request check that is false, not a boolean, or fails to evaluate (a missing map
//! key) stops the request: on an endpoint KrakenD's 500 (with `return_error_msg`, the
//! body `request aborted by evaluator #N`, N counting the request checks from 0); on a
//! backend its call is not made and fails with that reason. A token check that does
//! so refuses the token: 401. A response check where the answer is streamed, a token
//! check where no token is checked, an expression in two phases (KrakenD binds only
//! one phase's variables, so it fails in the other) and one in none (KrakenD never
//! evaluates it) are refused by `check`.

use std::collections::HashMap;
use std::sync::Arc;

/// A compiled `validation/cel` list (its request checks), with the standard library
/// built once (building it per request cost most of an evaluation).
pub struct Checks(Vec<cel::Program>, Arc<cel::Env>);

impl std::fmt::Debug for Checks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Checks({})", self.0.len())
    }
}

/// What a request looks like to its checks.
#[derive(Debug, Default)]
pub struct RequestView {
    /// When it came: seconds and milliseconds since the Unix epoch (`now`).
    pub now: (u64, u32),
    pub method: String,
    pub path: String,
    /// Names as lura gives them (first letter upper-cased).
    pub params: HashMap<String, String>,
    /// Canonical names.
    pub headers: HashMap<String, Vec<String>>,
    pub query: HashMap<String, Vec<String>>,
}

/// Where a `validation/cel` list is written: its phases depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// An endpoint with `auth/validator`: request and token checks.
    TokenEndpoint,
    /// An endpoint without: request checks.
    Endpoint,
    /// A backend: request checks (KrakenD's token phase reads only the endpoint's list).
    Backend,
}

/// Why a response check is refused where the answer is streamed.
const RESPONSE_NOT_HERE: &str = "not supported by Sluice: a response check (resp_...) where the answer is \
    streamed (a no-op endpoint or backend): it would hold the answer back";

/// A `validation/cel` list split by phase, as krakend-cel splits it by text.
#[derive(Debug)]
pub struct Phases {
    /// Before the call (or the backends): `req_*`.
    pub request: Checks,
    /// In `auth/validator`, on the token: `JWT`, `now`.
    pub token: Checks,
    /// On the answer: `resp_*`.
    pub response: Checks,
}

impl Phases {
    /// `list` written at `site`, compiled. `streamed`: the answer there is passed on
    /// as it comes (a `no-op` endpoint or backend), so it can have no response check.
    /// `Err` is the index of the first expression that cannot be served and why.
    pub fn compile(list: &[String], site: Site, streamed: bool) -> Result<Phases, (usize, String)> {
        let (mut request, mut token, mut response) = (Vec::new(), Vec::new(), Vec::new());
        for (i, expr) in list.iter().enumerate() {
            let program = cel::Program::compile(expr).map_err(|e| {
                // The parser's first line (the rest draws a caret under the source).
                let e = e.to_string();
                (i, format!("does not parse: {}", e.lines().next().unwrap_or_default()))
            })?;
            let refs = program.references();
            let (names_jwt, names_req, names_resp) =
                (expr.contains("JWT"), expr.contains("req"), expr.contains("resp"));
            let refused = |what: &str| Err((i, format!("not supported by Sluice: {what}")));
            let phases = [names_req, names_resp, site == Site::TokenEndpoint && names_jwt];
            if phases.iter().filter(|&&p| p).count() > 1 {
                return refused(
                    "an expression naming two of req, resp and JWT: KrakenD evaluates it in each of those phases, \
                     each without the others' variables, so it refuses every request; split it",
                );
            }
            if names_resp {
                if streamed {
                    return Err((i, RESPONSE_NOT_HERE.into()));
                }
                response.push(program);
            } else if site == Site::TokenEndpoint && names_jwt {
                token.push(program);
            } else if refs.has_variable("JWT") {
                return refused(match site {
                    Site::Backend => "a token check (JWT) on a backend: KrakenD runs only the endpoint's",
                    _ => "a token check (JWT) on an endpoint without auth/validator: KrakenD never evaluates it",
                });
            } else if !names_req {
                return refused("an expression with no req_, resp_ or JWT variable (KrakenD never evaluates it)");
            } else {
                request.push(program);
            }
        }
        let env = Arc::new(cel::Env::stdlib());
        Ok(Phases {
            request: Checks(request, env.clone()),
            token: Checks(token, env.clone()),
            response: Checks(response, env),
        })
    }
}

impl Checks {
    /// Whether there is no check.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs every check on `req`; `Err` is the reason the request stops with.
    pub fn check(&self, req: &RequestView) -> Result<(), String> {
        let mut cx = cel::Context::with_env(self.1.clone());
        cx.add_variable_from_value("req_method", req.method.as_str());
        cx.add_variable_from_value("req_path", req.path.as_str());
        cx.add_variable_from_value("req_params", strings(&req.params));
        cx.add_variable_from_value("req_headers", lists(&req.headers));
        cx.add_variable_from_value("req_querystring", lists(&req.query));
        cx.add_variable_from_value("now", rfc3339(req.now));
        self.first_refusal(&cx).map_or(Ok(()), |n| Err(format!("request aborted by evaluator #{n}")))
    }

    /// Runs every response check on an answer: `data` (the backend's shaped data, or
    /// the endpoint's merged data), whether it is complete, and its status and
    /// headers as lura's metadata holds them (0 and none for a decoded answer), at
    /// `now` (the request's). `Err` is the reason, in krakend-cel's words (it says
    /// "request" in this phase too).
    pub fn check_response(&self, data: &serde_json::Value, completed: bool, now: (u64, u32)) -> Result<(), String> {
        let mut cx = cel::Context::with_env(self.1.clone());
        let data = match data {
            serde_json::Value::Object(_) => from_json(data),
            _ => cel::Value::Map(HashMap::<cel::objects::Key, cel::Value>::new().into()),
        };
        cx.add_variable_from_value("resp_data", data);
        cx.add_variable_from_value("resp_completed", completed);
        cx.add_variable_from_value("resp_metadata_status", 0i64);
        cx.add_variable_from_value("resp_metadata_headers", lists(&HashMap::new()));
        cx.add_variable_from_value("now", rfc3339(now));
        self.first_refusal(&cx).map_or(Ok(()), |n| Err(format!("request aborted by evaluator #{n}")))
    }

    /// Runs every token check on `claims` at `now` (seconds and milliseconds since
    /// the Unix epoch); `Err` is the number of the first that refused the token.
    pub fn check_token(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        now: (u64, u32),
    ) -> Result<(), usize> {
        let mut cx = cel::Context::with_env(self.1.clone());
        let claims: HashMap<cel::objects::Key, cel::Value> =
            claims.iter().map(|(k, v)| (k.clone().into(), from_json(v))).collect();
        cx.add_variable_from_value("JWT", cel::Value::Map(claims.into()));
        cx.add_variable_from_value("now", rfc3339(now));
        self.first_refusal(&cx).map_or(Ok(()), Err)
    }

    /// The number of the first check that is not true (false, not a boolean, or an
    /// evaluation error) in `cx`.
    fn first_refusal(&self, cx: &cel::Context<'_, '_>) -> Option<usize> {
        self.0.iter().position(|program| program.execute(cx) != Ok(cel::Value::Bool(true)))
    }
}

/// A decoded JSON value as CEL sees it from Go: every number a double.
fn from_json(v: &serde_json::Value) -> cel::Value {
    use serde_json::Value as J;
    match v {
        J::Null => cel::Value::Null,
        J::Bool(b) => cel::Value::Bool(*b),
        J::Number(n) => cel::Value::Float(n.as_f64().unwrap_or(0.0)),
        J::String(s) => cel::Value::String(Arc::new(s.clone())),
        J::Array(items) => cel::Value::List(Arc::new(items.iter().map(from_json).collect())),
        J::Object(map) => {
            let map: HashMap<cel::objects::Key, cel::Value> =
                map.iter().map(|(k, v)| (k.clone().into(), from_json(v))).collect();
            cel::Value::Map(map.into())
        }
    }
}

/// `now` as KrakenD gives it (Go's `2006-01-02T15:04:05.999Z07:00`), in UTC.
fn rfc3339((secs, millis): (u64, u32)) -> String {
    crate::date::rfc3339_millis(secs, millis)
}

fn strings(map: &HashMap<String, String>) -> cel::Value {
    let map: HashMap<cel::objects::Key, cel::Value> =
        map.iter().map(|(k, v)| (k.clone().into(), cel::Value::String(Arc::new(v.clone())))).collect();
    cel::Value::Map(map.into())
}

fn lists(map: &HashMap<String, Vec<String>>) -> cel::Value {
    let map: HashMap<cel::objects::Key, cel::Value> = map
        .iter()
        .map(|(k, vs)| {
            let list: Vec<cel::Value> = vs.iter().map(|v| cel::Value::String(Arc::new(v.clone()))).collect();
            (k.clone().into(), cel::Value::List(Arc::new(list)))
        })
        .collect();
    cel::Value::Map(map.into())
}

/// A path parameter's name as lura gives it to CEL: the first letter upper-cased.
pub fn param_name(name: &str) -> String {
    let mut chars = name.chars();
    chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request checks of a backend's list whose answer is streamed.
    fn request_checks(list: &[String]) -> Result<Checks, (usize, String)> {
        Phases::compile(list, Site::Backend, true).map(|p| p.request)
    }

    fn view() -> RequestView {
        RequestView {
            now: (1_750_000_000, 250),
            method: "GET".into(),
            path: "/users/7".into(),
            params: [("Id".to_string(), "7".to_string())].into(),
            headers: [("X-Tenant".to_string(), vec!["acme".to_string()])].into(),
            query: [("lang".to_string(), vec!["en".to_string(), "fr".to_string()])].into(),
        }
    }

    #[test]
    fn request_checks_pass_or_stop_with_their_number() {
        let checks = request_checks(&[
            "req_method == 'GET'".into(),
            "req_params.Id == '7' && req_path.startsWith('/users/')".into(),
            "'acme' in req_headers['X-Tenant'] && size(req_querystring.lang) == 2".into(),
            "req_method != '' && now == '2025-06-15T15:06:40.25Z'".into(),
        ])
        .unwrap();
        assert_eq!(checks.check(&view()), Ok(()));
        let mut other = view();
        other.headers.clear();
        // A missing key fails to evaluate: the request stops.
        assert_eq!(checks.check(&other), Err("request aborted by evaluator #2".into()));
        other = view();
        other.method = "POST".into();
        assert_eq!(checks.check(&other), Err("request aborted by evaluator #0".into()));
        // Not a boolean: stops too.
        let odd = request_checks(&["req_path".into()]).unwrap();
        assert_eq!(odd.check(&view()), Err("request aborted by evaluator #0".into()));
    }

    #[test]
    fn token_checks_see_the_claims_and_now() {
        let list: Vec<String> = [
            "JWT.sub == 'ada' && JWT.level == 3.0 && 'admin' in JWT.roles",
            "JWT.tenant.tier >= 2.0 && timestamp(now) > timestamp('2025-01-01T00:00:00Z')",
            "req_method == 'GET'",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let Phases { request, token, .. } = Phases::compile(&list, Site::TokenEndpoint, false).unwrap();
        assert_eq!((request.0.len(), token.0.len()), (1, 2));
        let claims = serde_json::json!({"sub": "ada", "level": 3, "roles": ["user", "admin"], "tenant": {"tier": 2}});
        let claims = claims.as_object().unwrap();
        assert_eq!(token.check_token(claims, (1_750_000_000, 0)), Ok(()));
        // Before 2025: the second refuses.
        assert_eq!(token.check_token(claims, (1_700_000_000, 0)), Err(1));
        let mut other = claims.clone();
        other.remove("roles");
        assert_eq!(token.check_token(&other, (1_750_000_000, 0)), Err(0));
        // Without auth/validator, or on a backend, a token check is refused.
        for site in [Site::Endpoint, Site::Backend] {
            assert!(Phases::compile(&list, site, false).unwrap_err().1.contains("a token check"), "{site:?}");
        }
        // Two phases at once.
        let both = ["JWT.sub == req_params.Id".to_string()];
        assert!(Phases::compile(&both, Site::TokenEndpoint, false).unwrap_err().1.contains("two of req, resp and JWT"));
    }

    #[test]
    fn now_is_written_as_krakend_writes_it() {
        assert_eq!(rfc3339((0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339((1_750_000_000, 0)), "2025-06-15T15:06:40Z");
        assert_eq!(rfc3339((1_750_000_000, 120)), "2025-06-15T15:06:40.12Z");
        assert_eq!(rfc3339((951_782_400, 7)), "2000-02-29T00:00:00.007Z");
        assert_eq!(rfc3339((4_102_444_799, 999)), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn what_is_not_served_yet_is_refused_by_position() {
        let refused = |list: &[&str]| {
            let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
            Phases::compile(&list, Site::Backend, true).err()
        };
        assert_eq!(refused(&["req_method == 'GET'"]), None);
        assert!(refused(&["req_method == 'GET'", "resp_data.ok"]).unwrap().1.contains("where the answer is streamed"));
        assert_eq!(refused(&["req_method == 'GET'", "resp_data.ok"]).unwrap().0, 1);
        assert!(refused(&["JWT.sub == 'a'"]).unwrap().1.contains("a token check (JWT) on a backend"));
        // `JWT` in a string is a request check (the token phase needs the variable).
        assert_eq!(refused(&["req_headers['Authorization'][0].startsWith('JWT ')"]), None);
        // `resp` anywhere in the text is KrakenD's response phase.
        assert!(refused(&["req_path.startsWith('/responses')"]).unwrap().1.contains("two of req, resp and JWT"));
        assert!(refused(&["1 == 1"]).unwrap().1.contains("never evaluates"));
        assert_eq!(refused(&["req_method == 'GET' && timestamp(now) > timestamp('2020-01-01T00:00:00Z')"]), None);
        assert!(refused(&["req_method == "]).unwrap().1.starts_with("does not parse"));
        assert_eq!(param_name("id_user"), "Id_user");
    }
}
