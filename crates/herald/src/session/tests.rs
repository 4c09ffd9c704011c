//! The session rules without a socket: messages go in through `Session::handle`, replies are read
//! back from the connection's outbox.

use super::{admit, ConnectParams, Ctx, Session};
use crate::drain::Drain;
use crate::sinks::metrics::Metrics;
use herald_core::{App, Cluster, Conn, Engine, EngineConfig, StaticAppStore};
use herald_protocol::codes;
use herald_protocol::sign::{channel_string, hmac_hex, signin_string};
use herald_protocol::ChannelName;
use serde_json::{json, Value};
use std::sync::Arc;

const KEY: &str = "app-key";
const SECRET: &str = "app-secret";

/// The default app with the extras that would add frames to every assertion turned off.
fn app() -> App {
    let mut a = App::default_app();
    a.enable_subscription_count = false;
    a.enable_watchlist_events = false;
    a
}

fn ctx_with(apps: Vec<App>) -> Arc<Ctx> {
    ctx_with_config(apps, EngineConfig::default())
}

fn ctx_with_config(apps: Vec<App>, config: EngineConfig) -> Arc<Ctx> {
    let engine = Engine::new(
        Arc::new(StaticAppStore::new(apps).unwrap()),
        Cluster::local(),
        vec![],
        config,
    );
    Arc::new(Ctx {
        engine,
        metrics: Arc::new(Metrics::new()),
        cluster: None,
        drain: Drain::new(),
        activity_timeout: 120,
        max_ws_message_bytes: 10_000,
        write_timeout: std::time::Duration::from_secs(30),
        compression: None,
        compression_context_takeover: false,
    })
}

fn ctx() -> Arc<Ctx> {
    ctx_with(vec![app()])
}

fn params(key: &str) -> ConnectParams {
    ConnectParams {
        path_ok: true,
        key: Some(key.into()),
        protocol: Some("7".into()),
        tls: false,
    }
}

fn session(ctx: &Arc<Ctx>) -> Session {
    let conn = admit(ctx, &params(KEY)).unwrap();
    Session::new(ctx.clone(), conn)
}

/// Every frame queued to `conn` since the last call, parsed.
fn frames_of(conn: &Conn) -> Vec<Value> {
    conn.take()
        .frames
        .into_iter()
        .map(|f| serde_json::from_slice(f.json()).unwrap())
        .collect()
}

fn frames(s: &Session) -> Vec<Value> {
    frames_of(s.conn())
}

fn sid(s: &Session) -> String {
    s.conn().socket_id.to_string()
}

/// A valid `auth` value over `signed`.
fn auth(signed: &str) -> String {
    format!("{KEY}:{}", hmac_hex(SECRET, signed.as_bytes()))
}

/// Sends one message and returns what it queued to the sender.
async fn send(s: &mut Session, msg: Value) -> Vec<Value> {
    s.handle(&msg.to_string()).await;
    frames(s)
}

fn subscribe(channel: &str, auth: Option<&str>, channel_data: Option<&str>) -> Value {
    let mut data = json!({ "channel": channel });
    if let Some(a) = auth {
        data["auth"] = json!(a);
    }
    if let Some(cd) = channel_data {
        data["channel_data"] = json!(cd);
    }
    json!({ "event": "pusher:subscribe", "data": data })
}

/// Subscribes to a private channel with a valid signature.
async fn subscribe_private(s: &mut Session, channel: &str) -> Vec<Value> {
    let a = auth(&channel_string(&sid(s), channel, None));
    send(s, subscribe(channel, Some(&a), None)).await
}

/// Subscribes to a presence channel as `user` with a valid signature.
async fn subscribe_presence(s: &mut Session, channel: &str, user: &str) -> Vec<Value> {
    let cd = json!({ "user_id": user, "user_info": { "n": 1 } }).to_string();
    let a = auth(&channel_string(&sid(s), channel, Some(&cd)));
    send(s, subscribe(channel, Some(&a), Some(&cd))).await
}

