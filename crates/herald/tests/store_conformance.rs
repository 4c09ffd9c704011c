//! The `AppStore` contract, checked once for every store: the static (config-file) store, SQLite
//! and PostgreSQL. PostgreSQL needs `HERALD_TEST_POSTGRES_URL`: run through `scripts/test.sh`, or
//! `eval "$(scripts/postgres.sh start)"` first.

use herald::store::sql::SqlAppStore;
use herald::Config;
use herald_core::{App, AppStore, StaticAppStore, WebhookFilter, WebhookTarget};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Fixtures: one store under test plus its way of writing apps. Writes become visible to the
// `AppStore` side only after `refresh` (for the static store: a reload of the config file).

trait Fixture {
    fn store(&self) -> &dyn AppStore;
    async fn add(&mut self, app: App) -> Result<(), String>;
    async fn change(&mut self, app: App) -> Result<(), String>;
    async fn set_enabled(&mut self, id: &str, enabled: bool) -> Result<(), String>;
    async fn refresh(&mut self) -> Result<(), String>;
}

/// The config-file store: writes edit the "file" (a list), refresh is the SIGHUP reload.
struct StaticFixture {
    store: StaticAppStore,
    file: Vec<App>,
}

impl StaticFixture {
    fn new(apps: Vec<App>) -> Self {
        Self {
            store: StaticAppStore::new(apps.clone()).unwrap(),
            file: apps,
        }
    }

    fn edit(&mut self, f: impl FnOnce(&mut Vec<App>) -> Result<(), String>) -> Result<(), String> {
        let mut next = self.file.clone();
        f(&mut next)?;
        // What the reload would say about the edited file.
        StaticAppStore::new(next.clone())?;
        self.file = next;
        Ok(())
    }
}

impl Fixture for StaticFixture {
    fn store(&self) -> &dyn AppStore {
        &self.store
    }
    async fn add(&mut self, app: App) -> Result<(), String> {
        self.edit(|apps| {
            apps.push(app);
            Ok(())
        })
    }
    async fn change(&mut self, app: App) -> Result<(), String> {
        self.edit(|apps| {
            let slot = apps
                .iter_mut()
                .find(|a| a.id == app.id)
                .ok_or("no such app")?;
            *slot = app;
            Ok(())
        })
    }
    async fn set_enabled(&mut self, id: &str, enabled: bool) -> Result<(), String> {
        self.edit(|apps| {
            apps.iter_mut()
                .find(|a| a.id == id)
                .ok_or("no such app")?
                .enabled = enabled;
            Ok(())
        })
    }
    async fn refresh(&mut self) -> Result<(), String> {
        self.store.replace(self.file.clone())
    }
}

/// A SQL store: writes go to the table, refresh reloads the cache.
struct SqlFixture {
    store: SqlAppStore,
}

impl SqlFixture {
    async fn new(url: &str, apps: Vec<App>) -> Self {
        let store = SqlAppStore::open(url).await.unwrap();
        for a in &apps {
            store.insert(a).await.unwrap();
        }
        store.refresh().await.unwrap();
        Self { store }
    }
}

impl Fixture for SqlFixture {
    fn store(&self) -> &dyn AppStore {
        &self.store
    }
    async fn add(&mut self, app: App) -> Result<(), String> {
        self.store.insert(&app).await
    }
    async fn change(&mut self, app: App) -> Result<(), String> {
        self.store.update(&app).await
    }
    async fn set_enabled(&mut self, id: &str, enabled: bool) -> Result<(), String> {
        self.store.set_enabled(id, enabled).await
    }
    async fn refresh(&mut self) -> Result<(), String> {
        self.store.refresh().await.map(drop)
    }
}

// ---------------------------------------------------------------------------------------------
// The contract.

fn app(id: &str, key: &str, secret: &str) -> App {
    App {
        id: id.into(),
        key: key.into(),
        secret: secret.into(),
        enabled: true,
        enable_client_messages: false,
        enable_subscription_count: false,
        enable_watchlist_events: false,
        enable_user_authentication: false,
        user_authentication_timeout: 30,
        emit_subscription_error: false,
        tls_only: false,
        limits: Default::default(),
        webhooks: Vec::new(),
        batch_webhooks: false,
    }
}

