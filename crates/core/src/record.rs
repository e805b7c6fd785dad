//! The project's own record and outcome types.
//!
//! Everything outside the runtime and Kafka crates speaks in these types:
//! the pipeline hands a [`Record`] to a plugin instance and gets an
//! [`Outcome`] back. Wasmtime and rdkafka types never leak past those crates.

use std::fmt;

use serde::Serialize;

use crate::PluginId;

/// Kafka headers in order, values as raw bytes (names may repeat).
pub type Headers = Vec<(String, Vec<u8>)>;

/// Bytes of `headers`' names and values.
pub fn headers_size(headers: &Headers) -> usize {
    headers.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// One consumed record, owned, as handed to a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the Unix epoch, when the record has one.
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Headers,
}

impl Record {
    /// Bytes this record holds (key, value, headers).
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + headers_size(&self.headers)
    }
}

/// One record a plugin asks the host to produce.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// Destination topic; `None` means the pipeline's default output topic.
    pub topic: Option<String>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Headers,
}

impl Output {
    /// Bytes this output costs to hold and produce (key, value, headers).
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self.topic.as_ref().map_or(0, String::len)
            + headers_size(&self.headers)
    }
}

/// What became of one record in a plugin: its outputs, or why it failed.
pub type Outcome = Result<Vec<Output>, Box<Failure>>;

/// Why a record failed. The names are stable: they go into dead-letter
/// headers, metrics and the harness output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The guest trapped (a panic, an out-of-bounds access, a stack overflow...).
    Trap,
    /// The guest ran past its wall-clock deadline.
    Timeout,
    /// The guest ran out of fuel.
    OutOfFuel,
    /// The guest tried to grow its memory past the cap and then failed.
    OutOfMemory,
    /// The guest returned more outputs or output bytes than allowed.
    OutputLimit,
    /// The plugin rejected the record (permanent).
    Rejected,
    /// The plugin asked for a retry (transient).
    Retry,
    /// Retries were asked for until the attempts ran out.
    RetriesExhausted,
    /// The host could not instantiate the plugin: not the record's fault.
    InstantiateError,
    /// The broker (or the producer) refused one of the record's outputs for
    /// good: too large for the topic, invalid, or for a topic that does not
    /// exist or may not be written. Retrying could never succeed.
    OutputRefused,
}

impl FailureKind {
    /// The stable kebab-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Trap => "trap",
            Self::Timeout => "timeout",
            Self::OutOfFuel => "out-of-fuel",
            Self::OutOfMemory => "out-of-memory",
            Self::OutputLimit => "output-limit",
            Self::Rejected => "rejected",
            Self::Retry => "retry",
            Self::RetriesExhausted => "retries-exhausted",
            Self::InstantiateError => "instantiate-error",
            Self::OutputRefused => "output-refused",
        }
    }

    /// Host-side failures are not the record's fault: the pipeline retries
    /// them and never dead-letters a record for them.
    pub const fn is_host_side(self) -> bool {
        matches!(self, Self::InstantiateError)
    }

    /// Every kind, for metrics and tallies.
    pub const ALL: [FailureKind; 10] = [
        Self::Trap,
        Self::Timeout,
        Self::OutOfFuel,
        Self::OutOfMemory,
        Self::OutputLimit,
        Self::Rejected,
        Self::Retry,
        Self::RetriesExhausted,
        Self::InstantiateError,
        Self::OutputRefused,
    ];
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed call, with everything an operator needs to see why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    /// The wasm trap code (`unreachable`, `memory-out-of-bounds`...), `panic`
    /// for a Rust panic or `exit` for a guest that exited, for traps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trap: Option<String>,
    /// Guest backtrace frames, innermost first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backtrace: Vec<String>,
    /// The tail of what the guest wrote to stdout/stderr during the call.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// Which plugin build failed.
    pub plugin: PluginId,
}

impl Failure {
    /// A failure with only a kind and a message.
    pub fn new(kind: FailureKind, message: impl Into<String>, plugin: PluginId) -> Self {
        Self {
            kind,
            message: message.into(),
            trap: None,
            backtrace: Vec::new(),
            stderr: String::new(),
            plugin,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(trap) = &self.trap {
            write!(f, " (trap {trap})")?;
        }
        Ok(())
    }
}