fn signin(auth: Option<&str>, user_data: Option<&str>) -> Value {
    let mut data = json!({});
    if let Some(a) = auth {
        data["auth"] = json!(a);
    }
    if let Some(ud) = user_data {
        data["user_data"] = json!(ud);
    }
    json!({ "event": "pusher:signin", "data": data })
}

/// Signs in as `user` with a valid signature.
async fn signin_as(s: &mut Session, user: &str) -> Vec<Value> {
    let ud = json!({ "id": user }).to_string();
    let a = auth(&signin_string(&sid(s), &ud));
    send(s, signin(Some(&a), Some(&ud))).await
}

fn client_event(channel: &str, data: Value) -> Value {
    json!({ "event": "client-typing", "channel": channel, "data": data })
}

fn event(f: &Value) -> &str {
    f["event"].as_str().unwrap()
}

/// The one frame queued, which must be `event`.
fn only<'a>(fs: &'a [Value], name: &str) -> &'a Value {
    assert_eq!(fs.len(), 1, "one frame expected: {fs:?}");
    assert_eq!(event(&fs[0]), name, "{fs:?}");
    &fs[0]
}

/// The message of the one frame queued, which must be a `pusher:error` without a code.
fn only_error(fs: &[Value]) -> &str {
    let f = only(fs, "pusher:error");
    assert!(f["data"]["code"].is_null(), "{f}");
    f["data"]["message"].as_str().unwrap()
}

/// `data` of a protocol event, sent as a string holding JSON.
fn inner(f: &Value) -> Value {
    serde_json::from_str(f["data"].as_str().expect("data is a string")).unwrap()
}

#[test]
fn admit_refuses_with_the_pusher_close_codes() {
    let mut off = app();
    off.id = "off-id".into();
    off.key = "off-key".into();
    off.enabled = false;
    let mut tls = app();
    tls.id = "tls-id".into();
    tls.key = "tls-key".into();
    tls.tls_only = true;
    let ctx = ctx_with(vec![app(), off, tls]);
    let refused = |p: ConnectParams| admit(&ctx, &p).unwrap_err();

    let wrong_path = ConnectParams {
        path_ok: false,
        ..params(KEY)
    };
    assert_eq!(refused(wrong_path), codes::PATH_NOT_FOUND);
    assert_eq!(codes::PATH_NOT_FOUND.code, 4005);
    assert_eq!(refused(params("nope")), codes::APP_NOT_FOUND);
    assert_eq!(codes::APP_NOT_FOUND.code, 4001);
    let no_key = ConnectParams {
        key: None,
        ..params(KEY)
    };
    assert_eq!(refused(no_key), codes::APP_NOT_FOUND);
    assert_eq!(refused(params("off-key")), codes::APP_DISABLED);
    assert_eq!(codes::APP_DISABLED.code, 4003);
    let protocol = |p: Option<&str>| ConnectParams {
        protocol: p.map(str::to_owned),
        ..params(KEY)
    };
    assert_eq!(refused(protocol(None)), codes::NO_PROTOCOL);
    assert_eq!(codes::NO_PROTOCOL.code, 4008);
    assert_eq!(refused(protocol(Some("abc"))), codes::INVALID_VERSION);
    assert_eq!(codes::INVALID_VERSION.code, 4006);
    assert_eq!(refused(protocol(Some("4"))), codes::UNSUPPORTED_PROTOCOL);
    assert_eq!(codes::UNSUPPORTED_PROTOCOL.code, 4007);
    // TLS-only apps refuse plain connections with 4000 (SSL_ONLY), and take TLS ones.
    assert_eq!(refused(params("tls-key")), codes::SSL_ONLY);
    assert_eq!(codes::SSL_ONLY.code, 4000);
    let over_tls = ConnectParams {
        tls: true,
        ..params("tls-key")
    };
    assert!(admit(&ctx, &over_tls).is_ok());

    assert!(admit(&ctx, &params(KEY)).is_ok());
    ctx.drain.begin();
    assert_eq!(refused(params(KEY)), codes::RECONNECT);
    assert_eq!(codes::RECONNECT.code, 4200);
}

