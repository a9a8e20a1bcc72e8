//! Retained messages [MQTT-3.3.1-5..11]: one per topic, sent to new matching
//! subscriptions with the retain flag, replaced by newer, deleted by an empty payload,
//! the same on every shard.
//!
//! Retained messages are published at QoS 1 here: the broker acknowledges a retained
//! QoS 1 publish once every shard holds it, so after the PUBACK any new subscriber, on
//! any shard, must see it.

use crate::broker::Broker;
use crate::clients::{mosquitto_pub, payload_string, MosquittoSub, Mqtt};
use crate::raw::{retained_on_subscribe, RawPublish};

/// (topic, payload, QoS, retain) of each message, for comparisons.
fn summary(messages: &[RawPublish]) -> Vec<(String, String, u8, bool)> {
    let mut summary: Vec<_> = messages
        .iter()
        .map(|m| {
            let payload = String::from_utf8(m.payload.clone()).expect("UTF-8 payload");
            (m.topic.clone(), payload, m.qos, m.retain)
        })
        .collect();
    summary.sort();
    summary
}

fn one(topic: &str, payload: &str, qos: u8) -> Vec<(String, String, u8, bool)> {
    vec![(topic.to_owned(), payload.to_owned(), qos, true)]
}

/// A retained message goes to new subscriptions whose filter matches its topic, exact
/// or wildcard, with retain 1 [MQTT-3.3.1-8]; to subscriptions that existed when it was
/// published it goes with retain 0 [MQTT-3.3.1-9].
fn retained_message_is_sent_to_new_matching_subscriptions_with_the_retain_flag(shards: u16) {
    let broker = Broker::start(shards);
    let mut live = Mqtt::connect(broker.addr(), "retained-live");
    live.subscribe("ret/#", 1);
    mosquitto_pub(
        broker.addr(),
        &["-t", "ret/a/b", "-m", "hello", "-r", "-q", "1"],
    );
    let got = live.recv();
    assert_eq!(
        (payload_string(&got).as_str(), got.retain),
        ("hello", false)
    );

    let addr = broker.addr();
    for (i, filter) in ["ret/a/b", "ret/+/b", "ret/#", "+/+/+", "#"]
        .into_iter()
        .enumerate()
    {
        let got = retained_on_subscribe(addr, &format!("ret-new-{i}"), &[(filter, 1)]);
        assert_eq!(summary(&got), one("ret/a/b", "hello", 1), "filter {filter}");
    }
    for (i, filter) in ["ret/a", "ret/+", "ret/a/b/c", "other/#"]
        .into_iter()
        .enumerate()
    {
        let got = retained_on_subscribe(addr, &format!("ret-other-{i}"), &[(filter, 1)]);
        assert_eq!(summary(&got), vec![], "filter {filter}");
    }
    // Delivered at the lower of the message's and the subscription's QoS.
    let got = retained_on_subscribe(addr, "ret-qos-0", &[("ret/a/b", 0)]);
    assert_eq!(summary(&got), one("ret/a/b", "hello", 0));

    let mut rumqttc = Mqtt::connect(addr, "ret-rumqttc");
    rumqttc.subscribe("ret/+/b", 2);
    let got = rumqttc.recv();
    assert_eq!(
        (
            got.topic.as_str(),
            payload_string(&got).as_str(),
            got.retain
        ),
        ("ret/a/b", "hello", true)
    );
    let mut mosquitto = MosquittoSub::start(addr, &["-t", "ret/#", "-q", "1"]);
    let got = mosquitto.recv();
    assert_eq!(
        (got.topic.as_str(), got.payload.as_str(), got.retain),
        ("ret/a/b", "hello", true)
    );
}

/// One retained message per topic: a newer one replaces the older [MQTT-3.3.1-5].
/// Other topics keep theirs.
fn newer_retained_message_replaces_the_older(shards: u16) {
    let broker = Broker::start(shards);
    let addr = broker.addr();
    mosquitto_pub(addr, &["-t", "replace/a", "-m", "v1", "-r", "-q", "1"]);
    mosquitto_pub(addr, &["-t", "replace/b", "-m", "b", "-r", "-q", "1"]);
    mosquitto_pub(addr, &["-t", "replace/a", "-m", "v2", "-r", "-q", "1"]);
    for i in 0..4 {
        let got = retained_on_subscribe(addr, &format!("replace-{i}"), &[("replace/#", 1)]);
        let mut expected = one("replace/a", "v2", 1);
        expected.extend(one("replace/b", "b", 1));
        assert_eq!(summary(&got), expected);
    }
}

