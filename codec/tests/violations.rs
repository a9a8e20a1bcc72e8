//! One byte-literal test per protocol violation, asserting the exact error.

use bytes::BytesMut;
use cutie_codec::*;

/// Decodes `bytes` (a complete packet) and returns the error it must produce.
fn rejected(bytes: &[u8]) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    match Decoder::new(1024).decode(&mut buf) {
        Err(error) => error,
        other => panic!("{bytes:02x?} decoded to {other:?}, expected an error"),
    }
}

/// A CONNECT packet: `name`, `level`, `flags`, keep-alive 60, then `payload`.
fn connect(name: &[u8], level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&u16::try_from(name.len()).expect("short name").to_be_bytes());
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0x00, 0x3c]);
    body.extend_from_slice(payload);
    let mut packet = vec![0x10, u8::try_from(body.len()).expect("short test body")];
    assert!(
        body.len() < 128,
        "test CONNECT needs a one-byte remaining length"
    );
    packet.extend_from_slice(&body);
    packet
}

fn connect_3_1_1(flags: u8, payload: &[u8]) -> Vec<u8> {
    connect(b"MQTT", 4, flags, payload)
}

// Fixed header.

#[test]
fn reserved_packet_type_0_is_rejected() {
    assert_eq!(rejected(b"\x00\x00"), DecodeError::ReservedPacketType(0));
}

#[test]
fn reserved_packet_type_15_is_rejected() {
    assert_eq!(rejected(b"\xf0\x00"), DecodeError::ReservedPacketType(15));
}

#[test]
fn remaining_length_of_five_bytes_is_rejected_without_waiting_for_more() {
    // Four length bytes, all with the continuation bit: nothing more is needed to know.
    assert_eq!(
        rejected(b"\x30\xff\xff\xff\xff"),
        DecodeError::MalformedRemainingLength
    );
    assert_eq!(
        rejected(b"\x30\x80\x80\x80\x80\x01"),
        DecodeError::MalformedRemainingLength
    );
}

#[test]
fn packet_larger_than_the_maximum_is_rejected_from_its_fixed_header() {
    // 3 header bytes + 1023 body bytes = 1026 > 1024; no body byte is present.
    let mut buf = BytesMut::from(&b"\x30\xff\x07"[..]);
    assert_eq!(
        Decoder::new(1024).decode(&mut buf),
        Err(DecodeError::PacketTooLarge {
            size: 1026,
            max: 1024
        })
    );
    assert_eq!(buf.len(), 3, "nothing is consumed");
}

#[test]
fn packet_of_exactly_the_maximum_size_is_accepted() {
    let mut buf = BytesMut::from(&b"\x40\x02\x00\x01"[..]);
    assert!(matches!(Decoder::new(4).decode(&mut buf), Ok(Some(_))));
    let mut buf = BytesMut::from(&b"\x40\x02\x00\x01"[..]);
    assert!(matches!(
        Decoder::new(3).decode(&mut buf),
        Err(DecodeError::PacketTooLarge { size: 4, max: 3 })
    ));
}

#[test]
fn connect_with_header_flags_is_rejected() {
    assert_eq!(
        rejected(&[0x11, 0x00]),
        DecodeError::InvalidHeaderFlags {
            packet_type: 1,
            flags: 1
        }
    );
}

#[test]
fn puback_with_header_flags_is_rejected() {
    assert_eq!(
        rejected(b"\x42\x02\x00\x01"),
        DecodeError::InvalidHeaderFlags {
            packet_type: 4,
            flags: 2
        }
    );
}

#[test]
fn pubrel_without_flags_0010_is_rejected() {
    assert_eq!(
        rejected(b"\x60\x02\x00\x01"),
        DecodeError::InvalidHeaderFlags {
            packet_type: 6,
            flags: 0
        }
    );
}

#[test]
fn subscribe_without_flags_0010_is_rejected() {
    assert_eq!(
        rejected(b"\x80\x06\x00\x01\x00\x01a\x00"),
        DecodeError::InvalidHeaderFlags {
            packet_type: 8,
            flags: 0
        }
    );
}

#[test]
fn unsubscribe_with_dup_flag_is_rejected() {
    assert_eq!(
        rejected(b"\xaa\x05\x00\x01\x00\x01a"),
        DecodeError::InvalidHeaderFlags {
            packet_type: 10,
            flags: 0b1010
        }
    );
}

