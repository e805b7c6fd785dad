//! Consumer groups on Apache Kafka, the reference broker: hosts scaled
//! 1 → 3 → 1 (one SIGKILLed, one stopped with SIGTERM) under a steady
//! stream, with the classic group protocol and with KIP-848's consumer
//! protocol; one host SIGKILLed five times; a fleet deploy through a
//! compacted control topic reaching a host started later; dead letters kept
//! byte for byte. An independent client produces the inputs and reads the
//! results to the topics' high watermarks: every test ends in a tally.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::{Offset, Timestamp, TopicPartitionList};

use crate::support::apache::Cluster;
use crate::support::client::{self, Input};
use crate::support::load::{CommitWatch, Feeder, around, assigned, longest_pause, traps};
use crate::support::process::HostProcess;
use crate::support::tansu::free_port;

/// Long enough for any of these scenarios on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(180);

/// The admin token of every host here (deploys over HTTP need one).
const TOKEN: &str = "groups-test-token";

/// Broker settings: no topic created by accident, and KIP-848 groups with
/// the same 6 s session (and 500 ms heartbeat) the classic hosts ask for,
/// so that both protocols notice a SIGKILLed member equally soon (the
/// broker's defaults are 45 s and 5 s, and a member cannot ask for less).
const BROKER: &[(&str, &str)] = &[
    ("auto.create.topics.enable", "false"),
    ("group.consumer.session.timeout.ms", "6000"),
    ("group.consumer.min.session.timeout.ms", "6000"),
    ("group.consumer.heartbeat.interval.ms", "500"),
    ("group.consumer.min.heartbeat.interval.ms", "500"),
];

/// The group protocol the hosts use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// The classic protocol: the host's `cooperative-sticky` assignor, a
    /// 6 s session the member asks for.
    Classic,
    /// KIP-848 (`group.protocol = "consumer"`): the broker assigns and
    /// keeps the session; the classic-only settings are left out.
    Consumer,
}

impl Protocol {
    /// Lines of `[kafka.consumer_properties]` choosing the protocol.
    fn consumer_properties(self) -> &'static str {
        match self {
            Self::Classic => {
                "\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\""
            }
            Self::Consumer => "\"group.protocol\" = \"consumer\"",
        }
    }
}

/// One pipeline's topics and group.
#[derive(Debug, Clone)]
struct Topics {
    input: String,
    output: String,
    dlq: String,
    group: String,
}

impl Topics {
    /// Creates input, output and dead-letter topics of `partitions`
    /// partitions each (one replica).
    fn create(cluster: &Cluster, prefix: &str, partitions: i32) -> Self {
        let name = crate::support::unique(prefix);
        let topics = Self {
            input: format!("{name}-in"),
            output: format!("{name}-out"),
            dlq: format!("{name}-dlq"),
            group: format!("{name}-group"),
        };
        for topic in [&topics.input, &topics.output, &topics.dlq] {
            cluster.create_topic(topic, partitions, 1, &[]);
        }
        topics
    }
}

/// What a host runs.
#[derive(Debug, Clone, Copy)]
struct Spec<'a> {
    protocol: Protocol,
    plugin: &'a Path,
    /// `[deploy] control_topic`, if any.
    control: Option<&'a str>,
}

/// A host's config file (written in `dir`), log and admin address.
#[derive(Debug, Clone)]
struct HostFiles {
    config: PathBuf,
    log: PathBuf,
    admin: SocketAddr,
}

impl HostFiles {
    /// Writes the config of host `name`: one pipeline `test` on `topics`,
    /// short group timeouts, the plugin file never watched (a new version
    /// comes only through the API or the control topic).
    fn write(cluster: &Cluster, topics: &Topics, dir: &Path, name: &str, spec: Spec<'_>) -> Self {
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let control = spec
            .control
            .map(|t| format!("control_topic = \"{t}\"\n"))
            .unwrap_or_default();
        let text = format!(
            r#"shutdown_timeout_secs = 10
[kafka]
brokers = "{brokers}"
group = "{group}"
[kafka.properties]
"statistics.interval.ms" = "1000"
"topic.metadata.refresh.interval.ms" = "2000"
[kafka.consumer_properties]
{protocol}
"max.poll.interval.ms" = "20000"
"auto.commit.interval.ms" = "200"

[[pipeline]]
name = "test"
inputs = ["{input}"]
output = "{output}"
dead_letter = "{dlq}"
plugin = "{plugin}"

[admin]
listen = "{admin}"
token = "{TOKEN}"

[deploy]
watch = false
{control}"#,
            brokers = cluster.bootstrap(),
            group = topics.group,
            protocol = spec.protocol.consumer_properties(),
            input = topics.input,
            output = topics.output,
            dlq = topics.dlq,
            plugin = spec.plugin.display(),
        );
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, text).expect("writing a host config");
        Self {
            config,
            log: dir.join(format!("{name}.log")),
            admin,
        }
    }

    /// `sandpiper run` with this config (the log is appended to).
    fn start(&self) -> HostProcess {
        HostProcess::start(&self.config, &self.log, self.admin)
    }
}

