//! Worker core: accepts `RunBatch` from the coordinator of the newest term it has seen,
//! runs at most one batch per model at a time, and reports `BatchDone` until the
//! coordinator acknowledges it (the acknowledgement means the standby has the commit).
//!
//! The shell executes [`Effect::Execute`]: fetch each input from SDFS (preferring
//! a local replica), run the ModelActor, write one result per query under
//! `result_name(job, query)`, then hand back [`Input::Executed`]. Results are written
//! before they are reported, so a reported result is never lost with the coordinator.

use std::collections::{BTreeMap, VecDeque};

use super::msg::{BatchDone, Msg, RefuseReason, RunBatch};
use super::types::{BatchId, QueryId, Term, MAX_EPOCH};
use crate::machine::Machine;
use crate::types::{Millis, NodeAddr};
use crate::weights::ServingReport;

/// Tunables of a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Batches accepted while the model is busy (after a takeover the new coordinator
    /// may dispatch to a worker still finishing an old batch).
    pub max_queued: usize,
    /// How often an unacknowledged report is sent again.
    pub resend_ms: Millis,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            max_queued: 4,
            resend_ms: 2_000,
        }
    }
}

/// The worker's only timer: send unacknowledged reports again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Resend every report not yet acknowledged.
    Resend,
}

/// What the shell reports after running a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    /// Queries whose result is written to SDFS.
    pub results_written: Vec<QueryId>,
    /// Queries that could not be processed.
    pub failed: Vec<QueryId>,
    /// Time from the start of fetching to the last result written.
    pub compute_ms: Millis,
    /// The precision the model computed in (`None`: nothing was computed).
    pub precision: Option<String>,
}

/// Everything that can happen to a worker.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A job message for the worker (see `Msg::is_for_worker`).
    Message {
        /// Sender.
        from: NodeAddr,
        /// Message.
        msg: Msg,
    },
    /// The shell finished running `batch` (an [`Effect::Execute`]).
    Executed {
        /// The batch.
        batch: BatchId,
        /// What came of it.
        ex: Executed,
    },
    /// A timer this worker set fired.
    Timer(Timer),
}

/// What the shell must do after driving the worker.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send a message.
    Send {
        /// Recipient.
        to: NodeAddr,
        /// Message.
        msg: Msg,
    },
    /// Run this batch (fetch, infer, write results), then hand back `Input::Executed`.
    Execute(RunBatch),
    /// Hand `timer` back at `at`.
    SetTimer {
        /// When (caller's clock).
        at: Millis,
        /// Which.
        timer: Timer,
    },
}

/// The worker core of one node.
#[derive(Debug)]
pub struct Worker {
    settings: WorkerSettings,
    term: Option<Term>,
    running: BTreeMap<String, RunBatch>,
    queued: VecDeque<RunBatch>,
    unacked: BTreeMap<BatchId, BatchDone>,
    resend_armed: bool,
    refused_stale: u64,
    /// What the node serves (`None`: anything, as in the simulations).
    serving: Option<ServingReport>,
}

impl Worker {
    /// A worker that has not yet heard of any coordinator.
    pub fn new(settings: WorkerSettings) -> Self {
        Worker {
            settings,
            term: None,
            running: BTreeMap::new(),
            queued: VecDeque::new(),
            unacked: BTreeMap::new(),
            resend_armed: false,
            refused_stale: 0,
            serving: None,
        }
    }

    /// What this node serves: a batch pinned to weights it does not serve is refused
    /// ([`RefuseReason::Weights`]) instead of run on other weights.
    pub fn set_serving(&mut self, serving: ServingReport) {
        self.serving = Some(serving);
    }

    /// The newest term seen (commands of older terms are refused).
    pub fn term(&self) -> Option<&Term> {
        self.term.as_ref()
    }

    /// Batches running now.
    pub fn running(&self) -> impl Iterator<Item = &RunBatch> {
        self.running.values()
    }

    /// Commands refused because their term was old (fencing at work).
    pub fn refused_stale(&self) -> u64 {
        self.refused_stale
    }

