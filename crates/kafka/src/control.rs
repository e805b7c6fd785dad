//! The fleet's control topic: one deploy published, every host applies it.
//!
//! Records are keyed by pipeline name (so a compacted topic keeps the
//! latest version of each), carry the plugin's bytes as value and its name
//! in the `sandpiper.plugin.name` header. Every host reads the topic from
//! the beginning without a consumer group, so each one sees every record.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

use super::ClientSettings;

const H_NAME: &str = "sandpiper.plugin.name";

/// One published plugin version.
#[derive(Debug, Clone)]
pub struct ControlRecord {
    pub pipeline: String,
    pub name: String,
    pub bytes: Vec<u8>,
}

fn base(settings: &ClientSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.brokers);
    for (k, v) in &settings.properties {
        c.set(k, v);
    }
    c
}

/// Publishes versions to the control topic.
#[derive(Clone)]
pub struct ControlPublisher {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for ControlPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPublisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ControlPublisher {
    pub fn new(settings: &ClientSettings, topic: &str) -> anyhow::Result<Self> {
        let producer = base(settings)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Plugins are hundreds of KiB; they compress well.
            .set("compression.type", "lz4")
            .set("message.max.bytes", "10000000")
            .set("allow.auto.create.topics", "false")
            .create()
            .context("creating the control-topic producer")?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
        })
    }

    /// Publishes and waits for the broker's acknowledgement.
    pub async fn publish(&self, pipeline: &str, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let headers = OwnedHeaders::new().insert(Header {
            key: H_NAME,
            value: Some(name.as_bytes()),
        });
        let record = FutureRecord::to(&self.topic)
            .key(pipeline)
            .payload(bytes)
            .headers(headers);
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("publishing to the control topic {}", self.topic))?;
        Ok(())
    }
}

/// Follows the control topic from its beginning.
pub struct ControlFollower {
    consumer: StreamConsumer,
    topic: String,
    partitions: Vec<i32>,
}

impl std::fmt::Debug for ControlFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlFollower").finish_non_exhaustive()
    }
}

impl ControlFollower {
    pub fn new(settings: &ClientSettings, topic: &str) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = base(settings)
            // No group: every host reads everything; the id is never used to commit.
            .set("group.id", "sandpiper-control-reader")
            .set("enable.auto.commit", "false")
            .set("fetch.message.max.bytes", "10485760")
            .set("allow.auto.create.topics", "false")
            .create()
            .context("creating the control-topic consumer")?;
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("reading metadata of the control topic {topic}"))?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            bail!("control topic {topic} not found");
        };
        if t.error().is_some() || t.partitions().is_empty() {
            bail!("control topic {topic} does not exist: create it (compacted) before starting");
        }
        let mut tpl = TopicPartitionList::new();
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
        consumer
            .assign(&tpl)
            .context("assigning the control topic")?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            partitions: t.partitions().iter().map(|p| p.id()).collect(),
        })
    }

    /// Reads what the topic holds now, to its high watermarks, and returns
    /// the latest version published for each pipeline, so that a host
    /// starts on the fleet's version rather than its config's; [`next`]
    /// goes on after them. If the end cannot be read within `timeout`, it
    /// says so (a warning) and returns what it read: the host then starts
    /// on its config's versions where it knows no other, and the follower
    /// applies the rest as it reads them.
    ///
    /// [`next`]: ControlFollower::next
    pub async fn catch_up(&self, timeout: Duration) -> HashMap<String, ControlRecord> {
        let mut latest = HashMap::new();
        if let Err(error) = self.read_to_end(timeout, &mut latest).await {
            tracing::warn!(topic = %self.topic, error = %format!("{error:#}"), read = latest.len(),
                "Cannot read the fleet's versions before starting; starting on the config's where none was read.");
        }
        latest
    }

    async fn read_to_end(
        &self,
        timeout: Duration,
        latest: &mut HashMap<String, ControlRecord>,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ends = BTreeMap::new();
        for &p in &self.partitions {
            // One ListOffsets round trip per partition, once at start.
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, p, timeout)
                .with_context(|| format!("reading the end of the control topic {}", self.topic))?;
            if high > low {
                ends.insert(p, high);
            }
        }
        while !ends.is_empty() {
            let m = tokio::time::timeout_at(deadline, self.consumer.recv())
                .await
                .with_context(|| format!("not read to its end within {timeout:?}"))?
                .context("reading it")?;
            if ends
                .get(&m.partition())
                .is_some_and(|end| m.offset() + 1 >= *end)
            {
                ends.remove(&m.partition());
            }
            if let Some(record) = control_record(&m) {
                latest.insert(record.pipeline.clone(), record);
            }
        }
        Ok(())
    }

    /// The next published version, or the consumer's error (librdkafka
    /// retries by itself; the caller reports it and asks again).
    pub async fn next(&self) -> Result<ControlRecord, ControlError> {
        loop {
            let m = self
                .consumer
                .recv()
                .await
                .map_err(|e| ControlError(e.to_string()))?;
            if let Some(record) = control_record(&m) {
                return Ok(record);
            }
            // A tombstone, or not ours.
        }
    }
}

/// A published version, if `m` is one (a key and plugin bytes).
fn control_record(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<ControlRecord> {
    let (Some(key), Some(bytes)) = (m.key(), m.payload()) else {
        return None;
    };
    let name = m
        .headers()
        .and_then(|hs| hs.iter().find(|h| h.key == H_NAME).and_then(|h| h.value))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| "plugin".into());
    Some(ControlRecord {
        pipeline: String::from_utf8_lossy(key).into_owned(),
        name,
        bytes: bytes.to_vec(),
    })
}

/// Why the control topic could not be read (librdkafka's error, as text).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ControlError(String);
