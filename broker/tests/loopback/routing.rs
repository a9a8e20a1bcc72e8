//! Routing: with 4 shards, publishers and subscribers are owned by different shards;
//! every subscriber gets every matching message, each publisher's in order.

use crate::broker::Broker;
use crate::clients::{mosquitto_pub_stdin, MosquittoSub, Mqtt};
use std::collections::BTreeMap;
use std::thread;

/// Messages per publisher.
const MESSAGES: usize = 200;
/// rumqttc publishers; one more publishes with `mosquitto_pub -l`.
const RUMQTTC_PUBLISHERS: usize = 4;
/// rumqttc subscribers; one more subscribes with `mosquitto_sub`.
const RUMQTTC_SUBSCRIBERS: usize = 6;

/// Checks that `payloads` (`<publisher>:<n>`) hold, for every publisher, exactly
/// 0..MESSAGES in ascending order.
fn assert_complete_and_ordered(who: &str, payloads: &[String], publishers: &[String]) {
    let mut per_publisher: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for payload in payloads {
        let (publisher, n) = payload
            .rsplit_once(':')
            .expect("payload is <publisher>:<n>");
        per_publisher
            .entry(publisher)
            .or_default()
            .push(n.parse().expect("sequence number"));
    }
    let expected: Vec<usize> = (0..MESSAGES).collect();
    for publisher in publishers {
        let got = per_publisher
            .get(publisher.as_str())
            .cloned()
            .unwrap_or_default();
        assert_eq!(got, expected, "{who}: messages of {publisher}");
    }
    assert_eq!(
        per_publisher.len(),
        publishers.len(),
        "{who}: unknown publishers"
    );
}

/// Five publishers (four rumqttc, one mosquitto_pub) publish 200 numbered QoS 1
/// messages each, at the same time, to `route/<publisher>/n`; seven subscribers (six
/// rumqttc on `route/#` or `route/+/n`, one mosquitto_sub) with different client ids
/// each get all 1000, every publisher's in the order published [MQTT-4.6.0-6].
fn every_subscriber_gets_every_message_in_publisher_order(shards: u16) {
    let broker = Broker::start(shards);
    let total = MESSAGES * (RUMQTTC_PUBLISHERS + 1);
    let mut subscribers: Vec<Mqtt> = (0..RUMQTTC_SUBSCRIBERS)
        .map(|i| {
            let mut sub = Mqtt::connect(broker.addr(), &format!("route-sub-{i}"));
            sub.subscribe(if i % 2 == 0 { "route/#" } else { "route/+/n" }, 1);
            sub
        })
        .collect();
    let count = total.to_string();
    let mut mosquitto = MosquittoSub::start(
        broker.addr(),
        &[
            "-i",
            "route-mosquitto-sub",
            "-t",
            "route/#",
            "-q",
            "1",
            "-C",
            &count,
        ],
    );

    let mut publishers: Vec<String> = (0..RUMQTTC_PUBLISHERS)
        .map(|i| format!("route-pub-{i}"))
        .collect();
    publishers.push("route-mosquitto-pub".to_owned());
    let addr = broker.addr();
    thread::scope(|scope| {
        for name in &publishers[..RUMQTTC_PUBLISHERS] {
            scope.spawn(move || {
                let mut publisher = Mqtt::connect(addr, name);
                let topic = format!("route/{name}/n");
                for n in 0..MESSAGES {
                    publisher.publish(&topic, 1, false, format!("{name}:{n}"));
                }
                publisher.wait_completed(MESSAGES);
            });
        }
        scope.spawn(move || {
            let lines: String = (0..MESSAGES)
                .map(|n| format!("route-mosquitto-pub:{n}\n"))
                .collect();
            mosquitto_pub_stdin(
                addr,
                &[
                    "-i",
                    "route-mosquitto-pub",
                    "-t",
                    "route/route-mosquitto-pub/n",
                    "-q",
                    "1",
                    "-l",
                ],
                &lines,
            );
        });
    });

    for sub in &mut subscribers {
        let payloads = sub.recv_payloads(total);
        assert_complete_and_ordered(&sub.client_id, &payloads, &publishers);
    }
    let payloads: Vec<String> = (0..total).map(|_| mosquitto.recv().payload).collect();
    assert_complete_and_ordered("mosquitto_sub", &payloads, &publishers);
    assert!(mosquitto.wait_exit().success());
}

/// What the shard core promises: once a client has its SUBACK, everything
/// published afterwards, through any shard, reaches it. Twenty fresh filters, each
/// published to by another client right after the SUBACK.
fn message_published_right_after_suback_is_delivered(shards: u16) {
    let broker = Broker::start(shards);
    let mut publisher = Mqtt::connect(broker.addr(), "after-suback-pub");
    for i in 0..20 {
        let mut sub = Mqtt::connect(broker.addr(), &format!("after-suback-sub-{i}"));
        let topic = format!("after-suback/{i}");
        sub.subscribe(&topic, 1);
        publisher.publish(&topic, 1, false, "right after");
        let got = sub.recv();
        assert_eq!(
            (got.topic.as_str(), got.payload.as_ref()),
            (topic.as_str(), b"right after".as_slice())
        );
    }
}

shard_tests!(
    every_subscriber_gets_every_message_in_publisher_order,
    message_published_right_after_suback_is_delivered,
);
