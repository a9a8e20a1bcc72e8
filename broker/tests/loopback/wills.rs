//! Wills [MQTT-3.1.2-8]: published, with their QoS and retain flag, when a connection
//! ends without DISCONNECT (keep-alive expiry, socket closed, malformed packet,
//! takeover), and discarded on DISCONNECT [MQTT-3.1.2-10].

use crate::broker::{wait_until, Broker};
use crate::clients::{options, payload_string, MosquittoSub, Mqtt};
use crate::raw::{self, Connect, RawClient, RawPublish, Will};
use rumqttc::{LastWill, QoS};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

/// A subscriber to `will/#` at QoS 2, so every will arrives at the QoS it was set with.
fn watcher(broker: &Broker) -> Mqtt {
    let mut watcher = Mqtt::connect(broker.addr(), "will-watcher");
    watcher.subscribe("will/#", 2);
    watcher
}

/// Checks the watcher's next message: the will, at its QoS, with retain 0 (delivered
/// to an existing subscription [MQTT-3.3.1-9]).
fn expect_will(watcher: &mut Mqtt, topic: &str, payload: &str, qos: QoS) {
    let will = watcher.recv();
    assert_eq!(
        (
            will.topic.as_str(),
            payload_string(&will).as_str(),
            will.qos,
            will.retain
        ),
        (topic, payload, qos, false)
    );
}

/// The retained message on `topic`, as a new subscriber gets it. A will's retained copy
/// reaches other shards without an acknowledgement the test could wait for, so this
/// asks again, each time with a fresh client, until one gets it.
fn wait_for_retained(addr: SocketAddr, topic: &str) -> RawPublish {
    static CHECKER: AtomicU32 = AtomicU32::new(0);
    let mut found = None;
    wait_until(&format!("a retained message on {topic}"), || {
        let id = format!(
            "retained-checker-{}",
            CHECKER.fetch_add(1, Ordering::Relaxed)
        );
        let mut retained = raw::retained_on_subscribe(addr, &id, &[(topic, 2)]);
        assert!(
            retained.len() <= 1,
            "one retained message per topic: {retained:?}"
        );
        found = retained.pop();
        found.is_some()
    });
    found.expect("wait_until returned once found")
}

/// Keep-alive expiry publishes the will (QoS 1, retained).
fn will_is_published_when_keep_alive_expires(shards: u16) {
    let broker = Broker::start(shards);
    let mut watcher = watcher(&broker);
    let will = Will {
        topic: "will/keep-alive",
        payload: b"expired",
        qos: 1,
        retain: true,
    };
    let (mut silent, _) = RawClient::connect(
        broker.addr(),
        &Connect::new("will-silent").keep_alive_secs(1).will(will),
    );
    expect_will(&mut watcher, "will/keep-alive", "expired", QoS::AtLeastOnce);
    assert_eq!(silent.expect_closed(), vec![]);
    let retained = wait_for_retained(broker.addr(), "will/keep-alive");
    assert_eq!(
        (retained.payload.as_slice(), retained.qos, retained.retain),
        (b"expired".as_slice(), 1, true)
    );
}

/// A socket closed without DISCONNECT publishes the will (QoS 2): a raw client that
/// closes its socket, and mosquitto_sub killed with SIGKILL.
fn will_is_published_when_the_socket_closes_without_disconnect(shards: u16) {
    let broker = Broker::start(shards);
    let mut watcher = watcher(&broker);
    let will = Will {
        topic: "will/dropped",
        payload: b"gone",
        qos: 2,
        retain: false,
    };
    let (client, _) = RawClient::connect(broker.addr(), &Connect::new("will-drop").will(will));
    client.drop_connection();
    expect_will(&mut watcher, "will/dropped", "gone", QoS::ExactlyOnce);

    // mosquitto_sub killed with SIGKILL: the kernel closes its socket.
    let killed = MosquittoSub::start(
        broker.addr(),
        &[
            "-i",
            "will-killed",
            "-t",
            "will-killed/#",
            "--will-topic",
            "will/killed",
            "--will-payload",
            "killed",
            "--will-qos",
            "1",
        ],
    );
    drop(killed);
    expect_will(&mut watcher, "will/killed", "killed", QoS::AtLeastOnce);
}