#[test]
fn admit_refuses_over_the_connection_quota() {
    let mut a = app();
    a.limits.max_connections = 1;
    let ctx = ctx_with(vec![a]);
    let first = admit(&ctx, &params(KEY)).unwrap();
    assert_eq!(admit(&ctx, &params(KEY)).unwrap_err(), codes::OVER_QUOTA);
    ctx.engine.disconnect(&first, [].iter(), None);
    assert!(
        admit(&ctx, &params(KEY)).is_ok(),
        "room again once one left"
    );
}

#[test]
fn established_announces_the_socket_id_and_activity_timeout() {
    let ctx = ctx();
    let s = session(&ctx);
    s.established();
    let fs = frames(&s);
    let f = only(&fs, "pusher:connection_established");
    let data = inner(f);
    assert_eq!(data["socket_id"], json!(sid(&s)));
    assert_eq!(data["activity_timeout"], json!(120));
}

#[tokio::test]
async fn public_subscriptions_duplicates_names_and_the_channel_limit() {
    let mut a = app();
    a.limits.max_channels_per_connection = 2;
    let ctx = ctx_with(vec![a]);
    let mut s = session(&ctx);

    let fs = send(&mut s, subscribe("news", None, None)).await;
    let f = only(&fs, "pusher_internal:subscription_succeeded");
    assert_eq!(f["channel"], "news");
    assert_eq!(inner(f), json!({}));

    let fs = send(&mut s, subscribe("news", None, None)).await;
    assert_eq!(only_error(&fs), "Existing subscription to news");

    let fs = send(&mut s, subscribe("bad channel!", None, None)).await;
    let msg = only_error(&fs);
    assert!(
        msg.starts_with("Invalid channel name 'bad channel!'"),
        "{msg}"
    );

    let fs = send(&mut s, subscribe("sport", None, None)).await;
    only(&fs, "pusher_internal:subscription_succeeded");
    let fs = send(&mut s, subscribe("weather", None, None)).await;
    assert_eq!(
        only_error(&fs),
        "Cannot subscribe to weather: a connection may be subscribed to at most 2 channels"
    );
    let weather = ChannelName::parse("weather", 200).unwrap();
    assert_eq!(ctx.engine.stats("app-id", &weather).subscription_count, 0);

    // Leaving one makes room again.
    let fs = send(
        &mut s,
        json!({ "event": "pusher:unsubscribe", "data": { "channel": "news" } }),
    )
    .await;
    assert!(fs.is_empty(), "{fs:?}");
    let fs = send(&mut s, subscribe("weather", None, None)).await;
    only(&fs, "pusher_internal:subscription_succeeded");
}

#[tokio::test]
async fn private_subscriptions_check_the_signature() {
    let ctx = ctx();
    let mut s = session(&ctx);

    let fs = subscribe_private(&mut s, "private-a").await;
    let f = only(&fs, "pusher_internal:subscription_succeeded");
    assert_eq!(f["channel"], "private-a");

    let fs = send(&mut s, subscribe("private-b", Some("app-key:badsig"), None)).await;
    let expected = format!(
        "Invalid signature: Expected HMAC SHA256 hex digest of {}:private-b, but got badsig",
        sid(&s)
    );
    assert_eq!(only_error(&fs), expected);

    let fs = send(&mut s, subscribe("private-b", None, None)).await;
    assert_eq!(
        only_error(&fs),
        "Auth info required to subscribe to private-b"
    );
    let fs = send(&mut s, subscribe("private-b", Some("nocolon"), None)).await;
    assert_eq!(
        only_error(&fs),
        "Auth value for subscription to private-b is invalid: should be of format 'key:signature'"
    );
    // A signature for another socket does not open the channel.
    let other = auth(&channel_string("1.2", "private-b", None));
    let fs = send(&mut s, subscribe("private-b", Some(&other), None)).await;
    assert!(only_error(&fs).starts_with("Invalid signature"), "{fs:?}");
    let b = ChannelName::parse("private-b", 200).unwrap();
    assert_eq!(ctx.engine.stats("app-id", &b).subscription_count, 0);
}

