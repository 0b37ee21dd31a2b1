//! The proxy-wasm host (ABI 0.2.1): what a plugin module imports, and the instances
//! that run it.
//!
//! One [`Plugin`] is bound per backend: the compiled module, its configuration and a
//! unique id. Its instances live in slots, one per thread (a uring shard, a tokio
//! worker), each behind a mutex: a thread runs a call's request in its own slot's
//! instance, started on first use (`on_vm_start`, `on_configure`). The call's ticket
//! names the slot, the instance and the context, so its response and its end run in
//! that same context even when they come on another thread (tokio moves a connection
//! between workers; that thread then takes the other slot's lock, held only while a
//! callback runs). A trap, a callback running past [`TIME_BUDGET`], or memory past
//! [`MEMORY_LIMIT`] fails the call and drops the instance; the next call on that
//! slot builds a new one.
//!
//! Each backend call gets an HTTP context (`proxy_on_context_create` under root context
//! 1): `on_request_headers` (+ `on_request_body` when there is a body) before it is
//! sent; `on_response_headers` (+ `on_response_body`) when it comes back, or with the
//! plugin's own local reply (as Envoy sends one through the filter); then `on_done`,
//! `on_log`, `on_delete` when the call ends, however it ends. Metrics, shared data and
//! queues are process-wide ([`crate::shared`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::shared;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use sluice_core::gateway::plugin::{BackendRequest, BackendResponse, CallOut, ClientPlugin, PluginFault, Verdict};
use wasmtime::{
    Caller, Engine, Extern, FuncType, InstancePre, Linker, Module, Store, StoreLimits, StoreLimitsBuilder, Trap,
    TypedFunc, UpdateDeadline, Val, ValType,
};

/// The most CPU time one callback (or the start-up of an instance) may use. Counted
/// on its thread's CPU clock, not the wall clock: a thread that others keep off the
/// CPU (a busy machine, a shard pinned to a core) is not cut for waiting. The epoch
/// gives the wall-clock bound first; past it, the thread's CPU time is looked at
/// every tick, and only a callback that has used the budget is interrupted.
pub const TIME_BUDGET: Duration = Duration::from_millis(100);
/// The epoch ticks every this long; a budget is a whole number of ticks.
const TICK: Duration = Duration::from_millis(10);
/// The most linear memory one instance may have.
pub const MEMORY_LIMIT: usize = 64 << 20;
/// Contexts one instance keeps open at most, a bound on what it holds: every call ends
/// its context, so only more calls in flight at once on one slot than this (more than
/// a thread's connections) would end the oldest early.
const MAX_CONTEXTS: usize = 1 << 16;
/// Calls out one callback may make.
const MAX_CALLS_OUT: usize = 16;
/// The root context every instance has.
const ROOT: i32 = 1;

/// proxy-wasm status codes (ABI 0.2.1).
const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const SERIALIZATION_FAILURE: i32 = 3;
const INVALID_MEMORY_ACCESS: i32 = 6;
const EMPTY: i32 = 7;
const INTERNAL_FAILURE: i32 = 10;
const UNIMPLEMENTED: i32 = 12;
/// WASI's ENOSYS, for the WASI calls that are not given.
const ENOSYS: i32 = 52;

/// The export that says which ABI a module speaks.
pub const ABI_EXPORT: &str = "proxy_abi_version_0_2_1";

/// The process's engine: epoch interruption on, its ticker started with it.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(512 << 10);
        // Not reached: this configuration is one the engine always accepts.
        let engine = Engine::new(&config).unwrap_or_else(|_| Engine::default());
        let ticking = engine.clone();
        let started = std::thread::Builder::new().name("sluice-plugin-epoch".into()).spawn(move || {
            loop {
                std::thread::sleep(TICK);
                ticking.increment_epoch();
            }
        });
        if let Err(e) = started {
            tracing::error!(target: "sluice::plugin", "cannot start the plugin clock: plugins will have no time budget: {e}");
        }
        engine
    })
}

/// What a store holds: the call being served and the instance's limits.
struct HostState {
    name: Arc<str>,
    config: Arc<[u8]>,
    /// Whose instance this is: (binding id, thread slot), for the queues it registers.
    owner: (u64, usize),
    limits: StoreLimits,
    /// What properties tell of the call being served.
    facts: Facts,
    /// The `request.id`s made for calls without `x-request-id`, by context (made when
    /// first read).
    made_ids: HashMap<i32, String>,
    request: Vec<(String, Vec<u8>)>,
    request_body: Vec<u8>,
    response: Vec<(String, Vec<u8>)>,
    response_body: Vec<u8>,
    /// `proxy_send_local_response` during this callback.
    local: Option<BackendResponse>,
    /// The last host call that answered the module an error during this run of the
    /// instance (for the message when the module then traps on the answer: the SDKs
    /// panic on a status they do not expect).
    failed: Option<Failed>,
    /// What the module said last at `critical` level or on stderr during this callback
    /// (a panic's text, which the log line of a trap then carries).
    last_words: String,
    /// Keeps the module's log lines out of the log (the start-up probe).
    quiet: bool,
    /// The host calls not implemented that this instance was warned about (once each).
    warned: Vec<Arc<str>>,
    /// The upstreams the binding may call out to.
    upstreams: Arc<[String]>,
    /// The binding's tick period in ms (0: none).
    tick_ms: Arc<AtomicU64>,
    /// Whether the callback running may call out (the request side of a call).
    may_call_out: bool,
    /// Calls out made during this callback.
    callouts: Vec<CallOut>,
    /// The next call out's token (unique in the instance, as the SDKs expect).
    next_token: u32,
    /// `proxy_continue_stream(request)` during this callback.
    resumed: bool,
    /// `proxy_close_stream` of the request or the response during this callback.
    reset: bool,
    /// The answer to the call out being delivered: its header map (`:status` first)
    /// and body; empty for a failed one.
    callout_answer: (Vec<(String, Vec<u8>)>, Vec<u8>),
    /// The thread's CPU time when the running callback's budget started.
    budget_from: Duration,
}

/// A host call that answered the module an error.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failed {
    /// An import the host does not give (`module.name`).
    Unimplemented(String),
    /// A host call and the status it answered.
    Status(&'static str, i32),
}

/// A call's facts for `proxy_get_property` (docs/plugins.md lists them).
#[derive(Debug, Clone, Default)]
struct Facts {
    /// The context the callback runs in.
    context: i32,
    scheme: &'static str,
    upstream: String,
    client: Option<std::net::IpAddr>,
    client_port: Option<u16>,
    local: Option<std::net::SocketAddr>,
    /// When the call was first handed to the plugin, in ns since the epoch.
    time: u64,
    /// The request body's length, and the response body's once answered.
    sizes: (usize, Option<usize>),
}

/// The most of a module's last words kept for a trap's message.
const LAST_WORDS: usize = 512;

impl HostState {
    fn new(name: Arc<str>, config: Arc<[u8]>, owner: (u64, usize)) -> HostState {
        HostState {
            name,
            config,
            owner,
            limits: StoreLimitsBuilder::new().memory_size(MEMORY_LIMIT).instances(1).trap_on_grow_failure(true).build(),
            facts: Facts::default(),
            made_ids: HashMap::new(),
            request: Vec::new(),
            request_body: Vec::new(),
            response: Vec::new(),
            response_body: Vec::new(),
            local: None,
            failed: None,
            last_words: String::new(),
            quiet: false,
            warned: Vec::new(),
            upstreams: Arc::from(Vec::new()),
            tick_ms: Arc::default(),
            may_call_out: false,
            callouts: Vec::new(),
            next_token: 1,
            resumed: false,
            reset: false,
            callout_answer: (Vec::new(), Vec::new()),
            budget_from: Duration::ZERO,
        }
    }

    /// A header map to read: request and response headers, and the trailer maps,
    /// which are empty (calls carry no trailers; Envoy answers an empty map too).
    fn read_map(&self, kind: i32) -> Result<&[(String, Vec<u8>)], i32> {
        match kind {
            0 => Ok(&self.request),
            2 => Ok(&self.response),
            6 => Ok(&self.callout_answer.0),
            1 | 3 | 7 => Ok(&[]),
            _ => Err(BAD_ARGUMENT),
        }
    }

    /// A header map to change. Trailers are `BadArgument`, as in Envoy for a stream
    /// that has none.
    fn map(&mut self, kind: i32) -> Result<&mut Vec<(String, Vec<u8>)>, i32> {
        match kind {
            0 => Ok(&mut self.request),
            2 => Ok(&mut self.response),
            _ => Err(BAD_ARGUMENT),
        }
    }

    /// Notes `call`'s answer when it is an error, for a trap's message. `NotFound` or
    /// `Empty` from a lookup (`proxy_get_*`, a queue resolved or dequeued) is an answer,
    /// not an error: the SDKs hand it on as "none".
    fn note(&mut self, call: &'static str, status: i32) {
        let lookup = call.starts_with("proxy_get_")
            || call == "proxy_resolve_shared_queue"
            || call == "proxy_dequeue_shared_queue";
        if status != OK && !(lookup && (status == NOT_FOUND || status == EMPTY)) {
            self.failed = Some(Failed::Status(call, status));
        }
    }

