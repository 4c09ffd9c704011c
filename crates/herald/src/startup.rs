//! What happens before a node serves: the checks that `serve` and `herald check-config` share
//! (one function, so the two cannot disagree), binding the ports with errors that name the
//! address and the setting that chose it, the startup banner, and the log setup.

use crate::config::{Adapter, Config, LogFormat, RedisMode, StoreKind};
use crate::redact::redact_urls;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// What the checks built that serving uses.
pub struct Checked {
    /// The TLS acceptor, when `[tls]` is set.
    pub tls: Option<crate::transport::tls::Acceptor>,
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Everything `serve` needs that can be checked without binding a port or connecting to Redis
/// or a database: the TLS files (readable, PEM, a certificate and its key), the Redis and
/// app-store URLs, and the webhook spool file's place. (The loaded configuration has already
/// checked every value and the webhook URLs.)
pub fn check(config: &Config) -> Result<Checked, String> {
    let tls = if config.tls.enabled() {
        Some(crate::transport::tls::acceptor(&config.tls)?)
    } else {
        None
    };
    crate::cluster::check(config)?;
    if config.store.kind != StoreKind::Config {
        check_store_url(config)?;
    }
    check_spool_file(&config.webhooks.spool_file)?;
    Ok(Checked { tls })
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn check_store_url(config: &Config) -> Result<(), String> {
    crate::store::sql::check_url(config)
}

// Without either feature the configuration refuses a SQL store kind already.
#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
fn check_store_url(_: &Config) -> Result<(), String> {
    Ok(())
}

/// The spool file is written at shutdown and read (then removed) at startup: it must be a
/// regular file or not exist yet, in a directory that exists. Found only at the shutdown
/// deadline, a wrong path would lose the undelivered webhooks.
fn check_spool_file(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    let p = std::path::Path::new(path);
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(_) => Err(format!(
            "webhooks.spool_file `{path}` (HERALD_WEBHOOKS_SPOOL_FILE) is not a regular file (a directory, link or device); name a file Herald may create and remove"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            if dir.is_dir() {
                Ok(())
            } else {
                Err(format!(
                    "webhooks.spool_file `{path}` (HERALD_WEBHOOKS_SPOOL_FILE): the directory {} does not exist; create it or choose another path",
                    dir.display()
                ))
            }
        }
        Err(e) => Err(format!(
            "cannot check webhooks.spool_file `{path}` (HERALD_WEBHOOKS_SPOOL_FILE): {e}"
        )),
    }
}

/// Which listener an address is for: the error names the settings that chose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// WebSockets, the HTTP API and the console.
    Server,
    /// `/metrics`, `/healthz`, `/readyz`.
    Metrics,
}

impl Listener {
    fn settings(self) -> &'static str {
        match self {
            Listener::Server => {
                "server.host and server.port, or HERALD_HOST and HERALD_PORT, or --host and --port"
            }
            Listener::Metrics => {
                "metrics.host and metrics.port, or HERALD_METRICS_HOST and HERALD_METRICS_PORT"
            }
        }
    }

    fn what(self) -> &'static str {
        match self {
            Listener::Server => "the server",
            Listener::Metrics => "metrics",
        }
    }

    fn in_use_hint(self) -> &'static str {
        match self {
            Listener::Server => {
                "another process (another herald, or soketi, whose default port is also 6001?) holds it: stop it or choose another port"
            }
            Listener::Metrics => {
                "another process holds it; soketi also serves its metrics on 9601 by default: stop it, choose another port for metrics.port (HERALD_METRICS_PORT), or set metrics.enabled = false"
            }
        }
    }
}

/// A listener on `host:port` with `backlog` (tokio's `TcpListener::bind` fixes 1024, too few
/// for a burst of reconnects); an error names the address, the settings that chose it and,
/// for the usual causes, what to do.
pub fn bind(host: &str, port: u16, backlog: u32, which: Listener) -> Result<TcpListener, String> {
    let shown = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let fail = |e: std::io::Error| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => which.in_use_hint(),
            std::io::ErrorKind::AddrNotAvailable => {
                "no network interface of this machine has that address"
            }
            std::io::ErrorKind::PermissionDenied => {
                "ports below 1024 need root or CAP_NET_BIND_SERVICE"
            }
            _ => "",
        };
        let hint = if hint.is_empty() {
            String::new()
        } else {
            format!("; {hint}")
        };
        format!(
            "cannot listen on {shown} for {} (set by {}): {e}{hint}",
            which.what(),
            which.settings()
        )
    };
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| {
            format!(
                "cannot resolve the host `{host}` of {} (set by {}): {e}",
                which.what(),
                which.settings()
            )
        })?
        .next()
        .ok_or_else(|| {
            format!(
                "the host `{host}` of {} resolves to no address",
                which.what()
            )
        })?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    socket.listen(backlog).map_err(fail)
}

