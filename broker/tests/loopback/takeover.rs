//! Session takeover: a second connection with the same client id closes the first.

use crate::broker::Broker;
use crate::clients::{payload_string, Mqtt};
use crate::raw::{self, Connect, RawClient, PINGREQ, PINGRESP};

/// [MQTT-3.1.4-2]: each new connection of client id `taker` closes the previous one and
/// works itself. Eight generations, so with 4 shards they are accepted on different
/// shards (the kernel spreads connections) and handed to the owner. The session is
/// persistent, so every generation after the first finds it (session present) with the
/// first generation's subscription, and the last one receives on it.
fn same_client_id_connecting_again_closes_the_old_connection(shards: u16) {
    let broker = Broker::start(shards);
    let connect = Connect::new("taker").clean_session(false);
    let (mut old, session_present) = RawClient::connect(broker.addr(), &connect);
    assert!(!session_present);
    old.send(&raw::subscribe(1, &[("takeover/#", 1)]));
    assert_eq!(old.recv().suback(), (1, vec![1]));
    for generation in 1..8 {
        let (mut new, session_present) = RawClient::connect(broker.addr(), &connect);
        assert!(session_present, "generation {generation} finds the session");
        assert_eq!(
            old.expect_closed(),
            vec![],
            "generation {} is closed",
            generation - 1
        );
        new.send(&PINGREQ);
        assert_eq!(new.recv().packet_type(), PINGRESP);
        old = new;
    }
    let mut publisher = Mqtt::connect(broker.addr(), "takeover-publisher");
    publisher.publish("takeover/x", 1, false, "to the last generation");
    let publish = old.recv_publish();
    assert_eq!(
        (publish.topic.as_str(), publish.payload.as_slice()),
        ("takeover/x", b"to the last generation".as_slice())
    );
    old.send(&raw::puback(publish.packet_id));
}

/// The same with rumqttc: the first client sees its connection closed by the broker,
/// the second publishes and receives.
fn rumqttc_client_is_taken_over_by_a_new_connection(shards: u16) {
    let broker = Broker::start(shards);
    let mut first = Mqtt::connect(broker.addr(), "rumqttc-taker");
    let mut second = Mqtt::connect(broker.addr(), "rumqttc-taker");
    first.wait_closed();
    second.subscribe("takeover/r", 1);
    second.publish("takeover/r", 1, false, "still here");
    assert_eq!(payload_string(&second.recv()), "still here");
}

/// A takeover of a persistent session hands its unacknowledged QoS 1 message to the new
/// connection: sent again, same packet id, DUP 1 [MQTT-4.4.0-1].
fn takeover_resends_unacknowledged_messages_to_the_new_connection(shards: u16) {
    let broker = Broker::start(shards);
    let connect = Connect::new("taker-inflight").clean_session(false);
    let (mut old, _) = RawClient::connect(broker.addr(), &connect);
    old.send(&raw::subscribe(1, &[("takeover/inflight", 1)]));
    assert_eq!(old.recv().suback(), (1, vec![1]));
    let mut publisher = Mqtt::connect(broker.addr(), "takeover-inflight-pub");
    publisher.publish("takeover/inflight", 1, false, "unacknowledged");
    let first = old.recv_publish();
    assert!(!first.dup);

    let (mut new, session_present) = RawClient::connect(broker.addr(), &connect);
    assert!(session_present);
    assert_eq!(old.expect_closed(), vec![]);
    let resent = new.recv_publish();
    assert_eq!(resent, raw::RawPublish { dup: true, ..first });
    new.send(&raw::puback(resent.packet_id));
    new.send(&PINGREQ);
    assert_eq!(new.recv().packet_type(), PINGRESP);
}

shard_tests!(
    same_client_id_connecting_again_closes_the_old_connection,
    takeover_resends_unacknowledged_messages_to_the_new_connection,
    rumqttc_client_is_taken_over_by_a_new_connection,
);
