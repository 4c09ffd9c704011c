//! Client → server frames: bytes to a typed message. Total: every input is a message or an error.

use serde::Deserialize;
use serde_json::value::RawValue;

/// A decoded client frame.
#[derive(Debug)]
pub enum ClientMessage {
    Ping,
    Pong,
    Subscribe(Subscribe),
    Unsubscribe {
        channel: String,
    },
    Signin {
        auth: Option<String>,
        user_data: Option<String>,
    },
    /// A `client-*` event; `data` is kept as the exact JSON text the client sent.
    ClientEvent {
        event: String,
        channel: Option<String>,
        data: Option<Box<RawValue>>,
    },
    /// Any other event name.
    Unsupported {
        event: String,
    },
}

// Raw JSON compares by its text.
impl PartialEq for ClientMessage {
    fn eq(&self, other: &Self) -> bool {
        use ClientMessage as M;
        match (self, other) {
            (M::Ping, M::Ping) | (M::Pong, M::Pong) => true,
            (M::Subscribe(a), M::Subscribe(b)) => a == b,
            (M::Unsubscribe { channel: a }, M::Unsubscribe { channel: b }) => a == b,
            (
                M::Signin {
                    auth: a,
                    user_data: b,
                },
                M::Signin {
                    auth: c,
                    user_data: d,
                },
            ) => a == c && b == d,
            (
                M::ClientEvent {
                    event: a,
                    channel: b,
                    data: c,
                },
                M::ClientEvent {
                    event: d,
                    channel: e,
                    data: f,
                },
            ) => a == d && b == e && c.as_ref().map(|r| r.get()) == f.as_ref().map(|r| r.get()),
            (M::Unsupported { event: a }, M::Unsupported { event: b }) => a == b,
            _ => false,
        }
    }
}

#[derive(Debug, PartialEq, Eq, Default)]
pub struct Subscribe {
    pub channel: String,
    pub auth: Option<String>,
    /// The raw `channel_data` string, exactly as received (it is signed).
    pub channel_data: Option<String>,
}

/// Why a frame could not be decoded. `Display` is the `pusher:error` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    InvalidJson,
    MissingChannel,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::InvalidJson => "Received invalid JSON",
            Self::MissingChannel => "Missing parameter: data.channel",
        })
    }
}

/// serde reads structs from JSON arrays too; the protocol only has objects.
pub fn is_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// Keeps a present `data` member even when it is `null` (Option alone would drop it).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
}

/// `data` of protocol events: an object, or a string holding an object (some clients
/// double-encode). Members of other types are read as absent.
#[derive(Deserialize, Default)]
struct ProtocolData {
    #[serde(default)]
    channel: Option<serde_json::Value>,
    #[serde(default)]
    auth: Option<serde_json::Value>,
    #[serde(default)]
    channel_data: Option<Box<RawValue>>,
    #[serde(default)]
    user_data: Option<Box<RawValue>>,
}

fn protocol_data(raw: Option<&RawValue>) -> ProtocolData {
    let Some(raw) = raw else {
        return ProtocolData::default();
    };
    if is_object(raw.get()) {
        return serde_json::from_str::<ProtocolData>(raw.get()).unwrap_or_default();
    }
    serde_json::from_str::<String>(raw.get())
        .ok()
        .filter(|s| is_object(s))
        .and_then(|s| serde_json::from_str::<ProtocolData>(&s).ok())
        .unwrap_or_default()
}

/// A string member stays the exact string; any other JSON value is taken as its JSON text.
fn raw_string(raw: Option<Box<RawValue>>) -> Option<String> {
    let raw = raw?;
    match serde_json::from_str::<String>(raw.get()) {
        Ok(s) => Some(s),
        Err(_) if raw.get() == "null" => None,
        Err(_) => Some(raw.get().to_owned()),
    }
}

