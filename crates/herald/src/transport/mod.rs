//! Bytes on the wire: the accept loop, TLS, RFC 6455 framing and the socket loop of a
//! WebSocket connection. Nothing here knows the Pusher rules (those are in `session`).

pub mod backlog;
pub mod capacity;
pub mod listener;
pub mod socket;
pub mod stream;
pub mod tls;
pub mod wsframe;
