//! Write [Sandpiper](../../README.md) plugins in plain Rust.
//!
//! A plugin is a WebAssembly component that the Sandpiper host runs on each
//! Kafka record (several records per call, each on its own: its deadline,
//! its fuel, its outcome). Implement [`Handler`] for a type and hand it to
//! [`export!`]:
//!
//! ```ignore
//! use sandpiper_sdk::{Failure, Handler, Message, Output};
//!
//! struct Upper;
//!
//! impl Handler for Upper {
//!     fn handle(msg: Message) -> Result<Vec<Output>, Failure> {
//!         let value = msg.value.as_deref().map(<[u8]>::to_ascii_uppercase);
//!         sandpiper_sdk::debug!("offset {}", msg.offset);
//!         Ok(vec![Output { value, ..Output::from_message(msg) }])
//!     }
//! }
//!
//! sandpiper_sdk::export!(Upper);
//! ```
//!
//! Where copying each record costs much of what the plugin does (small
//! records passed on nearly unchanged), override
//! [`Handler::handle_borrowed`] too: it is lent the record
//! ([`MessageRef`]) and writes its outputs straight into the buffer the
//! host reads ([`Outputs`]).
//!
//! Build with `cargo build --target wasm32-wasip2 --release`; see the crate's
//! README for testing a plugin offline and for how faults map to outcomes.
//!
//! This crate is the only place that touches the generated WIT bindings
//! (`wit/processor.wit`, world `sandpiper:plugin/batch-processor@0.1.0`); plugin
//! crates need no other dependency.

#![warn(missing_docs, missing_debug_implementations)]

use std::fmt;

#[doc(hidden)]
pub mod __private {
    //! Not public API: used by the [`export!`](crate::export) macro expansion.

    #[allow(missing_docs, missing_debug_implementations, clippy::all)]
    pub mod bindings {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "batch-processor",
            pub_export_macro: true,
            export_macro_name: "__sandpiper_export_processor",
            default_bindings_module: "::sandpiper_sdk::__private::bindings",
            generate_all,
        });
    }

    use bindings::sandpiper::plugin::batch::finished_encoded;
    use bindings::sandpiper::plugin::types as wit;

    /// Runs `H` on each message encoded in `records` in turn, lending it
    /// ([`Handler::handle_borrowed`](crate::Handler::handle_borrowed)) and
    /// reporting each outcome to the host before the next, until it says
    /// stop.
    pub fn dispatch_batch<H: crate::Handler>(records: Vec<u8>) {
        install_panic_hook();
        let mut reader = sandpiper_wire::Reader::new(&records);
        // One record's outputs at a time; the allocation serves the call.
        let mut out = crate::Outputs::default();
        while !reader.is_empty() {
            let Some(msg) = reader.record().map(crate::MessageRef::from) else {
                // The host encodes what the contract says; a malformed
                // batch is a host bug, so it traps rather than guess.
                panic!("sandpiper-sdk: malformed handle-batch records");
            };
            out.encoded.clear();
            let go_on = match H::handle_borrowed(&msg, &mut out) {
                Ok(()) => finished_encoded(Ok(&out.encoded)),
                Err(failure) => finished_encoded(Err(&failure.into_wit())),
            };
            if !go_on {
                return;
            }
        }
    }

    /// Runs `H` on one record in WIT form and converts the answer back.
    pub fn dispatch<H: crate::Handler>(
        msg: wit::Message,
    ) -> Result<Vec<wit::Output>, wit::Failure> {
        install_panic_hook();
        match H::handle(crate::Message::from_wit(msg)) {
            Ok(outputs) => Ok(outputs.into_iter().map(crate::Output::into_wit).collect()),
            Err(failure) => Err(failure.into_wit()),
        }
    }

    /// A panic prints its report (to the host's capture of stderr) and
    /// then exits through WASI, which ends the call in the host at once.
    /// Left to itself, a panic aborts with a wasm `unreachable` trap, which
    /// the host learns of through a signal costing several microseconds
    /// more; the host reports both the same way, kind `trap`, trap code
    /// `panic` and the panic's report as the message.
    fn install_panic_hook() {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                use std::io::Write;
                let payload = info.payload_as_str().unwrap_or("Box<dyn Any>");
                let report = |out: &mut dyn Write| match info.location() {
                    Some(at) => write!(out, "panicked at {at}:\n{payload}\n"),
                    None => write!(out, "panicked:\n{payload}\n"),
                };
                // In one write where it fits: std's own hook writes the
                // report in pieces, each a WASI call (three with the
                // stream's handle). A buffer on the stack, not the heap: the
                // panic may be about memory.
                let mut buffer = [0u8; 2048];
                let mut cursor = std::io::Cursor::new(&mut buffer[..]);
                let mut stderr = std::io::stderr();
                let _ = match report(&mut cursor) {
                    Ok(()) => {
                        let len = cursor.position() as usize;
                        stderr.write_all(&buffer[..len])
                    }
                    Err(_) => report(&mut stderr),
                };
                // WASI 0.2 carries only failure: the host sees status 1.
                std::process::exit(101);
            }));
        });
    }
}

