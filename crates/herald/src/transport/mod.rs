//! Bytes on the wire: the accept loop, TLS and the socket loop of a WebSocket connection (the
//! RFC 6455 framing rules it applies are `herald_protocol::wsframe`). Nothing here knows the
//! Pusher rules (those are in `session`).

pub mod backlog;
pub mod capacity;
pub mod fallback;
pub mod lean_tls;
pub mod listener;
pub mod socket;
pub mod stream;
pub mod tls;
