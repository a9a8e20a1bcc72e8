//! What the core hands the runtime for the delivery latency histogram
//! (`ShardCore::take_output_timed`), and the broker's own publishes
//! (`ShardCore::publish_internal`, the `$SYS` topics), driven directly.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::connect;
use cutie_codec::{
    Decoder, Packet, PacketId, Publish, PublishQos, QoS, Subscribe, SubscribeFilter, TopicFilter,
    TopicName,
};
use cutie_persistence::Record;
use cutie_shard::{ConnId, Durability, Limits, Message, ShardCore, ShardId};
use std::time::{Duration, Instant};

fn core(durability: Option<Durability>) -> ShardCore {
    let core = ShardCore::new(ShardId(0), 1, Limits::default());
    match durability {
        Some(durability) => core.with_durability(durability),
        None => core,
    }
}

fn send_at(core: &mut ShardCore, conn: u64, packet: Packet, at: Instant) {
    let mut buf = BytesMut::new();
    packet.encode(&mut buf);
    core.handle_bytes_at(ConnId(conn), &mut buf, 0, at);
}

fn subscribe(core: &mut ShardCore, conn: u64, filter: &str, qos: QoS) {
    send_at(
        core,
        conn,
        Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            filters: vec![SubscribeFilter {
                filter: TopicFilter::new(filter).unwrap(),
                qos,
            }],
        }),
        Instant::now(),
    );
}

fn publish(
    core: &mut ShardCore,
    conn: u64,
    topic: &str,
    qos: PublishQos,
    retain: bool,
    at: Instant,
) {
    send_at(
        core,
        conn,
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::from_static(b"payload"),
        }),
        at,
    );
}

/// The PUBLISH packets and delivery times the connection's writer would get now.
fn output(core: &mut ShardCore, conn: u64) -> (Vec<Publish>, Vec<Instant>) {
    let mut buf = BytesMut::new();
    let mut times = Vec::new();
    core.take_output_timed(ConnId(conn), &mut buf, &mut times);
    let mut decoder = Decoder::new(1 << 20);
    let mut publishes = Vec::new();
    while let Some(packet) = decoder.decode(&mut buf).unwrap() {
        if let Packet::Publish(publish) = packet {
            publishes.push(publish);
        }
    }
    (publishes, times)
}

fn id(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

#[test]
fn each_delivery_to_an_online_subscriber_carries_its_read_time() {
    let mut core = core(None);
    connect(&mut core, 1, "subscriber", true);
    connect(&mut core, 2, "publisher", true);
    subscribe(&mut core, 1, "t/#", QoS::AtLeastOnce);
    output(&mut core, 1);
    let t0 = Instant::now();
    let t1 = t0 + Duration::from_millis(3);
    publish(&mut core, 2, "t/a", PublishQos::AtMostOnce, false, t0);
    publish(
        &mut core,
        2,
        "t/b",
        PublishQos::AtLeastOnce(id(7)),
        false,
        t1,
    );
    let (publishes, times) = output(&mut core, 1);
    assert_eq!(publishes.len(), 2);
    assert_eq!(times, vec![t0, t1]);
    // The publisher's PUBACK is not a delivery.
    assert!(output(&mut core, 2).1.is_empty());
    // Taken once.
    assert!(output(&mut core, 1).1.is_empty());
}

#[test]
fn retained_on_subscribe_and_offline_queues_are_not_measured() {
    let mut core = core(None);
    connect(&mut core, 2, "publisher", true);
    publish(
        &mut core,
        2,
        "r/x",
        PublishQos::AtMostOnce,
        true,
        Instant::now(),
    );
    connect(&mut core, 1, "late", true);
    subscribe(&mut core, 1, "r/#", QoS::AtMostOnce);
    let (publishes, times) = output(&mut core, 1);
    assert_eq!(publishes.len(), 1, "the retained message");
    assert!(times.is_empty());

    // A persistent subscriber, offline while the message is routed.
    connect(&mut core, 3, "persistent", false);
    subscribe(&mut core, 3, "q/#", QoS::AtLeastOnce);
    output(&mut core, 3);
    core.connection_lost(ConnId(3), 0);
    publish(
        &mut core,
        2,
        "q/x",
        PublishQos::AtLeastOnce(id(1)),
        false,
        Instant::now(),
    );
    connect(&mut core, 4, "persistent", false);
    let (publishes, times) = output(&mut core, 4);
    assert_eq!(publishes.len(), 1, "the queued message");
    assert!(times.is_empty());
}

#[test]
fn gated_deliveries_hand_over_their_times_with_their_bytes() {
    // Durability sync: a QoS 2 delivery to a persistent session waits for its
    // MessageSent record to commit; its time goes out with it, not before.
    let mut core = core(Some(Durability::Sync));
    connect(&mut core, 1, "persistent-subscriber", false);
    subscribe(&mut core, 1, "g/#", QoS::ExactlyOnce);
    let mut records = Vec::new();
    let seq = core.take_records(&mut records);
    core.records_committed(seq);
    output(&mut core, 1);
    connect(&mut core, 2, "publisher", true);
    let t0 = Instant::now();
    publish(&mut core, 2, "g/x", PublishQos::AtMostOnce, false, t0);
    publish(
        &mut core,
        2,
        "g/y",
        PublishQos::ExactlyOnce(id(3)),
        false,
        t0,
    );
    let (publishes, times) = output(&mut core, 1);
    // The QoS 0 delivery goes at once, the QoS 2 one waits.
    assert_eq!(publishes.len(), 1);
    assert_eq!(times.len(), 1);
    let seq = core.take_records(&mut records);
    core.records_committed(seq);
    let (publishes, times) = output(&mut core, 1);
    assert_eq!(publishes.len(), 1);
    assert_eq!(times, vec![t0]);
}

#[test]
fn internal_publishes_are_routed_retained_and_not_logged() {
    let mut core = core(Some(Durability::Sync));
    connect(&mut core, 1, "sys-watcher", true);
    subscribe(&mut core, 1, "$SYS/#", QoS::AtMostOnce);
    connect(&mut core, 2, "everything", true);
    subscribe(&mut core, 2, "#", QoS::AtMostOnce);
    let mut records = Vec::new();
    let seq = core.take_records(&mut records);
    core.records_committed(seq);
    output(&mut core, 1);
    output(&mut core, 2);
    core.publish_internal(
        Message {
            topic: TopicName::new("$SYS/broker/uptime").unwrap(),
            payload: Bytes::from_static(b"5 seconds"),
            qos: QoS::AtMostOnce,
            retain: true,
            received_at: None,
        },
        0,
    );
    let (publishes, times) = output(&mut core, 1);
    assert_eq!(publishes.len(), 1);
    assert_eq!(publishes[0].topic.as_str(), "$SYS/broker/uptime");
    assert!(times.is_empty());
    assert!(
        output(&mut core, 2).0.is_empty(),
        "`#` does not match $SYS topics [MQTT-4.7.2-1]"
    );
    assert_eq!(core.retained_count(), 1);
    assert_eq!(core.stats.publish_received_total, [0, 0, 0]);
    assert_eq!(core.stats.dropped_no_subscribers_total, 0);
    records.clear();
    core.take_records(&mut records);
    assert!(
        !records
            .iter()
            .any(|r| matches!(r, Record::RetainSet { .. })),
        "$SYS retained messages are not logged: {records:?}"
    );
}
