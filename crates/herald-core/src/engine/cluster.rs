//! What comes from other nodes (the broker's messages, the store's transitions), applied to this
//! node's connections, and this node's counts for the store.

use super::channels::{COUNT_THROTTLE_ABOVE, COUNT_THROTTLE_WINDOW};
use super::users::notify_watchers;
use super::{Cached, Channel, ClusterCount, Engine};
use crate::cluster::{ClusterNote, Envelope, Sent, Topic, Transition};
use crate::conn::Frame;
use crate::lifecycle::LifecycleEvent;
use herald_protocol::{encode, ChannelName, SocketId};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

impl Engine {
    /// A message the broker carried to this node.
    pub fn receive(&self, topic: &Topic, envelope: Envelope) {
        match (topic, envelope) {
            (
                Topic::Channel { app, channel },
                Envelope::Event {
                    frame,
                    except,
                    cache,
                },
            ) => {
                let cache = cache.as_ref().map(|(d, t)| (&**d, *t));
                self.deliver_local(app, channel, &frame, except, cache);
            }
            (Topic::Channel { app, channel }, Envelope::Count(n)) => {
                self.deliver_count(app, channel, n);
            }
            (Topic::User { app, user }, Envelope::Terminate) => {
                self.terminate_user_local(app, user);
            }
            (Topic::Watchers { app, user }, Envelope::Online(on)) => {
                self.notify_watchers_local(app, user, on);
            }
            // A message that does not fit its topic came from a foreign or broken sender; the
            // broker counts what it could not read, and this is the same.
            _ => {}
        }
    }

    /// Sends `envelope` to the topic's connections on every node: through the broker when
    /// clustered, straight to this node's otherwise. A refusal is the broker's to count and log.
    pub(super) fn send_to(&self, topic: Topic, envelope: Envelope) {
        if !self.clustered() {
            self.receive(&topic, envelope);
            return;
        }
        if let Ok(Sent::Local) = self.broker().publish(topic.clone(), envelope.clone()) {
            self.receive(&topic, envelope);
        }
    }

    /// Hands a count change to the store (clustered only).
    pub(super) fn note(&self, note: ClusterNote) {
        if let Some(store) = &self.inner.cluster.store {
            store.note(note);
        }
    }

    /// Applies a cluster-wide transition the store decided on this node: the lifecycle event
    /// (webhooks, once for the cluster) and the frames it means, to every node's connections.
    pub fn apply(&self, t: Transition) {
        if let Transition::Count {
            app,
            channel,
            count,
        } = &t
        {
            self.cluster_count(app, channel, *count);
            return;
        }
        if let Some((topic, envelope)) = transition_frame(&t) {
            self.send_to(topic, envelope);
        }
        if let Some(ev) = transition_event(&t) {
            self.emit(|| ev);
        }
    }

    /// The lifecycle event of a transition this node decided alone (a single node), whose frames
    /// it sent itself under the channel's lock.
    pub(super) fn emit_transition(&self, make: impl FnOnce() -> Transition) {
        if let Some(ev) = transition_event(&make()) {
            self.emit(|| ev);
        }
    }

    /// A big channel's cluster-wide count goes out at most once per throttle window, counted from
    /// the last one this node sent; smaller ones at once (each node coalesces its frames).
    fn cluster_count(&self, app: &Arc<str>, channel: &ChannelName, count: usize) {
        if channel.is_presence() || channel.is_internal() {
            return;
        }
        if !self
            .inner
            .apps
            .by_id(app)
            .is_some_and(|a| a.enable_subscription_count)
        {
            return;
        }
        let st = self.state(app);
        let now = Instant::now();
        {
            let mut counts = st.cluster_counts.lock();
            if count <= COUNT_THROTTLE_ABOVE {
                counts.remove(channel.as_str());
            } else {
                match counts.get_mut(channel.as_str()) {
                    Some(c) if now < c.last + COUNT_THROTTLE_WINDOW => {
                        // `tick` sends the latest value at the window's end.
                        c.pending = Some(count);
                        return;
                    }
                    _ => {
                        counts.insert(
                            channel.arc().clone(),
                            ClusterCount {
                                name: channel.clone(),
                                last: now,
                                pending: None,
                            },
                        );
                    }
                }
            }
        }
        self.send_count_everywhere(app, channel, count);
    }

