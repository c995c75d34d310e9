//! Client side of a put: placing the upload once the primary grants a version, retrying
//! it when a replica is lost, feeding it the local source.

use crate::sdfs::msg::{Msg, OpId};
use crate::types::NodeAddr;

use super::{
    ClientOp, Event, PutOp, PutStage, Reply, SdfsCore, SdfsError, TargetState, Upload, UploadFor,
    UploadSource,
};

impl SdfsCore {
    /// The primary's grant and acknowledgement of a put.
    pub(super) fn on_put_msg(&mut self, from: NodeAddr, msg: Msg) {
        match msg {
            Msg::PutGrant {
                op,
                name: _,
                version,
            } => {
                if let Some(ClientOp::Put(p)) = self.ops.get_mut(&op) {
                    if matches!(p.stage, PutStage::Granting)
                        && p.ctl.as_ref().is_some_and(|c| c.primary == from)
                    {
                        p.version = Some(version);
                        p.attempts = 0;
                        self.start_attempt(op);
                    }
                }
            }
            Msg::PutAck { op, name, version } => {
                if let Some(ClientOp::Put(p)) = self.ops.get(&op) {
                    if matches!(p.stage, PutStage::Committing) && p.version == Some(version) {
                        self.ops.remove(&op);
                        self.reply(op, Ok(Reply::Put { name, version }));
                    }
                }
            }
            // `on_peer` routes only the messages above here.
            _ => {}
        }
    }

    pub(super) fn start_attempt(&mut self, op: OpId) {
        let replicas = self.cfg.replicas;
        let now = self.now;
        let Some(ClientOp::Put(p)) = self.ops.get(&op) else {
            return;
        };
        let Some(version) = p.version else { return };
        let name = p.name.clone();
        let targets = self.ring.placement_excluding(&name, replicas, &p.excluded);
        if targets.is_empty() {
            // Nodes are there, but each failed a write of this put (a full disk, say):
            // saying "not in the cluster" would send the operator the wrong way.
            let err = match &p.refused {
                Some(last) if !p.excluded.is_empty() => SdfsError::AllRefused {
                    name: name.to_string(),
                    refused: p.excluded.len(),
                    last: last.clone(),
                },
                _ => SdfsError::NoMembers,
            };
            self.fail_put(op, err);
            return;
        }
        let xfer = self.id();
        self.uploads.insert(
            xfer,
            Upload {
                purpose: UploadFor::Put(op),
                name,
                version,
                targets: targets
                    .into_iter()
                    .map(|t| (t, TargetState::default()))
                    .collect(),
                source: UploadSource::Client(op),
                next_idx: 0,
                bytes: 0,
                reading: false,
                ended: false,
                last: now,
            },
        );
        if let Some(ClientOp::Put(p)) = self.ops.get_mut(&op) {
            p.stage = PutStage::Uploading { xfer };
            p.ctl = None;
        }
        if self.cfg.staged {
            self.stage_upload(op, xfer);
        } else {
            self.pump_upload(xfer);
        }
    }

    /// A put's upload lost a target: place the put again (same version, from the first
    /// byte) or give up after too many attempts.
    pub(super) fn retry_put(&mut self, op: OpId, lost: &NodeAddr, exclude: bool, why: &str) {
        let max = self.cfg.max_attempts;
        let Some(ClientOp::Put(p)) = self.ops.get_mut(&op) else {
            return;
        };
        p.attempts += 1;
        if exclude {
            p.excluded.insert(lost.clone());
            p.refused = Some(format!("{lost}: {why}"));
        }
        let (name, version, attempts) = (p.name.clone(), p.version.unwrap_or(0), p.attempts);
        if let PutStage::Uploading { xfer } = p.stage {
            self.cancel_upload(xfer);
        }
        self.log(Event::ReplicaLostMidPut {
            name: name.clone(),
            version,
            node: lost.clone(),
        });
        if attempts > max {
            let err = SdfsError::GaveUp {
                name: name.to_string(),
                attempts,
                last: why.to_string(),
            };
            self.fail_put(op, err);
        } else {
            self.start_attempt(op);
        }
    }

    pub(super) fn on_source(&mut self, op: OpId, offset: u64, data: Vec<u8>) {
        let chunk = self.cfg.chunk_size as u64;
        let Some(ClientOp::Put(PutOp {
            stage: PutStage::Uploading { xfer },
            ..
        })) = self.ops.get(&op)
        else {
            return;
        };
        let xfer = *xfer;
        let Some(u) = self.uploads.get_mut(&xfer) else {
            return;
        };
        // A read issued for an earlier attempt may answer late: only the offset the
        // current attempt asked for is taken.
        if !u.reading || offset != u.next_idx.saturating_mul(chunk) {
            return;
        }
        u.reading = false;
        if data.is_empty() {
            self.end_upload(xfer);
        } else if data.len() > self.cfg.chunk_size {
            self.fail_put(
                op,
                SdfsError::Source(format!(
                    "source returned {} bytes for a {chunk}-byte chunk",
                    data.len()
                )),
            );
        } else {
            self.send_chunk(xfer, data);
            self.pump_upload(xfer);
        }
    }
}
