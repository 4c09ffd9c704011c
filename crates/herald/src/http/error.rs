//! How API errors and replies look on the wire: errors as one line of text with their status
//! (the wording comes from `herald_protocol::api`), replies as JSON.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_protocol::api::ApiError;
use serde::Serialize;

/// An [`ApiError`] as an HTTP response.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::BAD_REQUEST);
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.0.message),
        )
            .into_response()
    }
}

/// `value` as a JSON response.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            HttpError(ApiError::new(500, format!("cannot encode the reply: {e}"))).into_response()
        }
    }
}
