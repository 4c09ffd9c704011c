//! How many sockets the server port holds, and the limit past which it stops taking more.
//!
//! A process has a fixed number of file descriptors. If WebSocket clients could take all of
//! them, the HTTP API, health checks, the metrics port, webhook and Redis connections would all
//! fail at once (and the accept loop would spin on EMFILE). So WebSocket upgrades stop at a
//! limit below the open-file limit, and plain HTTP connections a little above it: the rest is
//! the reserve that keeps the server operable.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Sockets counted on the server port, against a limit.
#[derive(Debug)]
pub struct Capacity {
    open: AtomicUsize,
    /// WebSocket upgrades beyond this many open sockets are refused (4100).
    limit: usize,
    /// Any connection beyond this many is closed at once, before reading anything.
    hard: usize,
}

/// One counted socket; dropping it frees its place.
#[derive(Debug)]
pub struct Held(Arc<Capacity>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Capacity {
    /// `limit` WebSocket connections; plain HTTP gets `spare` more on top.
    pub fn new(limit: usize, spare: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            limit,
            hard: limit.saturating_add(spare),
        })
    }

    /// Counts an accepted socket; `None` when even the HTTP spare is used up.
    pub fn hold(self: &Arc<Self>) -> Option<Held> {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        let held = Held(self.clone());
        (before < self.hard).then_some(held)
    }

    /// True when a socket already held takes the count past the WebSocket limit.
    pub fn over_ws_limit(&self) -> bool {
        self.open.load(Ordering::Relaxed) > self.limit
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The limits for a configured `max_connections` (0: from the open-file limit).
    pub fn from_settings(max_connections: u64) -> Arc<Self> {
        let nofile = open_file_limit();
        let (limit, spare) = match (max_connections, nofile) {
            (0, Some(n)) => automatic(n),
            (0, None) => (usize::MAX / 2, 0),
            (m, _) => (usize::try_from(m).unwrap_or(usize::MAX / 2), SPARE_MIN),
        };
        tracing::info!(limit, open_file_limit = ?nofile, "server port: WebSocket connections refused (4100) beyond the limit");
        Self::new(limit, spare)
    }
}

/// HTTP connections allowed past the WebSocket limit, at least.
const SPARE_MIN: usize = 32;

/// The WebSocket limit and the HTTP spare for an open-file limit of `nofile`: a reserve of
/// 1/32 of it (64 to 1,024 descriptors) for everything that is not a client socket, of which a
/// quarter may be plain HTTP connections on the server port. 20,000 gives 19,375 WebSockets.
pub fn automatic(nofile: u64) -> (usize, usize) {
    let nofile = usize::try_from(nofile).unwrap_or(usize::MAX / 2);
    let reserve = (nofile / 32).clamp(64, 1024);
    let limit = nofile.saturating_sub(reserve);
    (limit, (reserve / 4).max(SPARE_MIN).min(reserve))
}

/// The process's open-file limit, after raising the soft limit to the hard one (a server that
/// holds many sockets should not stop at a shell's default of 1,024).
pub fn open_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_automatic_limit_keeps_a_reserve() {
        assert_eq!(automatic(20_000), (19_375, 156));
        assert_eq!(automatic(1024), (960, 32));
        assert_eq!(automatic(1_000_000), (998_976, 256));
        assert_eq!(automatic(10), (0, 32));
    }

    #[test]
    fn counts_sockets_and_refuses_past_the_limits() {
        let c = Capacity::new(2, 1);
        let a = c.hold().unwrap();
        let b = c.hold().unwrap();
        assert!(!c.over_ws_limit());
        let http = c.hold().expect("the spare takes one more");
        assert!(
            c.over_ws_limit(),
            "a third socket is past the WebSocket limit"
        );
        assert!(c.hold().is_none(), "past the spare nothing is taken");
        drop((a, b));
        assert!(!c.over_ws_limit());
        drop(http);
        assert!(c.hold().is_some());
    }
}
