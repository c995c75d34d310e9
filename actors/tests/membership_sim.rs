//! Scenario tests of the failure detector and membership cores on a simulated network
//! with virtual time: kill, pause, leave, drop, partition, introducer restart.
//!
//! The harness plays the part of the actors: it routes each core's effects (messages
//! with a seeded random latency, timers on a virtual clock, acks to probers) exactly as
//! the MembershipActor/PingActor shells do. Every scenario prints its seed; rerun one
//! with `DML_SIM_SEED=<seed>`.

use std::collections::{BTreeMap, BTreeSet};

use dml_actors::membership::introducer::{Introducer, IntroducerEffect, IntroducerSettings, IntroducerTimer};
use dml_actors::membership::{
    compute_monitors, Effect, MemberEvent, MemberState, Membership, Msg, Settings, Status, Timer,
    UpdateState,
};
use dml_actors::membership::ping::{ProbeEffect, ProbeSettings, ProbeTimer, Prober};
use dml_actors::types::{Incarnation, Millis, NodeAddr};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const PD: Millis = 500;
const PT: Millis = 300;
const CLEANUP: Millis = 1500;
/// Max one-way latency of the simulated network.
const MAX_LAT: Millis = 3;
/// Allowance for spreading: a few hops of latency.
const SPREAD: Millis = 20;

fn h(i: usize) -> NodeAddr {
    NodeAddr(format!("127.0.0.1:{}", 8000 + i))
}

fn intro_addr() -> NodeAddr {
    NodeAddr::from("127.0.0.1:8888")
}

