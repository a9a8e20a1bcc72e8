//! QoS 0, 1 and 2 in both directions: acknowledgement flows, exactly-once, downgrade to
//! the granted QoS, DUP on re-delivery.

use crate::broker::Broker;
use crate::clients::{mosquitto_pub, mosquitto_pub_stdin, payload_string, MosquittoSub, Mqtt};
use crate::raw::{self, Connect, RawClient, PINGREQ, PINGRESP};
use rumqttc::QoS;
use std::collections::BTreeMap;

/// [MQTT-3.8.4-6]: a message is delivered at the lower of its published QoS and the
/// subscription's granted QoS. Subscribers at 0, 1 and 2 (rumqttc, and mosquitto_sub at
/// 2) each get one message published at each QoS.
fn each_delivery_gets_the_lower_of_published_and_granted_qos(shards: u16) {
    let broker = Broker::start(shards);
    let mut subscribers: Vec<(u8, Mqtt)> = (0..3u8)
        .map(|granted| {
            let mut sub = Mqtt::connect(broker.addr(), &format!("matrix-sub-{granted}"));
            sub.subscribe("matrix/#", granted);
            (granted, sub)
        })
        .collect();
    let mut mosquitto = MosquittoSub::start(broker.addr(), &["-t", "matrix/#", "-q", "2"]);
    let mut publisher = Mqtt::connect(broker.addr(), "matrix-pub");
    for published in 0..3u8 {
        publisher.publish(&format!("matrix/{published}"), published, false, "m");
    }
    for (granted, sub) in &mut subscribers {
        let got: BTreeMap<String, QoS> = (0..3)
            .map(|_| {
                let publish = sub.recv();
                (publish.topic.clone(), publish.qos)
            })
            .collect();
        let expected: BTreeMap<String, QoS> = (0..3u8)
            .map(|published| {
                let qos = crate::clients::qos(published.min(*granted));
                (format!("matrix/{published}"), qos)
            })
            .collect();
        assert_eq!(got, expected, "subscriber granted QoS {granted}");
    }
    let got: BTreeMap<String, u8> = (0..3)
        .map(|_| {
            let message = mosquitto.recv();
            (message.topic, message.qos)
        })
        .collect();
    let expected: BTreeMap<String, u8> = (0..3u8).map(|q| (format!("matrix/{q}"), q)).collect();
    assert_eq!(got, expected, "mosquitto_sub granted QoS 2");
}

/// QoS 2 subscribers get every message exactly once, QoS 1 subscribers at least once
/// (and in order); the publishers' PUBACK / PUBREC-PUBREL-PUBCOMP flows complete. 300
/// messages at QoS 2 from rumqttc and 300 at QoS 1 from mosquitto_pub.
fn qos_1_and_2_flows_deliver_every_message(shards: u16) {
    const MESSAGES: usize = 300;
    let broker = Broker::start(shards);
    let mut exactly_once = Mqtt::connect(broker.addr(), "flow-sub-2");
    exactly_once.subscribe("flow/#", 2);
    let mut at_least_once = Mqtt::connect(broker.addr(), "flow-sub-1");
    at_least_once.subscribe("flow/#", 1);

    let mut publisher = Mqtt::connect(broker.addr(), "flow-pub-rumqttc");
    for n in 0..MESSAGES {
        publisher.publish("flow/rumqttc", 2, false, format!("rumqttc:{n}"));
    }
    let lines: String = (0..MESSAGES).map(|n| format!("mosquitto:{n}\n")).collect();
    mosquitto_pub_stdin(
        broker.addr(),
        &[
            "-i",
            "flow-pub-mosquitto",
            "-t",
            "flow/mosquitto",
            "-q",
            "1",
            "-l",
        ],
        &lines,
    );
    publisher.wait_completed(MESSAGES);

    for (sub, exact) in [(&mut exactly_once, true), (&mut at_least_once, false)] {
        let mut per_publisher: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut distinct = 0;
        while distinct < 2 * MESSAGES {
            let publish = sub.recv();
            let payload = payload_string(&publish);
            let (who, n) = payload.split_once(':').expect("<publisher>:<n>");
            let n: usize = n.parse().expect("sequence number");
            let seen = per_publisher.entry(who.to_owned()).or_default();
            if seen.last() == Some(&n) && !exact {
                continue; // a duplicate is allowed at QoS 1
            }
            seen.push(n);
            distinct += 1;
        }
        let expected: Vec<usize> = (0..MESSAGES).collect();
        for who in ["rumqttc", "mosquitto"] {
            assert_eq!(
                per_publisher.get(who),
                Some(&expected),
                "{}: messages of {who}",
                sub.client_id
            );
        }
    }
}

