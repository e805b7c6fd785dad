//! The runtime contains every guest fault as a typed failure of one record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sandpiper::record::{Failure, FailureKind, Outcome};
use sandpiper::runtime::{
    EngineSettings, Instance, Isolation, Limits, Plugin, PluginError, PluginSettings, Recycle,
    Runtime,
};

use crate::support::{self, load, record};

fn chaos(limits: Limits) -> Instance {
    Instance::new(load(
        "chaos",
        PluginSettings {
            limits,
            ..PluginSettings::default()
        },
    ))
}

/// `chaos` on an engine of its own that meters fuel.
fn chaos_with_fuel(limits: Limits) -> Instance {
    let runtime = Runtime::new(EngineSettings {
        fuel: true,
        ..EngineSettings::default()
    })
    .expect("engine");
    let settings = PluginSettings {
        limits,
        ..PluginSettings::default()
    };
    let plugin = runtime
        .load_file(&support::plugin("chaos"), settings)
        .expect("loads");
    Instance::new(plugin)
}

fn fails(outcome: Outcome) -> Failure {
    match outcome {
        Ok(outputs) => panic!("expected a failure, got {} outputs", outputs.len()),
        Err(failure) => *failure,
    }
}

fn value(outcome: Outcome) -> String {
    let outputs = outcome.expect("expected outputs");
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    String::from_utf8(outputs[0].value.clone().expect("a value")).expect("utf-8")
}

#[test]
fn a_normal_record_is_uppercased_with_key_and_headers() {
    let mut i = chaos(Limits::default());
    let outputs = i.handle(&record(0, "hello")).expect("ok");
    assert_eq!(outputs[0].value.as_deref(), Some(&b"HELLO"[..]));
    assert_eq!(outputs[0].key.as_deref(), Some(&b"k0"[..]));
    assert_eq!(outputs[0].headers, vec![("h".to_owned(), b"v".to_vec())]);
}

#[test]
fn a_panic_is_a_trap_with_its_report_as_the_message() {
    let mut i = chaos(Limits::default());
    let f = fails(i.handle(&record(0, "panic")));
    assert_eq!(f.kind, FailureKind::Trap);
    // The SDK's panic hook exits through WASI after printing the report.
    assert_eq!(f.trap.as_deref(), Some("panic"));
    assert!(
        f.message.starts_with("panicked at ") && f.message.ends_with("chaos: panic on demand"),
        "message: {}",
        f.message
    );
    assert!(
        f.stderr.contains("chaos: panic on demand"),
        "stderr: {}",
        f.stderr
    );
    assert!(!f.backtrace.is_empty(), "a guest backtrace");
    assert_eq!(f.plugin.name(), "chaos");
    // The instance is replaced: the next record is handled.
    assert!(i.handle(&record(1, "hello")).is_ok());
    // A report longer than the hook's buffer is written whole, in pieces.
    let f = fails(i.handle(&record(2, "long-panic")));
    assert_eq!(f.trap.as_deref(), Some("panic"));
    let long = format!("chaos: {} long panic", "x".repeat(3000));
    assert!(
        f.message.starts_with("panicked at ") && f.message.ends_with(&long),
        "message: {}",
        f.message
    );
    assert_eq!(f.stderr.matches("panicked at ").count(), 1, "written once");
}

#[test]
fn a_panics_backtrace_starts_where_it_panicked_with_readable_names() {
    let mut i = chaos(Limits::default());
    let f = fails(i.handle(&record(0, "unwrap-none")));
    assert_eq!(f.trap.as_deref(), Some("panic"));
    // Innermost first: the failed unwrap, then the plugin's own code; not
    // the panic runtime, the SDK's hook or its exit below them.
    assert_eq!(
        f.backtrace.first().map(String::as_str),
        Some("chaos.wasm!core::option::unwrap_failed"),
        "{:#?}",
        f.backtrace
    );
    assert!(f.backtrace.len() >= 2, "{:#?}", f.backtrace);
    for frame in &f.backtrace {
        assert!(
            frame.starts_with("chaos.wasm!")
                && !frame.contains("panicking")
                && !frame.contains("exit")
                && !frame.contains("!_R")
                && !frame.contains("!_ZN"),
            "{frame} in {:#?}",
            f.backtrace
        );
    }
}

#[test]
fn a_panic_without_the_sdk_hook_an_abort_and_an_exit_are_traps_named_for_what_they_are() {
    let mut i = chaos(Limits::default());
    // Left to abort, a panic is a wasm `unreachable` trap; its report in
    // stderr still names it.
    let f = fails(i.handle(&record(0, "panic-unhooked")));
    assert_eq!(
        (f.kind, f.trap.as_deref()),
        (FailureKind::Trap, Some("panic"))
    );
    assert!(
        f.message.starts_with("panicked at ")
            && f.message.ends_with("chaos: panic without the SDK's hook"),
        "message: {}",
        f.message
    );
    let f = fails(i.handle(&record(1, "abort")));
    assert_eq!(
        (f.kind, f.trap.as_deref()),
        (FailureKind::Trap, Some("unreachable"))
    );
    let f = fails(i.handle(&record(2, "exit")));
    assert_eq!(
        (f.kind, f.trap.as_deref()),
        (FailureKind::Trap, Some("exit"))
    );
    assert!(f.message.contains("exited"), "message: {}", f.message);
    assert!(i.handle(&record(3, "hello")).is_ok());
}

