//! Herald, the shell: configuration, transports, the HTTP API, sinks and engines around the
//! `herald-core` engine. `server::run_with` is the entry point; `Node::router` is the HTTP
//! surface as a value. See ARCHITECTURE.md for the map.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod drain;
pub mod executor;
pub mod http;
pub mod memory;
pub mod rate;
pub mod redact;
pub mod server;
pub mod session;
pub mod sinks;
pub mod startup;
pub mod store;
pub mod transport;

pub use config::Config;
pub use server::{run, run_with, Node, RunOptions, StartError};
