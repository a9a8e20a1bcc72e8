//! Byte-literal test vectors: one valid packet of each type, decoded and encoded.
//!
//! Each vector is checked both ways: the bytes decode to the packet (consuming all of
//! them) and the packet encodes to exactly the bytes.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use cutie_codec::*;

fn id(value: u16) -> PacketId {
    PacketId::new(value).expect("test packet ids are not 0")
}

fn topic(s: &str) -> TopicName {
    TopicName::try_from(s).expect("valid topic in test vector")
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::try_from(s).expect("valid filter in test vector")
}

fn assert_vector(bytes: &[u8], packet: Packet) {
    let mut buf = BytesMut::from(bytes);
    let decoded = Decoder::new(1024).decode(&mut buf);
    assert_eq!(decoded, Ok(Some(packet.clone())), "decoding {bytes:02x?}");
    assert!(buf.is_empty(), "decoding left {} bytes", buf.len());

    let mut encoded = BytesMut::new();
    packet.encode(&mut encoded);
    assert_eq!(&encoded[..], bytes, "encoding {packet:?}");
    assert_eq!(
        packet.encoded_len(),
        bytes.len(),
        "encoded_len of {packet:?}"
    );
}

#[test]
fn connect_3_1_1_with_empty_client_id_round_trips() {
    assert_vector(
        b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00",
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolLevel::V3_1_1,
            clean_session: true,
            keep_alive_secs: 60,
            client_id: ByteString::new(),
            will: None,
            username: None,
            password: None,
        })),
    );
}

#[test]
fn connect_3_1_1_with_will_user_name_and_password_round_trips() {
    assert_vector(
        b"\x10\x22\x00\x04MQTT\x04\xee\x00\x0a\
          \x00\x03cid\
          \x00\x03a/b\x00\x02hi\
          \x00\x04user\
          \x00\x02pw",
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolLevel::V3_1_1,
            clean_session: true,
            keep_alive_secs: 10,
            client_id: ByteString::from_static("cid"),
            will: Some(LastWill {
                topic: topic("a/b"),
                payload: Bytes::from_static(b"hi"),
                qos: QoS::AtLeastOnce,
                retain: true,
            }),
            username: Some(ByteString::from_static("user")),
            password: Some(Bytes::from_static(b"pw")),
        })),
    );
}

#[test]
fn connect_3_1_with_mqisdp_name_round_trips() {
    assert_vector(
        b"\x10\x11\x00\x06MQIsdp\x03\x00\x00\x3c\x00\x03cid",
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolLevel::V3_1,
            clean_session: false,
            keep_alive_secs: 60,
            client_id: ByteString::from_static("cid"),
            will: None,
            username: None,
            password: None,
        })),
    );
}

#[test]
fn connect_3_1_with_will_qos_2_and_user_name_round_trips() {
    // Flags: user name 0x80 | will QoS 2 0x10 | will 0x04 | clean session 0x02.
    assert_vector(
        b"\x10\x19\x00\x06MQIsdp\x03\x96\xff\xff\x00\x01c\x00\x01t\x00\x00\x00\x03bob",
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolLevel::V3_1,
            clean_session: true,
            keep_alive_secs: u16::MAX,
            client_id: ByteString::from_static("c"),
            will: Some(LastWill {
                topic: topic("t"),
                payload: Bytes::new(),
                qos: QoS::ExactlyOnce,
                retain: false,
            }),
            username: Some(ByteString::from_static("bob")),
            password: None,
        })),
    );
}

#[test]
fn connack_with_session_present_round_trips() {
    assert_vector(
        b"\x20\x02\x01\x00",
        Packet::ConnAck(ConnAck {
            session_present: true,
            return_code: ConnectReturnCode::Accepted,
        }),
    );
}

#[test]
fn connack_refusing_with_not_authorized_round_trips() {
    assert_vector(
        b"\x20\x02\x00\x05",
        Packet::ConnAck(ConnAck {
            session_present: false,
            return_code: ConnectReturnCode::NotAuthorized,
        }),
    );
}

#[test]
fn publish_qos_0_round_trips() {
    assert_vector(
        b"\x30\x0a\x00\x03a/bhello",
        Packet::Publish(Publish {
            dup: false,
            qos: PublishQos::AtMostOnce,
            retain: false,
            topic: topic("a/b"),
            payload: Bytes::from_static(b"hello"),
        }),
    );
}

#[test]
fn publish_qos_1_with_dup_and_retain_round_trips() {
    assert_vector(
        b"\x3b\x09\x00\x03a/b\x00\x07hi",
        Packet::Publish(Publish {
            dup: true,
            qos: PublishQos::AtLeastOnce(id(7)),
            retain: true,
            topic: topic("a/b"),
            payload: Bytes::from_static(b"hi"),
        }),
    );
}