use __private::bindings::sandpiper::plugin as wit;

/// Kafka record headers, in order: `(name, raw value)` pairs. Names may repeat.
pub type Headers = Vec<(String, Vec<u8>)>;

/// The record the host hands to the plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Topic the record was consumed from.
    pub topic: String,
    /// Partition the record was consumed from.
    pub partition: i32,
    /// Offset of the record in its partition.
    pub offset: i64,
    /// Milliseconds since the Unix epoch, when the record has one.
    pub timestamp: Option<i64>,
    /// Record key; `None` is a null key (not the same as an empty key).
    pub key: Option<Vec<u8>>,
    /// Record value; `None` is a null value (a tombstone), not an empty value.
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Headers,
}

impl Message {
    /// The value as UTF-8 text; `None` if the value is null or not valid UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        self.value
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The key as UTF-8 text; `None` if the key is null or not valid UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The value of the first header called `name` (case-sensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn from_wit(m: wit::types::Message) -> Self {
        Self {
            topic: m.topic,
            partition: m.partition,
            offset: m.offset,
            timestamp: m.timestamp,
            key: m.key,
            value: m.value,
            headers: m.headers,
        }
    }
}

/// A record lent to [`Handler::handle_borrowed`]: its fields borrow the
/// bytes the host handed over, so reading a record allocates nothing
/// (headers aside: their list is allocated when there are any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageRef<'a> {
    /// Topic the record was consumed from.
    pub topic: &'a str,
    /// Partition the record was consumed from.
    pub partition: i32,
    /// Offset of the record in its partition.
    pub offset: i64,
    /// Milliseconds since the Unix epoch, when the record has one.
    pub timestamp: Option<i64>,
    /// Record key; `None` is a null key (not the same as an empty key).
    pub key: Option<&'a [u8]>,
    /// Record value; `None` is a null value (a tombstone), not an empty value.
    pub value: Option<&'a [u8]>,
    /// Headers, in order: `(name, raw value)` pairs.
    pub headers: Vec<(&'a str, &'a [u8])>,
}

impl<'a> From<sandpiper_wire::RecordRef<'a>> for MessageRef<'a> {
    fn from(record: sandpiper_wire::RecordRef<'a>) -> Self {
        Self {
            topic: record.topic,
            partition: record.partition,
            offset: record.offset,
            timestamp: record.timestamp,
            key: record.key,
            value: record.value,
            headers: record.headers.iter().collect(),
        }
    }
}

impl<'a> MessageRef<'a> {
    /// Lends `msg`.
    pub fn new(msg: &'a Message) -> Self {
        Self {
            topic: &msg.topic,
            partition: msg.partition,
            offset: msg.offset,
            timestamp: msg.timestamp,
            key: msg.key.as_deref(),
            value: msg.value.as_deref(),
            headers: msg
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_slice()))
                .collect(),
        }
    }

    /// A copy that owns its fields.
    pub fn to_message(&self) -> Message {
        Message {
            topic: self.topic.to_owned(),
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.map(<[u8]>::to_vec),
            headers: self
                .headers
                .iter()
                .map(|&(name, value)| (name.to_owned(), value.to_vec()))
                .collect(),
        }
    }

    /// The value as UTF-8 text; `None` if the value is null or not valid UTF-8.
    pub fn value_str(&self) -> Option<&'a str> {
        self.value.and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The key as UTF-8 text; `None` if the key is null or not valid UTF-8.
    pub fn key_str(&self) -> Option<&'a str> {
        self.key.and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The value of the first header called `name` (case-sensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, v)| v)
    }
}

