//! ModelActor: one per network, on its own SyncArbiter thread (inference is CPU-bound and
//! must never run on the arbiter that answers pings). It loads the weights once and
//! classifies batches of encoded images.

use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;
use dml_models::{Classifier, Network, Prediction, TopClass, Weights};
use tracing::{info, warn};

/// Classify a batch of encoded images (JPEG, PNG, ...).
#[derive(Message)]
#[rtype(result = "Result<BatchResult, String>")]
pub struct ClassifyBatch {
    /// The encoded images, in the order of the results.
    pub images: Vec<Vec<u8>>,
}

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

#[derive(Clone)]
enum Engine {
    Net(Arc<Classifier>),
    /// `dml bench scale`'s model: the same top 5 for every input, nothing decoded or
    /// computed, so the benchmark measures the pipeline around the model. Reachable
    /// only through `dml node --bench-fixed-logits`, which only `dml bench` passes; never
    /// from a configuration file.
    Fixed,
}

impl ModelActor {
    /// Loads the network. Runs on the SyncArbiter thread, so a slow load never blocks pings.
    pub fn load(network: Network, source: &WeightSource, threads: usize) -> Result<Self, String> {
        let classifier = match source {
            WeightSource::Dir(dir) => Classifier::load(network, dir, threads),
            WeightSource::Synthetic(seed) => {
                Weights::synthetic(network, *seed).and_then(|w| Classifier::new(&w, threads))
            }
        }
        .map_err(|e| format!("{}: {e}", network.name()))?;
        info!(
            network = network.name(),
            synthetic = classifier.is_synthetic(),
            threads,
            "model loaded"
        );
        Ok(ModelActor {
            engine: Engine::Net(Arc::new(classifier)),
        })
    }

    /// The benchmark-only fixed-logits model (see `Engine::Fixed`).
    pub fn fixed_logits() -> Self {
        ModelActor {
            engine: Engine::Fixed,
        }
    }

    /// The network this actor runs (`None` for the benchmark's fixed-logits stand-in);
    /// online inference (`serve::exec`) runs raw inputs through it.
    pub(crate) fn classifier(&self) -> Option<&Arc<Classifier>> {
        match &self.engine {
            Engine::Net(c) => Some(c),
            Engine::Fixed => None,
        }
    }

    /// Picks the weights: the file in `dir` when there is one, synthetic otherwise (loudly).
    pub fn source_for(network: Network, dir: &std::path::Path) -> WeightSource {
        match dml_models::weights::find_weight_file(network, dir) {
            Ok(_) => WeightSource::Dir(dir.to_path_buf()),
            Err(_) => {
                warn!(
                    network = network.name(),
                    dir = %dir.display(),
                    "no weight file: using SYNTHETIC weights (seed 0); predictions are meaningless. \
                     Run `dml weights fetch` or copy the files (see weights/README.md)"
                );
                WeightSource::Synthetic(0)
            }
        }
    }
}

impl Actor for ModelActor {
    type Context = SyncContext<Self>;
}

impl Handler<ClassifyBatch> for ModelActor {
    type Result = Result<BatchResult, String>;

    fn handle(&mut self, m: ClassifyBatch, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let classifier = match &self.engine {
            Engine::Net(c) => c,
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
        })
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
            let actor =
                ModelActor::load(Network::ResNet50, &WeightSource::Synthetic(0), 1).expect("load");
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
                .send(ClassifyBatch { images })
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
        let err = ModelActor::load(Network::ResNet50, &WeightSource::Dir(dir.clone()), 1)
            .err()
            .expect("must refuse");
        assert!(err.contains("resnet50.safetensors"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
