//! Exponential backoff with jitter, shared by the relay and the consumer.

use std::time::Duration;

use rand::Rng;

/// `initial * 2^(attempt-1)`, capped at `max`, then scaled by a random factor
/// in `[0.5, 1.0]` so that many failing messages do not retry in lockstep.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exp).min(max);
    base.mul_f64(rand::rng().random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let i = Duration::from_millis(100);
        let m = Duration::from_secs(1);
        for _ in 0..50 {
            let first = backoff(1, i, m);
            assert!(first >= i / 2 && first <= i);
            let third = backoff(3, i, m);
            assert!(third >= i * 2 && third <= i * 4);
            assert!(backoff(20, i, m) <= m);
        }
    }
}
