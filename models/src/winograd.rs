//! Winograd F(2x2, 3x3) for the 3x3 stride-1 convolutions: each 2x2 block of outputs
//! costs 16 multiply-adds per channel pair instead of 36, so those layers (about 37% of
//! ResNet-50's FLOPs) need 2.25x fewer multiplications.
//!
//! Why F(2x2) and not F(4x4): its transforms only use 0, +-1 and +-1/2, so it adds no
//! visible rounding error (the torchvision comparison stays near 1e-6), while F(4x4)'s
//! larger constants cost about two decimal digits of fp32 accuracy.
//!
//! Layout: the filter transform `U = G g G^T` is done once at load and stored as 16
//! matrices `[cin, cout]`. At run time the output tiles are processed in blocks small
//! enough that the block's transformed inputs `V` (16 x `[tiles, cin]`) and products `M`
//! (16 x `[tiles, cout]`) stay in L2: input transform, 16 GEMMs, output transform with
//! bias and ReLU, then the next block.
#![allow(unsafe_code)]

use std::cell::RefCell;

use rayon::prelude::*;

use crate::kernels::{Act, OutSlice};
use crate::packed_gemm::{self, Epilogue, PackedB, NR};

/// Transformed filters of one 3x3 convolution.
#[derive(Debug, Clone)]
pub(crate) struct Winograd {
    /// `u[(xi * cin + ci) * cout + co]`, `xi` the 4x4 transform position (portable path;
    /// empty when `packed` is used).
    u: Vec<f32>,
    /// The 16 matrices packed for the AVX-512 kernel.
    packed: Vec<PackedB>,
    /// Zeros: the products get their bias in the output transform, not in the GEMM.
    zeros: Vec<f32>,
    cin: usize,
    cout: usize,
}

