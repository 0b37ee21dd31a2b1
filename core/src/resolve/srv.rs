//! KrakenD's `"sd": "dns"`: a backend's hosts are the SRV records of the name it lists.
//!
//! Three pieces, all Sans-IO:
//! - [`SrvQuery`] asks one name over UDP (hickory-proto builds and reads the
//!   messages): the driver sends what [`SrvQuery::poll_transmit`] gives, hands back
//!   every datagram its socket receives and wakes it at [`SrvQuery::poll_timeout`].
//!   It tries each nameserver in turn, `attempts` rounds, `timeout` each; an answer
//!   counts only from the address asked, with the query's id and question.
//! - [`SrvSet`] is one answer made into the hosts calls go to: the records of the
//!   lowest priority that name a target, in a smooth weighted round robin (each
//!   target's share of calls is its weight's share of the priority's total).
//! - [`SrvCache`] keeps each name's set until its TTL passes, then refreshes it in the
//!   background while the old set serves (KrakenD polls every 30 s and ignores TTLs;
//!   Sluice honours them, with a floor of [`MIN_TTL`] and a ceiling of [`MAX_TTL`]).
//!   Concurrent lookups of a name share one query.
//!
//! Which server is asked comes from [`ResolverConfig`]: `/etc/resolv.conf`'s
//! `nameserver` lines and `options timeout: attempts:`, or the nameservers the
//! configuration lists under `"sluice/dns"`. Names are asked as written (absolute:
//! no `search` domain is appended). A truncated answer is a failure (TCP is not
//! spoken): an SRV set that does not fit 1232 bytes is far beyond what a backend
//! list holds.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

use crate::resolve::dns::DnsError;

/// The shortest time an answer is kept (a TTL of 0 would ask once per call).
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// The longest time an answer is kept, whatever its TTL.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// How long an empty answer (no records, or NXDOMAIN) is kept before asking again.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// The UDP payload size advertised with EDNS (the DNS flag day's 1232 bytes).
pub const UDP_PAYLOAD: u16 = 1232;
/// Most entries of a weighted round robin; larger weights are scaled down to fit.
const MAX_SEQUENCE: u32 = 1024;

/// Where SRV queries go and how long each waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Asked in this order (at most three from resolv.conf, as the C library).
    pub nameservers: Vec<SocketAddr>,
    /// How long one try waits for its answer. resolv.conf's default: 5s.
    pub timeout: Duration,
    /// Rounds over the nameservers. resolv.conf's default: 2.
    pub attempts: u32,
}

impl Default for ResolverConfig {
    /// The C library's defaults for an empty resolv.conf: the local server.
    fn default() -> Self {
        ResolverConfig {
            nameservers: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53)],
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

impl ResolverConfig {
    /// Reads resolv.conf's text: `nameserver ADDRESS` (port 53; an IPv6 zone index is
    /// dropped), `options timeout:N attempts:N`. What it does not understand is skipped,
    /// as the C library does; no nameserver means the local one.
    pub fn from_resolv_conf(text: &str) -> ResolverConfig {
        let mut conf = ResolverConfig { nameservers: Vec::new(), ..ResolverConfig::default() };
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let Some(addr) = words.next() else { continue };
                    let addr = addr.split('%').next().unwrap_or(addr);
                    if let Ok(ip) = addr.parse::<IpAddr>()
                        && conf.nameservers.len() < 3
                    {
                        conf.nameservers.push(SocketAddr::new(ip, 53));
                    }
                }
                Some("options") => {
                    for option in words {
                        if let Some(n) = option.strip_prefix("timeout:").and_then(|n| n.parse::<u64>().ok()) {
                            conf.timeout = Duration::from_secs(n.clamp(1, 30));
                        } else if let Some(n) = option.strip_prefix("attempts:").and_then(|n| n.parse::<u32>().ok()) {
                            conf.attempts = n.clamp(1, 5);
                        }
                    }
                }
                _ => {}
            }
        }
        if conf.nameservers.is_empty() {
            conf.nameservers = ResolverConfig::default().nameservers;
        }
        conf
    }
}

/// One SRV record of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target host, without the root's trailing dot; `.` alone (RFC 2782: the
    /// service is not offered here) is kept as `"."`.
    pub target: String,
}

/// A name's answer: its SRV records (none for NXDOMAIN or an empty answer) and how
/// long they may be kept (the smallest TTL among them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvAnswer {
    pub records: Vec<SrvRecord>,
    pub ttl: Duration,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub payload: Vec<u8>,
}

