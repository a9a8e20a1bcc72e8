//! `cutie-persistence`: one shard's write-ahead log, snapshots and crash recovery.
//!
//! Each shard owns one log in its own directory (`shard-<n>/`). The broker appends
//! [`Record`]s as things happen, commits once per batch (one `fdatasync` for the whole
//! batch), and acknowledges a client only when the records its acknowledgement depends on
//! are committed. On start, [`Wal::open`] rebuilds the [`DurableState`] from the newest
//! snapshot and the segments after it. `FORMAT.md` (beside this crate's `Cargo.toml`) is
//! the on-disk format, the acknowledgement contract, and the crash-consistency argument.
//!
//! The crate knows nothing of MQTT packets or of other cutie crates: records carry plain
//! strings, bytes and integers.
//!
//! - [`record`]: [`Record`], the durable events of a shard; [`Lsn`]; their rkyv encoding,
//!   always validated (bytecheck) before it is deserialized.
//! - [`frame`]: bytes on disk: `[len][crc32c][rkyv bytes]` frames, the 40-byte segment and
//!   snapshot headers, file names. Pure, total, never panics on any input.
//! - [`state`]: [`DurableState`], the deterministic model records apply to, and the
//!   records that rebuild it (what a snapshot holds).
//! - [`storage`]: [`Storage`], the only I/O seam, and [`FsStorage`] over `std::fs`
//!   (`fdatasync`, directory `fsync`).
//! - [`sim`]: [`SimStorage`], in memory: knows synced from unsynced bytes and directory
//!   entries, crashes at any sync point (optionally tearing writes), injects ENOSPC/EIO.
//! - [`wal`]: [`Wal`]: append, group commit, segment rotation, compaction (inline, or as a
//!   [`SnapshotJob`] written beside commits), health.
//! - [`recovery`]: [`Wal::open`] and its [`RecoveryReport`]: snapshot + replay, torn tails
//!   cut off, damage reported (or, with `skip_corrupt`, kept aside and skipped).
//! - [`error`]: [`Error`], each variant naming the file and what was being done.

pub mod error;
pub mod frame;
pub mod record;
pub mod recovery;
pub mod sim;
pub mod state;
pub mod storage;
pub mod wal;

pub use error::{Damage, Error};
pub use frame::FORMAT_VERSION;
pub use record::{Lsn, Record};
pub use recovery::{Corruption, RecoveryReport, TornTail};
pub use sim::{CrashPoint, Fault, SimStorage};
pub use state::{
    DurableState, Inflight, InflightPhase, Message, Misfit, RetainedMessage, SessionState,
};
pub use storage::{FsStorage, Storage};
pub use wal::{shard_dir, CompactReport, Health, SnapshotJob, Wal, WalOptions};
