//! The durable events of one shard, and their rkyv encoding.
//!
//! A [`Record`] is what the broker appends to its write-ahead log. Records carry plain
//! strings, bytes and integers (no types of other cutie crates), so this crate stays at the
//! bottom of the dependency graph.
//!
//! Encoding is rkyv 0.8 with the workspace's pinned format features (little endian,
//! aligned, 32-bit relative pointers). The archive's root sits at the *end* of its bytes,
//! which is why the framing (`frame.rs`) stores an explicit length. Decoding always goes
//! through rkyv's checked [`access`](rkyv::access) (bytecheck), so a damaged record is an
//! error, never undefined behaviour or a panic.
//!
//! Changing `Record` in any way (a new variant, a new or reordered field) changes the
//! archived layout and needs a new [`FORMAT_VERSION`](crate::frame::FORMAT_VERSION).

use std::fmt;

use rkyv::rancor;
use rkyv::util::AlignedVec;

/// Position of a record in a shard's log: the n-th record ever appended is `Lsn(n)`.
///
/// `Lsn(0)` means "no record". LSNs are implicit (a segment stores the LSN of its first
/// record in its header; the rest follow by position) and survive compaction: a snapshot
/// says which LSN it is the state as of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// No record at all: the LSN of an empty log.
    pub const ZERO: Lsn = Lsn(0);

    /// The LSN right after this one.
    #[must_use]
    pub fn next(self) -> Lsn {
        // 2^64 records never get appended to one shard's log; saturating only keeps a
        // crafted file name or header (LSN u64::MAX) from overflowing during recovery.
        Lsn(self.0.saturating_add(1))
    }

    /// The raw number.
    #[must_use]
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One durable event of a shard. See `FORMAT.md` for which acknowledgement waits for which
/// record.
///
/// `client_id` is the MQTT client identifier of a persistent session (`clean_session = 0`);
/// `message_id` is the broker's own id for a message queued to one session (unique among
/// that session's live messages, assigned in increasing order); `packet_id` is the MQTT
/// Packet Identifier on the wire.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Record {
    /// A persistent session exists (created, or found again on CONNECT).
    SessionPut { client_id: String },
    /// The session is gone (clean-session connect, expiry, admin): with everything it owned.
    SessionDrop { client_id: String },
    /// The session subscribed to `filter` with the granted `qos` (replaces an earlier one).
    Subscribe {
        client_id: String,
        filter: String,
        qos: u8,
    },
    /// The session no longer subscribes to `filter`.
    Unsubscribe { client_id: String, filter: String },
    /// A message was accepted for the session and waits in its queue, not yet sent.
    MessageQueued {
        client_id: String,
        message_id: u64,
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
    },
    /// The queued message moved into the inflight window, sent as `packet_id`.
    MessageSent {
        client_id: String,
        message_id: u64,
        packet_id: u16,
    },
    /// PUBREC received and PUBREL sent for `packet_id`: awaiting PUBCOMP.
    MessageReleased { client_id: String, packet_id: u16 },
    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) received: the inflight message is gone.
    MessageDone { client_id: String, packet_id: u16 },
    /// The message (queued or inflight) was dropped: queue overflow, expiry, admin.
    MessageDiscarded { client_id: String, message_id: u64 },
    /// A QoS 2 PUBLISH with `packet_id` was received and PUBREC sent: awaiting PUBREL.
    InboundQos2 {
        client_id: String,
        packet_id: u16,
        /// The id the message was forwarded to other shards under (0: not forwarded
        /// with one): a resend after a restart is forwarded again under it, and the
        /// receiving shards recognise it ([`Record::ForwardSeen`]).
        forward_id: u128,
    },
    /// PUBREL received and PUBCOMP sent: `packet_id` is free again.
    InboundQos2Released { client_id: String, packet_id: u16 },
    /// The retained message of `topic` is now this one.
    RetainSet {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
    },
    /// `topic` no longer has a retained message.
    RetainClear { topic: String },
    /// A QoS 2 message forwarded by another shard under `forward_id` was delivered
    /// here (logged after its `MessageQueued` records): a second copy is not delivered.
    ForwardSeen { forward_id: u128 },
    /// The publisher released that message (PUBREL): the id will not come again.
    ForwardDone { forward_id: u128 },
}

impl Record {
    /// A short name of the record's kind, for logs and reports.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Record::SessionPut { .. } => "SessionPut",
            Record::SessionDrop { .. } => "SessionDrop",
            Record::Subscribe { .. } => "Subscribe",
            Record::Unsubscribe { .. } => "Unsubscribe",
            Record::MessageQueued { .. } => "MessageQueued",
            Record::MessageSent { .. } => "MessageSent",
            Record::MessageReleased { .. } => "MessageReleased",
            Record::MessageDone { .. } => "MessageDone",
            Record::MessageDiscarded { .. } => "MessageDiscarded",
            Record::InboundQos2 { .. } => "InboundQos2",
            Record::InboundQos2Released { .. } => "InboundQos2Released",
            Record::RetainSet { .. } => "RetainSet",
            Record::RetainClear { .. } => "RetainClear",
            Record::ForwardSeen { .. } => "ForwardSeen",
            Record::ForwardDone { .. } => "ForwardDone",
        }
    }
}

