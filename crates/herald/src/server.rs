//! The HTTP/WebSocket front: the router (a value, so tests can drive it without a port) and
//! `run`, the library entry point that binaries and tests call with a listener.

use crate::cluster::redis::RedisAdapter;
use crate::config::Config;
use crate::executor::{AppRef, Executor, SignedRequest};
use crate::sinks::console::Console;
use crate::sinks::metrics::Metrics;
use crate::sinks::webhook::Webhooks;
use crate::store::OpenedStore;
use crate::transport::socket::{self, ConnectParams};
use crate::transport::wsframe::{self, Upgrade};
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use herald_core::{App, Engine, EngineConfig, LocalAdapter};
use herald_protocol::api::ApiError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// State shared by every request and connection.
#[derive(Debug)]
pub struct Shared {
    pub engine: Engine,
    pub webhooks: Webhooks,
    pub console: Arc<Console>,
    pub metrics: Arc<Metrics>,
    pub executor: Executor,
    pub config: Config,
    pub store: OpenedStore,
    /// The Redis adapter when nodes are joined (`adapter = "redis"`).
    pub cluster: Option<RedisAdapter>,
    /// Connections arrive over TLS (the server terminates it).
    pub tls: bool,
    draining: AtomicBool,
    /// WebSocket sessions, so shutdown can wait for their cleanup.
    pub(crate) connections: TaskTracker,
    /// HTTP API token buckets per app.
    api_buckets: Mutex<HashMap<String, Bucket>>,
    /// HTTP API requests being handled: shutdown lets them finish before closing connections, so
    /// every event the API accepted is queued before any client gets its 4200.
    api_in_flight: std::sync::atomic::AtomicUsize,
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(c: &'a std::sync::atomic::AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::SeqCst);
        Self(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A token bucket refilled continuously.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: tokio::time::Instant,
}

impl Shared {
    /// Builds the shared state; with `adapter = "redis"` this starts the adapter's tasks.
    pub fn new(config: Config, store: OpenedStore) -> Result<Arc<Self>, String> {
        let metrics = Arc::new(Metrics::new());
        let console = Arc::new(Console::new());
        let webhooks = Webhooks::new(
            config.webhooks.clone(),
            store.store.clone(),
            Some(metrics.clone()),
            Some(console.clone()),
        );
        let sinks: Vec<Arc<dyn herald_core::LifecycleSink>> =
            vec![Arc::new(webhooks.clone()), console.clone(), metrics.clone()];
        let (engine, cluster) = if config.adapter == "redis" {
            let (adapter, rx) =
                RedisAdapter::new(&config.redis.url, &config.redis.prefix, metrics.clone())?;
            let engine = Engine::new(
                store.store.clone(),
                Arc::new(adapter.clone()),
                sinks,
                EngineConfig::default(),
            );
            adapter.start(engine.clone(), rx);
            (engine, Some(adapter))
        } else {
            let engine = Engine::new(
                store.store.clone(),
                Arc::new(LocalAdapter::new()),
                sinks,
                EngineConfig::default(),
            );
            (engine, None)
        };
        Ok(Arc::new(Self {
            webhooks,
            console,
            metrics,
            cluster: cluster.clone(),
            executor: Executor::new(engine.clone(), cluster),
            engine,
            tls: config.tls.enabled(),
            config,
            store,
            draining: AtomicBool::new(false),
            connections: TaskTracker::new(),
            api_buckets: Mutex::new(HashMap::new()),
            api_in_flight: std::sync::atomic::AtomicUsize::new(0),
        }))
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Takes one HTTP API token of `app`; false when its rate is exhausted.
    fn api_allowed(&self, app: &App) -> bool {
        let rate = app.limits.api_requests_per_second;
        if rate == 0 {
            return true;
        }
        let rate = f64::from(rate);
        let now = tokio::time::Instant::now();
        let mut buckets = self.api_buckets.lock();
        let b = buckets.entry(app.id.clone()).or_insert(Bucket {
            tokens: rate,
            last: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

type AppState = State<Arc<Shared>>;

fn error_response(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", e.message),
    )
        .into_response()
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The API operation a route performs once the request is authenticated.
#[derive(Clone, Copy, Debug)]
enum Op {
    Trigger,
    Batch,
    Channels,
    Channel,
    Users,
    Stats,
    RawTrigger,
    Terminate,
}

async fn api_call(
    shared: &Shared,
    op: Op,
    app_ref: AppRef<'_>,
    name: Option<&str>,
    method: &Method,
    uri: &Uri,
    body: Body,
) -> Response {
    let _in_flight = InFlight::new(&shared.api_in_flight);
    let route = op.route();
    if shared.draining() {
        // Accepted means delivered: once the drain starts, nothing new is accepted.
        shared.metrics.http("", route, 503);
        return error_response(ApiError::new(
            503,
            "Server is shutting down: retry on another node",
        ));
    }
    let limit = shared.config.server.max_request_body_bytes;
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        let app = match app_ref {
            AppRef::Id(id) if shared.engine.apps().by_id(id).is_some() => id,
            _ => "",
        };
        shared.metrics.http(app, route, 413);
        return error_response(ApiError::new(413, "Request body too large"));
    };
    let req = SignedRequest {
        method: method.as_str(),
        path: uri.path(),
        raw_query: uri.query().unwrap_or(""),
        body: &body,
    };
    let (app, query) =
        match crate::executor::authenticate(&shared.engine, app_ref, &req, now_unix()) {
            Ok(v) => v,
            Err(e) => {
                let app = match app_ref {
                    AppRef::Id(id) if shared.engine.apps().by_id(id).is_some() => id,
                    _ => "",
                };
                shared.metrics.http(app, route, e.status);
                return error_response(e);
            }
        };
    if !shared.api_allowed(&app) {
        shared.metrics.rejected(&app.id, "api_requests_per_second");
        shared.metrics.http(&app.id, route, 429);
        return error_response(ApiError::new(
            429,
            format!(
                "Too many requests: app {} is limited to {} API requests per second",
                app.id, app.limits.api_requests_per_second
            ),
        ));
    }
    let x = &shared.executor;
    let name = name.unwrap_or("");
    let result = match op {
        Op::Trigger => x.trigger(&app, &body).await,
        Op::Batch => x.trigger_batch(&app, &body).await,
        Op::Channels => x.channels(&app, &query).await,
        Op::Channel => x.channel(&app, name, &query).await,
        Op::Users => x.users(&app, name).await,
        Op::Stats => x.channel_stats(&app, name).await,
        Op::RawTrigger => x.trigger_raw(&app, name, &query, &body),
        Op::Terminate => x.terminate(&app, name),
    };
    match result {
        Ok(v) => {
            let status = if matches!(op, Op::RawTrigger) {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            shared.metrics.http(&app.id, route, status.as_u16());
            json_response(status, &v)
        }
        Err(e) => {
            shared.metrics.http(&app.id, route, e.status);
            error_response(e)
        }
    }
}

impl Op {
    /// Route label for metrics.
    fn route(self) -> &'static str {
        match self {
            Op::Trigger => "events",
            Op::Batch => "batch_events",
            Op::Channels => "channels",
            Op::Channel => "channel",
            Op::Users => "users",
            Op::Stats => "channel_stats",
            Op::RawTrigger => "channel_events",
            Op::Terminate => "terminate_connections",
        }
    }
}

macro_rules! app_route {
    ($fn_name:ident, $op:expr) => {
        async fn $fn_name(
            State(s): AppState,
            Path(app_id): Path<String>,
            method: Method,
            uri: Uri,
            body: Body,
        ) -> Response {
            api_call(&s, $op, AppRef::Id(&app_id), None, &method, &uri, body).await
        }
    };
    ($fn_name:ident, $op:expr, named) => {
        async fn $fn_name(
            State(s): AppState,
            Path((app_id, name)): Path<(String, String)>,
            method: Method,
            uri: Uri,
            body: Body,
        ) -> Response {
            api_call(
                &s,
                $op,
                AppRef::Id(&app_id),
                Some(&name),
                &method,
                &uri,
                body,
            )
            .await
        }
    };
}

app_route!(events, Op::Trigger);
app_route!(batch_events, Op::Batch);
app_route!(channels, Op::Channels);
app_route!(channel, Op::Channel, named);
app_route!(users, Op::Users, named);
app_route!(stats, Op::Stats, named);
app_route!(raw_events, Op::RawTrigger, named);
app_route!(terminate, Op::Terminate, named);

/// pusher-http-python's terminate route has no `/apps/{id}`: the app comes from `auth_key`.
async fn terminate_by_key(
    State(s): AppState,
    Path(user_id): Path<String>,
    method: Method,
    uri: Uri,
    body: Body,
) -> Response {
    api_call(
        &s,
        Op::Terminate,
        AppRef::ByAuthKey,
        Some(&user_id),
        &method,
        &uri,
        body,
    )
    .await
}

/// A WebSocket upgrade that reached the router: one sent on a connection that carried plain
/// HTTP requests before (first requests are upgraded by `listener` without the router).
/// Answered with 101 and run as a session on hyper's upgraded stream.
fn upgrade(shared: Arc<Shared>, mut req: Request, key: Option<String>) -> Option<Response> {
    let headers = req.headers();
    let Upgrade::Yes { accept } = wsframe::check_upgrade(
        req.method().as_str(),
        headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
    ) else {
        return None;
    };
    let tls = crate::transport::listener::forwarded_https(
        headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
    ) || shared.tls;
    let protocol = herald_protocol::sign::decode_query(req.uri().query().unwrap_or(""))
        .into_iter()
        .find(|(k, _)| k == "protocol")
        .map(|(_, v)| v);
    let params = ConnectParams {
        path_ok: key.is_some(),
        key,
        protocol,
        tls,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let io = hyper_util::rt::TokioIo::new(upgraded);
            socket::serve(io, Vec::new(), shared, params).await;
        }
    });
    Some(
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::UPGRADE, "websocket".to_owned()),
                (header::CONNECTION, "Upgrade".to_owned()),
                (header::SEC_WEBSOCKET_ACCEPT, accept),
            ],
        )
            .into_response(),
    )
}

async fn ws_app(State(s): AppState, Path(key): Path<String>, req: Request) -> Response {
    upgrade(s, req, Some(key)).unwrap_or_else(|| {
        error_response(ApiError::bad_request(
            "This is the WebSocket endpoint: connect with a WebSocket client",
        ))
    })
}

/// Unknown paths: WebSocket upgrades are completed and closed with 4005, the rest get 404.
async fn fallback(State(s): AppState, req: Request) -> Response {
    upgrade(s, req, None).unwrap_or_else(|| error_response(ApiError::new(404, "404 NOT FOUND")))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error_response(ApiError::new(
        405,
        format!(
            "405 METHOD NOT ALLOWED: {method} is not supported on {}",
            uri.path()
        ),
    ))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): AppState) -> Response {
    if s.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if s.cluster.as_ref().is_some_and(|c| !c.is_up()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster adapter not connected\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics(State(s): AppState) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(&s.engine),
    )
        .into_response()
}

