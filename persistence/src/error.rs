//! Errors of the log and of recovery. Each one says which file, doing what.

use std::io;

use crate::record::Lsn;

/// What made a file or record unreadable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The file header is missing, has a bad magic or a bad checksum.
    Header(crate::frame::HeaderError),
    /// A frame is cut, has length 0, or fails its checksum, and valid frames follow it (or
    /// the file is not the last segment): not a torn write.
    Frame(crate::frame::FrameDefect),
    /// The frame's checksum matches but its bytes are not a valid archived record.
    InvalidArchive(String),
    /// A snapshot has fewer or more frames than its header says.
    SnapshotLength {
        /// Records the header announces.
        expected: u64,
        /// Records actually found before the end or the first defect.
        found: u64,
    },
    /// A snapshot has bytes after its last announced record.
    TrailingBytes,
    /// The file's header disagrees with its name.
    NameMismatch {
        /// The LSN in the name.
        name_lsn: Lsn,
        /// The LSN in the header.
        header_lsn: Lsn,
    },
    /// The segment starts before the previous one ends: two records would share an LSN.
    Overlap {
        /// The first LSN the previous segments did not cover.
        expected: Lsn,
        /// This segment's first LSN.
        first: Lsn,
    },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Header(e) => write!(f, "bad file header: {e}"),
            Damage::Frame(d) => write!(f, "{d}"),
            Damage::InvalidArchive(e) => write!(f, "checksum ok but not a valid record: {e}"),
            Damage::SnapshotLength { expected, found } => {
                write!(f, "snapshot announces {expected} records, holds {found}")
            }
            Damage::TrailingBytes => write!(f, "bytes after the last announced record"),
            Damage::NameMismatch {
                name_lsn,
                header_lsn,
            } => write!(f, "name says LSN {name_lsn}, header says {header_lsn}"),
            Damage::Overlap { expected, first } => write!(
                f,
                "segment starts at LSN {first} but earlier segments reach LSN {expected}"
            ),
        }
    }
}

/// An error of the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A storage call failed.
    #[error("{op} {dir}/{file}: {source}")]
    Io {
        /// What was being done: "append", "sync", "rename", ...
        op: &'static str,
        /// The shard directory.
        dir: String,
        /// The file (or `.` for the directory itself).
        file: String,
        /// The storage's error.
        #[source]
        source: io::Error,
    },

    /// A file holds damaged data where valid records must be. The file is left as it is;
    /// reopening with `skip_corrupt` accepts the loss, keeps the file aside as
    /// `<name>.corrupt-<n>` and goes on.
    #[error("corrupt {dir}/{file} at byte {offset}: {damage}")]
    Corrupt {
        /// The shard directory.
        dir: String,
        /// The damaged file.
        file: String,
        /// Byte offset of the damage in the file.
        offset: u64,
        /// What is wrong.
        damage: Damage,
    },

    /// Records are missing between a snapshot or segment and the next segment (a segment
    /// was lost). Reopening with `skip_corrupt` accepts the loss.
    #[error("records {from}..={to} missing in {dir} before {file}")]
    MissingRecords {
        /// The shard directory.
        dir: String,
        /// The first file after the gap.
        file: String,
        /// First missing LSN.
        from: Lsn,
        /// Last missing LSN.
        to: Lsn,
    },

    /// A file of another shard's log is in this shard's directory.
    #[error("{dir}/{file} belongs to shard {found}, this is shard {expected}")]
    WrongShard {
        /// The shard directory.
        dir: String,
        /// The file.
        file: String,
        /// The shard id in the file.
        found: u32,
        /// The shard id this log was opened for.
        expected: u32,
    },

    /// A file of another format version. Never skipped: a newer build wrote it.
    #[error("{dir}/{file} has format version {found}, this build reads {supported}")]
    UnsupportedVersion {
        /// The shard directory.
        dir: String,
        /// The file.
        file: String,
        /// The version in the file.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },

    /// A record is larger than `record_bytes_max`. Nothing was appended.
    #[error("record {kind} is {len_bytes} bytes, more than record_bytes_max {max_bytes}")]
    RecordTooLarge {
        /// The record's kind.
        kind: &'static str,
        /// Its encoded size.
        len_bytes: usize,
        /// The limit.
        max_bytes: u32,
    },

    /// rkyv failed to serialize a record (an allocation failure or a bug).
    #[error("encoding record {kind}: {message}")]
    Encode {
        /// The record's kind.
        kind: &'static str,
        /// rkyv's error.
        message: String,
    },

    /// An earlier storage failure left the log in an unknown state; it takes no more
    /// records. Drop it and [`Wal::open`](crate::Wal::open) again.
    #[error("write-ahead log {dir} is unhealthy since: {cause}; reopen it")]
    Unhealthy {
        /// The shard directory.
        dir: String,
        /// The first failure.
        cause: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, dir: &str, file: &str) -> impl FnOnce(io::Error) -> Error {
        let dir = dir.to_owned();
        let file = file.to_owned();
        move |source| Error::Io {
            op,
            dir,
            file,
            source,
        }
    }
}
