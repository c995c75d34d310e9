//! A benchmark cluster that runs inference jobs, the process shell shared by `dml bench
//! idunno` and `dml bench pings`: its config, start-up, the console node it asks, C1/C5
//! polling into a completion series, the nodes' log events, and kills.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use dml_actors::clock::wall_ms;
use dml_actors::control::{Command, Reply, Request};
use dml_cluster::{Cluster, Layout, Options, TestConfig};

use crate::images::write_images;
use crate::logs::{current_reign, parse_c1, parse_c5, parse_events, LogEvent, Rate};

/// The secret of the throw-away benchmark clusters (their config lives in a temp dir).
const SECRET: &str = "dml-bench-idunno-secret-0123456789";
/// C1 polling cadence.
pub const POLL: Duration = Duration::from_millis(100);
/// A poll waits at most this long: a request caught by a dead coordinator must not
/// stall the sampling for the node's 20 s request timeout.
pub const POLL_TIMEOUT: Duration = Duration::from_millis(1500);

/// Writes the trial's config into `dir` (fast failure-detector timings, one inference
/// thread per node, the shared synthetic weights).
pub fn write_config(dir: &Path, nodes: usize, weights: &Path) -> anyhow::Result<Layout> {
    TestConfig {
        secret: SECRET,
        nodes,
        ping_duration: 0.5,
        ping_timeout: 0.3,
        cleanup_time: 1.5,
        fd_extra: "",
        extra: &format!(
            "[inference]\nthreads = 1\nweights_dir = \"{}\"\n",
            weights.display()
        ),
    }
    .write(dir)
}

/// A running trial cluster and the node the benchmark talks to.
pub struct Run {
    pub cluster: Cluster,
    /// Node the console commands go to; never killed.
    pub console: String,
    /// Nodes killed so far (their logs are no longer read for detection).
    pub dead: Vec<String>,
    /// (wall ms, processed summed over jobs) from every C1 poll.
    pub series: Vec<(u64, u64)>,
}

impl Run {
    /// Starts the cluster of `layout` (this executable, with `--set` overrides).
    pub fn start(layout: Layout, overrides: &[String]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the dml executable")?;
        let opts = Options {
            overrides: overrides.to_vec(),
            // Benchmarks and tests run on synthetic weights, and say so.
            synthetic_weights: true,
            ..Options::default()
        };
        Self::start_bin(&exe, layout, opts)
    }

