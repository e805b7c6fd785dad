//! The pipeline on librdkafka's mock cluster. Every test ends in a tally:
//! each input is found in the output or the dead-letter topic.

use std::time::Duration;

use sandpiper::app::App;
use sandpiper::kafka::Outgoing;
use sandpiper::pipeline::deadletter as dl;
use sandpiper::record::Record;

use crate::support::kafka::{Env, header, header_str, tally, wait_committed};
use crate::support::{kafka_clients, rss_bytes, thread_count};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_records_are_dead_lettered_with_exact_counts_and_bytes() {
    let env = Env::new(1, 3);
    let mut values: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            if i % 100 == 42 {
                b"unwrap-none".to_vec()
            } else {
                format!("record {i}").into_bytes()
            }
        })
        .collect();
    // A 900 KB value: its echo breaks the 500 KB output cap, so it is
    // dead-lettered and must arrive byte for byte.
    let big: Vec<u8> = (0..900_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    values.push(big.clone());
    values.push(b"reject".to_vec());
    let mut inputs = env.inputs(values);
    // Binary key and non-UTF-8 header values on a rejected record.
    let special = inputs.len() - 1;
    inputs[special].key = Some(vec![0, 159, 255, 10]);
    inputs[special]
        .headers
        .push(("bin".into(), vec![0xff, 0x00, 0xc3]));
    // A null value is echoed as a null value.
    inputs[0].value = None;
    env.produce(&inputs).await;

    let app = App::start(env.config("chaos", "[pipeline.limits]\nmax_output_bytes = 500000"))
        .await
        .expect("starts");
    let plugin_id = app.pipelines[0].plugin().id().to_string();
    wait_committed(&app, inputs.len(), WAIT).await;
    let outputs = env.read(&env.output).await;
    let dead = env.read(&env.dlq).await;
    app.stop().await;

    let t = tally(&inputs, &outputs, &dead);
    assert!(t.missing.is_empty(), "missing: {:?}", t.missing);
    assert_eq!(
        (t.outputs, t.dead_letters, t.duplicates),
        (990, 12, 0),
        "{t:?}"
    );

    let null = outputs
        .iter()
        .find(|r| r.key.as_deref() == Some(b"r0"))
        .expect("r0");
    assert_eq!(null.value, None, "a null value stays null");
    assert_eq!(
        header_str(null, dl::H_PLUGIN),
        plugin_id,
        "outputs say which plugin made them"
    );
    assert!(
        plugin_id.starts_with("chaos@sha256:") && plugin_id.len() == "chaos@sha256:".len() + 12
    );

    for d in &dead {
        let kind = header_str(d, dl::H_KIND);
        let offset: i64 = header_str(d, dl::H_OFFSET).parse().expect("offset header");
        let partition: i32 = header_str(d, dl::H_PARTITION)
            .parse()
            .expect("partition header");
        assert!(offset >= 0 && (0..3).contains(&partition));
        assert_eq!(header_str(d, dl::H_TOPIC), env.input);
        assert_eq!(header_str(d, dl::H_GROUP), env.group);
        assert_eq!(header_str(d, dl::H_PIPELINE), "test");
        assert_eq!(header_str(d, dl::H_PLUGIN), plugin_id);
        assert_eq!(header_str(d, dl::H_ATTEMPTS), "1");
        assert!(!header_str(d, dl::H_MESSAGE).is_empty());
        let n: usize = header_str(d, "n").parse().expect("original header kept");
        let original = &inputs[n];
        assert_eq!(d.key, original.key, "key kept");
        assert_eq!(d.value, original.value, "value kept byte for byte");
        assert_eq!(d.timestamp, original.timestamp, "timestamp kept");
        assert_eq!(
            header_str(d, dl::H_TIMESTAMP),
            original.timestamp.expect("ts").to_string()
        );
        match original.value.as_deref() {
            Some(b"unwrap-none") => {
                assert_eq!(kind, "trap");
                assert_eq!(header_str(d, dl::H_TRAP), "panic");
                assert!(
                    header_str(d, dl::H_MESSAGE).starts_with("panicked at ")
                        && header_str(d, dl::H_MESSAGE).contains("None"),
                    "the panic's report is the message"
                );
                assert!(
                    header_str(d, dl::H_STDERR).contains("None"),
                    "panic message in stderr"
                );
                assert!(!header_str(d, dl::H_BACKTRACE).is_empty());
            }
            Some(b"reject") => {
                assert_eq!(kind, "rejected");
                assert_eq!(
                    header(d, "bin"),
                    Some(&[0xff, 0x00, 0xc3][..]),
                    "non-UTF-8 header value kept"
                );
                assert_eq!(d.key.as_deref(), Some(&[0, 159, 255, 10][..]));
            }
            Some(v) if v == big.as_slice() => assert_eq!(kind, "output-limit"),
            other => panic!("unexpected dead letter {other:?}"),
        }
    }
}

