//! Benchmarks behind BENCHMARKS.md: `cargo xtask bench [runtime|pipeline]`.
//!
//! - `runtime`: per-record overhead of the `uppercase` plugin on 100-byte
//!   records, reused instance vs a fresh instance per record, and the cost
//!   of one trap plus re-instantiation.
//! - `pipeline [N] [BROKERS]`: throughput of a `passthrough` pipeline against a plain
//!   rust-rdkafka consume-then-produce loop with the same at-least-once
//!   semantics (offset stored only after the delivery report), on the same
//!   embedded cluster with the same records, alternated in one run.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sandpiper::app::App;
use sandpiper::config::Config;
use sandpiper::kafka::embedded::EmbeddedCluster;
use sandpiper::kafka::{Outgoing, tools};
use sandpiper::record::Record;
use sandpiper::runtime::{EngineSettings, Instance, Isolation, PluginSettings, Runtime};

fn plugin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

fn record(i: i64) -> Record {
    Record {
        topic: "bench".into(),
        partition: 0,
        offset: i,
        timestamp: Some(1_700_000_000_000),
        key: Some(format!("key-{i}").into_bytes()),
        value: Some(vec![b'a'; 100]),
        headers: Vec::new(),
    }
}

fn per_record(n: u64, elapsed: Duration) -> String {
    format!("{:.2} µs", elapsed.as_secs_f64() * 1e6 / n as f64)
}

fn runtime_bench() -> anyhow::Result<()> {
    let runtime = Runtime::new(EngineSettings::default())?;
    let reuse = runtime.load_file(&plugin("uppercase"), PluginSettings::default())?;
    let fresh = runtime.load_file(
        &plugin("uppercase"),
        PluginSettings {
            isolation: Isolation::PerRecord,
            ..PluginSettings::default()
        },
    )?;
    let chaos = runtime.load_file(&plugin("chaos"), PluginSettings::default())?;
    let empty = runtime.load_file(&plugin("passthrough"), PluginSettings::default())?;
    let records: Vec<Record> = (0..1000).map(record).collect();

    for round in 1..=3 {
        let mut i = Instance::new(reuse.clone());
        i.warm().map_err(|f| anyhow::anyhow!("{f}"))?;
        let n = 200_000u64;
        let t = Instant::now();
        for k in 0..n {
            i.handle(&records[(k % 1000) as usize])
                .map_err(|f| anyhow::anyhow!("{f}"))?;
        }
        let reuse_t = t.elapsed();

        let mut i = Instance::new(fresh.clone());
        let m = 20_000u64;
        let t = Instant::now();
        for k in 0..m {
            i.handle(&records[(k % 1000) as usize])
                .map_err(|f| anyhow::anyhow!("{f}"))?;
        }
        let fresh_t = t.elapsed();

        // Alternate a trap and a normal record on a reused instance: each
        // pair costs one trap, one re-instantiation and one normal call.
        let mut i = Instance::new(chaos.clone());
        i.warm().map_err(|f| anyhow::anyhow!("{f}"))?;
        let poison = Record {
            value: Some(b"unwrap-none".to_vec()),
            ..record(0)
        };
        let pairs = 2_000u64;
        let t = Instant::now();
        for k in 0..pairs {
            let _ = i.handle(&poison);
            i.handle(&records[(k % 1000) as usize])
                .map_err(|f| anyhow::anyhow!("{f}"))?;
        }
        let trap_t = t.elapsed();
        // The fixed cost: an empty record through `passthrough`.
        let mut i = Instance::new(empty.clone());
        i.warm().map_err(|f| anyhow::anyhow!("{f}"))?;
        let blank = Record {
            topic: String::new(),
            key: None,
            value: None,
            ..record(0)
        };
        let t = Instant::now();
        for _ in 0..n {
            i.handle(&blank).map_err(|f| anyhow::anyhow!("{f}"))?;
        }
        let empty_t = t.elapsed();
        let normal = reuse_t.as_secs_f64() / n as f64;
        let trap_cost = trap_t.as_secs_f64() / pairs as f64 - normal;
        println!(
            "round {round}: empty record (fixed cost) {} | uppercase 100 B: reuse {} per record | per-record isolation {} per record | trap + re-instantiation {:.2} µs",
            per_record(n, empty_t),
            per_record(n, reuse_t),
            per_record(m, fresh_t),
            trap_cost * 1e6
        );
    }
    Ok(())
}

