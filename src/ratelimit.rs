//! A token bucket, the one rate-limit shape used for client events (per connection) and the
//! HTTP API quotas (per app).

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `per_second` tokens refilled continuously at `per_second`.
    pub fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        TokenBucket {
            capacity: rate,
            per_second: rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// A full bucket of `burst` tokens (at least `per_second`) refilled continuously at
    /// `per_second`.
    pub fn with_burst(per_second: u32, burst: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        let capacity = f64::from(burst).max(rate);
        TokenBucket {
            capacity,
            per_second: rate,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// Takes `n` tokens if available at `now`.
    pub fn try_take_at(&mut self, n: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        let n = f64::from(n);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    pub fn try_take(&mut self, n: u32) -> bool {
        self.try_take_at(n, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_is_spent_at_once_then_refilled_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::with_burst(10, 100);
        for i in 0..100 {
            assert!(b.try_take_at(1, t0), "subscribe {i}");
        }
        assert!(!b.try_take_at(1, t0));
        assert!(b.try_take_at(1, t0 + Duration::from_millis(110)));
        assert!(!b.try_take_at(1, t0 + Duration::from_millis(120)));
        // Never above the burst, however long it rests.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..100 {
            assert!(b.try_take_at(1, later));
        }
        assert!(!b.try_take_at(1, later));
        // A burst below the rate is the rate.
        let mut small = TokenBucket::with_burst(10, 1);
        for _ in 0..10 {
            assert!(small.try_take_at(1, t0));
        }
    }

    #[test]
    fn ten_per_second_then_refuses_the_eleventh() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10);
        for i in 0..10 {
            assert!(b.try_take_at(1, t0), "event {i}");
        }
        assert!(!b.try_take_at(1, t0));
        assert!(b.try_take_at(1, t0 + Duration::from_millis(150)));
        assert!(!b.try_take_at(1, t0 + Duration::from_millis(160)));
        assert!(
            b.try_take_at(10, t0 + Duration::from_secs(5)),
            "refills to capacity"
        );
    }
}
