//! Pusher Channels protocol rules, free of IO and clocks.
//!
//! Everything here is a pure function of its inputs: decoding client frames into typed messages,
//! encoding server frames, channel names and kinds, socket ids, signatures, HTTP API request
//! validation, the error/close codes, and WebSocket framing (RFC 6455: the upgrade's checks,
//! client frame headers, message reassembly, server frames). The engine and the shell build on
//! these rules; no other crate knows a channel prefix, a signature format or a frame layout.

pub mod api;
pub mod channel;
pub mod codes;
pub mod encode;
pub mod frame;
pub mod limits;
pub mod presence;
pub mod sign;
pub mod socket_id;
pub mod time;
pub mod user;
pub mod wsdeflate;
pub mod wsframe;
pub mod wsheader;

pub use channel::{ChannelKind, ChannelName};
pub use codes::CloseCode;
pub use socket_id::SocketId;
