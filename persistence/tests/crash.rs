//! Crashes at every sync point of a fixed workload (commits, rotations, compactions), then
//! crashes at every sync point of the recovery that follows.
//!
//! What is checked after each crash and recovery, with records numbered by LSN in the
//! order they were appended:
//!
//! 1. recovery succeeds and reports no damage (a torn tail is allowed);
//! 2. the recovered state is exactly the model of a prefix of the appended records:
//!    records `1..=r` where `r` is the recovered `last_lsn`;
//! 3. nothing committed is lost: `r >=` the LSN of the last commit (or compaction) that
//!    returned `Ok` before the crash. Records after it (appended, written, perhaps not
//!    synced) may appear, but only as a prefix, never with a hole;
//! 4. with crashes that drop every unsynced byte, `r` is exactly the last LSN whose commit
//!    reached its data sync;
//! 5. the log goes on: new records appended and committed after recovery survive another
//!    crash, in order after the recovered ones.

#![allow(clippy::unwrap_used)]

mod common;

use common::{model_of, open, options, RecordGen};
use cutie_persistence::{CrashPoint, DurableState, Lsn, Record, SimStorage};

struct Workload {
    batches: Vec<Vec<Record>>,
    /// Compact after these batches.
    compact_after: Vec<usize>,
    /// 1: `commit` every batch. k > 1: `write` every batch (no sync) and `sync` after
    /// every k-th, as durability modes `batch` and `none` do.
    sync_every: usize,
}

fn workload(seed: u64) -> Workload {
    let mut generator = RecordGen::new(seed).with_payload_bytes_max(120);
    let sizes = [3, 1, 8, 5, 2, 7, 4, 6, 1, 9, 3, 5, 2];
    Workload {
        batches: sizes
            .iter()
            .map(|n| (0..*n).map(|_| generator.next_record()).collect())
            .collect(),
        compact_after: vec![4, 10],
        sync_every: 1,
    }
}

/// What the workload got done before the storage died.
#[derive(Debug, Default)]
struct Progress {
    appended: Vec<Record>,
    /// LSN of the last commit or compaction that returned `Ok`.
    acknowledged: Lsn,
    /// Whether the workload ran to its end without a crash.
    finished: bool,
}

/// Runs the workload until a storage call fails (the planned crash).
fn run(storage: &SimStorage, workload: &Workload) -> Progress {
    let mut progress = Progress::default();
    let Ok((mut wal, _, _)) = open(storage.clone(), options()) else {
        return progress;
    };
    let mut state = DurableState::new();
    for (i, batch) in workload.batches.iter().enumerate() {
        for record in batch {
            wal.append(record).unwrap();
            let _ = state.apply(record);
            progress.appended.push(record.clone());
        }
        let result = if workload.sync_every <= 1 {
            wal.commit().map(Some)
        } else if (i + 1) % workload.sync_every == 0 {
            wal.write().and_then(|_| wal.sync()).map(Some)
        } else {
            wal.write().map(|_| None)
        };
        match result {
            Ok(Some(lsn)) => progress.acknowledged = lsn,
            Ok(None) => {}
            Err(_) => return progress,
        }
        if workload.compact_after.contains(&i) {
            match wal.compact(&state) {
                Ok(report) => progress.acknowledged = report.lsn,
                Err(_) => return progress,
            }
        }
    }
    progress.finished = true;
    progress
}

/// Checks 1-3 and 5 on a crashed storage; returns the recovered state and whether a torn
/// tail was cut off.
fn recover_and_check(
    storage: &SimStorage,
    progress: &Progress,
    context: &str,
) -> (DurableState, bool) {
    let (mut wal, recovered, report) = open(storage.clone(), options())
        .unwrap_or_else(|e| panic!("{context}: recovery failed: {e}"));
    assert!(
        report.corrupt.is_empty() && report.missing.is_empty(),
        "{context}: a crash must never look like damage: {report:?}"
    );
    let r = report.last_lsn.get() as usize;
    assert!(
        report.last_lsn >= progress.acknowledged,
        "{context}: lost committed records: recovered up to {r}, acknowledged {}",
        progress.acknowledged
    );
    assert!(
        r <= progress.appended.len(),
        "{context}: recovered {r} records, only {} were appended",
        progress.appended.len()
    );
    assert_eq!(
        recovered,
        model_of(&progress.appended[..r]),
        "{context}: recovered state is not the model of records 1..={r}"
    );

    // The log goes on after recovery.
    let more = RecordGen::records(99, 4);
    for record in &more {
        wal.append(record).unwrap();
    }
    assert_eq!(wal.commit().unwrap(), Lsn(r as u64 + 4), "{context}");
    drop(wal);
    let after = storage.fork();
    after.crash();
    let (_, again, report_again) = open(after, options()).unwrap();
    let mut expected: Vec<Record> = progress.appended[..r].to_vec();
    expected.extend(more);
    assert_eq!(again, model_of(&expected), "{context}: after more commits");
    assert!(report_again.is_clean(), "{context}: {report_again:?}");
    (recovered, report.torn_tail.is_some())
}