    /// Keeps what the module says at `critical` level or on stderr, for a trap's message.
    fn remember(&mut self, words: &str) {
        let words = words.trim().replace('\n', " ");
        let words = words.as_str();
        if words.is_empty() || self.last_words.len() >= LAST_WORDS {
            return;
        }
        if !self.last_words.is_empty() {
            self.last_words.push(' ');
        }
        let room = LAST_WORDS - self.last_words.len();
        let mut cut = words.len().min(room);
        while !words.is_char_boundary(cut) {
            cut -= 1;
        }
        self.last_words.push_str(&words[..cut]);
    }
}

/// A module loaded and linked, ready to be instantiated on any thread.
pub struct Linked {
    pre: InstancePre<HostState>,
    /// Whether it exports `proxy_on_tick`.
    exports_tick: bool,
    /// Whether it imports `proxy_get_property` (it may read the connection's ends).
    reads_properties: bool,
}

impl fmt::Debug for Linked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Linked")
    }
}

/// Checks what a module exports (the ABI, memory, the allocator) and links what it
/// imports: the host's functions, and for anything else a stub answering
/// "unimplemented". The message says what is wrong.
pub fn link(module: &Module) -> Result<Linked, String> {
    let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
    if !exports.contains(&ABI_EXPORT) {
        let spoken: Vec<&str> = exports.iter().copied().filter(|e| e.starts_with("proxy_abi_version_")).collect();
        return Err(match spoken.first() {
            Some(other) => format!(
                "speaks proxy-wasm ABI {}; Sluice speaks 0.2.1 (export {ABI_EXPORT})",
                other.trim_start_matches("proxy_abi_version_").replace('_', ".")
            ),
            None => format!("is not a proxy-wasm module: it does not export {ABI_EXPORT}"),
        });
    }
    for needed in ["memory", "proxy_on_memory_allocate", "proxy_on_context_create"] {
        if !exports.contains(&needed) {
            return Err(format!("does not export {needed}, which a proxy-wasm 0.2.1 module has"));
        }
    }
    let mut linker = Linker::new(module.engine());
    define(&mut linker).map_err(|e| format!("cannot link it: {e}"))?;
    let mut probe = Store::new(module.engine(), HostState::new("".into(), Arc::from(&[][..]), (0, 0)));
    for import in module.imports() {
        let wasmtime::ExternType::Func(ty) = import.ty() else {
            return Err(format!(
                "imports {}.{}, which is not a function: the host gives only functions",
                import.module(),
                import.name()
            ));
        };
        if linker.get(&mut probe, import.module(), import.name()).is_ok() {
            continue;
        }
        stub(&mut linker, import.module(), import.name(), ty).map_err(|e| format!("cannot link it: {e}"))?;
    }
    let pre = linker.instantiate_pre(module).map_err(|e| format!("cannot link it: {e}"))?;
    let reads_properties = module.imports().any(|i| i.name() == "proxy_get_property");
    Ok(Linked { pre, exports_tick: exports.contains(&"proxy_on_tick"), reads_properties })
}

/// An import the host does not give: it answers "unimplemented" (proxy-wasm's 12, or
/// WASI's ENOSYS) and remembers its name for the message if the module then traps. A
/// proxy-wasm one also logs a warning naming it, as Envoy logs a host call that fails:
/// once per instance, not on every call that makes it.
fn stub(linker: &mut Linker<HostState>, module: &str, name: &str, ty: FuncType) -> wasmtime::Result<()> {
    let wasi = module == "wasi_snapshot_preview1";
    let answer = if wasi { ENOSYS } else { UNIMPLEMENTED };
    let full: Arc<str> = format!("{module}.{name}").into();
    let grpc = name.starts_with("proxy_grpc_") || name == "proxy_get_status";
    let warning = format!("{name} is not implemented{}: Unimplemented", if grpc { " (gRPC calls out)" } else { "" });
    linker.func_new(module, name, ty.clone(), move |mut caller, _params, results| {
        let s = caller.data_mut();
        s.failed = Some(Failed::Unimplemented(full.to_string()));
        if !wasi && !s.quiet && !s.warned.contains(&full) {
            s.warned.push(full.clone());
            log(&s.name, 3, &warning);
        }
        for (slot, ty) in results.iter_mut().zip(ty.results()) {
            *slot = match ty {
                ValType::I32 => Val::I32(answer),
                ValType::I64 => Val::I64(i64::from(answer)),
                ValType::F32 => Val::F32(0),
                ValType::F64 => Val::F64(0),
                _ => Val::I32(0),
            };
        }
        Ok(())
    })?;
    Ok(())
}

/// A host call's answer to the module: the status it gets.
trait Answer {
    fn status(&self) -> i32;
}

impl Answer for i32 {
    fn status(&self) -> i32 {
        *self
    }
}

impl Answer for wasmtime::Result<i32> {
    fn status(&self) -> i32 {
        // An error here is a trap, not an answer.
        *self.as_ref().unwrap_or(&OK)
    }
}

/// proxy-wasm's name for a status (ABI 0.2.1), as the SDKs spell it.
fn status_name(status: i32) -> String {
    let name = match status {
        0 => "Ok",
        1 => "NotFound",
        2 => "BadArgument",
        3 => "SerializationFailure",
        4 => "ParseFailure",
        5 => "BadExpression",
        6 => "InvalidMemoryAccess",
        7 => "Empty",
        8 => "CasMismatch",
        9 => "ResultMismatch",
        10 => "InternalFailure",
        11 => "BrokenConnection",
        12 => "Unimplemented",
        n => return format!("status {n}"),
    };
    name.to_string()
}

/// Defines host call `env.$name` (`|c, arg: type, ...| body`, `c` the caller): an
/// error status it answers is noted ([`HostState::note`]) for the message if the
/// module then traps.
macro_rules! host {
    ($linker:ident, $name:expr, |$c:ident $(, $arg:tt: $ty:ty)* $(,)?| $body:expr $(,)?) => {
        $linker.func_wrap("env", $name, move |mut $c: Caller<'_, HostState> $(, $arg: $ty)*| {
            #[allow(clippy::redundant_closure_call)]
            let answer = (|| $body)();
            $c.data_mut().note($name, answer.status());
            answer
        })?
    };
}

fn memory(caller: &mut Caller<'_, HostState>) -> Option<wasmtime::Memory> {
    caller.get_export("memory").and_then(Extern::into_memory)
}

/// `len` bytes at `ptr` of the module's memory.
fn read(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let mem = memory(caller)?;
    let (start, len) = (usize::try_from(ptr).ok()?, usize::try_from(len).ok()?);
    mem.data(&caller).get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
}

