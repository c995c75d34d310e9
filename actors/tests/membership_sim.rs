//! Scenario tests of the failure detector and membership cores on the shared simulated
//! world (`sim`): kill, pause, leave, drop, partition, introducer restart.
//!
//! The harness plays the part of the actors: it hands each core its inputs through
//! `handle` and routes the effects (messages over the world's links, timers on its
//! virtual clock, acks to probers, pings and verdicts between prober and membership
//! core) exactly as the MembershipActor/PingActor shells do. Every scenario prints its
//! seed; rerun one with `DML_SIM_SEED=<seed>`.

mod sim;

use std::collections::{BTreeMap, BTreeSet};

use dml_actors::machine::Machine;
use dml_actors::membership::introducer::{self, Introducer, IntroducerSettings};
use dml_actors::membership::ping::{self, ProbeSettings, Prober};
use dml_actors::membership::{
    compute_monitors, Effect, Event, Input, MemberState, Membership, Msg, Settings, Status, Timer,
    UpdateState,
};
use dml_actors::types::{Incarnation, Millis, NodeAddr};
use rand::Rng;
use sim::World;

const PD: Millis = 500;
const PT: Millis = 300;
const CLEANUP: Millis = 1500;
/// Max one-way latency of the simulated network (latency is 1..=MAX_LAT ms).
const MAX_LAT: Millis = 3;
/// Allowance for spreading: a few hops of latency.
const SPREAD: Millis = 20;

fn h(i: usize) -> NodeAddr {
    NodeAddr(format!("127.0.0.1:{}", 8000 + i))
}

fn intro_addr() -> NodeAddr {
    NodeAddr::from("127.0.0.1:8888")
}

/// What the world carries to a node (the introducer is a node too).
#[derive(Debug)]
enum Ev {
    Msg { from: NodeAddr, msg: Msg },
    MemTimer(Timer),
    ProbeTimer { peer: NodeAddr, timer: ping::Timer },
    IntroTimer(introducer::Timer),
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
    event: Event,
}

struct Sim {
    world: World<Ev>,
    nodes: BTreeMap<NodeAddr, SimNode>,
    ring: Vec<NodeAddr>,
    settings: Settings,
    intro: Option<Introducer>,
    next_token: u64,
    /// Fraction of Ping/Ack messages dropped.
    drop_probes: f64,
    /// Fraction of every other message dropped.
    drop_other: f64,
    log: Vec<Logged>,
    /// Encoded bytes sent per node (MessagePack, as on the wire), for the cost test.
    bytes_sent: BTreeMap<NodeAddr, u64>,
}

impl Sim {
    fn new(seed: u64, n_ring: usize, m: usize) -> Sim {
        let ring: Vec<NodeAddr> = (1..=n_ring).map(h).collect();
        let settings = Settings::new(ring.clone(), m, PD, CLEANUP, Some(intro_addr()));
        let mut world = World::new(seed);
        world.set_latency(1, MAX_LAT);
        Sim {
            world,
            nodes: BTreeMap::new(),
            ring,
            settings,
            intro: None,
            next_token: 1,
            drop_probes: 0.0,
            drop_other: 0.0,
            log: Vec::new(),
            bytes_sent: BTreeMap::new(),
        }
    }

    fn now(&self) -> Millis {
        self.world.now()
    }

    fn ctx(&self) -> String {
        self.world.ctx()
    }

    fn start_introducer(&mut self) {
        let mut i = Introducer::new(IntroducerSettings::new(
            self.ring.clone(),
            self.settings.announce_interval * 4,
            self.settings.announce_interval,
        ))
        .unwrap();
        let fx = i.handle(self.now(), introducer::Input::Start);
        self.intro = Some(i);
        self.exec_intro(fx);
    }

    fn kill_introducer(&mut self) {
        self.intro = None;
        self.world.forget(&intro_addr());
    }

