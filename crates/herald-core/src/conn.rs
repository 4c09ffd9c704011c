//! A connection as the engine sees it: identity plus a bounded outbox.
//!
//! The outbox is a queue under a small lock that the connection task empties in one swap, so a
//! connection with nothing queued holds no queue memory at all, and a burst of events costs one
//! wake-up of the connection task, not one per event.

use crate::app::App;
use bytes::Bytes;
use herald_protocol::{CloseCode, SocketId};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// An encoded text frame (valid UTF-8 JSON), shared by every recipient.
pub type Frame = Bytes;

/// Most frames a connection may have queued before it counts as a slow consumer.
pub const OUTBOX_MAX_FRAMES: usize = 4096;
/// Most bytes a connection may have queued before it counts as a slow consumer.
pub const OUTBOX_MAX_BYTES: usize = 4 << 20;

#[derive(Default)]
struct Outbox {
    frames: VecDeque<Frame>,
    bytes: usize,
    close: Option<CloseCode>,
    ping: bool,
}

/// What the connection task takes from its outbox in one go.
#[derive(Debug, Default)]
pub struct Pending {
    /// Frames in the order the engine accepted them.
    pub frames: VecDeque<Frame>,
    /// A close was requested, with this code.
    pub close: Option<CloseCode>,
    /// The keep-alive sweep asks for a probe.
    pub ping: bool,
}

/// The engine's side of a connection. The connection task owns the socket and drains the outbox.
pub struct Conn {
    pub socket_id: SocketId,
    pub app: Arc<App>,
    outbox: Mutex<Outbox>,
    wake: Notify,
    /// Keep-alive bookkeeping in milliseconds of the server's clock; read by the sweep.
    last_seen_ms: AtomicU64,
    probed_ms: AtomicU64,
    connected_ms: u64,
    authorized: AtomicBool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("socket_id", &self.socket_id)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the process started, for keep-alive bookkeeping.
pub fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    // Starts at 1 so that 0 can mean "never".
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

impl Conn {
    pub(crate) fn new(socket_id: SocketId, app: Arc<App>) -> Arc<Self> {
        let now = clock_ms();
        Arc::new(Self {
            socket_id,
            app,
            outbox: Mutex::new(Outbox::default()),
            wake: Notify::new(),
            last_seen_ms: AtomicU64::new(now),
            probed_ms: AtomicU64::new(0),
            connected_ms: now,
            authorized: AtomicBool::new(false),
        })
    }

