//! The nemesis: a seeded schedule of faults (kill -9 and restart, SIGSTOP/SIGCONT
//! shorter and longer than cleanup_time, network partitions of a minority, waves of up
//! to m simultaneous failures, with or without waiting for re-replication before the
//! next), generated up front so that
//! a seed replays the same faults, and printed before the run.
//!
//! The budget: the promise covers at most m concurrent failures, so one step never
//! takes down more than m nodes, counting every paused or partitioned-off node as failed (a pause longer
//! than cleanup_time is a removal; a shorter one is counted too, to keep the rule
//! simple). Steps run one after another and each restores what it may restore before
//! the next starts. A step whose killed nodes stay dead (a permanent wave) waits for
//! re-replication before the next: once m+1 replicas are back, those nodes are no
//! longer failures the cluster is still recovering from, only a smaller cluster.
//! At least 2m+1 nodes stay in the cluster, so that later steps can still take m.

use std::fmt;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One fault step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    /// Nodes killed with SIGKILL at the start.
    pub kill: Vec<String>,
    /// Nodes stopped with SIGSTOP at the start, each resumed after its seconds.
    pub pause: Vec<(String, f64)>,
    /// A minority cut off from every other node at the start (a network partition),
    /// and the seconds until it heals.
    pub cut: Vec<String>,
    pub cut_secs: f64,
    /// Seconds until the killed nodes are restarted.
    pub down: f64,
    /// Restart the killed nodes (else they stay dead for the rest of the run).
    pub restart: bool,
    /// Wait until every name is back on m+1 live nodes before going on.
    pub wait: bool,
    /// Seconds of quiet after the step.
    pub rest: f64,
}

impl Step {
    /// How many nodes the step takes down at once.
    pub fn failures(&self) -> usize {
        self.kill.len() + self.pause.len() + self.cut.len()
    }

    /// Every node the step takes down.
    pub fn victims(&self) -> impl Iterator<Item = &String> {
        self.kill
            .iter()
            .chain(self.pause.iter().map(|p| &p.0))
            .chain(&self.cut)
    }

    /// Seconds the step is expected to last (re-replication waits guessed at 8 s).
    fn estimate(&self) -> f64 {
        let pauses = self.pause.iter().map(|p| p.1).fold(0.0, f64::max);
        let down = if self.kill.is_empty() { 0.0 } else { self.down };
        down.max(pauses).max(self.cut_secs) + self.rest + if self.wait { 8.0 } else { 0.0 }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.kill.is_empty() {
            let after = if self.restart {
                format!("restart after {:.1} s", self.down)
            } else {
                "left dead".into()
            };
            parts.push(format!("kill -9 {} ({after})", self.kill.join(" ")));
        }
        for (n, s) in &self.pause {
            parts.push(format!("SIGSTOP {n} for {s:.2} s"));
        }
        if !self.cut.is_empty() {
            parts.push(format!(
                "partition {} | rest for {:.1} s",
                self.cut.join(" "),
                self.cut_secs
            ));
        }
        let then = if self.wait {
            "then wait for m+1 replicas"
        } else {
            "then go on at once"
        };
        write!(f, "{}; {then}; rest {:.1} s", parts.join(" + "), self.rest)
    }
}

/// The CI plan: `waves` waves of m kill -9s each, disjoint, nodes left dead, each
/// waiting for m+1 replicas before the next (back to back: the next wave starts the
/// moment re-replication is done).
pub fn waves(seed: u64, nodes: &[String], m: usize, count: usize) -> Vec<Step> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pool = nodes.to_vec();
    pool.shuffle(&mut rng);
    (0..count)
        .map(|_| {
            let k = m.min(pool.len().saturating_sub(m + 1));
            Step {
                kill: pool.drain(..k).collect(),
                wait: true,
                ..Step::default()
            }
        })
        .collect()
}

