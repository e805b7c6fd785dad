//! Fault injection for tests of the host's own supervision: with
//! `SANDPIPER_FAULT_PANIC=<point>` in its environment, the background task
//! that passes that point panics there, for real, so a test can see the
//! host notice it, fail `/healthz` and exit non-zero.
//!
//! Points: `deploy-watch`, `auto-rollback`, `control-follower`. Never set it
//! in production: it exists to prove that no task can die silently.

use std::sync::OnceLock;

/// The environment variable naming the point to panic at.
pub const ENV: &str = "SANDPIPER_FAULT_PANIC";

/// Panics if the environment names `name`. Read once per process.
pub fn point(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()));
    if armed.as_deref() == Some(name) {
        panic!("fault injected at {name} ({ENV})");
    }
}
