//! The console's routes: its page, login prompt, sign-in and sign-out, static assets, the JSON
//! API and the live feed. The API reads and publishes through the same `Executor` as the HTTP API.

use super::access::{
    cleared_cookie, not_found, secure, session_cookie, session_id, signed, text, too_many_attempts,
    wrong_token, Admin, Enabled, SameOrigin, Signed, TokenCheck,
};
use super::{now_ms, skipped_json, ConsoleState, FeedItem, Viewer, DRAIN_CHECK};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
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
use std::time::{Duration, Instant};

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

/// The console's URL path (the session cookie's path).
fn console_path(s: &ConsoleState) -> String {
    format!("{}/console", s.path_prefix)
}

/// The page when signed in; else a redirect to the login prompt.
async fn index(_: Enabled, State(s): St, headers: HeaderMap) -> Response {
    match signed(&s, &headers) {
        Ok(Some(_)) => page(&s, INDEX_HTML),
        Ok(None) => {
            let mut r = text(
                StatusCode::SEE_OTHER,
                "303 See Other: sign in at the login prompt.\n",
            );
            if let Ok(to) = HeaderValue::from_str(&format!("{}/login", console_path(&s))) {
                r.headers_mut().insert(header::LOCATION, to);
            }
            r
        }
        Err(refused) => refused.into_response(),
    }
}

/// The most a sign-in body may hold: a form with one token.
const SIGN_IN_BODY_BYTES: usize = 4096;

/// A 204 that sets (or clears) the session cookie.
fn with_cookie(cookie: &str) -> Response {
    let Ok(value) = HeaderValue::from_str(cookie) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "500 Internal Server Error: cannot form the session cookie.\n",
        );
    };
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::SET_COOKIE, value);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /console/login` with the form body `token=…`: a right token starts a session (204 and
/// the cookie). The token is read from the body only, never from the URL.
async fn sign_in(
    _: Enabled,
    _: SameOrigin,
    State(s): St,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(body) = axum::body::to_bytes(body, SIGN_IN_BODY_BYTES).await else {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "413 Payload Too Large: a sign-in body holds at most {SIGN_IN_BODY_BYTES} bytes.\n"
            ),
        );
    };
    let form = sign::decode_query(&String::from_utf8_lossy(&body));
    let Some(given) = sign::query_param(&form, "token") else {
        return text(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: send the admin token as the form field `token` \
             (application/x-www-form-urlencoded).\n",
        );
    };
    match s.auth.check_token(&s.token, given, Instant::now()) {
        TokenCheck::Right => {}
        TokenCheck::Wrong => return wrong_token(),
        TokenCheck::Limited => return too_many_attempts(),
    }
    let id = s.auth.start_session();
    let mut r = with_cookie(&session_cookie(
        &id,
        &console_path(&s),
        secure(&s, &headers),
    ));
    // The form posted without script (a navigation): go on to the console.
    let navigate = headers
        .get("sec-fetch-mode")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"navigate"));
    if navigate && r.status() == StatusCode::NO_CONTENT {
        if let Ok(to) = HeaderValue::from_str(&console_path(&s)) {
            *r.status_mut() = StatusCode::SEE_OTHER;
            r.headers_mut().insert(header::LOCATION, to);
        }
    }
    r
}

/// `POST /console/logout`: ends the request's session, if any, and clears its cookie.
async fn sign_out(_: Enabled, _: SameOrigin, State(s): St, headers: HeaderMap) -> Response {
    if let Some(id) = session_id(&headers) {
        s.auth.end_session(id);
    }
    with_cookie(&cleared_cookie(&console_path(&s), secure(&s, &headers)))
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

/// `POST /console/api/events?app=ID`: the body of `POST /apps/{id}/events`, from the console's
/// own origin only.
async fn api_events(
    _: Enabled,
    _: SameOrigin,
    _: Admin,
    State(s): St,
    uri: axum::http::Uri,
    body: Body,
) -> Response {
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
    /// The app's recent lines, sent after the hello: `(event id, line)`, oldest first.
    backlog: std::vec::IntoIter<(String, Arc<str>)>,
    /// Live lines numbered up to this were in the backlog (or older than what the browser saw).
    upto: u64,
    /// The session the feed was opened with: the feed ends with it.
    session: Option<String>,
}

fn sse_data(line: &str) -> Result<Event, Infallible> {
    Ok(Event::default().data(line))
}

/// A line with its event id, which the browser sends back as `Last-Event-ID` when it reconnects.
fn sse_line(id: Option<String>, line: &str) -> Result<Event, Infallible> {
    let ev = Event::default().data(line);
    Ok(match id {
        Some(id) => ev.id(id),
        None => ev,
    })
}

/// `GET /console/api/feed?app=ID[&after=EVENT-ID]`: the log as server-sent events, one JSON line
/// each: a hello, the app's recent lines (after the one named by the `Last-Event-ID` header of a
/// reconnecting browser, or by `after`), then live lines; no line twice.
async fn api_feed(
    Admin(how): Admin,
    State(s): St,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let app = match app_of(&s, uri.query()) {
        Ok(a) => a,
        Err(e) => return api_error(e),
    };
    // Attach before answering, so every event after the client sees the response is in the feed;
    // and before reading the history, so that every line is in one or the other.
    let viewer = s.console.attach(&app.id);
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| param(uri.query(), "after"));
    let backlog = s.console.backlog(&app.id, last_id.as_deref());
    let hello = json!({ "ts": now_ms(), "type": "hello", "app": app.id,
                        "viewers": s.console.viewers(), "history": backlog.lines.len() });
    let mut tick = tokio::time::interval(DRAIN_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = Feed {
        viewer,
        state: s.clone(),
        tick,
        hello: Some(hello.to_string()),
        backlog: backlog.lines.into_iter(),
        upto: backlog.upto,
        session: match how {
            Signed::Session(id) => Some(id),
            Signed::Bearer => None,
        },
    };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        if let Some(h) = f.hello.take() {
            return Some((sse_data(&h), f));
        }
        if let Some((id, line)) = f.backlog.next() {
            return Some((sse_line(Some(id), &line), f));
        }
        let closed = f.state.console.closed.clone();
        loop {
            tokio::select! {
                item = f.viewer.next() => match item? {
                    FeedItem::Line(seq, _) if seq != 0 && seq <= f.upto => {}
                    FeedItem::Line(seq, line) => {
                        let id = f.state.console.event_id(seq);
                        return Some((sse_line(id, &line), f));
                    }
                    FeedItem::Skipped(n) => {
                        return Some((sse_data(&skipped_json(n, now_ms())), f));
                    }
                },
                () = closed.cancelled() => return None,
                _ = f.tick.tick() => {
                    let ended = f.session.as_deref().is_some_and(|id| !f.state.auth.session_valid(id));
                    if ended || f.state.drain.draining() {
                        return None;
                    }
                }
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
        .route("/console/login", get(login).post(sign_in))
        .route("/console/logout", axum::routing::post(sign_out))
        .route("/console/assets/{file}", get(asset))
        .route("/console/api/apps", get(api_apps))
        .route("/console/api/state", get(api_state))
        .route("/console/api/members", get(api_members))
        .route("/console/api/events", axum::routing::post(api_events))
        .route("/console/api/feed", get(api_feed))
        .with_state(state)
}
