//! The example plugins (`examples/plugins`: hello, faulty), built once per test binary
//! for wasm32-wasip1, and a gateway with them bound.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use sluice_core::Gateway;

/// The folder holding `hello.wasm` and `faulty.wasm`, built here when needed (CI
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
            assert!(out.join("hello.wasm").is_file() && out.join("faulty.wasm").is_file());
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
