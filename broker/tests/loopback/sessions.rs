//! Persistent sessions (clean session 0) and their bounds.

use crate::broker::Broker;
use crate::clients::{options, payload_string, MosquittoSub, Mqtt};
use crate::raw::{self, Connect, RawClient, PINGREQ, PUBLISH};
use rumqttc::QoS;
use std::collections::BTreeMap;

/// [MQTT-3.1.2-5]: QoS 1 and 2 messages published while a clean-session-0 client is
/// away are delivered when it comes back, with session present 1 [MQTT-3.2.2-2]; its
/// subscriptions survived. rumqttc and mosquitto_sub (`-c`).
fn persistent_session_gets_messages_published_while_offline(shards: u16) {
    let broker = Broker::start(shards);
    let addr = broker.addr();
    let mut persistent = options(addr, "persistent");
    persistent.set_clean_session(false);
    let mut sub = Mqtt::connect_with(persistent.clone());
    assert!(!sub.session_present);
    sub.subscribe("persist/r/#", 2);
    sub.disconnect();
    let mut mosquitto = MosquittoSub::start(
        addr,
        &[
            "-c",
            "-i",
            "persistent-mosquitto",
            "-q",
            "2",
            "-t",
            "persist/m/#",
            "-E",
        ],
    );
    assert!(mosquitto.wait_exit().success());

    let mut publisher = Mqtt::connect(addr, "persist-pub");
    for n in 0..5 {
        publisher.publish("persist/r/x", 1, false, format!("q1-{n}"));
        publisher.publish("persist/r/x", 2, false, format!("q2-{n}"));
        publisher.publish("persist/m/x", 1, false, format!("q1-{n}"));
        publisher.publish("persist/m/x", 2, false, format!("q2-{n}"));
    }
    publisher.wait_completed(20);
    publisher.fence();

    let mut sub = Mqtt::connect_with(persistent);
    assert!(sub.session_present);
    let mut got: BTreeMap<String, (QoS, usize)> = BTreeMap::new();
    for _ in 0..10 {
        let publish = sub.recv();
        let entry = got
            .entry(payload_string(&publish))
            .or_insert((publish.qos, 0));
        entry.1 += 1;
    }
    let expected: BTreeMap<String, (QoS, usize)> = (0..5)
        .flat_map(|n| {
            [
                (format!("q1-{n}"), (QoS::AtLeastOnce, 1)),
                (format!("q2-{n}"), (QoS::ExactlyOnce, 1)),
            ]
        })
        .collect();
    assert_eq!(got, expected);

    let mut mosquitto = MosquittoSub::start(
        addr,
        &[
            "-c",
            "-i",
            "persistent-mosquitto",
            "-q",
            "2",
            "-t",
            "persist/m/#",
            "-C",
            "10",
        ],
    );
    let mut got: Vec<String> = (0..10).map(|_| mosquitto.recv().payload).collect();
    got.sort();
    let mut expected: Vec<String> = expected.into_keys().collect();
    expected.sort();
    assert_eq!(got, expected);
}

/// [MQTT-3.1.2-6]: reconnecting with clean session 1 discards the stored session:
/// session present 0, no subscriptions, no queued messages; and a clean session ends
/// with its connection, so the next clean-session-0 connect finds nothing either.
fn clean_session_reconnect_discards_the_stored_session(shards: u16) {
    let broker = Broker::start(shards);
    let addr = broker.addr();
    let mut persistent = options(addr, "forgetful");
    persistent.set_clean_session(false);
    let mut sub = Mqtt::connect_with(persistent.clone());
    sub.subscribe("forget/#", 1);
    sub.disconnect();

    let mut publisher = Mqtt::connect(addr, "forget-pub");
    for n in 0..3 {
        publisher.publish("forget/x", 1, false, format!("old-{n}"));
    }
    publisher.wait_completed(3);
    publisher.fence();

    let mut sub = Mqtt::connect(addr, "forgetful");
    assert!(!sub.session_present);
    // No subscription survived: a marker on the old filter is not delivered ...
    sub.subscribe("forget/marker", 1);
    publisher.publish("forget/x", 1, false, "not subscribed");
    publisher.publish("forget/marker", 1, false, "marker");
    // ... and none of the old messages come before it.
    assert_eq!(payload_string(&sub.recv()), "marker");
    sub.disconnect();

    let sub = Mqtt::connect_with(persistent);
    assert!(
        !sub.session_present,
        "the clean session ended with its connection"
    );
}

/// The limits of the bound tests: `max_inflight` 5, `max_queued_messages` 10.
const INFLIGHT: usize = 5;
const QUEUED: usize = 10;

fn bounded_broker(shards: u16) -> Broker {
    Broker::start_with(
        shards,
        &[
            ("CUTIE_LIMITS__MAX_INFLIGHT", "5"),
            ("CUTIE_LIMITS__MAX_QUEUED_MESSAGES", "10"),
        ],
    )
}

