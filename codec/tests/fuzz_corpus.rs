//! Replays the fuzz corpus (`codec/fuzz/corpus/decode/`) through the fuzz target's check,
//! so CI exercises it without cargo-fuzz. Regenerate the seed files with
//! `CUTIE_WRITE_FUZZ_CORPUS=1 cargo test -p cutie-codec --test fuzz_corpus`.

#[path = "../fuzz/decode_check.rs"]
mod decode_check;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use cutie_codec::*;
use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode")
}

/// Malformed seeds are named `bad-*`; every other seed is valid packets only. Files the
/// fuzzer adds (named by their hash) are replayed too.
const MALFORMED_PREFIX: &str = "bad-";

#[test]
fn every_fuzz_corpus_file_passes_the_fuzz_check() {
    let dir = corpus_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("fuzz corpus {} is missing: {error}", dir.display()));
    let mut replayed = 0;
    for entry in entries {
        let path = entry.expect("readable corpus entry").path();
        let data = std::fs::read(&path).expect("readable corpus file");
        decode_check::check(&data);
        replayed += 1;
    }
    assert!(
        replayed >= 20,
        "fuzz corpus {} has only {replayed} files",
        dir.display()
    );
}

fn id(value: u16) -> PacketId {
    PacketId::new(value).expect("seed packet ids are not 0")
}

fn topic(s: &str) -> TopicName {
    TopicName::try_from(s).expect("valid seed topic")
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::try_from(s).expect("valid seed filter")
}

fn encoded(packets: &[Packet]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for packet in packets {
        packet.encode(&mut buf);
    }
    buf.to_vec()
}

fn connect(protocol: ProtocolLevel, full: bool) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_session: !full,
        keep_alive_secs: 30,
        client_id: ByteString::from_static(if full { "client-ü" } else { "" }),
        will: full.then(|| LastWill {
            topic: topic("clients/gone"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
        }),
        username: full.then(|| ByteString::from_static("user")),
        password: full.then(|| Bytes::from_static(b"\x00secret\xff")),
    }))
}

