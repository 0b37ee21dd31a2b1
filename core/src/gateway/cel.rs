//! `validation/cel`: expressions a request must meet, on an endpoint (before any
//! backend is called) or on a backend (before its call), as krakend-cel runs them,
//! evaluated with the `cel` crate (the maintained Rust CEL interpreter).
//!
//! KrakenD gives an expression its phase by the text it contains: `req` makes it a
//! request check, `resp` a response check (also run after the backends answer), `JWT`
//! a token check (run only with `auth/validator`). Request checks are served here,
//! with KrakenD's variables:
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
//! The `cel` crate has no type checker: an expression cel-go would refuse to type
//! (KrakenD then skips it, with a debug line) fails to evaluate here and stops every
//! request, which `check` cannot foresee.
//!
//! A check that is false, not a boolean, or fails to evaluate (a missing map key)
//! stops the request: on an endpoint KrakenD's 500 (with `return_error_msg`, the body
//! `request aborted by evaluator #N`, N counting the request checks from 0); on a
//! backend its call is not made and fails with that reason. Response checks (`resp_*`),
//! token checks (`JWT`), `now` and an expression with none of them (KrakenD never
//! evaluates it) are refused by `check` until they are served.

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
    pub method: String,
    pub path: String,
    /// Names as lura gives them (first letter upper-cased).
    pub params: HashMap<String, String>,
    /// Canonical names.
    pub headers: HashMap<String, Vec<String>>,
    pub query: HashMap<String, Vec<String>>,
}

impl Checks {
    /// The expressions `list`, compiled; `Err` is the index of the first one that
    /// cannot be served and why.
    pub fn compile(list: &[String]) -> Result<Checks, (usize, String)> {
        let mut programs = Vec::new();
        for (i, expr) in list.iter().enumerate() {
            let program = cel::Program::compile(expr).map_err(|e| {
                // The parser's first line (the rest draws a caret under the source).
                let e = e.to_string();
                (i, format!("does not parse: {}", e.lines().next().unwrap_or_default()))
            })?;
            let unserved = if expr.contains("resp") {
                // KrakenD runs any expression with `resp` in it after the backends
                // answer, this one too.
                Some("a response check (its text names resp, so KrakenD runs it after the backends answer)")
            } else if program.references().has_variable("JWT") {
                Some("a token check (JWT)")
            } else if !expr.contains("req") {
                Some("an expression with no req_, resp_ or JWT variable (KrakenD never evaluates it)")
            } else if program.references().has_variable("now") {
                Some("the `now` variable")
            } else {
                None
            };
            if let Some(what) = unserved {
                return Err((i, format!("not supported by Sluice yet: {what}; only request checks (req_...) are")));
            }
            programs.push(program);
        }
        Ok(Checks(programs, Arc::new(cel::Env::stdlib())))
    }

    /// Runs every check on `req`; `Err` is the reason the request stops with.
    pub fn check(&self, req: &RequestView) -> Result<(), String> {
        let mut cx = cel::Context::with_env(self.1.clone());
        cx.add_variable_from_value("req_method", req.method.as_str());
        cx.add_variable_from_value("req_path", req.path.as_str());
        cx.add_variable_from_value("req_params", strings(&req.params));
        cx.add_variable_from_value("req_headers", lists(&req.headers));
        cx.add_variable_from_value("req_querystring", lists(&req.query));
        for (n, program) in self.0.iter().enumerate() {
            if program.execute(&cx) != Ok(cel::Value::Bool(true)) {
                return Err(format!("request aborted by evaluator #{n}"));
            }
        }
        Ok(())
    }
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

    fn view() -> RequestView {
        RequestView {
            method: "GET".into(),
            path: "/users/7".into(),
            params: [("Id".to_string(), "7".to_string())].into(),
            headers: [("X-Tenant".to_string(), vec!["acme".to_string()])].into(),
            query: [("lang".to_string(), vec!["en".to_string(), "fr".to_string()])].into(),
        }
    }

    #[test]
    fn request_checks_pass_or_stop_with_their_number() {
        let checks = Checks::compile(&[
            "req_method == 'GET'".into(),
            "req_params.Id == '7' && req_path.startsWith('/users/')".into(),
            "'acme' in req_headers['X-Tenant'] && size(req_querystring.lang) == 2".into(),
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
        let odd = Checks::compile(&["req_path".into()]).unwrap();
        assert_eq!(odd.check(&view()), Err("request aborted by evaluator #0".into()));
    }

    #[test]
    fn what_is_not_served_yet_is_refused_by_position() {
        let refused = |list: &[&str]| Checks::compile(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).err();
        assert_eq!(refused(&["req_method == 'GET'"]), None);
        assert!(refused(&["req_method == 'GET'", "resp_data.ok"]).unwrap().1.contains("a response check"));
        assert_eq!(refused(&["req_method == 'GET'", "resp_data.ok"]).unwrap().0, 1);
        assert!(refused(&["JWT.sub == 'a'"]).unwrap().1.contains("a token check"));
        // `JWT` in a string is a request check (the token phase needs the variable).
        assert_eq!(refused(&["req_headers['Authorization'][0].startsWith('JWT ')"]), None);
        // `resp` anywhere in the text is KrakenD's response phase.
        assert!(refused(&["req_path.startsWith('/responses')"]).unwrap().1.contains("names resp"));
        assert!(refused(&["1 == 1"]).unwrap().1.contains("never evaluates"));
        assert!(
            refused(&["req_method == 'GET' && timestamp(now) > timestamp('2020-01-01T00:00:00Z')"])
                .unwrap()
                .1
                .contains("`now`")
        );
        assert!(refused(&["req_method == "]).unwrap().1.starts_with("does not parse"));
        assert_eq!(param_name("id_user"), "Id_user");
    }
}
