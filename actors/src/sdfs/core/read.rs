//! Reads: the client side (ask the primary for versions, fetch each from a holder, fall
//! back to another on failure) and the holder side (serve a stored version).

use std::collections::BTreeSet;

use crate::sdfs::msg::{JobId, Msg, OpId, RemoteError, VersionInfo, XferId};
use crate::sdfs::name::SdfsName;
use crate::sdfs::store::{StoreError, Version};
use crate::types::NodeAddr;

use super::{
    store_err, ClientOp, Delivery, Direct, Effect, Event, Fetch, Meta, ReadKind, ReadOp, Reply,
    SdfsCore, SdfsError, Serving,
};

impl SdfsCore {
    /// Read streams, both as reader and as holder.
    pub(super) fn on_read_msg(&mut self, from: NodeAddr, msg: Msg) {
        match msg {
            Msg::MetaInfo {
                op,
                name: _,
                versions,
            } => self.on_meta_info(op, versions),
            Msg::ReadReq {
                xfer,
                name,
                version,
                from_chunk,
            } => self.on_read_req(from, xfer, name, version, from_chunk),
            Msg::ReadChunk {
                xfer,
                idx,
                crc,
                data,
            } => self.on_read_chunk(&from, xfer, idx, crc, data),
            Msg::ReadEnd { xfer, chunks } => self.on_read_end(&from, xfer, chunks),
            Msg::ReadAck { xfer, idx } => {
                let key = (from, xfer);
                let now = self.now;
                if let Some(s) = self.serving.get_mut(&key) {
                    s.acked = s.acked.max(idx.saturating_add(1));
                    s.last = now;
                }
                self.pump_serving(&key);
            }
            Msg::ReadFailed { xfer, error } => {
                let Some(&op) = self.read_xfers.get(&xfer) else {
                    return;
                };
                let current = matches!(self.ops.get(&op), Some(ClientOp::Read(ReadOp { cur: Some(f), .. })) if f.xfer == xfer && f.holder == from);
                if current {
                    let corrupt = matches!(error, RemoteError::Corrupt { .. });
                    self.read_fallback(op, error.to_string(), corrupt);
                }
            }
            Msg::ReadCancel { xfer } => {
                self.serving.remove(&(from, xfer));
            }
            // `on_peer` routes only the messages above here.
            _ => {}
        }
    }

