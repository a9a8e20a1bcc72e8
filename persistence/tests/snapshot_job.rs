//! Compaction beside commits: a [`SnapshotJob`] is written while the log goes on
//! committing into a new segment, and a crash at any sync point of either (the snapshot's
//! chunk syncs, its rename, the removal of the segments it replaces, the commits around
//! it) recovers every committed record and nothing but a prefix of what was appended.
//!
//! The job's write runs here on the test thread between the log's operations, in orders
//! that cover each place a commit can fall relative to the job (before it is written,
//! between its write and its end, after it); the last test runs it on another thread.

#![allow(clippy::unwrap_used)]

mod common;

use common::{model_of, open, options, RecordGen, Rng};
use cutie_persistence::{
    CompactReport, CrashPoint, DurableState, Error, Lsn, Record, SimStorage, SnapshotJob,
    WalOptions,
};

/// One step of a schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Append the next batch and commit it.
    Commit,
    /// `begin_snapshot`, keeping an image of the state as of its LSN.
    Begin,
    /// Write the job (as the snapshot thread would).
    Write,
    /// Hand the outcome back with `end_snapshot`.
    End,
}

use Step::{Begin, Commit, End, Write};

/// Small chunks and syncs, so that every snapshot has several sync points.
fn job_options() -> WalOptions {
    WalOptions {
        snapshot_sync_bytes: 512,
        ..options()
    }
}

/// Fixed schedules, then random ones: every order of commits around a job.
fn schedules() -> Vec<Vec<Step>> {
    let mut all = vec![
        vec![
            Commit, Commit, Begin, Commit, Commit, Write, Commit, End, Commit,
        ],
        vec![
            Commit, Begin, Write, End, Commit, Begin, Commit, Write, End, Commit,
        ],
        vec![
            Commit, Commit, Begin, Write, Commit, Commit, End, Begin, Write, End,
        ],
        vec![
            Commit, Begin, Commit, Write, End, Commit, Begin, Commit, Commit, Write, Commit, End,
        ],
    ];
    let mut rng = Rng(13);
    for _ in 0..4 {
        let mut steps = vec![Commit];
        let mut phase = 0; // 0: no job, 1: begun, 2: written
        while steps.len() < 14 || phase != 0 {
            let step = if rng.chance(50) {
                Commit
            } else {
                match phase {
                    0 => Begin,
                    1 => Write,
                    _ => End,
                }
            };
            if step != Commit {
                phase = (phase + 1) % 3;
            }
            steps.push(step);
        }
        all.push(steps);
    }
    all
}

#[derive(Debug, Default)]
struct Progress {
    appended: Vec<Record>,
    /// LSN of the last commit (or `begin_snapshot`, which commits) that returned `Ok`.
    acknowledged: Lsn,
    finished: bool,
}

/// Runs `steps` until a storage call fails (the planned crash).
fn run(storage: &SimStorage, steps: &[Step], seed: u64) -> Progress {
    let mut progress = Progress::default();
    let Ok((mut wal, _, _)) = open(storage.clone(), job_options()) else {
        return progress;
    };
    let mut generator = RecordGen::new(seed).with_payload_bytes_max(150);
    let mut state = DurableState::new();
    let mut job: Option<(SnapshotJob, DurableState)> = None;
    let mut outcome: Option<Result<CompactReport, Error>> = None;
    for (i, step) in steps.iter().enumerate() {
        match step {
            Commit => {
                for _ in 0..1 + i % 4 {
                    let record = generator.next_record();
                    wal.append(&record).unwrap();
                    let _ = state.apply(&record);
                    progress.appended.push(record);
                }
                match wal.commit() {
                    Ok(lsn) => progress.acknowledged = lsn,
                    Err(_) => return progress,
                }
            }
            Begin => match wal.begin_snapshot() {
                Ok(Some(begun)) => {
                    progress.acknowledged = begun.lsn();
                    job = Some((begun, state.clone()));
                }
                Ok(None) => {}
                Err(_) => return progress,
            },
            Write => {
                if let Some((begun, image)) = &job {
                    let result = begun.write(&mut storage.clone(), image);
                    if result.is_err() {
                        return progress;
                    }
                    outcome = Some(result);
                }
            }
            End => {
                if let (Some((begun, _)), Some(result)) = (job.take(), outcome.take()) {
                    if wal.end_snapshot(begun, result).is_err() {
                        return progress;
                    }
                }
            }
        }
    }
    progress.finished = true;
    progress
}

fn recover_and_check(storage: &SimStorage, progress: &Progress, context: &str) {
    let (mut wal, recovered, report) = open(storage.clone(), job_options())
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
        "{context}: recovered too much"
    );
    assert_eq!(
        recovered,
        model_of(&progress.appended[..r]),
        "{context}: recovered state is not the model of records 1..={r}"
    );
    // The log goes on, and a second recovery (after an inline compaction) agrees.
    let more = RecordGen::records(77, 3);
    let mut state = recovered;
    for record in &more {
        wal.append(record).unwrap();
        let _ = state.apply(record);
    }
    wal.compact(&state).unwrap();
    drop(wal);
    storage.crash();
    let (_, again, _) = open(storage.clone(), job_options()).unwrap();
    assert_eq!(
        again, state,
        "{context}: after more commits and a compaction"
    );
}