/// Waits until `hosts` between them have the `partitions` partitions of
/// `input`, none twice, shared evenly (as both protocols' assignors share
/// them: a host's count differs from another's by one at most), the same
/// for a whole second (a partition being revoked is still shown by its
/// host). Returns each host's share and when it was first seen.
fn wait_split(
    hosts: &mut [HostProcess],
    input: &str,
    partitions: i32,
) -> (Vec<BTreeSet<String>>, Instant) {
    const STABLE: Duration = Duration::from_secs(1);
    let want: BTreeSet<String> = (0..partitions).map(|p| format!("{input}/{p}")).collect();
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
        let (least, most) = (
            each.iter().map(BTreeSet::len).min().unwrap_or(0),
            each.iter().map(BTreeSet::len).max().unwrap_or(0),
        );
        if union == want && total == want.len() && least > 0 && most - least <= 1 {
            match &seen {
                Some((split, since)) if *split == each => {
                    if since.elapsed() >= STABLE {
                        return (each, *since);
                    }
                }
                _ => seen = Some((each.clone(), Instant::now())),
            }
        } else {
            seen = None;
        }
        assert!(
            started.elapsed() < WAIT,
            "the group did not settle on {} host(s) within {WAIT:?}: {each:?}; logs:\n{}",
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

/// Records a host consumed (`/status`).
fn consumed(host: &HostProcess) -> u64 {
    host.get("/status")
        .and_then(|(_, body)| body["pipelines"][0]["consumed"].as_u64())
        .unwrap_or(0)
}

/// The warnings and errors in the host logs of `dir` (but the expected
/// ones), each kind once (numbers and timestamps left out), with how often
/// it came.
fn warnings(dir: &Path) -> Vec<String> {
    let mut kinds: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "log"))
    {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            // Expected here: one replica per topic, and the plugin's failures.
            .filter(|l| !l.contains("Preflight:") && !l.contains("Record failed"))
        {
            let kind: String = line
                .split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .filter(|c| !c.is_ascii_digit())
                .collect();
            let name = file
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            kinds
                .entry(kind)
                .or_insert_with(|| (0, format!("{name}: {line}")))
                .0 += 1;
        }
    }
    kinds
        .into_values()
        .map(|(n, first)| format!("{n}x {first}"))
        .collect()
}

/// Reports the warnings and errors of the host logs in `dir`.
fn report_warnings(what: &str, dir: &Path) {
    let lines = warnings(dir);
    eprintln!(
        "{what}: {} kinds of warning or error in the host logs",
        lines.len()
    );
    for line in lines {
        eprintln!("  {line}");
    }
}

