//! The routing path of one shard, without sockets: PUBLISH bytes in through
//! `ShardCore::handle_bytes`, matched, queued and encoded for every subscriber, output
//! bytes taken out as the writer would. Throughput is in messages published.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use cutie_codec::{
    Connect, Decoder, Packet, PacketId, ProtocolLevel, Publish, PublishQos, QoS, Subscribe,
    SubscribeFilter, TopicFilter, TopicName,
};
use cutie_shard::{ConnId, Limits, ShardCore, ShardId};

const BATCH: usize = 256;

fn connect(core: &mut ShardCore, conn: u64, client_id: &str) {
    let accepted = core.connect(
        ConnId(conn),
        Connect {
            protocol: ProtocolLevel::V3_1_1,
            clean_session: true,
            keep_alive_secs: 0,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        },
        0,
    );
    assert!(accepted);
}

/// Takes every woken connection's output as the writer would. With `ack`, answers each
/// QoS 1 PUBLISH with its PUBACK, as a subscriber would.
fn drain(core: &mut ShardCore, woken: &mut Vec<ConnId>, out: &mut BytesMut, ack: bool) {
    woken.clear();
    core.drain_woken(woken);
    let mut acks = Vec::new();
    for conn in woken.iter() {
        core.take_output(*conn, out);
        if ack {
            let mut decoder = Decoder::new(usize::MAX);
            let mut replies = BytesMut::new();
            while let Ok(Some(packet)) = decoder.decode(out) {
                if let Packet::Publish(Publish {
                    qos: PublishQos::AtLeastOnce(id),
                    ..
                }) = packet
                {
                    Packet::PubAck(id).encode(&mut replies);
                }
            }
            acks.push((*conn, replies));
        }
        out.clear();
    }
    for (conn, mut replies) in acks {
        core.handle_bytes(conn, &mut replies, 0);
    }
}

/// A shard with one publisher (conn 0) and `subscribers` subscribers of `filter` at `qos`.
fn shard(subscribers: usize, filter: &str, qos: QoS) -> ShardCore {
    let mut core = ShardCore::new(
        ShardId(0),
        1,
        Limits {
            queued_max: 1_000_000,
            inflight_max: u16::MAX,
            ..Limits::default()
        },
    );
    connect(&mut core, 0, "publisher");
    for i in 0..subscribers {
        let conn = 1 + i as u64;
        connect(&mut core, conn, &format!("subscriber-{i}"));
        let mut buf = BytesMut::new();
        Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).expect("non-zero"),
            filters: vec![SubscribeFilter {
                filter: TopicFilter::try_from(filter).expect("valid filter"),
                qos,
            }],
        })
        .encode(&mut buf);
        core.handle_bytes(ConnId(conn), &mut buf, 0);
    }
    core
}

fn publishes(qos: QoS) -> BytesMut {
    let mut buf = BytesMut::new();
    let topic = TopicName::try_from("sensors/building-1/floor-2/temp").expect("valid topic");
    for i in 0..BATCH {
        let packet_id = PacketId::new(1 + i as u16).expect("non-zero");
        Packet::Publish(Publish {
            dup: false,
            qos: PublishQos::with(qos, packet_id),
            retain: false,
            topic: topic.clone(),
            payload: Bytes::from(vec![0x5a; 64]),
        })
        .encode(&mut buf);
    }
    buf
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_publish_64B");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (subscribers, qos) in [
        (1, QoS::AtMostOnce),
        (10, QoS::AtMostOnce),
        (1, QoS::AtLeastOnce),
    ] {
        let mut core = shard(subscribers, "sensors/+/+/temp", qos);
        let input = publishes(qos);
        let mut woken = Vec::new();
        let mut out = BytesMut::new();
        group.bench_with_input(
            BenchmarkId::new(
                format!("qos{}", qos as u8),
                format!("{subscribers}_subscribers"),
            ),
            &input,
            |b, input| {
                b.iter(|| {
                    let mut buf = input.clone();
                    core.handle_bytes(ConnId(0), &mut buf, 0);
                    drain(&mut core, &mut woken, &mut out, qos == QoS::AtLeastOnce);
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
