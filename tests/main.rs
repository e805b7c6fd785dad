//! Sandpiper's integration tests: one binary, one module per area.
//!
//! Plugins are built on first use (`support::plugin`); Kafka tests run on
//! librdkafka's in-process mock cluster, a random topic per test.

/// Shared helpers: plugin builds, clusters, tallies.
mod support;

/// Hostile plugins are contained; limits hold; bad plugin files are refused.
mod runtime;

/// The `sandpiper plugin test` / `inspect` commands, through the binary.
mod harness;

/// The Kafka pipeline on the mock cluster: delivery, dead letters, faults.
mod pipeline;

/// `/healthz`, `/readyz`, and exiting when unhealthy.
mod health;

/// The host binary on a real broker (Tansu): SIGKILL, outage, hostile records.
mod broker;

/// Hot-swapping plugins: API, CLI, file watch, canary, rollback, fleet.
mod deploy;
