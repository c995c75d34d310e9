//! The primary's batches: which worker gets the next batch (fair-time policy with
//! hysteresis), deadlines and re-issue of slow batches, requeueing after a lost or busy
//! worker, and the commit of reported results (first result per query wins), each
//! logged to the standby before anyone is acknowledged.

use std::collections::{BTreeMap, BTreeSet};

use super::{Cx, Effect, InFlight, PendingAck, Primary, Timer};
use crate::jobs::msg::{BatchDone, Msg, RunBatch};
use crate::jobs::record::{Commit, Record};
use crate::jobs::schedule::{pick_job, Candidate};
use crate::jobs::types::{BatchId, JobId, QueryId};
use crate::types::{Millis, NodeAddr};

impl Primary {
    /// Applies a record here and sends it to the standby; returns its log position.
    /// Anything acknowledged because of it waits in `pending` for the standby's ack.
    pub(super) fn log(&mut self, cx: &mut Cx<'_>, record: Record) -> u64 {
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
    pub(super) fn release(&mut self, cx: &mut Cx<'_>) {
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

    pub(super) fn sync_fairness(&mut self, cx: &mut Cx<'_>) {
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

    pub(super) fn group_alive(&self, group: BatchId) -> bool {
        self.in_flight.values().any(|e| e.group == group)
    }

    pub(super) fn needs_reissue(&self, cx: &Cx<'_>, batch: BatchId) -> bool {
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
            .is_some_and(|j| e.queries.iter().any(|q| !j.is_done(*q)));
        batch == e.group && copies == 1 && open && !self.reissue.contains(&batch)
    }

    /// Puts the open queries of a dispatch back at the head of its job's queue, unless
    /// another run of the same queries is still in flight.
    pub(super) fn requeue(&mut self, cx: &mut Cx<'_>, e: &InFlight, only: Option<&[QueryId]>) {
        if self.group_alive(e.group) {
            return;
        }
        let Some(job) = cx.state.jobs.get(&e.job) else {
            return;
        };
        let open: Vec<QueryId> = e
            .queries
            .iter()
            .filter(|q| !job.is_done(**q) && only.is_none_or(|o| o.contains(q)))
            .copied()
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

    pub(super) fn worker_lost(&mut self, cx: &mut Cx<'_>, worker: &NodeAddr) {
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

    pub(super) fn on_busy(&mut self, cx: &mut Cx<'_>, from: &NodeAddr, batch: BatchId) {
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

    pub(super) fn on_batch_done(&mut self, cx: &mut Cx<'_>, from: &NodeAddr, done: BatchDone) {
        let entry = match self.in_flight.get(&done.batch) {
            Some(e) if &e.worker == from && e.job == done.job => self.in_flight.remove(&done.batch),
            _ => None,
        };
        if let Some(slot) = self.workers.get_mut(from) {
            if slot.busy == Some(done.batch) || entry.is_some() {
                slot.busy = None;
            }
            slot.blocked = false;
            if done.precision.is_some() {
                slot.precision = done.precision.clone();
            }
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
                .map_or_else(|| job.has_query(*q), |e| e.queries.contains(q))
        };
        let mut ok: Vec<QueryId> = done
            .results_written
            .iter()
            .filter(|q| allowed(q) && !job.is_done(**q))
            .copied()
            .collect();
        ok.sort();
        ok.dedup();
        cx.counters.duplicate_results += (done.results_written.len() - ok.len()) as u64;
        let mut retry: Vec<QueryId> = Vec::new();
        let mut failed: Vec<QueryId> = Vec::new();
        let mut unfinished: Vec<QueryId> = done
            .failed
            .iter()
            .filter(|q| allowed(q) && !job.is_done(**q) && ok.binary_search(q).is_err())
            .copied()
            .collect();
        if let Some(e) = &entry {
            // Queries the worker neither wrote nor reported as failed count as failed.
            unfinished.extend(
                e.queries
                    .iter()
                    .filter(|q| {
                        !done.results_written.contains(q)
                            && !done.failed.contains(q)
                            && !job.is_done(**q)
                    })
                    .copied(),
            );
        }
        unfinished.sort();
        unfinished.dedup();
        for q in unfinished {
            let n = self.attempts.entry((done.job, q)).or_insert(0);
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
                self.attempts.remove(&(done.job, *q));
            }
            let commit = Commit {
                job: done.job,
                batch: done.batch,
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
                .is_some_and(|j| e.queries.iter().all(|q| j.is_done(*q)));
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
                        failed: j.failed,
                    },
                });
                self.queues.remove(&done.job);
                self.sync_fairness(cx);
            }
        }
        self.fill(cx);
        self.release(cx);
    }

    pub(super) fn clean_front(&mut self, cx: &Cx<'_>, job: JobId) -> bool {
        let (Some(queue), Some(j)) = (self.queues.get_mut(&job), cx.state.jobs.get(&job)) else {
            return false;
        };
        while queue.front().is_some_and(|q| j.is_done(*q)) {
            queue.pop_front();
        }
        !queue.is_empty()
    }

    /// Gives every free worker something to do: first a re-issue of a slow batch, else
    /// a new batch of the job the fairness policy picks.
    pub(super) fn fill(&mut self, cx: &mut Cx<'_>) {
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
                // unless a re-issue waits for a worker that does not hold a copy, or
                // this worker does not serve the weights a waiting job is pinned to.
                if self.reissue.is_empty() && cx.serving.is_empty() {
                    break;
                }
            }
        }
    }

    pub(super) fn try_reissue(&mut self, cx: &mut Cx<'_>, w: &NodeAddr) -> bool {
        while let Some(group) = self.reissue.front().copied() {
            let Some(orig) = self.in_flight.get(&group) else {
                self.reissue.pop_front();
                continue;
            };
            if &orig.worker == w || !serves(cx, w, orig.job) {
                return false;
            }
            let (job, model) = (orig.job, orig.model.clone());
            let open: Vec<QueryId> = match cx.state.jobs.get(&job) {
                Some(j) => orig
                    .queries
                    .iter()
                    .filter(|q| !j.is_done(**q))
                    .copied()
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

    pub(super) fn assign_new(&mut self, cx: &mut Cx<'_>, w: &NodeAddr) -> bool {
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
                if !serves(cx, w, job) {
                    continue;
                }
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
                    if !j.is_done(q) {
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

    pub(super) fn dispatch(
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
        let (inputs, weights) = match cx.state.jobs.get(&job) {
            Some(j) => (
                queries
                    .iter()
                    .filter_map(|q| j.manifest.queries.input(*q))
                    .collect(),
                j.manifest.weights.clone(),
            ),
            None => (Vec::new(), Default::default()),
        };
        cx.fx.push(Effect::Send {
            to: w.clone(),
            msg: Msg::RunBatch(RunBatch {
                term: cx.reign.term.clone(),
                batch: id,
                job,
                model: model.clone(),
                queries: queries.clone(),
                inputs,
                weights,
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

/// Whether worker `w` may run batches of `job`: it serves the weights the job is pinned
/// to. A worker not heard from yet is given work (it refuses a batch it cannot serve,
/// see `RefuseReason::Weights`), so a new coordinator does not stall until every report.
fn serves(cx: &Cx<'_>, w: &NodeAddr, job: JobId) -> bool {
    let Some(j) = cx.state.jobs.get(&job) else {
        return false;
    };
    cx.serving
        .get(w)
        .is_none_or(|r| r.serves(&j.manifest.model, &j.manifest.weights))
}
