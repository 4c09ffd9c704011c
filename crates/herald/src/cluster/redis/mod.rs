//! Scale-out through Redis: the broker and the store that make many Herald nodes one server.
//!
//! * Broker (`broker.rs`): one pub/sub channel per topic, subscribed only by nodes with an
//!   interest in it; every clustered message goes through Redis, so every node sees a channel's
//!   messages in the one order Redis accepted them; publishes are acknowledged or refused.
//! * Store (`share.rs`, keys in `keys.rs`): each node writes its own share of every count
//!   (subscribers per channel, connections per presence member, signed-in connections per
//!   user) next to a cluster total, under the channel's or the user's hash tag. One Lua script
//!   per change updates both atomically on one slot and returns the total before and after,
//!   so exactly one node sees each transition and hands it to its engine's `apply`. API reads
//!   come from those totals: no node waits for another.
//! * Faults (`liveness.rs`): nodes heartbeat into keys that expire; one live node claims a
//!   peer whose heartbeat is gone and reaps its share channel by channel in small scripts,
//!   applying the transitions each decides. After a Redis restart a node rewrites its share
//!   quietly; after peers reaped it (it was stalled), it comes back under a new identity and
//!   rewrites it loudly, so what was announced as removed is announced again. During an
//!   outage, publishes are refused (503) or delivered on this node only, as
//!   `cluster.on_outage` says.

use crate::config::OnOutage;
use crate::sinks::metrics::Metrics;
use herald_core::{
    Broker, CachedEvent, ClusterNote, Engine, Envelope, PublishError, Reading, Ready, Sent, Store,
    Topic, Transition,
};
use herald_protocol::ChannelName;
use link::{Link, Query};
use redis::Script;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A node whose heartbeat is this old is dead (reaped within about 8 s).
const HEARTBEAT_TTL_MS: u64 = 6000;
const RETRY: Duration = Duration::from_millis(500);
/// Reads in flight at once on the shared connection (per API request).
const READ_PARALLEL: usize = 512;
/// Listing entries asked for per SSCAN.
const LISTING_BATCH: usize = 1000;

mod broker;
mod keys;
pub mod link;
mod liveness;
mod share;

use broker::*;
use keys::{ChannelKeys, UserKeys};

struct Inner {
    node_id: u32,
    prefix: String,
    /// Every command, publish and subscriber goes through it (standalone, Sentinel or Cluster).
    link: Link,
    engine: OnceLock<Engine>,
    metrics: Arc<Metrics>,
    notes: mpsc::UnboundedSender<(ClusterNote, keys::Mode)>,
    /// This node incarnation's name in the shared state (`<node_id>.<n>`): a new one after
    /// peers reaped the last.
    sid: parking_lot::Mutex<Arc<str>>,
    incarnation: AtomicU32,
    /// Set on reincarnation: the next rewrite of the share is announced.
    reborn: AtomicBool,
    /// Bumped whenever the share is rewritten (Redis lost it, or a new incarnation).
    epoch: AtomicU64,
    /// Dead peers this node is reaping.
    reaping: parking_lot::Mutex<HashSet<String>>,
    /// Asks the heartbeat for a beat now (a write found this incarnation reaped).
    beat_now: tokio::sync::Notify,
    outgoing: mpsc::Sender<Outgoing>,
    interests: parking_lot::Mutex<Interests>,
    interest_changed: tokio::sync::Notify,
    on_outage: OnOutage,
    last_drop_warning: parking_lot::Mutex<Option<tokio::time::Instant>>,
    up: AtomicBool,
    /// The pub/sub connection is subscribed to every held topic: up needs it too, or a node
    /// would call itself connected while missing every other node's messages.
    carried: AtomicBool,
    /// The URL for log lines, password hidden.
    shown_url: String,
    /// Whether Redis was ever reached, and whether a failure to reach it was logged since:
    /// the first failure at startup and a refused login are logged at the default level once
    /// (later outages are the `lost Redis` line).
    ever_up: AtomicBool,
    failure_logged: AtomicBool,
}

