//! The host binary against a real broker (Tansu, a separate process): a
//! SIGKILLed host, a broker outage at start-up, a bad deploy that traps on
//! every record, hostile records. An independent client produces the inputs
//! and reads the outputs and dead letters; every test ends in a tally.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::Rng as _;

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
        // The host's own panics; the plugin's are dead letters' reasons.
        .filter(|l| l.contains("panicked") && !l.contains("Record failed"))
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

/// Produces numbered inputs (1% traps) at about `per_second` until
/// stopped; joining it returns what it produced and its producer (for the
/// end offsets).
struct Feeder {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<Input>, Producer)>,
}

impl Feeder {
    fn start(env: &Env, per_second: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (brokers, topic, flag) = (env.brokers(), env.input.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut producer = Producer::new(&brokers);
            let mut inputs = Vec::new();
            let tick = Duration::from_millis(50);
            let per_tick = (per_second / 20).max(1);
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let batch = client::numbered(inputs.len()..inputs.len() + per_tick, Some(100));
                for input in &batch {
                    producer.send(&topic, input);
                }
                inputs.extend(batch);
                std::thread::sleep(tick.saturating_sub(started.elapsed()));
            }
            producer.flush();
            (inputs, producer)
        });
        Self { stop, thread }
    }

    fn finish(self) -> (Vec<Input>, Producer) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the feeder panicked")
    }
}

/// The host is SIGKILLed at random moments while records flow and
/// restarted each time: nothing is lost (replays are counted).
#[test]
fn a_host_killed_with_sigkill_five_times_loses_nothing() {
    let env = Env::new(3);
    let config = env.write_config("chaos", "");
    let feeder = Feeder::start(&env, 800);
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut host = env.start_host(&config);
    for kill in 1..=5 {
        // Assigned and connected: records are flowing into this host.
        host.wait_status("/readyz", 200, Duration::from_secs(60));
        let delay = Duration::from_millis(rng.random_range(100..3000));
        std::thread::sleep(delay);
        host.assert_running();
        let committed = client::committed(&env.brokers(), &env.group, &env.input);
        eprintln!(
            "SIGKILL {kill} at {:?}, {delay:?} after ready; committed {committed:?}",
            started.elapsed()
        );
        host.kill();
        host = env.start_host(&config);
    }
    let (inputs, producer) = feeder.finish();
    let ends = producer.ends(&env.input);
    let took = client::wait_committed(&env.brokers(), &env.group, &env.input, &ends, WAIT, || {
        host.assert_running();
    });
    eprintln!(
        "{} inputs, all committed {took:?} after the last restart",
        inputs.len()
    );
    let status = host.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");
    let t = env.tally("SIGKILL", &inputs);
    let traps = inputs
        .iter()
        .filter(|i| i.value.as_deref() == Some(b"unwrap-none"))
        .count();
    assert_eq!(t.dead_keys, traps, "every trapping record dead-lettered");
}

