//! Counters for the admin pages: requests by gateway endpoint and by forward proxy
//! destination (statuses and a latency histogram), tunnels, the DNS cache.
//!
//! One [`Stats`] per shard, owned by it and changed only by it (`observe` every
//! [`Log`] the shard's connections put out: no lock, no atomic on the request path).
//! A scrape asks each shard for a copy and adds them up ([`Stats::merge`]).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::event::Log;
use crate::plan::Gateway;
use crate::request::Scope;
use crate::resolve::dns::DnsStats;

/// Upper bounds of the latency histogram's buckets, in milliseconds (one more bucket
/// takes the rest).
pub const LATENCY_BOUNDS_MS: [u64; 13] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// Destinations counted one by one, per shard; beyond, they are counted together
/// under [`OTHER_DESTINATIONS`] (a client names destinations: their number must not
/// grow the counters without bound).
pub const MAX_DESTINATIONS: usize = 1024;

/// Where destinations beyond [`MAX_DESTINATIONS`] are counted.
pub const OTHER_DESTINATIONS: &str = "(other)";

fn add(list: &mut Vec<(u16, u64)>, code: u16, n: u64) {
    match list.iter_mut().find(|(c, _)| *c == code) {
        Some((_, m)) => *m += n,
        None => list.push((code, n)),
    }
}

/// Requests of one endpoint or destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// By status code, in the order first seen.
    pub statuses: Vec<(u16, u64)>,
    /// Requests answered within each [`LATENCY_BOUNDS_MS`] bound (not cumulative:
    /// bucket `i` counts those above bound `i - 1`), and the rest last.
    pub buckets: [u64; LATENCY_BOUNDS_MS.len() + 1],
    pub sum_micros: u64,
    pub count: u64,
}

impl Counts {
    fn record(&mut self, status: u16, elapsed: Duration) {
        add(&mut self.statuses, status, 1);
        // u64 arithmetic (`as_micros` is u128, whose division is a library call).
        let micros = elapsed.as_secs().saturating_mul(1_000_000) + u64::from(elapsed.subsec_micros());
        let ms = micros.div_ceil(1000);
        let bucket = LATENCY_BOUNDS_MS.iter().position(|&b| ms <= b).unwrap_or(LATENCY_BOUNDS_MS.len());
        self.buckets[bucket] += 1;
        self.sum_micros += micros;
        self.count += 1;
    }

    fn merge(&mut self, other: &Counts) {
        for &(status, n) in &other.statuses {
            add(&mut self.statuses, status, n);
        }
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.sum_micros += other.sum_micros;
        self.count += other.count;
    }

    /// Statuses in numeric order.
    pub fn sorted_statuses(&self) -> Vec<(u16, u64)> {
        let mut s = self.statuses.clone();
        s.sort_unstable();
        s
    }
}

/// One shard's counters (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// By endpoint index (configuration order); grown as endpoints are first used.
    pub endpoints: Vec<Counts>,
    /// Requests no endpoint served (404s, built-in pages, refused heads).
    pub unrouted: Counts,
    /// Backend calls by endpoint index and backend index: by status, `0` for a call
    /// that failed without one.
    pub calls: BTreeMap<(usize, usize), Vec<(u16, u64)>>,
    /// Forward proxy requests by destination (`host:port`).
    pub destinations: BTreeMap<String, Counts>,
    /// CONNECT tunnels opened and closed.
    pub tunnels_opened: u64,
    pub tunnels_closed: u64,
    /// Tunnel bytes from clients to destinations, and back.
    pub tunnel_bytes_up: u64,
    pub tunnel_bytes_down: u64,
    /// Of those, both ways, the bytes spliced (never copied into the gateway).
    pub tunnel_bytes_spliced: u64,
    /// The shard's DNS cache, filled in when a copy is taken for a scrape.
    pub dns: DnsStats,
}

