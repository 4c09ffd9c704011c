//! The Pusher rules of one connection, over decoded messages and with no socket: admission,
//! subscriptions with their authorization, sign-in, client events and their rate limit, and the
//! cleanup when the connection ends. Replies and published events leave through the
//! connection's outbox (`Conn`), so the same rules are tested here without a network.

#[cfg(test)]
mod tests;

use crate::cluster::Store;
use crate::drain::Drain;
use crate::rate::TokenBucket;
use crate::sinks::metrics::Metrics;
use herald_core::{Broker, Conn, Engine, Frame, Topic};
use herald_protocol::frame::{self, ClientMessage, Subscribe};
use herald_protocol::presence::{self, MemberData};
use herald_protocol::sign::{self, AuthError};
use herald_protocol::user::{self, UserData};
use herald_protocol::{codes, encode, ChannelKind, ChannelName, CloseCode};
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a subscription waits for the cluster's presence roster before using the local one.
const CLUSTER_READ: Duration = Duration::from_secs(1);

/// What every session needs from the server: its narrow handle.
#[derive(Debug)]
pub struct Ctx {
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    /// Cluster-wide rosters and online users, when nodes are joined.
    pub cluster: Option<Arc<dyn Store>>,
    pub drain: Arc<Drain>,
    /// Seconds of silence before a probe; announced in the handshake.
    pub activity_timeout: u64,
    /// The largest message a client may send, in bytes (closed with 1009 above it).
    pub max_ws_message_bytes: usize,
    /// How long a write may wait for the client to take a byte before the connection is
    /// closed as a slow consumer (4100): the pong timeout, since a client that takes nothing
    /// for that long could not have answered a probe either.
    pub write_timeout: std::time::Duration,
    /// `permessage-deflate`: compress server messages of at least this many bytes (`None`: the
    /// extension is never negotiated).
    pub compression: Option<usize>,
    /// Whether compression may keep its context from message to message.
    pub compression_context_takeover: bool,
}

#[cfg(test)]
impl Ctx {
    /// A context over an engine serving the default app, for the transports' tests.
    pub(crate) fn for_tests(max_ws_message_bytes: usize, write_timeout: Duration) -> Self {
        use herald_core::{App, Cluster, EngineConfig, StaticAppStore};
        let engine = Engine::new(
            Arc::new(StaticAppStore::new(vec![App::default_app()]).unwrap()),
            Cluster::local(),
            vec![],
            EngineConfig::default(),
        );
        Self {
            engine,
            metrics: Arc::new(Metrics::new()),
            cluster: None,
            drain: Drain::new(),
            activity_timeout: 120,
            max_ws_message_bytes,
            write_timeout,
            compression: None,
            compression_context_takeover: false,
        }
    }
}

/// What the upgrade request said that matters.
#[derive(Debug, Default, Clone)]
pub struct ConnectParams {
    /// False for upgrades to paths other than `/app/{key}` (closed with 4005).
    pub path_ok: bool,
    pub key: Option<String>,
    pub protocol: Option<String>,
    pub tls: bool,
}

