//! `dml weights synth|fetch` and `dml classify`: thin command-line shells over this crate
//! (all decisions live in it; this module only reads files and prints).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{weights, Classifier, Network, Precision, Prediction, Weights};
use anyhow::Context;

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

/// What [`classify`] did: how many files it read, and which ones failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub total: usize,
    /// File names whose image could not be read or classified, in order.
    pub failed: Vec<String>,
}

/// Classifies every file in `dir` with `model` and prints its top-5 (or a one-line error)
/// on stdout. `progress(done, failed, total)` is told after each batch (and once before
/// the first).
pub fn classify(
    model: &str,
    weights_dir: &Path,
    dir: &Path,
    threads: usize,
    precision: Precision,
    json: bool,
    progress: &mut dyn FnMut(usize, usize, usize),
) -> anyhow::Result<Classified> {
    let net = Network::parse(model)?;
    let classifier = Classifier::load_at(net, weights_dir, threads, precision)?;
    let files = image_files(dir)?;
    if classifier.is_synthetic() {
        eprintln!("{SYNTHETIC_NOTE}");
        if !json {
            println!("{SYNTHETIC_NOTE}");
        }
    }
    let mut failed = Vec::new();
    let mut done = 0;
    progress(0, 0, files.len());
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
            if result.is_err() {
                failed.push(name);
            }
        }
        out.flush()?;
        done += chunk.len();
        progress(done, failed.len(), files.len());
    }
    Ok(Classified {
        total: files.len(),
        failed,
    })
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
