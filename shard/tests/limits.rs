//! Per-connection limits enforced by the shard core, with a virtual clock.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::connect;
use cutie_codec::{Packet, Publish, PublishQos, TopicName};
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
