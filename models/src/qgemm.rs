//! Low-precision matrix multiply for the `int8` and `bf16` precisions, with the
//! convolution epilogue (dequantize, bias, residual, ReLU) applied in registers before the
//! single f32 store:
//! - int8: u8 activations (quantized per row as the tile is packed) times s8 weights
//!   (quantized per output column once at load), i32 accumulation with AVX-512 VNNI
//!   (`vpdpbusd`, 64 multiply-adds per instruction, 4x an fp32 FMA);
//! - bf16: both operands rounded to bfloat16, f32 accumulation with AVX512-BF16
//!   (`vdpbf16ps`, 32 multiply-adds per instruction).
//!
//! Both share one layout and one driver: a 32-bit lane holds four int8 or two bf16
//! values of consecutive k, so one 64-byte load of weights is 16 columns of one k-group
//! and one 4-byte broadcast is a row's k-group, whatever the format.
//!
//! Why per-row activation scales rather than one calibrated scale per tensor: a row is one
//! output pixel's input window, and its own maximum gives it all 255 levels, so no
//! calibration pass, no file to keep in step with the weights, and no clipping of rare
//! large values; the cost is one max over the row while it is in L1 anyway, and one
//! multiply per output in the epilogue.
//!
//! Activations must be non-negative: every layer that runs here reads the output of a
//! ReLU (both networks keep their first convolution, which reads the signed normalised
//! image, in fp32). A negative value would be clamped to 0.
//!
//! Weights are stored in the order the instructions read them: panels of [`NR`] columns,
//! each `[k-group][NR][group]`. The same layout is what an AMX B tile wants (16 columns x
//! one k-group per 64-byte row).
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::packed_gemm::Epilogue;

/// Columns per panel: two vectors of 16 accumulators.
pub(crate) const NR: usize = 32;

/// The number format of a packed matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Int8,
    Bf16,
}

impl Format {
    /// Values of k per 32-bit lane.
    fn group(self) -> usize {
        match self {
            Format::Int8 => 4,
            Format::Bf16 => 2,
        }
    }

    /// Bytes per value.
    pub(crate) fn bytes(self) -> usize {
        4 / self.group()
    }

    /// True when this CPU has the instructions (AVX-512 F and BW, and VNNI or BF16).
    pub(crate) fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            has!("avx512f")
                && has!("avx512bw")
                && match self {
                    Format::Int8 => has!("avx512vnni"),
                    Format::Bf16 => has!("avx512bf16"),
                }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }
}

/// The inner dimension rounded up to a multiple of 64: one AMX tile row of int8, sixteen
/// `vpdpbusd` groups. Costs at most a few percent of extra zeros on the layers here.
pub(crate) fn padded_k(k: usize) -> usize {
    k.div_ceil(64) * 64
}

/// A `[k, n]` weight matrix in a low-precision format, packed into panels.
#[derive(Debug, Clone)]
pub(crate) struct PackedLow {
    data: Vec<u8>,
    /// Per column (padded to whole panels with zeros): int8's step, max |w| / 127; 1 for
    /// bf16.
    scale: Vec<f32>,
    pub format: Format,
    /// Multiply on AMX tiles (`amx`) rather than with AVX-512 dot products.
    pub amx: bool,
    pub k: usize,
    /// `k` rounded up to a multiple of 64 (zeros past `k`).
    pub kp: usize,
    pub n: usize,
}

/// `f32` -> bfloat16 bits, rounding to nearest even (what `vcvtneps2bf16` does).
pub(crate) fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

