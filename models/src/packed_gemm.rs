//! Matrix multiply against weights packed once at load, with the convolution epilogue
//! (bias, residual add, ReLU) applied in registers before the single store: an AVX-512
//! register-blocked micro-kernel, 12 rows x 32 columns.
//!
//! Why not the `gemm` crate for these products: it packs the weight operand again on every
//! call and has a fixed per-call cost; at batch 1 the late layers are a few dozen pixels
//! times megabytes of weights, so both show. Weights here are stored in the order the
//! kernel reads them (`[panel][k][32]`), the activation rows are read in place (broadcast
//! one value per row and k, no packing), and the output is written once.
//!
//! CPUs without AVX-512 never reach this module: [`available`] is checked at load and the
//! portable path (the `gemm` crate) is used instead.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::cell::RefCell;

thread_local! {
    /// Per-thread packed block of A rows.
    static APACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Columns per panel: two 16-lane vectors.
pub(crate) const NR: usize = 32;
/// Rows per micro-tile: 12 x 2 accumulators + 2 weight vectors + 1 broadcast fit in the
/// 32 vector registers.
const MR: usize = 12;

/// True when this CPU can run the AVX-512 kernel.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A `[k, n]` matrix cut into panels of [`NR`] columns, each stored `[k][NR]` contiguous,
/// the last one padded with zero columns.
#[derive(Debug, Clone)]
pub(crate) struct PackedB {
    data: Vec<f32>,
    pub k: usize,
    pub n: usize,
}

impl PackedB {
    /// Packs the row-major `[k, n]` matrix `w` whose rows are `ldw` apart.
    pub fn pack(w: &[f32], k: usize, n: usize, ldw: usize) -> Self {
        let panels = n.div_ceil(NR);
        let mut data = vec![0.0f32; panels * k * NR];
        for p in 0..panels {
            let cols = (n - p * NR).min(NR);
            for kk in 0..k {
                let src = &w[kk * ldw + p * NR..kk * ldw + p * NR + cols];
                let at = (p * k + kk) * NR;
                data[at..at + cols].copy_from_slice(src);
            }
        }
        Self { data, k, n }
    }
}

/// What is added to the product before the store.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    /// Per output column, the full `n` of the matrix.
    pub bias: &'a [f32],
    /// A matrix of the output's shape: `(pointer to row 0 at the first panel's column; row
    /// stride)`.
    pub residual: Option<(*const f32, usize)>,
    pub relu: bool,
}

/// `C[r][j] = epilogue(sum_k A[r][k] B[k][j])` for rows `0..rows` and the columns of panels
/// `p0..p1`. `a` points at row 0 (rows `lda` apart, `b.k` values each); `c` at row 0 of
/// the output, column `p0 * NR` (rows `ldc` apart), and so does the residual; only columns
/// `< b.n` are written.
///
/// # Safety
/// `a` must be readable for `rows` rows of `b.k` values, `c` (and the residual, if any)
/// writable/readable for `rows` rows over the columns of panels `p0..p1` below `b.n`,
/// and [`available`] must be true.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    rows: usize,
    a: *const f32,
    lda: usize,
    b: &PackedB,
    (p0, p1): (usize, usize),
    c: *mut f32,
    ldc: usize,
    ep: Epilogue<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        gemm_avx512(rows, a, lda, b, (p0, p1), c, ldc, ep);
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, a, lda, b, p0, p1, c, ldc, ep);
        unreachable!("packed_gemm::available() is false off x86_64");
    }
}

