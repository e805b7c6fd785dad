//! `chaos`: a hostile plugin for testing the host's sandbox and fault
//! handling. The record's value (UTF-8, trimmed) picks the behaviour; any
//! other value (including a null or non-UTF-8 one) is echoed back
//! ASCII-uppercased exactly like the `uppercase` example, so `chaos` is a
//! normal plugin for normal records.
//!
//! | value               | behaviour                                                             | expected outcome                 |
//! |---------------------|-----------------------------------------------------------------------|----------------------------------|
//! | `panic`             | `panic!("chaos: panic on demand")`                                    | trap `panic`                     |
//! | `unwrap-none`       | `None::<u32>.unwrap()` (black-boxed)                                  | trap `panic`                     |
//! | `divide-by-zero`    | `black_box(1i32) / black_box(0i32)` (Rust panics first)               | trap `panic`                     |
//! | `long-panic`        | a panic whose message is over 3,000 bytes (more than the SDK hook's buffer) | trap `panic`             |
//! | `panic-unhooked`    | restores std's panic hook (no SDK hook), then panics                  | trap `panic` (through `unreachable`) |
//! | `abort`             | `std::process::abort()`: no panic report                              | trap `unreachable`               |
//! | `exit`              | `std::process::exit(3)` in the middle of a record                     | trap `exit`                      |
//! | `oob`               | volatile `u64` read at `0xFFFF_FFF0`                                  | trap `memory-out-of-bounds`      |
//! | `null-read`         | volatile `u64` read at address 0; one output, value = decimal read    | success (no null page in Wasm)   |
//! | `loop`              | endless loop of volatile work                                         | `timeout`                        |
//! | `memory-bomb`       | allocates and touches 1 MiB blocks forever, keeping them all          | `out-of-memory`                  |
//! | `recursion`         | unbounded non-tail recursion                                          | trap `stack-overflow`            |
//! | `fanout:N`          | N outputs, each with a 16-byte value                                  | success, or `output-limit`       |
//! | `big-output:N`      | one output with an N-byte value                                       | success, or `output-limit`       |
//! | `retry`             | `Err(Failure::retry("chaos: dependency down"))`                       | retried, then `retries-exhausted`|
//! | `reject`            | `Err(Failure::reject("chaos: invalid payload"))`                      | `rejected`                       |
//! | `stdout-flood`      | 1,000,000 lines to stdout (panics if a write fails), then one output (the record echoed uppercased) | success |
//! | `stderr-then-panic` | 100 lines `line N` to stderr, then `panic!("chaos: after stderr")`    | trap `panic`, stderr tail        |
//! | `read-file`         | `fs::read_to_string("/etc/passwd")`; one output `denied: <error>` or `leaked: <first 20 chars>` | success (`denied: ...`) |
//! | `read-env`          | counts env vars, reads `HOME`; one output `env: <count> <HOME or none>` | success (`env: 0 none`)        |
//! | `log`               | logs one line at each level through the host, then passes through     | success                          |
//! | `config`            | one output whose value is `config::entries()` as a JSON object       | success                          |
//! | `flaky:K`           | `retry` on the first K-1 calls for this record (counted per instance), then echoes | retried, then success |
//! | `spin:MS`           | busy-waits MS milliseconds (monotonic clock), then echoes             | success, or `timeout`            |
//!
//! `N` is a decimal `usize`; a malformed `N` rejects the record.
//!
//! A record with the header `chaos: describe`, whatever its value, gets one
//! output whose value is every field of the message as JSON (to check that
//! records reach the plugin intact).
//!
//! Notes on the traps:
//! - `recursion` keeps its frames out of linear memory (no address-taken
//!   locals), so it exhausts the engine's native Wasm stack (`stack-overflow`)
//!   rather than Rust's 1 MiB shadow stack in linear memory, whose overflow
//!   would wrap below address 0 and show up as `memory-out-of-bounds`.
//! - Addresses come through `black_box` so the compiler cannot see a null or
//!   out-of-range pointer and replace the read with something else.

