//! What every instance of a plugin shares across threads: its metrics, its shared
//! data and its shared queues, process-wide (each shard or worker has its own
//! instance; these are the same for all of them).
//!
//! Scoping follows Envoy, where shared data and queues belong to a VM id: Sluice's VM
//! id of a plugin is its name (`plugin_vm_id`), so two bindings of one plugin share
//! them, and different plugins do not see each other's (a queue of another plugin is
//! reached by naming its VM id in `resolve_shared_queue`, as in Envoy). Metrics are
//! named per plugin on the admin pages: `plugin.NAME.METRIC`.
//!
//! Locks here are held for a map lookup or a copy, never across a plugin's callback.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, RwLock};

use sluice_core::gateway::plugin::{Metric, MetricValue};

/// proxy-wasm metric types.
const COUNTER: i32 = 0;
const GAUGE: i32 = 1;
const HISTOGRAM: i32 = 2;

/// The most items one shared queue holds, and their bytes: an enqueue past either is
/// refused (`ResourceExhausted`), so a queue nobody drains cannot take the process's
/// memory.
pub const QUEUE_LIMIT: usize = 10_000;
pub const QUEUE_BYTES: usize = 64 << 20;
/// The most queues one VM id registers, and metrics one plugin defines.
pub const MAX_QUEUES: usize = 1024;
pub const MAX_METRICS: usize = 1024;
/// The most bytes of shared data one plugin (VM id) keeps, keys and values together,
/// each entry counted [`ENTRY_COST`] more for what keeping it costs.
pub const SHARED_DATA_LIMIT: usize = 64 << 20;
pub const ENTRY_COST: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a shared call failed, as a proxy-wasm status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NotFound,
    BadArgument,
    Empty,
    CasMismatch,
    ResourceExhausted,
}

impl Refused {
    pub fn status(self) -> i32 {
        match self {
            Refused::NotFound => 1,
            Refused::BadArgument => 2,
            Refused::Empty => 7,
            Refused::CasMismatch => 8,
            Refused::ResourceExhausted => 9,
        }
    }
}

struct Cell {
    plugin: String,
    name: String,
    kind: i32,
    value: AtomicU64,
    /// Histograms: the sum of the recorded values (`value` is their count).
    sum: AtomicU64,
}

#[derive(Default)]
struct Metrics {
    ids: Mutex<HashMap<(String, i32, String), u32>>,
    cells: RwLock<Vec<Cell>>,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::default)
}

/// `proxy_define_metric`: the id of `plugin`'s metric `name` of `kind`, made on first
/// definition (a second definition, on any thread, gets the same id).
pub fn define_metric(plugin: &str, kind: i32, name: &str) -> Result<u32, Refused> {
    // A name goes on the admin pages as it is: no line breaks or spaces in it.
    if !matches!(kind, COUNTER | GAUGE | HISTOGRAM)
        || name.is_empty()
        || name.len() > 256
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Refused::BadArgument);
    }
    let m = metrics();
    let mut ids = lock(&m.ids);
    let defined = ids.keys().filter(|(p, _, _)| p == plugin).count();
    match ids.entry((plugin.to_string(), kind, name.to_string())) {
        Entry::Occupied(o) => Ok(*o.get()),
        Entry::Vacant(_) if defined >= MAX_METRICS => Err(Refused::ResourceExhausted),
        Entry::Vacant(v) => {
            let mut cells = m.cells.write().unwrap_or_else(PoisonError::into_inner);
            let id = u32::try_from(cells.len()).map_err(|_| Refused::ResourceExhausted)?;
            cells.push(Cell {
                plugin: plugin.to_string(),
                name: name.to_string(),
                kind,
                value: AtomicU64::new(0),
                sum: AtomicU64::new(0),
            });
            v.insert(id);
            Ok(id)
        }
    }
}

/// Runs `f` on metric `id` when `plugin` defined it.
fn with_cell<R>(plugin: &str, id: u32, f: impl FnOnce(&Cell) -> Result<R, Refused>) -> Result<R, Refused> {
    let cells = metrics().cells.read().unwrap_or_else(PoisonError::into_inner);
    match cells.get(id as usize) {
        Some(cell) if cell.plugin == plugin => f(cell),
        _ => Err(Refused::NotFound),
    }
}

