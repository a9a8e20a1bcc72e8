//! The protocol core of one shard: sans-IO.
//!
//! [`ShardCore`] takes decoded CONNECTs, raw bytes from connections, messages from other
//! shards and the current time (milliseconds, passed in), and leaves behind what to send:
//! bytes per connection ([`ShardCore::take_output`]), connections to wake
//! ([`ShardCore::drain_woken`]) and messages for other shards
//! ([`ShardCore::drain_mesh`]). It never blocks, never touches a socket or a clock, and is
//! driven the same way by the glommio runtime and by the deterministic simulation tests.
//!
//! Routing: a PUBLISH is matched against this shard's trie for local subscribers and
//! against the replicated interest table for other shards; it is forwarded only to the
//! shards that have a matching subscription (retained publishes go to every shard, each
//! keeps a replica of the retained store). When this shard gains its first subscription to
//! a filter, it tells every peer and holds the SUBACK until all have applied it, so a
//! client that has its SUBACK receives everything published afterwards, from any shard.

use crate::access::{Authorizer, ClientPolicy, Identity};
use crate::message::{
    owner_of, ConnId, MeshMessage, Message, RetainedVersion, ShardId, ShardSet, Token,
};
use crate::plugin::{
    MessagePlugin, PluginMessage, PublishVerdict, SubscribeVerdict, DERIVED_PER_CALL_MAX,
};
use crate::session::{DropReason, Inbound, Inflight, OutboundState, Queued, Session, SessionKey};
use crate::stats::ShardStats;
use crate::trie::Trie;
use ahash::AHashMap;
use bytes::BytesMut;
use bytestring::ByteString;
use cutie_codec::{
    ConnAck, Connect, ConnectReturnCode, Decoder, Packet, PacketId, ProtocolLevel, Publish,
    PublishQos, QoS, Subscribe, SubscribeFilter, SubscribeReturnCode, TopicFilter, TopicName,
    Unsubscribe,
};
use cutie_persistence::{DurableState, InflightPhase, Record};
use slab::Slab;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// Limits one shard enforces. Every buffer and queue has one.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest packet accepted from a client, fixed header included.
    pub packet_size_max: usize,
    /// Outbound QoS 1/2 messages sent and not yet acknowledged, per session.
    pub inflight_max: u16,
    /// Outbound messages waiting behind the inflight window (or for an offline client), per session.
    pub queued_max: usize,
    /// Bytes waiting to be written to one connection above which QoS 0 deliveries are dropped.
    pub outbound_buffer_bytes_max: usize,
    /// A session that acknowledged nothing for this long while it had messages in flight
    /// is stalled: publishers are no longer paced to it, its queue fills and then drops.
    pub stall_ms: u64,
    /// Subscriptions one session may hold; more are refused (SUBACK 0x80). 0: no limit.
    pub subscriptions_per_client_max: usize,
    /// Levels a topic name or filter may have; deeper ones are refused (a PUBLISH is
    /// dropped and counted, a SUBSCRIBE gets 0x80). 0: no limit.
    pub topic_levels_max: usize,
    /// Bytes a topic name or filter may have; longer ones are refused like deeper ones.
    /// 0: no limit (beyond MQTT's 65,535).
    pub topic_bytes_max: usize,
    /// PUBLISH packets per second one connection may send (a burst of as many is
    /// allowed); beyond, its input waits (see [`ShardCore::throttled_until`]). 0: no limit.
    pub publish_rate_max: u32,
    /// Retained messages the broker keeps (every shard holds a replica of the store, so
    /// this bounds each shard's); a retained message for a new topic beyond it is routed
    /// without being stored, and counted. 0: no limit.
    pub retained_messages_max: usize,
    /// Bytes (topic and payload) of retained messages the broker keeps; an update that
    /// would take the store past it is routed without being stored, and counted. 0: no
    /// limit.
    pub retained_bytes_max: usize,
    /// An offline persistent session is removed after this long without its client
    /// (Mosquitto's `persistent_client_expiration`). 0: never.
    pub persistent_session_expiry_ms: u64,
    /// Records produced and not yet taken by the log writer. At this many the runtime
    /// stops reading clients and peers of the shard until the writer takes them (see
    /// [`ShardCore::log_backlogged`]): with durability `batch` or `none` nothing else
    /// holds a fast publisher back while the disk is slower than the network.
    pub log_pending_records_max: usize,
}

impl Limits {
    /// Queue length from which publishers are paced to a live session (half the queue).
    pub fn queue_high_watermark(&self) -> usize {
        (self.queued_max / 2).max(1)
    }

    /// Queue length under which paced publishers go on (a quarter of the queue).
    pub fn queue_low_watermark(&self) -> usize {
        self.queued_max / 4
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            packet_size_max: 1024 * 1024,
            inflight_max: 32,
            queued_max: 1000,
            outbound_buffer_bytes_max: 1024 * 1024,
            stall_ms: 1000,
            subscriptions_per_client_max: 0,
            topic_levels_max: 0,
            topic_bytes_max: 0,
            publish_rate_max: 0,
            retained_messages_max: 0,
            retained_bytes_max: 0,
            persistent_session_expiry_ms: 0,
            log_pending_records_max: 65_536,
        }
    }
}

/// Acknowledgements one connection may be owed while they wait for barriers (other
/// shards, the log). A client that pipelines requests faster than they complete stops
/// being read at this many (see [`ShardCore::input_paused`]): the entries are small,
/// and 1,024 is far more than a client needs in flight to keep the path busy.
pub const DEFERRED_ACKS_MAX: usize = 1024;

/// When acknowledgements wait for the write-ahead log (config `durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A PUBACK, PUBREC, PUBCOMP, SUBACK, UNSUBACK or CONNACK that depends on a record
    /// is sent only after the record is synced (`fdatasync`); outbound QoS 2 PUBLISH and
    /// PUBREL only after their `MessageSent` / `MessageReleased`.
    Sync,
    /// Records are written at once and synced periodically; acknowledgements do not wait.
    Batch,
    /// Records are written at once and never synced by the broker; acknowledgements do
    /// not wait.
    None,
}

/// The shard's side of its write-ahead log: records produced, not yet handed to the log,
/// and what waits for them to be committed. Sequence numbers count records since start
/// (`appended`); the runtime reports how far the log has committed (`committed`).
#[derive(Debug)]
struct Log {
    durability: Durability,
    records: Vec<Record>,
    appended: u64,
    committed: u64,
    /// Mesh acknowledgements held until the records before them are committed.
    mesh_acks: VecDeque<(u64, ShardId, Token)>,
    /// Connections with output held by a gate.
    gated: Vec<ConnId>,
    /// Mesh output from this index of `mesh_out` on waits until the log has committed
    /// this sequence number: a QoS 2 message of a persistent publisher is forwarded only
    /// once its `InboundQos2` record (with the forward id) is durable, so no other shard
    /// can hold a message the publisher's shard has forgotten after a crash.
    mesh_hold: Option<(usize, u64)>,
    /// False after a write or sync failed: QoS 1/2 publishes are refused.
    healthy: bool,
}

impl Log {
    /// Whether acknowledgements produced now must wait for a commit. Not while the log
    /// is failed: nothing will be committed, and what needs durability is refused
    /// instead (QoS 1/2 publishes, persistent-session CONNECTs).
    fn must_wait(&self) -> bool {
        self.durability == Durability::Sync && self.healthy && self.appended > self.committed
    }
}

/// Appends a record when the shard logs.
fn log_record(log: &mut Option<Log>, record: impl FnOnce() -> Record) {
    if let Some(log) = log {
        log.records.push(record());
        log.appended += 1;
    }
}

/// Holds `conn`'s output from here on until the log has committed everything appended so
/// far (durability `sync` only).
fn gate_output(log: &mut Option<Log>, conn_id: ConnId, conn: &mut Conn) {
    let Some(log) = log else { return };
    if !log.must_wait() {
        return;
    }
    match &mut conn.gate {
        Some((_, seq)) => *seq = log.appended,
        None => {
            conn.gate = Some((conn.out.len(), log.appended));
            log.gated.push(conn_id);
        }
    }
}

/// What a connection's writer should do after [`ShardCore::take_output`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputState {
    /// Write what was handed over and wait for the next wake-up.
    Open,
    /// Write what was handed over, then close the socket and call [`ShardCore::conn_closed`].
    Close,
    /// The connection is gone: close the socket.
    Gone,
}

/// Something owed to a client in order, possibly waiting for a barrier.
#[derive(Debug)]
enum Deferred {
    /// An acknowledgement packet (PUBACK, PUBREC, SUBACK, UNSUBACK...).
    Packet(Packet),
    /// Send the retained messages matching these new subscriptions.
    Retained(Vec<SubscribeFilter>),
    /// Nothing to send: holds what follows until its token's barrier completes.
    Barrier,
}

/// One connection attached to a session.
#[derive(Debug)]
struct Conn {
    /// The session it is attached to; `None` once closing.
    session: Option<SessionKey>,
    decoder: Decoder,
    /// Bytes to write, swapped out by the writer.
    out: BytesMut,
    /// The connection is finished: write what is left in `out`, then close.
    closing: bool,
    /// Already in `ShardCore::woken`.
    woken: bool,
    /// 1.5 times the keep-alive, 0 when keep-alive is off.
    keep_alive_limit_ms: u64,
    last_seen_ms: u64,
    /// Acknowledgements in the order the client is owed them; an entry with a pending
    /// token blocks the ones behind it [MQTT-4.6.0-2].
    deferred: VecDeque<(Option<Token>, Deferred)>,
    /// Output from this offset of `out` on waits until the log has committed this
    /// record sequence number (durability `sync`).
    gate: Option<(usize, u64)>,
    /// The CONNECT user name (kept to re-derive `policy` when the authorizer changes).
    username: Option<ByteString>,
    /// Input decoding stopped for the output backlog (counted once per pause).
    input_paused: bool,
    /// Publish-rate token bucket (`Limits::publish_rate_max`), made at the first PUBLISH
    /// when a rate is set (off by default): an idle connection does not carry it.
    rate: Option<Box<PublishRate>>,
    /// What this client may publish and subscribe to; `None`: everything.
    policy: Option<Box<dyn ClientPolicy>>,
    /// Measured deliveries in `out`: where each PUBLISH ends in `out`, and when its
    /// message was read from its publisher (see [`ShardCore::take_output_timed`]).
    delivery_times: Vec<(usize, Instant)>,
}

impl Conn {
    /// Whether its policy lets this client read a message published to `topic` (no
    /// policy: everything).
    fn may_read(&self, topic: &TopicName) -> bool {
        self.policy
            .as_ref()
            .is_none_or(|policy| policy.may_read(topic.as_str()))
    }
}

/// A connection's publish-rate token bucket.
#[derive(Debug)]
struct PublishRate {
    /// Tokens, and when they were counted.
    tokens: f64,
    counted_at_ms: u64,
    /// Input waits until then: the connection is over its publish rate.
    throttled_until_ms: Option<u64>,
}

