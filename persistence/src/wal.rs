//! [`Wal`]: one shard's write-ahead log: buffered appends, group commit, segment rotation
//! and compaction into snapshots.
//!
//! Cost model: [`Wal::append`] serializes into memory (no I/O). [`Wal::commit`] is one
//! `append` call plus one `fdatasync` for everything appended since the last commit (plus
//! one directory `fsync` when it starts a new segment). The broker calls `commit` once per
//! batch and acknowledges the clients whose records are `<=` the LSN it returns.
//! [`Wal::compact`] writes the whole state once (a snapshot) and deletes the segments it
//! replaces; run it when the log has grown well past the state's size.
//!
//! Any storage error makes the log [unhealthy](Health): a failed append may have left a
//! partial frame, and after a failed `fdatasync` the kernel may have dropped the dirty pages
//! while reporting the next sync as fine. The log then refuses every further append, commit
//! and compaction; the owner drops it and [opens](Wal::open) it again, which recovers from
//! what is really on disk.

use tracing::{debug, info, warn};

use crate::error::Error;
use crate::frame::{
    parse_name, push_frame, segment_name, snapshot_name, snapshot_tmp_name, FileHeader, FileKind,
    FileName, FILE_HEADER_BYTES,
};
use crate::record::{Lsn, Record, RecordEncoder};
use crate::state::DurableState;
use crate::storage::Storage;

/// How a log is opened and bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// The shard this log belongs to; written into every file and checked on open.
    pub shard_id: u32,
    /// A commit that would grow the current segment past this starts a new segment
    /// (a segment holds at least one commit, so one large batch may exceed it).
    pub segment_bytes_max: u64,
    /// Largest encoded record [`Wal::append`] accepts.
    pub record_bytes_max: u32,
    /// On open, accept damaged records and missing segments: replay what is readable,
    /// keep damaged files aside as `<name>.corrupt-<n>`, report the loss, and write a
    /// snapshot so the next open is clean. Off by default: damage stops the open.
    pub skip_corrupt: bool,
}

impl WalOptions {
    /// Defaults for `shard_id`: 64 MiB segments, 16 MiB records, damage stops the open.
    #[must_use]
    pub fn new(shard_id: u32) -> Self {
        Self {
            shard_id,
            segment_bytes_max: 64 << 20,
            record_bytes_max: 16 << 20,
            skip_corrupt: false,
        }
    }
}

impl Default for WalOptions {
    fn default() -> Self {
        Self::new(0)
    }
}

/// The directory of shard `shard_id`'s log under the storage root: `shard-<n>`.
#[must_use]
pub fn shard_dir(shard_id: u32) -> String {
    format!("shard-{shard_id}")
}

/// Whether the log still takes records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Every storage call so far succeeded.
    Healthy,
    /// A storage call failed; the log refuses further work until reopened.
    Failed {
        /// The first failure.
        cause: String,
    },
}

/// What [`Wal::compact`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactReport {
    /// The LSN the snapshot is the state as of.
    pub lsn: Lsn,
    /// The snapshot file written, or `None` when nothing was appended since the last one.
    pub snapshot: Option<String>,
    /// Records in the snapshot.
    pub records: u64,
    /// Bytes of the snapshot file.
    pub bytes: u64,
    /// Files removed: segments and snapshots the new snapshot replaces.
    pub removed: Vec<String>,
}

/// The segment commits currently go to.
#[derive(Debug)]
struct OpenSegment<F> {
    file: F,
    name: String,
    len_bytes: u64,
    records: u64,
    /// Bytes were appended since the last `fdatasync`.
    dirty: bool,
    /// The directory entry is durable (the directory was synced after the create).
    name_durable: bool,
}

/// Snapshots are written in chunks of about this size: bounded memory for any state size.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// One shard's write-ahead log. See the module docs.
#[derive(Debug)]
pub struct Wal<S: Storage> {
    storage: S,
    dir: String,
    options: WalOptions,
    encoder: RecordEncoder,
    /// `None` until the first commit after open or compaction, which creates a new segment.
    segment: Option<OpenSegment<S::File>>,
    /// Frames appended since the last commit, ready to be written as one block.
    pending: Vec<u8>,
    pending_records: u64,
    /// LSN of the last record appended.
    last_lsn: Lsn,
    /// LSN of the last record written to its segment (durable or not).
    written_lsn: Lsn,
    /// LSN of the last record made durable.
    durable_lsn: Lsn,
    /// LSN of the newest snapshot on disk (`Lsn::ZERO`: none).
    snapshot_lsn: Lsn,
    /// Bytes of the segments written since that snapshot (headers included): what a
    /// compaction would reclaim, the number to compare with a size limit.
    pub(crate) segment_bytes: u64,
    health: Health,
}

