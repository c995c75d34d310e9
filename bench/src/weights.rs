//! `dml bench weights` (issue 18): how long a published weight file of about 100 MB takes
//! to reach every node of a local cluster (publish, then each node fetches, verifies and
//! loads it), and what a version switch costs a running job (its throughput before,
//! during and after a new version is published and loaded everywhere).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dml_actors::clock::wall_ms;
use dml_cluster::weights::{publish, Target};
use dml_cluster::{Options, Stop};
use dml_models::{Network, Weights};

use crate::images::write_images;
use crate::session::{cpu_model, submit, write_config, Run};

/// Options of `dml bench weights`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Nodes of the local cluster.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Images of the job that runs through the version switch.
    #[arg(long, default_value_t = 600)]
    pub images: usize,
    /// Its batch size.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
}

/// The wall time at which every node had loaded the weights with `sha`, and each node's
/// fetch time (ms), from the nodes' logs.
fn loaded_everywhere(run: &Run, sha: &str) -> Option<(u64, Vec<u64>)> {
    let mut last = 0;
    let mut fetch = Vec::new();
    for (_, events) in run.events(false) {
        let loaded = events
            .iter()
            .find(|e| e.kind == "weights_loaded" && e.get("sha256") == Some(sha))?;
        last = last.max(loaded.wall);
        if let Some(f) = events
            .iter()
            .find(|e| e.kind == "weights_fetched" && e.get("sha256") == Some(sha))
        {
            fetch.push(f.get("ms").and_then(|m| m.parse().ok()).unwrap_or(0));
        }
    }
    Some((last, fetch))
}

fn wait_loaded(run: &Run, sha: &str, within: Duration) -> anyhow::Result<(u64, Vec<u64>)> {
    let start = Instant::now();
    loop {
        if let Some(r) = loaded_everywhere(run, sha) {
            return Ok(r);
        }
        if start.elapsed() > within {
            bail!("weights {sha} not loaded on every node within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Results per second of `walls` in `[from, to)`.
fn rate(walls: &[u64], from: u64, to: u64) -> f64 {
    let n = walls.iter().filter(|w| **w >= from && **w < to).count();
    n as f64 * 1000.0 / (to.saturating_sub(from).max(1)) as f64
}

/// Runs the benchmark and prints its figures.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the dml executable")?;
    let dir: PathBuf =
        std::env::temp_dir().join(format!("dml-bench-weights-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // Beside the cluster's directory, which writing its config replaces.
    let files =
        std::env::temp_dir().join(format!("dml-bench-weights-files-{}", std::process::id()));
    std::fs::create_dir_all(&files)?;
    let outcome = measure(args, &exe, &dir, &files);
    let _ = std::fs::remove_dir_all(&files);
    outcome
}

fn measure(args: &Args, exe: &Path, dir: &Path, files: &Path) -> anyhow::Result<()> {
    let mut versions = Vec::new();
    for seed in [1, 2] {
        let path = files.join(format!("resnet50-v{seed}.safetensors"));
        Weights::synthetic(Network::ResNet50, seed)?.save_safetensors(&path)?;
        versions.push(path);
    }
    let images = files.join("images");
    write_images(&images, args.images)?;
    let layout = write_config(dir, args.nodes, &dir.join("no-weights"))?;
    let opts = Options {
        env: vec![("RUST_LOG".into(), "info".into())],
        stop: Stop::Kill,
        own_dir: Some(dir.to_path_buf()),
        // The point is the published weights: nothing synthetic.
        synthetic_weights: false,
        ..Options::default()
    };
    let run = Run::start_bin(exe, layout, opts)?;
    let prepared = run.prepare(&["resnet50"], args.batch, &images)?;
    let target = Target {
        addr: run.console.clone(),
        cred: run.layout().credential.clone(),
        connect: Duration::from_secs(5),
        reply: Duration::from_secs(600),
    };
    println!(
        "dml bench weights: {} nodes on one machine ({}, {} CPUs), 1 inference thread each",
        args.nodes,
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "  {} images stored in {:.1} s",
        args.images,
        prepared.as_secs_f64()
    );

    // Roll-out of v1.
    let bytes = std::fs::metadata(&versions[0])?.len();
    let t0 = wall_ms();
    let started = Instant::now();
    let v1 = publish(&target, "resnet50", &versions[0])?;
    let publish_s = started.elapsed().as_secs_f64();
    let (all, fetch) = wait_loaded(&run, &v1.sha256, Duration::from_secs(600))?;
    let mut fetch = fetch;
    fetch.sort_unstable();
    println!(
        "  roll-out of {:.1} MB: publish {publish_s:.1} s; loaded on all {} nodes {:.1} s after the \
         publish began; per-node fetch+verify median {} ms, max {} ms",
        bytes as f64 / 1e6,
        args.nodes,
        all.saturating_sub(t0) as f64 / 1000.0,
        fetch.get(fetch.len() / 2).copied().unwrap_or(0),
        fetch.last().copied().unwrap_or(0),
    );

    // A job pinned to v1 runs while v2 is published and loaded everywhere.
    let job = submit(&run, "resnet50")?;
    std::thread::sleep(Duration::from_secs(8));
    let switch0 = wall_ms();
    let v2 = publish(&target, "resnet50", &versions[1])?;
    let (switch1, _) = wait_loaded(&run, &v2.sha256, Duration::from_secs(600))?;
    let console = run.console.clone();
    let deadline = Instant::now() + Duration::from_secs(1800);
    let rows = loop {
        let rows = run
            .cluster
            .job_results(&console, &job, Duration::from_secs(60))?;
        match rows {
            Ok(rows) if rows.len() == args.images => break rows,
            _ if Instant::now() > deadline => bail!("job {job} did not finish"),
            _ => std::thread::sleep(Duration::from_secs(2)),
        }
    };
    if rows.iter().any(|r| r.weights != v1.sha256) {
        bail!("job {job} ran on weights other than its pinned v1");
    }
    let walls: Vec<u64> = rows.iter().map(|r| r.at_wall_ms).collect();
    let end = walls.iter().copied().max().unwrap_or(switch1);
    let first = walls.iter().copied().min().unwrap_or(switch0);
    if end <= switch1 {
        bail!("the job ended before the switch did: use more --images");
    }
    println!(
        "  version switch during a job of {} images (batch {}): {:.1} img/s before, {:.1} img/s \
         while v2 was published and loaded ({:.1} s), {:.1} img/s after",
        args.images,
        args.batch,
        rate(&walls, first, switch0),
        rate(&walls, switch0, switch1),
        switch1.saturating_sub(switch0) as f64 / 1000.0,
        rate(&walls, switch1, end + 1),
    );
    Ok(())
}
