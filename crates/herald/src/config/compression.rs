//! `server.websocket_compression`: its values and how they are read.

use herald_protocol::limits::MAX_SETTING_SIZE;
use serde::{Deserialize, Serialize};

/// `server.websocket_compression`: whether `permessage-deflate` (RFC 7692) is accepted when a
/// client offers it, and from which message size server messages are compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CompressionValue", into = "String")]
pub enum WsCompression {
    /// Never negotiated: every connection is uncompressed.
    #[default]
    Off,
    /// Negotiated; server messages of at least this many bytes (of JSON) are compressed, smaller
    /// ones go uncompressed (`"on"` is 0: every message).
    From(usize),
}

impl WsCompression {
    /// The size from which messages are compressed, when compression is on.
    pub fn threshold(self) -> Option<usize> {
        match self {
            Self::Off => None,
            Self::From(n) => Some(n),
        }
    }
}

/// What a configuration file or variable may hold for `websocket_compression`.
#[derive(Deserialize)]
#[serde(untagged)]
enum CompressionValue {
    Bytes(i64),
    Text(String),
}

impl TryFrom<CompressionValue> for WsCompression {
    type Error = String;
    fn try_from(v: CompressionValue) -> Result<Self, String> {
        let bad = |v: &dyn std::fmt::Display| {
            format!("server.websocket_compression `{v}` must be \"off\", \"on\" or a size in bytes from 0 to {MAX_SETTING_SIZE} (compress messages of at least that size)")
        };
        let n = match v {
            CompressionValue::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
                "off" | "false" => return Ok(Self::Off),
                "on" | "true" => return Ok(Self::From(0)),
                n => n.parse::<i64>().map_err(|_| bad(&t))?,
            },
            CompressionValue::Bytes(n) => n,
        };
        match u64::try_from(n) {
            Ok(n) if n <= MAX_SETTING_SIZE => Ok(Self::From(n as usize)),
            _ => Err(bad(&n)),
        }
    }
}

impl From<WsCompression> for String {
    fn from(v: WsCompression) -> String {
        match v {
            WsCompression::Off => "off".into(),
            WsCompression::From(0) => "on".into(),
            WsCompression::From(n) => n.to_string(),
        }
    }
}