thread_local! {
    /// Per-thread `V` and `M` block buffers.
    static BUFS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Bytes a block's `V` and `M` may take: about half of a Zen 4 / Cascade Lake L2.
const BLOCK_BYTES: usize = 512 * 1024;

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint output pixels/columns (see `Winograd::run`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// By value, so closures capture the wrapper (which is Send), not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

impl Winograd {
    /// `U = G g G^T` for every (cout, cin) pair of an OIHW 3x3 kernel, in f64.
    pub fn from_oihw(oihw: &[f32], cin: usize, cout: usize, packed: bool) -> Self {
        const G: [[f64; 3]; 4] = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        let mut u = vec![0.0f32; 16 * cin * cout];
        for o in 0..cout {
            for ci in 0..cin {
                let g = &oihw[(o * cin + ci) * 9..(o * cin + ci) * 9 + 9];
                // t = G g (4x3), then t G^T (4x4).
                let mut t = [[0.0f64; 3]; 4];
                for (i, row) in t.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|k| G[i][k] * f64::from(g[k * 3 + j])).sum();
                    }
                }
                for i in 0..4 {
                    for j in 0..4 {
                        let v: f64 = (0..3).map(|k| t[i][k] * G[j][k]).sum();
                        u[((i * 4 + j) * cin + ci) * cout + o] = v as f32;
                    }
                }
            }
        }
        let mut packed_u = Vec::new();
        if packed {
            packed_u = (0..16)
                .map(|xi| {
                    PackedB::pack(&u[xi * cin * cout..(xi + 1) * cin * cout], cin, cout, cout)
                })
                .collect();
            u = Vec::new();
        }
        Self {
            u,
            packed: packed_u,
            zeros: vec![0.0; cout],
            cin,
            cout,
        }
    }

    /// `out = relu?(conv3x3(x, pad) + bias)`: output `(h + 2 pad - 2) x (w + 2 pad - 2)`.
    pub fn run(&self, x: &Act, pad: usize, bias: &[f32], relu: bool, out: OutSlice<'_>) {
        let (cin, cout) = (self.cin, self.cout);
        assert_eq!(x.c, cin, "winograd input channels");
        let oh = x.h + 2 * pad - 2;
        let ow = x.w + 2 * pad - 2;
        let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
        let tiles = x.n * th * tw;
        assert!(out.col0 + cout <= out.ld && out.data.len() >= x.n * oh * ow * out.ld);
        let (blocks, per_block, nsplit, nc) =
            plan(tiles, cin, cout, rayon::current_num_threads().max(1));
        let dst = SendPtr(out.data.as_mut_ptr());
        let (ld, col0) = (out.ld, out.col0);
        let geo = Geometry {
            oh,
            ow,
            th,
            tw,
            pad,
        };
        (0..blocks * nsplit).into_par_iter().for_each(|task| {
            let t0 = (task / nsplit) * per_block;
            let t1 = (t0 + per_block).min(tiles);
            let n0 = (task % nsplit) * nc;
            let n1 = (n0 + nc).min(cout);
            BUFS.with(|cell| {
                let mut bufs = cell.borrow_mut();
                let (v, m) = &mut *bufs;
                let nt = t1 - t0;
                if v.len() < 16 * nt * cin {
                    v.resize(16 * nt * cin, 0.0);
                }
                if m.len() < 16 * nt * (n1 - n0) {
                    m.resize(16 * nt * (n1 - n0), 0.0);
                }
                input_transform(x, &geo, t0, t1, &mut v[..16 * nt * cin]);
                let ncols = n1 - n0;
                for xi in 0..16 {
                    if let Some(pb) = self.packed.get(xi) {
                        let ep = Epilogue {
                            bias: &self.zeros,
                            residual: None,
                            relu: false,
                        };
                        // SAFETY: V[xi] is nt x cin; M[xi] is nt x ncols, ncols covering
                        // the panels from n0 (a panel start) to n1.
                        unsafe {
                            packed_gemm::gemm(
                                nt,
                                v.as_ptr().add(xi * nt * cin),
                                cin,
                                pb,
                                (n0 / NR, n1.div_ceil(NR)),
                                m.as_mut_ptr().add(xi * nt * ncols),
                                ncols,
                                ep,
                            );
                        }
                        continue;
                    }
                    // SAFETY: V[xi] is nt x cin, U[xi] columns n0..n1 are cin x ncols with
                    // row stride cout, M[xi] is nt x ncols; all within the buffers above.
                    unsafe {
                        gemm::gemm(
                            nt,
                            ncols,
                            cin,
                            m.as_mut_ptr().add(xi * nt * ncols),
                            1,
                            ncols as isize,
                            false,
                            v.as_ptr().add(xi * nt * cin),
                            1,
                            cin as isize,
                            self.u.as_ptr().add(xi * cin * cout + n0),
                            1,
                            cout as isize,
                            0.0f32,
                            1.0f32,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
                // SAFETY: this task alone writes output pixels of tiles t0..t1, columns
                // col0+n0..col0+n1 (tiles partition the output pixels).
                unsafe {
                    output_transform(
                        &m[..16 * nt * ncols],
                        &geo,
                        (t0, t1),
                        &bias[n0..n1],
                        relu,
                        dst.get(),
                        ld,
                        col0 + n0,
                    );
                }
            });
        });
    }
}

/// How one call is cut into tasks: `blocks` blocks of `per_block` tiles, each split into
/// `nsplit` column ranges of `nc` output channels. Every block re-reads the filters of its
/// column range (`16 cin x cout` values in all), every column range recomputes its
/// block's input transform, and a block whose `V` and `M` overflow L2 pays for the
/// round trip to L3; pick the cheapest cut that gives every thread four tasks.
fn plan(tiles: usize, cin: usize, cout: usize, threads: usize) -> (usize, usize, usize, usize) {
    // Finer than the direct path (4 tasks per thread, measured): blocks differ in cost
    // near the image edges, where tiles are partly padding.
    let want = if threads <= 1 { 1 } else { 4 * threads };
    let fits = (BLOCK_BYTES / 4 / (16 * (cin + cout))).max(1);
    let u = 16 * cin * cout;
    let mut best = (usize::MAX, 1, tiles, 1, cout);
    let mut blocks = 1usize;
    loop {
        let per_block = tiles.div_ceil(blocks);
        let mut blocks_real = tiles.div_ceil(per_block);
        let split_want = want.div_ceil(blocks_real).min(cout.div_ceil(NR)).max(1);
        let nc = cout.div_ceil(split_want).div_ceil(NR) * NR;
        let nsplit = cout.div_ceil(nc);
        // Equal shares per thread (see kernels::tiling).
        let mut per_block = per_block;
        let mut try_blocks = blocks_real;
        while try_blocks < tiles && !(blocks_real * nsplit).is_multiple_of(threads) {
            try_blocks += 1;
            per_block = tiles.div_ceil(try_blocks);
            blocks_real = tiles.div_ceil(per_block);
        }
        let spill = if per_block > fits {
            2 * 16 * tiles * (cin + cout)
        } else {
            0
        };
        let idle = if blocks_real * nsplit < threads {
            16 * tiles * cin * cout / 64
        } else {
            0
        };
        let cost = blocks_real * u + nsplit * 16 * tiles * cin + spill + idle;
        if cost < best.0 {
            best = (cost, blocks_real, per_block, nsplit, nc);
        }
        if per_block <= 8 {
            break;
        }
        blocks *= 2;
    }
    (best.1, best.2, best.3, best.4)
}

/// Output size and tile grid of one call.
struct Geometry {
    oh: usize,
    ow: usize,
    th: usize,
    tw: usize,
    pad: usize,
}

/// `out[i] = a[i] + sa * b[i]` over whole channel vectors (vectorises).
#[inline(always)]
fn axpy(out: &mut [f32], a: &[f32], b: &[f32], sb: f32) {
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x + sb * y;
    }
}

/// `out[i] = a[i] + sb * b[i] + sc * c[i]`.
#[inline(always)]
fn lin3(out: &mut [f32], a: &[f32], b: &[f32], sb: f32, c: &[f32], sc: f32) {
    for (((o, x), y), z) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = x + sb * y + sc * z;
    }
}

