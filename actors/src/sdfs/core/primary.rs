//! Primary side: versions are sequenced, commits recorded and deletes run here; the
//! metadata of a name is rebuilt by asking its placement (`MetaQuery`).

use std::collections::{BTreeMap, BTreeSet};

use crate::sdfs::msg::{JobId, Msg, OpId, RemoteError, VersionInfo};
use crate::sdfs::name::SdfsName;
use crate::sdfs::store::Version;
use crate::types::NodeAddr;

use super::{DeleteJob, Event, Meta, PrimaryReq, Query, SdfsCore};

impl SdfsCore {
    /// Requests to this node as a primary, and metadata queries between placement nodes.
    pub(super) fn on_primary_msg(&mut self, from: NodeAddr, msg: Msg) {
        match msg {
            Msg::PutBegin { op, name } => self.primary_req(name, PrimaryReq::Grant { from, op }),
            Msg::PutClaim { op, name, version } => {
                self.primary_req(name, PrimaryReq::Claim { from, op, version })
            }
            Msg::PutCommitted {
                op,
                name,
                version,
                holders,
            } => self.primary_req(
                name,
                PrimaryReq::Commit {
                    from,
                    op,
                    version,
                    holders,
                },
            ),
            Msg::PutAbort { name, version } => {
                self.primary_req(name, PrimaryReq::Abort { from, version })
            }
            Msg::MetaGet { op, name } => self.primary_req(name, PrimaryReq::MetaGet { from, op }),
            Msg::Delete { op, name } => self.primary_req(name, PrimaryReq::Delete { from, op }),
            Msg::MetaQuery { qid, name } => {
                let (versions, tombstone, inflight) = self.local_state(&name);
                self.send(
                    &from,
                    Msg::MetaReply {
                        qid,
                        name,
                        versions,
                        tombstone,
                        inflight,
                    },
                );
            }
            Msg::MetaReply {
                qid,
                name,
                versions,
                tombstone,
                inflight,
            } => {
                if let Some(&op) = self.read_queries.get(&qid) {
                    self.on_direct_reply(op, qid, from, &versions, tombstone);
                    return;
                }
                if let Some(q) = self.queries.get_mut(&qid) {
                    if q.name == name && q.waiting.remove(&from) {
                        merge_reply(q, &from, &versions, tombstone, &inflight);
                    }
                }
                self.maybe_finish_query(qid);
            }
            Msg::DeleteDone { job } => {
                if let Some(d) = self.deletes.get_mut(&job) {
                    d.waiting.remove(&from);
                }
                self.maybe_finish_delete(job);
            }
            // `on_peer` routes only the messages above here.
            _ => {}
        }
    }

    pub(super) fn primary_req(&mut self, name: SdfsName, req: PrimaryReq) {
        if self.primary_of(&name).as_ref() != Some(&self.cfg.me) {
            let op = match &req {
                PrimaryReq::Grant { from, op }
                | PrimaryReq::Claim { from, op, .. }
                | PrimaryReq::Commit { from, op, .. }
                | PrimaryReq::MetaGet { from, op }
                | PrimaryReq::Delete { from, op } => Some((from.clone(), *op)),
                PrimaryReq::Abort { .. } | PrimaryReq::RepairCheck => None,
            };
            if let Some((from, op)) = op {
                self.send(
                    &from,
                    Msg::Refused {
                        op,
                        error: RemoteError::NotPrimary,
                    },
                );
            }
            return;
        }
        let answers_with_latest = matches!(
            req,
            PrimaryReq::MetaGet { .. } | PrimaryReq::Grant { .. } | PrimaryReq::Delete { .. }
        );
        if answers_with_latest && self.meta.contains_key(&name) && self.cache_contradicted(&name) {
            self.meta.remove(&name);
        }
        if self.meta.contains_key(&name) {
            self.serve(&name, req);
        } else {
            self.waiting.entry(name.clone()).or_default().push(req);
            self.start_query(&name);
        }
    }

