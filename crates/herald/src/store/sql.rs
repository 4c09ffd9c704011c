//! The SQL app store: the table `herald_apps` in SQLite or PostgreSQL, cached in memory.

use super::{redact_url, SQL_STORE_HINT};
use crate::config::{Config, StoreKind};
use herald_core::{App, AppStore, StaticAppStore, WebhookTarget};
use herald_protocol::limits::Limits;
#[cfg(feature = "postgres")]
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
#[cfg(feature = "sqlite")]
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
#[cfg(feature = "postgres")]
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Opens the SQL store of the configuration (kind `sqlite` or `postgres`), without seeding.
pub(crate) async fn open_sql(config: &Config) -> Result<SqlAppStore, String> {
    SqlAppStore::open(&database_url(config)?).await
}

/// The store's URL as [`open_sql`] uses it, once kind and scheme are known to agree (a plain
/// path is a SQLite file).
fn database_url(config: &Config) -> Result<String, String> {
    let url = config.store.url.trim();
    if url.is_empty() {
        return Err(format!(
            "store.kind is `{}` but store.url is empty; set it, e.g. {SQL_STORE_HINT}",
            config.store.kind
        ));
    }
    Ok(match config.store.kind {
        StoreKind::Sqlite if is_postgres_url(url) => {
            return Err(format!(
                "store.kind is `sqlite` but store.url `{}` is a PostgreSQL URL; set kind = \"postgres\" or use a sqlite:// URL",
                redact_url(url)
            ))
        }
        StoreKind::Sqlite if !url.starts_with("sqlite:") => format!("sqlite://{url}"),
        StoreKind::Postgres if !is_postgres_url(url) => {
            return Err(format!(
                "store.kind is `postgres` but store.url `{}` is not a postgres:// URL (e.g. postgres://herald@127.0.0.1:5432/herald)",
                redact_url(url)
            ))
        }
        _ => url.to_owned(),
    })
}

/// What [`open_sql`] checks before it connects, without connecting: kind and scheme agree, the
/// URL parses, and a SQLite file's directory exists (for `herald check-config`, and for
/// `serve` before it binds).
pub(crate) fn check_url(config: &Config) -> Result<(), String> {
    let url = database_url(config)?;
    let shown = redact_url(&url);
    if url.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        {
            let options = sqlite_options(&url, &shown)?;
            let file = options.get_filename();
            let dir = match file.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            if !url.contains(":memory:") && !dir.is_dir() {
                return Err(format!(
                    "store.url `{shown}`: the directory {} of the SQLite file does not exist",
                    dir.display()
                ));
            }
        }
    } else {
        #[cfg(feature = "postgres")]
        pg_options(&url, &shown)?;
    }
    Ok(())
}

#[cfg(feature = "sqlite")]
fn sqlite_options(url: &str, shown: &str) -> Result<SqliteConnectOptions, String> {
    SqliteConnectOptions::from_str(url).map_err(|e| format!("invalid SQLite URL `{shown}`: {e}"))
}

#[cfg(feature = "postgres")]
fn pg_options(url: &str, shown: &str) -> Result<PgConnectOptions, String> {
    PgConnectOptions::from_str(url).map_err(|e| format!("invalid PostgreSQL URL `{shown}`: {e}"))
}

fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The database behind a [`SqlAppStore`].
#[derive(Clone, Debug)]
enum Pool {
    #[cfg(feature = "sqlite")]
    Sqlite(SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(PgPool),
}

/// Runs the same expression against whichever pool the store has (`$1` placeholders work in
/// both dialects).
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite($p) => $body,
            #[cfg(feature = "postgres")]
            Pool::Postgres($p) => $body,
        }
    };
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS herald_apps (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    secret TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    enable_client_messages BOOLEAN NOT NULL DEFAULT FALSE,
    enable_subscription_count BOOLEAN NOT NULL DEFAULT FALSE,
    enable_watchlist_events BOOLEAN NOT NULL DEFAULT FALSE,
    enable_user_authentication BOOLEAN NOT NULL DEFAULT FALSE,
    user_authentication_timeout BIGINT NOT NULL DEFAULT 30,
    emit_subscription_error BOOLEAN NOT NULL DEFAULT FALSE,
    tls_only BOOLEAN NOT NULL DEFAULT FALSE,
    limits TEXT NOT NULL DEFAULT '{}',
    webhooks TEXT NOT NULL DEFAULT '[]',
    batch_webhooks BOOLEAN NOT NULL DEFAULT FALSE
)";