fn seed_for(default: u64) -> u64 {
    let seed = std::env::var("DML_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    // Shown by the test runner only when the test fails.
    println!("DML_SIM_SEED={seed}");
    seed
}

#[derive(Debug)]
enum Ev {
    Deliver {
        from: NodeAddr,
        to: NodeAddr,
        msg: Msg,
    },
    MemTimer {
        node: NodeAddr,
        timer: Timer,
    },
    ProbeTimer {
        node: NodeAddr,
        peer: NodeAddr,
        timer: ProbeTimer,
    },
    IntroTimer(IntroducerTimer),
}

impl Ev {
    fn target(&self) -> Option<&NodeAddr> {
        match self {
            Ev::Deliver { to, .. } => Some(to),
            Ev::MemTimer { node, .. } | Ev::ProbeTimer { node, .. } => Some(node),
            Ev::IntroTimer(_) => None,
        }
    }
}

struct SimNode {
    core: Membership,
    probers: BTreeMap<NodeAddr, Prober>,
    up: bool,
    paused: bool,
    /// Events that reached a paused node, replayed in order on resume.
    deferred: Vec<Ev>,
}

#[derive(Clone, Debug)]
struct Logged {
    at: Millis,
    node: NodeAddr,
    event: MemberEvent,
}

struct Sim {
    seed: u64,
    now: Millis,
    next_id: u64,
    queue: BTreeMap<(Millis, u64), Ev>,
    nodes: BTreeMap<NodeAddr, SimNode>,
    ring: Vec<NodeAddr>,
    settings: Settings,
    intro: Option<Introducer>,
    rng: ChaCha8Rng,
    next_token: u64,
    /// Fraction of Ping/Ack messages dropped.
    drop_probes: f64,
    /// Fraction of every other message dropped.
    drop_other: f64,
    /// Unordered pairs that cannot talk.
    cut: BTreeSet<(NodeAddr, NodeAddr)>,
    log: Vec<Logged>,
    /// Encoded bytes sent per node (MessagePack, as on the wire), for the cost test.
    bytes_sent: BTreeMap<NodeAddr, u64>,
}

impl Sim {
    fn new(seed: u64, n_ring: usize, m: usize) -> Sim {
        let ring: Vec<NodeAddr> = (1..=n_ring).map(h).collect();
        let settings = Settings::new(ring.clone(), m, PD, CLEANUP, Some(intro_addr()));
        Sim {
            seed,
            now: 0,
            next_id: 0,
            queue: BTreeMap::new(),
            nodes: BTreeMap::new(),
            ring,
            settings,
            intro: None,
            rng: ChaCha8Rng::seed_from_u64(seed),
            next_token: 1,
            drop_probes: 0.0,
            drop_other: 0.0,
            cut: BTreeSet::new(),
            log: Vec::new(),
            bytes_sent: BTreeMap::new(),
        }
    }

    fn ctx(&self) -> String {
        format!("seed {} at t={}", self.seed, self.now)
    }

    fn start_introducer(&mut self) {
        let mut i = Introducer::new(IntroducerSettings {
            ring: self.ring.clone(),
            member_ttl: self.settings.announce_interval * 4,
            reap_interval: self.settings.announce_interval,
        })
        .unwrap();
        i.start(self.now);
        self.intro = Some(i);
        self.drain_intro();
    }

    fn kill_introducer(&mut self) {
        self.intro = None;
    }

    /// Start node `i` (fresh process) and join, with its start time as incarnation.
    fn start_node(&mut self, i: usize) {
        let addr = h(i);
        let core_seed = self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut core = Membership::new(addr.clone(), self.settings.clone(), core_seed).unwrap();
        core.join(self.now, 1_000_000 + self.now).unwrap();
        self.nodes.insert(
            addr.clone(),
            SimNode {
                core,
                probers: BTreeMap::new(),
                up: true,
                paused: false,
                deferred: Vec::new(),
            },
        );
        self.drain_node(&addr);
    }

    /// Bring up the introducer and nodes 1..=n, then let them settle.
    fn boot(&mut self, n: usize) {
        self.start_introducer();
        for i in 1..=n {
            self.start_node(i);
            self.run_for(20);
        }
        self.run_for(3 * PD);
        let all: Vec<usize> = (1..=n).collect();
        self.assert_views(&all);
    }

    /// kill -9: the process and its timers are gone, its connections reset.
    fn kill(&mut self, i: usize) {
        let addr = h(i);
        if let Some(n) = self.nodes.get_mut(&addr) {
            n.up = false;
            n.deferred.clear();
        }
        self.queue.retain(|_, ev| ev.target() != Some(&addr));
    }

    fn pause(&mut self, i: usize) {
        if let Some(n) = self.nodes.get_mut(&h(i)) {
            n.paused = true;
        }
    }

    fn resume(&mut self, i: usize) {
        let addr = h(i);
        let deferred = match self.nodes.get_mut(&addr) {
            Some(n) => {
                n.paused = false;
                std::mem::take(&mut n.deferred)
            }
            None => return,
        };
        for ev in deferred {
            self.dispatch(ev);
        }
    }

    fn partition(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.cut.insert(pair(&h(x), &h(y)));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn core(&self, i: usize) -> &Membership {
        &self.nodes[&h(i)].core
    }

    fn schedule(&mut self, at: Millis, ev: Ev) {
        let id = self.next_id;
        self.next_id += 1;
        self.queue.insert((at.max(self.now), id), ev);
    }

    fn send(&mut self, from: NodeAddr, to: NodeAddr, msg: Msg) {
        let bytes = rmp_serde::to_vec(&msg).map(|v| v.len()).unwrap_or(0) as u64;
        *self.bytes_sent.entry(from.clone()).or_default() += bytes;
        if self.cut.contains(&pair(&from, &to)) {
            return;
        }
        let frac = match msg {
            Msg::Ping { .. } | Msg::Ack { .. } => self.drop_probes,
            _ => self.drop_other,
        };
        if frac > 0.0 && self.rng.gen_bool(frac) {
            return;
        }
        let lat = self.rng.gen_range(1..=MAX_LAT);
        self.schedule(self.now + lat, Ev::Deliver { from, to, msg });
    }

    fn run_for(&mut self, d: Millis) {
        self.run_until(self.now + d);
    }

    fn run_until(&mut self, t: Millis) {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > t {
                break;
            }
            let ((at, _), ev) = entry.remove_entry();
            self.now = at;
            self.dispatch(ev);
        }
        self.now = t;
    }

    fn dispatch(&mut self, ev: Ev) {
        if let Some(target) = ev.target() {
            if *target == intro_addr() {
                if let Ev::Deliver { from, msg, .. } = ev {
                    if let Some(i) = self.intro.as_mut() {
                        i.handle_msg(self.now, &from, msg);
                        self.drain_intro();
                    }
                }
                return;
            }
            let Some(node) = self.nodes.get_mut(target) else {
                return;
            };
            if !node.up {
                return;
            }
            if node.paused {
                node.deferred.push(ev);
                return;
            }
        }
        match ev {
            Ev::Deliver { from, to, msg } => {
                if let Some(n) = self.nodes.get_mut(&to) {
                    n.core.handle_msg(self.now, &from, msg);
                }
                self.drain_node(&to);
            }
            Ev::MemTimer { node, timer } => {
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.core.handle_timer(self.now, timer);
                }
                self.drain_node(&node);
            }
            Ev::ProbeTimer { node, peer, timer } => {
                if let Some(p) = self
                    .nodes
                    .get_mut(&node)
                    .and_then(|n| n.probers.get_mut(&peer))
                {
                    p.handle_timer(self.now, timer);
                }
                self.drain_node(&node);
            }
            Ev::IntroTimer(t) => {
                if let Some(i) = self.intro.as_mut() {
                    i.handle_timer(self.now, t);
                    self.drain_intro();
                }
            }
        }
    }

    fn drain_intro(&mut self) {
        let fx = match self.intro.as_mut() {
            Some(i) => i.take_effects(),
            None => return,
        };
        for e in fx {
            match e {
                IntroducerEffect::Send { to, msg } => self.send(intro_addr(), to, msg),
                IntroducerEffect::SetTimer { at, timer } => {
                    self.schedule(at, Ev::IntroTimer(timer))
                }
                IntroducerEffect::Event(_) => {}
            }
        }
    }

    /// Execute a node's effects the way the actor shells do, until none are left.
    fn drain_node(&mut self, addr: &NodeAddr) {
        loop {
            let Some(node) = self.nodes.get_mut(addr) else {
                return;
            };
            let mut core_fx = node.core.take_effects();
            let mut probe_fx = Vec::new();
            for p in node.probers.values_mut() {
                probe_fx.extend(p.take_effects());
            }
            if core_fx.is_empty() && probe_fx.is_empty() {
                return;
            }
            for e in core_fx.drain(..) {
                match e {
                    Effect::Send { to, msg } => self.send(addr.clone(), to, msg),
                    Effect::SetTimer { at, timer } => self.schedule(
                        at,
                        Ev::MemTimer {
                            node: addr.clone(),
                            timer,
                        },
                    ),
                    Effect::Acked { peer, seq } => {
                        let now = self.now;
                        if let Some(p) = self
                            .nodes
                            .get_mut(addr)
                            .and_then(|n| n.probers.get_mut(&peer))
                        {
                            p.handle_ack(now, seq);
                        }
                    }
                    Effect::Event(ev) => {
                        if let MemberEvent::MonitorsChanged(list) = &ev {
                            self.set_probers(addr, list);
                        }
                        self.log.push(Logged {
                            at: self.now,
                            node: addr.clone(),
                            event: ev,
                        });
                    }
                }
            }
            for e in probe_fx {
                let now = self.now;
                match e {
                    ProbeEffect::SendPing { peer, seq } => {
                        if let Some(n) = self.nodes.get_mut(addr) {
                            n.core.send_ping(now, &peer, seq);
                        }
                    }
                    ProbeEffect::SetTimer { at, timer } => {
                        // The peer is needed to route the timer back to its prober.
                        let peer = self.nodes[addr]
                            .probers
                            .values()
                            .find(|p| p.token() == timer.token)
                            .map(|p| p.peer().clone());
                        if let Some(peer) = peer {
                            self.schedule(
                                at,
                                Ev::ProbeTimer {
                                    node: addr.clone(),
                                    peer,
                                    timer,
                                },
                            );
                        }
                    }
                    ProbeEffect::Suspect { peer, .. } => {
                        if let Some(n) = self.nodes.get_mut(addr) {
                            n.core.report_unresponsive(now, &peer);
                        }
                    }
                    ProbeEffect::Rtt { .. } => {}
                }
            }
        }
    }

    /// What the MembershipActor does on MonitorsChanged: stop stale PingActors, start new.
    fn set_probers(&mut self, addr: &NodeAddr, list: &[NodeAddr]) {
        let now = self.now;
        let mut token = self.next_token;
        let Some(node) = self.nodes.get_mut(addr) else {
            return;
        };
        node.probers.retain(|peer, _| list.contains(peer));
        for peer in list {
            if !node.probers.contains_key(peer) {
                let s = ProbeSettings {
                    ping_duration: PD,
                    ping_timeout: PT,
                };
                let mut p = Prober::new(peer.clone(), s, token).unwrap();
                token += 1;
                p.start(now);
                node.probers.insert(peer.clone(), p);
            }
        }
        self.next_token = token;
    }

    // ---- observations ----

    fn live(&self) -> Vec<NodeAddr> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.up && !n.paused && n.core.status() == Status::Member)
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Every running member lists exactly `expect`, all alive.
    fn views_equal(&self, expect: &[usize]) -> Result<(), String> {
        let want: BTreeSet<NodeAddr> = expect.iter().map(|&i| h(i)).collect();
        for a in self.live() {
            let got: BTreeSet<NodeAddr> = self.nodes[&a]
                .core
                .members()
                .into_iter()
                .map(|m| m.addr)
                .collect();
            if got != want {
                return Err(format!("{a} lists {got:?}, want {want:?}"));
            }
            if let Some(m) = self.nodes[&a]
                .core
                .members()
                .iter()
                .find(|m| m.state != MemberState::Alive)
            {
                return Err(format!("{a} lists {} as {:?}", m.addr, m.state));
            }
        }
        Ok(())
    }

    fn assert_views(&self, expect: &[usize]) {
        if let Err(e) = self.views_equal(expect) {
            panic!("{}: {e}", self.ctx());
        }
    }

    /// Run until the views equal `expect`, at most `limit` ms; returns when it happened.
    fn run_until_views(&mut self, expect: &[usize], limit: Millis) -> Millis {
        let end = self.now + limit;
        while self.now < end {
            if self.views_equal(expect).is_ok() {
                return self.now;
            }
            self.run_for(10);
        }
        if let Err(e) = self.views_equal(expect) {
            panic!(
                "{}: views did not converge within {limit} ms: {e}",
                self.ctx()
            );
        }
        self.now
    }

    /// Every running member monitors what the ring gives over the current live set,
    /// and each live node has min(m, n - 1) distinct live watchers.
    fn assert_watched(&self) {
        let live = self.live();
        let m = self.settings.m;
        for a in &live {
            let expect = compute_monitors(&self.settings, a, &live);
            assert_eq!(
                self.nodes[a].core.monitors(),
                expect.as_slice(),
                "{}: monitors of {a}",
                self.ctx()
            );
        }
        for x in &live {
            let watchers = live
                .iter()
                .filter(|w| self.nodes[*w].core.monitors().contains(x))
                .count();
            assert_eq!(
                watchers,
                m.min(live.len() - 1),
                "{}: {x} has {watchers} live watchers",
                self.ctx()
            );
        }
    }

    fn events<'a>(
        &'a self,
        pred: impl Fn(&MemberEvent) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Logged> + 'a {
        self.log.iter().filter(move |l| pred(&l.event))
    }

    fn failed_events_about(&self, x: &NodeAddr) -> Vec<Logged> {
        self.events(|e| matches!(e, MemberEvent::Failed { addr, .. } if addr == x))
            .cloned()
            .collect()
    }

    fn count_failures(&self) -> usize {
        self.events(|e| matches!(e, MemberEvent::Failed { .. }))
            .count()
    }

    fn incarnation(&self, i: usize) -> Incarnation {
        self.core(i).self_member().incarnation
    }
}

