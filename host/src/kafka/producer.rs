//! The pipeline's one producer: idempotent, `acks=all`, never recreated.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

use super::ClientSettings;
use super::context::{ClientEvents, Context};
use crate::record::Headers;

/// A record to produce, owned so it can be sent again after a failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Headers,
    /// Milliseconds since the epoch; `None` lets the producer stamp it.
    pub timestamp: Option<i64>,
}

impl Outgoing {
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// Why a record was not produced (librdkafka's error, as text).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SendError(String);

impl From<KafkaError> for SendError {
    fn from(e: KafkaError) -> Self {
        Self(e.to_string())
    }
}

/// Resolves when the broker acknowledges (or finally refuses) one record.
pub struct Delivery(DeliveryFuture);

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").finish_non_exhaustive()
    }
}

impl Future for Delivery {
    type Output = Result<(), SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|result| match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _))) => Err(error.into()),
            // The producer was dropped before reporting.
            Err(_) => Err(KafkaError::Canceled.into()),
        })
    }
}

/// One producer for the life of a pipeline.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<FutureProducer<Context>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    pub fn new(
        settings: &ClientSettings,
        pipeline: &str,
        events: Arc<dyn ClientEvents>,
    ) -> anyhow::Result<Self> {
        let context = Context::new(pipeline, "producer", events, None);
        let inner: FutureProducer<Context> = settings
            .producer_config()
            .create_with_context(context)
            .with_context(|| format!("creating the producer of pipeline {pipeline}"))?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Hands a record to librdkafka and returns its delivery. Waits while
    /// librdkafka's queue is full; other errors come back at once.
    pub async fn send(&self, record: &Outgoing) -> Result<Delivery, SendError> {
        let mut future = FutureRecord::<[u8], [u8]>::to(&record.topic);
        // librdkafka allocates a header list even when it stays empty.
        if !record.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key: key.as_str(),
                    value: Some(value.as_slice()),
                });
            }
            future = future.headers(headers);
        }
        if let Some(key) = &record.key {
            future = future.key(key.as_slice());
        }
        if let Some(value) = &record.value {
            future = future.payload(value.as_slice());
        }
        if let Some(ts) = record.timestamp {
            future = future.timestamp(ts);
        }
        loop {
            match self.inner.send_result(future) {
                Ok(delivery) => return Ok(Delivery(delivery)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    future = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
    }

    /// Waits (bounded) until everything queued is delivered or failed.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.flush(timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Records queued in librdkafka or awaiting acknowledgement.
    pub fn in_flight(&self) -> i32 {
        self.inner.in_flight_count()
    }
}
