//! The DNS cache with virtual time: coalesced queries, refresh, host_ttl, max_hosts,
//! failures, and Envoy's counters.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use sluice_core::resolve::dns::{DnsCache, DnsCacheConfig, DnsError, DnsStats, Lookup};

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn concurrent_lookups_of_one_name_share_one_query() {
    let t0 = Instant::now();
    let mut dns = DnsCache::new(DnsCacheConfig::default());
    assert_eq!(dns.lookup("api.test", t0, || 1), Lookup::Queued { query: true });
    assert_eq!(dns.lookup("api.test", t0, || 2), Lookup::Queued { query: false });
    assert_eq!(dns.lookup("api.test", t0, || 3), Lookup::Queued { query: false });
    let (waiters, answer) = dns.resolved("api.test", Ok(ips(&["127.0.0.1", "::1"])), t0);
    assert_eq!(waiters, vec![1, 2, 3]);
    assert_eq!(answer, Ok(ips(&["127.0.0.1", "::1"])));
    // Then from the cache, with no query.
    assert_eq!(
        dns.lookup("api.test", t0 + secs(1), || 4),
        Lookup::Ready { addrs: ips(&["127.0.0.1", "::1"]), refresh: false }
    );
    assert_eq!(
        dns.stats(),
        DnsStats { dns_query_attempt: 1, dns_query_success: 1, host_added: 1, num_hosts: 1, ..DnsStats::default() }
    );
}

#[test]
fn answers_are_refreshed_in_the_background_after_the_refresh_rate() {
    let t0 = Instant::now();
    let config = DnsCacheConfig { dns_refresh_rate: secs(60), ..DnsCacheConfig::default() };
    let mut dns: DnsCache<u8> = DnsCache::new(config);
    dns.lookup("api.test", t0, || 0);
    assert!(dns.resolved("api.test", Ok(ips(&["127.0.0.1"])), t0).1.is_ok());
    let old = ips(&["127.0.0.1"]);
    assert_eq!(dns.lookup("api.test", t0 + secs(59), || 0), Lookup::Ready { addrs: old.clone(), refresh: false });
    // Due: the old answer serves, one caller (and only one) starts the query.
    assert_eq!(dns.lookup("api.test", t0 + secs(60), || 0), Lookup::Ready { addrs: old.clone(), refresh: true });
    assert_eq!(dns.lookup("api.test", t0 + secs(61), || 0), Lookup::Ready { addrs: old.clone(), refresh: false });
    // A failed refresh keeps the addresses.
    let (waiters, answer) = dns.resolved("api.test", Err("timed out".into()), t0 + secs(62));
    assert!(waiters.is_empty());
    assert_eq!(answer, Ok(old.clone()));
    assert_eq!(dns.lookup("api.test", t0 + secs(63), || 0), Lookup::Ready { addrs: old, refresh: true });
    let moved = ips(&["127.0.0.2"]);
    assert!(dns.resolved("api.test", Ok(moved.clone()), t0 + secs(64)).1.is_ok());
    assert_eq!(dns.lookup("api.test", t0 + secs(65), || 0), Lookup::Ready { addrs: moved, refresh: false });
    let s = dns.stats();
    assert_eq!((s.dns_query_attempt, s.dns_query_success, s.dns_query_failure), (3, 2, 1));
    assert_eq!((s.host_added, s.num_hosts), (1, 1));
}

#[test]
fn a_failed_first_query_answers_every_waiter_and_is_forgotten() {
    let t0 = Instant::now();
    let mut dns = DnsCache::new(DnsCacheConfig::default());
    dns.lookup("nowhere.test", t0, || 'a');
    dns.lookup("nowhere.test", t0, || 'b');
    let (waiters, answer) = dns.resolved("nowhere.test", Err("no such name".into()), t0);
    assert_eq!(waiters, vec!['a', 'b']);
    assert_eq!(answer, Err(DnsError::Failed("no such name".into())));
    // An empty answer is a failure too.
    assert_eq!(dns.lookup("nowhere.test", t0, || 'c'), Lookup::Queued { query: true });
    let (_, answer) = dns.resolved("nowhere.test", Ok(Vec::new()), t0);
    assert_eq!(answer, Err(DnsError::Failed("no address".into())));
    assert_eq!(
        dns.stats(),
        DnsStats {
            dns_query_attempt: 2,
            dns_query_failure: 2,
            host_added: 2,
            host_removed: 2,
            num_hosts: 0,
            ..DnsStats::default()
        }
    );
}

