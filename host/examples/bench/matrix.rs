//! `bench pipeline`: the native loop and Sandpiper side by side, in one
//! invocation: draining the same preloaded records from one Tansu broker,
//! and at fixed rates on librdkafka's mock cluster (see `latency_run`).
//!
//! For each record size and worker count: every [`Mode`] drains the same
//! preloaded input (throughput, CPU, peak RSS; then a tally of its outputs
//! and dead letters). The modes whose maximum sets a latency rate then
//! get load from a producer running beside them, to find the highest rate
//! they keep up with (their live maximum), and every mode runs at half a
//! live maximum (latency). Each run is a child process of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use sandpiper::kafka::embedded::EmbeddedCluster;
use sandpiper::kafka::{Outgoing, tools};
use serde::{Deserialize, Serialize};

use crate::broker::Broker;
use crate::probe;
use crate::report;
use crate::scenario::{self, Latency, Mode, PARTITIONS, Phase, Spec, Throughput};

#[derive(Debug, Clone)]
pub struct Plan {
    /// (record size in bytes, workers) pairs to run.
    pub configs: Vec<(usize, usize)>,
    /// Records preloaded per input topic, by record size.
    pub records: fn(usize) -> u64,
    /// Length of each fixed-rate run.
    pub latency_seconds: f64,
    /// Length of each run finding a live maximum.
    pub live_seconds: f64,
    /// At most this many runs to find a live maximum.
    pub live_offers: usize,
    /// Fixed-rate runs of each mode.
    pub latency_rounds: usize,
    /// Throughput runs of each mode.
    pub throughput_rounds: usize,
    /// Where results, the table and the plots go.
    pub out: PathBuf,
    /// The modes to run (all but when profiling one).
    pub modes: Vec<Mode>,
    /// Overrides the latency runs' rate, and skips the live-maximum search
    /// (profiling).
    pub rate_override: Option<u64>,
    /// Overrides `records` (profiling).
    pub records_override: Option<u64>,
    /// Extra TOML for Sandpiper's `[[pipeline]]` table (profiling).
    pub pipeline_toml: String,
}

impl Plan {
    fn records(&self, size: usize) -> u64 {
        self.records_override.unwrap_or((self.records)(size))
    }

    pub fn full(out: PathBuf) -> Self {
        Self {
            configs: vec![(100, 1), (100, 2), (1024, 1), (1024, 2)],
            records: |size| if size <= 100 { 200_000 } else { 100_000 },
            latency_seconds: 6.0,
            live_seconds: 3.0,
            live_offers: 5,
            latency_rounds: 5,
            throughput_rounds: 5,
            out,
            modes: Mode::ALL.to_vec(),
            records_override: None,
            rate_override: None,
            pipeline_toml: String::new(),
        }
    }

    /// CI's variant: every mode and code path, few records.
    pub fn quick(out: PathBuf) -> Self {
        Self {
            configs: vec![(100, 1), (1024, 2)],
            records: |_| 3_000,
            latency_seconds: 1.5,
            live_seconds: 1.0,
            live_offers: 1,
            latency_rounds: 1,
            throughput_rounds: 1,
            out,
            modes: Mode::ALL.to_vec(),
            records_override: None,
            rate_override: None,
            pipeline_toml: String::new(),
        }
    }
}

/// Every input accounted for: in the output, the dead letters, or missing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    pub inputs: u64,
    pub outputs: u64,
    pub dead_letters: u64,
    pub missing: u64,
    pub duplicates: u64,
}

