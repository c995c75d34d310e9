//! Coordinator core: accepts jobs, cuts them into batches, assigns batches to workers,
//! commits results, replicates every state change to a hot standby before
//! acknowledging it, and takes over (or rebuilds from SDFS) when the coordinator dies.
//!
//! Every node runs one `Coordinator`; its role says what it does:
//! - `Primary`: the coordinator of the current term.
//! - `Standby`: holds a replica of [`CoordState`], applies [`Record`]s in order, acks them.
//! - `Recovering`: chosen coordinator after coordinator and standby died together;
//!   waits for the shell to read manifests and results from SDFS.
//! - `Member`: everyone else (they still run the worker core).
//!
//! The shell feeds `now`, membership changes, messages, timers and the results of
//! SDFS work in, and executes the returned [`Effect`]s; the rules are in
//! docs/ARCHITECTURE-jobs.md.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::error::JobError;
use super::msg::{
    BatchDone, Commit, Msg, Record, RefuseReason, RunBatch, StatusKind, StatusReport,
};
use super::schedule::{pick_job, target_shares, Candidate, Fairness};
use super::state::{CoordState, ResultFound};
use super::stats::{self, Assignment, JobShare};
use super::types::{BatchId, JobId, JobManifest, JobsConfig, QueryId, Reign, Term};
use crate::types::{Millis, NodeAddr};

/// A timer the coordinator asked for; hand it back through `on_timer` when due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The batch should be done by now; if it is not, its worker is slow and the batch
    /// is re-issued elsewhere. Stale (ignored) when the batch already reported.
    BatchDeadline {
        /// The dispatch it watches.
        batch: BatchId,
    },
}

/// What the shell must do after driving the coordinator.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send a message (to itself too: a node is also a worker).
    Send {
        /// Recipient.
        to: NodeAddr,
        /// Message.
        msg: Msg,
    },
    /// Call `on_timer(timer)` at `at`.
    SetTimer {
        /// When (caller's clock).
        at: Millis,
        /// Which.
        timer: Timer,
    },
    /// List the SDFS names under `input`, then call `submit` with them.
    ListInputs {
        /// Who submitted.
        client: NodeAddr,
        /// The client's id for the submission.
        request_id: u64,
        /// Model asked for.
        model: String,
        /// Prefix to list.
        input: String,
    },
    /// Write the manifest to SDFS under `manifest_name(id)`, then call
    /// `on_manifest_written`. The client is acknowledged only after that.
    WriteManifest {
        /// The manifest.
        manifest: JobManifest,
    },
    /// Read every manifest under `jobs/` and list every name under `results/`, then call
    /// `on_sdfs_loaded` with this term.
    LoadJobsFromSdfs {
        /// The term the rebuild is for.
        term: Term,
    },
    /// This node's role changed (for logs and the console).
    RoleChanged {
        /// The new role.
        role: RoleKind,
        /// The reign it is in.
        reign: Reign,
    },
}

/// The role of a node's coordinator core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoleKind {
    /// Not coordinating, not standing by.
    Member,
    /// Hot standby of the coordinator.
    Standby,
    /// Coordinator-elect, rebuilding from SDFS.
    Recovering,
    /// The coordinator.
    Primary,
}

/// Counters for the console and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordCounters {
    /// Batches re-issued because their worker was slow.
    pub reissued: u64,
    /// Queries put back in the queue (worker lost, failed, refused).
    pub requeued: u64,
    /// Reported results dropped because the query already had one.
    pub duplicate_results: u64,
    /// Commands of an older term this node refused (`Fenced` sent).
    pub fenced_refusals: u64,
    /// Times this node stopped being coordinator because a newer term exists.
    pub stepped_down: u64,
}

#[derive(Debug)]
enum Role {
    Member,
    Standby { synced: bool, applied: u64 },
    Recovering,
    Primary(Box<Primary>),
}

#[derive(Debug)]
struct InFlight {
    job: JobId,
    model: String,
    queries: Vec<QueryId>,
    worker: NodeAddr,
    /// The first dispatch of these queries; a re-issue shares it.
    group: BatchId,
}

#[derive(Debug, Default)]
struct Slot {
    busy: Option<BatchId>,
    last_job: Option<JobId>,
    /// Refused a batch as busy: not used until it reports something.
    blocked: bool,
}

#[derive(Debug)]
struct PendingAck {
    seq: u64,
    needs_manifest: Option<JobId>,
    to: NodeAddr,
    msg: Msg,
}

/// Volatile state of the coordinator: rebuilt from [`CoordState`] at every takeover.
#[derive(Debug, Default)]
struct Primary {
    /// Position of the last record in this term's log.
    seq: u64,
    /// Highest position the current standby acknowledged (`None` until its first ack).
    acked: Option<u64>,
    queues: BTreeMap<JobId, VecDeque<QueryId>>,
    in_flight: BTreeMap<BatchId, InFlight>,
    workers: BTreeMap<NodeAddr, Slot>,
    reissue: VecDeque<BatchId>,
    attempts: BTreeMap<(JobId, QueryId), u32>,
    pending: Vec<PendingAck>,
    fairness: Fairness,
    next_batch: u64,
}

/// Borrowed view of everything but the role, so `Primary` methods can change the
/// replicated state while the role is borrowed.
struct Cx<'a> {
    now: Millis,
    cfg: &'a JobsConfig,
    reign: &'a mut Reign,
    state: &'a mut CoordState,
    counters: &'a mut CoordCounters,
    fx: &'a mut Vec<Effect>,
}

/// The coordinator core of one node.
#[derive(Debug)]
pub struct Coordinator {
    me: NodeAddr,
    cfg: JobsConfig,
    reign: Option<Reign>,
    role: Role,
    members: BTreeSet<NodeAddr>,
    state: CoordState,
    counters: CoordCounters,
}

/// The next live node after `after` in address order (wrapping), other than `after`.
/// Every node computes the same answer from the same membership view, which is what
/// makes standby choice and double-failure succession deterministic.
pub fn successor(live: &BTreeSet<NodeAddr>, after: &NodeAddr) -> Option<NodeAddr> {
    live.range::<NodeAddr, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
        .chain(live.iter())
        .find(|n| *n != after)
        .cloned()
}

