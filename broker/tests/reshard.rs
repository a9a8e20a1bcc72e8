//! Changing `shards` between runs keeps every persistent session (with its subscriptions
//! and queued messages) and every retained message: the state is moved to the shard that
//! owns it under the new count, 4 -> 3 -> 1 -> 5 here.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Broker, Client, Launch};
use cutie_codec::QoS;
use std::collections::BTreeSet;

const CLIENTS: usize = 12;

fn id(i: usize) -> String {
    format!("reshard-{i}")
}

/// Queues one QoS 1 message per offline session and updates the retained messages.
fn publish_round(broker: &Broker, round: usize) {
    let (mut publisher, _) = Client::connect(broker.addr, "reshard-publisher", true);
    for i in 0..CLIENTS {
        let payload = format!("round{round}-{i}").into_bytes();
        assert!(publisher.publish_qos1(&format!("rs/{i}"), payload, (i + 1) as u16));
        let retained = format!("retained{round}-{i}");
        assert!(publisher.retain_qos1(&format!("rr/{i}"), retained.as_bytes(), (i + 100) as u16));
    }
}

/// Every session is back with the message queued for it, and every retained message
/// is the latest.
fn check_round(broker: &Broker, round: usize) {
    for i in 0..CLIENTS {
        let (mut client, present) = Client::connect(broker.addr, &id(i), false);
        assert!(present, "session {} lost", id(i));
        let got = client.receive(1);
        assert_eq!(
            got[0],
            format!("round{round}-{i}").into_bytes(),
            "{}",
            id(i)
        );
    }
    let (mut reader, _) = Client::connect(broker.addr, "reshard-reader", true);
    reader.subscribe("rr/#", QoS::AtMostOnce);
    let retained: BTreeSet<Vec<u8>> = reader.receive(CLIENTS).into_iter().collect();
    let expected: BTreeSet<Vec<u8>> = (0..CLIENTS)
        .map(|i| format!("retained{round}-{i}").into_bytes())
        .collect();
    assert_eq!(retained, expected);
}

#[test]
fn changing_the_number_of_shards_keeps_sessions_queues_and_retained_messages() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");

    let broker = Launch::new(&data_dir).shards(4).start();
    for i in 0..CLIENTS {
        let (mut client, present) = Client::connect(broker.addr, &id(i), false);
        assert!(!present);
        client.subscribe(&format!("rs/{i}"), QoS::AtLeastOnce);
    }
    publish_round(&broker, 0);
    broker.stop();

    for (round, shards) in [(0, 3), (1, 1), (2, 5)] {
        let broker = Launch::new(&data_dir).shards(shards).start();
        check_round(&broker, round);
        assert!(
            broker.logged("moved sessions and retained messages"),
            "{shards} shards: nothing was re-homed"
        );
        publish_round(&broker, round + 1);
        broker.stop();
    }
    let broker = Launch::new(&data_dir).shards(5).start();
    check_round(&broker, 3);
    broker.stop();
}