/// An output written from borrowed parts, for [`Outputs::push_ref`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputRef<'a> {
    /// Destination topic; `None` means the pipeline's default output topic.
    pub topic: Option<&'a str>,
    /// Record key; `None` is a null key.
    pub key: Option<&'a [u8]>,
    /// Record value; `None` is a null value.
    pub value: Option<&'a [u8]>,
    /// Headers, in order.
    pub headers: &'a [(&'a str, &'a [u8])],
}

impl<'a> OutputRef<'a> {
    /// The record passed through: same key, value and headers, default topic.
    pub fn from_message(msg: &'a MessageRef<'a>) -> Self {
        Self {
            topic: None,
            key: msg.key,
            value: msg.value,
            headers: &msg.headers,
        }
    }
}

/// Where [`Handler::handle_borrowed`] puts a record's outputs, in order:
/// each is encoded at once into a buffer that the host reads, so an
/// output made of borrowed parts is never allocated on its own.
#[derive(Debug, Default)]
pub struct Outputs {
    encoded: Vec<u8>,
}

impl Outputs {
    /// Adds an output.
    pub fn push(&mut self, output: &Output) {
        sandpiper_wire::write_output(
            &mut self.encoded,
            output.topic.as_deref(),
            output.key.as_deref(),
            output.value.as_deref(),
            output
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_slice())),
        );
    }

    /// Adds an output made of borrowed parts (of the message, say).
    pub fn push_ref(&mut self, output: OutputRef<'_>) {
        sandpiper_wire::write_output(
            &mut self.encoded,
            output.topic,
            output.key,
            output.value,
            output.headers.iter().copied(),
        );
    }

    /// The outputs added so far, owned.
    pub fn to_vec(&self) -> Vec<Output> {
        let mut reader = sandpiper_wire::Reader::new(&self.encoded);
        let mut outputs = Vec::new();
        while !reader.is_empty() {
            let output = reader.output().expect("outputs are encoded by `push`");
            outputs.push(Output {
                topic: output.topic.map(str::to_owned),
                key: output.key.map(<[u8]>::to_vec),
                value: output.value.map(<[u8]>::to_vec),
                headers: output
                    .headers
                    .iter()
                    .map(|(name, value)| (name.to_owned(), value.to_vec()))
                    .collect(),
            });
        }
        outputs
    }
}

/// [`Handler::handle`] for a handler whose logic is in
/// [`Handler::handle_borrowed`]: lends `msg` to it and returns the outputs
/// it wrote.
pub fn handle_lent<H: Handler>(msg: Message) -> Result<Vec<Output>, Failure> {
    // Room for an output the size of the record, without growing.
    let size = msg.key.as_ref().map_or(0, Vec::len)
        + msg.value.as_ref().map_or(0, Vec::len)
        + msg
            .headers
            .iter()
            .map(|(n, v)| 8 + n.len() + v.len())
            .sum::<usize>();
    let mut out = Outputs {
        encoded: Vec::with_capacity(size + 32),
    };
    H::handle_borrowed(&MessageRef::new(&msg), &mut out)?;
    Ok(out.to_vec())
}

/// A record the plugin asks the host to produce.
///
/// Build one with [`Output::value`], [`Output::new`] or
/// [`Output::from_message`], then chain [`to_topic`](Output::to_topic),
/// [`with_key`](Output::with_key), [`with_header`](Output::with_header).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Destination topic; `None` means the pipeline's default output topic.
    pub topic: Option<String>,
    /// Record key; `None` is a null key.
    pub key: Option<Vec<u8>>,
    /// Record value; `None` is a null value.
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Headers,
}

impl Output {
    /// An output with null key, null value, no headers, to the default topic.
    pub fn new() -> Self {
        Self::default()
    }

    /// An output with this value (null key, no headers, default topic).
    pub fn value(value: impl Into<Vec<u8>>) -> Self {
        Self {
            value: Some(value.into()),
            ..Self::default()
        }
    }

