//! The HTTP router driven in-process (no port): signed API routes, their refusals (signature,
//! body limit, rate limit, drain), the deprecated routes, health, the path prefix and the
//! request metrics.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use herald::{Config, Node};
use herald_protocol::sign;
use http_body_util::BodyExt;
use std::time::{SystemTime, UNIX_EPOCH};
use tower::ServiceExt;

const SECRET: &str = "app-secret";
const EVENT: &str = r#"{"name":"e","channel":"c","data":"{}"}"#;

async fn node_with(toml: Option<&str>) -> Node {
    let config = match toml {
        Some(text) => Config::load(Some(("test.toml", text)), std::iter::empty()).unwrap(),
        None => Config::default(),
    };
    let store = herald::store::open(&config).await.unwrap();
    Node::new(config, store).unwrap()
}

async fn node() -> Node {
    node_with(None).await
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The query a Pusher SDK sends, signed over `sign_path`: auth_key, auth_timestamp,
/// auth_version, body_md5 (when there is a body), the extra pairs, then auth_signature.
fn signed_query(
    method: &str,
    sign_path: &str,
    extra: &[(&str, &str)],
    body: &str,
    timestamp: &str,
) -> String {
    let mut pairs: Vec<(String, String)> = vec![
        ("auth_key".into(), "app-key".into()),
        ("auth_timestamp".into(), timestamp.into()),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        pairs.push(("body_md5".into(), sign::md5_hex(body.as_bytes())));
    }
    pairs.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let signature = sign::sign_request(SECRET, method, sign_path, &pairs);
    pairs.push(("auth_signature".into(), signature));
    let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join("&")
}

fn request(method: &str, path_and_query: &str, body: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path_and_query)
        .body(Body::from(body.to_owned()))
        .unwrap()
}

