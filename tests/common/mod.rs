//! Test harness: a real local cluster of `dml` processes on loopback ports (the shared
//! `dml-cluster` harness), with a config written to a temporary directory, per-process
//! logs, and an in-process client.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dml_actors::control::{self, Outcome, Request};
use dml_actors::net::body::Body;
use dml_actors::net::transport::{Client, Lane, Role};
use dml_actors::net::wire::{Credential, Key};
use dml_cluster::{Options, Stop, TestConfig};

pub const SECRET: &str = "test-secret-0123456789abcdef";

pub fn dml_bin() -> &'static str {
    env!("CARGO_BIN_EXE_dml")
}

/// Free loopback ports (bound once and released; collisions are unlikely, not impossible).
pub fn free_ports(n: usize) -> Vec<u16> {
    dml_cluster::free_ports(n).expect("bind port 0")
}

pub struct Timings {
    pub ping_duration: f64,
    pub ping_timeout: f64,
    pub cleanup_time: f64,
}

impl Timings {
    pub fn fast() -> Self {
        Timings {
            ping_duration: 0.5,
            ping_timeout: 0.3,
            cleanup_time: 1.5,
        }
    }
    pub fn bound(&self) -> Duration {
        Duration::from_secs_f64(self.ping_duration + self.ping_timeout + self.cleanup_time)
    }
}

/// A started cluster; dropping it kills every process and, unless the test failed,
/// removes its directory.
pub struct Cluster {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub introducer: String,
    pub nodes: Vec<(String, String)>,
    procs: dml_cluster::Cluster,
}

impl Cluster {
    /// Writes a config for `n` nodes and starts the introducer and every node.
    pub fn start(name: &str, n: usize, t: &Timings, extra: &str) -> Cluster {
        Self::start_with(name, n, t, extra, false, |_| {})
    }

    /// Like `start`, with `prepare(dir)` run after the config is written and before any
    /// process starts (e.g. to mount a small file system on a node's data directory).
    pub fn start_prepared(
        name: &str,
        n: usize,
        t: &Timings,
        extra: &str,
        prepare: impl FnOnce(&Path),
    ) -> Cluster {
        Self::start_with(name, n, t, extra, false, prepare)
    }

    /// Like [`Cluster::start`], each node in its own network namespace (needs root), so
    /// that the test can partition the network.
    pub fn start_netns(name: &str, n: usize, t: &Timings, extra: &str) -> Cluster {
        Self::start_with(name, n, t, extra, true, |_| {})
    }

    fn start_with(
        name: &str,
        n: usize,
        t: &Timings,
        extra: &str,
        netns: bool,
        prepare: impl FnOnce(&Path),
    ) -> Cluster {
        let dir = std::env::temp_dir().join(format!("dml-test-{name}-{}", std::process::id()));
        let config = TestConfig {
            secret: SECRET,
            nodes: n,
            ping_duration: t.ping_duration,
            ping_timeout: t.ping_timeout,
            cleanup_time: t.cleanup_time,
            fd_extra: "",
            extra,
        };
        let layout = if netns {
            config.write_netns(&dir)
        } else {
            config.write(&dir)
        };
        let layout = layout.unwrap_or_else(|e| panic!("{e:#}"));
        prepare(&dir);
        let opts = Options {
            env: vec![("RUST_LOG".into(), "info".into())],
            stop: Stop::Kill,
            own_dir: Some(dir.clone()),
            reply_within: Duration::from_secs(60),
            // Tests run on synthetic weights unless they publish some, and say so.
            synthetic_weights: true,
            ..Options::default()
        };
        Cluster {
            dir,
            config: layout.config.clone(),
            introducer: layout.introducer.clone(),
            nodes: layout.nodes.clone(),
            procs: dml_cluster::Cluster::start(Path::new(dml_bin()), layout, opts)
                .expect("start the cluster"),
        }
    }

    /// Starts the introducer again (after `kill9("introducer")`).
    pub fn start_introducer(&mut self) {
        self.procs
            .start_introducer()
            .expect("restart the introducer");
    }

