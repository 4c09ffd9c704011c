//! Helpers shared by the engine tests: an engine over one app, a lifecycle recorder and the
//! frames a connection was sent.

// Each test file uses only some of these.
#![allow(dead_code)]

use herald_core::{App, Conn, Engine, EngineConfig, LifecycleEvent, LifecycleSink};
use herald_core::{Cluster, StaticAppStore};
use herald_protocol::presence::{parse_channel_data, MemberData, PresenceLimits};
use herald_protocol::ChannelName;
use parking_lot::Mutex;
use std::sync::Arc;

/// Every lifecycle event, as `kind arguments` (`occupied news`, `count news 3`).
#[derive(Default)]
pub struct Recorder(Mutex<Vec<String>>);

/// The channel and member transitions.
pub const TRANSITIONS: &[&str] = &["occupied", "vacated", "added", "removed"];

impl Recorder {
    /// Every event seen so far, in order; forgets them.
    pub fn take_all(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock())
    }

    /// The events of the given kinds, in order, and forgets every event seen so far.
    pub fn take(&self, kinds: &[&str]) -> Vec<String> {
        std::mem::take(&mut *self.0.lock())
            .into_iter()
            .filter(|e| kinds.iter().any(|k| e.split(' ').next() == Some(k)))
            .collect()
    }
}

impl LifecycleSink for Recorder {
    fn emit(&self, e: &LifecycleEvent) {
        let s = match e {
            LifecycleEvent::Connected { .. } => "connected".to_owned(),
            LifecycleEvent::Disconnected { .. } => "disconnected".to_owned(),
            LifecycleEvent::Subscribed { channel, .. } => format!("subscribed {channel}"),
            LifecycleEvent::Unsubscribed { channel, .. } => format!("unsubscribed {channel}"),
            LifecycleEvent::ChannelOccupied { channel, .. } => format!("occupied {channel}"),
            LifecycleEvent::ChannelVacated { channel, .. } => format!("vacated {channel}"),
            LifecycleEvent::MemberAdded {
                channel, user_id, ..
            } => format!("added {channel} {user_id}"),
            LifecycleEvent::MemberRemoved {
                channel, user_id, ..
            } => format!("removed {channel} {user_id}"),
            LifecycleEvent::ClientEvent { channel, event, .. } => {
                format!("client {channel} {event}")
            }
            LifecycleEvent::CacheMiss { channel, .. } => format!("miss {channel}"),
            LifecycleEvent::SubscriptionCount { channel, count, .. } => {
                format!("count {channel} {count}")
            }
            LifecycleEvent::ApiPublish { channel, event, .. } => {
                format!("publish {channel} {event}")
            }
        };
        self.0.lock().push(s);
    }
}

/// An engine serving `app` on one node, with a recorder as its only sink.
pub fn engine(app: &App) -> (Engine, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let e = Engine::new(
        Arc::new(StaticAppStore::new(vec![app.clone()]).unwrap()),
        Cluster::local(),
        vec![rec.clone()],
        EngineConfig::default(),
    );
    (e, rec)
}

/// The default app (id `app-id`) with subscription counts off.
pub fn app() -> Arc<App> {
    let mut a = App::default_app();
    a.enable_subscription_count = false;
    Arc::new(a)
}

pub fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name, 200).unwrap()
}

/// The JSON of every frame queued to `conn` since the last call.
pub fn drain(conn: &Conn) -> Vec<String> {
    conn.take()
        .frames
        .into_iter()
        .map(|f| String::from_utf8(f.json().to_vec()).unwrap())
        .collect()
}

pub fn member(user: &str) -> MemberData {
    let limits = PresenceLimits {
        max_user_id_length: 128,
        max_user_info_bytes: 1024,
    };
    parse_channel_data(
        &format!(r#"{{"user_id":"{user}","user_info":{{"n":"{user}"}}}}"#),
        limits,
    )
    .unwrap()
}
