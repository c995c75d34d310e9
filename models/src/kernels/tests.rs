//! The kernels against plain loops: every path, odd shapes, fused epilogues.

use super::*;

/// Every kernel combination this CPU can run.
static ALGOS: std::sync::LazyLock<Vec<Kernels>> = std::sync::LazyLock::new(|| {
    let mut all = Vec::new();
    for winograd in [false, true] {
        for avx512 in [false, true] {
            let k = Kernels {
                winograd,
                avx512,
                precision: Precision::Fp32,
                amx: false,
            };
            if k.for_this_cpu() == k {
                all.push(k);
            }
        }
    }
    all
});

/// Direct NCHW convolution, the textbook loop, as the oracle.
#[allow(clippy::too_many_arguments)]
fn naive(
    x: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    k: &[f32],
    bias: &[f32],
    cout: usize,
    (kh, kw, s, ph, pw): (usize, usize, usize, usize, usize),
) -> Vec<f32> {
    let oh = (h + 2 * ph - kh) / s + 1;
    let ow = (w + 2 * pw - kw) / s + 1;
    let mut y = vec![0.0f32; n * cout * oh * ow];
    for b in 0..n {
        for o in 0..cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias[o] as f64;
                    for ci in 0..c {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * s + ky) as isize - ph as isize;
                                let ix = (ox * s + kx) as isize - pw as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xv = x[((b * c + ci) * h + iy as usize) * w + ix as usize];
                                let kv = k[((o * c + ci) * kh + ky) * kw + kx];
                                acc += f64::from(xv) * f64::from(kv);
                            }
                        }
                    }
                    y[((b * cout + o) * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
    }
    y
}

fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

#[test]
fn conv_matches_direct_loop_for_every_shape_family() {
    let pool = team::Team::new(2, "test").unwrap();
    // (n, cin, h, w, cout, kh, kw, stride, ph, pw)
    let cases = [
        (2, 8, 9, 7, 24, 1, 1, 1, 0, 0),
        (1, 5, 11, 11, 7, 3, 3, 2, 0, 0),
        (2, 16, 8, 8, 40, 3, 3, 1, 1, 1),
        (1, 3, 15, 15, 8, 7, 7, 2, 3, 3),
        (1, 12, 9, 9, 20, 1, 7, 1, 0, 3),
        (1, 12, 9, 9, 20, 7, 1, 1, 3, 0),
        (3, 8, 10, 10, 33, 1, 1, 2, 0, 0),
        (1, 64, 3, 3, 300, 3, 3, 1, 1, 1),
        (2, 7, 9, 6, 18, 3, 3, 1, 0, 0),
        (1, 40, 13, 11, 64, 3, 3, 1, 1, 1),
        // Few tiles, many channels: Winograd's phased path (see winograd.rs).
        (1, 96, 7, 7, 300, 3, 3, 1, 1, 1),
        (2, 72, 7, 7, 100, 3, 3, 1, 1, 1),
    ];
    for (case, &(n, c, h, w, cout, kh, kw, s, ph, pw)) in cases.iter().enumerate() {
        let x = values(n * c * h * w, 1);
        let k = values(cout * c * kh * kw, 2);
        let bias = values(cout, 3);
        let want = naive(&x, (n, c, h, w), &k, &bias, cout, (kh, kw, s, ph, pw));
        for &algo in ALGOS.iter() {
            let conv = PackedConv::from_oihw(
                &k,
                bias.clone(),
                c,
                cout,
                kh,
                kw,
                s,
                ph,
                pw,
                false,
                algo,
                case % 2 == 1,
            );
            let mut scratch = Scratch::default();
            let xa = nchw_to_nhwc(&x, n, c, h, w, &mut scratch);
            let y = pool.install(|| conv.forward(&xa, &mut scratch));
            let (oh, ow) = conv.out_hw(h, w);
            assert_eq!((y.h, y.w, y.c), (oh, ow, cout));
            for b in 0..n {
                for o in 0..cout {
                    for p in 0..oh * ow {
                        let got = y.data[(b * oh * ow + p) * cout + o];
                        let exp = want[(b * cout + o) * oh * ow + p];
                        assert!(
                            (got - exp).abs() < 1e-4 * (1.0 + exp.abs()),
                            "{got} vs {exp} ({algo:?})"
                        );
                    }
                }
            }
        }
    }
}

