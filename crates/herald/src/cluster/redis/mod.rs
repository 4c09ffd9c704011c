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

/// Updates this node's share of a count and the cluster total; returns {total before, after}.
const SET_COUNT: &str = r"
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local new = tonumber(ARGV[3])
if new == 0 then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], new) end
local before = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local after = before + new - old
if after <= 0 then
  after = 0
  redis.call('HDEL', KEYS[2], ARGV[2])
  if KEYS[3] then redis.call('HDEL', KEYS[3], ARGV[2]) end
else
  redis.call('HSET', KEYS[2], ARGV[2], after)
  if KEYS[3] and new > old then redis.call('HSET', KEYS[3], ARGV[2], ARGV[4]) end
end
return {before, after}
";

/// Removes a dead node's share; returns the transitions as lines `kind\napp\nname[\nuser]`.
const REAP: &str = r"
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return {} end
local p, n, out = ARGV[2], ARGV[1], {}
local function drop(share, total_of, info_of, kind_gone, kind_count)
  local rows = redis.call('HGETALL', share)
  for i = 1, #rows, 2 do
    local app, rest = string.match(rows[i], '^(.-)\n(.*)$')
    local key, field = total_of(app, rest)
    local after = redis.call('HINCRBY', key, field, -tonumber(rows[i + 1]))
    if after <= 0 then
      redis.call('HDEL', key, field)
      if info_of then redis.call('HDEL', info_of(app, rest), field) end
      table.insert(out, kind_gone .. '\n' .. app .. '\n' .. rest)
    elseif kind_count then
      table.insert(out, kind_count .. '\n' .. app .. '\n' .. rest .. '\n' .. after)
    end
  end
  redis.call('DEL', share)
end
drop(p .. ':node:' .. n .. ':ch', function(app, ch) return p .. ':ch:' .. app, ch end, nil, 'v', 'c')
drop(p .. ':node:' .. n .. ':pu', function(app, rest)
  local ch, user = string.match(rest, '^(.-)\n(.*)$')
  return p .. ':pu:' .. app .. ':' .. ch, user
end, function(app, rest)
  local ch = string.match(rest, '^(.-)\n')
  return p .. ':pi:' .. app .. ':' .. ch
end, 'm', nil)
drop(p .. ':node:' .. n .. ':us', function(app, user) return p .. ':us:' .. app, user end, nil, 'o', nil)
redis.call('DEL', p .. ':alive:' .. n)
return out
";

/// A message between nodes on the shared pub/sub channel.
#[derive(Debug, Serialize, Deserialize)]
struct BusMsg {
    /// Sending node.
    n: u32,
    #[serde(flatten)]
    body: Bus,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t")]
enum Bus {
    /// A frame for a channel's subscribers; `d` + `ttl` when a cache channel keeps it.
    #[serde(rename = "p")]
    Publish {
        a: String,
        c: String,
        f: String,
        x: Option<String>,
        d: Option<String>,
        ttl: Option<u64>,
    },
    #[serde(rename = "term")]
    Terminate { a: String, u: String },
    #[serde(rename = "w")]
    Watch { a: String, u: String, on: bool },
}

/// Coalescing key of a pending note: only the latest value per key needs writing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum NoteKey {
    Channel(Arc<str>, Arc<str>),
    Member(Arc<str>, Arc<str>, Arc<str>),
    User(Arc<str>, Arc<str>),
}

struct Inner {
    node_id: u32,
    prefix: String,
    client: redis::Client,
    engine: OnceLock<Engine>,
    metrics: Arc<Metrics>,
    notes: mpsc::UnboundedSender<(ClusterNote, bool)>,
    bus: mpsc::Sender<(String, tokio::time::Instant)>,
    up: AtomicBool,
    /// Subscription counts of big channels: when one was last sent, and the value waiting for the
    /// end of the window (if any).
    counts: parking_lot::Mutex<HashMap<CountKey, (tokio::time::Instant, Option<usize>)>>,
}

/// (app id, channel name).
type CountKey = (Arc<str>, Arc<str>);