/// Publishes 100 numbered QoS 1 messages to `bound/x` and waits until every shard has
/// routed them.
fn publish_100(publisher: &mut Mqtt) {
    for n in 0..100 {
        publisher.publish("bound/x", 1, false, n.to_string());
    }
    publisher.wait_completed(100);
    publisher.fence();
}

/// Acknowledges and collects the numbered messages `sub` holds: after the first
/// `QUEUED` (which every bound keeps) a PINGREQ, whose PINGRESP says the broker has
/// handled those PUBACKs, so its queue has room; then a marker from `publisher`, which
/// comes after everything held.
fn drain_until_marker(sub: &mut RawClient, publisher: &mut Mqtt) -> Vec<usize> {
    let mut got: Vec<usize> = Vec::new();
    let mut pinged = false;
    loop {
        let packet = sub.recv();
        if packet.packet_type() != PUBLISH {
            assert_eq!(packet.packet_type(), raw::PINGRESP);
            publisher.publish("bound/x", 1, false, "marker");
            continue;
        }
        let publish = packet.publish();
        sub.send(&raw::puback(publish.packet_id));
        let payload = String::from_utf8(publish.payload).expect("UTF-8");
        if payload == "marker" {
            return got;
        }
        got.push(payload.parse().expect("sequence number"));
        if got.len() >= QUEUED && !pinged {
            sub.send(&PINGREQ);
            pinged = true;
        }
    }
}

/// Checks that `got` is the first N messages, in order, with N in
/// `QUEUED..=INFLIGHT + QUEUED`.
fn assert_oldest_kept(what: &str, got: &[usize]) {
    println!(
        "{what} with inflight {INFLIGHT}, queue {QUEUED}: kept {} of 100",
        got.len()
    );
    assert!(
        (QUEUED..=INFLIGHT + QUEUED).contains(&got.len()),
        "{what}: kept {} messages: {got:?}",
        got.len()
    );
    let expected: Vec<usize> = (0..got.len()).collect();
    assert_eq!(
        got, expected,
        "{what}: the oldest are kept, in order; the newest dropped"
    );
}

/// With `max_inflight` 5 and `max_queued_messages` 10, an offline persistent session
/// keeps at most inflight + queued = 15 of 100 QoS 1 messages. Drop rule: when the
/// queue is full, the broker drops the NEW message (and counts it), so what the client
/// gets on reconnect is the first N messages in order, 10 <= N <= 15 (an offline
/// session has nothing in flight, so cutie keeps exactly 10).
fn offline_session_keeps_at_most_inflight_plus_queued_messages(shards: u16) {
    let broker = bounded_broker(shards);
    let connect = Connect::new("bounded").clean_session(false);
    let (mut sub, _) = RawClient::connect(broker.addr(), &connect);
    sub.send(&raw::subscribe(1, &[("bound/#", 1)]));
    assert_eq!(sub.recv().suback(), (1, vec![1]));
    sub.send(&raw::DISCONNECT);
    assert_eq!(sub.expect_closed(), vec![]);

    let mut publisher = Mqtt::connect(broker.addr(), "bound-pub");
    publish_100(&mut publisher);

    let (mut sub, session_present) = RawClient::connect(broker.addr(), &connect);
    assert!(session_present);
    let got = drain_until_marker(&mut sub, &mut publisher);
    assert_oldest_kept("offline session", &got);
}

/// The same bound for a connected subscriber that never acknowledges: 5 messages in
/// flight, 10 queued, the rest dropped (newest first). Publishers are paced to a live
/// subscriber, but not for longer than `stall_ms` without an acknowledgement, so the
/// 100 publishes complete.
fn stalled_online_session_keeps_at_most_inflight_plus_queued_messages(shards: u16) {
    let broker = bounded_broker(shards);
    let (mut sub, _) = RawClient::connect(broker.addr(), &Connect::new("stalled"));
    sub.send(&raw::subscribe(1, &[("bound/#", 1)]));
    assert_eq!(sub.recv().suback(), (1, vec![1]));

    let mut publisher = Mqtt::connect(broker.addr(), "stalled-pub");
    publish_100(&mut publisher);
    let got = drain_until_marker(&mut sub, &mut publisher);
    assert_eq!(
        got.len(),
        INFLIGHT + QUEUED,
        "a live session fills its window too"
    );
    assert_oldest_kept("stalled online session", &got);
}

shard_tests!(
    persistent_session_gets_messages_published_while_offline,
    clean_session_reconnect_discards_the_stored_session,
    offline_session_keeps_at_most_inflight_plus_queued_messages,
    stalled_online_session_keeps_at_most_inflight_plus_queued_messages,
);
