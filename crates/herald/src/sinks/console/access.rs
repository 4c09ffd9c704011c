//! Who may use the console: the admin token, from `Authorization: Bearer <token>` or
//! `?token=<token>`, compared in constant time.

use super::ConsoleState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_protocol::sign;
use std::sync::Arc;

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
        let pairs = sign::decode_query(raw_query.unwrap_or(""));
        sign::query_param(&pairs, "token").map(str::to_owned)
    };
    match bearer.or_else(query) {
        Some(given) if sign::ct_eq(configured, &given) => Access::Granted,
        _ => Access::Denied,
    }
}

pub(super) fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

pub(super) fn not_found() -> Response {
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
pub(super) struct Enabled;

impl FromRequestParts<Arc<ConsoleState>> for Enabled {
    type Rejection = Response;

    async fn from_request_parts(_: &mut Parts, s: &Arc<ConsoleState>) -> Result<Self, Response> {
        if s.token.is_empty() {
            Err(not_found())
        } else {
            Ok(Enabled)
        }
    }
}

/// Extractor: the request carries the admin token. 404 when the console is off, else 401.
#[derive(Debug)]
pub(super) struct Admin;

impl FromRequestParts<Arc<ConsoleState>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &Arc<ConsoleState>,
    ) -> Result<Self, Response> {
        let auth = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match check_token(&s.token, auth, parts.uri.query()) {
            Access::Off => Err(not_found()),
            Access::Denied => Err(unauthorized(&s.path_prefix)),
            Access::Granted => Ok(Admin),
        }
    }
}
