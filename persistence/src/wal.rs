//! [`Wal`]: one shard's write-ahead log: buffered appends, group commit, segment rotation
//! and compaction into snapshots.
//!
//! Cost model: [`Wal::append`] serializes into memory (no I/O). [`Wal::commit`] is one
//! `append` call plus one `fdatasync` for everything appended since the last commit (plus
//! one directory `fsync` when it starts a new segment). The broker calls `commit` once per
//! batch and acknowledges the clients whose records are `<=` the LSN it returns.
//! [`Wal::compact`] writes the whole state once (a snapshot) and deletes the segments it
//! replaces; run it when the log has grown well past the state's size. Compaction can also
//! run *beside* commits: [`Wal::begin_snapshot`] seals the current segment and hands out a
//! [`SnapshotJob`], which another thread writes with its own storage handle while the log
//! goes on committing into a new segment; [`Wal::end_snapshot`] takes the outcome back.
//! The snapshot is synced in chunks of [`WalOptions::snapshot_sync_bytes`], so one large
//! snapshot never queues a huge `fdatasync` in front of the log's own syncs.
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
    /// A snapshot being written is `fdatasync`ed every this many bytes (and at its end):
    /// the device flushes a bounded amount at a time, and the log's commits, synced
    /// meanwhile by another thread, never wait behind one sync of the whole snapshot.
    pub snapshot_sync_bytes: u64,
}

