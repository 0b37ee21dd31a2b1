//! The admin listener: reads one request, answers with `sluice_core::admin`'s page,
//! closes.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use sluice_core::admin::{self, Request};
use sluice_core::stats::Stats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Shared;

/// Serves the admin pages on `listener` (until the task is aborted at the stop).
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, shared.clone()));
            }
            Err(e) => {
                tracing::warn!("admin: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Reads one request (for at most 5 s), answers it, closes.
async fn answer(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut buf = Vec::with_capacity(1024);
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => match admin::request(&buf) {
                    Request::Incomplete => {}
                    done => return Some(done),
                },
            }
        }
    })
    .await;
    let bytes = match read {
        Ok(Some(Request::Page(page))) => {
            let mut stats = Stats::default();
            if page.needs_stats() {
                stats = shared.stats.lock().unwrap_or_else(PoisonError::into_inner).clone();
                stats.dns = shared.pool.dns_stats();
            }
            admin::answer(&shared.gw, &shared.runtime, page, &stats)
        }
        Ok(Some(Request::Reply(bytes))) => bytes,
        _ => return,
    };
    let _ = stream.write_all(&bytes).await;
    // Closed only once the client has what it sent read (at most 64 KiB, 1 s): closing
    // with its bytes unread would reset the connection and could lose the answer.
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let (mut left, mut buf) = (64 * 1024, [0u8; 4096]);
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 => left -= n.min(left),
                _ => break,
            }
        }
    })
    .await;
}
