//! Codec hot paths: PUBLISH decode and encode, QoS 0 and 1, 64 B and 4 KiB payloads.
//!
//! `codec_bytes` reports MB/s (encoded packet bytes), `codec_packets` packets/s. Run with
//! `cargo bench -p cutie-codec --bench codec`. Measured and reported, never asserted.

use bytes::{Bytes, BytesMut};
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use cutie_codec::{Decoder, Packet, PacketId, Publish, PublishQos, TopicName};

fn publish(qos_1: bool, payload_bytes: usize) -> Packet {
    let packet_id = PacketId::new(1).expect("1 is not 0");
    Packet::Publish(Publish {
        dup: false,
        qos: if qos_1 {
            PublishQos::AtLeastOnce(packet_id)
        } else {
            PublishQos::AtMostOnce
        },
        retain: false,
        topic: TopicName::try_from("sensors/building-1/floor-3/temperature").expect("valid topic"),
        payload: Bytes::from(vec![0x5a; payload_bytes]),
    })
}

fn cases() -> Vec<(String, Packet)> {
    let mut cases = Vec::new();
    for (qos_name, qos_1) in [("qos0", false), ("qos1", true)] {
        for (size_name, payload_bytes) in [("64B", 64), ("4KiB", 4096)] {
            cases.push((
                format!("{qos_name}/{size_name}"),
                publish(qos_1, payload_bytes),
            ));
        }
    }
    cases
}

fn bench_cases<M: criterion::measurement::Measurement>(
    group: &mut BenchmarkGroup<'_, M>,
    throughput: impl Fn(&Packet) -> Throughput,
) {
    for (name, packet) in cases() {
        let mut encoded = BytesMut::new();
        packet.encode(&mut encoded);
        let encoded = encoded.freeze();
        group.throughput(throughput(&packet));

        group.bench_function(format!("decode/{name}"), |b| {
            let mut decoder = Decoder::new(64 * 1024);
            // A fresh read buffer per packet, built outside the timing: what is timed is
            // the header checks, UTF-8 validation and the zero-copy split.
            b.iter_batched_ref(
                || BytesMut::from(&encoded[..]),
                |buf| {
                    decoder
                        .decode(buf)
                        .expect("valid packet")
                        .expect("complete packet")
                },
                BatchSize::SmallInput,
            );
        });

        group.bench_function(format!("encode/{name}"), |b| {
            let mut buf = BytesMut::with_capacity(packet.encoded_len());
            b.iter(|| {
                buf.clear();
                black_box(&packet).encode(&mut buf);
                black_box(&buf);
            });
        });
    }
}

fn codec_bytes(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec_bytes");
    bench_cases(&mut group, |packet| {
        Throughput::Bytes(packet.encoded_len() as u64)
    });
    group.finish();
}

fn codec_packets(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec_packets");
    bench_cases(&mut group, |_| Throughput::Elements(1));
    group.finish();
}

criterion_group!(benches, codec_bytes, codec_packets);
criterion_main!(benches);
