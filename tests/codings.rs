//! Content codings between the gateway and its backends, against nginx's own gzip (as
//! KrakenD's Go client does it: gzip asked for and undone before decoding, bounded by
//! the response limit; `no-op` bytes untouched). Every driver.

mod support;

use std::io::Read;
use std::process::Command;

use support::proxies::nginx;
use support::{Gw, Mode, Scratch};

every_driver!(
    gzip_from_nginx_is_inflated_for_decoding,
    a_gzip_bomb_fails_the_call,
    no_op_passes_gzip_through_untouched
);

/// A JSON list of about 4 KB that gzip shrinks well.
fn list() -> String {
    let list: Vec<String> = (0..100).map(|i| format!(r#"{{"id":{i},"name":"item number {i}","ok":true}}"#)).collect();
    format!("[{}]", list.join(","))
}

/// The file nginx serves.
fn items() -> String {
    format!(r#"{{"items":{}}}"#, list())
}

/// nginx serving `data.json` gzipped on the fly and `bomb.json` from a prepared
/// `bomb.json.gz` (32 MiB of spaces inside a JSON string, gzip -1: about 150 KB).
fn server() -> (support::proxies::ProxyProcess, Scratch) {
    let root = Scratch::new("nginx-root");
    std::fs::write(root.0.join("data.json"), items()).unwrap();
    let bomb = root.0.join("bomb.json.gz");
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{{ printf '{{\"a\":\"'; head -c 33554432 /dev/zero | tr '\\0' ' '; printf '\"}}'; }} | gzip -1 > {}",
            bomb.display()
        ))
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::write(root.0.join("bomb.json"), b"{}").unwrap();
    let server = nginx(&root.0, "gzip on; gzip_types application/json; gzip_min_length 20; gzip_static on;");
    (server, root)
}

/// nginx's access log once it has `n` lines: nginx writes a line after the answer
/// went out, so the client can be done first (at most 5 s).
fn logged(nginx: &support::proxies::ProxyProcess, n: usize) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let lines: Vec<String> = nginx.log().lines().map(str::to_string).collect();
        if lines.len() >= n || start.elapsed() > std::time::Duration::from_secs(5) {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn config(port: u16, endpoints: &str) -> String {
    format!(
        r#"{{"version": 3, "timeout": "5s", "host": ["http://127.0.0.1:{port}"],
            "extra_config": {{"router": {{"return_error_msg": true}}}}, "endpoints": [{endpoints}]}}"#
    )
}

fn gzip_from_nginx_is_inflated_for_decoding(mode: Mode) {
    let (nginx, _root) = server();
    let gw = Gw::start(
        &config(
            nginx.port,
            r#"{"endpoint": "/both", "backend": [{"url_pattern": "/data.json"},
                {"url_pattern": "/data.json", "group": "again"}]}"#,
        ),
        mode,
    );
    let r = gw.get("/both");
    let expected = format!(r#"{{"items":{0},"again":{{"items":{0}}}}}"#, list());
    assert_eq!((r.status, r.header("x-krakend-completed"), r.text()), (200, Some("true"), expected.as_str()));
    // nginx was asked for gzip and answered with it: what was merged was inflated.
    let log = logged(&nginx, 2);
    assert_eq!(log.iter().filter(|l| *l == "GET /data.json HTTP/1.1|gzip|gzip").count(), 2, "{log:?}");
}

/// 32 MiB once inflated, against the 16 MiB response limit: the call fails as an
/// oversized body does (call::coding's unit tests show the buffer stops at the limit).
fn a_gzip_bomb_fails_the_call(mode: Mode) {
    let (nginx, _root) = server();
    let gw =
        Gw::start(&config(nginx.port, r#"{"endpoint": "/bomb", "backend": [{"url_pattern": "/bomb.json"}]}"#), mode);
    let r = gw.get("/bomb");
    let said = format!(
        "[GET /bomb.json]: http://127.0.0.1:{}/bomb.json: response body too large (past 16777216 bytes once inflated)",
        nginx.port
    );
    assert_eq!((r.status, r.text()), (500, said.as_str()));
}

/// A `no-op` endpoint forwarding the client's Accept-Encoding gets nginx's gzip bytes
/// to the client as they came, Content-Encoding and all; without it nginx sends plain.
fn no_op_passes_gzip_through_untouched(mode: Mode) {
    let (nginx, _root) = server();
    let gw = Gw::start(
        &config(
            nginx.port,
            r#"{"endpoint": "/raw", "output_encoding": "no-op", "input_headers": ["Accept-Encoding"],
                "backend": [{"url_pattern": "/data.json"}]}"#,
        ),
        mode,
    );
    let r = gw.request("GET", "/raw", &[("Accept-Encoding", "gzip")], b"");
    assert_eq!((r.status, r.header("content-encoding")), (200, Some("gzip")));
    assert_eq!(&r.body[..2], b"\x1f\x8b");
    let mut inflated = String::new();
    flate2::read::GzDecoder::new(&r.body[..]).read_to_string(&mut inflated).unwrap();
    assert_eq!(inflated, items());
    let r = gw.get("/raw");
    assert_eq!((r.status, r.header("content-encoding"), r.text()), (200, None, items().as_str()));
    assert_eq!(
        logged(&nginx, 2)
            .iter()
            .map(|l| l.split_once('|').map_or("?", |(_, rest)| rest).to_string())
            .collect::<Vec<_>>(),
        ["gzip|gzip", "-|-"]
    );
}
