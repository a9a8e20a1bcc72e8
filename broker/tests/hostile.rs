//! Hostile clients while real ones work: hundreds of connections from other loopback
//! addresses (127.0.0.2 and up) send random bytes, mutated valid packets, impossible
//! lengths, or nothing at all (slowloris), while a real publisher and a persistent
//! subscriber (rumqttc-free: the exact client of `common`, plus mosquitto_sub) exchange
//! QoS 1 messages from 127.0.0.1. The broker must stay up, the real clients must lose
//! nothing, the attackers' addresses get banned, and memory stays bounded.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Client, Launch};
use cutie_codec::{
    Connect, Packet, PacketId, ProtocolLevel, Publish, PublishQos, QoS, Subscribe, SubscribeFilter,
    TopicFilter, TopicName,
};
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ATTACKERS: usize = 240;
const ATTACK: Duration = Duration::from_secs(8);

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A connection from `source` (a loopback address other than 127.0.0.1).
fn connect_from(source: [u8; 4], addr: SocketAddr) -> Option<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket.bind(&SocketAddr::from((source, 0)).into()).ok()?;
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(2))
        .ok()?;
    let stream: TcpStream = socket.into();
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .ok()?;
    Some(stream)
}

fn valid_packets(rng: &mut impl Rng) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolLevel::V3_1_1,
        clean_session: rng.gen(),
        keep_alive_secs: rng.gen_range(0..5),
        client_id: format!("evil-{}", rng.gen::<u32>()).into(),
        will: None,
        username: None,
        password: None,
    }))
    .encode(&mut out);
    Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        filters: vec![SubscribeFilter {
            filter: TopicFilter::new("evil/#").unwrap(),
            qos: QoS::AtLeastOnce,
        }],
    })
    .encode(&mut out);
    Packet::Publish(Publish {
        dup: false,
        qos: PublishQos::AtLeastOnce(PacketId::new(2).unwrap()),
        retain: rng.gen(),
        topic: TopicName::new("evil/topic").unwrap(),
        payload: vec![0xAB; rng.gen_range(0..512)].into(),
    })
    .encode(&mut out);
    out.to_vec()
}

/// One attacker's bytes for one connection.
fn attack_bytes(rng: &mut impl Rng) -> Vec<u8> {
    match rng.gen_range(0..5) {
        // Random garbage.
        0 => (0..rng.gen_range(1..2048)).map(|_| rng.gen()).collect(),
        // Valid packets with random bytes flipped.
        1 => {
            let mut bytes = valid_packets(rng);
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..bytes.len());
                bytes[i] ^= 1 << rng.gen_range(0..8);
            }
            bytes
        }
        // Valid packets cut short.
        2 => {
            let mut bytes = valid_packets(rng);
            bytes.truncate(rng.gen_range(1..bytes.len()));
            bytes
        }
        // A PUBLISH claiming 268 MB.
        3 => vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F, 0x00],
        // Nothing: a slowloris, left to the connect timeout.
        _ => Vec::new(),
    }
}

#[test]
fn hostile_connections_do_not_hurt_real_clients() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Launch::new(dir.path().join("data"))
        .shards(2)
        .env("CUTIE_LIMITS__CONNECT_TIMEOUT_SECS", "3")
        .env("CUTIE_LIMITS__BAN_THRESHOLD", "5")
        .env("CUTIE_LIMITS__MAX_PACKET_SIZE", "65536")
        // The real subscriber is offline during the attack: keep all it is owed.
        .env("CUTIE_LIMITS__MAX_QUEUED_MESSAGES", "1000000")
        .start();
    let addr = broker.addr;
    let pid = broker.pid();

    // The real clients, on 127.0.0.1.
    {
        let (mut sub, _) = Client::connect(addr, "real-sub", false);
        sub.subscribe("real/#", QoS::AtLeastOnce);
    }
    let rss_before = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let bytes_sent = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..4)
        .map(|t| {
            let (stop, connections, refused, bytes_sent) = (
                stop.clone(),
                connections.clone(),
                refused.clone(),
                bytes_sent.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                let mut open = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    // Each thread attacks from its own range of addresses.
                    let n = rng.gen_range(0..ATTACKERS / 4) + t as usize * ATTACKERS / 4;
                    let source = [127, 0, 1 + (n / 250) as u8, 2 + (n % 250) as u8];
                    let Some(mut stream) = connect_from(source, addr) else {
                        refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    connections.fetch_add(1, Ordering::Relaxed);
                    let bytes = attack_bytes(&mut rng);
                    if stream.write_all(&bytes).is_ok() {
                        bytes_sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    }
                    let mut sink = [0u8; 1024];
                    let _ = stream.read(&mut sink);
                    // Keep some connections open (slowloris and half-done packets).
                    open.push(stream);
                    if open.len() > ATTACKERS / 4 {
                        open.remove(0);
                    }
                }
            })
        })
        .collect();

    // Meanwhile the real publisher sends QoS 1 messages, acknowledged one by one.
    let started = Instant::now();
    let (mut publisher, _) = Client::connect(addr, "real-pub", true);
    let mut acked = BTreeSet::new();
    let mut seq = 0u32;
    while started.elapsed() < ATTACK {
        seq += 1;
        assert!(
            publisher.publish_qos1(
                "real/x",
                format!("{seq}").into_bytes(),
                (seq % 60_000 + 1) as u16
            ),
            "the real publisher was disconnected during the attack"
        );
        acked.insert(seq);
    }
    let rss_during = rss_kib(pid);
    stop.store(true, Ordering::Relaxed);
    for attacker in attackers {
        attacker.join().unwrap();
    }

    // The persistent subscriber gets every acknowledged message.
    let (mut sub, present) = Client::connect(addr, "real-sub", false);
    assert!(present);
    let got: BTreeSet<u32> = sub
        .receive(acked.len())
        .iter()
        .map(|p| std::str::from_utf8(p).unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, acked, "real messages were lost during the attack");

    // A real client from 127.0.0.1 still connects; the broker is healthy.
    let (_late, _) = Client::connect(addr, "real-late", true);
    let rss_after = rss_kib(pid);
    let log = broker.log_lines().join("\n");
    let bans = log.matches("banning a client address").count();
    eprintln!(
        "hostile run: {} attacker connections ({} refused or failed to connect), {} KiB of \
         attack bytes, {} addresses banned, {} real messages acknowledged and delivered; \
         broker RSS {} KiB before, {} KiB during, {} KiB after",
        connections.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        bytes_sent.load(Ordering::Relaxed) / 1024,
        bans,
        acked.len(),
        rss_before,
        rss_during,
        rss_after
    );
    assert!(bans > 0, "no attacker address was banned");
    assert!(
        rss_during < rss_before + 128 * 1024,
        "memory grew from {rss_before} KiB to {rss_during} KiB under attack"
    );
    broker.stop();
}
