//! Identifiers, fencing terms, job manifests and the configuration of the job layer.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::types::{Millis, NodeAddr};

/// One query: its position in the job's query order (see [`Queries`]). A number, not a
/// name, so per-query state stays a few bytes however long the input names are.
pub type QueryId = u32;

/// The most queries one job may have (per-query state is indexed by `u32`).
pub const MAX_QUERIES: u64 = 1 << 31;

/// A job's id. The epoch of the reign that accepted it is part of the id, so a
/// coordinator of a later reign can never hand out an id that a dead coordinator
/// already used (perhaps for a manifest or results the standby never heard of).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct JobId {
    /// Epoch of the reign that accepted the job.
    pub epoch: u64,
    /// Order of acceptance within that reign, from 1.
    pub seq: u32,
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl From<JobId> for String {
    fn from(j: JobId) -> String {
        j.to_string()
    }
}

impl TryFrom<String> for JobId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse().map_err(|_| format!("{s:?} is not a job id"))
    }
}

impl FromStr for JobId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (e, n) = s.split_once('-').ok_or(())?;
        Ok(JobId {
            epoch: e.parse().map_err(|_| ())?,
            seq: n.parse().map_err(|_| ())?,
        })
    }
}

/// The highest epoch believed. Epochs grow by one per takeover, so a working cluster
/// never comes near it; a job id or term above it (a manifest named
/// `jobs/18446744073709551614-1.manifest`, a forged reign) is ignored instead of making
/// the next epoch wrap to 0 and fence the new coordinator at once.
pub const MAX_EPOCH: u64 = 1 << 40;

/// The epoch after `epoch`, if it is still plausible.
pub fn next_epoch(epoch: u64) -> Option<u64> {
    epoch.checked_add(1).filter(|e| *e <= MAX_EPOCH)
}

/// One dispatch of a batch. A re-issued batch gets a new id: the two runs are told
/// apart, and whichever reports first commits the queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BatchId {
    /// Epoch of the reign that dispatched it.
    pub epoch: u64,
    /// Dispatch order within that reign.
    pub seq: u64,
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.seq)
    }
}

/// The fencing token of a reign. Ordered by epoch, then by coordinator address: two
/// nodes that claim the same epoch from inconsistent membership views are still
/// totally ordered, so exactly one of them wins everywhere.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term {
    /// Raised by one at every takeover; at most [`MAX_EPOCH`].
    pub epoch: u64,
    /// The coordinator of this reign.
    pub coordinator: NodeAddr,
}

/// What every node knows about the current reign: who coordinates, who stands by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reign {
    /// The fencing token.
    pub term: Term,
    /// The hot standby, if the cluster has a second live node.
    pub standby: Option<NodeAddr>,
    /// Raised when the coordinator picks a new standby without a new epoch.
    pub view: u64,
}

impl Reign {
    /// Whether `self` is newer news than `other`.
    pub fn supersedes(&self, other: &Reign) -> bool {
        (&self.term, self.view) > (&other.term, other.view)
    }
}

/// One input of a job: an SDFS file (one query), or a tar archive in SDFS whose regular
/// file entries are one query each, in archive order. Archives let a million images be
/// a thousand SDFS objects: uploaded in a thousand puts, listed in a thousand names,
/// fetched by a worker once for many batches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Source {
    /// The SDFS name.
    pub name: String,
    /// `None`: the file is one query. `Some(n)`: an archive with `n` file entries.
    pub entries: Option<u32>,
}

impl Source {
    /// How many queries this input is.
    pub fn queries(&self) -> u64 {
        self.entries.map_or(1, u64::from)
    }
}

/// Where each query of a job comes from: the sources, in order, and the first query of
/// each (a prefix sum), so query `q` is found by binary search instead of a table with
/// one entry per query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queries {
    sources: Vec<Source>,
    starts: Vec<u32>,
    total: u32,
}

/// What one query reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryInput {
    /// The SDFS name of the file or archive.
    pub source: String,
    /// For an archive, the entry (0-based, file entries only, in archive order).
    pub entry: Option<u32>,
}

