//! The MQTT control packets as plain Rust types.
//!
//! Invalid states are unrepresentable where that is cheap: a QoS 0 PUBLISH has no packet
//! id ([`PublishQos`]), a packet id is never 0 ([`PacketId`]), topics are validated
//! newtypes. The protocol level travels on [`Connect`] so MQTT 5.0 can add properties and
//! reason codes beside these fields later.

use crate::topic::{TopicFilter, TopicName};
use bytes::Bytes;
use bytestring::ByteString;
use std::num::NonZeroU16;

/// The protocol level of a connection (byte 7 of CONNECT's variable header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolLevel {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
}

impl ProtocolLevel {
    /// The protocol name this level is announced with.
    pub fn protocol_name(self) -> &'static str {
        match self {
            ProtocolLevel::V3_1 => "MQIsdp",
            ProtocolLevel::V3_1_1 => "MQTT",
        }
    }

    /// The level byte.
    pub fn level(self) -> u8 {
        match self {
            ProtocolLevel::V3_1 => 3,
            ProtocolLevel::V3_1_1 => 4,
        }
    }
}

/// Quality of service of a message or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum QoS {
    /// QoS 0: at most once.
    AtMostOnce = 0,
    /// QoS 1: at least once.
    AtLeastOnce = 1,
    /// QoS 2: exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a wire value, `None` for 3 and above.
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A packet identifier: never 0 [MQTT-2.3.1-1].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// The packet id for a wire value, `None` for 0.
    pub fn new(value: u16) -> Option<PacketId> {
        NonZeroU16::new(value).map(PacketId)
    }

    /// The wire value.
    pub fn get(self) -> u16 {
        self.0.get()
    }

    /// The next id after this one, wrapping from 65535 to 1.
    pub fn next(self) -> PacketId {
        PacketId(self.0.checked_add(1).unwrap_or(NonZeroU16::MIN))
    }
}

/// A will message: published by the broker when the connection ends without DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// The topic the will is published to.
    pub topic: TopicName,
    /// The will payload (may be empty).
    pub payload: Bytes,
    /// The QoS the will is published with.
    pub qos: QoS,
    /// Whether the will is published as a retained message.
    pub retain: bool,
}

/// CONNECT: the first packet of every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// `MQIsdp`/3 or `MQTT`/4.
    pub protocol: ProtocolLevel,
    /// Discard any earlier session and start a new one that ends with the connection.
    pub clean_session: bool,
    /// Keep-alive interval in seconds; 0 turns keep-alive off.
    pub keep_alive_secs: u16,
    /// The client identifier (may be empty, see [MQTT-3.1.3-6] and [MQTT-3.1.3-8]).
    pub client_id: ByteString,
    /// The will message, if the will flag is set.
    pub will: Option<LastWill>,
    /// The user name, if its flag is set.
    pub username: Option<ByteString>,
    /// The password (binary data), if its flag is set.
    pub password: Option<Bytes>,
}

/// CONNACK return codes (MQTT 3.1.1 table 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnectReturnCode {
    /// 0: connection accepted.
    Accepted = 0,
    /// 1: the server does not support the requested protocol level.
    UnacceptableProtocolVersion = 1,
    /// 2: the client identifier is well-formed UTF-8 but not allowed.
    IdentifierRejected = 2,
    /// 3: the MQTT service is unavailable.
    ServerUnavailable = 3,
    /// 4: the data in the user name or password is malformed (bad credentials).
    BadUserNameOrPassword = 4,
    /// 5: the client is not authorized to connect.
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    /// The return code for a wire value, `None` for reserved values (6-255).
    pub fn from_u8(value: u8) -> Option<ConnectReturnCode> {
        Some(match value {
            0 => ConnectReturnCode::Accepted,
            1 => ConnectReturnCode::UnacceptableProtocolVersion,
            2 => ConnectReturnCode::IdentifierRejected,
            3 => ConnectReturnCode::ServerUnavailable,
            4 => ConnectReturnCode::BadUserNameOrPassword,
            5 => ConnectReturnCode::NotAuthorized,
            _ => return None,
        })
    }
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server resumed a stored session (always false unless accepted).
    pub session_present: bool,
    /// Accepted or why not.
    pub return_code: ConnectReturnCode,
}

/// The QoS of a PUBLISH together with its packet id, which QoS 1 and 2 require and
/// QoS 0 forbids [MQTT-2.3.1-5].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublishQos {
    /// QoS 0: no packet id.
    AtMostOnce,
    /// QoS 1 with its packet id.
    AtLeastOnce(PacketId),
    /// QoS 2 with its packet id.
    ExactlyOnce(PacketId),
}

