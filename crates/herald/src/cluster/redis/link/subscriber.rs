//! Subscribers: their own RESP3 connections, batched (un)subscribes, and a stream of messages
//! that ends whenever something could have been missed.

use super::*;
use redis::aio::{AsyncPushSender, SendError};
use redis::{PushInfo, PushKind};
use std::sync::atomic::{AtomicI64, AtomicUsize};
use std::task::{Context, Poll};

/// Channels per SUBSCRIBE command; a bigger batch goes as several commands in one pipeline.
const SUBSCRIBE_CHUNK: usize = 1000;
/// Messages a subscriber may hold unread: a caller this far behind gets the end of the stream
/// (and makes a new subscriber) rather than a process that grows without bound.
pub const MAX_BACKLOG: usize = 1_000_000;

impl Link {
    /// A new subscriber (see the module notes): its own connections, none shared.
    pub async fn subscriber(&self) -> RedisResult<(Subscriptions, Messages)> {
        let mut switched: Option<Switched> = None;
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(SubState::default());
        let pushes = Pushes {
            tx,
            state: state.clone(),
        };
        let kind = match &self.inner.target {
            Target::Cluster { template, .. } => SubKind::Cluster(Box::new(ClusterSub {
                slots: self.slot_map(template).await?,
                template: template.clone(),
                nodes: HashMap::new(),
            })),
            Target::Single(client) => SubKind::One(
                pubsub_connection(client.get_connection_info().clone(), &pushes).await?,
            ),
            Target::Sentinel { .. } => {
                // Watched from before the primary is asked for: a switch announced after that
                // ends this subscriber.
                self.watch_sentinels();
                let mut rx = self.inner.switches.subscribe();
                switched = Some(Box::pin(async move { rx.changed().await.is_ok() }));
                let limit = TIMEOUT * 2;
                let client = tokio::time::timeout(limit, self.primary())
                    .await
                    .unwrap_or_else(|_| Err(timed_out("asking the Sentinels", limit)))?;
                SubKind::One(
                    pubsub_connection(client.get_connection_info().clone(), &pushes).await?,
                )
            }
        };
        Ok((
            Subscriptions {
                kind,
                pushes,
                state: state.clone(),
            },
            Messages {
                rx,
                state,
                ended: None,
                switched,
            },
        ))
    }

    /// Which primary serves each slot, from CLUSTER SLOTS.
    async fn slot_map(&self, template: &ConnectionInfo) -> RedisResult<SlotMap> {
        let rows: Vec<Value> = self
            .query(Query::Cmd(redis::cmd("CLUSTER").arg("SLOTS")))
            .await?;
        let fallback_host = match &template.addr {
            ConnectionAddr::Tcp(h, _) | ConnectionAddr::TcpTls { host: h, .. } => h.clone(),
            _ => "127.0.0.1".into(),
        };
        SlotMap::parse(rows, &fallback_host)
    }
}

