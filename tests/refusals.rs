//! Never stuck on one record, never silent: refusals that retrying cannot
//! heal, and background tasks that die. Every pipeline test ends in a tally
//! read to the high watermark.

use std::time::{Duration, Instant};

use sandpiper::app::App;
use sandpiper::pipeline::deadletter as dl;

use crate::support::http::{get, get_text, wait_status};
use crate::support::kafka::{Env, config_text, header_str, tally, wait_committed};
use crate::support::process::HostProcess;
use crate::support::tansu::free_port;

const WAIT: Duration = Duration::from_secs(90);

/// The issue's incident: a plugin returns an output the broker refuses
/// (`MESSAGE_TOO_LARGE`). Retrying could never succeed; the record is
/// dead-lettered as `output-refused` and the partition goes on at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_output_the_broker_refuses_dead_letters_its_record_and_the_partition_goes_on() {
    let env = Env::new(1, 1);
    // The record whose output is refused is the first the host produces
    // for: its inputs are written before the broker is told to refuse the
    // next Produce requests, and the host is started after. Five: a size
    // refusal may be a batch's, so the host sends the output alone four
    // times more before it counts as the record's.
    let first = env.inputs([b"big-output:300000".to_vec()]);
    env.produce(&first).await;
    env.cluster.refuse_next_produces(5).expect("refusal armed");
    let app = App::start(env.config_with_admin("chaos", ""))
        .await
        .expect("starts");
    let addr = app.admin.expect("admin listener");
    wait_committed(&app, 1, WAIT).await;
    let later = env.inputs_from(1, (1..60).map(|i| format!("v{i}").into_bytes()));
    env.produce(&later).await;
    wait_committed(&app, 60, WAIT).await;

    let (healthz, body) = get(addr, "/healthz").await;
    assert_eq!(healthz, 200, "a refused output costs one record: {body}");
    let ready = wait_status(addr, "/readyz", 200).await;
    assert_eq!(ready["ok"], true);
    let metrics = get_text(addr, "/metrics").await;
    assert!(
        metrics
            .contains(r#"sandpiper_records_failed_total{pipeline="test",kind="output-refused"} 1"#),
        "{metrics}"
    );
    let outputs = env.read(&env.output).await;
    let dead = env.read(&env.dlq).await;
    let committed = env.committed().await;
    app.stop().await;

    let inputs: Vec<_> = first.iter().chain(&later).cloned().collect();
    let t = tally(&inputs, &outputs, &dead);
    assert!(t.missing.is_empty(), "{t:?}");
    assert_eq!(
        (t.outputs, t.dead_letters, t.duplicates),
        (59, 1, 0),
        "{t:?}"
    );
    let letter = &dead[0];
    assert_eq!(letter.key.as_deref(), Some(&b"r0"[..]));
    assert_eq!(header_str(letter, dl::H_KIND), "output-refused");
    let message = header_str(letter, dl::H_MESSAGE);
    assert!(
        message.contains(&format!("to topic {}", env.output))
            // The value, and the `sandpiper.plugin` header.
            && message.contains("(3000")
            && message.contains(" bytes) was refused for good")
            && message.contains("MessageSizeTooLarge")
            && message.contains("0 other outputs of this record were produced"),
        "{message}"
    );
    assert_eq!(committed.get(&0), Some(&60), "committed to the end");
}

/// A broker refuses whole batches for their size: an output refused once
/// (as if batched with a too-large one) is sent alone and goes through;
/// nothing is dead-lettered for another record's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_output_refused_with_its_batch_goes_through_alone() {
    let env = Env::new(1, 1);
    let inputs = env.inputs((0..20).map(|i| format!("v{i}").into_bytes()));
    env.produce(&inputs).await;
    env.cluster.refuse_next_produces(1).expect("refusal armed");
    let app = App::start(env.config("chaos", "")).await.expect("starts");
    wait_committed(&app, inputs.len(), WAIT).await;
    let outputs = env.read(&env.output).await;
    let dead = env.read(&env.dlq).await;
    app.stop().await;
    let t = tally(&inputs, &outputs, &dead);
    assert!(t.missing.is_empty(), "{t:?}");
    assert_eq!(
        (t.outputs, t.dead_letters, t.duplicates),
        (20, 0, 0),
        "{t:?}"
    );
}

