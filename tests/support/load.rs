//! Load and progress for the multi-host tests on Apache Kafka: a feeder
//! producing numbered inputs at a steady rate, a watcher reading the
//! group's committed offsets, the longest pause in them, and a host's
//! assigned partitions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

use super::client::{self, Input, Producer};
use super::process::HostProcess;

/// Produces numbered inputs at about `per_second`, paced by the clock,
/// until stopped; finishing it returns what it produced and its producer
/// (every record acknowledged).
#[derive(Debug)]
pub struct Feeder {
    pub stop: Arc<AtomicBool>,
    pub thread: JoinHandle<(Vec<Input>, Producer)>,
}

impl Feeder {
    pub fn start(
        brokers: String,
        topic: String,
        per_second: u64,
        trap_every: Option<usize>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut producer = Producer::new(&brokers);
            let mut inputs = Vec::new();
            let started = Instant::now();
            let every = Duration::from_micros(1_000_000 / per_second);
            while !flag.load(Ordering::Relaxed) {
                let i = inputs.len();
                let input = client::numbered(i..i + 1, trap_every).remove(0);
                producer.send(&topic, &input);
                inputs.push(input);
                let due = started + every * u32::try_from(i + 1).expect("inputs fit a u32");
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            producer.flush();
            (inputs, producer)
        });
        Self { stop, thread }
    }

    pub fn finish(self) -> (Vec<Input>, Producer) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the feeding thread panicked")
    }
}

/// Inputs the `chaos` plugin traps on.
pub fn traps(inputs: &[Input]) -> usize {
    inputs
        .iter()
        .filter(|i| i.value.as_deref() == Some(b"unwrap-none"))
        .count()
}

/// One reading of the group's committed offsets on the input.
#[derive(Debug, Clone)]
pub struct Reading {
    pub at: Instant,
    pub committed: BTreeMap<i32, i64>,
}

/// Reads the group's committed offsets every 200 ms (one client of the
/// test's that never joins the group) until finished.
#[derive(Debug)]
pub struct CommitWatch {
    pub stop: Arc<AtomicBool>,
    pub thread: JoinHandle<Vec<Reading>>,
}

impl CommitWatch {
    pub fn start(brokers: String, group: String, topic: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let consumer = offsets_reader(&brokers, &group);
            let partitions = client::partitions(&consumer, &topic);
            let mut readings = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let mut tpl = TopicPartitionList::new();
                for p in &partitions {
                    tpl.add_partition(&topic, *p);
                }
                // A reading counts only when it has every partition's offset.
                let read: Option<BTreeMap<i32, i64>> = consumer
                    .committed_offsets(tpl, Duration::from_secs(2))
                    .ok()
                    .and_then(|tpl| {
                        tpl.elements()
                            .iter()
                            .map(|e| {
                                e.error().ok()?;
                                Some((e.partition(), e.offset().to_raw().unwrap_or(-1).max(0)))
                            })
                            .collect()
                    });
                if let Some(committed) = read.filter(|r| r.len() == partitions.len()) {
                    readings.push(Reading {
                        at: Instant::now(),
                        committed,
                    });
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            readings
        });
        Self { stop, thread }
    }

    pub fn finish(self) -> Vec<Reading> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the commit watcher panicked")
    }
}

/// A client that reads offsets and never joins `group`.
pub fn offsets_reader(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("offsets reader")
}

/// The longest time `value` of the readings did not grow, counted from
/// the first reading where it is positive (nothing is committed before the
/// first host has started) to the last reading: (pause, when it began).
/// A failed reading is no reading: a pause lasts until one shows progress.
pub fn longest_pause(readings: &[Reading], value: impl Fn(&Reading) -> i64) -> (Duration, Instant) {
    let mut longest = (Duration::ZERO, Instant::now());
    let mut since: Option<(Instant, i64)> = None;
    for r in readings {
        let v = value(r);
        match since {
            None if v > 0 => since = Some((r.at, v)),
            None => {}
            Some((at, last)) => {
                if r.at - at > longest.0 {
                    longest = (r.at - at, at);
                }
                if v > last {
                    since = Some((r.at, v));
                }
            }
        }
    }
    longest
}

/// What happened from `at` to `at + span` (or, if nothing, last before it).
pub fn around(events: &[(Instant, String)], at: Instant, span: Duration) -> Vec<String> {
    let during: Vec<String> = events
        .iter()
        .filter(|(t, _)| (at..=at + span).contains(t))
        .map(|(_, e)| e.clone())
        .collect();
    if during.is_empty() {
        events
            .iter()
            .rev()
            .find(|(t, _)| *t < at)
            .map(|(_, e)| vec![e.clone()])
            .unwrap_or_default()
    } else {
        during
    }
}

/// The input partitions a host has (`/status`), or `None` while it does
/// not answer.
pub fn assigned(host: &HostProcess) -> Option<BTreeSet<String>> {
    let (status, body) = host.get("/status")?;
    if status != 200 {
        return None;
    }
    Some(
        body["pipelines"][0]["assigned"]
            .as_array()?
            .iter()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect(),
    )
}