/// Inner-dimension block. Without it a row block streams its whole `k x 32` weight panel
/// (2.3 MB over a tile's panels for ResNet's 3x3 512 layer) from L3 or memory once per 12
/// rows; with it a `KC`-deep slice of the tile's weights is read from memory once and
/// then from L2 by every row block.
const KC: usize = 256;
/// Bytes of weight slices (`KC x 32` per panel) one pass over the row blocks keeps in L2,
/// next to the `rows x KC` block of activations.
const B_GROUP_BYTES: usize = 256 * 1024;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_avx512(
    rows: usize,
    a: *const f32,
    lda: usize,
    b: &PackedB,
    (p0, p1): (usize, usize),
    c: *mut f32,
    ldc: usize,
    ep: Epilogue<'_>,
) {
    let k = b.k;
    let chunks = k.div_ceil(KC).max(1);
    let kc_max = k.div_ceil(chunks);
    let group = (B_GROUP_BYTES / (kc_max * NR * 4)).max(1);
    // Rows of A 2 or 4 KiB apart (512, 1024, 2048 channels) read in place put the 12
    // streams of a row block into one or two L1 sets. Such rows are copied once per
    // k-chunk (a plain row copy, reused for every panel) into a buffer whose row stride
    // is off the 512-float grid; other strides are read in place.
    let pack = lda.is_multiple_of(512);
    let ldp = kc_max + 16;
    APACK.with(|cell| {
        let mut apack = cell.borrow_mut();
        if pack && apack.len() < rows * ldp {
            apack.resize(rows * ldp, 0.0);
        }
        for ci in 0..chunks {
            let k0 = ci * kc_max;
            let kc = kc_max.min(k - k0);
            let (first, last) = (ci == 0, ci + 1 == chunks);
            if pack {
                for r in 0..rows {
                    std::ptr::copy_nonoverlapping(
                        a.add(r * lda + k0),
                        apack.as_mut_ptr().add(r * ldp),
                        kc,
                    );
                }
            }
            let mut g0 = p0;
            while g0 < p1 {
                let g1 = (g0 + group).min(p1);
                let mut r = 0;
                let mut blk = 0;
                while r < rows {
                    let mr = block_rows(rows, blk);
                    blk += 1;
                    let a_blk = if pack {
                        (apack.as_ptr().add(r * ldp), 1, ldp)
                    } else {
                        (a.add(r * lda + k0), 1, lda)
                    };
                    for p in g0..g1 {
                        let panel = b.data.as_ptr().add(p * k * NR + k0 * NR);
                        let col0 = p * NR;
                        let cols = (b.n - col0).min(NR);
                        let c_r = c.add(r * ldc + (p - p0) * NR);
                        let last_ep = last.then(|| Finish {
                            bias: ep.bias.as_ptr().add(col0),
                            residual: ep
                                .residual
                                .map(|(ptr, ld)| (ptr.add(r * ld + (p - p0) * NR), ld)),
                            relu: ep.relu,
                        });
                        let out = (c_r, ldc, cols);
                        macro_rules! go {
                            ($($m:literal)*) => {
                                match mr {
                                    $($m => tile::<$m>(kc, a_blk, panel, out, first, last_ep),)*
                                    _ => unreachable!("row block of {mr}"),
                                }
                            };
                        }
                        go!(1 2 3 4 5 6 7 8 9 10 11 12);
                    }
                    r += mr;
                }
                g0 = g1;
            }
        }
    });
}

/// Rows of row block `i` when `rows` are cut into the fewest blocks of at most [`MR`],
/// as equal as they go: a short last block (49 = 4 x 12 + 1) runs its one or two rows
/// latency-bound on too few accumulators, while 49 = 10+10+10+10+9 keeps every block near
/// full speed.
pub(crate) fn block_rows(rows: usize, i: usize) -> usize {
    let blocks = rows.div_ceil(MR);
    rows / blocks + usize::from(i < rows % blocks)
}

/// The epilogue of the last k-chunk, for one panel and row block.
struct Finish {
    bias: *const f32,
    residual: Option<(*const f32, usize)>,
    relu: bool,
}

