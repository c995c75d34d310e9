//! `dml bench scale`: jobs of 10k, 100k and 1M queries on a real cluster of node
//! processes whose ModelActors return fixed logits without computing (`dml node
//! --bench-fixed-logits`, which only this benchmark passes), so what is measured is
//! everything around the model: input archives in SDFS, scheduling, result objects,
//! commits replicated to the standby, and the results export. One line per size:
//! scheduling throughput, coordinator memory per query, SDFS objects, export rate and the
//! exporting client's memory. Results are flagged `bench_fixed_logits`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dml_actors::control::Command;
use dml_actors::jobs::archive;
use dml_cluster::Options;

use crate::session::{cpu_model, write_config, Run};

/// Options of `dml bench scale`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Job sizes (queries), one job each, in this order.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub sizes: Vec<usize>,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Queries per batch (C3; at most the cluster's maximum, 256).
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Inputs per tar archive (the job's inputs are archives of tiny files).
    #[arg(long, default_value_t = 20_000)]
    pub per_archive: usize,
    /// Keep the temporary configs, logs, data and exports (their directory is printed).
    #[arg(long)]
    pub keep: bool,
}

/// What one size measured.
#[derive(Debug, Clone, Default)]
pub struct Line {
    pub queries: usize,
    pub archives: usize,
    pub put_s: f64,
    /// Submission to acceptance (the coordinator lists and counts the archives).
    pub accept_s: f64,
    /// Acceptance to completion.
    pub run_s: f64,
    pub coord_base_kb: u64,
    pub coord_peak_kb: u64,
    pub objects: usize,
    pub export_s: f64,
    pub export_rows: u64,
    pub client_peak_kb: u64,
    /// A worker node (not the coordinator) after the job: resident memory and the SDFS
    /// objects it holds.
    pub node_kb: u64,
    pub node_objects: usize,
}

impl Line {
    fn qps(&self) -> f64 {
        self.queries as f64 / self.run_s.max(1e-9)
    }

    fn bytes_per_query(&self) -> f64 {
        (self.coord_peak_kb.saturating_sub(self.coord_base_kb) * 1024) as f64
            / self.queries.max(1) as f64
    }
}

