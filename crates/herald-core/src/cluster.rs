//! The seam to other nodes, in two small traits:
//!
//! * [`Broker`] carries messages between nodes by [`Topic`] (a channel's subscribers, a user's
//!   connections, a user's watchers). A node receives a topic's messages only while it has a
//!   local interest in it ([`Broker::subscribe`]); the engine says when.
//! * [`Store`] holds the cluster's shared state: it takes this node's counts ([`ClusterNote`]),
//!   decides the cluster-wide transitions they cause, hands each to exactly one node's
//!   [`Engine::apply`](crate::Engine::apply), and answers reads (counts, rosters, who is online).
//!
//! A single node needs neither: [`Cluster::local`] delivers in-process and the engine decides
//! transitions from its own state, then applies them through the same function.

use crate::conn::Frame;
use herald_protocol::{ChannelName, SocketId};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Who a message between nodes is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// The subscribers of one channel: events, member events, subscription counts.
    Channel { app: Arc<str>, channel: ChannelName },
    /// The connections signed in as one user: termination.
    User { app: Arc<str>, user: Arc<str> },
    /// The connections watching one user: its online/offline changes.
    Watchers { app: Arc<str>, user: Arc<str> },
}

impl Topic {
    pub fn channel(app: &Arc<str>, channel: &ChannelName) -> Self {
        Self::Channel {
            app: app.clone(),
            channel: channel.clone(),
        }
    }

    pub fn app(&self) -> &Arc<str> {
        match self {
            Self::Channel { app, .. } | Self::User { app, .. } | Self::Watchers { app, .. } => app,
        }
    }
}

/// A message between nodes. An event's frame travels as the bytes subscribers receive.
#[derive(Debug, Clone, PartialEq)]
pub enum Envelope {
    /// An event for a channel's subscribers but `except`; `cache` (data, ttl) when a cache
    /// channel keeps it.
    Event {
        frame: Frame,
        except: Option<SocketId>,
        cache: Option<(Arc<str>, Duration)>,
    },
    /// The channel's subscription count across the cluster, as the store decided it.
    Count(usize),
    /// Close the user's connections (4009).
    Terminate,
    /// The watched user came online (true) or went offline.
    Online(bool),
}

/// Why an envelope could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadEnvelope(pub &'static str);

impl std::fmt::Display for BadEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unreadable cluster message: {}", self.0)
    }
}

