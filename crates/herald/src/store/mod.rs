//! App stores: where the engine's `AppStore` gets its apps.
//!
//! `config`: the `[[apps]]` of the configuration file, replaced on SIGHUP.
//! `sqlite` / `postgres` ([`sql`], behind the features of the same names): the table
//! `herald_apps`, cached in memory and refreshed in the background, so apps can be added,
//! disabled and changed without restarting Herald.
//!
//! The engine only ever reads the in-memory cache (a [`StaticAppStore`] snapshot): a lookup on
//! the connection path never waits on the database. The database is read by
//! `SqlAppStore::refresh` (once at startup, then every `store.refresh_interval_ms`) and written
//! by the `herald apps` CLI.

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;

use crate::config::{Config, StoreKind};
pub use crate::redact::redact_url;
use herald_core::{AppStore, StaticAppStore};
use std::sync::Arc;
use tokio::sync::Notify;

/// The opened store, with what reload and the CLI need.
#[derive(Clone)]
pub struct OpenedStore {
    pub store: Arc<dyn AppStore>,
    /// Set for the `config` kind: the store that a reload replaces.
    pub reloadable: Option<Arc<StaticAppStore>>,
    /// Notified when the apps changed (a reload, or a SQL refresh that found a change), so
    /// open connections follow at once rather than at the next periodic check.
    pub changed: Arc<Notify>,
}

impl std::fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedStore").finish_non_exhaustive()
    }
}

/// How to point Herald at a SQL store, for error messages.
pub(crate) const SQL_STORE_HINT: &str = "[store] kind = \"sqlite\", url = \"sqlite://herald.db\" in the config file (or HERALD_STORE_KIND=sqlite HERALD_STORE_URL=sqlite://herald.db)";

/// Opens the store the configuration names.
///
/// For a SQL store: connects, creates the table if missing, loads every app once (startup fails
/// with a message when that is impossible), seeds an empty table with the configuration's apps,
/// and starts the periodic refresh.
pub async fn open(config: &Config) -> Result<OpenedStore, String> {
    match config.store.kind {
        StoreKind::Config => {
            let s = Arc::new(StaticAppStore::new(config.apps.clone())?);
            Ok(OpenedStore {
                store: s.clone(),
                reloadable: Some(s),
                changed: Arc::default(),
            })
        }
        #[cfg(any(feature = "sqlite", feature = "postgres"))]
        StoreKind::Sqlite | StoreKind::Postgres => {
            use std::time::Duration;
            let sql = Arc::new(sql::open_sql(config).await?);
            sql.refresh().await.map_err(|e| {
                format!(
                    "cannot read apps from {}: {e}",
                    redact_url(&config.store.url)
                )
            })?;
            if sql.all().is_empty() {
                let seeded = sql.seed(&config.apps).await.map_err(|e| {
                    format!(
                        "cannot add the configuration's apps to the empty store {}: {e}",
                        redact_url(&config.store.url)
                    )
                })?;
                sql.refresh().await.map_err(|e| {
                    format!(
                        "cannot read apps from {}: {e}",
                        redact_url(&config.store.url)
                    )
                })?;
                if seeded > 0 {
                    let ids: Vec<&str> = config.apps.iter().map(|a| a.id.as_str()).collect();
                    tracing::info!(
                        apps = ?ids,
                        "the app store was empty: added the configuration's apps; manage them with `herald apps`"
                    );
                }
            }
            tracing::info!(
                kind = %config.store.kind,
                url = %redact_url(&config.store.url),
                apps = sql.all().len(),
                refresh_interval_ms = config.store.refresh_interval_ms,
                "apps come from a SQL store"
            );
            let changed = Arc::new(Notify::new());
            sql.spawn_refresh(
                Duration::from_millis(config.store.refresh_interval_ms.max(1)),
                changed.clone(),
            );
            Ok(OpenedStore {
                store: sql,
                reloadable: None,
                changed,
            })
        }
        #[allow(unreachable_patterns)]
        other => Err(format!(
            "store.kind is \"{other}\" but this herald was built without the `{other}` feature"
        )),
    }
}
