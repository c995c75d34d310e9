//! ResNet-50 (torchvision's v1.5: stride in the 3x3 conv), with torchvision's tensor names,
//! BatchNorm folded into the convolutions and the residual add fused with its ReLU.

use candle_core::Tensor;

use crate::kernels::{self, Act, Kernels, OutSlice, PackedConv, Scratch};
use crate::layers::{self, ConvSpec, Linear, ScratchPool};
use crate::weights::Weights;

/// torchvision's BatchNorm2d default epsilon (1e-5), in millionths.
const EPS_MICRO: u32 = 10;
const BLOCKS: [usize; 4] = [3, 4, 6, 3];
const WIDTHS: [usize; 4] = [64, 128, 256, 512];
const EXPANSION: usize = 4;
/// Input side length.
pub const INPUT_SIZE: usize = 224;

fn conv(
    conv_key: String,
    bn_key: String,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
) -> ConvSpec {
    ConvSpec {
        conv_key,
        bn_key,
        cin,
        cout,
        kh: k,
        kw: k,
        stride,
        ph: k / 2,
        pw: k / 2,
        eps_micro: EPS_MICRO,
        large: false,
    }
}

/// The convolutions of one bottleneck: 1x1 reduce, 3x3 (strided), 1x1 expand, and the
/// projection shortcut when the shape changes.
struct BlockSpec {
    c1: ConvSpec,
    c2: ConvSpec,
    c3: ConvSpec,
    downsample: Option<ConvSpec>,
}

fn stem_spec() -> ConvSpec {
    conv("conv1".into(), "bn1".into(), 3, 64, 7, 2)
}

/// All bottlenecks in order; the single source for both the tensor list and the build.
fn block_specs() -> Vec<BlockSpec> {
    let mut out = Vec::new();
    let mut cin = 64;
    for (layer, (&n, &width)) in BLOCKS.iter().zip(WIDTHS.iter()).enumerate() {
        for i in 0..n {
            let p = format!("layer{}.{i}", layer + 1);
            let stride = if i == 0 && layer > 0 { 2 } else { 1 };
            let cout = width * EXPANSION;
            let downsample = (i == 0).then(|| {
                conv(
                    format!("{p}.downsample.0"),
                    format!("{p}.downsample.1"),
                    cin,
                    cout,
                    1,
                    stride,
                )
            });
            out.push(BlockSpec {
                c1: conv(format!("{p}.conv1"), format!("{p}.bn1"), cin, width, 1, 1),
                c2: ConvSpec {
                    // layer1 runs at 56x56.
                    large: layer == 0,
                    ..conv(
                        format!("{p}.conv2"),
                        format!("{p}.bn2"),
                        width,
                        width,
                        3,
                        stride,
                    )
                },
                c3: conv(format!("{p}.conv3"), format!("{p}.bn3"), width, cout, 1, 1),
                downsample,
            });
            cin = cout;
        }
    }
    out
}

/// Every tensor ResNet-50 reads, in order, with torchvision's names and shapes.
pub fn tensor_spec() -> Vec<(String, Vec<usize>)> {
    let mut out = stem_spec().tensors();
    for b in block_specs() {
        for c in [Some(&b.c1), Some(&b.c2), Some(&b.c3), b.downsample.as_ref()]
            .into_iter()
            .flatten()
        {
            out.extend(c.tensors());
        }
    }
    out.push(("fc.weight".into(), vec![1000, 2048]));
    out.push(("fc.bias".into(), vec![1000]));
    out
}

#[derive(Debug)]
struct Bottleneck {
    c1: PackedConv,
    c2: PackedConv,
    c3: PackedConv,
    downsample: Option<PackedConv>,
}

impl Bottleneck {
    /// 1x1 reduce, 3x3, then the 1x1 expand whose output tile gets bias, shortcut and ReLU
    /// in the same pass.
    fn forward(&self, x: Act, s: &mut Scratch) -> Act {
        let projected = self.downsample.as_ref().map(|d| d.forward(&x, s));
        let y1 = self.c1.forward(&x, s);
        let y2 = self.c2.forward(&y1, s);
        s.recycle(y1);
        let mut out = s.act(y2.n, y2.h, y2.w, self.c3.cout);
        let shortcut = projected.as_ref().unwrap_or(&x);
        self.c3.run(
            &y2,
            OutSlice {
                data: &mut out.data,
                ld: self.c3.cout,
                col0: 0,
            },
            Some(shortcut.values()),
        );
        s.recycle(y2);
        if let Some(p) = projected {
            s.recycle(p);
        }
        s.recycle(x);
        out
    }
}

