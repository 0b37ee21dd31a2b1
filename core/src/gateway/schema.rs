//! `validation/json-schema`: the endpoint's request bodies checked against a JSON
//! schema before any backend is called, as krakend-jsonschema does it (KrakenD 2.13:
//! santhosh-tekuri/jsonschema; drafts 4, 6, 7, 2019-09 and 2020-12, the latest when the
//! schema names none). Compiled once, with the `jsonschema` crate (the maintained Rust
//! validator for the same drafts; remote `$ref`s are not fetched: such a schema does not
//! compile, and `check` says so).
//!
//! Every request to the endpoint is checked, whatever its method or `Content-Type`: an
//! empty body (a GET's too), a body that is not JSON, or one the schema refuses is
//! answered **400** before any backend call, with `X-KrakenD-Completed: false` and,
//! with `router.return_error_msg`, a text body: `could not validate an empty body`,
//! the JSON parser's message, or one `- at '<pointer>': <why>` line per error (the
//! shape KrakenD's validator writes; the words are the `jsonschema` crate's, and the
//! client's values are not repeated in them).

use serde_json::Value;

/// Errors listed in an answer; more are counted, not written.
const MAX_LISTED: usize = 10;

/// A compiled `validation/json-schema`.
pub struct BodySchema(jsonschema::Validator);

impl std::fmt::Debug for BodySchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodySchema")
    }
}

impl BodySchema {
    /// The schema `schema` compiled, or why it is not one.
    pub fn compile(schema: &Value) -> Result<BodySchema, String> {
        jsonschema::validator_for(schema).map(BodySchema).map_err(|e| e.to_string())
    }

    /// Checks a request body; `Err` is the reason to answer 400 with.
    pub fn check(&self, body: &[u8]) -> Result<(), String> {
        if body.is_empty() {
            return Err("could not validate an empty body".to_string());
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        // The quick test first; the errors are collected only for a body refused.
        if self.0.is_valid(&value) {
            return Ok(());
        }
        let mut lines = Vec::new();
        let mut more = 0;
        for error in self.0.iter_errors(&value) {
            if lines.len() == MAX_LISTED {
                more += 1;
                continue;
            }
            lines.push(format!("- at '{}': {}", error.instance_path(), error.masked()));
        }
        if more > 0 {
            lines.push(format!("- and {more} more"));
        }
        if lines.is_empty() { Ok(()) } else { Err(lines.join("\n")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_are_checked_and_refusals_say_where() {
        let s = BodySchema::compile(&json!({
            "type": "object", "required": ["name", "age"],
            "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}
        }))
        .unwrap();
        assert_eq!(s.check(br#"{"name":"ann","age":3}"#), Ok(()));
        assert_eq!(s.check(b""), Err("could not validate an empty body".into()));
        assert_eq!(s.check(b"{nope"), Err("key must be a string at line 1 column 2".into()));
        assert_eq!(s.check(br#"{"name":"ann","age":3} x"#), Err("trailing characters at line 1 column 24".into()));
        let refused = s.check(br#"{"name":7,"age":-1}"#).unwrap_err();
        assert_eq!(
            refused,
            "- at '/name': value is not of type \"string\"\n- at '/age': value is less than the minimum of 0"
        );
        let refused = s.check(b"[]").unwrap_err();
        assert_eq!(refused, "- at '': value is not of type \"object\"");
        // Twelve errors: ten listed.
        let many = BodySchema::compile(&json!({"type": "array", "items": {"type": "string"}})).unwrap();
        let refused = many.check(b"[1,2,3,4,5,6,7,8,9,10,11,12]").unwrap_err();
        assert_eq!(refused.lines().count(), 11);
        assert!(refused.ends_with("- and 2 more"), "{refused}");
    }

    #[test]
    fn a_schema_that_does_not_compile_says_why() {
        assert!(BodySchema::compile(&json!({"type": 5})).is_err());
        assert!(BodySchema::compile(&json!({"$ref": "https://example.com/schema.json"})).is_err());
        assert!(BodySchema::compile(&json!(true)).is_ok());
    }
}
