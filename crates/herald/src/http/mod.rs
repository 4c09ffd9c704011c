//! The HTTP surface as a value: the signed API (`api`, `deprecated`), health and readiness,
//! WebSocket upgrades that arrive after plain requests on a keep-alive connection, and the
//! console's routes merged in. The metrics port has its own small router.

pub mod api;
pub mod auth;
pub mod deprecated;
pub mod error;

use crate::cluster::Store;
use crate::drain::Drain;
use crate::executor::Executor;
use crate::rate::TokenBucket;
use crate::session::{self, ConnectParams};
use crate::sinks::metrics::Metrics;
use crate::transport::{listener, socket};
use api::Route;
use axum::extract::{Path, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Extension, Router};
use error::HttpError;
use herald_core::App;
use herald_protocol::api::ApiError;
use herald_protocol::wsframe;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// What the HTTP routes need: their narrow handle.
#[derive(Debug)]
pub struct ApiState {
    pub executor: Executor,
    pub metrics: Arc<Metrics>,
    pub drain: Arc<Drain>,
    /// For WebSocket upgrades that reach the router.
    pub session: Arc<session::Ctx>,
    /// Readiness follows the cluster's connection when nodes are joined.
    pub cluster: Option<Arc<dyn Store>>,
    /// Connections arrive over TLS (the server terminates it).
    pub tls: bool,
    pub max_request_body_bytes: usize,
    /// `server.path_prefix`, for messages that name the path the client used.
    pub path_prefix: String,
    /// HTTP API token buckets per app.
    buckets: Mutex<HashMap<String, TokenBucket>>,
    /// Memory for request bodies being read, server-wide, in KiB.
    body_budget: Arc<tokio::sync::Semaphore>,
}

/// A request body must arrive within this long of its head.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a request waits for body memory when many bodies are being read at once.
const BODY_BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Request bodies of the largest allowed size that may be read at once, server-wide.
const BODIES_IN_FLIGHT: usize = 64;

impl ApiState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        executor: Executor,
        metrics: Arc<Metrics>,
        drain: Arc<Drain>,
        session: Arc<session::Ctx>,
        cluster: Option<Arc<dyn Store>>,
        tls: bool,
        max_request_body_bytes: usize,
        path_prefix: String,
    ) -> Self {
        Self {
            executor,
            metrics,
            drain,
            session,
            cluster,
            tls,
            max_request_body_bytes,
            path_prefix,
            buckets: Mutex::new(HashMap::new()),
            body_budget: Arc::new(tokio::sync::Semaphore::new(
                (BODIES_IN_FLIGHT * max_request_body_bytes.div_ceil(1024)).max(BODIES_IN_FLIGHT),
            )),
        }
    }

    /// Reads an authenticated request's body: within the size limit (413, at once when the
    /// announced length is over it), within [`BODY_TIMEOUT`] (408), and within the server-wide
    /// memory budget for bodies being read (503 when it stays exhausted), so that slow or
    /// stalled uploads can neither hold a connection forever nor add up to unbounded memory.
    pub async fn read_body(
        &self,
        body: axum::body::Body,
        content_length: Option<u64>,
    ) -> Result<bytes::Bytes, ApiError> {
        let limit = self.max_request_body_bytes;
        // The spec's exact wording (http §3.4); the limit is in the README.
        let too_large = || ApiError::new(413, "Request body too large");
        if content_length.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let expected = content_length.map_or(limit, |n| n as usize);
        let kib = u32::try_from(expected.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        let permit = tokio::time::timeout(
            BODY_BUDGET_WAIT,
            self.body_budget.clone().acquire_many_owned(kib),
        )
        .await;
        let Ok(Ok(_permit)) = permit else {
            return Err(ApiError::new(
                503,
                "Server busy: too many request bodies are being received; retry shortly",
            ));
        };
        match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
            Err(_) => Err(ApiError::new(
                408,
                format!(
                    "Request body not received within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )),
            // The limit is the usual reason; otherwise the client went away mid-body.
            Ok(Err(e)) if is_length_limit(&e) => Err(too_large()),
            Ok(Err(e)) => Err(ApiError::new(
                400,
                format!("Request body could not be read: {e}"),
            )),
            Ok(Ok(b)) => Ok(b),
        }
    }

    /// Takes one HTTP API token of `app`; false when its rate is exhausted (0: unlimited).
    fn api_allowed(&self, app: &App) -> bool {
        let rate = app.limits.api_requests_per_second;
        if rate == 0 {
            return true;
        }
        let now = tokio::time::Instant::now();
        self.buckets
            .lock()
            .entry(app.id.clone())
            .or_insert_with(|| TokenBucket::new(rate, now))
            .allow(rate, now)
    }
}

/// True when reading a body stopped at its size limit (a body sent without a length, or
/// longer than it announced), rather than the client going away mid-body.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

type AppState = State<Arc<ApiState>>;

/// A WebSocket upgrade that reached the router: one sent on a connection that carried plain
/// HTTP requests before (first requests are upgraded by `listener` without the router).
/// Answered with 101 and run as a session on hyper's upgraded stream.
fn upgrade(s: Arc<ApiState>, mut req: Request, key: Option<String>) -> Option<Response> {
    let headers = req.headers();
    let wsframe::Upgrade::Yes { accept } = wsframe::check_upgrade(
        req.method().as_str(),
        headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
    ) else {
        return None;
    };
    let tls =
        listener::forwarded_https(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()))) || s.tls;
    let query = herald_protocol::sign::decode_query(req.uri().query().unwrap_or(""));
    let params = ConnectParams {
        path_ok: key.is_some(),
        key,
        protocol: herald_protocol::sign::query_param(&query, "protocol").map(str::to_owned),
        tls,
    };
    let deflate = s.session.compression.and_then(|_| {
        let offers = headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .map(|v| v.as_bytes());
        herald_protocol::wsdeflate::negotiate(offers, s.session.compression_context_takeover)
    });
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ctx = s.session.clone();
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let io = hyper_util::rt::TokioIo::new(upgraded);
            socket::serve(io, Vec::new(), ctx, params, deflate).await;
        }
    });
    let mut res = (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::UPGRADE, "websocket".to_owned()),
            (header::CONNECTION, "Upgrade".to_owned()),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response();
    if let Some(v) = deflate.and_then(|a| header::HeaderValue::from_str(&a.header_value()).ok()) {
        res.headers_mut()
            .insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
    }
    Some(res)
}

