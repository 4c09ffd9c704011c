//! Channels: subscriptions, publishing, client events, counts and the channel queries.

use super::{AppState, Cached, Channel, CountThrottle, Engine, Held, Sub};
use crate::cluster::{
    CachedEvent, ClusterNote, Envelope, PublishError, Receipt, Sent, Topic, Transition,
};
use crate::conn::{Conn, Frame};
use crate::lifecycle::LifecycleEvent;
use herald_protocol::presence::MemberData;
use herald_protocol::{encode, ChannelName, SocketId};
use serde_json::value::RawValue;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Channels above this many subscribers get at most one subscription count per window, frame and
/// report together (Pusher's rule).
pub(super) const COUNT_THROTTLE_ABOVE: usize = 100;
pub(super) const COUNT_THROTTLE_WINDOW: Duration = Duration::from_secs(5);
/// Smaller channels get at most one count frame per this interval: every subscriber is sent each
/// frame, so one client churning subscriptions would otherwise make N subscribers receive a
/// frame per change. One keep-alive sweep at the default timeouts, so a held-back frame goes out
/// 250-500 ms after the one before.
pub const COUNT_COALESCE_WINDOW: Duration = Duration::from_millis(250);

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
    Existing {
        channel: String,
    },
    PresenceFull {
        channel: String,
        max: usize,
    },
    /// This node holds `max` subscriptions (`EngineConfig::max_subscriptions`).
    OverCapacity {
        channel: String,
        max: usize,
    },
}