/// [MQTT-4.3.3-2]: a QoS 2 PUBLISH re-sent with the same packet id (DUP 1) before
/// PUBREL is the same message: PUBREC again, one delivery. After PUBCOMP the id is free
/// and a new message with it is delivered.
fn resent_qos_2_publish_before_pubrel_is_delivered_once(shards: u16) {
    let broker = Broker::start(shards);
    let mut sub = Mqtt::connect(broker.addr(), "exactly-once-sub");
    sub.subscribe("once/#", 2);
    let (mut publisher, _) = RawClient::connect(broker.addr(), &Connect::new("exactly-once-pub"));

    // Re-sent after the PUBREC.
    publisher.send(&raw::publish("once/a", b"first", 2, 7, false, false));
    assert_eq!(publisher.recv().packet_id(), 7);
    publisher.send(&raw::publish("once/a", b"first", 2, 7, true, false));
    let pubrec = publisher.recv();
    assert_eq!((pubrec.packet_type(), pubrec.packet_id()), (raw::PUBREC, 7));
    publisher.send(&raw::pubrel(7));
    let pubcomp = publisher.recv();
    assert_eq!(
        (pubcomp.packet_type(), pubcomp.packet_id()),
        (raw::PUBCOMP, 7)
    );

    // Re-sent at once, in the same write, as a client that lost its connection's
    // output might.
    publisher.send(
        &[
            raw::publish("once/a", b"second", 2, 8, false, false),
            raw::publish("once/a", b"second", 2, 8, true, false),
        ]
        .concat(),
    );
    for _ in 0..2 {
        let pubrec = publisher.recv();
        assert_eq!((pubrec.packet_type(), pubrec.packet_id()), (raw::PUBREC, 8));
    }
    publisher.send(&raw::pubrel(8));
    assert_eq!(publisher.recv().packet_type(), raw::PUBCOMP);

    // Packet id 7 again, after its PUBCOMP: a new message.
    publisher.send(&raw::publish("once/a", b"third", 2, 7, false, false));
    assert_eq!(publisher.recv().packet_type(), raw::PUBREC);
    publisher.send(&raw::pubrel(7));
    assert_eq!(publisher.recv().packet_type(), raw::PUBCOMP);

    let got: Vec<String> = sub.recv_payloads(3);
    assert_eq!(got, ["first", "second", "third"]);
}

/// [MQTT-4.3.3-2] across connections: a persistent publisher whose connection drops
/// after PUBREC re-sends the PUBLISH (same id, DUP 1) on its next connection; the
/// session remembers the id, so it is delivered once. Then PUBREL / PUBCOMP finish it.
fn resent_qos_2_publish_after_reconnect_is_delivered_once(shards: u16) {
    let broker = Broker::start(shards);
    let mut sub = Mqtt::connect(broker.addr(), "reconnect-once-sub");
    sub.subscribe("reconnect-once/#", 2);
    let connect = Connect::new("reconnect-once-pub").clean_session(false);
    let (mut publisher, _) = RawClient::connect(broker.addr(), &connect);
    publisher.send(&raw::publish(
        "reconnect-once/a",
        b"once",
        2,
        9,
        false,
        false,
    ));
    let pubrec = publisher.recv();
    assert_eq!((pubrec.packet_type(), pubrec.packet_id()), (raw::PUBREC, 9));
    publisher.drop_connection();

    let (mut publisher, session_present) = RawClient::connect(broker.addr(), &connect);
    assert!(session_present);
    publisher.send(&raw::publish(
        "reconnect-once/a",
        b"once",
        2,
        9,
        true,
        false,
    ));
    let pubrec = publisher.recv();
    assert_eq!((pubrec.packet_type(), pubrec.packet_id()), (raw::PUBREC, 9));
    publisher.send(&raw::pubrel(9));
    assert_eq!(publisher.recv().packet_type(), raw::PUBCOMP);
    publisher.send(&raw::publish(
        "reconnect-once/a",
        b"marker",
        2,
        10,
        false,
        false,
    ));
    assert_eq!(publisher.recv().packet_type(), raw::PUBREC);
    publisher.send(&raw::pubrel(10));
    assert_eq!(publisher.recv().packet_type(), raw::PUBCOMP);

    assert_eq!(sub.recv_payloads(2), ["once", "marker"]);
}

/// A QoS 2 publish to a QoS 0 subscription arrives as QoS 0: no packet id, no flow. A
/// QoS 1 subscription gets QoS 1.
fn qos_is_downgraded_to_the_granted_qos(shards: u16) {
    let broker = Broker::start(shards);
    let (mut at_0, _) = RawClient::connect(broker.addr(), &Connect::new("down-0"));
    at_0.send(&raw::subscribe(1, &[("down/#", 0)]));
    assert_eq!(at_0.recv().suback(), (1, vec![0]));
    let (mut at_1, _) = RawClient::connect(broker.addr(), &Connect::new("down-1"));
    at_1.send(&raw::subscribe(1, &[("down/#", 1)]));
    assert_eq!(at_1.recv().suback(), (1, vec![1]));

    mosquitto_pub(
        broker.addr(),
        &["-t", "down/x", "-m", "exactly once", "-q", "2"],
    );
    let got = at_0.recv_publish();
    assert_eq!(
        (
            got.qos,
            got.dup,
            got.retain,
            got.topic.as_str(),
            got.payload.as_slice()
        ),
        (0, false, false, "down/x", b"exactly once".as_slice())
    );
    let got = at_1.recv_publish();
    assert_eq!(
        (got.qos, got.dup, got.topic.as_str(), got.payload.as_slice()),
        (1, false, "down/x", b"exactly once".as_slice())
    );
    at_1.send(&raw::puback(got.packet_id));
}

