//! Monitor selection: which peers each node probes, from the explicit topology or the
//! ring, recomputed after every change to the live set.

use std::collections::BTreeSet;

use super::membership::{Event, Membership, Status};
use super::Settings;
use crate::types::{Millis, NodeAddr};

impl Membership {
    pub(super) fn refresh_monitors(&mut self, _now: Millis) {
        let new = if self.status == Status::Member {
            let mut live: Vec<NodeAddr> = self
                .entries
                .values()
                .filter(|u| !u.state.is_tombstone())
                .map(|u| u.addr.clone())
                .collect();
            live.push(self.me.clone());
            compute_monitors(&self.settings, &self.me, &live)
        } else {
            Vec::new()
        };
        if new != self.monitors {
            self.monitors = new.clone();
            self.event(Event::MonitorsChanged(new));
        }
    }
}

/// The monitored set of `me` given the live nodes (any order; `me` included): the
/// explicit topology when it names `me` (dead entries skipped), otherwise
/// [`ring_monitors`] over the live nodes in ring order.
pub fn compute_monitors(settings: &Settings, me: &NodeAddr, live: &[NodeAddr]) -> Vec<NodeAddr> {
    // Called after every message: keep it O(n log n).
    let live: BTreeSet<&NodeAddr> = live.iter().collect();
    if let Some(list) = settings.topology.as_ref().and_then(|t| t.get(me)) {
        let mut out: Vec<NodeAddr> = Vec::new();
        for a in list {
            if a != me && live.contains(a) && !out.contains(a) {
                out.push(a.clone());
            }
        }
        return out;
    }
    let mut seen: BTreeSet<&NodeAddr> = BTreeSet::new();
    let mut order: Vec<NodeAddr> = settings
        .ring
        .iter()
        .filter(|a| live.contains(a) && seen.insert(*a))
        .cloned()
        .collect();
    let ring: BTreeSet<&NodeAddr> = settings.ring.iter().collect();
    // A BTreeSet iterates sorted and without duplicates.
    order.extend(
        live.iter()
            .filter(|a| !ring.contains(*a))
            .map(|a| (*a).clone()),
    );
    ring_monitors(&order, me, settings.m)
}

/// The `m` peers `me` monitors on a ring of live nodes (`ring` in ring order, `me`
/// in it): successor, predecessor, then offsets spread evenly over the ring
/// (`k * (n - 1) / (m - 1)`), moved to the next free offset on collision. With the
/// seed's ten nodes and m = 3 this is exactly its table (H1 -> [H2, H10, H5]).
///
/// Every node uses the same offsets, so each live node is watched by exactly
/// `min(m, n - 1)` distinct nodes: `m` simultaneous failures leave every dead node at
/// least one live watcher, and recomputing after each change restores full coverage.
pub fn ring_monitors(ring: &[NodeAddr], me: &NodeAddr, m: usize) -> Vec<NodeAddr> {
    let n = ring.len();
    let Some(pos) = ring.iter().position(|a| a == me) else {
        return Vec::new();
    };
    if n < 2 || m == 0 {
        return Vec::new();
    }
    let want = m.min(n - 1);
    let mut candidates = vec![1, n - 1];
    for k in 1..m.saturating_sub(1) {
        candidates.push(k * (n - 1) / (m - 1));
    }
    let mut offsets: Vec<usize> = Vec::with_capacity(want);
    for c in candidates {
        if offsets.len() == want {
            break;
        }
        let mut o = c % n;
        // At most n - 1 non-zero offsets exist and fewer than that are taken.
        for _ in 0..n {
            if o != 0 && !offsets.contains(&o) {
                break;
            }
            o = (o + 1) % n;
        }
        offsets.push(o);
    }
    offsets
        .into_iter()
        .filter_map(|o| ring.get((pos + o) % n).cloned())
        .collect()
}