impl Coordinator {
    /// A node that knows of no reign yet; `cfg` should come from `JobsConfig::validate`.
    pub fn new(me: NodeAddr, cfg: JobsConfig) -> Self {
        Coordinator {
            me,
            cfg,
            reign: None,
            role: Role::Member,
            members: BTreeSet::new(),
            state: CoordState::new(),
            counters: CoordCounters::default(),
        }
    }

    /// Makes this node the first coordinator of this cluster's life. Called once, by the
    /// first live node of the ring; does nothing if a reign is known. `used_epoch` is the
    /// highest epoch in the job ids SDFS already holds (0 if none): a cluster restarted on
    /// its old SDFS data starts above it, so a new job can never take the id (and so the
    /// manifest and result names) of an old one.
    pub fn bootstrap(&mut self, now: Millis, live: &[NodeAddr], used_epoch: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        self.members = live.iter().cloned().collect();
        self.members.insert(self.me.clone());
        if self.reign.is_none() {
            let term = Term {
                epoch: used_epoch + 1,
                coordinator: self.me.clone(),
            };
            self.begin_reign(now, term, CoordState::new(), &mut fx);
        }
        fx
    }

    /// This node's role.
    pub fn role(&self) -> RoleKind {
        match self.role {
            Role::Member => RoleKind::Member,
            Role::Standby { .. } => RoleKind::Standby,
            Role::Recovering => RoleKind::Recovering,
            Role::Primary(_) => RoleKind::Primary,
        }
    }

    /// The newest reign this node knows.
    pub fn reign(&self) -> Option<&Reign> {
        self.reign.as_ref()
    }

    /// The replicated state (authoritative on the primary, a replica on the standby).
    pub fn state(&self) -> &CoordState {
        &self.state
    }

    /// The configuration.
    pub fn config(&self) -> &JobsConfig {
        &self.cfg
    }

    /// Counters.
    pub fn counters(&self) -> CoordCounters {
        self.counters
    }

    /// Queries of `job` waiting for a worker (0 when not coordinating).
    pub fn pending_queries(&self, job: JobId) -> usize {
        let (Role::Primary(p), Some(j)) = (&self.role, self.state.jobs.get(&job)) else {
            return 0;
        };
        p.queues
            .get(&job)
            .map_or(0, |q| q.iter().filter(|q| !j.is_done(q)).count())
    }

    /// C5 rows: every live worker and the batch it runs (empty when not coordinating).
    pub fn assignment(&self) -> Vec<Assignment> {
        let Role::Primary(p) = &self.role else {
            return Vec::new();
        };
        p.workers
            .iter()
            .map(|(node, slot)| {
                let b = slot.busy.and_then(|b| p.in_flight.get(&b).map(|e| (b, e)));
                Assignment {
                    node: node.clone(),
                    job: b.map(|(_, e)| e.job),
                    model: b.map(|(_, e)| e.model.clone()),
                    batch: b.map(|(id, _)| id),
                    queries: b.map_or(0, |(_, e)| e.queries.len() as u32),
                }
            })
            .collect()
    }

    /// Per running job: measured per-query time and the worker-time share that gives
    /// equal query rates (what the scheduler converges to).
    pub fn shares(&self) -> Vec<JobShare> {
        let running: Vec<(JobId, String, f64)> = self
            .state
            .jobs
            .values()
            .filter(|j| !j.is_complete())
            .map(|j| {
                let t = self.state.expected_query_ms(&j.manifest.model, &self.cfg);
                (j.manifest.id, j.manifest.model.clone(), t)
            })
            .collect();
        let per: Vec<(JobId, f64)> = running.iter().map(|(j, _, t)| (*j, *t)).collect();
        let assignment = self.assignment();
        target_shares(&per)
            .into_iter()
            .zip(running)
            .map(|((job, share), (_, model, t))| JobShare {
                job,
                model,
                per_query_ms: t,
                target_share: share,
                workers_now: assignment.iter().filter(|a| a.job == Some(job)).count() as u32,
            })
            .collect()
    }

    /// The answer to a status request (C1, C2, C5) from this node's state.
    pub fn status(&self, now: Millis, kind: StatusKind) -> StatusReport {
        match kind {
            StatusKind::Rates => {
                StatusReport::Rates(stats::c1(&self.state, now, self.cfg.rate_window_ms))
            }
            StatusKind::Times => StatusReport::Times(stats::c2(&self.state)),
            StatusKind::Assignment => StatusReport::Assignment {
                nodes: self.assignment(),
                shares: self.shares(),
            },
        }
    }

    fn coordinator_hint(&self) -> Option<NodeAddr> {
        self.reign.as_ref().map(|r| r.term.coordinator.clone())
    }

    fn refuse(&self, to: &NodeAddr, request_id: u64, error: JobError, fx: &mut Vec<Effect>) {
        fx.push(Effect::Send {
            to: to.clone(),
            msg: Msg::Refused { request_id, error },
        });
    }

    fn not_coordinator(&self) -> JobError {
        JobError::NotCoordinator {
            coordinator: self.coordinator_hint(),
        }
    }

