//! The connection layer under the Redis engine: how a node reaches Redis in each mode operators
//! run (one server, a primary behind Sentinels, a Redis Cluster; TLS and ACL logins in all),
//! with one shared connection for commands and dedicated ones for pub/sub. Checking the
//! settings is `setup`; subscribers are `subscriber`.
//!
//! * Commands (`query`, `publish`) share one multiplexed connection: made on first use,
//!   replaced when it fails with an I/O, dropped-connection, timeout or READONLY error (a
//!   restart, a failover), and the command tried once more on the new one (not after a
//!   timeout). In Sentinel mode a new connection asks the Sentinels for the current primary,
//!   and the link listens to their `+switch-master`, so that a primary handed over while it
//!   is still up (`SENTINEL FAILOVER`) is left at once, not when it is demoted seconds later.
//!   In Cluster mode it is the crate's cluster connection, which routes by key.
//! * A subscriber owns its own connections (RESP3, so messages and replies share one reader).
//!   It never reconnects by itself: when a connection is lost, when Redis ends a subscription
//!   on its own (a failover, a slot that moved), or when the Sentinels switch primaries, its
//!   stream of messages ends, and the caller makes a new subscriber and subscribes again.
//!   That way no gap goes unnoticed.
//! * `publish` keeps the order of messages to one channel: they go in one pipeline per hash
//!   slot (one per call outside Cluster mode), and a call returns only once Redis acknowledged
//!   every message. A batch cut by a connection that broke is sent again whole on the new
//!   connection, and a caller that retries a failed batch does the same: messages sent before
//!   the break can then arrive twice (in order), never silently not at all.

pub use crate::config::RedisMode;
use crate::redact::redact_url;
use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::SentinelClient;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue,
    ProtocolVersion, RedisError, RedisFuture, RedisResult, Value,
};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

mod setup;
mod subscriber;

pub use subscriber::{Messages, Subscriptions, MAX_BACKLOG};

/// Connect and response timeout of every connection.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before listening to the next Sentinel when one cannot be reached.
const SENTINEL_RETRY: Duration = Duration::from_millis(500);
/// Redis Cluster's hash slots.
const SLOTS: usize = 16384;

/// A command, pipeline or script for [`Link::query`].
#[derive(Clone, Copy)]
pub enum Query<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
    Script(&'a redis::ScriptInvocation<'a>),
}

/// Settings of a [`Link`] beyond the URLs and the mode.
#[derive(Clone, Default)]
pub struct LinkOptions {
    /// PEM file of the certificate authorities to trust for `rediss://` instead of the
    /// system's (`redis.ca_file`).
    pub ca_file: Option<String>,
    /// Password of the Sentinels themselves (`redis.sentinel_password`); the password in the
    /// URLs is the primary's.
    pub sentinel_password: Option<String>,
}

impl std::fmt::Debug for LinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkOptions")
            .field("ca_file", &self.ca_file)
            .field("sentinel_password", &self.sentinel_password.is_some())
            .finish()
    }
}

/// The way to Redis for one node. Cheap to clone; connects on first use.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("mode", &self.inner.mode)
            .field("urls", &self.inner.shown)
            .finish_non_exhaustive()
    }
}

struct Inner {
    mode: RedisMode,
    shown: String,
    target: Target,
    /// The shared command connection and its generation, so that a failure on an old
    /// connection does not drop its replacement.
    current: parking_lot::Mutex<Option<(u64, Conn)>>,
    /// Held while connecting: callers wait for one attempt instead of making their own.
    connecting: tokio::sync::Mutex<Attempts>,
    /// Failed attempts to connect, so that callers queued behind one share its outcome.
    failures: AtomicU64,
    /// Counts the primary switches the Sentinels announced (Sentinel mode); subscribers end
    /// on the next one.
    switches: watch::Sender<u64>,
    /// Whether the task that listens to the Sentinels runs.
    watching: AtomicBool,
}