/// Hosts A, then B and C (1 → 3), then B SIGKILLed and C stopped (3 → 1),
/// records flowing from a producer thread throughout: everything is
/// committed, nothing is lost, the longest pause in commits is reported.
fn scaled_one_three_one_with_a_sigkill(protocol: Protocol, what: &str) {
    const PARTITIONS: i32 = 6;
    let cluster = Cluster::start(1, BROKER);
    let topics = Topics::create(&cluster, "groups-scale", PARTITIONS);
    let dir = tempfile::tempdir().expect("temp dir");
    let plugin = crate::support::plugin("chaos");
    let spec = Spec {
        protocol,
        plugin: &plugin,
        control: None,
    };
    let files: Vec<HostFiles> = ["a", "b", "c"]
        .iter()
        .map(|n| HostFiles::write(&cluster, &topics, dir.path(), n, spec))
        .collect();
    let mut events: Vec<(Instant, String)> = Vec::new();
    let mut event = |e: String| {
        eprintln!("{what}: {e}");
        events.push((Instant::now(), e));
    };

    let feeder = Feeder::start(cluster.bootstrap(), topics.input.clone(), 500, Some(100));
    let watch = CommitWatch::start(
        cluster.bootstrap(),
        topics.group.clone(),
        topics.input.clone(),
    );
    let started = Instant::now();
    let mut hosts = vec![files[0].start()];
    event("host A started".into());
    wait_split(&mut hosts, &topics.input, PARTITIONS);
    event(format!("A has all {PARTITIONS} partitions"));
    std::thread::sleep(Duration::from_secs(5));

    // 1 → 3.
    hosts.push(files[1].start());
    hosts.push(files[2].start());
    let joined = Instant::now();
    event("hosts B and C started".into());
    let (split, at) = wait_split(&mut hosts, &topics.input, PARTITIONS);
    let settled = at - joined;
    event(format!(
        "settled on three hosts {settled:?} after B and C started: {split:?}"
    ));
    std::thread::sleep(Duration::from_secs(5));
    let work: Vec<u64> = hosts.iter().map(consumed).collect();
    assert!(
        work.iter().all(|n| *n > 0),
        "every host consumed records: {work:?}"
    );

    // 3 → 1: B SIGKILLed (its partitions wait for its session to expire),
    // C stopped gracefully (it leaves the group at once).
    let c = hosts.pop().expect("host C");
    let b = hosts.pop().expect("host B");
    b.kill();
    event("host B SIGKILLed".into());
    let status = c.terminate(Duration::from_secs(30));
    event(format!("host C stopped with SIGTERM ({status})"));
    assert!(status.success(), "graceful stop: {status}");
    let shrunk = Instant::now();
    let (_, at) = wait_split(&mut hosts, &topics.input, PARTITIONS);
    let took_over = at - shrunk;
    event(format!(
        "A has all {PARTITIONS} partitions again, {took_over:?} after"
    ));
    std::thread::sleep(Duration::from_secs(5));

    let (inputs, producer) = feeder.finish();
    event(format!("feed stopped after {} inputs", inputs.len()));
    let readings = watch.finish();
    let ends = producer.ends(&topics.input);
    assert_eq!(
        ends.values().sum::<i64>(),
        inputs.len() as i64,
        "every input is in the topic once: {ends:?}"
    );
    let mut a = hosts.pop().expect("host A");
    let drained = client::wait_committed(
        &cluster.bootstrap(),
        &topics.group,
        &topics.input,
        &ends,
        WAIT,
        || a.assert_running(),
    );

    // The longest time the group's commits (summed over partitions) did
    // not move, and the longest any one partition's did not, while records
    // flowed to every partition (about 80 a second each).
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
    let log = a.log_lines();
    let revocations = log
        .iter()
        .filter(|l| l.contains("Partitions revoked"))
        .count();
    // A's view of the rebalances, to read with the pauses.
    for line in log.iter().filter(|l| {
        l.contains("Partitions assigned")
            || l.contains("Partitions revoked")
            || l.contains("Revoked partition")
    }) {
        eprintln!("{what}: A: {line}");
    }
    eprintln!(
        "{what}: {} inputs in {:?}; {} commit readings; longest pause in the group's commits \
         {overall:?} (around: {:?}); longest pause of one partition {partition_pause:?} \
         (partition {partition}, around: {:?}); 1 → 3 settled in {settled:?}, 3 → 1 in \
         {took_over:?}; drained {drained:?} after the feed stopped; {revocations} revocations \
         in A's log",
        inputs.len(),
        started.elapsed(),
        readings.len(),
        around(&events, at, overall),
        around(&events, partition_at, partition_pause),
    );
    assert!(
        readings.len() > 50,
        "the watcher read the offsets throughout: {} readings",
        readings.len()
    );
    assert!(
        overall < Duration::from_secs(30),
        "{what}: the group's commits paused for {overall:?}"
    );
    assert!(
        partition_pause < Duration::from_secs(60),
        "{what}: partition {partition}'s commits paused for {partition_pause:?}"
    );
    let status = a.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");
    report_warnings(what, dir.path());

    let counts = client::key_counts_to_end(&cluster.bootstrap(), &[&topics.output, &topics.dlq]);
    let t = client::tally(&inputs, &counts[0], &counts[1]);
    client::assert_complete(what, &t);
    assert_eq!(
        t.dead_keys,
        traps(&inputs),
        "every trapping input dead-lettered: {t:?}"
    );
}

#[test]
fn classic_group_scaled_one_three_one_with_a_sigkill_loses_nothing() {
    scaled_one_three_one_with_a_sigkill(Protocol::Classic, "classic group 1 → 3 → 1");
}

#[test]
fn kip848_group_scaled_one_three_one_with_a_sigkill_loses_nothing() {
    scaled_one_three_one_with_a_sigkill(Protocol::Consumer, "KIP-848 group 1 → 3 → 1");
}

