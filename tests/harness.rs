//! `sandpiper plugin test` and `plugin inspect`, run as a user would.

use std::process::Command;

use crate::support;

fn sandpiper() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sandpiper"))
}

#[test]
fn plugin_test_prints_one_result_per_record_and_a_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"topic":"orders","partition":1,"offset":7,"key":"k","value":"hello","headers":[["h","v"]]}"#, "\n",
            r#"{"value":"unwrap-none"}"#, "\n",
            "\n",
            r#"{"value":{"base64":"/wD+"},"headers":{"bin":{"base64":"AAE="}}}"#, "\n",
            r#"{"value":"reject"}"#, "\n",
        ),
    )
    .expect("write");
    let out = sandpiper()
        .args(["plugin", "test"])
        .arg(support::plugin("chaos"))
        .arg("--input")
        .arg(&input)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "plugin failures are not host errors: {out:?}"
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0]["status"], "ok");
    assert_eq!(lines[0]["topic"], "orders");
    assert_eq!(lines[0]["offset"], 7);
    assert_eq!(lines[0]["outputs"][0]["value"], "HELLO");
    assert_eq!(lines[0]["outputs"][0]["headers"][0][0], "h");
    assert_eq!(lines[1]["status"], "failed");
    assert_eq!(lines[1]["failure"]["kind"], "trap");
    assert_eq!(lines[1]["failure"]["trap"], "panic");
    assert!(
        lines[1]["failure"]["stderr"]
            .as_str()
            .unwrap_or("")
            .contains("None")
    );
    // Non-UTF-8 bytes round-trip as base64 (0xff is not ASCII: unchanged by uppercase).
    assert_eq!(lines[2]["outputs"][0]["value"]["base64"], "/wD+");
    assert_eq!(lines[2]["outputs"][0]["headers"][0][1], "\u{0}\u{1}");
    assert_eq!(lines[3]["failure"]["kind"], "rejected");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("4 records: 2 succeeded"), "{stderr}");
    assert!(
        stderr.contains("trap 1") && stderr.contains("rejected 1"),
        "{stderr}"
    );
}

#[test]
fn plugin_test_limit_flags_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"value\":\"fanout:3\"}\n{\"value\":\"loop\"}\n").expect("write");
    let out = sandpiper()
        .args(["plugin", "test"])
        .arg(support::plugin("chaos"))
        .args(["--max-outputs", "2", "--timeout-ms", "50", "--input"])
        .arg(&input)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(r#""kind":"output-limit""#), "{stdout}");
    assert!(stdout.contains(r#""kind":"timeout""#), "{stdout}");
}

#[test]
fn plugin_test_bad_input_names_the_line_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("bad.jsonl");
    std::fs::write(&input, "{\"value\":\"ok\"}\n{\"value\": 12}\n").expect("write");
    let out = sandpiper()
        .args(["plugin", "test"])
        .arg(support::plugin("chaos"))
        .arg("--input")
        .arg(&input)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.jsonl:2"), "{stderr}");
}

#[test]
fn plugin_test_bad_plugin_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{}\n").expect("write");
    let plugin = dir.path().join("broken.wasm");
    std::fs::write(&plugin, "nope").expect("write");
    let out = sandpiper()
        .args(["plugin", "test"])
        .arg(&plugin)
        .arg("--input")
        .arg(&input)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.wasm") && stderr.contains("not WebAssembly"),
        "{stderr}"
    );
}

#[test]
fn plugin_inspect_shows_identity_and_interface() {
    let out = sandpiper()
        .args(["plugin", "inspect", "--json"])
        .arg(support::plugin("uppercase"))
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["name"], "uppercase");
    assert_eq!(v["sha256"].as_str().map(str::len), Some(64));
    assert!(v["size"].as_u64().unwrap_or(0) > 1000);
    assert!(v["exports"].to_string().contains("handle"), "{v}");
    assert!(
        v["imports"].to_string().contains("sandpiper:plugin/types"),
        "{v}"
    );
    let text = sandpiper()
        .args(["plugin", "inspect"])
        .arg(support::plugin("uppercase"))
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("sha256:") && text.contains("compiled:"),
        "{text}"
    );
}