/// The Redis cluster adapter. Cheap to clone.
#[derive(Clone)]
pub struct RedisAdapter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAdapter")
            .field("node_id", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}

impl RedisAdapter {
    /// Creates the adapter; nothing connects until [`RedisAdapter::start`].
    pub fn new(
        redis: &crate::config::RedisConfig,
        on_outage: OnOutage,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Receivers), String> {
        let link = Link::from_config(redis)?;
        let prefix = &redis.prefix;
        keys::check_prefix(prefix)?;
        let (notes, notes_rx) = mpsc::unbounded_channel();
        let (outgoing, outgoing_rx) = mpsc::channel(PUBLISH_QUEUE);
        metrics.set_adapter_up(false);
        let node_id = rand::random_range(1..1_000_000_000);
        let inner = Inner {
            node_id,
            prefix: prefix.to_owned(),
            shown_url: link.shown(),
            link,
            engine: OnceLock::new(),
            metrics,
            notes,
            sid: parking_lot::Mutex::new(Arc::from(format!("{node_id}.0"))),
            incarnation: AtomicU32::new(0),
            reborn: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            reaping: parking_lot::Mutex::new(HashSet::new()),
            beat_now: tokio::sync::Notify::new(),
            outgoing,
            interests: parking_lot::Mutex::new(Interests::default()),
            interest_changed: tokio::sync::Notify::new(),
            on_outage,
            last_drop_warning: parking_lot::Mutex::new(None),
            up: AtomicBool::new(false),
            carried: AtomicBool::new(false),
            ever_up: AtomicBool::new(false),
            failure_logged: AtomicBool::new(false),
        };
        Ok((
            Self {
                inner: Arc::new(inner),
            },
            Receivers {
                notes: notes_rx,
                outgoing: outgoing_rx,
            },
        ))
    }

