//! The retry schedule as pure functions: how long to wait after the n-th
//! failed attempt, with jitter so that many deferred messages do not all
//! come due in the same second. No clock: times are passed in.

/// Seconds to wait after `attempts` failed attempts (attempts >= 1):
/// `first`, doubling each time, at most `max`.
pub fn backoff(attempts: u32, first: u64, max: u64) -> u64 {
    let shift = attempts.saturating_sub(1).min(40);
    first.saturating_mul(1u64 << shift).min(max.max(first))
}

/// `delay` moved by up to ±10 %, decided by `seed` (e.g. a hash of the
/// queue id and the attempt count), never below 1 second.
pub fn jitter(delay: u64, seed: u64) -> u64 {
    let spread = delay / 10;
    if spread == 0 {
        return delay.max(1);
    }
    // splitmix64: a well-mixed value from any seed.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let offset = z % (2 * spread + 1);
    (delay - spread + offset).max(1)
}

/// When to try again after `attempts` failures, or None when the message
/// has been queued for longer than `lifetime` seconds and must be returned.
pub fn next_attempt(
    now: i64,
    arrival: i64,
    attempts: u32,
    first: u64,
    max: u64,
    lifetime: u64,
    seed: u64,
) -> Option<i64> {
    let age = now.saturating_sub(arrival).max(0) as u64;
    if age >= lifetime {
        return None;
    }
    let wait = jitter(backoff(attempts, first, max), seed);
    Some(now.saturating_add(wait as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_up_to_max() {
        let d: Vec<u64> = (1..=8).map(|a| backoff(a, 300, 3600)).collect();
        assert_eq!(d, [300, 600, 1200, 2400, 3600, 3600, 3600, 3600]);
        assert_eq!(backoff(1000, 300, 3600), 3600);
        assert_eq!(backoff(0, 300, 3600), 300);
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_spreads() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..1000 {
            let j = jitter(3600, seed);
            assert!((3240..=3960).contains(&j), "{j}");
            seen.insert(j);
        }
        assert!(seen.len() > 300, "jitter barely spreads: {}", seen.len());
        assert_eq!(jitter(5, 1), 5);
        assert_eq!(jitter(0, 1), 1);
    }

    #[test]
    fn expiry() {
        let day = 86_400;
        assert!(next_attempt(1000 + 4 * day, 1000, 3, 300, 3600, 5 * day as u64, 1).is_some());
        assert_eq!(
            next_attempt(1000 + 5 * day, 1000, 3, 300, 3600, 5 * day as u64, 1),
            None
        );
    }
}