impl<S: Storage> Wal<S> {
    /// Builds the log recovery hands out: nothing pending, no open segment.
    pub(crate) fn recovered(
        storage: S,
        dir: &str,
        options: WalOptions,
        last_lsn: Lsn,
        snapshot_lsn: Lsn,
    ) -> Self {
        Self {
            storage,
            dir: dir.to_owned(),
            options,
            encoder: RecordEncoder::new(),
            segment: None,
            pending: Vec::new(),
            pending_records: 0,
            last_lsn,
            written_lsn: last_lsn,
            durable_lsn: last_lsn,
            snapshot_lsn,
            segment_bytes: 0,
            health: Health::Healthy,
        }
    }

    /// The directory of this log.
    #[must_use]
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// The options it was opened with.
    #[must_use]
    pub fn options(&self) -> &WalOptions {
        &self.options
    }

    /// The storage underneath.
    #[must_use]
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Gives the storage back, dropping records appended but not committed.
    #[must_use]
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// LSN of the last record appended (committed or not).
    #[must_use]
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    /// LSN of the last record known to be on disk: every record `<=` it survives a crash.
    #[must_use]
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    /// LSN of the newest snapshot (`Lsn::ZERO` when there is none).
    #[must_use]
    pub fn snapshot_lsn(&self) -> Lsn {
        self.snapshot_lsn
    }

    /// Records appended since the last commit.
    #[must_use]
    pub fn pending_records(&self) -> u64 {
        self.pending_records
    }

