//! The TOML configuration: parsed, validated and defaulted before anything
//! connects. Errors name the key, the value and the line.
//!
//! Every key is documented in `docs/config.md`; keep the two in step.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::runtime::limits::{DEFAULT_MESSAGE_MAX_BYTES, OUTPUT_HEADROOM, max_output_bytes_for};
use crate::runtime::{EngineSettings, Isolation, Limits, PluginSettings, Recycle};

/// Why a config was refused: where, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax, types, unknown keys, bad values: toml's message names the
    /// line and column and quotes the offending text.
    #[error("invalid config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config {path}, line {line}: `{key}` = {value}: {reason}")]
    Invalid {
        path: String,
        line: usize,
        key: String,
        value: String,
        reason: String,
    },
}

/// A validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    #[serde(rename = "pipeline")]
    pub pipelines: Vec<PipelineConfig>,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub runtime: EngineSettings,
    /// How long to finish in-flight work after SIGTERM/SIGINT before exiting.
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// Hot-swap settings (file watching, the fleet's control topic).
    #[serde(default)]
    pub deploy: DeployConfig,
    /// How long the host may stay unhealthy (`/healthz` failing) before it
    /// exits non-zero so its supervisor restarts it.
    #[serde(default = "default_unhealthy_exit_secs")]
    pub unhealthy_exit_secs: u64,
}

const fn default_shutdown_timeout_secs() -> u64 {
    30
}
const fn default_unhealthy_exit_secs() -> u64 {
    30
}

/// `[kafka]`: the cluster and client settings shared by every pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port,...`, or `embedded` for an in-process mock cluster that keeps nothing.
    pub brokers: NonEmpty,
    /// Default consumer group of every pipeline.
    pub group: NonEmpty,
    /// Passed to librdkafka as they are (security, tuning); win over our defaults.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Like `properties`, for the consumers only.
    #[serde(default)]
    pub consumer_properties: BTreeMap<String, String>,
    /// Like `properties`, for the producers only.
    #[serde(default)]
    pub producer_properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    pub fn is_embedded(&self) -> bool {
        self.brokers.0 == "embedded"
    }
}

/// `[[pipeline]]`: inputs → plugin → output, with a dead-letter topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub name: Spanned<Name>,
    pub inputs: Vec<TopicName>,
    /// Topic for outputs that name none.
    pub output: TopicName,
    pub dead_letter: TopicName,
    /// Path to the plugin component, relative to the config file.
    pub plugin: PathBuf,
    /// Consumer group of this pipeline; defaults to `kafka.group`.
    #[serde(default)]
    pub group: Option<NonEmpty>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub isolation: Isolation,
    #[serde(default)]
    pub recycle: Recycle,
    /// Key-values the plugin reads through its `config` import.
    #[serde(default)]
    pub plugin_config: BTreeMap<String, String>,
    /// Partitions whose records run through the plugin at the same time.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Records librdkafka keeps fetched per partition, ahead of the plugin
    /// (`queued.min.messages` of the pipeline's consumer).
    #[serde(default = "default_partition_buffer")]
    pub partition_buffer: usize,
    /// Records per partition whose outputs may await broker acknowledgement at once.
    #[serde(default = "default_max_unacked")]
    pub max_unacked: usize,
    /// MiB of outputs per partition that may await acknowledgement at once.
    #[serde(default = "default_max_unacked_mb")]
    pub max_unacked_mb: u64,
    /// Mark outputs with the `sandpiper.plugin` header.
    #[serde(default = "default_true")]
    pub plugin_header: bool,
    /// Records every new plugin version must pass before it is swapped in.
    #[serde(default)]
    pub canary: Option<CanaryConfig>,
    /// Roll a new version back automatically when it fails too often (off by default).
    #[serde(default)]
    pub auto_rollback: Option<AutoRollbackConfig>,
    /// A partition with lag and no progress for this long is stalled:
    /// reported unhealthy, then the process exits so it is restarted.
    #[serde(default = "default_stall_timeout_secs")]
    pub stall_timeout_secs: u64,
}

