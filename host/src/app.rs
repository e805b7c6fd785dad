//! `sandpiper run`: wire the runtime, the pipelines, health and the admin
//! listener together, supervise them, and shut down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::collections::HashMap;

use crate::admin::{AdminState, StatusSource};
use crate::config::Config;
use crate::deploy::{Deployer, DeployerSpec, watch};
use crate::health::{Health, PipelineHealth};
use crate::kafka::ClientSettings;
use crate::kafka::control::{ControlFollower, ControlPublisher};
use crate::kafka::embedded::EmbeddedCluster;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineSpec};
use crate::runtime::Runtime;

/// Partitions of each topic an embedded cluster creates.
const EMBEDDED_PARTITIONS: i32 = 3;

/// A started host.
#[derive(Debug)]
pub struct App {
    pub pipelines: Vec<Pipeline>,
    pub health: Arc<Health>,
    pub admin: Option<SocketAddr>,
    /// Each pipeline's deployer, by pipeline name.
    pub deployers: HashMap<String, Arc<Deployer>>,
    /// The tasks around the pipelines: deploy watchers, automatic rollback,
    /// the control-topic follower, the admin listener. Each is watched: one
    /// that ends before `background_stop` fails liveness.
    background: Background,
    /// Kept alive for `brokers = "embedded"`.
    pub embedded: Option<EmbeddedCluster>,
    shutdown_timeout: Duration,
    unhealthy_exit: Duration,
}

impl App {
    /// Loads every plugin, then connects: a bad plugin stops start-up
    /// before any client exists.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let runtime = Arc::new(Runtime::new(config.engine_settings())?);
        let mut plugins = Vec::new();
        for p in &config.pipelines {
            let bytes: Arc<[u8]> = std::fs::read(&p.plugin)
                .with_context(|| {
                    format!(
                        "pipeline {}: cannot read plugin {}",
                        p.name(),
                        p.plugin.display()
                    )
                })?
                .into();
            let plugin = runtime
                .load_bytes(
                    &p.plugin.display().to_string(),
                    &crate::runtime::name_from_path(&p.plugin),
                    &bytes,
                    p.plugin_settings(),
                )
                .with_context(|| format!("pipeline {}", p.name()))?;
            tracing::info!(pipeline = p.name(), plugin = %plugin.id(), "Plugin loaded.");
            plugins.push((plugin, bytes));
        }

        let embedded = if config.kafka.is_embedded() {
            let cluster = EmbeddedCluster::start(1)?;
            tracing::warn!(
                brokers = cluster.bootstrap_servers(),
                "Running on an embedded Kafka cluster: it keeps nothing."
            );
            for p in &config.pipelines {
                for topic in p.inputs.iter().chain([&p.output, &p.dead_letter]) {
                    cluster.create_topic(&topic.0, EMBEDDED_PARTITIONS, 1)?;
                }
            }
            Some(cluster)
        } else {
            None
        };
        let brokers = embedded.as_ref().map_or_else(
            || config.kafka.brokers.0.clone(),
            |c| c.bootstrap_servers().to_owned(),
        );

