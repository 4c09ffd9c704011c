//! The seam to other nodes. A single node needs nothing from it; the Redis adapter (scale-out)
//! implements the same trait and then decides cluster-wide facts in one place.

use crate::conn::Frame;
use herald_protocol::{ChannelName, SocketId};
use std::sync::Arc;
use std::time::Duration;

/// A local count changed; a clustered adapter turns these into cluster-wide transitions.
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

/// Decides cluster-wide facts and carries deliveries to other nodes.
pub trait ClusterAdapter: Send + Sync {
    /// The first part of every socket id this node hands out; unique per node.
    fn node_id(&self) -> u32;
    /// True when other nodes exist: then occupancy, presence membership and online status are
    /// decided by the adapter (fed by [`ClusterNote`]s), not by this node's engine alone.
    fn clustered(&self) -> bool {
        false
    }
    /// Reports a local count change (clustered adapters only).
    fn note(&self, _note: ClusterNote) {}
    /// Delivers a frame published on this node to subscribers on other nodes; `cache_ttl` is set
    /// for events that cache channels keep.
    fn publish_remote(
        &self,
        app_id: &str,
        channel: &str,
        frame: &Frame,
        except: Option<SocketId>,
        cache: Option<(&str, Duration)>,
    );
    /// Closes `user_id`'s connections on other nodes.
    fn terminate_remote(&self, _app_id: &str, _user_id: &str) {}
}

/// One node, no peers.
#[derive(Debug)]
pub struct LocalAdapter {
    node_id: u32,
}

impl LocalAdapter {
    pub fn new() -> Self {
        // Random so that socket ids from a restarted node do not repeat recent ones.
        Self {
            node_id: rand::random_range(1..1_000_000_000),
        }
    }
}

impl Default for LocalAdapter {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterAdapter for LocalAdapter {
    fn node_id(&self) -> u32 {
        self.node_id
    }
    fn publish_remote(
        &self,
        _: &str,
        _: &str,
        _: &Frame,
        _: Option<SocketId>,
        _: Option<(&str, Duration)>,
    ) {
    }
}