/// The host is SIGKILLed at random moments while records flow and
/// restarted each time (tests/broker.rs does the same on Tansu): nothing
/// is lost, replays are counted.
#[test]
fn sigkill_of_the_host_five_times_on_apache_kafka_loses_nothing() {
    let cluster = Cluster::start(1, BROKER);
    let topics = Topics::create(&cluster, "groups-sigkill", 3);
    let dir = tempfile::tempdir().expect("temp dir");
    let plugin = crate::support::plugin("chaos");
    let spec = Spec {
        protocol: Protocol::Classic,
        plugin: &plugin,
        control: None,
    };
    let files = HostFiles::write(&cluster, &topics, dir.path(), "host", spec);
    let feeder = Feeder::start(cluster.bootstrap(), topics.input.clone(), 800, Some(100));
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut host = files.start();
    for kill in 1..=5 {
        // Assigned and connected: records are flowing into this host.
        host.wait_status("/readyz", 200, Duration::from_secs(90));
        let delay = Duration::from_millis(rng.random_range(100..3000));
        std::thread::sleep(delay);
        host.assert_running();
        let committed = client::committed(&cluster.bootstrap(), &topics.group, &topics.input);
        eprintln!(
            "SIGKILL {kill} at {:?}, {delay:?} after ready; committed {committed:?}",
            started.elapsed()
        );
        host.kill();
        host = files.start();
    }
    let (inputs, producer) = feeder.finish();
    let ends = producer.ends(&topics.input);
    assert_eq!(ends.values().sum::<i64>(), inputs.len() as i64, "{ends:?}");
    let took = client::wait_committed(
        &cluster.bootstrap(),
        &topics.group,
        &topics.input,
        &ends,
        WAIT,
        || host.assert_running(),
    );
    eprintln!(
        "{} inputs, all committed {took:?} after the last restart ({:?} in all)",
        inputs.len(),
        started.elapsed()
    );
    let status = host.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");
    report_warnings("five SIGKILLs", dir.path());

    let counts = client::key_counts_to_end(&cluster.bootstrap(), &[&topics.output, &topics.dlq]);
    let t = client::tally(&inputs, &counts[0], &counts[1]);
    client::assert_complete("five SIGKILLs on Apache Kafka", &t);
    assert_eq!(
        t.dead_keys,
        traps(&inputs),
        "every trapping input dead-lettered: {t:?}"
    );
}

/// A plain blocking HTTP/1.1 request with a body and the bearer token:
/// (status, JSON body), or `None` when nothing answers.
fn http_put(addr: SocketAddr, path: &str, body: &[u8]) -> Option<(u16, serde_json::Value)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/wasm\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    Some((
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    ))
}

/// Pipeline `test` as `GET /pipelines` shows it.
fn pipeline(host: &HostProcess) -> serde_json::Value {
    let (status, body) = host.get("/pipelines").expect("/pipelines answers");
    assert_eq!(status, 200, "{body}");
    body["pipelines"][0].clone()
}

