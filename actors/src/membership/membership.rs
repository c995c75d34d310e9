//! Membership core: the member list, incarnations, suspicion, refutation, leave, join
//! and dissemination of the ring failure detector, as a pure state machine.
//!
//! No socket, no clock, no actix: the MembershipActor calls [`Membership::handle_msg`],
//! [`Membership::handle_timer`], [`Membership::report_unresponsive`] (from a prober's
//! verdict) and [`Membership::send_ping`] with its `now`, then drains [`Effect`]s
//! (messages to send, timers to set, acks to route to probers, events to log). The
//! shape follows foca's runtime: input only through handlers, output accumulated during
//! one call and executed by the caller.
//!
//! Identity rules (SWIM plus foca's "a dead identity stays dead"):
//! - a member is `(addr, incarnation)`; only the member raises its own incarnation;
//! - a *life* starts when a node (re)joins: `joined` is the incarnation it joined with;
//! - live updates are ordered by incarnation: alive(i) beats suspect(j) iff i > j,
//!   suspect(i) beats alive(j) iff i >= j;
//! - failed/left(k) ends every life that started at or before k, whatever incarnation
//!   it reached; only a *new* life (joined > k) brings the address back. A node that
//!   hears its current life was declared failed therefore rejoins with a fresh
//!   incarnation instead of refuting ([`MemberEvent::Rejoin`]).
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
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::types::{Incarnation, Millis, NodeAddr};

/// Updates processed from one message at most: a hostile or corrupt SyncReply cannot
/// make one call arbitrarily long.
pub const MAX_UPDATES_PER_MSG: usize = 4096;
/// Gossip entries kept for piggybacking at most; the least retransmitted survive.
const MAX_GOSSIP: usize = 1024;
/// Rate-limit table size before old entries are pruned.
const MAX_TOLD: usize = 1024;

/// Errors of the membership layer. When one is returned, no state changed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MembershipError {
    /// A setting is out of range.
    #[error("invalid membership setting `{key}`: {reason}")]
    InvalidSetting {
        key: &'static str,
        reason: &'static str,
    },
    /// `join` needs an introducer address.
    #[error("no introducer is configured")]
    NoIntroducer,
    /// `join` while already joining or a member.
    #[error("already a member or joining")]
    AlreadyJoined,
    /// `leave` while not a member.
    #[error("not a member of the cluster")]
    NotMember,
}

/// Settings of the membership core (from the config; times in ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Every configured node in ring order; fixes each address's ring position.
    /// Members outside it are placed after it, ordered by address.
    pub ring: Vec<NodeAddr>,
    /// Number of peers each node monitors.
    pub m: usize,
    /// Explicit topology (node -> monitored nodes); overrides the computed ring sets
    /// for the nodes it names. Dead nodes are skipped.
    pub topology: Option<BTreeMap<NodeAddr, Vec<NodeAddr>>>,
    /// Probe period; also paces the rate limits of repair messages.
    pub ping_duration: Millis,
    /// How long a suspect has to refute before it is declared failed.
    pub cleanup_time: Millis,
    /// With `false`, an unanswered probe removes the peer at once (classic detector,
    /// kept to measure what suspicion buys).
    pub suspicion: bool,
    /// Where joins go; also told about every broadcast update and announced to.
    pub introducer: Option<NodeAddr>,
    /// Lambda: each update is piggybacked about `retransmit_mult * log2(n + 1)` times.
    pub retransmit_mult: u32,
    /// Updates piggybacked on one ping or ack at most.
    pub max_piggyback: usize,
    /// How often a member tells the introducer it is alive (cheap: one small message).
    pub announce_interval: Millis,
    /// How often a member sends one buried address its tombstone (partition healing).
    pub tombstone_probe_interval: Millis,
    /// How long a join waits for the introducer.
    pub join_timeout: Millis,
    /// Delay before a rejoin retries an unanswered introducer.
    pub join_retry: Millis,
}

