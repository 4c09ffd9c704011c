//! One WebSocket connection: admission, the frame loop and cleanup.
//!
//! Every frame to the client goes through the connection's bounded outbox, so replies and
//! published events keep the order in which the engine accepted them. While it waits, a
//! connection holds no buffer: input gets one only once it has arrived, and queued frames are
//! written straight from the engine's shared bytes in one write per wake-up. Keep-alive probes
//! and the sign-in deadline come from a sweep over all connections (`keepalive_sweep`), not
//! from a timer per connection.

use crate::server::Shared;
use crate::sinks::metrics::ConnCounters;
use crate::transport::listener::Transport;
use crate::transport::wsframe::{self, FrameError};
use herald_core::{clock_ms, Conn, Engine, Frame};
use herald_protocol::frame::{self, ClientMessage, Subscribe};
use herald_protocol::presence::{self, MemberData};
use herald_protocol::sign::{self, AuthError};
use herald_protocol::user::{self, UserData};
use herald_protocol::{codes, encode, ChannelKind, ChannelName, CloseCode};
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// How long a closing connection may spend writing the frames queued before the close.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// How long a subscription waits for the cluster's presence roster before using the local one.
const CLUSTER_READ: Duration = Duration::from_secs(1);

/// What the upgrade request said that matters.
#[derive(Debug, Default, Clone)]
pub struct ConnectParams {
    /// False for upgrades to paths other than `/app/{key}` (closed with 4005).
    pub path_ok: bool,
    pub key: Option<String>,
    pub protocol: Option<String>,
    pub tls: bool,
}

/// WebSocket-level failures: closed with a close frame only (no `pusher:error`).
fn protocol_close(e: FrameError) -> CloseCode {
    if e.is_too_big() {
        codes::MESSAGE_TOO_BIG
    } else {
        CloseCode {
            code: wsframe::CLOSE_PROTOCOL_ERROR,
            reason: e.reason(),
        }
    }
}

const INVALID_UTF8: CloseCode = CloseCode {
    code: wsframe::CLOSE_INVALID_DATA,
    reason: "Text message is not valid UTF-8",
};

async fn write_out<S: Transport>(io: &mut S, buf: &[u8]) -> bool {
    io.write_all(buf).await.is_ok() && io.flush().await.is_ok()
}

