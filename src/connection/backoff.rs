//! Exponential backoff with full jitter (pure: no clock, no sleeping).

use std::time::Duration;

/// Delays between reconnection attempts: the first retry is immediate, then
/// attempt `n` waits a random time in `[0, min(max, base · 2^(n-1))]` ("full
/// jitter"), so a fleet of clients that lost the same server does not come back
/// in lockstep.
///
/// ```
/// use std::time::Duration;
/// use zen_websocket::Backoff;
///
/// let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// assert_eq!(b.next_delay(), Duration::ZERO); // immediate first retry
/// for _ in 0..20 {
///     assert!(b.next_delay() <= Duration::from_secs(1)); // never above the cap
/// }
/// b.reset();
/// assert_eq!(b.next_delay(), Duration::ZERO);
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// A backoff with base delay `base` and cap `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff::with_seed(base, max, seed())
    }

    /// The same with a fixed random seed (for reproducible tests).
    pub fn with_seed(base: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// How many delays were handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the delay for attempt `n` (0-based), before jitter.
    pub fn ceiling(&self, n: u32) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(30))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay; advances the attempt counter.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        if cap.is_zero() {
            return Duration::ZERO;
        }
        let nanos = cap.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(self.next_random() % (nanos + 1))
    }

    /// Start again from an immediate retry (after a stable connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for jitter, and no dependency.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn seed() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process from the OS; hashing the time mixes in more.
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn first_retry_is_immediate() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        assert_eq!(b.next_delay(), Duration::ZERO);
        assert_eq!(b.attempt(), 1);
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let b = Backoff::new(100 * MS, 1000 * MS);
        let c: Vec<_> = (0..7).map(|n| b.ceiling(n)).collect();
        assert_eq!(
            c,
            vec![
                Duration::ZERO,
                100 * MS,
                200 * MS,
                400 * MS,
                800 * MS,
                1000 * MS,
                1000 * MS
            ]
        );
        assert_eq!(b.ceiling(u32::MAX), 1000 * MS);
    }

    #[test]
    fn backoff_never_exceeds_the_cap_and_jitters() {
        let mut b = Backoff::with_seed(10 * MS, 80 * MS, 42);
        b.next_delay();
        let mut seen = std::collections::HashSet::new();
        for n in 1..200u32 {
            let d = b.next_delay();
            assert!(d <= b.ceiling(n), "attempt {n}: {d:?}");
            seen.insert(d);
        }
        assert!(seen.len() > 100, "delays should vary, got {}", seen.len());
    }

    #[test]
    fn reset_starts_over_with_an_immediate_retry() {
        let mut b = Backoff::new(MS, 10 * MS);
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.next_delay(), Duration::ZERO);
    }
}
