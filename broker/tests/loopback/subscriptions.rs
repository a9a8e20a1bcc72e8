//! Subscriptions: wildcards, `$` topics, SUBACK, UNSUBSCRIBE, overlaps, re-subscribing.

use crate::broker::Broker;
use crate::clients::{mosquitto_pub, payload_string, MosquittoSub, Mqtt};
use crate::raw::{self, Connect, RawClient};
use rumqttc::{QoS, SubscribeReasonCode};

/// Publishes `topics` in order from one client, then `marker`; returns the topics the
/// subscriber `sub` receives up to and including the marker.
fn delivered_topics(
    publisher: &mut Mqtt,
    sub: &mut Mqtt,
    topics: &[&str],
    marker: &str,
) -> Vec<String> {
    for topic in topics {
        publisher.publish(topic, 1, false, *topic);
    }
    publisher.publish(marker, 1, false, "marker");
    let mut got = Vec::new();
    loop {
        let publish = sub.recv();
        got.push(publish.topic.clone());
        if publish.topic == marker {
            return got;
        }
    }
}

/// `+` matches exactly one level, an empty one included [MQTT-4.7.1-3].
fn plus_matches_exactly_one_level(shards: u16) {
    let broker = Broker::start(shards);
    let mut sub = Mqtt::connect(broker.addr(), "plus-sub");
    sub.subscribe("plus/+/c", 1);
    let mut mosquitto = MosquittoSub::start(broker.addr(), &["-t", "plus/+/c", "-q", "1"]);
    let mut publisher = Mqtt::connect(broker.addr(), "plus-pub");
    let got = delivered_topics(
        &mut publisher,
        &mut sub,
        &[
            "plus/b/c",
            "plus/b/x/c",
            "plus/c",
            "plus//c",
            "plus/b/c/d",
            "plusx/b/c",
        ],
        "plus/end/c",
    );
    assert_eq!(got, ["plus/b/c", "plus//c", "plus/end/c"]);
    let mosquitto_got: Vec<String> = (0..3).map(|_| mosquitto.recv().topic).collect();
    assert_eq!(mosquitto_got, ["plus/b/c", "plus//c", "plus/end/c"]);
}

/// `#` matches its parent level and every level below [MQTT-4.7.1-2].
fn hash_matches_the_parent_and_every_descendant(shards: u16) {
    let broker = Broker::start(shards);
    let mut sub = Mqtt::connect(broker.addr(), "hash-sub");
    sub.subscribe("hash/#", 1);
    let mut publisher = Mqtt::connect(broker.addr(), "hash-pub");
    let got = delivered_topics(
        &mut publisher,
        &mut sub,
        &[
            "hash",
            "hash/a",
            "hashx",
            "other/hash",
            "hash/a/b/c",
            "/hash",
        ],
        "hash/end",
    );
    assert_eq!(got, ["hash", "hash/a", "hash/a/b/c", "hash/end"]);
}

/// [MQTT-4.7.2-1]: filters starting with a wildcard do not match topics starting with
/// `$`; `$test/#` does.
fn dollar_topics_are_not_matched_by_leading_wildcards(shards: u16) {
    let broker = Broker::start(shards);
    let mut all = Mqtt::connect(broker.addr(), "dollar-all");
    all.subscribe("#", 1);
    let mut plus = Mqtt::connect(broker.addr(), "dollar-plus");
    plus.subscribe("+/x", 1);
    let mut dollar = MosquittoSub::start(broker.addr(), &["-t", "$test/#", "-q", "1"]);
    let mut publisher = Mqtt::connect(broker.addr(), "dollar-pub");
    publisher.publish("$test/x", 1, false, "dollar");
    publisher.publish("m/x", 1, false, "marker");
    for sub in [&mut all, &mut plus] {
        let first = sub.recv();
        assert_eq!(
            (first.topic.as_str(), payload_string(&first).as_str()),
            ("m/x", "marker"),
            "{} must not see $test/x",
            sub.client_id
        );
    }
    let got = dollar.recv();
    assert_eq!(
        (got.topic.as_str(), got.payload.as_str()),
        ("$test/x", "dollar")
    );

    // From mosquitto_pub as well.
    mosquitto_pub(
        broker.addr(),
        &["-t", "$test/y", "-m", "dollar too", "-q", "1"],
    );
    assert_eq!(dollar.recv().topic, "$test/y");
}

/// [MQTT-3.8.4-5]: SUBACK has one return code per filter, the QoS granted; cutie grants
/// what was asked, QoS 2 included.
fn suback_grants_the_requested_qos(shards: u16) {
    let broker = Broker::start(shards);
    let (mut client, _) = RawClient::connect(broker.addr(), &Connect::new("granted"));
    client.send(&raw::subscribe(10, &[("g/two", 2)]));
    assert_eq!(client.recv().suback(), (10, vec![2]));
    client.send(&raw::subscribe(11, &[("g/0", 0), ("g/1", 1), ("g/2", 2)]));
    assert_eq!(client.recv().suback(), (11, vec![0, 1, 2]));

    let mut rumqttc = Mqtt::connect(broker.addr(), "granted-rumqttc");
    assert_eq!(
        rumqttc.subscribe_many(&[("g/a", 2), ("g/b", 0)]),
        [
            SubscribeReasonCode::Success(QoS::ExactlyOnce),
            SubscribeReasonCode::Success(QoS::AtMostOnce)
        ]
    );
    let mosquitto = MosquittoSub::start(broker.addr(), &["-t", "g/m", "-q", "2"]);
    assert_eq!(mosquitto.granted(), [2]);
}

