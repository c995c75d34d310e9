//! Weight files: which tensors each network needs, loading `.safetensors` and torchvision
//! `.pth` files with validation of every name and shape, deterministic synthetic weights,
//! and fetching torchvision's ImageNet weights from the Hugging Face Hub.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ModelError;
use crate::{inception_v3, resnet50};

/// Metadata key that marks a file written by [`Weights::synthetic`]; its value is the seed.
pub const SYNTHETIC_KEY: &str = "dml_synthetic_seed";

/// The two networks a node can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    ResNet50,
    InceptionV3,
}

impl Network {
    /// Both networks, in a fixed order.
    pub const ALL: [Network; 2] = [Network::ResNet50, Network::InceptionV3];

    /// The name used on the command line, in configs and in weight file names.
    pub fn name(self) -> &'static str {
        match self {
            Network::ResNet50 => "resnet50",
            Network::InceptionV3 => "inception_v3",
        }
    }

    /// Parses a model name; accepts the usual spellings.
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "resnet50" | "resnet_50" => Ok(Network::ResNet50),
            "inception_v3" | "inceptionv3" | "inception" => Ok(Network::InceptionV3),
            _ => Err(ModelError::UnknownModel(s.to_string())),
        }
    }

    /// File name under the weights directory, e.g. `resnet50.safetensors`.
    pub fn file_name(self) -> String {
        format!("{}.safetensors", self.name())
    }

    /// Side of the square crop the network takes.
    pub fn input_size(self) -> usize {
        match self {
            Network::ResNet50 => 224,
            Network::InceptionV3 => 299,
        }
    }

    /// The shorter side is resized to this before the centre crop (torchvision's recipe).
    pub fn resize_size(self) -> usize {
        match self {
            Network::ResNet50 => 256,
            Network::InceptionV3 => 342,
        }
    }

    /// Hugging Face repository holding torchvision's ImageNet weights in safetensors form.
    pub fn hub_repo(self) -> &'static str {
        match self {
            Network::ResNet50 => "timm/resnet50.tv_in1k",
            Network::InceptionV3 => "timm/inception_v3.tv_in1k",
        }
    }

    /// torchvision's own checkpoint name, for the offline instructions.
    pub fn torchvision_pth(self) -> &'static str {
        match self {
            Network::ResNet50 => "resnet50-0676ba61.pth",
            Network::InceptionV3 => "inception_v3_google-0cc3c7bd.pth",
        }
    }

    /// Floating-point operations per image (2 x multiply-adds of the convolutions and fc),
    /// for GFLOP/s in benchmarks.
    pub fn flops_per_image(self) -> f64 {
        match self {
            Network::ResNet50 => 2.0 * 4.09e9,
            Network::InceptionV3 => 2.0 * 5.71e9,
        }
    }

    /// Every tensor the network reads, in build order, with its shape.
    pub fn tensor_spec(self) -> Vec<(String, Vec<usize>)> {
        match self {
            Network::ResNet50 => resnet50::tensor_spec(),
            Network::InceptionV3 => inception_v3::tensor_spec(),
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// State-dict entries that a checkpoint may carry and that inference never reads.
fn ignorable(name: &str) -> bool {
    name.ends_with(".num_batches_tracked") || name.starts_with("AuxLogits.")
}

/// A validated set of tensors for one network: every name present with the right shape,
/// converted to f32, nothing unexpected. Built networks borrow from it only while loading.
#[derive(Debug)]
pub struct Weights {
    network: Network,
    tensors: HashMap<String, Tensor>,
    synthetic: Option<u64>,
    source: PathBuf,
}

impl Weights {
    /// Validates `tensors` against `network`'s spec. `source` names the file in errors.
    pub fn from_tensors(
        network: Network,
        mut tensors: HashMap<String, Tensor>,
        synthetic: Option<u64>,
        source: &Path,
    ) -> Result<Self, ModelError> {
        let spec = network.tensor_spec();
        let mismatch = |name: &str, expected: &[usize], found: String| ModelError::WeightMismatch {
            path: source.to_path_buf(),
            name: name.to_string(),
            expected: expected.to_vec(),
            found,
        };
        let mut out = HashMap::with_capacity(spec.len());
        for (name, shape) in &spec {
            let t = tensors
                .remove(name)
                .ok_or_else(|| mismatch(name, shape, "nothing (tensor missing)".into()))?;
            if t.dims() != shape.as_slice() {
                return Err(mismatch(name, shape, format!("{:?}", t.dims())));
            }
            if !matches!(
                t.dtype(),
                DType::F32 | DType::F16 | DType::BF16 | DType::F64
            ) {
                return Err(mismatch(name, shape, format!("dtype {:?}", t.dtype())));
            }
            out.insert(name.clone(), t.to_dtype(DType::F32)?);
        }
        let mut extra: Vec<&String> = tensors.keys().filter(|n| !ignorable(n)).collect();
        extra.sort();
        if let Some(name) = extra.first() {
            return Err(ModelError::WeightFile {
                path: source.to_path_buf(),
                reason: format!(
                    "unexpected tensor `{name}` (not part of {network}; wrong network or variant?)"
                ),
            });
        }
        Ok(Self {
            network,
            tensors: out,
            synthetic,
            source: source.to_path_buf(),
        })
    }

    /// Loads and validates a `.safetensors` or torchvision `.pth` file.
    pub fn load(network: Network, path: &Path) -> Result<Self, ModelError> {
        let file_err = |reason: String| ModelError::WeightFile {
            path: path.to_path_buf(),
            reason,
        };
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let (tensors, synthetic) = match ext {
            "pth" | "pt" | "bin" => {
                let list = candle_core::pickle::read_all(path)
                    .map_err(|e| file_err(format!("not a readable PyTorch checkpoint: {e}")))?;
                (list.into_iter().collect::<HashMap<_, _>>(), None)
            }
            _ => {
                let data = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
                read_safetensors(&data, path)?
            }
        };
        let w = Self::from_tensors(network, tensors, synthetic, path)?;
        if let Some(seed) = synthetic {
            tracing::warn!(
                "{}: SYNTHETIC weights (seed {seed}) - predictions are meaningless",
                path.display()
            );
        }
        Ok(w)
    }

    /// Deterministic synthetic weights: He-initialised convolutions, BatchNorm statistics
    /// far from identity (so folding is exercised), and an fc scaled so that the logits
    /// spread over several units and the top-5 are well separated.
    pub fn synthetic(network: Network, seed: u64) -> Result<Self, ModelError> {
        // Each network gets its own stream so adding one never changes the other.
        let salt = match network {
            Network::ResNet50 => 0x5245_534e,
            Network::InceptionV3 => 0x494e_4333,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ salt);
        let mut tensors = HashMap::new();
        for (name, shape) in network.tensor_spec() {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name == "fc.weight" {
                // Chosen so the logits have a standard deviation of about 5 on the
                // reference inputs: the top-5 are then separated by far more than 1e-4.
                let gain = match network {
                    Network::ResNet50 => 2.0,
                    Network::InceptionV3 => 10.0,
                };
                let fan_in = shape.get(1).copied().unwrap_or(1) as f64;
                normal(&mut rng, n, gain / fan_in.sqrt())
            } else if name == "fc.bias" {
                uniform(&mut rng, n, -0.1, 0.1)
            } else if shape.len() == 4 {
                let fan_in: usize = shape.iter().skip(1).product();
                normal(&mut rng, n, (2.0 / fan_in.max(1) as f64).sqrt())
            } else if name.ends_with(".running_var") {
                uniform(&mut rng, n, 0.5, 2.0)
            } else if name.ends_with(".running_mean") || name.ends_with(".bias") {
                uniform(&mut rng, n, -0.2, 0.2)
            } else {
                // BatchNorm gamma. A ResNet's last BN in a block is damped so the residual
                // stream grows slowly over 16 blocks, as in a trained network.
                let (lo, hi) = if name.ends_with("bn3.weight") {
                    (0.2, 0.4)
                } else {
                    (0.8, 1.2)
                };
                uniform(&mut rng, n, lo, hi)
            };
            tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
        }
        let source = PathBuf::from(format!("<synthetic {network} seed {seed}>"));
        Self::from_tensors(network, tensors, Some(seed), &source)
    }

    /// Writes these weights as `.safetensors` (torchvision names), tagging synthetic ones.
    pub fn save_safetensors(&self, path: &Path) -> Result<(), ModelError> {
        let write_err = |reason: String| ModelError::WeightWrite {
            path: path.to_path_buf(),
            reason,
        };
        let ordered: BTreeMap<&String, &Tensor> = self.tensors.iter().collect();
        // One key only: safetensors writes metadata in HashMap order, and the file's bytes
        // (hence its SHA-256, which the reference fixtures record) must be reproducible.
        let metadata = self
            .synthetic
            .map(|seed| HashMap::from([(SYNTHETIC_KEY.to_string(), seed.to_string())]));
        let tmp = path.with_extension("safetensors.tmp");
        safetensors::serialize_to_file(ordered, metadata, &tmp)
            .map_err(|e| write_err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| write_err(e.to_string()))
    }

    /// Writes these weights as half-precision `.safetensors` (half the bytes; a node
    /// widens them to f32 when it loads them): small files for tests of weight
    /// distribution, not for accuracy.
    pub fn save_safetensors_f16(&self, path: &Path) -> Result<(), ModelError> {
        let half: HashMap<String, Tensor> = self
            .tensors
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.to_dtype(DType::F16)?)))
            .collect::<Result<_, candle_core::Error>>()?;
        Self {
            network: self.network,
            tensors: half,
            synthetic: self.synthetic,
            source: self.source.clone(),
        }
        .save_safetensors(path)
    }

    /// The network these weights are for.
    pub fn network(&self) -> Network {
        self.network
    }

    /// `Some(seed)` when the weights are synthetic and predictions mean nothing.
    pub fn synthetic_seed(&self) -> Option<u64> {
        self.synthetic
    }

    /// Where the weights came from (file path, or a description for synthetic ones).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// One validated tensor; validation guarantees every spec name is present.
    pub(crate) fn get(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("weight `{name}` not loaded")))
    }
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(lo..hi) as f32).collect()
}

