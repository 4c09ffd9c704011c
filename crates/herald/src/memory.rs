//! When to hand freed memory back to the operating system.
//!
//! The allocator keeps the pages of freed connections for reuse, which is right under churn but
//! leaves RSS at its peak after a mass disconnect. The keep-alive sweep counts connections; when
//! their number has fallen by half (and by at least `MIN_DROP`) since its peak, it moves an epoch
//! forward, and each runtime worker, the next time it goes idle, asks the allocator to return
//! what it holds free (see `main.rs`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Fewer closed connections than this are not worth a collection.
const MIN_DROP: u64 = 1000;

static EPOCH: AtomicU64 = AtomicU64::new(0);

/// The current release epoch; a worker that saw an older one should collect.
pub fn epoch() -> u64 {
    EPOCH.load(Ordering::Relaxed)
}

/// Tracks the connection count between sweeps.
#[derive(Debug, Default)]
pub struct Watermark {
    peak: u64,
}

impl Watermark {
    /// Records the current count; returns true (and moves the epoch) when memory should go back.
    pub fn observe(&mut self, connections: u64) -> bool {
        self.peak = self.peak.max(connections);
        if self.peak - connections >= MIN_DROP && connections <= self.peak / 2 {
            self.peak = connections;
            EPOCH.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_after_a_large_drop_only() {
        let mut w = Watermark::default();
        let e = epoch();
        assert!(!w.observe(19_000));
        assert!(!w.observe(12_000), "not yet half");
        assert!(w.observe(9_000));
        assert!(epoch() > e);
        assert!(!w.observe(8_000), "the peak restarts from the release");
        let mut small = Watermark::default();
        assert!(!small.observe(1_500));
        assert!(!small.observe(600), "under MIN_DROP");
    }
}