impl PackedLow {
    /// Packs the row-major `[k, n]` matrix `w`: int8 quantized symmetrically per column,
    /// bf16 rounded.
    pub fn pack(w: &[f32], k: usize, n: usize, format: Format, amx: bool) -> Self {
        assert_eq!(w.len(), k * n, "weight matrix shape");
        let kp = padded_k(k);
        let panels = n.div_ceil(NR);
        let mut scale = vec![0.0f32; panels * NR];
        for (o, s) in scale.iter_mut().enumerate().take(n) {
            *s = match format {
                Format::Int8 => (0..k).map(|kk| w[kk * n + o].abs()).fold(0.0f32, f32::max) / 127.0,
                Format::Bf16 => 1.0,
            };
        }
        let (g, eb) = (format.group(), format.bytes());
        let mut data = vec![0u8; panels * kp * NR * eb];
        for p in 0..panels {
            for col in 0..NR.min(n - p * NR) {
                let o = p * NR + col;
                let inv = if scale[o] > 0.0 { 1.0 / scale[o] } else { 0.0 };
                for kk in 0..k {
                    let at = (p * kp * NR + (kk / g) * NR * g + col * g + kk % g) * eb;
                    let v = w[kk * n + o];
                    match format {
                        Format::Int8 => {
                            data[at] = (v * inv).round().clamp(-127.0, 127.0) as i8 as u8;
                        }
                        Format::Bf16 => {
                            data[at..at + 2].copy_from_slice(&bf16_bits(v).to_le_bytes());
                        }
                    }
                }
            }
        }
        Self {
            data,
            scale,
            format,
            amx: amx && crate::amx::available(format),
            k,
            kp,
            n,
        }
    }

    /// Panel `p`'s packed weights: `kp / group` rows of 128 bytes (`NR` lanes).
    pub(crate) fn panel(&self, p: usize) -> *const u8 {
        self.data[p * self.kp * NR * self.format.bytes()..].as_ptr()
    }

    /// Per-column scales of panel `p` (`NR` values).
    pub(crate) fn scales(&self, p: usize) -> *const f32 {
        self.scale[p * NR..].as_ptr()
    }

    /// Bytes of one packed activation row (`kp` values).
    pub(crate) fn row_bytes(&self) -> usize {
        self.kp * self.format.bytes()
    }

    /// The packed value at (`kk`, `o`) as f64 (int8: the integer; bf16: the value).
    #[cfg(test)]
    fn value(&self, kk: usize, o: usize) -> f64 {
        let (g, eb) = (self.format.group(), self.format.bytes());
        let at = ((o / NR) * self.kp * NR + (kk / g) * NR * g + (o % NR) * g + kk % g) * eb;
        match self.format {
            Format::Int8 => f64::from(self.data[at] as i8),
            Format::Bf16 => f64::from(f32::from_bits(
                u32::from(u16::from_le_bytes([self.data[at], self.data[at + 1]])) << 16,
            )),
        }
    }
}