impl Stats {
    /// Counts what a log entry says happened.
    pub fn observe(&mut self, log: &Log<'_>) {
        match log {
            Log::Access(line) => {
                let (status, elapsed) = (line.status().as_u16(), line.elapsed());
                match line.scope() {
                    Scope::Admin => {}
                    Scope::Other => self.unrouted.record(status, elapsed),
                    Scope::Endpoint(i) => {
                        if self.endpoints.len() <= *i {
                            self.endpoints.resize_with(i + 1, Counts::default);
                        }
                        self.endpoints[*i].record(status, elapsed);
                    }
                    Scope::Forward(dest) => self.destination(dest).record(status, elapsed),
                    Scope::Tunnel(dest) => {
                        self.destination(dest).record(status, elapsed);
                        if status == 200 {
                            self.tunnels_closed += 1;
                            self.tunnel_bytes_up += line.bytes_up();
                            self.tunnel_bytes_down += line.bytes();
                            self.tunnel_bytes_spliced += line.bytes_spliced();
                        }
                    }
                }
            }
            Log::Tunnel { .. } => self.tunnels_opened += 1,
            Log::Call { endpoint, backend, status } => {
                let code = status.map_or(0, |s| s.as_u16());
                let list = self.calls.entry((*endpoint, *backend)).or_default();
                add(list, code, 1);
            }
            _ => {}
        }
    }

    fn destination(&mut self, dest: &str) -> &mut Counts {
        let full = self.destinations.len() >= MAX_DESTINATIONS && !self.destinations.contains_key(dest);
        let key = if full { OTHER_DESTINATIONS } else { dest };
        // No key allocated for a destination already counted.
        if !self.destinations.contains_key(key) {
            self.destinations.insert(key.to_string(), Counts::default());
        }
        self.destinations.get_mut(key).unwrap_or(&mut self.unrouted)
    }

    /// Adds another shard's counters to these.
    pub fn merge(&mut self, other: &Stats) {
        if self.endpoints.len() < other.endpoints.len() {
            self.endpoints.resize_with(other.endpoints.len(), Counts::default);
        }
        for (a, b) in self.endpoints.iter_mut().zip(other.endpoints.iter()) {
            a.merge(b);
        }
        self.unrouted.merge(&other.unrouted);
        for (key, list) in &other.calls {
            let mine = self.calls.entry(*key).or_default();
            for &(code, n) in list {
                add(mine, code, n);
            }
        }
        for (dest, counts) in &other.destinations {
            self.destinations.entry(dest.clone()).or_default().merge(counts);
        }
        self.tunnels_opened += other.tunnels_opened;
        self.tunnels_closed += other.tunnels_closed;
        self.tunnel_bytes_up += other.tunnel_bytes_up;
        self.tunnel_bytes_down += other.tunnel_bytes_down;
        self.tunnel_bytes_spliced += other.tunnel_bytes_spliced;
        self.dns.add(&other.dns);
    }

    /// Re-keys these counters from plan `old` to plan `new` after a reload: an
    /// endpoint's counts follow it to its index in `new` (the same method and path),
    /// and its backend calls too where `new` gives it as many backends or more; the
    /// counts of endpoints `new` has no more go. Forward proxy, tunnel and DNS counts
    /// are the server's, not a plan's, and stay as they are.
    pub fn carry_over(&mut self, old: &Gateway, new: &Gateway) {
        let moves = Moves::new(old, new);
        let mut endpoints = Vec::new();
        for (i, counts) in std::mem::take(&mut self.endpoints).into_iter().enumerate() {
            if let Some(j) = moves.to(i) {
                if endpoints.len() <= j {
                    endpoints.resize_with(j + 1, Counts::default);
                }
                endpoints[j] = counts;
            }
        }
        self.endpoints = endpoints;
        let calls = std::mem::take(&mut self.calls);
        for ((e, b), list) in calls {
            if let Some(j) = moves.to(e).filter(|&j| new.endpoints.get(j).is_some_and(|ep| b < ep.backends.len())) {
                self.calls.insert((j, b), list);
            }
        }
    }