#[test]
fn every_type_but_publish_requires_its_exact_header_flags() {
    let required = [
        (1, 0),
        (2, 0),
        (4, 0),
        (5, 0),
        (6, 2),
        (7, 0),
        (8, 2),
        (9, 0),
        (10, 2),
        (11, 0),
        (12, 0),
        (13, 0),
        (14, 0),
    ];
    for (packet_type, flags_required) in required {
        for flags in (0..16).filter(|&flags| flags != flags_required) {
            assert_eq!(
                rejected(&[packet_type << 4 | flags]),
                DecodeError::InvalidHeaderFlags { packet_type, flags },
                "type {packet_type} flags {flags:04b}"
            );
        }
    }
}

// PUBLISH.

#[test]
fn publish_with_qos_3_is_rejected() {
    assert_eq!(
        rejected(b"\x36\x05\x00\x01t\x00\x01"),
        DecodeError::InvalidQoS
    );
}

#[test]
fn publish_qos_0_with_dup_is_rejected() {
    assert_eq!(rejected(b"\x38\x03\x00\x01t"), DecodeError::DupWithQoS0);
}

#[test]
fn publish_with_plus_wildcard_topic_is_rejected() {
    assert_eq!(
        rejected(b"\x30\x05\x00\x03a/+"),
        DecodeError::Topic(TopicError::WildcardInTopicName)
    );
}

#[test]
fn publish_with_hash_wildcard_topic_is_rejected() {
    assert_eq!(
        rejected(b"\x30\x03\x00\x01#"),
        DecodeError::Topic(TopicError::WildcardInTopicName)
    );
}

#[test]
fn publish_with_empty_topic_is_rejected() {
    assert_eq!(
        rejected(b"\x30\x04\x00\x00hi"),
        DecodeError::Topic(TopicError::Empty)
    );
}

#[test]
fn publish_with_null_character_in_topic_is_rejected() {
    assert_eq!(
        rejected(b"\x30\x05\x00\x03a\x00b"),
        DecodeError::Topic(TopicError::NullCharacter)
    );
}

#[test]
fn publish_with_malformed_utf8_topic_is_rejected() {
    assert_eq!(
        rejected(b"\x30\x05\x00\x03a\xffb"),
        DecodeError::InvalidUtf8
    );
}

#[test]
fn publish_with_utf16_surrogate_in_topic_is_rejected() {
    // U+D800 encoded as UTF-8 (ED A0 80) is not well-formed [MQTT-1.5.3-1].
    assert_eq!(
        rejected(b"\x30\x05\x00\x03\xed\xa0\x80"),
        DecodeError::InvalidUtf8
    );
}

#[test]
fn publish_qos_1_with_packet_id_0_is_rejected() {
    assert_eq!(
        rejected(b"\x32\x05\x00\x01t\x00\x00"),
        DecodeError::ZeroPacketId
    );
}

#[test]
fn publish_qos_2_with_packet_id_0_is_rejected() {
    assert_eq!(
        rejected(b"\x34\x05\x00\x01t\x00\x00"),
        DecodeError::ZeroPacketId
    );
}

#[test]
fn publish_qos_1_without_room_for_its_packet_id_is_rejected() {
    assert_eq!(
        rejected(b"\x32\x04\x00\x01t\x00"),
        DecodeError::MalformedLength
    );
}

#[test]
fn publish_with_topic_longer_than_its_body_is_rejected() {
    assert_eq!(rejected(b"\x30\x03\x00\x05a"), DecodeError::MalformedLength);
}

// Packet ids of the acknowledgements.

#[test]
fn puback_with_packet_id_0_is_rejected() {
    assert_eq!(rejected(b"\x40\x02\x00\x00"), DecodeError::ZeroPacketId);
}

#[test]
fn pubrec_with_packet_id_0_is_rejected() {
    assert_eq!(rejected(b"\x50\x02\x00\x00"), DecodeError::ZeroPacketId);
}

#[test]
fn pubrel_with_packet_id_0_is_rejected() {
    assert_eq!(rejected(b"\x62\x02\x00\x00"), DecodeError::ZeroPacketId);
}

#[test]
fn pubcomp_with_packet_id_0_is_rejected() {
    assert_eq!(rejected(b"\x70\x02\x00\x00"), DecodeError::ZeroPacketId);
}

#[test]
fn subscribe_with_packet_id_0_is_rejected() {
    assert_eq!(
        rejected(b"\x82\x06\x00\x00\x00\x01a\x00"),
        DecodeError::ZeroPacketId
    );
}

