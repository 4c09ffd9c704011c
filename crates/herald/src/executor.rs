//! The HTTP API: request authentication and a transport-free executor. Routes (current and
//! deprecated) and the console are thin adapters onto [`Executor`].

use crate::cluster::redis::RedisAdapter;
use herald_core::{App, ChannelStats, Engine};
use herald_protocol::api::{self, ApiError, Info, Trigger};
use herald_protocol::{sign, time, ChannelName};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// Seconds a request timestamp may differ from the server clock.
pub const TIMESTAMP_WINDOW: i64 = 600;
const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";

/// A request as the authenticator needs it.
#[derive(Debug)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// Path as received (after the configured prefix was stripped).
    pub path: &'a str,
    pub raw_query: &'a str,
    pub body: &'a [u8],
}

/// Where the app comes from: the path's app id, or (pusher-http-python's terminate route) the key.
#[derive(Debug, Clone, Copy)]
pub enum AppRef<'a> {
    Id(&'a str),
    ByAuthKey,
}

/// Verifies a signed API request and returns its app plus the decoded query.
pub fn authenticate(
    engine: &Engine,
    app_ref: AppRef<'_>,
    req: &SignedRequest<'_>,
    now_unix: i64,
) -> Result<(Arc<App>, sign::QueryPairs), ApiError> {
    let pairs = sign::decode_query(req.raw_query);
    let param = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let unauthorized = |m: String| ApiError::new(401, m);

    let app = match app_ref {
        AppRef::Id(id) => engine
            .apps()
            .by_id(id)
            .ok_or_else(|| ApiError::new(404, format!("Unknown app id {id}")))?,
        AppRef::ByAuthKey => {
            let key = param("auth_key")
                .ok_or_else(|| unauthorized("Missing parameter: auth_key".into()))?;
            engine
                .apps()
                .by_key(key)
                .ok_or_else(|| unauthorized("Unknown auth_key".into()))?
        }
    };
    let key =
        param("auth_key").ok_or_else(|| unauthorized("Missing parameter: auth_key".into()))?;
    if !app.has_key(key) {
        return Err(unauthorized("Unknown auth_key".into()));
    }
    match param("auth_version") {
        None => return Err(unauthorized("Version required".into())),
        Some("1.0") => {}
        Some(_) => return Err(unauthorized("Version not supported".into())),
    }
    let ts = param("auth_timestamp").ok_or_else(|| unauthorized("Timestamp required".into()))?;
    let ts: i64 = ts.trim().parse().map_err(|_| {
        unauthorized(format!(
            "Timestamp invalid: {ts} is not a Unix time in seconds"
        ))
    })?;
    if (now_unix - ts).abs() >= TIMESTAMP_WINDOW {
        return Err(unauthorized(format!(
            "Timestamp expired: Given timestamp ({}) not within {TIMESTAMP_WINDOW}s of server time ({})",
            time::iso8601(ts),
            time::iso8601(now_unix)
        )));
    }
    match param("body_md5") {
        None if !req.body.is_empty() => {
            return Err(unauthorized("Missing parameter: body_md5".into()));
        }
        None => {}
        Some(given) => {
            let actual = if req.body.is_empty() {
                EMPTY_MD5.to_owned()
            } else {
                sign::md5_hex(req.body)
            };
            if !given.eq_ignore_ascii_case(&actual) {
                return Err(unauthorized(format!(
                    "Invalid body_md5: the MD5 of the body is {actual}, but body_md5 is {given}"
                )));
            }
        }
    }
    let given = param("auth_signature")
        .ok_or_else(|| unauthorized("Missing parameter: auth_signature".into()))?;
    let given_lc = given.to_ascii_lowercase();
    let to_sign = sign::request_string_to_sign(req.method, req.path, &pairs);
    let mut ok = sign::ct_eq(&sign::hmac_hex(&app.secret, to_sign.as_bytes()), &given_lc);
    if !ok && req.path.contains('%') {
        // SDKs sign unencoded paths; an HTTP stack may have escaped it on the way.
        let decoded = sign::percent_decode(req.path, false);
        let alt = sign::request_string_to_sign(req.method, &decoded, &pairs);
        ok = sign::ct_eq(&sign::hmac_hex(&app.secret, alt.as_bytes()), &given_lc);
    }
    if !ok {
        return Err(unauthorized(format!(
            "Invalid signature: you should have sent HmacSHA256Hex(\"{}\", your_secret_key), but you sent \"{given}\"",
            to_sign.replace('\n', "\\n")
        )));
    }
    if !app.enabled {
        return Err(ApiError::new(403, "Application disabled"));
    }
    Ok((app, pairs))
}

