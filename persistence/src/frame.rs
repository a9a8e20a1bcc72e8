//! Bytes on disk: record frames, file headers and file names.
//!
//! A frame is `[len: u32 LE][crc: u32 LE][bytes; len]` where `bytes` is one rkyv-archived
//! [`Record`](crate::Record) and `crc` is CRC32C (Castagnoli) over the four length bytes
//! followed by `bytes`. Covering the length binds it to the content: a flipped length bit
//! can never produce a frame whose checksum matches. `len` is never 0.
//!
//! Segment and snapshot files start with one 40-byte [`FileHeader`] and continue with
//! frames. Everything here is pure: it turns bytes into values and back, and never panics
//! on any input.

use crate::record::Lsn;

/// Bytes before a frame's record bytes: the length and the checksum.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Bytes of a segment or snapshot file header.
pub const FILE_HEADER_BYTES: usize = 40;

/// Version of everything in `FORMAT.md`: file headers, framing and the archived `Record`.
/// A reader refuses files of any other version instead of guessing.
pub const FORMAT_VERSION: u32 = 2;

/// Magic bytes opening a log segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CUTIEWAL";

/// Magic bytes opening a snapshot.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"CUTIESNP";

/// The checksum stored in a frame: CRC32C over the little-endian length, then the bytes.
#[must_use]
pub fn frame_crc(len: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), bytes)
}

/// Appends the frame of `record_bytes` to `out`.
///
/// The caller guarantees `0 < record_bytes.len() <= u32::MAX` (the WAL checks its own,
/// smaller `record_bytes_max`; rkyv never produces an empty archive for a `Record`).
pub fn push_frame(record_bytes: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(record_bytes.len()).unwrap_or(u32::MAX);
    assert!(
        len > 0 && len as usize == record_bytes.len(),
        "frame of {} bytes cannot be framed",
        record_bytes.len()
    );
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&frame_crc(len, record_bytes).to_le_bytes());
    out.extend_from_slice(record_bytes);
}

/// What is wrong with the bytes where a frame should start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameDefect {
    /// Fewer than 8 bytes remain: the frame header itself is cut.
    HeaderCut,
    /// The length field is 0, which no writer produces (zeroed or garbage space).
    ZeroLength,
    /// The length field points past the end of the file.
    PastEnd {
        /// The length the frame claims.
        len: u32,
    },
    /// The checksum does not match the length and bytes.
    ChecksumMismatch,
}

impl std::fmt::Display for FrameDefect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameDefect::HeaderCut => write!(f, "frame header cut short"),
            FrameDefect::ZeroLength => write!(f, "frame length 0"),
            FrameDefect::PastEnd { len } => {
                write!(f, "frame length {len} runs past the end of the file")
            }
            FrameDefect::ChecksumMismatch => write!(f, "CRC32C mismatch"),
        }
    }
}

/// The result of reading one frame at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameRead<'a> {
    /// Exactly at the end of the buffer: no more frames.
    End,
    /// A frame whose checksum matches. `next` is the offset of the following frame.
    Frame {
        /// The record bytes (not yet validated as an archive).
        bytes: &'a [u8],
        /// Offset right after this frame.
        next: usize,
    },
    /// No valid frame starts here.
    Defect(FrameDefect),
}

/// Reads the frame starting at `offset` in `buf`. Never panics: `offset` past the end reads
/// as [`FrameDefect::HeaderCut`].
#[must_use]
pub fn read_frame(buf: &[u8], offset: usize) -> FrameRead<'_> {
    if offset == buf.len() {
        return FrameRead::End;
    }
    let Some(header) = buf
        .get(offset..)
        .and_then(|rest| rest.get(..FRAME_HEADER_BYTES))
    else {
        return FrameRead::Defect(FrameDefect::HeaderCut);
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 {
        return FrameRead::Defect(FrameDefect::ZeroLength);
    }
    let start = offset + FRAME_HEADER_BYTES;
    let Some(bytes) = buf.get(start..).and_then(|rest| rest.get(..len as usize)) else {
        return FrameRead::Defect(FrameDefect::PastEnd { len });
    };
    if frame_crc(len, bytes) != crc {
        return FrameRead::Defect(FrameDefect::ChecksumMismatch);
    }
    FrameRead::Frame {
        bytes,
        next: start + len as usize,
    }
}

/// Which kind of file a header opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A log segment: records from `lsn` on.
    Segment,
    /// A snapshot: `record_count` records that rebuild the state as of `lsn`.
    Snapshot,
}

