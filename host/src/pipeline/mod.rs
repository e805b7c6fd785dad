//! A pipeline: consume its inputs, run each record through its plugin,
//! produce the outputs or a dead letter, and store offsets only for records
//! whose results the broker acknowledged.
//!
//! It never drops a record: a record is either finished (outputs or dead
//! letter acknowledged, offset stored) or left uncommitted for the next
//! owner of its partition. It never stalls silently: every task it spawns
//! is watched, and a dead one makes the process exit (see `health`).
//!
//! # Layout
//! - `mod.rs`: the pipeline's shared state, its event loop (polls the
//!   consumer, which serves rebalances), rebalances, start and stop.
//! - `partition`: per-partition worker (reads the partition's own queue,
//!   runs the plugin in offset order) and acker
//!   (in-order acknowledgements, offset store).
//! - `workers`: the plugin threads, each with its instance.
//! - `deadletter`: output and dead-letter records and their headers.
//! - `backoff`: exponential backoff with jitter.

mod backoff;
pub mod deadletter;
mod partition;
mod workers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{PipelineConfig, RetryConfig};
use crate::deploy::VersionStats;
use crate::health::{Done, PipelineHealth};
use crate::kafka::{ClientSettings, Consumer, Producer, RebalanceListener};
use crate::metrics::PipelineMetrics;
use crate::ratelimit::LogLimiter;
use crate::record::{FailureKind, Record};
use crate::runtime::Plugin;
use deadletter::Labels;
use partition::Partition;
use workers::Workers;

pub use workers::Workers as PluginWorkers;

/// Totals since start, for the status page, the demo and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub consumed: AtomicU64,
    pub succeeded: AtomicU64,
    pub outputs: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Failed plugin calls, indexed like [`FailureKind::ALL`].
    pub failed: [AtomicU64; FailureKind::ALL.len()],
}

