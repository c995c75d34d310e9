//! `dml bench chaos`: a Jepsen-style fault-injection soak of SDFS on a real cluster of
//! `dml` processes. Clients put, get, delete and ask `get-versions` on random live nodes
//! the whole time ([`workload`]), recording every operation ([`history`]); a seeded
//! nemesis kills, restarts, pauses and resumes nodes ([`nemesis`]); the checker judges
//! every read as it ends, and at the end waits for m+1 replicas of every name and reads
//! every name back from a survivor ([`checker`]). Every violation prints the seed and
//! the history behind it. The CI test `tests/chaos.rs` runs [`soak`] in its short form.

pub mod checker;
pub mod history;
pub mod nemesis;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dml_actors::control::{Command, Request};
use dml_cluster::{wait_listening, Cluster, Layout, Options, TestConfig};
use rand::seq::IteratorRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use checker::{report, Replicas, Violation};
use history::{History, Kind, OpId, Res};
use nemesis::Step;
use workload::{ask, Answer};

/// The secret of the throw-away chaos clusters.
const SECRET: &str = "dml-bench-chaos-secret-0123456789";
/// m of the config: m+1 replicas per name.
pub const M: usize = 3;
/// The fast failure-detector timings.
const PING: f64 = 0.5;
const PING_TIMEOUT: f64 = 0.3;
pub const CLEANUP: f64 = 1.5;

/// Options of `dml bench chaos`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Seconds of faults and workload (the random plan stops then).
    #[arg(long, default_value_t = 300)]
    pub duration: u64,
    /// Seed of the nemesis, the workload and the file contents (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Files put as one directory before the faults start.
    #[arg(long, default_value_t = 5_000)]
    pub files: usize,
    /// Client threads of the workload.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// The fault plan: `random` (seeded mix of kills, restarts, pauses and waves until
    /// --duration) or `waves` (--waves waves of m kill -9s, nodes left dead, each
    /// waiting for m+1 replicas; --duration is ignored).
    #[arg(long, default_value = "random", value_parser = ["random", "waves"])]
    pub plan: String,
    /// Waves of the `waves` plan.
    #[arg(long, default_value_t = 2)]
    pub waves: usize,
    /// Seconds an operation may take before it counts as indeterminate.
    #[arg(long, default_value_t = 20)]
    pub op_timeout: u64,
    /// Re-replication after a wave (and at the end) counts as stalled, a violation,
    /// when no name short of m+1 copies has got them for this many seconds (a slow
    /// machine is slow, not wrong).
    #[arg(long, default_value_t = 60)]
    pub stall_secs: u64,
    /// Keep the cluster's directory (config, logs, data) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// No network partitions (by default the random plan partitions a minority of up
    /// to m nodes now and then, with every node in its own network namespace; that
    /// needs root and iproute2, and is skipped with a note when unavailable).
    #[arg(long)]
    pub no_partitions: bool,
    /// Directory of the run (default: a fresh one under the temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// A soak's settings (what [`Args`] become).
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub nodes: usize,
    pub files: usize,
    pub clients: usize,
    /// The fault plan.
    pub plan: Plan,
    pub duration: Duration,
    pub op_timeout: Duration,
    /// See [`Args::stall_secs`].
    pub stall: Duration,
    pub dir: PathBuf,
    pub keep: bool,
    /// Network partitions in the random plan (nodes in network namespaces).
    pub partitions: bool,
}

/// Which faults a soak injects (see [`nemesis::random`] and [`nemesis::waves`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Random,
    Waves(usize),
}

/// What the threads of a run share.
pub struct Ctx {
    pub seed: u64,
    pub credential: dml_actors::net::wire::Credential,
    pub work: PathBuf,
    pub op_timeout: Duration,
    pub history: Mutex<History>,
    /// Addresses clients may ask (neither killed nor paused).
    pub live: Mutex<BTreeSet<String>>,
    pub stop: AtomicBool,
    pub violations: Mutex<Vec<Violation>>,
    /// (name, address) of every node, for reports.
    pub nodes: Vec<(String, String)>,
}

