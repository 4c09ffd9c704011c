//! Channels: subscriptions, publishing, client events, counts and the channel queries.

use super::{AppState, Cached, Channel, Engine, Sub};
use crate::cluster::ClusterNote;
use crate::conn::{Conn, Frame};
use crate::lifecycle::LifecycleEvent;
use herald_protocol::presence::MemberData;
use herald_protocol::{encode, ChannelName, SocketId};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Channels above this many subscribers get at most one subscription count per window.
const COUNT_THROTTLE_ABOVE: usize = 100;
const COUNT_THROTTLE_WINDOW: Duration = Duration::from_secs(5);

/// Counts and contents of one channel, as the HTTP API reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub occupied: bool,
    /// Connections subscribed.
    pub subscription_count: usize,
    /// Distinct presence users (0 for other channels).
    pub user_count: usize,
    /// Cached event data and the seconds it has left.
    pub cache: Option<(Arc<str>, u64)>,
}

/// A refused subscription; `Display` is the `pusher:error` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeError {
    Existing { channel: String },
    PresenceFull { channel: String, max: usize },
}

impl std::fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Existing { channel } => write!(f, "Existing subscription to {channel}"),
            Self::PresenceFull { channel, max } => {
                write!(f, "Presence channel {channel} is full (max {max} members)")
            }
        }
    }
}

/// What a successful subscription decided (the frames are already queued).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// The channel went from no subscribers to one.
    pub occupied: bool,
}

impl Channel {
    fn stats(&self, now: Instant) -> ChannelStats {
        ChannelStats {
            occupied: !self.subs.is_empty(),
            subscription_count: self.subs.len(),
            user_count: self.members.len(),
            cache: self.live_cache(now).map(|c| {
                (
                    c.data.clone(),
                    c.expires.saturating_duration_since(now).as_secs(),
                )
            }),
        }
    }
}

impl Engine {
    /// Subscribes `conn`; `member` is required for presence channels (the caller verified it).
    /// Queues `subscription_succeeded`, the presence snapshot, the cached event or cache miss.
    pub fn subscribe(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
        member: Option<MemberData>,
    ) -> Result<Subscribed, SubscribeError> {
        self.subscribe_with(conn, channel, member, &[])
    }

    /// As [`Engine::subscribe`]; `remote_members` (user id, raw user_info) are members present on
    /// other nodes, merged into the presence snapshot.
    pub fn subscribe_with(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
        member: Option<MemberData>,
        remote_members: &[(String, String)],
    ) -> Result<Subscribed, SubscribeError> {
        let clustered = self.inner.adapter.clustered();
        let mut notes: Vec<ClusterNote> = Vec::new();
        let st = self.state_of(conn);
        let now = Instant::now();
        let mut shard = st.shard(channel.as_str()).lock();
        let ch = shard
            .entry(channel.arc().clone())
            .or_insert_with(|| Channel::new(channel.clone()));
        if ch.subs.contains_key(&conn.socket_id) {
            return Err(SubscribeError::Existing {
                channel: channel.to_string(),
            });
        }
        let mut user_id = None;
        let mut added_member = None;
        if let (true, Some(m)) = (channel.is_presence(), member) {
            match ch.join(&st.id, conn, m, remote_members, clustered, &mut notes) {
                Ok((uid, announced)) => {
                    added_member = announced.then(|| uid.clone());
                    user_id = Some(uid);
                }
                Err(e) => {
                    if ch.is_dead(now) {
                        shard.remove(channel.as_str());
                    }
                    return Err(e);
                }
            }
        }
        ch.subs.insert(
            conn.socket_id,
            Sub {
                conn: conn.clone(),
                user_id,
            },
        );
        let occupied = ch.subs.len() == 1;

        let succeeded: Frame = if channel.is_presence() {
            ch.presence_succeeded(remote_members)
        } else {
            encode::subscription_succeeded(channel.as_str()).into()
        };
        conn.send(&succeeded);
        let mut cache_miss = false;
        if channel.is_cache() {
            match ch.live_cache(now) {
                Some(c) => {
                    conn.send(&c.frame);
                }
                None => {
                    conn.send(&encode::cache_miss(channel.as_str()).into());
                    cache_miss = true;
                }
            }
        }
        let count_sent = if clustered {
            if !channel.is_internal() {
                notes.push(ClusterNote::ChannelCount {
                    app: st.id.clone(),
                    channel: channel.clone(),
                    count: ch.subs.len(),
                });
            }
            None
        } else {
            self.after_count_change(&st, ch)
        };
        // Under the lock: notes of one channel must reach the adapter in the order the counts
        // changed, or a stale count would win (the adapter keeps the latest per channel).
        for n in notes {
            self.inner.adapter.note(n);
        }
        drop(shard);

        if !channel.is_internal() {
            let app = &st.id;
            let name = channel.arc();
            self.emit(|| LifecycleEvent::Subscribed {
                app: app.clone(),
                channel: name.clone(),
                socket_id: conn.socket_id,
            });
            if occupied && !clustered {
                self.emit(|| LifecycleEvent::ChannelOccupied {
                    app: app.clone(),
                    channel: name.clone(),
                });
            }
            if let Some(uid) = added_member {
                self.emit(|| LifecycleEvent::MemberAdded {
                    app: app.clone(),
                    channel: name.clone(),
                    user_id: uid,
                });
            }
            // After the occupied event, so webhooks report the channel before its count.
            self.emit_count(&st, channel, count_sent);
            if cache_miss {
                self.emit(|| LifecycleEvent::CacheMiss {
                    app: app.clone(),
                    channel: name.clone(),
                });
            }
        }
        Ok(Subscribed { occupied })
    }

