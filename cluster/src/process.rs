//! A local cluster of processes: the introducer and the nodes of a [`Layout`] started as
//! children of a `dml` binary, each logging to `<log_dir>/<name>.log`; crashes (kill -9),
//! pauses (SIGSTOP/SIGCONT) and restarts of one process; network partitions when the
//! layout has a private network (each node then runs in its namespace); waits for the
//! membership; and dropping it stops everything.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use dml_actors::control::{Command, Outcome, Request};

use crate::{wait_listening, wait_until, Layout};

/// One row of a node's `list_mem`: (address, incarnation, state).
pub type Member = (String, u64, String);

/// How a dropped cluster stops its processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, so that nodes leave cleanly; SIGKILL whatever is left after 3 s.
    Term,
    /// SIGKILL at once.
    Kill,
}

/// How a cluster is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--set KEY=VALUE` overrides given to every process.
    pub overrides: Vec<String>,
    /// Environment variables set for every process (on top of this one's).
    pub env: Vec<(String, String)>,
    /// Start the nodes too (not only the introducer).
    pub spawn_nodes: bool,
    /// Extra arguments of every `dml node` (`--bench-fixed-logits` for `dml bench scale`).
    pub node_args: Vec<String>,
    /// Extra arguments of one node (after `node_args`), by name.
    pub args_of: BTreeMap<String, Vec<String>>,
    /// Nodes serve synthetic weights for a model nothing was published for
    /// (`--synthetic-weights`): tests, `dml demo` and the benchmarks say so explicitly;
    /// off by default, as for a deployment.
    pub synthetic_weights: bool,
    pub stop: Stop,
    /// A directory the cluster owns (its config, logs and data): removed on drop unless
    /// `keep`, or while a panic unwinds (a failed test keeps its logs).
    pub own_dir: Option<PathBuf>,
    pub keep: bool,
    /// Membership questions: attempts per question (with simulated loss a node drops a
    /// share of its replies too) and the wait for each reply.
    pub tries: u32,
    pub reply_within: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            overrides: Vec::new(),
            env: Vec::new(),
            spawn_nodes: true,
            node_args: Vec::new(),
            args_of: BTreeMap::new(),
            synthetic_weights: false,
            stop: Stop::Term,
            own_dir: None,
            keep: false,
            tries: 1,
            reply_within: Duration::from_secs(2),
        }
    }
}

/// Bounds the connection and handshake of every question the harness asks.
const CONNECT_WITHIN: Duration = Duration::from_secs(2);

/// A started local cluster; dropping it stops every child.
pub struct Cluster {
    pub bin: PathBuf,
    pub layout: Layout,
    opts: Options,
    procs: BTreeMap<String, Child>,
}

impl Cluster {
    /// How this cluster was started.
    pub fn opts(&self) -> &Options {
        &self.opts
    }

    /// Starts the introducer, waits until it listens, then starts every node (unless
    /// `opts.spawn_nodes` is off). Logs start empty.
    pub fn start(bin: &Path, layout: Layout, opts: Options) -> anyhow::Result<Cluster> {
        fs::create_dir_all(&layout.log_dir)
            .with_context(|| format!("cannot create log dir {}", layout.log_dir.display()))?;
        for name in std::iter::once("introducer").chain(layout.nodes.iter().map(|n| &n.0[..])) {
            let path = layout.log_path(name);
            fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        }
        let spawn_nodes = opts.spawn_nodes;
        let mut c = Cluster {
            bin: bin.to_path_buf(),
            layout,
            opts,
            procs: BTreeMap::new(),
        };
        c.start_introducer()
            .context("the introducer did not start; see its log")?;
        if spawn_nodes {
            for (name, _) in c.layout.nodes.clone() {
                c.start_node(&name)?;
            }
        }
        Ok(c)
    }

