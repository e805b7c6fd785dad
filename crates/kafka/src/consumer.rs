//! The pipeline's one consumer: subscribe, give each partition its own
//! queue of [`Record`]s, store offsets of finished records, close.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;

use super::context::{ClientEvents, Context, RebalanceListener};
use super::{ClientSettings, to_record};
use sandpiper_core::record::Record;

/// One consumer for the life of a pipeline.
#[derive(Clone)]
pub struct Consumer {
    inner: Arc<StreamConsumer<Context>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").finish_non_exhaustive()
    }
}

impl Consumer {
    pub fn new(
        settings: &ClientSettings,
        pipeline: &str,
        events: Arc<dyn ClientEvents>,
        rebalance: Arc<dyn RebalanceListener>,
    ) -> anyhow::Result<Self> {
        let context = Context::new(pipeline, "consumer", events, Some(rebalance));
        let inner: StreamConsumer<Context> = settings
            .consumer_config()
            .create_with_context(context)
            .with_context(|| format!("creating the consumer of pipeline {pipeline}"))?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    pub fn subscribe(&self, topics: &[&str]) -> anyhow::Result<()> {
        self.inner
            .subscribe(topics)
            .with_context(|| format!("subscribing to {topics:?}"))
    }

    /// The next record. Errors are transient (librdkafka recovers by itself);
    /// callers log them and call again.
    pub async fn recv(&self) -> Result<Record, KafkaError> {
        let message = self.inner.recv().await?;
        Ok(to_record(&message))
    }

    /// Gives `partition` a queue of its own: its records are received from
    /// the returned queue instead of [`Consumer::recv`], so every partition
    /// is read at its own pace (librdkafka bounds each partition's
    /// prefetch). Call it before the partition is assigned (from the
    /// rebalance callback), and again after every re-assignment.
    pub fn split(&self, topic: &str, partition: i32) -> Option<PartitionQueue> {
        self.inner
            .split_partition_queue(topic, partition)
            .map(|inner| PartitionQueue {
                inner,
                deferred: None,
            })
    }

    /// Marks everything before `offset + 1` as done: it will be committed.
    pub fn store_offset(&self, topic: &str, partition: i32, offset: i64) -> Result<(), KafkaError> {
        self.inner.store_offset(topic, partition, offset)
    }

    /// Commits stored offsets now; "nothing to commit" is success.
    pub fn commit_sync(&self) -> Result<(), KafkaError> {
        match self.inner.commit_consumer_state(CommitMode::Sync) {
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => Ok(()),
            other => other,
        }
    }

    /// Committed offsets of the current assignment, `(topic, partition, offset)`.
    pub fn committed(&self, timeout: Duration) -> Result<Vec<(String, i32, i64)>, KafkaError> {
        let tpl = self.inner.committed(timeout)?;
        Ok(tpl
            .elements()
            .iter()
            .map(|e| {
                (
                    e.topic().to_owned(),
                    e.partition(),
                    e.offset().to_raw().unwrap_or(-1),
                )
            })
            .collect())
    }

    /// Leaves the group and destroys the client, giving up after `timeout`:
    /// rust-rdkafka's drop can hang while brokers are unreachable.
    pub async fn close(self, timeout: Duration) {
        let inner = self.inner;
        let closing = tokio::task::spawn_blocking(move || {
            inner.unsubscribe();
            drop(inner);
        });
        if tokio::time::timeout(timeout, closing).await.is_err() {
            tracing::warn!(
                ?timeout,
                "Closing the consumer timed out; leaving it behind."
            );
        }
    }
}

/// One partition's own queue of records (see [`Consumer::split`]).
pub struct PartitionQueue {
    inner: StreamPartitionQueue<Context>,
    /// An error that came after the first record of a batch: the next call
    /// returns it, so it is reported, not dropped.
    deferred: Option<KafkaError>,
}

impl std::fmt::Debug for PartitionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionQueue").finish_non_exhaustive()
    }
}

impl PartitionQueue {
    /// Waits for the next record, then takes what else is already fetched,
    /// up to `max` in all, into `out`. Errors are transient; one that
    /// follows a record is returned by the next call.
    pub async fn recv_many(&mut self, out: &mut Vec<Record>, max: usize) -> Result<(), KafkaError> {
        if let Some(error) = self.deferred.take() {
            return Err(error);
        }
        let first = self.inner.recv().await?;
        out.push(to_record(&first));
        drop(first);
        while out.len() < max {
            // Poll once: a record that is already fetched, or none.
            let mut next = std::pin::pin!(self.inner.recv());
            let ready =
                std::future::poll_fn(|cx| std::task::Poll::Ready(next.as_mut().poll(cx))).await;
            match ready {
                std::task::Poll::Ready(Ok(message)) => out.push(to_record(&message)),
                std::task::Poll::Ready(Err(error)) => {
                    self.deferred = Some(error);
                    break;
                }
                std::task::Poll::Pending => break,
            }
        }
        Ok(())
    }
}
