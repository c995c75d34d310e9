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
//! not blur them. The pure parts (log parsing, percentiles, per-trial figures) are
//! separate from the process shell and unit-tested.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use anyhow::{anyhow, bail, Context};
use dml_actors::clock::wall_ms;
use dml_actors::config::Config;
use dml_actors::control::Command;
use dml_actors::membership::membership_actor::{Exec, FromPeer, MembershipActor};
use dml_actors::membership::ping::ProbeSettings;
use dml_actors::membership::Membership;
use dml_actors::net::body::Body;
use dml_actors::net::transport::{Client, Inbound, Transport, TransportConfig};
use dml_actors::node::membership_settings;
use dml_actors::types::NodeAddr;
use tokio::sync::mpsc;

/// The secret of the throw-away benchmark clusters (their config lives in a temp dir).
const SECRET: &str = "dml-bench-cluster-secret-0123456789";
/// How often logs and views are polled while waiting.
const POLL: Duration = Duration::from_millis(100);

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

/// p50, p99 and max of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentile (`p` in 0..=100) of a sorted sample: the smallest value with
/// at least p% of the sample at or below it. With 20 values p99 is the maximum.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
}

/// Summarises a sample; `None` when it is empty.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    Some(Summary {
        n: v.len(),
        p50: percentile(&v, 50.0)?,
        p99: percentile(&v, 99.0)?,
        max: *v.last()?,
    })
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

/// One cluster node: its name, address and log.
#[derive(Debug, Clone)]
struct NodeInfo {
    name: String,
    addr: String,
    log: PathBuf,
}

/// A local cluster of `dml` child processes with a config in a temp directory. Dropping
/// it kills every child (and removes the directory unless asked to keep it).
struct LocalCluster {
    exe: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    introducer: String,
    nodes: Vec<NodeInfo>,
    procs: BTreeMap<String, Child>,
    keep: bool,
    rt: tokio::runtime::Runtime,
}

/// Free loopback ports: bound to port 0 together, then released (another process could
/// take one in between; unlikely, and start-up would then fail loudly).
pub(crate) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot bind a loopback port")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

