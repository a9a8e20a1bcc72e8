//! Decode errors: one variant per protocol violation, each naming the normative statement
//! of the MQTT 3.1.1 standard it breaks, so the broker can log, count and answer it.

use crate::topic::TopicError;

/// Why bytes from a peer are not a valid MQTT packet.
///
/// Every variant is a protocol violation by the peer: the connection is answered (a
/// CONNACK return code, see [`DecodeError::connack_return_code`]) or closed. None is a
/// reason to panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The Remaining Length announces a packet larger than the configured maximum.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Total packet size announced (fixed header included).
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The Remaining Length field uses more than 4 bytes [MQTT-2.2.3].
    #[error("remaining length longer than 4 bytes [MQTT-2.2.3]")]
    MalformedRemainingLength,
    /// Packet type 0 or 15 is reserved [MQTT-2.2.1].
    #[error("reserved packet type {0} [MQTT-2.2.1]")]
    ReservedPacketType(u8),
    /// The fixed header's flag bits are not the ones the type requires [MQTT-2.2.2-1] [MQTT-2.2.2-2].
    #[error(
        "invalid fixed header flags {flags:#06b} for packet type {packet_type} [MQTT-2.2.2-2]"
    )]
    InvalidHeaderFlags {
        /// The packet type (high nibble).
        packet_type: u8,
        /// The flags (low nibble).
        flags: u8,
    },
    /// The packet's body ended before a field did, or bytes remained after the last field.
    #[error("packet body length does not match its contents [MQTT-2.2.3]")]
    MalformedLength,
    /// A string is not well-formed UTF-8 [MQTT-1.5.3-1].
    #[error("string is not well-formed UTF-8 [MQTT-1.5.3-1]")]
    InvalidUtf8,
    /// A string contains U+0000 [MQTT-1.5.3-2].
    #[error("string contains U+0000 [MQTT-1.5.3-2]")]
    NullCharacter,
    /// A topic name or filter is not valid.
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// A QoS of 3 (both QoS bits set) [MQTT-3.3.1-4].
    #[error("QoS 3 is not a valid QoS [MQTT-3.3.1-4]")]
    InvalidQoS,
    /// A QoS 0 PUBLISH with the DUP flag set [MQTT-3.3.1-2].
    #[error("DUP flag set on a QoS 0 PUBLISH [MQTT-3.3.1-2]")]
    DupWithQoS0,
    /// A packet id of 0 [MQTT-2.3.1-1].
    #[error("packet id 0 [MQTT-2.3.1-1]")]
    ZeroPacketId,
    /// A SUBSCRIBE with no topic filter [MQTT-3.8.3-3].
    #[error("SUBSCRIBE without topic filters [MQTT-3.8.3-3]")]
    SubscribeWithoutFilters,
    /// An UNSUBSCRIBE with no topic filter [MQTT-3.10.3-2].
    #[error("UNSUBSCRIBE without topic filters [MQTT-3.10.3-2]")]
    UnsubscribeWithoutFilters,
    /// The reserved bits of a SUBSCRIBE's requested QoS byte are not 0 [MQTT-3.8.3-4].
    #[error("reserved bits set in a requested QoS [MQTT-3.8.3-4]")]
    SubscribeReservedBits,
    /// The protocol name is neither `MQTT` nor `MQIsdp` [MQTT-3.1.2-1]: close without CONNACK.
    #[error("unknown protocol name [MQTT-3.1.2-1]")]
    UnknownProtocolName,
    /// A known protocol name with a level this server does not support [MQTT-3.1.2-2]:
    /// answer CONNACK return code 1, then close.
    #[error("unsupported protocol level {0} [MQTT-3.1.2-2]")]
    UnsupportedProtocolLevel(u8),
    /// The reserved bit of the CONNECT flags is set [MQTT-3.1.2-3].
    #[error("reserved CONNECT flag set [MQTT-3.1.2-3]")]
    ConnectReservedFlag,
    /// Will QoS or will retain set without the will flag [MQTT-3.1.2-13] [MQTT-3.1.2-15].
    #[error("will QoS or retain set without the will flag [MQTT-3.1.2-13]")]
    WillFlagsWithoutWill,
    /// Will QoS 3 [MQTT-3.1.2-14].
    #[error("will QoS 3 [MQTT-3.1.2-14]")]
    InvalidWillQoS,
    /// The password flag is set without the user name flag [MQTT-3.1.2-22].
    #[error("password without user name [MQTT-3.1.2-22]")]
    PasswordWithoutUserName,
    /// A CONNACK with reserved bits set or a reserved return code.
    #[error("malformed CONNACK [MQTT-3.2.2-1]")]
    InvalidConnAck,
    /// A SUBACK return code other than 0, 1, 2 or 0x80 [MQTT-3.9.3-2].
    #[error("invalid SUBACK return code {0:#04x} [MQTT-3.9.3-2]")]
    InvalidSubAckReturnCode(u8),
}

