//! Reading a dead-letter topic once, from a start position up to the end it
//! had when reading began, and committing how far a replay got.
//!
//! Used by `sandpiper dlq inspect` and `replay`, never by the pipeline. It
//! must never wait for records that do not exist yet: the end is the high
//! watermarks taken at open, and a partition is finished as soon as its
//! reader reaches them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message as _, Offset, TopicPartitionList};

use super::{ClientSettings, to_record};
use sandpiper_core::record::Record;

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From the oldest record still in the topic (inspect).
    Beginning,
    /// From the offsets the settings' group committed, else the beginning
    /// (a replay resuming where an earlier run stopped).
    Committed,
}

/// A one-pass reader of a topic up to its high watermarks at open.
pub struct TopicReader {
    consumer: Arc<StreamConsumer>,
    topic: String,
    /// First offset to read, per partition.
    start: BTreeMap<i32, i64>,
    /// High watermark per partition at open: the reader stops there.
    end: BTreeMap<i32, i64>,
    /// Partitions not yet read up to `end`.
    unfinished: BTreeSet<i32>,
    /// How long reading may make no progress before it is an error.
    idle: Duration,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReader")
            .field("topic", &self.topic)
            .field("start", &self.start)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl TopicReader {
    /// Looks the topic up, takes its watermarks (and the group's committed
    /// offsets for [`Start::Committed`]) and assigns the unread partitions.
    /// Fails when the brokers cannot be reached within `timeout` or the
    /// topic does not exist.
    pub async fn open(
        settings: &ClientSettings,
        topic: &str,
        start: Start,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let (settings, topic_owned) = (settings.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || open_blocking(&settings, &topic_owned, start, timeout))
            .await
            .context("opening the reader: task failed")?
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Records between the start positions and the end, per partition
    /// watermarks (gaps such as deleted records make the true count lower).
    pub fn remaining(&self) -> u64 {
        self.end
            .iter()
            .map(|(p, end)| (end - self.start.get(p).copied().unwrap_or(*end)).max(0) as u64)
            .sum()
    }

    /// The next record before the end, or `None` when every partition has
    /// been read to its end.
    pub async fn next(&mut self) -> anyhow::Result<Option<Record>> {
        let mut progress = Instant::now();
        while !self.unfinished.is_empty() {
            let left = self.idle.saturating_sub(progress.elapsed());
            if left.is_zero() {
                bail!(
                    "reading {} made no progress for {:?}; partitions {:?} were not read to \
                     their end (offsets {:?})",
                    self.topic,
                    self.idle,
                    self.unfinished,
                    self.end
                );
            }
            let received = match tokio::time::timeout(left, self.consumer.recv()).await {
                Err(_elapsed) => continue,
                Ok(received) => received,
            };
            match received {
                // Emitted once the fetch position reaches the partition's
                // current end, which is at or past the end taken at open.
                Err(KafkaError::PartitionEOF(partition)) => {
                    self.unfinished.remove(&partition);
                    progress = Instant::now();
                }
                Err(error) => {
                    tracing::warn!(topic = %self.topic, %error, "Error reading the topic; retrying.");
                }
                Ok(message) => {
                    progress = Instant::now();
                    let partition = message.partition();
                    let end = self.end.get(&partition).copied().unwrap_or(0);
                    if message.offset() + 1 >= end {
                        self.unfinished.remove(&partition);
                    }
                    // Written after open: left for the next run.
                    if message.offset() < end {
                        return Ok(Some(to_record(&message)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Commits `next` (the next offset to read, per partition) for the
    /// settings' group, synchronously.
    pub async fn commit(&self, next: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in next {
            tpl.add_partition_offset(&self.topic, *partition, Offset::Offset(*offset))
                .with_context(|| format!("offset {offset} of {}/{partition}", self.topic))?;
        }
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .context("committing: task failed")?
            .with_context(|| format!("committing replay progress on {topic}"))
    }

    /// Destroys the client, giving up after `timeout` (rust-rdkafka's drop
    /// can hang while brokers are unreachable).
    pub async fn close(self, timeout: Duration) {
        let consumer = self.consumer;
        let closing = tokio::task::spawn_blocking(move || drop(consumer));
        if tokio::time::timeout(timeout, closing).await.is_err() {
            tracing::warn!(?timeout, "Closing the reader timed out; leaving it behind.");
        }
    }
}

fn open_blocking(
    settings: &ClientSettings,
    topic: &str,
    start: Start,
    timeout: Duration,
) -> anyhow::Result<TopicReader> {
    let mut config = settings.consumer_config();
    // Progress is committed by hand, only after the replayed records are
    // acknowledged; EOF events tell when a partition is read to its end.
    config
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer = config.create().context("creating the reader")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| {
            format!(
                "reading metadata of topic {topic} from {} (are the brokers reachable?)",
                settings.brokers
            )
        })?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        bail!("topic {topic} is not in the cluster's metadata");
    };
    if let Some(error) = found.error() {
        bail!(
            "topic {topic}: {}",
            rdkafka::types::RDKafkaErrorCode::from(error)
        );
    }
    if found.partitions().is_empty() {
        bail!("topic {topic} does not exist (no partitions)");
    }
    let partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
    let committed = match start {
        Start::Beginning => BTreeMap::new(),
        Start::Committed => committed_offsets(&consumer, topic, &partitions, timeout)?,
    };
    let mut reader = TopicReader {
        consumer: Arc::new(consumer),
        topic: topic.to_owned(),
        start: BTreeMap::new(),
        end: BTreeMap::new(),
        unfinished: BTreeSet::new(),
        idle: timeout.max(Duration::from_secs(30)),
    };
    let mut tpl = TopicPartitionList::new();
    for partition in partitions {
        let (low, high) = reader
            .consumer
            .fetch_watermarks(topic, partition, timeout)
            .with_context(|| format!("reading the watermarks of {topic}/{partition}"))?;
        // Committed offsets below the low watermark were deleted by retention.
        let first = committed
            .get(&partition)
            .copied()
            .filter(|c| *c >= 0)
            .map_or(low, |c| c.max(low));
        reader.start.insert(partition, first);
        reader.end.insert(partition, high);
        if first < high {
            reader.unfinished.insert(partition);
            tpl.add_partition_offset(topic, partition, Offset::Offset(first))
                .with_context(|| format!("offset {first} of {topic}/{partition}"))?;
        }
    }
    if tpl.count() > 0 {
        reader
            .consumer
            .assign(&tpl)
            .with_context(|| format!("assigning the partitions of {topic}"))?;
    }
    Ok(reader)
}

fn committed_offsets(
    consumer: &StreamConsumer,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let mut tpl = TopicPartitionList::new();
    for partition in partitions {
        tpl.add_partition(topic, *partition);
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .with_context(|| format!("reading the committed offsets on {topic}"))?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
        .collect())
}
