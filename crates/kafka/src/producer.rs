//! The pipeline's one producer: idempotent, `acks=all`, never recreated.
//!
//! Sends are counted in groups ([`Acks`], the outputs of one batch of
//! records): librdkafka's delivery reports count a group down and wake its
//! waiter once, when the last one arrives, rather than completing a future
//! per record.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use tokio::sync::Notify;

use super::ClientSettings;
use super::context::{ClientEvents, Context};
use sandpiper_core::record::Headers;

/// A record to produce, owned so it can be sent again after a failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Headers,
    /// A last header, shared with other records.
    pub mark: Option<Mark>,
    /// Milliseconds since the epoch; `None` lets the producer stamp it.
    pub timestamp: Option<i64>,
}

/// A header many records carry with one value (the `sandpiper.plugin` mark
/// of a plugin version): the value is shared, so marking a record
/// allocates nothing. Sent after the record's own headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub key: &'static str,
    pub value: Arc<str>,
}

impl Outgoing {
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + sandpiper_core::record::headers_size(&self.headers)
            + self
                .mark
                .as_ref()
                .map_or(0, |m| m.key.len() + m.value.len())
    }
}

/// Why a record was not produced: librdkafka's error code and its text.
///
/// The code tells a refusal that waiting heals (a broker or leader away, a
/// timeout, too few in-sync replicas, throttling, a full queue) from one it
/// never will ([`SendError::is_permanent`]): the record itself is wrong for
/// the topic (too large, invalid, corrupt) or the operator's set-up is (an
/// unknown topic, a denied authorisation).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    code: Option<RDKafkaErrorCode>,
    message: String,
    /// Refused by the producer itself, before any broker saw it.
    local: bool,
}

impl SendError {
    /// True when sending the same record again cannot succeed until
    /// something changes (the record, or the operator's configuration):
    /// retrying it would hold its partition for ever.
    pub fn is_permanent(&self) -> bool {
        use RDKafkaErrorCode as C;
        matches!(
            self.code,
            // The record: too large for the producer or the topic, invalid,
            // corrupt, or with a timestamp the topic refuses.
            Some(
                C::MessageSizeTooLarge
                    | C::InvalidMessageSize
                    | C::MessageBatchTooLarge
                    | C::InvalidMessage
                    | C::InvalidRecord
                    | C::BadMessage
                    | C::InvalidTimestamp
                    // The operator's: the topic does not exist (the producer
                    // never creates topics), is invalid, or may not be written.
                    | C::UnknownTopic
                    | C::UnknownPartition
                    | C::UnknownTopicOrPartition
                    | C::InvalidTopic
                    | C::TopicAuthorizationFailed
                    | C::PolicyViolation
                    | C::InvalidRequiredAcks
            )
        )
    }

    /// True for a broker's refusal of a whole record batch for its size.
    /// The broker judges batches: records that would fit alone share the
    /// refusal of a too-large one batched with them, so such a refusal is
    /// the record's own only once it is refused again when sent alone.
    pub fn is_batch_size_refusal(&self) -> bool {
        !self.local
            && matches!(
                self.code,
                Some(
                    RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge
                )
            )
    }

    /// librdkafka's name of the error code (`MessageSizeTooLarge`...), for
    /// log fields and dead-letter messages.
    pub fn code_name(&self) -> String {
        self.code
            .map_or_else(|| "unknown".to_owned(), |c| format!("{c:?}"))
    }
}

impl From<KafkaError> for SendError {
    fn from(e: KafkaError) -> Self {
        Self {
            code: e.rdkafka_error_code(),
            message: e.to_string(),
            local: false,
        }
    }
}

impl SendError {
    /// librdkafka refused the record when it was handed over.
    fn local(e: KafkaError) -> Self {
        Self {
            local: true,
            ..Self::from(e)
        }
    }
}

