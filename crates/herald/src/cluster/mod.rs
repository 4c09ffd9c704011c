//! Engines that join nodes into one server, behind `herald_core`'s `Broker` and `Store`: what
//! the shell reads from the cluster (rosters, counts, online users, cached events) goes through
//! [`Store`], so no other module names a concrete engine.

#[cfg(feature = "redis")]
pub mod redis;

pub use herald_core::{Reading, Store};