/// Runs API operations against the engine; knows nothing of HTTP. With a cluster adapter, counts
/// come from the cluster's shared state instead of this node's.
#[derive(Debug, Clone)]
pub struct Executor {
    engine: Engine,
    cluster: Option<RedisAdapter>,
}

impl Executor {
    pub fn new(engine: Engine, cluster: Option<RedisAdapter>) -> Self {
        Self { engine, cluster }
    }

    /// Counts of one channel: cluster-wide when clustered (this node's if Redis is unreachable).
    pub async fn stats(&self, app: &App, ch: &ChannelName) -> ChannelStats {
        let mut s = self.engine.stats(&app.id, ch);
        if let Some(c) = &self.cluster {
            match c.channel_count(&app.id, ch.as_str()).await {
                Ok((subs, users)) => {
                    s.subscription_count = subs;
                    s.user_count = users;
                    s.occupied = subs > 0;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster read failed; answering with this node's counts")
                }
            }
        }
        s
    }

    async fn channel_list(&self, app: &App, prefix: &str) -> Vec<(String, ChannelStats)> {
        if let Some(c) = &self.cluster {
            match c.channel_counts(&app.id).await {
                Ok(counts) => {
                    let mut out: Vec<(String, ChannelStats)> = Vec::new();
                    for (name, n) in counts
                        .into_iter()
                        .filter(|(n, c)| *c > 0 && n.starts_with(prefix))
                    {
                        let user_count = if name.starts_with("presence-") {
                            c.channel_count(&app.id, &name).await.map_or(0, |(_, u)| u)
                        } else {
                            0
                        };
                        out.push((
                            name,
                            ChannelStats {
                                occupied: true,
                                subscription_count: n,
                                user_count,
                                cache: None,
                            },
                        ));
                    }
                    out.sort_by(|a, b| a.0.cmp(&b.0));
                    return out;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster read failed; answering with this node's channels")
                }
            }
        }
        self.engine
            .channels(&app.id, prefix)
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect()
    }

    async fn member_ids(&self, app: &App, ch: &ChannelName) -> Vec<String> {
        if let Some(c) = &self.cluster {
            match c.members(&app.id, ch.as_str()).await {
                Ok(m) => return m.into_iter().map(|(id, _)| id).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cluster read failed; answering with this node's members")
                }
            }
        }
        self.engine
            .members(&app.id, ch)
            .iter()
            .map(|id| id.to_string())
            .collect()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn check_info(app: &App, info: Option<Info>) -> Result<(), ApiError> {
        if info.is_some_and(|i| i.subscription_count) && !app.enable_subscription_count {
            return Err(ApiError::bad_request(
                "subscription_count is not enabled for this app",
            ));
        }
        Ok(())
    }

    fn publish(&self, app: &App, t: &Trigger) {
        let ttl = Duration::from_secs(app.limits.cache_ttl);
        for ch in &t.channels {
            self.engine
                .publish(&app.id, ch, &t.name, &t.data, t.socket_id, ttl);
        }
    }

    /// Attributes of `info` that apply to `channel`.
    fn info_object(
        &self,
        app: &App,
        channel: &ChannelName,
        info: Info,
        s: &ChannelStats,
    ) -> Map<String, Value> {
        let _ = app;
        let mut o = Map::new();
        if info.user_count && channel.is_presence() {
            o.insert("user_count".into(), json!(s.user_count));
        }
        if info.subscription_count {
            o.insert("subscription_count".into(), json!(s.subscription_count));
        }
        o
    }

    /// `POST /events`.
    pub async fn trigger(&self, app: &App, body: &[u8]) -> Result<Value, ApiError> {
        let t = api::parse_trigger(body, &app.limits)?;
        Self::check_info(app, t.info)?;
        self.publish(app, &t);
        Ok(match t.info.filter(Info::any) {
            None => json!({}),
            Some(info) => {
                let mut channels = Map::new();
                for ch in &t.channels {
                    let s = self.stats(app, ch).await;
                    channels.insert(
                        ch.to_string(),
                        Value::Object(self.info_object(app, ch, info, &s)),
                    );
                }
                json!({ "channels": channels })
            }
        })
    }

    /// `POST /batch_events`.
    pub async fn trigger_batch(&self, app: &App, body: &[u8]) -> Result<Value, ApiError> {
        let batch = api::parse_batch(body, &app.limits)?;
        for t in &batch {
            Self::check_info(app, t.info)?;
        }
        for t in &batch {
            self.publish(app, t);
        }
        if !batch.iter().any(|t| t.info.is_some()) {
            return Ok(json!({}));
        }
        let mut items: Vec<Value> = Vec::with_capacity(batch.len());
        for t in &batch {
            items.push(match t.info {
                None => json!({}),
                Some(info) => {
                    let ch = &t.channels[0];
                    let s = self.stats(app, ch).await;
                    Value::Object(self.info_object(app, ch, info, &s))
                }
            });
        }
        Ok(json!({ "batch": items }))
    }