/// Admits a connection, or says which close code refuses it.
pub fn admit(ctx: &Ctx, params: &ConnectParams) -> Result<Arc<Conn>, CloseCode> {
    if !params.path_ok {
        return Err(codes::PATH_NOT_FOUND);
    }
    let engine = &ctx.engine;
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
    if ctx.drain.draining() {
        return Err(codes::RECONNECT);
    }
    let app_id = app.id.clone();
    engine.connect(app).inspect_err(|_| {
        ctx.metrics.rejected(&app_id, "max_connections");
    })
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

/// One connection's Pusher session.
pub struct Session {
    ctx: Arc<Ctx>,
    conn: Arc<Conn>,
    subs: Subs,
    /// Boxed: most connections never sign in.
    user: Option<Box<SignedIn>>,
    rate: TokenBucket,
    /// Subscribes and unsubscribes (`limits.subscription_rate`).
    sub_rate: TokenBucket,
}

impl Session {
    pub fn new(ctx: Arc<Ctx>, conn: Arc<Conn>) -> Self {
        let app = conn.app();
        let rate = TokenBucket::new(app.limits.client_event_rate, Instant::now());
        let sub_rate = TokenBucket::with_burst(subscription_burst(&app), Instant::now());
        drop(app);
        Self {
            ctx,
            subs: Subs::default(),
            user: None,
            rate,
            sub_rate,
            conn,
        }
    }

    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    /// Queues `pusher:connection_established`, the first frame of every session.
    pub fn established(&self) {
        let activity = self.ctx.activity_timeout;
        self.queue(encode::connection_established(&self.socket_id(), activity));
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

    /// Applies one text message from the client.
    pub async fn handle(&mut self, text: &str) {
        let msg = match frame::decode(text) {
            Ok(m) => m,
            Err(e) => {
                return self.error(None, &e.to_string());
            }
        };
        match msg {
            ClientMessage::Ping => self.queue(encode::PONG.to_owned()),
            ClientMessage::Pong => {}
            ClientMessage::Subscribe(s) => {
                if self.subscription_allowed(&s.channel) {
                    self.subscribe(s).await;
                }
            }
            ClientMessage::Unsubscribe { channel } => {
                if !self.subscription_allowed(&channel) {
                    return;
                }
                if let Some(sub) = self.subs.remove(channel.as_str()) {
                    self.ctx.engine.unsubscribe(&self.conn, &sub.name);
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
        if self.conn.app().emit_subscription_error {
            self.queue(encode::subscription_error(channel, &msg, 401));
        }
    }

    fn verify(&self, auth: Option<&str>, signed: &str, channel: &str) -> bool {
        let app = self.conn.app();
        match sign::verify_auth(auth, signed, channel, |k| app.has_key(k), &app.secret) {
            Ok(()) => true,
            Err(e) => {
                self.auth_failed(channel, &e);
                false
            }
        }
    }

    /// Takes a token for a subscribe or unsubscribe; refuses with 4301 when none is left.
    fn subscription_allowed(&mut self, channel: &str) -> bool {
        let app = self.conn.app();
        let rate = app.limits.subscription_rate;
        if rate == 0
            || self
                .sub_rate
                .allow_burst(rate, subscription_burst(&app), Instant::now())
        {
            return true;
        }
        self.ctx.metrics.rejected(&app.id, "subscription_rate");
        self.error(
            Some(codes::CLIENT_EVENT_RATE_LIMIT),
            &format!(
                "Subscription to {channel} rejected due to rate limit: at most {rate} subscribes and unsubscribes per second"
            ),
        );
        false
    }

    async fn subscribe(&mut self, s: Subscribe) {
        let app = self.conn.app();
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
            self.ctx
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
        // Clustered: the broker must carry this channel to this node before the client hears
        // `subscription_succeeded`, or an event published right after it could miss this node.
        // The hold taken here is given back once the engine holds its own.
        let mut _hold = None;
        if self.ctx.cluster.is_some() {
            let broker = self.ctx.engine.cluster().broker.clone();
            let topic = Topic::channel(&Arc::from(app.id.as_str()), &ch);
            let ready = broker.subscribe(topic.clone());
            _hold = Some(Hold { broker, topic });
            if let Some(r) = ready {
                if !matches!(tokio::time::timeout(CLUSTER_READ, r).await, Ok(Ok(()))) {
                    tracing::warn!(channel = %ch, "the cluster's broker did not confirm the subscription in time; subscribing anyway");
                }
            }
        }
        let remote = match (&self.ctx.cluster, ch.is_presence()) {
            (Some(c), true) => tokio::time::timeout(CLUSTER_READ, c.members(&app.id, ch.as_str()))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let stored = match (&self.ctx.cluster, ch.is_cache()) {
            (Some(c), true) => tokio::time::timeout(CLUSTER_READ, c.cached(&app.id, ch.as_str()))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten(),
            _ => None,
        };
        let result = self
            .ctx
            .engine
            .subscribe_with(&self.conn, &ch, member, &remote, stored);
        drop(_hold);
        match result {
            Ok(_) => {
                if ch.needs_auth() {
                    self.conn.set_authorized();
                }
                self.subs.insert(Sub { name: ch, user_id });
            }
            Err(e) => {
                let code = match &e {
                    herald_core::SubscribeError::PresenceFull { .. } => {
                        self.ctx.metrics.rejected(&app.id, "max_presence_members");
                        None
                    }
                    herald_core::SubscribeError::OverCapacity { max, .. } => {
                        self.ctx.metrics.rejected(&app.id, "max_subscriptions");
                        warn_at_capacity(*max);
                        Some(codes::SUBSCRIPTION_CAPACITY)
                    }
                    herald_core::SubscribeError::Existing { .. } => None,
                };
                self.error(code, &e.to_string());
            }
        }
    }

    async fn signin(&mut self, auth: Option<String>, user_data: Option<String>) {
        let app = self.conn.app();
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
        let remote_online = match &self.ctx.cluster {
            Some(c) if app.enable_watchlist_events => {
                tokio::time::timeout(CLUSTER_READ, c.online(&app.id, &data.watchlist))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        self.ctx
            .engine
            .signin_with(&self.conn, &data.id, &data.watchlist, &remote_online);
        self.conn.set_authorized();
        self.user = Some(Box::new(SignedIn { data }));
    }

    fn client_event(&mut self, event: &str, channel: Option<&str>, data: Option<&RawValue>) {
        let app = self.conn.app();
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
        if ch.is_encrypted() {
            return self.error(
                None,
                "Client event rejected - client events are not supported on encrypted channels",
            );
        }
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
        if !self
            .rate
            .allow(app.limits.client_event_rate, Instant::now())
        {
            self.ctx.metrics.rejected(&app.id, "client_event_rate");
            return self.error(
                Some(codes::CLIENT_EVENT_RATE_LIMIT),
                codes::CLIENT_EVENT_RATE_LIMIT_MSG,
            );
        }
        let user_id = sub.user_id.as_deref().filter(|_| ch.is_presence());
        self.ctx
            .engine
            .client_event(&self.conn, &ch, event, data, user_id);
    }

    /// Leaves every channel and signs out: the connection is gone.
    pub fn cleanup(&mut self) {
        let names: Vec<ChannelName> = self.subs.0.drain(..).map(|s| s.name).collect();
        let user = self.user.take();
        self.ctx.engine.disconnect(
            &self.conn,
            names.iter(),
            user.as_ref()
                .map(|u| (u.data.id.as_str(), u.data.watchlist.as_slice())),
        );
    }
}

/// When the subscription cap last refused (`clock_ms`), so that the log says so at most once per
/// 10 s, not once per refusal.
static CAPACITY_WARNED_MS: AtomicU64 = AtomicU64::new(0);

fn warn_at_capacity(max: usize) {
    let now = herald_core::clock_ms();
    let last = CAPACITY_WARNED_MS.load(Ordering::Relaxed);
    if (last == 0 || now.saturating_sub(last) >= 10_000)
        && CAPACITY_WARNED_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            max,
            "subscribes refused (4300): the server holds server.max_subscriptions; see herald_limit_rejections_total{{limit=\"max_subscriptions\"}}"
        );
    }
}

/// The burst of subscribes a connection may make at once: enough for a reconnecting client to
/// subscribe every channel it may hold.
fn subscription_burst(app: &herald_core::App) -> u32 {
    let per_conn = u32::try_from(app.limits.max_channels_per_connection).unwrap_or(u32::MAX);
    per_conn.max(app.limits.subscription_rate)
}

/// A session's hold on a broker topic, given back when dropped (also when the session ends while
/// it waits).
struct Hold {
    broker: Arc<dyn Broker>,
    topic: Topic,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.broker.unsubscribe(self.topic.clone());
    }
}