/// The metrics listener's routes: `/metrics`, `/healthz`, `/readyz`.
pub fn metrics_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

/// The whole HTTP surface as a value.
pub fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/app/{key}", get(ws_app))
        .route("/apps/{app_id}/events", post(events))
        .route("/apps/{app_id}/batch_events", post(batch_events))
        .route("/apps/{app_id}/channels", get(channels))
        .route("/apps/{app_id}/channels/{channel}", get(channel))
        .route("/apps/{app_id}/channels/{channel}/users", get(users))
        .route("/apps/{app_id}/channels/{channel}/stats", get(stats))
        .route("/apps/{app_id}/channels/{channel}/events", post(raw_events))
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            post(terminate),
        )
        .route(
            "/users/{user_id}/terminate_connections",
            post(terminate_by_key),
        )
        .method_not_allowed_fallback(method_not_allowed);
    let prefix = shared.config.server.path_prefix.clone();
    let api = api.merge(crate::sinks::console::router());
    let app = if prefix.is_empty() {
        api
    } else {
        Router::new().nest(&prefix, api)
    };
    app.fallback(fallback).with_state(shared)
}

/// What `run` needs besides the configuration.
#[derive(Default)]
pub struct RunOptions {
    /// Listener for `/metrics`, `/healthz` and `/readyz`, if metrics are served.
    pub metrics_listener: Option<TcpListener>,
    /// Reloaded on SIGHUP (apps only) when the store is the config file.
    pub config_path: Option<std::path::PathBuf>,
    /// TLS acceptor built (and its files checked) before anything was announced.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The app store, opened before anything was announced.
    pub store: Option<OpenedStore>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("config_path", &self.config_path)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Serves the default-app configuration on `listener` until `shutdown` resolves (for tests).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
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
) -> std::io::Result<()> {
    let store = crate::store::open(&config)
        .await
        .map_err(std::io::Error::other)?;
    let tls = match options.tls {
        Some(t) => Some(t),
        None if config.tls.enabled() => {
            Some(crate::transport::tls::acceptor(&config.tls).map_err(std::io::Error::other)?)
        }
        None => None,
    };
    let shared = Shared::new(config, store).map_err(std::io::Error::other)?;
    shared.webhooks.load_spool();
    let mut background = vec![{
        let engine = shared.engine.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                engine.sweep();
            }
        })
    }];
    if let Some(path) = options.config_path {
        background.push(tokio::spawn(reload_on_sighup(shared.clone(), path)));
    }
    background.push(tokio::spawn(close_disabled_apps(shared.clone())));
    let stop_accepting = CancellationToken::new();
    if let Some(ml) = options.metrics_listener {
        let app = metrics_router(shared.clone());
        // Health must answer during the drain: this listener stops with the process.
        background.push(tokio::spawn(async move {
            let _ = axum::serve(ml, app).await;
        }));
    }
    background.push(tokio::spawn(socket::keepalive_sweep(
        shared.engine.clone(),
        shared.config.server.activity_timeout,
        shared.config.server.pong_timeout,
    )));
    let server = tokio::spawn(crate::transport::listener::serve(
        listener,
        tls,
        shared.clone(),
        router(shared.clone()),
        stop_accepting.clone(),
    ));
    shutdown.await;
    let cfg = &shared.config.server;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.shutdown_timeout_ms);
    shared.draining.store(true, Ordering::SeqCst);
    stop_accepting.cancel();
    shared.console.close();
    // API requests already inside finish (and queue their events) before any connection closes.
    let settle = tokio::time::Instant::now() + Duration::from_secs(2);
    while shared.api_in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drain(&shared, Duration::from_millis(cfg.drain_window_ms)).await;
    shared.connections.close();
    if tokio::time::timeout_at(deadline, shared.connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline reached before every connection finished closing");
    }
    shared.webhooks.shutdown(deadline).await;
    for task in background {
        task.abort();
    }
    match tokio::time::timeout_at(deadline, server).await {
        Ok(Err(e)) => Err(std::io::Error::other(e)),
        Ok(Ok(())) | Err(_) => Ok(()),
    }
}