    fn up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool) {
        let up = up && self.inner.carried.load(Ordering::Relaxed);
        if self.inner.up.swap(up, Ordering::Relaxed) != up {
            self.inner.metrics.set_adapter_up(up);
            if up {
                self.inner.ever_up.store(true, Ordering::Relaxed);
                self.inner.failure_logged.store(false, Ordering::Relaxed);
                tracing::info!(node = self.inner.node_id, url = %self.inner.shown_url, "connected to Redis");
            } else {
                let what = match self.inner.on_outage {
                    OnOutage::Reject => "publishes are refused with 503 until it is back",
                    OnOutage::Local => "publishes reach this node's clients only until it is back",
                };
                tracing::warn!(node = self.inner.node_id, "lost Redis: {what}");
            }
        }
    }

    fn engine(&self) -> &Engine {
        self.inner
            .engine
            .get()
            .expect("the engine is attached before the adapter starts")
    }

    /// This node incarnation's name in the shared state.
    fn sid(&self) -> Arc<str> {
        self.inner.sid.lock().clone()
    }

    fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Relaxed)
    }

    /// Attaches the engine and starts the background tasks.
    pub fn start(&self, engine: Engine, rx: Receivers) {
        let _ = self.inner.engine.set(engine);
        tokio::spawn(self.clone().write_notes(rx.notes));
        tokio::spawn(self.clone().publisher(rx.outgoing));
        tokio::spawn(self.clone().subscriber());
        tokio::spawn(self.clone().heartbeat());
    }

    /// Runs a command, pipeline or script on the link's shared connection; a failure to reach
    /// Redis is logged once where an operator must see it.
    async fn query<T: redis::FromRedisValue>(&self, q: Query<'_>) -> redis::RedisResult<T> {
        let r = self.inner.link.query(q).await;
        if let Err(e) = &r {
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || is_auth(e) {
                self.connect_failed(e);
            }
        }
        r
    }

    /// Logs a failure to reach Redis once where an operator must see it: at error when Redis
    /// refuses the login (retrying will not help), at warn when it is not reachable at startup.
    fn connect_failed(&self, e: &redis::RedisError) {
        let auth = is_auth(e);
        if !auth && self.inner.ever_up.load(Ordering::Relaxed) {
            return;
        }
        if self.inner.failure_logged.swap(true, Ordering::Relaxed) {
            return;
        }
        let url = &self.inner.shown_url;
        if auth {
            tracing::error!(%url, error = %e, "Redis refused the login: check the password (and user) in redis.url (HERALD_REDIS_URL); serving local clients only, retrying");
        } else {
            tracing::warn!(%url, error = %e, "cannot reach Redis (redis.url, HERALD_REDIS_URL): serving local clients only until it answers; retrying");
        }
    }

    /// A read (API, console, presence subscribes), pipelined on the link's shared connection
    /// instead of a TCP connection each.
    async fn read<T: redis::FromRedisValue>(&self, q: Query<'_>) -> redis::RedisResult<T> {
        self.query(q).await
    }

    /// Runs single-slot reads all at once on the shared connection (it pipelines them), in
    /// order; one slot per command, so the same code serves Redis Cluster.
    async fn read_each<T: redis::FromRedisValue>(
        &self,
        cmds: Vec<redis::Cmd>,
    ) -> redis::RedisResult<Vec<T>> {
        use futures_util::{StreamExt, TryStreamExt};
        // Owned commands: a stream of borrowed ones trips the compiler's Send check.
        futures_util::stream::iter(cmds)
            .map(|c| async move { self.read(Query::Cmd(&c)).await })
            .buffered(READ_PARALLEL)
            .try_collect()
            .await
    }

    /// The app's occupied channels with their subscribers: the listing, walked in batches,
    /// then each channel's total. Entries whose total is 0 (left over by racing nodes) are
    /// skipped, and removed from the listing in the background.
    async fn channel_counts(&self, app: &str) -> redis::RedisResult<Vec<(String, usize)>> {
        let p = &self.inner.prefix;
        let listing = keys::occupied(p, app);
        let mut names: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .read(Query::Cmd(
                    redis::cmd("SSCAN")
                        .arg(&listing)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(LISTING_BATCH),
                ))
                .await?;
            names.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        // SSCAN may return an entry twice.
        names.sort_unstable();
        names.dedup();
        let cmds: Vec<redis::Cmd> = names
            .iter()
            .map(|n| {
                let mut c = redis::cmd("GET");
                c.arg(ChannelKeys::new(p, app, n).total);
                c
            })
            .collect();
        let totals: Vec<Option<u64>> = self.read_each(cmds).await?;
        let mut out = Vec::with_capacity(names.len());
        let mut stale = Vec::new();
        for (name, n) in names.into_iter().zip(totals) {
            match n.unwrap_or(0) {
                0 => stale.push(name),
                n => out.push((name, usize::try_from(n).unwrap_or(usize::MAX))),
            }
        }
        if !stale.is_empty() {
            let this = self.clone();
            let app = app.to_owned();
            tokio::spawn(async move {
                for ch in stale {
                    if this.sync_listing(&app, &ch).await.is_err() {
                        return;
                    }
                }
            });
        }
        Ok(out)
    }

    async fn channel_count(&self, app: &str, channel: &str) -> redis::RedisResult<(usize, usize)> {
        let k = ChannelKeys::new(&self.inner.prefix, app, channel);
        let (subs, users): (Option<usize>, usize) = self
            .read(Query::Pipe(
                redis::pipe()
                    .cmd("GET")
                    .arg(&k.total)
                    .cmd("HLEN")
                    .arg(&k.member_totals),
            ))
            .await?;
        Ok((subs.unwrap_or(0), users))
    }

    async fn members(&self, app: &str, channel: &str) -> redis::RedisResult<Vec<(String, String)>> {
        let k = ChannelKeys::new(&self.inner.prefix, app, channel);
        let m: HashMap<String, String> = self
            .read(Query::Cmd(redis::cmd("HGETALL").arg(&k.info)))
            .await?;
        let mut v: Vec<(String, String)> = m.into_iter().collect();
        v.sort();
        Ok(v)
    }

    async fn online(&self, app: &str, users: &[String]) -> redis::RedisResult<Vec<String>> {
        let p = &self.inner.prefix;
        let cmds: Vec<redis::Cmd> = users
            .iter()
            .map(|u| {
                let mut c = redis::cmd("GET");
                c.arg(UserKeys::new(p, app, u).total);
                c
            })
            .collect();
        let counts: Vec<Option<i64>> = self.read_each(cmds).await?;
        Ok(users
            .iter()
            .zip(counts)
            .filter(|(_, n)| n.unwrap_or(0) > 0)
            .map(|(u, _)| u.clone())
            .collect())
    }
}