    /// Bytes appended since the last commit.
    #[must_use]
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Whether the log still takes records.
    #[must_use]
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Shorthand for `health() == Healthy`.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.health == Health::Healthy
    }

    fn check_healthy(&self) -> Result<(), Error> {
        match &self.health {
            Health::Healthy => Ok(()),
            Health::Failed { cause } => Err(Error::Unhealthy {
                dir: self.dir.clone(),
                cause: cause.clone(),
            }),
        }
    }

    fn fail(&mut self, error: &Error) {
        if self.health == Health::Healthy {
            warn!(dir = %self.dir, %error, "write-ahead log unhealthy; it must be reopened");
            self.health = Health::Failed {
                cause: error.to_string(),
            };
        }
    }

    /// Appends `record` to the pending batch and returns its LSN. No I/O: the record is
    /// durable only once [`commit`](Self::commit) returns an LSN `>=` this one.
    pub fn append(&mut self, record: &Record) -> Result<Lsn, Error> {
        self.check_healthy()?;
        let bytes = self.encoder.encode(record).map_err(|e| Error::Encode {
            kind: record.kind(),
            message: e.to_string(),
        })?;
        if bytes.len() > self.options.record_bytes_max as usize {
            return Err(Error::RecordTooLarge {
                kind: record.kind(),
                len_bytes: bytes.len(),
                max_bytes: self.options.record_bytes_max,
            });
        }
        push_frame(bytes, &mut self.pending);
        self.pending_records += 1;
        self.last_lsn = self.last_lsn.next();
        Ok(self.last_lsn)
    }

    /// Makes every appended record durable: one write and one `fdatasync` for the whole
    /// batch (group commit). Returns the durable LSN. With nothing pending and nothing
    /// written unsynced it does no I/O.
    ///
    /// On error nothing of the batch may be relied on (some of it may survive a crash) and
    /// the log is unhealthy.
    pub fn commit(&mut self) -> Result<Lsn, Error> {
        self.write()?;
        self.sync()
    }

    /// Writes every appended record to the current segment without `fdatasync`: the
    /// records survive a crash of the process (the kernel holds them) but not of the
    /// machine until [`sync`](Self::sync) (durability modes `batch` and `none`). Returns
    /// the LSN written. With nothing pending it does no I/O.
    ///
    /// On error the log is unhealthy, as for [`commit`](Self::commit).
    pub fn write(&mut self) -> Result<Lsn, Error> {
        self.check_healthy()?;
        if self.pending.is_empty() {
            return Ok(self.written_lsn);
        }
        match self.write_pending() {
            Ok(()) => {
                self.pending.clear();
                self.pending_records = 0;
                self.written_lsn = self.last_lsn;
                Ok(self.written_lsn)
            }
            Err(error) => {
                self.fail(&error);
                Err(error)
            }
        }
    }

    /// `fdatasync` of what [`write`](Self::write) wrote (and a directory sync if the
    /// segment is new). Returns the durable LSN; records appended but not written stay
    /// pending.
    pub fn sync(&mut self) -> Result<Lsn, Error> {
        self.check_healthy()?;
        match self.sync_segment() {
            Ok(()) => {
                self.durable_lsn = self.written_lsn;
                Ok(self.durable_lsn)
            }
            Err(error) => {
                self.fail(&error);
                Err(error)
            }
        }
    }

    /// Bytes of the segments written since the newest snapshot: compaction reclaims them.
    #[must_use]
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// LSN of the last record written to a segment, synced or not.
    #[must_use]
    pub fn written_lsn(&self) -> Lsn {
        self.written_lsn
    }

    fn sync_segment(&mut self) -> Result<(), Error> {
        let Some(segment) = self.segment.as_mut() else {
            return Ok(());
        };
        if segment.dirty {
            self.storage.sync(&mut segment.file).map_err(Error::io(
                "sync",
                &self.dir,
                &segment.name,
            ))?;
            segment.dirty = false;
        }
        if !segment.name_durable {
            // The new file's name must be durable before its records count as committed.
            self.storage.sync_dir(&self.dir).map_err(Error::io(
                "sync directory",
                &self.dir,
                ".",
            ))?;
            segment.name_durable = true;
        }
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), Error> {
        let batch_bytes = self.pending.len() as u64;
        let rotate = match &self.segment {
            None => true,
            Some(segment) => {
                segment.records > 0
                    && segment.len_bytes + batch_bytes > self.options.segment_bytes_max
            }
        };
        if rotate {
            // A segment is sealed synced: only the newest segment may hold unsynced bytes.
            self.sync_segment()?;
            self.durable_lsn = self.written_lsn;
            self.segment = None;
            let first = self.written_lsn.next();
            let name = segment_name(first);
            let mut file = self
                .storage
                .create(&self.dir, &name)
                .map_err(Error::io("create", &self.dir, &name))?;
            let header = FileHeader {
                kind: FileKind::Segment,
                shard_id: self.options.shard_id,
                lsn: first,
                record_count: 0,
            }
            .encode();
            let opened = self.storage.append(&mut file, &header);
            // Keep the handle even if the header write failed: the log is unhealthy then.
            self.segment = Some(OpenSegment {
                file,
                name,
                len_bytes: FILE_HEADER_BYTES as u64,
                records: 0,
                dirty: true,
                name_durable: false,
            });
            opened.map_err(Error::io("append header", &self.dir, &segment_name(first)))?;
            debug!(dir = %self.dir, first = %first, "new segment");
        }
        let Some(segment) = self.segment.as_mut() else {
            unreachable!("a segment was opened above when there was none");
        };
        self.storage
            .append(&mut segment.file, &self.pending)
            .map_err(Error::io("append", &self.dir, &segment.name))?;
        segment.dirty = true;
        segment.len_bytes += batch_bytes;
        segment.records += self.pending_records;
        self.segment_bytes += batch_bytes;
        Ok(())
    }

    /// Commits what is pending, then writes a snapshot of `state` as of the durable LSN and
    /// deletes the segments and snapshots it replaces.
    ///
    /// `state` must be the result of applying every record appended so far (through
    /// [`last_lsn`](Self::last_lsn)) to the state [`open`](Self::open) returned. Nothing is
    /// deleted before the snapshot replacing it is durable (written under a temporary name,
    /// synced, renamed into place, directory synced), so a crash at any point recovers the
    /// same state. Any storage error makes the log unhealthy.
    pub fn compact(&mut self, state: &DurableState) -> Result<CompactReport, Error> {
        let lsn = self.commit()?;
        if lsn == self.snapshot_lsn {
            return Ok(CompactReport {
                lsn,
                snapshot: None,
                records: 0,
                bytes: 0,
                removed: Vec::new(),
            });
        }
        // Seal the current segment: later records go to a new one, so every segment that
        // exists now holds only records <= lsn.
        self.segment = None;
        let result = write_snapshot(
            &mut self.storage,
            &self.dir,
            self.options.shard_id,
            state,
            lsn,
            &mut self.encoder,
        )
        .and_then(|written| {
            self.snapshot_lsn = lsn;
            self.segment_bytes = 0;
            let removed = remove_replaced(&mut self.storage, &self.dir, lsn)?;
            Ok(CompactReport {
                lsn,
                snapshot: Some(written.name),
                records: written.records,
                bytes: written.bytes,
                removed,
            })
        });
        match result {
            Ok(report) => {
                info!(
                    dir = %self.dir,
                    lsn = %report.lsn,
                    records = report.records,
                    bytes = report.bytes,
                    removed = report.removed.len(),
                    "compacted"
                );
                Ok(report)
            }
            Err(error) => {
                self.fail(&error);
                Err(error)
            }
        }
    }
}

