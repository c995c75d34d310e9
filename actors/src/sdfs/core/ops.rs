//! Client operations of the SDFS core: commands in, requests to the name's primary,
//! resends and backoff, failures, listings.

use std::collections::{BTreeSet, VecDeque};

use crate::sdfs::msg::{Msg, OpId, RemoteError};
use crate::sdfs::name::SdfsName;
use crate::sdfs::store::Page;
use crate::types::{Millis, NodeAddr};

use super::{
    ClientOp, Command, Ctl, DeleteOp, Event, ListOp, PutOp, PutStage, ReadKind, ReadOp, Reply,
    SdfsCore, SdfsError, PAGE_MAX,
};

impl SdfsCore {
    /// Answers to client requests and listings.
    pub(super) fn on_ops_msg(&mut self, from: NodeAddr, msg: Msg) {
        match msg {
            Msg::Deleted {
                op,
                name,
                tombstone,
            } => {
                if let Some(ClientOp::Delete(_)) = self.ops.get(&op) {
                    self.ops.remove(&op);
                    self.reply(op, Ok(Reply::Deleted { name, tombstone }));
                }
            }
            Msg::Refused { op, error } => self.on_refused(op, error),
            Msg::ListPrefix {
                op,
                prefix,
                after,
                limit,
            } => {
                let page = self.page(&prefix, after.as_deref(), limit as usize, true);
                let names = page.items.into_iter().map(|h| h.name).collect();
                let more = page.more;
                self.send(&from, Msg::ListReply { op, names, more });
            }
            Msg::ListReply { op, names, more } => {
                if let Some(ClientOp::List(l)) = self.ops.get_mut(&op) {
                    if l.waiting.remove(&from) {
                        l.add(names, more);
                    }
                }
                self.maybe_finish_list(op);
            }
            // `on_peer` routes only the messages above here.
            _ => {}
        }
    }

    pub(super) fn on_command(&mut self, op: OpId, cmd: Command) {
        if self.ops.contains_key(&op) {
            self.reply(op, Err(SdfsError::DuplicateOp(op)));
            return;
        }
        match cmd {
            Command::Put { name } => {
                self.ops.insert(
                    op,
                    ClientOp::Put(PutOp {
                        name,
                        version: None,
                        stage: PutStage::Granting,
                        ctl: None,
                        attempts: 0,
                        excluded: BTreeSet::new(),
                        refused: None,
                        holders: Vec::new(),
                    }),
                );
                self.ctl_send(op);
            }
            Command::Get { name } => self.start_read(op, name, ReadKind::Get),
            Command::GetVersions { name, k } => self.start_read(op, name, ReadKind::Versions(k)),
            Command::Ls { name } => self.start_read(op, name, ReadKind::Ls),
            Command::Delete { name } => {
                self.ops.insert(
                    op,
                    ClientOp::Delete(DeleteOp {
                        name,
                        ctl: None,
                        attempts: 0,
                        unanswered: false,
                    }),
                );
                self.ctl_send(op);
            }
            Command::LsPrefix {
                prefix,
                after,
                limit,
            } => {
                let limit = limit.clamp(1, PAGE_MAX);
                let local = self.page(&prefix, after.as_deref(), limit, true);
                let me = self.cfg.me.clone();
                let waiting: BTreeSet<NodeAddr> =
                    self.ring.members().filter(|m| **m != me).cloned().collect();
                let mut list = ListOp {
                    prefix,
                    after,
                    limit,
                    waiting,
                    names: BTreeSet::new(),
                    cut: None,
                    asked_at: self.now,
                };
                list.add(
                    local.items.into_iter().map(|h| h.name).collect(),
                    local.more,
                );
                self.ops.insert(op, ClientOp::List(list));
                self.resend_list(op);
                self.maybe_finish_list(op);
            }
            Command::Store { after, limit } => {
                // Deleted names are listed with their tombstone (and no versions): a
                // copy elsewhere that missed the delete is then recognisable as stale.
                let limit = limit.clamp(1, PAGE_MAX);
                let result = self
                    .store
                    .page("", after.as_deref(), limit, false)
                    .map(|p| Reply::Store {
                        next: match p.more {
                            true => p.items.last().map(|h| h.name.clone()),
                            false => None,
                        },
                        holdings: p.items,
                    })
                    .map_err(|e| SdfsError::Store(e.to_string()));
                self.reply(op, result);
            }
        }
    }

    /// A page of this node's live names (empty, logged, when the store fails).
    fn page(&mut self, prefix: &str, after: Option<&str>, limit: usize, live: bool) -> Page {
        let limit = limit.clamp(1, PAGE_MAX);
        self.store
            .page(prefix, after, limit, live)
            .unwrap_or_else(|e| {
                self.log(Event::StoreFailure {
                    what: e.to_string(),
                });
                Page::default()
            })
    }