        // Preflight: log what would bite later (missing topics, replication
        // factor 1) without refusing to start: topics may appear later. The
        // topics' record sizes are `sandpiper check`'s alone: a broker that
        // never answers DescribeConfigs (the mock cluster) would cost every
        // start its timeout.
        let mut preflight = crate::check::Report::default();
        crate::check::kafka(&config, None, false, &mut preflight).await;
        crate::check::log(&preflight);

        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::new());
        let background = Background {
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            health: health.clone(),
            metrics: metrics.clone(),
        };

        let mut pipelines = Vec::new();
        let mut deployers = HashMap::new();
        // The fleet's control topic is read to its end before any pipeline
        // starts: a host started after a fleet deploy runs the published
        // version from its first record, not its config's.
        let control_settings = config.pipelines.first().map(|p| ClientSettings {
            brokers: brokers.clone(),
            group: p.group(&config.kafka).to_owned(),
            properties: config.kafka.properties.clone(),
            consumer_properties: config.kafka.consumer_properties.clone(),
            producer_properties: config.kafka.producer_properties.clone(),
        });
        let (follower, mut published) = match (&config.deploy.control_topic, &control_settings) {
            (Some(topic), Some(settings)) => {
                let follower = ControlFollower::new(settings, &topic.0)?;
                let published = follower.catch_up(Duration::from_secs(30)).await;
                (Some(follower), published)
            }
            _ => (None, HashMap::new()),
        };
        let mut status = Vec::new();
        for (p, (plugin, bytes)) in config.pipelines.iter().zip(plugins) {
            let (plugin, bytes) = match published.remove(p.name()) {
                Some(record) => fleet_version(&runtime, p, record, (plugin, bytes)),
                None => (plugin, bytes),
            };
            let pipeline_health = Arc::new(PipelineHealth::new(
                p.name(),
                Duration::from_secs(p.stall_timeout_secs),
            ));
            health.add(pipeline_health.clone());
            let pipeline_metrics = metrics.pipeline(p.name());
            pipeline_health.set_metrics(pipeline_metrics.clone());
            let deploy_metrics = pipeline_metrics.clone();
            let client = ClientSettings {
                brokers: brokers.clone(),
                group: p.group(&config.kafka).to_owned(),
                properties: config.kafka.properties.clone(),
                consumer_properties: config.kafka.consumer_properties.clone(),
                producer_properties: config.kafka.producer_properties.clone(),
            };
            let pipeline = Pipeline::start(PipelineSpec {
                config: p.clone(),
                client,
                plugin,
                health: pipeline_health,
                metrics: pipeline_metrics,
            })?;
            let deployer = Arc::new(Deployer::new(DeployerSpec {
                pipeline: p.name().to_owned(),
                runtime: runtime.clone(),
                workers: pipeline.workers(),
                settings: p.plugin_settings(),
                canary: p.canary.as_ref().map(|c| c.file.clone()),
                auto_rollback: p.auto_rollback.clone(),
                keep: config.deploy.keep_versions,
                stats: pipeline.versions(),
                initial_bytes: bytes,
                metrics: Some(deploy_metrics),
            }));
            if config.deploy.watch {
                let interval = Duration::from_millis(config.deploy.watch_interval_ms.max(50));
                background.spawn(
                    format!("the plugin file watcher of pipeline {}", p.name()),
                    watch::watch(
                        deployer.clone(),
                        p.plugin.clone(),
                        interval,
                        background.stop.clone(),
                    ),
                );
            }
            if p.auto_rollback.is_some() {
                background.spawn(
                    format!("the automatic rollback of pipeline {}", p.name()),
                    deployer.clone().auto_rollback_loop(background.stop.clone()),
                );
            }
            status.push(StatusSource {
                name: p.name().to_owned(),
                counters: pipeline.counters(),
                health: pipeline.health(),
                deployer: deployer.clone(),
            });
            deployers.insert(p.name().to_owned(), deployer);
            pipelines.push(pipeline);
        }

        let control = match (&config.deploy.control_topic, control_settings, follower) {
            (Some(topic), Some(settings), Some(follower)) => {
                background.spawn(
                    format!("the control-topic follower ({topic})"),
                    crate::deploy::control::follow(
                        follower,
                        deployers.clone(),
                        health.clone(),
                        metrics.clone(),
                        background.stop.clone(),
                    ),
                );
                Some(ControlPublisher::new(&settings, &topic.0)?)
            }
            _ => None,
        };
        let admin = match &config.admin {
            Some(admin) => {
                let state = AdminState {
                    health: health.clone(),
                    metrics: metrics.clone(),
                    status: Arc::new(status),
                    deployers: Arc::new(deployers.clone()),
                    token: admin.token().map(Arc::from),
                    control,
                };
                let (addr, serving) =
                    crate::admin::serve(&admin.listen, state, background.stop.clone()).await?;
                background.spawn(format!("the admin listener on {addr}"), serving);
                Some(addr)
            }
            None => None,
        };
        Ok(Self {
            pipelines,
            health,
            admin,
            deployers,
            background,
            embedded,
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout_secs),
            unhealthy_exit: Duration::from_secs(config.unhealthy_exit_secs),
        })
    }

    /// Runs until `shutdown` (Ok) or until the host has been unhealthy for
    /// the grace period (Err: the process must exit non-zero).
    pub async fn supervise(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut unhealthy_since: Option<Instant> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let report = self.health.liveness();
            if report.ok {
                unhealthy_since = None;
                continue;
            }
            let since = *unhealthy_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.unhealthy_exit {
                bail!(
                    "unhealthy for {:?}: {}",
                    self.unhealthy_exit,
                    report.reasons.join("; ")
                );
            }
        }
    }

    /// Graceful stop: every pipeline finishes in-flight records, commits,
    /// flushes and closes, within the shutdown timeout.
    pub async fn stop(self) {
        // Deploy watchers, the control follower and the admin listener first.
        self.background.stop.cancel();
        let timeout = self.shutdown_timeout;
        let stops = self.pipelines.into_iter().map(|p| p.stop(timeout));
        futures_join_all(stops).await;
        self.background.tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), self.background.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("Background tasks still running 5 s after the stop.");
        }
    }
}