enum Target {
    /// One server (standalone), with TLS roots applied.
    Single(Client),
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        /// The Sentinels, with their own login, for `+switch-master`.
        sentinels: Vec<ConnectionInfo>,
        master: String,
    },
    Cluster {
        client: ClusterClient,
        /// Login and TLS settings for connections to single cluster nodes (subscribers).
        template: ConnectionInfo,
    },
}

#[derive(Default)]
struct Attempts {
    generation: u64,
    last_failure: Option<(ErrorKind, String)>,
}

#[derive(Clone)]
enum Conn {
    One(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// `redis.url` split at its commas, blanks around each URL removed.
pub fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',').map(|u| u.trim().to_owned()).collect()
}

/// The Redis Cluster hash slot of a key or channel: CRC16 (XMODEM) of its hash tag (the part
/// between the first `{` and the next `}`, when not empty) or of the whole key, modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for &b in hashed {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS as u16
}

fn connection_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(TIMEOUT)
        .set_response_timeout(TIMEOUT)
}

fn timed_out(what: &str, limit: Duration) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what}: no answer within {} s", limit.as_secs()),
    ))
}

/// Whether the connection that gave `e` must be replaced: it is gone, silent, or no longer
/// talks to a primary.
fn is_broken(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.kind() == ErrorKind::ReadOnly
}

/// Whether a command that failed with `e` is worth one more try on a new connection. Not
/// after a timeout: the wait would double, and Redis may still be running the command.
fn is_retryable(e: &RedisError) -> bool {
    is_broken(e) && !e.is_timeout()
}

impl Link {
    /// Checks the URLs and the mode together (scheme, count, what each mode needs) with
    /// messages naming the settings. Connects to nothing.
    pub fn new(
        urls: &[String],
        mode: RedisMode,
        sentinel_master: Option<&str>,
    ) -> Result<Link, String> {
        Self::with_options(urls, mode, sentinel_master, &LinkOptions::default())
    }

    /// The link that `[redis]` describes.
    pub fn from_config(c: &crate::config::RedisConfig) -> Result<Link, String> {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Self::with_options(
            &split_urls(&c.url),
            c.mode,
            some(&c.sentinel_master).as_deref(),
            &LinkOptions {
                ca_file: some(&c.ca_file),
                sentinel_password: some(&c.sentinel_password),
            },
        )
    }

    /// [`Link::new`] with the TLS roots and the Sentinels' password.
    pub fn with_options(
        urls: &[String],
        mode: RedisMode,
        sentinel_master: Option<&str>,
        options: &LinkOptions,
    ) -> Result<Link, String> {
        let (target, shown) = setup::target(urls, mode, sentinel_master, options)?;
        Ok(Link {
            inner: Arc::new(Inner {
                mode,
                shown,
                target,
                current: parking_lot::Mutex::new(None),
                connecting: tokio::sync::Mutex::new(Attempts::default()),
                failures: AtomicU64::new(0),
                switches: watch::channel(0).0,
                watching: AtomicBool::new(false),
            }),
        })
    }

    pub fn mode(&self) -> RedisMode {
        self.inner.mode
    }

    /// The URLs for log lines, passwords hidden.
    pub fn shown(&self) -> String {
        self.inner.shown.clone()
    }

    /// Runs a command, pipeline or script on the shared connection (see the module notes).
    pub async fn query<T: FromRedisValue>(&self, q: Query<'_>) -> RedisResult<T> {
        self.retrying(|mut c| async move {
            match q {
                Query::Cmd(cmd) => cmd.query_async(&mut c).await,
                Query::Pipe(p) => p.query_async(&mut c).await,
                Query::Script(s) => s.invoke_async(&mut c).await,
            }
        })
        .await
    }

