//! `dml bench idunno`: the inference assignment's measurements on real local clusters of
//! `dml` child processes (this executable): (1a) the worker split and query-rate ratio
//! chosen when a second job joins a running one, (1b) the time until the second job's
//! first query is done, (2) the time from `kill -9` of a busy worker until the cluster's
//! completion rate is back to normal, (3) the time from `kill -9` of the coordinator until
//! batches flow again (detection, takeover, first new batch), and (4) the cluster's
//! overhead against `dml classify` in one process with the same total thread count.
//!
//! One fresh cluster per trial runs all of (1)-(3) in sequence, because each trial kills
//! nodes. Timestamps of failures and takeovers come from the nodes' own
//! `event=... wall=<unix ms>` log lines; rates come from C1 polled every 100 ms. The pure
//! parts (log and C1/C5 parsing, statistics, the recovery rule) are unit-tested.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dml_actors::clock::wall_ms;
use dml_models::{Classifier, Network};

pub use crate::logs::{
    current_reign, first_failed, first_primary, parse_c1, parse_c5, parse_event, parse_events,
    LogEvent, Rate,
};
use crate::session::{bench_inputs, cpu_model, processed_of, submit, write_config, Run};
use crate::stats::mean_std;
/// "Back to normal": this fraction of the completion rate before the crash.
const NORMAL_FRACTION: f64 = 0.9;

/// Options of `dml bench idunno`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Trials per measurement (one fresh cluster each).
    #[arg(long, default_value_t = 5)]
    pub trials: usize,
    /// Nodes per cluster.
    #[arg(long, default_value_t = 8)]
    pub nodes: usize,
    /// Generated images; both jobs run over the same set (one query per image each).
    /// Enough that neither job finishes before the coordinator is killed.
    #[arg(long, default_value_t = 1200)]
    pub images: usize,
    /// Batch size set with C3 for both models (small batches keep commits frequent, so
    /// rates are smooth enough to time a recovery, and few queries are in flight at a
    /// C1 window's edges: batch 2 gave a 6.4% mean / 11.8% worst gap, batch 1 1.9% / 3.1%).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Seconds the first job runs alone (its images/s is the cluster side of (4)).
    #[arg(long, default_value_t = 10.0)]
    pub alone_secs: f64,
    /// Seconds both jobs run before the split is read (C1's window is 10 s).
    #[arg(long, default_value_t = 12.0)]
    pub both_secs: f64,
    /// Window (s) over which the completion rate after a crash is compared with before.
    #[arg(long, default_value_t = 3.0)]
    pub window_secs: f64,
    /// Images classified in one process per trial for (4).
    #[arg(long, default_value_t = 32)]
    pub classify_images: usize,
    /// Keep the temporary configs and logs (their directory is printed).
    #[arg(long)]
    pub keep: bool,
}

// ------------------------------------------------------------------------------------
// Pure part: statistics, log events, C1/C5 parsing, the recovery rule.
// ------------------------------------------------------------------------------------

/// Workers running a batch of `job` in a C5 assignment.
pub fn workers_of(assignment: &[(String, Option<String>)], job: &str) -> usize {
    assignment
        .iter()
        .filter(|(_, j)| j.as_deref() == Some(job))
        .count()
}

/// Relative gap between two rates: |a - b| / max(a, b) (0 when both are 0).
pub fn rate_gap(a: f64, b: f64) -> f64 {
    let hi = a.max(b);
    if hi <= 0.0 {
        0.0
    } else {
        (a - b).abs() / hi
    }
}

/// Completed queries (all jobs) per second between two instants of a series of
/// (wall ms, processed) samples: from the last sample at or before `from` to the last
/// at or before `to`.
pub fn rate_between(series: &[(u64, u64)], from: u64, to: u64) -> Option<f64> {
    let at = |t: u64| series.iter().rev().find(|(w, _)| *w <= t).copied();
    let (t0, p0) = at(from)?;
    let (t1, p1) = at(to)?;
    (t1 > t0).then(|| p1.saturating_sub(p0) as f64 * 1000.0 / (t1 - t0) as f64)
}

