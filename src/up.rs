//! `dml up`: starts the introducer and every node of the config on this machine as child
//! processes with their logs in files, waits until the cluster has formed, and stops
//! them all on Ctrl-C (or SIGTERM).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use dml_actors::config::Config;
use dml_cluster::{Cluster, Layout, Options};

/// Starts the local cluster of `config` (this executable, the config's `--set`
/// overrides), each process logging to `log_dir/<name>.log`; `synthetic_weights`: the
/// nodes run synthetic weights for a model nothing was published for (`dml demo`).
pub fn start(
    config_path: &Path,
    overrides: &[String],
    config: &Config,
    synthetic_weights: bool,
) -> anyhow::Result<Cluster> {
    let exe = std::env::current_exe().context("cannot find the dml executable")?;
    let opts = Options {
        overrides: overrides.to_vec(),
        synthetic_weights,
        args_of: http_args(config)?,
        // `dml --log-format json up`: the nodes' log files too.
        node_args: match crate::LOG_FORMAT.get() {
            Some(crate::LogFormat::Json) => vec!["--log-format".into(), "json".into()],
            _ => Vec::new(),
        },
        ..Options::default()
    };
    Cluster::start(&exe, Layout::of(config_path, config)?, opts)
}

/// `--http 127.0.0.1:PORT` on a free port for each node whose config names no `http`
/// address, so every local node serves HTTP.
fn http_args(config: &Config) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let missing: Vec<&str> = config
        .nodes
        .iter()
        .filter(|n| n.http.is_none())
        .map(|n| n.name.as_str())
        .collect();
    let ports =
        dml_cluster::free_ports(missing.len()).context("cannot find free ports for http")?;
    Ok(missing
        .into_iter()
        .zip(ports)
        .map(|(name, port)| {
            (
                name.to_string(),
                vec!["--http".to_string(), format!("127.0.0.1:{port}")],
            )
        })
        .collect())
}

/// Each node's HTTP address: the config's, or the one [`http_args`] gave it.
fn http_addrs(config: &Config, cluster: &Cluster) -> Vec<(String, String)> {
    config
        .nodes
        .iter()
        .filter_map(|n| {
            let addr = match n.http {
                Some(a) => a.to_string(),
                None => cluster.opts().args_of.get(&n.name)?.get(1)?.clone(),
            };
            Some((n.name.clone(), addr))
        })
        .collect()
}

/// Waits until the first node lists every configured node as alive; their number.
pub fn wait_formed(cluster: &Cluster, within: Duration) -> anyhow::Result<usize> {
    let first = cluster.layout.nodes.first().context("no nodes")?.1.clone();
    cluster.wait_members(&[first], within, true)?;
    Ok(cluster.layout.nodes.len())
}

pub fn run(config_path: &Path, overrides: &[String], config: &Config) -> anyhow::Result<()> {
    let mut cluster = start(config_path, overrides, config, false)?;
    let n = wait_formed(&cluster, Duration::from_secs(60))?;
    let first = &config.nodes[0].addr;
    println!(
        "dml: cluster up: introducer {} and {n} nodes alive; logs in {}",
        config.introducer,
        config.log_dir.display()
    );
    for (name, addr) in http_addrs(config, &cluster) {
        println!(
            "dml: {name} serves http://{addr} (KServe v2 /v2/models/resnet50/infer, /metrics)"
        );
    }
    println!("dml: try `dml ctl --node {first} list_mem`; Ctrl-C stops the cluster");
    if !config.synthetic_weights {
        println!(
            "dml: nodes without a local weights/ file serve a model once it is published: \
             `dml weights publish resnet50 FILE` (once, from any machine)"
        );
    }
    wait_for_signal(&mut cluster);
    println!("dml: stopping the cluster");
    drop(cluster);
    Ok(())
}

fn wait_for_signal(cluster: &mut Cluster) {
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