    pub(super) fn start_read(&mut self, op: OpId, name: SdfsName, kind: ReadKind) {
        self.ops.insert(
            op,
            ClientOp::Read(ReadOp {
                name,
                kind,
                ctl: None,
                direct: None,
                wide_checked: false,
                attempts: 0,
                queue: VecDeque::new(),
                cur: None,
                done: Vec::new(),
                last_bytes: 0,
            }),
        );
        self.ctl_send(op);
    }

    /// (Re)sends the request `op` is waiting on to the name's current primary, or fails
    /// the op after too many attempts.
    pub(super) fn ctl_send(&mut self, op: OpId) {
        let now = self.now;
        let max = self.cfg.max_attempts;
        let Some(entry) = self.ops.get_mut(&op) else {
            return;
        };
        let (name, attempts, msg, expects_answer) = match entry {
            ClientOp::Put(p) => {
                let msg = match (&p.stage, p.version) {
                    (PutStage::Granting, _) => Msg::PutBegin {
                        op,
                        name: p.name.clone(),
                    },
                    (PutStage::Uploading { .. }, Some(v)) => Msg::PutClaim {
                        op,
                        name: p.name.clone(),
                        version: v,
                    },
                    (PutStage::Committing, Some(v)) => Msg::PutCommitted {
                        op,
                        name: p.name.clone(),
                        version: v,
                        holders: p.holders.clone(),
                    },
                    _ => return,
                };
                p.attempts += 1;
                // A claim is only remembered by the primary; the put keeps uploading.
                let expects = !matches!(p.stage, PutStage::Uploading { .. });
                (p.name.clone(), p.attempts, msg, expects)
            }
            ClientOp::Read(r) => {
                r.attempts += 1;
                (
                    r.name.clone(),
                    r.attempts,
                    Msg::MetaGet {
                        op,
                        name: r.name.clone(),
                    },
                    true,
                )
            }
            ClientOp::Delete(d) => {
                d.attempts += 1;
                // A previous send that was not refused (a refusal sets a back-off) went
                // unanswered.
                if d.ctl.as_ref().is_some_and(|c| c.backoff_until.is_none()) {
                    d.unanswered = true;
                }
                (
                    d.name.clone(),
                    d.attempts,
                    Msg::Delete {
                        op,
                        name: d.name.clone(),
                    },
                    true,
                )
            }
            ClientOp::List(_) => return,
        };
        if attempts > max {
            let err = SdfsError::GaveUp {
                name: name.to_string(),
                attempts: max,
                last: "no answer from the primary".into(),
            };
            self.fail_op(op, err);
            return;
        }
        let Some(primary) = self.primary_of(&name) else {
            self.fail_op(op, SdfsError::NoMembers);
            return;
        };
        if expects_answer {
            let ctl = Some(Ctl {
                primary: primary.clone(),
                sent_at: now,
                backoff_until: None,
            });
            match self.ops.get_mut(&op) {
                Some(ClientOp::Put(p)) => p.ctl = ctl,
                Some(ClientOp::Read(r)) => r.ctl = ctl,
                Some(ClientOp::Delete(d)) => d.ctl = ctl,
                _ => {}
            }
        }
        self.send(&primary, msg);
    }

    /// Fails any client op, cleaning up what it holds.
    pub(super) fn fail_op(&mut self, op: OpId, err: SdfsError) {
        match self.ops.remove(&op) {
            Some(ClientOp::Put(p)) => {
                self.ops.insert(op, ClientOp::Put(p));
                self.fail_put(op, err);
            }
            Some(ClientOp::Read(r)) => {
                if let Some(d) = r.direct {
                    self.read_queries.remove(&d.qid);
                }
                if let Some(f) = r.cur {
                    self.read_xfers.remove(&f.xfer);
                    self.send(&f.holder, Msg::ReadCancel { xfer: f.xfer });
                }
                self.reply(op, Err(err));
            }
            Some(_) => self.reply(op, Err(err)),
            None => {}
        }
    }

    pub(super) fn fail_put(&mut self, op: OpId, err: SdfsError) {
        if !matches!(self.ops.get(&op), Some(ClientOp::Put(_))) {
            return;
        }
        let Some(ClientOp::Put(p)) = self.ops.remove(&op) else {
            return;
        };
        if let PutStage::Uploading { xfer } = p.stage {
            self.cancel_upload(xfer);
        }
        if let (Some(v), Some(primary)) = (p.version, self.primary_of(&p.name)) {
            self.send(
                &primary,
                Msg::PutAbort {
                    name: p.name.clone(),
                    version: v,
                },
            );
        }
        self.reply(op, Err(err));
    }