impl Queries {
    /// Sorts and de-duplicates the sources (by name), drops empty archives, and refuses
    /// more than [`MAX_QUERIES`] queries in all.
    pub fn new(mut sources: Vec<Source>) -> Result<Self, u64> {
        sources.retain(|s| !s.name.is_empty() && s.entries != Some(0));
        sources.sort();
        sources.dedup_by(|a, b| a.name == b.name);
        let mut starts = Vec::with_capacity(sources.len());
        let mut total: u64 = 0;
        for s in &sources {
            starts.push(total as u32);
            total += s.queries();
            if total > MAX_QUERIES {
                return Err(total);
            }
        }
        Ok(Queries {
            sources,
            starts,
            total: total as u32,
        })
    }

    /// The number of queries.
    pub fn len(&self) -> u32 {
        self.total
    }

    /// Whether there is no query at all.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The sources, sorted by name.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// What query `q` reads; `None` for a query the job does not have.
    pub fn input(&self, q: QueryId) -> Option<QueryInput> {
        if q >= self.total {
            return None;
        }
        let i = self.starts.partition_point(|s| *s <= q).checked_sub(1)?;
        let s = &self.sources[i];
        Some(QueryInput {
            source: s.name.clone(),
            entry: s.entries.map(|_| q - self.starts[i]),
        })
    }

    /// The name a user sees for query `q`: the file's name, or `ARCHIVE!N` for the
    /// Nth entry of an archive (results carry the entry's own name too).
    pub fn display(&self, q: QueryId) -> String {
        match self.input(q) {
            Some(QueryInput {
                source,
                entry: Some(e),
            }) => format!("{source}!{e}"),
            Some(QueryInput { source, .. }) => source,
            None => format!("#{q}"),
        }
    }
}

/// What the coordinator writes to SDFS when it accepts a job: enough to rebuild the
/// job table from SDFS alone if coordinator and standby die together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobManifest {
    /// The job's id.
    pub id: JobId,
    /// The model that runs every query.
    pub model: String,
    /// The SDFS prefix (or folder) the client named.
    pub input: String,
    /// The queries: files and archives, sorted by name.
    pub queries: Queries,
    /// Who submitted it (gets the acceptance and completion messages).
    pub client: NodeAddr,
    /// The client's id for the submission, so a resubmission is recognised.
    pub request_id: u64,
    /// Coordinator clock at acceptance.
    pub submitted_at: Millis,
    /// The weights every batch of the job runs on: the model's active version when the
    /// job was accepted (a version published later applies to later jobs).
    #[serde(default)]
    pub weights: crate::weights::WeightsPin,
}

/// One line of a batch's result object: one query's output, or its error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResult {
    /// The job (as its id's text).
    pub job: String,
    /// The query's number in the job (its position in the sorted inputs).
    pub q: QueryId,
    /// The input's name: the SDFS file, or `ARCHIVE!ENTRY-NAME` for an archive entry.
    pub query: String,
    /// The model that ran it.
    pub model: String,
    /// Top-5 classes (empty when `error` is set).
    pub top5: Vec<dml_models::TopClass>,
    /// Why the input could not be classified (not an image, say).
    pub error: Option<String>,
    /// The network ran on synthetic weights: labels mean nothing.
    pub synthetic: bool,
    /// The published model version that produced it (`None`: nothing was published and
    /// the node's local file or synthetic weights ran).
    #[serde(default)]
    pub weights_version: Option<u64>,
    /// SHA-256 of the weight file that produced it, or `synthetic`.
    #[serde(default)]
    pub weights: String,
    /// Made by `dml bench scale`'s fixed-logits model, which computes nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bench_fixed_logits: bool,
    /// The precision the model computed in (`fp32`, `bf16`, `int8`); absent for the
    /// fixed-logits benchmark model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// Processing time per query of its batch (ms).
    pub per_query_ms: f64,
    /// The worker that wrote it.
    pub worker: String,
    /// Wall time of the write (Unix ms).
    pub at_wall_ms: u64,
}

/// SDFS name of a job's manifest.
pub fn manifest_name(job: JobId) -> String {
    format!("jobs/{job}.manifest")
}

/// SDFS name of the result object of one run of a batch: one JSON line per query
/// ([`QueryResult`]). Each dispatch has its own id, so two runs of the same queries write
/// two objects; the coordinator's commit says which one counts for each query.
pub fn result_name(job: JobId, batch: BatchId) -> String {
    format!("results/{job}/batch-{batch}.jsonl")
}

