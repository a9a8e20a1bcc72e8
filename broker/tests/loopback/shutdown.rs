//! SIGTERM: the broker closes every connection and exits 0.

use crate::broker::Broker;
use crate::clients::Mqtt;
use crate::raw::{self, Connect, RawClient};

/// Connections in every state (before CONNECT, connected, persistent with a message in
/// flight, rumqttc) are closed, and the process exits with status 0.
fn sigterm_closes_client_connections_and_exits_0(shards: u16) {
    let mut broker = Broker::start(shards);
    let addr = broker.addr();
    let mut before_connect = RawClient::open(addr);
    let mut connected: Vec<RawClient> = (0..4)
        .map(|i| RawClient::connect(addr, &Connect::new(&format!("shutdown-{i}"))).0)
        .collect();
    let (mut persistent, _) = RawClient::connect(
        addr,
        &Connect::new("shutdown-persistent").clean_session(false),
    );
    persistent.send(&raw::subscribe(1, &[("shutdown/#", 1)]));
    assert_eq!(persistent.recv().suback(), (1, vec![1]));
    let mut rumqttc = Mqtt::connect(addr, "shutdown-rumqttc");
    rumqttc.publish("shutdown/x", 1, false, "unacknowledged");
    assert_eq!(persistent.recv_publish().payload, b"unacknowledged");

    let status = broker.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    for client in connected
        .iter_mut()
        .chain([&mut persistent, &mut before_connect])
    {
        client.expect_closed();
    }
    rumqttc.wait_closed();
}

shard_tests!(sigterm_closes_client_connections_and_exits_0);
