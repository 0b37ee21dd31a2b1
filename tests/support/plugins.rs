//! The example plugins (`examples/plugins`: hello, faulty, probe, l4), built once per
//! test binary for wasm32-wasip1, and a gateway with them bound.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use sluice_core::Gateway;

/// The folder holding `hello.wasm`, `faulty.wasm`, `probe.wasm` and `l4.wasm`, built here when needed (CI
/// installs the wasm32-wasip1 target; `.ci/run` builds them first).
pub fn folder() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let manifest = root.join("examples/plugins/Cargo.toml");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--quiet", "--release", "--target", "wasm32-wasip1", "--manifest-path"])
                .arg(&manifest)
                .status()
                .expect("cargo runs");
            assert!(
                status.success(),
                "building examples/plugins failed: is the wasm32-wasip1 target installed? (rustup target add wasm32-wasip1)"
            );
            let out = root.join("examples/plugins/target/wasm32-wasip1/release");
            for name in ["hello", "faulty", "probe", "l4"] {
                assert!(out.join(format!("{name}.wasm")).is_file(), "{name}.wasm was not built");
            }
            out
        })
        .clone()
}

/// Compiles `config` and binds its plugins from [`folder`] (the config's root
/// `plugin.folder` is replaced by it), as `sluice run` does.
pub fn gateway(config: &str) -> Gateway {
    let config = config.replace("PLUGINS", &folder().display().to_string());
    let mut gw = Gateway::load(&config).unwrap_or_else(|e| panic!("config: {e}\n{config}")).gateway;
    let library = sluice_plugins::Library::load(gw.config.plugin.as_ref()).unwrap_or_else(|e| panic!("load: {e:?}"));
    library.bind(&mut gw).unwrap_or_else(|e| panic!("bind: {e:?}"));
    gw
}

/// A folder of its own holding copies of example plugins under other names
/// (`(example, name)`), removed when dropped: a plugin's metrics, shared data and
/// queues are process-wide per name, so tests running side by side keep theirs apart
/// this way.
pub fn renamed(copies: &[(&str, &str)]) -> super::Scratch {
    let dir = super::Scratch::new("plugins");
    for (example, name) in copies {
        std::fs::copy(folder().join(format!("{example}.wasm")), dir.0.join(format!("{name}.wasm"))).unwrap();
    }
    dir
}

/// [`gateway`] with the plugins of `folder` in place of the examples' folder.
pub fn gateway_from(config: &str, folder: &std::path::Path) -> Gateway {
    let config = config.replace("PLUGINS", &folder.display().to_string());
    let mut gw = Gateway::load(&config).unwrap_or_else(|e| panic!("config: {e}\n{config}")).gateway;
    let library = sluice_plugins::Library::load(gw.config.plugin.as_ref()).unwrap_or_else(|e| panic!("load: {e:?}"));
    library.bind(&mut gw).unwrap_or_else(|e| panic!("bind: {e:?}"));
    gw
}
