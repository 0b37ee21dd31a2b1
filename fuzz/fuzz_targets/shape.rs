//! Response decoding, shaping and output: any backend body, in any encoding, is either
//! refused with a reason or shaped into output that is valid JSON (and XML/text
//! without a panic). The first byte picks the encoding and the shape.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::Gateway;
use sluice_core::config::OutputEncoding;
use sluice_core::gateway::json;
use sluice_core::gateway::response;

const ENCODINGS: [&str; 6] = ["json", "safejson", "fast-json", "string", "xml", "rss"];
const SHAPES: [&str; 4] = [
    "",
    r#", "target": "a", "allow": ["b", "c.d"], "mapping": {"b": "x"}, "group": "g""#,
    r#", "deny": ["a.b", "c"], "mapping": {"a": "c", "c": "a"}"#,
    r#", "is_collection": true, "allow": ["collection"]"#,
];

fuzz_target!(|input: &[u8]| {
    let Some((&pick, body)) = input.split_first() else { return };
    let encoding = ENCODINGS[usize::from(pick) % ENCODINGS.len()];
    let shape = SHAPES[usize::from(pick / 8) % SHAPES.len()];
    let config = format!(
        r#"{{"version": 3, "host": ["http://b:1"], "endpoints": [{{"endpoint": "/a",
            "backend": [{{"url_pattern": "/x", "encoding": "{encoding}"{shape}}}, {{"url_pattern": "/y"}}]}}]}}"#
    );
    let gw = Gateway::load(&config).expect("fuzz config").gateway;
    let shape = &gw.endpoints[0].backends[0].shape;
    let Ok(part) = shape.apply(body) else { return };
    let plain = response::Shape::plain(sluice_core::config::Encoding::Json);
    let other = plain.apply(b"{\"z\":1}").expect("fixed");
    let merged = response::merge([part, other]);
    for output in [
        OutputEncoding::Json,
        OutputEncoding::JsonCollection,
        OutputEncoding::String,
        OutputEncoding::Xml,
        OutputEncoding::Yaml,
    ] {
        let mut out = Vec::new();
        response::render(output, None, &merged, &mut out);
        if matches!(output, OutputEncoding::Json | OutputEncoding::JsonCollection) {
            let text = std::str::from_utf8(&out).expect("JSON output is UTF-8");
            if let Err(e) = json::parse_document(text) {
                panic!("invalid JSON output ({e}): {text}");
            }
        }
    }
});
