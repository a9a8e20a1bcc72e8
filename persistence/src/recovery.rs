//! Opening a log: [`Wal::open`] loads the newest valid snapshot, replays the segments after
//! it, repairs a torn tail and reports what it found in a [`RecoveryReport`].
//!
//! Recovery runs in two phases. The first only reads: it classifies every file, rebuilds
//! the state and decides what to change. If it finds damage it may not skip, it returns
//! the error having changed nothing, so the same damage is found again on the next try and
//! nothing is lost silently. The second phase changes the directory in an order that is
//! safe to interrupt at any point (see `FORMAT.md`): sync what was read, cut the torn tail,
//! write a snapshot if loss was accepted, move damaged files aside, and only then remove
//! files that a durable snapshot replaces.

use tracing::{info, warn};

use crate::error::{Damage, Error};
use crate::frame::{
    corrupt_name, parse_name, read_frame, FileHeader, FileKind, FileName, FrameRead, HeaderError,
    FILE_HEADER_BYTES, FORMAT_VERSION,
};
use crate::record::{Lsn, RecordDecoder, RecordEncoder};
use crate::state::DurableState;
use crate::storage::Storage;
use crate::wal::{remove_replaced, write_snapshot, Wal, WalOptions};

/// A torn write cut off at the end of the last segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment.
    pub file: String,
    /// Where the first incomplete frame started: the file now ends here (or was removed
    /// when nothing valid was left in it).
    pub offset: u64,
    /// Bytes dropped.
    pub bytes_dropped: u64,
}

/// Damage found and, with `skip_corrupt` (or because a snapshot already covered it),
/// accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corruption {
    /// The damaged file.
    pub file: String,
    /// Byte offset of the damage.
    pub offset: u64,
    /// What was wrong.
    pub damage: Damage,
    /// The name the file was kept under.
    pub kept_as: String,
    /// Whether a snapshot already held every record of the file (nothing was lost).
    pub covered: bool,
}

/// What [`Wal::open`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The snapshot the state was loaded from, and its LSN.
    pub snapshot: Option<(String, Lsn)>,
    /// Records read from that snapshot.
    pub snapshot_records: u64,
    /// Segments read.
    pub segments_read: usize,
    /// Records applied from segments (after the snapshot).
    pub records_replayed: u64,
    /// Bytes of the segments read (what compaction would reclaim).
    pub segment_bytes: u64,
    /// LSN of the last record recovered: the next append gets the one after.
    pub last_lsn: Lsn,
    /// A torn tail that was cut off.
    pub torn_tail: Option<TornTail>,
    /// Damaged files moved aside.
    pub corrupt: Vec<Corruption>,
    /// Ranges of LSNs accepted as lost (`skip_corrupt`).
    pub missing: Vec<(Lsn, Lsn)>,
    /// A snapshot written to make accepted loss permanent.
    pub snapshot_written: Option<String>,
    /// Files removed: temporary files, and segments and snapshots a newer snapshot replaces.
    pub removed: Vec<String>,
    /// Names in the directory that are not ours, left alone.
    pub unknown_files: Vec<String>,
    /// Records that did not fit the state (see [`Misfit`](crate::Misfit)).
    pub misfits: u64,
}

impl RecoveryReport {
    /// No torn tail, no damage, nothing missing.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.torn_tail.is_none() && self.corrupt.is_empty() && self.missing.is_empty()
    }

    /// Whether some records were lost to damage (accepted with `skip_corrupt`).
    #[must_use]
    pub fn lost_records(&self) -> bool {
        !self.missing.is_empty() || self.corrupt.iter().any(|c| !c.covered)
    }
}

/// A problem with one snapshot file.
enum SnapshotProblem {
    Damaged { offset: u64, damage: Damage },
    Fatal(Error),
}

/// How reading one segment ended.
enum SegmentEnd {
    /// Every byte was a valid frame.
    Clean,
    /// A torn write from `offset` to the end.
    Torn { offset: u64 },
    /// Damage at `offset`.
    Damaged { offset: u64, damage: Damage },
}

/// A segment read in phase one.
struct SegmentRead {
    name: String,
    /// LSN after its last valid record.
    end: Lsn,
    /// Valid records in it.
    records: u64,
}

