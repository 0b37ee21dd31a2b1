//! Fault injection through real sockets, on every driver: misbehaving clients and
//! backends, and a stop under load. Each test here was a finding of a fault-and-abuse
//! run (issue 12) and fails on the code before its fix.

mod support;

use std::io::{BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{Backend, Gw, Mode, Reply, read_response};

macro_rules! every_driver {
    ($($name:ident),* $(,)?) => {
        #[cfg(target_os = "linux")]
        mod io_uring { $( #[test] fn $name() { super::$name(super::Mode::IoUring) } )* }
        #[cfg(target_os = "linux")]
        mod epoll { $( #[test] fn $name() { super::$name(super::Mode::Epoll) } )* }
        mod tokio { $( #[test] fn $name() { super::$name(super::Mode::Tokio) } )* }
    };
}

every_driver!(a_stop_under_load_loses_no_request,);

fn config(endpoints: &str) -> String {
    format!(r#"{{"version": 3, "timeout": "2s", "read_header_timeout": "1s", "endpoints": [{endpoints}]}}"#)
}

/// What one looping keep-alive client saw.
#[derive(Debug, Default)]
struct Tally {
    answered: usize,
    /// A request written, then EOF or a reset instead of its answer.
    lost: usize,
    /// The connection ended without an answer that said `Connection: close` first.
    unannounced: usize,
}

fn a_stop_under_load_loses_no_request(mode: Mode) {
    // 16 clients loop requests on kept-alive connections; the server stops while they
    // run. Every request written must be answered, the last answer on each connection
    // must say `Connection: close`, and no client may see EOF or a reset instead.
    let backend = Backend::start(|_| Reply::Json(r#"{"ok":true}"#.into()));
    let mut gw = Gw::start(
        &config(&format!(
            r#"{{"endpoint": "/a", "backend": [{{"host": ["{}"], "url_pattern": "/a"}}]}}"#,
            backend.url()
        )),
        mode,
    );
    let addr = gw.addr;
    let started = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let started = started.clone();
            std::thread::spawn(move || {
                let mut tally = Tally::default();
                let s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                started.fetch_add(1, Ordering::SeqCst);
                // Bounded: at most 20,000 requests per client, or the stop ends it.
                for _ in 0..20_000 {
                    if w.write_all(b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\n").is_err() {
                        tally.unannounced += 1;
                        break;
                    }
                    match read_response(&mut r) {
                        Some(resp) => {
                            assert_eq!((resp.status, resp.text()), (200, r#"{"ok":true}"#));
                            tally.answered += 1;
                            if resp.header("connection") == Some("close") {
                                return tally;
                            }
                        }
                        None => {
                            tally.lost += 1;
                            tally.unannounced += 1;
                            return tally;
                        }
                    }
                }
                tally
            })
        })
        .collect();
    while started.load(Ordering::SeqCst) < 16 {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stopping = gw.stop_async();
    let tallies: Vec<Tally> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    stopping.join().unwrap();
    let answered: usize = tallies.iter().map(|t| t.answered).sum();
    assert!(answered > 16, "the clients ran before the stop: {tallies:?}");
    assert_eq!(tallies.iter().map(|t| t.lost).sum::<usize>(), 0, "{tallies:?}");
    assert_eq!(tallies.iter().map(|t| t.unannounced).sum::<usize>(), 0, "{tallies:?}");
    assert!(std::net::TcpStream::connect(addr).is_err(), "no longer accepting");
}
