//! An independent Kafka client for the real-broker tests: produces inputs
//! (raw header names included) and reads whole topics back, with none of
//! the host's code in between.
//!
//! Blocking on purpose: the real-broker tests drive child processes with
//! plain threads and sleeps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, DeliveryResult, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

/// A record to produce. Header names are bytes (they need not be UTF-8)
/// and header values may be null.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Input {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// `None`: librdkafka's partitioner picks (by key).
    pub partition: Option<i32>,
}

impl Input {
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: Some(key.into()),
            value: Some(value.into()),
            ..Self::default()
        }
    }
}

/// `count` inputs keyed `k{i}`; every `trap_every`-th one (if any) has the
/// value `unwrap-none`, which makes the `chaos` plugin trap.
pub fn numbered(range: std::ops::Range<usize>, trap_every: Option<usize>) -> Vec<Input> {
    range
        .map(|i| {
            let trap = trap_every.is_some_and(|n| i % n == n / 2);
            let value = if trap {
                "unwrap-none".to_owned()
            } else {
                format!("v{i}")
            };
            Input::new(format!("k{i}"), value)
        })
        .collect()
}

/// Counts acknowledgements and failures of a producer.
#[derive(Debug, Default)]
struct Acks {
    delivered: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Per topic and partition: the offset after the last acknowledged
    /// record. Tansu's ListOffsets answers do not give a partition's end,
    /// so the tests take it from the delivery reports.
    ends: Mutex<BTreeMap<(String, i32), i64>>,
}

#[derive(Debug, Clone, Default)]
struct AckContext(Arc<Acks>);

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
                let mut ends = self
                    .0
                    .ends
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let end = ends
                    .entry((m.topic().to_owned(), m.partition()))
                    .or_insert(0);
                *end = (*end).max(m.offset() + 1);
            }
            Err((error, _)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                *self
                    .0
                    .last_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error.to_string());
            }
        }
    }
}

/// A producer of test inputs: idempotent, `acks=all`, and it checks that
/// every record it sent was acknowledged.
pub struct Producer {
    inner: ThreadedProducer<AckContext>,
    acks: Arc<Acks>,
    sent: u64,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl Producer {
    pub fn new(brokers: &str) -> Self {
        let acks = Arc::new(Acks::default());
        let inner = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "120000")
            .set("allow.auto.create.topics", "false")
            .create_with_context(AckContext(acks.clone()))
            .expect("test producer");
        Self {
            inner,
            acks,
            sent: 0,
        }
    }

    /// Queues one record (waits while librdkafka's queue is full).
    pub fn send(&mut self, topic: &str, input: &Input) {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).headers(raw_headers(&input.headers));
        if let Some(key) = &input.key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = &input.value {
            record = record.payload(value.as_slice());
        }
        if let Some(p) = input.partition {
            record = record.partition(p);
        }
        loop {
            match self.inner.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => panic!("producing a test input to {topic}: {error}"),
            }
        }
        self.sent += 1;
    }

    /// Sends all of `inputs` and waits until every one is acknowledged.
    pub fn send_all(&mut self, topic: &str, inputs: &[Input]) {
        for input in inputs {
            self.send(topic, input);
        }
        self.flush();
    }

    /// Waits until everything sent is acknowledged; panics on any failure.
    pub fn flush(&self) {
        self.inner
            .flush(Duration::from_secs(120))
            .expect("flushing the test producer");
        let failed = self.acks.failed.load(Ordering::Relaxed);
        assert_eq!(
            failed,
            0,
            "the broker refused {failed} test inputs: {:?}",
            self.acks.last_error.lock().ok().and_then(|e| e.clone())
        );
        assert_eq!(
            self.acks.delivered.load(Ordering::Relaxed),
            self.sent,
            "every test input is acknowledged"
        );
    }

    /// Records sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// End offsets of `topic`'s partitions as far as this producer wrote
    /// (call after [`Producer::flush`]).
    pub fn ends(&self, topic: &str) -> BTreeMap<i32, i64> {
        self.acks
            .ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|((t, _), _)| t == topic)
            .map(|((_, p), end)| (*p, *end))
            .collect()
    }
}