/// What phase two must do.
#[derive(Default)]
struct Plan {
    /// Segments to keep relying on: sync them.
    sync: Vec<String>,
    /// (segment, new length): cut a torn tail.
    truncate: Vec<(String, u64)>,
    /// Files that hold no record: remove.
    remove_empty: Vec<String>,
    /// (file, new name): damaged files to keep aside.
    aside: Vec<(String, String)>,
    /// Clean segments read whole, with the LSN after their last record.
    segments: Vec<(String, Lsn)>,
    /// Snapshots older than the one loaded, and temporary files.
    obsolete: Vec<String>,
    /// Loss was accepted: write a snapshot of the recovered state.
    snapshot_needed: bool,
}

fn read_segment(
    bytes: &[u8],
    header_len: usize,
    first: Lsn,
    is_last: bool,
    decoder: &mut RecordDecoder,
    mut apply: impl FnMut(Lsn, &crate::record::Record),
) -> (Lsn, u64, SegmentEnd) {
    let mut lsn = first;
    let mut records = 0;
    let mut offset = header_len;
    loop {
        match read_frame(bytes, offset) {
            FrameRead::End => return (lsn, records, SegmentEnd::Clean),
            FrameRead::Frame { bytes: frame, next } => match decoder.decode(frame) {
                Ok(record) => {
                    apply(lsn, &record);
                    lsn = lsn.next();
                    records += 1;
                    offset = next;
                }
                Err(e) => {
                    let damage = Damage::InvalidArchive(e.to_string());
                    return (lsn, records, damaged(offset, damage));
                }
            },
            FrameRead::Defect(defect) => {
                let end = if is_last && !valid_frame_after(bytes, offset + 1, decoder) {
                    SegmentEnd::Torn {
                        offset: offset as u64,
                    }
                } else {
                    damaged(offset, Damage::Frame(defect))
                };
                return (lsn, records, end);
            }
        }
    }
}

fn damaged(offset: usize, damage: Damage) -> SegmentEnd {
    SegmentEnd::Damaged {
        offset: offset as u64,
        damage,
    }
}

/// Whether a valid frame holding a valid record starts anywhere at or after `from`: the
/// difference between a torn tail (nothing valid after the first bad byte) and damage in
/// the middle.
fn valid_frame_after(bytes: &[u8], from: usize, decoder: &mut RecordDecoder) -> bool {
    (from..bytes.len()).any(|p| match read_frame(bytes, p) {
        FrameRead::Frame { bytes: frame, .. } => decoder.decode(frame).is_ok(),
        _ => false,
    })
}

fn load_snapshot(
    bytes: &[u8],
    name_lsn: Lsn,
    options: &WalOptions,
    dir: &str,
    name: &str,
    decoder: &mut RecordDecoder,
) -> Result<(DurableState, u64), SnapshotProblem> {
    let header = match FileHeader::decode(bytes, FileKind::Snapshot) {
        Ok(header) => header,
        Err(HeaderError::UnsupportedVersion(found)) => {
            return Err(SnapshotProblem::Fatal(Error::UnsupportedVersion {
                dir: dir.to_owned(),
                file: name.to_owned(),
                found,
                supported: FORMAT_VERSION,
            }))
        }
        Err(e) => {
            return Err(SnapshotProblem::Damaged {
                offset: 0,
                damage: Damage::Header(e),
            })
        }
    };
    if header.shard_id != options.shard_id {
        return Err(SnapshotProblem::Fatal(Error::WrongShard {
            dir: dir.to_owned(),
            file: name.to_owned(),
            found: header.shard_id,
            expected: options.shard_id,
        }));
    }
    if header.lsn != name_lsn {
        return Err(SnapshotProblem::Damaged {
            offset: 16,
            damage: Damage::NameMismatch {
                name_lsn,
                header_lsn: header.lsn,
            },
        });
    }
    let mut state = DurableState::new();
    let mut offset = FILE_HEADER_BYTES;
    let mut found = 0u64;
    while found < header.record_count {
        let damage = match read_frame(bytes, offset) {
            FrameRead::Frame { bytes: frame, next } => match decoder.decode(frame) {
                Ok(record) => {
                    // A misfit here is counted in the state like any other.
                    let _ = state.apply(&record);
                    found += 1;
                    offset = next;
                    continue;
                }
                Err(e) => Damage::InvalidArchive(e.to_string()),
            },
            FrameRead::End => Damage::SnapshotLength {
                expected: header.record_count,
                found,
            },
            FrameRead::Defect(defect) => Damage::Frame(defect),
        };
        return Err(SnapshotProblem::Damaged {
            offset: offset as u64,
            damage,
        });
    }
    if offset != bytes.len() {
        return Err(SnapshotProblem::Damaged {
            offset: offset as u64,
            damage: Damage::TrailingBytes,
        });
    }
    Ok((state, found))
}