fn write(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> bool {
    let Some(mem) = memory(caller) else { return false };
    let Ok(start) = usize::try_from(ptr) else { return false };
    match mem.data_mut(caller).get_mut(start..start.saturating_add(bytes.len())) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

/// Writes `bytes` where the module asked for an answer: `OK`, or
/// `INVALID_MEMORY_ACCESS` when that is outside its memory.
fn put(caller: &mut Caller<'_, HostState>, at: i32, bytes: &[u8]) -> i32 {
    if write(caller, at, bytes) { OK } else { INVALID_MEMORY_ACCESS }
}

/// A shared call's outcome as a proxy-wasm status.
fn status(outcome: Result<(), shared::Refused>) -> i32 {
    match outcome {
        Ok(()) => OK,
        Err(e) => e.status(),
    }
}

/// Hands `bytes` to the module: memory from its allocator, the address and size
/// written where it asked.
fn give(caller: &mut Caller<'_, HostState>, bytes: &[u8], ret_ptr: i32, ret_size: i32) -> wasmtime::Result<i32> {
    let Some(alloc) = caller.get_export("proxy_on_memory_allocate").and_then(Extern::into_func) else {
        return Ok(INVALID_MEMORY_ACCESS);
    };
    let alloc = alloc.typed::<i32, i32>(&caller)?;
    let len = i32::try_from(bytes.len()).map_err(|_| wasmtime::format_err!("a buffer of {} bytes", bytes.len()))?;
    let at = if bytes.is_empty() { 0 } else { alloc.call(&mut *caller, len)? };
    if (!bytes.is_empty() && (at == 0 || !write(caller, at, bytes)))
        || !write(caller, ret_ptr, &at.to_le_bytes())
        || !write(caller, ret_size, &len.to_le_bytes())
    {
        return Ok(INVALID_MEMORY_ACCESS);
    }
    Ok(OK)
}

/// proxy-wasm's map encoding: count, (name length, value length) each, then each name
/// and value followed by NUL.
fn encode_map(map: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + map.iter().map(|(n, v)| n.len() + v.len() + 10).sum::<usize>());
    out.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (n, v) in map {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in map {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

fn decode_map(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| bytes.get(at..at + 4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize);
    let count = word(0)?;
    let mut at = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut map = Vec::with_capacity(count.min(256));
    for i in 0..count {
        let (nl, vl) = (word(4 + i * 8)?, word(8 + i * 8)?);
        let name = bytes.get(at..at.checked_add(nl)?)?;
        at += nl + 1;
        let value = bytes.get(at..at.checked_add(vl)?)?;
        at += vl + 1;
        map.push((String::from_utf8(name.to_vec()).ok()?.to_ascii_lowercase(), value.to_vec()));
    }
    Some(map)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Logs a module's message (`proxy_log`, its stdout and stderr, the host's notes on
/// it) as one line: control characters, a newline among them, are shown as `\xNN`,
/// so neither the module nor a client's bytes it logs can forge lines.
fn log(name: &str, level: i32, message: &str) {
    let message = one_line(message);
    match level {
        0 => tracing::trace!(target: "sluice::plugin", "[PLUGIN: {name}] {message}"),
        1 => tracing::debug!(target: "sluice::plugin", "[PLUGIN: {name}] {message}"),
        2 => tracing::info!(target: "sluice::plugin", "[PLUGIN: {name}] {message}"),
        3 => tracing::warn!(target: "sluice::plugin", "[PLUGIN: {name}] {message}"),
        _ => tracing::error!(target: "sluice::plugin", "[PLUGIN: {name}] {message}"),
    }
}

/// The log level the module is told: the most verbose one the subscriber records.
fn log_level() -> i32 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => 0,
        LevelFilter::DEBUG => 1,
        LevelFilter::INFO => 2,
        LevelFilter::WARN => 3,
        _ => 4,
    }
}

/// The host functions of proxy-wasm 0.2.1 that Sluice gives (docs/plugins.md).
fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host!(linker, "proxy_log", |c, level: i32, ptr: i32, len: i32| {
        let Some(msg) = read(&mut c, ptr, len) else { return INVALID_MEMORY_ACCESS };
        let msg = String::from_utf8_lossy(&msg);
        let s = c.data_mut();
        if level >= 5 {
            s.remember(&msg);
        }
        if !s.quiet {
            log(&s.name, level, &msg);
        }
        OK
    });
    host!(linker, "proxy_get_header_map_size", |c, kind: i32, ret: i32| {
        let size = match c.data().read_map(kind) {
            Ok(map) => map.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>() as u32,
            Err(status) => return status,
        };
        if write(&mut c, ret, &size.to_le_bytes()) { OK } else { INVALID_MEMORY_ACCESS }
    });
    host!(linker, "proxy_get_log_level", |c, ret: i32| {
        if write(&mut c, ret, &log_level().to_le_bytes()) { OK } else { INVALID_MEMORY_ACCESS }
    });
    host!(linker, "proxy_get_current_time_nanoseconds", |c, ret: i32| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        if write(&mut c, ret, &now.to_le_bytes()) { OK } else { INVALID_MEMORY_ACCESS }
    });
    host!(linker, "proxy_get_buffer_bytes", |c, kind: i32, start: i32, max: i32, ret_ptr: i32, ret_size: i32| {
        let s = c.data();
        let buf: &[u8] = match kind {
            0 => &s.request_body,
            1 => &s.response_body,
            4 => &s.callout_answer.1,
            6 => &[],
            7 => &s.config,
            _ => return Ok(NOT_FOUND),
        };
        // Sizes are the module's `usize`: `usize::MAX` (all of it) arrives as -1.
        let (start, max) = (start as u32 as usize, max as u32 as usize);
        let piece = buf.get(start.min(buf.len())..).unwrap_or_default();
        let piece = piece[..piece.len().min(max)].to_vec();
        if piece.is_empty() && buf.is_empty() && kind != 7 {
            return Ok(NOT_FOUND);
        }
        give(&mut c, &piece, ret_ptr, ret_size)
    });
    host!(linker, "proxy_set_buffer_bytes", |c, kind: i32, start: i32, size: i32, ptr: i32, len: i32| {
        let Some(data) = read(&mut c, ptr, len) else { return INVALID_MEMORY_ACCESS };
        let s = c.data_mut();
        let buf = match kind {
            0 => &mut s.request_body,
            1 => &mut s.response_body,
            _ => return NOT_FOUND,
        };
        let start = (start as u32 as usize).min(buf.len());
        let end = start.saturating_add(size as u32 as usize).min(buf.len());
        buf.splice(start..end, data);
        OK
    });
    host!(linker, "proxy_get_header_map_pairs", |c, kind: i32, ret_ptr: i32, ret_size: i32| {
        let bytes = match c.data().read_map(kind) {
            Ok(map) => encode_map(map),
            Err(status) => return Ok(status),
        };
        give(&mut c, &bytes, ret_ptr, ret_size)
    });
    host!(linker, "proxy_set_header_map_pairs", |c, kind: i32, ptr: i32, len: i32| {
        let Some(bytes) = read(&mut c, ptr, len) else { return INVALID_MEMORY_ACCESS };
        let Some(pairs) = decode_map(&bytes) else { return SERIALIZATION_FAILURE };
        match c.data_mut().map(kind) {
            Ok(map) => *map = pairs,
            Err(status) => return status,
        }
        OK
    });
    host!(linker, "proxy_get_header_map_value", |c, kind: i32, kptr: i32, klen: i32, ret_ptr: i32, ret_size: i32| {
        let Some(key) = read(&mut c, kptr, klen) else { return Ok(INVALID_MEMORY_ACCESS) };
        let key = text(&key).to_ascii_lowercase();
        let map = match c.data().read_map(kind) {
            Ok(map) => map,
            Err(status) => return Ok(status),
        };
        let values: Vec<&[u8]> = map.iter().filter(|(n, _)| *n == key).map(|(_, v)| v.as_slice()).collect();
        if values.is_empty() {
            return Ok(NOT_FOUND);
        }
        let joined = values.join(&b","[..]);
        give(&mut c, &joined, ret_ptr, ret_size)
    });
    host!(linker, "proxy_replace_header_map_value", |c, kind: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| {
        let (Some(key), Some(value)) = (read(&mut c, kptr, klen), read(&mut c, vptr, vlen)) else {
            return INVALID_MEMORY_ACCESS;
        };
        let key = text(&key).to_ascii_lowercase();
        let map = match c.data_mut().map(kind) {
            Ok(map) => map,
            Err(status) => return status,
        };
        match map.iter().position(|(n, _)| *n == key) {
            Some(first) => {
                map[first].1 = value;
                let mut i = 0;
                map.retain(|(n, _)| {
                    i += 1;
                    i - 1 <= first || *n != key
                });
            }
            None => map.push((key, value)),
        }
        OK
    });
    host!(linker, "proxy_add_header_map_value", |c, kind: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| {
        let (Some(key), Some(value)) = (read(&mut c, kptr, klen), read(&mut c, vptr, vlen)) else {
            return INVALID_MEMORY_ACCESS;
        };
        let key = text(&key).to_ascii_lowercase();
        let map = match c.data_mut().map(kind) {
            Ok(map) => map,
            Err(status) => return status,
        };
        map.push((key, value));
        OK
    });
    host!(linker, "proxy_remove_header_map_value", |c, kind: i32, kptr: i32, klen: i32| {
        let Some(key) = read(&mut c, kptr, klen) else { return INVALID_MEMORY_ACCESS };
        let key = text(&key).to_ascii_lowercase();
        let map = match c.data_mut().map(kind) {
            Ok(map) => map,
            Err(status) => return status,
        };
        map.retain(|(n, _)| *n != key);
        OK
    });
    host!(linker, "proxy_get_property", |c, pptr: i32, plen: i32, ret_ptr: i32, ret_size: i32| {
        let Some(path) = read(&mut c, pptr, plen) else { return Ok(INVALID_MEMORY_ACCESS) };
        match property(c.data_mut(), &path) {
            Some(value) => give(&mut c, &value, ret_ptr, ret_size),
            None => Ok(NOT_FOUND),
        }
    });
    host!(linker, "proxy_send_local_response", |c,
                                                status: i32,
                                                _dptr: i32,
                                                _dlen: i32,
                                                bptr: i32,
                                                blen: i32,
                                                hptr: i32,
                                                hlen: i32,
                                                _grpc: i32| {
        let (Some(body), Some(fields)) = (read(&mut c, bptr, blen), read(&mut c, hptr, hlen)) else {
            return INVALID_MEMORY_ACCESS;
        };
        let Some(pairs) = decode_map(&fields) else { return SERIALIZATION_FAILURE };
        let Ok(status) = u16::try_from(status).map_err(drop).and_then(|s| StatusCode::from_u16(s).map_err(drop)) else {
            return BAD_ARGUMENT;
        };
        let Ok(headers) = header_map(&pairs) else { return BAD_ARGUMENT };
        c.data_mut().local = Some(BackendResponse { status, headers, body });
        OK
    });
    // Shared data, queues and metrics: process-wide (shared.rs).
    host!(linker, "proxy_get_shared_data", |c, kptr: i32, klen: i32, ret_ptr: i32, ret_size: i32, ret_cas: i32| {
        let Some(key) = read(&mut c, kptr, klen) else { return Ok(INVALID_MEMORY_ACCESS) };
        match shared::get_shared_data(&c.data().name, &text(&key)) {
            Ok((value, cas)) => {
                if !write(&mut c, ret_cas, &cas.to_le_bytes()) {
                    return Ok(INVALID_MEMORY_ACCESS);
                }
                give(&mut c, &value, ret_ptr, ret_size)
            }
            Err(e) => Ok(e.status()),
        }
    });
    host!(linker, "proxy_set_shared_data", |c, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| {
        let (Some(key), Some(value)) = (read(&mut c, kptr, klen), read(&mut c, vptr, vlen)) else {
            return INVALID_MEMORY_ACCESS;
        };
        status(shared::set_shared_data(&c.data().name, &text(&key), value, cas as u32))
    });
    host!(linker, "proxy_register_shared_queue", |c, nptr: i32, nlen: i32, ret: i32| {
        let Some(name) = read(&mut c, nptr, nlen) else { return INVALID_MEMORY_ACCESS };
        let s = c.data();
        match shared::register_queue(&s.name.clone(), &text(&name), s.owner) {
            Ok(token) => put(&mut c, ret, &token.to_le_bytes()),
            Err(e) => e.status(),
        }
    });
    host!(linker, "proxy_resolve_shared_queue", |c, vptr: i32, vlen: i32, nptr: i32, nlen: i32, ret: i32| {
        let (Some(vm), Some(name)) = (read(&mut c, vptr, vlen), read(&mut c, nptr, nlen)) else {
            return INVALID_MEMORY_ACCESS;
        };
        match shared::resolve_queue(&text(&vm), &text(&name)) {
            Ok(token) => put(&mut c, ret, &token.to_le_bytes()),
            Err(e) => e.status(),
        }
    });
    host!(linker, "proxy_enqueue_shared_queue", |c, token: i32, ptr: i32, len: i32| {
        let Some(item) = read(&mut c, ptr, len) else { return INVALID_MEMORY_ACCESS };
        status(shared::enqueue(token as u32, item))
    });
    host!(linker, "proxy_dequeue_shared_queue", |c, token: i32, ret_ptr: i32, ret_size: i32| {
        match shared::dequeue(token as u32) {
            Ok(item) => give(&mut c, &item, ret_ptr, ret_size),
            Err(e) => Ok(e.status()),
        }
    });
    host!(linker, "proxy_define_metric", |c, kind: i32, nptr: i32, nlen: i32, ret: i32| {
        let Some(name) = read(&mut c, nptr, nlen) else { return INVALID_MEMORY_ACCESS };
        match shared::define_metric(&c.data().name.clone(), kind, &text(&name)) {
            Ok(id) => put(&mut c, ret, &id.to_le_bytes()),
            Err(e) => e.status(),
        }
    });
    host!(linker, "proxy_increment_metric", |c, id: i32, offset: i64| {
        status(shared::increment_metric(&c.data().name, id as u32, offset))
    });
    host!(linker, "proxy_record_metric", |c, id: i32, value: i64| {
        status(shared::record_metric(&c.data().name, id as u32, value as u64))
    });
    host!(linker, "proxy_get_metric", |c, id: i32, ret: i32| {
        match shared::get_metric(&c.data().name.clone(), id as u32) {
            Ok(v) => put(&mut c, ret, &v.to_le_bytes()),
            Err(e) => e.status(),
        }
    });
    host!(linker, "proxy_http_call", |c,
                                      uptr: i32,
                                      ulen: i32,
                                      hptr: i32,
                                      hlen: i32,
                                      bptr: i32,
                                      blen: i32,
                                      _tptr: i32,
                                      _tlen: i32,
                                      timeout: i32,
                                      ret: i32| {
        let (Some(upstream), Some(fields), Some(body)) =
            (read(&mut c, uptr, ulen), read(&mut c, hptr, hlen), read(&mut c, bptr, blen))
        else {
            return INVALID_MEMORY_ACCESS;
        };
        let Some(pairs) = decode_map(&fields) else { return SERIALIZATION_FAILURE };
        let s = c.data_mut();
        let upstream = text(&upstream);
        let why = if !s.may_call_out {
            Some("only the request side of a call can call out (not the response side, a tick or the start)")
        } else if !s.upstreams.contains(&upstream) {
            Some("no such upstream in the binding's \"upstreams\"")
        } else {
            None
        };
        if let Some(why) = why {
            if !s.quiet {
                log(&s.name, 3, &format!("proxy_http_call to {upstream:?} refused: {why}"));
            }
            return if s.may_call_out { BAD_ARGUMENT } else { INTERNAL_FAILURE };
        }
        let get = |name: &str| pairs.iter().find(|(n, _)| n == name).map(|(_, v)| text(v));
        let (Some(method), Some(target), Some(authority)) = (get(":method"), get(":path"), get(":authority")) else {
            return BAD_ARGUMENT;
        };
        let (Ok(method), true, Ok(headers)) =
            (Method::from_bytes(method.as_bytes()), target.starts_with('/'), header_map(&pairs))
        else {
            return BAD_ARGUMENT;
        };
        if authority.parse::<http::uri::Authority>().is_err()
            || authority.contains('@')
            || target.bytes().any(|b| b <= b' ' || b == 0x7f)
        {
            return BAD_ARGUMENT;
        }
        if s.callouts.len() >= MAX_CALLS_OUT {
            return INTERNAL_FAILURE;
        }
        let token = s.next_token;
        s.next_token = s.next_token.checked_add(1).unwrap_or(1);
        let timeout = match timeout as u32 {
            0 => Duration::MAX,
            ms => Duration::from_millis(u64::from(ms)),
        };
        s.callouts.push(CallOut { token, upstream, method, target, authority, headers, body, timeout });
        put(&mut c, ret, &token.to_le_bytes())
    });
    host!(linker, "proxy_set_tick_period_milliseconds", |c, period: i32| {
        c.data().tick_ms.store(u64::from(period as u32), Ordering::Relaxed);
        OK
    });
    // Resuming a held request (0.2.1's continue_stream(request), 0.2.0's
    // continue_request); other streams go on by themselves here.
    host!(linker, "proxy_continue_stream", |c, stream: i32| {
        if stream == 0 {
            c.data_mut().resumed = true;
        }
        OK
    });
    host!(linker, "proxy_continue_request", |c| {
        c.data_mut().resumed = true;
        OK
    });
    // Resetting the call (the SDKs' reset_http_request/response): it fails, never
    // goes on as if nothing was said.
    host!(linker, "proxy_close_stream", |c, stream: i32| {
        if stream == 0 || stream == 1 {
            c.data_mut().reset = true;
        }
        OK
    });
    host!(linker, "proxy_set_effective_context", |c, _: i32| OK);
    for name in ["proxy_continue_response", "proxy_done"] {
        host!(linker, name, |c| OK);
    }
    // WASI, what a Rust or TinyGo module built for wasm32-wasip1 needs to start:
    // no files, no environment, no arguments; clocks and randomness; stdout/stderr
    // go to the log.
    let wasi = "wasi_snapshot_preview1";
    linker.func_wrap(wasi, "fd_write", |mut c: Caller<'_, HostState>, fd: i32, iovs: i32, count: i32, ret: i32| {
        if fd != 1 && fd != 2 {
            return 8; // EBADF
        }
        let mut out = Vec::new();
        for i in 0..count.max(0) {
            let Some(iov) = read(&mut c, iovs.wrapping_add(i * 8), 8) else { return 21 };
            let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
            let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
            let Some(piece) = read(&mut c, ptr, len) else { return 21 };
            out.extend_from_slice(&piece);
        }
        let line = String::from_utf8_lossy(&out);
        let s = c.data_mut();
        if fd == 2 {
            s.remember(&line);
        }
        if !s.quiet {
            log(&s.name, if fd == 2 { 3 } else { 2 }, line.trim_end());
        }
        if write(&mut c, ret, &(out.len() as u32).to_le_bytes()) { 0 } else { 21 }
    })?;
    for name in ["environ_sizes_get", "args_sizes_get"] {
        linker.func_wrap(wasi, name, |mut c: Caller<'_, HostState>, count: i32, size: i32| {
            if write(&mut c, count, &0u32.to_le_bytes()) && write(&mut c, size, &0u32.to_le_bytes()) { 0 } else { 21 }
        })?;
    }
    for name in ["environ_get", "args_get"] {
        linker.func_wrap(wasi, name, |_: Caller<'_, HostState>, _: i32, _: i32| 0)?;
    }
    linker.func_wrap(wasi, "clock_time_get", |mut c: Caller<'_, HostState>, _id: i32, _precision: i64, ret: i32| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        if write(&mut c, ret, &now.to_le_bytes()) { 0 } else { 21 }
    })?;
    linker.func_wrap(wasi, "random_get", |mut c: Caller<'_, HostState>, ptr: i32, len: i32| {
        let mut bytes = vec![0u8; len.max(0) as usize];
        fill_random(&mut bytes);
        if write(&mut c, ptr, &bytes) { 0 } else { 21 }
    })?;
    linker.func_wrap(wasi, "sched_yield", |_: Caller<'_, HostState>| 0)?;
    linker.func_wrap(wasi, "proc_exit", |_: Caller<'_, HostState>, code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(Exited(code)))
    })?;
    Ok(())
}

