//! The Winograd transforms written with AVX-512 intrinsics (see the doc on `mod simd` in
//! winograd.rs for why).

use std::arch::x86_64::*;

use super::Geometry;
use crate::kernels::Act;

/// One Winograd variant's 1-D transforms: `B^T d` for a column of `A` values and
/// `A^T m` (the matrices of [`super::F2`] and [`super::F4`]).
pub(super) trait Transform<const A: usize, const M: usize> {
    /// # Safety
    /// The CPU must have AVX-512F.
    unsafe fn input(d: [__m512; A]) -> [__m512; A];
    /// # Safety
    /// The CPU must have AVX-512F.
    unsafe fn output(m: [__m512; A]) -> [__m512; M];
}

pub(super) struct F2;
pub(super) struct F4;

impl Transform<4, 2> for F2 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn input(d: [__m512; 4]) -> [__m512; 4] {
        [
            _mm512_sub_ps(d[0], d[2]),
            _mm512_add_ps(d[1], d[2]),
            _mm512_sub_ps(d[2], d[1]),
            _mm512_sub_ps(d[1], d[3]),
        ]
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn output(m: [__m512; 4]) -> [__m512; 2] {
        [
            _mm512_add_ps(_mm512_add_ps(m[0], m[1]), m[2]),
            _mm512_sub_ps(_mm512_sub_ps(m[1], m[2]), m[3]),
        ]
    }
}

impl Transform<6, 4> for F4 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn input(d: [__m512; 6]) -> [__m512; 6] {
        let (two, four, five) = (
            _mm512_set1_ps(2.0),
            _mm512_set1_ps(4.0),
            _mm512_set1_ps(5.0),
        );
        let s12 = _mm512_add_ps(d[1], d[2]);
        let s34 = _mm512_add_ps(d[3], d[4]);
        let d12 = _mm512_sub_ps(d[1], d[2]);
        let d43 = _mm512_sub_ps(d[4], d[3]);
        let d31 = _mm512_sub_ps(d[3], d[1]);
        let d42 = _mm512_sub_ps(d[4], d[2]);
        [
            // 4 d0 - 5 d2 + d4
            _mm512_fnmadd_ps(five, d[2], _mm512_fmadd_ps(four, d[0], d[4])),
            // -4 d1 - 4 d2 + d3 + d4
            _mm512_fnmadd_ps(four, s12, s34),
            // 4 d1 - 4 d2 - d3 + d4
            _mm512_fmadd_ps(four, d12, d43),
            // -2 d1 - d2 + 2 d3 + d4
            _mm512_fmadd_ps(two, d31, d42),
            // 2 d1 - d2 - 2 d3 + d4
            _mm512_fnmadd_ps(two, d31, d42),
            // 4 d1 - 5 d3 + d5
            _mm512_fnmadd_ps(five, d[3], _mm512_fmadd_ps(four, d[1], d[5])),
        ]
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn output(m: [__m512; 6]) -> [__m512; 4] {
        let (two, four, eight) = (
            _mm512_set1_ps(2.0),
            _mm512_set1_ps(4.0),
            _mm512_set1_ps(8.0),
        );
        let s12 = _mm512_add_ps(m[1], m[2]);
        let d12 = _mm512_sub_ps(m[1], m[2]);
        let s34 = _mm512_add_ps(m[3], m[4]);
        let d34 = _mm512_sub_ps(m[3], m[4]);
        [
            _mm512_add_ps(_mm512_add_ps(m[0], s12), s34),
            _mm512_fmadd_ps(two, d34, d12),
            _mm512_fmadd_ps(four, s34, s12),
            _mm512_add_ps(_mm512_fmadd_ps(eight, d34, d12), m[5]),
        ]
    }
}

