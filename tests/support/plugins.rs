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
            // Their own target folder, where they are read from, whatever CARGO_TARGET_DIR says.
            let status = Command::new(cargo)
                .args(["build", "--quiet", "--release", "--target", "wasm32-wasip1", "--manifest-path"])
                .arg(&manifest)
                .arg("--target-dir")
                .arg(root.join("examples/plugins/target"))
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

/// Every plugin log line (target `sluice::plugin`, info and up) of the gateways this
/// test binary runs in-process, as `LEVEL message`, from the first call of
/// [`record_log`] or [`log_of`] on: a global subscriber records them (a gateway logs on
/// its own threads; tests tell their lines apart by their plugin's name).
fn log() -> &'static std::sync::Mutex<Vec<String>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::{Layer, filter::Targets};

    struct Capture;
    impl<S: tracing::Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut message = Message(String::new());
            event.record(&mut message);
            // The probe's `/b/hold` asks for its thread to be kept off its work a while,
            // as on a busy machine: the log call is the plugin's host call, so the
            // callback is 150 ms past its start by wall clock, not by CPU time.
            if message.0.ends_with("] hold the thread") {
                std::thread::sleep(std::time::Duration::from_millis(150));
            }
            let line = format!("{} {}", event.metadata().level(), message.0);
            LINES.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line);
        }
    }

    static LINES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        let only = Targets::new().with_target("sluice::plugin", tracing::Level::INFO);
        let subscriber = tracing_subscriber::registry().with(Capture.with_filter(only));
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber in the suite");
    });
    &LINES
}

/// Starts recording the plugin log (call it before the gateway starts).
pub fn record_log() {
    log();
}

/// The recorded log lines of plugin `name` (`LEVEL [PLUGIN: name] message`), in order.
pub fn log_of(name: &str) -> Vec<String> {
    let tag = format!(" [PLUGIN: {name}] ");
    let lines = log().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    lines.iter().filter(|l| l.contains(&tag)).cloned().collect()
}
