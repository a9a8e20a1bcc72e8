//! What shards say to each other, and the ids that cross shard boundaries.
//!
//! Everything here is `Send`: it travels over the SPSC mesh between executors. A forwarded
//! message is one [`Message`] whose topic and payload are reference-counted `Bytes`, so
//! forwarding to K shards and delivering to M subscribers copies no payload.

use bytes::Bytes;
use cutie_codec::{QoS, TopicFilter, TopicName};
use std::time::Instant;

/// Most shards one broker runs; [`ShardSet`] is sized for it.
pub const SHARDS_MAX: usize = 256;

/// The index of a shard (an executor), `0..shard_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl ShardId {
    /// The index as a `usize`, for indexing per-shard tables.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A connection, unique within its shard for the shard's lifetime (never reused, so a
/// late event about a closed connection can never hit a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A barrier token: a shard that needs every peer to have applied a change before it
/// acknowledges something to a client sends the change with a token; each peer answers
/// [`MeshMessage::Ack`] with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

/// An application message as routed inside the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Where it was published.
    pub topic: TopicName,
    /// The payload, shared by every copy of the message.
    pub payload: Bytes,
    /// The QoS it was published with (the upper bound for every delivery).
    pub qos: QoS,
    /// Whether it was published with the retain flag.
    pub retain: bool,
    /// When the runtime read the bytes of the PUBLISH that carried it, for the delivery
    /// latency histogram; `None` where no delivery of it is measured (wills, retained
    /// messages sent on subscribe, messages queued for an offline session, restored ones,
    /// the deterministic simulation).
    pub received_at: Option<Instant>,
}

/// The version of a retained-store update: a Lamport clock, then the shard that wrote it
/// as a tie-break. Every shard keeps a topic's update only if it is newer than the one it
/// holds, so the replicas agree however concurrent updates from different shards
/// interleave on the mesh; an update sent after another was applied everywhere (an
/// acknowledged retained publish) is always newer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RetainedVersion {
    /// The writer's clock: above every version it had seen.
    pub clock: u64,
    /// The shard that wrote it.
    pub shard: ShardId,
}

/// A message between shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshMessage {
    /// Deliver to local subscribers; if `message.retain`, also update the retained store
    /// (retained publishes go to every shard, others only to interested shards).
    Publish {
        /// The message.
        message: Message,
        /// Answer `Ack` with this token once applied.
        ack: Option<Token>,
        /// The retained-store update's version, set exactly when `message.retain`.
        retained: Option<RetainedVersion>,
        /// A QoS 2 message of a persistent publisher session: an id unique across
        /// restarts, logged by the publisher's shard with the packet id. The receiver
        /// delivers a given id once: after a crash the publisher's shard forwards a
        /// re-sent PUBLISH again, not knowing whether the first forward was committed.
        forward_id: Option<u128>,
    },
    /// The sending shard gained (`add`) or lost its last local subscription to `filter`.
    Interest {
        /// The filter.
        filter: TopicFilter,
        /// Gained or lost.
        add: bool,
        /// Answer `Ack` with this token once applied.
        ack: Option<Token>,
    },
    /// A barrier answer: the change sent with `Token` is applied on the sending shard.
    Ack(Token),
    /// A barrier answer: the sending shard applied the change in memory but its log has
    /// failed, so it cannot be made durable. The barrier fails: what waits for it is not
    /// acknowledged (its client keeps the message and sends it again).
    Nack(Token),
    /// The publisher released (PUBREL) the QoS 2 message forwarded under this id: the
    /// receiver forgets it.
    ForwardDone {
        /// The id of [`MeshMessage::Publish::forward_id`].
        forward_id: u128,
    },
    /// A retained message recovered from the sender's log at start: store it (if newer
    /// than what is held), deliver it to nobody.
    Retained {
        /// The retained message.
        message: Message,
        /// Its version in the retained store.
        version: RetainedVersion,
    },
}

/// A set of shards, as a fixed bitmap (no allocation on the routing path).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardSet([u64; SHARDS_MAX / 64]);

impl ShardSet {
    /// Adds `shard`.
    pub fn insert(&mut self, shard: ShardId) {
        let i = shard.index();
        self.0[i / 64] |= 1 << (i % 64);
    }

    /// Whether `shard` is in the set.
    pub fn contains(&self, shard: ShardId) -> bool {
        let i = shard.index();
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The shards in the set, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.0.iter().enumerate().flat_map(|(w, bits)| {
            (0..64)
                .filter(move |b| bits & (1u64 << b) != 0)
                .map(move |b| {
                    // invariant: w < SHARDS_MAX / 64 and b < 64, so the index fits u16.
                    ShardId((w * 64 + b) as u16)
                })
        })
    }
}