impl PublishQos {
    /// The QoS level.
    pub fn qos(self) -> QoS {
        match self {
            PublishQos::AtMostOnce => QoS::AtMostOnce,
            PublishQos::AtLeastOnce(_) => QoS::AtLeastOnce,
            PublishQos::ExactlyOnce(_) => QoS::ExactlyOnce,
        }
    }

    /// The packet id, `None` for QoS 0.
    pub fn packet_id(self) -> Option<PacketId> {
        match self {
            PublishQos::AtMostOnce => None,
            PublishQos::AtLeastOnce(id) | PublishQos::ExactlyOnce(id) => Some(id),
        }
    }

    /// `qos` with `packet_id`; the id is ignored for QoS 0.
    pub fn with(qos: QoS, packet_id: PacketId) -> PublishQos {
        match qos {
            QoS::AtMostOnce => PublishQos::AtMostOnce,
            QoS::AtLeastOnce => PublishQos::AtLeastOnce(packet_id),
            QoS::ExactlyOnce => PublishQos::ExactlyOnce(packet_id),
        }
    }
}

/// PUBLISH: an application message, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Set when this is a re-delivery of an earlier attempt (QoS 1/2 only).
    pub dup: bool,
    /// QoS and packet id.
    pub qos: PublishQos,
    /// Whether the message is (to be) retained.
    pub retain: bool,
    /// Where the message is published.
    pub topic: TopicName,
    /// The application payload; a slice of the decode buffer, not a copy.
    pub payload: Bytes,
}

/// One topic filter of a SUBSCRIBE with the maximum QoS asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    /// The filter.
    pub filter: TopicFilter,
    /// The maximum QoS the client wants messages at.
    pub qos: QoS,
}

/// SUBSCRIBE: one or more filters [MQTT-3.8.3-3].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The packet id the SUBACK must carry.
    pub packet_id: PacketId,
    /// The filters, in order; never empty.
    pub filters: Vec<SubscribeFilter>,
}

/// One return code of a SUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscribeReturnCode {
    /// Subscribed, with this maximum QoS granted.
    Success(QoS),
    /// 0x80: refused.
    Failure,
}

impl SubscribeReturnCode {
    /// The wire byte.
    pub fn to_u8(self) -> u8 {
        match self {
            SubscribeReturnCode::Success(qos) => qos as u8,
            SubscribeReturnCode::Failure => 0x80,
        }
    }
}

/// SUBACK: one return code per filter of the SUBSCRIBE, in order [MQTT-3.9.3-1].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The SUBSCRIBE's packet id.
    pub packet_id: PacketId,
    /// One code per filter.
    pub return_codes: Vec<SubscribeReturnCode>,
}

/// UNSUBSCRIBE: one or more filters [MQTT-3.10.3-2].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// The packet id the UNSUBACK must carry.
    pub packet_id: PacketId,
    /// The filters; never empty.
    pub filters: Vec<TopicFilter>,
}

/// The control packet types (the high nibble of the first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// 1
    Connect = 1,
    /// 2
    ConnAck = 2,
    /// 3
    Publish = 3,
    /// 4
    PubAck = 4,
    /// 5
    PubRec = 5,
    /// 6
    PubRel = 6,
    /// 7
    PubComp = 7,
    /// 8
    Subscribe = 8,
    /// 9
    SubAck = 9,
    /// 10
    Unsubscribe = 10,
    /// 11
    UnsubAck = 11,
    /// 12
    PingReq = 12,
    /// 13
    PingResp = 13,
    /// 14
    Disconnect = 14,
}

/// Any MQTT 3.1/3.1.1 control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (client to server).
    Connect(Box<Connect>),
    /// CONNACK (server to client).
    ConnAck(ConnAck),
    /// PUBLISH (both directions).
    Publish(Publish),
    /// PUBACK (both directions).
    PubAck(PacketId),
    /// PUBREC (both directions).
    PubRec(PacketId),
    /// PUBREL (both directions).
    PubRel(PacketId),
    /// PUBCOMP (both directions).
    PubComp(PacketId),
    /// SUBSCRIBE (client to server).
    Subscribe(Subscribe),
    /// SUBACK (server to client).
    SubAck(SubAck),
    /// UNSUBSCRIBE (client to server).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (server to client).
    UnsubAck(PacketId),
    /// PINGREQ (client to server).
    PingReq,
    /// PINGRESP (server to client).
    PingResp,
    /// DISCONNECT (client to server).
    Disconnect,
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect => PacketType::Disconnect,
        }
    }
}
