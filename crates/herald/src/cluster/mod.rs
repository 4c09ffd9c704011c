//! Engines that join nodes into one server, behind `herald_core`'s `Broker` and `Store`: what
//! the shell reads from the cluster (rosters, counts, online users, cached events) goes through
//! [`Store`], so no other module names a concrete engine.

#[cfg(feature = "redis")]
pub mod redis;

pub use herald_core::{Reading, Store};

use crate::config::{Adapter, Config};
use crate::sinks::metrics::Metrics;
use herald_core::{Cluster, Engine};
use std::sync::Arc;

/// The engine joined to the cluster the configuration names (`adapter`), started; and the
/// cluster's read side for the shell (`None` for a single node). `engine_with` builds the engine
/// around a cluster.
pub fn build(
    config: &Config,
    metrics: &Arc<Metrics>,
    engine_with: impl Fn(Cluster) -> Engine,
) -> Result<(Engine, Option<Arc<dyn Store>>), String> {
    let _ = metrics;
    match config.adapter {
        Adapter::Local => Ok((engine_with(Cluster::local()), None)),
        #[cfg(feature = "redis")]
        Adapter::Redis => {
            let (adapter, rx) =
                redis::RedisAdapter::new(&config.redis, config.cluster.on_outage, metrics.clone())?;
            let shared = Arc::new(adapter.clone());
            let engine = engine_with(Cluster::joined(shared.clone(), shared));
            adapter.start(engine.clone(), rx);
            Ok((engine, Some(Arc::new(adapter))))
        }
        #[cfg(not(feature = "redis"))]
        Adapter::Redis => {
            Err("adapter is \"redis\" but this herald was built without the `redis` feature".into())
        }
    }
}

/// The engine's settings fit together (nothing connects).
pub fn check(config: &Config) -> Result<(), String> {
    match config.adapter {
        Adapter::Local => Ok(()),
        #[cfg(feature = "redis")]
        Adapter::Redis => redis::link::Link::from_config(&config.redis).map(drop),
        // Without the feature the configuration refuses `adapter = "redis"` already.
        #[cfg(not(feature = "redis"))]
        Adapter::Redis => Ok(()),
    }
}
