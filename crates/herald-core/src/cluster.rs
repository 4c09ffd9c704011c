//! The seam to other nodes. A single node needs nothing from it; the Redis adapter (scale-out)
//! implements the same trait.

use crate::conn::Frame;
use herald_protocol::SocketId;

/// Decides cluster-wide facts and carries deliveries to other nodes.
pub trait ClusterAdapter: Send + Sync {
    /// The first part of every socket id this node hands out; unique per node.
    fn node_id(&self) -> u32;
    /// Delivers a frame published on this node to subscribers on other nodes.
    fn publish_remote(&self, app_id: &str, channel: &str, frame: &Frame, except: Option<SocketId>);
}

/// One node, no peers.
#[derive(Debug)]
pub struct LocalAdapter {
    node_id: u32,
}

impl LocalAdapter {
    pub fn new() -> Self {
        // Random so that socket ids from a restarted node do not repeat recent ones.
        Self { node_id: rand::random_range(1..1_000_000_000) }
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
    fn publish_remote(&self, _: &str, _: &str, _: &Frame, _: Option<SocketId>) {}
}