/// A RESP3 connection whose messages (and subscribe replies) go to `pushes`.
async fn pubsub_connection(
    mut info: ConnectionInfo,
    pushes: &Pushes,
) -> RedisResult<MultiplexedConnection> {
    info.redis.protocol = ProtocolVersion::RESP3;
    let config = connection_config().set_push_sender(pushes.clone());
    Client::open(info)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// The primaries of a Redis Cluster by slot.
struct SlotMap {
    /// Host and port of each primary.
    nodes: Vec<(String, u16)>,
    /// Index into `nodes` for each slot; `None` for a slot no primary serves.
    owner: Vec<Option<usize>>,
}

impl SlotMap {
    fn parse(rows: Vec<Value>, fallback_host: &str) -> RedisResult<SlotMap> {
        let bad = |what: &str| {
            RedisError::from((
                ErrorKind::ParseError,
                "unexpected CLUSTER SLOTS reply",
                what.to_owned(),
            ))
        };
        let mut map = SlotMap {
            nodes: Vec::new(),
            owner: vec![None; SLOTS],
        };
        for row in rows {
            let Value::Array(row) = row else {
                return Err(bad("a row is not an array"));
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
                (row.first(), row.get(1), row.get(2))
            else {
                return Err(bad("a row is not [start, end, [host, port, ...], ...]"));
            };
            // An empty or unknown host means the node that answered; the seed stands in.
            let host = match primary.first() {
                Some(Value::BulkString(h)) if !h.is_empty() && h != b"?" => {
                    String::from_utf8_lossy(h).into_owned()
                }
                _ => fallback_host.to_owned(),
            };
            let Some(Value::Int(port)) = primary.get(1) else {
                return Err(bad("a primary has no port"));
            };
            let (Ok(port), Ok(start), Ok(end)) = (
                u16::try_from(*port),
                usize::try_from(*start),
                usize::try_from(*end),
            ) else {
                return Err(bad("a port or slot out of range"));
            };
            let node = (host, port);
            let i = match map.nodes.iter().position(|n| *n == node) {
                Some(i) => i,
                None => {
                    map.nodes.push(node);
                    map.nodes.len() - 1
                }
            };
            for slot in start..=end.min(SLOTS - 1) {
                map.owner[slot] = Some(i);
            }
        }
        Ok(map)
    }
}

/// What a subscriber's connections share with its stream.
#[derive(Default)]
struct SubState {
    /// Unsubscribe replies still expected; one more is Redis ending a subscription itself.
    unsubscribes: AtomicI64,
    /// Messages queued and not yet read.
    backlog: AtomicUsize,
    /// Set once the stream has been told to end.
    ended: AtomicBool,
}

enum Event {
    Message(Vec<u8>, Vec<u8>),
    End(&'static str),
}

/// Takes the pushes of a subscriber's connections: messages go to the stream; the rest
/// decides whether the stream must end.
#[derive(Clone)]
struct Pushes {
    tx: mpsc::UnboundedSender<Event>,
    state: Arc<SubState>,
}

impl Pushes {
    fn end(&self, why: &'static str) {
        if !self.state.ended.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Event::End(why));
        }
    }
}

fn into_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

impl AsyncPushSender for Pushes {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = info.data.into_iter();
                let (Some(channel), Some(payload)) = (
                    data.next().and_then(into_bytes),
                    data.next().and_then(into_bytes),
                ) else {
                    return Ok(());
                };
                if self.state.ended.load(Ordering::Acquire) {
                    return Ok(());
                }
                if self.state.backlog.fetch_add(1, Ordering::AcqRel) >= MAX_BACKLOG {
                    self.end("more messages unread than MAX_BACKLOG");
                    return Ok(());
                }
                let _ = self.tx.send(Event::Message(channel, payload));
            }
            PushKind::Disconnection => self.end("connection to Redis lost"),
            PushKind::Unsubscribe | PushKind::SUnsubscribe
                if self.state.unsubscribes.fetch_sub(1, Ordering::AcqRel) <= 0 =>
            {
                self.end("Redis ended a subscription (a failover or a slot that moved)");
            }
            _ => {}
        }
        Ok(())
    }
}

enum SubKind {
    One(MultiplexedConnection),
    Cluster(Box<ClusterSub>),
}

struct ClusterSub {
    slots: SlotMap,
    template: ConnectionInfo,
    /// Connections to the primaries (by index in `slots.nodes`), made when a channel of
    /// theirs is first subscribed.
    nodes: HashMap<usize, MultiplexedConnection>,
}