    /// [`Stats::observe`] for a connection still on plan `old` after a reload to
    /// `new`: what it says of an endpoint is counted under that endpoint's index in
    /// `new`, and not at all for an endpoint `new` has no more.
    pub fn observe_moved(&mut self, log: &Log<'_>, old: &Gateway, new: &Gateway) {
        match log {
            Log::Access(line) => match line.scope() {
                Scope::Endpoint(i) => {
                    if let Some(j) = Moves::new(old, new).to(*i) {
                        if self.endpoints.len() <= j {
                            self.endpoints.resize_with(j + 1, Counts::default);
                        }
                        self.endpoints[j].record(line.status().as_u16(), line.elapsed());
                    }
                }
                _ => self.observe(log),
            },
            Log::Call { endpoint, backend, status } => {
                let moved = Moves::new(old, new).to(*endpoint);
                // A backend the endpoint no longer has is not counted (as carry_over).
                if let Some(j) = moved.filter(|&j| new.endpoints.get(j).is_some_and(|ep| *backend < ep.backends.len()))
                {
                    let list = self.calls.entry((j, *backend)).or_default();
                    add(list, status.map_or(0, |s| s.as_u16()), 1);
                }
            }
            _ => self.observe(log),
        }
    }

    /// Tunnels open now.
    pub fn tunnels_open(&self) -> u64 {
        self.tunnels_opened.saturating_sub(self.tunnels_closed)
    }
}

/// Where each endpoint of one plan is in another: the endpoint of the same method and
/// path.
struct Moves<'a> {
    old: &'a Gateway,
    new: BTreeMap<(&'a str, &'a str), usize>,
}

impl<'a> Moves<'a> {
    fn new(old: &'a Gateway, new: &'a Gateway) -> Moves<'a> {
        let new = new.endpoints.iter().map(|e| ((e.method.as_str(), e.path.as_str()), e.index)).collect();
        Moves { old, new }
    }

    fn to(&self, i: usize) -> Option<usize> {
        let e = self.old.endpoints.get(i)?;
        self.new.get(&(e.method.as_str(), e.path.as_str())).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(endpoints: &[(&str, usize)]) -> Gateway {
        let list: Vec<String> = endpoints
            .iter()
            .map(|(path, backends)| {
                let b = vec![r#"{"host": ["http://127.0.0.1:1"], "url_pattern": "/"}"#; *backends].join(",");
                format!(r#"{{"endpoint": "{path}", "backend": [{b}]}}"#)
            })
            .collect();
        match Gateway::load(&format!(r#"{{"version": 3, "endpoints": [{}]}}"#, list.join(","))) {
            Ok(loaded) => loaded.gateway,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn counted(n: u64) -> Counts {
        Counts { statuses: vec![(200, n)], count: n, ..Counts::default() }
    }

    #[test]
    fn counters_follow_their_endpoint_across_a_reload() {
        let old = plan(&[("/a", 1), ("/b", 2), ("/gone", 1)]);
        let new = plan(&[("/new", 1), ("/b", 1), ("/a", 1)]);
        let mut stats = Stats { endpoints: vec![counted(1), counted(2), counted(3)], ..Stats::default() };
        stats.calls.insert((0, 0), vec![(200, 1)]);
        stats.calls.insert((1, 0), vec![(200, 2)]);
        // /b has one backend now: its second backend's calls go.
        stats.calls.insert((1, 1), vec![(502, 2)]);
        stats.calls.insert((2, 0), vec![(200, 3)]);
        stats.tunnels_opened = 4;
        stats.carry_over(&old, &new);
        assert_eq!(stats.endpoints, vec![Counts::default(), counted(2), counted(1)]);
        assert_eq!(
            stats.calls.clone().into_iter().collect::<Vec<_>>(),
            vec![((1, 0), vec![(200, 2)]), ((2, 0), vec![(200, 1)])]
        );
        assert_eq!(stats.tunnels_opened, 4);
        // A connection still on the old plan: /b's second backend is no more.
        let call = |endpoint, backend| Log::Call { endpoint, backend, status: None };
        stats.observe_moved(&call(1, 1), &old, &new);
        stats.observe_moved(&call(2, 0), &old, &new);
        stats.observe_moved(&call(0, 0), &old, &new);
        assert_eq!(
            stats.calls.into_iter().collect::<Vec<_>>(),
            vec![((1, 0), vec![(200, 2)]), ((2, 0), vec![(200, 1), (0, 1)])]
        );
    }
}
