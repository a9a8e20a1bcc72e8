//! Random operation sequences against the in-memory model: after every reopen (clean or
//! after a crash) the recovered state equals the model of everything committed.

#![allow(clippy::unwrap_used)]

mod common;

use common::{open, options, RecordGen};
use cutie_persistence::{CrashPoint, DurableState, Lsn, Record, SimStorage};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Append this many records.
    Append(u8),
    Commit,
    Compact,
    /// Drop the log (losing what is not committed) and open it again.
    Reopen,
    /// Crash the storage (losing what is not synced) and open it again.
    Crash,
    /// Commit, crashing just before (`false`) or after (`true`) its first sync, then open
    /// again: the batch may survive in part (torn writes), but only as a prefix.
    CrashInCommit(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..12).prop_map(Op::Append),
        4 => Just(Op::Commit),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
        1 => any::<bool>().prop_map(Op::CrashInCommit),
    ]
}

fn run(seed: u64, torn: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let storage = if torn {
        SimStorage::with_torn_writes(seed)
    } else {
        SimStorage::new()
    };
    let mut generator = RecordGen::new(seed);
    let (mut wal, recovered, _) = open(storage.clone(), options()).unwrap();
    prop_assert_eq!(&recovered, &DurableState::new());
    // The model: everything appended, and everything committed.
    let mut appended = DurableState::new();
    let mut committed = DurableState::new();
    let mut committed_lsn = Lsn::ZERO;
    let mut pending: Vec<Record> = Vec::new();
    for op in ops {
        match op {
            Op::Append(n) => {
                for _ in 0..*n {
                    let record = generator.next_record();
                    let lsn = wal.append(&record).unwrap();
                    prop_assert_eq!(lsn, wal.last_lsn());
                    let _ = appended.apply(&record);
                    pending.push(record);
                }
            }
            Op::Commit => {
                committed_lsn = wal.commit().unwrap();
                prop_assert_eq!(committed_lsn, wal.last_lsn());
                committed = appended.clone();
                pending.clear();
            }
            Op::Compact => {
                let report = wal.compact(&appended).unwrap();
                committed_lsn = report.lsn;
                prop_assert_eq!(committed_lsn, wal.last_lsn());
                prop_assert_eq!(wal.snapshot_lsn(), committed_lsn);
                committed = appended.clone();
                pending.clear();
            }
            Op::CrashInCommit(after) => {
                let point = if *after {
                    CrashPoint::AfterSync
                } else {
                    CrashPoint::BeforeSync
                };
                storage.crash_at_sync(1, point);
                let result = wal.commit();
                drop(wal);
                storage.crash();
                let (reopened, recovered, report) = open(storage.clone(), options()).unwrap();
                wal = reopened;
                prop_assert!(report.corrupt.is_empty() && report.missing.is_empty());
                // Records 1..=r, r between the last commit and everything appended.
                let kept = (report.last_lsn.get() - committed_lsn.get()) as usize;
                prop_assert!(report.last_lsn >= committed_lsn && kept <= pending.len());
                if result.is_ok() {
                    prop_assert_eq!(
                        kept,
                        pending.len(),
                        "a commit that returned Ok lost records"
                    );
                }
                let mut expected = committed.clone();
                for record in &pending[..kept] {
                    let _ = expected.apply(record);
                }
                prop_assert_eq!(&recovered, &expected);
                committed = recovered;
                committed_lsn = report.last_lsn;
                appended = committed.clone();
                generator.reset_to(committed.clone());
                pending.clear();
            }
            Op::Reopen | Op::Crash => {
                drop(wal);
                if matches!(op, Op::Crash) {
                    storage.crash();
                }
                let (reopened, recovered, report) = open(storage.clone(), options()).unwrap();
                wal = reopened;
                prop_assert_eq!(&recovered, &committed);
                prop_assert_eq!(report.last_lsn, committed_lsn);
                prop_assert_eq!(wal.durable_lsn(), committed_lsn);
                // Crashes only come between operations here, when everything written
                // was synced: nothing to repair.
                prop_assert!(report.is_clean(), "{:?}", report);
                appended = committed.clone();
                generator.reset_to(committed.clone());
                pending.clear();
            }
        }
    }
    // Finally: whatever was committed survives one more crash.
    drop(wal);
    storage.crash();
    let (_, recovered, _) = open(storage.clone(), options()).unwrap();
    prop_assert_eq!(&recovered, &committed);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn recovered_state_equals_the_model_of_everything_committed(
        seed in any::<u64>(),
        torn in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(seed, torn, &ops)?;
    }
}

#[test]
fn a_long_run_with_periodic_compaction_keeps_few_files_and_the_full_state() {
    let storage = SimStorage::new();
    let (mut wal, _, _) = open(storage.clone(), options()).unwrap();
    let mut generator = RecordGen::new(7);
    let mut model = DurableState::new();
    for batch in 0..200 {
        for _ in 0..10 {
            let record = generator.next_record();
            wal.append(&record).unwrap();
            let _ = model.apply(&record);
        }
        wal.commit().unwrap();
        if batch % 50 == 49 {
            let report = wal.compact(&model).unwrap();
            assert!(report.snapshot.is_some());
            assert!(!report.removed.is_empty());
        }
    }
    assert!(model.misfits() > 0, "the workload should include misfits");
    drop(wal);
    let files = common::files(&storage);
    let snapshots = files.iter().filter(|f| f.ends_with(".snap")).count();
    assert_eq!(snapshots, 1, "{files:?}");
    assert!(files.len() < 10, "{files:?}");
    let (wal, recovered, report) = open(storage, options()).unwrap();
    assert_eq!(recovered, model);
    assert_eq!(wal.last_lsn(), Lsn(2000));
    assert!(report.is_clean());
    assert!(report.snapshot.is_some());
}
