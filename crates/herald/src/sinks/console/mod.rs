//! The built-in debug console at `/console` (off unless `console.token` is set).
//!
//! Three parts:
//! - [`Console`], a [`LifecycleSink`] that turns engine events into JSON lines for attached
//!   viewers. With nobody watching, `emit` returns after one atomic load: nothing is formatted.
//!   Each app has its own bounded broadcast buffer; a viewer that falls behind loses the oldest
//!   lines of its own buffer and is told how many (`{"type":"skipped","count":N}`).
//! - The routes: the page (`/console`, token required), its login prompt and static assets
//!   (public: they hold no data), and a small JSON API under `/console/api/` (token required)
//!   that reads and publishes through the same [`Executor`](crate::executor::Executor) as the HTTP API,
//!   plus the server-sent-events feed `/console/api/feed?app=ID`.
//! - The token check: `Authorization: Bearer <token>` or `?token=<token>`, compared in constant
//!   time. Wrong or missing token → 401; console off (no token configured) → 404.

use crate::server::Shared;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use herald_core::{App, LifecycleEvent, LifecycleSink};
use herald_protocol::api::ApiError;
use herald_protocol::sign;
use parking_lot::RwLock;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Lines buffered per app for its viewers; a viewer further behind skips the oldest.
pub const FEED_CAPACITY: usize = 1024;
/// Client event data shown in the log is cut to this many bytes.
pub const DATA_PREVIEW_BYTES: usize = 256;
/// How often an idle feed checks whether the server is draining.
const DRAIN_CHECK: Duration = Duration::from_secs(1);

/// Receives lifecycle events for attached console viewers.
#[derive(Debug, Default)]
pub struct Console {
    /// Attached viewers over all apps: the zero-cost fast path of `emit`.
    viewers: AtomicUsize,
    /// One bounded broadcast buffer of JSON lines per watched app.
    feeds: RwLock<HashMap<Arc<str>, broadcast::Sender<Arc<str>>>>,
    /// Ends every feed (server shutdown).
    closed: CancellationToken,
}

