//! `dml bench models`: forward-pass speed of both networks, and single timed passes served
//! to an outside harness; thin shells over dml-models (this file only times and prints).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use dml_models::{weights, Classifier, Kernels, Network, Precision, Weights};

/// Peak resident set size of this process (Linux `VmHWM`), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    status_kb("VmHWM:").map(|kb| kb * 1024)
}

/// Current resident set size of this process (Linux `VmRSS`), in bytes.
fn rss_bytes() -> Option<u64> {
    status_kb("VmRSS:").map(|kb| kb * 1024)
}

fn status_kb(field: &str) -> Option<u64> {
    crate::scale::status_kb("/proc/self/status", field)
}

/// The CPU's model name (`/proc/cpuinfo`), for the report's header.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Both networks' weights from `weights_dir`, synthetic (same speed) where absent.
fn load_weights(weights_dir: &Path, quiet: bool) -> anyhow::Result<Vec<Weights>> {
    let mut out = Vec::new();
    for net in Network::ALL {
        let w = match weights::find_weight_file(net, weights_dir)
            .and_then(|p| Weights::load(net, &p))
        {
            Ok(w) => w,
            Err(e) => {
                if !quiet {
                    eprintln!("{net}: {e}; benchmarking synthetic weights instead (same speed)");
                }
                Weights::synthetic(net, 0)?
            }
        };
        out.push(w);
    }
    Ok(out)
}

