//! App stores: where the engine's `AppStore` gets its apps.
//!
//! `config`: the `[[apps]]` of the configuration file, replaced on SIGHUP.
//! `sqlite` / `postgres`: a SQL table, cached in memory and refreshed in the background, so apps
//! can be added, disabled and changed without restarting Herald.

use crate::config::Config;
use herald_core::{AppStore, StaticAppStore};
use std::sync::Arc;

/// The opened store, with what reload and the CLI need.
#[derive(Clone)]
pub struct OpenedStore {
    pub store: Arc<dyn AppStore>,
    /// Set for the `config` kind: the store that a reload replaces.
    pub reloadable: Option<Arc<StaticAppStore>>,
}

impl std::fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedStore").finish_non_exhaustive()
    }
}

/// Opens the store the configuration names.
pub async fn open(config: &Config) -> Result<OpenedStore, String> {
    match config.store.kind.as_str() {
        "config" => {
            let s = Arc::new(StaticAppStore::new(config.apps.clone())?);
            Ok(OpenedStore { store: s.clone(), reloadable: Some(s) })
        }
        other => Err(format!("store kind `{other}` is not available in this build")),
    }
}

/// `herald apps …` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AppsCommand {
    /// List the apps of the configured store (secrets redacted).
    List,
}

/// Runs an `apps` subcommand against the configured store.
pub async fn cli_apps(config: &Config, cmd: AppsCommand) -> Result<(), String> {
    match cmd {
        AppsCommand::List => {
            let opened = open(config).await?;
            for app in opened.store.all() {
                println!(
                    "{}\tkey={}\tenabled={}\tclient_events={}",
                    app.id, app.key, app.enabled, app.enable_client_messages
                );
            }
            Ok(())
        }
    }
}
