//! HTTP API request bodies: parsing and validation, all-or-nothing, with Pusher's wording.

use crate::channel::ChannelName;
use crate::limits::Limits;
use crate::socket_id::SocketId;
use serde_json::{Map, Value};

/// A client error of the HTTP API: status and one-line message (sent with a trailing newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
}

/// `info` attributes that a request may ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Info {
    pub user_count: bool,
    pub subscription_count: bool,
    pub cache: bool,
    /// Legacy alias some SDK docs still mention; answered like `subscription_count`.
    pub connection_count: bool,
}

impl Info {
    /// Parses a comma-separated list; unknown attributes are ignored.
    pub fn parse(s: &str) -> Self {
        let mut info = Self::default();
        for attr in s.split(',').map(str::trim) {
            match attr {
                "user_count" => info.user_count = true,
                "subscription_count" => info.subscription_count = true,
                "cache" => info.cache = true,
                "connection_count" => info.connection_count = true,
                _ => {}
            }
        }
        info
    }

    pub fn any(&self) -> bool {
        self.user_count || self.subscription_count || self.cache || self.connection_count
    }
}

/// One validated event to publish.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub name: String,
    pub data: String,
    /// Distinct target channels in request order.
    pub channels: Vec<ChannelName>,
    pub socket_id: Option<SocketId>,
    pub info: Option<Info>,
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::bad_request(
            "Invalid JSON body: expected a JSON object",
        )),
    }
}

fn required_string(obj: &Map<String, Value>, key: &str) -> Result<String, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(ApiError::bad_request(format!(
            "Missing required parameter: {key}"
        ))),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::bad_request(format!(
            "Expected {key} parameter to be a string"
        ))),
    }
}

/// Validates an event name.
pub fn check_event_name(name: &str, limits: &Limits) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::bad_request("Event name must not be empty"));
    }
    if name.chars().count() > limits.max_event_name_length {
        return Err(ApiError::bad_request(format!(
            "Event name too long (max {})",
            limits.max_event_name_length
        )));
    }
    if name.starts_with("pusher:") || name.starts_with("pusher_internal:") {
        return Err(ApiError::bad_request(format!(
            "Event name {name} is reserved: names starting with pusher: or pusher_internal: belong to the protocol"
        )));
    }
    Ok(())
}

/// Validates a channel name from a request.
pub fn check_channel(name: &str, limits: &Limits) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name, limits.max_channel_name_length)
        .map_err(|_| ApiError::bad_request(format!("Invalid channel name: {name}")))
}

fn check_socket_id(v: Option<&Value>) -> Result<Option<SocketId>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match SocketId::parse(s) {
            Some(id) => Ok(Some(id)),
            // Well formed but out of our range: no connection can have it, so nothing to exclude.
            None if SocketId::is_well_formed(s) => Ok(None),
            None => Err(ApiError::bad_request(format!("Invalid socket_id: {s}"))),
        },
        Some(other) => Err(ApiError::bad_request(format!("Invalid socket_id: {other}"))),
    }
}

fn check_data(data: &str, limits: &Limits) -> Result<(), ApiError> {
    if data.len() > limits.max_event_data_bytes {
        return Err(ApiError::new(
            413,
            format!(
                "Event data too large (max {} bytes)",
                limits.max_event_data_bytes
            ),
        ));
    }
    Ok(())
}

fn info_param(obj: &Map<String, Value>) -> Result<Option<Info>, ApiError> {
    match obj.get("info") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(Info::parse(s))),
        Some(_) => Err(ApiError::bad_request(
            "Expected info parameter to be a string",
        )),
    }
}