    /// Starts the cluster of `layout` with the `dml` binary `exe` (a test's built binary:
    /// there the current executable is the test).
    pub fn start_bin(exe: &Path, layout: Layout, opts: Options) -> anyhow::Result<Self> {
        let console = layout.nodes.last().context("no nodes")?.1.clone();
        Ok(Run {
            cluster: Cluster::start(exe, layout, opts)?,
            console,
            dead: Vec::new(),
            series: Vec::new(),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.cluster.layout
    }

    /// Waits for the cluster to form, sets each model's batch size with C3 and stores the
    /// images under `inputs/bench`; returns how long storing took.
    pub fn prepare(
        &self,
        models: &[&str],
        batch: usize,
        images: &Path,
    ) -> anyhow::Result<Duration> {
        let first = self.layout().nodes.first().context("no nodes")?.1.clone();
        self.cluster
            .wait_members(&[first], Duration::from_secs(120), true)?;
        for model in models {
            self.ask(
                Command::C3 {
                    model: (*model).into(),
                    batch,
                },
                Duration::from_secs(60),
            )?;
        }
        let t = Instant::now();
        self.ask(
            Request::Put {
                local: images.display().to_string(),
                name: "inputs/bench".into(),
            },
            Duration::from_secs(600),
        )?;
        Ok(t.elapsed())
    }

    pub fn ask(&self, cmd: impl Into<Request>, timeout: Duration) -> anyhow::Result<Reply> {
        self.cluster
            .ask(&self.console, cmd, timeout)?
            .map_err(|e| anyhow!(e))
    }

    /// One C1 poll: the rows, also appended to the completion series.
    pub fn c1(&mut self) -> Option<Vec<Rate>> {
        let reply = self.ask(Command::C1, POLL_TIMEOUT).ok()?;
        let rows = parse_c1(&reply.json).ok()?;
        let total = rows.iter().map(|r| r.processed).sum();
        self.series.push((wall_ms(), total));
        Some(rows)
    }

    pub fn c5(&self) -> Option<Vec<(String, Option<String>)>> {
        let reply = self.ask(Command::C5, POLL_TIMEOUT).ok()?;
        parse_c5(&reply.json).ok()
    }

    /// Polls C1 every [`POLL`] until `done` says so or `within` passes.
    pub fn poll_until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&[Rate], &Self) -> bool,
    ) -> Option<Vec<Rate>> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let tick = Instant::now();
            if let Some(rows) = self.c1() {
                if done(&rows, self) {
                    return Some(rows);
                }
            }
            std::thread::sleep(POLL.saturating_sub(tick.elapsed()));
        }
        None
    }

    /// Events of every node still alive (and of the dead ones if `all`), by node name.
    pub fn events(&self, all: bool) -> Vec<(String, Vec<LogEvent>)> {
        let mut names: Vec<&String> = self.layout().nodes.iter().map(|n| &n.0).collect();
        names.sort();
        names
            .into_iter()
            .filter(|n| all || !self.dead.contains(n))
            .map(|n| {
                let text = fs::read_to_string(self.layout().log_path(n)).unwrap_or_default();
                (n.clone(), parse_events(&text))
            })
            .collect()
    }

    /// The coordinator and standby of the newest reign any node has announced.
    pub fn reign(&self) -> Option<(String, Option<String>)> {
        let all: Vec<LogEvent> = self.events(true).into_iter().flat_map(|(_, e)| e).collect();
        current_reign(&all)
    }

    pub fn name_of(&self, addr: &str) -> Option<String> {
        self.layout().name_of(addr).map(String::from)
    }

    /// kill -9 of several nodes at once; the wall-clock ms just before.
    pub fn kill_all(&mut self, names: &[&str]) -> anyhow::Result<u64> {
        let at = wall_ms();
        self.cluster.kill9_all(names)?;
        self.dead.extend(names.iter().map(|n| n.to_string()));
        Ok(at)
    }

    /// kill -9 of a node; the wall-clock ms just before.
    pub fn kill(&mut self, name: &str) -> anyhow::Result<u64> {
        self.kill_all(&[name])
    }
}

/// Queries of `job` processed so far, from C1 rows.
pub fn processed_of(rows: &[Rate], job: &str) -> u64 {
    rows.iter()
        .find(|r| r.job == job)
        .map_or(0, |r| r.processed)
}

/// Submits a C4 job over `inputs/bench`; its id.
pub fn submit(run: &Run, model: &str) -> anyhow::Result<String> {
    let r = run.ask(
        Command::C4 {
            model: model.into(),
            input: "inputs/bench".into(),
        },
        Duration::from_secs(60),
    )?;
    let v: serde_json::Value = serde_json::from_str(&r.json)?;
    Ok(v["job"]
        .as_str()
        .ok_or_else(|| anyhow!("no job id in {}", r.json))?
        .to_string())
}

/// The CPU's model name, for the reports.
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// A fresh work directory `<temp>/dml-bench-<name>-<pid>` with synthetic weights for both
/// networks (written once: every node loads them instead of generating) and `images`
/// generated pictures; returns (root, weights, images).
pub fn bench_inputs(name: &str, images: usize) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let root = std::env::temp_dir().join(format!("dml-bench-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let weights = root.join("weights");
    dml_models::cli::weights_synth(&weights, 0)?;
    let pictures = root.join("images");
    write_images(&pictures, images)?;
    Ok((root, weights, pictures))
}
