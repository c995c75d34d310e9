//! `dml bench cluster`: the failure-detector benchmark. It starts real local clusters of
//! `dml introducer` / `dml node` child processes (this executable) on free loopback ports
//! and measures, from the nodes' own `event=... wall=<unix ms>` log lines:
//! 1. detection and removal-everywhere times after `kill -9` of a random node, at the
//!    seed's timings and at fast timings;
//! 2. background bytes per second per node in a quiet cluster, at two cluster sizes, from
//!    the transport counters behind the `stats` command;
//! 3. false removals per node-hour with simulated loss, with and without suspicion.
//!
//! Figures come from logs rather than from polling `list_mem`, so polling cadence does
//! not blur them. The pure parts (log parsing, per-trial figures) are separate from the
//! process shell and unit-tested.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use dml_actors::clock::wall_ms;
use dml_actors::control::Command;
use dml_cluster::{wait_until, Cluster, Options, Stop, TestConfig};

use crate::stats::{mean, summarize, Summary};

mod inproc;

use inproc::InProcNodes;

/// The secret of the throw-away benchmark clusters (their config lives in a temp dir).
const SECRET: &str = "dml-bench-cluster-secret-0123456789";

/// Options of `dml bench cluster`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Trials per timing profile (kill -9 of one random node each).
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// Trials at the seed's timings (about 20 s each); defaults to --trials.
    #[arg(long)]
    pub seed_trials: Option<usize>,
    /// Seed of the victim choice; printed, so a run can be repeated.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Nodes in the detection and loss clusters.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Parts to run: detect, bytes, loss.
    #[arg(long, value_delimiter = ',', default_value = "detect,bytes,loss")]
    pub only: Vec<String>,
    /// Cluster sizes for the background-traffic measurement with one process per node.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    pub bytes_sizes: Vec<usize>,
    /// Cluster sizes for the same measurement with the nodes' membership and transport
    /// hosted in this process (a full node process loads both networks, about 400 MB
    /// each, so 50 of them do not fit a small machine).
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    pub bytes_inproc_sizes: Vec<usize>,
    /// Longest wait for background traffic to become steady after formation (the
    /// piggybacked news of the joins dies out first).
    #[arg(long, default_value_t = 240.0)]
    pub settle_secs: f64,
    /// Shortest wait after formation before traffic may count as steady: while a node's
    /// gossip queue holds more than one message's worth of updates, every ping carries
    /// the maximum and the rate looks flat although it is still draining (at 50 nodes
    /// the join news takes about a minute to drain).
    #[arg(long, default_value_t = 90.0)]
    pub min_settle_secs: f64,
    /// Seconds over which background traffic is measured.
    #[arg(long, default_value_t = 30.0)]
    pub bytes_secs: f64,
    /// Drop rates of the loss experiment (outbound control-lane messages).
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.2")]
    pub loss_rates: Vec<f64>,
    /// Seconds each loss run lasts (one run per rate, with and without suspicion).
    #[arg(long, default_value_t = 45.0)]
    pub loss_secs: f64,
    /// Keep the temporary configs and logs (their directory is printed).
    #[arg(long)]
    pub keep: bool,
}

// ------------------------------------------------------------------------------------
// Pure part: timing profiles, log events, statistics.
// ------------------------------------------------------------------------------------

/// Failure-detector timings, in seconds as in config.toml.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    pub ping_duration: f64,
    pub ping_timeout: f64,
    pub cleanup_time: f64,
}

impl Profile {
    /// The seed's timings (the committed config.toml).
    pub const SEED: Profile = Profile {
        name: "seed",
        ping_duration: 2.5,
        ping_timeout: 2.0,
        cleanup_time: 10.0,
    };
    /// The short timings of the cluster tests.
    pub const FAST: Profile = Profile {
        name: "fast",
        ping_duration: 0.5,
        ping_timeout: 0.3,
        cleanup_time: 1.5,
    };

    /// The goal for removal everywhere at p99, in ms.
    pub fn goal_ms(&self) -> f64 {
        (self.ping_duration + self.ping_timeout + self.cleanup_time + 0.2) * 1000.0
    }
}

