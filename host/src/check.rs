//! Preflight: `sandpiper check --config FILE`, also run at start-up (its
//! findings logged): is the config valid, do the plugins load, are the
//! brokers reachable, do the topics exist, and are they replicated enough.
//!
//! Replication factor 1 is flagged because it is how incident 2 began: one
//! broker died and its partitions went offline with it.

use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::kafka::ClientSettings;
use crate::kafka::admin;
use crate::runtime::Runtime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Error,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub level: Level,
    pub message: String,
}

/// What `check` should do about missing topics.
#[derive(Debug, Clone, Copy)]
pub struct CreateTopics {
    pub partitions: i32,
    pub replication: i32,
}

/// The findings of a check; `errors`/`warnings` count them.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    fn push(&mut self, level: Level, message: String) {
        self.findings.push(Finding { level, message });
    }

    pub fn count(&self, level: Level) -> usize {
        self.findings.iter().filter(|f| f.level == level).count()
    }
}

/// Loads every plugin of the config with the pipelines' settings.
pub fn plugins(config: &Config, report: &mut Report) {
    let runtime = match Runtime::new(config.engine_settings()) {
        Ok(r) => r,
        Err(e) => return report.push(Level::Error, format!("the Wasm engine cannot start: {e:#}")),
    };
    for p in &config.pipelines {
        match runtime.load_file(&p.plugin, p.plugin_settings()) {
            Ok(plugin) => report.push(
                Level::Ok,
                format!(
                    "pipeline {}: plugin {} loads and implements the world",
                    p.name(),
                    plugin.id()
                ),
            ),
            Err(e) => report.push(Level::Error, format!("pipeline {}: {e}", p.name())),
        }
    }
}

