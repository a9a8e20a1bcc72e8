//! Shared by the integration tests that restart the real broker on one data directory:
//! a broker process and a minimal, exact MQTT 3.1.1 client over a blocking socket.

#![allow(dead_code, clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use cutie_codec::{
    Connect, Decoder, Packet, PacketId, ProtocolLevel, Publish, PublishQos, QoS, Subscribe,
    SubscribeFilter, TopicFilter, TopicName,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

pub struct Broker {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    /// Starts `cutie` with one shard on `data_dir`.
    pub fn start(data_dir: &Path) -> Broker {
        Broker::start_with(data_dir, 1)
    }

    /// Starts `cutie` with `shards` shards on `data_dir`, waiting until it listens.
    pub fn start_with(data_dir: &Path, shards: u16) -> Broker {
        Broker::start_env(data_dir, shards, &[])
    }

    /// One shard, with extra command-line arguments.
    pub fn start_args(data_dir: &Path, args: &[&str]) -> Broker {
        Broker::launch(data_dir, 1, &[], args)
    }

    /// [`Broker::start_with`], with extra `CUTIE_*` environment variables.
    pub fn start_env(data_dir: &Path, shards: u16, env: &[(&str, &str)]) -> Broker {
        Broker::launch(data_dir, shards, env, &[])
    }

    fn launch(data_dir: &Path, shards: u16, env: &[(&str, &str)], args: &[&str]) -> Broker {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cutie"));
        command
            .args(["--listen", "127.0.0.1:0", "--no-pin-cores"])
            .args(["--shards", &shards.to_string()])
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CUTIE_") {
                command.env_remove(key);
            }
        }
        command
            .env("NO_COLOR", "1")
            .env("CUTIE_ADMIN__ENABLED", "false");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listen=").nth(1) {
                        let addr: String =
                            rest.chars().take_while(|c| !c.is_whitespace()).collect();
                        let _ = tx.send(addr);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("broker did not start: {:?}", log.lock().unwrap()))
            .parse()
            .unwrap();
        Broker { child, addr, log }
    }

    /// The log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Whether a log line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and a clean exit.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
}

/// A minimal MQTT 3.1.1 client over a blocking socket.
pub struct Client {
    stream: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
}

impl Client {
    /// Connects (3.1.1); returns the client and CONNACK's session-present flag.
    pub fn connect(addr: SocketAddr, client_id: &str, clean_session: bool) -> (Client, bool) {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut client = Client {
            stream,
            decoder: Decoder::new(1 << 20),
            buf: BytesMut::new(),
        };
        client.send(Packet::Connect(Box::new(Connect {
            protocol: ProtocolLevel::V3_1_1,
            clean_session,
            keep_alive_secs: 0,
            client_id: ByteString::from(client_id),
            will: None,
            username: None,
            password: None,
        })));
        match client.next() {
            Some(Packet::ConnAck(connack)) => (client, connack.session_present),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Writes one packet.
    pub fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.encode(&mut out);
        let _ = self.stream.write_all(&out);
    }

    /// The next packet; `None` when the connection closed (or nothing came in 10 s).
    pub fn next(&mut self) -> Option<Packet> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.buf).unwrap() {
                return Some(packet);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Publishes at QoS 1; true when PUBACKed, false when the broker closed instead.
    pub fn publish_qos1(&mut self, topic: &str, payload: Vec<u8>, id: u16) -> bool {
        let packet_id = PacketId::new(id).unwrap();
        self.send(Packet::Publish(Publish {
            dup: false,
            qos: PublishQos::AtLeastOnce(packet_id),
            retain: false,
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::from(payload),
        }));
        match self.next() {
            Some(Packet::PubAck(acked)) => {
                assert_eq!(acked, packet_id);
                true
            }
            None => false,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

impl Client {
    /// Subscribes and waits for the SUBACK.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            filters: vec![SubscribeFilter {
                filter: TopicFilter::new(filter).unwrap(),
                qos,
            }],
        }));
        assert!(matches!(self.next(), Some(Packet::SubAck(_))));
    }

    /// Publishes a retained QoS 1 message and waits for its PUBACK.
    pub fn retain_qos1(&mut self, topic: &str, payload: &[u8], id: u16) -> bool {
        let packet_id = PacketId::new(id).unwrap();
        self.send(Packet::Publish(Publish {
            dup: false,
            qos: PublishQos::AtLeastOnce(packet_id),
            retain: true,
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::copy_from_slice(payload),
        }));
        matches!(self.next(), Some(Packet::PubAck(acked)) if acked == packet_id)
    }

    /// Reads PUBLISHes (acknowledging QoS 1) until `count` arrived; their payloads.
    pub fn receive(&mut self, count: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        while got.len() < count {
            match self.next() {
                Some(Packet::Publish(publish)) => {
                    if let PublishQos::AtLeastOnce(id) = publish.qos {
                        self.send(Packet::PubAck(id));
                    }
                    got.push(publish.payload.to_vec());
                }
                Some(_) => {}
                None => panic!("connection closed after {} of {count} messages", got.len()),
            }
        }
        got
    }
}