    /// Runs `f` on the primary's volatile state; `None` when not primary.
    fn with_primary<R>(
        &mut self,
        now: Millis,
        fx: &mut Vec<Effect>,
        f: impl FnOnce(&mut Primary, &mut Cx<'_>) -> R,
    ) -> Option<R> {
        let (Role::Primary(p), Some(reign)) = (&mut self.role, self.reign.as_mut()) else {
            return None;
        };
        let mut cx = Cx {
            now,
            cfg: &self.cfg,
            reign,
            state: &mut self.state,
            counters: &mut self.counters,
            fx,
        };
        Some(f(p, &mut cx))
    }

    fn broadcast_reign(&self, fx: &mut Vec<Effect>) {
        if let Some(r) = &self.reign {
            for m in &self.members {
                fx.push(Effect::Send {
                    to: m.clone(),
                    msg: Msg::Reign(r.clone()),
                });
            }
        }
    }

    fn role_changed(&self, fx: &mut Vec<Effect>) {
        if let Some(r) = &self.reign {
            fx.push(Effect::RoleChanged {
                role: self.role(),
                reign: r.clone(),
            });
        }
    }

    /// Starts coordinating `term` with `state`: every query without an outcome is
    /// queued (whatever was in flight under the previous coordinator is re-run; results
    /// are keyed by query, so a re-run counts once), a standby is chosen and sent a
    /// snapshot, every member learns the reign.
    fn begin_reign(&mut self, now: Millis, term: Term, state: CoordState, fx: &mut Vec<Effect>) {
        let view = self
            .reign
            .as_ref()
            .filter(|r| r.term == term)
            .map_or(0, |r| r.view + 1);
        let standby = successor(&self.members, &self.me);
        self.state = state;
        self.reign = Some(Reign {
            term,
            standby: standby.clone(),
            view,
        });
        let mut p = Primary::default();
        for m in &self.members {
            p.workers.insert(m.clone(), Slot::default());
        }
        for j in self.state.jobs.values().filter(|j| !j.is_complete()) {
            let q: VecDeque<QueryId> = j
                .manifest
                .queries
                .iter()
                .filter(|q| !j.is_done(q))
                .cloned()
                .collect();
            p.queues.insert(j.manifest.id, q);
        }
        self.role = Role::Primary(Box::new(p));
        self.role_changed(fx);
        self.broadcast_reign(fx);
        if let (Some(s), Some(r)) = (standby, &self.reign) {
            fx.push(Effect::Send {
                to: s,
                msg: Msg::Snapshot {
                    reign: r.clone(),
                    seq: 0,
                    state: Box::new(self.state.clone()),
                },
            });
        }
        for j in self.state.jobs.values().filter(|j| !j.manifest_stored) {
            fx.push(Effect::WriteManifest {
                manifest: j.manifest.clone(),
            });
        }
        self.with_primary(now, fx, |p, cx| {
            p.sync_fairness(cx);
            p.fill(cx);
            p.release(cx);
        });
    }

    /// Coordinator and standby are both gone: become coordinator-elect and ask the
    /// shell for the job table in SDFS. The reign is announced at once so workers fence
    /// the old coordinator while the table loads.
    fn recover_from_sdfs(&mut self, fx: &mut Vec<Effect>) {
        let epoch = self.reign.as_ref().map_or(0, |r| r.term.epoch) + 1;
        let term = Term {
            epoch,
            coordinator: self.me.clone(),
        };
        self.reign = Some(Reign {
            term: term.clone(),
            standby: None,
            view: 0,
        });
        self.role = Role::Recovering;
        self.role_changed(fx);
        self.broadcast_reign(fx);
        fx.push(Effect::LoadJobsFromSdfs { term });
    }

    /// The shell read SDFS for a `LoadJobsFromSdfs { term }`: rebuild and coordinate.
    pub fn on_sdfs_loaded(
        &mut self,
        now: Millis,
        term: Term,
        manifests: Vec<JobManifest>,
        results: Vec<ResultFound>,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        let current = self.reign.as_ref().map(|r| &r.term) == Some(&term);
        if matches!(self.role, Role::Recovering) && current {
            let state = CoordState::rebuild_from_sdfs(&self.cfg, manifests, &results);
            self.begin_reign(now, term, state, &mut fx);
        }
        fx
    }

    /// The membership layer's current list of live members (this node included).
    pub fn on_members(&mut self, now: Millis, live: &[NodeAddr]) -> Vec<Effect> {
        let mut fx = Vec::new();
        let live: BTreeSet<NodeAddr> = live.iter().cloned().collect();
        let gone: Vec<NodeAddr> = self.members.difference(&live).cloned().collect();
        let joined: Vec<NodeAddr> = live.difference(&self.members).cloned().collect();
        self.members = live;
        match &self.role {
            Role::Primary(_) => {
                let standby_gone = self
                    .reign
                    .as_ref()
                    .and_then(|r| r.standby.as_ref())
                    .is_none_or(|s| gone.contains(s));
                if let Some(r) = &self.reign {
                    for j in &joined {
                        fx.push(Effect::Send {
                            to: j.clone(),
                            msg: Msg::Reign(r.clone()),
                        });
                    }
                }
                self.with_primary(now, &mut fx, |p, cx| {
                    for g in &gone {
                        p.worker_lost(cx, g);
                    }
                    for j in &joined {
                        p.workers.entry(j.clone()).or_default();
                    }
                });
                if standby_gone {
                    self.choose_standby(now, &mut fx);
                }
                self.with_primary(now, &mut fx, |p, cx| {
                    p.sync_fairness(cx);
                    p.fill(cx);
                    p.release(cx);
                });
            }
            Role::Standby { synced, .. } => {
                let synced = *synced;
                let coordinator_gone = self
                    .reign
                    .as_ref()
                    .is_some_and(|r| !self.members.contains(&r.term.coordinator));
                if coordinator_gone {
                    if synced {
                        let epoch = self.reign.as_ref().map_or(0, |r| r.term.epoch) + 1;
                        let term = Term {
                            epoch,
                            coordinator: self.me.clone(),
                        };
                        let state = self.state.clone();
                        self.begin_reign(now, term, state, &mut fx);
                    } else {
                        self.recover_from_sdfs(&mut fx);
                    }
                }
            }
            Role::Member => {
                let orphan = self.reign.as_ref().and_then(|r| {
                    let c_dead = !self.members.contains(&r.term.coordinator);
                    let s_dead = r.standby.as_ref().is_none_or(|s| !self.members.contains(s));
                    (c_dead && s_dead).then(|| {
                        r.standby
                            .clone()
                            .unwrap_or_else(|| r.term.coordinator.clone())
                    })
                });
                if let Some(after) = orphan {
                    if successor(&self.members, &after).as_ref() == Some(&self.me) {
                        self.recover_from_sdfs(&mut fx);
                    }
                }
            }
            Role::Recovering => {}
        }
        fx
    }

    /// Picks the next live node after this one as standby (if it is not already) and
    /// sends it a snapshot; acknowledgements wait until it has caught up.
    fn choose_standby(&mut self, now: Millis, fx: &mut Vec<Effect>) {
        let new = successor(&self.members, &self.me);
        let Some(r) = self.reign.as_mut() else {
            return;
        };
        // `new` is live, so equality also means the current standby is alive.
        if r.standby == new {
            return;
        }
        r.standby = new.clone();
        r.view += 1;
        let reign = r.clone();
        let seq = self.with_primary(now, fx, |p, _| {
            p.acked = None;
            p.seq
        });
        self.broadcast_reign(fx);
        if let (Some(s), Some(seq)) = (new, seq) {
            fx.push(Effect::Send {
                to: s,
                msg: Msg::Snapshot {
                    reign,
                    seq,
                    state: Box::new(self.state.clone()),
                },
            });
        }
        self.with_primary(now, fx, |p, cx| p.release(cx));
    }

    /// Adopts a newer reign; a coordinator (or coordinator-elect) of an older term
    /// steps down. Returns whether it was newer.
    fn observe_reign(&mut self, r: &Reign, fx: &mut Vec<Effect>) -> bool {
        if self.reign.as_ref().is_some_and(|k| !r.supersedes(k)) {
            return false;
        }
        let term_changed = self.reign.as_ref().is_none_or(|k| k.term != r.term);
        self.reign = Some(r.clone());
        let me_standby = r.standby.as_ref() == Some(&self.me);
        let before = self.role();
        match &self.role {
            Role::Primary(_) | Role::Recovering
                if r.term.coordinator != self.me || term_changed =>
            {
                self.counters.stepped_down += 1;
                self.role = if me_standby {
                    Role::Standby {
                        synced: false,
                        applied: 0,
                    }
                } else {
                    Role::Member
                };
            }
            Role::Standby { .. } if !me_standby => self.role = Role::Member,
            Role::Standby { .. } if term_changed => {
                self.role = Role::Standby {
                    synced: false,
                    applied: 0,
                }
            }
            Role::Member if me_standby => {
                self.role = Role::Standby {
                    synced: false,
                    applied: 0,
                }
            }
            _ => {}
        }
        if self.role() != before {
            self.role_changed(fx);
        }
        true
    }

    /// Learns that `term` exists (from a worker's refusal): step down if it is newer.
    /// The full reign arrives later in a `Reign` message.
    fn observe_term(&mut self, term: &Term, fx: &mut Vec<Effect>) {
        let mine = self.reign.as_ref().map(|r| &r.term);
        if mine.is_some_and(|m| term > m)
            && matches!(self.role, Role::Primary(_) | Role::Recovering)
        {
            self.counters.stepped_down += 1;
            self.role = Role::Member;
            self.role_changed(fx);
        }
    }

    fn fence(&mut self, to: &NodeAddr, fx: &mut Vec<Effect>) {
        if let Some(r) = &self.reign {
            self.counters.fenced_refusals += 1;
            fx.push(Effect::Send {
                to: to.clone(),
                msg: Msg::Fenced { reign: r.clone() },
            });
        }
    }

    /// The shell listed the inputs of a `ListInputs`: accept or refuse the job.
    pub fn submit(
        &mut self,
        now: Millis,
        client: NodeAddr,
        request_id: u64,
        model: &str,
        input: &str,
        queries: Vec<QueryId>,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        if !matches!(self.role, Role::Primary(_)) {
            self.refuse(&client, request_id, self.not_coordinator(), &mut fx);
            return fx;
        }
        if let Some(job) = self.state.job_for_request(&client, request_id) {
            self.reack_job(now, job, &mut fx);
            return fx;
        }
        if self.cfg.model(model).is_none() {
            let error = JobError::UnknownModel {
                model: model.to_string(),
                known: self.cfg.model_names(),
            };
            self.refuse(&client, request_id, error, &mut fx);
            return fx;
        }
        let mut queries: Vec<QueryId> = queries.into_iter().filter(|q| !q.is_empty()).collect();
        queries.sort();
        queries.dedup();
        if queries.is_empty() {
            let error = JobError::NoInputs {
                input: input.to_string(),
            };
            self.refuse(&client, request_id, error, &mut fx);
            return fx;
        }
        let epoch = self.reign.as_ref().map_or(0, |r| r.term.epoch);
        let manifest = JobManifest {
            id: self.state.next_job_id(epoch),
            model: model.to_string(),
            input: input.to_string(),
            queries,
            client: client.clone(),
            request_id,
            submitted_at: now,
        };
        fx.push(Effect::WriteManifest {
            manifest: manifest.clone(),
        });
        self.with_primary(now, &mut fx, |p, cx| {
            let id = manifest.id;
            let n = manifest.queries.len() as u64;
            p.queues
                .insert(id, manifest.queries.iter().cloned().collect());
            let seq = p.log(cx, Record::JobAccepted { manifest });
            p.pending.push(PendingAck {
                seq,
                needs_manifest: Some(id),
                to: client,
                msg: Msg::JobAccepted {
                    request_id,
                    job: id,
                    queries: n,
                },
            });
            p.sync_fairness(cx);
            p.fill(cx);
            p.release(cx);
        });
        fx
    }

    fn reack_job(&mut self, now: Millis, job: JobId, fx: &mut Vec<Effect>) {
        let Some(j) = self.state.jobs.get(&job) else {
            return;
        };
        let (client, request_id, n) = (
            j.manifest.client.clone(),
            j.manifest.request_id,
            j.manifest.queries.len(),
        );
        self.with_primary(now, fx, |p, cx| {
            p.pending.push(PendingAck {
                seq: p.seq,
                needs_manifest: Some(job),
                to: client,
                msg: Msg::JobAccepted {
                    request_id,
                    job,
                    queries: n as u64,
                },
            });
            p.release(cx);
        });
    }

    /// The manifest of a `WriteManifest` is in SDFS.
    pub fn on_manifest_written(&mut self, now: Millis, job: JobId) -> Vec<Effect> {
        let mut fx = Vec::new();
        self.with_primary(now, &mut fx, |p, cx| {
            if cx.state.jobs.get(&job).is_some_and(|j| !j.manifest_stored) {
                p.log(cx, Record::ManifestStored { job });
            }
            p.release(cx);
        });
        fx
    }

    /// A timer set by this core fired.
    pub fn on_timer(&mut self, now: Millis, timer: Timer) -> Vec<Effect> {
        let mut fx = Vec::new();
        match timer {
            Timer::BatchDeadline { batch } => {
                self.with_primary(now, &mut fx, |p, cx| {
                    if p.needs_reissue(cx, batch) {
                        p.reissue.push_back(batch);
                        p.fill(cx);
                    }
                });
            }
        }
        fx
    }

    /// A message for the coordinator core (see `Msg::is_for_coordinator`).
    pub fn on_message(&mut self, now: Millis, from: &NodeAddr, msg: Msg) -> Vec<Effect> {
        let mut fx = Vec::new();
        match msg {
            Msg::SubmitJob {
                request_id,
                model,
                input,
            } => {
                if !matches!(self.role, Role::Primary(_)) {
                    self.refuse(from, request_id, self.not_coordinator(), &mut fx);
                } else if let Some(job) = self.state.job_for_request(from, request_id) {
                    self.reack_job(now, job, &mut fx);
                } else if self.cfg.model(&model).is_none() {
                    let error = JobError::UnknownModel {
                        model,
                        known: self.cfg.model_names(),
                    };
                    self.refuse(from, request_id, error, &mut fx);
                } else {
                    fx.push(Effect::ListInputs {
                        client: from.clone(),
                        request_id,
                        model,
                        input,
                    });
                }
            }
            Msg::SetBatchSize {
                request_id,
                model,
                size,
            } => self.on_set_batch_size(now, from, request_id, model, size, &mut fx),
            Msg::StatusRequest { request_id, kind } => {
                if matches!(self.role, Role::Primary(_)) {
                    fx.push(Effect::Send {
                        to: from.clone(),
                        msg: Msg::StatusReply {
                            request_id,
                            report: self.status(now, kind),
                        },
                    });
                } else {
                    self.refuse(from, request_id, self.not_coordinator(), &mut fx);
                }
            }
            Msg::BatchDone(done) => {
                self.with_primary(now, &mut fx, |p, cx| p.on_batch_done(cx, from, done));
            }
            Msg::WorkerRefused {
                batch,
                reason,
                term,
            } => {
                self.observe_term(&term, &mut fx);
                if reason == RefuseReason::Busy {
                    self.with_primary(now, &mut fx, |p, cx| p.on_busy(cx, from, batch));
                }
            }
            Msg::Replicate { term, seq, record } => {
                self.on_replicate(from, term, seq, record, &mut fx)
            }
            Msg::Snapshot { reign, seq, state } => {
                self.on_snapshot(from, reign, seq, *state, &mut fx)
            }
            Msg::ReplicateAck { term, seq } => {
                let standby = self.reign.as_ref().and_then(|r| r.standby.clone());
                let mine = self.reign.as_ref().map(|r| r.term.clone());
                if standby.as_ref() == Some(from) && mine.as_ref() == Some(&term) {
                    self.with_primary(now, &mut fx, |p, cx| {
                        p.acked = Some(p.acked.map_or(seq, |a| a.max(seq)));
                        p.release(cx);
                    });
                }
            }
            Msg::SnapshotRequest { term } => {
                let r = self.reign.clone();
                let is_mine = r
                    .as_ref()
                    .is_some_and(|r| r.term == term && r.standby.as_ref() == Some(from));
                if let (true, Some(reign), Role::Primary(p)) = (is_mine, r, &self.role) {
                    fx.push(Effect::Send {
                        to: from.clone(),
                        msg: Msg::Snapshot {
                            reign,
                            seq: p.seq,
                            state: Box::new(self.state.clone()),
                        },
                    });
                }
            }
            Msg::Fenced { reign } => {
                self.observe_reign(&reign, &mut fx);
            }
            Msg::Reign(r) => {
                let older = self.reign.as_ref().is_some_and(|k| r.term < k.term);
                if older {
                    // A deposed coordinator announcing itself: tell it.
                    self.fence(from, &mut fx);
                } else {
                    self.observe_reign(&r, &mut fx);
                }
            }
            _ => {}
        }
        fx
    }

    fn on_set_batch_size(
        &mut self,
        now: Millis,
        from: &NodeAddr,
        request_id: u64,
        model: String,
        size: u32,
        fx: &mut Vec<Effect>,
    ) {
        if !matches!(self.role, Role::Primary(_)) {
            self.refuse(from, request_id, self.not_coordinator(), fx);
            return;
        }
        if self.cfg.model(&model).is_none() {
            let error = JobError::UnknownModel {
                model,
                known: self.cfg.model_names(),
            };
            self.refuse(from, request_id, error, fx);
            return;
        }
        let max = self.cfg.max_batch_size;
        if size == 0 || size > max {
            self.refuse(
                from,
                request_id,
                JobError::BadBatchSize { model, size, max },
                fx,
            );
            return;
        }
        self.with_primary(now, fx, |p, cx| {
            let seq = p.log(
                cx,
                Record::BatchSizeSet {
                    model: model.clone(),
                    size,
                },
            );
            p.pending.push(PendingAck {
                seq,
                needs_manifest: None,
                to: from.clone(),
                msg: Msg::BatchSizeSet {
                    request_id,
                    model,
                    size,
                },
            });
            p.release(cx);
        });
    }

    fn on_replicate(
        &mut self,
        from: &NodeAddr,
        term: Term,
        seq: u64,
        record: Record,
        fx: &mut Vec<Effect>,
    ) {
        let Some(known) = self.reign.as_ref().map(|r| r.term.clone()) else {
            fx.push(Effect::Send {
                to: from.clone(),
                msg: Msg::SnapshotRequest { term },
            });
            return;
        };
        if term < known {
            // The fencing that matters: a paused old coordinator cannot get anything
            // acknowledged, because its standby (or the new coordinator) refuses it.
            self.fence(from, fx);
            return;
        }
        let reply = match &mut self.role {
            Role::Standby {
                synced: true,
                applied,
            } if term == known => {
                if seq == *applied + 1 {
                    self.state.apply(&record, &self.cfg);
                    *applied = seq;
                }
                if seq <= *applied {
                    Msg::ReplicateAck {
                        term,
                        seq: *applied,
                    }
                } else {
                    Msg::SnapshotRequest { term }
                }
            }
            _ => Msg::SnapshotRequest { term },
        };
        fx.push(Effect::Send {
            to: from.clone(),
            msg: reply,
        });
    }

    fn on_snapshot(
        &mut self,
        from: &NodeAddr,
        reign: Reign,
        seq: u64,
        state: CoordState,
        fx: &mut Vec<Effect>,
    ) {
        if self.reign.as_ref().is_some_and(|k| reign.term < k.term) {
            self.fence(from, fx);
            return;
        }
        self.observe_reign(&reign, fx);
        let current = self.reign.as_ref().is_some_and(|k| k.term == reign.term);
        if !current
            || reign.standby.as_ref() != Some(&self.me)
            || matches!(self.role, Role::Primary(_))
        {
            return;
        }
        let before = self.role();
        self.state = state;
        self.role = Role::Standby {
            synced: true,
            applied: seq,
        };
        if before != RoleKind::Standby {
            self.role_changed(fx);
        }
        fx.push(Effect::Send {
            to: from.clone(),
            msg: Msg::ReplicateAck {
                term: reign.term,
                seq,
            },
        });
    }
}

impl Primary {
    /// Applies a record here and sends it to the standby; returns its log position.
    /// Anything acknowledged because of it waits in `pending` for the standby's ack.
    fn log(&mut self, cx: &mut Cx<'_>, record: Record) -> u64 {
        cx.state.apply(&record, cx.cfg);
        self.seq += 1;
        if let Some(s) = &cx.reign.standby {
            cx.fx.push(Effect::Send {
                to: s.clone(),
                msg: Msg::Replicate {
                    term: cx.reign.term.clone(),
                    seq: self.seq,
                    record,
                },
            });
        }
        self.seq
    }