#[tokio::test]
async fn auth_failures_also_emit_subscription_error_when_asked() {
    let mut a = app();
    a.emit_subscription_error = true;
    let ctx = ctx_with(vec![a]);
    let mut s = session(&ctx);

    let fs = send(&mut s, subscribe("private-b", Some("app-key:badsig"), None)).await;
    assert_eq!(fs.len(), 2, "{fs:?}");
    assert_eq!(event(&fs[0]), "pusher:error");
    let msg = fs[0]["data"]["message"].as_str().unwrap();
    assert!(msg.starts_with("Invalid signature"), "{msg}");
    assert_eq!(event(&fs[1]), "pusher:subscription_error");
    assert_eq!(fs[1]["channel"], "private-b");
    assert_eq!(fs[1]["data"]["status"], 401);
    assert_eq!(fs[1]["data"]["type"], "AuthError");
    assert_eq!(fs[1]["data"]["error"], msg);
}

#[tokio::test]
async fn presence_subscriptions_carry_the_roster() {
    let ctx = ctx();
    let mut s = session(&ctx);

    let fs = subscribe_presence(&mut s, "presence-room", "u1").await;
    let f = only(&fs, "pusher_internal:subscription_succeeded");
    assert_eq!(f["channel"], "presence-room");
    let p = &inner(f)["presence"];
    assert_eq!(p["count"], 1);
    assert_eq!(p["ids"], json!(["u1"]));
    assert_eq!(p["hash"]["u1"], json!({ "n": 1 }));

    // A second member is announced to the first and sees both.
    let mut t = session(&ctx);
    let fs = subscribe_presence(&mut t, "presence-room", "u2").await;
    let p = &inner(only(&fs, "pusher_internal:subscription_succeeded"))["presence"];
    assert_eq!(p["count"], 2);
    assert_eq!(p["hash"]["u1"], json!({ "n": 1 }));
    assert_eq!(p["hash"]["u2"], json!({ "n": 1 }));
    let fs = frames(&s);
    let added = only(&fs, "pusher_internal:member_added");
    assert_eq!(added["channel"], "presence-room");
    assert_eq!(
        inner(added),
        json!({ "user_id": "u2", "user_info": { "n": 1 } })
    );
}

#[tokio::test]
async fn presence_needs_auth_and_channel_data_or_a_sign_in() {
    let ctx = ctx();
    let mut s = session(&ctx);

    let a = auth(&channel_string(&sid(&s), "presence-room", None));
    let fs = send(&mut s, subscribe("presence-room", Some(&a), None)).await;
    assert_eq!(
        only_error(&fs),
        "presence-room is a presence channel and subscription must include channel_data"
    );
    let fs = send(&mut s, subscribe("presence-room", None, None)).await;
    assert_eq!(
        only_error(&fs),
        "Auth info required to subscribe to presence-room"
    );
    // channel_data is signed: a signature over other data is refused.
    let signed_for = json!({ "user_id": "u1" }).to_string();
    let a = auth(&channel_string(
        &sid(&s),
        "presence-room",
        Some(&signed_for),
    ));
    let sent = json!({ "user_id": "admin" }).to_string();
    let fs = send(&mut s, subscribe("presence-room", Some(&a), Some(&sent))).await;
    assert!(only_error(&fs).starts_with("Invalid signature"), "{fs:?}");
    // Signed, but without a user id.
    let cd = json!({ "user_info": {} }).to_string();
    let a = auth(&channel_string(&sid(&s), "presence-room", Some(&cd)));
    let fs = send(&mut s, subscribe("presence-room", Some(&a), Some(&cd))).await;
    assert!(
        only_error(&fs).starts_with("Invalid channel_data: "),
        "{fs:?}"
    );

    // Signed in, the sign-in identity stands in for channel_data.
    signin_as(&mut s, "u7").await;
    let a = auth(&channel_string(&sid(&s), "presence-room", None));
    let fs = send(&mut s, subscribe("presence-room", Some(&a), None)).await;
    let p = &inner(only(&fs, "pusher_internal:subscription_succeeded"))["presence"];
    assert_eq!(p["ids"], json!(["u7"]));
}