/// Incident 2 at start-up: the host starts while the broker is down and
/// stays up through 60 s of outage with flat memory and threads, quiet
/// logs and an honest `/readyz`; when the broker comes, records flow
/// without a restart.
#[test]
fn a_host_started_during_a_broker_outage_waits_flat_and_flows_when_it_comes() {
    const OUTAGE: Duration = Duration::from_secs(60);
    let port = crate::support::tansu::free_port();
    let mut env = Env::on(crate::support::tansu::Broker::stopped(port), 3);
    let config = env.write_config("chaos", "");
    let started = Instant::now();
    let mut host = env.start_host(&config);
    let body = host.wait_status("/readyz", 503, Duration::from_secs(30));
    // Warm-up: plugin compiled, clients created, first connection refused.
    std::thread::sleep(Duration::from_secs(5));
    let body = host.get("/readyz").map_or(body, |(_, b)| b);
    let reasons = body["reasons"].to_string();
    assert!(
        reasons.contains("not connected to Kafka"),
        "/readyz names the outage: {reasons}"
    );
    let base = host.sample();
    let rdk = |names: Vec<String>| {
        let mut rdk: Vec<String> = names
            .into_iter()
            .filter(|n| n.starts_with("rdk:"))
            .collect();
        rdk.sort();
        rdk
    };
    let base_rdk = rdk(host.thread_names());
    let log_base = host.log_lines().len();
    let mut samples = vec![base];
    while started.elapsed() < OUTAGE {
        std::thread::sleep(Duration::from_secs(2));
        host.assert_running();
        samples.push(host.sample());
        assert_eq!(
            rdk(host.thread_names()),
            base_rdk,
            "librdkafka's threads are the same: no client recreated"
        );
        let (status, body) = host
            .get("/readyz")
            .expect("admin answers during the outage");
        assert_eq!(status, 503, "not ready without a broker: {body}");
        let (status, body) = host.get("/healthz").expect("admin answers");
        assert_eq!(
            status, 200,
            "a broker outage is no reason to restart: {body}"
        );
    }
    let outage_lines: Vec<String> = host.log_lines().split_off(log_base);
    let max_rss = samples.iter().map(|s| s.rss).max().unwrap_or(0);
    let threads: std::collections::BTreeSet<usize> = samples.iter().map(|s| s.threads).collect();
    eprintln!(
        "outage of {:?}: RSS {} -> max {} KiB, threads {threads:?}, fds {} -> {}, {} log lines after warm-up",
        started.elapsed(),
        base.rss >> 10,
        max_rss >> 10,
        base.fds,
        samples.last().map_or(0, |s| s.fds),
        outage_lines.len()
    );
    assert!(
        max_rss < base.rss + (5 << 20),
        "RSS grew {} KiB during the outage",
        (max_rss - base.rss) >> 10
    );
    // Constant, but for one thread of tokio's blocking pool that may come
    // and go (it runs blocking calls on demand and retires when idle).
    let (least, most) = (
        threads.first().copied().unwrap_or(0),
        threads.last().copied().unwrap_or(0),
    );
    assert!(
        most - least <= 1,
        "thread count constant: {} at warm-up, then {threads:?}",
        base.threads
    );
    // Rate-limited: the host lets each kind of line through at most once
    // per 10 s (librdkafka's own lines once per 30 s), saying how many it
    // suppressed; unlimited, these are a few hundred lines a minute.
    let mut kinds: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for line in &outage_lines {
        *kinds.entry(log_kind(line)).or_default() += 1;
    }
    let most = (OUTAGE.as_secs() / 10 + 1) as usize;
    let flooding: Vec<_> = kinds.iter().filter(|(_, n)| **n > most).collect();
    assert!(flooding.is_empty(), "log lines repeated: {flooding:?}");
    assert!(
        outage_lines.len() <= 60,
        "{} log lines in {OUTAGE:?} of outage",
        outage_lines.len()
    );
    assert!(
        outage_lines.iter().any(|l| l.contains("suppressed")),
        "repeats are counted, not lost"
    );

    // The broker arrives; the same process connects and works.
    let pid = host.pid();
    env.broker.up();
    env.create_topics();
    let inputs = client::numbered(0..3000, Some(100));
    let mut producer = Producer::new(&env.brokers());
    producer.send_all(&env.input, &inputs);
    let ends = producer.ends(&env.input);
    let took = client::wait_committed(&env.brokers(), &env.group, &env.input, &ends, WAIT, || {
        host.assert_running();
    });
    host.wait_status("/readyz", 200, Duration::from_secs(30));
    assert_eq!(host.pid(), pid, "no restart");
    eprintln!(
        "after the broker came: {} records committed in {took:?}",
        inputs.len()
    );
    let status = host.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");
    let t = env.tally("outage", &inputs);
    assert_eq!(t.dead_keys, 30, "{t:?}");
}

/// A log line without its timestamp and numbers, to group repeats.
fn log_kind(line: &str) -> String {
    line.split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_ascii_digit())
        .collect()
}