fn crash_everywhere(make: impl Fn() -> SimStorage) -> usize {
    let mut recoveries = 0;
    for (n, steps) in schedules().iter().enumerate() {
        let seed = n as u64 + 1;
        let clean = make();
        let progress = run(&clean, steps, seed);
        assert!(progress.finished, "schedule {n}: {steps:?}");
        let syncs = clean.sync_count();
        for k in 1..=syncs {
            for point in [CrashPoint::BeforeSync, CrashPoint::AfterSync] {
                let storage = make();
                storage.crash_at_sync(k, point);
                let progress = run(&storage, steps, seed);
                storage.crash();
                let context =
                    format!("schedule {n} {steps:?}, crash at sync {k}/{syncs} {point:?}");
                recover_and_check(&storage, &progress, &context);
                recoveries += 1;
            }
        }
    }
    recoveries
}

#[test]
fn a_crash_at_any_sync_of_a_snapshot_written_beside_commits_loses_nothing() {
    let recoveries = crash_everywhere(SimStorage::new);
    assert!(recoveries > 200, "{recoveries}");
}

#[test]
fn a_crash_with_torn_writes_around_a_snapshot_job_loses_nothing() {
    for seed in [3, 4] {
        crash_everywhere(|| SimStorage::with_torn_writes(seed));
    }
}

#[test]
fn commits_during_a_snapshot_job_go_to_a_new_segment_it_leaves_alone() {
    let storage = SimStorage::new();
    let (mut wal, _, _) = open(storage.clone(), job_options()).unwrap();
    let records = RecordGen::records(9, 40);
    let mut state = DurableState::new();
    for record in &records[..30] {
        wal.append(record).unwrap();
        let _ = state.apply(record);
    }
    let job = wal.begin_snapshot().unwrap().unwrap();
    assert_eq!(job.lsn(), Lsn(30));
    assert!(wal.snapshot_in_flight());
    let image = state.clone();
    for record in &records[30..] {
        wal.append(record).unwrap();
        let _ = state.apply(record);
        wal.commit().unwrap();
    }
    let result = job.write(&mut storage.clone(), &image);
    let report = wal.end_snapshot(job, result).unwrap();
    assert_eq!(report.lsn, Lsn(30));
    assert!(!wal.snapshot_in_flight());
    assert_eq!(wal.snapshot_lsn(), Lsn(30));
    assert_eq!(
        common::files(&storage),
        vec![
            cutie_persistence::frame::segment_name(Lsn(31)),
            cutie_persistence::frame::snapshot_name(Lsn(30)),
        ]
    );
    drop(wal);
    storage.crash();
    let (_, recovered, report) = open(storage.clone(), job_options()).unwrap();
    assert_eq!(recovered, state);
    assert_eq!(report.last_lsn, Lsn(40));
}

#[test]
#[should_panic(expected = "begin_snapshot while a snapshot job is out")]
fn one_snapshot_job_at_a_time() {
    let (mut wal, _, _) = open(SimStorage::new(), job_options()).unwrap();
    wal.append(&RecordGen::records(1, 1)[0]).unwrap();
    let _job = wal.begin_snapshot().unwrap();
    wal.append(&RecordGen::records(2, 1)[0]).unwrap();
    let _second = wal.begin_snapshot();
}

#[test]
fn a_snapshot_job_on_another_thread_while_commits_go_on() {
    let storage = SimStorage::new();
    let (mut wal, _, _) = open(storage.clone(), job_options()).unwrap();
    let mut generator = RecordGen::new(21).with_payload_bytes_max(400);
    let mut state = DurableState::new();
    for _ in 0..300 {
        let record = generator.next_record();
        wal.append(&record).unwrap();
        let _ = state.apply(&record);
    }
    let job = wal.begin_snapshot().unwrap().unwrap();
    let image = state.clone();
    let writer = {
        let mut storage = storage.clone();
        std::thread::spawn(move || {
            let result = job.write(&mut storage, &image);
            (job, result)
        })
    };
    for _ in 0..50 {
        for _ in 0..4 {
            let record = generator.next_record();
            wal.append(&record).unwrap();
            let _ = state.apply(&record);
        }
        wal.commit().unwrap();
    }
    let (job, result) = writer.join().unwrap();
    wal.end_snapshot(job, result).unwrap();
    drop(wal);
    storage.crash();
    let (_, recovered, report) = open(storage.clone(), job_options()).unwrap();
    assert_eq!(recovered, state);
    assert_eq!(report.last_lsn, Lsn(500));
    assert!(report.is_clean(), "{report:?}");
}
