//! Per-shard counters: plain integers bumped on the hot path (no atomics, no lookups),
//! read by the runtime and exported by the admin server.

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
    /// Write-ahead log: the longest compaction, during which commits waited (ms).
    pub wal_compaction_ms_max: u64,
    /// Write-ahead log: write or sync failures (each makes the log unhealthy until reopened).
    pub wal_failures_total: u64,
    /// Write-ahead log: the latest batch commit took this long (µs), and the longest.
    pub wal_commit_us_last: u64,
    /// See `wal_commit_us_last`.
    pub wal_commit_us_max: u64,
}