/// `V[xi][t - t0][ci] = (B^T d B)[xi]` for tiles `t0..t1`, `d` the 4x4 input window of the
/// tile (zeros outside the image). Every step is a whole-channel-vector operation so the
/// compiler vectorises it.
fn input_transform(x: &Act, g: &Geometry, t0: usize, t1: usize, v: &mut [f32]) {
    let c = x.c;
    let nt = t1 - t0;
    let zeros = vec![0.0f32; c];
    // B^T d, row-major 4x4 of channel vectors.
    let mut bt = vec![0.0f32; 16 * c];
    for t in t0..t1 {
        let b = t / (g.th * g.tw);
        let ty = (t / g.tw) % g.th;
        let tx = t % g.tw;
        let mut d: [&[f32]; 16] = [&zeros; 16];
        for r in 0..4 {
            let iy = (2 * ty + r) as isize - g.pad as isize;
            if iy < 0 || iy >= x.h as isize {
                continue;
            }
            for s in 0..4 {
                let ix = (2 * tx + s) as isize - g.pad as isize;
                if ix < 0 || ix >= x.w as isize {
                    continue;
                }
                let at = ((b * x.h + iy as usize) * x.w + ix as usize) * c;
                d[r * 4 + s] = &x.data[at..at + c];
            }
        }
        // Rows: (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
        for s in 0..4 {
            let (r0, r1, r2, r3) = (d[s], d[4 + s], d[8 + s], d[12 + s]);
            axpy(&mut bt[s * c..(s + 1) * c], r0, r2, -1.0);
            axpy(&mut bt[(4 + s) * c..(5 + s) * c], r1, r2, 1.0);
            axpy(&mut bt[(8 + s) * c..(9 + s) * c], r2, r1, -1.0);
            axpy(&mut bt[(12 + s) * c..(13 + s) * c], r1, r3, -1.0);
        }
        // Columns, straight into V.
        let row = t - t0;
        for r in 0..4 {
            let col = |s: usize| &bt[(r * 4 + s) * c..(r * 4 + s + 1) * c];
            let at = |s: usize| ((r * 4 + s) * nt + row) * c;
            axpy(&mut v[at(0)..at(0) + c], col(0), col(2), -1.0);
            axpy(&mut v[at(1)..at(1) + c], col(1), col(2), 1.0);
            axpy(&mut v[at(2)..at(2) + c], col(2), col(1), -1.0);
            axpy(&mut v[at(3)..at(3) + c], col(1), col(3), -1.0);
        }
    }
}

/// `Y = A^T M A` per tile, plus bias, ReLU, written to the pixels of the tile that exist.
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(
    m: &[f32],
    g: &Geometry,
    (t0, t1): (usize, usize),
    bias: &[f32],
    relu: bool,
    dst: *mut f32,
    ld: usize,
    col: usize,
) {
    let nc = bias.len();
    let nt = t1 - t0;
    // A^T M: 2 rows x 4 columns of channel vectors.
    let mut a = vec![0.0f32; 8 * nc];
    let mut y = vec![0.0f32; nc];
    for t in t0..t1 {
        let b = t / (g.th * g.tw);
        let ty = (t / g.tw) % g.th;
        let tx = t % g.tw;
        let row = t - t0;
        let mrow = |xi: usize| &m[(xi * nt + row) * nc..(xi * nt + row + 1) * nc];
        for s in 0..4 {
            // (m0 + m1 + m2, m1 - m2 - m3)
            let (m0, m1, m2, m3) = (mrow(s), mrow(4 + s), mrow(8 + s), mrow(12 + s));
            lin3(&mut a[s * nc..(s + 1) * nc], m0, m1, 1.0, m2, 1.0);
            lin3(&mut a[(4 + s) * nc..(5 + s) * nc], m1, m2, -1.0, m3, -1.0);
        }
        for r in 0..2 {
            let oy = 2 * ty + r;
            if oy >= g.oh {
                continue;
            }
            let ac = |s: usize| &a[(r * 4 + s) * nc..(r * 4 + s + 1) * nc];
            for s in 0..2 {
                let ox = 2 * tx + s;
                if ox >= g.ow {
                    continue;
                }
                if s == 0 {
                    lin3(&mut y, ac(0), ac(1), 1.0, ac(2), 1.0);
                } else {
                    lin3(&mut y, ac(1), ac(2), -1.0, ac(3), -1.0);
                }
                let p = dst.add(((b * g.oh + oy) * g.ow + ox) * ld + col);
                let out = std::slice::from_raw_parts_mut(p, nc);
                if relu {
                    for ((o, v), bb) in out.iter_mut().zip(&y).zip(bias) {
                        *o = (v + bb).max(0.0);
                    }
                } else {
                    for ((o, v), bb) in out.iter_mut().zip(&y).zip(bias) {
                        *o = v + bb;
                    }
                }
            }
        }
    }
}
