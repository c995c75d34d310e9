//! The coordinator's reigns: the cluster's first reign, takeover by the standby,
//! rebuild from SDFS when coordinator and standby die together, standby choice, fencing
//! of older terms, and the standby's side of replication.

use std::collections::{BTreeSet, VecDeque};

use super::{Coordinator, Effect, Event, Primary, Role, RoleKind, Slot, Timer};
use crate::jobs::msg::Msg;
use crate::jobs::record::Record;
use crate::jobs::state::{CoordState, ResultFound};
use crate::jobs::types::{next_epoch, JobManifest, QueryId, Reign, Term};
use crate::types::{Millis, NodeAddr};

/// The next live node after `after` in address order (wrapping), other than `after`.
/// Every node computes the same answer from the same membership view, which is what
/// makes standby choice and double-failure succession deterministic.
pub fn successor(live: &BTreeSet<NodeAddr>, after: &NodeAddr) -> Option<NodeAddr> {
    live.range::<NodeAddr, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
        .chain(live.iter())
        .find(|n| *n != after)
        .cloned()
}

impl Coordinator {
    /// Arms the first reign's grace timer when this node is the first live node of the
    /// ring and knows of no reign.
    fn maybe_arm_bootstrap(&mut self, now: Millis, fx: &mut Vec<Effect>) {
        if self.reign.is_some() || self.bootstrap_armed || !self.first_of_ring() {
            return;
        }
        self.bootstrap_armed = true;
        fx.push(Effect::SetTimer {
            at: now.saturating_add(self.bootstrap_grace_ms),
            timer: Timer::Bootstrap,
        });
    }

    fn first_of_ring(&self) -> bool {
        self.ring.iter().find(|a| self.members.contains(*a)) == Some(&self.me)
    }

    /// The grace period is over: if still no reign is known and this node is still the
    /// first of the ring, ask for the epochs SDFS already used.
    pub(super) fn on_bootstrap_timer(&mut self, fx: &mut Vec<Effect>) {
        self.bootstrap_armed = false;
        if self.reign.is_none() && self.first_of_ring() {
            self.bootstrap_armed = true;
            fx.push(Effect::ReadUsedEpoch);
        }
    }

    /// Makes this node the first coordinator of this cluster's life, unless a reign
    /// became known meanwhile. `used_epoch` is the highest epoch in the job ids SDFS
    /// already holds (0 if none): a cluster restarted on its old SDFS data starts above
    /// it, so a new job can never take the id (and so the manifest and result names) of
    /// an old one.
    pub(super) fn on_used_epoch(&mut self, now: Millis, used_epoch: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        self.bootstrap_armed = false;
        if self.reign.is_some() {
            return fx;
        }
        // The shell already skips job ids above MAX_EPOCH; a value past it here is
        // ignored the same way rather than wrapped.
        let epoch = match next_epoch(used_epoch) {
            Some(e) => e,
            None => {
                self.implausible_epoch(None, used_epoch, &mut fx);
                1
            }
        };
        fx.push(Effect::Event(Event::Bootstrap { used_epoch }));
        self.members.insert(self.me.clone());
        let term = Term {
            epoch,
            coordinator: self.me.clone(),
        };
        self.begin_reign(now, term, CoordState::new(), &mut fx);
        fx
    }

