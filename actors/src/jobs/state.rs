//! The coordinator state that must survive a takeover: the job table, committed
//! results with their timings (so C1 and C2 survive), batch sizes and the per-model
//! time estimates. The coordinator and its standby hold identical copies because both
//! change it only through [`CoordState::apply`] on the same records in the same order.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::record::{Commit, Record};
use super::types::{JobId, JobManifest, JobsConfig, QueryId};
use crate::types::{Millis, NodeAddr};

/// How a query ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Its result is in SDFS.
    Ok,
    /// It failed `max_attempts` times.
    Failed,
}

/// One committed batch, kept for the statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommitStat {
    /// Commit time (clock of the coordinator that committed it).
    pub at: Millis,
    /// Queries newly committed with a result.
    pub ok: u32,
    /// Queries newly committed as failed.
    pub failed: u32,
    /// Processing time per query in the batch (ms).
    pub per_query_ms: f64,
    /// The worker that produced them.
    pub worker: NodeAddr,
}

/// One job as the coordinator and standby know it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// What was accepted.
    pub manifest: JobManifest,
    /// Every query with a committed outcome; at most one entry per query.
    pub outcomes: BTreeMap<QueryId, Outcome>,
    /// Committed batches in commit order (for C1 and C2).
    pub commits: Vec<CommitStat>,
    /// Whether the manifest is known to be in SDFS.
    pub manifest_stored: bool,
    /// When the last query was committed.
    pub completed_at: Option<Millis>,
}

impl JobState {
    fn new(manifest: JobManifest) -> Self {
        JobState {
            manifest,
            outcomes: BTreeMap::new(),
            commits: Vec::new(),
            manifest_stored: false,
            completed_at: None,
        }
    }

    /// Whether `query` is one of the job's queries.
    pub fn has_query(&self, query: &str) -> bool {
        self.manifest
            .queries
            .binary_search_by(|q| q.as_str().cmp(query))
            .is_ok()
    }

    /// Whether `query` already has an outcome (a second result is a duplicate).
    pub fn is_done(&self, query: &str) -> bool {
        self.outcomes.contains_key(query)
    }

    /// Whether every query has an outcome.
    pub fn is_complete(&self) -> bool {
        self.outcomes.len() >= self.manifest.queries.len()
    }

    /// Queries committed with a result.
    pub fn ok_count(&self) -> u64 {
        self.outcomes
            .values()
            .filter(|o| **o == Outcome::Ok)
            .count() as u64
    }
}

/// A result file found in SDFS while rebuilding after coordinator and standby died.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultFound {
    /// Parsed from the name with `parse_result_name`.
    pub job: JobId,
    /// Parsed from the name.
    pub query: QueryId,
    /// Per-query processing time, if the result file records it.
    pub per_query_ms: Option<f64>,
    /// When it was written, if the result file records it.
    pub at: Option<Millis>,
    /// Who wrote it, if recorded.
    pub worker: Option<NodeAddr>,
}

/// The replicated state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoordState {
    /// Every job ever accepted in this cluster's life (finished ones too: C1 totals).
    pub jobs: BTreeMap<JobId, JobState>,
    /// Batch sizes changed by C3 (others use the configured default).
    pub batch_sizes: BTreeMap<String, u32>,
    /// Recent per-query processing times per model, newest last.
    pub query_ms: BTreeMap<String, VecDeque<f64>>,
}

impl CoordState {
    /// The state of a cluster that has run nothing yet.
    pub fn new() -> Self {
        CoordState {
            jobs: BTreeMap::new(),
            batch_sizes: BTreeMap::new(),
            query_ms: BTreeMap::new(),
        }
    }

    /// Applies one record. Idempotent: a query already committed stays as it was (first
    /// result wins), a job already known is not replaced.
    pub fn apply(&mut self, record: &Record, cfg: &JobsConfig) {
        match record {
            Record::JobAccepted { manifest } => {
                self.jobs
                    .entry(manifest.id)
                    .or_insert_with(|| JobState::new(manifest.clone()));
            }
            Record::ManifestStored { job } => {
                if let Some(j) = self.jobs.get_mut(job) {
                    j.manifest_stored = true;
                }
            }
            Record::BatchSizeSet { model, size } => {
                self.batch_sizes.insert(model.clone(), *size);
            }
            Record::BatchCommitted(commit) => self.apply_commit(commit, cfg),
        }
    }

