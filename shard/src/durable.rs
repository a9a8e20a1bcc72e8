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
//! to) and, when the segments pass `wal_max_bytes`, writes it as a snapshot and deletes
//! the segments (compaction; commits wait while it runs, and the longest wait is counted).
//!
//! A failed write or sync makes the log unhealthy: the core refuses QoS 1/2 publishes and
//! closes connections whose acknowledgements waited. The task then tries every few
//! seconds to reopen the log and write its whole state as a snapshot; when that works the
//! shard is healthy again.

use crate::core::{Durability, ShardCore};
use crate::message::owner_of;
use crate::stats::ShardSnapshot;
use cutie_persistence::{
    shard_dir, DurableState, FsStorage, Record, RecoveryReport, Wal, WalOptions,
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
        ..WalOptions::new(shard)
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
    state: DurableState,
    records: Vec<Record>,
    result: Result<RoundDone, String>,
}

#[derive(Default)]
struct RoundDone {
    records: u64,
    synced: bool,
    written: bool,
    commit_us: u64,
    compaction_ms: Option<u64>,
    reopened: bool,
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
        mut state,
        commit_latency_us,
    } = task;
    const REOPEN_EVERY: Duration = Duration::from_secs(5);
    let mut records: Vec<Record> = Vec::new();
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    let mut failed_at: Option<Instant> = None;
    let dir = wal.dir().to_owned();
    let mut wal_slot = Some(wal);
    loop {
        let seq = core.borrow_mut().take_records(&mut records);
        let stopping = stop.get();
        let sync_due = match config.durability {
            Durability::Sync => true,
            Durability::Batch => unsynced && last_sync.elapsed() >= config.fsync_interval,
            Durability::None => false,
        } || stopping;
        let reopen_due = failed_at.is_some_and(|at| at.elapsed() >= REOPEN_EVERY);
        if records.is_empty() && !(sync_due && unsynced) && !reopen_due {
            if stopping {
                break;
            }
            // Wait for records; in batch mode at most until the next sync is due, and
            // while failed until the next reopen attempt.
            let timeout = if failed_at.is_some() {
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
        let dir = dir.clone();
        let batch = std::mem::take(&mut records);
        let wal_max_bytes = config.wal_max_bytes;
        let healthy = failed_at.is_none();
        let data_dir = config.data_dir.clone();
        let options = options(&config, shard);
        let round = glommio::executor()
            .spawn_blocking(move || {
                log_round(
                    wal,
                    dir,
                    state,
                    batch,
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
        records = round.records;
        records.clear();
        wal_slot = round.wal;
        {
            let mut core = core.borrow_mut();
            match round.result {
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
}

/// One round on the blocking thread: apply the batch to the state, append and write it
/// (and sync when due), compact when the segments are past the limit; or, after a
/// failure, try to reopen the log and snapshot the whole state.
#[allow(clippy::too_many_arguments)]
fn log_round(
    wal: Option<Wal<FsStorage>>,
    dir: String,
    mut state: DurableState,
    records: Vec<Record>,
    healthy: bool,
    sync: bool,
    reopen: bool,
    wal_max_bytes: u64,
    data_dir: &Path,
    options: WalOptions,
) -> Round {
    for record in &records {
        if let Err(misfit) = state.apply(record) {
            tracing::debug!(
                kind = record.kind(),
                ?misfit,
                "record does not fit the logged state"
            );
        }
    }
    let mut done = RoundDone::default();
    let wal = match wal {
        Some(wal) if healthy => wal,
        _ if !reopen => {
            // Failed: the records only go to the state, which the reopened log will
            // start from.
            return Round {
                wal,
                state,
                records,
                result: Ok(done),
            };
        }
        failed => {
            drop(failed);
            let result = Wal::open(FsStorage::new(data_dir), &dir, options).and_then(
                |(mut reopened, _, _)| {
                    reopened.compact(&state)?;
                    Ok(reopened)
                },
            );
            return match result {
                Ok(reopened) => {
                    done.reopened = true;
                    Round {
                        wal: Some(reopened),
                        state,
                        records,
                        result: Ok(done),
                    }
                }
                Err(error) => Round {
                    wal: None,
                    state,
                    records,
                    result: Err(error.to_string()),
                },
            };
        }
    };
    let mut wal = wal;
    let started = Instant::now();
    let result = (|| -> Result<(), cutie_persistence::Error> {
        for record in &records {
            wal.append(record)?;
        }
        if !records.is_empty() {
            wal.write()?;
            done.written = true;
            done.records = records.len() as u64;
        }
        if sync {
            wal.sync()?;
            done.synced = true;
            done.commit_us = started.elapsed().as_micros() as u64;
        }
        if wal.segment_bytes() > wal_max_bytes {
            let compaction = Instant::now();
            wal.compact(&state)?;
            done.compaction_ms = Some(compaction.elapsed().as_millis() as u64);
        }
        Ok(())
    })();
    Round {
        wal: Some(wal),
        state,
        records,
        result: result.map(|()| done).map_err(|e| e.to_string()),
    }
}
