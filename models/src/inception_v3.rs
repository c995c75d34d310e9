//! Inception-v3 exactly as torchvision builds it (`Conv2d_1a_3x3` ... `Mixed_7c`, `fc`;
//! BatchNorm eps 0.001; 1x7/7x1 and 1x3/3x1 kernels; padded average pools that count the
//! padding; `transform_input`), without the auxiliary classifier.
//!
//! The blocks are described as data (branches of ops) so that the tensor list and the built
//! network come from one description and cannot drift apart.

use candle_core::Tensor;

use crate::kernels::{self, Act, Kernels, OutSlice, PackedConv, Scratch};
use crate::layers::{self, ConvSpec, Linear, ScratchPool};
use crate::weights::Weights;

/// Input side length.
pub const INPUT_SIZE: usize = 299;
/// BatchNorm eps 0.001, in millionths.
const EPS_MICRO: u32 = 1000;

/// torchvision's `transform_input`: the ImageNet weights were trained on inputs scaled to
/// [-1, 1], so a mean/std-normalised input is mapped back per channel:
/// `x' = x * std / 0.5 + (mean - 0.5) / 0.5`. We fold this into `Conv2d_1a_3x3`, which has
/// no padding, so the fold is exact.
const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const STD: [f64; 3] = [0.229, 0.224, 0.225];

/// One step inside a branch.
#[derive(Debug)]
enum Op<C> {
    Conv(C),
    /// `max_pool2d(3, stride 2)`.
    MaxPool,
    /// `avg_pool2d(3, stride 1, padding 1)`, padding counted.
    AvgPool,
    /// Several convolutions of the same input, concatenated (InceptionE's 1x3 | 3x1 split).
    Fork(Vec<C>),
}

/// A block: branches run on the same input, outputs concatenated along channels.
#[derive(Debug)]
struct Block<C> {
    branches: Vec<Vec<Op<C>>>,
}

impl<C> Op<C> {
    fn convs(&self) -> Vec<&C> {
        match self {
            Op::Conv(c) => vec![c],
            Op::Fork(cs) => cs.iter().collect(),
            Op::MaxPool | Op::AvgPool => vec![],
        }
    }

    fn try_map<D, E>(&self, f: &mut impl FnMut(&C) -> Result<D, E>) -> Result<Op<D>, E> {
        Ok(match self {
            Op::Conv(c) => Op::Conv(f(c)?),
            Op::Fork(cs) => Op::Fork(cs.iter().map(&mut *f).collect::<Result<_, _>>()?),
            Op::MaxPool => Op::MaxPool,
            Op::AvgPool => Op::AvgPool,
        })
    }
}

/// A BasicConv2d: `{name}.conv` + `{name}.bn`.
fn bc(
    name: &str,
    cin: usize,
    cout: usize,
    k: (usize, usize),
    stride: usize,
    pad: (usize, usize),
) -> Op<ConvSpec> {
    Op::Conv(spec(name, cin, cout, k, stride, pad))
}

fn spec(
    name: &str,
    cin: usize,
    cout: usize,
    k: (usize, usize),
    stride: usize,
    pad: (usize, usize),
) -> ConvSpec {
    ConvSpec {
        conv_key: format!("{name}.conv"),
        bn_key: format!("{name}.bn"),
        cin,
        cout,
        kh: k.0,
        kw: k.1,
        stride,
        ph: pad.0,
        pw: pad.1,
        eps_micro: EPS_MICRO,
        // The stem runs at 147x147 and 71x71; the mixed blocks at 35x35 and below.
        large: name.starts_with("Conv2d_"),
    }
}

const K1: (usize, usize) = (1, 1);
const K3: (usize, usize) = (3, 3);
const P0: (usize, usize) = (0, 0);
const P1: (usize, usize) = (1, 1);

fn block_a(p: &str, cin: usize, pool_features: usize) -> Block<ConvSpec> {
    let n = |s: &str| format!("{p}.{s}");
    Block {
        branches: vec![
            vec![bc(&n("branch1x1"), cin, 64, K1, 1, P0)],
            vec![
                bc(&n("branch5x5_1"), cin, 48, K1, 1, P0),
                bc(&n("branch5x5_2"), 48, 64, (5, 5), 1, (2, 2)),
            ],
            vec![
                bc(&n("branch3x3dbl_1"), cin, 64, K1, 1, P0),
                bc(&n("branch3x3dbl_2"), 64, 96, K3, 1, P1),
                bc(&n("branch3x3dbl_3"), 96, 96, K3, 1, P1),
            ],
            vec![
                Op::AvgPool,
                bc(&n("branch_pool"), cin, pool_features, K1, 1, P0),
            ],
        ],
    }
}