    /// Starts node `name` again (its address is the configured one, `_addr`).
    pub fn start_node(&mut self, name: &str, _addr: &str) {
        self.procs.start_node(name).expect("start a node");
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.procs.layout.log_path(name)
    }

    pub fn addr(&self, name: &str) -> String {
        self.procs.layout.addr(name).unwrap().to_string()
    }

    pub fn pid(&self, name: &str) -> u32 {
        self.procs.pid(name).unwrap()
    }

    pub fn signal(&self, name: &str, sig: &str) {
        assert!(self.procs.signal(name, sig).is_ok(), "kill {sig} {name}");
    }

    /// Cuts the network between groups of node names (namespaced clusters only).
    pub fn partition(&self, groups: &[&[&str]]) {
        let groups: Vec<Vec<String>> = groups
            .iter()
            .map(|g| g.iter().map(|n| n.to_string()).collect())
            .collect();
        self.procs.partition(&groups).expect("partition");
    }

    pub fn heal(&self) {
        self.procs.heal().expect("heal");
    }

    pub fn kill9(&mut self, name: &str) {
        self.procs.kill9(name).expect("kill -9");
    }

    /// Runs a console command on a node, in process.
    pub fn ctl(&self, addr: &str, cmd: impl Into<Request>) -> Result<Outcome, String> {
        ctl(addr, cmd)
    }

    /// `list_mem --json` of a node: (addr, incarnation, state).
    pub fn members(&self, addr: &str) -> Option<Vec<(String, u64, String)>> {
        self.procs.members(addr)
    }

    /// Waits until `pred` holds for every node in `on`, polling; returns the time it took.
    pub fn wait_views(
        &self,
        on: &[String],
        within: Duration,
        what: &str,
        pred: impl Fn(&[(String, u64, String)]) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let ok = on.iter().all(|a| self.members(a).is_some_and(|m| pred(&m)));
            if ok {
                return start.elapsed();
            }
            if start.elapsed() > within {
                let views: Vec<_> = on.iter().map(|a| (a, self.members(a))).collect();
                panic!(
                    "{what}: not reached within {within:?}; views: {views:#?}; logs in {}",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self, name: &str) -> String {
        self.procs.log(name)
    }

    /// Wall-clock ms of every `event=<kind>` line about `peer` in a node's log.
    pub fn event_times(&self, name: &str, kind: &str, peer: &str) -> Vec<u64> {
        let needle = format!("event={kind}");
        let peer_kv = format!("peer={peer}");
        self.log(name)
            .lines()
            .filter(|l| l.contains(&needle) && l.contains(&peer_kv))
            .filter_map(|l| {
                l.split("wall=")
                    .nth(1)
                    .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|s| s.parse().ok())
            })
            .collect()
    }
}

pub fn ctl(addr: &str, cmd: impl Into<Request>) -> Result<Outcome, String> {
    ctl_within(addr, cmd, Duration::from_secs(60))
}

pub fn parse(line: &str) -> Request {
    control::parse(&control::split_line(line).unwrap()).unwrap()
}

pub fn wait_port(addr: &str) {
    if let Err(e) = dml_cluster::wait_listening(addr, Duration::from_secs(10)) {
        panic!("{e}");
    }
}

pub fn wall_ms() -> u64 {
    dml_actors::clock::wall_ms()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

// ---- SDFS helpers (added for tests/cluster_sdfs.rs and tests/scp.rs) ----

/// Deterministic pseudo-random bytes (splitmix64), so a failing run can be replayed.
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

impl Cluster {
    /// A node's data directory (`data/<name>` next to the config).
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.join("data").join(name)
    }

    /// The node name of an address.
    pub fn name_of(&self, addr: &str) -> String {
        self.procs
            .layout
            .name_of(addr)
            .unwrap_or_default()
            .to_string()
    }

    /// Runs a command line on a node; the reply's JSON, or the node's one-line error.
    pub fn sdfs(&self, addr: &str, line: &str) -> Result<serde_json::Value, String> {
        let words = control::split_line(line)?;
        let cmd = control::parse(&words)?;
        match ctl(addr, cmd)? {
            Ok(reply) => serde_json::from_str(&reply.json).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        }
    }

    /// Path of `name`'s stored version file on node `node`, found through the NAME files
    /// of the store (names are hashed on disk).
    pub fn version_file(&self, node: &str, name: &str, version: u64) -> Option<PathBuf> {
        let names = self.data_dir(node).join("sdfs").join("names");
        for entry in fs::read_dir(names).ok()? {
            let dir = entry.ok()?.path();
            if fs::read_to_string(dir.join("NAME")).ok().as_deref() == Some(name) {
                let p = dir.join(format!("{version:020}.v"));
                return p.exists().then_some(p);
            }
        }
        None
    }
}

// ---- a real sshd for the scp tests (tests/scp.rs, the SDFS benchmark) ----

pub const SSHD: &str = "/usr/sbin/sshd";
/// The account the scp tests log in as.
pub const SSH_USER: &str = "dmlscp";

fn run_quiet(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn set_ssh_password(pw: &str) {
    let mut child = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .expect("chpasswd");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{SSH_USER}:{pw}\n").as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "chpasswd failed (run as root)"
    );
}

/// A running sshd; killed (and its user removed) on drop.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    /// An OpenSSH known_hosts file holding this server's host key (for `sdfs.known_hosts`).
    pub known_hosts: PathBuf,
    /// Its known_hosts line: `[127.0.0.1]:PORT TYPE KEY`.
    pub known_hosts_line: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = run_quiet("userdel", &[SSH_USER]);
    }
}

