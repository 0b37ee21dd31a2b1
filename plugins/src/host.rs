//! The proxy-wasm host (ABI 0.2.1): what a plugin module imports, and the per-thread
//! instances that run it.
//!
//! One [`Plugin`] is bound per backend: the compiled module, its configuration and a
//! unique id. Each thread (a uring shard, a tokio worker) keeps its own instance of it
//! in a thread-local map, built on first use and configured there (`on_vm_start`,
//! `on_configure`): no lock is taken per call, and instances never cross threads.
//! A trap, a callback running past [`TIME_BUDGET`], or memory past [`MEMORY_LIMIT`]
//! fails the call and drops the instance; the next call on that thread builds a new one.
//!
//! Each backend call gets an HTTP context (`proxy_on_context_create` under root context
//! 1): `on_request_headers` (+ `on_request_body` when there is a body) before it is
//! sent, `on_response_headers` (+ `on_response_body`) when it comes back, then
//! `on_done`, `on_log`, `on_delete`. The context id travels in the call's ticket. On
//! the tokio driver a connection may move to another worker between request and
//! response: the response then runs in a new context of that worker's instance (the
//! header maps are the host's and still read right; what the module kept in its own
//! per-context state does not follow). On the uring driver a connection never moves.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use sluice_core::gateway::plugin::{BackendRequest, BackendResponse, ClientPlugin, PluginFault, Verdict};
use wasmtime::{
    Caller, Engine, Extern, FuncType, InstancePre, Linker, Module, Store, StoreLimits, StoreLimitsBuilder, Trap,
    TypedFunc, Val, ValType,
};

/// The longest one callback (or the start-up of an instance) may run.
pub const TIME_BUDGET: Duration = Duration::from_millis(100);
/// The epoch ticks every this long; a budget is a whole number of ticks.
const TICK: Duration = Duration::from_millis(10);
/// The most linear memory one instance may have.
pub const MEMORY_LIMIT: usize = 64 << 20;
/// Contexts one instance keeps open at most: calls whose end never reached it (their
/// connection moved threads) are dropped oldest first past this.
const MAX_CONTEXTS: usize = 4096;
/// The root context every instance has.
const ROOT: i32 = 1;

/// proxy-wasm status codes (ABI 0.2.1).
const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const SERIALIZATION_FAILURE: i32 = 3;
const INVALID_MEMORY_ACCESS: i32 = 6;
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
    limits: StoreLimits,
    request: Vec<(String, Vec<u8>)>,
    request_body: Vec<u8>,
    response: Vec<(String, Vec<u8>)>,
    response_body: Vec<u8>,
    /// `proxy_send_local_response` during this callback.
    local: Option<BackendResponse>,
    /// The last call the module made that the host does not implement (for the
    /// message when the module then traps on the answer).
    unimplemented: Option<String>,
}

impl HostState {
    fn new(name: Arc<str>, config: Arc<[u8]>) -> HostState {
        HostState {
            name,
            config,
            limits: StoreLimitsBuilder::new().memory_size(MEMORY_LIMIT).instances(1).trap_on_grow_failure(true).build(),
            request: Vec::new(),
            request_body: Vec::new(),
            response: Vec::new(),
            response_body: Vec::new(),
            local: None,
            unimplemented: None,
        }
    }

    fn map(&mut self, kind: i32) -> Option<&mut Vec<(String, Vec<u8>)>> {
        match kind {
            0 => Some(&mut self.request),
            2 => Some(&mut self.response),
            _ => None,
        }
    }
}

/// A module loaded and linked, ready to be instantiated on any thread.
pub struct Linked {
    pre: InstancePre<HostState>,
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
    let mut probe = Store::new(module.engine(), HostState::new("".into(), Arc::from(&[][..])));
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
    Ok(Linked { pre })
}