/// ResNet-50 ready for inference. Takes `[n, 3, 224, 224]` normalised images, returns
/// `[n, 1000]` logits.
#[derive(Debug)]
pub struct ResNet50 {
    stem: PackedConv,
    blocks: Vec<Bottleneck>,
    fc: Linear,
    scratch: ScratchPool,
}

impl ResNet50 {
    /// Builds the network from validated weights, folding every BatchNorm.
    pub fn new(w: &Weights) -> candle_core::Result<Self> {
        Self::with_kernels(w, Kernels::best())
    }

    /// Like [`ResNet50::new`], with a chosen set of kernels.
    pub fn with_kernels(w: &Weights, k: Kernels) -> candle_core::Result<Self> {
        let stem = layers::fold(&stem_spec(), w, true, k.fp32())?;
        let blocks = block_specs()
            .iter()
            .map(|b| {
                Ok(Bottleneck {
                    c1: layers::fold(&b.c1, w, true, k)?,
                    c2: layers::fold(&b.c2, w, true, k)?,
                    // ReLU after the residual add.
                    c3: layers::fold(&b.c3, w, true, k)?,
                    downsample: b
                        .downsample
                        .as_ref()
                        .map(|d| layers::fold(d, w, false, k))
                        .transpose()?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let fc = Linear::load(w, "fc")?;
        Ok(Self {
            stem,
            blocks,
            fc,
            scratch: ScratchPool::default(),
        })
    }

    /// Multiply-adds of one image's forward pass.
    pub fn macs_per_image(&self) -> u64 {
        let mut side = INPUT_SIZE;
        let mut total = self.stem.macs(side, side);
        side = self.stem.out_hw(side, side).0;
        side = (side + 2 - 3) / 2 + 1;
        for b in &self.blocks {
            total += b.c1.macs(side, side);
            total += b.c2.macs(side, side);
            let next = b.c2.out_hw(side, side).0;
            total += b.c3.macs(next, next);
            if let Some(d) = &b.downsample {
                total += d.macs(side, side);
            }
            side = next;
        }
        total + 2048 * 1000
    }

    /// Logits for a batch (at most [`crate::classifier::MAX_CHUNK`] images at a time is
    /// what the classifier sends).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        layers::check_input(x, INPUT_SIZE, "resnet50")?;
        let mut s = self.scratch.take();
        let input = layers::input_nhwc(x, &mut s)?;
        // Step 0 is the stem, step i the bottleneck i - 1. Stem and stages 1-2 (56x56 and
        // 28x28) one image at a time, stages 3-4 (14x14, 7x7) on the whole batch.
        let y = kernels::run_grouped(
            input,
            1 + self.blocks.len(),
            |i| if i <= EARLY_STEPS { 1 } else { usize::MAX },
            |i, x, s| match i {
                0 => self.stem_and_pool(x, s),
                _ => self.blocks[i - 1].forward(x, s),
            },
            &mut s,
        );
        self.fc.head(y, s, &self.scratch)
    }

    /// conv1, then maxpool(3, stride 2, padding 1); padded positions are skipped, as with
    /// -inf.
    fn stem_and_pool(&self, input: Act, s: &mut Scratch) -> Act {
        let y = self.stem.forward(&input, s);
        s.recycle(input);
        let (oh, ow) = ((y.h + 2 - 3) / 2 + 1, (y.w + 2 - 3) / 2 + 1);
        let mut pooled = s.act(y.n, oh, ow, y.c);
        kernels::max_pool_3s2(
            &y,
            1,
            OutSlice {
                data: &mut pooled.data,
                ld: y.c,
                col0: 0,
            },
        );
        s.recycle(y);
        pooled
    }
}

/// The stem and the 7 bottlenecks of stages 1-2: the steps run one image at a time.
const EARLY_STEPS: usize = 7;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_matches_torchvision_parameter_count() {
        let spec = tensor_spec();
        // torchvision's resnet50 has 25,557,032 parameters; BatchNorm running stats add
        // 2 x 26,560 buffers (53 BNs).
        let params: usize = spec
            .iter()
            .filter(|(n, _)| !n.contains("running_"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(params, 25_557_032);
        assert_eq!(
            spec.iter()
                .filter(|(n, _)| n.ends_with("running_var"))
                .count(),
            53
        );
        assert!(spec
            .iter()
            .any(|(n, s)| n == "layer4.2.conv3.weight" && s == &[2048, 512, 1, 1]));
    }
}
