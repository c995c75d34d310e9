//! Membership core: the member list, incarnations, suspicion, refutation, leave, join
//! and dissemination of the ring failure detector, as a pure state machine.
//!
//! No socket, no clock, no actix: the MembershipActor hands every message, timer,
//! prober request and console command to [`Machine::handle`] as an [`Input`] with its
//! `now`, and executes the [`Effect`]s it returns (messages to send, timers to set, acks
//! to route to probers, events to log). The shape follows foca's runtime.
//!
//! The concerns live beside this file: the update and incarnation rules in `update.rs`,
//! joining and leaving in `join.rs`, dissemination in `gossip.rs`, monitor selection
//! in `monitors.rs`, settings in `settings.rs`.
//!
//! Identity rules (SWIM plus foca's "a dead identity stays dead"):
//! - a member is `(addr, incarnation)`; only the member raises its own incarnation;
//! - a *life* starts when a node (re)joins: `joined` is the incarnation it joined with;
//! - live updates are ordered by incarnation: alive(i) beats suspect(j) iff i > j,
//!   suspect(i) beats alive(j) iff i >= j;
//! - failed/left(k) ends every life that started at or before k, whatever incarnation
//!   it reached; only a *new* life (joined > k) brings the address back. A node that
//!   hears its current life was declared failed therefore rejoins with a fresh
//!   incarnation instead of refuting ([`Event::Rejoin`]).
//!
//! Dissemination: the originator of an update broadcasts it to every live member, and
//! every node piggybacks recent updates (a bounded number per message, each sent about
//! `retransmit_mult * log2(n)` times) on pings and acks, so a lost broadcast still
//! converges. Healing is driven by tombstones: a node that receives a live claim about a
//! member it buried answers with the tombstone, and each node now and then sends one
//! buried address its tombstone, so a member wrongly removed by the other side of a
//! partition finds out and rejoins. Background cost per node is independent of the
//! cluster size.

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::IteratorRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::plausible::Reports;
pub use super::settings::{MembershipError, Settings, MAX_INCARNATION_AHEAD};
use super::{Update, UpdateState};
use crate::machine::Machine;
use crate::types::{Incarnation, Millis, NodeAddr};

/// Updates processed from one message at most: a hostile or corrupt SyncReply cannot
/// make one call arbitrarily long.
pub const MAX_UPDATES_PER_MSG: usize = 4096;

/// Messages of the membership protocol. The MembershipActor wraps them in the wire
/// envelope; `from` on receipt must be the sender's node address ("host:port").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// A probe from a monitor; the sender states its own incarnation.
    Ping {
        seq: u64,
        incarnation: Incarnation,
        joined: Incarnation,
        updates: Vec<Update>,
    },
    /// Answer to a Ping with the same `seq`.
    Ack {
        seq: u64,
        incarnation: Incarnation,
        joined: Incarnation,
        updates: Vec<Update>,
    },
    /// Direct broadcast of fresh updates (or a targeted repair).
    Updates(Vec<Update>),
    /// Joiner -> introducer.
    JoinRequest { incarnation: Incarnation },
    /// Introducer -> joiner: the incarnation to use (at least the requested one,
    /// above any the introducer buried) and the members it knows.
    JoinReply {
        incarnation: Incarnation,
        members: Vec<Update>,
    },
    /// Ask a member for its whole view (after a join or rejoin only).
    SyncRequest,
    /// The whole view: members, tombstones and the sender itself.
    SyncReply { members: Vec<Update> },
    /// Member -> introducer: "I am alive" (periodic, and in answer to IntroducerHello).
    Announce {
        incarnation: Incarnation,
        joined: Incarnation,
    },
    /// A (re)started introducer asks every configured node to announce itself.
    IntroducerHello,
}

/// Listed state of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
}

/// A listed member, for `list_mem` / `list_self`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub addr: NodeAddr,
    pub incarnation: Incarnation,
    pub joined: Incarnation,
    pub state: MemberState,
}

/// Where this node stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Never joined, or the last join failed.
    Idle,
    /// Waiting for the introducer's reply to a first join.
    Joining,
    /// In the cluster.
    Member,
    /// Left voluntarily; `join` again to come back.
    Left,
}

