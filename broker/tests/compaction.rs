//! Compaction in the running broker: with a small `wal_max_bytes` the shard writes
//! snapshots and deletes segments while QoS 1 traffic to a persistent session goes on;
//! after a restart the session's queue is exactly what was acknowledged and not yet
//! delivered.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Client, Launch};
use cutie_codec::QoS;

#[test]
fn compaction_under_load_keeps_every_queued_message() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let launch = || Launch::new(&data_dir).env("CUTIE_PERSISTENCE__WAL_MAX_BYTES", "65536");
    let broker = launch().start();
    {
        let (mut sub, _) = Client::connect(broker.addr, "compact-sub", false);
        sub.subscribe("c/#", QoS::AtLeastOnce);
    }
    let (mut publisher, _) = Client::connect(broker.addr, "compact-pub", true);
    const MESSAGES: usize = 600;
    for i in 0..MESSAGES {
        let mut payload = format!("{i:06}").into_bytes();
        payload.resize(512, b'.');
        assert!(publisher.publish_qos1("c/x", payload, (i % 1000 + 1) as u16));
    }
    broker.stop();
    let files: Vec<String> = std::fs::read_dir(data_dir.join("shard-0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with(".snap")),
        "no snapshot after ~300 KiB of records with wal_max_bytes = 64 KiB: {files:?}"
    );
    let segment_bytes: u64 = files
        .iter()
        .filter(|f| f.ends_with(".wal"))
        .map(|f| {
            std::fs::metadata(data_dir.join("shard-0").join(f))
                .unwrap()
                .len()
        })
        .sum();
    assert!(
        segment_bytes < 200 * 1024,
        "segments were not deleted: {segment_bytes} bytes"
    );

    let broker = launch().start();
    let (mut sub, present) = Client::connect(broker.addr, "compact-sub", false);
    assert!(present);
    let got = sub.receive(MESSAGES);
    for (i, payload) in got.iter().enumerate() {
        assert_eq!(
            &payload[..6],
            format!("{i:06}").as_bytes(),
            "message {i} out of order or lost"
        );
    }
    broker.stop();
}

/// SIGKILL while the log compacts all the time (`wal_max_bytes` = 64 KiB, the least: a
/// snapshot every hundred messages or so, written by the snapshot thread beside the
/// commits): after every
/// restart the offline persistent subscriber's queue still holds every acknowledged
/// message, in order. The kills land anywhere: during a snapshot's write, between its
/// rename and the removal of the segments it replaces, during a commit into the segment
/// the log moved on to.
#[test]
fn sigkill_while_compacting_loses_nothing_acknowledged() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let log = Arc::new(Mutex::new(Vec::new()));
    let launch = || {
        Launch::new(&data_dir)
            .args(["--log-level", "info"])
            .env("CUTIE_PERSISTENCE__WAL_MAX_BYTES", "65536")
            .env("CUTIE_LIMITS__MAX_QUEUED_MESSAGES", "1000000")
            .log_into(&log)
    };
    let mut broker = launch().start();
    {
        let (mut sub, _) = Client::connect(broker.addr, "kill-sub", false);
        sub.subscribe("k/#", QoS::AtLeastOnce);
    }
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut next = 0u64;
    for run_ms in [150u64, 320, 90, 410, 230, 270, 180, 350] {
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = {
            let (addr, acked, stop) = (broker.addr, acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut publisher, _) = Client::connect(addr, "kill-pub", true);
                let mut seq = next;
                while !stop.load(Ordering::Relaxed) {
                    let mut payload = format!("{seq:08}").into_bytes();
                    payload.resize(2048, b'.');
                    if !publisher.publish_qos1("k/x", payload, (seq % 65_535 + 1) as u16) {
                        break; // killed
                    }
                    acked.lock().unwrap().push(seq);
                    seq += 1;
                }
                seq + 1 // the one that may have been sent but not acknowledged
            })
        };
        std::thread::sleep(Duration::from_millis(run_ms));
        broker.kill();
        stop.store(true, Ordering::Relaxed);
        next = publisher.join().unwrap();
        broker = launch().start();
    }
    let compacted = log
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains("compacted"))
        .count();
    assert!(
        compacted >= 3,
        "only {compacted} compactions: the test did not test them"
    );

    // A last acknowledged message marks the end of the queue.
    let (mut publisher, _) = Client::connect(broker.addr, "kill-pub", true);
    assert!(publisher.publish_qos1("k/x", b"end".to_vec(), 1));
    let (mut sub, present) = Client::connect(broker.addr, "kill-sub", false);
    assert!(present, "the persistent session was lost");
    let mut received = Vec::new();
    loop {
        let payload = sub.receive(1).remove(0);
        if payload == b"end" {
            break;
        }
        let seq: u64 = std::str::from_utf8(&payload[..8]).unwrap().parse().unwrap();
        received.push(seq);
    }
    let acked = acked.lock().unwrap();
    eprintln!(
        "{} acknowledged, {} received, {compacted} compactions over 8 kills",
        acked.len(),
        received.len()
    );
    let mut missing = acked
        .iter()
        .filter(|seq| !received.contains(seq))
        .peekable();
    assert!(
        missing.peek().is_none(),
        "acknowledged and lost: {:?} (of {} acknowledged, {} received)",
        missing.collect::<Vec<_>>(),
        acked.len(),
        received.len()
    );
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "the queue is out of order"
    );
    broker.stop();
}
