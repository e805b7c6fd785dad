//! Hot-swapping plugins: compile off the hot path, check, canary, then
//! swap atomically between records; keep a history for rollback.
//!
//! A refused deploy never touches the running version. Records already in
//! a batch finish on the version they started with (see
//! `pipeline::workers`); every output and dead letter names its version in
//! `sandpiper.plugin`.
//!
//! # Layout
//! - `mod.rs`: the per-pipeline [`Deployer`]: deploy, rollback, history.
//! - `canary`: running the canary file against a candidate.
//! - `versions`: per-version outcome counts (automatic rollback, status).
//! - `watch`: polling the plugin file, debounced, atomic renames welcome.
//! - `control`: the fleet's control topic.

mod canary;
pub mod control;
mod versions;
pub mod watch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::AutoRollbackConfig;
use crate::metrics::PipelineMetrics;
use crate::pipeline::PluginWorkers;
use crate::runtime::{Plugin, PluginError, PluginId, PluginSettings, Runtime};
pub use versions::{Counts, VersionStats};

/// Why a deploy was refused. The running version is untouched.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Invalid(#[from] PluginError),
    #[error("the canary refused plugin {plugin}: {}", problems.join("; "))]
    Canary {
        plugin: String,
        problems: Vec<String>,
    },
    #[error("no earlier version of pipeline {0} to roll back to")]
    NoPrevious(String),
}

/// Where a version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The config file's plugin at start-up.
    Startup,
    /// The plugin file changed on disk.
    File,
    /// `PUT /pipelines/{name}/plugin` (or `sandpiper plugin deploy`).
    Api,
    /// Published on the fleet's control topic.
    ControlTopic,
    /// `POST /pipelines/{name}/rollback`.
    Rollback,
    /// Rolled back automatically after too many failures.
    AutoRollback,
}

/// One entry of a pipeline's version history.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub plugin: String,
    pub name: String,
    pub sha256: String,
    pub source: Source,
    /// Seconds since the Unix epoch.
    pub loaded_at: u64,
}

/// A version kept loaded (with its bytes, to publish a rollback to the fleet).
struct Kept {
    plugin: Arc<Plugin>,
    bytes: Arc<[u8]>,
}

/// The outcome of a successful deploy.
#[derive(Debug, Clone, Serialize)]
pub struct Deployed {
    pub pipeline: String,
    pub plugin: String,
    pub previous: String,
    pub unchanged: bool,
    pub canary_records: usize,
}

/// Deploys for one pipeline.
pub struct Deployer {
    pipeline: String,
    runtime: Arc<Runtime>,
    workers: Arc<PluginWorkers>,
    settings: PluginSettings,
    canary: Option<PathBuf>,
    auto_rollback: Option<AutoRollbackConfig>,
    keep: usize,
    /// Deploys, rollbacks and their bookkeeping happen one at a time.
    state: tokio::sync::Mutex<()>,
    history: Mutex<Vec<VersionInfo>>,
    /// Loaded versions, oldest first; the last is the running one.
    kept: Mutex<Vec<Kept>>,
    pub stats: Arc<VersionStats>,
    /// Deploys refused so far (invalid plugin, failed canary).
    refused: std::sync::atomic::AtomicU64,
    /// `sandpiper_plugin_deploys{result}`.
    metrics: Option<PipelineMetrics>,
}

impl std::fmt::Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployer")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the deployer needs from the pipeline's config.
#[derive(Debug)]
pub struct DeployerSpec {
    pub pipeline: String,
    pub runtime: Arc<Runtime>,
    pub workers: Arc<PluginWorkers>,
    pub settings: PluginSettings,
    pub canary: Option<PathBuf>,
    pub auto_rollback: Option<AutoRollbackConfig>,
    pub keep: usize,
    pub stats: Arc<VersionStats>,
    /// The start-up version and its bytes.
    pub initial_bytes: Arc<[u8]>,
    pub metrics: Option<PipelineMetrics>,
}

impl Deployer {
    pub fn new(spec: DeployerSpec) -> Self {
        let current = spec.workers.plugin();
        let info = version_info(current.id(), Source::Startup);
        Self {
            pipeline: spec.pipeline,
            runtime: spec.runtime,
            workers: spec.workers,
            settings: spec.settings,
            canary: spec.canary,
            auto_rollback: spec.auto_rollback,
            keep: spec.keep.max(2),
            state: tokio::sync::Mutex::new(()),
            history: Mutex::new(vec![info]),
            kept: Mutex::new(vec![Kept {
                plugin: current,
                bytes: spec.initial_bytes,
            }]),
            stats: spec.stats,
            refused: std::sync::atomic::AtomicU64::new(0),
            metrics: spec.metrics,
        }
    }

