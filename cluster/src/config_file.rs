//! Config files of local clusters: writes the config of a throw-away test or benchmark
//! cluster (on loopback, or one network namespace per node), and reads the [`Layout`] a cluster of processes is started from
//! (loading itself is `dml_actors::config::load`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use dml_actors::config::Config;
use dml_actors::net::wire::{hex, key_id, Credential, Key};

use crate::netns::Net;

/// Where the processes of a cluster are and what they are called: everything the
/// harness needs from a config.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The config file every process is started with.
    pub config: PathBuf,
    pub log_dir: PathBuf,
    pub introducer: String,
    /// (name, `host:port`) of every node, in config order.
    pub nodes: Vec<(String, String)>,
    pub secret: Vec<u8>,
    /// What the harness's console client proves: the config's operator credential
    /// (an admin's, for test clusters).
    pub credential: Credential,
    /// The private network when every node runs in its own namespace
    /// ([`TestConfig::write_netns`]); `None` on loopback.
    pub net: Option<Arc<Net>>,
}

impl Layout {
    /// The layout of a loaded config (its `[ctl] credential_file` is read here).
    pub fn of(config_path: &Path, config: &Config) -> anyhow::Result<Layout> {
        Ok(Layout {
            credential: config.tool_credential()?,
            config: config_path.to_path_buf(),
            log_dir: config.log_dir.clone(),
            introducer: config.introducer.to_string(),
            nodes: config
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.addr.to_string()))
                .collect(),
            secret: config.secret.clone(),
            net: None,
        })
    }

    /// The credential file of a test cluster's operator (`admin` or `viewer`, see
    /// [`TestConfig`]).
    pub fn credential_file(&self, operator: &str) -> PathBuf {
        self.config
            .parent()
            .unwrap_or(Path::new("."))
            .join(format!("{operator}.credential"))
    }

    /// The log file of a process (`introducer` or a node name).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// The address of a node, or the introducer's for `introducer`.
    pub fn addr(&self, name: &str) -> Option<&str> {
        if name == "introducer" {
            return Some(&self.introducer);
        }
        self.nodes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.as_str())
    }

    /// The name of the node at `addr`.
    pub fn name_of(&self, addr: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|(_, a)| a == addr)
            .map(|(n, _)| n.as_str())
    }
}

/// The config of a throw-away cluster on free loopback ports: nodes `H1..Hn`, data and
/// logs next to the config, the given failure-detector timings (seconds), and two
/// operators: `admin` (whose credential the config's `[ctl]` names) and `viewer`
/// (read-only), in `operators.txt`, `admin.credential` and `viewer.credential`, with
/// keys derived from the secret ([`test_operator`]), so that a test helper that knows
/// only the secret can prove them too.
#[derive(Debug, Clone)]
pub struct TestConfig<'a> {
    pub secret: &'a str,
    pub nodes: usize,
    pub ping_duration: f64,
    pub ping_timeout: f64,
    pub cleanup_time: f64,
    /// More `[failure_detector]` keys (lines).
    pub fd_extra: &'a str,
    /// More sections, after `[failure_detector]`.
    pub extra: &'a str,
}

