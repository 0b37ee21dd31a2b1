//! Admin request routing and adding up shards' counters (the connection that serves
//! the pages is played in tests/conn.rs; the pages are checked line by line over real
//! sockets in tests/admin.rs).

use http::Method;
use sluice_core::ops::admin::{self, Page};
use sluice_core::ops::stats::{Counts, Stats};
use sluice_core::resolve::dns::DnsStats;

#[test]
fn requests_are_routed() {
    let get = |target: &str| admin::route(&Method::GET, target);
    assert_eq!(get("/stats"), Ok(Page::Stats));
    assert_eq!(get("/stats/prometheus?x=1"), Ok(Page::Prometheus));
    assert_eq!(get("/ready"), Ok(Page::Ready));
    assert_eq!(get("/config_dump"), Ok(Page::ConfigDump));
    assert!(Page::Stats.needs_stats() && Page::Prometheus.needs_stats());
    assert!(!Page::Ready.needs_stats() && !Page::ConfigDump.needs_stats());
    let r = admin::route(&Method::DELETE, "/stats").unwrap_err();
    assert_eq!(
        (r.status.as_u16(), r.body.as_slice(), &r.headers["allow"]),
        (405, &b"only GET\n"[..], &http::HeaderValue::from_static("GET"))
    );
    for target in ["/quitquitquit", "/stats/", "/ready/x", "*"] {
        assert_eq!(get(target).unwrap_err().status.as_u16(), 404, "{target}");
    }
}

#[test]
fn shards_counters_add_up() {
    let counts = |status: u16, n: u64, bucket: usize| {
        let mut c = Counts { statuses: vec![(status, n)], sum_micros: 1000 * n, count: n, ..Counts::default() };
        c.buckets[bucket] = n;
        c
    };
    let mut a = Stats { endpoints: vec![counts(200, 2, 0)], tunnels_opened: 3, tunnels_closed: 1, ..Stats::default() };
    a.destinations.insert("x:80".into(), counts(200, 1, 1));
    a.dns = DnsStats { dns_query_attempt: 1, num_hosts: 1, ..DnsStats::default() };
    let mut b = Stats {
        endpoints: vec![counts(500, 1, 0), counts(200, 4, 2)],
        tunnels_opened: 1,
        tunnels_closed: 1,
        tunnel_bytes_up: 10,
        tunnel_bytes_spliced: 7,
        ..Stats::default()
    };
    b.destinations.insert("x:80".into(), counts(200, 2, 1));
    b.destinations.insert("y:80".into(), counts(404, 1, 0));
    b.dns = DnsStats { dns_query_attempt: 2, num_hosts: 1, ..DnsStats::default() };
    a.merge(&b);
    assert_eq!(a.endpoints[0].sorted_statuses(), vec![(200, 2), (500, 1)]);
    assert_eq!((a.endpoints[0].count, a.endpoints[0].buckets[0]), (3, 3));
    assert_eq!(a.endpoints[1], counts(200, 4, 2));
    assert_eq!(a.destinations["x:80"], counts(200, 3, 1));
    assert_eq!(a.destinations["y:80"], counts(404, 1, 0));
    assert_eq!((a.tunnels_open(), a.tunnel_bytes_up, a.tunnel_bytes_spliced), (2, 10, 7));
    assert_eq!((a.dns.dns_query_attempt, a.dns.num_hosts), (3, 2));
}
