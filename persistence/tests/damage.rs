//! Damaged files: a tail cut at every byte, a single bit flipped anywhere, invalid
//! archives with good checksums, missing segments, damaged snapshots, foreign files.

#![allow(clippy::unwrap_used)]

mod common;

use common::{dir, files, frame_offsets, model_of, open, options, skip_corrupt, RecordGen};
use cutie_persistence::frame::{push_frame, segment_name, FILE_HEADER_BYTES};
use cutie_persistence::{Damage, Error, Lsn, Record, SimStorage, Storage, WalOptions};

/// A log of `n` records in one segment, committed in batches of 3; returns the storage, the
/// records and the segment's name.
fn one_segment(n: usize, payload_bytes_max: u64) -> (SimStorage, Vec<Record>, String) {
    let mut generator = RecordGen::new(n as u64).with_payload_bytes_max(payload_bytes_max);
    let records: Vec<Record> = (0..n).map(|_| generator.next_record()).collect();
    let storage = SimStorage::new();
    let (mut wal, _, _) = open(
        storage.clone(),
        WalOptions {
            segment_bytes_max: 1 << 20,
            ..options()
        },
    )
    .unwrap();
    common::write_all(&mut wal, &records, 3);
    drop(wal);
    assert_eq!(files(&storage), vec![segment_name(Lsn(1))]);
    (storage, records, segment_name(Lsn(1)))
}

/// A log over several segments (small segments, batches of 2).
fn several_segments(n: usize) -> (SimStorage, Vec<Record>, Vec<String>) {
    let mut generator = RecordGen::new(42).with_payload_bytes_max(60);
    let records: Vec<Record> = (0..n).map(|_| generator.next_record()).collect();
    let storage = SimStorage::new();
    let small = WalOptions {
        segment_bytes_max: 600,
        ..options()
    };
    let (mut wal, _, _) = open(storage.clone(), small).unwrap();
    common::write_all(&mut wal, &records, 2);
    drop(wal);
    let segments = files(&storage);
    assert!(segments.len() >= 3, "{segments:?}");
    (storage, records, segments)
}

#[test]
fn a_tail_cut_at_any_byte_recovers_exactly_the_records_before_the_cut() {
    let (storage, records, segments) = several_segments(40);
    let last = segments.last().unwrap().clone();
    let first_lsn = match cutie_persistence::frame::parse_name(&last) {
        cutie_persistence::frame::FileName::Segment(lsn) => lsn.get() as usize,
        other => panic!("{other:?}"),
    };
    let bytes = storage.durable_content(&dir(), &last).unwrap();
    let offsets = frame_offsets(&bytes);
    assert_eq!(*offsets.last().unwrap(), bytes.len());
    for cut in 0..=bytes.len() {
        let damaged = storage.fork();
        damaged.put_durable(&dir(), &last, &bytes[..cut]);
        let context = format!("cut at {cut} of {}", bytes.len());
        let (mut wal, recovered, report) =
            open(damaged.clone(), options()).unwrap_or_else(|e| panic!("{context}: {e}"));
        // Records of earlier segments, plus the frames of the last one that end <= cut.
        let whole_frames = offsets[1..].iter().filter(|end| **end <= cut).count();
        let kept = first_lsn - 1 + whole_frames;
        assert_eq!(report.last_lsn, Lsn(kept as u64), "{context}");
        assert_eq!(recovered, model_of(&records[..kept]), "{context}");
        let at_boundary = cut == FILE_HEADER_BYTES || offsets.contains(&cut);
        assert_eq!(
            report.torn_tail.is_some(),
            !at_boundary,
            "{context}: {report:?}"
        );
        assert!(report.corrupt.is_empty(), "{context}");
        // The log goes on, and a second open is clean.
        wal.append(&records[0]).unwrap();
        assert_eq!(wal.commit().unwrap(), Lsn(kept as u64 + 1), "{context}");
        drop(wal);
        let (_, again, report) = open(damaged, options()).unwrap();
        let mut expected = records[..kept].to_vec();
        expected.push(records[0].clone());
        assert_eq!(again, model_of(&expected), "{context}");
        assert!(report.is_clean(), "{context}: {report:?}");
    }
}