/// Wire format, version 1: one kind byte, then per kind:
/// * `E` event: flags (bit 0: except, bit 1: cache), except as node u32 + seq u64 (big endian),
///   cache as ttl ms u64 + data length u32 + data, then the frame's JSON to the end;
/// * `C` count: u64; `T` terminate: nothing; `O` online: one byte, 1 or 0.
const EVENT: u8 = b'E';
const COUNT: u8 = b'C';
const TERMINATE: u8 = b'T';
const ONLINE: u8 = b'O';

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Event {
                frame,
                except,
                cache,
            } => {
                let json = frame.json();
                let extra = cache.as_ref().map_or(0, |(d, _)| 12 + d.len());
                let mut out = Vec::with_capacity(2 + 12 + extra + json.len());
                out.push(EVENT);
                out.push(u8::from(except.is_some()) | (u8::from(cache.is_some()) << 1));
                if let Some(id) = except {
                    out.extend_from_slice(&id.node.to_be_bytes());
                    out.extend_from_slice(&id.seq.to_be_bytes());
                }
                if let Some((data, ttl)) = cache {
                    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                    out.extend_from_slice(&ms.to_be_bytes());
                    // Event data is bounded far below 4 GiB by the API's body limit.
                    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
                    out.extend_from_slice(data.as_bytes());
                }
                out.extend_from_slice(json);
                out
            }
            Self::Count(n) => {
                let mut out = vec![COUNT];
                out.extend_from_slice(&(*n as u64).to_be_bytes());
                out
            }
            Self::Terminate => vec![TERMINATE],
            Self::Online(on) => vec![ONLINE, u8::from(*on)],
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, BadEnvelope> {
        let mut r = Reader(bytes);
        match r.u8()? {
            EVENT => {
                let flags = r.u8()?;
                let except = if flags & 1 != 0 {
                    Some(SocketId::new(r.u32()?, r.u64()?))
                } else {
                    None
                };
                let cache = if flags & 2 != 0 {
                    let ttl = Duration::from_millis(r.u64()?);
                    let len = r.u32()? as usize;
                    let data = std::str::from_utf8(r.take(len)?)
                        .map_err(|_| BadEnvelope("cached data is not UTF-8"))?;
                    Some((Arc::from(data), ttl))
                } else {
                    None
                };
                if r.0.is_empty() || std::str::from_utf8(r.0).is_err() {
                    return Err(BadEnvelope("the event's frame is empty or not UTF-8"));
                }
                Ok(Self::Event {
                    frame: Frame::text(r.0),
                    except,
                    cache,
                })
            }
            COUNT => {
                let n = r.u64()?;
                r.end()?;
                Ok(Self::Count(usize::try_from(n).unwrap_or(usize::MAX)))
            }
            TERMINATE => {
                r.end()?;
                Ok(Self::Terminate)
            }
            ONLINE => {
                let on = r.u8()?;
                r.end()?;
                match on {
                    0 | 1 => Ok(Self::Online(on == 1)),
                    _ => Err(BadEnvelope("online flag is neither 0 nor 1")),
                }
            }
            _ => Err(BadEnvelope("unknown kind")),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadEnvelope> {
        if self.0.len() < n {
            return Err(BadEnvelope("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, BadEnvelope> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, BadEnvelope> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, BadEnvelope> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn end(&self) -> Result<(), BadEnvelope> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(BadEnvelope("trailing bytes"))
        }
    }
}

/// Why the broker did not take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishError {
    /// Its queue is full: retry later (the API answers 503).
    Busy,
    /// It cannot reach the other nodes and the outage setting rejects publishes.
    Down,
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Busy => "the cluster's message queue is full; retry shortly",
            Self::Down => "the cluster's broker is unreachable; retry shortly",
        })
    }
}

/// Resolves when the broker has the message (Ok) or has given up on it.
pub type Receipt = tokio::sync::oneshot::Receiver<Result<(), PublishError>>;

/// Resolves when a topic's messages reach this node (or the broker gave up trying: an error).
pub type Ready = tokio::sync::oneshot::Receiver<()>;

/// What the broker did with a message.
#[derive(Debug)]
pub enum Sent {
    /// No other node needs it (one node, or a broker outage that delivers locally): the caller
    /// delivers it to this node's connections itself.
    Local,
    /// The broker carries it to every interested node, this one included; the receipt says when
    /// it was accepted.
    Queued(Receipt),
}

/// Carries messages between nodes.
pub trait Broker: Send + Sync {
    /// The first part of every socket id this node hands out; unique per node.
    fn node_id(&self) -> u32;
    /// True when other nodes exist: every message goes through [`Broker::publish`] and comes back
    /// through [`Engine::receive`](crate::Engine::receive), so all nodes see one order.
    fn clustered(&self) -> bool {
        false
    }
    /// Takes one hold on `topic`: while any is held, the topic's messages reach this node. The
    /// engine holds one per topic with a local subscriber, signed-in connection or watcher; a
    /// session holds one while it waits for a new subscription to be carried, so that no event
    /// published after `subscription_succeeded` can miss it. The answer resolves once messages
    /// of the topic reach this node (`None`: already so). Never blocks.
    fn subscribe(&self, _topic: Topic) -> Option<Ready> {
        None
    }
    /// Gives back one hold taken by [`Broker::subscribe`].
    fn unsubscribe(&self, _topic: Topic) {}
    /// Sends `envelope` to every node interested in `topic`.
    fn publish(&self, _topic: Topic, _envelope: Envelope) -> Result<Sent, PublishError> {
        Ok(Sent::Local)
    }
}