async fn ws_app(State(s): AppState, Path(key): Path<String>, req: Request) -> Response {
    upgrade(s, req, Some(key)).unwrap_or_else(|| {
        HttpError(ApiError::bad_request(
            "This is the WebSocket endpoint: connect with a WebSocket client",
        ))
        .into_response()
    })
}

/// Unknown paths: WebSocket upgrades are completed and closed with 4005, the rest get 404.
async fn fallback(State(s): AppState, req: Request) -> Response {
    upgrade(s, req, None)
        .unwrap_or_else(|| HttpError(ApiError::new(404, "404 NOT FOUND")).into_response())
}

/// Names the path as the client sent it: nesting under the path prefix strips the prefix.
async fn method_not_allowed(State(s): AppState, method: Method, uri: Uri) -> Response {
    HttpError(ApiError::new(
        405,
        format!(
            "405 METHOD NOT ALLOWED: {method} is not supported on {}{}",
            s.path_prefix,
            uri.path()
        ),
    ))
    .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): AppState) -> Response {
    if s.drain.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if s.cluster.as_ref().is_some_and(|c| !c.ready()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster broker not connected (cluster.on_outage = \"reject\")\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics(State(s): AppState) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(s.executor.engine()),
    )
        .into_response()
}

/// The metrics listener's routes: `/metrics`, `/healthz`, `/readyz`.
pub fn metrics_router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// An API route labelled with its operation (read by the `Signed` extractor).
fn op(route: MethodRouter<Arc<ApiState>>, label: Route) -> MethodRouter<Arc<ApiState>> {
    route.layer(Extension(label))
}

/// The whole HTTP surface as a value: the API under `path_prefix`, with `console` (routes that
/// carry their own state) merged in.
pub fn router(state: Arc<ApiState>, console: Router<Arc<ApiState>>, path_prefix: &str) -> Router {
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/app/{key}", get(ws_app))
        .route(
            "/apps/{app_id}/events",
            op(post(api::events), Route::Events),
        )
        .route(
            "/apps/{app_id}/batch_events",
            op(post(api::batch_events), Route::BatchEvents),
        )
        .route(
            "/apps/{app_id}/channels",
            op(get(api::channels), Route::Channels),
        )
        .route(
            "/apps/{app_id}/channels/{channel}",
            op(get(api::channel), Route::Channel),
        )
        .route(
            "/apps/{app_id}/channels/{channel}/users",
            op(get(api::users), Route::Users),
        )
        .route(
            "/apps/{app_id}/channels/{channel}/stats",
            op(get(deprecated::stats), Route::ChannelStats),
        )
        .route(
            "/apps/{app_id}/channels/{channel}/events",
            op(post(deprecated::raw_events), Route::ChannelEvents),
        )
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            op(post(api::terminate), Route::TerminateConnections),
        )
        .route(
            "/users/{user_id}/terminate_connections",
            op(
                post(deprecated::terminate_by_key),
                Route::TerminateConnections,
            ),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .merge(console);
    let app = if path_prefix.is_empty() {
        api
    } else {
        Router::new().nest(path_prefix, api)
    };
    app.fallback(fallback).with_state(state)
}

#[cfg(test)]
mod tests {
    use super::is_length_limit;

    #[tokio::test]
    async fn a_body_past_its_limit_is_told_apart_from_a_broken_one() {
        let long = axum::body::to_bytes(axum::body::Body::from(vec![0u8; 10]), 5).await;
        assert!(is_length_limit(&long.unwrap_err()));
        let broken = axum::Error::new(std::io::Error::other("connection reset"));
        assert!(!is_length_limit(&broken));
    }
}
