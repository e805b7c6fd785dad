//! The host binary against a real broker (Tansu, a separate process): a
//! SIGKILLed host, a broker outage at start-up, a bad deploy that traps on
//! every record, hostile records. An independent client produces the inputs
//! and reads the outputs and dead letters; every test ends in a tally.

use std::time::{Duration, Instant};

use crate::support::client::{self, Input, Producer};
use crate::support::tansu::Env;

/// Long enough for any of these scenarios on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(180);

#[test]
fn records_flow_through_the_binary_on_a_real_broker() {
    let env = Env::new(3);
    let inputs = client::numbered(0..2000, Some(100));
    let mut producer = Producer::new(&env.brokers());
    producer.send_all(&env.input, &inputs);
    let ends = producer.ends(&env.input);
    eprintln!("DEBUG ends {ends:?}");
    let config = env.write_config("chaos", "");
    let mut host = env.start_host(&config);
    let took = client::wait_committed(&env.brokers(), &env.group, &env.input, &ends, WAIT, || {
        host.assert_running();
    });
    eprintln!("2000 records committed in {took:?}");
    let body = host.wait_status("/readyz", 200, Duration::from_secs(30));
    assert_eq!(body["ok"], true);
    let status = host.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");
    let t = env.tally("smoke", &inputs);
    assert_eq!(
        (t.outputs - t.duplicates, t.dead_letters),
        (1980, 20),
        "{t:?}"
    );
}

/// Records a real broker hands over that a host must survive: empty,
/// null key and value, 900 KB, 200 headers, header names and values that
/// are not UTF-8, null header values. Each comes out (echoed, or dead-
/// lettered when the plugin traps on it) with its bytes intact.
#[test]
fn hostile_records_from_the_broker_are_all_accounted_for() {
    let env = Env::new(1);
    let (inputs, traps) = hostile_inputs();
    let mut producer = Producer::new(&env.brokers());
    producer.send_all(&env.input, &inputs);
    let ends = producer.ends(&env.input);
    let config = env.write_config("chaos", "");
    let mut host = env.start_host(&config);
    let took = client::wait_committed(&env.brokers(), &env.group, &env.input, &ends, WAIT, || {
        host.assert_running();
    });
    let (status, _) = host.get("/healthz").expect("admin answers");
    assert_eq!(status, 200, "alive after the hostile records");
    let panics: Vec<String> = host
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "{panics:?}");
    let status = host.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");

    // One partition and no failure injected: outputs and dead letters come
    // in input order, so records without a key are matched by position.
    let expect_out: Vec<client::Rec> = inputs
        .iter()
        .enumerate()
        .filter(|(i, _)| !traps.contains(i))
        .map(|(_, input)| echoed(input))
        .collect();
    let expect_dead: Vec<&Input> = traps.iter().map(|&i| &inputs[i]).collect();
    let all = client::read(
        &env.brokers(),
        &[&env.output, &env.dlq],
        usize::MAX,
        Duration::from_secs(5),
    );
    let (outputs, dead): (Vec<_>, Vec<_>) = all.into_iter().partition(|r| r.topic == env.output);
    let (found_out, dup_out) = match_in_order(&expect_out, &outputs, |want, got| {
        (&want.key, &want.value, &want.headers) == (&got.key, &got.value, &normalized(got))
    });
    let (found_dead, dup_dead) = match_in_order(&expect_dead, &dead, |want, got| {
        want.key == got.key
            && want.value == got.value
            && got.header_str("sandpiper.error.kind") == "trap"
            && echoed(want).headers == normalized(got)
    });
    eprintln!(
        "hostile tally: {} inputs, {} outputs, {} dead letters, {} missing, {} duplicates; committed in {took:?}",
        inputs.len(),
        outputs.len(),
        dead.len(),
        expect_out.len() - found_out + expect_dead.len() - found_dead,
        dup_out + dup_dead
    );
    assert_eq!(
        (found_out, found_dead),
        (expect_out.len(), expect_dead.len()),
        "every hostile record comes out intact, in order"
    );
}