/// A random plan of about `secs` seconds (twice that, so the run rarely runs out; it
/// stops at its duration), for a cluster of `nodes` with `cleanup` seconds of
/// cleanup_time; with `partitions`, a fifth of the steps cut a minority of up to m
/// nodes off the rest.
pub fn random(
    seed: u64,
    nodes: &[String],
    m: usize,
    cleanup: f64,
    secs: f64,
    partitions: bool,
) -> Vec<Step> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut alive = nodes.to_vec();
    let mut plan = Vec::new();
    let mut total = 0.0;
    while total < 2.0 * secs && m > 0 {
        let pick = |rng: &mut ChaCha8Rng, alive: &[String], k: usize| -> Vec<String> {
            alive.choose_multiple(rng, k).cloned().collect()
        };
        let k = rng.gen_range(1..=m);
        let wait = rng.gen_bool(0.5);
        let rest = if rng.gen_bool(0.3) {
            0.0
        } else {
            rng.gen_range(0.5..4.0)
        };
        let down = rng.gen_range(0.5..6.0 * cleanup + 3.0);
        let roll = rng.gen_range(0..100);
        let permanent_ok = alive.len() > 3 * m;
        let step = match roll {
            _ if partitions && rng.gen_bool(0.2) => Step {
                cut: pick(&mut rng, &alive, k),
                cut_secs: rng.gen_range(0.5..6.0) * cleanup,
                wait,
                rest,
                ..Step::default()
            },
            0..30 => Step {
                kill: pick(&mut rng, &alive, k),
                pause: Vec::new(),
                down,
                restart: true,
                wait,
                rest,
                ..Step::default()
            },
            30..45 => Step {
                kill: Vec::new(),
                pause: pick(&mut rng, &alive, k)
                    .into_iter()
                    .map(|n| (n, rng.gen_range(0.2..0.9) * cleanup))
                    .collect(),
                down: 0.0,
                restart: true,
                wait: false,
                rest,
                ..Step::default()
            },
            45..65 => Step {
                kill: Vec::new(),
                pause: pick(&mut rng, &alive, k)
                    .into_iter()
                    .map(|n| (n, rng.gen_range(2.0..6.0) * cleanup))
                    .collect(),
                down: 0.0,
                restart: true,
                wait,
                rest,
                ..Step::default()
            },
            65..90 if m >= 2 => {
                let mut victims = pick(&mut rng, &alive, m);
                let paused = victims.split_off(rng.gen_range(1..m));
                Step {
                    kill: victims,
                    pause: paused
                        .into_iter()
                        .map(|n| (n, rng.gen_range(0.5..6.0) * cleanup))
                        .collect(),
                    down,
                    restart: true,
                    wait,
                    rest,
                    ..Step::default()
                }
            }
            90..100 if permanent_ok => {
                let kill = pick(&mut rng, &alive, m);
                alive.retain(|n| !kill.contains(n));
                Step {
                    kill,
                    pause: Vec::new(),
                    down: 0.0,
                    restart: false,
                    wait: true,
                    rest,
                    ..Step::default()
                }
            }
            _ => Step {
                kill: pick(&mut rng, &alive, k),
                pause: Vec::new(),
                down,
                restart: true,
                wait: false,
                rest: 0.0,
                ..Step::default()
            },
        };
        total += step.estimate();
        plan.push(step);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("H{i}")).collect()
    }

    #[test]
    fn random_plans_replay_and_keep_the_budget() {
        let ns = nodes(10);
        let a = random(42, &ns, 3, 1.5, 600.0, true);
        assert_eq!(a, random(42, &ns, 3, 1.5, 600.0, true));
        assert_ne!(a, random(43, &ns, 3, 1.5, 600.0, true));
        assert!(a.iter().any(|s| !s.cut.is_empty()), "partitions");
        assert!(random(42, &ns, 3, 1.5, 600.0, false)
            .iter()
            .all(|s| s.cut.is_empty()));
        let mut dead = Vec::new();
        for s in &a {
            assert!((1..=3).contains(&s.failures()), "{s}");
            let mut all: Vec<&String> = s.victims().collect();
            all.sort();
            all.dedup();
            assert_eq!(all.len(), s.failures(), "a node twice in {s}");
            assert!(
                all.iter().all(|n| !dead.contains(*n)),
                "{s} hits a dead node"
            );
            if !s.restart && !s.kill.is_empty() {
                assert!(s.wait, "a permanent wave waits for re-replication");
                dead.extend(s.kill.iter().cloned());
            }
        }
        assert!(ns.len() - dead.len() > 2 * 3);
        let shorts = a
            .iter()
            .flat_map(|s| &s.pause)
            .filter(|p| p.1 < 1.5)
            .count();
        let longs = a
            .iter()
            .flat_map(|s| &s.pause)
            .filter(|p| p.1 > 1.5)
            .count();
        assert!(
            shorts > 0 && longs > 0,
            "pauses on both sides of cleanup_time"
        );
    }

    #[test]
    fn ci_waves_are_disjoint_and_leave_m_plus_one() {
        let w = waves(1, &nodes(10), 3, 2);
        assert_eq!(w.len(), 2);
        assert!(w.iter().all(|s| s.kill.len() == 3 && s.wait && !s.restart));
        assert!(w[0].kill.iter().all(|n| !w[1].kill.contains(n)));
        let w = waves(1, &nodes(6), 3, 2);
        assert_eq!(w[1].kill.len(), 0, "never below m+1 nodes");
    }
}
