//! herald-bench: a load generator for Pusher-compatible servers (Herald or any other), talking to
//! the server only as an outside client: WebSocket subscribers and the signed HTTP API.

mod arrival;
mod cluster;
mod http;
mod net;
mod pace;
mod procfs;
mod progress;
mod redis_probe;
mod report;
mod scenario;
mod schedule;
mod sign;
mod stats;
mod tls;
mod xhr;

use clap::{Parser, Subcommand};
use net::{ErrorLog, Target};
use procfs::Probe;
use scenario::Ctx;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "herald-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct Common {
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, global = true, default_value_t = 6001)]
    port: u16,
    #[arg(long, global = true, default_value = "app-id")]
    app_id: String,
    #[arg(long, global = true, default_value = "app-key")]
    key: String,
    #[arg(long, global = true, default_value = "app-secret")]
    secret: String,
    /// PID of the server process: its memory and CPU are read from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Spread WebSocket connections over these ports of the same host (several nodes of a
    /// cluster), round-robin; HTTP API calls still go to --port.
    #[arg(long, global = true, value_delimiter = ',')]
    ws_ports: Vec<u16>,
    /// Spread HTTP API publishers over these ports of the same host (several nodes of a
    /// cluster); without it they all use --port. How a scenario spreads them: its --help.
    #[arg(long, global = true, value_delimiter = ',')]
    api_ports: Vec<u16>,
    /// PIDs of a cluster's nodes (node 1 first): each node's CPU over the measured phase is
    /// reported, in total and per unit of work, under `cluster`.
    #[arg(long, global = true, value_delimiter = ',')]
    node_pids: Vec<u32>,
    /// The cluster's Redis (HOST:PORT): its CPU, bytes in and out and commands over the measured
    /// phase, from INFO, this bench's own INFO traffic taken out, are reported under `cluster`.
    #[arg(long, global = true, value_name = "ADDR")]
    redis_addr: Option<std::net::SocketAddr>,
    /// With --node-pids or --redis-addr: seconds of a quiet window (connected, nothing
    /// published; it starts 1 s after the connect phase) measured just before the phase;
    /// per-unit figures are then also given net of what the cluster spent at that rate anyway
    /// (0: no window).
    #[arg(long, global = true, default_value_t = 1.0)]
    idle_window: f64,
    /// Write the JSON result to FILE ('-': stdout, the table then goes to stderr).
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Bind client sockets to 127.0.0.1..=127.0.0.N in turn (0: no binding).
    #[arg(long, global = true, default_value_t = 254)]
    source_ips: u32,
    /// Connect + subscribe handshakes in flight at once.
    #[arg(long, global = true, default_value_t = 256)]
    connect_concurrency: usize,
    /// Seconds one connect + subscribe may take.
    #[arg(long, global = true, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Exit with status 1 when the run is not clean (loss, duplicates, reordering, errors, a
    /// schedule not kept).
    #[arg(long, global = true)]
    strict: bool,
    /// At a rate: most the 99th percentile of the send lag (how late each event left against its
    /// scheduled instant) may be, in milliseconds, before the run fails. Latency is measured from
    /// the scheduled instant, so a late sender cannot hide its lag; past this bound the sender
    /// was held up beyond this machine's own quiet jitter, and the run measured the machine's
    /// other work more than the server. Why 5 ms: see `schedule.rs`.
    #[arg(long, global = true, default_value_t = 5.0)]
    max_lag_p99_ms: f64,
    /// At a rate: least share of the requested rate, in percent, the senders must achieve.
    #[arg(long, global = true, default_value_t = 99.0)]
    min_rate_pct: f64,
    /// Connect over TLS (`wss://`, `https://`), checking the server's certificate against
    /// --tls-ca.
    #[arg(long, global = true, requires = "tls_ca")]
    tls: bool,
    /// PEM file of the certificate authority (or the self-signed certificate) to trust with
    /// --tls; the certificate must name --host.
    #[arg(long, global = true, value_name = "FILE")]
    tls_ca: Option<String>,
    /// What client sessions run on: WebSocket, or one of the HTTP fallback transports as
    /// pusher-js speaks them (`idle` and `fanout`; plain HTTP only).
    #[arg(long, global = true, value_enum, default_value_t = xhr::Transport::Ws, conflicts_with = "tls")]
    transport: xhr::Transport,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N idle connections over C channels: connect rate, server memory per connection.
    Idle(scenario::idle::IdleArgs),
    /// Events through the HTTP API to N subscribers: delivery, latency, CPU per message.
    Fanout(scenario::fanout::FanoutArgs),
    /// HTTP API publish requests per second over keep-alive connections.
    Trigger(scenario::trigger::TriggerArgs),
    /// Connect/subscribe/disconnect loops: cycles per second, memory drift.
    Churn(scenario::churn::ChurnArgs),
    /// Join/leave storms on presence channels.
    Presence(scenario::presence::PresenceArgs),
    /// A node of a cluster killed (SIGKILL) while it holds connections: how long until the other
    /// nodes' API no longer counts them, member_removed at watchers, Redis's slowest commands.
    NodeKill(scenario::node_kill::NodeKillArgs),
    /// Every load at once for a long time (churn, joins, fan-out, API reads, a hostile flood,
    /// slow readers): server memory, descriptors and CPU per unit of work per interval, drift.
    Soak(scenario::soak::SoakArgs),
    /// No server: a bare relay process at `fanout`'s rates and sizes (echo, fan-out or flat out),
    /// the machine's own floor under what `fanout` can measure here.
    Floor(scenario::floor::FloorArgs),
    /// The echo process of `floor` (started by it).
    #[command(hide = true)]
    EchoServer,
}

