//! The composition root: builds every part from the configuration and hands each the narrow
//! handle it needs ([`Node`]), then runs the node: listeners, background sweeps, SIGHUP reload,
//! and the graceful drain on shutdown.

use crate::cluster::Store;
use crate::config::Config;
use crate::drain::Drain;
use crate::executor::Executor;
use crate::http::{self, ApiState};
use crate::session;
use crate::sinks::console::{self, Console, ConsoleState};
use crate::sinks::metrics::Metrics;
use crate::sinks::webhook::Webhooks;
use crate::store::OpenedStore;
use crate::transport::backlog::{self, ListenQueue};
use crate::transport::listener::{self, Port};
use crate::transport::socket;
use axum::Router;
use herald_core::{Cluster, Engine, EngineConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why a node could not start: which part failed, with a message that names the setting, file or
/// address.
#[derive(Debug)]
pub enum StartError {
    /// The app store could not be opened or read.
    Store(String),
    /// The TLS certificate or key could not be used.
    Tls(String),
    /// The cluster engine could not be set up.
    Cluster(String),
    /// A check that `herald check-config` shares failed (TLS files, URLs, the spool file).
    Check(String),
    /// A port could not be bound: the message names the address and the settings.
    Listen(String),
    /// A listener could not be bound or served.
    Io(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Store(m)
            | StartError::Tls(m)
            | StartError::Cluster(m)
            | StartError::Check(m)
            | StartError::Listen(m) => f.write_str(m),
            StartError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StartError {}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::Io(e)
    }
}

/// Every part of a running node. Built once; each part holds only its own handles.
#[derive(Debug)]
pub struct Node {
    pub engine: Engine,
    pub webhooks: Webhooks,
    pub console: Arc<Console>,
    pub metrics: Arc<Metrics>,
    pub config: Config,
    pub store: OpenedStore,
    pub drain: Arc<Drain>,
    pub session: Arc<session::Ctx>,
    pub api: Arc<ApiState>,
    console_state: Arc<ConsoleState>,
}

impl Node {
    /// Builds the node; with `adapter = "redis"` this starts the cluster engine's tasks (so it
    /// needs a runtime).
    pub fn new(config: Config, store: OpenedStore) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        // The console keeps recent events for the logs opened later only while it can be opened.
        let console = Arc::new(if config.console.token.is_empty() {
            Console::new()
        } else {
            Console::keeping_history()
        });
        let webhooks = Webhooks::new(
            config.webhooks.clone(),
            store.store.clone(),
            Some(metrics.clone()),
            Some(console.clone()),
        );
        let sinks: Vec<Arc<dyn herald_core::LifecycleSink>> =
            vec![Arc::new(webhooks.clone()), console.clone(), metrics.clone()];
        let (engine, cluster) =
            build_engine(&config, &store, sinks, &metrics).map_err(StartError::Cluster)?;
        let drain = Drain::new();
        let executor = Executor::new(engine.clone(), cluster.clone());
        let session = Arc::new(session::Ctx {
            engine: engine.clone(),
            metrics: metrics.clone(),
            cluster: cluster.clone(),
            drain: drain.clone(),
            activity_timeout: config.server.activity_timeout,
            max_ws_message_bytes: config.server.max_ws_message_bytes,
            write_timeout: Duration::from_secs(config.server.pong_timeout),
            compression: config.server.websocket_compression.threshold(),
            compression_context_takeover: config.server.websocket_compression_context_takeover,
        });
        // Frames of the compression threshold's size get a place for their shared compressed form.
        herald_core::set_deflate_threshold(config.server.websocket_compression.threshold());
        let api = Arc::new(ApiState::new(
            executor.clone(),
            metrics.clone(),
            drain.clone(),
            session.clone(),
            cluster,
            config.tls.enabled(),
            config.server.max_request_body_bytes,
            config.server.path_prefix.clone(),
        ));
        let console_state = Arc::new(ConsoleState {
            console: console.clone(),
            executor,
            drain: drain.clone(),
            token: config.console.token.clone(),
            auth: Default::default(),
            tls: config.tls.enabled(),
            path_prefix: config.server.path_prefix.clone(),
            max_request_body_bytes: config.server.max_request_body_bytes,
        });
        Ok(Self {
            engine,
            webhooks,
            console,
            metrics,
            config,
            store,
            drain,
            session,
            api,
            console_state,
        })
    }

    /// The whole HTTP surface as a value (tests drive it without a port).
    pub fn router(&self) -> Router {
        http::router(
            self.api.clone(),
            console::router(self.console_state.clone()),
            &self.config.server.path_prefix,
        )
    }

    /// The metrics port's routes.
    pub fn metrics_router(&self) -> Router {
        http::metrics_router(self.api.clone())
    }
}

