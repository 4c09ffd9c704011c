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
    /// Subscribes and unsubscribes per second per connection, after a burst of
    /// `max_channels_per_connection` (a reconnecting client subscribes all its channels at
    /// once); beyond it they are refused with 4301. Bounds the channel state, webhooks and
    /// count events one anonymous connection can cause. 0 means unlimited.
    pub subscription_rate: u32,
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
            subscription_rate: 100,
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

/// The longest duration any setting may name, in seconds (one year). Larger values are refused
/// at load, so that every instant computed from a setting stays far from overflowing.
pub const MAX_SETTING_SECONDS: u64 = 365 * 24 * 3600;
/// The largest size or count any setting may name (2^40: a terabyte, a trillion items).
pub const MAX_SETTING_SIZE: u64 = 1 << 40;

/// Checks that `value` of the setting `name` is within `min..=max`; the error names the setting.
pub fn check_range(name: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else if value < min {
        Err(format!("{name} is {value}; it must be at least {min}"))
    } else {
        Err(format!("{name} is {value}; it must be at most {max}"))
    }
}

impl Limits {
    /// Checks every limit against its range; the error names the field (`limits.cache_ttl ...`).
    pub fn validate(&self) -> Result<(), String> {
        let size = |name: &str, v: usize| {
            check_range(&format!("limits.{name}"), v as u64, 0, MAX_SETTING_SIZE)
        };
        size("max_channel_name_length", self.max_channel_name_length)?;
        size("max_event_name_length", self.max_event_name_length)?;
        size("max_event_data_bytes", self.max_event_data_bytes)?;
        size("max_event_channels", self.max_event_channels)?;
        size("max_batch_size", self.max_batch_size)?;
        size("max_presence_members", self.max_presence_members)?;
        size(
            "max_presence_user_info_bytes",
            self.max_presence_user_info_bytes,
        )?;
        size(
            "max_presence_user_id_length",
            self.max_presence_user_id_length,
        )?;
        size("max_watchlist_size", self.max_watchlist_size)?;
        size(
            "max_channels_per_connection",
            self.max_channels_per_connection,
        )?;
        check_range(
            "limits.max_connections",
            self.max_connections,
            0,
            MAX_SETTING_SIZE,
        )?;
        check_range("limits.cache_ttl", self.cache_ttl, 0, MAX_SETTING_SECONDS)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Limits::default().validate().unwrap();
    }

    #[test]
    fn an_out_of_range_limit_is_named() {
        let l = Limits {
            cache_ttl: u64::MAX / 2,
            ..Limits::default()
        };
        let e = l.validate().unwrap_err();
        assert!(e.starts_with("limits.cache_ttl is "), "{e}");
        assert!(e.contains("at most 31536000"), "{e}");
        assert_eq!(
            check_range("x", 0, 1, 2).unwrap_err(),
            "x is 0; it must be at least 1"
        );
    }
}
