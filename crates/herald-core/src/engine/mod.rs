//! The registry: the one module that mutates live state.
//!
//! This file holds the state (apps, channel shards, users) and the connection registry; the verbs
//! live beside it, one file per concern, each with its own `impl Engine`: `channels` (subscribe,
//! publish, counts), `presence` (members), `users` (sign-in, watchlists) and `cluster` (what
//! comes from other nodes, and the one function that applies a transition).

mod channels;
mod cluster;
mod presence;
mod users;

pub use channels::{ChannelStats, SubscribeError, Subscribed, COUNT_COALESCE_WINDOW};

use crate::app::{App, AppStore};
use crate::cluster::{Broker, Cluster};
use crate::conn::{Conn, Frame};
use crate::lifecycle::{LifecycleEvent, LifecycleSink};
use herald_protocol::{codes, ChannelName, CloseCode, SocketId};
use parking_lot::{Mutex, RwLock};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Channel-map shards per app (rounded up to a power of two).
    pub shards: usize,
    /// Subscriptions held on this node across all apps beyond which a subscribe is refused
    /// ([`SubscribeError::OverCapacity`]); 0: no limit.
    pub max_subscriptions: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            shards: 64,
            max_subscriptions: 0,
        }
    }
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

impl Cached {
    /// A cached event that expires after `ttl`. The TTL comes from settings or from another
    /// node over the bus, so the sum is checked: an absurd TTL keeps the event for a year rather
    /// than overflowing the clock.
    fn new(frame: Frame, data: &str, ttl: Duration) -> Self {
        let now = Instant::now();
        let year = Duration::from_secs(herald_protocol::limits::MAX_SETTING_SECONDS);
        Self {
            frame,
            data: Arc::from(data),
            expires: now.checked_add(ttl.min(year)).unwrap_or(now),
        }
    }
}

/// When a channel's subscription counts go out (the rule is in `channels.rs`). Kept small: every
/// channel has one.
#[derive(Default)]
struct CountThrottle {
    /// The last `pusher_internal:subscription_count` frame sent to the subscribers.
    last_frame: Option<Instant>,
    /// The last `SubscriptionCount` lifecycle event (what webhooks report).
    last_report: Option<Instant>,
    held: Held,
    /// The cluster-wide count the store last delivered (`Engine::deliver_count`); the
    /// frames carry it instead of this node's own subscriber count.
    cluster: Option<usize>,
}

/// What a channel holds back for [`Engine::tick`]; when it is due follows from the last send.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Held {
    #[default]
    Nothing,
    /// The frame, `COUNT_COALESCE_WINDOW` after the last frame (the change was reported).
    Frame,
    /// Frame and report, `COUNT_THROTTLE_WINDOW` after the last report (a big channel).
    FrameAndReport,
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
    /// Channels holding back a subscription count, with when it is due; [`Engine::tick`] sends
    /// it. Locked after a channel shard, never before.
    counts_due: Mutex<Vec<(Instant, ChannelName)>>,
    /// Clustered: the big channels whose cluster-wide count this node decided lately, for the
    /// throttle (`cluster.rs`).
    cluster_counts: Mutex<HashMap<Arc<str>, ClusterCount>>,
}

/// The throttle of a big channel's cluster-wide count on the node that decides it.
struct ClusterCount {
    name: ChannelName,
    last: Instant,
    pending: Option<usize>,
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
    cluster: Cluster,
    sinks: Vec<Arc<dyn LifecycleSink>>,
    config: EngineConfig,
    states: RwLock<HashMap<Arc<str>, Arc<AppState>>>,
    seq: AtomicU64,
    /// Subscriptions held across all apps, against `config.max_subscriptions`.
    subscriptions: AtomicUsize,
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
        cluster: Cluster,
        sinks: Vec<Arc<dyn LifecycleSink>>,
        config: EngineConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                apps,
                cluster,
                sinks,
                config,
                states: RwLock::new(HashMap::new()),
                seq: AtomicU64::new(rand::random_range(1..1_000_000)),
                subscriptions: AtomicUsize::new(0),
            }),
        }
    }

    pub fn apps(&self) -> &Arc<dyn AppStore> {
        &self.inner.apps
    }

    /// What this engine is joined to.
    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    fn broker(&self) -> &dyn Broker {
        &*self.inner.cluster.broker
    }

    fn clustered(&self) -> bool {
        self.inner.cluster.broker.clustered()
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

    /// The state of a connection's app (read without taking a reference to its settings).
    fn state_of(&self, conn: &Conn) -> Arc<AppState> {
        conn.with_app(|a| self.state(&a.id))
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
                    counts_due: Mutex::new(Vec::new()),
                    cluster_counts: Mutex::new(HashMap::new()),
                })
            })
            .clone()
    }

    /// Every app's state as it is now, to visit without holding the map's lock.
    fn all_states(&self) -> Vec<Arc<AppState>> {
        self.inner.states.read().values().cloned().collect()
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
            self.broker().node_id(),
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
        let st = self.state_of(conn);
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

    /// Every open connection of every app.
    pub fn all_connections(&self) -> Vec<Arc<Conn>> {
        let mut out = Vec::new();
        for st in self.all_states() {
            for shard in st.conns.iter() {
                out.extend(shard.lock().values().cloned());
            }
        }
        out
    }

    /// Visits every open connection of every app, one shard lock at a time (`f` must be quick).
    pub fn each_connection(&self, mut f: impl FnMut(&Arc<Conn>)) {
        for st in self.all_states() {
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

    /// Makes the app store the one source of app settings for open connections: each
    /// connection of an app whose settings changed (a reload, a database refresh) is handed the
    /// new ones, and the connections of an app that was disabled or removed are closed with 4003
    /// or 4001. Returns, for each app closed, its id, the code and how many connections it had.
    pub fn follow_apps(&self) -> Vec<(Arc<str>, CloseCode, usize)> {
        let states: Vec<Arc<AppState>> = self
            .inner
            .states
            .read()
            .values()
            .filter(|s| s.connections.load(Ordering::Relaxed) > 0)
            .cloned()
            .collect();
        let mut closed = Vec::new();
        for st in states {
            let current = match self.inner.apps.by_id(&st.id) {
                Some(a) if a.enabled => a,
                gone => {
                    let code = if gone.is_some() {
                        codes::APP_DISABLED
                    } else {
                        codes::APP_NOT_FOUND
                    };
                    closed.push((st.id.clone(), code, self.close_app(&st.id, code)));
                    continue;
                }
            };
            for shard in st.conns.iter() {
                for c in shard.lock().values() {
                    // Stores hand out the same `Arc` until they reload; after a reload every
                    // connection takes the new one once, changed or not, so later rounds stop
                    // at this pointer comparison instead of comparing settings field by field.
                    if !c.with_app(|held| std::ptr::eq(held, &*current)) {
                        c.set_app(current.clone());
                    }
                }
            }
        }
        closed
    }

    /// Subscriptions held across all apps (what `max_subscriptions` limits).
    pub fn total_subscriptions(&self) -> usize {
        self.inner.subscriptions.load(Ordering::Relaxed)
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
}