/// Unpredictable bytes without a dependency: std's hasher keys are random per process
/// and per `RandomState`. For a plugin's hash seeds, not for keys.
fn fill_random(out: &mut [u8]) {
    use std::hash::{BuildHasher, Hasher};
    for chunk in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(chunk.as_ptr() as usize);
        let word = h.finish().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// The properties a filter reads (docs/plugins.md lists them with their values): path
/// segments joined by NUL. Strings are bytes, numbers and times 8-byte little-endian
/// integers, maps proxy-wasm's pair encoding, as Envoy serializes them.
fn property(s: &mut HostState, path: &[u8]) -> Option<Vec<u8>> {
    let path = String::from_utf8_lossy(path).replace('\0', ".");
    let get = |name: &str| s.request.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let int = |n: i64| Some(n.to_le_bytes().to_vec());
    match path.as_str() {
        "plugin_name" | "plugin_root_id" | "plugin_vm_id" => Some(s.name.as_bytes().to_vec()),
        "node.id" => Some(node_id().as_bytes().to_vec()),
        "request.method" => get(":method"),
        "request.host" => get(":authority"),
        "request.path" => get(":path"),
        "request.url_path" => get(":path").map(|p| p.split(|&b| b == b'?').next().unwrap_or_default().to_vec()),
        "request.query" => get(":path").and_then(|p| p.iter().position(|&b| b == b'?').map(|q| p[q + 1..].to_vec())),
        "request.scheme" => Some(s.facts.scheme.as_bytes().to_vec()),
        "request.protocol" => Some(b"HTTP/1.1".to_vec()),
        "request.id" => match get("x-request-id") {
            Some(id) => Some(id),
            None => Some(s.made_ids.entry(s.facts.context).or_insert_with(uuid).as_bytes().to_vec()),
        },
        "request.time" => int(s.facts.time as i64),
        "request.useragent" => get("user-agent"),
        "request.referer" => get("referer"),
        "request.headers" => Some(encode_map(&s.request)),
        "request.size" => int(s.facts.sizes.0 as i64),
        "source.address" => s.facts.client.map(|ip| match s.facts.client_port {
            Some(port) => std::net::SocketAddr::new(ip, port).to_string().into_bytes(),
            None => ip.to_string().into_bytes(),
        }),
        "source.port" => s.facts.client_port.and_then(|p| int(i64::from(p))),
        "destination.address" => s.facts.local.map(|a| a.to_string().into_bytes()),
        "destination.port" => s.facts.local.and_then(|a| int(i64::from(a.port()))),
        "upstream.address" => Some(s.facts.upstream.as_bytes().to_vec()),
        "response.code" => s
            .response
            .iter()
            .find(|(n, _)| n == ":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
            .and_then(int),
        "response.headers" if !s.response.is_empty() => Some(encode_map(&s.response)),
        "response.size" => s.facts.sizes.1.and_then(|n| int(n as i64)),
        _ => None,
    }
}

/// `node.id`: the host's name (Envoy's is its `--service-node`), `sluice` when the
/// system does not say.
fn node_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "sluice".to_string())
    })
}

