//! The SdfsActor's sources and sinks: the sources of puts (a tool's file pulled through
//! a transfer session, a spool file, or bytes in memory), the sinks of gets (a tool
//! through a transfer session, or memory), and the staging directory and copies of the
//! scp transfer. Every path here is one the node chose.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

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

/// Where a get's bytes go.
pub(super) enum Sink {
    None,
    Memory(Vec<u8>),
    /// Streamed to a tool through this transfer session (see `sessions.rs`).
    Remote(u64),
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

pub(super) fn deliver(sink: &mut Sink, item: Delivery) {
    if let (Sink::Memory(buf), Delivery::Chunk(data)) = (sink, item) {
        buf.extend_from_slice(&data);
    }
}