#[test]
fn suback_with_packet_id_0_is_rejected() {
    assert_eq!(rejected(b"\x90\x03\x00\x00\x00"), DecodeError::ZeroPacketId);
}

#[test]
fn unsubscribe_with_packet_id_0_is_rejected() {
    assert_eq!(
        rejected(b"\xa2\x05\x00\x00\x00\x01a"),
        DecodeError::ZeroPacketId
    );
}

#[test]
fn unsuback_with_packet_id_0_is_rejected() {
    assert_eq!(rejected(b"\xb0\x02\x00\x00"), DecodeError::ZeroPacketId);
}

// Lengths.

#[test]
fn puback_shorter_than_a_packet_id_is_rejected() {
    assert_eq!(rejected(b"\x40\x01\x00"), DecodeError::MalformedLength);
}

#[test]
fn puback_with_trailing_bytes_is_rejected() {
    assert_eq!(
        rejected(b"\x40\x03\x00\x01\x00"),
        DecodeError::MalformedLength
    );
}

#[test]
fn pingreq_with_a_body_is_rejected() {
    assert_eq!(rejected(b"\xc0\x01\x00"), DecodeError::MalformedLength);
}

#[test]
fn disconnect_with_a_body_is_rejected() {
    assert_eq!(rejected(b"\xe0\x01\x00"), DecodeError::MalformedLength);
}

#[test]
fn connack_with_trailing_bytes_is_rejected() {
    assert_eq!(
        rejected(b"\x20\x03\x00\x00\x00"),
        DecodeError::MalformedLength
    );
}

#[test]
fn connack_shorter_than_two_bytes_is_rejected() {
    assert_eq!(rejected(b"\x20\x01\x00"), DecodeError::MalformedLength);
}

#[test]
fn connect_with_trailing_bytes_is_rejected() {
    assert_eq!(
        rejected(&connect_3_1_1(0x02, b"\x00\x01c\xff")),
        DecodeError::MalformedLength
    );
}

#[test]
fn connect_with_client_id_longer_than_its_body_is_rejected() {
    assert_eq!(
        rejected(&connect_3_1_1(0x02, b"\x00\x05c")),
        DecodeError::MalformedLength
    );
}

#[test]
fn connect_with_user_name_flag_but_no_user_name_is_rejected() {
    assert_eq!(
        rejected(&connect_3_1_1(0x82, b"\x00\x01c")),
        DecodeError::MalformedLength
    );
}

#[test]
fn subscribe_filter_without_requested_qos_is_rejected() {
    assert_eq!(
        rejected(b"\x82\x05\x00\x01\x00\x01a"),
        DecodeError::MalformedLength
    );
}

#[test]
fn suback_without_return_codes_is_rejected() {
    assert_eq!(rejected(b"\x90\x02\x00\x01"), DecodeError::MalformedLength);
}

// SUBSCRIBE, UNSUBSCRIBE, SUBACK.

#[test]
fn subscribe_without_filters_is_rejected() {
    assert_eq!(
        rejected(b"\x82\x02\x00\x01"),
        DecodeError::SubscribeWithoutFilters
    );
}

#[test]
fn unsubscribe_without_filters_is_rejected() {
    assert_eq!(
        rejected(b"\xa2\x02\x00\x01"),
        DecodeError::UnsubscribeWithoutFilters
    );
}

#[test]
fn subscribe_with_reserved_bits_in_requested_qos_is_rejected() {
    assert_eq!(
        rejected(b"\x82\x06\x00\x01\x00\x01a\x04"),
        DecodeError::SubscribeReservedBits
    );
    assert_eq!(
        rejected(b"\x82\x06\x00\x01\x00\x01a\x81"),
        DecodeError::SubscribeReservedBits
    );
}

#[test]
fn subscribe_with_requested_qos_3_is_rejected() {
    assert_eq!(
        rejected(b"\x82\x06\x00\x01\x00\x01a\x03"),
        DecodeError::InvalidQoS
    );
}

#[test]
fn subscribe_with_empty_filter_is_rejected() {
    assert_eq!(
        rejected(b"\x82\x05\x00\x01\x00\x00\x00"),
        DecodeError::Topic(TopicError::Empty)
    );
}

#[test]
fn subscribe_with_hash_not_last_is_rejected() {
    assert_eq!(
        rejected(b"\x82\x0a\x00\x01\x00\x05a/#/b\x00"),
        DecodeError::Topic(TopicError::MultiLevelWildcardNotLast)
    );
}