/// `proxy_increment_metric`, as Envoy: a counter goes up by a positive offset (else
/// `BadArgument`), a gauge up or down (not below 0), a histogram is `BadArgument`.
pub fn increment_metric(plugin: &str, id: u32, offset: i64) -> Result<(), Refused> {
    with_cell(plugin, id, |c| match c.kind {
        COUNTER if offset > 0 => {
            c.value.fetch_add(offset as u64, Ordering::Relaxed);
            Ok(())
        }
        GAUGE => {
            let by = offset.unsigned_abs();
            let _ = c.value.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(if offset >= 0 { v.saturating_add(by) } else { v.saturating_sub(by) })
            });
            Ok(())
        }
        _ => Err(Refused::BadArgument),
    })
}

/// `proxy_record_metric`, as Envoy: a counter goes up by `value`, a gauge is set to it,
/// a histogram records it.
pub fn record_metric(plugin: &str, id: u32, value: u64) -> Result<(), Refused> {
    with_cell(plugin, id, |c| {
        match c.kind {
            COUNTER => {
                c.value.fetch_add(value, Ordering::Relaxed);
            }
            GAUGE => c.value.store(value, Ordering::Relaxed),
            _ => {
                c.value.fetch_add(1, Ordering::Relaxed);
                c.sum.fetch_add(value, Ordering::Relaxed);
            }
        }
        Ok(())
    })
}

/// `proxy_get_metric`: a counter's or a gauge's value; a histogram is `BadArgument`.
pub fn get_metric(plugin: &str, id: u32) -> Result<u64, Refused> {
    with_cell(plugin, id, |c| match c.kind {
        HISTOGRAM => Err(Refused::BadArgument),
        _ => Ok(c.value.load(Ordering::Relaxed)),
    })
}

/// The metrics `plugin` defined, for the admin pages.
pub fn metrics_of(plugin: &str) -> Vec<Metric> {
    let cells = metrics().cells.read().unwrap_or_else(PoisonError::into_inner);
    cells
        .iter()
        .filter(|c| c.plugin == plugin)
        .map(|c| {
            let v = c.value.load(Ordering::Relaxed);
            Metric {
                plugin: c.plugin.clone(),
                name: c.name.clone(),
                value: match c.kind {
                    COUNTER => MetricValue::Counter(v),
                    GAUGE => MetricValue::Gauge(v),
                    _ => MetricValue::Histogram { count: v, sum: c.sum.load(Ordering::Relaxed) },
                },
            }
        })
        .collect()
}

#[derive(Default)]
struct Data {
    /// (VM id, key) → (value, cas).
    entries: HashMap<(String, String), (Vec<u8>, u32)>,
    /// Bytes held per VM id.
    held: HashMap<String, usize>,
    next_cas: u32,
}

fn data() -> &'static Mutex<Data> {
    static D: OnceLock<Mutex<Data>> = OnceLock::new();
    D.get_or_init(Mutex::default)
}

/// `proxy_get_shared_data`: the value and its compare-and-swap stamp.
pub fn get_shared_data(vm: &str, key: &str) -> Result<(Vec<u8>, u32), Refused> {
    let d = lock(data());
    d.entries.get(&(vm.to_string(), key.to_string())).cloned().ok_or(Refused::NotFound)
}

/// `proxy_set_shared_data`: stores `value` under `key` unless `cas` is not 0 and is no
/// longer the key's stamp (`CasMismatch`: someone wrote since it was read). A new
/// stamp each write, never 0.
pub fn set_shared_data(vm: &str, key: &str, value: Vec<u8>, cas: u32) -> Result<(), Refused> {
    let mut d = lock(data());
    let d = &mut *d;
    let slot = (vm.to_string(), key.to_string());
    let old = d.entries.get(&slot);
    if cas != 0 && old.is_some_and(|(_, stamp)| *stamp != cas) {
        return Err(Refused::CasMismatch);
    }
    let before = old.map_or(0, |(v, _)| ENTRY_COST + key.len() + v.len());
    let held = d.held.entry(vm.to_string()).or_default();
    let after = (*held - before) + ENTRY_COST + key.len() + value.len();
    if after > SHARED_DATA_LIMIT {
        return Err(Refused::ResourceExhausted);
    }
    *held = after;
    d.next_cas = d.next_cas.wrapping_add(1).max(1);
    d.entries.insert(slot, (value, d.next_cas));
    Ok(())
}

