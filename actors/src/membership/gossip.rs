//! Dissemination: direct broadcasts by an update's originator, piggybacking of recent
//! updates on pings and acks (each about `retransmit_mult * log2(n)` times), and
//! rate-limited repairs sent to whoever holds a stale view.

use super::membership::{Membership, Msg};
use super::Update;
use crate::types::{Millis, NodeAddr};

/// Gossip entries kept for piggybacking at most; the least retransmitted survive.
const MAX_GOSSIP: usize = 1024;
/// Rate-limit table size before old entries are pruned.
const MAX_TOLD: usize = 1024;

impl Membership {
    pub(super) fn broadcast(&mut self, updates: Vec<Update>, to_introducer: bool) {
        let mut targets: Vec<NodeAddr> = self
            .entries
            .values()
            .filter(|u| !u.state.is_tombstone())
            .map(|u| u.addr.clone())
            .collect();
        if to_introducer {
            if let Some(intro) = &self.settings.introducer {
                if *intro != self.me && !targets.contains(intro) {
                    targets.push(intro.clone());
                }
            }
        }
        for to in targets {
            self.send(to, Msg::Updates(updates.clone()));
        }
    }

    pub(super) fn enqueue_gossip(&mut self, u: Update) {
        let limit = self.retransmit_limit();
        self.gossip.retain(|(g, _)| g.addr != u.addr);
        self.gossip.push((u, limit));
        if self.gossip.len() > MAX_GOSSIP {
            self.gossip.sort_by_key(|g| std::cmp::Reverse(g.1));
            self.gossip.truncate(MAX_GOSSIP);
        }
    }

    /// Updates for one outgoing ping/ack: the least retransmitted first.
    pub(super) fn piggyback(&mut self) -> Vec<Update> {
        if self.gossip.is_empty() {
            return Vec::new();
        }
        // Stable sort: among equals, the oldest entry goes first.
        self.gossip.sort_by_key(|g| std::cmp::Reverse(g.1));
        let n = self.settings.max_piggyback.min(self.gossip.len());
        let mut out = Vec::with_capacity(n);
        for (u, left) in self.gossip.iter_mut().take(n) {
            out.push(u.clone());
            *left = left.saturating_sub(1);
        }
        self.gossip.retain(|(_, left)| *left > 0);
        out
    }

    pub(super) fn retransmit_limit(&self) -> u32 {
        let n = self.live_count() as u64 + 2;
        // ceil(log2(n)) without floats.
        let log = 64 - (n - 1).leading_zeros();
        self.settings.retransmit_mult.saturating_mul(log.max(1))
    }

    /// Send `what` to `to` unless the same repair went there within one ping period.
    pub(super) fn repair(&mut self, now: Millis, to: NodeAddr, what: Update) {
        let key = (to.clone(), what.addr.clone());
        if let Some(last) = self.told.get(&key) {
            if now.saturating_sub(*last) < self.settings.ping_duration {
                return;
            }
        }
        if self.told.len() >= MAX_TOLD {
            let horizon = now.saturating_sub(self.settings.ping_duration);
            self.told.retain(|_, t| *t >= horizon);
            if self.told.len() >= MAX_TOLD {
                self.told.clear();
            }
        }
        self.told.insert(key, now);
        self.send(to, Msg::Updates(vec![what]));
    }
}
