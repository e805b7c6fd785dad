//! Kafka clients: one consumer and one producer per pipeline, for the life
//! of the process. rdkafka types stay inside this module.
//!
//! librdkafka reconnects and re-bootstraps by itself, so nothing here ever
//! recreates a client on error: a client that is dropped and rebuilt on
//! every failure is exactly how incident 2 leaked a gigabyte.
//!
//! # Layout
//! - `context`: callbacks: rebalances, rate-limited logs, errors, statistics.
//! - `consumer`: the consumer wrapper speaking in [`Record`]s.
//! - `producer`: the producer wrapper; delivery reports counted per group of sends.
//! - `admin`: cluster metadata and topic creation (preflight checks).
//! - `control`: the fleet's control topic (publish and follow plugin versions).
//! - `embedded`: the in-process mock cluster for `brokers = "embedded"` and tests.
//! - `tools`: plain clients to produce samples and read topics (demo, tests).
//! - `replay`: one-pass reading of a dead-letter topic and committing replay progress.

pub mod admin;
mod consumer;
mod context;
pub mod control;
pub mod embedded;
mod headers;
mod producer;
pub mod replay;
pub mod tools;

use std::collections::BTreeMap;

pub use consumer::{Consumer, PartitionQueue};
pub use context::{BrokerStats, ClientEvents, NoEvents, PartitionStats, RebalanceListener};
pub use producer::{Acks, Delivery, Mark, Outgoing, Producer, SendError};

use sandpiper_core::record::Record;

/// librdkafka settings for one pipeline's clients: our defaults, then the
/// user's `[kafka.properties]` (which win), then the ones we must own.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub brokers: String,
    pub group: String,
    /// Applied to both clients.
    pub properties: BTreeMap<String, String>,
    pub consumer_properties: BTreeMap<String, String>,
    pub producer_properties: BTreeMap<String, String>,
}

impl ClientSettings {
    /// Whether the group uses the consumer protocol of KIP-848
    /// (`group.protocol=consumer`): the broker assigns partitions and keeps
    /// the member's session, so the classic protocol's settings are refused.
    fn next_gen_group(&self) -> bool {
        is_next_gen_group(self.properties.iter().chain(&self.consumer_properties))
    }

    fn consumer_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("auto.offset.reset", "earliest")
            .set("auto.commit.interval.ms", "1000")
            // Bounded prefetch, per partition (each has its own queue, and
            // both settings then apply per partition): this many KiB, or
            // `queued.min.messages` records (the pipeline's
            // `partition_buffer`), whichever comes first.
            .set("queued.max.messages.kbytes", "4096")
            .set("queued.min.messages", "1024")
            // After a fetch that filled a partition's queue librdkafka waits
            // this long before the next one: at its default (1 s) a busy
            // partition idled a second per queue's worth of records.
            .set("fetch.queue.backoff.ms", "20")
            .set("statistics.interval.ms", "5000");
        let next_gen = self.next_gen_group();
        if !next_gen {
            // Incremental rebalances: a joining host takes partitions from
            // the others without stopping the ones they keep.
            c.set("partition.assignment.strategy", "cooperative-sticky");
        }
        for (k, v) in self.properties.iter().chain(&self.consumer_properties) {
            c.set(k, v);
        }
        c.set("group.id", &self.group)
            // At-least-once: an offset is stored only once its record's
            // outputs (or dead letter) are acknowledged; stored offsets are
            // auto-committed, and committed synchronously on revoke/shutdown.
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set("allow.auto.create.topics", "false")
            .set("enable.partition.eof", "false");
        c
    }

    fn producer_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("linger.ms", "5")
            .set("statistics.interval.ms", "5000");
        for (k, v) in self.properties.iter().chain(&self.producer_properties) {
            c.set(k, v);
        }
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("allow.auto.create.topics", "false");
        c
    }
}

/// Consumer settings of the classic group protocol only: librdkafka
/// refuses them under KIP-848, where the broker's group settings apply.
pub const CLASSIC_GROUP_ONLY: [&str; 3] = [
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
];

/// Whether these consumer settings choose KIP-848's consumer protocol.
pub fn is_next_gen_group<'a>(mut settings: impl Iterator<Item = (&'a String, &'a String)>) -> bool {
    settings.any(|(k, v)| k == "group.protocol" && v.trim().eq_ignore_ascii_case("consumer"))
}

/// Converts a consumed message into the project's record.
fn to_record(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    use rdkafka::Message as _;
    Record {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers: headers::read(m),
    }
}
