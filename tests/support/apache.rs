//! The reference broker for the tests: Apache Kafka itself, a cluster of
//! KRaft nodes in combined mode (each node both broker and controller),
//! each its own JVM on free loopback ports, killed and reaped when dropped.
//!
//! Tansu (see `tansu.rs`) is a Kafka-compatible broker; this is the one the
//! protocol is defined by, so what passes here passes on the broker users
//! run. `cargo xtask test` installs its jars into `<repo>/.cache/kafka` and
//! passes their directory in `SANDPIPER_KAFKA_LIBS`. A test that needs it
//! and cannot find it fails: it never skips.
//!
//! Everything here blocks (std threads and sleeps, like the child processes
//! it drives); the admin client's futures run on a small runtime of their
//! own, so call it from plain `#[test]`s, not from inside a tokio runtime.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::metadata::Metadata;

use super::root;

/// Where `cargo xtask test` puts the jars when `SANDPIPER_KAFKA_LIBS` is unset.
pub const DEFAULT_LIBS: &str = ".cache/kafka/4.4.0/libs";

/// How long a node may take to start (and a cluster to see all its
/// brokers): JVMs start slowly on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a graceful stop may take before it counts as hung.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The JVM's flags: small heaps (three nodes and the host share a small
/// machine), the serial collector (no GC threads competing for 2 cores),
/// and only the quick JIT tier (start-up matters more than peak speed).
const JVM_FLAGS: &[&str] = &[
    "-Xms128m",
    "-Xmx384m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
];

/// Directory of Kafka's jars; panics (the test fails) when they are missing.
pub fn libs() -> PathBuf {
    let path = std::env::var_os("SANDPIPER_KAFKA_LIBS")
        .map_or_else(|| root().join(DEFAULT_LIBS), PathBuf::from);
    let installed = std::fs::read_dir(&path).is_ok_and(|d| {
        d.filter_map(Result::ok).any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("kafka_2.13-") && name.ends_with(".jar")
        })
    });
    assert!(
        installed,
        "Apache Kafka is not installed at {}: run `cargo xtask test`, which installs it \
         (or set SANDPIPER_KAFKA_LIBS to a directory holding kafka_2.13 and its dependencies)",
        path.display()
    );
    path
}

