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

fn pipeline(args: &[String]) -> anyhow::Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let docs = args.iter().any(|a| a == "--docs");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let out = value("--out").map_or_else(
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
    // For profiling one corner: `--config 1024x2`, `--modes native,reuse`,
    // `--records N`, `--rate R`, `--rounds N` (runs of each mode),
    // `--throughput-only`, `--pipeline-toml 'partition_buffer = 1024'`.
    if let Some(c) = value("--config") {
        let (size, workers) = c.split_once('x').context("--config SIZExWORKERS")?;
        plan.configs = vec![(size.parse()?, workers.parse()?)];
    }
    if let Some(m) = value("--modes") {
        plan.modes = m
            .split(',')
            .map(|m| {
                scenario::Mode::ALL
                    .into_iter()
                    .find(|x| x.short() == m)
                    .with_context(|| format!("unknown mode {m:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(n) = value("--records") {
        plan.records_override = Some(n.parse()?);
    }
    if let Some(r) = value("--rate") {
        plan.rate_override = Some(r.parse()?);
    }
    if let Some(n) = value("--rounds") {
        plan.latency_rounds = n.parse()?;
        plan.throughput_rounds = plan.latency_rounds;
    }
    // A/B of a change: the drain alone, no live search or latency runs.
    if args.iter().any(|a| a == "--throughput-only") {
        plan.latency_rounds = 0;
        plan.live_offers = 0;
    }
    if let Some(t) = value("--pipeline-toml") {
        plan.pipeline_toml = t.clone();
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
