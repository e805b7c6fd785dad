//! Memory-flat runs of the host binary on a real broker (Tansu): a bad
//! deploy that traps on every record for a while, and a soak of many small
//! records with 1% traps. The child's RSS, threads and file descriptors are
//! read from `/proc`; every run ends in a tally.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::client::{self, Input, Producer};
use crate::support::process::{HostProcess, Sample};
use crate::support::tansu::Env;

/// Records of the CI soak; `SANDPIPER_SOAK_RECORDS` overrides (the
/// 1,000,000-record run in BENCHMARKS.md sets it).
const CI_SOAK_RECORDS: usize = 100_000;

/// One observation of a running host.
#[derive(Debug, Clone)]
struct Point {
    at: Duration,
    committed: BTreeMap<i32, i64>,
    left: i64,
    sample: Sample,
}

/// Samples the host every `every` until `ends` is committed; `check` sees
/// each point as it comes (to assert while the host runs).
fn watch(
    env: &Env,
    host: &mut HostProcess,
    ends: &BTreeMap<i32, i64>,
    every: Duration,
    timeout: Duration,
    mut check: impl FnMut(&mut HostProcess, &Point),
) -> Vec<Point> {
    let started = Instant::now();
    let mut points = Vec::new();
    loop {
        host.assert_running();
        let committed = client::committed(&env.brokers(), &env.group, &env.input);
        let left = client::uncommitted(&committed, ends);
        let point = Point {
            at: started.elapsed(),
            committed,
            left,
            sample: host.sample(),
        };
        check(host, &point);
        points.push(point);
        if left == 0 {
            return points;
        }
        assert!(
            started.elapsed() < timeout,
            "{left} records not committed after {timeout:?}; log:\n{}",
            host.log_tail()
        );
        std::thread::sleep(every);
    }
}

/// The larger of each figure.
fn max(a: Sample, b: Sample) -> Sample {
    Sample {
        rss: a.rss.max(b.rss),
        threads: a.threads.max(b.threads),
        fds: a.fds.max(b.fds),
    }
}

/// A bad deploy: for a while every record traps. The host dead-letters
/// them at speed, no partition stalls, memory stays flat.
#[test]
fn a_plugin_trapping_on_every_record_is_dead_lettered_at_speed() {
    let env = Env::new(3);
    let mut inputs = client::numbered(0..10_000, None);
    let storm: Vec<Input> = (10_000..30_000)
        .map(|i| Input::new(format!("k{i}"), "unwrap-none"))
        .collect();
    inputs.extend(storm);
    inputs.extend(client::numbered(30_000..40_000, None));
    let mut producer = Producer::new(&env.brokers());
    producer.send_all(&env.input, &inputs);
    let ends = producer.ends(&env.input);
    let config = env.write_config("chaos", "");
    let mut host = env.start_host(&config);
    host.wait_status("/healthz", 200, Duration::from_secs(60));
    let mut last_move: BTreeMap<i32, (i64, Duration)> = BTreeMap::new();
    let points = watch(
        &env,
        &mut host,
        &ends,
        Duration::from_millis(500),
        Duration::from_secs(300),
        |host, point| {
            let (status, body) = host.get("/healthz").expect("admin answers");
            assert_eq!(status, 200, "alive through the storm: {body}");
            // No partition with records left sits still for 10 s.
            for (p, end) in &ends {
                let at = point.committed.get(p).copied().unwrap_or(-1);
                let moved = last_move.entry(*p).or_insert((at, point.at));
                if at != moved.0 {
                    *moved = (at, point.at);
                } else if at < *end && at >= 0 {
                    assert!(
                        point.at - moved.1 < Duration::from_secs(10),
                        "partition {p} stalled at {at} of {end}"
                    );
                }
            }
        },
    );
    // The storm is what lies between 10,000 and 30,000 records committed.
    let done = |n: i64| {
        points
            .iter()
            .find(|p| 40_000 - p.left >= n)
            .expect("reached")
            .clone()
    };
    let (before, after) = (done(10_000), done(30_000));
    let storm_time = after.at.saturating_sub(before.at);
    let rate = (30_000 - after.left - (10_000 - before.left)) as f64 / storm_time.as_secs_f64();
    let max_rss = points
        .iter()
        .filter(|p| p.at >= before.at)
        .map(|p| p.sample.rss)
        .max()
        .unwrap_or(0);
    let last = points.last().expect("points").sample;
    eprintln!(
        "trap storm: 20,000 traps; committed {:.0} records/s through it; RSS {} KiB before, max {} KiB, {} KiB after; threads {} -> {}; fds {} -> {}",
        rate,
        before.sample.rss >> 10,
        max_rss >> 10,
        last.rss >> 10,
        before.sample.threads,
        last.threads,
        before.sample.fds,
        last.fds
    );
    let status = host.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");
    let t = env.tally("trap storm", &inputs);
    assert_eq!(t.dead_keys, 20_000, "{t:?}");
    assert!(rate > 500.0, "dead-lettering crawled: {rate:.0} records/s");
    assert!(
        max_rss < before.sample.rss + before.sample.rss / 10 + (8 << 20),
        "RSS grew through the storm: {} -> {} KiB",
        before.sample.rss >> 10,
        max_rss >> 10
    );
}