/// An app with every field away from its default, to check that all of them survive storage.
fn rich_app() -> App {
    let mut a = app("101", "rich-key", "rich-secret");
    a.enable_client_messages = true;
    a.enable_subscription_count = true;
    a.enable_watchlist_events = true;
    a.enable_user_authentication = true;
    a.user_authentication_timeout = 45;
    a.emit_subscription_error = true;
    a.tls_only = true;
    a.batch_webhooks = true;
    a.limits.max_connections = 7;
    a.limits.client_event_rate = 3;
    a.limits.cache_ttl = 60;
    a.webhooks = vec![WebhookTarget {
        url: "https://hooks.example/herald".into(),
        event_types: vec!["channel_occupied".into(), "member_added".into()],
        filter: WebhookFilter {
            channel_name_starts_with: Some("presence-".into()),
            channel_name_ends_with: None,
        },
        headers: [("X-Token".to_owned(), "t".to_owned())]
            .into_iter()
            .collect(),
    }];
    a
}

fn initial_apps() -> Vec<App> {
    vec![rich_app(), app("102", "plain-key", "plain-secret")]
}

fn ids(store: &dyn AppStore) -> Vec<String> {
    let mut v: Vec<String> = store.all().iter().map(|a| a.id.clone()).collect();
    v.sort();
    v
}

/// The body every store must pass. `fixture` starts with [`initial_apps`].
async fn conformance(mut f: impl Fixture) {
    // Lookups by id and by key give the whole app back.
    let rich = rich_app();
    assert_eq!(f.store().by_id("101").as_deref(), Some(&rich));
    assert_eq!(f.store().by_key("rich-key").as_deref(), Some(&rich));
    assert_eq!(f.store().by_key("plain-key").unwrap().id, "102");
    assert_eq!(ids(f.store()), ["101", "102"]);

    // Unknown ids and keys, and ids used as keys (and the reverse), find nothing.
    assert!(f.store().by_id("nope").is_none());
    assert!(f.store().by_key("nope").is_none());
    assert!(f.store().by_key("101").is_none());
    assert!(f.store().by_id("rich-key").is_none());
    assert!(f.store().by_id("").is_none());

    // A new app is visible after a refresh, without restarting anything.
    f.add(app("103", "new-key", "new-secret")).await.unwrap();
    f.refresh().await.unwrap();
    assert_eq!(f.store().by_key("new-key").unwrap().id, "103");
    assert_eq!(f.store().by_id("103").unwrap().secret, "new-secret");
    assert_eq!(ids(f.store()), ["101", "102", "103"]);

    // A disabled app is still found, and seen as disabled; enabling it again is seen too.
    f.set_enabled("103", false).await.unwrap();
    f.refresh().await.unwrap();
    assert!(!f.store().by_key("new-key").unwrap().enabled);
    assert!(!f.store().by_id("103").unwrap().enabled);
    f.set_enabled("103", true).await.unwrap();
    f.refresh().await.unwrap();
    assert!(f.store().by_key("new-key").unwrap().enabled);

    // A changed secret (and other fields) is seen.
    let mut changed = app("102", "plain-key", "rotated-secret");
    changed.enable_client_messages = true;
    f.change(changed.clone()).await.unwrap();
    f.refresh().await.unwrap();
    assert_eq!(f.store().by_key("plain-key").as_deref(), Some(&changed));

    // A changed key moves the app: the old key finds nothing.
    let mut moved = changed.clone();
    moved.key = "moved-key".into();
    f.change(moved).await.unwrap();
    f.refresh().await.unwrap();
    assert!(f.store().by_key("plain-key").is_none());
    assert_eq!(f.store().by_key("moved-key").unwrap().id, "102");

    // Duplicate ids and keys are refused, and the apps stay as they were.
    let e = f
        .add(app("101", "other-key", "s"))
        .await
        .expect_err("a duplicate id must be refused");
    assert!(e.contains("101"), "the error names the id: {e}");
    let e = f
        .add(app("104", "rich-key", "s"))
        .await
        .expect_err("a duplicate key must be refused");
    assert!(e.contains("rich-key"), "the error names the key: {e}");
    let mut clash = app("103", "rich-key", "s");
    clash.enabled = false;
    let e = f
        .change(clash)
        .await
        .expect_err("changing a key to a used one must be refused");
    assert!(e.contains("rich-key"), "the error names the key: {e}");
    f.refresh().await.unwrap();
    assert_eq!(ids(f.store()), ["101", "102", "103"]);
    assert_eq!(f.store().by_key("rich-key").as_deref(), Some(&rich));
    assert!(f.store().by_id("103").unwrap().enabled);
    assert!(f.store().by_id("104").is_none());
}