impl Settings {
    /// Settings with the detector's timings and sensible defaults for the rest.
    pub fn new(
        ring: Vec<NodeAddr>,
        m: usize,
        ping_duration: Millis,
        cleanup_time: Millis,
        introducer: Option<NodeAddr>,
    ) -> Self {
        Settings {
            ring,
            m,
            topology: None,
            ping_duration,
            cleanup_time,
            suspicion: true,
            introducer,
            retransmit_mult: 3,
            max_piggyback: 6,
            announce_interval: ping_duration.saturating_mul(4),
            tombstone_probe_interval: ping_duration.saturating_mul(2),
            join_timeout: ping_duration.saturating_mul(2).max(1000),
            join_retry: ping_duration.saturating_mul(2),
        }
    }

    /// Checks every value once; names the offending key.
    pub fn validate(&self) -> Result<(), MembershipError> {
        let bad = |key, reason| Err(MembershipError::InvalidSetting { key, reason });
        if self.m == 0 {
            return bad("m", "must be at least 1");
        }
        if self.ping_duration == 0 {
            return bad("ping_duration", "must be positive");
        }
        if self.suspicion && self.cleanup_time == 0 {
            return bad("cleanup_time", "must be positive");
        }
        if self.retransmit_mult == 0 {
            return bad("retransmit_mult", "must be at least 1");
        }
        if self.announce_interval == 0 {
            return bad("announce_interval", "must be positive");
        }
        if self.tombstone_probe_interval == 0 {
            return bad("tombstone_probe_interval", "must be positive");
        }
        if self.join_timeout == 0 {
            return bad("join_timeout", "must be positive");
        }
        if self.join_retry == 0 {
            return bad("join_retry", "must be positive");
        }
        Ok(())
    }
}

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

/// Timers the core asks for; hand them back through [`Membership::handle_timer`].
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
}

/// What happened, for logs and the console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
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
}

/// Output of the core, drained by the caller in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send `msg` to `to`.
    Send { to: NodeAddr, msg: Msg },
    /// Call `handle_timer(timer)` at `at` (caller's clock).
    SetTimer { at: Millis, timer: Timer },
    /// `peer` acked probe `seq`: route to that peer's prober.
    Acked { peer: NodeAddr, seq: u64 },
    /// Something to log or show.
    Event(MemberEvent),
}

/// The membership state machine of one node.
#[derive(Debug)]
pub struct Membership {
    me: NodeAddr,
    settings: Settings,
    status: Status,
    incarnation: Incarnation,
    joined: Incarnation,
    /// Everyone but this node: live members and tombstones.
    entries: BTreeMap<NodeAddr, Update>,
    /// Updates waiting to be piggybacked, with their remaining transmissions.
    gossip: Vec<(Update, u32)>,
    monitors: Vec<NodeAddr>,
    /// Suspicions this node raised: it broadcasts their failure, others only gossip it.
    originated: BTreeSet<(NodeAddr, Incarnation)>,
    join_attempt: u64,
    /// A rejoin is waiting for the introducer (the node keeps working meanwhile).
    rejoin_pending: bool,
    /// Bumped on every join/leave so periodic timers of an earlier life die.
    epoch: u64,
    /// Last time a repair was sent, per (recipient, subject): repairs are rate-limited.
    told: BTreeMap<(NodeAddr, NodeAddr), Millis>,
    rng: ChaCha8Rng,
    effects: Vec<Effect>,
}

