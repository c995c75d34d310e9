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
//! The shell feeds `now` and one [`Input`] at a time into [`Machine::handle`] and
//! executes the returned [`Effect`]s; the rules are in docs/ARCHITECTURE.md ("Inference
//! jobs"). The core is split by concern:
//! - `reign`: the first reign, takeovers, standby choice, fencing and replication;
//! - `requests`: client requests (submission, C3, status) and manifest bookkeeping;
//! - `dispatch`: the primary's batches: forming, assigning, re-issuing, committing.
//!
//! [`Record`]: super::record::Record

mod dispatch;
mod reign;
mod requests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::error::JobError;
use super::msg::{Msg, RefuseReason, ResultsPage, StatusKind, StatusReport};
use super::schedule::{target_shares, Fairness};
use super::state::{self, CoordState, ResultFound};
use super::stats::{self, Assignment, JobShare};
use super::types::{
    BatchId, JobId, JobManifest, JobsConfig, QueryId, Reign, Source, Term, MAX_EPOCH,
};
use crate::machine::Machine;
use crate::types::{Millis, NodeAddr};
use crate::weights::{ServingReport, WeightsPin};

pub use reign::successor;

/// A timer the coordinator asked for; handed back as [`Input::Timer`] when due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The batch should be done by now; if it is not, its worker is slow and the batch
    /// is re-issued elsewhere. Stale (ignored) when the batch already reported.
    BatchDeadline {
        /// The dispatch it watches.
        batch: BatchId,
    },
    /// The first live node of the ring waited its grace period for news of a reign.
    Bootstrap,
    /// Write `job`'s manifest again (an earlier write failed). Stale when it has been
    /// stored since, or this node no longer coordinates.
    RetryManifest {
        /// The job whose manifest is still missing from SDFS.
        job: JobId,
    },
}

/// The most queries one page of the results index covers (about 4 bytes each, plus the
/// names of failed ones).
pub const RESULTS_PAGE_MAX: u32 = 50_000;

/// How long the coordinator waits before writing a manifest again after SDFS refused
/// it (SDFS refuses while its ring is still forming, for about a membership change).
pub const MANIFEST_RETRY_MS: Millis = 1_000;

/// Everything that can happen to the coordinator core.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// The membership layer's current list of live members (this node included).
    Members(Vec<NodeAddr>),
    /// A job message for the coordinator core (see `Msg::is_for_coordinator`).
    Message {
        /// Sender.
        from: NodeAddr,
        /// Message.
        msg: Msg,
    },
    /// A timer this core set fired.
    Timer(Timer),
    /// The shell listed the inputs of an [`Effect::ListInputs`].
    InputsListed {
        /// Who submitted.
        client: NodeAddr,
        /// The client's id for the submission.
        request_id: u64,
        /// Model asked for.
        model: String,
        /// The prefix that was listed.
        input: String,
        /// The files and archives found (archives with their entry counts).
        sources: Vec<Source>,
        /// The model's active weights, which the job is pinned to, or why they could
        /// not be read.
        weights: Result<WeightsPin, String>,
    },
    /// The manifest of an [`Effect::WriteManifest`] is in SDFS.
    ManifestWritten(JobId),
    /// The manifest of an [`Effect::WriteManifest`] could not be written.
    ManifestFailed(JobId),
    /// The shell read SDFS for an [`Effect::LoadJobsFromSdfs`].
    SdfsLoaded {
        /// The term the rebuild is for.
        term: Term,
        /// Every manifest found under `jobs/`.
        manifests: Vec<JobManifest>,
        /// Every result found under `results/`.
        results: Vec<ResultFound>,
    },
    /// The answer to an [`Effect::ReadUsedEpoch`]: the highest epoch among the job ids
    /// SDFS already holds (0 if none).
    UsedEpoch(u64),
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
    /// Hand `timer` back as [`Input::Timer`] at `at`.
    SetTimer {
        /// When (caller's clock).
        at: Millis,
        /// Which.
        timer: Timer,
    },
    /// List the SDFS names under `input`, then hand them back as [`Input::InputsListed`].
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
    /// Write the manifest to SDFS under `manifest_name(id)`, then hand back
    /// [`Input::ManifestWritten`]. The client is acknowledged only after that.
    WriteManifest {
        /// The manifest.
        manifest: JobManifest,
    },
    /// Read every manifest under `jobs/` and list every name under `results/`, then hand
    /// them back as [`Input::SdfsLoaded`] with this term.
    LoadJobsFromSdfs {
        /// The term the rebuild is for.
        term: Term,
    },
    /// Find the highest epoch among the job ids in SDFS (manifests and results) and hand
    /// it back as [`Input::UsedEpoch`]: the first reign starts above it.
    ReadUsedEpoch,
    /// Something for the log and the console.
    Event(Event),
}

