//! One assigned partition: a worker that runs its records through the
//! plugin in offset order and hands what to produce to an acker, which
//! waits for the broker's acknowledgements in the same order and only then
//! stores the offset. The stored offset is therefore always the end of the
//! contiguous prefix of finished records.
//!
//! A send the broker refuses is settled before anything after it is
//! stored: retried while waiting may heal it, dead-lettered as
//! `output-refused` when it never will, and, for a dead letter its topic
//! refuses for good, the partition stops there and says so (liveness
//! fails). No record is ever skipped, and no partition waits in silence.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::backoff;
use crate::deploy::{Counts, VersionStats};
use crate::health::{Done, PartitionProgress};
use crate::kafka::{Acks, Outgoing, PartitionQueue, SendError};
use crate::metrics::PartitionMetrics;
use crate::record::{Failure, FailureKind, Outcome, Record};
use crate::runtime::PluginId;

/// Records taken from the partition's buffer per plugin run (fewer when
/// `max_unacked` is smaller), and handed to the acker together. Each batch
/// costs a few thread wake-ups (plugin thread, worker task, acker) of
/// several microseconds each on a busy machine: at 100 B records, 256
/// rather than 64 per batch measured 6-7% more throughput. A slow plugin's
/// batch is cut short by time (`workers::BATCH_TIME`), so its size costs
/// no latency.
const BATCH: usize = 256;

/// Records per batch for a partition that may have `max_unacked` records
/// awaiting acknowledgement, and the acker channel's capacity in batches:
/// together never more than `max_unacked` records.
pub(super) fn batching(max_unacked: usize) -> (usize, usize) {
    let batch = BATCH.min(max_unacked).max(1);
    (batch, (max_unacked / batch).max(1))
}

/// Produce failures back off from here up to the pipeline's max backoff.
const PRODUCE_BACKOFF: Duration = Duration::from_millis(100);

/// How often a send refused by the broker for its size is sent again
/// alone, after a jittered pause, before the refusal counts as the
/// record's own. A broker judges record batches, so a small record batched
/// with a too-large one is refused with it; alone, it goes through. On
/// Apache Kafka, with two 300 KB outputs among small ones for a topic
/// taking 100 KB, 34 innocent records were refused with them at first;
/// sent alone twice without a pause, one was still caught by the other
/// partition's big record being tried alone at the same moment.
const SIZE_REFUSALS: u32 = 4;

/// The pause before a send refused for its size is tried alone again
/// (doubling, jittered): long enough for the too-large record it may have
/// shared a batch with to be tried and dead-lettered meanwhile.
const SIZE_REFUSAL_PAUSE: Duration = Duration::from_millis(50);

/// One record's work, waiting for the broker.
struct Pending {
    offset: i64,
    /// How many of the batch's sends are this record's (none when the
    /// plugin filtered it out).
    sends: usize,
    /// The input record while its outputs await the broker (moved, not
    /// copied): if the broker refuses one of them for good, the record is
    /// dead-lettered instead. `None` when its send is its dead letter.
    input: Option<Record>,
}

/// The records of one plugin batch, handed to the acker together: one
/// budget acquisition and one channel message per batch, not per record.
pub(super) struct Handed {
    records: Vec<Pending>,
    /// Every record's sends, in order, kept so they can be sent again.
    sends: Vec<Outgoing>,
    /// The plugin version that made them (one plugin run per batch).
    plugin: PluginId,
    /// Their delivery reports (or refusals), by index in `sends`.
    acks: Arc<Acks>,
    /// The batch's share of the partition's unacknowledged bytes, given
    /// back when the acker is done with all of it.
    _bytes: OwnedSemaphorePermit,
}

/// What the records handled so far produce, before it is sent: the
/// pieces of the next [`Handed`].
#[derive(Default)]
struct Staged {
    records: Vec<Pending>,
    sends: Vec<Outgoing>,
    /// The plugin version of the run these come from.
    plugin: Option<PluginId>,
}

impl Staged {
    /// A record's sends: its outputs (`input` is the record) or its dead
    /// letter (`input` is `None`).
    fn push(
        &mut self,
        offset: i64,
        input: Option<Record>,
        sends: impl ExactSizeIterator<Item = Outgoing>,
    ) {
        self.records.push(Pending {
            offset,
            sends: sends.len(),
            input,
        });
        self.sends.extend(sends);
    }
}