/// The shard that owns `client_id`: a stable hash (FNV-1a 64, then a finalizer), so
/// ownership is the same across restarts and versions as long as the shard count is
/// (and the logs are re-homed at start when it is not).
///
/// The finalizer matters: FNV-1a's low bit is the parity of the number of odd bytes, so
/// with an even shard count ids differing in one character (`pub1`/`sub1`) always
/// landed on different shards.
pub fn owner_of(client_id: &str, shard_count: u16) -> ShardId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in client_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // MurmurHash3's 64-bit finalizer: every input bit reaches every output bit.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    // invariant: the remainder is < shard_count, which is a u16.
    ShardId((hash % u64::from(shard_count.max(1))) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_set_iterates_what_was_inserted() {
        let mut set = ShardSet::default();
        assert!(set.is_empty());
        for i in [0u16, 3, 63, 64, 200, 255] {
            set.insert(ShardId(i));
        }
        let got: Vec<u16> = set.iter().map(|s| s.0).collect();
        assert_eq!(got, vec![0, 3, 63, 64, 200, 255]);
        assert!(set.contains(ShardId(64)));
        assert!(!set.contains(ShardId(65)));
    }

    #[test]
    fn owner_is_stable_and_in_range() {
        assert_eq!(owner_of("client-a", 1), ShardId(0));
        for n in 1..9u16 {
            let owner = owner_of("client-a", n);
            assert!(owner.0 < n);
            assert_eq!(owner, owner_of("client-a", n));
        }
        // FNV-1a of the empty string is the offset basis.
        // Ids that differ in one character are spread, not split by parity.
        let same = (0..100)
            .filter(|i| owner_of(&format!("p{i}"), 2) == owner_of(&format!("s{i}"), 2))
            .count();
        assert!(
            (25..=75).contains(&same),
            "{same} of 100 pairs on one shard"
        );
    }

    /// Session placement is part of the on-disk format: a shard's log holds the sessions
    /// `owner_of` gave it, and a restart with the same shard count must find each one
    /// where it was. These values were computed by an independent implementation of
    /// FNV-1a 64 followed by MurmurHash3's `fmix64`, reduced modulo the shard count;
    /// any change to the hash moves sessions and must fail here (then it needs a
    /// migration, like a change of shard count, not a new table).
    #[test]
    fn owner_of_golden_values_are_part_of_the_on_disk_format() {
        const SHARD_COUNTS: [u16; 10] = [1, 2, 3, 4, 7, 8, 16, 64, 1000, 65535];
        #[rustfmt::skip]
        let golden: [(&str, [u16; 10]); 9] = [
            ("",                   [0, 0, 2, 2, 1, 6, 6, 38, 342, 62192]),
            ("a",                  [0, 1, 2, 3, 1, 3, 11, 27, 315, 42005]),
            ("client-a",           [0, 1, 1, 3, 1, 3, 11, 43, 387, 36772]),
            ("sub1",               [0, 1, 1, 3, 5, 3, 11, 27, 699, 50494]),
            ("pub1",               [0, 0, 2, 2, 6, 6, 6, 22, 294, 57434]),
            ("sensor/42",          [0, 0, 0, 0, 1, 4, 4, 36, 636, 65421]),
            ("mosquitto_sub_1234", [0, 1, 0, 3, 2, 3, 3, 3, 267, 42072]),
            // Bytes, not characters, are hashed: 14 bytes of UTF-8.
            ("\u{fc}n\u{ef}c\u{f6}d\u{e9}-id", [0, 0, 1, 0, 1, 4, 4, 52, 364, 46804]),
            (
                "a-rather-long-client-identifier-of-sixty-four-bytes-0123456789ab",
                [0, 1, 1, 3, 1, 7, 7, 39, 679, 23299],
            ),
        ];
        for (client_id, owners) in golden {
            for (shard_count, owner) in SHARD_COUNTS.into_iter().zip(owners) {
                assert_eq!(
                    owner_of(client_id, shard_count),
                    ShardId(owner),
                    "owner_of({client_id:?}, {shard_count}) moved: sessions already on \
                     disk would be looked for on the wrong shard"
                );
            }
        }
        // A shard count of 0 is treated as 1.
        assert_eq!(owner_of("client-a", 0), ShardId(0));
    }
}