#[test]
fn unwrap_of_none_is_a_trap_and_the_next_record_succeeds_on_a_fresh_instance() {
    let mut i = chaos(Limits::default());
    assert_eq!(value(i.handle(&record(0, "before"))), "BEFORE");
    assert_eq!(i.instantiations(), 1);
    let f = fails(i.handle(&record(1, "unwrap-none")));
    assert_eq!(f.kind, FailureKind::Trap);
    assert!(
        f.stderr.contains("unwrap") && f.stderr.contains("None"),
        "stderr: {}",
        f.stderr
    );
    assert_eq!(value(i.handle(&record(2, "after"))), "AFTER");
    assert_eq!(i.instantiations(), 2, "the trapped instance was replaced");
}

#[test]
fn out_of_bounds_access_traps() {
    let f = fails(chaos(Limits::default()).handle(&record(0, "oob")));
    assert_eq!(f.kind, FailureKind::Trap);
    assert_eq!(f.trap.as_deref(), Some("memory-out-of-bounds"));
}

#[test]
fn reading_address_zero_does_not_trap() {
    // Wasm has no null page: documented for plugin authors.
    let v = value(chaos(Limits::default()).handle(&record(0, "null-read")));
    assert!(v.parse::<u64>().is_ok(), "{v}");
}

#[test]
fn an_endless_loop_times_out_within_twice_its_deadline() {
    let limits = Limits {
        timeout_ms: 100,
        ..Limits::default()
    };
    let mut i = chaos(limits);
    i.warm().expect("instantiates");
    let started = Instant::now();
    let f = fails(i.handle(&record(0, "loop")));
    let took = started.elapsed();
    assert_eq!(f.kind, FailureKind::Timeout);
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert!(took < Duration::from_millis(200), "{took:?}");
    assert_eq!(value(i.handle(&record(1, "fine"))), "FINE");
}

#[test]
fn a_memory_bomb_hits_the_cap_as_out_of_memory() {
    let limits = Limits {
        memory_mb: 16,
        ..Limits::default()
    };
    let mut i = chaos(limits);
    let f = fails(i.handle(&record(0, "memory-bomb")));
    assert_eq!(f.kind, FailureKind::OutOfMemory, "{f:?}");
    assert!(f.message.contains("16 MiB"), "{}", f.message);
    assert_eq!(value(i.handle(&record(1, "next"))), "NEXT");
}

#[test]
fn deep_recursion_overflows_the_stack() {
    let f = fails(chaos(Limits::default()).handle(&record(0, "recursion")));
    assert_eq!(f.kind, FailureKind::Trap);
    assert_eq!(f.trap.as_deref(), Some("stack-overflow"));
}

#[test]
fn a_huge_fan_out_fails_the_record_not_the_host() {
    let mut i = chaos(Limits::default());
    let f = fails(i.handle(&record(0, "fanout:1000000")));
    assert!(
        matches!(f.kind, FailureKind::OutputLimit | FailureKind::OutOfMemory),
        "{f:?}"
    );
    let f = fails(i.handle(&record(1, "fanout:1001")));
    assert_eq!(f.kind, FailureKind::OutputLimit);
    assert!(
        i.handle(&record(2, "fanout:1000")).is_ok(),
        "at the limit is fine"
    );
}

#[test]
fn output_bytes_are_capped() {
    let limits = Limits {
        max_output_bytes: 1 << 20,
        ..Limits::default()
    };
    let mut i = chaos(limits);
    let f = fails(i.handle(&record(0, "big-output:2000000")));
    assert_eq!(f.kind, FailureKind::OutputLimit);
    assert!(i.handle(&record(1, "big-output:1000000")).is_ok());
}

#[test]
fn retry_and_reject_are_reported_as_asked() {
    let mut i = chaos(Limits::default());
    let f = fails(i.handle(&record(0, "retry")));
    assert_eq!(
        (f.kind, f.message.as_str()),
        (FailureKind::Retry, "chaos: dependency down")
    );
    let f = fails(i.handle(&record(1, "reject")));
    assert_eq!(
        (f.kind, f.message.as_str()),
        (FailureKind::Rejected, "chaos: invalid payload")
    );
    assert_eq!(
        i.instantiations(),
        1,
        "a plugin's own failure keeps the instance"
    );
}

#[test]
fn the_guest_cannot_read_host_files_or_environment() {
    // SAFETY of the test: set in this process so a leaky sandbox would show it.
    let mut i = chaos(Limits::default());
    let v = value(i.handle(&record(0, "read-file")));
    assert!(v.starts_with("denied:"), "{v}");
    let v = value(i.handle(&record(1, "read-env")));
    assert_eq!(v, "env: 0 none");
}

