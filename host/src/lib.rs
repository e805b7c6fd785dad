//! Sandpiper: run business logic on Kafka records inside sandboxed
//! WebAssembly components, one record's fault costing that record only.
//!
//! # Crates
//! The crate graph is the architecture, and the compiler holds it:
//! `sandpiper-core` (records, outcomes, failure kinds, plugin identities)
//! under everything; `sandpiper-runtime` (all of wasmtime) and
//! `sandpiper-kafka` (all of rdkafka) each on core alone, neither seeing the
//! other; this crate, the host, on all three. The host re-exports them as
//! [`record`], [`runtime`] and [`kafka`].
//!
//! # The path of one record
//! 1. **Consume.** librdkafka fetches into a queue of the record's
//!    partition (bounded: `partition_buffer` records or 4 MiB). The
//!    partition's worker task (`pipeline::partition`) takes up to 256 at a
//!    time, only when it is ready for them.
//! 2. **Plugin call.** The worker hands the batch to the pipeline's plugin
//!    threads (`pipeline::workers`: `workers` threads, one instance each,
//!    one shared queue) and awaits the result; a thread runs the records one
//!    by one and ends each in an [`record::Outcome`]: outputs, or a typed
//!    failure (the instance is replaced after a trap).
//! 3. **Outcome.** Outputs become records to produce; a failure is retried
//!    in place (`retry`, host-side) or becomes a dead letter
//!    (`pipeline::deadletter`).
//! 4. **Produce or dead-letter.** The worker hands the batch's sends to the
//!    pipeline's one producer (librdkafka's queue and threads) and the batch
//!    to the partition's acker task, through a channel bounded with
//!    `max_unacked` records and a semaphore of `max_unacked_mb` bytes.
//! 5. **Offset store.** The acker waits for the batch's delivery reports
//!    (counted down on librdkafka's thread, one wake-up per batch), settles
//!    any refused send (retried while waiting heals it; `output-refused`
//!    when it never will; the partition stops if its dead letter cannot be
//!    written) and stores the offset of the last record whose sends are all
//!    acknowledged; librdkafka commits stored offsets in the background.
//!
//! # Layout
//! - [`config`]: the TOML configuration, validated before anything connects.
//! - [`record`] (`sandpiper-core`): the project's record, output and failure types.
//! - [`runtime`] (`sandpiper-runtime`): wasmtime engine, plugin loading, instances and outcomes.
//! - [`kafka`] (`sandpiper-kafka`): the consumer, producer, callbacks and embedded cluster.
//! - [`metrics`]: Prometheus metrics, all named in one place.
//! - [`pipeline`]: consume → plugin → produce/dead-letter → store offset.
//! - [`deploy`]: hot-swapping plugins: file watch, API, fleet control topic, rollback.
//! - [`dlq`]: `sandpiper dlq inspect` and `replay`.
//! - [`health`]: liveness and readiness, and what makes the process exit.
//! - [`admin`]: the HTTP listener: health, versions, deploys.
//! - [`check`]: preflight checks (`sandpiper check`, and at start-up).
//! - [`app`]: `sandpiper run`: wiring, supervision, graceful shutdown.
//! - [`demo`]: `sandpiper demo` on an embedded cluster.
//! - [`harness`]: the offline `plugin test` / `plugin inspect` commands.
//! - [`ratelimit`] (`sandpiper-core`): rate-limited logging.
//! - [`fault`]: test-only fault injection into the host's background tasks.
//! - [`cli`]: command-line parsing and dispatch.

pub mod admin;
pub mod app;
pub mod check;
pub mod cli;
pub mod config;
pub mod demo;
pub mod deploy;
pub mod dlq;
pub mod fault;
pub mod harness;
pub mod health;
pub mod metrics;
pub mod pipeline;

pub use sandpiper_core::{ratelimit, record};
pub use sandpiper_kafka as kafka;
pub use sandpiper_runtime as runtime;
