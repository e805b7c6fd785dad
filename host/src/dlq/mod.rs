//! Dead-letter tooling: `sandpiper dlq inspect` and `sandpiper dlq replay`.
//!
//! Both read a pipeline's dead-letter topic once, up to the end it had when
//! they started, and never wait for new records. A replay commits its
//! progress (in its own consumer group) only after what it produced was
//! acknowledged, so an interrupted replay resumes where it stopped and
//! nothing is lost. See `docs/dlq.md`.
//!
//! # Layout
//! - `letter`: a dead letter's headers, and the original record rebuilt.
//! - `filter`: the replay's filters and its loop guard.
//! - `time`: RFC 3339 / epoch-ms timestamps.
//! - `inspect`: the table and counts.
//! - `replay`: re-driving to the original topic or through the plugin.
//! - `progress`: a progress bar on a terminal, log lines elsewhere.

pub mod filter;
pub mod inspect;
pub mod letter;
mod progress;
pub mod replay;
pub mod time;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};

use crate::config::{Config, PipelineConfig};
use crate::kafka::ClientSettings;
use filter::{Filter, OffsetRange};

/// How long to wait for the brokers' first answer (metadata, watermarks).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `sandpiper dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show a pipeline's dead letters, and counts by kind and plugin version.
    Inspect(InspectArgs),
    /// Re-drive dead letters to their original topic or through the plugin.
    Replay(ReplayArgs),
}

/// Which pipeline's dead-letter topic.
#[derive(Debug, Args)]
pub struct Target {
    /// The host's TOML config file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// The pipeline (may be left out when the config has only one).
    #[arg(long)]
    pub pipeline: Option<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub target: Target,
    /// Show only the last N rows (the counts still cover every record).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Where `replay` sends records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Destination {
    /// Back to the original topic, for the pipeline to consume again.
    #[default]
    Original,
    /// Through the pipeline's current plugin file, here, to its output topic.
    Plugin,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub target: Target,
    /// Where to send the records.
    #[arg(long, value_enum, default_value_t = Destination::Original)]
    pub to: Destination,
    /// Only records of this failure kind (repeatable: any of them).
    #[arg(long = "kind", value_name = "KIND")]
    pub kinds: Vec<String>,
    /// Only records whose `sandpiper.plugin` starts with this (e.g. `orders@sha256:ab12`).
    #[arg(long, value_name = "ID")]
    pub plugin: Option<String>,
    /// Only records whose original timestamp is at or after this (RFC 3339 or epoch ms).
    #[arg(long, value_parser = time::parse, value_name = "TIME")]
    pub since: Option<i64>,
    /// Only records whose original timestamp is before this (RFC 3339 or epoch ms).
    #[arg(long, value_parser = time::parse, value_name = "TIME")]
    pub until: Option<i64>,
    /// Only these offsets of the dead-letter topic, `PARTITION:FROM-TO` inclusive (repeatable).
    #[arg(long = "offsets", value_name = "P:FROM-TO")]
    pub offsets: Vec<OffsetRange>,
    /// Skip records already replayed this many times (loop guard).
    #[arg(long, default_value_t = 3)]
    pub max_replays: u32,
    /// Read, filter and count what would happen; produce and commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Consumer group that records the replay's progress
    /// (default `sandpiper-replay.<pipeline>`).
    #[arg(long)]
    pub group: Option<String>,
    /// Stop after reading this many dead letters (the next run goes on from there).
    #[arg(long)]
    pub limit: Option<u64>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

impl ReplayArgs {
    fn options(&self) -> replay::Options {
        replay::Options {
            to: self.to,
            filter: Filter {
                kinds: self.kinds.clone(),
                plugin: self.plugin.clone(),
                since: self.since,
                until: self.until,
                offsets: self.offsets.clone(),
            },
            max_replays: self.max_replays,
            dry_run: self.dry_run,
            group: self.group.clone(),
            limit: self.limit,
            progress: true,
        }
    }
}

/// Runs a `dlq` subcommand.
pub fn run(command: DlqCommand) -> anyhow::Result<ExitCode> {
    let runtime = crate::cli::tokio_runtime()?;
    match command {
        DlqCommand::Inspect(args) => {
            let config = Config::load(&args.target.config)?;
            let pipeline = pipeline(&config, args.target.pipeline.as_deref())?.name();
            let report = runtime.block_on(inspect::collect(&config, pipeline, args.limit))?;
            let stdout = std::io::stdout();
            if args.json {
                serde_json::to_writer_pretty(stdout.lock(), &report)?;
                println!();
            } else {
                report.print(&mut stdout.lock(), terminal_width())?;
            }
        }
        DlqCommand::Replay(args) => {
            let config = Config::load(&args.target.config)?;
            let pipeline = pipeline(&config, args.target.pipeline.as_deref())?.name();
            let summary = runtime.block_on(replay::run(&config, pipeline, &args.options()))?;
            if args.json {
                serde_json::to_writer_pretty(std::io::stdout().lock(), &summary)?;
                println!();
            } else {
                println!("{summary}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The pipeline named `name`, or the only one.
pub fn pipeline<'a>(config: &'a Config, name: Option<&str>) -> anyhow::Result<&'a PipelineConfig> {
    let names = || {
        config
            .pipelines
            .iter()
            .map(PipelineConfig::name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(name) => config
            .pipelines
            .iter()
            .find(|p| p.name() == name)
            .with_context(|| format!("no pipeline `{name}` in the config (it has: {})", names())),
        None if config.pipelines.len() == 1 => Ok(&config.pipelines[0]),
        None => bail!(
            "the config has several pipelines: choose one with --pipeline ({})",
            names()
        ),
    }
}

/// The pipeline's client settings with `group`, refusing an embedded cluster.
fn client_settings(
    config: &Config,
    pipeline: &PipelineConfig,
    group: &str,
) -> anyhow::Result<ClientSettings> {
    if config.kafka.is_embedded() {
        bail!(
            "pipeline `{}` uses brokers = \"embedded\": that cluster lives inside its \
             `sandpiper run` process and keeps nothing, so another process cannot read \
             its dead letters",
            pipeline.name()
        );
    }
    Ok(ClientSettings {
        brokers: config.kafka.brokers.0.clone(),
        group: group.to_owned(),
        properties: config.kafka.properties.clone(),
        consumer_properties: config.kafka.consumer_properties.clone(),
        producer_properties: config.kafka.producer_properties.clone(),
    })
}

/// Columns for tables: `$COLUMNS` when the shell exports it, else 120.
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|c| *c >= 40)
        .unwrap_or(120)
}
