//! `sluice-plugins`: HTTP client plugins for Sluice as proxy-wasm modules (ABI 0.2.1)
//! on wasmtime, and the loader that reads KrakenD's configuration for them.
//!
//! Core knows plugins only through [`sluice_core::gateway::plugin::ClientPlugin`]; this crate
//! implements it for WebAssembly ([`host::Plugin`]) and binds what a configuration asks
//! for:
//! 1. [`Library::load`] reads the root `plugin` {`folder`, `pattern`}: every file of the
//!    folder whose name ends with the pattern (`.wasm`) is compiled and checked (a
//!    proxy-wasm 0.2.1 module with memory and an allocator) and registered under its
//!    file's stem (`hello.wasm` is `hello`).
//! 2. [`Library::bind`] binds, for every backend whose
//!    `extra_config."plugin/http-client".name` names a plugin, a [`host::Plugin`] with
//!    that backend's configuration (the object under the plugin's name), started once
//!    here so a plugin refusing its configuration is a start-up error.
//!
//! Errors come back with JSON paths, all at once, as `sluice check` prints them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sluice_core::config::PluginLoader;
use sluice_core::{Diagnostic, Gateway};

pub mod host;
pub mod shared;

pub use host::{MEMORY_LIMIT, Plugin, TIME_BUDGET};

/// The suffix Sluice loads.
pub const PATTERN: &str = ".wasm";
/// The largest plugin file read.
const MAX_MODULE_BYTES: u64 = 64 << 20;

/// The plugins a configuration's root `plugin` loaded, by name.
#[derive(Debug, Default)]
pub struct Library {
    modules: BTreeMap<String, Arc<host::Linked>>,
    /// The folder they came from, for messages.
    folder: Option<String>,
    /// Why the root `plugin` block loads nothing (a Go `.so` pattern), said once.
    ignored: Option<Diagnostic>,
}

