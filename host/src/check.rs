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

/// Checks brokers and topics, creating missing ones when asked.
pub async fn kafka(config: &Config, create: Option<CreateTopics>, report: &mut Report) {
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
