//! Deploying it like a service: `--version`, the systemd unit, the
//! Kubernetes manifests, the container image's Dockerfile, and the alerting
//! rules (deploy/). The tools come from `cargo xtask test`
//! (`install_service_tools`); a missing tool fails its test, naming it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sandpiper::app::App;
use sandpiper::config::Config;
use serde_json::Value;

use crate::support::http::{get_text, request};
use crate::support::kafka::{Env, wait_committed};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// A tool the tests need: `$var`, else `<repo>/.cache/<local>`, else
/// `name` on the PATH; a clear failure otherwise.
fn tool(var: &str, local: Option<&str>, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    if let Some(local) = local.map(|l| root().join(".cache").join(l))
        && local.is_file()
    {
        return local;
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    }) {
        return found;
    }
    panic!(
        "{name} is missing: `cargo xtask test` installs it (or set {var} to its path); \
         this test does not skip without it"
    );
}

/// Runs a command; returns (success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_names_the_version_and_the_commit() {
    let (ok, stdout, stderr) = run(Command::new(env!("CARGO_BIN_EXE_sandpiper")).arg("--version"));
    assert!(ok, "sandpiper --version failed: {stderr}");
    let line = stdout.trim();
    let expected = format!("sandpiper {} (commit ", env!("CARGO_PKG_VERSION"));
    let commit = line
        .strip_prefix(&expected)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{line:?} is not `{expected}COMMIT)`"));
    let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
    let (in_git, head, _) =
        run(Command::new("git")
            .current_dir(root())
            .args(["rev-parse", "--short", "HEAD"]));
    if in_git {
        assert!(
            hash.len() >= 7 && hash.chars().all(|c| c.is_ascii_hexdigit()),
            "{line:?}: not a short commit hash"
        );
        let head = head.trim();
        assert!(
            head.starts_with(hash) || hash.starts_with(head),
            "{line:?} was built from {hash}, the checkout is at {head}"
        );
    } else {
        assert_eq!(commit, "unknown", "built outside a git checkout: {line:?}");
    }
}

/// `key=value` lines of a unit file's sections (comments left out).
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn seconds(value: &str) -> u64 {
    value
        .trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("{value:?}: expected seconds"))
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = read("deploy/systemd/sandpiper.service");
    let config = Config::parse("deploy/sandpiper.toml", &read("deploy/sandpiper.toml"))
        .expect("the sample config is valid");
    let settings = unit_settings(&unit);
    let get = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, want) in [
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "sandpiper"),
        ("ConfigurationDirectory", "sandpiper"),
    ] {
        assert_eq!(get(key), [want], "{key}= in the unit");
    }
    assert!(get("SystemCallFilter").contains(&"@system-service"));
    assert_eq!(get("RestrictAddressFamilies").len(), 1);
    // wasmtime maps the code it compiles executable after writing it.
    assert!(
        get("MemoryDenyWriteExecute").is_empty(),
        "MemoryDenyWriteExecute= would make every plugin load fail"
    );
    let stop = seconds(get("TimeoutStopSec")[0]);
    assert!(
        stop > config.shutdown_timeout_secs,
        "TimeoutStopSec={stop} must exceed shutdown_timeout_secs={}",
        config.shutdown_timeout_secs
    );
    let exec = get("ExecStart")[0];
    assert!(
        exec.contains("run --config /etc/sandpiper/sandpiper.toml"),
        "{exec}"
    );
    let listen: std::net::SocketAddr = config
        .admin
        .as_ref()
        .expect("the sample config has [admin]")
        .listen
        .parse()
        .expect("admin.listen is an address");
    assert!(listen.ip().is_loopback(), "admin on loopback: {listen}");

    // `verify` checks that ExecStart's binary exists: point it at this build.
    let analyze = tool("SANDPIPER_SYSTEMD_ANALYZE", None, "systemd-analyze");
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("sandpiper.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/sandpiper", env!("CARGO_BIN_EXE_sandpiper")),
    )
    .expect("write unit");
    let (ok, stdout, stderr) = run(Command::new(&analyze).arg("verify").arg(&copy));
    assert!(
        ok && !stderr.contains("sandpiper.service"),
        "systemd-analyze verify: {stdout}{stderr}"
    );
}

/// A Kubernetes quantity of memory in bytes (`384Mi`, `1Gi`, `500M`).
fn bytes(quantity: &str) -> u64 {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = quantity.strip_suffix(suffix) {
            return n.parse::<u64>().expect("number") * factor;
        }
    }
    quantity.parse().expect("bytes")
}