    /// Starts a process with its output appended to its log.
    fn spawn(&mut self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        let path = self.layout.log_path(name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let err = log.try_clone()?;
        // `ip netns exec` execs the binary in place, so the child's pid is the node's own
        // (kill -9 and SIGSTOP reach it directly).
        let ns = self.layout.net.as_ref().and_then(|n| n.namespace(name));
        let mut proc = match ns {
            Some(ns) => {
                let mut p = Proc::new("ip");
                p.args(["netns", "exec", ns]).arg(&self.bin);
                p
            }
            None => Proc::new(&self.bin),
        };
        let child = proc
            .args(args)
            .arg("--config")
            .arg(&self.layout.config)
            .args(self.opts.overrides.iter().flat_map(|s| ["--set", s]))
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.procs.insert(name.to_string(), child);
        Ok(())
    }

    /// (Re)starts the introducer and waits until it listens.
    pub fn start_introducer(&mut self) -> anyhow::Result<()> {
        self.spawn("introducer", &["introducer"])?;
        wait_listening(&self.layout.introducer, Duration::from_secs(10))
    }

    /// (Re)starts one node; its log goes on where it stopped.
    pub fn start_node(&mut self, name: &str) -> anyhow::Result<()> {
        let addr = self
            .layout
            .addr(name)
            .with_context(|| format!("no node named {name}"))?;
        let (host, port) = addr
            .rsplit_once(':')
            .context("node address without a port")?;
        let (host, port) = (host.to_string(), port.to_string());
        let mut args = vec!["node", "--no-console", "--hostname", &host, "--port", &port];
        if self.opts.synthetic_weights {
            args.push("--synthetic-weights");
        }
        let extra = self.opts.node_args.clone();
        args.extend(extra.iter().map(String::as_str));
        let own = self.opts.args_of.get(name).cloned().unwrap_or_default();
        args.extend(own.iter().map(String::as_str));
        self.spawn(name, &args)
    }

    /// Starts a process again after a kill: the introducer or a node.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        if name == "introducer" {
            self.start_introducer()
        } else {
            self.start_node(name)
        }
    }

    /// The pid of a running process.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.get(name).map(Child::id)
    }

    /// Kills one process with SIGKILL (a crash, no goodbye) and reaps it.
    pub fn kill9(&mut self, name: &str) -> anyhow::Result<()> {
        self.kill9_all(&[name])
    }

    /// Kills several processes with SIGKILL at once (a wave of crashes: every signal is
    /// sent before the first, slow, reaping), then reaps them.
    pub fn kill9_all(&mut self, names: &[&str]) -> anyhow::Result<()> {
        let mut children = Vec::new();
        for name in names {
            let mut child = self
                .procs
                .remove(*name)
                .with_context(|| format!("no running child named {name}"))?;
            child
                .kill()
                .with_context(|| format!("cannot kill {name}"))?;
            children.push(child);
        }
        for mut child in children {
            let _ = child.wait();
        }
        Ok(())
    }

    /// Sends a signal (`kill` syntax: `-STOP`, `-CONT`, `-TERM`) to one process.
    pub fn signal(&self, name: &str, sig: &str) -> anyhow::Result<()> {
        let pid = self
            .pid(name)
            .with_context(|| format!("no running child named {name}"))?;
        let st = Proc::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .context("cannot run kill")?;
        anyhow::ensure!(st.success(), "kill {sig} {name} failed");
        Ok(())
    }

    /// SIGSTOP: the process hangs without closing anything.
    pub fn pause(&self, name: &str) -> anyhow::Result<()> {
        self.signal(name, "-STOP")
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&self, name: &str) -> anyhow::Result<()> {
        self.signal(name, "-CONT")
    }

    /// Children that have exited since the last call, with their status.
    pub fn exited(&mut self) -> Vec<String> {
        let mut gone = Vec::new();
        self.procs.retain(|name, c| match c.try_wait() {
            Ok(Some(status)) => {
                gone.push(format!("{name} exited ({status})"));
                false
            }
            _ => true,
        });
        gone
    }

    /// The log of a process so far.
    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.layout.log_path(name)).unwrap_or_default()
    }

    /// Asks a node (or the introducer) a console command.
    pub fn ask(
        &self,
        addr: &str,
        cmd: impl Into<Request>,
        reply: Duration,
    ) -> anyhow::Result<Outcome> {
        crate::ask(addr, &self.layout.credential, cmd, CONNECT_WITHIN, reply)
    }

    /// Every result of `job`, read page by page (see [`crate::job_results`]).
    pub fn job_results(
        &self,
        addr: &str,
        job: &str,
        reply: Duration,
    ) -> anyhow::Result<Result<Vec<dml_actors::jobs::types::QueryResult>, String>> {
        let r = crate::job_results(addr, &self.layout.credential, job, CONNECT_WITHIN, reply)?;
        Ok(r.map(|(rows, _)| rows))
    }

    /// A command's JSON answer, trying up to `opts.tries` times on transport errors.
    pub fn ask_json(
        &self,
        addr: &str,
        cmd: impl Into<Request>,
    ) -> anyhow::Result<serde_json::Value> {
        let cmd = cmd.into();
        let mut last = anyhow!("no attempt");
        for _ in 0..self.opts.tries.max(1) {
            match self.ask(addr, cmd.clone(), self.opts.reply_within) {
                Ok(Ok(reply)) => return Ok(serde_json::from_str(&reply.json)?),
                Ok(Err(e)) => bail!("{addr}: {e}"),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A node's `list_mem`, or `None` if it does not answer.
    pub fn members(&self, addr: &str) -> Option<Vec<Member>> {
        let v = self.ask_json(addr, Command::ListMem).ok()?;
        Some(
            v.as_array()?
                .iter()
                .map(|m| {
                    (
                        m["addr"].as_str().unwrap_or("").to_string(),
                        m["incarnation"].as_u64().unwrap_or(0),
                        m["state"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect(),
        )
    }

    /// Waits until every node in `on` lists exactly the configured nodes (all of them
    /// alive if `alive_only`; under loss some suspicion is always in flight).
    pub fn wait_members(
        &self,
        on: &[String],
        within: Duration,
        alive_only: bool,
    ) -> anyhow::Result<Duration> {
        let all: BTreeSet<&str> = self.layout.nodes.iter().map(|n| n.1.as_str()).collect();
        let sees_all = |addr: &String| {
            self.members(addr).is_some_and(|m| {
                let listed: BTreeSet<&str> = m
                    .iter()
                    .filter(|m| !alive_only || m.2 == "alive")
                    .map(|m| m.0.as_str())
                    .collect();
                listed == all
            })
        };
        wait_until(within, || Ok(on.iter().all(sees_all))).map_err(|_| {
            anyhow!(
                "the cluster did not form within {within:?}; see the logs in {}",
                self.layout.log_dir.display()
            )
        })
    }

    /// The private network, or an error naming why partitions are impossible.
    fn net(&self) -> anyhow::Result<&crate::Net> {
        self.layout
            .net
            .as_deref()
            .context("this cluster runs on loopback: partitions need TestConfig::write_netns")
    }

    /// Cuts the network between groups of nodes (names), both ways, replacing any
    /// earlier partition; open connections across the cut stall. The harness still
    /// reaches every node.
    pub fn partition(&self, groups: &[Vec<String>]) -> anyhow::Result<()> {
        self.net()?.partition(groups)
    }

    /// Cuts one node off from every other node.
    pub fn isolate(&self, name: &str) -> anyhow::Result<()> {
        self.net()?.isolate(name)
    }

    /// Removes every cut.
    pub fn heal(&self) -> anyhow::Result<()> {
        self.net()?.heal()
    }

    /// Waits until every node lists every node alive.
    pub fn wait_formed(&self, within: Duration) -> anyhow::Result<Duration> {
        let all: Vec<String> = self.layout.nodes.iter().map(|n| n.1.clone()).collect();
        self.wait_members(&all, within, true)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.procs.values() {
            // A paused process must run to take its signal.
            let _ = Proc::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            if self.opts.stop == Stop::Term {
                let _ = Proc::new("kill").arg(c.id().to_string()).status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in self.procs.values_mut() {
            while self.opts.stop == Stop::Term && Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(dir) = &self.opts.own_dir {
            if self.opts.keep {
                eprintln!("  (kept {})", dir.display());
            } else if !std::thread::panicking() {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }
}