/// Parses `POST /apps/{id}/events`.
pub fn parse_trigger(body: &[u8], limits: &Limits) -> Result<Trigger, ApiError> {
    let obj = parse_object(body)?;
    let name = required_string(&obj, "name")?;
    let data = required_string(&obj, "data")?;
    let names: Vec<String> = match (obj.get("channels"), obj.get("channel")) {
        (Some(Value::Array(items)), _) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                ApiError::bad_request("Expected channels parameter to be an array of strings")
            })?,
        (Some(Value::Null) | None, Some(Value::String(c))) => vec![c.clone()],
        (Some(Value::Null) | None, None | Some(Value::Null)) => {
            return Err(ApiError::bad_request(
                "Missing required parameter: channels",
            ))
        }
        (Some(_), _) => {
            return Err(ApiError::bad_request(
                "Expected channels parameter to be an array of strings",
            ))
        }
        (_, Some(_)) => {
            return Err(ApiError::bad_request(
                "Expected channel parameter to be a string",
            ))
        }
    };
    if names.is_empty() {
        return Err(ApiError::bad_request(
            "Missing required parameter: channels (the list is empty)",
        ));
    }
    if names.len() > limits.max_event_channels {
        return Err(ApiError::bad_request(format!(
            "Cannot trigger to more than {} channels",
            limits.max_event_channels
        )));
    }
    check_event_name(&name, limits)?;
    let mut channels: Vec<ChannelName> = Vec::with_capacity(names.len());
    for n in &names {
        let c = check_channel(n, limits)?;
        if !channels.contains(&c) {
            channels.push(c);
        }
    }
    if channels.len() > 1 && channels.iter().any(ChannelName::is_encrypted) {
        return Err(ApiError::bad_request(
            "Cannot publish to multiple channels when using encrypted channels",
        ));
    }
    let socket_id = check_socket_id(obj.get("socket_id"))?;
    let info = info_param(&obj)?;
    check_data(&data, limits)?;
    Ok(Trigger {
        name,
        data,
        channels,
        socket_id,
        info,
    })
}

/// Validates the deprecated `POST /apps/{id}/channels/{c}/events`, whose event name and
/// socket id come from the query and whose body is the data, with the same rules as `/events`.
pub fn raw_trigger(
    channel: &str,
    name: Option<&str>,
    socket_id: Option<&str>,
    data: &str,
    limits: &Limits,
) -> Result<Trigger, ApiError> {
    let name = name.ok_or_else(|| ApiError::bad_request("Missing required parameter: name"))?;
    check_event_name(name, limits)?;
    let channel = check_channel(channel, limits)?;
    let socket_id = check_socket_id(socket_id.map(|s| Value::String(s.to_owned())).as_ref())?;
    check_data(data, limits)?;
    Ok(Trigger {
        name: name.to_owned(),
        data: data.to_owned(),
        channels: vec![channel],
        socket_id,
        info: None,
    })
}

