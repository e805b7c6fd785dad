//! A rolling upgrade on Apache Kafka: three hosts in one consumer group
//! replaced one at a time (SIGTERM, then a new process with the same
//! config) while records flow. Every input is accounted for by an
//! independent client; duplicates and the longest pause in commits are
//! measured.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::apache::Cluster;
use crate::support::client;
use crate::support::load::{CommitWatch, Feeder, around, assigned, longest_pause, traps};
use crate::support::process::HostProcess;
use crate::support::tansu::free_port;

/// Long enough for any step here on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(120);

/// How long a host may take to exit after SIGTERM: a pod's grace period
/// would be above the host's `shutdown_timeout_secs` (10 here).
const GRACE: Duration = Duration::from_secs(20);

/// Input partitions, shared by the three hosts.
const PARTITIONS: i32 = 6;

/// Records produced per second, and every how many one traps.
const RATE: u64 = 300;
const TRAP_EVERY: usize = 100;

/// No topic created by accident.
const BROKER: &[(&str, &str)] = &[("auto.create.topics.enable", "false")];

/// The pipeline's topics and group.
#[derive(Debug, Clone)]
struct Topics {
    input: String,
    output: String,
    dlq: String,
    group: String,
}

impl Topics {
    fn create(cluster: &Cluster, prefix: &str) -> Self {
        let name = crate::support::unique(prefix);
        let topics = Self {
            input: format!("{name}-in"),
            output: format!("{name}-out"),
            dlq: format!("{name}-dlq"),
            group: format!("{name}-group"),
        };
        for topic in [&topics.input, &topics.output, &topics.dlq] {
            cluster.create_topic(topic, PARTITIONS, 1, &[]);
        }
        topics
    }
}

/// Starts `sandpiper run` as host `name`: the shared config (one pipeline
/// with the `chaos` plugin, short group timeouts) and an admin listener on
/// a port of its own, as a new pod would have.
fn start_host(cluster: &Cluster, topics: &Topics, dir: &Path, name: &str) -> HostProcess {
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let text = format!(
        "{}\n[admin]\nlisten = \"{admin}\"\n",
        crate::support::kafka::config_text(
            &cluster.bootstrap(),
            &topics.group,
            [&topics.input, &topics.output, &topics.dlq],
            "chaos",
            "",
        )
    );
    let config: PathBuf = dir.join(format!("{name}.toml"));
    std::fs::write(&config, text).expect("writing a host config");
    HostProcess::start(&config, &dir.join(format!("{name}.log")), admin)
}