#[test]
fn zeroed_space_after_the_last_record_is_a_torn_tail() {
    let (storage, records, name) = one_segment(5, 50);
    let mut bytes = storage.durable_content(&dir(), &name).unwrap();
    let len = bytes.len() as u64;
    bytes.extend_from_slice(&[0u8; 4096]);
    storage.put_durable(&dir(), &name, &bytes);
    let (_, recovered, report) = open(storage, options()).unwrap();
    assert_eq!(recovered, model_of(&records));
    let torn = report.torn_tail.unwrap();
    assert_eq!((torn.offset, torn.bytes_dropped), (len, 4096));
}

fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut damaged = bytes.to_vec();
    damaged[bit / 8] ^= 1 << (bit % 8);
    damaged
}

#[test]
fn a_flipped_bit_anywhere_in_a_segment_is_detected() {
    let (storage, records, name) = one_segment(8, 24);
    let bytes = storage.durable_content(&dir(), &name).unwrap();
    let offsets = frame_offsets(&bytes);
    let last_frame = offsets[offsets.len() - 2];
    for bit in 0..bytes.len() * 8 {
        let byte = bit / 8;
        let damaged_bytes = flip(&bytes, bit);
        let damaged = storage.fork();
        damaged.put_durable(&dir(), &name, &damaged_bytes);
        let context = format!("bit {bit} (byte {byte} of {})", bytes.len());
        match open(damaged.clone(), options()) {
            Ok((_, recovered, report)) => {
                // Only the last record may go, as a torn tail, never as a different record.
                assert!(byte >= last_frame, "{context}: accepted {report:?}");
                assert_eq!(
                    recovered,
                    model_of(&records[..records.len() - 1]),
                    "{context}"
                );
                assert_eq!(
                    report.torn_tail.unwrap().offset,
                    last_frame as u64,
                    "{context}"
                );
            }
            Err(Error::Corrupt {
                file,
                offset,
                damage,
                ..
            }) => {
                assert!(
                    byte < last_frame,
                    "{context}: last record reported as {damage}"
                );
                assert_eq!(file, name, "{context}");
                // The error names the frame (or header) holding the flipped bit.
                let frame_start = if byte < FILE_HEADER_BYTES {
                    0
                } else {
                    *offsets.iter().rev().find(|o| **o <= byte).unwrap()
                };
                assert_eq!(offset, frame_start as u64, "{context}: {damage}");
                // Nothing was changed: the damage is found again next time.
                assert_eq!(files(&damaged), vec![name.clone()], "{context}");
                assert_eq!(
                    damaged.durable_content(&dir(), &name).unwrap(),
                    damaged_bytes,
                    "{context}"
                );
            }
            Err(e) => panic!("{context}: unexpected error {e}"),
        }
    }
}

#[test]
fn skip_corrupt_keeps_the_records_before_the_damage_and_the_damaged_file_aside() {
    let (storage, records, name) = one_segment(8, 24);
    let bytes = storage.durable_content(&dir(), &name).unwrap();
    let offsets = frame_offsets(&bytes);
    let last_frame = offsets[offsets.len() - 2];
    for bit in 0..last_frame * 8 {
        let byte = bit / 8;
        let damaged_bytes = flip(&bytes, bit);
        let damaged = storage.fork();
        damaged.put_durable(&dir(), &name, &damaged_bytes);
        let context = format!("bit {bit}");
        let (mut wal, recovered, report) = open(damaged.clone(), skip_corrupt()).unwrap();
        let kept = offsets[1..].iter().filter(|end| **end <= byte).count();
        let kept = if byte < FILE_HEADER_BYTES { 0 } else { kept };
        assert_eq!(recovered, model_of(&records[..kept]), "{context}");
        assert_eq!(report.last_lsn, Lsn(kept as u64), "{context}");
        assert_eq!(report.corrupt.len(), 1, "{context}");
        let kept_as = &report.corrupt[0].kept_as;
        assert_eq!(kept_as, &format!("{name}.corrupt-1"));
        assert!(report.lost_records());
        // The damaged file is kept, byte for byte, and a snapshot holds what was recovered.
        assert_eq!(
            damaged.durable_content(&dir(), kept_as).unwrap(),
            damaged_bytes,
            "{context}"
        );
        let snapshot = report.snapshot_written.clone().unwrap();
        assert_eq!(
            files(&damaged),
            vec![kept_as.clone(), snapshot],
            "{context}"
        );
        // The log goes on, and the next open (without skip_corrupt) is clean.
        wal.append(&records[0]).unwrap();
        wal.commit().unwrap();
        drop(wal);
        let (_, again, report) = open(damaged, options()).unwrap();
        let mut expected = records[..kept].to_vec();
        expected.push(records[0].clone());
        assert_eq!(again, model_of(&expected), "{context}");
        assert!(report.is_clean(), "{context}: {report:?}");
    }
}

