//! The CPU kernels both networks run on: activations in channels-last (NHWC) layout,
//! convolutions as tiled im2col + GEMM over weights packed once at load, with bias,
//! residual and ReLU fused into the GEMM's output tile, and NHWC pooling.
//!
//! Why NHWC: a 1x1 convolution (two thirds of ResNet-50's FLOPs) is then a plain matrix
//! product over the activation buffer with no copy at all, an im2col row is a run of
//! contiguous channel vectors, and an Inception block's concatenation is free: each
//! branch writes its channels straight into a column range of the block's output.
//!
//! The matrix multiply is the `gemm` crate (the one candle uses), called on raw strided
//! slices with its AVX-512 kernels enabled; this module decides the tiling, so that each
//! task packs only the part of the weights it multiplies with.
#![allow(unsafe_code)]

use std::cell::RefCell;

use crate::amx;
use crate::packed_gemm::{self, Epilogue, PackedB};
use crate::qgemm::{self, Format, PackedLow};
use crate::team;
use crate::winograd::{self, Winograd};

/// An activation batch in NHWC layout: `data[((b * h + y) * w + x) * c + ch]`. `data`
/// may be longer than `len()` (a recycled buffer); the values past it mean nothing.
#[derive(Debug, Clone)]
pub(crate) struct Act {
    pub data: Vec<f32>,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Act {
    pub fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }

    /// The activation's values, without any recycled tail.
    pub fn values(&self) -> &[f32] {
        &self.data[..self.len()]
    }
}

/// Recycled activation buffers. Large allocations come from fresh `mmap`s, and touching
/// their pages for every layer of every batch costs more than some small convolutions;
/// keeping the buffers of the previous forward pass avoids that. Buffers stay at their
/// full length, so handing one out for a larger layer than its last use costs nothing
/// (growing a truncated `Vec` would zero-fill it: a serial memset of up to 3 MB between
/// two parallel layers, 0.9 ms per Inception pass).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    free: Vec<Vec<f32>>,
}

impl Scratch {
    /// A buffer of at least `len` values. Its contents are unspecified (stale values from
    /// an earlier layer): every caller overwrites the first `len`.
    fn take(&mut self, len: usize) -> Vec<f32> {
        // Best fit: the smallest free buffer that is large enough.
        let pick = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.len() >= len)
            .min_by_key(|(_, v)| v.len())
            .map(|(i, _)| i);
        match pick {
            Some(i) => self.free.swap_remove(i),
            None => {
                // Nothing fits: the largest free buffer is too small for this and later
                // layers alike, so it goes.
                if let Some((i, _)) = self.free.iter().enumerate().max_by_key(|(_, v)| v.len()) {
                    self.free.swap_remove(i);
                }
                vec![0.0; len]
            }
        }
    }

    pub fn give(&mut self, v: Vec<f32>) {
        if !v.is_empty() {
            self.free.push(v);
        }
    }

    pub fn act(&mut self, n: usize, h: usize, w: usize, c: usize) -> Act {
        Act {
            data: self.take(n * h * w * c),
            n,
            h,
            w,
            c,
        }
    }

    pub fn recycle(&mut self, a: Act) {
        self.give(a.data);
    }
}

/// Runs `steps` steps (`run(i, x)` for `i` in order) over a batch cut into groups of
/// `size(i)` images. Consecutive steps with the same group size run depth first: one
/// group through all of them, then the next, so a group's activations stay in cache from
/// one step to the next.
///
/// Why groups: early layers have large activations and small weights, and run best on
/// one image whose input, output and shortcut stay in cache; late layers have few pixels
/// and large weights, and run best on many images, which read each weight once for all
/// of them. ResNet-50 at batch 8, stages 1-2 one image at a time and stages 3-4 on all 8
/// measured 3.2% faster than all four stages in groups of 4 (20 interleaved passes).
pub(crate) fn run_grouped(
    x: Act,
    steps: usize,
    size: impl Fn(usize) -> usize,
    run: impl Fn(usize, Act, &mut Scratch) -> Act,
    s: &mut Scratch,
) -> Act {
    let mut groups = vec![x];
    let mut i = 0;
    while i < steps {
        let end = (i..steps).find(|&j| size(j) != size(i)).unwrap_or(steps);
        groups = regroup(groups, size(i), s);
        groups = groups
            .into_iter()
            .map(|mut g| {
                for step in i..end {
                    g = run(step, g, s);
                }
                g
            })
            .collect();
        i = end;
    }
    let mut whole = regroup(groups, usize::MAX, s);
    whole.pop().expect("a batch has at least one image")
}