fn block_b(p: &str, cin: usize) -> Block<ConvSpec> {
    let n = |s: &str| format!("{p}.{s}");
    Block {
        branches: vec![
            vec![bc(&n("branch3x3"), cin, 384, K3, 2, P0)],
            vec![
                bc(&n("branch3x3dbl_1"), cin, 64, K1, 1, P0),
                bc(&n("branch3x3dbl_2"), 64, 96, K3, 1, P1),
                bc(&n("branch3x3dbl_3"), 96, 96, K3, 2, P0),
            ],
            vec![Op::MaxPool],
        ],
    }
}

fn block_c(p: &str, cin: usize, c7: usize) -> Block<ConvSpec> {
    let n = |s: &str| format!("{p}.{s}");
    let (k17, p17, k71, p71) = ((1, 7), (0, 3), (7, 1), (3, 0));
    Block {
        branches: vec![
            vec![bc(&n("branch1x1"), cin, 192, K1, 1, P0)],
            vec![
                bc(&n("branch7x7_1"), cin, c7, K1, 1, P0),
                bc(&n("branch7x7_2"), c7, c7, k17, 1, p17),
                bc(&n("branch7x7_3"), c7, 192, k71, 1, p71),
            ],
            vec![
                bc(&n("branch7x7dbl_1"), cin, c7, K1, 1, P0),
                bc(&n("branch7x7dbl_2"), c7, c7, k71, 1, p71),
                bc(&n("branch7x7dbl_3"), c7, c7, k17, 1, p17),
                bc(&n("branch7x7dbl_4"), c7, c7, k71, 1, p71),
                bc(&n("branch7x7dbl_5"), c7, 192, k17, 1, p17),
            ],
            vec![Op::AvgPool, bc(&n("branch_pool"), cin, 192, K1, 1, P0)],
        ],
    }
}

fn block_d(p: &str, cin: usize) -> Block<ConvSpec> {
    let n = |s: &str| format!("{p}.{s}");
    Block {
        branches: vec![
            vec![
                bc(&n("branch3x3_1"), cin, 192, K1, 1, P0),
                bc(&n("branch3x3_2"), 192, 320, K3, 2, P0),
            ],
            vec![
                bc(&n("branch7x7x3_1"), cin, 192, K1, 1, P0),
                bc(&n("branch7x7x3_2"), 192, 192, (1, 7), 1, (0, 3)),
                bc(&n("branch7x7x3_3"), 192, 192, (7, 1), 1, (3, 0)),
                bc(&n("branch7x7x3_4"), 192, 192, K3, 2, P0),
            ],
            vec![Op::MaxPool],
        ],
    }
}

fn block_e(p: &str, cin: usize) -> Block<ConvSpec> {
    let n = |s: &str| format!("{p}.{s}");
    let split = |a: &str, b: &str| {
        Op::Fork(vec![
            spec(&n(a), 384, 384, (1, 3), 1, (0, 1)),
            spec(&n(b), 384, 384, (3, 1), 1, (1, 0)),
        ])
    };
    Block {
        branches: vec![
            vec![bc(&n("branch1x1"), cin, 320, K1, 1, P0)],
            vec![
                bc(&n("branch3x3_1"), cin, 384, K1, 1, P0),
                split("branch3x3_2a", "branch3x3_2b"),
            ],
            vec![
                bc(&n("branch3x3dbl_1"), cin, 448, K1, 1, P0),
                bc(&n("branch3x3dbl_2"), 448, 384, K3, 1, P1),
                split("branch3x3dbl_3a", "branch3x3dbl_3b"),
            ],
            vec![Op::AvgPool, bc(&n("branch_pool"), cin, 192, K1, 1, P0)],
        ],
    }
}