    /// Start node `i` (fresh process) and join, with its start time as incarnation.
    fn start_node(&mut self, i: usize) {
        let addr = h(i);
        let core_seed = sim::node_seed(self.world.seed(), i);
        let core = Membership::new(addr.clone(), self.settings.clone(), core_seed).unwrap();
        self.nodes.insert(
            addr,
            SimNode {
                core,
                probers: BTreeMap::new(),
                up: true,
                paused: false,
                deferred: Vec::new(),
            },
        );
        let incarnation = 1_000_000 + self.now();
        self.input(i, Input::Join { incarnation });
    }

    /// Hands node `i`'s membership core an input as its actor would (a console
    /// command, a prober's report); a refused join or leave fails the test.
    fn input(&mut self, i: usize, input: Input) {
        let fx = self.run_core(&h(i), input);
        if let Some(Effect::Refused(e)) = fx.iter().find(|e| matches!(e, Effect::Refused(_))) {
            panic!("{}: H{i} refused: {e}", self.ctx());
        }
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
        self.world.forget(&addr);
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
            self.dispatch(addr.clone(), ev);
        }
    }

    fn partition(&mut self, a: &[usize], b: &[usize]) {
        let a: Vec<NodeAddr> = a.iter().map(|&x| h(x)).collect();
        let b: Vec<NodeAddr> = b.iter().map(|&y| h(y)).collect();
        self.world.partition(&a, &b);
    }

    fn heal(&mut self) {
        self.world.heal_all();
    }

    fn core(&self, i: usize) -> &Membership {
        &self.nodes[&h(i)].core
    }

    /// Puts `msg` on the wire: counted as sent even when the link is cut; Ping/Ack and
    /// other messages are dropped at their own rates.
    fn send(&mut self, from: NodeAddr, to: NodeAddr, msg: Msg) {
        let bytes = rmp_serde::to_vec(&msg).map(|v| v.len()).unwrap_or(0) as u64;
        *self.bytes_sent.entry(from.clone()).or_default() += bytes;
        if self.world.is_cut(&from, &to) {
            return;
        }
        let frac = match msg {
            Msg::Ping { .. } | Msg::Ack { .. } => self.drop_probes,
            _ => self.drop_other,
        };
        if frac > 0.0 && self.world.rng().gen_bool(frac) {
            return;
        }
        self.world.send(&from.clone(), &to, Ev::Msg { from, msg });
    }

    fn run_for(&mut self, d: Millis) {
        self.run_until(self.now() + d);
    }

    fn run_until(&mut self, t: Millis) {
        while let Some((to, ev)) = self.world.next_until(t) {
            self.dispatch(to, ev);
        }
    }

    fn dispatch(&mut self, to: NodeAddr, ev: Ev) {
        let now = self.now();
        if to == intro_addr() {
            let input = match ev {
                Ev::Msg { from, msg } => introducer::Input::Msg { from, msg },
                Ev::IntroTimer(t) => introducer::Input::Timer(t),
                Ev::MemTimer(_) | Ev::ProbeTimer { .. } => return,
            };
            if let Some(i) = self.intro.as_mut() {
                let fx = i.handle(now, input);
                self.exec_intro(fx);
            }
            return;
        }
        let Some(node) = self.nodes.get_mut(&to) else {
            return;
        };
        if !node.up {
            return;
        }
        if node.paused {
            node.deferred.push(ev);
            return;
        }
        match ev {
            Ev::Msg { from, msg } => {
                self.run_core(&to, Input::Msg { from, msg });
            }
            Ev::MemTimer(timer) => {
                self.run_core(&to, Input::Timer(timer));
            }
            Ev::ProbeTimer { peer, timer } => {
                self.run_prober(&to, &peer, ping::Input::Timer(timer))
            }
            Ev::IntroTimer(_) => {}
        }
    }

    fn exec_intro(&mut self, fx: Vec<introducer::Effect>) {
        for e in fx {
            match e {
                introducer::Effect::Send { to, msg } => self.send(intro_addr(), to, msg),
                introducer::Effect::SetTimer { at, timer } => {
                    self.world.at(at, &intro_addr(), Ev::IntroTimer(timer))
                }
                introducer::Effect::Event(_) => {}
            }
        }
    }

    /// Feeds `addr`'s membership core and executes its effects the way the
    /// MembershipActor does; returns them for the caller's checks.
    fn run_core(&mut self, addr: &NodeAddr, input: Input) -> Vec<Effect> {
        let now = self.now();
        let Some(node) = self.nodes.get_mut(addr) else {
            return Vec::new();
        };
        let fx = node.core.handle(now, input);
        for e in fx.iter().cloned() {
            match e {
                Effect::Send { to, msg } => self.send(addr.clone(), to, msg),
                Effect::SetTimer { at, timer } => self.world.at(at, addr, Ev::MemTimer(timer)),
                Effect::Acked { peer, seq } => {
                    self.run_prober(addr, &peer, ping::Input::Ack { seq })
                }
                Effect::Refused(_) => {}
                Effect::Event(ev) => {
                    if let Event::MonitorsChanged(list) = &ev {
                        self.set_probers(addr, list);
                    }
                    self.log.push(Logged {
                        at: now,
                        node: addr.clone(),
                        event: ev,
                    });
                }
            }
        }
        fx
    }

    /// Feeds `addr`'s prober of `peer` and executes its effects the way the PingActor
    /// does.
    fn run_prober(&mut self, addr: &NodeAddr, peer: &NodeAddr, input: ping::Input) {
        let now = self.now();
        let Some(p) = self
            .nodes
            .get_mut(addr)
            .and_then(|n| n.probers.get_mut(peer))
        else {
            return;
        };
        for e in p.handle(now, input) {
            match e {
                ping::Effect::Ping { peer, seq } => {
                    self.run_core(addr, Input::SendPing { peer, seq });
                }
                ping::Effect::SetTimer { at, timer } => {
                    let ev = Ev::ProbeTimer {
                        peer: peer.clone(),
                        timer,
                    };
                    self.world.at(at, addr, ev);
                }
                ping::Effect::Suspect { peer, .. } => {
                    self.run_core(addr, Input::Unresponsive { peer });
                }
                ping::Effect::Event(_) => {}
            }
        }
    }

    /// What the MembershipActor does on MonitorsChanged: stop stale PingActors, start new.
    fn set_probers(&mut self, addr: &NodeAddr, list: &[NodeAddr]) {
        let Some(node) = self.nodes.get_mut(addr) else {
            return;
        };
        node.probers.retain(|peer, _| list.contains(peer));
        let mut started = Vec::new();
        for peer in list {
            if !node.probers.contains_key(peer) {
                let s = ProbeSettings {
                    ping_duration: PD,
                    ping_timeout: PT,
                };
                let p = Prober::new(peer.clone(), s, self.next_token).unwrap();
                self.next_token += 1;
                node.probers.insert(peer.clone(), p);
                started.push(peer.clone());
            }
        }
        for peer in started {
            self.run_prober(addr, &peer, ping::Input::Start);
        }
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
        let end = self.now() + limit;
        while self.now() < end {
            if self.views_equal(expect).is_ok() {
                return self.now();
            }
            self.run_for(10);
        }
        if let Err(e) = self.views_equal(expect) {
            panic!(
                "{}: views did not converge within {limit} ms: {e}",
                self.ctx()
            );
        }
        self.now()
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
        pred: impl Fn(&Event) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Logged> + 'a {
        self.log.iter().filter(move |l| pred(&l.event))
    }

    fn failed_events_about(&self, x: &NodeAddr) -> Vec<Logged> {
        self.events(|e| matches!(e, Event::Failed { addr, .. } if addr == x))
            .cloned()
            .collect()
    }

    fn count_failures(&self) -> usize {
        self.events(|e| matches!(e, Event::Failed { .. })).count()
    }

    fn incarnation(&self, i: usize) -> Incarnation {
        self.core(i).self_member().incarnation
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
    let mut sim = Sim::new(
        sim::seed("fault_free_run_has_no_suspicion_and_seed_monitors", 1),
        10,
        3,
    );
    sim.boot(10);
    sim.run_for(120_000);
    let bad: Vec<&Logged> = sim
        .events(|e| {
            matches!(
                e,
                Event::Suspected { .. } | Event::Failed { .. } | Event::Rejoin { .. }
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
    let mut sim = Sim::new(
        sim::seed(
            "killed_node_is_suspected_then_removed_everywhere_within_bound",
            2,
        ),
        10,
        3,
    );
    sim.boot(10);
    // Several kills at random phases of the probe period, one after the other.
    for victim in [5usize, 9, 2] {
        let phase = sim.world.rng().gen_range(0..PD);
        sim.run_for(phase);
        let t = sim.now();
        sim.kill(victim);
        let alive: Vec<usize> = sim
            .live()
            .iter()
            .filter_map(|a| (1..=10).find(|&i| h(i) == *a))
            .filter(|&i| i != victim)
            .collect();
        sim.run_for(REMOVAL_BOUND + 5 * PD);
        let first_suspect = sim
            .events(
                |e| matches!(e, Event::Suspected { addr, by_me: true, .. } if *addr == h(victim)),
            )
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
        .events(|e| matches!(e, Event::Failed { addr, .. } if !victims.contains(addr)))
        .next()
        .is_none());
}

#[test]
fn three_ring_neighbours_killed_at_once_are_all_removed_and_nobody_is_unwatched() {
    for (k, dead) in [[2usize, 3, 4], [9, 10, 1], [3, 4, 8]]
        .into_iter()
        .enumerate()
    {
        let mut sim = Sim::new(
            sim::seed(
                "three_ring_neighbours_killed_at_once_are_all_removed_and_nobody_is_unwatched",
                30 + k as u64,
            ),
            10,
            3,
        );
        sim.boot(10);
        sim.run_for(137);
        let t = sim.now();
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
    let mut sim = Sim::new(
        sim::seed("falsely_suspected_live_node_refutes_and_is_not_removed", 4),
        10,
        3,
    );
    sim.boot(10);
    let before = sim.incarnation(3);
    // H2's prober lost an ack from H3 (as if the network ate it).
    sim.input(2, Input::Unresponsive { peer: h(3) });
    sim.run_for(CLEANUP * 3);
    assert!(sim.incarnation(3) > before, "{}", sim.ctx());
    assert!(sim.failed_events_about(&h(3)).is_empty(), "{}", sim.ctx());
    let refuted: BTreeSet<NodeAddr> = sim
        .events(|e| matches!(e, Event::Refuted { addr, .. } if *addr == h(3)))
        .map(|l| l.node.clone())
        .collect();
    let suspected: BTreeSet<NodeAddr> = sim
        .events(|e| matches!(e, Event::Suspected { addr, .. } if *addr == h(3)))
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
    let mut sim = Sim::new(
        sim::seed("stale_updates_never_resurrect_a_removed_member", 5),
        10,
        3,
    );
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
    let t0 = sim.now();
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
    let mut sim = Sim::new(
        sim::seed("leave_is_seen_by_all_and_never_counted_as_failure", 6),
        10,
        3,
    );
    sim.boot(10);
    sim.input(4, Input::Leave);
    sim.run_for(SPREAD);
    let seen: BTreeSet<NodeAddr> = sim
        .events(|e| matches!(e, Event::Left { addr, .. } if *addr == h(4)))
        .map(|l| l.node.clone())
        .collect();
    assert_eq!(seen.len(), 9, "{}: {seen:?}", sim.ctx());
    sim.run_for(REMOVAL_BOUND * 2);
    assert!(sim
        .events(|e| matches!(
            e,
            Event::Suspected { addr, .. } | Event::Failed { addr, .. } if *addr == h(4)
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
    let mut sim = Sim::new(
        sim::seed(
            "pause_shorter_than_cleanup_is_refuted_longer_is_removal_then_rejoin",
            7,
        ),
        10,
        3,
    );
    sim.boot(10);
    // Short: long enough to be suspected (> PD + PT), well inside cleanup_time.
    let before = sim.incarnation(6);
    sim.pause(6);
    sim.run_for(PD + PT + 100);
    assert!(
        sim.events(|e| matches!(e, Event::Suspected { addr, .. } if *addr == h(6)))
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
    let t = sim.now();
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
    let rejoins: Vec<&Logged> = sim.events(|e| matches!(e, Event::Rejoin { .. })).collect();
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
    let mut sim = Sim::new(
        sim::seed("explicit_topology_is_honoured_and_skips_dead_nodes", 8),
        6,
        3,
    );
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
    let mut sim = Sim::new(
        sim::seed(
            "members_survive_introducer_loss_and_a_restarted_introducer_relearns",
            9,
        ),
        11,
        3,
    );
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
        .events(|e| matches!(e, Event::JoinFailed { reason } if reason.contains("8888")))
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
    sim.input(
        11,
        Input::Join {
            incarnation: 2_000_000,
        },
    );
    sim.run_until_views(&except(11, &[5]), 50);
    sim.assert_watched();
}

#[test]
fn partition_that_heals_converges() {
    for k in 0..3u64 {
        let mut sim = Sim::new(sim::seed("partition_that_heals_converges", 100 + k), 10, 3);
        sim.boot(10);
        let a = [1usize, 2, 3, 4, 5, 6];
        let b = [7usize, 8, 9, 10];
        sim.partition(&a, &b);
        // The introducer sits with side A.
        for &x in &b {
            sim.world.cut(&h(x), &intro_addr());
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
        let t0 = sim.now();
        let t = sim.run_until_views(&all(10), 60_000);
        println!("partition healed: views converged {} ms after heal", t - t0);
        sim.run_for(20 * PD);
        sim.assert_views(&all(10));
        sim.assert_watched();
    }
}

/// Failures of live nodes (each observer counted once per victim life).
fn false_removals(sim: &Sim) -> usize {
    sim.events(|e| matches!(e, Event::Failed { .. }))
        .map(|l| match &l.event {
            Event::Failed { addr, incarnation } => (addr.clone(), *incarnation),
            _ => unreachable!(),
        })
        .collect::<BTreeSet<_>>()
        .len()
}

#[test]
fn dropped_pings_cause_no_false_removal_with_suspicion_but_do_without() {
    const RUN: Millis = 600_000;
    const DROP: f64 = 0.1;
    let seed = sim::seed(
        "dropped_pings_cause_no_false_removal_with_suspicion_but_do_without",
        11,
    );
    let mut with = Sim::new(seed, 10, 3);
    with.boot(10);
    with.drop_probes = DROP;
    with.run_for(RUN);
    let suspicions = with
        .events(|e| matches!(e, Event::Suspected { by_me: true, .. }))
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
    let mut sim = Sim::new(
        sim::seed("lost_broadcasts_still_converge_through_piggyback", 12),
        10,
        3,
    );
    sim.boot(10);
    // Every direct broadcast is lost; only gossip on pings/acks carries the news.
    sim.drop_other = 1.0;
    sim.kill(8);
    sim.run_for(REMOVAL_BOUND + 6 * PD);
    sim.assert_views(&except(10, &[8]));
    assert_eq!(false_removals(&sim), 1, "{}", sim.ctx());
    // A leave whose broadcast is lost too: pingers hear "left" in the acks and gossip it.
    sim.input(3, Input::Leave);
    sim.run_for(4 * PD);
    sim.assert_views(&except(10, &[3, 8]));
    assert!(sim.failed_events_about(&h(3)).is_empty(), "{}", sim.ctx());
}

#[test]
fn background_bytes_per_node_do_not_grow_with_cluster_size() {
    let per_node = |n: usize| {
        let mut sim = Sim::new(
            sim::seed(
                "background_bytes_per_node_do_not_grow_with_cluster_size",
                13,
            ),
            n,
            3,
        );
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
