//! `herald apps …`: list the configured store's apps, and add, disable, enable or remove apps
//! of a SQL store.

use crate::config::{Config, StoreKind};
use crate::store::SQL_STORE_HINT;
use herald_core::{App, WebhookTarget, WEBHOOK_EVENT_TYPES};
use herald_protocol::limits::Limits;

/// `herald apps …` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AppsCommand {
    /// List the apps of the configured store (secrets are never shown).
    List,
    /// Add an app to the SQL store; a running server serves it within `store.refresh_interval_ms`.
    Add(AddArgs),
    /// Disable an app: after the next refresh, new connections are refused (4003) and API requests answered 403.
    Disable {
        /// The app's id.
        id: String,
    },
    /// Enable a disabled app.
    Enable {
        /// The app's id.
        id: String,
    },
    /// Remove an app from the SQL store.
    Remove {
        /// The app's id.
        id: String,
    },
}

/// `herald apps add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The app id (used in the HTTP API path `/apps/{id}/…`).
    #[arg(long)]
    pub id: String,
    /// The app key clients connect with; random when left out.
    #[arg(long)]
    pub key: Option<String>,
    /// The secret that signs API requests and channel auth; random when left out.
    #[arg(long)]
    pub secret: Option<String>,
    /// Add the app disabled.
    #[arg(long)]
    pub disabled: bool,
    /// Allow client events (`client-*`) on private and presence channels.
    #[arg(long)]
    pub client_events: bool,
    /// Send `pusher_internal:subscription_count` events.
    #[arg(long)]
    pub subscription_count: bool,
    /// Send watchlist online/offline events.
    #[arg(long)]
    pub watchlist_events: bool,
    /// Require connections to sign in (or subscribe to a private channel).
    #[arg(long)]
    pub user_authentication: bool,
    /// Refuse plain ws:// connections.
    #[arg(long)]
    pub tls_only: bool,
    /// Concurrent connections allowed (0: unlimited).
    #[arg(long)]
    pub max_connections: Option<u64>,
    /// A webhook URL receiving every event type (repeatable).
    #[arg(long = "webhook")]
    pub webhooks: Vec<String>,
    /// Several events per webhook body.
    #[arg(long)]
    pub batch_webhooks: bool,
}

impl AddArgs {
    /// The app to add, with random key and secret where none was given.
    pub fn to_app(&self) -> App {
        let mut limits = Limits::default();
        if let Some(n) = self.max_connections {
            limits.max_connections = n;
        }
        App {
            id: self.id.clone(),
            key: self.key.clone().unwrap_or_else(|| random_hex(10)),
            secret: self.secret.clone().unwrap_or_else(|| random_hex(16)),
            enabled: !self.disabled,
            enable_client_messages: self.client_events,
            enable_subscription_count: self.subscription_count,
            enable_watchlist_events: self.watchlist_events,
            enable_user_authentication: self.user_authentication,
            user_authentication_timeout: 30,
            emit_subscription_error: false,
            tls_only: self.tls_only,
            limits,
            webhooks: self
                .webhooks
                .iter()
                .map(|url| WebhookTarget {
                    url: url.clone(),
                    event_types: WEBHOOK_EVENT_TYPES
                        .iter()
                        .map(|s| (*s).to_owned())
                        .collect(),
                    filter: Default::default(),
                    headers: Default::default(),
                })
                .collect(),
            batch_webhooks: self.batch_webhooks,
        }
    }
}

fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(v)
}

/// The switches of an app, as `herald apps list` shows them.
fn flags(app: &App) -> String {
    let mut f: Vec<String> = [
        (app.enable_client_messages, "client-events"),
        (app.enable_subscription_count, "subscription-count"),
        (app.enable_watchlist_events, "watchlist-events"),
        (app.enable_user_authentication, "user-authentication"),
        (app.emit_subscription_error, "subscription-error"),
        (app.tls_only, "tls-only"),
        (app.batch_webhooks, "batch-webhooks"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, name)| (*name).to_owned())
    .collect();
    if !app.webhooks.is_empty() {
        f.push(format!("webhooks={}", app.webhooks.len()));
    }
    if app.limits.max_connections > 0 {
        f.push(format!("max-connections={}", app.limits.max_connections));
    }
    if f.is_empty() {
        "-".into()
    } else {
        f.join(",")
    }
}

