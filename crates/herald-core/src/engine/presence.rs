//! Presence: members are users, not connections. A user joins a channel with its first
//! connection and leaves with its last; only those transitions are announced.

use super::{Channel, Engine, Member, SubscribeError};
use crate::cluster::ClusterNote;
use crate::conn::{Conn, Frame};
use herald_protocol::presence::MemberData;
use herald_protocol::{encode, ChannelName};
use serde_json::value::RawValue;
use std::sync::Arc;

impl Channel {
    /// Counts `conn` as a connection of member `m`. A user new to the channel is announced to the
    /// subscribers on a single node; clustered, the store decides from the note. Returns the
    /// user id and whether this node announced it; a new user is refused when the channel is full
    /// (counting `remote_members`, the members on other nodes).
    pub(super) fn join(
        &mut self,
        app: &Arc<str>,
        conn: &Conn,
        m: MemberData,
        remote_members: &[(String, String)],
        clustered: bool,
        notes: &mut Vec<ClusterNote>,
    ) -> Result<(Arc<str>, bool), SubscribeError> {
        let uid: Arc<str> = Arc::from(m.user_id.as_str());
        let info_note: Arc<str> = Arc::from(m.user_info.get());
        if let Some(existing) = self.members.get_mut(&uid) {
            existing.conns += 1;
            // The latest user_info wins for later snapshots; members hear nothing.
            existing.info = m.user_info;
            if clustered {
                notes.push(ClusterNote::MemberCount {
                    app: app.clone(),
                    channel: self.name.clone(),
                    user_id: uid.clone(),
                    count: existing.conns,
                    info: info_note,
                    socket_id: conn.socket_id,
                });
            }
            return Ok((uid, false));
        }
        let max = conn.with_app(|a| a.limits.max_presence_members);
        let known_remotely = remote_members.iter().any(|(id, _)| **id == *uid);
        let present = self.members.len()
            + remote_members
                .iter()
                .filter(|(id, _)| !self.members.contains_key(id.as_str()))
                .count();
        if present >= max && !known_remotely {
            return Err(SubscribeError::PresenceFull {
                channel: self.name.to_string(),
                max,
            });
        }
        let mut announced = false;
        if clustered {
            // The store decides whether the user is new to the cluster.
            notes.push(ClusterNote::MemberCount {
                app: app.clone(),
                channel: self.name.clone(),
                user_id: uid.clone(),
                count: 1,
                info: info_note,
                socket_id: conn.socket_id,
            });
        } else {
            let frame: Frame = encode::member_added(self.name.as_str(), &uid, &m.user_info).into();
            self.broadcast(&frame, None);
            announced = true;
        }
        self.members.insert(
            uid.clone(),
            Member {
                conns: 1,
                info: m.user_info,
            },
        );
        Ok((uid, announced))
    }

    /// Counts one connection of `uid` less (`conn` is already unsubscribed). Returns the user id
    /// when the user left and this node announced it (clustered, the store decides).
    pub(super) fn leave(
        &mut self,
        app: &Arc<str>,
        conn: &Conn,
        uid: Arc<str>,
        clustered: bool,
        notes: &mut Vec<ClusterNote>,
    ) -> Option<Arc<str>> {
        let m = self.members.get_mut(&uid)?;
        m.conns -= 1;
        let left = m.conns;
        if clustered {
            notes.push(ClusterNote::MemberCount {
                app: app.clone(),
                channel: self.name.clone(),
                user_id: uid.clone(),
                count: left,
                info: Arc::from(m.info.get()),
                socket_id: conn.socket_id,
            });
        }
        if left > 0 {
            return None;
        }
        self.members.remove(&uid);
        if clustered {
            return None;
        }
        self.broadcast(
            &encode::member_removed(self.name.as_str(), &uid).into(),
            None,
        );
        Some(uid)
    }

    /// The `subscription_succeeded` of a presence channel: this node's members and those only
    /// present on other nodes.
    pub(super) fn presence_succeeded(&self, remote_members: &[(String, String)]) -> Frame {
        let remote: Vec<(&str, Box<RawValue>)> = remote_members
            .iter()
            .filter(|(id, _)| !self.members.contains_key(id.as_str()))
            .filter_map(|(id, info)| {
                RawValue::from_string(info.clone())
                    .ok()
                    .map(|r| (id.as_str(), r))
            })
            .collect();
        let mut all: Vec<(&str, &RawValue)> = self
            .members
            .iter()
            .map(|(id, m)| (&**id, &*m.info))
            .collect();
        all.extend(remote.iter().map(|(id, r)| (*id, &**r)));
        encode::presence_succeeded(self.name.as_str(), all.into_iter()).into()
    }
}

impl Engine {
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
}
