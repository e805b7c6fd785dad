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
    /// Whether a failure of this kind is the plugin's fault (what rollback
    /// counts): traps, timeouts and broken limits, not rejects or retries.
    pub fn is_fault(kind: FailureKind) -> bool {
        matches!(
            kind,
            FailureKind::Trap
                | FailureKind::Timeout
                | FailureKind::OutOfFuel
                | FailureKind::OutOfMemory
                | FailureKind::OutputLimit
        )
    }

    /// Adds the outcomes of one batch that `plugin` handled.
    pub fn add(&self, plugin: &PluginId, batch: Counts) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = counts.get_mut(plugin) {
            c.records += batch.records;
            c.failures += batch.failures;
        } else {
            counts.insert(plugin.clone(), batch);
        }
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
