//! Group commit throughput: 64 records of 256 B payload per commit, one `fdatasync` each,
//! on `FsStorage` in a temporary directory; and the CPU cost of encoding and framing the
//! same batch (no I/O).
//!
//! `wal_commit` reports records/s (elements); commits/s is 1 / time per iteration. Run
//! with `cargo bench -p cutie-persistence --bench wal`. Measured and reported, never
//! asserted: the numbers depend on the disk (and its cache flush behaviour) more than on
//! this code. Set `CUTIE_BENCH_DIR` to measure on another file system than the default
//! temporary directory.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use cutie_persistence::frame::push_frame;
use cutie_persistence::record::RecordEncoder;
use cutie_persistence::{FsStorage, Record, Wal, WalOptions};

const BATCH: usize = 64;
const PAYLOAD_BYTES: usize = 256;

fn batch() -> Vec<Record> {
    (0..BATCH)
        .map(|i| Record::MessageQueued {
            client_id: format!("client-{}", i % 8),
            message_id: i as u64,
            topic: "sensors/building-1/floor-3/temperature".to_string(),
            payload: vec![0x5a; PAYLOAD_BYTES],
            qos: 1,
            retain: false,
        })
        .collect()
}

fn commit(c: &mut Criterion) {
    let records = batch();
    let tmp = match std::env::var_os("CUTIE_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory");
    let (mut wal, _, _) = Wal::open(FsStorage::new(tmp.path()), "shard-0", WalOptions::new(0))
        .expect("open a fresh log");

    let mut group = c.benchmark_group("wal_commit");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("fs_64x256B_fdatasync", |b| {
        b.iter(|| {
            for record in &records {
                wal.append(record).expect("append");
            }
            wal.commit().expect("commit")
        })
    });
    group.finish();

    let mut group = c.benchmark_group("wal_encode");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut encoder = RecordEncoder::new();
    let mut out = Vec::with_capacity(64 << 10);
    group.bench_function("frame_64x256B", |b| {
        b.iter(|| {
            out.clear();
            for record in &records {
                push_frame(encoder.encode(record).expect("encode"), &mut out);
            }
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
