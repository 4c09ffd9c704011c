//! One WebSocket connection: admission, the frame loop, keep-alive and cleanup.
//!
//! Every frame to the client goes through the connection's bounded outbox, so replies and
//! published events keep the order in which the engine accepted them.

use crate::metrics::ConnCounters;
use crate::server::Shared;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::SinkExt;
use herald_core::{Conn, Outbound};
use herald_protocol::frame::{self, ClientMessage, Subscribe};
use herald_protocol::presence::{self, MemberData};
use herald_protocol::sign::{self, AuthError};
use herald_protocol::user::{self, UserData};
use herald_protocol::{codes, encode, ChannelKind, ChannelName, CloseCode};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep_until, Instant};

/// Most outbox frames written before one flush.
const WRITE_BATCH: usize = 64;
/// How long a closing connection may spend writing the frames queued before the close.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// How long a subscription waits for the cluster's presence roster before using the local one.
const CLUSTER_READ: Duration = Duration::from_secs(1);

/// Query parameters of the upgrade request that matter.
#[derive(Debug, Default, Clone)]
pub struct ConnectParams {
    pub key: Option<String>,
    pub protocol: Option<String>,
    pub tls: bool,
}

async fn send_text(ws: &mut WebSocket, text: impl Into<Utf8Bytes>) -> bool {
    ws.send(Message::Text(text.into())).await.is_ok()
}

