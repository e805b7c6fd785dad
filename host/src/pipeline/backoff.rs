//! Exponential backoff with jitter.

use std::time::Duration;

use rand::Rng as _;

/// `initial * 2^(attempt-1)`, capped at `max`, then scaled by a random
/// factor in [0.5, 1.0] so retries of many partitions do not align.
pub fn delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    let base = initial.saturating_mul(1u32 << exp.min(31)).min(max);
    base.mul_f64(rand::rng().random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..100 {
            let d1 = delay(1, i, m);
            assert!(d1 >= Duration::from_millis(50) && d1 <= i, "{d1:?}");
            let d3 = delay(3, i, m);
            assert!(
                d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
                "{d3:?}"
            );
            assert!(delay(40, i, m) <= m);
        }
    }
}
