//! Per-pipeline limits and instance recycling policy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

/// The `[pipeline.limits]` section: what one record may cost.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock deadline per record; past it the call ends as `timeout`.
    pub timeout_ms: u64,
    /// Cap on the guest's linear memory; growing past it ends as `out-of-memory`.
    pub memory_mb: u32,
    /// Outputs one record may fan out into; more ends as `output-limit`.
    pub max_outputs: u32,
    /// Total bytes (keys, values, headers) of one record's outputs.
    pub max_output_bytes: u64,
    /// Optional instruction budget per record (wasmtime fuel); `None` is unmetered.
    pub fuel: Option<u64>,
    /// Bytes of guest stdout/stderr kept for the failure record (the tail).
    pub stdio_tail_bytes: u32,
    /// Guest log lines per record that reach the host's log; the rest are counted.
    pub max_log_lines: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout_ms: default_timeout_ms(),
            memory_mb: default_memory_mb(),
            max_outputs: default_max_outputs(),
            max_output_bytes: default_max_output_bytes(),
            fuel: None,
            stdio_tail_bytes: default_stdio_tail_bytes(),
            max_log_lines: default_max_log_lines(),
        }
    }
}

const fn default_timeout_ms() -> u64 {
    1_000
}
const fn default_memory_mb() -> u32 {
    64
}
const fn default_max_outputs() -> u32 {
    1_000
}
/// librdkafka's default `message.max.bytes`: the largest record the
/// producer takes (key, value and headers).
pub const DEFAULT_MESSAGE_MAX_BYTES: u64 = 1_000_000;

/// Bytes of a produced record kept for the headers Sandpiper adds to an
/// output (`sandpiper.plugin`), so outputs within `max_output_bytes`
/// always fit the producer's `message.max.bytes`.
pub const OUTPUT_HEADROOM: u64 = 1024;

/// The largest `max_output_bytes` a producer with `message_max_bytes`
/// accepts every output of (and the default, derived from it).
pub const fn max_output_bytes_for(message_max_bytes: u64) -> u64 {
    message_max_bytes.saturating_sub(OUTPUT_HEADROOM)
}

const fn default_max_output_bytes() -> u64 {
    max_output_bytes_for(DEFAULT_MESSAGE_MAX_BYTES)
}
const fn default_stdio_tail_bytes() -> u32 {
    4 * 1024
}
const fn default_max_log_lines() -> u32 {
    100
}

impl Limits {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn memory_bytes(&self) -> usize {
        self.memory_mb as usize * (1 << 20)
    }
}

/// How instances are shared between records.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// An instance serves following records until it traps or is recycled.
    #[default]
    Reuse,
    /// Every record gets a fresh instance: no state can leak between records.
    PerRecord,
}

impl Isolation {
    /// Instance-pool slots one plugin thread may hold while it is busy:
    /// its instance, or under per-record isolation the spent instances
    /// sharing a store with it.
    pub const fn slots_per_thread(self) -> u32 {
        match self {
            Self::Reuse => 1,
            Self::PerRecord => super::instance::INSTANCES_PER_STORE,
        }
    }
}

/// The `[pipeline.recycle]` section: when a healthy reused instance is replaced.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Recycle {
    /// Records an instance serves before it is replaced.
    pub max_records: u64,
    /// Seconds an instance lives before it is replaced.
    pub max_age_secs: u64,
    /// Linear memory high-water mark (MiB) past which it is replaced after the record.
    pub max_memory_mb: Option<u32>,
}

impl Default for Recycle {
    fn default() -> Self {
        Self {
            max_records: default_max_records(),
            max_age_secs: default_max_age_secs(),
            max_memory_mb: None,
        }
    }
}

const fn default_max_records() -> u64 {
    100_000
}
const fn default_max_age_secs() -> u64 {
    600
}

/// Everything a loaded plugin needs besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct PluginSettings {
    pub limits: Limits,
    pub isolation: Isolation,
    pub recycle: Recycle,
    /// Key-values the plugin reads through the `config` import.
    pub config: Arc<BTreeMap<String, String>>,
}
