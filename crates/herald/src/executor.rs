//! The API operations, transport-free: the HTTP routes (current and deprecated) and the console
//! call the same [`Executor`] and get typed replies, which the HTTP edge serializes. With a
//! cluster, counts and rosters come from the cluster's shared state instead of this node's.

use crate::cluster::Store;
use herald_core::{App, ChannelStats, Engine, Receipt};
use herald_protocol::api::{self, ApiError, Info, Trigger};
use herald_protocol::channel::{self, ChannelKind};
use herald_protocol::{sign, ChannelName};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The counts a request asked for about one channel (`info=`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChannelInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_count: Option<usize>,
}

/// An empty JSON object: the reply of operations that return nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Empty {}

/// `POST /events`: `{}`, or the channels' attributes when `info` was given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Triggered {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<BTreeMap<String, ChannelInfo>>,
}

/// `POST /batch_events`: `{}`, or one attribute object per event when any asked for `info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BatchTriggered {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<Vec<ChannelInfo>>,
}

/// `GET /channels`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChannelList {
    pub channels: BTreeMap<String, ChannelInfo>,
}

/// A cache channel's current event as `GET /channels/{c}?info=cache` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheEntry {
    pub data: String,
    pub ttl: u64,
}

/// `GET /channels/{c}` (and the deprecated `/stats`, which always carries `connection_count`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChannelState {
    /// Asked for and absent: `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<Option<CacheEntry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_count: Option<usize>,
    pub occupied: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_count: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: String,
}

/// `GET /channels/{c}/users`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Users {
    pub users: Vec<User>,
}

/// Runs API operations against the engine; knows nothing of HTTP.
#[derive(Debug, Clone)]
pub struct Executor {
    engine: Engine,
    cluster: Option<Arc<dyn Store>>,
}

