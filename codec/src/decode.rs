//! The streaming decoder: bytes from a peer to [`Packet`]s.
//!
//! [`Decoder::decode`] looks at the front of a `BytesMut` the transport appends to:
//!
//! 1. The first byte is checked at once: reserved packet types, fixed-header flags, a
//!    PUBLISH with QoS 3 or with DUP at QoS 0 are refused before anything else arrives.
//! 2. The Remaining Length is read (at most 4 bytes) and the whole packet size is checked
//!    against `packet_size_max` before a byte of the body is waited for, so a peer cannot
//!    make us buffer more than the limit.
//! 3. Only when the whole packet is buffered is it split off the buffer (no copy) and
//!    parsed. Strings and PUBLISH payloads are slices of that one shared buffer.
//!
//! Cost: one pass over the fixed header per call (the decoder keeps no state between
//! calls, so an incomplete packet re-reads its at most 5 header bytes), one UTF-8
//! validation per string, no allocation for PUBLISH beyond the shared buffer's reference
//! count. SUBSCRIBE and UNSUBSCRIBE allocate their filter list; CONNECT is boxed.
//!
//! U+0000 is refused in every string [MQTT-1.5.3-2]: in topic names and filters it is
//! reported as [`DecodeError::Topic`]`(`[`TopicError::NullCharacter`]`)` (what the topic
//! newtypes report), in the client id and user name as [`DecodeError::NullCharacter`].
//!
//! An error is final for the stream: the connection is to be answered (see
//! [`DecodeError::connack_return_code`]) and closed. Errors found in the fixed header
//! leave `buf` untouched; errors found in a complete packet's body have removed that
//! packet's bytes.
//!
//! [`TopicError::NullCharacter`]: crate::topic::TopicError::NullCharacter

use crate::error::DecodeError;
use crate::packet::*;
use crate::topic::{TopicFilter, TopicName};
use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;

/// The default maximum packet size: 1 MiB, fixed header included.
pub const PACKET_SIZE_MAX_DEFAULT: usize = 1024 * 1024;

/// The largest value the Remaining Length field can carry (4 bytes of 7 bits) [MQTT-2.2.3].
pub const REMAINING_LENGTH_MAX: usize = 268_435_455;

/// The Remaining Length field is at most 4 bytes long [MQTT-2.2.3].
pub const REMAINING_LENGTH_BYTES_MAX: usize = 4;

/// A resumable MQTT packet decoder.
///
/// It holds only its limit: feed it the same buffer again after appending more bytes.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Packets larger than this (fixed header included) are refused before their body is
    /// buffered; bounds the memory one connection can make us hold.
    packet_size_max: usize,
}

impl Default for Decoder {
    /// A decoder with [`PACKET_SIZE_MAX_DEFAULT`].
    fn default() -> Self {
        Decoder::new(PACKET_SIZE_MAX_DEFAULT)
    }
}

impl Decoder {
    /// A decoder refusing packets larger than `packet_size_max` bytes (fixed header included).
    pub fn new(packet_size_max: usize) -> Decoder {
        Decoder { packet_size_max }
    }

    /// The largest packet (fixed header included) this decoder accepts.
    pub fn packet_size_max(&self) -> usize {
        self.packet_size_max
    }

    /// Decodes one packet from the front of `buf`, removing its bytes.
    ///
    /// `Ok(None)`: the packet is incomplete, call again with more bytes; nothing was
    /// removed. On success exactly the packet's bytes are removed. On error, see the
    /// module docs.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let packet_type = check_first_byte(first)?;
        let Some((remaining_length, length_bytes)) =
            decode_remaining_length(buf.get(1..).unwrap_or_default())?
        else {
            return Ok(None);
        };
        let header_len = 1 + length_bytes;
        let size = header_len + remaining_length;
        if size > self.packet_size_max {
            return Err(DecodeError::PacketTooLarge {
                size,
                max: self.packet_size_max,
            });
        }
        if buf.len() < size {
            return Ok(None);
        }
        let mut body = buf.split_to(size).freeze();
        body.advance(header_len);
        decode_body(packet_type, first & 0x0F, body).map(Some)
    }
}

