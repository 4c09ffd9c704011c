//! One typed configuration: defaults, then a TOML file, then `HERALD_*` environment variables.
//! Validated once before anything binds; an unknown key or a bad value stops startup with a
//! message that names it.

use herald_core::App;
use herald_protocol::limits::{check_range, MAX_SETTING_SECONDS, MAX_SETTING_SIZE};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use toml::Value;

mod compression;
mod env;
mod errors;

pub use compression::WsCompression;

/// How nodes are joined (`adapter`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Adapter {
    /// One node.
    #[default]
    Local,
    /// Many nodes joined through Redis.
    Redis,
}

// Parsed by hand so that a bad value names its setting.
impl TryFrom<String> for Adapter {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        match v.as_str() {
            "local" => Ok(Adapter::Local),
            "redis" => Ok(Adapter::Redis),
            _ => Err(format!("adapter `{v}` must be \"local\" or \"redis\"")),
        }
    }
}

/// What a clustered node does with publishes while the broker is unreachable
/// (`cluster.on_outage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum OnOutage {
    /// Refuse them with 503 (retryable): the API never says 200 for an event other nodes miss.
    /// Readiness goes down with the broker.
    #[default]
    Reject,
    /// Deliver them to this node's subscribers only, counted in `herald_cluster_dropped_total`
    /// and logged; readiness stays up.
    Local,
}

impl TryFrom<String> for OnOutage {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        match v.as_str() {
            "reject" => Ok(OnOutage::Reject),
            "local" => Ok(OnOutage::Local),
            _ => Err(format!(
                "cluster.on_outage `{v}` must be \"reject\" or \"local\""
            )),
        }
    }
}

/// How clustered nodes behave (`[cluster]`, `HERALD_CLUSTER_*`), whatever the engine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub on_outage: OnOutage,
}

/// Where apps come from (`store.kind`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum StoreKind {
    /// The `[[apps]]` of the configuration file.
    #[default]
    Config,
    Sqlite,
    Postgres,
}

// Parsed by hand so that a bad value names its setting.
impl TryFrom<String> for StoreKind {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        match v.as_str() {
            "config" => Ok(StoreKind::Config),
            "sqlite" => Ok(StoreKind::Sqlite),
            "postgres" => Ok(StoreKind::Postgres),
            _ => Err(format!(
                "store.kind `{v}` must be \"config\", \"sqlite\" or \"postgres\""
            )),
        }
    }
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Config => "config",
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How log lines look (`server.log_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Text,
    Json,
}

// Parsed by hand so that a bad value names its setting.
impl TryFrom<String> for LogFormat {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        match v.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "server.log_format `{v}` must be \"text\" or \"json\""
            )),
        }
    }
}

/// Server-wide settings (`[server]`, `HERALD_SERVER_*`; host and port also `HERALD_HOST`/`HERALD_PORT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Mounted under this path (e.g. `/pusher`); stripped before routing and signing.
    pub path_prefix: String,
    /// Seconds of client silence before the server probes it; sent in the handshake.
    pub activity_timeout: u64,
    /// Seconds to wait for any frame after a probe before closing with 4201.
    pub pong_timeout: u64,
    pub max_ws_message_bytes: usize,
    pub max_request_body_bytes: usize,
    pub log_format: LogFormat,
    /// Milliseconds over which a shutdown closes connections (4200) in paced batches.
    pub drain_window_ms: u64,
    /// Hard deadline in milliseconds for the whole shutdown, webhook flushing included.
    pub shutdown_timeout_ms: u64,
    /// Open sockets on the server port (WebSockets and HTTP) beyond which new WebSocket
    /// connections are refused with 4100 (over capacity). 0: the process's open-file limit
    /// less a reserve, so that the API, health checks, metrics and outgoing connections keep
    /// working when clients take every socket they can.
    pub max_connections: u64,
    /// Channel subscriptions held across all apps beyond which a subscribe is refused with
    /// `pusher:error` 4300 (the connection stays open); 0: no limit. Bounds the memory that
    /// anonymous clients can make the server hold (README, Security).
    pub max_subscriptions: u64,
    /// Connections the kernel may hold accepted for the server port before the server takes
    /// them (`listen` backlog); past it, connection attempts are dropped and retried by the
    /// client after 1, 3, 7 s. The kernel caps it at `net.core.somaxconn`.
    pub listen_backlog: u64,
    /// `permessage-deflate` for clients that offer it: off, on, or on for server messages of at
    /// least a size (README, WebSocket compression).
    pub websocket_compression: WsCompression,
    /// Lets compression keep its context from message to message (better ratios on streams of
    /// similar events) at the cost of a compressor and an inflater per connection (hundreds of
    /// KB each) and one compression per recipient instead of one per event.
    pub websocket_compression_context_takeover: bool,
    /// Seconds an HTTP fallback session (`xhr_streaming`, `xhr_polling`) may go without a
    /// receiving request open before it is ended as a client that went away.
    pub fallback_session_timeout: u64,
    /// Seconds an `xhr_polling` request is held open with nothing to deliver before it is
    /// answered with a heartbeat (the client then polls again).
    pub fallback_poll_timeout: u64,
}