/// Everything that can happen to the membership core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Join through the introducer. `incarnation` is the caller's pick (its start time
    /// in ms, say); the core never goes below one more than any incarnation it used.
    /// Without an answer within `join_timeout` an [`Event::JoinFailed`] follows; a join
    /// while joining or a member, or without an introducer, is [`Effect::Refused`].
    Join { incarnation: Incarnation },
    /// Leave voluntarily: spread at once, never counted as a failure. Refused when not
    /// a member.
    Leave,
    /// A message from `from` (the sender's node address).
    Msg { from: NodeAddr, msg: Msg },
    /// A timer this core set is due.
    Timer(Timer),
    /// A prober asks for the Ping numbered `seq` to `peer` (the core adds gossip).
    SendPing { peer: NodeAddr, seq: u64 },
    /// A prober's verdict: `peer` did not answer a probe in time.
    Unresponsive { peer: NodeAddr },
    /// The operator clears this node's tombstone for `addr` (`forgive ADDR`): a record
    /// that buried a live node for good, or at an absurd incarnation, no longer blocks
    /// that node's alive claims here. Refused when no tombstone is held.
    Forgive { addr: NodeAddr },
}

/// Timers the core asks for; hand them back as [`Input::Timer`] when due.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    /// The suspicion of `addr` at `incarnation` expires.
    SuspectTimeout {
        addr: NodeAddr,
        incarnation: Incarnation,
    },
    /// The introducer did not answer join attempt `attempt`.
    JoinTimeout { attempt: u64 },
    /// Retry a rejoin whose attempt `attempt` went unanswered.
    JoinRetry { attempt: u64 },
    /// Periodic announce to the introducer (stale when `epoch` is old).
    Announce { epoch: u64 },
    /// Periodic tombstone probe (stale when `epoch` is old).
    TombstoneProbe { epoch: u64 },
    /// A rejoin deferred by the backoff is due (stale when `epoch` is old).
    Rejoin { epoch: u64 },
}

/// What happened, for logs and the console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// This node is in (first join, or a rejoin got the introducer's answer).
    SelfJoined {
        incarnation: Incarnation,
        members: usize,
    },
    /// A join could not complete; the console shows `reason`.
    JoinFailed { reason: String },
    /// Another member appeared, or started a new life.
    Joined {
        addr: NodeAddr,
        incarnation: Incarnation,
    },
    /// A member is suspected; `by_me` when this node's prober raised it.
    Suspected {
        addr: NodeAddr,
        incarnation: Incarnation,
        by_me: bool,
    },
    /// A suspicion was refuted (`addr` may be this node).
    Refuted {
        addr: NodeAddr,
        incarnation: Incarnation,
    },
    /// A member was declared failed and removed.
    Failed {
        addr: NodeAddr,
        incarnation: Incarnation,
    },
    /// A member left voluntarily.
    Left {
        addr: NodeAddr,
        incarnation: Incarnation,
    },
    /// This node left.
    SelfLeft { incarnation: Incarnation },
    /// This node learned it was declared failed and started a new life.
    Rejoin {
        old_incarnation: Incarnation,
        new_incarnation: Incarnation,
    },
    /// The monitored set changed: start/stop probers to match.
    MonitorsChanged(Vec<NodeAddr>),
    /// An update from `from` about `addr` carried an incarnation beyond any plausible
    /// one (more than `max_incarnation_ahead` past the wall clock) and was dropped.
    /// Raised once per sender per [`IMPLAUSIBLE_LOG_INTERVAL`]; `suppressed` counts the
    /// refusals not reported since the previous event.
    Implausible {
        from: Option<NodeAddr>,
        addr: NodeAddr,
        incarnation: Incarnation,
        suppressed: u64,
    },
    /// This node was declared failed again too soon after its last rejoin: the rejoin
    /// waits until `at` (backoff), so a stream of burials cannot make it spin.
    RejoinDeferred { at: Millis },
    /// The operator cleared the tombstone of `addr` at `incarnation`.
    Forgiven {
        addr: NodeAddr,
        incarnation: Incarnation,
    },
}

pub use super::plausible::IMPLAUSIBLE_LOG_INTERVAL;