impl std::fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Existing { channel } => write!(f, "Existing subscription to {channel}"),
            Self::PresenceFull { channel, max } => {
                write!(f, "Presence channel {channel} is full (max {max} members)")
            }
            Self::OverCapacity { channel, max } => write!(
                f,
                "Cannot subscribe to {channel}: the server holds its limit of {max} subscriptions"
            ),
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
        self.subscribe_with(conn, channel, member, &[], None)
    }

    /// As [`Engine::subscribe`]; `remote_members` (user id, raw user_info) are members present on
    /// other nodes, merged into the presence snapshot; `stored` is a cache channel's event as the
    /// cluster's store keeps it, used when this node holds none.
    pub fn subscribe_with(
        &self,
        conn: &Arc<Conn>,
        channel: &ChannelName,
        member: Option<MemberData>,
        remote_members: &[(String, String)],
        stored: Option<CachedEvent>,
    ) -> Result<Subscribed, SubscribeError> {
        // A place is taken before any state is touched, and given back on every refusal below.
        let max = self.inner.config.max_subscriptions;
        let held = self.inner.subscriptions.fetch_add(1, Ordering::Relaxed);
        if max > 0 && held >= max {
            self.inner.subscriptions.fetch_sub(1, Ordering::Relaxed);
            return Err(SubscribeError::OverCapacity {
                channel: channel.to_string(),
                max,
            });
        }
        let clustered = self.clustered();
        let mut notes: Vec<ClusterNote> = Vec::new();
        let st = self.state_of(conn);
        let now = Instant::now();
        let mut shard = st.shard(channel.as_str()).lock();
        let ch = shard
            .entry(channel.arc().clone())
            .or_insert_with(|| Channel::new(channel.clone()));
        if ch.subs.contains_key(&conn.socket_id) {
            self.inner.subscriptions.fetch_sub(1, Ordering::Relaxed);
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
                    self.inner.subscriptions.fetch_sub(1, Ordering::Relaxed);
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
        if occupied && clustered {
            // Under the lock, so the broker sees this channel's interest changes in order.
            self.broker().subscribe(Topic::channel(&st.id, channel));
        }

        let succeeded: Frame = if channel.is_presence() {
            ch.presence_succeeded(remote_members)
        } else {
            encode::subscription_succeeded(channel.as_str()).into()
        };
        conn.send(&succeeded);
        let mut cache_miss = false;
        if channel.is_cache() {
            if let (None, Some(c)) = (ch.live_cache(now), stored) {
                ch.cache = Some(Cached::new(c.frame, &c.data, c.ttl));
            }
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
        // Under the lock: notes of one channel must reach the store in the order the counts
        // changed, or a stale count would win (the store keeps the latest per channel).
        for n in notes {
            self.note(n);
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
                self.emit_transition(|| Transition::Occupied {
                    app: app.clone(),
                    channel: channel.clone(),
                });
            }
            if let Some(uid) = added_member {
                // The frame went out under the lock (no subscriber may see it twice).
                self.emit_transition(|| Transition::MemberAdded {
                    app: app.clone(),
                    channel: channel.clone(),
                    user_id: uid,
                    info: Arc::from(""),
                    except: None,
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
        self.inner.subscriptions.fetch_sub(1, Ordering::Relaxed);
        let clustered = self.clustered();
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
        if clustered && ch.subs.is_empty() {
            self.broker().unsubscribe(Topic::channel(&st.id, channel));
        }
        if ch.is_dead(now) {
            shard.remove(channel.as_str());
        }
        // Under the lock: notes of one channel must reach the store in the order the counts
        // changed, or a stale count would win (the store keeps the latest per channel).
        for n in notes {
            self.note(n);
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
                self.emit_transition(|| Transition::MemberRemoved {
                    app: app.clone(),
                    channel: channel.clone(),
                    user_id: uid,
                });
            }
            if vacated {
                self.emit_transition(|| Transition::Vacated {
                    app: app.clone(),
                    channel: channel.clone(),
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

    /// Sends `pusher_internal:subscription_count` when the app wants it; returns the count to
    /// report now (the `SubscriptionCount` lifecycle event, hence webhooks), for the caller to
    /// emit once its locks are gone.
    ///
    /// Up to `COUNT_THROTTLE_ABOVE` subscribers every change is reported, and the frame goes out
    /// at once unless one went out less than `COUNT_COALESCE_WINDOW` ago; then the window's
    /// changes collapse into one frame with the latest count at its end. Above it, frame and
    /// report go together, at most one per `COUNT_THROTTLE_WINDOW` counted from the last report:
    /// a change within the window is held back. [`Engine::tick`] sends what was held back when
    /// its window ends. The window is the one of the channel's current size, so a channel that
    /// shrinks to the limit gets its count within the short window again.
    fn after_count_change(&self, st: &AppState, ch: &mut Channel) -> Option<usize> {
        if ch.name.is_presence() || ch.name.is_internal() || ch.subs.is_empty() {
            return None;
        }
        let first = ch.subs.values().next()?;
        if !first.conn.with_app(|a| a.enable_subscription_count) {
            return None;
        }
        let now = Instant::now();
        let was_due = ch.count.due();
        let reported = if ch.subs.len() > COUNT_THROTTLE_ABOVE {
            match ch.count.last_report.map(|t| t + COUNT_THROTTLE_WINDOW) {
                Some(end) if now < end => {
                    ch.count.held = Held::FrameAndReport;
                    None
                }
                _ => {
                    self.send_count(ch, now);
                    Some(report(ch, now))
                }
            }
        } else {
            match ch.count.last_frame.map(|t| t + COUNT_COALESCE_WINDOW) {
                Some(end) if now < end => ch.count.held = Held::Frame,
                _ => self.send_count(ch, now),
            }
            Some(report(ch, now))
        };
        if let Some(due) = ch.count.due().filter(|d| Some(*d) != was_due) {
            // An entry for another deadline stays in the list; `tick` skips it.
            st.counts_due.lock().push((due, ch.name.clone()));
        }
        reported
    }

    /// Queues the count frame to every subscriber.
    fn send_count(&self, ch: &mut Channel, now: Instant) {
        ch.count.last_frame = Some(now);
        // This frame carries the latest count: one held back is no longer needed (a held report
        // is the caller's to make).
        ch.count.held = Held::Nothing;
        let count = ch.count.cluster.unwrap_or(ch.subs.len());
        ch.broadcast(
            &encode::subscription_count(ch.name.as_str(), count).into(),
            None,
        );
    }

    /// Sends a cluster-wide subscription count (decided and reported by the store's node) to
    /// this node's subscribers of `channel`, coalesced like a local change: the frame goes out at
    /// once unless one went out less than `COUNT_COALESCE_WINDOW` ago, and then the latest count
    /// delivered goes out at the window's end ([`Engine::tick`]). So a burst of changes decided
    /// anywhere in the cluster reaches each subscriber as a few frames, the last one true.
    pub fn deliver_count(&self, app_id: &str, channel: &ChannelName, count: usize) {
        if channel.is_presence() || channel.is_internal() {
            return;
        }
        let st = self.state(app_id);
        let mut shard = st.shard(channel.as_str()).lock();
        let Some(ch) = shard.get_mut(channel.as_str()) else {
            return;
        };
        if ch.subs.is_empty() {
            return;
        }
        let now = Instant::now();
        let was_due = ch.count.due();
        ch.count.cluster = Some(count);
        match ch.count.last_frame.map(|t| t + COUNT_COALESCE_WINDOW) {
            Some(end) if now < end => {
                // A big channel's held report is not this node's to make: only the frame waits.
                ch.count.held = Held::Frame;
            }
            _ => self.send_count(ch, now),
        }
        if let Some(due) = ch.count.due().filter(|d| Some(*d) != was_due) {
            st.counts_due.lock().push((due, ch.name.clone()));
        }
    }

    /// Sends every count frame held back whose window ended by `now`: the channel's latest
    /// count to each subscriber, and one `SubscriptionCount` lifecycle event when the change was
    /// not reported yet (a channel above the throttle's limit); nothing for a channel that
    /// emptied meanwhile. The engine runs no timers of its own: the server calls this from its
    /// keep-alive sweep (every 100-250 ms) with `tokio::time::Instant::now()`, so a held-back
    /// count goes out up to one sweep interval after its window ends. Without those calls,
    /// held-back counts are never sent.
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
                let reported = st
                    .shard(name.as_str())
                    .lock()
                    .get_mut(name.as_str())
                    // Another deadline: this one was met by a later send, moved by a change of
                    // window, or the channel is a new one under the same name.
                    .filter(|ch| ch.count.due() == Some(at))
                    .and_then(|ch| {
                        let held = ch.count.held;
                        ch.count.held = Held::Nothing;
                        if ch.subs.is_empty() {
                            return None;
                        }
                        self.send_count(ch, now);
                        (held == Held::FrameAndReport).then(|| report(ch, now))
                    });
                self.emit_count(&st, &name, reported);
            }
        }
        if self.clustered() {
            for st in self.all_states() {
                self.tick_cluster_counts(&st.id, now);
            }
        }
    }

    /// Publishes an HTTP API event to one channel: encoded once, stored when it is a cache
    /// channel, queued to every subscriber but `except`. Clustered, it goes through the broker
    /// (this node's subscribers get it when it comes back, in the cluster's order) and the
    /// receipt says when the broker accepted it; refused when the broker cannot take it.
    pub fn publish(
        &self,
        app_id: &str,
        channel: &ChannelName,
        event: &str,
        data: &str,
        except: Option<SocketId>,
        cache_ttl: Duration,
    ) -> Result<Option<Receipt>, PublishError> {
        let st = self.state(app_id);
        let frame: Frame = encode::channel_event(event, channel.as_str(), data).into();
        let mut receipt = None;
        if self.clustered() {
            let cache = channel.is_cache().then(|| (Arc::from(data), cache_ttl));
            let sent = self.broker().publish(
                Topic::channel(&st.id, channel),
                Envelope::Event {
                    frame: frame.clone(),
                    except,
                    cache,
                },
            )?;
            if let Sent::Queued(r) = sent {
                receipt = Some(r);
            }
        }
        if receipt.is_none() {
            let cache = channel.is_cache().then_some((data, cache_ttl));
            self.deliver_local(&st.id, channel, &frame, except, cache);
        }
        self.emit(|| LifecycleEvent::ApiPublish {
            app: st.id.clone(),
            channel: channel.arc().clone(),
            event: Arc::from(event),
            data: Arc::from(data),
            except,
        });
        Ok(receipt)
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
        // Clustered, a refusal is the broker's to count and log: the client has no answer to get.
        self.send_to(
            Topic::channel(&st.id, channel),
            Envelope::Event {
                frame,
                except: Some(conn.socket_id),
                cache: None,
            },
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

impl CountThrottle {
    /// When what is held back goes out.
    fn due(&self) -> Option<Instant> {
        match self.held {
            Held::Nothing => None,
            Held::Frame => self.last_frame.map(|t| t + COUNT_COALESCE_WINDOW),
            Held::FrameAndReport => self.last_report.map(|t| t + COUNT_THROTTLE_WINDOW),
        }
    }
}

/// Marks the channel's current count as reported now; returns it.
fn report(ch: &mut Channel, now: Instant) -> usize {
    ch.count.last_report = Some(now);
    ch.subs.len()
}