#[test]
fn the_kubernetes_manifests_validate() {
    let validator = tool(
        "SANDPIPER_KUBE_VALIDATE",
        Some("tools/kube-validate"),
        "kube-validate",
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    // The plugins' ConfigMap is made from the .wasm files with kubectl.
    let (ok, stdout, stderr) = run(Command::new(&validator)
        .args(["-external", "ConfigMap/sandpiper-plugins"])
        .args(&files));
    assert!(ok, "the manifests do not validate:\n{stderr}");
    let docs: Vec<Value> = serde_json::from_str(&stdout).expect("validator JSON");
    let find = |kind: &str| -> Vec<&Value> {
        docs.iter()
            .filter(|d| d["kind"] == kind)
            .map(|d| &d["object"])
            .collect()
    };
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "ServiceAccount",
    ] {
        assert_eq!(find(kind).len(), 1, "one {kind}");
    }
    let config_map = find("ConfigMap")[0];
    let toml = config_map["data"]["sandpiper.toml"]
        .as_str()
        .expect("the ConfigMap holds sandpiper.toml");
    let config = Config::parse("configmap.yaml", toml).expect("the ConfigMap's config is valid");
    let admin_port = config
        .admin
        .as_ref()
        .expect("[admin]")
        .listen
        .parse::<std::net::SocketAddr>()
        .expect("admin.listen")
        .port();
    assert!(
        config.deploy.control_topic.is_some(),
        "replicas share deploys through the control topic"
    );

    let deployment = find("Deployment")[0];
    let pod = &deployment["spec"]["template"];
    let spec = &pod["spec"];
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > config.shutdown_timeout_secs,
        "terminationGracePeriodSeconds {grace} must exceed shutdown_timeout_secs {}",
        config.shutdown_timeout_secs
    );
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], admin_port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let containers = spec["containers"].as_array().expect("containers");
    assert!(!containers.is_empty());
    for c in containers {
        let name = &c["name"];
        let probe_path = |probe: &str| c[probe]["httpGet"]["path"].as_str().map(str::to_owned);
        assert_eq!(
            probe_path("livenessProbe").as_deref(),
            Some("/healthz"),
            "{name}"
        );
        assert_eq!(
            probe_path("readinessProbe").as_deref(),
            Some("/readyz"),
            "{name}"
        );
        let ports = c["ports"].as_array().expect("ports");
        assert!(
            ports
                .iter()
                .any(|p| p["containerPort"] == admin_port && p["name"] == "admin"),
            "{name}: the admin port {admin_port} of the config"
        );
        let security = &c["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(security["runAsNonRoot"], true, "{name}");
        assert_eq!(
            security["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{name}"
        );
        // Peak RSS in the soak: 128 MiB (BENCHMARKS.md); guest memory and
        // prefetch come on top.
        let limit = bytes(
            c["resources"]["limits"]["memory"]
                .as_str()
                .expect("memory limit"),
        );
        let request = bytes(
            c["resources"]["requests"]["memory"]
                .as_str()
                .expect("memory request"),
        );
        assert!(
            request >= 256 << 20 && limit >= request,
            "{name}: {request} / {limit}"
        );
        // The config it runs is the ConfigMap's, mounted where --config says.
        let args: Vec<&str> = c["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let config_path = args
            .windows(2)
            .find(|w| w[0] == "--config")
            .map(|w| w[1])
            .expect("--config");
        let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
        let mount_of = |path: &str| {
            mounts
                .iter()
                .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("?")))
                .max_by_key(|m| m["mountPath"].as_str().map_or(0, str::len))
                .map(|m| m["name"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_else(|| panic!("{name}: nothing mounted at {path}"))
        };
        let volume = |name: &str| -> &Value {
            spec["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find(|v| v["name"] == name)
                .expect("declared volume")
        };
        assert_eq!(
            volume(&mount_of(config_path))["configMap"]["name"],
            config_map["metadata"]["name"]
        );
        for pipeline in &config.pipelines {
            mount_of(&pipeline.plugin.display().to_string());
        }
        // The admin token comes from the Secret's key.
        let token = c["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == "SANDPIPER_ADMIN_TOKEN")
            .expect("SANDPIPER_ADMIN_TOKEN");
        let key = token["valueFrom"]["secretKeyRef"]["key"]
            .as_str()
            .expect("from a Secret");
        let secret = find("Secret")[0];
        assert!(
            secret["stringData"].get(key).is_some() || secret["data"].get(key).is_some(),
            "the Secret has no key {key}"
        );
    }
    let service = find("Service")[0];
    assert_eq!(service["spec"]["ports"][0]["port"], admin_port);
    assert_eq!(
        spec["serviceAccountName"],
        find("ServiceAccount")[0]["metadata"]["name"]
    );
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let dockerfile = read("deploy/Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.starts_with(' '))
        .collect();
    let has = |prefix: &str| instructions.iter().any(|l| l.starts_with(prefix));
    assert!(
        instructions
            .iter()
            .filter(|l| l.starts_with("FROM "))
            .count()
            >= 2,
        "multi-stage"
    );
    assert!(has("FROM debian:bookworm-slim") || has("FROM gcr.io/distroless/"));
    // Built as CI builds it.
    assert!(dockerfile.contains("cargo xtask build-plugins"));
    assert!(dockerfile.contains("cargo build --release --locked -p sandpiper"));
    assert!(has("USER 65532"), "non-root");
    assert!(has("STOPSIGNAL SIGTERM"));
    assert!(has("EXPOSE 9464"));
    assert!(has("HEALTHCHECK") && dockerfile.contains("GET /healthz"));
    assert!(
        dockerfile.contains("/etc/sandpiper") && dockerfile.contains("/var/lib/sandpiper/plugins")
    );

    let hadolint = tool(
        "SANDPIPER_HADOLINT",
        Some("hadolint/bin/hadolint"),
        "hadolint",
    );
    let (ok, stdout, stderr) = run(Command::new(&hadolint)
        .arg("--no-color")
        .arg(root().join("deploy/Dockerfile")));
    assert!(ok, "hadolint:\n{stdout}{stderr}");
}

#[test]
fn the_alert_rules_pass_promtool() {
    let promtool = tool("SANDPIPER_PROMTOOL", Some("tools/promtool"), "promtool");
    let dir = root().join("deploy/prometheus");
    let (ok, stdout, stderr) =
        run(Command::new(&promtool)
            .current_dir(&dir)
            .args(["check", "rules", "alerts.yml"]));
    assert!(ok, "promtool check rules:\n{stdout}{stderr}");
    let (ok, stdout, stderr) =
        run(Command::new(&promtool)
            .current_dir(&dir)
            .args(["test", "rules", "alerts_test.yml"]));
    assert!(ok, "promtool test rules:\n{stdout}{stderr}");
    // Every alert has a unit test.
    let tests = read("deploy/prometheus/alerts_test.yml");
    for line in read("deploy/prometheus/alerts.yml").lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "alerts_test.yml does not test {name}"
            );
        }
    }
}

/// The `sandpiper_*` names an alerting rule file uses.
fn metric_names(rules: &str) -> Vec<String> {
    let mut names: Vec<String> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("sandpiper_"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether the exposition has `name`: as a sample, or as a family its
/// `# TYPE` line declares (a labelled family with no series yet).
fn exposes(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        if let Some(declared) = l.strip_prefix("# TYPE ") {
            let mut parts = declared.split(' ');
            let (family, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            suffixes.iter().any(|s| format!("{family}{s}") == name)
        } else {
            l.split(['{', ' ']).next() == Some(name)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_in_the_alerts_is_served() {
    let rules = read("deploy/prometheus/alerts.yml");
    let names = metric_names(&rules);
    assert!(names.len() >= 8, "{names:?}");

    let env = Env::new(1, 2);
    let inputs = env.inputs((0..20).map(|i| format!("v{i}").into_bytes()));
    env.produce(&inputs).await;
    let mut config = env.config_with_admin("uppercase", "");
    if let Some(admin) = config.admin.as_mut() {
        admin.token = Some("t".into());
    }
    let app = App::start(config).await.expect("starts");
    let addr = app.admin.expect("admin");
    wait_committed(&app, inputs.len(), Duration::from_secs(60)).await;
    // A refused deploy, so the deploy counter has the series the rule reads.
    let (status, _) = request(
        addr,
        "PUT",
        "/pipelines/test/plugin?name=junk",
        Some("t"),
        b"not a component",
    )
    .await;
    assert!(
        (400..500).contains(&status),
        "a junk deploy is refused: {status}"
    );

    // Lag and committed offsets come with the client's statistics (every 5 s).
    let started = Instant::now();
    let (text, missing) = loop {
        let text = get_text(addr, "/metrics").await;
        let missing: Vec<&String> = names.iter().filter(|n| !exposes(&text, n)).collect();
        let series = ["sandpiper_consumer_lag{", "sandpiper_committed_offset{"];
        let done = missing.is_empty() && series.iter().all(|s| text.contains(s));
        if done || started.elapsed() > Duration::from_secs(30) {
            break (text, missing.into_iter().cloned().collect::<Vec<_>>());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    app.stop().await;
    assert!(
        missing.is_empty(),
        "alerts.yml uses metrics the host does not serve: {missing:?}\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("sandpiper_plugin_deploys_total{")
                && l.contains("result=\"refused\"")),
        "the refused deploy is counted with result=\"refused\":\n{text}"
    );
    // The labels the rules group and filter by are the metrics' own.
    for label in ["pipeline", "topic", "partition", "result"] {
        if rules.contains(label) {
            assert!(text.contains(&format!("{label}=\"")), "label {label}");
        }
    }
}