/// Budgets far below a batch: three records and one MiB of outputs per
/// partition awaiting acknowledgement. Batches shrink to three records,
/// and a batch larger than the byte budget (three consecutive 400 KB
/// records) still goes, alone. One partition, so they are consecutive;
/// 60 records, so it stays within the mock cluster's retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tight_unacknowledged_budgets_still_finish_every_record() {
    let env = Env::new(1, 1);
    let values = (0..60).map(|i| match (i % 20, i % 10) {
        (3..=5, _) => vec![b'a' + (i % 26) as u8; 400_000],
        (_, 7) => b"unwrap-none".to_vec(),
        _ => format!("record {i}").into_bytes(),
    });
    let inputs = env.inputs(values);
    env.produce(&inputs).await;
    let app = App::start(env.config("chaos", "max_unacked = 3\nmax_unacked_mb = 1"))
        .await
        .expect("starts");
    wait_committed(&app, inputs.len(), WAIT).await;
    let outputs = env.read(&env.output).await;
    let dead = env.read(&env.dlq).await;
    app.stop().await;

    assert_complete_and_uppercased(&inputs, &outputs, &dead, (54, 6));
}

/// A plugin of the plain `processor` world (no `handle-batch`, built
/// without the SDK) runs one call per record in the same pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plugin_without_the_batch_export_still_runs_every_record() {
    let env = Env::new(1, 2);
    let values = (0..400).map(|i| {
        if i % 50 == 7 {
            b"panic".to_vec()
        } else {
            format!("record {i}").into_bytes()
        }
    });
    let inputs = env.inputs(values);
    env.produce(&inputs).await;
    let app = App::start(env.config("single-call", ""))
        .await
        .expect("starts");
    assert_eq!(
        app.pipelines[0].plugin().world(),
        "sandpiper:plugin/processor@0.1.0"
    );
    wait_committed(&app, inputs.len(), WAIT).await;
    let outputs = env.read(&env.output).await;
    let dead = env.read(&env.dlq).await;
    app.stop().await;

    assert_complete_and_uppercased(&inputs, &outputs, &dead, (392, 8));
    for d in &dead {
        assert_eq!(header_str(d, dl::H_TRAP), "panic");
    }
}