impl Ctx {
    /// A node's name (H1..) for its address.
    pub fn node_name<'a>(&'a self, addr: &'a str) -> &'a str {
        self.nodes
            .iter()
            .find(|n| n.1 == addr)
            .map_or(addr, |n| n.0.as_str())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn live(&self) -> Vec<String> {
        let l = self.live.lock().unwrap_or_else(|p| p.into_inner());
        l.iter().cloned().collect()
    }

    fn set_live(&self, addr: &str, up: bool) {
        let mut l = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if up {
            l.insert(addr.to_string());
        } else {
            l.remove(addr);
        }
    }

    pub fn pick_node(&self, rng: &mut impl Rng) -> Option<String> {
        let l = self.live.lock().unwrap_or_else(|p| p.into_inner());
        l.iter().choose(rng).cloned()
    }

    pub fn invoke(&self, client: usize, kind: Kind, name: &str, node: &str, size: usize) -> OpId {
        let node = self.node_name(node);
        self.lock().invoke(client, kind, name, node, size)
    }

    pub fn complete(&self, id: OpId, res: Res) {
        self.lock().complete(id, res);
    }

    /// Completes a read and has the checker judge it at once.
    pub fn complete_read(&self, id: OpId, res: Res) {
        let found = {
            let mut h = self.lock();
            h.complete(id, res);
            checker::check_read(&h, id)
        };
        for v in found {
            self.record(v);
        }
    }

    /// Prints a violation's report and keeps it.
    pub fn record(&self, v: Violation) {
        let text = report(&self.lock(), self.seed, &v);
        eprintln!("{text}");
        self.violations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(v);
    }

    pub fn violation(&self, name: &str, what: String, op: Option<OpId>) {
        self.record(Violation {
            name: name.to_string(),
            what,
            op,
        });
    }

    fn note(&self, what: String) {
        self.lock().note(what);
    }
}

/// Re-replication after one wave (or at the end).
#[derive(Debug, Clone)]
pub struct Wave {
    pub label: String,
    /// From the faults to m+1 replicas of every name checked; None: it stalled.
    pub took: Option<Duration>,
    /// Names short of m+1 live copies at the first look, and the copies and bytes
    /// they missed.
    pub names: usize,
    pub copies: usize,
    pub bytes: u64,
}

/// What a soak did and found.
#[derive(Debug, Default)]
pub struct Summary {
    pub seed: u64,
    /// (kind, ok, refused, indeterminate) per kind of op.
    pub ops: BTreeMap<String, (usize, usize, usize)>,
    pub faults: BTreeMap<String, usize>,
    pub steps: usize,
    /// Names read back at the end.
    pub files_checked: usize,
    pub violations: Vec<String>,
    pub waves: Vec<Wave>,
    pub live_at_end: usize,
    pub wall: Duration,
}

impl Summary {
    pub fn print(&self) {
        println!("\n== chaos summary (seed {}) ==", self.seed);
        println!("ops (ok / failed / indeterminate):");
        for (k, (ok, failed, ind)) in &self.ops {
            println!("  {k:<12} {ok:>7} {failed:>7} {ind:>7}");
        }
        println!("faults injected ({} steps):", self.steps);
        for (k, n) in &self.faults {
            println!("  {k:<24} {n:>5}");
        }
        println!(
            "re-replication to m+1 = {} live copies of every name:",
            M + 1
        );
        for w in &self.waves {
            match w.took {
                Some(t) => {
                    let s = t.as_secs_f64().max(1e-3);
                    println!(
                        "  {:<28} {:>7.1} s  {:>6} names short ({} copies, {:.1} MB): {:.0} names/s, {:.2} MB/s",
                        w.label,
                        s,
                        w.names,
                        w.copies,
                        w.bytes as f64 / 1e6,
                        w.names as f64 / s,
                        w.bytes as f64 / 1e6 / s
                    );
                }
                None => println!("  {:<28} did not converge", w.label),
            }
        }
        println!("live nodes at the end: {}", self.live_at_end);
        println!("files checked at the end: {}", self.files_checked);
        println!("violations: {}", self.violations.len());
        for v in self.violations.iter().take(20) {
            println!("  {v}");
        }
        println!("wall time: {:.1} s", self.wall.as_secs_f64());
    }
}

/// `dml bench chaos`: the soak with this executable's binary; an error when any
/// violation was found (so the exit status is non-zero).
pub fn run(args: &Args) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(dml_actors::clock::wall_ms);
    anyhow::ensure!(args.nodes > 2 * M, "--nodes must be at least {}", 2 * M + 1);
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(args.files > 0, "--files must be at least 1");
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("dml-chaos-{}", std::process::id())));
    let cfg = Config {
        seed,
        nodes: args.nodes,
        files: args.files,
        clients: args.clients,
        plan: if args.plan == "waves" {
            Plan::Waves(args.waves)
        } else {
            Plan::Random
        },
        duration: Duration::from_secs(args.duration),
        op_timeout: Duration::from_secs(args.op_timeout),
        stall: Duration::from_secs(args.stall_secs),
        dir,
        keep: args.keep,
        partitions: !args.no_partitions,
    };
    let exe = std::env::current_exe().context("cannot find the dml executable")?;
    let summary = soak(&exe, &cfg)?;
    summary.print();
    if !summary.violations.is_empty() {
        bail!(
            "{} violations (seed {seed}; rerun with --seed {seed})",
            summary.violations.len()
        );
    }
    Ok(())
}

