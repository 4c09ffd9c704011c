//! The inbound side of a clustered adapter: what other nodes decided, applied to this node's
//! connections, and this node's counts for the adapter's shared state.

use super::users::notify_watchers;
use super::{Cached, Channel, Engine};
use crate::cluster::ClusterNote;
use crate::conn::Frame;
use crate::lifecycle::LifecycleEvent;
use herald_protocol::{encode, ChannelName, SocketId};
use std::sync::Arc;
use std::time::Duration;

impl Engine {
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
            ch.cache = Some(Cached::new(frame.clone(), data, ttl));
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
