//! The runtime side of durability: recovering every shard's write-ahead log at start,
//! re-homing what a change of `shards` misplaced, and each shard's log task.
//!
//! The core produces [`Record`]s; the log task takes them in batches, appends them and
//! commits (one `fdatasync` per batch: group commit) on a blocking thread
//! (`spawn_blocking`), so a shard never waits for the disk itself. While one batch is
//! syncing the next one accumulates. With durability `sync` the core releases the
//! acknowledgements a batch unblocked once the task reports it committed.
//!
//! The task keeps the state the log describes (a [`DurableState`] the records are applied
//! to) and, when the segments pass `wal_max_bytes`, compacts *beside* the commits: the
//! round seals the current segment ([`Wal::begin_snapshot`]) and hands the state itself
//! (no copy) to the shard's snapshot thread `cutie-snap-<n>`, which writes the snapshot
//! (synced every 1 MiB, paced, at a lower CPU priority: see [`SNAPSHOT_PACE`]) and deletes
//! the segments it replaces, while the log goes on
//! committing into a new segment. Records logged meanwhile wait in a backlog and are
//! applied to the state when it comes back. So an acknowledgement waits for one group
//! commit, never for a snapshot; the cost is the backlog's memory (records logged during
//! one snapshot) and one more segment per compaction. One snapshot at a time.
//!
//! A failed write or sync makes the log unhealthy: the core refuses QoS 1/2 publishes and
//! closes connections whose acknowledgements waited. The task then tries every few
//! seconds to reopen the log and write its whole state as a snapshot; when that works the
//! shard is healthy again.

use crate::core::{Durability, ShardCore};
use crate::message::owner_of;
use crate::stats::ShardSnapshot;
use cutie_persistence::{
    shard_dir, CompactReport, DurableState, FsStorage, Record, RecoveryReport, SnapshotJob, Wal,
    WalOptions,
};
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the shards log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// When acknowledgements wait for the disk.
    pub durability: Durability,
    /// Each shard logs under `data_dir/shard-<n>/`.
    pub data_dir: PathBuf,
    /// Compact a shard's log when its segments pass this many bytes.
    pub wal_max_bytes: u64,
    /// Durability `batch`: sync at least this often.
    pub fsync_interval: Duration,
    /// Recover what is readable from a damaged log (keeping the damaged files aside)
    /// instead of refusing to start.
    pub recover_skip_corrupt: bool,
    /// Largest record accepted (a message plus its topic, with margin).
    pub record_bytes_max: u32,
}

/// One shard's recovered log, ready to be handed to the shard.
#[derive(Debug)]
pub struct RecoveredLog {
    /// The log, positioned after the last recovered record.
    pub wal: Wal<FsStorage>,
    /// The state it describes.
    pub state: DurableState,
    /// What recovery found.
    pub report: RecoveryReport,
    /// How long opening and replaying the log took.
    pub took: Duration,
}

/// Why the logs could not be recovered.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// A shard's log could not be opened (damage, I/O).
    #[error("cannot recover {dir}: {source}{hint}")]
    Open {
        /// The shard's log directory.
        dir: String,
        /// What went wrong.
        source: cutie_persistence::Error,
        /// What an operator can do about it.
        hint: &'static str,
    },
    /// Re-homing sessions after a change of `shards` failed.
    #[error("cannot move state between shard logs after a change of shards: {0}")]
    Rehome(cutie_persistence::Error),
    /// The data directory could not be read.
    #[error("cannot read data directory {dir}: {source}")]
    DataDir {
        /// The directory.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
}

fn options(config: &LogConfig, shard: u32) -> WalOptions {
    WalOptions {
        record_bytes_max: config.record_bytes_max,
        skip_corrupt: config.recover_skip_corrupt,
        snapshot_sync_bytes: SNAPSHOT_SYNC_BYTES,
        ..WalOptions::new(shard)
    }
}