/// [MQTT-4.4.0-1], [MQTT-3.3.1-1]: a QoS 1 message sent to a persistent session and not
/// acknowledged is sent again when the client reconnects, with the same packet id and
/// DUP 1; session present is 1. Once acknowledged it is not sent again.
fn unacknowledged_qos_1_message_is_resent_with_dup_after_reconnect(shards: u16) {
    let broker = Broker::start(shards);
    let connect = Connect::new("redeliver").clean_session(false);
    let (mut sub, session_present) = RawClient::connect(broker.addr(), &connect);
    assert!(!session_present);
    sub.send(&raw::subscribe(1, &[("redeliver/#", 1)]));
    assert_eq!(sub.recv().suback(), (1, vec![1]));

    let mut publisher = Mqtt::connect(broker.addr(), "redeliver-pub");
    publisher.publish("redeliver/x", 1, false, "again");
    let first = sub.recv_publish();
    assert_eq!(
        (first.qos, first.dup, first.payload.as_slice()),
        (1, false, b"again".as_slice())
    );
    // No PUBACK; leave.
    sub.send(&raw::DISCONNECT);
    assert_eq!(sub.expect_closed(), vec![]);

    let (mut sub, session_present) = RawClient::connect(broker.addr(), &connect);
    assert!(session_present);
    let resent = sub.recv_publish();
    assert_eq!(resent, raw::RawPublish { dup: true, ..first });
    sub.send(&raw::puback(resent.packet_id));
    sub.send(&PINGREQ);
    assert_eq!(sub.recv().packet_type(), PINGRESP, "nothing else is resent");
    sub.drop_connection();

    // Acknowledged: a third connection gets nothing before its PINGRESP.
    let (mut sub, session_present) = RawClient::connect(broker.addr(), &connect);
    assert!(session_present);
    sub.send(&PINGREQ);
    assert_eq!(sub.recv().packet_type(), PINGRESP);
}

/// [MQTT-4.4.0-1]: a QoS 2 delivery whose PUBREC was received but whose PUBCOMP was
/// not resumes with PUBREL after reconnecting, not with the PUBLISH again: the
/// subscriber gets the message once.
fn qos_2_delivery_resumes_with_pubrel_after_reconnect(shards: u16) {
    let broker = Broker::start(shards);
    let connect = Connect::new("resume-2").clean_session(false);
    let (mut sub, _) = RawClient::connect(broker.addr(), &connect);
    sub.send(&raw::subscribe(1, &[("resume/#", 2)]));
    assert_eq!(sub.recv().suback(), (1, vec![2]));

    let mut publisher = Mqtt::connect(broker.addr(), "resume-2-pub");
    publisher.publish("resume/x", 2, false, "once");
    let publish = sub.recv_publish();
    assert_eq!(
        (publish.qos, publish.payload.as_slice()),
        (2, b"once".as_slice())
    );
    sub.send(&raw::pubrec(publish.packet_id));
    let pubrel = sub.recv();
    assert_eq!(
        (pubrel.packet_type(), pubrel.packet_id()),
        (raw::PUBREL, publish.packet_id)
    );
    // No PUBCOMP; the connection drops.
    sub.drop_connection();

    let (mut sub, session_present) = RawClient::connect(broker.addr(), &connect);
    assert!(session_present);
    let resumed = sub.recv();
    assert_eq!(
        (resumed.first_byte, resumed.packet_id()),
        (0x62, publish.packet_id),
        "PUBREL again, not the PUBLISH"
    );
    sub.send(&raw::pubcomp(publish.packet_id));
    sub.send(&PINGREQ);
    assert_eq!(sub.recv().packet_type(), PINGRESP);
}

shard_tests!(
    each_delivery_gets_the_lower_of_published_and_granted_qos,
    qos_1_and_2_flows_deliver_every_message,
    resent_qos_2_publish_before_pubrel_is_delivered_once,
    resent_qos_2_publish_after_reconnect_is_delivered_once,
    qos_is_downgraded_to_the_granted_qos,
    unacknowledged_qos_1_message_is_resent_with_dup_after_reconnect,
    qos_2_delivery_resumes_with_pubrel_after_reconnect,
);
