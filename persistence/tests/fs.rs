//! [`FsStorage`] on a real file system (a temporary directory): the same log, for real.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs::OpenOptions;
use std::io::Write;

use common::{dir, model_of, open, options, RecordGen};
use cutie_persistence::{FsStorage, Lsn, Storage};

#[test]
fn a_log_on_disk_round_trips_through_commits_compaction_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let records = RecordGen::records(21, 300);
    let (mut wal, recovered, report) = open(FsStorage::new(&root), options()).unwrap();
    assert_eq!(recovered, model_of(&[]));
    assert!(report.is_clean());
    common::write_all(&mut wal, &records[..150], 10);
    let report = wal.compact(&model_of(&records[..150])).unwrap();
    assert!(report.snapshot.is_some());
    common::write_all(&mut wal, &records[150..], 7);
    drop(wal);

    let mut names: Vec<String> = std::fs::read_dir(root.join(dir()))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names[names.len() - 1], "snap-00000000000000000150.snap");
    assert!(
        names[0].starts_with("seg-00000000000000000151"),
        "{names:?}"
    );

    let (wal, recovered, report) = open(FsStorage::new(&root), options()).unwrap();
    assert_eq!(recovered, model_of(&records));
    assert_eq!(wal.last_lsn(), Lsn(300));
    assert_eq!(
        report.snapshot_records,
        model_of(&records[..150]).records_len()
    );
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn a_torn_tail_on_disk_is_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let records = RecordGen::records(22, 20);
    let (mut wal, _, _) = open(FsStorage::new(tmp.path()), options()).unwrap();
    common::write_all(&mut wal, &records, 4);
    drop(wal);
    let mut segments: Vec<_> = std::fs::read_dir(tmp.path().join(dir()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    let last = segments.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    // Half a frame header and some garbage, as a power cut mid-write would leave.
    OpenOptions::new()
        .append(true)
        .open(last)
        .unwrap()
        .write_all(&[0x10, 0, 0, 0, 0xAB, 0xCD])
        .unwrap();
    let (_, recovered, report) = open(FsStorage::new(tmp.path()), options()).unwrap();
    assert_eq!(recovered, model_of(&records));
    assert_eq!(report.torn_tail.unwrap().bytes_dropped, 6);
    assert_eq!(std::fs::metadata(last).unwrap().len(), len);
}

#[test]
fn names_that_leave_the_directory_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut storage = FsStorage::new(tmp.path());
    storage.create_dir_all("shard-0").unwrap();
    for name in ["../escape", "a/b", "", ".."] {
        assert!(storage.create("shard-0", name).is_err(), "{name:?}");
    }
    assert!(storage.create_dir_all("../outside").is_err());
    assert!(storage.create_dir_all("/abs").is_err());
}
