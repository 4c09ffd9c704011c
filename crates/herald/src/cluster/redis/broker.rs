//! The broker over Redis pub/sub: one pub/sub channel per topic (a Pusher channel, a user, a
//! user's watchers), subscribed by a node only while it holds an interest in the topic, so a node
//! receives nothing it has no connection for. Every clustered message goes through here, the
//! publishing node's own subscribers included: Redis hands each channel's messages to every
//! subscriber in the one order it accepted them, so all nodes see the same order.
//!
//! Publishes are queued (bounded: a full queue refuses with `Busy`) and sent by one task as
//! pipelines of PUBLISH in queue order; each receipt resolves once Redis acknowledged its
//! message. A message Redis did not take is counted (`herald_cluster_dropped_total`) and logged.

use super::link::Subscriptions;
use super::*;
use herald_core::{Envelope, PublishError, Ready, Sent, Topic};
use tokio::sync::oneshot;

/// Messages waiting for the publisher task; beyond this `publish` answers `Busy`.
pub(super) const PUBLISH_QUEUE: usize = 65_536;
/// Most messages sent in one pipeline.
const PUBLISH_BATCH: usize = 1024;
/// Most topics subscribed or unsubscribed in one command.
const INTEREST_BATCH: usize = 1000;
/// Topics named in the warning about a lost pub/sub connection (the count says how many).
const GAP_NAMED: usize = 5;

/// A topic and its pub/sub channel name.
type Named = (Topic, Vec<u8>);

/// A message for the publisher task.
pub(super) struct Outgoing {
    name: Vec<u8>,
    payload: Vec<u8>,
    /// Kept by cache channels beside the message, for later subscribers on other nodes.
    cache: Option<(Vec<u8>, Duration)>,
    done: Option<oneshot::Sender<Result<(), PublishError>>>,
}

/// The node's interests: holds per topic, and which topics Redis carries to it now.
#[derive(Default)]
pub(super) struct Interests {
    topics: HashMap<Topic, Interest>,
    /// Pub/sub channel name → topic, for the topics subscribed at Redis.
    by_name: HashMap<Vec<u8>, Topic>,
}

#[derive(Default)]
struct Interest {
    holds: usize,
    /// Subscribed at Redis on the current pub/sub connection.
    active: bool,
    waiters: Vec<oneshot::Sender<()>>,
}

impl RedisAdapter {
    /// The pub/sub channel of a topic. The braces are Redis Cluster's hash tag: a channel's
    /// messages and keys share one slot.
    pub(super) fn topic_name(&self, topic: &Topic) -> Vec<u8> {
        let p = &self.inner.prefix;
        match topic {
            Topic::Channel { app, channel } => format!("{p}:c:{{{app}:{channel}}}"),
            Topic::User { app, user } => format!("{p}:u:{{{app}:{user}}}"),
            Topic::Watchers { app, user } => format!("{p}:w:{{{app}:{user}}}"),
        }
        .into_bytes()
    }

    /// The key holding a cache channel's last event.
    pub(super) fn cache_key(&self, app: &str, channel: &str) -> String {
        format!("{}:cache:{{{app}:{channel}}}", self.inner.prefix)
    }