/// One attached viewer of one app's feed; detaches when dropped.
#[derive(Debug)]
pub struct Viewer {
    rx: broadcast::Receiver<Arc<str>>,
    console: Arc<Console>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.console.viewers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a viewer reads next.
#[derive(Debug, PartialEq, Eq)]
pub enum FeedItem {
    /// One JSON line.
    Line(Arc<str>),
    /// The viewer fell behind and this many lines were dropped from its buffer.
    Skipped(u64),
}

impl Viewer {
    /// The next line, `None` once the console is closed.
    pub async fn next(&mut self) -> Option<FeedItem> {
        match self.rx.recv().await {
            Ok(line) => Some(FeedItem::Line(line)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(FeedItem::Skipped(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Console {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of attached viewers (all apps).
    pub fn viewers(&self) -> usize {
        self.viewers.load(Ordering::Relaxed)
    }

    /// Attaches a viewer to `app`'s feed.
    pub fn attach(self: &Arc<Self>, app: &str) -> Viewer {
        self.viewers.fetch_add(1, Ordering::Relaxed);
        let mut feeds = self.feeds.write();
        // Forget the buffers of apps nobody watches any more.
        feeds.retain(|_, tx| tx.receiver_count() > 0);
        let tx = feeds
            .entry(Arc::from(app))
            .or_insert_with(|| broadcast::channel(FEED_CAPACITY).0);
        Viewer {
            rx: tx.subscribe(),
            console: self.clone(),
        }
    }

    /// Ends every feed; viewers see the end of their stream.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// The sender for `app` when someone watches it. Takes no lock while nobody watches anything.
    fn watched(&self, app: &str) -> Option<broadcast::Sender<Arc<str>>> {
        if self.viewers.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let feeds = self.feeds.read();
        feeds.get(app).filter(|tx| tx.receiver_count() > 0).cloned()
    }

    /// Records one webhook request (for the webhook module): `body` is the JSON it sent,
    /// `outcome` the HTTP status of the answer or the transport error.
    pub fn webhook(&self, app: &str, url: &str, body: &str, outcome: Result<u16, &str>) {
        let Some(tx) = self.watched(app) else {
            return;
        };
        let _ = tx.send(webhook_json(url, body, outcome, now_ms()).into());
    }
}

impl LifecycleSink for Console {
    fn emit(&self, event: &LifecycleEvent) {
        let Some(tx) = self.watched(event_app(event)) else {
            return;
        };
        let _ = tx.send(event_json(event, now_ms()).into());
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The app an event belongs to.
pub fn event_app(event: &LifecycleEvent) -> &str {
    use LifecycleEvent as E;
    match event {
        E::Connected { app, .. }
        | E::Disconnected { app, .. }
        | E::Subscribed { app, .. }
        | E::Unsubscribed { app, .. }
        | E::ChannelOccupied { app, .. }
        | E::ChannelVacated { app, .. }
        | E::MemberAdded { app, .. }
        | E::MemberRemoved { app, .. }
        | E::ClientEvent { app, .. }
        | E::CacheMiss { app, .. }
        | E::SubscriptionCount { app, .. }
        | E::ApiPublish { app, .. } => app,
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn preview(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One log line: `{"ts":<unix ms>,"type":"…", …}`.
pub fn event_json(event: &LifecycleEvent, ts_ms: u64) -> String {
    use LifecycleEvent as E;
    let mut o = Map::new();
    o.insert("ts".into(), json!(ts_ms));
    let mut put = |k: &str, v: Value| {
        o.insert(k.into(), v);
    };
    match event {
        E::Connected { socket_id, .. } => {
            put("type", json!("connected"));
            put("socket_id", json!(socket_id.to_string()));
        }
        E::Disconnected { socket_id, .. } => {
            put("type", json!("disconnected"));
            put("socket_id", json!(socket_id.to_string()));
        }
        E::Subscribed {
            channel, socket_id, ..
        } => {
            put("type", json!("subscribed"));
            put("channel", json!(&**channel));
            put("socket_id", json!(socket_id.to_string()));
        }
        E::Unsubscribed {
            channel, socket_id, ..
        } => {
            put("type", json!("unsubscribed"));
            put("channel", json!(&**channel));
            put("socket_id", json!(socket_id.to_string()));
        }
        E::ChannelOccupied { channel, .. } => {
            put("type", json!("occupied"));
            put("channel", json!(&**channel));
        }
        E::ChannelVacated { channel, .. } => {
            put("type", json!("vacated"));
            put("channel", json!(&**channel));
        }
        E::MemberAdded {
            channel, user_id, ..
        } => {
            put("type", json!("member_added"));
            put("channel", json!(&**channel));
            put("user_id", json!(&**user_id));
        }
        E::MemberRemoved {
            channel, user_id, ..
        } => {
            put("type", json!("member_removed"));
            put("channel", json!(&**channel));
            put("user_id", json!(&**user_id));
        }
        E::ClientEvent {
            channel,
            event,
            data,
            socket_id,
            user_id,
            ..
        } => {
            put("type", json!("client_event"));
            put("channel", json!(&**channel));
            put("event", json!(&**event));
            put("socket_id", json!(socket_id.to_string()));
            put(
                "user_id",
                user_id.as_deref().map_or(Value::Null, |u| json!(u)),
            );
            put("data_len", json!(data.len()));
            put("data", json!(preview(data, DATA_PREVIEW_BYTES)));
        }
        E::CacheMiss { channel, .. } => {
            put("type", json!("cache_miss"));
            put("channel", json!(&**channel));
        }
        E::SubscriptionCount { channel, count, .. } => {
            put("type", json!("subscription_count"));
            put("channel", json!(&**channel));
            put("count", json!(count));
        }
        E::ApiPublish {
            channel,
            event,
            data_len,
            except,
            ..
        } => {
            put("type", json!("api_publish"));
            put("channel", json!(&**channel));
            put("event", json!(&**event));
            put("data_len", json!(data_len));
            put(
                "except",
                except.map_or(Value::Null, |s| json!(s.to_string())),
            );
        }
    }
    Value::Object(o).to_string()
}

/// A webhook delivery line: the events of `body` (name and channel), the URL and the result.
/// The line's `channel` is set when every event is about the same channel.
pub fn webhook_json(url: &str, body: &str, outcome: Result<u16, &str>, ts_ms: u64) -> String {
    let (kind, result) = match outcome {
        Ok(status) if (200..300).contains(&status) => ("webhook_sent", json!(status)),
        Ok(status) => ("webhook_failed", json!(status)),
        Err(e) => ("webhook_failed", json!(e)),
    };
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let events: Vec<Value> = parsed
        .get("events")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|e| json!({ "name": e.get("name"), "channel": e.get("channel") }))
                .collect()
        })
        .unwrap_or_default();
    let mut o =
        json!({ "ts": ts_ms, "type": kind, "url": url, "events": events, "result": result });
    let mut channels = events.iter().filter_map(|e| e["channel"].as_str());
    if let Some(first) = channels.next() {
        if channels.all(|c| c == first) {
            o["channel"] = json!(first);
        }
    }
    o.to_string()
}

/// The line a lagging viewer gets in place of what it missed.
pub fn skipped_json(count: u64, ts_ms: u64) -> String {
    json!({ "ts": ts_ms, "type": "skipped", "count": count }).to_string()
}

// ---------------------------------------------------------------------------------------------
// Access

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token configured: the console does not exist.
    Off,
    Denied,
    Granted,
}

/// Checks the `Authorization` header value or the raw query against the configured token.
pub fn check_token(
    configured: &str,
    authorization: Option<&str>,
    raw_query: Option<&str>,
) -> Access {
    if configured.is_empty() {
        return Access::Off;
    }
    let bearer = authorization.and_then(|v| {
        let (scheme, rest) = v.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_owned())
    });
    let query = || {
        sign::decode_query(raw_query.unwrap_or(""))
            .into_iter()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v)
    };
    match bearer.or_else(query) {
        Some(given) if sign::ct_eq(configured, &given) => Access::Granted,
        _ => Access::Denied,
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "404 NOT FOUND\n")
}

fn unauthorized(path_prefix: &str) -> Response {
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        format!(
            "401 Unauthorized: the console needs its admin token. Sign in at {path_prefix}/console/login, \
             or send `Authorization: Bearer <token>` or `?token=<token>`.\n"
        ),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"herald-console\""),
    );
    r
}

/// Extractor: the console is on (a token is configured). Rejects with 404 otherwise.
#[derive(Debug)]
struct Enabled;

impl FromRequestParts<Arc<Shared>> for Enabled {
    type Rejection = Response;

    async fn from_request_parts(_: &mut Parts, s: &Arc<Shared>) -> Result<Self, Response> {
        if s.config.console.token.is_empty() {
            Err(not_found())
        } else {
            Ok(Enabled)
        }
    }
}

/// Extractor: the request carries the admin token. 404 when the console is off, else 401.
#[derive(Debug)]
struct Admin;

impl FromRequestParts<Arc<Shared>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Shared>) -> Result<Self, Response> {
        let auth = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match check_token(&s.config.console.token, auth, parts.uri.query()) {
            Access::Off => Err(not_found()),
            Access::Denied => Err(unauthorized(&s.config.server.path_prefix)),
            Access::Granted => Ok(Admin),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pages and assets

const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");

/// Static assets: (file name, content type, contents).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    (
        "main.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/main.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/api.js"),
    ),
    (
        "log.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/log.js"),
    ),
    (
        "state.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/state.js"),
    ),
    (
        "sender.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/sender.js"),
    ),
    (
        "login.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/login.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("assets/favicon.svg"),
    ),
];