/// Alignment of the scratch buffers records are serialized into and validated from.
/// Archived records need at most 8; 16 leaves room for future fields.
const SCRATCH_ALIGN: usize = 16;

/// Serializes records, reusing one aligned scratch buffer (no allocation per record once
/// warm).
#[derive(Debug, Default)]
pub struct RecordEncoder {
    scratch: AlignedVec<SCRATCH_ALIGN>,
}

impl RecordEncoder {
    /// A new encoder with an empty scratch buffer.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The rkyv bytes of `record`. They are valid until the next call.
    pub fn encode(&mut self, record: &Record) -> Result<&[u8], rancor::Error> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.scratch = rkyv::api::high::to_bytes_in::<_, rancor::Error>(record, scratch)?;
        Ok(self.scratch.as_slice())
    }
}

/// Validates and deserializes records, reusing one aligned scratch buffer: record bytes
/// read from a file sit at arbitrary offsets, and rkyv's checked access (with the `aligned`
/// format) requires the archive to start aligned.
#[derive(Debug, Default)]
pub struct RecordDecoder {
    scratch: AlignedVec<SCRATCH_ALIGN>,
}

impl RecordDecoder {
    /// A new decoder with an empty scratch buffer.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The record in `bytes`, or why they are not a valid archived record.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Record, rancor::Error> {
        self.scratch.clear();
        self.scratch.extend_from_slice(bytes);
        let archived = rkyv::access::<ArchivedRecord, rancor::Error>(self.scratch.as_slice())?;
        rkyv::deserialize::<Record, rancor::Error>(archived)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_of_each() -> Vec<Record> {
        let c = || "client-1".to_string();
        vec![
            Record::SessionPut { client_id: c() },
            Record::SessionDrop { client_id: c() },
            Record::Subscribe {
                client_id: c(),
                filter: "a/+/c".into(),
                qos: 2,
            },
            Record::Unsubscribe {
                client_id: c(),
                filter: "a/#".into(),
            },
            Record::MessageQueued {
                client_id: c(),
                message_id: u64::MAX - 3,
                topic: "sensors/7/temp".into(),
                payload: vec![0, 1, 2, 255, 0x80],
                qos: 1,
                retain: true,
            },
            Record::MessageQueued {
                client_id: String::new(),
                message_id: 0,
                topic: String::new(),
                payload: Vec::new(),
                qos: 0,
                retain: false,
            },
            Record::MessageSent {
                client_id: c(),
                message_id: 42,
                packet_id: 65535,
            },
            Record::MessageReleased {
                client_id: c(),
                packet_id: 1,
            },
            Record::MessageDone {
                client_id: c(),
                packet_id: 7,
            },
            Record::MessageDiscarded {
                client_id: c(),
                message_id: 9,
            },
            Record::InboundQos2 {
                client_id: c(),
                packet_id: 300,
                forward_id: u128::MAX - 5,
            },
            Record::ForwardSeen {
                forward_id: 1 << 100,
            },
            Record::ForwardDone { forward_id: 7 },
            Record::InboundQos2Released {
                client_id: c(),
                packet_id: 300,
            },
            Record::RetainSet {
                topic: "status/\u{e9}t\u{e9}".into(),
                payload: vec![7; 1000],
                qos: 1,
            },
            Record::RetainClear {
                topic: "status".into(),
            },
        ]
    }

    #[test]
    fn every_record_kind_round_trips() {
        let mut encoder = RecordEncoder::new();
        let mut decoder = RecordDecoder::new();
        for record in one_of_each() {
            let bytes = encoder.encode(&record).expect("encode").to_vec();
            let back = decoder.decode(&bytes).expect("decode");
            assert_eq!(back, record, "{}", record.kind());
        }
    }

    #[test]
    fn decoding_works_from_an_unaligned_slice() {
        let record = one_of_each().swap_remove(4);
        let mut encoder = RecordEncoder::new();
        let mut file = vec![0xAA; 3];
        file.extend_from_slice(encoder.encode(&record).expect("encode"));
        let back = RecordDecoder::new().decode(&file[3..]).expect("decode");
        assert_eq!(back, record);
    }

    #[test]
    fn garbage_and_truncated_archives_are_errors_not_panics() {
        let mut encoder = RecordEncoder::new();
        let mut decoder = RecordDecoder::new();
        for record in one_of_each() {
            let bytes = encoder.encode(&record).expect("encode").to_vec();
            for cut in 0..bytes.len() {
                // Must not panic; most cuts are rejected by bytecheck.
                let _ = decoder.decode(&bytes[..cut]);
            }
        }
        assert!(decoder.decode(&[]).is_err());
        assert!(decoder.decode(&[0xFF; 64]).is_err());
    }

    #[test]
    fn an_out_of_range_discriminant_is_rejected() {
        let mut encoder = RecordEncoder::new();
        let bytes = encoder
            .encode(&Record::RetainClear { topic: "t".into() })
            .expect("encode")
            .to_vec();
        // Try every value in every byte: none may panic, and the original must still decode.
        let mut decoder = RecordDecoder::new();
        for i in 0..bytes.len() {
            for v in [0u8, 13, 14, 0x7F, 0xFF] {
                let mut damaged = bytes.clone();
                damaged[i] = v;
                let _ = decoder.decode(&damaged);
            }
        }
        assert!(decoder.decode(&bytes).is_ok());
    }
}
