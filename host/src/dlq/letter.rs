//! Reading a dead letter's `sandpiper.*` headers, and turning it back into
//! the original record (with its replay count incremented).

use serde::Serialize;

use crate::kafka::Outgoing;
use crate::pipeline::deadletter as dl;
use crate::record::{Headers, Record};

/// How many times a record was replayed from a dead-letter topic. Kept by
/// the pipeline on dead letters (see `deadletter.rs`), so it survives a
/// replayed record failing again.
pub const H_REPLAY_COUNT: &str = "sandpiper.replay.count";

/// A dead-lettered record as the `dlq` commands see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Where the dead letter itself is.
    pub dlq_partition: i32,
    pub dlq_offset: i64,
    /// The original record's timestamp (`sandpiper.original.timestamp`,
    /// else the dead letter's own, which the pipeline copies from it).
    pub timestamp: Option<i64>,
    /// `None` when the record is not a Sandpiper dead letter.
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub kind: String,
    pub message: String,
    pub plugin: String,
    /// `None` when the header is there but unreadable.
    pub replays: Option<u32>,
}

fn header<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    // The pipeline replaces its headers, so there is one of each; the last
    // one wins should a producer other than Sandpiper have added more.
    record
        .headers
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

impl DeadLetter {
    pub fn read(record: &Record) -> Self {
        let text = |name: &str| header(record, name).unwrap_or_default().to_owned();
        let parse_i64 = |name: &str| header(record, name).and_then(|v| v.trim().parse().ok());
        Self {
            dlq_partition: record.partition,
            dlq_offset: record.offset,
            timestamp: parse_i64(dl::H_TIMESTAMP).or(record.timestamp),
            topic: header(record, dl::H_TOPIC)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
            partition: header(record, dl::H_PARTITION).and_then(|v| v.trim().parse().ok()),
            offset: parse_i64(dl::H_OFFSET),
            kind: text(dl::H_KIND),
            message: text(dl::H_MESSAGE),
            plugin: text(dl::H_PLUGIN),
            replays: match header(record, H_REPLAY_COUNT) {
                None => Some(0),
                Some(v) => v.trim().parse().ok(),
            },
        }
    }
}

/// Headers the pipeline sets on a dead letter, plus the replay count (the
/// replay sets it anew). Mirrors `deadletter.rs`, which keeps the count.
fn is_dead_letter_header(name: &str) -> bool {
    name.starts_with("sandpiper.error.")
        || name.starts_with("sandpiper.original.")
        || matches!(
            name,
            dl::H_GROUP | dl::H_PIPELINE | dl::H_PLUGIN | dl::H_ATTEMPTS | H_REPLAY_COUNT
        )
}

/// The original headers, with the replay count set to `replays`.
fn original_headers(record: &Record, replays: u32) -> Headers {
    let mut headers: Headers = record
        .headers
        .iter()
        .filter(|(k, _)| !is_dead_letter_header(k))
        .cloned()
        .collect();
    headers.push((H_REPLAY_COUNT.to_owned(), replays.to_string().into_bytes()));
    headers
}

/// The record to produce back to its original topic: original key, value,
/// timestamp and headers, replay count `replays`.
pub fn to_original(record: &Record, letter: &DeadLetter, topic: &str, replays: u32) -> Outgoing {
    Outgoing {
        topic: topic.to_owned(),
        key: record.key.clone(),
        value: record.value.clone(),
        headers: original_headers(record, replays),
        mark: None,
        timestamp: letter.timestamp,
    }
}

/// The original record as the plugin saw it (topic, partition, offset,
/// timestamp), replay count `replays`, to run through a plugin again.
pub fn to_record(record: &Record, letter: &DeadLetter, topic: &str, replays: u32) -> Record {
    Record {
        topic: topic.to_owned(),
        partition: letter.partition.unwrap_or(record.partition),
        offset: letter.offset.unwrap_or(record.offset),
        timestamp: letter.timestamp,
        key: record.key.clone(),
        value: record.value.clone(),
        headers: original_headers(record, replays),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_letter(extra: &[(&str, &str)]) -> Record {
        let mut headers: Headers = vec![
            ("n".into(), b"7".to_vec()),
            (dl::H_KIND.into(), b"trap".to_vec()),
            (dl::H_MESSAGE.into(), b"boom".to_vec()),
            (dl::H_TRAP.into(), b"unreachable".to_vec()),
            (dl::H_TOPIC.into(), b"orders".to_vec()),
            (dl::H_PARTITION.into(), b"2".to_vec()),
            (dl::H_OFFSET.into(), b"41".to_vec()),
            (dl::H_TIMESTAMP.into(), b"1700000000000".to_vec()),
            (dl::H_GROUP.into(), b"g".to_vec()),
            (dl::H_PIPELINE.into(), b"p".to_vec()),
            (dl::H_PLUGIN.into(), b"chaos@sha256:0123456789ab".to_vec()),
            (dl::H_ATTEMPTS.into(), b"1".to_vec()),
        ];
        headers.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())),
        );
        Record {
            topic: "orders-dlq".into(),
            partition: 0,
            offset: 5,
            timestamp: Some(1_700_000_000_000),
            key: Some(b"k".to_vec()),
            value: Some(b"unwrap-none".to_vec()),
            headers,
        }
    }

    #[test]
    fn reads_the_headers() {
        let letter = DeadLetter::read(&dead_letter(&[]));
        assert_eq!(letter.topic.as_deref(), Some("orders"));
        assert_eq!((letter.partition, letter.offset), (Some(2), Some(41)));
        assert_eq!((letter.dlq_partition, letter.dlq_offset), (0, 5));
        assert_eq!(letter.kind, "trap");
        assert_eq!(letter.plugin, "chaos@sha256:0123456789ab");
        assert_eq!(letter.replays, Some(0), "no header: never replayed");
        let letter = DeadLetter::read(&dead_letter(&[(H_REPLAY_COUNT, "2")]));
        assert_eq!(letter.replays, Some(2));
        let letter = DeadLetter::read(&dead_letter(&[(H_REPLAY_COUNT, "two")]));
        assert_eq!(letter.replays, None);
    }

    #[test]
    fn the_original_loses_our_headers_and_counts_the_replay() {
        let record = dead_letter(&[(H_REPLAY_COUNT, "1"), ("x", "y")]);
        let letter = DeadLetter::read(&record);
        let out = to_original(&record, &letter, "orders", 2);
        assert_eq!(out.topic, "orders");
        assert_eq!(out.key, record.key);
        assert_eq!(out.value, record.value);
        assert_eq!(out.timestamp, Some(1_700_000_000_000));
        assert_eq!(
            out.headers,
            vec![
                ("n".to_owned(), b"7".to_vec()),
                ("x".to_owned(), b"y".to_vec()),
                (H_REPLAY_COUNT.to_owned(), b"2".to_vec()),
            ]
        );
        let again = to_record(&record, &letter, "orders", 2);
        assert_eq!((again.partition, again.offset), (2, 41));
        assert_eq!(again.headers, out.headers);
    }
}
