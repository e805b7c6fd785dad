//! Test support: plugin builds, runtimes with test limits, Kafka helpers.

#![allow(dead_code)]

pub mod apache;
pub mod client;
pub mod http;
pub mod kafka;
pub mod load;
pub mod process;
pub mod tally;
pub mod tansu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use sandpiper::record::Record;
use sandpiper::runtime::{EngineSettings, Plugin, PluginSettings, Runtime};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Path of a built test plugin (`chaos`, `uppercase`, ...). Builds the
/// plugins workspace once per test run (a no-op when up to date).
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var_os("SANDPIPER_PLUGINS_BUILT").is_some() {
            return; // `cargo xtask test` built them already.
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(root().join("plugins"))
            .args(["build", "--quiet", "--target", "wasm32-wasip2", "--release"])
            .env("CARGO_TARGET_DIR", root().join("plugins/target"))
            .status()
            .expect("running cargo to build the test plugins");
        assert!(status.success(), "building the plugins failed (is the wasm32-wasip2 target installed? `cargo xtask test` installs it)");
    });
    let path = root()
        .join("plugins/target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.exists(), "no plugin at {}", path.display());
    path
}

/// One runtime per test binary (like the host: one engine per process).
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(EngineSettings::default()).expect("engine"))
}

pub fn load(name: &str, settings: PluginSettings) -> Arc<Plugin> {
    runtime()
        .load_file(&plugin(name), settings)
        .expect("plugin loads")
}

/// A record with `value` on topic `t`, partition 0.
pub fn record(offset: i64, value: &str) -> Record {
    Record {
        topic: "t".into(),
        partition: 0,
        offset,
        timestamp: Some(1_700_000_000_000),
        key: Some(format!("k{offset}").into_bytes()),
        value: Some(value.as_bytes().to_vec()),
        headers: vec![("h".into(), b"v".to_vec())],
    }
}

/// A unique name for a test's topics and groups.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand_suffix()
    )
}

fn rand_suffix() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 100_000)
}

/// Resident set size of this process, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Threads of this process (Linux).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Names of this process's threads (Linux).
pub fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// librdkafka client instances alive in this process: each has one `rdk:main` thread.
pub fn kafka_clients() -> usize {
    thread_names()
        .iter()
        .filter(|n| n.as_str() == "rdk:main")
        .count()
}
