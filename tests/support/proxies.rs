//! Real HTTP proxies and servers for the end-to-end suite: tinyproxy, squid and nginx
//! started in the foreground on loopback with a configuration of their own (`.ci/run`
//! installs them).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{Reaped, Scratch};

/// A proxy process on loopback, stopped (and its folder removed) when dropped.
pub struct ProxyProcess {
    _child: Reaped,
    pub port: u16,
    _dir: Scratch,
    log: PathBuf,
}

impl ProxyProcess {
    /// What the proxy has logged so far.
    #[allow(dead_code)]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A proxy's binary: on PATH, or in /usr/sbin where Debian puts squid (often not on
/// PATH for a user other than root).
fn program(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.exists() { sbin } else { PathBuf::from(name) }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn scratch(name: &str) -> Scratch {
    let dir = Scratch::new(name);
    // squid drops root for its own user: its files must be writable by it.
    let _ = Command::new("chmod").arg("777").arg(&dir.0).status();
    dir
}

/// Waits until `port` accepts connections (the proxy is up), at most 15 s.
fn wait_listening(child: &mut Child, port: u16, what: &str, log: &Path) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited ({status}): {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{what} did not start listening on {port}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `name` in the foreground with the configuration `conf(port, log, dir)`
/// written to a file passed after `flag`; waits until it listens.
pub fn start_proxy(name: &str, flags: &[&str], conf: impl Fn(u16, &Path, &Path) -> String) -> ProxyProcess {
    let dir = scratch(name);
    let port = free_port();
    let (file, log) = (dir.0.join(format!("{name}.conf")), dir.0.join(format!("{name}.log")));
    std::fs::write(&file, conf(port, &log, &dir.0)).unwrap();
    let child = Command::new(program(name))
        .args(flags)
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e} (apt-get install {name}; .ci/run does)"));
    let mut child = Reaped(child);
    wait_listening(&mut child, port, name, &log);
    ProxyProcess { _child: child, port, _dir: dir, log }
}

/// tinyproxy in the foreground; `extra` goes into its configuration.
pub fn tinyproxy(extra: &str) -> ProxyProcess {
    start_proxy("tinyproxy", &["-d", "-c"], |port, log, _| {
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 20\nMaxClients 64\nAllow 127.0.0.1\nLogLevel Info\nLogFile \"{}\"\n{extra}\n",
            log.display()
        )
    })
}

/// squid in the foreground, no cache, loopback clients only.
pub fn squid() -> ProxyProcess {
    start_proxy("squid", &["-N", "-f"], |port, log, dir| {
        format!(
            "http_port 127.0.0.1:{port}\nhttp_access allow localhost\nhttp_access deny all\ncache deny all\n\
             access_log none\ncache_log {log}\npid_filename {pid}\ncoredump_dir {dir}\nshutdown_lifetime 0 seconds\n",
            log = log.display(),
            pid = dir.join("squid.pid").display(),
            dir = dir.display(),
        )
    })
}

/// nginx in the foreground, one process, serving the files of `root` on loopback;
/// `server` goes into its `server` block. Its access log (`log()`) has one line per
/// request: `<request line>|<Accept-Encoding asked>|<Content-Encoding answered>`.
#[allow(dead_code)]
pub fn nginx(root: &Path, server: &str) -> ProxyProcess {
    start_proxy("nginx", &["-e", "stderr", "-c"], |port, log, dir| {
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log stderr;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  log_format probe '$request|$http_accept_encoding|$sent_http_content_encoding';\n  access_log {log} probe;\n\
               client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fcgi;\n\
               uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n  types {{ application/json json; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    root {root};\n    {server}\n  }}\n}}\n",
            dir = dir.display(),
            log = log.display(),
            root = root.display(),
        )
    })
}