/// A retained publish with an empty payload deletes the topic's retained message
/// [MQTT-3.3.1-10]; subscribers that are there get the empty message as usual.
fn empty_retained_payload_deletes_the_retained_message(shards: u16) {
    let broker = Broker::start(shards);
    let addr = broker.addr();
    mosquitto_pub(addr, &["-t", "delete/a", "-m", "doomed", "-r", "-q", "1"]);
    mosquitto_pub(addr, &["-t", "delete/b", "-m", "stays", "-r", "-q", "1"]);
    let got = retained_on_subscribe(addr, "delete-before", &[("delete/#", 1)]);
    assert_eq!(summary(&got).len(), 2);

    let mut live = Mqtt::connect(addr, "delete-live");
    live.subscribe("delete/a", 1);
    assert_eq!(
        payload_string(&live.recv()),
        "doomed",
        "the retained message"
    );
    // `-n`: a zero-length payload.
    mosquitto_pub(addr, &["-t", "delete/a", "-n", "-r", "-q", "1"]);
    let got = live.recv();
    assert_eq!((got.payload.len(), got.retain), (0, false));

    for i in 0..4 {
        let got = retained_on_subscribe(addr, &format!("delete-after-{i}"), &[("delete/#", 1)]);
        assert_eq!(summary(&got), one("delete/b", "stays", 1));
    }
}

/// A retained message published through one shard is seen by new subscribers on every
/// shard: eight fresh client ids (spread over the shards by the hash of their id).
fn retained_message_is_visible_from_every_shard(shards: u16) {
    let broker = Broker::start(shards);
    let mut publisher = Mqtt::connect(broker.addr(), "everywhere-pub");
    publisher.publish("everywhere/x", 2, true, "seen by all");
    publisher.wait_completed(1);
    for i in 0..8 {
        let got = retained_on_subscribe(
            broker.addr(),
            &format!("everywhere-{i}"),
            &[("everywhere/#", 2)],
        );
        assert_eq!(
            summary(&got),
            one("everywhere/x", "seen by all", 2),
            "subscriber {i}"
        );
    }
}

shard_tests!(
    retained_message_is_sent_to_new_matching_subscriptions_with_the_retain_flag,
    newer_retained_message_replaces_the_older,
    empty_retained_payload_deletes_the_retained_message,
    retained_message_is_visible_from_every_shard,
);

shard_tests!(a_flood_of_retained_topics_stops_at_max_retained_messages);

/// 100,000 unique retained topics from a publisher that batches thousands per write:
/// the store keeps the first `max_retained_messages`, refuses the rest (still
/// delivering them), and a stored topic can still be replaced.
fn a_flood_of_retained_topics_stops_at_max_retained_messages(shards: u16) {
    use crate::raw::{self, Connect, RawClient};
    const KEPT: usize = 10_000;
    const FLOOD: usize = 100_000;
    let broker = Broker::start_with(
        shards,
        &[("CUTIE_LIMITS__MAX_RETAINED_MESSAGES", &KEPT.to_string())],
    );
    let addr = broker.addr();
    let baseline = broker.rss_bytes();
    let (mut publisher, _) = RawClient::connect(addr, &Connect::new("flooder"));
    let mut batch = Vec::new();
    for i in 0..FLOOD {
        batch.extend(raw::publish(
            &format!("flood/{i:06}"),
            b"0123456789",
            0,
            0,
            false,
            true,
        ));
        if batch.len() > 256 * 1024 {
            publisher.send(&batch);
            batch.clear();
        }
    }
    // Last, a QoS 1 replacement of a stored topic: allowed at the limit, and its PUBACK
    // comes once every shard holds it (and, the mesh being FIFO, everything before).
    batch.extend(raw::publish("flood/000000", b"replaced", 1, 1, false, true));
    publisher.send(&batch);
    assert_eq!(publisher.recv().packet_id(), 1, "PUBACK");
    let growth = broker.rss_bytes().saturating_sub(baseline);
    eprintln!(
        "{shards} shard(s): {FLOOD} retained topics offered, {KEPT} kept: broker RSS +{} KiB",
        growth >> 10
    );

    let mut sub = MosquittoSub::start(addr, &["-t", "flood/#", "-q", "0"]);
    let mut topics = Vec::with_capacity(KEPT);
    for _ in 0..KEPT {
        let message = sub.recv();
        assert!(message.retain, "only retained messages before the marker");
        if message.topic == "flood/000000" {
            assert_eq!(message.payload, "replaced");
        }
        topics.push(message.topic);
    }
    topics.sort();
    let expected: Vec<String> = (0..KEPT).map(|i| format!("flood/{i:06}")).collect();
    assert_eq!(
        topics, expected,
        "the first {KEPT} topics are the ones kept"
    );
    // Nothing more is retained: the next message is a live marker.
    mosquitto_pub(addr, &["-t", "flood/marker", "-m", "end"]);
    let next = sub.recv();
    assert_eq!((next.topic.as_str(), next.retain), ("flood/marker", false));
}
