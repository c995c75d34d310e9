//! Replica side of writes: incoming chunk streams become durable versions; deletes and
//! drops of versions ordered by a primary.

use crate::sdfs::msg::{Msg, RemoteError, XferId};
use crate::sdfs::name::SdfsName;
use crate::sdfs::store::Version;
use crate::types::NodeAddr;

use super::{store_err, ChunkIn, Event, Incoming, SdfsCore};

impl SdfsCore {
    /// Writes, deletes and drops arriving at a replica.
    pub(super) fn on_replica_msg(&mut self, from: NodeAddr, msg: Msg) {
        match msg {
            Msg::DeleteUpTo { job, name, upto } => {
                let keys: Vec<_> = self
                    .incoming
                    .iter()
                    .filter(|(_, i)| i.name == name && i.version <= upto)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    self.abort_incoming(&k, "deleted");
                }
                if let Err(e) = self.store.delete(&name, upto) {
                    self.store_failed(&e);
                }
                if job != 0 {
                    self.send(&from, Msg::DeleteDone { job });
                }
            }
            Msg::DropVersion { name, version } => {
                let keys: Vec<_> = self
                    .incoming
                    .iter()
                    .filter(|(_, i)| i.name == name && i.version == version)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    self.abort_incoming(&k, "writer failed");
                }
                if let Err(e) = self.store.remove_version(&name, version) {
                    self.log(Event::StoreFailure {
                        what: e.to_string(),
                    });
                }
            }
            Msg::WriteChunk {
                xfer,
                name,
                version,
                idx,
                crc,
                data,
            } => self.on_write_chunk(
                from,
                ChunkIn {
                    xfer,
                    name,
                    version,
                    idx,
                    crc,
                    data,
                },
            ),
            Msg::WriteEnd {
                xfer,
                name,
                version,
                chunks,
                bytes,
            } => self.on_write_end(from, xfer, name, version, chunks, bytes),
            Msg::WriteAbort { xfer } => {
                // A staged copy of an abandoned put is never committed.
                if self.cfg.staged {
                    let _ = std::fs::remove_file(self.staging_path(&from, xfer));
                }
                if let Some(inc) = self.incoming.remove(&(from, xfer)) {
                    drop(inc);
                }
            }
            // `on_peer` routes only the messages above here.
            _ => {}
        }
    }

    pub(super) fn on_write_chunk(&mut self, from: NodeAddr, chunk: ChunkIn) {
        let ChunkIn {
            xfer,
            name,
            version,
            idx,
            crc,
            data,
        } = chunk;
        let key = (from.clone(), xfer);
        if !self.incoming.contains_key(&key) {
            if idx != 0 {
                // The rest of an aborted or failed stream.
                return;
            }
            if !self.open_incoming(&from, xfer, &name, version) {
                return;
            }
        }
        let now = self.now;
        let Some(inc) = self.incoming.get_mut(&key) else {
            return;
        };
        if idx != inc.next_idx || crc32fast::hash(&data) != crc {
            self.incoming.remove(&key);
            self.send(
                &from,
                Msg::WriteFailed {
                    xfer,
                    error: RemoteError::BadTransfer,
                },
            );
            return;
        }
        if let Err(e) = inc.writer.append(&data) {
            self.incoming.remove(&key);
            self.store_failed(&e);
            self.send(
                &from,
                Msg::WriteFailed {
                    xfer,
                    error: store_err(&e),
                },
            );
            return;
        }
        inc.next_idx += 1;
        inc.last = now;
        self.send(&from, Msg::WriteAck { xfer, idx });
        self.maybe_commit_incoming(&key);
    }

    pub(super) fn open_incoming(
        &mut self,
        from: &NodeAddr,
        xfer: XferId,
        name: &SdfsName,
        version: Version,
    ) -> bool {
        // Two live writers of one version can only come from a primary failover race;
        // the second is refused so a version never mixes two sources.
        let clash = self
            .incoming
            .iter()
            .any(|(k, i)| i.name == *name && i.version == version && (k.0 != *from));
        if clash {
            self.send(
                from,
                Msg::WriteFailed {
                    xfer,
                    error: RemoteError::Conflict,
                },
            );
            return false;
        }
        let from_peer = self.incoming.keys().filter(|k| k.0 == *from).count();
        if from_peer >= self.cfg.max_incoming_per_peer
            || self.incoming.len() >= self.cfg.max_incoming_total
        {
            // Counted and logged once per sweep: a flood must not flood the log too.
            *self.busy_refusals.entry(from.clone()).or_insert(0) += 1;
            self.send(
                from,
                Msg::WriteFailed {
                    xfer,
                    error: RemoteError::Busy,
                },
            );
            return false;
        }
        match self.store.begin_write(name, version) {
            Ok(writer) => {
                self.incoming.insert(
                    (from.clone(), xfer),
                    Incoming {
                        name: name.clone(),
                        version,
                        writer,
                        next_idx: 0,
                        end: None,
                        last: self.now,
                    },
                );
                true
            }
            Err(e) => {
                self.store_failed(&e);
                self.send(
                    from,
                    Msg::WriteFailed {
                        xfer,
                        error: store_err(&e),
                    },
                );
                false
            }
        }
    }

    pub(super) fn on_write_end(
        &mut self,
        from: NodeAddr,
        xfer: XferId,
        name: SdfsName,
        version: Version,
        chunks: u64,
        bytes: u64,
    ) {
        let key = (from.clone(), xfer);
        if !self.incoming.contains_key(&key) {
            // Only an empty file has no chunk that opened the stream.
            if chunks != 0 || !self.open_incoming(&from, xfer, &name, version) {
                return;
            }
        }
        if let Some(inc) = self.incoming.get_mut(&key) {
            inc.end = Some((chunks, bytes));
        }
        self.maybe_commit_incoming(&key);
    }

    pub(super) fn maybe_commit_incoming(&mut self, key: &(NodeAddr, XferId)) {
        let ready = match self.incoming.get(key) {
            Some(inc) => matches!(inc.end, Some((c, _)) if c == inc.next_idx),
            None => false,
        };
        if !ready {
            return;
        }
        let Some(inc) = self.incoming.remove(key) else {
            return;
        };
        let (from, xfer) = key.clone();
        let expected = inc.end.map(|(_, b)| b).unwrap_or(0);
        if inc.writer.bytes() != expected {
            self.send(
                &from,
                Msg::WriteFailed {
                    xfer,
                    error: RemoteError::BadTransfer,
                },
            );
            return;
        }
        match inc.writer.commit() {
            Ok(()) => {
                self.store_wrote();
                self.send(&from, Msg::WriteDone { xfer });
            }
            Err(e) => {
                self.store_failed(&e);
                self.send(
                    &from,
                    Msg::WriteFailed {
                        xfer,
                        error: store_err(&e),
                    },
                );
            }
        }
    }

    pub(super) fn abort_incoming(&mut self, key: &(NodeAddr, XferId), reason: &str) {
        if let Some(inc) = self.incoming.remove(key) {
            self.log(Event::WriteAborted {
                name: inc.name,
                version: inc.version,
                from: key.0.clone(),
                reason: reason.to_string(),
            });
            // Dropping the writer removes its temp file.
        }
    }
}