/// A local count changed; the store turns these into cluster-wide transitions.
#[derive(Debug, Clone)]
pub enum ClusterNote {
    /// Subscribers of `channel` on this node.
    ChannelCount {
        app: Arc<str>,
        channel: ChannelName,
        count: usize,
    },
    /// Connections of `user_id` on presence `channel` on this node; `info` is the raw user_info
    /// of the latest join, `socket_id` the connection that changed the count.
    MemberCount {
        app: Arc<str>,
        channel: ChannelName,
        user_id: Arc<str>,
        count: u32,
        info: Arc<str>,
        socket_id: SocketId,
    },
    /// Signed-in connections of `user_id` on this node.
    UserCount {
        app: Arc<str>,
        user_id: Arc<str>,
        count: usize,
    },
}

/// A cluster-wide change, decided once (by the store, or by a single node's engine) and applied
/// by [`Engine::apply`](crate::Engine::apply): it emits the lifecycle event (webhooks) and sends
/// the frames the change means to whoever must hear them.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Occupied {
        app: Arc<str>,
        channel: ChannelName,
    },
    Vacated {
        app: Arc<str>,
        channel: ChannelName,
    },
    /// The channel's subscription count changed to `count` (non-presence channels).
    Count {
        app: Arc<str>,
        channel: ChannelName,
        count: usize,
    },
    /// A user joined a presence channel; `info` is raw JSON; `except` the joining connection.
    MemberAdded {
        app: Arc<str>,
        channel: ChannelName,
        user_id: Arc<str>,
        info: Arc<str>,
        except: Option<SocketId>,
    },
    MemberRemoved {
        app: Arc<str>,
        channel: ChannelName,
        user_id: Arc<str>,
    },
    /// The user's first connection signed in anywhere (true) or its last one left.
    Online {
        app: Arc<str>,
        user_id: Arc<str>,
        online: bool,
    },
}

impl Transition {
    /// What a channel's subscriber total going from `before` to `after` means: occupied or
    /// vacated on crossing zero, and the new count while it is not zero. Every store decides by
    /// these rules.
    pub fn of_channel(app: &Arc<str>, channel: &ChannelName, before: u64, after: u64) -> Vec<Self> {
        let mut out = Vec::new();
        if before == 0 && after > 0 {
            out.push(Self::Occupied {
                app: app.clone(),
                channel: channel.clone(),
            });
        } else if before > 0 && after == 0 {
            out.push(Self::Vacated {
                app: app.clone(),
                channel: channel.clone(),
            });
        }
        if before != after && after > 0 {
            out.push(Self::Count {
                app: app.clone(),
                channel: channel.clone(),
                count: usize::try_from(after).unwrap_or(usize::MAX),
            });
        }
        out
    }

    /// What a presence member's connection total going from `before` to `after` means;
    /// `except`: the connection that joined (told by its own subscribe).
    pub fn of_member(
        app: &Arc<str>,
        channel: &ChannelName,
        user_id: &Arc<str>,
        info: &Arc<str>,
        except: Option<SocketId>,
        (before, after): (u64, u64),
    ) -> Option<Self> {
        if before == 0 && after > 0 {
            Some(Self::MemberAdded {
                app: app.clone(),
                channel: channel.clone(),
                user_id: user_id.clone(),
                info: info.clone(),
                except,
            })
        } else if before > 0 && after == 0 {
            Some(Self::MemberRemoved {
                app: app.clone(),
                channel: channel.clone(),
                user_id: user_id.clone(),
            })
        } else {
            None
        }
    }

    /// What a user's signed-in total going from `before` to `after` means.
    pub fn of_user(
        app: &Arc<str>,
        user_id: &Arc<str>,
        (before, after): (u64, u64),
    ) -> Option<Self> {
        ((before == 0) != (after == 0)).then(|| Self::Online {
            app: app.clone(),
            user_id: user_id.clone(),
            online: after > 0,
        })
    }
}