fn pair(a: &NodeAddr, b: &NodeAddr) -> (NodeAddr, NodeAddr) {
    if a <= b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

fn all(n: usize) -> Vec<usize> {
    (1..=n).collect()
}

fn except(n: usize, gone: &[usize]) -> Vec<usize> {
    (1..=n).filter(|i| !gone.contains(i)).collect()
}

/// Bound on "removed everywhere" after a kill at time t.
const REMOVAL_BOUND: Millis = PD + PT + CLEANUP + SPREAD;

#[test]
fn fault_free_run_has_no_suspicion_and_seed_monitors() {
    let mut sim = Sim::new(seed_for(1), 10, 3);
    sim.boot(10);
    sim.run_for(120_000);
    let bad: Vec<&Logged> = sim
        .events(|e| {
            matches!(
                e,
                MemberEvent::Suspected { .. }
                    | MemberEvent::Failed { .. }
                    | MemberEvent::Rejoin { .. }
            )
        })
        .collect();
    assert!(bad.is_empty(), "{}: {bad:?}", sim.ctx());
    sim.assert_views(&all(10));
    assert_eq!(sim.core(1).monitors(), &[h(2), h(10), h(5)]);
    assert_eq!(sim.core(7).monitors(), &[h(8), h(6), h(1)]);
    sim.assert_watched();
}

#[test]
fn killed_node_is_suspected_then_removed_everywhere_within_bound() {
    let seed = seed_for(2);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sim = Sim::new(seed, 10, 3);
    sim.boot(10);
    // Several kills at random phases of the probe period, one after the other.
    for victim in [5usize, 9, 2] {
        sim.run_for(rng.gen_range(0..PD));
        let t = sim.now;
        sim.kill(victim);
        let alive: Vec<usize> = sim
            .live()
            .iter()
            .filter_map(|a| (1..=10).find(|&i| h(i) == *a))
            .filter(|&i| i != victim)
            .collect();
        sim.run_for(REMOVAL_BOUND + 5 * PD);
        let first_suspect = sim
            .events(|e| matches!(e, MemberEvent::Suspected { addr, by_me: true, .. } if *addr == h(victim)))
            .map(|l| l.at)
            .min()
            .unwrap_or_else(|| panic!("{}: H{victim} never suspected", sim.ctx()));
        assert!(
            first_suspect - t <= PD + PT + 1,
            "{}: suspected after {} ms",
            sim.ctx(),
            first_suspect - t
        );
        let removed = sim.failed_events_about(&h(victim));
        for &i in &alive {
            let at = removed
                .iter()
                .find(|l| l.node == h(i))
                .map(|l| l.at)
                .unwrap_or_else(|| panic!("{}: H{i} never removed H{victim}", sim.ctx()));
            assert!(
                at - t <= REMOVAL_BOUND,
                "{}: H{i} removed H{victim} after {} ms (bound {REMOVAL_BOUND})",
                sim.ctx(),
                at - t
            );
        }
        sim.assert_views(&alive);
        sim.assert_watched();
    }
    // Nobody but the victims was ever declared failed.
    let victims = [h(5), h(9), h(2)];
    assert!(sim
        .events(|e| matches!(e, MemberEvent::Failed { addr, .. } if !victims.contains(addr)))
        .next()
        .is_none());
}

#[test]
fn three_ring_neighbours_killed_at_once_are_all_removed_and_nobody_is_unwatched() {
    for (k, dead) in [[2usize, 3, 4], [9, 10, 1], [3, 4, 8]]
        .into_iter()
        .enumerate()
    {
        let mut sim = Sim::new(seed_for(30 + k as u64), 10, 3);
        sim.boot(10);
        sim.run_for(137);
        let t = sim.now;
        for d in dead {
            sim.kill(d);
        }
        sim.run_for(REMOVAL_BOUND);
        let alive = except(10, &dead);
        for d in dead {
            let removed = sim.failed_events_about(&h(d));
            for &i in &alive {
                assert!(
                    removed
                        .iter()
                        .any(|l| l.node == h(i) && l.at - t <= REMOVAL_BOUND),
                    "{}: H{i} did not remove H{d} within {REMOVAL_BOUND} ms",
                    sim.ctx()
                );
            }
        }
        sim.assert_views(&alive);
        sim.assert_watched();
        // Detection keeps working on the shrunk ring: one more kill is caught too.
        sim.kill(alive[0]);
        sim.run_for(REMOVAL_BOUND + PD);
        let rest: Vec<usize> = alive[1..].to_vec();
        sim.assert_views(&rest);
        sim.assert_watched();
    }
}

#[test]
fn falsely_suspected_live_node_refutes_and_is_not_removed() {
    let mut sim = Sim::new(seed_for(4), 10, 3);
    sim.boot(10);
    let before = sim.incarnation(3);
    // H2's prober lost an ack from H3 (as if the network ate it).
    sim.nodes
        .get_mut(&h(2))
        .unwrap()
        .core
        .report_unresponsive(sim.now, &h(3));
    sim.drain_node(&h(2));
    sim.run_for(CLEANUP * 3);
    assert!(sim.incarnation(3) > before, "{}", sim.ctx());
    assert!(sim.failed_events_about(&h(3)).is_empty(), "{}", sim.ctx());
    let refuted: BTreeSet<NodeAddr> = sim
        .events(|e| matches!(e, MemberEvent::Refuted { addr, .. } if *addr == h(3)))
        .map(|l| l.node.clone())
        .collect();
    let suspected: BTreeSet<NodeAddr> = sim
        .events(|e| matches!(e, MemberEvent::Suspected { addr, .. } if *addr == h(3)))
        .map(|l| l.node.clone())
        .collect();
    // Every node that held the suspicion saw it refuted; H3 refuted it itself.
    assert!(suspected.contains(&h(2)), "{}", sim.ctx());
    assert!(refuted.contains(&h(3)), "{}", sim.ctx());
    assert!(
        suspected.is_subset(&refuted),
        "{}: {suspected:?} vs {refuted:?}",
        sim.ctx()
    );
    sim.assert_views(&all(10));
    for i in 1..=10 {
        let m = sim
            .core(i)
            .members()
            .into_iter()
            .find(|m| m.addr == h(3))
            .unwrap();
        assert_eq!(m.incarnation, before + 1, "{}: view of H{i}", sim.ctx());
    }
}

#[test]
fn stale_updates_never_resurrect_a_removed_member() {
    let mut sim = Sim::new(seed_for(5), 10, 3);
    sim.boot(10);
    let old = sim.core(6).self_member();
    sim.kill(6);
    sim.run_for(REMOVAL_BOUND + PD);
    sim.assert_views(&except(10, &[6]));
    // A laggard replays the old life's alive and suspect, even at a higher incarnation.
    for (inc, state) in [
        (old.incarnation, UpdateState::Alive),
        (old.incarnation + 5, UpdateState::Alive),
        (old.incarnation + 5, UpdateState::Suspect),
    ] {
        let stale = dml_actors::membership::Update {
            addr: h(6),
            incarnation: inc,
            joined: old.joined,
            state,
        };
        sim.send(h(1), h(2), Msg::Updates(vec![stale]));
        sim.run_for(PD * 4);
        sim.assert_views(&except(10, &[6]));
    }
    // The same address with a new life (a restart) is admitted.
    let t0 = sim.now;
    sim.start_node(6);
    let t = sim.run_until_views(&all(10), 5 * PD);
    assert!(sim
        .core(1)
        .members()
        .iter()
        .any(|m| m.addr == h(6) && m.joined > old.incarnation));
    println!("restart admitted after {} ms", t - t0);
}

#[test]
fn leave_is_seen_by_all_and_never_counted_as_failure() {
    let mut sim = Sim::new(seed_for(6), 10, 3);
    sim.boot(10);
    let t = sim.now;
    sim.nodes.get_mut(&h(4)).unwrap().core.leave(t).unwrap();
    sim.drain_node(&h(4));
    sim.run_for(SPREAD);
    let seen: BTreeSet<NodeAddr> = sim
        .events(|e| matches!(e, MemberEvent::Left { addr, .. } if *addr == h(4)))
        .map(|l| l.node.clone())
        .collect();
    assert_eq!(seen.len(), 9, "{}: {seen:?}", sim.ctx());
    sim.run_for(REMOVAL_BOUND * 2);
    assert!(sim
        .events(|e| matches!(
            e,
            MemberEvent::Suspected { addr, .. } | MemberEvent::Failed { addr, .. } if *addr == h(4)
        ))
        .next()
        .is_none());
    assert_eq!(sim.core(4).status(), Status::Left);
    sim.assert_views(&except(10, &[4]));
    sim.assert_watched();
    // The introducer forgot it too, so a joiner is not handed a departed member.
    assert!(!sim
        .intro
        .as_ref()
        .unwrap()
        .members()
        .iter()
        .any(|m| m.addr == h(4)));
}

#[test]
fn pause_shorter_than_cleanup_is_refuted_longer_is_removal_then_rejoin() {
    let mut sim = Sim::new(seed_for(7), 10, 3);
    sim.boot(10);
    // Short: long enough to be suspected (> PD + PT), well inside cleanup_time.
    let before = sim.incarnation(6);
    sim.pause(6);
    sim.run_for(PD + PT + 100);
    assert!(
        sim.events(|e| matches!(e, MemberEvent::Suspected { addr, .. } if *addr == h(6)))
            .next()
            .is_some(),
        "{}: pause was not noticed",
        sim.ctx()
    );
    sim.resume(6);
    sim.run_for(CLEANUP * 2);
    assert!(sim.failed_events_about(&h(6)).is_empty(), "{}", sim.ctx());
    assert!(sim.incarnation(6) > before);
    assert_eq!(
        sim.core(6).self_member().joined,
        before,
        "no rejoin for a refutation"
    );
    sim.assert_views(&all(10));

    // Long: removed everywhere, then after resume a rejoin under a new incarnation.
    let life = sim.core(6).self_member();
    let t = sim.now;
    sim.pause(6);
    sim.run_for(REMOVAL_BOUND + 1000);
    let removed: BTreeSet<NodeAddr> = sim
        .failed_events_about(&h(6))
        .into_iter()
        .filter(|l| l.at >= t)
        .map(|l| l.node)
        .collect();
    assert_eq!(removed.len(), 9, "{}: removed by {removed:?}", sim.ctx());
    sim.assert_views(&except(10, &[6]));
    sim.resume(6);
    sim.run_until_views(&all(10), 4 * PD);
    let rejoins: Vec<&Logged> = sim
        .events(|e| matches!(e, MemberEvent::Rejoin { .. }))
        .collect();
    assert_eq!(rejoins.len(), 1, "{}: {rejoins:?}", sim.ctx());
    assert_eq!(rejoins[0].node, h(6));
    let now_life = sim.core(6).self_member();
    assert!(now_life.joined > life.incarnation, "{}", sim.ctx());
    for i in 1..=10 {
        let m = sim
            .core(i)
            .members()
            .into_iter()
            .find(|m| m.addr == h(6))
            .unwrap();
        assert_eq!(m.joined, now_life.joined, "{}: view of H{i}", sim.ctx());
    }
    // Nobody else paid for it.
    assert_eq!(sim.count_failures(), 9, "{}", sim.ctx());
    sim.run_for(10 * PD);
    sim.assert_views(&all(10));
    sim.assert_watched();
}

#[test]
fn explicit_topology_is_honoured_and_skips_dead_nodes() {
    let mut sim = Sim::new(seed_for(8), 6, 3);
    // Each node watches the next two on the ring (not the default sets).
    let mut topo = BTreeMap::new();
    for i in 1..=6usize {
        topo.insert(h(i), vec![h(i % 6 + 1), h((i + 1) % 6 + 1)]);
    }
    sim.settings.topology = Some(topo.clone());
    sim.boot(6);
    for i in 1..=6 {
        assert_eq!(
            sim.core(i).monitors(),
            topo[&h(i)].as_slice(),
            "{}",
            sim.ctx()
        );
    }
    sim.kill(3);
    sim.run_for(REMOVAL_BOUND + PD);
    sim.assert_views(&except(6, &[3]));
    assert_eq!(sim.core(1).monitors(), &[h(2)]);
    assert_eq!(sim.core(2).monitors(), &[h(4)]);
}

#[test]
fn members_survive_introducer_loss_and_a_restarted_introducer_relearns() {
    let mut sim = Sim::new(seed_for(9), 11, 3);
    sim.boot(10);
    sim.kill_introducer();
    sim.run_for(20_000);
    assert_eq!(sim.count_failures(), 0, "{}", sim.ctx());
    sim.assert_views(&all(10));
    // A join while it is down fails clearly.
    sim.start_node(11);
    sim.run_for(sim.settings.join_timeout + 10);
    assert_eq!(sim.core(11).status(), Status::Idle);
    assert!(sim
        .events(|e| matches!(e, MemberEvent::JoinFailed { reason } if reason.contains("8888")))
        .any(|l| l.node == h(11)));
    // Failures are still detected without it.
    sim.kill(5);
    sim.run_for(REMOVAL_BOUND + PD);
    sim.assert_views(&except(10, &[5]));
    // Restarted from scratch, it relearns the members within a round trip.
    sim.start_introducer();
    sim.run_for(2 * MAX_LAT + 1);
    let known: BTreeSet<NodeAddr> = sim
        .intro
        .as_ref()
        .unwrap()
        .members()
        .into_iter()
        .map(|m| m.addr)
        .collect();
    let expect: BTreeSet<NodeAddr> = except(10, &[5]).into_iter().map(h).collect();
    assert_eq!(known, expect, "{}", sim.ctx());
    // Now the join works and everyone learns the newcomer.
    let t = sim.now;
    sim.nodes
        .get_mut(&h(11))
        .unwrap()
        .core
        .join(t, 2_000_000)
        .unwrap();
    sim.drain_node(&h(11));
    sim.run_until_views(&except(11, &[5]), 50);
    sim.assert_watched();
}

#[test]
fn partition_that_heals_converges() {
    for k in 0..3u64 {
        let mut sim = Sim::new(seed_for(100 + k), 10, 3);
        sim.boot(10);
        let a = [1usize, 2, 3, 4, 5, 6];
        let b = [7usize, 8, 9, 10];
        sim.partition(&a, &b);
        // The introducer sits with side A.
        for &x in &b {
            sim.cut.insert(pair(&h(x), &intro_addr()));
        }
        sim.run_for(REMOVAL_BOUND * 3);
        // Each side removed the other.
        for &x in &a {
            assert!(sim
                .core(x)
                .members()
                .iter()
                .all(|m| !b.iter().any(|&y| h(y) == m.addr)));
        }
        for &x in &b {
            assert!(sim
                .core(x)
                .members()
                .iter()
                .all(|m| !a.iter().any(|&y| h(y) == m.addr)));
        }
        sim.heal();
        let t0 = sim.now;
        let t = sim.run_until_views(&all(10), 60_000);
        println!("partition healed: views converged {} ms after heal", t - t0);
        sim.run_for(20 * PD);
        sim.assert_views(&all(10));
        sim.assert_watched();
    }
}

/// Failures of live nodes (each observer counted once per victim life).
fn false_removals(sim: &Sim) -> usize {
    sim.events(|e| matches!(e, MemberEvent::Failed { .. }))
        .map(|l| match &l.event {
            MemberEvent::Failed { addr, incarnation } => (addr.clone(), *incarnation),
            _ => unreachable!(),
        })
        .collect::<BTreeSet<_>>()
        .len()
}

#[test]
fn dropped_pings_cause_no_false_removal_with_suspicion_but_do_without() {
    const RUN: Millis = 600_000;
    const DROP: f64 = 0.1;
    let seed = seed_for(11);
    let mut with = Sim::new(seed, 10, 3);
    with.boot(10);
    with.drop_probes = DROP;
    with.run_for(RUN);
    let suspicions = with
        .events(|e| matches!(e, MemberEvent::Suspected { by_me: true, .. }))
        .count();
    let fr_with = false_removals(&with);

    let mut without = Sim::new(seed, 10, 3);
    without.settings.suspicion = false;
    without.boot(10);
    without.drop_probes = DROP;
    without.run_for(RUN);
    let fr_without = false_removals(&without);
    let node_hours = 10.0 * RUN as f64 / 3_600_000.0;
    println!(
        "{}% probe loss: false removals per node-hour: with suspicion {:.1} ({} suspicions), without {:.1}",
        DROP * 100.0,
        fr_with as f64 / node_hours,
        suspicions,
        fr_without as f64 / node_hours
    );
    assert!(suspicions > 100, "{}: drops had no effect?", with.ctx());
    assert_eq!(fr_with, 0, "{}", with.ctx());
    assert!(fr_without > 50, "{}: {fr_without}", without.ctx());
    // Both recover: every node is listed, alive, at the end.
    with.assert_views(&all(10));
    without.run_for(5 * CLEANUP);
    without.drop_probes = 0.0;
    without.run_until_views(&all(10), 20 * PD);
}

#[test]
fn lost_broadcasts_still_converge_through_piggyback() {
    let mut sim = Sim::new(seed_for(12), 10, 3);
    sim.boot(10);
    // Every direct broadcast is lost; only gossip on pings/acks carries the news.
    sim.drop_other = 1.0;
    sim.kill(8);
    sim.run_for(REMOVAL_BOUND + 6 * PD);
    sim.assert_views(&except(10, &[8]));
    assert_eq!(false_removals(&sim), 1, "{}", sim.ctx());
    // A leave whose broadcast is lost too: pingers hear "left" in the acks and gossip it.
    let t = sim.now;
    sim.nodes.get_mut(&h(3)).unwrap().core.leave(t).unwrap();
    sim.drain_node(&h(3));
    sim.run_for(4 * PD);
    sim.assert_views(&except(10, &[3, 8]));
    assert!(sim.failed_events_about(&h(3)).is_empty(), "{}", sim.ctx());
}

#[test]
fn background_bytes_per_node_do_not_grow_with_cluster_size() {
    let per_node = |n: usize| {
        let mut sim = Sim::new(seed_for(13), n, 3);
        sim.boot(n);
        sim.run_for(10_000);
        sim.bytes_sent.clear();
        sim.run_for(60_000);
        let total: u64 = sim.bytes_sent.values().sum();
        total as f64 / n as f64 / 60.0
    };
    let b10 = per_node(10);
    let b50 = per_node(50);
    println!("background bytes/s per node: 10 nodes {b10:.0}, 50 nodes {b50:.0}");
    assert!(b10 > 0.0);
    assert!(b50 / b10 < 1.25, "grows with n: {b10:.0} -> {b50:.0}");
}
