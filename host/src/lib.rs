//! Sandpiper: run business logic on Kafka records inside sandboxed
//! WebAssembly components, one record's fault costing that record only.
//!
//! # Layout
//! - [`config`]: the TOML configuration, validated before anything connects.
//! - [`record`]: the project's record, output and failure types.
//! - [`runtime`]: wasmtime engine, plugin loading, instances and outcomes.
//! - [`kafka`]: the consumer, producer, callbacks and embedded cluster.
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
//! - [`ratelimit`]: rate-limited logging.
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
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod ratelimit;
pub mod record;
pub mod runtime;
