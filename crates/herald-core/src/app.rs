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
        }
    }

    pub fn has_key(&self, key: &str) -> bool {
        self.key == key
    }
}

/// Where apps are looked up. Implementations must be cheap to call on every connection and request.
pub trait AppStore: Send + Sync {
    fn by_key(&self, key: &str) -> Option<Arc<App>>;
    fn by_id(&self, id: &str) -> Option<Arc<App>>;
    fn all(&self) -> Vec<Arc<App>>;
}

/// Apps from the configuration file, fixed for the life of the store.
#[derive(Debug, Default)]
pub struct StaticAppStore {
    by_key: HashMap<String, Arc<App>>,
    by_id: HashMap<String, Arc<App>>,
    ordered: Vec<Arc<App>>,
}

impl StaticAppStore {
    /// Builds the store; ids and keys must be unique.
    pub fn new(apps: Vec<App>) -> Result<Self, String> {
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

impl AppStore for StaticAppStore {
    fn by_key(&self, key: &str) -> Option<Arc<App>> {
        self.by_key.get(key).cloned()
    }
    fn by_id(&self, id: &str) -> Option<Arc<App>> {
        self.by_id.get(id).cloned()
    }
    fn all(&self) -> Vec<Arc<App>> {
        self.ordered.clone()
    }
}
