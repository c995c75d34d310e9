//! Network partitions on a real 6-node cluster, every node in its own network namespace
//! (needs root and iproute2): a short cut removes nobody, a long cut {H1,H2,H3} |
//! {H4,H5,H6} makes each side remove the other, and after healing the views converge
//! again; an SDFS file put before the cut is read on both sides during it and from
//! every node afterwards; a restarted node runs in its namespace again.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use common::{seeded_bytes, Cluster, Timings};

const SIDE_A: [&str; 3] = ["H1", "H2", "H3"];
const SIDE_B: [&str; 3] = ["H4", "H5", "H6"];
const NAME: &str = "part/file.bin";

/// The network namespace a node's process runs in, once `ip netns exec` has entered it
/// (before that the pid is `ip`'s, in the root namespace).
fn namespace_of(c: &Cluster, node: &str) -> String {
    let mut ns = String::new();
    let _ = dml_cluster::wait_until(Duration::from_secs(10), || {
        let out = std::process::Command::new("ip")
            .args(["netns", "identify", &c.pid(node).to_string()])
            .output()?;
        ns = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(!ns.is_empty())
    });
    ns
}

fn listed(view: &[(String, u64, String)]) -> BTreeSet<String> {
    view.iter().map(|(a, _, _)| a.clone()).collect()
}

#[test]
fn partitioned_sides_remove_each_other_and_converge_after_heal() {
    let t = Timings::fast();
    let mut c = Cluster::start_netns("partition", 6, &t, "");
    let ns_h6 = namespace_of(&c, "H6");
    assert!(
        ns_h6.starts_with("dml") && ns_h6.ends_with("-H6"),
        "{ns_h6:?}"
    );
    let addrs = |names: &[&str]| -> Vec<String> { names.iter().map(|n| c.addr(n)).collect() };
    let all = addrs(&[&SIDE_A[..], &SIDE_B[..]].concat());
    let (a, b) = (addrs(&SIDE_A), addrs(&SIDE_B));
    // Generous: on a loaded machine every node first spends tens of seconds making its
    // synthetic model weights.
    c.wait_views(&all, Duration::from_secs(120), "formation", |v| {
        v.len() == 6 && v.iter().all(|(_, _, s)| s == "alive")
    });

    let work = c.dir.join("work");
    fs::create_dir_all(&work).unwrap();
    let data = seeded_bytes(13, 300 * 1024 + 5);
    let src = work.join("src.bin");
    fs::write(&src, &data).unwrap();
    let r = c
        .sdfs(&a[0], &format!("put {} {NAME}", src.display()))
        .unwrap();
    assert_eq!(r["version"], 1, "{r}");
    let r = c.sdfs(&a[0], &format!("ls {NAME}")).unwrap();
    eprintln!("{NAME} is held by {r}");
    let get = |node: &str, tag: &str| -> Result<(), String> {
        let out = work.join(format!("{tag}-{node}.bin"));
        let r = c.sdfs(
            &c.addr(node),
            &format!("get {NAME} {} --force", out.display()),
        )?;
        assert_eq!(r["version"], 1, "{node}: {r}");
        assert!(fs::read(&out).unwrap() == data, "{node} read other bytes");
        Ok(())
    };

    // A cut shorter than the suspicion time: suspicions perhaps, refuted once the
    // network is back, never a removal.
    let short_start = common::wall_ms();
    c.partition(&[&SIDE_A, &SIDE_B]);
    std::thread::sleep(Duration::from_secs_f64(t.ping_timeout));
    c.heal();
    std::thread::sleep(t.bound() * 2);
    for node in SIDE_A.iter().chain(&SIDE_B) {
        for peer in &all {
            let failed = c.event_times(node, "failed", peer);
            assert!(
                failed.iter().all(|w| *w < short_start),
                "{node} removed {peer} after a {} s cut",
                t.ping_timeout
            );
        }
    }
    c.wait_views(&all, Duration::from_secs(10), "after the short cut", |v| {
        v.len() == 6 && v.iter().all(|(_, _, s)| s == "alive")
    });

    // A cut longer than the cleanup time: each side removes the other.
    let before = c.members(&a[0]).unwrap();
    let cut = Instant::now();
    c.partition(&[&SIDE_A, &SIDE_B]);
    let side_a: BTreeSet<String> = a.iter().cloned().collect();
    let side_b: BTreeSet<String> = b.iter().cloned().collect();
    c.wait_views(&a, Duration::from_secs(30), "side A removes side B", |v| {
        listed(v) == side_a
    });
    c.wait_views(&b, Duration::from_secs(30), "side B removes side A", |v| {
        listed(v) == side_b
    });
    eprintln!(
        "both sides removed each other {:?} after the cut",
        cut.elapsed()
    );

    // SDFS during the cut: a side may refuse the read, but never with other bytes.
    for node in ["H1", "H4"] {
        match get(node, "during") {
            Ok(()) => eprintln!("during the cut, {node} read {NAME}"),
            Err(e) => eprintln!("during the cut, {node} could not read {NAME}: {e}"),
        }
    }

    // Heal: the views converge again (a liveness wait, generously bounded).
    let healed = Instant::now();
    c.heal();
    c.wait_views(
        &all,
        Duration::from_secs(60),
        "views converge after heal",
        |v| v.len() == 6 && v.iter().all(|(_, _, s)| s == "alive"),
    );
    eprintln!("views converged {:?} after the heal", healed.elapsed());
    // Every node was removed by the other side, so every one is back in a new life.
    let after = c.members(&a[0]).unwrap();
    for (addr, inc, _) in &before {
        let now = after.iter().find(|m| m.0 == *addr).unwrap().1;
        assert!(
            now > *inc,
            "{addr} came back at incarnation {now}, was {inc}"
        );
    }

    // Every node reads the file, byte for byte.
    for node in SIDE_A.iter().chain(&SIDE_B) {
        let start = Instant::now();
        loop {
            match get(node, "after") {
                Ok(()) => break,
                Err(e) if start.elapsed() < Duration::from_secs(30) => {
                    eprintln!("after the heal, {node}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("after the heal, {node} cannot read {NAME}: {e}"),
            }
        }
    }

    // A restarted node goes back into its own namespace.
    c.kill9("H6");
    c.start_node("H6", "");
    assert_eq!(namespace_of(&c, "H6"), ns_h6);
}