    /// Reports not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    fn on_message(&mut self, now: Millis, from: &NodeAddr, msg: Msg) -> Vec<Effect> {
        let mut fx = Vec::new();
        match msg {
            Msg::RunBatch(rb) => self.on_run_batch(now, from, rb, &mut fx),
            Msg::BatchAck { batch } => {
                self.unacked.remove(&batch);
            }
            Msg::Reign(r) => self.adopt(now, r.term, &mut fx),
            Msg::Fenced { reign } => self.adopt(now, reign.term, &mut fx),
            _ => {}
        }
        fx
    }

    fn on_run_batch(&mut self, now: Millis, from: &NodeAddr, rb: RunBatch, fx: &mut Vec<Effect>) {
        if rb.term.epoch > MAX_EPOCH {
            return;
        }
        if let Some(t) = &self.term {
            if rb.term < *t {
                self.refused_stale += 1;
                fx.push(Effect::Send {
                    to: from.clone(),
                    msg: Msg::WorkerRefused {
                        batch: rb.batch,
                        reason: RefuseReason::StaleTerm,
                        term: t.clone(),
                    },
                });
                return;
            }
        }
        self.adopt(now, rb.term.clone(), fx);
        if let Some(done) = self.unacked.get(&rb.batch) {
            // The coordinator missed our report: repeat it rather than run again.
            fx.push(self.report(done.clone()));
            return;
        }
        let known = self.running.values().any(|r| r.batch == rb.batch)
            || self.queued.iter().any(|r| r.batch == rb.batch);
        if known {
            return;
        }
        if self
            .serving
            .as_ref()
            .is_some_and(|s| !s.serves(&rb.model, &rb.weights))
        {
            fx.push(Effect::Send {
                to: from.clone(),
                msg: Msg::WorkerRefused {
                    batch: rb.batch,
                    reason: RefuseReason::Weights,
                    term: rb.term,
                },
            });
            return;
        }
        if !self.running.contains_key(&rb.model) {
            self.running.insert(rb.model.clone(), rb.clone());
            fx.push(Effect::Execute(rb));
        } else if self.queued.len() < self.settings.max_queued {
            self.queued.push_back(rb);
        } else {
            fx.push(Effect::Send {
                to: from.clone(),
                msg: Msg::WorkerRefused {
                    batch: rb.batch,
                    reason: RefuseReason::Busy,
                    term: rb.term,
                },
            });
        }
    }

    /// Adopts a newer term: queued (not started) batches of older terms are dropped,
    /// because the new coordinator re-queued them; unacknowledged reports go to it.
    fn adopt(&mut self, now: Millis, term: Term, fx: &mut Vec<Effect>) {
        // A forged term past the bound would fence every real coordinator for good.
        if term.epoch > MAX_EPOCH || self.term.as_ref().is_some_and(|t| *t >= term) {
            return;
        }
        self.term = Some(term.clone());
        self.queued.retain(|rb| rb.term >= term);
        let reports: Vec<BatchDone> = self.unacked.values().cloned().collect();
        for done in reports {
            fx.push(self.report(done));
        }
        self.arm(now, fx);
    }

    fn on_executed(&mut self, now: Millis, batch: BatchId, ex: Executed) -> Vec<Effect> {
        let mut fx = Vec::new();
        let Some(model) = self
            .running
            .iter()
            .find(|(_, rb)| rb.batch == batch)
            .map(|(m, _)| m.clone())
        else {
            return fx;
        };
        let Some(rb) = self.running.remove(&model) else {
            return fx;
        };
        let done = BatchDone {
            term: rb.term,
            batch,
            job: rb.job,
            results_written: ex.results_written,
            failed: ex.failed,
            compute_ms: ex.compute_ms,
            precision: ex.precision,
        };
        self.unacked.insert(batch, done.clone());
        fx.push(self.report(done));
        self.arm(now, &mut fx);
        if let Some(pos) = self.queued.iter().position(|r| r.model == model) {
            if let Some(next) = self.queued.remove(pos) {
                self.running.insert(model, next.clone());
                fx.push(Effect::Execute(next));
            }
        }
        fx
    }

    fn on_timer(&mut self, now: Millis, timer: Timer) -> Vec<Effect> {
        let mut fx = Vec::new();
        match timer {
            Timer::Resend => {
                self.resend_armed = false;
                let reports: Vec<BatchDone> = self.unacked.values().cloned().collect();
                for done in reports {
                    fx.push(self.report(done));
                }
                self.arm(now, &mut fx);
            }
        }
        fx
    }

    fn report(&self, done: BatchDone) -> Effect {
        // To the coordinator of the newest term: after a takeover that is the new one.
        let to = self
            .term
            .as_ref()
            .map_or_else(|| done.term.coordinator.clone(), |t| t.coordinator.clone());
        Effect::Send {
            to,
            msg: Msg::BatchDone(done),
        }
    }

    fn arm(&mut self, now: Millis, fx: &mut Vec<Effect>) {
        if !self.resend_armed && !self.unacked.is_empty() {
            self.resend_armed = true;
            fx.push(Effect::SetTimer {
                at: now.saturating_add(self.settings.resend_ms),
                timer: Timer::Resend,
            });
        }
    }
}

impl Machine for Worker {
    type Input = Input;
    type Effect = Effect;