impl LocalCluster {
    /// Writes a config for `n` nodes (`extra_fd` goes into `[failure_detector]`) and
    /// starts the introducer, and the nodes as processes if `spawn_nodes`.
    fn start(
        label: &str,
        n: usize,
        p: &Profile,
        extra_fd: &str,
        keep: bool,
        spawn_nodes: bool,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the dml executable")?;
        let dir = std::env::temp_dir().join(format!("dml-bench-{}-{label}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let ports = free_ports(n + 1)?;
        let intro_port = ports.first().copied().context("no port")?;
        let mut toml = format!(
            "[cluster]\nsecret = \"{SECRET}\"\ndata_dir = \"data\"\nlog_dir = \"logs\"\n\n\
             [introducer]\nhost = \"127.0.0.1\"\nport = {intro_port}\n\n\
             [failure_detector]\nm = 3\nping_duration = {}\nping_timeout = {}\ncleanup_time = {}\n{extra_fd}\n\n",
            p.ping_duration, p.ping_timeout, p.cleanup_time
        );
        let mut nodes = Vec::new();
        for (i, port) in ports.iter().skip(1).enumerate() {
            let name = format!("H{}", i + 1);
            toml.push_str(&format!(
                "[[nodes]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\n\n"
            ));
            nodes.push(NodeInfo {
                log: dir.join("logs").join(format!("{name}.log")),
                name,
                addr: format!("127.0.0.1:{port}"),
            });
        }
        let config = dir.join("config.toml");
        fs::write(&config, toml).with_context(|| format!("cannot write {}", config.display()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a runtime")?;
        let mut c = LocalCluster {
            exe,
            dir,
            config,
            introducer: format!("127.0.0.1:{intro_port}"),
            nodes,
            procs: BTreeMap::new(),
            keep,
            rt,
        };
        let intro_log = c.dir.join("logs").join("introducer.log");
        c.spawn("introducer", &["introducer".to_string()], &intro_log)?;
        wait_until(Duration::from_secs(10), || {
            Ok(std::net::TcpStream::connect(&c.introducer).is_ok())
        })
        .context("the introducer did not start listening")?;
        if spawn_nodes {
            for i in 0..c.nodes.len() {
                c.start_node(i)?;
            }
        }
        Ok(c)
    }

    fn spawn(&mut self, name: &str, args: &[String], log: &Path) -> anyhow::Result<()> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Proc::new(&self.exe)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.procs.insert(name.to_string(), child);
        Ok(())
    }

    fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let n = self.nodes.get(i).cloned().context("no such node")?;
        let (host, port) = n.addr.rsplit_once(':').context("address without port")?;
        let args = ["node", "--no-console", "--hostname", host, "--port", port].map(String::from);
        self.spawn(&n.name, &args, &n.log)
    }

    /// SIGKILL (`kill -9`), and reap it.
    fn kill9(&mut self, i: usize) -> anyhow::Result<()> {
        let name = &self.nodes.get(i).context("no such node")?.name;
        if let Some(mut c) = self.procs.remove(name) {
            c.kill().with_context(|| format!("cannot kill {name}"))?;
            let _ = c.wait();
        }
        Ok(())
    }

    /// Sends a console command, retrying a few times: with simulated loss the node drops
    /// a share of its replies too.
    fn ask(&self, addr: &str, cmd: Command) -> anyhow::Result<serde_json::Value> {
        let mut last = anyhow!("no attempt");
        for _ in 0..8 {
            let once = self.rt.block_on(async {
                let mut c =
                    Client::<Body>::connect(addr, SECRET.as_bytes(), Duration::from_secs(2))
                        .await?;
                c.request(Body::Command(cmd.clone()), Duration::from_secs(1))
                    .await
            });
            match once {
                Ok(Body::Outcome(Ok(reply))) => return Ok(serde_json::from_str(&reply.json)?),
                Ok(Body::Outcome(Err(e))) => bail!("{addr}: {e}"),
                Ok(other) => bail!("{addr}: unexpected answer {}", other.kind()),
                Err(e) => last = anyhow!("{addr}: {e}"),
            }
        }
        Err(last)
    }

    /// Members in a node's view (only the alive ones if `alive_only`), or `None` if it
    /// does not answer.
    fn members(&self, addr: &str, alive_only: bool) -> Option<BTreeSet<String>> {
        let v = self.ask(addr, Command::ListMem).ok()?;
        Some(
            v.as_array()?
                .iter()
                .filter(|m| !alive_only || m["state"] == "alive")
                .filter_map(|m| m["addr"].as_str().map(String::from))
                .collect(),
        )
    }

    /// Waits until every node lists every node alive.
    fn wait_formed(&self, within: Duration) -> anyhow::Result<Duration> {
        self.wait_members(within, true)
    }

    /// Waits until every node lists every node (alive, or suspect too unless
    /// `alive_only`: under loss some suspicion is always in flight).
    fn wait_members(&self, within: Duration, alive_only: bool) -> anyhow::Result<Duration> {
        let all: BTreeSet<String> = self.nodes.iter().map(|n| n.addr.clone()).collect();
        let start = Instant::now();
        wait_until(within, || {
            Ok(self
                .nodes
                .iter()
                .all(|n| self.members(&n.addr, alive_only).as_ref() == Some(&all)))
        })
        .with_context(|| {
            format!(
                "the cluster did not form within {within:?}; logs in {}",
                self.dir.display()
            )
        })?;
        Ok(start.elapsed())
    }

    fn log_len(&self, i: usize) -> u64 {
        self.nodes
            .get(i)
            .and_then(|n| fs::metadata(&n.log).ok())
            .map_or(0, |m| m.len())
    }

    /// Events of node `i` written at or after byte `offset` of its log.
    fn events_from(&self, i: usize, offset: u64) -> Vec<Event> {
        let Some(n) = self.nodes.get(i) else {
            return Vec::new();
        };
        let mut text = String::new();
        if let Ok(mut f) = File::open(&n.log) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                // A line cut in the middle of a write is simply not an event yet.
                let _ = f.read_to_string(&mut text);
            }
        }
        parse_events(&text)
    }

