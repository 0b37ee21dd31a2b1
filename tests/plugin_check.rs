//! Client plugin configuration through the real binary: `sluice check` loads and binds
//! every plugin, and each mistake is one line with its JSON path and exit 1;
//! `sluice run` logs what it loaded and bound, and what a plugin logs.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::{Reaped, Scratch, plugins};

fn check(config: &str, dir: &Path) -> Output {
    let file = dir.join("krakend.json");
    std::fs::write(&file, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_sluice")).args(["check", "-c"]).arg(&file).output().expect("sluice runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A configuration with a root `plugin` of `folder`/`pattern` and one backend binding
/// `binding` (the `plugin/http-client` object).
fn config(folder: &str, pattern: &str, binding: &str) -> String {
    format!(
        r#"{{"version": 3, "plugin": {{"folder": "{folder}", "pattern": "{pattern}"}}, "endpoints": [
            {{"endpoint": "/a", "backend": [{{"host": ["http://127.0.0.1:9"], "url_pattern": "/a",
              "extra_config": {{"plugin/http-client": {binding}}}}}]}}]}}"#
    )
}

const HELLO: &str = r#"{"name": "hello", "hello": {"path": "/x"}}"#;
const BINDING_AT: &str = r#"endpoints[0].backend[0].extra_config["plugin/http-client"]"#;

/// A minimal module exporting one empty function under `export`.
fn module_exporting(export: &str) -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend_from_slice(&[0x01, 0x04, 0x01, 0x60, 0x00, 0x00]); // type (func)
    m.extend_from_slice(&[0x03, 0x02, 0x01, 0x00]); // one function of that type
    let mut export_section = vec![0x01, export.len() as u8];
    export_section.extend_from_slice(export.as_bytes());
    export_section.extend_from_slice(&[0x00, 0x00]);
    m.push(0x07);
    m.push(export_section.len() as u8);
    m.extend_from_slice(&export_section);
    m.extend_from_slice(&[0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b]); // its body: end
    m
}

#[test]
fn good_plugins_check_ok() {
    let dir = Scratch::new("plugin-ok");
    let out = check(&config(&plugins::folder().display().to_string(), ".wasm", HELLO), &dir.0);
    assert_eq!((String::from_utf8_lossy(&out.stdout).as_ref(), stderr(&out).as_str()), ("Syntax OK!\n", ""));
    assert_eq!(out.status.code(), Some(0));
}

/// A Go plugin pattern loads nothing (said at start-up: see check_cli.rs for the
/// built-in http-proxy under it); a backend naming a plugin that is not built in is
/// still refused, saying why.
#[test]
fn go_plugin_pattern_says_why_and_what_to_do() {
    let dir = Scratch::new("plugin-so");
    let out = check(&config("./plugins/", ".so", HELLO), &dir.0);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "endpoints[0].backend[0].extra_config[\"plugin/http-client\"].name: no plugin named \"hello\": it is not \
         built in, and the root \"plugin\" block loads no Go plugin (build it as a proxy-wasm module and set \
         \"pattern\": \".wasm\")\n"
    );
}

#[test]
fn missing_folder_and_bad_modules_are_named() {
    let dir = Scratch::new("plugin-bad");
    let out = check(&config("/nonexistent/sluice-plugins", ".wasm", HELLO), &dir.0);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "plugin.folder: cannot read \"/nonexistent/sluice-plugins\": No such file or directory (os error 2)\n"
    );

    let folder = dir.0.join("plugins");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("text.wasm"), "not wasm").unwrap();
    std::fs::write(folder.join("old.wasm"), module_exporting("proxy_abi_version_0_1_0")).unwrap();
    std::fs::write(folder.join("plain.wasm"), module_exporting("run")).unwrap();
    std::fs::write(folder.join("cut.wasm"), &module_exporting("proxy_abi_version_0_2_1")[..20]).unwrap();
    std::fs::write(folder.join("ignored.txt"), "not matched by the pattern").unwrap();
    let shown = folder.display();
    let out = check(&config(&shown.to_string(), ".wasm", HELLO), &dir.0);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<String> = stderr(&out).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("plugin.folder: {shown}/cut.wasm: not a valid WebAssembly module: ")),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[1],
        format!(
            "plugin.folder: {shown}/old.wasm: speaks proxy-wasm ABI 0.1.0; Sluice speaks 0.2.1 (export proxy_abi_version_0_2_1)"
        )
    );
    assert_eq!(
        lines[2],
        format!(
            "plugin.folder: {shown}/plain.wasm: is not a proxy-wasm module: it does not export proxy_abi_version_0_2_1"
        )
    );
    assert_eq!(lines[3], format!("plugin.folder: {shown}/text.wasm: not a WebAssembly module (no \\0asm header)"));
}

