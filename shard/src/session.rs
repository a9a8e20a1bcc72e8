//! A session: what the broker keeps for one client id, connected or not.
//!
//! Outbound QoS 1/2 state lives here: the inflight window (sent, not yet fully
//! acknowledged) bounded by `inflight_max`, and the queue behind it (accepted for the
//! client, not yet sent) bounded by `queued_max`. Inbound QoS 2 packet ids wait here for
//! their PUBREL so a re-sent PUBLISH is not routed twice. All of it is plain data that a
//! later write-ahead log can record as it changes.

use crate::message::{ConnId, Message, Token};
use bytestring::ByteString;
use cutie_codec::{LastWill, PacketId, QoS, TopicFilter};
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::OnceLock;

/// ahash with keys drawn once per process: a zero-sized hasher builder, so a map in
/// every session costs its 32-byte table and not 32 more bytes of keys, while keys stay
/// unknown to clients (filters are chosen by them).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessRandom;

impl BuildHasher for ProcessRandom {
    type Hasher = ahash::AHasher;

    fn build_hasher(&self) -> ahash::AHasher {
        static KEYS: OnceLock<ahash::RandomState> = OnceLock::new();
        KEYS.get_or_init(ahash::RandomState::new).build_hasher()
    }
}

/// A map held by every session (see [`ProcessRandom`]).
pub type SessionMap<K, V> = HashMap<K, V, ProcessRandom>;

/// Index of a session in its shard's session table.
pub type SessionKey = usize;

/// Where an outbound QoS 1/2 delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundState {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitingPubAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitingPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitingPubComp,
}

/// One outbound delivery in the inflight window.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// The packet id it was sent with.
    pub packet_id: PacketId,
    /// The message (its `qos` is already the delivery QoS).
    pub message: Message,
    /// What it waits for.
    pub state: OutboundState,
    /// The session's id for the message (its write-ahead log records name it).
    pub message_id: u64,
}

/// An inbound QoS 2 message received and routed, awaiting PUBREL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inbound {
    /// The barrier its PUBREC waited for: a re-sent PUBLISH's PUBREC waits for it too.
    pub token: Option<Token>,
    /// The id it was forwarded to other shards under (0: none), so that they recognise
    /// a second forward of it.
    pub forward_id: u128,
    /// Recovered from the log after a restart: the local deliveries are durable, but
    /// the forwards to other shards may not be, so a re-sent PUBLISH is forwarded again.
    pub restored: bool,
}

/// A message waiting for room in the inflight window (or for the client to come back).
#[derive(Debug, Clone)]
pub struct Queued {
    /// The message (its `qos` is already the delivery QoS).
    pub message: Message,
    /// The session's id for the message, increasing in queue order.
    pub message_id: u64,
}

/// Why a delivery was dropped instead of sent or queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The session's queue was at `max_queued_messages`.
    QueueFull,
    /// A QoS 0 message to a connection whose outbound buffer was over its limit.
    OutboundBufferFull,
    /// A QoS 0 message to an offline session (QoS 0 is not queued for offline clients).
    Offline,
}

/// One client id's session.
#[derive(Debug)]
pub struct Session {
    /// The client identifier.
    pub client_id: ByteString,
    /// Whether the session ends with its connection.
    pub clean_session: bool,
    /// The connection attached now, if the client is online.
    pub conn: Option<ConnId>,
    /// Subscriptions: filter -> granted QoS. Mirrors the shard trie's entries for this session.
    pub subscriptions: SessionMap<TopicFilter, QoS>,
    /// The will of the attached connection (boxed: most clients have none).
    pub will: Option<Box<LastWill>>,
    /// Outbound deliveries sent and not yet fully acknowledged, oldest first.
    pub inflight: VecDeque<Inflight>,
    /// Outbound deliveries waiting for the window (or for the client), oldest first.
    pub queue: VecDeque<Queued>,
    /// Inbound QoS 2 packet ids received (and routed), waiting for PUBREL.
    pub inbound_qos2: SessionMap<PacketId, Inbound>,
    /// When the client last acknowledged an outbound delivery (PUBACK, PUBREC, PUBCOMP),
    /// or connected; tells a slow consumer (paced) from a dead one (dropped for).
    pub last_progress_ms: u64,
    /// The next packet id to try for an outbound delivery.
    next_packet_id: PacketId,
    /// The id the next queued message gets.
    pub next_message_id: u64,
}

impl Session {
    /// A new, empty session.
    pub fn new(client_id: ByteString, clean_session: bool) -> Session {
        Session {
            client_id,
            clean_session,
            conn: None,
            subscriptions: SessionMap::default(),
            will: None,
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            inbound_qos2: SessionMap::default(),
            last_progress_ms: 0,
            next_packet_id: PacketId::new(1).unwrap_or_else(|| unreachable!("1 is not 0")),
            next_message_id: 1,
        }
    }

    /// A packet id not used by any inflight delivery. The window is at most 65,535
    /// entries (its bound is a u16), so a free id always exists.
    pub fn allocate_packet_id(&mut self) -> PacketId {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = id.next();
            if !self.inflight.iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }

    /// The inflight entry with `packet_id`, if any.
    pub fn inflight_position(&self, packet_id: PacketId) -> Option<usize> {
        self.inflight.iter().position(|i| i.packet_id == packet_id)
    }

    /// Whether the window has room under `inflight_max`.
    pub fn window_has_room(&self, inflight_max: u16) -> bool {
        self.inflight.len() < usize::from(inflight_max)
    }

    /// Whether the session outlives its connection (`clean_session = 0`): only such
    /// sessions are written to the shard's write-ahead log.
    pub fn is_persistent(&self) -> bool {
        !self.clean_session
    }

    /// Takes the next message id.
    pub fn take_message_id(&mut self) -> u64 {
        let id = self.next_message_id;
        self.next_message_id += 1;
        id
    }

    /// Number of this session's subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }
}