/// The baseline: consume, produce a copy, store the offset once the
/// delivery is acknowledged (in order per partition), auto-commit.
async fn plain_loop(
    brokers: &str,
    input: &str,
    output: &str,
    group: &str,
    total: u64,
) -> anyhow::Result<Duration> {
    use rdkafka::ClientConfig;
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let consumer: Arc<StreamConsumer> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "100")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .create()?,
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    consumer.subscribe(&[input])?;
    let stored = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(i32, i64, rdkafka::producer::DeliveryFuture)>(10_000);
    let acker = {
        let (consumer, stored, input) = (consumer.clone(), stored.clone(), input.to_owned());
        tokio::spawn(async move {
            while let Some((partition, offset, delivery)) = rx.recv().await {
                if matches!(delivery.await, Ok(Ok(_))) {
                    let _ = consumer.store_offset(&input, partition, offset);
                    stored.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let started = Instant::now();
    while stored.load(Ordering::Relaxed) < total {
        let m = tokio::select! {
            m = consumer.recv() => m?,
            () = tokio::time::sleep(Duration::from_millis(10)) => continue,
        };
        let mut record = FutureRecord::<[u8], [u8]>::to(output);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(v) = m.payload() {
            record = record.payload(v);
        }
        let delivery = loop {
            match producer.send_result(record) {
                Ok(d) => break d,
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        tx.send((m.partition(), m.offset(), delivery)).await?;
        if started.elapsed() > Duration::from_secs(300) {
            bail!("baseline did not finish");
        }
    }
    let elapsed = started.elapsed();
    drop(tx);
    acker.abort();
    Ok(elapsed)
}

async fn sandpiper_run(
    brokers: &str,
    input: &str,
    output: &str,
    group: &str,
    total: u64,
) -> anyhow::Result<Duration> {
    let text = format!(
        r#"
[kafka]
brokers = "{brokers}"
group = "{group}"
[kafka.consumer_properties]
"auto.commit.interval.ms" = "100"
[[pipeline]]
name = "bench"
inputs = ["{input}"]
output = "{output}"
dead_letter = "{output}-dlq"
plugin = "{plugin}"
workers = 2
"#,
        plugin = plugin("passthrough").display()
    );
    let config = Config::parse("bench", &text)?;
    let started = Instant::now();
    let app = App::start(config).await?;
    let health = app.health.pipelines()[0].clone();
    loop {
        let done: i64 = health
            .assigned()
            .iter()
            .map(|p| p.completed.load(Ordering::Relaxed) + 1)
            .sum();
        if done as u64 >= total {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("sandpiper did not finish: {done} of {total}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    app.stop().await;
    Ok(elapsed)
}

/// Where the pipeline benchmark runs: the embedded cluster, or an external
/// broker (for example Tansu) whose topics the benchmark creates.
enum Cluster {
    Embedded(EmbeddedCluster),
    External(String),
}

impl Cluster {
    fn brokers(&self) -> String {
        match self {
            Self::Embedded(c) => c.bootstrap_servers().to_owned(),
            Self::External(b) => b.clone(),
        }
    }

    async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        match self {
            Self::Embedded(c) => c.create_topic(name, partitions, 1),
            Self::External(brokers) => {
                let settings = sandpiper::kafka::ClientSettings {
                    brokers: brokers.clone(),
                    group: String::new(),
                    properties: Default::default(),
                    consumer_properties: Default::default(),
                    producer_properties: Default::default(),
                };
                let topics = [name.to_owned()];
                for (topic, result) in
                    sandpiper::kafka::admin::create_topics(&settings, &topics, partitions, 1)
                        .await?
                {
                    if let Err(e) = result {
                        bail!("creating {topic}: {e}");
                    }
                }
                Ok(())
            }
        }
    }
}

async fn pipeline_bench(total: u64, external: Option<String>) -> anyhow::Result<()> {
    let cluster = match external {
        Some(brokers) => Cluster::External(brokers),
        None => Cluster::Embedded(EmbeddedCluster::start(1)?),
    };
    let brokers = cluster.brokers();
    let partitions = 6;
    cluster.create_topic("bench-in", partitions).await?;
    let inputs: Vec<Outgoing> = (0..total)
        .map(|i| Outgoing {
            topic: "bench-in".into(),
            key: Some(format!("key-{i}").into_bytes()),
            value: Some(vec![b'a'; 100]),
            headers: Vec::new(),
            timestamp: None,
        })
        .collect();
    tools::produce_all(&brokers, &inputs)
        .await
        .context("producing the bench input")?;
    println!(
        "{total} records of 100 bytes in {partitions} partitions; passthrough plugin vs plain consume-produce loop"
    );
    let mut ratios = Vec::new();
    for round in 1..=3 {
        let out_a = format!("bench-out-a{round}");
        let out_b = format!("bench-out-b{round}");
        for t in [&out_a, &out_b, &format!("{out_b}-dlq")] {
            cluster.create_topic(t, partitions).await?;
        }
        let base = plain_loop(
            &brokers,
            "bench-in",
            &out_a,
            &format!("plain-{round}"),
            total,
        )
        .await?;
        let ours = sandpiper_run(
            &brokers,
            "bench-in",
            &out_b,
            &format!("sandpiper-{round}"),
            total,
        )
        .await?;
        let ratio = base.as_secs_f64() / ours.as_secs_f64();
        ratios.push(ratio);
        println!(
            "round {round}: plain loop {:.0} rec/s ({base:.2?}) | sandpiper {:.0} rec/s ({ours:.2?}) | ratio {ratio:.2}",
            total as f64 / base.as_secs_f64(),
            total as f64 / ours.as_secs_f64(),
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "median ratio (sandpiper / plain throughput): {:.2}",
        ratios[1]
    );
    Ok(())
}

/// The pause a swap causes: the longest gap between two consecutive
/// outputs (producer timestamps, ms) within 1 s of the swap, against the
/// longest gap in the rest of the run, on a backlog of records (one
/// partition: the embedded cluster keeps about 5 MiB per partition).
async fn swap_bench(total: u64) -> anyhow::Result<()> {
    let cluster = EmbeddedCluster::start(1)?;
    let brokers = cluster.bootstrap_servers().to_owned();
    for t in ["swap-in", "swap-out", "swap-dlq"] {
        cluster.create_topic(t, 1, 1)?;
    }
    let inputs: Vec<Outgoing> = (0..total)
        .map(|i| Outgoing {
            topic: "swap-in".into(),
            key: Some(format!("key-{i}").into_bytes()),
            value: Some(vec![b'a'; 100]),
            headers: Vec::new(),
            timestamp: None,
        })
        .collect();
    tools::produce_all(&brokers, &inputs).await?;
    let text = format!(
        r#"
[kafka]
brokers = "{brokers}"
group = "swap-bench"
[[pipeline]]
name = "swap"
inputs = ["swap-in"]
output = "swap-out"
dead_letter = "swap-dlq"
plugin = "{plugin}"
"#,
        plugin = plugin("passthrough").display()
    );
    let app = App::start(Config::parse("swap bench", &text)?).await?;
    let health = app.health.pipelines()[0].clone();
    let done = || -> i64 {
        health
            .assigned()
            .iter()
            .map(|p| p.completed.load(Ordering::Relaxed) + 1)
            .sum()
    };
    while (done() as u64) < total / 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let v2 = std::fs::read(plugin("uppercase"))?;
    let swap_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let t = Instant::now();
    let deployed = app.deployers["swap"]
        .deploy("uppercase", v2.into(), sandpiper::deploy::Source::Api)
        .await?;
    let deploy_time = t.elapsed();
    while (done() as u64) < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.stop().await;
    let b = brokers.clone();
    let outputs = tokio::task::spawn_blocking(move || {
        tools::read_topic(
            &b,
            "swap-out",
            total as usize,
            Duration::from_secs(3),
            Duration::from_secs(60),
        )
    })
    .await??;
    let mut stamps: Vec<i64> = outputs.iter().filter_map(|r| r.timestamp).collect();
    stamps.sort_unstable();
    let (mut near, mut far) = (0i64, 0i64);
    for w in stamps.windows(2) {
        let gap = w[1] - w[0];
        if (w[0] - swap_at).abs() <= 1000 {
            near = near.max(gap);
        } else {
            far = far.max(gap);
        }
    }
    println!(
        "swap {} -> {}: deploy call (compile + check + swap) {deploy_time:.2?}; longest gap between outputs within 1 s of the swap {near} ms, elsewhere {far} ms ({} outputs)",
        deployed.previous,
        deployed.plugin,
        stamps.len()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    if what == "per-record" {
        // For profilers: only the per-record isolation loop.
        let runtime = Runtime::new(EngineSettings::default())?;
        let fresh = runtime.load_file(
            &plugin("uppercase"),
            PluginSettings {
                isolation: Isolation::PerRecord,
                ..PluginSettings::default()
            },
        )?;
        let mut i = Instance::new(fresh);
        let r = record(0);
        let t = Instant::now();
        for _ in 0..20_000 {
            i.handle(&r).map_err(|f| anyhow::anyhow!("{f}"))?;
        }
        println!("per-record isolation {}", per_record(20_000, t.elapsed()));
        return Ok(());
    }
    if matches!(what.as_str(), "runtime" | "all") {
        runtime_bench()?;
    }
    if matches!(what.as_str(), "swap" | "all") {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()?
            .block_on(swap_bench(20_000))?;
    }
    if matches!(what.as_str(), "pipeline" | "all") {
        let total = std::env::args()
            .nth(2)
            .map_or(Ok(30_000), |n| n.parse())
            .context("record count")?;
        let external = std::env::args().nth(3);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()?
            .block_on(pipeline_bench(total, external))?;
    }
    Ok(())
}