    /// Sends every acknowledgement whose record the standby has (and whose manifest is
    /// in SDFS). With no standby at all (a one-node cluster) nothing could be waited for:
    /// acknowledgements go out at once and SDFS is the only safety net.
    fn release(&mut self, cx: &mut Cx<'_>) {
        let acked = if cx.reign.standby.is_none() {
            Some(u64::MAX)
        } else {
            self.acked
        };
        let Some(acked) = acked else {
            return;
        };
        let state = &*cx.state;
        let fx = &mut *cx.fx;
        self.pending.retain(|a| {
            let stored = a
                .needs_manifest
                .is_none_or(|j| state.jobs.get(&j).is_some_and(|j| j.manifest_stored));
            if a.seq <= acked && stored {
                fx.push(Effect::Send {
                    to: a.to.clone(),
                    msg: a.msg.clone(),
                });
                false
            } else {
                true
            }
        });
    }

    fn sync_fairness(&mut self, cx: &mut Cx<'_>) {
        let running: BTreeSet<JobId> = cx
            .state
            .jobs
            .values()
            .filter(|j| !j.is_complete())
            .map(|j| j.manifest.id)
            .collect();
        let mut in_flight: BTreeMap<JobId, u64> = BTreeMap::new();
        for (id, e) in &self.in_flight {
            if *id == e.group {
                *in_flight.entry(e.job).or_default() += e.queries.len() as u64;
            }
        }
        self.fairness.sync(cx.now, running, &in_flight);
    }

