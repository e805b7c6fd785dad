//! Hot-swapping plugins: API, CLI, file watch, canary, rollback, fleet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandpiper::app::App;
use sandpiper::config::{AdminConfig, CanaryConfig, Config, TopicName};
use sandpiper::pipeline::deadletter as dl;

use crate::support::http::{get, request};
use crate::support::kafka::{Env, header_str, tally, wait_committed};
use crate::support::plugin;

const TOKEN: &str = "s3cret-token";
const WAIT: Duration = Duration::from_secs(90);

/// A config for `env` running a private copy of `plugin_name` (so file
/// watching sees only this test's changes), with an admin listener.
fn config(env: &Env, dir: &Path, plugin_name: &str, extra: &str) -> Config {
    let mut config = env.config(plugin_name, extra);
    let copy = dir.join("plugin.wasm");
    std::fs::copy(plugin(plugin_name), &copy).expect("copy plugin");
    config.pipelines[0].plugin = copy;
    config.deploy.watch_interval_ms = 100;
    config.admin = Some(AdminConfig {
        listen: "127.0.0.1:0".into(),
        token: Some(TOKEN.into()),
    });
    config
}

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(plugin(name)).expect("plugin bytes")
}

async fn current(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/pipelines").await;
    assert_eq!(status, 200, "{body}");
    body["pipelines"][0]["plugin"]
        .as_str()
        .expect("plugin")
        .to_owned()
}

