//! The DNS cache: every name a shard connects to (the forward proxy's destinations and
//! the gateway's backend hosts) is resolved once, kept while it is used, and refreshed
//! in the background; concurrent lookups of one name share one query. The settings
//! and counters are Envoy's `dns_cache_config` and `dns_cache.*` stats.
//!
//! Sans-IO like the rest of `core`: [`DnsCache::lookup`] says whether the caller may
//! use cached addresses, must start a query, or waits for one under way; the driver
//! runs the query (off the shard) and hands the answer to [`DnsCache::resolved`],
//! which gives back every waiter to wake. `W` is whatever the driver wakes a waiting
//! connection with.
//!
//! The queries go to the system resolver on a lookup thread (see docs/forward-proxy.md, "Name
//! resolution"): it honours /etc/hosts, resolv.conf and nsswitch as every other program
//! on the host does, but it reports no TTL, so an answer is kept for
//! [`DnsCacheConfig::dns_refresh_rate`] and then refreshed while the old addresses
//! keep serving.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Envoy's `dns_cache_config` (its defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsCacheConfig {
    /// A host not looked up for this long is dropped from the cache. Default: 300s.
    pub host_ttl: Duration,
    /// Most names held at once; a new name beyond it is answered 503
    /// `DNS cache overflow`. Default: 1024.
    pub max_hosts: usize,
    /// How long an answer is used before it is asked again (in the background: the
    /// old addresses serve until the new answer comes). Default: 60s.
    pub dns_refresh_rate: Duration,
}

impl Default for DnsCacheConfig {
    fn default() -> Self {
        DnsCacheConfig {
            host_ttl: Duration::from_secs(300),
            max_hosts: 1024,
            dns_refresh_rate: Duration::from_secs(60),
        }
    }
}

/// Why a name gave no address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The cache holds `max_hosts` names already (503 `DNS cache overflow`).
    Overflow,
    /// The query failed or found nothing (503 `DNS resolution failure`).
    Failed(String),
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::Overflow => f.write_str("DNS cache overflow"),
            DnsError::Failed(why) => f.write_str(why),
        }
    }
}

/// What [`DnsCache::lookup`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Use these addresses. `refresh`: they are older than the refresh rate and the
    /// caller must start a query for the name (answered to [`DnsCache::resolved`]);
    /// only one caller is told so.
    Ready { addrs: Vec<IpAddr>, refresh: bool },
    /// The waiter was queued. `query`: no query is under way and the caller must start
    /// one (later callers only wait).
    Queued { query: bool },
    /// A new name and no room for it.
    Overflow,
}

impl Lookup {
    /// Whether the caller must start a query for the name (a first lookup, or a
    /// refresh that is due).
    pub fn query(&self) -> bool {
        matches!(self, Lookup::Ready { refresh: true, .. } | Lookup::Queued { query: true })
    }
}

/// A backend host as configured: an IP literal (IPv6 with or without brackets) needs
/// no lookup; `Err` is the name to resolve.
pub fn ip_literal(host: &str) -> Result<IpAddr, &str> {
    let name = host.trim_start_matches('[').trim_end_matches(']');
    name.parse().map_err(|_| name)
}

/// The address a backend connection dials from a name's answer: the first, in the
/// resolver's order (RFC 6724's for `getaddrinfo`); an empty answer is a failure.
pub fn first_address(answer: Result<Vec<IpAddr>, DnsError>) -> Result<IpAddr, DnsError> {
    answer?.first().copied().ok_or_else(|| DnsError::Failed("no address".to_string()))
}

/// The `dns_cache.*` counters of one cache (Envoy's names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsStats {
    pub dns_query_attempt: u64,
    pub dns_query_success: u64,
    pub dns_query_failure: u64,
    pub host_added: u64,
    pub host_removed: u64,
    pub host_overflow: u64,
    /// A gauge: names held now.
    pub num_hosts: u64,
}

impl DnsStats {
    /// Adds another shard's counters to these.
    pub fn add(&mut self, other: &DnsStats) {
        self.dns_query_attempt += other.dns_query_attempt;
        self.dns_query_success += other.dns_query_success;
        self.dns_query_failure += other.dns_query_failure;
        self.host_added += other.host_added;
        self.host_removed += other.host_removed;
        self.host_overflow += other.host_overflow;
        self.num_hosts += other.num_hosts;
    }
}

