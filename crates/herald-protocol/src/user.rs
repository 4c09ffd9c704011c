//! Sign-in `user_data`: the identity a connection signs in with.

use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, Clone)]
pub struct UserData {
    pub id: String,
    /// Raw `user_info`, used as presence info when a presence subscription has no channel_data.
    pub user_info: Option<Box<RawValue>>,
    /// Watched user ids, at most the limit given to [`parse_user_data`].
    pub watchlist: Vec<String>,
    /// The watchlist was longer than the limit and was cut.
    pub watchlist_truncated: bool,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    user_info: Option<Box<RawValue>>,
    #[serde(default)]
    watchlist: Option<serde_json::Value>,
}

/// Parses `user_data`; the error text completes `Invalid user_data: …`.
pub fn parse_user_data(text: &str, max_watchlist: usize) -> Result<UserData, String> {
    if !crate::frame::is_object(text) {
        return Err("user_data must be a JSON object".to_owned());
    }
    let wire: Wire =
        serde_json::from_str(text).map_err(|_| "user_data must be a JSON object".to_owned())?;
    let id = match wire.id {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s,
        _ => return Err("user_data must include a non-empty string id".to_owned()),
    };
    let mut watchlist = Vec::new();
    match wire.watchlist {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Array(items)) => {
            for item in items {
                match item {
                    serde_json::Value::String(s) if !s.is_empty() => watchlist.push(s),
                    serde_json::Value::Number(n) => watchlist.push(n.to_string()),
                    _ => return Err("watchlist must be an array of user ids".to_owned()),
                }
            }
        }
        Some(_) => return Err("watchlist must be an array of user ids".to_owned()),
    }
    let watchlist_truncated = watchlist.len() > max_watchlist;
    watchlist.truncate(max_watchlist);
    Ok(UserData {
        id,
        user_info: wire.user_info,
        watchlist,
        watchlist_truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let u = parse_user_data(
            r#"{"id":"7","user_info":{"a":1},"watchlist":["1","2"]}"#,
            100,
        )
        .unwrap();
        assert_eq!(u.id, "7");
        assert_eq!(u.user_info.unwrap().get(), r#"{"a":1}"#);
        assert_eq!(u.watchlist, ["1", "2"]);
        assert!(!u.watchlist_truncated);
        let u = parse_user_data(r#"{"id":"7","watchlist":["1","2","3"]}"#, 2).unwrap();
        assert_eq!(u.watchlist, ["1", "2"]);
        assert!(u.watchlist_truncated);
    }

    #[test]
    fn rejects() {
        for bad in [
            "x",
            "[]",
            r#"["id"]"#,
            "{}",
            r#"{"id":7}"#,
            r#"{"id":""}"#,
            r#"{"id":"1","watchlist":"a"}"#,
        ] {
            assert!(parse_user_data(bad, 100).is_err(), "{bad}");
        }
    }
}
