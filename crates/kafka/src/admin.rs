//! Cluster metadata and topic creation, for `sandpiper check`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

use super::ClientSettings;

/// What the cluster says about one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub partitions: usize,
    /// The smallest replica count among its partitions.
    pub replication: usize,
    /// Partitions without a leader right now.
    pub offline: usize,
}

/// Brokers known to the cluster and, per asked topic, its info (`None`: missing).
#[derive(Debug, Clone)]
pub struct ClusterInfo {
    pub brokers: usize,
    pub topics: BTreeMap<String, Option<TopicInfo>>,
}

fn config(settings: &ClientSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.brokers)
        .set("allow.auto.create.topics", "false");
    for (k, v) in &settings.properties {
        c.set(k, v);
    }
    c
}

/// Reads the cluster's metadata for `topics`; fails when no broker answers.
pub fn describe(
    settings: &ClientSettings,
    topics: &[String],
    timeout: Duration,
) -> anyhow::Result<ClusterInfo> {
    let client: BaseConsumer = config(settings)
        .create()
        .context("creating a metadata client")?;
    let metadata = client.fetch_metadata(None, timeout).with_context(|| {
        format!(
            "no broker of {} answered within {timeout:?}",
            settings.brokers
        )
    })?;
    let mut found = BTreeMap::new();
    for t in metadata.topics() {
        if t.error().is_some() || t.partitions().is_empty() {
            continue;
        }
        found.insert(
            t.name().to_owned(),
            TopicInfo {
                partitions: t.partitions().len(),
                replication: t
                    .partitions()
                    .iter()
                    .map(|p| p.replicas().len())
                    .min()
                    .unwrap_or(0),
                offline: t.partitions().iter().filter(|p| p.leader() < 0).count(),
            },
        );
    }
    Ok(ClusterInfo {
        brokers: metadata.brokers().len(),
        topics: topics
            .iter()
            .map(|t| (t.clone(), found.get(t).cloned()))
            .collect(),
    })
}

/// Creates topics with explicit partitions and replication factor.
pub async fn create_topics(
    settings: &ClientSettings,
    topics: &[String],
    partitions: i32,
    replication: i32,
) -> anyhow::Result<Vec<(String, Result<(), String>)>> {
    let admin: AdminClient<DefaultClientContext> = config(settings)
        .create()
        .context("creating an admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .context("creating topics")?;
    Ok(results
        .into_iter()
        .map(|r| match r {
            Ok(name) => (name, Ok(())),
            Err((name, code)) => (name, Err(code.to_string())),
        })
        .collect())
}

/// Each topic's `max.message.bytes` (the largest record batch the broker
/// takes for it), by DescribeConfigs; a topic the broker does not describe
/// is left out.
pub async fn max_message_bytes(
    settings: &ClientSettings,
    topics: &[String],
) -> anyhow::Result<BTreeMap<String, u64>> {
    let admin: AdminClient<DefaultClientContext> = config(settings)
        .create()
        .context("creating an admin client")?;
    let specifiers: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let described = admin
        .describe_configs(&specifiers, &opts)
        .await
        .context("describing the topics' configs")?;
    let mut sizes = BTreeMap::new();
    for (topic, result) in topics.iter().zip(described) {
        let Ok(resource) = result else { continue };
        let size = resource
            .get("max.message.bytes")
            .and_then(|e| e.value.as_deref())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(size) = size {
            sizes.insert(topic.clone(), size);
        }
    }
    Ok(sizes)
}