    /// Whether this node's own copy of `name` shows something its cached metadata does
    /// not know: a newer tombstone, or a newer version it neither granted nor dropped.
    /// Then another node acted as primary meanwhile (views of the membership disagreed,
    /// e.g. a restarted node that rejoined and this node has not heard of yet; or this
    /// node's view lagged), and the cache is learnt again before a read, a grant or a
    /// delete is answered from it. A local check only: a primary that the others took
    /// for dead and that holds no copy of their writes cannot see them here (README,
    /// "Not guaranteed").
    fn cache_contradicted(&mut self, name: &SdfsName) -> bool {
        let (versions, tombstone, _) = self.local_state(name);
        let Some(m) = self.meta.get(name) else {
            return false;
        };
        let known = m
            .versions
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(m.tombstone)
            .max(m.seen);
        let granted = self.granted.get(name);
        let stale = tombstone > m.tombstone
            || versions.iter().any(|v| {
                *v > known
                    && !granted.is_some_and(|g| g.contains_key(v))
                    && !self.is_dropped(name, *v)
            });
        if stale {
            self.log(Event::StaleMeta {
                name: name.clone(),
                cached: known,
                local: versions.last().copied().unwrap_or(0).max(tombstone),
            });
        }
        stale
    }

    pub(super) fn start_query(&mut self, name: &SdfsName) {
        if self.querying.contains_key(name) {
            return;
        }
        let qid = self.id();
        let me = self.cfg.me.clone();
        let mut targets: BTreeSet<NodeAddr> = self.placement(name).into_iter().collect();
        if let Some(extra) = self.repairs.sources.get(name) {
            targets.extend(extra.iter().filter(|n| self.ring.contains(n)).cloned());
        }
        // Nodes standing in for ones that refused a copy hold it outside the placement.
        if let Some(refused) = self.repairs.refused.get(name) {
            let stand_ins = self
                .ring
                .placement_excluding(name, self.cfg.replicas, refused);
            targets.extend(stand_ins);
        }
        targets.remove(&me);
        let mut q = Query {
            name: name.clone(),
            waiting: targets.clone(),
            asked_at: self.now,
            acc: Meta::default(),
            node_tombstones: BTreeMap::new(),
        };
        let (versions, tombstone, inflight) = self.local_state(name);
        merge_reply(&mut q, &me, &versions, tombstone, &inflight);
        for t in &targets {
            self.send(
                t,
                Msg::MetaQuery {
                    qid,
                    name: name.clone(),
                },
            );
        }
        self.queries.insert(qid, q);
        self.querying.insert(name.clone(), qid);
        self.maybe_finish_query(qid);
    }

    /// Asks again every node that has not answered a metadata query within
    /// `request_timeout_ms`. A `MetaQuery` only reads, and a second answer from the same
    /// node is ignored, so asking twice is harmless.
    pub(super) fn resend_stale_queries(&mut self) {
        let now = self.now;
        let timeout = self.cfg.request_timeout_ms;
        let stale: Vec<(JobId, SdfsName, Vec<NodeAddr>)> = self
            .queries
            .iter_mut()
            .filter(|(_, q)| !q.waiting.is_empty() && now.saturating_sub(q.asked_at) >= timeout)
            .map(|(qid, q)| {
                q.asked_at = now;
                (*qid, q.name.clone(), q.waiting.iter().cloned().collect())
            })
            .collect();
        for (qid, name, nodes) in stale {
            for n in nodes {
                self.send(
                    &n,
                    Msg::MetaQuery {
                        qid,
                        name: name.clone(),
                    },
                );
            }
        }
    }

