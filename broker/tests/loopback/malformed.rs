//! Malformed and out-of-order packets close that connection only; the broker and its
//! other clients carry on.

use crate::broker::Broker;
use crate::clients::{payload_string, Mqtt};
use crate::raw::{self, Connect, RawClient};

/// A broker that does not ban: these tests send many malformed packets from one
/// address on purpose (banning has its own test in `access`).
fn start(shards: u16) -> Broker {
    Broker::start_with(shards, &[("CUTIE_LIMITS__BAN_THRESHOLD", "0")])
}

/// A subscriber and a publisher that must keep working while others misbehave.
struct Bystanders {
    sub: Mqtt,
    publisher: Mqtt,
    sent: usize,
}

impl Bystanders {
    fn new(broker: &Broker) -> Bystanders {
        let mut sub = Mqtt::connect(broker.addr(), "bystander-sub");
        sub.subscribe("alive/#", 1);
        let publisher = Mqtt::connect(broker.addr(), "bystander-pub");
        Bystanders {
            sub,
            publisher,
            sent: 0,
        }
    }

    /// A message goes through.
    fn check(&mut self) {
        self.sent += 1;
        let payload = format!("still alive {}", self.sent);
        self.publisher
            .publish("alive/check", 1, false, payload.clone());
        assert_eq!(payload_string(&self.sub.recv()), payload);
    }
}

/// Sends `bytes` on a fresh connection (after CONNECT if `connect_first`) and expects the
/// broker to close it without answering anything after the CONNACK.
fn expect_rejected(broker: &Broker, client_id: &str, connect_first: bool, bytes: &[u8]) {
    let mut client = if connect_first {
        RawClient::connect(broker.addr(), &Connect::new(client_id)).0
    } else {
        RawClient::open(broker.addr())
    };
    client.send_lossy(bytes);
    assert_eq!(
        client.bytes_until_closed(),
        Vec::<u8>::new(),
        "answer to {bytes:02x?}"
    );
}

/// Garbage closes the connection: bytes that are not MQTT or a CONNECT with bad flags
/// before CONNECT, and after CONNECT a reserved packet type (0 and 15), a server-to-client packet (CONNACK), a
/// PUBREL with reserved flags 0 [MQTT-3.6.1-1], a remaining length longer than 4 bytes,
/// a PUBLISH to an empty topic [MQTT-4.7.3-1] or with QoS 3 [MQTT-3.3.1-4], a SUBSCRIBE
/// with QoS 3 [MQTT-3.8.3-4] or without filters [MQTT-3.8.3-3].
fn garbage_bytes_close_the_connection(shards: u16) {
    let broker = start(shards);
    let mut bystanders = Bystanders::new(&broker);
    expect_rejected(&broker, "", false, b"GET / HTTP/1.1\r\nHost: cutie\r\n\r\n");
    bystanders.check();
    // CONNECTs with bad flags: the reserved bit [MQTT-3.1.2-3], a will QoS without the
    // will flag [MQTT-3.1.2-13], a password without a user name [MQTT-3.1.2-22].
    for (i, flags) in [0x03u8, 0x0A, 0x42].into_iter().enumerate() {
        let mut connect = Connect::new(&format!("bad-flags-{i}")).encode();
        connect[9] = flags;
        expect_rejected(&broker, "", false, &connect);
        bystanders.check();
    }
    let cases: Vec<Vec<u8>> = vec![
        vec![0x00, 0x00],
        vec![0xF0, 0x00],
        vec![0x20, 0x02, 0x00, 0x00],
        vec![0x60, 0x02, 0x00, 0x01],
        vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        raw::publish("", b"no topic", 0, 0, false, false),
        raw::subscribe(1, &[("alive/#", 3)]),
        raw::subscribe(1, &[]),
        // PUBLISH with both QoS bits set [MQTT-3.3.1-4].
        vec![0x36, 0x07, 0x00, 0x01, b'a', 0x00, 0x01, b'h', b'i'],
    ];
    for (i, bytes) in cases.iter().enumerate() {
        expect_rejected(&broker, &format!("garbage-{i}"), true, bytes);
        bystanders.check();
    }
    broker_still_runs(broker);
}

/// [MQTT-3.1.0-1]: the first packet must be CONNECT; a SUBSCRIBE (or PINGREQ) first
/// closes the connection without an answer.
fn subscribe_before_connect_closes_the_connection(shards: u16) {
    let broker = start(shards);
    let mut bystanders = Bystanders::new(&broker);
    expect_rejected(&broker, "", false, &raw::subscribe(1, &[("alive/#", 0)]));
    bystanders.check();
    expect_rejected(&broker, "", false, &raw::PINGREQ);
    bystanders.check();
    broker_still_runs(broker);
}

/// [MQTT-3.3.2-2]: a PUBLISH topic must not contain wildcards; one that does closes the
/// connection and is not delivered. Checked with a marker from the same client id
/// afterwards (same shard, so in order).
fn publish_to_a_wildcard_topic_closes_the_connection(shards: u16) {
    let broker = start(shards);
    let mut bystanders = Bystanders::new(&broker);
    for topic in ["alive/+", "alive/#", "alive/a+b"] {
        let publish = raw::publish(topic, b"wild", 1, 1, false, false);
        expect_rejected(&broker, "wild", true, &publish);
        let (mut again, _) = RawClient::connect(broker.addr(), &Connect::new("wild"));
        again.send(&raw::publish("alive/marker", b"marker", 1, 1, false, false));
        let got = bystanders.sub.recv();
        assert_eq!(
            (got.topic.as_str(), payload_string(&got).as_str()),
            ("alive/marker", "marker"),
            "after a PUBLISH to {topic}"
        );
        bystanders.check();
    }
    broker_still_runs(broker);
}

/// With `max_packet_size` 1024, a 4 KiB PUBLISH closes the connection, and so does a
/// fixed header announcing 1 MiB before any of it arrives (the limit is checked before
/// buffering). A PUBLISH just under the limit is fine.
fn oversize_packet_closes_the_connection(shards: u16) {
    let broker = Broker::start_with(shards, &[("CUTIE_LIMITS__MAX_PACKET_SIZE", "1024")]);
    let mut bystanders = Bystanders::new(&broker);

    let (mut client, _) = RawClient::connect(broker.addr(), &Connect::new("big-but-fine"));
    // 2 (fixed header) + 2 + 11 (topic) + 2 (packet id) + 1000 = 1017 bytes.
    client.send(&raw::publish(
        "alive/large",
        &[b'x'; 1000],
        1,
        1,
        false,
        false,
    ));
    let puback = client.recv();
    assert_eq!((puback.packet_type(), puback.packet_id()), (raw::PUBACK, 1));
    assert_eq!(bystanders.sub.recv().payload.len(), 1000);

    let too_big = raw::publish("alive/huge", &[b'x'; 4096], 1, 2, false, false);
    expect_rejected(&broker, "too-big", true, &too_big);
    bystanders.check();

    // PUBLISH, remaining length 1 MiB (0x80 0x80 0x40), then only a few bytes.
    expect_rejected(
        &broker,
        "announced-big",
        true,
        &[0x30, 0x80, 0x80, 0x40, 0x00, 0x01],
    );
    bystanders.check();
    broker_still_runs(broker);
}

/// The broker process is alive after it all, and still exits 0 on SIGTERM (on drop).
fn broker_still_runs(mut broker: Broker) {
    broker.assert_running();
}

shard_tests!(
    garbage_bytes_close_the_connection,
    subscribe_before_connect_closes_the_connection,
    publish_to_a_wildcard_topic_closes_the_connection,
    oversize_packet_closes_the_connection,
);
