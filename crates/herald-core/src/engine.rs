//! The registry: the one module that mutates live state.

use crate::app::{App, AppStore};
use crate::cluster::{ClusterAdapter, ClusterNote};
use crate::conn::{Conn, Frame};
use crate::lifecycle::{LifecycleEvent, LifecycleSink};
use herald_protocol::presence::MemberData;
use herald_protocol::{codes, encode, ChannelName, CloseCode, SocketId};
use parking_lot::{Mutex, RwLock};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Channels above this many subscribers get at most one subscription count per window.
const COUNT_THROTTLE_ABOVE: usize = 100;
const COUNT_THROTTLE_WINDOW: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Channel-map shards per app (rounded up to a power of two).
    pub shards: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { shards: 64 }
    }
}

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

struct Sub {
    conn: Arc<Conn>,
    /// Presence user id of this subscription.
    user_id: Option<Arc<str>>,
}

struct Member {
    conns: u32,
    info: Box<RawValue>,
}

struct Cached {
    frame: Frame,
    data: Arc<str>,
    expires: Instant,
}

#[derive(Default)]
struct CountThrottle {
    last_sent: Option<Instant>,
    scheduled: bool,
}

struct Channel {
    name: ChannelName,
    subs: HashMap<SocketId, Sub>,
    members: HashMap<Arc<str>, Member>,
    cache: Option<Cached>,
    count: CountThrottle,
}

impl Channel {
    fn new(name: ChannelName) -> Self {
        Self {
            name,
            subs: HashMap::new(),
            members: HashMap::new(),
            cache: None,
            count: CountThrottle::default(),
        }
    }

    fn live_cache(&self, now: Instant) -> Option<&Cached> {
        self.cache.as_ref().filter(|c| c.expires > now)
    }

    /// A channel entry is kept only while it has subscribers or a live cached event.
    fn is_dead(&self, now: Instant) -> bool {
        self.subs.is_empty() && self.live_cache(now).is_none()
    }

    fn broadcast(&self, frame: &Frame, except: Option<SocketId>) {
        let direct = self.subs.len() <= crate::conn::DIRECT_WRITE_MAX_FANOUT;
        for (id, sub) in &self.subs {
            if Some(*id) != except {
                if direct {
                    sub.conn.send(frame);
                } else {
                    sub.conn.send_queued(frame);
                }
            }
        }
    }

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

type Shard = Mutex<HashMap<Arc<str>, Channel>>;
type ConnShard = Mutex<HashMap<SocketId, Arc<Conn>>>;

#[derive(Default)]
struct Users {
    /// Signed-in connections per user id.
    signed_in: HashMap<Arc<str>, Vec<Arc<Conn>>>,
    /// watched user id → watcher user id → how many of the watcher's connections watch.
    watchers: HashMap<Arc<str>, HashMap<Arc<str>, u32>>,
}

struct AppState {
    id: Arc<str>,
    shards: Box<[Shard]>,
    /// Every open connection, for drain and termination; sharded like channels.
    conns: Box<[ConnShard]>,
    connections: AtomicU64,
    users: Mutex<Users>,
}

impl AppState {
    fn conn_shard(&self, id: SocketId) -> &ConnShard {
        &self.conns[(id.seq as usize) & (self.conns.len() - 1)]
    }