/// The whole network as data: the stem is a one-branch block.
fn architecture() -> Vec<Block<ConvSpec>> {
    let stem = Block {
        branches: vec![vec![
            bc("Conv2d_1a_3x3", 3, 32, K3, 2, P0),
            bc("Conv2d_2a_3x3", 32, 32, K3, 1, P0),
            bc("Conv2d_2b_3x3", 32, 64, K3, 1, P1),
            Op::MaxPool,
            bc("Conv2d_3b_1x1", 64, 80, K1, 1, P0),
            bc("Conv2d_4a_3x3", 80, 192, K3, 1, P0),
            Op::MaxPool,
        ]],
    };
    vec![
        stem,
        block_a("Mixed_5b", 192, 32),
        block_a("Mixed_5c", 256, 64),
        block_a("Mixed_5d", 288, 64),
        block_b("Mixed_6a", 288),
        block_c("Mixed_6b", 768, 128),
        block_c("Mixed_6c", 768, 160),
        block_c("Mixed_6d", 768, 160),
        block_c("Mixed_6e", 768, 192),
        block_d("Mixed_7a", 768),
        block_e("Mixed_7b", 1280),
        block_e("Mixed_7c", 2048),
    ]
}

/// Every tensor Inception-v3 reads (auxiliary classifier excluded), in order.
pub fn tensor_spec() -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for block in architecture() {
        for op in block.branches.iter().flatten() {
            for c in op.convs() {
                out.extend(c.tensors());
            }
        }
    }
    out.push(("fc.weight".into(), vec![1000, 2048]));
    out.push(("fc.bias".into(), vec![1000]));
    out
}

/// Inception-v3 ready for inference. Takes `[n, 3, 299, 299]` ImageNet-normalised images
/// (the `transform_input` remapping is inside), returns `[n, 1000]` logits.
#[derive(Debug)]
pub struct InceptionV3 {
    blocks: Vec<Block<PackedConv>>,
    fc: Linear,
    scratch: ScratchPool,
}

impl InceptionV3 {
    /// Builds the network from validated weights, folding every BatchNorm (and the input
    /// transform into the first convolution).
    pub fn new(w: &Weights) -> candle_core::Result<Self> {
        Self::with_kernels(w, Kernels::best())
    }

