//! Building blocks shared by both networks: a convolution with its BatchNorm folded in,
//! the in-place epilogues that add bias, residual and ReLU in one pass over the output,
//! and the pooling helpers torchvision's padding rules need.

use candle_core::{CpuStorage, DType, Device, InplaceOp2, InplaceOp3, Layout, Tensor};
use rayon::prelude::*;

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

/// A convolution whose BatchNorm has been folded into weight and bias at load time, so that
/// inference does one convolution and one fused epilogue instead of five elementwise passes.
#[derive(Debug)]
pub(crate) struct FoldedConv {
    weight: Tensor,
    /// Per-output-channel bias, shape `[cout]`.
    bias: Tensor,
    stride: usize,
    /// Padding candle applies itself (it only supports the same padding on both axes).
    pad: usize,
    /// Extra zero padding we add by hand for asymmetric kernels (1x7, 7x1, ...).
    extra_h: usize,
    extra_w: usize,
    relu: bool,
}

impl FoldedConv {
    /// Folds `spec`'s BatchNorm into its convolution: w' = w * g / sqrt(v + eps),
    /// b' = beta - mean * g / sqrt(v + eps). Done in f64 so folding adds no visible error.
    pub fn fold(spec: &ConvSpec, w: &Weights, relu: bool) -> candle_core::Result<Self> {
        Self::fold_with_input_affine(spec, w, relu, None)
    }

    /// Like [`FoldedConv::fold`], and also absorbs a per-input-channel affine map
    /// `x' = x * scale[c] + shift[c]` applied before the convolution. Exact only for
    /// unpadded convolutions (padding would see the shifted zeros), which is checked.
    pub fn fold_with_input_affine(
        spec: &ConvSpec,
        w: &Weights,
        relu: bool,
        input_affine: Option<(&[f64], &[f64])>,
    ) -> candle_core::Result<Self> {
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
        let weight =
            Tensor::from_vec(new_w, (spec.cout, spec.cin, spec.kh, spec.kw), &Device::Cpu)?;
        let bias = Tensor::from_vec(new_b, spec.cout, &Device::Cpu)?;
        let pad = spec.ph.min(spec.pw);
        Ok(Self {
            weight,
            bias,
            stride: spec.stride,
            pad,
            extra_h: spec.ph - pad,
            extra_w: spec.pw - pad,
            relu,
        })
    }

    fn conv(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        if self.extra_h > 0 {
            x = x.pad_with_zeros(2, self.extra_h, self.extra_h)?;
        }
        if self.extra_w > 0 {
            x = x.pad_with_zeros(3, self.extra_w, self.extra_w)?;
        }
        x.conv2d(&self.weight, self.pad, self.stride, 1, 1)
    }

    /// Convolution, bias and (if configured) ReLU.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.conv(x)?;
        y.inplace_op2(&self.bias, &BiasAct { relu: self.relu })?;
        Ok(y)
    }

    /// Convolution, bias, `+ residual`, ReLU: the tail of a ResNet bottleneck in one pass.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.conv(x)?;
        let residual = residual.contiguous()?;
        y.inplace_op3(&self.bias, &residual, &BiasResidualRelu)?;
        Ok(y)
    }
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

fn f32_slice_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a mut [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: output not contiguous")))?;
    match s {
        CpuStorage::F32(v) => v
            .get_mut(start..end)
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: layout out of bounds"))),
        _ => candle_core::bail!("{op}: only f32 is supported"),
    }
}

/// Planes of an NCHW tensor, with the channel count and plane size, checked against `bias`.
fn plane_geometry(l: &Layout, bias_len: usize, op: &str) -> candle_core::Result<usize> {
    let dims = l.dims();
    match dims {
        [_, c, h, w] if *c == bias_len && h * w > 0 => Ok(h * w),
        [_, c] if *c == bias_len => Ok(1),
        _ => candle_core::bail!("{op}: shape {dims:?} does not match bias of {bias_len}"),
    }
}

/// How many planes one rayon task handles: enough elements to amortise the task cost.
fn planes_per_task(plane: usize) -> usize {
    (16 * 1024 / plane.max(1)).max(1)
}

/// `x = max(x + bias[c], 0)` (or without the max), in place.
struct BiasAct {
    relu: bool,
}

impl InplaceOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let bias = f32_slice(s2, l2, self.name())?;
        let plane = plane_geometry(l1, bias.len(), self.name())?;
        let nb = bias.len();
        let relu = self.relu;
        let x = f32_slice_mut(s1, l1, self.name())?;
        x.par_chunks_mut(plane)
            .with_min_len(planes_per_task(plane))
            .enumerate()
            .for_each(|(i, p)| {
                let b = bias.get(i % nb).copied().unwrap_or(0.0);
                if relu {
                    p.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
                } else {
                    p.iter_mut().for_each(|v| *v += b);
                }
            });
        Ok(())
    }
}

/// `x = max(x + bias[c] + residual, 0)`, in place.
struct BiasResidualRelu;

impl InplaceOp3 for BiasResidualRelu {
    fn name(&self) -> &'static str {
        "bias-residual-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let bias = f32_slice(s2, l2, self.name())?;
        let residual = f32_slice(s3, l3, self.name())?;
        let plane = plane_geometry(l1, bias.len(), self.name())?;
        if l1.dims() != l3.dims() {
            candle_core::bail!(
                "{}: residual shape {:?} != {:?}",
                self.name(),
                l3.dims(),
                l1.dims()
            );
        }
        let nb = bias.len();
        let x = f32_slice_mut(s1, l1, self.name())?;
        x.par_chunks_mut(plane)
            .zip(residual.par_chunks(plane))
            .with_min_len(planes_per_task(plane))
            .enumerate()
            .for_each(|(i, (p, r))| {
                let b = bias.get(i % nb).copied().unwrap_or(0.0);
                p.iter_mut()
                    .zip(r)
                    .for_each(|(v, r)| *v = (*v + b + r).max(0.0));
            });
        Ok(())
    }
}

/// 3x3 max pool, stride 2, no padding, floor mode: torchvision's `max_pool2d(3, 2)`.
pub(crate) fn max_pool_3s2(x: &Tensor) -> candle_core::Result<Tensor> {
    x.max_pool2d_with_stride(3, 2)
}

/// torchvision's `avg_pool2d(3, stride=1, padding=1)` with `count_include_pad=True`:
/// padded zeros count in the divisor, so zero padding then a plain 3x3 mean is exact.
pub(crate) fn avg_pool_3s1p1(x: &Tensor) -> candle_core::Result<Tensor> {
    x.pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .avg_pool2d_with_stride(3, 1)
}

/// A fully connected layer `y = x W^T + b`, weights kept pre-transposed for the matmul.
#[derive(Debug)]
pub(crate) struct Linear {
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    pub fn load(w: &Weights, key: &str) -> candle_core::Result<Self> {
        let weight_t = w.get(&format!("{key}.weight"))?.t()?.contiguous()?;
        let bias = w.get(&format!("{key}.bias"))?.clone();
        Ok(Self { weight_t, bias })
    }

    /// `x`: `[n, in]` -> `[n, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.weight_t)?;
        y.inplace_op2(&self.bias, &BiasAct { relu: false })?;
        Ok(y)
    }
}

/// Global average pool: `[n, c, h, w]` -> `[n, c]`.
pub(crate) fn global_avg_pool(x: &Tensor) -> candle_core::Result<Tensor> {
    x.mean((2, 3))
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
