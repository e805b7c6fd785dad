//! `sandpiper dlq replay`: re-drive dead letters to their original topic,
//! or through the pipeline's current plugin to its output topic.
//!
//! Same discipline as the pipeline: progress on the dead-letter topic is
//! committed (in the replay's own group) only after every record produced
//! for the dead letters before it is acknowledged. An interrupted replay
//! resumes there; at worst the last unacknowledged batch is produced twice.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::filter::{Decision, Filter, decide};
use super::letter::{self, DeadLetter};
use super::progress::Progress;
use super::{CONNECT_TIMEOUT, Destination, client_settings, pipeline};
use crate::config::{Config, PipelineConfig, RetryConfig};
use crate::kafka::replay::{Start, TopicReader};
use crate::kafka::{Delivery, NoEvents, Outgoing, Producer};
use crate::pipeline::deadletter::Labels;
use crate::record::{FailureKind, Record};
use crate::runtime::{Instance, Plugin, Runtime};

/// Deliveries awaited (and progress committed) at least this often.
const BATCH: usize = 500;
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// Host-side plugin failures (not the record's fault) tolerated per record.
const MAX_HOST_ERRORS: u32 = 5;

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub to: Destination,
    pub filter: Filter,
    /// Loop guard: records replayed this many times already are skipped.
    pub max_replays: u32,
    /// Read, filter and count; produce and commit nothing.
    pub dry_run: bool,
    /// The group recording progress; `None`: [`default_group`].
    pub group: Option<String>,
    /// Stop after reading this many dead letters.
    pub limit: Option<u64>,
    /// Show a progress bar when stderr is a terminal.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            to: Destination::Original,
            filter: Filter::default(),
            max_replays: 3,
            dry_run: false,
            group: None,
            limit: None,
            progress: false,
        }
    }
}

/// The group a pipeline's replays record their progress in.
pub fn default_group(pipeline: &str) -> String {
    format!("sandpiper-replay.{pipeline}")
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub pipeline: String,
    pub topic: String,
    pub group: String,
    pub to: String,
    pub dry_run: bool,
    /// Dead letters read (and, unless dry, committed as done).
    pub read: u64,
    /// Re-driven: produced to the original topic, or handled by the plugin.
    pub replayed: u64,
    pub skipped_filter: u64,
    pub skipped_loop_guard: u64,
    /// Records without `sandpiper.original.topic`.
    pub skipped_invalid: u64,
    /// `--to plugin`: failed again, dead-lettered anew.
    pub failed_again: u64,
    /// Records produced (outputs and new dead letters).
    pub produced: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dry = if self.dry_run {
            " (dry run: nothing produced or committed)"
        } else {
            ""
        };
        writeln!(
            f,
            "Replay of {} (pipeline {}, group {}) to {}{dry}:",
            self.topic, self.pipeline, self.group, self.to
        )?;
        let (replayed, produced) = if self.dry_run {
            ("would replay", "records it would produce")
        } else {
            ("replayed", "records produced")
        };
        let rows = [
            ("read", self.read),
            (replayed, self.replayed),
            ("skipped by filter", self.skipped_filter),
            ("skipped by loop guard", self.skipped_loop_guard),
            ("skipped, not a dead letter", self.skipped_invalid),
            ("failed again", self.failed_again),
            (produced, self.produced),
        ];
        for (label, n) in rows {
            writeln!(f, "  {label:<28}{n:>10}")?;
        }
        Ok(())
    }
}