/// The inverse of [`result_name`]; `None` for a name that is not a result object.
pub fn parse_result_name(name: &str) -> Option<(JobId, BatchId)> {
    let rest = name.strip_prefix("results/")?;
    let (job, obj) = rest.split_once('/')?;
    let batch = obj.strip_prefix("batch-")?.strip_suffix(".jsonl")?;
    let (e, n) = batch.split_once('.')?;
    let batch = BatchId {
        epoch: e.parse().ok()?,
        seq: n.parse().ok()?,
    };
    Some((job.parse().ok()?, batch))
}

/// The job whose manifest or result an SDFS name is, if it is one.
pub fn job_of_name(name: &str) -> Option<JobId> {
    if let Some(rest) = name.strip_prefix("jobs/") {
        return rest.strip_suffix(".manifest")?.parse().ok();
    }
    parse_result_name(name).map(|(job, _)| job)
}

/// A model the cluster can run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Name used by clients (`C3 resnet50 8`).
    pub name: String,
    /// Batch size until C3 changes it.
    pub batch_size: u32,
    /// Per-query time assumed before anything was measured (ms).
    pub prior_query_ms: f64,
}

/// Tunables of the job layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobsConfig {
    /// The models that can be run.
    pub models: Vec<ModelSpec>,
    /// k: a batch not done within k times its expected time is re-issued elsewhere.
    pub slow_factor: f64,
    /// Lower bound of that deadline, so a tiny batch is not re-issued for jitter.
    pub slow_floor_ms: Millis,
    /// Window of the C1 query rate.
    pub rate_window_ms: Millis,
    /// A worker leaves its job only when that job is ahead of the most behind job by
    /// more than this many of its batches (hysteresis against flapping).
    pub hysteresis_batches: f64,
    /// A query whose batch failed this many times is committed as failed.
    pub max_attempts: u32,
    /// Upper bound for C3.
    pub max_batch_size: u32,
    /// How many recent per-query compute times per model the time estimate uses.
    pub time_samples: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            models: vec![
                ModelSpec {
                    name: "resnet50".into(),
                    batch_size: 8,
                    // Measured on one 2-core node (docs/BENCHMARKS.md); replaced by the
                    // median of measured times as soon as batches complete.
                    prior_query_ms: 250.0,
                },
                ModelSpec {
                    name: "inception_v3".into(),
                    batch_size: 8,
                    prior_query_ms: 400.0,
                },
            ],
            slow_factor: 4.0,
            // Generous: a batch on a busy machine can take tens of seconds, and a re-issue
            // doubles the work of the batch.
            slow_floor_ms: 30_000,
            rate_window_ms: 10_000,
            hysteresis_batches: 1.0,
            max_attempts: 4,
            max_batch_size: 256,
            time_samples: 32,
        }
    }
}

impl JobsConfig {
    /// Checks the settings once, so the cores never meet a nonsensical value.
    pub fn validate(self) -> Result<Self, ConfigError> {
        if self.models.is_empty() {
            return Err(ConfigError::NoModels);
        }
        for (i, m) in self.models.iter().enumerate() {
            if self.models.iter().skip(i + 1).any(|o| o.name == m.name) {
                return Err(ConfigError::DuplicateModel(m.name.clone()));
            }
            if m.batch_size == 0 || m.batch_size > self.max_batch_size {
                return Err(ConfigError::BadBatchSize(m.name.clone(), m.batch_size));
            }
            if !(m.prior_query_ms.is_finite() && m.prior_query_ms > 0.0) {
                return Err(ConfigError::BadPrior(m.name.clone()));
            }
        }
        if !(self.slow_factor.is_finite() && self.slow_factor > 1.0) {
            return Err(ConfigError::BadSlowFactor);
        }
        if !(self.hysteresis_batches.is_finite() && self.hysteresis_batches >= 0.0) {
            return Err(ConfigError::BadHysteresis);
        }
        if self.rate_window_ms == 0 || self.max_attempts == 0 || self.time_samples == 0 {
            return Err(ConfigError::Zero);
        }
        Ok(self)
    }

    /// The spec of a model, if it is known.
    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Names of the known models, for error messages.
    pub fn model_names(&self) -> String {
        let names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
        names.join(", ")
    }
}

