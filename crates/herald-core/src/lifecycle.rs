//! State changes that others care about, emitted once where they happen.

use herald_protocol::SocketId;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum LifecycleEvent {
    Connected {
        app: Arc<str>,
        socket_id: SocketId,
    },
    Disconnected {
        app: Arc<str>,
        socket_id: SocketId,
    },
    Subscribed {
        app: Arc<str>,
        channel: Arc<str>,
        socket_id: SocketId,
    },
    Unsubscribed {
        app: Arc<str>,
        channel: Arc<str>,
        socket_id: SocketId,
    },
    ChannelOccupied {
        app: Arc<str>,
        channel: Arc<str>,
    },
    ChannelVacated {
        app: Arc<str>,
        channel: Arc<str>,
    },
    MemberAdded {
        app: Arc<str>,
        channel: Arc<str>,
        user_id: Arc<str>,
    },
    MemberRemoved {
        app: Arc<str>,
        channel: Arc<str>,
        user_id: Arc<str>,
    },
    /// An accepted client event; `data` is a JSON string's content or the compact JSON text.
    ClientEvent {
        app: Arc<str>,
        channel: Arc<str>,
        event: Arc<str>,
        data: Arc<str>,
        socket_id: SocketId,
        user_id: Option<Arc<str>>,
    },
    CacheMiss {
        app: Arc<str>,
        channel: Arc<str>,
    },
    SubscriptionCount {
        app: Arc<str>,
        channel: Arc<str>,
        count: usize,
    },
    /// An event published through the HTTP API (any route); `data` is the event's data as sent.
    ApiPublish {
        app: Arc<str>,
        channel: Arc<str>,
        event: Arc<str>,
        data: Arc<str>,
        except: Option<SocketId>,
    },
}

/// A listener. `emit` runs on the engine's caller thread, often under a channel lock: it must only
/// enqueue, never block.
pub trait LifecycleSink: Send + Sync {
    fn emit(&self, event: &LifecycleEvent);
}
