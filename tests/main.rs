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

/// Never stuck on one record: refused outputs and dead letters, dying tasks.
mod refusals;

/// The host binary on a real broker (Tansu): SIGKILL, outage, hostile records.
mod broker;

/// The host binary on a real broker: a trap storm and a soak, memory flat.
mod soak;

/// The host on Apache Kafka, the reference broker: tallies, a node killed, refusals by size.
mod apache;

/// Consumer groups on Apache Kafka: 1 → 3 → 1 hosts (classic and KIP-848), SIGKILLs, a fleet deploy, dead letters byte for byte.
mod groups;

/// A rolling upgrade on Apache Kafka: three hosts replaced one by one under load, nothing lost.
mod upgrade;

/// Incident 2 on Apache Kafka: a broker lost under replication 1; replicated topics through a rolling restart.
mod incident;

/// `sandpiper dlq inspect` and `replay`: counts, re-drives, loop guard, resuming.
mod dlq;

/// Hot-swapping plugins: API, CLI, file watch, canary, rollback, fleet.
mod deploy;

/// Operating it: metrics, preflight check, status page in a real browser.
mod ops;

/// Deploying it as a service: `--version`, the systemd unit, the manifests, the Dockerfile, the alerts.
mod service;
