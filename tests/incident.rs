//! Incident 2 on Apache Kafka, the reference broker: one of three brokers
//! dies under a cluster whose topics have replication factor 1, and what a
//! replicated cluster does with the same loss and a rolling restart.
//!
//! `pipeline::partitions_on_live_brokers_keep_flowing_while_one_broker_is_down`
//! is the same incident on librdkafka's mock cluster; here the brokers are
//! real JVMs (`support/apache.rs`), the host is the `sandpiper` binary, and
//! an independent client produces the inputs, reads committed offsets, and
//! ends each test in a tally read to the topics' high watermarks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};

use crate::support::apache::Cluster;
use crate::support::client::{self, Input, Producer};
use crate::support::process::HostProcess;
use crate::support::tansu::free_port;

/// Long enough for any step of these scenarios on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(180);

/// How long the broker stays dead in the incident.
const OUTAGE: Duration = Duration::from_secs(60);

/// Kafka's internal topic of committed offsets (and group coordinators).
const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The incident as it happened: three brokers whose defaults give every
/// auto-created topic one replica; the input topic auto-created by its
/// first producer; a broker leading one of its partitions SIGKILLed. For
/// 60 s the partitions on the live brokers keep flowing and are
/// committed, `/readyz` and `/status` name the offline ones, the host
/// creates no client, its memory stays flat and its logs stay quiet. Once
/// the broker is back, the offline partitions resume; `sandpiper check`
/// flags replication factor 1. Nothing is lost.
#[test]
fn the_broker_loss_incident_on_three_brokers_with_replication_factor_one() {
    let mut cluster = Cluster::start(
        3,
        &[
            ("default.replication.factor", "1"),
            ("num.partitions", "3"),
            ("auto.create.topics.enable", "true"),
        ],
    );
    let name = crate::support::unique("incident");
    let [input, output, dlq] = ["in", "out", "dlq"].map(|t| format!("{name}-{t}"));
    let group = format!("{name}-group");

    // The input topic comes from the broker's defaults, as in the incident:
    // the first record produced to it creates it.
    let seed = Input::new("seed", "v-seed");
    produce_auto_creating(&cluster.bootstrap(), &input, &seed);
    let layout = wait_led(&cluster, &input, 3);
    let input_replicas = replicas(&cluster, &input);
    assert!(
        input_replicas.len() == 3 && input_replicas.values().all(|r| r.len() == 1),
        "auto-created with the broker defaults (3 partitions, 1 replica): {input_replicas:?}"
    );
    assert_eq!(
        high_watermarks(&cluster.bootstrap(), &input)
            .values()
            .sum::<i64>(),
        1,
        "the seed record is in the topic"
    );

    // Which broker coordinates the group: the leader of its partition of
    // the offsets topic (asking for the group's offsets creates the topic).
    let _ = client::committed(&cluster.bootstrap(), &group, &input);
    let offsets = wait_led(&cluster, OFFSETS_TOPIC, 1);
    let coordinator_partition = coordinator_partition(&group, offsets.len() as i32);
    let coordinator = offsets[&coordinator_partition].leader;
    let offsets_replicas = replicas(&cluster, OFFSETS_TOPIC)[&coordinator_partition].len();

    // The victim leads an input partition; when one of them can be had, it
    // is not the group's coordinator. (The offsets topic has 3 replicas, so
    // a coordinator would move within the broker session anyway; that loss
    // is the second test's and the mock cluster's
    // `pipeline::the_group_coordinator_going_down_loses_nothing`.)
    let leaders: BTreeMap<i32, i32> = layout
        .iter()
        .filter_map(|(p, s)| Some((*p, s.leader?)))
        .collect();
    let input_leaders: BTreeSet<i32> = leaders.values().copied().collect();
    let victim = input_leaders
        .iter()
        .copied()
        .find(|b| Some(*b) != coordinator)
        .or_else(|| input_leaders.first().copied())
        .expect("an input partition has a leader");
    let victim_node = cluster.node_of(victim).expect("a broker of ours");
    let offline: Vec<i32> = leaders
        .iter()
        .filter(|(_, l)| **l == victim)
        .map(|(p, _)| *p)
        .collect();
    let live: Vec<i32> = leaders
        .iter()
        .filter(|(_, l)| **l != victim)
        .map(|(p, _)| *p)
        .collect();
    let live_brokers: Vec<i32> = (0..cluster.len())
        .map(|n| cluster.broker_id(n))
        .filter(|b| *b != victim)
        .collect();
    eprintln!(
        "input leaders {leaders:?}; group coordinator: broker {coordinator:?} \
         ({OFFSETS_TOPIC}/{coordinator_partition}, {offsets_replicas} replicas); \
         killing broker {victim}, leader of input partitions {offline:?}"
    );
    assert!(!live.is_empty(), "some input partition is on a live broker");

    // Outputs and dead letters have one replica too (the incident's
    // cluster had no other), but the test creates them, with their
    // partitions on the brokers that stay up: the host's producer never
    // creates topics, and the host picks an output's partition by its key,
    // so an output partition on the dead broker would hold up whichever
    // input partitions write to it. This test is the input side's loss.
    let assignment: Vec<&[i32]> = (0..3)
        .map(|p| std::slice::from_ref(&live_brokers[p % live_brokers.len()]))
        .collect();
    for topic in [&output, &dlq] {
        create_topic_on(&cluster, topic, &assignment, &[]);
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let topics = [input.as_str(), output.as_str(), dlq.as_str()];
    let (mut host, config) = start_host(&cluster, dir.path(), &group, topics, "chaos");

    // The preflight check sees the incident coming.
    let (code, out) = check(&config, &[]);
    for (role, topic) in [
        ("input", &input),
        ("output", &output),
        ("dead-letter", &dlq),
    ] {
        assert!(
            out.contains(&format!(
                "{role} topic {topic} has replication factor 1: losing one broker takes its partitions offline"
            )),
            "check flags {role} topic {topic}: {out}"
        );
    }
    assert_eq!(code, 0, "warnings are not errors: {out}");
    let (code, out) = check(&config, &["--strict"]);
    assert_eq!(code, 1, "--strict fails on the warnings: {out}");

    // Records flow on every partition.
    let mut inputs = vec![seed];
    let first = client::numbered(0..600, Some(100));
    let mut producer = Producer::new(&cluster.bootstrap());
    producer.send_all(&input, &first);
    inputs.extend(first);
    let ends = high_watermarks(&cluster.bootstrap(), &input);
    assert_eq!(ends.values().sum::<i64>(), 601, "{ends:?}");
    let took = client::wait_committed(&cluster.bootstrap(), &group, &input, &ends, WAIT, || {
        host.assert_running();
    });
    eprintln!("601 records committed in {took:?}");
    host.wait_status("/readyz", 200, Duration::from_secs(30));
    let pid = host.pid();
    let before = host.sample();
    let before_rdk = rdk_threads(&host);
    let clients = before_rdk.iter().filter(|n| *n == "rdk:main").count();
    assert_eq!(clients, 2, "one consumer and one producer: {before_rdk:?}");

    // The incident.
    let log_base = host.log_lines().len();
    let killed = Instant::now();
    cluster.kill(victim_node);
    let offline_names: Vec<String> = offline.iter().map(|p| format!("{input}/{p}")).collect();
    let live_names: Vec<String> = live.iter().map(|p| format!("{input}/{p}")).collect();
    let names_offline = |reasons: &str| {
        offline_names
            .iter()
            .all(|n| reasons.contains(&format!("partition {n} is ")))
    };
    let body = loop {
        host.assert_running();
        if let Some((503, body)) = host.get("/readyz")
            && names_offline(&body["reasons"].to_string())
        {
            break body;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "/readyz does not name {offline_names:?} 30 s after their broker died: {:?}",
            host.get("/readyz")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "/readyz named the offline partitions {:?} after the kill: {}",
        killed.elapsed(),
        body["reasons"]
    );

    // The outage: batches to the live partitions, each committed while the
    // broker is down; readiness, status, clients, threads and memory
    // checked between them.
    let mut batches = 0;
    let mut times = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut next = 1000;
    let mut samples = Vec::new();
    let mut warm = None;
    let mut reasons_seen = BTreeSet::new();
    let mut thread_counts = BTreeSet::new();
    let victim_thread = format!("rdk:broker{victim}");
    while killed.elapsed() < OUTAGE {
        let batch: Vec<Input> = (next..next + 20)
            .map(|i| {
                let mut input = Input::new(format!("k{i}"), format!("v{i}"));
                input.partition = Some(live[i % live.len()]);
                // One in ten traps: the host's log lines about them are
                // rate-limited too (below).
                if i % 10 == 5 {
                    input.value = Some(b"unwrap-none".to_vec());
                }
                input
            })
            .collect();
        next += 20;
        producer.send_all(&input, &batch);
        inputs.extend(batch);
        let ends: BTreeMap<i32, i64> = producer
            .ends(&input)
            .into_iter()
            .filter(|(p, _)| live.contains(p))
            .collect();
        let took = client::wait_committed(
            &cluster.bootstrap(),
            &group,
            &input,
            &ends,
            Duration::from_secs(30),
            || host.assert_running(),
        );
        slowest = slowest.max(took);
        times.push(took);
        batches += 1;

        let (status, body) = host.get("/readyz").expect("/readyz answers in the outage");
        let reasons = body["reasons"].to_string();
        assert_eq!(status, 503, "not ready with partitions offline: {body}");
        assert!(
            names_offline(&reasons),
            "/readyz names {offline_names:?}: {reasons}; log:\n{}",
            host.log_tail()
        );
        for name in &live_names {
            assert!(
                !reasons.contains(&format!("partition {name} ")),
                "{name} is on a live broker: {reasons}"
            );
        }
        for reason in body["reasons"].as_array().into_iter().flatten() {
            reasons_seen.insert(reason.as_str().unwrap_or("").to_owned());
        }
        let (status, body) = host.get("/status").expect("/status answers in the outage");
        assert_eq!(status, 200, "{body}");
        let problems = body["pipelines"][0]["problems"].to_string();
        assert!(
            names_offline(&problems),
            "/status names {offline_names:?}: {body}"
        );
        let (status, body) = host
            .get("/healthz")
            .expect("/healthz answers in the outage");
        assert_eq!(
            status, 200,
            "a broker outage is no reason to restart: {body}"
        );

        // After a warm-up: the outage's first batch went through.
        let sample = host.sample();
        let rdk = rdk_threads(&host);
        assert_eq!(
            rdk.iter().filter(|n| *n == "rdk:main").count(),
            clients,
            "no Kafka client made or lost: {rdk:?}"
        );
        // librdkafka retires a broker's thread once the metadata stops
        // listing the broker (a fenced broker is not listed): the dead
        // broker's threads may go; no other librdkafka thread may change.
        assert_eq!(
            without(&rdk, &victim_thread),
            without(&before_rdk, &victim_thread),
            "librdkafka's threads, but for the dead broker's: {rdk:?}, before the kill {before_rdk:?}"
        );
        warm.get_or_insert(sample);
        samples.push(sample);
        thread_counts.insert((sample.threads, rdk.len()));
        std::thread::sleep(Duration::from_secs(2));
    }
    let outage_lines: Vec<String> = host.log_lines().split_off(log_base);
    let outage = killed.elapsed();
    let warm = warm.expect("at least one batch in the outage");
    let max_rss = samples.iter().map(|s| s.rss).max().unwrap_or(0);
    eprintln!(
        "outage of {outage:?}: {batches} batches of 20 to partitions {live:?}, each committed \
         within {slowest:?} (the first in {:?}); threads {} ({} librdkafka's) before, (total, librdkafka's) \
         {thread_counts:?} during; RSS {} KiB before, {} KiB \
         after warm-up, max {} KiB; fds {} -> {}; readiness said {reasons_seen:?}; {} log lines:\n{}",
        times.first().copied().unwrap_or_default(),
        before.threads,
        before_rdk.len(),
        before.rss >> 10,
        warm.rss >> 10,
        max_rss >> 10,
        before.fds,
        samples.last().map_or(0, |s| s.fds),
        outage_lines.len(),
        outage_lines.join("\n")
    );
    assert!(
        max_rss < warm.rss + (5 << 20),
        "RSS grew {} KiB during the outage",
        (max_rss - warm.rss) >> 10
    );
    // The host's own threads (all but librdkafka's) are as many as before
    // the kill, but for one of tokio's blocking pool that may come and go
    // (it runs blocking calls on demand and retires when idle); the total
    // is that less the dead broker's retired librdkafka threads.
    let own = before.threads - before_rdk.len();
    assert!(
        thread_counts
            .iter()
            .all(|(total, rdk)| (total - rdk).abs_diff(own) <= 1),
        "{own} threads of the host's own before the kill; (total, librdkafka's) during the outage: {thread_counts:?}"
    );
    // Rate-limited. Each kind of line (the same text but for numbers)
    // passes at most once per interval: librdkafka's once per 30 s per
    // client (the host's limiter, by facility and level), the host's own
    // once per 10 s; a partition's loss is one line, not one per
    // statistics interval. The total allows a few more kinds than the
    // dozen lines seen here; unlimited, the trapping inputs alone (two a
    // batch, some 45 in the outage) would pass it.
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for line in &outage_lines {
        *kinds.entry(log_kind(line)).or_default() += 1;
    }
    let secs = outage.as_secs() as usize;
    let most = |kind: &str| {
        if kind.contains(" librdkafka: ") {
            secs / 30 + 1
        } else {
            secs / 10 + 1
        }
    };
    let flooding: Vec<_> = kinds.iter().filter(|(k, n)| **n > most(k)).collect();
    assert!(flooding.is_empty(), "log lines repeated: {flooding:?}");
    assert!(
        outage_lines.len() <= 30,
        "{} log lines in {outage:?} of outage:\n{}",
        outage_lines.len(),
        outage_lines.join("\n")
    );
    assert!(
        !outage_lines
            .iter()
            .any(|l| l.contains("Partitions revoked")),
        "the host keeps its assignment through the outage: {}",
        outage_lines.join("\n")
    );
    assert!(
        outage_lines
            .iter()
            .any(|l| l.contains("the others keep flowing")),
        "the partition's loss is logged: {}",
        outage_lines.join("\n")
    );

    // The broker comes back: its partitions resume, in the same process.
    cluster.restart(victim_node);
    let back = Instant::now();
    host.wait_status("/readyz", 200, Duration::from_secs(60));
    eprintln!(
        "/readyz ready {:?} after the broker was back",
        back.elapsed()
    );
    let last: Vec<Input> = (next..next + 300)
        .map(|i| {
            let mut input = Input::new(format!("k{i}"), format!("v{i}"));
            input.partition = Some(i32::try_from(i % 3).expect("partition"));
            input
        })
        .collect();
    producer.send_all(&input, &last);
    inputs.extend(last);
    let ends = high_watermarks(&cluster.bootstrap(), &input);
    assert_eq!(
        ends.values().sum::<i64>(),
        inputs.len() as i64,
        "every input is in the topic: {ends:?}"
    );
    let took = client::wait_committed(&cluster.bootstrap(), &group, &input, &ends, WAIT, || {
        host.assert_running();
    });
    eprintln!("everything committed {took:?} after the last batch");
    assert_eq!(host.pid(), pid, "the same process throughout");
    assert_eq!(
        rdk_threads(&host)
            .iter()
            .filter(|n| *n == "rdk:main")
            .count(),
        clients
    );
    let log = host.log_lines().join("\n");
    assert!(
        log.contains("Partition available again"),
        "the recovery is logged: {log}"
    );
    let status = host.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");

    let counts = client::key_counts_to_end(&cluster.bootstrap(), &[&output, &dlq]);
    let t = client::tally(&inputs, &counts[0], &counts[1]);
    client::assert_complete("broker loss, replication factor 1", &t);
    let traps = inputs
        .iter()
        .filter(|i| i.value.as_deref() == Some(b"unwrap-none"))
        .count();
    assert_eq!(
        t.dead_keys, traps,
        "every trapping input dead-lettered: {t:?}"
    );
}

/// The same loss with the topics replicated (3 replicas, 2 in sync
/// required), under a steady stream: a node SIGKILLed and restarted, then
/// every node restarted in turn (SIGTERM: a controlled shutdown), each
/// back in every ISR before the next. Nothing is lost, and the longest
/// pause in commits is measured.
#[test]
fn replicated_topics_survive_a_broker_death_and_a_rolling_restart() {
    let mut cluster = Cluster::start(3, &[("auto.create.topics.enable", "false")]);
    let name = crate::support::unique("incident-rf3");
    let [input, output, dlq] = ["in", "out", "dlq"].map(|t| format!("{name}-{t}"));
    let group = format!("{name}-group");
    for topic in [&input, &output, &dlq] {
        cluster.create_topic(topic, 3, 3, &[("min.insync.replicas", "2")]);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let topics = [input.as_str(), output.as_str(), dlq.as_str()];
    let (mut host, _) = start_host(&cluster, dir.path(), &group, topics, "chaos");
    host.wait_status("/readyz", 200, WAIT);
    let pid = host.pid();

    let stop = Arc::new(AtomicBool::new(false));
    let feeder = feed(cluster.bootstrap(), input.clone(), stop.clone());
    let monitor = watch_commits(
        cluster.bootstrap(),
        group.clone(),
        input.clone(),
        stop.clone(),
    );
    let flow = |host: &mut HostProcess, d: Duration| {
        let started = Instant::now();
        while started.elapsed() < d {
            host.assert_running();
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let mut events: Vec<(Instant, String)> = Vec::new();
    flow(&mut host, Duration::from_secs(10));

    // A node dies mid-stream: the leader of input partition 0.
    let all: Vec<&str> = vec![&input, &output, &dlq, OFFSETS_TOPIC];
    let offsets = cluster.partitions(OFFSETS_TOPIC);
    let coordinator = offsets
        .get(&coordinator_partition(&group, offsets.len() as i32))
        .and_then(|p| p.leader);
    let leader = cluster
        .leader(&input, 0)
        .expect("input partition 0 has a leader");
    let victim = cluster.node_of(leader).expect("a broker of ours");
    eprintln!(
        "killing broker {leader} (leader of {input}/0; the group coordinator is broker {coordinator:?})"
    );
    cluster.kill(victim);
    let killed = Instant::now();
    events.push((killed, format!("broker {leader} was killed")));
    loop {
        host.assert_running();
        let moved = all.iter().all(|t| {
            let state = cluster.partitions(t);
            !state.is_empty()
                && state
                    .values()
                    .all(|p| p.leader.is_some_and(|l| l != leader) && !p.isr.contains(&leader))
        });
        if moved {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "partitions still on the killed broker {leader} after 60 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "leadership left the killed broker in {:?}",
        killed.elapsed()
    );
    flow(&mut host, Duration::from_secs(5));
    events.push((Instant::now(), format!("broker {leader} was restarted")));
    cluster.restart(victim);
    wait_in_sync(&cluster, &all, &mut host);

    // A rolling restart under load.
    let rolling = Instant::now();
    for node in 0..cluster.len() {
        flow(&mut host, Duration::from_secs(3));
        let broker = cluster.broker_id(node);
        events.push((Instant::now(), format!("broker {broker} was stopped")));
        let status = cluster.stop(node);
        assert_eq!(
            status.code(),
            Some(143),
            "node {node} stopped cleanly: {status}"
        );
        events.push((Instant::now(), format!("broker {broker} was restarted")));
        cluster.restart(node);
        wait_in_sync(&cluster, &all, &mut host);
    }
    flow(&mut host, Duration::from_secs(5));

    stop.store(true, Ordering::Relaxed);
    let inputs = feeder.join().expect("the feeding thread");
    let ends = high_watermarks(&cluster.bootstrap(), &input);
    assert_eq!(
        ends.values().sum::<i64>(),
        inputs.len() as i64,
        "every input is in the topic once (an idempotent producer): {ends:?}"
    );
    let took = client::wait_committed(&cluster.bootstrap(), &group, &input, &ends, WAIT, || {
        host.assert_running();
    });
    let commits = monitor.join().expect("the commit watcher");
    host.wait_status("/readyz", 200, Duration::from_secs(60));
    assert_eq!(host.pid(), pid, "the same process throughout");
    // What is measured: the group's committed offsets, summed over the
    // input's partitions, read every 250 ms by a client of the test's
    // while the feed runs at 100 records a second. The longest pause is
    // the longest time that sum did not move: it covers a dead leader's
    // fencing (the 6 s broker session) before its partitions move, during
    // which the feed itself cannot write to them; the group coordinator
    // moving; the host's clients finding new leaders; any slow commit. The
    // longest pause "with records waiting" counts only time in which the
    // input's high watermarks were ahead of the commits: the host's share.
    let (longest, at) = longest_pause(&commits, false);
    let (waiting, _) = longest_pause(&commits, true);
    let (in_rolling, _) = longest_pause(
        &commits
            .iter()
            .copied()
            .filter(|c| c.at >= rolling)
            .collect::<Vec<_>>(),
        false,
    );
    // What happened in the pause (or, if nothing, last before it).
    let end = at + longest;
    let mut during: Vec<&str> = events
        .iter()
        .filter(|(t, _)| (at..=end).contains(t))
        .map(|(_, e)| e.as_str())
        .collect();
    if during.is_empty() {
        during.extend(
            events
                .iter()
                .rev()
                .find(|(t, _)| *t < at)
                .map(|(_, e)| e.as_str()),
        );
    }
    let log = host.log_lines();
    let rebalances = log
        .iter()
        .filter(|l| l.contains("Partitions revoked"))
        .count();
    eprintln!(
        "{} inputs committed ({took:?} after the feed stopped); {} commit samples; longest \
         pause in commits {longest:?} (around: {during:?}), {waiting:?} with records \
         waiting in the topic, {in_rolling:?} in the rolling restart; {rebalances} revocations in the host's log",
        inputs.len(),
        commits.len()
    );
    assert!(
        commits.len() > 100,
        "the watcher read the offsets throughout: {} samples",
        commits.len()
    );
    assert!(
        longest < Duration::from_secs(60),
        "commits paused for {longest:?} (around: {during:?})"
    );
    let status = host.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");

    let counts = client::key_counts_to_end(&cluster.bootstrap(), &[&output, &dlq]);
    let t = client::tally(&inputs, &counts[0], &counts[1]);
    client::assert_complete("replicated, broker death and rolling restart", &t);
    let traps = inputs
        .iter()
        .filter(|i| i.value.as_deref() == Some(b"unwrap-none"))
        .count();
    assert_eq!(
        t.dead_keys, traps,
        "every trapping input dead-lettered: {t:?}"
    );
}

/// A running host on `cluster` for `[input, output, dlq]` with `plugin`;
/// returns it and its config file (kept in `dir`).
fn start_host(
    cluster: &Cluster,
    dir: &Path,
    group: &str,
    topics: [&str; 3],
    plugin: &str,
) -> (HostProcess, PathBuf) {
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let config =
        crate::support::kafka::config_text(&cluster.bootstrap(), group, topics, plugin, "");
    // A consumer session longer than the brokers' (6 s): a broker that
    // dies stays in the in-sync replicas of the group coordinator's
    // partition until it is fenced, and the coordinator's writes wait for
    // it; with the tests' usual 6 s the consumer's heartbeats went
    // unanswered for its whole session (the coordinator itself alive), and
    // the host lost its assignment to a rebalance. (librdkafka's default
    // is 45 s, and at most `max.poll.interval.ms`, 20 s here.)
    let session = r#""session.timeout.ms" = "6000""#;
    assert!(
        config.contains(session),
        "the test config sets {session}: {config}"
    );
    let mut config = config.replace(session, r#""session.timeout.ms" = "15000""#);
    config.push_str(&format!("\n[admin]\nlisten = \"{admin}\"\n"));
    let path = dir.join("sandpiper.toml");
    std::fs::write(&path, config).expect("writing the host config");
    let host = HostProcess::start(&path, &dir.join("host.log"), admin);
    (host, path)
}

/// `sandpiper check --config <config> <extra>`: exit code and stdout.
fn check(config: &Path, extra: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandpiper"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .args(extra)
        .env("NO_COLOR", "1")
        .output()
        .expect("running sandpiper check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Produces `record` to `topic` with a client that lets the broker create
/// the topic (the tests' `Producer` never does), and waits for it.
fn produce_auto_creating(brokers: &str, topic: &str, record: &Input) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("auto-creating producer");
    let mut r = BaseRecord::<[u8], [u8]>::to(topic);
    if let Some(key) = &record.key {
        r = r.key(key.as_slice());
    }
    if let Some(value) = &record.value {
        r = r.payload(value.as_slice());
    }
    producer
        .send(r)
        .map_err(|(e, _)| e)
        .expect("queueing the first record");
    producer
        .flush(Duration::from_secs(60))
        .expect("the first record is delivered");
}

/// Waits until every partition of `topic` (at least `at_least`) has a leader.
fn wait_led(
    cluster: &Cluster,
    topic: &str,
    at_least: usize,
) -> BTreeMap<i32, crate::support::apache::PartitionState> {
    let started = Instant::now();
    loop {
        let state = cluster.partitions(topic);
        if state.len() >= at_least && state.values().all(|p| p.leader.is_some()) {
            return state;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{topic} without a leader for every partition after 60 s: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Replica lists of `topic`'s partitions, from the metadata.
fn replicas(cluster: &Cluster, topic: &str) -> BTreeMap<i32, Vec<i32>> {
    let md = cluster.metadata().expect("metadata");
    md.topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions())
        .map(|p| (p.id(), p.replicas().to_vec()))
        .collect()
}

/// Creates `name` with its replicas where `assignment` says (one list of
/// broker ids per partition) and waits until every partition has a leader.
fn create_topic_on(cluster: &Cluster, name: &str, assignment: &[&[i32]], configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .expect("admin client");
    let partitions = i32::try_from(assignment.len()).expect("partitions");
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Variable(assignment));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the admin client");
    for result in runtime
        .block_on(admin.create_topics([&topic], &options))
        .unwrap_or_else(|e| panic!("creating topic {name}: {e}"))
    {
        if let Err((topic, code)) = result {
            panic!("creating topic {topic}: {code}");
        }
    }
    wait_led(cluster, name, assignment.len());
    let placed = replicas(cluster, name);
    let want: BTreeMap<i32, Vec<i32>> = (0..partitions)
        .map(|p| (p, assignment[p as usize].to_vec()))
        .collect();
    assert_eq!(placed, want, "{name} placed as asked");
}

/// High watermarks of every partition of `topic`.
fn high_watermarks(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer = offsets_reader(brokers, "sandpiper-test-reader");
    client::partitions(&consumer, topic)
        .into_iter()
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"));
            (p, high)
        })
        .collect()
}

/// A client that reads offsets and never joins `group`.
fn offsets_reader(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        // A node down is expected here: quiet.
        .set("log_level", "2")
        .create()
        .expect("offsets reader")
}

/// The partition of the offsets topic (of `partitions`) whose leader
/// coordinates `group`: Kafka's `Utils.abs(group.hashCode()) % partitions`,
/// with Java's `String.hashCode`.
fn coordinator_partition(group: &str, partitions: i32) -> i32 {
    let hash = group
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions.max(1)
}

/// Names of the host's librdkafka threads, sorted (each client has one
/// `rdk:main`, plus threads per broker).
fn rdk_threads(host: &HostProcess) -> Vec<String> {
    let mut names: Vec<String> = host
        .thread_names()
        .into_iter()
        .filter(|n| n.starts_with("rdk:"))
        .collect();
    names.sort();
    names
}

/// `names` without `name`.
fn without(names: &[String], name: &str) -> Vec<String> {
    names.iter().filter(|n| *n != name).cloned().collect()
}

/// Waits until every partition of `topics` has every replica in sync.
fn wait_in_sync(cluster: &Cluster, topics: &[&str], host: &mut HostProcess) {
    let started = Instant::now();
    loop {
        host.assert_running();
        let lagging: Vec<String> = topics
            .iter()
            .flat_map(|t| {
                let replicas = replicas(cluster, t);
                let state = cluster.partitions(t);
                let mut out = Vec::new();
                if state.is_empty() {
                    out.push(format!("{t}: no metadata"));
                }
                for (p, s) in state {
                    let mut want = replicas.get(&p).cloned().unwrap_or_default();
                    want.sort_unstable();
                    if s.leader.is_none() || s.isr != want {
                        out.push(format!("{t}/{p}: {s:?}, replicas {want:?}"));
                    }
                }
                out
            })
            .collect();
        if lagging.is_empty() {
            eprintln!(
                "every replica in sync {:?} after the node was back",
                started.elapsed()
            );
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "replicas not in sync 90 s after the restart: {lagging:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Produces inputs `k0`, `k1`... to `topic` at about 100 a second (every
/// hundredth traps the `chaos` plugin) until `stop`; returns them once
/// every one is acknowledged.
fn feed(
    brokers: String,
    topic: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Input>> {
    std::thread::spawn(move || {
        let mut producer = Producer::new(&brokers);
        let mut inputs = Vec::new();
        let started = Instant::now();
        for i in 0usize.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let value = if i % 100 == 50 {
                "unwrap-none".to_owned()
            } else {
                format!("v{i}")
            };
            let input = Input::new(format!("k{i}"), value);
            producer.send(&topic, &input);
            inputs.push(input);
            // Paced by the clock, not by the sends: a stalled leader
            // queues records and the feed catches up when it moves.
            let due = started + Duration::from_millis(10 * (i as u64 + 1));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        producer.flush();
        inputs
    })
}

/// One reading of the group's progress.
#[derive(Debug, Clone, Copy)]
struct Commits {
    at: Instant,
    committed: i64,
    /// Sum of the input's high watermarks (the last known where a
    /// partition's leader did not answer).
    high: i64,
}

/// Reads the group's committed offsets and the input's high watermarks
/// every 250 ms until `stop`.
fn watch_commits(
    brokers: String,
    group: String,
    topic: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Commits>> {
    std::thread::spawn(move || {
        let consumer = offsets_reader(&brokers, &group);
        let partitions = client::partitions(&consumer, &topic);
        let mut highs: BTreeMap<i32, i64> = BTreeMap::new();
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition(&topic, *p);
            }
            let committed = consumer.committed_offsets(tpl, Duration::from_secs(2));
            for p in &partitions {
                if let Ok((_, high)) = consumer.fetch_watermarks(&topic, *p, Duration::from_secs(2))
                {
                    highs.insert(*p, high);
                }
            }
            // A reading counts only when it has every partition's offset.
            let read: Option<BTreeMap<i32, i64>> = committed.ok().and_then(|tpl| {
                tpl.elements()
                    .iter()
                    .map(|e| {
                        e.error().ok()?;
                        Some((e.partition(), e.offset().to_raw().unwrap_or(-1).max(0)))
                    })
                    .collect()
            });
            if let Some(read) = read.filter(|r| r.len() == partitions.len()) {
                samples.push(Commits {
                    at: Instant::now(),
                    committed: read.values().sum(),
                    high: highs.values().sum(),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        samples
    })
}

/// The longest time no reading showed the commits move, and when it
/// began; with `waiting`, only while records waited (the high watermarks
/// ahead of the committed offsets).
fn longest_pause(samples: &[Commits], waiting: bool) -> (Duration, Instant) {
    let Some(first) = samples.first() else {
        return (Duration::ZERO, Instant::now());
    };
    let (mut longest, mut began) = (Duration::ZERO, first.at);
    let (mut since, mut committed) = (first.at, first.committed);
    for s in samples {
        // A reading that failed is no reading: a pause lasts until a
        // reading shows progress (an upper bound, by up to 250 ms).
        if s.at - since > longest {
            (longest, began) = (s.at - since, since);
        }
        if s.committed > committed || (waiting && s.high <= s.committed) {
            (since, committed) = (s.at, s.committed);
        }
    }
    (longest, began)
}

/// A log line without its timestamp and numbers, to group repeats.
fn log_kind(line: &str) -> String {
    line.split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_ascii_digit())
        .collect()
}
