//! The in-memory model that records apply to.
//!
//! [`DurableState`] is what one shard's log means: the persistent sessions (their
//! subscriptions, queued messages, inflight window and inbound QoS 2 packet ids) and the
//! retained messages. Applying the same records in the same order always gives the same
//! state (ordered maps only, no hashing, no clock).
//!
//! A record that does not fit the state (a `MessageDone` for an unknown packet id, a
//! `Subscribe` for a session that does not exist) is ignored as a whole, counted and
//! reported as a [`Misfit`]: never a panic. The log may legitimately contain such records
//! (a duplicate PUBACK, a record about a session dropped later in the same batch), and a
//! damaged-but-skipped log must still load.
//!
//! [`DurableState::records`] yields records that rebuild an equal state from empty: that
//! is what a snapshot holds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::record::Record;

/// One message queued to, or inflight for, a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The broker's id for this message within its session.
    pub message_id: u64,
    /// The topic it was published to.
    pub topic: String,
    /// The application message.
    pub payload: Vec<u8>,
    /// The QoS it is delivered with.
    pub qos: u8,
    /// The RETAIN flag it is delivered with.
    pub retain: bool,
}

/// Where an inflight (sent, unacknowledged) message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflightPhase {
    /// PUBLISH sent; awaiting PUBACK (QoS 1) or PUBREC (QoS 2). Resent on reconnect with DUP.
    AwaitingAck,
    /// PUBREC received, PUBREL sent; awaiting PUBCOMP. PUBREL resent on reconnect.
    Released,
}

/// A message in a session's inflight window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inflight {
    /// The message that was sent.
    pub message: Message,
    /// Its place in the QoS 1 / QoS 2 exchange.
    pub phase: InflightPhase,
}

/// The durable part of one persistent session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionState {
    subscriptions: BTreeMap<String, u8>,
    queue: VecDeque<Message>,
    inflight: BTreeMap<u16, Inflight>,
    /// Packet id -> the forward id its message went to other shards under (0: none).
    inbound_qos2: BTreeMap<u16, u128>,
    /// Ids of every message in `queue` or `inflight`; derived, kept to find duplicates
    /// without a scan.
    message_ids: BTreeSet<u64>,
}

impl SessionState {
    /// Topic filter -> granted QoS.
    #[must_use]
    pub fn subscriptions(&self) -> &BTreeMap<String, u8> {
        &self.subscriptions
    }

    /// Messages accepted for the session and not yet sent, oldest first.
    #[must_use]
    pub fn queue(&self) -> &VecDeque<Message> {
        &self.queue
    }

    /// Sent, unacknowledged messages by packet id.
    #[must_use]
    pub fn inflight(&self) -> &BTreeMap<u16, Inflight> {
        &self.inflight
    }

    /// Inflight messages in the order they were queued (increasing `message_id`): the order
    /// to resend them in on reconnect.
    #[must_use]
    pub fn inflight_in_order(&self) -> Vec<(u16, &Inflight)> {
        let mut v: Vec<(u16, &Inflight)> = self.inflight.iter().map(|(p, i)| (*p, i)).collect();
        v.sort_by_key(|(packet_id, i)| (i.message.message_id, *packet_id));
        v
    }

    /// Packet ids of QoS 2 PUBLISHes received and PUBRECed, awaiting PUBREL.
    #[must_use]
    pub fn inbound_qos2(&self) -> &BTreeMap<u16, u128> {
        &self.inbound_qos2
    }

    fn records_len(&self) -> u64 {
        let released = self
            .inflight
            .values()
            .filter(|i| i.phase == InflightPhase::Released)
            .count();
        (1 + self.subscriptions.len()
            + 2 * self.inflight.len()
            + released
            + self.queue.len()
            + self.inbound_qos2.len()) as u64
    }

