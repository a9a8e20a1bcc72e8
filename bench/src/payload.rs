//! What a benchmark message carries, and the pre-encoded PUBLISH it travels in.
//!
//! Every payload starts with a [`PayloadHeader`] of [`HEADER_BYTES`] bytes (publisher id,
//! sequence number, send timestamp, all big endian) and is padded with zeros to the
//! configured payload size. The subscriber side reads the header back to count lost,
//! duplicated and reordered messages per publisher and to measure latency.
//!
//! [`PublishTemplate`] encodes one PUBLISH through `cutie-codec` once and then appends a
//! copy per message, patching only the packet id and the header: one `memcpy` and three
//! stores per message, so the harness is not what limits the rate.

use bytes::{Bytes, BytesMut};
use cutie_codec::{Packet, PacketId, Publish, PublishQos, QoS, TopicName};

/// The size of [`PayloadHeader`] on the wire; the smallest payload the harness sends.
pub const HEADER_BYTES: usize = 20;

/// The largest payload the harness sends: well below MQTT's 256 MiB packet limit, and
/// large enough for any realistic benchmark.
pub const PAYLOAD_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The first [`HEADER_BYTES`] bytes of every benchmark payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadHeader {
    /// Which publisher of this run sent the message (0-based, dense).
    pub publisher_id: u32,
    /// The message's position in its publisher's stream, from 0 without gaps.
    pub sequence: u64,
    /// When the message was due to be sent (open loop) or was sent (as fast as
    /// possible), in nanoseconds since the run's start instant. Latency is measured from
    /// here, so a stalled broker cannot hide behind a publisher that waited for it.
    pub sent_at_ns: u64,
}

impl PayloadHeader {
    /// Writes the header into the first [`HEADER_BYTES`] bytes of `out`.
    pub fn encode(&self, out: &mut [u8; HEADER_BYTES]) {
        out[0..4].copy_from_slice(&self.publisher_id.to_be_bytes());
        out[4..12].copy_from_slice(&self.sequence.to_be_bytes());
        out[12..20].copy_from_slice(&self.sent_at_ns.to_be_bytes());
    }

    /// Reads the header from the front of a payload; `None` when the payload is shorter
    /// than [`HEADER_BYTES`] (not one of ours).
    pub fn decode(payload: &[u8]) -> Option<PayloadHeader> {
        let publisher_id = u32::from_be_bytes(payload.get(0..4)?.try_into().ok()?);
        let sequence = u64::from_be_bytes(payload.get(4..12)?.try_into().ok()?);
        let sent_at_ns = u64::from_be_bytes(payload.get(12..20)?.try_into().ok()?);
        Some(PayloadHeader {
            publisher_id,
            sequence,
            sent_at_ns,
        })
    }
}

/// One PUBLISH encoded once, appended per message with its own packet id and header.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    /// The whole encoded packet, payload zero-padded.
    bytes: Vec<u8>,
    /// Where the 2-byte packet id sits; `None` for QoS 0, which has none.
    packet_id_at: Option<usize>,
    /// Where the payload (and so the header) starts.
    payload_at: usize,
}

