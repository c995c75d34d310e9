//! The coordinator state that must survive a takeover: the job table, committed
//! results with their timings (so C1 and C2 survive), batch sizes and the per-model
//! time estimates. The coordinator and its standby hold identical copies because both
//! change it only through [`CoordState::apply`] on the same records in the same order.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::record::{Commit, Record};
use super::types::{BatchId, JobId, JobManifest, JobsConfig, QueryId};
use crate::types::{Millis, NodeAddr};

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

/// [`JobState::outcome`] of a query that has none yet.
pub const OPEN: u32 = 0;
/// [`JobState::outcome`] of a query that failed `max_attempts` times.
pub const FAILED: u32 = u32::MAX;

/// How a query ended, as [`JobState::outcome_of`] tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Its result is in the result object of this run.
    Ok(BatchId),
    /// It failed `max_attempts` times.
    Failed,
}

/// One job as the coordinator and standby know it. Per query it keeps 4 bytes (which
/// result object holds the query's committed result), so a million-query job costs
/// about 4 MB here, whatever the input names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// What was accepted.
    pub manifest: JobManifest,
    /// Per query: [`OPEN`], [`FAILED`], or 1 + the index in `objects` of the run whose
    /// result object holds its committed result.
    #[serde(with = "packed_u32")]
    pub outcome: Vec<u32>,
    /// The runs whose result objects hold committed results, in commit order.
    pub objects: Vec<BatchId>,
    /// Queries committed with a result.
    pub ok: u64,
    /// Queries committed as failed.
    pub failed: u64,
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
            outcome: vec![OPEN; manifest.queries.len() as usize],
            manifest,
            objects: Vec::new(),
            ok: 0,
            failed: 0,
            commits: Vec::new(),
            manifest_stored: false,
            completed_at: None,
        }
    }

    /// The number of queries.
    pub fn total(&self) -> u64 {
        u64::from(self.manifest.queries.len())
    }

    /// Whether `query` is one of the job's queries.
    pub fn has_query(&self, query: QueryId) -> bool {
        query < self.manifest.queries.len()
    }

    /// Whether `query` already has an outcome (a second result is a duplicate). A query
    /// the job does not have counts as done, so nothing ever schedules it.
    pub fn is_done(&self, query: QueryId) -> bool {
        self.outcome.get(query as usize).is_none_or(|o| *o != OPEN)
    }

    /// How `query` ended, if it has.
    pub fn outcome_of(&self, query: QueryId) -> Option<Outcome> {
        match *self.outcome.get(query as usize)? {
            OPEN => None,
            FAILED => Some(Outcome::Failed),
            k => self.objects.get(k as usize - 1).map(|b| Outcome::Ok(*b)),
        }
    }

    /// Queries with an outcome.
    pub fn processed(&self) -> u64 {
        self.ok + self.failed
    }

    /// Whether every query has an outcome.
    pub fn is_complete(&self) -> bool {
        self.processed() >= self.total()
    }

    /// Queries committed with a result.
    pub fn ok_count(&self) -> u64 {
        self.ok
    }

    /// Records the outcomes of one run; returns how many were new (ok, failed). The
    /// first outcome of a query wins.
    fn commit(&mut self, batch: BatchId, ok: &[QueryId], failed: &[QueryId]) -> (u32, u32) {
        let mut slot = None;
        let mut n_ok = 0u32;
        for q in ok {
            if self.is_done(*q) {
                continue;
            }
            let k = *slot.get_or_insert_with(|| {
                self.objects.push(batch);
                self.objects.len() as u32
            });
            self.outcome[*q as usize] = k;
            n_ok += 1;
        }
        let mut n_failed = 0u32;
        for q in failed {
            if !self.is_done(*q) {
                self.outcome[*q as usize] = FAILED;
                n_failed += 1;
            }
        }
        self.ok += u64::from(n_ok);
        self.failed += u64::from(n_failed);
        (n_ok, n_failed)
    }
}