/// Converts `rows` rows of `k` f32 values (`lds` apart) into `format` rows of `kp` values
/// (`ldd` bytes apart, zero past `k`). int8: each row gets its own scale `max(row) / 255`,
/// written to `scales` (negative values become 0); bf16: scales are 1.
///
/// # Safety
/// `src` readable for `rows` rows of `k` values `lds` apart, `dst` writable for `rows`
/// rows of `kp >= k` values `ldd` bytes apart, `scales.len() >= rows`, and
/// `format.available()`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn pack_rows(
    format: Format,
    src: *const f32,
    lds: usize,
    rows: usize,
    k: usize,
    dst: *mut u8,
    ldd: usize,
    kp: usize,
    scales: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    match format {
        Format::Int8 => quantize_rows_avx512(src, lds, rows, k, dst, ldd, kp, scales),
        Format::Bf16 => bf16_rows_avx512(src, lds, rows, k, dst, ldd, kp, scales),
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (format, src, lds, rows, k, dst, ldd, kp, scales);
        unreachable!("qgemm formats are unavailable off x86_64");
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
unsafe fn quantize_rows_avx512(
    src: *const f32,
    lds: usize,
    rows: usize,
    k: usize,
    dst: *mut u8,
    ldd: usize,
    kp: usize,
    scales: &mut [f32],
) {
    let full = k / 16;
    let tail = k % 16;
    let tail_mask: __mmask16 = ((1u32 << tail) - 1) as __mmask16;
    for (r, scale) in scales.iter_mut().enumerate().take(rows) {
        let s = src.add(r * lds);
        let d = dst.add(r * ldd);
        let mut mx = _mm512_setzero_ps();
        for i in 0..full {
            mx = _mm512_max_ps(mx, _mm512_loadu_ps(s.add(i * 16)));
        }
        if tail > 0 {
            mx = _mm512_max_ps(mx, _mm512_maskz_loadu_ps(tail_mask, s.add(full * 16)));
        }
        let max = _mm512_reduce_max_ps(mx);
        // A row of zeros (or of NaNs, which fail the comparison) quantizes to zeros.
        let inv = if max > 0.0 { 255.0 / max } else { 0.0 };
        *scale = if max > 0.0 { max / 255.0 } else { 0.0 };
        let vinv = _mm512_set1_ps(inv);
        let zero = _mm512_setzero_ps();
        for i in 0..full {
            let v = _mm512_max_ps(_mm512_loadu_ps(s.add(i * 16)), zero);
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, vinv));
            _mm_storeu_si128(d.add(i * 16) as *mut __m128i, _mm512_cvtusepi32_epi8(q));
        }
        if tail > 0 {
            let v = _mm512_max_ps(_mm512_maskz_loadu_ps(tail_mask, s.add(full * 16)), zero);
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, vinv));
            _mm512_mask_cvtusepi32_storeu_epi8(d.add(full * 16) as *mut i8, tail_mask, q);
        }
        std::ptr::write_bytes(d.add(k), 0, kp - k);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn bf16_rows_avx512(
    src: *const f32,
    lds: usize,
    rows: usize,
    k: usize,
    dst: *mut u8,
    ldd: usize,
    kp: usize,
    scales: &mut [f32],
) {
    let full = k / 16;
    let tail = k % 16;
    let tail_mask: __mmask16 = ((1u32 << tail) - 1) as __mmask16;
    for (r, scale) in scales.iter_mut().enumerate().take(rows) {
        *scale = 1.0;
        let s = src.add(r * lds);
        let d = dst.add(r * ldd) as *mut u16;
        for i in 0..full {
            let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(s.add(i * 16)));
            _mm256_storeu_si256(
                d.add(i * 16) as *mut __m256i,
                std::mem::transmute::<__m256bh, __m256i>(h),
            );
        }
        if tail > 0 {
            let h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(tail_mask, s.add(full * 16)));
            _mm256_mask_storeu_epi16(
                d.add(full * 16) as *mut i16,
                tail_mask,
                std::mem::transmute::<__m256bh, __m256i>(h),
            );
        }
        std::ptr::write_bytes(d.add(k), 0, kp - k);
    }
}

/// `C[r][j] = epilogue(sa[r] * sw[j] * sum_k A[r][k] B[k][j])` for rows `0..rows` and the
/// columns of panels `p0..p1`. `a` points at row 0 of the packed rows (`lda` bytes apart,
/// `b.kp` values each, in `b.format`), `a_scale` at row 0's scale; `c` at row 0 of the
/// output, column `p0 * NR` (rows `ldc` apart), and so does the residual; only columns
/// `< b.n` are written.
///
/// # Safety
/// As [`crate::packed_gemm::gemm`], with `a` readable for `rows` packed rows, `a_scale`
/// for `rows` values, and `b.format.available()`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    rows: usize,
    a: *const u8,
    lda: usize,
    a_scale: *const f32,
    b: &PackedLow,
    (p0, p1): (usize, usize),
    c: *mut f32,
    ldc: usize,
    ep: Epilogue<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    match b.format {
        Format::Int8 => gemm_vnni(rows, a, lda, a_scale, b, (p0, p1), c, ldc, ep),
        Format::Bf16 => gemm_bf16(rows, a, lda, a_scale, b, (p0, p1), c, ldc, ep),
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, a, lda, a_scale, b, p0, p1, c, ldc, ep);
        unreachable!("qgemm formats are unavailable off x86_64");
    }
}

/// What the epilogue of one panel and row block needs.
pub(crate) struct Finish {
    /// Bias of the panel's first column.
    pub bias: *const f32,
    /// Weight scales of the panel's first column.
    pub w_scale: *const f32,
    /// Activation scale of the block's first row.
    pub a_scale: *const f32,
    pub residual: Option<(*const f32, usize)>,
    pub relu: bool,
}