impl Library {
    /// Loads every plugin of `loader`'s folder (none without a loader). A Go plugin
    /// pattern (`.so`, in every KrakenD EE file) loads nothing and is said once
    /// ([`Library::notice`]): the built-in plugins (`http-proxy`) need no folder, and a
    /// backend naming any other plugin is still refused when it is bound.
    pub fn load(loader: Option<&PluginLoader>) -> Result<Library, Vec<Diagnostic>> {
        let Some(loader) = loader else { return Ok(Library::default()) };
        let error = |path: &str, message: String| vec![Diagnostic { path: path.to_string(), message }];
        if loader.pattern.ends_with(".so") {
            let message = format!(
                "{:?}: Go plugins (.so) cannot be loaded by Sluice (they only load into the Go program they were \
                 built with): the block is ignored; built-in plugins (http-proxy) need none. Build other plugins \
                 as proxy-wasm modules (target wasm32-wasip1) and set \"pattern\": \"{PATTERN}\" (docs/plugins.md)",
                loader.pattern
            );
            let ignored = Diagnostic { path: "plugin.pattern".to_string(), message };
            return Ok(Library { ignored: Some(ignored), ..Library::default() });
        }
        if loader.pattern.is_empty() {
            return Err(error("plugin.pattern", format!("empty: use \"{PATTERN}\"")));
        }
        let folder = Path::new(&loader.folder);
        let entries = std::fs::read_dir(folder)
            .map_err(|e| error("plugin.folder", format!("cannot read {:?}: {e}", loader.folder)))?;
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(&loader.pattern))
            })
            .collect();
        files.sort();
        let mut errors = Vec::new();
        let mut modules = BTreeMap::new();
        for file in files {
            let shown = file.display().to_string();
            let Some(name) = file
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(loader.pattern.as_str()))
                .filter(|n| !n.is_empty())
            else {
                errors.push(Diagnostic {
                    path: "plugin.folder".into(),
                    message: format!("{shown}: no name before the pattern"),
                });
                continue;
            };
            match compile(&file) {
                Ok(linked) => {
                    modules.insert(name.to_string(), Arc::new(linked));
                }
                Err(message) => {
                    errors.push(Diagnostic { path: "plugin.folder".into(), message: format!("{shown}: {message}") })
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Library { modules, folder: Some(loader.folder.clone()), ignored: None })
    }

    /// What the root `plugin` block left out (a Go `.so` pattern), to say at start-up.
    pub fn notice(&self) -> Option<&Diagnostic> {
        self.ignored.as_ref()
    }

    /// The names of the loaded plugins, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.modules.keys().map(String::as_str).collect()
    }

    /// Binds every plugin the configuration names to its backend. Says, per binding,
    /// the `[BACKEND: /path] Injecting plugin NAME` line to log.
    pub fn bind(&self, gw: &mut Gateway) -> Result<Vec<String>, Vec<Diagnostic>> {
        let mut errors = Vec::new();
        let mut lines = Vec::new();
        for site in gw.plugin_sites() {
            let Some(linked) = self.modules.get(&site.name) else {
                let message = match &self.folder {
                    Some(folder) if self.modules.is_empty() => {
                        format!("no plugin named {:?}: the folder {folder:?} has none", site.name)
                    }
                    Some(folder) => format!(
                        "no plugin named {:?}: {folder:?} has {}",
                        site.name,
                        self.names().iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
                    ),
                    None if self.ignored.is_some() => format!(
                        "no plugin named {:?}: it is not built in, and the root \"plugin\" block loads no Go \
                         plugin (build it as a proxy-wasm module and set \"pattern\": \"{PATTERN}\")",
                        site.name
                    ),
                    None => format!(
                        "no plugin named {:?}: no plugins are loaded (add a root \"plugin\": {{\"folder\": ..., \
                         \"pattern\": \"{PATTERN}\"}})",
                        site.name
                    ),
                };
                errors.push(Diagnostic { path: site.at, message });
                continue;
            };
            match Plugin::bind(&site.name, linked.clone(), configuration(site.config), site.upstreams) {
                Ok(plugin) => {
                    gw.bind_plugin(site.endpoint, site.backend, &site.name, Arc::new(plugin));
                    lines.push(format!("[BACKEND: {}] Injecting plugin {}", site.endpoint_path, site.name));
                }
                Err(message) => errors.push(Diagnostic {
                    path: site.at.trim_end_matches(".name").to_string(),
                    message: format!("plugin {}: {message}", site.name),
                }),
            }
        }
        if errors.is_empty() { Ok(lines) } else { Err(errors) }
    }
}

/// What `on_configure` reads of a binding's configuration (the value under the
/// plugin's name): a JSON string is handed as its text, without quotes or escapes, as
/// Envoy hands a plugin its `configuration` string; anything else as its JSON.
fn configuration(json: Vec<u8>) -> Vec<u8> {
    if json.first() == Some(&b'"')
        && let Ok(text) = serde_json::from_slice::<String>(&json)
    {
        return text.into_bytes();
    }
    json
}

/// Reads, compiles and links one module.
fn compile(file: &Path) -> Result<host::Linked, String> {
    use std::io::Read;
    let f = std::fs::File::open(file).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    f.take(MAX_MODULE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_MODULE_BYTES {
        return Err(format!("over {} MiB: not a plugin", MAX_MODULE_BYTES >> 20));
    }
    module(&bytes)
}

/// Compiles and links a module from its bytes (binary WebAssembly).
pub fn module(bytes: &[u8]) -> Result<host::Linked, String> {
    if !bytes.starts_with(b"\0asm") {
        return Err("not a WebAssembly module (no \\0asm header)".into());
    }
    let module = wasmtime::Module::from_binary(host::engine(), bytes)
        .map_err(|e| format!("not a valid WebAssembly module: {}", first_line(&e.to_string())))?;
    host::link(&module)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