    fn shard(&self, channel: &str) -> &Shard {
        // FNV-1a: cheap and stable; the shard count is a power of two.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in channel.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        &self.shards[(h as usize) & (self.shards.len() - 1)]
    }
}

struct Inner {
    apps: Arc<dyn AppStore>,
    adapter: Arc<dyn ClusterAdapter>,
    sinks: Vec<Arc<dyn LifecycleSink>>,
    config: EngineConfig,
    states: RwLock<HashMap<Arc<str>, Arc<AppState>>>,
    seq: AtomicU64,
}

/// Handle to the engine; clones share the same state.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(
        apps: Arc<dyn AppStore>,
        adapter: Arc<dyn ClusterAdapter>,
        sinks: Vec<Arc<dyn LifecycleSink>>,
        config: EngineConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                apps,
                adapter,
                sinks,
                config,
                states: RwLock::new(HashMap::new()),
                seq: AtomicU64::new(rand::random_range(1..1_000_000)),
            }),
        }
    }

    pub fn apps(&self) -> &Arc<dyn AppStore> {
        &self.inner.apps
    }

    fn emit(&self, make: impl FnOnce() -> LifecycleEvent) {
        if self.inner.sinks.is_empty() {
            return;
        }
        let ev = make();
        for s in &self.inner.sinks {
            s.emit(&ev);
        }
    }

    fn state(&self, app_id: &str) -> Arc<AppState> {
        if let Some(s) = self.inner.states.read().get(app_id) {
            return s.clone();
        }
        let mut w = self.inner.states.write();
        w.entry(Arc::from(app_id))
            .or_insert_with(|| {
                let n = self.inner.config.shards.max(1).next_power_of_two();
                Arc::new(AppState {
                    id: Arc::from(app_id),
                    shards: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
                    conns: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
                    connections: AtomicU64::new(0),
                    users: Mutex::new(Users::default()),
                })
            })
            .clone()
    }

    /// Admits a new connection of `app`, or says which close code refuses it.
    pub fn connect(&self, app: Arc<App>) -> Result<Arc<Conn>, CloseCode> {
        let st = self.state(&app.id);
        let max = app.limits.max_connections;
        let before = st.connections.fetch_add(1, Ordering::Relaxed);
        if max > 0 && before >= max {
            st.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(codes::OVER_QUOTA);
        }
        let id = SocketId::new(
            self.inner.adapter.node_id(),
            self.inner.seq.fetch_add(1, Ordering::Relaxed),
        );
        let conn = Conn::new(id, app);
        st.conn_shard(id).lock().insert(id, conn.clone());
        self.emit(|| LifecycleEvent::Connected {
            app: st.id.clone(),
            socket_id: id,
        });
        Ok(conn)
    }

    /// Removes a closed connection: unsubscribes it from `channels` and signs it out.
    pub fn disconnect<'a>(
        &self,
        conn: &Arc<Conn>,
        channels: impl IntoIterator<Item = &'a ChannelName>,
        user: Option<(&str, &[String])>,
    ) {
        for ch in channels {
            self.unsubscribe(conn, ch);
        }
        if let Some((user_id, watchlist)) = user {
            self.signout(conn, user_id, watchlist);
        }
        let st = self.state(&conn.app.id);
        st.conn_shard(conn.socket_id).lock().remove(&conn.socket_id);
        st.connections.fetch_sub(1, Ordering::Relaxed);
        self.emit(|| LifecycleEvent::Disconnected {
            app: st.id.clone(),
            socket_id: conn.socket_id,
        });
    }

    pub fn connection_count(&self, app_id: &str) -> u64 {
        self.inner
            .states
            .read()
            .get(app_id)
            .map_or(0, |s| s.connections.load(Ordering::Relaxed))
    }

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
        let st = self.state(&conn.app.id);
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
            let uid: Arc<str> = Arc::from(m.user_id.as_str());
            let info_note: Arc<str> = Arc::from(m.user_info.get());
            match ch.members.get_mut(&uid) {
                Some(existing) => {
                    existing.conns += 1;
                    // The latest user_info wins for later snapshots; members hear nothing.
                    existing.info = m.user_info;
                    if clustered {
                        notes.push(ClusterNote::MemberCount {
                            app: st.id.clone(),
                            channel: channel.clone(),
                            user_id: uid.clone(),
                            count: existing.conns,
                            info: info_note,
                            socket_id: conn.socket_id,
                        });
                    }
                }
                None => {
                    let max = conn.app.limits.max_presence_members;
                    let known_remotely = remote_members.iter().any(|(id, _)| **id == *uid);
                    let present = ch.members.len()
                        + remote_members
                            .iter()
                            .filter(|(id, _)| !ch.members.contains_key(id.as_str()))
                            .count();
                    if present >= max && !known_remotely {
                        if ch.is_dead(now) {
                            shard.remove(channel.as_str());
                        }
                        return Err(SubscribeError::PresenceFull {
                            channel: channel.to_string(),
                            max,
                        });
                    }
                    if clustered {
                        // The adapter decides whether the user is new to the cluster.
                        notes.push(ClusterNote::MemberCount {
                            app: st.id.clone(),
                            channel: channel.clone(),
                            user_id: uid.clone(),
                            count: 1,
                            info: info_note,
                            socket_id: conn.socket_id,
                        });
                    } else {
                        let frame: Frame =
                            encode::member_added(channel.as_str(), &uid, &m.user_info).into();
                        ch.broadcast(&frame, None);
                        added_member = Some(uid.clone());
                    }
                    ch.members.insert(
                        uid.clone(),
                        Member {
                            conns: 1,
                            info: m.user_info,
                        },
                    );
                }
            }
            user_id = Some(uid);
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
            let remote: Vec<(&str, Box<RawValue>)> = remote_members
                .iter()
                .filter(|(id, _)| !ch.members.contains_key(id.as_str()))
                .filter_map(|(id, info)| {
                    RawValue::from_string(info.clone())
                        .ok()
                        .map(|r| (id.as_str(), r))
                })
                .collect();
            let mut all: Vec<(&str, &RawValue)> =
                ch.members.iter().map(|(id, m)| (&**id, &*m.info)).collect();
            all.extend(remote.iter().map(|(id, r)| (*id, &**r)));
            encode::presence_succeeded(channel.as_str(), all.into_iter()).into()
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
        let st = self.state(&conn.app.id);
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
        let mut removed_member = None;
        if let Some(uid) = sub.user_id {
            if let Some(m) = ch.members.get_mut(&uid) {
                m.conns -= 1;
                let left = m.conns;
                if clustered {
                    notes.push(ClusterNote::MemberCount {
                        app: st.id.clone(),
                        channel: channel.clone(),
                        user_id: uid.clone(),
                        count: left,
                        info: Arc::from(m.info.get()),
                        socket_id: conn.socket_id,
                    });
                }
                if left == 0 {
                    ch.members.remove(&uid);
                    if !clustered {
                        ch.broadcast(&encode::member_removed(channel.as_str(), &uid).into(), None);
                        removed_member = Some(uid);
                    }
                }
            }
        }
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

    /// Sends `pusher_internal:subscription_count` when the app wants it, throttled on big
    /// channels; returns the count sent now, for the caller to report once its locks are gone.
    fn after_count_change(&self, st: &Arc<AppState>, ch: &mut Channel) -> Option<usize> {
        if ch.name.is_presence() || ch.name.is_internal() || ch.subs.is_empty() {
            return None;
        }
        let app = ch.subs.values().next().map(|s| s.conn.app.clone())?;
        if !app.enable_subscription_count {
            return None;
        }
        let now = Instant::now();
        let throttled = ch.subs.len() > COUNT_THROTTLE_ABOVE
            && ch
                .count
                .last_sent
                .is_some_and(|t| now.duration_since(t) < COUNT_THROTTLE_WINDOW);
        if !throttled {
            return Some(self.send_count(ch, now));
        }
        if ch.count.scheduled {
            return None;
        }
        ch.count.scheduled = true;
        let due = ch
            .count
            .last_sent
            .map_or(now, |t| t + COUNT_THROTTLE_WINDOW);
        let engine = self.clone();
        let st = st.clone();
        let name = ch.name.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep_until(due).await;
                let sent = {
                    let mut shard = st.shard(name.as_str()).lock();
                    shard.get_mut(name.as_str()).and_then(|ch| {
                        ch.count.scheduled = false;
                        (!ch.subs.is_empty()).then(|| engine.send_count(ch, Instant::now()))
                    })
                };
                engine.emit_count(&st, &name, sent);
            });
        }
        None
    }

    /// Queues the count frame to every subscriber; returns the count.
    fn send_count(&self, ch: &mut Channel, now: Instant) -> usize {
        ch.count.last_sent = Some(now);
        let n = ch.subs.len();
        ch.broadcast(
            &encode::subscription_count(ch.name.as_str(), n).into(),
            None,
        );
        n
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
                ch.cache = Some(Cached {
                    frame: frame.clone(),
                    data: Arc::from(data),
                    expires: Instant::now() + cache_ttl,
                });
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
        let st = self.state(&conn.app.id);
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

    /// Distinct user ids on a presence channel.
    pub fn members(&self, app_id: &str, channel: &ChannelName) -> Vec<Arc<str>> {
        let st = self.state(app_id);
        let shard = st.shard(channel.as_str()).lock();
        let mut ids: Vec<Arc<str>> = shard
            .get(channel.as_str())
            .map(|c| c.members.keys().cloned().collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Records a sign-in. Queues the watchlist statuses for this connection (when the app has
    /// watchlist events on) and tells watchers when the user just came online.
    pub fn signin(&self, conn: &Arc<Conn>, user_id: &str, watchlist: &[String]) {
        self.signin_with(conn, user_id, watchlist, &[]);
    }

    /// As [`Engine::signin`]; `remote_online` lists watched users online on other nodes.
    pub fn signin_with(
        &self,
        conn: &Arc<Conn>,
        user_id: &str,
        watchlist: &[String],
        remote_online: &[String],
    ) {
        let st = self.state(&conn.app.id);
        let watch = conn.app.enable_watchlist_events;
        let mut users = st.users.lock();
        let uid: Arc<str> = Arc::from(user_id);
        let conns = users.signed_in.entry(uid.clone()).or_default();
        let came_online = conns.is_empty();
        conns.push(conn.clone());
        let count = conns.len();
        for w in watchlist {
            *users
                .watchers
                .entry(Arc::from(w.as_str()))
                .or_default()
                .entry(uid.clone())
                .or_default() += 1;
        }
        let clustered = self.inner.adapter.clustered();
        if clustered {
            self.inner.adapter.note(ClusterNote::UserCount {
                app: st.id.clone(),
                user_id: uid.clone(),
                count,
            });
        }
        if !watch {
            return;
        }
        if !watchlist.is_empty() {
            let (online, offline): (Vec<&str>, Vec<&str>) =
                watchlist.iter().map(String::as_str).partition(|w| {
                    users.signed_in.get(*w).is_some_and(|c| !c.is_empty())
                        || remote_online.iter().any(|r| r == w)
                });
            conn.send(&encode::watchlist_events(&online, &offline).into());
        }
        if came_online && !clustered {
            let frame: Frame = encode::watchlist_events(&[user_id], &[]).into();
            notify_watchers(&users, user_id, &frame, Some(conn.socket_id));
        }
    }

    fn signout(&self, conn: &Arc<Conn>, user_id: &str, watchlist: &[String]) {
        let st = self.state(&conn.app.id);
        let mut users = st.users.lock();
        let mut went_offline = false;
        let mut left = 0;
        if let Some(conns) = users.signed_in.get_mut(user_id) {
            conns.retain(|c| c.socket_id != conn.socket_id);
            left = conns.len();
            if conns.is_empty() {
                users.signed_in.remove(user_id);
                went_offline = true;
            }
        }
        let clustered = self.inner.adapter.clustered();
        if clustered {
            self.inner.adapter.note(ClusterNote::UserCount {
                app: st.id.clone(),
                user_id: Arc::from(user_id),
                count: left,
            });
        }
        for w in watchlist {
            if let Some(by) = users.watchers.get_mut(w.as_str()) {
                if let Some(n) = by.get_mut(user_id) {
                    *n -= 1;
                    if *n == 0 {
                        by.remove(user_id);
                    }
                }
                if by.is_empty() {
                    users.watchers.remove(w.as_str());
                }
            }
        }
        if went_offline && !clustered && conn.app.enable_watchlist_events {
            let frame: Frame = encode::watchlist_events(&[], &[user_id]).into();
            notify_watchers(&users, user_id, &frame, None);
        }
    }

    /// Closes every connection signed in as `user_id` with 4009, on every node.
    pub fn terminate_user(&self, app_id: &str, user_id: &str) -> usize {
        self.inner.adapter.terminate_remote(app_id, user_id);
        self.terminate_user_local(app_id, user_id)
    }

    /// Closes this node's connections signed in as `user_id` with 4009; returns how many.
    pub fn terminate_user_local(&self, app_id: &str, user_id: &str) -> usize {
        let st = self.state(app_id);
        let users = st.users.lock();
        let conns = users
            .signed_in
            .get(user_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for c in conns {
            c.request_close(codes::UNAUTHORIZED);
        }
        conns.len()
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

    /// Every open connection of every app.
    pub fn all_connections(&self) -> Vec<Arc<Conn>> {
        let states: Vec<Arc<AppState>> = self.inner.states.read().values().cloned().collect();
        let mut out = Vec::new();
        for st in states {
            for shard in st.conns.iter() {
                out.extend(shard.lock().values().cloned());
            }
        }
        out
    }

    /// Visits every open connection of every app, one shard lock at a time (`f` must be quick).
    pub fn each_connection(&self, mut f: impl FnMut(&Arc<Conn>)) {
        let states: Vec<Arc<AppState>> = self.inner.states.read().values().cloned().collect();
        for st in states {
            for shard in st.conns.iter() {
                shard.lock().values().for_each(&mut f);
            }
        }
    }

    /// Ids of apps that have open connections on this node.
    pub fn connected_apps(&self) -> Vec<Arc<str>> {
        self.inner
            .states
            .read()
            .values()
            .filter(|s| s.connections.load(Ordering::Relaxed) > 0)
            .map(|s| s.id.clone())
            .collect()
    }

    /// Closes every connection of an app with `code` (the app was disabled or removed).
    pub fn close_app(&self, app_id: &str, code: CloseCode) -> usize {
        let Some(st) = self.inner.states.read().get(app_id).cloned() else {
            return 0;
        };
        let mut n = 0;
        for shard in st.conns.iter() {
            for c in shard.lock().values() {
                c.request_close(code);
                n += 1;
            }
        }
        n
    }

    /// Open connections across all apps.
    pub fn total_connections(&self) -> u64 {
        self.inner
            .states
            .read()
            .values()
            .map(|s| s.connections.load(Ordering::Relaxed))
            .sum()
    }

    /// Delivers a frame to this node's subscribers of `channel` (a clustered adapter's inbound
    /// path); stores it as the channel's cached event when `cache` is given.
    pub fn deliver_local(
        &self,
        app_id: &str,
        channel: &ChannelName,
        frame: &Frame,
        except: Option<SocketId>,
        cache: Option<(&str, Duration)>,
    ) {
        let st = self.state(app_id);
        let mut shard = st.shard(channel.as_str()).lock();
        if let Some((data, ttl)) = cache {
            let ch = shard
                .entry(channel.arc().clone())
                .or_insert_with(|| Channel::new(channel.clone()));
            ch.cache = Some(Cached {
                frame: frame.clone(),
                data: Arc::from(data),
                expires: Instant::now() + ttl,
            });
        }
        if let Some(ch) = shard.get(channel.as_str()) {
            ch.broadcast(frame, except);
        }
    }

    /// Runs the lifecycle sinks for a cluster-wide event an adapter decided.
    pub fn emit_event(&self, event: LifecycleEvent) {
        self.emit(|| event);
    }

    /// Sends a watchlist status change of `user_id` to this node's watchers of that user.
    pub fn notify_watchers_local(&self, app_id: &str, user_id: &str, online: bool) {
        let Some(app) = self.inner.apps.by_id(app_id) else {
            return;
        };
        if !app.enable_watchlist_events {
            return;
        }
        let st = self.state(app_id);
        let users = st.users.lock();
        let frame: Frame = if online {
            encode::watchlist_events(&[user_id], &[])
        } else {
            encode::watchlist_events(&[], &[user_id])
        }
        .into();
        notify_watchers(&users, user_id, &frame, None);
    }

    /// This node's counts, for a clustered adapter to (re)write its share of the shared state.
    pub fn local_notes(&self) -> Vec<ClusterNote> {
        let states: Vec<Arc<AppState>> = self.inner.states.read().values().cloned().collect();
        let mut out = Vec::new();
        for st in states {
            for shard in st.shards.iter() {
                for ch in shard.lock().values() {
                    if ch.name.is_internal() || ch.subs.is_empty() {
                        continue;
                    }
                    out.push(ClusterNote::ChannelCount {
                        app: st.id.clone(),
                        channel: ch.name.clone(),
                        count: ch.subs.len(),
                    });
                    for (uid, m) in &ch.members {
                        let socket_id = ch
                            .subs
                            .iter()
                            .find(|(_, s)| s.user_id.as_deref() == Some(&**uid))
                            .map_or(SocketId::new(0, 0), |(id, _)| *id);
                        out.push(ClusterNote::MemberCount {
                            app: st.id.clone(),
                            channel: ch.name.clone(),
                            user_id: uid.clone(),
                            count: m.conns,
                            info: Arc::from(m.info.get()),
                            socket_id,
                        });
                    }
                }
            }
            for (uid, conns) in &st.users.lock().signed_in {
                out.push(ClusterNote::UserCount {
                    app: st.id.clone(),
                    user_id: uid.clone(),
                    count: conns.len(),
                });
            }
        }
        out
    }

    /// Drops expired cache entries of channels nobody is subscribed to.
    pub fn sweep(&self) {
        let now = Instant::now();
        let states: Vec<Arc<AppState>> = self.inner.states.read().values().cloned().collect();
        for st in states {
            for shard in st.shards.iter() {
                shard.lock().retain(|_, ch| !ch.is_dead(now));
            }
        }
    }
}

fn notify_watchers(users: &Users, user_id: &str, frame: &Frame, skip: Option<SocketId>) {
    let Some(by) = users.watchers.get(user_id) else {
        return;
    };
    for watcher in by.keys() {
        for c in users
            .signed_in
            .get(watcher)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if Some(c.socket_id) != skip {
                c.send(frame);
            }
        }
    }
}
