//! The JSON scanner against serde_json: the same texts are valid, and what it copies
//! out is byte for byte what came in.

use proptest::prelude::*;
use serde_json::Value;
use sluice_core::config::{Encoding, OutputEncoding};
use sluice_core::gateway::json;
use sluice_core::gateway::response::{self, Shape};

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
        "[\"\\\\\u{0}-\u{1f}é😀a]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-z\"\\\\é]{0,5}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn serde_json_output_is_valid_and_copied_exactly(v in value(), pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { serde_json::to_string(&v).unwrap() };
        prop_assert_eq!(json::parse_document(&text), Ok(text.as_str()));
        // An object body with nothing to shape comes out as it went in (compact input).
        let wrapped = format!("{{\"v\":{text},\"n\":12345678901234567890123}}");
        let shape = Shape::plain(Encoding::Json);
        let part = shape.apply(wrapped.as_bytes()).unwrap();
        let mut out = Vec::new();
        response::render(OutputEncoding::Json, None, &response::merge([part]), &mut out);
        prop_assert_eq!(String::from_utf8(out).unwrap(), wrapped);
    }

    #[test]
    fn validity_agrees_with_serde_json(text in "[\\[\\]{}\",:0-9eE.+\\-a-z\\\\ ]{0,24}") {
        let ours = json::parse_document(&text).is_ok();
        let theirs = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
        prop_assert_eq!(ours, theirs, "{:?}", text);
    }
}

#[test]
fn lookup_follows_objects_and_arrays() {
    let doc = r#"{"a":[{"b":{"c":"x"}},{"b":{"c":"y"}}],"n":1e3}"#;
    assert_eq!(json::lookup(doc, &["a", "1", "b", "c"]), Some("\"y\""));
    assert_eq!(json::lookup(doc, &["a", "2"]), None);
    assert_eq!(json::lookup(doc, &["a", "x"]), None);
    assert_eq!(json::lookup(doc, &["n"]), Some("1e3"));
}