async fn wait_current(addr: SocketAddr, prefix: &str) {
    let started = Instant::now();
    loop {
        let plugin = current(addr).await;
        if plugin.starts_with(prefix) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still {plugin}, expected {prefix}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A host running `config(env, dir, plugin_name, extra)`: the host, its
/// admin address and the version it started with.
async fn start(env: &Env, dir: &Path, plugin_name: &str, extra: &str) -> (App, SocketAddr, String) {
    let app = App::start(config(env, dir, plugin_name, extra))
        .await
        .expect("starts");
    let addr = app.admin.expect("admin");
    let v1 = current(addr).await;
    (app, addr, v1)
}

/// Deploys the plugin `name` to pipeline `test` through the API, with the
/// token: the answer's status and body.
async fn deploy(addr: SocketAddr, name: &str) -> (u16, serde_json::Value) {
    let path = format!("/pipelines/test/plugin?name={name}");
    request(addr, "PUT", &path, Some(TOKEN), &bytes(name)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swap_under_load_loses_nothing_and_never_goes_back() {
    let env = Env::new(1, 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, addr, v1) = start(&env, dir.path(), "chaos", "").await;

    // A steady stream of records while the swap happens.
    let inputs = env.inputs((0..3000).map(|i| format!("record {i}").into_bytes()));
    let producing = {
        let (brokers, inputs) = (env.brokers.clone(), inputs.clone());
        tokio::spawn(async move {
            for chunk in inputs.chunks(100) {
                sandpiper::kafka::tools::produce_all(&brokers, chunk)
                    .await
                    .expect("produce");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Swap once v1 has handled some of them.
    let started = Instant::now();
    while app.pipelines[0]
        .counters()
        .consumed
        .load(std::sync::atomic::Ordering::Relaxed)
        < 300
    {
        assert!(started.elapsed() < WAIT, "nothing consumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = deploy(addr, "uppercase").await;
    assert_eq!(status, 200, "{body}");
    let v2 = body["plugin"].as_str().expect("plugin").to_owned();
    assert_eq!(body["previous"], v1.as_str());
    assert!(v2.starts_with("uppercase@sha256:"));
    producing.await.expect("producer task");
    wait_committed(&app, inputs.len(), WAIT).await;
    let (_, listing) = get(addr, "/pipelines").await;
    app.stop().await;

    let outputs = env.read(&env.output).await;
    let t = tally(&inputs, &outputs, &[]);
    assert!(t.missing.is_empty(), "{t:?}");
    // Per partition, in offset order of the inputs: v1... then v2..., never back.
    let input_records = env.read(&env.input).await;
    let position: HashMap<_, _> = input_records
        .iter()
        .map(|r| (r.key.clone(), (r.partition, r.offset)))
        .collect();
    let mut by_partition: HashMap<i32, Vec<(i64, String)>> = HashMap::new();
    for o in &outputs {
        let version = header_str(o, dl::H_PLUGIN).to_owned();
        assert!(
            version == v1 || version == v2,
            "handled by neither version: {version}"
        );
        let (p, off) = position[&o.key];
        by_partition.entry(p).or_default().push((off, version));
    }
    let (mut saw_v1, mut saw_v2) = (0, 0);
    for (p, mut handled) in by_partition {
        handled.sort();
        let first_v2 = handled
            .iter()
            .position(|(_, v)| *v == v2)
            .unwrap_or(handled.len());
        assert!(
            handled[first_v2..].iter().all(|(_, v)| *v == v2),
            "partition {p} went back to v1 after v2"
        );
        saw_v1 += first_v2;
        saw_v2 += handled.len() - first_v2;
    }
    assert!(
        saw_v1 > 0 && saw_v2 > 0,
        "the swap happened mid-stream: v1 {saw_v1}, v2 {saw_v2}"
    );
    let history = listing["pipelines"][0]["history"]
        .as_array()
        .expect("history")
        .len();
    assert_eq!(history, 2, "{listing}");
    assert_eq!(listing["pipelines"][0]["plugin"], v2.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_uploads_and_bad_tokens_are_refused_and_the_old_version_keeps_running() {
    let env = Env::new(1, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, addr, v1) = start(&env, dir.path(), "chaos", "").await;

    let (status, body) = request(
        addr,
        "PUT",
        "/pipelines/test/plugin",
        Some(TOKEN),
        b"not wasm at all",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("not WebAssembly"),
        "{body}"
    );
    let (status, body) = request(
        addr,
        "PUT",
        "/pipelines/test/plugin",
        Some(TOKEN),
        &bytes("not-a-plugin"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("does not implement"),
        "{body}"
    );
    let (status, _) = request(
        addr,
        "PUT",
        "/pipelines/test/plugin",
        None,
        &bytes("uppercase"),
    )
    .await;
    assert_eq!(status, 401, "no token");
    let (status, _) = request(
        addr,
        "PUT",
        "/pipelines/test/plugin",
        Some("wrong"),
        &bytes("uppercase"),
    )
    .await;
    assert_eq!(status, 401, "wrong token");
    let (status, _) = request(addr, "POST", "/pipelines/test/rollback", None, b"").await;
    assert_eq!(status, 401);
    let (status, _) = request(
        addr,
        "PUT",
        "/pipelines/nope/plugin",
        Some(TOKEN),
        &bytes("uppercase"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = request(addr, "POST", "/pipelines/test/rollback", Some(TOKEN), b"").await;
    assert_eq!(status, 409, "nothing to roll back to: {body}");
    assert_eq!(current(addr).await, v1, "still the first version");
    let metrics = crate::support::http::get_text(addr, "/metrics").await;
    assert!(
        metrics.contains("sandpiper_plugin_deploys_total{pipeline=\"test\",result=\"refused\"} 2"),
        "a refused deploy is counted: {metrics}"
    );
    let (_, listing) = get(addr, "/pipelines").await;
    assert_eq!(listing["pipelines"][0]["deploys_refused"], 2);

    // It still works: records flow on v1.
    let inputs = env.inputs((0..20).map(|i| format!("r{i}").into_bytes()));
    env.produce(&inputs).await;
    wait_committed(&app, inputs.len(), WAIT).await;
    app.stop().await;
    let outputs = env.read(&env.output).await;
    assert!(tally(&inputs, &outputs, &[]).missing.is_empty());
    assert!(outputs.iter().all(|o| header_str(o, dl::H_PLUGIN) == v1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_refuses_the_swap() {
    let env = Env::new(1, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let canary = dir.path().join("canary.jsonl");
    // `panic` must trap (any version may), `hello` must succeed.
    std::fs::write(
        &canary,
        "{\"value\":\"hello\"}\n{\"value\":\"panic\",\"expect\":\"trap\"}\n",
    )
    .expect("write");
    let mut config = config(&env, dir.path(), "uppercase", "");
    config.pipelines[0].canary = Some(CanaryConfig {
        file: canary.clone(),
    });
    let app = App::start(config).await.expect("starts");
    let addr = app.admin.expect("admin");
    let v1 = current(addr).await;

    // uppercase does not trap on `panic`: refused.
    let (status, body) = deploy(addr, "passthrough").await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"].as_str().unwrap_or("");
    assert!(
        message.contains("canary") && message.contains("expected trap, got ok"),
        "{message}"
    );
    assert_eq!(current(addr).await, v1);
    // chaos traps on `panic` and echoes `hello`: accepted.
    let (status, body) = deploy(addr, "chaos").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["canary_records"], 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_returns_to_the_previous_version() {
    let env = Env::new(1, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, addr, v1) = start(&env, dir.path(), "chaos", "").await;
    let (status, _) = deploy(addr, "uppercase").await;
    assert_eq!(status, 200);
    let (status, body) = request(addr, "POST", "/pipelines/test/rollback", Some(TOKEN), b"").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plugin"], v1.as_str());
    assert_eq!(current(addr).await, v1);
    let inputs = env.inputs((0..10).map(|i| format!("r{i}").into_bytes()));
    env.produce(&inputs).await;
    wait_committed(&app, inputs.len(), WAIT).await;
    app.stop().await;
    let outputs = env.read(&env.output).await;
    assert!(tally(&inputs, &outputs, &[]).missing.is_empty());
    assert!(
        outputs.iter().all(|o| header_str(o, dl::H_PLUGIN) == v1),
        "records after the rollback ran on v1"
    );
}

/// Replaces `path` atomically (write a temporary file, then rename).
fn replace_atomically(path: &Path, bytes: &[u8]) {
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_plugin_file_is_deployed_and_a_half_written_one_is_not() {
    let env = Env::new(1, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(&env, dir.path(), "chaos", "");
    let path = config.pipelines[0].plugin.clone();
    let app = App::start(config).await.expect("starts");
    let addr = app.admin.expect("admin");
    assert!(
        current(addr).await.starts_with("plugin@"),
        "named after the file"
    );

    let v1 = current(addr).await;
    replace_atomically(&path, &bytes("uppercase"));
    let started = Instant::now();
    while current(addr).await == v1 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the new file was not deployed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v2 = current(addr).await;
    let uppercase_digest =
        sandpiper::runtime::PluginId::new("x", &bytes("uppercase")).short_digest();
    assert!(v2.ends_with(&uppercase_digest), "{v2}");

    // A half-written file (truncated in place) is refused; v2 stays.
    let full = bytes("passthrough");
    std::fs::write(&path, &full[..full.len() / 3]).expect("write half");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        current(addr).await,
        v2,
        "a truncated file must never be loaded"
    );
    // Finishing the write deploys it.
    std::fs::write(&path, &full).expect("write whole");
    let digest = sandpiper::runtime::PluginId::new("x", &full).short_digest();
    let started = Instant::now();
    while !current(addr).await.ends_with(&digest) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the finished file was not deployed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_deploys_and_rolls_back() {
    let env = Env::new(1, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, addr, v1) = start(&env, dir.path(), "chaos", "").await;
    let admin = format!("http://{addr}");
    let run = |args: Vec<String>, token: &str| {
        let token = token.to_owned();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_sandpiper"))
                .args(args)
                .env("SANDPIPER_ADMIN_TOKEN", token)
                .output()
                .expect("runs")
        })
    };
    let deploy = |token: &str| {
        run(
            vec![
                "plugin".into(),
                "deploy".into(),
                "--admin".into(),
                admin.clone(),
                "--pipeline".into(),
                "test".into(),
                plugin("uppercase").display().to_string(),
            ],
            token,
        )
    };
    let out = deploy("wrong").await.expect("join");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    let out = deploy(TOKEN).await.expect("join");
    assert!(out.status.success(), "{out:?}");
    assert!(current(addr).await.starts_with("uppercase@"));
    let out = run(
        vec![
            "plugin".into(),
            "rollback".into(),
            "--admin".into(),
            admin.clone(),
            "--pipeline".into(),
            "test".into(),
        ],
        TOKEN,
    )
    .await
    .expect("join");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(current(addr).await, v1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_that_fails_too_often_is_rolled_back_automatically() {
    let env = Env::new(1, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "[pipeline.auto_rollback]\nrecords = 20\nmax_failure_rate = 0.5";
    let (app, addr, v1) = start(&env, dir.path(), "uppercase", extra).await;
    // chaos traps on every `unwrap-none`; uppercase handles them fine.
    let (status, _) = deploy(addr, "chaos").await;
    assert_eq!(status, 200);
    // 200 traps, then (once rolled back) 20 records for the old version:
    // the rollback may land after every trap is handled when the machine
    // is busy, so the outputs come from records produced after it.
    let inputs = env.inputs((0..220).map(|i| {
        if i < 200 {
            b"unwrap-none".to_vec()
        } else {
            b"after".to_vec()
        }
    }));
    env.produce(&inputs[..200]).await;
    wait_current(addr, &v1).await;
    env.produce(&inputs[200..]).await;
    wait_committed(&app, inputs.len(), WAIT).await;
    app.stop().await;
    let outputs = env.read(&env.output).await;
    let dead = env.read(&env.dlq).await;
    let t = tally(&inputs, &outputs, &dead);
    assert!(t.missing.is_empty(), "{t:?}");
    assert!(t.dead_letters >= 20 && t.outputs > 0, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_in_one_group_both_switch_through_the_control_topic() {
    let env = Env::new(1, 2);
    let control = format!("{}-control", env.group);
    env.cluster
        .create_topic(&control, 1, 1)
        .expect("control topic");
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    let mut config_a = config(&env, dir_a.path(), "chaos", "");
    let mut config_b = config(&env, dir_b.path(), "chaos", "");
    config_a.deploy.control_topic = Some(TopicName(control.clone()));
    config_b.deploy.control_topic = Some(TopicName(control.clone()));
    let a = App::start(config_a).await.expect("a starts");
    let b = App::start(config_b).await.expect("b starts");
    let (addr_a, addr_b) = (a.admin.expect("admin a"), b.admin.expect("admin b"));

    let (status, body) = deploy(addr_a, "uppercase").await;
    assert_eq!(status, 200, "{body}");
    let v2 = body["plugin"].as_str().expect("plugin").to_owned();
    wait_current(addr_b, "uppercase@").await;
    assert_eq!(
        current(addr_b).await,
        v2,
        "host b runs the version deployed on host a"
    );

    let inputs = env.inputs((0..100).map(|i| format!("r{i}").into_bytes()));
    env.produce(&inputs).await;
    let started = Instant::now();
    loop {
        let committed: i64 = env.committed().await.values().map(|o| (*o).max(0)).sum();
        if committed as usize >= inputs.len() {
            break;
        }
        assert!(started.elapsed() < WAIT, "committed {committed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.stop().await;
    b.stop().await;
    let outputs = env.read(&env.output).await;
    assert!(tally(&inputs, &outputs, &[]).missing.is_empty());
    assert!(
        outputs.iter().all(|o| header_str(o, dl::H_PLUGIN) == v2),
        "both hosts ran v2"
    );
}
