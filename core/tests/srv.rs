//! `"sd": "dns"` in core, with virtual time and datagrams built here: resolv.conf,
//! the SRV query's tries over nameservers, the weighted choice of targets, the cache.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::SRV;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use sluice_core::resolve::dns::DnsError;
use sluice_core::resolve::srv::{ResolverConfig, SrvAnswer, SrvCache, SrvLookup, SrvQuery, SrvRecord, SrvSet};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn conf(servers: &[&str], attempts: u32) -> ResolverConfig {
    ResolverConfig { nameservers: servers.iter().map(|s| addr(s)).collect(), timeout: secs(2), attempts }
}

fn rec(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
    SrvRecord { priority, weight, port, target: target.to_string() }
}

/// The answer a server gives to `query` (its bytes as sent): `code`, these records
/// with `ttl`, the question echoed (or `other_name`'s).
fn answer(query: &[u8], code: ResponseCode, records: &[(u16, u16, u16, &str)], ttl: u32) -> Vec<u8> {
    let asked = Message::from_vec(query).unwrap();
    let q = asked.queries[0].clone();
    let mut m = Message::new(asked.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.response_code = code;
    m.add_query(q.clone());
    for &(priority, weight, port, target) in records {
        let srv = SRV::new(priority, weight, port, Name::from_ascii(target).unwrap());
        m.add_answer(Record::from_rdata(q.name().clone(), ttl, RData::SRV(srv)));
    }
    m.to_vec().unwrap()
}

#[test]
fn resolv_conf_gives_nameservers_and_options() {
    let text = "# comment\nsearch example.test\nnameserver 10.0.0.2\nnameserver fe80::1%eth0 ; zone\nnameserver bogus\n\
                nameserver 10.0.0.3\nnameserver 10.0.0.4\noptions ndots:2 timeout:3 attempts:4 rotate\n";
    let c = ResolverConfig::from_resolv_conf(text);
    // At most three, as the C library; a zone index dropped; what is not an address skipped.
    assert_eq!(c.nameservers, [addr("10.0.0.2:53"), addr("[fe80::1]:53"), addr("10.0.0.3:53")]);
    assert_eq!((c.timeout, c.attempts), (secs(3), 4));
    // Empty: the local server, 5s, 2 attempts.
    let c = ResolverConfig::from_resolv_conf("");
    assert_eq!((c.nameservers, c.timeout, c.attempts), (vec![addr("127.0.0.1:53")], secs(5), 2));
    // Out-of-range options are clamped.
    let c = ResolverConfig::from_resolv_conf("options timeout:0 attempts:99");
    assert_eq!((c.timeout, c.attempts), (secs(1), 5));
}

#[test]
fn a_query_asks_srv_with_edns_and_reads_the_answer() {
    let t0 = Instant::now();
    let mut q = SrvQuery::new("_api._tcp.sluice.test.", &conf(&["127.0.0.1:5300"], 2), t0).unwrap();
    let t = q.poll_transmit().unwrap();
    assert_eq!(t.to, addr("127.0.0.1:5300"));
    assert!(q.poll_transmit().is_none(), "one datagram per try");
    let sent = Message::from_vec(&t.payload).unwrap();
    assert_eq!(sent.metadata.id, q.id());
    assert!(sent.metadata.recursion_desired);
    assert_eq!(sent.queries.len(), 1);
    assert_eq!(sent.queries[0].query_type(), RecordType::SRV);
    assert_eq!(sent.queries[0].name().to_ascii(), "_api._tcp.sluice.test.");
    assert_eq!(sent.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    assert_eq!(q.poll_timeout(), Some(t0 + secs(2)));
    let reply = answer(
        &t.payload,
        ResponseCode::NoError,
        &[(0, 5, 8080, "a.sluice.test."), (1, 0, 8081, "b.sluice.test.")],
        30,
    );
    q.handle_datagram(addr("127.0.0.1:5300"), &reply, t0 + secs(1));
    let got = q.result().unwrap().unwrap();
    assert_eq!(
        got,
        SrvAnswer { records: vec![rec(0, 5, 8080, "a.sluice.test"), rec(1, 0, 8081, "b.sluice.test")], ttl: secs(30) }
    );
    assert_eq!(q.poll_timeout(), None);
}

#[test]
fn a_query_ignores_what_is_not_its_answer() {
    let t0 = Instant::now();
    let mut q = SrvQuery::new("_api._tcp.sluice.test", &conf(&["127.0.0.1:5300"], 1), t0).unwrap();
    let t = q.poll_transmit().unwrap();
    let good = answer(&t.payload, ResponseCode::NoError, &[(0, 0, 80, "a.test.")], 10);
    // From another port: ignored.
    q.handle_datagram(addr("127.0.0.1:5301"), &good, t0);
    // Another id: ignored.
    let mut other = Message::from_vec(&good).unwrap();
    other.metadata.id = q.id().wrapping_add(1);
    q.handle_datagram(addr("127.0.0.1:5300"), &other.to_vec().unwrap(), t0);
    // Another question: ignored.
    let mut other = Message::from_vec(&good).unwrap();
    other.queries[0] = Query::query(Name::from_ascii("_evil._tcp.sluice.test.").unwrap(), RecordType::SRV);
    q.handle_datagram(addr("127.0.0.1:5300"), &other.to_vec().unwrap(), t0);
    // A query, not a response: ignored. Garbage: ignored.
    let mut other = Message::from_vec(&good).unwrap();
    other.metadata.message_type = MessageType::Query;
    q.handle_datagram(addr("127.0.0.1:5300"), &other.to_vec().unwrap(), t0);
    q.handle_datagram(addr("127.0.0.1:5300"), b"\x00\x01garbage", t0);
    assert!(q.result().is_none());
    q.handle_datagram(addr("127.0.0.1:5300"), &good, t0);
    assert_eq!(q.result().unwrap().unwrap().records, [rec(0, 0, 80, "a.test")]);
}

#[test]
fn a_query_tries_each_server_then_says_what_each_did() {
    let t0 = Instant::now();
    let mut q = SrvQuery::new("_api._tcp.sluice.test", &conf(&["127.0.0.1:5300", "127.0.0.2:5300"], 2), t0).unwrap();
    let first = q.poll_transmit().unwrap();
    assert_eq!(first.to, addr("127.0.0.1:5300"));
    // Not yet due: nothing happens.
    q.handle_timeout(t0 + secs(1));
    assert!(q.poll_transmit().is_none());
    // No answer in 2s: the second server.
    q.handle_timeout(t0 + secs(2));
    let second = q.poll_transmit().unwrap();
    assert_eq!(second.to, addr("127.0.0.2:5300"));
    // SERVFAIL: at once to the next try (the first server again, second round).
    let fail = answer(&second.payload, ResponseCode::ServFail, &[], 0);
    q.handle_datagram(addr("127.0.0.2:5300"), &fail, t0 + secs(3));
    assert_eq!(q.poll_transmit().unwrap().to, addr("127.0.0.1:5300"));
    // A socket error: the next.
    q.handle_failed("Connection refused (os error 111)", t0 + secs(3));
    let last = q.poll_transmit().unwrap();
    assert_eq!(last.to, addr("127.0.0.2:5300"));
    // A truncated answer is a failure too (no TCP).
    let mut cut = Message::from_vec(&answer(&last.payload, ResponseCode::NoError, &[], 0)).unwrap();
    cut.metadata.truncation = true;
    q.handle_datagram(addr("127.0.0.2:5300"), &cut.to_vec().unwrap(), t0 + secs(4));
    assert!(q.poll_transmit().is_none());
    assert_eq!(
        q.result().unwrap().unwrap_err(),
        DnsError::Failed(
            "SRV lookup of _api._tcp.sluice.test failed: 127.0.0.1:5300 did not answer; 127.0.0.2:5300: Server Failure; \
             127.0.0.1:5300: Connection refused (os error 111); 127.0.0.2:5300: truncated answer (UDP only)"
                .into()
        )
    );
    assert_eq!(q.poll_timeout(), None);
}

#[test]
fn nxdomain_and_empty_answers_are_answers_with_no_records() {
    let t0 = Instant::now();
    for code in [ResponseCode::NXDomain, ResponseCode::NoError] {
        let mut q = SrvQuery::new("_none._tcp.sluice.test", &conf(&["127.0.0.1:5300"], 2), t0).unwrap();
        let t = q.poll_transmit().unwrap();
        q.handle_datagram(t.to, &answer(&t.payload, code, &[], 0), t0);
        assert_eq!(q.result().unwrap().unwrap(), SrvAnswer { records: vec![], ttl: secs(5) });
    }
    assert!(SrvQuery::new("bad name with spaces..", &conf(&["127.0.0.1:53"], 1), t0).is_err());
}

/// The targets `n` picks give, as `target:port`.
fn picks(set: &SrvSet, n: usize) -> Vec<String> {
    (0..n).map(|_| set.pick()).map(|(t, p)| format!("{t}:{p}")).collect()
}

#[test]
fn the_lowest_priority_is_used_and_weights_share_the_calls() {
    let set =
        SrvSet::new(&[rec(10, 100, 1, "backup"), rec(0, 3, 1, "a"), rec(0, 1, 2, "b"), rec(0, 0, 3, "zero")]).unwrap();
    // Only priority 0; weight 0 beside weighted records gets nothing; 3:1, spread out.
    assert_eq!(set.targets(), [("a".to_string(), 1), ("b".to_string(), 2)]);
    assert_eq!(picks(&set, 8), ["a:1", "a:1", "b:2", "a:1", "a:1", "a:1", "b:2", "a:1"]);
    // All weights 0: equal shares.
    let set = SrvSet::new(&[rec(0, 0, 1, "a"), rec(0, 0, 1, "b")]).unwrap();
    assert_eq!(picks(&set, 4), ["a:1", "b:1", "a:1", "b:1"]);
    // Common divisors and huge weights keep the proportions.
    let set = SrvSet::new(&[rec(0, 60000, 1, "a"), rec(0, 20000, 1, "b")]).unwrap();
    let got = picks(&set, 4000);
    assert_eq!(got.iter().filter(|t| *t == "a:1").count(), 3000);
    let set = SrvSet::new(&[rec(0, 65535, 1, "a"), rec(0, 1, 1, "b")]).unwrap();
    let got = picks(&set, 1025);
    assert!(got.iter().any(|t| t == "b:1"), "a tiny weight still gets a share");
    // "." (no service here) and port 0 are not targets; a priority with none falls
    // through to the next.
    // Nor is what cannot be a host name (DNS names may carry any byte, escaped by
    // hickory: none of it reaches a Host header).
    let odd = [r"a\032b", r"evil\013\010x", "a..b", "-"];
    let mut records: Vec<SrvRecord> = odd.iter().map(|t| rec(0, 1, 80, t)).collect();
    records.extend([rec(0, 1, 80, "."), rec(0, 1, 0, "x"), rec(5, 1, 81, "c")]);
    let set = SrvSet::new(&records).unwrap();
    assert_eq!(picks(&set, 2), ["c:81", "c:81"]);
    assert!(SrvSet::new(&[rec(0, 1, 80, ".")]).is_none());
    assert!(SrvSet::new(&[]).is_none());
}

fn answered(records: &[SrvRecord], ttl: u64) -> Result<SrvAnswer, DnsError> {
    Ok(SrvAnswer { records: records.to_vec(), ttl: secs(ttl) })
}

#[test]
fn the_cache_shares_queries_and_refreshes_by_ttl() {
    let t0 = Instant::now();
    let mut c: SrvCache<u8> = SrvCache::new();
    let name = "_api._tcp.sluice.test";
    assert!(matches!(c.lookup(name, t0, || 1), SrvLookup::Queued { query: true }));
    assert!(matches!(c.lookup(name, t0, || 2), SrvLookup::Queued { query: false }));
    let (waiters, got) = c.resolved(name, answered(&[rec(0, 0, 80, "a")], 30), t0);
    assert_eq!(waiters, [1, 2]);
    assert_eq!(got.unwrap().targets(), [("a".to_string(), 80)]);
    // Fresh for its TTL.
    assert!(matches!(c.lookup(name, t0 + secs(29), || 0), SrvLookup::Ready { refresh: false, .. }));
    // Then the old set serves while one caller refreshes.
    let SrvLookup::Ready { set, refresh: true } = c.lookup(name, t0 + secs(30), || 0) else { panic!("a refresh") };
    assert_eq!(set.targets(), [("a".to_string(), 80)]);
    assert!(matches!(c.lookup(name, t0 + secs(31), || 0), SrvLookup::Ready { refresh: false, .. }));
    // A failed refresh keeps the set (and the next lookup asks again).
    let (_, got) = c.resolved(name, Err(DnsError::Failed("timed out".into())), t0 + secs(32));
    assert_eq!(got.unwrap().targets(), [("a".to_string(), 80)]);
    assert!(matches!(c.lookup(name, t0 + secs(33), || 0), SrvLookup::Ready { refresh: true, .. }));
    // A new answer replaces it; TTL 0 is kept for 1s.
    let (_, got) = c.resolved(name, answered(&[rec(0, 0, 81, "b")], 0), t0 + secs(34));
    assert_eq!(got.unwrap().targets(), [("b".to_string(), 81)]);
    assert!(matches!(c.lookup(name, t0 + secs(34), || 0), SrvLookup::Ready { refresh: false, .. }));
    assert!(matches!(c.lookup(name, t0 + secs(35), || 0), SrvLookup::Ready { refresh: true, .. }));
    // An empty answer is believed: the set is dropped, and for 5s lookups get why.
    let (_, got) = c.resolved(name, answered(&[], 5), t0 + secs(36));
    assert_eq!(got.unwrap_err(), DnsError::Failed(format!("no SRV records for {name}")));
    let SrvLookup::Empty(why) = c.lookup(name, t0 + secs(40), || 0) else { panic!("empty") };
    assert_eq!(why, format!("no SRV records for {name}"));
    assert!(matches!(c.lookup(name, t0 + secs(41), || 7), SrvLookup::Queued { query: true }));
    // A first query that fails: its waiters get why, the next lookup asks again.
    let (waiters, got) =
        c.resolved(name, Err(DnsError::Failed("SRV lookup of x failed: no answer".into())), t0 + secs(42));
    assert_eq!(waiters, [7]);
    assert_eq!(got.unwrap_err(), DnsError::Failed("SRV lookup of x failed: no answer".into()));
    assert!(matches!(c.lookup(name, t0 + secs(42), || 8), SrvLookup::Queued { query: true }));
    // Long TTLs are capped at an hour.
    let (_, _) = c.resolved(name, answered(&[rec(0, 0, 80, "a")], 86_400), t0 + secs(50));
    assert!(matches!(c.lookup(name, t0 + secs(50 + 3599), || 0), SrvLookup::Ready { refresh: false, .. }));
    assert!(matches!(c.lookup(name, t0 + secs(50 + 3600), || 0), SrvLookup::Ready { refresh: true, .. }));
}

fn load(extra: &str, hosts: &str) -> Result<sluice_core::Gateway, Vec<String>> {
    let text = format!(
        r#"{{"version": 3, "extra_config": {{{extra}}}, "endpoints": [{{"endpoint": "/a", "backend": [
            {{"host": {hosts}, "sd": "dns", "url_pattern": "/x"}}]}}]}}"#
    );
    let env = sluice_core::tls::Environment {
        read_file: Box::new(|path| match path {
            "/etc/resolv.conf" => Ok(b"nameserver 192.0.2.53\noptions timeout:1\n".to_vec()),
            other => Err(format!("cannot read {other:?}")),
        }),
        ..Default::default()
    };
    match sluice_core::Gateway::load_with(&text, &env) {
        Ok(l) => Ok(l.gateway),
        Err(sluice_core::config::ConfigError::Invalid(d)) => {
            Err(d.iter().map(|d| format!("{}: {}", d.path, d.message)).collect())
        }
        Err(e) => Err(vec![e.to_string()]),
    }
}