/// One shard's protocol state. See the module docs.
#[derive(Debug)]
pub struct ShardCore {
    id: ShardId,
    shard_count: u16,
    limits: Limits,
    /// Boxed, like the sessions: a hash table or slab holds its values inline, and at a
    /// typical fill of 50-90% the empty slots of 240-byte values would cost more than
    /// the values (this is most of an idle connection's memory).
    conns: AHashMap<ConnId, Box<Conn>>,
    sessions: Slab<Box<Session>>,
    session_index: AHashMap<ByteString, SessionKey>,
    /// Local subscriptions: (filter, session) -> granted QoS.
    subscriptions: Trie<SessionKey, QoS>,
    /// How many local sessions subscribe with each exact filter; 0 -> 1 and 1 -> 0 are
    /// announced to the other shards.
    local_filters: AHashMap<TopicFilter, u32>,
    /// The barrier of each local filter's last announcement (0 -> 1). A later subscriber
    /// to the same filter waits for it too while it is pending: its SUBACK must not
    /// overtake the peers learning of the interest.
    announcements: AHashMap<TopicFilter, Token>,
    /// Other shards' interest: (filter, shard).
    interest: Trie<ShardId, ()>,
    /// The retained messages, replicated on every shard, with the version of the update
    /// that wrote each. A cleared topic keeps its version (and no message) so that an
    /// older update arriving late cannot bring the message back.
    retained: AHashMap<TopicName, (RetainedVersion, Option<Message>)>,
    /// Lamport clock of retained-store updates: the highest version clock seen.
    retained_clock: u64,
    /// Messages held in `retained` (cleared topics excluded), and their bytes (topic and
    /// payload): what `retained_messages_max` and `retained_bytes_max` bound.
    retained_stored: usize,
    retained_bytes: usize,
    /// `$SYS/` topics held in `retained` (not bounded: the broker publishes a fixed set).
    retained_sys: usize,
    /// Offline persistent sessions in the order they went offline, with when they
    /// expire (`persistent_session_expiry_ms`): `tick` removes those still offline
    /// since then. A session that came back and left again has a later entry.
    expiring: VecDeque<(u64, ByteString)>,
    /// Barriers in flight: token -> (acks still missing, connections waiting).
    barriers: AHashMap<Token, (u16, Vec<ConnId>)>,
    /// The session of the QoS 2 PUBLISH whose PUBREC waits for a barrier (the
    /// connection may be gone by the time the barrier fails, the session not).
    inbound_barriers: AHashMap<Token, SessionKey>,
    next_token: u64,
    mesh_out: Vec<(ShardId, MeshMessage)>,
    woken: Vec<ConnId>,
    match_scratch: Vec<(SessionKey, QoS)>,
    id_counter: u64,
    /// The time of the latest call that passed one in.
    now_ms: u64,
    /// A live session whose queue passed its high watermark during the latest call: the
    /// runtime paces the input that caused it (see [`ShardCore::take_pressure`]).
    pressure: Option<SessionKey>,
    /// The write-ahead log's side in the core; `None`: nothing is logged.
    log: Option<Log>,
    /// Makes each connection's policy; `None`: everything is allowed.
    authorizer: Option<Arc<dyn Authorizer>>,
    /// This shard's instances of the message plugins (see [`crate::plugin`]).
    plugins: Vec<Box<dyn MessagePlugin>>,
    /// The plugins' internal subscriptions on this (their home) shard: (filter,
    /// plugin index).
    plugin_subscriptions: Trie<usize, ()>,
    /// Connections closed for a malformed packet or a protocol violation, for the
    /// runtime's ban table (see [`ShardCore::drain_violations`]).
    violations: Vec<ConnId>,
    /// Forward ids of QoS 2 messages other shards forwarded here and have not released
    /// (see [`MeshMessage::Publish`]).
    forwarded: ahash::AHashSet<u128>,
    /// This incarnation of the shard (unique across restarts) in the high bits, a
    /// counter in the low bits: the next forward id.
    next_forward_id: u128,
    /// When the bytes being handled were read (see [`ShardCore::handle_bytes_at`]).
    input_at: Option<Instant>,
    /// Counters, read by the runtime.
    pub stats: ShardStats,
}

impl ShardCore {
    /// A shard `id` of `shard_count`.
    pub fn new(id: ShardId, shard_count: u16, limits: Limits) -> ShardCore {
        assert!(id.0 < shard_count, "shard id {id} out of {shard_count}");
        ShardCore {
            id,
            shard_count,
            limits,
            conns: AHashMap::new(),
            sessions: Slab::new(),
            session_index: AHashMap::new(),
            subscriptions: Trie::new(),
            local_filters: AHashMap::new(),
            announcements: AHashMap::new(),
            interest: Trie::new(),
            retained: AHashMap::new(),
            retained_clock: 0,
            retained_stored: 0,
            retained_bytes: 0,
            retained_sys: 0,
            expiring: VecDeque::new(),
            barriers: AHashMap::new(),
            inbound_barriers: AHashMap::new(),
            next_token: 0,
            mesh_out: Vec::new(),
            woken: Vec::new(),
            match_scratch: Vec::new(),
            id_counter: 0,
            now_ms: 0,
            pressure: None,
            log: None,
            authorizer: None,
            plugins: Vec::new(),
            plugin_subscriptions: Trie::new(),
            violations: Vec::new(),
            forwarded: ahash::AHashSet::new(),
            next_forward_id: (u128::from(id.0) << 48) | 1,
            input_at: None,
            stats: ShardStats::default(),
        }
    }

    /// Logs persistent sessions and retained messages (see [`ShardCore::take_records`]),
    /// acknowledging as `durability` says.
    pub fn with_durability(mut self, durability: Durability) -> ShardCore {
        self.log = Some(Log {
            durability,
            records: Vec::new(),
            appended: 0,
            committed: 0,
            mesh_acks: VecDeque::new(),
            gated: Vec::new(),
            mesh_hold: None,
            healthy: true,
        });
        self
    }

    /// Replaces the authorizer; the policies of open connections are derived again.
    pub fn set_authorizer(&mut self, authorizer: Option<Arc<dyn Authorizer>>) {
        self.authorizer = authorizer;
        let mut conns: Vec<ConnId> = self.conns.keys().copied().collect();
        conns.sort_unstable();
        for conn_id in conns {
            let Some(conn) = self.conns.get(&conn_id) else {
                continue;
            };
            let Some(key) = conn.session else { continue };
            let policy = self.authorizer.as_ref().map(|a| {
                a.policy(&Identity {
                    client_id: &self.sessions[key].client_id,
                    username: conn.username.as_deref(),
                })
            });
            if let Some(conn) = self.conns.get_mut(&conn_id) {
                conn.policy = policy;
            }
        }
    }

    /// Adds a message plugin instance. On its `home` shard its internal subscriptions
    /// are made (and announced to the other shards, like a client's). Call before any
    /// client connects.
    pub fn add_plugin(&mut self, plugin: Box<dyn MessagePlugin>, home: bool) {
        let index = self.plugins.len();
        if home {
            for filter in plugin.subscriptions() {
                self.plugin_subscriptions.insert(&filter, index, ());
                if self.add_local_filter(&filter) {
                    self.broadcast(|| MeshMessage::Interest {
                        filter: filter.clone(),
                        add: true,
                        ack: None,
                    });
                }
            }
        }
        tracing::info!(shard = %self.id, plugin = plugin.name(), home, "plugin loaded");
        self.plugins.push(plugin);
    }

    /// Publishes what plugins derived (bounded per call).
    fn publish_derived(&mut self, derived: Vec<PluginMessage>) {
        let count = derived.len();
        for message in derived.into_iter().take(DERIVED_PER_CALL_MAX) {
            self.route(
                Message {
                    topic: message.topic,
                    payload: message.payload,
                    qos: message.qos,
                    retain: message.retain,
                    received_at: None,
                },
                false,
                None,
                true,
            );
        }
        self.stats.plugin_derived_total += count.min(DERIVED_PER_CALL_MAX) as u64;
        self.stats.plugin_derived_dropped_total +=
            count.saturating_sub(DERIVED_PER_CALL_MAX) as u64;
    }

    /// Connections closed for a malformed packet or protocol violation since the last
    /// call (the runtime counts them against the client's address).
    pub fn drain_violations(&mut self, into: &mut Vec<ConnId>) {
        into.append(&mut self.violations);
    }

    /// Sets this run's incarnation, a number no earlier run of the shard used (the
    /// runtime passes the start time in nanoseconds): forward ids are unique across
    /// restarts because they start with it.
    pub fn set_incarnation(&mut self, incarnation: u64) {
        self.next_forward_id = (u128::from(incarnation) << 64) | (u128::from(self.id.0) << 48) | 1;
    }

