//! `telemetry/logging` through the real binary: KrakenD's formats (`default`,
//! `logstash`, `custom`) on standard output, its levels, the local syslog socket, and
//! bad settings refused with their JSON paths.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Output};
use std::time::Duration;

use support::{Backend, Reaped, Reply, Scratch, get_once, listening_port, sluice_run};

/// Runs `config` (its `telemetry/logging` block being `logging`) on `runtime`, sends
/// `GET /ok` and `GET /down` (a backend that refuses), stops it, and gives back its
/// stdout and stderr.
fn serve_and_stop(logging: &str, runtime: &str, env: &[(&str, &str)]) -> Output {
    let backend = Backend::start(|_| Reply::Json(r#"{"a":1}"#.into()));
    let dir = Scratch::new("logging");
    let file = dir.0.join("krakend.json");
    let config = format!(
        r#"{{"version": 3, "extra_config": {{"telemetry/logging": {logging}}}, "endpoints": [
            {{"endpoint": "/ok", "backend": [{{"host": ["{}"], "url_pattern": "/"}}]}},
            {{"endpoint": "/down", "backend": [{{"host": ["http://127.0.0.1:1"], "url_pattern": "/"}}]}}]}}"#,
        backend.url()
    );
    std::fs::write(&file, config).unwrap();
    let mut child = sluice_run(&file, &["-p", "0", "--shards", "1", "--runtime", runtime], None)
        .envs(env.iter().copied())
        .spawn()
        .map(Reaped)
        .unwrap();
    // The port, from /proc: the lines may go anywhere.
    let port = listening_port(child.id());
    for path in ["/ok", "/down"] {
        get_once(port, path, "");
    }
    std::thread::sleep(Duration::from_millis(200));
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = std::mem::replace(&mut child.0, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn logstash_lines_are_json_with_krakends_fields(runtime: &str) {
    let out = serve_and_stop(
        r#"{"level": "INFO", "prefix": "[KRAKEND]", "stdout": true, "format": "logstash"}"#,
        runtime,
        &[],
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "nothing on stderr");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut messages = Vec::new();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let o = v.as_object().unwrap();
        let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
        // In KrakenD's order, as written (serde_json's map sorts them).
        keys.sort_by_key(|k| line.find(&format!("\"{k}\":")).unwrap());
        assert_eq!(keys, ["@timestamp", "@version", "level", "message", "module"], "{line}");
        assert_eq!(o["@version"], 1);
        assert_eq!(o["module"], "KRAKEND");
        let ts = o["@timestamp"].as_str().unwrap();
        assert!(ts.len() == 29 && ts.ends_with("+00:00") && &ts[10..11] == "T" && &ts[19..20] == ".", "{ts}");
        messages.push((o["level"].as_str().unwrap().to_string(), o["message"].as_str().unwrap().to_string()));
    }
    // The access lines and a backend failure are lines like the others.
    let has = |level: &str, part: &str| messages.iter().any(|(l, m)| l == level && m.contains(part));
    assert!(has("INFO", r#"127.0.0.1 "GET /ok" 200 7 "#), "{messages:#?}");
    assert!(has("INFO", r#"127.0.0.1 "GET /down" 500 "#), "{messages:#?}");
    assert!(has("WARNING", "backend 0 of /down: cannot connect to 127.0.0.1:1"), "{messages:#?}");
    assert!(has("INFO", "stopping"), "{messages:#?}");
}

#[test]
fn logstash_lines_are_json_with_krakends_fields_uring() {
    logstash_lines_are_json_with_krakends_fields("uring");
}

#[test]
fn logstash_lines_are_json_with_krakends_fields_tokio() {
    logstash_lines_are_json_with_krakends_fields("tokio");
}

#[test]
fn default_format_with_prefix_and_level() {
    let out = serve_and_stop(r#"{"level": "WARNING", "prefix": "[GW]", "stdout": true}"#, "tokio", &[]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    // WARNING and up only: the backend failure; no access line, no start-up line.
    assert_eq!(lines.len(), 1, "{stdout}");
    let line = lines[0];
    // [GW] 2026/12/04 - 07:37:08.433 ▶ WARNING backend 0 of /down: ...
    let (head, rest) = line.split_at(line.find(" ▶ ").unwrap());
    assert!(head.starts_with("[GW] ") && head.len() == "[GW] 2026/12/04 - 07:37:08.433".len(), "{line}");
    assert_eq!(&head[9..10], "/");
    assert_eq!(&head[15..18], " - ");
    assert!(rest.starts_with(" ▶ WARNING backend 0 of /down: cannot connect to 127.0.0.1:1"), "{line}");
}

#[test]
fn custom_format() {
    let out = serve_and_stop(
        r#"{"level": "INFO", "stdout": true, "format": "custom", "custom_format": "%{level:.4s} %{module} | %{message}"}"#,
        "uring",
        &[],
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.lines().any(|l| l.starts_with(r#"INFO KRAKEND | 127.0.0.1 "GET /ok" 200 7 "#)), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("WARN KRAKEND | backend 0 of /down")), "{stdout}");
    assert!(stdout.lines().all(|l| l.starts_with("INFO KRAKEND | ") || l.starts_with("WARN KRAKEND | ")), "{stdout}");
}

#[test]
fn syslog_gets_each_line_with_its_severity() {
    let dir = Scratch::new("syslog");
    let socket_path = dir.0.join("log.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    // Read as a syslog daemon does, as they come, until the gateway has exited and
    // nothing more is queued.
    let exited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = exited.clone();
    let reader = std::thread::spawn(move || {
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut datagrams = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match socket.recv(&mut buf) {
                Ok(n) => datagrams.push(String::from_utf8(buf[..n].to_vec()).unwrap()),
                Err(_) if done.load(std::sync::atomic::Ordering::SeqCst) => return datagrams,
                Err(_) => {}
            }
        }
    });
    let out = serve_and_stop(
        r#"{"level": "INFO", "prefix": "[KRAKEND]", "syslog": true, "stdout": false, "syslog_facility": "local0"}"#,
        "uring",
        &[("SLUICE_SYSLOG_SOCKET", socket_path.to_str().unwrap())],
    );
    exited.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "stdout is off");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let datagrams = reader.join().unwrap();
    // local0 (16): INFO is <134>, WARNING <132>. "<134>Dec  4 07:37:08 [KRAKEND][PID]: INFO > ..."
    let access = datagrams.iter().find(|d| d.contains(r#""GET /ok" 200"#)).unwrap_or_else(|| panic!("{datagrams:#?}"));
    assert!(access.starts_with("<134>") && access.ends_with('\n'), "{access}");
    assert_eq!(&access[8..9], " ", "a time stamp as Go's time.Stamp: {access}");
    assert_eq!((&access[14..15], &access[17..18], &access[20..21]), (":", ":", " "), "{access}");
    assert_eq!(
        &access[21..],
        format!("[KRAKEND][{}]: INFO > {}", pid_in(access), &access[access.find("127.0.0.1").unwrap()..])
    );
    let warn = datagrams.iter().find(|d| d.contains("backend 0 of /down")).unwrap();
    assert!(warn.starts_with("<132>") && warn.contains("]: WARNING > backend 0 of /down"), "{warn}");
}

/// The PID in a syslog datagram's `TAG[PID]:`.
fn pid_in(datagram: &str) -> &str {
    let start = datagram.find("][").unwrap() + 2;
    &datagram[start..start + datagram[start..].find(']').unwrap()]
}

#[test]
fn syslog_without_a_socket_refuses_to_start() {
    let dir = Scratch::new("nosyslog");
    let file = dir.0.join("krakend.json");
    std::fs::write(
        &file,
        r#"{"version": 3, "extra_config": {"telemetry/logging": {"level": "INFO", "syslog": true}}, "endpoints": []}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "-c"])
        .arg(&file)
        .args(["-p", "0"])
        .env("SLUICE_SYSLOG_SOCKET", dir.0.join("none.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: telemetry/logging: syslog is on, but no syslog socket takes lines ({}: No such file or directory",
            file.display(),
            dir.0.join("none.sock").display()
        )),
        "{err}"
    );
}

#[test]
fn bad_settings_are_refused_with_their_paths() {
    let dir = Scratch::new("badlogging");
    let file = dir.0.join("krakend.json");
    std::fs::write(
        &file,
        r#"{"version": 3, "extra_config": {"telemetry/logging": {"level": "LOUD", "format": "custom", "custom_format": "%{shortfile} %{message}", "syslog_facility": "local9"}}, "endpoints": []}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice")).args(["check", "-c"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    let ns = r#"extra_config["telemetry/logging"]"#;
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "{ns}.level: unknown level \"LOUD\", expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        ))),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("{ns}.syslog_facility: unknown facility \"local9\""))),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("{ns}.custom_format: %{{shortfile}} is not a verb Sluice writes"))),
        "{err}"
    );
}

#[test]
fn a_reload_takes_up_a_new_logging_block() {
    let backend = Backend::start(|_| Reply::Json(r#"{"a":1}"#.into()));
    let dir = Scratch::new("relog");
    let file = dir.0.join("krakend.json");
    let config = |extra: &str| {
        format!(
            r#"{{"version": 3, {extra} "endpoints": [{{"endpoint": "/ok", "backend": [{{"host": ["{}"], "url_pattern": "/"}}]}}]}}"#,
            backend.url()
        )
    };
    std::fs::write(&file, config("")).unwrap();
    let mut child = sluice_run(&file, &["-p", "0", "--shards", "1"], Some("info")).spawn().map(Reaped).unwrap();
    let port = listening_port(child.id());
    let get = || get_once(port, "/ok", "").status;
    assert_eq!(get(), 200);
    let logstash = r#""extra_config": {"telemetry/logging": {"level": "INFO", "stdout": true, "format": "logstash"}},"#;
    std::fs::write(&file, config(logstash)).unwrap();
    Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(), 200);
    std::thread::sleep(Duration::from_millis(200));
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = std::mem::replace(&mut child.0, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    // Before: Sluice's own lines on stderr, the first request's among them.
    assert_eq!(stderr.matches(r#""GET /ok" 200"#).count(), 1, "{stderr}");
    assert!(stderr.contains("SIGHUP: reading "), "{stderr}");
    // After: KrakenD's logstash lines on stdout, every one JSON, the second request's
    // and the reload's own line among them.
    let messages: Vec<String> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))["message"].to_string()
        })
        .collect();
    assert!(messages.iter().any(|m| m.contains("reloaded ")), "{messages:#?}");
    assert_eq!(messages.iter().filter(|m| m.contains(r#"\"GET /ok\" 200"#)).count(), 1, "{messages:#?}");
}