/// Replays the pipeline's dead letters per `options`.
pub async fn run(
    config: &Config,
    pipeline_name: &str,
    options: &Options,
) -> anyhow::Result<Summary> {
    let pipeline = pipeline(config, Some(pipeline_name))?;
    let group = options
        .group
        .clone()
        .unwrap_or_else(|| default_group(pipeline.name()));
    let settings = client_settings(config, pipeline, &group)?;
    // Load the plugin before connecting: a bad plugin file fails fast.
    let mut runner = match options.to {
        Destination::Plugin => Some(Runner::new(config, pipeline)?),
        Destination::Original => None,
    };
    let producer = if options.dry_run {
        None
    } else {
        Some(Producer::new(
            &settings,
            pipeline.name(),
            Arc::new(NoEvents),
        )?)
    };
    let topic = &pipeline.dead_letter.0;
    let mut reader = TopicReader::open(&settings, topic, Start::Committed, CONNECT_TIMEOUT).await?;
    let mut summary = Summary {
        pipeline: pipeline.name().to_owned(),
        topic: topic.clone(),
        group,
        to: match options.to {
            Destination::Original => "the original topics".into(),
            Destination::Plugin => format!("plugin {}", pipeline.plugin.display()),
        },
        dry_run: options.dry_run,
        ..Summary::default()
    };
    let result = drive(
        &mut reader,
        producer.as_ref(),
        runner.as_mut(),
        options,
        &mut summary,
    )
    .await;
    reader.close(CONNECT_TIMEOUT).await;
    result?;
    Ok(summary)
}

async fn drive(
    reader: &mut TopicReader,
    producer: Option<&Producer>,
    mut runner: Option<&mut Runner>,
    options: &Options,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let expected = options
        .limit
        .map_or(reader.remaining(), |l| l.min(reader.remaining()));
    let mut progress = Progress::new(expected, options.progress);
    // Next offset to read per DLQ partition: what to commit once settled.
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut pending: Vec<Delivery> = Vec::new();
    let mut last_commit = Instant::now();
    while options.limit.is_none_or(|l| summary.read < l) {
        let Some(record) = reader.next().await? else {
            break;
        };
        summary.read += 1;
        next.insert(record.partition, record.offset + 1);
        let letter = DeadLetter::read(&record);
        let sends = match decide(&options.filter, options.max_replays, &letter) {
            Decision::SkipFilter => {
                summary.skipped_filter += 1;
                Vec::new()
            }
            Decision::SkipLoopGuard => {
                summary.skipped_loop_guard += 1;
                tracing::debug!(partition = record.partition, offset = record.offset, replays = ?letter.replays,
                    "Replayed too often already; skipping the dead letter.");
                Vec::new()
            }
            Decision::SkipInvalid => {
                summary.skipped_invalid += 1;
                tracing::warn!(
                    partition = record.partition,
                    offset = record.offset,
                    "Record has no sandpiper.original.topic header; skipping it."
                );
                Vec::new()
            }
            Decision::Replay { topic, replays } => match runner.as_deref_mut() {
                None => {
                    summary.replayed += 1;
                    vec![letter::to_original(&record, &letter, topic, replays)]
                }
                Some(runner) => {
                    let original = letter::to_record(&record, &letter, topic, replays);
                    match runner.handle(original).await? {
                        Handled::Outputs(outputs) => {
                            summary.replayed += 1;
                            outputs
                        }
                        Handled::Failed(dead_letter) => {
                            summary.failed_again += 1;
                            vec![dead_letter]
                        }
                    }
                }
            },
        };
        summary.produced += sends.len() as u64;
        if let Some(producer) = producer {
            for send in &sends {
                let delivery = producer
                    .send(send)
                    .await
                    .with_context(|| format!("producing a replayed record to {}", send.topic))?;
                pending.push(delivery);
            }
            if pending.len() >= BATCH || last_commit.elapsed() >= COMMIT_EVERY {
                settle(&mut pending).await?;
                reader.commit(&next).await?;
                last_commit = Instant::now();
            }
        }
        progress.tick(summary.read, || {
            format!(
                "replayed {}, skipped {}, failed again {}",
                summary.replayed,
                summary.skipped_filter + summary.skipped_loop_guard + summary.skipped_invalid,
                summary.failed_again
            )
        });
    }
    progress.finish();
    if producer.is_some() {
        settle(&mut pending).await?;
        reader.commit(&next).await?;
    }
    Ok(())
}

