//! Building blocks shared by both networks: folding each BatchNorm into its convolution and
//! packing it for the kernels, the classifier head, and moving between candle tensors and
//! the kernels' NHWC activations.

use std::sync::Mutex;

use candle_core::{CpuStorage, DType, Device, Layout, Tensor};

use crate::kernels::{self, Act, Kernels, PackedConv, Scratch};
use crate::weights::Weights;

/// One torchvision convolution (no bias) followed by a BatchNorm, as named in the state dict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConvSpec {
    /// Prefix of the convolution's tensors, e.g. `layer1.0.conv1` or `Mixed_5b.branch1x1.conv`.
    pub conv_key: String,
    /// Prefix of the BatchNorm's tensors.
    pub bn_key: String,
    pub cin: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub ph: usize,
    pub pw: usize,
    /// BatchNorm epsilon times 1e6 (kept integral so the spec stays `Eq`).
    pub eps_micro: u32,
    /// The layer sees large images (>= 40x40 at the network's input size): picks the
    /// Winograd tile (see `PackedConv::from_oihw`).
    pub large: bool,
}

impl ConvSpec {
    /// The tensor names and shapes this unit reads from a state dict.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let c = self.cout;
        vec![
            (
                format!("{}.weight", self.conv_key),
                vec![c, self.cin, self.kh, self.kw],
            ),
            (format!("{}.weight", self.bn_key), vec![c]),
            (format!("{}.bias", self.bn_key), vec![c]),
            (format!("{}.running_mean", self.bn_key), vec![c]),
            (format!("{}.running_var", self.bn_key), vec![c]),
        ]
    }
}

/// Folds `spec`'s BatchNorm into its convolution and packs it for the NHWC kernels:
/// w' = w * g / sqrt(v + eps), b' = beta - mean * g / sqrt(v + eps), in f64 so folding adds
/// no visible error. One convolution with a fused epilogue then replaces five passes.
pub(crate) fn fold(
    spec: &ConvSpec,
    w: &Weights,
    relu: bool,
    k: Kernels,
) -> candle_core::Result<PackedConv> {
    fold_with_input_affine(spec, w, relu, None, k)
}

/// Like [`fold`], and also absorbs a per-input-channel affine map `x' = x * scale[c] +
/// shift[c]` applied before the convolution. Exact only for unpadded convolutions (padding
/// would see the shifted zeros), which is checked.
pub(crate) fn fold_with_input_affine(
    spec: &ConvSpec,
    w: &Weights,
    relu: bool,
    input_affine: Option<(&[f64], &[f64])>,
    kernels: Kernels,
) -> candle_core::Result<PackedConv> {
    let get = |suffix: &str, key: &str| -> candle_core::Result<Vec<f32>> {
        w.get(&format!("{key}.{suffix}"))?
            .flatten_all()?
            .to_vec1::<f32>()
    };
    let kernel = get("weight", &spec.conv_key)?;
    let gamma = get("weight", &spec.bn_key)?;
    let beta = get("bias", &spec.bn_key)?;
    let mean = get("running_mean", &spec.bn_key)?;
    let var = get("running_var", &spec.bn_key)?;
    let eps = f64::from(spec.eps_micro) * 1e-6;
    let per_out = spec.cin * spec.kh * spec.kw;
    let per_in = spec.kh * spec.kw;
    if kernel.len() != spec.cout * per_out {
        candle_core::bail!("{}: kernel has {} values", spec.conv_key, kernel.len());
    }
    if let Some((scale, shift)) = input_affine {
        if spec.ph != 0 || spec.pw != 0 || scale.len() != spec.cin || shift.len() != spec.cin {
            candle_core::bail!(
                "{}: input affine fold needs an unpadded conv",
                spec.conv_key
            );
        }
    }
    let mut new_w = Vec::with_capacity(kernel.len());
    let mut new_b = Vec::with_capacity(spec.cout);
    for (o, k_out) in kernel.chunks_exact(per_out).enumerate() {
        let (g, b, m, v) = match (gamma.get(o), beta.get(o), mean.get(o), var.get(o)) {
            (Some(g), Some(b), Some(m), Some(v)) => (*g, *b, *m, *v),
            _ => candle_core::bail!("{}: BatchNorm too short", spec.bn_key),
        };
        let s = f64::from(g) / (f64::from(v) + eps).sqrt();
        let mut bias = f64::from(b) - f64::from(m) * s;
        for (c, k_in) in k_out.chunks_exact(per_in).enumerate() {
            let (in_scale, in_shift) = match input_affine {
                Some((scale, shift)) => (
                    scale.get(c).copied().unwrap_or(1.0),
                    shift.get(c).copied().unwrap_or(0.0),
                ),
                None => (1.0, 0.0),
            };
            for &k in k_in {
                let folded = f64::from(k) * s;
                bias += folded * in_shift;
                new_w.push((folded * in_scale) as f32);
            }
        }
        new_b.push(bias as f32);
    }
    Ok(PackedConv::from_oihw(
        &new_w,
        new_b,
        spec.cin,
        spec.cout,
        spec.kh,
        spec.kw,
        spec.stride,
        spec.ph,
        spec.pw,
        relu,
        kernels,
        spec.large,
    ))
}