    /// Removes `conn` from `channel`; a no-op when it was not subscribed.
    pub fn unsubscribe(&self, conn: &Arc<Conn>, channel: &ChannelName) {
        let st = self.state_of(conn);
        let now = Instant::now();
        let mut shard = st.shard(channel.as_str()).lock();
        let Some(ch) = shard.get_mut(channel.as_str()) else {
            return;
        };
        let Some(sub) = ch.subs.remove(&conn.socket_id) else {
            return;
        };
        let clustered = self.inner.adapter.clustered();
        let mut notes: Vec<ClusterNote> = Vec::new();
        let removed_member = sub
            .user_id
            .and_then(|uid| ch.leave(&st.id, conn, uid, clustered, &mut notes));
        let vacated = ch.subs.is_empty() && !clustered;
        let mut count_sent = None;
        if clustered {
            if !channel.is_internal() {
                notes.push(ClusterNote::ChannelCount {
                    app: st.id.clone(),
                    channel: channel.clone(),
                    count: ch.subs.len(),
                });
            }
        } else if !vacated {
            count_sent = self.after_count_change(&st, ch);
        }
        if ch.is_dead(now) {
            shard.remove(channel.as_str());
        }
        // Under the lock: notes of one channel must reach the adapter in the order the counts
        // changed, or a stale count would win (the adapter keeps the latest per channel).
        for n in notes {
            self.inner.adapter.note(n);
        }
        drop(shard);
        if !channel.is_internal() {
            let app = &st.id;
            let name = channel.arc();
            self.emit(|| LifecycleEvent::Unsubscribed {
                app: app.clone(),
                channel: name.clone(),
                socket_id: conn.socket_id,
            });
            if let Some(uid) = removed_member {
                self.emit(|| LifecycleEvent::MemberRemoved {
                    app: app.clone(),
                    channel: name.clone(),
                    user_id: uid,
                });
            }
            if vacated {
                self.emit(|| LifecycleEvent::ChannelVacated {
                    app: app.clone(),
                    channel: name.clone(),
                });
            }
            self.emit_count(&st, channel, count_sent);
        }
    }

    fn emit_count(&self, st: &AppState, channel: &ChannelName, count: Option<usize>) {
        if let Some(count) = count {
            self.emit(|| LifecycleEvent::SubscriptionCount {
                app: st.id.clone(),
                channel: channel.arc().clone(),
                count,
            });
        }
    }

    /// Sends `pusher_internal:subscription_count` when the app wants it; returns the count sent
    /// now, for the caller to report once its locks are gone. On a channel above
    /// `COUNT_THROTTLE_ABOVE` subscribers at most one count goes out per window: a change within
    /// the window is held back, and [`Engine::tick`] sends the latest count when it ends.
    fn after_count_change(&self, st: &AppState, ch: &mut Channel) -> Option<usize> {
        if ch.name.is_presence() || ch.name.is_internal() || ch.subs.is_empty() {
            return None;
        }
        let first = ch.subs.values().next()?;
        if !first.conn.with_app(|a| a.enable_subscription_count) {
            return None;
        }
        let now = Instant::now();
        match ch.count.last_sent.map(|t| t + COUNT_THROTTLE_WINDOW) {
            Some(window_end) if ch.subs.len() > COUNT_THROTTLE_ABOVE && now < window_end => {
                if ch.count.due.is_none() {
                    ch.count.due = Some(window_end);
                    st.counts_due.lock().push((window_end, ch.name.clone()));
                }
                None
            }
            _ => Some(self.send_count(ch, now)),
        }
    }

    /// Queues the count frame to every subscriber; returns the count.
    fn send_count(&self, ch: &mut Channel, now: Instant) -> usize {
        ch.count.last_sent = Some(now);
        // This count is the latest: one held back is no longer needed.
        ch.count.due = None;
        let n = ch.subs.len();
        ch.broadcast(
            &encode::subscription_count(ch.name.as_str(), n).into(),
            None,
        );
        n
    }

