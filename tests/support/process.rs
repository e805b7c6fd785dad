//! The `sandpiper` binary as a child process, the way an orchestrator runs
//! it: a config file, stderr to a log file, SIGKILL or SIGTERM, and its
//! resident memory, threads and file descriptors read from `/proc`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running host. Dropping it kills (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct HostProcess {
    child: Child,
    /// Its stderr (the logs), appended to across restarts.
    log: PathBuf,
    /// Where the log ended when this run started (this run's lines follow).
    log_start: u64,
    pub admin: SocketAddr,
}

impl HostProcess {
    /// `sandpiper run --config <config>`, logs appended to `log`. `admin` is
    /// the config's `[admin] listen` address.
    pub fn start(config: &Path, log: &Path, admin: SocketAddr) -> Self {
        Self::start_with_env(config, log, admin, &[])
    }

    /// [`HostProcess::start`] with extra environment variables.
    pub fn start_with_env(
        config: &Path,
        log: &Path,
        admin: SocketAddr,
        env: &[(&str, &str)],
    ) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("host log file");
        let log_start = file.metadata().map_or(0, |m| m.len());
        let child = Command::new(env!("CARGO_BIN_EXE_sandpiper"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("SANDPIPER_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("SANDPIPER_LOG_FORMAT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("starting the sandpiper binary");
        Self {
            child,
            log: log.to_owned(),
            log_start,
            admin,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap: no shutdown, no commit, no goodbye to the group.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (graceful stop), then waits up to `timeout` for the exit.
    pub fn terminate(mut self, timeout: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the host") {
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "the host did not exit within {timeout:?} of SIGTERM: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waiting for the host")
    }

    /// Panics with the log's tail if the host has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!("the host exited ({status}): {}", self.log_tail());
        }
    }

    /// This run's log lines.
    pub fn log_lines(&self) -> Vec<String> {
        let mut text = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            use std::io::Seek as _;
            let _ = f.seek(std::io::SeekFrom::Start(self.log_start));
            let _ = f.read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The last lines of this run's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let lines = self.log_lines();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Resident set size, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid())).map_or(0, |d| d.count())
    }

    /// Names of the threads (`rdk:*` are librdkafka's, `tokio-runtime-w`
    /// tokio's workers and blocking pool).
    pub fn thread_names(&self) -> Vec<String> {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| {
                d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                    .map(|n| n.trim().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// One resource sample.
    pub fn sample(&self) -> Sample {
        Sample {
            rss: self.rss_bytes(),
            threads: self.threads(),
            fds: self.fds(),
        }
    }

    /// `GET path` on the admin listener: (status, body), or `None` while it
    /// does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, serde_json::Value)> {
        http_get(self.admin, path)
    }

    /// Polls `path` until it answers `want`; returns the body.
    pub fn wait_status(&mut self, path: &str, want: u16, timeout: Duration) -> serde_json::Value {
        let started = Instant::now();
        loop {
            self.assert_running();
            let answer = self.get(path);
            if let Some((status, body)) = &answer
                && *status == want
            {
                return body.clone();
            }
            assert!(
                started.elapsed() < timeout,
                "{path} did not answer {want} within {timeout:?}: last {answer:?}; log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child's resources at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub rss: u64,
    pub threads: usize,
    pub fds: usize,
}

/// A plain blocking HTTP/1.1 GET; `None` when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, serde_json::Value)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    Some((
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    ))
}