/// Channels above this many subscribers get at most one subscription count per window.
const COUNT_THROTTLE_ABOVE: usize = 100;
const COUNT_THROTTLE_WINDOW: Duration = Duration::from_secs(5);

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
        let client =
            redis::Client::open(url).map_err(|e| format!("invalid redis.url `{url}`: {e}"))?;
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
            counts: parking_lot::Mutex::new(HashMap::new()),
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
                tracing::info!(node = self.inner.node_id, "connected to Redis");
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
                    tracing::debug!(error = %e, "Redis connection failed; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    fn bus_channel(&self) -> String {
        self.key(&["bus"])
    }

    fn send(&self, body: Bus) {
        if !self.up() {
            // Redis is known to be away: this event stays with the local subscribers (documented).
            return;
        }
        let msg = BusMsg {
            n: self.inner.node_id,
            body,
        };
        let Ok(text) = serde_json::to_string(&msg) else {
            return;
        };
        if self
            .inner
            .bus
            .try_send((text, tokio::time::Instant::now()))
            .is_err()
        {
            tracing::warn!("cluster message queue full: a message for other nodes was dropped");
        }
    }

    async fn send_bus(self, mut rx: mpsc::Receiver<(String, tokio::time::Instant)>) {
        let mut conn = self.connect().await;
        let channel = self.bus_channel();
        while let Some((msg, at)) = rx.recv().await {
            // One retry on a fresh connection: after a Redis restart the old one fails once.
            for attempt in 0..2 {
                if at.elapsed() > BUS_FRESH {
                    tracing::debug!(
                        "dropping a message for other nodes published while Redis was unreachable"
                    );
                    break;
                }
                let sent: redis::RedisResult<()> = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&msg)
                    .query_async(&mut conn)
                    .await;
                match sent {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, attempt, "publishing to other nodes failed");
                        conn = self.connect().await;
                    }
                }
            }
        }
    }

    async fn receive_bus(self) {
        use futures_util::StreamExt;
        let channel = self.bus_channel();
        loop {
            let mut pubsub = match self.inner.client.get_async_pubsub().await {
                Ok(p) => p,
                Err(_) => {
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            if pubsub.subscribe(&channel).await.is_err() {
                tokio::time::sleep(RETRY).await;
                continue;
            }
            let mut stream = pubsub.on_message();
            while let Some(msg) = stream.next().await {
                let Ok(text) = msg.get_payload::<String>() else {
                    continue;
                };
                match serde_json::from_str::<BusMsg>(&text) {
                    Ok(m) if m.n != self.inner.node_id => self.inbound(m.body),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "unreadable cluster message"),
                }
            }
            self.set_up(false);
            tokio::time::sleep(RETRY).await;
        }
    }

    fn inbound(&self, body: Bus) {
        let engine = self.engine();
        match body {
            Bus::Publish { a, c, f, x, d, ttl } => {
                let Ok(ch) = ChannelName::parse(&c, usize::MAX) else {
                    return;
                };
                let except = x.as_deref().and_then(SocketId::parse);
                let cache = d.as_deref().zip(ttl.map(Duration::from_millis));
                engine.deliver_local(&a, &ch, &Frame::from(f), except, cache);
            }
            Bus::Terminate { a, u } => {
                engine.terminate_user_local(&a, &u);
            }
            Bus::Watch { a, u, on } => engine.notify_watchers_local(&a, &u, on),
        }
    }

    /// Sends a frame to every subscriber of `channel` on every node (but `except`).
    fn broadcast(&self, app: &str, channel: &ChannelName, frame: String, except: Option<SocketId>) {
        self.engine()
            .deliver_local(app, channel, &Frame::from(frame.clone()), except, None);
        self.send(Bus::Publish {
            a: app.to_owned(),
            c: channel.to_string(),
            f: frame,
            x: except.map(|s| s.to_string()),
            d: None,
            ttl: None,
        });
    }

    /// Writes notes to Redis, latest value per key, and reports the transitions they cause.
    async fn write_notes(self, mut rx: mpsc::UnboundedReceiver<(ClusterNote, bool)>) {
        let script = Script::new(SET_COUNT);
        let mut pending: HashMap<NoteKey, (ClusterNote, bool)> = HashMap::new();
        let mut order: Vec<NoteKey> = Vec::new();
        let mut conn: Option<MultiplexedConnection> = None;
        let mut retried_now = false;
        loop {
            if pending.is_empty() {
                match rx.recv().await {
                    Some(n) => push_note(&mut pending, &mut order, n),
                    None => return,
                }
            }
            while let Ok(n) = rx.try_recv() {
                push_note(&mut pending, &mut order, n);
            }
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(self.connect().await),
            };
            let mut failed = false;
            let keys: Vec<NoteKey> = std::mem::take(&mut order);
            for (i, k) in keys.iter().enumerate() {
                let Some((note, quiet)) = pending.get(k).cloned() else {
                    continue;
                };
                match self.apply(&script, c, &note).await {
                    Ok(t) => {
                        pending.remove(k);
                        if !quiet {
                            self.report(&note, t);
                        }
                    }
                    Err(e) => {
                        // Readiness is the heartbeat's call; this only reconnects and retries.
                        tracing::debug!(error = %e, "writing cluster state failed; will retry");
                        order = keys[i..].to_vec();
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                conn = None;
                // The first failure after a Redis restart is the stale connection: retry at once.
                if retried_now {
                    tokio::time::sleep(RETRY).await;
                }
                retried_now = !retried_now;
            } else {
                retried_now = false;
            }
        }
    }

    async fn apply(
        &self,
        script: &Script,
        c: &mut MultiplexedConnection,
        note: &ClusterNote,
    ) -> redis::RedisResult<(i64, i64)> {
        let node = self.inner.node_id.to_string();
        let mut inv = script.prepare_invoke();
        match note {
            ClusterNote::ChannelCount {
                app,
                channel,
                count,
            } => {
                inv.key(self.key(&["node", &node, "ch"]))
                    .key(self.key(&["ch", app]))
                    .arg(format!("{app}\n{channel}"))
                    .arg(channel.as_str())
                    .arg(*count);
            }
            ClusterNote::MemberCount {
                app,
                channel,
                user_id,
                count,
                info,
                ..
            } => {
                inv.key(self.key(&["node", &node, "pu"]))
                    .key(self.key(&["pu", app, channel.as_str()]))
                    .key(self.key(&["pi", app, channel.as_str()]))
                    .arg(format!("{app}\n{channel}\n{user_id}"))
                    .arg(&**user_id)
                    .arg(*count)
                    .arg(&**info);
            }
            ClusterNote::UserCount {
                app,
                user_id,
                count,
            } => {
                inv.key(self.key(&["node", &node, "us"]))
                    .key(self.key(&["us", app]))
                    .arg(format!("{app}\n{user_id}"))
                    .arg(&**user_id)
                    .arg(*count);
            }
        }
        let (before, after): (i64, i64) = inv.invoke_async(c).await?;
        self.set_up(true);
        Ok((before, after))
    }

    /// Reports what a note's (before, after) totals mean for the cluster.
    fn report(&self, note: &ClusterNote, (before, after): (i64, i64)) {
        let engine = self.engine();
        match note {
            ClusterNote::ChannelCount { app, channel, .. } => {
                if before == 0 && after > 0 {
                    engine.emit_event(LifecycleEvent::ChannelOccupied {
                        app: app.clone(),
                        channel: channel.arc().clone(),
                    });
                } else if before > 0 && after == 0 {
                    engine.emit_event(LifecycleEvent::ChannelVacated {
                        app: app.clone(),
                        channel: channel.arc().clone(),
                    });
                }
                if before != after && after > 0 {
                    self.subscription_count(app, channel, after as usize);
                }
            }
            ClusterNote::MemberCount {
                app,
                channel,
                user_id,
                info,
                socket_id,
                ..
            } => {
                if before == 0 && after > 0 {
                    let frame = encode::member_added(
                        channel.as_str(),
                        user_id,
                        &serde_json::value::RawValue::from_string(info.to_string()).unwrap_or_else(
                            |_| {
                                serde_json::value::RawValue::from_string("null".into())
                                    .expect("null is JSON")
                            },
                        ),
                    );
                    self.broadcast(app, channel, frame, Some(*socket_id));
                    engine.emit_event(LifecycleEvent::MemberAdded {
                        app: app.clone(),
                        channel: channel.arc().clone(),
                        user_id: user_id.clone(),
                    });
                } else if before > 0 && after == 0 {
                    self.member_gone(app, channel, user_id);
                }
            }
            ClusterNote::UserCount { app, user_id, .. } => {
                if (before == 0) != (after == 0) {
                    self.online_changed(app, user_id, after > 0);
                }
            }
        }
    }

    fn member_gone(&self, app: &Arc<str>, channel: &ChannelName, user_id: &Arc<str>) {
        self.broadcast(
            app,
            channel,
            encode::member_removed(channel.as_str(), user_id),
            None,
        );
        self.engine().emit_event(LifecycleEvent::MemberRemoved {
            app: app.clone(),
            channel: channel.arc().clone(),
            user_id: user_id.clone(),
        });
    }

    fn online_changed(&self, app: &Arc<str>, user_id: &Arc<str>, online: bool) {
        self.engine().notify_watchers_local(app, user_id, online);
        self.send(Bus::Watch {
            a: app.to_string(),
            u: user_id.to_string(),
            on: online,
        });
    }

    fn subscription_count(&self, app: &Arc<str>, channel: &ChannelName, count: usize) {
        if channel.is_presence() {
            return;
        }
        let Some(a) = self.engine().apps().by_id(app) else {
            return;
        };
        if !a.enable_subscription_count {
            return;
        }
        let key = (app.clone(), channel.arc().clone());
        let now = tokio::time::Instant::now();
        {
            let mut counts = self.inner.counts.lock();
            if count <= COUNT_THROTTLE_ABOVE {
                counts.remove(&key);
            } else {
                match counts.get_mut(&key) {
                    Some((last, pending)) if now.duration_since(*last) < COUNT_THROTTLE_WINDOW => {
                        // Inside the window: keep the latest value; one send at the window's end.
                        let schedule = pending.is_none();
                        *pending = Some(count);
                        if schedule {
                            let due = *last + COUNT_THROTTLE_WINDOW;
                            let this = self.clone();
                            let channel = channel.clone();
                            let app = app.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep_until(due).await;
                                let latest = {
                                    let mut counts = this.inner.counts.lock();
                                    counts
                                        .get_mut(&(app.clone(), channel.arc().clone()))
                                        .and_then(|(last, p)| {
                                            *last = tokio::time::Instant::now();
                                            p.take()
                                        })
                                };
                                if let Some(n) = latest {
                                    this.send_count(&app, &channel, n);
                                }
                            });
                        }
                        return;
                    }
                    _ => {
                        counts.insert(key, (now, None));
                    }
                }
            }
        }
        self.send_count(app, channel, count);
    }

    fn send_count(&self, app: &Arc<str>, channel: &ChannelName, count: usize) {
        self.broadcast(
            app,
            channel,
            encode::subscription_count(channel.as_str(), count),
            None,
        );
        self.engine().emit_event(LifecycleEvent::SubscriptionCount {
            app: app.clone(),
            channel: channel.arc().clone(),
            count,
        });
    }

    /// Heartbeats, resynchronises after an outage, and reaps dead peers.
    async fn heartbeat(self) {
        let reap = Script::new(REAP);
        let node = self.inner.node_id.to_string();
        let mut conn: Option<MultiplexedConnection> = None;
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        loop {
            tick.tick().await;
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(self.connect().await),
            };
            if let Err(e) = self.beat(c, &node, &reap).await {
                tracing::debug!(error = %e, "heartbeat failed; reconnecting");
                // A stale connection after a Redis restart fails once: retry on a new one.
                let fresh = match self
                    .inner
                    .client
                    .get_multiplexed_async_connection_with_config(&config())
                    .await
                {
                    Ok(mut c) => self.beat(&mut c, &node, &reap).await.map(|()| c),
                    Err(e) => Err(e),
                };
                match fresh {
                    Ok(c) => conn = Some(c),
                    Err(_) => {
                        self.set_up(false);
                        conn = None;
                    }
                }
            }
        }
    }

    async fn beat(
        &self,
        c: &mut MultiplexedConnection,
        node: &str,
        reap: &Script,
    ) -> redis::RedisResult<()> {
        let nodes = self.key(&["nodes"]);
        let _: () = redis::pipe()
            .cmd("SET")
            .arg(self.key(&["hb", node]))
            .arg(1)
            .arg("PX")
            .arg(HEARTBEAT_TTL_MS)
            .ignore()
            .cmd("SADD")
            .arg(&nodes)
            .arg(node)
            .ignore()
            .query_async(c)
            .await?;
        // A missing marker means Redis lost our share (restart) or a peer reaped us (outage).
        let fresh: bool = redis::cmd("SET")
            .arg(self.key(&["alive", node]))
            .arg(1)
            .arg("NX")
            .query_async(c)
            .await?;
        self.set_up(true);
        if fresh {
            let notes = self.engine().local_notes();
            tracing::info!(
                node,
                entries = notes.len(),
                "writing this node's share of the cluster state"
            );
            for n in notes {
                let _ = self.inner.notes.send((n, true));
            }
        }
        let members: Vec<String> = redis::cmd("SMEMBERS").arg(&nodes).query_async(c).await?;
        for peer in members.iter().filter(|m| m.as_str() != node) {
            let alive: bool = redis::cmd("EXISTS")
                .arg(self.key(&["hb", peer]))
                .query_async(c)
                .await?;
            if alive {
                continue;
            }
            let lines: Vec<String> = reap
                .key(&nodes)
                .arg(peer)
                .arg(&self.inner.prefix)
                .invoke_async(c)
                .await?;
            tracing::warn!(node = %peer, transitions = lines.len(), "removed a dead node's connections from the cluster");
            for line in lines {
                self.reaped(&line);
            }
        }
        Ok(())
    }

    fn reaped(&self, line: &str) {
        let parts: Vec<&str> = line.split('\n').collect();
        let app: Arc<str> = Arc::from(*parts.get(1).unwrap_or(&""));
        let channel = parts
            .get(2)
            .and_then(|c| ChannelName::parse(c, usize::MAX).ok());
        match (parts.first().copied(), channel) {
            (Some("v"), Some(ch)) => self.engine().emit_event(LifecycleEvent::ChannelVacated {
                app,
                channel: ch.arc().clone(),
            }),
            (Some("c"), Some(ch)) => {
                if let Some(n) = parts.get(3).and_then(|n| n.parse().ok()) {
                    self.subscription_count(&app, &ch, n);
                }
            }
            (Some("m"), Some(ch)) => {
                if let Some(user) = parts.get(3) {
                    self.member_gone(&app, &ch, &Arc::from(*user));
                }
            }
            (Some("o"), _) => {
                if let Some(user) = parts.get(2) {
                    self.online_changed(&app, &Arc::from(*user), false);
                }
            }
            _ => {}
        }
    }

    async fn read_conn(&self) -> redis::RedisResult<MultiplexedConnection> {
        self.inner
            .client
            .get_multiplexed_async_connection_with_config(&config())
            .await
    }

    async fn channel_counts(&self, app: &str) -> redis::RedisResult<HashMap<String, usize>> {
        let mut c = self.read_conn().await?;
        redis::cmd("HGETALL")
            .arg(self.key(&["ch", app]))
            .query_async(&mut c)
            .await
    }

    async fn channel_count(&self, app: &str, channel: &str) -> redis::RedisResult<(usize, usize)> {
        let mut c = self.read_conn().await?;
        let (subs, users): (Option<usize>, usize) = redis::pipe()
            .cmd("HGET")
            .arg(self.key(&["ch", app]))
            .arg(channel)
            .cmd("HLEN")
            .arg(self.key(&["pu", app, channel]))
            .query_async(&mut c)
            .await?;
        Ok((subs.unwrap_or(0), users))
    }

    async fn members(&self, app: &str, channel: &str) -> redis::RedisResult<Vec<(String, String)>> {
        let mut c = self.read_conn().await?;
        let m: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key(&["pi", app, channel]))
            .query_async(&mut c)
            .await?;
        let mut v: Vec<(String, String)> = m.into_iter().collect();
        v.sort();
        Ok(v)
    }

    async fn online(&self, app: &str, users: &[String]) -> redis::RedisResult<Vec<String>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.read_conn().await?;
        let counts: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(self.key(&["us", app]))
            .arg(users)
            .query_async(&mut c)
            .await?;
        Ok(users
            .iter()
            .zip(counts)
            .filter(|(_, n)| n.unwrap_or(0) > 0)
            .map(|(u, _)| u.clone())
            .collect())
    }
}

fn note_key(n: &ClusterNote) -> NoteKey {
    match n {
        ClusterNote::ChannelCount { app, channel, .. } => {
            NoteKey::Channel(app.clone(), channel.arc().clone())
        }
        ClusterNote::MemberCount {
            app,
            channel,
            user_id,
            ..
        } => NoteKey::Member(app.clone(), channel.arc().clone(), user_id.clone()),
        ClusterNote::UserCount { app, user_id, .. } => NoteKey::User(app.clone(), user_id.clone()),
    }
}

fn push_note(
    pending: &mut HashMap<NoteKey, (ClusterNote, bool)>,
    order: &mut Vec<NoteKey>,
    (n, quiet): (ClusterNote, bool),
) {
    let k = note_key(&n);
    match pending.get_mut(&k) {
        // A loud note stays loud when a quiet resync value replaces it.
        Some(slot) => *slot = (n, slot.1 && quiet),
        None => {
            pending.insert(k.clone(), (n, quiet));
            order.push(k);
        }
    }
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
