//! Per-shard counters and what a shard shares with the admin side.
//!
//! - [`ShardStats`]: plain integers bumped on the hot path (no atomics, no lookups).
//! - Latency histograms ([`latency_histogram`]): hdrhistograms in microseconds, recorded
//!   on the shard thread (a few ns a sample) and handed to the admin side every tick.
//! - [`ShardSnapshot`]: what a shard publishes every tick (100 ms) into its
//!   [`crate::ShardHealth`]: a copy of its counters, its gauges and the latency samples
//!   recorded since the admin side last took them. The shard only ever `try_lock`s it (a
//!   busy lock skips one tick's publication, the samples wait for the next one); the admin
//!   thread holds it for a copy. Cost per tick: one copy of [`ShardStats`] and, when
//!   samples were recorded, one pass over two histograms (~20 KiB each).
//! - [`ClientInfo`], [`SubscriptionInfo`], [`Page`]: the admin API's lists, answered by
//!   a shard's tick loop from its core, at most [`PAGE_LIMIT_MAX`] entries at a time.
//! - [`monotonic_ms`]: a clock shared by every thread of the process, for liveness.

use crate::core::ShardCore;
use hdrhistogram::Histogram;
use std::sync::OnceLock;
use std::time::Instant;

/// Largest latency a histogram tells apart (60 s, in µs); larger samples count as this.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// Most entries one admin API page may hold.
pub const PAGE_LIMIT_MAX: usize = 1000;

/// An empty latency histogram: 1 µs ..= [`LATENCY_US_MAX`], 2 significant digits (1 %
/// resolution, about 20 KiB).
pub fn latency_histogram() -> Histogram<u64> {
    // invariant: constant bounds that hdrhistogram accepts (low >= 1, high >= 2 * low,
    // sigfig <= 5); checked by `latency_histogram_accepts_its_range`.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 2)
        .unwrap_or_else(|e| unreachable!("constant histogram bounds: {e}"))
}

/// Milliseconds since the first call in this process, from a monotonic clock: shards
/// stamp their ticks with it and the admin thread compares (liveness).
pub fn monotonic_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What one shard publishes every tick for the admin side (see the module docs).
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    /// The shard's counters at the tick.
    pub stats: ShardStats,
    /// (filter, session) subscriptions held by the shard.
    pub subscriptions: u64,
    /// Retained messages (every shard holds a replica of the whole store).
    pub retained: u64,
    /// [`monotonic_ms`] when this snapshot was taken (0: never).
    pub taken_ms: u64,
    /// Publish-to-socket latencies (µs) recorded since the admin side last took them:
    /// see `ShardCore::take_output_timed`.
    pub delivery_latency_us: Histogram<u64>,
    /// Write-ahead log commit latencies (µs: append, write and `fdatasync` of one
    /// batch) recorded since the admin side last took them.
    pub wal_commit_latency_us: Histogram<u64>,
}

impl Default for ShardSnapshot {
    fn default() -> Self {
        ShardSnapshot {
            stats: ShardStats::default(),
            subscriptions: 0,
            retained: 0,
            taken_ms: 0,
            delivery_latency_us: latency_histogram(),
            wal_commit_latency_us: latency_histogram(),
        }
    }
}

impl ShardSnapshot {
    /// Sessions with a connection attached.
    pub fn sessions_online(&self) -> u64 {
        self.stats.connections_current
    }

    /// Sessions without a connection: persistent ones (a clean session ends with its
    /// connection).
    pub fn sessions_offline(&self) -> u64 {
        self.stats
            .sessions_current
            .saturating_sub(self.stats.connections_current)
    }
}

/// One session, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client identifier.
    pub client_id: String,
    /// A connection is attached.
    pub connected: bool,
    /// The session ends with its connection.
    pub clean_session: bool,
    /// Subscriptions of the session.
    pub subscriptions: usize,
    /// Outbound QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// Outbound messages waiting behind the window or for the client.
    pub queued: usize,
}

/// One subscription, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// The subscriber.
    pub client_id: String,
    /// The topic filter.
    pub filter: String,
    /// The granted QoS.
    pub qos: u8,
}

/// A slice of one shard's list: `items` from `offset`, and how many there are in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// Entries on the shard.
    pub total: usize,
    /// At most the limit asked for (and [`PAGE_LIMIT_MAX`]).
    pub items: Vec<T>,
}