impl Transmit {
    /// The address to bind the socket it goes from: any local address of `to`'s
    /// family, a port the system picks (a fresh one per try).
    pub fn local(&self) -> SocketAddr {
        match self.to {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        }
    }
}

/// One SRV question in flight (see the module documentation).
#[derive(Debug)]
pub struct SrvQuery {
    name: Name,
    shown: String,
    id: u16,
    payload: Vec<u8>,
    servers: Vec<SocketAddr>,
    timeout: Duration,
    /// Tries left to make, and the one waiting: its server and deadline.
    tries: u32,
    next: usize,
    waiting: Option<(SocketAddr, Instant)>,
    send: bool,
    /// What each failed try said, for the error when none answers.
    failures: Vec<String>,
    result: Option<Result<SrvAnswer, DnsError>>,
}

/// A fresh random query id: every `RandomState` has new random keys.
fn random_id() -> u16 {
    std::collections::hash_map::RandomState::new().build_hasher().finish() as u16
}

impl SrvQuery {
    /// A query for `name`'s SRV records under `config`, starting at `now`; `Err` when
    /// the name cannot be asked.
    pub fn new(name: &str, config: &ResolverConfig, now: Instant) -> Result<SrvQuery, DnsError> {
        let shown = name.trim_end_matches('.').to_string();
        let mut qname =
            Name::from_ascii(&shown).map_err(|e| DnsError::Failed(format!("{shown:?} is not a DNS name: {e}")))?;
        qname.set_fqdn(true);
        let id = random_id();
        let mut message = Message::new(id, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(qname.clone(), RecordType::SRV));
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_PAYLOAD);
        message.set_edns(edns);
        let payload = message.to_vec().map_err(|e| DnsError::Failed(format!("cannot ask {shown:?}: {e}")))?;
        let servers = config.nameservers.clone();
        let tries = if servers.is_empty() { 0 } else { config.attempts.max(1) * servers.len() as u32 };
        let mut q = SrvQuery {
            name: qname,
            shown,
            id,
            payload,
            servers,
            timeout: config.timeout,
            tries,
            next: 0,
            waiting: None,
            send: false,
            failures: Vec::new(),
            result: None,
        };
        q.try_next(now);
        Ok(q)
    }

    /// The query's id (tests answer with it).
    pub fn id(&self) -> u16 {
        self.id
    }

    fn try_next(&mut self, now: Instant) {
        if self.tries == 0 {
            self.waiting = None;
            let why = if self.failures.is_empty() { "no nameserver".to_string() } else { self.failures.join("; ") };
            self.result = Some(Err(DnsError::Failed(format!("SRV lookup of {} failed: {why}", self.shown))));
            return;
        }
        self.tries -= 1;
        let server = self.servers[self.next % self.servers.len()];
        self.next += 1;
        self.waiting = Some((server, now + self.timeout));
        self.send = true;
    }

    /// The datagram to send now, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if !std::mem::take(&mut self.send) {
            return None;
        }
        let (to, _) = self.waiting?;
        Some(Transmit { to, payload: self.payload.clone() })
    }

    /// When [`SrvQuery::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.waiting.map(|(_, at)| at)
    }

    /// The try waiting has had its time: the next server is asked.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((server, at)) = self.waiting
            && now >= at
        {
            self.failures.push(format!("{server} did not answer"));
            self.try_next(now);
        }
    }

    /// The try waiting failed at once (the socket could not send or receive: say a
    /// port unreachable): the next server is asked.
    pub fn handle_failed(&mut self, why: &str, now: Instant) {
        if let Some((server, _)) = self.waiting {
            self.failures.push(format!("{server}: {why}"));
            self.try_next(now);
        }
    }

    /// A datagram from `from`. Anything but the answer to the try waiting (another
    /// address, another id, another question, not a response) is ignored.
    pub fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        let Some((server, _)) = self.waiting else { return };
        if from != server {
            return;
        }
        let Ok(message) = Message::from_vec(datagram) else { return };
        let meta = &message.metadata;
        if meta.id != self.id || meta.message_type != MessageType::Response {
            return;
        }
        let asked = message.queries.first().is_some_and(|q| {
            q.query_type() == RecordType::SRV && q.query_class() == DNSClass::IN && *q.name() == self.name
        });
        if message.queries.len() != 1 || !asked {
            return;
        }
        let failed = match meta.response_code {
            _ if meta.truncation => Some("truncated answer (UDP only)".to_string()),
            ResponseCode::NoError => None,
            ResponseCode::NXDomain => {
                self.done(SrvAnswer { records: Vec::new(), ttl: NEGATIVE_TTL });
                return;
            }
            code => Some(code.to_str().to_string()),
        };
        if let Some(why) = failed {
            self.failures.push(format!("{server}: {why}"));
            self.try_next(now);
            return;
        }
        let mut records = Vec::new();
        let mut ttl = u32::MAX;
        for r in &message.answers {
            if let RData::SRV(srv) = &r.data {
                ttl = ttl.min(r.ttl);
                let target = srv.target.to_ascii();
                let target = match target.trim_end_matches('.') {
                    "" => ".".to_string(),
                    t => t.to_string(),
                };
                records.push(SrvRecord { priority: srv.priority, weight: srv.weight, port: srv.port, target });
            }
        }
        let ttl = if records.is_empty() { NEGATIVE_TTL } else { Duration::from_secs(u64::from(ttl)) };
        self.done(SrvAnswer { records, ttl });
    }

    fn done(&mut self, answer: SrvAnswer) {
        self.waiting = None;
        self.result = Some(Ok(answer));
    }

    /// The outcome, once there is one (taken).
    pub fn result(&mut self) -> Option<Result<SrvAnswer, DnsError>> {
        self.result.take()
    }
}

