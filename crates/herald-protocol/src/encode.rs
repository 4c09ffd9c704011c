//! Server → client frames, rendered compactly. `data` encodings follow the spec's table:
//! a JSON string for protocol events, an object for `pusher:error` and `pusher:signin_success`,
//! and the publisher's value verbatim for channel events.

use serde_json::value::RawValue;

/// Appends `s` as a JSON string literal.
pub fn push_str(out: &mut String, s: &str) {
    // serde_json's escaping cannot fail when writing a &str into a String.
    out.push_str(&serde_json::to_string(s).expect("strings always serialize"));
}

fn frame(
    event: &str,
    channel: Option<&str>,
    data_json: Option<&str>,
    user_id: Option<&str>,
) -> String {
    let mut o = String::with_capacity(
        32 + event.len() + channel.map_or(0, str::len) + data_json.map_or(0, str::len),
    );
    o.push_str("{\"event\":");
    push_str(&mut o, event);
    if let Some(c) = channel {
        o.push_str(",\"channel\":");
        push_str(&mut o, c);
    }
    if let Some(d) = data_json {
        o.push_str(",\"data\":");
        o.push_str(d);
    }
    if let Some(u) = user_id {
        o.push_str(",\"user_id\":");
        push_str(&mut o, u);
    }
    o.push('}');
    o
}

/// A protocol event whose `data` is a string holding `inner_json`.
fn string_data(event: &str, channel: Option<&str>, inner_json: &str) -> String {
    let mut d = String::new();
    push_str(&mut d, inner_json);
    frame(event, channel, Some(&d), None)
}

pub fn connection_established(socket_id: &str, activity_timeout: u64) -> String {
    let inner = format!(
        "{{\"socket_id\":{},\"activity_timeout\":{activity_timeout}}}",
        serde_json::to_string(socket_id).expect("strings always serialize")
    );
    string_data("pusher:connection_established", None, &inner)
}

pub fn error(code: Option<u16>, message: &str) -> String {
    let mut d = String::from("{\"code\":");
    match code {
        Some(c) => d.push_str(&c.to_string()),
        None => d.push_str("null"),
    }
    d.push_str(",\"message\":");
    push_str(&mut d, message);
    d.push('}');
    frame("pusher:error", None, Some(&d), None)
}

pub const PONG: &str = r#"{"event":"pusher:pong","data":"{}"}"#;
pub const PING: &str = r#"{"event":"pusher:ping","data":"{}"}"#;

pub fn subscription_succeeded(channel: &str) -> String {
    string_data(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        "{}",
    )
}

/// Presence snapshot: `members` are (user id, raw user_info JSON).
pub fn presence_succeeded<'a>(
    channel: &str,
    members: impl ExactSizeIterator<Item = (&'a str, &'a RawValue)> + Clone,
) -> String {
    let count = members.len();
    let mut inner = String::from("{\"presence\":{\"ids\":[");
    for (i, (id, _)) in members.clone().enumerate() {
        if i > 0 {
            inner.push(',');
        }
        push_str(&mut inner, id);
    }
    inner.push_str("],\"hash\":{");
    for (i, (id, info)) in members.enumerate() {
        if i > 0 {
            inner.push(',');
        }
        push_str(&mut inner, id);
        inner.push(':');
        inner.push_str(info.get());
    }
    inner.push_str(&format!("}},\"count\":{count}}}}}"));
    string_data(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        &inner,
    )
}

pub fn member_added(channel: &str, user_id: &str, user_info: &RawValue) -> String {
    let mut inner = String::from("{\"user_id\":");
    push_str(&mut inner, user_id);
    inner.push_str(",\"user_info\":");
    inner.push_str(user_info.get());
    inner.push('}');
    string_data("pusher_internal:member_added", Some(channel), &inner)
}

pub fn member_removed(channel: &str, user_id: &str) -> String {
    let mut inner = String::from("{\"user_id\":");
    push_str(&mut inner, user_id);
    inner.push('}');
    string_data("pusher_internal:member_removed", Some(channel), &inner)
}

