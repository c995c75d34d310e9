//! The job protocol: every message between clients, the coordinator, its standby and
//! the workers, and the records the coordinator replicates to its standby.

use serde::{Deserialize, Serialize};

use super::error::JobError;
pub use super::record::{Commit, Record};
use super::state::CoordState;
use super::stats::{Assignment, JobRate, JobShare, JobTimes};
use super::types::{BatchId, JobId, QueryId, QueryInput, Reign, Term};
use crate::types::Millis;
use crate::weights::{ServingReport, WeightsPin};

/// Coordinator -> worker: run these queries with this model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunBatch {
    /// Fencing token; a worker that has seen a newer term refuses the batch.
    pub term: Term,
    /// This dispatch.
    pub batch: BatchId,
    /// The job the queries belong to (results go under `results/<job>/`).
    pub job: JobId,
    /// The model to run.
    pub model: String,
    /// The queries (numbers in the job).
    pub queries: Vec<QueryId>,
    /// What each query reads, in the order of `queries`.
    pub inputs: Vec<QueryInput>,
    /// The weights the job is pinned to: the batch runs on exactly these.
    #[serde(default)]
    pub weights: WeightsPin,
}

/// Worker -> coordinator: a batch ran; its results are already in SDFS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchDone {
    /// Term of the `RunBatch` (may be older than the receiver's: the facts still count).
    pub term: Term,
    /// The dispatch this answers.
    pub batch: BatchId,
    /// The job.
    pub job: JobId,
    /// Queries whose result is in the batch's result object, already in SDFS
    /// (`result_name(job, batch)`).
    pub results_written: Vec<QueryId>,
    /// Queries it could not process (input unreadable, model error).
    pub failed: Vec<QueryId>,
    /// Worker-measured time from start of fetching to the last result written.
    pub compute_ms: Millis,
    /// The precision the worker's model computed in (C5 shows it per node).
    #[serde(default)]
    pub precision: Option<String>,
}

/// Why a worker did not run a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The batch's term is older than one the worker has seen: the sender is fenced.
    StaleTerm,
    /// The worker's queue for that model is full.
    Busy,
    /// The worker does not serve the job's pinned weights (its local file differs, or it
    /// has none): the batch goes to another worker.
    Weights,
}

/// Which console report a status request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusKind {
    /// C1: query rate over the last window and totals.
    Rates,
    /// C2: query processing time statistics.
    Times,
    /// C5: which node runs which job, and the target shares.
    Assignment,
    /// Where the results of queries `from..from + limit` of `job` are (a page of the
    /// results export: no answer carries a whole job's results).
    Results {
        /// The job.
        job: JobId,
        /// First query of the page.
        from: QueryId,
        /// At most this many queries (the coordinator caps it).
        limit: u32,
    },
}

/// The coordinator's answer to [`StatusKind::Results`]: for each query of the page,
/// which run's result object holds its committed result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultsPage {
    /// The job.
    pub job: JobId,
    /// Its model.
    pub model: String,
    /// Its number of queries.
    pub total: u32,
    /// Queries committed with a result, in the whole job.
    pub ok: u64,
    /// Queries committed as failed, in the whole job.
    pub failed: u64,
    /// Whether every query has an outcome.
    pub complete: bool,
    /// The first query of the page.
    pub from: QueryId,
    /// Per query from `from`: `state::OPEN`, `state::FAILED`, or 1 + an index into
    /// `objects`.
    pub outcome: Vec<u32>,
    /// The runs whose result objects the page refers to.
    pub objects: Vec<BatchId>,
    /// The input name of every query of the page without a result (failed or open):
    /// a failed row still names its input.
    pub unfinished: Vec<(QueryId, String)>,
}