/// UNSUBSCRIBE is answered with UNSUBACK (same packet id) and stops delivery on that
/// filter; the client's other subscriptions keep working.
fn unsubscribe_stops_delivery(shards: u16) {
    let broker = Broker::start(shards);
    let (mut raw_sub, _) = RawClient::connect(broker.addr(), &Connect::new("unsub-raw"));
    raw_sub.send(&raw::subscribe(1, &[("unsub/a", 0), ("unsub/marker", 0)]));
    assert_eq!(raw_sub.recv().suback(), (1, vec![0, 0]));
    let mut sub = Mqtt::connect(broker.addr(), "unsub-rumqttc");
    sub.subscribe_many(&[("unsub/a", 1), ("unsub/marker", 1)]);
    let mut publisher = Mqtt::connect(broker.addr(), "unsub-pub");

    publisher.publish("unsub/a", 1, false, "before");
    assert_eq!(payload_string(&sub.recv()), "before");
    assert_eq!(raw_sub.recv_publish().payload, b"before");

    sub.unsubscribe("unsub/a");
    raw_sub.send(&raw::unsubscribe(0x1234, &["unsub/a"]));
    let unsuback = raw_sub.recv();
    assert_eq!(
        (unsuback.packet_type(), unsuback.packet_id()),
        (raw::UNSUBACK, 0x1234)
    );

    // A filter that was never subscribed is acknowledged too [MQTT-3.10.4-5].
    raw_sub.send(&raw::unsubscribe(0x1235, &["unsub/never"]));
    assert_eq!(raw_sub.recv().packet_id(), 0x1235);

    publisher.publish("unsub/a", 1, false, "after");
    publisher.publish("unsub/marker", 1, false, "marker");
    assert_eq!(payload_string(&sub.recv()), "marker");
    assert_eq!(raw_sub.recv_publish().payload, b"marker");
}

/// [MQTT-3.3.5-1]: a client whose subscriptions `ov/#` (QoS 0), `ov/+` (QoS 1) and
/// `ov/b` (QoS 2) all match a topic gets the message once, at the highest QoS granted
/// among the matching ones.
fn overlapping_subscriptions_deliver_once_at_the_highest_qos(shards: u16) {
    let broker = Broker::start(shards);
    let mut sub = Mqtt::connect(broker.addr(), "overlap-sub");
    sub.subscribe("ov/#", 0);
    sub.subscribe("ov/+", 1);
    sub.subscribe("ov/b", 2);
    let mut publisher = Mqtt::connect(broker.addr(), "overlap-pub");
    // Matches: ov/b all three; ov/c ov/# and ov/+; ov/c/d only ov/#.
    for topic in ["ov/b", "ov/c", "ov/c/d"] {
        publisher.publish(topic, 2, false, topic);
    }
    publisher.publish("ov/end", 1, false, "marker");
    let mut got = Vec::new();
    loop {
        let publish = sub.recv();
        got.push((publish.topic.clone(), publish.qos as u8));
        if publish.topic == "ov/end" {
            break;
        }
    }
    // Deliveries at different QoS are not ordered among themselves; compare sorted.
    got.sort();
    assert_eq!(
        got,
        [
            ("ov/b".to_owned(), 2),
            ("ov/c".to_owned(), 1),
            ("ov/c/d".to_owned(), 0),
            ("ov/end".to_owned(), 1),
        ]
    );
}

/// [MQTT-3.8.4-3]: subscribing again with the same filter replaces the subscription:
/// the new QoS applies (down as well as up) and the retained messages are sent again.
fn resubscribing_replaces_the_qos_and_resends_retained_messages(shards: u16) {
    let broker = Broker::start(shards);
    let mut publisher = Mqtt::connect(broker.addr(), "resub-pub");
    publisher.publish("resub/kept", 2, true, "retained");
    publisher.wait_completed(1);

    let (mut sub, _) = RawClient::connect(broker.addr(), &Connect::new("resub-sub"));
    sub.send(&raw::subscribe(1, &[("resub/#", 2)]));
    assert_eq!(sub.recv().suback(), (1, vec![2]));
    let retained = sub.recv_publish();
    assert_eq!(
        (retained.topic.as_str(), retained.qos, retained.retain),
        ("resub/kept", 2, true)
    );
    sub.send(&raw::pubrec(retained.packet_id));
    let pubrel = sub.recv();
    assert_eq!(
        (pubrel.packet_type(), pubrel.packet_id()),
        (raw::PUBREL, retained.packet_id)
    );
    sub.send(&raw::pubcomp(retained.packet_id));

    sub.send(&raw::subscribe(2, &[("resub/#", 0)]));
    assert_eq!(sub.recv().suback(), (2, vec![0]));
    let again = sub.recv_publish();
    assert_eq!(
        (
            again.topic.as_str(),
            again.qos,
            again.retain,
            again.payload.as_slice()
        ),
        ("resub/kept", 0, true, b"retained".as_slice())
    );

    // Live messages now come at QoS 0, once (one subscription, not two).
    publisher.publish("resub/live", 2, false, "live");
    publisher.publish("resub/live", 2, false, "marker");
    let live = sub.recv_publish();
    assert_eq!(
        (live.payload.as_slice(), live.qos, live.retain),
        (b"live".as_slice(), 0, false)
    );
    assert_eq!(sub.recv_publish().payload, b"marker");
}

shard_tests!(
    plus_matches_exactly_one_level,
    hash_matches_the_parent_and_every_descendant,
    dollar_topics_are_not_matched_by_leading_wildcards,
    suback_grants_the_requested_qos,
    unsubscribe_stops_delivery,
    overlapping_subscriptions_deliver_once_at_the_highest_qos,
    resubscribing_replaces_the_qos_and_resends_retained_messages,
);