    fn group_alive(&self, group: BatchId) -> bool {
        self.in_flight.values().any(|e| e.group == group)
    }

    fn needs_reissue(&self, cx: &Cx<'_>, batch: BatchId) -> bool {
        let Some(e) = self.in_flight.get(&batch) else {
            return false;
        };
        let copies = self
            .in_flight
            .values()
            .filter(|o| o.group == e.group)
            .count();
        let open = cx
            .state
            .jobs
            .get(&e.job)
            .is_some_and(|j| e.queries.iter().any(|q| !j.is_done(q)));
        batch == e.group && copies == 1 && open && !self.reissue.contains(&batch)
    }

    /// Puts the open queries of a dispatch back at the head of its job's queue, unless
    /// another run of the same queries is still in flight.
    fn requeue(&mut self, cx: &mut Cx<'_>, e: &InFlight, only: Option<&[QueryId]>) {
        if self.group_alive(e.group) {
            return;
        }
        let Some(job) = cx.state.jobs.get(&e.job) else {
            return;
        };
        let open: Vec<QueryId> = e
            .queries
            .iter()
            .filter(|q| !job.is_done(q) && only.is_none_or(|o| o.contains(q)))
            .cloned()
            .collect();
        if open.is_empty() {
            return;
        }
        cx.counters.requeued += open.len() as u64;
        self.fairness.refund(e.job, open.len() as u64);
        let queue = self.queues.entry(e.job).or_default();
        for q in open.into_iter().rev() {
            queue.push_front(q);
        }
        self.reissue.retain(|b| *b != e.group);
    }