/// The answer to a status request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StatusReport {
    /// C1, one row per job.
    Rates(Vec<JobRate>),
    /// C2, one row per job.
    Times(Vec<JobTimes>),
    /// A page of the results index.
    Results(ResultsPage),
    /// C5: one row per live worker, and the worker-time share each job is entitled to.
    Assignment {
        /// Node -> job/model.
        nodes: Vec<Assignment>,
        /// Per running job: measured per-query time and target share of worker time.
        shares: Vec<JobShare>,
        /// Why nodes do not serve a model's active weights (`node: reason`).
        #[serde(default)]
        weights: Vec<String>,
        /// The batch size (C3) of every model: what new batches are cut with, and what
        /// online inference batches up to.
        #[serde(default)]
        batch_sizes: std::collections::BTreeMap<String, u32>,
    },
}

/// Every message of the job protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// Client -> coordinator: run `model` over every file under `input` (C4).
    SubmitJob {
        /// Client-chosen id; a resubmission with the same id gets the same job.
        request_id: u64,
        /// Model name.
        model: String,
        /// SDFS prefix of the inputs.
        input: String,
    },
    /// Coordinator -> client: the job is accepted (standby has it, manifest in SDFS).
    JobAccepted {
        /// The client's id for the submission.
        request_id: u64,
        /// The job's id.
        job: JobId,
        /// Number of queries.
        queries: u64,
    },
    /// Coordinator -> client: the request was refused; nothing changed.
    Refused {
        /// The client's id for the request.
        request_id: u64,
        /// Why.
        error: JobError,
    },
    /// Coordinator -> client: every query of the job has a committed result.
    JobCompleted {
        /// The job.
        job: JobId,
        /// Queries with a result.
        ok: u64,
        /// Queries that failed `max_attempts` times.
        failed: u64,
    },
    /// Client -> coordinator: C3.
    SetBatchSize {
        /// Client's id for the request.
        request_id: u64,
        /// The model.
        model: String,
        /// The new size.
        size: u32,
    },
    /// Coordinator -> client: C3 is replicated and applies to the next batches.
    BatchSizeSet {
        /// Client's id for the request.
        request_id: u64,
        /// The model.
        model: String,
        /// The new size.
        size: u32,
    },
    /// Client -> coordinator: C1, C2 or C5.
    StatusRequest {
        /// Client's id for the request.
        request_id: u64,
        /// Which report.
        kind: StatusKind,
    },
    /// Coordinator -> client: the report.
    StatusReply {
        /// Client's id for the request.
        request_id: u64,
        /// The report.
        report: StatusReport,
    },
    /// Coordinator -> worker.
    RunBatch(RunBatch),
    /// Worker -> coordinator; repeated until acknowledged.
    BatchDone(BatchDone),
    /// Coordinator -> worker: the commit of this batch is replicated; stop repeating.
    BatchAck {
        /// The dispatch.
        batch: BatchId,
    },
    /// Worker -> coordinator: the batch was not run.
    WorkerRefused {
        /// The dispatch.
        batch: BatchId,
        /// Why.
        reason: RefuseReason,
        /// The newest term the worker knows.
        term: Term,
    },
    /// Coordinator -> standby: one record, numbered; applied strictly in order.
    Replicate {
        /// The coordinator's term; a standby that knows a newer one answers `Fenced`.
        term: Term,
        /// Position in the coordinator's log.
        seq: u64,
        /// The change.
        record: Record,
    },
    /// Coordinator -> new standby: the whole replicated state at `seq`.
    Snapshot {
        /// The reign (makes the receiver standby).
        reign: Reign,
        /// Log position the state includes.
        seq: u64,
        /// The state.
        state: Box<CoordState>,
    },
    /// Standby -> coordinator: everything up to `seq` is applied.
    ReplicateAck {
        /// The term being acknowledged.
        term: Term,
        /// Highest applied position.
        seq: u64,
    },
    /// Standby -> coordinator: a gap in the log; send a snapshot.
    SnapshotRequest {
        /// The term the standby follows.
        term: Term,
    },
    /// Anyone -> a sender of an old term: you are deposed; this is the newer reign.
    Fenced {
        /// The newest reign the refuser knows.
        reign: Reign,
    },
    /// Coordinator -> every member: the current reign (after a takeover, a new standby,
    /// or to a member that joined).
    Reign(Reign),
    /// Worker -> coordinator, periodically: which weights it serves per model.
    Serving(ServingReport),
}