/// Parses `POST /apps/{id}/batch_events`: the whole batch is validated before anything is published.
pub fn parse_batch(body: &[u8], limits: &Limits) -> Result<Vec<Trigger>, ApiError> {
    let obj = parse_object(body)?;
    let items = match obj.get("batch") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        _ => return Err(ApiError::bad_request("Missing required parameter: batch")),
    };
    if items.len() > limits.max_batch_size {
        return Err(ApiError::bad_request(format!(
            "Batch too large ({} > {})",
            items.len(),
            limits.max_batch_size
        )));
    }
    items
        .iter()
        .map(|item| {
            let Value::Object(e) = item else {
                return Err(ApiError::bad_request(
                    "Each batch element must be a JSON object",
                ));
            };
            let channel = match e.get("channel") {
                Some(Value::String(c)) => c,
                _ => return Err(ApiError::bad_request("Missing required parameter: channel")),
            };
            let name = required_string(e, "name")?;
            let data = required_string(e, "data")?;
            check_event_name(&name, limits)?;
            let channel = check_channel(channel, limits)?;
            let socket_id = check_socket_id(e.get("socket_id"))?;
            let info = info_param(e)?;
            check_data(&data, limits)?;
            Ok(Trigger {
                name,
                data,
                channels: vec![channel],
                socket_id,
                info,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l() -> Limits {
        Limits::default()
    }

    fn err(body: &str) -> ApiError {
        parse_trigger(body.as_bytes(), &l()).unwrap_err()
    }

    #[test]
    fn trigger_ok() {
        let t = parse_trigger(
            br#"{"name":"ev","data":"{\"x\":1}","channels":["a","presence-b","a"],"socket_id":"1.2","info":"user_count"}"#,
            &l(),
        )
        .unwrap();
        assert_eq!(t.channels.len(), 2);
        assert_eq!(t.socket_id, Some(SocketId::new(1, 2)));
        assert!(t.info.unwrap().user_count);
        let t = parse_trigger(
            br#"{"name":"App\\Events\\X","data":"","channel":"c"}"#,
            &l(),
        )
        .unwrap();
        assert_eq!(t.channels[0].as_str(), "c");
        assert_eq!(t.name, "App\\Events\\X");
    }

    #[test]
    fn trigger_errors() {
        assert_eq!(err("[]").status, 400);
        assert_eq!(
            err(r#"{"data":"x","channels":["a"]}"#).message,
            "Missing required parameter: name"
        );
        assert_eq!(
            err(r#"{"name":1,"data":"x","channels":["a"]}"#).message,
            "Expected name parameter to be a string"
        );
        assert_eq!(
            err(r#"{"name":"e","data":{},"channels":["a"]}"#).message,
            "Expected data parameter to be a string"
        );
        assert_eq!(
            err(r#"{"name":"e","data":"x"}"#).message,
            "Missing required parameter: channels"
        );
        let many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
        let body = serde_json::json!({"name":"e","data":"x","channels":many}).to_string();
        assert_eq!(
            err(&body).message,
            "Cannot trigger to more than 100 channels"
        );
        assert!(err(r#"{"name":"e","data":"x","channels":["bad name"]}"#)
            .message
            .starts_with("Invalid channel name: bad name"));
        assert!(err(r#"{"name":"pusher:x","data":"x","channels":["a"]}"#)
            .message
            .contains("reserved"));
        let long = "e".repeat(201);
        assert_eq!(
            err(&format!(
                r#"{{"name":"{long}","data":"x","channels":["a"]}}"#
            ))
            .message,
            "Event name too long (max 200)"
        );
        assert_eq!(
            err(r#"{"name":"e","data":"x","channels":["a"],"socket_id":"abc"}"#).message,
            "Invalid socket_id: abc"
        );
        let big = "x".repeat(10_241);
        assert_eq!(
            err(&format!(
                r#"{{"name":"e","data":"{big}","channels":["a"]}}"#
            ))
            .status,
            413
        );
        assert!(parse_trigger(
            format!(
                r#"{{"name":"e","data":"{}","channels":["a"]}}"#,
                "x".repeat(10_240)
            )
            .as_bytes(),
            &l()
        )
        .is_ok());
        assert_eq!(
            err(r##"{"name":"e","data":"x","channels":["private-encrypted-a","b"]}"##).message,
            "Cannot publish to multiple channels when using encrypted channels"
        );
        assert!(parse_trigger(
            br#"{"name":"e","data":"x","channels":["private-encrypted-a"]}"#,
            &l()
        )
        .is_ok());
        assert!(parse_trigger(
            br##"{"name":"e","data":"x","channels":["#server-to-user-1"]}"##,
            &l()
        )
        .is_ok());
    }

    #[test]
    fn raw_trigger_rules() {
        let t = raw_trigger("c", Some("e"), Some("1.2"), "d", &l()).unwrap();
        assert_eq!((t.name.as_str(), t.data.as_str()), ("e", "d"));
        assert_eq!(t.channels[0].as_str(), "c");
        assert!(t.socket_id.is_some());
        let e = raw_trigger("c", None, None, "d", &l()).unwrap_err();
        assert_eq!(e.message, "Missing required parameter: name");
        assert_eq!(
            raw_trigger("c", Some("e"), Some("x"), "d", &l())
                .unwrap_err()
                .message,
            "Invalid socket_id: x"
        );
        assert_eq!(
            raw_trigger("#", Some("e"), None, "d", &l())
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn batch() {
        let ok = parse_batch(
            br#"{"batch":[{"channel":"a","name":"e","data":"1"},{"channel":"b","name":"e","data":"2","info":"subscription_count"}]}"#,
            &l(),
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        let items: Vec<Value> = (0..11)
            .map(|_| serde_json::json!({"channel":"a","name":"e","data":"x"}))
            .collect();
        let body = serde_json::json!({ "batch": items }).to_string();
        assert_eq!(
            parse_batch(body.as_bytes(), &l()).unwrap_err().message,
            "Batch too large (11 > 10)"
        );
        assert_eq!(
            parse_batch(
                br#"{"batch":[{"channels":["a"],"name":"e","data":"x"}]}"#,
                &l()
            )
            .unwrap_err()
            .message,
            "Missing required parameter: channel"
        );
        assert_eq!(
            parse_batch(br#"{}"#, &l()).unwrap_err().message,
            "Missing required parameter: batch"
        );
    }

    #[test]
    fn info_attrs() {
        let i = Info::parse("user_count, subscription_count,cache,bogus");
        assert!(i.user_count && i.subscription_count && i.cache && !i.connection_count);
        assert!(!Info::parse("").any());
    }
}