/// An import the host does not give: it answers "unimplemented" (proxy-wasm's 12, or
/// WASI's ENOSYS) and remembers its name for the message if the module then traps.
fn stub(linker: &mut Linker<HostState>, module: &str, name: &str, ty: FuncType) -> wasmtime::Result<()> {
    let answer = if module == "wasi_snapshot_preview1" { ENOSYS } else { UNIMPLEMENTED };
    let full = format!("{module}.{name}");
    linker.func_new(module, name, ty.clone(), move |mut caller, _params, results| {
        caller.data_mut().unimplemented = Some(full.clone());
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

fn log(name: &str, level: i32, message: &str) {
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
    linker.func_wrap("env", "proxy_log", |mut c: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
        let Some(msg) = read(&mut c, ptr, len) else { return INVALID_MEMORY_ACCESS };
        log(&c.data().name, level, &String::from_utf8_lossy(&msg));
        OK
    })?;
    linker.func_wrap("env", "proxy_get_log_level", |mut c: Caller<'_, HostState>, ret: i32| {
        if write(&mut c, ret, &log_level().to_le_bytes()) { OK } else { INVALID_MEMORY_ACCESS }
    })?;
    linker.func_wrap("env", "proxy_get_current_time_nanoseconds", |mut c: Caller<'_, HostState>, ret: i32| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        if write(&mut c, ret, &now.to_le_bytes()) { OK } else { INVALID_MEMORY_ACCESS }
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, HostState>, kind: i32, start: i32, max: i32, ret_ptr: i32, ret_size: i32| {
            let s = c.data();
            let buf: &[u8] = match kind {
                0 => &s.request_body,
                1 => &s.response_body,
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
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Caller<'_, HostState>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| {
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
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, HostState>, kind: i32, ret_ptr: i32, ret_size: i32| {
            let Some(map) = c.data_mut().map(kind) else { return Ok(NOT_FOUND) };
            let bytes = encode_map(map);
            give(&mut c, &bytes, ret_ptr, ret_size)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Caller<'_, HostState>, kind: i32, ptr: i32, len: i32| {
            let Some(bytes) = read(&mut c, ptr, len) else { return INVALID_MEMORY_ACCESS };
            let Some(pairs) = decode_map(&bytes) else { return SERIALIZATION_FAILURE };
            let Some(map) = c.data_mut().map(kind) else { return NOT_FOUND };
            *map = pairs;
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, HostState>, kind: i32, kptr: i32, klen: i32, ret_ptr: i32, ret_size: i32| {
            let Some(key) = read(&mut c, kptr, klen) else { return Ok(INVALID_MEMORY_ACCESS) };
            let key = text(&key).to_ascii_lowercase();
            let Some(map) = c.data_mut().map(kind) else { return Ok(NOT_FOUND) };
            let values: Vec<&[u8]> = map.iter().filter(|(n, _)| *n == key).map(|(_, v)| v.as_slice()).collect();
            if values.is_empty() {
                return Ok(NOT_FOUND);
            }
            let joined = values.join(&b","[..]);
            give(&mut c, &joined, ret_ptr, ret_size)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Caller<'_, HostState>, kind: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| {
            let (Some(key), Some(value)) = (read(&mut c, kptr, klen), read(&mut c, vptr, vlen)) else {
                return INVALID_MEMORY_ACCESS;
            };
            let key = text(&key).to_ascii_lowercase();
            let Some(map) = c.data_mut().map(kind) else { return NOT_FOUND };
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
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Caller<'_, HostState>, kind: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| {
            let (Some(key), Some(value)) = (read(&mut c, kptr, klen), read(&mut c, vptr, vlen)) else {
                return INVALID_MEMORY_ACCESS;
            };
            let key = text(&key).to_ascii_lowercase();
            let Some(map) = c.data_mut().map(kind) else { return NOT_FOUND };
            map.push((key, value));
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Caller<'_, HostState>, kind: i32, kptr: i32, klen: i32| {
            let Some(key) = read(&mut c, kptr, klen) else { return INVALID_MEMORY_ACCESS };
            let key = text(&key).to_ascii_lowercase();
            let Some(map) = c.data_mut().map(kind) else { return NOT_FOUND };
            map.retain(|(n, _)| *n != key);
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Caller<'_, HostState>, pptr: i32, plen: i32, ret_ptr: i32, ret_size: i32| {
            let Some(path) = read(&mut c, pptr, plen) else { return Ok(INVALID_MEMORY_ACCESS) };
            match property(c.data(), &path) {
                Some(value) => give(&mut c, &value, ret_ptr, ret_size),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Caller<'_, HostState>,
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
            let Ok(status) = u16::try_from(status).map_err(drop).and_then(|s| StatusCode::from_u16(s).map_err(drop))
            else {
                return BAD_ARGUMENT;
            };
            let Ok(headers) = header_map(&pairs) else { return BAD_ARGUMENT };
            c.data_mut().local = Some(BackendResponse { status, headers, body });
            OK
        },
    )?;
    // Calls that steer a paused stream: every stream here goes on by itself.
    for name in ["proxy_continue_stream", "proxy_close_stream", "proxy_set_effective_context"] {
        linker.func_wrap("env", name, |_: Caller<'_, HostState>, _: i32| OK)?;
    }
    for name in ["proxy_continue_request", "proxy_continue_response", "proxy_done"] {
        linker.func_wrap("env", name, |_: Caller<'_, HostState>| OK)?;
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
        log(&c.data().name, if fd == 2 { 3 } else { 2 }, line.trim_end());
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
        Err(wasmtime::format_err!("the plugin exited with code {code}"))
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

/// The properties a filter commonly reads (docs/plugins.md): path segments
/// joined by NUL.
fn property(s: &HostState, path: &[u8]) -> Option<Vec<u8>> {
    let path = String::from_utf8_lossy(path).replace('\0', ".");
    let get = |name: &str| s.request.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    match path.as_str() {
        "plugin_name" | "plugin_root_id" => Some(s.name.as_bytes().to_vec()),
        "request.method" => get(":method"),
        "request.host" => get(":authority"),
        "request.path" => get(":path"),
        "request.url_path" => get(":path").map(|p| p.split(|&b| b == b'?').next().unwrap_or_default().to_vec()),
        "request.query" => get(":path").and_then(|p| p.iter().position(|&b| b == b'?').map(|q| p[q + 1..].to_vec())),
        "request.protocol" => Some(b"HTTP/1.1".to_vec()),
        "response.code" => s
            .response
            .iter()
            .find(|(n, _)| n == ":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
            .map(|code| code.to_le_bytes().to_vec()),
        _ => None,
    }
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
}

/// Which side of a call a callback is about.
#[derive(Debug, Clone, Copy)]
enum Side {
    Request,
    Response,
}

/// One thread's instance of a bound plugin.
struct Vm {
    store: Store<HostState>,
    entry: Exports,
    /// Unique among every instance of the process: a ticket names its instance.
    generation: u64,
    next_context: i32,
    /// Open contexts, oldest first.
    open: std::collections::VecDeque<i32>,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's instances, by [`Plugin::id`].
    static VMS: RefCell<HashMap<u64, Vm>> = RefCell::new(HashMap::new());
}

/// Why a call into the module failed, in words for the log.
fn why(e: &wasmtime::Error, s: &HostState) -> String {
    let mut text = match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!("ran past its time budget of {} ms", TIME_BUDGET.as_millis()),
        Some(Trap::UnreachableCodeReached) => "trapped (unreachable: a panic or an abort in the plugin)".to_string(),
        Some(Trap::AllocationTooLarge) => format!("asked for more than {} MiB of memory", MEMORY_LIMIT >> 20),
        Some(t) => format!("trapped: {t}"),
        None if e.chain().any(|c| c.to_string().contains("memory growth")) => {
            format!("asked for more than {} MiB of memory", MEMORY_LIMIT >> 20)
        }
        None => format!("failed: {}", e.root_cause()),
    };
    if let Some(name) = &s.unimplemented {
        text.push_str(&format!(" (after calling {name}, which Sluice does not implement)"));
    }
    text
}

impl Vm {
    /// Instantiates and starts a plugin: `_initialize`, the root context, `on_vm_start`,
    /// `on_configure` with its configuration.
    fn start(plugin: &Shared) -> Result<Vm, String> {
        let mut store = Store::new(engine(), HostState::new(plugin.name.clone(), plugin.config.clone()));
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(ticks());
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
        Ok(Vm { store, entry, generation, next_context: ROOT + 1, open: Default::default() })
    }

    fn open_context(&mut self) -> wasmtime::Result<i32> {
        let id = self.next_context;
        self.next_context = if self.next_context == i32::MAX { ROOT + 1 } else { self.next_context + 1 };
        self.entry.context_create.call(&mut self.store, (id, ROOT))?;
        self.open.push_back(id);
        if self.open.len() > MAX_CONTEXTS
            && let Some(oldest) = self.open.pop_front()
        {
            self.close_context(oldest)?;
        }
        Ok(id)
    }

    fn close_context(&mut self, id: i32) -> wasmtime::Result<()> {
        self.open.retain(|&c| c != id);
        if let Some(f) = &self.entry.done {
            f.call(&mut self.store, id)?;
        }
        if let Some(f) = &self.entry.log {
            f.call(&mut self.store, id)?;
        }
        if let Some(f) = &self.entry.delete {
            f.call(&mut self.store, id)?;
        }
        Ok(())
    }

    /// One side of a call: its headers callback (`end_of_stream` when there is no
    /// body), then its body callback with the whole body, unless the plugin already
    /// answered locally.
    fn headers_then_body(&mut self, side: Side, context: i32, fields: i32, body: usize) -> wasmtime::Result<()> {
        let (headers, body_fn) = match side {
            Side::Request => (&self.entry.request_headers, &self.entry.request_body),
            Side::Response => (&self.entry.response_headers, &self.entry.response_body),
        };
        if let Some(f) = headers {
            f.call(&mut self.store, (context, fields, i32::from(body == 0)))?;
        }
        if body > 0
            && self.store.data().local.is_none()
            && let Some(f) = body_fn
        {
            f.call(&mut self.store, (context, body as i32, 1))?;
        }
        Ok(())
    }

    fn ticket(&self, context: i32) -> u64 {
        (self.generation << 32) | context as u32 as u64
    }

    /// The context a ticket names, when it is this instance's and still open.
    fn context_of(&self, ticket: u64) -> Option<i32> {
        let id = (ticket & 0xffff_ffff) as i32;
        (ticket >> 32 == self.generation && self.open.contains(&id)).then_some(id)
    }
}

fn ticks() -> u64 {
    (TIME_BUDGET.as_millis() / TICK.as_millis()).max(1) as u64
}

/// What every thread's instances of one binding share.
#[derive(Debug)]
struct Shared {
    name: Arc<str>,
    config: Arc<[u8]>,
    linked: Arc<Linked>,
}

/// A proxy-wasm module bound to one backend with its configuration: the
/// [`ClientPlugin`] core calls.
#[derive(Debug)]
pub struct Plugin {
    id: u64,
    shared: Shared,
}

static IDS: AtomicU64 = AtomicU64::new(1);

impl Plugin {
    /// Binds `linked` under `name` with `config` (JSON bytes, or empty). The instance
    /// of this thread is started at once, so a module that traps or refuses its
    /// configuration is an error here, at start-up, not on the first call.
    pub fn bind(name: &str, linked: Arc<Linked>, config: Vec<u8>) -> Result<Plugin, String> {
        let plugin = Plugin {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            shared: Shared { name: name.into(), config: config.into(), linked },
        };
        let vm = Vm::start(&plugin.shared)?;
        VMS.with(|vms| vms.borrow_mut().insert(plugin.id, vm));
        Ok(plugin)
    }

    /// Runs `f` on this thread's instance (started when there is none). An error from
    /// `f` drops the instance: the next call starts a new one.
    fn with_vm<R>(&self, f: impl FnOnce(&mut Vm) -> wasmtime::Result<R>) -> Result<R, PluginFault> {
        let name = &self.shared.name;
        VMS.with(|vms| {
            let mut vms = vms.borrow_mut();
            let vm = match vms.entry(self.id) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => match Vm::start(&self.shared) {
                    Ok(vm) => v.insert(vm),
                    Err(e) => {
                        tracing::error!(target: "sluice::plugin", "[PLUGIN: {name}] cannot start an instance: {e}; the call fails with 500");
                        return Err(PluginFault(e));
                    }
                },
            };
            vm.store.set_epoch_deadline(ticks());
            vm.store.data_mut().unimplemented = None;
            match f(vm) {
                Ok(r) => Ok(r),
                Err(e) => {
                    let text = why(&e, vm.store.data());
                    vms.remove(&self.id);
                    tracing::error!(target: "sluice::plugin", "[PLUGIN: {name}] {text}; the call fails with 500 and the instance is started again");
                    Err(PluginFault(text))
                }
            }
        })
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

fn request_map(call: &BackendRequest, out: &mut Vec<(String, Vec<u8>)>) {
    out.clear();
    out.push((":method".into(), call.method.as_str().as_bytes().to_vec()));
    out.push((":path".into(), call.target().into_bytes()));
    out.push((":authority".into(), call.authority.as_bytes().to_vec()));
    pairs(&call.headers, out);
}

impl ClientPlugin for Plugin {
    fn on_request(&self, call: &mut BackendRequest) -> Result<Verdict, PluginFault> {
        let verdict = self.with_vm(|vm| {
            let s = vm.store.data_mut();
            request_map(call, &mut s.request);
            s.request_body.clone_from(&call.body);
            s.response.clear();
            s.response_body.clear();
            s.local = None;
            let context = vm.open_context()?;
            call.ticket = vm.ticket(context);
            let fields = vm.store.data().request.len() as i32 - 3;
            vm.headers_then_body(Side::Request, context, fields, call.body.len())?;
            let s = vm.store.data_mut();
            if let Some(local) = s.local.take() {
                return Ok(Ok(Verdict::Respond(local)));
            }
            Ok(request_from(s, call).map(|()| Verdict::Continue))
        })?;
        verdict.map_err(|e| self.refuse(e))
    }

    fn on_response(&self, call: &BackendRequest, response: &mut BackendResponse) -> Result<(), PluginFault> {
        let result = self.with_vm(|vm| {
            let context = match vm.context_of(call.ticket) {
                Some(c) => c,
                None => vm.open_context()?,
            };
            let s = vm.store.data_mut();
            request_map(call, &mut s.request);
            s.request_body.clone_from(&call.body);
            s.response.clear();
            s.response.push((":status".into(), response.status.as_str().as_bytes().to_vec()));
            pairs(&response.headers, &mut s.response);
            s.response_body.clone_from(&response.body);
            s.local = None;
            let fields = s.response.len() as i32 - 1;
            vm.headers_then_body(Side::Response, context, fields, response.body.len())?;
            let s = vm.store.data_mut();
            if let Some(local) = s.local.take() {
                *response = local;
                return Ok(Ok(()));
            }
            let status = s.response.iter().find(|(n, _)| n == ":status").map(|(_, v)| v.clone());
            if let Some(v) = status {
                match std::str::from_utf8(&v)
                    .ok()
                    .and_then(|t| t.parse::<u16>().ok())
                    .and_then(|n| StatusCode::from_u16(n).ok())
                {
                    Some(code) => response.status = code,
                    None => return Ok(Err(format!("set an invalid :status {:?}", text(&v)))),
                }
            }
            match header_map(&s.response) {
                Ok(h) => response.headers = h,
                Err(e) => return Ok(Err(e)),
            }
            response.body = std::mem::take(&mut s.response_body);
            Ok(Ok(()))
        })?;
        result.map_err(|e| self.refuse(e))
    }

    fn on_done(&self, call: &BackendRequest) {
        // Only an instance holding the call's context has anything to close: after a
        // trap there is none, and none is started just to close nothing.
        let open = VMS.with(|vms| vms.borrow().get(&self.id).is_some_and(|vm| vm.context_of(call.ticket).is_some()));
        if open {
            let _ = self.with_vm(|vm| match vm.context_of(call.ticket) {
                Some(c) => vm.close_context(c),
                None => Ok(()),
            });
        }
    }
}

impl Plugin {
    fn refuse(&self, e: String) -> PluginFault {
        tracing::error!(target: "sluice::plugin", "[PLUGIN: {}] {e}; the call fails with 500", self.shared.name);
        PluginFault(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> BackendRequest {
        BackendRequest {
            method: Method::GET,
            path: "/a".into(),
            query: Some("q=1".into()),
            authority: "b:1".into(),
            headers: HeaderMap::new(),
            body: Vec::new(),
            ticket: 0,
        }
    }

    /// What a plugin leaves in the request map becomes the call; what it must not leave
    /// there is refused with a reason (the call then fails with 500), never sent.
    #[test]
    fn a_plugins_request_is_taken_or_refused_with_a_reason() {
        let mut s = HostState::new("p".into(), Arc::from(&[][..]));
        let mut c = call();
        request_map(&c, &mut s.request);
        s.request.push(("x-added".into(), b"yes".to_vec()));
        s.request[1].1 = b"/b?x=2".to_vec();
        request_from(&s, &mut c).unwrap();
        assert_eq!((c.path.as_str(), c.query.as_deref(), c.target()), ("/b", Some("x=2"), "/b?x=2".to_string()));
        assert_eq!(c.headers.get("x-added").unwrap(), "yes");

        let refused = |name: &str, value: &[u8]| {
            let mut s = HostState::new("p".into(), Arc::from(&[][..]));
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