/// The tally finds every input once, `expected` = (outputs, dead letters),
/// and each output is its input uppercased (inputs carry their index in
/// header `n`).
fn assert_complete_and_uppercased(
    inputs: &[Outgoing],
    outputs: &[Record],
    dead: &[Record],
    expected: (usize, usize),
) {
    let t = tally(inputs, outputs, dead);
    assert!(t.missing.is_empty(), "missing: {:?}", t.missing);
    assert_eq!(
        (t.outputs, t.dead_letters, t.duplicates),
        (expected.0, expected.1, 0),
        "{t:?}"
    );
    for output in outputs {
        let n: usize = header_str(output, "n")
            .parse()
            .expect("original header kept");
        let expected = inputs[n].value.as_deref().map(<[u8]>::to_ascii_uppercase);
        assert_eq!(
            output.value, expected,
            "output {n} is its input, uppercased"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_succeed_in_place_or_are_exhausted() {
    let env = Env::new(1, 1);
    let inputs = env.inputs(vec![
        b"first".to_vec(),
        b"flaky:3".to_vec(),
        b"retry".to_vec(),
        b"last".to_vec(),
    ]);
    env.produce(&inputs).await;
    let extra = "workers = 1\n[pipeline.retry]\nmax_attempts = 4\ninitial_backoff_ms = 10\nmax_backoff_ms = 50";
    let app = App::start(env.config("chaos", extra))
        .await
        .expect("starts");
    wait_committed(&app, inputs.len(), WAIT).await;
    let outputs = env.read(&env.output).await;
    let dead = env.read(&env.dlq).await;
    app.stop().await;

    let t = tally(&inputs, &outputs, &dead);
    assert!(t.missing.is_empty(), "{t:?}");
    assert_eq!((t.outputs, t.dead_letters), (3, 1));
    let values: Vec<_> = outputs
        .iter()
        .map(|r| r.value.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        values,
        vec![b"FIRST".to_vec(), b"FLAKY:3".to_vec(), b"LAST".to_vec()],
        "in offset order"
    );
    assert_eq!(header_str(&dead[0], dl::H_KIND), "retries-exhausted");
    assert_eq!(header_str(&dead[0], dl::H_ATTEMPTS), "4");
    assert_eq!(
        header_str(&dead[0], dl::H_MESSAGE),
        "chaos: dependency down"
    );
}

/// A partition whose plugin keeps asking for retries holds up only itself:
/// every partition reads its own queue, so the others flow meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_stuck_in_retries_does_not_hold_up_the_others() {
    use std::sync::atomic::Ordering::Relaxed;
    let env = Env::new(1, 3);
    // Partition 0: a record retried for about 8 s, then 50 behind it.
    let mut stuck = env.inputs(
        std::iter::once(b"retry".to_vec()).chain((0..50).map(|i| format!("s{i}").into_bytes())),
    );
    for (i, r) in stuck.iter_mut().enumerate() {
        r.key = Some(format!("p0-{i}").into_bytes());
    }
    let stuck = produce_to_partitions(&env, stuck, &[0]).await;
    // Partitions 1 and 2: 1,000 records that must not wait for it.
    let others = env.inputs((0..1000).map(|i| format!("o{i}").into_bytes()));
    let others = produce_to_partitions(&env, others, &[1, 2]).await;
    let extra = "workers = 1\npartition_buffer = 64\n[pipeline.retry]\nmax_attempts = 80\ninitial_backoff_ms = 100\nmax_backoff_ms = 100";
    let app = App::start(env.config("chaos", extra))
        .await
        .expect("starts");

    // Partitions 1 and 2 finish while partition 0 is still retrying.
    let counters = app.pipelines[0].counters();
    let started = std::time::Instant::now();
    while counters.succeeded.load(Relaxed) < others.len() as u64 {
        assert_eq!(
            counters.dead_lettered.load(Relaxed),
            0,
            "partition 0 finished retrying before the others got through: {} of {} succeeded",
            counters.succeeded.load(Relaxed),
            others.len()
        );
        assert!(started.elapsed() < WAIT, "partitions 1 and 2 stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counters.dead_lettered.load(Relaxed), 0);
    // Their outputs are acknowledged shortly after.
    let outputs = env
        .read_until(&env.output, Duration::from_secs(30), |o| {
            tally(&others, o, &[]).missing.is_empty()
        })
        .await;
    let t = tally(&others, &outputs, &[]);
    assert!(t.missing.is_empty(), "{} missing", t.missing.len());

    let total = stuck.len() + others.len();
    wait_committed(&app, total, WAIT).await;
    let outputs = env.read(&env.output).await;
    let dead = env.read(&env.dlq).await;
    app.stop().await;
    let all: Vec<_> = stuck.iter().chain(&others).cloned().collect();
    let t = tally(&all, &outputs, &dead);
    assert!(t.missing.is_empty(), "{t:?}");
    assert_eq!((t.outputs, t.dead_letters), (total - 1, 1));
    assert_eq!(header_str(&dead[0], dl::H_KIND), "retries-exhausted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_dead_letter_produce_holds_the_offset_until_it_heals() {
    let env = Env::new(1, 1);
    env.cluster
        .partition_leader(&env.dlq, 0, None)
        .expect("dlq offline");
    let values: Vec<Vec<u8>> = (0..50)
        .map(|i| {
            if i == 10 {
                b"panic".to_vec()
            } else {
                format!("v{i}").into_bytes()
            }
        })
        .collect();
    let inputs = env.inputs(values);
    env.produce(&inputs).await;
    let extra = "[pipeline.retry]\nmax_backoff_ms = 500";
    let mut config = env.config("chaos", extra);
    config
        .kafka
        .producer_properties
        .insert("message.timeout.ms".into(), "1000".into());
    let app = App::start(config).await.expect("starts");

    tokio::time::sleep(Duration::from_secs(6)).await;
    let committed = app.pipelines[0].committed().await.expect("committed");
    let offset = committed.first().map_or(-1, |c| c.2);
    assert!(
        offset <= 10,
        "nothing past the unproduced dead letter is committed: {committed:?}"
    );
    let reasons = app.health.readiness().reasons.join("; ");
    assert!(
        reasons.contains("blocked") && reasons.contains("dead letter"),
        "{reasons}"
    );
    assert!(
        app.health.liveness().ok,
        "waiting on the broker is not a stall"
    );

    env.cluster
        .partition_leader(&env.dlq, 0, Some(1))
        .expect("dlq back");
    wait_committed(&app, inputs.len(), WAIT).await;
    let outputs = env.read(&env.output).await;
    let dead = env.read(&env.dlq).await;
    app.stop().await;
    let t = tally(&inputs, &outputs, &dead);
    assert!(t.missing.is_empty(), "{t:?}");
    assert_eq!((t.outputs, t.dead_letters), (49, 1), "{t:?}");
}

/// Incident 2: one of three brokers dies and the topics have replication
/// factor 1. Partitions on live brokers keep flowing; the dead one resumes
/// when its broker returns; no client is recreated (threads flat).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_on_live_brokers_keep_flowing_while_one_broker_is_down() {
    let env = Env::new(3, 3);
    // Inputs: partition p led by broker p+1. Outputs and dead letters on
    // brokers 1 and 2, so the failure hits input partition 2 only.
    for p in 0..3 {
        env.cluster
            .partition_leader(&env.input, p, Some(p + 1))
            .expect("leader");
        env.cluster
            .partition_leader(&env.output, p, Some(1 + p % 2))
            .expect("leader");
        env.cluster
            .partition_leader(&env.dlq, p, Some(1 + p % 2))
            .expect("leader");
    }
    // The group's coordinator on a live broker too (its loss is the next test).
    env.cluster
        .group_coordinator(&env.group, 1)
        .expect("coordinator");
    let first = env.inputs((0..300).map(|i| format!("a{i}").into_bytes()));
    env.produce(&first).await;
    let app = App::start(env.config("chaos", "")).await.expect("starts");
    wait_committed(&app, first.len(), WAIT).await;
    let (threads, clients, rss) = (thread_count(), kafka_clients(), rss_bytes());
    // The mock cluster's own client, plus the pipeline's consumer and producer.
    assert_eq!(
        clients,
        3,
        "one consumer and one producer: {:?}",
        crate::support::thread_names()
    );

    env.cluster.broker_down(3).expect("down");
    // Readiness names the unavailable partition, and only that one.
    let unavailable = format!("{}/2", env.input);
    let started = std::time::Instant::now();
    let reasons = loop {
        let reasons = app.health.readiness().reasons;
        if reasons.iter().any(|r| r.contains(&unavailable)) {
            break reasons;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "readiness does not name {unavailable} while its broker is down: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("readiness while broker 3 is down: {reasons:?}");
    for healthy in [0, 1] {
        let name = format!("{}/{healthy}", env.input);
        assert!(
            !reasons.iter().any(|r| r.contains(&name)),
            "{name} is healthy: {reasons:?}"
        );
    }
    // Records for partitions 0 and 1 (their leaders are alive).
    let second = env.inputs_from(300, (300..600).map(|i| format!("b{i}").into_bytes()));
    let second = produce_to_partitions(&env, second, &[0, 1]).await;
    // They flow while broker 3 is down.
    let outputs = env
        .read_until(&env.output, Duration::from_secs(30), |o| {
            tally(&second, o, &[]).missing.is_empty()
        })
        .await;
    let t = tally(&second, &outputs, &[]);
    assert!(
        t.missing.is_empty(),
        "healthy partitions stalled: {} missing",
        t.missing.len()
    );
    assert_flat(threads, clients);

    env.cluster.broker_up(3).expect("up");
    let third = env.inputs_from(600, (600..700).map(|i| format!("c{i}").into_bytes()));
    let third = produce_to_partitions(&env, third, &[2]).await;
    let total = first.len() + second.len() + third.len();
    wait_committed(&app, total, WAIT).await;
    let started = std::time::Instant::now();
    while app
        .health
        .readiness()
        .reasons
        .iter()
        .any(|r| r.contains(&unavailable))
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{unavailable} still reported after its broker returned: {:?}",
            app.health.readiness().reasons
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let outputs = env.read(&env.output).await;
    let dead = env.read(&env.dlq).await;
    let grown = rss_bytes().saturating_sub(rss);
    app.stop().await;

    let all: Vec<_> = first.iter().chain(&second).chain(&third).cloned().collect();
    let t = tally(&all, &outputs, &dead);
    assert!(t.missing.is_empty(), "{} missing", t.missing.len());
    assert!(
        grown < 50 << 20,
        "RSS grew {grown} bytes through the outage"
    );
}

/// The group coordinator's broker goes down mid-stream: fetching goes on
/// from the partition leaders, commits resume when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_group_coordinator_going_down_loses_nothing() {
    let env = Env::new(3, 2);
    for p in 0..2 {
        env.cluster
            .partition_leader(&env.input, p, Some(1 + p))
            .expect("leader");
        env.cluster
            .partition_leader(&env.output, p, Some(1 + p))
            .expect("leader");
        env.cluster
            .partition_leader(&env.dlq, p, Some(1 + p))
            .expect("leader");
    }
    env.cluster
        .group_coordinator(&env.group, 3)
        .expect("coordinator");
    let first = env.inputs((0..200).map(|i| format!("a{i}").into_bytes()));
    env.produce(&first).await;
    let app = App::start(env.config("chaos", "")).await.expect("starts");
    wait_committed(&app, first.len(), WAIT).await;
    let (threads, clients) = (thread_count(), kafka_clients());

    env.cluster.broker_down(3).expect("down");
    let second = env.inputs_from(200, (200..400).map(|i| format!("b{i}").into_bytes()));
    env.produce(&second).await;
    let outputs = env
        .read_until(&env.output, Duration::from_secs(30), |o| {
            tally(&second, o, &[]).missing.is_empty()
        })
        .await;
    let during = tally(&second, &outputs, &[]);
    env.cluster.broker_up(3).expect("up");
    assert!(
        during.missing.is_empty(),
        "records stopped flowing without the coordinator: {} missing",
        during.missing.len()
    );
    assert_flat(threads, clients);

    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    wait_committed(&app, all.len(), WAIT).await;
    app.stop().await;
    let outputs = env.read(&env.output).await;
    let t = tally(&all, &outputs, &[]);
    assert!(t.missing.is_empty(), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_between_two_hosts_mid_stream_loses_nothing() {
    let env = Env::new(1, 4);
    let first = env.inputs((0..400).map(|i| format!("a{i}").into_bytes()));
    env.produce(&first).await;
    let a = App::start(env.config("chaos", "")).await.expect("a starts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = App::start(env.config("chaos", "")).await.expect("b starts");
    let second = env.inputs_from(400, (400..800).map(|i| format!("b{i}").into_bytes()));
    env.produce(&second).await;
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    // Both hosts share the work; wait until everything is committed.
    let started = std::time::Instant::now();
    loop {
        let committed: i64 = env.committed().await.values().map(|o| (*o).max(0)).sum();
        if committed as usize >= all.len() {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "committed {committed} of {}",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let assigned_a = a.health.pipelines()[0].assigned().len();
    let assigned_b = b.health.pipelines()[0].assigned().len();
    a.stop().await;
    b.stop().await;
    assert_eq!(
        assigned_a + assigned_b,
        4,
        "the partitions were shared: {assigned_a} + {assigned_b}"
    );
    assert!(assigned_b > 0, "the second host got partitions");
    let outputs = env.read(&env.output).await;
    let t = tally(&all, &outputs, &[]);
    assert!(t.missing.is_empty(), "{t:?}");
    eprintln!("rebalance tally: {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_with_records_in_flight_commits_exactly_what_finished() {
    let env = Env::new(1, 2);
    let inputs = env.inputs((0..400).map(|_| b"spin:5".to_vec()));
    env.produce(&inputs).await;
    let app = App::start(env.config("chaos", "workers = 2"))
        .await
        .expect("starts");
    // Wait until some, not all, are done, then stop.
    let started = std::time::Instant::now();
    while app.pipelines[0]
        .counters()
        .consumed
        .load(std::sync::atomic::Ordering::Relaxed)
        < 50
    {
        assert!(started.elapsed() < WAIT, "nothing consumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.stop().await;

    let committed = env.committed().await;
    let outputs = env.read(&env.output).await;
    let input_records = env.read(&env.input).await;
    // Map each output back to its input's partition and offset (by key).
    let position: std::collections::HashMap<_, _> = input_records
        .iter()
        .map(|r| (r.key.clone(), (r.partition, r.offset)))
        .collect();
    let total: i64 = committed.values().map(|o| (*o).max(0)).sum();
    assert!(
        total > 0 && (total as usize) < inputs.len(),
        "stopped mid-stream: {committed:?}"
    );
    for p in 0..2 {
        let end = committed.get(&p).copied().unwrap_or(-1).max(0);
        let mut done: Vec<i64> = outputs
            .iter()
            .filter_map(|o| position.get(&o.key))
            .filter(|(part, _)| *part == p)
            .map(|(_, off)| *off)
            .collect();
        done.sort_unstable();
        done.dedup();
        let expected: Vec<i64> = (0..end).collect();
        assert_eq!(
            done, expected,
            "partition {p}: outputs are exactly the committed prefix"
        );
    }
}

/// Through a broker outage: no Kafka client made again, and at most two
/// threads more than `threads`.
fn assert_flat(threads: usize, clients: usize) {
    assert_eq!(kafka_clients(), clients, "no client recreated");
    assert!(
        thread_count() <= threads + 2,
        "threads flat: {} then {}",
        threads,
        thread_count()
    );
}

/// Produces `records` to the given partitions (round-robin) and returns
/// them; waits for every acknowledgement.
async fn produce_to_partitions(
    env: &Env,
    records: Vec<sandpiper::kafka::Outgoing>,
    partitions: &[i32],
) -> Vec<sandpiper::kafka::Outgoing> {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    for (i, r) in records.iter().enumerate() {
        let p = partitions[i % partitions.len()];
        let mut fr = FutureRecord::<[u8], [u8]>::to(&r.topic).partition(p);
        if let Some(k) = &r.key {
            fr = fr.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            fr = fr.payload(v.as_slice());
        }
        producer
            .send(fr, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    records
}