use std::hint::black_box;
use std::io::Write;

use sandpiper_sdk::{Failure, Handler, Message, Output, config};

struct Chaos;

impl Handler for Chaos {
    fn handle(msg: Message) -> Result<Vec<Output>, Failure> {
        if msg.header("chaos") == Some(b"describe") {
            return Ok(vec![Output::value(describe(&msg))]);
        }
        let command = msg.value_str().map(str::trim).unwrap_or_default();
        match command {
            "panic" => panic!("chaos: panic on demand"),
            "long-panic" => panic!("chaos: {} long panic", "x".repeat(3000)),
            "panic-unhooked" => {
                drop(std::panic::take_hook());
                panic!("chaos: panic without the SDK's hook")
            }
            "abort" => std::process::abort(),
            "exit" => std::process::exit(3),
            "unwrap-none" => {
                let x: Option<u32> = black_box(None);
                let n = x.unwrap();
                Ok(vec![Output::value(n.to_string())])
            }
            "divide-by-zero" => {
                let n = black_box(1i32) / black_box(0i32);
                Ok(vec![Output::value(n.to_string())])
            }
            "oob" => {
                let n = read_u64(0xFFFF_FFF0);
                Ok(vec![Output::value(n.to_string())])
            }
            "null-read" => {
                let n = read_u64(0);
                Ok(vec![Output::value(n.to_string())])
            }
            "loop" => spin_forever(),
            "memory-bomb" => memory_bomb(),
            "recursion" => {
                let n = recurse(black_box(1), black_box(0x5eed));
                Ok(vec![Output::value(n.to_string())])
            }
            "retry" => Err(Failure::retry("chaos: dependency down")),
            "reject" => Err(Failure::reject("chaos: invalid payload")),
            "stdout-flood" => {
                stdout_flood();
                Ok(vec![uppercase(msg)])
            }
            "stderr-then-panic" => {
                for n in 1..=100 {
                    eprintln!("line {n}");
                }
                panic!("chaos: after stderr")
            }
            "read-file" => {
                let value = match std::fs::read_to_string("/etc/passwd") {
                    Ok(text) => format!("leaked: {}", text.chars().take(20).collect::<String>()),
                    Err(e) => format!("denied: {e}"),
                };
                Ok(vec![Output::value(value)])
            }
            "read-env" => {
                let count = std::env::vars().count();
                let home = std::env::var("HOME").unwrap_or_else(|_| "none".to_string());
                Ok(vec![Output::value(format!("env: {count} {home}"))])
            }
            "log" => {
                sandpiper_sdk::log::trace("chaos: trace");
                sandpiper_sdk::log::debug("chaos: debug");
                sandpiper_sdk::log::info("chaos: info");
                sandpiper_sdk::log::warn("chaos: warn");
                sandpiper_sdk::log::error("chaos: error");
                sandpiper_sdk::info!("chaos: offset {} of {}", msg.offset, msg.topic);
                Ok(vec![Output::from_message(msg)])
            }
            "config" => {
                let object: serde_json::Map<String, serde_json::Value> = config::entries()
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect();
                Ok(vec![Output::value(
                    serde_json::Value::Object(object).to_string(),
                )])
            }
            _ => {
                if let Some(n) = command.strip_prefix("fanout:") {
                    let n = parse_count(n)?;
                    Ok((0..n)
                        .map(|i| Output::value(format!("{i:016}").into_bytes()))
                        .collect())
                } else if let Some(k) = command.strip_prefix("flaky:") {
                    let k = parse_count(k)?;
                    let calls = flaky_calls(&msg);
                    if calls < k {
                        Err(Failure::retry(format!("chaos: flaky, call {calls} of {k}")))
                    } else {
                        Ok(vec![uppercase(msg)])
                    }
                } else if let Some(ms) = command.strip_prefix("spin:") {
                    let ms = parse_count(ms)?;
                    let started = std::time::Instant::now();
                    while started.elapsed() < std::time::Duration::from_millis(ms as u64) {
                        black_box(0u64);
                    }
                    Ok(vec![uppercase(msg)])
                } else if let Some(n) = command.strip_prefix("big-output:") {
                    let n = parse_count(n)?;
                    Ok(vec![Output::value(vec![b'x'; n])])
                } else {
                    Ok(vec![uppercase(msg)])
                }
            }
        }
    }
}

