//! What a lifecycle event says, in one place for every sink: its kind, its app and its fields.
//! Webhooks and the console render these fields each in their own format.

use herald_core::LifecycleEvent;
use herald_protocol::SocketId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The webhook events Pusher defines, by their wire names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookName {
    ChannelOccupied,
    ChannelVacated,
    MemberAdded,
    MemberRemoved,
    ClientEvent,
    CacheMiss,
    SubscriptionCount,
}

impl HookName {
    pub fn as_str(self) -> &'static str {
        match self {
            HookName::ChannelOccupied => "channel_occupied",
            HookName::ChannelVacated => "channel_vacated",
            HookName::MemberAdded => "member_added",
            HookName::MemberRemoved => "member_removed",
            HookName::ClientEvent => "client_event",
            HookName::CacheMiss => "cache_miss",
            HookName::SubscriptionCount => "subscription_count",
        }
    }
}

/// The fields of one event; absent ones do not apply to its kind.
#[derive(Debug, Default)]
pub struct Fields<'a> {
    pub channel: Option<&'a str>,
    pub socket_id: Option<SocketId>,
    pub user_id: Option<&'a str>,
    pub event: Option<&'a str>,
    /// The event's data (client events and API publishes).
    pub data: Option<&'a str>,
    pub count: Option<usize>,
    pub except: Option<SocketId>,
}

impl Fields<'_> {
    /// Adds the fields every sink shows the same way: `channel`, `event`, `socket_id` and
    /// `user_id`, each where the event has it.
    pub fn put_common(&self, o: &mut Map<String, Value>) {
        if let Some(c) = self.channel {
            o.insert("channel".into(), json!(c));
        }
        if let Some(e) = self.event {
            o.insert("event".into(), json!(e));
        }
        if let Some(s) = self.socket_id {
            o.insert("socket_id".into(), json!(s.to_string()));
        }
        if let Some(u) = self.user_id {
            o.insert("user_id".into(), json!(u));
        }
    }
}

/// The app an event belongs to.
pub fn app(event: &LifecycleEvent) -> &Arc<str> {
    use LifecycleEvent as E;
    match event {
        E::Connected { app, .. }
        | E::Disconnected { app, .. }
        | E::Subscribed { app, .. }
        | E::Unsubscribed { app, .. }
        | E::ChannelOccupied { app, .. }
        | E::ChannelVacated { app, .. }
        | E::MemberAdded { app, .. }
        | E::MemberRemoved { app, .. }
        | E::ClientEvent { app, .. }
        | E::CacheMiss { app, .. }
        | E::SubscriptionCount { app, .. }
        | E::ApiPublish { app, .. } => app,
    }
}

/// The webhook an event becomes, if Pusher defines one for it.
pub fn hook(event: &LifecycleEvent) -> Option<HookName> {
    use LifecycleEvent as E;
    Some(match event {
        E::ChannelOccupied { .. } => HookName::ChannelOccupied,
        E::ChannelVacated { .. } => HookName::ChannelVacated,
        E::MemberAdded { .. } => HookName::MemberAdded,
        E::MemberRemoved { .. } => HookName::MemberRemoved,
        E::ClientEvent { .. } => HookName::ClientEvent,
        E::CacheMiss { .. } => HookName::CacheMiss,
        E::SubscriptionCount { .. } => HookName::SubscriptionCount,
        E::Connected { .. }
        | E::Disconnected { .. }
        | E::Subscribed { .. }
        | E::Unsubscribed { .. }
        | E::ApiPublish { .. } => return None,
    })
}

/// The event's short name in the console's log.
pub fn log_name(event: &LifecycleEvent) -> &'static str {
    use LifecycleEvent as E;
    match event {
        E::Connected { .. } => "connected",
        E::Disconnected { .. } => "disconnected",
        E::Subscribed { .. } => "subscribed",
        E::Unsubscribed { .. } => "unsubscribed",
        E::ChannelOccupied { .. } => "occupied",
        E::ChannelVacated { .. } => "vacated",
        E::MemberAdded { .. } => "member_added",
        E::MemberRemoved { .. } => "member_removed",
        E::ClientEvent { .. } => "client_event",
        E::CacheMiss { .. } => "cache_miss",
        E::SubscriptionCount { .. } => "subscription_count",
        E::ApiPublish { .. } => "api_publish",
    }
}

/// The event's fields.
pub fn fields(event: &LifecycleEvent) -> Fields<'_> {
    use LifecycleEvent as E;
    match event {
        E::Connected { socket_id, .. } | E::Disconnected { socket_id, .. } => Fields {
            socket_id: Some(*socket_id),
            ..Fields::default()
        },
        E::Subscribed {
            channel, socket_id, ..
        }
        | E::Unsubscribed {
            channel, socket_id, ..
        } => Fields {
            channel: Some(channel),
            socket_id: Some(*socket_id),
            ..Fields::default()
        },
        E::ChannelOccupied { channel, .. }
        | E::ChannelVacated { channel, .. }
        | E::CacheMiss { channel, .. } => Fields {
            channel: Some(channel),
            ..Fields::default()
        },
        E::MemberAdded {
            channel, user_id, ..
        }
        | E::MemberRemoved {
            channel, user_id, ..
        } => Fields {
            channel: Some(channel),
            user_id: Some(user_id),
            ..Fields::default()
        },
        E::ClientEvent {
            channel,
            event,
            data,
            socket_id,
            user_id,
            ..
        } => Fields {
            channel: Some(channel),
            event: Some(event),
            data: Some(data),
            socket_id: Some(*socket_id),
            user_id: user_id.as_deref(),
            ..Fields::default()
        },
        E::SubscriptionCount { channel, count, .. } => Fields {
            channel: Some(channel),
            count: Some(*count),
            ..Fields::default()
        },
        E::ApiPublish {
            channel,
            event,
            data,
            except,
            ..
        } => Fields {
            channel: Some(channel),
            event: Some(event),
            data: Some(data),
            except: *except,
            ..Fields::default()
        },
    }
}