impl Membership {
    /// A core for node `me`, not yet joined. `seed` drives its few random choices.
    pub fn new(me: NodeAddr, settings: Settings, seed: u64) -> Result<Self, MembershipError> {
        settings.validate()?;
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
        let mut out: Vec<Member> = self
            .entries
            .values()
            .filter_map(|u| {
                let state = match u.state {
                    UpdateState::Alive => MemberState::Alive,
                    UpdateState::Suspect => MemberState::Suspect,
                    UpdateState::Failed | UpdateState::Left => return None,
                };
                Some(Member {
                    addr: u.addr.clone(),
                    incarnation: u.incarnation,
                    joined: u.joined,
                    state,
                })
            })
            .collect();
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

    /// Effects produced since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Join through the introducer. `incarnation` is the caller's pick (its start time
    /// in ms, say); the core never goes below one more than any incarnation it used.
    /// Without an answer within `join_timeout` a [`MemberEvent::JoinFailed`] follows.
    pub fn join(&mut self, now: Millis, incarnation: Incarnation) -> Result<(), MembershipError> {
        if matches!(self.status, Status::Joining | Status::Member) {
            return Err(MembershipError::AlreadyJoined);
        }
        if self.settings.introducer.is_none() {
            return Err(MembershipError::NoIntroducer);
        }
        let inc = incarnation.max(self.incarnation.saturating_add(1));
        self.incarnation = inc;
        self.joined = inc;
        self.status = Status::Joining;
        self.entries.clear();
        self.gossip.clear();
        self.originated.clear();
        self.rejoin_pending = false;
        self.epoch += 1;
        self.request_join(now);
        Ok(())
    }

    /// Leave voluntarily: spread at once, never counted as a failure.
    pub fn leave(&mut self, now: Millis) -> Result<(), MembershipError> {
        if self.status != Status::Member {
            return Err(MembershipError::NotMember);
        }
        let left = self.self_update(UpdateState::Left);
        self.broadcast(vec![left], true);
        self.status = Status::Left;
        self.entries.clear();
        self.gossip.clear();
        self.originated.clear();
        self.rejoin_pending = false;
        self.join_attempt += 1;
        self.epoch += 1;
        self.event(MemberEvent::SelfLeft {
            incarnation: self.incarnation,
        });
        self.refresh_monitors(now);
        Ok(())
    }

    /// Build and send the Ping numbered `seq` to `peer` (a prober asked for it).
    pub fn send_ping(&mut self, _now: Millis, peer: &NodeAddr, seq: u64) {
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

    /// A prober's verdict: `peer` did not answer a probe in time.
    pub fn report_unresponsive(&mut self, now: Millis, peer: &NodeAddr) {
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
        self.event(MemberEvent::Suspected {
            addr: peer.clone(),
            incarnation: suspect.incarnation,
            by_me: true,
        });
        self.set_suspect_timer(now, &suspect);
        self.enqueue_gossip(suspect.clone());
        self.broadcast(vec![suspect], false);
    }

    /// A message from `from` (the sender's node address).
    pub fn handle_msg(&mut self, now: Millis, from: &NodeAddr, msg: Msg) {
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

    /// A timer this core set has fired.
    pub fn handle_timer(&mut self, now: Millis, timer: Timer) {
        match timer {
            Timer::SuspectTimeout { addr, incarnation } => {
                if self.status != Status::Member {
                    return;
                }
                let still = match self.entries.get(&addr) {
                    Some(u) if u.state == UpdateState::Suspect && u.incarnation == incarnation => {
                        u.clone()
                    }
                    _ => return,
                };
                let mine = self.originated.remove(&(addr, incarnation));
                self.declare_failed(now, still, mine);
            }
            Timer::JoinTimeout { attempt } => {
                if attempt != self.join_attempt {
                    return;
                }
                let intro = self.introducer_name();
                let reason = format!(
                    "introducer {intro} did not answer within {} ms",
                    self.settings.join_timeout
                );
                if self.status == Status::Joining {
                    self.status = Status::Idle;
                    self.event(MemberEvent::JoinFailed { reason });
                } else if self.status == Status::Member && self.rejoin_pending {
                    self.event(MemberEvent::JoinFailed {
                        reason: format!("{reason}; rejoin retries, the node keeps running"),
                    });
                    self.effects.push(Effect::SetTimer {
                        at: now.saturating_add(self.settings.join_retry),
                        timer: Timer::JoinRetry { attempt },
                    });
                }
            }
            Timer::JoinRetry { attempt } => {
                if attempt == self.join_attempt
                    && self.status == Status::Member
                    && self.rejoin_pending
                {
                    self.request_join(now);
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

    fn on_join_reply(
        &mut self,
        now: Millis,
        from: &NodeAddr,
        incarnation: Incarnation,
        members: Vec<Update>,
    ) {
        // Only the configured introducer admits; anything else is a confused peer.
        if self.settings.introducer.as_ref() != Some(from) {
            return;
        }
        let first = match self.status {
            Status::Joining => true,
            Status::Member if self.rejoin_pending => false,
            _ => return,
        };
        // Invalidate the pending JoinTimeout.
        self.join_attempt += 1;
        self.rejoin_pending = false;
        if incarnation > self.incarnation {
            // The introducer buried a life at or above our pick: start above it.
            self.incarnation = incarnation;
            self.joined = incarnation;
        }
        if first {
            self.status = Status::Member;
            self.epoch += 1;
            self.schedule_periodic(now);
        }
        self.apply_all(now, from, members);
        let me = self.self_update(UpdateState::Alive);
        self.enqueue_gossip(me.clone());
        self.broadcast(vec![me], false);
        // The introducer's list has no tombstones or suspicions: fetch one member's view.
        let peer = self
            .entries
            .values()
            .filter(|u| !u.state.is_tombstone())
            .choose(&mut self.rng)
            .map(|u| u.addr.clone());
        if let Some(peer) = peer {
            self.send(peer, Msg::SyncRequest);
        }
        self.event(MemberEvent::SelfJoined {
            incarnation: self.incarnation,
            members: self.live_count() + 1,
        });
    }

    // ---- applying updates ----

    fn apply_sender(
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

    fn apply_all(&mut self, now: Millis, from: &NodeAddr, updates: Vec<Update>) {
        for u in updates.into_iter().take(MAX_UPDATES_PER_MSG) {
            self.apply(now, Some(from), u);
        }
    }

    fn apply(&mut self, now: Millis, from: Option<&NodeAddr>, u: Update) {
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
                    self.event(MemberEvent::Joined {
                        addr: u.addr.clone(),
                        incarnation: u.incarnation,
                    });
                } else if prev
                    .as_ref()
                    .is_some_and(|p| p.state == UpdateState::Suspect)
                {
                    self.event(MemberEvent::Refuted {
                        addr: u.addr.clone(),
                        incarnation: u.incarnation,
                    });
                }
            }
            UpdateState::Suspect => {
                if !same_life {
                    self.event(MemberEvent::Joined {
                        addr: u.addr.clone(),
                        incarnation: u.incarnation,
                    });
                }
                self.event(MemberEvent::Suspected {
                    addr: u.addr.clone(),
                    incarnation: u.incarnation,
                    by_me: false,
                });
                self.set_suspect_timer(now, &u);
            }
            UpdateState::Failed => {
                if was_live {
                    self.event(MemberEvent::Failed {
                        addr: u.addr.clone(),
                        incarnation: u.incarnation,
                    });
                }
            }
            UpdateState::Left => {
                if was_live {
                    self.event(MemberEvent::Left {
                        addr: u.addr.clone(),
                        incarnation: u.incarnation,
                    });
                }
            }
        }
        self.enqueue_gossip(u);
    }

    fn apply_about_self(&mut self, now: Millis, from: Option<&NodeAddr>, u: Update) {
        if self.status != Status::Member {
            return;
        }
        match u.state {
            // Only this node speaks for its own liveness.
            UpdateState::Alive => {}
            UpdateState::Suspect => {
                if u.incarnation >= self.incarnation {
                    self.incarnation = u.incarnation.saturating_add(1);
                    let me = self.self_update(UpdateState::Alive);
                    self.event(MemberEvent::Refuted {
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
                    let new = self.incarnation.max(u.incarnation).saturating_add(1);
                    self.rejoin(now, new, from.cloned());
                } else if let Some(f) = from {
                    // An earlier life of ours was buried; this one is fine.
                    let f = f.clone();
                    let me = self.self_update(UpdateState::Alive);
                    self.repair(now, f, me);
                }
            }
        }
    }

    /// This life was declared failed: start a new one (fresh incarnation), announce it
    /// to everyone we know and to whoever told us, and re-register with the introducer.
    fn rejoin(&mut self, now: Millis, new_incarnation: Incarnation, informer: Option<NodeAddr>) {
        let old = self.incarnation;
        self.incarnation = new_incarnation;
        self.joined = new_incarnation;
        self.event(MemberEvent::Rejoin {
            old_incarnation: old,
            new_incarnation,
        });
        let me = self.self_update(UpdateState::Alive);
        self.enqueue_gossip(me.clone());
        self.broadcast(vec![me.clone()], false);
        if let Some(f) = informer {
            if !self.is_live(&f) && Some(&f) != self.settings.introducer.as_ref() {
                self.send(f.clone(), Msg::Updates(vec![me]));
            }
            // Its view is the one that buried us: adopt what it knows.
            self.send(f, Msg::SyncRequest);
        }
        if self.settings.introducer.is_some() {
            self.rejoin_pending = true;
            self.request_join(now);
        }
    }

    fn declare_failed(&mut self, _now: Millis, entry: Update, originator: bool) {
        let failed = Update {
            state: UpdateState::Failed,
            ..entry
        };
        self.entries.insert(failed.addr.clone(), failed.clone());
        self.event(MemberEvent::Failed {
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

    // ---- dissemination ----

    fn broadcast(&mut self, updates: Vec<Update>, to_introducer: bool) {
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

    fn enqueue_gossip(&mut self, u: Update) {
        let limit = self.retransmit_limit();
        self.gossip.retain(|(g, _)| g.addr != u.addr);
        self.gossip.push((u, limit));
        if self.gossip.len() > MAX_GOSSIP {
            self.gossip.sort_by_key(|g| std::cmp::Reverse(g.1));
            self.gossip.truncate(MAX_GOSSIP);
        }
    }

    /// Updates for one outgoing ping/ack: the least retransmitted first.
    fn piggyback(&mut self) -> Vec<Update> {
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

    fn retransmit_limit(&self) -> u32 {
        let n = self.live_count() as u64 + 2;
        // ceil(log2(n)) without floats.
        let log = 64 - (n - 1).leading_zeros();
        self.settings.retransmit_mult.saturating_mul(log.max(1))
    }

    /// Send `what` to `to` unless the same repair went there within one ping period.
    fn repair(&mut self, now: Millis, to: NodeAddr, what: Update) {
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

    // ---- helpers ----

    fn request_join(&mut self, now: Millis) {
        let Some(intro) = self.settings.introducer.clone() else {
            return;
        };
        self.join_attempt += 1;
        self.send(
            intro,
            Msg::JoinRequest {
                incarnation: self.incarnation,
            },
        );
        self.effects.push(Effect::SetTimer {
            at: now.saturating_add(self.settings.join_timeout),
            timer: Timer::JoinTimeout {
                attempt: self.join_attempt,
            },
        });
    }

    fn schedule_periodic(&mut self, now: Millis) {
        let epoch = self.epoch;
        // Random phases so that members do not all announce in the same instant.
        if self.settings.introducer.is_some() {
            let a = self.settings.announce_interval;
            let at = now.saturating_add(self.rng.gen_range(a / 2..=a));
            self.effects.push(Effect::SetTimer {
                at,
                timer: Timer::Announce { epoch },
            });
        }
        let t = self.settings.tombstone_probe_interval;
        let at = now.saturating_add(self.rng.gen_range(t / 2..=t));
        self.effects.push(Effect::SetTimer {
            at,
            timer: Timer::TombstoneProbe { epoch },
        });
    }

    fn set_suspect_timer(&mut self, now: Millis, u: &Update) {
        self.effects.push(Effect::SetTimer {
            at: now.saturating_add(self.settings.cleanup_time),
            timer: Timer::SuspectTimeout {
                addr: u.addr.clone(),
                incarnation: u.incarnation,
            },
        });
    }

    fn refresh_monitors(&mut self, _now: Millis) {
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
            self.event(MemberEvent::MonitorsChanged(new));
        }
    }

    fn self_update(&self, state: UpdateState) -> Update {
        Update {
            addr: self.me.clone(),
            incarnation: self.incarnation,
            joined: self.joined,
            state,
        }
    }

    fn is_live(&self, addr: &NodeAddr) -> bool {
        self.entries
            .get(addr)
            .is_some_and(|u| !u.state.is_tombstone())
    }

    fn live_count(&self) -> usize {
        self.entries
            .values()
            .filter(|u| !u.state.is_tombstone())
            .count()
    }

    fn introducer_name(&self) -> String {
        self.settings
            .introducer
            .as_ref()
            .map_or_else(|| "(none)".to_string(), |a| a.to_string())
    }

    fn send(&mut self, to: NodeAddr, msg: Msg) {
        self.effects.push(Effect::Send { to, msg });
    }

    fn event(&mut self, e: MemberEvent) {
        self.effects.push(Effect::Event(e));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: usize) -> NodeAddr {
        NodeAddr(format!("127.0.0.1:{}", 8000 + i))
    }

    fn ring(n: usize) -> Vec<NodeAddr> {
        (1..=n).map(h).collect()
    }

    fn up(addr: &str, inc: u64, joined: u64, state: UpdateState) -> Update {
        Update {
            addr: NodeAddr::from(addr),
            incarnation: inc,
            joined,
            state,
        }
    }

    #[test]
    fn seed_topology_is_reproduced() {
        let r = ring(10);
        let seed: [(usize, [usize; 3]); 10] = [
            (1, [2, 10, 5]),
            (2, [3, 1, 6]),
            (3, [4, 2, 7]),
            (4, [5, 3, 8]),
            (5, [6, 4, 9]),
            (6, [7, 5, 10]),
            (7, [8, 6, 1]),
            (8, [9, 7, 2]),
            (9, [10, 8, 3]),
            (10, [1, 9, 4]),
        ];
        for (me, expect) in seed {
            let got = ring_monitors(&r, &h(me), 3);
            let expect: Vec<NodeAddr> = expect.iter().map(|&i| h(i)).collect();
            assert_eq!(got, expect, "H{me}");
        }
    }

    #[test]
    fn monitor_sets_are_distinct_and_every_node_has_min_m_watchers() {
        for n in 1..=23 {
            for m in 1..=6 {
                let r = ring(n);
                let mut watchers = vec![0usize; n];
                for (i, me) in r.iter().enumerate() {
                    let mons = ring_monitors(&r, me, m);
                    assert_eq!(mons.len(), m.min(n.saturating_sub(1)), "n={n} m={m}");
                    let set: BTreeSet<_> = mons.iter().collect();
                    assert_eq!(set.len(), mons.len(), "duplicates n={n} m={m}");
                    assert!(!mons.contains(me), "self-monitoring n={n} m={m} i={i}");
                    for x in &mons {
                        let j = r.iter().position(|a| a == x).unwrap();
                        watchers[j] += 1;
                    }
                }
                for (j, w) in watchers.iter().enumerate() {
                    assert_eq!(*w, m.min(n.saturating_sub(1)), "n={n} m={m} node {j}");
                }
            }
        }
    }

    #[test]
    fn m_failures_never_leave_a_dead_node_unwatched() {
        // Exhaustive over every set of 3 dead nodes on a 10-ring.
        let r = ring(10);
        for a in 0..10 {
            for b in a + 1..10 {
                for c in b + 1..10 {
                    let dead = [&r[a], &r[b], &r[c]];
                    for d in dead {
                        let watched = r
                            .iter()
                            .filter(|w| !dead.contains(w))
                            .any(|w| ring_monitors(&r, w, 3).contains(d));
                        assert!(watched, "{d} unwatched when {a},{b},{c} die");
                    }
                }
            }
        }
    }

    #[test]
    fn explicit_topology_overrides_and_skips_dead() {
        let r = ring(5);
        let mut s = Settings::new(r.clone(), 3, 500, 1500, None);
        let mut topo = BTreeMap::new();
        topo.insert(h(1), vec![h(3), h(4), h(1), h(3)]);
        s.topology = Some(topo);
        let live: Vec<NodeAddr> = vec![h(1), h(2), h(3), h(5)];
        assert_eq!(compute_monitors(&s, &h(1), &live), vec![h(3)]);
        // A node the table does not name falls back to the ring.
        assert_eq!(
            compute_monitors(&s, &h(2), &live),
            ring_monitors(&[h(1), h(2), h(3), h(5)], &h(2), 3)
        );
    }

    #[test]
    fn ordering_rules_follow_swim() {
        use UpdateState::*;
        let a = |i| up("x:1", i, 1, Alive);
        let s = |i| up("x:1", i, 1, Suspect);
        // alive(i) overrides suspect(j) iff i > j
        assert!(supersedes(&a(3), &s(2)));
        assert!(!supersedes(&a(2), &s(2)));
        // suspect(i) overrides alive(j) iff i >= j
        assert!(supersedes(&s(2), &a(2)));
        assert!(!supersedes(&s(1), &a(2)));
        // same state: only a higher incarnation
        assert!(supersedes(&a(3), &a(2)));
        assert!(!supersedes(&a(2), &a(2)));
        assert!(!supersedes(&s(2), &s(2)));
    }

    #[test]
    fn tombstones_bury_a_whole_life() {
        use UpdateState::*;
        let failed = up("x:1", 5, 1, Failed);
        // Failure at 5 ends the life that joined at 1, even after it refuted to 7.
        assert!(supersedes(&failed, &up("x:1", 7, 1, Alive)));
        // A failure from an older life does not touch a newer one.
        assert!(!supersedes(&failed, &up("x:1", 9, 6, Alive)));
        // The buried life cannot come back, whatever incarnation it claims...
        assert!(!supersedes(&up("x:1", 6, 1, Alive), &failed));
        assert!(!supersedes(&up("x:1", 6, 5, Suspect), &failed));
        // ...a new life (joined after the burial) can.
        assert!(supersedes(&up("x:1", 6, 6, Alive), &failed));
        // Between tombstones the later burial wins; equal is no change.
        assert!(supersedes(&up("x:1", 6, 6, Left), &failed));
        assert!(!supersedes(&up("x:1", 5, 1, Left), &failed));
    }

    #[test]
    fn settings_are_validated_by_key() {
        let mut s = Settings::new(ring(3), 0, 500, 1500, None);
        assert_eq!(
            Membership::new(h(1), s.clone(), 1).unwrap_err(),
            MembershipError::InvalidSetting {
                key: "m",
                reason: "must be at least 1"
            }
        );
        s.m = 3;
        s.cleanup_time = 0;
        assert!(matches!(
            Membership::new(h(1), s.clone(), 1),
            Err(MembershipError::InvalidSetting {
                key: "cleanup_time",
                ..
            })
        ));
        s.suspicion = false;
        assert!(Membership::new(h(1), s, 1).is_ok());
    }

    #[test]
    fn join_needs_an_introducer_and_fails_clearly_without_answer() {
        let s = Settings::new(ring(3), 3, 500, 1500, None);
        let mut c = Membership::new(h(1), s, 1).unwrap();
        assert_eq!(c.join(0, 10), Err(MembershipError::NoIntroducer));
        assert_eq!(c.leave(0), Err(MembershipError::NotMember));

        let intro = NodeAddr::from("127.0.0.1:8888");
        let s = Settings::new(ring(3), 3, 500, 1500, Some(intro.clone()));
        let mut c = Membership::new(h(1), s, 1).unwrap();
        c.join(0, 10).unwrap();
        assert_eq!(c.join(1, 10), Err(MembershipError::AlreadyJoined));
        let fx = c.take_effects();
        assert!(fx.contains(&Effect::Send {
            to: intro,
            msg: Msg::JoinRequest { incarnation: 10 }
        }));
        let timer = fx
            .iter()
            .find_map(|e| match e {
                Effect::SetTimer { at, timer } => Some((*at, timer.clone())),
                _ => None,
            })
            .unwrap();
        c.handle_timer(timer.0, timer.1);
        let fx = c.take_effects();
        assert!(fx.iter().any(|e| matches!(
            e,
            Effect::Event(MemberEvent::JoinFailed { reason }) if reason.contains("8888")
        )));
        assert_eq!(c.status(), Status::Idle);
        // A later join uses a higher incarnation even if the caller passes an old one.
        c.join(2000, 3).unwrap();
        assert_eq!(c.self_member().incarnation, 11);
    }

    fn member_of(n: usize) -> Membership {
        let intro = NodeAddr::from("127.0.0.1:8888");
        let s = Settings::new(ring(n), 3, 500, 1500, Some(intro.clone()));
        let mut c = Membership::new(h(1), s, 1).unwrap();
        c.join(0, 100).unwrap();
        let members = (2..=n)
            .map(|i| Update {
                addr: h(i),
                incarnation: 10,
                joined: 10,
                state: UpdateState::Alive,
            })
            .collect();
        c.handle_msg(
            1,
            &intro,
            Msg::JoinReply {
                incarnation: 100,
                members,
            },
        );
        c.take_effects();
        c
    }

    #[test]
    fn suspicion_of_self_is_refuted_with_higher_incarnation() {
        let mut c = member_of(4);
        c.handle_msg(
            5,
            &h(2),
            Msg::Updates(vec![Update {
                addr: h(1),
                incarnation: 100,
                joined: 100,
                state: UpdateState::Suspect,
            }]),
        );
        assert_eq!(c.self_member().incarnation, 101);
        let fx = c.take_effects();
        let alive_sent = fx
            .iter()
            .filter(|e| match e {
                Effect::Send {
                    msg: Msg::Updates(u),
                    ..
                } => u.iter().any(|u| u.addr == h(1) && u.incarnation == 101),
                _ => false,
            })
            .count();
        assert_eq!(alive_sent, 3, "refutation broadcast to every member");
    }

    #[test]
    fn own_failure_triggers_rejoin_but_an_older_life_failure_does_not() {
        let mut c = member_of(4);
        // A failure of an earlier life (joined at 100 now) is answered, not obeyed.
        c.handle_msg(
            5,
            &h(2),
            Msg::Updates(vec![up("127.0.0.1:8001", 50, 40, UpdateState::Failed)]),
        );
        assert_eq!(c.self_member().incarnation, 100);
        assert!(c.take_effects().iter().any(|e| matches!(
            e,
            Effect::Send { to, msg: Msg::Updates(u) } if *to == h(2) && u[0].state == UpdateState::Alive
        )));
        c.handle_msg(
            6,
            &h(2),
            Msg::Updates(vec![up("127.0.0.1:8001", 100, 100, UpdateState::Failed)]),
        );
        let fx = c.take_effects();
        assert!(fx.contains(&Effect::Event(MemberEvent::Rejoin {
            old_incarnation: 100,
            new_incarnation: 101
        })));
        assert!(fx.iter().any(|e| matches!(
            e,
            Effect::Send {
                msg: Msg::JoinRequest { incarnation: 101 },
                ..
            }
        )));
        assert_eq!(c.self_member().joined, 101);
    }

    #[test]
    fn stale_alive_for_buried_member_is_answered_with_tombstone() {
        let mut c = member_of(4);
        c.handle_msg(
            5,
            &h(2),
            Msg::Updates(vec![up("127.0.0.1:8003", 10, 10, UpdateState::Failed)]),
        );
        assert!(!c.members().iter().any(|m| m.addr == h(3)));
        c.take_effects();
        // h(4) still gossips the old life of h(3): it is not resurrected, h(4) is told.
        c.handle_msg(
            6,
            &h(4),
            Msg::Updates(vec![up("127.0.0.1:8003", 11, 10, UpdateState::Alive)]),
        );
        assert!(!c.members().iter().any(|m| m.addr == h(3)));
        assert!(c.take_effects().iter().any(|e| matches!(
            e,
            Effect::Send { to, msg: Msg::Updates(u) }
                if *to == h(4) && u[0].addr == h(3) && u[0].state == UpdateState::Failed
        )));
        // A new life is admitted.
        c.handle_msg(
            7,
            &h(4),
            Msg::Updates(vec![up("127.0.0.1:8003", 12, 12, UpdateState::Alive)]),
        );
        assert!(c.members().iter().any(|m| m.addr == h(3) && m.joined == 12));
    }

    #[test]
    fn piggyback_is_bounded_and_retransmissions_run_out() {
        let mut c = member_of(10);
        // Drain what the join itself queued.
        for seq in 0..100 {
            c.send_ping(1, &h(2), seq);
        }
        c.take_effects();
        for i in 2..=9 {
            c.handle_msg(
                5,
                &h(10),
                Msg::Updates(vec![up(
                    &format!("127.0.0.1:{}", 8000 + i),
                    11,
                    10,
                    UpdateState::Alive,
                )]),
            );
        }
        c.take_effects();
        let mut total = 0;
        for seq in 100..300 {
            c.send_ping(10, &h(2), seq);
            for e in c.take_effects() {
                if let Effect::Send {
                    msg: Msg::Ping { updates, .. },
                    ..
                } = e
                {
                    assert!(updates.len() <= 6);
                    total += updates.len();
                }
            }
        }
        // 8 updates, each sent retransmit_mult * ceil(log2(9 + 2)) = 12 times.
        assert_eq!(total, 8 * 12);
    }
}
