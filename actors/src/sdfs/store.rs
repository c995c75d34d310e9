//! A node's local durable store: versions of SDFS files in its data directory, written
//! and read as checksummed chunks so that no file ever has to fit in memory.
//!
//! Layout under the data directory (nothing is ever created outside it):
//!
//! ```text
//! tmp/                         versions being written; wiped by `open`
//! names/<sha256(name) hex>/    one directory per name (names are keys, never paths)
//!     NAME                     the name itself, so listings can recover it
//!     TOMBSTONE                highest deleted version (decimal); absent if never deleted
//!     <version, 20 digits>.v   one committed version
//! ```
//!
//! A version file is `MAGIC`, then frames `[len u32 LE][crc32 u32 LE][len bytes]`, then a
//! trailer `[u32::MAX][crc32 of the next 16 bytes][chunks u64 LE][bytes u64 LE]`. Each
//! chunk is verified on every read; the trailer catches truncation. A version becomes
//! visible only by `rename` after `fsync`, so a crash leaves either the whole version or
//! nothing (plus a temp file that the next `open` deletes).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::name::{NameError, SdfsName};

/// A version number of one name; assigned by the name's primary, strictly increasing.
pub type Version = u64;

/// Largest chunk accepted by the store (and carried by one message).
pub const MAX_CHUNK: usize = 1 << 20;

const MAGIC: &[u8; 8] = b"SDFSV001";
const TRAILER_MARK: u32 = u32::MAX;
const VERSION_EXT: &str = "v";

/// What a version file failed to be. Carried in [`StoreError::Corrupt`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Corruption {
    #[error("bad magic header")]
    BadMagic,
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("chunk length {0} exceeds the limit")]
    Oversized(u32),
    #[error("file ends before its trailer")]
    Truncated,
    #[error("trailer does not match the chunks read")]
    BadTrailer,
}

/// Errors of the local store. A failed call changes nothing visible: a write that fails
/// leaves at most a temp file, which `open` removes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Name(#[from] NameError),
    /// The file system is out of space (or quota): only this write fails; what is
    /// stored stays readable, and writes work again once space is freed.
    #[error("disk full: {op} {path}: {source}")]
    DiskFull {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{name} v{version}: chunk {chunk} is corrupt: {what}")]
    Corrupt {
        name: SdfsName,
        version: Version,
        chunk: u64,
        what: Corruption,
    },
    #[error("{name} v{version} is not stored here")]
    NotFound { name: SdfsName, version: Version },
    #[error("{name} v{version} was deleted (tombstone at v{tombstone})")]
    Tombstoned {
        name: SdfsName,
        version: Version,
        tombstone: Version,
    },
    #[error("chunk of {len} bytes exceeds the {max}-byte limit")]
    ChunkTooLarge { len: usize, max: usize },
    #[error("version 0 is reserved")]
    ZeroVersion,
}

impl StoreError {
    /// True when the failure was a full disk (ENOSPC or EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| {
        let path = path.to_path_buf();
        match source.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
                StoreError::DiskFull { op, path, source }
            }
            _ => StoreError::Io { op, path, source },
        }
    }
}

/// Tuning of a local store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Versions kept per name; older ones are pruned at commit.
    pub keep_versions: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { keep_versions: 5 }
    }
}

/// What one name looks like in this store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub name: SdfsName,
    /// Newest first.
    pub versions: Vec<Version>,
    /// Highest deleted version, 0 if none.
    pub tombstone: Version,
}

/// Bytes of names in one listing page, so that a page (as text and JSON) stays far
/// below the 16 MiB frame cap whatever the names' lengths.
pub const PAGE_BYTES: usize = 2 << 20;

/// A page of [`LocalStore::page`]; `more`: names after the last item may exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Holding>,
    pub more: bool,
}

