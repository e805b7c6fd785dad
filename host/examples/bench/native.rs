//! The native baseline: a plain rust-rdkafka consume, transform, produce
//! loop with Sandpiper's at-least-once semantics and none of its machinery
//! (no Wasm, no dead letters, no retries, no metrics).
//!
//! One consumer and one producer, `workers` transform tasks (partition `p`
//! goes to task `p % workers`, so each partition stays in order), and per
//! task an acker that stores a record's offset once its output is
//! acknowledged, in order; stored offsets are auto-committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::scenario::{CONSUMER_PROPERTIES, PRODUCER_PROPERTIES, Spec};

/// What the native loop does to each value.
#[derive(Debug, Clone, Copy)]
pub enum Transform {
    Copy,
    /// The `json-transform` plugin's code, compiled natively.
    Json,
}

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
        consumer.subscribe(&[spec.input.as_str()])?;

        let stored = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        let mut inboxes = Vec::new();
        for _ in 0..spec.workers {
            let (tx, rx) = mpsc::channel::<OwnedMessage>(1024);
            let (ack_tx, ack_rx) = mpsc::channel::<(String, i32, i64, DeliveryFuture)>(10_000);
            inboxes.push(tx);
            tasks.push(tokio::spawn(work(
                rx,
                ack_tx,
                producer.clone(),
                spec.output.clone(),
                transform,
            )));
            tasks.push(tokio::spawn(ack(ack_rx, consumer.clone(), stored.clone())));
        }
        let source = consumer.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let m = match source.recv().await {
                    Ok(m) => m.detach(),
                    Err(e) => {
                        eprintln!("native: consume error: {e}");
                        continue;
                    }
                };
                let to = &inboxes[m.partition() as usize % inboxes.len()];
                if to.send(m).await.is_err() {
                    return;
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

async fn work(
    mut inbox: mpsc::Receiver<OwnedMessage>,
    acks: mpsc::Sender<(String, i32, i64, DeliveryFuture)>,
    producer: FutureProducer,
    output: String,
    transform: Transform,
) {
    while let Some(m) = inbox.recv().await {
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
        let entry = (m.topic().to_owned(), m.partition(), m.offset(), delivery);
        if acks.send(entry).await.is_err() {
            return;
        }
    }
}

async fn ack(
    mut acks: mpsc::Receiver<(String, i32, i64, DeliveryFuture)>,
    consumer: Arc<StreamConsumer>,
    stored: Arc<AtomicU64>,
) {
    while let Some((topic, partition, offset, delivery)) = acks.recv().await {
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