fn header_map(pairs: &[(String, Vec<u8>)]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::with_capacity(pairs.len());
    for (n, v) in pairs {
        if n.starts_with(':') {
            continue;
        }
        let name = HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("set an invalid header name {n:?}"))?;
        let value = HeaderValue::from_bytes(v).map_err(|_| format!("set an invalid value for header {n}"))?;
        map.append(name, value);
    }
    Ok(map)
}

fn pairs(headers: &HeaderMap, out: &mut Vec<(String, Vec<u8>)>) {
    out.extend(headers.iter().map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec())));
}

/// The entry points a proxy-wasm module exports, typed once per instance.
struct Exports {
    context_create: TypedFunc<(i32, i32), ()>,
    vm_start: Option<TypedFunc<(i32, i32), i32>>,
    configure: Option<TypedFunc<(i32, i32), i32>>,
    request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    done: Option<TypedFunc<i32, i32>>,
    log: Option<TypedFunc<i32, ()>>,
    delete: Option<TypedFunc<i32, ()>>,
    queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    new_connection: Option<TypedFunc<i32, i32>>,
    http_call_response: Option<TypedFunc<CallResponseArgs, ()>>,
    tick: Option<TypedFunc<i32, ()>>,
}

/// A header map as the host keeps it: lowercase names, values, in order.
type Pairs = Vec<(String, Vec<u8>)>;

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CallResponseArgs = (i32, i32, i32, i32, i32);

/// Which side of a call a callback is about.
#[derive(Debug, Clone, Copy)]
enum Side {
    Request,
    Response,
}

/// One instance of a bound plugin, kept in a thread's slot.
struct Vm {
    store: Store<HostState>,
    entry: Exports,
    /// Unique among the process's instances (its low 24 bits go in tickets): a ticket
    /// names its instance.
    generation: u64,
    /// The slot it lives in.
    slot: usize,
    next_context: i32,
    /// Open contexts, oldest first.
    open: std::collections::VecDeque<i32>,
    /// Per open context other than the one loaded in the host's state: its
    /// `request.time` and response map (for `on_log` and the properties read there).
    kept: Vec<(i32, u64, Option<usize>, Pairs)>,
    /// Per context holding its call: the calls out not answered yet, and whether the
    /// plugin let the call go on (it then goes once they are answered).
    waiting: HashMap<i32, (usize, bool)>,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Instances per binding: threads take slots in the order they first run a plugin
/// (shards, workers, the thread that binds); past this many, threads share one.
pub const SLOTS: usize = 64;
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's slot.
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS;
}

fn this_slot() -> usize {
    SLOT.with(|s| *s)
}

/// The slot a ticket's context lives in.
fn slot_of(ticket: u64) -> usize {
    ((ticket >> 56) as usize) % SLOTS
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The module called WASI's `proc_exit`: it ended itself, as a trap of its own.
#[derive(Debug)]
struct Exited(i32);

impl fmt::Display for Exited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the plugin exited with code {}", self.0)
    }
}

impl std::error::Error for Exited {}

/// Why a call into the module failed, in words for the log.
fn why(e: &wasmtime::Error, s: &HostState) -> String {
    let mut text = match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!("ran past its time budget of {} ms", TIME_BUDGET.as_millis()),
        Some(Trap::UnreachableCodeReached) if !s.last_words.is_empty() => {
            format!("trapped (unreachable: a panic or an abort in the plugin): {}", s.last_words)
        }
        Some(Trap::UnreachableCodeReached) => "trapped (unreachable: a panic or an abort in the plugin)".to_string(),
        Some(Trap::AllocationTooLarge) => format!("asked for more than {} MiB of memory", MEMORY_LIMIT >> 20),
        Some(t) => format!("trapped: {t}"),
        // The store's limit refusing a `memory.grow` (wasmtime 48: "forcing trap when
        // growing memory to N bytes"; older: "... memory growth ...").
        None if e.chain().any(|c| {
            let c = c.to_string();
            c.contains("growing memory") || c.contains("memory growth")
        }) =>
        {
            format!("asked for more than {} MiB of memory", MEMORY_LIMIT >> 20)
        }
        None => format!("failed: {}", e.root_cause()),
    };
    // The last failed host call explains a trap of the module's own (the SDKs panic on
    // a status they do not expect), not a budget or memory limit it ran into.
    let own = matches!(e.downcast_ref::<Trap>(), Some(Trap::UnreachableCodeReached)) || e.is::<Exited>();
    match s.failed.as_ref().filter(|_| own) {
        Some(Failed::Unimplemented(name)) => {
            text.push_str(&format!(" (after calling {name}, which Sluice does not implement)"));
        }
        Some(Failed::Status(call, status)) => {
            text.push_str(&format!(" (after {call} returned {})", status_name(*status)));
        }
        None => {}
    }
    text
}