#[tokio::test]
async fn client_events_reach_other_subscribers_only() {
    let ctx = ctx();
    let mut s = session(&ctx);
    let mut t = session(&ctx);
    subscribe_private(&mut s, "private-chat").await;
    subscribe_private(&mut t, "private-chat").await;
    send(&mut s, subscribe("news", None, None)).await;

    let fs = send(
        &mut s,
        client_event("private-chat", json!({ "text": "hi" })),
    )
    .await;
    assert!(fs.is_empty(), "not echoed to the sender: {fs:?}");
    let got = frames(&t);
    let f = only(&got, "client-typing");
    assert_eq!(f["channel"], "private-chat");
    assert_eq!(f["data"], json!({ "text": "hi" }));
    assert!(f.get("user_id").is_none(), "no user id outside presence");

    let fs = send(&mut s, client_event("news", json!({}))).await;
    assert_eq!(
        only_error(&fs),
        "Client event rejected - only supported on private and presence channels"
    );
    let fs = send(&mut s, client_event("private-encrypted-x", json!({}))).await;
    assert_eq!(
        only_error(&fs),
        "Client event rejected - client events are not supported on encrypted channels"
    );
    let fs = send(&mut s, client_event("private-other", json!({}))).await;
    assert_eq!(
        only_error(&fs),
        "Client event rejected - not subscribed to channel private-other"
    );
    let fs = send(&mut s, json!({ "event": "client-typing", "data": {} })).await;
    assert_eq!(
        only_error(&fs),
        "Client event rejected - a channel is required"
    );
    assert!(frames(&t).is_empty(), "nothing refused was relayed");
}

#[tokio::test]
async fn presence_client_events_carry_the_sender_user_id() {
    let ctx = ctx();
    let mut s = session(&ctx);
    let mut t = session(&ctx);
    subscribe_presence(&mut s, "presence-room", "u1").await;
    subscribe_presence(&mut t, "presence-room", "u2").await;
    frames(&s);

    let fs = send(&mut s, client_event("presence-room", json!("x"))).await;
    assert!(fs.is_empty(), "{fs:?}");
    let got = frames(&t);
    let f = only(&got, "client-typing");
    assert_eq!(f["user_id"], "u1");
    assert_eq!(f["data"], "x");
}

#[tokio::test]
async fn client_events_need_the_app_switch() {
    let mut a = app();
    a.enable_client_messages = false;
    let ctx = ctx_with(vec![a]);
    let mut s = session(&ctx);
    let mut t = session(&ctx);
    subscribe_private(&mut s, "private-chat").await;
    subscribe_private(&mut t, "private-chat").await;

    let fs = send(&mut s, client_event("private-chat", json!({}))).await;
    assert_eq!(
        only_error(&fs),
        "To send client events, you must enable this feature in the Settings page of your dashboard."
    );
    assert!(frames(&t).is_empty());
}

