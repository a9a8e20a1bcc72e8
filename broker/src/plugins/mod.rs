//! Message plugins shipped with the broker, built from `[plugins]` in the configuration
//! (the plugin interface and its contract: [`cutie_shard::plugin`]).
//!
//! - [`aggregate`]: rolling count/min/max/average of numeric payloads on a filter,
//!   republished every `interval_secs` to a derived topic.

pub mod aggregate;

use crate::config::PluginsConfig;
use cutie_shard::plugin::PluginFactory;
use std::sync::Arc;

/// The plugin factories the configuration asks for.
pub fn factories(config: &PluginsConfig) -> Result<Vec<Arc<dyn PluginFactory>>, String> {
    config
        .aggregate
        .iter()
        .map(|a| aggregate::AggregateFactory::new(a).map(|f| Arc::new(f) as Arc<dyn PluginFactory>))
        .collect()
}