impl Vm {
    /// Instantiates and starts a plugin: `_initialize`, the root context, `on_vm_start`,
    /// `on_configure` with its configuration.
    fn start(plugin: &Shared, owner: (u64, usize), quiet: bool) -> Result<Vm, String> {
        let mut state = HostState::new(plugin.name.clone(), plugin.config.clone(), owner);
        state.quiet = quiet;
        state.upstreams = plugin.upstreams.clone();
        state.tick_ms = plugin.tick_ms.clone();
        let mut store = Store::new(engine(), state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|store| {
            let used = thread_cpu_time().saturating_sub(store.data().budget_from);
            Ok(if used < TIME_BUDGET { UpdateDeadline::Continue(1) } else { UpdateDeadline::Interrupt })
        });
        start_budget(&mut store);
        let instance = match plugin.linked.pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(why(&e, store.data())),
        };
        let func = |store: &mut Store<HostState>, name: &str| instance.get_func(&mut *store, name);
        macro_rules! typed {
            ($name:expr) => {
                match func(&mut store, $name) {
                    Some(f) => {
                        Some(f.typed(&store).map_err(|e| format!("exports {} with the wrong type: {e}", $name))?)
                    }
                    None => None,
                }
            };
        }
        let init: Option<TypedFunc<(), ()>> = typed!("_initialize");
        let start: Option<TypedFunc<(), ()>> = typed!("_start");
        let entry = Exports {
            context_create: typed!("proxy_on_context_create").ok_or("does not export proxy_on_context_create")?,
            vm_start: typed!("proxy_on_vm_start"),
            configure: typed!("proxy_on_configure"),
            request_headers: typed!("proxy_on_request_headers"),
            request_body: typed!("proxy_on_request_body"),
            response_headers: typed!("proxy_on_response_headers"),
            response_body: typed!("proxy_on_response_body"),
            done: typed!("proxy_on_done"),
            log: typed!("proxy_on_log"),
            delete: typed!("proxy_on_delete"),
            queue_ready: typed!("proxy_on_queue_ready"),
            new_connection: typed!("proxy_on_new_connection"),
            http_call_response: typed!("proxy_on_http_call_response"),
            tick: typed!("proxy_on_tick"),
        };
        let run = |store: &mut Store<HostState>| -> wasmtime::Result<Result<(), String>> {
            if let Some(f) = init.as_ref().or(start.as_ref()) {
                f.call(&mut *store, ())?;
            }
            entry.context_create.call(&mut *store, (ROOT, 0))?;
            if let Some(f) = &entry.vm_start
                && f.call(&mut *store, (ROOT, 0))? == 0
            {
                return Ok(Err("refused to start (proxy_on_vm_start answered false)".into()));
            }
            let size = store.data().config.len() as i32;
            if let Some(f) = &entry.configure
                && f.call(&mut *store, (ROOT, size))? == 0
            {
                return Ok(Err("refused its configuration (proxy_on_configure answered false)".into()));
            }
            Ok(Ok(()))
        };
        match run(&mut store) {
            Ok(Ok(())) => {}
            Ok(Err(refused)) => return Err(refused),
            Err(e) => return Err(why(&e, store.data())),
        }
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        let (next_context, open, kept, waiting) = (ROOT + 1, Default::default(), Vec::new(), HashMap::new());
        Ok(Vm { store, entry, generation, slot: owner.1 % SLOTS, next_context, open, kept, waiting })
    }

    /// Whether the module's contexts are network (L4) streams, not HTTP: a context
    /// takes `proxy_on_new_connection` without trapping and then traps on
    /// `proxy_on_request_headers` (the SDKs' dispatchers trap on a callback of the other
    /// kind). Run on an instance of its own, started for this and dropped.
    fn is_network_filter(&mut self) -> bool {
        let (Some(new_connection), Some(headers)) =
            (self.entry.new_connection.clone(), self.entry.request_headers.clone())
        else {
            return self.entry.new_connection.is_some() && self.entry.response_headers.is_none();
        };
        let Ok(context) = self.open_context() else { return false };
        if new_connection.call(&mut self.store, context).is_err() {
            return false;
        }
        start_budget(&mut self.store);
        headers.call(&mut self.store, (context, 0, 1)).is_err()
    }

    fn open_context(&mut self) -> wasmtime::Result<i32> {
        let id = self.next_context;
        self.next_context = if self.next_context == i32::MAX { ROOT + 1 } else { self.next_context + 1 };
        self.entry.context_create.call(&mut self.store, (id, ROOT))?;
        self.open.push_back(id);
        if self.open.len() > MAX_CONTEXTS
            && let Some(oldest) = self.open.pop_front()
        {
            self.close_context(oldest, None)?;
        }
        Ok(id)
    }

    /// Ends a context: `on_done`, `on_log`, `on_delete`, as Envoy calls them, with
    /// the call's request (when known) and its last response map for them to read.
    fn close_context(&mut self, id: i32, call: Option<&BackendRequest>) -> wasmtime::Result<()> {
        self.open.retain(|&c| c != id);
        self.waiting.remove(&id);
        if let Some(call) = call {
            self.load(id, call, false);
        }
        if let Some(f) = &self.entry.done {
            f.call(&mut self.store, id)?;
        }
        if let Some(f) = &self.entry.log {
            f.call(&mut self.store, id)?;
        }
        if let Some(f) = &self.entry.delete {
            f.call(&mut self.store, id)?;
        }
        let s = self.store.data_mut();
        s.made_ids.remove(&id);
        if s.facts.context == id {
            s.facts.context = 0;
        }
        self.kept.retain(|k| k.0 != id);
        Ok(())
    }

    /// Loads `context`'s call into the host's state, unless it is loaded already (the
    /// usual case: a call's callbacks follow one another on an instance): the facts,
    /// the request map and (`body`) body from `call`, the response map it kept. The
    /// context loaded before keeps its time and response map aside.
    fn load(&mut self, context: i32, call: &BackendRequest, body: bool) {
        let s = self.store.data_mut();
        if s.facts.context == context {
            return;
        }
        if s.facts.context != 0 && self.open.contains(&s.facts.context) {
            let response = std::mem::take(&mut s.response);
            self.kept.push((s.facts.context, s.facts.time, s.facts.sizes.1, response));
        }
        let (time, answered, response) = match self.kept.iter().position(|k| k.0 == context) {
            Some(at) => {
                let (_, time, answered, response) = self.kept.swap_remove(at);
                (time, answered, response)
            }
            None => (now_ns(), None, Vec::new()),
        };
        let s = self.store.data_mut();
        s.facts = Facts {
            context,
            scheme: call.scheme,
            upstream: call.upstream.clone(),
            client: Some(call.client),
            client_port: call.client_port,
            local: call.local,
            time,
            sizes: (call.body.len(), answered),
        };
        request_map(call, &mut s.request);
        s.response = response;
        s.response_body.clear();
        if body {
            s.request_body.clone_from(&call.body);
        } else {
            s.request_body.clear();
        }
    }

    /// Gets the host's state ready for a callback about `call` in `context`.
    fn serve(&mut self, context: i32, call: &BackendRequest) {
        self.load(context, call, true);
        self.store.data_mut().local = None;
    }

    /// One side of a call: its headers callback (`end_of_stream` when there is no
    /// body), then its body callback with the whole body, unless the plugin already
    /// answered locally. The action the last one answered (0: go on).
    fn headers_then_body(&mut self, side: Side, context: i32, fields: i32, body: usize) -> wasmtime::Result<i32> {
        let (headers, body_fn) = match side {
            Side::Request => (&self.entry.request_headers, &self.entry.request_body),
            Side::Response => (&self.entry.response_headers, &self.entry.response_body),
        };
        let mut action = 0;
        if let Some(f) = headers {
            action = f.call(&mut self.store, (context, fields, i32::from(body == 0)))?;
        }
        if body > 0
            && self.store.data().local.is_none()
            && let Some(f) = body_fn
        {
            action = f.call(&mut self.store, (context, body as i32, 1))?;
        }
        Ok(action)
    }

    /// What the request side of a call in `context` comes to once its callbacks ran:
    /// a local reply (through the response callbacks), calls out to wait for, the call
    /// sent as the plugin left it, or a call held with nothing to resume it (a fault).
    /// `paused`: the plugin holds the call (`Action::Pause`, or waiting on calls out).
    fn conclude(
        &mut self,
        context: i32,
        call: &mut BackendRequest,
        paused: bool,
    ) -> wasmtime::Result<Result<Verdict, String>> {
        let s = self.store.data_mut();
        s.may_call_out = false;
        let calls = std::mem::take(&mut s.callouts);
        let resumed = std::mem::replace(&mut s.resumed, false);
        if std::mem::replace(&mut s.reset, false) {
            return Ok(Err("reset the call (close_stream)".into()));
        }
        if let Some(local) = s.local.take() {
            return Ok(self.answer(context, local_reply(local))?.map(Verdict::Respond));
        }
        if let Err(e) = request_from(s, call) {
            return Ok(Err(e));
        }
        let going = resumed || !paused;
        if calls.is_empty() && !self.waiting.contains_key(&context) {
            // No call out made, none out: the common case.
            return Ok(match going {
                true => Ok(Verdict::Continue),
                false => Err("holds the call (Action::Pause) with no call out that could resume it".into()),
            });
        }
        let (left, released) = self.waiting.entry(context).or_default();
        *left += calls.len();
        *released |= going;
        Ok(Ok(if !calls.is_empty() {
            // Made by a call the plugin let go, too: it goes once they are answered.
            Verdict::Wait(calls)
        } else if resumed || *released && *left == 0 {
            Verdict::Continue
        } else if *left > 0 {
            Verdict::Wait(Vec::new())
        } else {
            return Ok(Err("holds the call (Action::Pause, or no resume after its calls out) with no call out \
                           left that could resume it"
                .into()));
        }))
    }

    /// The response side of a call in `context`: the callbacks see `response` (the
    /// backend's, or the plugin's own local reply, as Envoy sends local replies
    /// through the filter's response callbacks) and the answer is what they leave, or
    /// a local reply they send.
    fn answer(&mut self, context: i32, response: BackendResponse) -> wasmtime::Result<Result<BackendResponse, String>> {
        let s = self.store.data_mut();
        s.response.clear();
        s.response.push((":status".into(), response.status.as_str().as_bytes().to_vec()));
        pairs(&response.headers, &mut s.response);
        if !response.body.is_empty() && !response.headers.contains_key(http::header::CONTENT_LENGTH) {
            s.response.push(("content-length".into(), response.body.len().to_string().into_bytes()));
        }
        s.response_body = response.body;
        s.local = None;
        s.facts.sizes.1 = Some(s.response_body.len());
        let (fields, body) = (s.response.len() as i32, s.response_body.len());
        self.headers_then_body(Side::Response, context, fields, body)?;
        let s = self.store.data_mut();
        if std::mem::replace(&mut s.reset, false) {
            return Ok(Err("reset the call (close_stream)".into()));
        }
        s.facts.sizes.1 = Some(s.local.as_ref().map_or(s.response_body.len(), |l| l.body.len()));
        Ok(match s.local.take() {
            Some(local) => Ok(local),
            None => response_from(s),
        })
    }

    /// Tells the instance of the queues it registered that have news.
    fn deliver_queues(&mut self, owner: (u64, usize)) -> wasmtime::Result<()> {
        let Some(f) = &self.entry.queue_ready else { return Ok(()) };
        for token in shared::ready_for(owner) {
            f.call(&mut self.store, (ROOT, token as i32))?;
        }
        Ok(())
    }

    fn ticket(&self, context: i32) -> u64 {
        ((self.slot as u64) << 56) | ((self.generation & 0xff_ffff) << 32) | context as u32 as u64
    }

    /// The context a ticket names, when it is this instance's and still open.
    fn context_of(&self, ticket: u64) -> Option<i32> {
        let id = (ticket & 0xffff_ffff) as i32;
        ((ticket >> 32) & 0xff_ffff == self.generation & 0xff_ffff && self.open.contains(&id)).then_some(id)
    }
}

