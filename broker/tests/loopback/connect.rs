//! CONNECT: first, once, within the connect timeout; CONNACK return codes; MQTT 3.1.

use crate::broker::Broker;
use crate::clients::{mosquitto_pub, payload_string, MosquittoSub, Mqtt};
use crate::raw::{self, Connect, RawClient, PINGREQ, PINGRESP};
use std::collections::BTreeMap;
use std::time::Instant;

/// [MQTT-3.1.0-1] with a 1 s `connect_timeout`: a connection that never sends CONNECT,
/// or only the first half of one, is closed by the broker (end of file, nothing sent).
/// The time is printed, not asserted.
fn connection_without_connect_is_closed_after_the_connect_timeout(shards: u16) {
    let broker = Broker::start_with(shards, &[("CUTIE_LIMITS__CONNECT_TIMEOUT_SECS", "1")]);
    let opened = Instant::now();
    let mut silent = RawClient::open(broker.addr());
    let connect = Connect::new("half-a-connect").encode();
    let mut half = RawClient::open(broker.addr());
    half.send(&connect[..connect.len() / 2]);
    assert_eq!(silent.bytes_until_closed(), Vec::<u8>::new());
    println!(
        "connect timeout 1 s: closed {:?} after opening",
        opened.elapsed()
    );
    assert_eq!(half.bytes_until_closed(), Vec::<u8>::new());

    // The broker still serves others.
    let (mut client, _) = RawClient::connect(broker.addr(), &Connect::new("after-timeout"));
    client.send(&PINGREQ);
    assert_eq!(client.recv().packet_type(), PINGRESP);
}

/// CONNECT, SUBSCRIBE, PUBLISH and PINGREQ in one write: everything behind the CONNECT
/// is served, also when the connection is accepted by one shard and handed to the one
/// that owns its client id (eight client ids, so with 4 shards most are). Expected:
/// CONNACK first, then SUBACK, the client's own QoS 1 message, its PUBACK and PINGRESP
/// (section 3.8.4 lets the broker send the message before the SUBACK, so only the set
/// is checked).
fn packets_sent_right_behind_connect_are_served(shards: u16) {
    let broker = Broker::start(shards);
    for i in 0..8 {
        let id = format!("pipelined-{i}");
        let topic = format!("pipelined/{i}");
        let mut client = RawClient::open(broker.addr());
        client.send(
            &[
                Connect::new(&id).encode(),
                raw::subscribe(1, &[(topic.as_str(), 1)]),
                raw::publish(&topic, b"to myself", 1, 2, false, false),
                PINGREQ.to_vec(),
            ]
            .concat(),
        );
        assert_eq!(client.recv().connack(), (false, 0), "{id}");
        let mut got: BTreeMap<u8, usize> = BTreeMap::new();
        while got.values().sum::<usize>() < 4 {
            let packet = client.recv();
            match packet.packet_type() {
                raw::SUBACK => assert_eq!(packet.suback(), (1, vec![1])),
                raw::PUBACK => assert_eq!(packet.packet_id(), 2),
                raw::PUBLISH => {
                    let publish = packet.publish();
                    assert_eq!(publish.payload, b"to myself");
                    client.send(&raw::puback(publish.packet_id));
                }
                PINGRESP => {}
                other => panic!("{id}: unexpected packet type {other}"),
            }
            *got.entry(packet.packet_type()).or_default() += 1;
        }
        let expected: BTreeMap<u8, usize> = [
            (raw::SUBACK, 1),
            (raw::PUBACK, 1),
            (raw::PUBLISH, 1),
            (PINGRESP, 1),
        ]
        .into();
        assert_eq!(got, expected, "{id}");
    }
}

/// [MQTT-3.1.0-2]: a second CONNECT on a connection is a protocol violation; the
/// connection is closed without a second CONNACK.
fn second_connect_closes_the_connection(shards: u16) {
    let broker = Broker::start(shards);
    let connect = Connect::new("twice");
    let (mut client, _) = RawClient::connect(broker.addr(), &connect);
    client.send(&connect.encode());
    assert_eq!(client.expect_closed(), vec![]);
}

/// [MQTT-3.1.2-2]: a CONNECT for MQTT 5 (level 5) or an unknown level 6 is answered
/// with CONNACK return code 1 (unacceptable protocol version), then closed.
fn unsupported_protocol_level_gets_connack_1_then_close(shards: u16) {
    let broker = Broker::start(shards);
    // A real MQTT 5 CONNECT: the 3.1.1 layout plus an empty property length after the
    // keep-alive.
    let mqtt5: Vec<u8> = vec![
        0x10, 0x10, // CONNECT, remaining length 16
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // "MQTT", level 5
        0x02, 0x00, 0x3C, // clean start, keep-alive 60
        0x00, // properties: none
        0x00, 0x03, b'v', b'5', b'!', // client id "v5!"
    ];
    let level6 = Connect::new("level-6").protocol("MQTT", 6).encode();
    for connect in [mqtt5, level6] {
        let mut client = RawClient::open(broker.addr());
        client.send(&connect);
        assert_eq!(
            client.bytes_until_closed(),
            vec![0x20, 0x02, 0x00, 0x01],
            "answer to {connect:02x?}"
        );
    }
}