    pub(super) fn local_state(&mut self, name: &SdfsName) -> (Vec<Version>, Version, Vec<Version>) {
        let versions = self.store.versions(name);
        let tombstone = self.store.tombstone(name);
        let inflight = self
            .incoming
            .values()
            .filter(|i| i.name == *name)
            .map(|i| i.version)
            .collect();
        match (versions, tombstone) {
            (Ok(v), Ok(t)) => (v, t, inflight),
            (Err(e), _) | (_, Err(e)) => {
                self.log(Event::StoreFailure {
                    what: e.to_string(),
                });
                (Vec::new(), 0, inflight)
            }
        }
    }

    pub(super) fn maybe_finish_query(&mut self, qid: JobId) {
        if !self.queries.get(&qid).is_some_and(|q| q.waiting.is_empty()) {
            return;
        }
        let Some(q) = self.queries.remove(&qid) else {
            return;
        };
        self.querying.remove(&q.name);
        let mut meta = q.acc;
        let t = meta.tombstone;
        // Copies of deleted versions (a node that was away during the delete) and
        // placement nodes that missed the tombstone are told to catch up.
        let mut stale: BTreeSet<NodeAddr> = meta
            .versions
            .range(..=t)
            .flat_map(|(_, hs)| hs.iter().cloned())
            .collect();
        if t > 0 {
            for n in self.placement(&q.name) {
                if q.node_tombstones.get(&n).copied().unwrap_or(0) < t {
                    stale.insert(n);
                }
            }
        }
        // Everything above the tombstone; nothing is above u64::MAX (no wrap to 0).
        meta.versions = match t.checked_add(1) {
            Some(above) => meta.versions.split_off(&above),
            None => BTreeMap::new(),
        };
        while meta.versions.len() > self.cfg.keep_versions {
            meta.versions.pop_first();
        }
        for n in stale {
            self.send(
                &n,
                Msg::DeleteUpTo {
                    job: 0,
                    name: q.name.clone(),
                    upto: t,
                },
            );
        }
        self.meta.insert(q.name.clone(), meta);
        for req in self.waiting.remove(&q.name).unwrap_or_default() {
            self.serve(&q.name, req);
        }
    }

    pub(super) fn high(&self, name: &SdfsName) -> Version {
        let m = self.meta.get(name);
        let committed = m
            .and_then(|m| m.versions.keys().next_back().copied())
            .unwrap_or(0);
        let granted = self
            .granted
            .get(name)
            .and_then(|g| g.keys().next_back().copied())
            .unwrap_or(0);
        let (t, seen) = m.map(|m| (m.tombstone, m.seen)).unwrap_or((0, 0));
        let dropped = self
            .dropped
            .get(name)
            .and_then(|d| d.iter().next_back().copied())
            .unwrap_or(0);
        committed.max(granted).max(t).max(seen).max(dropped)
    }