impl PublishTemplate {
    /// A template for `payload_bytes`-byte messages to `topic` at `qos`.
    ///
    /// `payload_bytes` must be at least [`HEADER_BYTES`] and at most
    /// [`PAYLOAD_BYTES_MAX`]; the configuration is validated before any template is
    /// built, so a violation here is a bug (asserted).
    pub fn new(topic: TopicName, qos: QoS, payload_bytes: usize) -> PublishTemplate {
        assert!(
            (HEADER_BYTES..=PAYLOAD_BYTES_MAX).contains(&payload_bytes),
            "payload size {payload_bytes} outside the validated range"
        );
        let packet_id = PacketId::new(1).unwrap_or_else(|| unreachable!("1 is not 0"));
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: PublishQos::with(qos, packet_id),
            retain: false,
            topic,
            payload: Bytes::from(vec![0u8; payload_bytes]),
        });
        let mut buf = BytesMut::with_capacity(packet.encoded_len());
        packet.encode(&mut buf);
        let payload_at = buf.len() - payload_bytes;
        let packet_id_at = (qos != QoS::AtMostOnce).then(|| payload_at - 2);
        PublishTemplate {
            bytes: buf.to_vec(),
            packet_id_at,
            payload_at,
        }
    }

    /// The encoded size of one message.
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends one PUBLISH carrying `header`; `packet_id` is ignored at QoS 0 and must
    /// be given at QoS 1 and 2 (the template keeps id 1 otherwise).
    pub fn append(&self, out: &mut BytesMut, packet_id: Option<PacketId>, header: &PayloadHeader) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        let message = &mut out[start..];
        if let (Some(at), Some(packet_id)) = (self.packet_id_at, packet_id) {
            message[at..at + 2].copy_from_slice(&packet_id.get().to_be_bytes());
        }
        let mut encoded = [0u8; HEADER_BYTES];
        header.encode(&mut encoded);
        message[self.payload_at..self.payload_at + HEADER_BYTES].copy_from_slice(&encoded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutie_codec::Decoder;

    #[test]
    fn header_round_trips_through_bytes() {
        let header = PayloadHeader {
            publisher_id: 0xDEAD_BEEF,
            sequence: 0x0102_0304_0506_0708,
            sent_at_ns: u64::MAX - 1,
        };
        let mut bytes = [0u8; HEADER_BYTES];
        header.encode(&mut bytes);
        assert_eq!(&bytes[0..4], &[0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(&bytes[4..12], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(PayloadHeader::decode(&bytes), Some(header));
    }

    #[test]
    fn header_decode_refuses_a_short_payload() {
        assert_eq!(PayloadHeader::decode(&[0u8; HEADER_BYTES - 1]), None);
        assert_eq!(PayloadHeader::decode(&[]), None);
    }

    #[test]
    fn header_decode_ignores_padding() {
        let header = PayloadHeader {
            publisher_id: 7,
            sequence: 8,
            sent_at_ns: 9,
        };
        let mut bytes = vec![0xAAu8; 100];
        let mut encoded = [0u8; HEADER_BYTES];
        header.encode(&mut encoded);
        bytes[..HEADER_BYTES].copy_from_slice(&encoded);
        assert_eq!(PayloadHeader::decode(&bytes), Some(header));
    }

    fn decode_all(mut buf: BytesMut) -> Vec<Publish> {
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        while let Some(packet) = decoder.decode(&mut buf).expect("valid packet") {
            match packet {
                Packet::Publish(publish) => out.push(publish),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn template_appends_decodable_publishes_at_every_qos() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let topic = TopicName::new("bench/run/0").expect("valid topic");
            let template = PublishTemplate::new(topic.clone(), qos, 64);
            let mut buf = BytesMut::new();
            for sequence in 0..3u64 {
                let packet_id = PacketId::new(100 + sequence as u16);
                let header = PayloadHeader {
                    publisher_id: 3,
                    sequence,
                    sent_at_ns: 1000 * sequence,
                };
                template.append(&mut buf, packet_id, &header);
            }
            assert_eq!(buf.len(), 3 * template.encoded_len());
            let publishes = decode_all(buf);
            assert_eq!(publishes.len(), 3);
            for (sequence, publish) in publishes.iter().enumerate() {
                assert_eq!(publish.topic, topic);
                assert_eq!(publish.qos.qos(), qos);
                assert_eq!(publish.payload.len(), 64);
                let expected_id = PacketId::new(100 + sequence as u16);
                match qos {
                    QoS::AtMostOnce => assert_eq!(publish.qos.packet_id(), None),
                    _ => assert_eq!(publish.qos.packet_id(), expected_id),
                }
                let header = PayloadHeader::decode(&publish.payload).expect("header");
                assert_eq!(header.publisher_id, 3);
                assert_eq!(header.sequence, sequence as u64);
                assert_eq!(header.sent_at_ns, 1000 * sequence as u64);
                assert!(publish.payload[HEADER_BYTES..].iter().all(|&b| b == 0));
            }
        }
    }

    #[test]
    fn template_with_header_sized_payload_has_no_padding() {
        let topic = TopicName::new("t").expect("valid topic");
        let template = PublishTemplate::new(topic, QoS::AtLeastOnce, HEADER_BYTES);
        let mut buf = BytesMut::new();
        let header = PayloadHeader {
            publisher_id: 1,
            sequence: 2,
            sent_at_ns: 3,
        };
        template.append(&mut buf, PacketId::new(9), &header);
        let publishes = decode_all(buf);
        assert_eq!(publishes[0].payload.len(), HEADER_BYTES);
        assert_eq!(PayloadHeader::decode(&publishes[0].payload), Some(header));
    }
}