impl DecodeError {
    /// The normative statement (or section) of the MQTT 3.1.1 standard this error names.
    pub fn spec_statement(&self) -> &'static str {
        match self {
            DecodeError::PacketTooLarge { .. } => "maximum packet size",
            DecodeError::MalformedRemainingLength => "MQTT-2.2.3",
            DecodeError::ReservedPacketType(_) => "MQTT-2.2.1",
            DecodeError::InvalidHeaderFlags { .. } => "MQTT-2.2.2-2",
            DecodeError::MalformedLength => "MQTT-2.2.3",
            DecodeError::InvalidUtf8 => "MQTT-1.5.3-1",
            DecodeError::NullCharacter => "MQTT-1.5.3-2",
            DecodeError::Topic(e) => e.spec_statement(),
            DecodeError::InvalidQoS => "MQTT-3.3.1-4",
            DecodeError::DupWithQoS0 => "MQTT-3.3.1-2",
            DecodeError::ZeroPacketId => "MQTT-2.3.1-1",
            DecodeError::SubscribeWithoutFilters => "MQTT-3.8.3-3",
            DecodeError::UnsubscribeWithoutFilters => "MQTT-3.10.3-2",
            DecodeError::SubscribeReservedBits => "MQTT-3.8.3-4",
            DecodeError::UnknownProtocolName => "MQTT-3.1.2-1",
            DecodeError::UnsupportedProtocolLevel(_) => "MQTT-3.1.2-2",
            DecodeError::ConnectReservedFlag => "MQTT-3.1.2-3",
            DecodeError::WillFlagsWithoutWill => "MQTT-3.1.2-13",
            DecodeError::InvalidWillQoS => "MQTT-3.1.2-14",
            DecodeError::PasswordWithoutUserName => "MQTT-3.1.2-22",
            DecodeError::InvalidConnAck => "MQTT-3.2.2-1",
            DecodeError::InvalidSubAckReturnCode(_) => "MQTT-3.9.3-2",
        }
    }

    /// A short stable label for metrics (`kind` label of the malformed-packet counter).
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::PacketTooLarge { .. } => "too_large",
            DecodeError::MalformedRemainingLength => "remaining_length",
            DecodeError::ReservedPacketType(_) => "reserved_type",
            DecodeError::InvalidHeaderFlags { .. } => "header_flags",
            DecodeError::MalformedLength => "length",
            DecodeError::InvalidUtf8 => "utf8",
            DecodeError::NullCharacter => "null_character",
            DecodeError::Topic(_) => "topic",
            DecodeError::InvalidQoS => "qos",
            DecodeError::DupWithQoS0 => "dup",
            DecodeError::ZeroPacketId => "packet_id",
            DecodeError::SubscribeWithoutFilters | DecodeError::UnsubscribeWithoutFilters => {
                "no_filters"
            }
            DecodeError::SubscribeReservedBits => "subscribe_reserved_bits",
            DecodeError::UnknownProtocolName => "protocol_name",
            DecodeError::UnsupportedProtocolLevel(_) => "protocol_level",
            DecodeError::ConnectReservedFlag
            | DecodeError::WillFlagsWithoutWill
            | DecodeError::InvalidWillQoS
            | DecodeError::PasswordWithoutUserName => "connect_flags",
            DecodeError::InvalidConnAck => "connack",
            DecodeError::InvalidSubAckReturnCode(_) => "suback",
        }
    }

    /// The CONNACK return code to answer a CONNECT that failed with this error before
    /// closing, where the standard asks for one: 1 for an unsupported protocol level
    /// [MQTT-3.1.2-2]. `None`: close without CONNACK.
    pub fn connack_return_code(&self) -> Option<crate::ConnectReturnCode> {
        match self {
            DecodeError::UnsupportedProtocolLevel(_) => {
                Some(crate::ConnectReturnCode::UnacceptableProtocolVersion)
            }
            _ => None,
        }
    }
}