/// Waits until the host runs `plugin` (`GET /pipelines`); returns how long.
fn wait_plugin(host: &mut HostProcess, plugin: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        host.assert_running();
        let now = host
            .get("/pipelines")
            .map(|(_, body)| body["pipelines"][0]["plugin"].clone());
        if now.as_ref().and_then(|p| p.as_str()) == Some(plugin) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "still {now:?} after {timeout:?}, expected {plugin}; log:\n{}",
            host.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `component` with a custom section appended: the same plugin (custom
/// sections do not change what it does) with a different digest, hence a
/// new version.
fn with_custom_section(component: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut content = Vec::new();
    leb128(name.len(), &mut content);
    content.extend_from_slice(name.as_bytes());
    content.extend_from_slice(payload);
    let mut bytes = component.to_vec();
    bytes.push(0); // custom section id
    leb128(content.len(), &mut bytes);
    bytes.extend(content);
    bytes
}

/// A fleet of two hosts switches from v1 to v2 through a compacted
/// control topic (a deploy to A alone); a third host, started afterwards
/// with v1 in its config and never deployed to, comes up on v2 from what
/// the topic kept. Records flow throughout and every input is accounted
/// for; per input partition the versions go v1, then v2, never back.
#[test]
fn fleet_deploy_reaches_a_host_started_later_through_the_compacted_control_topic() {
    const PARTITIONS: i32 = 3;
    let cluster = Cluster::start(1, BROKER);
    let topics = Topics::create(&cluster, "groups-fleet", PARTITIONS);
    let control = format!("{}-control", topics.group);
    cluster.create_topic(
        &control,
        1,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("max.message.bytes", "10485760"),
        ],
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let plugin = crate::support::plugin("versioned");
    let v2_bytes = with_custom_section(
        &std::fs::read(&plugin).expect("the versioned plugin"),
        "sandpiper-test-version",
        b"v2",
    );
    let spec = Spec {
        protocol: Protocol::Classic,
        plugin: &plugin,
        control: Some(&control),
    };
    let files: Vec<HostFiles> = ["a", "b", "c"]
        .iter()
        .map(|n| HostFiles::write(&cluster, &topics, dir.path(), n, spec))
        .collect();

    let feeder = Feeder::start(cluster.bootstrap(), topics.input.clone(), 200, None);
    let mut a = files[0].start();
    let mut b = files[1].start();
    a.wait_status("/readyz", 200, WAIT);
    b.wait_status("/readyz", 200, WAIT);
    let v1 = pipeline(&a)["plugin"]
        .as_str()
        .expect("a plugin")
        .to_owned();
    assert!(v1.starts_with("versioned@sha256:"), "{v1}");
    assert_eq!(pipeline(&b)["plugin"], v1.as_str(), "both start on v1");
    std::thread::sleep(Duration::from_secs(3));

    // Deployed to A alone; published; B follows.
    let (status, body) = http_put(
        a.admin,
        "/pipelines/test/plugin?name=versioned-v2",
        &v2_bytes,
    )
    .expect("A's admin API answers");
    assert_eq!(status, 200, "{body}");
    let v2 = body["plugin"].as_str().expect("the new plugin").to_owned();
    assert!(v2.starts_with("versioned-v2@sha256:"), "{v2}");
    assert_eq!(body["previous"], v1.as_str(), "{body}");
    let reached_b = wait_plugin(&mut b, &v2, Duration::from_secs(60));
    let source = |host: &HostProcess| {
        pipeline(host)["history"]
            .as_array()
            .and_then(|h| h.last().cloned())
            .map(|v| v["source"].clone())
            .unwrap_or_default()
    };
    assert_eq!(source(&a), "api");
    assert_eq!(source(&b), "control-topic");
    std::thread::sleep(Duration::from_secs(3));

    // The fleet stops (records keep coming); a new host starts with v1 in
    // its config and only the control topic to learn from.
    for host in [a, b] {
        let status = host.terminate(Duration::from_secs(30));
        assert!(status.success(), "graceful stop: {status}");
    }
    let handed_over = client::committed(&cluster.bootstrap(), &topics.group, &topics.input);
    let mut c = files[2].start();
    let reached_c = wait_plugin(&mut c, &v2, Duration::from_secs(60));
    let listing = pipeline(&c);
    let history: Vec<(String, String)> = listing["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|v| {
            (
                v["plugin"].as_str().unwrap_or("").to_owned(),
                v["source"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [(v2.clone(), "startup".to_owned())],
        "C, its config on v1, started on the v2 the topic holds: {listing}"
    );
    let (_, status_page) = c.get("/status").expect("/status answers");
    assert_eq!(status_page["pipelines"][0]["plugin"], v2.as_str());
    c.wait_status("/readyz", 200, WAIT);
    std::thread::sleep(Duration::from_secs(3));

    let (inputs, producer) = feeder.finish();
    let ends = producer.ends(&topics.input);
    client::wait_committed(
        &cluster.bootstrap(),
        &topics.group,
        &topics.input,
        &ends,
        WAIT,
        || c.assert_running(),
    );
    let status = c.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");
    report_warnings("fleet deploy", dir.path());

    let counts = client::key_counts_to_end(&cluster.bootstrap(), &[&topics.output, &topics.dlq]);
    let t = client::tally(&inputs, &counts[0], &counts[1]);
    client::assert_complete("fleet deploy through the compacted control topic", &t);
    assert_eq!(t.dead_letters, 0, "{t:?}");

    // Which version handled each input, in input order per partition.
    let position: HashMap<Vec<u8>, (i32, i64)> = read_raw(&cluster.bootstrap(), &topics.input)
        .into_iter()
        .map(|r| (r.key.unwrap_or_default(), (r.partition, r.offset)))
        .collect();
    let mut by_partition: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for o in read_raw(&cluster.bootstrap(), &topics.output) {
        let version = o.header_str("sandpiper.plugin").to_owned();
        assert!(
            version == v1 || version == v2,
            "handled by neither version: {version}"
        );
        let (p, offset) = position[&o.key.clone().unwrap_or_default()];
        by_partition.entry(p).or_default().push((offset, version));
    }
    let label = |v: &str| if v == v1 { "v1" } else { "v2" };
    // Runs of one version in offset order: (version, first, last, records).
    let runs = |handled: &[(i64, String)]| {
        let mut runs: Vec<(&str, i64, i64, usize)> = Vec::new();
        for (offset, version) in handled {
            match runs.last_mut() {
                Some(run) if run.0 == label(version) => (run.2, run.3) = (*offset, run.3 + 1),
                _ => runs.push((label(version), *offset, *offset, 1)),
            }
        }
        runs
    };
    let (mut on_v1, mut on_v2, mut stale_on_c) = (0, 0, 0);
    let mut seen = BTreeMap::new();
    for (p, mut handled) in by_partition {
        handled.sort();
        // The fleet (A and B) before the handover, the late host C after
        // it: each goes from v1 to v2 and never back.
        let from = handed_over.get(&p).copied().unwrap_or(0);
        let (fleet, late) = handled.split_at(handled.partition_point(|(o, _)| *o < from));
        for (who, part) in [("the fleet", fleet), ("the late host", late)] {
            let first_v2 = part
                .iter()
                .position(|(_, v)| *v == v2)
                .unwrap_or(part.len());
            assert!(
                part[first_v2..].iter().all(|(_, v)| *v == v2),
                "input partition {p}: {who} went back to v1 after v2: {:?}",
                runs(part)
            );
        }
        stale_on_c += late.iter().filter(|(_, v)| *v == v1).count();
        on_v1 += handled.iter().filter(|(_, v)| *v == v1).count();
        on_v2 += handled.iter().filter(|(_, v)| *v == v2).count();
        seen.insert(p, runs(&handled));
    }
    // The late host reads the control topic to its end before its
    // pipelines start: it runs nothing on its config's v1.
    eprintln!(
        "fleet deploy: v2 reached B {reached_b:?} after the deploy to A, and the late host C \
         {reached_c:?} after its start; {on_v1} outputs on v1, {on_v2} on v2; C handled \
         {stale_on_c} inputs on v1 before it took v2 (offsets committed at the handover \
         {handed_over:?}); per input partition (version, first offset, last, records): {seen:?}"
    );
    assert!(on_v1 > 0 && on_v2 > 0, "v1 {on_v1}, v2 {on_v2}");
    assert_eq!(stale_on_c, 0, "the late host ran v1: {seen:?}");
}

/// Headers as Kafka carries them: UTF-8 names here, values any bytes or null.
type HeaderList = Vec<(String, Option<Vec<u8>>)>;

/// A record read back with everything librdkafka gives of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Raw {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: HeaderList,
    timestamp: Timestamp,
}

impl Raw {
    fn header_str(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("")
    }
}

/// Every record of `topic`, from each partition's beginning to its high
/// watermark as of the call, in offset order per partition.
fn read_raw(brokers: &str, topic: &str) -> Vec<Raw> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sandpiper-test-raw-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("raw reader");
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in client::partitions(&consumer, topic) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"));
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .expect("partition list");
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    consumer.assign(&tpl).expect("assign");
    let started = Instant::now();
    while !ends.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{topic} not read to its high watermarks: {ends:?} left"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if ends
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() + 1 >= *end)
                {
                    ends.remove(&m.partition());
                }
                out.push(Raw {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers: m.headers().map_or_else(Vec::new, |h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    }),
                    timestamp: m.timestamp(),
                });
            }
            Some(Err(error)) => eprintln!("reading {topic}: {error}"),
            None => {}
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

