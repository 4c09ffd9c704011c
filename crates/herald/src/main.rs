use clap::{Parser, Subcommand};
use herald::Config;
use std::path::PathBuf;
use std::process::ExitCode;

// mimalloc returns freed memory to the OS far better than the system allocator under connection
// churn, and keeps per-connection overhead lower (measured with herald-bench `idle`/`churn`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Herald: a Pusher Channels compatible realtime server.
///
/// With no options it serves the embedded default app (id `app-id`, key `app-key`,
/// secret `app-secret`) on port 6001.
///
/// Settings come from, lowest first: the defaults, the TOML file (--config or HERALD_CONFIG),
/// HERALD_* environment variables, then --host and --port. Each overrides the ones before it.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (settings not given keep their defaults).
    #[arg(long, short, env = "HERALD_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (server.host); overrides HERALD_HOST and the file.
    #[arg(long, global = true, value_name = "ADDRESS")]
    host: Option<String>,
    /// Port of the WebSocket endpoint and the HTTP API (server.port; 0 picks a free one);
    /// overrides HERALD_PORT and the file.
    #[arg(long, global = true)]
    port: Option<u16>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Check the configuration as `serve` does before it binds (values, TLS files, URLs, the
    /// spool file's directory) and exit: status 0 when it would start. Binds no port and
    /// connects to neither Redis nor the database.
    CheckConfig,
    /// Manage the apps of the configured store.
    #[command(subcommand)]
    Apps(herald::cli::apps::AppsCommand),
    /// Publish an event through the HTTP API of a running server, signed with the app's secret.
    Trigger(herald::cli::api::TriggerArgs),
    /// List the occupied channels of a running server through its HTTP API.
    Channels(herald::cli::api::ChannelsArgs),
}

fn load(cli: &Cli) -> Result<Config, String> {
    let text = match &cli.config {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
            format!(
                "cannot read config file {}: {e} (check the --config path)",
                p.display()
            )
        })?),
        None => None,
    };
    let path = cli
        .config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut config = Config::load(
        text.as_deref().map(|t| (path.as_str(), t)),
        std::env::vars(),
    )?;
    // Flags come last: they override the environment and the file.
    if let Some(host) = &cli.host {
        config.server.host.clone_from(host);
    }
    if let Some(port) = cli.port {
        config.server.port = port;
    }
    Ok(config)
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(release_freed_memory)
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Runs on a worker about to go idle: after a mass disconnect (`herald::memory`), returns the
/// pages this thread's heap holds free to the operating system, once per epoch.
fn release_freed_memory() {
    thread_local! {
        static SEEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let epoch = herald::memory::epoch();
    if SEEN.get() != epoch {
        SEEN.set(epoch);
        collect();
    }
}

// mimalloc has no safe interface for this. Measured: after 19,000 connections close, RSS stays
// at its peak (about 52 MiB from 15 MiB) without it; see BENCHMARKS.md.
#[allow(unsafe_code)]
fn collect() {
    // SAFETY: `mi_collect` only walks and trims the calling thread's own heap; it takes no
    // pointers and is safe to call at any time from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> Result<(), String> {
    let config = load(&cli)?;
    if cli.print_config {
        print!("{}", config.redacted_toml());
        return Ok(());
    }
    match cli.command {
        None | Some(Command::Serve) => {
            herald::startup::init_logging(&config);
            let path = cli.config.clone();
            runtime()?
                .block_on(herald::server::serve_until_signal(config, path))
                .map_err(|e| e.to_string())
        }
        Some(Command::CheckConfig) => {
            herald::startup::check(&config)?;
            println!(
                "configuration is valid: {} app(s), store `{}`",
                config.apps.len(),
                config.store.kind
            );
            Ok(())
        }
        Some(Command::Apps(cmd)) => runtime()?.block_on(herald::cli::apps::cli_apps(&config, cmd)),
        Some(Command::Trigger(args)) => {
            runtime()?.block_on(herald::cli::api::trigger(&config, args))
        }
        Some(Command::Channels(args)) => {
            runtime()?.block_on(herald::cli::api::channels(&config, args))
        }
    }
}
