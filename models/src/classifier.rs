//! A loaded network behind a fixed-size thread pool: image bytes in, per-image top-5 out.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::inception_v3::InceptionV3;
use crate::kernels::{Kernels, Precision};
use crate::labels;
use crate::preprocess;
use crate::resnet50::ResNet50;
use crate::team::Team;
use crate::weights::{self, Network, Weights};

/// Largest sub-batch one forward pass runs (see [`Classifier::logits`]); within it, each
/// network groups the images per layer (see `kernels::run_grouped`).
pub const MAX_CHUNK: usize = 8;

/// How many classes a prediction lists.
pub const TOP_K: usize = 5;

/// One ranked class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopClass {
    /// ImageNet class index, 0..1000.
    pub index: usize,
    pub label: String,
    /// Softmax probability.
    pub prob: f32,
}

/// The result for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Highest probability first.
    pub top5: Vec<TopClass>,
    /// True when the network runs on synthetic weights: the labels mean nothing.
    pub synthetic: bool,
}

/// Results of one batch, in input order, and how long the batch took (decode + inference).
#[derive(Debug)]
pub struct BatchOutput {
    pub results: Vec<Result<Prediction, ModelError>>,
    pub compute_time: Duration,
}

enum Net {
    ResNet50(Box<ResNet50>),
    InceptionV3(Box<InceptionV3>),
}

/// A network ready to classify, with its own pool of `threads` workers. All tensor work
/// runs inside that pool, so the thread count is fixed once here and never leaks onto the
/// caller's threads (the actix arbiter that handles pings, say).
pub struct Classifier {
    network: Network,
    net: Net,
    synthetic: Option<u64>,
    precision: Precision,
    /// Decodes and resizes the images of a batch.
    pool: rayon::ThreadPool,
    /// Runs the forward pass's parallel loops.
    team: Team,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("network", &self.network)
            .field("synthetic", &self.synthetic)
            .field("precision", &self.precision)
            .field("threads", &self.pool.current_num_threads())
            .finish()
    }
}

impl Classifier {
    /// Builds the network from validated weights (folding BatchNorm) on `threads` workers.
    pub fn new(weights: &Weights, threads: usize) -> Result<Self, ModelError> {
        Self::with_kernels(weights, threads, Kernels::best())
    }

    /// Like [`Classifier::new`], with a chosen set of kernels (benchmarks, tests).
    pub fn with_kernels(
        weights: &Weights,
        threads: usize,
        kernels: Kernels,
    ) -> Result<Self, ModelError> {
        let kernels = kernels.for_this_cpu();
        kernels.precision.paths().map_err(ModelError::Unsupported)?;
        let network = weights.network();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(move |i| format!("dml-{}-{i}", network.name()))
            .build()
            .map_err(|e| ModelError::Threads(e.to_string()))?;
        let net = pool.install(|| -> Result<Net, ModelError> {
            Ok(match network {
                Network::ResNet50 => {
                    Net::ResNet50(Box::new(ResNet50::with_kernels(weights, kernels)?))
                }
                Network::InceptionV3 => {
                    Net::InceptionV3(Box::new(InceptionV3::with_kernels(weights, kernels)?))
                }
            })
        })?;
        if let Some(seed) = weights.synthetic_seed() {
            tracing::warn!(
                "{network}: running on SYNTHETIC weights (seed {seed}); labels are meaningless"
            );
        }
        let team = Team::new(threads, &format!("dml-{}-fwd", network.name()))
            .map_err(|e| ModelError::Threads(e.to_string()))?;
        Ok(Self {
            network,
            net,
            synthetic: weights.synthetic_seed(),
            precision: kernels.precision,
            pool,
            team,
        })
    }

    /// Loads `network`'s weights from `dir` (see [`weights::find_weight_file`]) and builds it.
    pub fn load(network: Network, dir: &Path, threads: usize) -> Result<Self, ModelError> {
        Self::load_at(network, dir, threads, Precision::Fp32)
    }

    /// Like [`Classifier::load`], computing in `precision` (an error, naming the missing
    /// instructions, where this CPU has no path for it).
    pub fn load_at(
        network: Network,
        dir: &Path,
        threads: usize,
        precision: Precision,
    ) -> Result<Self, ModelError> {
        let kernels = Kernels::at(precision).map_err(ModelError::Unsupported)?;
        let path = weights::find_weight_file(network, dir)?;
        let w = Weights::load(network, &path)?;
        Self::with_kernels(&w, threads, kernels)
    }