/// Output of the core, drained by the caller in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send `msg` to `to`.
    Send { to: NodeAddr, msg: Msg },
    /// Hand `timer` back as [`Input::Timer`] at `at` (caller's clock).
    SetTimer { at: Millis, timer: Timer },
    /// `peer` acked probe `seq`: route to that peer's prober.
    Acked { peer: NodeAddr, seq: u64 },
    /// A join or leave was not accepted; nothing changed.
    Refused(MembershipError),
    /// Something to log or show.
    Event(Event),
}

/// The membership state machine of one node.
#[derive(Debug)]
pub struct Membership {
    pub(super) me: NodeAddr,
    pub(super) settings: Settings,
    pub(super) status: Status,
    pub(super) incarnation: Incarnation,
    pub(super) joined: Incarnation,
    /// Everyone but this node: live members and tombstones.
    pub(super) entries: BTreeMap<NodeAddr, Update>,
    /// Updates waiting to be piggybacked, with their remaining transmissions.
    pub(super) gossip: Vec<(Update, u32)>,
    pub(super) monitors: Vec<NodeAddr>,
    /// Suspicions this node raised: it broadcasts their failure, others only gossip it.
    pub(super) originated: BTreeSet<(NodeAddr, Incarnation)>,
    pub(super) join_attempt: u64,
    /// A rejoin is waiting for the introducer (the node keeps working meanwhile).
    pub(super) rejoin_pending: bool,
    /// Bumped on every join/leave so periodic timers of an earlier life die.
    pub(super) epoch: u64,
    /// Last time a repair was sent, per (recipient, subject): repairs are rate-limited.
    pub(super) told: BTreeMap<(NodeAddr, NodeAddr), Millis>,
    /// Per sender of implausible updates: when it was last reported, and how many
    /// refusals went unreported since.
    pub(super) implausible: Reports<Option<NodeAddr>>,
    /// When this node last rejoined, and the wait before the next rejoin may run.
    pub(super) last_rejoin: Option<Millis>,
    pub(super) rejoin_backoff: Millis,
    /// A burial that arrived during the backoff: the incarnation it named and who told.
    pub(super) rejoin_wanted: Option<(Incarnation, Option<NodeAddr>)>,
    pub(super) rng: ChaCha8Rng,
    pub(super) effects: Vec<Effect>,
}

impl Machine for Membership {
    type Input = Input;
    type Effect = Effect;

    fn handle(&mut self, now: Millis, input: Input) -> Vec<Effect> {
        match input {
            Input::Join { incarnation } => {
                if let Err(e) = self.join(now, incarnation) {
                    self.effects.push(Effect::Refused(e));
                }
            }
            Input::Leave => {
                if let Err(e) = self.leave(now) {
                    self.effects.push(Effect::Refused(e));
                }
            }
            Input::Msg { from, msg } => self.on_msg(now, &from, msg),
            Input::Timer(timer) => self.on_timer(now, timer),
            Input::SendPing { peer, seq } => self.send_ping(&peer, seq),
            Input::Unresponsive { peer } => self.report_unresponsive(now, &peer),
            Input::Forgive { addr } => {
                if let Err(e) = self.forgive(now, &addr) {
                    self.effects.push(Effect::Refused(e));
                }
            }
        }
        std::mem::take(&mut self.effects)
    }
}

impl Membership {
    /// A core for node `me`, not yet joined. `seed` drives its few random choices.
    pub fn new(me: NodeAddr, settings: Settings, seed: u64) -> Result<Self, MembershipError> {
        settings.validate()?;
        let rejoin_backoff = settings.rejoin_backoff_min;
        Ok(Membership {
            me,
            settings,
            status: Status::Idle,
            incarnation: 0,
            joined: 0,
            entries: BTreeMap::new(),
            gossip: Vec::new(),
            monitors: Vec::new(),
            originated: BTreeSet::new(),
            join_attempt: 0,
            rejoin_pending: false,
            epoch: 0,
            told: BTreeMap::new(),
            implausible: Reports::default(),
            last_rejoin: None,
            rejoin_backoff,
            rejoin_wanted: None,
            rng: ChaCha8Rng::seed_from_u64(seed),
            effects: Vec::new(),
        })
    }

    /// This node's address.
    pub fn me(&self) -> &NodeAddr {
        &self.me
    }