/// A dead letter its topic refuses for good (here larger than the
/// pipeline's producer takes; on a real broker, a dead-letter topic with a
/// smaller `max.message.bytes` than the input's): sent once more without
/// its diagnostic headers, then the partition stops, loudly, and the host
/// exits. After the operator's fix a restart loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_refused_for_good_stops_the_partition_loudly_and_a_fixed_restart_loses_nothing()
 {
    let env = Env::new(1, 1);
    // r5 is rejected by the plugin and, with its dead letter's headers,
    // larger than librdkafka's default message.max.bytes (1,000,000).
    let values = (0..10).map(|i| {
        if i == 5 {
            let mut v = b"reject".to_vec();
            v.resize(1_100_000, b' ');
            v
        } else {
            format!("v{i}").into_bytes()
        }
    });
    let inputs = env.inputs(values);
    env.produce(&inputs).await;
    let mut config = env.config_with_admin("chaos", "");
    config.unhealthy_exit_secs = 2;
    let app = App::start(config).await.expect("starts");
    let addr = app.admin.expect("admin listener");

    let body = wait_status(addr, "/healthz", 503).await;
    let reasons = body["reasons"].to_string();
    assert!(
        reasons.contains(&format!("partition {}/0 stopped at offset 5", env.input))
            && reasons.contains("refused for good")
            && reasons.contains("even without its diagnostic headers"),
        "{reasons}"
    );
    let metrics = get_text(addr, "/metrics").await;
    assert!(
        metrics.contains(r#"sandpiper_partitions_stopped{pipeline="test"} 1"#),
        "{metrics}"
    );
    let (_, status) = get(addr, "/status").await;
    assert!(
        status.to_string().contains("stopped at offset 5"),
        "the status page names it: {status}"
    );
    let never = tokio_util::sync::CancellationToken::new();
    let exit = tokio::time::timeout(Duration::from_secs(20), app.supervise(&never))
        .await
        .expect("supervise returned")
        .expect_err("the host must exit non-zero");
    assert!(
        format!("{exit:#}").contains("stopped at offset 5"),
        "{exit:#}"
    );
    // Nothing from the refused record on is committed.
    let committed = env.committed().await;
    assert_eq!(committed.get(&0), Some(&5), "{committed:?}");
    app.stop().await;

    // The operator lets the dead letter through (here: the producer takes
    // larger records; on a real broker also the topic's max.message.bytes).
    let mut config = env.config("chaos", "");
    config
        .kafka
        .producer_properties
        .insert("message.max.bytes".into(), "3000000".into());
    let app = App::start(config).await.expect("restarts");
    wait_committed(&app, inputs.len(), WAIT).await;
    let outputs = env.read(&env.output).await;
    let dead = env.read(&env.dlq).await;
    app.stop().await;

    let t = tally(&inputs, &outputs, &dead);
    assert!(t.missing.is_empty(), "{t:?}");
    assert_eq!(t.dead_letters, 1, "{t:?}");
    // r6..r9 may have been produced before the stop and again after it.
    assert!(t.duplicates <= 4, "{t:?}");
    assert_eq!(dead[0].key.as_deref(), Some(&b"r5"[..]));
    assert_eq!(header_str(&dead[0], dl::H_KIND), "rejected");
    assert_eq!(dead[0].value.as_ref().map(Vec::len), Some(1_100_000));
}

/// A background task (here the plugin-file watcher) that panics for real
/// fails liveness and ends the process non-zero, the reason in its log.
#[test]
fn a_background_task_that_panics_ends_the_process_non_zero_with_the_reason() {
    let env = Env::new(1, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let text = format!(
        "unhealthy_exit_secs = 1\n{}\n[admin]\nlisten = \"{admin}\"\n",
        config_text(
            &env.brokers,
            &env.group,
            [&env.input, &env.output, &env.dlq],
            "uppercase",
            "",
        )
    );
    let config = dir.path().join("sandpiper.toml");
    std::fs::write(&config, text).expect("config");
    let mut host = HostProcess::start_with_env(
        &config,
        &dir.path().join("host.log"),
        admin,
        &[(sandpiper::fault::ENV, "deploy-watch")],
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = host.exited() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the host is still running: {}",
            host.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = host.log_lines().join("\n");
    assert!(!status.success(), "exits non-zero: {status}; {log}");
    assert!(
        log.contains(
            "the plugin file watcher of pipeline test panicked: fault injected at deploy-watch"
        ),
        "{log}"
    );
    assert!(
        log.contains("Exiting so the supervisor restarts the host"),
        "{log}"
    );
}
