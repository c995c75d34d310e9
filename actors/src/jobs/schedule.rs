//! Fair-time scheduling policy: which job a free worker serves next.
//!
//! Goal: equal query rates for all running jobs. A job whose queries cost twice as much
//! needs twice the worker time, so the policy equalises *queries dispatched* (not
//! workers): since the running set last changed, each job is charged the queries it was
//! given; a free worker goes to the job charged least. Worker time then divides in
//! proportion to the measured per-query times ([`target_shares`], reported by C5)
//! without the policy having to trust those estimates.
//!
//! Hysteresis: a worker stays with its previous job unless that job is ahead of the
//! least-served one by more than `hysteresis_batches` of its own batches, so workers do
//! not flip at every batch. A job with no worker at all always wins (it is new, or it
//! lost its workers): that is what lets a newly added job start at the next batch
//! boundary anywhere in the cluster.

use std::collections::{BTreeMap, BTreeSet};

use super::types::JobId;
use crate::types::Millis;

/// Queries charged per job since the set of running jobs last changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fairness {
    running: BTreeSet<JobId>,
    served: BTreeMap<JobId, u64>,
    since: Millis,
}

impl Fairness {
    /// Restarts the accounting when the running set changed (a job added or finished):
    /// equal rates are owed from the moment both run, not for the past. Queries already
    /// in flight count as served, so a new job is ahead of nothing.
    pub fn sync(
        &mut self,
        now: Millis,
        running: BTreeSet<JobId>,
        in_flight: &BTreeMap<JobId, u64>,
    ) {
        if running == self.running {
            return;
        }
        self.served = running
            .iter()
            .map(|j| (*j, in_flight.get(j).copied().unwrap_or(0)))
            .collect();
        self.running = running;
        self.since = now;
    }

    /// A batch of `n` queries of `job` was dispatched.
    pub fn charge(&mut self, job: JobId, n: u64) {
        if let Some(s) = self.served.get_mut(&job) {
            *s = s.saturating_add(n);
        }
    }

    /// `n` queries of `job` went back to the queue (their worker died or failed them).
    pub fn refund(&mut self, job: JobId, n: u64) {
        if let Some(s) = self.served.get_mut(&job) {
            *s = s.saturating_sub(n);
        }
    }

    /// Queries charged to `job`.
    pub fn served(&self, job: JobId) -> u64 {
        self.served.get(&job).copied().unwrap_or(0)
    }

    /// When the running set last changed.
    pub fn since(&self) -> Millis {
        self.since
    }
}

/// A job that has queries waiting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// The job.
    pub job: JobId,
    /// Queries charged to it ([`Fairness::served`]).
    pub served: u64,
    /// Workers running one of its batches now.
    pub workers: u32,
    /// Its model's current batch size.
    pub batch_size: u32,
}

/// The job a free worker whose previous job was `current` should serve next.
pub fn pick_job(
    current: Option<JobId>,
    candidates: &[Candidate],
    hysteresis_batches: f64,
) -> Option<JobId> {
    let least = |it: &mut dyn Iterator<Item = &Candidate>| {
        it.min_by_key(|c| (c.served, c.workers, c.job))
            .map(|c| c.job)
    };
    if let Some(starving) = least(&mut candidates.iter().filter(|c| c.workers == 0)) {
        // Stay with the previous job if it is starving too and no further behind.
        if let Some(cur) = candidates
            .iter()
            .find(|c| Some(c.job) == current && c.workers == 0)
        {
            let best = candidates
                .iter()
                .find(|c| c.job == starving)
                .map_or(0, |c| c.served);
            if cur.served <= best {
                return Some(cur.job);
            }
        }
        return Some(starving);
    }
    let min = candidates.iter().map(|c| c.served).min()?;
    if let Some(cur) = candidates.iter().find(|c| Some(c.job) == current) {
        let slack = (hysteresis_batches * f64::from(cur.batch_size)).round() as u64;
        if cur.served <= min.saturating_add(slack) {
            return Some(cur.job);
        }
    }
    least(&mut candidates.iter())
}

/// The fraction of worker time each job needs for equal query rates: a job's rate is
/// (its worker time) / (its per-query time), so equal rates need time in proportion to
/// per-query time.
pub fn target_shares(per_query_ms: &[(JobId, f64)]) -> Vec<(JobId, f64)> {
    let total: f64 = per_query_ms.iter().map(|(_, t)| t.max(0.0)).sum();
    per_query_ms
        .iter()
        .map(|(j, t)| {
            let share = if total > 0.0 {
                t.max(0.0) / total
            } else {
                1.0 / per_query_ms.len() as f64
            };
            (*j, share)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u32) -> JobId {
        JobId { epoch: 1, seq }
    }

    fn cand(seq: u32, served: u64, workers: u32) -> Candidate {
        Candidate {
            job: id(seq),
            served,
            workers,
            batch_size: 4,
        }
    }

    #[test]
    fn a_job_without_workers_wins_over_stickiness() {
        let c = [cand(1, 40, 7), cand(2, 0, 0)];
        assert_eq!(pick_job(Some(id(1)), &c, 10.0), Some(id(2)));
    }

    #[test]
    fn hysteresis_keeps_a_worker_on_a_slightly_ahead_job() {
        let c = [cand(1, 24, 3), cand(2, 20, 4)];
        assert_eq!(pick_job(Some(id(1)), &c, 1.0), Some(id(1)));
        let c = [cand(1, 25, 3), cand(2, 20, 4)];
        assert_eq!(pick_job(Some(id(1)), &c, 1.0), Some(id(2)));
        assert_eq!(pick_job(None, &c, 1.0), Some(id(2)));
        assert_eq!(pick_job(None, &[], 1.0), None);
    }

    #[test]
    fn accounting_restarts_only_when_the_running_set_changes() {
        let mut f = Fairness::default();
        let both: BTreeSet<JobId> = [id(1), id(2)].into();
        let inflight: BTreeMap<JobId, u64> = [(id(1), 32)].into();
        f.sync(5, [id(1)].into(), &BTreeMap::new());
        f.charge(id(1), 100);
        f.sync(10, both.clone(), &inflight);
        assert_eq!((f.served(id(1)), f.served(id(2)), f.since()), (32, 0, 10));
        f.charge(id(2), 8);
        f.sync(11, both, &inflight);
        assert_eq!(f.served(id(2)), 8);
        f.refund(id(2), 20);
        assert_eq!(f.served(id(2)), 0);
    }

    #[test]
    fn shares_follow_per_query_time() {
        let s = target_shares(&[(id(1), 100.0), (id(2), 150.0)]);
        assert!((s[0].1 - 0.4).abs() < 1e-9 && (s[1].1 - 0.6).abs() < 1e-9);
    }
}
