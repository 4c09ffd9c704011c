//! Authentication of signed HTTP API requests (Pusher's `auth_signature` scheme).

use herald_core::{App, Engine};
use herald_protocol::api::ApiError;
use herald_protocol::{sign, time};
use std::sync::Arc;

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

/// Verifies a signed API request and returns its app plus the decoded query: the head first
/// ([`authenticate_head`]), then the body against its `body_md5` ([`check_body`]).
pub fn authenticate(
    engine: &Engine,
    app_ref: AppRef<'_>,
    req: &SignedRequest<'_>,
    now_unix: i64,
) -> Result<(Arc<App>, sign::QueryPairs), ApiError> {
    let (app, pairs) = authenticate_head(
        engine,
        app_ref,
        req.method,
        req.path,
        req.raw_query,
        Some(req.body.len() as u64),
        now_unix,
    )?;
    check_body(&pairs, req.body)?;
    Ok((app, pairs))
}

/// Verifies everything a request's head carries: the app, key, version, timestamp and the
/// signature (which covers `body_md5`, so the body's digest is fixed before the body is read).
/// A request is refused here without its body ever being read or buffered. `content_length`
/// is the announced body size, when known: a body without `body_md5` is refused up front too.
pub fn authenticate_head(
    engine: &Engine,
    app_ref: AppRef<'_>,
    method: &str,
    path: &str,
    raw_query: &str,
    content_length: Option<u64>,
    now_unix: i64,
) -> Result<(Arc<App>, sign::QueryPairs), ApiError> {
    let pairs = sign::decode_query(raw_query);
    let param = |k: &str| sign::query_param(&pairs, k);
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
    // `abs_diff`: any i64 from the query, without overflow.
    if now_unix.abs_diff(ts) >= TIMESTAMP_WINDOW.unsigned_abs() {
        return Err(unauthorized(format!(
            "Timestamp expired: Given timestamp ({}) not within {TIMESTAMP_WINDOW}s of server time ({})",
            time::iso8601(ts),
            time::iso8601(now_unix)
        )));
    }
    if param("body_md5").is_none() && content_length.is_some_and(|n| n > 0) {
        return Err(unauthorized("Missing parameter: body_md5".into()));
    }
    let given = param("auth_signature")
        .ok_or_else(|| unauthorized("Missing parameter: auth_signature".into()))?;
    let given_lc = given.to_ascii_lowercase();
    let to_sign = sign::request_string_to_sign(method, path, &pairs);
    let mut ok = sign::ct_eq(&sign::hmac_hex(&app.secret, to_sign.as_bytes()), &given_lc);
    if !ok && path.contains('%') {
        // SDKs sign unencoded paths; an HTTP stack may have escaped it on the way.
        let decoded = sign::percent_decode(path, false);
        let alt = sign::request_string_to_sign(method, &decoded, &pairs);
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

/// Checks a body read after [`authenticate_head`] against the signed `body_md5`.
pub fn check_body(pairs: &sign::QueryPairs, body: &[u8]) -> Result<(), ApiError> {
    let unauthorized = |m: String| ApiError::new(401, m);
    match sign::query_param(pairs, "body_md5") {
        None if !body.is_empty() => Err(unauthorized("Missing parameter: body_md5".into())),
        None => Ok(()),
        Some(given) => {
            let actual = if body.is_empty() {
                EMPTY_MD5.to_owned()
            } else {
                sign::md5_hex(body)
            };
            if given.eq_ignore_ascii_case(&actual) {
                Ok(())
            } else {
                Err(unauthorized(format!(
                    "Invalid body_md5: the MD5 of the body is {actual}, but body_md5 is {given}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{Cluster, EngineConfig, StaticAppStore};
    use herald_protocol::sign;

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
            Cluster::local(),
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