/// Lanes `0..n` of a 16-lane vector, `n` at most 16.
#[inline]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// [`super::input_transform`] for variant `T` (`A = m + 2`).
///
/// # Safety
/// As [`super::input_transform`], and the CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn input<const A: usize, const M: usize, T: Transform<A, M>>(
    x: &Act,
    g: &Geometry,
    (t0, t1): (usize, usize),
    v: *mut f32,
    (stride, row0): (usize, usize),
) {
    let c = x.c;
    let src = x.data.as_ptr();
    for t in t0..t1 {
        let b = t / (g.th * g.tw);
        let ty = (t / g.tw) % g.th;
        let tx = t % g.tw;
        let row = row0 + t - t0;
        // Offsets of the window's pixels; None where it hangs over the padding.
        let mut at = [[None; A]; A];
        for (r, at_r) in at.iter_mut().enumerate() {
            let iy = (M * ty + r) as isize - g.pad as isize;
            if iy < 0 || iy >= x.h as isize {
                continue;
            }
            for (s, at_rs) in at_r.iter_mut().enumerate() {
                let ix = (M * tx + s) as isize - g.pad as isize;
                if ix >= 0 && ix < x.w as isize {
                    *at_rs = Some(((b * x.h + iy as usize) * x.w + ix as usize) * c);
                }
            }
        }
        for ch in (0..c).step_by(16) {
            let mask = lanes(c - ch);
            let mut d = [[_mm512_setzero_ps(); A]; A];
            for r in 0..A {
                for s in 0..A {
                    if let Some(o) = at[r][s] {
                        d[r][s] = _mm512_maskz_loadu_ps(mask, src.add(o + ch));
                    }
                }
            }
            // Columns: t[.][s] = B^T d[.][s]; then rows: V[i][.] = t[i][.] B.
            let mut tt = [[_mm512_setzero_ps(); A]; A];
            for s in 0..A {
                let col = T::input(std::array::from_fn(|r| d[r][s]));
                for (tt_i, v) in tt.iter_mut().zip(col) {
                    tt_i[s] = v;
                }
            }
            for (i, tt_i) in tt.iter().enumerate() {
                let out = T::input(*tt_i);
                for (j, o) in out.iter().enumerate() {
                    let p = v.add(((i * A + j) * stride + row) * c + ch);
                    _mm512_mask_storeu_ps(p, mask, *o);
                }
            }
        }
    }
}

/// [`super::output_transform`] for variant `T`; `out` is `(dst, ld, col)`.
///
/// # Safety
/// As [`super::output_transform`], and the CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn output<const A: usize, const M: usize, T: Transform<A, M>>(
    mm: &[f32],
    g: &Geometry,
    (t0, t1): (usize, usize),
    (stride, row0): (usize, usize),
    bias: &[f32],
    relu: bool,
    (dst, ld, col): (*mut f32, usize, usize),
) {
    let nc = bias.len();
    assert!(mm.len() >= A * A * stride * nc, "winograd products");
    let src = mm.as_ptr();
    let zero = _mm512_setzero_ps();
    for t in t0..t1 {
        let b = t / (g.th * g.tw);
        let ty = (t / g.tw) % g.th;
        let tx = t % g.tw;
        let row = row0 + t - t0;
        for ch in (0..nc).step_by(16) {
            let mask = lanes(nc - ch);
            let bv = _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(ch));
            let load =
                |xi: usize| _mm512_maskz_loadu_ps(mask, src.add((xi * stride + row) * nc + ch));
            // Columns: am[.][s] = A^T m[.][s]; then rows: Y[i][.] = am[i][.] A.
            let mut am = [[zero; A]; M];
            for s in 0..A {
                let colv = T::output(std::array::from_fn(|k| load(k * A + s)));
                for (am_i, v) in am.iter_mut().zip(colv) {
                    am_i[s] = v;
                }
            }
            for (i, am_i) in am.iter().enumerate() {
                let oy = M * ty + i;
                if oy >= g.oh {
                    continue;
                }
                let y = T::output(*am_i);
                for (j, yj) in y.iter().enumerate() {
                    let ox = M * tx + j;
                    if ox >= g.ow {
                        continue;
                    }
                    let mut val = _mm512_add_ps(*yj, bv);
                    if relu {
                        val = _mm512_max_ps(val, zero);
                    }
                    let p = dst.add(((b * g.oh + oy) * g.ow + ox) * ld + col + ch);
                    _mm512_mask_storeu_ps(p, mask, val);
                }
            }
        }
    }
}
