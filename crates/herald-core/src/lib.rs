//! Herald's engine: the single owner of live state.
//!
//! [`Engine`] is a cheap `Clone` handle with verbs (`connect`, `subscribe`, `publish`, …). State is
//! kept per app and sharded by channel name, so publishing on one channel does not contend with
//! subscribing on another. No lock is held across an `.await` (the engine never awaits).
//! What varies sits behind small traits: [`AppStore`] (where apps come from), [`Broker`] and
//! [`Store`] (other nodes) and [`LifecycleSink`] (who hears about state changes: webhooks, metrics, console).

mod app;
mod cluster;
mod conn;
mod engine;
mod lifecycle;
pub mod memory;

pub use app::{App, AppStore, StaticAppStore, WebhookFilter, WebhookTarget, WEBHOOK_EVENT_TYPES};
pub use cluster::{
    BadEnvelope, Broker, CachedEvent, Cluster, ClusterNote, Envelope, LocalBroker, PublishError,
    Reading, Ready, Receipt, Sent, Store, Topic, Transition,
};
pub use conn::{
    clock_ms, deflate_frame, set_deflate_threshold, Conn, Frame, Pending, Sink,
    DIRECT_WRITE_MAX_FANOUT, OUTBOX_MAX_BYTES, OUTBOX_MAX_FRAMES,
};
pub use engine::{
    ChannelStats, Engine, EngineConfig, SubscribeError, Subscribed, COUNT_COALESCE_WINDOW,
};
pub use lifecycle::{LifecycleEvent, LifecycleSink};