    pub(super) fn on_refused(&mut self, op: OpId, error: RemoteError) {
        let now = self.now;
        let backoff = self.cfg.retry_backoff_ms;
        match (self.ops.get_mut(&op), &error) {
            (Some(ClientOp::Put(p)), RemoteError::Conflict)
                if !matches!(p.stage, PutStage::Granting) =>
            {
                // The version was taken (primary failover race) or dropped: start over
                // with a fresh grant. The old number is given up, so that copies this
                // writer already made of it (e.g. it was paused, declared failed, and
                // went on uploading after the drop) are removed.
                if let PutStage::Uploading { xfer } = p.stage {
                    self.cancel_upload(xfer);
                }
                let mut old = None;
                if let Some(ClientOp::Put(p)) = self.ops.get_mut(&op) {
                    p.stage = PutStage::Granting;
                    old = p.version.take().map(|v| (p.name.clone(), v));
                }
                if let Some((name, version)) = old {
                    if let Some(primary) = self.primary_of(&name) {
                        self.send(&primary, Msg::PutAbort { name, version });
                    }
                }
                self.ctl_send(op);
            }
            (Some(ClientOp::Put(p)), RemoteError::NotPrimary) => {
                set_backoff(&mut p.ctl, now + backoff)
            }
            (Some(ClientOp::Read(r)), RemoteError::NotPrimary) => {
                set_backoff(&mut r.ctl, now + backoff)
            }
            (Some(ClientOp::Delete(d)), RemoteError::NotPrimary) => {
                set_backoff(&mut d.ctl, now + backoff)
            }
            (Some(ClientOp::Read(r)), RemoteError::NoSuchFile)
            | (Some(ClientOp::Read(r)), RemoteError::NotFound) => {
                let name = r.name.clone();
                self.ops.remove(&op);
                self.reply(op, Err(SdfsError::NoSuchFile(name)));
            }
            (Some(ClientOp::Delete(d)), RemoteError::NoSuchFile) => {
                let name = d.name.clone();
                self.ops.remove(&op);
                self.reply(op, Err(SdfsError::NoSuchFile(name)));
            }
            (Some(ClientOp::Delete(d)), RemoteError::Deleted { tombstone }) => {
                // Nothing is left to delete. If an earlier send went unanswered, the
                // delete may have run then (on a primary that died before answering):
                // it is reported done, as a retried delete must be. Otherwise the name
                // was already gone.
                let (name, tombstone, unanswered) = (d.name.clone(), *tombstone, d.unanswered);
                self.ops.remove(&op);
                let result = if unanswered {
                    Ok(Reply::Deleted { name, tombstone })
                } else {
                    Err(SdfsError::NoSuchFile(name))
                };
                self.reply(op, result);
            }
            (Some(_), _) => self.fail_op(op, SdfsError::Remote(error)),
            (None, _) => {}
        }
    }

    /// Asks the nodes that have not answered a listing (again: a lost answer would
    /// otherwise leave it waiting for ever; a repeated answer is ignored).
    pub(super) fn resend_list(&mut self, op: OpId) {
        let now = self.now;
        let Some(ClientOp::List(l)) = self.ops.get_mut(&op) else {
            return;
        };
        l.asked_at = now;
        let nodes = l.waiting.clone();
        let (prefix, after, limit) = (l.prefix.clone(), l.after.clone(), l.limit as u32);
        for n in nodes {
            let (prefix, after) = (prefix.clone(), after.clone());
            let msg = Msg::ListPrefix {
                op,
                prefix,
                after,
                limit,
            };
            self.send(&n, msg);
        }
    }

    pub(super) fn maybe_finish_list(&mut self, op: OpId) {
        if !matches!(self.ops.get(&op), Some(ClientOp::List(l)) if l.waiting.is_empty()) {
            return;
        }
        if let Some(ClientOp::List(l)) = self.ops.remove(&op) {
            let (names, next) = l.merged();
            self.reply(op, Ok(Reply::Names { names, next }));
        }
    }
}

impl ListOp {
    /// One node's answer: its names, and whether it holds more past the last.
    fn add(&mut self, names: Vec<SdfsName>, more: bool) {
        if more {
            if let Some(last) = names.last() {
                if self.cut.as_ref().is_none_or(|c| last < c) {
                    self.cut = Some(last.clone());
                }
            }
        }
        self.names.extend(names);
    }

    /// The page: the smallest `limit` names up to the cut, and the cursor of the next
    /// page. Each node sent its smallest names, so every name up to the last one kept is
    /// in some answer: a node that stopped early stopped at or after the cut.
    fn merged(self) -> (Vec<SdfsName>, Option<SdfsName>) {
        let cut = self.cut;
        let mut names: Vec<SdfsName> = match &cut {
            Some(c) => self.names.into_iter().take_while(|n| n <= c).collect(),
            None => self.names.into_iter().collect(),
        };
        let more = names.len() > self.limit || cut.is_some();
        names.truncate(self.limit);
        let next = if more { names.last().cloned() } else { None };
        (names, next)
    }
}

fn set_backoff(ctl: &mut Option<Ctl>, until: Millis) {
    if let Some(c) = ctl.as_mut() {
        c.backoff_until = Some(until);
    }
}
