//! The `$SYS/broker/...` topics, every `sys_interval_secs` (0: never), with Mosquitto's
//! names where the meaning is the same.
//!
//! A thread of its own adds up the shards' latest snapshots and hands the messages to
//! shard 0 over its control channel; its tick loop publishes them through
//! `ShardCore::publish_internal`: retained, QoS 0, routed like any publish (every shard
//! keeps the retained replica, subscribers anywhere get them), not written to the
//! write-ahead log. The first publication is one second after the start.
//!
//! Published: `version`, `uptime`, `clients/connected`, `clients/disconnected`,
//! `clients/total`, `clients/maximum`, `subscriptions/count`, `retained messages/count`,
//! `publish/messages/received`, `publish/messages/sent`, `publish/messages/dropped`,
//! `publish/bytes/received`, `publish/bytes/sent`, `bytes/received`, `bytes/sent`.
//! Mosquitto's `messages/received` and `messages/sent` count packets of every type,
//! which cutie does not count, so they are not published; `publish/messages/*` are.

use bytes::Bytes;
use cutie_codec::{QoS, TopicName};
use cutie_shard::{Control, Message, Monitor, ShardStats};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Broker-wide figures, added up over the shards' snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Clients connected now.
    pub connected: u64,
    /// Persistent sessions without a connection.
    pub disconnected: u64,
    /// Subscriptions.
    pub subscriptions: u64,
    /// Retained messages.
    pub retained: u64,
    /// Every shard's counters added up.
    pub stats: ShardStats,
}

impl Totals {
    /// Adds up the shards' latest snapshots.
    pub fn read(monitor: &Monitor) -> Totals {
        let mut totals = Totals::default();
        for health in monitor.shards() {
            let snapshot = health
                .snapshot
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let s = &snapshot.stats;
            totals.connected += s.connections_current;
            totals.disconnected += snapshot.sessions_offline();
            totals.subscriptions += snapshot.subscriptions;
            // Every shard holds the whole store.
            totals.retained = totals.retained.max(snapshot.retained);
            let t = &mut totals.stats;
            for q in 0..3 {
                t.publish_received_total[q] += s.publish_received_total[q];
                t.publish_sent_total[q] += s.publish_sent_total[q];
            }
            t.publish_received_bytes_total += s.publish_received_bytes_total;
            t.publish_sent_bytes_total += s.publish_sent_bytes_total;
            t.network_received_bytes_total += s.network_received_bytes_total;
            t.network_sent_bytes_total += s.network_sent_bytes_total;
            t.dropped_queue_full_total += s.dropped_queue_full_total;
            t.dropped_outbound_full_total += s.dropped_outbound_full_total;
        }
        totals
    }
}

/// The `$SYS` topics and their payloads for `totals`.
pub fn topics(totals: &Totals, uptime: Duration, clients_maximum: u64) -> Vec<(String, String)> {
    let s = &totals.stats;
    let pairs: Vec<(&str, String)> = vec![
        ("version", format!("cutie {}", env!("CARGO_PKG_VERSION"))),
        ("uptime", format!("{} seconds", uptime.as_secs())),
        ("clients/connected", totals.connected.to_string()),
        ("clients/disconnected", totals.disconnected.to_string()),
        (
            "clients/total",
            (totals.connected + totals.disconnected).to_string(),
        ),
        ("clients/maximum", clients_maximum.to_string()),
        ("subscriptions/count", totals.subscriptions.to_string()),
        ("retained messages/count", totals.retained.to_string()),
        (
            "publish/messages/received",
            s.publish_received_total.iter().sum::<u64>().to_string(),
        ),
        (
            "publish/messages/sent",
            s.publish_sent_total.iter().sum::<u64>().to_string(),
        ),
        (
            "publish/messages/dropped",
            (s.dropped_queue_full_total + s.dropped_outbound_full_total).to_string(),
        ),
        (
            "publish/bytes/received",
            s.publish_received_bytes_total.to_string(),
        ),
        ("publish/bytes/sent", s.publish_sent_bytes_total.to_string()),
        ("bytes/received", s.network_received_bytes_total.to_string()),
        ("bytes/sent", s.network_sent_bytes_total.to_string()),
    ];
    pairs
        .into_iter()
        .map(|(name, value)| (format!("$SYS/broker/{name}"), value))
        .collect()
}

/// The publisher thread; stops when `stop` is set (checked every 100 ms).
pub fn spawn(
    monitor: Monitor,
    interval: Duration,
    started: Instant,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cutie-sys".to_owned())
        .spawn(move || {
            let mut next = started + interval.min(Duration::from_secs(1));
            let mut clients_maximum = 0;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(100)));
                    continue;
                }
                next = now + interval;
                let totals = Totals::read(&monitor);
                clients_maximum = clients_maximum.max(totals.connected);
                let messages: Vec<Message> = topics(&totals, started.elapsed(), clients_maximum)
                    .into_iter()
                    .filter_map(|(topic, payload)| {
                        Some(Message {
                            topic: TopicName::new(topic).ok()?,
                            payload: Bytes::from(payload),
                            qos: QoS::AtMostOnce,
                            retain: true,
                            received_at: None,
                        })
                    })
                    .collect();
                if !monitor.send(0, Control::Publish(messages)) {
                    tracing::debug!("shard 0 is busy: $SYS topics skipped this interval");
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_use_mosquitto_names_and_totals() {
        let mut totals = Totals {
            connected: 3,
            disconnected: 2,
            subscriptions: 7,
            retained: 4,
            ..Totals::default()
        };
        totals.stats.publish_received_total = [1, 2, 3];
        totals.stats.network_sent_bytes_total = 99;
        let topics = topics(&totals, Duration::from_secs(42), 5);
        let get = |name: &str| {
            topics
                .iter()
                .find(|(topic, _)| topic == name)
                .map(|(_, value)| value.as_str())
        };
        assert_eq!(get("$SYS/broker/uptime"), Some("42 seconds"));
        assert_eq!(get("$SYS/broker/clients/connected"), Some("3"));
        assert_eq!(get("$SYS/broker/clients/total"), Some("5"));
        assert_eq!(get("$SYS/broker/clients/maximum"), Some("5"));
        assert_eq!(get("$SYS/broker/subscriptions/count"), Some("7"));
        assert_eq!(get("$SYS/broker/retained messages/count"), Some("4"));
        assert_eq!(get("$SYS/broker/publish/messages/received"), Some("6"));
        assert_eq!(get("$SYS/broker/bytes/sent"), Some("99"));
        for (topic, _) in &topics {
            assert!(TopicName::new(topic.as_str()).is_ok(), "{topic}");
        }
    }
}