/// Sends `pusher:error` with the close code's text (for Pusher codes and 1009), then the close
/// frame, then waits briefly for the client's close frame.
async fn close_with<S: Transport>(io: &mut S, code: CloseCode) {
    let mut out = Vec::new();
    if code.code >= 4000 || code == codes::MESSAGE_TOO_BIG {
        wsframe::put_frame(
            &mut out,
            wsframe::OP_TEXT,
            encode::error(Some(code.code), code.reason).as_bytes(),
        );
    }
    wsframe::put_close(&mut out, code.code, code.reason);
    // A peer that stopped reading cannot take even these frames: then the socket is just dropped.
    if !matches!(
        tokio::time::timeout(CLOSE_FLUSH, write_out(io, &out)).await,
        Ok(true)
    ) {
        return;
    }
    // Give the peer a moment to answer the close handshake without holding the task forever.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut buf = Vec::new();
        loop {
            match io.read_into(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let mut pos = 0;
            while let Ok(Some(h)) = wsframe::parse_header(&buf[pos..], usize::MAX) {
                if buf.len() - pos < h.frame_len() {
                    break;
                }
                if h.opcode == wsframe::OP_CLOSE {
                    return;
                }
                pos += h.frame_len();
            }
            buf.drain(..pos);
        }
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
}

/// Entry point once the upgrade was answered; `rbuf` holds bytes that came after the head.
pub async fn serve<S: Transport>(
    mut io: S,
    rbuf: Vec<u8>,
    shared: Arc<Shared>,
    params: ConnectParams,
) {
    match admit(&shared, &params) {
        Ok(conn) => session(io, rbuf, shared, conn).await,
        Err(code) => boxed_close(&mut io, code).await,
    }
}

/// Closes a connection that `admit` refused.
pub async fn serve_refusal<S: Transport>(mut io: S, code: CloseCode) {
    boxed_close(&mut io, code).await;
}

/// Admits a connection, or says which close code refuses it.
pub fn admit(shared: &Shared, params: &ConnectParams) -> Result<Arc<Conn>, CloseCode> {
    if !params.path_ok {
        return Err(codes::PATH_NOT_FOUND);
    }
    let engine = &shared.engine;
    let Some(app) = params.key.as_deref().and_then(|k| engine.apps().by_key(k)) else {
        return Err(codes::APP_NOT_FOUND);
    };
    if !app.enabled {
        return Err(codes::APP_DISABLED);
    }
    if app.tls_only && !params.tls {
        return Err(codes::SSL_ONLY);
    }
    if let Some(code) = codes::check_protocol(params.protocol.as_deref()) {
        return Err(code);
    }
    if shared.draining() {
        return Err(codes::RECONNECT);
    }
    let app_id = app.id.clone();
    engine.connect(app).inspect_err(|_| {
        shared.metrics.rejected(&app_id, "max_connections");
    })
}

/// Runs an admitted connection to its end. Meant to be its own task, so that the task holds
/// only what a live connection needs.
pub async fn session<S: Transport>(mut io: S, rbuf: Vec<u8>, shared: Arc<Shared>, conn: Arc<Conn>) {
    // Shutdown waits for every session's cleanup.
    let _token = shared.connections.token();
    if let Some(sink) = io.sink() {
        conn.attach(sink);
    }
    let mut session = Session::new(shared, conn);
    let code = session.run(&mut io, rbuf).await;
    session.conn.detach();
    session.cleanup();
    if let Some(code) = code {
        if code == codes::SLOW_CONSUMER {
            let app_id = &session.conn.app.id;
            session.shared.metrics.slow_consumer(app_id);
            tracing::info!(app = %app_id, socket_id = %session.conn.socket_id, "closing a slow consumer");
        }
        boxed_close(&mut io, code).await;
    }
}

/// `close_with` on the heap: closing is rare, and its timers would otherwise enlarge every
/// connection's task.
async fn boxed_close<S: Transport>(io: &mut S, code: CloseCode) {
    Box::pin(close_with(io, code)).await;
}

/// Probes silent connections and closes unanswered or unauthorized ones, until the process ends.
pub async fn keepalive_sweep(engine: Engine, activity_s: u64, pong_s: u64) {
    let activity_ms = activity_s.max(1) * 1000;
    let pong_ms = pong_s.max(1) * 1000;
    // A quarter of the shortest timeout, within 100-250 ms: probes and closes come at most that
    // late, and a sweep of 19,000 idle connections costs well under a millisecond.
    let tick = Duration::from_millis((activity_ms.min(pong_ms) / 4).clamp(100, 250));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watermark = crate::memory::Watermark::default();
    loop {
        interval.tick().await;
        let now = clock_ms();
        let mut count = 0u64;
        engine.each_connection(|c| {
            count += 1;
            let auth_ms = c
                .app
                .enable_user_authentication
                .then(|| c.app.user_authentication_timeout * 1000);
            c.keepalive(now, activity_ms, pong_ms, auth_ms);
        });
        watermark.observe(count);
    }
}

/// The queued frames' wire bytes, one after the other; returns (frames, bytes).
fn encode_frames(frames: &VecDeque<Frame>, out: &mut Vec<u8>) -> (u64, u64) {
    let bytes: usize = frames.iter().map(|f| f.wire().len()).sum();
    out.reserve(bytes);
    for f in frames {
        out.extend_from_slice(f.wire());
    }
    (frames.len() as u64, bytes as u64)
}

/// Resolves once the connection is closed as a slow consumer.
async fn slow_consumer_closed(conn: &Conn) -> CloseCode {
    loop {
        let woken = conn.woken();
        if conn.close_code() == Some(codes::SLOW_CONSUMER) {
            return codes::SLOW_CONSUMER;
        }
        woken.await;
    }
}

/// What reading the client's frames decided.
enum Flow {
    Continue,
    /// The client closed (answered already): end without a close of our own.
    Closed,
    /// Close with this code.
    Close(CloseCode),
}

struct Sub {
    name: ChannelName,
    /// Presence user id of this subscription (added to relayed client events).
    user_id: Option<String>,
}

/// A connection's subscriptions. Most connections hold one or a few, so a list searched in
/// order is both the smallest and the fastest choice; the per-connection limit bounds a search.
#[derive(Default)]
struct Subs(Vec<Sub>);

impl Subs {
    fn get(&self, channel: &str) -> Option<&Sub> {
        self.0.iter().find(|s| s.name.as_str() == channel)
    }
    fn remove(&mut self, channel: &str) -> Option<Sub> {
        let i = self.0.iter().position(|s| s.name.as_str() == channel)?;
        Some(self.0.swap_remove(i))
    }
    fn insert(&mut self, sub: Sub) {
        if self.0.capacity() == 0 {
            self.0.reserve_exact(1);
        }
        self.0.push(sub);
    }
    fn len(&self) -> usize {
        self.0.len()
    }
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
    counters: Arc<ConnCounters>,
    subs: Subs,
    /// Boxed: most connections never sign in.
    user: Option<Box<SignedIn>>,
    rate: Rate,
}

impl Session {
    fn new(shared: Arc<Shared>, conn: Arc<Conn>) -> Self {
        let per_sec = f64::from(conn.app.limits.client_event_rate.max(1));
        Self {
            counters: shared.metrics.conn_counters(&conn.app.id),
            shared,
            subs: Subs::default(),
            user: None,
            rate: Rate {
                tokens: per_sec,
                per_sec,
                last: Instant::now(),
            },
            conn,
        }
    }

    /// Formatted when needed (signatures, the handshake) rather than kept per connection.
    fn socket_id(&self) -> String {
        self.conn.socket_id.to_string()
    }

    fn queue(&self, frame: String) {
        self.conn.send(&Frame::from(frame));
    }

    fn error(&self, code: Option<u16>, message: &str) {
        self.queue(encode::error(code, message));
    }

    /// Runs until the socket ends; returns the close code to send, if the server closes.
    async fn run<S: Transport>(&mut self, io: &mut S, mut rbuf: Vec<u8>) -> Option<CloseCode> {
        let activity = self.shared.config.server.activity_timeout;
        self.queue(encode::connection_established(&self.socket_id(), activity));
        let conn = self.conn.clone();
        let max = self.shared.config.server.max_ws_message_bytes;
        // A message arriving in fragments: its opcode and the payload so far.
        let mut partial: Option<Box<(u8, Vec<u8>)>> = None;
        let mut first = !rbuf.is_empty();
        loop {
            // Boxed, like reading below: most frames leave by direct writes, so this state is
            // needed only now and then, and must not enlarge every idle connection's task.
            if conn.has_pending() {
                if let Some(end) = Box::pin(self.write_pending(io, &conn)).await {
                    return end;
                }
            }
            if first {
                // Bytes that arrived with the upgrade request.
                first = false;
            } else {
                // A poll rather than a select over two futures: nothing is stored per wait.
                let read = std::future::poll_fn(|cx| {
                    if conn.poll_woken(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    io.poll_read_into(cx, &mut rbuf).map(Some)
                })
                .await;
                match read {
                    None => continue,
                    Some(Ok(0) | Err(_)) => return None,
                    Some(Ok(_)) => {}
                }
            }
            conn.seen(clock_ms());
            match Box::pin(self.read_frames(io, &mut rbuf, &mut partial, max)).await {
                Flow::Continue => {}
                Flow::Closed => return None,
                Flow::Close(code) => return Some(code),
            }
            if rbuf.is_empty() {
                // Idle connections keep no read buffer.
                rbuf = Vec::new();
            }
        }
    }

    /// Writes what the outbox holds; `Some` ends the session (with the close code to send).
    async fn write_pending<S: Transport>(
        &mut self,
        io: &mut S,
        conn: &Conn,
    ) -> Option<Option<CloseCode>> {
        let pending = conn.take();
        if let Some(code) = pending.close {
            // Frames the engine accepted before the close still go out first (a drain
            // must not lose accepted events); a slow consumer is closed as it stands.
            if code != codes::SLOW_CONSUMER && !pending.frames.is_empty() {
                let mut out = Vec::new();
                let (n, bytes) = encode_frames(&pending.frames, &mut out);
                let flush = tokio::time::timeout(CLOSE_FLUSH, write_out(io, &out));
                if let Ok(true) = flush.await {
                    self.counters.messages_out.inc_by(n);
                    self.counters.bytes_out.inc_by(bytes);
                }
            }
            return Some(Some(code));
        }
        if pending.frames.is_empty() && !pending.ping {
            return None;
        }
        let mut out = Vec::new();
        let (mut n, bytes) = encode_frames(&pending.frames, &mut out);
        if pending.ping {
            // Probe both ways: a WebSocket ping and Pusher's own.
            wsframe::put_frame(&mut out, wsframe::OP_PING, b"");
            wsframe::put_frame(&mut out, wsframe::OP_TEXT, encode::PING.as_bytes());
            n += 1;
        }
        drop(pending);
        // A write blocked by a client that stopped reading must not outlive the
        // slow-consumer close its overflowing outbox requests.
        let written = tokio::select! {
            biased;
            ok = write_out(io, &out) => ok,
            code = slow_consumer_closed(conn) => return Some(Some(code)),
        };
        if !written {
            return Some(None);
        }
        conn.written();
        self.counters.messages_out.inc_by(n);
        self.counters.bytes_out.inc_by(bytes);
        None
    }

    /// Handles every complete frame in `rbuf` and removes it; a partial frame stays.
    async fn read_frames<S: Transport>(
        &mut self,
        io: &mut S,
        rbuf: &mut Vec<u8>,
        partial: &mut Option<Box<(u8, Vec<u8>)>>,
        max: usize,
    ) -> Flow {
        let mut pos = 0;
        let flow = loop {
            let h = match wsframe::parse_header(&rbuf[pos..], max) {
                Ok(Some(h)) if rbuf.len() - pos >= h.frame_len() => h,
                Ok(_) => break Flow::Continue,
                Err(e) => break Flow::Close(protocol_close(e)),
            };
            let start = pos + h.header_len;
            let end = start + h.payload_len;
            pos = end;
            wsframe::unmask(&mut rbuf[start..end], h.mask);
            let payload = &rbuf[start..end];
            let message: Option<Box<(u8, Vec<u8>)>>;
            let body: &[u8] = match h.opcode {
                wsframe::OP_PING => {
                    let mut out = Vec::with_capacity(payload.len() + 2);
                    wsframe::put_frame(&mut out, wsframe::OP_PONG, payload);
                    if !write_out(io, &out).await {
                        break Flow::Closed;
                    }
                    continue;
                }
                wsframe::OP_PONG => continue,
                wsframe::OP_CLOSE => {
                    // Answer the closing handshake with the client's own status.
                    let code = wsframe::close_code(payload).unwrap_or(1000);
                    let mut out = Vec::new();
                    wsframe::put_close(&mut out, code, "");
                    let _ = tokio::time::timeout(CLOSE_FLUSH, write_out(io, &out)).await;
                    break Flow::Closed;
                }
                op @ (wsframe::OP_TEXT | wsframe::OP_BINARY) => {
                    if partial.is_some() {
                        break Flow::Close(protocol_close(FrameError::Fragmentation));
                    }
                    if !h.fin {
                        *partial = Some(Box::new((op, payload.to_vec())));
                        continue;
                    }
                    message = None;
                    payload
                }
                _ => {
                    // Continuation of a fragmented message.
                    let Some((_, so_far)) = partial.as_deref_mut() else {
                        break Flow::Close(protocol_close(FrameError::Fragmentation));
                    };
                    if so_far.len() + payload.len() > max {
                        break Flow::Close(codes::MESSAGE_TOO_BIG);
                    }
                    so_far.extend_from_slice(payload);
                    if !h.fin {
                        continue;
                    }
                    message = partial.take();
                    message.as_deref().map_or(&[][..], |(_, m)| m.as_slice())
                }
            };
            let opcode = message.as_deref().map_or(h.opcode, |(op, _)| *op);
            let Ok(text) = std::str::from_utf8(body) else {
                if opcode == wsframe::OP_TEXT {
                    break Flow::Close(INVALID_UTF8);
                }
                // Binary frames are read as text when they are UTF-8, and ignored otherwise.
                continue;
            };
            self.counters.messages_in.inc();
            self.counters.bytes_in.inc_by(text.len() as u64);
            // Boxed: handling may wait on the cluster, and that state must not sit in every
            // idle connection's task.
            Box::pin(self.handle(text)).await;
        };
        rbuf.drain(..pos);
        flow
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
        if self.subs.get(ch.as_str()).is_some() {
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
                    &sign::channel_string(&self.socket_id(), ch.as_str(), None),
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
                        let signed = sign::channel_string(&self.socket_id(), ch.as_str(), Some(cd));
                        if !self.verify(s.auth.as_deref(), &signed, ch.as_str()) {
                            return;
                        }
                        presence::parse_channel_data(cd, limits)
                    }
                    (None, Some(u)) => {
                        let signed = sign::channel_string(&self.socket_id(), ch.as_str(), None);
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
                    self.conn.set_authorized();
                }
                self.subs.insert(Sub { name: ch, user_id });
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
        let signed = sign::signin_string(&self.socket_id(), &user_data);
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
        self.conn.set_authorized();
        self.user = Some(Box::new(SignedIn { data }));
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
        let names: Vec<ChannelName> = self.subs.0.drain(..).map(|s| s.name).collect();
        let user = self.user.take();
        self.shared.engine.disconnect(
            &self.conn,
            names.iter(),
            user.as_ref()
                .map(|u| (u.data.id.as_str(), u.data.watchlist.as_slice())),
        );
    }
}