/// Runs one soak with the `dml` binary `bin`; the violations are in the summary.
pub fn soak(bin: &Path, cfg: &Config) -> anyhow::Result<Summary> {
    let start = Instant::now();
    println!(
        "chaos: seed {} nodes {} files {} clients {} plan {:?} partitions {} (cpu: {})",
        cfg.seed,
        cfg.nodes,
        cfg.files,
        cfg.clients,
        cfg.plan,
        cfg.partitions,
        crate::session::cpu_model()
    );
    let test_config = TestConfig {
        secret: SECRET,
        nodes: cfg.nodes,
        ping_duration: PING,
        ping_timeout: PING_TIMEOUT,
        cleanup_time: CLEANUP,
        fd_extra: "",
        extra: "",
    };
    // Partitions need a namespace per node (root and iproute2); without them the run
    // goes on with the other faults.
    let (layout, partitions) = match cfg.partitions {
        true => match test_config.write_netns(&cfg.dir) {
            Ok(l) => (l, true),
            Err(e) => {
                println!("  partitions off: {e:#}");
                (test_config.write(&cfg.dir)?, false)
            }
        },
        false => (test_config.write(&cfg.dir)?, false),
    };
    let opts = Options {
        own_dir: Some(cfg.dir.clone()),
        keep: cfg.keep,
        stop: dml_cluster::Stop::Kill,
        // Benchmarks and tests run on synthetic weights, and say so.
        synthetic_weights: true,
        ..Options::default()
    };
    let mut cluster = Cluster::start(bin, layout.clone(), opts)?;
    println!("  cluster in {}", cfg.dir.display());
    cluster.wait_formed(Duration::from_secs(120))?;
    let ctx = Ctx {
        seed: cfg.seed,
        credential: layout.credential.clone(),
        work: cfg.dir.join("work"),
        op_timeout: cfg.op_timeout,
        history: Mutex::new(History::new(start)),
        live: Mutex::new(layout.nodes.iter().map(|n| n.1.clone()).collect()),
        stop: AtomicBool::new(false),
        violations: Mutex::new(Vec::new()),
        nodes: layout.nodes.clone(),
    };
    load(&ctx, &layout, cfg)?;

    let names: Vec<String> = layout.nodes.iter().map(|n| n.0.clone()).collect();
    let plan = match cfg.plan {
        Plan::Random => nemesis::random(
            cfg.seed,
            &names,
            M,
            CLEANUP,
            cfg.duration.as_secs_f64(),
            partitions,
        ),
        Plan::Waves(n) => nemesis::waves(cfg.seed, &names, M, n),
    };
    println!(
        "nemesis schedule (seed {}, {} steps; a random plan stops at its duration):",
        cfg.seed,
        plan.len()
    );
    for (i, s) in plan.iter().enumerate() {
        println!("  step {:>3}: {s}", i + 1);
    }

    let mut summary = Summary {
        seed: cfg.seed,
        ..Summary::default()
    };
    let faults_start = Instant::now();
    let outcome: anyhow::Result<()> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..cfg.clients)
            .map(|i| {
                let ctx = &ctx;
                s.spawn(move || workload::client(ctx, i))
            })
            .collect();
        let mut result = Ok(());
        for (i, step) in plan.iter().enumerate() {
            if cfg.plan == Plan::Random && faults_start.elapsed() >= cfg.duration {
                break;
            }
            match run_step(&mut cluster, &ctx, cfg, i + 1, step, &mut summary) {
                Ok(true) => summary.steps += 1,
                Ok(false) => {
                    summary.steps += 1;
                    // The nodes lost so far are still failures the cluster has not
                    // recovered from: more faults would go beyond the promise.
                    ctx.note("re-replication stalled: no more faults".into());
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if cfg.plan == Plan::Random && result.is_ok() {
            let left = cfg.duration.saturating_sub(faults_start.elapsed());
            std::thread::sleep(left);
        }
        ctx.stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.join();
        }
        result
    });
    outcome?;
    ctx.note("faults and workload stopped".into());

    // The end: every name back on m+1 live nodes, then every name read from a survivor.
    let live = ctx.live();
    summary.live_at_end = live.len();
    let all: BTreeSet<String> = ctx.lock().names.iter().cloned().collect();
    let w = converge(&ctx, "end (all names)", Instant::now(), false, cfg.stall);
    summary.waves.push(w);
    summary.files_checked = final_reads(&ctx, &live, &all);

    {
        let h = ctx.lock();
        for op in &h.ops {
            let e = summary.ops.entry(format!("{:?}", op.kind)).or_default();
            match op.res {
                Res::Put(_) | Res::Read(_) | Res::Versions(_) | Res::Deleted | Res::NoSuchFile => {
                    e.0 += 1
                }
                Res::Failed(_) => e.1 += 1,
                Res::Indeterminate(_) | Res::Pending => e.2 += 1,
            }
        }
    }
    summary.violations = ctx
        .violations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|v| format!("{}: {}", v.name, v.what))
        .collect();
    summary.wall = start.elapsed();
    drop(cluster);
    Ok(summary)
}

