//! Canary records: a new version must handle them as expected before it is
//! swapped in. Same JSONL format as `sandpiper plugin test`, with an
//! optional `expect` per record: `"ok"` (the default) or a failure kind.

use std::path::Path;
use std::sync::Arc;

use crate::harness::{self, JsonRecord};
use crate::runtime::{Instance, Plugin};

/// Runs the canary file through `plugin`; `Err` lists every mismatch.
pub fn run(plugin: &Arc<Plugin>, file: &Path) -> Result<usize, Vec<String>> {
    let records: Vec<JsonRecord> =
        harness::read_records(file).map_err(|e| vec![format!("{e:#}")])?;
    let count = records.len();
    let mut instance = Instance::new(plugin.clone());
    let mut problems = Vec::new();
    for (index, json) in records.into_iter().enumerate() {
        let expect = json.expect.clone().unwrap_or_else(|| "ok".into());
        let record = json.into_record(index as i64);
        let got = match instance.handle(&record) {
            Ok(_) => "ok".to_owned(),
            Err(failure) => {
                if failure.kind.as_str() != expect {
                    problems.push(format!(
                        "canary record {}: expected {expect}, got {failure}",
                        index + 1
                    ));
                }
                continue;
            }
        };
        if got != expect {
            problems.push(format!(
                "canary record {}: expected {expect}, got ok",
                index + 1
            ));
        }
    }
    if problems.is_empty() {
        Ok(count)
    } else {
        Err(problems)
    }
}
