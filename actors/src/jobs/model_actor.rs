//! ModelActor: one per network, on its own SyncArbiter thread (inference is CPU-bound and
//! must never run on the arbiter that answers pings). It holds the node's own weights
//! (local file or synthetic) and up to [`FETCHED_KEPT`] published versions, loads a
//! version between batches, and classifies each batch with exactly one of them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use dml_models::{
    Classifier, Kernels, ModelError, Network, Precision, Prediction, TopClass, Weights,
};
use tracing::info;

/// Classify a batch of encoded images (JPEG, PNG, ...).
#[derive(Message)]
#[rtype(result = "Result<BatchResult, String>")]
pub struct ClassifyBatch {
    /// The encoded images, in the order of the results.
    pub images: Vec<Vec<u8>>,
    /// The published version (its SHA-256) to run, loaded before ([`LoadWeights`]);
    /// `None`: the node's own weights.
    pub weights: Option<String>,
}

/// Whether the published version with this SHA-256 is loaded.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct HasWeights(pub String);

/// Load a published version from a verified cache file (between batches: the actor
/// runs one message at a time).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct LoadWeights {
    /// The cache file, already verified against `sha256`.
    pub path: PathBuf,
    /// The version's SHA-256, by which batches ask for it.
    pub sha256: String,
}

/// Published versions kept loaded besides the node's own weights: the version running
/// jobs are pinned to and the newly published one, during a rolling update.
pub const FETCHED_KEPT: usize = 2;

/// Per-image results in input order, and the batch's compute time.
#[derive(Debug, Clone)]
pub struct BatchResult {
    /// One prediction (or why the image could not be classified) per input.
    pub results: Vec<Result<Prediction, String>>,
    /// Time the whole batch took (ms).
    pub compute_ms: f64,
    /// The network runs on synthetic weights: labels mean nothing.
    pub synthetic: bool,
    /// Made by the benchmark's fixed-logits model: nothing was computed.
    pub fixed_logits: bool,
    /// SHA-256 of the weight file that ran, or `synthetic`.
    pub weights: String,
    /// The precision the network computed in (`None` for the fixed-logits model).
    pub precision: Option<String>,
}

/// Where a ModelActor gets its weights.
#[derive(Debug, Clone)]
pub enum WeightSource {
    /// `weights_dir/<network>.safetensors` (or `.pth`); a bad file is an error.
    Dir(PathBuf),
    /// Deterministic synthetic weights (no file): labels mean nothing.
    Synthetic(u64),
}

/// Cheap to clone: SyncArbiter builds its actor from a factory in the new thread.
#[derive(Clone)]
pub struct ModelActor {
    engine: Engine,
}

/// The classifiers of one network: the node's own and the published ones loaded.
struct Slots {
    network: Network,
    threads: usize,
    /// What every classifier of this network computes in, published versions included.
    precision: Precision,
    /// The node's own weights and their hash (`None`: synthetic), if it has any.
    own: Option<(Arc<Classifier>, Option<String>)>,
    /// Published versions by hash, least recently used first.
    fetched: Vec<(String, Arc<Classifier>)>,
}

#[derive(Clone)]
enum Engine {
    Net(Arc<Mutex<Slots>>),
    /// `dml bench scale`'s model: the same top 5 for every input, nothing decoded or
    /// computed, so the benchmark measures the pipeline around the model. Reachable
    /// only through `dml node --bench-fixed-logits`, which only `dml bench` passes; never
    /// from a configuration file.
    Fixed,
}

impl ModelActor {
    /// Loads the network from the node's own weights; `sha256` is the local file's hash
    /// (`None` for synthetic weights). `precision` with no path on this CPU is an error
    /// naming the missing instructions.
    pub fn load(
        network: Network,
        source: &WeightSource,
        threads: usize,
        sha256: Option<String>,
        precision: Precision,
    ) -> Result<Self, String> {
        let classifier = match source {
            WeightSource::Dir(dir) => Classifier::load_at(network, dir, threads, precision),
            WeightSource::Synthetic(seed) => {
                Weights::synthetic(network, *seed).and_then(|w| build(&w, threads, precision))
            }
        }
        .map_err(|e| format!("{}: {e}", network.name()))?;
        info!(
            network = network.name(),
            synthetic = classifier.is_synthetic(),
            threads,
            precision = %precision,
            paths = precision.paths().unwrap_or_default(),
            "model loaded"
        );
        Ok(Self::with(
            network,
            threads,
            precision,
            Some((Arc::new(classifier), sha256)),
        ))
    }