const COLUMNS: &str = "id, key, secret, enabled, enable_client_messages, \
    enable_subscription_count, enable_watchlist_events, enable_user_authentication, \
    user_authentication_timeout, emit_subscription_error, tls_only, limits, webhooks, \
    batch_webhooks";

const SELECT_ALL: &str = "SELECT id, key, secret, enabled, enable_client_messages, \
    enable_subscription_count, enable_watchlist_events, enable_user_authentication, \
    user_authentication_timeout, emit_subscription_error, tls_only, limits, webhooks, \
    batch_webhooks FROM herald_apps ORDER BY id";

const VALUES: &str = "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

const UPDATE: &str = "UPDATE herald_apps SET key = $2, secret = $3, enabled = $4, \
    enable_client_messages = $5, enable_subscription_count = $6, enable_watchlist_events = $7, \
    enable_user_authentication = $8, user_authentication_timeout = $9, \
    emit_subscription_error = $10, tls_only = $11, limits = $12, webhooks = $13, \
    batch_webhooks = $14 WHERE id = $1";

/// Apps in a SQLite or PostgreSQL table (`herald_apps`), with an in-memory cache in front.
///
/// The [`AppStore`] methods read the cache only; [`refresh`](Self::refresh) reloads it from the
/// table. The write methods (`insert`, `update`, `set_enabled`, `delete`) change the table; the
/// cache sees a change at the next refresh.
#[derive(Debug)]
pub struct SqlAppStore {
    pool: Pool,
    cache: StaticAppStore,
}

/// One row as read, before its JSON columns are parsed.
struct Row {
    id: String,
    key: String,
    secret: String,
    enabled: bool,
    enable_client_messages: bool,
    enable_subscription_count: bool,
    enable_watchlist_events: bool,
    enable_user_authentication: bool,
    user_authentication_timeout: i64,
    emit_subscription_error: bool,
    tls_only: bool,
    limits: String,
    webhooks: String,
    batch_webhooks: bool,
}

fn read_row<'r, R>(r: &'r R) -> Result<Row, sqlx::Error>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Row {
        id: r.try_get("id")?,
        key: r.try_get("key")?,
        secret: r.try_get("secret")?,
        enabled: r.try_get("enabled")?,
        enable_client_messages: r.try_get("enable_client_messages")?,
        enable_subscription_count: r.try_get("enable_subscription_count")?,
        enable_watchlist_events: r.try_get("enable_watchlist_events")?,
        enable_user_authentication: r.try_get("enable_user_authentication")?,
        user_authentication_timeout: r.try_get("user_authentication_timeout")?,
        emit_subscription_error: r.try_get("emit_subscription_error")?,
        tls_only: r.try_get("tls_only")?,
        limits: r.try_get("limits")?,
        webhooks: r.try_get("webhooks")?,
        batch_webhooks: r.try_get("batch_webhooks")?,
    })
}

impl Row {
    fn into_app(self) -> Result<App, String> {
        let id = self.id;
        let limits: Limits = serde_json::from_str(&self.limits)
            .map_err(|e| format!("app '{id}': column `limits` is not valid limits JSON: {e}"))?;
        let webhooks: Vec<WebhookTarget> = serde_json::from_str(&self.webhooks).map_err(|e| {
            format!(
                "app '{id}': column `webhooks` is not a valid JSON list of webhook targets: {e}"
            )
        })?;
        let user_authentication_timeout = u64::try_from(self.user_authentication_timeout)
            .map_err(|_| format!("app '{id}': user_authentication_timeout is negative"))?;
        Ok(App {
            id,
            key: self.key,
            secret: self.secret,
            enabled: self.enabled,
            enable_client_messages: self.enable_client_messages,
            enable_subscription_count: self.enable_subscription_count,
            enable_watchlist_events: self.enable_watchlist_events,
            enable_user_authentication: self.enable_user_authentication,
            user_authentication_timeout,
            emit_subscription_error: self.emit_subscription_error,
            tls_only: self.tls_only,
            limits,
            webhooks,
            batch_webhooks: self.batch_webhooks,
        })
    }
}