    fn records<'a>(&'a self, client_id: &'a str) -> impl Iterator<Item = Record> + 'a {
        let c = move || client_id.to_owned();
        let put = std::iter::once(Record::SessionPut { client_id: c() });
        let subscriptions = self
            .subscriptions
            .iter()
            .map(move |(filter, qos)| Record::Subscribe {
                client_id: c(),
                filter: filter.clone(),
                qos: *qos,
            });
        let inflight = self
            .inflight_in_order()
            .into_iter()
            .flat_map(move |(packet_id, i)| {
                let m = &i.message;
                let mut records = vec![
                    queued(client_id, m),
                    Record::MessageSent {
                        client_id: c(),
                        message_id: m.message_id,
                        packet_id,
                    },
                ];
                if i.phase == InflightPhase::Released {
                    records.push(Record::MessageReleased {
                        client_id: c(),
                        packet_id,
                    });
                }
                records
            });
        let queue = self.queue.iter().map(move |m| queued(client_id, m));
        let inbound = self
            .inbound_qos2
            .iter()
            .map(move |(packet_id, forward_id)| Record::InboundQos2 {
                client_id: c(),
                packet_id: *packet_id,
                forward_id: *forward_id,
            });
        put.chain(subscriptions)
            .chain(inflight)
            .chain(queue)
            .chain(inbound)
    }
}

fn queued(client_id: &str, m: &Message) -> Record {
    Record::MessageQueued {
        client_id: client_id.to_owned(),
        message_id: m.message_id,
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        qos: m.qos,
        retain: m.retain,
    }
}

/// A retained message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedMessage {
    /// The application message.
    pub payload: Vec<u8>,
    /// The QoS it was published with.
    pub qos: u8,
}

/// Why a record did not fit the state. The record was ignored as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misfit {
    /// The record names a session that does not exist.
    UnknownSession,
    /// `SessionDrop` of a session that does not exist.
    SessionNotFound,
    /// `MessageQueued` with a message id the session already holds.
    DuplicateMessageId,
    /// `MessageSent`/`MessageDiscarded` for a message id the session does not hold (or,
    /// for `MessageSent`, that is not queued).
    UnknownMessageId,
    /// `MessageSent` with a packet id already inflight.
    PacketIdInUse,
    /// `MessageReleased`/`MessageDone` for a packet id that is not inflight, or
    /// `InboundQos2Released` for one that is not awaiting PUBREL.
    UnknownPacketId,
    /// `MessageReleased` of a message already released, or `InboundQos2` of a packet id
    /// already awaiting PUBREL.
    AlreadyInPhase,
    /// `Unsubscribe` of a filter the session does not subscribe to.
    NotSubscribed,
}

/// The state one shard's log rebuilds. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct DurableState {
    sessions: BTreeMap<String, SessionState>,
    retained: BTreeMap<String, RetainedMessage>,
    /// Ids of QoS 2 messages other shards forwarded here and have not released.
    forwarded: BTreeSet<u128>,
    /// Records ignored because they did not fit; not part of the state's identity.
    misfits: u64,
}

/// Equality is of sessions and retained messages; the misfit counter is history, not state.
impl PartialEq for DurableState {
    fn eq(&self, other: &Self) -> bool {
        self.sessions == other.sessions
            && self.retained == other.retained
            && self.forwarded == other.forwarded
    }
}

impl Eq for DurableState {}

impl DurableState {
    /// The empty state: no sessions, no retained messages.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Persistent sessions by client id.
    #[must_use]
    pub fn sessions(&self) -> &BTreeMap<String, SessionState> {
        &self.sessions
    }

    /// One session.
    #[must_use]
    pub fn session(&self, client_id: &str) -> Option<&SessionState> {
        self.sessions.get(client_id)
    }

    /// Retained messages by topic.
    #[must_use]
    pub fn retained(&self) -> &BTreeMap<String, RetainedMessage> {
        &self.retained
    }

    /// Ids of QoS 2 messages forwarded here by other shards and not yet released.
    #[must_use]
    pub fn forwarded(&self) -> &BTreeSet<u128> {
        &self.forwarded
    }

    /// How many records applied to this state (since it was created) did not fit.
    #[must_use]
    pub fn misfits(&self) -> u64 {
        self.misfits
    }

