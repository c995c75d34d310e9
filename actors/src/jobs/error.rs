//! Errors of the job layer: refusals a client sees (they travel on the wire), and
//! configuration errors found once at start-up.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::types::JobId;
use crate::types::NodeAddr;

/// Why a client request (submit, C3, status) was refused. A refused request changed
/// nothing; the client may fix it and send it again.
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum JobError {
    /// The model is not one the cluster runs.
    #[error("unknown model `{model}` (known models: {known})")]
    UnknownModel {
        /// The name the client gave.
        model: String,
        /// The names it could have given.
        known: String,
    },
    /// The model's active weights version could not be read, so the job cannot be
    /// pinned to one.
    #[error("cannot read the active weights of `{model}`: {error}")]
    WeightsUnreadable {
        /// The model.
        model: String,
        /// Why.
        error: String,
    },
    /// The input prefix or folder holds no file (missing or empty).
    #[error("no input files under `{input}` (missing or empty)")]
    NoInputs {
        /// The prefix the client gave.
        input: String,
    },
    /// C3 with a size of zero or above the limit.
    #[error("batch size {size} for `{model}` is outside 1..={max}")]
    BadBatchSize {
        /// The model.
        model: String,
        /// The refused size.
        size: u32,
        /// The largest allowed size.
        max: u32,
    },
    /// This node does not coordinate; ask the one named, if known.
    #[error("this node is not the coordinator (coordinator: {})",
        .coordinator.as_ref().map_or_else(|| "unknown".to_string(), |c| c.to_string()))]
    NotCoordinator {
        /// The coordinator this node believes in.
        coordinator: Option<NodeAddr>,
    },
    /// The inputs hold more queries than one job may have.
    #[error("`{input}` holds {queries} queries; one job takes at most {max}: split it into several jobs")]
    TooManyQueries {
        /// The prefix the client gave.
        input: String,
        /// How many it holds (at least).
        queries: u64,
        /// The limit.
        max: u64,
    },
    /// No job with this id.
    #[error("unknown job {job}")]
    UnknownJob {
        /// The id asked for.
        job: JobId,
    },
}

// Defined beside `JobsConfig`, which it validates.
pub use super::types::ConfigError;
