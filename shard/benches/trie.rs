//! Subscription-trie matching, the hot path of every PUBLISH.
//!
//! A trie of 100k subscriptions shaped like a sensor fleet: 90k exact filters
//! (`sensors/<building>/<floor>/<id>/temp`), 9k with one `+` level and 1k ending in `#`.
//! `for_each_match` and `has_match` match one existing topic per iteration, picked at
//! random in advance; `insert_remove` adds a second key to an existing one-key filter
//! and removes it again (a SUBSCRIBE and UNSUBSCRIBE pair). Measured, never asserted.
//!
//! Run: `cargo bench -p cutie-shard --bench trie -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use cutie_codec::{TopicFilter, TopicName};
use cutie_shard::trie::Trie;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BUILDINGS: u32 = 10;
const FLOORS: u32 = 30;
const IDS_PER_FLOOR: u32 = 300;
const PLUS_FILTERS: u32 = 9_000;
const HASH_FILTERS: u32 = 1_000;
const TOPIC_SAMPLES: usize = 4_096;

fn filter(s: String) -> TopicFilter {
    TopicFilter::try_from(s).expect("bench filters are valid")
}

/// The trie and a sample of topics that exist in it.
fn sensor_fleet() -> (Trie<u32, u8>, Vec<TopicName>) {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut trie = Trie::new();
    let mut topics = Vec::new();
    let mut key = 0u32;
    for building in 0..BUILDINGS {
        for floor in 0..FLOORS {
            for id in 0..IDS_PER_FLOOR {
                let topic = format!("sensors/b{building}/f{floor}/{id}/temp");
                trie.insert(&filter(topic.clone()), key, 1);
                topics.push(TopicName::try_from(topic).expect("bench topics are valid"));
                key += 1;
            }
        }
    }
    for _ in 0..PLUS_FILTERS {
        let mut levels = [
            "sensors".to_owned(),
            format!("b{}", rng.gen_range(0..BUILDINGS)),
            format!("f{}", rng.gen_range(0..FLOORS)),
            rng.gen_range(0..IDS_PER_FLOOR).to_string(),
            "temp".to_owned(),
        ];
        levels[rng.gen_range(1..levels.len())] = "+".to_owned();
        trie.insert(&filter(levels.join("/")), key, 1);
        key += 1;
    }
    for _ in 0..HASH_FILTERS {
        let building = rng.gen_range(0..BUILDINGS);
        let floor = rng.gen_range(0..FLOORS);
        trie.insert(&filter(format!("sensors/b{building}/f{floor}/#")), key, 0);
        key += 1;
    }
    assert_eq!(trie.len(), 100_000);
    let sample = (0..TOPIC_SAMPLES).map(|_| topics[rng.gen_range(0..topics.len())].clone());
    (trie, sample.collect())
}

fn bench_match(c: &mut Criterion) {
    let (trie, topics) = sensor_fleet();
    let mut group = c.benchmark_group("trie_100k");
    group.throughput(Throughput::Elements(1));
    group.bench_function("for_each_match", |b| {
        let mut i = 0;
        b.iter(|| {
            let topic = &topics[i % topics.len()];
            i += 1;
            let mut matched = 0u32;
            trie.for_each_match(black_box(topic), |key, qos| {
                matched = matched.wrapping_add(key ^ u32::from(*qos));
            });
            black_box(matched)
        });
    });
    group.bench_function("has_match", |b| {
        let mut i = 0;
        b.iter(|| {
            let topic = &topics[i % topics.len()];
            i += 1;
            black_box(trie.has_match(black_box(topic)))
        });
    });
    group.bench_function("insert_remove", |b| {
        let mut trie = Trie::new();
        for (key, topic) in topics.iter().enumerate() {
            trie.insert(&filter(topic.to_string()), key as u32, 1u8);
        }
        let filters: Vec<TopicFilter> = topics.iter().map(|t| filter(t.to_string())).collect();
        let mut i = 0;
        b.iter(|| {
            let filter = &filters[i % filters.len()];
            i += 1;
            trie.insert(filter, u32::MAX, 2);
            black_box(trie.remove(filter, u32::MAX))
        });
    });
    group.finish();
}

criterion_group!(benches, bench_match);
criterion_main!(benches);