#[test]
fn sd_dns_configuration_and_its_errors() {
    // resolv.conf by default (read only because a backend uses "sd": "dns").
    let gw = load("", r#"["_api._tcp.sluice.test", "https://_api._tls.sluice.test"]"#).unwrap();
    assert_eq!(gw.resolver, ResolverConfig { nameservers: vec![addr("192.0.2.53:53")], timeout: secs(1), attempts: 2 });
    let hosts = &gw.endpoints[0].backends[0].hosts;
    assert!(hosts.iter().all(|h| h.srv));
    assert_eq!(
        hosts[1].tls.as_ref().map(|t| format!("{:?}", t.server_name)),
        Some("DnsName(\"_api._tls.sluice.test\")".into())
    );
    // "sluice/dns" replaces the servers, and its timeout and attempts win.
    let gw = load(
        r#""sluice/dns": {"nameservers": ["127.0.0.1:5353", "::1"], "timeout": "300ms", "attempts": 1}"#,
        r#"["_a._tcp.x"]"#,
    )
    .unwrap();
    assert_eq!(
        gw.resolver,
        ResolverConfig {
            nameservers: vec![addr("127.0.0.1:5353"), addr("[::1]:53")],
            timeout: Duration::from_millis(300),
            attempts: 1
        }
    );
    // Errors, with JSON paths.
    assert_eq!(
        load(r#""sluice/dns": {"nameservers": ["localhost", "127.0.0.1:0"], "timeout": "0s", "attempts": 9, "bogus": 1}"#, r#"["_a._tcp.x"]"#)
            .unwrap_err(),
        [
            r#"extra_config["sluice/dns"].nameservers[0]: "localhost" is not a nameserver address ("IP" or "IP:port", "[IPv6]:port")"#,
            r#"extra_config["sluice/dns"].nameservers[1]: "127.0.0.1:0" is not a nameserver address ("IP" or "IP:port", "[IPv6]:port")"#,
            r#"extra_config["sluice/dns"].timeout: must be greater than 0"#,
            r#"extra_config["sluice/dns"].attempts: expected a whole number from 1 to 5, found 9"#,
        ]
    );
    assert_eq!(
        load("", r#"["_a._tcp.x:8080", "http://127.0.0.1"]"#).unwrap_err(),
        [
            r#"endpoints[0].backend[0].host[0]: "_a._tcp.x:8080": with "sd": "dns" the SRV records give the port; list the name alone"#,
            r#"endpoints[0].backend[0].host[1]: "http://127.0.0.1": with "sd": "dns" a host is a name to ask SRV records of, not an address"#,
        ]
    );
}

#[test]
fn a_try_goes_from_a_fresh_port_of_the_servers_family() {
    let t0 = Instant::now();
    let mut q = SrvQuery::new("_a._tcp.x", &conf(&["[::1]:5300", "127.0.0.1:5300"], 1), t0).unwrap();
    assert_eq!(q.poll_transmit().unwrap().local(), addr("[::]:0"));
    q.handle_timeout(t0 + secs(2));
    assert_eq!(q.poll_transmit().unwrap().local(), addr("0.0.0.0:0"));
    // What a lookup gives now: the set, why there is none, or nothing (it waits).
    let mut c: SrvCache<()> = SrvCache::new();
    assert!(c.lookup("_a._tcp.x", t0, || ()).answer().is_none());
    let _ = c.resolved("_a._tcp.x", answered(&[rec(0, 0, 80, "a")], 30), t0);
    assert_eq!(c.lookup("_a._tcp.x", t0, || ()).answer().unwrap().unwrap().targets(), [("a".to_string(), 80)]);
    let _ = c.resolved("_a._tcp.x", answered(&[], 30), t0 + secs(31));
    assert_eq!(
        c.lookup("_a._tcp.x", t0 + secs(32), || ()).answer().unwrap().unwrap_err(),
        DnsError::Failed("no SRV records for _a._tcp.x".into())
    );
}
