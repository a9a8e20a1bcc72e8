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

/// `limits.persistent_client_expiration`: a persistent session whose client stays away
/// longer is removed from memory and from the log (it stays gone after a restart); one
/// whose client is connected is kept.
#[test]
fn an_expired_persistent_session_is_gone_from_the_log_too() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let broker = Launch::new(&data_dir)
        .shards(2)
        .env("CUTIE_LIMITS__PERSISTENT_CLIENT_EXPIRATION", "1s")
        .start();
    let (mut kept, _) = Client::connect(broker.addr, "exp-kept", false);
    kept.subscribe("exp/#", QoS::AtLeastOnce);
    {
        let (mut gone, _) = Client::connect(broker.addr, "exp-gone", false);
        gone.subscribe("exp/#", QoS::AtLeastOnce);
    }
    let (mut publisher, _) = Client::connect(broker.addr, "exp-pub", true);
    assert!(publisher.publish_qos1("exp/x", b"queued".to_vec(), 1));
    assert_eq!(kept.receive(1), vec![b"queued".to_vec()]);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !broker.logged("persistent session expired") {
        assert!(
            std::time::Instant::now() < deadline,
            "no session expired within 20 s; log:\n{}",
            broker.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(broker.logged_count("persistent session expired"), 1);
    assert!(
        broker.log_text().contains("exp-gone"),
        "{}",
        broker.log_text()
    );
    drop(kept);
    broker.stop();

    // Restarted without the limit: what the log holds is what comes back.
    let broker = Launch::new(&data_dir).shards(2).start();
    let (_gone, present) = Client::connect(broker.addr, "exp-gone", false);
    assert!(!present, "the expired session was dropped from the log");
    let (_kept, present) = Client::connect(broker.addr, "exp-kept", false);
    assert!(present, "the connected client's session was kept");
    broker.stop();
}
