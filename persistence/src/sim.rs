//! [`SimStorage`]: an in-memory [`Storage`] that knows what a crash would keep.
//!
//! Every file has two versions of its content: what the process sees (`current`) and what
//! survived the last `sync` (`durable`). Every directory has two versions of its entries:
//! what the process sees and what survived the last `sync_dir`, plus the list of entry
//! changes (create, rename, remove) since. [`SimStorage::crash`] throws away what was not
//! made durable:
//!
//! - by default every unsynced byte and every unsynced directory change is lost;
//! - with [`SimStorage::with_torn_writes`] (seeded, deterministic) each file keeps an
//!   arbitrary prefix of its unsynced appends (a torn write), a truncation may or may not
//!   have happened, and each directory keeps an arbitrary prefix of its unsynced changes
//!   (a journaling file system commits metadata in order).
//!
//! Crashes can be planned at the n-th `sync`/`sync_dir` (just before or just after it):
//! from then on every call fails, as if the process had died, until the test calls
//! [`crash`](SimStorage::crash) and reopens. Faults can be injected: the n-th `append`
//! fails with ENOSPC or EIO after writing half its bytes, or the n-th sync fails and
//! makes nothing durable (the kernel may have dropped the dirty pages).
//!
//! Handles are cheap clones of one shared state, so a test keeps one while the WAL owns
//! another. Directory creation is durable at once (a simplification: shard directories
//! are created once, with a parent fsync, by `FsStorage`).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::storage::Storage;

/// When a planned crash happens, relative to the sync it is planned at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// The sync never happens: the process dies while calling it.
    BeforeSync,
    /// The sync completes, then the process dies before doing anything else.
    AfterSync,
}

/// The error an injected fault returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// ENOSPC: no space left on device.
    NoSpace,
    /// EIO: an I/O error.
    Io,
}