const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A page with `{{BASE}}` (the console's URL path, path prefix included) filled in.
fn page(shared: &Shared, template: &str) -> Response {
    let base = html_escape(&format!("{}/console", shared.config.server.path_prefix));
    let mut r = (StatusCode::OK, template.replace("{{BASE}}", &base)).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn index(_: Admin, State(s): State<Arc<Shared>>) -> Response {
    page(&s, INDEX_HTML)
}

async fn login(_: Enabled, State(s): State<Arc<Shared>>) -> Response {
    page(&s, LOGIN_HTML)
}

async fn asset(_: Enabled, Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, ctype, body)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, *ctype),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *body,
        )
            .into_response(),
        None => not_found(),
    }
}

// ---------------------------------------------------------------------------------------------
// API

fn api_error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    text(status, format!("{}\n", e.message))
}

fn json_ok(v: &Value) -> Response {
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A query parameter from the raw query.
fn param(query: Option<&str>, name: &str) -> Option<String> {
    sign::decode_query(query.unwrap_or(""))
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The app named by `?app=`.
fn app_of(shared: &Shared, query: Option<&str>) -> Result<Arc<App>, ApiError> {
    let id = param(query, "app").ok_or_else(|| ApiError::bad_request("Missing parameter: app"))?;
    shared
        .engine
        .apps()
        .by_id(&id)
        .ok_or_else(|| ApiError::new(404, format!("Unknown app id {id}")))
}

/// `GET /console/api/apps`: the apps to choose from.
async fn api_apps(_: Admin, State(s): State<Arc<Shared>>) -> Response {
    let mut apps = s.engine.apps().all();
    apps.sort_by(|a, b| a.id.cmp(&b.id));
    let list: Vec<Value> = apps
        .iter()
        .map(|a| {
            json!({
                "id": a.id,
                "key": a.key,
                "enabled": a.enabled,
                "connections": s.engine.connection_count(&a.id),
            })
        })
        .collect();
    json_ok(&json!({ "apps": list }))
}

/// `GET /console/api/state?app=ID`: connections and channels, read through the executor.
async fn api_state(_: Admin, State(s): State<Arc<Shared>>, uri: axum::http::Uri) -> Response {
    let app = match app_of(&s, uri.query()) {
        Ok(a) => a,
        Err(e) => return api_error(e),
    };
    match state_json(&s, &app).await {
        Ok(v) => json_ok(&v),
        Err(e) => api_error(e),
    }
}

async fn state_json(s: &Shared, app: &App) -> Result<Value, ApiError> {
    let x = &s.executor;
    let info: Vec<(String, String)> = if app.enable_subscription_count {
        vec![("info".into(), "subscription_count".into())]
    } else {
        Vec::new()
    };
    let listed = x.channels(app, &info).await?;
    let mut channels: Vec<Value> = Vec::new();
    if let Some(map) = listed.get("channels").and_then(Value::as_object) {
        for (name, attrs) in map {
            let mut o = Map::new();
            o.insert("name".into(), json!(name));
            o.insert(
                "subscription_count".into(),
                attrs
                    .get("subscription_count")
                    .cloned()
                    .unwrap_or(Value::Null),
            );
            if name.starts_with("presence-") {
                let q = [("info".to_owned(), "user_count".to_owned())];
                let users = x
                    .channel(app, name, &q)
                    .await
                    .ok()
                    .and_then(|v| v.get("user_count").cloned());
                o.insert("user_count".into(), users.unwrap_or(Value::Null));
            }
            channels.push(Value::Object(o));
        }
    }
    channels.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(json!({
        "app": app.id,
        "connections": s.engine.connection_count(&app.id),
        "subscription_count_enabled": app.enable_subscription_count,
        "channels": channels,
    }))
}

/// `GET /console/api/members?app=ID&channel=presence-…`.
async fn api_members(_: Admin, State(s): State<Arc<Shared>>, uri: axum::http::Uri) -> Response {
    let app = match app_of(&s, uri.query()) {
        Ok(a) => a,
        Err(e) => return api_error(e),
    };
    let channel = param(uri.query(), "channel").unwrap_or_default();
    match s.executor.users(&app, &channel).await {
        Ok(v) => json_ok(&v),
        Err(e) => api_error(e),
    }
}

/// `POST /console/api/events?app=ID`: the body of `POST /apps/{id}/events`.
async fn api_events(
    _: Admin,
    State(s): State<Arc<Shared>>,
    uri: axum::http::Uri,
    body: Body,
) -> Response {
    let app = match app_of(&s, uri.query()) {
        Ok(a) => a,
        Err(e) => return api_error(e),
    };
    let limit = s.config.server.max_request_body_bytes;
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large (max {limit} bytes)\n"),
        );
    };
    match s.executor.trigger(&app, &body).await {
        Ok(v) => json_ok(&v),
        Err(e) => api_error(e),
    }
}