/// Many small records with 1% traps through the host: after warm-up (the
/// first 30% of the records) its RSS stays within +10%, and its threads and
/// file descriptors do not grow.
#[test]
fn a_soak_of_small_records_keeps_memory_threads_and_fds_flat() {
    let total: usize = std::env::var("SANDPIPER_SOAK_RECORDS")
        .ok()
        .map_or(CI_SOAK_RECORDS, |n| {
            n.parse().expect("SANDPIPER_SOAK_RECORDS is a number")
        });
    let env = Env::new(3);
    let inputs = client::numbered(0..total, Some(100));
    let config = env.write_config("chaos", "");
    let mut host = env.start_host(&config);
    let started = Instant::now();
    // Inputs are produced while the host consumes them.
    let producing = {
        let (brokers, topic, inputs) = (env.brokers(), env.input.clone(), inputs.clone());
        std::thread::spawn(move || {
            let mut producer = Producer::new(&brokers);
            producer.send_all(&topic, &inputs);
            producer.ends(&topic)
        })
    };
    host.wait_status("/healthz", 200, Duration::from_secs(60));
    let ends = producing.join().expect("producing the soak inputs");
    let produced_in = started.elapsed();
    // Warm-up: the first 30% (buffers, pools and caches reach their size).
    let warm = total as i64 * 3 / 10;
    // The baseline is the highest of each figure during warm-up.
    let mut warming: Option<Sample> = None;
    let mut base: Option<(Duration, Sample)> = None;
    let mut worst = None::<Sample>;
    let points = watch(
        &env,
        &mut host,
        &ends,
        Duration::from_secs(1),
        Duration::from_secs(3600),
        |_, point| {
            let done = total as i64 - point.left;
            let s = point.sample;
            let Some((_, b)) = base else {
                let w = warming.get_or_insert(s);
                *w = max(*w, s);
                if done >= warm {
                    base = Some((point.at, *w));
                }
                return;
            };
            worst = Some(max(worst.unwrap_or(s), s));
            assert!(
                s.rss <= b.rss + b.rss / 10,
                "RSS grew past +10% after warm-up: {} -> {} KiB at {done} records",
                b.rss >> 10,
                s.rss >> 10
            );
            // Plugin calls run on the pipeline's own threads, a fixed number;
            // tokio's blocking pool (offset commits and other occasional
            // calls) starts and retires a thread now and then: a leak grows
            // without bound, this does not.
            assert!(
                s.threads <= b.threads + 2 && s.fds <= b.fds + 2,
                "threads or fds grew after warm-up: {b:?} -> {s:?} at {done} records"
            );
        },
    );
    let (warm_at, b) = base.expect("warmed up");
    let end = points.last().expect("points");
    let worst = worst.unwrap_or(b);
    let rate = (total as i64 - warm) as f64 / (end.at - warm_at).as_secs_f64();
    eprintln!(
        "soak: {total} records (1% traps), produced in {produced_in:?}, all committed after {:?} ({rate:.0} records/s after warm-up); \
         warm-up (max until {warm} records): RSS {} KiB, threads {}, fds {}; max after: RSS {} KiB ({:+.1}%), threads {}, fds {}; at the end: RSS {} KiB",
        end.at,
        b.rss >> 10,
        b.threads,
        b.fds,
        worst.rss >> 10,
        (worst.rss as f64 / b.rss as f64 - 1.0) * 100.0,
        worst.threads,
        worst.fds,
        end.sample.rss >> 10
    );
    let status = host.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop: {status}");
    let t = env.tally("soak", &inputs);
    assert_eq!(t.dead_keys, total / 100, "{t:?}");
}
