//! Running records through the plugin: a bounded set of instances shared
//! by a pipeline's partitions, each call on a blocking thread.
//!
//! The semaphore is the backpressure: a partition waits for a permit before
//! it takes an instance, so at most `workers` plugin calls run at once and
//! at most `workers` instances exist, however many partitions are assigned.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::PipelineMetrics;
use crate::record::{FailureKind, Outcome, Record};
use crate::runtime::{Instance, Plugin};

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

/// The pipeline's instances and the permits to use them.
pub struct Workers {
    pipeline: String,
    /// The version new instances are made from; swapped by deploys.
    plugin: ArcSwap<Plugin>,
    permits: Semaphore,
    idle: Mutex<Vec<Instance>>,
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
    pub fn new(
        pipeline: &str,
        plugin: Arc<Plugin>,
        workers: usize,
        metrics: PipelineMetrics,
    ) -> Self {
        Self {
            pipeline: pipeline.to_owned(),
            plugin: ArcSwap::new(plugin),
            permits: Semaphore::new(workers),
            idle: Mutex::new(Vec::with_capacity(workers)),
            metrics,
        }
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

    fn checkout(&self) -> Instance {
        let current = self.plugin.load_full();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(instance) = idle.pop() {
            if Arc::ptr_eq(instance.plugin(), &current) {
                return instance;
            }
            // An instance of an older version: drop it.
        }
        Instance::new(current)
    }

    fn checkin(&self, instance: Instance) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(instance);
    }

    /// Runs `records` in order on one instance, stopping after the first
    /// record that must be retried (plugin `retry` or a host-side failure).
    /// Stops early, before the next record, once `cancel` is cancelled (a
    /// revoke or shutdown waits only for the record being handled).
    pub async fn run(&self, records: VecDeque<Record>, cancel: &CancellationToken) -> BatchResult {
        // The semaphore is never closed, so acquire cannot fail.
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the workers semaphore is never closed");
        let mut instance = self.checkout();
        let pipeline = self.pipeline.clone();
        let metrics = self.metrics.clone();
        let cancel = cancel.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut records = records;
            let mut done = Vec::with_capacity(records.len());
            let instantiations = instance.instantiations();
            // One clock read per record: each call ends where the next starts.
            let mut started = std::time::Instant::now();
            while !cancel.is_cancelled()
                && let Some(mut record) = records.pop_front()
            {
                // Plugin log lines carry the record's coordinates themselves
                // (see `runtime::host`); this span is for host-side tracing
                // at trace level and costs nothing otherwise.
                let span = tracing::trace_span!(
                    "record",
                    pipeline = %pipeline,
                    topic = %record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    plugin = %instance.plugin().id()
                );
                let outcome = span.in_scope(|| instance.handle_in_place(&mut record));
                let ended = std::time::Instant::now();
                metrics
                    .call_seconds
                    .observe(ended.duration_since(started).as_secs_f64());
                started = ended;
                let stop = matches!(&outcome, Err(f) if f.kind == FailureKind::Retry || f.kind.is_host_side());
                done.push((record, outcome));
                if stop {
                    break;
                }
            }
            metrics.instantiations.inc_by(instance.instantiations() - instantiations);
            let plugin = instance.plugin().clone();
            (
                instance,
                BatchResult {
                    done,
                    rest: records,
                    plugin,
                },
            )
        })
        .await;
        match joined {
            Ok((instance, result)) => {
                self.checkin(instance);
                result
            }
            // Our own code panicked (never the guest: guest faults are
            // outcomes). Let it surface through this task's JoinHandle.
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
}