/// A random UUID (version 4), a call's `request.id` when it has no `x-request-id`.
fn uuid() -> String {
    let mut b = [0u8; 16];
    fill_random(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn ticks() -> u64 {
    (TIME_BUDGET.as_millis() / TICK.as_millis()).max(1) as u64
}

/// Starts a callback's [`TIME_BUDGET`]: the epoch deadline, and the thread's CPU time
/// its use is counted from.
fn start_budget(store: &mut Store<HostState>) {
    store.data_mut().budget_from = thread_cpu_time();
    store.set_epoch_deadline(ticks());
}

/// The CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

/// What every thread's instances of one binding share.
#[derive(Debug)]
struct Shared {
    name: Arc<str>,
    config: Arc<[u8]>,
    linked: Arc<Linked>,
    /// The upstreams it may call out to, by name.
    upstreams: Arc<[String]>,
    /// Its tick period in ms (0: none), as its instances last set it.
    tick_ms: Arc<AtomicU64>,
    /// Whether the module exports `proxy_on_tick`.
    ticks: bool,
}

/// A proxy-wasm module bound to one backend with its configuration: the
/// [`ClientPlugin`] core calls.
///
/// Its instances live in slots, one per thread (see [`SLOTS`]), each behind a mutex
/// that only its own thread takes, except when a call's response or end comes on
/// another thread (tokio moves a connection between workers): that thread takes the
/// slot the call's request ran in, so a call's request and response run in one
/// context of one instance on every runtime.
pub struct Plugin {
    id: u64,
    shared: Shared,
    slots: Box<[Mutex<Option<Vm>>]>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin").field("id", &self.id).field("name", &self.shared.name).finish_non_exhaustive()
    }
}

static IDS: AtomicU64 = AtomicU64::new(1);

/// What a failure during a call costs, in its log line.
const CALL_FAILS: &str = "the call fails with 500";

impl Plugin {
    /// Binds `linked` under `name` with `config` (the bytes `on_configure` reads, or
    /// empty). The instance of this thread is started at once, so a module that traps
    /// or refuses its configuration is an error here, at start-up, not on the first
    /// call; so is a network (L4) filter, which has no HTTP call to filter.
    pub fn bind(name: &str, linked: Arc<Linked>, config: Vec<u8>, upstreams: Vec<String>) -> Result<Plugin, String> {
        let plugin = Plugin {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            shared: Shared {
                name: name.into(),
                config: config.into(),
                ticks: linked.exports_tick,
                linked,
                upstreams: upstreams.into(),
                tick_ms: Arc::default(),
            },
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
        };
        let mut probe = Vm::start(&plugin.shared, (plugin.id, usize::MAX), true)?;
        if probe.is_network_filter() {
            return Err("is a network (L4) filter: its contexts take connections (proxy_on_new_connection), not \
                        HTTP requests; Sluice runs HTTP filters on backend calls only"
                .into());
        }
        let slot = this_slot();
        let vm = Vm::start(&plugin.shared, (plugin.id, slot), false)?;
        *plugin.lock(slot) = Some(vm);
        Ok(plugin)
    }

    fn lock(&self, slot: usize) -> MutexGuard<'_, Option<Vm>> {
        self.slots[slot % SLOTS].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the instance in `slot` (`lost`: what a failure costs, for the log) (started when there is none, unless
    /// `start` is false: then `None`). An error from `f` drops the instance: the next
    /// call starts a new one.
    fn with_vm<R>(
        &self,
        slot: usize,
        start: bool,
        lost: &str,
        f: impl FnOnce(&mut Vm) -> wasmtime::Result<R>,
    ) -> Result<Option<R>, PluginFault> {
        let name = &self.shared.name;
        let mut guard = self.lock(slot);
        let vm = match &mut *guard {
            Some(vm) => vm,
            None if !start => return Ok(None),
            None => match Vm::start(&self.shared, (self.id, slot), false) {
                Ok(vm) => guard.insert(vm),
                Err(e) => {
                    tracing::error!(target: "sluice::plugin", "[PLUGIN: {name}] cannot start an instance: {e}; {lost}");
                    return Err(PluginFault(e));
                }
            },
        };
        start_budget(&mut vm.store);
        let s = vm.store.data_mut();
        s.failed = None;
        s.last_words.clear();
        s.reset = false;
        // What a queue callback did is not the call's (a reset there resets nothing).
        let ran = vm.deliver_queues((self.id, slot)).and_then(|()| {
            vm.store.data_mut().reset = false;
            f(vm)
        });
        match ran {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                let text = why(&e, vm.store.data());
                *guard = None;
                tracing::error!(target: "sluice::plugin", "[PLUGIN: {name}] {text}; {lost} and the instance is started again");
                Err(PluginFault(text))
            }
        }
    }
}

/// What a callback left that the host turns into the call's new shape.
fn request_from(s: &HostState, call: &mut BackendRequest) -> Result<(), String> {
    let get = |name: &str| s.request.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
    if let Some(m) = get(":method") {
        call.method = Method::from_bytes(m).map_err(|_| format!("set an invalid :method {:?}", text(m)))?;
    }
    if let Some(p) = get(":path") {
        let p = text(p);
        if !p.starts_with('/') {
            return Err(format!("set a :path that is not a path: {p:?}"));
        }
        (call.path, call.query) = match p.split_once('?') {
            Some((path, q)) => (path.to_string(), Some(q.to_string())),
            None => (p, None),
        };
    }
    if let Some(a) = get(":authority") {
        call.authority = text(a);
    }
    call.headers = header_map(&s.request)?;
    call.body.clone_from(&s.request_body);
    Ok(())
}

/// What the response callbacks left, as the call's answer.
fn response_from(s: &mut HostState) -> Result<BackendResponse, String> {
    let status = match s.response.iter().find(|(n, _)| n == ":status") {
        Some((_, v)) => std::str::from_utf8(v)
            .ok()
            .and_then(|t| t.parse::<u16>().ok())
            .and_then(|n| StatusCode::from_u16(n).ok())
            .ok_or_else(|| format!("set an invalid :status {:?}", text(v)))?,
        None => return Err("removed :status".into()),
    };
    let headers = header_map(&s.response)?;
    Ok(BackendResponse { status, headers, body: std::mem::take(&mut s.response_body) })
}

/// The request map: Envoy's pseudo-headers (`:authority`, `:path` with the query,
/// `:method`, `:scheme`), the fields, and `content-length` when there is a body.
fn request_map(call: &BackendRequest, out: &mut Vec<(String, Vec<u8>)>) {
    out.clear();
    out.push((":authority".into(), call.authority.as_bytes().to_vec()));
    out.push((":path".into(), call.target().into_bytes()));
    out.push((":method".into(), call.method.as_str().as_bytes().to_vec()));
    out.push((":scheme".into(), call.scheme.as_bytes().to_vec()));
    pairs(&call.headers, out);
    if !call.body.is_empty() && !call.headers.contains_key(http::header::CONTENT_LENGTH) {
        out.push(("content-length".into(), call.body.len().to_string().into_bytes()));
    }
}

/// A local reply as Envoy makes one: the plugin's fields, `content-type: text/plain`
/// when there is a body and the plugin named no type.
fn local_reply(mut local: BackendResponse) -> BackendResponse {
    if !local.body.is_empty() && !local.headers.contains_key(http::header::CONTENT_TYPE) {
        local.headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    local
}

impl ClientPlugin for Plugin {
    fn on_request(&self, call: &mut BackendRequest) -> Result<Verdict, PluginFault> {
        let verdict = self.with_vm(this_slot(), true, CALL_FAILS, |vm| {
            let context = vm.open_context()?;
            call.ticket = vm.ticket(context);
            vm.serve(context, call);
            let s = vm.store.data_mut();
            (s.may_call_out, s.resumed) = (true, false);
            s.callouts.clear();
            let fields = s.request.len() as i32;
            let action = vm.headers_then_body(Side::Request, context, fields, call.body.len())?;
            vm.conclude(context, call, action != 0)
        })?;
        match verdict {
            Some(v) => v.map_err(|e| self.refuse(e)),
            None => Err(PluginFault("no instance".into())),
        }
    }

    fn on_response(&self, call: &BackendRequest, response: &mut BackendResponse) -> Result<(), PluginFault> {
        // The slot the request ran in: a call's two sides meet in one context.
        let slot = if call.ticket == 0 { this_slot() } else { slot_of(call.ticket) };
        let taken = std::mem::replace(
            response,
            BackendResponse { status: response.status, headers: HeaderMap::new(), body: Vec::new() },
        );
        let result = self.with_vm(slot, true, CALL_FAILS, |vm| {
            // Its context is gone when the instance was started again since: the
            // response then runs in a context of its own, closed at once.
            let (context, fresh) = match vm.context_of(call.ticket) {
                Some(c) => (c, false),
                None => (vm.open_context()?, true),
            };
            vm.serve(context, call);
            let answer = vm.answer(context, taken)?;
            if fresh {
                vm.close_context(context, Some(call))?;
            }
            Ok(answer)
        })?;
        match result {
            Some(Ok(answer)) => {
                *response = answer;
                Ok(())
            }
            Some(Err(e)) => Err(self.refuse(e)),
            None => Err(PluginFault("no instance".into())),
        }
    }

    fn on_done(&self, call: &BackendRequest) {
        // Only the instance holding the call's context has anything to close: after a
        // trap there is none, and none is started just to close nothing.
        if call.ticket == 0 {
            return;
        }
        let _ = self.with_vm(slot_of(call.ticket), false, CALL_FAILS, |vm| match vm.context_of(call.ticket) {
            Some(c) => vm.close_context(c, Some(call)),
            None => Ok(()),
        });
    }

    fn metrics(&self) -> Vec<sluice_core::gateway::plugin::Metric> {
        shared::metrics_of(&self.shared.name)
    }

    /// Whether the module has `proxy_on_tick`.
    fn may_tick(&self) -> bool {
        self.shared.ticks
    }

    /// Whether the module reads properties (`source.port`, `destination.*`).
    fn reads_ends(&self) -> bool {
        self.shared.linked.reads_properties
    }

    fn tick_period(&self) -> Option<Duration> {
        match self.shared.tick_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// This thread's instance ticks (started first when there is none, as Envoy
    /// starts each worker's).
    fn on_tick(&self) {
        self.tick(this_slot(), true);
    }

    /// Every started instance ticks, each under its slot's lock.
    fn on_tick_all(&self) {
        for slot in 0..SLOTS {
            self.tick(slot, false);
        }
    }

    fn on_call_response(
        &self,
        call: &mut BackendRequest,
        token: u32,
        answer: Option<BackendResponse>,
    ) -> Result<Verdict, PluginFault> {
        let verdict = self.with_vm(slot_of(call.ticket), false, CALL_FAILS, |vm| {
            let Some(context) = vm.context_of(call.ticket) else {
                return Ok(Err("lost the call's context while it waited for its call out (the instance was \
                               started again, or it was the oldest of more than 65,536 open)"
                    .to_string()));
            };
            vm.serve(context, call);
            let (mut map, mut body) = (Vec::new(), Vec::new());
            if let Some(r) = answer {
                map.push((":status".to_string(), r.status.as_str().as_bytes().to_vec()));
                pairs(&r.headers, &mut map);
                if !r.body.is_empty() && !r.headers.contains_key(http::header::CONTENT_LENGTH) {
                    map.push(("content-length".into(), r.body.len().to_string().into_bytes()));
                }
                body = r.body;
            }
            let (fields, size) = (map.len() as i32, body.len() as i32);
            let s = vm.store.data_mut();
            (s.callout_answer, s.may_call_out, s.resumed) = ((map, body), true, false);
            s.callouts.clear();
            if let Some((left, _)) = vm.waiting.get_mut(&context) {
                *left = left.saturating_sub(1);
            }
            if let Some(f) = &vm.entry.http_call_response {
                f.call(&mut vm.store, (context, token as i32, fields, size, 0))?;
            }
            vm.store.data_mut().callout_answer = Default::default();
            vm.conclude(context, call, true)
        })?;
        match verdict {
            Some(v) => v.map_err(|e| self.refuse(e)),
            None => Err(self.refuse("was started again while a call waited for its call out".into())),
        }
    }
}

impl Plugin {
    /// `proxy_on_tick` on the root context of the instance in `slot`.
    fn tick(&self, slot: usize, start: bool) {
        // A tick runs with no call: its failure loses the tick only.
        let _ = self.with_vm(slot, start, "the tick is lost", |vm| match &vm.entry.tick {
            Some(f) => f.call(&mut vm.store, ROOT),
            None => Ok(()),
        });
    }

    fn refuse(&self, e: String) -> PluginFault {
        tracing::error!(target: "sluice::plugin", "[PLUGIN: {}] {e}; the call fails with 500", self.shared.name);
        PluginFault(e)
    }
}

fn one_line(message: &str) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| c.is_control() || matches!(c, '\\' | '\u{2028}' | '\u{2029}');
    if !message.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut out = String::with_capacity(message.len() + 8);
    for c in message.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            // Line and paragraph separators: some log viewers break lines there.
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c if c.is_control() => out.push_str(&format!("\\x{:02X}", u32::from(c))),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_s_message_stays_one_line() {
        assert_eq!(one_line("hello, wörld"), "hello, wörld");
        assert_eq!(
            one_line("x\n2026-12-04T00:00:00Z  INFO forged\r\t\u{7f}\u{85}"),
            "x\\x0A2026-12-04T00:00:00Z  INFO forged\\x0D\\x09\\x7F\\x85"
        );
        // A backslash is escaped too, so a written `\x0A` cannot pass for a newline.
        assert_eq!(one_line("a\\x0A b\u{2028}c"), "a\\\\x0A b\\u2028c");
    }

    fn call() -> BackendRequest {
        BackendRequest {
            method: Method::GET,
            path: "/a".into(),
            query: Some("q=1".into()),
            authority: "b:1".into(),
            ..BackendRequest::default()
        }
    }

    /// What a plugin leaves in the request map becomes the call; what it must not leave
    /// there is refused with a reason (the call then fails with 500), never sent.
    #[test]
    fn a_plugins_request_is_taken_or_refused_with_a_reason() {
        let mut s = HostState::new("p".into(), Arc::from(&[][..]), (0, 0));
        let mut c = call();
        request_map(&c, &mut s.request);
        s.request.push(("x-added".into(), b"yes".to_vec()));
        s.request[1].1 = b"/b?x=2".to_vec();
        request_from(&s, &mut c).unwrap();
        assert_eq!((c.path.as_str(), c.query.as_deref(), c.target()), ("/b", Some("x=2"), "/b?x=2".to_string()));
        assert_eq!(c.headers.get("x-added").unwrap(), "yes");

        let refused = |name: &str, value: &[u8]| {
            let mut s = HostState::new("p".into(), Arc::from(&[][..]), (0, 0));
            request_map(&call(), &mut s.request);
            match s.request.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = value.to_vec(),
                None => s.request.push((name.to_string(), value.to_vec())),
            }
            request_from(&s, &mut call()).unwrap_err()
        };
        assert_eq!(refused(":method", b"G T"), "set an invalid :method \"G T\"");
        assert_eq!(refused(":path", b"http://elsewhere/"), "set a :path that is not a path: \"http://elsewhere/\"");
        assert_eq!(refused("bad name", b"v"), "set an invalid header name \"bad name\"");
        assert_eq!(refused("x-split", b"a\r\nInjected: 1"), "set an invalid value for header x-split");
    }

    /// The last host call that answered an error is noted for a trap's message; a
    /// lookup that found nothing is an answer, not an error.
    #[test]
    fn a_trap_names_the_last_host_call_that_failed() {
        let mut s = HostState::new("p".into(), Arc::from(&[][..]), (0, 0));
        s.note("proxy_replace_header_map_value", BAD_ARGUMENT);
        s.note("proxy_get_header_map_value", NOT_FOUND);
        s.note("proxy_dequeue_shared_queue", EMPTY);
        s.note("proxy_log", OK);
        assert_eq!(s.failed, Some(Failed::Status("proxy_replace_header_map_value", BAD_ARGUMENT)));
        let trap = wasmtime::Error::new(Trap::UnreachableCodeReached);
        assert_eq!(
            why(&trap, &s),
            "trapped (unreachable: a panic or an abort in the plugin) (after proxy_replace_header_map_value \
             returned BadArgument)"
        );
        s.note("proxy_set_buffer_bytes", NOT_FOUND);
        s.note("proxy_get_property", INVALID_MEMORY_ACCESS);
        assert_eq!(
            why(&trap, &s),
            "trapped (unreachable: a panic or an abort in the plugin) (after proxy_get_property returned \
             InvalidMemoryAccess)"
        );
        assert_eq!((status_name(8), status_name(99)), ("CasMismatch".to_string(), "status 99".to_string()));
        // The module ending itself gets the note too; a limit it ran into does not.
        let exited = wasmtime::Error::new(Exited(3));
        assert_eq!(
            why(&exited, &s),
            "failed: the plugin exited with code 3 (after proxy_get_property returned InvalidMemoryAccess)"
        );
        s.failed = Some(Failed::Unimplemented("env.proxy_grpc_cancel".into()));
        for (limit, text) in [
            (Trap::Interrupt, "ran past its time budget of 100 ms"),
            (Trap::AllocationTooLarge, "asked for more than 64 MiB of memory"),
            (Trap::StackOverflow, "trapped: wasm trap: call stack exhausted"),
        ] {
            assert_eq!(why(&wasmtime::Error::new(limit), &s), text);
        }
        assert_eq!(
            why(&trap, &s),
            "trapped (unreachable: a panic or an abort in the plugin) (after calling env.proxy_grpc_cancel, which \
             Sluice does not implement)"
        );
    }

    #[test]
    fn maps_round_trip_and_bad_encodings_are_refused() {
        let map = vec![(":path".to_string(), b"/a".to_vec()), ("x-b".to_string(), b"".to_vec())];
        assert_eq!(decode_map(&encode_map(&map)), Some(map));
        assert_eq!(decode_map(&[]), Some(vec![]));
        // A count the bytes cannot hold, a length past the end.
        assert_eq!(decode_map(&[9, 0, 0, 0]), None);
        let mut bad = encode_map(&[("a".to_string(), b"b".to_vec())]);
        bad[4] = 200;
        assert_eq!(decode_map(&bad), None);
    }
}
