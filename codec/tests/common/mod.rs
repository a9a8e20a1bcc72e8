//! Shared test support: proptest strategies for valid packets of every type.
//!
//! Each integration test binary uses a different part of this module.
#![allow(dead_code)]

use bytes::Bytes;
use bytestring::ByteString;
use cutie_codec::*;
use proptest::collection::vec;
use proptest::prelude::*;

/// One topic level: mostly from a small alphabet (so filters match topics), sometimes
/// arbitrary non-null Unicode without `/`, `+` or `#`.
pub fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["a", "b", "$x", "", "sport", "ü", "日本", " "])
            .prop_map(String::from),
        1 => "[^\\x00+#/]{0,6}",
    ]
}

/// A valid topic name: 1 to 5 levels, unicode, `$`-levels, empty levels.
pub fn topic_name() -> impl Strategy<Value = TopicName> {
    vec(level(), 1..6).prop_filter_map("empty topic", |levels| {
        TopicName::try_from(levels.join("/")).ok()
    })
}

/// A valid topic filter: levels with `+`, optionally ending in `#`.
pub fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let level_or_plus = prop_oneof![3 => level(), 1 => Just("+".to_owned())];
    (vec(level_or_plus, 0..5), any::<bool>()).prop_filter_map("empty filter", |(levels, hash)| {
        let mut filter = levels.join("/");
        if hash {
            filter.push_str(if levels.is_empty() { "#" } else { "/#" });
        }
        TopicFilter::try_from(filter).ok()
    })
}

/// A UTF-8 string without U+0000 (client ids, user names), possibly empty.
pub fn string() -> impl Strategy<Value = ByteString> {
    "[^\\x00]{0,12}".prop_map(ByteString::from)
}

/// Binary data (payloads, passwords), possibly empty.
pub fn bytes(len_max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=len_max).prop_map(Bytes::from)
}

pub fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|id| PacketId::new(id).expect("1..=u16::MAX is never 0"))
}

pub fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

pub fn protocol() -> impl Strategy<Value = ProtocolLevel> {
    prop_oneof![Just(ProtocolLevel::V3_1), Just(ProtocolLevel::V3_1_1)]
}

pub fn connect() -> impl Strategy<Value = Connect> {
    let will = (topic_name(), bytes(24), qos(), any::<bool>()).prop_map(
        |(topic, payload, qos, retain)| LastWill {
            topic,
            payload,
            qos,
            retain,
        },
    );
    // A password needs a user name [MQTT-3.1.2-22].
    let credentials = prop_oneof![
        Just((None, None)),
        string().prop_map(|username| (Some(username), None)),
        (string(), bytes(16)).prop_map(|(username, password)| (Some(username), Some(password))),
    ];
    (
        protocol(),
        any::<bool>(),
        any::<u16>(),
        string(),
        prop::option::of(will),
        credentials,
    )
        .prop_map(
            |(protocol, clean_session, keep_alive_secs, client_id, will, (username, password))| {
                Connect {
                    protocol,
                    clean_session,
                    keep_alive_secs,
                    client_id,
                    will,
                    username,
                    password,
                }
            },
        )
}

pub fn connect_return_code() -> impl Strategy<Value = ConnectReturnCode> {
    (0u8..=5).prop_map(|code| ConnectReturnCode::from_u8(code).expect("0..=5 are defined"))
}

pub fn connack() -> impl Strategy<Value = ConnAck> {
    // A refusal never has a session [MQTT-3.2.2-4].
    (any::<bool>(), connect_return_code()).prop_map(|(session_present, return_code)| ConnAck {
        session_present: session_present && return_code == ConnectReturnCode::Accepted,
        return_code,
    })
}

pub fn publish(payload_len_max: usize) -> impl Strategy<Value = Publish> {
    (
        any::<bool>(),
        qos(),
        packet_id(),
        any::<bool>(),
        topic_name(),
        bytes(payload_len_max),
    )
        .prop_map(|(dup, qos, packet_id, retain, topic, payload)| Publish {
            // DUP only with QoS 1 and 2 [MQTT-3.3.1-2].
            dup: dup && qos != QoS::AtMostOnce,
            qos: PublishQos::with(qos, packet_id),
            retain,
            topic,
            payload,
        })
}

pub fn subscribe() -> impl Strategy<Value = Subscribe> {
    let filter = (topic_filter(), qos()).prop_map(|(filter, qos)| SubscribeFilter { filter, qos });
    (packet_id(), vec(filter, 1..5))
        .prop_map(|(packet_id, filters)| Subscribe { packet_id, filters })
}

pub fn subscribe_return_code() -> impl Strategy<Value = SubscribeReturnCode> {
    prop_oneof![
        qos().prop_map(SubscribeReturnCode::Success),
        Just(SubscribeReturnCode::Failure)
    ]
}

pub fn suback() -> impl Strategy<Value = SubAck> {
    (packet_id(), vec(subscribe_return_code(), 1..6)).prop_map(|(packet_id, return_codes)| SubAck {
        packet_id,
        return_codes,
    })
}

pub fn unsubscribe() -> impl Strategy<Value = Unsubscribe> {
    (packet_id(), vec(topic_filter(), 1..5))
        .prop_map(|(packet_id, filters)| Unsubscribe { packet_id, filters })
}

/// Any valid packet, PUBLISH payloads up to `payload_len_max` bytes.
pub fn packet(payload_len_max: usize) -> impl Strategy<Value = Packet> {
    prop_oneof![
        1 => connect().prop_map(|connect| Packet::Connect(Box::new(connect))),
        1 => connack().prop_map(Packet::ConnAck),
        3 => publish(payload_len_max).prop_map(Packet::Publish),
        1 => packet_id().prop_map(Packet::PubAck),
        1 => packet_id().prop_map(Packet::PubRec),
        1 => packet_id().prop_map(Packet::PubRel),
        1 => packet_id().prop_map(Packet::PubComp),
        1 => subscribe().prop_map(Packet::Subscribe),
        1 => suback().prop_map(Packet::SubAck),
        1 => unsubscribe().prop_map(Packet::Unsubscribe),
        1 => packet_id().prop_map(Packet::UnsubAck),
        1 => Just(Packet::PingReq),
        1 => Just(Packet::PingResp),
        1 => Just(Packet::Disconnect),
    ]
}

/// `packet` encoded, checking that exactly `encoded_len` bytes were appended.
pub fn encode(packet: &Packet) -> bytes::BytesMut {
    let mut buf = bytes::BytesMut::new();
    packet.encode(&mut buf);
    assert_eq!(buf.len(), packet.encoded_len(), "encoded_len of {packet:?}");
    buf
}
