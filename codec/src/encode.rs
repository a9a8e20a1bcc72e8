//! Packets to bytes, with exact length computation.
//!
//! [`Packet::encode`] reserves [`Packet::encoded_len`] bytes once and then appends the
//! fields in order: a PUBLISH is its header bytes plus one copy of the payload.
//!
//! The encoder writes what the packet says, so tests can build packets the decoder
//! refuses (an empty SUBSCRIBE, a password without a user name). Two exceptions keep the
//! byte stream framed and the standard kept where the types cannot:
//!
//! - DUP is written only for QoS 1 and 2 [MQTT-3.3.1-2], so a QoS-downgraded
//!   re-delivery never carries it.
//! - A string or binary field longer than 65,535 bytes cannot be expressed; it is cut to
//!   65,535 bytes (a `debug_assert` flags it in tests). A packet whose Remaining Length
//!   exceeds [`REMAINING_LENGTH_MAX`] cannot be expressed either (also `debug_assert`ed);
//!   callers bound payloads well below it.

use crate::decode::{connect_flags, REMAINING_LENGTH_MAX};
use crate::packet::*;
use bytes::{BufMut, BytesMut};

/// How many bytes the Remaining Length field takes for `remaining_length` (1 to 4).
pub fn remaining_length_len(remaining_length: usize) -> usize {
    match remaining_length {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `remaining_length` as a Remaining Length field (minimal encoding).
///
/// Values above [`REMAINING_LENGTH_MAX`] are a caller bug: they `debug_assert` and would
/// otherwise take more than 4 bytes, which any decoder refuses.
pub fn put_remaining_length(buf: &mut BytesMut, remaining_length: usize) {
    debug_assert!(
        remaining_length <= REMAINING_LENGTH_MAX,
        "remaining length {remaining_length} exceeds {REMAINING_LENGTH_MAX}"
    );
    let mut rest = remaining_length;
    loop {
        // The mask keeps the value below 128: the cast cannot truncate.
        let mut byte = (rest & 0x7F) as u8;
        rest >>= 7;
        if rest > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if rest == 0 {
            return;
        }
    }
}

/// The longest string or binary field: its length is a `u16`.
const FIELD_BYTES_MAX: usize = u16::MAX as usize;

/// The encoded size of a length-prefixed field (see the module docs on over-long fields).
fn field_len(field: &[u8]) -> usize {
    2 + field.len().min(FIELD_BYTES_MAX)
}

fn put_field(buf: &mut BytesMut, field: &[u8]) {
    debug_assert!(
        field.len() <= FIELD_BYTES_MAX,
        "field of {} bytes exceeds 65535",
        field.len()
    );
    let field = field.get(..FIELD_BYTES_MAX).unwrap_or(field);
    // `field` is at most u16::MAX bytes long: the cast cannot truncate.
    buf.put_u16(field.len() as u16);
    buf.put_slice(field);
}

impl Packet {
    /// Appends the packet's bytes to `buf`: exactly [`Packet::encoded_len`] of them.
    pub fn encode(&self, buf: &mut BytesMut) {
        let remaining_length = self.remaining_length();
        buf.reserve(1 + remaining_length_len(remaining_length) + remaining_length);
        buf.put_u8(self.first_byte());
        put_remaining_length(buf, remaining_length);
        match self {
            Packet::Connect(connect) => encode_connect(connect, buf),
            Packet::ConnAck(connack) => {
                buf.put_u8(u8::from(connack.session_present));
                buf.put_u8(connack.return_code as u8);
            }
            Packet::Publish(publish) => {
                put_field(buf, publish.topic.as_bytes());
                if let Some(packet_id) = publish.qos.packet_id() {
                    buf.put_u16(packet_id.get());
                }
                buf.put_slice(&publish.payload);
            }
            Packet::PubAck(packet_id)
            | Packet::PubRec(packet_id)
            | Packet::PubRel(packet_id)
            | Packet::PubComp(packet_id)
            | Packet::UnsubAck(packet_id) => buf.put_u16(packet_id.get()),
            Packet::Subscribe(subscribe) => {
                buf.put_u16(subscribe.packet_id.get());
                for filter in &subscribe.filters {
                    put_field(buf, filter.filter.as_bytes());
                    buf.put_u8(filter.qos as u8);
                }
            }
            Packet::SubAck(suback) => {
                buf.put_u16(suback.packet_id.get());
                for code in &suback.return_codes {
                    buf.put_u8(code.to_u8());
                }
            }
            Packet::Unsubscribe(unsubscribe) => {
                buf.put_u16(unsubscribe.packet_id.get());
                for filter in &unsubscribe.filters {
                    put_field(buf, filter.as_bytes());
                }
            }
            Packet::PingReq | Packet::PingResp | Packet::Disconnect => {}
        }
    }

    /// The exact number of bytes [`Packet::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        let remaining_length = self.remaining_length();
        1 + remaining_length_len(remaining_length) + remaining_length
    }

    /// The first byte: type in the high nibble, the flags the type requires in the low.
    fn first_byte(&self) -> u8 {
        let flags = match self {
            Packet::Publish(publish) => {
                let qos = publish.qos.qos() as u8;
                let dup = publish.dup && qos > 0;
                u8::from(dup) << 3 | qos << 1 | u8::from(publish.retain)
            }
            Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
            _ => 0,
        };
        (self.packet_type() as u8) << 4 | flags
    }

    /// The Remaining Length: the size of the variable header and payload.
    fn remaining_length(&self) -> usize {
        match self {
            Packet::Connect(connect) => connect_len(connect),
            Packet::ConnAck(_) => 2,
            Packet::Publish(publish) => {
                let packet_id_len = if publish.qos.packet_id().is_some() {
                    2
                } else {
                    0
                };
                field_len(publish.topic.as_bytes()) + packet_id_len + publish.payload.len()
            }
            Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::UnsubAck(_) => 2,
            Packet::Subscribe(subscribe) => {
                2 + subscribe
                    .filters
                    .iter()
                    .map(|filter| field_len(filter.filter.as_bytes()) + 1)
                    .sum::<usize>()
            }
            Packet::SubAck(suback) => 2 + suback.return_codes.len(),
            Packet::Unsubscribe(unsubscribe) => {
                2 + unsubscribe
                    .filters
                    .iter()
                    .map(|filter| field_len(filter.as_bytes()))
                    .sum::<usize>()
            }
            Packet::PingReq | Packet::PingResp | Packet::Disconnect => 0,
        }
    }
}

fn connect_len(connect: &Connect) -> usize {
    let mut len = field_len(connect.protocol.protocol_name().as_bytes())
        + 1 // protocol level
        + 1 // connect flags
        + 2 // keep alive
        + field_len(connect.client_id.as_bytes());
    if let Some(will) = &connect.will {
        len += field_len(will.topic.as_bytes()) + field_len(&will.payload);
    }
    if let Some(username) = &connect.username {
        len += field_len(username.as_bytes());
    }
    if let Some(password) = &connect.password {
        len += field_len(password);
    }
    len
}

fn encode_connect(connect: &Connect, buf: &mut BytesMut) {
    use connect_flags::*;

    put_field(buf, connect.protocol.protocol_name().as_bytes());
    buf.put_u8(connect.protocol.level());
    let mut flags = 0;
    if connect.clean_session {
        flags |= CLEAN_SESSION;
    }
    if let Some(will) = &connect.will {
        flags |= WILL | (will.qos as u8) << WILL_QOS_SHIFT;
        if will.retain {
            flags |= WILL_RETAIN;
        }
    }
    if connect.username.is_some() {
        flags |= USERNAME;
    }
    if connect.password.is_some() {
        flags |= PASSWORD;
    }
    buf.put_u8(flags);
    buf.put_u16(connect.keep_alive_secs);
    put_field(buf, connect.client_id.as_bytes());
    if let Some(will) = &connect.will {
        put_field(buf, will.topic.as_bytes());
        put_field(buf, &will.payload);
    }
    if let Some(username) = &connect.username {
        put_field(buf, username.as_bytes());
    }
    if let Some(password) = &connect.password {
        put_field(buf, password);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn remaining_length_encoding_table() {
        let table: [(usize, &[u8]); 8] = [
            (0, b"\x00"),
            (127, b"\x7f"),
            (128, b"\x80\x01"),
            (16_383, b"\xff\x7f"),
            (16_384, b"\x80\x80\x01"),
            (2_097_151, b"\xff\xff\x7f"),
            (2_097_152, b"\x80\x80\x80\x01"),
            (REMAINING_LENGTH_MAX, b"\xff\xff\xff\x7f"),
        ];
        for (value, expected) in table {
            let mut buf = BytesMut::new();
            put_remaining_length(&mut buf, value);
            assert_eq!(&buf[..], expected, "{value}");
            assert_eq!(remaining_length_len(value), expected.len(), "{value}");
        }
    }

    #[test]
    fn encode_appends_after_existing_bytes() {
        let mut buf = BytesMut::from(&b"xy"[..]);
        Packet::PingResp.encode(&mut buf);
        assert_eq!(&buf[..], b"xy\xd0\x00");
    }

    #[test]
    fn publish_with_4_kib_payload_has_exact_encoded_len() {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: PublishQos::AtLeastOnce(PacketId::new(1).expect("1 is not 0")),
            retain: false,
            topic: crate::TopicName::try_from("a/b").expect("valid topic"),
            payload: Bytes::from(vec![0; 4096]),
        });
        // 1 + 2 (remaining length 4103) + 5 (topic) + 2 (packet id) + 4096.
        assert_eq!(packet.encoded_len(), 4106);
        let mut buf = BytesMut::new();
        packet.encode(&mut buf);
        assert_eq!(buf.len(), 4106);
        assert_eq!(&buf[..3], b"\x32\x87\x20");
    }

    #[test]
    fn first_bytes_carry_the_required_flags() {
        let packet_id = PacketId::new(1).expect("1 is not 0");
        let table = [
            (Packet::PubRel(packet_id), 0x62),
            (Packet::PubAck(packet_id), 0x40),
            (Packet::UnsubAck(packet_id), 0xb0),
            (Packet::PingReq, 0xc0),
            (Packet::Disconnect, 0xe0),
        ];
        for (packet, first) in table {
            assert_eq!(packet.first_byte(), first, "{packet:?}");
        }
    }
}
