//! Subcommands besides `serve`: signed API calls against a running server and app management.

pub mod api;
pub mod apps;