#[derive(Debug)]
struct Host<W> {
    /// Empty until the first answer.
    addrs: Vec<IpAddr>,
    resolved_at: Instant,
    last_used: Instant,
    /// A query is under way.
    querying: bool,
    waiters: Vec<W>,
}

/// One shard's names (see the module documentation).
#[derive(Debug)]
pub struct DnsCache<W> {
    config: DnsCacheConfig,
    hosts: HashMap<String, Host<W>>,
    stats: DnsStats,
}

impl<W> DnsCache<W> {
    pub fn new(config: DnsCacheConfig) -> Self {
        DnsCache { config, hosts: HashMap::new(), stats: DnsStats::default() }
    }

    /// Looks `name` up at `now`. Where the caller must wait, `waiter()` is queued and
    /// handed back by [`DnsCache::resolved`].
    pub fn lookup(&mut self, name: &str, now: Instant, waiter: impl FnOnce() -> W) -> Lookup {
        let refresh_rate = self.config.dns_refresh_rate;
        if let Some(host) = self.hosts.get_mut(name) {
            host.last_used = now;
            if host.addrs.is_empty() {
                host.waiters.push(waiter());
                let query = !host.querying;
                host.querying = true;
                if query {
                    self.stats.dns_query_attempt += 1;
                }
                return Lookup::Queued { query };
            }
            let refresh = !host.querying && now.saturating_duration_since(host.resolved_at) >= refresh_rate;
            if refresh {
                host.querying = true;
                self.stats.dns_query_attempt += 1;
            }
            return Lookup::Ready { addrs: host.addrs.clone(), refresh };
        }
        self.sweep(now);
        if self.hosts.len() >= self.config.max_hosts {
            self.stats.host_overflow += 1;
            return Lookup::Overflow;
        }
        self.stats.dns_query_attempt += 1;
        self.stats.host_added += 1;
        self.hosts.insert(
            name.to_string(),
            Host { addrs: Vec::new(), resolved_at: now, last_used: now, querying: true, waiters: vec![waiter()] },
        );
        self.stats.num_hosts = self.hosts.len() as u64;
        Lookup::Queued { query: true }
    }

    /// The query for `name` answered. Returns the waiters to wake and what to tell
    /// them. A failed first query forgets the name (the next request asks again); a
    /// failed refresh keeps the addresses it had.
    pub fn resolved(
        &mut self,
        name: &str,
        answer: Result<Vec<IpAddr>, String>,
        now: Instant,
    ) -> (Vec<W>, Result<Vec<IpAddr>, DnsError>) {
        let answer = match answer {
            Ok(addrs) if addrs.is_empty() => Err("no address".to_string()),
            other => other,
        };
        match &answer {
            Ok(_) => self.stats.dns_query_success += 1,
            Err(_) => self.stats.dns_query_failure += 1,
        }
        let Some(host) = self.hosts.get_mut(name) else {
            return (Vec::new(), answer.map_err(DnsError::Failed));
        };
        host.querying = false;
        let waiters = std::mem::take(&mut host.waiters);
        match answer {
            Ok(addrs) => {
                host.addrs.clone_from(&addrs);
                host.resolved_at = now;
                (waiters, Ok(addrs))
            }
            Err(_) if !host.addrs.is_empty() => (waiters, Ok(host.addrs.clone())),
            Err(why) => {
                self.hosts.remove(name);
                self.stats.host_removed += 1;
                self.stats.num_hosts = self.hosts.len() as u64;
                (waiters, Err(DnsError::Failed(why)))
            }
        }
    }

    /// Drops the names nobody looked up for `host_ttl` (not those with a query under
    /// way). Called on every new name, and by the driver before reading the counters.
    pub fn sweep(&mut self, now: Instant) {
        let ttl = self.config.host_ttl;
        let before = self.hosts.len();
        self.hosts.retain(|_, h| h.querying || now.saturating_duration_since(h.last_used) < ttl);
        let removed = before - self.hosts.len();
        if removed > 0 {
            self.stats.host_removed += removed as u64;
            self.stats.num_hosts = self.hosts.len() as u64;
        }
    }

    pub fn stats(&self) -> DnsStats {
        self.stats
    }

    pub fn config(&self) -> &DnsCacheConfig {
        &self.config
    }
}