    /// Starts coordinating `term` with `state`: every query without an outcome is
    /// queued (whatever was in flight under the previous coordinator is re-run; results
    /// are keyed by query, so a re-run counts once), a standby is chosen and sent a
    /// snapshot, every member learns the reign.
    pub(super) fn begin_reign(
        &mut self,
        now: Millis,
        term: Term,
        state: CoordState,
        fx: &mut Vec<Effect>,
    ) {
        let view = self
            .reign
            .as_ref()
            .filter(|r| r.term == term)
            .map_or(0, |r| r.view + 1);
        let standby = successor(&self.members, &self.me);
        self.state = state;
        self.reign = Some(Reign {
            term,
            standby: standby.clone(),
            view,
        });
        let mut p = Primary::default();
        for m in &self.members {
            p.workers.insert(m.clone(), Slot::default());
        }
        for j in self.state.jobs.values().filter(|j| !j.is_complete()) {
            let q: VecDeque<QueryId> = (0..j.manifest.queries.len())
                .filter(|q| !j.is_done(*q))
                .collect();
            p.queues.insert(j.manifest.id, q);
        }
        self.role = Role::Primary(Box::new(p));
        self.role_changed(fx);
        self.broadcast_reign(fx);
        if let (Some(s), Some(r)) = (standby, &self.reign) {
            fx.push(Effect::Send {
                to: s,
                msg: Msg::Snapshot {
                    reign: r.clone(),
                    seq: 0,
                    state: Box::new(self.state.clone()),
                },
            });
        }
        for j in self.state.jobs.values().filter(|j| !j.manifest_stored) {
            fx.push(Effect::WriteManifest {
                manifest: j.manifest.clone(),
            });
        }
        self.with_primary(now, fx, |p, cx| {
            p.sync_fairness(cx);
            p.fill(cx);
            p.release(cx);
        });
    }

    /// Coordinator and standby are both gone: become coordinator-elect and ask the
    /// shell for the job table in SDFS. The reign is announced at once so workers fence
    /// the old coordinator while the table loads.
    pub(super) fn recover_from_sdfs(&mut self, fx: &mut Vec<Effect>) {
        let current = self.reign.as_ref().map_or(0, |r| r.term.epoch);
        let Some(epoch) = next_epoch(current) else {
            fx.push(Effect::Event(Event::EpochsExhausted { epoch: current }));
            return;
        };
        let term = Term {
            epoch,
            coordinator: self.me.clone(),
        };
        self.reign = Some(Reign {
            term: term.clone(),
            standby: None,
            view: 0,
        });
        self.role = Role::Recovering;
        self.role_changed(fx);
        self.broadcast_reign(fx);
        fx.push(Effect::LoadJobsFromSdfs { term });
    }

    /// The shell read SDFS for a `LoadJobsFromSdfs { term }`: rebuild and coordinate.
    pub(super) fn on_sdfs_loaded(
        &mut self,
        now: Millis,
        term: Term,
        manifests: Vec<JobManifest>,
        results: Vec<ResultFound>,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        let current = self.reign.as_ref().map(|r| &r.term) == Some(&term);
        if matches!(self.role, Role::Recovering) && current {
            let state = CoordState::rebuild_from_sdfs(&self.cfg, manifests, &results);
            self.begin_reign(now, term, state, &mut fx);
        }
        fx
    }

    /// The membership layer's current list of live members (this node included).
    pub(super) fn on_members(&mut self, now: Millis, live: &[NodeAddr]) -> Vec<Effect> {
        let mut fx = Vec::new();
        let live: BTreeSet<NodeAddr> = live.iter().cloned().collect();
        let gone: Vec<NodeAddr> = self.members.difference(&live).cloned().collect();
        let joined: Vec<NodeAddr> = live.difference(&self.members).cloned().collect();
        self.members = live;
        let members = &self.members;
        self.serving.retain(|n, _| members.contains(n));
        match &self.role {
            Role::Primary(_) => {
                let standby_gone = self
                    .reign
                    .as_ref()
                    .and_then(|r| r.standby.as_ref())
                    .is_none_or(|s| gone.contains(s));
                if let Some(r) = &self.reign {
                    for j in &joined {
                        fx.push(Effect::Send {
                            to: j.clone(),
                            msg: Msg::Reign(r.clone()),
                        });
                    }
                }
                self.with_primary(now, &mut fx, |p, cx| {
                    for g in &gone {
                        p.worker_lost(cx, g);
                    }
                    for j in &joined {
                        p.workers.entry(j.clone()).or_default();
                    }
                });
                if standby_gone {
                    self.choose_standby(now, &mut fx);
                }
                self.with_primary(now, &mut fx, |p, cx| {
                    p.sync_fairness(cx);
                    p.fill(cx);
                    p.release(cx);
                });
            }
            Role::Standby { synced, .. } => {
                let synced = *synced;
                let coordinator_gone = self
                    .reign
                    .as_ref()
                    .is_some_and(|r| !self.members.contains(&r.term.coordinator));
                if coordinator_gone {
                    if synced {
                        let current = self.reign.as_ref().map_or(0, |r| r.term.epoch);
                        let Some(epoch) = next_epoch(current) else {
                            fx.push(Effect::Event(Event::EpochsExhausted { epoch: current }));
                            return fx;
                        };
                        let term = Term {
                            epoch,
                            coordinator: self.me.clone(),
                        };
                        let state = self.state.clone();
                        self.begin_reign(now, term, state, &mut fx);
                    } else {
                        self.recover_from_sdfs(&mut fx);
                    }
                }
            }
            Role::Member => {
                let orphan = self.reign.as_ref().and_then(|r| {
                    let c_dead = !self.members.contains(&r.term.coordinator);
                    let s_dead = r.standby.as_ref().is_none_or(|s| !self.members.contains(s));
                    (c_dead && s_dead).then(|| {
                        r.standby
                            .clone()
                            .unwrap_or_else(|| r.term.coordinator.clone())
                    })
                });
                if let Some(after) = orphan {
                    if successor(&self.members, &after).as_ref() == Some(&self.me) {
                        self.recover_from_sdfs(&mut fx);
                    }
                }
            }
            Role::Recovering => {}
        }
        self.maybe_arm_bootstrap(now, &mut fx);
        fx
    }