/// Webhook delivery settings (`[webhooks]`, `HERALD_WEBHOOKS_*`); targets are set per app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Delay before `channel_vacated`/`member_removed`; a re-join within it cancels both sides.
    pub vacate_delay_ms: u64,
    /// With batching on: how long events are collected into one body.
    pub batch_window_ms: u64,
    pub batch_max_events: usize,
    pub request_timeout_ms: u64,
    /// No attempt is made later than this many seconds after the webhook was created.
    pub retry_window_secs: u64,
    /// Events an app may have waiting; more are counted and logged as dropped.
    pub queue_capacity: usize,
    /// At most one `cache_miss` webhook per channel per this many milliseconds.
    pub cache_miss_debounce_ms: u64,
    /// Webhooks still undelivered at the shutdown deadline are written here (mode 0600) and
    /// sent on the next start.
    pub spool_file: String,
    /// Refuse destinations that are (IP literal) or resolve to (at connect time) loopback,
    /// private, link-local, CGNAT or unique-local addresses.
    pub deny_private_networks: bool,
    /// When not empty, webhooks go only to these host names (exact, any case).
    pub allowed_hosts: Vec<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            vacate_delay_ms: 3000,
            batch_window_ms: 50,
            batch_max_events: 100,
            request_timeout_ms: 10_000,
            retry_window_secs: 300,
            queue_capacity: 10_000,
            cache_miss_debounce_ms: 10_000,
            spool_file: "herald-webhooks.spool".into(),
            deny_private_networks: false,
            allowed_hosts: Vec::new(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 6001,
            path_prefix: String::new(),
            activity_timeout: 120,
            pong_timeout: 30,
            max_ws_message_bytes: 65_536,
            max_request_body_bytes: 1 << 20,
            log_format: LogFormat::Text,
            drain_window_ms: 5000,
            shutdown_timeout_ms: 15_000,
            max_connections: 0,
            max_subscriptions: 200_000,
            listen_backlog: 4096,
            websocket_compression: WsCompression::Off,
            websocket_compression_context_takeover: false,
            fallback_session_timeout: 30,
            fallback_poll_timeout: 25,
        }
    }
}

/// Where apps come from (`[store]`, `HERALD_STORE_*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// Database URL for `sqlite` (`sqlite://herald.db`) or `postgres` (`postgres://user@host/db`).
    pub url: String,
    /// How often a database store refreshes its in-memory cache of apps, in milliseconds.
    pub refresh_interval_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Config,
            url: String::new(),
            refresh_interval_ms: 1000,
        }
    }
}

/// How Herald reaches Redis (`redis.mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum RedisMode {
    /// One server (`redis.url`), which may have replicas Herald does not use.
    #[default]
    Standalone,
    /// The primary that the Sentinels listed in `redis.url` name `redis.sentinel_master`,
    /// followed through failovers.
    Sentinel,
    /// A Redis Cluster reached through the seed nodes listed in `redis.url`.
    Cluster,
}

// Parsed by hand so that a bad value names its setting.
impl TryFrom<String> for RedisMode {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        match v.as_str() {
            "standalone" => Ok(RedisMode::Standalone),
            "sentinel" => Ok(RedisMode::Sentinel),
            "cluster" => Ok(RedisMode::Cluster),
            _ => Err(format!(
                "redis.mode `{v}` must be \"standalone\", \"sentinel\" or \"cluster\""
            )),
        }
    }
}

impl RedisMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Sentinel => "sentinel",
            RedisMode::Cluster => "cluster",
        }
    }
}

impl std::fmt::Display for RedisMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Redis for scale-out (`[redis]`, `HERALD_REDIS_*`); used when `adapter = "redis"`.
/// `cluster::redis::link::Link::from_config` checks how the keys fit together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// One URL, or several separated by commas: the Sentinels (`mode = "sentinel"`) or seed
    /// nodes (`mode = "cluster"`). The user and password in it are the data nodes' login.
    pub url: String,
    /// Prefix of every key and channel, so several deployments can share one Redis.
    pub prefix: String,
    pub mode: RedisMode,
    /// The primary's name as the Sentinels know it (`sentinel monitor <name> ...`).
    pub sentinel_master: String,
    /// The Sentinels' own password (their `requirepass`), when they have one.
    pub sentinel_password: String,
    /// PEM file of the authorities that signed the servers' certificates (`rediss://`), for a
    /// private CA; empty: the system's trusted roots.
    pub ca_file: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "herald".into(),
            mode: RedisMode::Standalone,
            sentinel_master: String::new(),
            sentinel_password: String::new(),
            ca_file: String::new(),
        }
    }
}

/// Prometheus metrics (`[metrics]`, `HERALD_METRICS_*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Address of the metrics and health listener. Loopback by default: the metrics name every
    /// app, and a scraper or health check usually runs on the same host or reaches it through a
    /// proxy; set `0.0.0.0` to expose it.
    pub host: String,
    /// Port of the metrics and health listener; 0 picks a free one.
    pub port: u16,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            host: "127.0.0.1".into(),
            port: 9601,
        }
    }
}

/// TLS for both `wss://` and `https://` on the server port (`[tls]`, `HERALD_TLS_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; TLS is on when this and `key_file` are set.
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty() && !self.key_file.is_empty()
    }
}

/// The built-in debug console (`[console]`, `HERALD_CONSOLE_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Admin token for `/console`; the console is off while it is empty.
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub adapter: Adapter,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub webhooks: WebhookSettings,
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    /// The apps served. Empty in the file means: the embedded default app.
    #[serde(default)]
    pub apps: Vec<App>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            adapter: Adapter::Local,
            redis: RedisConfig::default(),
            cluster: ClusterConfig::default(),
            server: ServerConfig::default(),
            webhooks: WebhookSettings::default(),
            console: ConsoleConfig::default(),
            store: StoreConfig::default(),
            metrics: MetricsConfig::default(),
            tls: TlsConfig::default(),
            apps: vec![App::default_app()],
        }
    }
}

/// `server.listen_backlog` bounds: fewer than 64 waiting connections overflow on the first burst
/// of page loads; a queue longer than 65,535 holds clients for tens of seconds at any accept
/// rate this server reaches, which is no better than refusing them.
const MIN_LISTEN_BACKLOG: u64 = 64;
const MAX_LISTEN_BACKLOG: u64 = 65_535;

impl Config {
    /// Loads from an optional TOML file (path, text) and an environment (name, value) list.
    pub fn load(
        file: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, String> {
        let mut root = match file {
            Some((path, text)) => text
                .parse::<toml::Table>()
                .map_err(|e| errors::syntax(path, text, &e))?,
            None => toml::Table::new(),
        };
        let file_has_apps = root.contains_key("apps");
        if !file_has_apps {
            root.insert(
                "apps".into(),
                Value::Array(vec![to_value(&App::default_app())]),
            );
        }
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("HERALD_"))
            .collect();
        env::apply(&mut root, env, file_has_apps)?;
        let config: Config = Value::Table(root.clone())
            .try_into()
            .map_err(|e| errors::describe(&root, e, file))?;
        config.validate()?;
        Ok(config)
    }