/// Everything a partition's two tasks share.
pub(super) struct Partition {
    pub shared: Arc<Shared>,
    pub topic: String,
    pub partition: i32,
    pub progress: Arc<PartitionProgress>,
    /// Cancelled on revoke or shutdown: stop taking new records.
    pub cancel: CancellationToken,
    pub metrics: PartitionMetrics,
    /// Bytes of outputs that may still await acknowledgement (`max_unacked_mb`).
    pub unacked_bytes: Arc<Semaphore>,
    /// Records per plugin batch (see [`batching`]).
    pub batch: usize,
}

/// Runs records from the partition's queue through the plugin; sends what
/// to produce to the acker. Takes the next records only when it is ready
/// for them, so a busy partition stops fetching (librdkafka bounds each
/// partition's prefetch) while the others go on.
pub(super) async fn worker(
    part: Arc<Partition>,
    mut queue: PartitionQueue,
    acks: mpsc::Sender<Handed>,
) {
    let shared = &part.shared;
    let mut batch = Vec::with_capacity(part.batch);
    loop {
        batch.clear();
        tokio::select! {
            biased;
            () = part.cancel.cancelled() => break,
            received = queue.recv_many(&mut batch, part.batch) => if let Err(error) = received {
                if let Some(suppressed) = shared.logs.check("consume") {
                    tracing::warn!(pipeline = %shared.name, topic = %part.topic, partition = part.partition,
                        %error, suppressed, "Consumer error; librdkafka retries by itself.");
                }
                continue;
            },
        }
        shared
            .counters
            .consumed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        part.metrics.consumed.inc_by(batch.len() as u64);
        // The first for the stall clock, the last for the high-water mark.
        for record in [batch.first(), batch.last()].into_iter().flatten() {
            part.progress.received(record.offset);
        }
        let records: VecDeque<Record> = batch.drain(..).collect();
        if !run_batch(&part, records, &acks).await {
            break;
        }
    }
}

/// Handles a batch, retrying in place. False when the partition must stop.
async fn run_batch(
    part: &Partition,
    mut queue: VecDeque<Record>,
    acks: &mpsc::Sender<Handed>,
) -> bool {
    let shared = &part.shared;
    let retry = &shared.retry;
    let (initial, max) = (
        Duration::from_millis(retry.initial_backoff_ms),
        Duration::from_millis(retry.max_backoff_ms),
    );
    // Attempts of the record at the head of the queue.
    let mut attempts: u32 = 1;
    let mut host_errors: u32 = 0;
    // What the records handled so far produce, handed over in order after
    // each plugin run and before any wait.
    let mut staged = Staged::default();
    while !queue.is_empty() {
        if part.cancel.is_cancelled() {
            // Revoked or shutting down: what is left is not started, and its
            // offsets are not stored; the partition's next owner handles it.
            return false;
        }
        let result = shared.workers.run(queue, &part.cancel).await;
        queue = result.rest;
        let plugin = result.plugin;
        staged.plugin = Some(plugin.id().clone());
        shared.versions.add(plugin.id(), tally(&result.done));
        // Once per batch: the counters are shared by every partition.
        let (succeeded, outputs) = successes(&result.done);
        part.metrics.succeeded.inc_by(succeeded);
        shared
            .counters
            .succeeded
            .fetch_add(succeeded, Ordering::Relaxed);
        shared
            .counters
            .outputs
            .fetch_add(outputs, Ordering::Relaxed);
        shared.metrics.outputs.inc_by(outputs);
        for (record, outcome) in result.done {
            let failure = match outcome {
                Ok(outputs) => {
                    staged.push(
                        record.offset,
                        Some(record),
                        shared.labels.outputs(outputs, plugin.id()),
                    );
                    attempts = 1;
                    host_errors = 0;
                    continue;
                }
                Err(failure) => failure,
            };
            shared.metrics.failed(failure.kind);
            shared.counters.failed(failure.kind);
            if failure.kind.is_host_side() {
                // Not the record's fault: retry it for as long as it takes.
                host_errors += 1;
                shared.metrics.retried.inc();
                if let Some(suppressed) = shared.logs.check("host-side") {
                    tracing::warn!(pipeline = %shared.name, topic = %record.topic, partition = record.partition,
                        offset = record.offset, suppressed, error = %failure, "Cannot run the plugin; retrying the record.");
                }
                queue.push_front(record);
                if !hand_over(part, &mut staged, acks).await
                    || !sleep_or_cancel(&part.cancel, backoff::delay(host_errors, initial, max))
                        .await
                {
                    return false;
                }
                break;
            }
            if failure.kind == FailureKind::Retry && attempts < retry.max_attempts {
                tracing::debug!(pipeline = %shared.name, offset = record.offset, attempts, reason = %failure.message, "Plugin asked for a retry.");
                let delay = backoff::delay(attempts, initial, max);
                attempts += 1;
                shared.metrics.retried.inc();
                queue.push_front(record);
                if !hand_over(part, &mut staged, acks).await
                    || !sleep_or_cancel(&part.cancel, delay).await
                {
                    return false;
                }
                break;
            }
            let mut failure = failure;
            if failure.kind == FailureKind::Retry {
                failure.kind = FailureKind::RetriesExhausted;
            }
            if let Some(suppressed) = shared.logs.check(failure.kind.as_str()) {
                tracing::warn!(pipeline = %shared.name, topic = %record.topic, partition = record.partition,
                    offset = record.offset, plugin = %failure.plugin, kind = %failure.kind, suppressed,
                    "Record failed: {}; dead-lettering it.", failure.message);
            }
            shared
                .counters
                .dead_lettered
                .fetch_add(1, Ordering::Relaxed);
            part.metrics.dead_lettered.inc();
            staged.push(
                record.offset,
                None,
                std::iter::once(shared.labels.dead_letter(record, &failure, attempts)),
            );
            attempts = 1;
            host_errors = 0;
        }
        if !hand_over(part, &mut staged, acks).await {
            return false;
        }
    }
    true
}