/// The snapshot thread `fdatasync`s its file every this many bytes. On ext4
/// (`data=ordered`) a commit's `fdatasync` queues behind whatever snapshot data is being
/// flushed; measured with `bench/compaction-ack-latency.sh` (2 vCPU VM), 1 MiB with
/// pacing kept the PUBACK tail lowest (8 MiB and 256 KiB did worse).
const SNAPSHOT_SYNC_BYTES: u64 = 1 << 20;

/// After each of its syncs the snapshot thread pauses this many times as long as the
/// sync took: snapshot I/O keeps the device busy at most a quarter of the time, and the
/// log's commits find it idle the rest. A snapshot takes about 4x longer (still well
/// under the time the log takes to grow by `wal_max_bytes` at any rate measured).
const SNAPSHOT_PACE: u32 = 3;

/// The snapshot and its encoding use CPU the shard thread needs more: the snapshot
/// thread runs at this nice value (Linux: per thread).
const SNAPSHOT_THREAD_NICE: i32 = 10;

/// [`FsStorage`] for the snapshot thread: after each `fdatasync` it pauses
/// [`SNAPSHOT_PACE`] times as long as the sync took, leaving the device to the log's
/// commits.
#[derive(Debug)]
struct PacedStorage {
    inner: FsStorage,
}

impl cutie_persistence::Storage for PacedStorage {
    type File = <FsStorage as cutie_persistence::Storage>::File;