    /// The precision the convolutions compute in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn network(&self) -> Network {
        self.network
    }

    /// True when the weights are synthetic.
    pub fn is_synthetic(&self) -> bool {
        self.synthetic.is_some()
    }

    pub fn threads(&self) -> usize {
        self.team.threads()
    }

    /// Raw logits `[n, 1000]` for a preprocessed batch `[n, 3, s, s]`.
    ///
    /// Large batches run as sub-batches of at most [`MAX_CHUNK`] images: activation memory
    /// grows with the batch (Inception at 32 would need ~0.5 GB more), while throughput per
    /// image on CPU does not improve beyond a few images.
    pub fn logits(&self, batch: &Tensor) -> Result<Tensor, ModelError> {
        let n = batch.dim(0)?;
        self.team.install(|| {
            let mut outs = Vec::with_capacity(n.div_ceil(MAX_CHUNK));
            let mut start = 0;
            while start < n {
                let len = MAX_CHUNK.min(n - start);
                let part = batch.narrow(0, start, len)?;
                outs.push(match &self.net {
                    Net::ResNet50(m) => m.forward(&part)?,
                    Net::InceptionV3(m) => m.forward(&part)?,
                });
                start += len;
            }
            Ok(Tensor::cat(&outs, 0)?)
        })
    }

    /// A batch of `n` fixed, finite inputs of the right size, for benchmarks and warm-up:
    /// convolutions cost the same whatever the pixels.
    pub fn dummy_batch(&self, n: usize) -> Result<Tensor, ModelError> {
        let s = self.network.input_size();
        let v: Vec<f32> = (0..n * 3 * s * s)
            .map(|i| ((i % 251) as f32 / 125.0) - 1.0)
            .collect();
        Ok(Tensor::from_vec(v, (n, 3, s, s), &Device::Cpu)?)
    }

    /// Top-5 for a preprocessed batch.
    pub fn classify_tensor(&self, batch: &Tensor) -> Result<Vec<Prediction>, ModelError> {
        let logits = self.logits(batch)?;
        let rows = logits.to_vec2::<f32>()?;
        Ok(rows.iter().map(|r| self.top5(r)).collect())
    }

    /// Decodes, preprocesses and classifies a batch of encoded images. A bad image gets an
    /// error in its slot; the others are still classified together in one forward pass.
    pub fn classify_batch(&self, images: &[Vec<u8>]) -> BatchOutput {
        let start = Instant::now();
        let net = self.network;
        let mut results: Vec<Result<Prediction, ModelError>> = Vec::with_capacity(images.len());
        let inputs: Vec<Result<Vec<f32>, ModelError>> = self.pool.install(|| {
            images
                .par_iter()
                .map(|b| preprocess::preprocess(b, net))
                .collect()
        });
        let good: Vec<&Vec<f32>> = inputs.iter().filter_map(|r| r.as_ref().ok()).collect();
        let batch_out = if good.is_empty() {
            Ok(Vec::new())
        } else {
            self.stack(&good).and_then(|t| self.classify_tensor(&t))
        };
        match batch_out {
            Ok(preds) => {
                let mut preds = preds.into_iter();
                for input in inputs {
                    results.push(match input {
                        Ok(_) => preds
                            .next()
                            .ok_or_else(|| ModelError::Image("missing batch output".into())),
                        Err(e) => Err(e),
                    });
                }
            }
            Err(e) => {
                // The forward pass failed for the whole batch: every good image reports it.
                let msg = e.to_string();
                for input in inputs {
                    results.push(match input {
                        Ok(_) => Err(ModelError::Candle(candle_core::Error::Msg(msg.clone()))),
                        Err(e) => Err(e),
                    });
                }
            }
        }
        BatchOutput {
            results,
            compute_time: start.elapsed(),
        }
    }

    fn stack(&self, inputs: &[&Vec<f32>]) -> Result<Tensor, ModelError> {
        let s = self.network.input_size();
        let mut flat = Vec::with_capacity(inputs.len() * 3 * s * s);
        for i in inputs {
            flat.extend_from_slice(i);
        }
        Ok(Tensor::from_vec(
            flat,
            (inputs.len(), 3, s, s),
            &Device::Cpu,
        )?)
    }

    fn top5(&self, logits: &[f32]) -> Prediction {
        let probs = softmax(logits);
        let mut order: Vec<usize> = (0..probs.len()).collect();
        // Stable, total order: ties broken by index so results are reproducible.
        order.sort_by(|&a, &b| {
            let (pa, pb) = (
                probs.get(a).copied().unwrap_or(0.0),
                probs.get(b).copied().unwrap_or(0.0),
            );
            pb.total_cmp(&pa).then(a.cmp(&b))
        });
        let top5 = order
            .into_iter()
            .take(TOP_K)
            .map(|i| TopClass {
                index: i,
                label: labels::label(i).to_string(),
                prob: probs.get(i).copied().unwrap_or(0.0),
            })
            .collect();
        Prediction {
            top5,
            synthetic: self.synthetic.is_some(),
        }
    }
}

/// Numerically stable softmax in f64.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&l| f64::from(l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}