/// The outcome counts of a batch, for the version's statistics.
fn tally(done: &[(Record, Outcome)]) -> Counts {
    Counts {
        records: done.len() as u64,
        failures: done
            .iter()
            .filter(|(_, o)| o.as_ref().is_err_and(|f| VersionStats::is_fault(f.kind)))
            .count() as u64,
    }
}

/// The records of a batch that succeeded, and their outputs.
fn successes(done: &[(Record, Outcome)]) -> (u64, u64) {
    done.iter()
        .filter_map(|(_, o)| o.as_ref().ok())
        .fold((0, 0), |(records, outputs), o| {
            (records + 1, outputs + o.len() as u64)
        })
}

/// Sends what `staged` records produce and hands them to the acker as one
/// batch, emptying `staged`. Waits first for the batch's share of the
/// partition's byte budget; a batch larger than the whole budget still
/// goes, alone. False when the partition must stop.
async fn hand_over(part: &Partition, staged: &mut Staged, acks: &mpsc::Sender<Handed>) -> bool {
    if staged.records.is_empty() {
        return true;
    }
    let Some(plugin) = staged.plugin.clone() else {
        unreachable!("records are staged only after a plugin run names its version");
    };
    // The inputs kept until their outputs are acknowledged count too.
    let bytes: usize = staged.sends.iter().map(Outgoing::size).sum::<usize>()
        + staged
            .records
            .iter()
            .filter_map(|r| r.input.as_ref())
            .map(Record::size)
            .sum::<usize>();
    let budget = u32::try_from(bytes.min(part.shared.max_unacked_bytes)).unwrap_or(u32::MAX);
    // The semaphore is never closed.
    let Ok(permit) = part.unacked_bytes.clone().acquire_many_owned(budget).await else {
        return false;
    };
    let delivered = Acks::new();
    for (index, record) in staged.sends.iter().enumerate() {
        part.shared
            .producer
            .send_to(record, &delivered, index)
            .await;
    }
    delivered.seal();
    acks.send(Handed {
        records: std::mem::take(&mut staged.records),
        sends: std::mem::take(&mut staged.sends),
        plugin,
        acks: delivered,
        _bytes: permit,
    })
    .await
    .is_ok()
}

/// Sleeps, or returns false at once if cancelled.
async fn sleep_or_cancel(cancel: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Waits for each batch's delivery reports and stores the offset of the
/// batch's last record once all its sends are acknowledged (librdkafka's
/// offset store costs a topic lookup and a lock per call, so not per
/// record). A record with failed sends is settled first ([`settle`]), in
/// order: nothing after it is stored until it is.
pub(super) async fn acker(part: Arc<Partition>, mut rx: mpsc::Receiver<Handed>, done: Arc<Done>) {
    'batches: while let Some(handed) = rx.recv().await {
        // `_bytes` holds the batch's share of the budget until its sends
        // are acknowledged.
        let Handed {
            records,
            sends,
            plugin,
            acks,
            _bytes,
        } = handed;
        let mut failed = acks.wait().await.into_iter().peekable();
        let mut sends = sends.into_iter().enumerate();
        // The last record of this batch whose sends are all acknowledged.
        let mut finished = None;
        for pending in records {
            let offset = pending.offset;
            let refused: Vec<Refused> = sends
                .by_ref()
                .take(pending.sends)
                .enumerate()
                .filter_map(|(nth, (index, record))| {
                    let (_, error) = failed.next_if(|(i, _)| *i == index)?;
                    Some(Refused { nth, record, error })
                })
                .collect();
            if !refused.is_empty() {
                // A stuck partition keeps what it finished.
                store(&part, finished.take());
                match settle(&part, pending, refused, &plugin).await {
                    Settled::Delivered => {}
                    Settled::Cancelled | Settled::Stopped => break 'batches,
                }
            }
            finished = Some(offset);
        }
        store(&part, finished);
    }
    done.set();
}