    /// Sends every subscription count held back by the throttle whose window ended by `now`:
    /// the channel's latest count to each subscriber, and one `SubscriptionCount` lifecycle
    /// event; nothing for a channel that emptied meanwhile. The engine runs no timers of its
    /// own: the server calls this from its keep-alive sweep (every 250 ms at most) with
    /// `tokio::time::Instant::now()`, so a held-back count goes out up to one sweep interval after
    /// its window ends. Without those calls, held-back counts are never sent.
    pub fn tick(&self, now: Instant) {
        for st in self.all_states() {
            let due: Vec<(Instant, ChannelName)> = {
                let mut pending = st.counts_due.lock();
                if pending.iter().all(|(at, _)| *at > now) {
                    continue;
                }
                let (due, later) = std::mem::take(&mut *pending)
                    .into_iter()
                    .partition(|(at, _)| *at <= now);
                *pending = later;
                due
            };
            for (at, name) in due {
                let sent = st
                    .shard(name.as_str())
                    .lock()
                    .get_mut(name.as_str())
                    // Another deadline: this one was met by a later send, or the channel is a
                    // new one under the same name.
                    .filter(|ch| ch.count.due == Some(at))
                    .and_then(|ch| {
                        ch.count.due = None;
                        (!ch.subs.is_empty()).then(|| self.send_count(ch, now))
                    });
                self.emit_count(&st, &name, sent);
            }
        }
    }

    /// Publishes an HTTP API event to one channel: encoded once, stored when it is a cache
    /// channel, queued to every subscriber but `except`, handed to the cluster adapter.
    pub fn publish(
        &self,
        app_id: &str,
        channel: &ChannelName,
        event: &str,
        data: &str,
        except: Option<SocketId>,
        cache_ttl: Duration,
    ) {
        let st = self.state(app_id);
        let frame: Frame = encode::channel_event(event, channel.as_str(), data).into();
        {
            let mut shard = st.shard(channel.as_str()).lock();
            if channel.is_cache() {
                let ch = shard
                    .entry(channel.arc().clone())
                    .or_insert_with(|| Channel::new(channel.clone()));
                ch.cache = Some(Cached::new(frame.clone(), data, cache_ttl));
            }
            if let Some(ch) = shard.get(channel.as_str()) {
                ch.broadcast(&frame, except);
            }
        }
        let cache = channel.is_cache().then_some((data, cache_ttl));
        self.inner
            .adapter
            .publish_remote(app_id, channel.as_str(), &frame, except, cache);
        self.emit(|| LifecycleEvent::ApiPublish {
            app: st.id.clone(),
            channel: channel.arc().clone(),
            event: Arc::from(event),
            data_len: data.len(),
            except,
        });
    }

    /// Relays an accepted client event to every other subscriber of `channel`.
    pub fn client_event(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
        event: &str,
        data: Option<&RawValue>,
        user_id: Option<&str>,
    ) {
        let st = self.state_of(conn);
        let frame: Frame = encode::client_event(event, channel.as_str(), data, user_id).into();
        if let Some(ch) = st.shard(channel.as_str()).lock().get(channel.as_str()) {
            ch.broadcast(&frame, Some(conn.socket_id));
        }
        self.inner.adapter.publish_remote(
            &st.id,
            channel.as_str(),
            &frame,
            Some(conn.socket_id),
            None,
        );
        self.emit(|| {
            // Webhooks carry data as a string: a JSON string's content, else the compact JSON.
            let text = match data {
                None => String::new(),
                Some(raw) => serde_json::from_str::<String>(raw.get())
                    .unwrap_or_else(|_| raw.get().to_owned()),
            };
            LifecycleEvent::ClientEvent {
                app: st.id.clone(),
                channel: channel.arc().clone(),
                event: Arc::from(event),
                data: Arc::from(text),
                socket_id: conn.socket_id,
                user_id: user_id.map(Arc::from),
            }
        });
    }

    /// Counts and cache of one channel.
    pub fn stats(&self, app_id: &str, channel: &ChannelName) -> ChannelStats {
        let st = self.state(app_id);
        let shard = st.shard(channel.as_str()).lock();
        shard
            .get(channel.as_str())
            .map(|c| c.stats(Instant::now()))
            .unwrap_or_default()
    }

    /// Occupied, non-internal channels whose name starts with `prefix`, sorted by name.
    pub fn channels(&self, app_id: &str, prefix: &str) -> Vec<(Arc<str>, ChannelStats)> {
        let st = self.state(app_id);
        let now = Instant::now();
        let mut out = Vec::new();
        for shard in st.shards.iter() {
            for (name, ch) in shard.lock().iter() {
                if !ch.subs.is_empty() && !ch.name.is_internal() && name.starts_with(prefix) {
                    out.push((name.clone(), ch.stats(now)));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Occupied channels (internal ones left out) and subscriptions of an app.
    pub fn channel_totals(&self, app_id: &str) -> (usize, usize) {
        let Some(st) = self.inner.states.read().get(app_id).cloned() else {
            return (0, 0);
        };
        let (mut channels, mut subs) = (0, 0);
        for shard in st.shards.iter() {
            for ch in shard.lock().values() {
                if !ch.subs.is_empty() && !ch.name.is_internal() {
                    channels += 1;
                }
                subs += ch.subs.len();
            }
        }
        (channels, subs)
    }

    /// Drops expired cache entries of channels nobody is subscribed to.
    pub fn sweep(&self) {
        let now = Instant::now();
        for st in self.all_states() {
            for shard in st.shards.iter() {
                shard.lock().retain(|_, ch| !ch.is_dead(now));
            }
        }
    }
}