/// The host's tasks besides the pipelines', each watched: a panic or an
/// early return before [`Background::stop`] is cancelled is a fatal
/// failure of the host (liveness fails, then the process exits non-zero),
/// never a silent one.
#[derive(Debug)]
struct Background {
    tasks: TaskTracker,
    /// Cancelled when the host stops: tasks end then, as they should.
    stop: CancellationToken,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl Background {
    /// Spawns a task that runs until the host stops.
    fn spawn<F>(&self, what: String, future: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let task = self.tasks.spawn(future);
        let (stop, health, metrics) =
            (self.stop.clone(), self.health.clone(), self.metrics.clone());
        self.tasks.spawn(async move {
            let why = match task.await {
                Ok(()) if stop.is_cancelled() => return,
                Ok(()) => "ended unexpectedly".to_owned(),
                Err(error) if error.is_panic() => format!(
                    "panicked: {}",
                    crate::health::panic_message(&*error.into_panic())
                ),
                Err(error) => format!("was cancelled: {error}"),
            };
            metrics.tasks_failed.inc();
            health.set_fatal(format!("{what} {why}"));
        });
    }
}

/// The version the fleet published last for pipeline `p`, loaded, or, if
/// it does not load here, the config's `current` (the follower's deploys
/// would refuse it too, and say so).
fn fleet_version(
    runtime: &Runtime,
    p: &crate::config::PipelineConfig,
    record: crate::kafka::control::ControlRecord,
    current: (Arc<crate::runtime::Plugin>, Arc<[u8]>),
) -> (Arc<crate::runtime::Plugin>, Arc<[u8]>) {
    let bytes: Arc<[u8]> = record.bytes.into();
    match runtime.load_bytes(
        "the control topic",
        &record.name,
        &bytes,
        p.plugin_settings(),
    ) {
        Ok(plugin) if plugin.id() == current.0.id() => current,
        Ok(plugin) => {
            tracing::info!(pipeline = p.name(), plugin = %plugin.id(), config = %current.0.id(),
                "Starting on the version the fleet published last, not the config's.");
            (plugin, bytes)
        }
        Err(error) => {
            tracing::warn!(pipeline = p.name(), %error,
                "The fleet's published version does not load here; starting on the config's.");
            current
        }
    }
}

/// Awaits all futures concurrently (spawned, so pipelines stop in parallel).
async fn futures_join_all<F>(futures: impl Iterator<Item = F>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    for handle in handles {
        if let Err(error) = handle.await {
            tracing::error!(%error, "Stopping a pipeline failed.");
        }
    }
}

/// `sandpiper run`: start, supervise, stop. A first SIGTERM/SIGINT stops
/// gracefully; a second exits at once.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    let app = App::start(config).await?;
    let result = app.supervise(&shutdown).await;
    if let Err(error) = &result {
        tracing::error!(error = %format!("{error:#}"), "Exiting so the supervisor restarts the host.");
    } else {
        tracing::info!("Shutting down.");
    }
    app.stop().await;
    result
}

fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        for round in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if round == 0 {
                tracing::info!(
                    "Signal received: finishing in-flight records. Send it again to exit at once."
                );
                shutdown.cancel();
            } else {
                tracing::warn!("Second signal: exiting at once.");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}
