//! Benchmarks behind BENCHMARKS.md; run them with `cargo xtask bench`.
//!
//! - `pipeline [--quick] [--docs] [--out DIR]`: the native rust-rdkafka
//!   loop and Sandpiper side by side (`matrix`): every scenario at 100 B
//!   and 1 KB records, 1 and 2 workers; throughput, MB/s, CPU per record
//!   and peak RSS draining one Tansu broker, and p50/p99 latency at half a
//!   live maximum rate on librdkafka's mock cluster; a table, the targets
//!   and plots. `--quick` is CI's small variant; `--docs` writes the plots
//!   into `docs/` and the table into BENCHMARKS.md. Diagnostics:
//!   `SANDPIPER_BENCH_PERF=DIR` (see `matrix::child`) and
//!   `SANDPIPER_BENCH_SAMPLES=DIR` (every latency sample of a fixed-rate
//!   run, see `scenario::latency`).
//! - `report DIR`: redraws the table and plots from a run's results.json.
//! - `runtime`, `per-record`, `batched`, `swap`: the runtime without Kafka, and the
//!   pause of a hot swap (`runtime`).
//! - `probe [SECONDS]`: the round trip of a cache line between the two
//!   cores over time (`probe`), which the pipeline's figures follow here;
//!   `pipeline` also probes for 0.1 s before and after every run.
//! - `scenario SPEC`: one measured run (the orchestrator's child process).

mod broker;
mod matrix;
mod native;
mod probe;
mod report;
mod runtime;
mod scenario;
/// `json-transform`'s code, for the native loop to run it outside Wasm.
#[path = "../../../plugins/examples/json-transform/src/transform.rs"]
mod transform;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The shipped binary's allocator (see `host/src/main.rs`), for both the
/// native loop and Sandpiper: they run in this one binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("scenario") => {
            let spec = args.get(1).context("scenario SPEC")?;
            scenario::run(&serde_json::from_str(spec)?)
        }
        Some("pipeline") | None => pipeline(args.get(1..).unwrap_or_default()),
        // `report DIR [--docs]`: the table and plots again from a run's
        // results.json (with `--docs`, into BENCHMARKS.md and docs/).
        Some("report") => {
            let dir = PathBuf::from(args.get(1).context("report DIR")?);
            let rows = matrix::load(&dir)?;
            report::plots(&rows, &dir)?;
            let (table, targets) = (report::table(&rows), report::targets(&rows));
            if args.iter().any(|a| a == "--docs") {
                publish(&dir, &table, &targets)?;
            }
            print!("{table}\n{targets}");
            Ok(())
        }
        Some("runtime") => runtime::runtime_bench(),
        Some("per-record") => runtime::per_record_bench(),
        Some("batched") => runtime::batched_bench(),
        Some("swap") => runtime::swap(),
        Some("probe") => probe::probe(match args.get(1) {
            Some(seconds) => seconds.parse().context("probe SECONDS")?,
            None => 60.0,
        }),
        Some(other) => {
            bail!(
                "unknown benchmark {other:?} (pipeline, report, runtime, per-record, batched, swap, probe)"
            )
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const PIPELINE_USAGE: &str = "\
usage: bench pipeline [--quick] [--docs] [--out DIR] [options for one corner]

  --quick                CI's small variant
  --docs                 write the plots into docs/ and the table into BENCHMARKS.md
  --out DIR              where results.json, the table and the plots go
                         (default: target/bench, or target/bench-quick)
for profiling or an A/B of one corner:
  --config SIZExWORKERS  one configuration, e.g. 1024x2
  --modes M,M,...        scenarios by short name: native, reuse, per-record,
                         1% traps, native JSON, wasm JSON
  --records N            records per throughput run
  --rate R               records/s of the fixed-rate (latency) runs
  --rounds N             runs of each scenario
  --throughput-only      the drain alone: no live search, no latency runs
  --pipeline-toml TEXT   appended to Sandpiper's config after its [[pipeline]]
                         table: keys of it (max_unacked = 16384), then
                         tables ([kafka.producer_properties] ...)
";

/// The flags of `pipeline` that take a value, and those that do not.
const VALUE_FLAGS: [&str; 7] = [
    "--out",
    "--config",
    "--modes",
    "--records",
    "--rate",
    "--rounds",
    "--pipeline-toml",
];
const SWITCHES: [&str; 3] = ["--quick", "--docs", "--throughput-only"];

/// `pipeline`'s arguments, checked: an unknown flag or a value that does
/// not parse is an error naming it (a typo must not start an hour-long
/// run with the defaults), `--help` prints the usage.
struct PipelineArgs<'a> {
    switches: Vec<&'a str>,
    values: Vec<(&'a str, &'a str)>,
}

