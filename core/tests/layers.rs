//! core's modules layer one way: no module reaches, through any chain of `crate::`
//! paths, back to itself. A module is a file (`gateway/exchange.rs` is
//! `gateway::exchange`; `conn/mod.rs` is `conn`); a path names the deepest module it
//! goes through. A module and its own submodules are one module split in files (they
//! may use each other); siblings and everything else may not go round in a circle.
//! Read from the source text, so a new circle fails the build's tests the day it is
//! written.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The module a source file is (`config/decode.rs` is `config::decode`, `config/mod.rs`
/// is `config`); `None` for the crate root.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .map(|p| p.trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    let name = parts.join("::");
    (name != "lib" && !name.is_empty()).then_some(name)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable source folder") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every path named after `crate::` in code (comments, doc comments included, are
/// left out: a doc link is not a dependency), as written: `gateway::json::f`.
fn uses(text: &str) -> BTreeSet<String> {
    let path = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect::<String>()
            .trim_end_matches(':')
            .to_string()
    };
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = code_of(line);
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let head = path(rest);
            match rest[head.len()..].strip_prefix("::{").or_else(|| rest.strip_prefix('{')) {
                // `crate::a::{b, c::D}`: each item, under its prefix.
                Some(group) => {
                    let prefix = if head.is_empty() { String::new() } else { format!("{head}::") };
                    for item in group.split('}').next().unwrap_or("").split(',') {
                        let item = path(item.trim());
                        if !item.is_empty() {
                            found.insert(format!("{prefix}{item}"));
                        }
                    }
                }
                None if !head.is_empty() => {
                    found.insert(head);
                }
                None => {}
            }
        }
    }
    found
}

/// A line without its comment: `//` outside a string literal (`"http://..."` is code).
fn code_of(line: &str) -> &str {
    let (mut in_string, mut escaped) = (false, false);
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The crate root's re-exports, by the module they come from.
const ROOT_REEXPORTS: &[(&str, &str)] =
    &[("Gateway", "plan"), ("ConfigError", "config"), ("Diagnostic", "config"), ("StopSignal", "stop")];

/// The deepest of `modules` a path goes through.
fn module_named<'m>(modules: &'m BTreeSet<String>, path: &str) -> Option<&'m String> {
    let first = path.split("::").next().unwrap_or("");
    if let Some((_, module)) = ROOT_REEXPORTS.iter().find(|(name, _)| *name == first) {
        return modules.get(*module);
    }
    let segments: Vec<&str> = path.split("::").collect();
    (1..=segments.len()).rev().find_map(|n| modules.get(&segments[..n].join("::")))
}

/// One module split in files: `a` and `a::b`.
fn related(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

/// A cycle through `start`, if there is one, as the list of modules on it.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(graph, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let texts: Vec<(String, String)> = files
        .iter()
        .filter_map(|file| Some((module_of(&src, file)?, fs::read_to_string(file).expect("readable source file"))))
        .collect();
    let modules: BTreeSet<String> = texts.iter().map(|(m, _)| m.clone()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &texts {
        let entry = graph.entry(module.clone()).or_default();
        for used in uses(text) {
            if let Some(other) = module_named(&modules, &used).filter(|other| !related(module, other)) {
                entry.insert(other.clone());
            }
        }
    }
    graph
}

#[test]
fn core_modules_have_no_import_circle() {
    let graph = module_graph();
    assert!(graph.len() >= 10, "the source walk found too few modules: {graph:?}");
    let circles: Vec<String> = graph.keys().filter_map(|m| cycle_from(&graph, m)).map(|c| c.join(" -> ")).collect();
    assert!(circles.is_empty(), "import circles in core/src:\n{}", circles.join("\n"));
}

#[test]
fn the_circle_finder_finds_circles() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    graph.entry("c".into()).or_default().insert("a".into());
    graph.entry("d".into()).or_default().insert("a".into());
    assert_eq!(cycle_from(&graph, "a"), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    assert_eq!(cycle_from(&graph, "d"), None);
    let used = uses(
        "use crate::{plan, route::X};\nlet x = crate::gateway::json::f(); // crate::conn\n/// [`crate::resolve::dns`]\nuse crate::ops::{admin, stats::Stats};",
    );
    let want = ["gateway::json::f", "ops::admin", "ops::stats::Stats", "plan", "route::X"];
    assert_eq!(used, want.iter().map(ToString::to_string).collect());
    let modules: BTreeSet<String> =
        ["gateway", "gateway::json", "ops", "ops::stats"].iter().map(ToString::to_string).collect();
    assert_eq!(module_named(&modules, "gateway::json::f").map(String::as_str), Some("gateway::json"));
    assert_eq!(module_named(&modules, "ops::admin").map(String::as_str), Some("ops"));
    assert_eq!(module_named(&modules, "Gateway"), None, "plan is not among these modules");
    let with_plan: BTreeSet<String> = ["plan".to_string()].into();
    assert_eq!(module_named(&with_plan, "Gateway").map(String::as_str), Some("plan"));
    assert_eq!(
        code_of(r#"let u = "http://x"; crate::conn::f(); // crate::ops"#),
        r#"let u = "http://x"; crate::conn::f(); "#
    );
    assert!(related("conn", "conn::stream") && related("conn::stream", "conn") && !related("conn", "connx"));
}

/// A request's path reads down: the connection asks a service (`gateway`, `forward`,
/// `ops`), a service asks for backend calls. A call, and the name resolution and TLS
/// under it, never name the connection or a service (the plan they read is data).
#[test]
fn calls_never_name_the_connection_or_a_service() {
    let graph = module_graph();
    let above = ["conn", "gateway", "forward", "ops"];
    let mut upward = Vec::new();
    for (module, used) in &graph {
        let top = module.split("::").next().unwrap_or("");
        if !["call", "resolve", "tls", "http1"].contains(&top) {
            continue;
        }
        for other in used {
            if above.contains(&other.split("::").next().unwrap_or("")) {
                upward.push(format!("{module} -> {other}"));
            }
        }
    }
    assert!(graph.contains_key("call") && graph.contains_key("call::backend"), "{graph:?}");
    assert!(upward.is_empty(), "names reaching up:\n{}", upward.join("\n"));
}