struct Queue {
    /// The VM id that registered it (queues are counted per VM id).
    vm: String,
    items: VecDeque<Vec<u8>>,
    /// The bytes its items hold.
    bytes: usize,
    /// Who registered it: (binding id, thread slot); told when something is enqueued.
    owner: (u64, usize),
    /// Something was enqueued since the owner was last told.
    ready: bool,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, String), u32>,
    list: Vec<Queue>,
}

fn queues() -> &'static Mutex<Queues> {
    static Q: OnceLock<Mutex<Queues>> = OnceLock::new();
    Q.get_or_init(Mutex::default)
}

/// Set when some queue has news for its owner: the per-call check is one load.
static ANY_READY: AtomicBool = AtomicBool::new(false);

/// `proxy_register_shared_queue`: the token of `vm`'s queue `name`, made on first
/// registration; the last instance to register it is told of new items.
pub fn register_queue(vm: &str, name: &str, owner: (u64, usize)) -> Result<u32, Refused> {
    let mut q = lock(queues());
    let q = &mut *q;
    match q.by_name.get(&(vm.to_string(), name.to_string())) {
        Some(&token) => {
            if let Some(queue) = q.list.get_mut(token as usize - 1) {
                queue.owner = owner;
            }
            Ok(token)
        }
        None => {
            if q.list.iter().filter(|queue| queue.vm == vm).count() >= MAX_QUEUES {
                return Err(Refused::ResourceExhausted);
            }
            let token = u32::try_from(q.list.len() + 1).map_err(|_| Refused::ResourceExhausted)?;
            let queue = Queue { vm: vm.into(), items: VecDeque::new(), bytes: 0, owner, ready: false };
            q.list.push(queue);
            q.by_name.insert((vm.to_string(), name.to_string()), token);
            Ok(token)
        }
    }
}

/// `proxy_resolve_shared_queue`: the token of `vm`'s queue `name`.
pub fn resolve_queue(vm: &str, name: &str) -> Result<u32, Refused> {
    lock(queues()).by_name.get(&(vm.to_string(), name.to_string())).copied().ok_or(Refused::NotFound)
}

/// `proxy_enqueue_shared_queue`.
pub fn enqueue(token: u32, item: Vec<u8>) -> Result<(), Refused> {
    let mut q = lock(queues());
    let queue = token.checked_sub(1).and_then(|i| q.list.get_mut(i as usize)).ok_or(Refused::NotFound)?;
    if queue.items.len() >= QUEUE_LIMIT || queue.bytes + item.len() > QUEUE_BYTES {
        return Err(Refused::ResourceExhausted);
    }
    queue.bytes += item.len();
    queue.items.push_back(item);
    queue.ready = true;
    ANY_READY.store(true, Ordering::Release);
    Ok(())
}

/// `proxy_dequeue_shared_queue`: the oldest item, or `Empty`.
pub fn dequeue(token: u32) -> Result<Vec<u8>, Refused> {
    let mut q = lock(queues());
    let queue = token.checked_sub(1).and_then(|i| q.list.get_mut(i as usize)).ok_or(Refused::NotFound)?;
    let item = queue.items.pop_front().ok_or(Refused::Empty)?;
    queue.bytes -= item.len();
    Ok(item)
}