/// A record to produce with its own timestamp.
#[derive(Debug, Clone)]
struct Original {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    headers: HeaderList,
    timestamp: i64,
    /// The `sometimes-trap` plugin traps on it (its value starts `TRAP`).
    fails: bool,
}

/// The hostile records: binary keys (each unique), null and empty values,
/// binary values, header values that are not UTF-8 (and empty, null,
/// repeated names), 200 headers, a 900 KB value; each shape both passing
/// through the plugin and failing in it (where a failing one can have it:
/// the plugin fails on values starting `TRAP`). Plain records around them.
fn hostile(now_ms: i64) -> Vec<Original> {
    let odd_headers: HeaderList = vec![
        ("bin".into(), Some(vec![0xff, 0x00, 0xc3, 0x28])),
        ("empty".into(), Some(Vec::new())),
        ("null".into(), None),
        ("dup".into(), Some(b"first".to_vec())),
        ("dup".into(), Some(b"second".to_vec())),
        (
            "caf\u{e9} \u{2603}".into(),
            Some("\u{1f980}".as_bytes().to_vec()),
        ),
        ("latin-1".into(), Some(b"caf\xe9".to_vec())),
        ("dup".into(), Some(vec![0x80; 3])),
    ];
    let many: HeaderList = (0..200)
        .map(|i| {
            let value = (0..i % 9).map(|j| (0x80 + i * 7 + j) as u8).collect();
            (format!("h{i:03}"), Some(value))
        })
        .collect();
    let big = |prefix: &[u8]| {
        let mut v = prefix.to_vec();
        v.extend((0..900_000 - prefix.len()).map(|i| (i % 251) as u8));
        v
    };
    let shapes: Vec<(&str, Option<Vec<u8>>, HeaderList)> = vec![
        ("null value", None, odd_headers.clone()),
        ("empty value", Some(Vec::new()), odd_headers.clone()),
        (
            "binary value",
            Some(vec![0x00, 0xff, 0xfe, 0x80, 0x0a]),
            odd_headers.clone(),
        ),
        ("odd headers", Some(b"x".to_vec()), odd_headers.clone()),
        ("many headers", Some(vec![0xc3]), many.clone()),
        (
            "900 KB",
            Some(big(b"")),
            vec![("size".into(), Some(b"900000".to_vec()))],
        ),
        (
            "TRAP binary value",
            Some(b"TRAP\x00\xff\xfe\x80\x0a".to_vec()),
            odd_headers.clone(),
        ),
        (
            "TRAP odd headers",
            Some(b"TRAP".to_vec()),
            odd_headers.clone(),
        ),
        (
            "TRAP many headers",
            Some(b"TRAP \xc3".to_vec()),
            many.clone(),
        ),
        ("TRAP no headers", Some(b"TRAP".to_vec()), Vec::new()),
        (
            "TRAP 900 KB",
            Some(big(b"TRAP")),
            vec![("size".into(), Some(b"900000".to_vec()))],
        ),
        ("TRAP 900 KB many headers", Some(big(b"TRAP")), many),
    ];
    let mut records = Vec::new();
    let mut push = |key: Vec<u8>, value: Option<Vec<u8>>, headers| {
        let i = i64::try_from(records.len()).expect("few records");
        let fails = value.as_deref().is_some_and(|v| v.starts_with(b"TRAP"));
        records.push(Original {
            key,
            value,
            headers,
            // An hour ago, a millisecond apart, and never the produce time.
            timestamp: now_ms - 3_600_000 + i,
            fails,
        });
    };
    for i in 0..20u8 {
        push(
            vec![b'p', i],
            Some(format!("plain {i}").into_bytes()),
            Vec::new(),
        );
    }
    for (n, (what, value, headers)) in shapes.into_iter().enumerate() {
        // Binary keys: a NUL, bytes that are not UTF-8, the shape's name.
        let mut key = vec![0x00, 0xff, u8::try_from(n).expect("few shapes"), 0xc3];
        key.extend_from_slice(what.as_bytes());
        push(key, value, headers);
    }
    for i in 0..20u8 {
        push(
            vec![b'q', i, 0xfe],
            Some(format!("plain {i}").into_bytes()),
            Vec::new(),
        );
    }
    records
}