    fn send_count_everywhere(&self, app: &Arc<str>, channel: &ChannelName, count: usize) {
        self.send_to(Topic::channel(app, channel), Envelope::Count(count));
        self.emit(|| LifecycleEvent::SubscriptionCount {
            app: app.clone(),
            channel: channel.arc().clone(),
            count,
        });
    }

    /// Sends the big channels' cluster-wide counts held back whose window ended (from `tick`).
    pub(super) fn tick_cluster_counts(&self, app: &Arc<str>, now: Instant) {
        let st = self.state(app);
        let due: Vec<(ChannelName, usize)> = {
            let mut counts = st.cluster_counts.lock();
            if counts.is_empty() {
                return;
            }
            let mut due = Vec::new();
            counts.retain(|_, c| {
                if now < c.last + COUNT_THROTTLE_WINDOW {
                    return true;
                }
                match c.pending.take() {
                    Some(n) => {
                        due.push((c.name.clone(), n));
                        c.last = now;
                        true
                    }
                    None => false,
                }
            });
            due
        };
        for (channel, n) in due {
            self.send_count_everywhere(app, &channel, n);
        }
    }

    /// Delivers a frame to this node's subscribers of `channel`; stores it as the channel's cached
    /// event when `cache` is given.
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
            ch.cache = Some(Cached::new(frame.clone(), data, ttl));
        }
        if let Some(ch) = shard.get(channel.as_str()) {
            ch.broadcast(frame, except);
        }
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

    /// This node's counts, for the store to (re)write its share of the shared state.
    pub fn local_notes(&self) -> Vec<ClusterNote> {
        let mut out = Vec::new();
        for st in self.all_states() {
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
}

/// The frame a transition sends, and to whom (none for occupancy and counts).
pub(super) fn transition_frame(t: &Transition) -> Option<(Topic, Envelope)> {
    match t {
        Transition::MemberAdded {
            app,
            channel,
            user_id,
            info,
            except,
        } => {
            let info = RawValue::from_string(info.to_string())
                .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"));
            Some((
                Topic::channel(app, channel),
                Envelope::Event {
                    frame: encode::member_added(channel.as_str(), user_id, &info).into(),
                    except: *except,
                    cache: None,
                },
            ))
        }
        Transition::MemberRemoved {
            app,
            channel,
            user_id,
        } => Some((
            Topic::channel(app, channel),
            Envelope::Event {
                frame: encode::member_removed(channel.as_str(), user_id).into(),
                except: None,
                cache: None,
            },
        )),
        Transition::Online {
            app,
            user_id,
            online,
        } => Some((
            Topic::Watchers {
                app: app.clone(),
                user: user_id.clone(),
            },
            Envelope::Online(*online),
        )),
        Transition::Occupied { .. } | Transition::Vacated { .. } | Transition::Count { .. } => None,
    }
}

/// The lifecycle event a transition emits (webhooks and the console hear it once).
pub(super) fn transition_event(t: &Transition) -> Option<LifecycleEvent> {
    Some(match t {
        Transition::Occupied { app, channel } => LifecycleEvent::ChannelOccupied {
            app: app.clone(),
            channel: channel.arc().clone(),
        },
        Transition::Vacated { app, channel } => LifecycleEvent::ChannelVacated {
            app: app.clone(),
            channel: channel.arc().clone(),
        },
        Transition::Count {
            app,
            channel,
            count,
        } => LifecycleEvent::SubscriptionCount {
            app: app.clone(),
            channel: channel.arc().clone(),
            count: *count,
        },
        Transition::MemberAdded {
            app,
            channel,
            user_id,
            ..
        } => LifecycleEvent::MemberAdded {
            app: app.clone(),
            channel: channel.arc().clone(),
            user_id: user_id.clone(),
        },
        Transition::MemberRemoved {
            app,
            channel,
            user_id,
        } => LifecycleEvent::MemberRemoved {
            app: app.clone(),
            channel: channel.arc().clone(),
            user_id: user_id.clone(),
        },
        Transition::Online { .. } => return None,
    })
}