/// Headers whose names may be any bytes. rust-rdkafka only takes `&str`
/// names, so names go to librdkafka directly (it takes name and length).
#[allow(unsafe_code)]
fn raw_headers(list: &[(Vec<u8>, Option<Vec<u8>>)]) -> OwnedHeaders {
    use rdkafka::bindings as rdsys;
    let headers = OwnedHeaders::new_with_capacity(list.len().max(1));
    let ptr = std::ptr::from_ref::<BorrowedHeaders>(headers.as_borrowed())
        .cast_mut()
        .cast::<rdsys::rd_kafka_headers_t>();
    for (name, value) in list {
        let (value_ptr, value_len) = value.as_ref().map_or((std::ptr::null(), 0), |v| {
            (v.as_ptr().cast::<std::ffi::c_void>(), v.len() as isize)
        });
        // SAFETY: `ptr` is the live `rd_kafka_headers_t` owned by `headers`
        // (a `BorrowedHeaders` is that pointer); librdkafka copies the name
        // and value, which are valid for the lengths given.
        let err = unsafe {
            rdsys::rd_kafka_header_add(
                ptr,
                name.as_ptr().cast::<std::ffi::c_char>(),
                name.len() as isize,
                value_ptr,
                value_len,
            )
        };
        assert_eq!(
            err,
            rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
            "adding a header"
        );
    }
    headers
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Names as text: the host only ever writes UTF-8 names.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Rec {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    pub fn header_str(&self, name: &str) -> &str {
        self.header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("")
    }
}

/// Partition ids of `topic`.
pub fn partitions(consumer: &BaseConsumer, topic: &str) -> Vec<i32> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .unwrap_or_else(|| panic!("topic {topic} not in the metadata"));
    assert!(t.error().is_none(), "topic {topic}: {:?}", t.error());
    t.partitions().iter().map(|p| p.id()).collect()
}

/// A consumer that reads what it is assigned, without a group's commits.
fn reader(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sandpiper-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("test reader")
}

/// After the reader has everything it waits for, how long it goes on
/// reading for late copies (duplicates) and records nobody expected. Tansu
/// cannot say where a partition ends (ListOffsets), so with the host
/// stopped this long without a new record is taken as the end; on brokers
/// that can, [`key_counts_to_end`] reads to the high watermark instead.
const LINGER: Duration = Duration::from_secs(5);

/// Reads `topics` from the beginning, handing each record to `visit`
/// (so a million records need not be kept). `visit` returns true once it
/// has everything it waits for; reading then goes on until nothing new came
/// for [`LINGER`]. Without that, it stops when nothing new came for `quiet`.
///
/// Tansu's end offsets (ListOffsets) are not usable, so "the end" is
/// "nothing more arrives" here; the host is stopped before a final read.
pub fn scan(brokers: &str, topics: &[&str], quiet: Duration, mut visit: impl FnMut(Rec) -> bool) {
    let consumer = reader(brokers);
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        for p in partitions(&consumer, topic) {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition list");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let (started, mut last) = (Instant::now(), Instant::now());
    let mut complete = false;
    loop {
        let idle = last.elapsed();
        if idle >= quiet || (complete && idle >= LINGER) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "reading {topics:?} took over 600 s"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                complete = visit(Rec {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers: m.headers().map_or_else(Vec::new, |h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    }),
                });
            }
            Some(Err(error)) => eprintln!("reading {topics:?}: {error}"),
            None => {}
        }
    }
}

/// The first `want` records of `topics` (all of them if fewer arrive
/// within `quiet` of each other).
pub fn read(brokers: &str, topics: &[&str], want: usize, quiet: Duration) -> Vec<Rec> {
    let mut out = Vec::new();
    scan(brokers, topics, quiet, |r| {
        out.push(r);
        out.len() >= want
    });
    out
}

