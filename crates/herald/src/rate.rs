//! The token bucket: the one rate limit rule, used for client events per connection and for
//! HTTP API requests per app.

use tokio::time::Instant;

/// Holds up to `per_sec` tokens, refilled continuously at `per_sec` a second. The rate is given
/// on every call, so a limit changed by a reload applies at once.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_sec: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(per_sec.max(1)),
            last: now,
        }
    }

    /// A full bucket of `burst` tokens.
    pub fn with_burst(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Takes one token at `per_sec` a second; false when none is left.
    pub fn allow(&mut self, per_sec: u32, now: Instant) -> bool {
        self.allow_burst(per_sec, per_sec, now)
    }

    /// Takes one token from a bucket of `burst` refilled at `per_sec` a second.
    pub fn allow_burst(&mut self, per_sec: u32, burst: u32, now: Instant) -> bool {
        let burst = f64::from(burst.max(1));
        let per_sec = f64::from(per_sec.max(1));
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * per_sec).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_size_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        assert_eq!((0..30).filter(|_| b.allow(10, t0)).count(), 10);
        assert!(!b.allow(10, t0 + Duration::from_millis(50)));
        assert!(b.allow(10, t0 + Duration::from_millis(160)));
        // A long pause refills to the bucket size, not beyond.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..30).filter(|_| b.allow(10, later)).count(), 10);
        // A lower limit (a reload) caps the bucket at once.
        let again = later + Duration::from_secs(60);
        assert_eq!((0..30).filter(|_| b.allow(3, again)).count(), 3);
    }
}