    fn handle(&mut self, now: Millis, input: Input) -> Vec<Effect> {
        match input {
            Input::Message { from, msg } => self.on_message(now, &from, msg),
            Input::Executed { batch, ex } => self.on_executed(now, batch, ex),
            Input::Timer(timer) => self.on_timer(now, timer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::types::JobId;

    fn term(epoch: u64, c: &str) -> Term {
        Term {
            epoch,
            coordinator: c.into(),
        }
    }

    fn rb(epoch: u64, c: &str, seq: u64, model: &str) -> Msg {
        Msg::RunBatch(RunBatch {
            term: term(epoch, c),
            batch: BatchId { epoch, seq },
            job: JobId { epoch: 1, seq: 1 },
            model: model.into(),
            queries: vec![0, 1],
            inputs: Vec::new(),
            weights: Default::default(),
        })
    }

    /// Delivers `msg` from `from` through `handle`.
    fn message(w: &mut Worker, now: Millis, from: &NodeAddr, msg: Msg) -> Vec<Effect> {
        let from = from.clone();
        w.handle(now, Input::Message { from, msg })
    }

    fn executed(w: &mut Worker, now: Millis, batch: BatchId, ex: Executed) -> Vec<Effect> {
        w.handle(now, Input::Executed { batch, ex })
    }

    fn sends(fx: &[Effect]) -> Vec<(&NodeAddr, &Msg)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Send { to, msg } => Some((to, msg)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn older_terms_are_refused_and_reports_follow_the_new_coordinator() {
        let mut w = Worker::new(WorkerSettings::default());
        let c1: NodeAddr = "c1:1".into();
        let fx = message(&mut w, 0, &c1, rb(1, "c1:1", 1, "resnet50"));
        assert!(matches!(fx.as_slice(), [Effect::Execute(_)]));

        // A new reign: the report of the old batch goes to the new coordinator.
        let fx = message(&mut w, 1, &"c2:1".into(), rb(2, "c2:1", 1, "inception_v3"));
        assert!(matches!(fx.as_slice(), [Effect::Execute(_)]));
        let fx = executed(
            &mut w,
            2,
            BatchId { epoch: 1, seq: 1 },
            Executed {
                results_written: vec![0, 1],
                failed: vec![],
                compute_ms: 40,
                precision: None,
            },
        );
        let s = sends(&fx);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0.as_str(), "c2:1");

        // The old coordinator is fenced.
        let fx = message(&mut w, 3, &c1, rb(1, "c1:1", 2, "resnet50"));
        assert!(matches!(
            sends(&fx)[0].1,
            Msg::WorkerRefused {
                reason: RefuseReason::StaleTerm,
                ..
            }
        ));
        assert_eq!(w.refused_stale(), 1);

        // Unacked reports are repeated on the timer until acked.
        assert_eq!(
            sends(&w.handle(2_002, Input::Timer(Timer::Resend))).len(),
            1
        );
        message(
            &mut w,
            2_003,
            &"c2:1".into(),
            Msg::BatchAck {
                batch: BatchId { epoch: 1, seq: 1 },
            },
        );
        assert!(sends(&w.handle(4_003, Input::Timer(Timer::Resend))).is_empty());
    }

    #[test]
    fn a_batch_pinned_to_weights_the_node_does_not_serve_is_refused() {
        use crate::weights::{Pinned, Serving, WeightsPin};
        let mut w = Worker::new(WorkerSettings::default());
        w.set_serving(ServingReport {
            models: vec![(
                "resnet50".into(),
                Serving::Local {
                    sha256: "a".repeat(64),
                },
            )],
            notes: vec![],
        });
        let c: NodeAddr = "c:1".into();
        let pinned = |sha: &str, seq| {
            let Msg::RunBatch(mut b) = rb(1, "c:1", seq, "resnet50") else {
                unreachable!()
            };
            b.weights = WeightsPin::Published(Box::new(Pinned {
                version: 1,
                sha256: sha.repeat(64),
                format: "safetensors".into(),
            }));
            Msg::RunBatch(b)
        };
        let fx = message(&mut w, 0, &c, pinned("b", 1));
        assert!(matches!(
            sends(&fx).as_slice(),
            [(
                _,
                Msg::WorkerRefused {
                    reason: RefuseReason::Weights,
                    ..
                }
            )]
        ));
        assert!(w.running().next().is_none());
        let fx = message(&mut w, 0, &c, pinned("a", 2));
        assert!(matches!(fx.as_slice(), [Effect::Execute(_)]));
    }

    #[test]
    fn one_batch_per_model_at_a_time() {
        let mut w = Worker::new(WorkerSettings {
            max_queued: 1,
            resend_ms: 1000,
        });
        let c: NodeAddr = "c:1".into();
        assert_eq!(message(&mut w, 0, &c, rb(1, "c:1", 1, "resnet50")).len(), 1);
        assert!(
            message(&mut w, 0, &c, rb(1, "c:1", 2, "resnet50")).is_empty(),
            "queued"
        );
        let fx = message(&mut w, 0, &c, rb(1, "c:1", 3, "resnet50"));
        assert!(matches!(
            sends(&fx)[0].1,
            Msg::WorkerRefused {
                reason: RefuseReason::Busy,
                ..
            }
        ));
        let fx = executed(
            &mut w,
            5,
            BatchId { epoch: 1, seq: 1 },
            Executed {
                results_written: vec![],
                failed: vec![],
                compute_ms: 5,
                precision: None,
            },
        );
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::Execute(r) if r.batch.seq == 2)));
    }
}