/// Loads both networks at every precision in `precisions`, prints `ready`, then answers
/// each stdin line `<network> <batch> [precision]` (fp32 when omitted) with the seconds of
/// one forward pass on a fixed batch, so that a harness can alternate our passes with
/// another runtime's pass by pass (this host's speed drifts by 15-20% between minutes,
/// more than the differences being measured).
pub fn serve_passes(
    weights_dir: &Path,
    threads: usize,
    precisions: &[Precision],
) -> anyhow::Result<()> {
    use std::io::BufRead;
    let mut classifiers = Vec::new();
    for w in load_weights(weights_dir, false)? {
        for &p in precisions {
            let k = Kernels::at(p).map_err(anyhow::Error::msg)?;
            classifiers.push((p, Classifier::with_kernels(&w, threads, k)?));
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let (name, n, p) = match words[..] {
            [name, n] => (name, n, Precision::Fp32),
            [name, n, p] => (name, n, Precision::parse(p).map_err(anyhow::Error::msg)?),
            _ => anyhow::bail!("expected `<network> <batch> [precision]`, got `{line}`"),
        };
        let net = Network::parse(name)?;
        let n: usize = n
            .parse()
            .map_err(|_| anyhow::anyhow!("batch `{n}` is not a positive integer"))?;
        let Some((_, c)) = classifiers
            .iter()
            .find(|(cp, c)| c.network() == net && *cp == p)
        else {
            anyhow::bail!("{net} at {p} is not loaded (see --precision)");
        };
        let x = c.dummy_batch(n.max(1))?; // a few ms, outside the timing
        let t = Instant::now();
        c.logits(&x)?;
        writeln!(out, "{:.6}", t.elapsed().as_secs_f64())?;
        out.flush()?;
    }
    Ok(())
}

/// Images per second for both networks at each batch size and precision, GFLOP/s (fp32:
/// against the measured fp32 peak), and peak RSS with every network and precision loaded
/// at once. With `all_kernels`, the other fp32 kernel combinations this CPU has are
/// measured too, so each optimisation step shows on its own line.
///
/// `precisions` empty means fp32 and every low precision this CPU has a path for; a
/// named precision this CPU cannot run is an error.
pub fn bench_models(
    weights_dir: &Path,
    threads: usize,
    batches: &[usize],
    precisions: &[Precision],
    all_kernels: bool,
) -> anyhow::Result<()> {
    let batches: Vec<usize> = if batches.is_empty() {
        vec![1, 8]
    } else {
        batches.to_vec()
    };
    let precisions: Vec<Precision> = if precisions.is_empty() {
        Precision::ALL
            .into_iter()
            .filter(|p| p.paths().is_ok())
            .collect()
    } else {
        for p in precisions {
            p.paths().map_err(anyhow::Error::msg)?;
        }
        precisions.to_vec()
    };
    let peak = dml_models::fp32_peak_gflops(threads);
    let mut sets: Vec<(String, Kernels)> = Vec::new();
    for &p in &precisions {
        sets.push((
            p.name().to_string(),
            Kernels::at(p).map_err(anyhow::Error::msg)?,
        ));
    }
    if all_kernels {
        for (name, k) in [
            ("fp32 portable direct", (false, false)),
            ("fp32 portable + winograd", (true, false)),
            ("fp32 avx512 direct", (false, true)),
        ] {
            let k = Kernels {
                winograd: k.0,
                avx512: k.1,
                ..Kernels::best()
            };
            if k.for_this_cpu() == k {
                sets.push((name.to_string(), k));
            }
        }
        for p in [Precision::Int8, Precision::Bf16] {
            if let Ok(k) = Kernels::at(p) {
                if k.amx {
                    sets.push((format!("{p} without AMX"), Kernels { amx: false, ..k }));
                }
            }
        }
    }
    let weights = load_weights(weights_dir, false)?;
    println!("cpu {}; threads {threads}", cpu_model());
    for &p in &precisions {
        println!("{p}: {}", p.paths().map_err(anyhow::Error::msg)?);
    }
    println!(
        "fp32 peak {} (measured: register-only FMA loop on every thread, best of 7)",
        peak.map_or_else(
            || "unknown (no AVX-512)".into(),
            |p| format!("{p:.0} GFLOP/s")
        )
    );
    // Every network at every product precision, loaded together; the resident size after
    // each precision's pair shows what a node running only that one adds (the source
    // weights, kept here for the other sets, are dropped by a node after loading).
    let base_rss = rss_bytes();
    println!("resident before loading: {}", fmt_mib(base_rss));
    let mut loaded = Vec::new();
    for (name, kernels) in &sets {
        if !precisions.iter().any(|p| p.name() == name) {
            continue;
        }
        let before = rss_bytes();
        for w in &weights {
            loaded.push((
                name.clone(),
                Classifier::with_kernels(w, threads, *kernels)?,
            ));
        }
        let after = rss_bytes();
        println!(
            "both networks at {name}: +{} resident (now {})",
            fmt_mib(after.zip(before).map(|(a, b)| a.saturating_sub(b))),
            fmt_mib(after)
        );
    }
    println!(
        "all of {} loaded: peak RSS {}",
        precisions
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(" + "),
        fmt_mib(peak_rss_bytes())
    );
    for (set_name, kernels) in &sets {
        let fresh;
        let classifiers: Vec<&Classifier> = if loaded.iter().any(|(n, _)| n == set_name) {
            loaded
                .iter()
                .filter(|(n, _)| n == set_name)
                .map(|(_, c)| c)
                .collect()
        } else {
            fresh = weights
                .iter()
                .map(|w| Classifier::with_kernels(w, threads, *kernels))
                .collect::<Result<Vec<_>, _>>()?;
            fresh.iter().collect()
        };
        for c in classifiers {
            let net = c.network();
            for &n in &batches {
                let x = c.dummy_batch(n.max(1))?;
                c.logits(&x)?; // warm-up: first-touch allocations, packing buffers
                let (mut runs, mut total) = (0u32, Duration::ZERO);
                while runs < 3 || (total < Duration::from_secs(5) && runs < 50) {
                    let t = Instant::now();
                    c.logits(&x)?;
                    total += t.elapsed();
                    runs += 1;
                }
                let per_batch = total.as_secs_f64() / f64::from(runs);
                let ips = n.max(1) as f64 / per_batch;
                let gflops = ips * net.flops_per_image() / 1e9;
                // GFLOP/s count the direct convolution's multiply-adds. Winograd does
                // 2.25-4x fewer on its layers, so with it on the figure is effective and
                // can pass the peak; only a direct run is a fraction of the peak.
                let of_peak = match (kernels.precision, peak) {
                    (Precision::Fp32, Some(p)) if !kernels.winograd => {
                        format!(" ({:.0}% of fp32 peak)", 100.0 * gflops / p)
                    }
                    (Precision::Fp32, Some(_)) => " (effective: Winograd's layers do fewer \
                                                  multiplications)"
                        .to_string(),
                    _ => String::new(),
                };
                println!(
                    "{} batch {n} {set_name}: {ips:.1} img/s, {gflops:.0} GFLOP/s{of_peak}",
                    net.name()
                );
            }
        }
    }
    decode_cost(&weights.iter().map(|w| w.network()).collect::<Vec<_>>());
    println!("peak RSS {}", fmt_mib(peak_rss_bytes()));
    Ok(())
}

/// Decode + resize + normalise per image on one thread, over the sample photographs
/// (`samples/images`, when run from the repository): the part of a job's per-image cost
/// that the forward-pass figures above leave out.
fn decode_cost(networks: &[Network]) {
    let Ok(dir) = std::fs::read_dir("samples/images") else {
        println!("decode + preprocess: samples/images not found (run from the repository)");
        return;
    };
    let photos: Vec<Vec<u8>> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|x| x.to_str()), Some("jpg" | "png")))
        .filter_map(|p| std::fs::read(p).ok())
        .collect();
    if photos.is_empty() {
        return;
    }
    for &net in networks {
        let t = Instant::now();
        let mut n = 0u32;
        while n < 20 || t.elapsed() < Duration::from_secs(2) {
            for b in &photos {
                let _ = dml_models::preprocess::preprocess(b, net);
                n += 1;
            }
        }
        println!(
            "{} decode + preprocess: {:.1} ms/img on one thread ({} sample photos)",
            net.name(),
            t.elapsed().as_secs_f64() * 1000.0 / f64::from(n),
            photos.len()
        );
    }
}

fn fmt_mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "unknown".to_string(),
        |b| format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0)),
    )
}
