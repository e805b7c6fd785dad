//! Applying versions published on the fleet's control topic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Deployer, Source};
use crate::health::Health;
use crate::kafka::control::ControlFollower;
use crate::metrics::Metrics;
use crate::ratelimit::LogLimiter;

/// Deploys every version published for one of `deployers`' pipelines.
/// A failing read is counted, logged (rate-limited) and keeps the host from
/// being ready until the topic reads again: a fleet deploy that does not
/// reach this host must not go unnoticed.
pub async fn follow(
    follower: ControlFollower,
    deployers: HashMap<String, Arc<Deployer>>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    const COMPONENT: &str = "control topic";
    // The consumer reports errors but not their end: a quiet topic that
    // reads again says nothing. Ready again once no error came for this long.
    const HEALED_AFTER: Duration = Duration::from_secs(15);
    let logs = LogLimiter::new(Duration::from_secs(30));
    let mut last_error: Option<std::time::Instant> = None;
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = follower.next() => next,
            () = tokio::time::sleep(Duration::from_secs(1)), if last_error.is_some() => {
                if last_error.is_some_and(|at| at.elapsed() >= HEALED_AFTER) {
                    last_error = None;
                    health.set_degraded(COMPONENT, None);
                    tracing::info!("The control topic reads again.");
                }
                continue;
            }
        };
        crate::fault::point("control-follower");
        let record = match next {
            Ok(record) => record,
            Err(error) => {
                metrics.control_errors.inc();
                last_error = Some(std::time::Instant::now());
                health.set_degraded(
                    COMPONENT,
                    Some(format!("cannot read fleet deploys: {error}")),
                );
                if let Some(suppressed) = logs.check("read") {
                    tracing::warn!(%error, suppressed, "Cannot read the control topic; fleet deploys do not reach this host until it reads again.");
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
        };
        if last_error.take().is_some() {
            health.set_degraded(COMPONENT, None);
            tracing::info!("The control topic reads again.");
        }
        let Some(deployer) = deployers.get(&record.pipeline) else {
            continue; // Another host's pipeline.
        };
        // The deployer logs and counts refusals; an identical version is a no-op.
        let _ = deployer
            .deploy(&record.name, record.bytes.into(), Source::ControlTopic)
            .await;
    }
}