/// [MQTT-3.1.3-8]: an empty client id with clean session 0 gets CONNACK return code 2
/// (identifier rejected), then the connection is closed.
fn empty_client_id_with_clean_session_0_gets_connack_2(shards: u16) {
    let broker = Broker::start(shards);
    let mut client = RawClient::open(broker.addr());
    client.send(&Connect::new("").clean_session(false).encode());
    assert_eq!(client.bytes_until_closed(), vec![0x20, 0x02, 0x00, 0x02]);
}

/// [MQTT-3.1.3-6]: an empty client id with clean session 1 is accepted (the broker
/// makes one up) and the connection publishes and subscribes like any other. Three
/// clients do it: raw bytes, rumqttc, and mosquitto_sub (which sends an empty id by
/// default).
fn empty_client_id_with_clean_session_1_is_accepted_and_works(shards: u16) {
    let broker = Broker::start(shards);
    let (mut raw, session_present) = RawClient::connect(broker.addr(), &Connect::new(""));
    assert!(!session_present);
    raw.send(&raw::subscribe(1, &[("anon/#", 1)]));
    assert_eq!(raw.recv().suback(), (1, vec![1]));

    let mut rumqttc = Mqtt::connect(broker.addr(), "");
    rumqttc.subscribe("anon/#", 1);
    let mut mosquitto = MosquittoSub::start(broker.addr(), &["-t", "anon/#", "-q", "1"]);

    // Each anonymous client publishes; every one receives all three.
    raw.send(&raw::publish("anon/raw", b"from raw", 1, 7, false, false));
    rumqttc.publish("anon/rumqttc", 1, false, "from rumqttc");
    mosquitto_pub(
        broker.addr(),
        &["-t", "anon/mosquitto", "-m", "from mosquitto", "-q", "1"],
    );

    let mut raw_got = Vec::new();
    while raw_got.len() < 3 {
        let packet = raw.recv();
        match packet.packet_type() {
            raw::PUBACK => assert_eq!(packet.packet_id(), 7),
            raw::PUBLISH => {
                let publish = packet.publish();
                raw.send(&raw::puback(publish.packet_id));
                raw_got.push(String::from_utf8(publish.payload).expect("UTF-8"));
            }
            other => panic!("unexpected packet type {other}"),
        }
    }
    let mut rumqttc_got = rumqttc.recv_payloads(3);
    let mut mosquitto_got: Vec<String> = (0..3).map(|_| mosquitto.recv().payload).collect();
    for got in [&mut raw_got, &mut rumqttc_got, &mut mosquitto_got] {
        got.sort();
        assert_eq!(*got, ["from mosquitto", "from raw", "from rumqttc"]);
    }
}

/// MQTT 3.1 (protocol name `MQIsdp`, level 3) is accepted: raw bytes get CONNACK 0 (2
/// for a client id over 3.1's 23 characters), and
/// `mosquitto_pub -V mqttv31` / `mosquitto_sub -V mqttv31` exchange messages with a
/// 3.1.1 client.
fn mqtt_3_1_client_is_accepted(shards: u16) {
    let broker = Broker::start(shards);
    let (mut raw, _) = RawClient::connect(
        broker.addr(),
        &Connect::new("raw-v31").protocol("MQIsdp", 3),
    );
    raw.send(&PINGREQ);
    assert_eq!(raw.recv().packet_type(), PINGRESP);

    // MQTT 3.1 limits client ids to 23 characters: CONNACK 2 for 24.
    let mut long_id = RawClient::open(broker.addr());
    long_id.send(
        &Connect::new("a-24-character-client-id")
            .protocol("MQIsdp", 3)
            .encode(),
    );
    assert_eq!(long_id.bytes_until_closed(), vec![0x20, 0x02, 0x00, 0x02]);

    let mut v311 = Mqtt::connect(broker.addr(), "v311-sub");
    v311.subscribe("v31/#", 1);
    let mut v31 = MosquittoSub::start(
        broker.addr(),
        &["-V", "mqttv31", "-i", "v31-sub", "-t", "v31/#", "-q", "1"],
    );
    mosquitto_pub(
        broker.addr(),
        &[
            "-V", "mqttv31", "-i", "v31-pub", "-t", "v31/a", "-m", "from 3.1", "-q", "1",
        ],
    );
    let from_31 = v311.recv();
    assert_eq!(
        (from_31.topic.as_str(), payload_string(&from_31).as_str()),
        ("v31/a", "from 3.1")
    );
    assert_eq!(v31.recv().payload, "from 3.1");

    v311.publish("v31/b", 1, false, "from 3.1.1");
    let from_311 = v31.recv();
    assert_eq!(
        (from_311.topic.as_str(), from_311.payload.as_str()),
        ("v31/b", "from 3.1.1")
    );
}

shard_tests!(
    connection_without_connect_is_closed_after_the_connect_timeout,
    packets_sent_right_behind_connect_are_served,
    second_connect_closes_the_connection,
    unsupported_protocol_level_gets_connack_1_then_close,
    empty_client_id_with_clean_session_0_gets_connack_2,
    empty_client_id_with_clean_session_1_is_accepted_and_works,
    mqtt_3_1_client_is_accepted,
);
