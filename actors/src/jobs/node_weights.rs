//! A node's weights (issue 18): what it serves per model (decided at start: its own
//! `weights/` file, or published versions from SDFS, with synthetic weights only where
//! the operator allowed them), the local cache of published versions under its data
//! directory (streamed from SDFS, verified by SHA-256, fetched again when a cached copy
//! is damaged), the active version it last saw, and what it tells C5.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use tracing::{info, warn};

use crate::clock;
use crate::sdfs::client::SdfsClient;
use crate::weights::{self, short, Serving, ServingReport, WeightsPin, WeightsRecord};

/// The model's active (newest published) version; `None` when nothing was published.
pub async fn active_record(
    sdfs: &SdfsClient,
    model: &str,
) -> Result<Option<WeightsRecord>, String> {
    let name = weights::versions_name(model);
    match sdfs.get_latest(name.clone()).await {
        Ok((version, bytes)) => {
            let mut r: WeightsRecord = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{name}: not a weights record ({e})"))?;
            r.version = version;
            r.check().map_err(|e| format!("{name}: {e}"))?;
            Ok(Some(r))
        }
        Err(e) if weights::is_missing(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a job submitted now is pinned to.
pub async fn active_pin(sdfs: &SdfsClient, model: &str) -> Result<WeightsPin, String> {
    Ok(active_record(sdfs, model)
        .await?
        .map_or(WeightsPin::Unpublished, |r| r.pin()))
}

/// The weights side of one node, shared by its worker's batches and its watcher.
#[derive(Debug)]
pub struct NodeWeights {
    cache_dir: PathBuf,
    serving: BTreeMap<String, Serving>,
    /// Per model, the active version last read (`Some(None)`: nothing published);
    /// absent until read.
    active: Mutex<BTreeMap<String, Option<WeightsRecord>>>,
    /// Why the last fetch of a model's active version failed, for C5.
    failed: Mutex<BTreeMap<String, String>>,
    /// One fetch at a time: a batch and the watcher never write the same file together.
    fetching: tokio::sync::Mutex<()>,
}

impl NodeWeights {
    /// A node caching published files under `cache_dir`, serving `serving` per model.
    pub fn new(cache_dir: PathBuf, serving: BTreeMap<String, Serving>) -> Self {
        NodeWeights {
            cache_dir,
            serving,
            active: Mutex::default(),
            failed: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// What this node serves for `model`, if it runs it at all.
    pub fn serving(&self, model: &str) -> Option<&Serving> {
        self.serving.get(model)
    }

    /// The models and what this node serves for each.
    pub fn models(&self) -> impl Iterator<Item = (&String, &Serving)> {
        self.serving.iter()
    }

    /// Records the active version read from SDFS; logs a change.
    pub fn set_active(&self, model: &str, record: Option<WeightsRecord>) {
        let Ok(mut active) = self.active.lock() else {
            return;
        };
        let before = active.insert(model.to_string(), record.clone());
        if before.as_ref() != Some(&record) {
            if let Some(r) = &record {
                info!(
                    wall = clock::wall_ms(),
                    model,
                    version = r.version,
                    sha256 = %r.sha256,
                    "event=weights_active (new jobs run on this version)"
                );
            }
        }
    }

    /// Remembers (or, with `None`, clears) why the active version could not be loaded.
    pub fn set_failed(&self, model: &str, why: Option<String>) {
        if let Ok(mut f) = self.failed.lock() {
            match why {
                Some(w) => f.insert(model.to_string(), w),
                None => f.remove(model),
            };
        }
    }

    /// What this node serves, with a line for each model whose active version it does
    /// not serve (for C5).
    pub fn report(&self) -> ServingReport {
        let active = self.active.lock().map(|a| a.clone()).unwrap_or_default();
        let failed = self.failed.lock().map(|f| f.clone()).unwrap_or_default();
        let mut notes = Vec::new();
        for (model, serving) in &self.serving {
            let act = active.get(model);
            match (serving, act) {
                (Serving::Local { sha256 }, Some(Some(a))) if *sha256 != a.sha256 => {
                    notes.push(format!(
                        "{model}: local weights/ file {} differs from the cluster's active v{} \
                         ({}): not assigned {model} jobs pinned to it (remove the local file \
                         to load published versions)",
                        short(sha256),
                        a.version,
                        short(&a.sha256)
                    ))
                }
                (Serving::Cluster { synthetic: false }, Some(None)) => notes.push(format!(
                    "{model}: no weights (nothing published, no local file): not serving \
                     {model}; publish with `dml weights publish {model} FILE` or copy a file \
                     into weights/"
                )),
                (Serving::Cluster { synthetic: true }, Some(None)) => notes.push(format!(
                    "{model}: SYNTHETIC weights (--synthetic-weights; nothing published): \
                     labels are meaningless"
                )),
                _ => {}
            }
            if let Some(why) = failed.get(model) {
                notes.push(format!("{model}: active version not loaded: {why}"));
            }
        }
        ServingReport {
            models: self
                .serving
                .iter()
                .map(|(m, s)| (m.clone(), s.clone()))
                .collect(),
            notes,
        }
    }

    /// The local copy of a published file: the cached one when its hash is right,
    /// else fetched from SDFS, verified and cached (a damaged copy is replaced).
    pub async fn cached(
        &self,
        sdfs: &SdfsClient,
        model: &str,
        sha256: &str,
        format: &str,
    ) -> Result<PathBuf, String> {
        if !weights::is_sha256(sha256) || !weights::FORMATS.contains(&format) {
            return Err(format!("refusing weights {sha256:?}.{format:?}"));
        }
        let _one = self.fetching.lock().await;
        let path = self.cache_dir.join(format!("{model}-{sha256}.{format}"));
        if path.is_file() {
            let p = path.clone();
            let found = actix_rt::task::spawn_blocking(move || {
                dml_models::weights::sha256_file(&p).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?;
            match found {
                Ok(h) if h == sha256 => return Ok(path),
                Ok(h) => warn!(
                    wall = clock::wall_ms(),
                    model,
                    path = %path.display(),
                    expected = sha256,
                    found = %h,
                    "event=weights_cache_damaged: fetching it again from SDFS"
                ),
                Err(e) => {
                    warn!(path = %path.display(), "cached weights unreadable ({e}): fetching again")
                }
            }
        }
        let started = std::time::Instant::now();
        let bytes = sdfs
            .get_bytes(weights::blob_name(model, sha256, format))
            .await?;
        let (dir, dest, want) = (self.cache_dir.clone(), path.clone(), sha256.to_string());
        let size = bytes.len();
        actix_rt::task::spawn_blocking(move || store(&dir, &dest, &bytes, &want))
            .await
            .map_err(|e| e.to_string())??;
        info!(
            wall = clock::wall_ms(),
            model,
            sha256,
            bytes = size,
            ms = started.elapsed().as_millis() as u64,
            "event=weights_fetched"
        );
        Ok(path)
    }
}

/// Writes fetched bytes into the cache if their hash is the one asked for.
fn store(
    dir: &std::path::Path,
    dest: &std::path::Path,
    bytes: &[u8],
    want: &str,
) -> Result<(), String> {
    use sha2::{Digest, Sha256};
    let got: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got != want {
        return Err(format!(
            "SDFS returned weights with SHA-256 {got}, not {want} (damaged or forged)"
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dest.with_extension("part");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, dest))
        .map_err(|e| format!("{}: {e}", dest.display()))
}
