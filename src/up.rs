//! `dml up`: starts the introducer and every node of the config on this machine as child
//! processes with their logs in files, waits until the cluster has formed, and stops
//! them all on Ctrl-C (or SIGTERM).

use std::fs::{self, File};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use dml_actors::config::Config;

use crate::ctl;

/// A started local cluster; dropping it kills every child.
pub struct LocalCluster {
    children: Vec<(String, Child)>,
}

impl LocalCluster {
    /// Starts the introducer, then every node, each logging to `log_dir/<name>.log`.
    pub fn start(
        config_path: &Path,
        overrides: &[String],
        config: &Config,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the dml executable")?;
        fs::create_dir_all(&config.log_dir)
            .with_context(|| format!("cannot create log dir {}", config.log_dir.display()))?;
        let mut cluster = LocalCluster {
            children: Vec::new(),
        };
        let sets: Vec<String> = overrides
            .iter()
            .flat_map(|s| ["--set".to_string(), s.clone()])
            .collect();
        let spawn = |name: &str, args: &[String]| -> anyhow::Result<Child> {
            let log_path = config.log_dir.join(format!("{name}.log"));
            let log = File::create(&log_path)
                .with_context(|| format!("cannot create {}", log_path.display()))?;
            let err = log.try_clone()?;
            Command::new(&exe)
                .args(args)
                .arg("--config")
                .arg(config_path)
                .args(&sets)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .with_context(|| format!("cannot start {name}"))
        };
        let child = spawn("introducer", &["introducer".to_string()])?;
        cluster.children.push(("introducer".into(), child));
        wait_listening(config.introducer.as_str(), Duration::from_secs(10))
            .context("the introducer did not start; see its log")?;
        for n in &config.nodes {
            let (host, port) = n
                .addr
                .as_str()
                .rsplit_once(':')
                .context("node address without a port")?;
            let args = [
                "node".to_string(),
                "--no-console".into(),
                "--hostname".into(),
                host.to_string(),
                "--port".into(),
                port.to_string(),
            ];
            let child = spawn(&n.name, &args)?;
            cluster.children.push((n.name.clone(), child));
        }
        Ok(cluster)
    }

    /// Kills one child with SIGKILL (a crash, no goodbye) and reaps it.
    pub fn kill9(&mut self, name: &str) -> anyhow::Result<()> {
        let pos = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .with_context(|| format!("no running child named {name}"))?;
        let (_, mut child) = self.children.remove(pos);
        child
            .kill()
            .with_context(|| format!("cannot kill {name}"))?;
        let _ = child.wait();
        Ok(())
    }

    /// Children that have exited since the last call, with their status.
    pub fn exited(&mut self) -> Vec<String> {
        let mut gone = Vec::new();
        self.children.retain_mut(|(name, c)| match c.try_wait() {
            Ok(Some(status)) => {
                gone.push(format!("{name} exited ({status})"));
                false
            }
            _ => true,
        });
        gone
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            // SIGTERM first so nodes leave cleanly; SIGKILL whatever is left.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for (_, c) in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_listening(addr: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the first node lists every configured node as alive.
pub fn wait_formed(config: &Config, within: Duration) -> anyhow::Result<usize> {
    let first = config.nodes.first().context("no nodes")?.addr.to_string();
    let deadline = Instant::now() + within;
    loop {
        if let Ok(n) = ctl::alive_count(config, &first) {
            if n == config.nodes.len() {
                return Ok(n);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the cluster did not form within {within:?}; see the logs in {}",
            config.log_dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn run(config_path: &Path, overrides: &[String], config: &Config) -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start(config_path, overrides, config)?;
    let n = wait_formed(config, Duration::from_secs(60))?;
    let first = &config.nodes[0].addr;
    println!(
        "dml: cluster up: introducer {} and {n} nodes alive; logs in {}",
        config.introducer,
        config.log_dir.display()
    );
    println!("dml: try `dml ctl --node {first} list_mem`; Ctrl-C stops the cluster");
    wait_for_signal(&mut cluster);
    println!("dml: stopping the cluster");
    drop(cluster);
    Ok(())
}

fn wait_for_signal(cluster: &mut LocalCluster) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return,
    };
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => return,
                _ = tick.tick() => {
                    for line in cluster.exited() {
                        eprintln!("dml: {line}");
                    }
                }
            }
        }
    });
}