    fn create_dir_all(&mut self, dir: &str) -> std::io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list(&self, dir: &str) -> std::io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn create(&mut self, dir: &str, name: &str) -> std::io::Result<Self::File> {
        self.inner.create(dir, name)
    }
    fn open(&mut self, dir: &str, name: &str) -> std::io::Result<Self::File> {
        self.inner.open(dir, name)
    }
    fn append(&mut self, file: &mut Self::File, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.append(file, bytes)
    }
    fn sync(&mut self, file: &mut Self::File) -> std::io::Result<()> {
        let started = Instant::now();
        self.inner.sync(file)?;
        std::thread::sleep(started.elapsed() * SNAPSHOT_PACE);
        Ok(())
    }
    fn truncate(&mut self, file: &mut Self::File, len_bytes: u64) -> std::io::Result<()> {
        self.inner.truncate(file, len_bytes)
    }
    fn read(&self, dir: &str, name: &str) -> std::io::Result<Vec<u8>> {
        self.inner.read(dir, name)
    }
    fn rename(&mut self, dir: &str, from: &str, to: &str) -> std::io::Result<()> {
        self.inner.rename(dir, from, to)
    }
    fn remove(&mut self, dir: &str, name: &str) -> std::io::Result<()> {
        self.inner.remove(dir, name)
    }
    fn sync_dir(&mut self, dir: &str) -> std::io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

/// The shard numbers of the `shard-<n>` directories under `data_dir`.
fn existing_shard_dirs(data_dir: &Path) -> Result<Vec<u32>, RecoverError> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RecoverError::DataDir {
                dir: data_dir.display().to_string(),
                source,
            })
        }
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shard-"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Opens (creating as needed) the log of every shard, in parallel, then re-homes
/// sessions and retained messages that belong to another shard than the one whose log
/// holds them (after a change of `shards`), and returns the logs of shards
/// `0..shards`.
///
/// Re-homing is crash-safe and idempotent: a session is first written whole to its
/// owner's log and committed, and only then dropped from the log that held it; a crash in
/// between leaves two copies, and the next start keeps the owner's and drops the other.
/// Logs of shards beyond `shards` are emptied that way and left in place (a warning
/// says they can be removed).
pub fn recover(config: &LogConfig, shards: u16) -> Result<Vec<RecoveredLog>, RecoverError> {
    let existing = existing_shard_dirs(&config.data_dir)?;
    let count = existing
        .last()
        .map_or(u32::from(shards), |last| (last + 1).max(u32::from(shards)));
    let opened: Vec<Result<RecoveredLog, RecoverError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|k| {
                scope.spawn(move || {
                    let started = Instant::now();
                    let dir = shard_dir(k);
                    let storage = FsStorage::new(&config.data_dir);
                    let (wal, state, report) = Wal::open(storage, &dir, options(config, k))
                        .map_err(|source| RecoverError::Open {
                            dir: config.data_dir.join(&dir).display().to_string(),
                            hint: if config.recover_skip_corrupt {
                                ""
                            } else {
                                " (the damaged files are untouched; start with \
                                 --recover-skip-corrupt to keep what is readable, set the \
                                 damaged files aside and go on)"
                            },
                            source,
                        })?;
                    tracing::info!(
                        shard = k,
                        sessions = state.sessions().len(),
                        retained = state.retained().len(),
                        snapshot_records = report.snapshot_records,
                        records_replayed = report.records_replayed,
                        last_lsn = %report.last_lsn,
                        torn_tail = report.torn_tail.is_some(),
                        corrupt_files = report.corrupt.len(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "log recovered"
                    );
                    Ok(RecoveredLog {
                        wal,
                        state,
                        report,
                        took: started.elapsed(),
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut logs = opened.into_iter().collect::<Result<Vec<_>, _>>()?;
    rehome(&mut logs, shards).map_err(RecoverError::Rehome)?;
    for (k, log) in logs.iter().enumerate().skip(usize::from(shards)) {
        tracing::warn!(
            shard = k,
            dir = %config.data_dir.join(shard_dir(k as u32)).display(),
            sessions = log.state.sessions().len(),
            "this log belongs to a shard that no longer exists; its state was moved to the \
             current shards and the directory can be removed"
        );
    }
    logs.truncate(usize::from(shards));
    Ok(logs)
}

/// Moves every session and retained message whose owner (for `shards` shards) is not
/// the log holding it. See [`recover`].
fn rehome(logs: &mut [RecoveredLog], shards: u16) -> Result<(), cutie_persistence::Error> {
    // What to drop from each log once the owners have committed their copies.
    let mut drops: Vec<Vec<Record>> = logs.iter().map(|_| Vec::new()).collect();
    let mut moved = 0usize;
    for k in 0..logs.len() {
        let misplaced_sessions: Vec<String> = logs[k]
            .state
            .sessions()
            .keys()
            .filter(|id| owner_of(id, shards).index() != k)
            .cloned()
            .collect();
        for client_id in misplaced_sessions {
            let owner = owner_of(&client_id, shards).index();
            if logs[owner].state.session(&client_id).is_none() {
                for record in logs[k].state.session_records(&client_id) {
                    logs[owner].wal.append(&record)?;
                    let _ = logs[owner].state.apply(&record);
                }
                moved += 1;
            }
            drops[k].push(Record::SessionDrop { client_id });
        }
        let misplaced_retained: Vec<String> = logs[k]
            .state
            .retained()
            .keys()
            .filter(|topic| owner_of(topic, shards).index() != k)
            .cloned()
            .collect();
        for topic in misplaced_retained {
            let owner = owner_of(&topic, shards).index();
            if !logs[owner].state.retained().contains_key(&topic) {
                if let Some(message) = logs[k].state.retained().get(&topic) {
                    let record = Record::RetainSet {
                        topic: topic.clone(),
                        payload: message.payload.clone(),
                        qos: message.qos,
                    };
                    logs[owner].wal.append(&record)?;
                    let _ = logs[owner].state.apply(&record);
                    moved += 1;
                }
            }
            drops[k].push(Record::RetainClear { topic });
        }
    }
    if drops.iter().all(Vec::is_empty) {
        return Ok(());
    }
    // Copies first, durable everywhere; only then the drops.
    for log in logs.iter_mut() {
        log.wal.commit()?;
    }
    for (log, records) in logs.iter_mut().zip(drops) {
        for record in &records {
            log.wal.append(record)?;
            let _ = log.state.apply(record);
        }
        log.wal.commit()?;
    }
    tracing::warn!(
        shards,
        moved,
        "the number of shards changed: moved sessions and retained messages to their new owner shards"
    );
    Ok(())
}

/// Health of one shard, shared with the admin side: atomics, and a snapshot the shard
/// replaces every tick (the shard only `try_lock`s it, never waits: see
/// [`crate::stats::ShardSnapshot`]).
#[derive(Debug, Default)]
pub struct ShardHealth {
    /// The shard serves clients (recovered, peers recovered, accepting).
    pub ready: AtomicBool,
    /// The shard's log is failed (not taking records) right now.
    pub log_failed: AtomicBool,
    /// The shard's executor has ended (shutdown, or a failure before it served).
    pub exited: AtomicBool,
    /// [`crate::stats::monotonic_ms`] at the shard's latest tick (0: none yet). A shard
    /// whose tick is late is stuck (liveness).
    pub last_tick_ms: AtomicU64,
    /// The shard's counters, gauges and latency samples as of its latest tick.
    pub snapshot: Mutex<ShardSnapshot>,
}

impl ShardHealth {
    /// Milliseconds since the shard's latest tick at `now_ms` (a
    /// [`crate::stats::monotonic_ms`] reading); `None` before its first tick.
    pub fn tick_age_ms(&self, now_ms: u64) -> Option<u64> {
        match self.last_tick_ms.load(Ordering::Relaxed) {
            0 => None,
            tick => Some(now_ms.saturating_sub(tick)),
        }
    }
}

/// Sets [`ShardHealth::exited`] when dropped: held by a shard's main future.
#[derive(Debug)]
pub(crate) struct ExitGuard(pub(crate) Arc<ShardHealth>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.ready.store(false, Ordering::Relaxed);
        self.0.exited.store(true, Ordering::Relaxed);
    }
}

/// What one round of the log task did, on the blocking thread.
struct Round {
    wal: Option<Wal<FsStorage>>,
    /// `None` while the snapshot thread has it.
    state: Option<DurableState>,
    /// Records logged while the state is away, applied when it comes back.
    backlog: Vec<Record>,
    records: Vec<Record>,
    /// A snapshot to hand to the snapshot thread, with the state as of its LSN.
    snapshot: Option<(SnapshotJob, DurableState)>,
    result: Result<RoundDone, String>,
}

#[derive(Default)]
struct RoundDone {
    records: u64,
    synced: bool,
    written: bool,
    commit_us: u64,
    /// A snapshot written beside the commits ended well; how long it took.
    compaction_ms: Option<u64>,
    reopened: bool,
}

/// A snapshot the snapshot thread finished, with the state it was given.
struct SnapshotDone {
    job: SnapshotJob,
    result: Result<CompactReport, cutie_persistence::Error>,
    state: DurableState,
    took: Duration,
}

/// The shard's snapshot thread, `cutie-snap-<n>`: writes one snapshot at a time beside
/// the log's commits (see the module docs). A plain thread, not glommio's blocking pool:
/// that pool is the one thread the log's commits run on, and a snapshot there would make
/// them wait.
struct Snapshotter {
    jobs: Option<std::sync::mpsc::SyncSender<(SnapshotJob, DurableState)>>,
    done: std::sync::mpsc::Receiver<SnapshotDone>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Snapshotter {
    fn start(shard: u32, data_dir: PathBuf) -> std::io::Result<Self> {
        let (jobs, job_rx) = std::sync::mpsc::sync_channel::<(SnapshotJob, DurableState)>(1);
        let (done_tx, done) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(format!("cutie-snap-{shard}"))
            .spawn(move || {
                // Best effort: a thread that cannot lower its priority still works.
                // SAFETY: gettid has no preconditions; setpriority on this thread's own id
                // changes only this thread's nice value (Linux).
                let _ = unsafe {
                    libc::setpriority(
                        libc::PRIO_PROCESS,
                        libc::gettid() as libc::id_t,
                        SNAPSHOT_THREAD_NICE,
                    )
                };
                let mut storage = PacedStorage {
                    inner: FsStorage::new(data_dir),
                };
                for (job, state) in job_rx {
                    let started = Instant::now();
                    let result = job.write(&mut storage, &state);
                    let finished = SnapshotDone {
                        job,
                        result,
                        state,
                        took: started.elapsed(),
                    };
                    if done_tx.send(finished).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        // The log task waits for the job out before it ends, so the thread is idle here.
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What one shard's log task owns.
pub(crate) struct LogTask {
    pub(crate) config: LogConfig,
    pub(crate) shard: u32,
    pub(crate) health: Arc<ShardHealth>,
    pub(crate) wal: Wal<FsStorage>,
    pub(crate) state: DurableState,
    /// Where each synced batch's commit time (µs) is recorded.
    pub(crate) commit_latency_us: Rc<RefCell<Histogram<u64>>>,
}

/// Runs one shard's log until `stop` is set and nothing is left to write. `after_round`
/// runs after each batch (the runtime hands out what the commit released).
pub(crate) async fn run_log(
    core: &RefCell<ShardCore>,
    wake: &crate::runtime::Notify,
    stop: &std::cell::Cell<bool>,
    task: LogTask,
    after_round: impl Fn(),
) {
    let LogTask {
        config,
        shard,
        health,
        wal,
        state,
        commit_latency_us,
    } = task;
    const REOPEN_EVERY: Duration = Duration::from_secs(5);
    /// How often the task looks for the end of a snapshot while one is out.
    const SNAPSHOT_POLL: Duration = Duration::from_millis(5);
    let mut records: Vec<Record> = Vec::new();
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    let mut failed_at: Option<Instant> = None;
    let dir = wal.dir().to_owned();
    let mut wal_slot = Some(wal);
    let mut state = Some(state);
    let mut backlog: Vec<Record> = Vec::new();
    let mut snapshotter: Option<Snapshotter> = None;
    let mut snapshot_out = false;
    let mut finished: Option<SnapshotDone> = None;
    loop {
        if snapshot_out && finished.is_none() {
            if let Some(snapshotter) = &snapshotter {
                finished = snapshotter.done.try_recv().ok();
            }
        }
        let seq = core.borrow_mut().take_records(&mut records);
        let stopping = stop.get();
        let sync_due = match config.durability {
            Durability::Sync => true,
            Durability::Batch => unsynced && last_sync.elapsed() >= config.fsync_interval,
            Durability::None => false,
        } || stopping;
        // A reopen waits for the snapshot out: it needs the state, and must not race the
        // snapshot thread's removals.
        let reopen_due = !snapshot_out && failed_at.is_some_and(|at| at.elapsed() >= REOPEN_EVERY);
        if records.is_empty() && !(sync_due && unsynced) && !reopen_due && finished.is_none() {
            if stopping && !snapshot_out {
                break;
            }
            // Wait for records; in batch mode at most until the next sync is due, while
            // failed until the next reopen attempt, while a snapshot is out a few ms.
            let timeout = if snapshot_out {
                SNAPSHOT_POLL
            } else if failed_at.is_some() {
                REOPEN_EVERY
            } else if config.durability == Durability::Batch && unsynced {
                config.fsync_interval
            } else {
                Duration::from_millis(500)
            };
            futures_lite::future::or(
                async {
                    wake.wait().await;
                },
                async {
                    glommio::timer::sleep(timeout).await;
                },
            )
            .await;
            continue;
        }
        let wal = wal_slot.take();
        let round_dir = dir.clone();
        let batch = std::mem::take(&mut records);
        let wal_max_bytes = config.wal_max_bytes;
        let healthy = failed_at.is_none();
        let data_dir = config.data_dir.clone();
        let options = options(&config, shard);
        let round_state = state.take();
        let round_backlog = std::mem::take(&mut backlog);
        let round_finished = finished.take();
        if round_finished.is_some() {
            snapshot_out = false;
        }
        let round = glommio::executor()
            .spawn_blocking(move || {
                log_round(
                    RoundInput {
                        wal,
                        dir: round_dir,
                        state: round_state,
                        backlog: round_backlog,
                        finished: round_finished,
                        records: batch,
                    },
                    healthy,
                    sync_due,
                    reopen_due,
                    wal_max_bytes,
                    &data_dir,
                    options,
                )
            })
            .await;
        state = round.state;
        backlog = round.backlog;
        records = round.records;
        records.clear();
        wal_slot = round.wal;
        let mut result = round.result;
        if let Some((job, image)) = round.snapshot {
            if snapshotter.is_none() {
                match Snapshotter::start(shard, config.data_dir.clone()) {
                    Ok(started) => snapshotter = Some(started),
                    Err(error) => tracing::warn!(shard, %error, "cannot start the snapshot thread"),
                }
            }
            let sent = match snapshotter.as_ref().and_then(|s| s.jobs.as_ref()) {
                Some(jobs) => jobs.send((job, image)).map_err(|e| e.0),
                None => Err((job, image)),
            };
            match sent {
                Ok(()) => snapshot_out = true,
                Err((job, image)) => {
                    // No thread to write it: the state stays here, the log counts as
                    // failed and is reopened (which compacts) like after any failure.
                    state = Some(image);
                    let gone = cutie_persistence::Error::Io {
                        op: "hand a snapshot to the snapshot thread of",
                        dir: dir.clone(),
                        file: ".".to_owned(),
                        source: std::io::Error::other("snapshot thread unavailable"),
                    };
                    if let Some(wal) = wal_slot.as_mut() {
                        let _ = wal.end_snapshot(job, Err(gone));
                    }
                    result = Err("the snapshot thread is not running".to_owned());
                }
            }
        }
        {
            let mut core = core.borrow_mut();
            match result {
                Ok(done) => {
                    if done.written {
                        core.stats.wal_writes_total += 1;
                        core.stats.wal_records_total += done.records;
                        unsynced = true;
                    }
                    if done.synced {
                        core.stats.wal_syncs_total += 1;
                        core.stats.wal_commit_us_last = done.commit_us;
                        core.stats.wal_commit_us_max =
                            core.stats.wal_commit_us_max.max(done.commit_us);
                        commit_latency_us
                            .borrow_mut()
                            .saturating_record(done.commit_us);
                        last_sync = Instant::now();
                        unsynced = false;
                    }
                    if let Some(ms) = done.compaction_ms {
                        core.stats.wal_compactions_total += 1;
                        core.stats.wal_compaction_ms_max = core.stats.wal_compaction_ms_max.max(ms);
                    }
                    if let Some(wal) = &wal_slot {
                        core.stats.wal_segment_bytes = wal.segment_bytes();
                    }
                    if done.reopened {
                        tracing::warn!(shard, "write-ahead log reopened and healthy again");
                        failed_at = None;
                        health.log_failed.store(false, Ordering::Relaxed);
                        core.log_recovered(seq);
                    } else if failed_at.is_none() {
                        core.records_committed(seq);
                    }
                }
                Err(error) => {
                    if failed_at.is_none() {
                        tracing::error!(
                            shard,
                            %error,
                            "write-ahead log failed: refusing QoS 1/2 publishes until it can be reopened"
                        );
                        core.stats.wal_failures_total += 1;
                        health.log_failed.store(true, Ordering::Relaxed);
                        core.log_failed();
                    } else {
                        tracing::warn!(shard, %error, "write-ahead log still cannot be reopened");
                    }
                    failed_at = Some(Instant::now());
                }
            }
        }
        after_round();
    }
    // Nothing is out here (the loop ends only then): dropping joins an idle thread.
    drop(snapshotter);
}

/// What a round takes over from the log task.
struct RoundInput {
    wal: Option<Wal<FsStorage>>,
    dir: String,
    state: Option<DurableState>,
    backlog: Vec<Record>,
    /// The snapshot thread's outcome, to end the job with.
    finished: Option<SnapshotDone>,
    records: Vec<Record>,
}

fn apply_all(state: &mut DurableState, records: &[Record]) {
    for record in records {
        if let Err(misfit) = state.apply(record) {
            tracing::debug!(
                kind = record.kind(),
                ?misfit,
                "record does not fit the logged state"
            );
        }
    }
}

/// One round on the blocking thread: take back a finished snapshot, apply the batch to the
/// state (or keep it in the backlog while the state is away), append and write it (and
/// sync when due), and begin a snapshot when the segments are past the limit; or, after a
/// failure, try to reopen the log and snapshot the whole state.
#[allow(clippy::too_many_arguments)]
fn log_round(
    input: RoundInput,
    healthy: bool,
    sync: bool,
    reopen: bool,
    wal_max_bytes: u64,
    data_dir: &Path,
    options: WalOptions,
) -> Round {
    let RoundInput {
        mut wal,
        dir,
        mut state,
        mut backlog,
        finished,
        records,
    } = input;
    let mut done = RoundDone::default();
    let mut snapshot_failed = None;
    if let Some(finished) = finished {
        // The state comes back; what was logged meanwhile applies to it, in order.
        let mut back = finished.state;
        apply_all(&mut back, &backlog);
        backlog.clear();
        state = Some(back);
        if let Some(log) = wal.as_mut() {
            match log.end_snapshot(finished.job, finished.result) {
                Ok(_) => done.compaction_ms = Some(finished.took.as_millis() as u64),
                Err(error) if healthy => snapshot_failed = Some(error.to_string()),
                Err(_) => {}
            }
        }
    }
    match state.as_mut() {
        Some(state) => apply_all(state, &records),
        None => backlog.extend(records.iter().cloned()),
    }
    let round = |wal, state, backlog, records, result| Round {
        wal,
        state,
        backlog,
        records,
        snapshot: None,
        result,
    };
    if let Some(error) = snapshot_failed {
        return round(wal, state, backlog, records, Err(error));
    }
    let mut log = match wal {
        Some(log) if healthy => log,
        _ if !reopen => {
            // Failed: the records only go to the state, which the reopened log will
            // start from.
            return round(wal, state, backlog, records, Ok(done));
        }
        failed => {
            drop(failed);
            let Some(whole) = state.as_ref() else {
                // invariant: reopen is due only when no snapshot is out, so the state is here.
                return round(
                    None,
                    state,
                    backlog,
                    records,
                    Err("reopen while a snapshot is out".to_owned()),
                );
            };
            let result = Wal::open(FsStorage::new(data_dir), &dir, options).and_then(
                |(mut reopened, _, _)| {
                    reopened.compact(whole)?;
                    Ok(reopened)
                },
            );
            return match result {
                Ok(reopened) => {
                    done.reopened = true;
                    round(Some(reopened), state, backlog, records, Ok(done))
                }
                Err(error) => round(None, state, backlog, records, Err(error.to_string())),
            };
        }
    };
    let started = Instant::now();
    let mut snapshot = None;
    let result = (|| -> Result<(), cutie_persistence::Error> {
        for record in &records {
            log.append(record)?;
        }
        if !records.is_empty() {
            log.write()?;
            done.written = true;
            done.records = records.len() as u64;
        }
        if sync {
            log.sync()?;
            done.synced = true;
            done.commit_us = started.elapsed().as_micros() as u64;
        }
        if !log.snapshot_in_flight() && log.segment_bytes() > wal_max_bytes {
            if let Some(whole) = state.take() {
                match log.begin_snapshot() {
                    Ok(Some(job)) => snapshot = Some((job, whole)),
                    Ok(None) => state = Some(whole),
                    Err(error) => {
                        state = Some(whole);
                        return Err(error);
                    }
                }
            }
        }
        Ok(())
    })();
    Round {
        wal: Some(log),
        state,
        backlog,
        records,
        snapshot,
        result: result.map(|()| done).map_err(|e| e.to_string()),
    }
}
