//! Plain clients for the demo, preflight and tests: produce a set of
//! records, read a topic from the beginning. Not used on the hot path.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use super::{Acks, ClientSettings, NoEvents, Outgoing, Producer, to_record};
use crate::record::Record;

/// Produces `records` and waits for every acknowledgement, with the
/// pipeline's own producer settings (idempotent, `acks=all`).
pub async fn produce_all(brokers: &str, records: &[Outgoing]) -> anyhow::Result<()> {
    let settings = ClientSettings {
        brokers: brokers.to_owned(),
        group: String::new(),
        properties: BTreeMap::new(),
        consumer_properties: BTreeMap::new(),
        producer_properties: BTreeMap::from([("message.timeout.ms".into(), "30000".into())]),
    };
    let producer = Producer::new(&settings, "tools", Arc::new(NoEvents))?;
    // Groups keep the acknowledgements we hold bounded.
    for group in records.chunks(10_000) {
        let acks = Acks::new();
        for (index, record) in group.iter().enumerate() {
            producer.send_to(record, &acks, index).await;
        }
        acks.seal();
        if let Some((index, error)) = acks.wait().await.into_iter().next() {
            bail!("producing a record to {}: {error}", group[index].topic);
        }
    }
    Ok(())
}

/// Partitions of `topic` per the cluster's metadata.
pub fn partitions(brokers: &str, topic: &str, timeout: Duration) -> anyhow::Result<Vec<i32>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .create()?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading metadata of {topic}"))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("topic {topic} not in metadata"))?;
    if let Some(err) = t.error() {
        bail!("topic {topic}: {:?}", err);
    }
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

/// Reads `topic` from the beginning until `want` records arrived or
/// nothing new came for `quiet` (after which it returns what it has), or
/// `timeout` passed.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    want: usize,
    quiet: Duration,
    timeout: Duration,
) -> anyhow::Result<Vec<Record>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sandpiper-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions(brokers, topic, Duration::from_secs(10))? {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut last = Instant::now();
    let mut out = Vec::new();
    while out.len() < want && started.elapsed() < timeout && last.elapsed() < quiet {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push(to_record(&m));
                last = Instant::now();
            }
            Some(Err(e)) => tracing::debug!(%e, "read_topic"),
            None => {}
        }
    }
    Ok(out)
}

/// Counts per partition, for printing.
pub fn by_partition(records: &[Record]) -> BTreeMap<i32, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(r.partition).or_default() += 1;
    }
    m
}

/// Offsets committed by `group` for `topic`, per partition (-1: none).
pub fn committed(brokers: &str, group: &str, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions(brokers, topic, Duration::from_secs(10))? {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .with_context(|| format!("reading offsets of {group} on {topic}"))?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
        .collect())
}
