//! Password checks run beside the shard, not in front of its acknowledgements: a real
//! one-shard broker (in process, with a write-ahead log in `sync` mode) whose
//! authenticator holds every check of user `slow` until the test opens a gate.
//!
//! No timing is asserted: the checks are *provably* outstanding (they are blocked) when
//! the PUBACK arrives. Before the checks moved to their own thread they ran on glommio's
//! blocking pool, the one thread the log's group commits run on, so that PUBACK could not
//! come before the gate opened (the test then fails on its 20 s read timeout).

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use cutie_codec::{
    ConnAck, Connect, ConnectReturnCode, Decoder, Packet, PacketId, ProtocolLevel, Publish,
    PublishQos, QoS, Subscribe, SubscribeFilter, TopicFilter, TopicName,
};
use cutie_shard::access::{AccessControl, AuthOutcome, Authenticator, BanConfig, Identity};
use cutie_shard::{Durability, Limits, LogConfig, RuntimeConfig};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Accepts everyone; holds user `slow` until [`Gate::open`].
#[derive(Debug, Default)]
struct Gate {
    /// Checks of `slow` that started (and are held).
    entered: AtomicU64,
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl Authenticator for Gate {
    fn authenticate(&self, client: &Identity<'_>, _password: Option<&[u8]>) -> AuthOutcome {
        if client.username == Some("slow") {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
        }
        AuthOutcome::Accept
    }
}

fn start(gate: &Arc<Gate>, data_dir: &std::path::Path) -> cutie_shard::Broker {
    let access = Arc::new(AccessControl::new(BanConfig::default()));
    access.set_authenticator(Some(Arc::clone(gate) as Arc<dyn Authenticator>));
    let broker = cutie_shard::start(RuntimeConfig {
        shards: 1,
        pin_cores: false,
        listen: "127.0.0.1:0".parse().unwrap(),
        io_memory_bytes: 512 * 1024,
        ring_depth: 128,
        idle_poll: Duration::ZERO,
        mesh_channel_capacity: 1024,
        connect_timeout: Duration::from_secs(60),
        max_connections: 0,
        limits: Limits::default(),
        log: Some(LogConfig {
            durability: Durability::Sync,
            data_dir: data_dir.to_path_buf(),
            wal_max_bytes: 64 << 20,
            fsync_interval: Duration::from_millis(100),
            recover_skip_corrupt: false,
            record_bytes_max: 1 << 20,
        }),
        access,
        plugins: Vec::new(),
        tls: None,
    })
    .unwrap();
    wait_until("the broker is ready", || broker.is_ready());
    broker
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Client {
    stream: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
}

impl Client {
    /// Connects and sends CONNECT as `username`, without waiting for the CONNACK.
    fn send_connect(addr: SocketAddr, client_id: &str, username: &str, clean: bool) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut client = Client {
            stream,
            decoder: Decoder::new(1 << 20),
            buf: BytesMut::new(),
        };
        client.send(Packet::Connect(Box::new(Connect {
            protocol: ProtocolLevel::V3_1_1,
            clean_session: clean,
            keep_alive_secs: 0,
            client_id: ByteString::from(client_id),
            will: None,
            username: Some(ByteString::from(username)),
            password: Some(Bytes::from_static(b"secret")),
        })));
        client
    }

    fn connect(addr: SocketAddr, client_id: &str, username: &str, clean: bool) -> Client {
        let mut client = Client::send_connect(addr, client_id, username, clean);
        assert_eq!(client.connack(), Some(ConnectReturnCode::Accepted));
        client
    }

    fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.encode(&mut out);
        self.stream.write_all(&out).unwrap();
    }

    /// The next packet; `None` when the connection closed or nothing came in 20 s.
    fn next(&mut self) -> Option<Packet> {
        let mut chunk = [0u8; 4096];
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

    fn connack(&mut self) -> Option<ConnectReturnCode> {
        match self.next() {
            Some(Packet::ConnAck(ConnAck { return_code, .. })) => Some(return_code),
            Some(other) => panic!("expected CONNACK, got {other:?}"),
            None => None,
        }
    }

    /// Whether anything at all has arrived (without waiting for it).
    fn has_input(&self) -> bool {
        !self.buf.is_empty() || peek(self)
    }
}

/// Whether the socket has bytes to read, without waiting.
fn peek(client: &Client) -> bool {
    client.stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let peeked = client.stream.peek(&mut byte);
    client.stream.set_nonblocking(false).unwrap();
    match peeked {
        Ok(n) => n > 0,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("peek: {e}"),
    }
}

#[test]
fn a_shard_acknowledges_qos1_publishes_while_password_checks_are_outstanding() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let broker = start(&gate, dir.path());
    let addr = broker.local_addr();

