//! What a graceful shutdown needs to know from connections and requests: whether the drain has
//! begun, which WebSocket sessions are still cleaning up, and which API requests are in flight.
//! A leaf module, so every part can hold it without reaching the server that owns it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    sessions: TaskTracker,
    requests: AtomicUsize,
}

/// An API request in flight, counted for as long as it lives.
#[derive(Debug)]
pub struct Request(Arc<Drain>);

impl Drop for Request {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drain {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// From now on nothing new is accepted: upgrades get 4200, API requests 503.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Held by a WebSocket session until its cleanup is done.
    pub fn session(&self) -> TaskTrackerToken {
        self.sessions.token()
    }

    /// Counts an API request until the returned guard drops.
    pub fn request(self: &Arc<Self>) -> Request {
        self.requests.fetch_add(1, Ordering::SeqCst);
        Request(self.clone())
    }

    pub fn requests_in_flight(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Resolves once every session has finished its cleanup.
    pub async fn sessions_done(&self) {
        self.sessions.close();
        self.sessions.wait().await;
    }
}
