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
    /// No job with this id.
    #[error("unknown job {job}")]
    UnknownJob {
        /// The id asked for.
        job: JobId,
    },
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