    pub(super) fn serve(&mut self, name: &SdfsName, req: PrimaryReq) {
        match req {
            PrimaryReq::Grant { from, op } => {
                // Version numbers are never reused: at u64::MAX the name takes no more
                // writes (an error, not a wrap to 0 that would shadow every version).
                let Some(version) = self.high(name).checked_add(1) else {
                    self.send(
                        &from,
                        Msg::Refused {
                            op,
                            error: RemoteError::Store(format!(
                                "{name}: no version number is left above {}",
                                u64::MAX
                            )),
                        },
                    );
                    return;
                };
                self.granted
                    .entry(name.clone())
                    .or_default()
                    .insert(version, from.clone());
                self.send(
                    &from,
                    Msg::PutGrant {
                        op,
                        name: name.clone(),
                        version,
                    },
                );
            }
            PrimaryReq::Claim { from, op, version } => {
                let taken_by_other = self
                    .granted
                    .get(name)
                    .and_then(|g| g.get(&version))
                    .is_some_and(|w| *w != from);
                // A version found on the replicas is this claimant's own upload: a
                // number is granted once, and only to it (issue 13's soak: refusing it
                // made the writer start over under a new number, and the copies of the
                // old one surfaced as a version nobody acknowledged). Its commit then
                // simply records the holders.
                let meta = self.meta.get(name);
                let dead =
                    meta.is_some_and(|m| version <= m.tombstone) || self.is_dropped(name, version);
                if taken_by_other || dead {
                    self.send(
                        &from,
                        Msg::Refused {
                            op,
                            error: RemoteError::Conflict,
                        },
                    );
                } else {
                    self.granted
                        .entry(name.clone())
                        .or_default()
                        .insert(version, from);
                }
            }
            PrimaryReq::Commit {
                from,
                op,
                version,
                holders,
            } => {
                let keep = self.cfg.keep_versions;
                if self.is_dropped(name, version) {
                    self.send(
                        &from,
                        Msg::Refused {
                            op,
                            error: RemoteError::Conflict,
                        },
                    );
                    return;
                }
                let Some(m) = self.meta.get_mut(name) else {
                    return;
                };
                if version <= m.tombstone {
                    let tombstone = m.tombstone;
                    self.send(
                        &from,
                        Msg::Refused {
                            op,
                            error: RemoteError::Deleted { tombstone },
                        },
                    );
                    return;
                }
                let hs = m.versions.entry(version).or_default();
                hs.extend(holders);
                if hs.is_empty() {
                    // A commit relayed to a new primary carries no holders, and the query
                    // found none: the data is not durable anywhere we can see.
                    m.versions.remove(&version);
                    self.send(
                        &from,
                        Msg::Refused {
                            op,
                            error: RemoteError::NotFound,
                        },
                    );
                    return;
                }
                m.seen = m.seen.max(version);
                while m.versions.len() > keep {
                    m.versions.pop_first();
                }
                if let Some(g) = self.granted.get_mut(name) {
                    g.remove(&version);
                }
                self.send(
                    &from,
                    Msg::PutAck {
                        op,
                        name: name.clone(),
                        version,
                    },
                );
            }
            PrimaryReq::Abort { from, version } => {
                // Only the writer a version was granted to can give it up.
                let granted = self.granted.get_mut(name).is_some_and(|g| {
                    g.get(&version) == Some(&from) && g.remove(&version).is_some()
                });
                // An abort of a version already dropped comes from a writer that went
                // on uploading it after the drop (it was paused): its copies are told
                // to go again.
                if granted || self.is_dropped(name, version) {
                    self.drop_version(name, version);
                }
            }
            PrimaryReq::MetaGet { from, op } => {
                let versions = self.version_infos(name);
                self.send(
                    &from,
                    Msg::MetaInfo {
                        op,
                        name: name.clone(),
                        versions,
                    },
                );
            }
            PrimaryReq::Delete { from, op } => self.serve_delete(name, from, op),
            PrimaryReq::RepairCheck => self.plan_repair(name),
        }
    }

    pub(super) fn is_dropped(&self, name: &SdfsName, version: Version) -> bool {
        self.dropped.get(name).is_some_and(|d| d.contains(&version))
    }

