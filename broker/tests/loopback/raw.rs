//! A raw MQTT 3.1.1 client: packet bytes written by hand over a `TcpStream`.
//!
//! Independent of `cutie-codec` on purpose (a shared bug would cancel out). Used for what
//! real clients will not do (malformed, out-of-order, duplicated packets; never reading
//! the socket) and to check exact bytes and flags.

use crate::broker::TIMEOUT;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Packet types (the high nibble of the first byte).
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBACK: u8 = 9;
pub const UNSUBACK: u8 = 11;
pub const PINGRESP: u8 = 13;

/// PINGREQ: no variable header, no payload.
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// DISCONNECT: no variable header, no payload.
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// A will message in a CONNECT.
#[derive(Debug, Clone)]
pub struct Will<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
}

/// The fields of a CONNECT.
#[derive(Debug, Clone)]
pub struct Connect<'a> {
    /// `"MQTT"` for 3.1.1, `"MQIsdp"` for 3.1.
    pub protocol_name: &'a str,
    /// 4 for 3.1.1, 3 for 3.1.
    pub protocol_level: u8,
    pub client_id: &'a str,
    pub clean_session: bool,
    pub keep_alive_secs: u16,
    pub will: Option<Will<'a>>,
}

impl<'a> Connect<'a> {
    /// MQTT 3.1.1, clean session, keep-alive off, no will.
    pub fn new(client_id: &'a str) -> Connect<'a> {
        Connect {
            protocol_name: "MQTT",
            protocol_level: 4,
            client_id,
            clean_session: true,
            keep_alive_secs: 0,
            will: None,
        }
    }

    pub fn clean_session(mut self, clean_session: bool) -> Self {
        self.clean_session = clean_session;
        self
    }

    pub fn keep_alive_secs(mut self, keep_alive_secs: u16) -> Self {
        self.keep_alive_secs = keep_alive_secs;
        self
    }

    pub fn will(mut self, will: Will<'a>) -> Self {
        self.will = Some(will);
        self
    }

    pub fn protocol(mut self, name: &'a str, level: u8) -> Self {
        self.protocol_name = name;
        self.protocol_level = level;
        self
    }

    /// The packet's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        put_str(&mut body, self.protocol_name);
        body.push(self.protocol_level);
        let mut flags = 0u8;
        if self.clean_session {
            flags |= 0x02;
        }
        if let Some(will) = &self.will {
            flags |= 0x04 | (will.qos << 3);
            if will.retain {
                flags |= 0x20;
            }
        }
        body.push(flags);
        body.extend_from_slice(&self.keep_alive_secs.to_be_bytes());
        put_str(&mut body, self.client_id);
        if let Some(will) = &self.will {
            put_str(&mut body, will.topic);
            put_bytes(&mut body, will.payload);
        }
        frame(0x10, &body)
    }
}