/// A send the broker did not acknowledge.
struct Refused {
    /// Which of its record's sends it is (0-based).
    nth: usize,
    record: Outgoing,
    error: SendError,
}

/// How [`settle`] ended.
enum Settled {
    /// Every send of the record, or its dead letter, is acknowledged.
    Delivered,
    /// The partition was revoked or the host is stopping.
    Cancelled,
    /// Its dead letter was refused for good: the partition stops here.
    Stopped,
}

/// Finishes a record some of whose sends failed. What waiting may heal (a
/// broker away, a timeout...) is sent again, with backoff, for as long as
/// it takes. An output refused for good (too large, invalid, unknown
/// topic...) dead-letters the record as `output-refused` instead: its
/// other outputs already acknowledged stand (at-least-once, and the dead
/// letter says how many), the others are not sent again. A dead letter
/// refused for good is sent once more without its diagnostic headers; if
/// the record itself cannot be written, the partition stops here, loudly
/// (liveness fails, so the process exits for its supervisor): a record is
/// never skipped.
async fn settle(
    part: &Partition,
    pending: Pending,
    mut refused: Vec<Refused>,
    plugin: &PluginId,
) -> Settled {
    let shared = &part.shared;
    let Pending {
        offset,
        sends: outputs,
        mut input,
    } = pending;
    let mut failures: u32 = 0;
    let mut stripped = false;
    // Size refusals of this record's sends, sent alone after each.
    let mut alone: u32 = 0;
    loop {
        if refused.is_empty() {
            if failures > 0 {
                part.progress.set_blocked(None);
                tracing::info!(pipeline = %shared.name, topic = %part.topic, partition = part.partition,
                    offset, failures, "Produce recovered.");
            }
            return Settled::Delivered;
        }
        if let Some(i) = refused.iter().position(|r| r.error.is_permanent()) {
            if refused[i].error.is_batch_size_refusal() && alone < SIZE_REFUSALS {
                // Perhaps another record's: the broker refuses whole
                // batches. Sent alone, one after the other, a send that
                // fits goes through.
                alone += 1;
                tracing::debug!(pipeline = %shared.name, topic = %part.topic, partition = part.partition,
                    offset, alone, error = %refused[i].error, "A batch was refused for its size; sending the record's refused sends alone.");
                let pause = backoff::delay(alone, SIZE_REFUSAL_PAUSE, Duration::from_secs(1));
                if !sleep_or_cancel(&part.cancel, pause).await {
                    return Settled::Cancelled;
                }
                let again = refused.into_iter().map(|r| (r.nth, r.record)).collect();
                refused = send_alone(part, again).await;
                continue;
            }
            let Refused { nth, record, error } = refused.swap_remove(i);
            if let Some(input) = input.take() {
                let produced = outputs - refused.len() - 1;
                let failure = Failure::new(
                    FailureKind::OutputRefused,
                    format!(
                        "output {} of {outputs} to topic {} ({} bytes) was refused for good: {}: {error}; \
                         {produced} other outputs of this record were produced and stand (at-least-once)",
                        nth + 1,
                        record.topic,
                        record.size(),
                        error.code_name(),
                    ),
                    plugin.clone(),
                );
                shared.metrics.failed(failure.kind);
                shared.counters.failed(failure.kind);
                shared
                    .counters
                    .dead_lettered
                    .fetch_add(1, Ordering::Relaxed);
                part.metrics.dead_lettered.inc();
                if let Some(suppressed) = shared.logs.check(failure.kind.as_str()) {
                    tracing::warn!(pipeline = %shared.name, topic = %part.topic, partition = part.partition,
                        offset, plugin = %plugin, kind = %failure.kind, suppressed,
                        "Record failed: {}; dead-lettering it.", failure.message);
                }
                let letter = shared.labels.dead_letter(input, &failure, 1);
                refused = send_again(part, vec![(0, letter)]).await;
                continue;
            }
            if !stripped {
                stripped = true;
                tracing::warn!(pipeline = %shared.name, topic = %part.topic, partition = part.partition,
                    offset, dead_letter_topic = %record.topic, code = %error.code_name(), %error,
                    "The dead-letter topic refused a dead letter for good; sending it once more without its diagnostic headers.");
                let mut letter = record;
                super::deadletter::strip_diagnostics(&mut letter);
                refused = send_again(part, vec![(nth, letter)]).await;
                continue;
            }
            let reason = format!(
                "stopped at offset {offset}: its dead letter ({} bytes) was refused for good by topic {}, \
                 even without its diagnostic headers: {}: {error}; nothing after it is committed; \
                 let the topic take it (for example raise its max.message.bytes) and restart",
                record.size(),
                record.topic,
                error.code_name(),
            );
            tracing::error!(pipeline = %shared.name, topic = %part.topic, partition = part.partition,
                offset, "Partition {}/{} {reason}.", part.topic, part.partition);
            part.progress.set_stopped(reason);
            shared.metrics.partitions_stopped.inc();
            return Settled::Stopped;
        }
        failures += 1;
        let first = &refused[0];
        let what = if input.is_some() {
            "output"
        } else {
            "dead letter"
        };
        let reason = format!(
            "producing the {what} of offset {offset} to {} failed: {}",
            first.record.topic, first.error
        );
        part.progress.set_blocked(Some(reason.clone()));
        if let Some(suppressed) = shared
            .logs
            .check(&format!("produce:{}:{}", part.topic, part.partition))
        {
            // Nothing is lost (the record is retried and its offset not
            // stored), but an operator must look.
            tracing::error!(pipeline = %shared.name, topic = %part.topic, partition = part.partition,
                offset, failures, suppressed, "{reason}; the partition waits and retries.");
        }
        let delay = backoff::delay(
            failures,
            PRODUCE_BACKOFF,
            Duration::from_millis(shared.retry.max_backoff_ms),
        );
        if !sleep_or_cancel(&part.cancel, delay).await {
            return Settled::Cancelled;
        }
        let again = refused.into_iter().map(|r| (r.nth, r.record)).collect();
        refused = send_again(part, again).await;
    }
}