const fn default_workers() -> usize {
    2
}
/// About one fetch's worth of small records per partition.
const fn default_partition_buffer() -> usize {
    1024
}
/// Enough to cover the broker's round trip at full speed: at 1024, 100-byte
/// records ran at two thirds of the rate they reach with 4096 (BENCHMARKS.md).
const fn default_max_unacked() -> usize {
    4096
}
/// Bounds the memory of outputs in flight when records are large.
const fn default_max_unacked_mb() -> u64 {
    64
}
const fn default_true() -> bool {
    true
}
const fn default_stall_timeout_secs() -> u64 {
    300
}

impl PipelineConfig {
    pub fn name(&self) -> &str {
        &self.name.get_ref().0
    }

    /// The consumer group: `group`, else `kafka.group`.
    pub fn group<'a>(&'a self, kafka: &'a KafkaConfig) -> &'a str {
        self.group.as_ref().map_or(&kafka.group.0, |g| &g.0)
    }

    /// Instance-pool slots this pipeline may hold at once: its plugin
    /// threads' (see [`Isolation::slots_per_thread`]) and one for a new
    /// version being loaded (its first instance, then its canary's).
    pub fn instance_slots(&self) -> u64 {
        self.workers as u64 * u64::from(self.isolation.slots_per_thread()) + 1
    }

    pub fn plugin_settings(&self) -> PluginSettings {
        PluginSettings {
            limits: self.limits.clone(),
            isolation: self.isolation,
            recycle: self.recycle.clone(),
            config: Arc::new(self.plugin_config.clone()),
        }
    }
}

/// `[pipeline.retry]`: how plugin `retry` failures are retried.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all (the first included) before `retries-exhausted`.
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff_ms: 100,
            max_backoff_ms: 10_000,
        }
    }
}

/// `[admin]`: the HTTP listener for health, status and deploys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Loopback by default: the admin API is not for the open network.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token for the deploy endpoints; `SANDPIPER_ADMIN_TOKEN` in the
    /// environment wins. Without either, deploys over HTTP are refused.
    #[serde(default)]
    pub token: Option<String>,
}

impl AdminConfig {
    /// The token in force: the environment's, else the config's.
    pub fn token(&self) -> Option<String> {
        std::env::var("SANDPIPER_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| self.token.clone().filter(|t| !t.is_empty()))
    }
}

/// `[deploy]`: how new plugin versions arrive.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeployConfig {
    /// Watch each pipeline's plugin file and swap when it changes.
    pub watch: bool,
    /// How often the plugin files are checked.
    pub watch_interval_ms: u64,
    /// A compacted topic every host of a fleet follows: a deploy to one host
    /// is published there and applied by all. `None`: deploys stay local.
    pub control_topic: Option<TopicName>,
    /// Versions kept loaded for rollback.
    pub keep_versions: usize,
}

impl Default for DeployConfig {
    fn default() -> Self {
        Self {
            watch: true,
            watch_interval_ms: 500,
            control_topic: None,
            keep_versions: 5,
        }
    }
}

/// `[pipeline.canary]`: records a new version must handle as expected.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// JSONL in the harness format; an optional `expect` per line (`"ok"`,
    /// the default, or a failure kind such as `"rejected"`).
    pub file: PathBuf,
}

/// `[pipeline.auto_rollback]`: undo a deploy whose version fails too often.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoRollbackConfig {
    /// Records the new version handles before it is judged.
    pub records: u64,
    /// Failure rate (0 to 1) over those records above which it is rolled back.
    /// Failures are traps, timeouts and limits; rejections are the data's fault.
    pub max_failure_rate: f64,
}

fn default_listen() -> String {
    "127.0.0.1:9464".into()
}

/// A string that must not be empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct NonEmpty(pub String);

impl TryFrom<String> for NonEmpty {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.trim().is_empty() {
            Err("must not be empty".into())
        } else {
            Ok(Self(s))
        }
    }
}

impl fmt::Display for NonEmpty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pipeline name: letters, digits, `-`, `_`, `.` (it appears in URLs and headers).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Name(pub String);

impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() || s.len() > 100 {
            return Err(format!("`{s}` must be 1 to 100 characters"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(format!(
                "`{s}` has `{c}`; use letters, digits, `-`, `_` and `.`"
            ));
        }
        Ok(Self(s))
    }
}

/// A Kafka topic name, checked by Kafka's own rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct TopicName(pub String);