/// The engine with the adapter the configuration names, and the cluster's read side.
fn build_engine(
    config: &Config,
    store: &OpenedStore,
    sinks: Vec<Arc<dyn herald_core::LifecycleSink>>,
    metrics: &Arc<Metrics>,
) -> Result<(Engine, Option<Arc<dyn Store>>), String> {
    let engine_with = |cluster: Cluster| {
        Engine::new(
            store.store.clone(),
            cluster,
            sinks.clone(),
            EngineConfig {
                max_subscriptions: usize::try_from(config.server.max_subscriptions)
                    .unwrap_or(usize::MAX),
                ..EngineConfig::default()
            },
        )
    };
    crate::cluster::build(config, metrics, engine_with)
}

/// What `run` needs besides the configuration.
#[derive(Default)]
pub struct RunOptions {
    /// Listener for `/metrics`, `/healthz` and `/readyz`, if metrics are served.
    pub metrics_listener: Option<TcpListener>,
    /// Reloaded on SIGHUP (apps only) when the store is the config file.
    pub config_path: Option<std::path::PathBuf>,
    /// TLS acceptor built (and its files checked) before anything was announced.
    pub tls: Option<crate::transport::tls::Acceptor>,
    /// The app store, opened before anything was announced.
    pub store: Option<OpenedStore>,
    /// The backlog the server port was bound with after the kernel's cap, when known.
    pub listen_backlog: Option<u32>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("config_path", &self.config_path)
            .field("tls", &self.tls.is_some())
            .field("listen_backlog", &self.listen_backlog)
            .finish_non_exhaustive()
    }
}

/// Serves `config` on `listener` until `shutdown` resolves (for tests).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    run_with(listener, config, RunOptions::default(), shutdown).await
}

/// Serves until `shutdown` resolves, then shuts down gracefully: stop accepting, close
/// connections with 4200 in paced batches over the drain window, let their cleanup run, flush
/// webhooks, all within the hard shutdown deadline.
pub async fn run_with(
    listener: TcpListener,
    config: Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    // The caller may have opened the store already (to fail before announcing anything): a
    // store is opened once, so a SQL store runs one pool and one refresh loop.
    let store = match options.store {
        Some(s) => s,
        None => crate::store::open(&config)
            .await
            .map_err(StartError::Store)?,
    };
    let tls = match options.tls {
        Some(t) => Some(t),
        None if config.tls.enabled() => {
            Some(crate::transport::tls::acceptor(&config.tls).map_err(StartError::Tls)?)
        }
        None => None,
    };
    let node = Arc::new(Node::new(config, store)?);
    node.webhooks.load_spool();
    if let Some(q) = ListenQueue::of(&listener, options.listen_backlog) {
        node.metrics.watch_listen_queue(q);
    }
    let mut background = vec![{
        let engine = node.engine.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                engine.sweep();
            }
        })
    }];
    if let Some(path) = options.config_path {
        background.push(tokio::spawn(reload_on_sighup(node.store.clone(), path)));
    }
    background.push(tokio::spawn(follow_apps(
        node.engine.clone(),
        node.store.changed.clone(),
    )));
    let stop_accepting = CancellationToken::new();
    if let Some(ml) = options.metrics_listener {
        // Health must answer during the drain: this listener stops with the process.
        background.push(tokio::spawn(listener::serve_http(
            ml,
            node.metrics_router(),
            node.metrics.clone(),
        )));
    }
    background.push(tokio::spawn(socket::keepalive_sweep(
        node.engine.clone(),
        node.config.server.activity_timeout,
        node.config.server.pong_timeout,
    )));
    let capacity =
        crate::transport::capacity::Capacity::from_settings(node.config.server.max_connections);
    let fallback = crate::transport::fallback::Sessions::new(
        node.session.clone(),
        node.config.server.fallback_session_timeout,
        node.config.server.fallback_poll_timeout,
        capacity.limit(),
    );
    background.push(tokio::spawn(fallback.clone().reap()));
    let port = Port {
        fallback,
        session: node.session.clone(),
        path_prefix: Arc::from(node.config.server.path_prefix.as_str()),
        tls,
        router: node.router(),
        capacity,
    };
    let server = tokio::spawn(listener::serve(listener, port, stop_accepting.clone()));
    shutdown.await;
    let cfg = &node.config.server;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.shutdown_timeout_ms);
    // The port stays open while connections drain: new API requests get a 503 that says why,
    // upgrades a refusal, and `/readyz` its 503, rather than a closed port.
    node.drain.begin();
    node.console.close();
    // API requests already inside finish (and queue their events) before any connection closes.
    let settle = tokio::time::Instant::now() + Duration::from_secs(2);
    while node.drain.requests_in_flight() > 0 && tokio::time::Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The deadline bounds the whole shutdown: a drain window longer than what is left of it is
    // shortened, so that every connection is still asked to close before the exit.
    let window = Duration::from_millis(cfg.drain_window_ms)
        .min(deadline.saturating_duration_since(tokio::time::Instant::now()) / 2);
    drain(&node.engine, window).await;
    if tokio::time::timeout_at(deadline, node.drain.sessions_done())
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline reached before every connection finished closing");
    }
    stop_accepting.cancel();
    node.webhooks.shutdown(deadline).await;
    for task in background {
        task.abort();
    }
    match tokio::time::timeout_at(deadline, server).await {
        Ok(Err(e)) => Err(StartError::Io(std::io::Error::other(e))),
        Ok(Ok(())) | Err(_) => Ok(()),
    }
}