/// The 40-byte header of a segment or snapshot file.
///
/// ```text
///  0  magic          8 bytes  "CUTIEWAL" (segment) or "CUTIESNP" (snapshot)
///  8  format_version u32 LE   FORMAT_VERSION
/// 12  shard_id       u32 LE
/// 16  lsn            u64 LE   segment: LSN of its first record; snapshot: state as of
/// 24  record_count   u64 LE   snapshot: number of frames that follow; segment: 0
/// 32  reserved       u32 LE   0
/// 36  header_crc     u32 LE   CRC32C of bytes 0..36
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileHeader {
    /// Segment or snapshot.
    pub kind: FileKind,
    /// The shard whose log this is.
    pub shard_id: u32,
    /// Segment: LSN of the first record. Snapshot: the LSN the state is as of.
    pub lsn: Lsn,
    /// Snapshot: how many frames follow. Segment: 0.
    pub record_count: u64,
}

/// Why a file header was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The file is shorter than a header.
    Short,
    /// The magic is not the expected kind's.
    BadMagic,
    /// The header checksum does not match.
    ChecksumMismatch,
    /// A well-formed header of another format version.
    UnsupportedVersion(u32),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Short => {
                write!(f, "file shorter than its {FILE_HEADER_BYTES}-byte header")
            }
            HeaderError::BadMagic => write!(f, "bad magic"),
            HeaderError::ChecksumMismatch => write!(f, "header CRC32C mismatch"),
            HeaderError::UnsupportedVersion(v) => {
                write!(f, "format version {v}, this build reads {FORMAT_VERSION}")
            }
        }
    }
}

impl FileHeader {
    /// The header's bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; FILE_HEADER_BYTES] {
        let mut out = [0u8; FILE_HEADER_BYTES];
        out[0..8].copy_from_slice(match self.kind {
            FileKind::Segment => &SEGMENT_MAGIC,
            FileKind::Snapshot => &SNAPSHOT_MAGIC,
        });
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.shard_id.to_le_bytes());
        out[16..24].copy_from_slice(&self.lsn.get().to_le_bytes());
        out[24..32].copy_from_slice(&self.record_count.to_le_bytes());
        // 32..36 reserved, zero.
        let crc = crc32c::crc32c(&out[..36]);
        out[36..40].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses the header at the start of `file`, expecting `kind`.
    pub fn decode(file: &[u8], kind: FileKind) -> Result<FileHeader, HeaderError> {
        let Some(h) = file.get(..FILE_HEADER_BYTES) else {
            return Err(HeaderError::Short);
        };
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(b)
        };
        if crc32c::crc32c(&h[..36]) != u32_at(36) {
            return Err(HeaderError::ChecksumMismatch);
        }
        let expected_magic = match kind {
            FileKind::Segment => &SEGMENT_MAGIC,
            FileKind::Snapshot => &SNAPSHOT_MAGIC,
        };
        if &h[0..8] != expected_magic {
            return Err(HeaderError::BadMagic);
        }
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        Ok(FileHeader {
            kind,
            shard_id: u32_at(12),
            lsn: Lsn(u64_at(16)),
            record_count: u64_at(24),
        })
    }
}

/// What a file name in a shard directory says the file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileName {
    /// `seg-<first lsn, 20 digits>.wal`
    Segment(Lsn),
    /// `snap-<lsn, 20 digits>.snap`
    Snapshot(Lsn),
    /// `snap-<lsn, 20 digits>.snap.tmp`: a snapshot being written; never read.
    SnapshotTmp(Lsn),
    /// `<any>.corrupt-<n>`: a damaged file kept aside; never read, never deleted.
    Corrupt,
    /// Anything else: left alone.
    Other,
}

/// The file name of the segment whose first record is `first`.
#[must_use]
pub fn segment_name(first: Lsn) -> String {
    format!("seg-{:020}.wal", first.get())
}

/// The file name of the snapshot as of `lsn`.
#[must_use]
pub fn snapshot_name(lsn: Lsn) -> String {
    format!("snap-{:020}.snap", lsn.get())
}

/// The temporary name a snapshot is written under before it is renamed into place.
#[must_use]
pub fn snapshot_tmp_name(lsn: Lsn) -> String {
    format!("snap-{:020}.snap.tmp", lsn.get())
}

/// The name a damaged file is kept under.
#[must_use]
pub fn corrupt_name(name: &str, n: u32) -> String {
    format!("{name}.corrupt-{n}")
}

fn twenty_digits(s: &str) -> Option<Lsn> {
    if s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok().map(Lsn)
    } else {
        None
    }
}