#[test]
fn flooding_stdout_does_not_fail_the_record() {
    let mut i = chaos(Limits::default());
    assert!(i.handle(&record(0, "stdout-flood")).is_ok());
}

#[test]
fn stderr_tail_is_bounded_and_keeps_the_end() {
    let f = fails(chaos(Limits::default()).handle(&record(0, "stderr-then-panic")));
    assert!(f.stderr.len() <= Limits::default().stdio_tail_bytes as usize + 8);
    assert!(f.stderr.contains("chaos: after stderr"), "{}", f.stderr);
}

#[test]
fn plugin_config_reaches_the_guest() {
    let settings = PluginSettings {
        config: Arc::new(
            [("color".to_owned(), "blue".to_owned())]
                .into_iter()
                .collect(),
        ),
        ..PluginSettings::default()
    };
    let v = value(Instance::new(load("chaos", settings)).handle(&record(0, "config")));
    assert_eq!(v, r#"{"color":"blue"}"#);
}

#[test]
fn per_record_isolation_uses_a_fresh_instance_each_time() {
    let settings = PluginSettings {
        isolation: Isolation::PerRecord,
        ..PluginSettings::default()
    };
    let mut i = Instance::new(load("uppercase", settings));
    for n in 0..20 {
        assert!(i.handle(&record(n, "x")).is_ok());
    }
    assert_eq!(i.instantiations(), 20);
    // Up to 8 instances, one after another, in a store.
    assert_eq!(i.stores(), 3);
}

#[test]
fn per_record_isolation_carries_no_guest_state_between_records_sharing_a_store() {
    let isolated = PluginSettings {
        isolation: Isolation::PerRecord,
        ..PluginSettings::default()
    };
    // `flaky:2` fails its first call per instance (a count in the guest's
    // memory) and succeeds on the second.
    let mut i = Instance::new(load("chaos", PluginSettings::default()));
    assert_eq!(
        fails(i.handle(&record(0, "flaky:2"))).kind,
        FailureKind::Retry
    );
    assert_eq!(value(i.handle(&record(0, "flaky:2"))), "FLAKY:2");
    let mut i = Instance::new(load("chaos", isolated));
    for _ in 0..5 {
        assert_eq!(
            fails(i.handle(&record(0, "flaky:2"))).kind,
            FailureKind::Retry
        );
    }
    assert_eq!((i.instantiations(), i.stores()), (5, 1));
}

#[test]
fn per_record_isolation_gives_large_guests_stores_of_their_own_sooner() {
    let settings = PluginSettings {
        isolation: Isolation::PerRecord,
        limits: Limits {
            memory_mb: 128,
            max_output_bytes: 64 << 20,
            ..Limits::default()
        },
        ..PluginSettings::default()
    };
    let mut i = Instance::new(load("chaos", settings));
    // Each grows its memory past 20 MiB: two fit a store's 32 MiB.
    for n in 0..6 {
        assert!(i.handle(&record(n, "big-output:20971520")).is_ok());
    }
    assert_eq!((i.instantiations(), i.stores()), (6, 3));
}

/// `uppercase` on an engine whose pool has two instance slots. Loading
/// instantiates once (then drops it): the pool has room again.
fn uppercase_in_a_pool_of_two(settings: PluginSettings) -> Arc<Plugin> {
    let runtime = Runtime::new(EngineSettings {
        pool_instances: 2,
        ..EngineSettings::default()
    })
    .expect("engine");
    runtime
        .load_file(&support::plugin("uppercase"), settings)
        .expect("loads")
}

#[test]
fn per_record_isolation_gives_back_its_spent_instances_when_the_pool_runs_out() {
    let plugin = uppercase_in_a_pool_of_two(PluginSettings {
        isolation: Isolation::PerRecord,
        ..PluginSettings::default()
    });
    let mut i = Instance::new(plugin.clone());
    // Two slots: a store holds two instances, then the third goes to a
    // store of its own.
    for n in 0..10 {
        assert_eq!(value(i.handle(&record(n, "x"))), "X");
    }
    // Each store's third attempt failed and was made again in a new
    // store: ten instances made, in five stores.
    assert_eq!((i.instantiations(), i.stores()), (10, 5));
    // The spent instances hold their slots until released.
    let mut other = Instance::new(plugin);
    assert_eq!(
        fails(other.handle(&record(0, "y"))).kind,
        FailureKind::InstantiateError
    );
    assert_eq!(other.instantiations(), 0);
    i.release_spent();
    assert_eq!(value(other.handle(&record(1, "y"))), "Y");
    assert_eq!(other.instantiations(), 1);
}

#[test]
fn an_instance_grown_past_its_memory_limit_is_replaced_and_the_next_starts_afresh() {
    let settings = PluginSettings {
        recycle: Recycle {
            max_memory_mb: Some(2),
            ..Recycle::default()
        },
        ..PluginSettings::default()
    };
    let mut i = Instance::new(load("chaos", settings));
    assert_eq!(value(i.handle(&record(0, "small"))), "SMALL");
    // Grows the guest's memory past 2 MiB (the output itself may be
    // refused; the instance is replaced either way).
    let _ = i.handle(&record(1, "big-output:3145728"));
    assert_eq!(i.instantiations(), 1);
    // The replacement's high-water mark is its own: it serves the rest.
    for n in 2..5 {
        assert_eq!(value(i.handle(&record(n, "small"))), "SMALL");
    }
    assert_eq!(i.instantiations(), 2);
    // And after a trap the same holds.
    let f = fails(i.handle(&record(5, "stderr-then-panic")));
    assert!(f.stderr.contains("line 100"), "{}", f.stderr);
    for n in 6..9 {
        assert_eq!(value(i.handle(&record(n, "small"))), "SMALL");
    }
    assert_eq!(i.instantiations(), 3);
    let f = fails(i.handle(&record(9, "panic")));
    assert!(
        !f.stderr.contains("line 100"),
        "an earlier instance's stderr: {}",
        f.stderr
    );
}

#[test]
fn fuel_stops_a_loop_as_out_of_fuel() {
    let mut i = chaos_with_fuel(Limits {
        fuel: Some(10_000_000),
        timeout_ms: 10_000,
        ..Limits::default()
    });
    assert_eq!(
        fails(i.handle(&record(0, "loop"))).kind,
        FailureKind::OutOfFuel
    );
    assert!(i.handle(&record(1, "ok")).is_ok());
}

#[test]
fn an_exhausted_pool_is_a_host_side_failure() {
    let plugin = uppercase_in_a_pool_of_two(PluginSettings::default());
    let mut a = Instance::new(plugin.clone());
    let mut b = Instance::new(plugin.clone());
    let mut c = Instance::new(plugin);
    assert!(a.handle(&record(0, "a")).is_ok());
    assert!(b.handle(&record(0, "b")).is_ok());
    let f = fails(c.handle(&record(0, "c")));
    assert_eq!(f.kind, FailureKind::InstantiateError, "{f:?}");
    assert!(f.kind.is_host_side());
    drop(a);
    assert!(
        c.handle(&record(1, "c")).is_ok(),
        "works once a slot is free"
    );
}

#[test]
fn ten_thousand_records_with_one_percent_traps_each_get_one_outcome() {
    let mut i = chaos(Limits::default());
    let (mut ok, mut traps) = (0, 0);
    for n in 0..10_000i64 {
        let v = if n % 100 == 42 {
            "unwrap-none".to_owned()
        } else {
            format!("record {n}")
        };
        match i.handle(&record(n, &v)) {
            Ok(outputs) => {
                assert_eq!(outputs.len(), 1);
                assert_eq!(
                    outputs[0].value.as_deref(),
                    Some(v.to_uppercase().as_bytes())
                );
                ok += 1;
            }
            Err(f) => {
                assert_eq!(f.kind, FailureKind::Trap);
                assert_eq!(n % 100, 42, "only poison records fail");
                traps += 1;
            }
        }
    }
    assert_eq!((ok, traps), (9_900, 100));
    assert_eq!(i.instantiations(), 101, "one instance plus one per trap");
}

/// Batches: one `handle-batch` call for several records of a plugin of the
/// batch world (every SDK plugin), each record still on its own.
mod batches {
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn records(values: &[&str]) -> Vec<sandpiper::record::Record> {
        (0..)
            .zip(values)
            .map(|(offset, value)| record(offset, value))
            .collect()
    }

    /// Runs `records` through `i` until each has an outcome, one
    /// `handle_batch` at a time; returns the outcomes and how many records
    /// each `handle_batch` took ([`Instance::calls`] counts the plugin
    /// calls it made).
    fn run_all(
        i: &mut Instance,
        mut records: Vec<sandpiper::record::Record>,
    ) -> (Vec<Outcome>, Vec<usize>) {
        let copy = records.clone();
        let cancel = CancellationToken::new();
        let (mut outcomes, mut calls) = (Vec::new(), Vec::new());
        let mut from = 0;
        while from < records.len() {
            let mut got = Vec::new();
            i.handle_batch(&mut records[from..], &cancel, later(), &mut got);
            assert!(!got.is_empty(), "a call runs at least one record");
            calls.push(got.len());
            from += got.len();
            outcomes.extend(got.into_iter().map(|(outcome, _)| outcome));
        }
        assert_eq!(records, copy, "the records come back unchanged");
        (outcomes, calls)
    }

    #[test]
    fn sdk_plugins_implement_the_batch_world() {
        let chaos = load("chaos", PluginSettings::default());
        assert_eq!(chaos.world(), "sandpiper:plugin/batch-processor@0.1.0");
        let single = load("single-call", PluginSettings::default());
        assert_eq!(single.world(), "sandpiper:plugin/processor@0.1.0");
    }

    #[test]
    fn every_field_of_every_record_reaches_the_plugin_intact_in_a_batch() {
        let describe = ("chaos".to_owned(), b"describe".to_vec());
        let base = sandpiper::record::Record {
            headers: vec![describe.clone()],
            ..record(0, "")
        };
        let odd = [
            sandpiper::record::Record {
                topic: "topic.with-ünïcode".into(),
                partition: i32::MAX,
                offset: i64::MAX,
                timestamp: None,
                key: None,
                value: None,
                ..base.clone()
            },
            sandpiper::record::Record {
                partition: -1,
                offset: 0,
                timestamp: Some(-5),
                key: Some(Vec::new()),
                value: Some(Vec::new()),
                ..base.clone()
            },
            sandpiper::record::Record {
                topic: String::new(),
                key: Some(vec![0, 0xff, 0x80]),
                value: Some((0..=255).collect()),
                headers: vec![
                    (String::new(), Vec::new()),
                    describe.clone(),
                    ("dup".into(), b"1".to_vec()),
                    ("dup".into(), vec![0xfe; 300]),
                ],
                ..base.clone()
            },
            base,
        ];
        let mut single = chaos(Limits::default());
        let one_by_one: Vec<String> = odd.iter().map(|r| value(single.handle(r))).collect();
        let mut batched = chaos(Limits::default());
        let (outcomes, calls) = run_all(&mut batched, odd.to_vec());
        assert_eq!(calls, [4]);
        let in_a_batch: Vec<String> = outcomes.into_iter().map(value).collect();
        assert_eq!(in_a_batch, one_by_one);
        assert!(one_by_one[0].contains(r#""key":null"#), "{}", one_by_one[0]);
        assert!(one_by_one[1].contains(r#""key":[]"#), "{}", one_by_one[1]);
    }

    /// `passthrough` and `sometimes-trap` lend each record
    /// (`Handler::handle_borrowed`) in a batch; alone, `passthrough` takes
    /// it over and `sometimes-trap` lends it through `handle_lent`: every
    /// way gives back every field as it came.
    #[test]
    fn lending_plugins_pass_every_field_through_in_a_batch_and_alone() {
        let base = record(0, "v");
        let odd = vec![
            sandpiper::record::Record {
                key: None,
                value: None,
                ..base.clone()
            },
            sandpiper::record::Record {
                key: Some(Vec::new()),
                value: Some(Vec::new()),
                ..base.clone()
            },
            sandpiper::record::Record {
                key: Some(vec![0, 0xff, 0x80]),
                value: Some((0..=255).collect()),
                headers: vec![
                    (String::new(), Vec::new()),
                    ("dup".into(), b"1".to_vec()),
                    ("dup".into(), vec![0xfe; 300]),
                    ("ünïcode".into(), b"x".to_vec()),
                ],
                ..base.clone()
            },
            base,
        ];
        let expected: Vec<Vec<sandpiper::record::Output>> = odd
            .iter()
            .map(|r| {
                vec![sandpiper::record::Output {
                    topic: None,
                    key: r.key.clone(),
                    value: r.value.clone(),
                    headers: r.headers.clone(),
                }]
            })
            .collect();
        for name in ["passthrough", "sometimes-trap"] {
            let plugin = load(name, PluginSettings::default());
            let mut single = Instance::new(plugin.clone());
            let alone: Vec<_> = odd.iter().map(|r| single.handle(r).expect(name)).collect();
            assert_eq!(alone, expected, "{name}");
            let mut batched = Instance::new(plugin);
            let (outcomes, calls) = run_all(&mut batched, odd.clone());
            assert_eq!(calls, [4], "{name}");
            let in_a_batch: Vec<_> = outcomes.into_iter().map(|o| o.expect(name)).collect();
            assert_eq!(in_a_batch, expected, "{name}");
        }
    }

    #[test]
    fn a_trap_in_a_batch_costs_only_its_record_and_the_rest_run_on_a_fresh_instance() {
        let mut i = chaos(Limits::default());
        let (outcomes, calls) = run_all(&mut i, records(&["a", "b", "panic", "c", "d"]));
        assert_eq!(calls, [5], "the rest go on after the trap");
        assert_eq!(i.calls(), 2, "one call up to the trap, one for the rest");
        assert_eq!(i.instantiations(), 2);
        let values: Vec<String> = outcomes
            .into_iter()
            .map(|o| match o {
                Ok(_) => value(o),
                Err(f) => {
                    assert_eq!(f.kind, FailureKind::Trap);
                    assert_eq!(f.trap.as_deref(), Some("panic"));
                    assert!(f.message.contains("chaos: panic on demand"), "{f:?}");
                    "failed".into()
                }
            })
            .collect();
        assert_eq!(values, ["A", "B", "failed", "C", "D"]);
    }

    #[test]
    fn each_record_of_a_batch_has_its_own_deadline() {
        let limits = Limits {
            timeout_ms: 150,
            ..Limits::default()
        };
        let mut i = chaos(limits);
        i.warm().expect("instantiates");
        // 4 x 80 ms in one call: over one deadline, within each record's.
        let (outcomes, calls) = run_all(&mut i, records(&["spin:80"; 4]));
        assert_eq!(calls, [4]);
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        let started = Instant::now();
        let (outcomes, calls) = run_all(&mut i, records(&["spin:80", "loop", "after"]));
        let took = started.elapsed();
        assert_eq!(calls, [3]);
        assert_eq!(i.calls(), 1 + 2, "the timeout ended a call");
        assert!(outcomes[0].is_ok());
        assert_eq!(fails(outcomes[1].clone()).kind, FailureKind::Timeout);
        assert_eq!(value(outcomes[2].clone()), "AFTER");
        // The loop had its own 150 ms, not what the first record left.
        assert!(took >= Duration::from_millis(80 + 150), "{took:?}");
    }

    #[test]
    fn fuel_is_per_record_in_a_batch() {
        let mut i = chaos_with_fuel(Limits {
            fuel: Some(10_000_000),
            timeout_ms: 10_000,
            max_outputs: 2_000,
            ..Limits::default()
        });
        // A fan-out of 2,000 costs about 4.4 million fuel (5,000 runs out):
        // four fit in one call only if each record has its own 10 million.
        let (outcomes, calls) = run_all(&mut i, records(&["fanout:2000"; 4]));
        assert_eq!(calls, [4]);
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        let (outcomes, calls) = run_all(&mut i, records(&["a", "loop", "b"]));
        assert_eq!(calls, [3]);
        assert_eq!(i.calls(), 1 + 2, "running out of fuel ended a call");
        assert_eq!(fails(outcomes[1].clone()).kind, FailureKind::OutOfFuel);
    }

    #[test]
    fn a_retry_ends_the_batch_and_a_reject_does_not() {
        let mut i = chaos(Limits::default());
        let (outcomes, calls) = run_all(&mut i, records(&["a", "reject", "b", "retry", "c"]));
        assert_eq!(calls, [4, 1]);
        assert_eq!(fails(outcomes[1].clone()).kind, FailureKind::Rejected);
        assert_eq!(fails(outcomes[3].clone()).kind, FailureKind::Retry);
        assert_eq!(i.instantiations(), 1, "neither costs the instance");
    }

    #[test]
    fn a_failing_records_stderr_is_its_own() {
        // A million lines take most of the default deadline on a busy
        // machine; the deadline is not what this test is about.
        let mut i = chaos(Limits {
            timeout_ms: 10_000,
            ..Limits::default()
        });
        let (outcomes, _) = run_all(&mut i, records(&["stdout-flood", "stderr-then-panic"]));
        assert!(outcomes[0].is_ok());
        let f = fails(outcomes[1].clone());
        assert!(f.stderr.starts_with("line 1\n"), "{:?}", &f.stderr[..80]);
        assert!(!f.stderr.contains("flood"));
    }

    #[test]
    fn outputs_over_the_limit_fail_their_record_only() {
        let limits = Limits {
            max_outputs: 3,
            ..Limits::default()
        };
        let mut i = chaos(limits);
        let (outcomes, calls) = run_all(&mut i, records(&["fanout:3", "fanout:4", "x"]));
        assert_eq!(calls, [3]);
        assert_eq!(outcomes[0].as_ref().map(Vec::len).ok(), Some(3));
        assert_eq!(fails(outcomes[1].clone()).kind, FailureKind::OutputLimit);
        assert_eq!(value(outcomes[2].clone()), "X");
    }

    #[test]
    fn a_cancelled_batch_stops_after_its_first_record() {
        let mut i = chaos(Limits::default());
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut records = records(&["a", "b", "c"]);
        let mut outcomes = Vec::new();
        i.handle_batch(&mut records, &cancel, later(), &mut outcomes);
        assert_eq!(outcomes.len(), 1);
    }

    #[test]
    fn a_batch_cancelled_while_it_runs_stops_after_the_record_in_hand() {
        let mut i = chaos(Limits::default());
        i.warm().expect("instantiates");
        let cancel = CancellationToken::new();
        let mut records = records(&["spin:2"; 100]);
        let mut outcomes = Vec::new();
        let cancelled_at = std::thread::scope(|scope| {
            let canceller = scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                cancel.cancel();
                Instant::now()
            });
            i.handle_batch(&mut records, &cancel, later(), &mut outcomes);
            canceller.join().expect("cancels")
        });
        assert!(outcomes.len() < 100, "the cancel stopped the batch");
        assert!(outcomes.iter().all(|(o, _)| o.is_ok()));
        // Records of 2 ms: the token is looked at after each, so at most the
        // one in hand when it was cancelled ends after that.
        let after = outcomes.iter().filter(|(_, ended)| *ended > cancelled_at);
        assert!(after.count() <= 1, "{} records", outcomes.len());
    }

    #[test]
    fn a_batch_stops_after_the_first_record_to_end_past_its_time() {
        let mut i = chaos(Limits::default());
        let cancel = CancellationToken::new();
        let mut records = records(&["a", "b", "c", "d"]);
        let mut outcomes = Vec::new();
        // Every record ends past a time already gone: one per call.
        i.handle_batch(&mut records, &cancel, Instant::now(), &mut outcomes);
        assert_eq!(outcomes.len(), 1);
        i.handle_batch(&mut records[1..], &cancel, Instant::now(), &mut outcomes);
        assert_eq!(outcomes.len(), 2);
        // With time to spare, the rest in one call.
        i.handle_batch(&mut records[2..], &cancel, later(), &mut outcomes);
        let values: Vec<String> = outcomes.into_iter().map(|(o, _)| value(o)).collect();
        assert_eq!(values, ["A", "B", "C", "D"]);
        assert_eq!(i.instantiations(), 1, "stopping early is no fault");
    }

    #[test]
    fn after_a_trap_the_rest_go_on_only_within_the_time_budget_and_uncancelled() {
        let limits = Limits {
            timeout_ms: 300,
            ..Limits::default()
        };
        // The loop times out (a trap) after the call's time budget is
        // spent: the records after it come back to the caller.
        let mut i = chaos(limits.clone());
        let mut batch = records(&["a", "loop", "b", "c"]);
        let mut outcomes = Vec::new();
        let until = Instant::now() + Duration::from_millis(100);
        i.handle_batch(&mut batch, &CancellationToken::new(), until, &mut outcomes);
        assert_eq!(outcomes.len(), 2, "{outcomes:?}");
        assert_eq!(fails(outcomes[1].0.clone()).kind, FailureKind::Timeout);
        assert_eq!(i.calls(), 1);
        // Likewise when cancelled while the loop runs.
        let mut i = chaos(limits);
        let cancel = CancellationToken::new();
        outcomes.clear();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                cancel.cancel();
            });
            i.handle_batch(&mut batch, &cancel, later(), &mut outcomes);
        });
        assert_eq!(outcomes.len(), 2, "{outcomes:?}");
        assert_eq!(fails(outcomes[1].0.clone()).kind, FailureKind::Timeout);
        assert_eq!(i.calls(), 1);
        // Neither: the rest go on, on a fresh instance, in the same call.
        outcomes.clear();
        i.handle_batch(
            &mut batch,
            &CancellationToken::new(),
            later(),
            &mut outcomes,
        );
        assert_eq!(outcomes.len(), 4, "{outcomes:?}");
        assert_eq!(value(outcomes[3].0.clone()), "C");
        assert_eq!(i.calls(), 1 + 2);
    }

    /// A time budget no batch reaches.
    fn later() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn large_records_go_in_small_batches() {
        let limits = Limits {
            memory_mb: 32,
            // Each echoed 4 MiB record is an output that large.
            max_output_bytes: 8 << 20,
            ..Limits::default()
        };
        let mut i = chaos(limits);
        // The guest holds a whole batch at once: 8 x 4 MiB records, as much
        // as its memory cap, go one by one, and smaller ones together up
        // to 64 KiB.
        let huge = "x".repeat(4 << 20);
        let big = "x".repeat(40 << 10);
        let mut values = vec![huge.as_str(); 8];
        values.extend([big.as_str(), big.as_str(), big.as_str(), "a", "b"]);
        let (outcomes, calls) = run_all(&mut i, records(&values));
        assert_eq!(calls, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3]);
        assert!(outcomes.iter().all(Result::is_ok));
    }

    #[test]
    fn recycling_counts_every_record_of_a_batch() {
        let settings = PluginSettings {
            recycle: sandpiper::runtime::Recycle {
                max_records: 10,
                ..sandpiper::runtime::Recycle::default()
            },
            ..PluginSettings::default()
        };
        let mut i = Instance::new(load("uppercase", settings));
        let (outcomes, calls) = run_all(&mut i, records(&["x"; 25]));
        assert_eq!(calls, [25]);
        assert_eq!(i.calls(), 3, "a call of 10 records per instance");
        assert!(outcomes.iter().all(Result::is_ok));
        assert_eq!(i.instantiations(), 3);
    }

    #[test]
    fn a_plugin_of_the_processor_world_runs_one_record_per_call() {
        let mut i = Instance::new(load("single-call", PluginSettings::default()));
        let (outcomes, calls) = run_all(&mut i, records(&["a", "panic", "b"]));
        assert_eq!(calls, [1, 1, 1]);
        assert_eq!(value(outcomes[0].clone()), "A");
        assert_eq!(fails(outcomes[1].clone()).kind, FailureKind::Trap);
        assert_eq!(value(outcomes[2].clone()), "B");
    }

    #[test]
    fn a_batch_returning_without_reporting_fails_the_record_it_left() {
        let mut i = Instance::new(load("rogue-batch", PluginSettings::default()));
        let (outcomes, calls) = run_all(&mut i, records(&["a", "skip", "b", "c"]));
        assert_eq!(calls, [2, 2]);
        assert!(outcomes[0].is_ok());
        let f = fails(outcomes[1].clone());
        assert_eq!(f.kind, FailureKind::Trap);
        assert_eq!(f.trap.as_deref(), Some("unreported"));
        assert!(outcomes[2].is_ok() && outcomes[3].is_ok());
        assert_eq!(i.instantiations(), 1, "returning is no trap");
    }

    #[test]
    fn outcomes_are_counted_in_order_whatever_the_guest_reports() {
        let mut i = Instance::new(load("rogue-batch", PluginSettings::default()));
        // `twice` reports its echo a second time, which stands for the next
        // record, then returns without reporting the one after.
        let (outcomes, calls) = run_all(&mut i, records(&["twice", "a", "b", "c"]));
        assert_eq!(calls, [3, 1]);
        assert_eq!(value(outcomes[0].clone()), "twice");
        assert_eq!(value(outcomes[1].clone()), "twice");
        assert_eq!(
            fails(outcomes[2].clone()).trap.as_deref(),
            Some("unreported")
        );
        assert_eq!(value(outcomes[3].clone()), "c");
    }

    #[test]
    fn encoded_outputs_that_do_not_parse_fail_their_record_only() {
        let mut i = Instance::new(load("rogue-batch", PluginSettings::default()));
        let (outcomes, calls) = run_all(&mut i, records(&["a", "garbled", "b"]));
        assert_eq!(calls, [3], "{outcomes:?}");
        assert_eq!(i.calls(), 2, "the call ends at the bad report");
        assert_eq!(value(outcomes[0].clone()), "a");
        let f = fails(outcomes[1].clone());
        assert_eq!(f.kind, FailureKind::Trap);
        assert!(f.message.contains("finished-encoded"), "{f:?}");
        assert_eq!(value(outcomes[2].clone()), "b");
        assert_eq!(i.instantiations(), 2, "the trapped instance was dropped");
    }

    #[test]
    fn a_flood_of_encoded_outputs_fails_its_record_as_over_the_limit() {
        let mut i = Instance::new(load("rogue-batch", PluginSettings::default()));
        let (outcomes, calls) = run_all(&mut i, records(&["a", "many", "b"]));
        assert_eq!(calls, [3]);
        let f = fails(outcomes[1].clone());
        assert_eq!(f.kind, FailureKind::OutputLimit);
        // Counted in full, though the host kept none past the limit.
        assert!(f.message.starts_with("100000 outputs, more than"), "{f:?}");
        assert_eq!(value(outcomes[2].clone()), "b");
    }

    #[test]
    fn reporting_after_the_last_record_traps_and_keeps_what_was_reported() {
        let mut i = Instance::new(load("rogue-batch", PluginSettings::default()));
        let (outcomes, calls) = run_all(&mut i, records(&["a", "twice"]));
        assert_eq!(calls, [2]);
        assert!(outcomes.iter().all(Result::is_ok));
        let (outcomes, _) = run_all(&mut i, records(&["b", "c"]));
        assert!(outcomes.iter().all(Result::is_ok));
        assert_eq!(i.instantiations(), 2, "the trapped instance was dropped");
    }
}

