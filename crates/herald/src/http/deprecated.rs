//! Routes the Pusher HTTP API still answers but no longer documents, kept for older SDKs.

use super::api::Signed;
use super::ApiState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use std::sync::Arc;

type St = State<Arc<ApiState>>;

/// `GET /apps/{app_id}/channels/{channel}/stats`.
pub async fn stats(State(s): St, Path((_, name)): Path<(String, String)>, r: Signed) -> Response {
    let result = s.executor.channel_stats(&r.app, &name).await;
    r.answer(StatusCode::OK, result)
}

/// `POST /apps/{app_id}/channels/{channel}/events`: the event name in the query, the body is
/// the data; answered 202.
pub async fn raw_events(
    State(s): St,
    Path((_, name)): Path<(String, String)>,
    r: Signed,
) -> Response {
    let result = s
        .executor
        .trigger_raw(&r.app, &name, &r.query, &r.body)
        .await;
    r.answer(StatusCode::ACCEPTED, result)
}

/// pusher-http-python's terminate route has no `/apps/{id}`: the app comes from `auth_key`.
pub async fn terminate_by_key(State(s): St, Path(user): Path<String>, r: Signed) -> Response {
    let result = s.executor.terminate(&r.app, &user);
    r.answer(StatusCode::OK, result)
}