/// The columns of an app as bound to a statement.
struct Bound {
    limits: String,
    webhooks: String,
    timeout: i64,
}

fn bound(app: &App) -> Result<Bound, String> {
    Ok(Bound {
        limits: serde_json::to_string(&app.limits).map_err(|e| e.to_string())?,
        webhooks: serde_json::to_string(&app.webhooks).map_err(|e| e.to_string())?,
        timeout: i64::try_from(app.user_authentication_timeout)
            .map_err(|_| "user_authentication_timeout is too large".to_owned())?,
    })
}

/// Binds every column of `app` to `$1..$14` in the order of [`COLUMNS`].
macro_rules! bind_app {
    ($q:expr, $app:expr, $b:expr) => {
        $q.bind(&$app.id)
            .bind(&$app.key)
            .bind(&$app.secret)
            .bind($app.enabled)
            .bind($app.enable_client_messages)
            .bind($app.enable_subscription_count)
            .bind($app.enable_watchlist_events)
            .bind($app.enable_user_authentication)
            .bind($b.timeout)
            .bind($app.emit_subscription_error)
            .bind($app.tls_only)
            .bind(&$b.limits)
            .bind(&$b.webhooks)
            .bind($app.batch_webhooks)
    };
}

/// Checks what the configuration checks for its `[[apps]]`, so the CLI cannot store an app that
/// the server would refuse.
pub fn validate_app(app: &App) -> Result<(), String> {
    app.validate().map_err(|e| format!("app {e}"))
}

