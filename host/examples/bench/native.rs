//! The native baseline: a plain rust-rdkafka consume, transform, produce
//! loop with Sandpiper's at-least-once semantics and none of its machinery
//! (no Wasm, no dead letters, no retries, no metrics).
//!
//! One consumer and one producer. Like Sandpiper, the consumer gives every
//! partition a queue of its own (`split_partition_queue`), so partitions
//! are read side by side and none waits behind another's records (the
//! consumer is assigned every partition rather than subscribed); each
//! partition has a task that transforms and produces its records in order,
//! and an acker that stores a record's offset once its output is
//! acknowledged, in order. Stored offsets are auto-committed. There is no
//! worker count: a task per partition is all the parallelism the loop can
//! use, so its 1- and 2-worker rows run the same program.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{Consumer as _, DefaultConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::scenario::{CONSUMER_PROPERTIES, PARTITIONS, PRODUCER_PROPERTIES, Spec};

/// What the native loop does to each value.
#[derive(Debug, Clone, Copy)]
pub enum Transform {
    Copy,
    /// The `json-transform` plugin's code, compiled natively.
    Json,
}

/// Outputs per partition that may await acknowledgement at once: a
/// pipeline's `max_unacked` default.
const MAX_UNACKED: usize = 4096;

/// A partition's offset and its output's delivery, on their way to the acker.
type Sent = (i64, DeliveryFuture);

pub struct Native {
    consumer: Arc<StreamConsumer>,
    /// Records whose output is acknowledged and offset stored.
    pub stored: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Native {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Native")
            .field("stored", &self.stored)
            .finish_non_exhaustive()
    }
}

impl Native {
    pub fn start(spec: &Spec, transform: Transform) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &spec.brokers);
        for (k, v) in CONSUMER_PROPERTIES {
            config.set(*k, *v);
        }
        config.set("fetch.wait.max.ms", spec.phase.fetch_wait_ms());
        // Sandpiper's prefetch defaults (`kafka/mod.rs`, a pipeline's
        // `partition_buffer`): with a queue per partition they bound each.
        config
            .set("queued.max.messages.kbytes", "4096")
            .set("queued.min.messages", "1024");
        let consumer: Arc<StreamConsumer> = Arc::new(
            config
                .set("group.id", &spec.group)
                .set("enable.auto.offset.store", "false")
                .set("enable.auto.commit", "true")
                .create()
                .context("native consumer")?,
        );
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &spec.brokers);
        for (k, v) in PRODUCER_PROPERTIES {
            config.set(*k, *v);
        }
        let producer: FutureProducer = config.create().context("native producer")?;
        // The partitions are assigned, not subscribed to: no other member
        // ever shares them, and an assignment that never changes keeps the
        // split queues (a rebalance's assign would undo them). Offsets
        // still go through the group: committed ones, or the earliest.
        let mut assignment = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            assignment.add_partition_offset(&spec.input, partition, Offset::Stored)?;
        }
        consumer.assign(&assignment)?;
        let mut queues = Vec::new();
        for partition in 0..PARTITIONS {
            queues.push(
                consumer
                    .split_partition_queue(&spec.input, partition)
                    .with_context(|| format!("splitting {}/{partition}", spec.input))?,
            );
        }

        let stored = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (partition, queue) in (0..).zip(queues) {
            let (ack_tx, ack_rx) = mpsc::channel::<Sent>(MAX_UNACKED);
            tasks.push(tokio::spawn(work(
                queue,
                ack_tx,
                producer.clone(),
                spec.output.clone(),
                transform,
            )));
            tasks.push(tokio::spawn(ack(
                ack_rx,
                consumer.clone(),
                spec.input.clone(),
                partition,
                stored.clone(),
            )));
        }
        // The main queue still has to be polled to serve the client's
        // events. It never carries a record.
        let events = consumer.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(m) => eprintln!(
                        "native: a record of {}/{} on the main queue",
                        m.topic(),
                        m.partition()
                    ),
                    Err(e) => eprintln!("native: consume error: {e}"),
                }
            }
        }));
        Ok(Self {
            consumer,
            stored,
            tasks,
        })
    }

    /// Whether the group gave this consumer its partitions.
    pub fn assigned(&self) -> bool {
        self.consumer.assignment().is_ok_and(|a| a.count() > 0)
    }

    pub fn done(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    pub fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Transforms and produces one partition's records, in order.
async fn work(
    queue: StreamPartitionQueue<DefaultConsumerContext>,
    acks: mpsc::Sender<Sent>,
    producer: FutureProducer,
    output: String,
    transform: Transform,
) {
    loop {
        let m = match queue.recv().await {
            Ok(m) => m,
            Err(e) => {
                eprintln!("native: consume error: {e}");
                continue;
            }
        };
        let value = match (transform, m.payload()) {
            (Transform::Copy, v) => v.map(<[u8]>::to_vec),
            (Transform::Json, v) => Some(
                crate::transform::transform(v.unwrap_or_default())
                    .unwrap_or_else(|e| e.into_bytes()),
            ),
        };
        let mut record = FutureRecord::<[u8], [u8]>::to(&output);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(v) = &value {
            record = record.payload(v);
        }
        let delivery = loop {
            match producer.send_result(record) {
                Ok(d) => break d,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    eprintln!("native: produce error: {e}");
                    return;
                }
            }
        };
        let offset = m.offset();
        drop(m);
        if acks.send((offset, delivery)).await.is_err() {
            return;
        }
    }
}

/// Stores one partition's offsets as their outputs are acknowledged, in order.
async fn ack(
    mut acks: mpsc::Receiver<Sent>,
    consumer: Arc<StreamConsumer>,
    topic: String,
    partition: i32,
    stored: Arc<AtomicU64>,
) {
    while let Some((offset, delivery)) = acks.recv().await {
        match delivery.await {
            Ok(Ok(_)) => {
                if let Err(e) = consumer.store_offset(&topic, partition, offset) {
                    eprintln!("native: storing {topic}/{partition}@{offset}: {e}");
                }
                stored.fetch_add(1, Ordering::Relaxed);
            }
            // At-least-once: a lost output must never let its offset be
            // stored; the benchmark's tally then reports it missing.
            Ok(Err((e, _))) => {
                eprintln!("native: delivery of {topic}/{partition}@{offset} failed: {e}");
                return;
            }
            Err(_) => return,
        }
    }
}
