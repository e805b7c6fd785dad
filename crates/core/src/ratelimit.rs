//! Rate-limited logging: an outage must not flood the logs.
//!
//! Repeated messages with the same key are let through at most once per
//! interval; the next one that passes says how many were suppressed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Remembers when each key last logged.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    /// key -> (last time let through, suppressed since).
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

/// Keys kept at most; an endless variety of keys must not grow memory.
const MAX_KEYS: usize = 1024;

impl LogLimiter {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed)` when a message with this key may be logged now.
    pub fn check(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((last, suppressed)) = seen.get_mut(key) {
            if now.duration_since(*last) < self.interval {
                *suppressed += 1;
                return None;
            }
            let n = *suppressed;
            *last = now;
            *suppressed = 0;
            return Some(n);
        }
        if seen.len() >= MAX_KEYS {
            seen.retain(|_, (last, _)| now.duration_since(*last) < self.interval);
        }
        seen.insert(key.to_owned(), (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_one_through_per_interval_and_counts_the_rest() {
        let l = LogLimiter::new(Duration::from_millis(50));
        assert_eq!(l.check("a"), Some(0));
        assert_eq!(l.check("a"), None);
        assert_eq!(l.check("a"), None);
        assert_eq!(l.check("b"), Some(0), "keys are independent");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.check("a"), Some(2));
    }
}