/// The recovery rule of (2): the earliest sample time `s` at or after the crash such that
/// the completion rate over `[s, s + window]` is at least `fraction` of `normal`; the
/// result is `s - crash` in ms. `None` while no full window after the crash qualifies.
pub fn recovery_ms(
    series: &[(u64, u64)],
    crash: u64,
    normal: f64,
    window_ms: u64,
    fraction: f64,
) -> Option<u64> {
    let window_ms = window_ms.max(1);
    for (i, (t0, p0)) in series.iter().enumerate() {
        if *t0 < crash {
            continue;
        }
        let (t1, p1) = series
            .iter()
            .skip(i + 1)
            .find(|(t, _)| *t >= t0 + window_ms)?;
        let rate = p1.saturating_sub(*p0) as f64 * 1000.0 / (t1 - t0) as f64;
        if rate >= fraction * normal {
            return Some(t0 - crash);
        }
    }
    None
}

/// The figures of one trial; `None` where a step did not happen in time.
#[derive(Debug, Clone, Default)]
pub struct Trial {
    /// (4) images/s of the whole cluster running the first job alone.
    pub cluster_ips: Option<f64>,
    /// (4) images/s of one process classifying the same images.
    pub classify_ips: Option<f64>,
    /// (1a) workers of job A and job B in C5, averaged over a few samples.
    pub workers: Option<(f64, f64)>,
    /// (1a) C1 rates of job A and job B.
    pub rates: Option<(f64, f64)>,
    /// (1b) second job submitted -> its first query done (ms).
    pub second_start_ms: Option<f64>,
    /// (1b) second job submitted -> a worker starts computing its first batch (ms), from
    /// the workers' `event=job_compute_started`.
    pub second_exec_ms: Option<f64>,
    /// (2) worker killed -> first `event=failed` of it (ms).
    pub worker_detect_ms: Option<f64>,
    /// (2) worker killed -> completion rate back to normal (ms).
    pub worker_recovery_ms: Option<f64>,
    /// (3) coordinator killed -> first `event=failed` of it (ms).
    pub coord_detect_ms: Option<f64>,
    /// (3) coordinator killed -> standby's `event=role role=Primary` (ms).
    pub coord_takeover_ms: Option<f64>,
    /// (3) coordinator killed -> processed count grows past its value at the kill (ms).
    pub coord_first_batch_ms: Option<f64>,
}

fn fmt_ms(v: Option<(f64, f64)>) -> String {
    v.map_or("-".into(), |(m, s)| {
        format!("{:.2} ± {:.2} s", m / 1000.0, s / 1000.0)
    })
}

fn fmt_num(v: Option<(f64, f64)>, digits: usize) -> String {
    v.map_or("-".into(), |(m, s)| format!("{m:.digits$} ± {s:.digits$}"))
}

/// Mean ± std of one figure over the trials, with how many trials gave it.
fn over(trials: &[Trial], f: impl Fn(&Trial) -> Option<f64>) -> (Option<(f64, f64)>, usize) {
    let v: Vec<f64> = trials.iter().filter_map(f).collect();
    (mean_std(&v), v.len())
}

