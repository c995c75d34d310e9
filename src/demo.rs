//! `dml demo`: the product's main job in one command, offline, on this machine. Starts
//! the local cluster of the config, loads a sample image set into SDFS (the shipped
//! photographs plus generated images), runs a ResNet50 job and an InceptionV3 job at
//! the same time while printing C1, C2 and C5, prints the results, and stops the cluster.

use dml_actors::jobs::types::QueryResult;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use dml_actors::config::Config;
use dml_actors::control::{Command, Reply, Request};
use dml_models::Network;

use crate::ctl;
use crate::up;

/// Options of `dml demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Images per job (the shipped photographs plus generated ones).
    #[arg(long, default_value_t = 100)]
    pub images: usize,
    /// Folder of photographs to include.
    #[arg(long, default_value = "samples/images")]
    pub samples: PathBuf,
    /// Seconds between status prints.
    #[arg(long, default_value_t = 5.0)]
    pub every: f64,
}

fn ask(config: &Config, node: &str, cmd: impl Into<Request>) -> anyhow::Result<Reply> {
    ctl::call(config, node, cmd, Duration::from_secs(600))?.map_err(|e| anyhow!(e))
}

/// Writes the sample set: every photograph in `samples`, then generated images (smooth
/// colour fields with shapes, deterministic) up to `n`.
fn sample_set(samples: &Path, dir: &Path, n: usize) -> anyhow::Result<usize> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut count = 0;
    if let Ok(entries) = fs::read_dir(samples) {
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let ext = f
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            if ["png", "jpg", "jpeg"].contains(&ext.as_str()) && count < n {
                if let Some(name) = f.file_name() {
                    fs::copy(&f, dir.join(name))?;
                    count += 1;
                }
            }
        }
    }
    let mut i = 0u32;
    while count < n {
        let img = dml_bench::images::generated_image(i, 160 + (i * 37) % 200, 120 + (i * 53) % 180);
        let path = dir.join(format!("generated-{i:04}.png"));
        img.save(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        count += 1;
        i += 1;
    }
    Ok(count)
}

pub fn run(
    config_path: &Path,
    overrides: &[String],
    config: &Config,
    args: &Args,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut overrides = overrides.to_vec();
    let missing: Vec<&str> = Network::ALL
        .iter()
        .filter(|n| dml_models::weights::find_weight_file(**n, &config.weights_dir).is_err())
        .map(|n| n.name())
        .collect();
    if missing.is_empty() {
        println!(
            "demo: using the weights in {}",
            config.weights_dir.display()
        );
    } else {
        // Written once, so that ten nodes load a file instead of each generating them.
        let dir = std::path::absolute(config.data_dir.join("synthetic-weights"))?;
        println!(
            "demo: no weights for {} in {} -> SYNTHETIC weights (seed 0) in {}: the pipeline is real, \
             the labels are meaningless (`dml weights fetch` gets torchvision's weights where there is internet)",
            missing.join(", "),
            config.weights_dir.display(),
            dir.display()
        );
        dml_models::cli::weights_synth(&dir, 0)?;
        overrides.push(format!("inference.weights_dir={}", dir.display()));
    }
    // Every node of the local cluster shares this machine's cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / config.nodes.len()).max(1);
    overrides.push(format!("inference.threads={threads}"));
    let overrides = &overrides[..];
    println!(
        "demo: starting the local cluster ({} nodes + introducer; logs in {})",
        config.nodes.len(),
        config.log_dir.display()
    );
    // The demo shows the cluster at work on a fresh clone: synthetic weights for a model
    // nothing was published for (its results say so).
    let cluster = up::start(config_path, overrides, config, true)?;
    let n = up::wait_formed(&cluster, Duration::from_secs(120))?;
    println!(
        "demo: cluster formed: {n} nodes alive ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let node = config.nodes[0].addr.to_string();

    let images_dir = config.data_dir.join("demo-images");
    let count = sample_set(&args.samples, &images_dir, args.images)?;
    let t = Instant::now();
    let put = ask(
        config,
        &node,
        Request::Put {
            local: images_dir.display().to_string(),
            name: "inputs/demo".into(),
        },
    )?;
    println!(
        "demo: {count} images stored in SDFS under inputs/demo in {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        put.text.lines().next().unwrap_or("")
    );

    let mut jobs = Vec::new();
    for model in ["resnet50", "inception_v3"] {
        let r = ask(
            config,
            &node,
            Command::C4 {
                model: model.into(),
                input: "inputs/demo".into(),
            },
        )?;
        let v: serde_json::Value = serde_json::from_str(&r.json)?;
        let job = v["job"]
            .as_str()
            .ok_or_else(|| anyhow!("no job id in {}", r.json))?
            .to_string();
        println!("demo: {}", r.text);
        jobs.push(job);
    }

    let every = Duration::from_secs_f64(args.every.clamp(0.5, 60.0));
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        std::thread::sleep(every);
        let c1 = ask(config, &node, Command::C1);
        let c5 = ask(config, &node, Command::C5);
        println!("\n--- {:.0} s ---", started.elapsed().as_secs_f64());
        match (&c1, &c5) {
            (Ok(c1), Ok(c5)) => println!(
                "C1 (query rates)\n{}\nC5 (assignment)\n{}",
                c1.text, c5.text
            ),
            _ => println!("(coordinator not answering; a takeover may be in progress)"),
        }
        if let Ok(c1) = c1 {
            let rows: serde_json::Value = serde_json::from_str(&c1.json).unwrap_or_default();
            let done = jobs.iter().all(|j| {
                rows.as_array()
                    .and_then(|a| a.iter().find(|r| r["job"] == j.as_str()))
                    .is_some_and(|r| r["complete"].as_bool().unwrap_or(false))
            });
            if done {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the jobs did not finish within an hour; see {}",
                config.log_dir.display()
            );
        }
    }
    let c2 = ask(config, &node, Command::C2)?;
    println!("\nC2 (query processing time)\n{}", c2.text);
    for job in &jobs {
        let first = Command::C4Results {
            job: job.clone(),
            from: 0,
            limit: 8,
        };
        let r = ask(config, &node, first)?;
        let page: serde_json::Value = serde_json::from_str(&r.json)?;
        let rows: Vec<QueryResult> = serde_json::from_value(page["rows"].clone())?;
        println!(
            "\njob {job}: {} results (first {} below)",
            page["ok"],
            rows.len()
        );
        for row in &rows {
            println!("  {}", dml_actors::control::jobs_text::result_line(row));
        }
        println!(
            "  ... (all results: dml ctl --node {node} C4 --results {job}, or into a file: \
             dml ctl --node {node} results {job} --out results.jsonl)"
        );
    }
    println!(
        "\ndemo: done in {:.1} s; stopping the cluster",
        started.elapsed().as_secs_f64()
    );
    drop(cluster);
    Ok(())
}