impl Tally {
    fn add(&mut self, other: &Self) {
        self.inputs += other.inputs;
        self.outputs += other.outputs;
        self.dead_letters += other.dead_letters;
        self.missing += other.missing;
        self.duplicates += other.duplicates;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub size: usize,
    pub workers: usize,
    pub mode: Mode,
    /// The median of `throughputs` by records/s.
    pub throughput: Throughput,
    /// Every throughput round.
    #[serde(default)]
    pub throughputs: Vec<Throughput>,
    /// Every round's tally, added up.
    pub tally: Tally,
    /// The highest rate kept up with when the load is produced beside the
    /// contender (see `run`).
    #[serde(default)]
    pub live_max: Option<f64>,
    /// The median of `latencies` by p99.
    pub latency: Option<Latency>,
    /// Every fixed-rate round.
    #[serde(default)]
    pub latencies: Vec<Latency>,
}

pub fn run(plan: &Plan) -> anyhow::Result<Vec<Row>> {
    std::fs::create_dir_all(&plan.out)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows: Vec<Row> = Vec::new();
    let mut run_id = 0;
    for &(size, workers) in &plan.configs {
        // A broker of its own per configuration: Tansu keeps every topic in
        // memory, and a whole run's topics (gigabytes at 1 KB) once brought
        // it down. Its log goes next to the results.
        let broker = Broker::start(&plan.out.join(format!("tansu-{size}x{workers}.log")))?;
        let brokers = broker.brokers();
        let n = plan.records(size);
        for trapping in [false, true] {
            let topic = input_topic(size, trapping);
            broker.create_topic(&topic, PARTITIONS)?;
            let records: Vec<Outgoing> = (0..n)
                .map(|i| Outgoing {
                    topic: topic.clone(),
                    key: Some(format!("k{i}").into_bytes()),
                    value: Some(if trapping && scenario::traps(i) {
                        scenario::poison(size)
                    } else {
                        scenario::order(i, size)
                    }),
                    headers: Vec::new(),
                    mark: None,
                    timestamp: None,
                })
                .collect();
            let started = std::time::Instant::now();
            rt.block_on(tools::produce_all(&brokers, &records))
                .with_context(|| format!("preloading {topic}"))?;
            eprintln!(
                "bench: preloaded {n} records of {size} B into {topic} in {:.1?}",
                started.elapsed()
            );
        }
        let records = plan.records(size);
        // Throughput in rounds that interleave the modes: the same run
        // moves by a third from one run to the next on this machine, so each
        // mode's figure is its median round (by records/s).
        for round in 0..plan.throughput_rounds {
            for &mode in &plan.modes {
                run_id += 1;
                let spec = Spec {
                    mode,
                    workers,
                    brokers: brokers.clone(),
                    input: input_topic(size, mode.traps()),
                    output: format!("out-{run_id}"),
                    dead_letter: format!("dlq-{run_id}"),
                    group: format!("group-{run_id}"),
                    pipeline_toml: plan.pipeline_toml.clone(),
                    phase: Phase::Throughput { records },
                };
                broker.create_topic(&spec.output, PARTITIONS)?;
                broker.create_topic(&spec.dead_letter, PARTITIONS)?;
                let (mut throughput, cores): (Throughput, _) = child(&spec)?;
                throughput.cores_ns = cores;
                let tally = tally(&brokers, &spec, records)?;
                broker.delete_topic(&spec.output);
                broker.delete_topic(&spec.dead_letter);
                eprintln!(
                    "bench: {size} B, {workers} worker(s), {} (round {}): {:.0} records/s, {:.2} µs CPU per record, peak RSS {} KiB, cores {}; tally {tally:?}",
                    mode.label(),
                    round + 1,
                    throughput.rate(),
                    throughput.cpu_us(),
                    throughput.peak_rss_kib,
                    cores_text(throughput.cores_ns),
                );
                if tally.missing > 0 {
                    bail!(
                        "{}: {} of {records} inputs missing",
                        mode.label(),
                        tally.missing
                    );
                }
                match row_mut(&mut rows, size, workers, mode) {
                    Some(row) => {
                        row.tally.add(&tally);
                        row.throughputs.push(throughput);
                    }
                    None => rows.push(Row {
                        size,
                        workers,
                        mode,
                        throughput: throughput.clone(),
                        throughputs: vec![throughput],
                        tally,
                        live_max: None,
                        latency: None,
                        latencies: Vec::new(),
                    }),
                }
            }
        }
        for row in rows
            .iter_mut()
            .filter(|r| (r.size, r.workers) == (size, workers))
        {
            if let Some(median) = median_by(&row.throughputs, Throughput::rate) {
                row.throughput = median;
            }
        }
        // The maximum rate with the load generated live. Draining a
        // preloaded topic leaves out producing and reading the load on the
        // same two cores: half the drain maximum saturated the machine
        // (the native loop's own p99 reached seconds). So each mode whose
        // maximum sets a latency rate (see `latency_rate_from`) is offered
        // load by a producer in its own process, with the reader running:
        // first its drain maximum; while it keeps up with every offer
        // (completes 95% of it), half as much again; while it has kept up
        // with no offer, what it completed or half the offer, whichever is
        // more (an offer far beyond the maximum can lose records to the
        // mock cluster's retention, and stall the contender on resetting
        // its offsets); then halfway between the highest offer it kept up
        // with and the lowest it did not, until they are within 15% or
        // after `live_offers`. Its live maximum is the highest offer it
        // kept up with (or the most it completed in one, if none).
        // One fixed-rate run of `mode` on a mock cluster of its own.
        let mut fixed_rate = |mode, rate, seconds, search| {
            run_id += 1;
            latency_run(plan, run_id, mode, (size, workers), rate, seconds, search)
        };
        // Searched: each rate's reference mode, and the native loop that
        // runs at the same rate (it has to keep up with it too).
        let mut references: Vec<Mode> = plan
            .modes
            .iter()
            .copied()
            .filter(|m| {
                let reference = m.latency_rate_from();
                *m == reference || (m.is_native() && plan.modes.contains(&reference))
            })
            .collect();
        // A rate given on the command line (profiling) needs no search.
        if plan.rate_override.is_some() {
            references.clear();
        }
        for mode in references {
            let Some(base) = report::find(&rows, size, workers, mode) else {
                continue;
            };
            let (mut kept_up, mut fell_behind) = (0.0f64, f64::INFINITY);
            // A single offer (the quick variant) cannot recover from one
            // beyond the maximum, which can lose records to the mock
            // cluster's retention and then completes almost nothing (the
            // native loop drains 100-byte records faster than the mock
            // cluster takes them live): it offers half the drain maximum.
            let mut offered = match plan.live_offers {
                1 => base.throughput.rate() / 2.0,
                _ => base.throughput.rate(),
            };
            // The most completed in any offer: the maximum when none was
            // kept up with (an offer far above it can complete nothing).
            let mut best = 0.0f64;
            for _ in 0..plan.live_offers {
                let live = fixed_rate(mode, offered as u64, plan.live_seconds, true)?;
                eprintln!(
                    "bench: {size} B, {workers} worker(s), {} offered {offered:.0} records/s live: completed {:.0} a second",
                    mode.label(),
                    live.achieved,
                );
                let completed = live.achieved;
                best = best.max(completed);
                if completed >= 0.95 * offered {
                    kept_up = offered;
                } else {
                    fell_behind = offered;
                }
                if fell_behind.is_finite() && fell_behind - kept_up < 0.15 * kept_up {
                    break;
                }
                offered = if fell_behind.is_infinite() {
                    // Kept up with all it was offered: the live maximum can
                    // be above the drain maximum (the mock cluster is not
                    // the drain's broker), so look higher.
                    offered * 1.5
                } else if kept_up > 0.0 {
                    (kept_up + fell_behind) / 2.0
                } else {
                    completed.max(offered / 2.0)
                };
            }
            let maximum = if kept_up > 0.0 { kept_up } else { best };
            // None found (every offer lost its records): the rate comes
            // from the other mode searched for it, or the drain maximum.
            if let Some(row) = row_mut(&mut rows, size, workers, mode) {
                row.live_max = (maximum > 0.0).then_some(maximum);
            }
        }
        // Latency at a fixed rate, half a live maximum, in rounds that
        // interleave the modes: a run's p99 on this broker moves by tens of
        // milliseconds from run to run, so each mode's figure is its median
        // round (by p99) and the table shows the range.
        for _ in 0..plan.latency_rounds {
            for &mode in &plan.modes {
                let Some(base) = report::find(&rows, size, workers, mode.latency_rate_from())
                else {
                    continue;
                };
                let maximum = shared_maximum(&rows, size, workers, mode.latency_rate_from())
                    .unwrap_or_else(|| base.throughput.rate());
                let rate = plan.rate_override.unwrap_or((maximum / 2.0) as u64);
                let latency = fixed_rate(mode, rate, plan.latency_seconds, false)?;
                eprintln!(
                    "bench: {size} B, {workers} worker(s), {} at {rate} records/s: p50 {:.0} µs, p99 {:.0} µs ({} samples, {:.0} completed a second), cores {}",
                    mode.label(),
                    latency.p50_us,
                    latency.p99_us,
                    latency.samples,
                    latency.achieved,
                    cores_text(latency.cores_ns),
                );
                if let Some(row) = row_mut(&mut rows, size, workers, mode) {
                    row.latencies.push(latency);
                }
            }
        }
        for row in rows
            .iter_mut()
            .filter(|r| (r.size, r.workers) == (size, workers))
        {
            row.latency = median_by(&row.latencies, |l| l.p99_us);
        }
        // After each configuration, so a failure later keeps what is done.
        std::fs::write(
            plan.out.join("results.json"),
            serde_json::to_string_pretty(&rows)?,
        )?;
    }
    Ok(rows)
}

/// The live maximum that sets the rate of `reference`'s modes at (`size`,
/// `workers`): the lower of the reference's own and that of the native loop
/// running at its rate, so that both keep up with half of it. On
/// 2026-11-30 a full run stopped at 100 B / 2 workers: the native loop
/// kept up with 170,000 records/s but fell behind at 206,825, half of
/// reuse mode's live maximum, in both attempts (BENCHMARKS.md).
pub fn shared_maximum(rows: &[Row], size: usize, workers: usize, reference: Mode) -> Option<f64> {
    rows.iter()
        .filter(|r| (r.size, r.workers) == (size, workers))
        .filter(|r| r.mode.latency_rate_from() == reference)
        .filter_map(|r| r.live_max)
        .min_by(f64::total_cmp)
}

/// The row of `mode` at (`size`, `workers`), to update.
fn row_mut(rows: &mut [Row], size: usize, workers: usize, mode: Mode) -> Option<&mut Row> {
    rows.iter_mut()
        .find(|r| (r.size, r.workers, r.mode) == (size, workers, mode))
}

/// The median of `rounds` by `key` (the lower one of an even count).
pub fn median_by<T: Clone>(rounds: &[T], key: impl Fn(&T) -> f64) -> Option<T> {
    let mut sorted: Vec<&T> = rounds.iter().collect();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .map(|&t| t.clone())
}

/// One fixed-rate run of `mode`: `rate` records a second for `seconds`, on
/// a mock cluster of its own (librdkafka's, in this process). Tansu, the
/// throughput runs' broker, holds every fetch for its whole wait and keeps
/// each run's topics in memory: its p50 was 30 ms and its p99 spread from
/// 80 to 700 ms between rounds of one mode, even at a tenth of the
/// maximum rate, which hid what a contender adds. The mock answers a
/// fetch as soon as it has data (see `Phase::fetch_wait_ms`), costs less
/// CPU per record, and starts empty for every run.
///
/// A run that fails is run once more, on a fresh cluster, and says so: a
/// contender that falls more than about 5 MiB per partition behind (a
/// spell of the cores far apart, see `probe`, can do it at the 100 B
/// rates) loses unread input to the mock's retention, and its tally then
/// fails the whole benchmark. A second failure does.
fn latency_run(
    plan: &Plan,
    run_id: usize,
    mode: Mode,
    (size, workers): (usize, usize),
    rate: u64,
    seconds: f64,
    search: bool,
) -> anyhow::Result<Latency> {
    let attempt = |attempt: u32| -> anyhow::Result<Latency> {
        let cluster = EmbeddedCluster::start(1).context("starting the mock cluster")?;
        let spec = Spec {
            mode,
            workers,
            brokers: cluster.bootstrap_servers().to_owned(),
            input: format!("lat-in-{run_id}-{attempt}"),
            output: format!("lat-out-{run_id}-{attempt}"),
            dead_letter: format!("lat-dlq-{run_id}-{attempt}"),
            group: format!("group-{run_id}-{attempt}"),
            pipeline_toml: plan.pipeline_toml.clone(),
            phase: Phase::Latency {
                rate: rate.max(1),
                seconds,
                size,
                search,
            },
        };
        for t in [&spec.input, &spec.output, &spec.dead_letter] {
            cluster.create_topic(t, PARTITIONS, 1)?;
        }
        let (mut latency, cores): (Latency, _) = child(&spec)?;
        latency.cores_ns = cores;
        latency.attempts = attempt;
        Ok(latency)
    };
    attempt(1).or_else(|error| {
        eprintln!(
            "bench: {} at {rate} records/s failed ({error:#}); running it once more",
            mode.label()
        );
        attempt(2)
    })
}

/// How long each probe of the cores takes, before and after every run.
const CORES_PROBE: Duration = Duration::from_millis(100);

/// `130/410 ns`: the cores' round trip before and after a run.
fn cores_text(cores: Option<[f64; 2]>) -> String {
    cores.map_or_else(
        || "not probed".to_owned(),
        |[before, after]| format!("{before:.0}/{after:.0} ns"),
    )
}

fn input_topic(size: usize, trapping: bool) -> String {
    if trapping {
        format!("in-{size}-traps")
    } else {
        format!("in-{size}")
    }
}

/// Runs `spec` in a child process (this binary, `scenario SPEC`) and
/// parses the JSON line it prints; with the cores' round trip just before
/// and after (`probe`): this machine's two cores are near or far apart in
/// spells of seconds, and every figure follows (BENCHMARKS.md).
fn child<T: serde::de::DeserializeOwned>(spec: &Spec) -> anyhow::Result<(T, Option<[f64; 2]>)> {
    let before = probe::round_trip_ns(CORES_PROBE);
    let result = run_child(spec)?;
    let after = probe::round_trip_ns(CORES_PROBE);
    Ok((result, before.zip(after).map(|(b, a)| [b, a])))
}

fn run_child<T: serde::de::DeserializeOwned>(spec: &Spec) -> anyhow::Result<T> {
    let exe = std::env::current_exe()?;
    // `SANDPIPER_BENCH_PERF=DIR` records each scenario with `perf` into
    // DIR/<mode>-<phase>.data (the measured process alone, not the broker).
    let mut command = match std::env::var_os("SANDPIPER_BENCH_PERF") {
        Some(dir) => {
            let phase = match spec.phase {
                Phase::Throughput { .. } => "throughput",
                Phase::Latency { .. } => "latency",
            };
            let data = Path::new(&dir).join(format!("{}-{phase}.data", spec.mode.short()));
            // `SANDPIPER_BENCH_PERF_ARGS` replaces the sampling options,
            // e.g. `-F 499 --call-graph dwarf,16384` where frame pointers
            // are missing (librdkafka, libc).
            let options = std::env::var("SANDPIPER_BENCH_PERF_ARGS")
                .unwrap_or_else(|_| "-F 997 -g".to_owned());
            let mut perf = Command::new("perf");
            perf.arg("record")
                .args(options.split_whitespace())
                .arg("-o")
                .arg(data)
                .arg("--")
                .arg(exe);
            perf
        }
        None => Command::new(exe),
    };
    let out = command
        .arg("scenario")
        .arg(serde_json::to_string(spec)?)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running a scenario")?;
    if !out.status.success() {
        bail!("{} failed: {}", spec.mode.label(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("parsing the scenario's result {line:?}"))
}

/// Reads the run's output and dead-letter topics and finds every input key
/// (`k{i}`) in one of them.
fn tally(brokers: &str, spec: &Spec, inputs: u64) -> anyhow::Result<Tally> {
    // Tansu's ListOffsets does not give a partition's end: read until quiet.
    let quiet = Duration::from_secs(2);
    let timeout = Duration::from_secs(120);
    let outputs = tools::read_until_quiet(brokers, &spec.output, quiet, timeout)?;
    let dead = tools::read_until_quiet(brokers, &spec.dead_letter, quiet, timeout)?;
    let mut seen = vec![0u32; inputs as usize];
    for r in outputs.iter().chain(&dead) {
        let i = r
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.strip_prefix('k'))
            .and_then(|k| k.parse::<usize>().ok())
            .filter(|&i| i < seen.len())
            .with_context(|| {
                format!(
                    "an unexpected record in {} or its dead letters",
                    spec.output
                )
            })?;
        seen[i] += 1;
    }
    Ok(Tally {
        inputs,
        outputs: outputs.len() as u64,
        dead_letters: dead.len() as u64,
        missing: seen.iter().filter(|&&n| n == 0).count() as u64,
        duplicates: seen.iter().map(|&n| u64::from(n.saturating_sub(1))).sum(),
    })
}

/// Reads a previous run's results (to redraw the report).
pub fn load(dir: &Path) -> anyhow::Result<Vec<Row>> {
    let text = std::fs::read_to_string(dir.join("results.json"))?;
    Ok(serde_json::from_str(&text)?)
}
