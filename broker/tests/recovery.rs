//! Recovery of a damaged log with the real binary: damage in the middle of a segment
//! stops the start with a message naming the file and the way out, and changes nothing;
//! `--recover-skip-corrupt` starts, keeps the damaged file aside and what was readable.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Client, Launch};
use cutie_codec::QoS;

#[test]
fn a_corrupt_log_stops_the_start_until_the_operator_says_skip() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let broker = Launch::new(&data_dir).start();
    {
        let (mut sub, _) = Client::connect(broker.addr, "rec-sub", false);
        sub.subscribe("rec/#", QoS::AtLeastOnce);
    }
    let (mut publisher, _) = Client::connect(broker.addr, "rec-pub", true);
    for i in 0..50u16 {
        assert!(publisher.publish_qos1("rec/x", format!("m{i}").into_bytes(), i + 1));
    }
    broker.stop();

    // Flip one byte in the middle of the segment: valid records follow it, so it is
    // damage, not a torn tail.
    let shard_dir = data_dir.join("shard-0");
    let segment = std::fs::read_dir(&shard_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();

    let refused = Launch::new(&data_dir).output();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    let name = segment.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        stderr.contains(&name),
        "the message names the file: {stderr}"
    );
    assert!(
        stderr.contains("--recover-skip-corrupt"),
        "and the way out: {stderr}"
    );
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "nothing was changed"
    );

    // The operator accepts the loss: the broker starts, the damaged file is kept aside.
    let broker = Launch::new(&data_dir).arg("--recover-skip-corrupt").start();
    let kept: Vec<String> = std::fs::read_dir(&shard_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        kept.iter()
            .any(|f| f.starts_with(&name) && f.contains(".corrupt-")),
        "the damaged segment is kept aside: {kept:?}"
    );
    let (_sub, present) = Client::connect(broker.addr, "rec-sub", false);
    assert!(present, "the session recorded before the damage is back");
    broker.stop();
}
