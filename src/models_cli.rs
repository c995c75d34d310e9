//! `dml weights synth|fetch`, `dml classify` and `dml bench models`: thin command-line shells
//! over dml-models (all decisions live there; this file only reads files and prints).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use dml_models::{weights, Classifier, Kernels, Network, Prediction, Weights};

/// Writes deterministic synthetic weights for both networks into `dir`. Refuses to replace
/// real weights, which would silently turn every prediction into noise.
pub fn weights_synth(dir: &Path, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for net in Network::ALL {
        let path = dir.join(net.file_name());
        if path.exists() {
            match Weights::load(net, &path) {
                Ok(w) if w.synthetic_seed().is_none() => anyhow::bail!(
                    "{} holds real weights; move it away first if you really want synthetic ones",
                    path.display()
                ),
                _ => {}
            }
        }
        let w = Weights::synthetic(net, seed)?;
        w.save_safetensors(&path)?;
        let sha = weights::sha256_file(&path)?;
        println!(
            "{net}: wrote SYNTHETIC weights (seed {seed}) to {} (sha256 {sha})",
            path.display()
        );
    }
    println!("note: synthetic weights make every part of dml run, but their labels mean nothing");
    Ok(())
}

/// Downloads torchvision's ImageNet weights for both networks from the Hugging Face Hub.
pub fn weights_fetch(dir: &Path) -> anyhow::Result<()> {
    for net in Network::ALL {
        let (path, sha) = weights::fetch(net, dir, None)?;
        println!("{net}: {} (sha256 {sha})", path.display());
    }
    Ok(())
}

/// Image files in `dir`, sorted by name; hidden files and directories are skipped.
fn image_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    files.sort();
    Ok(files)
}

const SYNTHETIC_NOTE: &str = "!!! SYNTHETIC WEIGHTS: these labels are meaningless (run `dml weights fetch` for real ones) !!!";

/// Classifies every file in `dir` with `model` and prints its top-5 (or a one-line error).
pub fn classify(
    model: &str,
    weights_dir: &Path,
    dir: &Path,
    threads: usize,
    json: bool,
) -> anyhow::Result<()> {
    let net = Network::parse(model)?;
    let classifier = Classifier::load(net, weights_dir, threads)?;
    let files = image_files(dir)?;
    if classifier.is_synthetic() {
        eprintln!("{SYNTHETIC_NOTE}");
        if !json {
            println!("{SYNTHETIC_NOTE}");
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // Batches of 8 keep memory bounded for large directories.
    for chunk in files.chunks(8) {
        let mut bytes = Vec::with_capacity(chunk.len());
        let mut read_errors = Vec::with_capacity(chunk.len());
        for f in chunk {
            match std::fs::read(f) {
                Ok(b) => {
                    bytes.push(b);
                    read_errors.push(None);
                }
                Err(e) => {
                    bytes.push(Vec::new());
                    read_errors.push(Some(e.to_string()));
                }
            }
        }
        let batch = classifier.classify_batch(&bytes);
        for ((file, result), read_err) in chunk.iter().zip(batch.results).zip(read_errors) {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let result = match read_err {
                Some(e) => Err(e),
                None => result.map_err(|e| e.to_string()),
            };
            print_result(&mut out, &name, net, &result, json)?;
        }
    }
    Ok(())
}

fn print_result(
    out: &mut impl Write,
    name: &str,
    net: Network,
    result: &Result<Prediction, String>,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let v = match result {
            Ok(p) => serde_json::json!({
                "file": name, "model": net.name(), "synthetic": p.synthetic, "top5": p.top5,
            }),
            Err(e) => serde_json::json!({ "file": name, "model": net.name(), "error": e }),
        };
        writeln!(out, "{v}")?;
        return Ok(());
    }
    match result {
        Ok(p) => {
            let tag = if p.synthetic {
                " [synthetic weights]"
            } else {
                ""
            };
            writeln!(out, "{name}{tag}")?;
            for (rank, c) in p.top5.iter().enumerate() {
                writeln!(
                    out,
                    "  {}. {:>6.2}%  {} ({})",
                    rank + 1,
                    c.prob * 100.0,
                    c.label,
                    c.index
                )?;
            }
        }
        Err(e) => writeln!(out, "{name}: error: {e}")?,
    }
    Ok(())
}

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