    /// Deprecated `POST /channels/{c}/events`: name (and socket_id) from the query, body is data.
    pub fn trigger_raw(
        &self,
        app: &App,
        channel: &str,
        query: &[(String, String)],
        body: &[u8],
    ) -> Result<Value, ApiError> {
        let data = std::str::from_utf8(body).map_err(|_| {
            ApiError::bad_request("Request body must be valid UTF-8 (it is the event data)")
        })?;
        let param = |k: &str| {
            query
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let mut obj = Map::new();
        obj.insert("channel".into(), json!(channel));
        obj.insert("data".into(), json!(data));
        match param("name") {
            Some(n) => obj.insert("name".into(), json!(n)),
            None => return Err(ApiError::bad_request("Missing required parameter: name")),
        };
        if let Some(s) = param("socket_id") {
            obj.insert("socket_id".into(), json!(s));
        }
        let body = serde_json::to_vec(&obj).expect("JSON values serialize");
        let t = api::parse_trigger(&body, &app.limits)?;
        self.publish(app, &t);
        Ok(json!({}))
    }

    /// `GET /channels`.
    pub async fn channels(&self, app: &App, query: &[(String, String)]) -> Result<Value, ApiError> {
        let param = |k: &str| {
            query
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let prefix = param("filter_by_prefix").unwrap_or("");
        let info = Info::parse(param("info").unwrap_or(""));
        if info.user_count && !prefix.starts_with("presence-") {
            return Err(ApiError::bad_request(
                "user_count may only be requested for presence channels - please supply filter_by_prefix begining with presence-",
            ));
        }
        Self::check_info(app, Some(info))?;
        let channels: Map<String, Value> = self
            .channel_list(app, prefix)
            .await
            .into_iter()
            .map(|(name, s)| {
                let mut o = Map::new();
                if info.user_count {
                    o.insert("user_count".into(), json!(s.user_count));
                }
                if info.subscription_count {
                    o.insert("subscription_count".into(), json!(s.subscription_count));
                }
                (name.to_string(), Value::Object(o))
            })
            .collect();
        Ok(json!({ "channels": channels }))
    }

    /// `GET /channels/{c}`.
    pub async fn channel(
        &self,
        app: &App,
        name: &str,
        query: &[(String, String)],
    ) -> Result<Value, ApiError> {
        let ch = api::check_channel(name, &app.limits)?;
        let param = |k: &str| {
            query
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let info = Info::parse(param("info").unwrap_or(""));
        if info.user_count && !ch.is_presence() {
            return Err(ApiError::bad_request(
                "Cannot retrieve the user count unless the channel is a presence channel",
            ));
        }
        if info.cache && !ch.is_cache() {
            return Err(ApiError::bad_request(
                "Cannot retrieve cache unless the channel is a cache channel",
            ));
        }
        Self::check_info(app, Some(info))?;
        let s = self.stats(app, &ch).await;
        let mut o = Map::new();
        o.insert("occupied".into(), json!(s.occupied));
        if info.user_count {
            o.insert("user_count".into(), json!(s.user_count));
        }
        if info.subscription_count {
            o.insert("subscription_count".into(), json!(s.subscription_count));
        }
        if info.connection_count {
            o.insert("connection_count".into(), json!(s.subscription_count));
        }
        if info.cache {
            let v = s.cache.map_or(
                Value::Null,
                |(data, ttl)| json!({ "data": &*data, "ttl": ttl }),
            );
            o.insert("cache".into(), v);
        }
        Ok(Value::Object(o))
    }

    /// Deprecated `GET /channels/{c}/stats`.
    pub async fn channel_stats(&self, app: &App, name: &str) -> Result<Value, ApiError> {
        let ch = api::check_channel(name, &app.limits)?;
        let s = self.stats(app, &ch).await;
        let mut o = Map::new();
        o.insert("occupied".into(), json!(s.occupied));
        if ch.is_presence() {
            o.insert("user_count".into(), json!(s.user_count));
        }
        o.insert("connection_count".into(), json!(s.subscription_count));
        Ok(Value::Object(o))
    }

    /// `GET /channels/{c}/users`.
    pub async fn users(&self, app: &App, name: &str) -> Result<Value, ApiError> {
        let ch = api::check_channel(name, &app.limits)?;
        if !ch.is_presence() {
            return Err(ApiError::bad_request(
                "Users can only be retrieved for presence channels",
            ));
        }
        let users: Vec<Value> = self
            .member_ids(app, &ch)
            .await
            .iter()
            .map(|id| json!({ "id": id }))
            .collect();
        Ok(json!({ "users": users }))
    }

    /// `POST /users/{id}/terminate_connections`.
    pub fn terminate(&self, app: &App, user_id: &str) -> Result<Value, ApiError> {
        if user_id.is_empty() {
            return Err(ApiError::bad_request("Missing user id"));
        }
        if user_id.len() > 200 || !user_id.bytes().all(herald_protocol::channel::is_name_char) {
            return Err(ApiError::bad_request(format!("Invalid user id: {user_id}")));
        }
        self.engine.terminate_user(&app.id, user_id);
        Ok(json!({}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{EngineConfig, LocalAdapter, StaticAppStore};

    fn engine() -> Engine {
        let mut app = App::default_app();
        app.id = "3".into();
        app.key = "278d425bdf160c739803".into();
        app.secret = "7ad3773142a6692b25b8".into();
        let mut off = App::default_app();
        off.id = "4".into();
        off.key = "k4".into();
        off.enabled = false;
        Engine::new(
            Arc::new(StaticAppStore::new(vec![app, off]).unwrap()),
            Arc::new(LocalAdapter::new()),
            vec![],
            EngineConfig::default(),
        )
    }

    const BODY: &str = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    const Q: &str = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";

    fn auth(e: &Engine, q: &str, body: &str, now: i64) -> Result<String, ApiError> {
        let r = SignedRequest {
            method: "POST",
            path: "/apps/3/events",
            raw_query: q,
            body: body.as_bytes(),
        };
        authenticate(e, AppRef::Id("3"), &r, now).map(|(a, _)| a.id.clone())
    }

    #[test]
    fn docs_example_authenticates() {
        let e = engine();
        assert_eq!(auth(&e, Q, BODY, 1_353_088_179).unwrap(), "3");
        assert_eq!(auth(&e, Q, BODY, 1_353_088_179 + 599).unwrap(), "3");
    }

    #[test]
    fn failures() {
        let e = engine();
        let err = auth(&e, Q, BODY, 1_353_088_179 + 600).unwrap_err();
        assert_eq!(err.status, 401);
        assert!(err
            .message
            .starts_with("Timestamp expired: Given timestamp (2012-11-16T17:49:39Z)"));
        let err = auth(&e, Q, "{}", 1_353_088_179).unwrap_err();
        assert!(err.message.starts_with("Invalid body_md5"));
        let bad = Q.replace("da4548", "000000");
        let err = auth(&e, &bad, BODY, 1_353_088_179).unwrap_err();
        assert!(err.message.starts_with(
            "Invalid signature: you should have sent HmacSHA256Hex(\"POST\\n/apps/3/events\\nauth_key="
        ));
        assert_eq!(
            auth(&e, "", BODY, 0).unwrap_err().message,
            "Missing parameter: auth_key"
        );
        let err = auth(
            &e,
            &Q.replace("auth_key=278d425bdf160c739803", "auth_key=nope"),
            BODY,
            0,
        )
        .unwrap_err();
        assert_eq!(err.message, "Unknown auth_key");
        let err = auth(
            &e,
            &Q.replace("auth_version=1.0", "auth_version=2.0"),
            BODY,
            0,
        )
        .unwrap_err();
        assert_eq!(err.message, "Version not supported");
        let r = SignedRequest {
            method: "GET",
            path: "/apps/9/channels",
            raw_query: "",
            body: b"",
        };
        assert_eq!(
            authenticate(&e, AppRef::Id("9"), &r, 0).unwrap_err().status,
            404
        );
    }

    #[test]
    fn disabled_app_is_403_after_a_valid_signature() {
        let e = engine();
        let mut pairs: Vec<(String, String)> = vec![
            ("auth_key".into(), "k4".into()),
            ("auth_timestamp".into(), "100".into()),
            ("auth_version".into(), "1.0".into()),
        ];
        let sig = sign::sign_request("app-secret", "GET", "/apps/4/channels", &pairs);
        pairs.push(("auth_signature".into(), sig));
        let q: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let q = q.join("&");
        let r = SignedRequest {
            method: "GET",
            path: "/apps/4/channels",
            raw_query: &q,
            body: b"",
        };
        assert_eq!(
            authenticate(&e, AppRef::Id("4"), &r, 100)
                .unwrap_err()
                .status,
            403
        );
    }
}
