//! Scale-out through Redis: the `ClusterAdapter` that makes many Herald nodes one server.
//!
//! * Delivery: every publish (HTTP API, client event, server-to-user) is delivered locally first,
//!   then sent on one pub/sub channel; other nodes deliver it to their own subscribers, honouring
//!   the excluded socket id. A node ignores its own messages, so each subscriber gets it once.
//! * Truth: each node writes its own share of every count (subscribers per channel, connections
//!   per presence user, signed-in connections per user) next to a cluster total. One Lua script per
//!   change updates both atomically and returns the total before and after, so exactly one node
//!   sees each transition (occupied/vacated, member added/removed, online/offline) and reports it.
//!   API reads come from those totals: no node waits for another.
//! * Faults: nodes heartbeat into keys that expire; any node that finds a peer's heartbeat gone
//!   removes that peer's share in one script and reports the transitions it causes. After a Redis
//!   outage or restart, a node notices its `alive` marker is gone and rewrites its whole share.
//!   Events published while Redis is unreachable reach local subscribers only (documented).

use super::{ClusterReads, Reading};
use crate::sinks::metrics::Metrics;
use herald_core::{ClusterAdapter, ClusterNote, Engine, Frame, LifecycleEvent};
use herald_protocol::{encode, ChannelName, SocketId};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A node whose heartbeat is this old is dead (reaped within about 8 s).
const HEARTBEAT_TTL_MS: u64 = 6000;
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(500);
/// Outgoing pub/sub messages held while Redis is slow; beyond that they are dropped and counted.
const BUS_QUEUE: usize = 100_000;
/// A message for other nodes older than this is dropped instead of sent: events published while
/// Redis was unreachable reach local subscribers only, never other nodes late.
const BUS_FRESH: Duration = Duration::from_millis(500);

mod bus;
pub mod link;
mod liveness;
mod share;

use bus::*;
use share::*;

struct Inner {
    node_id: u32,
    prefix: String,
    client: redis::Client,
    engine: OnceLock<Engine>,
    metrics: Arc<Metrics>,
    notes: mpsc::UnboundedSender<(ClusterNote, bool)>,
    bus: mpsc::Sender<(String, tokio::time::Instant)>,
    up: AtomicBool,
    /// The URL for log lines, password hidden.
    shown_url: String,
    /// Whether Redis was ever reached, and whether a failure to reach it was logged since:
    /// the first failure at startup and a refused login are logged at the default level once
    /// (later outages are the `lost Redis` line).
    ever_up: AtomicBool,
    failure_logged: AtomicBool,
    /// Subscription counts of big channels: when one was last sent, and the value waiting for the
    /// end of the window (if any).
    counts: parking_lot::Mutex<HashMap<CountKey, (tokio::time::Instant, Option<usize>)>>,
    /// See [`RedisAdapter::read_conn`].
    reads: parking_lot::Mutex<Option<MultiplexedConnection>>,
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

fn config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(REDIS_TIMEOUT)
        .set_response_timeout(REDIS_TIMEOUT)
}

impl RedisAdapter {
    /// Creates the adapter; nothing connects until [`RedisAdapter::start`].
    pub fn new(
        url: &str,
        prefix: &str,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Receivers), String> {
        let client = redis::Client::open(url).map_err(|e| {
            format!(
                "invalid redis.url `{}`: {e}",
                crate::redact::redact_url(url)
            )
        })?;
        let (notes, notes_rx) = mpsc::unbounded_channel();
        let (bus, bus_rx) = mpsc::channel(BUS_QUEUE);
        metrics.set_adapter_up(false);
        let inner = Inner {
            node_id: rand::random_range(1..1_000_000_000),
            prefix: prefix.to_owned(),
            client,
            engine: OnceLock::new(),
            metrics,
            notes,
            bus,
            up: AtomicBool::new(false),
            shown_url: crate::redact::redact_url(url),
            ever_up: AtomicBool::new(false),
            failure_logged: AtomicBool::new(false),
            counts: parking_lot::Mutex::new(HashMap::new()),
            reads: parking_lot::Mutex::new(None),
        };
        Ok((
            Self {
                inner: Arc::new(inner),
            },
            Receivers {
                notes: notes_rx,
                bus: bus_rx,
            },
        ))
    }

