//! The shard core's side of the acknowledgement contract (persistence/FORMAT.md), driven
//! directly: with durability `sync` an acknowledgement that depends on a record leaves
//! the core only after the log reports that record committed; with `batch` and `none` it
//! does not wait; after a log failure QoS 1/2 publishes are refused and QoS 0 flows.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::{connect, connect_packet, id, output, send, subscribe_packet};
use cutie_codec::{Packet, Publish, PublishQos, QoS, TopicName};
use cutie_persistence::{DurableState, Record};
use cutie_shard::{ConnId, Durability, Limits, MeshMessage, OutputState, ShardCore, ShardId};

fn core(shards: u16, id: u16, durability: Durability) -> ShardCore {
    ShardCore::new(ShardId(id), shards, Limits::default()).with_durability(durability)
}

fn subscribe(core: &mut ShardCore, conn: u64, filter: &str, qos: QoS) {
    send(core, conn, subscribe_packet(&[(filter, qos)]));
}

fn publish(core: &mut ShardCore, conn: u64, topic: &str, qos: PublishQos, retain: bool) {
    send(
        core,
        conn,
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::from_static(b"payload"),
        }),
    );
}

/// Takes the records and commits them, as the runtime does after the log's fdatasync.
fn commit(core: &mut ShardCore, state: &mut DurableState) -> usize {
    let mut records: Vec<Record> = Vec::new();
    let seq = core.take_records(&mut records);
    for record in &records {
        state.apply(record).unwrap();
    }
    core.records_committed(seq);
    records.len()
}

#[test]
fn connack_of_a_persistent_session_waits_for_its_session_record() {
    let mut core = core(1, 0, Durability::Sync);
    let mut state = DurableState::new();
    connect(&mut core, 1, "sub", false);
    assert!(
        output(&mut core, 1).is_empty(),
        "CONNACK before SessionPut is durable"
    );
    assert_eq!(commit(&mut core, &mut state), 1);
    assert!(matches!(output(&mut core, 1)[..], [Packet::ConnAck(_)]));
    assert!(state.session("sub").is_some());
    // A clean session logs nothing and waits for nothing.
    connect(&mut core, 2, "pub", true);
    assert!(matches!(output(&mut core, 2)[..], [Packet::ConnAck(_)]));
    assert_eq!(commit(&mut core, &mut state), 0);
}

#[test]
fn puback_waits_until_the_persistent_subscribers_queue_is_committed() {
    let mut core = core(1, 0, Durability::Sync);
    let mut state = DurableState::new();
    connect(&mut core, 1, "sub", false);
    subscribe(&mut core, 1, "t/#", QoS::AtLeastOnce);
    commit(&mut core, &mut state);
    assert_eq!(output(&mut core, 1).len(), 2, "CONNACK and SUBACK");
    connect(&mut core, 2, "pub", true);
    output(&mut core, 2);

    publish(&mut core, 2, "t/1", PublishQos::AtLeastOnce(id(7)), false);
    // The subscriber may get the message at once (QoS 1 allows a resend after a crash),
    // the publisher's PUBACK waits.
    assert!(matches!(output(&mut core, 1)[..], [Packet::Publish(_)]));
    assert!(
        output(&mut core, 2).is_empty(),
        "PUBACK before MessageQueued is durable"
    );
    assert_eq!(
        commit(&mut core, &mut state),
        2,
        "MessageQueued and MessageSent"
    );
    assert_eq!(output(&mut core, 2), vec![Packet::PubAck(id(7))]);
    assert_eq!(state.session("sub").unwrap().inflight().len(), 1);
}

#[test]
fn outbound_qos2_publish_waits_for_message_sent() {
    let mut core = core(1, 0, Durability::Sync);
    let mut state = DurableState::new();
    connect(&mut core, 1, "sub", false);
    subscribe(&mut core, 1, "t/#", QoS::ExactlyOnce);
    commit(&mut core, &mut state);
    output(&mut core, 1);
    connect(&mut core, 2, "pub", true);
    output(&mut core, 2);
    publish(&mut core, 2, "t/1", PublishQos::ExactlyOnce(id(3)), false);
    assert!(
        output(&mut core, 1).is_empty(),
        "QoS 2 PUBLISH before MessageSent is durable"
    );
    commit(&mut core, &mut state);
    assert!(matches!(output(&mut core, 1)[..], [Packet::Publish(_)]));
    assert_eq!(output(&mut core, 2), vec![Packet::PubRec(id(3))]);
}

