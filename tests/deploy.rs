//! The container image's and the Kubernetes manifests' promises, checked against the
//! real binary: the configuration they ship passes `sluice check` and serves the probe
//! paths they name; the grace period covers the preStop sleep and the drain. (CI also
//! lints the Dockerfile with hadolint and validates the manifests against the
//! Kubernetes schemas: `.ci/run`.)

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Reaped, Scratch, read_response, sluice_run};

const MANIFESTS: &str = include_str!("../deploy/kubernetes/sluice.yaml");
const DOCKERFILE: &str = include_str!("../Dockerfile");

/// The ConfigMap's `krakend.json`: the block scalar's lines, unindented.
fn shipped_config() -> String {
    let mut lines = MANIFESTS.lines().skip_while(|l| l.trim() != "krakend.json: |").skip(1);
    let first = lines.next().unwrap();
    let indent = first.len() - first.trim_start().len();
    let mut text = format!("{}\n", &first[indent..]);
    for l in lines.take_while(|l| l.starts_with(&" ".repeat(indent)) || l.is_empty()) {
        text.push_str(l.get(indent..).unwrap_or(""));
        text.push('\n');
    }
    text
}

/// The number after `key:` on the manifests' first line that has it.
fn number(key: &str) -> u64 {
    let line = MANIFESTS.lines().find(|l| l.trim_start().starts_with(key)).unwrap_or_else(|| panic!("{key}"));
    line.split(':').nth(1).unwrap().trim().trim_matches('"').parse().unwrap()
}

#[test]
fn the_shipped_configurations_pass_check() {
    let dir = Scratch::new("deploy");
    let file = dir.0.join("krakend.json");
    std::fs::write(&file, shipped_config()).unwrap();
    for config in [file.as_path(), std::path::Path::new("examples/krakend.json")] {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check", "-c"])
            .arg(config)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "Syntax OK!\n", "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success());
    }
    // The image checks, and runs, the configuration it copies in.
    assert!(DOCKERFILE.contains("COPY examples/krakend.json /etc/sluice/krakend.json\n"));
    assert!(DOCKERFILE.contains(r#"RUN ["/usr/local/bin/sluice", "check", "-c", "/etc/sluice/krakend.json"]"#));
    assert!(DOCKERFILE.contains(r#"CMD ["run", "-c", "/etc/sluice/krakend.json"]"#));
    assert!(MANIFESTS.contains(r#"args: ["run", "-c", "/etc/sluice/krakend.json", "--shards", "2"]"#));
    assert!(MANIFESTS.contains("mountPath: /etc/sluice\n"));
}

#[test]
fn the_grace_period_covers_the_prestop_sleep_and_the_drain() {
    let config: serde_json::Value = serde_json::from_str(&shipped_config()).unwrap();
    let drain: u64 = config["max_shutdown_wait_time"].as_str().unwrap().trim_end_matches('s').parse().unwrap();
    let (grace, sleep) = (number("terminationGracePeriodSeconds:"), number("seconds:"));
    assert!(grace > sleep + drain, "terminationGracePeriodSeconds {grace} <= preStop {sleep} + drain {drain}");
    // One shard per CPU of the limit.
    assert!(MANIFESTS.contains("limits:\n              cpu: \"2\""));
}

#[test]
fn the_probes_answer_on_the_ports_the_manifests_name() {
    let config = shipped_config();
    assert!(config.contains(r#""sluice/admin": {"listen_ip": "0.0.0.0", "port": 9901}"#));
    assert!(MANIFESTS.contains("containerPort: 9901") && MANIFESTS.contains("containerPort: 8080"));
    assert!(MANIFESTS.contains("path: /ready\n              port: admin"));
    assert!(MANIFESTS.contains("path: /__health\n              port: http"));
    // Served on ports of the system's choosing here (the same paths).
    let dir = Scratch::new("deploy-run");
    let file = dir.0.join("krakend.json");
    let config = config.replace(r#""listen_ip": "0.0.0.0", "port": 9901"#, r#""listen_ip": "127.0.0.1", "port": 0"#);
    std::fs::write(&file, config).unwrap();
    let mut child = sluice_run(&file, &["-p", "0", "--shards", "1"], Some("info"))
        .stdout(Stdio::null())
        .spawn()
        .map(Reaped)
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
    let listening = lines.find(|l| l.contains("; listening on ")).expect("a listening line");
    let port =
        listening.rsplit("; listening on ").next().unwrap().split(';').next().unwrap().rsplit(':').next().unwrap();
    let admin = listening.rsplit("; admin on http://").next().unwrap().trim_end_matches("/stats").to_string();
    std::thread::spawn(move || lines.for_each(drop));
    let get = |at: &str, path: &str| {
        let mut s = TcpStream::connect(at).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: probe\r\nUser-Agent: kube-probe/1.30\r\nConnection: close\r\n\r\n")
            .unwrap();
        read_response(&mut BufReader::new(s)).unwrap()
    };
    let ready = get(&admin, "/ready");
    assert_eq!((ready.status, ready.text()), (200, "LIVE\n"));
    let health = get(&format!("127.0.0.1:{port}"), "/__health");
    assert_eq!(health.status, 200);
    assert!(health.text().contains(r#""status":"ok""#), "{}", health.text());
    let metrics = get(&admin, "/stats/prometheus");
    assert_eq!(metrics.status, 200);
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