    fn worker_lost(&mut self, cx: &mut Cx<'_>, worker: &NodeAddr) {
        self.workers.remove(worker);
        let lost: Vec<BatchId> = self
            .in_flight
            .iter()
            .filter(|(_, e)| &e.worker == worker)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            if let Some(e) = self.in_flight.remove(&id) {
                let copy_lost_original_slow =
                    id != e.group && self.in_flight.contains_key(&e.group);
                if copy_lost_original_slow && !self.reissue.contains(&e.group) {
                    // The re-issue died but the slow original still runs: ask for
                    // another copy instead of waiting on the slow worker.
                    self.reissue.push_back(e.group);
                }
                self.requeue(cx, &e, None);
            }
        }
    }

    fn on_busy(&mut self, cx: &mut Cx<'_>, from: &NodeAddr, batch: BatchId) {
        let Some(e) = self.in_flight.remove(&batch) else {
            return;
        };
        if let Some(slot) = self.workers.get_mut(from) {
            if slot.busy == Some(batch) {
                slot.busy = None;
                slot.blocked = true;
            }
        }
        self.requeue(cx, &e, None);
        self.fill(cx);
    }

    fn on_batch_done(&mut self, cx: &mut Cx<'_>, from: &NodeAddr, done: BatchDone) {
        let entry = match self.in_flight.get(&done.batch) {
            Some(e) if &e.worker == from && e.job == done.job => self.in_flight.remove(&done.batch),
            _ => None,
        };
        if let Some(slot) = self.workers.get_mut(from) {
            if slot.busy == Some(done.batch) || entry.is_some() {
                slot.busy = None;
            }
            slot.blocked = false;
        }
        let Some(job) = cx.state.jobs.get(&done.job) else {
            // Unknown job (a stale report from before a rebuild): nothing to commit.
            self.pending.push(PendingAck {
                seq: self.seq,
                needs_manifest: None,
                to: from.clone(),
                msg: Msg::BatchAck { batch: done.batch },
            });
            self.release(cx);
            return;
        };
        let was_complete = job.is_complete();
        // A report speaks only for the queries of its batch (or, for a dispatch this
        // coordinator does not know, e.g. of an older term, for queries of its job).
        let allowed = |q: &QueryId| {
            entry
                .as_ref()
                .map_or_else(|| job.has_query(q), |e| e.queries.contains(q))
        };
        let mut ok: Vec<QueryId> = done
            .results_written
            .iter()
            .filter(|q| allowed(q) && !job.is_done(q))
            .cloned()
            .collect();
        ok.sort();
        ok.dedup();
        cx.counters.duplicate_results += (done.results_written.len() - ok.len()) as u64;
        let mut retry: Vec<QueryId> = Vec::new();
        let mut failed: Vec<QueryId> = Vec::new();
        let mut unfinished: Vec<QueryId> = done
            .failed
            .iter()
            .filter(|q| allowed(q) && !job.is_done(q) && !ok.contains(q))
            .cloned()
            .collect();
        if let Some(e) = &entry {
            // Queries the worker neither wrote nor reported as failed count as failed.
            unfinished.extend(
                e.queries
                    .iter()
                    .filter(|q| {
                        !done.results_written.contains(q)
                            && !done.failed.contains(q)
                            && !job.is_done(q)
                    })
                    .cloned(),
            );
        }
        unfinished.sort();
        unfinished.dedup();
        for q in unfinished {
            let n = self.attempts.entry((done.job, q.clone())).or_insert(0);
            *n += 1;
            if *n >= cx.cfg.max_attempts {
                failed.push(q);
            } else {
                retry.push(q);
            }
        }
        let processed = (done.results_written.len() + done.failed.len()).max(1);
        let seq = if ok.is_empty() && failed.is_empty() {
            self.seq
        } else {
            for q in ok.iter().chain(&failed) {
                self.attempts.remove(&(done.job, q.clone()));
            }
            let commit = Commit {
                job: done.job,
                ok,
                failed,
                per_query_ms: done.compute_ms as f64 / processed as f64,
                worker: from.clone(),
                at: cx.now,
            };
            self.log(cx, Record::BatchCommitted(commit))
        };
        self.pending.push(PendingAck {
            seq,
            needs_manifest: None,
            to: from.clone(),
            msg: Msg::BatchAck { batch: done.batch },
        });
        if let Some(e) = &entry {
            if !retry.is_empty() {
                self.requeue(cx, e, Some(&retry));
            }
            let finished = cx
                .state
                .jobs
                .get(&e.job)
                .is_some_and(|j| e.queries.iter().all(|q| j.is_done(q)));
            if finished {
                self.reissue.retain(|b| *b != e.group);
            }
        }
        if let Some(j) = cx.state.jobs.get(&done.job) {
            if j.is_complete() && !was_complete {
                let ok = j.ok_count();
                self.pending.push(PendingAck {
                    seq,
                    needs_manifest: None,
                    to: j.manifest.client.clone(),
                    msg: Msg::JobCompleted {
                        job: done.job,
                        ok,
                        failed: j.outcomes.len() as u64 - ok,
                    },
                });
                self.queues.remove(&done.job);
                self.sync_fairness(cx);
            }
        }
        self.fill(cx);
        self.release(cx);
    }

