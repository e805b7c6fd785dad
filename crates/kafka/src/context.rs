//! Client callbacks: rebalances, librdkafka's logs and errors, statistics.
//!
//! These run on librdkafka's threads or inside a consumer poll, so they must
//! never panic and never block for long (the revoke handler is bounded).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;

use sandpiper_core::ratelimit::LogLimiter;

/// What the pipeline does when partitions come and go.
pub trait RebalanceListener: Send + Sync {
    /// Partitions are being taken away. Stop them and wait (bounded) for their
    /// in-flight records to be acknowledged and their offsets stored; the
    /// consumer commits synchronously right after. When `lost`, another
    /// member may already own them: stop without storing anything.
    fn revoking(&self, partitions: &[(String, i32)], lost: bool);
    /// Partitions were assigned: start working on them.
    fn assigned(&self, partitions: &[(String, i32)]);
}

/// Broker and partition health as librdkafka sees it.
#[derive(Debug, Clone, Default)]
pub struct BrokerStats {
    /// Brokers (learned from metadata) whose connection is up, and all of them.
    pub brokers_up: usize,
    pub brokers_known: usize,
    pub partitions: Vec<PartitionStats>,
}

/// One partition in the statistics.
#[derive(Debug, Clone)]
pub struct PartitionStats {
    pub topic: String,
    pub partition: i32,
    /// -1 when the partition has no leader (offline).
    pub leader: i32,
    /// The leader is known but this client cannot reach it (its broker is
    /// down): the partition is unavailable although the metadata still
    /// names a leader.
    pub leader_down: bool,
    /// Messages between our position and the high watermark; -1 when unknown.
    pub consumer_lag: i64,
    pub committed_offset: i64,
    pub fetch_state: String,
}

/// Where the clients report what they see.
pub trait ClientEvents: Send + Sync {
    /// A client-level error (all brokers down, authentication, fatal...).
    fn client_error(&self, error: &str, fatal: bool);
    /// A statistics snapshot (every `statistics.interval.ms`).
    fn stats(&self, stats: BrokerStats);
}

/// For clients with no health to report to (a replay, the tools): client
/// errors are still logged, rate-limited, by the client's context.
#[derive(Debug)]
pub struct NoEvents;

impl ClientEvents for NoEvents {
    fn client_error(&self, _error: &str, _fatal: bool) {}
    fn stats(&self, _stats: BrokerStats) {}
}

/// The context shared by a pipeline's consumer and producer.
pub(crate) struct Context {
    /// Which pipeline, for log lines.
    pub pipeline: String,
    /// "consumer" or "producer".
    pub role: &'static str,
    pub events: Arc<dyn ClientEvents>,
    pub rebalance: Option<Arc<dyn RebalanceListener>>,
    /// librdkafka repeats connection errors on every retry: one line per
    /// facility per 30 s is plenty.
    pub logs: LogLimiter,
}

impl Context {
    pub fn new(
        pipeline: &str,
        role: &'static str,
        events: Arc<dyn ClientEvents>,
        rebalance: Option<Arc<dyn RebalanceListener>>,
    ) -> Self {
        Self {
            pipeline: pipeline.to_owned(),
            role,
            events,
            rebalance,
            logs: LogLimiter::new(Duration::from_secs(30)),
        }
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let key = format!("{fac}:{level:?}");
        let Some(suppressed) = self.logs.check(&key) else {
            return;
        };
        let (pipeline, role) = (&self.pipeline, self.role);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", pipeline, role, fac, suppressed, "{message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", pipeline, role, fac, suppressed, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", pipeline, role, fac, suppressed, "{message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", pipeline, role, fac, suppressed, "{message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let fatal = matches!(
            error.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::Fatal)
        );
        self.events
            .client_error(&format!("{error}: {reason}"), fatal);
        let key = format!("error:{error}");
        if let Some(suppressed) = self.logs.check(&key) {
            // A broker outage is an operator's business but loses no data.
            tracing::warn!(pipeline = %self.pipeline, role = self.role, suppressed, "Kafka client error: {error}: {reason}.");
        }
    }

    fn stats(&self, statistics: Statistics) {
        let brokers_known = statistics
            .brokers
            .values()
            .filter(|b| b.nodeid >= 0)
            .count();
        let brokers_up = statistics
            .brokers
            .values()
            .filter(|b| b.nodeid >= 0 && b.state == "UP")
            .count();
        // Brokers that are reachable, or not needed yet ("INIT": librdkafka
        // connects only when it must). A leader that is neither, or that the
        // cluster no longer lists, is down.
        let reachable: Vec<i32> = statistics
            .brokers
            .values()
            .filter(|b| {
                b.nodeid >= 0 && !matches!(b.state.as_str(), "DOWN" | "TRY_CONNECT" | "CONNECT")
            })
            .map(|b| b.nodeid)
            .collect();
        let partitions = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values().map(move |p| (t, p)))
            .filter(|(_, p)| p.partition >= 0)
            .map(|(t, p)| PartitionStats {
                topic: t.topic.clone(),
                partition: p.partition,
                leader: p.leader,
                leader_down: p.leader >= 0 && !reachable.contains(&p.leader),
                consumer_lag: p.consumer_lag,
                committed_offset: p.committed_offset,
                fetch_state: p.fetch_state.clone(),
            })
            .collect();
        self.events.stats(BrokerStats {
            brokers_up,
            brokers_known,
            partitions,
        });
    }
}

fn parts(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // Before librdkafka starts fetching: the listener gives every
            // partition its own queue, and a partition's queue must exist
            // before its first fetch, or those records would land in the
            // consumer's main queue.
            let partitions = parts(tpl);
            tracing::info!(pipeline = %self.pipeline, partitions = ?partitions, "Partitions assigned.");
            if let Some(listener) = &self.rebalance {
                listener.assigned(&partitions);
            }
            return;
        }
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let lost = consumer.assignment_lost();
        let partitions = parts(tpl);
        tracing::info!(pipeline = %self.pipeline, partitions = ?partitions, lost, "Partitions revoked.");
        if let Some(listener) = &self.rebalance {
            listener.revoking(&partitions, lost);
        }
        if !lost {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => {}
                // Nothing stored since the last commit.
                Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => {
                    tracing::warn!(pipeline = %self.pipeline, %error, "Commit on revoke failed; the next owner may reprocess some records.")
                }
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(_) | Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(pipeline = %self.pipeline, %error, "Rebalance error.");
            }
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(error) = result
            && !matches!(
                error,
                KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)
            )
            && let Some(suppressed) = self.logs.check("commit")
        {
            tracing::warn!(pipeline = %self.pipeline, %error, suppressed, "Offset commit failed; it is retried with the next commit.");
        }
    }
}