#[test]
fn batch_and_none_do_not_hold_acknowledgements_but_still_log() {
    for durability in [Durability::Batch, Durability::None] {
        let mut core = core(1, 0, durability);
        connect(&mut core, 1, "sub", false);
        subscribe(&mut core, 1, "t/#", QoS::AtLeastOnce);
        assert_eq!(output(&mut core, 1).len(), 2);
        connect(&mut core, 2, "pub", true);
        output(&mut core, 2);
        publish(&mut core, 2, "t/1", PublishQos::AtLeastOnce(id(9)), false);
        assert_eq!(output(&mut core, 2), vec![Packet::PubAck(id(9))]);
        let mut records = Vec::new();
        core.take_records(&mut records);
        assert_eq!(records.len(), 4, "{durability:?}: {records:?}");
    }
}

#[test]
fn a_forwarded_publish_is_acknowledged_after_the_other_shard_commits() {
    // Find client ids owned by shard 0 and 1 of 2.
    let owned_by = |shard: u16| {
        (0..)
            .map(|i| format!("c{i}"))
            .find(|c| cutie_shard::owner_of(c, 2) == ShardId(shard))
            .unwrap()
    };
    let mut shard0 = core(2, 0, Durability::Sync);
    let mut shard1 = core(2, 1, Durability::Sync);
    let mut state1 = DurableState::new();
    connect(&mut shard1, 1, &owned_by(1), false);
    subscribe(&mut shard1, 1, "t/#", QoS::AtLeastOnce);
    commit(&mut shard1, &mut state1);
    let mut mesh = Vec::new();
    shard1.drain_mesh(&mut mesh);
    for (_, m) in mesh.drain(..) {
        shard0.handle_mesh(ShardId(1), m);
    }
    shard0.drain_mesh(&mut mesh);
    for (_, m) in mesh.drain(..) {
        shard1.handle_mesh(ShardId(0), m);
    }
    output(&mut shard1, 1);

    connect(&mut shard0, 2, &owned_by(0), true);
    output(&mut shard0, 2);
    publish(&mut shard0, 2, "t/x", PublishQos::AtLeastOnce(id(5)), false);
    shard0.drain_mesh(&mut mesh);
    let [(ShardId(1), MeshMessage::Publish { ack: Some(_), .. })] = &mesh[..] else {
        panic!("expected one forwarded publish asking for an ack: {mesh:?}");
    };
    for (_, m) in mesh.drain(..) {
        shard1.handle_mesh(ShardId(0), m);
    }
    shard1.drain_mesh(&mut mesh);
    assert!(
        mesh.is_empty(),
        "shard 1 acknowledged before committing: {mesh:?}"
    );
    commit(&mut shard1, &mut state1);
    shard1.drain_mesh(&mut mesh);
    assert!(matches!(mesh[..], [(ShardId(0), MeshMessage::Ack(_))]));
    assert!(
        output(&mut shard0, 2).is_empty(),
        "PUBACK before shard 1's ack"
    );
    for (_, m) in mesh.drain(..) {
        shard0.handle_mesh(ShardId(1), m);
    }
    assert_eq!(output(&mut shard0, 2), vec![Packet::PubAck(id(5))]);
}

#[test]
fn a_failed_log_refuses_qos1_and_keeps_qos0_flowing() {
    let mut core = core(1, 0, Durability::Sync);
    let mut state = DurableState::new();
    connect(&mut core, 1, "sub", false);
    subscribe(&mut core, 1, "t/#", QoS::AtLeastOnce);
    commit(&mut core, &mut state);
    output(&mut core, 1);
    connect(&mut core, 2, "pub", true);
    output(&mut core, 2);
    publish(&mut core, 2, "t/1", PublishQos::AtLeastOnce(id(1)), false);
    // The commit of that publish's records fails.
    let mut records = Vec::new();
    core.take_records(&mut records);
    core.log_failed();
    assert!(!core.log_healthy());
    let mut buf = BytesMut::new();
    assert_eq!(
        core.take_output(ConnId(2), &mut buf),
        OutputState::Close,
        "the publisher whose PUBACK can never be durable is disconnected"
    );
    assert!(buf.is_empty(), "no PUBACK was sent: {buf:?}");

    connect(&mut core, 3, "pub2", true);
    output(&mut core, 3);
    publish(&mut core, 3, "t/2", PublishQos::AtMostOnce, false);
    assert!(core.connection_open(ConnId(3)), "QoS 0 keeps flowing");
    publish(&mut core, 3, "t/3", PublishQos::AtLeastOnce(id(2)), false);
    assert!(!core.connection_open(ConnId(3)), "QoS 1 is refused");
    assert_eq!(core.stats.publish_refused_log_failed_total, 1);

    // A persistent session cannot be promised meanwhile: CONNACK 3 (server unavailable).
    assert!(!core.connect(ConnId(4), connect_packet("durable", false), 0));
    let refused = output(&mut core, 4);
    assert!(
        matches!(&refused[..], [Packet::ConnAck(c)] if c.return_code == cutie_codec::ConnectReturnCode::ServerUnavailable),
        "{refused:?}"
    );

    core.log_recovered(0);
    assert!(core.log_healthy());
}