#[test]
fn damage_in_an_earlier_segment_is_never_a_torn_tail() {
    let (storage, records, segments) = several_segments(40);
    let first = &segments[0];
    let next_first = match cutie_persistence::frame::parse_name(&segments[1]) {
        cutie_persistence::frame::FileName::Segment(lsn) => lsn.get() as usize,
        other => panic!("{other:?}"),
    };
    let bytes = storage.durable_content(&dir(), first).unwrap();
    let offsets = frame_offsets(&bytes);
    // Flip a bit in the very last byte of the first segment: in the last segment this
    // would be a torn tail, here it is damage.
    let damaged_bytes = flip(&bytes, bytes.len() * 8 - 1);
    storage.put_durable(&dir(), first, &damaged_bytes);
    match open(storage.clone(), options()) {
        Err(Error::Corrupt { file, offset, .. }) => {
            assert_eq!(&file, first);
            assert_eq!(offset, offsets[offsets.len() - 2] as u64);
        }
        other => panic!("{:?}", other.map(|(_, _, r)| r)),
    }
    // Skipping: the records of the damaged frame are lost, the later segments replayed.
    let (_, recovered, report) = open(storage.clone(), skip_corrupt()).unwrap();
    let lost = next_first - 1;
    let mut expected = records[..lost - 1].to_vec();
    expected.extend_from_slice(&records[lost..]);
    assert_eq!(recovered, model_of(&expected));
    assert_eq!(report.missing, vec![(Lsn(lost as u64), Lsn(lost as u64))]);
    assert_eq!(report.last_lsn, Lsn(records.len() as u64));
}

#[test]
fn a_missing_segment_is_an_error_naming_the_lost_records() {
    let (storage, records, segments) = several_segments(40);
    let mut s = storage.clone();
    s.remove(&dir(), &segments[1]).unwrap();
    s.sync_dir(&dir()).unwrap();
    let lsn_of = |name: &str| match cutie_persistence::frame::parse_name(name) {
        cutie_persistence::frame::FileName::Segment(lsn) => lsn,
        other => panic!("{other:?}"),
    };
    let (from, to) = (lsn_of(&segments[1]), Lsn(lsn_of(&segments[2]).get() - 1));
    match open(storage.clone(), options()) {
        Err(Error::MissingRecords {
            file,
            from: f,
            to: t,
            ..
        }) => {
            assert_eq!(file, segments[2]);
            assert_eq!((f, t), (from, to));
        }
        other => panic!("{:?}", other.map(|(_, _, r)| r)),
    }
    let (_, recovered, report) = open(storage, skip_corrupt()).unwrap();
    let mut expected = records[..from.get() as usize - 1].to_vec();
    expected.extend_from_slice(&records[to.get() as usize..]);
    assert_eq!(recovered, model_of(&expected));
    assert_eq!(report.missing, vec![(from, to)]);
}

#[test]
fn a_checksummed_frame_that_is_not_a_record_is_damage_even_at_the_end() {
    let (storage, records, name) = one_segment(4, 30);
    let bytes = storage.durable_content(&dir(), &name).unwrap();
    for at_end in [true, false] {
        let mut forged = bytes.clone();
        let mut frame = Vec::new();
        push_frame(&[0xEE; 24], &mut frame);
        if at_end {
            forged.extend_from_slice(&frame);
        } else {
            forged.splice(FILE_HEADER_BYTES..FILE_HEADER_BYTES, frame);
        }
        let damaged = storage.fork();
        damaged.put_durable(&dir(), &name, &forged);
        match open(damaged.clone(), options()) {
            Err(Error::Corrupt {
                damage: Damage::InvalidArchive(_),
                offset,
                ..
            }) => {
                let expected = if at_end {
                    bytes.len()
                } else {
                    FILE_HEADER_BYTES
                };
                assert_eq!(offset, expected as u64);
            }
            other => panic!("{:?}", other.map(|(_, _, r)| r)),
        }
        let (_, recovered, _) = open(damaged, skip_corrupt()).unwrap();
        let kept = if at_end { records.len() } else { 0 };
        assert_eq!(recovered, model_of(&records[..kept]));
    }
}