/// A read of the shared state in progress; the error is the engine's own message.
pub type Reading<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// The cluster's shared state.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Reports a count change of this node. Notes of one key arrive in the order the counts
    /// changed; the store keeps the latest per key.
    fn note(&self, note: ClusterNote);
    /// False while the shared state is unreachable (metrics and logs say so).
    fn is_up(&self) -> bool;
    /// Whether this node should take new clients (readiness): by default while the store is
    /// up; an engine that keeps serving local clients through an outage says so here.
    fn ready(&self) -> bool {
        self.is_up()
    }
    /// Subscriber counts of an app's occupied channels.
    fn channel_counts<'a>(&'a self, app: &'a str) -> Reading<'a, Vec<(String, usize)>>;
    /// (subscribers, distinct presence users) of one channel.
    fn channel_count<'a>(&'a self, app: &'a str, channel: &'a str) -> Reading<'a, (usize, usize)>;
    /// Presence members of a channel: (user id, raw user_info), sorted by id.
    fn members<'a>(&'a self, app: &'a str, channel: &'a str) -> Reading<'a, Vec<(String, String)>>;
    /// Which of `users` are signed in somewhere in the cluster.
    fn online<'a>(&'a self, app: &'a str, users: &'a [String]) -> Reading<'a, Vec<String>>;
    /// A cache channel's last event, kept by the store for subscribers on nodes that had no
    /// interest in the channel when it was published: (frame JSON, data, time left).
    fn cached<'a>(&'a self, app: &'a str, channel: &'a str) -> Reading<'a, Option<CachedEvent>>;
}

/// A cache channel's event as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedEvent {
    pub frame: Frame,
    pub data: Arc<str>,
    pub ttl: Duration,
}

/// What an engine is joined to: a broker, and a store when other nodes exist.
#[derive(Clone)]
pub struct Cluster {
    pub broker: Arc<dyn Broker>,
    pub store: Option<Arc<dyn Store>>,
}

impl Cluster {
    /// One node, no peers.
    pub fn local() -> Self {
        Self {
            broker: Arc::new(LocalBroker::new()),
            store: None,
        }
    }

    /// Nodes joined through `broker` and `store`.
    pub fn joined(broker: Arc<dyn Broker>, store: Arc<dyn Store>) -> Self {
        Self {
            broker,
            store: Some(store),
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.broker.node_id())
            .field("store", &self.store)
            .finish()
    }
}

/// One node, no peers: everything is delivered in-process.
#[derive(Debug)]
pub struct LocalBroker {
    node_id: u32,
}

impl LocalBroker {
    pub fn new() -> Self {
        // Random so that socket ids from a restarted node do not repeat recent ones.
        Self {
            node_id: rand::random_range(1..1_000_000_000),
        }
    }
}

impl Default for LocalBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl Broker for LocalBroker {
    fn node_id(&self) -> u32 {
        self.node_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(e: Envelope) {
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn envelopes_round_trip() {
        round_trip(Envelope::Event {
            frame: Frame::from(r#"{"event":"e","channel":"c","data":"{}"}"#),
            except: None,
            cache: None,
        });
        round_trip(Envelope::Event {
            frame: Frame::from(r#"{"event":"e","channel":"cache-c","data":"x"}"#),
            except: Some(SocketId::new(7, u64::MAX)),
            cache: Some((Arc::from("x"), Duration::from_millis(1_800_000))),
        });
        round_trip(Envelope::Count(123_456));
        round_trip(Envelope::Terminate);
        round_trip(Envelope::Online(true));
        round_trip(Envelope::Online(false));
    }

    #[test]
    fn an_event_costs_its_frame_plus_two_bytes() {
        let json = r#"{"event":"e","channel":"c","data":"{}"}"#;
        let e = Envelope::Event {
            frame: Frame::from(json),
            except: None,
            cache: None,
        };
        assert_eq!(e.encode().len(), json.len() + 2);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        for bad in [
            &b""[..],
            b"E",
            b"E\x01\x00",
            b"E\x00",
            b"E\x02\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x09ab{}",
            b"C\x00\x01",
            b"C\x00\x00\x00\x00\x00\x00\x00\x01\x00",
            b"T\x00",
            b"O\x02",
            b"Z",
            b"E\x00\xff\xfe",
        ] {
            assert!(Envelope::decode(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