/// The same images in groups of `size` (the last one smaller), in order. Copies only
/// when the grouping changes.
fn regroup(groups: Vec<Act>, size: usize, s: &mut Scratch) -> Vec<Act> {
    let n: usize = groups.iter().map(|g| g.n).sum();
    let size = size.clamp(1, n.max(1));
    let wanted = |i: usize| size.min(n - i * size);
    if groups.iter().enumerate().all(|(i, g)| g.n == wanted(i)) {
        return groups;
    }
    let (h, w, c) = (groups[0].h, groups[0].w, groups[0].c);
    let image = h * w * c;
    let mut out: Vec<Act> = (0..n.div_ceil(size))
        .map(|i| s.act(wanted(i), h, w, c))
        .collect();
    let mut at = 0;
    for g in groups {
        for b in 0..g.n {
            let (dst, slot) = (&mut out[at / size], at % size);
            dst.data[slot * image..(slot + 1) * image]
                .copy_from_slice(&g.data[b * image..(b + 1) * image]);
            at += 1;
        }
        s.recycle(g);
    }
    out
}

/// Where an operation writes: rows of `ld` values, starting at column `col0`. A plain
/// output has `ld == channels` and `col0 == 0`; a branch of an Inception block writes a
/// column range of the block's output.
pub(crate) struct OutSlice<'a> {
    pub data: &'a mut [f32],
    pub ld: usize,
    pub col0: usize,
}

/// A convolution with BatchNorm folded in, weights packed as a `[kh * kw * cin, cout]`
/// row-major matrix (row index `(ky * kw + kx) * cin + ci`), which is the order an NHWC
/// im2col row has, so the GEMM reads them with unit stride.
#[derive(Debug, Clone)]
pub(crate) struct PackedConv {
    pub w: Vec<f32>,
    pub bias: Vec<f32>,
    pub cin: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub ph: usize,
    pub pw: usize,
    pub relu: bool,
    /// The same weights packed for the AVX-512 kernel; `w` is then empty.
    pub packed: Option<PackedB>,
    /// Set for 3x3 stride-1 convolutions when Winograd is enabled. `w` is kept too: on
    /// small images (7x7 at batch 1) the direct path wins, since Winograd's padded tiles and
    /// 16/9 larger filters cost more than the multiplications it saves.
    pub wino: Option<Winograd>,
    /// The weights for the low-precision kernel (precision int8 or bf16); `w`, `packed`
    /// and `wino` are then empty.
    pub low: Option<PackedLow>,
}

/// The number format a network's convolutions compute in. Activations between layers
/// stay f32 whatever the precision; a low-precision layer converts its input as it packs
/// each tile, and its epilogue writes f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// IEEE single precision throughout: the reference.
    #[default]
    Fp32,
    /// bfloat16 operands, f32 accumulation (AVX512-BF16 `vdpbf16ps`).
    Bf16,
    /// u8 activations (per-row scale) x s8 weights (per-channel scale), i32 accumulation
    /// (AVX-512 VNNI `vpdpbusd`, AMX-INT8 tiles where the CPU has them).
    Int8,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Bf16, Precision::Int8];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }

    /// Parses `fp32`, `bf16` or `int8`; the error is a one-line message naming them.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown precision `{s}` (expected fp32, bf16 or int8)"))
    }

    /// The instruction paths this CPU has for this precision, or why it has none.
    pub fn paths(self) -> Result<&'static str, String> {
        match self {
            Precision::Fp32 if packed_gemm::available() => Ok("AVX-512 FMA"),
            Precision::Fp32 => Ok("portable (gemm crate)"),
            Precision::Int8 if amx::available(Format::Int8) => Ok("AMX-INT8 + AVX-512"),
            Precision::Int8 if Format::Int8.available() => Ok("AVX-512 VNNI"),
            Precision::Int8 => Err(
                "int8 needs AVX-512 VNNI (avx512_vnni), which this CPU lacks; \
                 use precision = \"fp32\""
                    .into(),
            ),
            Precision::Bf16 if amx::available(Format::Bf16) => Ok("AMX-BF16 + AVX-512"),
            Precision::Bf16 if Format::Bf16.available() => Ok("AVX512-BF16"),
            Precision::Bf16 => Err(
                "bf16 needs AVX512-BF16 (avx512_bf16), which this CPU lacks; \
                 use precision = \"fp32\""
                    .into(),
            ),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which kernels a network's convolutions are built for. [`Kernels::best`] is what the
/// product uses; the others exist to measure each step and to test the portable path on a
/// machine that has AVX-512.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    /// Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (fp32 only).
    pub winograd: bool,
    /// Weights packed for the AVX-512 micro-kernel instead of the portable `gemm` crate.
    /// Ignored (treated as false) on a CPU without AVX-512.
    pub avx512: bool,
    /// What every convolution but the first computes in (the first reads the signed
    /// image and stays fp32).
    pub precision: Precision,
    /// AMX tiles for int8 and bf16 where the CPU has them and Linux grants them.
    pub amx: bool,
}

impl Kernels {
    /// Everything on, limited to what this CPU has, in fp32.
    pub fn best() -> Self {
        Self {
            winograd: true,
            avx512: true,
            precision: Precision::Fp32,
            amx: true,
        }
        .for_this_cpu()
    }