#[test]
fn a_damaged_snapshot_stops_the_open_and_skipping_falls_back_to_older_state() {
    let records = RecordGen::records(9, 30);
    let storage = SimStorage::new();
    let (mut wal, _, _) = open(storage.clone(), options()).unwrap();
    common::write_all(&mut wal, &records[..20], 5);
    wal.compact(&model_of(&records[..20])).unwrap();
    common::write_all(&mut wal, &records[20..], 5);
    drop(wal);
    let snapshot = files(&storage)
        .into_iter()
        .find(|f| f.ends_with(".snap"))
        .unwrap();
    let bytes = storage.durable_content(&dir(), &snapshot).unwrap();
    for bit in (0..bytes.len() * 8).step_by(7) {
        let damaged = storage.fork();
        damaged.put_durable(&dir(), &snapshot, &flip(&bytes, bit));
        match open(damaged.clone(), options()) {
            Err(Error::Corrupt { file, .. }) => assert_eq!(file, snapshot, "bit {bit}"),
            other => panic!("bit {bit}: {:?}", other.map(|(_, _, r)| r)),
        }
        // No older snapshot and the segments it replaced are gone: records 1..=20 are
        // lost, 21..=30 replayed.
        let (_, recovered, report) = open(damaged.clone(), skip_corrupt()).unwrap();
        assert_eq!(recovered, model_of(&records[20..]), "bit {bit}");
        assert_eq!(report.missing, vec![(Lsn(1), Lsn(20))]);
        assert_eq!(report.corrupt[0].file, snapshot);
        let (_, again, report) = open(damaged, options()).unwrap();
        assert_eq!(again, recovered);
        assert!(report.is_clean());
    }
    let (_, recovered, _) = open(storage, options()).unwrap();
    assert_eq!(recovered, model_of(&records));
}

#[test]
fn files_of_another_shard_or_format_version_are_refused_even_when_skipping() {
    let (storage, _, name) = one_segment(3, 10);
    for skip in [false, true] {
        let options = WalOptions {
            shard_id: 7,
            skip_corrupt: skip,
            ..options()
        };
        match open(storage.clone(), options) {
            Err(Error::WrongShard {
                found: 0,
                expected: 7,
                ..
            }) => {}
            other => panic!("{:?}", other.map(|(_, _, r)| r)),
        }
    }
    let mut bytes = storage.durable_content(&dir(), &name).unwrap();
    bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
    let crc = crc32c_bytes(&bytes[..36]);
    bytes[36..40].copy_from_slice(&crc.to_le_bytes());
    storage.put_durable(&dir(), &name, &bytes);
    match open(storage, skip_corrupt()) {
        Err(Error::UnsupportedVersion { found: 99, .. }) => {}
        other => panic!("{:?}", other.map(|(_, _, r)| r)),
    }
}