#[tokio::test]
async fn client_events_are_rate_limited_per_connection() {
    let mut a = app();
    a.limits.client_event_rate = 10;
    let ctx = ctx_with(vec![a]);
    let mut s = session(&ctx);
    let mut t = session(&ctx);
    subscribe_private(&mut s, "private-chat").await;
    subscribe_private(&mut t, "private-chat").await;

    // The bucket refills at 10 a second, so 30 events sent within far less than 100 ms let
    // exactly the bucket's 10 through.
    let msg = client_event("private-chat", json!({})).to_string();
    for _ in 0..30 {
        s.handle(&msg).await;
    }
    let relayed = frames(&t);
    assert_eq!(relayed.len(), 10, "{relayed:?}");
    assert!(relayed.iter().all(|f| event(f) == "client-typing"));
    let refused = frames(&s);
    assert_eq!(refused.len(), 20);
    for f in &refused {
        assert_eq!(event(f), "pusher:error");
        assert_eq!(f["data"]["code"], 4301);
        assert_eq!(
            f["data"]["message"],
            "Client event rejected due to rate limit"
        );
    }
}

#[tokio::test]
async fn subscribes_past_the_servers_cap_get_4300_and_the_connection_stays() {
    let config = EngineConfig {
        max_subscriptions: 2,
        ..EngineConfig::default()
    };
    let ctx = ctx_with_config(vec![app()], config);
    let mut s = session(&ctx);
    let mut t = session(&ctx);
    only(
        &send(&mut s, subscribe("one", None, None)).await,
        "pusher_internal:subscription_succeeded",
    );
    only(
        &send(&mut t, subscribe("one", None, None)).await,
        "pusher_internal:subscription_succeeded",
    );
    let fs = send(&mut t, subscribe("two", None, None)).await;
    assert_eq!(fs.len(), 1, "{fs:?}");
    assert_eq!(event(&fs[0]), "pusher:error");
    assert_eq!(fs[0]["data"]["code"], codes::SUBSCRIPTION_CAPACITY);
    assert_eq!(
        fs[0]["data"]["message"],
        "Cannot subscribe to two: the server holds its limit of 2 subscriptions"
    );
    assert!(s.conn().close_code().is_none() && t.conn().close_code().is_none());
    // The refused channel was not recorded: after a place is given back it can be taken.
    send(
        &mut s,
        json!({ "event": "pusher:unsubscribe", "data": { "channel": "one" } }),
    )
    .await;
    only(
        &send(&mut t, subscribe("two", None, None)).await,
        "pusher_internal:subscription_succeeded",
    );
}

#[tokio::test]
async fn signin_opens_the_users_own_channel_only() {
    let ctx = ctx();
    let mut s = session(&ctx);

    let ud = json!({ "id": "u1", "user_info": { "n": 1 } }).to_string();
    let a = auth(&signin_string(&sid(&s), &ud));
    let fs = send(&mut s, signin(Some(&a), Some(&ud))).await;
    let f = only(&fs, "pusher:signin_success");
    assert_eq!(f["data"]["user_data"], json!(ud));

    let fs = send(&mut s, subscribe("#server-to-user-u1", None, None)).await;
    let f = only(&fs, "pusher_internal:subscription_succeeded");
    assert_eq!(f["channel"], "#server-to-user-u1");
    let fs = send(&mut s, subscribe("#server-to-user-u2", None, None)).await;
    assert_eq!(
        only_error(&fs),
        "Cannot subscribe to #server-to-user-u2: connection is not signed in as this user"
    );

    // Signing in again as the same user is acknowledged; as another one is refused.
    let fs = signin_as(&mut s, "u1").await;
    only(&fs, "pusher:signin_success");
    let fs = signin_as(&mut s, "u2").await;
    assert_eq!(
        only_error(&fs),
        "Connection already signed in as another user"
    );

    // A connection that is not signed in cannot subscribe to anyone's channel.
    let mut t = session(&ctx);
    let fs = send(&mut t, subscribe("#server-to-user-u1", None, None)).await;
    assert!(only_error(&fs).starts_with("Cannot subscribe to #server-to-user-u1"));
}

