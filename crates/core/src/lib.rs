//! Sandpiper's own types, shared by every crate: records and what became of
//! them, failure kinds, plugin identities, rate-limited logging. Nothing of
//! wasmtime or rdkafka: both the runtime and the Kafka crates build on this
//! one, and neither may see the other.
//!
//! # Layout
//! - [`record`]: records, outputs, outcomes and typed failures.
//! - [`plugin_id`]: a plugin build's name and digest.
//! - [`ratelimit`]: rate-limited logging.

pub mod plugin_id;
pub mod ratelimit;
pub mod record;

pub use plugin_id::PluginId;