    /// The environment variables that set something, with the setting each sets
    /// (`HERALD_PORT` → `server.port`): the list the loader reads them from.
    pub fn variables() -> Vec<(String, String)> {
        env::variables()
            .into_iter()
            .map(|(name, t)| (name, t.setting()))
            .collect()
    }

    fn validate(&self) -> Result<(), String> {
        if self.apps.is_empty() {
            return Err("invalid configuration: `apps` is empty; list at least one app".into());
        }
        for (i, a) in self.apps.iter().enumerate() {
            a.validate()
                .map_err(|e| format!("invalid configuration: apps[{i}].{e}"))?;
        }
        self.check_ranges()
            .map_err(|e| format!("invalid configuration: {e}"))?;
        self.check_webhook_destinations()
            .map_err(|e| format!("invalid configuration: {e}"))?;
        let s = &self.server;
        if !(s.path_prefix.is_empty()
            || (s.path_prefix.starts_with('/') && !s.path_prefix.ends_with('/')))
        {
            return Err(format!(
                "invalid configuration: server.path_prefix `{}` must start with '/' and not end with '/'",
                s.path_prefix
            ));
        }
        if self.adapter == Adapter::Redis && !cfg!(feature = "redis") {
            return Err(
                "invalid configuration: adapter is \"redis\" but this herald was built without the `redis` feature".into(),
            );
        }
        if self.redis.prefix.is_empty() || self.redis.prefix.contains(char::is_whitespace) {
            return Err("invalid configuration: redis.prefix must be a non-empty word".into());
        }
        let built = match self.store.kind {
            StoreKind::Config => true,
            StoreKind::Sqlite => cfg!(feature = "sqlite"),
            StoreKind::Postgres => cfg!(feature = "postgres"),
        };
        if !built {
            return Err(format!(
                "invalid configuration: store.kind is \"{0}\" but this herald was built without the `{0}` feature",
                self.store.kind
            ));
        }
        if self.store.kind != StoreKind::Config && self.store.url.is_empty() {
            return Err(format!(
                "invalid configuration: store.kind is `{}` but store.url is empty",
                self.store.kind
            ));
        }
        if self.tls.cert_file.is_empty() != self.tls.key_file.is_empty() {
            return Err(
                "invalid configuration: set both tls.cert_file and tls.key_file, or neither".into(),
            );
        }
        herald_core::StaticAppStore::new(self.apps.clone())
            .map_err(|e| format!("invalid configuration: {e}"))?;
        Ok(())
    }

    /// Every duration and size within its range, so that no instant or buffer computed from a
    /// setting can overflow later; the error names the setting.
    fn check_ranges(&self) -> Result<(), String> {
        const SECS: u64 = MAX_SETTING_SECONDS;
        const MILLIS: u64 = MAX_SETTING_SECONDS * 1000;
        let (s, w) = (&self.server, &self.webhooks);
        let size = |v: usize| v as u64;
        for (name, value, min, max) in [
            ("server.activity_timeout", s.activity_timeout, 1, SECS),
            ("server.pong_timeout", s.pong_timeout, 1, SECS),
            (
                "server.fallback_session_timeout",
                s.fallback_session_timeout,
                1,
                SECS,
            ),
            (
                "server.fallback_poll_timeout",
                s.fallback_poll_timeout,
                1,
                SECS,
            ),
            (
                "server.max_ws_message_bytes",
                size(s.max_ws_message_bytes),
                2,
                1 << 30,
            ),
            (
                "server.max_request_body_bytes",
                size(s.max_request_body_bytes),
                1,
                1 << 30,
            ),
            ("server.drain_window_ms", s.drain_window_ms, 0, MILLIS),
            (
                "server.max_connections",
                s.max_connections,
                0,
                MAX_SETTING_SIZE,
            ),
            (
                "server.max_subscriptions",
                s.max_subscriptions,
                0,
                MAX_SETTING_SIZE,
            ),
            (
                "server.shutdown_timeout_ms",
                s.shutdown_timeout_ms,
                0,
                MILLIS,
            ),
            (
                "server.listen_backlog",
                s.listen_backlog,
                MIN_LISTEN_BACKLOG,
                MAX_LISTEN_BACKLOG,
            ),
            ("webhooks.vacate_delay_ms", w.vacate_delay_ms, 0, MILLIS),
            ("webhooks.batch_window_ms", w.batch_window_ms, 0, MILLIS),
            (
                "webhooks.batch_max_events",
                size(w.batch_max_events),
                1,
                MAX_SETTING_SIZE,
            ),
            (
                "webhooks.request_timeout_ms",
                w.request_timeout_ms,
                1,
                MILLIS,
            ),
            ("webhooks.retry_window_secs", w.retry_window_secs, 0, SECS),
            (
                "webhooks.queue_capacity",
                size(w.queue_capacity),
                0,
                MAX_SETTING_SIZE,
            ),
            (
                "webhooks.cache_miss_debounce_ms",
                w.cache_miss_debounce_ms,
                0,
                MILLIS,
            ),
            (
                "store.refresh_interval_ms",
                self.store.refresh_interval_ms,
                1,
                MILLIS,
            ),
        ] {
            check_range(name, value, min, max)?;
        }
        Ok(())
    }

    /// `webhooks.allowed_hosts` lists host names, and every target URL passes it and, where its
    /// host is an IP address, `webhooks.deny_private_networks` (names are checked on the
    /// addresses they resolve to, when a webhook is sent).
    fn check_webhook_destinations(&self) -> Result<(), String> {
        for h in &self.webhooks.allowed_hosts {
            if h.trim().is_empty() || h.contains(['/', '@', '?', '#']) {
                return Err(format!(
                    "webhooks.allowed_hosts entry `{h}` must be a host name, not a URL"
                ));
            }
        }
        for (i, a) in self.apps.iter().enumerate() {
            for (j, w) in a.webhooks.iter().enumerate() {
                // The delivery client would refuse it at every attempt; say so at startup.
                let parsed = reqwest::Url::parse(&w.url)
                    .map_err(|e| e.to_string())
                    .and_then(|u| match u.host_str() {
                        Some(h) if !h.is_empty() => Ok(()),
                        _ => Err("it has no host".to_owned()),
                    });
                if let Err(why) = parsed {
                    return Err(format!(
                        "apps[{i}].webhooks[{j}].url `{}` is not a valid URL: {why}",
                        crate::redact::redact_url(&w.url)
                    ));
                }
                if let Some(why) = crate::sinks::webhook::dest::refusal(
                    self.webhooks.deny_private_networks,
                    &self.webhooks.allowed_hosts,
                    &w.url,
                ) {
                    return Err(format!(
                        "apps[{i}].webhooks[{j}].url `{}` is refused: {why}",
                        crate::redact::redact_url(&w.url)
                    ));
                }
            }
        }
        Ok(())
    }

