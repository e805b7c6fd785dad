//! Health: what `/healthz` and `/readyz` report, and what makes the
//! process exit so its supervisor restarts it.
//!
//! Liveness fails on a dead worker, a fatal client error, or a partition
//! with records in flight and no progress for its stall timeout: the
//! "alive but not consuming" state this product exists to prevent.
//! Readiness additionally needs a broker connection, an assignment, and no
//! partition blocked on the broker or offline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::kafka::{BrokerStats, ClientEvents};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Milliseconds since the process's health clock started.
#[derive(Debug)]
struct Clock(Instant);

impl Clock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// Progress of one assigned partition, updated by its worker and acker.
#[derive(Debug)]
pub struct PartitionProgress {
    pub topic: String,
    pub partition: i32,
    /// Highest offset received from the consumer (-1: none yet).
    pub received: AtomicI64,
    /// Highest offset whose outputs or dead letter are acknowledged (-1: none).
    pub completed: AtomicI64,
    /// When `completed` last moved (health-clock ms).
    last_progress_ms: AtomicU64,
    /// Set while the partition waits on the broker (produce retrying).
    blocked: Mutex<Option<String>>,
    /// Set when the partition cannot go on without an operator (a dead
    /// letter its topic refuses for good): liveness fails with it.
    stopped: Mutex<Option<String>>,
    /// The assignment was lost: nothing may be stored for it any more.
    pub lost: AtomicBool,
    clock: Arc<Clock>,
}

impl PartitionProgress {
    pub fn received(&self, offset: i64) {
        self.received.fetch_max(offset, Ordering::Relaxed);
        // An idle partition that receives a record has made progress too:
        // the stall clock starts with the first unfinished record.
        if self.completed.load(Ordering::Relaxed) + 1 >= offset {
            self.touch();
        }
    }

    pub fn completed(&self, offset: i64) {
        self.completed.fetch_max(offset, Ordering::Relaxed);
        self.touch();
    }

    fn touch(&self) {
        self.last_progress_ms
            .store(self.clock.now_ms(), Ordering::Relaxed);
    }

    pub fn set_blocked(&self, reason: Option<String>) {
        *lock(&self.blocked) = reason;
    }

    pub fn blocked(&self) -> Option<String> {
        lock(&self.blocked).clone()
    }

    /// The partition stops for good, for `reason` (kept once set).
    pub fn set_stopped(&self, reason: String) {
        lock(&self.stopped).get_or_insert(reason);
    }

    pub fn stopped(&self) -> Option<String> {
        lock(&self.stopped).clone()
    }

    /// Records received but not yet finished.
    pub fn in_flight(&self) -> i64 {
        let received = self.received.load(Ordering::Relaxed);
        let completed = self.completed.load(Ordering::Relaxed);
        (received - completed).max(0)
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(
            self.clock
                .now_ms()
                .saturating_sub(self.last_progress_ms.load(Ordering::Relaxed)),
        )
    }
}

/// Signals that a partition's work has fully ended (its acker finished).
#[derive(Debug, Default)]
pub struct Done {
    done: Mutex<bool>,
    cv: Condvar,
}

impl Done {
    pub fn set(&self) {
        *lock(&self.done) = true;
        self.cv.notify_all();
    }

