//! The signed HTTP API routes (`/apps/{app_id}/…`). Each handler takes a [`Signed`] request,
//! the extractor that does what every route shares (refusal while draining, the body limit,
//! authentication, the per-app rate limit, metrics), and calls the [`Executor`].

use super::auth::{self, AppRef};
use super::error::{json, HttpError};
use super::ApiState;
use crate::drain;
use crate::sinks::metrics::Metrics;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, RawPathParams, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_core::App;
use herald_protocol::api::ApiError;
use herald_protocol::sign::QueryPairs;
use serde::Serialize;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The API operations, as the route label of `herald_http_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Events,
    BatchEvents,
    Channels,
    Channel,
    Users,
    ChannelStats,
    ChannelEvents,
    TerminateConnections,
}

impl Route {
    pub fn label(self) -> &'static str {
        match self {
            Route::Events => "events",
            Route::BatchEvents => "batch_events",
            Route::Channels => "channels",
            Route::Channel => "channel",
            Route::Users => "users",
            Route::ChannelStats => "channel_stats",
            Route::ChannelEvents => "channel_events",
            Route::TerminateConnections => "terminate_connections",
        }
    }
}

/// An authenticated API request, counted in flight until it is answered.
#[derive(Debug)]
pub struct Signed {
    pub app: Arc<App>,
    pub query: QueryPairs,
    pub body: Bytes,
    route: Route,
    metrics: Arc<Metrics>,
    _in_flight: drain::Request,
}

impl Signed {
    /// The reply, counted in the metrics with its status.
    pub fn answer<T: Serialize>(self, ok: StatusCode, result: Result<T, ApiError>) -> Response {
        let label = self.route.label();
        match result {
            Ok(v) => {
                self.metrics.http(&self.app.id, label, ok.as_u16());
                json(ok, &v)
            }
            Err(e) => {
                self.metrics.http(&self.app.id, label, e.status);
                HttpError(e).into_response()
            }
        }
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl FromRequest<Arc<ApiState>> for Signed {
    type Rejection = Response;

    async fn from_request(req: Request, s: &Arc<ApiState>) -> Result<Self, Response> {
        let in_flight = s.drain.request();
        // Every API route carries its label (`http::op`); a route added without one is a bug
        // answered with 500, never a panic (panics abort the process).
        let Some(route) = req.extensions().get::<Route>().copied() else {
            return Err(HttpError(ApiError::new(
                500,
                "Internal error: this API route has no operation label",
            ))
            .into_response());
        };
        let label = route.label();
        let refuse = |app: &str, e: ApiError| {
            s.metrics.http(app, label, e.status);
            HttpError(e).into_response()
        };
        if s.drain.draining() {
            // Accepted means delivered: once the drain starts, nothing new is accepted.
            return Err(refuse(
                "",
                ApiError::new(503, "Server is shutting down: retry on another node"),
            ));
        }
        let (mut parts, body) = req.into_parts();
        let params = RawPathParams::from_request_parts(&mut parts, s).await.ok();
        let app_id = params
            .as_ref()
            .and_then(|p| p.iter().find(|(k, _)| *k == "app_id").map(|(_, v)| v));
        let app_ref = match app_id {
            Some(id) => AppRef::Id(id),
            None => AppRef::ByAuthKey,
        };
        // The app label only for apps that exist: unknown ids must not grow the label set.
        let known = |app_ref: AppRef<'_>| match app_ref {
            AppRef::Id(id) if s.executor.engine().apps().by_id(id).is_some() => id.to_owned(),
            _ => String::new(),
        };
        // The head is checked first: an unknown app, a bad signature or an exhausted rate is
        // refused without the body ever being read (its digest is in the signed query).
        let content_length = parts
            .headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let (app, query) = match auth::authenticate_head(
            s.executor.engine(),
            app_ref,
            parts.method.as_str(),
            parts.uri.path(),
            parts.uri.query().unwrap_or(""),
            content_length,
            now_unix(),
        ) {
            Ok(v) => v,
            Err(e) => return Err(refuse(&known(app_ref), e)),
        };
        if !s.api_allowed(&app) {
            s.metrics.rejected(&app.id, "api_requests_per_second");
            return Err(refuse(
                &app.id,
                ApiError::new(
                    429,
                    format!(
                        "Too many requests: app {} is limited to {} API requests per second",
                        app.id, app.limits.api_requests_per_second
                    ),
                ),
            ));
        }
        let body = match s.read_body(body, content_length).await {
            Ok(b) => b,
            Err(e) => return Err(refuse(&app.id, e)),
        };
        if let Err(e) = auth::check_body(&query, &body) {
            return Err(refuse(&app.id, e));
        }
        Ok(Signed {
            app,
            query,
            body,
            route,
            metrics: s.metrics.clone(),
            _in_flight: in_flight,
        })
    }
}

use axum::extract::FromRequestParts;

type St = State<Arc<ApiState>>;

/// `POST /apps/{app_id}/events`.
pub async fn events(State(s): St, r: Signed) -> Response {
    let result = s.executor.trigger(&r.app, &r.body).await;
    r.answer(StatusCode::OK, result)
}

/// `POST /apps/{app_id}/batch_events`.
pub async fn batch_events(State(s): St, r: Signed) -> Response {
    let result = s.executor.trigger_batch(&r.app, &r.body).await;
    r.answer(StatusCode::OK, result)
}

/// `GET /apps/{app_id}/channels`.
pub async fn channels(State(s): St, r: Signed) -> Response {
    let result = s.executor.channels(&r.app, &r.query).await;
    r.answer(StatusCode::OK, result)
}

/// `GET /apps/{app_id}/channels/{channel}`.
pub async fn channel(State(s): St, Path((_, name)): Path<(String, String)>, r: Signed) -> Response {
    let result = s.executor.channel(&r.app, &name, &r.query).await;
    r.answer(StatusCode::OK, result)
}

/// `GET /apps/{app_id}/channels/{channel}/users`.
pub async fn users(State(s): St, Path((_, name)): Path<(String, String)>, r: Signed) -> Response {
    let result = s.executor.users(&r.app, &name).await;
    r.answer(StatusCode::OK, result)
}

/// `POST /apps/{app_id}/users/{user_id}/terminate_connections`.
pub async fn terminate(
    State(s): St,
    Path((_, user)): Path<(String, String)>,
    r: Signed,
) -> Response {
    let result = s.executor.terminate(&r.app, &user);
    r.answer(StatusCode::OK, result)
}
