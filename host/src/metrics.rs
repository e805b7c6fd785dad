//! Prometheus metrics, all named here (prefix `sandpiper_`), served at
//! `/metrics` on the admin listener.
//!
//! The hot path never builds label sets: partitions and pipelines take
//! their counter handles once (a handle shares the family's value), so
//! counting a record is an atomic add.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::record::FailureKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    pub pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub pipeline: String,
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub pipeline: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub pipeline: String,
    pub plugin: String,
    pub sha256: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeployLabels {
    pub pipeline: String,
    pub result: String,
}

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    consumed: Family<PartitionLabels, Counter>,
    succeeded: Family<PartitionLabels, Counter>,
    dead_lettered: Family<PartitionLabels, Counter>,
    failed: Family<KindLabels, Counter>,
    retried: Family<PipelineLabels, Counter>,
    outputs: Family<PipelineLabels, Counter>,
    instantiations: Family<PipelineLabels, Counter>,
    call_seconds: Family<PipelineLabels, CallSeconds>,
    lag: Family<PartitionLabels, Gauge>,
    committed: Family<PartitionLabels, Gauge>,
    plugin_info: Family<PluginLabels, Gauge>,
    deploys: Family<DeployLabels, Counter>,
    offset_store_failures: Family<PipelineLabels, Counter>,
    partitions_stopped: Family<PipelineLabels, Gauge>,
    /// Errors of the fleet's control-topic follower (reading or applying).
    pub control_errors: Counter,
    /// Background tasks (deploy watchers, the control follower, the admin
    /// listener...) that ended while the host was running.
    pub tasks_failed: Counter,
    rss_bytes: Gauge,
    threads: Gauge,
    open_fds: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sandpiper");
        let m = Self {
            consumed: Family::default(),
            succeeded: Family::default(),
            dead_lettered: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            outputs: Family::default(),
            instantiations: Family::default(),
            call_seconds: Family::default(),
            lag: Family::default(),
            committed: Family::default(),
            plugin_info: Family::default(),
            deploys: Family::default(),
            offset_store_failures: Family::default(),
            partitions_stopped: Family::default(),
            control_errors: Counter::default(),
            tasks_failed: Counter::default(),
            rss_bytes: Gauge::default(),
            threads: Gauge::default(),
            open_fds: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "records_consumed",
            "Records received from the input topics",
            m.consumed.clone(),
        );
        registry.register(
            "records_succeeded",
            "Records whose plugin call returned outputs",
            m.succeeded.clone(),
        );
        registry.register(
            "records_dead_lettered",
            "Records sent to the dead-letter topic",
            m.dead_lettered.clone(),
        );
        registry.register(
            "records_failed",
            "Plugin calls that failed, by failure kind",
            m.failed.clone(),
        );
        registry.register(
            "records_retried",
            "Plugin calls retried (plugin retry or host-side failure)",
            m.retried.clone(),
        );
        registry.register(
            "outputs_produced",
            "Output records handed to the producer",
            m.outputs.clone(),
        );
        registry.register(
            "instance_instantiations",
            "Plugin instances created",
            m.instantiations.clone(),
        );
        registry.register(
            "plugin_call_seconds",
            "Duration of one plugin call",
            m.call_seconds.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages between the consumer's position and the high watermark",
            m.lag.clone(),
        );
        registry.register(
            "committed_offset",
            "The consumer group's committed offset",
            m.committed.clone(),
        );
        registry.register(
            "plugin_info",
            "The plugin version a pipeline runs (value 1)",
            m.plugin_info.clone(),
        );
        registry.register(
            "plugin_deploys",
            "Deploys by result (swapped, refused, rolled-back)",
            m.deploys.clone(),
        );
        registry.register(
            "offset_store_failures",
            "Offsets of finished records that librdkafka refused to store",
            m.offset_store_failures.clone(),
        );
        registry.register(
            "partitions_stopped",
            "Partitions stopped for good: a dead letter their dead-letter topic refuses",
            m.partitions_stopped.clone(),
        );
        registry.register(
            "control_errors",
            "Errors reading or applying the fleet's control topic",
            m.control_errors.clone(),
        );
        registry.register(
            "background_task_failures",
            "Background tasks that ended while the host ran (the host then exits)",
            m.tasks_failed.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident set size",
            m.rss_bytes.clone(),
        );
        registry.register(
            "process_threads",
            "Threads of the process",
            m.threads.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            m.open_fds.clone(),
        );
        Self { registry, ..m }
    }

    /// The text exposition, with process figures read now.
    pub fn encode(&self) -> String {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
                .unwrap_or(0)
        };
        self.rss_bytes.set(field("VmRSS:") * 1024);
        self.threads.set(field("Threads:"));
        self.open_fds
            .set(std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Handles for one pipeline.
    pub fn pipeline(self: &Arc<Self>, pipeline: &str) -> PipelineMetrics {
        let labels = PipelineLabels {
            pipeline: pipeline.to_owned(),
        };
        PipelineMetrics {
            pipeline: pipeline.to_owned(),
            retried: self.retried.get_or_create(&labels).clone(),
            outputs: self.outputs.get_or_create(&labels).clone(),
            instantiations: self.instantiations.get_or_create(&labels).clone(),
            call_seconds: self.call_seconds.get_or_create(&labels).clone(),
            offset_store_failures: self.offset_store_failures.get_or_create(&labels).clone(),
            partitions_stopped: self.partitions_stopped.get_or_create(&labels).clone(),
            failed: FailureKind::ALL
                .iter()
                .map(|k| {
                    let l = KindLabels {
                        pipeline: pipeline.to_owned(),
                        kind: k.as_str().to_owned(),
                    };
                    (*k, self.failed.get_or_create(&l).clone())
                })
                .collect(),
            last_plugin: Arc::default(),
            all: self.clone(),
        }
    }
}