/// One membership event line of a node's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `suspected`, `failed`, `refuted`, `joined`, `left`, `rejoin`, ...
    pub kind: String,
    pub wall: u64,
    /// The member it is about; absent for events about the node itself.
    pub peer: Option<String>,
    pub incarnation: Option<u64>,
}

/// Parses a tracing line such as
/// `... WARN dml_actors::membership::membership_actor: event=failed wall=1700000000123 peer=127.0.0.1:8003 incarnation=7`.
/// Lines without `event=` and `wall=` are not events.
pub fn parse_event(line: &str) -> Option<Event> {
    let mut kind = None;
    let mut wall = None;
    let mut peer = None;
    let mut incarnation = None;
    for word in line.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "event" if kind.is_none() => kind = Some(value.to_string()),
            "wall" => wall = value.parse().ok(),
            "peer" => peer = Some(value.trim_matches('"').to_string()),
            "incarnation" => incarnation = value.parse().ok(),
            _ => {}
        }
    }
    Some(Event {
        kind: kind?,
        wall: wall?,
        peer,
        incarnation,
    })
}

/// Every event in `text`, in order.
pub fn parse_events(text: &str) -> Vec<Event> {
    text.lines().filter_map(parse_event).collect()
}

/// The earliest `kind` event about `peer` at or after `since`, in these events.
fn first_about(events: &[Event], kind: &str, peer: &str, since: u64) -> Option<u64> {
    events
        .iter()
        .filter(|e| e.kind == kind && e.peer.as_deref() == Some(peer) && e.wall >= since)
        .map(|e| e.wall)
        .min()
}

/// The figures of one kill trial.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trial {
    /// First suspicion of the victim anywhere, ms after the kill.
    pub detect_ms: Option<f64>,
    /// The last live node's removal of the victim, ms after the kill; `None` while some
    /// live node has not removed it.
    pub removed_ms: Option<f64>,
}

/// Computes a trial from the live nodes' events since the kill at `kill_ms`.
pub fn trial_figures(live_events: &[Vec<Event>], victim: &str, kill_ms: u64) -> Trial {
    let after = |t: u64| t.saturating_sub(kill_ms) as f64;
    let detect = live_events
        .iter()
        .filter_map(|ev| first_about(ev, "suspected", victim, kill_ms))
        .min()
        .map(after);
    let removals: Vec<Option<u64>> = live_events
        .iter()
        .map(|ev| first_about(ev, "failed", victim, kill_ms))
        .collect();
    let removed = if removals.iter().all(Option::is_some) {
        removals.into_iter().flatten().max().map(after)
    } else {
        None
    };
    Trial {
        detect_ms: detect,
        removed_ms: removed,
    }
}

/// `kind` events in `[from, to]`: distinct (peer, incarnation) pairs (a removal or a
/// suspicion spreads to every node but is one episode), and the lines summed over
/// observers.
pub fn count_distinct(per_node: &[Vec<Event>], kind: &str, from: u64, to: u64) -> (usize, usize) {
    let mut distinct = BTreeSet::new();
    let mut lines = 0;
    for ev in per_node.iter().flatten() {
        if ev.kind == kind && (from..=to).contains(&ev.wall) {
            lines += 1;
            distinct.insert((ev.peer.clone(), ev.incarnation));
        }
    }
    (distinct.len(), lines)
}