    /// Applies one record. A record that does not fit is ignored entirely, counted, and
    /// returned as the error; the state is then unchanged.
    pub fn apply(&mut self, record: &Record) -> Result<(), Misfit> {
        let result = self.try_apply(record);
        if result.is_err() {
            self.misfits += 1;
        }
        result
    }

    fn session_mut(&mut self, client_id: &str) -> Result<&mut SessionState, Misfit> {
        self.sessions
            .get_mut(client_id)
            .ok_or(Misfit::UnknownSession)
    }

    fn try_apply(&mut self, record: &Record) -> Result<(), Misfit> {
        match record {
            Record::SessionPut { client_id } => {
                self.sessions.entry(client_id.clone()).or_default();
            }
            Record::SessionDrop { client_id } => {
                self.sessions
                    .remove(client_id)
                    .ok_or(Misfit::SessionNotFound)?;
            }
            Record::Subscribe {
                client_id,
                filter,
                qos,
            } => {
                self.session_mut(client_id)?
                    .subscriptions
                    .insert(filter.clone(), *qos);
            }
            Record::Unsubscribe { client_id, filter } => {
                self.session_mut(client_id)?
                    .subscriptions
                    .remove(filter)
                    .ok_or(Misfit::NotSubscribed)?;
            }
            Record::MessageQueued {
                client_id,
                message_id,
                topic,
                payload,
                qos,
                retain,
            } => {
                let session = self.session_mut(client_id)?;
                if !session.message_ids.insert(*message_id) {
                    return Err(Misfit::DuplicateMessageId);
                }
                session.queue.push_back(Message {
                    message_id: *message_id,
                    topic: topic.clone(),
                    payload: payload.clone(),
                    qos: *qos,
                    retain: *retain,
                });
            }
            Record::MessageSent {
                client_id,
                message_id,
                packet_id,
            } => {
                let session = self.session_mut(client_id)?;
                if session.inflight.contains_key(packet_id) {
                    return Err(Misfit::PacketIdInUse);
                }
                // Usually the head of the queue: messages are sent in queue order.
                let position = session
                    .queue
                    .iter()
                    .position(|m| m.message_id == *message_id)
                    .ok_or(Misfit::UnknownMessageId)?;
                let message = session
                    .queue
                    .remove(position)
                    .ok_or(Misfit::UnknownMessageId)?;
                session.inflight.insert(
                    *packet_id,
                    Inflight {
                        message,
                        phase: InflightPhase::AwaitingAck,
                    },
                );
            }
            Record::MessageReleased {
                client_id,
                packet_id,
            } => {
                let session = self.session_mut(client_id)?;
                let inflight = session
                    .inflight
                    .get_mut(packet_id)
                    .ok_or(Misfit::UnknownPacketId)?;
                if inflight.phase == InflightPhase::Released {
                    return Err(Misfit::AlreadyInPhase);
                }
                inflight.phase = InflightPhase::Released;
            }
            Record::MessageDone {
                client_id,
                packet_id,
            } => {
                let session = self.session_mut(client_id)?;
                let done = session
                    .inflight
                    .remove(packet_id)
                    .ok_or(Misfit::UnknownPacketId)?;
                session.message_ids.remove(&done.message.message_id);
            }
            Record::MessageDiscarded {
                client_id,
                message_id,
            } => {
                let session = self.session_mut(client_id)?;
                if !session.message_ids.remove(message_id) {
                    return Err(Misfit::UnknownMessageId);
                }
                if let Some(position) = session
                    .queue
                    .iter()
                    .position(|m| m.message_id == *message_id)
                {
                    session.queue.remove(position);
                } else {
                    session
                        .inflight
                        .retain(|_, i| i.message.message_id != *message_id);
                }
            }
            Record::InboundQos2 {
                client_id,
                packet_id,
                forward_id,
            } => {
                let session = self.session_mut(client_id)?;
                if session.inbound_qos2.contains_key(packet_id) {
                    return Err(Misfit::AlreadyInPhase);
                }
                session.inbound_qos2.insert(*packet_id, *forward_id);
            }
            Record::InboundQos2Released {
                client_id,
                packet_id,
            } => {
                if self
                    .session_mut(client_id)?
                    .inbound_qos2
                    .remove(packet_id)
                    .is_none()
                {
                    return Err(Misfit::UnknownPacketId);
                }
            }
            Record::RetainSet {
                topic,
                payload,
                qos,
            } => {
                self.retained.insert(
                    topic.clone(),
                    RetainedMessage {
                        payload: payload.clone(),
                        qos: *qos,
                    },
                );
            }
            Record::RetainClear { topic } => {
                self.retained.remove(topic);
            }
            Record::ForwardSeen { forward_id } => {
                self.forwarded.insert(*forward_id);
            }
            Record::ForwardDone { forward_id } => {
                self.forwarded.remove(forward_id);
            }
        }
        Ok(())
    }