/// The table of results with the published peer figures.
pub fn render(trials: &[Trial]) -> String {
    let n = trials.len();
    let mut rows: Vec<(String, String, usize, String)> = Vec::new();
    let mut push = |what: &str, (v, k): (Option<(f64, f64)>, usize), ms: bool, peer: &str| {
        let value = if ms { fmt_ms(v) } else { fmt_num(v, 2) };
        rows.push((what.to_string(), value, k, peer.to_string()));
    };
    push(
        "(1a) workers on job A (resnet50)",
        over(trials, |t| t.workers.map(|w| w.0)),
        false,
        "",
    );
    push(
        "(1a) workers on job B (inception_v3)",
        over(trials, |t| t.workers.map(|w| w.1)),
        false,
        "",
    );
    push(
        "(1a) C1 rate A (q/s)",
        over(trials, |t| t.rates.map(|r| r.0)),
        false,
        "",
    );
    push(
        "(1a) C1 rate B (q/s)",
        over(trials, |t| t.rates.map(|r| r.1)),
        false,
        "",
    );
    push(
        "(1a) rate ratio A/B",
        over(trials, |t| {
            t.rates.and_then(|r| (r.1 > 0.0).then(|| r.0 / r.1))
        }),
        false,
        "",
    );
    push(
        "(1a) rate gap |A-B|/max (%)",
        over(trials, |t| t.rates.map(|r| 100.0 * rate_gap(r.0, r.1))),
        false,
        "5.6% (goal <= 10%)",
    );
    let worst = trials
        .iter()
        .filter_map(|t| t.rates.map(|r| 100.0 * rate_gap(r.0, r.1)))
        .fold(None, |m: Option<f64>, g| Some(m.map_or(g, |m| m.max(g))));
    rows.push((
        "(1a) rate gap, worst trial (%)".into(),
        worst.map_or("-".into(), |g| format!("{g:.2}")),
        trials.iter().filter(|t| t.rates.is_some()).count(),
        "goal <= 10% in every trial".into(),
    ));
    let mut push = |what: &str, (v, k): (Option<(f64, f64)>, usize), ms: bool, peer: &str| {
        let value = if ms { fmt_ms(v) } else { fmt_num(v, 2) };
        rows.push((what.to_string(), value, k, peer.to_string()));
    };
    push(
        "(1b) second job: submit -> starts executing",
        over(trials, |t| t.second_exec_ms),
        true,
        "1.1-3 s (goal <= 3 s)",
    );
    push(
        "(1b) second job: submit -> first query done",
        over(trials, |t| t.second_start_ms),
        true,
        "",
    );
    push(
        "(2) worker kill -> detected (event=failed)",
        over(trials, |t| t.worker_detect_ms),
        true,
        "",
    );
    push(
        "(2) worker kill -> rate >= 90% of before",
        over(trials, |t| t.worker_recovery_ms),
        true,
        "0.6-5.4 s",
    );
    push(
        "(3) coordinator kill -> detected",
        over(trials, |t| t.coord_detect_ms),
        true,
        "",
    );
    push(
        "(3) coordinator kill -> standby Primary",
        over(trials, |t| t.coord_takeover_ms),
        true,
        "",
    );
    push(
        "(3) coordinator kill -> first new batch",
        over(trials, |t| t.coord_first_batch_ms),
        true,
        "1.05-8 s",
    );
    push(
        "(4) cluster images/s, one job",
        over(trials, |t| t.cluster_ips),
        false,
        "",
    );
    push(
        "(4) one-process classify images/s",
        over(trials, |t| t.classify_ips),
        false,
        "",
    );
    push(
        "(4) cluster / classify (ratio)",
        over(trials, |t| Some(t.cluster_ips? / t.classify_ips?)),
        false,
        "goal >= 0.95 (overhead < 5%)",
    );
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let v = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(12);
    let mut out = format!(
        "{:w$}  {:v$}  {:>6}  peers / goal\n",
        "measurement", "mean ± std", "trials"
    );
    for (what, value, k, peer) in rows {
        out.push_str(&format!("{what:w$}  {value:v$}  {k:>3}/{n:<2}  {peer}\n"));
    }
    out
}