pub fn start_sshd(dir: &Path) -> Sshd {
    if !Path::new(SSHD).exists() {
        let _ = Command::new("apt-get")
            .args(["install", "-y", "openssh-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    assert!(
        Path::new(SSHD).exists(),
        "{SSHD} is missing and apt-get could not install openssh-server"
    );
    if !run_quiet("id", &[SSH_USER]) {
        assert!(
            run_quiet("useradd", &["-M", "-s", "/bin/sh", SSH_USER]),
            "useradd failed (run as root)"
        );
    }
    let key = dir.join("host_key");
    assert!(
        run_quiet(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()]
        ),
        "ssh-keygen failed"
    );
    fs::create_dir_all("/run/sshd").unwrap();
    let port = free_ports(1)[0];
    let config = dir.join("sshd_config");
    fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\n\
             PasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM no\n\
             PubkeyAuthentication no\nStrictModes no\nAllowUsers {SSH_USER}\nLogLevel VERBOSE\n",
            key.display(),
            dir.join("sshd.pid").display()
        ),
    )
    .unwrap();
    let log = dir.join("sshd.log");
    let child = Command::new(SSHD)
        .args(["-D", "-e", "-f", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("start sshd");
    // What an operator gets from `ssh-keyscan -p PORT 127.0.0.1`, without the network.
    let public = fs::read_to_string(dir.join("host_key.pub")).unwrap();
    let mut fields = public.split_whitespace();
    let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
    let known_hosts_line = format!("[127.0.0.1]:{port} {kind} {key}\n");
    let known_hosts = dir.join("known_hosts");
    fs::write(&known_hosts, &known_hosts_line).unwrap();
    let sshd = Sshd {
        child,
        port,
        log,
        known_hosts,
        known_hosts_line,
    };
    wait_port(&format!("127.0.0.1:{port}"));
    sshd
}

// ---- inference-job helpers (added for tests/cluster_jobs.rs) ----

/// Like [`ctl`], but gives up after `timeout` (a poll during a takeover must not hang on
/// a coordinator that is gone).
pub fn ctl_within(
    addr: &str,
    cmd: impl Into<Request>,
    timeout: Duration,
) -> Result<Outcome, String> {
    let admin = dml_cluster::test_operator(SECRET, "admin").map_err(|e| format!("{e:#}"))?;
    dml_cluster::ask(addr, &admin, cmd, Duration::from_secs(2), timeout)
        .map_err(|e| format!("{e:#}"))
}

/// Every result of `job`, read page by page through the admin operator.
pub fn job_results(
    addr: &str,
    job: &str,
) -> Result<Vec<dml_actors::jobs::types::QueryResult>, String> {
    let admin = dml_cluster::test_operator(SECRET, "admin").map_err(|e| format!("{e:#}"))?;
    dml_cluster::job_results(
        addr,
        &admin,
        job,
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .map_err(|e| format!("{e:#}"))?
    .map(|(rows, _)| rows)
}

/// Delivers one message to a node as a node (proving the cluster secret: tools may send
/// only console commands) and does not wait for an answer (the node answers protocol
/// messages to their sender's node address, not on this connection).
pub fn send_oneway(addr: &str, body: Body) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let secret = Key::new(SECRET.as_bytes().to_vec()).map_err(|e| e.to_string())?;
        let mut c = Client::<Body>::connect_as(
            addr,
            Role::Node,
            Some("127.0.0.1:1"),
            Lane::Control,
            &Credential::cluster(secret),
            Duration::from_secs(2),
        )
        .await
        .map_err(|e| e.to_string())?;
        // The frame is written before the wait starts; the timeout is the expected outcome.
        match c.request(body, Duration::from_millis(300)).await {
            Err(dml_actors::net::transport::TransportError::Timeout { .. }) | Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    })
}