    /// The best kernels at `precision`, or the one-line reason this CPU has no path for it.
    pub fn at(precision: Precision) -> Result<Self, String> {
        precision.paths()?;
        Ok(Self {
            precision,
            ..Self::best()
        })
    }

    /// `self` with the AVX-512 kernel dropped when the CPU lacks it.
    pub fn for_this_cpu(self) -> Self {
        Self {
            avx512: self.avx512 && packed_gemm::available(),
            amx: self.amx && (amx::available(Format::Int8) || amx::available(Format::Bf16)),
            ..self
        }
    }

    /// The same kernels in fp32: for a network's first convolution.
    pub fn fp32(self) -> Self {
        Self {
            precision: Precision::Fp32,
            ..self
        }
    }
}

/// The fp32 peak of `threads` cores, measured (GFLOP/s): each thread of a fresh pool runs
/// a register-only AVX-512 FMA loop at the same time, seven times; each thread's best run
/// counts. One run can land in a slow moment of a shared host (a single run once read
/// 12% low, so a network measured after it showed "114% of peak"); the best of several
/// is the core's speed. `None` on a CPU without AVX-512.
pub fn fp32_peak_gflops(threads: usize) -> Option<f64> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .ok()?;
    let mut best = vec![0.0f64; threads.max(1)];
    for _ in 0..7 {
        let per_core: Vec<Option<f64>> = pool.broadcast(|_| packed_gemm::core_peak_gflops());
        for (b, g) in best.iter_mut().zip(per_core) {
            *b = b.max(g?);
        }
    }
    Some(best.iter().sum())
}

