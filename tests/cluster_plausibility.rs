//! Issue 14, finding 2, on real processes: a rogue peer that holds the node secret and a
//! configured node's address sends `Updates([[addr, u64::MAX, u64::MAX, Failed]])`
//! (the message that evicted a node for good: 448k rejoin lines, 525k admissions). The
//! target stays a member at its incarnation, nobody rejoins, every log grows by a
//! handful of lines, the introducer admits nobody, and the cluster stays formed. Then
//! `forgive` clears a tombstone through the console path.

mod common;

use std::net::TcpListener as StdListener;
use std::time::{Duration, Instant};

use common::{Cluster, Timings, SECRET};
use dml_actors::control::Command;
use dml_actors::membership::{Msg, Update, UpdateState};
use dml_actors::net::body::Body;
use dml_actors::net::transport::{Lane, Transport, TransportConfig};
use dml_actors::types::NodeAddr;

fn addrs(view: &[(String, u64, String)]) -> Vec<String> {
    let mut v: Vec<String> = view
        .iter()
        .filter(|(_, _, s)| s == "alive")
        .map(|(a, _, _)| a.clone())
        .collect();
    v.sort();
    v
}

#[test]
fn a_forged_failure_at_u64_max_evicts_nobody_and_floods_no_log() {
    let t = Timings::fast();
    let mut c = Cluster::start("plausibility", 6, &t, "");
    let all: Vec<String> = c.nodes.iter().map(|(_, a)| a.clone()).collect();
    c.wait_views(&all, Duration::from_secs(120), "formation", |v| {
        v.len() == 6
    });
    // The rogue takes the place of H6: a configured identity, so only the plausibility
    // checks stand between its messages and the membership.
    let h6 = c.addr("H6");
    c.kill9("H6");
    let mut live: Vec<String> = all.iter().filter(|a| **a != h6).cloned().collect();
    live.sort();
    c.wait_views(&live, Duration::from_secs(30), "H6 removed", |v| {
        v.len() == live.len() && addrs(v) == live
    });
    let h1 = c.addr("H1");
    let h2 = c.addr("H2");
    let inc_h1 = |c: &Cluster| {
        c.members(&h1)
            .and_then(|v| v.into_iter().find(|m| m.0 == h1))
            .map(|m| m.1)
    };
    let before_inc = inc_h1(&c).expect("H1 lists itself");
    let mut names: Vec<String> = (1..=5).map(|i| format!("H{i}")).collect();
    names.push("introducer".into());
    let before_len: Vec<usize> = names.iter().map(|n| c.log(n).len()).collect();

    let poison = vec![
        Update {
            addr: NodeAddr(h1.clone()),
            incarnation: u64::MAX,
            joined: u64::MAX,
            state: UpdateState::Failed,
        },
        Update {
            addr: NodeAddr(h2.clone()),
            incarnation: u64::MAX - 1,
            joined: u64::MAX - 1,
            state: UpdateState::Left,
        },
    ];
    let mut targets: Vec<NodeAddr> = live.iter().cloned().map(NodeAddr).collect();
    targets.push(NodeAddr(c.introducer.clone()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sent = rt.block_on(async {
        let std = StdListener::bind(h6.as_str()).expect("bind H6's port");
        std.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(std).unwrap();
        let (rogue, _inbound) = Transport::<Body>::start(
            listener,
            TransportConfig::new(NodeAddr(h6.clone()), SECRET.as_bytes()),
        )
        .expect("rogue transport");
        let mut sent = 0u32;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(4) {
            for to in &targets {
                let msg = Body::Membership(Msg::Updates(poison.clone()));
                if rogue.send(to, Lane::Control, msg).is_ok() {
                    sent += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let the queues drain before the transport goes.
        tokio::time::sleep(Duration::from_secs(1)).await;
        rogue.shutdown();
        sent
    });
    assert!(sent > 1000, "the rogue sent only {sent} messages");
    // Long enough for any suspicion or rejoin it caused to play out.
    std::thread::sleep(t.bound());

    for a in &live {
        let view = c.members(a).expect("list_mem answers");
        assert_eq!(addrs(&view), live, "view of {a}: {view:?}");
    }
    assert_eq!(inc_h1(&c), Some(before_inc), "H1 kept its incarnation");
    for (n, before) in names.iter().zip(&before_len) {
        let log = c.log(n);
        let new = log.get(*before..).unwrap_or("");
        let lines = new.lines().count();
        assert!(!new.contains("event=rejoin"), "{n} rejoined:\n{new}");
        assert!(!new.contains("event=admitted"), "{n} admitted:\n{new}");
        assert!(!new.contains("event=failed"), "{n} buried someone:\n{new}");
        // The refusal is reported (once per sender per minute), nothing more.
        let reports = new.matches("event=implausible").count();
        assert!((1..=2).contains(&reports), "{n}: {reports} reports:\n{new}");
        assert!(lines < 40, "{n}: log grew by {lines} lines:\n{new}");
    }

    // `forgive` through the console path: H1 holds H6's tombstone (it was killed and
    // buried above) and clears it; a live member has none, which is a one-line error.
    let out = c.ctl(&h1, Command::Forgive { addr: h6.clone() }).unwrap();
    assert!(out.is_ok(), "{out:?}");
    let e = c
        .ctl(&h1, Command::Forgive { addr: h2.clone() })
        .unwrap()
        .unwrap_err();
    assert!(e.contains("no tombstone") && !e.contains('\n'), "{e}");
    assert_eq!(addrs(&c.members(&h1).unwrap()), live);
}