async fn run(cli: &Cli, nofile: Option<u64>) -> Result<report::Report, String> {
    let c = &cli.common;
    let addr = tokio::net::lookup_host((c.host.as_str(), c.port))
        .await
        .map_err(|e| format!("cannot resolve {}:{}: {e}", c.host, c.port))?
        .next()
        .ok_or_else(|| format!("no address for {}", c.host))?;
    let ws_addrs: Vec<std::net::SocketAddr> = c
        .ws_ports
        .iter()
        .map(|p| std::net::SocketAddr::new(addr.ip(), *p))
        .collect();
    let api_addrs: Vec<std::net::SocketAddr> = c
        .api_ports
        .iter()
        .map(|p| std::net::SocketAddr::new(addr.ip(), *p))
        .collect();
    let target = Arc::new(
        Target::new(addr, &c.host, &c.app_id, &c.key, &c.secret, c.source_ips)
            .with_ws_addrs(ws_addrs)
            .with_api_addrs(api_addrs)
            .with_transport(c.transport)
            .with_tls(match (c.tls, &c.tls_ca) {
                (true, Some(ca)) => tls::Tls::new(&c.host, ca)?,
                _ => tls::Tls::default(),
            }),
    );
    let ctx = Ctx {
        target: target.clone(),
        probe: Probe {
            server_pid: c.server_pid,
        },
        errors: Arc::new(ErrorLog::default()),
        connect_timeout: Duration::from_secs_f64(c.connect_timeout),
        connect_concurrency: c.connect_concurrency,
        run_id: format!("{:08x}", rand::random::<u32>()),
        pacing: schedule::Limits {
            max_lag_p99_ms: c.max_lag_p99_ms,
            min_rate_pct: c.min_rate_pct,
        },
        cluster: Arc::new(cluster::Probe::new(
            c.node_pids.clone(),
            c.redis_addr,
            c.idle_window,
        )),
    };
    for pid in &c.node_pids {
        if procfs::cpu_ns(*pid).is_none() {
            return Err(format!("cannot read /proc/{pid}: is --node-pids right?"));
        }
    }
    if c.redis_addr.is_some() {
        ctx.cluster.redis_cmd(&["PING"]).await?;
    }
    if let Some(pid) = c.server_pid {
        if procfs::sample(&pid.to_string()).is_none() {
            return Err(format!("cannot read /proc/{pid}: is --server-pid right?"));
        }
    }
    let mut report = match &cli.scenario {
        Scenario::Idle(a) => scenario::idle::run(&ctx, a).await,
        Scenario::Fanout(a) => scenario::fanout::run(&ctx, a).await,
        Scenario::Trigger(a) => scenario::trigger::run(&ctx, a).await,
        Scenario::Churn(a) => scenario::churn::run(&ctx, a).await,
        Scenario::Presence(a) => scenario::presence::run(&ctx, a).await,
        Scenario::NodeKill(a) => scenario::node_kill::run(&ctx, a).await,
        Scenario::Floor(a) => scenario::floor::run(&ctx, a).await,
        Scenario::Soak(a) => scenario::soak::run(&ctx, a).await,
        Scenario::EchoServer => return Err(scenario::floor::echo_server().await),
    };
    // `floor` involves no server: its report names none.
    if !matches!(cli.scenario, Scenario::Floor(_)) {
        report.target.put("address", addr.to_string());
        report.target.put(
            "ws_ports",
            serde_json::json!(if c.ws_ports.is_empty() {
                vec![c.port]
            } else {
                c.ws_ports.clone()
            }),
        );
        if !c.api_ports.is_empty() {
            report
                .target
                .put("api_ports", serde_json::json!(c.api_ports));
        }
        if !c.node_pids.is_empty() {
            report
                .target
                .put("node_pids", serde_json::json!(c.node_pids));
        }
        if let Some(a) = c.redis_addr {
            report.target.put("redis", a.to_string());
        }
        report.target.put("app_id", c.app_id.clone());
        report.target.put("server_pid", scenario::opt(c.server_pid));
        report.target.put("source_ips", target.source_ips());
        report.target.put("tls", target.tls().on());
        report.target.put("open_files_limit", scenario::opt(nofile));
        report.target.put("run_id", ctx.run_id.clone());
    }
    report.results.put("errors", ctx.errors.to_json());
    report.fail_if(ctx.errors.total(), "errors");
    Ok(report)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Tens of thousands of sockets: raise the soft open-file limit to the hard one.
    let nofile = rlimit::increase_nofile_limit(u64::MAX).ok();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herald-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match runtime.block_on(run(&cli, nofile)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herald-bench: {e}");
            return ExitCode::from(2);
        }
    };
    // Tasks still holding sockets (aborted ones) must not delay the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));

    let json = report.to_json();
    match cli.common.json.as_deref() {
        Some(p) if p.as_os_str() == "-" => {
            println!("{json}");
            eprint!("{}", report.table());
        }
        Some(p) => {
            if let Err(e) = std::fs::write(p, format!("{json}\n")) {
                eprintln!("herald-bench: cannot write {}: {e}", p.display());
                return ExitCode::from(2);
            }
            print!("{}", report.table());
        }
        None => print!("{}", report.table()),
    }
    if cli.common.strict && !report.passed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