    /// Deploys refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    pub fn current(&self) -> Arc<Plugin> {
        self.workers.plugin()
    }

    pub fn history(&self) -> Vec<VersionInfo> {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The running version's bytes (to publish it to the fleet).
    pub fn current_bytes(&self) -> Option<Arc<[u8]>> {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.last().map(|k| k.bytes.clone())
    }

    /// Compiles, checks and canaries `bytes`, then swaps them in.
    /// `name` is the plugin's name in its identity (`name@sha256:...`).
    pub async fn deploy(
        &self,
        name: &str,
        bytes: Arc<[u8]>,
        source: Source,
    ) -> Result<Deployed, DeployError> {
        let _one_at_a_time = self.state.lock().await;
        let current = self.workers.plugin();
        let candidate_id = PluginId::new(name, &bytes);
        if &candidate_id == current.id() {
            return Ok(Deployed {
                pipeline: self.pipeline.clone(),
                plugin: candidate_id.to_string(),
                previous: candidate_id.to_string(),
                unchanged: true,
                canary_records: 0,
            });
        }
        let (runtime, settings, canary) = (
            self.runtime.clone(),
            self.settings.clone(),
            self.canary.clone(),
        );
        let (label, name_owned, compiled_bytes) = (
            format!("{name} (upload to {})", self.pipeline),
            name.to_owned(),
            bytes.clone(),
        );
        // Compiling takes tens of milliseconds to seconds: never on the
        // async workers that feed the partitions.
        let checked =
            tokio::task::spawn_blocking(move || -> Result<(Arc<Plugin>, usize), DeployError> {
                let plugin = runtime.load_bytes(&label, &name_owned, &compiled_bytes, settings)?;
                let canary_records = match &canary {
                    Some(file) => {
                        canary::run(&plugin, file).map_err(|problems| DeployError::Canary {
                            plugin: plugin.id().to_string(),
                            problems,
                        })?
                    }
                    None => 0,
                };
                Ok((plugin, canary_records))
            })
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()));
        let (plugin, canary_records) = match checked {
            Ok(ok) => ok,
            Err(error) => {
                self.refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.count("refused");
                tracing::warn!(pipeline = %self.pipeline, plugin = %candidate_id, ?source, %error, "Deploy refused; the running version stays.");
                return Err(error);
            }
        };
        let previous = self.swap_in(plugin.clone(), bytes, source);
        Ok(Deployed {
            pipeline: self.pipeline.clone(),
            plugin: plugin.id().to_string(),
            previous: previous.id().to_string(),
            unchanged: false,
            canary_records,
        })
    }

    fn count(&self, result: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.deploy(result);
        }
    }

    fn swap_in(&self, plugin: Arc<Plugin>, bytes: Arc<[u8]>, source: Source) -> Arc<Plugin> {
        let previous = self.workers.swap(plugin.clone());
        self.count(match source {
            Source::Rollback | Source::AutoRollback => "rolled-back",
            _ => "swapped",
        });
        tracing::info!(pipeline = %self.pipeline, plugin = %plugin.id(), previous = %previous.id(), ?source, "Plugin swapped.");
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.retain(|k| !Arc::ptr_eq(&k.plugin, &plugin));
        kept.push(Kept {
            plugin: plugin.clone(),
            bytes,
        });
        let excess = kept.len().saturating_sub(self.keep);
        kept.drain(..excess);
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        history.push(version_info(plugin.id(), source));
        let excess = history.len().saturating_sub(100);
        history.drain(..excess);
        previous
    }

    /// Returns to the version before the running one.
    pub async fn rollback(&self, source: Source) -> Result<Deployed, DeployError> {
        let _one_at_a_time = self.state.lock().await;
        let (target, bytes) = {
            let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            let n = kept.len();
            if n < 2 {
                return Err(DeployError::NoPrevious(self.pipeline.clone()));
            }
            (kept[n - 2].plugin.clone(), kept[n - 2].bytes.clone())
        };
        let previous = self.swap_in(target.clone(), bytes, source);
        // The version rolled back from goes to the front: a second rollback
        // does not bounce back to it.
        {
            let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(pos) = kept.iter().position(|k| Arc::ptr_eq(&k.plugin, &previous)) {
                let k = kept.remove(pos);
                kept.insert(0, k);
            }
        }
        Ok(Deployed {
            pipeline: self.pipeline.clone(),
            plugin: target.id().to_string(),
            previous: previous.id().to_string(),
            unchanged: false,
            canary_records: 0,
        })
    }

    /// Watches the running version's failure rate and rolls it back when
    /// it is over the threshold after the configured number of records.
    pub async fn auto_rollback_loop(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let Some(rule) = self.auto_rollback.clone() else {
            return;
        };
        let mut judged: Option<PluginId> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            crate::fault::point("auto-rollback");
            let current = self.workers.plugin();
            if judged.as_ref() == Some(current.id())
                || self
                    .kept
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len()
                    < 2
            {
                continue;
            }
            let counts = self.stats.get(current.id());
            if counts.records < rule.records {
                continue;
            }
            judged = Some(current.id().clone());
            let rate = counts.failures as f64 / counts.records as f64;
            if rate > rule.max_failure_rate {
                tracing::error!(pipeline = %self.pipeline, plugin = %current.id(), rate, records = counts.records,
                    "New version fails too often; rolling it back.");
                match self.rollback(Source::AutoRollback).await {
                    Ok(done) => judged = Some(current.id().clone()).filter(|_| !done.unchanged),
                    Err(error) => {
                        tracing::error!(pipeline = %self.pipeline, %error, "Automatic rollback failed.")
                    }
                }
            }
        }
    }
}

fn version_info(id: &PluginId, source: Source) -> VersionInfo {
    VersionInfo {
        plugin: id.to_string(),
        name: id.name().to_owned(),
        sha256: id.digest_hex(),
        source,
        loaded_at: now_secs(),
    }
}