#[test]
fn max_hosts_overflows_until_unused_names_pass_their_host_ttl() {
    let t0 = Instant::now();
    let config = DnsCacheConfig { max_hosts: 2, host_ttl: secs(300), ..DnsCacheConfig::default() };
    let mut dns = DnsCache::new(config);
    for name in ["a.test", "b.test"] {
        dns.lookup(name, t0, || ());
        assert!(dns.resolved(name, Ok(ips(&["127.0.0.1"])), t0).1.is_ok());
    }
    assert_eq!(dns.lookup("c.test", t0 + secs(1), || ()), Lookup::Overflow);
    assert_eq!(dns.lookup("c.test", t0 + secs(2), || ()), Lookup::Overflow);
    // Names held still answer (b.test is due for a refresh, which answers at once).
    assert!(matches!(dns.lookup("b.test", t0 + secs(200), || ()), Lookup::Ready { refresh: true, .. }));
    assert!(dns.resolved("b.test", Ok(ips(&["127.0.0.1"])), t0 + secs(200)).1.is_ok());
    // a.test unused for host_ttl: dropped, room for c.test; b.test was used at 200 s.
    assert_eq!(dns.lookup("c.test", t0 + secs(300), || ()), Lookup::Queued { query: true });
    assert_eq!(dns.lookup("d.test", t0 + secs(300), || ()), Lookup::Overflow);
    let s = dns.stats();
    assert_eq!((s.host_overflow, s.host_added, s.host_removed, s.num_hosts), (3, 3, 1, 2));
    // A name with a query under way is never swept.
    dns.sweep(t0 + secs(10_000));
    assert_eq!(dns.stats().num_hosts, 1);
    assert_eq!(dns.lookup("c.test", t0 + secs(10_000), || ()), Lookup::Queued { query: false });
}

#[test]
fn an_answer_for_a_name_no_longer_held_wakes_nobody() {
    let t0 = Instant::now();
    let mut dns: DnsCache<u8> = DnsCache::new(DnsCacheConfig::default());
    let (waiters, answer) = dns.resolved("gone.test", Ok(ips(&["127.0.0.1"])), t0);
    assert!(waiters.is_empty());
    assert_eq!(answer, Ok(ips(&["127.0.0.1"])));
    assert_eq!(dns.stats().num_hosts, 0);
}

#[test]
fn literals_need_no_lookup_and_a_backend_dials_the_first_answer() {
    use sluice_core::resolve::dns::{first_address, ip_literal};
    assert_eq!(ip_literal("127.0.0.1"), Ok("127.0.0.1".parse().unwrap()));
    assert_eq!(ip_literal("[::1]"), Ok("::1".parse().unwrap()));
    assert_eq!(ip_literal("::1"), Ok("::1".parse().unwrap()));
    assert_eq!(ip_literal("users.internal"), Err("users.internal"));
    assert_eq!(first_address(Ok(ips(&["::1", "127.0.0.1"]))), Ok("::1".parse().unwrap()));
    // An empty answer is a failure; a failure stays what it was.
    assert_eq!(first_address(Ok(Vec::new())), Err(DnsError::Failed("no address".into())));
    assert_eq!(first_address(Err(DnsError::Overflow)), Err(DnsError::Overflow));
    assert_eq!(
        first_address(Err(DnsError::Failed("no such name".into()))),
        Err(DnsError::Failed("no such name".into()))
    );
    assert!(Lookup::Queued { query: true }.query() && Lookup::Ready { addrs: Vec::new(), refresh: true }.query());
    assert!(!Lookup::Queued { query: false }.query() && !Lookup::Overflow.query());
}