    /// Where this node stands.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// This node's own entry (`list_self`).
    pub fn self_member(&self) -> Member {
        Member {
            addr: self.me.clone(),
            incarnation: self.incarnation,
            joined: self.joined,
            state: MemberState::Alive,
        }
    }

    /// The member list (`list_mem`): this node (when a member) and every alive or
    /// suspect member, in ring order. Failed and departed members are not listed.
    pub fn members(&self) -> Vec<Member> {
        let mut out: Vec<Member> = self.entries.values().filter_map(Update::listed).collect();
        if self.status == Status::Member {
            out.push(self.self_member());
        }
        let pos = |a: &NodeAddr| self.settings.ring.iter().position(|r| r == a);
        out.sort_by(|a, b| match (pos(&a.addr), pos(&b.addr)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.addr.cmp(&b.addr),
        });
        out
    }

    /// Buried addresses with the incarnation they were buried at (for diagnostics).
    pub fn tombstones(&self) -> Vec<Update> {
        self.entries
            .values()
            .filter(|u| u.state.is_tombstone())
            .cloned()
            .collect()
    }

    /// The peers this node monitors now.
    pub fn monitors(&self) -> &[NodeAddr] {
        &self.monitors
    }

    fn send_ping(&mut self, peer: &NodeAddr, seq: u64) {
        let updates = self.piggyback();
        self.send(
            peer.clone(),
            Msg::Ping {
                seq,
                incarnation: self.incarnation,
                joined: self.joined,
                updates,
            },
        );
    }

    fn report_unresponsive(&mut self, now: Millis, peer: &NodeAddr) {
        if self.status != Status::Member {
            return;
        }
        let Some(entry) = self.entries.get(peer).cloned() else {
            return;
        };
        if entry.state != UpdateState::Alive {
            return;
        }
        if !self.settings.suspicion {
            self.declare_failed(now, entry, true);
            self.refresh_monitors(now);
            return;
        }
        let suspect = Update {
            state: UpdateState::Suspect,
            ..entry
        };
        self.entries.insert(peer.clone(), suspect.clone());
        self.originated.insert((peer.clone(), suspect.incarnation));
        self.event(Event::Suspected {
            addr: peer.clone(),
            incarnation: suspect.incarnation,
            by_me: true,
        });
        self.set_suspect_timer(now, &suspect);
        self.enqueue_gossip(suspect.clone());
        self.broadcast(vec![suspect], false);
    }

    fn on_msg(&mut self, now: Millis, from: &NodeAddr, msg: Msg) {
        if *from == self.me {
            return;
        }
        match msg {
            Msg::Ping {
                seq,
                incarnation,
                joined,
                updates,
            } => self.on_ping(now, from, seq, incarnation, joined, updates),
            Msg::Ack {
                seq,
                incarnation,
                joined,
                updates,
            } => {
                self.effects.push(Effect::Acked {
                    peer: from.clone(),
                    seq,
                });
                if self.status == Status::Member {
                    self.apply_sender(now, from, incarnation, joined);
                    self.apply_all(now, from, updates);
                }
            }
            Msg::Updates(updates) | Msg::SyncReply { members: updates } => {
                if self.status == Status::Member {
                    self.apply_all(now, from, updates);
                }
            }
            Msg::JoinReply {
                incarnation,
                members,
            } => self.on_join_reply(now, from, incarnation, members),
            Msg::SyncRequest => {
                if self.status == Status::Member {
                    let mut members: Vec<Update> = self.entries.values().cloned().collect();
                    members.push(self.self_update(UpdateState::Alive));
                    self.send(from.clone(), Msg::SyncReply { members });
                }
            }
            Msg::IntroducerHello => {
                if self.status == Status::Member {
                    self.send(
                        from.clone(),
                        Msg::Announce {
                            incarnation: self.incarnation,
                            joined: self.joined,
                        },
                    );
                }
            }
            // The introducer's business.
            Msg::JoinRequest { .. } | Msg::Announce { .. } => {}
        }
        self.refresh_monitors(now);
    }

