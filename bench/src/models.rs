//! `dml bench models`: forward-pass speed of both networks, and single timed passes served
//! to an outside harness; thin shells over dml-models (this file only times and prints).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use dml_models::{weights, Classifier, Kernels, Network, Weights};

/// Peak resident set size of this process (Linux `VmHWM`), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Loads both networks, prints `ready`, then answers each stdin line `<network> <batch>`
/// with the seconds of one forward pass on a fixed batch, so that a harness can alternate
/// our passes with another runtime's pass by pass (this host's speed drifts by 15-20%
/// between minutes, more than the differences being measured).
pub fn serve_passes(weights_dir: &Path, threads: usize) -> anyhow::Result<()> {
    use std::io::BufRead;
    let mut classifiers = Vec::new();
    for net in Network::ALL {
        let w = weights::find_weight_file(net, weights_dir)
            .and_then(|p| Weights::load(net, &p))
            .or_else(|_| Weights::synthetic(net, 0))?;
        classifiers.push(Classifier::new(&w, threads)?);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        let (Some(name), Some(n), None) = (words.next(), words.next(), words.next()) else {
            anyhow::bail!("expected `<network> <batch>`, got `{line}`");
        };
        let net = Network::parse(name)?;
        let n: usize = n
            .parse()
            .map_err(|_| anyhow::anyhow!("batch `{n}` is not a positive integer"))?;
        let Some(c) = classifiers.iter().find(|c| c.network() == net) else {
            anyhow::bail!("{net} is not loaded");
        };
        let x = c.dummy_batch(n.max(1))?; // a few ms, outside the timing
        let t = Instant::now();
        c.logits(&x)?;
        writeln!(out, "{:.6}", t.elapsed().as_secs_f64())?;
        out.flush()?;
    }
    Ok(())
}

/// Images per second for both networks at each batch size, GFLOP/s against the measured
/// fp32 peak, and peak RSS. Loads both networks first, so the RSS is that of a node serving
/// both. With `all_kernels`, every kernel combination this CPU has is measured too, so
/// each optimisation step shows on its own line.
pub fn bench_models(
    weights_dir: &Path,
    threads: usize,
    batches: &[usize],
    all_kernels: bool,
) -> anyhow::Result<()> {
    let batches: Vec<usize> = if batches.is_empty() {
        vec![1, 8]
    } else {
        batches.to_vec()
    };
    let peak = dml_models::fp32_peak_gflops(threads);
    let mut sets = vec![("best", Kernels::best())];
    if all_kernels {
        for (name, k) in [
            ("portable direct", (false, false)),
            ("portable + winograd", (true, false)),
            ("avx512 direct", (false, true)),
        ] {
            let k = Kernels {
                winograd: k.0,
                avx512: k.1,
            };
            if k.for_this_cpu() == k {
                sets.push((name, k));
            }
        }
    }
    let mut weights = Vec::new();
    for net in Network::ALL {
        let w = match weights::find_weight_file(net, weights_dir)
            .and_then(|p| Weights::load(net, &p))
        {
            Ok(w) => w,
            Err(e) => {
                eprintln!("{net}: {e}; benchmarking synthetic weights instead (same speed)");
                Weights::synthetic(net, 0)?
            }
        };
        weights.push(w);
    }
    println!(
        "threads {threads}; fp32 peak {} (measured: register-only FMA loop on every thread)",
        peak.map_or_else(
            || "unknown (no AVX-512)".into(),
            |p| format!("{p:.0} GFLOP/s")
        )
    );
    for (set_name, kernels) in sets {
        let classifiers = weights
            .iter()
            .map(|w| Classifier::with_kernels(w, threads, kernels))
            .collect::<Result<Vec<_>, _>>()?;
        if set_name == "best" {
            println!(
                "kernels {kernels:?}; both networks loaded, peak RSS {}",
                fmt_mib(peak_rss_bytes())
            );
        } else {
            println!("kernels {set_name} {kernels:?}");
        }
        for c in &classifiers {
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
                let of_peak = peak.map_or_else(String::new, |p| {
                    format!(" ({:.0}% of fp32 peak)", 100.0 * gflops / p)
                });
                println!(
                    "{} batch {n}: {ips:.1} img/s, {gflops:.0} GFLOP/s{of_peak}",
                    net.name()
                );
            }
        }
    }
    println!("peak RSS {}", fmt_mib(peak_rss_bytes()));
    Ok(())
}

fn fmt_mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "unknown".to_string(),
        |b| format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0)),
    )
}