/// `tile::<mr>(args)` for a row block of `mr` rows (1 to 12).
macro_rules! by_rows {
    ($mr:expr, $tile:ident, $($arg:expr),*) => {
        match $mr {
            1 => $tile::<1>($($arg),*),
            2 => $tile::<2>($($arg),*),
            3 => $tile::<3>($($arg),*),
            4 => $tile::<4>($($arg),*),
            5 => $tile::<5>($($arg),*),
            6 => $tile::<6>($($arg),*),
            7 => $tile::<7>($($arg),*),
            8 => $tile::<8>($($arg),*),
            9 => $tile::<9>($($arg),*),
            10 => $tile::<10>($($arg),*),
            11 => $tile::<11>($($arg),*),
            12 => $tile::<12>($($arg),*),
            m => unreachable!("row block of {m}"),
        }
    };
}

/// The driver both formats share (one copy per instruction set): panels outer, so one
/// panel's weights (at most 295 KB, ResNet's 3x3 512 in bf16) stay in L2 while every row
/// block of the tile streams past them.
macro_rules! driver {
    ($name:ident, $tile:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            rows: usize,
            a: *const u8,
            lda: usize,
            a_scale: *const f32,
            b: &PackedLow,
            (p0, p1): (usize, usize),
            c: *mut f32,
            ldc: usize,
            ep: Epilogue<'_>,
        ) {
            let steps = b.kp / b.format.group();
            for p in p0..p1 {
                let col0 = p * NR;
                let cols = (b.n - col0).min(NR);
                let mut r = 0;
                let mut blk = 0;
                while r < rows {
                    let mr = crate::packed_gemm::block_rows(rows, blk);
                    blk += 1;
                    let f = Finish {
                        bias: ep.bias.as_ptr().add(col0),
                        w_scale: b.scales(p),
                        a_scale: a_scale.add(r),
                        residual: ep
                            .residual
                            .map(|(ptr, ld)| (ptr.add(r * ld + (p - p0) * NR), ld)),
                        relu: ep.relu,
                    };
                    let out = (c.add(r * ldc + (p - p0) * NR), ldc, cols);
                    let a_blk = a.add(r * lda);
                    by_rows!(mr, $tile, steps, a_blk, lda, b.panel(p), out, &f);
                    r += mr;
                }
            }
        }
    };
}

driver!(gemm_vnni, tile_vnni, "avx512f,avx512bw,avx512vnni");
driver!(gemm_bf16, tile_bf16, "avx512f,avx512bw,avx512bf16");

/// One `M x 32` tile over `steps` k-groups: per group two 64-byte weight loads, one 4-byte
/// broadcast per row and two dot-product instructions (`vpdpbusd`, or `vdpbf16ps` for
/// bf16). Accumulators are i32 for int8 and f32 for bf16, held as raw 512-bit vectors.
/// One copy per instruction set, so neither needs the other's feature.
macro_rules! tile_fn {
    ($name:ident, $features:literal, $bf16:tt) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $name<const M: usize>(
            steps: usize,
            a: *const u8,
            lda: usize,
            panel: *const u8,
            out: (*mut f32, usize, usize),
            f: &Finish,
        ) {
            let mut lo = [_mm512_setzero_si512(); M];
            let mut hi = [_mm512_setzero_si512(); M];
            let mut bp = panel;
            let mut ap = a;
            for _ in 0..steps {
                let b0 = _mm512_loadu_si512(bp as *const __m512i);
                let b1 = _mm512_loadu_si512(bp.add(64) as *const __m512i);
                for i in 0..M {
                    let av = _mm512_set1_epi32((ap.add(i * lda) as *const i32).read_unaligned());
                    tile_fn!(@dot $bf16, lo[i], hi[i], av, b0, b1);
                }
                bp = bp.add(NR * 4);
                ap = ap.add(4);
            }
            let acc: [[__m512; 2]; M] = std::array::from_fn(|i| tile_fn!(@f32 $bf16, lo[i], hi[i]));
            finish_rows(&acc, out, f);
        }
    };
    (@dot false, $lo:expr, $hi:expr, $av:ident, $b0:ident, $b1:ident) => {
        $lo = _mm512_dpbusd_epi32($lo, $av, $b0);
        $hi = _mm512_dpbusd_epi32($hi, $av, $b1);
    };
    (@dot true, $lo:expr, $hi:expr, $av:ident, $b0:ident, $b1:ident) => {
        let a = std::mem::transmute::<__m512i, __m512bh>($av);
        $lo = _mm512_castps_si512(_mm512_dpbf16_ps(
            _mm512_castsi512_ps($lo),
            a,
            std::mem::transmute::<__m512i, __m512bh>($b0),
        ));
        $hi = _mm512_castps_si512(_mm512_dpbf16_ps(
            _mm512_castsi512_ps($hi),
            a,
            std::mem::transmute::<__m512i, __m512bh>($b1),
        ));
    };
    (@f32 false, $lo:expr, $hi:expr) => {
        [_mm512_cvtepi32_ps($lo), _mm512_cvtepi32_ps($hi)]
    };
    (@f32 true, $lo:expr, $hi:expr) => {
        [_mm512_castsi512_ps($lo), _mm512_castsi512_ps($hi)]
    };
}