#[test]
fn subscribe_with_plus_not_a_whole_level_is_rejected() {
    assert_eq!(
        rejected(b"\x82\x09\x00\x01\x00\x04a/b+\x00"),
        DecodeError::Topic(TopicError::SingleLevelWildcardNotWholeLevel)
    );
}

#[test]
fn subscribe_with_null_character_in_filter_is_rejected() {
    assert_eq!(
        rejected(b"\x82\x07\x00\x01\x00\x02a\x00\x00"),
        DecodeError::Topic(TopicError::NullCharacter)
    );
}

#[test]
fn subscribe_with_malformed_utf8_filter_is_rejected() {
    assert_eq!(
        rejected(b"\x82\x06\x00\x01\x00\x01\xc3\x00"),
        DecodeError::InvalidUtf8
    );
}

#[test]
fn unsubscribe_with_empty_filter_is_rejected() {
    assert_eq!(
        rejected(b"\xa2\x04\x00\x01\x00\x00"),
        DecodeError::Topic(TopicError::Empty)
    );
}

#[test]
fn unsubscribe_with_hash_not_last_is_rejected() {
    assert_eq!(
        rejected(b"\xa2\x06\x00\x01\x00\x02#a"),
        DecodeError::Topic(TopicError::MultiLevelWildcardNotLast)
    );
}

#[test]
fn suback_with_return_code_3_is_rejected() {
    assert_eq!(
        rejected(b"\x90\x04\x00\x01\x00\x03"),
        DecodeError::InvalidSubAckReturnCode(3)
    );
}

#[test]
fn suback_with_return_code_0x81_is_rejected() {
    assert_eq!(
        rejected(b"\x90\x03\x00\x01\x81"),
        DecodeError::InvalidSubAckReturnCode(0x81)
    );
}

// CONNACK.

#[test]
fn connack_with_reserved_acknowledge_flags_is_rejected() {
    assert_eq!(rejected(b"\x20\x02\x02\x00"), DecodeError::InvalidConnAck);
    assert_eq!(rejected(b"\x20\x02\x80\x00"), DecodeError::InvalidConnAck);
}

#[test]
fn connack_with_return_code_6_is_rejected() {
    assert_eq!(rejected(b"\x20\x02\x00\x06"), DecodeError::InvalidConnAck);
}

#[test]
fn connack_refusal_with_session_present_is_rejected() {
    assert_eq!(rejected(b"\x20\x02\x01\x02"), DecodeError::InvalidConnAck);
}

// CONNECT.

#[test]
fn connect_with_unknown_protocol_name_is_rejected() {
    assert_eq!(
        rejected(&connect(b"MQTX", 4, 0x02, b"\x00\x01c")),
        DecodeError::UnknownProtocolName
    );
}

#[test]
fn connect_with_non_utf8_protocol_name_is_rejected_as_unknown() {
    assert_eq!(
        rejected(&connect(b"\xff\xfe", 4, 0x02, b"\x00\x01c")),
        DecodeError::UnknownProtocolName
    );
}

#[test]
fn connect_mqtt_level_5_is_unsupported_before_its_properties_are_parsed() {
    // An MQTT 5.0 CONNECT: properties (length 5, session expiry 0x11) follow the
    // keep-alive and would be a malformed client id to a 3.1.1 parser.
    let packet = connect(b"MQTT", 5, 0x02, b"\x05\x11\x00\x00\x00\x0a\x00\x01c");
    assert_eq!(rejected(&packet), DecodeError::UnsupportedProtocolLevel(5));
    assert_eq!(
        rejected(&packet).connack_return_code(),
        Some(ConnectReturnCode::UnacceptableProtocolVersion)
    );
}

#[test]
fn connect_mqtt_level_3_is_unsupported() {
    assert_eq!(
        rejected(&connect(b"MQTT", 3, 0x02, b"\x00\x01c")),
        DecodeError::UnsupportedProtocolLevel(3)
    );
}

#[test]
fn connect_mqisdp_level_4_is_unsupported() {
    assert_eq!(
        rejected(&connect(b"MQIsdp", 4, 0x02, b"\x00\x01c")),
        DecodeError::UnsupportedProtocolLevel(4)
    );
}

#[test]
fn connect_with_unsupported_level_and_reserved_flag_reports_the_level() {
    assert_eq!(
        rejected(&connect(b"MQTT", 6, 0xff, b"")),
        DecodeError::UnsupportedProtocolLevel(6)
    );
}

