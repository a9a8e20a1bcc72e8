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