impl Counters {
    pub fn failed(&self, kind: FailureKind) {
        if let Some(i) = FailureKind::ALL.iter().position(|k| *k == kind) {
            self.failed[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Failures by kind name, for display.
    pub fn failed_by_kind(&self) -> Vec<(&'static str, u64)> {
        FailureKind::ALL
            .iter()
            .zip(&self.failed)
            .map(|(k, n)| (k.as_str(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// An assigned partition.
struct Assigned {
    part: Arc<Partition>,
    done: Arc<Done>,
}

/// State shared by a pipeline's event loop, partitions and rebalance callbacks.
pub(crate) struct Shared {
    name: String,
    labels: Labels,
    retry: RetryConfig,
    /// Plugin instances; the deployer swaps versions through it.
    workers: Arc<Workers>,
    /// Outcome counts per plugin version (automatic rollback, status).
    versions: Arc<VersionStats>,
    metrics: PipelineMetrics,
    producer: Producer,
    /// Set right after creation (the consumer's callbacks need `Shared` first).
    consumer: OnceLock<Consumer>,
    assigned: Mutex<HashMap<String, HashMap<i32, Assigned>>>,
    health: Arc<PipelineHealth>,
    counters: Arc<Counters>,
    logs: LogLimiter,
    max_unacked: usize,
    /// Bytes of outputs per partition that may await acknowledgement.
    max_unacked_bytes: usize,
    /// How long a revoke waits for in-flight records.
    revoke_timeout: Duration,
    tasks: TaskTracker,
    runtime: tokio::runtime::Handle,
}

impl Shared {
    fn consumer(&self) -> &Consumer {
        // Set in `Pipeline::start` before the consumer is subscribed, so
        // before any callback or partition task can run.
        self.consumer
            .get()
            .expect("the consumer is set before subscribing")
    }

    fn assigned(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<i32, Assigned>>> {
        self.assigned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns a task whose panic marks the pipeline fatal instead of vanishing.
    fn spawn_watched<F>(self: &Arc<Self>, what: String, future: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = self.tasks.spawn_on(future, &self.runtime);
        let health = self.health.clone();
        self.tasks.spawn_on(
            async move {
                if let Err(error) = handle.await
                    && error.is_panic()
                {
                    let message = crate::health::panic_message(&*error.into_panic());
                    health.set_fatal(format!("{what} panicked: {message}"));
                }
            },
            &self.runtime,
        );
    }

    /// Starts work on newly assigned partitions.
    fn assign(self: &Arc<Self>, partitions: &[(String, i32)]) {
        let mut assigned = self.assigned();
        for (topic, partition) in partitions {
            let by_partition = assigned.entry(topic.clone()).or_default();
            if by_partition.contains_key(partition) {
                continue;
            }
            // Before the partition is assigned (see `Context::pre_rebalance`),
            // so all its records arrive in its own queue.
            let Some(queue) = self.consumer().split(topic, *partition) else {
                self.health.set_fatal(format!(
                    "cannot give partition {topic}/{partition} its own queue"
                ));
                continue;
            };
            let progress = self.health.assign(topic, *partition);
            let (batch, ack_capacity) = partition::batching(self.max_unacked);
            let part = Arc::new(Partition {
                shared: self.clone(),
                topic: topic.clone(),
                partition: *partition,
                progress,
                cancel: CancellationToken::new(),
                metrics: self.metrics.partition(topic, *partition),
                unacked_bytes: Arc::new(tokio::sync::Semaphore::new(self.max_unacked_bytes)),
                batch,
            });
            let (ack_tx, ack_rx) = mpsc::channel(ack_capacity);
            let done = Arc::new(Done::default());
            self.spawn_watched(
                format!("worker of {topic}/{partition}"),
                partition::worker(part.clone(), queue, ack_tx),
            );
            self.spawn_watched(
                format!("acker of {topic}/{partition}"),
                partition::acker(part.clone(), ack_rx, done.clone()),
            );
            by_partition.insert(*partition, Assigned { part, done });
        }
    }

    /// Stops partitions and waits, until `deadline`, for their acknowledged
    /// work to be stored. Blocking: called from the rebalance callback.
    fn revoke(&self, partitions: &[(String, i32)], lost: bool, deadline: Instant) {
        let removed: Vec<Assigned> = {
            let mut assigned = self.assigned();
            partitions
                .iter()
                .filter_map(|(topic, partition)| {
                    assigned.get_mut(topic.as_str())?.remove(partition)
                })
                .collect()
        };
        for entry in &removed {
            if lost {
                entry.part.progress.lost.store(true, Ordering::Relaxed);
            }
            entry.part.cancel.cancel();
        }
        for entry in removed {
            let (topic, partition) = (&entry.part.topic, entry.part.partition);
            if !lost && !entry.done.wait_until(deadline) {
                tracing::warn!(pipeline = %self.name, %topic, partition,
                    "Revoked partition still had records in flight at the deadline; its next owner will repeat them.");
            }
            self.health.unassign(topic, partition);
        }
    }

    /// A record that reached the consumer's main queue. Every assigned
    /// partition has its own queue, so only records of partitions no longer
    /// ours arrive here (their owner fetches them from the last commit).
    /// One of ours would mean its queue was split too late and its worker
    /// may be past it: no more offsets are stored for that partition, and
    /// the process exits so the group hands the partition on from its last
    /// commit.
    fn stray(&self, record: &Record) {
        let assigned = self.assigned();
        let Some(entry) = assigned
            .get(record.topic.as_str())
            .and_then(|r| r.get(&record.partition))
        else {
            return;
        };
        entry.part.progress.lost.store(true, Ordering::Relaxed);
        self.health.set_fatal(format!(
            "record {}/{}@{} arrived outside its partition's queue",
            record.topic, record.partition, record.offset
        ));
    }
}

/// Bridges consumer rebalance callbacks to the pipeline without a cycle.
struct Listener(Weak<Shared>);

impl RebalanceListener for Listener {
    fn revoking(&self, partitions: &[(String, i32)], lost: bool) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        let revoke = || shared.revoke(partitions, lost, Instant::now() + shared.revoke_timeout);
        // The callback runs inside the event loop's poll, on a tokio worker,
        // and `revoke` blocks until the partitions' tasks finish. Cancelled,
        // those tasks may be woken onto this very worker (its LIFO slot,
        // which no other worker steals): blocking it in place hands them to
        // the others. Without this, a revoke waited out its whole deadline
        // in 2 of 5 classic and 6 of 8 KIP-848 rebalances on Apache Kafka.
        let on_worker = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if on_worker {
            tokio::task::block_in_place(revoke);
        } else {
            revoke();
        }
    }

    fn assigned(&self, partitions: &[(String, i32)]) {
        if let Some(shared) = self.0.upgrade() {
            shared.assign(partitions);
        }
    }
}

/// A running pipeline.
pub struct Pipeline {
    shared: Arc<Shared>,
    stop: CancellationToken,
    /// Cancelled by the event loop when it ends, however it ends.
    events_done: CancellationToken,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// What a pipeline needs to start.
#[derive(Debug)]
pub struct PipelineSpec {
    pub config: PipelineConfig,
    pub client: ClientSettings,
    pub plugin: Arc<Plugin>,
    pub health: Arc<PipelineHealth>,
    pub metrics: PipelineMetrics,
}

impl Pipeline {
    /// Creates the pipeline's two clients (once, for its whole life),
    /// subscribes and starts polling.
    pub fn start(spec: PipelineSpec) -> anyhow::Result<Self> {
        let PipelineSpec {
            config,
            client,
            plugin,
            health,
            metrics,
        } = spec;
        metrics.plugin_version(plugin.id());
        let name = config.name().to_owned();
        // Each partition's records wait in its own librdkafka queue, and
        // `partition_buffer` is how many librdkafka keeps fetched there (an
        // explicit `queued.min.messages` wins).
        let mut client = client;
        const PREFETCH: &str = "queued.min.messages";
        if !client.properties.contains_key(PREFETCH) {
            client
                .consumer_properties
                .entry(PREFETCH.to_owned())
                .or_insert_with(|| config.partition_buffer.to_string());
        }
        let producer = Producer::new(&client, &name, health.clone())?;
        let shared = Arc::new(Shared {
            name: name.clone(),
            labels: Labels {
                pipeline: name.clone(),
                group: client.group.clone(),
                output: config.output.0.clone(),
                dead_letter: config.dead_letter.0.clone(),
                plugin_header: config.plugin_header,
            },
            retry: config.retry.clone(),
            workers: Arc::new(
                Workers::new(&name, plugin, config.workers, metrics.clone())
                    .with_context(|| format!("starting the plugin threads of pipeline {name}"))?,
            ),
            metrics,
            versions: Arc::new(VersionStats::default()),
            producer,
            consumer: OnceLock::new(),
            assigned: Mutex::new(HashMap::new()),
            health: health.clone(),
            counters: Arc::new(Counters::default()),
            logs: LogLimiter::new(Duration::from_secs(10)),
            max_unacked: config.max_unacked,
            max_unacked_bytes: usize::try_from(config.max_unacked_mb.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX)
                .min(tokio::sync::Semaphore::MAX_PERMITS),
            revoke_timeout: Duration::from_secs(10),
            tasks: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
        });
        let consumer = Consumer::new(
            &client,
            &name,
            health,
            Arc::new(Listener(Arc::downgrade(&shared))),
        )?;
        let inputs: Vec<&str> = config.inputs.iter().map(|t| t.0.as_str()).collect();
        consumer.subscribe(&inputs)?;
        let _ = shared.consumer.set(consumer);
        let stop = CancellationToken::new();
        let stop_events = stop.clone();
        let events_done = CancellationToken::new();
        let done = events_done.clone().drop_guard();
        let polling = shared.clone();
        shared.spawn_watched(format!("event loop of pipeline {name}"), async move {
            let _done = done;
            event_loop(polling, stop_events).await;
        });
        tracing::info!(pipeline = %name, group = %client.group, inputs = ?inputs, plugin = %shared.workers.plugin().id(), "Pipeline started.");
        Ok(Self {
            shared,
            stop,
            events_done,
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    pub fn health(&self) -> Arc<PipelineHealth> {
        self.shared.health.clone()
    }

    /// The plugin version new records run on.
    pub fn plugin(&self) -> Arc<Plugin> {
        self.shared.workers.plugin()
    }

    /// The instance pool, through which a deploy swaps versions.
    pub fn workers(&self) -> Arc<Workers> {
        self.shared.workers.clone()
    }

    /// Outcome counts per plugin version.
    pub fn versions(&self) -> Arc<VersionStats> {
        self.shared.versions.clone()
    }

    /// Committed offsets of the current assignment (for the demo and tests).
    pub async fn committed(&self) -> anyhow::Result<Vec<(String, i32, i64)>> {
        let consumer = self.shared.consumer().clone();
        tokio::task::spawn_blocking(move || consumer.committed(Duration::from_secs(10)))
            .await?
            .context("reading committed offsets")
    }

    /// Stops consuming, finishes records in flight (bounded by `timeout`),
    /// commits, flushes and closes the clients.
    pub async fn stop(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        self.stop.cancel();
        self.events_done.cancelled().await;
        let shared = self.shared.clone();
        let all: Vec<(String, i32)> = shared
            .assigned()
            .iter()
            .flat_map(|(t, ps)| ps.keys().map(move |p| (t.clone(), *p)))
            .collect();
        let revoking = shared.clone();
        let _ = tokio::task::spawn_blocking(move || revoking.revoke(&all, false, deadline)).await;
        let consumer = shared.consumer().clone();
        let committing = consumer.clone();
        match tokio::task::spawn_blocking(move || committing.commit_sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(pipeline = %shared.name, %error, "Final commit failed; some records may be repeated after restart.")
            }
            Err(error) => {
                tracing::warn!(pipeline = %shared.name, %error, "Final commit task failed.")
            }
        }
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        if let Err(error) = shared.producer.flush(remaining).await {
            tracing::warn!(pipeline = %shared.name, %error, "Producer flush incomplete.");
        }
        shared.tasks.close();
        let _ = tokio::time::timeout(remaining, shared.tasks.wait()).await;
        consumer.close(remaining).await;
        tracing::info!(pipeline = %shared.name, "Pipeline stopped.");
    }
}

/// The pipeline's event loop: polls the consumer's main queue, which
/// serves rebalance callbacks and errors (records come through each
/// partition's own queue).
async fn event_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let consumer = shared.consumer().clone();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            received = consumer.recv() => match received {
                Ok(record) => shared.stray(&record),
                Err(error) => {
                    if let Some(suppressed) = shared.logs.check("consume") {
                        tracing::warn!(pipeline = %shared.name, %error, suppressed, "Consumer error; librdkafka retries by itself.");
                    }
                }
            },
        }
    }
}
