//! The benchmark's broker: Tansu (a Kafka-compatible broker written in
//! Rust, memory storage) as a child process on a free loopback port. `cargo
//! xtask bench` installs it and passes its path in `SANDPIPER_TANSU`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

#[derive(Debug)]
pub struct Broker {
    binary: PathBuf,
    port: u16,
    child: Child,
}

impl Broker {
    /// Starts a broker whose output goes to `log`.
    pub fn start(log: &Path) -> anyhow::Result<Self> {
        let binary = std::env::var_os("SANDPIPER_TANSU")
            .map(PathBuf::from)
            .context("SANDPIPER_TANSU is not set: run the benchmark with `cargo xtask bench`, which installs the broker")?;
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&binary)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(log)
                    .with_context(|| format!("creating {}", log.display()))?,
            )
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut broker = Self {
            binary,
            port,
            child,
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = broker.child.try_wait()? {
                bail!("tansu exited at start: {status}");
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("tansu did not listen on {addr} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let out = Command::new(&self.binary)
            .args(["topic", "create", name])
            .args(["--partitions", &partitions.to_string()])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .stdin(Stdio::null())
            .output()
            .context("running tansu topic create")?;
        if !out.status.success() {
            bail!(
                "tansu topic create {name} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Deletes a topic that is done with, so the broker (which keeps every
    /// topic in memory and slows down as it fills) carries only what is
    /// still in use. A failure is reported and otherwise ignored.
    pub fn delete_topic(&self, name: &str) {
        let out = Command::new(&self.binary)
            .args(["topic", "delete", name])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "bench: tansu topic delete {name} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("bench: running tansu topic delete {name}: {e}"),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
