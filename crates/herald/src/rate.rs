//! The token bucket: the one rate limit rule, used for client events per connection and for
//! HTTP API requests per app.

use tokio::time::Instant;

/// Holds up to `per_sec` tokens, refilled continuously at `per_sec` a second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_sec: u32, now: Instant) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        Self {
            tokens: per_sec,
            per_sec,
            last: now,
        }
    }

    /// Takes one token; false when none is left.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec);
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
        assert_eq!((0..30).filter(|_| b.allow(t0)).count(), 10);
        assert!(!b.allow(t0 + Duration::from_millis(50)));
        assert!(b.allow(t0 + Duration::from_millis(160)));
        // A long pause refills to the bucket size, not beyond.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..30).filter(|_| b.allow(later)).count(), 10);
    }
}
