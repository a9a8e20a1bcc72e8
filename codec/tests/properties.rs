//! Property tests: round trips of every packet type, streams split at every point,
//! arbitrary and mutated bytes, the size limit.

mod common;

use bytes::BytesMut;
use common::{encode, packet, publish};
use cutie_codec::decode::{decode_remaining_length, REMAINING_LENGTH_MAX};
use cutie_codec::encode::{put_remaining_length, remaining_length_len};
use cutie_codec::*;
use proptest::collection::vec;
use proptest::prelude::*;

/// Decodes every complete packet at the front of `buf`, panicking on an error.
fn drain(decoder: &mut Decoder, buf: &mut BytesMut, out: &mut Vec<Packet>) {
    loop {
        let len_before = buf.len();
        match decoder.decode(buf) {
            Ok(Some(packet)) => out.push(packet),
            Ok(None) => {
                assert_eq!(buf.len(), len_before, "Ok(None) consumed bytes");
                return;
            }
            Err(error) => panic!("valid stream refused: {error}"),
        }
    }
}

fn encode_all(packets: &[Packet]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for packet in packets {
        let before = buf.len();
        packet.encode(&mut buf);
        assert_eq!(buf.len() - before, packet.encoded_len());
    }
    buf.to_vec()
}

/// Decodes bytes that are not necessarily valid until they run out or are refused. Every
/// packet that decodes must encode to bytes that decode to the same packet.
fn decode_untrusted(bytes: &[u8], packet_size_max: usize) {
    let mut decoder = Decoder::new(packet_size_max);
    let mut buf = BytesMut::from(bytes);
    loop {
        let len_before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(packet)) => {
                assert!(buf.len() < len_before, "a decoded packet consumed no bytes");
                let mut encoded = encode(&packet);
                assert_eq!(decoder.decode(&mut encoded), Ok(Some(packet)));
                assert!(encoded.is_empty());
            }
            Ok(None) => {
                assert_eq!(buf.len(), len_before, "Ok(None) consumed bytes");
                return;
            }
            Err(_) => return,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_valid_packet_round_trips(packet in packet(64)) {
        let mut buf = encode(&packet);
        let decoded = Decoder::new(usize::MAX).decode(&mut buf);
        prop_assert_eq!(decoded, Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn large_publishes_round_trip(publish in publish(20_000)) {
        let packet = Packet::Publish(publish);
        let mut buf = encode(&packet);
        prop_assert_eq!(Decoder::new(usize::MAX).decode(&mut buf), Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn remaining_length_round_trips(value in 0..=REMAINING_LENGTH_MAX) {
        let mut buf = BytesMut::new();
        put_remaining_length(&mut buf, value);
        prop_assert_eq!(buf.len(), remaining_length_len(value));
        prop_assert_eq!(decode_remaining_length(&buf), Ok(Some((value, buf.len()))));
        // Every proper prefix asks for more.
        for end in 0..buf.len() {
            prop_assert_eq!(decode_remaining_length(&buf[..end]), Ok(None));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        decode_untrusted(&bytes, 64);
    }

    #[test]
    fn arbitrary_bodies_after_a_valid_first_byte_never_panic(
        first in prop::sample::select(vec![
            0x10u8, 0x20, 0x30, 0x32, 0x34, 0x3b, 0x40, 0x50, 0x62, 0x70, 0x82, 0x90, 0xa2,
            0xb0, 0xc0, 0xd0, 0xe0,
        ]),
        body in vec(any::<u8>(), 0..64),
    ) {
        // A correct one-byte Remaining Length so the body is actually parsed.
        let mut bytes = vec![first, u8::try_from(body.len()).expect("body under 128")];
        bytes.extend_from_slice(&body);
        decode_untrusted(&bytes, 128);
    }

    #[test]
    fn mutated_valid_packets_never_panic(
        packets in vec(packet(32), 1..4),
        mutations in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = encode_all(&packets);
        for (index, byte) in mutations {
            let at = index.index(bytes.len());
            bytes[at] = byte;
        }
        decode_untrusted(&bytes, 256);
    }

    #[test]
    fn oversized_packet_is_refused_from_its_fixed_header_alone(
        first in prop::sample::select(vec![0x10u8, 0x30, 0x32, 0x82, 0x90, 0xa2]),
        packet_size_max in 2usize..100_000,
        excess in 1usize..100_000,
    ) {
        let mut header = BytesMut::from(&[first][..]);
        let remaining_length = packet_size_max + excess;
        put_remaining_length(&mut header, remaining_length);
        let size = header.len() + remaining_length;
        let before = header.clone();
        prop_assert_eq!(
            Decoder::new(packet_size_max).decode(&mut header),
            Err(DecodeError::PacketTooLarge { size, max: packet_size_max })
        );
        prop_assert_eq!(header, before);
    }
}

proptest! {
    // Quadratic in the stream length: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn every_split_point_of_a_stream_decodes_the_same_packets(packets in vec(packet(24), 1..6)) {
        let bytes = encode_all(&packets);
        for split in 0..=bytes.len() {
            let mut decoder = Decoder::new(4096);
            let mut buf = BytesMut::from(&bytes[..split]);
            let mut decoded = Vec::new();
            drain(&mut decoder, &mut buf, &mut decoded);
            buf.extend_from_slice(&bytes[split..]);
            drain(&mut decoder, &mut buf, &mut decoded);
            prop_assert!(buf.is_empty());
            prop_assert_eq!(&decoded, &packets, "split at {}", split);
        }
    }

    #[test]
    fn a_stream_fed_byte_by_byte_decodes_the_same_packets(packets in vec(packet(24), 1..6)) {
        let bytes = encode_all(&packets);
        let mut decoder = Decoder::new(4096);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for &byte in &bytes {
            buf.extend_from_slice(&[byte]);
            drain(&mut decoder, &mut buf, &mut decoded);
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, packets);
    }
}

#[test]
fn publish_payload_and_topic_share_the_input_buffer() {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: PublishQos::AtLeastOnce(PacketId::new(1).expect("1 is not 0")),
        retain: false,
        topic: TopicName::try_from("a/b").expect("valid topic"),
        payload: bytes::Bytes::from(vec![7; 4096]),
    });
    let mut buf = encode(&packet);
    let input = buf.as_ptr_range();
    let Ok(Some(Packet::Publish(publish))) = Decoder::new(8192).decode(&mut buf) else {
        panic!("expected a PUBLISH");
    };
    assert!(
        input.contains(&publish.payload.as_ptr()),
        "payload was copied"
    );
    assert!(input.contains(&publish.topic.as_ptr()), "topic was copied");
}
