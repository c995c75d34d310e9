//! The update and incarnation rules: what a piece of membership news is, which of two
//! updates about one address wins ([`supersedes`]), and how the core applies news about
//! others and about itself (refute a suspicion, rejoin after its own burial, answer a
//! stale claim with the tombstone). The identity rules are listed in the core's docs.

use serde::{Deserialize, Serialize};

use super::membership::{Event, Member, MemberState, Membership, MembershipError, Msg, Status};
use super::plausible::incarnation_ceiling;
use super::MAX_UPDATES_PER_MSG;
use crate::types::{Incarnation, Millis, NodeAddr};

/// State carried by an update. Failed and Left are tombstones: the member is no longer
/// listed, and the record stops stale updates from resurrecting that life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UpdateState {
    Alive,
    Suspect,
    Failed,
    Left,
}

impl UpdateState {
    /// Failed or Left.
    pub fn is_tombstone(self) -> bool {
        matches!(self, UpdateState::Failed | UpdateState::Left)
    }
}

/// One piece of membership news, as gossiped.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Update {
    pub addr: NodeAddr,
    pub incarnation: Incarnation,
    /// Incarnation the member's current life started with (see the module docs).
    pub joined: Incarnation,
    pub state: UpdateState,
}

impl Update {
    /// The member as `list_mem` shows it; `None` for a tombstone (not listed).
    pub fn listed(&self) -> Option<Member> {
        let state = match self.state {
            UpdateState::Alive => MemberState::Alive,
            UpdateState::Suspect => MemberState::Suspect,
            UpdateState::Failed | UpdateState::Left => return None,
        };
        Some(Member {
            addr: self.addr.clone(),
            incarnation: self.incarnation,
            joined: self.joined,
            state,
        })
    }
}

/// Whether `new` replaces `old` (both about the same address). The whole ordering
/// of the protocol lives here.
pub fn supersedes(new: &Update, old: &Update) -> bool {
    use UpdateState::*;
    match (new.state.is_tombstone(), old.state.is_tombstone()) {
        // Only a life that started after the burial brings an address back.
        (false, true) => new.joined > old.incarnation,
        // A tombstone ends the life it names, even if that life refuted since.
        (true, false) => new.incarnation >= old.joined,
        (true, true) => new.incarnation > old.incarnation,
        (false, false) => match (new.state, old.state) {
            (Suspect, Alive) => new.incarnation >= old.incarnation,
            _ => new.incarnation > old.incarnation,
        },
    }
}

impl Membership {
    pub(super) fn apply_sender(
        &mut self,
        now: Millis,
        from: &NodeAddr,
        incarnation: Incarnation,
        joined: Incarnation,
    ) {
        let u = Update {
            addr: from.clone(),
            incarnation,
            joined,
            state: UpdateState::Alive,
        };
        self.apply(now, Some(from), u);
    }

    pub(super) fn apply_all(&mut self, now: Millis, from: &NodeAddr, updates: Vec<Update>) {
        for u in updates.into_iter().take(MAX_UPDATES_PER_MSG) {
            self.apply(now, Some(from), u);
        }
    }

    /// The highest incarnation believed now: wall clock plus `max_incarnation_ahead`.
    pub(super) fn incarnation_ceiling(&self, now: Millis) -> Incarnation {
        let s = &self.settings;
        incarnation_ceiling(s.wall_origin, now, s.max_incarnation_ahead)
    }

    /// Whether `inc` is a believable incarnation now. An implausible one is reported
    /// (once per sender per interval) and the caller drops the news: a single update
    /// at `u64::MAX` would otherwise bury a life that no incarnation can ever follow.
    pub(super) fn plausible(
        &mut self,
        now: Millis,
        from: Option<&NodeAddr>,
        addr: &NodeAddr,
        inc: Incarnation,
    ) -> bool {
        if inc <= self.incarnation_ceiling(now) {
            return true;
        }
        if let Some(suppressed) = self.implausible.refused(now, from.cloned()) {
            self.event(Event::Implausible {
                from: from.cloned(),
                addr: addr.clone(),
                incarnation: inc,
                suppressed,
            });
        }
        false
    }

    /// Clears this node's tombstone of `addr` (the operator's `forgive ADDR`).
    pub(super) fn forgive(&mut self, now: Millis, addr: &NodeAddr) -> Result<(), MembershipError> {
        let tomb = match self.entries.get(addr) {
            Some(u) if u.state.is_tombstone() => u.clone(),
            _ => return Err(MembershipError::NotBuried(addr.clone())),
        };
        self.entries.remove(addr);
        // Stop spreading the record from here; other nodes need their own `forgive`.
        self.gossip
            .retain(|(u, _)| !(u.addr == *addr && u.state.is_tombstone()));
        self.event(Event::Forgiven {
            addr: addr.clone(),
            incarnation: tomb.incarnation,
        });
        self.refresh_monitors(now);
        Ok(())
    }

