//! Command-line interface: parsing and dispatch to the subcommands.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::harness;
use crate::runtime::{EngineSettings, Isolation, Limits, PluginSettings, Runtime};

#[derive(Debug, Parser)]
#[command(
    name = "sandpiper",
    // The version and the git commit it was built from (host/build.rs).
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SANDPIPER_GIT_COMMIT"), ")"),
    about = "Run business logic on Kafka records in sandboxed Wasm components."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SANDPIPER_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipelines of a config file until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Check a config: plugins, brokers, topics, replication. Exit 1 on errors.
    Check(CheckArgs),
    /// Run the example pipeline on an embedded Kafka cluster and show what went where.
    Demo(DemoArgs),
    /// Work with plugin files offline.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Inspect and replay dead-lettered records.
    #[command(subcommand)]
    Dlq(crate::dlq::DlqCommand),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The TOML config file.
    #[arg(long, short)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The TOML config file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Exit 1 on warnings too.
    #[arg(long)]
    pub strict: bool,
    /// Create missing topics (explicit partitions and replication factor).
    #[arg(long)]
    pub create_topics: bool,
    /// Partitions of created topics.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Replication factor of created topics.
    #[arg(long, default_value_t = 3)]
    pub replication_factor: i32,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The plugin to run.
    #[arg(
        long,
        default_value = "plugins/target/wasm32-wasip2/release/orders.wasm"
    )]
    pub plugin: PathBuf,
    /// How many sample records to produce.
    #[arg(long, default_value_t = 40)]
    pub records: usize,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run a plugin over JSONL records and print one JSON result per record.
    Test(TestArgs),
    /// Show what a plugin file is: name, digest, size, imports and exports.
    Inspect(InspectArgs),
    /// Deploy a plugin to a running host (and its fleet) through the admin API.
    Deploy(DeployArgs),
    /// Roll a pipeline back to its previous plugin version.
    Rollback(RollbackArgs),
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The host's admin listener, e.g. `http://127.0.0.1:9464`.
    #[arg(long)]
    pub admin: String,
    /// The pipeline to act on.
    #[arg(long)]
    pub pipeline: String,
    /// Bearer token of the admin API.
    #[arg(long, env = "SANDPIPER_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub target: AdminArgs,
    /// The plugin's name in its identity (default: the file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// The plugin component (.wasm).
    pub plugin: PathBuf,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: AdminArgs,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The plugin component (.wasm).
    pub plugin: PathBuf,
    /// JSONL records: topic, partition, offset, timestamp, key, value, headers.
    #[arg(long, short)]
    pub input: PathBuf,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The pipeline's limits, as flags (defaults are the pipeline's defaults).
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Wall-clock deadline per record.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Guest memory cap.
    #[arg(long)]
    pub memory_mb: Option<u32>,
    /// Most outputs per record.
    #[arg(long)]
    pub max_outputs: Option<u32>,
    /// Most output bytes per record.
    #[arg(long)]
    pub max_output_bytes: Option<u64>,
    /// Fuel (instruction budget) per record; enables fuel metering.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Wasm stack size in KiB.
    #[arg(long)]
    pub max_stack_kb: Option<u32>,
    /// `reuse` (default) or `per-record`.
    #[arg(long, value_parser = parse_isolation)]
    pub isolation: Option<Isolation>,
    /// A plugin config entry, `KEY=VALUE` (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub config: Vec<(String, String)>,
}

impl LimitArgs {
    fn engine_settings(&self) -> EngineSettings {
        let mut engine = EngineSettings::default();
        if let Some(kb) = self.max_stack_kb {
            engine.max_stack_kb = kb;
        }
        engine.fuel = self.fuel.is_some();
        engine
    }

    fn plugin_settings(&self) -> PluginSettings {
        let mut limits = Limits::default();
        if let Some(v) = self.timeout_ms {
            limits.timeout_ms = v;
        }
        if let Some(v) = self.memory_mb {
            limits.memory_mb = v;
        }
        if let Some(v) = self.max_outputs {
            limits.max_outputs = v;
        }
        if let Some(v) = self.max_output_bytes {
            limits.max_output_bytes = v;
        }
        limits.fuel = self.fuel;
        PluginSettings {
            limits,
            isolation: self.isolation.unwrap_or_default(),
            recycle: Default::default(),
            config: Arc::new(self.config.iter().cloned().collect::<BTreeMap<_, _>>()),
        }
    }
}