/// Waits for every pending acknowledgement; the first failure is an error
/// (and the progress past it is not committed).
async fn settle(pending: &mut Vec<Delivery>) -> anyhow::Result<()> {
    for delivery in pending.drain(..) {
        delivery
            .await
            .context("the broker refused a replayed record; progress up to the last acknowledged batch is committed")?;
    }
    Ok(())
}

/// What the plugin made of a replayed record.
enum Handled {
    Outputs(Vec<Outgoing>),
    Failed(Outgoing),
}

/// The pipeline's plugin, loaded with the pipeline's engine settings and
/// limits, labelling records as the pipeline does.
struct Runner {
    /// Kept alive for the plugin: it owns the engine's epoch ticker.
    _runtime: Runtime,
    plugin: Arc<Plugin>,
    instance: Instance,
    labels: Labels,
    retry: RetryConfig,
}

impl Runner {
    fn new(config: &Config, pipeline: &PipelineConfig) -> anyhow::Result<Self> {
        let runtime = Runtime::new(config.engine_settings())?;
        let plugin = runtime
            .load_file(&pipeline.plugin, pipeline.plugin_settings())
            .with_context(|| format!("loading the plugin of pipeline {}", pipeline.name()))?;
        Ok(Self {
            _runtime: runtime,
            instance: Instance::new(plugin.clone()),
            plugin,
            labels: Labels {
                pipeline: pipeline.name().to_owned(),
                group: pipeline.group(&config.kafka).to_owned(),
                output: pipeline.output.0.clone(),
                dead_letter: pipeline.dead_letter.0.clone(),
                plugin_header: pipeline.plugin_header,
            },
            retry: pipeline.retry.clone(),
        })
    }

    /// Runs `record` like the pipeline: retries a plugin's `retry` up to
    /// `max_attempts`, host-side failures a few times, then gives up.
    async fn handle(&mut self, mut record: Record) -> anyhow::Result<Handled> {
        let (mut attempts, mut host_errors) = (1u32, 0u32);
        loop {
            // Instances start lazily: the placeholder costs nothing.
            let instance =
                std::mem::replace(&mut self.instance, Instance::new(self.plugin.clone()));
            let (instance, back, outcome) = tokio::task::spawn_blocking(move || {
                let mut instance = instance;
                let outcome = instance.handle(&record);
                (instance, record, outcome)
            })
            .await
            .context("the plugin call's task failed")?;
            self.instance = instance;
            record = back;
            let mut failure = match outcome {
                Ok(outputs) => {
                    return Ok(Handled::Outputs(
                        self.labels.outputs(outputs, self.plugin.id()).collect(),
                    ));
                }
                Err(failure) => failure,
            };
            if failure.kind.is_host_side() {
                host_errors += 1;
                if host_errors >= MAX_HOST_ERRORS {
                    bail!("cannot run the plugin: {failure}");
                }
                tokio::time::sleep(self.backoff(host_errors)).await;
                continue;
            }
            if failure.kind == FailureKind::Retry && attempts < self.retry.max_attempts {
                tokio::time::sleep(self.backoff(attempts)).await;
                attempts += 1;
                continue;
            }
            if failure.kind == FailureKind::Retry {
                failure.kind = FailureKind::RetriesExhausted;
            }
            return Ok(Handled::Failed(
                self.labels.dead_letter(record, &failure, attempts),
            ));
        }
    }

    /// The pipeline's backoff without jitter: one replay is all there is.
    fn backoff(&self, attempt: u32) -> Duration {
        let ms = self
            .retry
            .initial_backoff_ms
            .saturating_mul(1 << attempt.saturating_sub(1).min(20))
            .min(self.retry.max_backoff_ms);
        Duration::from_millis(ms)
    }
}