/// Closes the connections of apps that a reload or the SQL store disabled (4003) or removed (4001).
async fn close_disabled_apps(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for app in shared.engine.connected_apps() {
            let code = match shared.engine.apps().by_id(&app) {
                Some(a) if a.enabled => continue,
                Some(_) => herald_protocol::codes::APP_DISABLED,
                None => herald_protocol::codes::APP_NOT_FOUND,
            };
            let n = shared.engine.close_app(&app, code);
            tracing::info!(app = %app, connections = n, code = code.code, "closing connections of an app that is no longer served");
        }
    }
}

/// Re-reads the config file's apps on every SIGHUP; an invalid file keeps the old apps.
async fn reload_on_sighup(shared: Arc<Shared>, path: std::path::PathBuf) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            let Some(target) = shared.store.reloadable.clone() else {
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
                Ok(n) => tracing::info!(apps = n, "configuration reloaded"),
                Err(e) => tracing::error!(error = %e, "reload rejected; keeping the current apps"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (shared, path);
    }
}

/// Closes every connection with 4200, spread over `window` so clients do not all reconnect at once.
async fn drain(shared: &Shared, window: Duration) {
    const TICK: Duration = Duration::from_millis(50);
    let conns = shared.engine.all_connections();
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

/// Sets up `tracing` from the config (`HERALD_LOG` or `RUST_LOG` pick the level; default info).
pub fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HERALD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.server.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Binds the configured addresses and serves until SIGINT or SIGTERM.
pub async fn serve_until_signal(
    config: Config,
    config_path: Option<std::path::PathBuf>,
) -> std::io::Result<()> {
    // Store and certificate problems stop startup before anything is announced as listening.
    let store = crate::store::open(&config)
        .await
        .map_err(std::io::Error::other)?;
    let tls = if config.tls.enabled() {
        Some(crate::transport::tls::acceptor(&config.tls).map_err(std::io::Error::other)?)
    } else {
        None
    };
    let addr = format!("{}:{}", config.server.host, config.server.port);
    let socket = bind(&addr)?;
    let local = socket.local_addr()?;
    let metrics_listener = if config.metrics.enabled {
        let l = bind(&format!("{}:{}", config.server.host, config.metrics.port))?;
        println!("Herald metrics on {}", l.local_addr()?);
        Some(l)
    } else {
        None
    };
    // A stable line on stdout for scripts and tests to find the port.
    println!("Herald listening on {local}");
    tracing::info!(%local, tls = config.tls.enabled(), "serving WebSocket and HTTP API");
    let options = RunOptions {
        metrics_listener,
        config_path,
        tls,
        store: Some(store),
    };
    run_with(socket, config, options, shutdown_signal()).await
}

/// A listener with a backlog sized for connection bursts.
fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let std_addr: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("cannot resolve {addr}")))?;
    let socket = if std_addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(std_addr)?;
    socket.listen(8192)
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
