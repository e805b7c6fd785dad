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
use sandpiper_core::record::Record;

/// Produces `records` and waits for every acknowledgement, with the
/// pipeline's own producer settings (idempotent, `acks=all`).
pub async fn produce_all(brokers: &str, records: &[Outgoing]) -> anyhow::Result<()> {
    let settings = ClientSettings {
        brokers: brokers.to_owned(),
        group: String::new(),
        properties: BTreeMap::new(),
        consumer_properties: BTreeMap::new(),
        producer_properties: BTreeMap::from([
            ("message.timeout.ms".into(), "30000".into()),
            // Tests produce records larger than a pipeline's producer takes.
            ("message.max.bytes".into(), "10000000".into()),
        ]),
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

/// A consumer that reads what it is assigned, without a group's commits.
fn reader(brokers: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sandpiper-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        .create()?)
}

/// Reads `topic` from its beginning to its high watermark as of the call:
/// every record it holds then, duplicates included, so a tally built from it
/// sees extra records as well as missing ones. Fails when the end is not
/// reached within `timeout` (never returns part of a topic as if whole).
pub fn read_to_end(brokers: &str, topic: &str, timeout: Duration) -> anyhow::Result<Vec<Record>> {
    let consumer = reader(brokers)?;
    let mut tpl = TopicPartitionList::new();
    // Per partition, the offset reading must reach.
    let mut ends = BTreeMap::new();
    for p in partitions(brokers, topic, Duration::from_secs(10))? {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .with_context(|| format!("reading the watermarks of {topic}/{p}"))?;
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    while !ends.is_empty() {
        if started.elapsed() > timeout {
            bail!(
                "{topic} not read to its end within {timeout:?}: partitions {ends:?} short of their high watermarks"
            );
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let record = to_record(&m);
                if ends
                    .get(&record.partition)
                    .is_some_and(|end| record.offset + 1 >= *end)
                {
                    ends.remove(&record.partition);
                }
                out.push(record);
            }
            Some(Err(e)) => tracing::debug!(%e, "read_to_end"),
            None => {}
        }
    }
    Ok(out)
}

/// Reads `topic` from the beginning until nothing new came for `quiet`, for
/// brokers whose ListOffsets does not give a partition's end (Tansu): only
/// once the writers have stopped is that the whole topic. Fails after
/// `timeout`.
pub fn read_until_quiet(
    brokers: &str,
    topic: &str,
    quiet: Duration,
    timeout: Duration,
) -> anyhow::Result<Vec<Record>> {
    let consumer = reader(brokers)?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions(brokers, topic, Duration::from_secs(10))? {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let (started, mut last) = (Instant::now(), Instant::now());
    let mut out = Vec::new();
    while last.elapsed() < quiet {
        if started.elapsed() > timeout {
            bail!("{topic} still delivering records after {timeout:?}");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push(to_record(&m));
                last = Instant::now();
            }
            Some(Err(e)) => tracing::debug!(%e, "read_until_quiet"),
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