/// Decodes a Remaining Length from the start of `bytes` (the bytes after the first byte
/// of a packet).
///
/// `Ok(Some((value, bytes_used)))`, or `Ok(None)` when more bytes are needed. A fourth
/// byte with the continuation bit set is [`DecodeError::MalformedRemainingLength`] at
/// once. Non-minimal encodings (such as `0x80 0x00` for 0) are accepted, as 3.1.1 does
/// not forbid them.
pub fn decode_remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, &byte) in bytes.iter().take(REMAINING_LENGTH_BYTES_MAX).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= REMAINING_LENGTH_BYTES_MAX {
        return Err(DecodeError::MalformedRemainingLength);
    }
    Ok(None)
}

/// Checks the first byte of a packet: a known type with the flags it requires
/// [MQTT-2.2.2-2]; for PUBLISH, a valid QoS [MQTT-3.3.1-4] and no DUP at QoS 0
/// [MQTT-3.3.1-2].
fn check_first_byte(first: u8) -> Result<PacketType, DecodeError> {
    let type_bits = first >> 4;
    let flags = first & 0x0F;
    let (packet_type, flags_required) = match type_bits {
        1 => (PacketType::Connect, 0),
        2 => (PacketType::ConnAck, 0),
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::InvalidQoS);
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::DupWithQoS0);
            }
            return Ok(PacketType::Publish);
        }
        4 => (PacketType::PubAck, 0),
        5 => (PacketType::PubRec, 0),
        6 => (PacketType::PubRel, 0b0010),
        7 => (PacketType::PubComp, 0),
        8 => (PacketType::Subscribe, 0b0010),
        9 => (PacketType::SubAck, 0),
        10 => (PacketType::Unsubscribe, 0b0010),
        11 => (PacketType::UnsubAck, 0),
        12 => (PacketType::PingReq, 0),
        13 => (PacketType::PingResp, 0),
        14 => (PacketType::Disconnect, 0),
        reserved => return Err(DecodeError::ReservedPacketType(reserved)),
    };
    if flags != flags_required {
        return Err(DecodeError::InvalidHeaderFlags {
            packet_type: type_bits,
            flags,
        });
    }
    Ok(packet_type)
}

