//! Apps and where they come from.

use herald_protocol::limits::Limits;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// One tenant: credentials, switches and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub id: String,
    pub key: String,
    pub secret: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub enable_client_messages: bool,
    #[serde(default)]
    pub enable_subscription_count: bool,
    #[serde(default)]
    pub enable_watchlist_events: bool,
    /// Authorized-connections mode: connections must sign in or subscribe to a private channel.
    #[serde(default)]
    pub enable_user_authentication: bool,
    /// Seconds an unauthorized connection may stay open in that mode.
    #[serde(default = "thirty")]
    pub user_authentication_timeout: u64,
    /// Also send the channel-scoped `pusher:subscription_error` on auth failures.
    #[serde(default)]
    pub emit_subscription_error: bool,
    /// Refuse plain `ws://` connections with 4000.
    #[serde(default)]
    pub tls_only: bool,
    #[serde(default)]
    pub limits: Limits,
    /// Where this app's webhooks go.
    #[serde(default)]
    pub webhooks: Vec<WebhookTarget>,
    /// Several events per webhook body (otherwise exactly one).
    #[serde(default)]
    pub batch_webhooks: bool,
}

/// Webhook event names, as sent in the body's `events[].name`.
pub const WEBHOOK_EVENT_TYPES: &[&str] = &[
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
];

/// One webhook receiver of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    pub url: String,
    /// Event names this target receives; all of them when left out.
    #[serde(default = "all_event_types")]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub filter: WebhookFilter,
    /// Extra request headers (they cannot replace Content-Type or the X-Pusher headers).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

fn all_event_types() -> Vec<String> {
    WEBHOOK_EVENT_TYPES
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// Only events whose channel matches are sent to the target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFilter {
    #[serde(
        default,
        alias = "channel_prefix",
        skip_serializing_if = "Option::is_none"
    )]
    pub channel_name_starts_with: Option<String>,
    #[serde(
        default,
        alias = "channel_suffix",
        skip_serializing_if = "Option::is_none"
    )]
    pub channel_name_ends_with: Option<String>,
}

impl WebhookTarget {
    /// Does this target want an event of type `name` on `channel`?
    pub fn wants(&self, name: &str, channel: &str) -> bool {
        self.event_types.iter().any(|t| t == name)
            && self
                .filter
                .channel_name_starts_with
                .as_deref()
                .is_none_or(|p| channel.starts_with(p))
            && self
                .filter
                .channel_name_ends_with
                .as_deref()
                .is_none_or(|s| channel.ends_with(s))
    }
}

fn yes() -> bool {
    true
}
fn thirty() -> u64 {
    30
}

impl App {
    /// The embedded default app that `cargo run` serves.
    pub fn default_app() -> Self {
        Self {
            id: "app-id".into(),
            key: "app-key".into(),
            secret: "app-secret".into(),
            enabled: true,
            enable_client_messages: true,
            enable_subscription_count: true,
            enable_watchlist_events: true,
            enable_user_authentication: false,
            user_authentication_timeout: 30,
            emit_subscription_error: false,
            tls_only: false,
            limits: Limits::default(),
            webhooks: Vec::new(),
            batch_webhooks: false,
        }
    }

    pub fn has_key(&self, key: &str) -> bool {
        self.key == key
    }

    /// Checks what every store requires of an app; the error names the field (`secret is empty`).
    pub fn validate(&self) -> Result<(), String> {
        for (field, v) in [
            ("id", &self.id),
            ("key", &self.key),
            ("secret", &self.secret),
        ] {
            if v.is_empty() {
                return Err(format!("{field} is empty"));
            }
        }
        for (field, v) in [("id", &self.id), ("key", &self.key)] {
            if v.contains(char::is_whitespace) || v.contains('/') {
                return Err(format!(
                    "{field} '{v}' may not contain spaces, newlines or '/'"
                ));
            }
        }
        self.limits.validate()?;
        herald_protocol::limits::check_range(
            "user_authentication_timeout",
            self.user_authentication_timeout,
            1,
            herald_protocol::limits::MAX_SETTING_SECONDS,
        )?;
        for (j, w) in self.webhooks.iter().enumerate() {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(format!(
                    "webhooks[{j}].url `{}` must start with http:// or https://",
                    w.url
                ));
            }
            if let Some(t) = w
                .event_types
                .iter()
                .find(|t| !WEBHOOK_EVENT_TYPES.contains(&t.as_str()))
            {
                return Err(format!(
                    "webhooks[{j}].event_types has unknown type `{t}`; known: {}",
                    WEBHOOK_EVENT_TYPES.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// Where apps are looked up. Implementations must be cheap to call on every connection and request.
pub trait AppStore: Send + Sync {
    fn by_key(&self, key: &str) -> Option<Arc<App>>;
    fn by_id(&self, id: &str) -> Option<Arc<App>>;
    fn all(&self) -> Vec<Arc<App>>;
}

/// Apps held in memory: from the configuration file (replaced on reload) or as the cache in front
/// of a database store.
#[derive(Debug, Default)]
pub struct StaticAppStore {
    snapshot: parking_lot::RwLock<Arc<Snapshot>>,
}

#[derive(Debug, Default)]
struct Snapshot {
    by_key: HashMap<String, Arc<App>>,
    by_id: HashMap<String, Arc<App>>,
    ordered: Vec<Arc<App>>,
}

impl Snapshot {
    fn build(apps: Vec<App>) -> Result<Self, String> {
        let mut s = Self::default();
        for app in apps {
            let app = Arc::new(app);
            if s.by_id.insert(app.id.clone(), app.clone()).is_some() {
                return Err(format!("app id '{}' is defined twice", app.id));
            }
            if s.by_key.insert(app.key.clone(), app.clone()).is_some() {
                return Err(format!("app key '{}' is used by two apps", app.key));
            }
            s.ordered.push(app);
        }
        Ok(s)
    }
}

impl StaticAppStore {
    /// Builds the store; ids and keys must be unique.
    pub fn new(apps: Vec<App>) -> Result<Self, String> {
        Ok(Self {
            snapshot: parking_lot::RwLock::new(Arc::new(Snapshot::build(apps)?)),
        })
    }

    /// Replaces every app at once (a reload); on error the old apps stay.
    pub fn replace(&self, apps: Vec<App>) -> Result<(), String> {
        let next = Arc::new(Snapshot::build(apps)?);
        *self.snapshot.write() = next;
        Ok(())
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot.read().clone()
    }
}

impl AppStore for StaticAppStore {
    fn by_key(&self, key: &str) -> Option<Arc<App>> {
        self.snapshot.read().by_key.get(key).cloned()
    }
    fn by_id(&self, id: &str) -> Option<Arc<App>> {
        self.snapshot.read().by_id.get(id).cloned()
    }
    fn all(&self) -> Vec<Arc<App>> {
        self.current().ordered.clone()
    }
}