fn publish(qos: PublishQos, dup: bool, topic_name: &str, payload: Vec<u8>) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain: dup,
        topic: topic(topic_name),
        payload: Bytes::from(payload),
    })
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: id(3),
        filters: vec![
            SubscribeFilter {
                filter: filter("sport/+/score"),
                qos: QoS::AtMostOnce,
            },
            SubscribeFilter {
                filter: filter("$SYS/#"),
                qos: QoS::ExactlyOnce,
            },
        ],
    });
    let pingreq = Packet::PingReq;
    vec![
        (
            "connect-3.1.1-minimal",
            encoded(&[connect(ProtocolLevel::V3_1_1, false)]),
        ),
        (
            "connect-3.1.1-full",
            encoded(&[connect(ProtocolLevel::V3_1_1, true)]),
        ),
        (
            "connect-3.1-minimal",
            encoded(&[connect(ProtocolLevel::V3_1, false)]),
        ),
        (
            "connect-3.1-full",
            encoded(&[connect(ProtocolLevel::V3_1, true)]),
        ),
        (
            "connack-accepted",
            encoded(&[Packet::ConnAck(ConnAck {
                session_present: true,
                return_code: ConnectReturnCode::Accepted,
            })]),
        ),
        (
            "connack-refused",
            encoded(&[Packet::ConnAck(ConnAck {
                session_present: false,
                return_code: ConnectReturnCode::BadUserNameOrPassword,
            })]),
        ),
        (
            "publish-qos0",
            encoded(&[publish(
                PublishQos::AtMostOnce,
                false,
                "a/b",
                b"hello".to_vec(),
            )]),
        ),
        (
            "publish-qos1-dup-retain",
            encoded(&[publish(
                PublishQos::AtLeastOnce(id(1)),
                true,
                "a",
                b"x".to_vec(),
            )]),
        ),
        (
            "publish-qos2-empty",
            encoded(&[publish(
                PublishQos::ExactlyOnce(id(65535)),
                false,
                "/",
                Vec::new(),
            )]),
        ),
        (
            "publish-unicode-topic",
            encoded(&[publish(
                PublishQos::AtMostOnce,
                false,
                "日本/ü/$x",
                b"\x00\xff".to_vec(),
            )]),
        ),
        (
            "publish-300-bytes",
            encoded(&[publish(
                PublishQos::AtLeastOnce(id(9)),
                false,
                "big",
                vec![0x5a; 300],
            )]),
        ),
        ("puback", encoded(&[Packet::PubAck(id(1))])),
        ("pubrec", encoded(&[Packet::PubRec(id(2))])),
        ("pubrel", encoded(&[Packet::PubRel(id(2))])),
        ("pubcomp", encoded(&[Packet::PubComp(id(2))])),
        ("subscribe", encoded(std::slice::from_ref(&subscribe))),
        (
            "suback",
            encoded(&[Packet::SubAck(SubAck {
                packet_id: id(3),
                return_codes: vec![
                    SubscribeReturnCode::Success(QoS::AtMostOnce),
                    SubscribeReturnCode::Failure,
                ],
            })]),
        ),
        (
            "unsubscribe",
            encoded(&[Packet::Unsubscribe(Unsubscribe {
                packet_id: id(4),
                filters: vec![filter("sport/+/score"), filter("#")],
            })]),
        ),
        ("unsuback", encoded(&[Packet::UnsubAck(id(4))])),
        ("pingreq", encoded(std::slice::from_ref(&pingreq))),
        ("pingresp", encoded(&[Packet::PingResp])),
        ("disconnect", encoded(&[Packet::Disconnect])),
        (
            "stream-session",
            encoded(&[
                connect(ProtocolLevel::V3_1_1, true),
                subscribe,
                publish(
                    PublishQos::AtLeastOnce(id(5)),
                    false,
                    "sport/x/score",
                    b"1:0".to_vec(),
                ),
                Packet::PubAck(id(5)),
                pingreq,
                Packet::Disconnect,
            ]),
        ),
        (
            "bad-connect-level-5",
            b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01c".to_vec(),
        ),
        (
            "bad-connect-password-without-user-name",
            b"\x10\x11\x00\x04MQTT\x04\x42\x00\x3c\x00\x01c\x00\x02pw".to_vec(),
        ),
        (
            "bad-publish-wildcard-topic",
            b"\x30\x05\x00\x03a/+".to_vec(),
        ),
        ("bad-publish-dup-qos0", b"\x38\x03\x00\x01t".to_vec()),
        ("bad-publish-truncated", b"\x32\x0a\x00\x03a/b\x00".to_vec()),
        (
            "bad-subscribe-qos-3",
            b"\x82\x06\x00\x01\x00\x01a\x03".to_vec(),
        ),
        (
            "bad-remaining-length-5-bytes",
            b"\x30\xff\xff\xff\xff\x7f".to_vec(),
        ),
        ("bad-reserved-type-15", b"\xf0\x00".to_vec()),
        ("bad-too-large", b"\x30\xff\xff\x03".to_vec()),
    ]
}

#[test]
fn seeds_are_what_their_names_say() {
    for (name, bytes) in seeds() {
        let decoded = decode_check::check(&bytes);
        let all_decoded: usize = decoded.iter().map(Packet::encoded_len).sum::<usize>();
        if name.starts_with(MALFORMED_PREFIX) {
            assert!(
                all_decoded < bytes.len(),
                "malformed seed {name} decoded fully"
            );
        } else {
            assert_eq!(
                all_decoded,
                bytes.len(),
                "valid seed {name} did not decode fully"
            );
        }
    }
}

#[test]
fn every_seed_is_in_the_corpus() {
    if std::env::var_os("CUTIE_WRITE_FUZZ_CORPUS").is_some() {
        let dir = corpus_dir();
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        for (name, bytes) in seeds() {
            std::fs::write(dir.join(name), bytes).expect("write corpus file");
        }
    }
    for (name, bytes) in seeds() {
        let path = corpus_dir().join(name);
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|error| panic!("seed {} is missing: {error}", path.display()));
        assert_eq!(
            on_disk, bytes,
            "seed {name} is stale: regenerate the corpus"
        );
    }
}