/// Parses a complete body. `flags` are the fixed header's, already checked.
fn decode_body(packet_type: PacketType, flags: u8, mut body: Bytes) -> Result<Packet, DecodeError> {
    let packet = match packet_type {
        PacketType::Connect => Packet::Connect(Box::new(decode_connect(&mut body)?)),
        PacketType::ConnAck => Packet::ConnAck(decode_connack(&mut body)?),
        // The payload is the rest of the body: nothing can be left over.
        PacketType::Publish => return decode_publish(flags, body).map(Packet::Publish),
        PacketType::PubAck => Packet::PubAck(packet_id(&mut body)?),
        PacketType::PubRec => Packet::PubRec(packet_id(&mut body)?),
        PacketType::PubRel => Packet::PubRel(packet_id(&mut body)?),
        PacketType::PubComp => Packet::PubComp(packet_id(&mut body)?),
        PacketType::Subscribe => Packet::Subscribe(decode_subscribe(&mut body)?),
        PacketType::SubAck => Packet::SubAck(decode_suback(&mut body)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(decode_unsubscribe(&mut body)?),
        PacketType::UnsubAck => Packet::UnsubAck(packet_id(&mut body)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect,
    };
    if !body.is_empty() {
        return Err(DecodeError::MalformedLength);
    }
    Ok(packet)
}

/// CONNECT flag bits (MQTT 3.1.1 section 3.1.2.3), shared with the encoder.
pub(crate) mod connect_flags {
    pub const RESERVED: u8 = 0b0000_0001;
    pub const CLEAN_SESSION: u8 = 0b0000_0010;
    pub const WILL: u8 = 0b0000_0100;
    pub const WILL_QOS_SHIFT: u8 = 3;
    pub const WILL_QOS: u8 = 0b0001_1000;
    pub const WILL_RETAIN: u8 = 0b0010_0000;
    pub const PASSWORD: u8 = 0b0100_0000;
    pub const USERNAME: u8 = 0b1000_0000;
}

fn decode_connect(body: &mut Bytes) -> Result<Connect, DecodeError> {
    use connect_flags::*;

    // Name and level first: a CONNECT of a level we do not speak (such as 5, with
    // properties after the keep-alive) must get CONNACK 1, not a parse error.
    let name = binary(body)?;
    let level = u8(body)?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => ProtocolLevel::V3_1_1,
        (b"MQIsdp", 3) => ProtocolLevel::V3_1,
        (b"MQTT" | b"MQIsdp", level) => return Err(DecodeError::UnsupportedProtocolLevel(level)),
        _ => return Err(DecodeError::UnknownProtocolName),
    };

    let flags = u8(body)?;
    if flags & RESERVED != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let will_flag = flags & WILL != 0;
    let will_qos_bits = (flags & WILL_QOS) >> WILL_QOS_SHIFT;
    let will_retain = flags & WILL_RETAIN != 0;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        return Err(DecodeError::WillFlagsWithoutWill);
    }
    let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::InvalidWillQoS)?;
    let has_username = flags & USERNAME != 0;
    let has_password = flags & PASSWORD != 0;
    if has_password && !has_username {
        return Err(DecodeError::PasswordWithoutUserName);
    }

    let keep_alive_secs = u16(body)?;
    let client_id = string(body)?;
    let will = if will_flag {
        let topic = topic_name(body)?;
        let payload = binary(body)?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(string(body)?)
    } else {
        None
    };
    let password = if has_password {
        Some(binary(body)?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_session: flags & CLEAN_SESSION != 0,
        keep_alive_secs,
        client_id,
        will,
        username,
        password,
    })
}

fn decode_connack(body: &mut Bytes) -> Result<ConnAck, DecodeError> {
    let acknowledge_flags = u8(body)?;
    let return_code = u8(body)?;
    // Bits 7-1 of the acknowledge flags are reserved [MQTT-3.2.2-1]; a refusal carries no
    // session [MQTT-3.2.2-4].
    if acknowledge_flags & 0b1111_1110 != 0 {
        return Err(DecodeError::InvalidConnAck);
    }
    let return_code = ConnectReturnCode::from_u8(return_code).ok_or(DecodeError::InvalidConnAck)?;
    let session_present = acknowledge_flags & 1 != 0;
    if session_present && return_code != ConnectReturnCode::Accepted {
        return Err(DecodeError::InvalidConnAck);
    }
    Ok(ConnAck {
        session_present,
        return_code,
    })
}

fn decode_publish(flags: u8, mut body: Bytes) -> Result<Publish, DecodeError> {
    let topic = topic_name(&mut body)?;
    let qos = match (flags >> 1) & 0b11 {
        0 => PublishQos::AtMostOnce,
        1 => PublishQos::AtLeastOnce(packet_id(&mut body)?),
        2 => PublishQos::ExactlyOnce(packet_id(&mut body)?),
        // Refused with the first byte already; kept for a total match.
        _ => return Err(DecodeError::InvalidQoS),
    };
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 1 != 0,
        topic,
        payload: body,
    })
}

fn decode_subscribe(body: &mut Bytes) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(body)?;
    if body.is_empty() {
        return Err(DecodeError::SubscribeWithoutFilters);
    }
    let mut filters = Vec::new();
    while !body.is_empty() {
        let filter = topic_filter(body)?;
        let requested = u8(body)?;
        if requested & 0b1111_1100 != 0 {
            return Err(DecodeError::SubscribeReservedBits);
        }
        let qos = QoS::from_u8(requested).ok_or(DecodeError::InvalidQoS)?;
        filters.push(SubscribeFilter { filter, qos });
    }
    Ok(Subscribe { packet_id, filters })
}

