//! Driving a `ShardCore` directly in tests: connections, packets in, packets out.

#![allow(dead_code, clippy::unwrap_used)]

use bytes::BytesMut;
use bytestring::ByteString;
use cutie_codec::{
    Connect, Decoder, Packet, PacketId, ProtocolLevel, QoS, Subscribe, SubscribeFilter, TopicFilter,
};
use cutie_shard::{ConnId, OutputState, ShardCore};

/// A 3.1.1 CONNECT without will, credentials or keep-alive.
pub fn connect_packet(client_id: &str, clean_session: bool) -> Connect {
    Connect {
        protocol: ProtocolLevel::V3_1_1,
        clean_session,
        keep_alive_secs: 0,
        client_id: ByteString::from(client_id),
        will: None,
        username: None,
        password: None,
    }
}

/// Connects `client_id` as connection `conn`; the CONNECT must be accepted.
pub fn connect(core: &mut ShardCore, conn: u64, client_id: &str, clean_session: bool) {
    assert!(core.connect(ConnId(conn), connect_packet(client_id, clean_session), 0));
}

/// The client on `conn` sends `packet`.
pub fn send(core: &mut ShardCore, conn: u64, packet: Packet) {
    let mut buf = BytesMut::new();
    packet.encode(&mut buf);
    core.handle_bytes(ConnId(conn), &mut buf, 0);
}

/// The packets the connection's writer would get now.
pub fn output(core: &mut ShardCore, conn: u64) -> Vec<Packet> {
    let mut buf = BytesMut::new();
    let state = core.take_output(ConnId(conn), &mut buf);
    assert_ne!(state, OutputState::Gone);
    let mut decoder = Decoder::new(1 << 20);
    let mut packets = Vec::new();
    while let Some(packet) = decoder.decode(&mut buf).unwrap() {
        packets.push(packet);
    }
    assert!(buf.is_empty());
    packets
}

/// A SUBSCRIBE (packet id 1) to `filters`.
pub fn subscribe_packet(filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        filters: filters
            .iter()
            .map(|(filter, qos)| SubscribeFilter {
                filter: TopicFilter::new(*filter).unwrap(),
                qos: *qos,
            })
            .collect(),
    })
}

/// A packet id.
pub fn id(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}