/// One trial: a fresh cluster, (1) to (3) in sequence, then (4)'s one-process side.
fn trial(
    k: usize,
    args: &Args,
    root: &Path,
    weights: &Path,
    images: &Path,
) -> anyhow::Result<Trial> {
    let mut out = Trial::default();
    let dir = root.join(format!("trial-{k}"));
    let mut run = Run::start(write_config(&dir, args.nodes, weights)?, &[])?;
    let stored = run.prepare(&["resnet50", "inception_v3"], args.batch, images)?;
    println!(
        "  trial {k}: cluster of {} formed, {} images stored in {:.1} s",
        args.nodes,
        args.images,
        stored.as_secs_f64()
    );

    // (4), cluster side: the first job alone, timed after its first results (start-up
    // of the pipeline is not throughput).
    let a = submit(&run, "resnet50")?;
    run.poll_until(Duration::from_secs(60), |rows, _| {
        processed_of(rows, &a) > 0
    })
    .context("job A did not start within 60 s")?;
    let warm = wall_ms() + 2000;
    let alone_end = warm + (args.alone_secs * 1000.0) as u64;
    run.poll_until(Duration::from_secs_f64(args.alone_secs + 3.0), |_, _| {
        wall_ms() >= alone_end
    });
    out.cluster_ips = rate_between(&run.series, warm, alone_end);

    // (1b) and (1a).
    let submitted = Instant::now();
    let submitted_wall = wall_ms();
    let b = submit(&run, "inception_v3")?;
    if run
        .poll_until(Duration::from_secs(60), |rows, _| {
            processed_of(rows, &b) > 0
        })
        .is_some()
    {
        out.second_start_ms = Some(submitted.elapsed().as_secs_f64() * 1000.0);
        out.second_exec_ms = run
            .events(true)
            .iter()
            .flat_map(|(_, evs)| evs.iter())
            .filter(|e| e.kind == "job_compute_started" && e.get("job") == Some(b.as_str()))
            .map(|e| e.wall.saturating_sub(submitted_wall) as f64)
            .reduce(f64::min);
    }
    let split_at = Instant::now() + Duration::from_secs_f64(args.both_secs);
    run.poll_until(Duration::from_secs_f64(args.both_secs + 3.0), |_, _| {
        Instant::now() >= split_at
    });
    let (mut wa, mut wb, mut samples) = (0.0, 0.0, 0.0);
    let mut rates = None;
    for _ in 0..5 {
        if let Some(c5) = run.c5() {
            wa += workers_of(&c5, &a) as f64;
            wb += workers_of(&c5, &b) as f64;
            samples += 1.0;
        }
        if let Some(rows) = run.c1() {
            let r = |j: &str| rows.iter().find(|r| r.job == j).map(|r| r.rate_qps);
            if let (Some(ra), Some(rb)) = (r(&a), r(&b)) {
                rates = Some((ra, rb));
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    if samples > 0.0 {
        out.workers = Some((wa / samples, wb / samples));
    }
    out.rates = rates;

    // (2): a worker running a batch, neither coordinator nor standby nor the console.
    let reign = run.reign();
    let busy = run.c5().unwrap_or_default();
    let spare: Vec<&String> = [
        reign.as_ref().map(|r| &r.0),
        reign.as_ref().and_then(|r| r.1.as_ref()),
        Some(&run.console),
    ]
    .into_iter()
    .flatten()
    .collect();
    let victim = busy
        .iter()
        .find(|(node, job)| job.is_some() && !spare.contains(&node))
        .and_then(|(node, _)| run.name_of(node));
    match victim {
        Some(victim) => {
            let now = wall_ms();
            let normal = rate_between(&run.series, now.saturating_sub(8000), now).unwrap_or(0.0);
            let addr = run.layout().addr(&victim).unwrap_or_default().to_string();
            let crash = run.kill(&victim)?;
            let window = (args.window_secs * 1000.0) as u64;
            run.poll_until(Duration::from_secs(40), |_, run| {
                recovery_ms(&run.series, crash, normal, window, NORMAL_FRACTION).is_some()
            });
            out.worker_recovery_ms =
                recovery_ms(&run.series, crash, normal, window, NORMAL_FRACTION).map(|v| v as f64);
            out.worker_detect_ms = run
                .events(false)
                .iter()
                .filter_map(|(_, ev)| first_failed(ev, &addr, crash))
                .min()
                .map(|w| w.saturating_sub(crash) as f64);
            println!(
                "  trial {k}: worker {victim} killed; normal {normal:.2} q/s; back to normal after {}",
                out.worker_recovery_ms
                    .map_or("-".into(), |v| format!("{:.2} s", v / 1000.0))
            );
        }
        None => println!("  trial {k}: no busy worker to kill (C5 {busy:?})"),
    }

    // (3): the coordinator; batches must still be flowing.
    std::thread::sleep(Duration::from_secs(2));
    let rows = run.c1().unwrap_or_default();
    if rows.iter().any(|r| r.complete) {
        println!("  trial {k}: a job finished before the coordinator kill: raise --images");
    }
    match run.reign() {
        Some((coord, Some(standby))) if coord != run.console => {
            let coord_name = run.name_of(&coord).context("unknown coordinator")?;
            let standby_name = run.name_of(&standby).context("unknown standby")?;
            let before: u64 = rows.iter().map(|r| r.processed).sum();
            let crash = run.kill(&coord_name)?;
            let mut first_batch = None;
            run.poll_until(Duration::from_secs(40), |rows, run| {
                let total: u64 = rows.iter().map(|r| r.processed).sum();
                if total > before && first_batch.is_none() {
                    first_batch = Some(wall_ms());
                }
                let took_over = run
                    .events(false)
                    .iter()
                    .any(|(n, ev)| *n == standby_name && first_primary(ev, crash).is_some());
                first_batch.is_some() && took_over
            });
            let events = run.events(false);
            out.coord_detect_ms = events
                .iter()
                .filter_map(|(_, ev)| first_failed(ev, &coord, crash))
                .min()
                .map(|w| w.saturating_sub(crash) as f64);
            out.coord_takeover_ms = events
                .iter()
                .filter(|(n, _)| *n == standby_name)
                .find_map(|(_, ev)| first_primary(ev, crash))
                .map(|w| w.saturating_sub(crash) as f64);
            out.coord_first_batch_ms = first_batch.map(|w| w.saturating_sub(crash) as f64);
            println!(
                "  trial {k}: coordinator {coord_name} killed; standby {standby_name}: {:?}",
                (
                    out.coord_detect_ms,
                    out.coord_takeover_ms,
                    out.coord_first_batch_ms
                )
            );
        }
        other => println!("  trial {k}: no coordinator/standby pair to test ({other:?})"),
    }
    let logs = run.layout().log_dir.clone();
    drop(run);
    if !args.keep {
        let _ = fs::remove_dir_all(&dir);
    } else {
        println!("  trial {k}: logs in {}", logs.display());
    }

    // (4), one-process side, after the cluster is gone so both sides had the machine.
    out.classify_ips = Some(classify_ips(
        weights,
        images,
        args.nodes,
        args.batch,
        args.classify_images,
    )?);
    Ok(out)
}

/// Images/s of one in-process ResNet50 classifier with `threads` threads over the first
/// `n` images, in batches of `batch`, after one warm-up batch; decoding included, as on
/// a worker.
fn classify_ips(
    weights: &Path,
    images: &Path,
    threads: usize,
    batch: usize,
    n: usize,
) -> anyhow::Result<f64> {
    let classifier = Classifier::load(Network::ResNet50, weights, threads)?;
    let mut files: Vec<PathBuf> = fs::read_dir(images)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let bytes: Vec<Vec<u8>> = files
        .iter()
        .take(n.max(batch))
        .map(fs::read)
        .collect::<Result<_, _>>()?;
    let mut chunks = bytes.chunks(batch.max(1));
    if let Some(first) = chunks.next() {
        let _ = classifier.classify_batch(first);
    }
    let t = Instant::now();
    let mut done = 0usize;
    for chunk in chunks {
        let out = classifier.classify_batch(chunk);
        done += out.results.iter().filter(|r| r.is_ok()).count();
    }
    let secs = t.elapsed().as_secs_f64();
    if done == 0 || secs <= 0.0 {
        bail!("nothing classified");
    }
    Ok(done as f64 / secs)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.trials == 0 || args.nodes < 4 || args.batch == 0 {
        bail!("need --trials >= 1, --nodes >= 4 (coordinator, standby, victim, console), --batch >= 1");
    }
    let started = Instant::now();
    let (root, weights, images) = bench_inputs("idunno", args.images)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "bench idunno: {} trials, {} nodes x 1 inference thread, {} images, batch {}, \
         SYNTHETIC weights; CPU {} ({cores} cores); work in {}",
        args.trials,
        args.nodes,
        args.images,
        args.batch,
        cpu_model(),
        root.display()
    );
    let mut trials = Vec::new();
    for k in 1..=args.trials {
        match trial(k, args, &root, &weights, &images) {
            Ok(t) => trials.push(t),
            Err(e) => println!("  trial {k} failed: {e:#}"),
        }
    }
    if !args.keep {
        let _ = fs::remove_dir_all(&root);
    }
    println!(
        "\nbench idunno: {} of {} trials completed in {:.0} s\n",
        trials.len(),
        args.trials,
        started.elapsed().as_secs_f64()
    );
    print!("{}", render(&trials));
    if trials.is_empty() {
        bail!("no trial completed");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
