//! The records a coordinator replicates to its standby: every change of the state that
//! must survive the coordinator ([`Record`]), and the commit of a batch's results.

use serde::{Deserialize, Serialize};

use super::types::{BatchId, JobId, JobManifest, QueryId};
use crate::types::{Millis, NodeAddr};

/// One committed batch result, as replicated and stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    /// The job.
    pub job: JobId,
    /// The run whose result object (`result_name(job, batch)`) holds the `ok` results.
    pub batch: BatchId,
    /// Queries committed with a result (first result wins: none committed before).
    pub ok: Vec<QueryId>,
    /// Queries committed as failed after `max_attempts`.
    pub failed: Vec<QueryId>,
    /// Processing time per query of the batch that produced them (ms).
    pub per_query_ms: f64,
    /// The worker whose result won.
    pub worker: NodeAddr,
    /// Coordinator clock at commit.
    pub at: Millis,
}

/// A state change that must survive the coordinator: applied by the coordinator,
/// replicated to the standby, acknowledged only once the standby has it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// A job was accepted.
    JobAccepted {
        /// Its manifest (also written to SDFS).
        manifest: JobManifest,
    },
    /// The job's manifest is in SDFS: a new coordinator need not write it again.
    ManifestStored {
        /// The job.
        job: JobId,
    },
    /// Results were committed.
    BatchCommitted(Commit),
    /// C3: the batch size of a model for the batches formed from now on.
    BatchSizeSet {
        /// The model.
        model: String,
        /// The new size.
        size: u32,
    },
}