/// The hosts calls go to, from one answer (see the module documentation).
#[derive(Debug)]
pub struct SrvSet {
    /// `(target, port)` of the lowest priority's usable records.
    targets: Vec<(String, u16)>,
    /// Indexes into `targets`, in the round robin's order.
    order: Vec<u16>,
    next: AtomicU32,
}

impl SrvSet {
    /// The set from `records`, `None` when no record names a usable target (a host
    /// name, on a port other than 0).
    pub fn new(records: &[SrvRecord]) -> Option<SrvSet> {
        let usable = || records.iter().filter(|r| r.port != 0 && host_name(&r.target));
        let lowest = usable().map(|r| r.priority).min()?;
        let mut group: Vec<&SrvRecord> = usable().filter(|r| r.priority == lowest).collect();
        group.sort_by(|a, b| (&a.target, a.port).cmp(&(&b.target, b.port)));
        group.dedup_by(|a, b| a.target == b.target && a.port == b.port);
        group.truncate(usize::from(u16::MAX));
        // Weight 0 beside weighted records gets no share (RFC 2782: "a very small
        // chance"); all 0 means all equal.
        let mut weights: Vec<u32> = group.iter().map(|r| u32::from(r.weight)).collect();
        if weights.iter().all(|&w| w == 0) {
            weights.iter_mut().for_each(|w| *w = 1);
        }
        let (targets, weights): (Vec<(String, u16)>, Vec<u32>) =
            group.iter().map(|r| (r.target.clone(), r.port)).zip(weights).filter(|(_, w)| *w > 0).unzip();
        let order = smooth_order(&weights);
        Some(SrvSet { targets, order, next: AtomicU32::new(0) })
    }

    /// The next target and port.
    pub fn pick(&self) -> (&str, u16) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.order.len();
        let (host, port) = &self.targets[usize::from(self.order[i])];
        (host, *port)
    }

    /// Every target and port, in name order.
    pub fn targets(&self) -> &[(String, u16)] {
        &self.targets
    }
}

/// A target the gateway can put in a `Host` header and look up: labels of letters,
/// digits, `_` and inner `-`, between dots. `.` alone ("no service here") and anything a DNS
/// answer may carry beyond that (escaped bytes, spaces) are not targets.
fn host_name(target: &str) -> bool {
    !target.is_empty()
        && target.len() <= 253
        && target.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// nginx's smooth weighted round robin, laid out once: over `sum(weights)` picks each
/// index comes up its weight's times, spread out rather than in runs. Weights are
/// reduced by their common divisor, then scaled to fit [`MAX_SEQUENCE`].
fn smooth_order(weights: &[u32]) -> Vec<u16> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x / g)).collect();
    let total: u64 = w.iter().sum();
    if total > u64::from(MAX_SEQUENCE) {
        for x in &mut w {
            *x = (*x * u64::from(MAX_SEQUENCE) / total).max(1);
        }
    }
    let total: i64 = w.iter().map(|&x| x as i64).sum();
    let mut current = vec![0i64; w.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &x) in current.iter_mut().zip(&w) {
            *c += x as i64;
        }
        let best = (0..current.len()).max_by_key(|&i| (current[i], std::cmp::Reverse(i))).unwrap_or(0);
        current[best] -= total;
        order.push(best as u16);
    }
    order
}

