//! Start-up: a broker serves on every shard once it has logged its address, even when
//! the machine is crowded while it starts.

use crate::broker::{exclusive, Broker};
use crate::raw::{Connect, RawClient, PINGREQ, PINGRESP};
use std::thread;

/// Brokers started at once, 4 shards each: far more shard threads than cores, all
/// connecting their meshes together.
const BROKERS: usize = 16;

/// Regression test for a start-up hang. glommio 0.9 can park an executor whose task
/// queue is still runnable (when its preemption timer expired before it ran anything:
/// a thread kept off the CPU that long); while its mesh connects nothing else wakes a
/// shard, so it never accepted a connection and the broker ignored SIGTERM. Sixteen
/// 4-shard brokers starting together on two cores left about one in four with a dead
/// shard. Each broker here must answer eight clients (accepted on shards the kernel
/// picks, served by the shards that own their ids). Runs alone: it loads the machine
/// on purpose. 4 shards only: one shard has no mesh.
#[test]
fn brokers_starting_together_all_serve_every_client() {
    let alone = exclusive();
    // Started from as many threads, so their shards start at the same moment.
    let brokers: Vec<Broker> = thread::scope(|scope| {
        let starting: Vec<_> = (0..BROKERS)
            .map(|_| scope.spawn(|| alone.start(4)))
            .collect();
        starting
            .into_iter()
            .map(|broker| broker.join().expect("start a broker"))
            .collect()
    });
    for (b, broker) in brokers.iter().enumerate() {
        for c in 0..8 {
            let id = format!("crowded-{c}");
            let (mut client, _) = RawClient::connect(broker.addr(), &Connect::new(&id));
            client.send(&PINGREQ);
            assert_eq!(client.recv().packet_type(), PINGRESP, "broker {b}, {id}");
        }
    }
}
