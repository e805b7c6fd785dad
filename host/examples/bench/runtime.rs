//! The runtime's own figures, without Kafka (`bench runtime`,
//! `bench per-record`), and the pause of a hot swap (`bench swap`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sandpiper::app::App;
use sandpiper::config::Config;
use sandpiper::kafka::embedded::EmbeddedCluster;
use sandpiper::kafka::{Outgoing, tools};
use sandpiper::record::Record;
use sandpiper::runtime::{EngineSettings, Instance, Isolation, Plugin, PluginSettings, Runtime};
use tokio_util::sync::CancellationToken;

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

pub fn runtime_bench() -> anyhow::Result<()> {
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
    let sometimes = runtime.load_file(&plugin("sometimes_trap"), PluginSettings::default())?;
    let mut records: Vec<Record> = (0..1024).map(record).collect();
    // The pipeline's "1% traps": one record in 100 traps in `sometimes-trap`.
    let mut one_in_100 = records.clone();
    for r in one_in_100.iter_mut().skip(50).step_by(100) {
        r.value = Some(b"TRAP".to_vec());
    }

    for round in 1..=3 {
        let mut i = Instance::new(reuse.clone());
        i.warm().map_err(|f| anyhow::anyhow!("{f}"))?;
        let n = 200_000u64;
        let t = Instant::now();
        for k in 0..n {
            i.handle(&records[(k % 1024) as usize])
                .map_err(|f| anyhow::anyhow!("{f}"))?;
        }
        let reuse_t = t.elapsed();
        let batch_t = batched(&reuse, &mut records, n)?;

        let mut i = Instance::new(fresh.clone());
        let m = 20_000u64;
        let t = Instant::now();
        for k in 0..m {
            i.handle(&records[(k % 1024) as usize])
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
        // `SANDPIPER_BENCH_TRAPS=N`: more pairs, for profiling a trap.
        let pairs: u64 = std::env::var("SANDPIPER_BENCH_TRAPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000);
        let t = Instant::now();
        for k in 0..pairs {
            let _ = i.handle(&poison);
            i.handle(&records[(k % 1024) as usize])
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
        let mut blanks = vec![blank; 1024];
        let empty_batch_t = batched(&empty, &mut blanks, n)?;
        let normal = reuse_t.as_secs_f64() / n as f64;
        let trap_cost = trap_t.as_secs_f64() / pairs as f64 - normal;
        // A trap in the middle of a batch, as the pipeline meets it: the
        // rest of the batch goes on to a fresh instance.
        let clean_t = batched(&sometimes, &mut records, n)?;
        let (traps_t, trapped) = batched_counting(&sometimes, &mut one_in_100, n)?;
        let batch_trap_cost =
            (traps_t.as_secs_f64() - clean_t.as_secs_f64()) / trapped.max(1) as f64;
        println!(
            "round {round}: empty record (fixed cost) {}, in batches {} | uppercase 100 B: reuse {} per record, in batches {} | per-record isolation {} per record | trap + re-instantiation {:.2} µs, in batches {:.2} µs",
            per_record(n, empty_t),
            per_record(n, empty_batch_t),
            per_record(n, reuse_t),
            per_record(n, batch_t),
            per_record(m, fresh_t),
            trap_cost * 1e6,
            batch_trap_cost * 1e6
        );
    }
    Ok(())
}

/// `n` records from `records` through `plugin` in `handle-batch` calls of
/// up to 256 (as the pipeline's plugin threads make them), on one instance
/// (replaced after each trap). Only records whose value starts with `TRAP`
/// may fail.
fn batched(plugin: &Arc<Plugin>, records: &mut [Record], n: u64) -> anyhow::Result<Duration> {
    batched_counting(plugin, records, n).map(|(elapsed, _)| elapsed)
}

/// [`batched`], also counting the records that trapped.
fn batched_counting(
    plugin: &Arc<Plugin>,
    records: &mut [Record],
    n: u64,
) -> anyhow::Result<(Duration, u64)> {
    let mut i = Instance::new(plugin.clone());
    i.warm().map_err(|f| anyhow::anyhow!("{f}"))?;
    let cancel = CancellationToken::new();
    let mut outcomes = Vec::with_capacity(256);
    let (mut done, mut trapped) = (0, 0);
    let t = Instant::now();
    // A time budget no call reaches.
    let until = t + Duration::from_secs(3600);
    while done < n {
        let from = (done % records.len() as u64) as usize;
        let to = (from + 256).min(records.len());
        i.handle_batch(&mut records[from..to], &cancel, until, &mut outcomes);
        for ((outcome, _), record) in outcomes.drain(..).zip(&records[from..]) {
            match outcome {
                Err(f)
                    if !record
                        .value
                        .as_deref()
                        .is_some_and(|v| v.starts_with(b"TRAP")) =>
                {
                    anyhow::bail!("{f}")
                }
                Err(_) => trapped += 1,
                Ok(_) => {}
            }
            done += 1;
        }
    }
    Ok((t.elapsed(), trapped))
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
            mark: None,
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
        tools::read_to_end(&b, "swap-out", Duration::from_secs(60))
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

/// For profilers: only `passthrough` on 100-byte records in batches, as
/// the pipeline's plugin threads run it (`SANDPIPER_BENCH_RECORDS`, default
/// 2,000,000).
pub fn batched_bench() -> anyhow::Result<()> {
    let runtime = Runtime::new(EngineSettings::default())?;
    let plugin = runtime.load_file(&plugin("passthrough"), PluginSettings::default())?;
    let mut records: Vec<Record> = (0..1024).map(record).collect();
    let n: u64 = std::env::var("SANDPIPER_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let t = batched(&plugin, &mut records, n)?;
    println!("passthrough 100 B in batches {}", per_record(n, t));
    Ok(())
}

/// For profilers: only the per-record isolation loop.
pub fn per_record_bench() -> anyhow::Result<()> {
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
    // `SANDPIPER_BENCH_RECORDS=N`: a longer loop, for a profile.
    let n: u64 = std::env::var("SANDPIPER_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // One record first, outside the figure (the other loops warm theirs).
    i.handle(&r).map_err(|f| anyhow::anyhow!("{f}"))?;
    let t = Instant::now();
    for _ in 0..n {
        i.handle(&r).map_err(|f| anyhow::anyhow!("{f}"))?;
    }
    println!("per-record isolation {}", per_record(n, t.elapsed()));
    Ok(())
}

pub fn swap() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?
        .block_on(swap_bench(20_000))
}