/// What the coordinator reports for logs and the console (never a decision).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// This node's role changed.
    RoleChanged {
        /// The new role.
        role: RoleKind,
        /// The reign it is in.
        reign: Reign,
    },
    /// No coordinator was heard of: this node starts the cluster's first reign.
    Bootstrap {
        /// The highest epoch SDFS already held.
        used_epoch: u64,
    },
    /// An epoch above [`MAX_EPOCH`] was ignored (raised at the 1st, 2nd, 4th, 8th...
    /// occurrence, so a stream of them costs a few log lines); `from` is the sender,
    /// `None` for SDFS's job ids.
    ImplausibleEpoch {
        /// Who sent it.
        from: Option<NodeAddr>,
        /// The epoch.
        epoch: u64,
        /// How many have been ignored so far.
        seen: u64,
    },
    /// No epoch is left above the current one: this node does not take over.
    EpochsExhausted {
        /// The current epoch.
        epoch: u64,
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
    /// Messages or SDFS epochs ignored because their epoch was above [`MAX_EPOCH`].
    #[serde(default)]
    pub implausible_epochs: u64,
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
    /// The precision its model computes in, from its latest report.
    precision: Option<String>,
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
    /// What each worker last said it serves.
    serving: &'a BTreeMap<NodeAddr, ServingReport>,
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
    /// The ring in its configured order: its first live node starts the first reign.
    ring: Vec<NodeAddr>,
    /// How long that node waits for news of a running reign before starting one.
    bootstrap_grace_ms: Millis,
    /// A bootstrap is under way (grace timer set, or SDFS asked for its epochs).
    bootstrap_armed: bool,
    /// What each live worker last reported it serves (workers report to the coordinator
    /// they know, every few seconds and whenever a new reign reaches them).
    serving: BTreeMap<NodeAddr, ServingReport>,
}

impl Coordinator {
    /// A node that knows of no reign yet; `cfg` should come from `JobsConfig::validate`.
    /// The first live node of `ring` starts the cluster's first reign if it hears of none
    /// within `bootstrap_grace_ms` (a running coordinator announces its reign to joiners).
    pub fn new(
        me: NodeAddr,
        cfg: JobsConfig,
        ring: Vec<NodeAddr>,
        bootstrap_grace_ms: Millis,
    ) -> Self {
        Coordinator {
            me,
            cfg,
            reign: None,
            role: Role::Member,
            members: BTreeSet::new(),
            state: CoordState::new(),
            counters: CoordCounters::default(),
            ring,
            bootstrap_grace_ms,
            bootstrap_armed: false,
            serving: BTreeMap::new(),
        }
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
            .map_or(0, |q| q.iter().filter(|q| !j.is_done(**q)).count())
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
                    precision: slot.precision.clone(),
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
    pub fn status(&self, now: Millis, kind: StatusKind) -> Result<StatusReport, JobError> {
        Ok(match kind {
            StatusKind::Rates => {
                StatusReport::Rates(stats::c1(&self.state, now, self.cfg.rate_window_ms))
            }
            StatusKind::Times => StatusReport::Times(stats::c2(&self.state)),
            StatusKind::Assignment => StatusReport::Assignment {
                nodes: self.assignment(),
                shares: self.shares(),
                weights: self
                    .serving
                    .iter()
                    .filter(|(n, _)| self.members.contains(*n))
                    .flat_map(|(n, r)| r.notes.iter().map(move |note| format!("{n}: {note}")))
                    .collect(),
                batch_sizes: self
                    .cfg
                    .models
                    .iter()
                    .map(|m| (m.name.clone(), self.state.batch_size(&m.name, &self.cfg)))
                    .collect(),
            },
            StatusKind::Results { job, from, limit } => {
                StatusReport::Results(self.results_page(job, from, limit)?)
            }
        })
    }

    /// A page of the results index of `job`: for each query from `from`, which result
    /// object holds its committed result. At most [`RESULTS_PAGE_MAX`] queries, so an
    /// answer stays well below the frame limit whatever the job's size.
    pub fn results_page(
        &self,
        job: JobId,
        from: QueryId,
        limit: u32,
    ) -> Result<ResultsPage, JobError> {
        let j = self
            .state
            .jobs
            .get(&job)
            .ok_or(JobError::UnknownJob { job })?;
        let total = j.manifest.queries.len();
        let from = from.min(total);
        let end = from
            .saturating_add(limit.clamp(1, RESULTS_PAGE_MAX))
            .min(total);
        let mut objects: Vec<BatchId> = Vec::new();
        let mut index: BTreeMap<u32, u32> = BTreeMap::new();
        let mut outcome = Vec::with_capacity((end - from) as usize);
        let mut unfinished = Vec::new();
        for q in from..end {
            let o = j.outcome[q as usize];
            if o == state::OPEN || o == state::FAILED {
                outcome.push(o);
                unfinished.push((q, j.manifest.queries.display(q)));
                continue;
            }
            let k = *index.entry(o).or_insert_with(|| {
                objects.push(j.objects[o as usize - 1]);
                objects.len() as u32
            });
            outcome.push(k);
        }
        Ok(ResultsPage {
            job,
            model: j.manifest.model.clone(),
            total,
            ok: j.ok,
            failed: j.failed,
            complete: j.is_complete(),
            from,
            outcome,
            objects,
            unfinished,
        })
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
            serving: &self.serving,
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
            fx.push(Effect::Event(Event::RoleChanged {
                role: self.role(),
                reign: r.clone(),
            }));
        }
    }