    /// The configuration as TOML, secrets replaced.
    pub fn redacted_toml(&self) -> String {
        use crate::redact::{redact_url, redact_urls, REDACTED};
        let mut c = self.clone();
        for a in &mut c.apps {
            a.secret = REDACTED.into();
            for w in &mut a.webhooks {
                w.url = redact_url(&w.url);
                // Extra headers exist to carry credentials (Authorization, API keys).
                for v in w.headers.values_mut() {
                    *v = REDACTED.into();
                }
            }
        }
        if !c.console.token.is_empty() {
            c.console.token = REDACTED.into();
        }
        c.redis.url = redact_urls(&c.redis.url);
        if !c.redis.sentinel_password.is_empty() {
            c.redis.sentinel_password = REDACTED.into();
        }
        c.store.url = redact_url(&c.store.url);
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    Value::try_from(v).expect("config types serialize to TOML")
}

fn to_table<T: Serialize>(v: &T) -> toml::Table {
    match to_value(v) {
        Value::Table(t) => t,
        _ => unreachable!("structs serialize to tables"),
    }
}

fn lookup<'a>(t: &'a toml::Table, path: &[String], key: &str) -> Option<&'a Value> {
    let mut cur = t;
    for p in path {
        cur = cur.get(p)?.as_table()?;
    }
    cur.get(key)
}