/// `Vec<u32>` as one MessagePack `bin` of little-endian words: a million outcomes are
/// 4 MB in a snapshot instead of up to 5 MB of integers parsed one by one.
mod packed_u32 {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u32], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        s.serialize_bytes(&bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        let bytes: serde_bytes_buf::Buf = Deserialize::deserialize(d)?;
        let b = bytes.0;
        if !b.len().is_multiple_of(4) {
            return Err(D::Error::custom("packed u32s: length not a multiple of 4"));
        }
        Ok(b.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Accepts `bin` (what we write) and an array of bytes (what a JSON round trip
    /// gives), like `serde_bytes` would.
    mod serde_bytes_buf {
        use std::fmt;

        use serde::de::{SeqAccess, Visitor};
        use serde::{Deserialize, Deserializer};

        pub struct Buf(pub Vec<u8>);

        impl<'de> Deserialize<'de> for Buf {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Buf, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Buf;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E>(self, v: &[u8]) -> Result<Buf, E> {
                        Ok(Buf(v.to_vec()))
                    }
                    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Buf, E> {
                        Ok(Buf(v))
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Buf, A::Error> {
                        let mut out = Vec::new();
                        while let Some(b) = seq.next_element::<u8>()? {
                            out.push(b);
                        }
                        Ok(Buf(out))
                    }
                }
                d.deserialize_byte_buf(V)
            }
        }
    }
}

/// A result object found in SDFS while rebuilding after coordinator and standby died.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultFound {
    /// Parsed from the name with `parse_result_name`.
    pub job: JobId,
    /// The run that wrote it (from the name).
    pub batch: BatchId,
    /// The queries it holds a result for (read from the object).
    pub queries: Vec<QueryId>,
    /// Per-query processing time, if the object records it.
    pub per_query_ms: Option<f64>,
    /// When it was written, if recorded.
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
        let (ok, failed) = job.commit(c.batch, &c.ok, &c.failed);
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
    /// every job whose manifest is there, every query with a result in a result object
    /// counts as committed (the object of the oldest run, when two runs wrote one).
    /// Nothing committed is lost, because a worker writes its result object before
    /// reporting it and a job is acknowledged only after its manifest is written.
    /// Failed outcomes and C3 sizes are not in SDFS: failed queries are retried, batch
    /// sizes fall back to the configured defaults.
    pub fn rebuild_from_sdfs(
        cfg: &JobsConfig,
        manifests: Vec<JobManifest>,
        results: &[ResultFound],
    ) -> Self {
        let mut st = CoordState::new();
        for m in manifests {
            let mut j = JobState::new(m);
            j.manifest_stored = true;
            st.jobs.insert(j.manifest.id, j);
        }
        let mut found: Vec<&ResultFound> = results.iter().collect();
        // Oldest first, so the time samples kept are the most recent ones.
        found.sort_by_key(|r| (r.at.unwrap_or(0), r.job, r.batch));
        for r in found {
            let Some(job) = st.jobs.get_mut(&r.job) else {
                continue;
            };
            let (ok, _) = job.commit(r.batch, &r.queries, &[]);
            if ok == 0 {
                continue;
            }
            let at = r.at.unwrap_or(0);
            if job.is_complete() {
                job.completed_at = Some(at);
            }
            if let Some(ms) = r.per_query_ms.filter(|ms| ms.is_finite() && *ms >= 0.0) {
                job.commits.push(CommitStat {
                    at,
                    ok,
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
    use crate::jobs::types::{Queries, Source};

    fn manifest(id: JobId, queries: &[&str]) -> JobManifest {
        let sources = queries
            .iter()
            .map(|q| Source {
                name: q.to_string(),
                entries: None,
            })
            .collect();
        JobManifest {
            id,
            model: "resnet50".into(),
            input: "in/".into(),
            queries: Queries::new(sources).unwrap(),
            client: "client:1".into(),
            request_id: 7,
            submitted_at: 0,
            weights: Default::default(),
        }
    }

    fn batch(seq: u64) -> BatchId {
        BatchId { epoch: 1, seq }
    }

    fn commit(job: JobId, b: u64, ok: &[QueryId], at: Millis) -> Record {
        Record::BatchCommitted(Commit {
            job,
            batch: batch(b),
            ok: ok.to_vec(),
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
        st.apply(&commit(id, 1, &[0, 1], 5), &cfg);
        st.apply(&commit(id, 2, &[1, 99], 6), &cfg);
        let j = &st.jobs[&id];
        assert_eq!(j.processed(), 2);
        assert_eq!(j.outcome_of(1), Some(Outcome::Ok(batch(1))));
        assert_eq!(
            j.objects,
            vec![batch(1)],
            "a run with nothing new is no object"
        );
        assert_eq!(
            j.commits.len(),
            1,
            "a commit with nothing new leaves no trace"
        );
        assert!(!j.is_complete());
        st.apply(&commit(id, 3, &[2], 9), &cfg);
        let j = &st.jobs[&id];
        assert_eq!(j.completed_at, Some(9));
        assert_eq!(j.outcome_of(2), Some(Outcome::Ok(batch(3))));
        assert_eq!(j.outcome_of(0), Some(Outcome::Ok(batch(1))));
    }

    #[test]
    fn outcomes_survive_a_snapshot_round_trip_compactly() {
        let cfg = JobsConfig::default();
        let id = JobId { epoch: 1, seq: 1 };
        let mut st = CoordState::new();
        let names: Vec<String> = (0..10_000).map(|i| format!("in/{i:05}")).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        st.apply(
            &Record::JobAccepted {
                manifest: manifest(id, &refs),
            },
            &cfg,
        );
        let qs: Vec<QueryId> = (0..5_000).collect();
        st.apply(&commit(id, 4, &qs, 5), &cfg);
        let bytes = rmp_serde::to_vec_named(&st).unwrap();
        let back: CoordState = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, st);
        assert_eq!(back.jobs[&id].outcome.len(), 10_000);
        assert_eq!(back.jobs[&id].ok, 5_000);
    }

    #[test]
    fn rebuild_counts_every_result_once_and_ignores_strangers() {
        let cfg = JobsConfig::default();
        let id = JobId { epoch: 2, seq: 1 };
        let found = |b: u64, qs: &[QueryId]| ResultFound {
            job: id,
            batch: batch(b),
            queries: qs.to_vec(),
            per_query_ms: Some(12.0),
            at: Some(100 + b),
            worker: None,
        };
        let results = vec![found(2, &[1]), found(1, &[0, 1]), found(3, &[7])];
        let st =
            CoordState::rebuild_from_sdfs(&cfg, vec![manifest(id, &["b", "a", "c"])], &results);
        let j = &st.jobs[&id];
        assert_eq!(j.manifest.queries.display(0), "a");
        assert_eq!(j.processed(), 2);
        assert_eq!(
            j.outcome_of(1),
            Some(Outcome::Ok(batch(1))),
            "oldest run wins"
        );
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