/// The `apps list` table (never secrets).
pub fn render_list(apps: &[App]) -> String {
    let id_w = apps.iter().map(|a| a.id.len()).max().unwrap_or(0).max(2);
    let key_w = apps.iter().map(|a| a.key.len()).max().unwrap_or(0).max(3);
    let mut out = format!("{:id_w$}  {:key_w$}  {:7}  FLAGS\n", "ID", "KEY", "ENABLED");
    for a in apps {
        out.push_str(&format!(
            "{:id_w$}  {:key_w$}  {:7}  {}\n",
            a.id,
            a.key,
            if a.enabled { "yes" } else { "no" },
            flags(a)
        ));
    }
    out
}

/// Runs an `apps` subcommand against the configured store.
pub async fn cli_apps(config: &Config, cmd: AppsCommand) -> Result<(), String> {
    if config.store.kind == StoreKind::Config {
        return match cmd {
            AppsCommand::List => {
                print!("{}", render_list(&config.apps));
                Ok(())
            }
            _ => Err(format!(
                "the store is `config`: apps come from the [[apps]] of the configuration file, which `herald apps` does not change. \
                 Edit the file and send SIGHUP to reload it, or keep apps in a database: set {SQL_STORE_HINT}"
            )),
        };
    }
    sql_apps(config, cmd).await
}

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
async fn sql_apps(config: &Config, _: AppsCommand) -> Result<(), String> {
    Err(format!(
        "store.kind is \"{}\" but this herald was built without SQL stores",
        config.store.kind
    ))
}

/// An `apps` subcommand against a SQL store.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn sql_apps(config: &Config, cmd: AppsCommand) -> Result<(), String> {
    let store = crate::store::sql::open_sql(config).await?;
    match cmd {
        AppsCommand::List => {
            let apps = store.list().await?;
            if apps.is_empty() {
                println!(
                    "no apps in the store yet: add one with `herald apps add --id ID`, or start the server, which adds the configuration's apps to an empty store"
                );
            } else {
                print!("{}", render_list(&apps));
            }
        }
        AppsCommand::Add(args) => {
            let app = args.to_app();
            store.insert(&app).await?;
            println!("added app '{}'", app.id);
            println!("  key:    {}", app.key);
            if args.secret.is_none() {
                println!("  secret: {}", app.secret);
                println!("  (the secret is shown only now; keep it safe)");
            }
            println!("  enabled: {}", if app.enabled { "yes" } else { "no" });
            println!(
                "a running server picks it up within {} ms",
                config.store.refresh_interval_ms
            );
        }
        AppsCommand::Disable { id } => {
            store.set_enabled(&id, false).await?;
            println!(
                "disabled app '{id}': new connections are refused (4003) within {} ms",
                config.store.refresh_interval_ms
            );
        }
        AppsCommand::Enable { id } => {
            store.set_enabled(&id, true).await?;
            println!(
                "enabled app '{id}' (a running server sees it within {} ms)",
                config.store.refresh_interval_ms
            );
        }
        AppsCommand::Remove { id } => {
            store.delete(&id).await?;
            println!(
                "removed app '{id}' (a running server forgets it within {} ms)",
                config.store.refresh_interval_ms
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_never_shows_secrets() {
        let mut a = App::default_app();
        a.secret = "topsecret".into();
        let out = render_list(&[a]);
        assert!(!out.contains("topsecret"), "{out}");
        assert!(
            out.contains("app-key") && out.contains("client-events"),
            "{out}"
        );
    }
}
