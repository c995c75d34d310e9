//! AMX tiles for the int8 and bf16 precisions: the same packed operands as `qgemm`, with
//! the products done by `tdpbusd` / `tdpbf16ps` on 16x16 accumulator tiles (16,384 int8
//! or 8,192 bf16 multiply-adds per instruction) and the epilogue by `qgemm`'s AVX-512
//! code.
//!
//! Why the layouts fit without repacking: an AMX B tile is 16 rows of 64 bytes, row `r`
//! holding k-group `r` of 16 columns (4 int8 or 2 bf16 per column), which is exactly half
//! of a `qgemm` panel row (`[k-group][32 columns][group]`, 128 bytes): the left and right
//! 16 columns are two tiles 64 bytes apart with a 128-byte stride. An A tile is 16 packed
//! activation rows of 64 bytes, read in place from the row buffer.
//!
//! Stable Rust has no AMX intrinsics, so the instructions are inline `asm!`; the tile
//! registers are not Rust's, so nothing else in the process touches them. Linux hands
//! AMX state to a process only after `arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`, asked
//! once on first use; a kernel that refuses leaves the VNNI / AVX512-BF16 path in place.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::sync::OnceLock;

use crate::packed_gemm::Epilogue;
use crate::qgemm::{Format, PackedLow, NR};

/// Rows of one A tile (and of one accumulator tile).
const TILE_ROWS: usize = 16;

/// True when this CPU has AMX for `format` and the kernel granted this process its state.
pub(crate) fn available(format: Format) -> bool {
    static GRANTED: OnceLock<(bool, bool)> = OnceLock::new();
    let (int8, bf16) = *GRANTED.get_or_init(|| {
        let (int8, bf16) = cpu_has();
        if (int8 || bf16) && request_permission() {
            (int8, bf16)
        } else {
            (false, false)
        }
    });
    match format {
        Format::Int8 => int8 && format.available(),
        Format::Bf16 => bf16 && format.available(),
    }
}

/// (AMX-INT8, AMX-BF16) from CPUID leaf 7 (both also need AMX-TILE), and the OS saving
/// tile state (XCR0 bits 17 and 18).
fn cpu_has() -> (bool, bool) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID leaf 7 exists on every x86_64 CPU this code runs on (it is checked
        // against the maximum leaf first); XGETBV only after CPUID reports OSXSAVE.
        unsafe {
            if __cpuid(0).eax < 7 {
                return (false, false);
            }
            let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
            if !osxsave {
                return (false, false);
            }
            let xcr0 = _xgetbv(0);
            let os_tiles = xcr0 & (0b11 << 17) == 0b11 << 17;
            let edx = __cpuid_count(7, 0).edx;
            let tile = edx & (1 << 24) != 0;
            let bf16 = edx & (1 << 22) != 0;
            let int8 = edx & (1 << 25) != 0;
            (os_tiles && tile && int8, os_tiles && tile && bf16)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        (false, false)
    }
}

/// Asks Linux for permission to use AMX tile data in this process.
fn request_permission() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these arguments only changes this process's permission.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        if rc != 0 {
            tracing::warn!(
                "the kernel refused AMX (arch_prctl: {}); using AVX-512 instead",
                std::io::Error::last_os_error()
            );
        }
        rc == 0
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// Rows the A buffer must hold for `rows` rows: whole tiles (the extra rows are computed
/// and never stored).
pub(crate) fn padded_rows(rows: usize) -> usize {
    rows.div_ceil(TILE_ROWS) * TILE_ROWS
}

/// The tile configuration every kernel here uses: palette 1, tiles 0-7 of 16 rows x 64
/// bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn all_full() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            c[48 + t] = TILE_ROWS as u8;
        }
        Self(c)
    }
}