/// Sends `pusher:error` with the close code's text, then the close frame.
async fn close_with(ws: &mut WebSocket, code: CloseCode) {
    // A peer that stopped reading cannot take even these frames: then the socket is just dropped.
    let sent = tokio::time::timeout(CLOSE_FLUSH, async {
        send_text(ws, encode::error(Some(code.code), code.reason)).await
            && ws
                .send(Message::Close(Some(CloseFrame {
                    code: code.code,
                    reason: code.reason.into(),
                })))
                .await
                .is_ok()
    })
    .await;
    if !matches!(sent, Ok(true)) {
        return;
    }
    // Give the peer a moment to answer the close handshake without holding the task forever.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        use futures_util::StreamExt;
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Entry point after the upgrade. `path_ok` is false for upgrades to unknown paths.
pub async fn serve(mut ws: WebSocket, shared: Arc<Shared>, params: ConnectParams, path_ok: bool) {
    if !path_ok {
        return close_with(&mut ws, codes::PATH_NOT_FOUND).await;
    }
    let engine = &shared.engine;
    let Some(app) = params.key.as_deref().and_then(|k| engine.apps().by_key(k)) else {
        return close_with(&mut ws, codes::APP_NOT_FOUND).await;
    };
    if !app.enabled {
        return close_with(&mut ws, codes::APP_DISABLED).await;
    }
    if app.tls_only && !params.tls {
        return close_with(&mut ws, codes::SSL_ONLY).await;
    }
    if let Some(code) = codes::check_protocol(params.protocol.as_deref()) {
        return close_with(&mut ws, code).await;
    }
    if shared.draining() {
        return close_with(&mut ws, codes::RECONNECT).await;
    }
    let app_id = app.id.clone();
    let (conn, outbox) = match engine.connect(app) {
        Ok(c) => c,
        Err(code) => {
            shared.metrics.rejected(&app_id, "max_connections");
            return close_with(&mut ws, code).await;
        }
    };
    let mut session = Session::new(shared.clone(), conn);
    let code = session.run(&mut ws, outbox).await;
    session.cleanup();
    if let Some(code) = code {
        if code == codes::SLOW_CONSUMER {
            shared.metrics.slow_consumer(&app_id);
            tracing::info!(app = %app_id, socket_id = %session.socket_id, "closing a slow consumer");
        }
        close_with(&mut ws, code).await;
    }
}

struct Sub {
    name: ChannelName,
    /// Presence user id of this subscription (added to relayed client events).
    user_id: Option<String>,
}

struct SignedIn {
    data: UserData,
}

/// Token bucket for client events.
struct Rate {
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl Rate {
    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Session {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    counters: ConnCounters,
    socket_id: String,
    subs: HashMap<Arc<str>, Sub>,
    user: Option<SignedIn>,
    rate: Rate,
    /// Signed in or subscribed to an authorized channel (authorized-connections mode).
    authorized: bool,
}

impl Session {
    fn new(shared: Arc<Shared>, conn: Arc<Conn>) -> Self {
        let per_sec = f64::from(conn.app.limits.client_event_rate.max(1));
        Self {
            socket_id: conn.socket_id.to_string(),
            counters: shared.metrics.conn_counters(&conn.app.id),
            shared,
            subs: HashMap::new(),
            user: None,
            rate: Rate {
                tokens: per_sec,
                per_sec,
                last: Instant::now(),
            },
            authorized: false,
            conn,
        }
    }

    fn queue(&self, frame: String) {
        self.conn.send(&Bytes::from(frame));
    }

    fn error(&self, code: Option<u16>, message: &str) {
        self.queue(encode::error(code, message));
    }

    /// Runs until the socket ends; returns the close code to send, if the server closes.
    async fn run(&mut self, ws: &mut WebSocket, mut outbox: Outbound) -> Option<CloseCode> {
        let cfg = &self.shared.config.server;
        let activity = Duration::from_secs(cfg.activity_timeout);
        let pong_wait = Duration::from_secs(cfg.pong_timeout);
        self.queue(encode::connection_established(
            &self.socket_id,
            cfg.activity_timeout,
        ));
        let auth_deadline = self.conn.app.enable_user_authentication.then(|| {
            Instant::now() + Duration::from_secs(self.conn.app.user_authentication_timeout)
        });
        let mut last_seen = Instant::now();
        let mut probed: Option<Instant> = None;
        let conn = self.conn.clone();
        loop {
            let mut deadline = match probed {
                Some(at) => at + pong_wait,
                None => last_seen + activity,
            };
            if let Some(d) = auth_deadline.filter(|_| !self.authorized) {
                deadline = deadline.min(d);
            }
            tokio::select! {
                biased;
                code = conn.close_requested() => {
                    // Frames the engine accepted before the close still go out first (a drain
                    // must not lose accepted events); a slow consumer is closed as it stands.
                    if code != codes::SLOW_CONSUMER {
                        let flush = async {
                            while let Ok(f) = outbox.try_recv() {
                                if !write_batch(ws, &conn, f, &mut outbox, &self.counters).await {
                                    break;
                                }
                            }
                        };
                        let _ = tokio::time::timeout(CLOSE_FLUSH, flush).await;
                    }
                    return Some(code);
                }
                frame = outbox.recv() => {
                    let first = frame?;
                    // A write blocked by a client that stopped reading must not outlive the
                    // slow-consumer close its overflowing outbox requests.
                    tokio::select! {
                        ok = write_batch(ws, &conn, first, &mut outbox, &self.counters) => {
                            if !ok {
                                return None;
                            }
                        }
                        code = async {
                            // Only a slow consumer abandons the write; other closes let it finish
                            // and then flush the rest of the outbox.
                            let code = conn.close_requested().await;
                            if code != codes::SLOW_CONSUMER {
                                std::future::pending::<()>().await;
                            }
                            code
                        } => return Some(code),
                    }
                }
                msg = futures_util::StreamExt::next(ws) => {
                    last_seen = Instant::now();
                    probed = None;
                    let text = match msg {
                        None | Some(Ok(Message::Close(_))) => return None,
                        Some(Err(e)) => return too_big(&e).then_some(codes::MESSAGE_TOO_BIG),
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Binary(b))) => match Utf8Bytes::try_from(b) {
                            Ok(t) => t,
                            Err(_) => continue,
                        },
                        Some(Ok(_)) => continue,
                    };
                    self.counters.messages_in.inc();
                    self.counters.bytes_in.inc_by(text.len() as u64);
                    self.handle(&text).await;
                }
                () = sleep_until(deadline) => {
                    let now = Instant::now();
                    if auth_deadline.is_some_and(|d| now >= d) && !self.authorized {
                        return Some(codes::UNAUTHORIZED);
                    }
                    match probed {
                        Some(at) if now >= at + pong_wait => return Some(codes::PONG_TIMEOUT),
                        Some(_) => {}
                        None if now >= last_seen + activity => {
                            probed = Some(now);
                            if ws.send(Message::Ping(Bytes::new())).await.is_err() {
                                return None;
                            }
                            self.queue(encode::PING.to_owned());
                        }
                        None => {}
                    }
                }
            }
        }
    }

    async fn handle(&mut self, text: &str) {
        let msg = match frame::decode(text) {
            Ok(m) => m,
            Err(e) => {
                return self.error(None, &e.to_string());
            }
        };
        match msg {
            ClientMessage::Ping => self.queue(encode::PONG.to_owned()),
            ClientMessage::Pong => {}
            ClientMessage::Subscribe(s) => self.subscribe(s).await,
            ClientMessage::Unsubscribe { channel } => {
                if let Some(sub) = self.subs.remove(channel.as_str()) {
                    self.shared.engine.unsubscribe(&self.conn, &sub.name);
                }
            }
            ClientMessage::Signin { auth, user_data } => self.signin(auth, user_data).await,
            ClientMessage::ClientEvent {
                event,
                channel,
                data,
            } => {
                self.client_event(&event, channel.as_deref(), data.as_deref());
            }
            ClientMessage::Unsupported { event } => {
                self.error(
                    None,
                    &format!("Unsupported event received on socket: {event}"),
                );
            }
        }
    }

    fn auth_failed(&self, channel: &str, e: &AuthError) {
        let msg = e.to_string();
        self.error(None, &msg);
        if self.conn.app.emit_subscription_error {
            self.queue(encode::subscription_error(channel, &msg, 401));
        }
    }

    fn verify(&self, auth: Option<&str>, signed: &str, channel: &str) -> bool {
        let app = &self.conn.app;
        match sign::verify_auth(auth, signed, channel, |k| app.has_key(k), &app.secret) {
            Ok(()) => true,
            Err(e) => {
                self.auth_failed(channel, &e);
                false
            }
        }
    }

    async fn subscribe(&mut self, s: Subscribe) {
        let app = self.conn.app.clone();
        let ch = match ChannelName::parse(&s.channel, app.limits.max_channel_name_length) {
            Ok(c) => c,
            Err(e) => {
                return self.error(None, &format!("Invalid channel name '{}': {e}", s.channel))
            }
        };
        if self.subs.contains_key(ch.as_str()) {
            return self.error(None, &format!("Existing subscription to {ch}"));
        }
        if self.subs.len() >= app.limits.max_channels_per_connection {
            self.shared
                .metrics
                .rejected(&app.id, "max_channels_per_connection");
            return self.error(
                None,
                &format!(
                    "Cannot subscribe to {ch}: a connection may be subscribed to at most {} channels",
                    app.limits.max_channels_per_connection
                ),
            );
        }
        let mut member: Option<MemberData> = None;
        match ch.kind() {
            ChannelKind::Public => {}
            ChannelKind::Private | ChannelKind::Encrypted => {
                if !self.verify(
                    s.auth.as_deref(),
                    &sign::channel_string(&self.socket_id, ch.as_str(), None),
                    ch.as_str(),
                ) {
                    return;
                }
            }
            ChannelKind::Presence => {
                if s.auth.as_deref().is_none_or(str::is_empty) {
                    return self.auth_failed(
                        ch.as_str(),
                        &AuthError::Missing {
                            channel: ch.to_string(),
                        },
                    );
                }
                let limits = app.limits.presence();
                let parsed = match (&s.channel_data, &self.user) {
                    (Some(cd), _) => {
                        let signed = sign::channel_string(&self.socket_id, ch.as_str(), Some(cd));
                        if !self.verify(s.auth.as_deref(), &signed, ch.as_str()) {
                            return;
                        }
                        presence::parse_channel_data(cd, limits)
                    }
                    (None, Some(u)) => {
                        let signed = sign::channel_string(&self.socket_id, ch.as_str(), None);
                        if !self.verify(s.auth.as_deref(), &signed, ch.as_str()) {
                            return;
                        }
                        presence::check_member(u.data.id.clone(), u.data.user_info.clone(), limits)
                    }
                    (None, None) => {
                        return self.error(
                            None,
                            &format!("{ch} is a presence channel and subscription must include channel_data"),
                        );
                    }
                };
                match parsed {
                    Ok(m) => member = Some(m),
                    Err(reason) => {
                        return self.error(None, &format!("Invalid channel_data: {reason}"))
                    }
                }
            }
            ChannelKind::ServerToUser => {
                let signed_in_as = self.user.as_ref().map(|u| u.data.id.as_str());
                if signed_in_as != ch.server_to_user_id() {
                    return self.error(
                        None,
                        &format!(
                            "Cannot subscribe to {ch}: connection is not signed in as this user"
                        ),
                    );
                }
            }
        }
        let user_id = member.as_ref().map(|m| m.user_id.clone());
        let remote = match (&self.shared.cluster, ch.is_presence()) {
            (Some(c), true) => tokio::time::timeout(CLUSTER_READ, c.members(&app.id, ch.as_str()))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        match self
            .shared
            .engine
            .subscribe_with(&self.conn, &ch, member, &remote)
        {
            Ok(_) => {
                if ch.needs_auth() {
                    self.authorized = true;
                }
                self.subs
                    .insert(ch.arc().clone(), Sub { name: ch, user_id });
            }
            Err(e) => {
                if matches!(e, herald_core::SubscribeError::PresenceFull { .. }) {
                    self.shared
                        .metrics
                        .rejected(&app.id, "max_presence_members");
                }
                self.error(None, &e.to_string());
            }
        }
    }

    async fn signin(&mut self, auth: Option<String>, user_data: Option<String>) {
        let app = self.conn.app.clone();
        let Some(user_data) = user_data else {
            return self.error(None, "Invalid user_data: user_data is required to sign in");
        };
        let auth = auth.filter(|a| !a.is_empty());
        let Some(auth) = auth else {
            return self.error(None, "Auth info required to sign in");
        };
        if !auth.contains(':') {
            return self.error(
                None,
                "Auth value for sign-in is invalid: should be of format 'key:signature'",
            );
        }
        let signed = sign::signin_string(&self.socket_id, &user_data);
        if let Err(e) = sign::verify_auth(
            Some(&auth),
            &signed,
            "sign-in",
            |k| app.has_key(k),
            &app.secret,
        ) {
            return self.error(None, &e.to_string());
        }
        let data = match user::parse_user_data(&user_data, app.limits.max_watchlist_size) {
            Ok(d) => d,
            Err(reason) => return self.error(None, &format!("Invalid user_data: {reason}")),
        };
        if let Some(current) = &self.user {
            if current.data.id != data.id {
                return self.error(None, "Connection already signed in as another user");
            }
            // Same user again: acknowledged, nothing else changes.
            return self.queue(encode::signin_success(&user_data));
        }
        self.queue(encode::signin_success(&user_data));
        if data.watchlist_truncated {
            self.error(
                Some(codes::WATCHLIST_LIMIT),
                &format!(
                    "Watchlist limit exceeded. Only the first {} user IDs are accepted.",
                    app.limits.max_watchlist_size
                ),
            );
        }
        let remote_online = match &self.shared.cluster {
            Some(c) if app.enable_watchlist_events => {
                tokio::time::timeout(CLUSTER_READ, c.online(&app.id, &data.watchlist))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        self.shared
            .engine
            .signin_with(&self.conn, &data.id, &data.watchlist, &remote_online);
        self.authorized = true;
        self.user = Some(SignedIn { data });
    }

    fn client_event(&mut self, event: &str, channel: Option<&str>, data: Option<&RawValue>) {
        let app = self.conn.app.clone();
        if !app.enable_client_messages {
            return self.error(
                None,
                "To send client events, you must enable this feature in the Settings page of your dashboard.",
            );
        }
        let Some(channel) = channel else {
            return self.error(None, "Client event rejected - a channel is required");
        };
        let Ok(ch) = ChannelName::parse(channel, app.limits.max_channel_name_length) else {
            return self.error(
                None,
                &format!("Client event rejected - invalid channel name '{channel}'"),
            );
        };
        if !ch.allows_client_events() {
            return self.error(
                None,
                "Client event rejected - only supported on private and presence channels",
            );
        }
        let Some(sub) = self.subs.get(ch.as_str()) else {
            return self.error(
                None,
                &format!("Client event rejected - not subscribed to channel {ch}"),
            );
        };
        if event.chars().count() > app.limits.max_event_name_length {
            return self.error(
                None,
                &format!(
                    "Client event rejected - event name longer than {} characters",
                    app.limits.max_event_name_length
                ),
            );
        }
        if data.map_or(0, |d| d.get().len()) > app.limits.max_event_data_bytes {
            return self.error(
                None,
                &format!(
                    "Client event rejected - data larger than {} bytes",
                    app.limits.max_event_data_bytes
                ),
            );
        }
        if !self.rate.allow(Instant::now()) {
            self.shared.metrics.rejected(&app.id, "client_event_rate");
            return self.error(
                Some(codes::CLIENT_EVENT_RATE_LIMIT),
                codes::CLIENT_EVENT_RATE_LIMIT_MSG,
            );
        }
        let user_id = sub.user_id.as_deref().filter(|_| ch.is_presence());
        self.shared
            .engine
            .client_event(&self.conn, &ch, event, data, user_id);
    }

    fn cleanup(&mut self) {
        let names: Vec<ChannelName> = self.subs.drain().map(|(_, s)| s.name).collect();
        let user = self.user.take();
        self.shared.engine.disconnect(
            &self.conn,
            names.iter(),
            user.as_ref()
                .map(|u| (u.data.id.as_str(), u.data.watchlist.as_slice())),
        );
    }
}

fn too_big(e: &axum::Error) -> bool {
    let s = format!("{e:?}");
    s.contains("Capacity") || s.contains("MessageTooLong") || s.contains("too long")
}

/// Writes `first` and whatever else is queued (up to a batch), then flushes once.
async fn write_batch(
    ws: &mut WebSocket,
    conn: &Conn,
    first: Bytes,
    outbox: &mut Outbound,
    counters: &ConnCounters,
) -> bool {
    let mut next = Some(first);
    let mut n = 0;
    let mut bytes = 0;
    while let Some(frame) = next.take() {
        let len = frame.len();
        // Frames are built from Rust strings, so the check cannot fail; it costs one pass.
        let Ok(text) = Utf8Bytes::try_from(frame) else {
            return false;
        };
        if ws.feed(Message::Text(text)).await.is_err() {
            return false;
        }
        conn.sent(len);
        n += 1;
        bytes += len;
        if n < WRITE_BATCH {
            next = outbox.try_recv().ok();
        }
    }
    counters.messages_out.inc_by(n as u64);
    counters.bytes_out.inc_by(bytes as u64);
    ws.flush().await.is_ok()
}
