//! One assigned partition: a worker that runs its records through the
//! plugin in offset order and hands what to produce to an acker, which
//! waits for the broker's acknowledgements in the same order and only then
//! stores the offset. The stored offset is therefore always the end of the
//! contiguous prefix of finished records.

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
use crate::record::{FailureKind, Outcome, Record};

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

/// One record's work, waiting for the broker.
struct Pending {
    offset: i64,
    /// How many of the batch's sends are this record's (none when the
    /// plugin filtered it out).
    sends: usize,
    /// For log lines: is this a dead letter?
    dead_letter: bool,
}

/// The records of one plugin batch, handed to the acker together: one
/// budget acquisition and one channel message per batch, not per record.
pub(super) struct Handed {
    records: Vec<Pending>,
    /// Every record's sends, in order, kept so they can be sent again.
    sends: Vec<Outgoing>,
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
}

impl Staged {
    fn push(
        &mut self,
        offset: i64,
        dead_letter: bool,
        sends: impl ExactSizeIterator<Item = Outgoing>,
    ) {
        self.records.push(Pending {
            offset,
            sends: sends.len(),
            dead_letter,
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
                        false,
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
                true,
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
    let bytes: usize = staged.sends.iter().map(Outgoing::size).sum();
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

/// Waits for each batch's delivery reports, re-sends what failed in order
/// (with backoff, until the broker takes it), and stores the offset of the
/// batch's last record once all its sends are acknowledged (librdkafka's
/// offset store costs a topic lookup and a lock per call, so not per
/// record).
pub(super) async fn acker(part: Arc<Partition>, mut rx: mpsc::Receiver<Handed>, done: Arc<Done>) {
    'batches: while let Some(handed) = rx.recv().await {
        // `_bytes` holds the batch's share of the budget until its sends
        // are acknowledged.
        let Handed {
            records,
            sends,
            acks,
            _bytes,
        } = handed;
        let mut failed = acks.wait().await.into_iter().peekable();
        let mut sends = sends.iter().enumerate();
        // The last record of this batch whose sends are all acknowledged.
        let mut finished = None;
        for Pending {
            offset,
            sends: n,
            dead_letter,
        } in records
        {
            for (index, record) in sends.by_ref().take(n) {
                let Some((_, error)) = failed.next_if(|(i, _)| *i == index) else {
                    continue;
                };
                let sent = Sent {
                    offset,
                    dead_letter,
                    record,
                };
                if !redeliver(&part, sent, error, &mut finished).await {
                    store(&part, finished);
                    break 'batches;
                }
            }
            finished = Some(offset);
        }
        store(&part, finished);
    }
    done.set();
}

/// Re-sends a send that failed with `error`, with backoff, until the broker
/// takes it. First stores `finished` (so a stuck partition keeps what it
/// finished). False when cancelled first.
async fn redeliver(
    part: &Partition,
    sent: Sent<'_>,
    mut error: SendError,
    finished: &mut Option<i64>,
) -> bool {
    let Sent {
        offset,
        dead_letter,
        record,
    } = sent;
    let shared = &part.shared;
    store(part, finished.take());
    let mut failures: u32 = 0;
    loop {
        failures += 1;
        let what = if dead_letter { "dead letter" } else { "output" };
        let reason = format!(
            "producing the {what} of offset {} to {} failed: {error}",
            offset, record.topic
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
            return false;
        }
        let result = match shared.producer.send(record).await {
            Ok(delivery) => delivery.await,
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => break,
            Err(again) => error = again,
        }
    }
    part.progress.set_blocked(None);
    tracing::info!(pipeline = %shared.name, topic = %part.topic, partition = part.partition,
        offset, failures, "Produce recovered.");
    true
}

/// One send of a record, as the acker sees it.
#[derive(Clone, Copy)]
struct Sent<'a> {
    offset: i64,
    dead_letter: bool,
    record: &'a Outgoing,
}

/// Stores `offset` (a record whose results are all acknowledged, and with
/// it every earlier one) for the next commit.
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
        // Only when the partition was revoked meanwhile: its next owner
        // starts from the last commit and may repeat a few records.
        tracing::debug!(pipeline = %shared.name, topic = %part.topic, partition = part.partition, %error, "Offset not stored.");
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