/// A request signed the way the SDKs sign it, over its own path, now.
fn signed(method: &str, path: &str, extra: &[(&str, &str)], body: &str) -> Request<Body> {
    let q = signed_query(method, path, extra, body, &now().to_string());
    request(method, &format!("{path}?{q}"), body)
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn trigger_answers_empty_object_or_the_requested_info() {
    let app = node().await.router();
    let r = send(&app, signed("POST", "/apps/app-id/events", &[], EVENT)).await;
    assert_eq!(r, (StatusCode::OK, "{}".to_owned()));

    let body = r#"{"name":"e","channel":"c","data":"{}","info":"subscription_count"}"#;
    let r = send(&app, signed("POST", "/apps/app-id/events", &[], body)).await;
    assert_eq!(
        r,
        (
            StatusCode::OK,
            r#"{"channels":{"c":{"subscription_count":0}}}"#.to_owned()
        )
    );

    let batch = r#"{"batch":[{"name":"e","channel":"c","data":"{}"}]}"#;
    let r = send(
        &app,
        signed("POST", "/apps/app-id/batch_events", &[], batch),
    )
    .await;
    assert_eq!(r, (StatusCode::OK, "{}".to_owned()));
}

#[tokio::test]
async fn authentication_failures() {
    let app = node().await.router();
    let path = "/apps/app-id/events";

    // One byte of the signature changed.
    let q = signed_query("POST", path, &[], EVENT, &now().to_string());
    let (head, sig) = q.split_once("auth_signature=").unwrap();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    let q = format!("{head}auth_signature={flipped}{}", &sig[1..]);
    let (status, body) = send(&app, request("POST", &format!("{path}?{q}"), EVENT)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.starts_with("Invalid signature"), "{body}");

    // Unknown app id: 404, whatever the signature.
    let r = send(&app, signed("POST", "/apps/nope/events", &[], EVENT)).await;
    assert_eq!(
        r,
        (StatusCode::NOT_FOUND, "Unknown app id nope\n".to_owned())
    );

    // No auth_key.
    let q = signed_query("POST", path, &[], EVENT, &now().to_string());
    let q = q.replace("auth_key=app-key&", "");
    assert!(!q.contains("auth_key"));
    let r = send(&app, request("POST", &format!("{path}?{q}"), EVENT)).await;
    assert_eq!(
        r,
        (
            StatusCode::UNAUTHORIZED,
            "Missing parameter: auth_key\n".to_owned()
        )
    );

    // A timestamp 700 s old (the window is 600 s).
    let q = signed_query("POST", path, &[], EVENT, &(now() - 700).to_string());
    let (status, body) = send(&app, request("POST", &format!("{path}?{q}"), EVENT)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.starts_with("Timestamp expired"), "{body}");

    // The extremes of i64 are refused as expired (no overflow); beyond them, as invalid.
    for ts in ["-9223372036854775808", "9223372036854775807"] {
        let q = signed_query("POST", path, &[], EVENT, ts);
        let (status, body) = send(&app, request("POST", &format!("{path}?{q}"), EVENT)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{ts}");
        assert!(body.starts_with("Timestamp expired"), "{ts}: {body}");
    }
    let q = signed_query("POST", path, &[], EVENT, "99999999999999999999");
    let (status, body) = send(&app, request("POST", &format!("{path}?{q}"), EVENT)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.starts_with("Timestamp invalid"), "{body}");

    // The body must match body_md5.
    let q = signed_query("POST", path, &[], EVENT, &now().to_string());
    let other = r#"{"name":"x","channel":"c","data":"{}"}"#;
    let (status, body) = send(&app, request("POST", &format!("{path}?{q}"), other)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.starts_with("Invalid body_md5"), "{body}");
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let toml = "[server]\nmax_request_body_bytes = 100\n";
    let app = node_with(Some(toml)).await.router();
    // Under the limit: accepted.
    let r = send(&app, signed("POST", "/apps/app-id/events", &[], EVENT)).await;
    assert_eq!(r, (StatusCode::OK, "{}".to_owned()));
    let big = format!(
        r#"{{"name":"e","channel":"c","data":"{}"}}"#,
        "x".repeat(200)
    );
    let r = send(&app, signed("POST", "/apps/app-id/events", &[], &big)).await;
    assert_eq!(
        r,
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large\n".to_owned()
        )
    );
}

#[tokio::test]
async fn channel_queries() {
    let app = node().await.router();
    let r = send(&app, signed("GET", "/apps/app-id/channels", &[], "")).await;
    assert_eq!(r, (StatusCode::OK, r#"{"channels":{}}"#.to_owned()));

    let r = send(
        &app,
        signed(
            "GET",
            "/apps/app-id/channels",
            &[("info", "user_count")],
            "",
        ),
    )
    .await;
    assert_eq!(
        r,
        (
            StatusCode::BAD_REQUEST,
            "user_count may only be requested for presence channels - please supply filter_by_prefix begining with presence-\n"
                .to_owned()
        )
    );
    let r = send(
        &app,
        signed(
            "GET",
            "/apps/app-id/channels",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")],
            "",
        ),
    )
    .await;
    assert_eq!(r, (StatusCode::OK, r#"{"channels":{}}"#.to_owned()));

    let r = send(
        &app,
        signed("GET", "/apps/app-id/channels/presence-x/users", &[], ""),
    )
    .await;
    assert_eq!(r, (StatusCode::OK, r#"{"users":[]}"#.to_owned()));
    let r = send(
        &app,
        signed("GET", "/apps/app-id/channels/my-channel/users", &[], ""),
    )
    .await;
    assert_eq!(
        r,
        (
            StatusCode::BAD_REQUEST,
            "Users can only be retrieved for presence channels\n".to_owned()
        )
    );

    let r = send(
        &app,
        signed("GET", "/apps/app-id/channels/my-channel", &[], ""),
    )
    .await;
    assert_eq!(r, (StatusCode::OK, r#"{"occupied":false}"#.to_owned()));
    let r = send(
        &app,
        signed(
            "GET",
            "/apps/app-id/channels/my-channel",
            &[("info", "subscription_count")],
            "",
        ),
    )
    .await;
    assert_eq!(
        r,
        (
            StatusCode::OK,
            r#"{"occupied":false,"subscription_count":0}"#.to_owned()
        )
    );

    let r = send(
        &app,
        signed("GET", "/apps/app-id/channels/my-channel/stats", &[], ""),
    )
    .await;
    assert_eq!(
        r,
        (
            StatusCode::OK,
            r#"{"connection_count":0,"occupied":false}"#.to_owned()
        )
    );
}

#[tokio::test]
async fn deprecated_raw_trigger() {
    let app = node().await.router();
    let path = "/apps/app-id/channels/my-channel/events";
    let r = send(&app, signed("POST", path, &[("name", "e")], "hello")).await;
    assert_eq!(r, (StatusCode::ACCEPTED, "{}".to_owned()));
    let r = send(&app, signed("POST", path, &[], "hello")).await;
    assert_eq!(
        r,
        (
            StatusCode::BAD_REQUEST,
            "Missing required parameter: name\n".to_owned()
        )
    );
}

#[tokio::test]
async fn terminate_user_connections() {
    let app = node().await.router();
    // pusher-http-python's route: no app id, the app comes from auth_key.
    let r = send(
        &app,
        signed("POST", "/users/u1/terminate_connections", &[], ""),
    )
    .await;
    assert_eq!(r, (StatusCode::OK, "{}".to_owned()));
    let r = send(
        &app,
        signed(
            "POST",
            "/apps/app-id/users/u1/terminate_connections",
            &[],
            "",
        ),
    )
    .await;
    assert_eq!(r, (StatusCode::OK, "{}".to_owned()));

    // By key, an unknown key is 401 (there is no app id to be unknown).
    let path = "/users/u1/terminate_connections";
    let q = signed_query("POST", path, &[], "", &now().to_string());
    let q = q.replace("auth_key=app-key", "auth_key=nope");
    let r = send(&app, request("POST", &format!("{path}?{q}"), "")).await;
    assert_eq!(
        r,
        (StatusCode::UNAUTHORIZED, "Unknown auth_key\n".to_owned())
    );
}

#[tokio::test]
async fn methods_unknown_paths_and_health() {
    let app = node().await.router();
    let r = send(&app, request("DELETE", "/apps/app-id/events", "")).await;
    assert_eq!(
        r,
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "405 METHOD NOT ALLOWED: DELETE is not supported on /apps/app-id/events\n".to_owned()
        )
    );
    let r = send(&app, request("GET", "/nope", "")).await;
    assert_eq!(r, (StatusCode::NOT_FOUND, "404 NOT FOUND\n".to_owned()));
    let r = send(&app, request("GET", "/healthz", "")).await;
    assert_eq!(r, (StatusCode::OK, "ok\n".to_owned()));
    let r = send(&app, request("GET", "/readyz", "")).await;
    assert_eq!(r, (StatusCode::OK, "ready\n".to_owned()));
    // The WebSocket endpoint without an upgrade.
    let r = send(&app, request("GET", "/app/app-key", "")).await;
    assert_eq!(
        r,
        (
            StatusCode::BAD_REQUEST,
            "This is the WebSocket endpoint: connect with a WebSocket client\n".to_owned()
        )
    );
}

#[tokio::test]
async fn signatures_over_escaped_paths_and_uppercase_hex() {
    let app = node().await.router();
    // SDKs sign the unescaped path; an HTTP stack may escape it on the way.
    let q = signed_query(
        "GET",
        "/apps/app-id/channels/my@channel",
        &[],
        "",
        &now().to_string(),
    );
    let r = send(
        &app,
        request(
            "GET",
            &format!("/apps/app-id/channels/my%40channel?{q}"),
            "",
        ),
    )
    .await;
    assert_eq!(r, (StatusCode::OK, r#"{"occupied":false}"#.to_owned()));
    // Signed over the path as sent, escaped.
    let r = send(
        &app,
        signed("GET", "/apps/app-id/channels/my%40channel", &[], ""),
    )
    .await;
    assert_eq!(r, (StatusCode::OK, r#"{"occupied":false}"#.to_owned()));

    let q = signed_query("GET", "/apps/app-id/channels", &[], "", &now().to_string());
    let (head, sig) = q.split_once("auth_signature=").unwrap();
    let q = format!("{head}auth_signature={}", sig.to_ascii_uppercase());
    let r = send(
        &app,
        request("GET", &format!("/apps/app-id/channels?{q}"), ""),
    )
    .await;
    assert_eq!(r, (StatusCode::OK, r#"{"channels":{}}"#.to_owned()));
}

#[tokio::test]
async fn api_rate_limit_per_app() {
    let toml = "[[apps]]\nid = \"app-id\"\nkey = \"app-key\"\nsecret = \"app-secret\"\n\
                [apps.limits]\napi_requests_per_second = 2\n\
                [[apps]]\nid = \"other\"\nkey = \"other-key\"\nsecret = \"other-secret\"\n\
                [apps.limits]\napi_requests_per_second = 2\n";
    let app = node_with(Some(toml)).await.router();
    // Requests refused before authentication take no token.
    let r = send(&app, request("GET", "/apps/app-id/channels", "")).await;
    assert_eq!(r.0, StatusCode::UNAUTHORIZED);
    for _ in 0..2 {
        let r = send(&app, signed("GET", "/apps/app-id/channels", &[], "")).await;
        assert_eq!(r, (StatusCode::OK, r#"{"channels":{}}"#.to_owned()));
    }
    let r = send(&app, signed("GET", "/apps/app-id/channels", &[], "")).await;
    assert_eq!(
        r,
        (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests: app app-id is limited to 2 API requests per second\n".to_owned()
        )
    );
    // Each app has its own bucket.
    let q = signed_query("GET", "/apps/other/channels", &[], "", &now().to_string());
    let q = q.replace("auth_key=app-key", "auth_key=other-key");
    let q = q.split_once("&auth_signature=").unwrap().0.to_owned();
    let pairs = sign::decode_query(&q);
    let sig = sign::sign_request("other-secret", "GET", "/apps/other/channels", &pairs);
    let r = send(
        &app,
        request(
            "GET",
            &format!("/apps/other/channels?{q}&auth_signature={sig}"),
            "",
        ),
    )
    .await;
    assert_eq!(r, (StatusCode::OK, r#"{"channels":{}}"#.to_owned()));
}

#[tokio::test]
async fn draining_refuses_api_requests_and_readiness() {
    let node = node().await;
    let app = node.router();
    node.drain.begin();
    let r = send(&app, signed("POST", "/apps/app-id/events", &[], EVENT)).await;
    assert_eq!(
        r,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "Server is shutting down: retry on another node\n".to_owned()
        )
    );
    let r = send(&app, request("GET", "/readyz", "")).await;
    assert_eq!(
        r,
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned())
    );
    let r = send(&node.metrics_router(), request("GET", "/readyz", "")).await;
    assert_eq!(
        r,
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned())
    );
    // Liveness is not readiness.
    let r = send(&app, request("GET", "/healthz", "")).await;
    assert_eq!(r, (StatusCode::OK, "ok\n".to_owned()));
    // Refused requests are no longer in flight.
    assert_eq!(node.drain.requests_in_flight(), 0);
}

#[tokio::test]
async fn path_prefix_is_stripped_before_routing_and_signing() {
    let toml = "[server]\npath_prefix = \"/pusher\"\n";
    let app = node_with(Some(toml)).await.router();
    let path = "/apps/app-id/channels";

    // Signed over the path without the prefix, as documented.
    let q = signed_query("GET", path, &[], "", &now().to_string());
    let r = send(&app, request("GET", &format!("/pusher{path}?{q}"), "")).await;
    assert_eq!(r, (StatusCode::OK, r#"{"channels":{}}"#.to_owned()));

    // Signed over the full path: the server signs without the prefix, so this is refused.
    let q = signed_query(
        "GET",
        &format!("/pusher{path}"),
        &[],
        "",
        &now().to_string(),
    );
    let (status, body) = send(&app, request("GET", &format!("/pusher{path}?{q}"), "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body.starts_with("Invalid signature: you should have sent HmacSHA256Hex(\"GET\\n/apps/app-id/channels\\n"),
        "{body}"
    );

    // Without the prefix nothing is served.
    let r = send(&app, signed("GET", path, &[], "")).await;
    assert_eq!(r, (StatusCode::NOT_FOUND, "404 NOT FOUND\n".to_owned()));
    let r = send(&app, request("GET", "/healthz", "")).await;
    assert_eq!(r, (StatusCode::NOT_FOUND, "404 NOT FOUND\n".to_owned()));
    let r = send(&app, request("GET", "/pusher/healthz", "")).await;
    assert_eq!(r, (StatusCode::OK, "ok\n".to_owned()));
    let r = send(&app, request("GET", "/pusher/nope", "")).await;
    assert_eq!(r, (StatusCode::NOT_FOUND, "404 NOT FOUND\n".to_owned()));
    // The message names the path the client requested, prefix included.
    let r = send(&app, request("DELETE", "/pusher/apps/app-id/events", "")).await;
    assert_eq!(
        r,
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "405 METHOD NOT ALLOWED: DELETE is not supported on /pusher/apps/app-id/events\n"
                .to_owned()
        )
    );
}

#[tokio::test]
async fn request_metrics_by_route_and_status() {
    let node = node().await;
    let app = node.router();
    let r = send(&app, signed("POST", "/apps/app-id/events", &[], EVENT)).await;
    assert_eq!(r.0, StatusCode::OK);
    let r = send(&app, request("POST", "/apps/app-id/events", EVENT)).await;
    assert_eq!(r.0, StatusCode::UNAUTHORIZED);
    // Unknown app ids are counted without an app label.
    let r = send(&app, signed("POST", "/apps/nope/events", &[], EVENT)).await;
    assert_eq!(r.0, StatusCode::NOT_FOUND);

    let (status, text) = send(&node.metrics_router(), request("GET", "/metrics", "")).await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("herald_http_requests_total{"))
        .collect();
    let mut expected = vec![
        r#"herald_http_requests_total{app="",route="events",status="404"} 1"#,
        r#"herald_http_requests_total{app="app-id",route="events",status="200"} 1"#,
        r#"herald_http_requests_total{app="app-id",route="events",status="401"} 1"#,
    ];
    let mut got = lines.clone();
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(got, expected, "{text}");
}