/// Classifies a file name.
#[must_use]
pub fn parse_name(name: &str) -> FileName {
    if let Some(pos) = name.rfind(".corrupt-") {
        let n = &name[pos + ".corrupt-".len()..];
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            return FileName::Corrupt;
        }
    }
    if let Some(lsn) = name
        .strip_prefix("seg-")
        .and_then(|s| s.strip_suffix(".wal"))
        .and_then(twenty_digits)
    {
        return FileName::Segment(lsn);
    }
    if let Some(rest) = name.strip_prefix("snap-") {
        if let Some(lsn) = rest.strip_suffix(".snap").and_then(twenty_digits) {
            return FileName::Snapshot(lsn);
        }
        if let Some(lsn) = rest.strip_suffix(".snap.tmp").and_then(twenty_digits) {
            return FileName::SnapshotTmp(lsn);
        }
    }
    FileName::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(records: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            push_frame(r, &mut out);
        }
        out
    }

    #[test]
    fn a_frame_is_length_crc_bytes_little_endian() {
        let buf = frames(&[b"abc"]);
        assert_eq!(&buf[0..4], &3u32.to_le_bytes());
        assert_eq!(&buf[4..8], &frame_crc(3, b"abc").to_le_bytes());
        assert_eq!(&buf[8..], b"abc");
        // CRC32C check value ("123456789" -> 0xE3069283) pins the polynomial.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn frames_read_back_in_order_then_end() {
        let buf = frames(&[b"one", b"two!", &[0u8; 300]]);
        let mut offset = 0;
        let mut got = Vec::new();
        loop {
            match read_frame(&buf, offset) {
                FrameRead::End => break,
                FrameRead::Frame { bytes, next } => {
                    got.push(bytes.len());
                    offset = next;
                }
                FrameRead::Defect(d) => panic!("defect {d:?} at {offset}"),
            }
        }
        assert_eq!(got, vec![3, 4, 300]);
    }

    #[test]
    fn every_cut_of_a_frame_is_a_defect_not_a_frame() {
        let buf = frames(&[b"hello world"]);
        for cut in 1..buf.len() {
            match read_frame(&buf[..cut], 0) {
                FrameRead::Defect(FrameDefect::HeaderCut) => assert!(cut < 8),
                FrameRead::Defect(FrameDefect::PastEnd { len: 11 }) => assert!(cut >= 8),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_single_bit_flip_of_a_frame_is_detected() {
        let buf = frames(&[b"the quick brown fox"]);
        for bit in 0..buf.len() * 8 {
            let mut damaged = buf.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(read_frame(&damaged, 0), FrameRead::Defect(_)),
                "bit {bit} flip accepted"
            );
        }
    }

    #[test]
    fn zeroed_space_is_not_a_frame() {
        assert_eq!(
            read_frame(&[0u8; 64], 0),
            FrameRead::Defect(FrameDefect::ZeroLength)
        );
    }

    #[test]
    fn offsets_past_the_end_do_not_panic() {
        assert_eq!(
            read_frame(b"abc", 10),
            FrameRead::Defect(FrameDefect::HeaderCut)
        );
    }

    #[test]
    fn headers_round_trip_and_reject_damage() {
        let header = FileHeader {
            kind: FileKind::Snapshot,
            shard_id: 3,
            lsn: Lsn(1 << 40),
            record_count: 17,
        };
        let bytes = header.encode();
        assert_eq!(FileHeader::decode(&bytes, FileKind::Snapshot), Ok(header));
        assert_eq!(
            FileHeader::decode(&bytes, FileKind::Segment),
            Err(HeaderError::BadMagic)
        );
        assert_eq!(
            FileHeader::decode(&bytes[..39], FileKind::Snapshot),
            Err(HeaderError::Short)
        );
        for bit in 0..FILE_HEADER_BYTES * 8 {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(FileHeader::decode(&damaged, FileKind::Snapshot).is_err());
        }
    }

    #[test]
    fn a_well_formed_header_of_another_version_says_so() {
        let mut bytes = FileHeader {
            kind: FileKind::Segment,
            shard_id: 0,
            lsn: Lsn(1),
            record_count: 0,
        }
        .encode();
        let other = FORMAT_VERSION + 1;
        bytes[8..12].copy_from_slice(&other.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..36]);
        bytes[36..40].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            FileHeader::decode(&bytes, FileKind::Segment),
            Err(HeaderError::UnsupportedVersion(other))
        );
    }

    #[test]
    fn names_round_trip_and_strangers_are_other() {
        assert_eq!(segment_name(Lsn(5)), "seg-00000000000000000005.wal");
        assert_eq!(parse_name(&segment_name(Lsn(5))), FileName::Segment(Lsn(5)));
        assert_eq!(
            parse_name(&snapshot_name(Lsn(u64::MAX))),
            FileName::Snapshot(Lsn(u64::MAX))
        );
        assert_eq!(
            parse_name(&snapshot_tmp_name(Lsn(9))),
            FileName::SnapshotTmp(Lsn(9))
        );
        assert_eq!(
            parse_name(&corrupt_name(&segment_name(Lsn(1)), 2)),
            FileName::Corrupt
        );
        for other in [
            "seg-1.wal",
            "seg-0000000000000000000x.wal",
            "snap-00000000000000000001.snapx",
            "README",
            "x.corrupt-",
            "seg-99999999999999999999.wal", // does not fit in u64
        ] {
            assert_eq!(parse_name(other), FileName::Other, "{other}");
        }
    }
}