fn sync_points(storage: SimStorage, workload: &Workload) -> u64 {
    let progress = run(&storage, workload);
    assert!(progress.finished);
    storage.sync_count()
}

/// Returns (recoveries, recoveries that cut a torn tail).
fn crash_at_every_sync_point(make: impl Fn() -> SimStorage, seed: u64) -> (usize, usize) {
    crash_at_every_sync_point_of(make, workload(seed), seed)
}

fn crash_at_every_sync_point_of(
    make: impl Fn() -> SimStorage,
    workload: Workload,
    seed: u64,
) -> (usize, usize) {
    let syncs = sync_points(make(), &workload);
    assert!(
        syncs > 12,
        "the workload should have many sync points, has {syncs}"
    );
    let mut recoveries = 0;
    let mut torn = 0;
    for k in 1..=syncs {
        for point in [CrashPoint::BeforeSync, CrashPoint::AfterSync] {
            let storage = make();
            storage.crash_at_sync(k, point);
            let progress = run(&storage, &workload);
            assert!(
                !progress.finished || (k == syncs && point == CrashPoint::AfterSync),
                "sync {k} {point:?}: no crash happened"
            );
            storage.crash();
            let context = format!("seed {seed}, crash at sync {k} {point:?}");
            let (_, was_torn) = recover_and_check(&storage, &progress, &context);
            recoveries += 1;
            torn += usize::from(was_torn);
        }
    }
    (recoveries, torn)
}

#[test]
fn a_crash_at_any_sync_point_loses_nothing_committed() {
    let (recoveries, torn) = crash_at_every_sync_point(SimStorage::new, 1);
    assert!(recoveries > 40);
    assert_eq!(torn, 0, "dropping every unsynced byte never tears a frame");
}

/// For each commit of an uninterrupted run: the number of the last sync it made (counting
/// from 1 at the storage's creation), and the LSN it made durable.
fn commit_syncs(workload: &Workload) -> Vec<(u64, Lsn)> {
    let storage = SimStorage::new();
    let (mut wal, _, _) = open(storage.clone(), options()).unwrap();
    let mut state = DurableState::new();
    let mut commits = Vec::new();
    for (i, batch) in workload.batches.iter().enumerate() {
        for record in batch {
            wal.append(record).unwrap();
            let _ = state.apply(record);
        }
        let lsn = wal.commit().unwrap();
        commits.push((storage.sync_count(), lsn));
        if workload.compact_after.contains(&i) {
            wal.compact(&state).unwrap();
        }
    }
    commits
}

#[test]
fn a_crash_drops_exactly_the_batches_whose_syncs_did_not_all_complete() {
    // Check 4: when a crash drops every unsynced byte and directory change, the recovered
    // LSN is that of the last batch whose commit completed all its syncs (the data sync,
    // and the directory sync when it started a new segment), whether or not the commit
    // got to return.
    let workload = workload(3);
    let commits = commit_syncs(&workload);
    let syncs = sync_points(SimStorage::new(), &workload);
    for k in 1..=syncs {
        for point in [CrashPoint::BeforeSync, CrashPoint::AfterSync] {
            let completed = |sync: u64| match point {
                CrashPoint::BeforeSync => sync < k,
                CrashPoint::AfterSync => sync <= k,
            };
            let expected = commits
                .iter()
                .filter(|(last_sync, _)| completed(*last_sync))
                .map(|(_, lsn)| *lsn)
                .max()
                .unwrap_or(Lsn::ZERO);
            let storage = SimStorage::new();
            storage.crash_at_sync(k, point);
            let progress = run(&storage, &workload);
            storage.crash();
            let (_, _, report) = open(storage, options()).unwrap();
            assert_eq!(report.last_lsn, expected, "crash at sync {k} {point:?}");
            assert!(report.last_lsn >= progress.acknowledged);
            assert!(
                report.torn_tail.is_none(),
                "nothing unsynced survives: {report:?}"
            );
        }
    }
}