    /// Publishes each payload to its channel (PUBLISH, or SPUBLISH in Cluster mode), pipelined;
    /// Ok once Redis acknowledged every one. Messages to one channel reach Redis in the order
    /// given, and after those of an earlier call that returned.
    pub async fn publish(&self, batch: &[(Vec<u8>, Vec<u8>)]) -> RedisResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if self.inner.mode != RedisMode::Cluster {
            let mut pipe = redis::pipe();
            for (channel, payload) in batch {
                pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
            }
            return self.query(Query::Pipe(&pipe)).await;
        }
        // A pipeline per slot: Redis serves a slot from one node, and the pipeline keeps the
        // order of its messages; the slots go out at once.
        let mut groups: HashMap<u16, (redis::Pipeline, usize)> = HashMap::new();
        for (channel, payload) in batch {
            let (pipe, n) = groups
                .entry(key_slot(channel))
                .or_insert_with(|| (redis::pipe(), 0));
            pipe.cmd("SPUBLISH").arg(channel).arg(payload);
            *n += 1;
        }
        try_join_all(groups.iter().map(|(slot, (pipe, n))| {
            self.retrying(move |c| async move {
                let Conn::Cluster(mut c) = c else {
                    unreachable!("a cluster link holds a cluster connection")
                };
                let route =
                    SingleNodeRoutingInfo::SpecificNode(Route::new(*slot, SlotAddr::Master));
                for v in c.route_pipeline(pipe, 0, *n, route).await? {
                    v.extract_error()?;
                }
                Ok(())
            })
        }))
        .await?;
        Ok(())
    }

    /// Runs `op` on the shared connection; a broken connection is replaced, and `op` tried
    /// once more on the new one when that may help.
    async fn retrying<T, F, Fut>(&self, op: F) -> RedisResult<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let mut retried = false;
        loop {
            let (generation, conn) = self.conn().await?;
            match op(conn).await {
                Err(e) if is_broken(&e) => {
                    self.forget(generation);
                    if retried || !is_retryable(&e) {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, urls = %self.inner.shown, "Redis connection broken; trying once more on a new one");
                    retried = true;
                }
                r => return r,
            }
        }
    }

    /// The shared connection, made when there is none. Callers that waited while another
    /// one's attempt failed get that failure rather than trying again in turn.
    async fn conn(&self) -> RedisResult<(u64, Conn)> {
        if let Some(c) = self.inner.current.lock().clone() {
            return Ok(c);
        }
        let seen = self.inner.failures.load(Ordering::Acquire);
        let mut a = self.inner.connecting.lock().await;
        if let Some(c) = self.inner.current.lock().clone() {
            return Ok(c);
        }
        if self.inner.failures.load(Ordering::Acquire) != seen {
            if let Some((kind, text)) = &a.last_failure {
                return Err(RedisError::from((
                    *kind,
                    "cannot connect to Redis",
                    text.clone(),
                )));
            }
        }
        match self.connect().await {
            Ok(c) => {
                a.generation += 1;
                let made = (a.generation, c);
                *self.inner.current.lock() = Some(made.clone());
                Ok(made)
            }
            Err(e) => {
                a.last_failure = Some((e.kind(), e.to_string()));
                self.inner.failures.fetch_add(1, Ordering::Release);
                Err(e)
            }
        }
    }

    fn forget(&self, generation: u64) {
        let mut current = self.inner.current.lock();
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
        }
    }

    async fn connect(&self) -> RedisResult<Conn> {
        // The Sentinels are asked one after the other, each with its own timeout.
        let limit = TIMEOUT * 2;
        let made = async {
            match &self.inner.target {
                Target::Single(client) => Ok(Conn::One(
                    client
                        .get_multiplexed_async_connection_with_config(&connection_config())
                        .await?,
                )),
                Target::Sentinel { .. } => {
                    self.watch_sentinels();
                    let before = *self.inner.switches.borrow();
                    let mut c = self.primary().await?;
                    // A switch announced meanwhile may have named another primary.
                    if *self.inner.switches.borrow() != before {
                        c = self.primary().await?;
                    }
                    Ok(Conn::One(
                        c.get_multiplexed_async_connection_with_config(&connection_config())
                            .await?,
                    ))
                }
                Target::Cluster { client, .. } => {
                    Ok(Conn::Cluster(client.get_async_connection().await?))
                }
            }
        };
        tokio::time::timeout(limit, made)
            .await
            .unwrap_or_else(|_| Err(timed_out("connecting to Redis", limit)))
    }

    /// The current primary, as the Sentinels name it (and it confirms with ROLE).
    async fn primary(&self) -> RedisResult<Client> {
        let Target::Sentinel { client, .. } = &self.inner.target else {
            unreachable!("only a Sentinel link asks for the primary")
        };
        client.lock().await.async_get_client().await
    }

    /// Starts listening to the Sentinels' `+switch-master` (once per link, in a runtime):
    /// a primary handed over while the old one stays up (`SENTINEL FAILOVER`) would otherwise
    /// keep the link's connections until it is demoted, seconds later.
    fn watch_sentinels(&self) {
        let Target::Sentinel {
            sentinels, master, ..
        } = &self.inner.target
        else {
            return;
        };
        if !self.inner.watching.swap(true, Ordering::AcqRel) {
            tokio::spawn(watch_sentinels(
                Arc::downgrade(&self.inner),
                sentinels.clone(),
                master.clone(),
                self.inner.switches.subscribe(),
            ));
        }
    }
}