    pub(super) fn on_meta_info(&mut self, op: OpId, versions: Vec<VersionInfo>) {
        let Some(ClientOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        if r.ctl.is_none() {
            return;
        }
        r.ctl = None;
        self.serve_versions(op, versions);
    }

    /// Answers `ls`, or starts fetching, from the versions a primary or the holders gave.
    pub(super) fn serve_versions(&mut self, op: OpId, versions: Vec<VersionInfo>) {
        let Some(ClientOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        if versions.is_empty() && !r.wide_checked {
            r.wide_checked = true;
            let me = self.cfg.me.clone();
            let everyone: BTreeSet<NodeAddr> =
                self.ring.members().filter(|n| **n != me).cloned().collect();
            self.ask_holders(op, everyone, true);
            return;
        }
        let name = r.name.clone();
        match r.kind {
            ReadKind::Ls => {
                self.ops.remove(&op);
                // A name with no version is no file, for `ls` as for `get`.
                let result = if versions.is_empty() {
                    Err(SdfsError::NoSuchFile(name))
                } else {
                    Ok(Reply::Ls { name, versions })
                };
                self.reply(op, result);
            }
            ReadKind::Get | ReadKind::Versions(_) => {
                let k = match r.kind {
                    ReadKind::Versions(k) => k,
                    _ => 1,
                };
                if versions.is_empty() {
                    self.ops.remove(&op);
                    self.reply(op, Err(SdfsError::NoSuchFile(name)));
                    return;
                }
                r.queue = versions.into_iter().take(k).collect();
                self.next_fetch(op);
            }
        }
    }

    /// The primary has not answered a read in time: ask the name's placement directly
    /// (once per read). The answer serves the read if it comes before the primary's.
    pub(super) fn read_direct(&mut self, op: OpId) {
        let Some(ClientOp::Read(r)) = self.ops.get(&op) else {
            return;
        };
        if r.direct.is_some() || r.ctl.is_none() {
            return;
        }
        let name = r.name.clone();
        if let Some(primary) = r.ctl.as_ref().map(|c| c.primary.clone()) {
            self.log(Event::ReadFromHolders {
                name: name.clone(),
                primary,
            });
        }
        let me = self.cfg.me.clone();
        let mut waiting: BTreeSet<NodeAddr> = self.placement(&name).into_iter().collect();
        waiting.remove(&me);
        self.ask_holders(op, waiting, false);
    }

    /// Sends a read's own `MetaQuery` to `waiting` (this node answers from its store).
    fn ask_holders(&mut self, op: OpId, waiting: BTreeSet<NodeAddr>, wide: bool) {
        let Some(ClientOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        if let Some(old) = r.direct.take() {
            self.read_queries.remove(&old.qid);
        }
        let name = r.name.clone();
        let me = self.cfg.me.clone();
        let qid = self.id();
        let mut acc = Meta::default();
        let (versions, tombstone, _) = self.local_state(&name);
        merge_direct(&mut acc, &me, &versions, tombstone);
        for n in &waiting {
            self.send(
                n,
                Msg::MetaQuery {
                    qid,
                    name: name.clone(),
                },
            );
        }
        self.read_queries.insert(qid, op);
        if let Some(ClientOp::Read(r)) = self.ops.get_mut(&op) {
            r.direct = Some(Box::new(Direct {
                qid,
                waiting,
                asked_at: self.now,
                acc,
                wide,
            }));
        }
        self.maybe_finish_direct(op);
    }

    pub(super) fn on_direct_reply(
        &mut self,
        op: OpId,
        qid: JobId,
        from: NodeAddr,
        versions: &[Version],
        tombstone: Version,
    ) {
        let mine = match self.ops.get_mut(&op) {
            Some(ClientOp::Read(ReadOp {
                direct: Some(d), ..
            })) if d.qid == qid => {
                if d.waiting.remove(&from) {
                    merge_direct(&mut d.acc, &from, versions, tombstone);
                }
                true
            }
            _ => false,
        };
        if mine {
            self.maybe_finish_direct(op);
        } else {
            self.read_queries.remove(&qid);
        }
    }

    /// Serves the read from its direct query once every node asked answered, or all but
    /// one (the silent primary) after `request_timeout_ms`, or anyone after
    /// `idle_timeout_ms` (nodes paused for good). Nodes that answer nothing do not make a
    /// name missing while others are still to answer.
    pub(super) fn maybe_finish_direct(&mut self, op: OpId) {
        let now = self.now;
        let timeout = self.cfg.request_timeout_ms;
        let idle = self.cfg.idle_timeout_ms;
        let Some(ClientOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        let Some(d) = r.direct.as_ref() else { return };
        if r.ctl.is_none() && !d.wide {
            // The primary answered first (or the read moved on).
            self.read_queries.remove(&d.qid);
            r.direct = None;
            return;
        }
        let all = d.waiting.is_empty();
        let waited = now.saturating_sub(d.asked_at);
        let enough = all
            || (waited >= timeout && d.waiting.len() <= 1)
            || (waited >= idle && !d.acc.versions.is_empty());
        if !enough {
            return;
        }
        let t = d.acc.tombstone;
        // Copies of deleted versions on nodes that missed the delete are told to go.
        let stale: BTreeSet<NodeAddr> = d
            .acc
            .versions
            .range(..=t)
            .flat_map(|(_, hs)| hs.iter().cloned())
            .collect();
        let versions: Vec<VersionInfo> = d
            .acc
            .versions
            .range((std::ops::Bound::Excluded(t), std::ops::Bound::Unbounded))
            .rev()
            .map(|(v, hs)| VersionInfo {
                version: *v,
                holders: hs.iter().cloned().collect(),
            })
            .collect();
        if versions.is_empty() && !all {
            // Nobody has it so far, and some have not answered: ask those again (a
            // lost question or answer), until they answer or membership drops them.
            if waited >= timeout {
                let (qid, name) = (d.qid, r.name.clone());
                let again: Vec<NodeAddr> = d.waiting.iter().cloned().collect();
                if let Some(d) = r.direct.as_mut() {
                    d.asked_at = now;
                }
                for n in again {
                    let name = name.clone();
                    self.send(&n, Msg::MetaQuery { qid, name });
                }
            }
            return;
        }
        self.read_queries.remove(&d.qid);
        let name = r.name.clone();
        r.direct = None;
        r.ctl = None;
        for n in stale {
            let name = name.clone();
            self.send(
                &n,
                Msg::DeleteUpTo {
                    job: 0,
                    name,
                    upto: t,
                },
            );
        }
        self.serve_versions(op, versions);
    }

    /// Starts fetching the next queued version, or replies when none is left.
    pub(super) fn next_fetch(&mut self, op: OpId) {
        let Some(ClientOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        let Some(info) = r.queue.pop_front() else {
            let Some(ClientOp::Read(r)) = self.ops.remove(&op) else {
                return;
            };
            let reply = match r.kind {
                ReadKind::Versions(_) => Reply::GetVersions {
                    name: r.name,
                    versions: r.done,
                },
                _ => {
                    let version = r.done.first().copied().unwrap_or(0);
                    Reply::Get {
                        name: r.name,
                        version,
                        bytes: r.last_bytes,
                    }
                }
            };
            self.reply(op, Ok(reply));
            return;
        };
        self.out.push(Effect::Deliver {
            op,
            item: Delivery::Begin {
                version: info.version,
            },
        });
        r.cur = Some(Fetch {
            info,
            xfer: 0,
            holder: self.cfg.me.clone(),
            next_idx: 0,
            bytes: 0,
            tried: BTreeSet::new(),
            bad: BTreeSet::new(),
            last: self.now,
        });
        self.fetch_from_next_holder(op);
    }

    /// Asks the next untried live holder for the current version, resuming at the first
    /// chunk not yet delivered (chunk boundaries are identical on every replica).
    pub(super) fn fetch_from_next_holder(&mut self, op: OpId) {
        let me = self.cfg.me.clone();
        let now = self.now;
        let Some(ClientOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        let Some(f) = r.cur.as_mut() else { return };
        let candidates: Vec<&NodeAddr> = f
            .info
            .holders
            .iter()
            .filter(|h| self.ring.contains(h) && !f.tried.contains(*h))
            .collect();
        // Prefer the local copy; otherwise spread readers over holders by op id.
        let pick = candidates
            .iter()
            .find(|h| ***h == me)
            .or_else(|| candidates.get((op as usize) % candidates.len().max(1)))
            .map(|h| (*h).clone());
        let Some(holder) = pick else {
            let (name, version) = (r.name.clone(), f.info.version);
            self.fail_op(op, SdfsError::Unavailable { name, version });
            return;
        };
        let old = f.xfer;
        self.read_xfers.remove(&old);
        self.next_id = self.next_id.wrapping_add(1);
        let xfer = self.next_id;
        f.xfer = xfer;
        f.holder = holder.clone();
        f.last = now;
        f.tried.insert(holder.clone());
        let msg = Msg::ReadReq {
            xfer,
            name: r.name.clone(),
            version: f.info.version,
            from_chunk: f.next_idx,
        };
        self.read_xfers.insert(xfer, op);
        self.send(&holder, msg);
    }

    pub(super) fn read_fallback(&mut self, op: OpId, reason: String, corrupt: bool) {
        let Some(ClientOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        let Some(f) = r.cur.as_mut() else { return };
        if corrupt {
            f.bad.insert(f.holder.clone());
        }
        let ev = Event::ReadFallback {
            name: r.name.clone(),
            version: f.info.version,
            from: f.holder.clone(),
            reason,
        };
        let (holder, xfer) = (f.holder.clone(), f.xfer);
        self.read_xfers.remove(&xfer);
        if self.is_live(&holder) {
            self.send(&holder, Msg::ReadCancel { xfer });
        }
        self.log(ev);
        self.fetch_from_next_holder(op);
    }

    pub(super) fn on_read_chunk(
        &mut self,
        from: &NodeAddr,
        xfer: XferId,
        idx: u64,
        crc: u32,
        data: Vec<u8>,
    ) {
        let Some(&op) = self.read_xfers.get(&xfer) else {
            return;
        };
        let now = self.now;
        let Some(ClientOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        let Some(f) = r.cur.as_mut() else { return };
        if f.xfer != xfer || f.holder != *from || idx != f.next_idx {
            return;
        }
        if crc32fast::hash(&data) != crc {
            self.read_fallback(op, "chunk damaged in transit".into(), false);
            return;
        }
        f.next_idx += 1;
        f.bytes += data.len() as u64;
        f.last = now;
        self.out.push(Effect::Deliver {
            op,
            item: Delivery::Chunk(data),
        });
        self.send(from, Msg::ReadAck { xfer, idx });
    }

    pub(super) fn on_read_end(&mut self, from: &NodeAddr, xfer: XferId, chunks: u64) {
        let Some(&op) = self.read_xfers.get(&xfer) else {
            return;
        };
        let Some(ClientOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        let Some(f) = r.cur.as_mut() else { return };
        if f.xfer != xfer || f.holder != *from {
            return;
        }
        if chunks != f.next_idx {
            let why = format!("stream ended at chunk {chunks}, expected {}", f.next_idx);
            self.read_fallback(op, why, false);
            return;
        }
        self.read_xfers.remove(&xfer);
        let (version, bytes) = (f.info.version, f.bytes);
        let bad: Vec<NodeAddr> = f.bad.iter().cloned().collect();
        let name = r.name.clone();
        r.done.push(version);
        r.last_bytes = bytes;
        r.cur = None;
        self.out.push(Effect::Deliver {
            op,
            item: Delivery::End { version, bytes },
        });
        // Heal the copies that failed their checksum from the one that just served us.
        for b in bad {
            if self.is_live(&b) {
                let job = self.id();
                self.read_repairs
                    .insert(job, (name.clone(), version, b.clone()));
                self.send(
                    from,
                    Msg::Replicate {
                        job,
                        name: name.clone(),
                        version,
                        to: b,
                    },
                );
            }
        }
        self.next_fetch(op);
    }

    // --------------------------------------------------------------------------------
    // Reads: holder side

    pub(super) fn on_read_req(
        &mut self,
        from: NodeAddr,
        xfer: XferId,
        name: SdfsName,
        version: Version,
        from_chunk: u64,
    ) {
        let opened = self.store.open_read(&name, version).and_then(|mut r| {
            r.seek_chunk(from_chunk)?;
            Ok(r)
        });
        match opened {
            Ok(reader) => {
                self.serving.insert(
                    (from.clone(), xfer),
                    Serving {
                        reader: Box::new(reader),
                        name,
                        version,
                        sent: from_chunk,
                        acked: from_chunk,
                        last: self.now,
                    },
                );
                self.pump_serving(&(from, xfer));
            }
            Err(e) => {
                self.local_read_failed(&name, version, &e);
                self.send(
                    &from,
                    Msg::ReadFailed {
                        xfer,
                        error: store_err(&e),
                    },
                );
            }
        }
    }

    pub(super) fn pump_serving(&mut self, key: &(NodeAddr, XferId)) {
        let window = self.cfg.window as u64;
        loop {
            let Some(s) = self.serving.get_mut(key) else {
                return;
            };
            if s.sent >= s.acked + window {
                return;
            }
            let (to, xfer) = key.clone();
            match s.reader.next_chunk() {
                Ok(Some(data)) => {
                    let idx = s.sent;
                    s.sent += 1;
                    let crc = crc32fast::hash(&data);
                    self.send(
                        &to,
                        Msg::ReadChunk {
                            xfer,
                            idx,
                            crc,
                            data,
                        },
                    );
                }
                Ok(None) => {
                    let chunks = s.sent;
                    self.serving.remove(key);
                    self.send(&to, Msg::ReadEnd { xfer, chunks });
                    return;
                }
                Err(e) => {
                    let (name, version) = (s.name.clone(), s.version);
                    self.serving.remove(key);
                    self.local_read_failed(&name, version, &e);
                    self.send(
                        &to,
                        Msg::ReadFailed {
                            xfer,
                            error: store_err(&e),
                        },
                    );
                    return;
                }
            }
        }
    }

    /// A local copy failed to read: a corrupt copy is logged and removed so it is never
    /// served again; the reader that hit it arranges the repair.
    pub(super) fn local_read_failed(&mut self, name: &SdfsName, version: Version, e: &StoreError) {
        match e {
            StoreError::Corrupt { chunk, .. } => {
                self.log(Event::ChecksumMismatch {
                    name: name.clone(),
                    version,
                    chunk: *chunk,
                    node: self.cfg.me.clone(),
                });
                if let Err(e) = self.store.remove_version(name, version) {
                    self.log(Event::StoreFailure {
                        what: e.to_string(),
                    });
                }
            }
            StoreError::NotFound { .. } => {}
            other => self.log(Event::StoreFailure {
                what: other.to_string(),
            }),
        }
    }
}

fn merge_direct(acc: &mut Meta, from: &NodeAddr, versions: &[Version], tombstone: Version) {
    for v in versions {
        acc.versions.entry(*v).or_default().insert(from.clone());
    }
    acc.tombstone = acc.tombstone.max(tombstone);
}