/// `limit` sessions of `core` from `offset`, in the order of its session table (stable
/// while the sessions do not change). Costs `offset + limit` steps.
pub fn client_page(core: &ShardCore, offset: usize, limit: usize) -> Page<ClientInfo> {
    let items = core
        .sessions()
        .skip(offset)
        .take(limit.min(PAGE_LIMIT_MAX))
        .map(|session| ClientInfo {
            client_id: session.client_id.to_string(),
            connected: session.conn.is_some(),
            clean_session: session.clean_session,
            subscriptions: session.subscription_count(),
            inflight: session.inflight.len(),
            queued: session.queue.len(),
        })
        .collect();
    Page {
        total: core.session_count(),
        items,
    }
}

/// `limit` subscriptions of `core` from `offset`, session by session (same order as
/// [`client_page`]). Costs `offset + limit` steps.
pub fn subscription_page(core: &ShardCore, offset: usize, limit: usize) -> Page<SubscriptionInfo> {
    let items = core
        .sessions()
        .flat_map(|session| {
            session
                .subscriptions
                .iter()
                .map(move |(filter, qos)| (session, filter, qos))
        })
        .skip(offset)
        .take(limit.min(PAGE_LIMIT_MAX))
        .map(|(session, filter, qos)| SubscriptionInfo {
            client_id: session.client_id.to_string(),
            filter: filter.to_string(),
            qos: *qos as u8,
        })
        .collect();
    Page {
        total: core.subscription_count(),
        items,
    }
}