/// An event published through the HTTP API: `data` is the publisher's string, re-quoted only.
pub fn channel_event(event: &str, channel: &str, data: &str) -> String {
    let mut d = String::with_capacity(data.len() + 2);
    push_str(&mut d, data);
    frame(event, Some(channel), Some(&d), None)
}

/// A relayed client event: `data` exactly as the sender wrote it; `user_id` on presence channels.
pub fn client_event(
    event: &str,
    channel: &str,
    data: Option<&RawValue>,
    user_id: Option<&str>,
) -> String {
    frame(event, Some(channel), data.map(RawValue::get), user_id)
}

pub fn signin_success(user_data: &str) -> String {
    let mut d = String::from("{\"user_data\":");
    push_str(&mut d, user_data);
    d.push('}');
    frame("pusher:signin_success", None, Some(&d), None)
}

pub fn cache_miss(channel: &str) -> String {
    frame("pusher:cache_miss", Some(channel), None, None)
}

pub fn subscription_count(channel: &str, count: usize) -> String {
    string_data(
        "pusher_internal:subscription_count",
        Some(channel),
        &format!("{{\"subscription_count\":{count}}}"),
    )
}

/// Watchlist statuses; empty groups are left out.
pub fn watchlist_events(online: &[&str], offline: &[&str]) -> String {
    let mut inner = String::from("{\"events\":[");
    let mut first = true;
    for (name, ids) in [("online", online), ("offline", offline)] {
        if ids.is_empty() {
            continue;
        }
        if !first {
            inner.push(',');
        }
        first = false;
        inner.push_str(&format!("{{\"name\":\"{name}\",\"user_ids\":["));
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                inner.push(',');
            }
            push_str(&mut inner, id);
        }
        inner.push_str("]}");
    }
    inner.push_str("]}");
    string_data("pusher_internal:watchlist_events", None, &inner)
}

/// The soketi-style channel-scoped error some clients (Laravel Echo `.error()`) listen for.
pub fn subscription_error(channel: &str, error: &str, status: u16) -> String {
    let mut d = String::from("{\"type\":\"AuthError\",\"error\":");
    push_str(&mut d, error);
    d.push_str(&format!(",\"status\":{status}}}"));
    frame("pusher:subscription_error", Some(channel), Some(&d), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn shapes() {
        assert_eq!(
            connection_established("1.2", 120),
            r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":120}"}"#
        );
        assert_eq!(
            error(Some(4001), "Application does not exist"),
            r#"{"event":"pusher:error","data":{"code":4001,"message":"Application does not exist"}}"#
        );
        assert_eq!(
            error(None, "x\"y"),
            r#"{"event":"pusher:error","data":{"code":null,"message":"x\"y"}}"#
        );
        assert_eq!(
            subscription_succeeded("a"),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"a","data":"{}"}"#
        );
        assert_eq!(
            channel_event("ev", "c", r#"{"t":"hi"}"#),
            r#"{"event":"ev","channel":"c","data":"{\"t\":\"hi\"}"}"#
        );
        let d = raw(r#"{"on":true}"#);
        assert_eq!(
            client_event("client-t", "presence-r", Some(&d), Some("1")),
            r#"{"event":"client-t","channel":"presence-r","data":{"on":true},"user_id":"1"}"#
        );
        assert_eq!(
            cache_miss("cache-x"),
            r#"{"event":"pusher:cache_miss","channel":"cache-x"}"#
        );
        assert_eq!(
            signin_success(r#"{"id":"1"}"#),
            r#"{"event":"pusher:signin_success","data":{"user_data":"{\"id\":\"1\"}"}}"#
        );
    }

    #[test]
    fn presence_snapshot() {
        let a = raw(r#"{"n":"A"}"#);
        let b = raw("null");
        let members = vec![("1", &*a), ("2", &*b)];
        let f = presence_succeeded("presence-r", members.into_iter());
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        let inner: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            inner,
            serde_json::json!({"presence":{"ids":["1","2"],"hash":{"1":{"n":"A"},"2":null},"count":2}})
        );
    }

    #[test]
    fn watchlist() {
        let f = watchlist_events(&["1"], &[]);
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(
            v["data"].as_str().unwrap(),
            r#"{"events":[{"name":"online","user_ids":["1"]}]}"#
        );
    }
}
