//! The SdfsActor's local files: the sources of puts (a tool's file pulled through a
//! transfer session, a spool file, or bytes in memory), the sinks of gets (a spool file
//! written through a temp file, or memory), and the staging directory and copies of the
//! scp transfer. Every path here is one the node chose.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rand::Rng;

use super::scp;
use super::Delivery;

/// Where a put's bytes come from.
pub(super) enum Source {
    None,
    /// Pulled from a tool through this transfer session (see `sessions.rs`).
    Remote(u64),
    File {
        path: PathBuf,
        file: File,
    },
    Bytes(std::sync::Arc<Vec<u8>>),
}

/// A local file being fetched: written to `tmp` and renamed onto `dest` on success.
pub(super) struct FileSink {
    dest: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    /// get-versions: the current version goes to a side file first, so its delimiter
    /// line can carry its size.
    part: Option<(PathBuf, BufWriter<File>)>,
    versions: bool,
    name: String,
    /// The first write error; the op then fails and the output is discarded.
    error: Option<String>,
}

impl FileSink {
    /// The file the get writes.
    pub(super) fn dest(&self) -> &Path {
        &self.dest
    }
}

pub(super) enum Sink {
    None,
    File(Box<FileSink>),
    Memory(Vec<u8>),
}

impl Source {
    /// Up to `len` bytes at `offset`; fewer (or none) at the end.
    pub(super) fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        match self {
            Source::File { path, file } => {
                let mut read = || -> io::Result<Vec<u8>> {
                    file.seek(SeekFrom::Start(offset))?;
                    let mut buf = Vec::with_capacity(len);
                    Read::by_ref(file).take(len as u64).read_to_end(&mut buf)?;
                    Ok(buf)
                };
                read().map_err(|e| format!("{}: {e}", path.display()))
            }
            Source::Bytes(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let end = start.saturating_add(len).min(b.len());
                Ok(b.get(start..end).unwrap_or_default().to_vec())
            }
            Source::None | Source::Remote(_) => Err("this op has no local source".into()),
        }
    }
}

/// Where a staging copy reads from.
pub(super) enum StageSource {
    File(PathBuf),
    Bytes(std::sync::Arc<Vec<u8>>),
}

impl StageSource {
    pub(super) fn push(
        &self,
        creds: &scp::Credentials,
        host: &str,
        remote: &Path,
    ) -> Result<(u64, u32), scp::ScpError> {
        match self {
            StageSource::File(p) => {
                let f = File::open(p).map_err(scp::ScpError::Source)?;
                let size = f.metadata().map_err(scp::ScpError::Source)?.len();
                scp::push(creds, host, remote, io::BufReader::new(f), size)
            }
            StageSource::Bytes(b) => scp::push(creds, host, remote, b.as_slice(), b.len() as u64),
        }
    }
}

/// The staging directory is written by the SSH account: sticky and writable by all
/// (like /tmp) when the node's user may differ. A staged file is only ever committed if
/// its size and CRC match what the writer announced over the authenticated transport.
pub(super) fn prepare_staging(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir)?;
    // Leftovers of puts that never committed (crash, failed copy).
    for entry in fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_file() {
            let _ = fs::remove_file(&p);
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o1777))?;
    // The account must be able to reach the directory, too.
    let mut up = dir.parent();
    for _ in 0..2 {
        if let Some(p) = up {
            let mode = fs::metadata(p)?.permissions().mode();
            fs::set_permissions(p, fs::Permissions::from_mode(mode | 0o011))?;
            up = p.parent();
        }
    }
    Ok(())
}

/// Opens the sink of a get: a temp file next to `dest`, renamed onto it on success.
pub(super) fn open_sink(dest: &Path, name: &str, versions: bool) -> Result<Sink, String> {
    let dest = dest.to_path_buf();
    let file_name = dest
        .file_name()
        .and_then(|f| f.to_str())
        .ok_or_else(|| format!("{}: not a file path", dest.display()))?;
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let nonce: u64 = rand::thread_rng().gen();
    let tmp = parent.join(format!(".{file_name}.dml-{nonce:016x}.tmp"));
    let file = File::create(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    Ok(Sink::File(Box::new(FileSink {
        dest,
        tmp,
        out: BufWriter::new(file),
        part: None,
        versions,
        name: name.to_string(),
        error: None,
    })))
}

pub(super) fn deliver(sink: &mut Sink, item: Delivery) {
    match sink {
        Sink::None => {}
        Sink::Memory(buf) => {
            if let Delivery::Chunk(data) = item {
                buf.extend_from_slice(&data);
            }
        }
        Sink::File(f) => {
            if f.error.is_some() {
                return;
            }
            if let Err(e) = deliver_file(f, item) {
                f.error = Some(format!("writing {}: {e}", f.dest.display()));
            }
        }
    }
}

pub(super) fn deliver_file(f: &mut FileSink, item: Delivery) -> io::Result<()> {
    match item {
        Delivery::Begin { .. } if f.versions => {
            let part = f.tmp.with_extension("part");
            let file = File::create(&part)?;
            f.part = Some((part, BufWriter::new(file)));
        }
        Delivery::Begin { .. } => {}
        Delivery::Chunk(data) => match &mut f.part {
            Some((_, w)) => w.write_all(&data)?,
            None => f.out.write_all(&data)?,
        },
        Delivery::End { version, bytes } => {
            if let Some((path, w)) = f.part.take() {
                let file = w.into_inner().map_err(|e| e.into_error())?;
                drop(file);
                writeln!(
                    f.out,
                    "==== {} version {version} ({bytes} bytes) ====",
                    f.name
                )?;
                let mut r = File::open(&path)?;
                io::copy(&mut r, &mut f.out)?;
                f.out.write_all(b"\n")?;
                let _ = fs::remove_file(&path);
            }
        }
    }
    Ok(())
}

/// Commits (rename onto the destination) or discards a file sink; `Err` if the output
/// could not be written. A failed op leaves nothing behind.
pub(super) fn close_sink(f: FileSink, commit: bool) -> Result<(), String> {
    let FileSink {
        dest,
        tmp,
        out,
        part,
        error,
        ..
    } = f;
    if let Some((p, _)) = part {
        let _ = fs::remove_file(p);
    }
    let flushed = out
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|file| file.sync_all());
    let result = match (error, flushed) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(format!("writing {}: {e}", dest.display())),
        (None, Ok(())) => Ok(()),
    };
    match result {
        Ok(()) if commit => {
            fs::rename(&tmp, &dest).map_err(|e| format!("cannot write {}: {e}", dest.display()))
        }
        Ok(()) => {
            let _ = fs::remove_file(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}
