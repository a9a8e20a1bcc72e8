//! `/metrics`: the shards' snapshots as Prometheus text.
//!
//! Counters and gauges go through the `metrics` recorder (metrics-exporter-prometheus,
//! installed once by `main`): at each scrape every shard's latest snapshot is copied and
//! each value set with `absolute` (counters) or `set` (gauges), labelled `shard`. The
//! shards themselves never touch the recorder: they bump plain integers.
//!
//! The latency histograms are real Prometheus histograms with the explicit buckets
//! [`LATENCY_BUCKETS_US`], but they are not fed through the recorder: its histograms
//! keep every sample until the next render (`record_many` pushes a sample `count`
//! times), which at a million deliveries a second would be millions of samples per
//! scrape. Instead each scrape takes the shards' hdrhistogram deltas (samples recorded
//! since the last scrape), adds each recorded value's count to the bucket it falls in,
//! and renders `_bucket`, `_sum` and `_count` after the recorder's output: the cost is
//! per distinct value (a few thousand at most), not per sample.

use crate::admin::ShardView;
use cutie_shard::access::AccessControl;
use cutie_shard::stats::latency_histogram;
use hdrhistogram::Histogram;
use metrics::Label;
use std::fmt::Write as _;

/// Upper bounds of the latency histograms' buckets, in µs (`+Inf` follows).
pub const LATENCY_BUCKETS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// [`LATENCY_BUCKETS_US`] in seconds, for the recorder's own histograms (none today;
/// any later `histogram!` becomes a real histogram with these buckets).
pub fn latency_buckets_seconds() -> Vec<f64> {
    LATENCY_BUCKETS_US
        .iter()
        .map(|us| *us as f64 / 1e6)
        .collect()
}

/// One Prometheus histogram, accumulated from hdrhistogram deltas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Buckets {
    /// Samples per bucket (not cumulative); the last one is `+Inf`.
    pub counts: [u64; LATENCY_BUCKETS_US.len() + 1],
    /// Sum of the samples, µs.
    pub sum_us: u64,
    /// Number of samples.
    pub count: u64,
}

impl Buckets {
    /// Adds every sample of `delta` (values in µs).
    pub fn add(&mut self, delta: &Histogram<u64>) {
        for recorded in delta.iter_recorded() {
            let value = delta.median_equivalent(recorded.value_iterated_to());
            let n = recorded.count_at_value();
            let bucket = LATENCY_BUCKETS_US
                .iter()
                .position(|bound| value <= *bound)
                .unwrap_or(LATENCY_BUCKETS_US.len());
            self.counts[bucket] += n;
            self.sum_us = self.sum_us.saturating_add(value.saturating_mul(n));
            self.count += n;
        }
    }