    /// Queues a frame without waiting. A full outbox closes the connection as a slow consumer
    /// (the frame and all later ones are then not delivered: the client is told and reconnects).
    /// Returns whether the frame was queued.
    pub fn send(&self, frame: &Frame) -> bool {
        let mut o = self.outbox.lock();
        if o.close == Some(herald_protocol::codes::SLOW_CONSUMER) {
            return false;
        }
        if o.frames.len() >= OUTBOX_MAX_FRAMES || o.bytes + frame.len() > OUTBOX_MAX_BYTES {
            if o.close.is_none() {
                o.close = Some(herald_protocol::codes::SLOW_CONSUMER);
                drop(o);
                self.wake.notify_one();
            }
            return false;
        }
        let was_empty = o.frames.is_empty();
        o.frames.push_back(frame.clone());
        o.bytes += frame.len();
        drop(o);
        // The task takes the whole queue when it wakes: one wake-up per burst is enough.
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// Takes everything queued. The connection task calls it after each wake-up.
    pub fn take(&self) -> Pending {
        let mut o = self.outbox.lock();
        o.bytes = 0;
        Pending {
            frames: std::mem::take(&mut o.frames),
            close: o.close,
            ping: std::mem::take(&mut o.ping),
        }
    }

    /// Resolves after something was queued or requested since the last `take` (or right away
    /// when a wake-up is already pending).
    pub fn woken(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// Asks the connection task to close with `code` (the first request wins).
    pub fn request_close(&self, code: CloseCode) {
        let mut o = self.outbox.lock();
        if o.close.is_none() {
            o.close = Some(code);
            drop(o);
            self.wake.notify_one();
        }
    }

    /// The close requested so far, if any.
    pub fn close_code(&self) -> Option<CloseCode> {
        self.outbox.lock().close
    }

    pub fn is_closing(&self) -> bool {
        self.close_code().is_some()
    }

    /// The client sent something: it is alive, and any probe is answered.
    pub fn seen(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
        self.probed_ms.store(0, Ordering::Relaxed);
    }

    /// Marks the connection as signed in or subscribed to an authorized channel.
    pub fn set_authorized(&self) {
        self.authorized.store(true, Ordering::Relaxed);
    }

    /// One step of the keep-alive sweep: probes a connection silent for `activity_ms`, closes one
    /// that left a probe unanswered for `pong_ms` (4201), and one that had to sign in within
    /// `auth_ms` and did not (4009).
    pub fn keepalive(&self, now_ms: u64, activity_ms: u64, pong_ms: u64, auth_ms: Option<u64>) {
        if let Some(limit) = auth_ms {
            if !self.authorized.load(Ordering::Relaxed) && now_ms >= self.connected_ms + limit {
                return self.request_close(herald_protocol::codes::UNAUTHORIZED);
            }
        }
        let probed = self.probed_ms.load(Ordering::Relaxed);
        if probed != 0 {
            if now_ms >= probed + pong_ms {
                self.request_close(herald_protocol::codes::PONG_TIMEOUT);
            }
        } else if now_ms >= self.last_seen_ms.load(Ordering::Relaxed) + activity_ms {
            self.probed_ms.store(now_ms, Ordering::Relaxed);
            self.outbox.lock().ping = true;
            self.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Arc<Conn> {
        Conn::new(SocketId::new(1, 1), Arc::new(App::default_app()))
    }

    #[test]
    fn outbox_keeps_order_and_holds_nothing_once_taken() {
        let c = conn();
        for i in 0..10 {
            assert!(c.send(&Bytes::from(format!("f{i}"))));
        }
        let p = c.take();
        let got: Vec<_> = p.frames.iter().map(|f| f.to_vec()).collect();
        assert_eq!(got.len(), 10);
        assert_eq!(got[3], b"f3");
        assert!(c.take().frames.is_empty());
        assert_eq!(c.outbox.lock().frames.capacity(), 0);
    }

    #[test]
    fn overflow_closes_as_slow_consumer_and_refuses_more() {
        let c = conn();
        let f = Bytes::from_static(b"x");
        for _ in 0..OUTBOX_MAX_FRAMES {
            assert!(c.send(&f));
        }
        assert!(!c.send(&f));
        assert_eq!(c.close_code(), Some(herald_protocol::codes::SLOW_CONSUMER));
        c.take();
        assert!(!c.send(&f), "nothing is queued for a slow consumer");
        let big = Bytes::from(vec![b'a'; OUTBOX_MAX_BYTES + 1]);
        let d = conn();
        assert!(!d.send(&big));
        assert_eq!(d.close_code(), Some(herald_protocol::codes::SLOW_CONSUMER));
    }

    #[test]
    fn keepalive_probes_then_closes() {
        let c = conn();
        let t0 = c.connected_ms;
        c.keepalive(t0 + 500, 1000, 1000, None);
        assert!(!c.take().ping);
        c.keepalive(t0 + 1000, 1000, 1000, None);
        assert!(c.take().ping);
        c.keepalive(t0 + 1500, 1000, 1000, None);
        assert!(!c.take().ping, "one probe per silence");
        assert_eq!(c.close_code(), None);
        c.keepalive(t0 + 2000, 1000, 1000, None);
        assert_eq!(c.close_code(), Some(herald_protocol::codes::PONG_TIMEOUT));

        let d = conn();
        d.keepalive(d.connected_ms + 900, 1000, 1000, None);
        d.seen(d.connected_ms + 900);
        d.keepalive(d.connected_ms + 1800, 1000, 1000, None);
        assert!(!d.take().ping, "activity postpones the probe");

        let e = conn();
        e.keepalive(e.connected_ms + 100, 1000, 1000, Some(100));
        assert_eq!(e.close_code(), Some(herald_protocol::codes::UNAUTHORIZED));
        let f = conn();
        f.set_authorized();
        f.keepalive(f.connected_ms + 100, 1000, 1000, Some(100));
        assert_eq!(f.close_code(), None);
    }
}