    /// Blocks until done or `deadline`; true when done.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let mut done = lock(&self.done);
        while !*done {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            done = self
                .cv
                .wait_timeout(done, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// Health of one pipeline.
#[derive(Debug)]
pub struct PipelineHealth {
    pub name: String,
    stall_timeout: Duration,
    clock: Arc<Clock>,
    brokers_up: AtomicU64,
    /// Whether any statistics arrived yet (until then, connectivity is unknown).
    stats_seen: AtomicBool,
    last_client_error: Mutex<Option<String>>,
    fatal: Mutex<Option<String>>,
    partitions: Mutex<BTreeMap<(String, i32), Arc<PartitionProgress>>>,
    /// Partitions without a leader, or whose leader's broker is down, with
    /// why; from the latest statistics of the client that reports them.
    offline: Mutex<BTreeMap<(String, i32), String>>,
    /// Consumer lag per partition from the statistics.
    lag: Mutex<BTreeMap<(String, i32), i64>>,
    /// Where lag and committed offsets are also reported.
    metrics: std::sync::OnceLock<crate::metrics::PipelineMetrics>,
}

impl PipelineHealth {
    pub fn new(name: &str, stall_timeout: Duration) -> Self {
        Self {
            name: name.to_owned(),
            stall_timeout,
            clock: Arc::new(Clock(Instant::now())),
            brokers_up: AtomicU64::new(0),
            stats_seen: AtomicBool::new(false),
            last_client_error: Mutex::new(None),
            fatal: Mutex::new(None),
            partitions: Mutex::new(BTreeMap::new()),
            offline: Mutex::new(BTreeMap::new()),
            lag: Mutex::new(BTreeMap::new()),
            metrics: std::sync::OnceLock::new(),
        }
    }

    /// Reports lag and committed offsets as metrics too.
    pub fn set_metrics(&self, metrics: crate::metrics::PipelineMetrics) {
        let _ = self.metrics.set(metrics);
    }

    /// Registers a newly assigned partition.
    pub fn assign(&self, topic: &str, partition: i32) -> Arc<PartitionProgress> {
        let progress = Arc::new(PartitionProgress {
            topic: topic.to_owned(),
            partition,
            received: AtomicI64::new(-1),
            completed: AtomicI64::new(-1),
            last_progress_ms: AtomicU64::new(self.clock.now_ms()),
            blocked: Mutex::new(None),
            stopped: Mutex::new(None),
            lost: AtomicBool::new(false),
            clock: self.clock.clone(),
        });
        lock(&self.partitions).insert((topic.to_owned(), partition), progress.clone());
        progress
    }

    pub fn unassign(&self, topic: &str, partition: i32) {
        lock(&self.partitions).remove(&(topic.to_owned(), partition));
    }

    /// Something that must end the process (a dead worker, a fatal client error).
    pub fn set_fatal(&self, reason: String) {
        tracing::error!(pipeline = %self.name, reason, "Pipeline failed; the process will exit so it can be restarted.");
        lock(&self.fatal).get_or_insert(reason);
    }

    pub fn assigned(&self) -> Vec<Arc<PartitionProgress>> {
        lock(&self.partitions).values().cloned().collect()
    }

    /// Liveness problems (empty when alive).
    pub fn liveness_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(fatal) = lock(&self.fatal).clone() {
            problems.push(format!("pipeline {}: {fatal}", self.name));
        }
        for p in lock(&self.partitions).values() {
            if let Some(reason) = p.stopped() {
                problems.push(format!(
                    "pipeline {}: partition {}/{} {reason}",
                    self.name, p.topic, p.partition
                ));
                continue;
            }
            if p.in_flight() > 0 && p.blocked().is_none() && p.idle_for() > self.stall_timeout {
                problems.push(format!(
                    "pipeline {}: partition {}/{} stalled: {} records in flight, no progress for {:?}",
                    self.name,
                    p.topic,
                    p.partition,
                    p.in_flight(),
                    p.idle_for()
                ));
            }
        }
        problems
    }

    /// Readiness problems (empty when ready).
    pub fn readiness_problems(&self) -> Vec<String> {
        let mut problems = self.liveness_problems();
        let name = &self.name;
        if !self.stats_seen.load(Ordering::Relaxed) || self.brokers_up.load(Ordering::Relaxed) == 0
        {
            let why = lock(&self.last_client_error)
                .clone()
                .unwrap_or_else(|| "no broker connection yet".into());
            problems.push(format!("pipeline {name}: not connected to Kafka: {why}"));
        }
        let partitions = lock(&self.partitions);
        if partitions.is_empty() {
            problems.push(format!("pipeline {name}: no partitions assigned"));
        }
        for p in partitions.values() {
            if let Some(reason) = p.blocked() {
                problems.push(format!(
                    "pipeline {name}: partition {}/{} blocked: {reason}",
                    p.topic, p.partition
                ));
            }
        }
        for ((topic, partition), why) in lock(&self.offline).iter() {
            if partitions.contains_key(&(topic.clone(), *partition)) {
                problems.push(format!(
                    "pipeline {name}: partition {topic}/{partition} is {why}"
                ));
            }
        }
        problems
    }

    /// Partitions with their lag, for the status output.
    pub fn lag(&self) -> BTreeMap<(String, i32), i64> {
        lock(&self.lag).clone()
    }
}

impl ClientEvents for PipelineHealth {
    fn client_error(&self, error: &str, fatal: bool) {
        *lock(&self.last_client_error) = Some(error.to_owned());
        if fatal {
            self.set_fatal(format!("fatal Kafka client error: {error}"));
        }
    }

    fn stats(&self, stats: BrokerStats) {
        self.stats_seen.store(true, Ordering::Relaxed);
        self.brokers_up
            .store(stats.brokers_up as u64, Ordering::Relaxed);
        let mut lag = lock(&self.lag);
        let mut offline = lock(&self.offline);
        // The consumer and the producer report different topics: replace
        // only what this snapshot covers, or each would clear the other's.
        let topics: std::collections::BTreeSet<&str> =
            stats.partitions.iter().map(|p| p.topic.as_str()).collect();
        let before = std::mem::take(&mut *offline);
        for p in &stats.partitions {
            if let Some(metrics) = self.metrics.get() {
                metrics.partition_stats(&p.topic, p.partition, p.consumer_lag, p.committed_offset);
            }
            let why = if p.leader < 0 {
                "offline (no leader)".to_owned()
            } else if p.leader_down {
                format!("unavailable (its leader, broker {}, is down)", p.leader)
            } else {
                if p.consumer_lag >= 0 {
                    lag.insert((p.topic.clone(), p.partition), p.consumer_lag);
                }
                continue;
            };
            let key = (p.topic.clone(), p.partition);
            if !before.contains_key(&key) {
                tracing::warn!(pipeline = %self.name, topic = %p.topic, partition = p.partition,
                    "Partition {why}; the others keep flowing.");
            }
            offline.insert(key, why);
        }
        for (key, why) in before {
            if !topics.contains(key.0.as_str()) {
                offline.insert(key, why);
            } else if !offline.contains_key(&key) {
                tracing::info!(pipeline = %self.name, topic = %key.0, partition = key.1,
                    "Partition available again.");
            }
        }
        drop(offline);
        if stats.brokers_up > 0 {
            *lock(&self.last_client_error) = None;
        }
    }
}

/// The process's health: every pipeline's, and that of the tasks around
/// them (deploy watchers, the control-topic follower, the admin listener).
#[derive(Debug, Default)]
pub struct Health {
    pipelines: Mutex<Vec<Arc<PipelineHealth>>>,
    /// A background task that ended: the process must exit.
    fatal: Mutex<Option<String>>,
    /// What keeps the host from being ready besides its pipelines, by
    /// component (the control-topic follower failing to read, say).
    degraded: Mutex<BTreeMap<&'static str, String>>,
}

/// The text of a task's panic payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// A health report as served over HTTP.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub reasons: Vec<String>,
}

impl Health {
    pub fn add(&self, pipeline: Arc<PipelineHealth>) {
        lock(&self.pipelines).push(pipeline);
    }