/// Metric handles of one pipeline.
#[derive(Debug, Clone)]
pub struct PipelineMetrics {
    pipeline: String,
    pub retried: Counter,
    pub outputs: Counter,
    pub instantiations: Counter,
    pub call_seconds: CallSeconds,
    pub offset_store_failures: Counter,
    pub partitions_stopped: Gauge,
    failed: Vec<(FailureKind, Counter)>,
    /// The `plugin_info` series set last, to remove it on a swap.
    last_plugin: Arc<std::sync::Mutex<Option<PluginLabels>>>,
    all: Arc<Metrics>,
}

impl PipelineMetrics {
    pub fn failed(&self, kind: FailureKind) {
        if let Some((_, c)) = self.failed.iter().find(|(k, _)| *k == kind) {
            c.inc();
        }
    }

    fn partition_labels(&self, topic: &str, partition: i32) -> PartitionLabels {
        PartitionLabels {
            pipeline: self.pipeline.clone(),
            topic: topic.to_owned(),
            partition: partition.to_string(),
        }
    }

    /// Handles for one partition.
    pub fn partition(&self, topic: &str, partition: i32) -> PartitionMetrics {
        let l = self.partition_labels(topic, partition);
        PartitionMetrics {
            consumed: self.all.consumed.get_or_create(&l).clone(),
            succeeded: self.all.succeeded.get_or_create(&l).clone(),
            dead_lettered: self.all.dead_lettered.get_or_create(&l).clone(),
        }
    }

    /// Lag and committed offset from the client statistics.
    pub fn partition_stats(&self, topic: &str, partition: i32, lag: i64, committed: i64) {
        let l = self.partition_labels(topic, partition);
        if lag >= 0 {
            self.all.lag.get_or_create(&l).set(lag);
        }
        if committed >= 0 {
            self.all.committed.get_or_create(&l).set(committed);
        }
    }

    /// Marks `plugin` as the version this pipeline runs (and no other).
    pub fn plugin_version(&self, plugin: &crate::runtime::PluginId) {
        let labels = PluginLabels {
            pipeline: self.pipeline.clone(),
            plugin: plugin.to_string(),
            sha256: plugin.digest_hex(),
        };
        let mut last = self
            .last_plugin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = last.take() {
            self.all.plugin_info.remove(&old);
        }
        self.all.plugin_info.get_or_create(&labels).set(1);
        *last = Some(labels);
    }

    pub fn deploy(&self, result: &str) {
        self.all
            .deploys
            .get_or_create(&DeployLabels {
                pipeline: self.pipeline.clone(),
                result: result.to_owned(),
            })
            .inc();
    }
}