/// A raw pointer that may cross into parallel tasks; each task writes a disjoint tile.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: only used to hand disjoint output tiles to tasks (`PackedConv::run`,
// `Winograd::run`); each caller states why its tiles are disjoint.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// By value, so closures capture the wrapper (which is Send), not the raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    /// Per-thread im2col tile, reused across calls.
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread converted rows of a low-precision tile and their scales.
    static QROWS: RefCell<(Vec<u8>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// The calling thread's converted rows of a whole layer (`PackedConv::prepack`).
    static PREPACKED: RefCell<(Vec<u8>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// A layer's rows converted once for all its column tiles: row `r` at `bytes + r * lda`,
/// its scale at `scales + r`. Points into the calling thread's `PREPACKED`, which no one
/// touches until the layer's parallel loop has returned.
pub(crate) struct Prepacked {
    bytes: *const u8,
    scales: *const f32,
    lda: usize,
}
// SAFETY: read-only while the tasks of one loop run (see above).
unsafe impl Sync for Prepacked {}

/// Bytes between converted rows: one packed row plus 64, off the 4 KiB grid (see
/// packed_gemm's APACK).
fn low_row_stride(q: &PackedLow) -> usize {
    q.row_bytes() + 64
}

/// Output pixels per call from which Winograd is used. Measured per layer at batch 1:
/// ResNet-50's 7x7 3x3 512->512 takes 0.92 ms with F(2x2) against 1.30 ms direct, and
/// Inception-v3's two 8x8 3x3 448->384 take 1.31 ms together against 2.2 ms direct; no
/// layer of either network is smaller.
const WINOGRAD_MIN_PIXELS: usize = 49;

/// Rows per im2col tile at most: keeps a tile within L2 for typical K.
const MAX_TILE_ROWS: usize = 256;

impl PackedConv {
    /// Packs an OIHW kernel (`[cout, cin, kh, kw]`, already BatchNorm-folded); with
    /// `algo.winograd`, 3x3 stride-1 kernels are also transformed for [`Winograd`]: F(4x4)
    /// when the layer works on `large` images (>= 40x40 at batch 1), else F(2x2).
    #[allow(clippy::too_many_arguments)]
    pub fn from_oihw(
        oihw: &[f32],
        bias: Vec<f32>,
        cin: usize,
        cout: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        ph: usize,
        pw: usize,
        relu: bool,
        algo: Kernels,
        large: bool,
    ) -> Self {
        let low = algo.precision != Precision::Fp32;
        let wino =
            (!low && algo.winograd && kh == 3 && kw == 3 && stride == 1 && ph == pw && ph <= 1)
                .then(|| {
                    // F(4x4) needs many tiles per call to amortise its 2.25x larger filters
                    // (measured: it wins at 56x56, loses at 28x28 and 14x14).
                    let v = if large { &winograd::F4 } else { &winograd::F2 };
                    Winograd::from_oihw(v, oihw, cin, cout, algo.avx512)
                });
        let k = kh * kw * cin;
        let mut w = vec![0.0f32; k * cout];
        for o in 0..cout {
            for ci in 0..cin {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let src = ((o * cin + ci) * kh + ky) * kw + kx;
                        let row = (ky * kw + kx) * cin + ci;
                        w[row * cout + o] = oihw[src];
                    }
                }
            }
        }
        Self {
            w,
            bias,
            cin,
            cout,
            kh,
            kw,
            stride,
            ph,
            pw,
            relu,
            packed: None,
            wino,
            low: None,
        }
        .pack(algo)
    }

    /// Moves the row-major weights into the kernel's panel order: quantized for int8, else
    /// the AVX-512 fp32 kernel's.
    fn pack(mut self, algo: Kernels) -> Self {
        let k = self.kh * self.kw * self.cin;
        let low = match algo.precision {
            Precision::Fp32 => None,
            Precision::Int8 => Some(Format::Int8),
            Precision::Bf16 => Some(Format::Bf16),
        };
        if let Some(format) = low {
            self.low = Some(PackedLow::pack(&self.w, k, self.cout, format, algo.amx));
            self.w = Vec::new();
        } else if algo.avx512 {
            self.packed = Some(PackedB::pack(&self.w, k, self.cout, self.cout));
            self.w = Vec::new();
        }
        self
    }

    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.ph - self.kh) / self.stride + 1,
            (w + 2 * self.pw - self.kw) / self.stride + 1,
        )
    }

    /// Multiply-adds per output pixel, for GFLOP/s accounting.
    pub fn macs(&self, h: usize, w: usize) -> u64 {
        let (oh, ow) = self.out_hw(h, w);
        (oh * ow * self.kh * self.kw * self.cin * self.cout) as u64
    }

    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.ph == 0 && self.pw == 0
    }

    /// Runs the convolution into a fresh activation.
    pub fn forward(&self, x: &Act, scratch: &mut Scratch) -> Act {
        let (oh, ow) = self.out_hw(x.h, x.w);
        let mut y = scratch.act(x.n, oh, ow, self.cout);
        let ld = self.cout;
        self.run(
            x,
            OutSlice {
                data: &mut y.data,
                ld,
                col0: 0,
            },
            None,
        );
        y
    }

    /// `out = relu?(conv(x) + bias + residual?)`, written into `out`'s column range.
    /// `residual`, when given, is an NHWC buffer with exactly `cout` channels.
    pub fn run(&self, x: &Act, out: OutSlice<'_>, residual: Option<&[f32]>) {
        self.run_with(x, out, residual, true);
    }

    /// `avg_pool2d(3, stride 1, padding 1)` (padding counted) and then this pointwise
    /// convolution, computed the other way round: both are linear, so the pool can run
    /// after the matrix product, on `cout` channels instead of `cin` (Inception's pool
    /// branches: 4-10x fewer), with the bias and ReLU applied after it.
    pub fn after_avg_pool(&self, x: &Act, out: OutSlice<'_>, scratch: &mut Scratch) {
        assert!(
            self.pointwise(),
            "after_avg_pool needs a 1x1 stride-1 convolution"
        );
        assert!(
            self.cout <= ZEROS.len(),
            "after_avg_pool: at most 2048 channels"
        );
        let mut y = scratch.act(x.n, x.h, x.w, self.cout);
        self.run_with(
            x,
            OutSlice {
                data: &mut y.data,
                ld: self.cout,
                col0: 0,
            },
            None,
            false,
        );
        avg_pool_3s1p1(&y, out, Some((&self.bias, self.relu)));
        scratch.recycle(y);
    }

    /// [`Self::run`], or with `epilogue == false` the bare product (no bias, no ReLU).
    fn run_with(&self, x: &Act, out: OutSlice<'_>, residual: Option<&[f32]>, epilogue: bool) {
        assert_eq!(x.c, self.cin, "conv input channels");
        assert!(
            epilogue || self.wino.is_none(),
            "bare product of a Winograd layer"
        );
        if let (Some(wg), None) = (&self.wino, residual) {
            let (oh, ow) = self.out_hw(x.h, x.w);
            if x.n * oh * ow >= WINOGRAD_MIN_PIXELS {
                return wg.run(x, self.ph, &self.bias, self.relu, out);
            }
        }
        let (oh, ow) = self.out_hw(x.h, x.w);
        let m = x.n * oh * ow;
        let n = self.cout;
        let k = self.kh * self.kw * self.cin;
        assert!(out.col0 + n <= out.ld && out.data.len() >= m * out.ld);
        if let Some(r) = residual {
            assert_eq!(r.len(), m * n, "residual shape");
        }
        let (mt, nt) = tiling(m, n, k, team::current_threads());
        let tiles_m = m.div_ceil(mt);
        let tiles_n = n.div_ceil(nt);
        let dst = SendPtr(out.data.as_mut_ptr());
        let ld = out.ld;
        let col0 = out.col0;
        let pre = match &self.low {
            Some(q) if tiles_n > 1 => Some(self.prepack(x, (oh, ow), m, q)),
            _ => None,
        };
        team::for_each(tiles_m * tiles_n, |t| {
            let (m0, n0) = ((t / tiles_n) * mt, (t % tiles_n) * nt);
            let (m1, n1) = ((m0 + mt).min(m), (n0 + nt).min(n));
            // SAFETY: tile (m0..m1, n0..n1) of the output is written by this task alone;
            // rows are `ld` apart and `col0 + n1 <= ld`, checked above.
            unsafe {
                self.tile(
                    x,
                    (oh, ow),
                    (m0, m1),
                    (n0, n1),
                    k,
                    dst.get(),
                    ld,
                    col0,
                    residual,
                    epilogue,
                    pre.as_ref(),
                );
            }
        });
    }

    /// One output tile: prefill with bias (+ residual), accumulate the GEMM, then ReLU;
    /// without `epilogue`, the bare product.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        &self,
        x: &Act,
        (oh, ow): (usize, usize),
        (m0, m1): (usize, usize),
        (n0, n1): (usize, usize),
        k: usize,
        dst: *mut f32,
        ld: usize,
        col0: usize,
        residual: Option<&[f32]>,
        epilogue: bool,
        pre: Option<&Prepacked>,
    ) {
        let rows = m1 - m0;
        let (bias, relu) = if epilogue {
            (&self.bias[..], self.relu)
        } else {
            (&ZEROS[..self.cout], false)
        };
        if let Some(q) = &self.low {
            let ep = Epilogue {
                bias,
                residual: residual.map(|r| (r.as_ptr().add(m0 * self.cout + n0), self.cout)),
                relu,
            };
            let c = dst.add(m0 * ld + col0 + n0);
            let panels = (n0 / qgemm::NR, n1.div_ceil(qgemm::NR));
            return self.tile_low(x, (oh, ow), (m0, m1), q, panels, (c, ld), ep, pre);
        }
        if let Some(pb) = &self.packed {
            let ep = Epilogue {
                bias,
                residual: residual.map(|r| (r.as_ptr().add(m0 * self.cout + n0), self.cout)),
                relu,
            };
            let c = dst.add(m0 * ld + col0 + n0);
            let panels = (n0 / packed_gemm::NR, n1.div_ceil(packed_gemm::NR));
            if self.pointwise() {
                let a = x.data.as_ptr().add(m0 * self.cin);
                packed_gemm::gemm(rows, a, self.cin, pb, panels, c, ld, ep);
            } else {
                COLS.with(|cell| {
                    let mut cols_buf = cell.borrow_mut();
                    if cols_buf.len() < rows * k {
                        cols_buf.resize(rows * k, 0.0);
                    }
                    self.im2col(x, (oh, ow), m0, m1, &mut cols_buf[..rows * k]);
                    packed_gemm::gemm(rows, cols_buf.as_ptr(), k, pb, panels, c, ld, ep);
                });
            }
            return;
        }
        let cols = n1 - n0;
        let bias = &bias[n0..n1];
        let tile_dst = dst.add(m0 * ld + col0 + n0);
        for r in 0..rows {
            let row = std::slice::from_raw_parts_mut(tile_dst.add(r * ld), cols);
            match residual {
                Some(res) => {
                    let rr = &res[(m0 + r) * self.cout + n0..(m0 + r) * self.cout + n1];
                    for ((d, b), s) in row.iter_mut().zip(bias).zip(rr) {
                        *d = b + s;
                    }
                }
                None => row.copy_from_slice(bias),
            }
        }
        let gemm_into = |lhs: *const f32, lhs_rs: usize| {
            gemm_rows(
                (rows, cols, k),
                (tile_dst, ld, true),
                (lhs, lhs_rs),
                (self.w.as_ptr().add(n0), self.cout),
            );
        };
        if self.pointwise() {
            gemm_into(x.data.as_ptr().add(m0 * self.cin), self.cin);
        } else {
            COLS.with(|cell| {
                let mut cols_buf = cell.borrow_mut();
                if cols_buf.len() < rows * k {
                    cols_buf.resize(rows * k, 0.0);
                }
                self.im2col(x, (oh, ow), m0, m1, &mut cols_buf[..rows * k]);
                gemm_into(cols_buf.as_ptr(), k);
            });
        }
        if relu {
            for r in 0..rows {
                let row = std::slice::from_raw_parts_mut(tile_dst.add(r * ld), cols);
                for v in row {
                    *v = v.max(0.0);
                }
            }
        }
    }

    /// Converts rows `m0..m1` of the input (in place for a pointwise convolution, else
    /// from the f32 im2col rows) into `q`'s format at `dst` (rows `lda` bytes apart), their
    /// scales into `scales`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn pack_low_rows(
        &self,
        x: &Act,
        (oh, ow): (usize, usize),
        (m0, m1): (usize, usize),
        q: &PackedLow,
        dst: *mut u8,
        lda: usize,
        scales: &mut [f32],
    ) {
        let rows = m1 - m0;
        let k = q.k;
        if self.pointwise() {
            let a = x.data.as_ptr().add(m0 * self.cin);
            qgemm::pack_rows(q.format, a, self.cin, rows, k, dst, lda, q.kp, scales);
        } else {
            COLS.with(|cell| {
                let mut cols_buf = cell.borrow_mut();
                if cols_buf.len() < rows * k {
                    cols_buf.resize(rows * k, 0.0);
                }
                self.im2col(x, (oh, ow), m0, m1, &mut cols_buf[..rows * k]);
                qgemm::pack_rows(
                    q.format,
                    cols_buf.as_ptr(),
                    k,
                    rows,
                    k,
                    dst,
                    lda,
                    q.kp,
                    scales,
                );
            });
        }
    }

    /// The low-precision tile: the rows of the whole layer converted once (`pre`, when
    /// the layer is split by columns), or rows `m0..m1` converted here; then the product.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_low(
        &self,
        x: &Act,
        (oh, ow): (usize, usize),
        (m0, m1): (usize, usize),
        q: &PackedLow,
        panels: (usize, usize),
        (c, ldc): (*mut f32, usize),
        ep: Epilogue<'_>,
        pre: Option<&Prepacked>,
    ) {
        let rows = m1 - m0;
        let gemm = if q.amx { amx::gemm } else { qgemm::gemm };
        if let Some(p) = pre {
            let a = p.bytes.add(m0 * p.lda);
            return gemm(rows, a, p.lda, p.scales.add(m0), q, panels, c, ldc, ep);
        }
        let lda = low_row_stride(q);
        QROWS.with(|cell| {
            let mut qr = cell.borrow_mut();
            let (bytes, scales) = &mut *qr;
            // AMX reads whole 16-row tiles; the rows past `rows` are never stored.
            let alloc = if q.amx { amx::padded_rows(rows) } else { rows };
            if bytes.len() < alloc * lda {
                bytes.resize(alloc * lda, 0);
            }
            if scales.len() < rows {
                scales.resize(rows, 0.0);
            }
            self.pack_low_rows(x, (oh, ow), (m0, m1), q, bytes.as_mut_ptr(), lda, scales);
            gemm(
                rows,
                bytes.as_ptr(),
                lda,
                scales.as_ptr(),
                q,
                panels,
                c,
                ldc,
                ep,
            );
        });
    }

    /// Converts all `m` rows of a low-precision layer once, in parallel, into the calling
    /// thread's `PREPACKED` buffer, and returns where they are. For layers cut into
    /// several column tiles, each of which would otherwise convert the same rows again
    /// (ResNet's stages 3-4 at batch 1: 4 column tiles).
    fn prepack(&self, x: &Act, (oh, ow): (usize, usize), m: usize, q: &PackedLow) -> Prepacked {
        let lda = low_row_stride(q);
        PREPACKED.with(|cell| {
            let mut pr = cell.borrow_mut();
            let (bytes, scales) = &mut *pr;
            // A tile starting at any row may read up to 15 rows past `m` on AMX.
            if bytes.len() < (m + 16) * lda {
                bytes.resize((m + 16) * lda, 0);
            }
            if scales.len() < m {
                scales.resize(m, 0.0);
            }
            let dst = SendPtr(bytes.as_mut_ptr() as *mut f32);
            let sc = SendPtr(scales.as_mut_ptr());
            const CHUNK: usize = 32;
            team::for_each(m.div_ceil(CHUNK), |t| {
                let (m0, m1) = (t * CHUNK, ((t + 1) * CHUNK).min(m));
                // SAFETY: chunk t owns rows m0..m1 of both buffers, sized above.
                unsafe {
                    let scales = std::slice::from_raw_parts_mut(sc.get().add(m0), m1 - m0);
                    let dst = (dst.get() as *mut u8).add(m0 * lda);
                    self.pack_low_rows(x, (oh, ow), (m0, m1), q, dst, lda, scales);
                }
            });
            Prepacked {
                bytes: bytes.as_ptr(),
                scales: scales.as_ptr(),
                lda,
            }
        })
    }

    /// Rows `m0..m1` of the im2col matrix: for each output pixel, the `kh x kw` window of
    /// channel vectors, zeros where the window hangs over the padding.
    fn im2col(&self, x: &Act, (oh, ow): (usize, usize), m0: usize, m1: usize, out: &mut [f32]) {
        let c = self.cin;
        let k = self.kh * self.kw * c;
        for (row, m) in out.chunks_exact_mut(k).zip(m0..m1) {
            let b = m / (oh * ow);
            let oy = (m / ow) % oh;
            let ox = m % ow;
            for ky in 0..self.kh {
                let iy = (oy * self.stride + ky) as isize - self.ph as isize;
                let seg = &mut row[ky * self.kw * c..(ky + 1) * self.kw * c];
                if iy < 0 || iy >= x.h as isize {
                    seg.fill(0.0);
                    continue;
                }
                let base = (b * x.h + iy as usize) * x.w;
                // The window's row is kw neighbouring pixels: one contiguous run of
                // kw * c values whenever it does not hang over the padding.
                let ix0 = (ox * self.stride) as isize - self.pw as isize;
                if ix0 >= 0 && ix0 as usize + self.kw <= x.w {
                    let src = (base + ix0 as usize) * c;
                    seg.copy_from_slice(&x.data[src..src + self.kw * c]);
                    continue;
                }
                for kx in 0..self.kw {
                    let ix = (ox * self.stride + kx) as isize - self.pw as isize;
                    let dst = &mut seg[kx * c..(kx + 1) * c];
                    if ix < 0 || ix >= x.w as isize {
                        dst.fill(0.0);
                    } else {
                        let src = (base + ix as usize) * c;
                        dst.copy_from_slice(&x.data[src..src + c]);
                    }
                }
            }
        }
    }
}