    pub fn pipelines(&self) -> Vec<Arc<PipelineHealth>> {
        lock(&self.pipelines).clone()
    }

    /// Something outside the pipelines that must end the process (a
    /// background task that ended); the first reason is kept.
    pub fn set_fatal(&self, reason: String) {
        tracing::error!(
            reason,
            "Host failed; the process will exit so it can be restarted."
        );
        lock(&self.fatal).get_or_insert(reason);
    }

    /// Marks `component` as keeping the host from being ready (`Some`), or
    /// as well again (`None`).
    pub fn set_degraded(&self, component: &'static str, reason: Option<String>) {
        let mut degraded = lock(&self.degraded);
        match reason {
            Some(reason) => degraded.insert(component, reason),
            None => degraded.remove(component),
        };
    }

    fn host_problems(&self) -> Vec<String> {
        lock(&self.fatal).iter().cloned().collect()
    }

    pub fn liveness(&self) -> Report {
        let mut reasons = self.host_problems();
        reasons.extend(self.pipelines().iter().flat_map(|p| p.liveness_problems()));
        Report {
            ok: reasons.is_empty(),
            reasons,
        }
    }

    pub fn readiness(&self) -> Report {
        let mut reasons = self.host_problems();
        reasons.extend(self.pipelines().iter().flat_map(|p| p.readiness_problems()));
        reasons.extend(
            lock(&self.degraded)
                .iter()
                .map(|(component, why)| format!("{component}: {why}")),
        );
        Report {
            ok: reasons.is_empty(),
            reasons,
        }
    }
}
