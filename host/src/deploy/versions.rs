//! Per-version outcome counts, for automatic rollback and `GET /pipelines`.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use crate::record::FailureKind;
use crate::runtime::PluginId;

/// Records handled and failed by one plugin version.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub records: u64,
    /// Failures that are the plugin's fault (traps, timeouts, limits).
    pub failures: u64,
}

/// Counts of every version a pipeline has run.
#[derive(Debug, Default)]
pub struct VersionStats {
    counts: Mutex<HashMap<PluginId, Counts>>,
}

impl VersionStats {
    /// Counts one outcome of `plugin` (`failed`: the failure kind, if any).
    pub fn record(&self, plugin: &PluginId, failed: Option<FailureKind>) {
        let fault = matches!(
            failed,
            Some(
                FailureKind::Trap
                    | FailureKind::Timeout
                    | FailureKind::OutOfFuel
                    | FailureKind::OutOfMemory
                    | FailureKind::OutputLimit
            )
        );
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let c = counts.entry(plugin.clone()).or_default();
        c.records += 1;
        c.failures += u64::from(fault);
    }

    pub fn get(&self, plugin: &PluginId) -> Counts {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(plugin)
            .copied()
            .unwrap_or_default()
    }
}