    /// The record passed through: same key, value and headers, default topic.
    pub fn from_message(msg: Message) -> Self {
        Self {
            topic: None,
            key: msg.key,
            value: msg.value,
            headers: msg.headers,
        }
    }

    /// Sends the output to `topic` instead of the pipeline's default output topic.
    pub fn to_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the value.
    pub fn with_value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Appends a header (existing headers of the same name are kept).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn into_wit(self) -> wit::types::Output {
        wit::types::Output {
            topic: self.topic,
            key: self.key,
            value: self.value,
            headers: self.headers,
        }
    }
}

impl From<Message> for Output {
    fn from(msg: Message) -> Self {
        Self::from_message(msg)
    }
}

/// A failure the plugin reports on purpose (traps are reported by the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Transient (a dependency is down): retried with backoff, then
    /// dead-lettered with kind `retries-exhausted`.
    Retry(String),
    /// Permanent (the payload is invalid): dead-lettered at once with kind
    /// `rejected`.
    Reject(String),
}

impl Failure {
    /// A transient failure: the host retries the record with backoff.
    pub fn retry(message: impl Into<String>) -> Self {
        Self::Retry(message.into())
    }

    /// A permanent failure: the host dead-letters the record at once.
    pub fn reject(message: impl Into<String>) -> Self {
        Self::Reject(message.into())
    }

    /// The message given when the failure was made.
    pub fn message(&self) -> &str {
        match self {
            Self::Retry(m) | Self::Reject(m) => m,
        }
    }

    fn into_wit(self) -> wit::types::Failure {
        match self {
            Self::Retry(m) => wit::types::Failure::Retry(m),
            Self::Reject(m) => wit::types::Failure::Reject(m),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retry(m) => write!(f, "retry: {m}"),
            Self::Reject(m) => write!(f, "reject: {m}"),
        }
    }
}

impl std::error::Error for Failure {}

/// The plugin's business logic. Wire it to the host with [`export!`].
pub trait Handler {
    /// Handles one record: `Ok(vec![])` filters it out, several outputs fan
    /// it out, `Err` reports a [`Failure`]. A panic traps the instance.
    fn handle(msg: Message) -> Result<Vec<Output>, Failure>;

    /// The same, with the record lent rather than handed over and the
    /// outputs written into `out` (discarded on `Err`). The host calls this
    /// when it hands the plugin several records at once, and
    /// [`handle`](Handler::handle) when it hands over one. By default it
    /// copies the record and calls `handle`. Override it where copying the
    /// record costs much of what the plugin does (small records passed on
    /// nearly unchanged), and then implement `handle` as
    /// [`handle_lent::<Self>`](handle_lent) so that both do the same thing.
    fn handle_borrowed(msg: &MessageRef<'_>, out: &mut Outputs) -> Result<(), Failure> {
        for output in Self::handle(msg.to_message())? {
            out.push(&output);
        }
        Ok(())
    }
}

/// Exports a type implementing [`Handler`] as the component's `handle`
/// function. Use it exactly once, at the top level of the plugin crate:
/// `sandpiper_sdk::export!(MyPlugin);`
#[macro_export]
macro_rules! export {
    ($handler:ty) => {
        const _: () = {
            struct __SandpiperExport;

            impl $crate::__private::bindings::Guest for __SandpiperExport {
                fn handle(
                    msg: $crate::__private::bindings::Message,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<$crate::__private::bindings::Output>,
                    $crate::__private::bindings::Failure,
                > {
                    $crate::__private::dispatch::<$handler>(msg)
                }

                fn handle_batch(records: ::std::vec::Vec<u8>) {
                    $crate::__private::dispatch_batch::<$handler>(records)
                }
            }

            $crate::__private::bindings::__sandpiper_export_processor!(
                __SandpiperExport with_types_in $crate::__private::bindings
            );
        };
    };
}

/// Logging through the host, which attributes each line to the record being
/// handled. Prefer this (or the [`info!`](crate::info) family of macros) to
/// `println!`: guest stdout/stderr only go to a small bounded capture buffer.
pub mod log {
    use crate::wit::log::{Level, log};

    /// Logs `message` at trace level.
    pub fn trace(message: &str) {
        log(Level::Trace, message);
    }

    /// Logs `message` at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }

    /// Logs `message` at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    /// Logs `message` at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    /// Logs `message` at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// Logs a `format!`-style message at trace level through the host.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log::trace(&::std::format!($($arg)+)) };
}

/// Logs a `format!`-style message at debug level through the host.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log::debug(&::std::format!($($arg)+)) };
}