/// A seeded generator for the victim choice (splitmix64: the root package has no RNG
/// crate, and the choice only needs to be repeatable, not strong).
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n` > 0; the modulo bias is irrelevant for small n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Renders an optional millisecond figure as seconds.
fn secs(ms: Option<f64>) -> String {
    ms.map_or("-".into(), |m| format!("{:.2}", m / 1000.0))
}

// ------------------------------------------------------------------------------------
// Process shell: a local cluster of child processes.
// ------------------------------------------------------------------------------------

/// Writes a config for `n` nodes (`extra_fd` goes into `[failure_detector]`) in a temp
/// directory and starts the introducer, and the nodes as processes if `spawn_nodes`.
/// Dropping it kills every child and removes the directory unless asked to keep it.
fn start(
    label: &str,
    n: usize,
    p: &Profile,
    extra_fd: &str,
    keep: bool,
    spawn_nodes: bool,
) -> anyhow::Result<Cluster> {
    let exe = std::env::current_exe().context("cannot find the dml executable")?;
    let dir = std::env::temp_dir().join(format!("dml-bench-{}-{label}", std::process::id()));
    let layout = TestConfig {
        secret: SECRET,
        nodes: n,
        ping_duration: p.ping_duration,
        ping_timeout: p.ping_timeout,
        cleanup_time: p.cleanup_time,
        fd_extra: extra_fd,
        extra: "",
    }
    .write(&dir)?;
    let opts = Options {
        env: vec![("RUST_LOG".into(), "info".into())],
        spawn_nodes,
        stop: Stop::Kill,
        own_dir: Some(dir),
        keep,
        // With simulated loss the node drops a share of its replies too.
        tries: 8,
        reply_within: Duration::from_secs(1),
        // Benchmarks and tests run on synthetic weights, and say so.
        synthetic_weights: true,
        ..Options::default()
    };
    Cluster::start(&exe, layout, opts)
}

/// Name and address of node `i`.
fn node(c: &Cluster, i: usize) -> anyhow::Result<(String, String)> {
    c.layout.nodes.get(i).cloned().context("no such node")
}

/// Waits until every node lists every node (alive, or suspect too unless `alive_only`).
fn wait_all(c: &Cluster, within: Duration, alive_only: bool) -> anyhow::Result<Duration> {
    let all: Vec<String> = c.layout.nodes.iter().map(|n| n.1.clone()).collect();
    c.wait_members(&all, within, alive_only)
}

fn log_len(c: &Cluster, i: usize) -> u64 {
    c.layout
        .nodes
        .get(i)
        .and_then(|n| std::fs::metadata(c.layout.log_path(&n.0)).ok())
        .map_or(0, |m| m.len())
}

/// Events of node `i` written at or after byte `offset` of its log.
fn events_from(c: &Cluster, i: usize, offset: u64) -> Vec<Event> {
    let Some(n) = c.layout.nodes.get(i) else {
        return Vec::new();
    };
    let mut text = String::new();
    if let Ok(mut f) = File::open(c.layout.log_path(&n.0)) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            // A line cut in the middle of a write is simply not an event yet.
            let _ = f.read_to_string(&mut text);
        }
    }
    parse_events(&text)
}

fn all_events(c: &Cluster) -> Vec<Vec<Event>> {
    (0..c.layout.nodes.len())
        .map(|i| events_from(c, i, 0))
        .collect()
}

// ------------------------------------------------------------------------------------
// The three experiments.
// ------------------------------------------------------------------------------------

/// Kill trials at one profile: one cluster, `trials` rounds of kill -9, wait for removal
/// everywhere, restart, wait for the rejoin.
fn detection(
    p: &Profile,
    n: usize,
    trials: usize,
    rng: &mut SplitMix,
    keep: bool,
) -> anyhow::Result<Vec<Trial>> {
    let c = &mut start(&format!("detect-{}", p.name), n, p, "", keep, true)?;
    let formed = c.wait_formed(Duration::from_secs(60))?;
    println!("  {n} nodes formed in {:.1} s", formed.as_secs_f64());
    let removal_wait = Duration::from_secs_f64(p.goal_ms() / 1000.0 + 15.0);
    let settle = Duration::from_secs_f64(p.ping_duration + p.ping_timeout);
    let mut out = Vec::new();
    for t in 1..=trials {
        let v = rng.below(n);
        let (victim, victim_addr) = node(c, v).context("no victim")?;
        let live: Vec<usize> = (0..n).filter(|&i| i != v).collect();
        let offsets: Vec<u64> = live.iter().map(|&i| log_len(c, i)).collect();
        let kill_ms = wall_ms();
        c.kill9(&victim)?;
        let events = |c: &Cluster| -> Vec<Vec<Event>> {
            live.iter()
                .zip(&offsets)
                .map(|(&i, &o)| events_from(c, i, o))
                .collect()
        };
        let waited = wait_until(removal_wait, || {
            Ok(trial_figures(&events(c), &victim_addr, kill_ms)
                .removed_ms
                .is_some())
        });
        let trial = trial_figures(&events(c), &victim_addr, kill_ms);
        println!(
            "  trial {t:>2}: kill -9 {:<4} detected {:>6} s  removed everywhere {:>6} s{}",
            victim,
            secs(trial.detect_ms),
            secs(trial.removed_ms),
            if waited.is_err() {
                "  (NOT removed everywhere in time)"
            } else {
                ""
            }
        );
        out.push(trial);
        c.start_node(&victim)?;
        c.wait_formed(Duration::from_secs(60))
            .context("the restarted node did not rejoin")?;
        // Let the monitor sets settle and every prober run once before the next kill.
        std::thread::sleep(settle);
    }
    Ok(out)
}

/// Background traffic of a quiet cluster: bytes per second per node.
#[derive(Debug, Clone, Copy)]
struct Traffic {
    nodes: usize,
    sent_mean: f64,
    sent_min: f64,
    sent_max: f64,
    recv_mean: f64,
    frames_mean: f64,
    /// Seconds from formation until traffic was steady, and the first window's rate.
    settled_s: f64,
    first_window: f64,
}

/// One node's `stats`: (uptime ms, bytes sent, bytes received, frames sent).
type Snapshot = (f64, f64, f64, f64);

fn stats_of(c: &Cluster, addr: &str) -> anyhow::Result<Snapshot> {
    let s = c.ask_json(addr, Command::Stats)?;
    let num = |v: &serde_json::Value| v.as_f64().ok_or_else(|| anyhow!("{addr}: bad stats {s}"));
    let frames =
        num(&s["lanes"]["control"]["frames_sent"])? + num(&s["lanes"]["bulk"]["frames_sent"])?;
    Ok((
        num(&s["uptime_ms"])?,
        num(&s["bytes_sent"])?,
        num(&s["bytes_received"])?,
        frames,
    ))
}

fn snapshot(c: &Cluster) -> anyhow::Result<Vec<Snapshot>> {
    c.layout.nodes.iter().map(|x| stats_of(c, &x.1)).collect()
}

/// Per-node rates between two snapshots: (sent B/s, received B/s, frames sent/s). Each
/// node's own uptime clock times its own counters, so the order in which nodes were
/// asked does not matter.
pub fn rates(before: &[Snapshot], after: &[Snapshot]) -> Option<Vec<(f64, f64, f64)>> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let dt = (a.0 - b.0) / 1000.0;
            (dt > 0.0).then(|| ((a.1 - b.1) / dt, (a.2 - b.2) / dt, (a.3 - b.3) / dt))
        })
        .collect()
}

/// Whether two consecutive windows' rates agree within `tol` (relative): the gossip of
/// the joins has drained and what is left is the steady background.
pub fn is_steady(prev: f64, cur: f64, tol: f64) -> bool {
    prev > 0.0 && ((cur - prev) / prev).abs() <= tol
}

/// Length of the windows compared while waiting for steady traffic.
const SETTLE_WINDOW: Duration = Duration::from_secs(10);

#[allow(clippy::too_many_arguments)]
fn background(
    p: &Profile,
    n: usize,
    min_settle: f64,
    max_settle: f64,
    window: f64,
    keep: bool,
    inproc: bool,
) -> anyhow::Result<Traffic> {
    let label = format!("bytes-{n}{}", if inproc { "-inproc" } else { "" });
    let c = start(&label, n, p, "", keep, !inproc)?;
    // Declared after the cluster, so dropped (stopped) before its introducer.
    let _hosted = if inproc {
        Some(InProcNodes::start(&c)?)
    } else {
        None
    };
    let formed = c.wait_formed(Duration::from_secs(180))?;
    println!("  {n} nodes formed in {:.1} s", formed.as_secs_f64());
    // Right after formation every node still piggybacks the news of every join (each
    // update about 3 log2(n+1) times), so early windows are larger, the more so the
    // bigger the cluster. Wait until two consecutive windows agree.
    let settle_start = Instant::now();
    let mut prev = snapshot(&c)?;
    let mut prev_rate: Option<f64> = None;
    let mut first_rate = None;
    loop {
        std::thread::sleep(SETTLE_WINDOW);
        let cur = snapshot(&c)?;
        let r = rates(&prev, &cur).context("uptime did not advance")?;
        let rate = mean(&r.iter().map(|x| x.0).collect::<Vec<_>>());
        first_rate.get_or_insert(rate);
        let steady = prev_rate.is_some_and(|p| is_steady(p, rate, 0.03))
            && settle_start.elapsed().as_secs_f64() >= min_settle;
        prev = cur;
        prev_rate = Some(rate);
        if steady || settle_start.elapsed().as_secs_f64() >= max_settle {
            println!(
                "  {} after {:.0} s (first window {:.0} B/s per node, last {:.0}); measuring {window} s",
                if steady { "steady" } else { "NOT steady" },
                settle_start.elapsed().as_secs_f64(),
                first_rate.unwrap_or(0.0),
                rate
            );
            break;
        }
    }
    let before = snapshot(&c)?;
    std::thread::sleep(Duration::from_secs_f64(window));
    let after = snapshot(&c)?;
    let r = rates(&before, &after).context("uptime did not advance")?;
    let sent: Vec<f64> = r.iter().map(|x| x.0).collect();
    // No removal may happen in a quiet cluster; a removal would also skew the figure.
    // (In-process nodes log nowhere: their views must still be complete.)
    let (removals, _) = count_distinct(&all_events(&c), "failed", 0, u64::MAX);
    if removals > 0 || c.wait_formed(Duration::from_secs(5)).is_err() {
        println!("  WARNING: removals during the quiet run");
    }
    Ok(Traffic {
        nodes: n,
        sent_mean: mean(&sent),
        sent_min: sent.iter().copied().fold(f64::INFINITY, f64::min),
        sent_max: sent.iter().copied().fold(0.0, f64::max),
        recv_mean: mean(&r.iter().map(|x| x.1).collect::<Vec<_>>()),
        frames_mean: mean(&r.iter().map(|x| x.2).collect::<Vec<_>>()),
        settled_s: settle_start.elapsed().as_secs_f64() - window,
        first_window: first_rate.unwrap_or(0.0),
    })
}

/// One loss run: false removals (and suspicions) per node-hour.
#[derive(Debug, Clone, Copy)]
struct LossRun {
    rate: f64,
    suspicion: bool,
    node_hours: f64,
    removals: usize,
    removal_lines: usize,
    /// Distinct (peer, incarnation) suspicions and refutations.
    suspicions: usize,
    refutations: usize,
    /// Nodes that found themselves removed and rejoined.
    rejoins: usize,
}

fn loss_run(
    p: &Profile,
    n: usize,
    rate: f64,
    suspicion: bool,
    secs: f64,
    keep: bool,
) -> anyhow::Result<LossRun> {
    let extra = format!("drop_rate = {rate}\nsuspicion = {suspicion}");
    let label = format!("loss-{rate}-{}", if suspicion { "susp" } else { "nosusp" });
    let c = start(&label, n, p, &extra, keep, true)?;
    // Under loss the cluster may never look complete from every node at once (that is
    // what is measured); start the clock once it did or after a bounded wait.
    if let Err(e) = wait_all(&c, Duration::from_secs(60), false) {
        println!("  note: {e:#}; measuring anyway");
    }
    let from = wall_ms();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let to = wall_ms();
    let events = all_events(&c);
    let (removals, removal_lines) = count_distinct(&events, "failed", from, to);
    Ok(LossRun {
        rate,
        suspicion,
        node_hours: n as f64 * (to.saturating_sub(from)) as f64 / 3_600_000.0,
        removals,
        removal_lines,
        suspicions: count_distinct(&events, "suspected", from, to).0,
        refutations: count_distinct(&events, "refuted", from, to).0,
        rejoins: count_distinct(&events, "rejoin", from, to).1,
    })
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    let seed = args.seed.unwrap_or_else(wall_ms);
    let wants = |part: &str| args.only.iter().any(|o| o == part);
    let started = Instant::now();
    println!("dml bench cluster: seed {seed} (repeat with --seed {seed})");
    let mut rng = SplitMix::new(seed);
    let mut report = Vec::new();

    if wants("detect") {
        let seed_trials = args.seed_trials.unwrap_or(args.trials);
        report.push(format!(
            "### Detection and removal after kill -9 ({} nodes, seed {seed})\n\n\
             | profile (ping_duration / ping_timeout / cleanup_time) | trials | detection p50 / p99 / max (s) | removal everywhere p50 / p99 / max (s) | goal p99 (s) | met |\n|---|---|---|---|---|---|",
            args.nodes
        ));
        for (p, trials) in [(Profile::FAST, args.trials), (Profile::SEED, seed_trials)] {
            if trials == 0 {
                continue;
            }
            println!(
                "\n== detection, {} timings ({} / {} / {} s), {trials} trials",
                p.name, p.ping_duration, p.ping_timeout, p.cleanup_time
            );
            let t = detection(&p, args.nodes, trials, &mut rng, args.keep)?;
            let det: Vec<f64> = t.iter().filter_map(|x| x.detect_ms).collect();
            let rem: Vec<f64> = t.iter().filter_map(|x| x.removed_ms).collect();
            let missing = t.len() - rem.len();
            let fmt = |s: Option<Summary>| {
                s.map_or("-".into(), |s| {
                    format!(
                        "{:.2} / {:.2} / {:.2}",
                        s.p50 / 1000.0,
                        s.p99 / 1000.0,
                        s.max / 1000.0
                    )
                })
            };
            let rs = summarize(&rem);
            let met = missing == 0 && rs.is_some_and(|s| s.p99 <= p.goal_ms());
            let line = format!(
                "| {} ({} / {} / {}) | {}{} | {} | {} | {:.2} | {} |",
                p.name,
                p.ping_duration,
                p.ping_timeout,
                p.cleanup_time,
                t.len(),
                if missing > 0 {
                    format!(" ({missing} not removed everywhere)")
                } else {
                    String::new()
                },
                fmt(summarize(&det)),
                fmt(rs),
                p.goal_ms() / 1000.0,
                if met { "yes" } else { "no" }
            );
            println!("{line}");
            report.push(line);
        }
    }

    if wants("bytes") {
        let p = Profile::SEED;
        report.push(
            "\n### Background traffic in a quiet cluster (seed timings)\n\n\
             | nodes | hosted as | sent B/s per node (mean, min-max) | received B/s per node | frames sent/s per node | steady after (s) | first 10 s window (B/s) |\n|---|---|---|---|---|---|---|"
                .into(),
        );
        let runs = args.bytes_sizes.iter().map(|&n| (n, false));
        for (n, inproc) in runs.chain(args.bytes_inproc_sizes.iter().map(|&n| (n, true))) {
            let how = if inproc {
                "in-process nodes"
            } else {
                "node processes"
            };
            println!("\n== background traffic, {n} {how}, {} timings", p.name);
            let t = background(
                &p,
                n,
                args.min_settle_secs,
                args.settle_secs,
                args.bytes_secs,
                args.keep,
                inproc,
            )?;
            let line = format!(
                "| {} | {how} | {:.0} ({:.0}-{:.0}) | {:.0} | {:.2} | {:.0} | {:.0} |",
                t.nodes,
                t.sent_mean,
                t.sent_min,
                t.sent_max,
                t.recv_mean,
                t.frames_mean,
                t.settled_s,
                t.first_window
            );
            println!("{line}");
            report.push(line);
        }
    }

    if wants("loss") {
        let p = Profile::FAST;
        report.push(format!(
            "\n### False removals under loss ({} nodes, fast timings, {} s per run)\n\n\
             | drop rate | suspicion | node-hours | false removals | per node-hour | suspicions | refutations | rejoins |\n|---|---|---|---|---|---|---|---|",
            args.nodes, args.loss_secs
        ));
        for &rate in &args.loss_rates {
            for suspicion in [true, false] {
                println!(
                    "\n== loss {rate}, suspicion {}",
                    if suspicion { "on" } else { "off" }
                );
                let r = loss_run(&p, args.nodes, rate, suspicion, args.loss_secs, args.keep)?;
                let line = format!(
                    "| {} | {} | {:.3} | {} ({} log lines) | {:.1} | {} | {} | {} |",
                    r.rate,
                    if r.suspicion { "on" } else { "off" },
                    r.node_hours,
                    r.removals,
                    r.removal_lines,
                    r.removals as f64 / r.node_hours.max(f64::MIN_POSITIVE),
                    r.suspicions,
                    r.refutations,
                    r.rejoins
                );
                println!("{line}");
                report.push(line);
            }
        }
    }

    println!("\n---- summary (markdown) ----\n{}", report.join("\n"));
    println!("\ntotal wall time {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests;