/// Resident memory of a process (kB), from `/proc/<pid>/status`.
pub fn rss_kb(pid: u32) -> Option<u64> {
    status_kb(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// A `kB` field (`VmRSS:`, `VmHWM:`, ...) of a `/proc/.../status` file.
pub fn status_kb(path: &str, field: &str) -> Option<u64> {
    let s = fs::read_to_string(path).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Writes `n` tiny inputs as tar archives of `per` entries into `dir`.
fn write_archives(dir: &Path, n: usize, per: usize) -> anyhow::Result<usize> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    let mut made = 0;
    let mut k = 0;
    while made < n {
        let count = per.min(n - made);
        let files: Vec<(String, Vec<u8>)> = (made..made + count)
            .map(|i| (format!("img{i:08}.jpg"), format!("input {i}").into_bytes()))
            .collect();
        fs::write(dir.join(format!("part-{k:05}.tar")), archive::build(&files))?;
        made += count;
        k += 1;
    }
    Ok(k)
}

fn job_row(run: &Run, job: &str) -> Option<serde_json::Value> {
    let r = run.ask(Command::C1, Duration::from_secs(5)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&r.json).ok()?;
    v.as_array()?.iter().find(|r| r["job"] == job).cloned()
}

/// The coordinator node's name, from the nodes' role events.
fn coordinator(run: &Run) -> Option<String> {
    let (addr, _) = run.reign()?;
    run.name_of(&addr).or(Some(addr))
}

/// Runs one job of `n` queries and its export.
fn one_size(run: &Run, exe: &Path, dir: &Path, n: usize, per: usize) -> anyhow::Result<Line> {
    let mut line = Line {
        queries: n,
        ..Line::default()
    };
    let local = dir.join(format!("inputs-{n}"));
    line.archives = write_archives(&local, n, per)?;
    let name = format!("inputs/scale-{n}");
    let t = Instant::now();
    run.ask(
        dml_actors::control::Request::Put {
            local: local.display().to_string(),
            name: name.clone(),
        },
        Duration::from_secs(3600),
    )
    .context("storing the archives")?;
    line.put_s = t.elapsed().as_secs_f64();
    let _ = fs::remove_dir_all(&local);

    let coord = coordinator(run).context("no coordinator in the logs")?;
    let pid = run
        .cluster
        .pid(&coord)
        .with_context(|| format!("no pid for {coord}"))?;
    line.coord_base_kb = rss_kb(pid).unwrap_or(0);
    let t = Instant::now();
    let r = run.ask(
        Command::C4 {
            model: "resnet50".into(),
            input: name,
        },
        Duration::from_secs(600),
    )?;
    line.accept_s = t.elapsed().as_secs_f64();
    let v: serde_json::Value = serde_json::from_str(&r.json)?;
    let job = v["job"].as_str().context("no job id")?.to_string();
    if v["queries"].as_u64() != Some(n as u64) {
        bail!("job {job} has {} queries, not {n}", v["queries"]);
    }
    let t = Instant::now();
    let mut peak = line.coord_base_kb;
    let mut last_log = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        peak = peak.max(rss_kb(pid).unwrap_or(0));
        let Some(row) = job_row(run, &job) else {
            continue;
        };
        if row["complete"].as_bool() == Some(true) {
            break;
        }
        if last_log.elapsed() > Duration::from_secs(10) {
            eprintln!("  {n}: {} of {n} committed", row["processed"]);
            last_log = Instant::now();
        }
        if t.elapsed() > Duration::from_secs(7200) {
            bail!("job {job} not complete after 2 hours");
        }
    }
    line.run_s = t.elapsed().as_secs_f64();
    line.coord_peak_kb = peak.max(rss_kb(pid).unwrap_or(0));
    let listed = run.ask(
        Command::ls_prefix(format!("results/{job}/")),
        Duration::from_secs(120),
    )?;
    let names: serde_json::Value = serde_json::from_str(&listed.json)?;
    line.objects = names.as_array().map_or(0, |a| a.len());

    // The export, as a user runs it: `dml ctl results JOB --out FILE` in its own process,
    // whose resident memory is sampled while it runs.
    let out = dir.join(format!("results-{n}.jsonl"));
    let t = Instant::now();
    let mut child = std::process::Command::new(exe)
        .arg("ctl")
        .arg("--config")
        .arg(&run.layout().config)
        .arg("--node")
        .arg(&run.console)
        .args(["--timeout", "600", "results", &job, "--out"])
        .arg(&out)
        .arg("--force")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start dml ctl")?;
    let mut client_peak = 0;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        client_peak = client_peak.max(rss_kb(child.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    };
    line.export_s = t.elapsed().as_secs_f64();
    line.client_peak_kb = client_peak;
    if !status.success() {
        bail!("dml ctl results {job} failed ({status})");
    }
    let text = fs::read_to_string(&out)?;
    line.export_rows = text.lines().count() as u64;
    if line.export_rows != n as u64 {
        bail!("export of {job} has {} rows, not {n}", line.export_rows);
    }
    // Every input exactly once, numbered in order, flagged as the benchmark's.
    for (i, l) in text.lines().enumerate() {
        let r: dml_actors::jobs::types::QueryResult = serde_json::from_str(l)?;
        if r.q as usize != i || !r.bench_fixed_logits || r.error.is_some() {
            bail!("export of {job}: row {i} is {l}");
        }
    }
    let _ = fs::remove_file(&out);
    let other = run
        .layout()
        .nodes
        .iter()
        .map(|(n, _)| n.clone())
        .find(|n| *n != coord)
        .context("no second node")?;
    line.node_kb = run.cluster.pid(&other).and_then(rss_kb).unwrap_or(0);
    let addr = run.layout().addr(&other).context("node address")?;
    let held = run.cluster.ask_json(addr, Command::store())?;
    line.node_objects = held.as_array().map_or(0, |a| a.len());
    Ok(line)
}

/// Runs the benchmark and prints the table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the dml executable")?;
    let dir: PathBuf = std::env::temp_dir().join(format!("dml-bench-scale-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let layout = write_config(&dir, args.nodes, &dir.join("no-weights"))?;
    let opts = Options {
        node_args: vec!["--bench-fixed-logits".into()],
        keep: args.keep,
        // Benchmarks and tests run on synthetic weights, and say so.
        synthetic_weights: true,
        ..Options::default()
    };
    let run = Run::start_bin(&exe, layout, opts)?;
    let first = run.layout().nodes.first().context("no nodes")?.1.clone();
    run.cluster
        .wait_members(&[first], Duration::from_secs(120), true)?;
    std::thread::sleep(Duration::from_secs(3));
    for model in ["resnet50", "inception_v3"] {
        run.ask(
            Command::C3 {
                model: model.into(),
                batch: args.batch,
            },
            Duration::from_secs(60),
        )?;
    }
    println!(
        "dml bench scale: {} nodes on one machine ({}, {} CPUs), batch {}, {} inputs per archive, fixed-logits model",
        args.nodes,
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.batch,
        args.per_archive
    );
    println!("| queries | archives | put s | accept s | run s | queries/s | coordinator RSS MiB (base -> peak) | bytes/query | result objects | export s | rows/s | client peak MiB | worker RSS MiB / objects held |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &args.sizes {
        let l = one_size(&run, &exe, &dir, n, args.per_archive)?;
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} -> {:.0} | {:.0} | {} | {:.1} | {:.0} | {:.0} | {:.0} / {} |",
            l.queries,
            l.archives,
            l.put_s,
            l.accept_s,
            l.run_s,
            l.qps(),
            l.coord_base_kb as f64 / 1024.0,
            l.coord_peak_kb as f64 / 1024.0,
            l.bytes_per_query(),
            l.objects,
            l.export_s,
            l.export_rows as f64 / l.export_s.max(1e-9),
            l.client_peak_kb as f64 / 1024.0,
            l.node_kb as f64 / 1024.0,
            l.node_objects
        );
    }
    drop(run);
    if args.keep {
        println!("kept {}", dir.display());
    } else {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(())
}