/// The delivery reports of a group of sends. Each send has an index in
/// the group; [`Acks::wait`] returns once every send is reported, with the
/// ones that failed.
#[derive(Debug)]
pub struct Acks {
    /// Sends not yet reported, plus one until the group is sealed.
    remaining: AtomicUsize,
    /// Failed sends, by index.
    failed: Mutex<Vec<(usize, SendError)>>,
    reported: Notify,
}

impl Acks {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(1),
            failed: Mutex::default(),
            reported: Notify::new(),
        })
    }

    fn report(&self, index: usize, result: Result<(), SendError>) {
        if let Err(error) = result {
            self.failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((index, error));
        }
        self.count_down();
    }

    fn count_down(&self) {
        // The failure pushed before is visible to whoever sees zero.
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Stored as a permit if nobody waits yet.
            self.reported.notify_one();
        }
    }

    /// No more sends join the group: [`Acks::wait`] may now finish.
    pub fn seal(&self) {
        self.count_down();
    }

    /// Waits until the group is sealed and every send in it reported;
    /// returns the failed sends, in index order.
    pub async fn wait(&self) -> Vec<(usize, SendError)> {
        while self.remaining.load(Ordering::Acquire) > 0 {
            self.reported.notified().await;
        }
        let mut failed =
            std::mem::take(&mut *self.failed.lock().unwrap_or_else(PoisonError::into_inner));
        failed.sort_unstable_by_key(|(index, _)| *index);
        failed
    }
}

/// What a message carries through librdkafka to its delivery report.
pub(crate) struct Token {
    acks: Arc<Acks>,
    index: usize,
}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Token>;

    fn delivery(&self, result: &DeliveryResult<'_>, token: Box<Token>) {
        let result = match result {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(SendError::from(error.clone())),
        };
        token.acks.report(token.index, result);
    }
}

/// Resolves when the broker acknowledges (or finally refuses) one record.
#[derive(Debug)]
pub struct Delivery(Arc<Acks>);

impl IntoFuture for Delivery {
    type Output = Result<(), SendError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            match self.0.wait().await.pop() {
                Some((_, error)) => Err(error),
                None => Ok(()),
            }
        })
    }
}