/// A login Redis refused: retrying will not help until the settings change.
fn is_auth(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

/// The adapter's queues, handed to [`RedisAdapter::start`].
#[derive(Debug)]
pub struct Receivers {
    notes: mpsc::UnboundedReceiver<(ClusterNote, keys::Mode)>,
    outgoing: mpsc::Receiver<Outgoing>,
}

impl Broker for RedisAdapter {
    fn node_id(&self) -> u32 {
        self.inner.node_id
    }

    fn clustered(&self) -> bool {
        true
    }

    fn subscribe(&self, topic: Topic) -> Option<Ready> {
        self.hold(topic)
    }

    fn unsubscribe(&self, topic: Topic) {
        self.release(topic);
    }

    fn publish(&self, topic: Topic, envelope: Envelope) -> Result<Sent, PublishError> {
        self.send(topic, envelope)
    }
}

impl Store for RedisAdapter {
    fn note(&self, note: ClusterNote) {
        let _ = self.inner.notes.send((note, keys::Mode::Loud));
    }
    fn ready(&self) -> bool {
        self.up() || self.inner.on_outage == OnOutage::Local
    }

    fn is_up(&self) -> bool {
        self.up()
    }
    fn channel_counts<'a>(&'a self, app: &'a str) -> Reading<'a, Vec<(String, usize)>> {
        Box::pin(async move {
            let mut v = RedisAdapter::channel_counts(self, app)
                .await
                .map_err(|e| e.to_string())?;
            v.sort();
            Ok(v)
        })
    }
    fn channel_count<'a>(&'a self, app: &'a str, channel: &'a str) -> Reading<'a, (usize, usize)> {
        Box::pin(async move {
            RedisAdapter::channel_count(self, app, channel)
                .await
                .map_err(|e| e.to_string())
        })
    }
    fn members<'a>(&'a self, app: &'a str, channel: &'a str) -> Reading<'a, Vec<(String, String)>> {
        Box::pin(async move {
            RedisAdapter::members(self, app, channel)
                .await
                .map_err(|e| e.to_string())
        })
    }
    fn online<'a>(&'a self, app: &'a str, users: &'a [String]) -> Reading<'a, Vec<String>> {
        Box::pin(async move {
            RedisAdapter::online(self, app, users)
                .await
                .map_err(|e| e.to_string())
        })
    }
    fn cached<'a>(&'a self, app: &'a str, channel: &'a str) -> Reading<'a, Option<CachedEvent>> {
        Box::pin(async move {
            let (bytes, ttl_ms): (Option<Vec<u8>>, i64) = self
                .read(Query::Pipe(
                    redis::pipe()
                        .cmd("GET")
                        .arg(self.cache_key(app, channel))
                        .cmd("PTTL")
                        .arg(self.cache_key(app, channel)),
                ))
                .await
                .map_err(|e| e.to_string())?;
            let (Some(bytes), Ok(ms)) = (bytes, u64::try_from(ttl_ms)) else {
                return Ok(None);
            };
            match Envelope::decode(&bytes) {
                Ok(Envelope::Event {
                    frame,
                    cache: Some((data, _)),
                    ..
                }) => Ok(Some(CachedEvent {
                    frame,
                    data,
                    ttl: Duration::from_millis(ms),
                })),
                _ => Ok(None),
            }
        })
    }
}