    /// A network with no weights of the node's own: it runs only published versions.
    /// Fails, naming the missing instructions, where this CPU has no path for `precision`.
    pub fn published_only(
        network: Network,
        threads: usize,
        precision: Precision,
    ) -> Result<Self, String> {
        precision
            .paths()
            .map_err(|e| format!("{}: {e}", network.name()))?;
        Ok(Self::with(network, threads, precision, None))
    }

    fn with(
        network: Network,
        threads: usize,
        precision: Precision,
        own: Option<(Arc<Classifier>, Option<String>)>,
    ) -> Self {
        ModelActor {
            engine: Engine::Net(Arc::new(Mutex::new(Slots {
                network,
                threads,
                precision,
                own,
                fetched: Vec::new(),
            }))),
        }
    }

    /// The benchmark-only fixed-logits model (see `Engine::Fixed`).
    pub fn fixed_logits() -> Self {
        ModelActor {
            engine: Engine::Fixed,
        }
    }

    /// The classifier online inference (`serve::exec`) runs raw inputs through: the
    /// node's own weights, else the published version used last. `Ok(None)` for the
    /// benchmark's fixed-logits stand-in; an error when no weights are loaded yet.
    pub(crate) fn classifier(&self) -> Result<Option<Arc<Classifier>>, String> {
        match &self.engine {
            Engine::Net(slots) => {
                let s = slots
                    .lock()
                    .map_err(|_| "model state poisoned".to_string())?;
                s.own
                    .as_ref()
                    .map(|(c, _)| c.clone())
                    .or_else(|| s.fetched.last().map(|(_, c)| c.clone()))
                    .map(Some)
                    .ok_or_else(|| format!("{}: no weights loaded yet", s.network))
            }
            Engine::Fixed => Ok(None),
        }
    }
}

impl Actor for ModelActor {
    type Context = SyncContext<Self>;
}

impl Handler<ClassifyBatch> for ModelActor {
    type Result = Result<BatchResult, String>;

    fn handle(&mut self, m: ClassifyBatch, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let (classifier, weights) = match &self.engine {
            Engine::Net(slots) => {
                let mut slots = slots
                    .lock()
                    .map_err(|_| "model state poisoned".to_string())?;
                slots.pick(m.weights.as_deref())?
            }
            Engine::Fixed => {
                let top5: Vec<TopClass> = (0..5)
                    .map(|i| TopClass {
                        index: i,
                        label: dml_models::labels::label(i).to_string(),
                        prob: 0.2,
                    })
                    .collect();
                let p = Prediction {
                    top5,
                    synthetic: true,
                };
                return Ok(BatchResult {
                    results: m.images.iter().map(|_| Ok(p.clone())).collect(),
                    compute_ms: 0.0,
                    synthetic: true,
                    fixed_logits: true,
                    weights: SYNTHETIC.into(),
                    precision: None,
                });
            }
        };
        let out = classifier.classify_batch(&m.images);
        Ok(BatchResult {
            results: out
                .results
                .into_iter()
                .map(|r| r.map_err(|e| e.to_string()))
                .collect(),
            compute_ms: out.compute_time.as_secs_f64() * 1000.0,
            synthetic: classifier.is_synthetic(),
            fixed_logits: false,
            weights,
            precision: Some(classifier.precision().name().to_string()),
        })
    }
}

/// `w` built at `precision` (an error naming the missing instructions where this CPU has
/// no path for it).
fn build(w: &Weights, threads: usize, precision: Precision) -> Result<Classifier, ModelError> {
    let kernels = Kernels::at(precision).map_err(ModelError::Unsupported)?;
    Classifier::with_kernels(w, threads, kernels)
}

/// What results say for weights that are no file.
pub const SYNTHETIC: &str = "synthetic";