tile_fn!(tile_vnni, "avx512f,avx512bw,avx512vnni", false);
tile_fn!(tile_bf16, "avx512f,avx512bw,avx512bf16", true);

/// Column masks of a panel with `cols` valid columns: (first 16, second 16).
#[cfg(target_arch = "x86_64")]
pub(crate) fn panel_masks(cols: usize) -> (__mmask16, __mmask16) {
    let lo = if cols >= 16 {
        0xffff
    } else {
        ((1u32 << cols) - 1) as __mmask16
    };
    let hi = if cols >= 32 {
        0xffff
    } else if cols > 16 {
        ((1u32 << (cols - 16)) - 1) as __mmask16
    } else {
        0
    };
    (lo, hi)
}

/// Scales `M` rows of f32 sums (two vectors of 16 columns each) by their row and column
/// scales, applies the epilogue and stores them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn finish_rows<const M: usize>(
    acc: &[[__m512; 2]; M],
    (c, ldc, cols): (*mut f32, usize, usize),
    f: &Finish,
) {
    let (m_lo, m_hi) = panel_masks(cols);
    let bias_lo = _mm512_maskz_loadu_ps(m_lo, f.bias);
    let bias_hi = _mm512_maskz_loadu_ps(m_hi, f.bias.add(16));
    let sw_lo = _mm512_loadu_ps(f.w_scale);
    let sw_hi = _mm512_loadu_ps(f.w_scale.add(16));
    let zero = _mm512_setzero_ps();
    for (i, [lo, hi]) in acc.iter().enumerate() {
        let sa = _mm512_set1_ps(*f.a_scale.add(i));
        let mut v0 = _mm512_fmadd_ps(*lo, _mm512_mul_ps(sw_lo, sa), bias_lo);
        let mut v1 = _mm512_fmadd_ps(*hi, _mm512_mul_ps(sw_hi, sa), bias_hi);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed product against the f64 product of the packed operands (exact up to f32
    /// rounding of the epilogue), and near the unquantized product, for both formats.
    #[test]
    fn gemm_matches_dequantized_reference() {
        for format in [Format::Int8, Format::Bf16] {
            if !format.available() {
                eprintln!("SKIPPED {format:?}: this CPU lacks its instructions");
                continue;
            }
            for amx in [false, true] {
                if amx && !crate::amx::available(format) {
                    eprintln!("SKIPPED {format:?} on AMX: this CPU or kernel has no AMX");
                    continue;
                }
                for &(rows, k, n, relu, res) in &[
                    (1usize, 4usize, 1usize, false, false),
                    (13, 64, 33, true, true),
                    (49, 9 * 20, 70, true, false),
                    (25, 300, 64, false, true),
                    (40, 128, 96, true, true),
                ] {
                    check(format, amx, rows, k, n, relu, res);
                }
            }
        }
    }

    fn check(format: Format, amx: bool, rows: usize, k: usize, n: usize, relu: bool, res: bool) {
        let a: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 37 % 101) as f32 / 50.0 - 0.3).max(0.0))
            .collect();
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 53 % 97) as f32 / 48.0 - 1.0) * 0.1)
            .collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01 - 0.2).collect();
        let resid: Vec<f32> = (0..rows * n).map(|i| (i % 11) as f32 * 0.05).collect();
        let b = PackedLow::pack(&w, k, n, format, amx);
        let ld = b.row_bytes();
        let mut qa = vec![0u8; rows * ld];
        let mut sa = vec![0f32; rows];
        let mut c = vec![f32::NAN; rows * n];
        unsafe {
            pack_rows(
                format,
                a.as_ptr(),
                k,
                rows,
                k,
                qa.as_mut_ptr(),
                ld,
                b.kp,
                &mut sa,
            );
            gemm(
                rows,
                qa.as_ptr(),
                ld,
                sa.as_ptr(),
                &b,
                (0, n.div_ceil(NR)),
                c.as_mut_ptr(),
                n,
                Epilogue {
                    bias: &bias,
                    residual: res.then_some((resid.as_ptr(), n)),
                    relu,
                },
            );
        }
        let a_value = |r: usize, kk: usize| match format {
            Format::Int8 => f64::from(qa[r * ld + kk]),
            Format::Bf16 => f64::from(f32::from_bits(
                u32::from(u16::from_le_bytes([
                    qa[r * ld + 2 * kk],
                    qa[r * ld + 2 * kk + 1],
                ])) << 16,
            )),
        };
        let (mut max_err, mut max_ref) = (0.0f64, 0.0f64);
        for r in 0..rows {
            for o in 0..n {
                let (mut acc, mut exact) = (0.0f64, f64::from(bias[o]));
                for kk in 0..k {
                    acc += a_value(r, kk) * b.value(kk, o);
                    exact += f64::from(a[r * k + kk]) * f64::from(w[kk * n + o]);
                }
                let mut want = acc * f64::from(sa[r]) * f64::from(b.scale[o]) + f64::from(bias[o]);
                if res {
                    want += f64::from(resid[r * n + o]);
                    exact += f64::from(resid[r * n + o]);
                }
                if relu {
                    want = want.max(0.0);
                    exact = exact.max(0.0);
                }
                let got = f64::from(c[r * n + o]);
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{format:?} {rows}x{k}x{n} at ({r},{o}): {got} vs {want}"
                );
                max_err = max_err.max((got - exact).abs());
                max_ref = max_ref.max(exact.abs());
            }
        }
        assert!(
            max_err <= 0.02 * max_ref.max(1e-3),
            "{format:?} {rows}x{k}x{n}: {max_err} of {max_ref}"
        );
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(f32::from_bits(u32::from(bf16_bits(f32::NAN)) << 16).is_nan());
    }

    /// Single-thread speed of both formats on a few layer shapes (not a test; `--ignored`).
    #[test]
    #[ignore]
    fn kernel_speed() {
        for (format, amx) in [
            (Format::Int8, false),
            (Format::Int8, true),
            (Format::Bf16, false),
            (Format::Bf16, true),
        ] {
            if !format.available() || (amx && !crate::amx::available(format)) {
                continue;
            }
            for &(rows, k, n) in &[
                (96usize, 768usize, 192usize),
                (96, 256, 256),
                (192, 1024, 256),
                (49, 4608, 512),
            ] {
                let a: Vec<f32> = (0..rows * k).map(|i| (i % 7) as f32 * 0.1).collect();
                let w: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1 - 0.2).collect();
                let b = PackedLow::pack(&w, k, n, format, amx);
                let mut qa = vec![0u8; rows * b.row_bytes()];
                let mut sa = vec![0f32; rows];
                let bias = vec![0.0f32; n];
                let mut c = vec![0.0f32; rows * n];
                let reps = 200;
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    unsafe {
                        pack_rows(
                            format,
                            a.as_ptr(),
                            k,
                            rows,
                            k,
                            qa.as_mut_ptr(),
                            b.row_bytes(),
                            b.kp,
                            &mut sa,
                        );
                        gemm(
                            rows,
                            qa.as_ptr(),
                            b.row_bytes(),
                            sa.as_ptr(),
                            &b,
                            (0, n.div_ceil(NR)),
                            c.as_mut_ptr(),
                            n,
                            Epilogue {
                                bias: &bias,
                                residual: None,
                                relu: true,
                            },
                        );
                    }
                }
                let s = t.elapsed().as_secs_f64();
                eprintln!(
                    "{format:?} {rows}x{k}x{n}: {:.1} GOP/s single thread",
                    2.0 * (rows * k * n * reps) as f64 / s / 1e9
                );
            }
        }
    }
}