/// Writes deterministic synthetic weights for both networks into `dir` with the built
/// binary, once, so that every node loads a file instead of generating them.
pub fn synth_weights(dir: &Path) {
    let out = Command::new(dml_bin())
        .args(["weights", "synth", "--dir"])
        .arg(dir)
        .output()
        .expect("run dml weights synth");
    assert!(
        out.status.success(),
        "dml weights synth failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `n` small deterministic PNGs (`<prefix>-NN.png`) into `dir`; returns the file
/// names, sorted.
pub fn write_pngs(dir: &Path, prefix: &str, n: usize, seed: u64) -> Vec<String> {
    fs::create_dir_all(dir).unwrap();
    let mut names = Vec::new();
    for i in 0..n {
        let bytes = seeded_bytes(seed.wrapping_mul(1000).wrapping_add(i as u64), 3 * 8);
        let (w, h) = (32 + (i as u32 % 5) * 8, 24 + (i as u32 % 3) * 8);
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            // A few blocks of seeded colours: distinct images, cheap to make.
            let k = (((x * 4 / w) + (y * 2 / h) * 4) as usize % 8) * 3;
            image::Rgb([bytes[k], bytes[k + 1], bytes[k + 2]])
        });
        let name = format!("{prefix}-{i:02}.png");
        img.save(dir.join(&name)).unwrap();
        names.push(name);
    }
    names.sort();
    names
}

/// One `event=role` line of a node's log: the role its job coordinator core took, and
/// the reign it believes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleEvent {
    pub wall: u64,
    pub role: String,
    pub epoch: u64,
    pub coordinator: String,
    pub standby: Option<String>,
}

/// The value of ` key=` in a log line (up to the next space).
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!(" {key}=");
    let at = line.find(&needle)? + needle.len();
    line[at..].split_whitespace().next()
}

impl Cluster {
    /// Every `event=role` line of a node's log, oldest first.
    pub fn role_events(&self, name: &str) -> Vec<RoleEvent> {
        self.log(name)
            .lines()
            .filter(|l| l.contains("event=role"))
            .filter_map(|l| {
                let standby = log_field(l, "standby")?;
                Some(RoleEvent {
                    wall: log_field(l, "wall")?.parse().ok()?,
                    role: log_field(l, "role")?.to_string(),
                    epoch: log_field(l, "epoch")?.parse().ok()?,
                    coordinator: log_field(l, "coordinator")?.to_string(),
                    standby: standby
                        .strip_prefix("Some(\"")
                        .and_then(|s| s.strip_suffix("\")"))
                        .map(String::from),
                })
            })
            .collect()
    }

    /// Log lines of a node that contain `needle`.
    pub fn log_lines(&self, name: &str, needle: &str) -> Vec<String> {
        self.log(name)
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    }
}

/// Polls `f` until it yields a value; fails the test after `within`.
pub fn wait_for<T>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, start.elapsed());
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A directory removed when the test ends, however it ends.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh `TempDir` under the system temp dir, unique per test process and `what`.
pub fn temp(what: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("dml-test-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    TempDir(d)
}
