//! Rotating the cluster secret without downtime on a real 3-node loopback cluster, in
//! README's three steps, restarting one process at a time (nodes and the introducer)
//! and checking after every restart that the cluster is formed again: (1) every node
//! also accepts the new key B, (2) every node dials with B and still accepts A, (3) A is
//! dropped. Afterwards a peer that proves A is refused with a clear reason.

mod common;

use std::fs;
use std::time::Duration;

use common::{Cluster, Timings, SECRET};
use dml_actors::net::body::Body;
use dml_actors::net::transport::{Client, Lane, Role, TransportError};
use dml_actors::net::wire::{Credential, HandshakeError, Key};

const NEW: &str = "the-rotated-secret-B-0123456789";

/// Rewrites the `[cluster] secret` line of the shared config.
fn set_keys(c: &Cluster, lines: &str) {
    let text = fs::read_to_string(&c.config).unwrap();
    let mut out = String::new();
    let mut in_cluster = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_cluster = line == "[cluster]";
        }
        if in_cluster && (line.starts_with("secret") || line.starts_with("accept_secrets")) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line == "[cluster]" {
            out.push_str(lines);
            out.push('\n');
        }
    }
    fs::write(&c.config, out).unwrap();
}

/// Restarts every process, one at a time, waiting for the cluster to form after each.
fn roll(c: &mut Cluster, all: &[String], step: &str) {
    c.kill9("introducer");
    c.start_introducer();
    for (name, addr) in c.nodes.clone() {
        c.kill9(&name);
        c.start_node(&name, &addr);
        c.wait_views(all, Duration::from_secs(120), step, |v| {
            v.len() == all.len() && v.iter().all(|(_, _, s)| s == "alive")
        });
    }
}

#[test]
fn the_secret_rotates_in_three_steps_without_the_cluster_breaking() {
    let t = Timings::fast();
    let mut c = Cluster::start("rotation", 3, &t, "");
    let all: Vec<String> = c.nodes.iter().map(|(_, a)| a.clone()).collect();
    c.wait_views(&all, Duration::from_secs(120), "formation", |v| {
        v.len() == 3 && v.iter().all(|(_, _, s)| s == "alive")
    });

    set_keys(
        &c,
        &format!("secret = \"{SECRET}\"\naccept_secrets = [\"{NEW}\"]"),
    );
    roll(&mut c, &all, "step 1: accept B");
    set_keys(
        &c,
        &format!("secret = \"{NEW}\"\naccept_secrets = [\"{SECRET}\"]"),
    );
    roll(&mut c, &all, "step 2: dial with B, accept A");
    set_keys(&c, &format!("secret = \"{NEW}\""));
    roll(&mut c, &all, "step 3: drop A");

    // The old key no longer makes a node.
    let h1 = c.addr("H1");
    let old = Credential::cluster(Key::new(SECRET.as_bytes().to_vec()).unwrap());
    let res = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(Client::<Body>::connect_as(
            &h1,
            Role::Node,
            Some("127.0.0.1:9"),
            Lane::Control,
            &old,
            Duration::from_secs(5),
        ));
    match res {
        Err(TransportError::Handshake(HandshakeError::RefusedByPeer(r))) => {
            assert!(r.contains("unknown cluster key id"), "{r}")
        }
        other => panic!("the old key was not refused: {:?}", other.map(|_| ())),
    }
}