/// Adds and removes a subscriber's channels. An error leaves it unusable: its stream ends,
/// and the caller makes a new subscriber.
pub struct Subscriptions {
    kind: SubKind,
    pushes: Pushes,
    state: Arc<SubState>,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions")
            .field("ended", &self.state.ended.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Subscriptions {
    /// Subscribes to `channels` (SUBSCRIBE, or SSUBSCRIBE per slot in Cluster mode); Ok once
    /// Redis confirmed every one, so a message published after that reaches this subscriber.
    pub async fn subscribe(&mut self, channels: &[Vec<u8>]) -> RedisResult<()> {
        self.change(channels, true).await
    }

    /// Unsubscribes from `channels`; Ok once Redis confirmed every one.
    pub async fn unsubscribe(&mut self, channels: &[Vec<u8>]) -> RedisResult<()> {
        self.change(channels, false).await
    }

    async fn change(&mut self, channels: &[Vec<u8>], on: bool) -> RedisResult<()> {
        if self.state.ended.load(Ordering::Acquire) {
            return Err(RedisError::from((
                ErrorKind::IoError,
                "this Redis subscriber has ended; make a new one",
            )));
        }
        if channels.is_empty() {
            return Ok(());
        }
        if !on {
            self.state
                .unsubscribes
                .fetch_add(channels.len() as i64, Ordering::AcqRel);
        }
        let r = match &mut self.kind {
            SubKind::One(conn) => {
                let name = if on { "SUBSCRIBE" } else { "UNSUBSCRIBE" };
                let groups: Vec<&[Vec<u8>]> = channels.chunks(SUBSCRIBE_CHUNK).collect();
                send_groups(conn, name, &groups).await
            }
            SubKind::Cluster(c) => c.change(channels, on, &self.pushes).await,
        };
        if let Err(e) = &r {
            // Replies still due on these connections would be taken for those of later
            // commands: the subscriber is done.
            tracing::debug!(error = %e, "a Redis (un)subscribe failed; the subscriber ends");
            self.pushes.end("a subscribe or unsubscribe failed");
        }
        r
    }
}

impl ClusterSub {
    /// Redis takes the channels of one S(UN)SUBSCRIBE from one slot: one command per slot, and
    /// a node's commands in one pipeline, the nodes at once.
    async fn change(&mut self, channels: &[Vec<u8>], on: bool, pushes: &Pushes) -> RedisResult<()> {
        let name = if on { "SSUBSCRIBE" } else { "SUNSUBSCRIBE" };
        let mut by_slot: HashMap<u16, Vec<Vec<u8>>> = HashMap::new();
        for c in channels {
            by_slot.entry(key_slot(c)).or_default().push(c.clone());
        }
        let mut by_node: HashMap<usize, Vec<Vec<Vec<u8>>>> = HashMap::new();
        for (slot, chans) in by_slot {
            let Some(node) = self.slots.owner[usize::from(slot)] else {
                return Err(RedisError::from((
                    ErrorKind::ClusterDown,
                    "no Redis Cluster primary serves a slot",
                    format!("slot {slot}"),
                )));
            };
            for chunk in chans.chunks(SUBSCRIBE_CHUNK) {
                by_node.entry(node).or_default().push(chunk.to_vec());
            }
        }
        let mut work = Vec::new();
        for (node, groups) in by_node {
            work.push((self.node(node, pushes).await?, groups));
        }
        try_join_all(work.into_iter().map(|(mut conn, groups)| async move {
            let groups: Vec<&[Vec<u8>]> = groups.iter().map(Vec::as_slice).collect();
            send_groups(&mut conn, name, &groups).await
        }))
        .await?;
        Ok(())
    }

    /// The connection to the primary at `node`, made on first use.
    async fn node(&mut self, node: usize, pushes: &Pushes) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.nodes.get(&node) {
            return Ok(c.clone());
        }
        let (host, port) = self.slots.nodes[node].clone();
        let mut info = self.template.clone();
        info.addr = match info.addr {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                tls_params,
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        let c = pubsub_connection(info, pushes).await?;
        self.nodes.insert(node, c.clone());
        Ok(c)
    }
}

/// Sends one `name` command per group in one pipeline and waits for Redis to confirm every
/// channel. Redis answers such a command once per channel, so the pipeline is told to expect
/// one reply per channel, not one per command (the crate's own `subscribe` expects one).
async fn send_groups(
    conn: &mut MultiplexedConnection,
    name: &str,
    groups: &[&[Vec<u8>]],
) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    let mut replies = 0;
    for g in groups {
        pipe.cmd(name).arg(*g);
        replies += g.len();
    }
    for v in conn.req_packed_commands(&pipe, 0, replies).await? {
        v.extract_error()?;
    }
    Ok(())
}

/// Sentinel mode: ready when the Sentinels announce a new primary (true), or when the link is
/// gone (false).
type Switched = Pin<Box<dyn Future<Output = bool> + Send>>;

/// A subscriber's messages: (channel, payload), in the order each connection received them.
/// Ends when a connection is lost, when Redis ends a subscription itself, when the Sentinels
/// switch primaries, when a subscribe failed, when more than [`MAX_BACKLOG`] wait unread, or
/// when [`Subscriptions`] is dropped; [`Messages::end_reason`] says which.
pub struct Messages {
    rx: mpsc::UnboundedReceiver<Event>,
    state: Arc<SubState>,
    ended: Option<&'static str>,
    switched: Option<Switched>,
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messages")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Messages {
    /// The next message, or None once the stream has ended.
    pub async fn recv(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        std::future::poll_fn(|cx| self.poll(cx)).await
    }