/// Produces `records` to partition 0 of `topic` with their timestamps
/// and waits for the broker's acknowledgements.
fn produce(brokers: &str, topic: &str, records: &[Original]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("test producer");
    for r in records {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len().max(1));
        for (name, value) in &r.headers {
            headers = headers.insert(Header {
                key: name,
                value: value.as_deref(),
            });
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(0)
            .key(r.key.as_slice())
            .timestamp(r.timestamp)
            .headers(headers);
        if let Some(value) = &r.value {
            record = record.payload(value.as_slice());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(50));
                }
                Err((error, _)) => panic!("producing a test input to {topic}: {error}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("flushing the test producer");
}

/// The original's headers as the plugin contract carries them: a null
/// value becomes empty (documented; everything else byte for byte).
fn carried(headers: &[(String, Option<Vec<u8>>)]) -> HeaderList {
    headers
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone().unwrap_or_default())))
        .collect()
}

/// The records that fail in the plugin land in the dead-letter topic with
/// key, value, headers (in order, then the host's `sandpiper.*` ones) and
/// timestamp byte for byte; the others come out of the passthrough plugin
/// with key, value and headers intact. Read with a raw client.
#[test]
fn dead_letters_keep_the_record_byte_for_byte_on_apache_kafka() {
    let cluster = Cluster::start(1, BROKER);
    let topics = Topics::create(&cluster, "groups-bytes", 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let plugin = crate::support::plugin("sometimes-trap");
    let now_ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_millis(),
    )
    .expect("milliseconds fit an i64");
    let records = hostile(now_ms);
    produce(&cluster.bootstrap(), &topics.input, &records);

    // The input topic holds them as sent (the comparison's baseline).
    let stored = read_raw(&cluster.bootstrap(), &topics.input);
    assert_eq!(
        stored.len(),
        records.len(),
        "every input is in the topic once"
    );
    for (r, s) in records.iter().zip(&stored) {
        assert_eq!(
            (Some(&r.key), r.value.as_ref(), &r.headers, s.timestamp),
            (
                s.key.as_ref(),
                s.value.as_ref(),
                &s.headers,
                Timestamp::CreateTime(r.timestamp)
            ),
            "input {:?} stored as sent",
            r.key
        );
    }
    let ends = BTreeMap::from([(0, i64::try_from(records.len()).expect("few records"))]);

    let spec = Spec {
        protocol: Protocol::Classic,
        plugin: &plugin,
        control: None,
    };
    let files = HostFiles::write(&cluster, &topics, dir.path(), "host", spec);
    let mut host = files.start();
    let took = client::wait_committed(
        &cluster.bootstrap(),
        &topics.group,
        &topics.input,
        &ends,
        WAIT,
        || host.assert_running(),
    );
    let (status, _) = host.get("/healthz").expect("admin answers");
    assert_eq!(status, 200, "alive after the hostile records");
    let status = host.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");
    report_warnings("dead letters byte for byte", dir.path());

    let inputs: Vec<Input> = records
        .iter()
        .map(|r| Input {
            key: Some(r.key.clone()),
            value: r.value.clone(),
            ..Input::default()
        })
        .collect();
    let counts = client::key_counts_to_end(&cluster.bootstrap(), &[&topics.output, &topics.dlq]);
    let t = client::tally(&inputs, &counts[0], &counts[1]);
    client::assert_complete("dead letters byte for byte", &t);
    let failing = records.iter().filter(|r| r.fails).count();
    assert_eq!(
        (t.dead_keys, t.dead_letters, t.duplicates),
        (failing, failing, 0),
        "{t:?}"
    );

    let by_key = |raws: Vec<Raw>| -> HashMap<Vec<u8>, Raw> {
        raws.into_iter()
            .map(|r| (r.key.clone().unwrap_or_default(), r))
            .collect()
    };
    let dead = by_key(read_raw(&cluster.bootstrap(), &topics.dlq));
    let outputs = by_key(read_raw(&cluster.bootstrap(), &topics.output));
    let mut checked = (0, 0);
    for (r, s) in records.iter().zip(&stored) {
        let want = carried(&r.headers);
        if r.fails {
            let d = dead
                .get(&r.key)
                .unwrap_or_else(|| panic!("no dead letter for {:?}", r.key));
            assert_eq!(d.value, r.value, "dead letter {:?}: the value", r.key);
            assert_eq!(
                d.timestamp,
                Timestamp::CreateTime(r.timestamp),
                "dead letter {:?}: the original's timestamp",
                r.key
            );
            assert!(
                d.headers.len() > want.len() && d.headers[..want.len()] == want[..],
                "dead letter {:?}: the original's headers first, in order: {:?}",
                r.key,
                d.headers
            );
            let ours: Vec<&str> = d.headers[want.len()..]
                .iter()
                .map(|(k, _)| k.as_str())
                .collect();
            assert!(
                ours.iter().all(|k| k.starts_with("sandpiper.")),
                "then only the host's: {ours:?}"
            );
            let (offset, timestamp) = (s.offset.to_string(), r.timestamp.to_string());
            for (name, value) in [
                ("sandpiper.error.kind", "trap"),
                ("sandpiper.original.topic", topics.input.as_str()),
                ("sandpiper.original.partition", "0"),
                ("sandpiper.original.offset", offset.as_str()),
                ("sandpiper.original.timestamp", timestamp.as_str()),
                ("sandpiper.group", topics.group.as_str()),
                ("sandpiper.pipeline", "test"),
                ("sandpiper.attempts", "1"),
            ] {
                assert_eq!(
                    d.header_str(name),
                    value,
                    "dead letter {:?}: {name} in {ours:?}",
                    r.key
                );
            }
            assert!(
                d.header_str("sandpiper.plugin")
                    .starts_with("sometimes_trap@sha256:"),
                "{ours:?}"
            );
            checked.0 += 1;
        } else {
            let o = outputs
                .get(&r.key)
                .unwrap_or_else(|| panic!("no output for {:?}", r.key));
            let theirs: HeaderList = o
                .headers
                .iter()
                .filter(|(k, _)| !k.starts_with("sandpiper."))
                .cloned()
                .collect();
            assert_eq!(
                (&o.value, &theirs),
                (&r.value, &want),
                "output {:?}: value and headers",
                r.key
            );
            checked.1 += 1;
        }
    }
    eprintln!(
        "dead letters byte for byte: {} inputs committed in {took:?}; {} dead letters and {} \
         outputs compared field by field",
        records.len(),
        checked.0,
        checked.1
    );
}