/// How many app ids the banner names before it counts the rest.
const BANNER_APPS: usize = 20;

/// The lines an operator needs once the ports are bound: where the WebSocket endpoint, the
/// HTTP API, the metrics and the console are, and which apps are served (ids only).
pub fn banner_lines(
    config: &Config,
    server: SocketAddr,
    metrics: Option<SocketAddr>,
    app_ids: &[String],
) -> Vec<String> {
    // An unspecified address listens on every interface; the loopback one is the address
    // that works from this machine.
    let reachable = |a: SocketAddr| {
        if a.ip().is_unspecified() {
            let ip = if a.is_ipv4() { "127.0.0.1" } else { "[::1]" };
            format!("{ip}:{}", a.port())
        } else {
            a.to_string()
        }
    };
    let (ws, http) = if config.tls.enabled() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    let base = format!("{}{}", reachable(server), config.server.path_prefix);
    let every = if server.ip().is_unspecified() {
        " (every interface)"
    } else {
        ""
    };
    let mut lines = vec![
        format!(
            "Herald {} ready on {server}{every}",
            env!("CARGO_PKG_VERSION")
        ),
        format!("  WebSocket: {ws}://{base}/app/{{key}}?protocol=7"),
        format!(
            "  HTTP API:  {http}://{base}/apps/{{app_id}}/events (and the rest of the Pusher API)"
        ),
    ];
    lines.push(match metrics {
        Some(m) => format!(
            "  metrics:   http://{}/metrics (health: /healthz, /readyz)",
            reachable(m)
        ),
        None => "  metrics:   off (metrics.enabled = false)".to_owned(),
    });
    lines.push(if config.console.token.is_empty() {
        "  console:   off (set console.token or HERALD_CONSOLE_TOKEN to turn it on)".to_owned()
    } else {
        format!("  console:   {http}://{base}/console")
    });
    let mut apps = app_ids
        .iter()
        .take(BANNER_APPS)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if app_ids.len() > BANNER_APPS {
        apps.push_str(&format!(" and {} more", app_ids.len() - BANNER_APPS));
    }
    lines.push(format!(
        "  apps:      {} served (store `{}`): {apps}",
        app_ids.len(),
        config.store.kind
    ));
    if config.adapter == Adapter::Redis {
        let r = &config.redis;
        let how = match r.mode {
            RedisMode::Standalone => String::new(),
            RedisMode::Sentinel => format!("the Sentinels of `{}`; ", r.sentinel_master),
            RedisMode::Cluster => "a Redis Cluster; ".into(),
        };
        lines.push(format!(
            "  cluster:   through Redis at {} ({how}prefix `{}`)",
            redact_urls(&r.url),
            r.prefix
        ));
    }
    lines
}

/// Sets up `tracing` from the config (`HERALD_LOG` or `RUST_LOG` pick the level; default info).
/// Colours only when stderr is a terminal (and `NO_COLOR` is unset): a log file or a pipe to a
/// collector gets plain text.
pub fn init_logging(config: &Config) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HERALD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if config.server.log_format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_names_every_endpoint_and_the_app_ids_only() {
        let mut c = Config::default();
        c.console.token = "tok".into();
        c.server.path_prefix = "/pusher".into();
        let lines = banner_lines(
            &c,
            "0.0.0.0:6001".parse().unwrap(),
            Some("127.0.0.1:9601".parse().unwrap()),
            &["app-id".into()],
        );
        let all = lines.join("\n");
        for want in [
            "ready on 0.0.0.0:6001 (every interface)",
            "ws://127.0.0.1:6001/pusher/app/{key}",
            "http://127.0.0.1:6001/pusher/apps/{app_id}/events",
            "http://127.0.0.1:9601/metrics",
            "http://127.0.0.1:6001/pusher/console",
            "1 served (store `config`): app-id",
        ] {
            assert!(all.contains(want), "{want} missing:\n{all}");
        }
        assert!(!all.contains("app-secret") && !all.contains("tok"), "{all}");
        let many: Vec<String> = (0..25).map(|i| format!("a{i}")).collect();
        let all =
            banner_lines(&Config::default(), "[::1]:1".parse().unwrap(), None, &many).join("\n");
        assert!(all.contains("a19 and 5 more"), "{all}");
        assert!(
            all.contains("metrics:   off") && all.contains("console:   off"),
            "{all}"
        );
    }

    #[test]
    fn a_spool_file_in_a_missing_directory_or_not_a_file_is_refused() {
        assert!(check_spool_file("").is_ok());
        assert!(check_spool_file("herald-test-spool-that-does-not-exist").is_ok());
        let e = check_spool_file("/nonexistent-dir-herald/x.spool").unwrap_err();
        assert!(
            e.contains("webhooks.spool_file") && e.contains("/nonexistent-dir-herald"),
            "{e}"
        );
        let dir = std::env::temp_dir();
        let e = check_spool_file(&dir.display().to_string()).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