/// The bias of a bare product (widest layer: 2048 channels).
static ZEROS: [f32; 2048] = [0.0; 2048];

/// Chooses the output tile (rows, columns) for an `m x n` product with inner size `k` on
/// `threads` workers. Every tile packs its share of the weights (`k x columns`) and of the
/// input rows (`rows x k`), so splitting along rows repeats the weight packing and
/// splitting along columns repeats the input packing; pick the split that repeats the
/// least, with at least two tiles per thread for balance when the work allows it.
fn tiling(m: usize, n: usize, k: usize, threads: usize) -> (usize, usize) {
    let want = if threads <= 1 { 1 } else { threads * 2 };
    let min_rows = m.div_ceil(MAX_TILE_ROWS).max(1);
    let mut best = (u128::MAX, m, n);
    let mut tn = 1usize;
    loop {
        // Whole panels of the packed kernel.
        let nt = round_up(n.div_ceil(tn), packed_gemm::NR).min(n);
        let tiles_n = n.div_ceil(nt);
        let mut try_m = want.div_ceil(tiles_n).max(min_rows).min(m.max(1));
        let mut mt = m.div_ceil(try_m).max(1);
        let mut tiles_m = m.div_ceil(mt);
        // Equal shares: a task count that is not a multiple of the thread count leaves
        // a core idle at the end of every convolution (5 tasks on 2 threads: 83%).
        while try_m < m && !(tiles_m * tiles_n).is_multiple_of(threads.max(1)) {
            try_m += 1;
            mt = m.div_ceil(try_m);
            tiles_m = m.div_ceil(mt);
        }
        let cost = (tiles_m as u128) * (k * n) as u128 + (tiles_n as u128) * (m * k) as u128;
        // Fewer tiles than threads idles a core: count it as extra cost.
        let idle = if tiles_m * tiles_n < threads {
            (threads - tiles_m * tiles_n) as u128 * (m * n * k) as u128 / threads as u128
        } else {
            0
        };
        if cost + idle < best.0 {
            best = (cost + idle, mt, nt);
        }
        if nt <= packed_gemm::NR || tiles_n >= want * 2 {
            break;
        }
        tn *= 2;
    }
    (best.1, best.2)
}

