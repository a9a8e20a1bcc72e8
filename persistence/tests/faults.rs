//! Injected storage faults (ENOSPC, EIO on append or sync): the failing call's error
//! reaches the caller, the log turns unhealthy and refuses more work, and reopening
//! recovers a prefix that holds everything committed before the fault.

#![allow(clippy::unwrap_used)]

mod common;

use common::{model_of, open, options, RecordGen};
use cutie_persistence::{DurableState, Error, Fault, Health, Lsn, Record, SimStorage};

struct Outcome {
    appended: Vec<Record>,
    acknowledged: Lsn,
    error: Option<Error>,
}

/// Commits batches of 3 (compacting after every 5th batch) until something fails.
fn run_until_error(
    storage: &SimStorage,
    records: &[Record],
) -> (Outcome, Option<cutie_persistence::Wal<SimStorage>>) {
    let (mut wal, _, _) = open(storage.clone(), options()).unwrap();
    let mut outcome = Outcome {
        appended: Vec::new(),
        acknowledged: Lsn::ZERO,
        error: None,
    };
    let mut state = DurableState::new();
    for (i, batch) in records.chunks(3).enumerate() {
        for record in batch {
            wal.append(record).unwrap();
            let _ = state.apply(record);
            outcome.appended.push(record.clone());
        }
        let result = wal.commit().and_then(|lsn| {
            if i % 5 == 4 {
                wal.compact(&state).map(|r| r.lsn)
            } else {
                Ok(lsn)
            }
        });
        match result {
            Ok(lsn) => outcome.acknowledged = lsn,
            Err(e) => {
                outcome.error = Some(e);
                break;
            }
        }
    }
    (outcome, Some(wal))
}

fn assert_refuses_work(wal: &mut cutie_persistence::Wal<SimStorage>, record: &Record) {
    assert!(!wal.is_healthy());
    assert!(matches!(wal.health(), Health::Failed { .. }));
    assert!(matches!(wal.append(record), Err(Error::Unhealthy { .. })));
    assert!(matches!(wal.commit(), Err(Error::Unhealthy { .. })));
    assert!(matches!(
        wal.compact(&DurableState::new()),
        Err(Error::Unhealthy { .. })
    ));
}

/// Reopens (without a crash, then after one) and checks that what comes back is the model
/// of a prefix of the appended records holding everything acknowledged, and that what the
/// first reopen returned is durable.
fn check_reopen(storage: &SimStorage, outcome: &Outcome, context: &str) {
    let (_, recovered, report) =
        open(storage.clone(), options()).unwrap_or_else(|e| panic!("{context}: {e}"));
    let r = report.last_lsn;
    assert!(
        r >= outcome.acknowledged,
        "{context}: lost acknowledged records"
    );
    assert_eq!(
        recovered,
        model_of(&outcome.appended[..r.get() as usize]),
        "{context}"
    );
    assert!(report.corrupt.is_empty(), "{context}: {report:?}");
    storage.crash();
    let (_, after_crash, report) = open(storage.clone(), options()).unwrap();
    assert_eq!(
        after_crash, recovered,
        "{context}: recovery handed out a state that was not durable"
    );
    assert_eq!(report.last_lsn, r, "{context}");
}

#[test]
fn every_failing_append_fails_the_commit_and_makes_the_log_unhealthy() {
    let records = RecordGen::records(3, 60);
    let appends = {
        let storage = SimStorage::new();
        let (outcome, _) = run_until_error(&storage, &records);
        assert!(outcome.error.is_none());
        storage.append_count()
    };
    for n in 1..=appends {
        for fault in [Fault::NoSpace, Fault::Io] {
            let storage = SimStorage::new();
            storage.fail_append(n, fault);
            let (outcome, wal) = run_until_error(&storage, &records);
            let context = format!("append {n} fails with {fault:?}");
            let error = outcome
                .error
                .as_ref()
                .unwrap_or_else(|| panic!("{context}: no error"));
            assert!(matches!(error, Error::Io { .. }), "{context}: {error}");
            if fault == Fault::NoSpace {
                assert!(error.to_string().contains("ENOSPC"), "{error}");
            }
            let mut wal = wal.unwrap();
            assert_refuses_work(&mut wal, &records[0]);
            drop(wal);
            check_reopen(&storage, &outcome, &context);
        }
    }
}

#[test]
fn every_failing_sync_fails_the_commit_and_makes_the_log_unhealthy() {
    let records = RecordGen::records(4, 60);
    let syncs = {
        let storage = SimStorage::new();
        let (outcome, _) = run_until_error(&storage, &records);
        assert!(outcome.error.is_none());
        storage.sync_count()
    };
    // Sync 1 is the first open's directory sync.
    for n in 2..=syncs {
        let storage = SimStorage::new();
        storage.fail_sync(n, Fault::Io);
        let (outcome, wal) = run_until_error(&storage, &records);
        let context = format!("sync {n} fails");
        let error = outcome
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{context}: no error"));
        assert!(
            matches!(error, Error::Io { op, .. } if op.starts_with("sync")),
            "{context}: {error}"
        );
        let mut wal = wal.unwrap();
        assert_refuses_work(&mut wal, &records[0]);
        drop(wal);
        // Without a crash, the batch whose sync failed may be read back from the page
        // cache: recovery must make it durable before handing it out.
        check_reopen(&storage, &outcome, &context);
    }
}

#[test]
fn a_failing_open_reports_the_file_and_operation() {
    let storage = SimStorage::new();
    let records = RecordGen::records(5, 10);
    let (mut wal, _, _) = open(storage.clone(), options()).unwrap();
    common::write_all(&mut wal, &records, 5);
    drop(wal);
    storage.fail_sync(2, Fault::Io);
    match open(storage.clone(), options()) {
        Err(Error::Io { op, file, .. }) => {
            assert_eq!(op, "sync");
            assert!(file.starts_with("seg-"), "{file}");
        }
        other => panic!("{:?}", other.map(|(_, _, r)| r)),
    }
    let (_, recovered, _) = open(storage, options()).unwrap();
    assert_eq!(recovered, model_of(&records));
}

#[test]
fn a_record_over_the_limit_is_refused_without_harm() {
    let storage = SimStorage::new();
    let options = cutie_persistence::WalOptions {
        record_bytes_max: 256,
        ..options()
    };
    let (mut wal, _, _) = open(storage.clone(), options.clone()).unwrap();
    let big = Record::RetainSet {
        topic: "t".into(),
        payload: vec![0; 300],
        qos: 0,
    };
    let small = Record::RetainClear { topic: "t".into() };
    assert!(matches!(
        wal.append(&big),
        Err(Error::RecordTooLarge {
            kind: "RetainSet",
            ..
        })
    ));
    assert_eq!(wal.append(&small).unwrap(), Lsn(1));
    assert!(wal.is_healthy());
    assert_eq!(wal.commit().unwrap(), Lsn(1));
}