/// Metric handles of one partition.
#[derive(Debug, Clone)]
pub struct PartitionMetrics {
    pub consumed: Counter,
    pub succeeded: Counter,
    pub dead_lettered: Counter,
}

/// Upper bounds of `plugin_call_seconds`' buckets, in nanoseconds: 1 µs to
/// about 16 s, by fours; a last bucket takes the rest.
const CALL_BOUNDS_NS: [u64; 13] = {
    let mut bounds = [1_000; 13];
    let mut i = 1;
    while i < bounds.len() {
        bounds[i] = bounds[i - 1] * 4;
        i += 1;
    }
    bounds
};

/// `plugin_call_seconds`, one per pipeline: a histogram of plugin call
/// times without a lock. The plugin threads tally each batch's records on
/// their own stack ([`CallSeconds::batch`]) and add the tally once;
/// prometheus-client's `Histogram` takes a mutex per observation, which
/// was a sixth of a plugin thread's time per 100-byte record.
#[derive(Debug, Clone, Default)]
pub struct CallSeconds(Arc<CallCounts>);

#[derive(Debug, Default)]
struct CallCounts {
    /// Observations per bucket (not cumulative), the last one unbounded.
    buckets: [AtomicU64; CALL_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl CallSeconds {
    /// A tally of calls, added to the histogram when dropped.
    pub fn batch(&self) -> CallTimes<'_> {
        CallTimes {
            into: &self.0,
            buckets: [0; CALL_BOUNDS_NS.len() + 1],
            sum_ns: 0,
        }
    }
}

/// Calls tallied for a [`CallSeconds`], added to it on drop.
#[derive(Debug)]
pub struct CallTimes<'a> {
    into: &'a CallCounts,
    buckets: [u64; CALL_BOUNDS_NS.len() + 1],
    sum_ns: u64,
}

impl CallTimes<'_> {
    pub fn observe(&mut self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = CALL_BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(CALL_BOUNDS_NS.len());
        self.buckets[bucket] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }
}

impl Drop for CallTimes<'_> {
    fn drop(&mut self) {
        for (total, &n) in self.into.buckets.iter().zip(&self.buckets) {
            if n > 0 {
                total.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.into.sum_ns.fetch_add(self.sum_ns, Ordering::Relaxed);
    }
}

impl TypedMetric for CallSeconds {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for CallSeconds {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = CALL_BOUNDS_NS.iter().map(|&ns| ns as f64 / 1e9);
        let buckets: Vec<(f64, u64)> = bounds
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.0.buckets.iter().map(|n| n.load(Ordering::Relaxed)))
            .collect();
        // The count from the buckets read, so that it equals `+Inf`'s.
        let count = buckets.iter().map(|&(_, n)| n).sum();
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_seconds_are_a_prometheus_histogram_added_per_batch() {
        let metrics = Arc::new(Metrics::new());
        let pipeline = metrics.pipeline("p");
        {
            let mut batch = pipeline.call_seconds.batch();
            batch.observe(Duration::from_nanos(1_000)); // on the first bound
            batch.observe(Duration::from_micros(3));
            batch.observe(Duration::from_secs(60)); // past the last bound
            assert!(
                !metrics
                    .encode()
                    .contains("call_seconds_count{pipeline=\"p\"} 3"),
                "added when the batch is dropped"
            );
        }
        let text = metrics.encode();
        let line = |suffix: &str| {
            let prefix = format!("sandpiper_plugin_call_seconds_{suffix} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no {prefix}in\n{text}"))
                .to_owned()
        };
        assert_eq!(line("count{pipeline=\"p\"}"), "3");
        assert_eq!(line("sum{pipeline=\"p\"}"), "60.000004");
        assert!(text.contains("# TYPE sandpiper_plugin_call_seconds histogram"));
        // Cumulative, as Prometheus reads them.
        assert_eq!(line("bucket{le=\"0.000001\",pipeline=\"p\"}"), "1");
        assert_eq!(line("bucket{le=\"0.000004\",pipeline=\"p\"}"), "2");
        assert_eq!(line("bucket{le=\"16.777216\",pipeline=\"p\"}"), "2");
        assert_eq!(line("bucket{le=\"+Inf\",pipeline=\"p\"}"), "3");
    }
}
