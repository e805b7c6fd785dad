//! Running records through the plugin: `workers` threads per pipeline, each
//! with its own instance, taking batches from one queue that the pipeline's
//! partitions share.
//!
//! A thread goes from one batch straight to the next while any partition
//! has one waiting, so the plugin runs back to back however long the hand
//! back to the async side takes; at most `workers` plugin calls run at once
//! and at most `workers` instances exist, however many partitions are
//! assigned. The threads live as long as the pipeline: their number stays
//! flat whatever the load or the faults.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::metrics::PipelineMetrics;
use crate::record::{FailureKind, Outcome, Record};
use crate::runtime::{Instance, Plugin};

/// Plugin time after which a batch goes back to its partition with the
/// records not yet run, which come back as the next batch: the outputs of
/// a slow plugin's first records are produced without waiting for the
/// whole batch. Fast plugins finish a batch well within it.
const BATCH_TIME: Duration = Duration::from_millis(1);

/// What one run over a batch produced.
#[derive(Debug)]
pub struct BatchResult {
    /// Records handled, in order, with their outcomes. The last one may be
    /// a `retry` or host-side failure, which stops the batch there.
    pub done: Vec<(Record, Outcome)>,
    /// Records not run because the batch stopped early.
    pub rest: VecDeque<Record>,
    /// The version that handled `done` (a swap never splits a batch).
    pub plugin: Arc<Plugin>,
}

/// A batch waiting for a thread, and where its result goes.
struct Job {
    records: VecDeque<Record>,
    cancel: CancellationToken,
    reply: oneshot::Sender<std::thread::Result<BatchResult>>,
}

/// The pipeline's plugin threads and their queue.
pub struct Workers {
    pipeline: String,
    /// The version new instances are made from; swapped by deploys.
    plugin: Arc<ArcSwap<Plugin>>,
    /// Dropped with the pipeline: the threads finish their batch and end.
    jobs: mpsc::Sender<Job>,
    metrics: PipelineMetrics,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl Workers {
    /// Starts `workers` threads (at least one).
    pub fn new(
        pipeline: &str,
        plugin: Arc<Plugin>,
        workers: usize,
        metrics: PipelineMetrics,
    ) -> std::io::Result<Self> {
        let plugin = Arc::new(ArcSwap::new(plugin));
        let (jobs, queue) = mpsc::channel();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..workers.max(1) {
            let thread = Thread {
                pipeline: pipeline.to_owned(),
                plugin: plugin.clone(),
                queue: queue.clone(),
                metrics: metrics.clone(),
            };
            std::thread::Builder::new()
                .name(format!("plugin-{i}"))
                .spawn(move || thread.run())?;
        }
        Ok(Self {
            pipeline: pipeline.to_owned(),
            plugin,
            jobs,
            metrics,
        })
    }

    pub fn plugin(&self) -> Arc<Plugin> {
        self.plugin.load_full()
    }

    /// Switches to `plugin` between records: batches already running finish
    /// on the version they started with.
    pub fn swap(&self, plugin: Arc<Plugin>) -> Arc<Plugin> {
        self.metrics.plugin_version(plugin.id());
        self.plugin.swap(plugin)
    }

    /// Runs `records` in order on one instance, stopping after the first
    /// record that must be retried (plugin `retry` or a host-side failure).
    /// Stops early, before the next record, once `cancel` is cancelled (a
    /// revoke or shutdown waits for the record being handled, and at most
    /// 0.1 ms more: see `runtime::instance::CANCEL_CHECK`) or once a record
    /// ends after [`BATCH_TIME`].
    pub async fn run(&self, records: VecDeque<Record>, cancel: &CancellationToken) -> BatchResult {
        let (reply, result) = oneshot::channel();
        let job = Job {
            records,
            cancel: cancel.clone(),
            reply,
        };
        // The threads end only when `jobs` is dropped, and they answer
        // every job they take, even when our own code panics in one.
        self.jobs
            .send(job)
            .unwrap_or_else(|_| panic!("the plugin threads of {} are gone", self.pipeline));
        match result.await {
            Ok(Ok(result)) => result,
            // Our own code panicked (never the guest: guest faults are
            // outcomes). Let it surface through this task's JoinHandle.
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("a plugin thread of {} ended", self.pipeline),
        }
    }
}

/// One plugin thread: its instance, made from the current version.
struct Thread {
    pipeline: String,
    plugin: Arc<ArcSwap<Plugin>>,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    metrics: PipelineMetrics,
}

impl Thread {
    fn run(self) {
        let mut instance: Option<Instance> = None;
        loop {
            // One thread waits on the queue; the others wait for the lock.
            let job = self
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .recv();
            let Ok(Job {
                records,
                cancel,
                reply,
            }) = job
            else {
                return;
            };
            let current = self.plugin.load_full();
            let mut ready = match instance.take() {
                Some(i) if Arc::ptr_eq(i.plugin(), &current) => i,
                // None yet, or one of an older version: drop it.
                _ => Instance::new(current),
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.batch(&mut ready, records, &cancel)
            }));
            if result.is_ok() {
                instance = Some(ready);
            }
            // The partition may be gone (revoked and cancelled); then nobody
            // waits for the result.
            let _ = reply.send(result);
        }
    }

    fn batch(
        &self,
        instance: &mut Instance,
        mut records: VecDeque<Record>,
        cancel: &CancellationToken,
    ) -> BatchResult {
        let mut done = Vec::with_capacity(records.len());
        let mut outcomes = Vec::with_capacity(records.len());
        let instantiations = instance.instantiations();
        let mut call_times = self.metrics.call_seconds.batch();
        // One clock read per record: each call ends where the next starts.
        let mut started = Instant::now();
        let until = started + BATCH_TIME;
        while !cancel.is_cancelled() && !records.is_empty() && started < until {
            // Plugin log lines carry the record's coordinates themselves
            // (see `runtime::host`); this span is for host-side tracing
            // at trace level and costs nothing otherwise.
            let span = tracing::trace_span!(
                "records",
                pipeline = %self.pipeline,
                topic = %records[0].topic,
                partition = records[0].partition,
                from = records[0].offset,
                plugin = %instance.plugin().id()
            );
            span.in_scope(|| {
                instance.handle_batch(records.make_contiguous(), cancel, until, &mut outcomes)
            });
            let mut stop = false;
            for (outcome, ended) in outcomes.drain(..) {
                call_times.observe(ended.duration_since(started));
                started = ended;
                stop |= matches!(&outcome, Err(f) if f.kind == FailureKind::Retry || f.kind.is_host_side());
                let record = records.pop_front().expect("an outcome per record run");
                done.push((record, outcome));
            }
            if stop {
                break;
            }
        }
        // An idle thread holds one instance at most (per-record isolation
        // keeps spent ones until their store is full).
        instance.release_spent();
        self.metrics
            .instantiations
            .inc_by(instance.instantiations() - instantiations);
        BatchResult {
            done,
            rest: records,
            plugin: instance.plugin().clone(),
        }
    }
}
