//! Staged transfer (`[sdfs] transfer = "scp"`). A put's upload does not stream chunks:
//! the shell copies the whole source into every target's staging directory (over SSH),
//! reports its size and CRC-32, and the core tells each target to commit the staged file
//! (`WriteStaged`). The target re-chunks it exactly as a native stream would (same chunk
//! size, so chunk boundaries match on every copy), checks size and CRC, and commits
//! through the same durable path (temp file, fsync, rename, dir fsync) before
//! `WriteDone`. Everything after that (commit at the primary, ack) is the native path,
//! so the guarantees are the same.

use std::io::Read;
use std::path::PathBuf;

use crate::sdfs::msg::{Msg, OpId, RemoteError, XferId};
use crate::sdfs::name::SdfsName;
use crate::sdfs::store::Version;
use crate::types::NodeAddr;

use super::{store_err, Effect, Event, SdfsCore, SdfsError, UploadFor};

/// Directory, under a store's root, where staged copies arrive.
pub const STAGING_DIR: &str = "staging";

/// File name of the staged copy sent by `from` for transfer `xfer`. The sender is an
/// authenticated member address; characters outside `[A-Za-z0-9.-]` become `_`, so the
/// name is one plain path component.
pub fn staging_file_name(from: &NodeAddr, xfer: XferId) -> String {
    let safe: String = from
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}-{xfer:016x}.stage")
}

impl SdfsCore {
    /// A staged copy to commit.
    pub(super) fn on_staged_msg(&mut self, from: NodeAddr, msg: Msg) {
        if let Msg::WriteStaged {
            xfer,
            name,
            version,
            bytes,
            crc,
        } = msg
        {
            self.on_write_staged(from, xfer, name, version, bytes, crc);
        }
    }

    /// Path of the staged copy from `from` for `xfer` in this node's store.
    pub fn staging_path(&self, from: &NodeAddr, xfer: XferId) -> PathBuf {
        self.store
            .root()
            .join(STAGING_DIR)
            .join(staging_file_name(from, xfer))
    }

    pub(super) fn stage_upload(&mut self, op: OpId, xfer: XferId) {
        let Some(u) = self.uploads.get_mut(&xfer) else {
            return;
        };
        // `reading` keeps the sweep from declaring the upload stalled while copies run;
        // the copy itself has its own (SSH) timeouts.
        u.reading = true;
        let targets: Vec<NodeAddr> = u.targets.keys().cloned().collect();
        self.staging.insert(xfer, targets.iter().cloned().collect());
        for to in targets {
            self.out.push(Effect::Stage { op, xfer, to });
        }
    }

    pub(super) fn on_staged(
        &mut self,
        xfer: XferId,
        to: NodeAddr,
        result: Result<(u64, u32), String>,
    ) {
        let Some(pending) = self.staging.get_mut(&xfer) else {
            return;
        };
        if !pending.remove(&to) {
            return;
        }
        if pending.is_empty() {
            self.staging.remove(&xfer);
        }
        let now = self.now;
        let Some(u) = self.uploads.get_mut(&xfer) else {
            // The attempt was cancelled; a retry stages again under a new xfer.
            self.staging.remove(&xfer);
            return;
        };
        u.last = now;
        let (bytes, crc) = match result {
            Ok(v) => v,
            Err(e) => {
                // Credentials or SSH failures are not a property of one replica: the put
                // fails with the reason instead of being re-placed on other nodes.
                let op = match u.purpose {
                    UploadFor::Put(op) => Some(op),
                    UploadFor::Repair { .. } => None,
                };
                self.staging.remove(&xfer);
                if let Some(op) = op {
                    self.fail_put(op, SdfsError::Transfer(format!("copy to {to}: {e}")));
                }
                return;
            }
        };
        let msg = Msg::WriteStaged {
            xfer,
            name: u.name.clone(),
            version: u.version,
            bytes,
            crc,
        };
        self.send(&to, msg);
    }

    pub(super) fn on_write_staged(
        &mut self,
        from: NodeAddr,
        xfer: XferId,
        name: SdfsName,
        version: Version,
        bytes: u64,
        crc: u32,
    ) {
        let path = self.staging_path(&from, xfer);
        let result = self.commit_staged(&path, &name, version, bytes, crc);
        // The staged copy is never needed again, whatever happened.
        let _ = std::fs::remove_file(&path);
        match result {
            Ok(()) => self.send(&from, Msg::WriteDone { xfer }),
            Err(error) => {
                self.log(Event::WriteAborted {
                    name,
                    version,
                    from: from.clone(),
                    reason: format!("staged copy rejected: {error}"),
                });
                self.send(&from, Msg::WriteFailed { xfer, error });
            }
        }
    }

    pub(super) fn commit_staged(
        &mut self,
        path: &std::path::Path,
        name: &SdfsName,
        version: Version,
        bytes: u64,
        crc: u32,
    ) -> Result<(), RemoteError> {
        let mut file = std::fs::File::open(path).map_err(|_| RemoteError::BadTransfer)?;
        let mut writer = self
            .store
            .begin_write(name, version)
            .map_err(|e| store_err(&e))?;
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; self.cfg.chunk_size];
        let mut total = 0u64;
        loop {
            let n =
                read_full(&mut file, &mut buf).map_err(|e| RemoteError::Store(e.to_string()))?;
            if n == 0 {
                break;
            }
            let chunk = buf.get(..n).unwrap_or_default();
            hasher.update(chunk);
            total += n as u64;
            if total > bytes {
                return Err(RemoteError::BadTransfer);
            }
            writer.append(chunk).map_err(|e| store_err(&e))?;
        }
        if total != bytes || hasher.finalize() != crc {
            // Dropping the writer removes its temp file: nothing becomes visible.
            return Err(RemoteError::BadTransfer);
        }
        writer.commit().map_err(|e| store_err(&e))
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let Some(rest) = buf.get_mut(n..) else { break };
        match r.read(rest) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