    /// Forward ids of forwarded QoS 2 messages not yet released (for tests).
    pub fn forwarded_ids(&self) -> impl Iterator<Item = u128> + '_ {
        self.forwarded.iter().copied()
    }

    /// Rebuilds the persistent sessions and the retained messages this shard owns from
    /// its recovered log. Call once, before any connection; every peer must restore
    /// before clients connect (the subscriptions are announced over the mesh and the
    /// retained messages replicated: see [`ShardCore::drain_mesh`]). Entries that no
    /// longer parse (a topic this build rejects) are skipped, logged and counted.
    pub fn restore(&mut self, state: &DurableState) {
        for (client_id, stored) in state.sessions() {
            let mut session = Session::new(ByteString::from(client_id.as_str()), false);
            let mut filters = Vec::new();
            for (filter, qos) in stored.subscriptions() {
                match (
                    TopicFilter::new(filter.as_str()),
                    QoS::from_u8(*qos).ok_or(()),
                ) {
                    (Ok(filter), Ok(qos)) => {
                        session.subscriptions.insert(filter.clone(), qos);
                        filters.push((filter, qos));
                    }
                    _ => self.skip_restored("subscription", client_id, filter),
                }
            }
            let mut last_id = 0;
            for (packet_id, inflight) in stored.inflight_in_order() {
                let (Some(message), Some(packet_id)) = (
                    self.restored_message(client_id, &inflight.message),
                    PacketId::new(packet_id),
                ) else {
                    continue;
                };
                let state = match (inflight.phase, message.qos) {
                    (InflightPhase::Released, _) => OutboundState::AwaitingPubComp,
                    (_, QoS::ExactlyOnce) => OutboundState::AwaitingPubRec,
                    _ => OutboundState::AwaitingPubAck,
                };
                last_id = last_id.max(inflight.message.message_id);
                session.inflight.push_back(Inflight {
                    packet_id,
                    message,
                    state,
                    message_id: inflight.message.message_id,
                });
            }
            for stored_message in stored.queue() {
                if let Some(message) = self.restored_message(client_id, stored_message) {
                    last_id = last_id.max(stored_message.message_id);
                    session.queue.push_back(Queued {
                        message,
                        message_id: stored_message.message_id,
                    });
                }
            }
            session.next_message_id = last_id + 1;
            for (packet_id, forward_id) in stored.inbound_qos2() {
                if let Some(packet_id) = PacketId::new(*packet_id) {
                    session.inbound_qos2.insert(
                        packet_id,
                        Inbound {
                            token: None,
                            forward_id: *forward_id,
                            restored: true,
                        },
                    );
                }
            }
            let key = self.sessions.insert(Box::new(session));
            self.session_index
                .insert(ByteString::from(client_id.as_str()), key);
            self.stats.sessions_current += 1;
            let expiry_ms = self.limits.persistent_session_expiry_ms;
            if expiry_ms > 0 {
                // Offline since the start, as far as this run knows.
                self.sessions[key].last_progress_ms = self.now_ms;
                self.expiring.push_back((
                    self.now_ms + expiry_ms,
                    ByteString::from(client_id.as_str()),
                ));
            }
            for (filter, qos) in filters {
                self.subscriptions.insert(&filter, key, qos);
                if self.add_local_filter(&filter) {
                    self.broadcast(|| MeshMessage::Interest {
                        filter: filter.clone(),
                        add: true,
                        ack: None,
                    });
                }
            }
        }
        self.forwarded.extend(state.forwarded().iter().copied());
        for (topic, retained) in state.retained() {
            let (Ok(topic), Ok(qos)) = (
                TopicName::new(topic.as_str()),
                QoS::from_u8(retained.qos).ok_or(()),
            ) else {
                self.skip_restored("retained message", "", topic);
                continue;
            };
            let message = Message {
                topic,
                payload: bytes::Bytes::from(retained.payload.clone()),
                qos,
                retain: true,
                received_at: None,
            };
            self.retained_clock += 1;
            let version = RetainedVersion {
                clock: self.retained_clock,
                shard: self.id,
            };
            // Recovered whatever the bounds: they were admitted when published.
            self.retained_stored += 1;
            self.retained_bytes += retained_size(&message);
            self.retained
                .insert(message.topic.clone(), (version, Some(message.clone())));
            self.broadcast(|| MeshMessage::Retained {
                message: message.clone(),
                version,
            });
        }
    }

    fn restored_message(
        &mut self,
        client_id: &str,
        stored: &cutie_persistence::Message,
    ) -> Option<Message> {
        match (
            TopicName::new(stored.topic.as_str()),
            QoS::from_u8(stored.qos).ok_or(()),
        ) {
            (Ok(topic), Ok(qos)) => Some(Message {
                topic,
                payload: bytes::Bytes::from(stored.payload.clone()),
                qos,
                retain: stored.retain,
                received_at: None,
            }),
            _ => {
                self.skip_restored("message", client_id, &stored.topic);
                None
            }
        }
    }

    fn skip_restored(&mut self, what: &str, client_id: &str, topic: &str) {
        tracing::warn!(shard = %self.id, client_id, topic, "skipping a recovered {what} this build cannot use");
        self.stats.restore_skipped_total += 1;
    }

    /// Records produced since the last call, for the write-ahead log, and the sequence
    /// number of the last one (pass it to [`ShardCore::records_committed`] once they are
    /// committed).
    pub fn take_records(&mut self, into: &mut Vec<Record>) -> u64 {
        match &mut self.log {
            Some(log) => {
                into.append(&mut log.records);
                log.appended
            }
            None => 0,
        }
    }

    /// Whether the records waiting for the log writer reached
    /// `Limits::log_pending_records_max`: the runtime reads nothing more (sockets, mesh)
    /// until the writer has taken them.
    pub fn log_backlogged(&self) -> bool {
        self.log
            .as_ref()
            .is_some_and(|log| log.records.len() >= self.limits.log_pending_records_max.max(1))
    }

    /// Whether records wait to be taken.
    pub fn has_records(&self) -> bool {
        self.log.as_ref().is_some_and(|log| !log.records.is_empty())
    }

    /// The log has committed every record up to sequence number `seq`: release the
    /// output and mesh acknowledgements that waited for them.
    pub fn records_committed(&mut self, seq: u64) {
        let Some(log) = &mut self.log else { return };
        log.committed = log.committed.max(seq);
        let committed = log.committed;
        if log.mesh_hold.is_some_and(|(_, needed)| needed <= committed) {
            log.mesh_hold = None;
        }
        while let Some(&(needed, to, token)) = log.mesh_acks.front() {
            if needed > committed {
                break;
            }
            log.mesh_acks.pop_front();
            self.mesh_out.push((to, MeshMessage::Ack(token)));
        }
        let mut gated = std::mem::take(&mut log.gated);
        let mut released = Vec::new();
        gated.retain(|conn_id| {
            let Some(conn) = self.conns.get_mut(conn_id) else {
                return false;
            };
            match conn.gate {
                Some((_, needed)) if needed > committed => true,
                _ => {
                    conn.gate = None;
                    released.push(*conn_id);
                    false
                }
            }
        });
        if let Some(log) = &mut self.log {
            log.gated = gated;
        }
        for conn_id in released {
            self.wake(conn_id);
        }
    }

    /// Writing or syncing the log failed: what waits for a commit never gets it. QoS 1/2
    /// publishes are refused from now on (the connection is closed without an
    /// acknowledgement), QoS 0 keeps flowing. Connections with held acknowledgements are
    /// closed: their clients resend after reconnecting.
    pub fn log_failed(&mut self) {
        let Some(log) = &mut self.log else { return };
        if !log.healthy {
            return;
        }
        log.healthy = false;
        // Peers wait for these: what they forwarded is applied here but will not be
        // committed. Say so, or their publishers wait for ever.
        for (_, to, token) in std::mem::take(&mut log.mesh_acks) {
            self.mesh_out.push((to, MeshMessage::Nack(token)));
        }
        let Some(log) = &mut self.log else { return };
        // Nothing will be committed: what was held goes now (durability is void until
        // the log is reopened, and QoS 1/2 publishes are refused meanwhile).
        log.mesh_hold = None;
        let mut gated = std::mem::take(&mut log.gated);
        gated.sort_unstable();
        for conn_id in gated {
            if let Some(conn) = self.conns.get_mut(&conn_id) {
                if let Some((offset, _)) = conn.gate.take() {
                    conn.out.truncate(offset);
                }
            }
            self.close_conn(conn_id, true);
        }
    }

    /// The log was reopened and holds the shard's state again, as of record `seq`.
    pub fn log_recovered(&mut self, seq: u64) {
        if let Some(log) = &mut self.log {
            log.healthy = true;
        }
        self.records_committed(seq);
    }

    /// Whether the log takes records (always true when nothing is logged).
    pub fn log_healthy(&self) -> bool {
        self.log.as_ref().is_none_or(|log| log.healthy)
    }

    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// The limits this shard enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A fresh client id owned by this shard, for a client that connected with an empty
    /// one and clean session 1 [MQTT-3.1.3-6].
    pub fn generate_client_id(&mut self) -> ByteString {
        loop {
            self.id_counter += 1;
            let candidate = format!(
                "cutie-{:04x}-{:012x}-{:08x}",
                self.id.0,
                self.id_counter,
                rand::random::<u32>()
            );
            if owner_of(&candidate, self.shard_count) == self.id {
                return ByteString::from(candidate);
            }
        }
    }

    /// Number of sessions (online and offline).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Number of attached connections (closing ones excluded).
    pub fn connection_count(&self) -> usize {
        self.conns.values().filter(|c| !c.closing).count()
    }

    /// Number of (filter, session) subscriptions on this shard.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.retained_stored + self.retained_sys
    }

    /// Bytes (topics and payloads) of the retained messages held.
    pub fn retained_bytes(&self) -> usize {
        self.retained_bytes
    }

    /// Whether the shard `shard` has announced interest in a filter matching `topic`.
    pub fn peer_interested(&self, shard: ShardId, topic: &TopicName) -> bool {
        let mut found = false;
        self.interest
            .for_each_match(topic, |s, _| found |= s == shard);
        found
    }

    /// Whether `conn_id` is attached and not closing: false once the core has decided to
    /// close it (takeover, keep-alive, protocol error, DISCONNECT, refused CONNECT), even
    /// before its writer has taken the final output (for tests and the admin API).
    pub fn connection_open(&self, conn_id: ConnId) -> bool {
        self.conns.get(&conn_id).is_some_and(|c| !c.closing)
    }

    /// The session of `client_id`, if this shard holds one (for tests and the admin API).
    pub fn session(&self, client_id: &str) -> Option<&Session> {
        self.session_index
            .get(client_id)
            .and_then(|k| self.sessions.get(*k))
            .map(|session| &**session)
    }

    /// Every session this shard holds (for tests and the admin API).
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.iter().map(|(_, session)| &**session)
    }

    /// Every retained message this shard holds (its replica of the whole store).
    pub fn retained_messages(&self) -> impl Iterator<Item = &Message> {
        self.retained.values().filter_map(|(_, m)| m.as_ref())
    }

    // ----- connections --------------------------------------------------------------

    /// A connection whose CONNECT was read (by the runtime, on this or another shard).
    /// Answers CONNACK. Returns whether the connection was accepted; if not, it is
    /// already closing.
    pub fn connect(&mut self, conn_id: ConnId, connect: Connect, now_ms: u64) -> bool {
        self.now_ms = self.now_ms.max(now_ms);
        let mut conn = Conn {
            session: None,
            decoder: Decoder::new(self.limits.packet_size_max),
            out: BytesMut::new(),
            closing: false,
            woken: false,
            keep_alive_limit_ms: u64::from(connect.keep_alive_secs) * 1500,
            last_seen_ms: now_ms,
            deferred: VecDeque::new(),
            gate: None,
            username: connect.username.clone(),
            input_paused: false,
            rate: None,
            policy: None,
            delivery_times: Vec::new(),
        };

        let refuse = |core: &mut ShardCore, mut conn: Conn, code: ConnectReturnCode| {
            Packet::ConnAck(ConnAck {
                session_present: false,
                return_code: code,
            })
            .encode(&mut conn.out);
            conn.closing = true;
            core.stats.connections_refused_total += 1;
            core.conns.insert(conn_id, Box::new(conn));
            core.wake(conn_id);
            false
        };

        if !connect.clean_session && !self.log_healthy() {
            // A persistent session cannot be promised while the log takes nothing.
            tracing::debug!(
                conn = conn_id.0,
                "write-ahead log unhealthy: refusing a persistent session"
            );
            return refuse(self, conn, ConnectReturnCode::ServerUnavailable);
        }
        let client_id = if connect.client_id.is_empty() {
            if !connect.clean_session {
                // [MQTT-3.1.3-8]: an empty client id needs clean session 1.
                return refuse(self, conn, ConnectReturnCode::IdentifierRejected);
            }
            self.generate_client_id()
        } else {
            connect.client_id.clone()
        };
        if connect.protocol == ProtocolLevel::V3_1 && client_id.len() > 23 {
            // MQTT 3.1 limits client ids to 23 characters.
            return refuse(self, conn, ConnectReturnCode::IdentifierRejected);
        }
        // Credentials were checked by the runtime before the connection got here
        // (crate::access); what the client may do is decided once, now.
        if let Some(authorizer) = &self.authorizer {
            let policy = authorizer.policy(&Identity {
                client_id: &client_id,
                username: connect.username.as_deref(),
            });
            if let Some(will) = &connect.will {
                if !policy.may_publish(will.topic.as_str()) {
                    // Mosquitto's answer to a will the client may not publish.
                    self.stats.publish_denied_total += 1;
                    return refuse(self, conn, ConnectReturnCode::NotAuthorized);
                }
            }
            conn.policy = Some(policy);
        }

        let mut session_present = false;
        if let Some(&key) = self.session_index.get(&client_id) {
            if let Some(old_conn) = self.sessions[key].conn {
                self.stats.takeovers_total += 1;
                self.close_conn(old_conn, true);
            }
        }
        let key = match self.session_index.get(&client_id).copied() {
            Some(key) if connect.clean_session => {
                self.destroy_session(key);
                None
            }
            other => other,
        };
        let key = match key {
            Some(key) => {
                session_present = true;
                if self.sessions[key].clean_session && !connect.clean_session {
                    // A live clean session (taken over) becomes persistent: log it whole.
                    self.sessions[key].clean_session = false;
                    self.log_session(key);
                }
                key
            }
            None => {
                let key = self.sessions.insert(Box::new(Session::new(
                    client_id.clone(),
                    connect.clean_session,
                )));
                self.session_index.insert(client_id.clone(), key);
                self.stats.sessions_current += 1;
                if !connect.clean_session {
                    log_record(&mut self.log, || Record::SessionPut {
                        client_id: client_id.to_string(),
                    });
                }
                key
            }
        };
        let session = &mut self.sessions[key];
        session.clean_session = connect.clean_session;
        session.will = connect.will.map(Box::new);
        session.conn = Some(conn_id);
        session.last_progress_ms = self.now_ms;
        conn.session = Some(key);
        gate_output(&mut self.log, conn_id, &mut conn);
        Packet::ConnAck(ConnAck {
            session_present,
            return_code: ConnectReturnCode::Accepted,
        })
        .encode(&mut conn.out);
        self.conns.insert(conn_id, Box::new(conn));
        self.stats.connections_total += 1;
        self.stats.connections_current += 1;
        if !self.plugins.is_empty() {
            let client = Identity {
                client_id: &client_id,
                username: connect.username.as_deref(),
            };
            for plugin in &mut self.plugins {
                plugin.on_connect(&client);
            }
        }
        self.resume_session(key);
        self.wake(conn_id);
        true
    }

    /// Bytes read from a connection. Decodes and handles every complete packet in `buf`,
    /// leaving an incomplete tail. A malformed packet or a protocol violation closes the
    /// connection (its will is published).
    pub fn handle_bytes(&mut self, conn_id: ConnId, buf: &mut BytesMut, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        loop {
            let Some(conn) = self.conns.get_mut(&conn_id) else {
                buf.clear();
                return;
            };
            if conn.closing {
                buf.clear();
                return;
            }
            conn.last_seen_ms = now_ms;
            // The client is owed more than it takes (it pipelines requests and does not
            // read the answers): stop here; the runtime reads no more of its socket
            // until the writer has drained what is owed (see `input_paused`).
            if Self::conn_backlogged(&self.limits, conn) {
                if !conn.input_paused {
                    conn.input_paused = true;
                    self.stats.input_paused_total += 1;
                }
                return;
            }
            conn.input_paused = false;
            let rate = self.limits.publish_rate_max;
            // A PUBLISH is next (its fixed header's type is 3): take a token, or wait.
            if rate > 0 && buf.first().is_some_and(|b| b >> 4 == 3) {
                // A new bucket starts full, as it would have at CONNECT.
                let bucket = conn.rate.get_or_insert_with(|| {
                    Box::new(PublishRate {
                        tokens: f64::from(rate),
                        counted_at_ms: now_ms,
                        throttled_until_ms: None,
                    })
                });
                let elapsed_ms = now_ms.saturating_sub(bucket.counted_at_ms);
                bucket.tokens = (bucket.tokens + elapsed_ms as f64 * f64::from(rate) / 1000.0)
                    .min(f64::from(rate));
                bucket.counted_at_ms = now_ms;
                if bucket.tokens < 1.0 {
                    let wait_ms = ((1.0 - bucket.tokens) * 1000.0 / f64::from(rate)).ceil();
                    if bucket.throttled_until_ms.is_none() {
                        self.stats.publish_throttled_total += 1;
                    }
                    bucket.throttled_until_ms = Some(now_ms + (wait_ms as u64).max(1));
                    return;
                }
                bucket.tokens -= 1.0;
            }
            if let Some(bucket) = conn.rate.as_mut() {
                bucket.throttled_until_ms = None;
            }
            match conn.decoder.decode(buf) {
                Ok(Some(packet)) => self.handle_packet(conn_id, packet),
                Ok(None) => return,
                Err(error) => {
                    tracing::debug!(conn = conn_id.0, %error, "malformed packet, closing");
                    self.stats.protocol_errors_total += 1;
                    self.violations.push(conn_id);
                    if matches!(error, cutie_codec::DecodeError::PacketTooLarge { .. }) {
                        self.stats.packets_too_large_total += 1;
                    }
                    self.close_conn(conn_id, true);
                    buf.clear();
                    return;
                }
            }
        }
    }

    /// [`ShardCore::handle_bytes`] for bytes the runtime read at `read_at`: the messages
    /// they publish carry it, and their deliveries to online subscribers are measured
    /// from it (see [`ShardCore::take_output_timed`]).
    pub fn handle_bytes_at(
        &mut self,
        conn_id: ConnId,
        buf: &mut BytesMut,
        now_ms: u64,
        read_at: Instant,
    ) {
        self.input_at = Some(read_at);
        self.handle_bytes(conn_id, buf, now_ms);
        self.input_at = None;
    }

    /// Whether a connection's output backlog is over its bounds: more than
    /// `outbound_buffer_bytes_max` bytes waiting to be written, or
    /// [`DEFERRED_ACKS_MAX`] acknowledgements waiting for barriers.
    fn conn_backlogged(limits: &Limits, conn: &Conn) -> bool {
        conn.out.len() >= limits.outbound_buffer_bytes_max
            || conn.deferred.len() >= DEFERRED_ACKS_MAX
    }

    /// Whether [`ShardCore::handle_bytes`] stopped decoding `conn_id`'s input because
    /// the connection is owed more than its bounds allow (a client that pipelines
    /// requests and never reads the answers). The runtime then reads nothing more from
    /// its socket, so TCP backpressure reaches the client, and calls `handle_bytes`
    /// again with the same buffer once the writer has taken the output or barriers have
    /// completed. Memory per such connection stays under about twice
    /// `outbound_buffer_bytes_max` (what waits here, and what the writer holds) plus a
    /// read buffer of at most `packet_size_max`.
    pub fn input_paused(&self, conn_id: ConnId) -> bool {
        self.conns
            .get(&conn_id)
            .is_some_and(|c| !c.closing && Self::conn_backlogged(&self.limits, c))
    }

    /// When a connection over its publish rate may go on: the runtime stops reading its
    /// socket and calls [`ShardCore::handle_bytes`] again with the same buffer then.
    pub fn throttled_until(&self, conn_id: ConnId) -> Option<u64> {
        self.conns
            .get(&conn_id)
            .filter(|c| !c.closing)
            .and_then(|c| c.rate.as_ref()?.throttled_until_ms)
    }

    /// The socket of `conn_id` failed or reached end of file without DISCONNECT.
    pub fn connection_lost(&mut self, conn_id: ConnId, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        if self.conns.get(&conn_id).is_some_and(|c| !c.closing) {
            self.close_conn(conn_id, true);
        }
        self.conns.remove(&conn_id);
    }

    /// The writer of a closing connection has flushed and closed the socket.
    pub fn conn_closed(&mut self, conn_id: ConnId) {
        self.conns.remove(&conn_id);
    }

    /// Periodic work: keep-alive expiry [MQTT-3.1.2-24], persistent sessions past
    /// `persistent_session_expiry_ms`.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.expire_sessions();
        if !self.plugins.is_empty() {
            let mut derived = Vec::new();
            for plugin in &mut self.plugins {
                plugin.on_tick(now_ms, &mut derived);
            }
            if !derived.is_empty() {
                self.publish_derived(derived);
            }
        }
        let mut expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !c.closing
                    && c.keep_alive_limit_ms > 0
                    && now_ms.saturating_sub(c.last_seen_ms) > c.keep_alive_limit_ms
            })
            .map(|(id, _)| *id)
            .collect();
        // Hash-map order is random per process: sort, so wills go out in the same order
        // for the same inputs (the deterministic simulation depends on it).
        expired.sort_unstable();
        for conn_id in expired {
            tracing::debug!(conn = conn_id.0, "keep-alive expired");
            self.stats.keep_alive_expired_total += 1;
            self.close_conn(conn_id, true);
        }
    }

    /// Removes the persistent sessions offline for `persistent_session_expiry_ms`, from
    /// memory and (`SessionDrop`) from the log. Amortized O(1) per disconnect: entries
    /// are in expiry order, and one whose session came back since is skipped.
    fn expire_sessions(&mut self) {
        let expiry_ms = self.limits.persistent_session_expiry_ms;
        while let Some((expires_ms, _)) = self.expiring.front() {
            if *expires_ms > self.now_ms {
                break;
            }
            let Some((_, client_id)) = self.expiring.pop_front() else {
                break;
            };
            let Some(&key) = self.session_index.get(&client_id) else {
                continue;
            };
            let session = &self.sessions[key];
            if session.conn.is_some()
                || session.clean_session
                || session.last_progress_ms + expiry_ms > self.now_ms
            {
                continue;
            }
            tracing::info!(shard = %self.id, %client_id, "persistent session expired");
            self.stats.sessions_expired_total += 1;
            self.destroy_session(key);
        }
    }

    /// Closes every connection (broker shutdown). Wills are not published: the client
    /// did nothing wrong, and persistent sessions stay.
    pub fn close_all(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn_id in ids {
            self.close_conn(conn_id, false);
        }
    }

    /// Hands the pending output of `conn_id` to its writer by swapping it with `buf`
    /// (which should be empty: buffers are reused, not reallocated).
    pub fn take_output(&mut self, conn_id: ConnId, buf: &mut BytesMut) -> OutputState {
        let mut times = Vec::new();
        self.take_output_timed(conn_id, buf, &mut times)
    }

    /// [`ShardCore::take_output`], also appending to `times` when each measured PUBLISH
    /// in the handed-over bytes was read from its publisher. The runtime records, once
    /// the bytes are written to the socket, the time since: the delivery latency, from
    /// the read of the PUBLISH (on whichever shard) to the write of the delivery. Measured
    /// are the messages a client published that were sent to a subscriber online at the
    /// time they were routed (QoS 0 sent at once; QoS 1/2 when they enter the inflight
    /// window, after any wait in the session's queue); not wills, retained messages sent
    /// on subscribe, re-sends, nor messages queued while the subscriber was offline.
    pub fn take_output_timed(
        &mut self,
        conn_id: ConnId,
        buf: &mut BytesMut,
        times: &mut Vec<Instant>,
    ) -> OutputState {
        match self.conns.get_mut(&conn_id) {
            None => OutputState::Gone,
            Some(conn) => {
                conn.woken = false;
                if let Some((offset, _)) = conn.gate {
                    if conn.closing {
                        // Acknowledgements that never became durable are not sent.
                        conn.out.truncate(offset);
                        conn.gate = None;
                        conn.delivery_times.retain(|(end, _)| *end <= offset);
                    } else {
                        // Only what precedes the gate may go now.
                        buf.extend_from_slice(&conn.out[..offset]);
                        let _ = conn.out.split_to(offset);
                        conn.gate = Some((0, conn.gate.map_or(0, |(_, seq)| seq)));
                        let sent = conn
                            .delivery_times
                            .iter()
                            .take_while(|(end, _)| *end <= offset)
                            .count();
                        times.extend(conn.delivery_times.drain(..sent).map(|(_, at)| at));
                        for (end, _) in &mut conn.delivery_times {
                            *end -= offset;
                        }
                        return OutputState::Open;
                    }
                }
                times.extend(conn.delivery_times.drain(..).map(|(_, at)| at));
                std::mem::swap(&mut conn.out, buf);
                if conn.closing {
                    OutputState::Close
                } else {
                    OutputState::Open
                }
            }
        }
    }

    /// Connections with new output since the last call.
    pub fn drain_woken(&mut self, into: &mut Vec<ConnId>) {
        into.append(&mut self.woken);
    }

    /// Mesh messages produced and not yet drained (held ones included), for tests.
    pub fn pending_mesh(&self) -> impl Iterator<Item = &(ShardId, MeshMessage)> {
        self.mesh_out.iter()
    }

    /// Whether mesh output is held for a commit (see [`ShardCore::drain_mesh`]).
    pub fn has_held_mesh(&self) -> bool {
        self.log.as_ref().is_some_and(|log| log.mesh_hold.is_some())
    }

    /// Messages for other shards produced since the last call (those behind a hold
    /// wait for a commit: see [`ShardCore::records_committed`]).
    pub fn drain_mesh(&mut self, into: &mut Vec<(ShardId, MeshMessage)>) {
        match self.log.as_mut().and_then(|log| log.mesh_hold.as_mut()) {
            Some((index, _)) => {
                into.extend(self.mesh_out.drain(..*index));
                *index = 0;
            }
            None => into.append(&mut self.mesh_out),
        }
    }

    /// Publishes `message` on behalf of the broker (the `$SYS` topics): routed like a
    /// client's QoS 0 publish (retained if `message.retain`), with no acknowledgement and
    /// not counted as received from a client. Retained `$SYS/` topics are not logged:
    /// they are published again every interval.
    pub fn publish_internal(&mut self, message: Message, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let local = message.clone();
        let _ = self.route(message, false, None, false);
        self.deliver_local(&local);
    }

    /// A message from shard `from`.
    pub fn handle_mesh(&mut self, from: ShardId, message: MeshMessage) {
        self.stats.mesh_received_total += 1;
        match message {
            MeshMessage::Publish {
                message,
                ack,
                retained,
                forward_id,
            } => {
                let appended_before = self.log.as_ref().map_or(0, |log| log.appended);
                if let (true, Some(version)) = (message.retain, retained) {
                    self.store_retained(&message, version);
                }
                let mut duplicate = false;
                match forward_id {
                    Some(id) if self.forwarded.contains(&id) => {
                        // A second forward of a QoS 2 message delivered here already.
                        self.stats.forward_duplicates_total += 1;
                        duplicate = true;
                    }
                    Some(id) => {
                        self.deliver_local(&message);
                        self.forwarded.insert(id);
                        // After the deliveries' records: if this one is durable, so are they.
                        log_record(&mut self.log, || Record::ForwardSeen { forward_id: id });
                    }
                    None => {
                        self.deliver_local(&message);
                    }
                }
                if let Some(token) = ack {
                    // Logged now, or (a second forward) maybe not committed before the
                    // log failed: not durable here.
                    let failed = self.log.as_ref().is_some_and(|log| {
                        !log.healthy && (duplicate || log.appended > appended_before)
                    });
                    if failed {
                        self.mesh_out.push((from, MeshMessage::Nack(token)));
                    } else {
                        self.ack_when_committed(from, token);
                    }
                }
            }
            MeshMessage::Retained { message, version } => {
                self.store_retained(&message, version);
            }
            MeshMessage::ForwardDone { forward_id } => {
                if self.forwarded.remove(&forward_id) {
                    log_record(&mut self.log, || Record::ForwardDone { forward_id });
                }
            }
            MeshMessage::Interest { filter, add, ack } => {
                if add {
                    self.interest.insert(&filter, from, ());
                } else {
                    self.interest.remove(&filter, from);
                }
                if let Some(token) = ack {
                    self.mesh_out.push((from, MeshMessage::Ack(token)));
                }
            }
            MeshMessage::Ack(token) => {
                let done = match self.barriers.get_mut(&token) {
                    Some((remaining, _)) => {
                        *remaining = remaining.saturating_sub(1);
                        *remaining == 0
                    }
                    None => false,
                };
                if done {
                    self.inbound_barriers.remove(&token);
                    if let Some((_, waiting)) = self.barriers.remove(&token) {
                        for conn_id in waiting {
                            self.flush_deferred(conn_id);
                        }
                    }
                }
            }
            MeshMessage::Nack(token) => self.fail_barrier(token),
        }
    }

    /// A peer could not make durable what it got under `token`: the barrier fails. Its
    /// waiting connections are closed with what they are owed from the failed
    /// acknowledgement on (their clients send those messages again, as when this shard's
    /// own log fails), and a QoS 2 PUBLISH that waited for it is routed again, under the
    /// same forward id, when it is re-sent: it never waits on a dead barrier, and a peer
    /// that did take it delivers it once.
    fn fail_barrier(&mut self, token: Token) {
        let Some((_, waiting)) = self.barriers.remove(&token) else {
            return;
        };
        self.stats.barriers_failed_total += 1;
        if let Some(key) = self.inbound_barriers.remove(&token) {
            if let Some(session) = self.sessions.get_mut(key) {
                for entry in session.inbound_qos2.values_mut() {
                    if entry.token == Some(token) {
                        entry.token = None;
                        entry.restored = true;
                    }
                }
            }
        }
        for conn_id in waiting {
            let Some(conn) = self.conns.get_mut(&conn_id) else {
                continue;
            };
            // Acknowledgements behind the failed one are not sent either: in order, or
            // not at all [MQTT-4.6.0-2].
            if let Some(position) = conn.deferred.iter().position(|(t, _)| *t == Some(token)) {
                conn.deferred.truncate(position);
            }
            tracing::debug!(
                conn = conn_id.0,
                "a peer shard's log failed: closing without the acknowledgement"
            );
            self.close_conn(conn_id, true);
        }
    }

    /// Holds mesh output from `index` of `mesh_out` on until everything logged so far is
    /// committed (durability `sync` only).
    fn hold_mesh_from(&mut self, index: usize) {
        let Some(log) = &mut self.log else { return };
        if !log.must_wait() {
            return;
        }
        let appended = log.appended;
        match &mut log.mesh_hold {
            Some((_, seq)) => *seq = appended,
            None => log.mesh_hold = Some((index, appended)),
        }
    }

    /// Acknowledges a mesh message to `to` once what handling it logged is committed
    /// (at once when nothing waits for the log).
    fn ack_when_committed(&mut self, to: ShardId, token: Token) {
        match &mut self.log {
            Some(log) if log.must_wait() => log.mesh_acks.push_back((log.appended, to, token)),
            _ => self.mesh_out.push((to, MeshMessage::Ack(token))),
        }
    }

    /// Logs the whole of a session that just became persistent.
    fn log_session(&mut self, key: SessionKey) {
        let Some(log) = &mut self.log else { return };
        let session = &self.sessions[key];
        let client_id = || session.client_id.to_string();
        let mut records = vec![Record::SessionPut {
            client_id: client_id(),
        }];
        let mut filters: Vec<(&TopicFilter, &QoS)> = session.subscriptions.iter().collect();
        filters.sort_unstable();
        for (filter, qos) in filters {
            records.push(Record::Subscribe {
                client_id: client_id(),
                filter: filter.to_string(),
                qos: *qos as u8,
            });
        }
        for inflight in &session.inflight {
            records.push(queued_record(
                session,
                &inflight.message,
                inflight.message_id,
            ));
            records.push(Record::MessageSent {
                client_id: client_id(),
                message_id: inflight.message_id,
                packet_id: inflight.packet_id.get(),
            });
            if inflight.state == OutboundState::AwaitingPubComp {
                records.push(Record::MessageReleased {
                    client_id: client_id(),
                    packet_id: inflight.packet_id.get(),
                });
            }
        }
        for queued in &session.queue {
            records.push(queued_record(session, &queued.message, queued.message_id));
        }
        let mut inbound: Vec<(&PacketId, &Inbound)> = session.inbound_qos2.iter().collect();
        inbound.sort_unstable_by_key(|(packet_id, _)| **packet_id);
        for (packet_id, entry) in inbound {
            records.push(Record::InboundQos2 {
                client_id: client_id(),
                packet_id: packet_id.get(),
                forward_id: entry.forward_id,
            });
        }
        log.appended += records.len() as u64;
        log.records.append(&mut records);
    }

    // ----- packets ------------------------------------------------------------------

    fn handle_packet(&mut self, conn_id: ConnId, packet: Packet) {
        let Some(key) = self.conns.get(&conn_id).and_then(|c| c.session) else {
            return;
        };
        match packet {
            Packet::Publish(publish) => self.handle_publish(conn_id, key, publish),
            Packet::PubAck(packet_id) => {
                self.complete_outbound(key, packet_id, OutboundState::AwaitingPubAck)
            }
            Packet::PubRec(packet_id) => self.handle_pubrec(conn_id, key, packet_id),
            Packet::PubRel(packet_id) => {
                // Answer PUBCOMP even for an id we do not hold: after a lost PUBCOMP the
                // client re-sends PUBREL on reconnect and must get its PUBCOMP [MQTT-4.3.3-2].
                let session = &mut self.sessions[key];
                match session.inbound_qos2.remove(&packet_id) {
                    None => self.stats.unknown_packet_id_total += 1,
                    Some(entry) => {
                        if session.is_persistent() {
                            log_record(&mut self.log, || Record::InboundQos2Released {
                                client_id: session.client_id.to_string(),
                                packet_id: packet_id.get(),
                            });
                        }
                        if entry.forward_id != 0 {
                            // Best effort: a receiver that misses this keeps the id,
                            // which no later message reuses.
                            let forward_id = entry.forward_id;
                            self.broadcast(|| MeshMessage::ForwardDone { forward_id });
                        }
                    }
                }
                self.send_ack(conn_id, None, Deferred::Packet(Packet::PubComp(packet_id)));
            }
            Packet::PubComp(packet_id) => {
                self.complete_outbound(key, packet_id, OutboundState::AwaitingPubComp)
            }
            Packet::Subscribe(subscribe) => self.handle_subscribe(conn_id, key, subscribe),
            Packet::Unsubscribe(unsubscribe) => self.handle_unsubscribe(conn_id, key, unsubscribe),
            Packet::PingReq => self.send_packet(conn_id, &Packet::PingResp),
            Packet::Disconnect => {
                // A clean disconnect discards the will [MQTT-3.14.4-3].
                self.sessions[key].will = None;
                self.close_conn(conn_id, false);
            }
            Packet::Connect(_) => {
                // A second CONNECT is a protocol violation [MQTT-3.1.0-2].
                tracing::debug!(conn = conn_id.0, "second CONNECT, closing");
                self.stats.protocol_errors_total += 1;
                self.violations.push(conn_id);
                self.close_conn(conn_id, true);
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                tracing::debug!(
                    conn = conn_id.0,
                    "server-to-client packet from a client, closing"
                );
                self.stats.protocol_errors_total += 1;
                self.violations.push(conn_id);
                self.close_conn(conn_id, true);
            }
        }
    }

    fn handle_publish(&mut self, conn_id: ConnId, key: SessionKey, publish: Publish) {
        let qos = publish.qos.qos();
        self.stats.publish_received_total[qos as usize] += 1;
        self.stats.publish_received_bytes_total += publish.payload.len() as u64;
        if qos != QoS::AtMostOnce && !self.log_healthy() {
            // Nothing could make this message durable: no acknowledgement, and the
            // client keeps it to resend.
            tracing::debug!(
                conn = conn_id.0,
                "write-ahead log unhealthy: refusing a QoS 1/2 publish"
            );
            self.stats.publish_refused_log_failed_total += 1;
            self.close_conn(conn_id, true);
            return;
        }
        if !self.may_publish(conn_id, &publish.topic) {
            // Not allowed (ACL) or too deep: dropped, and still acknowledged, since
            // MQTT 3.1.1 has no way to refuse a PUBLISH.
            tracing::debug!(conn = conn_id.0, topic = %publish.topic, "publish denied");
            self.stats.publish_denied_total += 1;
            self.acknowledge_unrouted(conn_id, publish.qos);
            return;
        }
        // Plugins see each message once: not a QoS 2 PUBLISH re-sent while its packet id
        // still waits for PUBREL.
        let mut publish = publish;
        let mut derived = Vec::new();
        let resent = matches!(publish.qos, PublishQos::ExactlyOnce(id)
            if self.sessions[key].inbound_qos2.contains_key(&id));
        if !self.plugins.is_empty() && !resent {
            let mut message = PluginMessage {
                topic: publish.topic.clone(),
                payload: publish.payload.clone(),
                qos,
                retain: publish.retain,
            };
            let (client_id, username) = self.names(conn_id, key);
            let client = Identity {
                client_id: &client_id,
                username: username.as_deref(),
            };
            let mut verdict = PublishVerdict::Pass;
            for plugin in &mut self.plugins {
                if plugin.on_publish(&client, &mut message, &mut derived) == PublishVerdict::Drop {
                    verdict = PublishVerdict::Drop;
                    break;
                }
            }
            if verdict == PublishVerdict::Drop {
                self.stats.plugin_dropped_total += 1;
                self.publish_derived(derived);
                self.acknowledge_unrouted(conn_id, publish.qos);
                return;
            }
            publish.topic = message.topic;
            publish.payload = message.payload;
            publish.retain = message.retain;
        }
        let message = Message {
            topic: publish.topic,
            payload: publish.payload,
            qos,
            retain: publish.retain,
            received_at: self.input_at,
        };
        match publish.qos {
            PublishQos::AtMostOnce => {
                self.route(message, false, None, true);
            }
            PublishQos::AtLeastOnce(packet_id) => {
                let token = self.route(message, true, None, true);
                self.send_ack(conn_id, token, Deferred::Packet(Packet::PubAck(packet_id)));
            }
            PublishQos::ExactlyOnce(packet_id) => {
                // Route only the first time: a re-sent PUBLISH with an id still awaiting
                // PUBREL is the same message [MQTT-4.3.3-2]. Its PUBREC still waits for
                // the first one's barrier (the first PUBREC may have been lost with its
                // connection before that barrier completed).
                //
                // After a restart the first one's local deliveries are in the log (they
                // precede its InboundQos2 record) but its forwards may not have been
                // committed by their shards: forward it again under the same forward id,
                // which those shards deliver once.
                let token = match self.sessions[key].inbound_qos2.get(&packet_id).copied() {
                    Some(first) if first.restored => {
                        let forward_id = (first.forward_id != 0).then_some(first.forward_id);
                        let token = self.route(message, true, forward_id, false);
                        if let Some(token) = token {
                            self.inbound_barriers.insert(token, key);
                        }
                        if let Some(entry) = self.sessions[key].inbound_qos2.get_mut(&packet_id) {
                            entry.restored = false;
                            entry.token = token;
                        }
                        token
                    }
                    Some(first) => first
                        .token
                        .filter(|token| self.barriers.contains_key(token)),
                    None => {
                        let forward_id = (self.log.is_some()
                            && self.shard_count > 1
                            && self.sessions[key].is_persistent())
                        .then(|| {
                            let id = self.next_forward_id;
                            self.next_forward_id += 1;
                            id
                        });
                        let first_forward = self.mesh_out.len();
                        let token = self.route(message, true, forward_id, true);
                        if let Some(token) = token {
                            self.inbound_barriers.insert(token, key);
                        }
                        let session = &mut self.sessions[key];
                        session.inbound_qos2.insert(
                            packet_id,
                            Inbound {
                                token,
                                forward_id: forward_id.unwrap_or(0),
                                restored: false,
                            },
                        );
                        if session.is_persistent() {
                            log_record(&mut self.log, || Record::InboundQos2 {
                                client_id: session.client_id.to_string(),
                                packet_id: packet_id.get(),
                                forward_id: forward_id.unwrap_or(0),
                            });
                        }
                        if forward_id.is_some() {
                            self.hold_mesh_from(first_forward);
                        }
                        token
                    }
                };
                self.send_ack(conn_id, token, Deferred::Packet(Packet::PubRec(packet_id)));
            }
        }
        if !derived.is_empty() {
            self.publish_derived(derived);
        }
    }

    fn handle_pubrec(&mut self, conn_id: ConnId, key: SessionKey, packet_id: PacketId) {
        let session = &mut self.sessions[key];
        session.last_progress_ms = self.now_ms;
        match session.inflight_position(packet_id) {
            Some(pos) if session.inflight[pos].state != OutboundState::AwaitingPubAck => {
                if session.inflight[pos].state == OutboundState::AwaitingPubRec
                    && session.is_persistent()
                {
                    log_record(&mut self.log, || Record::MessageReleased {
                        client_id: session.client_id.to_string(),
                        packet_id: packet_id.get(),
                    });
                }
                session.inflight[pos].state = OutboundState::AwaitingPubComp;
                if let Some(conn) = self.conns.get_mut(&conn_id) {
                    // The PUBREL waits for MessageReleased: a restart must not resend the
                    // PUBLISH after a PUBREL went out [MQTT-4.3.3-1].
                    gate_output(&mut self.log, conn_id, conn);
                }
                self.send_packet(conn_id, &Packet::PubRel(packet_id));
            }
            _ => self.stats.unknown_packet_id_total += 1,
        }
    }

    fn complete_outbound(&mut self, key: SessionKey, packet_id: PacketId, state: OutboundState) {
        let session = &mut self.sessions[key];
        session.last_progress_ms = self.now_ms;
        match session.inflight_position(packet_id) {
            Some(pos) if session.inflight[pos].state == state => {
                session.inflight.remove(pos);
                if session.is_persistent() {
                    log_record(&mut self.log, || Record::MessageDone {
                        client_id: session.client_id.to_string(),
                        packet_id: packet_id.get(),
                    });
                }
                self.pump(key);
            }
            _ => self.stats.unknown_packet_id_total += 1,
        }
    }

    /// Whether the client on `conn_id` may publish to `topic` (its policy and the topic
    /// depth limit).
    fn may_publish(&self, conn_id: ConnId, topic: &TopicName) -> bool {
        self.topic_within_limits(topic.as_str())
            && self
                .conns
                .get(&conn_id)
                .and_then(|c| c.policy.as_ref())
                .is_none_or(|policy| policy.may_publish(topic.as_str()))
    }

    /// Whether a topic name or filter is within `topic_levels_max` and `topic_bytes_max`.
    fn topic_within_limits(&self, topic: &str) -> bool {
        let levels_max = self.limits.topic_levels_max;
        let bytes_max = self.limits.topic_bytes_max;
        // A topic has at most one level more than it has bytes: short ones need no count.
        (levels_max == 0 || topic.len() < levels_max || topic.split('/').count() <= levels_max)
            && (bytes_max == 0 || topic.len() <= bytes_max)
    }

    /// The client id and user name of a connection, owned (ByteStrings: cheap clones),
    /// for an [`Identity`] that outlives borrows of the core.
    fn names(&self, conn_id: ConnId, key: SessionKey) -> (ByteString, Option<ByteString>) {
        (
            self.sessions[key].client_id.clone(),
            self.conns.get(&conn_id).and_then(|c| c.username.clone()),
        )
    }

    /// Acknowledges a PUBLISH that is not routed (denied, or dropped by a plugin): MQTT
    /// 3.1.1 cannot refuse one, so QoS 1/2 still get their PUBACK/PUBREC.
    fn acknowledge_unrouted(&mut self, conn_id: ConnId, qos: PublishQos) {
        let ack = match qos {
            PublishQos::AtMostOnce => return,
            PublishQos::AtLeastOnce(packet_id) => Packet::PubAck(packet_id),
            PublishQos::ExactlyOnce(packet_id) => Packet::PubRec(packet_id),
        };
        self.send_ack(conn_id, None, Deferred::Packet(ack));
    }

    fn handle_subscribe(&mut self, conn_id: ConnId, key: SessionKey, mut subscribe: Subscribe) {
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut announce = Vec::new();
        // Earlier announcements of these filters that not every peer has applied yet:
        // this SUBACK waits for them too.
        let mut pending = Vec::new();
        let subscriptions_max = self.limits.subscriptions_per_client_max;
        let mut refused = Vec::new();
        // Plugins first: they may reject a filter or rewrite it.
        let mut plugin_rejected = Vec::new();
        if !self.plugins.is_empty() {
            let (client_id, username) = self.names(conn_id, key);
            let client = Identity {
                client_id: &client_id,
                username: username.as_deref(),
            };
            for (i, requested) in subscribe.filters.iter_mut().enumerate() {
                for plugin in &mut self.plugins {
                    match plugin.on_subscribe(&client, &requested.filter) {
                        SubscribeVerdict::Accept => {}
                        SubscribeVerdict::Rewrite(filter) => requested.filter = filter,
                        SubscribeVerdict::Reject => {
                            plugin_rejected.push(i);
                            break;
                        }
                    }
                }
            }
        }
        for (i, SubscribeFilter { filter, qos }) in subscribe.filters.iter().enumerate() {
            let policy = self.conns.get(&conn_id).and_then(|c| c.policy.as_ref());
            let session = &self.sessions[key];
            let allowed = policy.is_none_or(|p| p.may_subscribe(filter.as_str()))
                && self.topic_within_limits(filter.as_str())
                && !plugin_rejected.contains(&i)
                && (subscriptions_max == 0
                    || session.subscriptions.len() < subscriptions_max
                    || session.subscriptions.contains_key(filter));
            if !allowed {
                tracing::debug!(conn = conn_id.0, %filter, "subscription refused");
                self.stats.subscribe_denied_total += 1;
                codes.push(SubscribeReturnCode::Failure);
                refused.push(i);
                continue;
            }
            // Granted at the QoS asked for.
            let granted = *qos;
            let previous = self.subscriptions.insert(filter, key, granted);
            let session = &mut self.sessions[key];
            session.subscriptions.insert(filter.clone(), granted);
            if session.is_persistent() {
                log_record(&mut self.log, || Record::Subscribe {
                    client_id: session.client_id.to_string(),
                    filter: filter.to_string(),
                    qos: granted as u8,
                });
            }
            if previous.is_none() && self.add_local_filter(filter) {
                announce.push(filter.clone());
            } else if let Some(&token) = self.announcements.get(filter) {
                if self.barriers.contains_key(&token) && !pending.contains(&token) {
                    pending.push(token);
                }
            }
            codes.push(SubscribeReturnCode::Success(granted));
        }
        // One barrier for the whole SUBSCRIBE: the mesh is FIFO per pair, so a peer that
        // acknowledges the last announcement has applied all of them.
        let barrier = (!announce.is_empty()).then(|| self.new_barrier(conn_id));
        let last = announce.len().saturating_sub(1);
        for (i, filter) in announce.into_iter().enumerate() {
            let ack = if i == last { barrier } else { None };
            self.broadcast(|| MeshMessage::Interest {
                filter: filter.clone(),
                add: true,
                ack,
            });
            if let Some(token) = barrier {
                self.announcements.insert(filter, token);
            }
        }
        for token in pending {
            self.send_ack(conn_id, Some(token), Deferred::Barrier);
        }
        let packet = Packet::SubAck(cutie_codec::SubAck {
            packet_id: subscribe.packet_id,
            return_codes: codes,
        });
        self.send_ack(conn_id, barrier, Deferred::Packet(packet));
        // Retained messages follow the SUBACK, for new and replaced subscriptions alike.
        for i in refused.into_iter().rev() {
            subscribe.filters.remove(i);
        }
        self.send_ack(conn_id, None, Deferred::Retained(subscribe.filters));
    }

    fn handle_unsubscribe(&mut self, conn_id: ConnId, key: SessionKey, unsubscribe: Unsubscribe) {
        for filter in &unsubscribe.filters {
            if self.remove_subscription(key, filter) && self.sessions[key].is_persistent() {
                let session = &self.sessions[key];
                log_record(&mut self.log, || Record::Unsubscribe {
                    client_id: session.client_id.to_string(),
                    filter: filter.to_string(),
                });
            }
        }
        self.send_ack(
            conn_id,
            None,
            Deferred::Packet(Packet::UnsubAck(unsubscribe.packet_id)),
        );
    }

    // ----- sessions -----------------------------------------------------------------

    /// Re-sends the inflight window (DUP set, PUBREL for those past PUBREC) and fills it
    /// from the queue, after a client reconnects to a stored session [MQTT-4.4.0-1].
    fn resume_session(&mut self, key: SessionKey) {
        let session = &mut self.sessions[key];
        let Some(conn_id) = session.conn else { return };
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        // Messages sent under rules that no longer let this client read them are not
        // sent again (a PUBREL still is: the message itself was delivered).
        if let Some(policy) = &conn.policy {
            let log = &mut self.log;
            let stats = &mut self.stats;
            let persistent = session.is_persistent();
            let client_id = &session.client_id;
            session.inflight.retain(|inflight| {
                let keep = inflight.state == OutboundState::AwaitingPubComp
                    || policy.may_read(inflight.message.topic.as_str());
                if !keep {
                    stats.deliveries_denied_total += 1;
                    if persistent {
                        log_record(log, || Record::MessageDone {
                            client_id: client_id.to_string(),
                            packet_id: inflight.packet_id.get(),
                        });
                    }
                }
                keep
            });
        }
        let session = &self.sessions[key];
        if !session.inflight.is_empty() {
            gate_output(&mut self.log, conn_id, conn);
        }
        for inflight in &session.inflight {
            match inflight.state {
                OutboundState::AwaitingPubComp => {
                    Packet::PubRel(inflight.packet_id).encode(&mut conn.out)
                }
                _ => encode_publish(
                    &mut conn.out,
                    &inflight.message,
                    Some(inflight.packet_id),
                    true,
                ),
            }
        }
        self.pump(key);
    }

    /// Moves queued messages into the inflight window while there is room and the client
    /// is online.
    fn pump(&mut self, key: SessionKey) {
        let inflight_max = self.limits.inflight_max;
        let session = &mut self.sessions[key];
        let Some(conn_id) = session.conn else { return };
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let mut sent = false;
        while session.window_has_room(inflight_max) {
            let Some(Queued {
                message,
                message_id,
            }) = session.queue.pop_front()
            else {
                break;
            };
            // Read access is checked as the message goes out, against the policy of the
            // connection now: an ACL reload, or the client coming back under other
            // rules, withholds what it queued under the old ones.
            if !conn.may_read(&message.topic) {
                self.stats.deliveries_denied_total += 1;
                if session.is_persistent() {
                    log_record(&mut self.log, || Record::MessageDiscarded {
                        client_id: session.client_id.to_string(),
                        message_id,
                    });
                }
                continue;
            }
            let packet_id = session.allocate_packet_id();
            if session.is_persistent() {
                log_record(&mut self.log, || Record::MessageSent {
                    client_id: session.client_id.to_string(),
                    message_id,
                    packet_id: packet_id.get(),
                });
                if message.qos == QoS::ExactlyOnce {
                    // Sent only once MessageSent is durable: a restart must resend it
                    // under the same packet id, never deliver it twice.
                    gate_output(&mut self.log, conn_id, conn);
                }
            }
            encode_publish(&mut conn.out, &message, Some(packet_id), false);
            if let Some(at) = message.received_at {
                conn.delivery_times.push((conn.out.len(), at));
            }
            self.stats.publish_sent_total[message.qos as usize] += 1;
            self.stats.publish_sent_bytes_total += message.payload.len() as u64;
            let state = if message.qos == QoS::ExactlyOnce {
                OutboundState::AwaitingPubRec
            } else {
                OutboundState::AwaitingPubAck
            };
            session.inflight.push_back(Inflight {
                packet_id,
                message,
                state,
                message_id,
            });
            sent = true;
        }
        if sent {
            self.wake(conn_id);
        }
    }

    /// Detaches and closes a connection. Publishes its will if `publish_will`; ends the
    /// session if it was a clean one.
    fn close_conn(&mut self, conn_id: ConnId, publish_will: bool) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.closing = true;
        conn.deferred.clear();
        let session_key = conn.session.take();
        self.wake(conn_id);
        let Some(key) = session_key else { return };
        self.stats.connections_current = self.stats.connections_current.saturating_sub(1);
        for plugin in &mut self.plugins {
            plugin.on_disconnect(&self.sessions[key].client_id);
        }
        let session = &mut self.sessions[key];
        if session.conn == Some(conn_id) {
            session.conn = None;
            // Offline from now (`last_progress_ms` matters only while online).
            session.last_progress_ms = self.now_ms;
            let expiry_ms = self.limits.persistent_session_expiry_ms;
            if expiry_ms > 0 && !session.clean_session {
                self.expiring
                    .push_back((self.now_ms + expiry_ms, session.client_id.clone()));
            }
        }
        let will = session.will.take();
        let clean = session.clean_session;
        if let (true, Some(will)) = (publish_will, will) {
            self.stats.wills_published_total += 1;
            self.route(
                Message {
                    topic: will.topic,
                    payload: will.payload,
                    qos: will.qos,
                    retain: will.retain,
                    received_at: None,
                },
                false,
                None,
                true,
            );
        }
        if clean {
            self.destroy_session(key);
        }
    }

    /// Removes a session and all its subscriptions.
    fn destroy_session(&mut self, key: SessionKey) {
        let mut filters: Vec<TopicFilter> =
            self.sessions[key].subscriptions.keys().cloned().collect();
        // Deterministic order of the Interest messages this may send.
        filters.sort_unstable();
        for filter in &filters {
            self.remove_subscription(key, filter);
        }
        let session = self.sessions.remove(key);
        if session.is_persistent() {
            log_record(&mut self.log, || Record::SessionDrop {
                client_id: session.client_id.to_string(),
            });
        }
        self.session_index.remove(&session.client_id);
        self.stats.sessions_current = self.stats.sessions_current.saturating_sub(1);
    }

    /// Removes one subscription; false when the session did not have it.
    fn remove_subscription(&mut self, key: SessionKey, filter: &TopicFilter) -> bool {
        if self.subscriptions.remove(filter, key).is_none() {
            return false;
        }
        self.sessions[key].subscriptions.remove(filter);
        if let Some(count) = self.local_filters.get_mut(filter) {
            *count -= 1;
            if *count == 0 {
                self.local_filters.remove(filter);
                self.announcements.remove(filter);
                self.broadcast(|| MeshMessage::Interest {
                    filter: filter.clone(),
                    add: false,
                    ack: None,
                });
            }
        }
        true
    }

    /// Counts a local session subscribing with `filter`; true when it is the first.
    fn add_local_filter(&mut self, filter: &TopicFilter) -> bool {
        let count = self.local_filters.entry(filter.clone()).or_insert(0);
        *count += 1;
        *count == 1 && self.shard_count > 1
    }

    // ----- routing ------------------------------------------------------------------

    /// Routes a message published on this shard: updates the retained store, forwards it
    /// to the shards that want it (under `forward_id`, if any) and, with `local`,
    /// delivers it to this shard's sessions. With `want_barrier`, a retained update is
    /// acknowledged only once every shard holds it (and, with durability `sync`, any
    /// message once every shard it went to has committed it); the token to wait for is
    /// returned.
    fn route(
        &mut self,
        message: Message,
        want_barrier: bool,
        forward_id: Option<u128>,
        local: bool,
    ) -> Option<Token> {
        let mut token = None;
        let mut matched = false;
        let mut message = message;
        if message.retain && !message.payload.is_empty() {
            if self.retained_admits(&message) {
                // Kept for long, by every shard: in allocations of its own, not pinning
                // the read buffer it was decoded from.
                message = detached(&message);
            } else {
                // Delivered like any message, but not stored.
                self.stats.retained_refused_total += 1;
                message.retain = false;
            }
        }
        if message.retain {
            self.retained_clock += 1;
            let version = RetainedVersion {
                clock: self.retained_clock,
                shard: self.id,
            };
            self.store_retained(&message, version);
            if self.shard_count > 1 {
                let barrier = want_barrier.then(|| self.new_barrier_unowned());
                token = barrier;
                self.broadcast(|| MeshMessage::Publish {
                    message: message.clone(),
                    ack: barrier,
                    retained: Some(version),
                    forward_id,
                });
                matched = self.interest_set(&message.topic).iter().next().is_some();
            }
        } else if self.shard_count > 1 {
            let shards = self.interest_set(&message.topic);
            // With durability `sync` the acknowledgement waits for every shard that got
            // the message to commit what it logged (its persistent subscribers' queues).
            let barrier = if want_barrier
                && self
                    .log
                    .as_ref()
                    .is_some_and(|log| log.durability == Durability::Sync)
            {
                let count = shards.iter().count() as u16;
                (count > 0).then(|| self.new_barrier_counted(count))
            } else {
                None
            };
            token = barrier;
            for shard in shards.iter() {
                matched = true;
                self.stats.forwarded_total += 1;
                self.mesh_out.push((
                    shard,
                    MeshMessage::Publish {
                        message: message.clone(),
                        ack: barrier,
                        retained: None,
                        forward_id,
                    },
                ));
            }
        }
        if local && !self.deliver_local(&message) && !matched {
            self.stats.dropped_no_subscribers_total += 1;
        }
        token
    }

    /// Whether the retained store may take `message` (a non-empty retained publish made
    /// on this shard) within `retained_messages_max` and `retained_bytes_max`: a new
    /// topic needs room in both; replacing a stored one needs room only for what it
    /// adds. The broker's own `$SYS/` topics are always taken. Only the publishing
    /// shard decides: replicas apply what it sends, so the store is the same
    /// everywhere (concurrent publishes on several shards may pass the bounds by what
    /// is in flight between them).
    fn retained_admits(&self, message: &Message) -> bool {
        if message.topic.as_str().starts_with("$SYS/") {
            return true;
        }
        let messages_max = self.limits.retained_messages_max;
        let bytes_max = self.limits.retained_bytes_max;
        let size = retained_size(message);
        match self.retained.get(&message.topic) {
            Some((_, Some(old))) => {
                let old = retained_size(old);
                bytes_max == 0 || size <= old || self.retained_bytes - old + size <= bytes_max
            }
            _ => {
                (messages_max == 0 || self.retained_stored < messages_max)
                    && (bytes_max == 0 || self.retained_bytes + size <= bytes_max)
            }
        }
    }

    fn interest_set(&self, topic: &TopicName) -> ShardSet {
        let mut shards = ShardSet::default();
        self.interest
            .for_each_match(topic, |shard, _| shards.insert(shard));
        shards
    }

    /// Applies a retained-store update unless the topic holds a newer one (see
    /// [`RetainedVersion`]).
    fn store_retained(&mut self, message: &Message, version: RetainedVersion) {
        self.retained_clock = self.retained_clock.max(version.clock);
        if let Some((held, _)) = self.retained.get(&message.topic) {
            if *held >= version {
                return;
            }
        }
        // An empty retained message clears the topic [MQTT-3.3.1-10].
        let value = (!message.payload.is_empty()).then(|| message.clone());
        // The broker's own `$SYS/` topics (a fixed set) do not count against the limits:
        // published during a flood, they would take the places of clients' topics.
        let sys = message.topic.as_str().starts_with("$SYS/");
        if let Some((_, Some(old))) = self.retained.get(&message.topic) {
            if sys {
                self.retained_sys -= 1;
            } else {
                self.retained_stored -= 1;
                self.retained_bytes -= retained_size(old);
            }
        }
        if let Some(new) = &value {
            if sys {
                self.retained_sys += 1;
            } else {
                self.retained_stored += 1;
                self.retained_bytes += retained_size(new);
            }
        }
        // Every shard holds every retained message; the topic's owner shard logs it
        // (not the broker's own `$SYS/` topics, published again every interval).
        if owner_of(message.topic.as_str(), self.shard_count) == self.id
            && !message.topic.as_str().starts_with("$SYS/")
        {
            log_record(&mut self.log, || match &value {
                Some(message) => Record::RetainSet {
                    topic: message.topic.to_string(),
                    payload: message.payload.to_vec(),
                    qos: message.qos as u8,
                },
                None => Record::RetainClear {
                    topic: message.topic.to_string(),
                },
            });
        }
        self.retained
            .insert(message.topic.clone(), (version, value));
    }

    /// Delivers to every local session with a matching subscription, once per session at
    /// the highest granted QoS. Returns whether any session matched.
    fn deliver_local(&mut self, message: &Message) -> bool {
        let mut matches = std::mem::take(&mut self.match_scratch);
        matches.clear();
        self.subscriptions
            .for_each_match(&message.topic, |key, qos| matches.push((key, *qos)));
        if matches.len() > 1 {
            // Overlapping subscriptions of one session: one delivery, highest QoS.
            matches.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            matches.dedup_by_key(|m| m.0);
        }
        let mut any = !matches.is_empty();
        // What waits for an offline session may wait long: it gets a copy in allocations
        // of its own (made once, shared by every offline session), so it does not pin
        // the read buffer the message was decoded from.
        let mut offline_copy: Option<Message> = None;
        for &(key, granted) in &matches {
            let qos = granted.min(message.qos);
            let offline = qos != QoS::AtMostOnce && self.sessions[key].conn.is_none();
            let message = match offline {
                true => &*offline_copy.get_or_insert_with(|| detached(message)),
                false => message,
            };
            // Delivered because of an existing subscription: retain flag 0 [MQTT-3.3.1-9].
            self.deliver(key, message, qos, false);
        }
        self.match_scratch = matches;
        if !self.plugins.is_empty() {
            let mut plugins = Vec::new();
            self.plugin_subscriptions
                .for_each_match(&message.topic, |index, _| plugins.push(index));
            plugins.sort_unstable();
            plugins.dedup();
            if !plugins.is_empty() {
                any = true;
                let seen = PluginMessage {
                    topic: message.topic.clone(),
                    payload: message.payload.clone(),
                    qos: message.qos,
                    retain: message.retain,
                };
                for index in plugins {
                    if let Some(plugin) = self.plugins.get_mut(index) {
                        plugin.on_message(&seen, self.now_ms);
                    }
                }
            }
        }
        any
    }

    /// Delivers `message` to one session at `qos`, sending, queueing or dropping it.
    fn deliver(&mut self, key: SessionKey, message: &Message, qos: QoS, retain: bool) {
        let session = &mut self.sessions[key];
        let conn = session
            .conn
            .and_then(|id| self.conns.get_mut(&id).map(|c| (id, c)));
        // Read access, per message (queued messages are checked again when they go out:
        // the policy may change before).
        if let Some((_, conn)) = &conn {
            if !conn.may_read(&message.topic) {
                self.stats.deliveries_denied_total += 1;
                return;
            }
        }
        // Latency is measured for live traffic to online subscribers only.
        let received_at = message.received_at.filter(|_| !retain && conn.is_some());
        let outgoing = || Message {
            topic: message.topic.clone(),
            payload: message.payload.clone(),
            qos,
            retain,
            received_at,
        };
        if qos == QoS::AtMostOnce {
            match conn {
                Some((conn_id, conn)) => {
                    if conn.out.len() >= self.limits.outbound_buffer_bytes_max {
                        self.count_drop(DropReason::OutboundBufferFull);
                        return;
                    }
                    encode_publish(&mut conn.out, &outgoing(), None, false);
                    if let Some(at) = received_at {
                        conn.delivery_times.push((conn.out.len(), at));
                    }
                    self.stats.publish_sent_total[0] += 1;
                    self.stats.publish_sent_bytes_total += message.payload.len() as u64;
                    self.wake(conn_id);
                }
                None => self.count_drop(DropReason::Offline),
            }
            return;
        }
        if session.queue.len() >= self.limits.queued_max {
            self.count_drop(DropReason::QueueFull);
            return;
        }
        let message_id = session.take_message_id();
        let queued = Queued {
            message: outgoing(),
            message_id,
        };
        if session.is_persistent() {
            log_record(&mut self.log, || {
                queued_record(session, &queued.message, message_id)
            });
        }
        session.queue.push_back(queued);
        self.pump(key);
        if self.is_congested_above(key, self.limits.queue_high_watermark()) {
            self.pressure = Some(key);
        }
    }

    /// Whether `key` is a live session (online, acknowledging within `stall_ms`) whose
    /// queue holds at least `len` messages.
    fn is_congested_above(&self, key: SessionKey, len: usize) -> bool {
        self.sessions.get(key).is_some_and(|session| {
            session.conn.is_some()
                && session.queue.len() >= len.max(1)
                && self.now_ms.saturating_sub(session.last_progress_ms) < self.limits.stall_ms
        })
    }

    /// A live session that the latest calls pushed past its queue's high watermark, if
    /// any. The runtime then stops taking input from the source of those messages (the
    /// publisher's socket, or the mesh channel from its shard) until
    /// [`ShardCore::is_congested`] turns false: a slow subscriber paces its publishers
    /// instead of losing what they sent, while a stalled one does not slow anyone.
    pub fn take_pressure(&mut self) -> Option<SessionKey> {
        self.pressure.take()
    }

    /// Whether [`ShardCore::take_pressure`] has something to take.
    pub fn has_pressure(&self) -> bool {
        self.pressure.is_some()
    }

    /// Whether a paced publisher should keep waiting for `key` (see
    /// [`ShardCore::take_pressure`]): the session is still live and its queue is still
    /// above the low watermark.
    pub fn is_congested(&self, key: SessionKey, now_ms: u64) -> bool {
        let now_ms = self.now_ms.max(now_ms);
        self.sessions.get(key).is_some_and(|session| {
            session.conn.is_some()
                && session.queue.len() > self.limits.queue_low_watermark()
                && now_ms.saturating_sub(session.last_progress_ms) < self.limits.stall_ms
        })
    }

    fn count_drop(&mut self, reason: DropReason) {
        match reason {
            DropReason::QueueFull => self.stats.dropped_queue_full_total += 1,
            DropReason::OutboundBufferFull => self.stats.dropped_outbound_full_total += 1,
            DropReason::Offline => self.stats.dropped_offline_total += 1,
        }
    }

    // ----- output -------------------------------------------------------------------

    fn wake(&mut self, conn_id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&conn_id) {
            if !conn.woken {
                conn.woken = true;
                self.woken.push(conn_id);
            }
        }
    }

    fn send_packet(&mut self, conn_id: ConnId, packet: &Packet) {
        if let Some(conn) = self.conns.get_mut(&conn_id) {
            packet.encode(&mut conn.out);
            self.wake(conn_id);
        }
    }

    /// Sends an acknowledgement in order: after every earlier one, and not before
    /// `token`'s barrier (if any) completes.
    fn send_ack(&mut self, conn_id: ConnId, token: Option<Token>, deferred: Deferred) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if let Some(token) = token {
            if let Some((_, waiting)) = self.barriers.get_mut(&token) {
                if !waiting.contains(&conn_id) {
                    waiting.push(conn_id);
                }
            }
        }
        conn.deferred.push_back((token, deferred));
        self.flush_deferred(conn_id);
    }

    fn flush_deferred(&mut self, conn_id: ConnId) {
        loop {
            let Some(conn) = self.conns.get_mut(&conn_id) else {
                return;
            };
            let ready = match conn.deferred.front() {
                Some((Some(token), _)) => !self.barriers.contains_key(token),
                Some((None, _)) => true,
                None => false,
            };
            if !ready {
                return;
            }
            let Some((_, deferred)) = conn.deferred.pop_front() else {
                return;
            };
            match deferred {
                Deferred::Packet(packet) => {
                    gate_output(&mut self.log, conn_id, conn);
                    packet.encode(&mut conn.out);
                    self.wake(conn_id);
                }
                Deferred::Retained(filters) => self.send_retained(conn_id, &filters),
                Deferred::Barrier => {}
            }
        }
    }

    fn send_retained(&mut self, conn_id: ConnId, filters: &[SubscribeFilter]) {
        let Some(key) = self.conns.get(&conn_id).and_then(|c| c.session) else {
            return;
        };
        let mut found: Vec<(Message, QoS)> = Vec::new();
        for SubscribeFilter { filter, qos } in filters {
            let start = found.len();
            for message in self.retained.values().filter_map(|(_, m)| m.as_ref()) {
                if filter.matches(&message.topic) {
                    found.push((message.clone(), (*qos).min(message.qos)));
                }
            }
            // By topic, not hash-map order: the same inputs give the same output.
            found[start..].sort_unstable_by(|a, b| a.0.topic.cmp(&b.0.topic));
        }
        for (message, qos) in found {
            // Sent because of a new subscription: retain flag 1 [MQTT-3.3.1-8].
            self.deliver(key, &message, qos, true);
        }
    }

    fn new_barrier(&mut self, conn_id: ConnId) -> Token {
        let token = self.new_barrier_unowned();
        if let Some((_, waiting)) = self.barriers.get_mut(&token) {
            waiting.push(conn_id);
        }
        token
    }

    fn new_barrier_unowned(&mut self) -> Token {
        self.new_barrier_counted(self.shard_count - 1)
    }

    /// A barrier that completes after `count` acknowledgements.
    fn new_barrier_counted(&mut self, count: u16) -> Token {
        self.next_token += 1;
        let token = Token(self.next_token);
        self.barriers.insert(token, (count, Vec::new()));
        token
    }

    fn broadcast(&mut self, mut make: impl FnMut() -> MeshMessage) {
        for shard in 0..self.shard_count {
            if shard != self.id.0 {
                self.mesh_out.push((ShardId(shard), make()));
            }
        }
    }
}