/// Counters of one shard. Monotonic unless named `_current`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Connections attached to a session now.
    pub connections_current: u64,
    /// Connections accepted (CONNACK 0) since start.
    pub connections_total: u64,
    /// CONNECTs refused with a non-zero return code.
    pub connections_refused_total: u64,
    /// Sessions held now (online and offline).
    pub sessions_current: u64,
    /// PUBLISH packets received from clients, by QoS.
    pub publish_received_total: [u64; 3],
    /// PUBLISH packets sent to clients, by QoS.
    pub publish_sent_total: [u64; 3],
    /// Payload bytes received in PUBLISH packets.
    pub publish_received_bytes_total: u64,
    /// Messages forwarded to another shard (one per destination shard).
    pub forwarded_total: u64,
    /// Messages received from other shards.
    pub mesh_received_total: u64,
    /// Deliveries dropped because a session's queue was full.
    pub dropped_queue_full_total: u64,
    /// QoS 0 deliveries dropped because the connection's outbound buffer was full.
    pub dropped_outbound_full_total: u64,
    /// QoS 0 deliveries dropped because the session was offline.
    pub dropped_offline_total: u64,
    /// Published messages that matched no subscription anywhere.
    pub dropped_no_subscribers_total: u64,
    /// Connections closed for a malformed packet or a protocol violation.
    pub protocol_errors_total: u64,
    /// Connections closed because keep-alive expired.
    pub keep_alive_expired_total: u64,
    /// Connections taken over by a new connection with the same client id.
    pub takeovers_total: u64,
    /// Will messages published.
    pub wills_published_total: u64,
    /// Times a publisher (or a mesh channel) was paced to a slow but live subscriber.
    pub paced_total: u64,
    /// Acknowledgements for packet ids the session does not know (counted, answered or ignored).
    pub unknown_packet_id_total: u64,
    /// QoS 1/2 publishes refused (connection closed, no acknowledgement) because the
    /// write-ahead log had failed.
    pub publish_refused_log_failed_total: u64,
    /// Recovered sessions' entries or retained messages skipped because this build
    /// cannot use them (e.g. a topic it rejects).
    pub restore_skipped_total: u64,
    /// QoS 2 messages forwarded here a second time (after the sender restarted) and not
    /// delivered again.
    pub forward_duplicates_total: u64,
    /// PUBLISHes dropped because the client may not publish there (ACL, topic depth).
    pub publish_denied_total: u64,
    /// Subscriptions refused (ACL, topic depth, subscriptions per client): SUBACK 0x80.
    pub subscribe_denied_total: u64,
    /// CONNECTs refused for bad credentials or not being authorised (CONNACK 4, 5).
    pub auth_failures_total: u64,
    /// CONNECTs refused with CONNACK 3 because the shard's password-check queue was full
    /// ([`crate::offload::CHECK_QUEUE_MAX`]).
    pub auth_checks_refused_total: u64,
    /// PUBLISHes a plugin dropped.
    pub plugin_dropped_total: u64,
    /// Times a connection went over its publish rate and its input was made to wait.
    pub publish_throttled_total: u64,
    /// Times reading a connection paused because it was owed more than its bounds
    /// (`outbound_buffer_bytes_max` bytes, or `DEFERRED_ACKS_MAX` acknowledgements):
    /// a client that pipelines requests and does not read the answers.
    pub input_paused_total: u64,
    /// Messages plugins published (derived messages).
    pub plugin_derived_total: u64,
    /// Derived messages dropped for going over a call's bound.
    pub plugin_derived_dropped_total: u64,
    /// Connections refused because their address is banned.
    pub connections_refused_banned_total: u64,
    /// Connections refused for the per-address connection limit.
    pub connections_refused_address_limit_total: u64,
    /// Retained publishes not stored for `retained_messages_max` / `retained_bytes_max`
    /// (still delivered to subscribers).
    pub retained_refused_total: u64,
    /// Persistent sessions removed for `persistent_session_expiry_ms`.
    pub sessions_expired_total: u64,
    /// Barriers failed by a peer whose log failed ([`crate::MeshMessage::Nack`]): their
    /// connections were closed without the acknowledgement.
    pub barriers_failed_total: u64,
    /// Times input (a client's or a peer's) waited for the log writer to take the
    /// records produced (`Limits::log_pending_records_max`).
    pub log_paced_total: u64,
    /// Messages withheld from a subscriber its policy does not let read the topic.
    pub deliveries_denied_total: u64,
    /// CONNECTs refused with CONNACK 1 for a protocol level this broker does not speak
    /// (also counted in `connections_refused_total`; not a ban strike).
    pub connections_refused_protocol_level_total: u64,
    /// Write-ahead log: records appended.
    pub wal_records_total: u64,
    /// Write-ahead log: batches written (one write each).
    pub wal_writes_total: u64,
    /// Write-ahead log: `fdatasync`s of a batch (durability `sync`: one per batch).
    pub wal_syncs_total: u64,
    /// Write-ahead log: bytes of segments since the last snapshot.
    pub wal_segment_bytes: u64,
    /// Write-ahead log: snapshots written by compaction.
    pub wal_compactions_total: u64,
    /// Write-ahead log: the longest compaction (ms), written by the snapshot thread while
    /// commits went on.
    pub wal_compaction_ms_max: u64,
    /// Write-ahead log: write or sync failures (each makes the log unhealthy until reopened).
    pub wal_failures_total: u64,
    /// Write-ahead log: the latest batch commit took this long (µs), and the longest.
    pub wal_commit_us_last: u64,
    /// See `wal_commit_us_last`.
    pub wal_commit_us_max: u64,
    /// Write-ahead log: how long recovering this shard's log took at start (ms).
    pub wal_recovery_ms: u64,
    /// Bytes read from client sockets (every packet, CONNECT included).
    pub network_received_bytes_total: u64,
    /// Bytes written to client sockets.
    pub network_sent_bytes_total: u64,
    /// Payload bytes sent in PUBLISH packets.
    pub publish_sent_bytes_total: u64,
    /// Connections closed because a packet was larger than `max_packet_size` (also
    /// counted in `protocol_errors_total`).
    pub packets_too_large_total: u64,
    /// TLS listener: handshakes completed.
    pub tls_handshakes_total: u64,
    /// TLS listener: handshakes that failed (not TLS, no or a bad client certificate, no
    /// common protocol version or cipher) or did not finish within the connect timeout.
    pub tls_handshake_failures_total: u64,
    /// TLS listener: connections ended by an error after the handshake (a TLS alert or
    /// a bad record, a reset) rather than by a close.
    pub tls_connection_errors_total: u64,
    /// TLS listener: bytes read from TLS sockets (records, handshakes included). The
    /// plaintext is also counted in `network_received_bytes_total`.
    pub tls_received_bytes_total: u64,
    /// TLS listener: bytes written to TLS sockets.
    pub tls_sent_bytes_total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_accepts_its_range() {
        let mut histogram = latency_histogram();
        histogram.saturating_record(0);
        histogram.saturating_record(1);
        histogram.saturating_record(LATENCY_US_MAX * 10);
        assert_eq!(histogram.len(), 3);
        assert!(histogram.max() >= LATENCY_US_MAX);
    }

    #[test]
    fn offline_sessions_are_sessions_without_a_connection() {
        let mut snapshot = ShardSnapshot::default();
        snapshot.stats.sessions_current = 5;
        snapshot.stats.connections_current = 3;
        assert_eq!(snapshot.sessions_online(), 3);
        assert_eq!(snapshot.sessions_offline(), 2);
    }

    #[test]
    fn monotonic_ms_does_not_go_back() {
        let a = monotonic_ms();
        let b = monotonic_ms();
        assert!(b >= a);
    }
}