    pub(super) fn hold(&self, topic: Topic) -> Option<Ready> {
        let mut i = self.inner.interests.lock();
        let e = i.topics.entry(topic).or_default();
        e.holds += 1;
        if e.active {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        e.waiters.push(tx);
        if e.holds == 1 {
            self.inner.interest_changed.notify_one();
        }
        Some(rx)
    }

    pub(super) fn release(&self, topic: Topic) {
        let mut i = self.inner.interests.lock();
        if let Some(e) = i.topics.get_mut(&topic) {
            e.holds = e.holds.saturating_sub(1);
            if e.holds == 0 {
                if e.active {
                    self.inner.interest_changed.notify_one();
                } else {
                    // Never carried: nothing to undo at Redis (a subscribe in flight is undone
                    // by `sync_interests` when it finds no hold).
                    i.topics.remove(&topic);
                }
            }
        }
    }

    pub(super) fn send(&self, topic: Topic, envelope: Envelope) -> Result<Sent, PublishError> {
        if !self.up() {
            return match self.inner.on_outage {
                OnOutage::Reject => {
                    // An API publish answers 503; a client event or member event has no one to
                    // answer, so every refusal is counted and logged.
                    self.inner.metrics.cluster_dropped("unreachable", 1);
                    self.warn_dropped(&topic, "the broker is down: refused");
                    Err(PublishError::Down)
                }
                OnOutage::Local => {
                    self.inner.metrics.cluster_dropped("local_only", 1);
                    self.warn_dropped(&topic, "the broker is down: delivered on this node only");
                    Ok(Sent::Local)
                }
            };
        }
        let cache = match (&topic, &envelope) {
            (
                Topic::Channel { app, channel },
                Envelope::Event {
                    cache: Some((_, ttl)),
                    ..
                },
            ) => Some((self.cache_key(app, channel.as_str()).into_bytes(), *ttl)),
            _ => None,
        };
        let (tx, rx) = oneshot::channel();
        let out = Outgoing {
            name: self.topic_name(&topic),
            payload: envelope.encode(),
            cache,
            done: Some(tx),
        };
        match self.inner.outgoing.try_send(out) {
            Ok(()) => Ok(Sent::Queued(rx)),
            Err(_) => {
                self.inner.metrics.cluster_dropped("busy", 1);
                self.warn_dropped(&topic, "the cluster's message queue is full: refused");
                Err(PublishError::Busy)
            }
        }
    }

    /// A warn line per dropped message would flood the log under load: at most one a second.
    pub(super) fn warn_dropped(&self, topic: &Topic, what: &str) {
        let now = tokio::time::Instant::now();
        let mut last = self.inner.last_drop_warning.lock();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        *last = Some(now);
        let name = String::from_utf8_lossy(&self.topic_name(topic)).into_owned();
        tracing::warn!(topic = %name, "cluster message not delivered everywhere: {what}");
    }

    /// Sends queued messages in order, a pipeline at a time.
    pub(super) async fn publisher(self, mut rx: mpsc::Receiver<Outgoing>) {
        let mut batch: Vec<Outgoing> = Vec::with_capacity(PUBLISH_BATCH);
        loop {
            if rx.recv_many(&mut batch, PUBLISH_BATCH).await == 0 {
                return;
            }
            let result = self.send_batch(&batch).await.map_err(|e| {
                tracing::debug!(error = %e, "publishing to other nodes failed");
                PublishError::Down
            });
            if result.is_err() {
                self.inner
                    .metrics
                    .cluster_dropped("unreachable", batch.len() as u64);
                let first = String::from_utf8_lossy(&batch[0].name).into_owned();
                tracing::warn!(
                    messages = batch.len(),
                    first_topic = %first,
                    "Redis did not take messages for other nodes: refused (the API answered 503)"
                );
            }
            for m in batch.drain(..) {
                if let Some(done) = m.done {
                    let _ = done.send(result);
                }
            }
        }
    }

    /// A cache channel's event is stored before it is published, so a subscriber arriving on a
    /// node without interest finds it; then the batch, in order (the link retries once on a new
    /// connection: a message may then arrive twice, never silently not at all).
    async fn send_batch(&self, batch: &[Outgoing]) -> redis::RedisResult<()> {
        let stores: Vec<redis::Cmd> = batch
            .iter()
            .filter_map(|m| {
                let (key, ttl) = m.cache.as_ref()?;
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                let mut c = redis::cmd("SET");
                c.arg(key).arg(&m.payload).arg("PX").arg(ms);
                Some(c)
            })
            .collect();
        futures_util::future::try_join_all(
            stores
                .iter()
                .map(|c| self.query::<()>(super::link::Query::Cmd(c))),
        )
        .await?;
        let messages: Vec<(Vec<u8>, Vec<u8>)> = batch
            .iter()
            .map(|m| (m.name.clone(), m.payload.clone()))
            .collect();
        self.inner.link.publish(&messages).await
    }

    /// Keeps Redis's subscriptions equal to the node's interests, and hands every message to the
    /// engine. After the pub/sub connection is lost, every held topic is subscribed again on the
    /// new one; what was published meanwhile is counted as a gap.
    pub(super) async fn subscriber(self) {
        loop {
            let (mut sink, mut stream) = match self.inner.link.subscriber().await {
                Ok(p) => p,
                Err(e) => {
                    self.set_up(false);
                    self.connect_failed(&e);
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            let (resumed, some) = {
                let mut i = self.inner.interests.lock();
                i.by_name.clear();
                let mut n = 0;
                let mut some = Vec::new();
                for (t, e) in i.topics.iter_mut() {
                    if e.active {
                        n += 1;
                        if some.len() < GAP_NAMED {
                            some.push(String::from_utf8_lossy(&self.topic_name(t)).into_owned());
                        }
                    }
                    e.active = false;
                }
                (n, some)
            };
            if resumed > 0 {
                self.inner.metrics.cluster_dropped("gap", resumed as u64);
                tracing::warn!(
                    topics = resumed,
                    first = %some.join(" "),
                    "the pub/sub connection to Redis was lost: subscribing again (messages published meanwhile were missed on this node)"
                );
            }
            if self.sync_interests(&mut sink).await.is_err() {
                self.set_up(false);
                tokio::time::sleep(RETRY).await;
                continue;
            }
            self.inner.carried.store(true, Ordering::Relaxed);
            self.set_up(true);
            loop {
                tokio::select! {
                    msg = stream.recv() => {
                        let Some((name, payload)) = msg else {
                            tracing::warn!(reason = stream.end_reason().unwrap_or("unknown"), "the pub/sub connection to Redis ended; subscribing again");
                            break;
                        };
                        self.inbound(&name, &payload);
                    }
                    () = self.inner.interest_changed.notified() => {
                        if self.sync_interests(&mut sink).await.is_err() {
                            break;
                        }
                    }
                }
                // A change made before this loop (or while a sync ran) has its permit stored by
                // `notify_one`, so the next `notified` returns at once.
            }
            self.inner.carried.store(false, Ordering::Relaxed);
            self.set_up(false);
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Subscribes what is held and not carried, unsubscribes what is carried and not held.
    async fn sync_interests(&self, sink: &mut Subscriptions) -> redis::RedisResult<()> {
        loop {
            let (add, drop): (Vec<Named>, Vec<Named>) = {
                let i = self.inner.interests.lock();
                let mut add = Vec::new();
                let mut drop = Vec::new();
                for (t, e) in &i.topics {
                    if e.holds > 0 && !e.active && add.len() < INTEREST_BATCH {
                        add.push((t.clone(), self.topic_name(t)));
                    } else if e.holds == 0 && e.active && drop.len() < INTEREST_BATCH {
                        drop.push((t.clone(), self.topic_name(t)));
                    }
                }
                (add, drop)
            };
            if add.is_empty() && drop.is_empty() {
                return Ok(());
            }
            if !add.is_empty() {
                let names: Vec<Vec<u8>> = add.iter().map(|(_, n)| n.clone()).collect();
                sink.subscribe(&names).await?;
                let mut i = self.inner.interests.lock();
                for (t, name) in add {
                    i.by_name.insert(name, t.clone());
                    // Released meanwhile: the entry is back with no hold, dropped next round.
                    let e = i.topics.entry(t).or_default();
                    e.active = true;
                    for w in e.waiters.drain(..) {
                        let _ = w.send(());
                    }
                }
            }
            if !drop.is_empty() {
                let names: Vec<Vec<u8>> = drop.iter().map(|(_, n)| n.clone()).collect();
                sink.unsubscribe(&names).await?;
                let mut i = self.inner.interests.lock();
                for (t, name) in drop {
                    match i.topics.get_mut(&t) {
                        // Held again meanwhile: subscribe again on the next round.
                        Some(e) if e.holds > 0 => e.active = false,
                        _ => {
                            i.topics.remove(&t);
                        }
                    }
                    i.by_name.remove(&name);
                }
            }
        }
    }

    fn inbound(&self, name: &[u8], payload: &[u8]) {
        let Some(topic) = self.inner.interests.lock().by_name.get(name).cloned() else {
            // Unsubscribed meanwhile.
            return;
        };
        match Envelope::decode(payload) {
            Ok(envelope) => self.engine().receive(&topic, envelope),
            Err(e) => {
                self.inner.metrics.cluster_garbage();
                tracing::debug!(channel = %String::from_utf8_lossy(name), error = %e, "ignored a message on a cluster channel");
            }
        }
    }
}