/// State of one SSE feed.
struct Feed {
    viewer: Viewer,
    shared: Arc<Shared>,
    tick: tokio::time::Interval,
    hello: Option<String>,
}

fn sse_data(line: &str) -> Result<Event, Infallible> {
    Ok(Event::default().data(line))
}

/// `GET /console/api/feed?app=ID`: the live log as server-sent events, one JSON line each.
async fn api_feed(_: Admin, State(s): State<Arc<Shared>>, uri: axum::http::Uri) -> Response {
    let app = match app_of(&s, uri.query()) {
        Ok(a) => a,
        Err(e) => return api_error(e),
    };
    // Attach before answering, so every event after the client sees the response is in the feed.
    let viewer = s.console.attach(&app.id);
    let hello =
        json!({ "ts": now_ms(), "type": "hello", "app": app.id, "viewers": s.console.viewers() });
    let mut tick = tokio::time::interval(DRAIN_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = Feed {
        viewer,
        shared: s.clone(),
        tick,
        hello: Some(hello.to_string()),
    };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        if let Some(h) = f.hello.take() {
            return Some((sse_data(&h), f));
        }
        let closed = f.shared.console.closed.clone();
        loop {
            tokio::select! {
                item = f.viewer.next() => return match item? {
                    FeedItem::Line(line) => Some((sse_data(&line), f)),
                    FeedItem::Skipped(n) => Some((sse_data(&skipped_json(n, now_ms())), f)),
                },
                () = closed.cancelled() => return None,
                _ = f.tick.tick() => if f.shared.draining() { return None },
            }
        }
    });
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// Routes under `/console`.
pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/login", get(login))
        .route("/console/assets/{file}", get(asset))
        .route("/console/api/apps", get(api_apps))
        .route("/console/api/state", get(api_state))
        .route("/console/api/members", get(api_members))
        .route("/console/api/events", axum::routing::post(api_events))
        .route("/console/api/feed", get(api_feed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::SocketId;

    fn connected(app: &str, seq: u64) -> LifecycleEvent {
        LifecycleEvent::Connected {
            app: Arc::from(app),
            socket_id: SocketId::new(1, seq),
        }
    }

    #[test]
    fn token_check() {
        assert_eq!(
            check_token("", Some("Bearer x"), Some("token=x")),
            Access::Off
        );
        assert_eq!(check_token("s3cret", None, None), Access::Denied);
        assert_eq!(
            check_token("s3cret", Some("Bearer s3cret"), None),
            Access::Granted
        );
        assert_eq!(
            check_token("s3cret", Some("bearer  s3cret "), None),
            Access::Granted
        );
        assert_eq!(
            check_token("s3cret", Some("Bearer nope"), None),
            Access::Denied
        );
        assert_eq!(
            check_token("s3cret", Some("Basic s3cret"), None),
            Access::Denied
        );
        assert_eq!(
            check_token("s3cret", None, Some("app=a&token=s3cret")),
            Access::Granted
        );
        assert_eq!(
            check_token("a b+c", None, Some("token=a%20b%2Bc")),
            Access::Granted
        );
        assert_eq!(
            check_token("s3cret", None, Some("token=s3cre")),
            Access::Denied
        );
        assert_eq!(check_token("s3cret", None, Some("token=")), Access::Denied);
        // A wrong header is not rescued by a right query, and the reverse.
        assert_eq!(
            check_token("s3cret", Some("Bearer bad"), Some("token=s3cret")),
            Access::Denied
        );
        assert_eq!(
            check_token("s3cret", Some("Basic x"), Some("token=s3cret")),
            Access::Granted
        );
    }

    #[test]
    fn events_format_as_json_lines() {
        let v: Value = serde_json::from_str(&event_json(&connected("a", 7), 42)).unwrap();
        assert_eq!(
            v,
            json!({ "ts": 42, "type": "connected", "socket_id": "1.7" })
        );

        let ev = LifecycleEvent::ApiPublish {
            app: "a".into(),
            channel: "my-channel".into(),
            event: "my-event".into(),
            data_len: 17,
            except: Some(SocketId::new(3, 4)),
        };
        let v: Value = serde_json::from_str(&event_json(&ev, 1)).unwrap();
        assert_eq!(
            v,
            json!({ "ts": 1, "type": "api_publish", "channel": "my-channel", "event": "my-event",
                    "data_len": 17, "except": "3.4" })
        );

        let long = "é".repeat(200); // 400 bytes
        let ev = LifecycleEvent::ClientEvent {
            app: "a".into(),
            channel: "private-c".into(),
            event: "client-x".into(),
            data: long.as_str().into(),
            socket_id: SocketId::new(1, 2),
            user_id: None,
        };
        let v: Value = serde_json::from_str(&event_json(&ev, 1)).unwrap();
        assert_eq!(v["type"], "client_event");
        assert_eq!(v["data_len"], 400);
        assert_eq!(v["data"].as_str().unwrap().len(), DATA_PREVIEW_BYTES);
        assert_eq!(v["user_id"], Value::Null);

        let ev = LifecycleEvent::MemberAdded {
            app: "a".into(),
            channel: "presence-p".into(),
            user_id: "u1".into(),
        };
        let v: Value = serde_json::from_str(&event_json(&ev, 1)).unwrap();
        assert_eq!(
            v,
            json!({ "ts": 1, "type": "member_added", "channel": "presence-p", "user_id": "u1" })
        );

        let body = r#"{"time_ms":1,"events":[{"name":"channel_occupied","channel":"c1"}]}"#;
        let v: Value = serde_json::from_str(&webhook_json("http://h/x", body, Ok(500), 1)).unwrap();
        assert_eq!(
            v,
            json!({ "ts": 1, "type": "webhook_failed", "url": "http://h/x", "result": 500, "channel": "c1",
                    "events": [{ "name": "channel_occupied", "channel": "c1" }] })
        );
        let body = r#"{"events":[{"name":"channel_vacated","channel":"a"},{"name":"member_added","channel":"b"}]}"#;
        let v: Value = serde_json::from_str(&webhook_json("u", body, Ok(204), 1)).unwrap();
        assert_eq!(v["type"], "webhook_sent");
        assert_eq!(v["events"].as_array().unwrap().len(), 2);
        assert!(v.get("channel").is_none());
        let v: Value = serde_json::from_str(&webhook_json("u", "", Err("refused"), 1)).unwrap();
        assert_eq!(v["type"], "webhook_failed");
        assert_eq!(v["result"], "refused");
        let v: Value = serde_json::from_str(&skipped_json(12, 1)).unwrap();
        assert_eq!(v, json!({ "ts": 1, "type": "skipped", "count": 12 }));
    }

    #[test]
    fn preview_cuts_on_char_boundaries() {
        assert_eq!(preview("abc", 5), "abc");
        assert_eq!(preview("aé", 2), "a");
        assert_eq!(preview("aé", 3), "aé");
    }

    #[tokio::test]
    async fn nobody_watching_costs_nothing() {
        let c = Arc::new(Console::new());
        // No viewer: emit stops at the atomic load; no buffer exists for anyone.
        c.emit(&connected("a", 1));
        assert_eq!(c.viewers(), 0);
        assert!(c.watched("a").is_none());
        assert!(c.feeds.read().is_empty());

        let mut v = c.attach("a");
        assert_eq!(c.viewers(), 1);
        c.emit(&connected("b", 2)); // another app: not formatted for this viewer
        c.emit(&connected("a", 3));
        let FeedItem::Line(line) = v.next().await.unwrap() else {
            panic!("expected a line")
        };
        assert!(line.contains("\"1.3\""), "{line}");
        drop(v);
        assert_eq!(c.viewers(), 0);
        assert!(c.watched("a").is_none());
        // A new viewer does not see what happened while nobody watched.
        c.emit(&connected("a", 4));
        let mut v = c.attach("a");
        assert!(c.feeds.read().len() == 1);
        c.emit(&connected("a", 5));
        let FeedItem::Line(line) = v.next().await.unwrap() else {
            panic!("expected a line")
        };
        assert!(line.contains("\"1.5\""), "{line}");
    }

    #[tokio::test]
    async fn slow_viewer_skips_with_a_count() {
        let c = Arc::new(Console::new());
        let mut slow = c.attach("a");
        let n = FEED_CAPACITY as u64 + 10;
        for i in 0..n {
            c.emit(&connected("a", i));
        }
        assert_eq!(slow.next().await, Some(FeedItem::Skipped(10)));
        let FeedItem::Line(line) = slow.next().await.unwrap() else {
            panic!("expected a line")
        };
        assert!(line.contains("\"1.10\""), "{line}");
    }

    #[tokio::test]
    async fn close_ends_feeds() {
        let c = Arc::new(Console::new());
        let _v = c.attach("a");
        c.close();
        assert!(c.closed.is_cancelled());
    }
}