impl Slots {
    /// The classifier a batch runs on (one for the whole batch) and its hash.
    fn pick(&mut self, sha256: Option<&str>) -> Result<(Arc<Classifier>, String), String> {
        let network = self.network;
        match sha256 {
            None => self
                .own
                .as_ref()
                .map(|(c, sha)| (c.clone(), sha.clone().unwrap_or_else(|| SYNTHETIC.into())))
                .ok_or_else(|| format!("{network}: no weights loaded")),
            Some(want) => {
                if let Some((c, Some(sha))) = &self.own {
                    if sha == want {
                        return Ok((c.clone(), sha.clone()));
                    }
                }
                let i = self
                    .fetched
                    .iter()
                    .position(|(sha, _)| sha == want)
                    .ok_or_else(|| format!("{network}: weights {want} not loaded"))?;
                let slot = self.fetched.remove(i);
                let out = (slot.1.clone(), slot.0.clone());
                self.fetched.push(slot);
                Ok(out)
            }
        }
    }

    fn has(&self, sha256: &str) -> bool {
        self.fetched.iter().any(|(s, _)| s == sha256)
            || matches!(&self.own, Some((_, Some(s))) if s == sha256)
    }
}

impl Handler<HasWeights> for ModelActor {
    type Result = bool;

    fn handle(&mut self, m: HasWeights, _ctx: &mut SyncContext<Self>) -> bool {
        match &self.engine {
            Engine::Net(slots) => slots.lock().is_ok_and(|s| s.has(&m.0)),
            Engine::Fixed => true,
        }
    }
}

impl Handler<LoadWeights> for ModelActor {
    type Result = Result<(), String>;

    fn handle(&mut self, m: LoadWeights, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let Engine::Net(slots) = &self.engine else {
            return Ok(());
        };
        let (network, threads, precision) = match slots.lock() {
            Ok(s) if s.has(&m.sha256) => return Ok(()),
            Ok(s) => (s.network, s.threads, s.precision),
            Err(_) => return Err("model state poisoned".into()),
        };
        let started = std::time::Instant::now();
        let classifier = Weights::load(network, &m.path)
            .and_then(|w| build(&w, threads, precision))
            .map_err(|e| format!("{network}: {e}"))?;
        let mut s = slots
            .lock()
            .map_err(|_| "model state poisoned".to_string())?;
        s.fetched.push((m.sha256.clone(), Arc::new(classifier)));
        while s.fetched.len() > FETCHED_KEPT {
            s.fetched.remove(0);
        }
        info!(
            wall = crate::clock::wall_ms(),
            network = network.name(),
            sha256 = %m.sha256,
            ms = started.elapsed().as_millis() as u64,
            "event=weights_loaded"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rocket() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/tests/fixtures/rocket.jpg"
        );
        std::fs::read(path).expect("rocket.jpg fixture")
    }

    /// The actor answers from its SyncArbiter thread while the calling arbiter stays free:
    /// a timer on the caller's arbiter fires while the batch is being computed.
    #[test]
    fn classifies_a_batch_off_the_calling_arbiter() {
        let sys = actix::System::new();
        sys.block_on(async {
            let actor = ModelActor::load(
                Network::ResNet50,
                &WeightSource::Synthetic(0),
                1,
                None,
                Precision::Fp32,
            )
            .expect("load");
            let addr = SyncArbiter::start(1, move || actor.clone());
            let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let t = ticks.clone();
            let ticker = actix::spawn(async move {
                loop {
                    actix_rt::time::sleep(std::time::Duration::from_millis(5)).await;
                    t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
            let images = vec![rocket(), b"not an image".to_vec(), rocket()];
            let out = addr
                .send(ClassifyBatch {
                    images,
                    weights: None,
                })
                .await
                .expect("mailbox")
                .expect("batch");
            ticker.abort();
            assert!(out.synthetic);
            assert_eq!(out.results.len(), 3);
            assert!(out.results[1].is_err());
            let (a, b) = (
                out.results[0].as_ref().expect("first"),
                out.results[2].as_ref().expect("third"),
            );
            assert_eq!(a.top5.len(), 5);
            assert_eq!(a, b, "same image, same prediction");
            assert!(out.compute_ms > 0.0);
            // A forward pass takes far longer than 5 ms; had it blocked this arbiter the
            // ticker could not have run during it.
            assert!(ticks.load(std::sync::atomic::Ordering::Relaxed) > 0);
        });
    }

    #[test]
    fn a_bad_weight_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("dml-model-actor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join("resnet50.safetensors"),
            b"\x08\0\0\0\0\0\0\0{}garbage",
        )
        .expect("write");
        let err = ModelActor::load(
            Network::ResNet50,
            &WeightSource::Dir(dir.clone()),
            1,
            None,
            Precision::Fp32,
        )
        .err()
        .expect("must refuse");
        assert!(err.contains("resnet50.safetensors"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