    fn clean_front(&mut self, cx: &Cx<'_>, job: JobId) -> bool {
        let (Some(queue), Some(j)) = (self.queues.get_mut(&job), cx.state.jobs.get(&job)) else {
            return false;
        };
        while queue.front().is_some_and(|q| j.is_done(q)) {
            queue.pop_front();
        }
        !queue.is_empty()
    }

    /// Gives every free worker something to do: first a re-issue of a slow batch, else
    /// a new batch of the job the fairness policy picks.
    fn fill(&mut self, cx: &mut Cx<'_>) {
        let free: Vec<NodeAddr> = self
            .workers
            .iter()
            .filter(|(_, s)| s.busy.is_none() && !s.blocked)
            .map(|(w, _)| w.clone())
            .collect();
        for w in free {
            if self.try_reissue(cx, &w) {
                continue;
            }
            if !self.assign_new(cx, &w) {
                // No job has queued queries; later workers would find none either,
                // unless a re-issue waits for a worker that does not hold a copy.
                if self.reissue.is_empty() {
                    break;
                }
            }
        }
    }

    fn try_reissue(&mut self, cx: &mut Cx<'_>, w: &NodeAddr) -> bool {
        while let Some(group) = self.reissue.front().copied() {
            let Some(orig) = self.in_flight.get(&group) else {
                self.reissue.pop_front();
                continue;
            };
            if &orig.worker == w {
                return false;
            }
            let (job, model) = (orig.job, orig.model.clone());
            let open: Vec<QueryId> = match cx.state.jobs.get(&job) {
                Some(j) => orig
                    .queries
                    .iter()
                    .filter(|q| !j.is_done(q))
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            self.reissue.pop_front();
            if open.is_empty() {
                continue;
            }
            cx.counters.reissued += 1;
            self.dispatch(cx, w, job, model, open, Some(group));
            return true;
        }
        false
    }

    fn assign_new(&mut self, cx: &mut Cx<'_>, w: &NodeAddr) -> bool {
        loop {
            let jobs: Vec<JobId> = self.queues.keys().copied().collect();
            let mut candidates = Vec::new();
            for job in jobs {
                if !self.clean_front(cx, job) {
                    continue;
                }
                let Some(j) = cx.state.jobs.get(&job) else {
                    continue;
                };
                let workers = self
                    .in_flight
                    .values()
                    .filter(|e| e.job == job && cx.state.jobs.contains_key(&e.job))
                    .count() as u32;
                candidates.push(Candidate {
                    job,
                    served: self.fairness.served(job),
                    workers,
                    batch_size: cx.state.batch_size(&j.manifest.model, cx.cfg),
                });
            }
            let current = self.workers.get(w).and_then(|s| s.last_job);
            let Some(job) = pick_job(current, &candidates, cx.cfg.hysteresis_batches) else {
                return false;
            };
            let Some(j) = cx.state.jobs.get(&job) else {
                return false;
            };
            let model = j.manifest.model.clone();
            let size = cx.state.batch_size(&model, cx.cfg) as usize;
            let mut batch = Vec::with_capacity(size);
            if let Some(queue) = self.queues.get_mut(&job) {
                while batch.len() < size {
                    let Some(q) = queue.pop_front() else { break };
                    if !j.is_done(&q) {
                        batch.push(q);
                    }
                }
            }
            if batch.is_empty() {
                // Everything left was committed meanwhile; look again.
                continue;
            }
            self.fairness.charge(job, batch.len() as u64);
            self.dispatch(cx, w, job, model, batch, None);
            return true;
        }
    }

    fn dispatch(
        &mut self,
        cx: &mut Cx<'_>,
        w: &NodeAddr,
        job: JobId,
        model: String,
        queries: Vec<QueryId>,
        copy_of: Option<BatchId>,
    ) {
        self.next_batch += 1;
        let id = BatchId {
            epoch: cx.reign.term.epoch,
            seq: self.next_batch,
        };
        let slot = self.workers.entry(w.clone()).or_default();
        slot.busy = Some(id);
        if copy_of.is_none() {
            slot.last_job = Some(job);
            // A batch is late after k times its expected time (median measured
            // per-query time times its size), never sooner than the floor.
            let expected = cx.state.expected_query_ms(&model, cx.cfg) * queries.len() as f64;
            let deadline = ((cx.cfg.slow_factor * expected) as Millis).max(cx.cfg.slow_floor_ms);
            cx.fx.push(Effect::SetTimer {
                at: cx.now.saturating_add(deadline),
                timer: Timer::BatchDeadline { batch: id },
            });
        }
        cx.fx.push(Effect::Send {
            to: w.clone(),
            msg: Msg::RunBatch(RunBatch {
                term: cx.reign.term.clone(),
                batch: id,
                job,
                model: model.clone(),
                queries: queries.clone(),
            }),
        });
        self.in_flight.insert(
            id,
            InFlight {
                job,
                model,
                queries,
                worker: w.clone(),
                group: copy_of.unwrap_or(id),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::msg::BatchDone;

    fn sends(fx: &[Effect]) -> Vec<(&NodeAddr, &Msg)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Send { to, msg } => Some((to, msg)),
                _ => None,
            })
            .collect()
    }

    fn run_batches(fx: &[Effect]) -> Vec<RunBatch> {
        sends(fx)
            .into_iter()
            .filter_map(|(_, m)| match m {
                Msg::RunBatch(rb) => Some(rb.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn successor_wraps_and_skips_the_start() {
        let live: BTreeSet<NodeAddr> = ["a:1", "b:1", "c:1"]
            .iter()
            .map(|s| NodeAddr::from(*s))
            .collect();
        assert_eq!(successor(&live, &"b:1".into()), Some("c:1".into()));
        assert_eq!(successor(&live, &"c:1".into()), Some("a:1".into()));
        assert_eq!(successor(&live, &"bb:1".into()), Some("c:1".into()));
        let one: BTreeSet<NodeAddr> = [NodeAddr::from("a:1")].into();
        assert_eq!(successor(&one, &"a:1".into()), None);
    }

    /// One node, no standby: failing queries are retried, then committed as failed.
    #[test]
    fn a_query_that_keeps_failing_is_committed_as_failed_after_max_attempts() {
        let me = NodeAddr::from("solo:1");
        let cfg = JobsConfig {
            max_attempts: 2,
            ..JobsConfig::default()
        };
        let mut c = Coordinator::new(me.clone(), cfg);
        c.bootstrap(0, std::slice::from_ref(&me), 0);
        assert_eq!(c.role(), RoleKind::Primary);
        let client = NodeAddr::from("client:1");
        let fx = c.submit(
            1,
            client.clone(),
            1,
            "resnet50",
            "in/",
            vec!["in/a".into(), "in/b".into()],
        );
        let manifest = fx
            .iter()
            .find_map(|e| match e {
                Effect::WriteManifest { manifest } => Some(manifest.clone()),
                _ => None,
            })
            .expect("manifest written before the ack");
        assert!(!sends(&fx)
            .iter()
            .any(|(_, m)| matches!(m, Msg::JobAccepted { .. })));
        let mut rb = run_batches(&fx);
        let fx = c.on_manifest_written(2, manifest.id);
        assert!(sends(&fx)
            .iter()
            .any(|(to, m)| *to == &client && matches!(m, Msg::JobAccepted { .. })));

        for attempt in 1..=2u64 {
            let b = rb.pop().expect("a batch");
            let done = BatchDone {
                term: b.term.clone(),
                batch: b.batch,
                job: b.job,
                results_written: vec!["in/a".into()],
                failed: vec!["in/b".into()],
                compute_ms: 30,
            };
            let fx = c.on_message(10 * attempt, &me, Msg::BatchDone(done));
            rb = run_batches(&fx);
            if attempt == 1 {
                assert_eq!(rb.len(), 1, "in/b retried");
                assert_eq!(rb[0].queries, vec!["in/b".to_string()]);
            } else {
                assert!(rb.is_empty());
                assert!(sends(&fx).iter().any(|(_, m)| matches!(
                    m,
                    Msg::JobCompleted {
                        ok: 1,
                        failed: 1,
                        ..
                    }
                )));
            }
        }
        let j = &c.state().jobs[&manifest.id];
        assert!(j.is_complete());
        assert_eq!(j.ok_count(), 1);
    }

    /// A cluster restarted on SDFS data that holds jobs of epochs up to 4 starts at 5, so
    /// its first job cannot reuse an old id (and so old manifest and result names).
    #[test]
    fn bootstrap_starts_above_the_epochs_already_in_sdfs() {
        let me = NodeAddr::from("solo:1");
        let mut fresh = Coordinator::new(me.clone(), JobsConfig::default());
        fresh.bootstrap(0, std::slice::from_ref(&me), 0);
        assert_eq!(fresh.reign().map(|r| r.term.epoch), Some(1));

        let mut c = Coordinator::new(me.clone(), JobsConfig::default());
        c.bootstrap(0, std::slice::from_ref(&me), 4);
        assert_eq!(c.reign().map(|r| r.term.epoch), Some(5));
        let fx = c.submit(
            1,
            "client:1".into(),
            1,
            "resnet50",
            "in/",
            vec!["in/a".into()],
        );
        let id = fx
            .iter()
            .find_map(|e| match e {
                Effect::WriteManifest { manifest } => Some(manifest.id),
                _ => None,
            })
            .expect("manifest written");
        assert_eq!(id.to_string(), "5-1");
        // A second bootstrap call changes nothing: a reign is known.
        c.bootstrap(2, std::slice::from_ref(&me), 9);
        assert_eq!(c.reign().map(|r| r.term.epoch), Some(5));
    }

    #[test]
    fn requests_to_a_member_name_the_coordinator() {
        let mut c = Coordinator::new("m:1".into(), JobsConfig::default());
        let r = Reign {
            term: Term {
                epoch: 3,
                coordinator: "boss:1".into(),
            },
            standby: None,
            view: 0,
        };
        c.on_message(0, &"boss:1".into(), Msg::Reign(r));
        let fx = c.on_message(
            1,
            &"client:1".into(),
            Msg::SetBatchSize {
                request_id: 5,
                model: "resnet50".into(),
                size: 4,
            },
        );
        assert!(matches!(
            sends(&fx)[0].1,
            Msg::Refused {
                error: JobError::NotCoordinator { coordinator: Some(c) },
                ..
            } if c.as_str() == "boss:1"
        ));
    }
}
