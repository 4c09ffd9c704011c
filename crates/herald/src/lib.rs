//! Herald, the shell: configuration, HTTP API, WebSocket connections.
//! `run` is the entry point; `router` is the HTTP surface as a value.

pub mod api;
pub mod config;
pub mod console;
pub mod server;
pub mod webhook;
pub mod ws;

pub use config::Config;
pub use server::{router, run, Shared};
