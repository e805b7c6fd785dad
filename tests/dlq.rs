//! `sandpiper dlq inspect` and `replay` on the mock cluster, after a real
//! pipeline dead-lettered poison records. Every test ends in a tally.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sandpiper::app::App;
use sandpiper::config::Config;
use sandpiper::dlq::letter::H_REPLAY_COUNT;
use sandpiper::dlq::replay::{self, Options, Summary, default_group};
use sandpiper::dlq::{Destination, filter::Filter, inspect};
use sandpiper::kafka::{Outgoing, tools};
use sandpiper::pipeline::deadletter as dl;
use sandpiper::record::Record;

use crate::support::kafka::{Env, config_text, header, header_str, tally, wait_committed};

const WAIT: Duration = Duration::from_secs(90);
/// Inputs per test: every 10th record from the 3rd traps, from the 7th is rejected.
const INPUTS: usize = 40;
const POISON: usize = 8;

fn value(i: usize) -> Vec<u8> {
    match i % 10 {
        3 => b"unwrap-none".to_vec(),
        7 => b"reject".to_vec(),
        _ => format!("record {i}").into_bytes(),
    }
}

fn is_poison(value: Option<&[u8]>) -> bool {
    matches!(value, Some(b"unwrap-none" | b"reject"))
}

/// Produces the inputs and runs the `chaos` pipeline over them until every
/// record is committed. Returns the inputs and the plugin's id.
async fn dead_lettered(env: &Env) -> (Vec<Outgoing>, String) {
    let inputs = env.inputs((0..INPUTS).map(value));
    env.produce(&inputs).await;
    let plugin = run_pipeline(env, "chaos", INPUTS).await;
    (inputs, plugin)
}

/// Runs the env's pipeline with `plugin` until `committed` input records
/// are committed; returns the plugin id.
async fn run_pipeline(env: &Env, plugin: &str, committed: usize) -> String {
    let app = App::start(env.config(plugin, "")).await.expect("starts");
    let id = app.pipelines[0].plugin().id().to_string();
    wait_committed(&app, committed, WAIT).await;
    app.stop().await;
    id
}

/// A config file for the env in a temporary directory (for the binary).
fn config_file(env: &Env, dir: &tempfile::TempDir, plugin: &str) -> PathBuf {
    let text = config_text(
        &env.brokers,
        &env.group,
        [&env.input, &env.output, &env.dlq],
        plugin,
        "",
    );
    let path = dir.path().join(format!("{plugin}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

async fn sandpiper(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sandpiper"))
        .args(args)
        .env("SANDPIPER_LOG", "warn")
        .output()
        .await
        .expect("runs")
}

async fn replay(config: &Config, options: Options) -> Summary {
    replay::run(config, "test", &options)
        .await
        .expect("replay runs")
}

/// Offsets the replay group committed on the DLQ, summed (-1 counts as 0).
async fn replay_committed(env: &Env) -> i64 {
    let (brokers, dlq) = (env.brokers.clone(), env.dlq.clone());
    let committed = tokio::task::spawn_blocking(move || {
        tools::committed(&brokers, &default_group("test"), &dlq)
    })
    .await
    .expect("join")
    .expect("committed offsets");
    committed.values().map(|o| (*o).max(0)).sum()
}

fn count_keys<'a>(records: impl IntoIterator<Item = &'a Record>) -> BTreeMap<Vec<u8>, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        *counts.entry(r.key.clone().unwrap_or_default()).or_default() += 1;
    }
    counts
}

