//! Engines that join nodes into one server. The engine's write side is `herald_core`'s
//! `ClusterAdapter`; what the shell reads from the cluster (rosters, counts, online users) goes
//! through [`ClusterReads`], so no other module names a concrete engine.

#[cfg(feature = "redis")]
pub mod redis;

use std::future::Future;
use std::pin::Pin;

/// A cluster read in progress; the error is the engine's own message.
pub type Reading<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Cluster-wide facts the HTTP API, the console and sessions read.
pub trait ClusterReads: Send + Sync + std::fmt::Debug {
    /// False while the engine is unreachable (readiness and metrics say so).
    fn is_up(&self) -> bool;
    /// Subscriber counts of an app's occupied channels.
    fn channel_counts<'a>(&'a self, app: &'a str) -> Reading<'a, Vec<(String, usize)>>;
    /// (subscribers, distinct presence users) of one channel.
    fn channel_count<'a>(&'a self, app: &'a str, channel: &'a str) -> Reading<'a, (usize, usize)>;
    /// Presence members of a channel: (user id, raw user_info), sorted by id.
    fn members<'a>(&'a self, app: &'a str, channel: &'a str) -> Reading<'a, Vec<(String, String)>>;
    /// Which of `users` are signed in somewhere in the cluster.
    fn online<'a>(&'a self, app: &'a str, users: &'a [String]) -> Reading<'a, Vec<String>>;
}