#[tokio::test]
async fn static_store_conforms() {
    conformance(StaticFixture::new(initial_apps())).await;
}

#[tokio::test]
async fn sqlite_store_conforms() {
    let db = TempDb::new();
    conformance(SqlFixture::new(&db.url, initial_apps()).await).await;
}

#[tokio::test]
async fn postgres_store_conforms() {
    let db = PgDb::new().await;
    conformance(SqlFixture::new(&db.url, initial_apps()).await).await;
    db.drop().await;
}

// ---------------------------------------------------------------------------------------------
// SQL-only behaviour, for both backends.

/// Writes are seen only through the cache, which a failed refresh leaves as it was.
async fn sql_cache_semantics(url: &str) {
    let store = SqlAppStore::open(url).await.unwrap();
    store.insert(&app("1", "k1", "s1")).await.unwrap();
    assert!(
        store.by_key("k1").is_none(),
        "the cache changes only on refresh"
    );
    assert!(
        store.refresh().await.unwrap(),
        "the first refresh changes the cache"
    );
    assert!(!store.refresh().await.unwrap(), "nothing changed since");
    assert_eq!(store.get("1").await.unwrap().unwrap().key, "k1");
    assert!(store.get("2").await.unwrap().is_none());
    assert_eq!(store.list().await.unwrap().len(), 1);

    // Unknown ids are errors for the writes, with a hint.
    for e in [
        store.set_enabled("2", false).await.unwrap_err(),
        store.delete("2").await.unwrap_err(),
        store.update(&app("2", "k2", "s2")).await.unwrap_err(),
    ] {
        assert!(e.contains("'2'") && e.contains("herald apps list"), "{e}");
    }
    // Apps the server would refuse are refused here too.
    let e = store.insert(&app("a b", "k", "s")).await.unwrap_err();
    assert!(e.contains("spaces"), "{e}");
    let e = store.insert(&app("x", "k", "")).await.unwrap_err();
    assert!(e.contains("secret"), "{e}");

    // A row that cannot be read fails the refresh, naming the app; the cache keeps its apps.
    raw_exec(
        url,
        "UPDATE herald_apps SET limits = '{\"bogus\": 1}' WHERE id = '1'",
    )
    .await;
    let e = store.refresh().await.unwrap_err();
    assert!(e.contains("'1'") && e.contains("limits"), "{e}");
    assert_eq!(store.by_key("k1").unwrap().id, "1");

    // So does a table that is gone.
    raw_exec(url, "DROP TABLE herald_apps").await;
    assert!(store.refresh().await.is_err());
    assert_eq!(store.by_key("k1").unwrap().id, "1");

    // Reopening recreates the table; deleting removes an app at the next refresh.
    let store = SqlAppStore::open(url).await.unwrap();
    store.insert(&app("3", "k3", "s3")).await.unwrap();
    store.refresh().await.unwrap();
    store.delete("3").await.unwrap();
    store.refresh().await.unwrap();
    assert!(store.by_key("k3").is_none());
    assert!(store.all().is_empty());
}

#[tokio::test]
async fn sqlite_cache_semantics() {
    let db = TempDb::new();
    sql_cache_semantics(&db.url).await;
}

#[tokio::test]
async fn postgres_cache_semantics() {
    let db = PgDb::new().await;
    sql_cache_semantics(&db.url).await;
    db.drop().await;
}

/// `store::open` as the server calls it: an empty table gets the configuration's apps, a table
/// with apps is left alone, and the background refresh picks up changes by itself.
async fn open_from_config(kind: &str, url: &str) {
    let config = Config::load(
        None,
        [
            ("HERALD_STORE_KIND".to_owned(), kind.to_owned()),
            ("HERALD_STORE_URL".to_owned(), url.to_owned()),
            (
                "HERALD_STORE_REFRESH_INTERVAL_MS".to_owned(),
                "20".to_owned(),
            ),
        ],
    )
    .unwrap();
    let opened = herald::store::open(&config).await.unwrap();
    assert!(opened.reloadable.is_none());
    assert_eq!(
        opened.store.by_key("app-key").as_deref(),
        Some(&App::default_app()),
        "an empty store starts with the configuration's apps"
    );

    let writer_url = if url.contains("://") {
        url.to_owned()
    } else {
        format!("sqlite://{url}")
    };
    let writer = SqlAppStore::open(&writer_url).await.unwrap();
    writer.insert(&app("late", "late-key", "s")).await.unwrap();
    writer.set_enabled("app-id", false).await.unwrap();
    wait_until(|| {
        opened.store.by_key("late-key").is_some()
            && opened.store.by_id("app-id").is_some_and(|a| !a.enabled)
    })
    .await;

    // Opening again does not bring the default app back or add it twice.
    writer.delete("app-id").await.unwrap();
    let again = herald::store::open(&config).await.unwrap();
    assert!(again.store.by_key("app-key").is_none());
    assert_eq!(again.store.all().len(), 1);
}