/// Borrows the contiguous f32 slice behind a layout.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: operand not contiguous")))?;
    match s {
        CpuStorage::F32(v) => v
            .get(start..end)
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: layout out of bounds"))),
        _ => candle_core::bail!("{op}: only f32 is supported"),
    }
}

/// A fully connected layer `y = x W^T + b`, weights kept pre-transposed (`[in, out]`).
#[derive(Debug)]
pub(crate) struct Linear {
    weight_t: Vec<f32>,
    bias: Vec<f32>,
}

impl Linear {
    pub fn load(w: &Weights, key: &str) -> candle_core::Result<Self> {
        let weight_t = w
            .get(&format!("{key}.weight"))?
            .t()?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bias = w.get(&format!("{key}.bias"))?.to_vec1::<f32>()?;
        Ok(Self { weight_t, bias })
    }

    /// `x`: `[rows, in]` -> `[rows, out]` as a candle tensor.
    pub fn forward(&self, x: &[f32], rows: usize) -> candle_core::Result<Tensor> {
        let y = kernels::linear(x, rows, &self.weight_t, &self.bias);
        Tensor::from_vec(y, (rows, self.bias.len()), &Device::Cpu)
    }

    /// Both networks' head: global average pool of the last activation, then this layer.
    /// Hands the pass's buffers back to `pool` for the next pass.
    pub fn head(&self, y: Act, mut s: Scratch, pool: &ScratchPool) -> candle_core::Result<Tensor> {
        let features = kernels::global_avg_pool(&y);
        let n = y.n;
        s.recycle(y);
        pool.put(s);
        self.forward(&features, n)
    }
}

/// The input batch as an NHWC activation, read straight from the tensor's storage.
pub(crate) fn input_nhwc(x: &Tensor, scratch: &mut Scratch) -> candle_core::Result<Act> {
    let (n, c, h, w) = x.dims4()?;
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let src = match &*storage {
        candle_core::Storage::Cpu(s) => f32_slice(s, layout, "input")?,
        _ => candle_core::bail!("input: only CPU tensors are supported"),
    };
    Ok(kernels::nchw_to_nhwc(src, n, c, h, w, scratch))
}

/// A network's recycled buffers, shared by its forward passes (see [`Scratch`]).
#[derive(Debug, Default)]
pub(crate) struct ScratchPool(Mutex<Scratch>);

impl ScratchPool {
    /// Takes the buffers for one forward pass (a concurrent pass gets fresh ones).
    pub fn take(&self) -> Scratch {
        match self.0.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(_) => Scratch::default(),
        }
    }

    pub fn put(&self, s: Scratch) {
        if let Ok(mut g) = self.0.lock() {
            *g = s;
        }
    }
}

/// Checks that a batch is `[n, 3, size, size]` f32 before it reaches the convolutions.
pub(crate) fn check_input(x: &Tensor, size: usize, net: &str) -> candle_core::Result<()> {
    match x.dims() {
        [n, 3, h, w] if *n > 0 && *h == size && *w == size && x.dtype() == DType::F32 => Ok(()),
        d => candle_core::bail!(
            "{net} expects f32 [n, 3, {size}, {size}], got {d:?} {:?}",
            x.dtype()
        ),
    }
}