/// The hostile inputs, and the indexes of those the plugin traps on.
fn hostile_inputs() -> (Vec<Input>, Vec<usize>) {
    let big: Vec<u8> = (0..900_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let many: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..200)
        .map(|i| (format!("h{i}").into_bytes(), Some(vec![i as u8; i % 7])))
        .collect();
    let bad_names = vec![
        (vec![0xff, 0xfe, b'x'], Some(b"v".to_vec())),
        (b"caf\xe9".to_vec(), Some(b"latin-1 name".to_vec())),
        (vec![0xc3], None),
    ];
    let bad_values = vec![
        (b"bin".to_vec(), Some(vec![0xff, 0x00, 0xc3])),
        (b"null".to_vec(), None),
        (b"empty".to_vec(), Some(Vec::new())),
    ];
    let mut inputs = vec![
        Input::new("before", "first"),
        Input::new("", ""),
        Input::default(),
        Input {
            value: Some(b"null key".to_vec()),
            ..Input::default()
        },
        Input {
            key: Some(b"null value".to_vec()),
            ..Input::default()
        },
        Input::new("big", big),
        Input {
            headers: many.clone(),
            ..Input::new("many headers", "x")
        },
        Input {
            headers: bad_names.clone(),
            ..Input::new("bad names", "y")
        },
        Input {
            headers: bad_values.clone(),
            ..Input::new("bad values", "z")
        },
        Input::new(vec![0, 159, 255, 10], vec![0xff, 0xfe, 0x00]),
    ];
    // The same hostile shapes when the plugin traps: dead-lettered intact.
    let mut traps = Vec::new();
    for headers in [many, bad_names, bad_values] {
        traps.push(inputs.len());
        inputs.push(Input {
            key: None,
            value: Some(b"unwrap-none".to_vec()),
            headers,
            partition: None,
        });
    }
    inputs.push(Input::new("after", "last"));
    for input in &mut inputs {
        input.partition = Some(0);
    }
    (inputs, traps)
}

/// What the `chaos` plugin makes of a normal input: the value ASCII-
/// uppercased; header names that are not UTF-8 get U+FFFD; null header
/// values become empty (the plugin contract's headers are strings to bytes).
fn echoed(input: &Input) -> client::Rec {
    client::Rec {
        topic: String::new(),
        partition: 0,
        offset: 0,
        key: input.key.clone(),
        value: input.value.as_ref().map(|v| v.to_ascii_uppercase()),
        headers: input
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    Some(v.clone().unwrap_or_default()),
                )
            })
            .collect(),
    }
}

/// A record's headers without the host's own, null values as empty.
fn normalized(r: &client::Rec) -> Vec<(String, Option<Vec<u8>>)> {
    r.headers
        .iter()
        .filter(|(k, _)| !k.starts_with("sandpiper."))
        .map(|(k, v)| (k.clone(), Some(v.clone().unwrap_or_default())))
        .collect()
}

/// Matches `got` against `want` in order, allowing replays (a record seen
/// again after an earlier one): (wanted records found, duplicates).
fn match_in_order<W>(
    want: &[W],
    got: &[client::Rec],
    same: impl Fn(&W, &client::Rec) -> bool,
) -> (usize, usize) {
    let (mut next, mut duplicates) = (0, 0);
    for (i, r) in got.iter().enumerate() {
        if next < want.len() && same(&want[next], r) {
            next += 1;
        } else if want[..next].iter().any(|w| same(w, r)) {
            duplicates += 1;
        } else {
            panic!(
                "record {i} ({:?}, {} value bytes, {} headers) matches no input at or before position {next}",
                r.key,
                r.value.as_ref().map_or(0, Vec::len),
                r.headers.len()
            );
        }
    }
    (next, duplicates)
}