/// As soon as the store reports a change (and every second besides): open connections follow
/// their app's settings as the store has them now, and those of apps that a reload or the SQL
/// store disabled (4003) or removed (4001) are closed.
async fn follow_apps(engine: Engine, changed: Arc<tokio::sync::Notify>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = changed.notified() => {}
        }
        for (app, code, n) in engine.follow_apps() {
            tracing::info!(app = %app, connections = n, code = code.code, "closing connections of an app that is no longer served");
        }
    }
}

/// Re-reads the config file's apps on every SIGHUP; an invalid file keeps the old apps.
async fn reload_on_sighup(store: OpenedStore, path: std::path::PathBuf) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            let Some(target) = store.reloadable.clone() else {
                tracing::warn!(
                    "SIGHUP ignored: apps come from a database store, which refreshes by itself"
                );
                continue;
            };
            let result = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|text| {
                    Config::load(Some((&path.display().to_string(), &text)), std::env::vars())
                })
                .and_then(|c| target.replace(c.apps.clone()).map(|()| c.apps.len()));
            match result {
                Ok(n) => {
                    store.changed.notify_one();
                    tracing::info!(apps = n, "configuration reloaded");
                }
                Err(e) => tracing::error!(error = %e, "reload rejected; keeping the current apps"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (store, path);
    }
}

/// Closes every connection with 4200, spread over `window` so clients do not all reconnect at once.
async fn drain(engine: &Engine, window: Duration) {
    const TICK: Duration = Duration::from_millis(50);
    let conns = engine.all_connections();
    if conns.is_empty() {
        return;
    }
    let ticks = (window.as_millis() / TICK.as_millis()).max(1) as usize;
    let per_tick = conns.len().div_ceil(ticks);
    tracing::info!(
        connections = conns.len(),
        window_ms = window.as_millis() as u64,
        "draining connections"
    );
    let mut interval = tokio::time::interval(TICK);
    for chunk in conns.chunks(per_tick) {
        interval.tick().await;
        for c in chunk {
            c.request_close(herald_protocol::codes::RECONNECT);
        }
    }
}

/// Checks what `herald check-config` checks, opens the store, binds the configured addresses
/// and serves until SIGINT or SIGTERM.
pub async fn serve_until_signal(
    config: Config,
    config_path: Option<std::path::PathBuf>,
) -> Result<(), StartError> {
    use crate::startup::{self, Listener};
    // Certificate, URL and store problems stop startup before anything is announced as
    // listening; the same checks as `herald check-config`.
    let checked = startup::check(&config).map_err(StartError::Check)?;
    let store = crate::store::open(&config)
        .await
        .map_err(StartError::Store)?;
    // Within 64..=65535 by the config's range check.
    let asked = u32::try_from(config.server.listen_backlog).unwrap_or(u32::MAX);
    let socket = startup::bind(
        &config.server.host,
        config.server.port,
        asked,
        Listener::Server,
    )
    .map_err(StartError::Listen)?;
    let local = socket.local_addr()?;
    let somaxconn = backlog::somaxconn();
    let listen_backlog = backlog::effective(asked, somaxconn);
    if listen_backlog < asked {
        tracing::warn!(
            asked,
            effective = listen_backlog,
            "server.listen_backlog is capped by net.core.somaxconn; raise that sysctl for the backlog asked"
        );
    } else {
        tracing::info!(backlog = listen_backlog, somaxconn, "listen backlog");
    }
    let metrics_listener = if config.metrics.enabled {
        // A scraper and a health checker: tokio's default backlog is plenty.
        let l = startup::bind(
            &config.metrics.host,
            config.metrics.port,
            1024,
            Listener::Metrics,
        )
        .map_err(StartError::Listen)?;
        println!("Herald metrics on {}", l.local_addr()?);
        Some(l)
    } else {
        None
    };
    // A stable line on stdout for scripts and tests to find the port.
    println!("Herald listening on {local}");
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let app_ids: Vec<String> = store.store.all().iter().map(|a| a.id.clone()).collect();
    for line in startup::banner_lines(&config, local, metrics_addr, &app_ids) {
        tracing::info!("{line}");
    }
    let options = RunOptions {
        metrics_listener,
        config_path,
        tls: checked.tls,
        store: Some(store),
        listen_backlog: Some(listen_backlog),
    };
    run_with(socket, config, options, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
