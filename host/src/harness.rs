//! The offline harness: run a plugin over JSONL records without Kafka.
//!
//! It uses the same runtime, limits and instance reuse as the pipeline, so
//! what passes here behaves the same in production. Plugin failures are
//! results, not errors: only host-side problems (unreadable input, a bad
//! plugin file, an instance that cannot be created) make it fail.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::record::{Failure, FailureKind, Headers, Outcome, Output, Record};
use crate::runtime::{Instance, Plugin};

/// Bytes in JSONL: a UTF-8 string, or `{"base64": "..."}` for anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonBytes(pub Vec<u8>);

impl<'de> Deserialize<'de> for JsonBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Base64 { base64: String },
        }
        match Repr::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a UTF-8 string or {\"base64\": \"...\"}")
        })? {
            Repr::Text(s) => Ok(Self(s.into_bytes())),
            Repr::Base64 { base64 } => BASE64
                .decode(base64.as_bytes())
                .map(Self)
                .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}"))),
        }
    }
}

impl Serialize for JsonBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                let mut map = BTreeMap::new();
                map.insert("base64", BASE64.encode(&self.0));
                map.serialize(s)
            }
        }
    }
}

/// Headers in JSONL: `[["name", value], ...]` (ordered, may repeat) or `{"name": value}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JsonHeaders(pub Vec<(String, JsonBytes)>);

impl<'de> Deserialize<'de> for JsonHeaders {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Pairs(Vec<(String, JsonBytes)>),
            Map(BTreeMap<String, JsonBytes>),
        }
        match Repr::deserialize(d).map_err(|_| {
            serde::de::Error::custom("headers must be [[name, value], ...] or {name: value}")
        })? {
            Repr::Pairs(pairs) => Ok(Self(pairs)),
            Repr::Map(map) => Ok(Self(map.into_iter().collect())),
        }
    }
}

impl JsonHeaders {
    fn into_headers(self) -> Headers {
        self.0.into_iter().map(|(k, v)| (k, v.0)).collect()
    }

    fn from_headers(headers: Headers) -> Self {
        Self(
            headers
                .into_iter()
                .map(|(k, v)| (k, JsonBytes(v)))
                .collect(),
        )
    }
}

/// One input line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonRecord {
    #[serde(default = "default_topic")]
    pub topic: String,
    #[serde(default)]
    pub partition: i32,
    /// Defaults to the line's index among the records.
    pub offset: Option<i64>,
    pub timestamp: Option<i64>,
    pub key: Option<JsonBytes>,
    pub value: Option<JsonBytes>,
    #[serde(default)]
    pub headers: JsonHeaders,
    /// The expected outcome, for canaries: `"ok"` or a failure kind. Ignored by `plugin test`.
    #[serde(default)]
    pub expect: Option<String>,
}

fn default_topic() -> String {
    "input".into()
}

impl JsonRecord {
    pub fn into_record(self, index: i64) -> Record {
        Record {
            topic: self.topic,
            partition: self.partition,
            offset: self.offset.unwrap_or(index),
            timestamp: self.timestamp,
            key: self.key.map(|b| b.0),
            value: self.value.map(|b| b.0),
            headers: self.headers.into_headers(),
        }
    }
}

/// Reads JSONL records; errors name the file and line.
pub fn read_records(path: &Path) -> anyhow::Result<Vec<JsonRecord>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read input {}", path.display()))?;
    let mut records = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read input {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: JsonRecord = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: invalid record", path.display(), index + 1))?;
        records.push(record);
    }
    Ok(records)
}

#[derive(Debug, Serialize)]
struct JsonOutput {
    topic: Option<String>,
    key: Option<JsonBytes>,
    value: Option<JsonBytes>,
    headers: JsonHeaders,
}

impl From<Output> for JsonOutput {
    fn from(o: Output) -> Self {
        Self {
            topic: o.topic,
            key: o.key.map(JsonBytes),
            value: o.value.map(JsonBytes),
            headers: JsonHeaders::from_headers(o.headers),
        }
    }
}

/// One result line.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
enum JsonResult {
    Ok {
        topic: String,
        partition: i32,
        offset: i64,
        outputs: Vec<JsonOutput>,
    },
    Failed {
        topic: String,
        partition: i32,
        offset: i64,
        failure: Failure,
    },
}

/// Counts of what happened, printed at the end.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub records: u64,
    pub succeeded: u64,
    pub outputs: u64,
    pub failed: BTreeMap<FailureKind, u64>,
}

impl Summary {
    fn count(&mut self, outcome: &Outcome) {
        self.records += 1;
        match outcome {
            Ok(outputs) => {
                self.succeeded += 1;
                self.outputs += outputs.len() as u64;
            }
            Err(failure) => *self.failed.entry(failure.kind).or_default() += 1,
        }
    }

    /// Failures that are the host's, not the plugin's.
    pub fn host_errors(&self) -> u64 {
        self.failed
            .iter()
            .filter(|(kind, _)| kind.is_host_side())
            .map(|(_, n)| n)
            .sum()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let failed: u64 = self.failed.values().sum();
        write!(
            f,
            "{} records: {} succeeded ({} outputs), {} failed",
            self.records, self.succeeded, self.outputs, failed
        )?;
        if !self.failed.is_empty() {
            let kinds: Vec<String> = self
                .failed
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            write!(f, " ({})", kinds.join(", "))?;
        }
        Ok(())
    }
}

/// Runs `records` through one instance of `plugin`, writing a JSON line per record.
pub fn run(
    plugin: &std::sync::Arc<Plugin>,
    records: Vec<JsonRecord>,
    out: &mut impl Write,
) -> anyhow::Result<Summary> {
    let mut instance = Instance::new(plugin.clone());
    let mut summary = Summary::default();
    for (index, json) in records.into_iter().enumerate() {
        let record = json.into_record(index as i64);
        let outcome = instance.handle(&record);
        summary.count(&outcome);
        let Record {
            topic,
            partition,
            offset,
            ..
        } = record;
        let line = match outcome {
            Ok(outputs) => JsonResult::Ok {
                topic,
                partition,
                offset,
                outputs: outputs.into_iter().map(JsonOutput::from).collect(),
            },
            Err(failure) => JsonResult::Failed {
                topic,
                partition,
                offset,
                failure: *failure,
            },
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(summary)
}
