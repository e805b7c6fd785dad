//! The tally every end-to-end test ends in, on either broker: each input
//! (by its unique key) found in the output or the dead-letter topic, none
//! missing, extra copies counted. The topics are read to their end (the
//! mock cluster's high watermark; on Tansu, until the run is quiet), so
//! records nobody expected count too.

use std::collections::HashMap;

/// Where each input went, by key.
#[derive(Debug)]
pub struct Tally {
    pub inputs: usize,
    /// Records read from the output topic(s), whatever their key.
    pub outputs: usize,
    /// Records read from the dead-letter topic, whatever their key.
    pub dead_letters: usize,
    /// Distinct input keys among the dead letters.
    pub dead_keys: usize,
    /// Input keys found neither in the outputs nor in the dead letters.
    pub missing: Vec<String>,
    /// Extra copies of input keys (at-least-once allows them; tests that
    /// allow none assert zero).
    pub duplicates: usize,
}

/// How many records carry each key (a record without a key counts under
/// the empty key).
pub fn key_counts<'a>(keys: impl IntoIterator<Item = Option<&'a [u8]>>) -> HashMap<Vec<u8>, u32> {
    let mut counts = HashMap::new();
    for key in keys {
        *counts.entry(key.unwrap_or_default().to_vec()).or_insert(0) += 1;
    }
    counts
}

impl Tally {
    /// Tallies input keys (unique per input) against the key counts of the
    /// output and dead-letter topics.
    pub fn of<'a>(
        inputs: impl IntoIterator<Item = &'a [u8]>,
        outputs: &HashMap<Vec<u8>, u32>,
        dead: &HashMap<Vec<u8>, u32>,
    ) -> Self {
        let (mut count, mut missing, mut duplicates, mut dead_keys) = (0, Vec::new(), 0, 0);
        for key in inputs {
            count += 1;
            dead_keys += usize::from(dead.contains_key(key));
            let n = outputs.get(key).copied().unwrap_or(0) + dead.get(key).copied().unwrap_or(0);
            if n == 0 {
                missing.push(String::from_utf8_lossy(key).into_owned());
            }
            duplicates += n.saturating_sub(1) as usize;
        }
        Self {
            inputs: count,
            outputs: outputs.values().map(|n| *n as usize).sum(),
            dead_letters: dead.values().map(|n| *n as usize).sum(),
            dead_keys,
            missing,
            duplicates,
        }
    }

    /// Prints the tally and asserts nothing is missing.
    pub fn assert_complete(&self, what: &str) {
        eprintln!(
            "{what} tally: {} inputs, {} outputs, {} dead letters, {} missing, {} duplicates",
            self.inputs,
            self.outputs,
            self.dead_letters,
            self.missing.len(),
            self.duplicates
        );
        assert!(
            self.missing.is_empty(),
            "{what}: {} of {} inputs missing (first: {:?})",
            self.missing.len(),
            self.inputs,
            &self.missing[..self.missing.len().min(10)]
        );
    }
}