    // A persistent subscriber, so that every publish is logged and its PUBACK waits for
    // the log's group commit.
    let mut subscriber = Client::connect(addr, "keeper", "fast", false);
    subscriber.send(Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        filters: vec![SubscribeFilter {
            filter: TopicFilter::new("t/#").unwrap(),
            qos: QoS::AtLeastOnce,
        }],
    }));
    assert!(matches!(subscriber.next(), Some(Packet::SubAck(_))));
    let mut publisher = Client::connect(addr, "publisher", "fast", true);

    // A burst of password CONNECTs, all held in their checks.
    let mut burst: Vec<Client> = (0..10)
        .map(|i| Client::send_connect(addr, &format!("slow-{i}"), "slow", true))
        .collect();
    wait_until("a password check has started", || {
        gate.entered.load(Ordering::SeqCst) >= 1
    });

    for id in 1..=3u16 {
        let packet_id = PacketId::new(id).unwrap();
        publisher.send(Packet::Publish(Publish {
            dup: false,
            qos: PublishQos::AtLeastOnce(packet_id),
            retain: false,
            topic: TopicName::new("t/x").unwrap(),
            payload: Bytes::from_static(b"kept"),
        }));
        match publisher.next() {
            Some(Packet::PubAck(acked)) => assert_eq!(acked, packet_id),
            other => panic!(
                "no PUBACK while password checks were outstanding (the log waited behind \
                 them?): {other:?}"
            ),
        }
    }
    // The order of events: every PUBACK came while every check of the burst was still
    // held; none of them has had an answer.
    assert!(!*gate.open.lock().unwrap());
    for client in &mut burst {
        assert!(!client.has_input(), "a held check was answered");
    }

    gate.open();
    for client in &mut burst {
        assert_eq!(client.connack(), Some(ConnectReturnCode::Accepted));
    }
    assert_eq!(gate.entered.load(Ordering::SeqCst), 10);
    broker.shutdown();
    broker.join();
}

#[test]
fn a_full_password_check_queue_answers_connack_3_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let broker = start(&gate, dir.path());
    let addr = broker.local_addr();
    let queue_max = cutie_shard::offload::CHECK_QUEUE_MAX;
    let threads = cutie_shard::offload::CHECK_THREADS;

    // Occupy every check thread first, then fill the queue and go 5 over.
    let mut held: Vec<Client> = (0..threads)
        .map(|i| Client::send_connect(addr, &format!("held-{i}"), "slow", true))
        .collect();
    wait_until("every check thread holds a check", || {
        gate.entered.load(Ordering::SeqCst) == threads as u64
    });
    let mut queued = Vec::new();
    for i in 0..queue_max + 5 {
        queued.push(Client::send_connect(
            addr,
            &format!("queued-{i}"),
            "slow",
            true,
        ));
    }
    // Five of them (whichever reached the shard last) are answered at once, while the
    // gate is still shut: CONNACK 3, counted.
    wait_until("the refusals are counted", || {
        broker.health()[0]
            .snapshot
            .lock()
            .unwrap()
            .stats
            .auth_checks_refused_total
            == 5
    });
    wait_until("five clients are answered", || {
        queued.iter().filter(|c| c.has_input()).count() == 5
    });
    let (mut refused, mut waiting): (Vec<Client>, Vec<Client>) = queued
        .into_iter()
        .partition(|c| !c.buf.is_empty() || peek(c));
    assert_eq!(refused.len(), 5);
    for client in &mut refused {
        assert_eq!(client.connack(), Some(ConnectReturnCode::ServerUnavailable));
    }

    gate.open();
    for client in held.iter_mut().chain(waiting.iter_mut()) {
        assert_eq!(client.connack(), Some(ConnectReturnCode::Accepted));
    }
    broker.shutdown();
    broker.join();
}