impl SqlAppStore {
    /// Connects to `sqlite://PATH` (the file is created when missing; `sqlite::memory:` also
    /// works) or `postgres://…`, and creates the `herald_apps` table if it is missing.
    /// The cache starts empty: call [`refresh`](Self::refresh).
    pub async fn open(url: &str) -> Result<Self, String> {
        let shown = redact_url(url);
        let pool = if url.starts_with("sqlite:") {
            #[cfg(not(feature = "sqlite"))]
            return Err(format!("app store URL `{shown}` is SQLite, but this herald was built without the `sqlite` feature"));
            #[cfg(feature = "sqlite")]
            Self::open_sqlite(url, &shown).await?
        } else if is_postgres_url(url) {
            #[cfg(not(feature = "postgres"))]
            return Err(format!("app store URL `{shown}` is PostgreSQL, but this herald was built without the `postgres` feature"));
            #[cfg(feature = "postgres")]
            Self::open_postgres(url, &shown).await?
        } else {
            return Err(format!(
                "app store URL `{shown}` is neither sqlite://… nor postgres://…"
            ));
        };
        let store = Self {
            pool,
            cache: StaticAppStore::default(),
        };
        store.migrate().await.map_err(|e| {
            format!("cannot create the table herald_apps in `{shown}`: {e} (does the user have the right to create tables?)")
        })?;
        Ok(store)
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Pool::Postgres(_) => "postgres",
        }
    }

    #[cfg(feature = "sqlite")]
    async fn open_sqlite(url: &str, shown: &str) -> Result<Pool, String> {
        let options = sqlite_options(url, shown)?
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(5));
        let mut pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10));
        if url.contains(":memory:") {
            // Each connection would be its own empty database: keep exactly one, forever.
            pool = pool
                .max_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool
            .connect_with(options)
            .await
            .map_err(|e| {
                format!("cannot open the SQLite app store `{shown}`: {e} (check that the directory exists and is writable)")
            })?;
        Ok(Pool::Sqlite(pool))
    }

    #[cfg(feature = "postgres")]
    async fn open_postgres(url: &str, shown: &str) -> Result<Pool, String> {
        let hint = "is the server running and the URL right? set [store] url or HERALD_STORE_URL";
        let options = pg_options(url, shown)?;
        // One direct connection first: the pool would only report a timeout, this reports
        // why (refused, unknown database, authentication…).
        let probe = tokio::time::timeout(Duration::from_secs(10), options.connect())
            .await
            .map_err(|_| format!("cannot connect to the PostgreSQL app store `{shown}`: no answer within 10 s ({hint})"))?
            .map_err(|e| format!("cannot connect to the PostgreSQL app store `{shown}`: {e} ({hint})"))?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(Pool::Postgres(pool))
    }

    async fn migrate(&self) -> Result<(), sqlx::Error> {
        let first = on_pool!(&self.pool, p => sqlx::query(CREATE_TABLE).execute(p).await.map(drop));
        match first {
            // Two nodes creating the table at once can collide in PostgreSQL's catalog; the
            // second try sees the table.
            Err(_) => {
                on_pool!(&self.pool, p => sqlx::query(CREATE_TABLE).execute(p).await.map(drop))
            }
            ok => ok,
        }
    }

    /// Every app in the table, ordered by id (read from the database, not the cache).
    pub async fn list(&self) -> Result<Vec<App>, String> {
        let rows = on_pool!(&self.pool, p => {
            let rows = sqlx::query(SELECT_ALL).fetch_all(p).await.map_err(|e| e.to_string())?;
            rows.iter().map(read_row).collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| format!("the table herald_apps has an unexpected shape: {e}"))?;
        rows.into_iter().map(Row::into_app).collect()
    }

    /// One app from the table (not the cache).
    pub async fn get(&self, id: &str) -> Result<Option<App>, String> {
        let sql = format!("SELECT {COLUMNS} FROM herald_apps WHERE id = $1");
        let row = on_pool!(&self.pool, p => {
            let row = sqlx::query(&sql).bind(id).fetch_optional(p).await.map_err(|e| e.to_string())?;
            row.as_ref().map(read_row).transpose()
        })
        .map_err(|e| format!("the table herald_apps has an unexpected shape: {e}"))?;
        row.map(Row::into_app).transpose()
    }

    /// Adds an app; an id or key that is already used is refused with a message naming it.
    pub async fn insert(&self, app: &App) -> Result<(), String> {
        validate_app(app)?;
        let b = bound(app)?;
        let sql = format!("INSERT INTO herald_apps ({COLUMNS}) VALUES {VALUES}");
        let result = on_pool!(&self.pool, p => bind_app!(sqlx::query(&sql), app, b).execute(p).await.map(drop));
        match result {
            Ok(()) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(self.conflict(app, false).await),
            Err(e) => Err(format!("cannot add app '{}': {e}", app.id)),
        }
    }

    /// Adds the apps whose id and key are both unused; returns how many were added.
    pub async fn seed(&self, apps: &[App]) -> Result<usize, String> {
        let sql =
            format!("INSERT INTO herald_apps ({COLUMNS}) VALUES {VALUES} ON CONFLICT DO NOTHING");
        let mut added = 0;
        for app in apps {
            validate_app(app)?;
            let b = bound(app)?;
            let n = on_pool!(&self.pool, p => bind_app!(sqlx::query(&sql), app, b).execute(p).await.map(|r| r.rows_affected()))
                .map_err(|e| format!("cannot add app '{}': {e}", app.id))?;
            added += n as usize;
        }
        Ok(added)
    }

    /// Replaces every field of the app with `app.id`.
    pub async fn update(&self, app: &App) -> Result<(), String> {
        validate_app(app)?;
        let b = bound(app)?;
        let result = on_pool!(&self.pool, p => bind_app!(sqlx::query(UPDATE), app, b).execute(p).await.map(|r| r.rows_affected()));
        match result {
            Ok(0) => Err(no_such_app(&app.id)),
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(self.conflict(app, true).await),
            Err(e) => Err(format!("cannot change app '{}': {e}", app.id)),
        }
    }

    /// Enables or disables an app. A disabled app's new connections are refused with 4003.
    pub async fn set_enabled(&self, id: &str, enabled: bool) -> Result<(), String> {
        let n = on_pool!(&self.pool, p => sqlx::query("UPDATE herald_apps SET enabled = $2 WHERE id = $1")
            .bind(id)
            .bind(enabled)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| format!("cannot change app '{id}': {e}"))?;
        if n == 0 {
            return Err(no_such_app(id));
        }
        Ok(())
    }

    /// Removes an app.
    pub async fn delete(&self, id: &str) -> Result<(), String> {
        let n = on_pool!(&self.pool, p => sqlx::query("DELETE FROM herald_apps WHERE id = $1")
            .bind(id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| format!("cannot remove app '{id}': {e}"))?;
        if n == 0 {
            return Err(no_such_app(id));
        }
        Ok(())
    }

    /// Reloads the cache from the table; on error the cache keeps the apps it had.
    /// Returns whether the apps changed.
    pub async fn refresh(&self) -> Result<bool, String> {
        let apps = self.list().await?;
        let changed = {
            let current = self.cache.all();
            current.len() != apps.len() || current.iter().zip(&apps).any(|(a, b)| **a != *b)
        };
        if changed {
            self.cache.replace(apps)?;
        }
        Ok(changed)
    }

    /// Refreshes the cache every `interval` until the store is dropped, and notifies `changed`
    /// when a refresh found a change. A failed refresh keeps the apps the cache has and logs a
    /// warning (again every minute while it keeps failing).
    pub fn spawn_refresh(
        self: &Arc<Self>,
        interval: Duration,
        changed: Arc<tokio::sync::Notify>,
    ) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate; the caller has just refreshed
            let mut failures: u64 = 0;
            let mut last_warning: Option<tokio::time::Instant> = None;
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                match store.refresh().await {
                    Ok(apps_changed) => {
                        if failures > 0 {
                            tracing::info!(
                                failed_refreshes = failures,
                                "app store reachable again; apps refreshed"
                            );
                        }
                        failures = 0;
                        last_warning = None;
                        if apps_changed {
                            changed.notify_one();
                            tracing::info!(
                                apps = store.cache.all().len(),
                                "apps changed in the store"
                            );
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                            last_warning = Some(tokio::time::Instant::now());
                            tracing::warn!(error = %e, failed_refreshes = failures, "cannot refresh apps from the store; serving the apps last read");
                        }
                    }
                }
            }
        })
    }

    /// Explains which of the app's id or key is already taken.
    async fn conflict(&self, app: &App, updating: bool) -> String {
        if !updating && matches!(self.get(&app.id).await, Ok(Some(_))) {
            return format!(
                "an app with id '{}' already exists (use another id, or `herald apps enable|disable` to change it)",
                app.id
            );
        }
        let holder = self.list().await.ok().and_then(|apps| {
            apps.into_iter()
                .find(|a| a.key == app.key && a.id != app.id)
                .map(|a| a.id)
        });
        match holder {
            Some(other) => format!(
                "app key '{}' is already used by app '{other}'; keys must be unique (leave --key out to get a random one)",
                app.key
            ),
            None => format!(
                "app '{}' conflicts with an existing app's id or key",
                app.id
            ),
        }
    }
}

fn no_such_app(id: &str) -> String {
    format!("no app with id '{id}' in the store (see `herald apps list`)")
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl AppStore for SqlAppStore {
    fn by_key(&self, key: &str) -> Option<Arc<App>> {
        self.cache.by_key(key)
    }
    fn by_id(&self, id: &str) -> Option<Arc<App>> {
        self.cache.by_id(id)
    }
    fn all(&self) -> Vec<Arc<App>> {
        self.cache.all()
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_memory_sqlite_keeps_its_apps() {
        let store = SqlAppStore::open("sqlite::memory:").await.unwrap();
        assert_eq!(store.backend(), "sqlite");
        store.insert(&App::default_app()).await.unwrap();
        assert!(store.refresh().await.unwrap());
        assert_eq!(store.by_key("app-key").unwrap().id, "app-id");
        assert_eq!(store.seed(&[App::default_app()]).await.unwrap(), 0);
    }
}
