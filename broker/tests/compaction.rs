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
