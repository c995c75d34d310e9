//! Winograd F(m x m, 3x3) for the 3x3 stride-1 convolutions: F(4x4) computes each 4x4
//! block of outputs with 36 multiply-adds per channel pair instead of 144, F(2x2) each
//! 2x2 block with 16 instead of 36. Those layers are about 37% of ResNet-50's FLOPs.
//!
//! Which one: F(4x4)'s transformed filters are 2.25x larger than F(2x2)'s (36 vs 16
//! matrices), so it only pays where a call has many tiles to reuse them on; measured
//! per layer, it wins at 56x56 and loses at 28x28 and 14x14 (batch 1-4), so the networks
//! ask for it on their large-image layers only (`ConvSpec::large`).
//!
//! Accuracy: F(4x4) uses the points 0, +-1, +-2 (constants up to 8 and 1/24), F(2x2)
//! only 0, +-1, +-1/2; with either, whole networks stay at ~6e-7 relative error against
//! torchvision (limit 1e-4), and the kernel tests bound every output.
//!
//! Layout: the filter transform `U = G g G^T` is done once at load and stored as `a * a`
//! matrices `[cin, cout]` (`a = m + 2`). At run time the output tiles are processed in
//! blocks small enough that the block's transformed inputs `V` (`a * a` x `[tiles, cin]`)
//! and products `M` (`a * a` x `[tiles, cout]`) stay in L2: input transform, `a * a`
//! GEMMs, output transform with bias and ReLU, then the next block. A call with too few
//! tiles to give every thread its own blocks (at batch 1, ResNet-50's 14x14 and 7x7
//! layers) would have to split the columns and repeat the input transform in every
//! column range; it runs as three parallel loops over whole-call buffers instead (all
//! input transforms, the GEMMs split by matrix, the output transforms), which took
//! ResNet-50's eight 14x14 and 7x7 3x3 layers from 7.9-8.0 ms to 6.1-6.2 ms per image.
#![allow(unsafe_code)]

use std::cell::RefCell;

use crate::kernels::{self, Act, OutSlice, SendPtr};
use crate::packed_gemm::{self, Epilogue, PackedB, NR};

/// One Winograd variant: output tile `m`, input tile `a = m + 2`, and its matrices.
#[derive(Debug)]
pub(crate) struct Variant {
    pub m: usize,
    a: usize,
    /// `B^T`, `a x a`.
    bt: &'static [&'static [f32]],
    /// `G`, `a x 3`.
    g: &'static [&'static [f64]],
    /// `A^T`, `m x a`.
    at: &'static [&'static [f32]],
}

/// F(2x2, 3x3) (Lavin & Gray).
pub(crate) static F2: Variant = Variant {
    m: 2,
    a: 4,
    bt: &[
        &[1.0, 0.0, -1.0, 0.0],
        &[0.0, 1.0, 1.0, 0.0],
        &[0.0, -1.0, 1.0, 0.0],
        &[0.0, 1.0, 0.0, -1.0],
    ],
    g: &[
        &[1.0, 0.0, 0.0],
        &[0.5, 0.5, 0.5],
        &[0.5, -0.5, 0.5],
        &[0.0, 0.0, 1.0],
    ],
    at: &[&[1.0, 1.0, 1.0, 0.0], &[0.0, 1.0, -1.0, -1.0]],
};

