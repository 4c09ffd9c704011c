//! The built-in debug console at `/console` (off unless `console.token` is set).

use crate::server::Shared;
use axum::Router;
use herald_core::{LifecycleEvent, LifecycleSink};
use std::sync::Arc;

/// Receives lifecycle events for attached console viewers.
#[derive(Debug, Default)]
pub struct Console {}

impl Console {
    pub fn new() -> Self {
        Self {}
    }
}

impl LifecycleSink for Console {
    fn emit(&self, _event: &LifecycleEvent) {}
}

/// Routes under `/console`.
pub fn router() -> Router<Arc<Shared>> {
    Router::new()
}
