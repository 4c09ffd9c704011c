//! Per-app limits with the protocol's documented defaults.

use serde::{Deserialize, Serialize};

/// Limits of one app. Every field has a default, so a config names only what it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Concurrent connections of the app; 0 means unlimited.
    pub max_connections: u64,
    pub max_channel_name_length: usize,
    pub max_event_name_length: usize,
    pub max_event_data_bytes: usize,
    pub max_event_channels: usize,
    pub max_batch_size: usize,
    /// Client events per second per connection.
    pub client_event_rate: u32,
    pub max_presence_members: usize,
    pub max_presence_user_info_bytes: usize,
    pub max_presence_user_id_length: usize,
    pub max_watchlist_size: usize,
    /// Seconds a cache channel keeps its last event.
    pub cache_ttl: u64,
    /// Channels one connection may be subscribed to at once.
    pub max_channels_per_connection: usize,
    /// HTTP API requests per second for the app (429 beyond); 0 means unlimited.
    pub api_requests_per_second: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 0,
            max_channel_name_length: 200,
            max_event_name_length: 200,
            max_event_data_bytes: 10_240,
            max_event_channels: 100,
            max_batch_size: 10,
            client_event_rate: 10,
            max_presence_members: 100,
            max_presence_user_info_bytes: 1024,
            max_presence_user_id_length: 128,
            max_watchlist_size: 100,
            cache_ttl: 1800,
            max_channels_per_connection: 1000,
            api_requests_per_second: 100_000,
        }
    }
}

impl Limits {
    pub fn presence(&self) -> crate::presence::PresenceLimits {
        crate::presence::PresenceLimits {
            max_user_id_length: self.max_presence_user_id_length,
            max_user_info_bytes: self.max_presence_user_info_bytes,
        }
    }
}
