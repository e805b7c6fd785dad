//! One measured run, in a process of its own (`bench scenario SPEC`) so its
//! peak RSS and CPU time are its own: a contender (the native loop or
//! Sandpiper) against topics the orchestrator prepared.
//!
//! - Throughput: drain a preloaded input topic; time and CPU are taken from
//!   the first acknowledged record to the last, so group joining and plugin
//!   compilation are outside the figure.
//! - Latency: once a warm-up record per partition has come out, a producer
//!   in this process sends at a fixed rate, keys carrying the send time; a
//!   reader in this process receives the outputs and records
//!   `received - sent` (the same clock on both ends).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use sandpiper::app::App;
use sandpiper::config::Config;
use serde::{Deserialize, Serialize};

use crate::native::{Native, Transform};

/// librdkafka settings both contenders run with: Sandpiper's own defaults
/// (`crates/kafka/src/lib.rs`) and short group timeouts: Tansu holds a join
/// for the whole rebalance timeout (23 s at the defaults, 3 s here). The
/// fetch wait depends on the broker: see [`Phase::fetch_wait_ms`].
pub const CONSUMER_PROPERTIES: &[(&str, &str)] = &[
    ("auto.offset.reset", "earliest"),
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("fetch.queue.backoff.ms", "20"),
    ("auto.commit.interval.ms", "1000"),
    ("session.timeout.ms", "6000"),
    ("max.poll.interval.ms", "6000"),
];
pub const PRODUCER_PROPERTIES: &[(&str, &str)] = &[
    ("linger.ms", "5"),
    ("enable.idempotence", "true"),
    ("acks", "all"),
];

/// Partitions of every benchmark topic.
pub const PARTITIONS: i32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Plain rust-rdkafka loop copying each record: the ceiling.
    Native,
    /// Sandpiper, `passthrough`, reused instances.
    Reuse,
    /// Sandpiper, `passthrough`, `isolation = "per-record"`.
    PerRecord,
    /// Sandpiper, reused instances, 1% of the records trap.
    Traps,
    /// Plain loop running `json-transform`'s code natively.
    NativeJson,
    /// Sandpiper, `json-transform`, reused instances.
    Json,
}