/// Listens to `+switch-master` on one Sentinel after the other (while one answers, on that
/// one). On a switch of `master`, the link drops its command connection and its subscribers
/// end. Returns once the link is gone.
async fn watch_sentinels(
    link: std::sync::Weak<Inner>,
    sentinels: Vec<ConnectionInfo>,
    master: String,
    mut switches: watch::Receiver<u64>,
) {
    use futures_util::StreamExt;
    let mut listened = false;
    for info in sentinels.iter().cycle() {
        let subscribed = async {
            let mut ps = Client::open(info.clone())?.get_async_pubsub().await?;
            ps.subscribe("+switch-master").await?;
            RedisResult::Ok(ps)
        };
        if let Ok(Ok(mut ps)) = tokio::time::timeout(TIMEOUT, subscribed).await {
            if listened {
                // A switch may have gone unheard while no Sentinel was listened to.
                let Some(inner) = link.upgrade() else { return };
                switched(&inner, "listening to the Sentinels again");
            }
            listened = true;
            let mut stream = ps.on_message();
            loop {
                tokio::select! {
                    m = stream.next() => {
                        let Some(m) = m else { break };
                        // "<name> <old ip> <old port> <new ip> <new port>"
                        let text: String = m.get_payload().unwrap_or_default();
                        if text.split(' ').next() == Some(master.as_str()) {
                            let Some(inner) = link.upgrade() else { return };
                            switched(&inner, &text);
                        }
                    }
                    gone = switches.changed() => if gone.is_err() { return },
                }
            }
        }
        if link.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(SENTINEL_RETRY).await;
    }
}

