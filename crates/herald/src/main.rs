use clap::Parser;
use herald::Config;
use std::process::ExitCode;

/// Herald: a Pusher Channels compatible realtime server.
///
/// With no options it serves the embedded default app (id `app-id`, key `app-key`,
/// secret `app-secret`) on port 6001.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (settings not given keep their defaults).
    #[arg(long, short, env = "HERALD_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let text = match &cli.config {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("herald: cannot read config file {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let path = cli.config.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let config = match Config::load(text.as_deref().map(|t| (path.as_str(), t)), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", config.redacted_toml());
        return ExitCode::SUCCESS;
    }
    herald::server::init_logging(&config);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(herald::server::serve_until_signal(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::FAILURE
        }
    }
}