    pub(super) fn version_infos(&self, name: &SdfsName) -> Vec<VersionInfo> {
        self.meta
            .get(name)
            .map(|m| {
                m.versions
                    .iter()
                    .rev()
                    .map(|(v, hs)| VersionInfo {
                        version: *v,
                        holders: hs
                            .iter()
                            .filter(|h| self.ring.contains(h))
                            .cloned()
                            .collect(),
                    })
                    .filter(|vi| !vi.holders.is_empty() && !self.is_dropped(name, vi.version))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Discards a version whose writer failed before it was acknowledged.
    pub(super) fn drop_version(&mut self, name: &SdfsName, version: Version) {
        self.dropped
            .entry(name.clone())
            .or_default()
            .insert(version);
        if let Some(m) = self.meta.get_mut(name) {
            m.versions.remove(&version);
        }
        self.log(Event::VersionDropped {
            name: name.clone(),
            version,
        });
        for n in self.placement(name) {
            self.send(
                &n,
                Msg::DropVersion {
                    name: name.clone(),
                    version,
                },
            );
        }
    }

    pub(super) fn serve_delete(&mut self, name: &SdfsName, from: NodeAddr, op: OpId) {
        // A repeat of a delete still waiting for confirmations is answered by it; a
        // repeat of one already done gets the same answer again.
        if self.deletes.values().any(|d| d.from == from && d.op == op) {
            return;
        }
        if let Some((n, tombstone, _)) = self.deleted.get(&(from.clone(), op)) {
            if n == name {
                let tombstone = *tombstone;
                let name = name.clone();
                self.send(
                    &from,
                    Msg::Deleted {
                        op,
                        name,
                        tombstone,
                    },
                );
                return;
            }
        }
        let t = self.high(name);
        let Some(m) = self.meta.get_mut(name) else {
            return;
        };
        if m.versions.is_empty() {
            // A deleted name says so: the client of a delete whose answer was lost (its
            // primary died after deleting) takes that as its own delete done.
            let error = match m.tombstone {
                0 => RemoteError::NoSuchFile,
                tombstone => RemoteError::Deleted { tombstone },
            };
            self.send(&from, Msg::Refused { op, error });
            return;
        }
        let mut targets: BTreeSet<NodeAddr> = m.versions.values().flatten().cloned().collect();
        m.versions.clear();
        m.tombstone = t;
        m.seen = m.seen.max(t);
        self.granted.remove(name);
        targets.extend(self.placement(name));
        targets.retain(|n| self.ring.contains(n));
        let job = self.id();
        for n in &targets {
            self.send(
                n,
                Msg::DeleteUpTo {
                    job,
                    name: name.clone(),
                    upto: t,
                },
            );
        }
        self.deletes.insert(
            job,
            DeleteJob {
                from,
                op,
                name: name.clone(),
                tombstone: t,
                waiting: targets,
                asked_at: self.now,
            },
        );
        self.maybe_finish_delete(job);
    }

    /// Tells the nodes that have not confirmed a delete again (`DeleteUpTo` is
    /// idempotent): a lost confirmation must not leave the delete waiting for ever.
    pub(super) fn resend_stale_deletes(&mut self) {
        let now = self.now;
        let timeout = self.cfg.request_timeout_ms;
        let mut again = Vec::new();
        for (job, d) in self.deletes.iter_mut() {
            if !d.waiting.is_empty() && now.saturating_sub(d.asked_at) >= timeout {
                d.asked_at = now;
                for n in &d.waiting {
                    again.push((n.clone(), *job, d.name.clone(), d.tombstone));
                }
            }
        }
        for (n, job, name, upto) in again {
            self.send(&n, Msg::DeleteUpTo { job, name, upto });
        }
    }

    pub(super) fn maybe_finish_delete(&mut self, job: JobId) {
        if !self.deletes.get(&job).is_some_and(|d| d.waiting.is_empty()) {
            return;
        }
        if let Some(d) = self.deletes.remove(&job) {
            self.deleted.insert(
                (d.from.clone(), d.op),
                (d.name.clone(), d.tombstone, self.now),
            );
            self.send(
                &d.from,
                Msg::Deleted {
                    op: d.op,
                    name: d.name,
                    tombstone: d.tombstone,
                },
            );
        }
    }
}

fn merge_reply(
    q: &mut Query,
    from: &NodeAddr,
    versions: &[Version],
    tombstone: Version,
    inflight: &[Version],
) {
    for v in versions {
        q.acc.versions.entry(*v).or_default().insert(from.clone());
        q.acc.seen = q.acc.seen.max(*v);
    }
    for v in inflight {
        q.acc.seen = q.acc.seen.max(*v);
    }
    q.acc.tombstone = q.acc.tombstone.max(tombstone);
    q.acc.seen = q.acc.seen.max(tombstone);
    q.node_tombstones.insert(from.clone(), tombstone);
}