    /// Picks the next live node after this one as standby (if it is not already) and
    /// sends it a snapshot; acknowledgements wait until it has caught up.
    pub(super) fn choose_standby(&mut self, now: Millis, fx: &mut Vec<Effect>) {
        let new = successor(&self.members, &self.me);
        let Some(r) = self.reign.as_mut() else {
            return;
        };
        // `new` is live, so equality also means the current standby is alive.
        if r.standby == new {
            return;
        }
        r.standby = new.clone();
        r.view += 1;
        let reign = r.clone();
        let seq = self.with_primary(now, fx, |p, _| {
            p.acked = None;
            p.seq
        });
        self.broadcast_reign(fx);
        if let (Some(s), Some(seq)) = (new, seq) {
            fx.push(Effect::Send {
                to: s,
                msg: Msg::Snapshot {
                    reign,
                    seq,
                    state: Box::new(self.state.clone()),
                },
            });
        }
        self.with_primary(now, fx, |p, cx| p.release(cx));
    }

    /// Adopts a newer reign; a coordinator (or coordinator-elect) of an older term
    /// steps down. Returns whether it was newer.
    pub(super) fn observe_reign(&mut self, r: &Reign, fx: &mut Vec<Effect>) -> bool {
        if self.reign.as_ref().is_some_and(|k| !r.supersedes(k)) {
            return false;
        }
        let term_changed = self.reign.as_ref().is_none_or(|k| k.term != r.term);
        self.reign = Some(r.clone());
        let me_standby = r.standby.as_ref() == Some(&self.me);
        let before = self.role();
        match &self.role {
            Role::Primary(_) | Role::Recovering
                if r.term.coordinator != self.me || term_changed =>
            {
                self.counters.stepped_down += 1;
                self.role = if me_standby {
                    Role::Standby {
                        synced: false,
                        applied: 0,
                    }
                } else {
                    Role::Member
                };
            }
            Role::Standby { .. } if !me_standby => self.role = Role::Member,
            Role::Standby { .. } if term_changed => {
                self.role = Role::Standby {
                    synced: false,
                    applied: 0,
                }
            }
            Role::Member if me_standby => {
                self.role = Role::Standby {
                    synced: false,
                    applied: 0,
                }
            }
            _ => {}
        }
        if self.role() != before {
            self.role_changed(fx);
        }
        true
    }

    /// Learns that `term` exists (from a worker's refusal): step down if it is newer.
    /// The full reign arrives later in a `Reign` message.
    pub(super) fn observe_term(&mut self, term: &Term, fx: &mut Vec<Effect>) {
        let mine = self.reign.as_ref().map(|r| &r.term);
        if mine.is_some_and(|m| term > m)
            && matches!(self.role, Role::Primary(_) | Role::Recovering)
        {
            self.counters.stepped_down += 1;
            self.role = Role::Member;
            self.role_changed(fx);
        }
    }

