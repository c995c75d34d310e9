//! The error type of the model layer: weights, images and tensor computation.

use std::path::PathBuf;

/// Everything that can go wrong while loading a network or classifying an image.
///
/// Loading errors leave nothing half-built: a `Classifier` either exists with all its
/// weights or not at all. Per-image errors (`Decode`, `Image`) affect only that image.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The weight file could not be opened or parsed at all.
    #[error("weight file {path}: {reason}")]
    WeightFile { path: PathBuf, reason: String },
    /// The file parsed, but one tensor is missing or has the wrong shape; `name` is the
    /// first such tensor in the network's order.
    #[error("weight file {path}: tensor `{name}`: expected shape {expected:?}, found {found}")]
    WeightMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: String,
    },
    /// Writing a weight file failed.
    #[error("cannot write {path}: {reason}")]
    WeightWrite { path: PathBuf, reason: String },
    /// Downloading weights failed; the message says what to copy where instead.
    #[error("{0}")]
    Fetch(String),
    /// The bytes are not an image we can decode.
    #[error("not a readable image: {0}")]
    Decode(String),
    /// The image decoded but cannot be used (empty, absurd size).
    #[error("unusable image: {0}")]
    Image(String),
    /// A model name that is neither `resnet50` nor `inception_v3`.
    #[error("unknown model `{0}` (expected resnet50 or inception_v3)")]
    UnknownModel(String),
    /// The precision has no instruction path on this CPU; the message names the missing
    /// feature and the alternative.
    #[error("{0}")]
    Unsupported(String),
    /// The inference thread pool could not be created.
    #[error("cannot start inference threads: {0}")]
    Threads(String),
    /// A tensor operation failed; with validated weights this means a bug or no memory.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}