impl Msg {
    /// Whether the node's worker core (rather than its coordinator core) handles it.
    pub fn is_for_worker(&self) -> bool {
        matches!(
            self,
            Msg::RunBatch(_) | Msg::BatchAck { .. } | Msg::Fenced { .. } | Msg::Reign(_)
        )
    }

    /// Whether the node's coordinator core handles it (`Fenced` and `Reign` go to both;
    /// answers to a client go to whoever sent the request).
    pub fn is_for_coordinator(&self) -> bool {
        matches!(
            self,
            Msg::SubmitJob { .. }
                | Msg::SetBatchSize { .. }
                | Msg::StatusRequest { .. }
                | Msg::BatchDone(_)
                | Msg::WorkerRefused { .. }
                | Msg::Replicate { .. }
                | Msg::Snapshot { .. }
                | Msg::ReplicateAck { .. }
                | Msg::SnapshotRequest { .. }
                | Msg::Fenced { .. }
                | Msg::Reign(_)
                | Msg::Serving(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::state::ResultFound;
    use crate::jobs::types::{JobManifest, JobsConfig, Queries, Source};

    fn term() -> Term {
        Term {
            epoch: 4,
            coordinator: "n1:7000".into(),
        }
    }

    #[test]
    fn snapshot_and_batch_messages_round_trip_through_messagepack() {
        let id = JobId { epoch: 4, seq: 1 };
        let manifest = JobManifest {
            id,
            model: "resnet50".into(),
            input: "imgs/".into(),
            queries: Queries::new(vec![
                Source {
                    name: "imgs/a.jpg".into(),
                    entries: None,
                },
                Source {
                    name: "imgs/b.tar".into(),
                    entries: Some(5),
                },
            ])
            .unwrap(),
            client: "c:1".into(),
            request_id: 3,
            submitted_at: 10,
            weights: WeightsPin::Unpublished,
        };
        let found = ResultFound {
            job: id,
            batch: BatchId { epoch: 3, seq: 1 },
            queries: vec![0, 2],
            per_query_ms: Some(20.0),
            at: Some(30),
            worker: None,
        };
        let state = CoordState::rebuild_from_sdfs(&JobsConfig::default(), vec![manifest], &[found]);
        let msgs = vec![
            Msg::Snapshot {
                reign: Reign {
                    term: term(),
                    standby: Some("n2:7000".into()),
                    view: 1,
                },
                seq: 9,
                state: Box::new(state),
            },
            Msg::RunBatch(RunBatch {
                term: term(),
                batch: BatchId { epoch: 4, seq: 2 },
                job: id,
                model: "resnet50".into(),
                queries: vec![3],
                inputs: vec![QueryInput {
                    source: "imgs/b.tar".into(),
                    entry: Some(2),
                }],
                weights: WeightsPin::Unpublished,
            }),
            Msg::Refused {
                request_id: 1,
                error: JobError::NoInputs { input: "x/".into() },
            },
        ];
        for m in msgs {
            let bytes = rmp_serde::to_vec(&m).expect("encode");
            let back: Msg = rmp_serde::from_slice(&bytes).expect("decode");
            assert_eq!(back, m);
        }
    }

    #[test]
    fn status_reports_serialise_as_json_for_the_console() {
        let report = StatusReport::Rates(vec![JobRate {
            job: JobId { epoch: 1, seq: 2 },
            model: "inception_v3".into(),
            rate_qps: 3.5,
            processed: 7,
            failed: 0,
            total: 9,
            complete: false,
        }]);
        let json = serde_json::to_string(&report).expect("json");
        assert!(
            json.contains("inception_v3") && json.contains("3.5"),
            "{json}"
        );
        let back: StatusReport = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, report);
    }
}