/// Sends `records` one at a time, each once the previous one is reported,
/// so that none shares a batch with another of them; returns the failed.
async fn send_alone(part: &Partition, records: Vec<(usize, Outgoing)>) -> Vec<Refused> {
    let mut refused = Vec::new();
    for record in records {
        refused.extend(send_again(part, vec![record]).await);
    }
    refused
}

/// Sends `records` (each with its place among its record's sends) and
/// returns the ones that failed.
async fn send_again(part: &Partition, records: Vec<(usize, Outgoing)>) -> Vec<Refused> {
    let acks = Acks::new();
    for (index, (_, record)) in records.iter().enumerate() {
        part.shared.producer.send_to(record, &acks, index).await;
    }
    acks.seal();
    let mut failed = acks.wait().await.into_iter().peekable();
    records
        .into_iter()
        .enumerate()
        .filter_map(|(index, (nth, record))| {
            let (_, error) = failed.next_if(|(i, _)| *i == index)?;
            Some(Refused { nth, record, error })
        })
        .collect()
}

/// Stores `offset` (a record whose results are all acknowledged, and with
/// it every earlier one) for the next commit. Progress is reported only
/// when the store succeeded: a partition whose offsets cannot be stored
/// has not moved, and its stall clock says so.
fn store(part: &Partition, offset: Option<i64>) {
    let Some(offset) = offset else { return };
    let shared = &part.shared;
    if part.progress.lost.load(Ordering::Relaxed) {
        return;
    }
    if let Err(error) = shared
        .consumer()
        .store_offset(&part.topic, part.partition, offset)
    {
        shared.metrics.offset_store_failures.inc();
        if let Some(suppressed) = shared
            .logs
            .check(&format!("store:{}:{}", part.topic, part.partition))
        {
            // Usually the partition was revoked meanwhile: its next owner
            // starts from the last commit and repeats the records since.
            let revoked = part.cancel.is_cancelled();
            tracing::warn!(pipeline = %shared.name, topic = %part.topic, partition = part.partition,
                offset, %error, revoked, suppressed,
                "Offset not stored; the records since the last commit will be handled again after a restart or rebalance.");
        }
        return;
    }
    part.progress.completed(offset);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_and_the_acker_channel_never_hold_more_than_max_unacked() {
        assert_eq!(batching(4096), (BATCH, 4096 / BATCH));
        assert_eq!(batching(3), (3, 1));
        assert_eq!(batching(100), (100, 1));
        assert_eq!(batching(1000), (BATCH, 1000 / BATCH));
        for max_unacked in 1..1000 {
            let (batch, capacity) = batching(max_unacked);
            assert!(batch >= 1 && capacity >= 1);
            assert!(batch * capacity <= max_unacked, "{max_unacked}");
        }
    }
}
