//! Private networks for local clusters: every node in its own Linux network namespace
//! with its own IP on a bridge of the root namespace, so that a test can cut the network
//! between groups of nodes ([`Net::partition`]) and heal it ([`Net::heal`]) while the
//! harness, the console client and the introducer (root namespace) still reach everyone.
//!
//! One cluster owns one index `k` (1..=254): bridge `dmlbr<k>` with 10.213.k.254/24,
//! namespace `dml<k>-<node>` with 10.213.k.<i>/24 on `eth0`, host-side veth `dv<k>-<i>`.
//! `k` is claimed with an exclusive `flock` on `<lock dir>/<k>.lock`: the kernel releases
//! it when the owner dies, so whoever takes it next knows that any bridge, namespace or
//! veth of that index is a leftover of a killed run and removes it first. Partitions are
//! blackhole routes inside the namespaces: packets to the other side vanish, so open TCP
//! connections stall like on a real cut instead of failing fast.
//! Needs root (CAP_NET_ADMIN) and iproute2's `ip`.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::sync::Mutex;

use anyhow::{bail, Context};

/// The /16 every cluster takes its /24 from.
const NET: [u8; 2] = [10, 213];
/// Last octet of the bridge (the root namespace's address on the cluster network).
const BRIDGE_HOST: u8 = 254;
/// Nodes per network: host numbers 1..=253.
pub const MAX_NODES: usize = 253;

/// The network of one cluster; dropping it deletes its namespaces, veths and bridge.
#[derive(Debug)]
pub struct Net {
    index: u8,
    bridge: String,
    /// (node name, namespace, address), in the order given to [`Net::create`].
    nodes: Vec<(String, String, Ipv4Addr)>,
    /// Blackhole routes in place: (namespace, address).
    cuts: Mutex<BTreeSet<(String, Ipv4Addr)>>,
    /// Held for the lifetime of the network: the claim on `index`.
    lock: Option<File>,
}