/// Bytes a retained message counts for against `retained_bytes_max`.
fn retained_size(message: &Message) -> usize {
    message.topic.as_str().len() + message.payload.len()
}

/// `message` with its topic and payload in allocations of their own. A decoded PUBLISH
/// shares the allocation it was read into with every packet of the same read (often
/// thousands when a publisher batches): kept for long, even a 10-byte payload would
/// hold that whole buffer.
fn detached(message: &Message) -> Message {
    Message {
        // invariant: the topic was validated when `message` was made; the copy is the
        // same string.
        topic: TopicName::new(message.topic.as_str().to_owned())
            .unwrap_or_else(|_| message.topic.clone()),
        payload: bytes::Bytes::copy_from_slice(&message.payload),
        ..message.clone()
    }
}

/// The `MessageQueued` record of `message` queued to `session` as `message_id`.
fn queued_record(session: &Session, message: &Message, message_id: u64) -> Record {
    Record::MessageQueued {
        client_id: session.client_id.to_string(),
        message_id,
        topic: message.topic.to_string(),
        payload: message.payload.to_vec(),
        qos: message.qos as u8,
        retain: message.retain,
    }
}

/// Appends a PUBLISH for `message` (its `qos` and `retain` are the delivery's).
fn encode_publish(out: &mut BytesMut, message: &Message, packet_id: Option<PacketId>, dup: bool) {
    let qos = match (message.qos, packet_id) {
        (QoS::AtLeastOnce, Some(id)) => PublishQos::AtLeastOnce(id),
        (QoS::ExactlyOnce, Some(id)) => PublishQos::ExactlyOnce(id),
        _ => PublishQos::AtMostOnce,
    };
    Packet::Publish(Publish {
        dup: dup && qos != PublishQos::AtMostOnce,
        qos,
        retain: message.retain,
        topic: message.topic.clone(),
        payload: message.payload.clone(),
    })
    .encode(out);
}