    fn on_timer(&mut self, now: Millis, timer: Timer) {
        match timer {
            Timer::SuspectTimeout { addr, incarnation } => {
                self.on_suspect_timeout(now, addr, incarnation)
            }
            Timer::JoinTimeout { attempt } => self.on_join_timeout(now, attempt),
            Timer::JoinRetry { attempt } => self.on_join_retry(now, attempt),
            Timer::Rejoin { epoch } => {
                if epoch == self.epoch && self.status == Status::Member {
                    self.on_rejoin_due(now);
                }
            }
            Timer::Announce { epoch } => {
                if epoch != self.epoch || self.status != Status::Member {
                    return;
                }
                if let Some(intro) = self.settings.introducer.clone() {
                    self.send(
                        intro,
                        Msg::Announce {
                            incarnation: self.incarnation,
                            joined: self.joined,
                        },
                    );
                }
                let at = now.saturating_add(self.settings.announce_interval);
                self.effects.push(Effect::SetTimer {
                    at,
                    timer: Timer::Announce { epoch },
                });
            }
            Timer::TombstoneProbe { epoch } => {
                if epoch != self.epoch || self.status != Status::Member {
                    return;
                }
                let buried = self
                    .entries
                    .values()
                    .filter(|u| u.state == UpdateState::Failed)
                    .choose(&mut self.rng)
                    .cloned();
                if let Some(tomb) = buried {
                    self.send(tomb.addr.clone(), Msg::Updates(vec![tomb]));
                }
                let at = now.saturating_add(self.settings.tombstone_probe_interval);
                self.effects.push(Effect::SetTimer {
                    at,
                    timer: Timer::TombstoneProbe { epoch },
                });
            }
        }
        self.refresh_monitors(now);
    }

    /// The suspect had `cleanup_time` to refute: if it is still suspect at the same
    /// incarnation, it is removed (a refutation raised the incarnation, so it stays).
    fn on_suspect_timeout(&mut self, now: Millis, addr: NodeAddr, incarnation: Incarnation) {
        if self.status != Status::Member {
            return;
        }
        let still = match self.entries.get(&addr) {
            Some(u) if u.state == UpdateState::Suspect && u.incarnation == incarnation => u.clone(),
            _ => return,
        };
        let mine = self.originated.remove(&(addr, incarnation));
        self.declare_failed(now, still, mine);
    }

    // ---- message handlers ----

    fn on_ping(
        &mut self,
        now: Millis,
        from: &NodeAddr,
        seq: u64,
        incarnation: Incarnation,
        joined: Incarnation,
        updates: Vec<Update>,
    ) {
        let updates = match self.status {
            Status::Member => {
                self.apply_sender(now, from, incarnation, joined);
                self.apply_all(now, from, updates);
                // After applying, so a refutation rides on this very ack.
                self.piggyback()
            }
            // A departed node keeps telling stale pingers that it left.
            Status::Left => vec![self.self_update(UpdateState::Left)],
            Status::Idle | Status::Joining => Vec::new(),
        };
        self.send(
            from.clone(),
            Msg::Ack {
                seq,
                incarnation: self.incarnation,
                joined: self.joined,
                updates,
            },
        );
    }

    pub(super) fn set_suspect_timer(&mut self, now: Millis, u: &Update) {
        self.effects.push(Effect::SetTimer {
            at: now.saturating_add(self.settings.cleanup_time),
            timer: Timer::SuspectTimeout {
                addr: u.addr.clone(),
                incarnation: u.incarnation,
            },
        });
    }

    pub(super) fn self_update(&self, state: UpdateState) -> Update {
        Update {
            addr: self.me.clone(),
            incarnation: self.incarnation,
            joined: self.joined,
            state,
        }
    }

    pub(super) fn is_live(&self, addr: &NodeAddr) -> bool {
        self.entries
            .get(addr)
            .is_some_and(|u| !u.state.is_tombstone())
    }

    pub(super) fn live_count(&self) -> usize {
        self.entries
            .values()
            .filter(|u| !u.state.is_tombstone())
            .count()
    }

    pub(super) fn introducer_name(&self) -> String {
        self.settings
            .introducer
            .as_ref()
            .map_or_else(|| "(none)".to_string(), |a| a.to_string())
    }

    pub(super) fn send(&mut self, to: NodeAddr, msg: Msg) {
        self.effects.push(Effect::Send { to, msg });
    }

    pub(super) fn event(&mut self, e: Event) {
        self.effects.push(Effect::Event(e));
    }
}

#[cfg(test)]
#[path = "membership_tests.rs"]
mod tests;