/// Two shards with their logs: records committed so far per shard.
struct Pair {
    shards: [ShardCore; 2],
    durable: [DurableState; 2],
    taken: [Vec<Record>; 2],
}

fn owned_by(shard: u16) -> String {
    (0..)
        .map(|i| format!("c{i}"))
        .find(|c| cutie_shard::owner_of(c, 2) == ShardId(shard))
        .unwrap()
}

impl Pair {
    fn new() -> Pair {
        Pair {
            shards: [core(2, 0, Durability::Sync), core(2, 1, Durability::Sync)],
            durable: [DurableState::new(), DurableState::new()],
            taken: [Vec::new(), Vec::new()],
        }
    }

    /// Delivers every mesh message until none is left.
    fn mesh(&mut self) {
        loop {
            let mut moved = false;
            for from in 0..2 {
                let mut out = Vec::new();
                self.shards[from].drain_mesh(&mut out);
                for (to, m) in out {
                    moved = true;
                    self.shards[to.index()].handle_mesh(ShardId(from as u16), m);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Takes shard `k`'s records (they are being written).
    fn take(&mut self, k: usize) {
        self.shards[k].take_records(&mut self.taken[k]);
    }

    /// Commits what shard `k` has taken and produced.
    fn commit(&mut self, k: usize) {
        let seq = self.shards[k].take_records(&mut self.taken[k]);
        for record in self.taken[k].drain(..) {
            self.durable[k].apply(&record).unwrap();
        }
        self.shards[k].records_committed(seq);
    }

    /// Both shards crash: what was not committed is gone; they restart from their logs.
    fn crash(&mut self) {
        for k in 0..2 {
            self.taken[k].clear();
            let mut restarted = core(2, k as u16, Durability::Sync);
            restarted.set_incarnation(99);
            restarted.restore(&self.durable[k]);
            self.shards[k] = restarted;
        }
        self.mesh();
    }
}

fn qos2_publish(payload: &'static [u8], dup: bool) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos: PublishQos::ExactlyOnce(id(4)),
        retain: false,
        topic: TopicName::new("t/q2").unwrap(),
        payload: Bytes::from_static(payload),
    })
}

/// A persistent subscriber on shard 1, a persistent QoS 2 publisher on shard 0.
fn subscribed_pair() -> (Pair, String, String) {
    let mut p = Pair::new();
    let (publisher, subscriber) = (owned_by(0), owned_by(1));
    connect(&mut p.shards[1], 1, &subscriber, false);
    subscribe(&mut p.shards[1], 1, "t/#", QoS::ExactlyOnce);
    p.commit(1);
    p.mesh();
    p.commit(1);
    connect(&mut p.shards[0], 2, &publisher, false);
    p.commit(0);
    (p, publisher, subscriber)
}

fn queued_to(state: &DurableState, client_id: &str) -> usize {
    let session = state.session(client_id).unwrap();
    session.queue().len() + session.inflight().len()
}

#[test]
fn a_qos2_publish_whose_forward_was_not_committed_is_forwarded_again_after_a_crash() {
    let (mut p, publisher, subscriber) = subscribed_pair();
    send(&mut p.shards[0], 2, qos2_publish(b"x", false));
    p.mesh();
    // The publisher's shard commits its InboundQos2; the subscriber's shard crashes
    // before committing the message (its acknowledgement never came: no PUBREC).
    p.commit(0);
    p.take(1);
    assert!(!output(&mut p.shards[0], 2)
        .iter()
        .any(|packet| matches!(packet, Packet::PubRec(_))));
    assert_eq!(
        p.durable[0]
            .session(&publisher)
            .unwrap()
            .inbound_qos2()
            .len(),
        1
    );
    p.crash();
    assert_eq!(queued_to(&p.durable[1], &subscriber), 0);

    // The client reconnects and re-sends its PUBLISH with DUP.
    connect(&mut p.shards[0], 3, &publisher, false);
    output(&mut p.shards[0], 3);
    send(&mut p.shards[0], 3, qos2_publish(b"x", true));
    p.mesh();
    p.commit(1);
    p.mesh();
    p.commit(0);
    assert_eq!(output(&mut p.shards[0], 3), vec![Packet::PubRec(id(4))]);
    assert_eq!(
        queued_to(&p.durable[1], &subscriber),
        1,
        "the message reached the subscriber's log"
    );
}

#[test]
fn a_qos2_forward_waits_for_the_publishers_log_and_is_not_delivered_twice_after_a_crash() {
    let (mut p, publisher, subscriber) = subscribed_pair();
    send(&mut p.shards[0], 2, qos2_publish(b"y", false));
    p.mesh();
    // Not forwarded before the publisher's shard has logged it with its forward id: no
    // other shard may hold a message the publisher's shard would forget in a crash.
    assert!(
        p.shards[1].session(&subscriber).unwrap().queue.is_empty()
            && p.shards[1]
                .session(&subscriber)
                .unwrap()
                .inflight
                .is_empty()
    );
    p.commit(0);
    p.mesh();
    p.commit(1);
    assert_eq!(queued_to(&p.durable[1], &subscriber), 1);
    // Both logs hold it; the crash comes before the client got its PUBREC.
    p.crash();
    assert_eq!(
        p.durable[0]
            .session(&publisher)
            .unwrap()
            .inbound_qos2()
            .len(),
        1
    );

    connect(&mut p.shards[0], 3, &publisher, false);
    output(&mut p.shards[0], 3);
    send(&mut p.shards[0], 3, qos2_publish(b"y", true));
    p.mesh();
    p.commit(1);
    p.mesh();
    p.commit(0);
    assert_eq!(output(&mut p.shards[0], 3), vec![Packet::PubRec(id(4))]);
    assert_eq!(
        queued_to(&p.durable[1], &subscriber),
        1,
        "delivered once, not twice"
    );
    assert_eq!(p.shards[1].stats.forward_duplicates_total, 1);

    // PUBREL releases the id on the receiving shard too.
    send(&mut p.shards[0], 3, Packet::PubRel(id(4)));
    p.mesh();
    p.commit(1);
    p.commit(0);
    assert!(p.durable[1].forwarded().is_empty());
}

#[test]
fn a_peer_whose_log_fails_fails_the_barrier_and_a_resent_qos2_is_forwarded_again() {
    let (mut p, publisher, subscriber) = subscribed_pair();
    output(&mut p.shards[0], 2);
    send(&mut p.shards[0], 2, qos2_publish(b"z", false));
    p.commit(0);
    p.mesh();
    // The subscriber's shard applied the forward, logged it, and its log fails before
    // the commit: it answers Nack, not silence.
    p.take(1);
    p.shards[1].log_failed();
    p.mesh();
    let mut buf = BytesMut::new();
    assert_eq!(
        p.shards[0].take_output(ConnId(2), &mut buf),
        OutputState::Close,
        "the publisher is not left waiting for an ack that will never come"
    );
    assert!(buf.is_empty(), "and gets no PUBREC: {buf:?}");
    assert_eq!(p.shards[0].stats.barriers_failed_total, 1);
    p.shards[0].conn_closed(ConnId(2));

    // Re-sent while the peer's log is still failed: forwarded again (not waiting on
    // the dead barrier, not PUBRECed without the peer), refused again.
    connect(&mut p.shards[0], 3, &publisher, false);
    p.commit(0);
    output(&mut p.shards[0], 3);
    send(&mut p.shards[0], 3, qos2_publish(b"z", true));
    p.commit(0);
    p.mesh();
    assert!(!p.shards[0].connection_open(ConnId(3)));
    assert_eq!(p.shards[0].stats.barriers_failed_total, 2);
    p.shards[0].conn_closed(ConnId(3));

    // The peer's log is back (it snapshots its whole state): the next re-send is
    // acknowledged, and the subscriber got the message once.
    let seq = p.shards[1].take_records(&mut p.taken[1]);
    for record in p.taken[1].drain(..) {
        p.durable[1].apply(&record).unwrap();
    }
    p.shards[1].log_recovered(seq);
    connect(&mut p.shards[0], 4, &publisher, false);
    p.commit(0);
    output(&mut p.shards[0], 4);
    send(&mut p.shards[0], 4, qos2_publish(b"z", true));
    p.commit(0);
    p.mesh();
    p.commit(1);
    p.mesh();
    p.commit(0);
    assert_eq!(output(&mut p.shards[0], 4), vec![Packet::PubRec(id(4))]);
    assert_eq!(queued_to(&p.durable[1], &subscriber), 1, "delivered once");
}