#[tokio::test]
async fn signin_refusals() {
    let ctx = ctx();
    let mut s = session(&ctx);

    let a = auth(&signin_string(&sid(&s), "{}"));
    let fs = send(&mut s, signin(Some(&a), None)).await;
    assert_eq!(
        only_error(&fs),
        "Invalid user_data: user_data is required to sign in"
    );
    let ud = json!({ "id": "u1" }).to_string();
    let fs = send(&mut s, signin(None, Some(&ud))).await;
    assert_eq!(only_error(&fs), "Auth info required to sign in");
    let fs = send(&mut s, signin(Some("nocolon"), Some(&ud))).await;
    assert_eq!(
        only_error(&fs),
        "Auth value for sign-in is invalid: should be of format 'key:signature'"
    );
    let fs = send(&mut s, signin(Some("app-key:badsig"), Some(&ud))).await;
    assert!(only_error(&fs).starts_with("Invalid signature"), "{fs:?}");
    let no_id = json!({ "user_info": {} }).to_string();
    let a = auth(&signin_string(&sid(&s), &no_id));
    let fs = send(&mut s, signin(Some(&a), Some(&no_id))).await;
    assert_eq!(
        only_error(&fs),
        "Invalid user_data: user_data must include a non-empty string id"
    );
    // None of these signed the connection in.
    let fs = send(&mut s, subscribe("#server-to-user-u1", None, None)).await;
    only_error(&fs);
}

#[tokio::test]
async fn ping_unsupported_and_malformed_messages() {
    let ctx = ctx();
    let mut s = session(&ctx);

    let fs = send(&mut s, json!({ "event": "foo", "data": {} })).await;
    assert_eq!(only_error(&fs), "Unsupported event received on socket: foo");

    let fs = send(&mut s, json!({ "event": "pusher:ping", "data": {} })).await;
    let f = only(&fs, "pusher:pong");
    assert_eq!(inner(f), json!({}));

    let fs = send(&mut s, json!({ "event": "pusher:pong", "data": {} })).await;
    assert!(fs.is_empty());

    for bad in ["{not json", "[1,2]", "", "\"pusher:ping\""] {
        s.handle(bad).await;
        let fs = frames(&s);
        assert!(!only_error(&fs).is_empty(), "{bad}");
    }
    // A subscribe without a channel is refused, not a crash.
    let fs = send(&mut s, json!({ "event": "pusher:subscribe", "data": {} })).await;
    assert_eq!(only_error(&fs), "Missing parameter: data.channel");
    assert!(s.conn().close_code().is_none(), "errors do not close");
}

#[tokio::test]
async fn cleanup_leaves_channels_and_presence() {
    let ctx = ctx();
    let mut s = session(&ctx);
    let mut t = session(&ctx);
    subscribe_presence(&mut s, "presence-room", "u1").await;
    send(&mut s, subscribe("news", None, None)).await;
    signin_as(&mut s, "u1").await;
    subscribe_presence(&mut t, "presence-room", "u2").await;
    frames(&s);
    frames(&t);
    assert_eq!(ctx.engine.connection_count("app-id"), 2);

    s.cleanup();
    let fs = frames(&t);
    let f = only(&fs, "pusher_internal:member_removed");
    assert_eq!(f["channel"], "presence-room");
    assert_eq!(inner(f), json!({ "user_id": "u1" }));

    let room = ChannelName::parse("presence-room", 200).unwrap();
    let ids: Vec<String> = ctx
        .engine
        .members("app-id", &room)
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert_eq!(ids, ["u2"]);
    let news = ChannelName::parse("news", 200).unwrap();
    assert_eq!(ctx.engine.stats("app-id", &news).subscription_count, 0);
    assert_eq!(ctx.engine.connection_count("app-id"), 1);
}