/// Per topic, how many times each key of `inputs` occurs in it. Reading
/// stops once every input key was seen (plus [`LINGER`]), or after
/// `quiet` without news.
pub fn key_counts(
    brokers: &str,
    topics: &[&str],
    inputs: &[Input],
    quiet: Duration,
) -> Vec<HashMap<Vec<u8>, u32>> {
    let wanted: HashSet<&[u8]> = inputs.iter().filter_map(|i| i.key.as_deref()).collect();
    let mut seen: HashSet<Vec<u8>> = HashSet::with_capacity(wanted.len());
    let mut counts = vec![HashMap::new(); topics.len()];
    scan(brokers, topics, quiet, |r| {
        let key = r.key.unwrap_or_default();
        if wanted.contains(key.as_slice()) && !seen.contains(&key) {
            seen.insert(key.clone());
        }
        let i = topics.iter().position(|t| *t == r.topic).unwrap_or(0);
        *counts[i].entry(key).or_insert(0) += 1;
        seen.len() >= wanted.len()
    });
    counts
}

/// Per topic, how many records carry each key, reading every partition of
/// `topics` from its beginning to its high watermark as of the call (a
/// broker whose ListOffsets gives a partition's end: Apache Kafka, the
/// mock cluster; not Tansu, see [`key_counts`]). Extra copies count.
pub fn key_counts_to_end(brokers: &str, topics: &[&str]) -> Vec<HashMap<Vec<u8>, u32>> {
    let consumer = reader(brokers);
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for topic in topics {
        for p in partitions(&consumer, topic) {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"));
            if high > low {
                ends.insert((topic.to_string(), p), high);
                tpl.add_partition_offset(topic, p, Offset::Offset(low))
                    .expect("partition list");
            }
        }
    }
    let mut counts = vec![HashMap::new(); topics.len()];
    if ends.is_empty() {
        return counts;
    }
    consumer.assign(&tpl).expect("assign");
    let started = Instant::now();
    while !ends.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{topics:?} not read to their high watermarks: {ends:?} left"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let at = (m.topic().to_owned(), m.partition());
                if ends.get(&at).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&at);
                }
                let i = topics.iter().position(|t| *t == m.topic()).unwrap_or(0);
                *counts[i]
                    .entry(m.key().unwrap_or_default().to_vec())
                    .or_insert(0) += 1;
            }
            Some(Err(error)) => eprintln!("reading {topics:?}: {error}"),
            None => {}
        }
    }
    counts
}

/// Committed offsets of `group` on `topic` (-1: none).
pub fn committed(brokers: &str, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offsets reader");
    let mut tpl = TopicPartitionList::new();
    for p in partitions(&consumer, topic) {
        tpl.add_partition(topic, p);
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map(|tpl| {
            tpl.elements()
                .iter()
                .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
                .collect()
        })
        .unwrap_or_default()
}

/// Records of `topic` that `group` has not committed, given the topic's
/// end offsets.
pub fn uncommitted(committed: &BTreeMap<i32, i64>, ends: &BTreeMap<i32, i64>) -> i64 {
    ends.iter()
        .map(|(p, end)| (end - committed.get(p).copied().unwrap_or(-1).max(0)).max(0))
        .sum()
}

/// Waits until `group` has committed `topic` up to `ends`. `check` runs
/// between polls (to fail fast when the host died). Returns how long it took.
pub fn wait_committed(
    brokers: &str,
    group: &str,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    timeout: Duration,
    mut check: impl FnMut(),
) -> Duration {
    let started = Instant::now();
    loop {
        check();
        let committed = committed(brokers, group, topic);
        if uncommitted(&committed, ends) == 0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{topic} not committed by {group} within {timeout:?}: committed {committed:?}, ends {ends:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub use super::tally::Tally;

/// Tallies inputs (their keys must be unique) against key counts of the
/// output and dead-letter topics.
pub fn tally(
    inputs: &[Input],
    outputs: &HashMap<Vec<u8>, u32>,
    dead: &HashMap<Vec<u8>, u32>,
) -> Tally {
    Tally::of(
        inputs.iter().filter_map(|i| i.key.as_deref()),
        outputs,
        dead,
    )
}

/// Asserts nothing is missing and reports duplicates.
pub fn assert_complete(what: &str, t: &Tally) {
    t.assert_complete(what);
}