fn round_up(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

/// Max pool `3x3`, stride 2, with `pad` (0 or 1) ignored positions: torchvision's
/// `max_pool2d(3, 2, padding=pad)`, written into `out`'s column range.
pub(crate) fn max_pool_3s2(x: &Act, pad: usize, out: OutSlice<'_>) {
    let oh = (x.h + 2 * pad - 3) / 2 + 1;
    let ow = (x.w + 2 * pad - 3) / 2 + 1;
    pool_rows(x, oh, ow, out, |x, b, oy, ox, dst| {
        dst.fill(f32::NEG_INFINITY);
        for ky in 0..3 {
            let iy = (oy * 2 + ky) as isize - pad as isize;
            if iy < 0 || iy >= x.h as isize {
                continue;
            }
            for kx in 0..3 {
                let ix = (ox * 2 + kx) as isize - pad as isize;
                if ix < 0 || ix >= x.w as isize {
                    continue;
                }
                let src = ((b * x.h + iy as usize) * x.w + ix as usize) * x.c;
                for (d, s) in dst.iter_mut().zip(&x.data[src..src + x.c]) {
                    *d = d.max(*s);
                }
            }
        }
    });
}

/// torchvision's `avg_pool2d(3, stride=1, padding=1)` with `count_include_pad=True`:
/// the sum of the valid positions over 9.
/// With `bias_relu`, `relu?(pool + bias)` per channel.
pub(crate) fn avg_pool_3s1p1(x: &Act, out: OutSlice<'_>, bias_relu: Option<(&[f32], bool)>) {
    let (h, w, c) = (x.h, x.w, x.c);
    let (ld, col0) = (out.ld, out.col0);
    assert!(col0 + c <= ld && out.data.len() >= x.n * h * w * ld);
    // Separable: the three input rows are summed once per output row, then each output
    // pixel adds three neighbouring column sums (4 adds per value instead of 8).
    team::for_each_chunk(&mut out.data[..x.n * h * w * ld], w * ld, |r, row| {
        let (b, oy) = (r / h, r % h);
        ROWSUM.with(|cell| {
            let mut sum = cell.borrow_mut();
            sum.clear();
            sum.resize(w * c, 0.0);
            for iy in oy.saturating_sub(1)..(oy + 2).min(h) {
                let src = &x.data[(b * h + iy) * w * c..(b * h + iy + 1) * w * c];
                for (d, s) in sum.iter_mut().zip(src) {
                    *d += *s;
                }
            }
            for ox in 0..w {
                let dst = &mut row[ox * ld + col0..ox * ld + col0 + c];
                dst.copy_from_slice(&sum[ox * c..(ox + 1) * c]);
                for nx in [ox.wrapping_sub(1), ox + 1] {
                    if nx < w {
                        for (d, s) in dst.iter_mut().zip(&sum[nx * c..(nx + 1) * c]) {
                            *d += *s;
                        }
                    }
                }
                // count_include_pad: always nine.
                for d in dst.iter_mut() {
                    *d /= 9.0;
                }
                if let Some((bias, relu)) = bias_relu {
                    for (d, b) in dst.iter_mut().zip(bias) {
                        *d += *b;
                        if relu {
                            *d = d.max(0.0);
                        }
                    }
                }
            }
        });
    });
}

thread_local! {
    /// Per-thread column sums of one output row of the average pool.
    static ROWSUM: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn pool_rows(
    x: &Act,
    oh: usize,
    ow: usize,
    out: OutSlice<'_>,
    f: impl Fn(&Act, usize, usize, usize, &mut [f32]) + Sync,
) {
    let c = x.c;
    let (ld, col0) = (out.ld, out.col0);
    assert!(col0 + c <= ld && out.data.len() >= x.n * oh * ow * ld);
    team::for_each_chunk(&mut out.data[..x.n * oh * ow * ld], ow * ld, |r, row| {
        let (b, oy) = (r / oh, r % oh);
        for ox in 0..ow {
            f(x, b, oy, ox, &mut row[ox * ld + col0..ox * ld + col0 + c]);
        }
    });
}

/// Global average pool: NHWC -> `[n, c]`.
pub(crate) fn global_avg_pool(x: &Act) -> Vec<f32> {
    let hw = x.h * x.w;
    let mut out = vec![0.0f32; x.n * x.c];
    team::for_each_chunk(&mut out, x.c, |b, o| {
        for p in 0..hw {
            let src = (b * hw + p) * x.c;
            for (d, s) in o.iter_mut().zip(&x.data[src..src + x.c]) {
                *d += *s;
            }
        }
        let inv = 1.0 / hw as f32;
        o.iter_mut().for_each(|d| *d *= inv);
    });
    out
}

/// `y = x W + b` for `x: [rows, k]`, `w: [k, n]` row-major.
pub(crate) fn linear(x: &[f32], rows: usize, w: &[f32], bias: &[f32]) -> Vec<f32> {
    let n = bias.len();
    let k = w.len() / n.max(1);
    assert_eq!(x.len(), rows * k, "linear input shape");
    let mut y: Vec<f32> = (0..rows).flat_map(|_| bias.iter().copied()).collect();
    // Column blocks, two per worker: at batch 1 this is a matrix-vector product that only
    // streams the 8 MB of weights, so each worker streams its own share.
    let cols = round_up(n.div_ceil(2 * team::current_threads()), 16).max(16);
    let dst = SendPtr(y.as_mut_ptr());
    team::for_each(n.div_ceil(cols), |t| {
        let (n0, n1) = (t * cols, ((t + 1) * cols).min(n));
        // SAFETY: all three buffers have the sizes the strides describe (checked above);
        // column blocks of distinct tasks are disjoint.
        unsafe {
            gemm_rows(
                (rows, n1 - n0, k),
                (dst.get().add(n0), n, true),
                (x.as_ptr(), k),
                (w.as_ptr().add(n0), n),
            );
        }
    });
    y
}

/// `C (+)= A B` on one thread with the `gemm` crate, all three row-major: `(m, n, k)`,
/// `(C, row stride, accumulate into C)`, `(A, row stride)`, `(B, row stride)`.
///
/// # Safety
/// Each pointer must address its matrix at the given sizes and strides.
pub(crate) unsafe fn gemm_rows(
    (m, n, k): (usize, usize, usize),
    (c, ldc, accumulate): (*mut f32, usize, bool),
    (a, lda): (*const f32, usize),
    (b, ldb): (*const f32, usize),
) {
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        ldc as isize,
        accumulate,
        a,
        1,
        lda as isize,
        b,
        1,
        ldb as isize,
        if accumulate { 1.0f32 } else { 0.0f32 },
        1.0f32,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// NCHW `[n, c, h, w]` values -> NHWC activation.
pub(crate) fn nchw_to_nhwc(
    src: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    scratch: &mut Scratch,
) -> Act {
    let mut a = scratch.act(n, h, w, c);
    let len = a.len();
    team::for_each_chunk(&mut a.data[..len], w * c, |r, row| {
        let (b, y) = (r / h, r % h);
        for x in 0..w {
            for ch in 0..c {
                row[x * c + ch] = src[((b * c + ch) * h + y) * w + x];
            }
        }
    });
    a
}

#[cfg(test)]
mod tests;