/// Handle on a data directory. Cheap to clone; all state lives on disk, so clones on
/// other threads see the same store. The one thing kept in memory, shared by the clones,
/// is the sorted set of names for listings (built on the first listing; name directories
/// are only ever created, through this handle, so it cannot go stale).
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    keep: usize,
    names: Arc<Mutex<Option<BTreeSet<SdfsName>>>>,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl LocalStore {
    /// Opens (creating if needed) the store at `root`, removing temp files left by a
    /// crash and versions a tombstone covers (a crash between writing a tombstone and
    /// deleting the files).
    pub fn open(root: impl Into<PathBuf>, cfg: StoreConfig) -> Result<Self, StoreError> {
        let root = root.into();
        let store = LocalStore {
            root,
            keep: cfg.keep_versions.max(1),
            names: Arc::default(),
        };
        let tmp = store.tmp_dir();
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err("clean", &tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        let names = store.names_dir();
        fs::create_dir_all(&names).map_err(io_err("create", &names))?;
        for dir in store.name_dirs()? {
            match read_name(&dir)? {
                // A directory without a NAME file is from a crash during creation; it
                // cannot hold a committed version (NAME is written first).
                None => fs::remove_dir_all(&dir).map_err(io_err("clean", &dir))?,
                Some(name) => {
                    let t = store.tombstone(&name)?;
                    for v in list_versions(&dir)?.into_iter().filter(|v| *v <= t) {
                        let p = dir.join(version_file(v));
                        fs::remove_file(&p).map_err(io_err("clean", &p))?;
                    }
                }
            }
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn names_dir(&self) -> PathBuf {
        self.root.join("names")
    }

    /// The directory of `name`: a hash, so the name never becomes part of a path.
    pub fn name_dir(&self, name: &SdfsName) -> PathBuf {
        let digest = Sha256::digest(name.as_str().as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.names_dir().join(hex)
    }

    /// Path of a committed version's file (tests flip bytes in it).
    pub fn version_path(&self, name: &SdfsName, version: Version) -> PathBuf {
        self.name_dir(name).join(version_file(version))
    }

    fn name_dirs(&self) -> Result<Vec<PathBuf>, StoreError> {
        let names = self.names_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&names).map_err(io_err("list", &names))? {
            let entry = entry.map_err(io_err("list", &names))?;
            if entry.path().is_dir() {
                out.push(entry.path());
            }
        }
        Ok(out)
    }

    /// Creates the name's directory and NAME file durably, once.
    fn ensure_name_dir(&self, name: &SdfsName) -> Result<PathBuf, StoreError> {
        let dir = self.name_dir(name);
        if read_name(&dir)?.is_some() {
            return Ok(dir);
        }
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let written = write_small_file(&self.tmp_dir(), &dir, "NAME", name.as_str().as_bytes())
            .and_then(|()| sync_dir(&self.names_dir()));
        if let Err(e) = written {
            // Only succeeds while the directory is empty, i.e. it was made just now.
            let _ = fs::remove_dir(&dir);
            return Err(e);
        }
        if let Some(names) = self.names_index().as_mut() {
            names.insert(name.clone());
        }
        Ok(dir)
    }

    /// Highest deleted version of `name`, 0 if never deleted.
    pub fn tombstone(&self, name: &SdfsName) -> Result<Version, StoreError> {
        let p = self.name_dir(name).join("TOMBSTONE");
        match fs::read_to_string(&p) {
            Ok(s) => Ok(s.trim().parse().unwrap_or(0)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_err("read", &p)(e)),
        }
    }

    /// Committed versions of `name`, newest first (empty if none).
    pub fn versions(&self, name: &SdfsName) -> Result<Vec<Version>, StoreError> {
        let dir = self.name_dir(name);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let t = self.tombstone(name)?;
        let mut vs: Vec<Version> = list_versions(&dir)?
            .into_iter()
            .filter(|v| *v > t)
            .collect();
        vs.sort_unstable_by(|a, b| b.cmp(a));
        Ok(vs)
    }

    pub fn latest(&self, name: &SdfsName) -> Result<Option<Version>, StoreError> {
        Ok(self.versions(name)?.first().copied())
    }

    /// Starts writing `version` of `name`. Nothing is visible until [`VersionWriter::commit`].
    /// Rewriting a version that exists replaces it atomically at commit (a retried put
    /// carries the same bytes).
    pub fn begin_write(
        &self,
        name: &SdfsName,
        version: Version,
    ) -> Result<VersionWriter, StoreError> {
        if version == 0 {
            return Err(StoreError::ZeroVersion);
        }
        self.check_tombstone(name, version)?;
        let dir = self.ensure_name_dir(name)?;
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp_path = self
            .tmp_dir()
            .join(format!("{}-{version}-{seq}.part", std::process::id()));
        let file = File::create(&tmp_path).map_err(io_err("create", &tmp_path))?;
        let mut w = VersionWriter {
            store: self.clone(),
            name: name.clone(),
            version,
            final_path: dir.join(version_file(version)),
            dir,
            file: Some(BufWriter::with_capacity(256 * 1024, file)),
            tmp_path,
            chunks: 0,
            bytes: 0,
        };
        w.write_raw(MAGIC)?;
        Ok(w)
    }

    fn check_tombstone(&self, name: &SdfsName, version: Version) -> Result<(), StoreError> {
        let t = self.tombstone(name)?;
        if version <= t {
            return Err(StoreError::Tombstoned {
                name: name.clone(),
                version,
                tombstone: t,
            });
        }
        Ok(())
    }

    /// Opens `version` of `name` for a streaming, verified read.
    pub fn open_read(
        &self,
        name: &SdfsName,
        version: Version,
    ) -> Result<VersionReader, StoreError> {
        let not_found = || StoreError::NotFound {
            name: name.clone(),
            version,
        };
        if version <= self.tombstone(name)? {
            return Err(not_found());
        }
        let path = self.version_path(name, version);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let mut r = VersionReader {
            name: name.clone(),
            version,
            path,
            file: BufReader::with_capacity(256 * 1024, file),
            next: 0,
            bytes: 0,
            done: false,
        };
        let mut magic = [0u8; 8];
        r.read_exact_or(&mut magic, Corruption::BadMagic)?;
        if &magic != MAGIC {
            return Err(r.corrupt(Corruption::BadMagic));
        }
        Ok(r)
    }

    /// Reads a whole version into memory; for small files and tests only.
    pub fn read_all(&self, name: &SdfsName, version: Version) -> Result<Vec<u8>, StoreError> {
        let mut r = self.open_read(name, version)?;
        let mut out = Vec::new();
        while let Some(c) = r.next_chunk()? {
            out.extend_from_slice(&c);
        }
        Ok(out)
    }

    /// Removes one version (an unacknowledged put, or a corrupt copy awaiting repair).
    /// Removing a version that is not there is not an error.
    pub fn remove_version(&self, name: &SdfsName, version: Version) -> Result<(), StoreError> {
        let p = self.version_path(name, version);
        match fs::remove_file(&p) {
            Ok(()) => sync_dir(&self.name_dir(name)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &p)(e)),
        }
    }

    /// Deletes every version `<= upto` and remembers `upto` as a tombstone, so a late
    /// write of an older version cannot resurrect the name. The tombstone is durable
    /// before any file is removed, except on a full disk: there the covered versions
    /// are removed first to make room for it (a crash in between could then let a late
    /// write of an old version back in, which beats a delete that can never succeed).
    pub fn delete(&self, name: &SdfsName, upto: Version) -> Result<(), StoreError> {
        let t = self.tombstone(name)?;
        let dir = self.ensure_name_dir(name)?;
        if upto > t {
            let write = || {
                write_small_file(
                    &self.tmp_dir(),
                    &dir,
                    "TOMBSTONE",
                    upto.to_string().as_bytes(),
                )
            };
            match write() {
                Ok(()) => {}
                Err(e) if e.is_disk_full() => {
                    self.remove_covered(&dir, upto)?;
                    write()?;
                }
                Err(e) => return Err(e),
            }
        }
        self.remove_covered(&dir, upto.max(t))
    }

    fn remove_covered(&self, dir: &Path, upto: Version) -> Result<(), StoreError> {
        for v in list_versions(dir)?.into_iter().filter(|v| *v <= upto) {
            let p = dir.join(version_file(v));
            fs::remove_file(&p).map_err(io_err("remove", &p))?;
        }
        sync_dir(dir)
    }

    /// Every name with at least one live version or a tombstone.
    pub fn holdings(&self) -> Result<Vec<Holding>, StoreError> {
        let mut out = Vec::new();
        for dir in self.name_dirs()? {
            let Some(name) = read_name(&dir)? else {
                continue;
            };
            let versions = self.versions(&name)?;
            let tombstone = self.tombstone(&name)?;
            if !versions.is_empty() || tombstone > 0 {
                out.push(Holding {
                    name,
                    versions,
                    tombstone,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Names with at least one live version, sorted.
    pub fn names(&self) -> Result<Vec<SdfsName>, StoreError> {
        Ok(self
            .holdings()?
            .into_iter()
            .filter(|h| !h.versions.is_empty())
            .map(|h| h.name)
            .collect())
    }

    /// Live names starting with `prefix`, sorted.
    pub fn names_with_prefix(&self, prefix: &str) -> Result<Vec<SdfsName>, StoreError> {
        let mut names = self.names()?;
        names.retain(|n| n.as_str().starts_with(prefix));
        Ok(names)
    }

    /// One page of a listing, in name order: the names under `prefix` that sort after
    /// `after`, at most `limit` of them and about [`PAGE_BYTES`] of names (at least one).
    /// `live_only`: names with a live version (`ls-prefix`); otherwise deleted names
    /// with their tombstone too (`store`).
    pub fn page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        live_only: bool,
    ) -> Result<Page, StoreError> {
        let mut index = self.names_index();
        if index.is_none() {
            let mut all = BTreeSet::new();
            for dir in self.name_dirs()? {
                all.extend(read_name(&dir)?);
            }
            *index = Some(all);
        }
        let Some(names) = index.as_ref() else {
            return Ok(Page::default());
        };
        let from = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let mut rest = names
            .range::<str, _>((from, Bound::Unbounded))
            .take_while(|n| n.as_str().starts_with(prefix));
        let (mut items, mut bytes) = (Vec::new(), 0);
        for name in rest.by_ref() {
            let versions = self.versions(name)?;
            let tombstone = if live_only { 0 } else { self.tombstone(name)? };
            if versions.is_empty() && tombstone == 0 {
                continue;
            }
            bytes += name.as_str().len();
            items.push(Holding {
                name: name.clone(),
                versions,
                tombstone,
            });
            if items.len() >= limit.max(1) || bytes >= PAGE_BYTES {
                break;
            }
        }
        Ok(Page {
            items,
            more: rest.next().is_some(),
        })
    }

    /// The names index (see [`LocalStore`]); a poisoned lock still holds a valid set.
    fn names_index(&self) -> MutexGuard<'_, Option<BTreeSet<SdfsName>>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes on disk of all committed versions (headers included).
    pub fn total_bytes(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for dir in self.name_dirs()? {
            for v in list_versions(&dir)? {
                let p = dir.join(version_file(v));
                total += fs::metadata(&p).map_err(io_err("stat", &p))?.len();
            }
        }
        Ok(total)
    }

    /// Paths in `tmp/` (tests check that aborted writes leave none behind).
    pub fn temp_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let tmp = self.tmp_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&tmp).map_err(io_err("list", &tmp))? {
            out.push(e.map_err(io_err("list", &tmp))?.path());
        }
        Ok(out)
    }

    fn prune(&self, name: &SdfsName) -> Result<(), StoreError> {
        for v in self.versions(name)?.into_iter().skip(self.keep) {
            self.remove_version(name, v)?;
        }
        Ok(())
    }
}

/// A version being written. Dropping it without `commit` removes the temp file; a crash
/// leaves the temp file for the next `open` to remove. Either way nothing is visible.
#[derive(Debug)]
pub struct VersionWriter {
    store: LocalStore,
    name: SdfsName,
    version: Version,
    dir: PathBuf,
    final_path: PathBuf,
    tmp_path: PathBuf,
    file: Option<BufWriter<File>>,
    chunks: u64,
    bytes: u64,
}

impl VersionWriter {
    fn write_raw(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let path = &self.tmp_path;
        match self.file.as_mut() {
            Some(f) => f.write_all(data).map_err(io_err("write", path)),
            None => Err(io_err("write", path)(io::Error::other(
                "writer already finished",
            ))),
        }
    }

    /// Appends one chunk (at most [`MAX_CHUNK`] bytes) with its checksum. Empty chunks
    /// are skipped so that chunk counts always mean data.
    pub fn append(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        if chunk.len() > MAX_CHUNK {
            return Err(StoreError::ChunkTooLarge {
                len: chunk.len(),
                max: MAX_CHUNK,
            });
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&(chunk.len() as u32).to_le_bytes());
        head[4..].copy_from_slice(&crc32fast::hash(chunk).to_le_bytes());
        self.write_raw(&head)?;
        self.write_raw(chunk)?;
        self.chunks += 1;
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Makes the version durable and visible: trailer, fsync, rename, fsync directory,
    /// then prunes versions beyond the configured number to keep.
    pub fn commit(mut self) -> Result<(), StoreError> {
        let mut tail = [0u8; 16];
        tail[..8].copy_from_slice(&self.chunks.to_le_bytes());
        tail[8..].copy_from_slice(&self.bytes.to_le_bytes());
        let mut mark = [0u8; 8];
        mark[..4].copy_from_slice(&TRAILER_MARK.to_le_bytes());
        mark[4..].copy_from_slice(&crc32fast::hash(&tail).to_le_bytes());
        self.write_raw(&mark)?;
        self.write_raw(&tail)?;
        let Some(buf) = self.file.take() else {
            return Err(io_err("commit", &self.tmp_path)(io::Error::other(
                "writer already finished",
            )));
        };
        let file = buf
            .into_inner()
            .map_err(|e| io_err("flush", &self.tmp_path)(e.into_error()))?;
        file.sync_all().map_err(io_err("fsync", &self.tmp_path))?;
        drop(file);
        // A delete may have landed while the bytes streamed in.
        self.store.check_tombstone(&self.name, self.version)?;
        fs::rename(&self.tmp_path, &self.final_path).map_err(io_err("rename", &self.final_path))?;
        sync_dir(&self.dir)?;
        self.store.prune(&self.name)
    }
}

impl Drop for VersionWriter {
    fn drop(&mut self) {
        // After a successful commit the temp path no longer exists; otherwise this is an
        // abort. Best effort: `open` removes whatever a failure here leaves.
        let _ = fs::remove_file(&self.tmp_path);
    }
}

/// A streaming reader over one version; every chunk is checked before it is returned.
#[derive(Debug)]
pub struct VersionReader {
    name: SdfsName,
    version: Version,
    path: PathBuf,
    file: BufReader<File>,
    next: u64,
    bytes: u64,
    done: bool,
}

impl VersionReader {
    fn corrupt(&self, what: Corruption) -> StoreError {
        StoreError::Corrupt {
            name: self.name.clone(),
            version: self.version,
            chunk: self.next,
            what,
        }
    }

    fn read_exact_or(&mut self, buf: &mut [u8], eof: Corruption) -> Result<(), StoreError> {
        match self.file.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(self.corrupt(eof)),
            Err(e) => Err(io_err("read", &self.path)(e)),
        }
    }

    /// Index of the chunk the next call returns.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Reads one frame header; `None` at a valid trailer.
    fn header(&mut self) -> Result<Option<(u32, u32)>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let mut head = [0u8; 8];
        self.read_exact_or(&mut head, Corruption::Truncated)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == TRAILER_MARK {
            let mut tail = [0u8; 16];
            self.read_exact_or(&mut tail, Corruption::Truncated)?;
            let mut c = [0u8; 8];
            c.copy_from_slice(&tail[..8]);
            let chunks = u64::from_le_bytes(c);
            c.copy_from_slice(&tail[8..]);
            let bytes = u64::from_le_bytes(c);
            if crc32fast::hash(&tail) != crc || chunks != self.next || bytes != self.bytes {
                return Err(self.corrupt(Corruption::BadTrailer));
            }
            self.done = true;
            return Ok(None);
        }
        if len as usize > MAX_CHUNK || len == 0 {
            return Err(self.corrupt(Corruption::Oversized(len)));
        }
        Ok(Some((len, crc)))
    }

    /// The next chunk, verified; `Ok(None)` after the last one.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        let Some((len, stored)) = self.header()? else {
            return Ok(None);
        };
        let mut data = vec![0u8; len as usize];
        self.read_exact_or(&mut data, Corruption::Truncated)?;
        let computed = crc32fast::hash(&data);
        if computed != stored {
            return Err(self.corrupt(Corruption::Checksum { stored, computed }));
        }
        self.next += 1;
        self.bytes += u64::from(len);
        Ok(Some(data))
    }

    /// Skips ahead to chunk `index` without reading the skipped data (a reader resuming
    /// on this replica after another failed part-way). The skipped chunks are not verified.
    pub fn seek_chunk(&mut self, index: u64) -> Result<(), StoreError> {
        while self.next < index {
            let Some((len, _)) = self.header()? else {
                return Err(self.corrupt(Corruption::Truncated));
            };
            self.file
                .seek_relative(i64::from(len))
                .map_err(io_err("seek", &self.path))?;
            self.next += 1;
            self.bytes += u64::from(len);
        }
        Ok(())
    }
}

fn version_file(v: Version) -> String {
    format!("{v:020}.{VERSION_EXT}")
}

fn list_versions(dir: &Path) -> Result<Vec<Version>, StoreError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        let file = entry.file_name();
        let Some(s) = file.to_str() else { continue };
        if let Some(num) = s.strip_suffix(&format!(".{VERSION_EXT}")) {
            if let Ok(v) = num.parse::<Version>() {
                out.push(v);
            }
        }
    }
    Ok(out)
}

