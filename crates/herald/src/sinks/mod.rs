//! Who hears about the engine's state changes: webhooks, metrics and the debug console. Each is
//! a `LifecycleSink`; none is called from connection code.

pub mod console;
pub mod event;
pub mod metrics;
pub mod webhook;