impl WalOptions {
    /// Defaults for `shard_id`: 64 MiB segments, 16 MiB records, damage stops the open,
    /// snapshots synced every 8 MiB.
    #[must_use]
    pub fn new(shard_id: u32) -> Self {
        Self {
            shard_id,
            segment_bytes_max: 64 << 20,
            record_bytes_max: 16 << 20,
            skip_corrupt: false,
            snapshot_sync_bytes: 8 << 20,
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

/// A snapshot to be written beside the log: the log was committed through [`lsn`](Self::lsn)
/// and its current segment sealed when [`Wal::begin_snapshot`] made it, so every segment
/// that existed then holds only records `<= lsn`, and every later commit goes to segments
/// whose first LSN is `> lsn`. [`write`](Self::write) it with the state as of `lsn`, on any
/// thread, then hand the outcome to [`Wal::end_snapshot`].
#[derive(Debug)]
#[must_use = "a snapshot job must be written and handed back to Wal::end_snapshot"]
pub struct SnapshotJob {
    dir: String,
    shard_id: u32,
    lsn: Lsn,
    snapshot_sync_bytes: u64,
    /// [`Wal::segment_bytes`] when the job was made: what the snapshot will reclaim.
    sealed_bytes: u64,
}

impl SnapshotJob {
    /// The LSN the snapshot is the state as of.
    #[must_use]
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// Writes `state` (the result of every record `<=` [`lsn`](Self::lsn)) as snapshot
    /// `snap-<lsn>.snap` through `storage`, a handle of the log's storage that may be used
    /// from another thread while the log commits: under a temporary name, synced every
    /// `snapshot_sync_bytes` and at the end, renamed into place, directory synced; then
    /// removes the segments (first LSN `<= lsn`), older snapshots and temporary files it
    /// replaces, and syncs the directory. Nothing is removed before the snapshot is
    /// durable; segments the log creates meanwhile start after `lsn` and are never
    /// touched.
    pub fn write<S: Storage>(
        &self,
        storage: &mut S,
        state: &DurableState,
    ) -> Result<CompactReport, Error> {
        let written = write_snapshot(
            storage,
            &self.dir,
            self.shard_id,
            state,
            self.lsn,
            &mut RecordEncoder::new(),
            self.snapshot_sync_bytes,
        )?;
        let removed = remove_replaced(storage, &self.dir, self.lsn)?;
        Ok(CompactReport {
            lsn: self.lsn,
            snapshot: Some(written.name),
            records: written.records,
            bytes: written.bytes,
            removed,
        })
    }
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
    /// A [`SnapshotJob`] is out: at most one at a time.
    snapshot_in_flight: bool,
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
            snapshot_in_flight: false,
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

    /// Whether a [`SnapshotJob`] is out (made by [`begin_snapshot`](Self::begin_snapshot),
    /// not yet handed to [`end_snapshot`](Self::end_snapshot)).
    #[must_use]
    pub fn snapshot_in_flight(&self) -> bool {
        self.snapshot_in_flight
    }

    /// Commits what is pending, then writes a snapshot of `state` as of the durable LSN and
    /// deletes the segments and snapshots it replaces, all before returning (the caller
    /// waits: see [`begin_snapshot`](Self::begin_snapshot) to compact beside commits).
    ///
    /// `state` must be the result of applying every record appended so far (through
    /// [`last_lsn`](Self::last_lsn)) to the state [`open`](Self::open) returned. Nothing is
    /// deleted before the snapshot replacing it is durable (written under a temporary name,
    /// synced, renamed into place, directory synced), so a crash at any point recovers the
    /// same state. Any storage error makes the log unhealthy.
    ///
    /// # Panics
    ///
    /// If a [`SnapshotJob`] is out.
    pub fn compact(&mut self, state: &DurableState) -> Result<CompactReport, Error> {
        let Some(job) = self.begin_snapshot()? else {
            return Ok(CompactReport {
                lsn: self.snapshot_lsn,
                snapshot: None,
                records: 0,
                bytes: 0,
                removed: Vec::new(),
            });
        };
        let result = job.write(&mut self.storage, state);
        self.end_snapshot(job, result)
    }

    /// Starts a compaction that runs beside commits: commits what is pending (`L` = the
    /// durable LSN), seals the current segment so that later records go to a new segment
    /// `seg-<L+1>`, and returns the job that writes snapshot `L`. The caller writes it
    /// ([`SnapshotJob::write`], with the state as of `L`: every record appended so far) on
    /// any thread while it goes on appending and committing here, then hands the outcome
    /// to [`end_snapshot`](Self::end_snapshot). `None`: nothing was appended since the
    /// newest snapshot.
    ///
    /// # Panics
    ///
    /// If a job is already out: one snapshot at a time.
    pub fn begin_snapshot(&mut self) -> Result<Option<SnapshotJob>, Error> {
        assert!(
            !self.snapshot_in_flight,
            "begin_snapshot while a snapshot job is out"
        );
        let lsn = self.commit()?;
        if lsn == self.snapshot_lsn {
            return Ok(None);
        }
        // Seal the current segment: later records go to a new one, so every segment that
        // exists now holds only records <= lsn (and was synced by the commit above).
        self.segment = None;
        self.snapshot_in_flight = true;
        Ok(Some(SnapshotJob {
            dir: self.dir.clone(),
            shard_id: self.options.shard_id,
            lsn,
            snapshot_sync_bytes: self.options.snapshot_sync_bytes,
            sealed_bytes: self.segment_bytes,
        }))
    }

    /// Takes back the outcome of `job`'s [`write`](SnapshotJob::write). On success the
    /// snapshot is the newest and the segment bytes it replaced no longer count; on error
    /// the log is unhealthy (a failed sync or rename is never retried as if nothing
    /// happened: the owner reopens the log, whose recovery finds either the old files or
    /// the durable snapshot, both complete) and the error is returned.
    pub fn end_snapshot(
        &mut self,
        job: SnapshotJob,
        result: Result<CompactReport, Error>,
    ) -> Result<CompactReport, Error> {
        assert!(
            self.snapshot_in_flight,
            "end_snapshot without a snapshot job out"
        );
        assert_eq!(job.dir, self.dir, "a snapshot job of another log");
        self.snapshot_in_flight = false;
        match result {
            Ok(report) => {
                self.snapshot_lsn = self.snapshot_lsn.max(job.lsn);
                self.segment_bytes = self.segment_bytes.saturating_sub(job.sealed_bytes);
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

/// Writes `state` as snapshot `snap-<lsn>.snap`: under a temporary name, synced (every
/// `sync_bytes` and at the end), renamed into place, directory synced. When this returns
/// `Ok` the snapshot is durable; before the rename it is invisible to recovery (which
/// deletes temporary files).
pub(crate) fn write_snapshot<S: Storage>(
    storage: &mut S,
    dir: &str,
    shard_id: u32,
    state: &DurableState,
    lsn: Lsn,
    encoder: &mut RecordEncoder,
    sync_bytes: u64,
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
    // Never hold more than one sync's worth in memory before writing it.
    let chunk_bytes = SNAPSHOT_CHUNK_BYTES.min(usize::try_from(sync_bytes).unwrap_or(usize::MAX));
    let mut chunk = Vec::with_capacity(chunk_bytes + 4096);
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
    let mut unsynced_bytes = 0u64;
    let mut written = 0u64;
    for record in state.records() {
        let encoded = encoder.encode(&record).map_err(|e| Error::Encode {
            kind: record.kind(),
            message: e.to_string(),
        })?;
        push_frame(encoded, &mut chunk);
        written += 1;
        if chunk.len() >= chunk_bytes {
            storage
                .append(&mut file, &chunk)
                .map_err(Error::io("append", dir, &tmp))?;
            bytes += chunk.len() as u64;
            unsynced_bytes += chunk.len() as u64;
            chunk.clear();
            if unsynced_bytes >= sync_bytes {
                // Bounded flushes: a commit synced meanwhile waits behind at most this.
                storage
                    .sync(&mut file)
                    .map_err(Error::io("sync", dir, &tmp))?;
                unsynced_bytes = 0;
            }
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
