//! The console's routes: its page and login prompt, static assets, the JSON API and the live
//! feed. The API reads and publishes through the same `Executor` as the HTTP API.

use super::access::{not_found, text, Admin, Enabled};
use super::{now_ms, skipped_json, ConsoleState, FeedItem, Viewer, DRAIN_CHECK};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use herald_core::App;
use herald_protocol::api::ApiError;
use herald_protocol::channel::{self, ChannelKind};
use herald_protocol::sign;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

type St = State<Arc<ConsoleState>>;

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
fn page(s: &ConsoleState, template: &str) -> Response {
    let base = html_escape(&format!("{}/console", s.path_prefix));
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

async fn index(_: Admin, State(s): St) -> Response {
    page(&s, INDEX_HTML)
}

async fn login(_: Enabled, State(s): St) -> Response {
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
    let pairs = sign::decode_query(query.unwrap_or(""));
    sign::query_param(&pairs, name).map(str::to_owned)
}

/// The app named by `?app=`.
fn app_of(s: &ConsoleState, query: Option<&str>) -> Result<Arc<App>, ApiError> {
    let id = param(query, "app").ok_or_else(|| ApiError::bad_request("Missing parameter: app"))?;
    s.executor
        .engine()
        .apps()
        .by_id(&id)
        .ok_or_else(|| ApiError::new(404, format!("Unknown app id {id}")))
}

/// `GET /console/api/apps`: the apps to choose from.
async fn api_apps(_: Admin, State(s): St) -> Response {
    let mut apps = s.executor.engine().apps().all();
    apps.sort_by(|a, b| a.id.cmp(&b.id));
    let list: Vec<Value> = apps
        .iter()
        .map(|a| {
            json!({
                "id": a.id,
                "key": a.key,
                "enabled": a.enabled,
                "connections": s.executor.engine().connection_count(&a.id),
            })
        })
        .collect();
    json_ok(&json!({ "apps": list }))
}

/// `GET /console/api/state?app=ID`: connections and channels, read through the executor.
async fn api_state(_: Admin, State(s): St, uri: axum::http::Uri) -> Response {
    let app = match app_of(&s, uri.query()) {
        Ok(a) => a,
        Err(e) => return api_error(e),
    };
    match state_json(&s, &app).await {
        Ok(v) => json_ok(&v),
        Err(e) => api_error(e),
    }
}

async fn state_json(s: &ConsoleState, app: &App) -> Result<Value, ApiError> {
    let x = &s.executor;
    let mut channels: Vec<Value> = Vec::new();
    for (name, stats) in x.channel_list(app, "").await {
        let subs = app
            .enable_subscription_count
            .then_some(stats.subscription_count);
        let mut o = json!({ "name": name, "subscription_count": subs });
        if channel::kind_of(&name) == ChannelKind::Presence {
            o["user_count"] = json!(stats.user_count);
        }
        channels.push(o);
    }
    Ok(json!({
        "app": app.id,
        "connections": x.engine().connection_count(&app.id),
        "subscription_count_enabled": app.enable_subscription_count,
        "channels": channels,
    }))
}

/// `GET /console/api/members?app=ID&channel=presence-…`.
async fn api_members(_: Admin, State(s): St, uri: axum::http::Uri) -> Response {
    let app = match app_of(&s, uri.query()) {
        Ok(a) => a,
        Err(e) => return api_error(e),
    };
    let channel = param(uri.query(), "channel").unwrap_or_default();
    match s.executor.users(&app, &channel).await {
        Ok(v) => json_ok(&json!(v)),
        Err(e) => api_error(e),
    }
}

/// `POST /console/api/events?app=ID`: the body of `POST /apps/{id}/events`.
async fn api_events(_: Admin, State(s): St, uri: axum::http::Uri, body: Body) -> Response {
    let app = match app_of(&s, uri.query()) {
        Ok(a) => a,
        Err(e) => return api_error(e),
    };
    let limit = s.max_request_body_bytes;
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large (max {limit} bytes)\n"),
        );
    };
    match s.executor.trigger(&app, &body).await {
        Ok(v) => json_ok(&json!(v)),
        Err(e) => api_error(e),
    }
}

/// State of one SSE feed.
struct Feed {
    viewer: Viewer,
    state: Arc<ConsoleState>,
    tick: tokio::time::Interval,
    hello: Option<String>,
}

fn sse_data(line: &str) -> Result<Event, Infallible> {
    Ok(Event::default().data(line))
}

/// `GET /console/api/feed?app=ID`: the live log as server-sent events, one JSON line each.
async fn api_feed(_: Admin, State(s): St, uri: axum::http::Uri) -> Response {
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
        state: s.clone(),
        tick,
        hello: Some(hello.to_string()),
    };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        if let Some(h) = f.hello.take() {
            return Some((sse_data(&h), f));
        }
        let closed = f.state.console.closed.clone();
        loop {
            tokio::select! {
                item = f.viewer.next() => return match item? {
                    FeedItem::Line(line) => Some((sse_data(&line), f)),
                    FeedItem::Skipped(n) => Some((sse_data(&skipped_json(n, now_ms())), f)),
                },
                () = closed.cancelled() => return None,
                _ = f.tick.tick() => if f.state.drain.draining() { return None },
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

/// Routes under `/console`, with their state applied (so they merge into any router).
pub fn router<S: Clone + Send + Sync + 'static>(state: Arc<ConsoleState>) -> Router<S> {
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
        .with_state(state)
}