/// What [`SrvCache::lookup`] found.
#[derive(Debug, Clone)]
pub enum SrvLookup {
    /// Use this set. `refresh`: its TTL passed and the caller must start a query
    /// (answered to [`SrvCache::resolved`]); only one caller is told so.
    Ready { set: Arc<SrvSet>, refresh: bool },
    /// The waiter was queued. `query`: the caller must start the query.
    Queued { query: bool },
    /// The name had an empty answer a moment ago ([`NEGATIVE_TTL`]): why.
    Empty(String),
}

impl SrvLookup {
    /// Whether the caller must start a query for the name.
    pub fn query(&self) -> bool {
        matches!(self, SrvLookup::Ready { refresh: true, .. } | SrvLookup::Queued { query: true })
    }

    /// What the caller gets now: the set, or why there is none; `None` when it waits
    /// for the query's answer.
    pub fn answer(self) -> Option<Result<Arc<SrvSet>, DnsError>> {
        match self {
            SrvLookup::Ready { set, .. } => Some(Ok(set)),
            SrvLookup::Empty(why) => Some(Err(DnsError::Failed(why))),
            SrvLookup::Queued { .. } => None,
        }
    }
}

#[derive(Debug)]
struct Entry<W> {
    set: Option<Arc<SrvSet>>,
    /// The last answer was empty: why (kept until `fresh_until`).
    empty: Option<String>,
    fresh_until: Instant,
    querying: bool,
    waiters: Vec<W>,
}

/// One shard's SRV answers (the names are the configuration's, so nothing is evicted).
#[derive(Debug)]
pub struct SrvCache<W> {
    names: HashMap<String, Entry<W>>,
}

impl<W> Default for SrvCache<W> {
    fn default() -> Self {
        SrvCache { names: HashMap::new() }
    }
}

/// The reason calls fail when `name` has no usable record.
fn empty_reason(name: &str) -> String {
    format!("no SRV records for {name}")
}

impl<W> SrvCache<W> {
    pub fn new() -> Self {
        SrvCache::default()
    }

    /// Looks `name` up at `now`; where the caller must wait, `waiter()` is queued and
    /// handed back by [`SrvCache::resolved`].
    pub fn lookup(&mut self, name: &str, now: Instant, waiter: impl FnOnce() -> W) -> SrvLookup {
        let e = self.names.entry(name.to_string()).or_insert_with(|| Entry {
            set: None,
            empty: None,
            fresh_until: now,
            querying: false,
            waiters: Vec::new(),
        });
        let stale = now >= e.fresh_until;
        if let Some(set) = &e.set {
            let refresh = stale && !e.querying;
            e.querying |= refresh;
            return SrvLookup::Ready { set: set.clone(), refresh };
        }
        if let Some(why) = e.empty.as_ref().filter(|_| !stale) {
            return SrvLookup::Empty(why.clone());
        }
        e.waiters.push(waiter());
        let query = !e.querying;
        e.querying = true;
        SrvLookup::Queued { query }
    }

    /// The query for `name` ended. Returns the waiters to wake and what to tell them.
    /// A failed query keeps the set there was (and asks again at the next lookup);
    /// with none, the waiters get the failure and the next lookup asks again. An empty
    /// answer (NXDOMAIN, no records, only `.` targets) is believed: the set is dropped.
    pub fn resolved(
        &mut self,
        name: &str,
        answer: Result<SrvAnswer, DnsError>,
        now: Instant,
    ) -> (Vec<W>, Result<Arc<SrvSet>, DnsError>) {
        let Some(e) = self.names.get_mut(name) else {
            return (Vec::new(), Err(DnsError::Failed(format!("SRV lookup of {name}: not asked"))));
        };
        e.querying = false;
        let waiters = std::mem::take(&mut e.waiters);
        let told = match answer {
            Ok(answer) => match SrvSet::new(&answer.records) {
                Some(set) => {
                    let set = Arc::new(set);
                    e.set = Some(set.clone());
                    e.empty = None;
                    e.fresh_until = now + answer.ttl.clamp(MIN_TTL, MAX_TTL);
                    Ok(set)
                }
                None => {
                    let why = empty_reason(name);
                    e.set = None;
                    e.empty = Some(why.clone());
                    e.fresh_until = now + NEGATIVE_TTL;
                    Err(DnsError::Failed(why))
                }
            },
            Err(error) => match &e.set {
                Some(set) => Ok(set.clone()),
                None => {
                    e.empty = None;
                    e.fresh_until = now;
                    Err(error)
                }
            },
        };
        (waiters, told)
    }
}