impl Fault {
    fn error(self) -> io::Error {
        match self {
            Fault::NoSpace => io::Error::new(io::ErrorKind::StorageFull, "simulated ENOSPC"),
            Fault::Io => io::Error::other("simulated EIO"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultOp {
    Append,
    Sync,
}

/// A file handle of [`SimStorage`]. Handles from before a crash are stale and fail.
#[derive(Debug)]
pub struct SimFile {
    inode: usize,
    epoch: u64,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link { name: String, inode: usize },
    Unlink { name: String },
    Rename { from: String, to: String },
}

impl DirOp {
    fn apply(&self, entries: &mut BTreeMap<String, usize>) {
        match self {
            DirOp::Link { name, inode } => {
                entries.insert(name.clone(), *inode);
            }
            DirOp::Unlink { name } => {
                entries.remove(name);
            }
            DirOp::Rename { from, to } => {
                if let Some(inode) = entries.remove(from) {
                    entries.insert(to.clone(), inode);
                }
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
struct SimDir {
    current: BTreeMap<String, usize>,
    durable: BTreeMap<String, usize>,
    pending: Vec<DirOp>,
}

#[derive(Clone, Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
}

/// SplitMix64: tiny, seeded, good enough to pick prefixes.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    fn up_to(&mut self, max: usize) -> usize {
        (self.next() % (max as u64 + 1)) as usize
    }
}

#[derive(Clone, Debug, Default)]
struct Sim {
    dirs: BTreeMap<String, SimDir>,
    inodes: Vec<Inode>,
    /// Bumped by every crash; handles carry the epoch they were opened in.
    epoch: u64,
    appends: u64,
    syncs: u64,
    faults: Vec<(FaultOp, u64, Fault)>,
    crash_at: Option<(u64, CrashPoint)>,
    halted: bool,
    torn: Option<Rng>,
    crashes: u64,
}

fn halted_error() -> io::Error {
    io::Error::other("simulated crash: the process is dead")
}

fn not_found(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{what}: not found"))
}

/// What survives a crash of a file whose content is `current` and was `durable` at the last
/// sync, in torn-write mode.
fn torn_content(durable: &[u8], current: &[u8], rng: &mut Rng) -> Vec<u8> {
    if current.len() >= durable.len() && current.starts_with(durable) {
        let extra = current.len() - durable.len();
        return current[..durable.len() + rng.up_to(extra)].to_vec();
    }
    // A truncation (perhaps followed by appends) that was not synced: either it did not
    // reach the disk, or it did, with some prefix of what followed.
    if rng.next().is_multiple_of(2) {
        return durable.to_vec();
    }
    let common = durable
        .iter()
        .zip(current)
        .take_while(|(a, b)| a == b)
        .count();
    current[..common + rng.up_to(current.len() - common)].to_vec()
}

impl Sim {
    fn check_alive(&self) -> io::Result<()> {
        if self.halted {
            Err(halted_error())
        } else {
            Ok(())
        }
    }

    fn dir(&self, dir: &str) -> io::Result<&SimDir> {
        self.dirs.get(dir).ok_or_else(|| not_found(dir))
    }

    fn dir_mut(&mut self, dir: &str) -> io::Result<&mut SimDir> {
        self.dirs.get_mut(dir).ok_or_else(|| not_found(dir))
    }

    fn inode_mut(&mut self, file: &SimFile) -> io::Result<&mut Inode> {
        if file.epoch != self.epoch {
            return Err(io::Error::other("stale handle from before a crash"));
        }
        self.inodes
            .get_mut(file.inode)
            .ok_or_else(|| io::Error::other("unknown handle"))
    }

    fn take_fault(&mut self, op: FaultOp, count: u64) -> Option<Fault> {
        let i = self
            .faults
            .iter()
            .position(|(o, n, _)| *o == op && *n == count)?;
        Some(self.faults.swap_remove(i).2)
    }

    /// Counts a sync and decides its fate. `Ok(true)`: perform it, then halt.
    fn sync_point(&mut self) -> io::Result<bool> {
        self.check_alive()?;
        self.syncs += 1;
        if let Some(fault) = self.take_fault(FaultOp::Sync, self.syncs) {
            return Err(fault.error());
        }
        match self.crash_at {
            Some((n, CrashPoint::BeforeSync)) if n == self.syncs => {
                self.halted = true;
                Err(halted_error())
            }
            Some((n, CrashPoint::AfterSync)) if n == self.syncs => Ok(true),
            _ => Ok(false),
        }
    }

    fn crash(&mut self) {
        let mut rng = self.torn.take();
        for dir in self.dirs.values_mut() {
            let keep = rng.as_mut().map_or(0, |r| r.up_to(dir.pending.len()));
            let mut entries = dir.durable.clone();
            for op in &dir.pending[..keep] {
                op.apply(&mut entries);
            }
            dir.current = entries.clone();
            dir.durable = entries;
            dir.pending.clear();
        }
        for inode in &mut self.inodes {
            let survived = match rng.as_mut() {
                Some(r) if inode.current != inode.durable => {
                    torn_content(&inode.durable, &inode.current, r)
                }
                _ => inode.durable.clone(),
            };
            inode.current = survived.clone();
            inode.durable = survived;
        }
        self.torn = rng;
        self.epoch += 1;
        self.halted = false;
        self.crash_at = None;
        self.faults.clear();
        self.crashes += 1;
    }
}

/// In-memory, deterministic [`Storage`] with crash simulation and fault injection. See the
/// module docs.
#[derive(Clone, Debug, Default)]
pub struct SimStorage {
    inner: Arc<Mutex<Sim>>,
}

impl SimStorage {
    /// Empty storage whose crashes lose every unsynced byte and directory change.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Empty storage whose crashes keep a seeded arbitrary prefix of the unsynced appends
    /// of each file and of the unsynced directory changes of each directory.
    #[must_use]
    pub fn with_torn_writes(seed: u64) -> Self {
        let storage = Self::default();
        storage.lock().torn = Some(Rng(seed));
        storage
    }

    /// Switches torn-write crashes on (seeded) or off for the crashes to come.
    pub fn set_torn_writes(&self, seed: Option<u64>) {
        self.lock().torn = seed.map(Rng);
    }

    fn lock(&self) -> MutexGuard<'_, Sim> {
        // A panic in a test thread must not hide the state from the next assertion.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The process dies and the machine restarts: what was not durable is lost (or, with
    /// torn writes, partly kept). Clears a planned crash and pending faults; handles opened
    /// before are stale.
    pub fn crash(&self) {
        self.lock().crash();
    }

    /// An independent copy of the whole storage (files, unsynced bytes, counters, plans):
    /// for tests that try many futures from one state.
    #[must_use]
    pub fn fork(&self) -> SimStorage {
        SimStorage {
            inner: Arc::new(Mutex::new(self.lock().clone())),
        }
    }

    /// Plans a crash at the `n`-th sync (`sync` or `sync_dir`, counting from 1) after this
    /// call.
    pub fn crash_at_sync(&self, n: u64, point: CrashPoint) {
        let mut sim = self.lock();
        sim.crash_at = Some((sim.syncs + n, point));
    }

    /// Makes the `n`-th `append` after this call (counting from 1) write half its bytes and
    /// fail with `fault`.
    pub fn fail_append(&self, n: u64, fault: Fault) {
        let mut sim = self.lock();
        let at = sim.appends + n;
        sim.faults.push((FaultOp::Append, at, fault));
    }

    /// Makes the `n`-th sync (`sync` or `sync_dir`) after this call (counting from 1) fail
    /// with `fault`, making nothing durable.
    pub fn fail_sync(&self, n: u64, fault: Fault) {
        let mut sim = self.lock();
        let at = sim.syncs + n;
        sim.faults.push((FaultOp::Sync, at, fault));
    }

    /// Syncs (`sync` and `sync_dir`) performed or attempted so far.
    #[must_use]
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    /// Appends performed or attempted so far.
    #[must_use]
    pub fn append_count(&self) -> u64 {
        self.lock().appends
    }

    /// Whether a planned crash has happened and the storage now fails every call.
    #[must_use]
    pub fn is_halted(&self) -> bool {
        self.lock().halted
    }

    /// How many times [`crash`](Self::crash) ran.
    #[must_use]
    pub fn crash_count(&self) -> u64 {
        self.lock().crashes
    }

    /// The durable content of a file, if its durable directory entry exists.
    #[must_use]
    pub fn durable_content(&self, dir: &str, name: &str) -> Option<Vec<u8>> {
        let sim = self.lock();
        let inode = *sim.dirs.get(dir)?.durable.get(name)?;
        sim.inodes.get(inode).map(|i| i.durable.clone())
    }

    /// Sets a file's content, durably (creating it and its directory if needed): for tests
    /// that damage files on purpose.
    pub fn put_durable(&self, dir: &str, name: &str, content: &[u8]) {
        let mut sim = self.lock();
        let existing = sim.dirs.get(dir).and_then(|d| d.current.get(name)).copied();
        let inode = match existing {
            Some(inode) => inode,
            None => {
                sim.inodes.push(Inode::default());
                sim.inodes.len() - 1
            }
        };
        sim.inodes[inode] = Inode {
            current: content.to_vec(),
            durable: content.to_vec(),
        };
        let d = sim.dirs.entry(dir.to_owned()).or_default();
        d.current.insert(name.to_owned(), inode);
        d.durable.insert(name.to_owned(), inode);
    }
}

impl Storage for SimStorage {
    type File = SimFile;

    fn create_dir_all(&mut self, dir: &str) -> io::Result<()> {
        let mut sim = self.lock();
        sim.check_alive()?;
        sim.dirs.entry(dir.to_owned()).or_default();
        Ok(())
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let sim = self.lock();
        sim.check_alive()?;
        Ok(sim.dir(dir)?.current.keys().cloned().collect())
    }

    fn create(&mut self, dir: &str, name: &str) -> io::Result<SimFile> {
        let mut sim = self.lock();
        sim.check_alive()?;
        if sim.dir(dir)?.current.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{dir}/{name} exists"),
            ));
        }
        sim.inodes.push(Inode::default());
        let inode = sim.inodes.len() - 1;
        let d = sim.dir_mut(dir)?;
        d.current.insert(name.to_owned(), inode);
        d.pending.push(DirOp::Link {
            name: name.to_owned(),
            inode,
        });
        Ok(SimFile {
            inode,
            epoch: sim.epoch,
        })
    }

    fn open(&mut self, dir: &str, name: &str) -> io::Result<SimFile> {
        let sim = self.lock();
        sim.check_alive()?;
        let inode = *sim
            .dir(dir)?
            .current
            .get(name)
            .ok_or_else(|| not_found(name))?;
        Ok(SimFile {
            inode,
            epoch: sim.epoch,
        })
    }

    fn append(&mut self, file: &mut SimFile, bytes: &[u8]) -> io::Result<()> {
        let mut sim = self.lock();
        sim.check_alive()?;
        sim.appends += 1;
        let count = sim.appends;
        let fault = sim.take_fault(FaultOp::Append, count);
        let inode = sim.inode_mut(file)?;
        match fault {
            Some(fault) => {
                inode.current.extend_from_slice(&bytes[..bytes.len() / 2]);
                Err(fault.error())
            }
            None => {
                inode.current.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    fn sync(&mut self, file: &mut SimFile) -> io::Result<()> {
        let mut sim = self.lock();
        let halt_after = sim.sync_point()?;
        let inode = sim.inode_mut(file)?;
        inode.durable = inode.current.clone();
        sim.halted = halt_after;
        Ok(())
    }

    fn truncate(&mut self, file: &mut SimFile, len_bytes: u64) -> io::Result<()> {
        let mut sim = self.lock();
        sim.check_alive()?;
        let len = usize::try_from(len_bytes).map_err(io::Error::other)?;
        sim.inode_mut(file)?.current.resize(len, 0);
        Ok(())
    }

    fn read(&self, dir: &str, name: &str) -> io::Result<Vec<u8>> {
        let sim = self.lock();
        sim.check_alive()?;
        let inode = *sim
            .dir(dir)?
            .current
            .get(name)
            .ok_or_else(|| not_found(name))?;
        Ok(sim.inodes[inode].current.clone())
    }

    fn rename(&mut self, dir: &str, from: &str, to: &str) -> io::Result<()> {
        let mut sim = self.lock();
        sim.check_alive()?;
        let d = sim.dir_mut(dir)?;
        let inode = d.current.remove(from).ok_or_else(|| not_found(from))?;
        d.current.insert(to.to_owned(), inode);
        d.pending.push(DirOp::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
        });
        Ok(())
    }

    fn remove(&mut self, dir: &str, name: &str) -> io::Result<()> {
        let mut sim = self.lock();
        sim.check_alive()?;
        let d = sim.dir_mut(dir)?;
        d.current.remove(name).ok_or_else(|| not_found(name))?;
        d.pending.push(DirOp::Unlink {
            name: name.to_owned(),
        });
        Ok(())
    }

    fn sync_dir(&mut self, dir: &str) -> io::Result<()> {
        let mut sim = self.lock();
        let halt_after = sim.sync_point()?;
        let d = sim.dir_mut(dir)?;
        d.durable = d.current.clone();
        d.pending.clear();
        sim.halted = halt_after;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "d";

    fn storage_with_file(torn_seed: Option<u64>) -> (SimStorage, SimFile) {
        let mut s = match torn_seed {
            Some(seed) => SimStorage::with_torn_writes(seed),
            None => SimStorage::new(),
        };
        s.create_dir_all(D).expect("dir");
        let f = s.create(D, "f").expect("create");
        (s, f)
    }

    #[test]
    fn a_crash_drops_unsynced_bytes_and_unsynced_names() {
        let (mut s, mut f) = storage_with_file(None);
        s.append(&mut f, b"abc").expect("append");
        s.sync(&mut f).expect("sync");
        s.append(&mut f, b"def").expect("append");
        assert_eq!(s.read(D, "f").expect("read"), b"abcdef");
        s.crash();
        // The name was never made durable with sync_dir: the file is gone.
        assert!(s.list(D).expect("list").is_empty());

        let (mut s, mut f) = storage_with_file(None);
        s.sync_dir(D).expect("sync dir");
        s.append(&mut f, b"abc").expect("append");
        s.sync(&mut f).expect("sync");
        s.append(&mut f, b"def").expect("append");
        s.rename(D, "f", "g").expect("rename");
        s.crash();
        assert_eq!(s.list(D).expect("list"), vec!["f".to_string()]);
        assert_eq!(s.read(D, "f").expect("read"), b"abc");
        assert!(
            s.append(&mut f, b"x").is_err(),
            "handles die with the crash"
        );
    }

    #[test]
    fn torn_writes_keep_a_prefix_of_the_unsynced_bytes() {
        let mut lengths = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let (mut s, mut f) = storage_with_file(Some(seed));
            s.sync_dir(D).expect("sync dir");
            s.append(&mut f, b"abc").expect("append");
            s.sync(&mut f).expect("sync");
            s.append(&mut f, b"defgh").expect("append");
            s.crash();
            let content = s.read(D, "f").expect("read");
            assert!(b"abcdefgh".starts_with(&content) && content.len() >= 3);
            lengths.insert(content.len());
        }
        assert!(lengths.len() > 3, "seeds should tear at different places");
    }

    #[test]
    fn a_planned_crash_halts_before_or_after_the_sync() {
        for (point, expected) in [
            (CrashPoint::BeforeSync, &b""[..]),
            (CrashPoint::AfterSync, &b"abc"[..]),
        ] {
            let (mut s, mut f) = storage_with_file(None);
            s.sync_dir(D).expect("sync dir");
            s.crash_at_sync(1, point);
            s.append(&mut f, b"abc").expect("append");
            let _ = s.sync(&mut f);
            assert!(s.is_halted());
            assert!(s.append(&mut f, b"more").is_err());
            s.crash();
            assert_eq!(s.read(D, "f").expect("read"), expected);
        }
    }

    #[test]
    fn injected_faults_fail_the_chosen_call_once() {
        let (mut s, mut f) = storage_with_file(None);
        s.fail_append(2, Fault::NoSpace);
        s.append(&mut f, b"ab").expect("first append");
        let e = s.append(&mut f, b"cdef").expect_err("second append fails");
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert_eq!(s.read(D, "f").expect("read"), b"abcd", "half written");
        s.append(&mut f, b"g").expect("third append");

        s.fail_sync(1, Fault::Io);
        assert!(s.sync(&mut f).is_err());
        assert_eq!(s.durable_content(D, "f"), None, "name not synced");
        s.sync_dir(D).expect("sync dir");
        assert_eq!(s.durable_content(D, "f"), Some(Vec::new()));
    }
}
