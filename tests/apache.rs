//! The host binary on Apache Kafka, the reference broker (KRaft nodes, each
//! its own JVM; see `support/apache.rs`): a pipeline whose every input is
//! accounted for, a three-node cluster that loses a node and gets it back,
//! and refusals no retry heals (an output or a dead letter larger than its
//! topic takes). An independent client produces the inputs and reads the
//! results to the topics' high watermarks.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::support::apache::Cluster;
use crate::support::client::{self, Producer};
use crate::support::process::HostProcess;
use crate::support::tansu::free_port;

/// Long enough for any of these scenarios on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(180);

#[test]
fn a_single_broker_serves_a_pipeline_and_the_tally_is_complete() {
    let cluster = Cluster::start(1, &[("auto.create.topics.enable", "false")]);
    let name = crate::support::unique("apache");
    let [input, output, dlq] = ["in", "out", "dlq"].map(|t| format!("{name}-{t}"));
    let group = format!("{name}-group");
    for topic in [&input, &output, &dlq] {
        cluster.create_topic(topic, 3, 1, &[]);
    }
    let inputs = client::numbered(0..1000, Some(100));
    let mut producer = Producer::new(&cluster.bootstrap());
    producer.send_all(&input, &inputs);
    let ends = producer.ends(&input);
    assert_eq!(ends.values().sum::<i64>(), 1000, "{ends:?}");

    let dir = tempfile::tempdir().expect("temp dir");
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut config = crate::support::kafka::config_text(
        &cluster.bootstrap(),
        &group,
        [&input, &output, &dlq],
        "chaos",
        "",
    );
    config.push_str(&format!("\n[admin]\nlisten = \"{admin}\"\n"));
    let config_path = dir.path().join("sandpiper.toml");
    std::fs::write(&config_path, config).expect("writing the host config");
    let mut host = HostProcess::start(&config_path, &dir.path().join("host.log"), admin);
    let took = client::wait_committed(&cluster.bootstrap(), &group, &input, &ends, WAIT, || {
        host.assert_running();
    });
    eprintln!("1000 records committed on Apache Kafka in {took:?}");
    let status = host.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");

    let counts = client::key_counts_to_end(&cluster.bootstrap(), &[&output, &dlq]);
    let t = client::tally(&inputs, &counts[0], &counts[1]);
    client::assert_complete("apache single broker", &t);
    let input_keys: BTreeSet<&[u8]> = inputs.iter().filter_map(|i| i.key.as_deref()).collect();
    let output_keys = counts[0]
        .keys()
        .filter(|k| input_keys.contains(k.as_slice()))
        .count();
    assert_eq!(
        (output_keys, t.dead_keys, t.missing.len()),
        (990, 10, 0),
        "{t:?}"
    );
    // The dead letters are exactly the inputs the plugin traps on.
    let dead: BTreeSet<String> = counts[1]
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let traps: BTreeSet<String> = (0..10).map(|i| format!("k{}", i * 100 + 50)).collect();
    assert_eq!(dead, traps);
}