fn read_name(dir: &Path) -> Result<Option<SdfsName>, StoreError> {
    let p = dir.join("NAME");
    match fs::read_to_string(&p) {
        // A NAME that no longer parses (edited by hand) hides the directory rather than
        // failing every listing.
        Ok(s) => Ok(SdfsName::parse(&s).ok()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &p)(e)),
    }
}

/// Writes a small file atomically: temp in `tmp`, fsync, rename into `dir`, fsync `dir`.
fn write_small_file(tmp: &Path, dir: &Path, file: &str, data: &[u8]) -> Result<(), StoreError> {
    let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let t = tmp.join(format!("{}-{file}-{seq}.part", std::process::id()));
    let result = (|| {
        let mut f = File::create(&t).map_err(io_err("create", &t))?;
        f.write_all(data).map_err(io_err("write", &t))?;
        f.sync_all().map_err(io_err("fsync", &t))?;
        let dst = dir.join(file);
        fs::rename(&t, &dst).map_err(io_err("rename", &dst))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&t);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    OpenOptions::new()
        .read(true)
        .open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync dir", dir))
}

/// Flips one byte of a file in place; for tests of bit-rot detection.
#[doc(hidden)]
pub fn flip_byte(path: &Path, offset: u64) -> io::Result<()> {
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(&[b[0] ^ 0x5a])?;
    f.sync_all()
}

/// Offset of the first data byte of chunk 0 in a version file (for bit-rot tests).
#[doc(hidden)]
pub const FIRST_DATA_OFFSET: u64 = 16;
