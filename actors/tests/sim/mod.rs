//! The one simulated world every protocol simulation runs in (membership, SDFS, jobs):
//! a virtual clock, one event queue, links that can be cut and healed, seeded latency
//! and loss, and named seeds that can be replayed.
//!
//! The world knows nothing of any core: a simulation keeps its nodes' cores itself,
//! pops the next event with [`World::next_until`], feeds it to the core's `handle`, and
//! turns the returned `Send`/`SetTimer` effects back into [`World::send`] and
//! [`World::at`]. Everything random (latency, loss, the cores' own seeds) is drawn from
//! the world's seed, so a failing run is replayed exactly with
//! `DML_SIM_SEED=<seed> cargo test -p dml-actors --test <file> <test name>`.
#![allow(dead_code)] // each simulation uses a different part of the world

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use dml_actors::types::{Millis, NodeAddr};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The seed of one scenario: `DML_SIM_SEED` when set (to replay a failure), else
/// `default`. Printed with the scenario's name, so a failing test's output names the
/// seed to replay.
pub fn seed(name: &str, default: u64) -> u64 {
    let seed = std::env::var("DML_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("sim {name}: DML_SIM_SEED={seed}");
    seed
}

/// The seeds of a scenario that runs several times: `DML_SIM_SEED` alone when set (to
/// replay one failure), else `defaults`. Each is printed as it starts, so the last
/// seed printed before a failure is the one to replay.
pub fn seeds(name: &str, defaults: impl IntoIterator<Item = u64>) -> Vec<u64> {
    match std::env::var("DML_SIM_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(seed) => vec![seed],
        None => defaults.into_iter().collect(),
    }
    .into_iter()
    .inspect(|seed| println!("sim {name}: DML_SIM_SEED={seed}"))
    .collect()
}

/// A derived seed for one node's core, stable for a given world seed and index.
pub fn node_seed(world: u64, i: usize) -> u64 {
    world ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The simulated network and clock, carrying events of type `E` to nodes.
pub struct World<E> {
    seed: u64,
    now: Millis,
    rng: ChaCha8Rng,
    next_seq: u64,
    queue: BinaryHeap<Reverse<(Millis, u64)>>,
    events: BTreeMap<u64, (NodeAddr, Option<NodeAddr>, E)>,
    cut: BTreeSet<(NodeAddr, NodeAddr)>,
    latency: (Millis, Millis),
    /// Last delivery time per ordered link (`send_ordered`), so it stays FIFO.
    ordered: BTreeMap<(NodeAddr, NodeAddr, u8), Millis>,
    loss: f64,
    /// Per-link order: the arrival time of the last message on each (from, to).
    fifo: Option<BTreeMap<(NodeAddr, NodeAddr), Millis>>,
    sent: u64,
    dropped: u64,
}

fn pair(a: &NodeAddr, b: &NodeAddr) -> (NodeAddr, NodeAddr) {
    if a <= b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

impl<E> World<E> {
    /// A world at time 0 with latency 1..=3 ms and no loss.
    pub fn new(seed: u64) -> Self {
        World {
            seed,
            now: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            next_seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            cut: BTreeSet::new(),
            latency: (1, 3),
            ordered: BTreeMap::new(),
            loss: 0.0,
            fifo: None,
            sent: 0,
            dropped: 0,
        }
    }

    /// Every message takes a uniformly drawn `min..=max` ms.
    pub fn set_latency(&mut self, min: Millis, max: Millis) {
        self.latency = (min, max.max(min));
    }

    /// Every message is lost with probability `p` (links that are up only).
    pub fn set_loss(&mut self, p: f64) {
        self.loss = p.clamp(0.0, 1.0);
    }

    /// Messages on one link (from, to) arrive in the order they were sent, as on one
    /// TCP connection: a message never overtakes an earlier one on its link.
    pub fn set_fifo(&mut self) {
        self.fifo.get_or_insert_with(BTreeMap::new);
    }

    /// The world's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The virtual time.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// "seed S at t=T": for assertion messages.
    pub fn ctx(&self) -> String {
        format!("seed {} at t={}", self.seed, self.now)
    }

    /// The world's random source (for choices a scenario makes, such as victims).
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// Messages sent and messages lost (loss or cut links) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.sent, self.dropped)
    }

    /// Sends `ev` over the link `from -> to`: delivered after the link's latency unless
    /// the link is cut (now or at delivery) or the message is lost. Returns whether it
    /// was put on the wire.
    pub fn send(&mut self, from: &NodeAddr, to: &NodeAddr, ev: E) -> bool {
        self.sent += 1;
        if self.is_cut(from, to) || (self.loss > 0.0 && self.rng.gen_bool(self.loss)) {
            self.dropped += 1;
            return false;
        }
        let lat = self.rng.gen_range(self.latency.0..=self.latency.1);
        let mut at = self.now + lat;
        if let Some(last) = &mut self.fifo {
            let key = (from.clone(), to.clone());
            at = at.max(last.get(&key).copied().unwrap_or(0));
            last.insert(key, at);
        }
        self.push(at, to.clone(), Some(from.clone()), ev);
        true
    }

    /// Like [`World::send`], but on an ordered stream (a TCP connection): messages on
    /// `from -> to` with the same `lane` arrive in the order they were sent, whatever
    /// latency each one draws. Streams of different lanes interleave freely.
    pub fn send_ordered(&mut self, from: &NodeAddr, to: &NodeAddr, lane: u8, ev: E) -> bool {
        self.sent += 1;
        if self.is_cut(from, to) || (self.loss > 0.0 && self.rng.gen_bool(self.loss)) {
            self.dropped += 1;
            return false;
        }
        let lat = self.rng.gen_range(self.latency.0..=self.latency.1);
        let last = self
            .ordered
            .entry((from.clone(), to.clone(), lane))
            .or_insert(0);
        // Same time as the previous one: the queue's sequence number keeps the order.
        let at = (self.now + lat).max(*last);
        *last = at;
        self.push(at, to.clone(), Some(from.clone()), ev);
        true
    }

    /// Whether any queued event matches `f` (e.g. anything but timers is in flight).
    pub fn any_queued(&self, f: impl Fn(&E) -> bool) -> bool {
        self.events.values().any(|(_, _, ev)| f(ev))
    }

    /// Delivers `ev` to `node` at the absolute time `at` (timers, local completions):
    /// no link is involved, so cuts and loss do not apply.
    pub fn at(&mut self, at: Millis, node: &NodeAddr, ev: E) {
        self.push(at.max(self.now), node.clone(), None, ev);
    }

    fn push(&mut self, at: Millis, to: NodeAddr, from: Option<NodeAddr>, ev: E) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse((at, seq)));
        self.events.insert(seq, (to, from, ev));
    }

    /// The next event due at or before `limit`, advancing the clock to it; `None` (with
    /// the clock at `limit`) when nothing is due. A message whose link was cut while it
    /// was in flight is dropped here.
    pub fn next_until(&mut self, limit: Millis) -> Option<(NodeAddr, E)> {
        loop {
            let Some(&Reverse((at, seq))) = self.queue.peek() else {
                self.now = self.now.max(limit);
                return None;
            };
            if at > limit {
                self.now = self.now.max(limit);
                return None;
            }
            self.queue.pop();
            self.now = self.now.max(at);
            let Some((to, from, ev)) = self.events.remove(&seq) else {
                continue;
            };
            if let Some(from) = from {
                if self.is_cut(&from, &to) {
                    self.dropped += 1;
                    continue;
                }
            }
            return Some((to, ev));
        }
    }

    /// Whether anything is still queued.
    pub fn is_idle(&self) -> bool {
        self.events.is_empty()
    }

    /// Drops every queued event for `node` (it crashed: its timers die with it and what
    /// was in flight to it is lost).
    pub fn forget(&mut self, node: &NodeAddr) {
        self.events.retain(|_, (to, _, _)| to != node);
    }

    /// Removes and returns every queued event for `node`, in due order (a paused node's
    /// inbox, to redeliver on resume).
    pub fn take_queued(&mut self, node: &NodeAddr) -> Vec<E> {
        let seqs: Vec<u64> = self
            .events
            .iter()
            .filter(|(_, (to, _, _))| to == node)
            .map(|(s, _)| *s)
            .collect();
        seqs.into_iter()
            .filter_map(|s| self.events.remove(&s).map(|(_, _, ev)| ev))
            .collect()
    }

    /// Cuts the link between `a` and `b` (both directions).
    pub fn cut(&mut self, a: &NodeAddr, b: &NodeAddr) {
        self.cut.insert(pair(a, b));
    }

    /// Heals the link between `a` and `b`.
    pub fn heal(&mut self, a: &NodeAddr, b: &NodeAddr) {
        self.cut.remove(&pair(a, b));
    }

    /// Cuts every link between a node of `side_a` and a node of `side_b`.
    pub fn partition(&mut self, side_a: &[NodeAddr], side_b: &[NodeAddr]) {
        for a in side_a {
            for b in side_b {
                self.cut(a, b);
            }
        }
    }

    /// Heals every cut link.
    pub fn heal_all(&mut self) {
        self.cut.clear();
    }

    /// Whether the link between `a` and `b` is cut.
    pub fn is_cut(&self, a: &NodeAddr, b: &NodeAddr) -> bool {
        a != b && self.cut.contains(&pair(a, b))
    }
}