/// A snapshot [`write_snapshot`] made durable.
pub(crate) struct SnapshotWritten {
    pub(crate) name: String,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
}

/// Writes `state` as snapshot `snap-<lsn>.snap`: under a temporary name, synced, renamed
/// into place, directory synced. When this returns `Ok` the snapshot is durable; before
/// the rename it is invisible to recovery (which deletes temporary files).
pub(crate) fn write_snapshot<S: Storage>(
    storage: &mut S,
    dir: &str,
    shard_id: u32,
    state: &DurableState,
    lsn: Lsn,
    encoder: &mut RecordEncoder,
) -> Result<SnapshotWritten, Error> {
    let tmp = snapshot_tmp_name(lsn);
    let name = snapshot_name(lsn);
    let mut file = match storage.create(dir, &tmp) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Left by an earlier attempt in this process; never renamed, so never read.
            storage
                .remove(dir, &tmp)
                .map_err(Error::io("remove", dir, &tmp))?;
            storage
                .create(dir, &tmp)
                .map_err(Error::io("create", dir, &tmp))?
        }
        Err(e) => return Err(Error::io("create", dir, &tmp)(e)),
    };
    let records = state.records_len();
    let mut chunk = Vec::with_capacity(SNAPSHOT_CHUNK_BYTES + 4096);
    chunk.extend_from_slice(
        &FileHeader {
            kind: FileKind::Snapshot,
            shard_id,
            lsn,
            record_count: records,
        }
        .encode(),
    );
    let mut bytes = 0u64;
    let mut written = 0u64;
    for record in state.records() {
        let encoded = encoder.encode(&record).map_err(|e| Error::Encode {
            kind: record.kind(),
            message: e.to_string(),
        })?;
        push_frame(encoded, &mut chunk);
        written += 1;
        if chunk.len() >= SNAPSHOT_CHUNK_BYTES {
            storage
                .append(&mut file, &chunk)
                .map_err(Error::io("append", dir, &tmp))?;
            bytes += chunk.len() as u64;
            chunk.clear();
        }
    }
    assert_eq!(
        written, records,
        "DurableState::records_len disagrees with records()"
    );
    if !chunk.is_empty() {
        storage
            .append(&mut file, &chunk)
            .map_err(Error::io("append", dir, &tmp))?;
        bytes += chunk.len() as u64;
    }
    storage
        .sync(&mut file)
        .map_err(Error::io("sync", dir, &tmp))?;
    drop(file);
    storage
        .rename(dir, &tmp, &name)
        .map_err(Error::io("rename", dir, &tmp))?;
    storage
        .sync_dir(dir)
        .map_err(Error::io("sync directory", dir, "."))?;
    Ok(SnapshotWritten {
        name,
        records,
        bytes,
    })
}

/// After snapshot `lsn` is durable: removes every segment whose first LSN is `<= lsn`
/// (the caller guarantees they hold nothing newer), every older snapshot and every
/// temporary file, then syncs the directory. Damaged files kept aside are never touched.
pub(crate) fn remove_replaced<S: Storage>(
    storage: &mut S,
    dir: &str,
    lsn: Lsn,
) -> Result<Vec<String>, Error> {
    let mut names = storage.list(dir).map_err(Error::io("list", dir, "."))?;
    names.sort();
    let mut removed = Vec::new();
    for name in names {
        let replaced = match parse_name(&name) {
            FileName::Segment(first) => first <= lsn,
            FileName::Snapshot(older) => older < lsn,
            FileName::SnapshotTmp(_) => true,
            FileName::Corrupt | FileName::Other => false,
        };
        if replaced {
            storage
                .remove(dir, &name)
                .map_err(Error::io("remove", dir, &name))?;
            removed.push(name);
        }
    }
    if !removed.is_empty() {
        storage
            .sync_dir(dir)
            .map_err(Error::io("sync directory", dir, "."))?;
    }
    Ok(removed)
}
