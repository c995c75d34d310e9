//! Failure detector and membership on a real 10-node loopback cluster (the built binary):
//! formation, leave, short and long SIGSTOP, kill -9 of three ring neighbours, and no
//! false removals in between. One cluster runs the scenarios in order.

mod common;

use std::time::Duration;

use common::{Cluster, Timings};
use dml_actors::control::Command;

fn alive(view: &[(String, u64, String)]) -> Vec<String> {
    let mut v: Vec<String> = view.iter().map(|(a, _, _)| a.clone()).collect();
    v.sort();
    v
}

#[test]
fn ten_node_cluster_detects_failures_and_never_removes_live_nodes() {
    let t = Timings::fast();
    let bound = t.bound();
    let mut c = Cluster::start("fd", 10, &t, "");
    let all: Vec<String> = c.nodes.iter().map(|(_, a)| a.clone()).collect();

    // Formation: every node lists all ten, alive.
    c.wait_views(&all, Duration::from_secs(120), "formation", |v| {
        v.len() == 10 && v.iter().all(|(_, _, s)| s == "alive")
    });
    // The introducer answers list_mem too.
    let intro = c.ctl(&c.introducer, Command::ListMem).unwrap().unwrap();
    assert!(intro.json.contains(&c.addr("H1")), "{}", intro.text);

    // A quiet period with no faults.
    std::thread::sleep(Duration::from_secs(3));

    // leave: seen by all, never a failure.
    let h10 = c.addr("H10");
    let out = c.ctl(&h10, Command::Leave).unwrap();
    assert!(out.is_ok(), "{out:?}");
    let rest: Vec<String> = all.iter().filter(|a| **a != h10).cloned().collect();
    c.wait_views(&rest, Duration::from_secs(5), "leave spread", |v| {
        !alive(v).contains(&h10)
    });

    // SIGSTOP shorter than cleanup_time: suspected perhaps, refuted, never removed.
    let h7 = c.addr("H7");
    let inc_before = c
        .members(&h7)
        .unwrap()
        .iter()
        .find(|m| m.0 == h7)
        .map(|m| m.1);
    c.signal("H7", "-STOP");
    std::thread::sleep(Duration::from_secs_f64(t.ping_timeout + t.ping_duration));
    c.signal("H7", "-CONT");
    c.wait_views(&rest, Duration::from_secs(5), "short pause settles", |v| {
        v.iter().any(|(a, _, s)| *a == h7 && s == "alive")
    });
    for (name, _) in c.nodes.iter().filter(|(n, _)| n != "H10") {
        assert!(
            c.event_times(name, "failed", &h7).is_empty(),
            "{name} removed H7 after a short pause"
        );
    }
    let _ = inc_before;

    // SIGSTOP longer than the cleanup time: removed everywhere, then a clean rejoin with a
    // new incarnation after SIGCONT.
    let h6 = c.addr("H6");
    let old_inc = c
        .members(&c.addr("H1"))
        .unwrap()
        .iter()
        .find(|m| m.0 == h6)
        .unwrap()
        .1;
    c.signal("H6", "-STOP");
    let others: Vec<String> = rest.iter().filter(|a| **a != h6).cloned().collect();
    c.wait_views(
        &others,
        bound + Duration::from_secs(10),
        "long pause removes",
        |v| !alive(v).contains(&h6),
    );
    c.signal("H6", "-CONT");
    c.wait_views(
        &rest,
        Duration::from_secs(15),
        "rejoin after long pause",
        |v| {
            v.iter()
                .any(|(a, inc, s)| *a == h6 && *inc > old_inc && s == "alive")
        },
    );

    // kill -9 of three ring neighbours at once.
    let victims = ["H2", "H3", "H4"];
    let victim_addrs: Vec<String> = victims.iter().map(|n| c.addr(n)).collect();
    let t0 = common::wall_ms();
    for v in victims {
        c.kill9(v);
    }
    let live: Vec<String> = rest
        .iter()
        .filter(|a| !victim_addrs.contains(a))
        .cloned()
        .collect();
    c.wait_views(
        &live,
        bound + Duration::from_secs(10),
        "three failures removed",
        |v| victim_addrs.iter().all(|x| !alive(v).contains(x)) && v.len() == live.len(),
    );
    // Removal time from the nodes' own timestamped logs: within the bound + 1 s everywhere.
    let live_names: Vec<String> = c
        .nodes
        .iter()
        .filter(|(n, a)| live.contains(a) && n != "H10")
        .map(|(n, _)| n.clone())
        .collect();
    let mut worst = 0u64;
    for name in &live_names {
        for x in &victim_addrs {
            let times = c.event_times(name, "failed", x);
            let at = times.iter().copied().filter(|w| *w >= t0).min();
            let at = at.unwrap_or_else(|| panic!("{name} has no event=failed for {x}"));
            worst = worst.max(at - t0);
        }
    }
    eprintln!(
        "three simultaneous failures removed everywhere after {worst} ms (bound {} ms)",
        bound.as_millis() + 1000
    );
    assert!(
        worst <= bound.as_millis() as u64 + 1000,
        "removal took {worst} ms, over ping_duration + ping_timeout + cleanup_time + 1 s"
    );

    // Nobody live is left unwatched: with the ring recomputed, the survivors keep
    // detecting failures — kill one more and see it removed.
    c.kill9("H8");
    let h8 = c.addr("H8");
    let live2: Vec<String> = live.iter().filter(|a| **a != h8).cloned().collect();
    c.wait_views(
        &live2,
        bound + Duration::from_secs(10),
        "fourth failure removed",
        |v| !alive(v).contains(&h8),
    );

    // No false removals: the only failures any node ever logged are the real ones.
    let allowed: Vec<String> = victim_addrs
        .iter()
        .cloned()
        .chain([h6.clone(), h8.clone()])
        .collect();
    for (name, _) in c.nodes.clone() {
        for (_, a) in c.nodes.clone() {
            if allowed.contains(&a) {
                continue;
            }
            assert!(
                c.event_times(&name, "failed", &a).is_empty(),
                "{name} falsely removed {a}"
            );
        }
    }
}