    fn up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool) {
        if self.inner.up.swap(up, Ordering::Relaxed) != up {
            self.inner.metrics.set_adapter_up(up);
            if up {
                self.inner.ever_up.store(true, Ordering::Relaxed);
                self.inner.failure_logged.store(false, Ordering::Relaxed);
                tracing::info!(node = self.inner.node_id, url = %self.inner.shown_url, "connected to Redis");
            } else {
                tracing::warn!(
                    node = self.inner.node_id,
                    "lost Redis: serving local clients only until it is back"
                );
            }
        }
    }

    fn engine(&self) -> &Engine {
        self.inner
            .engine
            .get()
            .expect("the engine is attached before the adapter starts")
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.inner.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// Attaches the engine and starts the background tasks.
    pub fn start(&self, engine: Engine, rx: Receivers) {
        let _ = self.inner.engine.set(engine);
        tokio::spawn(self.clone().write_notes(rx.notes));
        tokio::spawn(self.clone().send_bus(rx.bus));
        tokio::spawn(self.clone().receive_bus());
        tokio::spawn(self.clone().heartbeat());
    }

    async fn connect(&self) -> MultiplexedConnection {
        loop {
            match self
                .inner
                .client
                .get_multiplexed_async_connection_with_config(&config())
                .await
            {
                Ok(c) => return c,
                Err(e) => {
                    self.set_up(false);
                    self.connect_failed(&e);
                    tracing::debug!(error = %e, "Redis connection failed; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Logs a failure to reach Redis once where an operator must see it: at error when Redis
    /// refuses the login (retrying will not help), at warn when it is not reachable at startup.
    fn connect_failed(&self, e: &redis::RedisError) {
        let auth = e.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"));
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

    /// The connection every read shares (API, console, presence subscribes): made on first use,
    /// kept while it works; the reads are pipelined on it instead of a TCP connection each.
    async fn read_conn(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = self.inner.reads.lock().clone() {
            return Ok(c);
        }
        let c = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&config())
            .await?;
        // Readers racing on the first use each connect once; the last one is kept.
        *self.inner.reads.lock() = Some(c.clone());
        Ok(c)
    }

    /// Runs a read on the shared connection. A connection that Redis dropped (a restart) fails
    /// once: it is replaced and the read tried again on the new one.
    async fn read<T: redis::FromRedisValue>(&self, q: Query<'_>) -> redis::RedisResult<T> {
        let mut retried = false;
        loop {
            let mut c = self.read_conn().await?;
            let r = match q {
                Query::Cmd(cmd) => cmd.query_async(&mut c).await,
                Query::Pipe(p) => p.query_async(&mut c).await,
            };
            match r {
                Err(e) if !retried && (e.is_io_error() || e.is_connection_dropped()) => {
                    self.inner.reads.lock().take();
                    retried = true;
                }
                Err(e) if e.is_timeout() || e.is_io_error() || e.is_connection_dropped() => {
                    self.inner.reads.lock().take();
                    return Err(e);
                }
                r => return r,
            }
        }
    }

    async fn channel_counts(&self, app: &str) -> redis::RedisResult<HashMap<String, usize>> {
        self.read(Query::Cmd(
            redis::cmd("HGETALL").arg(self.key(&["ch", app])),
        ))
        .await
    }

    async fn channel_count(&self, app: &str, channel: &str) -> redis::RedisResult<(usize, usize)> {
        let (subs, users): (Option<usize>, usize) = self
            .read(Query::Pipe(
                redis::pipe()
                    .cmd("HGET")
                    .arg(self.key(&["ch", app]))
                    .arg(channel)
                    .cmd("HLEN")
                    .arg(self.key(&["pu", app, channel])),
            ))
            .await?;
        Ok((subs.unwrap_or(0), users))
    }

    async fn members(&self, app: &str, channel: &str) -> redis::RedisResult<Vec<(String, String)>> {
        let m: HashMap<String, String> = self
            .read(Query::Cmd(
                redis::cmd("HGETALL").arg(self.key(&["pi", app, channel])),
            ))
            .await?;
        let mut v: Vec<(String, String)> = m.into_iter().collect();
        v.sort();
        Ok(v)
    }

    async fn online(&self, app: &str, users: &[String]) -> redis::RedisResult<Vec<String>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let counts: Vec<Option<i64>> = self
            .read(Query::Cmd(
                redis::cmd("HMGET").arg(self.key(&["us", app])).arg(users),
            ))
            .await?;
        Ok(users
            .iter()
            .zip(counts)
            .filter(|(_, n)| n.unwrap_or(0) > 0)
            .map(|(u, _)| u.clone())
            .collect())
    }
}

/// A read for [`RedisAdapter::read`].
#[derive(Clone, Copy)]
enum Query<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

/// The adapter's queues, handed to [`RedisAdapter::start`].
#[derive(Debug)]
pub struct Receivers {
    notes: mpsc::UnboundedReceiver<(ClusterNote, bool)>,
    bus: mpsc::Receiver<(String, tokio::time::Instant)>,
}

impl ClusterAdapter for RedisAdapter {
    fn node_id(&self) -> u32 {
        self.inner.node_id
    }

    fn clustered(&self) -> bool {
        true
    }

    fn note(&self, note: ClusterNote) {
        let _ = self.inner.notes.send((note, false));
    }

    fn publish_remote(
        &self,
        app_id: &str,
        channel: &str,
        frame: &Frame,
        except: Option<SocketId>,
        cache: Option<(&str, Duration)>,
    ) {
        self.send(Bus::Publish {
            a: app_id.to_owned(),
            c: channel.to_owned(),
            f: String::from_utf8_lossy(frame.json()).into_owned(),
            x: except.map(|s| s.to_string()),
            d: cache.map(|(d, _)| d.to_owned()),
            ttl: cache.map(|(_, t)| t.as_millis() as u64),
        });
    }

    fn terminate_remote(&self, app_id: &str, user_id: &str) {
        self.send(Bus::Terminate {
            a: app_id.to_owned(),
            u: user_id.to_owned(),
        });
    }
}

impl ClusterReads for RedisAdapter {
    fn is_up(&self) -> bool {
        self.up()
    }
    fn channel_counts<'a>(&'a self, app: &'a str) -> Reading<'a, Vec<(String, usize)>> {
        Box::pin(async move {
            let mut v: Vec<(String, usize)> = RedisAdapter::channel_counts(self, app)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .collect();
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
}