fn poison_keys(inputs: &[Outgoing]) -> Vec<Vec<u8>> {
    inputs
        .iter()
        .filter(|i| is_poison(i.value.as_deref()))
        .filter_map(|i| i.key.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inspect_counts_dead_letters_by_kind_and_plugin() {
    let env = Env::new(1, 3);
    let (inputs, plugin) = dead_lettered(&env).await;
    let outputs = env.read(&env.output).await;
    let dead = env.read(&env.dlq).await;

    let report = inspect::collect(&env.config("chaos", ""), "test", Some(3))
        .await
        .expect("inspect");
    assert_eq!(report.total, POISON as u64);
    let kinds: Vec<(&str, u64)> = report
        .by_kind
        .iter()
        .map(|(k, n)| (k.as_str(), *n))
        .collect();
    assert_eq!(kinds, vec![("rejected", 4), ("trap", 4)]);
    assert_eq!(report.by_plugin, [(plugin.clone(), 8)].into());
    // The newest three: inputs 27, 33 and 37 (timestamps are 1.7e12 + i).
    let times: Vec<Option<i64>> = report.rows.iter().map(|r| r.timestamp).collect();
    assert_eq!(
        times,
        [27, 33, 37].map(|i| Some(1_700_000_000_000 + i)).to_vec()
    );
    for row in &report.rows {
        assert_eq!(row.topic.as_deref(), Some(env.input.as_str()));
        assert_eq!(row.plugin, plugin);
        assert_eq!(row.replays, Some(0));
    }

    // Through the binary: JSON, then the table.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config_file(&env, &dir, "chaos");
    let file = file.to_str().expect("utf-8 path");
    let out = sandpiper(&[
        "dlq",
        "inspect",
        "--config",
        file,
        "--pipeline",
        "test",
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["total"], 8);
    assert_eq!(json["by_kind"]["trap"], 4);
    assert_eq!(json["by_kind"]["rejected"], 4);
    assert_eq!(json["by_plugin"][&plugin], 8);
    assert_eq!(json["rows"].as_array().map(Vec::len), Some(8));

    let out = sandpiper(&["dlq", "inspect", "-c", file, "--limit", "2"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let rows = text.lines().filter(|l| l.contains(&env.input)).count();
    assert_eq!(rows, 2, "two rows: {text}");
    assert!(text.contains("(last 2 of 8 shown)"), "{text}");
    assert!(
        text.contains("       4  trap") && text.contains("       4  rejected"),
        "{text}"
    );
    assert!(text.contains(&format!("       8  {plugin}")), "{text}");

    let t = tally(&inputs, &outputs, &dead);
    assert!(t.missing.is_empty(), "{t:?}");
    assert_eq!(
        (t.outputs, t.dead_letters, t.duplicates),
        (32, 8, 0),
        "{t:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inspect_and_replay_fail_with_exit_code_1_on_bad_targets() {
    let env = Env::new(1, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.to_str().expect("utf-8").to_owned()
    };
    let topics = [env.input.as_str(), env.output.as_str(), env.dlq.as_str()];
    let embedded = write(
        "embedded.toml",
        config_text("embedded", "g", topics, "chaos", ""),
    );
    let missing = write(
        "missing.toml",
        config_text(
            &env.brokers,
            "g",
            [&env.input, &env.output, "no-such-dlq"],
            "chaos",
            "",
        ),
    );
    let unreachable = write(
        "unreachable.toml",
        config_text("127.0.0.1:1", "g", topics, "chaos", ""),
    );
    let invalid = write("invalid.toml", "[kafka]\nbrokers = 3\n".into());
    for (file, expect) in [
        (&embedded, "embedded"),
        (&missing, "no-such-dlq"),
        (&unreachable, "127.0.0.1:1"),
        (&invalid, "invalid config"),
    ] {
        for command in ["inspect", "replay"] {
            let out = sandpiper(&["dlq", command, "--config", file]).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command} {file}: {stderr}");
            assert!(stderr.contains(expect), "{command} {file}: {stderr}");
        }
    }
    let out = sandpiper(&["dlq", "inspect", "--config", &missing, "--pipeline", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pipeline `nope`"));
    // Nothing was produced anywhere.
    let inputs: Vec<Outgoing> = Vec::new();
    let t = tally(
        &inputs,
        &env.read(&env.output).await,
        &env.read(&env.dlq).await,
    );
    assert_eq!((t.outputs, t.dead_letters), (0, 0), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_through_the_fixed_plugin_drains_the_dlq_into_the_output() {
    let env = Env::new(1, 3);
    let (inputs, _) = dead_lettered(&env).await;
    let fixed = env.config("uppercase", "");

    let summary = replay(
        &fixed,
        Options {
            to: Destination::Plugin,
            ..Options::default()
        },
    )
    .await;
    assert_eq!(
        (
            summary.read,
            summary.replayed,
            summary.failed_again,
            summary.produced
        ),
        (8, 8, 0, 8),
        "{summary}"
    );
    assert_eq!(summary.skipped_filter + summary.skipped_loop_guard, 0);

    let outputs = env.read(&env.output).await;
    let dead = env.read(&env.dlq).await;
    assert_eq!(dead.len(), POISON, "the DLQ got nothing new");
    let per_key = count_keys(&outputs);
    for key in poison_keys(&inputs) {
        assert_eq!(per_key.get(&key), Some(&1), "{key:?} replayed exactly once");
        let out = outputs
            .iter()
            .find(|r| r.key.as_ref() == Some(&key))
            .expect("replayed output");
        assert!(header_str(out, dl::H_PLUGIN).starts_with("uppercase@sha256:"));
        assert_eq!(header_str(out, H_REPLAY_COUNT), "1");
        assert!(matches!(
            out.value.as_deref(),
            Some(b"UNWRAP-NONE" | b"REJECT")
        ));
    }
    assert_eq!(replay_committed(&env).await, POISON as i64);

    let t = tally(&inputs, &outputs, &[]);
    assert!(t.missing.is_empty(), "every input is in the output: {t:?}");
    assert_eq!((t.outputs, t.duplicates), (INPUTS, 0), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_to_the_original_topic_counts_replays_until_the_loop_guard() {
    let env = Env::new(1, 3);
    let (inputs, _) = dead_lettered(&env).await;
    let config = env.config("chaos", "");
    let poison = poison_keys(&inputs);

    // First replay: back to the input, count 1, no error headers.
    let s = replay(&config, Options::default()).await;
    assert_eq!((s.read, s.replayed, s.produced), (8, 8, 8), "{s}");
    let replayed = |records: Vec<Record>, count: &str| -> Vec<Record> {
        records
            .into_iter()
            .filter(|r| header_str(r, H_REPLAY_COUNT) == count)
            .collect()
    };
    let first = replayed(env.read(&env.input).await, "1");
    assert_eq!(count_keys(&first).into_keys().collect::<Vec<_>>(), {
        let mut p = poison.clone();
        p.sort();
        p
    });
    for r in &first {
        let n: usize = header_str(r, "n").parse().expect("original header kept");
        assert_eq!(r.value, inputs[n].value);
        assert_eq!(r.timestamp, inputs[n].timestamp, "original timestamp");
        assert!(
            r.headers
                .iter()
                .all(|(k, _)| !k.starts_with("sandpiper.") || k == H_REPLAY_COUNT),
            "{:?}",
            r.headers
        );
        assert_eq!(header(r, dl::H_KIND), None);
    }

    // The pipeline dead-letters them again, keeping the count.
    run_pipeline(&env, "chaos", INPUTS + 8).await;
    let dead = env.read(&env.dlq).await;
    assert_eq!(dead.len(), 2 * POISON);
    assert_eq!(replayed(dead, "1").len(), POISON);

    // Second replay resumes after the first: only the new dead letters.
    let s = replay(&config, Options::default()).await;
    assert_eq!((s.read, s.replayed), (8, 8), "{s}");
    assert_eq!(replayed(env.read(&env.input).await, "2").len(), POISON);
    run_pipeline(&env, "chaos", INPUTS + 16).await;

    // Third: the loop guard stops them.
    let s = replay(
        &config,
        Options {
            max_replays: 2,
            ..Options::default()
        },
    )
    .await;
    assert_eq!(
        (s.read, s.replayed, s.skipped_loop_guard, s.produced),
        (8, 0, 8, 0),
        "{s}"
    );
    let input = env.read(&env.input).await;
    assert_eq!(
        input.len(),
        INPUTS + 16,
        "nothing produced by the guarded replay"
    );
    assert_eq!(
        replay_committed(&env).await,
        3 * POISON as i64,
        "guarded records are done"
    );

    let outputs = env.read(&env.output).await;
    let dead = env.read(&env.dlq).await;
    assert_eq!(dead.len(), 3 * POISON);
    let t = tally(&inputs, &outputs, &dead);
    assert!(t.missing.is_empty(), "{t:?}");
    assert_eq!(t.outputs, INPUTS - POISON, "{t:?}");
    assert_eq!(
        t.duplicates,
        2 * POISON,
        "each poison record dead-lettered 3 times: {t:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_replay_resumes_where_it_stopped() {
    let env = Env::new(1, 3);
    let (inputs, _) = dead_lettered(&env).await;
    let fixed = env.config("uppercase", "");

    let s = replay(
        &fixed,
        Options {
            to: Destination::Plugin,
            limit: Some(3),
            ..Options::default()
        },
    )
    .await;
    assert_eq!((s.read, s.replayed), (3, 3), "{s}");
    assert_eq!(replay_committed(&env).await, 3);

    // The rest through the binary.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config_file(&env, &dir, "uppercase");
    let file = file.to_str().expect("utf-8 path");
    let args = [
        "dlq", "replay", "--config", file, "--to", "plugin", "--json",
    ];
    let out = sandpiper(&args).await;
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (json["read"].as_u64(), json["replayed"].as_u64()),
        (Some(5), Some(5)),
        "{json}"
    );
    assert_eq!(replay_committed(&env).await, POISON as i64);

    // Nothing left.
    let out = sandpiper(&args).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["read"].as_u64(), Some(0), "{json}");

    let outputs = env.read(&env.output).await;
    let per_key = count_keys(&outputs);
    for key in poison_keys(&inputs) {
        assert_eq!(per_key.get(&key), Some(&1), "{key:?} replayed exactly once");
    }
    let t = tally(&inputs, &outputs, &[]);
    assert!(t.missing.is_empty(), "{t:?}");
    assert_eq!((t.outputs, t.duplicates), (INPUTS, 0), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dry_run_filters_and_counts_but_produces_and_commits_nothing() {
    let env = Env::new(1, 3);
    let (inputs, plugin) = dead_lettered(&env).await;
    let dry = |filter: Filter| Options {
        dry_run: true,
        filter,
        ..Options::default()
    };
    let config = env.config("chaos", "");

    let s = replay(&config, dry(Filter::default())).await;
    assert_eq!((s.read, s.replayed, s.produced), (8, 8, 8), "{s}");
    let s = replay(
        &config,
        dry(Filter {
            kinds: vec!["trap".into()],
            ..Filter::default()
        }),
    )
    .await;
    assert_eq!((s.replayed, s.skipped_filter), (4, 4), "{s}");
    let s = replay(
        &config,
        dry(Filter {
            plugin: Some(plugin[..plugin.len() - 4].to_owned()),
            since: Some(1_700_000_000_013),
            until: Some(1_700_000_000_033),
            ..Filter::default()
        }),
    )
    .await;
    assert_eq!(
        (s.replayed, s.skipped_filter),
        (4, 4),
        "inputs 13, 17, 23, 27: {s}"
    );
    let s = replay(
        &config,
        dry(Filter {
            plugin: Some("uppercase".into()),
            ..Filter::default()
        }),
    )
    .await;
    assert_eq!((s.replayed, s.skipped_filter), (0, 8), "{s}");
    // Through the plugin, dry: the fixed plugin would handle them all.
    let s = replay(
        &env.config("uppercase", ""),
        Options {
            to: Destination::Plugin,
            ..dry(Filter::default())
        },
    )
    .await;
    assert_eq!((s.replayed, s.failed_again), (8, 0), "{s}");
    // And the broken one would fail them all again.
    let s = replay(
        &config,
        Options {
            to: Destination::Plugin,
            ..dry(Filter::default())
        },
    )
    .await;
    assert_eq!((s.replayed, s.failed_again), (0, 8), "{s}");

    assert_eq!(replay_committed(&env).await, 0, "nothing committed");
    assert_eq!(env.read(&env.input).await.len(), INPUTS);
    let outputs = env.read(&env.output).await;
    let dead = env.read(&env.dlq).await;
    let t = tally(&inputs, &outputs, &dead);
    assert!(t.missing.is_empty(), "{t:?}");
    assert_eq!(
        (t.outputs, t.dead_letters, t.duplicates),
        (32, 8, 0),
        "nothing produced: {t:?}"
    );
}
