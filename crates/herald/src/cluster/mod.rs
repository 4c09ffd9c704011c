//! Engines that join nodes into one server.

pub mod redis;