mod bad_files {
    use super::*;

    fn load_err(path: &std::path::Path) -> String {
        let err = support::runtime()
            .load_file(path, PluginSettings::default())
            .expect_err("must be refused");
        err.to_string()
    }

    #[test]
    fn not_wasm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notes.wasm");
        std::fs::write(&path, "just some text").expect("write");
        let e = load_err(&path);
        assert!(
            e.contains("notes.wasm") && e.contains("not WebAssembly"),
            "{e}"
        );
    }

    #[test]
    fn a_core_module() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("core.wasm");
        std::fs::write(&path, b"\0asm\x01\0\0\0").expect("write");
        let e = load_err(&path);
        assert!(
            e.contains("core.wasm") && e.contains("core WebAssembly module"),
            "{e}"
        );
    }

    #[test]
    fn a_truncated_component() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = std::fs::read(support::plugin("uppercase")).expect("read");
        let path = dir.path().join("truncated.wasm");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
        let e = load_err(&path);
        assert!(
            e.contains("truncated.wasm") && e.contains("not a valid component"),
            "{e}"
        );
    }

    #[test]
    fn another_world() {
        let path = support::plugin("not-a-plugin");
        let e = load_err(&path);
        assert!(
            e.contains("not_a_plugin.wasm") && e.contains("does not implement"),
            "{e}"
        );
        assert!(e.contains("handle"), "names what is missing: {e}");
    }

    #[test]
    fn too_large() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("huge.wasm");
        let file = std::fs::File::create(&path).expect("create");
        file.set_len(sandpiper::runtime::MAX_PLUGIN_BYTES as u64 + 1)
            .expect("sparse file");
        let e = load_err(&path);
        assert!(e.contains("huge.wasm") && e.contains("more than"), "{e}");
    }

    #[test]
    fn missing_file() {
        let e = load_err(std::path::Path::new("/nonexistent/plugin.wasm"));
        assert!(e.contains("/nonexistent/plugin.wasm"), "{e}");
    }

    #[test]
    fn errors_are_typed() {
        let err = support::runtime()
            .load_file(&support::plugin("not-a-plugin"), PluginSettings::default())
            .expect_err("refused");
        assert!(matches!(err, PluginError::WrongWorld { .. }), "{err:?}");
    }
}