#[test]
fn connect_with_reserved_flag_is_rejected() {
    assert_eq!(
        rejected(&connect_3_1_1(0x03, b"\x00\x01c")),
        DecodeError::ConnectReservedFlag
    );
}

#[test]
fn connect_with_will_qos_without_will_flag_is_rejected() {
    assert_eq!(
        rejected(&connect_3_1_1(0x0a, b"\x00\x01c")),
        DecodeError::WillFlagsWithoutWill
    );
}

#[test]
fn connect_with_will_retain_without_will_flag_is_rejected() {
    assert_eq!(
        rejected(&connect_3_1_1(0x22, b"\x00\x01c")),
        DecodeError::WillFlagsWithoutWill
    );
}

#[test]
fn connect_with_will_qos_3_is_rejected() {
    assert_eq!(
        rejected(&connect_3_1_1(0x1e, b"\x00\x01c\x00\x01t\x00\x00")),
        DecodeError::InvalidWillQoS
    );
}

#[test]
fn connect_3_1_1_with_password_without_user_name_is_rejected() {
    assert_eq!(
        rejected(&connect_3_1_1(0x42, b"\x00\x01c\x00\x02pw")),
        DecodeError::PasswordWithoutUserName
    );
}

#[test]
fn connect_3_1_with_password_without_user_name_is_rejected() {
    assert_eq!(
        rejected(&connect(b"MQIsdp", 3, 0x42, b"\x00\x01c\x00\x02pw")),
        DecodeError::PasswordWithoutUserName
    );
}

#[test]
fn connect_with_null_character_in_client_id_is_rejected() {
    assert_eq!(
        rejected(&connect_3_1_1(0x02, b"\x00\x02c\x00")),
        DecodeError::NullCharacter
    );
}

#[test]
fn connect_with_null_character_in_user_name_is_rejected() {
    assert_eq!(
        rejected(&connect_3_1_1(0x82, b"\x00\x01c\x00\x02u\x00")),
        DecodeError::NullCharacter
    );
}

#[test]
fn connect_with_malformed_utf8_client_id_is_rejected() {
    assert_eq!(
        rejected(&connect_3_1_1(0x02, b"\x00\x01\x80")),
        DecodeError::InvalidUtf8
    );
}

#[test]
fn connect_with_malformed_utf8_user_name_is_rejected() {
    assert_eq!(
        rejected(&connect_3_1_1(0x82, b"\x00\x01c\x00\x01\xfe")),
        DecodeError::InvalidUtf8
    );
}

#[test]
fn connect_with_wildcard_in_will_topic_is_rejected() {
    assert_eq!(
        rejected(&connect_3_1_1(0x06, b"\x00\x01c\x00\x03a/#\x00\x00")),
        DecodeError::Topic(TopicError::WildcardInTopicName)
    );
}

#[test]
fn connect_with_empty_will_topic_is_rejected() {
    assert_eq!(
        rejected(&connect_3_1_1(0x06, b"\x00\x01c\x00\x00\x00\x00")),
        DecodeError::Topic(TopicError::Empty)
    );
}

#[test]
fn connect_with_null_character_in_will_topic_is_rejected() {
    assert_eq!(
        rejected(&connect_3_1_1(0x06, b"\x00\x01c\x00\x01\x00\x00\x00")),
        DecodeError::Topic(TopicError::NullCharacter)
    );
}

#[test]
fn connect_with_empty_client_id_is_accepted() {
    let mut buf = BytesMut::from(&connect_3_1_1(0x00, b"\x00\x00")[..]);
    match Decoder::new(1024).decode(&mut buf) {
        Ok(Some(Packet::Connect(connect))) => assert!(connect.client_id.is_empty()),
        other => panic!("expected a CONNECT, got {other:?}"),
    }
}

#[test]
fn every_error_names_a_spec_statement_and_a_kind() {
    let errors = [
        rejected(b"\x00\x00"),
        rejected(b"\x38\x03\x00\x01t"),
        rejected(b"\x30\x05\x00\x03a/+"),
    ];
    for error in errors {
        assert!(!error.spec_statement().is_empty());
        assert!(!error.kind().is_empty());
        assert!(!error.to_string().is_empty());
    }
    assert_eq!(DecodeError::DupWithQoS0.spec_statement(), "MQTT-3.3.1-2");
}
