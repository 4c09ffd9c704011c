//! Herald, the shell: configuration, transports, the HTTP API, sinks and engines around the
//! `herald-core` engine. `server::run_with` is the entry point; `http::router` is the HTTP
//! surface as a value. See ARCHITECTURE.md for the map.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod executor;
pub mod http;
pub mod memory;
pub mod server;
pub mod session;
pub mod sinks;
pub mod store;
pub mod transport;

pub use config::Config;
pub use server::{router, run, run_with, RunOptions, Shared};
