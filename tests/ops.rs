//! Operating the host: metrics, the preflight check, the status page.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sandpiper::app::App;

use crate::support::http::{get, get_text};
use crate::support::kafka::{Env, tally, wait_committed};
use crate::support::plugin;

/// Sum of a metric's samples whose line contains every `filter`.
fn metric(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_match_a_known_run() {
    let env = Env::new(1, 2);
    let values: Vec<Vec<u8>> = (0..100)
        .map(|i| match i % 25 {
            3 => b"unwrap-none".to_vec(),
            7 if i < 75 => b"reject".to_vec(),
            _ => format!("v{i}").into_bytes(),
        })
        .collect();
    let inputs = env.inputs(values);
    env.produce(&inputs).await;
    let config = env.config_with_admin("chaos", "");
    let app = App::start(config).await.expect("starts");
    let addr = app.admin.expect("admin");
    wait_committed(&app, inputs.len(), Duration::from_secs(90)).await;
    let plugin_id = app.pipelines[0].plugin().id().to_string();
    let response = get_text(addr, "/metrics").await;
    app.stop().await;
    let outputs = env.read(&env.output).await;
    let dead = env.read(&env.dlq).await;
    let t = tally(&inputs, &outputs, &dead);
    assert!(t.missing.is_empty(), "{t:?}");
    assert_eq!((t.outputs, t.dead_letters), (93, 7), "4 traps + 3 rejects");

    let m = |name: &str, filters: &[&str]| metric(&response, name, filters);
    let p = "pipeline=\"test\"";
    assert_eq!(
        m("sandpiper_records_consumed_total", &[p]),
        100.0,
        "{response}"
    );
    assert_eq!(m("sandpiper_records_succeeded_total", &[p]), 93.0);
    assert_eq!(m("sandpiper_records_dead_lettered_total", &[p]), 7.0);
    assert_eq!(
        m("sandpiper_records_failed_total", &[p, "kind=\"trap\""]),
        4.0
    );
    assert_eq!(
        m("sandpiper_records_failed_total", &[p, "kind=\"rejected\""]),
        3.0
    );
    assert_eq!(
        m("sandpiper_records_failed_total", &[p, "kind=\"timeout\""]),
        0.0
    );
    assert_eq!(m("sandpiper_outputs_produced_total", &[p]), 93.0);
    assert_eq!(m("sandpiper_plugin_call_seconds_count", &[p]), 100.0);
    let instantiations = m("sandpiper_instance_instantiations_total", &[p]);
    assert!(
        (5.0..=6.0).contains(&instantiations),
        "one per worker used plus one per trap: {instantiations}"
    );
    assert_eq!(
        m(
            "sandpiper_plugin_info",
            &[p, &format!("plugin=\"{plugin_id}\"")]
        ),
        1.0
    );
    assert_eq!(
        m("sandpiper_records_consumed_total", &[p, "partition=\"0\""])
            + m("sandpiper_records_consumed_total", &[p, "partition=\"1\""]),
        100.0,
        "per partition"
    );
    assert!(m("sandpiper_process_resident_memory_bytes", &[]) > 1e6);
    assert!(m("sandpiper_process_threads", &[]) > 1.0);
}

fn write_config(dir: &Path, brokers: &str, input: &str, output: &str, dlq: &str) -> PathBuf {
    let path = dir.join("sandpiper.toml");
    let text = format!(
        "[kafka]\nbrokers = \"{brokers}\"\ngroup = \"check\"\n\n[[pipeline]]\nname = \"p\"\ninputs = [\"{input}\"]\noutput = \"{output}\"\ndead_letter = \"{dlq}\"\nplugin = \"{}\"\n",
        plugin("uppercase").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn check(config: &Path, extra: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandpiper"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .args(extra)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_flags_replication_factor_one_and_a_missing_dead_letter_topic() {
    let cluster = sandpiper::kafka::embedded::EmbeddedCluster::start(3).expect("cluster");
    cluster.create_topic("in-rf1", 2, 1).expect("topic");
    cluster.create_topic("out-rf3", 2, 3).expect("topic");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        cluster.bootstrap_servers(),
        "in-rf1",
        "out-rf3",
        "dlq-missing",
    );

    let (code, out) = tokio::task::spawn_blocking({
        let c = config.clone();
        move || check(&c, &[])
    })
    .await
    .expect("join");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("input topic in-rf1 has replication factor 1"),
        "{out}"
    );
    assert!(
        out.contains("dead-letter topic dlq-missing does not exist"),
        "{out}"
    );
    assert!(out.contains("never rely on auto-creation"), "{out}");
    assert!(
        out.contains("plugin uppercase@sha256:") && out.contains("implements the world"),
        "{out}"
    );

    drop(cluster);

    // Creating the missing topic, on a real broker (Tansu: one broker, so
    // replication factor 1 is all it can do and stays a warning).
    let broker = crate::support::tansu::Broker::start();
    broker.create_topic("in", 2);
    broker.create_topic("out", 2);
    let config = write_config(dir.path(), &broker.brokers(), "in", "out", "dlq");
    let (code, out) = tokio::task::spawn_blocking({
        let c = config.clone();
        move || {
            check(
                &c,
                &[
                    "--create-topics",
                    "--partitions",
                    "2",
                    "--replication-factor",
                    "1",
                ],
            )
        }
    })
    .await
    .expect("join");
    assert!(
        out.contains("topic dlq: created with 2 partitions, replication factor 1"),
        "{out}"
    );
    assert_eq!(code, 0, "only warnings are left: {out}");
    let (code, out) = tokio::task::spawn_blocking(move || check(&config, &["--strict"]))
        .await
        .expect("join");
    assert_eq!(code, 1, "--strict fails on the replication warnings: {out}");
    assert!(!out.contains("ERROR"), "the topic exists now: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_fails_the_check_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[kafka]\nbrokers = \"x:1\"\ngroup = \"g\"\nretries = 3\n",
    )
    .expect("write");
    let (code, out) = check(&path, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("retries") && out.contains("line 4"), "{out}");
}

/// Where the status-page screenshot of a test run is kept.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("SANDPIPER_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "no Chromium at {}: `cargo xtask test` installs Debian's chromium",
        path.display()
    );
    path
}