/// Checks brokers and topics, creating missing ones when asked, and, with
/// `record_sizes`, whether records fit the topics they must go to.
pub async fn kafka(
    config: &Config,
    create: Option<CreateTopics>,
    record_sizes: bool,
    report: &mut Report,
) {
    if config.kafka.is_embedded() {
        report.push(
            Level::Ok,
            "kafka: embedded cluster (topics are created at start; it keeps nothing)".into(),
        );
        return;
    }
    let settings = ClientSettings {
        brokers: config.kafka.brokers.0.clone(),
        group: config.kafka.group.0.clone(),
        properties: config.kafka.properties.clone(),
        consumer_properties: Default::default(),
        producer_properties: Default::default(),
    };
    let mut topics: Vec<(String, &'static str, String)> = Vec::new();
    for p in &config.pipelines {
        for t in &p.inputs {
            topics.push((t.0.clone(), "input", p.name().to_owned()));
        }
        topics.push((p.output.0.clone(), "output", p.name().to_owned()));
        topics.push((p.dead_letter.0.clone(), "dead-letter", p.name().to_owned()));
    }
    if let Some(t) = &config.deploy.control_topic {
        topics.push((t.0.clone(), "control", "fleet".into()));
    }
    let names: Vec<String> = topics.iter().map(|t| t.0.clone()).collect();
    let describe = {
        let (settings, names) = (settings.clone(), names.clone());
        tokio::task::spawn_blocking(move || {
            admin::describe(&settings, &names, Duration::from_secs(10))
        })
        .await
    };
    let mut info = match describe {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => {
            return report.push(
                Level::Error,
                format!("kafka: brokers {} unreachable: {e:#}", settings.brokers),
            );
        }
        Err(e) => return report.push(Level::Error, format!("kafka: metadata task failed: {e}")),
    };
    report.push(
        Level::Ok,
        format!(
            "kafka: {} reachable, {} brokers",
            settings.brokers, info.brokers
        ),
    );

    let missing: Vec<String> = {
        let mut m: Vec<String> = info
            .topics
            .iter()
            .filter(|(_, i)| i.is_none())
            .map(|(t, _)| t.clone())
            .collect();
        m.dedup();
        m
    };
    if let (Some(create), false) = (create, missing.is_empty()) {
        match admin::create_topics(&settings, &missing, create.partitions, create.replication).await
        {
            Ok(results) => {
                for (topic, result) in results {
                    match result {
                        Ok(()) => report.push(
                            Level::Ok,
                            format!(
                                "topic {topic}: created with {} partitions, replication factor {}",
                                create.partitions, create.replication
                            ),
                        ),
                        Err(e) => report.push(
                            Level::Error,
                            format!("topic {topic}: could not be created: {e}"),
                        ),
                    }
                }
                let settings = settings.clone();
                if let Ok(Ok(again)) = tokio::task::spawn_blocking(move || {
                    admin::describe(&settings, &names, Duration::from_secs(10))
                })
                .await
                {
                    info = again;
                }
            }
            Err(e) => report.push(Level::Error, format!("creating topics failed: {e:#}")),
        }
    }

    if record_sizes {
        check_record_sizes(config, &settings, &info, report).await;
    }

    let wanted = info.brokers.clamp(1, 3);
    for (topic, role, pipeline) in &topics {
        match info.topics.get(topic).cloned().flatten() {
            None => {
                let hint = if *role == "dead-letter" {
                    "never rely on auto-creation for it: create it, or run `sandpiper check --create-topics`"
                } else {
                    "create it, or run `sandpiper check --create-topics`"
                };
                report.push(
                    Level::Error,
                    format!("pipeline {pipeline}: {role} topic {topic} does not exist; {hint}"),
                );
            }
            Some(t) => {
                if t.replication <= 1 {
                    report.push(
                        Level::Warning,
                        format!(
                            "pipeline {pipeline}: {role} topic {topic} has replication factor {}: losing one broker takes its partitions offline",
                            t.replication
                        ),
                    );
                } else if t.replication < wanted {
                    report.push(
                        Level::Warning,
                        format!(
                            "pipeline {pipeline}: {role} topic {topic} has replication factor {}, below {wanted} (min of 3 and the {} brokers)",
                            t.replication, info.brokers
                        ),
                    );
                } else {
                    report.push(Level::Ok, format!("pipeline {pipeline}: {role} topic {topic}: {} partitions, replication factor {}", t.partitions, t.replication));
                }
                if t.offline > 0 {
                    report.push(
                        Level::Warning,
                        format!(
                            "pipeline {pipeline}: {role} topic {topic}: {} partitions offline now",
                            t.offline
                        ),
                    );
                }
            }
        }
    }
}

/// Bytes a dead letter adds to its record, at most: the diagnostic
/// headers' caps (message, backtrace, stderr) and the rest of ours.
const DEAD_LETTER_HEADROOM: u64 = 12 * 1024;

/// Warns where a record can be too large for where it must go: an output
/// topic taking less than the pipeline lets a record's outputs be (each
/// such record is dead-lettered as `output-refused`), and a dead-letter
/// topic, or the producer, taking less than an input topic (a failing
/// record that large stops its partition: its dead letter cannot be
/// written, and a record is never skipped).
async fn check_record_sizes(
    config: &Config,
    settings: &ClientSettings,
    info: &admin::ClusterInfo,
    report: &mut Report,
) {
    let existing: Vec<String> = info
        .topics
        .iter()
        .filter(|(_, i)| i.is_some())
        .map(|(t, _)| t.clone())
        .collect();
    if existing.is_empty() {
        return;
    }
    let sizes = match admin::max_message_bytes(settings, &existing).await {
        Ok(sizes) => sizes,
        Err(e) => {
            return report.push(
                Level::Ok,
                format!("kafka: the topics' max.message.bytes could not be read ({e:#}); record sizes not checked"),
            );
        }
    };
    let (_, producer) = config.message_max_bytes();
    let producer = producer
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(crate::runtime::limits::DEFAULT_MESSAGE_MAX_BYTES);
    for p in &config.pipelines {
        let name = p.name();
        let limit = p.limits.max_output_bytes;
        if let Some(&size) = sizes.get(&p.output.0)
            && size < limit
        {
            report.push(
                Level::Warning,
                format!(
                    "pipeline {name}: output topic {} takes records of at most {size} bytes (max.message.bytes), \
                     below limits.max_output_bytes ({limit}): a record with an output that large is dead-lettered \
                     as output-refused; raise the topic's max.message.bytes or lower the limit",
                    p.output
                ),
            );
        }
        for input in &p.inputs {
            let Some(&largest) = sizes.get(&input.0) else {
                continue;
            };
            if let Some(&dead) = sizes.get(&p.dead_letter.0)
                && dead < largest + DEAD_LETTER_HEADROOM
            {
                report.push(
                    Level::Warning,
                    format!(
                        "pipeline {name}: dead-letter topic {} takes records of at most {dead} bytes, \
                         less than input topic {input}'s {largest} and a dead letter's headers: \
                         a failing record that large cannot be dead-lettered and stops its partition; \
                         give the dead-letter topic a max.message.bytes of at least {}",
                        p.dead_letter,
                        largest + DEAD_LETTER_HEADROOM
                    ),
                );
            }
            if producer < largest + DEAD_LETTER_HEADROOM {
                report.push(
                    Level::Warning,
                    format!(
                        "pipeline {name}: the producer takes records of at most {producer} bytes (message.max.bytes), \
                         less than input topic {input}'s {largest} and a dead letter's headers: \
                         a failing record that large cannot be dead-lettered and stops its partition; \
                         set kafka.producer_properties.\"message.max.bytes\" to at least {}",
                        largest + DEAD_LETTER_HEADROOM
                    ),
                );
            }
        }
    }
}

/// Logs a report's warnings and errors (the start-up check).
pub fn log(report: &Report) {
    for f in &report.findings {
        match f.level {
            Level::Ok => tracing::debug!("Preflight: {}.", f.message),
            Level::Warning => tracing::warn!("Preflight: {}.", f.message),
            Level::Error => tracing::error!("Preflight: {}.", f.message),
        }
    }
}