/// Runs `ip ARGS`; an error carries the command and its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Proc::new("ip")
        .args(args)
        .output()
        .context("network namespaces need iproute2's `ip`, which cannot be run")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip ARGS` whose failure does not matter (removing what may not exist).
fn ip_quiet(args: &[&str]) {
    let _ = Proc::new("ip").args(args).output();
}

/// The stdout of `ip ARGS`, empty when it fails.
fn ip_output(args: &[&str]) -> String {
    Proc::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// One clear line on what is missing, before anything is created.
fn check_prerequisites() -> anyhow::Result<()> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse::<u32>().ok());
    if let Some(uid) = euid.filter(|u| *u != 0) {
        bail!("network namespaces need root (CAP_NET_ADMIN); running as uid {uid}");
    }
    match Proc::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => bail!("network namespaces need iproute2's `ip` on PATH; it is missing"),
    }
}

/// Where index claims live: /run when writable (cleared at boot), else the temp dir.
fn lock_dir() -> PathBuf {
    let run = Path::new("/run/dml-netns");
    if fs::create_dir_all(run).is_ok() {
        return run.to_path_buf();
    }
    std::env::temp_dir().join("dml-netns")
}

/// Whether `a/len_a` and `b/len_b` share an address.
fn overlaps(a: Ipv4Addr, len_a: u32, b: Ipv4Addr, len_b: u32) -> bool {
    let len = len_a.min(len_b).min(32);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a) & mask == u32::from(b) & mask
}

/// Whether a route of the root namespace already covers part of `subnet/24` (a real
/// network of this host that happens to use it).
fn subnet_in_use(subnet: Ipv4Addr) -> bool {
    ip_output(&["-4", "-o", "route", "show", "table", "all"])
        .lines()
        .filter_map(|l| {
            let dst = l
                .split_whitespace()
                .find(|w| w.contains(|c: char| c.is_ascii_digit()))?;
            let (addr, len) = dst.split_once('/').unwrap_or((dst, "32"));
            Some((addr.parse::<Ipv4Addr>().ok()?, len.parse::<u32>().ok()?))
        })
        .any(|(a, len)| len > 0 && overlaps(a, len, subnet, 24))
}

/// Removes whatever a dead owner of index `k` left behind.
fn remove_leftovers(k: u8) {
    let ns_prefix = format!("dml{k}-");
    for line in ip_output(&["netns", "list"]).lines() {
        if let Some(ns) = line.split_whitespace().next() {
            if ns.starts_with(&ns_prefix) {
                ip_quiet(&["netns", "del", ns]);
            }
        }
    }
    // A namespace kept alive by an orphaned process keeps its veth pair: delete it from
    // the root side so that the names are free again (the orphan is left unreachable).
    let veth_prefix = format!("dv{k}-");
    for line in ip_output(&["-o", "link", "show"]).lines() {
        if let Some(name) = line.split(':').nth(1).map(str::trim) {
            let name = name.split('@').next().unwrap_or(name);
            if name.starts_with(&veth_prefix) {
                ip_quiet(&["link", "del", name]);
            }
        }
    }
    ip_quiet(&["link", "del", &format!("dmlbr{k}")]);
}

impl Net {
    /// Claims a free index and builds the network: the bridge, then per node a namespace
    /// with loopback up and `eth0` on the bridge. Nodes get 10.213.k.1, .2, ... in order.
    pub fn create(names: &[String]) -> anyhow::Result<Net> {
        check_prerequisites()?;
        anyhow::ensure!(
            names.len() <= MAX_NODES,
            "a namespaced cluster has at most {MAX_NODES} nodes"
        );
        let dir = lock_dir();
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // Start somewhere depending on the pid, so parallel harnesses rarely contend.
        let start = (std::process::id() % 254) as u8;
        for step in 0..254u16 {
            let k = ((start as u16 + step) % 254 + 1) as u8;
            let path = dir.join(format!("{k}.lock"));
            let lock = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            if lock.try_lock().is_err() {
                continue;
            }
            remove_leftovers(k);
            if subnet_in_use(Ipv4Addr::new(NET[0], NET[1], k, 0)) {
                continue;
            }
            let mut net = Net {
                index: k,
                bridge: format!("dmlbr{k}"),
                nodes: Vec::new(),
                cuts: Mutex::new(BTreeSet::new()),
                lock: Some(lock),
            };
            // On an error `net` drops here and removes what was made so far.
            net.build(names)?;
            return Ok(net);
        }
        bail!(
            "no free cluster network in {}.{}.0.0/16 (all 254 claimed or in use)",
            NET[0],
            NET[1]
        )
    }

    fn build(&mut self, names: &[String]) -> anyhow::Result<()> {
        let k = self.index;
        let bridge = self.bridge.clone();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.host_ip()),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for (i, name) in names.iter().enumerate() {
            let host = i as u8 + 1;
            let ns = format!("dml{k}-{name}");
            let veth = format!("dv{k}-{host}");
            let addr = Ipv4Addr::new(NET[0], NET[1], k, host);
            ip(&["netns", "add", &ns])?;
            self.nodes.push((name.clone(), ns.clone(), addr));
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// The root namespace's address on the cluster network (the bridge's): where the
    /// introducer listens, and where the harness's connections come from.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(NET[0], NET[1], self.index, BRIDGE_HOST)
    }

    /// The address of node `name`.
    pub fn ip_of(&self, name: &str) -> Option<Ipv4Addr> {
        self.node(name).map(|n| n.2)
    }

    /// The namespace node `name` runs in.
    pub fn namespace(&self, name: &str) -> Option<&str> {
        self.node(name).map(|n| n.1.as_str())
    }

    fn node(&self, name: &str) -> Option<&(String, String, Ipv4Addr)> {
        self.nodes.iter().find(|n| n.0 == name)
    }

    /// Cuts the network between groups of nodes (names), both ways, replacing any earlier
    /// partition: a node reaches only the nodes of its own group, nodes named in no group
    /// reach everyone, and the root namespace reaches all.
    pub fn partition(&self, groups: &[Vec<String>]) -> anyhow::Result<()> {
        for name in groups.iter().flatten() {
            anyhow::ensure!(self.node(name).is_some(), "no node named {name}");
        }
        self.heal()?;
        let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        for (g, group) in groups.iter().enumerate() {
            for name in group {
                let Some((_, ns, _)) = self.node(name) else {
                    continue;
                };
                let others = groups
                    .iter()
                    .enumerate()
                    .filter(|(h, _)| *h != g)
                    .flat_map(|(_, other)| other);
                for other in others {
                    let Some(addr) = self.ip_of(other) else {
                        continue;
                    };
                    if cuts.insert((ns.clone(), addr)) {
                        ip(&["-n", ns, "route", "add", "blackhole", &format!("{addr}/32")])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Cuts one node off from every other node (the harness still reaches it).
    pub fn isolate(&self, name: &str) -> anyhow::Result<()> {
        let rest = self
            .nodes
            .iter()
            .filter(|n| n.0 != name)
            .map(|n| n.0.clone())
            .collect();
        self.partition(&[vec![name.to_string()], rest])
    }

    /// Removes every cut: all nodes reach each other again.
    pub fn heal(&self) -> anyhow::Result<()> {
        let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((ns, addr)) = cuts.pop_first() {
            ip(&[
                "-n",
                &ns,
                "route",
                "del",
                "blackhole",
                &format!("{addr}/32"),
            ])?;
        }
        Ok(())
    }
}

#[cfg(test)]
impl Net {
    /// Gives up the claim and leaves everything in place, the way a killed harness does.
    fn abandon(mut self) {
        self.lock.take();
        std::mem::forget(self);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth pair in it; the bridge goes last. The
        // lock is released after this, when the fields drop.
        for (_, ns, _) in &self.nodes {
            ip_quiet(&["netns", "del", ns]);
        }
        remove_leftovers(self.index);
        self.lock.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("H{i}")).collect()
    }

    fn namespaces() -> String {
        ip_output(&["netns", "list"])
    }

    /// Whether `from` reaches `to` (`ip route get` fails on a blackhole route).
    fn cut(net: &Net, from: &str, to: &str) -> bool {
        let ns = net.namespace(from).unwrap();
        let to = net.ip_of(to).unwrap().to_string();
        !ip_output(&["-n", ns, "route", "get", &to]).contains("dev eth0")
    }

    #[test]
    fn networks_partition_heal_and_clean_up_after_themselves_and_dead_owners() {
        let net = match Net::create(&names(3)) {
            Ok(net) => net,
            Err(e) => {
                // Without root or `ip` the error must say which.
                let e = e.to_string();
                assert!(e.contains("root") || e.contains("`ip`"), "{e}");
                return;
            }
        };
        let ns1 = net.namespace("H1").unwrap().to_string();
        assert!(namespaces().contains(&ns1));
        assert!(!cut(&net, "H1", "H3"));

        net.partition(&[vec!["H1".into()], vec!["H2".into(), "H3".into()]])
            .unwrap();
        assert!(cut(&net, "H1", "H3"));
        assert!(cut(&net, "H3", "H1"));
        assert!(!cut(&net, "H2", "H3"));
        // The root namespace (the harness, the introducer) still reaches the cut node.
        let hub = ip_output(&["-n", &ns1, "route", "get", &net.host_ip().to_string()]);
        assert!(hub.contains("dev eth0"), "{hub}");
        // A second partition replaces the first.
        net.isolate("H3").unwrap();
        assert!(!cut(&net, "H1", "H2"));
        assert!(cut(&net, "H2", "H3"));
        assert!(net.partition(&[vec!["H9".into()]]).is_err());
        net.heal().unwrap();
        assert!(!cut(&net, "H2", "H3"));

        // A harness killed mid-run leaves everything behind; the next one to claim that
        // index removes the leftovers instead of failing on existing names.
        let k = net.index;
        net.abandon();
        assert!(namespaces().contains(&ns1));
        let again = Net::create(&names(3)).unwrap();
        assert_eq!(
            again.index, k,
            "another harness claimed the index in between"
        );
        drop(again);
        assert!(!namespaces().contains(&ns1), "{}", namespaces());
        assert!(!ip_output(&["-o", "link", "show"]).contains(&format!("dmlbr{k}:")));
    }

    #[test]
    fn overlap_of_prefixes() {
        let a = Ipv4Addr::new(10, 213, 7, 0);
        assert!(overlaps(a, 24, Ipv4Addr::new(10, 213, 7, 5), 32));
        assert!(overlaps(a, 24, Ipv4Addr::new(10, 0, 0, 0), 8));
        assert!(!overlaps(a, 24, Ipv4Addr::new(10, 213, 8, 0), 24));
        assert!(!overlaps(a, 24, Ipv4Addr::new(192, 0, 2, 0), 24));
    }
}
