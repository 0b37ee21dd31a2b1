//! Circuit breaker counts per destination: each limit opens and closes, permits give
//! back what they hold, whatever path drops them.

use sluice_core::forward::breaker::{Breaker, Breakers, Thresholds};

fn limits(c: u32, p: u32, r: u32, retries: u32) -> Breakers {
    Breakers::new(Thresholds {
        max_connections: c,
        max_pending_requests: p,
        max_requests: r,
        max_retries: retries,
        track_remaining: true,
    })
}

#[test]
fn envoy_defaults() {
    let t = Thresholds::default();
    assert_eq!(
        (t.max_connections, t.max_pending_requests, t.max_requests, t.max_retries, t.track_remaining),
        (1024, 1024, 1024, 3, false)
    );
}

#[test]
fn each_limit_opens_in_turn_and_closes_when_given_back() {
    // max_requests first.
    let b = limits(10, 10, 2, 3);
    let (p1, p2) = (b.admit("a:80").unwrap(), b.admit("a:80").unwrap());
    assert_eq!(b.admit("a:80").unwrap_err(), Breaker::MaxRequests);
    assert!(b.admit("b:80").is_ok(), "per destination");
    drop(p1);
    let p3 = b.admit("a:80").unwrap();
    drop((p2, p3));
    // Pending: while connections open; given back once connected.
    let b = limits(10, 1, 10, 3);
    let mut p1 = b.admit("a:80").unwrap();
    assert_eq!(b.admit("a:80").unwrap_err(), Breaker::MaxPendingRequests);
    p1.connected();
    p1.connected();
    let p2 = b.admit("a:80").unwrap();
    drop((p1, p2));
    // Connections.
    let b = limits(1, 10, 10, 3);
    let mut p1 = b.admit("a:80").unwrap();
    p1.connected();
    assert_eq!(b.admit("a:80").unwrap_err(), Breaker::MaxConnections);
    let g = &b.gauges()[0];
    assert_eq!((g.connections, g.pending, g.requests, g.cx_overflow), (1, 0, 1, 1));
    drop(p1);
    let g = &b.gauges()[0];
    assert_eq!((g.connections, g.pending, g.requests), (0, 0, 0));
}

#[test]
fn retries_are_limited_while_in_flight() {
    let b = limits(10, 10, 10, 1);
    let (mut p1, mut p2) = (b.admit("a:80").unwrap(), b.admit("a:80").unwrap());
    assert!(p1.retry());
    assert!(p1.retry(), "a permit's own retry is held once");
    assert!(!p2.retry(), "max_retries in flight");
    assert_eq!(b.gauges()[0].retry_overflow, 1);
    drop(p1);
    assert!(p2.retry());
    drop(p2);
    let g = &b.gauges()[0];
    assert_eq!((g.retries, g.requests, g.pending, g.connections), (0, 0, 0, 0));
}

#[test]
fn a_zero_limit_refuses_everything() {
    let b = limits(1024, 1024, 0, 3);
    assert_eq!(b.admit("a:80").unwrap_err(), Breaker::MaxRequests);
    assert_eq!(Breaker::MaxRequests.name(), "max_requests");
    assert_eq!(Breaker::MaxPendingRequests.name(), "max_pending_requests");
    assert_eq!(Breaker::MaxConnections.name(), "max_connections");
    assert_eq!(Breaker::MaxRetries.name(), "max_retries");
}