/// Waits until the hosts between them have every input partition, none
/// twice, each host some, the same for a whole second (a partition being
/// revoked is still shown by its host). Returns each host's share.
fn wait_split(hosts: &mut [HostProcess], input: &str) -> Vec<BTreeSet<String>> {
    const STABLE: Duration = Duration::from_secs(1);
    let want: BTreeSet<String> = (0..PARTITIONS).map(|p| format!("{input}/{p}")).collect();
    let started = Instant::now();
    let mut seen: Option<(Vec<BTreeSet<String>>, Instant)> = None;
    loop {
        let mut each = Vec::new();
        for host in hosts.iter_mut() {
            host.assert_running();
            each.push(assigned(host).unwrap_or_default());
        }
        let union: BTreeSet<String> = each.iter().flatten().cloned().collect();
        let total: usize = each.iter().map(BTreeSet::len).sum();
        if union == want && total == want.len() && each.iter().all(|s| !s.is_empty()) {
            match &seen {
                Some((split, since)) if *split == each => {
                    if since.elapsed() >= STABLE {
                        return each;
                    }
                }
                _ => seen = Some((each.clone(), Instant::now())),
            }
        } else {
            seen = None;
        }
        assert!(
            started.elapsed() < WAIT,
            "the group did not settle on {} hosts within {WAIT:?}: {each:?}; logs:\n{}",
            hosts.len(),
            hosts
                .iter()
                .map(HostProcess::log_tail)
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The warnings and errors in the host logs of `dir`, but the plugin's
/// expected failures and the one-replica preflight notes.
fn warnings(dir: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    let mut lines = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "log"))
    {
        let name = file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let text = std::fs::read_to_string(file).unwrap_or_default();
        lines.extend(
            text.lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .filter(|l| !l.contains("Preflight:") && !l.contains("Record failed"))
                .map(|l| format!("{name}: {l}")),
        );
    }
    lines
}

/// Three hosts share a 6-partition input; each is replaced in turn the way
/// a rolling upgrade does it (SIGTERM, exit 0, a new process with the same
/// config, ready and the partitions spread over three hosts again, then
/// the next) while about 300 records a second flow, 1% trapping. Nothing
/// is lost, a graceful handover replays nothing, and the longest pause in
/// the group's commits is reported and bounded.
#[test]
fn rolling_upgrade_of_three_hosts_under_load_loses_nothing() {
    const WHAT: &str = "rolling upgrade";
    let cluster = Cluster::start(1, BROKER);
    let topics = Topics::create(&cluster, "upgrade");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut events: Vec<(Instant, String)> = Vec::new();
    let mut event = |e: String| {
        eprintln!("{WHAT}: {e}");
        events.push((Instant::now(), e));
    };

    let feeder = Feeder::start(
        cluster.bootstrap(),
        topics.input.clone(),
        RATE,
        Some(TRAP_EVERY),
    );
    let watch = CommitWatch::start(
        cluster.bootstrap(),
        topics.group.clone(),
        topics.input.clone(),
    );
    let started = Instant::now();
    let names = ["a", "b", "c"];
    let mut hosts: Vec<HostProcess> = names
        .iter()
        .map(|n| start_host(&cluster, &topics, dir.path(), &format!("{n}1")))
        .collect();
    for host in &mut hosts {
        host.wait_status("/readyz", 200, WAIT);
    }
    let split = wait_split(&mut hosts, &topics.input);
    event(format!("a1, b1, c1 ready and sharing the input: {split:?}"));
    std::thread::sleep(Duration::from_secs(3));

    // One host at a time: stopped, replaced, ready, the group whole again.
    let mut steps = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let old = hosts.remove(i);
        let stopping = Instant::now();
        let status = old.terminate(GRACE);
        let stopped = stopping.elapsed();
        event(format!(
            "{name}1 stopped with SIGTERM in {stopped:?} ({status})"
        ));
        assert!(status.success(), "{name}1: graceful stop: {status}");

        let starting = Instant::now();
        let mut new = start_host(&cluster, &topics, dir.path(), &format!("{name}2"));
        new.wait_status("/readyz", 200, WAIT);
        let ready = starting.elapsed();
        hosts.insert(i, new);
        let split = wait_split(&mut hosts, &topics.input);
        let whole = starting.elapsed();
        event(format!(
            "{name}2 ready {ready:?} after its start, the group whole after {whole:?}: {split:?}"
        ));
        steps.push((*name, stopped, ready, whole));
        std::thread::sleep(Duration::from_secs(3));
    }

    let (inputs, producer) = feeder.finish();
    event(format!("feed stopped after {} inputs", inputs.len()));
    let readings = watch.finish();
    let ends = producer.ends(&topics.input);
    assert_eq!(
        ends.values().sum::<i64>(),
        i64::try_from(inputs.len()).expect("inputs fit an i64"),
        "every input is in the topic once: {ends:?}"
    );
    let drained = client::wait_committed(
        &cluster.bootstrap(),
        &topics.group,
        &topics.input,
        &ends,
        WAIT,
        || hosts.iter_mut().for_each(HostProcess::assert_running),
    );
    for (host, name) in hosts.drain(..).zip(names) {
        let status = host.terminate(GRACE);
        assert!(status.success(), "{name}2: graceful stop: {status}");
    }

    let (overall, at) = longest_pause(&readings, |r| r.committed.values().sum());
    let mut worst = (Duration::ZERO, at, 0);
    for p in 0..PARTITIONS {
        let (pause, began) =
            longest_pause(&readings, |r| r.committed.get(&p).copied().unwrap_or(0));
        if pause > worst.0 {
            worst = (pause, began, p);
        }
    }
    let (partition_pause, partition_at, partition) = worst;

    let counts = client::key_counts_to_end(&cluster.bootstrap(), &[&topics.output, &topics.dlq]);
    let t = client::tally(&inputs, &counts[0], &counts[1]);
    let logged = warnings(dir.path());
    eprintln!(
        "{WHAT}: {} inputs in {:?}; {} commit readings; longest pause in the group's commits \
         {overall:?} (around: {:?}); longest pause of one partition {partition_pause:?} \
         (partition {partition}, around: {:?}); per replacement (host, stop, ready, group \
         whole): {steps:?}; drained {drained:?} after the feed stopped; {t:?}; {} warnings or \
         errors in the host logs",
        inputs.len(),
        started.elapsed(),
        readings.len(),
        around(&events, at, overall),
        around(&events, partition_at, partition_pause),
        logged.len(),
    );
    for line in &logged {
        eprintln!("  {line}");
    }
    client::assert_complete(WHAT, &t);
    assert_eq!(
        t.dead_keys,
        traps(&inputs),
        "every trapping input dead-lettered: {t:?}"
    );
    assert!(
        readings.len() > 50,
        "the watcher read the offsets throughout: {} readings",
        readings.len()
    );
    assert!(
        overall < Duration::from_secs(30),
        "{WHAT}: the group's commits paused for {overall:?}"
    );
    assert_eq!(
        t.duplicates, 0,
        "a graceful handover replays nothing: {t:?}"
    );
}