/// A malformed packet (reserved packet type 0) closes the connection and publishes the
/// will (QoS 0).
fn will_is_published_on_a_malformed_packet(shards: u16) {
    let broker = Broker::start(shards);
    let mut watcher = watcher(&broker);
    let will = Will {
        topic: "will/malformed",
        payload: b"bad bytes",
        qos: 0,
        retain: false,
    };
    let (mut client, _) =
        RawClient::connect(broker.addr(), &Connect::new("will-malformed").will(will));
    client.send(&[0x00, 0x00]);
    assert_eq!(client.expect_closed(), vec![]);
    expect_will(&mut watcher, "will/malformed", "bad bytes", QoS::AtMostOnce);
}

/// A takeover closes the old connection without DISCONNECT: its will is published
/// (QoS 1, retained); the new connection's will is not.
fn will_is_published_on_takeover(shards: u16) {
    let broker = Broker::start(shards);
    let mut watcher = watcher(&broker);
    let old_will = Will {
        topic: "will/takeover",
        payload: b"taken over",
        qos: 1,
        retain: true,
    };
    let (mut old, _) =
        RawClient::connect(broker.addr(), &Connect::new("will-taker").will(old_will));
    let new_will = Will {
        topic: "will/takeover",
        payload: b"new connection's will",
        qos: 1,
        retain: false,
    };
    let (mut new, _) =
        RawClient::connect(broker.addr(), &Connect::new("will-taker").will(new_will));
    assert_eq!(old.expect_closed(), vec![]);
    expect_will(
        &mut watcher,
        "will/takeover",
        "taken over",
        QoS::AtLeastOnce,
    );
    let retained = wait_for_retained(broker.addr(), "will/takeover");
    assert_eq!(
        (retained.payload.as_slice(), retained.qos, retained.retain),
        (b"taken over".as_slice(), 1, true)
    );

    // The new connection leaves cleanly: nothing more. Same client id, so the marker
    // is routed by the same shard after anything the DISCONNECT could have caused.
    new.send(&raw::DISCONNECT);
    assert_eq!(new.expect_closed(), vec![]);
    let (mut again, _) = RawClient::connect(broker.addr(), &Connect::new("will-taker"));
    again.send(&raw::publish(
        "will/takeover",
        b"marker",
        1,
        1,
        false,
        false,
    ));
    expect_will(&mut watcher, "will/takeover", "marker", QoS::AtLeastOnce);
}

/// DISCONNECT discards the will. Checked with a marker published afterwards by the same
/// client id (so by the same shard, in order): the watcher's next message is the marker.
/// Raw bytes and rumqttc.
fn will_is_not_published_after_disconnect(shards: u16) {
    let broker = Broker::start(shards);
    let mut watcher = watcher(&broker);
    let will = Will {
        topic: "will/polite",
        payload: b"must not appear",
        qos: 1,
        retain: false,
    };
    let (mut polite, _) = RawClient::connect(broker.addr(), &Connect::new("polite").will(will));
    polite.send(&raw::DISCONNECT);
    assert_eq!(polite.expect_closed(), vec![]);
    let (mut again, _) = RawClient::connect(broker.addr(), &Connect::new("polite"));
    again.send(&raw::publish("will/polite", b"marker", 1, 1, false, false));
    expect_will(&mut watcher, "will/polite", "marker", QoS::AtLeastOnce);

    let mut options = options(broker.addr(), "polite-rumqttc");
    options.set_last_will(LastWill::new(
        "will/polite-rumqttc",
        "must not appear",
        QoS::AtLeastOnce,
        false,
    ));
    Mqtt::connect_with(options).disconnect();
    let mut again = Mqtt::connect(broker.addr(), "polite-rumqttc");
    again.publish("will/polite-rumqttc", 1, false, "marker");
    expect_will(
        &mut watcher,
        "will/polite-rumqttc",
        "marker",
        QoS::AtLeastOnce,
    );
}

shard_tests!(
    will_is_published_when_keep_alive_expires,
    will_is_published_when_the_socket_closes_without_disconnect,
    will_is_published_on_a_malformed_packet,
    will_is_published_on_takeover,
    will_is_not_published_after_disconnect,
);