#[test]
fn three_brokers_start_and_one_can_be_killed_and_restarted() {
    let mut cluster = Cluster::start(3, &[]);
    let topic = crate::support::unique("apache-rf3");
    cluster.create_topic(&topic, 3, 3, &[("min.insync.replicas", "1")]);
    let before = cluster.partitions(&topic);
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(
        before.values().all(|p| p.isr == [1, 2, 3]),
        "every replica in sync at first: {before:?}"
    );
    let first = client::numbered(0..100, None);
    let mut producer = Producer::new(&cluster.bootstrap());
    producer.send_all(&topic, &first);

    // Kill the node leading partition 0: the partition must move.
    let leader = cluster.leader(&topic, 0).expect("partition 0 has a leader");
    let victim = cluster.node_of(leader).expect("the leader is one of ours");
    let pid = cluster.pid(victim).expect("the leader runs");
    cluster.kill(victim);
    assert!(!cluster.is_running(victim));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the killed JVM is reaped"
    );
    let started = Instant::now();
    let moved = loop {
        let state = cluster.partitions(&topic);
        let led_by_live = state
            .values()
            .all(|p| p.leader.is_some_and(|l| l != leader) && !p.isr.contains(&leader));
        if state.len() == 3 && led_by_live {
            break state;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "partitions still on the killed broker {leader} after 60 s: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!(
        "leadership left the killed broker {leader} in {:?}: {moved:?}",
        started.elapsed()
    );
    // Two nodes still take writes.
    let second = client::numbered(100..200, None);
    producer.send_all(&topic, &second);

    cluster.restart(victim);
    assert!(cluster.is_running(victim));
    let started = Instant::now();
    loop {
        let state = cluster.partitions(&topic);
        if state.len() == 3 && state.values().all(|p| p.isr == [1, 2, 3]) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "broker {leader} not back in sync after 60 s: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut all = first;
    all.extend(second);
    let counts = client::key_counts_to_end(&cluster.bootstrap(), &[&topic]);
    let t = client::tally(&all, &counts[0], &std::collections::HashMap::new());
    client::assert_complete("apache three brokers", &t);
    assert_eq!((t.outputs, t.duplicates), (200, 0), "{t:?}");

    // A graceful stop (SIGTERM: a controlled shutdown) ends the JVM by
    // itself: 143 is the JVM's exit once its shutdown hooks ran.
    let status = cluster.stop(victim);
    assert_eq!(status.code(), Some(143), "{status}");
    assert!(!cluster.is_running(victim));
}

/// A running host on `cluster` for `[input, output, dlq]` with `plugin`;
/// `top` is TOML before the `[kafka]` table. Returns the host, its admin
/// address and the config file (kept in `dir`).
fn start_host(
    cluster: &Cluster,
    dir: &std::path::Path,
    group: &str,
    topics: [&str; 3],
    plugin: &str,
    top: &str,
) -> (HostProcess, std::path::PathBuf, SocketAddr) {
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut config = format!(
        "{top}\n{}",
        crate::support::kafka::config_text(&cluster.bootstrap(), group, topics, plugin, "")
    );
    config.push_str(&format!("\n[admin]\nlisten = \"{admin}\"\n"));
    let path = dir.join("sandpiper.toml");
    std::fs::write(&path, config).expect("writing the host config");
    let host = HostProcess::start(&path, &dir.join("host.log"), admin);
    (host, path, admin)
}

/// The incident behind "never stuck": an output larger than its topic
/// takes (`max.message.bytes`) is refused by the broker for good. The
/// record is dead-lettered as `output-refused`, the partition goes on at
/// once, health stays green and the group commits to the end.
#[test]
fn an_output_larger_than_its_topic_takes_is_dead_lettered_and_the_partition_goes_on() {
    let cluster = Cluster::start(1, &[("auto.create.topics.enable", "false")]);
    let name = crate::support::unique("apache-refused");
    let [input, output, dlq] = ["in", "out", "dlq"].map(|t| format!("{name}-{t}"));
    let group = format!("{name}-group");
    cluster.create_topic(&input, 2, 1, &[]);
    cluster.create_topic(&output, 2, 1, &[("max.message.bytes", "100000")]);
    cluster.create_topic(&dlq, 2, 1, &[]);
    let mut inputs = client::numbered(0..300, None);
    // One record on each partition makes a 300 KB output.
    for (i, partition) in [(50, 0), (250, 1)] {
        inputs[i].value = Some(b"big-output:300000".to_vec());
        inputs[i].partition = Some(partition);
    }
    let mut producer = Producer::new(&cluster.bootstrap());
    producer.send_all(&input, &inputs);
    let ends = producer.ends(&input);

    let dir = tempfile::tempdir().expect("temp dir");
    let topics = [input.as_str(), output.as_str(), dlq.as_str()];
    let (mut host, config, _) = start_host(&cluster, dir.path(), &group, topics, "chaos", "");
    // `sandpiper check` predicts it from the topic's config.
    let report = check(&config);
    assert!(
        report.contains(&format!(
            "output topic {output} takes records of at most 100000 bytes (max.message.bytes), below limits.max_output_bytes (998976)"
        )),
        "{report}"
    );
    client::wait_committed(&cluster.bootstrap(), &group, &input, &ends, WAIT, || {
        host.assert_running();
    });
    let (healthz, body) = host.get("/healthz").expect("healthz answers");
    assert_eq!(healthz, 200, "a refused output costs one record: {body}");
    host.wait_status("/readyz", 200, Duration::from_secs(30));
    let log = host.log_lines().join("\n");
    let status = host.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");

    let counts = client::key_counts_to_end(&cluster.bootstrap(), &[&output, &dlq]);
    let t = client::tally(&inputs, &counts[0], &counts[1]);
    client::assert_complete("apache output refused", &t);
    assert_eq!(
        (t.outputs, t.dead_letters, t.duplicates),
        (298, 2, 0),
        "{t:?}"
    );
    let dead: BTreeSet<&[u8]> = counts[1].keys().map(Vec::as_slice).collect();
    assert_eq!(dead, BTreeSet::from([&b"k50"[..], &b"k250"[..]]));
    assert!(
        log.contains("output-refused") && log.contains("MessageSizeTooLarge"),
        "the refusal is logged with its kind and the broker's error: {log}"
    );
}

/// A dead-letter topic that takes smaller records than the input: the
/// dead letter of a large failing record is refused for good, even
/// without its diagnostic headers. Its partition stops (the others go
/// on), `/healthz` names it and the process exits non-zero; once the
/// operator raises the topic's `max.message.bytes`, a restart loses
/// nothing.
#[test]
fn a_dead_letter_topic_too_small_for_an_input_stops_its_partition_until_fixed() {
    let cluster = Cluster::start(1, &[("auto.create.topics.enable", "false")]);
    let name = crate::support::unique("apache-dlq-small");
    let [input, output, dlq] = ["in", "out", "dlq"].map(|t| format!("{name}-{t}"));
    let group = format!("{name}-group");
    cluster.create_topic(&input, 2, 1, &[]);
    cluster.create_topic(&output, 2, 1, &[]);
    cluster.create_topic(&dlq, 2, 1, &[("max.message.bytes", "50000")]);
    let mut inputs = client::numbered(0..200, None);
    for (i, input) in inputs.iter_mut().enumerate() {
        input.partition = Some((i % 2) as i32);
    }
    // Rejected by the plugin, and four times what the dead-letter topic takes.
    let mut big = b"reject".to_vec();
    big.resize(200_000, b' ');
    inputs[40].value = Some(big);
    let mut producer = Producer::new(&cluster.bootstrap());
    producer.send_all(&input, &inputs);
    let ends = producer.ends(&input);

    let dir = tempfile::tempdir().expect("temp dir");
    let topics = [input.as_str(), output.as_str(), dlq.as_str()];
    let (mut host, config, admin) = start_host(
        &cluster,
        dir.path(),
        &group,
        topics,
        "chaos",
        "unhealthy_exit_secs = 3",
    );
    // Partition 0 stops at input 40 (its offset 20); partition 1 finishes.
    let body = host.wait_status("/healthz", 503, WAIT);
    assert!(
        body["reasons"]
            .to_string()
            .contains(&format!("partition {input}/0 stopped at offset 20")),
        "{body}"
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = host.exited() {
            break status;
        }
        assert!(
            started.elapsed() < WAIT,
            "the host did not exit: {}",
            host.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!status.success(), "exits non-zero: {status}");
    let log = host.log_lines().join("\n");
    assert!(
        log.contains(&format!("partition {input}/0 stopped at offset 20"))
            && log.contains("even without its diagnostic headers")
            && log.contains("MessageSizeTooLarge"),
        "{log}"
    );
    let committed = client::committed(&cluster.bootstrap(), &group, &input);
    assert_eq!(
        committed.get(&0),
        Some(&20),
        "nothing past the record: {committed:?}"
    );
    assert_eq!(
        committed.get(&1),
        Some(&ends[&1]),
        "the other partition went on: {committed:?}"
    );

    let report = check(&config);
    assert!(
        report.contains(&format!(
            "dead-letter topic {dlq} takes records of at most 50000 bytes, less than input topic {input}'s"
        )),
        "`sandpiper check` saw it coming: {report}"
    );
    // The operator's fix; the supervisor's restart.
    cluster.alter_topic_config(&dlq, &[("max.message.bytes", "1048588")]);
    let mut host = HostProcess::start(&config, &dir.path().join("host.log"), admin);
    client::wait_committed(&cluster.bootstrap(), &group, &input, &ends, WAIT, || {
        host.assert_running();
    });
    let status = host.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");
    let counts = client::key_counts_to_end(&cluster.bootstrap(), &[&output, &dlq]);
    let t = client::tally(&inputs, &counts[0], &counts[1]);
    client::assert_complete("apache dead-letter topic too small", &t);
    assert_eq!(t.dead_letters, 1, "{t:?}");
    assert!(counts[1].contains_key(&b"k40"[..]), "{t:?}");
}

/// `sandpiper check --config <config>`'s report (its standard output).
fn check(config: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandpiper"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .output()
        .expect("running sandpiper check");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
