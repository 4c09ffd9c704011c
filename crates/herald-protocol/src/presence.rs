//! Presence `channel_data`: a member's identity, parsed from the exact signed string.

use serde::Deserialize;
use serde_json::value::RawValue;

/// A presence member as announced by `channel_data` (or taken from sign-in `user_data`).
#[derive(Debug, Clone)]
pub struct MemberData {
    /// Canonical id: a string id as is, a numeric id as the digits written.
    pub user_id: String,
    /// Raw JSON of `user_info` (`null` when absent), relayed without re-serialization.
    pub user_info: Box<RawValue>,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    user_id: Option<Box<RawValue>>,
    #[serde(default)]
    user_info: Option<Box<RawValue>>,
}

/// Turns a JSON id (string or number) into its canonical string form.
pub fn canonical_user_id(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    if let Ok(s) = serde_json::from_str::<String>(text) {
        return (!s.is_empty()).then_some(s);
    }
    serde_json::from_str::<serde_json::Number>(text)
        .ok()
        .map(|_| text.to_owned())
}

/// Limits applied to presence identities.
#[derive(Debug, Clone, Copy)]
pub struct PresenceLimits {
    pub max_user_id_length: usize,
    pub max_user_info_bytes: usize,
}

/// Parses `channel_data`; the error text completes `Invalid channel_data: …`.
pub fn parse_channel_data(text: &str, limits: PresenceLimits) -> Result<MemberData, String> {
    if !crate::frame::is_object(text) {
        return Err("channel_data must be a JSON object with a user_id".to_owned());
    }
    let wire: Wire = serde_json::from_str(text)
        .map_err(|_| "channel_data must be a JSON object with a user_id".to_owned())?;
    let raw_id = wire.user_id.ok_or("channel_data must include user_id")?;
    let user_id =
        canonical_user_id(&raw_id).ok_or("user_id must be a non-empty string or a number")?;
    check_member(user_id, wire.user_info, limits)
}

/// Applies the presence limits to an identity from any source.
pub fn check_member(
    user_id: String,
    user_info: Option<Box<RawValue>>,
    limits: PresenceLimits,
) -> Result<MemberData, String> {
    if user_id.chars().count() > limits.max_user_id_length {
        return Err(format!(
            "user_id is longer than {} characters",
            limits.max_user_id_length
        ));
    }
    let user_info = user_info
        .unwrap_or_else(|| RawValue::from_string("null".to_owned()).expect("null is valid JSON"));
    if user_info.get().len() > limits.max_user_info_bytes {
        return Err(format!(
            "user_info is larger than {} bytes",
            limits.max_user_info_bytes
        ));
    }
    Ok(MemberData { user_id, user_info })
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: PresenceLimits = PresenceLimits {
        max_user_id_length: 128,
        max_user_info_bytes: 1024,
    };

    #[test]
    fn ids_are_canonical_strings() {
        let m =
            parse_channel_data(r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#, L).unwrap();
        assert_eq!(m.user_id, "10");
        assert_eq!(m.user_info.get(), r#"{"name":"Mr. Channels"}"#);
        let m = parse_channel_data(r#"{"user_id":"abc"}"#, L).unwrap();
        assert_eq!(m.user_id, "abc");
        assert_eq!(m.user_info.get(), "null");
        let m = parse_channel_data(r#"{"user_id":12345678901234567890123}"#, L).unwrap();
        assert_eq!(m.user_id, "12345678901234567890123");
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "[]",
            "[1]",
            "{}",
            r#"{"user_id":null}"#,
            r#"{"user_id":true}"#,
            r#"{"user_id":""}"#,
            r#"{"user_id":{}}"#,
        ] {
            assert!(parse_channel_data(bad, L).is_err(), "{bad}");
        }
        let long = format!(r#"{{"user_id":"{}"}}"#, "a".repeat(129));
        assert!(parse_channel_data(&long, L).unwrap_err().contains("128"));
        let big = format!(r#"{{"user_id":"a","user_info":"{}"}}"#, "x".repeat(1100));
        assert!(parse_channel_data(&big, L).unwrap_err().contains("1024"));
    }
}