    pub(super) fn fence(&mut self, to: &NodeAddr, fx: &mut Vec<Effect>) {
        if let Some(r) = &self.reign {
            self.counters.fenced_refusals += 1;
            fx.push(Effect::Send {
                to: to.clone(),
                msg: Msg::Fenced { reign: r.clone() },
            });
        }
    }

    pub(super) fn on_replicate(
        &mut self,
        from: &NodeAddr,
        term: Term,
        seq: u64,
        record: Record,
        fx: &mut Vec<Effect>,
    ) {
        let Some(known) = self.reign.as_ref().map(|r| r.term.clone()) else {
            fx.push(Effect::Send {
                to: from.clone(),
                msg: Msg::SnapshotRequest { term },
            });
            return;
        };
        if term < known {
            // The fencing that matters: a paused old coordinator cannot get anything
            // acknowledged, because its standby (or the new coordinator) refuses it.
            self.fence(from, fx);
            return;
        }
        let reply = match &mut self.role {
            Role::Standby {
                synced: true,
                applied,
            } if term == known => {
                if seq == *applied + 1 {
                    self.state.apply(&record, &self.cfg);
                    *applied = seq;
                }
                if seq <= *applied {
                    Msg::ReplicateAck {
                        term,
                        seq: *applied,
                    }
                } else {
                    Msg::SnapshotRequest { term }
                }
            }
            _ => Msg::SnapshotRequest { term },
        };
        fx.push(Effect::Send {
            to: from.clone(),
            msg: reply,
        });
    }

    pub(super) fn on_snapshot(
        &mut self,
        from: &NodeAddr,
        reign: Reign,
        seq: u64,
        state: CoordState,
        fx: &mut Vec<Effect>,
    ) {
        if self.reign.as_ref().is_some_and(|k| reign.term < k.term) {
            self.fence(from, fx);
            return;
        }
        self.observe_reign(&reign, fx);
        let current = self.reign.as_ref().is_some_and(|k| k.term == reign.term);
        if !current
            || reign.standby.as_ref() != Some(&self.me)
            || matches!(self.role, Role::Primary(_))
        {
            return;
        }
        let before = self.role();
        self.state = state;
        self.role = Role::Standby {
            synced: true,
            applied: seq,
        };
        if before != RoleKind::Standby {
            self.role_changed(fx);
        }
        fx.push(Effect::Send {
            to: from.clone(),
            msg: Msg::ReplicateAck {
                term: reign.term,
                seq,
            },
        });
    }

    /// The standby acknowledged everything up to `seq` of `term`.
    pub(super) fn on_replicate_ack(
        &mut self,
        now: Millis,
        from: &NodeAddr,
        term: Term,
        seq: u64,
        fx: &mut Vec<Effect>,
    ) {
        let standby = self.reign.as_ref().and_then(|r| r.standby.clone());
        let mine = self.reign.as_ref().map(|r| r.term.clone());
        if standby.as_ref() == Some(from) && mine.as_ref() == Some(&term) {
            self.with_primary(now, fx, |p, cx| {
                p.acked = Some(p.acked.map_or(seq, |a| a.max(seq)));
                p.release(cx);
            });
        }
    }

    /// The standby found a gap in the log: send it the whole state.
    pub(super) fn on_snapshot_request(
        &mut self,
        from: &NodeAddr,
        term: Term,
        fx: &mut Vec<Effect>,
    ) {
        let r = self.reign.clone();
        let is_mine = r
            .as_ref()
            .is_some_and(|r| r.term == term && r.standby.as_ref() == Some(from));
        if let (true, Some(reign), Role::Primary(p)) = (is_mine, r, &self.role) {
            fx.push(Effect::Send {
                to: from.clone(),
                msg: Msg::Snapshot {
                    reign,
                    seq: p.seq,
                    state: Box::new(self.state.clone()),
                },
            });
        }
    }

    /// A reign announcement: adopt it if newer, fence its sender if older.
    pub(super) fn on_reign(&mut self, from: &NodeAddr, r: Reign, fx: &mut Vec<Effect>) {
        let older = self.reign.as_ref().is_some_and(|k| r.term < k.term);
        if older {
            // A deposed coordinator announcing itself: tell it.
            self.fence(from, fx);
        } else {
            self.observe_reign(&r, fx);
        }
    }
}
