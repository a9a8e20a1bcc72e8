//! The aggregation plugin: for every topic matching `filter`, the count, minimum,
//! maximum and average of the numeric payloads published in each interval, published as
//! JSON to `topic_prefix` + topic (QoS 0, not retained) at the end of the interval.
//!
//! It subscribes internally on one home shard (the owner of its filter), so messages
//! published on every shard are counted once, there. Payloads that are not a number
//! (UTF-8 text parsing as a finite `f64`) are skipped and counted. At most
//! [`TOPICS_MAX`] topics are tracked per interval; further topics are skipped and
//! counted. Derived topics are not aggregated again (the default prefix starts with `$`,
//! which wildcard filters never match [MQTT-4.7.2-1]; any message already under the
//! prefix is ignored too).

use crate::config::AggregateConfig;
use bytes::Bytes;
use cutie_codec::{QoS, TopicFilter, TopicName};
use cutie_shard::owner_of;
use cutie_shard::plugin::{MessagePlugin, PluginFactory, PluginMessage};
use cutie_shard::ShardId;
use std::collections::BTreeMap;

/// Topics tracked per interval.
pub const TOPICS_MAX: usize = 10_000;

/// Builds one [`Aggregate`] per shard; only the home shard's subscribes.
#[derive(Debug)]
pub struct AggregateFactory {
    filter: TopicFilter,
    prefix: String,
    interval_ms: u64,
}

impl AggregateFactory {
    /// From a configuration entry; an invalid filter is an error naming it.
    pub fn new(config: &AggregateConfig) -> Result<AggregateFactory, String> {
        let filter = TopicFilter::new(config.filter.as_str())
            .map_err(|e| format!("plugins.aggregate.filter {:?}: {e}", config.filter))?;
        Ok(AggregateFactory {
            filter,
            prefix: config.topic_prefix.clone(),
            interval_ms: config.interval_secs.max(1) * 1000,
        })
    }
}

impl PluginFactory for AggregateFactory {
    fn build(&self, _shard: ShardId, _shards: u16) -> Box<dyn MessagePlugin> {
        Box::new(Aggregate {
            filter: self.filter.clone(),
            prefix: self.prefix.clone(),
            interval_ms: self.interval_ms,
            topics: BTreeMap::new(),
            next_emit_ms: None,
            skipped_non_numeric: 0,
            skipped_topics: 0,
        })
    }

    fn home(&self, shards: u16) -> ShardId {
        owner_of(self.filter.as_str(), shards)
    }
}

/// One interval's statistics of one topic.
#[derive(Debug, Clone, Copy)]
struct Stats {
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
}

/// One shard's instance (only the home shard's receives messages).
#[derive(Debug)]
pub struct Aggregate {
    filter: TopicFilter,
    prefix: String,
    interval_ms: u64,
    topics: BTreeMap<String, Stats>,
    next_emit_ms: Option<u64>,
    skipped_non_numeric: u64,
    skipped_topics: u64,
}

impl MessagePlugin for Aggregate {
    fn name(&self) -> &str {
        "aggregate"
    }

    fn subscriptions(&self) -> Vec<TopicFilter> {
        vec![self.filter.clone()]
    }

    fn on_message(&mut self, message: &PluginMessage, _now_ms: u64) {
        let topic = message.topic.as_str();
        if topic.starts_with(&self.prefix) {
            return;
        }
        let Some(value) = std::str::from_utf8(&message.payload)
            .ok()
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite())
        else {
            self.skipped_non_numeric += 1;
            return;
        };
        if !self.topics.contains_key(topic) && self.topics.len() >= TOPICS_MAX {
            self.skipped_topics += 1;
            return;
        }
        let stats = self.topics.entry(topic.to_owned()).or_insert(Stats {
            count: 0,
            min: value,
            max: value,
            sum: 0.0,
        });
        stats.count += 1;
        stats.min = stats.min.min(value);
        stats.max = stats.max.max(value);
        stats.sum += value;
    }

    fn on_tick(&mut self, now_ms: u64, derived: &mut Vec<PluginMessage>) {
        let due = *self.next_emit_ms.get_or_insert(now_ms + self.interval_ms);
        if now_ms < due {
            return;
        }
        self.next_emit_ms = Some(now_ms + self.interval_ms);
        let interval_secs = self.interval_ms / 1000;
        for (topic, stats) in std::mem::take(&mut self.topics) {
            let Ok(derived_topic) = TopicName::new(format!("{}{topic}", self.prefix)) else {
                continue;
            };
            let payload = format!(
                "{{\"count\":{},\"min\":{},\"max\":{},\"avg\":{},\"interval_secs\":{interval_secs}}}",
                stats.count,
                stats.min,
                stats.max,
                stats.sum / stats.count as f64
            );
            derived.push(PluginMessage {
                topic: derived_topic,
                payload: Bytes::from(payload),
                qos: QoS::AtMostOnce,
                retain: false,
            });
        }
        if self.skipped_non_numeric + self.skipped_topics > 0 {
            tracing::debug!(
                filter = %self.filter,
                non_numeric = self.skipped_non_numeric,
                topics_over_limit = self.skipped_topics,
                "aggregate: payloads skipped"
            );
            self.skipped_non_numeric = 0;
            self.skipped_topics = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn message(topic: &str, payload: &str) -> PluginMessage {
        PluginMessage {
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos: QoS::AtMostOnce,
            retain: false,
        }
    }

    fn plugin() -> Box<dyn MessagePlugin> {
        AggregateFactory::new(&AggregateConfig {
            filter: "s/+/t".to_owned(),
            interval_secs: 1,
            topic_prefix: "$aggregate/".to_owned(),
        })
        .unwrap()
        .build(ShardId(0), 1)
    }

    #[test]
    fn numbers_are_aggregated_per_topic_and_published_once_per_interval() {
        let mut p = plugin();
        let mut out = Vec::new();
        p.on_tick(0, &mut out);
        for (topic, value) in [
            ("s/a/t", "1"),
            ("s/a/t", " 3.5 "),
            ("s/b/t", "-2"),
            ("s/a/t", "x"),
        ] {
            p.on_message(&message(topic, value), 10);
        }
        p.on_tick(500, &mut out);
        assert!(out.is_empty(), "nothing before the interval ends");
        p.on_tick(1000, &mut out);
        let got: Vec<(String, String)> = out
            .iter()
            .map(|m| {
                (
                    m.topic.to_string(),
                    String::from_utf8_lossy(&m.payload).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "$aggregate/s/a/t".to_owned(),
                    r#"{"count":2,"min":1,"max":3.5,"avg":2.25,"interval_secs":1}"#.to_owned()
                ),
                (
                    "$aggregate/s/b/t".to_owned(),
                    r#"{"count":1,"min":-2,"max":-2,"avg":-2,"interval_secs":1}"#.to_owned()
                ),
            ]
        );
        out.clear();
        p.on_tick(2000, &mut out);
        assert!(
            out.is_empty(),
            "an interval without messages publishes nothing"
        );
    }

    #[test]
    fn derived_topics_and_non_finite_values_are_ignored() {
        let mut p = plugin();
        let mut out = Vec::new();
        p.on_tick(0, &mut out);
        p.on_message(&message("$aggregate/s/a/t", "5"), 1);
        p.on_message(&message("s/a/t", "NaN"), 1);
        p.on_message(&message("s/a/t", "inf"), 1);
        p.on_tick(1000, &mut out);
        assert!(out.is_empty());
    }
}