impl<'a> PipelineArgs<'a> {
    /// `None` when the usage was asked for.
    fn parse(args: &'a [String]) -> anyhow::Result<Option<Self>> {
        let mut parsed = Self {
            switches: Vec::new(),
            values: Vec::new(),
        };
        let mut args = args.iter().map(String::as_str);
        while let Some(arg) = args.next() {
            match arg {
                "--help" | "-h" => return Ok(None),
                _ if SWITCHES.contains(&arg) => parsed.switches.push(arg),
                _ if VALUE_FLAGS.contains(&arg) => {
                    let value = args
                        .next()
                        .with_context(|| format!("{arg} needs a value\n\n{PIPELINE_USAGE}"))?;
                    parsed.values.push((arg, value));
                }
                _ => {
                    bail!("unknown argument {arg:?} for the pipeline benchmark\n\n{PIPELINE_USAGE}")
                }
            }
        }
        Ok(Some(parsed))
    }

    fn has(&self, switch: &str) -> bool {
        self.switches.contains(&switch)
    }

    fn value(&self, flag: &str) -> Option<&'a str> {
        self.values
            .iter()
            .rev()
            .find_map(|(f, v)| (*f == flag).then_some(*v))
    }

    /// `flag`'s value parsed as a `T`, the error naming the flag.
    fn parsed<T>(&self, flag: &str) -> anyhow::Result<Option<T>>
    where
        T: std::str::FromStr,
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        self.value(flag)
            .map(|v| {
                v.parse()
                    .with_context(|| format!("{flag} {v:?}: not a number"))
            })
            .transpose()
    }
}

fn pipeline(args: &[String]) -> anyhow::Result<()> {
    let Some(args) = PipelineArgs::parse(args)? else {
        print!("{PIPELINE_USAGE}");
        return Ok(());
    };
    let quick = args.has("--quick");
    let docs = args.has("--docs");
    let out = args.value("--out").map_or_else(
        || {
            repo()
                .join("target")
                .join(if quick { "bench-quick" } else { "bench" })
        },
        PathBuf::from,
    );
    let mut plan = if quick {
        matrix::Plan::quick(out.clone())
    } else {
        matrix::Plan::full(out.clone())
    };
    if let Some(c) = args.value("--config") {
        let parse = || -> Option<(usize, usize)> {
            let (size, workers) = c.split_once('x')?;
            Some((size.parse().ok()?, workers.parse().ok()?))
        };
        let config = parse()
            .with_context(|| format!("--config {c:?}: expected SIZExWORKERS, e.g. 1024x2"))?;
        plan.configs = vec![config];
    }
    if let Some(m) = args.value("--modes") {
        plan.modes = m
            .split(',')
            .map(|m| {
                scenario::Mode::ALL
                    .into_iter()
                    .find(|x| x.short() == m)
                    .with_context(|| format!("--modes: unknown mode {m:?}\n\n{PIPELINE_USAGE}"))
            })
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(n) = args.parsed("--records")? {
        plan.records_override = Some(n);
    }
    if let Some(r) = args.parsed("--rate")? {
        plan.rate_override = Some(r);
    }
    if let Some(n) = args.parsed("--rounds")? {
        plan.latency_rounds = n;
        plan.throughput_rounds = n;
    }
    // A/B of a change: the drain alone, no live search or latency runs.
    if args.has("--throughput-only") {
        plan.latency_rounds = 0;
        plan.live_offers = 0;
    }
    if let Some(t) = args.value("--pipeline-toml") {
        plan.pipeline_toml = t.to_owned();
    }
    let rows = matrix::run(&plan)?;
    let table = report::table(&rows);
    let targets = report::targets(&rows);
    std::fs::write(out.join("table.md"), format!("{table}\n{targets}"))?;
    report::plots(&rows, &out)?;
    println!(
        "{table}\n{targets}\nresults, table and plots in {}",
        out.display()
    );
    if docs {
        publish(&out, &table, &targets)?;
    }
    Ok(())
}

/// Copies the plots into `docs/` and the table into BENCHMARKS.md.
fn publish(out: &Path, table: &str, targets: &str) -> anyhow::Result<()> {
    for plot in ["bench-throughput.png", "bench-latency.png"] {
        std::fs::copy(out.join(plot), repo().join("docs").join(plot))?;
    }
    update_benchmarks_md(out, table, targets)
}

const BEGIN: &str = "<!-- bench pipeline: begin -->";
const END: &str = "<!-- bench pipeline: end -->";

/// Replaces the generated part of BENCHMARKS.md (between the markers) with
/// the table of the run in `out`, its date (its results.json's, so that a
/// run republished later keeps its own) and this machine.
fn update_benchmarks_md(out: &Path, table: &str, targets: &str) -> anyhow::Result<()> {
    let path = repo().join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path)?;
    let (Some(a), Some(b)) = (text.find(BEGIN), text.find(END)) else {
        bail!("BENCHMARKS.md lacks the markers {BEGIN} and {END}");
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("-r")
        .arg(out.join("results.json"))
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let generated = format!(
        "{BEGIN}\n_Generated by `cargo xtask bench` on {date}; {cores} cores ({cpu}), shared._\n\n{table}\n{targets}{END}"
    );
    let updated = format!("{}{generated}{}", &text[..a], &text[b + END.len()..]);
    std::fs::write(&path, updated)?;
    Ok(())
}