    pub(super) fn apply(&mut self, now: Millis, from: Option<&NodeAddr>, u: Update) {
        let top = u.incarnation.max(u.joined);
        if !self.plausible(now, from, &u.addr, top) {
            return;
        }
        if u.addr == self.me {
            self.apply_about_self(now, from, u);
            return;
        }
        let prev = self.entries.get(&u.addr).cloned();
        if let Some(old) = &prev {
            if !supersedes(&u, old) {
                // Someone believes in a life we buried: tell them, so they converge
                // (and, if it is the buried node itself, so it rejoins).
                if !u.state.is_tombstone() && old.state.is_tombstone() {
                    if let Some(f) = from {
                        let f = f.clone();
                        self.repair(now, f, old.clone());
                    }
                }
                return;
            }
        }
        self.entries.insert(u.addr.clone(), u.clone());
        let same_life = prev
            .as_ref()
            .is_some_and(|p| !p.state.is_tombstone() && p.joined == u.joined);
        let was_live = prev.as_ref().is_some_and(|p| !p.state.is_tombstone());
        match u.state {
            UpdateState::Alive => {
                if !same_life {
                    self.event(Event::Joined {
                        addr: u.addr.clone(),
                        incarnation: u.incarnation,
                    });
                } else if prev
                    .as_ref()
                    .is_some_and(|p| p.state == UpdateState::Suspect)
                {
                    self.event(Event::Refuted {
                        addr: u.addr.clone(),
                        incarnation: u.incarnation,
                    });
                }
            }
            UpdateState::Suspect => {
                if !same_life {
                    self.event(Event::Joined {
                        addr: u.addr.clone(),
                        incarnation: u.incarnation,
                    });
                }
                self.event(Event::Suspected {
                    addr: u.addr.clone(),
                    incarnation: u.incarnation,
                    by_me: false,
                });
                self.set_suspect_timer(now, &u);
            }
            UpdateState::Failed => {
                if was_live {
                    self.event(Event::Failed {
                        addr: u.addr.clone(),
                        incarnation: u.incarnation,
                    });
                }
            }
            UpdateState::Left => {
                if was_live {
                    self.event(Event::Left {
                        addr: u.addr.clone(),
                        incarnation: u.incarnation,
                    });
                }
            }
        }
        self.enqueue_gossip(u);
    }

    pub(super) fn apply_about_self(&mut self, now: Millis, from: Option<&NodeAddr>, u: Update) {
        if self.status != Status::Member {
            return;
        }
        match u.state {
            // Only this node speaks for its own liveness.
            UpdateState::Alive => {}
            UpdateState::Suspect => {
                if u.incarnation >= self.incarnation {
                    // Plausible incarnations are far below u64::MAX; refuse rather than wrap.
                    let Some(next) = u.incarnation.checked_add(1) else {
                        return;
                    };
                    self.incarnation = next;
                    let me = self.self_update(UpdateState::Alive);
                    self.event(Event::Refuted {
                        addr: self.me.clone(),
                        incarnation: self.incarnation,
                    });
                    self.enqueue_gossip(me.clone());
                    self.broadcast(vec![me], false);
                } else if let Some(f) = from {
                    // Stale suspicion: make sure its holder has our refutation.
                    let f = f.clone();
                    let me = self.self_update(UpdateState::Alive);
                    self.repair(now, f, me);
                }
            }
            UpdateState::Failed | UpdateState::Left => {
                if u.incarnation >= self.joined {
                    self.want_rejoin(now, u.incarnation, from.cloned());
                } else if let Some(f) = from {
                    // An earlier life of ours was buried; this one is fine.
                    let f = f.clone();
                    let me = self.self_update(UpdateState::Alive);
                    self.repair(now, f, me);
                }
            }
        }
    }

    /// Buries `entry`'s life. Its originator (the node whose prober raised the
    /// suspicion) broadcasts the failure; others only gossip it and tell the introducer.
    pub(super) fn declare_failed(&mut self, _now: Millis, entry: Update, originator: bool) {
        let failed = Update {
            state: UpdateState::Failed,
            ..entry
        };
        self.entries.insert(failed.addr.clone(), failed.clone());
        self.event(Event::Failed {
            addr: failed.addr.clone(),
            incarnation: failed.incarnation,
        });
        self.enqueue_gossip(failed.clone());
        if originator {
            self.broadcast(vec![failed.clone()], true);
            // If it is in fact alive (paused, partitioned), it learns at once and rejoins.
            self.send(failed.addr.clone(), Msg::Updates(vec![failed]));
        } else if let Some(intro) = self.settings.introducer.clone() {
            // The originator may be dead too; the introducer must not list a corpse.
            self.send(intro, Msg::Updates(vec![failed]));
        }
    }
}