/// A setting of `JobsConfig` that cannot work; nothing is started.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// At least one model is needed.
    #[error("no models configured")]
    NoModels,
    /// Two models with the same name.
    #[error("model `{0}` configured twice")]
    DuplicateModel(String),
    /// A default batch size of zero or above the maximum.
    #[error("model `{0}`: batch size {1} out of range")]
    BadBatchSize(String, u32),
    /// A prior per-query time that is not a positive number.
    #[error("model `{0}`: prior per-query time must be positive")]
    BadPrior(String),
    /// k must exceed 1, or every batch would be re-issued.
    #[error("slow_factor must be a number above 1")]
    BadSlowFactor,
    /// Hysteresis must be a non-negative number.
    #[error("hysteresis_batches must be a non-negative number")]
    BadHysteresis,
    /// rate window, attempts and time samples must be positive.
    #[error("rate_window_ms, max_attempts and time_samples must be positive")]
    Zero,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_of_name_reads_manifests_and_results_only() {
        let j = JobId { epoch: 7, seq: 3 };
        assert_eq!(job_of_name(&manifest_name(j)), Some(j));
        let b = BatchId { epoch: 7, seq: 9 };
        assert_eq!(job_of_name(&result_name(j, b)), Some(j));
        assert_eq!(job_of_name("jobs/7-3.manifest.tmp"), None);
        assert_eq!(job_of_name("jobs/x.manifest"), None);
        assert_eq!(job_of_name("inputs/7-3.manifest"), None);
    }

    #[test]
    fn result_names_round_trip() {
        let job = JobId { epoch: 3, seq: 12 };
        let batch = BatchId { epoch: 4, seq: 77 };
        let name = result_name(job, batch);
        assert_eq!(name, "results/3-12/batch-4.77.jsonl");
        assert_eq!(parse_result_name(&name), Some((job, batch)));
        assert_eq!(parse_result_name("results/3-12/"), None);
        assert_eq!(parse_result_name("results/3-12/images/cat.jpg"), None);
        assert_eq!(parse_result_name("results/x/batch-1.2.jsonl"), None);
        assert_eq!(parse_result_name("jobs/3-12.manifest"), None);
    }

    #[test]
    fn queries_number_files_and_archive_entries_in_name_order() {
        let src = |n: &str, e: Option<u32>| Source {
            name: n.into(),
            entries: e,
        };
        let q = Queries::new(vec![
            src("in/c.jpg", None),
            src("in/b.tar", Some(3)),
            src("in/a.jpg", None),
            src("in/empty.tar", Some(0)),
            src("in/a.jpg", None),
        ])
        .unwrap();
        assert_eq!(q.len(), 5);
        let at = |i| q.input(i).map(|x| (x.source, x.entry));
        assert_eq!(at(0), Some(("in/a.jpg".into(), None)));
        assert_eq!(at(1), Some(("in/b.tar".into(), Some(0))));
        assert_eq!(at(3), Some(("in/b.tar".into(), Some(2))));
        assert_eq!(at(4), Some(("in/c.jpg".into(), None)));
        assert_eq!(at(5), None);
        assert_eq!(q.display(2), "in/b.tar!1");
        assert!(Queries::new(vec![
            src("x.tar", Some(u32::MAX)),
            src("y.tar", Some(u32::MAX))
        ])
        .is_err());
    }

    #[test]
    fn terms_order_by_epoch_then_address() {
        let a = Term {
            epoch: 2,
            coordinator: "b:1".into(),
        };
        let b = Term {
            epoch: 3,
            coordinator: "a:1".into(),
        };
        let c = Term {
            epoch: 3,
            coordinator: "c:1".into(),
        };
        assert!(a < b && b < c);
    }

    #[test]
    fn config_validation_rejects_nonsense() {
        assert!(JobsConfig::default().validate().is_ok());
        let mut c = JobsConfig::default();
        c.models[0].batch_size = 0;
        assert!(matches!(c.validate(), Err(ConfigError::BadBatchSize(..))));
        let mut c = JobsConfig::default();
        c.models.push(c.models[0].clone());
        assert!(matches!(c.validate(), Err(ConfigError::DuplicateModel(_))));
        let c = JobsConfig {
            slow_factor: 0.5,
            ..JobsConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::BadSlowFactor));
    }
}