/// Sets `path.key`; a section the file wrote as something other than a table is an error
/// naming it (`server = 5` with `HERALD_PORT` set).
fn insert(t: &mut toml::Table, path: &[String], key: String, value: Value) -> Result<(), String> {
    let mut cur = t;
    for p in path {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| Value::Table(toml::Table::new()));
        let kind = entry.type_str();
        cur = entry.as_table_mut().ok_or_else(|| {
            format!("invalid configuration: `{p}` must be a table ([{p}]), not a {kind}")
        })?;
    }
    cur.insert(key, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_serve_the_embedded_app_on_6001() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.server.port, 6001);
        assert_eq!(c.apps.len(), 1);
        assert_eq!(c.apps[0].id, "app-id");
        assert_eq!(c.apps[0].key, "app-key");
        assert_eq!(c.apps[0].secret, "app-secret");
        assert!(c.apps[0].enable_client_messages);
    }

    #[test]
    fn env_overrides_with_types() {
        let c = Config::load(
            None,
            env(&[
                ("HERALD_PORT", "7000"),
                ("HERALD_HOST", "127.0.0.1"),
                ("HERALD_DEFAULT_APP_ID", "123"),
                ("HERALD_DEFAULT_APP_SECRET", "456"),
                ("HERALD_DEFAULT_APP_ENABLE_CLIENT_MESSAGES", "false"),
                ("HERALD_DEFAULT_APP_MAX_CONNECTIONS", "5"),
                ("HERALD_SERVER_ACTIVITY_TIMEOUT", "30"),
                ("HERALD_LOG", "debug"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.port, 7000);
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.server.activity_timeout, 30);
        assert_eq!(c.apps[0].id, "123");
        assert_eq!(c.apps[0].secret, "456");
        assert!(!c.apps[0].enable_client_messages);
        assert_eq!(c.apps[0].limits.max_connections, 5);
    }

    #[test]
    fn errors_name_the_culprit() {
        let e = Config::load(None, env(&[("HERALD_PORT", "x")])).unwrap_err();
        assert!(e.contains("HERALD_PORT"), "{e}");
        let e = Config::load(None, env(&[("HERALD_NOPE", "1")])).unwrap_err();
        assert!(e.contains("HERALD_NOPE"), "{e}");
        let e = Config::load(None, env(&[("HERALD_SERVER_NOPE", "1")])).unwrap_err();
        assert!(e.contains("HERALD_SERVER_NOPE"), "{e}");
        let e = Config::load(Some(("h.toml", "[server]\nbogus = 1\n")), env(&[])).unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::load(Some(("h.toml", "[server]\nport = \"x\"\n")), env(&[])).unwrap_err();
        assert!(e.contains("port") || e.contains("invalid type"), "{e}");
        let e = Config::load(
            Some(("h.toml", "[[apps]]\nid='a'\nkey='k'\nsecret='s'\nfoo=1\n")),
            env(&[]),
        )
        .unwrap_err();
        assert!(e.contains("foo"), "{e}");
        let e = Config::load(
            Some((
                "h.toml",
                "[[apps]]\nid='a'\nkey='k'\nsecret='s'\n[apps.limits]\nmax_x=1\n",
            )),
            env(&[]),
        )
        .unwrap_err();
        assert!(e.contains("max_x"), "{e}");
        let e = Config::load(
            Some(("h.toml", "[[apps]]\nid='a'\nkey='k'\nsecret='s'\n")),
            env(&[("HERALD_DEFAULT_APP_KEY", "x")]),
        )
        .unwrap_err();
        assert!(e.contains("HERALD_DEFAULT_APP_KEY"), "{e}");
        let e = Config::load(Some(("h.toml", "not toml [")), env(&[])).unwrap_err();
        assert!(e.starts_with("h.toml"), "{e}");
    }

    #[test]
    fn bad_choices_name_their_setting() {
        let e = Config::load(None, env(&[("HERALD_ADAPTER", "foo")])).unwrap_err();
        assert_eq!(
            e,
            "invalid value for HERALD_ADAPTER: adapter `foo` must be \"local\" or \"redis\""
        );
        let e = Config::load(None, env(&[("HERALD_STORE_KIND", "bogus")])).unwrap_err();
        assert_eq!(
            e,
            "invalid value for HERALD_STORE_KIND: store.kind `bogus` must be \"config\", \"sqlite\" or \"postgres\""
        );
        let e = Config::load(
            Some(("h.toml", "[server]\nlog_format = \"xml\"\n")),
            env(&[]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "h.toml:2:14: server.log_format `xml` must be \"text\" or \"json\""
        );
        let ok = Config::load(None, env(&[("HERALD_SERVER_LOG_FORMAT", "json")])).unwrap();
        assert_eq!(ok.server.log_format, LogFormat::Json);
        assert!(ok.redacted_toml().contains("log_format = \"json\""));
    }

    #[test]
    fn websocket_compression_is_off_on_or_a_threshold() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.server.websocket_compression, WsCompression::Off);
        assert!(!c.server.websocket_compression_context_takeover);
        let file = |v: &str| {
            Config::load(
                Some((
                    "h.toml",
                    &format!("[server]\nwebsocket_compression = {v}\n"),
                )),
                env(&[]),
            )
            .map(|c| c.server.websocket_compression)
        };
        assert_eq!(file("\"on\""), Ok(WsCompression::From(0)));
        assert_eq!(file("\"off\""), Ok(WsCompression::Off));
        assert_eq!(file("512"), Ok(WsCompression::From(512)));
        assert_eq!(file("\"512\""), Ok(WsCompression::From(512)));
        for bad in ["-1", "\"maybe\"", "true"] {
            let e = file(bad).unwrap_err();
            assert!(e.contains("websocket_compression"), "{bad}: {e}");
        }
        let c = Config::load(
            None,
            env(&[
                ("HERALD_SERVER_WEBSOCKET_COMPRESSION", "1024"),
                (
                    "HERALD_SERVER_WEBSOCKET_COMPRESSION_CONTEXT_TAKEOVER",
                    "true",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.websocket_compression.threshold(), Some(1024));
        assert!(c.server.websocket_compression_context_takeover);
        assert!(c
            .redacted_toml()
            .contains("websocket_compression = \"1024\""));
        let e =
            Config::load(None, env(&[("HERALD_SERVER_WEBSOCKET_COMPRESSION", "x")])).unwrap_err();
        assert!(e.contains("HERALD_SERVER_WEBSOCKET_COMPRESSION"), "{e}");
    }

    #[test]
    fn file_apps_replace_the_default() {
        let c = Config::load(
            Some((
                "h.toml",
                "[server]\nport = 0\n[[apps]]\nid='a'\nkey='k'\nsecret='s'\n[apps.limits]\nmax_connections=2\n[[apps]]\nid='b'\nkey='k2'\nsecret='s2'\nenabled=false\n",
            )),
            env(&[]),
        )
        .unwrap();
        assert_eq!(c.apps.len(), 2);
        assert_eq!(c.apps[0].limits.max_connections, 2);
        assert!(!c.apps[1].enabled);
        assert!(!c.apps[0].enable_client_messages);
        let e = Config::load(
            Some((
                "h.toml",
                "[[apps]]\nid='a'\nkey='k'\nsecret='s'\n[[apps]]\nid='a'\nkey='k2'\nsecret='s'\n",
            )),
            env(&[]),
        )
        .unwrap_err();
        assert!(e.contains("defined twice"), "{e}");
    }

    #[test]
    fn webhooks_from_env_json() {
        let c = Config::load(
            None,
            env(&[(
                "HERALD_DEFAULT_APP_WEBHOOKS",
                r#"[{"url":"http://127.0.0.1:9000/hook","event_types":["channel_occupied","member_added"]}]"#,
            )]),
        )
        .unwrap();
        assert_eq!(c.apps[0].webhooks.len(), 1);
        assert_eq!(
            c.apps[0].webhooks[0].event_types,
            ["channel_occupied", "member_added"]
        );
        let e = Config::load(
            None,
            env(&[(
                "HERALD_DEFAULT_APP_WEBHOOKS",
                r#"[{"url":"http://x","event_types":["nope"]}]"#,
            )]),
        )
        .unwrap_err();
        assert!(e.contains("nope"), "{e}");
        let c = Config::load(None, env(&[("HERALD_WEBHOOKS_VACATE_DELAY_MS", "0")])).unwrap();
        assert_eq!(c.webhooks.vacate_delay_ms, 0);
    }

    #[test]
    fn webhook_destinations_are_checked_at_load() {
        let hooks = |url: &str| {
            (
                "HERALD_DEFAULT_APP_WEBHOOKS".to_owned(),
                format!(r#"[{{"url":"{url}"}}]"#),
            )
        };
        let deny = || {
            (
                "HERALD_WEBHOOKS_DENY_PRIVATE_NETWORKS".to_owned(),
                "true".to_owned(),
            )
        };
        // Off by default: loopback receivers keep working.
        let c = Config::load(None, vec![hooks("http://127.0.0.1:9/hook")]).unwrap();
        assert!(!c.webhooks.deny_private_networks);
        assert!(c.webhooks.allowed_hosts.is_empty());
        for url in [
            "http://127.0.0.1:9/hook",
            "http://u:secretpw@169.254.169.254/latest",
            "http://[::1]:9/",
        ] {
            let e = Config::load(None, vec![hooks(url), deny()]).unwrap_err();
            assert!(
                e.contains("apps[0].webhooks[0].url") && e.contains("deny_private_networks"),
                "{e}"
            );
            assert!(!e.contains("secretpw"), "the password stays out: {e}");
        }
        // Names are checked where they resolve, when a webhook is sent.
        let c = Config::load(None, vec![hooks("http://localhost:9/"), deny()]).unwrap();
        assert!(c.webhooks.deny_private_networks);
        let list = (
            "HERALD_WEBHOOKS_ALLOWED_HOSTS".to_owned(),
            r#"["hooks.example.com"]"#.to_owned(),
        );
        let c = Config::load(
            None,
            vec![hooks("https://HOOKS.example.com/in"), list.clone()],
        )
        .unwrap();
        assert_eq!(c.webhooks.allowed_hosts, ["hooks.example.com"]);
        let e = Config::load(None, vec![hooks("https://other.example/in"), list]).unwrap_err();
        assert!(e.contains("allowed_hosts"), "{e}");
        let e = Config::load(
            Some((
                "h.toml",
                "[webhooks]\nallowed_hosts = [\"https://hooks.example.com/\"]\n",
            )),
            env(&[]),
        )
        .unwrap_err();
        assert!(e.contains("not a URL"), "{e}");
    }

    #[test]
    fn print_config_redacts_secrets() {
        let c = Config::load(
            None,
            env(&[
                ("HERALD_DEFAULT_APP_SECRET", "topsecret"),
                ("HERALD_REDIS_URL", "redis://:redispw@127.0.0.1:6379"),
                ("HERALD_STORE_KIND", "postgres"),
                ("HERALD_STORE_URL", "postgres://herald:pgpw@127.0.0.1/herald"),
                ("HERALD_CONSOLE_TOKEN", "consoletok"),
                (
                    "HERALD_DEFAULT_APP_WEBHOOKS",
                    r#"[{"url":"https://hook:hookpw@127.0.0.1/in?token=urltok","headers":{"Authorization":"Bearer headertok"}}]"#,
                ),
            ]),
        )
        .unwrap();
        let t = c.redacted_toml();
        for secret in [
            "topsecret",
            "redispw",
            "pgpw",
            "consoletok",
            "hookpw",
            "urltok",
            "headertok",
        ] {
            assert!(!t.contains(secret), "{secret} printed:\n{t}");
        }
        assert!(t.contains("<redacted>"));
        assert!(t.contains("postgres://herald:***@127.0.0.1/herald"), "{t}");
        assert!(t.contains("Authorization"), "header names stay: {t}");
    }

    #[test]
    fn redis_mode_sentinel_and_tls_settings_load_from_the_file_and_the_environment() {
        let file = "[redis]\nmode = \"sentinel\"\nurl = \"redis://:pw@s1:26379, redis://:pw@s2:26379\"\nsentinel_master = \"mymaster\"\nsentinel_password = \"sentpw\"\n";
        let c = Config::load(Some(("h.toml", file)), env(&[])).unwrap();
        assert_eq!(c.redis.mode, RedisMode::Sentinel);
        assert_eq!(c.redis.sentinel_master, "mymaster");
        let t = c.redacted_toml();
        for secret in ["pw@", "sentpw"] {
            assert!(!t.contains(secret), "{secret} printed:\n{t}");
        }
        assert!(
            t.contains("redis://:***@s1:26379, redis://:***@s2:26379"),
            "{t}"
        );
        let c = Config::load(
            None,
            env(&[
                ("HERALD_REDIS_MODE", "cluster"),
                ("HERALD_REDIS_URL", "rediss://a:7000,rediss://b:7000"),
                ("HERALD_REDIS_CA_FILE", "/etc/herald/redis-ca.pem"),
            ]),
        )
        .unwrap();
        assert_eq!(c.redis.mode, RedisMode::Cluster);
        assert_eq!(c.redis.ca_file, "/etc/herald/redis-ca.pem");
        assert_eq!(Config::default().redis.mode, RedisMode::Standalone);
        let e = Config::load(None, env(&[("HERALD_REDIS_MODE", "replicated")])).unwrap_err();
        assert!(
            e.contains("HERALD_REDIS_MODE")
                && e.contains("\"standalone\", \"sentinel\" or \"cluster\""),
            "{e}"
        );
        let e =
            Config::load(Some(("h.toml", "[redis]\nmode = \"primary\"\n")), env(&[])).unwrap_err();
        assert!(e.contains("redis.mode"), "{e}");
    }

    #[test]
    fn a_section_written_as_a_value_is_named_not_a_panic() {
        let e = Config::load(
            Some(("h.toml", "server = 5")),
            env(&[("HERALD_PORT", "7000")]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "invalid configuration: `server` must be a table ([server]), not a integer"
        );
    }

    #[test]
    fn bad_files_and_environments_are_errors_never_panics() {
        let files = [
            "server = 5",
            "server = [1]",
            "metrics = 1.5",
            "tls = 'x'",
            "store = true",
            "webhooks = 'x'",
            "apps = 5",
            "apps = [5]",
            "apps = [{}]",
            "[server]\nport = -1",
            "[server]\nport = 70000",
            "[server]\nactivity_timeout = 0",
            "[webhooks]\nretry_window_secs = 18446744073709551615",
            "[[apps]]\nid = 'a'\nkey = 'b'\nsecret = 'c'\nlimits = 5",
            "[[apps]]\nid = 'a'\nkey = 'b'\nsecret = 'c'\n[apps.limits]\ncache_ttl = 9223372036854775807",
        ];
        let envs: &[&[(&str, &str)]] = &[
            &[],
            &[("HERALD_PORT", "1")],
            &[("HERALD_SERVER_ACTIVITY_TIMEOUT", "5")],
            &[("HERALD_METRICS_PORT", "1")],
            &[("HERALD_TLS_CERT_FILE", "x")],
            &[("HERALD_STORE_KIND", "sqlite")],
            &[("HERALD_WEBHOOKS_QUEUE_CAPACITY", "1")],
            &[("HERALD_REDIS_URL", "redis://x")],
            &[("HERALD_DEFAULT_APP_CACHE_TTL", "5")],
        ];
        for file in files {
            for e in envs {
                let got = std::panic::catch_unwind(|| Config::load(Some(("h.toml", file)), env(e)));
                let got = got.unwrap_or_else(|_| panic!("panicked on {file:?} with {e:?}"));
                // An environment may override the bad key (HERALD_PORT over `port = -1`); alone,
                // every file is refused with a message.
                if e.is_empty() {
                    let err = got.expect_err(&format!("{file:?} was accepted"));
                    assert!(
                        err.starts_with("invalid configuration") || err.starts_with("h.toml"),
                        "{err}"
                    );
                }
            }
        }
    }

    #[test]
    fn durations_and_sizes_out_of_range_are_refused_at_load_naming_the_setting() {
        for (var, value, named) in [
            (
                "HERALD_DEFAULT_APP_CACHE_TTL",
                "9223372036854775807",
                "apps[0].limits.cache_ttl",
            ),
            (
                "HERALD_DEFAULT_APP_USER_AUTHENTICATION_TIMEOUT",
                "0",
                "apps[0].user_authentication_timeout",
            ),
            (
                "HERALD_SERVER_DRAIN_WINDOW_MS",
                "9223372036854775807",
                "server.drain_window_ms",
            ),
            ("HERALD_SERVER_PONG_TIMEOUT", "0", "server.pong_timeout"),
            (
                "HERALD_SERVER_ACTIVITY_TIMEOUT",
                "31536001",
                "server.activity_timeout",
            ),
            (
                "HERALD_WEBHOOKS_RETRY_WINDOW_SECS",
                "9223372036854775807",
                "webhooks.retry_window_secs",
            ),
            (
                "HERALD_STORE_REFRESH_INTERVAL_MS",
                "0",
                "store.refresh_interval_ms",
            ),
            (
                "HERALD_SERVER_MAX_SUBSCRIPTIONS",
                "1099511627777",
                "server.max_subscriptions",
            ),
        ] {
            let e = Config::load(None, env(&[(var, value)])).unwrap_err();
            assert!(
                e.starts_with(&format!(
                    "invalid configuration: {named} is {value}; it must be at"
                )),
                "{var}: {e}"
            );
        }
        let e = Config::load(
            None,
            env(&[("HERALD_SERVER_SHUTDOWN_TIMEOUT_MS", "18446744073709551615")]),
        )
        .unwrap_err();
        assert_eq!(e, "invalid value for HERALD_SERVER_SHUTDOWN_TIMEOUT_MS: `18446744073709551615` is out of range (at most 9223372036854775807)");
        // The largest accepted values load.
        Config::load(None, env(&[("HERALD_DEFAULT_APP_CACHE_TTL", "31536000")])).unwrap();
        let c = Config::load(
            None,
            env(&[("HERALD_SERVER_MAX_SUBSCRIPTIONS", "1099511627776")]),
        )
        .unwrap();
        assert_eq!(c.server.max_subscriptions, 1 << 40);
        assert_eq!(Config::default().server.max_subscriptions, 200_000);
    }

    #[test]
    fn the_listen_backlog_is_range_checked_at_load_naming_the_key() {
        assert_eq!(Config::default().server.listen_backlog, 4096);
        for (value, bound) in [
            ("63", "at least 64"),
            ("65536", "at most 65535"),
            ("0", "at least 64"),
        ] {
            let e =
                Config::load(None, env(&[("HERALD_SERVER_LISTEN_BACKLOG", value)])).unwrap_err();
            assert_eq!(
                e,
                format!(
                    "invalid configuration: server.listen_backlog is {value}; it must be {bound}"
                )
            );
            let e = Config::load(
                Some(("h.toml", &format!("[server]\nlisten_backlog = {value}\n"))),
                env(&[]),
            )
            .unwrap_err();
            assert!(e.contains("server.listen_backlog"), "{e}");
        }
        let e = Config::load(None, env(&[("HERALD_SERVER_LISTEN_BACKLOG", "-1")])).unwrap_err();
        assert_eq!(
            e,
            "invalid value for HERALD_SERVER_LISTEN_BACKLOG: `-1` is out of range (at least 0)"
        );
        for ok in ["64", "8192", "65535"] {
            let c = Config::load(None, env(&[("HERALD_SERVER_LISTEN_BACKLOG", ok)])).unwrap();
            assert_eq!(c.server.listen_backlog.to_string(), ok);
        }
    }

    /// A default value as an environment variable would write it.
    fn as_env(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Integer(n) => n.to_string(),
            Value::Boolean(b) => b.to_string(),
            other => serde_json::to_string(other).unwrap(),
        }
    }

    #[test]
    fn every_setting_has_a_variable_and_the_unknown_message_lists_them_all() {
        let template = to_table(&Config::default());
        let known = env::variables();
        let names: std::collections::BTreeSet<&str> =
            known.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), known.len(), "a name is there twice");
        // Every top-level setting is a section, the apps, or has a short name.
        for (key, value) in &template {
            match value {
                Value::Table(_) => assert!(env::SECTIONS.contains(&key.as_str()), "[{key}]"),
                _ if key == "apps" => {}
                _ => assert!(
                    env::SHORT_NAMES.iter().any(|(_, s)| s == key),
                    "top-level `{key}` has no variable"
                ),
            }
        }
        // Every key of every section, of the default app and of its limits.
        let app = to_table(&App::default_app());
        let mut settings = Vec::new();
        for s in env::SECTIONS {
            for (k, v) in template[*s].as_table().unwrap() {
                settings.push((format!("HERALD_{s}_{k}").to_ascii_uppercase(), v.clone()));
            }
        }
        for (k, v) in &app {
            settings.push((
                format!("HERALD_DEFAULT_APP_{k}").to_ascii_uppercase(),
                v.clone(),
            ));
        }
        for (k, v) in app["limits"].as_table().unwrap() {
            settings.push((
                format!("HERALD_DEFAULT_APP_{k}").to_ascii_uppercase(),
                v.clone(),
            ));
        }
        for (name, _) in &settings {
            assert!(names.contains(name.as_str()), "{name} is not read");
        }
        // Each variable is read: set to its default, it loads and changes nothing.
        for (name, t) in &known {
            let tmpl = if t.app { &app } else { &template };
            let v = lookup(tmpl, &t.path, &t.key).unwrap();
            let c = Config::load(None, vec![(name.clone(), as_env(v))])
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c, Config::default(), "{name}");
        }
        assert_eq!(
            Config::variables()
                .iter()
                .find(|(n, _)| n == "HERALD_PORT")
                .map(|(_, s)| s.as_str()),
            Some("server.port")
        );
        // The message for an unknown one names every short name, every variable that is not
        // a setting, and every section.
        let e = Config::load(None, env(&[("HERALD_FOO", "1")])).unwrap_err();
        assert!(
            e.starts_with("unknown environment variable HERALD_FOO"),
            "{e}"
        );
        for (n, _) in env::SHORT_NAMES {
            assert!(e.contains(n), "{n} missing: {e}");
        }
        for n in env::NOT_SETTINGS {
            assert!(e.contains(n), "{n} missing: {e}");
        }
        for s in env::SECTIONS {
            assert!(e.contains(s), "{s} missing: {e}");
        }
        assert!(e.contains("HERALD_ADAPTER"), "{e}");
        // A near miss gets a suggestion.
        let e = Config::load(None, env(&[("HERALD_PROT", "1")])).unwrap_err();
        assert!(e.contains("did you mean HERALD_PORT?"), "{e}");
        let e = Config::load(None, env(&[("HERALD_METRICS_PROT", "1")])).unwrap_err();
        assert!(
            e.contains("[metrics] has no key `prot`") && e.contains("HERALD_METRICS_PORT"),
            "{e}"
        );
    }

    #[test]
    fn every_bad_number_or_boolean_in_the_environment_names_its_variable() {
        let mut checked = 0;
        for (name, t) in env::variables() {
            let template = if t.app {
                to_table(&App::default_app())
            } else {
                to_table(&Config::default())
            };
            let bad: &[&str] = match lookup(&template, &t.path, &t.key).unwrap() {
                Value::Integer(_) => &["x", "-1", "1.5", "99999999999999999999"],
                Value::Boolean(_) => &["maybe"],
                _ => continue,
            };
            for value in bad {
                let e = Config::load(None, vec![(name.clone(), (*value).to_owned())]).unwrap_err();
                assert!(
                    e.starts_with(&format!("invalid value for {name}: ")),
                    "{name}={value}: {e}"
                );
                checked += 1;
            }
        }
        assert!(checked > 40, "{checked}");
        for name in ["HERALD_PORT", "HERALD_METRICS_PORT", "HERALD_SERVER_PORT"] {
            let e = Config::load(None, env(&[(name, "70000")])).unwrap_err();
            assert_eq!(
                e,
                format!("invalid value for {name}: `70000` is out of range: expected a port number (0 picks a free one) from 0 to 65535")
            );
        }
    }

    #[test]
    fn file_errors_give_the_file_line_column_and_table() {
        let load = |text: &str| Config::load(Some(("conf/h.toml", text)), env(&[])).unwrap_err();
        // Syntax: the position of the fault.
        let e = load("[server]\nport = 6001\nhost = \"x\" y\n");
        assert!(e.starts_with("conf/h.toml:3:12: "), "{e}");
        let e = load("[server\nport = 1\n");
        assert!(e.starts_with("conf/h.toml:1:8: "), "{e}");
        // An unknown key: its line, and its table.
        let e = load("[server]\nport = 6001\nprot = 6002\n");
        assert!(
            e.starts_with("conf/h.toml:3:1: in [server]: unknown field `prot`, expected one of"),
            "{e}"
        );
        let e = load("prot = 1\n");
        assert!(
            e.starts_with("conf/h.toml:1:1: at the top level: unknown field `prot`"),
            "{e}"
        );
        // A missing field: which app, by index and id.
        let e =
            load("[[apps]]\nid = 'a'\nkey = 'k'\nsecret = 's'\n\n[[apps]]\nid = 'b'\nkey = 'k2'\n");
        assert!(
            e.contains("in apps[1] (id `b`): missing field `secret`"),
            "{e}"
        );
        assert!(e.starts_with("conf/h.toml:6:1: "), "{e}");
        let e = load("[[apps]]\nkey = 'k'\nsecret = 's'\n");
        assert!(e.contains("in apps[0]: missing field `id`"), "{e}");
        // Inside an app: its limits and its webhooks.
        let e = load("[[apps]]\nid = 'a'\nkey = 'k'\nsecret = 's'\n[apps.limits]\nmax_x = 1\n");
        assert!(
            e.starts_with("conf/h.toml:6:1: in apps[0].limits (id `a`): unknown field `max_x`"),
            "{e}"
        );
        let e = load("[[apps]]\nid = 'a'\nkey = 'k'\nsecret = 's'\nwebhooks = [{ url = 'http://x', nope = 1 }]\n");
        assert!(
            e.contains("in apps[0].webhooks[0] (id `a`): unknown field `nope`"),
            "{e}"
        );
        assert!(e.starts_with("conf/h.toml:5:"), "{e}");
        // A bad value: the key and the range.
        let e = load("[server]\nport = 70000\n");
        assert_eq!(e, "conf/h.toml:2:8: server.port: `70000` is out of range: expected a port number (0 picks a free one) from 0 to 65535");
        let e = load("[metrics]\nenabled = 'yes'\n");
        assert!(
            e.starts_with("conf/h.toml:2:11: metrics.enabled: invalid type"),
            "{e}"
        );
        // The same fault through the environment names the variable instead.
        let e = Config::load(
            Some(("conf/h.toml", "[server]\nport = 1\n")),
            env(&[("HERALD_PORT", "70000")]),
        )
        .unwrap_err();
        assert!(e.starts_with("invalid value for HERALD_PORT: "), "{e}");
    }

    #[test]
    fn webhook_urls_must_parse() {
        for url in ["http://", "https://exa mple.com/", "http://[::1/"] {
            let e = Config::load(
                None,
                vec![(
                    "HERALD_DEFAULT_APP_WEBHOOKS".to_owned(),
                    format!(r#"[{{"url":"{url}"}}]"#),
                )],
            )
            .unwrap_err();
            assert!(
                e.contains("apps[0].webhooks[0].url") && e.contains("is not a valid URL"),
                "{url}: {e}"
            );
        }
    }

    #[test]
    fn line_and_column_count_characters_from_one() {
        assert_eq!(errors::line_col("ab\ncd", 0), (1, 1));
        assert_eq!(errors::line_col("ab\ncd", 4), (2, 2));
        assert_eq!(errors::line_col("é\nxé y", 7), (2, 4));
        assert_eq!(errors::line_col("ab", 99), (1, 3));
    }
}