fn switched(inner: &Inner, why: &str) {
    tracing::info!(urls = %inner.shown, switch = why, "Redis Sentinel: new primary; reconnecting");
    *inner.current.lock() = None;
    inner.switches.send_modify(|n| *n += 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(s: &str) -> Vec<String> {
        split_urls(s)
    }

    #[test]
    fn key_slots_match_redis() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"foo{}{bar}"), 8363);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn each_mode_takes_what_it_needs() {
        let ok = |u: &str, m, s: Option<&str>| Link::new(&urls(u), m, s).unwrap();
        assert_eq!(
            ok("redis://:pw@127.0.0.1:6379", RedisMode::Standalone, None).mode(),
            RedisMode::Standalone
        );
        ok(
            "rediss://herald:pw@127.0.0.1:6380/2",
            RedisMode::Standalone,
            None,
        );
        ok("unix:///run/redis.sock", RedisMode::Standalone, None);
        ok(
            "redis://:pw@10.0.0.1:26379, redis://:pw@10.0.0.2:26379",
            RedisMode::Sentinel,
            Some("mymaster"),
        );
        ok(
            "redis://10.0.0.1:7000,redis://10.0.0.2:7000",
            RedisMode::Cluster,
            None,
        );
    }

    #[test]
    fn bad_setups_are_refused_naming_the_setting() {
        let err = |u: &str, m, s: Option<&str>| Link::new(&urls(u), m, s).unwrap_err();
        for (u, m, s, want) in [
            (
                "http://127.0.0.1:6379",
                RedisMode::Standalone,
                None,
                "must start with redis://",
            ),
            ("", RedisMode::Standalone, None, "empty entry"),
            ("redis://a:1,", RedisMode::Cluster, None, "empty entry"),
            (
                "redis://a:1,redis://b:1",
                RedisMode::Standalone,
                None,
                "lists 2 URLs",
            ),
            (
                "redis://a:26379",
                RedisMode::Sentinel,
                None,
                "HERALD_REDIS_SENTINEL_MASTER",
            ),
            (
                "redis://a:26379",
                RedisMode::Sentinel,
                Some(" "),
                "sentinel_master",
            ),
            (
                "redis://a:1",
                RedisMode::Standalone,
                Some("m"),
                "is \"standalone\"",
            ),
            ("redis://a:1/3", RedisMode::Cluster, None, "only database 0"),
            (
                "unix:///r.sock",
                RedisMode::Cluster,
                None,
                "must start with redis://",
            ),
            (
                "redis://a:1,rediss://b:1",
                RedisMode::Cluster,
                None,
                "mixes",
            ),
            (
                "redis://:x@a:1,redis://:y@b:1",
                RedisMode::Cluster,
                None,
                "same user",
            ),
            (
                "rediss://a:1/#insecure",
                RedisMode::Standalone,
                None,
                "HERALD_REDIS_CA_FILE",
            ),
            (
                "redis://a:notaport",
                RedisMode::Standalone,
                None,
                "invalid redis.url",
            ),
        ] {
            let e = err(u, m, s);
            assert!(e.contains(want), "{u} {m:?}: {e}");
            assert!(e.contains("redis."), "names a setting: {e}");
        }
        let e = err(
            "redis://:hunter2@a:1,redis://b:1",
            RedisMode::Standalone,
            None,
        );
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn the_ca_file_must_hold_certificates_for_a_tls_url() {
        let opts = |f: &str| LinkOptions {
            ca_file: Some(f.to_owned()),
            sentinel_password: None,
        };
        let link =
            |u: &str, f: &str| Link::with_options(&urls(u), RedisMode::Standalone, None, &opts(f));
        let e = link("rediss://a:1", "/no/such/ca.pem").unwrap_err();
        assert!(e.contains("cannot read redis.ca_file"), "{e}");
        let dir = std::env::temp_dir().join(format!("herald-link-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("x.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let e = link("rediss://a:1", not_pem.to_str().unwrap()).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = link("redis://a:1", not_pem.to_str().unwrap()).unwrap_err();
        assert!(e.contains("does not use TLS"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
        let e = Link::with_options(
            &urls("redis://a:1"),
            RedisMode::Cluster,
            None,
            &LinkOptions {
                ca_file: None,
                sentinel_password: Some("pw".into()),
            },
        )
        .unwrap_err();
        assert!(e.contains("redis.sentinel_password"), "{e}");
    }

    #[test]
    fn its_futures_and_types_can_move_between_tasks() {
        fn send<T: Send>(_: &T) {}
        fn shared<T: Send + Sync>(_: &T) {}
        let l = Link::new(&urls("redis://127.0.0.1:1"), RedisMode::Standalone, None).unwrap();
        shared(&l);
        let cmd = redis::cmd("PING");
        send(&l.query::<String>(Query::Cmd(&cmd)));
        send(&l.publish(&[]));
        send(&l.subscriber());
        fn streams(s: &mut Subscriptions, m: &mut Messages) {
            send(&s.subscribe(&[]));
            send(&s.unsubscribe(&[]));
            send(&m.recv());
            send(s);
            send(m);
        }
        let _ = streams as fn(&mut Subscriptions, &mut Messages);
    }

    #[test]
    fn shown_and_debug_hide_passwords() {
        let l = Link::new(
            &urls("redis://u:pw1@a:26379,redis://u:pw1@b:26379"),
            RedisMode::Sentinel,
            Some("m"),
        )
        .unwrap();
        assert_eq!(l.shown(), "redis://u:***@a:26379,redis://u:***@b:26379");
        let d = format!("{l:?}");
        assert!(!d.contains("pw1") && d.contains("Sentinel"), "{d}");
    }
}