    fn apply_commit(&mut self, c: &Commit, cfg: &JobsConfig) {
        let Some(job) = self.jobs.get_mut(&c.job) else {
            return;
        };
        let mut ok = 0u32;
        let mut failed = 0u32;
        for (list, outcome) in [(&c.ok, Outcome::Ok), (&c.failed, Outcome::Failed)] {
            for q in list {
                if job.has_query(q) && !job.is_done(q) {
                    job.outcomes.insert(q.clone(), outcome);
                    match outcome {
                        Outcome::Ok => ok += 1,
                        Outcome::Failed => failed += 1,
                    }
                }
            }
        }
        if ok + failed == 0 {
            return;
        }
        let per_query_ms = if c.per_query_ms.is_finite() && c.per_query_ms >= 0.0 {
            c.per_query_ms
        } else {
            0.0
        };
        job.commits.push(CommitStat {
            at: c.at,
            ok,
            failed,
            per_query_ms,
            worker: c.worker.clone(),
        });
        if job.is_complete() && job.completed_at.is_none() {
            job.completed_at = Some(c.at);
        }
        if ok > 0 {
            let model = job.manifest.model.clone();
            self.push_sample(&model, per_query_ms, cfg.time_samples);
        }
    }

    fn push_sample(&mut self, model: &str, ms: f64, keep: usize) {
        let samples = self.query_ms.entry(model.to_string()).or_default();
        samples.push_back(ms);
        while samples.len() > keep {
            samples.pop_front();
        }
    }

    /// The batch size the next batch of `model` gets.
    pub fn batch_size(&self, model: &str, cfg: &JobsConfig) -> u32 {
        self.batch_sizes
            .get(model)
            .copied()
            .or_else(|| cfg.model(model).map(|m| m.batch_size))
            .unwrap_or(1)
            .max(1)
    }

    /// Expected processing time of one query of `model` (ms): the median of the recent
    /// measurements (a median, so one slow worker does not stretch every deadline), or
    /// the configured prior before anything was measured.
    pub fn expected_query_ms(&self, model: &str, cfg: &JobsConfig) -> f64 {
        let prior = cfg.model(model).map_or(100.0, |m| m.prior_query_ms);
        let Some(samples) = self.query_ms.get(model) else {
            return prior;
        };
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| *x > 0.0).collect();
        if v.is_empty() {
            return prior;
        }
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(prior)
    }

    /// The job a client's submission already created, so a resubmission is not a new job.
    pub fn job_for_request(&self, client: &NodeAddr, request_id: u64) -> Option<JobId> {
        self.jobs
            .values()
            .find(|j| &j.manifest.client == client && j.manifest.request_id == request_id)
            .map(|j| j.manifest.id)
    }

    /// The id the next job accepted in `epoch` gets.
    pub fn next_job_id(&self, epoch: u64) -> JobId {
        let seq = self
            .jobs
            .keys()
            .filter(|id| id.epoch == epoch)
            .map(|id| id.seq)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        JobId { epoch, seq }
    }

    /// Rebuilds the state from SDFS alone (coordinator and standby died together):
    /// every job whose manifest is there, every query whose result file is there counts
    /// as committed. Nothing committed is lost, because a worker writes a result before
    /// reporting it and a job is acknowledged only after its manifest is written.
    /// Failed outcomes and C3 sizes are not in SDFS: failed queries are retried, batch
    /// sizes fall back to the configured defaults.
    pub fn rebuild_from_sdfs(
        cfg: &JobsConfig,
        manifests: Vec<JobManifest>,
        results: &[ResultFound],
    ) -> Self {
        let mut st = CoordState::new();
        for mut m in manifests {
            m.queries.sort();
            m.queries.dedup();
            let mut j = JobState::new(m);
            j.manifest_stored = true;
            st.jobs.insert(j.manifest.id, j);
        }
        let mut found: Vec<&ResultFound> = results.iter().collect();
        // Oldest first, so the time samples kept are the most recent ones.
        found.sort_by_key(|r| (r.at.unwrap_or(0), r.job, r.query.clone()));
        for r in found {
            let Some(job) = st.jobs.get_mut(&r.job) else {
                continue;
            };
            if !job.has_query(&r.query) || job.is_done(&r.query) {
                continue;
            }
            job.outcomes.insert(r.query.clone(), Outcome::Ok);
            let at = r.at.unwrap_or(0);
            if job.is_complete() {
                job.completed_at = Some(at);
            }
            if let Some(ms) = r.per_query_ms.filter(|ms| ms.is_finite() && *ms >= 0.0) {
                job.commits.push(CommitStat {
                    at,
                    ok: 1,
                    failed: 0,
                    per_query_ms: ms,
                    worker: r.worker.clone().unwrap_or_else(|| NodeAddr(String::new())),
                });
                let model = job.manifest.model.clone();
                st.push_sample(&model, ms, cfg.time_samples);
            }
        }
        st
    }
}

