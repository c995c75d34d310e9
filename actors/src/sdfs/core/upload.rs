//! Sender side of uploads (puts and repairs): streaming chunks to every target under a
//! window, end of stream, and losing a target.

use crate::sdfs::msg::{CopyOutcome, Msg, RemoteError, XferId};
use crate::types::NodeAddr;

use super::{ClientOp, Effect, PutStage, SdfsCore, SdfsError, UploadFor, UploadSource};

impl SdfsCore {
    /// Targets acknowledging or refusing an upload.
    pub(super) fn on_upload_msg(&mut self, from: NodeAddr, msg: Msg) {
        match msg {
            Msg::WriteAck { xfer, idx } => self.on_write_ack(&from, xfer, idx),
            Msg::WriteDone { xfer } => self.on_write_done(&from, xfer),
            Msg::WriteFailed { xfer, error } => {
                let targeted = self
                    .uploads
                    .get(&xfer)
                    .is_some_and(|u| u.targets.contains_key(&from));
                if targeted {
                    // A deleted name or a lost race cannot be fixed by another replica.
                    let fatal =
                        matches!(error, RemoteError::Deleted { .. } | RemoteError::Conflict);
                    if let (true, Some(UploadFor::Put(op))) =
                        (fatal, self.uploads.get(&xfer).map(|u| &u.purpose))
                    {
                        let op = *op;
                        self.on_refused(op, error);
                    } else {
                        // A damaged transfer or a busy replica says nothing against
                        // the node: the next attempt may use it again.
                        let bad_node =
                            !matches!(error, RemoteError::BadTransfer | RemoteError::Busy);
                        self.upload_failed(xfer, Some((from, bad_node, error.to_string())));
                    }
                }
            }
            // `on_peer` routes only the messages above here.
            _ => {}
        }
    }

    pub(super) fn pump_upload(&mut self, xfer: XferId) {
        loop {
            let window = self.cfg.window as u64;
            let chunk = self.cfg.chunk_size;
            let Some(u) = self.uploads.get_mut(&xfer) else {
                return;
            };
            if u.reading || u.ended {
                return;
            }
            let min_acked = u.targets.values().map(|t| t.acked).min().unwrap_or(0);
            if u.next_idx >= min_acked + window {
                return;
            }
            match &mut u.source {
                UploadSource::Client(op) => {
                    u.reading = true;
                    let (op, offset) = (*op, u.next_idx.saturating_mul(chunk as u64));
                    self.out.push(Effect::ReadSource {
                        op,
                        offset,
                        len: chunk,
                    });
                    return;
                }
                UploadSource::Local(reader) => match reader.next_chunk() {
                    Ok(Some(data)) => self.send_chunk(xfer, data),
                    Ok(None) => {
                        self.end_upload(xfer);
                        return;
                    }
                    Err(e) => {
                        let (name, version) = (u.name.clone(), u.version);
                        self.local_read_failed(&name, version, &e);
                        self.upload_failed(xfer, None);
                        return;
                    }
                },
            }
        }
    }

    pub(super) fn send_chunk(&mut self, xfer: XferId, data: Vec<u8>) {
        let now = self.now;
        let Some(u) = self.uploads.get_mut(&xfer) else {
            return;
        };
        let crc = crc32fast::hash(&data);
        let idx = u.next_idx;
        u.next_idx += 1;
        u.bytes += data.len() as u64;
        u.last = now;
        for to in u.targets.keys() {
            self.out.push(Effect::Send {
                to: to.clone(),
                msg: Msg::WriteChunk {
                    xfer,
                    name: u.name.clone(),
                    version: u.version,
                    idx,
                    crc,
                    data: data.clone(),
                },
            });
        }
    }

    pub(super) fn end_upload(&mut self, xfer: XferId) {
        let Some(u) = self.uploads.get_mut(&xfer) else {
            return;
        };
        u.ended = true;
        for to in u.targets.keys() {
            self.out.push(Effect::Send {
                to: to.clone(),
                msg: Msg::WriteEnd {
                    xfer,
                    name: u.name.clone(),
                    version: u.version,
                    chunks: u.next_idx,
                    bytes: u.bytes,
                },
            });
        }
    }

    pub(super) fn cancel_upload(&mut self, xfer: XferId) {
        if let Some(u) = self.uploads.remove(&xfer) {
            for to in u.targets.keys() {
                if self.ring.contains(to) {
                    self.send(to, Msg::WriteAbort { xfer });
                }
            }
        }
    }

    /// A target of an upload failed (`Some(node)`), or its source did (`None`).
    pub(super) fn upload_failed(&mut self, xfer: XferId, lost: Option<(NodeAddr, bool, String)>) {
        let Some(u) = self.uploads.get(&xfer) else {
            return;
        };
        match u.purpose {
            UploadFor::Put(op) => {
                let (node, exclude, why) =
                    lost.unwrap_or_else(|| (self.cfg.me.clone(), false, "source failed".into()));
                self.retry_put(op, &node, exclude, &why);
            }
            UploadFor::Repair { job, ref requester } => {
                let requester = requester.clone();
                let (name, version) = (u.name.clone(), u.version);
                let to = u
                    .targets
                    .keys()
                    .next()
                    .cloned()
                    .unwrap_or_else(|| self.cfg.me.clone());
                // The target's own write failed (not a stall or a damaged transfer).
                let outcome = match lost {
                    Some((_, true, _)) => CopyOutcome::Refused,
                    _ => CopyOutcome::Failed,
                };
                self.cancel_upload(xfer);
                self.finish_replicate(requester, job, name, version, to, outcome);
            }
        }
    }

    pub(super) fn on_write_ack(&mut self, from: &NodeAddr, xfer: XferId, idx: u64) {
        let now = self.now;
        let Some(u) = self.uploads.get_mut(&xfer) else {
            return;
        };
        if let Some(t) = u.targets.get_mut(from) {
            t.acked = t.acked.max(idx.saturating_add(1));
            u.last = now;
        }
        self.pump_upload(xfer);
    }

    pub(super) fn on_write_done(&mut self, from: &NodeAddr, xfer: XferId) {
        let Some(u) = self.uploads.get_mut(&xfer) else {
            return;
        };
        if let Some(t) = u.targets.get_mut(from) {
            t.done = true;
        }
        if !u.targets.values().all(|t| t.done) {
            return;
        }
        let Some(u) = self.uploads.remove(&xfer) else {
            return;
        };
        let holders: Vec<NodeAddr> = u.targets.keys().cloned().collect();
        match u.purpose {
            UploadFor::Put(op) => {
                let Some(primary) = self.primary_of(&u.name) else {
                    self.fail_put(op, SdfsError::NoMembers);
                    return;
                };
                let _ = primary;
                if let Some(ClientOp::Put(p)) = self.ops.get_mut(&op) {
                    p.stage = PutStage::Committing;
                    p.holders = holders;
                    p.attempts = 0;
                }
                self.ctl_send(op);
            }
            UploadFor::Repair { job, requester } => {
                let to = holders
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| self.cfg.me.clone());
                let outcome = CopyOutcome::Copied { bytes: u.bytes };
                self.finish_replicate(requester, job, u.name, u.version, to, outcome);
            }
        }
    }
}