/// Box-Muller normals: written out so the stream is fixed by our code, not by a crate version.
fn normal(rng: &mut ChaCha8Rng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1], so ln is finite
        let u2: f64 = rng.gen::<f64>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

type TensorMap = HashMap<String, Tensor>;

/// Parses a safetensors buffer; on failure, names the first tensor the file cannot hold.
fn read_safetensors(data: &[u8], path: &Path) -> Result<(TensorMap, Option<u64>), ModelError> {
    let st = match safetensors::SafeTensors::deserialize(data) {
        Ok(st) => st,
        Err(e) => return Err(diagnose_bad_safetensors(data, path, &e.to_string())),
    };
    let synthetic = safetensors::SafeTensors::read_metadata(data)
        .ok()
        .and_then(|(_, m)| m.metadata().as_ref()?.get(SYNTHETIC_KEY)?.parse().ok());
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let t = view
            .load(&Device::Cpu)
            .map_err(|e| ModelError::WeightFile {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}`: {e}"),
            })?;
        tensors.insert(name, t);
    }
    Ok((tensors, synthetic))
}

#[derive(Deserialize)]
struct HeaderEntry {
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// A file whose header parses but whose data stops early is a truncated download; say
/// which tensor is cut off rather than only "incomplete buffer".
fn diagnose_bad_safetensors(data: &[u8], path: &Path, reason: &str) -> ModelError {
    let generic = ModelError::WeightFile {
        path: path.to_path_buf(),
        reason: format!("not a valid safetensors file ({reason})"),
    };
    let Some(len_bytes) = data.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
        return generic;
    };
    let header_len = u64::from_le_bytes(len_bytes);
    let Some(header) = usize::try_from(header_len)
        .ok()
        .and_then(|n| data.get(8..8usize.checked_add(n)?))
    else {
        return generic;
    };
    let Ok(entries) = serde_json::from_slice::<HashMap<String, serde_json::Value>>(header) else {
        return generic;
    };
    let available = data.len() - 8 - header.len();
    let mut cut: Vec<(usize, String, HeaderEntry)> = entries
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .filter_map(|(k, v)| {
            serde_json::from_value::<HeaderEntry>(v)
                .ok()
                .map(|e| (k, e))
        })
        .filter(|(_, e)| e.data_offsets.1 > available)
        .map(|(k, e)| (e.data_offsets.0, k, e))
        .collect();
    cut.sort_by_key(|(start, name, _)| (*start, name.clone()));
    match cut.into_iter().next() {
        Some((start, name, e)) => ModelError::WeightMismatch {
            path: path.to_path_buf(),
            name,
            expected: e.shape,
            found: format!(
                "only {} of {} bytes (file truncated)",
                available.saturating_sub(start),
                e.data_offsets.1.saturating_sub(start)
            ),
        },
        None => generic,
    }
}

/// The weight file to use for `network` in `dir`: `<name>.safetensors`, else `<name>.pth`,
/// else torchvision's own checkpoint name.
pub fn find_weight_file(network: Network, dir: &Path) -> Result<PathBuf, ModelError> {
    let candidates = [
        dir.join(network.file_name()),
        dir.join(format!("{}.pth", network.name())),
        dir.join(network.torchvision_pth()),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| ModelError::WeightFile {
            path: dir.join(network.file_name()),
            reason: format!(
                "missing; run `dml weights synth` (fake weights) or `dml weights fetch`, or copy \
                 {}/model.safetensors or torchvision's {} there",
                network.hub_repo(),
                network.torchvision_pth()
            ),
        })
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or(&[]));
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Downloads `network`'s torchvision weights from the Hub into `dir`, checks the file's
/// SHA-256 against the one the Hub serves for it, validates every tensor, and returns the
/// destination and its hash. `endpoint` overrides `https://huggingface.co` (tests, mirrors).
pub fn fetch(
    network: Network,
    dir: &Path,
    endpoint: Option<&str>,
) -> Result<(PathBuf, String), ModelError> {
    let dest = dir.join(network.file_name());
    let remote = format!("{}/model.safetensors", network.hub_repo());
    let offline = |why: String| {
        ModelError::Fetch(format!(
            "cannot download {remote} ({}); without internet, copy that file (or torchvision's \
             {}) to {}",
            why.replace('\n', " "),
            network.torchvision_pth(),
            dest.display()
        ))
    };
    let mut builder = hf_hub::api::sync::ApiBuilder::from_env().with_progress(false);
    if let Some(e) = endpoint {
        builder = builder.with_endpoint(e.to_string());
    }
    let api = builder.build().map_err(|e| offline(e.to_string()))?;
    let cached = api
        .model(network.hub_repo().to_string())
        .get("model.safetensors")
        .map_err(|e| offline(e.to_string()))?;
    let sha = sha256_file(&cached).map_err(|e| offline(e.to_string()))?;
    // hf-hub names the cached blob after the ETag the Hub sent, which for LFS files is the
    // SHA-256 of the content: a mismatch means a corrupted or tampered download.
    let blob = std::fs::canonicalize(&cached)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    if let Some(etag) = blob.filter(|b| b.len() == 64 && b.chars().all(|c| c.is_ascii_hexdigit())) {
        if etag != sha {
            return Err(ModelError::Fetch(format!(
                "{remote}: SHA-256 {sha} does not match the Hub's {etag}; delete the Hugging Face \
                 cache entry and retry"
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| ModelError::WeightWrite {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let tmp = dest.with_extension("safetensors.part");
    std::fs::copy(&cached, &tmp)
        .and_then(|_| std::fs::rename(&tmp, &dest))
        .map_err(|e| ModelError::WeightWrite {
            path: dest.clone(),
            reason: e.to_string(),
        })?;
    Weights::load(network, &dest)?;
    Ok((dest, sha))
}