fn parse_isolation(s: &str) -> Result<Isolation, String> {
    match s {
        "reuse" => Ok(Isolation::Reuse),
        "per-record" => Ok(Isolation::PerRecord),
        other => Err(format!("expected `reuse` or `per-record`, got `{other}`")),
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The plugin component (.wasm).
    pub plugin: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Parses arguments, sets up logging and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("SANDPIPER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let config = crate::config::Config::load(&args.config)?;
            tokio_runtime()?.block_on(crate::app::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => check(args),
        Command::Demo(args) => {
            tokio_runtime()?.block_on(crate::demo::run(&args.plugin, args.records))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq(command) => crate::dlq::run(command),
        Command::Plugin(PluginCommand::Test(args)) => plugin_test(args),
        Command::Plugin(PluginCommand::Inspect(args)) => plugin_inspect(args),
        Command::Plugin(PluginCommand::Deploy(args)) => plugin_deploy(args),
        Command::Plugin(PluginCommand::Rollback(args)) => plugin_rollback(args),
    }
}

/// The host's async runtime: at least 4 workers, so a rebalance callback
/// blocking one of them (bounded) never starves the partitions it waits for.
pub fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.max(4))
        .thread_name("sandpiper")
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn plugin_test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let records = harness::read_records(&args.input)?;
    let runtime = Runtime::new(args.limits.engine_settings())?;
    let plugin = runtime.load_file(&args.plugin, args.limits.plugin_settings())?;
    let stdout = std::io::stdout();
    let summary = harness::run(&plugin, records, &mut stdout.lock())?;
    eprintln!("{}: {summary}", plugin.id());
    if summary.host_errors() > 0 {
        anyhow::bail!(
            "{} records could not be run (host-side errors)",
            summary.host_errors()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn plugin_inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::new(EngineSettings::default())?;
    let plugin = runtime
        .load_file(&args.plugin, PluginSettings::default())
        .with_context(|| format!("inspecting {}", args.plugin.display()))?;
    let info = plugin.info();
    let id = plugin.id();
    if args.json {
        let json = serde_json::json!({
            "name": id.name(),
            "id": id.to_string(),
            "sha256": id.digest_hex(),
            "size": info.size,
            "world": plugin.world(),
            "imports": info.imports,
            "exports": info.exports,
            "compile_ms": info.compile_time.as_secs_f64() * 1e3,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("name:      {}", id.name());
        println!("sha256:    {}", id.digest_hex());
        println!("id:        {id}");
        println!("size:      {} bytes", info.size);
        println!("world:     {} (implemented)", plugin.world());
        println!("compiled:  {:.1} ms", info.compile_time.as_secs_f64() * 1e3);
        println!("imports:");
        for import in &info.imports {
            println!("  {import}");
        }
        println!("exports:");
        for export in &info.exports {
            println!("  {export}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends one admin request; prints the JSON answer; fails on a non-2xx status.
fn admin_request(
    target: &AdminArgs,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<ExitCode> {
    let url = format!("{}{path}", target.admin.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(120)))
        .build()
        .into();
    let auth = format!("Bearer {}", target.token);
    let sent = match (method, body) {
        ("PUT", Some(body)) => agent
            .put(&url)
            .header("Authorization", &auth)
            .send(&body[..]),
        _ => agent.post(&url).header("Authorization", &auth).send_empty(),
    };
    let mut response = sent.with_context(|| format!("{method} {url}"))?;
    let status = response.status();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    if status.is_success() {
        println!("{text}");
        Ok(ExitCode::SUCCESS)
    } else {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        anyhow::bail!("{method} {url}: {status}: {message}")
    }
}

fn plugin_deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.plugin)
        .with_context(|| format!("cannot read plugin {}", args.plugin.display()))?;
    let name = args
        .name
        .unwrap_or_else(|| crate::runtime::name_from_path(&args.plugin));
    let path = format!("/pipelines/{}/plugin?name={name}", args.target.pipeline);
    admin_request(&args.target, "PUT", &path, Some(bytes))
}

fn plugin_rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/pipelines/{}/rollback", args.target.pipeline);
    admin_request(&args.target, "POST", &path, None)
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    use crate::check::{self, CreateTopics, Level, Report};
    let mut report = Report::default();
    match crate::config::Config::load(&args.config) {
        Err(e) => report.findings.push(check::Finding {
            level: Level::Error,
            message: e.to_string(),
        }),
        Ok(config) => {
            check::plugins(&config, &mut report);
            let create = args.create_topics.then_some(CreateTopics {
                partitions: args.partitions,
                replication: args.replication_factor,
            });
            tokio_runtime()?.block_on(check::kafka(&config, create, true, &mut report));
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for f in &report.findings {
            let tag = match f.level {
                Level::Ok => "ok",
                Level::Warning => "WARNING",
                Level::Error => "ERROR",
            };
            println!("{tag:>7}  {}", f.message);
        }
    }
    let (errors, warnings) = (report.count(Level::Error), report.count(Level::Warning));
    eprintln!("{errors} errors, {warnings} warnings");
    let failed = errors > 0 || (args.strict && warnings > 0);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