    /// Like [`InceptionV3::new`], with a chosen set of kernels.
    pub fn with_kernels(w: &Weights, k: Kernels) -> candle_core::Result<Self> {
        let scale: Vec<f64> = STD.iter().map(|s| s / 0.5).collect();
        let shift: Vec<f64> = MEAN.iter().map(|m| (m - 0.5) / 0.5).collect();
        let mut fold = |c: &ConvSpec| {
            if c.conv_key == "Conv2d_1a_3x3.conv" {
                layers::fold_with_input_affine(c, w, true, Some((&scale, &shift)), k.fp32())
            } else {
                layers::fold(c, w, true, k)
            }
        };
        let blocks = architecture()
            .iter()
            .map(|b| {
                let branches = b
                    .branches
                    .iter()
                    .map(|br| br.iter().map(|op| op.try_map(&mut fold)).collect())
                    .collect::<candle_core::Result<Vec<Vec<_>>>>()?;
                Ok(Block { branches })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let fc = Linear::load(w, "fc")?;
        Ok(Self {
            blocks,
            fc,
            scratch: ScratchPool::default(),
        })
    }

    /// Multiply-adds of one image's forward pass.
    pub fn macs_per_image(&self) -> u64 {
        let (mut h, mut w, mut c) = (INPUT_SIZE, INPUT_SIZE, 3);
        let mut total = 0;
        for block in &self.blocks {
            let mut out = (0, 0, 0);
            for branch in &block.branches {
                let (mut bh, mut bw, mut bc) = (h, w, c);
                for op in branch {
                    for conv in op.convs() {
                        total += conv.macs(bh, bw);
                    }
                    (bh, bw, bc) = op_out(op, bh, bw, bc);
                }
                out = (bh, bw, out.2 + bc);
            }
            (h, w, c) = out;
        }
        total + 2048 * 1000
    }

    /// Logits for a batch. Dropout is the identity at inference.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        layers::check_input(x, INPUT_SIZE, "inception_v3")?;
        let mut s = self.scratch.take();
        let input = layers::input_nhwc(x, &mut s)?;
        // Groups of 4 images through the whole network: measured against 8, and against
        // one image at a time at 35x35 and 17x17, 4 was as fast or faster (2-6%).
        let y = kernels::run_grouped(
            input,
            self.blocks.len(),
            |_| 4,
            |i, x, s| {
                let y = run_block(&self.blocks[i], &x, s);
                s.recycle(x);
                y
            },
            &mut s,
        );
        self.fc.head(y, s, &self.scratch)
    }
}

/// Output height, width and channels of `op` on an `h x w x c` input.
fn op_out(op: &Op<PackedConv>, h: usize, w: usize, c: usize) -> (usize, usize, usize) {
    match op {
        Op::Conv(k) => {
            let (oh, ow) = k.out_hw(h, w);
            (oh, ow, k.cout)
        }
        Op::MaxPool => ((h - 3) / 2 + 1, (w - 3) / 2 + 1, c),
        Op::AvgPool => (h, w, c),
        Op::Fork(ks) => {
            let (oh, ow) = ks.first().map_or((h, w), |k| k.out_hw(h, w));
            (oh, ow, ks.iter().map(|k| k.cout).sum())
        }
    }
}

/// Runs `op` on `x`, writing its channels into `out`'s column range.
fn run_op_into(op: &Op<PackedConv>, x: &Act, out: OutSlice<'_>) {
    match op {
        Op::Conv(k) => k.run(x, out, None),
        Op::MaxPool => kernels::max_pool_3s2(x, 0, out),
        Op::AvgPool => kernels::avg_pool_3s1p1(x, out, None),
        Op::Fork(ks) => {
            let mut col0 = out.col0;
            for k in ks {
                k.run(
                    x,
                    OutSlice {
                        data: &mut *out.data,
                        ld: out.ld,
                        col0,
                    },
                    None,
                );
                col0 += k.cout;
            }
        }
    }
}

/// Runs a block. Each branch's last op writes straight into its channel range of the
/// block's output, so the concatenation costs nothing.
fn run_block(block: &Block<PackedConv>, x: &Act, s: &mut Scratch) -> Act {
    let (mut oh, mut ow, mut oc) = (0, 0, 0);
    for branch in &block.branches {
        let (mut h, mut w, mut c) = (x.h, x.w, x.c);
        for op in branch {
            (h, w, c) = op_out(op, h, w, c);
        }
        (oh, ow, oc) = (h, w, oc + c);
    }
    let mut out = s.act(x.n, oh, ow, oc);
    let mut col0 = 0;
    for branch in &block.branches {
        // Every pool branch: pool then 1x1 conv, run as conv then pool on fewer channels.
        if let [Op::AvgPool, Op::Conv(k)] = branch.as_slice() {
            let part = OutSlice {
                data: &mut out.data,
                ld: oc,
                col0,
            };
            k.after_avg_pool(x, part, s);
            col0 += k.cout;
            continue;
        }
        let Some((last, inner)) = branch.split_last() else {
            continue;
        };
        let mut held: Option<Act> = None;
        for op in inner {
            let cur = held.as_ref().unwrap_or(x);
            let (h, w, c) = op_out(op, cur.h, cur.w, cur.c);
            let mut next = s.act(cur.n, h, w, c);
            run_op_into(
                op,
                cur,
                OutSlice {
                    data: &mut next.data,
                    ld: c,
                    col0: 0,
                },
            );
            if let Some(old) = held.replace(next) {
                s.recycle(old);
            }
        }
        let cur = held.as_ref().unwrap_or(x);
        let c = op_out(last, cur.h, cur.w, cur.c).2;
        run_op_into(
            last,
            cur,
            OutSlice {
                data: &mut out.data,
                ld: oc,
                col0,
            },
        );
        col0 += c;
        if let Some(old) = held {
            s.recycle(old);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_matches_torchvision_parameter_count() {
        // torchvision's inception_v3 without AuxLogits: 23,834,568 parameters
        // (27,161,264 with the auxiliary head's 3,326,696).
        let params: usize = tensor_spec()
            .iter()
            .filter(|(n, _)| !n.contains("running_"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(params, 23_834_568);
        let spec = tensor_spec();
        assert!(spec
            .iter()
            .any(|(n, s)| n == "Mixed_6b.branch7x7_2.conv.weight" && s == &[128, 128, 1, 7]));
        assert!(spec
            .iter()
            .any(|(n, s)| n == "Mixed_7c.branch3x3dbl_3b.conv.weight" && s == &[384, 384, 3, 1]));
    }
}
