//! `dml bench jobs-churn` (issue 13, item 4): an inference job over thousands of images
//! on a real process cluster while two waves of kill -9 take out the coordinator, then
//! the new coordinator together with the new standby; afterwards every query is counted
//! exactly once, `C4 --results` lists every input, and every result object is readable and
//! held by every survivor. The scenario is a library function so that the process test
//! `tests/cluster_jobs_churn.rs` runs exactly what the benchmark runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use dml_actors::control::{Command, Request};
use dml_actors::jobs::types::parse_result_name;
use dml_actors::jobs::worker_actor::QueryResult;
use dml_cluster::{Options, Stop};
use serde_json::Value;

use crate::logs::{LogEvent, Rate};
use crate::session::{bench_inputs, cpu_model, processed_of, submit, write_config, Run};

/// Replicas per SDFS name (m + 1 with m = 3).
const REPLICAS: usize = 4;
/// Nodes per wave.
const WAVE: usize = 3;
/// Liveness bounds: only reached when something is stuck (a 2-core CI machine shares
/// its cores with other tests, so they are generous).
const FORM_WITHIN: Duration = Duration::from_secs(120);
const START_WITHIN: Duration = Duration::from_secs(180);
const TAKEOVER_WITHIN: Duration = Duration::from_secs(60);
const REPLICATED_WITHIN: Duration = Duration::from_secs(300);
const JOBS_WITHIN: Duration = Duration::from_secs(900);
/// Commands over thousands of names (store, C4 --results) get this long to answer.
const BIG_REPLY: Duration = Duration::from_secs(120);

/// Options of `dml bench jobs-churn`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Nodes in the cluster (two waves of 3 kills leave nodes - 6; at least 4 must remain).
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Generated images stored as `inputs/bench` (one query each per job).
    #[arg(long, default_value_t = 2000)]
    pub images: usize,
    /// Chooses the victims besides coordinator and standby.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Batch size set with C3 for both models.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Wave 2 during a second job (Inception-v3 over the same images) once the first is
    /// done, as in the first reproduction (twice the inference).
    #[arg(long)]
    pub second_job: bool,
    /// Keep the temporary configs, logs and data (their directory is printed).
    #[arg(long)]
    pub keep: bool,
}

/// What the scenario runs on.
pub struct Setup<'a> {
    /// The `dml` binary the nodes run.
    pub exe: &'a Path,
    /// Work directory (config, logs, data, fetched files); the caller removes it.
    pub dir: &'a Path,
    /// Weights for both networks (`dml weights synth`).
    pub weights: &'a Path,
    /// A directory of images, stored with one directory put as `inputs/bench`.
    pub images: &'a Path,
    pub nodes: usize,
    pub seed: u64,
    pub batch: usize,
    /// Wave 2 during a second job, after the first is complete.
    pub second_job: bool,
}

/// What happened, for the report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// (job, model, queries).
    pub jobs: Vec<(String, String, usize)>,
    /// Nodes killed per wave, with the role each had.
    pub waves: Vec<Vec<String>>,
    /// Survivors at the end.
    pub survivors: Vec<String>,
    /// Timed steps: (what, seconds).
    pub steps: Vec<(String, f64)>,
    /// Result files read back with `get`.
    pub results_read: usize,
    /// Names held by every survivor at the end.
    pub names_checked: usize,
    /// `sdfs send dropped` lines in all nodes' logs (messages a full queue lost).
    pub send_dropped: usize,
}

impl Report {
    fn step(&mut self, what: &str, since: Instant, say: &dyn Fn(&str)) {
        let secs = since.elapsed().as_secs_f64();
        say(&format!("  {what}: {secs:.1} s"));
        self.steps.push((what.to_string(), secs));
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (job, model, n) in &self.jobs {
            out.push_str(&format!("job {job}: {model} over {n} images\n"));
        }
        for (i, w) in self.waves.iter().enumerate() {
            out.push_str(&format!("wave {}: kill -9 of {}\n", i + 1, w.join(", ")));
        }
        out.push_str(&format!("survivors: {}\n", self.survivors.join(", ")));
        let w = self.steps.iter().map(|s| s.0.len()).max().unwrap_or(0);
        for (what, secs) in &self.steps {
            out.push_str(&format!("{what:w$}  {secs:8.1} s\n"));
        }
        out.push_str(&format!(
            "result objects read back: {}; names held by all {} survivors: {}\n",
            self.results_read,
            self.survivors.len(),
            self.names_checked
        ));
        out.push_str(&format!(
            "\"sdfs send dropped\" log lines, all nodes: {}\n",
            self.send_dropped
        ));
        out
    }
}