#[test]
fn unsynced_writes_with_periodic_syncs_lose_nothing_synced_and_leave_no_hole() {
    // Durability modes `batch` and `none`: batches are written without a sync, and synced
    // now and then. Segments rotate while holding unsynced bytes (2 KiB segments), which
    // must sync the old segment first.
    for seed in 0..4 {
        let every_third = Workload {
            sync_every: 3,
            ..workload(seed)
        };
        crash_at_every_sync_point_of(SimStorage::new, every_third, seed);
        let every_fourth = Workload {
            sync_every: 4,
            ..workload(seed)
        };
        crash_at_every_sync_point_of(
            || SimStorage::with_torn_writes(seed * 31 + 7),
            every_fourth,
            seed,
        );
    }
}

#[test]
fn a_crash_with_torn_writes_at_any_sync_point_loses_nothing_committed() {
    let mut torn = 0;
    for seed in 0..12 {
        torn += crash_at_every_sync_point(|| SimStorage::with_torn_writes(seed * 7919 + 1), seed).1;
    }
    assert!(
        torn > 10,
        "torn writes should cut frames in many runs, did in {torn}"
    );
}

#[test]
fn a_crash_during_recovery_then_another_recovery_loses_nothing() {
    let mut second_crashes = 0;
    for (seed, torn) in [
        (11u64, false),
        (12, true),
        (13, true),
        (14, true),
        (15, true),
    ] {
        let make = || {
            if torn {
                SimStorage::with_torn_writes(seed)
            } else {
                SimStorage::new()
            }
        };
        let workload = workload(seed);
        let syncs = sync_points(make(), &workload);
        for k in 1..=syncs {
            for point in [CrashPoint::BeforeSync, CrashPoint::AfterSync] {
                let crashed = make();
                crashed.crash_at_sync(k, point);
                let progress = run(&crashed, &workload);
                crashed.crash();
                // An uninterrupted recovery, on a copy: what every interrupted one must
                // end up agreeing with.
                let dry = crashed.fork();
                let dry_syncs_before = dry.sync_count();
                let (_, reference, _) = open(dry.clone(), options()).unwrap();
                let recovery_syncs = dry.sync_count() - dry_syncs_before;
                for j in 1..=recovery_syncs {
                    for point2 in [CrashPoint::BeforeSync, CrashPoint::AfterSync] {
                        let storage = crashed.fork();
                        storage.crash_at_sync(j, point2);
                        let _ = open(storage.clone(), options());
                        storage.crash();
                        let context = format!(
                            "seed {seed}, crash at sync {k} {point:?}, then at recovery sync {j} {point2:?}"
                        );
                        let (recovered, _) = recover_and_check(&storage, &progress, &context);
                        assert_eq!(recovered, reference, "{context}");
                        second_crashes += 1;
                    }
                }
            }
        }
    }
    assert!(second_crashes > 100, "{second_crashes}");
}

#[test]
fn a_crash_at_every_sync_of_a_compaction_recovers_the_same_state() {
    // One big compaction (many chunks), crashed at each of its syncs.
    let mut generator = RecordGen::new(5).with_payload_bytes_max(2000);
    let records: Vec<Record> = (0..600).map(|_| generator.next_record()).collect();
    let model = model_of(&records);
    let prepare = || {
        let storage = SimStorage::with_torn_writes(5);
        let (mut wal, _, _) = open(storage.clone(), options()).unwrap();
        common::write_all(&mut wal, &records, 50);
        (storage, wal)
    };
    let (storage, mut wal) = prepare();
    let before = storage.sync_count();
    wal.compact(&model).unwrap();
    let compaction_syncs = storage.sync_count() - before;
    assert!(compaction_syncs >= 3, "{compaction_syncs}");
    for k in 1..=compaction_syncs {
        for point in [CrashPoint::BeforeSync, CrashPoint::AfterSync] {
            let (storage, mut wal) = prepare();
            storage.crash_at_sync(k, point);
            let _ = wal.compact(&model);
            drop(wal);
            storage.crash();
            let (_, recovered, report) = open(storage.clone(), options()).unwrap();
            assert_eq!(recovered, model, "crash at compaction sync {k} {point:?}");
            assert_eq!(report.last_lsn, Lsn(600));
            assert!(report.is_clean(), "{report:?}");
        }
    }
}