/// A PUBLISH; `packet_id` is ignored at QoS 0.
pub fn publish(
    topic: &str,
    payload: &[u8],
    qos: u8,
    packet_id: u16,
    dup: bool,
    retain: bool,
) -> Vec<u8> {
    let mut header = 0x30 | (qos << 1);
    if dup {
        header |= 0x08;
    }
    if retain {
        header |= 0x01;
    }
    let mut body = Vec::new();
    put_str(&mut body, topic);
    if qos > 0 {
        body.extend_from_slice(&packet_id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    frame(header, &body)
}

/// A SUBSCRIBE with (filter, requested QoS) pairs.
pub fn subscribe(packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for (filter, qos) in filters {
        put_str(&mut body, filter);
        body.push(*qos);
    }
    frame(0x82, &body)
}

/// An UNSUBSCRIBE.
pub fn unsubscribe(packet_id: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for filter in filters {
        put_str(&mut body, filter);
    }
    frame(0xA2, &body)
}

pub fn puback(packet_id: u16) -> Vec<u8> {
    frame(0x40, &packet_id.to_be_bytes())
}

pub fn pubrec(packet_id: u16) -> Vec<u8> {
    frame(0x50, &packet_id.to_be_bytes())
}

pub fn pubrel(packet_id: u16) -> Vec<u8> {
    frame(0x62, &packet_id.to_be_bytes())
}

pub fn pubcomp(packet_id: u16) -> Vec<u8> {
    frame(0x70, &packet_id.to_be_bytes())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("string under 64 KiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Fixed header (first byte, remaining length) + body.
fn frame(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    let mut len = body.len();
    assert!(len <= 268_435_455, "body too long for MQTT");
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// One packet as received: the first byte and the body after the remaining length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPacket {
    pub first_byte: u8,
    pub body: Vec<u8>,
}

/// A received PUBLISH, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPublish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    /// 0 at QoS 0 (there is none).
    pub packet_id: u16,
    pub payload: Vec<u8>,
}

impl RawPacket {
    pub fn packet_type(&self) -> u8 {
        self.first_byte >> 4
    }

    fn expect_type(&self, packet_type: u8) {
        assert_eq!(
            self.packet_type(),
            packet_type,
            "expected packet type {packet_type}, got {self:?}"
        );
    }

    /// CONNACK: (session present, return code).
    pub fn connack(&self) -> (bool, u8) {
        self.expect_type(CONNACK);
        assert_eq!(self.body.len(), 2, "CONNACK body is 2 bytes: {self:?}");
        (self.body[0] & 1 == 1, self.body[1])
    }

    /// The packet id of a PUBACK, PUBREC, PUBREL, PUBCOMP or UNSUBACK.
    pub fn packet_id(&self) -> u16 {
        assert!(self.body.len() >= 2, "no packet id in {self:?}");
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    /// SUBACK: (packet id, return codes).
    pub fn suback(&self) -> (u16, Vec<u8>) {
        self.expect_type(SUBACK);
        (self.packet_id(), self.body[2..].to_vec())
    }

    pub fn publish(&self) -> RawPublish {
        self.expect_type(PUBLISH);
        let qos = (self.first_byte >> 1) & 0x03;
        let topic_len = usize::from(u16::from_be_bytes([self.body[0], self.body[1]]));
        let topic = String::from_utf8(self.body[2..2 + topic_len].to_vec()).expect("UTF-8 topic");
        let mut at = 2 + topic_len;
        let packet_id = if qos > 0 {
            at += 2;
            u16::from_be_bytes([self.body[at - 2], self.body[at - 1]])
        } else {
            0
        };
        RawPublish {
            dup: self.first_byte & 0x08 != 0,
            qos,
            retain: self.first_byte & 0x01 != 0,
            topic,
            packet_id,
            payload: self.body[at..].to_vec(),
        }
    }
}

/// A TCP connection speaking hand-written MQTT.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    /// Bytes read and not yet returned as packets.
    buf: Vec<u8>,
    /// The broker closed the connection (end of file or reset).
    closed: bool,
}

impl RawClient {
    /// A TCP connection; nothing sent yet.
    pub fn open(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect to the broker");
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        RawClient {
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    /// Opens a connection, sends `connect` and expects CONNACK 0. Returns the client and
    /// the CONNACK's session-present flag.
    pub fn connect(addr: SocketAddr, connect: &Connect<'_>) -> (RawClient, bool) {
        let mut client = RawClient::open(addr);
        client.send(&connect.encode());
        let (session_present, code) = client.recv().connack();
        assert_eq!(code, 0, "CONNACK return code for {connect:?}");
        (client, session_present)
    }

    /// Writes all of `bytes`; panics if the broker already closed the connection.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .expect("write to the broker (was the connection closed?)");
    }

    /// Writes `bytes` when the broker may already have closed the connection (the
    /// error is the expected outcome then, and is ignored).
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Closes the socket without DISCONNECT.
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// The next packet; panics on end of file or after [`TIMEOUT`].
    pub fn recv(&mut self) -> RawPacket {
        match self.recv_until(Instant::now() + TIMEOUT) {
            Some(packet) => packet,
            None => panic!("the broker closed the connection while a packet was expected"),
        }
    }

    /// The next PUBLISH, skipping nothing: panics if the next packet is another type.
    pub fn recv_publish(&mut self) -> RawPublish {
        self.recv().publish()
    }

    /// Reads until the broker closes the connection; returns the packets received
    /// before. Panics if it is still open after [`TIMEOUT`].
    pub fn expect_closed(&mut self) -> Vec<RawPacket> {
        let deadline = Instant::now() + TIMEOUT;
        let mut packets = Vec::new();
        while let Some(packet) = self.recv_until(deadline) {
            packets.push(packet);
        }
        packets
    }

    /// Reads until the broker closes the connection and returns the bytes that came
    /// first; panics if it is still open after [`TIMEOUT`].
    pub fn bytes_until_closed(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + TIMEOUT;
        while self.fill(deadline) {}
        std::mem::take(&mut self.buf)
    }

    fn recv_until(&mut self, deadline: Instant) -> Option<RawPacket> {
        loop {
            if let Some(packet) = self.take_packet() {
                return Some(packet);
            }
            if !self.fill(deadline) {
                assert!(
                    self.buf.is_empty(),
                    "connection closed inside a packet: {:?}",
                    self.buf
                );
                return None;
            }
        }
    }

    /// A whole packet from the front of `buf`, if there is one.
    fn take_packet(&mut self) -> Option<RawPacket> {
        let mut len = 0usize;
        let mut shift = 0;
        let mut at = 1;
        loop {
            let byte = *self.buf.get(at)?;
            len |= usize::from(byte & 0x7F) << shift;
            shift += 7;
            at += 1;
            if byte & 0x80 == 0 {
                break;
            }
            assert!(at <= 4, "malformed remaining length from the broker");
        }
        if self.buf.len() < at + len {
            return None;
        }
        let first_byte = self.buf[0];
        let body = self.buf[at..at + len].to_vec();
        self.buf.drain(..at + len);
        Some(RawPacket { first_byte, body })
    }

    /// Reads more bytes into `buf`; false at end of file (or reset). Panics at
    /// `deadline`.
    fn fill(&mut self, deadline: Instant) -> bool {
        if self.closed {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {TIMEOUT:?} reading from the broker; unparsed bytes: {:?}",
                self.buf
            );
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("set read timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.closed = true;
                    return false;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    self.closed = true;
                    return false;
                }
                Err(e) => panic!("read from the broker failed: {e}"),
            }
        }
    }
}

/// The retained messages a new subscription to `filters` gets. A fresh client
/// `client_id` subscribes and, in the same write, publishes a QoS 1 message to
/// `fence/<client_id>`, a topic the caller must keep unsubscribed. The broker sends the
/// retained messages right after the SUBACK and acknowledges later packets after them
/// (acknowledgements go out in order), so the PUBLISHes before the PUBACK are all of
/// them (its own fence message, should a filter match it, is left out). Holds for up to
/// `max_inflight` (default 32) retained messages at QoS 1 or 2.
pub fn retained_on_subscribe(
    addr: SocketAddr,
    client_id: &str,
    filters: &[(&str, u8)],
) -> Vec<RawPublish> {
    let (mut client, _) = RawClient::connect(addr, &Connect::new(client_id));
    let fence = format!("fence/{client_id}");
    client.send(
        &[
            subscribe(1, filters),
            publish(&fence, b"fence", 1, 2, false, false),
        ]
        .concat(),
    );
    let mut retained = Vec::new();
    let mut subscribed = false;
    loop {
        let packet = client.recv();
        match packet.packet_type() {
            SUBACK => {
                let (packet_id, codes) = packet.suback();
                assert_eq!(packet_id, 1);
                let granted: Vec<u8> = filters.iter().map(|(_, qos)| *qos).collect();
                assert_eq!(codes, granted, "SUBACK for {filters:?}");
                subscribed = true;
            }
            PUBLISH => {
                let publish = packet.publish();
                if publish.topic != fence {
                    retained.push(publish);
                }
            }
            PUBACK => {
                assert_eq!(packet.packet_id(), 2);
                assert!(subscribed, "PUBACK before SUBACK");
                client.send(&DISCONNECT);
                return retained;
            }
            other => panic!("unexpected packet type {other} while collecting retained messages"),
        }
    }
}