/// [`crate::qgemm::gemm`] on AMX tiles: same arguments, and `a` must be readable for
/// [`padded_rows`]`(rows)` rows.
///
/// # Safety
/// As [`crate::qgemm::gemm`], plus the row padding above, and [`available`] for the
/// format.
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
    gemm_amx(rows, a, lda, a_scale, b, (p0, p1), c, ldc, ep);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, a, lda, a_scale, b, p0, p1, c, ldc, ep);
        unreachable!("amx::available() is false off x86_64");
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_amx(
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
    use std::arch::asm;
    // Configured per call and released at its end: a thread holding tile state makes the
    // kernel save 8 KiB more at every context switch and keeps the core from its deeper
    // idle states (Intel's guidance); a configuration costs far less than one call.
    let cfg = TileConfig::all_full();
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    // 64 bytes of k per step: 64 int8 or 32 bf16 values.
    let steps = b.row_bytes() / 64;
    let bf16 = b.format == Format::Bf16;
    // The accumulator tiles of one block, 32 rows x 32 columns of i32 or f32.
    let mut acc = Acc([[0i32; NR]; 2 * TILE_ROWS]);
    let acc_ptr = acc.0.as_mut_ptr() as *mut u8;
    for p in p0..p1 {
        let col0 = p * NR;
        let cols = (b.n - col0).min(NR);
        let panel = b.panel(p);
        let mut r = 0;
        while r < rows {
            let two = rows - r > TILE_ROWS;
            let a_blk = a.add(r * lda);
            block(steps, a_blk, lda, panel, acc_ptr, two, bf16);
            let valid = (rows - r).min(if two { 2 * TILE_ROWS } else { TILE_ROWS });
            for i in 0..valid {
                let row = acc.0[i].as_ptr();
                let (lo, hi) = if bf16 {
                    (
                        _mm512_loadu_ps(row as *const f32),
                        _mm512_loadu_ps(row.add(16) as *const f32),
                    )
                } else {
                    (
                        _mm512_cvtepi32_ps(_mm512_loadu_si512(row as *const __m512i)),
                        _mm512_cvtepi32_ps(_mm512_loadu_si512(row.add(16) as *const __m512i)),
                    )
                };
                let ri = r + i;
                let f = crate::qgemm::Finish {
                    bias: ep.bias.as_ptr().add(col0),
                    w_scale: b.scales(p),
                    a_scale: a_scale.add(ri),
                    residual: ep
                        .residual
                        .map(|(ptr, ld)| (ptr.add(ri * ld + (p - p0) * NR), ld)),
                    relu: ep.relu,
                };
                crate::qgemm::finish_rows::<1>(
                    &[[lo, hi]],
                    (c.add(ri * ldc + (p - p0) * NR), ldc, cols),
                    &f,
                );
            }
            r += valid;
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// 32 rows x 32 columns of i32 (or f32), 128 bytes per row, as the tile stores write them.
#[repr(C, align(64))]
struct Acc([[i32; NR]; 2 * TILE_ROWS]);

/// One block: 16 or (`two`) 32 rows of A against one 32-column panel over all k, into
/// accumulator tiles 0-3, stored to `acc` (rows 128 bytes apart). Tiles 4-5 hold A, 6-7
/// the panel's left and right 16 columns.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn block(
    steps: usize,
    a: *const u8,
    lda: usize,
    panel: *const u8,
    acc: *mut u8,
    two: bool,
    bf16: bool,
) {
    use std::arch::asm;
    const B_ROW: usize = NR * 4;
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
    for s in 0..steps {
        let ap = a.add(s * 64);
        // One step covers 16 k-group rows of the panel.
        let bp = panel.add(s * TILE_ROWS * B_ROW);
        asm!(
            "tileloadd tmm4, [{a} + {lda}*1]",
            "tileloadd tmm6, [{b} + {bs}*1]",
            "tileloadd tmm7, [{b2} + {bs}*1]",
            a = in(reg) ap,
            lda = in(reg) lda,
            b = in(reg) bp,
            b2 = in(reg) bp.add(64),
            bs = in(reg) B_ROW,
            options(nostack, readonly)
        );
        if two {
            asm!(
                "tileloadd tmm5, [{a} + {lda}*1]",
                a = in(reg) ap.add(TILE_ROWS * lda),
                lda = in(reg) lda,
                options(nostack, readonly)
            );
        }
        match (bf16, two) {
            (false, true) => asm!(
                "tdpbusd tmm0, tmm4, tmm6",
                "tdpbusd tmm1, tmm4, tmm7",
                "tdpbusd tmm2, tmm5, tmm6",
                "tdpbusd tmm3, tmm5, tmm7",
                options(nostack, nomem)
            ),
            (false, false) => asm!(
                "tdpbusd tmm0, tmm4, tmm6",
                "tdpbusd tmm1, tmm4, tmm7",
                options(nostack, nomem)
            ),
            (true, true) => asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                options(nostack, nomem)
            ),
            (true, false) => asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                options(nostack, nomem)
            ),
        }
    }
    const C_ROW: usize = NR * 4;
    asm!(
        "tilestored [{c} + {cs}*1], tmm0",
        "tilestored [{c2} + {cs}*1], tmm1",
        c = in(reg) acc,
        c2 = in(reg) acc.add(64),
        cs = in(reg) C_ROW,
        options(nostack)
    );
    if two {
        asm!(
            "tilestored [{c} + {cs}*1], tmm2",
            "tilestored [{c2} + {cs}*1], tmm3",
            c = in(reg) acc.add(TILE_ROWS * C_ROW),
            c2 = in(reg) acc.add(TILE_ROWS * C_ROW + 64),
            cs = in(reg) C_ROW,
            options(nostack)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Peak of the tile multiply on data in L1 (not a test; `--ignored`).
    #[test]
    #[ignore]
    fn tile_peak() {
        if !available(Format::Int8) {
            return;
        }
        let a = vec![1u8; 32 * 64 * 16];
        let b = vec![1u8; 16 * 128 * 16];
        let mut acc = Acc([[0i32; NR]; 2 * TILE_ROWS]);
        unsafe {
            let cfg = TileConfig::all_full();
            std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
            for steps in [1usize, 4, 16] {
                let reps = 400_000 / steps;
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    block(
                        steps,
                        a.as_ptr(),
                        64 * 16,
                        b.as_ptr(),
                        acc.0.as_mut_ptr() as *mut u8,
                        true,
                        false,
                    );
                }
                let s = t.elapsed().as_secs_f64();
                let macs = (reps * steps) as f64 * 32.0 * 32.0 * 64.0;
                eprintln!("block of {steps} steps: {:.0} GMAC/s", macs / s / 1e9);
            }
        }
    }
}
