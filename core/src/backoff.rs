//! Exponential backoff with jitter that never gives up.

use std::time::Duration;

/// Delay before retry number `attempt` (1-based): `min` doubling each attempt, capped at `max`,
/// then shortened by up to 20 % at random so that many clients do not retry in step.
pub fn delay(attempt: u32, min: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    let base = min.saturating_mul(1u32 << exp.min(31)).min(max);
    let jitter = 1.0 - 0.2 * random_unit();
    base.mul_f64(jitter).max(min.min(max).mul_f64(0.8))
}

/// After etcd is seen back during a backoff step, a lease's group or a watch waits up to this
/// long, at random, before its attempt: many registries that lost etcd together come back
/// spread out.
pub(crate) const RECONNECT_SPREAD: Duration = Duration::from_millis(200);

/// A delay between zero and `max`, at random: spreads the retries of many clients that all
/// saw etcd come back at the same moment.
pub fn spread(max: Duration) -> Duration {
    max.mul_f64(random_unit())
}

/// A number in [0, 1) from the standard library's randomly keyed hasher: good enough for jitter,
/// and no extra dependency.
pub(crate) fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_min_to_max_with_bounded_jitter() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(30));
        for (attempt, base) in [
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (4, 8.0),
            (5, 16.0),
            (6, 30.0),
            (60, 30.0),
        ] {
            for _ in 0..50 {
                let d = delay(attempt, min, max).as_secs_f64();
                assert!(
                    d <= base + 1e-9 && d >= base * 0.8 - 1e-9,
                    "attempt {attempt}: {d}"
                );
            }
        }
        assert!(delay(u32::MAX, min, max) <= max);
    }
}
