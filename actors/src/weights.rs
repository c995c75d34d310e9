//! Model weights as cluster data (issue 18): the SDFS names of published weight files and
//! of each model's version records, the record itself, the version a job is pinned to,
//! and which pins a node can serve. Shared by the publishing tool, the coordinator and
//! the workers, so all three agree on names and on who may run what.
//!
//! Layout in SDFS, for model `M`:
//! - `weights/M/<sha256>.<ext>`: the file, content-addressed (publishing the same file
//!   twice stores it once);
//! - `models/M/versions`: one SDFS version per model version. Its primary hands out
//!   version numbers one at a time (`high + 1`), so concurrent publishes each get their
//!   own number and none is lost; its newest version is the active one;
//! - `models/M/v/<version>`: a write-once copy of each record, so the whole history
//!   survives SDFS keeping only the newest few versions of a name.

use serde::{Deserialize, Serialize};

/// The weight file formats a node loads (`dml-models` picks the reader by extension).
pub const FORMATS: [&str; 2] = ["safetensors", "pth"];

/// One published version of a model's weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightsRecord {
    /// The model (`resnet50`, `inception_v3`).
    pub model: String,
    /// The model version: the SDFS version of [`versions_name`] this record was stored
    /// as. 0 inside that object itself (its number is only known once stored).
    #[serde(default)]
    pub version: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// Size of the file.
    pub bytes: u64,
    /// `safetensors` or `pth`.
    pub format: String,
    /// The file name the operator published, for people.
    pub file: String,
    /// Wall time of the publish (Unix ms).
    pub published_wall_ms: u64,
}

impl WeightsRecord {
    /// Checks what a node derives file names from: a record read from SDFS is data from
    /// the network, and a forged hash must never name a path outside the cache.
    pub fn check(&self) -> Result<(), String> {
        if !is_sha256(&self.sha256) {
            return Err(format!("{:?} is not a SHA-256", self.sha256));
        }
        if !FORMATS.contains(&self.format.as_str()) {
            return Err(format!("unknown weights format {:?}", self.format));
        }
        Ok(())
    }

    /// What a job submitted now is pinned to.
    pub fn pin(&self) -> WeightsPin {
        WeightsPin::Published(Box::new(Pinned {
            version: self.version,
            sha256: self.sha256.clone(),
            format: self.format.clone(),
        }))
    }
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// SDFS name of a published file.
pub fn blob_name(model: &str, sha256: &str, format: &str) -> String {
    format!("weights/{model}/{sha256}.{format}")
}

/// SDFS name whose versions are the model's versions (the newest is active).
pub fn versions_name(model: &str) -> String {
    format!("models/{model}/versions")
}

/// Prefix of the write-once history records of a model.
pub fn history_prefix(model: &str) -> String {
    format!("models/{model}/v/")
}

/// SDFS name of the history record of one version (zero-padded: listed in order).
pub fn history_name(model: &str, version: u64) -> String {
    format!("{}{version:010}", history_prefix(model))
}

/// Whether an SDFS read failed because the name has no versions at all (nothing
/// published), rather than because the store could not answer.
pub fn is_missing(error: &str) -> bool {
    error.ends_with("no such file")
}

/// The weights a job runs on from start to end, fixed when it is accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WeightsPin {
    /// Nothing was published for the model: nodes use their local file, or synthetic
    /// weights where the operator allowed them.
    #[default]
    Unpublished,
    /// A published version (boxed: every job message carries a pin).
    Published(Box<Pinned>),
}

/// A published version a job is pinned to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pinned {
    /// The model version.
    pub version: u64,
    /// SHA-256 of its file.
    pub sha256: String,
    /// `safetensors` or `pth`.
    pub format: String,
}

impl WeightsPin {
    /// `v3 (1a2b3c4d5e6f)` or `unpublished`, for the console.
    pub fn label(&self) -> String {
        match self {
            WeightsPin::Unpublished => "unpublished".into(),
            WeightsPin::Published(p) => format!("v{} ({})", p.version, short(&p.sha256)),
        }
    }
}

/// The first 12 hex digits of a hash, as shown to people.
pub fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// What a node can run for one model, decided at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Serving {
    /// A file in the node's own `weights/` directory, with its hash: it runs only that
    /// file, so only jobs pinned to that hash (or to nothing published).
    Local { sha256: String },
    /// No local file: the node runs whatever version a job is pinned to, fetched from
    /// SDFS; `synthetic`: with nothing published it runs synthetic weights (explicitly
    /// allowed by `--synthetic-weights` or `inference.synthetic_weights`).
    Cluster { synthetic: bool },
}

impl Serving {
    /// Whether a node serving this may be given a batch of a job pinned to `pin`.
    pub fn serves(&self, pin: &WeightsPin) -> bool {
        match (self, pin) {
            (Serving::Local { sha256 }, WeightsPin::Published(p)) => *sha256 == p.sha256,
            (Serving::Local { .. }, WeightsPin::Unpublished) => true,
            (Serving::Cluster { .. }, WeightsPin::Published(_)) => true,
            (Serving::Cluster { synthetic }, WeightsPin::Unpublished) => *synthetic,
        }
    }
}

/// A worker's report of what it serves, per model, with a line for C5 where it cannot
/// serve the active version (sent to the coordinator periodically: it assigns nothing
/// to a worker it has no report from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServingReport {
    /// Per model.
    pub models: Vec<(String, Serving)>,
    /// Why the node does not serve some model's active version, for C5.
    pub notes: Vec<String>,
}

impl ServingReport {
    /// Whether the node may run batches of `model` pinned to `pin`.
    pub fn serves(&self, model: &str, pin: &WeightsPin) -> bool {
        self.models.iter().any(|(m, s)| m == model && s.serves(pin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(sha: &str) -> WeightsPin {
        WeightsPin::Published(Box::new(Pinned {
            version: 2,
            sha256: sha.into(),
            format: "safetensors".into(),
        }))
    }

    #[test]
    fn a_local_file_serves_only_its_own_hash() {
        let local = Serving::Local {
            sha256: "a".repeat(64),
        };
        assert!(local.serves(&pin(&"a".repeat(64))));
        assert!(!local.serves(&pin(&"b".repeat(64))));
        assert!(local.serves(&WeightsPin::Unpublished));
    }

    #[test]
    fn synthetic_weights_only_where_allowed_and_nothing_is_published() {
        let strict = Serving::Cluster { synthetic: false };
        let synth = Serving::Cluster { synthetic: true };
        assert!(!strict.serves(&WeightsPin::Unpublished));
        assert!(synth.serves(&WeightsPin::Unpublished));
        assert!(strict.serves(&pin(&"c".repeat(64))));
        let report = ServingReport {
            models: vec![("resnet50".into(), strict)],
            notes: vec![],
        };
        assert!(report.serves("resnet50", &pin(&"c".repeat(64))));
        assert!(!report.serves("inception_v3", &pin(&"c".repeat(64))));
    }

    #[test]
    fn a_forged_record_cannot_name_a_path() {
        let mut r = WeightsRecord {
            model: "resnet50".into(),
            version: 1,
            sha256: "../../etc/passwd".into(),
            bytes: 1,
            format: "safetensors".into(),
            file: "x".into(),
            published_wall_ms: 0,
        };
        assert!(r.check().is_err());
        r.sha256 = "d".repeat(64);
        r.format = "sh/../x".into();
        assert!(r.check().is_err());
        r.format = "pth".into();
        assert!(r.check().is_ok());
        assert_eq!(history_name("resnet50", 7), "models/resnet50/v/0000000007");
    }
}
