//! ResNet-50 (torchvision's v1.5: stride in the 3x3 conv), with torchvision's tensor names,
//! BatchNorm folded into the convolutions and the residual add fused with its ReLU.

use candle_core::Tensor;

use crate::layers::{self, ConvSpec, FoldedConv, Linear};
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
                c2: conv(
                    format!("{p}.conv2"),
                    format!("{p}.bn2"),
                    width,
                    width,
                    3,
                    stride,
                ),
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
    c1: FoldedConv,
    c2: FoldedConv,
    c3: FoldedConv,
    downsample: Option<FoldedConv>,
}

impl Bottleneck {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        let y = self.c1.forward(x)?;
        let y = self.c2.forward(&y)?;
        self.c3.forward_residual(&y, &shortcut)
    }
}

/// ResNet-50 ready for inference. Takes `[n, 3, 224, 224]` normalised images, returns
/// `[n, 1000]` logits.
#[derive(Debug)]
pub struct ResNet50 {
    stem: FoldedConv,
    blocks: Vec<Bottleneck>,
    fc: Linear,
}

impl ResNet50 {
    /// Builds the network from validated weights, folding every BatchNorm.
    pub fn new(w: &Weights) -> candle_core::Result<Self> {
        let stem = FoldedConv::fold(&stem_spec(), w, true)?;
        let blocks = block_specs()
            .iter()
            .map(|b| {
                Ok(Bottleneck {
                    c1: FoldedConv::fold(&b.c1, w, true)?,
                    c2: FoldedConv::fold(&b.c2, w, true)?,
                    c3: FoldedConv::fold(&b.c3, w, false)?,
                    downsample: b
                        .downsample
                        .as_ref()
                        .map(|d| FoldedConv::fold(d, w, false))
                        .transpose()?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let fc = Linear::load(w, "fc")?;
        Ok(Self { stem, blocks, fc })
    }

    /// Logits for a batch.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        layers::check_input(x, INPUT_SIZE, "resnet50")?;
        let y = self.stem.forward(x)?;
        // maxpool(3, stride 2, padding 1): after the ReLU every value is >= 0, so zero
        // padding is the same as torchvision's -inf padding.
        let mut y = y
            .pad_with_zeros(2, 1, 1)?
            .pad_with_zeros(3, 1, 1)?
            .max_pool2d_with_stride(3, 2)?;
        for b in &self.blocks {
            y = b.forward(&y)?;
        }
        self.fc.forward(&layers::global_avg_pool(&y)?)
    }
}

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
