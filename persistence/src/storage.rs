//! The one I/O seam: [`Storage`], and [`FsStorage`] over `std::fs`.
//!
//! Everything the log does to disk goes through this trait: append-only files in a
//! directory, `fdatasync`, atomic rename, remove, and `fsync` of the directory itself. The
//! trait is deliberately small so that [`SimStorage`](crate::SimStorage) can model exactly
//! what survives a crash: bytes written but not synced, and directory entries created,
//! renamed or removed but not synced, may be lost.
//!
//! Names are plain file names (no `/`); `dir` is a relative directory under the storage's
//! root (`shard-3`). Calls block; on a glommio shard, run [`FsStorage`] from a blocking
//! thread pool or implement the trait over `DmaFile`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

/// Files in directories, with explicit durability points. See the module docs.
///
/// Implementations report every failure; callers never retry a failed `append` or `sync`
/// as if nothing happened (after a failed `fdatasync` the kernel may already have dropped
/// the dirty pages).
pub trait Storage {
    /// An open file, positioned for appending.
    type File: fmt::Debug;

    /// Creates `dir` (and its parents) if missing, durably.
    fn create_dir_all(&mut self, dir: &str) -> io::Result<()>;

    /// Names of the files in `dir`, in no particular order.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;

    /// Creates a new, empty file; fails if it exists. The new name is durable only after
    /// [`sync_dir`](Self::sync_dir).
    fn create(&mut self, dir: &str, name: &str) -> io::Result<Self::File>;

    /// Opens an existing file for appending (and truncating, syncing).
    fn open(&mut self, dir: &str, name: &str) -> io::Result<Self::File>;

    /// Appends all of `bytes`. They are durable only after [`sync`](Self::sync).
    fn append(&mut self, file: &mut Self::File, bytes: &[u8]) -> io::Result<()>;

    /// `fdatasync`: every byte appended (and any truncation) so far is durable when this
    /// returns `Ok`.
    fn sync(&mut self, file: &mut Self::File) -> io::Result<()>;

    /// Cuts the file to `len_bytes`. Durable after [`sync`](Self::sync).
    fn truncate(&mut self, file: &mut Self::File, len_bytes: u64) -> io::Result<()>;

    /// The whole content of a file.
    fn read(&self, dir: &str, name: &str) -> io::Result<Vec<u8>>;

    /// Atomically renames `from` to `to`, replacing `to` if it exists. Durable after
    /// [`sync_dir`](Self::sync_dir).
    fn rename(&mut self, dir: &str, from: &str, to: &str) -> io::Result<()>;

    /// Removes a file. Durable after [`sync_dir`](Self::sync_dir).
    fn remove(&mut self, dir: &str, name: &str) -> io::Result<()>;

    /// `fsync` of the directory: every create, rename and remove in it so far is durable.
    fn sync_dir(&mut self, dir: &str) -> io::Result<()>;
}

/// [`Storage`] on the local file system under one root directory.
#[derive(Clone, Debug)]
pub struct FsStorage {
    root: PathBuf,
}

/// A file opened by [`FsStorage`].
#[derive(Debug)]
pub struct FsFile {
    file: File,
    path: PathBuf,
}

impl FsFile {
    /// Where the file is.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn invalid(what: &str, value: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} {value:?} is not a plain relative name"),
    )
}

impl FsStorage {
    /// Storage rooted at `root` (created on first use).
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir_path(&self, dir: &str) -> io::Result<PathBuf> {
        let rel = Path::new(dir);
        if rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            Ok(self.root.join(rel))
        } else {
            Err(invalid("directory", dir))
        }
    }

    fn file_path(&self, dir: &str, name: &str) -> io::Result<PathBuf> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(invalid("file name", name));
        }
        Ok(self.dir_path(dir)?.join(name))
    }
}

fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

impl Storage for FsStorage {
    type File = FsFile;

    fn create_dir_all(&mut self, dir: &str) -> io::Result<()> {
        let path = self.dir_path(dir)?;
        if path.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(&path)?;
        // Make every new directory entry durable: the directory itself, each ancestor up to
        // the root, and the root's parent (which holds the root's own entry).
        let mut dirs: Vec<PathBuf> = path
            .ancestors()
            .take_while(|a| a.starts_with(&self.root))
            .map(Path::to_path_buf)
            .collect();
        dirs.push(match self.root.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        });
        for d in dirs {
            fsync_dir(&d)?;
        }
        Ok(())
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(self.dir_path(dir)?)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                // Names that are not UTF-8 are not ours: leave them alone.
                if let Ok(name) = entry.file_name().into_string() {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    fn create(&mut self, dir: &str, name: &str) -> io::Result<FsFile> {
        let path = self.file_path(dir, name)?;
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)?;
        Ok(FsFile { file, path })
    }

    fn open(&mut self, dir: &str, name: &str) -> io::Result<FsFile> {
        let path = self.file_path(dir, name)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(FsFile { file, path })
    }

    fn append(&mut self, file: &mut FsFile, bytes: &[u8]) -> io::Result<()> {
        file.file.write_all(bytes)
    }

    fn sync(&mut self, file: &mut FsFile) -> io::Result<()> {
        file.file.sync_data()
    }

    fn truncate(&mut self, file: &mut FsFile, len_bytes: u64) -> io::Result<()> {
        file.file.set_len(len_bytes)
    }

    fn read(&self, dir: &str, name: &str) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        File::open(self.file_path(dir, name)?)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn rename(&mut self, dir: &str, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.file_path(dir, from)?, self.file_path(dir, to)?)
    }

    fn remove(&mut self, dir: &str, name: &str) -> io::Result<()> {
        fs::remove_file(self.file_path(dir, name)?)
    }

    fn sync_dir(&mut self, dir: &str) -> io::Result<()> {
        fsync_dir(&self.dir_path(dir)?)
    }
}