/// splitmix64: a seeded choice that a failing run can replay.
fn next(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `k` distinct entries of `from`, chosen by `seed`.
pub fn pick(seed: &mut u64, from: &[String], k: usize) -> Vec<String> {
    let mut pool = from.to_vec();
    let mut out = Vec::new();
    while out.len() < k && !pool.is_empty() {
        let i = (next(seed) % pool.len() as u64) as usize;
        out.push(pool.remove(i));
    }
    out
}

/// Coordinator, standby and epoch from the nodes' own `event=role` lines (as
/// `tests/cluster_jobs.rs` reads them): the node whose latest line says Primary with the
/// highest epoch, and a node whose latest line says Standby in that epoch.
pub fn roles(events: &[(String, Vec<LogEvent>)]) -> Option<(String, String, u64)> {
    let last: Vec<(&String, &LogEvent, u64)> = events
        .iter()
        .filter_map(|(n, evs)| {
            let e = evs.iter().rev().find(|e| e.kind == "role")?;
            Some((n, e, e.get("epoch")?.parse().ok()?))
        })
        .collect();
    let (coord, _, epoch) = last
        .iter()
        .filter(|(_, e, _)| e.get("role") == Some("Primary"))
        .max_by_key(|(_, _, epoch)| *epoch)?;
    let standby = last
        .iter()
        .filter(|(n, e, ep)| e.get("role") == Some("Standby") && n != coord && ep == epoch)
        .max_by_key(|(_, e, _)| e.wall)?;
    Some(((*coord).clone(), standby.0.clone(), *epoch))
}

/// Polls `f` every 200 ms until it yields a value; an error naming `what` after `within`.
fn wait<T>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A console command's JSON answer from node `addr`, or the node's one-line error.
fn ask_json(
    run: &Run,
    addr: &str,
    cmd: impl Into<Request>,
    within: Duration,
) -> Result<Value, String> {
    let reply = run
        .cluster
        .ask(addr, cmd, within)
        .map_err(|e| format!("{e:#}"))??;
    serde_json::from_str(&reply.json).map_err(|e| e.to_string())
}

/// SDFS names under `prefix`, asked of `addr`.
fn names_under(run: &Run, addr: &str, prefix: &str) -> Result<Vec<String>, String> {
    let v = ask_json(run, addr, Command::ls_prefix(prefix), BIG_REPLY)?;
    Ok(v.as_array()
        .ok_or("ls-prefix answers a list")?
        .iter()
        .filter_map(|n| n.as_str().map(String::from))
        .collect())
}

/// The names a node's `store` says it holds (with at least one version).
fn held_by(run: &Run, addr: &str) -> Result<BTreeSet<String>, String> {
    let v = ask_json(run, addr, Command::store(), BIG_REPLY)?;
    Ok(v.as_array()
        .ok_or("store answers a list")?
        .iter()
        .filter(|h| h["versions"].as_array().is_some_and(|v| !v.is_empty()))
        .filter_map(|h| h["name"].as_str().map(String::from))
        .collect())
}

/// Exactly one result per query of `job`: every object under `results/<job>/` is a
/// result object of this job (one per run of a batch; a query that ran twice may be in
/// two), the job's results read page by page (`results`, what `C4 --results` and the
/// export read) list each input exactly once, numbered by its place among the sorted
/// inputs and classified, and C1 counts each query once (asked through `ask` for up to
/// 30 s: C1 does not answer while the coordinator changes hands). Returns the results.
/// Shared with `tests/cluster_jobs.rs`.
pub fn check_exactly_once(
    ask: &dyn Fn(Command) -> Result<Value, String>,
    results: &dyn Fn(&str) -> Result<Vec<QueryResult>, String>,
    job: &str,
    model: &str,
    inputs: &[String],
) -> Result<Vec<QueryResult>, String> {
    let listed = ask(Command::ls_prefix(format!("results/{job}/")))
        .map_err(|e| format!("ls-prefix results/{job}/: {e}"))?;
    let objects: Vec<String> = listed
        .as_array()
        .ok_or_else(|| format!("ls-prefix answered {listed}"))?
        .iter()
        .filter_map(|n| n.as_str().map(String::from))
        .collect();
    let foreign: Vec<&String> = objects
        .iter()
        .filter(|n| parse_result_name(n).is_none_or(|(j, _)| j.to_string() != job))
        .take(10)
        .collect();
    if objects.is_empty() || !foreign.is_empty() {
        return Err(format!(
            "job {job}: {} result objects, foreign names e.g. {foreign:?}",
            objects.len()
        ));
    }
    let results = results(job).map_err(|e| format!("C4 --results {job}: {e}"))?;
    let mut sorted: Vec<&String> = inputs.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut seen = BTreeSet::new();
    for r in &results {
        if (r.job.as_str(), r.model.as_str()) != (job, model) {
            return Err(format!("job {job} ({model}): result of another job {r:?}"));
        }
        if sorted.get(r.q as usize).map(|s| s.as_str()) != Some(r.query.as_str()) {
            return Err(format!("job {job}: foreign or misnumbered query {r:?}"));
        }
        if !seen.insert(r.q) {
            return Err(format!("job {job}: query listed twice {r:?}"));
        }
        if r.error.is_some() || r.top5.len() != 5 || r.per_query_ms <= 0.0 {
            return Err(format!("job {job}: not a classified query {r:?}"));
        }
    }
    if results.len() != sorted.len() {
        return Err(format!(
            "job {job}: C4 --results lists {} of {} inputs",
            results.len(),
            sorted.len()
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        match ask(Command::C1) {
            Ok(v) => break v,
            Err(e) if Instant::now() >= deadline => return Err(format!("C1: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let r = rows
        .as_array()
        .and_then(|a| a.iter().find(|r| r["job"] == job))
        .ok_or_else(|| format!("no C1 row for {job}: {rows}"))?;
    let n = inputs.len() as u64;
    let counted = (
        r["processed"].as_u64(),
        r["total"].as_u64(),
        r["failed"].as_u64(),
        r["complete"].as_bool(),
    );
    if counted != (Some(n), Some(n), Some(0), Some(true)) || r["model"] != model {
        return Err(format!("C1 row of {job} ({model}, {n} queries): {r}"));
    }
    Ok(results)
}

/// The live nodes holding each of `names`, from every live node's `store`.
fn holders(
    run: &Run,
    live: &[String],
    names: &BTreeSet<String>,
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, Vec<String>> =
        names.iter().map(|n| (n.clone(), vec![])).collect();
    for node in live {
        let addr = run.layout().addr(node).context("unknown node")?;
        let held = held_by(run, addr).map_err(|e| anyhow!("store on {node}: {e}"))?;
        for (name, hs) in out.iter_mut() {
            if held.contains(name) {
                hs.push(node.clone());
            }
        }
    }
    Ok(out)
}

/// Every name under `jobs/`, `inputs/` and `results/`, listed on `via`.
fn all_names(run: &Run, via: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for p in ["jobs/", "inputs/", "results/"] {
        names.extend(names_under(run, via, p).map_err(|e| anyhow!("ls-prefix {p}: {e}"))?);
    }
    Ok(names)
}

/// Waits until the live holders of every name of `names` satisfy `ok`; returns the
/// holders then.
fn wait_holders(
    run: &Run,
    live: &[String],
    names: &BTreeSet<String>,
    what: &str,
    ok: impl Fn(&[String]) -> bool,
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let deadline = Instant::now() + REPLICATED_WITHIN;
    loop {
        let hs = holders(run, live, names)?;
        let bad: Vec<(&String, &Vec<String>)> = hs.iter().filter(|(_, h)| !ok(h)).collect();
        if bad.is_empty() {
            return Ok(hs);
        }
        if Instant::now() >= deadline {
            bail!(
                "{what}: {} of {} names not there after {REPLICATED_WITHIN:?} \
                 (live {live:?}); e.g. (name, holders) {:?}",
                bad.len(),
                names.len(),
                &bad[..bad.len().min(10)]
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Waits for the coordinator/standby pair of a reign after `after` among the live nodes.
fn wait_roles(run: &Run, after: u64, what: &str) -> anyhow::Result<(String, String, u64)> {
    wait(TAKEOVER_WITHIN, what, || {
        Ok(roles(&run.events(false)).filter(|r| r.2 > after))
    })
}

/// C1 `processed` of `job` once it reaches `at_least` (or the job completes).
fn wait_processed(run: &mut Run, job: &str, at_least: u64) -> anyhow::Result<Vec<Rate>> {
    run.poll_until(START_WITHIN, |rows, _| {
        processed_of(rows, job) >= at_least || rows.iter().any(|r| r.job == job && r.complete)
    })
    .with_context(|| format!("job {job} did not reach {at_least} processed in {START_WITHIN:?}"))
}

fn complete(rows: &[Rate], job: &str) -> bool {
    rows.iter().any(|r| r.job == job && r.complete)
}

/// kill -9 of every node in `victims` at once (their roles for the report); the instant
/// just before.
fn wave(
    run: &mut Run,
    victims: &[(String, &str)],
    report: &mut Report,
    say: &dyn Fn(&str),
) -> anyhow::Result<Instant> {
    let t = Instant::now();
    let names: Vec<&str> = victims.iter().map(|v| v.0.as_str()).collect();
    run.kill_all(&names)?;
    let named: Vec<String> = victims.iter().map(|(n, r)| format!("{n} ({r})")).collect();
    say(&format!(
        "  wave {}: kill -9 of {}",
        report.waves.len() + 1,
        named.join(", ")
    ));
    report.waves.push(named);
    Ok(t)
}

/// The live nodes.
fn live(run: &Run) -> Vec<String> {
    run.layout()
        .nodes
        .iter()
        .map(|n| n.0.clone())
        .filter(|n| !run.dead.contains(n))
        .collect()
}

/// A wave's victims: `named` (with their roles) and `extra` workers picked by `seed` among
/// the other live nodes but `spare`. The console (the node the scenario asks) moves to a
/// live node outside the wave if the wave takes it.
fn plan_wave(
    run: &mut Run,
    seed: &mut u64,
    named: Vec<(String, &'static str)>,
    extra: usize,
    spare: &[&String],
) -> anyhow::Result<Vec<(String, &'static str)>> {
    let console = run.name_of(&run.console).context("unknown console")?;
    let pool: Vec<String> = live(run)
        .into_iter()
        .filter(|n| *n != console && !spare.contains(&n) && !named.iter().any(|v| v.0 == *n))
        .collect();
    let mut victims = named;
    victims.extend(pick(seed, &pool, extra).into_iter().map(|n| (n, "worker")));
    if victims.iter().any(|v| v.0 == console) {
        let keep = live(run)
            .into_iter()
            .find(|n| !victims.iter().any(|v| v.0 == *n))
            .context("no node left outside the wave")?;
        run.console = run
            .layout()
            .addr(&keep)
            .context("unknown node")?
            .to_string();
    }
    Ok(victims)
}

/// The scenario; every violation is an error naming what, where and the seed.
pub fn scenario(s: &Setup, say: &dyn Fn(&str)) -> anyhow::Result<Report> {
    ensure!(s.batch >= 1, "need --batch >= 1");
    ensure!(
        s.nodes >= 2 * WAVE + REPLICAS,
        "need --nodes >= {} (two waves of {WAVE} leave m+1 = {REPLICAS})",
        2 * WAVE + REPLICAS
    );
    let started = Instant::now();
    let mut report = Report::default();
    let mut seed = s.seed;
    let mut files: Vec<String> = fs::read_dir(s.images)
        .with_context(|| format!("cannot read {}", s.images.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    files.sort();
    let inputs: Vec<String> = files.iter().map(|f| format!("inputs/bench/{f}")).collect();
    ensure!(!inputs.is_empty(), "no images in {}", s.images.display());

    let opts = Options {
        env: vec![("RUST_LOG".into(), "info".into())],
        stop: Stop::Kill,
        reply_within: Duration::from_secs(10),
        // Benchmarks and tests run on synthetic weights, and say so.
        synthetic_weights: true,
        ..Options::default()
    };
    let mut run = Run::start_bin(s.exe, write_config(s.dir, s.nodes, s.weights)?, opts)?;
    let t = Instant::now();
    run.cluster.wait_formed(FORM_WITHIN)?;
    report.step("cluster formed", t, say);
    let t = Instant::now();
    run.prepare(&["resnet50", "inception_v3"], s.batch, s.images)?;
    report.step(
        &format!("put of {} images (one directory put)", inputs.len()),
        t,
        say,
    );
    let listed = names_under(&run, &run.console, "inputs/bench/").map_err(|e| anyhow!(e))?;
    ensure!(
        listed == inputs,
        "the put lists {} of {} inputs",
        listed.len(),
        inputs.len()
    );
    wait_roles(&run, 0, "the first reign")?;

    // ---- Wave 1: the coordinator and two others (neither the standby nor the console).
    let j1 = submit(&run, "resnet50")?;
    report
        .jobs
        .push((j1.clone(), "resnet50".into(), inputs.len()));
    let t = Instant::now();
    let at = (inputs.len() as u64 / 10).max(1);
    let rows = wait_processed(&mut run, &j1, at)?;
    ensure!(
        !complete(&rows, &j1),
        "job {j1} finished before wave 1: raise --images"
    );
    report.step(&format!("job {j1} submitted -> {at} processed"), t, say);
    // The roles of now: a loaded machine may have seen a takeover already.
    let (coord, standby, epoch) = wait_roles(&run, 0, "roles before wave 1")?;
    say(&format!(
        "  coordinator {coord}, standby {standby}, epoch {epoch}"
    ));
    let victims = plan_wave(
        &mut run,
        &mut seed,
        vec![(coord.clone(), "coordinator")],
        WAVE - 1,
        &[&standby],
    )?;
    let t = wave(&mut run, &victims, &mut report, say)?;
    let (coord2, standby2, epoch2) =
        wait_roles(&run, epoch, "takeover and a new standby after wave 1")?;
    ensure!(
        coord2 == standby,
        "after wave 1 {coord2} coordinates (epoch {epoch2}), not the standby {standby}"
    );
    report.step(
        &format!("wave 1 -> {coord2} coordinates, {standby2} stands by (epoch {epoch2})"),
        t,
        say,
    );
    // ---- Wave 2: the new coordinator, the new standby and one more, during a job.
    let within = if s.second_job {
        JOBS_WITHIN
    } else {
        Duration::from_secs(30)
    };
    let rows = run
        .poll_until(within, |rows, _| !s.second_job || complete(rows, &j1))
        .with_context(|| format!("C1 does not answer or job {j1} is stuck after wave 1"))?;
    let mut running = j1.clone();
    if complete(&rows, &j1) {
        // The first job is done (it outran the takeover, or `second_job`): the second
        // wave hits a second job while the first one's results are re-replicated.
        let j2 = submit(&run, "inception_v3")?;
        report
            .jobs
            .push((j2.clone(), "inception_v3".into(), inputs.len()));
        say(&format!(
            "  job {j1} finished before wave 2; wave 2 during job {j2}"
        ));
        let rows = wait_processed(&mut run, &j2, 1)?;
        ensure!(!complete(&rows, &j2), "job {j2} finished before wave 2");
        running = j2;
    }
    // The wave comes while re-replication after wave 1 may still run (as in the issue's
    // reproduction), but only once every name has a copy outside the victims: losing
    // every copy of a name (more than m failures before re-replication finished) is
    // outside the promise. Re-checked if the roles change meanwhile.
    let (victims, short, names, epoch3) = loop {
        let (coord3, standby3, epoch3) = wait_roles(&run, epoch2 - 1, "roles before wave 2")?;
        let mut pick_seed = seed;
        let victims = plan_wave(
            &mut run,
            &mut pick_seed,
            vec![(coord3, "coordinator"), (standby3, "standby")],
            WAVE - 2,
            &[],
        )?;
        let doomed: Vec<&String> = victims.iter().map(|v| &v.0).collect();
        let names = all_names(&run, &run.console)?;
        let hs = wait_holders(
            &run,
            &live(&run),
            &names,
            "a copy of every name outside wave 2",
            |h| h.iter().any(|n| !doomed.contains(&n)),
        )?;
        if roles(&run.events(false)).is_some_and(|r| (&r.0, &r.1) == (doomed[0], doomed[1])) {
            let short = hs.values().filter(|h| h.len() < REPLICAS).count();
            break (victims, short, names.len(), epoch3);
        }
    };
    report.step(
        &format!(
            "wave 1 -> a copy of each of {names} names outside wave 2 \
             ({short} names still short of {REPLICAS} copies)"
        ),
        t,
        say,
    );
    let t = wave(&mut run, &victims, &mut report, say)?;
    let (coord4, _, epoch4) = wait(TAKEOVER_WITHIN, "a coordinator after wave 2", || {
        let evs = run.events(false);
        Ok(roles(&evs).filter(|r| r.2 > epoch3).or_else(|| {
            // With three survivors besides it the new coordinator may have no standby
            // yet: the Primary line alone is enough here.
            evs.iter().find_map(|(n, e)| {
                let last = e.iter().rev().find(|e| e.kind == "role")?;
                let ep: u64 = last.get("epoch")?.parse().ok()?;
                (last.get("role") == Some("Primary") && ep > epoch3)
                    .then(|| (n.clone(), String::new(), ep))
            })
        }))
    })?;
    report.step(
        &format!("wave 2 -> {coord4} coordinates (epoch {epoch4})"),
        t,
        say,
    );
    let jobs: Vec<String> = report.jobs.iter().map(|j| j.0.clone()).collect();
    run.poll_until(JOBS_WITHIN, |rows, _| {
        jobs.iter().all(|j| complete(rows, j))
    })
    .with_context(|| {
        format!(
            "jobs {jobs:?} not complete {JOBS_WITHIN:?} after wave 2 (job {running} ran during it)"
        )
    })?;
    report.step("wave 2 -> every job complete", t, say);

    // ---- Afterwards: exactly once, readable, on every survivor.
    let survivors = live(&run);
    report.survivors = survivors.clone();
    let via = run.console.clone();
    let ask = |cmd: Command| ask_json(&run, &via, cmd, BIG_REPLY);
    let results = |job: &str| {
        run.cluster
            .job_results(&via, job, BIG_REPLY)
            .map_err(|e| format!("{e:#}"))?
    };
    for (job, model, _) in &report.jobs {
        check_exactly_once(&ask, &results, job, model, &inputs).map_err(|e| anyhow!(e))?;
    }
    let t = Instant::now();
    let names = all_names(&run, &via)?;
    let want = survivors.len().min(REPLICAS);
    wait_holders(
        &run,
        &survivors,
        &names,
        &format!("{want} copies of every name on the survivors after wave 2"),
        |h| h.len() >= want,
    )?;
    report.names_checked = names.len();
    report.step(
        &format!(
            "wave 2 -> {} names on all {} survivors",
            names.len(),
            survivors.len()
        ),
        t,
        say,
    );
    let t = Instant::now();
    report.results_read = read_back(
        &run,
        &survivors,
        &report.jobs,
        &inputs,
        &names,
        &s.dir.join("got"),
    )?;
    report.step(
        &format!(
            "get of {} result objects from survivors",
            report.results_read
        ),
        t,
        say,
    );
    report.send_dropped = run
        .layout()
        .nodes
        .iter()
        .map(|n| run.cluster.log(&n.0).matches("sdfs send dropped").count())
        .sum();
    report.step("whole scenario", started, say);
    Ok(report)
}

/// `get` of every result object of every job (`names` holds them), spread over the
/// survivors (one thread each): each must parse, line by line, as results of its job and
/// model for the job's inputs, and together they must cover every input of every job.
/// Returns the number of objects read.
fn read_back(
    run: &Run,
    survivors: &[String],
    jobs: &[(String, String, usize)],
    inputs: &[String],
    names: &BTreeSet<String>,
    dir: &Path,
) -> anyhow::Result<usize> {
    fs::create_dir_all(dir)?;
    let wanted: Vec<(String, String, String)> = jobs
        .iter()
        .flat_map(|(job, model, _)| {
            let prefix = format!("results/{job}/");
            names
                .iter()
                .filter(move |n| n.starts_with(&prefix))
                .map(move |n| (job.clone(), model.clone(), n.clone()))
        })
        .collect();
    let known: BTreeSet<&String> = inputs.iter().collect();
    type Found = (Vec<String>, Vec<(String, String)>);
    let (failures, covered): Found = std::thread::scope(|scope| {
        let handles: Vec<_> = survivors
            .iter()
            .enumerate()
            .map(|(k, node)| {
                let part: Vec<&(String, String, String)> =
                    wanted.iter().skip(k).step_by(survivors.len()).collect();
                let known = &known;
                scope.spawn(move || {
                    let addr = run.layout().addr(node).unwrap_or_default().to_string();
                    let mut bad = Vec::new();
                    let mut covered = Vec::new();
                    for (i, (job, model, name)) in part.into_iter().enumerate() {
                        let local: PathBuf = dir.join(format!("{node}-{i}.jsonl"));
                        let got = ask_json(
                            run,
                            &addr,
                            Request::Get {
                                name: name.clone(),
                                local: local.display().to_string(),
                                force: true,
                            },
                            Duration::from_secs(60),
                        )
                        .and_then(|_| fs::read_to_string(&local).map_err(|e| e.to_string()));
                        match got {
                            Ok(text) => {
                                for l in text.lines() {
                                    match serde_json::from_str::<QueryResult>(l) {
                                        Ok(r)
                                            if r.job == *job
                                                && r.model == *model
                                                && known.contains(&r.query) =>
                                        {
                                            covered.push((job.clone(), r.query));
                                        }
                                        Ok(r) => bad.push(format!(
                                            "{name} on {node}: a foreign result {r:?}"
                                        )),
                                        Err(e) => bad.push(format!("{name} on {node}: {e}")),
                                    }
                                }
                            }
                            Err(e) => bad.push(format!("{name} on {node}: {e}")),
                        }
                        let _ = fs::remove_file(&local);
                    }
                    (bad, covered)
                })
            })
            .collect();
        let mut bad = Vec::new();
        let mut covered = Vec::new();
        for h in handles {
            match h.join() {
                Ok((b, c)) => {
                    bad.extend(b);
                    covered.extend(c);
                }
                Err(_) => bad.push("a reader panicked".into()),
            }
        }
        (bad, covered)
    });
    if !failures.is_empty() {
        bail!(
            "{} problems reading {} result objects with get, e.g. {:#?}",
            failures.len(),
            wanted.len(),
            &failures[..failures.len().min(10)]
        );
    }
    let covered: BTreeSet<(String, String)> = covered.into_iter().collect();
    for (job, _, _) in jobs {
        let missing: Vec<&String> = inputs
            .iter()
            .filter(|q| !covered.contains(&(job.clone(), (*q).clone())))
            .take(10)
            .collect();
        if !missing.is_empty() {
            bail!("job {job}: no result object read back holds {missing:?}");
        }
    }
    Ok(wanted.len())
}

/// `dml bench jobs-churn`: synthetic weights, generated images, the scenario, a report.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (root, weights, images) = bench_inputs("jobs-churn", args.images)?;
    let exe = std::env::current_exe().context("cannot find the dml executable")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "bench jobs-churn: {} nodes x 1 inference thread, {} images, batch {}, seed {}, \
         SYNTHETIC weights; CPU {} ({cores} cores); work in {}",
        args.nodes,
        args.images,
        args.batch,
        args.seed,
        cpu_model(),
        root.display()
    );
    let setup = Setup {
        exe: &exe,
        dir: &root.join("cluster"),
        weights: &weights,
        images: &images,
        nodes: args.nodes,
        seed: args.seed,
        batch: args.batch,
        second_job: args.second_job,
    };
    let out = scenario(&setup, &|line| println!("{line}"));
    match &out {
        Ok(report) => print!("\n{}", report.render()),
        Err(_) => println!("logs kept in {}", root.join("cluster").display()),
    }
    if args.keep {
        println!("work kept in {}", root.display());
    } else if out.is_ok() {
        let _ = fs::remove_dir_all(&root);
    }
    out.map(|_| ())
        .with_context(|| format!("seed {}", args.seed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::parse_event;

    fn ev(line: &str) -> LogEvent {
        parse_event(line).unwrap()
    }

    #[test]
    fn roles_take_the_newest_primary_and_its_own_standby() {
        let e = |w, role, epoch| {
            ev(&format!(
                "event=role wall={w} role={role} epoch={epoch} coordinator=x standby=None"
            ))
        };
        let nodes = vec![
            ("H1".to_string(), vec![e(1, "Primary", 1)]),
            (
                "H2".to_string(),
                vec![e(1, "Standby", 1), e(5, "Primary", 2)],
            ),
            ("H3".to_string(), vec![e(2, "Standby", 1)]),
            ("H4".to_string(), vec![e(6, "Standby", 2)]),
        ];
        assert_eq!(roles(&nodes), Some(("H2".into(), "H4".into(), 2)));
        // No standby in the newest epoch yet: no pair.
        assert_eq!(roles(&nodes[..3]), None);
    }

    #[test]
    fn picks_are_distinct_and_replayable() {
        let from: Vec<String> = (1..=6).map(|i| format!("H{i}")).collect();
        let (mut a, mut b) = (7, 7);
        let x = pick(&mut a, &from, 3);
        assert_eq!(x, pick(&mut b, &from, 3));
        assert_eq!(x.iter().collect::<BTreeSet<_>>().len(), 3);
        assert_eq!(pick(&mut a, &from[..2], 3).len(), 2);
    }
}