#[tokio::test]
async fn sqlite_open_from_config() {
    let db = TempDb::new();
    open_from_config("sqlite", &db.url).await;
    // A plain path works as the URL of a SQLite store.
    let db = TempDb::new();
    open_from_config("sqlite", db.path.to_str().unwrap()).await;
}

#[tokio::test]
async fn postgres_open_from_config() {
    let db = PgDb::new().await;
    open_from_config("postgres", &db.url).await;
    db.drop().await;
}

#[tokio::test]
async fn unreachable_or_mismatched_stores_fail_with_a_hint() {
    let load = |kind: &str, url: &str| {
        Config::load(
            None,
            [
                ("HERALD_STORE_KIND".to_owned(), kind.to_owned()),
                ("HERALD_STORE_URL".to_owned(), url.to_owned()),
            ],
        )
        .unwrap()
    };
    // Nothing listens on port 1.
    let e = herald::store::open(&load("postgres", "postgres://u:pw@127.0.0.1:1/db"))
        .await
        .unwrap_err();
    assert!(
        e.contains("cannot connect") && e.contains("HERALD_STORE_URL"),
        "{e}"
    );
    assert!(!e.contains("pw"), "passwords are not shown: {e}");
    let e = herald::store::open(&load("postgres", "sqlite://x.db"))
        .await
        .unwrap_err();
    assert!(e.contains("postgres://"), "{e}");
    let e = herald::store::open(&load("sqlite", "postgres://u@127.0.0.1:1/db"))
        .await
        .unwrap_err();
    assert!(e.contains("kind = \"postgres\""), "{e}");
    let e = herald::store::open(&load("sqlite", "sqlite:///nonexistent-dir/x/herald.db"))
        .await
        .unwrap_err();
    assert!(e.contains("directory"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Databases for the tests.

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A SQLite file in a fresh temporary directory, removed at the end.
struct TempDb {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
    url: String,
}

impl TempDb {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("herald-store-test"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("herald.db");
        let url = format!("sqlite://{}", path.display());
        Self { dir, path, url }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh database in the test PostgreSQL, so every test starts from an empty table.
struct PgDb {
    admin: sqlx::PgPool,
    name: String,
    url: String,
}

impl PgDb {
    async fn new() -> Self {
        let base = std::env::var("HERALD_TEST_POSTGRES_URL").unwrap_or_default();
        assert!(
            !base.is_empty(),
            "HERALD_TEST_POSTGRES_URL is not set, so the PostgreSQL store cannot be tested. \
             Run the tests through scripts/test.sh, or start a throwaway server first: \
             eval \"$(scripts/postgres.sh start)\" (and scripts/postgres.sh stop afterwards)"
        );
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&base)
            .await
            .unwrap_or_else(|e| {
                panic!("cannot connect to HERALD_TEST_POSTGRES_URL={base}: {e} (is scripts/postgres.sh start still running?)")
            });
        let name = unique("herald_conf");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        let (prefix, _) = base
            .split_once('?')
            .map_or((base.as_str(), ""), |(p, q)| (p, q));
        let server = prefix.rsplit_once('/').map_or(prefix, |(s, _)| s);
        let url = format!("{server}/{name}");
        Self { admin, name, url }
    }

    async fn drop(self) {
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&self.admin)
        .await;
    }
}

/// Runs SQL behind the store's back.
async fn raw_exec(url: &str, sql: &str) {
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query(sql).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query(sql).execute(&pool).await.unwrap();
        pool.close().await;
    }
}

/// Waits for the background refresh to show a condition (it runs every 20 ms here).
async fn wait_until(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the background refresh did not pick up the change within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