impl Mode {
    pub const ALL: [Self; 6] = [
        Self::Native,
        Self::Reuse,
        Self::PerRecord,
        Self::Traps,
        Self::NativeJson,
        Self::Json,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Native => "native loop",
            Self::Reuse => "Sandpiper, reuse",
            Self::PerRecord => "Sandpiper, fresh instance per record",
            Self::Traps => "Sandpiper, reuse, 1% traps",
            Self::NativeJson => "native loop, JSON transform",
            Self::Json => "Sandpiper, JSON transform",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Reuse => "reuse",
            Self::PerRecord => "per-record",
            Self::Traps => "1% traps",
            Self::NativeJson => "native JSON",
            Self::Json => "wasm JSON",
        }
    }

    /// The native run this one is compared with.
    pub fn baseline(self) -> Self {
        match self {
            Self::NativeJson | Self::Json => Self::NativeJson,
            _ => Self::Native,
        }
    }

    /// The mode whose live maximum sets this mode's rate in the latency
    /// run: Sandpiper's reuse mode for the passthrough modes and the native
    /// loop (the issue's target: reuse at half its maximum; the native loop
    /// at the same rate for the comparison), each other Sandpiper mode its
    /// own, the native JSON loop the Wasm one's. The native loop of a rate
    /// is searched too, and the lower maximum counts (see
    /// `matrix::shared_maximum`).
    pub fn latency_rate_from(self) -> Self {
        match self {
            Self::Native | Self::Reuse | Self::Traps => Self::Reuse,
            Self::PerRecord => Self::PerRecord,
            Self::NativeJson | Self::Json => Self::Json,
        }
    }

    /// The native loops (no Wasm).
    pub fn is_native(self) -> bool {
        matches!(self, Self::Native | Self::NativeJson)
    }

    /// Whether the input holds 1% trapping records.
    pub fn traps(self) -> bool {
        self == Self::Traps
    }

    fn plugin(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::Native | Self::NativeJson => None,
            Self::Reuse => Some(("passthrough", "reuse")),
            Self::PerRecord => Some(("passthrough", "per-record")),
            Self::Traps => Some(("sometimes_trap", "reuse")),
            Self::Json => Some(("json_transform", "reuse")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Phase {
    /// Drain `records` preloaded records.
    Throughput { records: u64 },
    /// Send `rate` records a second for `seconds`, `size` bytes each, on
    /// librdkafka's mock cluster (see `matrix::latency_run`).
    Latency {
        rate: u64,
        seconds: f64,
        size: usize,
        /// Finding a live maximum: only the completion rate counts, and
        /// outputs may be missing (see `latency`).
        #[serde(default)]
        search: bool,
    },
}

impl Phase {
    /// `fetch.wait.max.ms` for every consumer of the run, by broker. Both
    /// brokers answer a fetch that finds no data only when its wait is
    /// over, where Kafka answers as soon as data arrives. Tansu (the
    /// throughput runs) even holds a fetch that found data for the whole
    /// wait (its `fetch.rs` sleeps out the wait either way): at
    /// librdkafka's default of 500 ms that was most of any run's time, and
    /// 1 ms swamped it with fetches. The mock cluster (the fixed-rate runs)
    /// answers at once when there is data; a 1 ms wait makes it answer
    /// new data within a millisecond, as Kafka would.
    pub fn fetch_wait_ms(&self) -> &'static str {
        match self {
            Self::Throughput { .. } => "10",
            Self::Latency { .. } => "1",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub mode: Mode,
    pub workers: usize,
    pub brokers: String,
    pub input: String,
    pub output: String,
    pub dead_letter: String,
    pub group: String,
    /// Extra TOML inside Sandpiper's `[[pipeline]]` table.
    pub pipeline_toml: String,
    pub phase: Phase,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Throughput {
    /// Records counted between the first and the last acknowledgement.
    pub records: u64,
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
    /// The cores' round trip just before and just after the run, in ns
    /// (`probe`): about 130 when they are near, 400 when far.
    #[serde(default)]
    pub cores_ns: Option<[f64; 2]>,
}

impl Throughput {
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    /// CPU microseconds per record.
    pub fn cpu_us(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.records as f64
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub rate: u64,
    pub samples: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Records a second the contender completed while the load was being
    /// sent (from the end of the warm-up fifth to the last send): below
    /// `rate` when it could not keep up.
    #[serde(default)]
    pub achieved: f64,
    /// Outputs that never arrived: none, but in a search (see `latency`).
    #[serde(default)]
    pub missing: usize,
    /// As [`Throughput::cores_ns`].
    #[serde(default)]
    pub cores_ns: Option<[f64; 2]>,
    /// 2 when the first attempt failed and this is the second (see
    /// `matrix::latency_run`).
    #[serde(default)]
    pub attempts: u32,
}

/// A JSON order of `size` bytes (the `json-transform` plugin's input).
pub fn order(i: u64, size: usize) -> Vec<u8> {
    let render = |items: &[String]| {
        format!(
            r#"{{"id":{i},"customer":"c{}","items":[{}],"note":""}}"#,
            i % 1000,
            items.join(",")
        )
    };
    let mut items: Vec<String> = Vec::new();
    let mut text = render(&items);
    loop {
        let n = items.len() as u64;
        items.push(format!(
            r#"{{"sku":"s{}","qty":{},"price":{}.99}}"#,
            (i + n) % 997,
            1 + (i + n) % 5,
            (i + n) % 50
        ));
        let longer = render(&items);
        if longer.len() > size && items.len() > 1 {
            break;
        }
        text = longer;
    }
    // Pad the note to the exact size.
    let pad = size.saturating_sub(text.len());
    text.insert_str(text.len() - 2, &"n".repeat(pad));
    text.into_bytes()
}

/// A record the `sometimes_trap` plugin traps on, of `size` bytes.
pub fn poison(size: usize) -> Vec<u8> {
    let mut v = b"TRAP".to_vec();
    v.resize(size.max(4), b'.');
    v
}

/// Whether record `i` of a trapping input traps: 1 in 100.
pub fn traps(i: u64) -> bool {
    i % 100 == 99
}

/// This process's user + system CPU time (`/proc/self/stat`, in ticks of
/// 1/100 s, Linux's fixed USER_HZ).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// This process's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn plugin_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

/// The contender under test, started.
enum Contender {
    Native(Native),
    Sandpiper(Box<App>),
}

impl Contender {
    async fn start(spec: &Spec) -> anyhow::Result<Self> {
        let Some((plugin, isolation)) = spec.mode.plugin() else {
            let transform = if spec.mode == Mode::NativeJson {
                Transform::Json
            } else {
                Transform::Copy
            };
            return Ok(Self::Native(Native::start(spec, transform)?));
        };
        let fetch_wait = ("fetch.wait.max.ms", spec.phase.fetch_wait_ms());
        let consumer_properties: String = CONSUMER_PROPERTIES
            .iter()
            .chain([&fetch_wait])
            .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
            .collect();
        let text = format!(
            r#"
[kafka]
brokers = "{brokers}"
group = "{group}"
[kafka.consumer_properties]
{consumer_properties}
[[pipeline]]
name = "bench"
inputs = ["{input}"]
output = "{output}"
dead_letter = "{dead_letter}"
plugin = "{plugin}"
workers = {workers}
isolation = "{isolation}"
{extra}
"#,
            extra = spec.pipeline_toml,
            brokers = spec.brokers,
            group = spec.group,
            input = spec.input,
            output = spec.output,
            dead_letter = spec.dead_letter,
            plugin = plugin_path(plugin).display(),
            workers = spec.workers,
        );
        let config = Config::parse("bench", &text)?;
        Ok(Self::Sandpiper(Box::new(App::start(config).await?)))
    }

    fn assigned(&self) -> bool {
        match self {
            Self::Native(n) => n.assigned(),
            Self::Sandpiper(app) => !app.health.pipelines()[0].assigned().is_empty(),
        }
    }

    /// Records whose outputs (or dead letter) are acknowledged and whose
    /// offsets are stored.
    fn done(&self) -> u64 {
        match self {
            Self::Native(n) => n.done(),
            Self::Sandpiper(app) => app.health.pipelines()[0]
                .assigned()
                .iter()
                .map(|p| (p.completed.load(Ordering::Relaxed) + 1).max(0) as u64)
                .sum(),
        }
    }

    async fn stop(self) {
        match self {
            Self::Native(n) => n.stop(),
            Self::Sandpiper(app) => app.stop().await,
        }
    }
}

/// Runs `spec` and prints its result as one JSON line.
pub fn run(spec: &Spec) -> anyhow::Result<()> {
    // Both contenders get the same runtime: tokio's default, one worker
    // thread per core (the `sandpiper` binary uses at least 4, so that a
    // rebalance callback blocking one cannot starve the partitions).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let line = match spec.phase {
        Phase::Throughput { records } => {
            serde_json::to_string(&rt.block_on(throughput(spec, records))?)?
        }
        Phase::Latency {
            rate,
            seconds,
            size,
            search,
        } => serde_json::to_string(&rt.block_on(latency(spec, rate, seconds, size, search))?)?,
    };
    println!("{line}");
    // The contender is stopped; librdkafka's clients are gone. Leave
    // without waiting for tokio's blocking pool to wind down.
    std::process::exit(0)
}

async fn throughput(spec: &Spec, total: u64) -> anyhow::Result<Throughput> {
    let contender = Contender::start(spec).await?;
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first: Option<(Instant, f64, u64)> = None;
    loop {
        let done = contender.done();
        if first.is_none() && done > 0 {
            first = Some((Instant::now(), cpu_seconds(), done));
        }
        if done >= total {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{:?}: {done} of {total} records done after 900 s",
                spec.mode
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (end, cpu_end) = (Instant::now(), cpu_seconds());
    let (start, cpu_start, before) = first.context("no record done")?;
    let result = Throughput {
        records: total - before,
        seconds: (end - start).as_secs_f64(),
        cpu_seconds: cpu_end - cpu_start,
        peak_rss_kib: peak_rss_kib(),
        cores_ns: None,
    };
    contender.stop().await;
    Ok(result)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

async fn latency(
    spec: &Spec,
    rate: u64,
    seconds: f64,
    size: usize,
    search: bool,
) -> anyhow::Result<Latency> {
    // The reader first, at the start of the (empty) output topic.
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    // Bit `p` set: the warm-up record sent to partition `p` came out.
    let warmed = Arc::new(AtomicU32::new(0));
    let reader = {
        let (brokers, output) = (spec.brokers.clone(), spec.output.clone());
        let (stop, samples, warmed) = (stop.clone(), samples.clone(), warmed.clone());
        let fetch_wait_ms = spec.phase.fetch_wait_ms();
        std::thread::spawn(move || {
            read_latencies(&brokers, &output, fetch_wait_ms, &stop, &samples, &warmed)
        })
    };
    let contender = Contender::start(spec).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !contender.assigned() {
        if Instant::now() > deadline {
            bail!("{:?}: no partition assigned within 60 s", spec.mode);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let total = (rate as f64 * seconds) as u64;
    let loading = Arc::new(AtomicBool::new(false));
    let sender = {
        let (brokers, input, traps) = (spec.brokers.clone(), spec.input.clone(), spec.mode.traps());
        let (warmed, loading) = (warmed.clone(), loading.clone());
        tokio::task::spawn_blocking(move || {
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("linger.ms", "1")
                .set("enable.idempotence", "true")
                .create()?;
            warm_up(&producer, &input, size, &warmed)?;
            loading.store(true, Ordering::Relaxed);
            send_at_rate(&producer, &input, rate, total, size, traps)
        })
    };
    while !loading.load(Ordering::Relaxed) && !sender.is_finished() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The contender's completion rate while the load is sent, after the
    // warm-up fifth (the same window as the latency samples).
    let sending = Instant::now();
    let warm_up = Duration::from_secs_f64(seconds / 5.0);
    let mut from: Option<(Instant, u64)> = None;
    while !sender.is_finished() {
        if from.is_none() && sending.elapsed() >= warm_up {
            from = Some((Instant::now(), contender.done()));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let achieved = from.map_or(0.0, |(at, done)| {
        (contender.done() - done) as f64 / at.elapsed().as_secs_f64()
    });
    let sent = sender.await??;
    let expected = (0..sent)
        .filter(|&i| !(spec.mode.traps() && traps(i)))
        .count();
    // Wait for every output (each sequence number once; at-least-once may
    // repeat some). A search only needs the completion rate above, and
    // the mock cluster keeps about 5 MiB per partition: an offer the
    // contender fell far behind on can lose records to it. So a search
    // waits only while outputs still arrive.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut arrived, mut last_change) = (0, Instant::now());
    while Instant::now() < deadline {
        // Copied under the lock, sorted outside it: the reader is still
        // timing arrivals.
        let (now, copy) = {
            let samples = samples.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            (
                samples.len(),
                (samples.len() >= expected).then(|| samples.clone()),
            )
        };
        if copy.is_some_and(|copy| first_arrivals(&copy).len() >= expected) {
            break;
        }
        if search && now == arrived && last_change.elapsed() > Duration::from_secs(2) {
            break;
        }
        if now != arrived {
            (arrived, last_change) = (now, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    contender.stop().await;
    let samples = first_arrivals(&samples.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    // `SANDPIPER_BENCH_SAMPLES=DIR`: every first arrival as `seq ns` lines
    // (DIR/<mode>-<rate>-<pid>.txt), to see when the slow ones came (or,
    // in a failed run, which ones never did).
    if let Some(dir) = std::env::var_os("SANDPIPER_BENCH_SAMPLES") {
        let path = std::path::Path::new(&dir).join(format!(
            "{}-{rate}-{}.txt",
            spec.mode.short(),
            std::process::id()
        ));
        let text: String = samples
            .iter()
            .map(|(seq, ns)| format!("{seq} {ns}\n"))
            .collect();
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    // Only records that were sent and do not trap come out, once each here.
    let missing = expected.saturating_sub(samples.len());
    if missing > 0 && !search {
        bail!(
            "{:?}: {missing} of {expected} outputs missing after 60 s",
            spec.mode,
        );
    }
    // The first fifth warms the path up (connections, instances, batches).
    let mut steady: Vec<u64> = samples
        .iter()
        .filter(|(seq, _)| *seq >= sent / 5)
        .map(|(_, ns)| *ns)
        .collect();
    steady.sort_unstable();
    let pct = |p: f64| {
        let i = ((p * steady.len() as f64).ceil() as usize).max(1) - 1;
        // None only in a search that lost every output (JSON has no NaN).
        steady.get(i).map_or(0.0, |&ns| ns as f64 / 1000.0)
    };
    Ok(Latency {
        rate,
        samples: steady.len(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        achieved,
        missing,
        cores_ns: None,
        attempts: 1,
    })
}

/// Each sequence number's first arrival, by sequence number.
fn first_arrivals(samples: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut first = samples.to_vec();
    // Stable: a repeated sequence number keeps its first arrival.
    first.sort_by_key(|&(seq, _)| seq);
    first.dedup_by_key(|&mut (seq, _)| seq);
    first
}

/// Sends a record to each partition (keys `warm-P`) and waits until the
/// reader has seen each one's output: the timed load starts once the whole
/// path is live. Before this, the first records of a run waited for
/// connections, metadata and group joins (p99 of 300 ms in short runs),
/// and the backlog they left could outgrow the mock cluster's retention.
fn warm_up(
    producer: &BaseProducer,
    topic: &str,
    size: usize,
    warmed: &AtomicU32,
) -> anyhow::Result<()> {
    let value = order(0, size);
    for p in 0..PARTITIONS {
        let key = format!("warm-{p}");
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(topic)
                    .partition(p)
                    .key(key.as_bytes())
                    .payload(&value),
            )
            .map_err(|(e, _)| e)
            .context("sending a warm-up record")?;
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the warm-up records")?;
    let all = (1u32 << PARTITIONS) - 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while warmed.load(Ordering::Relaxed) != all {
        if Instant::now() > deadline {
            bail!("the warm-up records did not come out within 60 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Sends `total` records at `rate` a second; keys `SEQ:SENT_NS`.
fn send_at_rate(
    producer: &BaseProducer,
    topic: &str,
    rate: u64,
    total: u64,
    size: usize,
    with_traps: bool,
) -> anyhow::Result<u64> {
    let values: Vec<Vec<u8>> = (0..1000).map(|i| order(i, size)).collect();
    let trap = poison(size);
    let started = Instant::now();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let key = format!("{i}:{}", now_ns());
        let value = if with_traps && traps(i) {
            &trap
        } else {
            &values[(i % 1000) as usize]
        };
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .key(key.as_bytes())
            .payload(value.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the latency load")?;
    Ok(total)
}

fn read_latencies(
    brokers: &str,
    topic: &str,
    fetch_wait_ms: &str,
    stop: &AtomicBool,
    samples: &Mutex<Vec<(u64, u64)>>,
    warmed: &AtomicU32,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-latency-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    while !stop.load(Ordering::Relaxed) {
        let Some(m) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let received = now_ns();
        let m = m?;
        let key = std::str::from_utf8(m.key().unwrap_or_default()).unwrap_or_default();
        if let Some(p) = key
            .strip_prefix("warm-")
            .and_then(|p| p.parse::<u32>().ok())
        {
            warmed.fetch_or(1 << p, Ordering::Relaxed);
        } else if let Some((seq, sent)) = key.split_once(':')
            && let (Ok(seq), Ok(sent)) = (seq.parse::<u64>(), sent.parse::<u64>())
        {
            samples
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .push((seq, received.saturating_sub(sent)));
        }
    }
    Ok(())
}
