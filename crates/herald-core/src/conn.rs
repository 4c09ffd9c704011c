//! A connection as the engine sees it: identity plus a bounded outbox.

use crate::app::App;
use bytes::Bytes;
use herald_protocol::{CloseCode, SocketId};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

/// An encoded text frame (valid UTF-8 JSON), shared by every recipient.
pub type Frame = Bytes;

/// Most frames a connection may have queued before it counts as a slow consumer.
pub const OUTBOX_MAX_FRAMES: usize = 4096;
/// Most bytes a connection may have queued before it counts as a slow consumer.
pub const OUTBOX_MAX_BYTES: usize = 4 << 20;

/// What the connection task receives from its outbox.
pub type Outbound = mpsc::Receiver<Frame>;

/// The engine's side of a connection. The connection task owns the socket and drains the outbox.
pub struct Conn {
    pub socket_id: SocketId,
    pub app: Arc<App>,
    tx: mpsc::Sender<Frame>,
    queued_bytes: AtomicUsize,
    close: Mutex<Option<CloseCode>>,
    close_notify: Notify,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("socket_id", &self.socket_id)
            .finish_non_exhaustive()
    }
}

impl Conn {
    pub(crate) fn new(socket_id: SocketId, app: Arc<App>) -> (Arc<Self>, Outbound) {
        let (tx, rx) = mpsc::channel(OUTBOX_MAX_FRAMES);
        let conn = Arc::new(Self {
            socket_id,
            app,
            tx,
            queued_bytes: AtomicUsize::new(0),
            close: Mutex::new(None),
            close_notify: Notify::new(),
        });
        (conn, rx)
    }

    /// Queues a frame without waiting. A full outbox closes the connection as a slow consumer
    /// (the frame and all later ones are then not delivered: the client is told and reconnects).
    /// Returns whether the frame was queued.
    pub fn send(&self, frame: &Frame) -> bool {
        let queued = self.queued_bytes.fetch_add(frame.len(), Ordering::Relaxed) + frame.len();
        if queued > OUTBOX_MAX_BYTES {
            self.queued_bytes.fetch_sub(frame.len(), Ordering::Relaxed);
            self.request_close(herald_protocol::codes::SLOW_CONSUMER);
            return false;
        }
        match self.tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(e) => {
                self.queued_bytes.fetch_sub(frame.len(), Ordering::Relaxed);
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    self.request_close(herald_protocol::codes::SLOW_CONSUMER);
                }
                false
            }
        }
    }

    /// The connection task reports a frame handed to the socket.
    pub fn sent(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
    }

    /// Asks the connection task to close with `code` (the first request wins).
    pub fn request_close(&self, code: CloseCode) {
        let mut c = self.close.lock();
        if c.is_none() {
            *c = Some(code);
            drop(c);
            self.close_notify.notify_one();
        }
    }

    /// Resolves once a close was requested, with its code.
    pub async fn close_requested(&self) -> CloseCode {
        loop {
            if let Some(code) = *self.close.lock() {
                return code;
            }
            self.close_notify.notified().await;
        }
    }

    pub fn is_closing(&self) -> bool {
        self.close.lock().is_some()
    }
}
