//! `sluice check` through the real binary: output and exit codes.

use std::process::{Command, Output};

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run sluice: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn example_config_is_syntax_ok() {
    let out = sluice(&["check", "-c", "examples/krakend.json"]);
    assert_eq!(text(&out.stdout), "Syntax OK!\n");
    assert_eq!(text(&out.stderr), "");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn five_mistakes_print_five_lines_and_exit_1() {
    let out = sluice(&["check", "-c", "tests/configs/five_mistakes.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        concat!(
            "version: unsupported version 2: Sluice reads KrakenD v3 files (\"version\": 3)\n",
            "endpoints[0].backend[0].host[0]: a host must not have a path (\"/v1\" in \"http://users.internal/v1\"): put it in url_pattern\n",
            "endpoints[0].backend[0].url_pattern: {user} is not a parameter of the endpoint (the endpoint declares {id})\n",
            "endpoints[0].backend[1].encoding: unknown value \"jsonn\", expected one of \"json\", \"safejson\", \"fast-json\", \"xml\", \"rss\", \"string\", \"no-op\"\n",
            "endpoints[1].timeout: unknown unit \" seconds\" in duration \"2 seconds\"\n",
        )
    );
}

#[test]
fn invalid_json_prints_line_and_column() {
    let out = sluice(&["check", "-c", "tests/configs/trailing_comma.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "tests/configs/trailing_comma.json:4:23: invalid JSON: trailing comma\n");
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = sluice(&["check", "-c", "tests/configs/no-such-file.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "tests/configs/no-such-file.json: cannot read: No such file or directory (os error 2)\n"
    );
}

#[test]
fn lint_prints_warnings_but_passes() {
    // A namespace that only observes is said on every check (and at run); unknown keys
    // with --lint.
    const NOTICE: &str =
        "warning: extra_config[\"telemetry/metrics\"]: only observes: not supported by Sluice, ignored\n";
    let quiet = sluice(&["check", "-c", "tests/configs/lint.json"]);
    assert_eq!(
        (quiet.status.code(), text(&quiet.stdout), text(&quiet.stderr)),
        (Some(0), "Syntax OK!\n".into(), NOTICE.into())
    );
    let lint = sluice(&["check", "-c", "tests/configs/lint.json", "--lint"]);
    assert_eq!(lint.status.code(), Some(0));
    assert_eq!(text(&lint.stdout), "Syntax OK!\n");
    assert_eq!(
        text(&lint.stderr),
        format!(
            "{NOTICE}{}",
            "warning: endpoints[0].querystring_params: unknown key, ignored (KrakenD v3 calls it \"input_query_strings\")\n"
        )
    );
}

#[test]
fn an_unimplemented_protection_stops_check() {
    let out = sluice(&["check", "-c", "tests/configs/http_secure.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        "extra_config[\"security/http-secure\"]: not supported by Sluice (a security policy (CORS, bot detection, \
         HTTP security headers, ...)): refusing to serve without it; remove the namespace to run without it (README, \
         \"What Sluice refuses\")\n"
    );
    // CORS is served: its file checks clean.
    let out = sluice(&["check", "-c", "tests/configs/cors.json"]);
    assert_eq!((out.status.code(), text(&out.stdout).as_str()), (Some(0), "Syntax OK!\n"), "{}", text(&out.stderr));
}

/// The first source document's own example: a KrakenD EE root `plugin` block for Go
/// plugins, and the built-in http-proxy plugin on a backend.
#[test]
fn the_http_proxy_example_of_the_krakend_docs_loads() {
    let out = sluice(&["check", "-c", "tests/configs/seed000_http_proxy.json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Syntax OK!\n");
    assert_eq!(
        text(&out.stderr),
        "warning: plugin.pattern: \".so\": Go plugins (.so) cannot be loaded by Sluice (they only load into the Go \
         program they were built with): the block is ignored; built-in plugins (http-proxy) need none. Build other \
         plugins as proxy-wasm modules (target wasm32-wasip1) and set \"pattern\": \".wasm\" (docs/plugins.md)\n"
    );
}

#[test]
fn version_and_help() {
    let out = sluice(&["--version"]);
    assert_eq!(text(&out.stdout), format!("sluice {}\n", env!("CARGO_PKG_VERSION")));
    let help = sluice(&["help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help.stdout).contains("check  Validates a configuration file"), "{}", text(&help.stdout));
    let bad = sluice(&["check"]);
    assert_eq!(bad.status.code(), Some(2), "clap reports a missing -c with exit 2");
    assert!(text(&bad.stderr).contains("--config <FILE>"));
}

#[test]
fn an_endless_or_oversized_file_is_refused_at_the_limit() {
    // /dev/zero never ends: read up to the limit (8 MiB) and one byte more, then refused.
    let started = std::time::Instant::now();
    let out = sluice(&["check", "-c", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "/dev/zero: the configuration is larger than 8 MiB (8388609 bytes or more): refused\n"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "bounded, not read forever");
    // A real file one byte over: the same answer (JSON that would parse, if read).
    let big = std::env::temp_dir().join(format!("sluice-big-{}.json", std::process::id()));
    let mut doc = String::from(r#"{"version": 3, "name": ""#);
    doc.push_str(&"x".repeat((8 << 20) - doc.len() - 2 + 1));
    doc.push_str(r#""}"#);
    assert_eq!(doc.len(), (8 << 20) + 1);
    std::fs::write(&big, &doc).unwrap();
    let out = sluice(&["check", "-c", big.to_str().unwrap()]);
    let _ = std::fs::remove_file(&big);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).ends_with(": the configuration is larger than 8 MiB (8388609 bytes or more): refused\n"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_document_that_is_not_an_object_is_named_by_its_file() {
    let dir = std::env::temp_dir().join(format!("sluice-root-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (doc, found) in [("null", "null"), ("[1]", "an array"), ("\"x\"", "a string"), ("3", "a number")] {
        let file = dir.join("root.json");
        std::fs::write(&file, doc).unwrap();
        let out = sluice(&["check", "-c", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{doc}");
        assert_eq!(
            text(&out.stderr),
            format!("{}: a configuration is a JSON object (KrakenD v3), found {found}\n", file.display())
        );
    }
    let file = dir.join("binary.json");
    std::fs::write(&file, [b'{', 0xff, 0xfe, b'}']).unwrap();
    let out = sluice(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), format!("{}: not UTF-8 text (byte 1): not a JSON configuration\n", file.display()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A proxy variable that cannot be used stops `check` and `run` with its name, and
/// never prints its credentials.
#[test]
fn a_bad_proxy_variable_is_named_and_redacted() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "-c", "examples/krakend.json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HTTPS_PROXY", "socks5://me:hunter2@proxy.corp:1080")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "sluice: HTTPS_PROXY: \"socks5://***@proxy.corp:1080\": unsupported proxy scheme \"socks5\" (use http://)\n"
    );
    // Lowercase works too, and a usable one passes.
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "-c", "examples/krakend.json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("http_proxy", "proxy.corp:3128")
        .env("NO_PROXY", "*")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