/// One producer for the life of a pipeline.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<ThreadedProducer<Context>>,
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
        let inner: ThreadedProducer<Context> = settings
            .producer_config()
            .create_with_context(context)
            .with_context(|| format!("creating the producer of pipeline {pipeline}"))?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Hands a record to librdkafka as send `index` of `acks`' group, whose
    /// delivery report then counts the group down; a record librdkafka
    /// refuses at once is reported to the group as failed at once. Waits
    /// while librdkafka's queue is full.
    pub async fn send_to(&self, record: &Outgoing, acks: &Arc<Acks>, index: usize) {
        if let Err(error) = self.enqueue(record, acks, index).await {
            acks.report(index, Err(error));
        }
    }

    /// Hands one record to librdkafka and returns its delivery. Waits while
    /// librdkafka's queue is full; other errors come back at once.
    pub async fn send(&self, record: &Outgoing) -> Result<Delivery, SendError> {
        let acks = Acks::new();
        self.enqueue(record, &acks, 0).await?;
        acks.seal();
        Ok(Delivery(acks))
    }

    /// Counts a send into `acks` and queues it in librdkafka; when
    /// librdkafka refuses it, it stays counted and the error comes back.
    async fn enqueue(
        &self,
        record: &Outgoing,
        acks: &Arc<Acks>,
        index: usize,
    ) -> Result<(), SendError> {
        // Counted before librdkafka may report it.
        acks.remaining.fetch_add(1, Ordering::Relaxed);
        let token = Box::new(Token {
            acks: acks.clone(),
            index,
        });
        let mut base = BaseRecord::<[u8], [u8], Box<Token>>::with_opaque_to(&record.topic, token);
        if let Some(headers) = owned_headers(record) {
            base = base.headers(headers);
        }
        if let Some(key) = &record.key {
            base = base.key(key.as_slice());
        }
        if let Some(value) = &record.value {
            base = base.payload(value.as_slice());
        }
        if let Some(ts) = record.timestamp {
            base = base.timestamp(ts);
        }
        loop {
            match self.inner.send(base) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    base = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(SendError::local(error)),
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

/// `record`'s headers as librdkafka takes them, if it has any (librdkafka
/// allocates a header list even when it stays empty).
fn owned_headers(record: &Outgoing) -> Option<OwnedHeaders> {
    let count = record.headers.len() + usize::from(record.mark.is_some());
    if count == 0 {
        return None;
    }
    let mut headers = OwnedHeaders::new_with_capacity(count);
    let marked = record.mark.iter().map(|m| (m.key, m.value.as_bytes()));
    for (key, value) in record
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .chain(marked)
    {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    Some(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts a send into `acks` as `send_to` does, without a broker.
    fn counted(acks: &Acks) {
        acks.remaining.fetch_add(1, Ordering::Relaxed);
    }

    #[tokio::test]
    async fn a_group_is_done_once_sealed_and_every_send_reported() {
        let acks = Acks::new();
        for _ in 0..3 {
            counted(&acks);
        }
        let error = |code, message: &str| SendError {
            code: Some(code),
            message: message.into(),
            local: false,
        };
        acks.report(2, Err(error(RDKafkaErrorCode::MessageTimedOut, "two")));
        acks.report(0, Ok(()));
        acks.report(1, Err(error(RDKafkaErrorCode::MessageSizeTooLarge, "one")));
        // Every send is reported, but more may join until it is sealed.
        let early = tokio::time::timeout(Duration::from_millis(50), acks.wait()).await;
        assert!(early.is_err(), "done before it was sealed");
        acks.seal();
        let failed = acks.wait().await;
        let failed: Vec<(usize, String, bool)> = failed
            .into_iter()
            .map(|(i, e)| (i, e.message.clone(), e.is_permanent()))
            .collect();
        assert_eq!(
            failed,
            vec![(1, "one".into(), true), (2, "two".into(), false)]
        );
    }

    #[test]
    fn refusals_that_waiting_heals_are_told_from_those_it_never_will() {
        use RDKafkaErrorCode as C;
        let permanent = |code| SendError::from(KafkaError::MessageProduction(code)).is_permanent();
        for code in [
            C::MessageSizeTooLarge,
            C::InvalidRecord,
            C::InvalidMessage,
            C::UnknownTopic,
            C::UnknownTopicOrPartition,
            C::TopicAuthorizationFailed,
        ] {
            assert!(permanent(code), "{code:?} is permanent");
        }
        for code in [
            C::MessageTimedOut,
            C::QueueFull,
            C::LeaderNotAvailable,
            C::NotLeaderForPartition,
            C::BrokerNotAvailable,
            C::RequestTimedOut,
            C::NotEnoughReplicas,
            C::NotEnoughReplicasAfterAppend,
            C::ThrottlingQuotaExceeded,
            C::AllBrokersDown,
            C::BrokerTransportFailure,
            C::PurgeQueue,
        ] {
            assert!(!permanent(code), "{code:?} is transient");
        }
        // Errors without a code are retried, never dropped.
        assert!(!SendError::from(KafkaError::Canceled).is_permanent());
        // A broker's size refusal may be its batch's; the producer's own is the record's.
        let too_large = || KafkaError::MessageProduction(C::MessageSizeTooLarge);
        assert!(SendError::from(too_large()).is_batch_size_refusal());
        assert!(!SendError::local(too_large()).is_batch_size_refusal());
        assert!(SendError::local(too_large()).is_permanent());
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_the_last_report_arrives_later() {
        let acks = Acks::new();
        counted(&acks);
        acks.seal();
        let reporter = acks.clone();
        let report = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            reporter.report(0, Ok(()));
        });
        let failed = tokio::time::timeout(Duration::from_secs(10), acks.wait())
            .await
            .expect("woken by the last report");
        assert!(failed.is_empty());
        report.await.expect("reporter");
    }
}
