//! Applying versions published on the fleet's control topic.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Deployer, Source};
use crate::kafka::control::ControlFollower;

/// Deploys every version published for one of `deployers`' pipelines.
pub async fn follow(
    follower: ControlFollower,
    deployers: HashMap<String, Arc<Deployer>>,
    stop: CancellationToken,
) {
    loop {
        let record = tokio::select! {
            () = stop.cancelled() => return,
            record = follower.next() => record,
        };
        let Some(deployer) = deployers.get(&record.pipeline) else {
            continue; // Another host's pipeline.
        };
        // The deployer logs refusals; an identical version is a no-op.
        let _ = deployer
            .deploy(&record.name, record.bytes.into(), Source::ControlTopic)
            .await;
    }
}