/// F(4x4, 3x3) with the points 0, 1, -1, 2, -2 and infinity (Lavin & Gray).
pub(crate) static F4: Variant = Variant {
    m: 4,
    a: 6,
    bt: &[
        &[4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        &[0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        &[0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        &[0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        &[0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        &[0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ],
    g: &[
        &[1.0 / 4.0, 0.0, 0.0],
        &[-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        &[-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        &[1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        &[1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        &[0.0, 0.0, 1.0],
    ],
    at: &[
        &[1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        &[0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        &[0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        &[0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ],
};

/// Transformed filters of one 3x3 convolution.
#[derive(Debug, Clone)]
pub(crate) struct Winograd {
    v: &'static Variant,
    /// `u[(xi * cin + ci) * cout + co]`, `xi` the `a x a` transform position (portable path;
    /// empty when `packed` is used).
    u: Vec<f32>,
    /// The `a * a` matrices packed for the AVX-512 kernel.
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

thread_local! {
    /// The calling thread's whole-call `V` and `M` for [`Winograd::run_phased`].
    static PHASED: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Bytes a block's `V` and `M` may take: about half of a Zen 4 / Cascade Lake L2.
const BLOCK_BYTES: usize = 512 * 1024;

impl Winograd {
    /// `U = G g G^T` for every (cout, cin) pair of an OIHW 3x3 kernel, in f64.
    pub fn from_oihw(
        v: &'static Variant,
        oihw: &[f32],
        cin: usize,
        cout: usize,
        packed: bool,
    ) -> Self {
        let a = v.a;
        let mut u = vec![0.0f32; a * a * cin * cout];
        for o in 0..cout {
            for ci in 0..cin {
                let g = &oihw[(o * cin + ci) * 9..(o * cin + ci) * 9 + 9];
                // t = G g (a x 3), then t G^T (a x a).
                let mut t = vec![[0.0f64; 3]; a];
                for (i, row) in t.iter_mut().enumerate() {
                    for (j, val) in row.iter_mut().enumerate() {
                        *val = (0..3).map(|k| v.g[i][k] * f64::from(g[k * 3 + j])).sum();
                    }
                }
                for i in 0..a {
                    for j in 0..a {
                        let val: f64 = (0..3).map(|k| t[i][k] * v.g[j][k]).sum();
                        u[((i * a + j) * cin + ci) * cout + o] = val as f32;
                    }
                }
            }
        }
        let mut packed_u = Vec::new();
        if packed {
            packed_u = (0..a * a)
                .map(|xi| {
                    PackedB::pack(&u[xi * cin * cout..(xi + 1) * cin * cout], cin, cout, cout)
                })
                .collect();
            u = Vec::new();
        }
        Self {
            v,
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
        let (tm, aa) = (self.v.m, self.v.a * self.v.a);
        let (th, tw) = (oh.div_ceil(tm), ow.div_ceil(tm));
        let tiles = x.n * th * tw;
        assert!(out.col0 + cout <= out.ld && out.data.len() >= x.n * oh * ow * out.ld);
        let (blocks, per_block, nsplit, nc) =
            plan(aa, tiles, cin, cout, crate::team::current_threads());
        let dst = SendPtr(out.data.as_mut_ptr());
        let (ld, col0) = (out.ld, out.col0);
        let geo = Geometry {
            v: self.v,
            oh,
            ow,
            th,
            tw,
            pad,
            simd: !self.packed.is_empty(),
        };
        if nsplit > 1 {
            return self.run_phased(x, &geo, tiles, bias, relu, (dst, ld, col0));
        }
        crate::team::for_each(blocks * nsplit, |task| {
            let t0 = (task / nsplit) * per_block;
            let t1 = (t0 + per_block).min(tiles);
            let n0 = (task % nsplit) * nc;
            let n1 = (n0 + nc).min(cout);
            BUFS.with(|cell| {
                let mut bufs = cell.borrow_mut();
                let (v, m) = &mut *bufs;
                let nt = t1 - t0;
                if v.len() < aa * nt * cin {
                    v.resize(aa * nt * cin, 0.0);
                }
                if m.len() < aa * nt * (n1 - n0) {
                    m.resize(aa * nt * (n1 - n0), 0.0);
                }
                // SAFETY: `v` is this thread's own buffer of at least aa * nt * cin.
                unsafe { input_transform(x, &geo, (t0, t1), v.as_mut_ptr(), (nt, 0)) };
                let ncols = n1 - n0;
                for xi in 0..aa {
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
                        kernels::gemm_rows(
                            (nt, ncols, cin),
                            (m.as_mut_ptr().add(xi * nt * ncols), ncols, false),
                            (v.as_ptr().add(xi * nt * cin), cin),
                            (self.u.as_ptr().add(xi * cin * cout + n0), cout),
                        );
                    }
                }
                // SAFETY: this task alone writes output pixels of tiles t0..t1, columns
                // col0+n0..col0+n1 (tiles partition the output pixels).
                unsafe {
                    output_transform(
                        &m[..aa * nt * ncols],
                        &geo,
                        (t0, t1),
                        (nt, 0),
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

impl Winograd {
    /// The same product in three parallel loops over shared buffers: every tile's input
    /// transform once, then the `a * a` matrix products split by matrix and column panels,
    /// then the output transform by tiles. For calls with few tiles and many channels
    /// (ResNet-50's 14x14 layers at batch 1: 49 tiles, 256 channels), where the blocked
    /// path must split the columns to give both threads work and so repeats the input
    /// transform in every column range.
    fn run_phased(
        &self,
        x: &Act,
        geo: &Geometry,
        tiles: usize,
        bias: &[f32],
        relu: bool,
        (dst, ld, col0): (SendPtr, usize, usize),
    ) {
        let (cin, cout, aa) = (self.cin, self.cout, self.v.a * self.v.a);
        let threads = crate::team::current_threads();
        PHASED.with(|cell| {
            let mut bufs = cell.borrow_mut();
            let (v, m) = &mut *bufs;
            if v.len() < aa * tiles * cin {
                v.resize(aa * tiles * cin, 0.0);
            }
            if m.len() < aa * tiles * cout {
                m.resize(aa * tiles * cout, 0.0);
            }
            let (vp, mp) = (SendPtr(v.as_mut_ptr()), SendPtr(m.as_mut_ptr()));
            let parts = (4 * threads).min(tiles).max(1);
            let per = tiles.div_ceil(parts);
            crate::team::for_each(tiles.div_ceil(per), |i| {
                let (t0, t1) = (i * per, ((i + 1) * per).min(tiles));
                // SAFETY: V has aa * tiles * cin values; this task alone writes rows
                // t0..t1 of every V[xi].
                unsafe { input_transform(x, geo, (t0, t1), vp.get(), (tiles, t0)) };
            });
            let panels = cout.div_ceil(NR);
            let splits = (4 * threads).div_ceil(aa).min(panels).max(1);
            let per_split = panels.div_ceil(splits);
            let splits = panels.div_ceil(per_split);
            crate::team::for_each(aa * splits, |task| {
                let (xi, sp) = (task / splits, task % splits);
                let (p0, p1) = (sp * per_split, ((sp + 1) * per_split).min(panels));
                let (n0, n1) = (p0 * NR, (p1 * NR).min(cout));
                // SAFETY: V[xi] is tiles x cin, fully written by the loop above; this
                // task alone writes columns n0..n1 of M[xi] (tiles x cout).
                unsafe {
                    let a = vp.get().add(xi * tiles * cin);
                    let c = mp.get().add(xi * tiles * cout + n0);
                    if let Some(pb) = self.packed.get(xi) {
                        let ep = Epilogue {
                            bias: &self.zeros,
                            residual: None,
                            relu: false,
                        };
                        packed_gemm::gemm(tiles, a, cin, pb, (p0, p1), c, cout, ep);
                    } else {
                        kernels::gemm_rows(
                            (tiles, n1 - n0, cin),
                            (c, cout, false),
                            (a, cin),
                            (self.u.as_ptr().add(xi * cin * cout + n0), cout),
                        );
                    }
                }
            });
            // SAFETY: M is complete; each task writes the output pixels of its own tiles.
            let mm = unsafe { std::slice::from_raw_parts(mp.get(), aa * tiles * cout) };
            crate::team::for_each(tiles.div_ceil(per), |i| {
                let (t0, t1) = (i * per, ((i + 1) * per).min(tiles));
                unsafe {
                    output_transform(
                        mm,
                        geo,
                        (t0, t1),
                        (tiles, t0),
                        bias,
                        relu,
                        dst.get(),
                        ld,
                        col0,
                    )
                };
            });
        });
    }
}

/// How one call is cut into tasks: `blocks` blocks of `per_block` tiles, each split into
/// `nsplit` column ranges of `nc` output channels. Every block re-reads the filters of its
/// column range (`16 cin x cout` values in all), every column range recomputes its
/// block's input transform, and a block whose `V` and `M` overflow L2 pays for the
/// round trip to L3; pick the cheapest cut that gives every thread four tasks.
fn plan(
    aa: usize,
    tiles: usize,
    cin: usize,
    cout: usize,
    threads: usize,
) -> (usize, usize, usize, usize) {
    // Finer than the direct path (4 tasks per thread, measured): blocks differ in cost
    // near the image edges, where tiles are partly padding.
    let want = if threads <= 1 { 1 } else { 4 * threads };
    let fits = (BLOCK_BYTES / 4 / (aa * (cin + cout))).max(1);
    let u = aa * cin * cout;
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
            2 * aa * tiles * (cin + cout)
        } else {
            0
        };
        let idle = if blocks_real * nsplit < threads {
            aa * tiles * cin * cout / 64
        } else {
            0
        };
        let cost = blocks_real * u + nsplit * aa * tiles * cin + spill + idle;
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
    v: &'static Variant,
    oh: usize,
    ow: usize,
    th: usize,
    tw: usize,
    pad: usize,
    /// The AVX-512 transforms ([`simd`]); set exactly when the packed AVX-512 GEMM is used.
    simd: bool,
}

/// `out = sum_k coef[k] * src[k]` over whole channel vectors, zero coefficients skipped
/// (the transforms are sparse); vectorised by the compiler.
#[inline(always)]
fn combine(out: &mut [f32], coef: &[f32], src: &[&[f32]]) {
    let mut first = true;
    for (&c, s) in coef.iter().zip(src) {
        if c == 0.0 {
            continue;
        }
        if first {
            if c == 1.0 {
                out.copy_from_slice(s);
            } else {
                for (o, x) in out.iter_mut().zip(*s) {
                    *o = c * x;
                }
            }
            first = false;
        } else if c == 1.0 {
            for (o, x) in out.iter_mut().zip(*s) {
                *o += x;
            }
        } else if c == -1.0 {
            for (o, x) in out.iter_mut().zip(*s) {
                *o -= x;
            }
        } else {
            for (o, x) in out.iter_mut().zip(*s) {
                *o += c * x;
            }
        }
    }
    if first {
        out.fill(0.0);
    }
}

/// The first `a` (at most 6) channel vectors `f(0..a)`, without allocating.
#[inline(always)]
fn gather<'s>(a: usize, f: impl Fn(usize) -> &'s [f32]) -> [&'s [f32]; 6] {
    let mut out: [&[f32]; 6] = [&[]; 6];
    for (k, o) in out.iter_mut().enumerate().take(a) {
        *o = f(k);
    }
    out
}

/// `V[xi][row0 + t - t0][ci] = (B^T d B)[xi]` for tiles `t0..t1`, `d` the `a x a` input
/// window of the tile (zeros outside the image); each `V[xi]` has `stride` rows.
///
/// # Safety
/// `v` must be writable for `a * a * stride * c` values, and no other thread may touch
/// the rows `row0..row0 + t1 - t0` of any `V[xi]` meanwhile.
unsafe fn input_transform(
    x: &Act,
    g: &Geometry,
    tiles: (usize, usize),
    v: *mut f32,
    rows: (usize, usize),
) {
    #[cfg(target_arch = "x86_64")]
    if g.simd {
        match g.v.m {
            2 => return simd::input::<4, 2, simd::F2>(x, g, tiles, v, rows),
            4 => return simd::input::<6, 4, simd::F4>(x, g, tiles, v, rows),
            _ => {}
        }
    }
    input_transform_portable(x, g, tiles, v, rows)
}

/// [`input_transform`] on any CPU: the transform matrices applied as written, one channel
/// vector at a time.
unsafe fn input_transform_portable(
    x: &Act,
    g: &Geometry,
    (t0, t1): (usize, usize),
    v: *mut f32,
    (stride, row0): (usize, usize),
) {
    let (c, a, m) = (x.c, g.v.a, g.v.m);
    let zeros = vec![0.0f32; c];
    // B^T d, row-major a x a of channel vectors.
    let mut bt = vec![0.0f32; a * a * c];
    let mut d: [&[f32]; 36] = [&zeros; 36];
    for t in t0..t1 {
        let b = t / (g.th * g.tw);
        let ty = (t / g.tw) % g.th;
        let tx = t % g.tw;
        d.iter_mut().for_each(|s| *s = &zeros);
        for r in 0..a {
            let iy = (m * ty + r) as isize - g.pad as isize;
            if iy < 0 || iy >= x.h as isize {
                continue;
            }
            for s in 0..a {
                let ix = (m * tx + s) as isize - g.pad as isize;
                if ix < 0 || ix >= x.w as isize {
                    continue;
                }
                let at = ((b * x.h + iy as usize) * x.w + ix as usize) * c;
                d[r * a + s] = &x.data[at..at + c];
            }
        }
        // Rows: bt[i][s] = sum_k B^T[i][k] d[k][s].
        for s in 0..a {
            let col = gather(a, |k| d[k * a + s]);
            let col = &col[..a];
            for i in 0..a {
                combine(
                    &mut bt[(i * a + s) * c..(i * a + s + 1) * c],
                    g.v.bt[i],
                    col,
                );
            }
        }
        // Columns, straight into V: V[i][j] = sum_k bt[i][k] B^T[j][k].
        let row = row0 + t - t0;
        for i in 0..a {
            let srcs = gather(a, |k| &bt[(i * a + k) * c..(i * a + k + 1) * c]);
            for j in 0..a {
                let at = ((i * a + j) * stride + row) * c;
                let out = std::slice::from_raw_parts_mut(v.add(at), c);
                combine(out, g.v.bt[j], &srcs[..a]);
            }
        }
    }
}

/// `Y = A^T M A` per tile, plus bias, ReLU, written to the pixels of the tile that exist.
/// Tile `t`'s products are row `row0 + t - t0` of each `M[xi]` (`stride` rows of
/// `bias.len()` values).
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(
    mm: &[f32],
    g: &Geometry,
    tiles: (usize, usize),
    rows: (usize, usize),
    bias: &[f32],
    relu: bool,
    dst: *mut f32,
    ld: usize,
    col: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if g.simd {
        let out = (dst, ld, col);
        match g.v.m {
            2 => return simd::output::<4, 2, simd::F2>(mm, g, tiles, rows, bias, relu, out),
            4 => return simd::output::<6, 4, simd::F4>(mm, g, tiles, rows, bias, relu, out),
            _ => {}
        }
    }
    output_transform_portable(mm, g, tiles, rows, bias, relu, dst, ld, col)
}

/// [`output_transform`] on any CPU.
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform_portable(
    mm: &[f32],
    g: &Geometry,
    (t0, t1): (usize, usize),
    (stride, row0): (usize, usize),
    bias: &[f32],
    relu: bool,
    dst: *mut f32,
    ld: usize,
    col: usize,
) {
    let (a, m) = (g.v.a, g.v.m);
    let nc = bias.len();
    // A^T M: m rows x a columns of channel vectors.
    let mut am = vec![0.0f32; m * a * nc];
    let mut y = vec![0.0f32; nc];
    for t in t0..t1 {
        let b = t / (g.th * g.tw);
        let ty = (t / g.tw) % g.th;
        let tx = t % g.tw;
        let row = row0 + t - t0;
        let mrow = |xi: usize| &mm[(xi * stride + row) * nc..(xi * stride + row + 1) * nc];
        for s in 0..a {
            let col = gather(a, |k| mrow(k * a + s));
            let col = &col[..a];
            for i in 0..m {
                combine(
                    &mut am[(i * a + s) * nc..(i * a + s + 1) * nc],
                    g.v.at[i],
                    col,
                );
            }
        }
        for r in 0..m {
            let oy = m * ty + r;
            if oy >= g.oh {
                continue;
            }
            let srcs = gather(a, |k| &am[(r * a + k) * nc..(r * a + k + 1) * nc]);
            let srcs = &srcs[..a];
            for s in 0..m {
                let ox = m * tx + s;
                if ox >= g.ow {
                    continue;
                }
                combine(&mut y, g.v.at[s], srcs);
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

/// The transforms with AVX-512: 16 channels per register, a tile's `a x a` values held in
/// registers, and the 1-D transforms written out as adds and FMAs. The portable path
/// applies the matrices coefficient by coefficient, and the compiler gives it 4-wide SSE:
/// its transforms were 12% of an Inception-v3 batch of 8.
#[cfg(target_arch = "x86_64")]
mod simd;

#[cfg(test)]
mod tests;
