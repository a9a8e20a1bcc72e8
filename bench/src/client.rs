//! Blocking MQTT client steps: connect with CONNECT/CONNACK, SUBSCRIBE/SUBACK.
//!
//! Used for every connection's setup (message workers switch the socket to non-blocking
//! afterwards) and for the whole connection storm. Every step has a deadline; sockets
//! get TCP_NODELAY and read/write timeouts, so a silent broker costs at most
//! [`ConnectOptions::io_timeout`] per step.

use crate::config::ConnectOptions;
use crate::error::ClientError;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use cutie_codec::{
    Connect, ConnectReturnCode, Decoder, Packet, PacketId, ProtocolLevel, QoS, Subscribe,
    SubscribeFilter, SubscribeReturnCode, TopicFilter,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

/// A connection the broker accepted.
#[derive(Debug)]
pub struct Connected {
    /// The socket, blocking, with read and write timeouts set.
    pub stream: TcpStream,
    /// Bytes read past the packets consumed so far (kept for the next reader).
    pub read_buf: BytesMut,
    /// The decoder for this connection.
    pub decoder: Decoder,
    /// CONNACK said the broker already had a session for this client id.
    pub session_present: bool,
}

/// Connects to `addr` and completes CONNECT/CONNACK as `client_id` (MQTT 3.1.1), with a
/// clean session or, `clean_session` false, one the broker keeps after the connection.
pub fn connect(
    addr: SocketAddr,
    client_id: &str,
    clean_session: bool,
    options: &ConnectOptions,
    packet_size_max: usize,
) -> Result<Connected, ClientError> {
    let mut stream = TcpStream::connect_timeout(&addr, options.connect_timeout)
        .map_err(|source| ClientError::Connect { addr, source })?;
    let io = |doing| move |source| ClientError::Io { doing, source };
    stream
        .set_nodelay(true)
        .map_err(io("setting TCP_NODELAY"))?;
    stream
        .set_read_timeout(Some(options.io_timeout))
        .map_err(io("setting the read timeout"))?;
    stream
        .set_write_timeout(Some(options.io_timeout))
        .map_err(io("setting the write timeout"))?;
    let connect = Packet::Connect(Box::new(Connect {
        protocol: ProtocolLevel::V3_1_1,
        clean_session,
        keep_alive_secs: options.keep_alive_secs,
        client_id: ByteString::from(client_id.to_owned()),
        will: None,
        username: options.username.clone().map(ByteString::from),
        password: options.password.clone().map(Bytes::from),
    }));
    write_packet(&mut stream, &connect, "writing CONNECT")?;
    let mut connected = Connected {
        stream,
        read_buf: BytesMut::with_capacity(4096),
        decoder: Decoder::new(packet_size_max),
        session_present: false,
    };
    let deadline = Instant::now() + options.io_timeout;
    match connected.read_packet(deadline, "CONNACK")? {
        Packet::ConnAck(ack) if ack.return_code == ConnectReturnCode::Accepted => {
            connected.session_present = ack.session_present;
            Ok(connected)
        }
        Packet::ConnAck(ack) => Err(ClientError::Refused(ack.return_code)),
        other => Err(ClientError::Unexpected {
            expected: "CONNACK",
            got: other.packet_type(),
        }),
    }
}

impl Connected {
    /// Subscribes to `filter` at `qos` and waits for the SUBACK; returns the granted QoS.
    pub fn subscribe(
        &mut self,
        filter: &str,
        qos: QoS,
        deadline: Instant,
    ) -> Result<QoS, ClientError> {
        let topic_filter =
            TopicFilter::new(filter.to_owned()).map_err(|reason| ClientError::Topic {
                topic: filter.to_owned(),
                reason,
            })?;
        let packet_id = PacketId::new(1).unwrap_or_else(|| unreachable!("1 is not 0"));
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![SubscribeFilter {
                filter: topic_filter,
                qos,
            }],
        });
        write_packet(&mut self.stream, &subscribe, "writing SUBSCRIBE")?;
        match self.read_packet(deadline, "SUBACK")? {
            Packet::SubAck(ack) if ack.packet_id == packet_id => match ack.return_codes.first() {
                Some(SubscribeReturnCode::Success(granted)) => Ok(*granted),
                _ => Err(ClientError::SubscribeRefused {
                    filter: filter.to_owned(),
                }),
            },
            other => Err(ClientError::Unexpected {
                expected: "SUBACK",
                got: other.packet_type(),
            }),
        }
    }

    /// Reads until one whole packet is decoded or `deadline` passes.
    pub fn read_packet(
        &mut self,
        deadline: Instant,
        waiting_for: &'static str,
    ) -> Result<Packet, ClientError> {
        let mut scratch = [0u8; 4096];
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.read_buf)? {
                return Ok(packet);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ClientError::Timeout(waiting_for));
            }
            self.stream
                .set_read_timeout(Some(remaining))
                .map_err(|source| ClientError::Io {
                    doing: "setting the read timeout",
                    source,
                })?;
            match self.stream.read(&mut scratch) {
                Ok(0) => return Err(ClientError::Closed(waiting_for)),
                Ok(n) => self.read_buf.extend_from_slice(&scratch[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(ClientError::Timeout(waiting_for))
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ClientError::Io {
                        doing: "reading",
                        source,
                    })
                }
            }
        }
    }
}

/// Encodes `packet` and writes it whole (blocking, within the socket's write timeout).
pub fn write_packet(
    stream: &mut TcpStream,
    packet: &Packet,
    doing: &'static str,
) -> Result<(), ClientError> {
    let mut buf = BytesMut::with_capacity(packet.encoded_len());
    packet.encode(&mut buf);
    stream
        .write_all(&buf)
        .map_err(|source| ClientError::Io { doing, source })
}
