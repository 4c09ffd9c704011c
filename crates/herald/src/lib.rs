//! Herald, the shell: configuration, HTTP API, WebSocket connections.
//! `run` is the entry point; `router` is the HTTP surface as a value.

pub mod api;
pub mod cli;
pub mod cluster_redis;
pub mod config;
pub mod console;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tls;
pub mod webhook;
pub mod ws;
pub mod wsframe;

pub use config::Config;
pub use server::{router, run, run_with, RunOptions, Shared};
