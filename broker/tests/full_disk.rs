//! A full file system under the write-ahead log, for real: the data directory is a small
//! tmpfs that a filler file nearly fills. QoS 1 publishes to a persistent session fill it;
//! then the log fails, QoS 1/2 publishes are refused (connection closed, no PUBACK),
//! QoS 0 keeps flowing, the failure is logged; once space is freed the shard reopens its
//! log and acknowledges again; after a restart every acknowledged message is delivered.
//!
//! Needs root (to mount a tmpfs); elsewhere it says so and passes without checking, except
//! under CI, where it fails (`common/prerequisite.rs`).

#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "loopback/broker.rs"]
mod broker;
#[allow(dead_code)]
#[path = "loopback/clients.rs"]
mod clients;
mod common;

use clients::MosquittoSub;
use common::prerequisite::{require, require_root};
use common::{Client, Launch};
use cutie_codec::{Packet, PacketId, PublishQos, QoS, Subscribe, SubscribeFilter, TopicFilter};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn payload(seq: u32) -> Vec<u8> {
    let mut p = format!("{seq:08}:").into_bytes();
    p.resize(2048, b'x');
    p
}

fn seq_of(payload: &[u8]) -> u32 {
    std::str::from_utf8(&payload[..8]).unwrap().parse().unwrap()
}

#[test]
fn a_full_disk_refuses_qos1_keeps_qos0_and_recovers_when_space_returns() {
    if !require_root("to mount a tmpfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount_point = dir.path().join("fs");
    std::fs::create_dir(&mount_point).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mount_point)
        .status()
        .is_ok_and(|s| s.success());
    if !require("a tmpfs mount", mounted, "mount(8) and CAP_SYS_ADMIN") {
        return;
    }
    let _mount = Mount(mount_point.clone());
    let data_dir = mount_point.join("data");
    // Leave about 600 KiB free.
    let filler = mount_point.join("filler");
    std::fs::write(&filler, vec![0u8; 3400 * 1024]).unwrap();

    let broker = Launch::new(&data_dir).start();
    // A persistent subscriber that goes offline: everything published to it is logged.
    {
        let (mut sub, _) = Client::connect(broker.addr, "fd-sub", false);
        sub.send(Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            filters: vec![SubscribeFilter {
                filter: TopicFilter::new("fd/q1").unwrap(),
                qos: QoS::AtLeastOnce,
            }],
        }));
        assert!(matches!(sub.next(), Some(Packet::SubAck(_))));
    }
    // A QoS 0 subscriber (mosquitto_sub, clean session), subscribed once this returns.
    let mut qos0_sub = MosquittoSub::start(broker.addr, &["-t", "fd/q0", "-C", "1"]);

    // Fill the disk.
    let (mut publisher, _) = Client::connect(broker.addr, "fd-pub", true);
    let mut acked = BTreeSet::new();
    let mut refused_at = None;
    for seq in 0..2000u32 {
        if publisher.publish_qos1("fd/q1", payload(seq), (seq % 60000 + 1) as u16) {
            acked.insert(seq);
        } else {
            refused_at = Some(seq);
            break;
        }
    }
    let refused_at = refused_at.expect("the disk never filled");
    assert!(
        acked.len() > 50,
        "only {} acknowledged before the disk filled",
        acked.len()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !broker.logged("write-ahead log failed") {
        assert!(Instant::now() < deadline, "the failure was not logged");
        std::thread::sleep(Duration::from_millis(20));
    }

    // While the log is failed: QoS 1 is refused, QoS 0 flows.
    let (mut again, _) = Client::connect(broker.addr, "fd-pub2", true);
    assert!(
        !again.publish_qos1("fd/q1", payload(9999), 1),
        "a QoS 1 publish was acknowledged while the log could not take it"
    );
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.addr.port().to_string()])
        .args(["-t", "fd/q0", "-m", "still-flowing", "-q", "0"])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(qos0_sub.recv().payload, "still-flowing");

    // Space comes back: the shard reopens its log and acknowledges again.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next = refused_at + 1;
    loop {
        let (mut p, _) = Client::connect(broker.addr, "fd-pub3", true);
        if p.publish_qos1("fd/q1", payload(next), 7) {
            acked.insert(next);
            break;
        }
        next += 1;
        assert!(
            Instant::now() < deadline,
            "the log never became healthy again"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The log is written by a thread of its own: the line may trail the PUBACK.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !broker.logged("reopened and healthy again") {
        assert!(Instant::now() < deadline, "the reopening was not logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    broker.stop();

    // After a restart the persistent subscriber gets every acknowledged message.
    let broker = Launch::new(&data_dir).start();
    let (mut sub, present) = Client::connect(broker.addr, "fd-sub", false);
    assert!(present, "the persistent session survived");
    let mut received = BTreeSet::new();
    while !acked.is_subset(&received) {
        match sub.next() {
            Some(Packet::Publish(publish)) => {
                received.insert(seq_of(&publish.payload));
                if let PublishQos::AtLeastOnce(id) = publish.qos {
                    sub.send(Packet::PubAck(id));
                }
            }
            Some(_) => {}
            None => {
                let missing: Vec<&u32> = acked.difference(&received).take(10).collect();
                panic!(
                    "{} acknowledged messages never arrived (first {missing:?})",
                    acked.difference(&received).count()
                );
            }
        }
    }
    broker.stop();
}