/// A name `<file>.corrupt-<n>` not taken in `taken`.
fn aside_name(file: &str, taken: &mut Vec<String>) -> String {
    let mut n = 1;
    loop {
        let candidate = corrupt_name(file, n);
        if !taken.contains(&candidate) {
            taken.push(candidate.clone());
            return candidate;
        }
        n += 1;
    }
}

impl<S: Storage> Wal<S> {
    /// Opens (creating if needed) the log in `dir` and recovers its state.
    ///
    /// Loads the newest valid snapshot, replays the segments after it in LSN order, cuts
    /// off a torn tail of the last segment (reported, not an error), and returns the log
    /// ready to append after the last recovered record. Damage that is not a torn tail (a
    /// bad record followed by valid data, a bad record in an earlier segment, an invalid
    /// archive, a damaged snapshot, a missing segment) is an error that names the file and
    /// offset and changes nothing on disk, unless `options.skip_corrupt` is set: then the
    /// readable records are kept, the loss is reported, damaged files are kept aside as
    /// `<name>.corrupt-<n>` and a snapshot makes the result permanent.
    ///
    /// Every step that changes the directory is safe to interrupt: a crash during
    /// recovery followed by another recovery loses nothing that was synced.
    pub fn open(
        mut storage: S,
        dir: &str,
        options: WalOptions,
    ) -> Result<(Wal<S>, DurableState, RecoveryReport), Error> {
        storage
            .create_dir_all(dir)
            .map_err(Error::io("create directory", dir, "."))?;
        let mut names = storage.list(dir).map_err(Error::io("list", dir, "."))?;
        names.sort();

        let mut report = RecoveryReport::default();
        let mut plan = Plan::default();
        let mut snapshots = Vec::new();
        let mut segments = Vec::new();
        for name in &names {
            match parse_name(name) {
                FileName::Segment(first) => segments.push((first, name.clone())),
                FileName::Snapshot(lsn) => snapshots.push((lsn, name.clone())),
                FileName::SnapshotTmp(_) => plan.obsolete.push(name.clone()),
                FileName::Corrupt => {}
                FileName::Other => report.unknown_files.push(name.clone()),
            }
        }
        snapshots.sort();
        segments.sort();
        let mut taken = names.clone();
        let mut decoder = RecordDecoder::new();
        let corrupt_error = |file: &str, offset: u64, damage: Damage| Error::Corrupt {
            dir: dir.to_owned(),
            file: file.to_owned(),
            offset,
            damage,
        };

        // Phase one: read, rebuild, plan. Nothing on disk changes.

        let mut state = DurableState::new();
        let mut base = Lsn::ZERO;
        let mut base_loaded = false;
        for (lsn, name) in snapshots.iter().rev() {
            if base_loaded {
                plan.obsolete.push(name.clone());
                continue;
            }
            let bytes = storage
                .read(dir, name)
                .map_err(Error::io("read", dir, name))?;
            match load_snapshot(&bytes, *lsn, &options, dir, name, &mut decoder) {
                Ok((loaded, records)) => {
                    state = loaded;
                    base = *lsn;
                    base_loaded = true;
                    report.snapshot = Some((name.clone(), *lsn));
                    report.snapshot_records = records;
                    plan.sync.push(name.clone());
                }
                Err(SnapshotProblem::Fatal(e)) => return Err(e),
                Err(SnapshotProblem::Damaged { offset, damage }) => {
                    if !options.skip_corrupt {
                        return Err(corrupt_error(name, offset, damage));
                    }
                    warn!(%dir, file = %name, offset, %damage, "damaged snapshot skipped");
                    let kept_as = aside_name(name, &mut taken);
                    plan.aside.push((name.clone(), kept_as.clone()));
                    plan.snapshot_needed = true;
                    report.corrupt.push(Corruption {
                        file: name.clone(),
                        offset,
                        damage,
                        kept_as,
                        covered: false,
                    });
                }
            }
        }

        // The next LSN to apply, and the LSN after the previous segment's last record.
        let mut expected = base.next();
        let mut chain: Option<Lsn> = None;
        for (i, (name_lsn, name)) in segments.iter().enumerate() {
            let is_last = i + 1 == segments.len();
            let next_first = segments.get(i + 1).map(|(first, _)| *first);
            // Every LSN this segment can hold is covered by the snapshot.
            let covered = next_first.is_some_and(|n| n <= base.next());
            let bytes = storage
                .read(dir, name)
                .map_err(Error::io("read", dir, name))?;
            report.segments_read += 1;
            report.segment_bytes += bytes.len() as u64;

            let damage_at = match FileHeader::decode(&bytes, FileKind::Segment) {
                Err(HeaderError::UnsupportedVersion(found)) => {
                    return Err(Error::UnsupportedVersion {
                        dir: dir.to_owned(),
                        file: name.clone(),
                        found,
                        supported: FORMAT_VERSION,
                    })
                }
                Err(_) if is_last && bytes.len() <= FILE_HEADER_BYTES => {
                    // Created, then the crash came before its header was whole on disk.
                    plan.remove_empty.push(name.clone());
                    report.torn_tail = Some(TornTail {
                        file: name.clone(),
                        offset: 0,
                        bytes_dropped: bytes.len() as u64,
                    });
                    continue;
                }
                Err(e) => Some((0, Damage::Header(e))),
                Ok(header) if header.shard_id != options.shard_id => {
                    return Err(Error::WrongShard {
                        dir: dir.to_owned(),
                        file: name.clone(),
                        found: header.shard_id,
                        expected: options.shard_id,
                    })
                }
                Ok(header) if header.lsn != *name_lsn => Some((
                    16,
                    Damage::NameMismatch {
                        name_lsn: *name_lsn,
                        header_lsn: header.lsn,
                    },
                )),
                Ok(_) => None,
            };

            let first = *name_lsn;
            let mut seg = SegmentRead {
                name: name.clone(),
                end: first,
                records: 0,
            };
            let end = if let Some((offset, damage)) = damage_at {
                SegmentEnd::Damaged { offset, damage }
            } else {
                if first > expected {
                    let missing = (expected, Lsn(first.get() - 1));
                    if !options.skip_corrupt {
                        return Err(Error::MissingRecords {
                            dir: dir.to_owned(),
                            file: name.clone(),
                            from: missing.0,
                            to: missing.1,
                        });
                    }
                    warn!(%dir, file = %name, from = %missing.0, to = %missing.1, "missing records skipped");
                    report.missing.push(missing);
                    plan.snapshot_needed = true;
                    expected = first;
                }
                if let Some(reach) = chain {
                    if first < reach && reach > base.next() {
                        let damage = Damage::Overlap {
                            expected: reach,
                            first,
                        };
                        if !options.skip_corrupt {
                            return Err(corrupt_error(name, 16, damage));
                        }
                        // Keep the records of the earlier segment; this one's records at
                        // LSNs already applied are skipped below.
                        warn!(%dir, file = %name, %damage, "overlapping segment");
                        plan.snapshot_needed = true;
                    }
                }
                let (seg_end, records, how) = read_segment(
                    &bytes,
                    FILE_HEADER_BYTES,
                    first,
                    is_last,
                    &mut decoder,
                    |lsn, record| {
                        if lsn >= expected {
                            let _ = state.apply(record);
                            expected = lsn.next();
                            report.records_replayed += 1;
                        }
                    },
                );
                seg.end = seg_end;
                seg.records = records;
                how
            };

            match end {
                SegmentEnd::Clean => {
                    chain = Some(seg.end);
                    if seg.records == 0 {
                        plan.remove_empty.push(seg.name);
                    } else {
                        plan.sync.push(seg.name.clone());
                        plan.segments.push((seg.name, seg.end));
                    }
                }
                SegmentEnd::Torn { offset } => {
                    let dropped = bytes.len() as u64 - offset;
                    warn!(%dir, file = %name, offset, bytes = dropped, "torn tail cut off");
                    report.torn_tail = Some(TornTail {
                        file: name.clone(),
                        offset,
                        bytes_dropped: dropped,
                    });
                    chain = Some(seg.end);
                    if seg.records == 0 {
                        plan.remove_empty.push(seg.name);
                    } else {
                        plan.truncate.push((seg.name.clone(), offset));
                        plan.segments.push((seg.name, seg.end));
                    }
                }
                SegmentEnd::Damaged { offset, damage } => {
                    if !covered && !options.skip_corrupt {
                        return Err(corrupt_error(name, offset, damage));
                    }
                    if covered {
                        warn!(%dir, file = %name, offset, %damage, "damaged segment already covered by the snapshot");
                    } else {
                        warn!(%dir, file = %name, offset, %damage, "damaged segment skipped");
                        plan.snapshot_needed = true;
                    }
                    let kept_as = aside_name(name, &mut taken);
                    plan.aside.push((name.clone(), kept_as.clone()));
                    report.corrupt.push(Corruption {
                        file: name.clone(),
                        offset,
                        damage,
                        kept_as,
                        covered,
                    });
                    // Where this segment would have ended is unknown; the next one is
                    // checked against `expected` only.
                    chain = None;
                }
            }
        }
        let last_lsn = Lsn(expected.get() - 1);
        report.last_lsn = last_lsn;
        report.misfits = state.misfits();

        // Phase two: change the directory, in an order that is safe to interrupt.

        // 1. Make what was read durable (after a failed fsync in an earlier life, the
        //    page cache may show bytes the disk does not hold).
        storage
            .sync_dir(dir)
            .map_err(Error::io("sync directory", dir, "."))?;
        for name in &plan.sync {
            let mut file = storage
                .open(dir, name)
                .map_err(Error::io("open", dir, name))?;
            storage
                .sync(&mut file)
                .map_err(Error::io("sync", dir, name))?;
        }
        // 2. Cut torn tails (only bytes that are no record go), remove files holding none.
        for (name, len) in &plan.truncate {
            let mut file = storage
                .open(dir, name)
                .map_err(Error::io("open", dir, name))?;
            storage
                .truncate(&mut file, *len)
                .map_err(Error::io("truncate", dir, name))?;
            storage
                .sync(&mut file)
                .map_err(Error::io("sync", dir, name))?;
        }
        let mut changed = false;
        for name in &plan.remove_empty {
            storage
                .remove(dir, name)
                .map_err(Error::io("remove", dir, name))?;
            report.removed.push(name.clone());
            changed = true;
        }
        // 3. Accepted loss: a durable snapshot of the recovered state first, so that no
        //    later step (moving damaged files aside, removing replaced ones) can lose a
        //    record that was recovered.
        let mut snapshot_lsn = base;
        if plan.snapshot_needed {
            let written = write_snapshot(
                &mut storage,
                dir,
                options.shard_id,
                &state,
                last_lsn,
                &mut RecordEncoder::new(),
                options.snapshot_sync_bytes,
            )?;
            warn!(%dir, file = %written.name, lsn = %last_lsn, "snapshot written after accepting damage");
            report.snapshot_written = Some(written.name);
            snapshot_lsn = last_lsn;
            changed = false; // write_snapshot synced the directory
        }
        // 4. Keep damaged files aside, never deleted.
        for (name, kept_as) in &plan.aside {
            storage
                .rename(dir, name, kept_as)
                .map_err(Error::io("rename", dir, name))?;
            changed = true;
        }
        // 5. Remove what the durable snapshot replaces.
        if plan.snapshot_needed {
            // Every remaining segment was read whole and holds only records <= last_lsn.
            report
                .removed
                .extend(remove_replaced(&mut storage, dir, snapshot_lsn)?);
        } else {
            let replaced = plan
                .obsolete
                .iter()
                .cloned()
                .chain(
                    plan.segments
                        .iter()
                        .filter(|(_, end)| *end <= base.next())
                        .map(|(name, _)| name.clone()),
                )
                .collect::<Vec<_>>();
            for name in replaced {
                storage
                    .remove(dir, &name)
                    .map_err(Error::io("remove", dir, &name))?;
                report.removed.push(name);
                changed = true;
            }
        }
        if changed {
            storage
                .sync_dir(dir)
                .map_err(Error::io("sync directory", dir, "."))?;
        }

        if report.is_clean() {
            info!(
                %dir,
                last_lsn = %last_lsn,
                snapshot_records = report.snapshot_records,
                records_replayed = report.records_replayed,
                misfits = report.misfits,
                "recovered"
            );
        } else {
            warn!(
                %dir,
                last_lsn = %last_lsn,
                torn_tail = report.torn_tail.is_some(),
                corrupt = report.corrupt.len(),
                missing = report.missing.len(),
                "recovered with repairs"
            );
        }
        let mut wal = Wal::recovered(storage, dir, options, last_lsn, snapshot_lsn);
        if report.snapshot_written.is_none() {
            wal.segment_bytes = report.segment_bytes;
        }
        Ok((wal, state, report))
    }
}