fn headless(url: &str, profile: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=6000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_shows_pipelines_in_a_real_browser() {
    let env = Env::new(1, 2);
    let values: Vec<Vec<u8>> = (0..200)
        .map(|i| {
            if i % 20 == 0 {
                b"unwrap-none".to_vec()
            } else {
                format!("v{i}").into_bytes()
            }
        })
        .collect();
    let inputs = env.inputs(values);
    env.produce(&inputs).await;
    let config = env.config_with_admin("chaos", "");
    let app = App::start(config).await.expect("starts");
    let addr = app.admin.expect("admin");
    wait_committed(&app, inputs.len(), Duration::from_secs(90)).await;
    let plugin_id = app.pipelines[0].plugin().id().to_string();
    let (status, json) = get(addr, "/status").await;
    assert_eq!(status, 200);
    assert_eq!(json["pipelines"][0]["consumed"], 200, "{json}");
    assert_eq!(json["pipelines"][0]["failed"]["trap"], 10, "{json}");

    let url = format!("http://{addr}/");
    let profile = tempfile::tempdir().expect("profile");
    let screenshot = artifacts().join("status-page.png");
    let (dom, shot) = tokio::task::spawn_blocking({
        let (url, profile, screenshot) = (
            url.clone(),
            profile.path().to_path_buf(),
            screenshot.clone(),
        );
        move || {
            let dom = headless(&url, &profile, &["--dump-dom"]);
            let shot = headless(
                &url,
                &profile,
                &[
                    "--window-size=1200,800",
                    &format!("--screenshot={}", screenshot.display()),
                ],
            );
            (dom, shot)
        }
    })
    .await
    .expect("join");
    app.stop().await;
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("<h2>test</h2>"),
        "the pipeline is listed: {dom}"
    );
    assert!(dom.contains(&plugin_id), "its plugin version: {dom}");
    assert!(
        dom.contains("dead-lettered") && dom.contains("trap"),
        "failures by kind: {dom}"
    );
    assert!(shot.status.success(), "{shot:?}");
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    eprintln!("status page screenshot: {}", screenshot.display());
}