fn decode_suback(body: &mut Bytes) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(body)?;
    // One code per filter of the SUBSCRIBE, which has at least one [MQTT-3.9.3-1]: a
    // SUBACK without codes is shorter than its fields.
    if body.is_empty() {
        return Err(DecodeError::MalformedLength);
    }
    let return_codes = body
        .iter()
        .map(|&code| match code {
            0x80 => Ok(SubscribeReturnCode::Failure),
            code => QoS::from_u8(code)
                .map(SubscribeReturnCode::Success)
                .ok_or(DecodeError::InvalidSubAckReturnCode(code)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    body.clear();
    Ok(SubAck {
        packet_id,
        return_codes,
    })
}

fn decode_unsubscribe(body: &mut Bytes) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(body)?;
    if body.is_empty() {
        return Err(DecodeError::UnsubscribeWithoutFilters);
    }
    let mut filters = Vec::new();
    while !body.is_empty() {
        filters.push(topic_filter(body)?);
    }
    Ok(Unsubscribe { packet_id, filters })
}

// Field readers. Each checks the length first, so a short body is
// `MalformedLength`, never a panic in `Buf`.

fn u8(body: &mut Bytes) -> Result<u8, DecodeError> {
    if body.is_empty() {
        return Err(DecodeError::MalformedLength);
    }
    Ok(body.get_u8())
}

fn u16(body: &mut Bytes) -> Result<u16, DecodeError> {
    if body.len() < 2 {
        return Err(DecodeError::MalformedLength);
    }
    Ok(body.get_u16())
}

fn packet_id(body: &mut Bytes) -> Result<PacketId, DecodeError> {
    PacketId::new(u16(body)?).ok_or(DecodeError::ZeroPacketId)
}

/// A length-prefixed byte field, as a slice of the body.
fn binary(body: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = usize::from(u16(body)?);
    if body.len() < len {
        return Err(DecodeError::MalformedLength);
    }
    Ok(body.split_to(len))
}

/// A length-prefixed UTF-8 field, sharing the body's buffer.
fn utf8(body: &mut Bytes) -> Result<ByteString, DecodeError> {
    ByteString::try_from(binary(body)?).map_err(|_| DecodeError::InvalidUtf8)
}

/// A UTF-8 string that is not a topic: no U+0000 [MQTT-1.5.3-2].
fn string(body: &mut Bytes) -> Result<ByteString, DecodeError> {
    let s = utf8(body)?;
    if s.as_bytes().contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    Ok(s)
}

fn topic_name(body: &mut Bytes) -> Result<TopicName, DecodeError> {
    Ok(TopicName::new(utf8(body)?)?)
}

fn topic_filter(body: &mut Bytes) -> Result<TopicFilter, DecodeError> {
    Ok(TopicFilter::new(utf8(body)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(bytes: &[u8]) -> BytesMut {
        BytesMut::from(bytes)
    }

    #[test]
    fn empty_buffer_needs_more_bytes() {
        assert_eq!(Decoder::new(16).decode(&mut BytesMut::new()), Ok(None));
    }

    #[test]
    fn incomplete_packet_needs_more_bytes_and_consumes_nothing() {
        let packet = b"\x40\x02\x00\x01";
        for end in 0..packet.len() {
            let mut partial = buf(&packet[..end]);
            assert_eq!(
                Decoder::new(16).decode(&mut partial),
                Ok(None),
                "prefix {end}"
            );
            assert_eq!(&partial[..], &packet[..end]);
        }
    }

    #[test]
    fn back_to_back_packets_decode_one_per_call() {
        let mut stream = buf(b"\xc0\x00\x40\x02\x00\x01\xe0\x00\xd0");
        let mut decoder = Decoder::new(16);
        assert_eq!(decoder.decode(&mut stream), Ok(Some(Packet::PingReq)));
        let packet_id = PacketId::new(1).expect("1 is not 0");
        assert_eq!(
            decoder.decode(&mut stream),
            Ok(Some(Packet::PubAck(packet_id)))
        );
        assert_eq!(decoder.decode(&mut stream), Ok(Some(Packet::Disconnect)));
        assert_eq!(decoder.decode(&mut stream), Ok(None));
        assert_eq!(&stream[..], b"\xd0");
    }

    #[test]
    fn header_errors_are_found_from_the_first_byte_alone() {
        let mut decoder = Decoder::new(16);
        assert_eq!(
            decoder.decode(&mut buf(b"\xf0")),
            Err(DecodeError::ReservedPacketType(15))
        );
        assert_eq!(
            decoder.decode(&mut buf(b"\x36")),
            Err(DecodeError::InvalidQoS)
        );
        assert_eq!(
            decoder.decode(&mut buf(b"\x38")),
            Err(DecodeError::DupWithQoS0)
        );
        assert_eq!(
            decoder.decode(&mut buf(b"\x63")),
            Err(DecodeError::InvalidHeaderFlags {
                packet_type: 6,
                flags: 3
            })
        );
    }

    #[test]
    fn header_errors_leave_the_buffer_untouched() {
        let mut bytes = buf(b"\x30\xff\xff\x7f");
        assert!(matches!(
            Decoder::new(16).decode(&mut bytes),
            Err(DecodeError::PacketTooLarge { .. })
        ));
        assert_eq!(&bytes[..], b"\x30\xff\xff\x7f");
    }

    #[test]
    fn remaining_length_table() {
        type Decoded = Result<Option<(usize, usize)>, DecodeError>;
        let table: [(&[u8], Decoded); 11] = [
            (b"", Ok(None)),
            (b"\x00", Ok(Some((0, 1)))),
            (b"\x7f", Ok(Some((127, 1)))),
            (b"\x80", Ok(None)),
            (b"\x80\x01", Ok(Some((128, 2)))),
            (b"\xff\x7f", Ok(Some((16_383, 2)))),
            (b"\x80\x80\x01", Ok(Some((16_384, 3)))),
            (b"\xff\xff\xff", Ok(None)),
            (b"\xff\xff\xff\x7f\x00", Ok(Some((REMAINING_LENGTH_MAX, 4)))),
            (
                b"\xff\xff\xff\xff",
                Err(DecodeError::MalformedRemainingLength),
            ),
            (
                b"\x80\x80\x80\x80\x00",
                Err(DecodeError::MalformedRemainingLength),
            ),
        ];
        for (bytes, expected) in table {
            assert_eq!(decode_remaining_length(bytes), expected, "{bytes:02x?}");
        }
    }

    #[test]
    fn largest_remaining_length_is_checked_against_the_maximum() {
        let mut bytes = buf(b"\x30\xff\xff\xff\x7f");
        assert_eq!(
            Decoder::new(usize::MAX).decode(&mut bytes),
            Ok(None),
            "a 256 MiB packet is allowed by an unlimited decoder and waits for its body"
        );
        assert_eq!(
            Decoder::default().decode(&mut bytes),
            Err(DecodeError::PacketTooLarge {
                size: 5 + REMAINING_LENGTH_MAX,
                max: PACKET_SIZE_MAX_DEFAULT
            })
        );
    }

    #[test]
    fn publish_payload_is_a_slice_of_the_input() {
        let mut bytes = buf(b"\x30\x0a\x00\x03a/bhello\xc0");
        let input = bytes.as_ptr_range();
        let Ok(Some(Packet::Publish(publish))) = Decoder::new(64).decode(&mut bytes) else {
            panic!("expected a PUBLISH");
        };
        assert_eq!(&publish.payload[..], b"hello");
        assert!(input.contains(&publish.payload.as_ptr()));
        assert!(input.contains(&publish.topic.as_ptr()));
        assert_eq!(&bytes[..], b"\xc0", "only the PUBLISH was removed");
    }
}