/// Puts `cfg.files` files as one directory and records each as acknowledged at the
/// version the reply gives it.
fn load(ctx: &Ctx, layout: &Layout, cfg: &Config) -> anyhow::Result<()> {
    let dir = ctx.work.join("init");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let node = layout.nodes[0].1.clone();
    let mut ids = BTreeMap::new();
    for i in 0..cfg.files {
        let file = format!("f{i:05}");
        let name = format!("chaos/init/{file}");
        let size = rng.gen_range(workload::SIZES);
        let id = ctx.invoke(usize::MAX, Kind::Load, &name, &node, size);
        fs::write(dir.join(&file), checker::payload(cfg.seed, id, &name, size))?;
        ids.insert(name, id);
    }
    let t = Instant::now();
    let cmd = Request::Put {
        local: dir.display().to_string(),
        name: "chaos/init".into(),
    };
    let reply = match dml_cluster::ask(
        &node,
        &ctx.credential,
        cmd,
        Duration::from_secs(2),
        Duration::from_secs(1800),
    ) {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => bail!("the initial put failed: {e}"),
        Err(e) => bail!("the initial put got no answer: {e:#}"),
    };
    let v: serde_json::Value = serde_json::from_str(&reply.json)?;
    let stored = v["stored"]
        .as_array()
        .context("put of a directory without `stored`")?;
    for s in stored {
        let (Some(name), Some(version)) = (s["name"].as_str(), s["version"].as_u64()) else {
            bail!("bad stored entry {s}");
        };
        let id = *ids
            .get(name)
            .with_context(|| format!("the put stored an unknown name {name}"))?;
        ctx.complete(id, Res::Put(version));
    }
    let missing: Vec<&String> = {
        let h = ctx.lock();
        ids.iter()
            .filter(|(_, id)| h.ops[**id].complete.is_none())
            .map(|(n, _)| n)
            .collect()
    };
    anyhow::ensure!(
        missing.is_empty(),
        "the initial put did not store {} files, e.g. {}",
        missing.len(),
        missing[0]
    );
    println!(
        "  put {} files in {:.1} s",
        cfg.files,
        t.elapsed().as_secs_f64()
    );
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// One nemesis step: the faults, the restores on their schedule, and the wait for
/// re-replication if the step asks for one; false if that wait gave up.
fn run_step(
    cluster: &mut Cluster,
    ctx: &Ctx,
    cfg: &Config,
    n: usize,
    step: &Step,
    summary: &mut Summary,
) -> anyhow::Result<bool> {
    let layout = cluster.layout.clone();
    let addr = |name: &str| {
        layout
            .addr(name)
            .map(str::to_string)
            .context("unknown node")
    };
    let t0 = Instant::now();
    ctx.note(format!("step {n}: {step}"));
    for v in step.victims() {
        ctx.set_live(&addr(v)?, false);
    }
    if !step.cut.is_empty() {
        let rest: Vec<String> = layout
            .nodes
            .iter()
            .map(|n| n.0.clone())
            .filter(|n| !step.cut.contains(n))
            .collect();
        cluster.partition(&[step.cut.clone(), rest])?;
        *summary
            .faults
            .entry(format!("partition of {}", step.cut.len()))
            .or_default() += 1;
    }
    for v in &step.kill {
        cluster.kill9(v)?;
        *summary.faults.entry("kill -9".into()).or_default() += 1;
    }
    for (v, secs) in &step.pause {
        cluster.pause(v)?;
        let kind = if *secs > CLEANUP {
            "pause > cleanup_time"
        } else {
            "pause < cleanup_time"
        };
        *summary.faults.entry(kind.into()).or_default() += 1;
    }
    if step.failures() > 1 {
        *summary
            .faults
            .entry(format!("wave of {}", step.failures()))
            .or_default() += 1;
    }
    ctx.note(format!(
        "step {n}: down {}",
        step.victims().cloned().collect::<Vec<_>>().join(" ")
    ));
    // Restores in time order.
    #[derive(Clone, Copy)]
    enum Undo {
        Resume,
        Restart,
        Heal,
    }
    let mut restores: Vec<(f64, &str, Undo)> = step
        .pause
        .iter()
        .map(|(v, s)| (*s, v.as_str(), Undo::Resume))
        .collect();
    if step.restart {
        restores.extend(
            step.kill
                .iter()
                .map(|v| (step.down, v.as_str(), Undo::Restart)),
        );
    }
    if !step.cut.is_empty() {
        restores.push((step.cut_secs, "", Undo::Heal));
    }
    restores.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (at, v, undo) in restores {
        std::thread::sleep(Duration::from_secs_f64(at).saturating_sub(t0.elapsed()));
        match undo {
            Undo::Restart => {
                cluster.restart(v)?;
                let a = addr(v)?;
                wait_listening(&a, Duration::from_secs(20))?;
                *summary.faults.entry("restart".into()).or_default() += 1;
                ctx.note(format!("step {n}: restarted {v}"));
                ctx.set_live(&a, true);
            }
            Undo::Resume => {
                cluster.resume(v)?;
                ctx.note(format!("step {n}: SIGCONT {v}"));
                ctx.set_live(&addr(v)?, true);
            }
            Undo::Heal => {
                cluster.heal()?;
                ctx.note(format!("step {n}: healed the partition"));
                for c in &step.cut {
                    ctx.set_live(&addr(c)?, true);
                }
            }
        }
    }
    if step.wait {
        let label = format!(
            "step {n} ({} down{})",
            step.failures(),
            match (step.kill.is_empty(), step.restart) {
                (true, _) => "",
                (false, true) => ", restarted",
                (false, false) => ", left dead",
            }
        );
        let w = converge(ctx, &label, t0, true, cfg.stall);
        let converged = w.took.is_some();
        summary.waves.push(w);
        if !converged {
            return Ok(false);
        }
    }
    std::thread::sleep(Duration::from_secs_f64(step.rest));
    Ok(true)
}

/// Every live node's `store`; None if one does not answer.
fn stores(ctx: &Ctx, live: &[String]) -> Option<Vec<(String, serde_json::Value)>> {
    live.iter()
        .map(|a| match ask(ctx, a, Command::store()) {
            Answer::Ok(v) => Some((a.clone(), v)),
            _ => None,
        })
        .collect()
}

/// Waits until every name has its latest version on min(m+1, live) live nodes; a
/// violation if no name short of that gets its copies for `stall`. With `settled_only`, names written or
/// deleted since `since` (or with such an op in flight) are left out: a put in flight
/// has fewer copies for reasons that are not the faults'.
fn converge(ctx: &Ctx, label: &str, since: Instant, settled_only: bool, stall: Duration) -> Wave {
    let mut first: Option<(usize, usize, u64)> = None;
    let mut deadline = Instant::now() + stall;
    let mut before: BTreeSet<String> = BTreeSet::new();
    let mut last: Vec<(String, String)> = Vec::new();
    let mut stuck = 0;
    loop {
        let live = ctx.live();
        let want = (M + 1).min(live.len());
        if let Some(st) = stores(ctx, &live) {
            let r = Replicas::from_stores(&st);
            let skip = if settled_only {
                unsettled(ctx, since)
            } else {
                BTreeSet::new()
            };
            let under = r.under(want, &skip);
            if first.is_none() {
                let sizes = sizes(ctx);
                let copies: usize = under.iter().map(|(_, h)| want - h).sum();
                let bytes = under
                    .iter()
                    .map(|(n, h)| {
                        (want - h) as u64
                            * sizes
                                .get(&(n.to_string(), r.latest[*n].0))
                                .copied()
                                .unwrap_or(0) as u64
                    })
                    .sum();
                first = Some((under.len(), copies, bytes));
            }
            if under.is_empty() {
                let took = since.elapsed();
                ctx.note(format!(
                    "{label}: every name on {want} live nodes after {:.1} s",
                    took.as_secs_f64()
                ));
                let (names, copies, bytes) = first.unwrap_or_default();
                return Wave {
                    label: label.into(),
                    took: Some(took),
                    names,
                    copies,
                    bytes,
                };
            }
            stuck = under.len();
            // Progress is a name short of copies that got them; one that a client wrote
            // since only left the count, so it does not count.
            let now: BTreeSet<String> = under.iter().map(|(n, _)| n.to_string()).collect();
            if before.iter().any(|n| !now.contains(n) && !skip.contains(n)) {
                deadline = Instant::now() + stall;
            }
            before = now;
            last = under
                .iter()
                .take(10)
                .map(|(n, _)| {
                    let holders: Vec<&str> =
                        r.latest[*n].1.iter().map(|a| ctx.node_name(a)).collect();
                    (
                        n.to_string(),
                        format!("{n} v{} on {}", r.latest[*n].0, holders.join(",")),
                    )
                })
                .collect();
        }
        if Instant::now() >= deadline {
            let examples: Vec<&str> = last.iter().map(|(_, e)| e.as_str()).collect();
            ctx.violation(
                last.first().map_or("(replication)", |(n, _)| n.as_str()),
                format!(
                    "{label}: re-replication stalled: {stuck} names not on {want} live nodes, none more for {stall:?}; e.g. {}",
                    examples.join("; ")
                ),
                None,
            );
            let (names, copies, bytes) = first.unwrap_or_default();
            return Wave {
                label: label.into(),
                took: None,
                names,
                copies,
                bytes,
            };
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Names with a put or delete invoked since `since`, or still in flight.
fn unsettled(ctx: &Ctx, since: Instant) -> BTreeSet<String> {
    let h = ctx.lock();
    let since = h.now().saturating_sub(since.elapsed().as_millis() as u64);
    h.ops
        .iter()
        .filter(|o| {
            (o.is_write() || o.kind == Kind::Delete) && (o.invoke >= since || o.complete.is_none())
        })
        .map(|o| o.name.clone())
        .collect()
}

/// (name, acknowledged version) -> bytes put.
fn sizes(ctx: &Ctx) -> BTreeMap<(String, u64), usize> {
    let h = ctx.lock();
    h.ops
        .iter()
        .filter_map(|o| Some(((o.name.clone(), o.acked_version()?), o.size)))
        .collect()
}

/// Reads every name back (spread over the live nodes, a thread per client), each
/// judged by the checker; how many names were read.
fn final_reads(ctx: &Ctx, live: &[String], names: &BTreeSet<String>) -> usize {
    if live.is_empty() {
        ctx.violation("(cluster)", "no live node left to read from".into(), None);
        return 0;
    }
    ctx.note(format!(
        "final reads of {} names from {} live nodes",
        names.len(),
        live.len()
    ));
    let names: Vec<&String> = names.iter().collect();
    let threads = 4.min(names.len().max(1));
    let dir = ctx.work.join("final");
    let _ = fs::create_dir_all(&dir);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (names, dir) = (&names, &dir);
            s.spawn(move || {
                for (i, name) in names.iter().enumerate().skip(t).step_by(threads) {
                    final_read(ctx, dir, live, i, name);
                }
            });
        }
    });
    names.len()
}

/// The final read of one name: tried on up to three live nodes; with the faults over, a
/// name that must exist and still cannot be read is a violation.
fn final_read(ctx: &Ctx, dir: &Path, live: &[String], i: usize, name: &str) {
    let mut last = String::new();
    for k in 0..3 {
        let node = &live[(i + k) % live.len()];
        workload::get(ctx, usize::MAX, dir, node, name);
        let h = ctx.lock();
        let op = h
            .by_name
            .get(name)
            .and_then(|ops| ops.last())
            .map(|id| &h.ops[*id]);
        match op.map(|o| &o.res) {
            Some(Res::Failed(e)) | Some(Res::Indeterminate(e)) => last = e.clone(),
            _ => return,
        }
    }
    let q = {
        let h = ctx.lock();
        checker::surviving_ack(&h, name, h.now(), h.now()).map(|q| q.id)
    };
    if let Some(q) = q {
        ctx.violation(
            name,
            format!("unreadable after the faults stopped (op {q} was acknowledged): {last}"),
            None,
        );
    }
}