/// `n` distinct free loopback ports (free when this returns: all are held
/// until the last is found, so none is handed out twice).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// A cluster id: a base64url UUID, as `kafka-storage random-uuid` makes.
fn cluster_id() -> String {
    use base64::Engine as _;
    loop {
        let id =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
        // Kafka never makes ids starting with '-' (they read as a flag).
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// One node: its ports and files, and the JVM while it runs.
#[derive(Debug)]
struct Node {
    id: i32,
    port: u16,
    properties: PathBuf,
    /// The JVM's stdout and stderr, appended to across restarts.
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn log_tail(&self) -> String {
        tail(&self.log, 6000)
    }
}

/// The last `bytes` of a file (for failure messages).
fn tail(path: &Path, bytes: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    text[text.ceil_char_boundary(start)..].to_owned()
}

/// Apache Kafka nodes in KRaft combined mode, one JVM each, all formatted
/// with one cluster id. Node `i` (0-based, the index every method takes) is
/// broker and controller id `i + 1`. Dropping the cluster kills and reaps
/// every JVM; the JVMs also die with the test's thread, however it ends
/// (see [`die_with_parent`]).
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Node>,
    libs: PathBuf,
    /// Properties files, log dirs, logs; removed when dropped.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `nodes` nodes (1 or 3 make a quorum; any count works) with
    /// `props` (broker settings such as `num.partitions`) applied to every
    /// node over the test defaults, and returns once every node serves
    /// requests and the metadata lists all of them. Fails with the node's
    /// log when a JVM exits or the cluster is not up within 90 s.
    pub fn start(nodes: usize, props: &[(&str, &str)]) -> Self {
        assert!(nodes >= 1, "a cluster has at least one node");
        let libs = libs();
        let dir = tempfile::tempdir().expect("temp dir");
        let log4j = dir.path().join("log4j2.properties");
        std::fs::write(&log4j, LOG4J).expect("writing the log4j config");
        let ports = free_ports(2 * nodes);
        let voters = (0..nodes)
            .map(|i| format!("{}@127.0.0.1:{}", i + 1, ports[2 * i + 1]))
            .collect::<Vec<_>>()
            .join(",");
        let replication = nodes.min(3).to_string();
        let mut cluster = Self {
            nodes: Vec::with_capacity(nodes),
            libs,
            dir,
        };
        for i in 0..nodes {
            let id = i32::try_from(i + 1).expect("node id");
            let (port, controller_port) = (ports[2 * i], ports[2 * i + 1]);
            let node_dir = cluster.dir.path().join(format!("node-{id}"));
            std::fs::create_dir_all(node_dir.join("data")).expect("node dir");
            let mut settings: Vec<(String, String)> = vec![];
            let mut set = |k: &str, v: &str| match settings.iter_mut().find(|(key, _)| key == k) {
                Some(entry) => entry.1 = v.to_owned(),
                None => settings.push((k.to_owned(), v.to_owned())),
            };
            set("process.roles", "broker,controller");
            set("node.id", &id.to_string());
            set(
                "listeners",
                &format!("PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}"),
            );
            set(
                "advertised.listeners",
                &format!("PLAINTEXT://127.0.0.1:{port}"),
            );
            set(
                "listener.security.protocol.map",
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            );
            set("controller.listener.names", "CONTROLLER");
            set("inter.broker.listener.name", "PLAINTEXT");
            // A static quorum: every node knows every voter from the start,
            // the same for one node or three (no `--standalone` or
            // `--initial-controllers` dance at format time).
            set("controller.quorum.voters", &voters);
            set("log.dirs", &node_dir.join("data").display().to_string());
            // Internal topics sized for a test cluster: 50 partitions of
            // __consumer_offsets take seconds to create on a small machine.
            set("offsets.topic.replication.factor", &replication);
            set("offsets.topic.num.partitions", "5");
            set("transaction.state.log.replication.factor", &replication);
            set("transaction.state.log.min.isr", "1");
            set("transaction.state.log.num.partitions", "5");
            set(
                "share.coordinator.state.topic.replication.factor",
                &replication,
            );
            set("share.coordinator.state.topic.min.isr", "1");
            set("min.insync.replicas", "1");
            // A group forms at once instead of waiting 3 s for more members.
            set("group.initial.rebalance.delay.ms", "0");
            // A killed node is fenced (its partitions move) within seconds.
            set("broker.heartbeat.interval.ms", "500");
            set("broker.session.timeout.ms", "6000");
            // The log cleaner's 128 MB buffer would take a third of the heap.
            set("log.cleaner.dedupe.buffer.size", "8388608");
            set("num.network.threads", "2");
            set("num.io.threads", "4");
            for (k, v) in props {
                set(k, v);
            }
            let mut text = String::from("# Written by the tests' Apache Kafka support.\n");
            for (k, v) in &settings {
                let _ = writeln!(text, "{k}={v}");
            }
            let properties = node_dir.join("server.properties");
            std::fs::write(&properties, text).expect("writing server.properties");
            cluster.nodes.push(Node {
                id,
                port,
                properties,
                log: node_dir.join("kafka.log"),
                child: None,
            });
        }
        let started = Instant::now();
        cluster.format();
        for node in 0..nodes {
            cluster.spawn(node);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for node in 0..nodes {
            cluster.wait_serving(node, deadline);
        }
        eprintln!(
            "Apache Kafka: {nodes} node(s) formatted and up in {:?} ({})",
            started.elapsed(),
            cluster.bootstrap()
        );
        cluster
    }

    /// Formats every node's log dir with one cluster id (the JVMs run side
    /// by side: each takes a couple of seconds to start).
    fn format(&self) {
        let id = cluster_id();
        let running: Vec<(i32, Child)> = self
            .nodes
            .iter()
            .map(|node| {
                let child = self
                    .java()
                    .args([
                        "kafka.tools.StorageTool",
                        "format",
                        "--cluster-id",
                        &id,
                        "--config",
                    ])
                    .arg(&node.properties)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("starting kafka-storage format");
                (node.id, child)
            })
            .collect();
        for (id, child) in running {
            let out = child
                .wait_with_output()
                .expect("running kafka-storage format");
            assert!(
                out.status.success(),
                "formatting node {id} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// `java <flags> -cp '<libs>/*'`, logging with the cluster's log4j config.
    fn java(&self) -> Command {
        let mut cmd = Command::new("java");
        cmd.args(JVM_FLAGS)
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.path().join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(self.libs.join("*"));
        die_with_parent(&mut cmd);
        cmd
    }

    /// Starts node `node`'s JVM (its log dir must be formatted).
    fn spawn(&mut self, node: usize) {
        assert!(
            self.nodes[node].child.is_none(),
            "node {node} is already running"
        );
        let n = &self.nodes[node];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("node log file");
        let child = self
            .java()
            .arg("kafka.Kafka")
            .arg(&n.properties)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting java (Apache Kafka needs Java 17 or later)");
        self.nodes[node].child = Some(child);
    }

    /// Waits until node `node` answers a metadata request itself (a KRaft
    /// broker opens its listener only once it has caught up with the
    /// metadata and is unfenced) and that metadata lists every node.
    fn wait_serving(&mut self, node: usize, deadline: Instant) {
        let want: Vec<i32> = self.nodes.iter().map(|n| n.id).collect();
        loop {
            if let Some(status) = self.nodes[node].exited() {
                panic!(
                    "Kafka node {node} exited at start ({status}); its log:\n{}",
                    self.nodes[node].log_tail()
                );
            }
            let last = match metadata(&self.nodes[node].bootstrap(), Duration::from_secs(2)) {
                Ok(md) => {
                    let mut ids: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
                    ids.sort_unstable();
                    if ids == want {
                        return;
                    }
                    format!("brokers {ids:?}, want {want:?}")
                }
                Err(error) => error,
            };
            assert!(
                Instant::now() < deadline,
                "Kafka node {node} not up within {START_TIMEOUT:?} ({last}); its log:\n{}",
                self.nodes[node].log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `bootstrap.servers` naming every node (clients skip the ones down).
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(Node::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `bootstrap.servers` naming only the running nodes.
    fn live_bootstrap(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(Node::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The broker (and controller) id of node `node`.
    pub fn broker_id(&self, node: usize) -> i32 {
        self.nodes[node].id
    }

    /// The node whose broker id is `id`.
    pub fn node_of(&self, id: i32) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    pub fn is_running(&mut self, node: usize) -> bool {
        let n = &mut self.nodes[node];
        if n.exited().is_some() {
            n.child = None;
        }
        n.child.is_some()
    }

    pub fn pid(&self, node: usize) -> Option<u32> {
        self.nodes[node].child.as_ref().map(Child::id)
    }

    /// SIGKILL, then reap: no controlled shutdown; the controller fences
    /// the node once its session (6 s) runs out.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (a controlled shutdown: leadership moves first), then waits
    /// up to 60 s for the exit; a node that hangs is killed and the test
    /// fails with its log. A node that shut down cleanly exits with 143
    /// (the JVM's code after SIGTERM once its shutdown hooks have run).
    pub fn stop(&mut self, node: usize) -> ExitStatus {
        let Some(mut child) = self.nodes[node].child.take() else {
            panic!("Kafka node {node} is not running");
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {} failed", child.id());
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("waiting for a Kafka node") {
                return status;
            }
            if started.elapsed() > STOP_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "Kafka node {node} did not stop within {STOP_TIMEOUT:?} of SIGTERM; its log:\n{}",
                    self.nodes[node].log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a stopped or killed node again, with its log dir and ports,
    /// and waits until it serves requests and the metadata lists every node.
    pub fn restart(&mut self, node: usize) {
        if self.is_running(node) {
            panic!("Kafka node {node} is running; kill or stop it first");
        }
        let started = Instant::now();
        self.spawn(node);
        self.wait_serving(node, started + START_TIMEOUT);
        eprintln!("Apache Kafka: node {node} back in {:?}", started.elapsed());
    }

    /// The cluster's metadata, from the running nodes.
    pub fn metadata(&self) -> Result<Metadata, String> {
        metadata(&self.live_bootstrap(), Duration::from_secs(5))
    }

    /// Broker id of `topic`'s `partition`'s leader, as the metadata says
    /// (a killed node stays leader until it is fenced); `None` when the
    /// metadata cannot be had or names no leader.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        self.partitions(topic)
            .get(&partition)
            .and_then(|p| p.leader)
    }

    /// Leader and in-sync replicas of every partition of `topic` (empty
    /// when the metadata cannot be had or lacks the topic).
    pub fn partitions(&self, topic: &str) -> BTreeMap<i32, PartitionState> {
        let Ok(md) = self.metadata() else {
            return BTreeMap::new();
        };
        md.topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions())
            .map(|p| {
                let mut isr = p.isr().to_vec();
                isr.sort_unstable();
                let state = PartitionState {
                    leader: (p.leader() >= 0 && p.error().is_none()).then_some(p.leader()),
                    isr,
                };
                (p.id(), state)
            })
            .collect()
    }

    /// Creates `name` (`configs`: topic settings such as `retention.ms`)
    /// and waits until the metadata shows every partition with a leader.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication: i32,
        configs: &[(&str, &str)],
    ) {
        let admin = self.admin();
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
        for (k, v) in configs {
            topic = topic.set(k, v);
        }
        let options = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(30)))
            .request_timeout(Some(Duration::from_secs(30)));
        let results = block_on(admin.create_topics([&topic], &options))
            .unwrap_or_else(|e| panic!("creating topic {name}: {e}"));
        for result in results {
            if let Err((topic, code)) = result {
                panic!("creating topic {topic}: {code}");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = self.partitions(name);
            let led = state.values().filter(|p| p.leader.is_some()).count();
            if state.len() == partitions as usize && led == state.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "topic {name}: {led} of {partitions} partitions have a leader after 60 s: {state:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sets topic configs of `name` (an operator's fix, such as a larger
    /// `max.message.bytes`). Incremental in effect: AlterConfigs replaces
    /// the topic's dynamic configs, and the tests' topics have no others.
    pub fn alter_topic_config(&self, name: &str, configs: &[(&str, &str)]) {
        let admin = self.admin();
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(name));
        for (k, v) in configs {
            alter = alter.set(k, v);
        }
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
        let results = block_on(admin.alter_configs([&alter], &options))
            .unwrap_or_else(|e| panic!("altering topic {name}: {e}"));
        for result in results {
            if let Err((resource, code)) = result {
                panic!("altering {resource:?}: {code}");
            }
        }
    }

    /// An admin client on the live nodes.
    fn admin(&self) -> AdminClient<DefaultClientContext> {
        ClientConfig::new()
            .set("bootstrap.servers", self.live_bootstrap())
            .create()
            .expect("admin client")
    }

    /// The last lines of node `node`'s log, for failure messages.
    pub fn log_tail(&self, node: usize) -> String {
        self.nodes[node].log_tail()
    }
}

/// Runs an admin request to its end (the tests here are blocking).
fn block_on<F: std::future::Future>(request: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the admin client")
        .block_on(request)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Kill them all before reaping any: no node waits on the others'
        // shutdown.
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.kill();
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.wait();
            }
        }
    }
}

/// One partition as the metadata shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// Broker id of the leader, if there is one.
    pub leader: Option<i32>,
    /// Broker ids of the in-sync replicas, sorted.
    pub isr: Vec<i32>,
}

/// Metadata of every topic, from `bootstrap` (a fresh client: no cached
/// view of a node that has since died).
fn metadata(bootstrap: &str, timeout: Duration) -> Result<Metadata, String> {
    if bootstrap.is_empty() {
        return Err("no node is running".into());
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false")
        // Refused connections while a node starts are expected: quiet.
        .set("log_level", "2")
        .create()
        .map_err(|e| e.to_string())?;
    consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| format!("metadata from {bootstrap}: {e}"))
}

/// The nodes' logging: to stdout (the node's log file), without the
/// configuration dumps that would crowd the start-up lines out of a
/// failure message's tail.
const LOG4J: &str = "\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
";

/// Has the child killed (SIGKILL) when the thread that spawned it ends,
/// which covers a test process that is itself killed (a timeout, ^C): no
/// JVM outlives its test. `PR_SET_PDEATHSIG` fires on the *thread*'s exit,
/// so nodes are started from the test's own thread, which outlives them.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    let parent = libc::pid_t::try_from(std::process::id()).expect("pid");
    // SAFETY: the closure runs in the forked child before exec and calls
    // only `prctl` and `getppid`, both async-signal-safe; it allocates
    // nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl: nothing will send the signal.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}
