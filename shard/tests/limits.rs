//! Per-connection limits enforced by the shard core, with a virtual clock.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::connect;
use common::output;
use cutie_codec::{Packet, Publish, PublishQos, QoS, TopicName};
use cutie_shard::{ConnId, Limits, ShardCore, ShardId};

#[test]
fn a_connection_over_its_publish_rate_waits_and_loses_nothing() {
    let mut core = ShardCore::new(
        ShardId(0),
        1,
        Limits {
            publish_rate_max: 2,
            ..Limits::default()
        },
    );
    connect(&mut core, 1, "fast", true);
    let mut buf = BytesMut::new();
    for i in 0..5u8 {
        Packet::Publish(Publish {
            dup: false,
            qos: PublishQos::AtMostOnce,
            retain: false,
            topic: TopicName::new("t").unwrap(),
            payload: Bytes::from(vec![i]),
        })
        .encode(&mut buf);
    }
    let received = |core: &ShardCore| core.stats.publish_received_total[0];
    core.handle_bytes(ConnId(1), &mut buf, 0);
    assert_eq!(
        received(&core),
        2,
        "a burst of `rate` messages goes through"
    );
    let until = core.throttled_until(ConnId(1)).expect("then it waits");
    assert_eq!(until, 500, "for the next token: 1/rate seconds");
    assert!(
        !buf.is_empty(),
        "the rest stays buffered, nothing is dropped"
    );
    core.handle_bytes(ConnId(1), &mut buf, 499);
    assert_eq!(received(&core), 2);
    core.handle_bytes(ConnId(1), &mut buf, 500);
    assert_eq!(received(&core), 3);
    core.handle_bytes(ConnId(1), &mut buf, 1500);
    assert_eq!(received(&core), 5, "two more tokens after another second");
    assert!(buf.is_empty());
    assert_eq!(core.throttled_until(ConnId(1)), None);
    assert_eq!(core.stats.publish_throttled_total, 2);
}

#[test]
fn a_client_that_does_not_read_its_answers_stops_being_read() {
    let mut core = ShardCore::new(
        ShardId(0),
        1,
        Limits {
            outbound_buffer_bytes_max: 64,
            ..Limits::default()
        },
    );
    connect(&mut core, 1, "deaf", true);
    let mut out = BytesMut::new();
    core.take_output(ConnId(1), &mut out);
    // 100 PINGREQs at once, answers never taken: 32 PINGRESPs fill 64 bytes.
    let mut buf = BytesMut::new();
    for _ in 0..100 {
        Packet::PingReq.encode(&mut buf);
    }
    core.handle_bytes(ConnId(1), &mut buf, 0);
    assert!(core.input_paused(ConnId(1)), "input pauses at the bound");
    assert_eq!(
        buf.len(),
        2 * (100 - 32),
        "the rest waits in the read buffer"
    );
    assert_eq!(core.stats.input_paused_total, 1);
    // Handing the same bytes again changes nothing while the output waits.
    core.handle_bytes(ConnId(1), &mut buf, 1);
    assert_eq!(buf.len(), 2 * (100 - 32));
    // The writer takes the output: decoding goes on.
    out.clear();
    core.take_output(ConnId(1), &mut out);
    assert_eq!(out.len(), 64);
    assert!(!core.input_paused(ConnId(1)));
    core.handle_bytes(ConnId(1), &mut buf, 2);
    assert_eq!(buf.len(), 2 * (100 - 64));
    assert_eq!(core.stats.input_paused_total, 2);
}

fn retained(topic: &str, payload: &[u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: PublishQos::AtMostOnce,
        retain: true,
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::copy_from_slice(payload),
    })
}