/// Bitwise CRC32C (Castagnoli, reflected 0x82F63B78): independent of the crate under test.
fn crc32c_bytes(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_leftover_temporary_snapshot_is_removed_and_strangers_are_left_alone() {
    let (storage, records, _) = one_segment(3, 10);
    storage.put_durable(
        &dir(),
        "snap-00000000000000000003.snap.tmp",
        b"half a snapshot",
    );
    storage.put_durable(&dir(), "NOTES.txt", b"an operator's file");
    storage.put_durable(
        &dir(),
        "seg-00000000000000000001.wal.corrupt-1",
        b"old damage",
    );
    let (_, recovered, report) = open(storage.clone(), options()).unwrap();
    assert_eq!(recovered, model_of(&records));
    assert_eq!(
        report.removed,
        vec!["snap-00000000000000000003.snap.tmp".to_string()]
    );
    assert_eq!(report.unknown_files, vec!["NOTES.txt".to_string()]);
    assert!(files(&storage).contains(&"NOTES.txt".to_string()));
    assert!(files(&storage).contains(&"seg-00000000000000000001.wal.corrupt-1".to_string()));
}

#[test]
fn a_header_cut_short_in_a_new_last_segment_is_a_torn_creation() {
    let (storage, records, segments) = several_segments(20);
    let last = segments.last().unwrap();
    let first = match cutie_persistence::frame::parse_name(last) {
        cutie_persistence::frame::FileName::Segment(lsn) => lsn.get() as usize,
        other => panic!("{other:?}"),
    };
    let bytes = storage.durable_content(&dir(), last).unwrap();
    storage.put_durable(&dir(), last, &bytes[..FILE_HEADER_BYTES - 3]);
    let (_, recovered, report) = open(storage.clone(), options()).unwrap();
    assert_eq!(recovered, model_of(&records[..first - 1]));
    assert_eq!(report.removed, vec![last.clone()]);
    assert!(!files(&storage).contains(last));
}

#[test]
fn a_crash_while_recovery_skips_damage_then_another_recovery_agrees() {
    use cutie_persistence::CrashPoint;
    let (storage, _, segments) = several_segments(40);
    // The first segment, and the newest one with at least three frames (the offsets
    // end with the end of the last frame).
    let newest = segments
        .iter()
        .rev()
        .find(|name| frame_offsets(&storage.durable_content(&dir(), name).unwrap()).len() > 3)
        .unwrap()
        .clone();
    for victim in [segments[0].clone(), newest] {
        let bytes = storage.durable_content(&dir(), &victim).unwrap();
        let offsets = frame_offsets(&bytes);
        // A bit in the second frame: valid frames follow, so it is damage, not a tear.
        let damaged = storage.fork();
        damaged.put_durable(&dir(), &victim, &flip(&bytes, offsets[1] * 8 + 77));
        let dry = damaged.fork();
        let before = dry.sync_count();
        let (_, reference, report) = open(dry.clone(), skip_corrupt()).unwrap();
        assert!(
            report.lost_records() && report.snapshot_written.is_some(),
            "{victim}: {report:?}"
        );
        let recovery_syncs = dry.sync_count() - before;
        for (j, seed) in (1..=recovery_syncs).flat_map(|j| (0..6).map(move |s| (j, s))) {
            for point in [CrashPoint::BeforeSync, CrashPoint::AfterSync] {
                let context = format!(
                    "damage in {victim}, crash at recovery sync {j} {point:?}, torn seed {seed}"
                );
                let crashed = damaged.fork();
                // Seed 0: every unsynced change is lost; others keep a random prefix of
                // the unsynced directory changes and bytes.
                crashed.set_torn_writes((seed > 0).then_some(seed));
                crashed.crash_at_sync(j, point);
                let _ = open(crashed.clone(), skip_corrupt());
                crashed.crash();
                let (_, recovered, _) = open(crashed.clone(), skip_corrupt())
                    .unwrap_or_else(|e| panic!("{context}: {e}"));
                assert_eq!(recovered, reference, "{context}");
                // The damaged bytes are still somewhere: in place or kept aside.
                assert!(
                    files(&crashed).iter().any(|f| f.starts_with(&victim)),
                    "{context}"
                );
                let (_, again, report) = open(crashed, options()).unwrap();
                assert_eq!(again, reference, "{context}");
                assert!(report.is_clean(), "{context}: {report:?}");
            }
        }
    }
}

mod arbitrary_bytes {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Whatever a segment or snapshot holds, open returns, never panics; and without
        /// skip_corrupt it either accepts the valid records or reports an error.
        #[test]
        fn open_never_panics_on_arbitrary_file_contents(
            garbage in proptest::collection::vec(any::<u8>(), 0..400),
            keep_header in any::<bool>(),
            as_snapshot in any::<bool>(),
            splice_at in any::<prop::sample::Index>(),
        ) {
            let (storage, _, name) = one_segment(4, 20);
            let mut bytes = storage.durable_content(&dir(), &name).unwrap();
            let cut = if keep_header {
                FILE_HEADER_BYTES + splice_at.index(bytes.len() - FILE_HEADER_BYTES + 1)
            } else {
                0
            };
            bytes.truncate(cut);
            bytes.extend_from_slice(&garbage);
            let target = if as_snapshot {
                "snap-00000000000000000002.snap".to_string()
            } else {
                name
            };
            storage.put_durable(&dir(), &target, &bytes);
            let _ = open(storage.fork(), options());
            let _ = open(storage, skip_corrupt());
        }
    }
}