    fn all_events(&self) -> Vec<Vec<Event>> {
        (0..self.nodes.len())
            .map(|i| self.events_from(i, 0))
            .collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in self.procs.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.keep {
            eprintln!("  (kept {})", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Polls `cond` until it holds; an error once `within` has passed.
fn wait_until(
    within: Duration,
    mut cond: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if cond()? {
            return Ok(());
        }
        if start.elapsed() > within {
            bail!("not reached within {within:?}");
        }
        std::thread::sleep(POLL);
    }
}

// ------------------------------------------------------------------------------------
// In-process nodes: membership and transport only, for cluster sizes whose full node
// processes (each with both networks loaded) would not fit in memory.
// ------------------------------------------------------------------------------------

/// The nodes of a [`LocalCluster`] started with `spawn_nodes = false`, hosted on one
/// actix system in a thread of this process. Each node has its own transport (its own
/// listening port and loopback connections) and its own MembershipActor with its
/// PingActors, so pings, acks, gossip and announces cross the wire exactly as between
/// processes; what is missing is SDFS, the models and the jobs, which send nothing in a
/// quiet cluster. Dropping it stops the nodes.
struct InProcNodes {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcNodes {
    fn start(c: &LocalCluster) -> anyhow::Result<Self> {
        let config = crate::config_load::load(&c.config, &[])?;
        let addrs: Vec<NodeAddr> = c.nodes.iter().map(|n| NodeAddr(n.addr.clone())).collect();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("bench-nodes".into())
            .spawn(move || {
                actix::System::new().block_on(host_nodes(config, addrs, ready_tx, stop_rx));
            })
            .context("cannot start the node thread")?;
        let nodes = InProcNodes {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => Ok(nodes),
            Ok(Err(e)) => Err(anyhow!("in-process nodes: {e}")),
            Err(_) => Err(anyhow!("in-process nodes did not start")),
        }
    }
}

impl Drop for InProcNodes {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

/// Starts every node, reports readiness (or the first error), runs until `stop`.
async fn host_nodes(
    config: Config,
    addrs: Vec<NodeAddr>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut transports = Vec::new();
    for me in addrs {
        match host_one(&config, me).await {
            Ok(t) => transports.push(t),
            Err(e) => {
                let _ = ready.send(Err(format!("{e:#}")));
                return;
            }
        }
    }
    let _ = ready.send(Ok(()));
    let _ = stop.await;
    for t in &transports {
        t.shutdown();
    }
}

/// One node as `dml node` assembles it, minus SDFS, models and jobs.
async fn host_one(config: &Config, me: NodeAddr) -> anyhow::Result<Transport<Body>> {
    let listener = tokio::net::TcpListener::bind(me.as_str())
        .await
        .with_context(|| format!("cannot listen on {me}"))?;
    let tcfg = TransportConfig::new(me.clone(), config.secret.clone());
    let (transport, inbound) = Transport::<Body>::start(listener, tcfg)?;
    let core = Membership::new(me.clone(), membership_settings(config), wall_ms())?;
    let probe = ProbeSettings {
        ping_duration: millis(config.fd.ping_duration),
        ping_timeout: millis(config.fd.ping_timeout),
    };
    let membership = MembershipActor::new(core, transport.clone(), probe, true).start();
    actix::spawn(route(inbound, membership));
    Ok(transport)
}

/// The part of the TransportActor these nodes need: membership messages to the
/// MembershipActor, console commands (`list_mem`, `stats`) to it and the answer back.
async fn route(mut inbound: mpsc::Receiver<Inbound<Body>>, membership: Addr<MembershipActor>) {
    while let Some(m) = inbound.recv().await {
        let Inbound {
            from,
            body,
            responder,
            ..
        } = m;
        match body {
            Body::Membership(msg) => membership.do_send(FromPeer { from, msg }),
            Body::Command(cmd) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                membership.do_send(Exec { cmd, reply: tx });
                actix::spawn(async move {
                    let outcome = rx.await.unwrap_or_else(|_| Err("node stopped".into()));
                    if let Some(r) = responder {
                        let _ = r.respond(Body::Outcome(outcome));
                    }
                });
            }
            _ => {}
        }
    }
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
    let c = &mut LocalCluster::start(&format!("detect-{}", p.name), n, p, "", keep, true)?;
    let formed = c.wait_formed(Duration::from_secs(60))?;
    println!("  {n} nodes formed in {:.1} s", formed.as_secs_f64());
    let removal_wait = Duration::from_secs_f64(p.goal_ms() / 1000.0 + 15.0);
    let settle = Duration::from_secs_f64(p.ping_duration + p.ping_timeout);
    let mut out = Vec::new();
    for t in 1..=trials {
        let v = rng.below(n);
        let victim = c.nodes.get(v).cloned().context("no victim")?;
        let live: Vec<usize> = (0..n).filter(|&i| i != v).collect();
        let offsets: Vec<u64> = live.iter().map(|&i| c.log_len(i)).collect();
        let kill_ms = wall_ms();
        c.kill9(v)?;
        let events = |c: &LocalCluster| -> Vec<Vec<Event>> {
            live.iter()
                .zip(&offsets)
                .map(|(&i, &o)| c.events_from(i, o))
                .collect()
        };
        let waited = wait_until(removal_wait, || {
            Ok(trial_figures(&events(c), &victim.addr, kill_ms)
                .removed_ms
                .is_some())
        });
        let trial = trial_figures(&events(c), &victim.addr, kill_ms);
        println!(
            "  trial {t:>2}: kill -9 {:<4} detected {:>6} s  removed everywhere {:>6} s{}",
            victim.name,
            secs(trial.detect_ms),
            secs(trial.removed_ms),
            if waited.is_err() {
                "  (NOT removed everywhere in time)"
            } else {
                ""
            }
        );
        out.push(trial);
        c.start_node(v)?;
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

fn stats_of(c: &LocalCluster, addr: &str) -> anyhow::Result<Snapshot> {
    let s = c.ask(addr, Command::Stats)?;
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

fn snapshot(c: &LocalCluster) -> anyhow::Result<Vec<Snapshot>> {
    c.nodes.iter().map(|x| stats_of(c, &x.addr)).collect()
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

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
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
    let c = LocalCluster::start(&label, n, p, "", keep, !inproc)?;
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
    let (removals, _) = count_distinct(&c.all_events(), "failed", 0, u64::MAX);
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
    let c = LocalCluster::start(&label, n, p, &extra, keep, true)?;
    // Under loss the cluster may never look complete from every node at once (that is
    // what is measured); start the clock once it did or after a bounded wait.
    if let Err(e) = c.wait_members(Duration::from_secs(60), false) {
        println!("  note: {e:#}; measuring anyway");
    }
    let from = wall_ms();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let to = wall_ms();
    let events = c.all_events();
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
mod tests {
    use super::*;

    fn ev(kind: &str, wall: u64, peer: &str, inc: u64) -> Event {
        Event {
            kind: kind.into(),
            wall,
            peer: Some(peer.into()),
            incarnation: Some(inc),
        }
    }

    #[test]
    fn parses_tracing_event_lines() {
        let line =
            "2025-01-01T00:00:00.123456Z  WARN dml_actors::membership::membership_actor: event=suspected \
                    wall=1700000000123 peer=127.0.0.1:8003 incarnation=7 by_me=true";
        assert_eq!(
            parse_event(line),
            Some(ev("suspected", 1_700_000_000_123, "127.0.0.1:8003", 7))
        );
        let own =
            "INFO dml_actors::membership::membership_actor: event=rejoin (this node was declared failed) \
                   wall=5 old_incarnation=1 new_incarnation=2";
        let e = parse_event(own).unwrap();
        assert_eq!((e.kind.as_str(), e.wall, e.peer), ("rejoin", 5, None));
        for not_event in [
            "",
            "INFO node started",
            "event=failed peer=x",
            "wall=12 peer=x",
        ] {
            assert_eq!(parse_event(not_event), None, "{not_event}");
        }
    }

    #[test]
    fn trial_takes_first_suspicion_and_last_removal_after_the_kill() {
        let v = "127.0.0.1:9";
        let live = vec![
            // An old removal of the victim (before the kill) is ignored.
            vec![
                ev("failed", 50, v, 1),
                ev("suspected", 1_300, v, 2),
                ev("failed", 3_000, v, 2),
            ],
            vec![
                ev("suspected", 1_200, v, 2),
                ev("failed", 2_900, v, 2),
                ev("failed", 2_950, v, 2),
            ],
            vec![
                ev("suspected", 900, "127.0.0.1:8", 1),
                ev("failed", 3_400, v, 2),
            ],
        ];
        let t = trial_figures(&live, v, 1_000);
        assert_eq!(t.detect_ms, Some(200.0));
        assert_eq!(t.removed_ms, Some(2_400.0));
        // One live node that has not removed it yet: no removal-everywhere figure.
        let partial = &live[..2];
        let mut with_laggard = partial.to_vec();
        with_laggard.push(vec![ev("suspected", 1_500, v, 2)]);
        assert_eq!(trial_figures(&with_laggard, v, 1_000).removed_ms, None);
    }

    #[test]
    fn removals_are_counted_once_per_peer_and_incarnation() {
        let a = "127.0.0.1:1";
        let per_node = vec![
            vec![
                ev("failed", 10, a, 1),
                ev("failed", 20, a, 2),
                ev("suspected", 5, a, 1),
            ],
            vec![ev("failed", 11, a, 1), ev("failed", 99, a, 3)],
        ];
        assert_eq!(count_distinct(&per_node, "failed", 0, 50), (2, 3));
        assert_eq!(count_distinct(&per_node, "failed", 0, 100), (3, 4));
        assert_eq!(count_distinct(&per_node, "suspected", 0, 100), (1, 1));
        assert_eq!(count_distinct(&per_node, "suspected", 6, 100), (0, 0));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(10.0));
        assert_eq!(percentile(&v, 99.0), Some(20.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), Some(198.0));
        let s = summarize(&[3.0, 1.0, f64::NAN, 2.0]).unwrap();
        assert_eq!((s.n, s.p50, s.p99, s.max), (3, 2.0, 3.0, 3.0));
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn victim_choice_is_repeatable_and_in_range() {
        let a: Vec<usize> = {
            let mut r = SplitMix::new(42);
            (0..100).map(|_| r.below(10)).collect()
        };
        let mut r = SplitMix::new(42);
        assert!(a.iter().all(|&x| x < 10 && x == r.below(10)));
        // Not stuck on one value.
        assert!(a.iter().collect::<BTreeSet<_>>().len() > 5);
    }

    #[test]
    fn rates_use_each_nodes_own_uptime() {
        let before = [(1_000.0, 100.0, 50.0, 2.0), (5_000.0, 0.0, 0.0, 0.0)];
        let after = [(3_000.0, 300.0, 250.0, 6.0), (6_000.0, 150.0, 30.0, 3.0)];
        let r = rates(&before, &after).unwrap();
        assert_eq!(r, vec![(100.0, 100.0, 2.0), (150.0, 30.0, 3.0)]);
        // A clock that did not advance is no rate.
        assert_eq!(rates(&before, &before), None);
        assert!(is_steady(100.0, 102.0, 0.03));
        assert!(!is_steady(100.0, 90.0, 0.03));
        assert!(!is_steady(0.0, 0.0, 0.03));
    }

    #[test]
    fn goal_is_the_sum_of_timings_plus_200_ms() {
        assert!((Profile::SEED.goal_ms() - 14_700.0).abs() < 1e-6);
        assert!((Profile::FAST.goal_ms() - 2_500.0).abs() < 1e-6);
    }
}