impl Default for CoordState {
    fn default() -> Self {
        CoordState::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(id: JobId, queries: &[&str]) -> JobManifest {
        JobManifest {
            id,
            model: "resnet50".into(),
            input: "in/".into(),
            queries: queries.iter().map(|q| q.to_string()).collect(),
            client: "client:1".into(),
            request_id: 7,
            submitted_at: 0,
        }
    }

    fn commit(job: JobId, ok: &[&str], at: Millis) -> Record {
        Record::BatchCommitted(Commit {
            job,
            ok: ok.iter().map(|q| q.to_string()).collect(),
            failed: vec![],
            per_query_ms: 10.0,
            worker: "w:1".into(),
            at,
        })
    }

    #[test]
    fn first_result_wins_and_duplicates_do_not_count() {
        let cfg = JobsConfig::default();
        let id = JobId { epoch: 1, seq: 1 };
        let mut st = CoordState::new();
        st.apply(
            &Record::JobAccepted {
                manifest: manifest(id, &["a", "b", "c"]),
            },
            &cfg,
        );
        st.apply(&commit(id, &["a", "b"], 5), &cfg);
        st.apply(&commit(id, &["b", "zzz"], 6), &cfg);
        let j = &st.jobs[&id];
        assert_eq!(j.outcomes.len(), 2);
        assert_eq!(
            j.commits.len(),
            1,
            "a commit with nothing new leaves no trace"
        );
        assert!(!j.is_complete());
        st.apply(&commit(id, &["c"], 9), &cfg);
        assert_eq!(st.jobs[&id].completed_at, Some(9));
    }

    #[test]
    fn rebuild_counts_every_result_once_and_ignores_strangers() {
        let cfg = JobsConfig::default();
        let id = JobId { epoch: 2, seq: 1 };
        let found = |q: &str| ResultFound {
            job: id,
            query: q.into(),
            per_query_ms: Some(12.0),
            at: Some(100),
            worker: None,
        };
        let results = vec![found("b"), found("a"), found("a"), found("nope")];
        let st =
            CoordState::rebuild_from_sdfs(&cfg, vec![manifest(id, &["b", "a", "c"])], &results);
        let j = &st.jobs[&id];
        assert_eq!(j.manifest.queries, vec!["a", "b", "c"]);
        assert_eq!(j.outcomes.len(), 2);
        assert!(j.manifest_stored);
        assert_eq!(st.expected_query_ms("resnet50", &cfg), 12.0);
        assert_eq!(st.next_job_id(2), JobId { epoch: 2, seq: 2 });
        assert_eq!(st.next_job_id(3), JobId { epoch: 3, seq: 1 });
    }

    #[test]
    fn expected_time_is_robust_to_one_slow_sample() {
        let cfg = JobsConfig::default();
        let mut st = CoordState::new();
        for ms in [10.0, 11.0, 9.0, 500.0, 10.5] {
            st.push_sample("resnet50", ms, cfg.time_samples);
        }
        assert_eq!(st.expected_query_ms("resnet50", &cfg), 10.5);
        // A model with no samples yet falls back to its configured prior.
        let prior = cfg
            .models
            .iter()
            .find(|m| m.name == "inception_v3")
            .unwrap()
            .prior_query_ms;
        assert_eq!(st.expected_query_ms("inception_v3", &cfg), prior);
    }
}