    /// Records that rebuild this state from empty, in a deterministic order: retained
    /// messages by topic, then each session by client id (put, subscriptions, inflight
    /// messages in queue order, queued messages, inbound QoS 2 packet ids).
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        let retained = self.retained.iter().map(|(topic, m)| Record::RetainSet {
            topic: topic.clone(),
            payload: m.payload.clone(),
            qos: m.qos,
        });
        let sessions = self
            .sessions
            .iter()
            .flat_map(|(client_id, session)| session.records(client_id));
        let forwarded = self.forwarded.iter().map(|forward_id| Record::ForwardSeen {
            forward_id: *forward_id,
        });
        retained.chain(sessions).chain(forwarded)
    }

    /// Records that rebuild one session (empty when there is no such session): what
    /// moving a session to another shard's log writes there.
    #[must_use]
    pub fn session_records(&self, client_id: &str) -> Vec<Record> {
        self.sessions
            .get(client_id)
            .map(|session| session.records(client_id).collect())
            .unwrap_or_default()
    }

    /// How many records [`records`](Self::records) yields, without building them.
    #[must_use]
    pub fn records_len(&self) -> u64 {
        self.retained.len() as u64
            + self.forwarded.len() as u64
            + self
                .sessions
                .values()
                .map(SessionState::records_len)
                .sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn c() -> String {
        "c".to_string()
    }

    fn queued_record(message_id: u64) -> Record {
        Record::MessageQueued {
            client_id: c(),
            message_id,
            topic: format!("t/{message_id}"),
            payload: vec![message_id as u8; 3],
            qos: 2,
            retain: false,
        }
    }

    fn rebuilt(state: &DurableState) -> DurableState {
        let mut again = DurableState::new();
        for record in state.records() {
            again.apply(&record).expect("snapshot records always fit");
        }
        assert_eq!(state.records_len(), state.records().count() as u64);
        again
    }

    #[test]
    fn a_qos2_message_walks_queue_inflight_released_done() {
        let mut s = DurableState::new();
        s.apply(&Record::SessionPut { client_id: c() }).unwrap();
        s.apply(&queued_record(1)).unwrap();
        assert_eq!(s.session("c").unwrap().queue().len(), 1);
        s.apply(&Record::MessageSent {
            client_id: c(),
            message_id: 1,
            packet_id: 10,
        })
        .unwrap();
        let session = s.session("c").unwrap();
        assert!(session.queue().is_empty());
        assert_eq!(session.inflight()[&10].phase, InflightPhase::AwaitingAck);
        assert_eq!(rebuilt(&s), s);
        s.apply(&Record::MessageReleased {
            client_id: c(),
            packet_id: 10,
        })
        .unwrap();
        assert_eq!(
            s.session("c").unwrap().inflight()[&10].phase,
            InflightPhase::Released
        );
        assert_eq!(rebuilt(&s), s);
        s.apply(&Record::MessageDone {
            client_id: c(),
            packet_id: 10,
        })
        .unwrap();
        assert!(s.session("c").unwrap().inflight().is_empty());
        assert_eq!(s.misfits(), 0);
    }

    #[test]
    fn records_that_do_not_fit_are_ignored_and_counted() {
        let mut s = DurableState::new();
        assert_eq!(
            s.apply(&Record::Subscribe {
                client_id: c(),
                filter: "a".into(),
                qos: 1
            }),
            Err(Misfit::UnknownSession)
        );
        s.apply(&Record::SessionPut { client_id: c() }).unwrap();
        s.apply(&queued_record(1)).unwrap();
        let before = s.clone();
        assert_eq!(s.apply(&queued_record(1)), Err(Misfit::DuplicateMessageId));
        assert_eq!(
            s.apply(&Record::MessageDone {
                client_id: c(),
                packet_id: 3
            }),
            Err(Misfit::UnknownPacketId)
        );
        assert_eq!(
            s.apply(&Record::MessageSent {
                client_id: c(),
                message_id: 99,
                packet_id: 3
            }),
            Err(Misfit::UnknownMessageId)
        );
        assert_eq!(
            s.apply(&Record::InboundQos2Released {
                client_id: c(),
                packet_id: 3
            }),
            Err(Misfit::UnknownPacketId)
        );
        assert_eq!(s, before);
        assert_eq!(s.misfits(), 5);
    }

    #[test]
    fn session_drop_takes_everything_with_it() {
        let mut s = DurableState::new();
        s.apply(&Record::SessionPut { client_id: c() }).unwrap();
        s.apply(&queued_record(1)).unwrap();
        s.apply(&Record::InboundQos2 {
            client_id: c(),
            packet_id: 5,
            forward_id: 0,
        })
        .unwrap();
        s.apply(&Record::SessionDrop { client_id: c() }).unwrap();
        assert!(s.sessions().is_empty());
        assert_eq!(s, DurableState::new());
    }

    #[test]
    fn discarding_finds_queued_and_inflight_messages() {
        let mut s = DurableState::new();
        s.apply(&Record::SessionPut { client_id: c() }).unwrap();
        for id in 1..=3 {
            s.apply(&queued_record(id)).unwrap();
        }
        s.apply(&Record::MessageSent {
            client_id: c(),
            message_id: 1,
            packet_id: 1,
        })
        .unwrap();
        s.apply(&Record::MessageDiscarded {
            client_id: c(),
            message_id: 1,
        })
        .unwrap();
        s.apply(&Record::MessageDiscarded {
            client_id: c(),
            message_id: 3,
        })
        .unwrap();
        let session = s.session("c").unwrap();
        assert!(session.inflight().is_empty());
        assert_eq!(session.queue().len(), 1);
        assert_eq!(session.queue()[0].message_id, 2);
        // The discarded id may be queued again later.
        s.apply(&queued_record(1)).unwrap();
    }

    #[test]
    fn records_rebuild_an_equal_state_with_inflight_in_queue_order() {
        let mut s = DurableState::new();
        s.apply(&Record::RetainSet {
            topic: "r".into(),
            payload: b"x".to_vec(),
            qos: 1,
        })
        .unwrap();
        s.apply(&Record::SessionPut { client_id: c() }).unwrap();
        s.apply(&Record::Subscribe {
            client_id: c(),
            filter: "a/#".into(),
            qos: 2,
        })
        .unwrap();
        for id in 1..=5 {
            s.apply(&queued_record(id)).unwrap();
        }
        // Packet ids wrap: message 1 got 65535, message 2 got 1.
        for (message_id, packet_id) in [(1, 65535), (2, 1), (3, 2)] {
            s.apply(&Record::MessageSent {
                client_id: c(),
                message_id,
                packet_id,
            })
            .unwrap();
        }
        s.apply(&Record::MessageReleased {
            client_id: c(),
            packet_id: 1,
        })
        .unwrap();
        s.apply(&Record::InboundQos2 {
            client_id: c(),
            packet_id: 9,
            forward_id: 3,
        })
        .unwrap();
        let order: Vec<u16> = s
            .session("c")
            .unwrap()
            .inflight_in_order()
            .iter()
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(order, vec![65535, 1, 2]);
        assert_eq!(rebuilt(&s), s);
    }
}