/// Logs a `format!`-style message at info level through the host.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log::info(&::std::format!($($arg)+)) };
}

/// Logs a `format!`-style message at warn level through the host.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log::warn(&::std::format!($($arg)+)) };
}

/// Logs a `format!`-style message at error level through the host.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log::error(&::std::format!($($arg)+)) };
}

/// The plugin's own settings: the pipeline's `[pipeline.plugin_config]`
/// table (offline: `sandpiper plugin test --config KEY=VALUE`). Read-only and
/// the same for every record an instance handles.
pub mod config {
    use crate::wit::config as host;

    /// The value set for `key`, if any.
    pub fn get(key: &str) -> Option<String> {
        host::get(key)
    }

    /// Every key-value pair, sorted by key.
    pub fn entries() -> Vec<(String, String)> {
        host::entries()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_helpers() {
        let msg = Message {
            key: Some(b"k\xff".to_vec()),
            value: Some(b"hello".to_vec()),
            headers: vec![("a".into(), b"1".to_vec()), ("a".into(), b"2".to_vec())],
            ..Message::default()
        };
        assert_eq!(msg.value_str(), Some("hello"));
        assert_eq!(msg.key_str(), None);
        assert_eq!(msg.header("a"), Some(&b"1"[..]));
        assert_eq!(msg.header("A"), None);
    }

    #[test]
    fn output_builders() {
        let out = Output::value("v")
            .to_topic("t")
            .with_key("k")
            .with_header("h", "x");
        assert_eq!(out.topic.as_deref(), Some("t"));
        assert_eq!(out.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(out.value.as_deref(), Some(&b"v"[..]));
        assert_eq!(out.headers, vec![("h".to_string(), b"x".to_vec())]);
        assert_eq!(Output::new(), Output::default());
        assert_eq!(Failure::retry("x"), Failure::Retry("x".into()));
        assert_eq!(Failure::reject("y").message(), "y");
    }

    /// Passes on each record through `handle_borrowed` only.
    struct Lending;

    impl Handler for Lending {
        fn handle(msg: Message) -> Result<Vec<Output>, Failure> {
            handle_lent::<Self>(msg)
        }

        fn handle_borrowed(msg: &MessageRef<'_>, out: &mut Outputs) -> Result<(), Failure> {
            if msg.value == Some(b"bad") {
                return Err(Failure::reject("bad"));
            }
            out.push_ref(OutputRef::from_message(msg));
            out.push_ref(OutputRef {
                topic: Some("audit"),
                ..OutputRef::default()
            });
            Ok(())
        }
    }

    /// Passes on each record through `handle` only.
    struct Owning;

    impl Handler for Owning {
        fn handle(msg: Message) -> Result<Vec<Output>, Failure> {
            Ok(vec![Output::from_message(msg)])
        }
    }

    fn message() -> Message {
        Message {
            topic: "t".into(),
            key: Some(Vec::new()),
            value: Some(b"v\xff".to_vec()),
            headers: vec![("h".into(), b"1".to_vec()), ("".into(), Vec::new())],
            ..Message::default()
        }
    }

    #[test]
    fn lent_and_owned_handlers_give_the_same_outputs() {
        let msg = message();
        let passed = Output::from_message(msg.clone());
        assert_eq!(
            Lending::handle(msg.clone()),
            Ok(vec![passed.clone(), Output::new().to_topic("audit")])
        );
        // The default `handle_borrowed` copies the record for `handle`.
        let mut out = Outputs::default();
        Owning::handle_borrowed(&MessageRef::new(&msg), &mut out).expect("passes");
        assert_eq!(out.to_vec(), vec![passed]);
        assert_eq!(MessageRef::new(&msg).to_message(), msg);
        let bad = Message {
            value: Some(b"bad".to_vec()),
            ..msg
        };
        assert_eq!(Lending::handle(bad), Err(Failure::reject("bad")));
    }
}
