//! The aggregation plugin with real clients: numeric payloads published from clients on
//! every shard are aggregated once (on the plugin's home shard) and published as JSON to
//! `$aggregate/<topic>` at the end of each interval.

use crate::broker::Broker;
use crate::clients::{mosquitto_pub, MosquittoSub};

shard_tests!(the_aggregate_plugin_publishes_min_max_avg_of_each_topic);

fn the_aggregate_plugin_publishes_min_max_avg_of_each_topic(shards: u16) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("cutie.toml");
    std::fs::write(
        &config,
        "[[plugins.aggregate]]\nfilter = \"sensors/+/temp\"\ninterval_secs = 1\n",
    )
    .expect("write the configuration");
    let broker = Broker::start_with(
        shards,
        &[("CUTIE_CONFIG", config.to_str().expect("utf-8 path"))],
    );
    let addr = broker.addr();
    let mut sub = MosquittoSub::start(addr, &["-t", "$aggregate/sensors/#"]);
    // Publishers with different client ids land on different shards.
    for (i, value) in ["20", "22.5", "not a number", "18"].iter().enumerate() {
        let id = format!("sensor-{i}");
        mosquitto_pub(
            addr,
            &[
                "-i",
                &id,
                "-t",
                "sensors/kitchen/temp",
                "-m",
                value,
                "-q",
                "1",
            ],
        );
    }
    mosquitto_pub(
        addr,
        &[
            "-i",
            "sensor-x",
            "-t",
            "sensors/hall/temp",
            "-m",
            "5",
            "-q",
            "1",
        ],
    );
    // The publishes may straddle an interval boundary: merge the intervals' statistics
    // until every message is accounted for.
    let mut merged: std::collections::BTreeMap<String, (u64, f64, f64, f64)> =
        std::collections::BTreeMap::new();
    while merged.values().map(|m| m.0).sum::<u64>() < 4 {
        let message = sub.recv();
        let stats: serde_json::Value =
            serde_json::from_str(&message.payload).expect("the payload is JSON");
        let field = |name: &str| stats[name].as_f64().expect("a number");
        assert_eq!(field("interval_secs"), 1.0);
        let count = field("count");
        let entry =
            merged
                .entry(message.topic)
                .or_insert((0, f64::INFINITY, f64::NEG_INFINITY, 0.0));
        entry.0 += count as u64;
        entry.1 = entry.1.min(field("min"));
        entry.2 = entry.2.max(field("max"));
        entry.3 += field("avg") * count;
    }
    let kitchen = merged["$aggregate/sensors/kitchen/temp"];
    assert_eq!(
        (kitchen.0, kitchen.1, kitchen.2),
        (3, 18.0, 22.5),
        "{merged:?}"
    );
    assert!((kitchen.3 / 3.0 - 60.5 / 3.0).abs() < 1e-9, "{merged:?}");
    let hall = merged["$aggregate/sensors/hall/temp"];
    assert_eq!((hall.0, hall.1, hall.2, hall.3), (1, 5.0, 5.0, 5.0));
}