    fn is_primary(&self) -> bool {
        matches!(self.role, Role::Primary(_))
    }

    /// Counts an ignored implausible epoch; reports the 1st, 2nd, 4th... occurrence.
    pub(super) fn implausible_epoch(
        &mut self,
        from: Option<&NodeAddr>,
        epoch: u64,
        fx: &mut Vec<Effect>,
    ) {
        self.counters.implausible_epochs = self.counters.implausible_epochs.saturating_add(1);
        let seen = self.counters.implausible_epochs;
        if seen.is_power_of_two() {
            fx.push(Effect::Event(Event::ImplausibleEpoch {
                from: from.cloned(),
                epoch,
                seen,
            }));
        }
    }

    fn on_message(&mut self, now: Millis, from: &NodeAddr, msg: Msg) -> Vec<Effect> {
        let mut fx = Vec::new();
        let epoch = match &msg {
            Msg::WorkerRefused { term, .. }
            | Msg::Replicate { term, .. }
            | Msg::ReplicateAck { term, .. }
            | Msg::SnapshotRequest { term } => Some(term.epoch),
            Msg::Snapshot { reign, .. } | Msg::Fenced { reign } | Msg::Reign(reign) => {
                Some(reign.term.epoch)
            }
            _ => None,
        };
        if let Some(e) = epoch.filter(|e| *e > MAX_EPOCH) {
            self.implausible_epoch(Some(from), e, &mut fx);
            return fx;
        }
        match msg {
            Msg::SubmitJob {
                request_id,
                model,
                input,
            } => self.on_submit_job(now, from, request_id, model, input, &mut fx),
            Msg::SetBatchSize {
                request_id,
                model,
                size,
            } => self.on_set_batch_size(now, from, request_id, model, size, &mut fx),
            Msg::StatusRequest { request_id, kind } => {
                self.on_status_request(now, from, request_id, kind, &mut fx)
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
                if matches!(reason, RefuseReason::Busy | RefuseReason::Weights) {
                    self.with_primary(now, &mut fx, |p, cx| p.on_busy(cx, from, batch));
                }
            }
            Msg::Replicate { term, seq, record } => {
                self.on_replicate(from, term, seq, record, &mut fx)
            }
            Msg::Snapshot { reign, seq, state } => {
                self.on_snapshot(from, reign, seq, *state, &mut fx)
            }
            Msg::ReplicateAck { term, seq } => self.on_replicate_ack(now, from, term, seq, &mut fx),
            Msg::SnapshotRequest { term } => self.on_snapshot_request(from, term, &mut fx),
            Msg::Fenced { reign } => {
                self.observe_reign(&reign, &mut fx);
            }
            Msg::Reign(r) => self.on_reign(from, r, &mut fx),
            // Only members' reports are kept (a joiner reports again within seconds).
            Msg::Serving(report) if self.members.contains(from) => {
                let changed = self.serving.get(from) != Some(&report);
                self.serving.insert(from.clone(), report);
                // A worker refused as busy or for its weights is used again once heard.
                self.with_primary(now, &mut fx, |p, cx| {
                    let unblocked = p
                        .workers
                        .get_mut(from)
                        .is_some_and(|s| std::mem::replace(&mut s.blocked, false));
                    if changed || unblocked {
                        p.fill(cx);
                    }
                });
            }
            _ => {}
        }
        fx
    }

    fn on_timer(&mut self, now: Millis, timer: Timer) -> Vec<Effect> {
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
            Timer::Bootstrap => self.on_bootstrap_timer(&mut fx),
            Timer::RetryManifest { job } => {
                let missing = self.state.jobs.get(&job).filter(|j| !j.manifest_stored);
                if let (RoleKind::Primary, Some(j)) = (self.role(), missing) {
                    fx.push(Effect::WriteManifest {
                        manifest: j.manifest.clone(),
                    });
                }
            }
        }
        fx
    }
}

impl Machine for Coordinator {
    type Input = Input;
    type Effect = Effect;

    fn handle(&mut self, now: Millis, input: Input) -> Vec<Effect> {
        match input {
            Input::Members(live) => self.on_members(now, &live),
            Input::Message { from, msg } => self.on_message(now, &from, msg),
            Input::Timer(timer) => self.on_timer(now, timer),
            Input::InputsListed {
                client,
                request_id,
                model,
                input,
                sources,
                weights,
            } => {
                let job = requests::Listed {
                    client,
                    request_id,
                    model,
                    input,
                    sources,
                };
                self.on_inputs_listed(now, job, weights)
            }
            Input::ManifestWritten(job) => self.on_manifest_written(now, job),
            Input::ManifestFailed(job) => vec![Effect::SetTimer {
                at: now + MANIFEST_RETRY_MS,
                timer: Timer::RetryManifest { job },
            }],
            Input::SdfsLoaded {
                term,
                manifests,
                results,
            } => self.on_sdfs_loaded(now, term, manifests, results),
            Input::UsedEpoch(used) => self.on_used_epoch(now, used),
        }
    }
}