#[test]
fn retained_topics_beyond_the_limits_are_refused_and_replacements_allowed() {
    let mut core = ShardCore::new(
        ShardId(0),
        1,
        Limits {
            retained_messages_max: 3,
            retained_bytes_max: 40,
            ..Limits::default()
        },
    );
    connect(&mut core, 1, "p", true);
    // The broker's own `$SYS/` topics (published on a timer, maybe mid-flood) take no
    // place of a client's.
    core.publish_internal(
        cutie_shard::Message {
            topic: TopicName::new("$SYS/broker/uptime").unwrap(),
            payload: Bytes::from_static(b"1 seconds"),
            qos: QoS::AtMostOnce,
            retain: true,
            received_at: None,
        },
        0,
    );
    for i in 1..=5 {
        common::send(&mut core, 1, retained(&format!("a/{i}"), b"12345"));
    }
    assert_eq!(
        core.retained_count(),
        4,
        "three topics are kept, and $SYS's"
    );
    assert_eq!(core.stats.retained_refused_total, 2);
    // Replacing a stored topic is allowed at the message limit.
    common::send(&mut core, 1, retained("a/1", b"abcde"));
    assert_eq!(core.retained_count(), 4);
    assert_eq!(core.stats.retained_refused_total, 2);
    // Clearing one makes room for a new topic.
    common::send(&mut core, 1, retained("a/2", b""));
    assert_eq!(core.retained_count(), 3);
    common::send(&mut core, 1, retained("a/4", b"12345"));
    assert_eq!(core.retained_count(), 4);
    assert_eq!(core.retained_bytes(), 3 * (3 + 5));
    // The byte limit: growing a stored topic past 40 bytes is refused, shrinking is not.
    common::send(&mut core, 1, retained("a/1", &[b'x'; 30]));
    assert_eq!(core.stats.retained_refused_total, 3);
    assert_eq!(core.retained_bytes(), 24, "the old value stays");
    common::send(&mut core, 1, retained("a/1", b"x"));
    assert_eq!(core.retained_bytes(), 4 + 2 * 8);
    // A refused retained publish is still delivered to subscribers.
    connect(&mut core, 2, "s", true);
    common::send(
        &mut core,
        2,
        common::subscribe_packet(&[("b/#", QoS::AtMostOnce)]),
    );
    output(&mut core, 2);
    common::send(&mut core, 1, retained("b/new", b"hello"));
    assert_eq!(core.stats.retained_refused_total, 4);
    let delivered = output(&mut core, 2);
    assert!(
        matches!(&delivered[..], [Packet::Publish(p)] if &p.payload[..] == b"hello" && !p.retain),
        "{delivered:?}"
    );
}

#[test]
fn persistent_sessions_expire_after_their_client_stays_away() {
    let mut core = ShardCore::new(
        ShardId(0),
        1,
        Limits {
            persistent_session_expiry_ms: 1000,
            ..Limits::default()
        },
    )
    .with_durability(cutie_shard::Durability::Batch);
    connect(&mut core, 1, "gone", false);
    connect(&mut core, 2, "back", false);
    connect(&mut core, 3, "clean", true);
    core.connection_lost(ConnId(1), 0);
    core.connection_lost(ConnId(2), 0);
    // "back" returns before its expiry and leaves again later.
    assert!(core.connect(ConnId(4), common::connect_packet("back", false), 500));
    core.connection_lost(ConnId(4), 600);
    core.tick(999);
    assert_eq!(core.session_count(), 2 + 1, "nothing expired yet");
    core.tick(1000);
    assert!(core.session("gone").is_none(), "offline for its expiry");
    assert!(core.session("back").is_some(), "its clock restarted at 600");
    assert!(
        core.session("clean").is_some(),
        "online sessions never expire"
    );
    assert_eq!(core.stats.sessions_expired_total, 1);
    core.tick(1600);
    assert!(core.session("back").is_none());
    assert_eq!(core.stats.sessions_expired_total, 2);
    // Removed from the log too.
    let mut records = Vec::new();
    core.take_records(&mut records);
    let dropped: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            cutie_persistence::Record::SessionDrop { client_id } => Some(client_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(dropped, ["gone", "back"]);
}

/// With durability `batch` nothing waits for the log, so only this bound keeps a fast
/// publisher from piling up records faster than the disk takes them: at
/// `log_pending_records_max` the core says so and the runtime stops reading.
#[test]
fn records_waiting_for_the_log_writer_are_bounded() {
    let mut core = ShardCore::new(
        ShardId(0),
        1,
        Limits {
            log_pending_records_max: 16,
            ..Limits::default()
        },
    )
    .with_durability(cutie_shard::Durability::Batch);
    connect(&mut core, 1, "offline-sub", false);
    common::send(
        &mut core,
        1,
        common::subscribe_packet(&[("t", QoS::AtLeastOnce)]),
    );
    core.connection_lost(ConnId(1), 0);
    let mut taken = Vec::new();
    core.take_records(&mut taken);
    connect(&mut core, 2, "pub", true);
    let mut published = 0u16;
    while !core.log_backlogged() {
        published += 1;
        assert!(published < 100, "the backlog never reached its bound");
        common::send(
            &mut core,
            2,
            Packet::Publish(Publish {
                dup: false,
                qos: PublishQos::AtLeastOnce(common::id(published)),
                retain: false,
                topic: TopicName::new("t").unwrap(),
                payload: Bytes::from_static(b"x"),
            }),
        );
    }
    assert_eq!(published, 16, "one MessageQueued record per message");
    core.take_records(&mut taken);
    assert!(!core.log_backlogged(), "the writer took them: room again");
}