/// How many times this instance has seen this record (topic, partition, offset).
fn flaky_calls(msg: &Message) -> usize {
    use std::collections::HashMap;
    use std::sync::Mutex;
    /// Calls per (topic, partition, offset).
    type Calls = HashMap<(String, i32, i64), usize>;
    static CALLS: Mutex<Option<Calls>> = Mutex::new(None);
    let mut calls = CALLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let n = calls
        .get_or_insert_with(HashMap::new)
        .entry((msg.topic.clone(), msg.partition, msg.offset))
        .or_insert(0);
    *n += 1;
    *n
}

/// The `uppercase` example's behaviour.
fn uppercase(msg: Message) -> Output {
    let mut out = Output::from_message(msg);
    if let Some(value) = out.value.as_mut() {
        value.make_ascii_uppercase();
    }
    out
}

fn parse_count(raw: &str) -> Result<usize, Failure> {
    raw.trim()
        .parse()
        .map_err(|e| Failure::reject(format!("chaos: bad count {raw:?}: {e}")))
}

/// Reads a `u64` at a raw linear-memory address the compiler cannot see.
#[inline(never)]
fn read_u64(addr: usize) -> u64 {
    let ptr = black_box(addr) as *const u64;
    // SAFETY: deliberately none; this is the hostile plugin. In Wasm a read
    // either returns whatever linear memory holds there or traps.
    unsafe { core::ptr::read_volatile(ptr) }
}

#[inline(never)]
fn spin_forever() -> ! {
    let mut i: u64 = 0;
    loop {
        i = black_box(i).wrapping_add(1);
    }
}

#[inline(never)]
fn memory_bomb() -> ! {
    const MIB: usize = 1 << 20;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; MIB];
        // Touch every page so the memory is really used.
        for i in (0..MIB).step_by(4096) {
            block[i] = (hoard.len() as u8).wrapping_add(1);
        }
        hoard.push(black_box(block));
        black_box(&hoard);
    }
}

/// Unbounded recursion that LLVM cannot turn into a loop: the result of the
/// recursive call is rotated by a depth-dependent amount before it is
/// returned. It only stops when `depth` wraps around to 0 (4 billion calls).
#[inline(never)]
fn recurse(depth: u32, salt: u64) -> u64 {
    if depth == 0 {
        return salt;
    }
    let inner = recurse(depth.wrapping_add(1), salt.wrapping_mul(31).wrapping_add(7));
    inner.rotate_left(depth % 61) ^ salt
}

/// Every field of `msg` as JSON; bytes as arrays of numbers.
fn describe(msg: &Message) -> String {
    serde_json::json!({
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "timestamp": msg.timestamp,
        "key": msg.key,
        "value": msg.value,
        "headers": msg.headers,
    })
    .to_string()
}

/// One million lines on stdout. Same semantics as `println!` (a failed write
/// panics, so a host that errors once its capture buffer is full fails the
/// record and the test notices) but written in large batches: a few thousand
/// host calls instead of a million, so the flood itself stays far inside any
/// sensible deadline.
fn stdout_flood() {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    for n in 0..1_000_000u32 {
        writeln!(out, "chaos: stdout flood line {n}").expect("chaos: failed printing to stdout");
    }
    out.flush().expect("chaos: failed flushing stdout");
}

sandpiper_sdk::export!(Chaos);