impl TryFrom<String> for TopicName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() || s.len() > 249 {
            return Err(format!("topic `{s}` must be 1 to 249 characters"));
        }
        if s == "." || s == ".." {
            return Err(format!("topic `{s}` is not allowed"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(format!(
                "topic `{s}` has `{c}`; Kafka allows letters, digits, `-`, `_` and `.`"
            ));
        }
        Ok(Self(s))
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Config {
    /// Reads, parses and validates a config file. Plugin paths are made
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&path.display().to_string(), &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for pipeline in &mut config.pipelines {
            if pipeline.plugin.is_relative() {
                pipeline.plugin = base.join(&pipeline.plugin);
            }
            if let Some(canary) = &mut pipeline.canary
                && canary.file.is_relative()
            {
                canary.file = base.join(&canary.file);
            }
        }
        Ok(config)
    }

    /// Parses and validates config text; `label` names it in errors.
    pub fn parse(label: &str, text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: label.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate(label, text)?;
        config.fit_outputs_to_the_producer(label, text)?;
        Ok(config)
    }

    /// `message.max.bytes` of the pipelines' producers (what they take in
    /// one record), with the key it was read from, if written.
    pub fn message_max_bytes(&self) -> (Option<String>, Option<&str>) {
        const KEY: &str = "message.max.bytes";
        if let Some(v) = self.kafka.producer_properties.get(KEY) {
            return (
                Some(format!("kafka.producer_properties.\"{KEY}\"")),
                Some(v),
            );
        }
        if let Some(v) = self.kafka.properties.get(KEY) {
            return (Some(format!("kafka.properties.\"{KEY}\"")), Some(v));
        }
        (None, None)
    }

    /// Makes `limits.max_output_bytes` agree with the producer: derived
    /// from its `message.max.bytes` where not written, refused where
    /// written larger (the broker-side check, the topics' own
    /// `max.message.bytes`, is `sandpiper check`'s). An output the producer
    /// refuses costs its record a dead letter; a limit that promises more
    /// than the producer takes would make that the rule, not the exception.
    fn fit_outputs_to_the_producer(&mut self, label: &str, text: &str) -> Result<(), ConfigError> {
        let line_of = |key: &str| {
            text.lines()
                .position(|l| l.trim_start().starts_with(key))
                .map_or(1, |i| i + 1)
        };
        let invalid = |line: usize, key: &str, value: &str, reason: String| ConfigError::Invalid {
            path: label.to_owned(),
            line,
            key: key.to_owned(),
            value: value.to_owned(),
            reason,
        };
        let (key, written) = self.message_max_bytes();
        let producer_max = match written {
            None => DEFAULT_MESSAGE_MAX_BYTES,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if n > OUTPUT_HEADROOM => n,
                _ => {
                    let key = key.unwrap_or_default();
                    return Err(invalid(
                        line_of("\"message.max.bytes\""),
                        &key,
                        &format!("\"{v}\""),
                        format!("must be a number of bytes above {OUTPUT_HEADROOM}"),
                    ));
                }
            },
        };
        let fits = max_output_bytes_for(producer_max);
        let written: Vec<bool> = toml::from_str::<toml::Table>(text)
            .ok()
            .and_then(|t| t.get("pipeline")?.as_array().cloned())
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        p.get("limits")
                            .and_then(|l| l.get("max_output_bytes"))
                            .is_some()
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (i, p) in self.pipelines.iter_mut().enumerate() {
            if !written.get(i).copied().unwrap_or(false) {
                p.limits.max_output_bytes = fits;
                continue;
            }
            let limit = p.limits.max_output_bytes;
            if limit > fits {
                let producer = match &key {
                    Some(key) => format!("`{key}` is {producer_max}"),
                    None => format!(
                        "`kafka.producer_properties.\"message.max.bytes\"` is not set: librdkafka's default, {producer_max}"
                    ),
                };
                return Err(invalid(
                    line_of("max_output_bytes"),
                    "pipeline.limits.max_output_bytes",
                    &limit.to_string(),
                    format!(
                        "more than the producer takes in one record: {producer}, less {OUTPUT_HEADROOM} bytes \
                         for Sandpiper's headers; set it to at most {fits}, or raise message.max.bytes \
                         (and the topics' max.message.bytes) to at least {}",
                        limit + OUTPUT_HEADROOM
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate(&self, label: &str, text: &str) -> Result<(), ConfigError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].lines().count().max(1);
        // The first line holding `key = ...value...`, for checks that span keys.
        let find = |key: &str, value: &str| {
            text.lines()
                .position(|l| {
                    let l = l.trim_start();
                    l.starts_with(key) && l.contains(value)
                })
                .map(|i| i + 1)
        };
        let find_line = |key: &str, value: &str| find(key, value).unwrap_or(1);
        let invalid = |line: usize, key: &str, value: &str, reason: &str| ConfigError::Invalid {
            path: label.to_owned(),
            line,
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        if self.pipelines.is_empty() {
            return Err(invalid(
                1,
                "pipeline",
                "[]",
                "at least one [[pipeline]] is needed",
            ));
        }
        let mut names = HashSet::new();
        for p in &self.pipelines {
            let name = p.name();
            let line = line_of(p.name.span().start);
            let key = |k: &str| format!("pipeline.{k}");
            if !names.insert(name) {
                return Err(invalid(
                    line,
                    "pipeline.name",
                    &format!("\"{name}\""),
                    "two pipelines have this name",
                ));
            }
            if p.inputs.is_empty() {
                return Err(invalid(
                    find_line("inputs", "["),
                    &key("inputs"),
                    "[]",
                    &format!("pipeline `{name}` needs at least one input topic"),
                ));
            }
            for topic in [&p.output, &p.dead_letter] {
                if p.inputs.contains(topic) {
                    let which = if topic == &p.output {
                        "output"
                    } else {
                        "dead_letter"
                    };
                    return Err(invalid(
                        find_line(which, &topic.0),
                        &key(which),
                        &format!("\"{topic}\""),
                        "is also an input: the pipeline would consume its own records forever",
                    ));
                }
            }
            if p.output == p.dead_letter {
                return Err(invalid(
                    find_line("dead_letter", &p.dead_letter.0),
                    &key("dead_letter"),
                    &format!("\"{}\"", p.dead_letter),
                    "must differ from `output`, or failures could not be told from results",
                ));
            }
            let checks: [(&str, u64, bool, &str); 8] = [
                (
                    "limits.timeout_ms",
                    p.limits.timeout_ms,
                    p.limits.timeout_ms == 0,
                    "must be at least 1",
                ),
                (
                    "limits.memory_mb",
                    p.limits.memory_mb.into(),
                    p.limits.memory_mb == 0 || p.limits.memory_mb > 4096,
                    "must be 1 to 4096",
                ),
                (
                    "retry.max_attempts",
                    p.retry.max_attempts.into(),
                    p.retry.max_attempts == 0,
                    "must be at least 1",
                ),
                (
                    "retry.max_backoff_ms",
                    p.retry.max_backoff_ms,
                    p.retry.max_backoff_ms < p.retry.initial_backoff_ms,
                    "must be at least retry.initial_backoff_ms",
                ),
                (
                    "workers",
                    p.workers as u64,
                    p.workers == 0,
                    "must be at least 1",
                ),
                (
                    "partition_buffer",
                    p.partition_buffer as u64,
                    p.partition_buffer == 0,
                    "must be at least 1",
                ),
                (
                    "max_unacked",
                    p.max_unacked as u64,
                    p.max_unacked == 0,
                    "must be at least 1",
                ),
                (
                    "max_unacked_mb",
                    p.max_unacked_mb,
                    p.max_unacked_mb == 0,
                    "must be at least 1",
                ),
            ];
            for (k, value, bad, reason) in checks {
                if bad {
                    let short = k.rsplit('.').next().unwrap_or(k);
                    return Err(invalid(
                        find_line(short, &value.to_string()),
                        &key(k),
                        &value.to_string(),
                        reason,
                    ));
                }
            }
        }
        let slots: u64 = self
            .pipelines
            .iter()
            .map(PipelineConfig::instance_slots)
            .sum();
        let pool = self.runtime.pool_instances;
        if u64::from(pool) < slots {
            let each: Vec<String> = self
                .pipelines
                .iter()
                .map(|p| {
                    let isolation = match p.isolation {
                        Isolation::Reuse => "reuse",
                        Isolation::PerRecord => "per-record",
                    };
                    format!(
                        "`{}` {} ({} workers × {} under {isolation} + 1)",
                        p.name(),
                        p.instance_slots(),
                        p.workers,
                        p.isolation.slots_per_thread(),
                    )
                })
                .collect();
            // Not written, the default is too small: point at the pipeline
            // asking for the most.
            let line = find("pool_instances", &pool.to_string()).unwrap_or_else(|| {
                self.pipelines
                    .iter()
                    .max_by_key(|p| p.instance_slots())
                    .map_or(1, |p| line_of(p.name.span().start))
            });
            return Err(invalid(
                line,
                "runtime.pool_instances",
                &pool.to_string(),
                &format!(
                    "the pipelines may hold {slots} instances at once: {}; \
                     set it to at least {slots}",
                    each.join(", ")
                ),
            ));
        }
        let consumer = || {
            self.kafka
                .properties
                .iter()
                .chain(&self.kafka.consumer_properties)
        };
        if crate::kafka::is_next_gen_group(consumer())
            && let Some((key, value)) =
                consumer().find(|(k, _)| crate::kafka::CLASSIC_GROUP_ONLY.contains(&k.as_str()))
        {
            let section = if self.kafka.consumer_properties.contains_key(key) {
                "kafka.consumer_properties"
            } else {
                "kafka.properties"
            };
            return Err(invalid(
                find_line(&format!("\"{key}\""), ""),
                &format!("{section}.\"{key}\""),
                &format!("\"{value}\""),
                "a setting of the classic group protocol: with \"group.protocol\" = \"consumer\" \
                     (KIP-848) the broker assigns partitions and keeps sessions; remove it",
            ));
        }
        if self.kafka.properties.contains_key("group.id") {
            return Err(invalid(
                find_line("\"group.id\"", ""),
                "kafka.properties.\"group.id\"",
                "…",
                "set `kafka.group` or `pipeline.group` instead",
            ));
        }
        Ok(())
    }

    /// Whether any pipeline meters fuel, which the engine must then support.
    pub fn engine_settings(&self) -> EngineSettings {
        let mut settings = self.runtime.clone();
        settings.fuel |= self.pipelines.iter().any(|p| p.limits.fuel.is_some());
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
group = "orders-enricher"
[kafka.properties]
"security.protocol" = "SASL_SSL"

[[pipeline]]
name = "orders"
inputs = ["orders"]
output = "orders-out"
dead_letter = "orders-dlq"
plugin = "plugins/uppercase.wasm"
[pipeline.limits]
timeout_ms = 100
memory_mb = 64
[pipeline.retry]
max_attempts = 3
initial_backoff_ms = 100
max_backoff_ms = 10000

[admin]
listen = "127.0.0.1:9464"
"#;

    fn err(text: &str) -> String {
        Config::parse("test.toml", text)
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn the_documented_example_parses() {
        let c = Config::parse("test.toml", GOOD).expect("valid");
        assert_eq!(c.pipelines[0].name(), "orders");
        assert_eq!(c.pipelines[0].group(&c.kafka), "orders-enricher");
        assert_eq!(c.pipelines[0].limits.timeout_ms, 100);
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err(&GOOD.replace("memory_mb = 64", "memory_mb = 64\nmemroy = 3"));
        assert!(e.contains("memroy"), "{e}");
        assert!(e.contains("line 17"), "{e}");
    }

    #[test]
    fn bad_value_names_value_and_line() {
        let e = err(&GOOD.replace("timeout_ms = 100", "timeout_ms = \"fast\""));
        assert!(e.contains("line 15"), "{e}");
        assert!(e.contains("\"fast\""), "{e}");
        let e = err(&GOOD.replace("output = \"orders-out\"", "output = \"orders out\""));
        assert!(e.contains("orders out") && e.contains("line 11"), "{e}");
    }

    #[test]
    fn cross_key_errors_name_the_line() {
        let e = err(&GOOD.replace("output = \"orders-out\"", "output = \"orders\""));
        assert!(
            e.contains("line 11") && e.contains("pipeline.output"),
            "{e}"
        );
        let e = err(&GOOD.replace("timeout_ms = 100", "timeout_ms = 0"));
        assert!(
            e.contains("limits.timeout_ms") && e.contains("line 15"),
            "{e}"
        );
    }

    #[test]
    fn in_flight_budgets_default_and_refuse_zero() {
        let c = Config::parse("test.toml", GOOD).expect("valid");
        assert_eq!(c.pipelines[0].max_unacked, 4096);
        assert_eq!(c.pipelines[0].max_unacked_mb, 64);
        let e = err(&GOOD.replace("plugin = ", "max_unacked_mb = 0\nplugin = "));
        assert!(e.contains("max_unacked_mb") && e.contains("line 13"), "{e}");
    }

    #[test]
    fn max_output_bytes_agrees_with_what_the_producer_takes() {
        // Not written: derived from librdkafka's default message.max.bytes.
        let c = Config::parse("test.toml", GOOD).expect("valid");
        assert_eq!(c.pipelines[0].limits.max_output_bytes, 1_000_000 - 1024);
        // Derived from the producer's own setting.
        let raised = GOOD.replace(
            "[kafka.properties]",
            "[kafka.producer_properties]\n\"message.max.bytes\" = \"4000000\"\n[kafka.properties]",
        );
        let c = Config::parse("test.toml", &raised).expect("valid");
        assert_eq!(c.pipelines[0].limits.max_output_bytes, 4_000_000 - 1024);
        // Written within it: kept.
        let within = GOOD.replace(
            "memory_mb = 64",
            "memory_mb = 64\nmax_output_bytes = 500000",
        );
        let c = Config::parse("test.toml", &within).expect("valid");
        assert_eq!(c.pipelines[0].limits.max_output_bytes, 500_000);
        // Written above it: refused, naming both keys and the line.
        let above = GOOD.replace(
            "memory_mb = 64",
            "memory_mb = 64\nmax_output_bytes = 16777216",
        );
        let e = err(&above);
        assert!(
            e.contains("line 17")
                && e.contains("pipeline.limits.max_output_bytes")
                && e.contains("message.max.bytes")
                && e.contains("998976"),
            "{e}"
        );
        let e = err(&raised.replace(
            "memory_mb = 64",
            "memory_mb = 64\nmax_output_bytes = 5000000",
        ));
        assert!(
            e.contains("kafka.producer_properties.\"message.max.bytes\"` is 4000000"),
            "{e}"
        );
        // A message.max.bytes that is not a number names its key.
        let bad = GOOD.replace(
            "\"security.protocol\" = \"SASL_SSL\"",
            "\"message.max.bytes\" = \"lots\"",
        );
        let e = err(&bad);
        assert!(
            e.contains("kafka.properties.\"message.max.bytes\"") && e.contains("line 6"),
            "{e}"
        );
    }

    #[test]
    fn the_consumer_protocol_refuses_the_classic_protocols_settings() {
        let next_gen = GOOD.replace(
            "[kafka.properties]",
            "[kafka.consumer_properties]\n\"group.protocol\" = \"consumer\"\n[kafka.properties]",
        );
        Config::parse("test.toml", &next_gen).expect("valid");
        let e = err(&next_gen.replace(
            "\"group.protocol\" = \"consumer\"",
            "\"group.protocol\" = \"consumer\"\n\"session.timeout.ms\" = \"6000\"",
        ));
        assert!(
            e.contains("line 7")
                && e.contains("kafka.consumer_properties.\"session.timeout.ms\"")
                && e.contains("KIP-848"),
            "{e}"
        );
    }

    #[test]
    fn a_pool_too_small_for_the_plugin_threads_is_refused() {
        // 2 workers (the default) + 1 to load a new version.
        let small = GOOD.replace("[admin]", "[runtime]\npool_instances = 2\n\n[admin]");
        let e = err(&small);
        assert!(
            e.contains("runtime.pool_instances")
                && e.contains("line 23")
                && e.contains("at least 3"),
            "{e}"
        );
        let fits = small.replace("pool_instances = 2", "pool_instances = 3");
        Config::parse("test.toml", &fits).expect("3 slots are enough");
        // Per-record isolation: up to 8 per thread.
        let per_record = fits.replace(
            "[pipeline.limits]",
            "isolation = \"per-record\"\n[pipeline.limits]",
        );
        let e = err(&per_record);
        assert!(e.contains("at least 17") && e.contains("per-record"), "{e}");
        // Not written: the default (256) names the pipeline's line.
        let many = GOOD.replace("plugin = ", "workers = 300\nplugin = ");
        let e = err(&many);
        assert!(
            e.contains("runtime.pool_instances") && e.contains("= 256") && e.contains("line 9"),
            "{e}"
        );
    }

    #[test]
    fn missing_pipeline_is_refused() {
        let text = "pipeline = []\n[kafka]\nbrokers = \"x:1\"\ngroup = \"g\"\n";
        assert!(err(text).contains("at least one"));
    }
}