    /// Why the stream ended, once it has.
    pub fn end_reason(&self) -> Option<&'static str> {
        self.ended
    }

    /// Messages received and not yet read.
    pub fn backlog(&self) -> usize {
        self.state.backlog.load(Ordering::Relaxed)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<(Vec<u8>, Vec<u8>)>> {
        if self.ended.is_some() {
            return Poll::Ready(None);
        }
        if let Some(Poll::Ready(switched)) = self.switched.as_mut().map(|f| f.as_mut().poll(cx)) {
            self.switched = None;
            if switched {
                self.state.ended.store(true, Ordering::Release);
                self.ended = Some("the Sentinels switched to a new primary");
                return Poll::Ready(None);
            }
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Event::Message(c, p))) => {
                self.state.backlog.fetch_sub(1, Ordering::AcqRel);
                Poll::Ready(Some((c, p)))
            }
            Poll::Ready(Some(Event::End(why))) => {
                self.ended = Some(why);
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.ended = Some("the subscriber was dropped");
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures_util::Stream for Messages {
    type Item = (Vec<u8>, Vec<u8>);
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_slots_replies_are_read_into_owners() {
        let row = |s: i64, e: i64, host: &str, port: i64| {
            Value::Array(vec![
                Value::Int(s),
                Value::Int(e),
                Value::Array(vec![
                    Value::BulkString(host.as_bytes().to_vec()),
                    Value::Int(port),
                    Value::BulkString(b"id".to_vec()),
                ]),
            ])
        };
        let m = SlotMap::parse(
            vec![
                row(0, 5460, "10.0.0.1", 7000),
                row(5461, 10922, "", 7001),
                row(10923, 16383, "10.0.0.1", 7000),
            ],
            "seed",
        )
        .unwrap();
        assert_eq!(
            m.nodes,
            vec![("10.0.0.1".into(), 7000), ("seed".into(), 7001)]
        );
        assert_eq!(m.owner[0], Some(0));
        assert_eq!(m.owner[5461], Some(1));
        assert_eq!(m.owner[16383], Some(0));
        assert!(SlotMap::parse(vec![Value::Int(1)], "x").is_err());
    }

    #[test]
    fn messages_count_their_backlog_and_say_why_they_end() {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(SubState::default());
        let pushes = Pushes {
            tx,
            state: state.clone(),
        };
        let mut msgs = Messages {
            rx,
            state,
            ended: None,
            switched: None,
        };
        let push = |kind, data: Vec<&str>| PushInfo {
            kind,
            data: data
                .into_iter()
                .map(|s| Value::BulkString(s.as_bytes().to_vec()))
                .collect(),
        };
        pushes.send(push(PushKind::Subscribe, vec!["c", "1"])).ok();
        pushes.send(push(PushKind::Message, vec!["c", "p1"])).ok();
        pushes.send(push(PushKind::SMessage, vec!["d", "p2"])).ok();
        assert_eq!(msgs.backlog(), 2);
        // Our own unsubscribe is expected; one more comes from Redis itself.
        pushes.state.unsubscribes.fetch_add(1, Ordering::AcqRel);
        pushes
            .send(push(PushKind::Unsubscribe, vec!["c", "0"]))
            .ok();
        pushes.send(push(PushKind::Message, vec!["c", "p3"])).ok();
        pushes
            .send(push(PushKind::SUnsubscribe, vec!["d", "0"]))
            .ok();
        pushes.send(push(PushKind::Message, vec!["c", "late"])).ok();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let got =
                |m: Option<(Vec<u8>, Vec<u8>)>| m.map(|(c, p)| (c, String::from_utf8(p).unwrap()));
            assert_eq!(got(msgs.recv().await), Some((b"c".to_vec(), "p1".into())));
            assert_eq!(got(msgs.recv().await), Some((b"d".to_vec(), "p2".into())));
            assert_eq!(got(msgs.recv().await), Some((b"c".to_vec(), "p3".into())));
            assert_eq!(msgs.recv().await, None);
            assert_eq!(msgs.recv().await, None);
        });
        assert!(msgs.end_reason().unwrap().contains("ended a subscription"));
        assert_eq!(msgs.backlog(), 0);
    }
}