/// The queues `owner` registered that have news since it was last told (their flags
/// cleared): the host then calls `proxy_on_queue_ready` for each.
pub fn ready_for(owner: (u64, usize)) -> Vec<u32> {
    if !ANY_READY.load(Ordering::Acquire) {
        return Vec::new();
    }
    let mut q = lock(queues());
    let mut out = Vec::new();
    let mut left = false;
    for (i, queue) in q.list.iter_mut().enumerate() {
        if queue.ready && queue.owner == owner {
            queue.ready = false;
            out.push(i as u32 + 1);
        }
        left |= queue.ready;
    }
    if !left {
        ANY_READY.store(false, Ordering::Release);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_follow_envoys_rules() {
        let c = define_metric("m-test", COUNTER, "calls").unwrap();
        assert_eq!(define_metric("m-test", COUNTER, "calls"), Ok(c), "defined once");
        let g = define_metric("m-test", GAUGE, "open").unwrap();
        let h = define_metric("m-test", HISTOGRAM, "size").unwrap();
        assert_eq!(define_metric("m-test", 3, "x"), Err(Refused::BadArgument));
        assert_eq!(define_metric("m-test", COUNTER, "a\nplugin.x.y: 1"), Err(Refused::BadArgument));
        assert_eq!(define_metric("m-test", COUNTER, "a b"), Err(Refused::BadArgument));
        assert_eq!(increment_metric("m-test", c, 2), Ok(()));
        assert_eq!(increment_metric("m-test", c, -1), Err(Refused::BadArgument));
        assert_eq!(record_metric("m-test", c, 3), Ok(()));
        assert_eq!(get_metric("m-test", c), Ok(5));
        assert_eq!(increment_metric("m-test", g, 4), Ok(()));
        assert_eq!(increment_metric("m-test", g, -10), Ok(()));
        assert_eq!(get_metric("m-test", g), Ok(0));
        assert_eq!(record_metric("m-test", g, 7), Ok(()));
        assert_eq!(get_metric("m-test", g), Ok(7));
        assert_eq!(increment_metric("m-test", h, 1), Err(Refused::BadArgument));
        assert_eq!(record_metric("m-test", h, 10), Ok(()));
        assert_eq!(record_metric("m-test", h, 30), Ok(()));
        assert_eq!(get_metric("m-test", h), Err(Refused::BadArgument));
        // Another plugin's id is not this one's.
        assert_eq!(get_metric("other", c), Err(Refused::NotFound));
        let mut all = metrics_of("m-test");
        all.sort();
        let values: Vec<_> = all.iter().map(|m| (m.name.as_str(), m.value)).collect();
        assert_eq!(
            values,
            [
                ("calls", MetricValue::Counter(5)),
                ("open", MetricValue::Gauge(7)),
                ("size", MetricValue::Histogram { count: 2, sum: 40 })
            ]
        );
    }

    #[test]
    fn shared_data_compares_and_swaps() {
        assert_eq!(get_shared_data("d-test", "k"), Err(Refused::NotFound));
        set_shared_data("d-test", "k", b"1".to_vec(), 0).unwrap();
        let (v, cas) = get_shared_data("d-test", "k").unwrap();
        assert_eq!(v, b"1");
        assert_ne!(cas, 0);
        set_shared_data("d-test", "k", b"2".to_vec(), cas).unwrap();
        assert_eq!(set_shared_data("d-test", "k", b"3".to_vec(), cas), Err(Refused::CasMismatch));
        assert_eq!(get_shared_data("d-test", "k").unwrap().0, b"2");
        assert_eq!(get_shared_data("other-vm", "k"), Err(Refused::NotFound), "scoped by VM id");
        let big = vec![0u8; SHARED_DATA_LIMIT];
        assert_eq!(set_shared_data("d-test", "big", big, 0), Err(Refused::ResourceExhausted));
    }

    #[test]
    fn queues_keep_order_and_tell_their_owner() {
        let owner = (u64::MAX, 3);
        let t = register_queue("q-test", "jobs", owner).unwrap();
        assert_eq!(resolve_queue("q-test", "jobs"), Ok(t));
        assert_eq!(resolve_queue("q-test", "none"), Err(Refused::NotFound));
        assert_eq!(dequeue(t), Err(Refused::Empty));
        enqueue(t, b"a".to_vec()).unwrap();
        enqueue(t, b"b".to_vec()).unwrap();
        assert_eq!(ready_for(owner), vec![t]);
        assert_eq!(ready_for(owner), Vec::<u32>::new(), "told once");
        assert_eq!((dequeue(t), dequeue(t), dequeue(t)), (Ok(b"a".to_vec()), Ok(b"b".to_vec()), Err(Refused::Empty)));
        assert_eq!(enqueue(0, vec![]), Err(Refused::NotFound));
        assert_eq!(enqueue(t, vec![0; QUEUE_BYTES + 1]), Err(Refused::ResourceExhausted));
    }
}
