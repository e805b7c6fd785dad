//! `sandpiper demo`: the real pipeline on an embedded Kafka cluster.
//!
//! Creates the topics, produces sample orders including poison ones, runs
//! the example plugin, and prints what went where: outputs, dead letters
//! with their reasons, committed offsets, and a tally.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::app::App;
use crate::config::Config;
use crate::kafka::{Outgoing, tools};
use crate::pipeline::deadletter::{
    H_KIND, H_MESSAGE, H_OFFSET, H_PARTITION, H_PLUGIN, H_STDERR, H_TRAP,
};
use crate::record::Record;

/// The sample input: valid orders, orders without a customer (the example
/// plugin has a deliberate `unwrap()` there, like incident 1's nil pointer),
/// and payloads that are not JSON (the plugin rejects them).
fn samples(count: usize) -> Vec<Outgoing> {
    (0..count)
        .map(|i| {
            let value = match i % 10 {
                3 => format!(r#"{{"id": {i}, "amount": {}}}"#, 10 * i),
                7 if i % 20 == 7 => format!("order {i}: not json"),
                _ => format!(
                    r#"{{"id": {i}, "amount": {}, "customer": {{"name": "customer {}"}}}}"#,
                    10 * i,
                    i % 4
                ),
            };
            Outgoing {
                topic: "orders".into(),
                key: Some(format!("order-{i}").into_bytes()),
                value: Some(value.into_bytes()),
                headers: vec![("source".into(), b"demo".to_vec())],
                mark: None,
                timestamp: None,
            }
        })
        .collect()
}

fn header<'a>(r: &'a Record, name: &str) -> &'a str {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .unwrap_or("")
}

fn text(bytes: &Option<Vec<u8>>) -> String {
    bytes.as_deref().map_or_else(
        || "null".into(),
        |b| String::from_utf8_lossy(b).into_owned(),
    )
}

/// Runs the demo with `plugin` over `count` sample records.
pub async fn run(plugin: &Path, count: usize) -> anyhow::Result<()> {
    if !plugin.exists() {
        bail!(
            "plugin {} not found: build the plugins first (`cargo xtask demo` does it)",
            plugin.display()
        );
    }
    let config_text = format!(
        r#"
[kafka]
brokers = "embedded"
group = "sandpiper-demo"

[[pipeline]]
name = "orders"
inputs = ["orders"]
output = "orders-out"
dead_letter = "orders-dlq"
plugin = {plugin:?}
[pipeline.limits]
timeout_ms = 100
memory_mb = 32
[pipeline.retry]
max_attempts = 3
initial_backoff_ms = 50
max_backoff_ms = 1000
"#,
        plugin = plugin.display().to_string()
    );
    let config = Config::parse("demo config", &config_text)?;
    let app = App::start(config).await?;
    let brokers = app
        .embedded
        .as_ref()
        .context("the demo runs on the embedded cluster")?
        .bootstrap_servers()
        .to_owned();
    let pipeline = &app.pipelines[0];
    println!("Sandpiper demo");
    println!("  embedded Kafka at {brokers} (in memory: it keeps nothing)");
    println!("  plugin {}", pipeline.plugin().id());

    let inputs = samples(count);
    tools::produce_all(&brokers, &inputs).await?;
    println!(
        "  produced {} records to `orders` (3 partitions)\n",
        inputs.len()
    );

    // Wait until every input's offset is committed: outputs or dead letter acknowledged.
    let started = Instant::now();
    let committed = loop {
        let committed = pipeline.committed().await.unwrap_or_default();
        let total: i64 = committed.iter().map(|(_, _, o)| (*o).max(0)).sum();
        if total as usize >= inputs.len() {
            break committed;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "only {total} of {} records were committed within 60 s",
                inputs.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let (b1, b2) = (brokers.clone(), brokers.clone());
    let outputs = tokio::task::spawn_blocking(move || {
        tools::read_to_end(&b1, "orders-out", Duration::from_secs(20))
    })
    .await??;
    let dead = tokio::task::spawn_blocking(move || {
        tools::read_to_end(&b2, "orders-dlq", Duration::from_secs(20))
    })
    .await??;

    println!("Outputs in `orders-out`: {}", outputs.len());
    for r in outputs.iter().take(5) {
        println!("  {}  [{}]", text(&r.value), header(r, H_PLUGIN));
    }
    if outputs.len() > 5 {
        println!("  … and {} more", outputs.len() - 5);
    }
    println!("\nDead letters in `orders-dlq`: {}", dead.len());
    for r in &dead {
        let trap = header(r, H_TRAP);
        let trap = if trap.is_empty() {
            String::new()
        } else {
            format!(" ({trap})")
        };
        println!(
            "  orders/{}@{}  {}{trap}: {}",
            header(r, H_PARTITION),
            header(r, H_OFFSET),
            header(r, H_KIND),
            header(r, H_MESSAGE)
        );
        println!("      value: {}", text(&r.value));
        // A Rust panic prints where, then why, on the next line.
        let stderr: Vec<&str> = header(r, H_STDERR).lines().collect();
        if let Some(at) = stderr.iter().position(|l| l.contains("panicked")) {
            println!(
                "      stderr: {}",
                stderr[at..]
                    .iter()
                    .take(2)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
    println!("\nCommitted offsets:");
    for (topic, partition, offset) in &committed {
        println!("  {topic}/{partition} = {offset}");
    }

    // The tally: every input is an output or a dead letter.
    let key_set = |rs: &[Record]| {
        rs.iter()
            .filter_map(|r| r.key.clone())
            .collect::<std::collections::HashSet<_>>()
    };
    let (out_keys, dead_keys) = (key_set(&outputs), key_set(&dead));
    let missing: Vec<String> = inputs
        .iter()
        .filter_map(|i| i.key.clone())
        .filter(|k| !out_keys.contains(k) && !dead_keys.contains(k))
        .map(|k| String::from_utf8_lossy(&k).into_owned())
        .collect();
    println!(
        "\nTally: {} inputs = {} outputs + {} dead letters; missing: {}",
        inputs.len(),
        outputs.len(),
        dead.len(),
        missing.len()
    );
    app.stop().await;
    if !missing.is_empty() {
        bail!("records missing: {}", missing.join(", "));
    }
    Ok(())
}