fn string_value(v: Option<serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

/// Decodes one text frame.
pub fn decode(text: &str) -> Result<ClientMessage, FrameError> {
    if !is_object(text) {
        return Err(FrameError::InvalidJson);
    }
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|_| FrameError::InvalidJson)?;
    let event = env.event;
    Ok(match &*event {
        "pusher:ping" => ClientMessage::Ping,
        "pusher:pong" => ClientMessage::Pong,
        "pusher:subscribe" => {
            let d = protocol_data(env.data.as_deref());
            let channel = string_value(d.channel).ok_or(FrameError::MissingChannel)?;
            ClientMessage::Subscribe(Subscribe {
                channel,
                auth: string_value(d.auth),
                channel_data: raw_string(d.channel_data),
            })
        }
        "pusher:unsubscribe" => {
            let d = protocol_data(env.data.as_deref());
            let channel = string_value(d.channel).ok_or(FrameError::MissingChannel)?;
            ClientMessage::Unsubscribe { channel }
        }
        "pusher:signin" => {
            let d = protocol_data(env.data.as_deref());
            ClientMessage::Signin {
                auth: string_value(d.auth),
                user_data: raw_string(d.user_data),
            }
        }
        e if e.starts_with("client-") => ClientMessage::ClientEvent {
            event: event.into_owned(),
            channel: env.channel,
            data: env.data,
        },
        _ => ClientMessage::Unsupported {
            event: event.into_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_js_frames() {
        assert_eq!(
            decode(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            decode(r#"{"event":"pusher:pong","data":{}}"#),
            Ok(ClientMessage::Pong)
        );
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe","data":{"auth":"","channel":"my-channel"}}"#),
            Ok(ClientMessage::Subscribe(Subscribe {
                channel: "my-channel".into(),
                auth: Some(String::new()),
                channel_data: None
            }))
        );
        let f = r#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel_data":"{\"user_id\":10}","channel":"presence-x"}}"#;
        let ClientMessage::Subscribe(s) = decode(f).unwrap() else {
            panic!()
        };
        assert_eq!(s.channel_data.as_deref(), Some(r#"{"user_id":10}"#));
        assert_eq!(
            decode(r#"{"event":"pusher:unsubscribe","data":{"channel":"a"}}"#),
            Ok(ClientMessage::Unsubscribe {
                channel: "a".into()
            })
        );
    }

    #[test]
    fn double_encoded_data_is_accepted() {
        let f = r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#;
        let ClientMessage::Subscribe(s) = decode(f).unwrap() else {
            panic!()
        };
        assert_eq!(s.channel, "a");
    }

    #[test]
    fn client_event_keeps_raw_data() {
        let f =
            r#"{"event":"client-x","data":{"b":1,"a":12345678901234567890},"channel":"private-a"}"#;
        let ClientMessage::ClientEvent {
            event,
            channel,
            data,
        } = decode(f).unwrap()
        else {
            panic!()
        };
        assert_eq!(event, "client-x");
        assert_eq!(channel.as_deref(), Some("private-a"));
        assert_eq!(data.unwrap().get(), r#"{"b":1,"a":12345678901234567890}"#);
    }

    #[test]
    fn null_data_is_kept() {
        let ClientMessage::ClientEvent { data, .. } =
            decode(r#"{"event":"client-x","channel":"private-a","data":null}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(data.unwrap().get(), "null");
        let ClientMessage::ClientEvent { data, .. } =
            decode(r#"{"event":"client-x","channel":"private-a"}"#).unwrap()
        else {
            panic!()
        };
        assert!(data.is_none());
    }

    #[test]
    fn bad_frames() {
        for bad in [
            "",
            "nope",
            "[]",
            r#"["pusher:ping"]"#,
            "{}",
            r#"{"event":1}"#,
            r#"{"event":"x","data":"#,
        ] {
            assert_eq!(decode(bad), Err(FrameError::InvalidJson), "{bad}");
        }
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe","data":{}}"#),
            Err(FrameError::MissingChannel)
        );
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe","data":{"channel":5}}"#),
            Err(FrameError::MissingChannel)
        );
        assert_eq!(
            decode(r#"{"event":"hello"}"#),
            Ok(ClientMessage::Unsupported {
                event: "hello".into()
            })
        );
        assert_eq!(
            decode(r#"{"event":"pusher_internal:member_added"}"#),
            Ok(ClientMessage::Unsupported {
                event: "pusher_internal:member_added".into()
            })
        );
    }
}