    /// Cumulative counts, as Prometheus buckets are (`le` = each bound, then `+Inf`).
    pub fn cumulative(&self) -> Vec<u64> {
        self.counts
            .iter()
            .scan(0u64, |total, n| {
                *total += n;
                Some(*total)
            })
            .collect()
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines for `shard`.
    fn render(&self, out: &mut String, name: &str, shard: usize) {
        let cumulative = self.cumulative();
        for (bound, count) in LATENCY_BUCKETS_US.iter().zip(&cumulative) {
            let _ = writeln!(
                out,
                "{name}_bucket{{shard=\"{shard}\",le=\"{}\"}} {count}",
                *bound as f64 / 1e6
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(
            out,
            "{name}_sum{{shard=\"{shard}\"}} {}",
            self.sum_us as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {}", self.count);
    }
}

/// A latency histogram: per shard (for `/metrics`), and merged over the shards (for the
/// dashboard's quantiles), since start and over the latest collection.
#[derive(Debug)]
pub struct Latency {
    /// Per shard, since start.
    pub shards: Vec<Buckets>,
    /// Every shard, since start.
    pub total: Histogram<u64>,
    /// Every shard, the samples the latest collection took.
    pub recent: Histogram<u64>,
}

impl Latency {
    fn new(shards: usize) -> Latency {
        Latency {
            shards: vec![Buckets::default(); shards],
            total: latency_histogram(),
            recent: latency_histogram(),
        }
    }

    /// Adds shard `shard`'s delta.
    pub fn add(&mut self, shard: usize, delta: &Histogram<u64>) {
        if let Some(buckets) = self.shards.get_mut(shard) {
            buckets.add(delta);
        }
        // Same bounds everywhere: adding cannot fail.
        let _ = self.total.add(delta);
        let _ = self.recent.add(delta);
    }

    /// All shards' buckets added up.
    pub fn merged(&self) -> Buckets {
        let mut merged = Buckets::default();
        for shard in &self.shards {
            for (total, n) in merged.counts.iter_mut().zip(shard.counts) {
                *total += n;
            }
            merged.sum_us = merged.sum_us.saturating_add(shard.sum_us);
            merged.count += shard.count;
        }
        merged
    }
}

/// What the admin side accumulates between scrapes.
#[derive(Debug)]
pub struct Collected {
    /// Publish received -> delivery written to the subscriber's socket.
    pub delivery: Latency,
    /// Write-ahead log batch commit (append, write, `fdatasync`).
    pub wal_commit: Latency,
}

impl Collected {
    /// Empty histograms for `shards` shards.
    pub fn new(shards: usize) -> Collected {
        Collected {
            delivery: Latency::new(shards),
            wal_commit: Latency::new(shards),
        }
    }

    /// Starts a collection: what the previous one took is no longer recent.
    pub fn begin(&mut self) {
        self.delivery.recent.reset();
        self.wal_commit.recent.reset();
    }
}

/// Name of the delivery latency histogram.
pub const DELIVERY_LATENCY: &str = "cutie_delivery_latency_seconds";
/// Name of the commit latency histogram.
pub const WAL_COMMIT_LATENCY: &str = "cutie_wal_commit_seconds";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One exported time series per shard.
struct Series {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    /// Labels besides `shard`.
    labels: &'static [(&'static str, &'static str)],
    value: fn(&ShardView) -> u64,
}

const fn counter(
    name: &'static str,
    help: &'static str,
    labels: &'static [(&'static str, &'static str)],
    value: fn(&ShardView) -> u64,
) -> Series {
    Series {
        name,
        help,
        kind: Kind::Counter,
        labels,
        value,
    }
}

const fn gauge(name: &'static str, help: &'static str, value: fn(&ShardView) -> u64) -> Series {
    Series {
        name,
        help,
        kind: Kind::Gauge,
        labels: &[],
        value,
    }
}

const PUBLISH_RECEIVED: &str = "PUBLISH packets received from clients, by QoS.";
const PUBLISH_SENT: &str =
    "PUBLISH packets sent to clients (first sends; re-sends not counted), by QoS.";
const DROPPED: &str = "Deliveries dropped, by reason: queue_full (session queue at \
    max_queued_messages), outbound_buffer_full (QoS 0 over outbound_buffer_bytes_max), \
    offline (QoS 0 to an offline session), no_subscribers (published, matched nothing).";

/// Every per-shard series, in output order.
const SERIES: &[Series] = &[
    gauge(
        "cutie_connections_current",
        "Client connections attached to a session now.",
        |v| v.stats.connections_current,
    ),
    counter(
        "cutie_connections_accepted_total",
        "Connections accepted (CONNACK 0).",
        &[],
        |v| v.stats.connections_total,
    ),
    counter(
        "cutie_connections_refused_total",
        "Connections refused: a non-zero CONNACK, or over max_connections.",
        &[],
        |v| v.stats.connections_refused_total,
    ),
    gauge(
        "cutie_sessions_online",
        "Sessions with a connection attached.",
        |v| v.stats.connections_current,
    ),
    gauge(
        "cutie_sessions_offline",
        "Persistent sessions without a connection.",
        |v| {
            v.stats
                .sessions_current
                .saturating_sub(v.stats.connections_current)
        },
    ),
    gauge(
        "cutie_subscriptions_current",
        "Subscriptions (filter, session) held by the shard.",
        |v| v.subscriptions,
    ),
    gauge(
        "cutie_retained_messages",
        "Retained messages (every shard holds a replica of the whole store).",
        |v| v.retained,
    ),
    counter(
        "cutie_publish_received_total",
        PUBLISH_RECEIVED,
        &[("qos", "0")],
        |v| v.stats.publish_received_total[0],
    ),
    counter(
        "cutie_publish_received_total",
        PUBLISH_RECEIVED,
        &[("qos", "1")],
        |v| v.stats.publish_received_total[1],
    ),
    counter(
        "cutie_publish_received_total",
        PUBLISH_RECEIVED,
        &[("qos", "2")],
        |v| v.stats.publish_received_total[2],
    ),
    counter(
        "cutie_publish_sent_total",
        PUBLISH_SENT,
        &[("qos", "0")],
        |v| v.stats.publish_sent_total[0],
    ),
    counter(
        "cutie_publish_sent_total",
        PUBLISH_SENT,
        &[("qos", "1")],
        |v| v.stats.publish_sent_total[1],
    ),
    counter(
        "cutie_publish_sent_total",
        PUBLISH_SENT,
        &[("qos", "2")],
        |v| v.stats.publish_sent_total[2],
    ),
    counter(
        "cutie_publish_received_bytes_total",
        "Payload bytes of PUBLISH packets received from clients.",
        &[],
        |v| v.stats.publish_received_bytes_total,
    ),
    counter(
        "cutie_publish_sent_bytes_total",
        "Payload bytes of PUBLISH packets sent to clients.",
        &[],
        |v| v.stats.publish_sent_bytes_total,
    ),
    counter(
        "cutie_network_received_bytes_total",
        "Bytes read from client sockets.",
        &[],
        |v| v.stats.network_received_bytes_total,
    ),
    counter(
        "cutie_network_sent_bytes_total",
        "Bytes written to client sockets.",
        &[],
        |v| v.stats.network_sent_bytes_total,
    ),
    counter(
        "cutie_publish_dropped_total",
        DROPPED,
        &[("reason", "queue_full")],
        |v| v.stats.dropped_queue_full_total,
    ),
    counter(
        "cutie_publish_dropped_total",
        DROPPED,
        &[("reason", "outbound_buffer_full")],
        |v| v.stats.dropped_outbound_full_total,
    ),
    counter(
        "cutie_publish_dropped_total",
        DROPPED,
        &[("reason", "offline")],
        |v| v.stats.dropped_offline_total,
    ),
    counter(
        "cutie_publish_dropped_total",
        DROPPED,
        &[("reason", "no_subscribers")],
        |v| v.stats.dropped_no_subscribers_total,
    ),
    counter(
        "cutie_publish_refused_log_failed_total",
        "QoS 1/2 publishes refused (connection closed unacknowledged) while the write-ahead log was failed.",
        &[],
        |v| v.stats.publish_refused_log_failed_total,
    ),
    counter(
        "cutie_publish_paced_total",
        "Times a publisher (or a mesh channel) was paced to a slow but live subscriber.",
        &[],
        |v| v.stats.paced_total,
    ),
    counter(
        "cutie_protocol_errors_total",
        "Connections closed for a malformed packet or a protocol violation.",
        &[],
        |v| v.stats.protocol_errors_total,
    ),
    counter(
        "cutie_packets_too_large_total",
        "Connections closed for a packet over max_packet_size (also in cutie_protocol_errors_total).",
        &[],
        |v| v.stats.packets_too_large_total,
    ),
    counter(
        "cutie_keep_alive_expired_total",
        "Connections closed because their keep-alive expired.",
        &[],
        |v| v.stats.keep_alive_expired_total,
    ),
    counter(
        "cutie_session_takeovers_total",
        "Connections taken over by a new connection with the same client id.",
        &[],
        |v| v.stats.takeovers_total,
    ),
    counter(
        "cutie_wills_published_total",
        "Will messages published.",
        &[],
        |v| v.stats.wills_published_total,
    ),
    counter(
        "cutie_unknown_packet_id_total",
        "Acknowledgements for packet ids the session does not know.",
        &[],
        |v| v.stats.unknown_packet_id_total,
    ),
    counter(
        "cutie_restore_skipped_total",
        "Recovered entries skipped because this build cannot use them.",
        &[],
        |v| v.stats.restore_skipped_total,
    ),
    counter(
        "cutie_mesh_forwarded_total",
        "Messages forwarded to another shard (one per destination shard).",
        &[],
        |v| v.stats.forwarded_total,
    ),
    counter(
        "cutie_mesh_received_total",
        "Messages received from other shards.",
        &[],
        |v| v.stats.mesh_received_total,
    ),
    counter(
        "cutie_mesh_forward_duplicates_total",
        "QoS 2 messages forwarded here again after a restart and not delivered twice.",
        &[],
        |v| v.stats.forward_duplicates_total,
    ),
    counter(
        "cutie_auth_failures_total",
        "CONNECTs refused for bad or missing credentials.",
        &[],
        |v| v.stats.auth_failures_total,
    ),
    counter(
        "cutie_auth_checks_refused_total",
        "CONNECTs refused with CONNACK 3 because the shard's password-check queue was full.",
        &[],
        |v| v.stats.auth_checks_refused_total,
    ),
    counter(
        "cutie_publish_denied_total",
        "PUBLISHes (and wills) dropped because the ACL or the topic depth limit denies them.",
        &[],
        |v| v.stats.publish_denied_total,
    ),
    counter(
        "cutie_subscribe_denied_total",
        "Subscriptions refused (SUBACK 0x80) by the ACL or a limit.",
        &[],
        |v| v.stats.subscribe_denied_total,
    ),
    counter(
        "cutie_connections_banned_total",
        "Connections refused because their address is banned.",
        &[],
        |v| v.stats.connections_refused_banned_total,
    ),
    counter(
        "cutie_connections_address_limited_total",
        "Connections refused over max_connections_per_address.",
        &[],
        |v| v.stats.connections_refused_address_limit_total,
    ),
    counter(
        "cutie_retained_refused_total",
        "Retained publishes not stored for max_retained_messages or max_retained_bytes (still delivered).",
        &[],
        |v| v.stats.retained_refused_total,
    ),
    counter(
        "cutie_sessions_expired_total",
        "Persistent sessions removed for persistent_client_expiration.",
        &[],
        |v| v.stats.sessions_expired_total,
    ),
    counter(
        "cutie_mesh_barriers_failed_total",
        "Publishes not acknowledged because a shard they went to could not log them.",
        &[],
        |v| v.stats.barriers_failed_total,
    ),
    counter(
        "cutie_wal_paced_total",
        "Times input waited for the log writer to take the records produced.",
        &[],
        |v| v.stats.log_paced_total,
    ),
    counter(
        "cutie_deliveries_denied_total",
        "Messages withheld from a subscriber the ACL does not let read their topic.",
        &[],
        |v| v.stats.deliveries_denied_total,
    ),
    counter(
        "cutie_input_paused_total",
        "Times reading a connection paused because its output backlog was over its bounds (a client that does not read).",
        &[],
        |v| v.stats.input_paused_total,
    ),
    counter(
        "cutie_connections_protocol_level_refused_total",
        "CONNECTs refused with CONNACK 1 for an unsupported protocol level (not a ban strike).",
        &[],
        |v| v.stats.connections_refused_protocol_level_total,
    ),
    counter(
        "cutie_tls_handshakes_total",
        "TLS handshakes completed.",
        &[],
        |v| v.stats.tls_handshakes_total,
    ),
    counter(
        "cutie_tls_handshake_failures_total",
        "TLS handshakes that failed.",
        &[],
        |v| v.stats.tls_handshake_failures_total,
    ),
    counter(
        "cutie_tls_connection_errors_total",
        "TLS connections that ended with an error after the handshake.",
        &[],
        |v| v.stats.tls_connection_errors_total,
    ),
    counter(
        "cutie_tls_received_bytes_total",
        "Bytes read from TLS sockets (encrypted).",
        &[],
        |v| v.stats.tls_received_bytes_total,
    ),
    counter(
        "cutie_tls_sent_bytes_total",
        "Bytes written to TLS sockets (encrypted).",
        &[],
        |v| v.stats.tls_sent_bytes_total,
    ),
    counter(
        "cutie_wal_records_total",
        "Write-ahead log records appended.",
        &[],
        |v| v.stats.wal_records_total,
    ),
    counter(
        "cutie_wal_writes_total",
        "Write-ahead log batches written.",
        &[],
        |v| v.stats.wal_writes_total,
    ),
    counter(
        "cutie_wal_syncs_total",
        "Write-ahead log fdatasyncs (one per batch with durability sync).",
        &[],
        |v| v.stats.wal_syncs_total,
    ),
    counter(
        "cutie_wal_compactions_total",
        "Write-ahead log compactions (snapshots written).",
        &[],
        |v| v.stats.wal_compactions_total,
    ),
    counter(
        "cutie_wal_failures_total",
        "Write-ahead log write or sync failures.",
        &[],
        |v| v.stats.wal_failures_total,
    ),
    gauge(
        "cutie_wal_segment_bytes",
        "Bytes of write-ahead log segments since the last snapshot.",
        |v| v.stats.wal_segment_bytes,
    ),
    gauge(
        "cutie_wal_healthy",
        "1 while the shard's write-ahead log takes records, 0 while it is failed.",
        |v| u64::from(!v.state.log_failed),
    ),
    gauge(
        "cutie_shard_ready",
        "1 while the shard serves clients (recovered, listening).",
        |v| u64::from(v.state.ready),
    ),
];

/// A gauge in seconds: name, help, value.
type SecondsGauge = (&'static str, &'static str, fn(&ShardView) -> f64);

/// Gauges in seconds, from values kept in ms or µs.
const SECONDS: &[SecondsGauge] = &[
    (
        "cutie_wal_recovery_seconds",
        "How long recovering the shard's write-ahead log took at start.",
        |v| v.stats.wal_recovery_ms as f64 / 1e3,
    ),
    (
        "cutie_wal_compaction_seconds_max",
        "The longest write-ahead log compaction (a snapshot written beside the commits).",
        |v| v.stats.wal_compaction_ms_max as f64 / 1e3,
    ),
    (
        "cutie_wal_commit_seconds_max",
        "The longest write-ahead log batch commit.",
        |v| v.stats.wal_commit_us_max as f64 / 1e6,
    ),
    (
        "cutie_shard_tick_age_seconds",
        "Time since the shard's latest tick (it ticks every 100 ms; liveness).",
        |v| v.state.tick_age_ms.unwrap_or(0) as f64 / 1e3,
    ),
];

/// Sets every series of every shard in the current recorder (the installed one, or a
/// local one in tests), and the broker-wide ones.
pub fn update(views: &[ShardView], uptime_secs: f64) {
    let mut described: Vec<&str> = Vec::new();
    for series in SERIES {
        if !described.contains(&series.name) {
            described.push(series.name);
            match series.kind {
                Kind::Counter => metrics::describe_counter!(series.name, series.help),
                Kind::Gauge => metrics::describe_gauge!(series.name, series.help),
            }
        }
    }
    for (name, help, _) in SECONDS {
        metrics::describe_gauge!(*name, metrics::Unit::Seconds, *help);
    }
    metrics::describe_gauge!("cutie_build_info", "Always 1; the version in a label.");
    metrics::describe_gauge!(
        "cutie_uptime_seconds",
        metrics::Unit::Seconds,
        "Time since the broker started."
    );
    metrics::describe_gauge!("cutie_shards", "Shards (executor threads).");

    for view in views {
        let shard = view.index.to_string();
        for series in SERIES {
            let mut labels = vec![Label::new("shard", shard.clone())];
            labels.extend(
                series
                    .labels
                    .iter()
                    .map(|(key, value)| Label::from_static_parts(key, value)),
            );
            let value = (series.value)(view);
            match series.kind {
                Kind::Counter => metrics::counter!(series.name, labels).absolute(value),
                Kind::Gauge => metrics::gauge!(series.name, labels).set(value as f64),
            }
        }
        for (name, _, value) in SECONDS {
            metrics::gauge!(*name, "shard" => shard.clone()).set(value(view));
        }
    }
    metrics::gauge!("cutie_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!("cutie_uptime_seconds").set(uptime_secs);
    metrics::gauge!("cutie_shards").set(views.len() as f64);
}

/// Sets the broker-wide access series: the ban table's size (bounded by
/// `cutie_shard::access::ADDRESSES_MAX` plus bans in force and addresses with a
/// connection open) and the bans made since start. One lock of the table per scrape.
pub fn update_access(access: &AccessControl) {
    metrics::describe_gauge!(
        "cutie_ban_table_addresses",
        "Client addresses the ban table holds (failing, banned or connected)."
    );
    metrics::describe_counter!(
        "cutie_bans_total",
        "Client addresses banned for failing too often."
    );
    metrics::gauge!("cutie_ban_table_addresses").set(access.bans.len() as f64);
    metrics::counter!("cutie_bans_total").absolute(
        access
            .bans
            .bans_total
            .load(std::sync::atomic::Ordering::Relaxed),
    );
}

/// Appends the latency histograms in Prometheus text format.
pub fn render_histograms(out: &mut String, collected: &Collected) {
    for (name, help, latency) in [
        (
            DELIVERY_LATENCY,
            "Publish received (read from the publisher's socket) to delivery written to \
             the subscriber's socket, for subscribers online when the message was routed; \
             by the subscriber's shard.",
            &collected.delivery,
        ),
        (
            WAL_COMMIT_LATENCY,
            "Write-ahead log batch commit: append, write and fdatasync of one batch.",
            &collected.wal_commit,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (shard, buckets) in latency.shards.iter().enumerate() {
            buckets.render(out, name, shard);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn samples_land_in_the_bucket_of_their_bound() {
        let mut delta = latency_histogram();
        delta.record(50).unwrap(); // <= 50 µs
        delta.record(51).unwrap(); // <= 100 µs
        delta.record_n(900, 3).unwrap(); // <= 1 ms
        delta.record(20_000_000).unwrap(); // +Inf
        let mut buckets = Buckets::default();
        buckets.add(&delta);
        assert_eq!(buckets.count, 6);
        assert_eq!(buckets.counts[0], 1);
        assert_eq!(buckets.counts[1], 1);
        assert_eq!(buckets.counts[4], 3);
        assert_eq!(buckets.counts[LATENCY_BUCKETS_US.len()], 1);
        let cumulative = buckets.cumulative();
        assert_eq!(cumulative[4], 5);
        assert_eq!(*cumulative.last().unwrap(), 6);
        // 1 % resolution: the sum is close to the samples' sum.
        let exact = 50 + 51 + 3 * 900 + 20_000_000;
        assert!((buckets.sum_us as f64 - exact as f64).abs() / (exact as f64) < 0.01);
    }

    #[test]
    fn histograms_render_as_prometheus_histograms() {
        let mut collected = Collected::new(2);
        let mut delta = latency_histogram();
        delta.record_n(200, 4).unwrap();
        collected.delivery.add(1, &delta);
        let mut out = String::new();
        render_histograms(&mut out, &collected);
        assert!(out.contains("# TYPE cutie_delivery_latency_seconds histogram"));
        assert!(out.contains("cutie_delivery_latency_seconds_bucket{shard=\"1\",le=\"0.0001\"} 0"));
        assert!(out.contains("cutie_delivery_latency_seconds_bucket{shard=\"1\",le=\"0.00025\"} 4"));
        assert!(out.contains("cutie_delivery_latency_seconds_bucket{shard=\"1\",le=\"+Inf\"} 4"));
        assert!(out.contains("cutie_delivery_latency_seconds_count{shard=\"1\"} 4"));
        assert!(out.contains("cutie_delivery_latency_seconds_count{shard=\"0\"} 0"));
        assert!(out.contains("cutie_wal_commit_seconds_count{shard=\"0\"} 0"));
        assert_eq!(collected.delivery.merged().count, 4);
        assert_eq!(collected.delivery.recent.len(), 4);
        collected.begin();
        assert_eq!(collected.delivery.recent.len(), 0);
        assert_eq!(collected.delivery.total.len(), 4);
    }

    #[test]
    fn counters_and_gauges_go_through_the_recorder() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let mut view = ShardView {
            index: 3,
            ..ShardView::default()
        };
        view.stats.publish_received_total = [7, 8, 9];
        view.stats.dropped_queue_full_total = 2;
        view.stats.connections_current = 4;
        view.stats.sessions_current = 6;
        view.state.ready = true;
        metrics::with_local_recorder(&recorder, || update(&[view], 12.0));
        let text = handle.render();
        assert!(
            text.contains("cutie_publish_received_total{shard=\"3\",qos=\"1\"} 8"),
            "{text}"
        );
        assert!(text.contains("cutie_publish_dropped_total{shard=\"3\",reason=\"queue_full\"} 2"));
        assert!(text.contains("cutie_sessions_offline{shard=\"3\"} 2"));
        assert!(text.contains("cutie_shard_ready{shard=\"3\"} 1"));
        assert!(text.contains("# TYPE cutie_publish_received_total counter"));
        assert!(text.contains("cutie_uptime_seconds 12"));
    }
}