/// One `M x 32` tile over `k` values of the inner dimension: accumulators stay in
/// registers, the weights of step `kk` are two vector loads, each row's `A[r][kk]` one
/// broadcast. `a` is `(pointer, step per k, step per row)`: `(row 0, 1, lda)` in place or
/// `(block, M, 1)` packed; `out` is `(pointer, row stride, valid columns)`. The first
/// chunk starts from zero, later ones from the partial sums in `out`; the last applies
/// `finish` before its store.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const M: usize>(
    k: usize,
    (a, a_step, a_row): (*const f32, usize, usize),
    panel: *const f32,
    (c, ldc, cols): (*mut f32, usize, usize),
    first: bool,
    finish: Option<Finish>,
) {
    // Columns past `cols` (the padding of the last panel) are neither read nor written.
    let (m_lo, m_hi) = crate::qgemm::panel_masks(cols);
    let mut lo = [_mm512_setzero_ps(); M];
    let mut hi = [_mm512_setzero_ps(); M];
    if !first {
        for i in 0..M {
            let crow = c.add(i * ldc);
            lo[i] = _mm512_maskz_loadu_ps(m_lo, crow);
            hi[i] = _mm512_maskz_loadu_ps(m_hi, crow.add(16));
        }
    }
    let mut bp = panel;
    let mut ap = a;
    for _ in 0..k {
        let b0 = _mm512_loadu_ps(bp);
        let b1 = _mm512_loadu_ps(bp.add(16));
        for i in 0..M {
            let av = _mm512_set1_ps(*ap.add(i * a_row));
            lo[i] = _mm512_fmadd_ps(av, b0, lo[i]);
            hi[i] = _mm512_fmadd_ps(av, b1, hi[i]);
        }
        bp = bp.add(NR);
        ap = ap.add(a_step);
    }
    let Some(f) = finish else {
        for i in 0..M {
            let crow = c.add(i * ldc);
            _mm512_mask_storeu_ps(crow, m_lo, lo[i]);
            _mm512_mask_storeu_ps(crow.add(16), m_hi, hi[i]);
        }
        return;
    };
    let bias_lo = _mm512_maskz_loadu_ps(m_lo, f.bias);
    let bias_hi = _mm512_maskz_loadu_ps(m_hi, f.bias.add(16));
    let zero = _mm512_setzero_ps();
    for i in 0..M {
        let mut v0 = _mm512_add_ps(lo[i], bias_lo);
        let mut v1 = _mm512_add_ps(hi[i], bias_hi);
        if let Some((rp, ldr)) = f.residual {
            let rrow = rp.add(i * ldr);
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m_lo, rrow));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m_hi, rrow.add(16)));
        }
        if f.relu {
            v0 = _mm512_max_ps(v0, zero);
            v1 = _mm512_max_ps(v1, zero);
        }
        let crow = c.add(i * ldc);
        _mm512_mask_storeu_ps(crow, m_lo, v0);
        _mm512_mask_storeu_ps(crow.add(16), m_hi, v1);
    }
}

/// Measured fp32 peak of one core: a loop of independent AVX-512 FMAs on registers, the
/// most this core can do whatever the memory. GFLOP/s, or `None` without AVX-512.
pub(crate) fn core_peak_gflops() -> Option<f64> {
    if !available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: available() checked AVX-512F.
        let (flops, secs) = unsafe { fma_loop(5_000_000) };
        Some(flops / secs / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop(iters: u64) -> (f64, f64) {
    let mut acc = [_mm512_set1_ps(1.0); 16];
    let m = _mm512_set1_ps(0.999_999);
    let add = _mm512_set1_ps(1e-7);
    let start = std::time::Instant::now();
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, m, add);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mut sum = 0.0f32;
    for a in acc {
        sum += _mm512_reduce_add_ps(a);
    }
    std::hint::black_box(sum);
    (iters as f64 * 16.0 * 16.0 * 2.0, secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_blocks_cover_the_rows_evenly() {
        for rows in 1usize..200 {
            let blocks = rows.div_ceil(MR);
            let sizes: Vec<usize> = (0..blocks).map(|i| block_rows(rows, i)).collect();
            assert_eq!(sizes.iter().sum::<usize>(), rows, "{rows}: {sizes:?}");
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(*hi <= MR && hi - lo <= 1, "{rows}: {sizes:?}");
        }
    }

    #[test]
    #[ignore]
    fn kernel_speed() {
        if !available() {
            return;
        }
        for &(rows, k, n) in &[
            (96usize, 768usize, 192usize),
            (96, 256, 256),
            (1200, 64, 256),
            (192, 1024, 256),
        ] {
            let a: Vec<f32> = (0..rows * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let w: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
            let b = PackedB::pack(&w, k, n, n);
            let bias = vec![0.0f32; n];
            let mut c = vec![0.0f32; rows * n];
            let ep = Epilogue {
                bias: &bias,
                residual: None,
                relu: true,
            };
            let t = std::time::Instant::now();
            let reps = 200;
            for _ in 0..reps {
                unsafe {
                    gemm(
                        rows,
                        a.as_ptr(),
                        k,
                        &b,
                        (0, n.div_ceil(NR)),
                        c.as_mut_ptr(),
                        n,
                        ep,
                    )
                };
            }
            let s = t.elapsed().as_secs_f64();
            eprintln!(
                "{rows}x{k}x{n}: {:.1} GF/s single thread",
                2.0 * (rows * k * n * reps) as f64 / s / 1e9
            );
        }
    }
}