impl TestConfig<'_> {
    /// Replaces `dir` with a fresh one holding `config.toml` and an empty `logs/`; every
    /// process on loopback, on free ports.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Layout> {
        let ports = crate::free_ports(self.nodes + 1).context("cannot bind a loopback port")?;
        let (intro, node_ports) = ports.split_first().context("no ports")?;
        let nodes = node_ports.iter().map(|p| ("127.0.0.1".to_string(), *p));
        self.write_hosts(
            dir,
            ("127.0.0.1".to_string(), *intro),
            nodes.collect(),
            None,
        )
    }

    /// Like [`TestConfig::write`], but every node gets its own network namespace and
    /// address on a private bridge (see [`crate::netns`]); the introducer listens on the
    /// bridge's address in the root namespace. Needs root; the network lives as long as
    /// the returned layout (and its clones).
    pub fn write_netns(&self, dir: &Path) -> anyhow::Result<Layout> {
        let names: Vec<String> = (1..=self.nodes).map(|i| format!("H{i}")).collect();
        let net = Net::create(&names)?;
        let host = net.host_ip();
        // A port that is free on the bridge's address right now.
        let intro = std::net::TcpListener::bind((host, 0))
            .and_then(|l| l.local_addr())
            .with_context(|| format!("cannot bind a port on {host}"))?
            .port();
        // Each node has its own address, so ports cannot collide; distinct ones keep
        // logs readable.
        let nodes = names.iter().enumerate().map(|(i, n)| {
            (
                net.ip_of(n).map(|a| a.to_string()).unwrap_or_default(),
                7001 + i as u16,
            )
        });
        let nodes = nodes.collect();
        self.write_hosts(dir, (host.to_string(), intro), nodes, Some(Arc::new(net)))
    }

    fn write_hosts(
        &self,
        dir: &Path,
        (intro_host, intro): (String, u16),
        hosts: Vec<(String, u16)>,
        net: Option<Arc<Net>>,
    ) -> anyhow::Result<Layout> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let admin = write_operators(dir, self.secret)?;
        let mut toml = format!(
            "[cluster]\nsecret = \"{}\"\ndata_dir = \"data\"\nlog_dir = \"logs\"\n\n\
             [security]\noperators_file = \"operators.txt\"\n\n\
             [ctl]\ncredential_file = \"admin.credential\"\n\n\
             [introducer]\nhost = \"{intro_host}\"\nport = {intro}\n\n\
             [failure_detector]\nm = 3\nping_duration = {}\nping_timeout = {}\ncleanup_time = {}\n{}\n\n{}\n",
            self.secret,
            self.ping_duration,
            self.ping_timeout,
            self.cleanup_time,
            self.fd_extra,
            self.extra
        );
        let mut nodes = Vec::new();
        for (i, (host, port)) in hosts.iter().enumerate() {
            let name = format!("H{}", i + 1);
            toml.push_str(&format!(
                "[[nodes]]\nname = \"{name}\"\nhost = \"{host}\"\nport = {port}\n\n"
            ));
            nodes.push((name, format!("{host}:{port}")));
        }
        let config = dir.join("config.toml");
        fs::write(&config, toml).with_context(|| format!("cannot write {}", config.display()))?;
        Ok(Layout {
            config,
            log_dir: dir.join("logs"),
            introducer: format!("{intro_host}:{intro}"),
            nodes,
            secret: self.secret.as_bytes().to_vec(),
            credential: admin,
            net,
        })
    }
}

/// The credential of operator `name` of a [`TestConfig`] cluster with `secret`. Derived,
/// not drawn, so helpers without the layout can use it; only for throw-away clusters.
pub fn test_operator(secret: &str, name: &str) -> anyhow::Result<Credential> {
    let mut bytes = Vec::new();
    for part in [
        "operator-key-1",
        "operator-key-2",
        "operator-key-3",
        "operator-key-4",
    ] {
        bytes.extend_from_slice(&key_id(format!("{part}/{name}/{secret}").as_bytes()));
    }
    Ok(Credential::operator(name, Key::new(bytes)?))
}

/// Writes `operators.txt` (admin `admin`, read-only `viewer`) and each operator's
/// credential file into `dir`; the admin's credential.
fn write_operators(dir: &Path, secret: &str) -> anyhow::Result<Credential> {
    let (admin, viewer) = (
        test_operator(secret, "admin")?,
        test_operator(secret, "viewer")?,
    );
    // Key files must be private to their owner, or nodes and tools refuse them.
    let write = |name: &str, text: String| {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        fs::write(&p, text)
            .and_then(|()| fs::set_permissions(&p, fs::Permissions::from_mode(0o600)))
            .with_context(|| format!("cannot write {}", p.display()))
    };
    write(
        "operators.txt",
        format!(
            "# NAME ROLE KEY (hex)\nadmin admin {}\nviewer read-only {}\n",
            hex(admin.key.bytes()),
            hex(viewer.key.bytes())
        ),
    )?;
    for c in [&admin, &viewer] {
        let name = c.operator.as_deref().unwrap_or_default();
        write(
            &format!("{name}.credential"),
            format!("{name} {}\n", hex(c.key.bytes())),
        )?;
    }
    Ok(admin)
}