/// The low-precision paths on every shape family, against the f64 loop: inputs are
/// non-negative (they follow a ReLU in the networks), the error is bounded by a few
/// quantization steps of the largest output, with and without residual, ReLU and a column
/// offset. A precision this CPU has no path for is reported, not silently passed.
#[test]
fn low_precision_convs_stay_within_quantization_error() {
    let pool = team::Team::new(2, "test").unwrap();
    // (n, cin, h, w, cout, kh, kw, stride, ph, pw)
    let cases = [
        (2, 8, 9, 7, 24, 1, 1, 1, 0, 0),
        (1, 5, 11, 11, 7, 3, 3, 2, 0, 0),
        (2, 16, 8, 8, 40, 3, 3, 1, 1, 1),
        (1, 12, 9, 9, 20, 1, 7, 1, 0, 3),
        (1, 12, 9, 9, 20, 7, 1, 1, 3, 0),
        (3, 8, 10, 10, 33, 1, 1, 2, 0, 0),
        (1, 64, 3, 3, 300, 3, 3, 1, 1, 1),
        (1, 96, 7, 7, 300, 3, 3, 1, 1, 1),
        (2, 288, 5, 5, 70, 1, 1, 1, 0, 0),
    ];
    for (precision, amx) in [
        (Precision::Int8, false),
        (Precision::Int8, true),
        (Precision::Bf16, false),
        (Precision::Bf16, true),
    ] {
        let algo = match Kernels::at(precision) {
            Ok(k) => Kernels { amx, ..k },
            Err(why) => {
                eprintln!("SKIPPED {precision}: {why}");
                continue;
            }
        };
        if amx && !algo.for_this_cpu().amx {
            eprintln!("SKIPPED {precision} on AMX: this CPU or kernel has no AMX");
            continue;
        }
        // int8: 1/255 of a row's max times 1/127 of a column's max per product; bf16: 8
        // bits of mantissa on both operands.
        let bound = match precision {
            Precision::Int8 => 0.03,
            _ => 0.01,
        };
        for (case, &(n, c, h, w, cout, kh, kw, s, ph, pw)) in cases.iter().enumerate() {
            let x: Vec<f32> = values(n * c * h * w, 1)
                .iter()
                .map(|v| v.max(0.0))
                .collect();
            let k = values(cout * c * kh * kw, 2);
            let bias = values(cout, 3);
            let want = naive(&x, (n, c, h, w), &k, &bias, cout, (kh, kw, s, ph, pw));
            let relu = case % 2 == 0;
            let conv = PackedConv::from_oihw(
                &k,
                bias.clone(),
                c,
                cout,
                kh,
                kw,
                s,
                ph,
                pw,
                relu,
                algo,
                case % 3 == 1,
            );
            let mut scratch = Scratch::default();
            let xa = nchw_to_nhwc(&x, n, c, h, w, &mut scratch);
            let (oh, ow) = conv.out_hw(h, w);
            let res = values(n * oh * ow * cout, 4);
            let ld = cout + 3;
            let mut out = vec![f32::NAN; n * oh * ow * ld];
            pool.install(|| {
                conv.run(
                    &xa,
                    OutSlice {
                        data: &mut out,
                        ld,
                        col0: 2,
                    },
                    Some(&res),
                )
            });
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())) + 1.0;
            for b in 0..n {
                for p in 0..oh * ow {
                    let row = (b * oh * ow + p) * ld;
                    assert!(
                        out[row].is_nan() && out[row + 1].is_nan() && out[row + ld - 1].is_nan()
                    );
                    for o in 0..cout {
                        let got = out[row + 2 + o];
                        let mut exp =
                            want[(b * cout + o) * oh * ow + p] + res[(b * oh * ow + p) * cout + o];
                        if relu {
                            exp = exp.max(0.0);
                        }
                        assert!(
                            (got - exp).abs() <= bound * scale,
                            "{precision} case {case}: {got} vs {exp} (scale {scale})"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn residual_relu_and_column_offsets_are_applied() {
    let (n, c, h, w, cout) = (1, 4, 5, 5, 6);
    let x = values(n * c * h * w, 7);
    let k = values(cout * c, 8);
    let bias = values(cout, 9);
    for &algo in ALGOS.iter() {
        let conv =
            PackedConv::from_oihw(&k, bias.clone(), c, cout, 1, 1, 1, 0, 0, true, algo, false);
        let mut scratch = Scratch::default();
        let xa = nchw_to_nhwc(&x, n, c, h, w, &mut scratch);
        let res = values(h * w * cout, 10);
        let ld = cout + 5;
        let mut out = vec![f32::NAN; h * w * ld];
        conv.run(
            &xa,
            OutSlice {
                data: &mut out,
                ld,
                col0: 2,
            },
            Some(&res),
        );
        let plain = naive(&x, (n, c, h, w), &k, &bias, cout, (1, 1, 1, 0, 0));
        for p in 0..h * w {
            assert!(out[p * ld].is_nan() && out[p * ld + 1].is_nan() && out[p * ld + 8].is_nan());
            for o in 0..cout {
                let exp = (plain[o * h * w + p] + res[p * cout + o]).max(0.0);
                assert!((out[p * ld + 2 + o] - exp).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn conv_after_avg_pool_equals_pool_then_conv() {
    let (n, c, h, w, cout) = (2, 40, 7, 6, 37);
    let x = values(n * c * h * w, 11);
    let k = values(cout * c, 12);
    let bias = values(cout, 13);
    for &algo in ALGOS.iter() {
        let conv =
            PackedConv::from_oihw(&k, bias.clone(), c, cout, 1, 1, 1, 0, 0, true, algo, false);
        let mut scratch = Scratch::default();
        let xa = nchw_to_nhwc(&x, n, c, h, w, &mut scratch);
        let mut pooled = scratch.act(n, h, w, c);
        avg_pool_3s1p1(
            &xa,
            OutSlice {
                data: &mut pooled.data,
                ld: c,
                col0: 0,
            },
            None,
        );
        let want = conv.forward(&pooled, &mut scratch);
        let ld = cout + 3;
        let mut got = vec![f32::NAN; n * h * w * ld];
        conv.after_avg_pool(
            &xa,
            OutSlice {
                data: &mut got,
                ld,
                col0: 1,
            },
            &mut scratch,
        );
        for p in 0..n * h * w {
            assert!(got[p * ld].is_nan() && got[p * ld + cout + 1].is_nan());
            for o in 0..cout {
                let (g, e) = (got[p * ld + 1 + o], want.data[p * cout + o]);
                assert!(
                    (g - e).abs() < 1e-5 * (1.0 + e.abs()),
                    "{g} vs {e} ({algo:?}) at pixel {p}, channel {o}"
                );
            }
        }
    }
}

#[test]
fn regrouping_keeps_every_image_in_order() {
    let mut s = Scratch::default();
    let (h, w, c) = (2, 3, 5);
    let image = h * w * c;
    let batch = Act {
        data: values(7 * image, 11),
        n: 7,
        h,
        w,
        c,
    };
    let want = batch.values().to_vec();
    let mut groups = vec![batch];
    for size in [1, 3, 3, 8, 2, 7, 1] {
        groups = regroup(groups, size, &mut s);
        let sizes: Vec<usize> = groups.iter().map(|g| g.n).collect();
        let g = size.min(7);
        let expect: Vec<usize> = (0..7usize.div_ceil(g)).map(|i| g.min(7 - i * g)).collect();
        assert_eq!(sizes, expect, "group sizes for {size}");
        let got: Vec<f32> = groups.iter().flat_map(|g| g.values().to_vec()).collect();
        assert_eq!(got, want, "images after regrouping by {size}");
    }
}

#[test]
fn grouped_steps_see_the_right_group_sizes_in_depth_first_order() {
    let mut s = Scratch::default();
    let x = Act {
        data: values(5 * 4, 3),
        n: 5,
        h: 1,
        w: 1,
        c: 4,
    };
    let want: Vec<f32> = x.values().iter().map(|v| v + 3.0).collect();
    let log = std::sync::Mutex::new(Vec::new());
    // Steps 0-1 one image at a time, step 2 on groups of 4.
    let y = run_grouped(
        x,
        3,
        |i| if i < 2 { 1 } else { 4 },
        |i, mut g, _| {
            log.lock().unwrap().push((i, g.n));
            let len = g.len();
            g.data[..len].iter_mut().for_each(|v| *v += 1.0);
            g
        },
        &mut s,
    );
    assert_eq!(y.n, 5);
    assert_eq!(y.values(), &want[..]);
    let mut expect: Vec<(usize, usize)> = (0..5).flat_map(|_| [(0, 1), (1, 1)]).collect();
    expect.extend([(2, 4), (2, 1)]);
    assert_eq!(*log.lock().unwrap(), expect);
}

#[test]
fn pools_match_their_definitions() {
    let (n, c, h, w) = (2, 3, 7, 6);
    let x = values(n * c * h * w, 11);
    let mut scratch = Scratch::default();
    let xa = nchw_to_nhwc(&x, n, c, h, w, &mut scratch);
    let at = |b: usize, ch: usize, y: isize, xx: isize| -> Option<f32> {
        (y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w)
            .then(|| x[((b * c + ch) * h + y as usize) * w + xx as usize])
    };
    for pad in [0usize, 1] {
        let oh = (h + 2 * pad - 3) / 2 + 1;
        let ow = (w + 2 * pad - 3) / 2 + 1;
        let mut out = vec![0.0; n * oh * ow * c];
        max_pool_3s2(
            &xa,
            pad,
            OutSlice {
                data: &mut out,
                ld: c,
                col0: 0,
            },
        );
        for b in 0..n {
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut m = f32::NEG_INFINITY;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let y = (oy * 2 + ky) as isize - pad as isize;
                                let xx = (ox * 2 + kx) as isize - pad as isize;
                                if let Some(v) = at(b, ch, y, xx) {
                                    m = m.max(v);
                                }
                            }
                        }
                        assert_eq!(out[((b * oh + oy) * ow + ox) * c + ch], m);
                    }
                }
            }
        }
    }
    let mut out = vec![0.0; n * h * w * c];
    avg_pool_3s1p1(
        &xa,
        OutSlice {
            data: &mut out,
            ld: c,
            col0: 0,
        },
        None,
    );
    for b in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let mut s = 0.0;
                    for dy in -1..=1 {
                        for dx in -1..=1 {
                            s += at(b, ch, y as isize + dy, xx as isize + dx).unwrap_or(0.0);
                        }
                    }
                    let got = out[((b * h + y) * w + xx) * c + ch];
                    assert!((got - s / 9.0).abs() < 1e-6);
                }
            }
        }
    }
}

/// Times one 3x3 convolution per path, interleaved (not a test; `--ignored`).
#[test]
#[ignore]
fn winograd_speed() {
    let pool = team::Team::new(2, "test").unwrap();
    for &(n, c, hw) in &[
        (1usize, 64usize, 56usize),
        (1, 128, 28),
        (1, 256, 14),
        (4, 256, 14),
        (4, 64, 56),
    ] {
        let x = values(n * c * hw * hw, 1);
        let k = values(c * c * 9, 2);
        let mut scratch = Scratch::default();
        let xa = nchw_to_nhwc(&x, n, c, hw, hw, &mut scratch);
        let kern = Kernels::best();
        let direct = PackedConv::from_oihw(
            &k,
            vec![0.0; c],
            c,
            c,
            3,
            3,
            1,
            1,
            1,
            true,
            Kernels {
                winograd: false,
                ..kern
            },
            false,
        );
        let mut f2 = direct.clone();
        f2.wino = Some(Winograd::from_oihw(&winograd::F2, &k, c, c, kern.avx512));
        let mut f4 = direct.clone();
        f4.wino = Some(Winograd::from_oihw(&winograd::F4, &k, c, c, kern.avx512));
        let mut t = [0.0f64; 3];
        for _ in 0..30 {
            for (i, conv) in [&direct, &f2, &f4].iter().enumerate() {
                let s = std::time::Instant::now();
                let y = pool.install(|| conv.forward(&xa, &mut scratch));
                t[i] += s.elapsed().as_secs_f64();
                scratch.recycle(y);
            }
        }
        let gf = |s: f64| 2.0 * (n * hw * hw * c * c * 9) as f64 * 30.0 / s / 1e9;
        eprintln!(
            "n{n} c{c} {hw}x{hw}: direct {:.0}, F2 {:.0}, F4 {:.0} effective GFLOP/s",
            gf(t[0]),
            gf(t[1]),
            gf(t[2])
        );
    }
}

/// Times single convolutions of ResNet-50 at batch 1 (not a test; `--ignored`).
#[test]
#[ignore]
fn layer_speed() {
    let pool = team::Team::new(2, "test").unwrap();
    let kern = Kernels::best();
    // (cin, hw, cout, k, stride, pad)
    for &(c, hw, cout, k, st, p) in &[
        (3usize, 224usize, 64usize, 7usize, 2usize, 3usize),
        (256, 14, 1024, 1, 1, 0),
        (1024, 14, 256, 1, 1, 0),
        (64, 56, 256, 1, 1, 0),
        (128, 56, 128, 3, 2, 1),
        (512, 7, 2048, 1, 1, 0),
    ] {
        let x = values(c * hw * hw, 1);
        let w = values(cout * c * k * k, 2);
        let mut scratch = Scratch::default();
        let xa = nchw_to_nhwc(&x, 1, c, hw, hw, &mut scratch);
        let conv = PackedConv::from_oihw(
            &w,
            vec![0.0; cout],
            c,
            cout,
            k,
            k,
            st,
            p,
            p,
            true,
            kern,
            false,
        );
        let y = pool.install(|| conv.forward(&xa, &mut scratch));
        scratch.recycle(y);
        let s = std::time::Instant::now();
        for _ in 0..50 {
            let y = pool.install(|| conv.forward(&xa, &mut scratch));
            scratch.recycle(y);
        }
        let t = s.elapsed().as_secs_f64() / 50.0;
        eprintln!(
            "{k}x{k} s{st} {c}->{cout} @{hw}: {:.3} ms, {:.0} GFLOP/s",
            t * 1e3,
            2.0 * conv.macs(hw, hw) as f64 / t / 1e9
        );
    }
}

#[test]
fn tiling_covers_small_and_large_products() {
    for &(m, n, k) in &[
        (49, 2048, 512),
        (25088, 64, 576),
        (1, 1000, 2048),
        (5, 7, 3),
    ] {
        let (mt, nt) = tiling(m, n, k, 2);
        assert!(mt >= 1 && nt >= 1 && mt <= m.max(1) && nt <= n);
    }
    // Few pixels, many output channels: split the channels, pack the weights once.
    let (mt, nt) = tiling(49, 2048, 512, 2);
    assert_eq!(mt, 49);
    assert!(nt < 2048);
}