#[test]
fn publish_qos_2_with_empty_payload_round_trips() {
    assert_vector(
        b"\x34\x07\x00\x03a/b\x12\x34",
        Packet::Publish(Publish {
            dup: false,
            qos: PublishQos::ExactlyOnce(id(0x1234)),
            retain: false,
            topic: topic("a/b"),
            payload: Bytes::new(),
        }),
    );
}

#[test]
fn publish_with_unicode_topic_round_trips() {
    // "ü/日" is 2 + 1 + 3 bytes of UTF-8.
    assert_vector(
        "\x30\x09\x00\x06ü/日x".as_bytes(),
        Packet::Publish(Publish {
            dup: false,
            qos: PublishQos::AtMostOnce,
            retain: false,
            topic: topic("ü/日"),
            payload: Bytes::from_static(b"x"),
        }),
    );
}

#[test]
fn publish_with_two_byte_remaining_length_round_trips() {
    // Remaining length 2 + 1 + 200 = 203 = 0xcb 0x01.
    let mut bytes = b"\x30\xcb\x01\x00\x01t".to_vec();
    bytes.extend_from_slice(&[0xab; 200]);
    assert_vector(
        &bytes,
        Packet::Publish(Publish {
            dup: false,
            qos: PublishQos::AtMostOnce,
            retain: false,
            topic: topic("t"),
            payload: Bytes::from(vec![0xab; 200]),
        }),
    );
}

#[test]
fn puback_round_trips() {
    assert_vector(b"\x40\x02\x00\x01", Packet::PubAck(id(1)));
}

#[test]
fn pubrec_round_trips() {
    assert_vector(b"\x50\x02\xff\xff", Packet::PubRec(id(u16::MAX)));
}

#[test]
fn pubrel_round_trips_with_flags_0010() {
    assert_vector(b"\x62\x02\x01\x00", Packet::PubRel(id(256)));
}

#[test]
fn pubcomp_round_trips() {
    assert_vector(b"\x70\x02\x00\x2a", Packet::PubComp(id(42)));
}

#[test]
fn subscribe_with_wildcard_filters_round_trips() {
    assert_vector(
        b"\x82\x0c\x00\x0a\x00\x03a/+\x01\x00\x01#\x02",
        Packet::Subscribe(Subscribe {
            packet_id: id(10),
            filters: vec![
                SubscribeFilter {
                    filter: filter("a/+"),
                    qos: QoS::AtLeastOnce,
                },
                SubscribeFilter {
                    filter: filter("#"),
                    qos: QoS::ExactlyOnce,
                },
            ],
        }),
    );
}

#[test]
fn suback_with_granted_and_failed_codes_round_trips() {
    assert_vector(
        b"\x90\x06\x00\x0a\x00\x01\x02\x80",
        Packet::SubAck(SubAck {
            packet_id: id(10),
            return_codes: vec![
                SubscribeReturnCode::Success(QoS::AtMostOnce),
                SubscribeReturnCode::Success(QoS::AtLeastOnce),
                SubscribeReturnCode::Success(QoS::ExactlyOnce),
                SubscribeReturnCode::Failure,
            ],
        }),
    );
}

#[test]
fn unsubscribe_round_trips() {
    assert_vector(
        b"\xa2\x0a\x00\x0b\x00\x03a/+\x00\x01#",
        Packet::Unsubscribe(Unsubscribe {
            packet_id: id(11),
            filters: vec![filter("a/+"), filter("#")],
        }),
    );
}

#[test]
fn unsuback_round_trips() {
    assert_vector(b"\xb0\x02\x00\x0b", Packet::UnsubAck(id(11)));
}

#[test]
fn pingreq_round_trips() {
    assert_vector(b"\xc0\x00", Packet::PingReq);
}

#[test]
fn pingresp_round_trips() {
    assert_vector(b"\xd0\x00", Packet::PingResp);
}

#[test]
fn disconnect_round_trips() {
    assert_vector(b"\xe0\x00", Packet::Disconnect);
}

#[test]
fn non_minimal_remaining_length_is_accepted() {
    // 0x80 0x00 is a two-byte encoding of 0; 3.1.1 does not forbid it.
    let mut buf = BytesMut::from(&b"\xc0\x80\x00"[..]);
    assert_eq!(Decoder::new(16).decode(&mut buf), Ok(Some(Packet::PingReq)));
    assert!(buf.is_empty());
}

#[test]
fn publish_qos_0_with_dup_encodes_without_dup() {
    let packet = Packet::Publish(Publish {
        dup: true,
        qos: PublishQos::AtMostOnce,
        retain: false,
        topic: topic("t"),
        payload: Bytes::new(),
    });
    let mut buf = BytesMut::new();
    packet.encode(&mut buf);
    assert_eq!(&buf[..], b"\x30\x03\x00\x01t");
}