impl Executor {
    pub fn new(engine: Engine, cluster: Option<Arc<dyn Store>>) -> Self {
        Self { engine, cluster }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Counts of one channel: cluster-wide when clustered (this node's if the cluster is
    /// unreachable).
    pub async fn stats(&self, app: &App, ch: &ChannelName) -> ChannelStats {
        let mut s = self.engine.stats(&app.id, ch);
        if let Some(c) = &self.cluster {
            match c.channel_count(&app.id, ch.as_str()).await {
                Ok((subs, users)) => {
                    s.subscription_count = subs;
                    s.user_count = users;
                    s.occupied = subs > 0;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster read failed; answering with this node's counts")
                }
            }
            // A node without a subscriber of the channel holds no copy of its cached event.
            if ch.is_cache() && s.cache.is_none() {
                if let Ok(Some(e)) = c.cached(&app.id, ch.as_str()).await {
                    s.cache = Some((e.data, e.ttl.as_secs()));
                }
            }
        }
        s
    }

    /// Occupied channels whose name starts with `prefix`, sorted by name.
    pub async fn channel_list(&self, app: &App, prefix: &str) -> Vec<(String, ChannelStats)> {
        if let Some(c) = &self.cluster {
            match c.channel_counts(&app.id).await {
                Ok(counts) => {
                    let mut out: Vec<(String, ChannelStats)> = Vec::new();
                    for (name, n) in counts
                        .into_iter()
                        .filter(|(n, c)| *c > 0 && n.starts_with(prefix))
                    {
                        let user_count = if channel::kind_of(&name) == ChannelKind::Presence {
                            c.channel_count(&app.id, &name).await.map_or(0, |(_, u)| u)
                        } else {
                            0
                        };
                        out.push((
                            name,
                            ChannelStats {
                                occupied: true,
                                subscription_count: n,
                                user_count,
                                cache: None,
                            },
                        ));
                    }
                    out.sort_by(|a, b| a.0.cmp(&b.0));
                    return out;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster read failed; answering with this node's channels")
                }
            }
        }
        let mut out: Vec<(String, ChannelStats)> = self
            .engine
            .channels(&app.id, prefix)
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    async fn member_ids(&self, app: &App, ch: &ChannelName) -> Vec<String> {
        if let Some(c) = &self.cluster {
            match c.members(&app.id, ch.as_str()).await {
                Ok(m) => return m.into_iter().map(|(id, _)| id).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cluster read failed; answering with this node's members")
                }
            }
        }
        self.engine
            .members(&app.id, ch)
            .iter()
            .map(|id| id.to_string())
            .collect()
    }

    fn check_info(app: &App, info: Option<Info>) -> Result<(), ApiError> {
        if info.is_some_and(|i| i.subscription_count) && !app.enable_subscription_count {
            return Err(ApiError::bad_request(
                "subscription_count is not enabled for this app",
            ));
        }
        Ok(())
    }

    /// Publishes to each channel of `t`, handing the cluster's receipts to `receipts`; a channel
    /// the cluster refused stops here with 503 (earlier channels of the same call were sent: a
    /// retry may deliver those twice, never none).
    fn publish(&self, app: &App, t: &Trigger, receipts: &mut Vec<Receipt>) -> Result<(), ApiError> {
        let ttl = Duration::from_secs(app.limits.cache_ttl);
        for ch in &t.channels {
            match self
                .engine
                .publish(&app.id, ch, &t.name, &t.data, t.socket_id, ttl)
            {
                Ok(Some(r)) => receipts.push(r),
                Ok(None) => {}
                Err(e) => return Err(ApiError::new(503, e.to_string())),
            }
        }
        Ok(())
    }

    /// Waits until the cluster's broker has every message: the API answers 200 only then.
    async fn accepted(receipts: Vec<Receipt>) -> Result<(), ApiError> {
        for r in receipts {
            match r.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(ApiError::new(503, e.to_string())),
                Err(_) => {
                    return Err(ApiError::new(
                        503,
                        "the cluster's broker stopped before taking the event; retry",
                    ))
                }
            }
        }
        Ok(())
    }

    /// The attributes of `info` that apply to `channel`.
    fn info_of(channel: &ChannelName, info: Info, s: &ChannelStats) -> ChannelInfo {
        ChannelInfo {
            user_count: (info.user_count && channel.is_presence()).then_some(s.user_count),
            subscription_count: info.subscription_count.then_some(s.subscription_count),
        }
    }

    /// `POST /events`.
    pub async fn trigger(&self, app: &App, body: &[u8]) -> Result<Triggered, ApiError> {
        let t = api::parse_trigger(body, &app.limits)?;
        Self::check_info(app, t.info)?;
        let mut receipts = Vec::new();
        self.publish(app, &t, &mut receipts)?;
        Self::accepted(receipts).await?;
        let Some(info) = t.info.filter(Info::any) else {
            return Ok(Triggered::default());
        };
        let mut channels = BTreeMap::new();
        for ch in &t.channels {
            let s = self.stats(app, ch).await;
            channels.insert(ch.to_string(), Self::info_of(ch, info, &s));
        }
        Ok(Triggered {
            channels: Some(channels),
        })
    }

    /// `POST /batch_events`.
    pub async fn trigger_batch(&self, app: &App, body: &[u8]) -> Result<BatchTriggered, ApiError> {
        let batch = api::parse_batch(body, &app.limits)?;
        for t in &batch {
            Self::check_info(app, t.info)?;
        }
        let mut receipts = Vec::new();
        for t in &batch {
            self.publish(app, t, &mut receipts)?;
        }
        Self::accepted(receipts).await?;
        if !batch.iter().any(|t| t.info.is_some()) {
            return Ok(BatchTriggered::default());
        }
        let mut items = Vec::with_capacity(batch.len());
        for t in &batch {
            items.push(match t.info {
                None => ChannelInfo::default(),
                Some(info) => {
                    let ch = &t.channels[0];
                    Self::info_of(ch, info, &self.stats(app, ch).await)
                }
            });
        }
        Ok(BatchTriggered { batch: Some(items) })
    }

    /// Deprecated `POST /channels/{c}/events`: name (and socket_id) from the query, body is data.
    pub async fn trigger_raw(
        &self,
        app: &App,
        channel: &str,
        query: &[(String, String)],
        body: &[u8],
    ) -> Result<Empty, ApiError> {
        let data = std::str::from_utf8(body).map_err(|_| {
            ApiError::bad_request("Request body must be valid UTF-8 (it is the event data)")
        })?;
        let t = api::raw_trigger(
            channel,
            sign::query_param(query, "name"),
            sign::query_param(query, "socket_id"),
            data,
            &app.limits,
        )?;
        let mut receipts = Vec::new();
        self.publish(app, &t, &mut receipts)?;
        Self::accepted(receipts).await?;
        Ok(Empty {})
    }

    /// `GET /channels`.
    pub async fn channels(
        &self,
        app: &App,
        query: &[(String, String)],
    ) -> Result<ChannelList, ApiError> {
        let prefix = sign::query_param(query, "filter_by_prefix").unwrap_or("");
        let info = Info::parse(sign::query_param(query, "info").unwrap_or(""));
        if info.user_count && !channel::prefix_is_presence(prefix) {
            return Err(ApiError::bad_request(
                "user_count may only be requested for presence channels - please supply filter_by_prefix begining with presence-",
            ));
        }
        Self::check_info(app, Some(info))?;
        let channels = self
            .channel_list(app, prefix)
            .await
            .into_iter()
            .map(|(name, s)| {
                let attrs = ChannelInfo {
                    user_count: info.user_count.then_some(s.user_count),
                    subscription_count: info.subscription_count.then_some(s.subscription_count),
                };
                (name, attrs)
            })
            .collect();
        Ok(ChannelList { channels })
    }

    /// `GET /channels/{c}`.
    pub async fn channel(
        &self,
        app: &App,
        name: &str,
        query: &[(String, String)],
    ) -> Result<ChannelState, ApiError> {
        let ch = api::check_channel(name, &app.limits)?;
        let info = Info::parse(sign::query_param(query, "info").unwrap_or(""));
        if info.user_count && !ch.is_presence() {
            return Err(ApiError::bad_request(
                "Cannot retrieve the user count unless the channel is a presence channel",
            ));
        }
        if info.cache && !ch.is_cache() {
            return Err(ApiError::bad_request(
                "Cannot retrieve cache unless the channel is a cache channel",
            ));
        }
        Self::check_info(app, Some(info))?;
        let s = self.stats(app, &ch).await;
        Ok(ChannelState {
            occupied: s.occupied,
            user_count: info.user_count.then_some(s.user_count),
            subscription_count: info.subscription_count.then_some(s.subscription_count),
            connection_count: info.connection_count.then_some(s.subscription_count),
            cache: info.cache.then(|| {
                s.cache.map(|(data, ttl)| CacheEntry {
                    data: data.to_string(),
                    ttl,
                })
            }),
        })
    }

    /// Deprecated `GET /channels/{c}/stats`.
    pub async fn channel_stats(&self, app: &App, name: &str) -> Result<ChannelState, ApiError> {
        let ch = api::check_channel(name, &app.limits)?;
        let s = self.stats(app, &ch).await;
        Ok(ChannelState {
            occupied: s.occupied,
            user_count: ch.is_presence().then_some(s.user_count),
            connection_count: Some(s.subscription_count),
            ..ChannelState::default()
        })
    }

    /// `GET /channels/{c}/users`.
    pub async fn users(&self, app: &App, name: &str) -> Result<Users, ApiError> {
        let ch = api::check_channel(name, &app.limits)?;
        if !ch.is_presence() {
            return Err(ApiError::bad_request(
                "Users can only be retrieved for presence channels",
            ));
        }
        let users = self
            .member_ids(app, &ch)
            .await
            .into_iter()
            .map(|id| User { id })
            .collect();
        Ok(Users { users })
    }

    /// `POST /users/{id}/terminate_connections`.
    pub fn terminate(&self, app: &App, user_id: &str) -> Result<Empty, ApiError> {
        if user_id.is_empty() {
            return Err(ApiError::bad_request("Missing user id"));
        }
        if user_id.len() > 200 || !user_id.bytes().all(channel::is_name_char) {
            return Err(ApiError::bad_request(format!("Invalid user id: {user_id}")));
        }
        self.engine.terminate_user(&app.id, user_id);
        Ok(Empty {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_serialize_as_pusher_documents_them() {
        let j = |v: &dyn erased::Json| v.json();
        assert_eq!(j(&Empty {}), "{}");
        assert_eq!(j(&Triggered::default()), "{}");
        let mut channels = BTreeMap::new();
        channels.insert(
            "presence-a".to_owned(),
            ChannelInfo {
                subscription_count: Some(2),
                user_count: Some(1),
            },
        );
        assert_eq!(
            j(&Triggered {
                channels: Some(channels)
            }),
            r#"{"channels":{"presence-a":{"subscription_count":2,"user_count":1}}}"#
        );
        assert_eq!(
            j(&ChannelState {
                occupied: true,
                cache: Some(None),
                ..ChannelState::default()
            }),
            r#"{"cache":null,"occupied":true}"#
        );
        assert_eq!(
            j(&Users {
                users: vec![User { id: "u".into() }]
            }),
            r#"{"users":[{"id":"u"}]}"#
        );
    }

    mod erased {
        pub trait Json {
            fn json(&self) -> String;
        }
        impl<T: serde::Serialize> Json for T {
            fn json(&self) -> String {
                serde_json::to_string(self).unwrap()
            }
        }
    }
}
