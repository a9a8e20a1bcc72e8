//! Keep-alive [MQTT-3.1.2-24]: a client silent for 1.5 times its keep-alive is
//! disconnected; PINGREQ is answered and counts as activity.

use crate::broker::Broker;
use crate::raw::{Connect, RawClient, PINGREQ, PINGRESP};
use std::thread;
use std::time::{Duration, Instant};

/// A client with keep-alive 1 s that goes silent after CONNACK is disconnected (the
/// broker allows 1.5 s plus its 100 ms tick). The time is printed, not asserted.
fn silent_client_is_disconnected_after_one_and_a_half_keep_alives(shards: u16) {
    let broker = Broker::start(shards);
    let (mut silent, _) =
        RawClient::connect(broker.addr(), &Connect::new("silent").keep_alive_secs(1));
    let connected = Instant::now();
    assert_eq!(silent.expect_closed(), vec![]);
    println!(
        "keep-alive 1 s: disconnected {:?} after CONNACK",
        connected.elapsed()
    );
}

/// [MQTT-3.12.4-1]: every PINGREQ gets a PINGRESP.
fn pingreq_gets_pingresp(shards: u16) {
    let broker = Broker::start(shards);
    let (mut client, _) = RawClient::connect(broker.addr(), &Connect::new("pinger"));
    for _ in 0..3 {
        client.send(&PINGREQ);
        let pingresp = client.recv();
        assert_eq!((pingresp.packet_type(), pingresp.body.len()), (PINGRESP, 0));
    }
    // Pipelined: three PINGREQs in one write, three PINGRESPs back.
    client.send(&[PINGREQ, PINGREQ, PINGREQ].concat());
    for _ in 0..3 {
        assert_eq!(client.recv().packet_type(), PINGRESP);
    }
}

/// A client with keep-alive 1 s that sends PINGREQ every 200 ms stays connected for 3 s
/// (twice the limit). The pacing sleep is not synchronisation: every PINGREQ waits for
/// its PINGRESP.
fn client_that_keeps_pinging_stays_connected(shards: u16) {
    let broker = Broker::start(shards);
    let (mut client, _) =
        RawClient::connect(broker.addr(), &Connect::new("chatty").keep_alive_secs(1));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        client.send(&PINGREQ);
        assert_eq!(client.recv().packet_type(), PINGRESP);
        thread::sleep(Duration::from_millis(200));
    }
}

shard_tests!(
    silent_client_is_disconnected_after_one_and_a_half_keep_alives,
    pingreq_gets_pingresp,
    client_that_keeps_pinging_stays_connected,
);