#[test]
fn unknown_names_and_refused_configurations() {
    let dir = Scratch::new("plugin-names");
    let folder = plugins::folder().display().to_string();
    let out = check(&config(&folder, ".wasm", r#"{"name": "nope"}"#), &dir.0);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "{BINDING_AT}.name: no plugin named \"nope\": \"{folder}\" has \"faulty\", \"hello\", \"l4\", \"probe\"\n"
        )
    );

    // No root `plugin` at all.
    let config_without = r#"{"version": 3, "endpoints": [{"endpoint": "/a", "backend": [{"host": ["http://127.0.0.1:9"],
        "url_pattern": "/a", "extra_config": {"plugin/http-client": {"name": "hello"}}}]}]}"#;
    let out = check(config_without, &dir.0);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "{BINDING_AT}.name: no plugin named \"hello\": no plugins are loaded (add a root \"plugin\": {{\"folder\": ..., \"pattern\": \".wasm\"}})\n"
        )
    );

    // The plugin's on_configure says no.
    let out = check(&config(&folder, ".wasm", r#"{"name": "hello", "hello": {"path": 5}}"#), &dir.0);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("{BINDING_AT}: plugin hello: refused its configuration (proxy_on_configure answered false)\n")
    );

    // The built-in http-proxy needs no file.
    let out = check(
        r#"{"version": 3, "endpoints": [{"endpoint": "/a", "backend": [{"host": ["http://127.0.0.1:9"],
        "url_pattern": "/a", "extra_config": {"plugin/http-client": {"name": "http-proxy", "proxy_address": "http://127.0.0.1:3128"}}}]}]}"#,
        &dir.0,
    );
    assert_eq!((stderr(&out).as_str(), out.status.code()), ("", Some(0)));
}

/// `sluice run` says how many plugins it loaded and which backend each is injected
/// into, and a plugin's own log lines come out as `[PLUGIN: name]`.
#[test]
fn run_logs_loading_injection_and_plugin_lines() {
    let dir = Scratch::new("plugin-run");
    let port = support::proxies::free_port();
    let folder = plugins::folder().display().to_string();
    let config = format!(
        r#"{{"version": 3, "port": {port}, "plugin": {{"folder": "{folder}", "pattern": ".wasm"}}, "endpoints": [
            {{"endpoint": "/a/{{id}}", "backend": [{{"host": ["http://127.0.0.1:9"], "url_pattern": "/b/{{id}}",
              "extra_config": {{"plugin/http-client": {{"name": "faulty", "faulty": {{"trap_on": "/b/trap"}}}}}}}}]}}]}}"#
    );
    let file = dir.0.join("krakend.json");
    std::fs::write(&file, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--shards", "1", "-c"])
        .arg(&file)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
    let _reaped = Reaped(child);
    let mut wait_for = |needle: &str| -> String {
        lines.by_ref().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?}"))
    };
    assert!(
        wait_for("plugin(s) loaded")
            .ends_with(&format!("INFO 4 plugin(s) loaded from \"{folder}\": faulty, hello, l4, probe"))
    );
    assert!(wait_for("Injecting").ends_with("INFO [BACKEND: /a/{id}] Injecting plugin faulty"));
    wait_for("listening on");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(&mut s, b"GET /a/trap HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let r = support::read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(r.status, 500);
    assert!(wait_for("[PLUGIN: faulty] panicked").contains("ERROR [PLUGIN: faulty] panicked at"));
    // The trap's line carries what the plugin said as it panicked.
    let trapped = wait_for("instance is started again");
    let (start, end) = (
        "ERROR [PLUGIN: faulty] trapped (unreachable: a panic or an abort in the plugin): panicked at faulty/src/lib.rs:",
        ": asked to trap on /b/trap; the call fails with 500 and the instance is started again",
    );
    assert!(trapped.contains(start) && trapped.ends_with(end), "{trapped}");
}

/// A network (L4) filter is refused with the reason, and a plugin panicking in
/// `on_configure` is refused with the panic's text, not only "trapped".
#[test]
fn network_filters_and_panicking_configurations_are_refused_with_the_reason() {
    let dir = Scratch::new("plugin-l4");
    let folder = plugins::folder().display().to_string();
    let out = check(&config(&folder, ".wasm", r#"{"name": "l4"}"#), &dir.0);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "{BINDING_AT}: plugin l4: is a network (L4) filter: its contexts take connections \
             (proxy_on_new_connection), not HTTP requests; Sluice runs HTTP filters on backend calls only\n"
        )
    );

    let out = check(&config(&folder, ".wasm", r#"{"name": "probe", "probe": {"panic": "no way"}}"#), &dir.0);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    let start = format!(
        "{BINDING_AT}: plugin probe: trapped (unreachable: a panic or an abort in the plugin): panicked at probe/src/lib.rs:"
    );
    assert!(text.starts_with(&start) && text.ends_with(": told to panic: no way\n"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}
