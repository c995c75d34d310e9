//! Introducer core: admits joiners, hands them the member list, and relearns the
//! membership after a restart. A pure state machine like the membership core: its
//! shell hands it [`Input`]s through [`Machine::handle`] and executes the [`Effect`]s.
//!
//! The introducer is not a member (nobody pings it) and holds no authority: members
//! keep working while it is down. Its view is kept cheaply: members copy every
//! broadcast update to it, announce themselves every `announce_interval` (one small
//! message), and answer the [`Msg::IntroducerHello`] it sends to every configured node
//! when it starts, so a restarted introducer knows the live members after one round trip.
//! Entries not heard from within `member_ttl` are forgotten.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::machine::Machine;
use crate::membership::plausible::{incarnation_ceiling, Reports};
use crate::membership::{supersedes, Member, Msg, Update, UpdateState, MAX_INCARNATION_AHEAD};
use crate::types::{Incarnation, Millis, NodeAddr};

/// Errors of the introducer core; nothing is created when one is returned.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IntroducerError {
    /// A setting is out of range.
    #[error("invalid introducer setting `{key}`: must be positive")]
    InvalidSetting { key: &'static str },
}

/// Settings of the introducer (times in ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntroducerSettings {
    /// Every configured node: told to announce itself when the introducer starts.
    pub ring: Vec<NodeAddr>,
    /// A member not heard from for this long is forgotten (a few announce intervals).
    pub member_ttl: Millis,
    /// How often forgotten members are swept.
    pub reap_interval: Millis,
    /// Wall-clock ms at which the core's `now` read 0 (see the membership settings).
    pub wall_origin: u64,
    /// News with an incarnation above wall clock + this is dropped.
    pub max_incarnation_ahead: Millis,
    /// One address is admitted at most `admit_limit` times per `admit_window`: a node
    /// caught in a rejoin loop cannot make the introducer spin, and further requests
    /// in the window go unanswered (the joiner's timeout and backoff take over).
    pub admit_limit: u32,
    pub admit_window: Millis,
}

impl IntroducerSettings {
    /// Settings with the default plausibility bound and admission limit
    /// ([`ADMIT_LIMIT`] per [`ADMIT_WINDOW`]).
    pub fn new(ring: Vec<NodeAddr>, member_ttl: Millis, reap_interval: Millis) -> Self {
        IntroducerSettings {
            ring,
            member_ttl,
            reap_interval,
            wall_origin: 0,
            max_incarnation_ahead: MAX_INCARNATION_AHEAD,
            admit_limit: ADMIT_LIMIT,
            admit_window: ADMIT_WINDOW,
        }
    }
}

/// Default admissions of one address per [`ADMIT_WINDOW`]: a restart or two plus a few
/// legitimate rejoins fit; a loop does not.
pub const ADMIT_LIMIT: u32 = 10;
/// Default admission window (ms).
pub const ADMIT_WINDOW: Millis = 60_000;

/// Everything that can happen to the introducer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// It (re)started: ask every configured node to announce itself, start sweeping.
    Start,
    /// A message from `from` (the sender's node address).
    Msg { from: NodeAddr, msg: Msg },
    /// A timer it set is due.
    Timer(Timer),
}

/// The introducer's only timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Sweep members not heard from within `member_ttl`.
    Reap,
}

/// What happened, for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A joiner was admitted with `incarnation`.
    Admitted {
        addr: NodeAddr,
        incarnation: Incarnation,
    },
    /// A member it did not list made itself known (after a restart, typically).
    Learned {
        addr: NodeAddr,
        incarnation: Incarnation,
    },
    /// A member was reported failed or departed.
    Removed { addr: NodeAddr, state: UpdateState },
    /// A member went silent for `member_ttl` and was dropped.
    Forgot { addr: NodeAddr },
    /// News from `from` with an incarnation beyond the plausible bound was dropped
    /// (once per sender per window; `suppressed` counts the unreported ones).
    Implausible {
        from: NodeAddr,
        incarnation: Incarnation,
        suppressed: u64,
    },
    /// `addr` reached `admit_limit` admissions in this window; its join requests are
    /// ignored until the window ends (reported once per window).
    Throttled { addr: NodeAddr },
}

/// What the introducer's shell must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send `msg` to `to`.
    Send { to: NodeAddr, msg: Msg },
    /// Hand `timer` back as [`Input::Timer`] at `at` (caller's clock).
    SetTimer { at: Millis, timer: Timer },
    /// For the log.
    Event(Event),
}

/// The introducer state machine.
#[derive(Debug)]
pub struct Introducer {
    settings: IntroducerSettings,
    /// Known members (live and buried), with when each was last heard of.
    entries: BTreeMap<NodeAddr, (Update, Millis)>,
    /// Per address: start of its admission window and admissions in it.
    admissions: BTreeMap<NodeAddr, (Millis, u32)>,
    /// Per sender of implausible news: last report and unreported refusals since.
    implausible: Reports<NodeAddr>,
    effects: Vec<Effect>,
}

impl Machine for Introducer {
    type Input = Input;
    type Effect = Effect;

    fn handle(&mut self, now: Millis, input: Input) -> Vec<Effect> {
        match input {
            Input::Start => self.start(now),
            Input::Msg { from, msg } => self.on_msg(now, &from, msg),
            Input::Timer(timer) => self.on_timer(now, timer),
        }
        std::mem::take(&mut self.effects)
    }
}

impl Introducer {
    /// A fresh introducer that knows nobody yet.
    pub fn new(settings: IntroducerSettings) -> Result<Self, IntroducerError> {
        if settings.member_ttl == 0 {
            return Err(IntroducerError::InvalidSetting { key: "member_ttl" });
        }
        if settings.reap_interval == 0 {
            return Err(IntroducerError::InvalidSetting {
                key: "reap_interval",
            });
        }
        if settings.admit_limit == 0 {
            return Err(IntroducerError::InvalidSetting { key: "admit_limit" });
        }
        if settings.admit_window == 0 {
            return Err(IntroducerError::InvalidSetting {
                key: "admit_window",
            });
        }
        Ok(Introducer {
            settings,
            entries: BTreeMap::new(),
            admissions: BTreeMap::new(),
            implausible: Reports::default(),
            effects: Vec::new(),
        })
    }

    fn start(&mut self, now: Millis) {
        for to in self.settings.ring.clone() {
            self.effects.push(Effect::Send {
                to,
                msg: Msg::IntroducerHello,
            });
        }
        self.set_reap(now);
    }

    /// Members it would hand a joiner now.
    pub fn members(&self) -> Vec<Member> {
        self.entries
            .values()
            .filter_map(|(u, _)| u.listed())
            .collect()
    }

    /// Whether every incarnation in `incs` is believable now; reports the first
    /// implausible one (rate-limited per sender) otherwise.
    fn plausible(&mut self, now: Millis, from: &NodeAddr, incs: &[Incarnation]) -> bool {
        let s = &self.settings;
        let ceiling = incarnation_ceiling(s.wall_origin, now, s.max_incarnation_ahead);
        let Some(&bad) = incs.iter().find(|i| **i > ceiling) else {
            return true;
        };
        if let Some(suppressed) = self.implausible.refused(now, from.clone()) {
            self.effects.push(Effect::Event(Event::Implausible {
                from: from.clone(),
                incarnation: bad,
                suppressed,
            }));
        }
        false
    }

    /// Counts one admission of `from`; `false` once it is over the limit in this window.
    fn admission_allowed(&mut self, now: Millis, from: &NodeAddr) -> bool {
        let window = self.settings.admit_window;
        if self.admissions.len() >= 4096 {
            self.admissions
                .retain(|_, (start, _)| now.saturating_sub(*start) < window);
        }
        let slot = self.admissions.entry(from.clone()).or_insert((now, 0));
        if now.saturating_sub(slot.0) >= window {
            *slot = (now, 0);
        }
        if slot.1 >= self.settings.admit_limit {
            return false;
        }
        slot.1 += 1;
        if slot.1 == self.settings.admit_limit {
            self.effects
                .push(Effect::Event(Event::Throttled { addr: from.clone() }));
        }
        true
    }

    fn on_msg(&mut self, now: Millis, from: &NodeAddr, msg: Msg) {
        let incs: Vec<Incarnation> = match &msg {
            Msg::JoinRequest { incarnation } => vec![*incarnation],
            Msg::Announce {
                incarnation,
                joined,
            } => vec![*incarnation, *joined],
            _ => Vec::new(),
        };
        if !self.plausible(now, from, &incs) {
            return;
        }
        match msg {
            Msg::JoinRequest { incarnation } => self.admit(now, from, incarnation),
            Msg::Announce {
                incarnation,
                joined,
            } => {
                let u = Update {
                    addr: from.clone(),
                    incarnation,
                    joined,
                    state: UpdateState::Alive,
                };
                match self.entries.get_mut(from) {
                    Some((old, heard)) if !supersedes(&u, old) => {
                        if old.state.is_tombstone() {
                            // The cluster buried this life: tell it, so it rejoins.
                            let tomb = old.clone();
                            self.send(from.clone(), Msg::Updates(vec![tomb]));
                        } else {
                            *heard = now;
                        }
                    }
                    _ => {
                        self.learn(now, u);
                    }
                }
            }
            Msg::Updates(updates) | Msg::SyncReply { members: updates } => {
                for u in updates
                    .into_iter()
                    .take(crate::membership::MAX_UPDATES_PER_MSG)
                {
                    if !self.plausible(now, from, &[u.incarnation, u.joined]) {
                        continue;
                    }
                    let newer = self
                        .entries
                        .get(&u.addr)
                        .is_none_or(|(old, _)| supersedes(&u, old));
                    if newer {
                        self.learn(now, u);
                    }
                }
            }
            // Not a member: nobody should probe it, and answering would make it look like one.
            Msg::Ping { .. }
            | Msg::Ack { .. }
            | Msg::JoinReply { .. }
            | Msg::SyncRequest
            | Msg::IntroducerHello => {}
        }
    }

    fn on_timer(&mut self, now: Millis, timer: Timer) {
        match timer {
            Timer::Reap => {
                let ttl = self.settings.member_ttl;
                let silent: Vec<NodeAddr> = self
                    .entries
                    .iter()
                    .filter(|(_, (u, heard))| {
                        !u.state.is_tombstone() && now.saturating_sub(*heard) > ttl
                    })
                    .map(|(a, _)| a.clone())
                    .collect();
                for addr in silent {
                    self.entries.remove(&addr);
                    self.effects.push(Effect::Event(Event::Forgot { addr }));
                }
                self.set_reap(now);
            }
        }
    }

    fn admit(&mut self, now: Millis, from: &NodeAddr, requested: Incarnation) {
        if !self.admission_allowed(now, from) {
            return;
        }
        // Above anything known for this address, so the joiner's word wins everywhere:
        // a buried life stays buried, a live stale entry (restart before detection) is replaced.
        // Known incarnations passed the plausibility bound, so `+ 1` cannot overflow;
        // should it, the joiner's own pick stands rather than a wrap.
        let floor = self
            .entries
            .get(from)
            .map_or(0, |(u, _)| u.incarnation.checked_add(1).unwrap_or(0));
        let incarnation = requested.max(floor);
        let members: Vec<Update> = self
            .entries
            .values()
            .filter(|(u, _)| !u.state.is_tombstone() && u.addr != *from)
            .map(|(u, _)| u.clone())
            .collect();
        self.entries.insert(
            from.clone(),
            (
                Update {
                    addr: from.clone(),
                    incarnation,
                    joined: incarnation,
                    state: UpdateState::Alive,
                },
                now,
            ),
        );
        self.send(
            from.clone(),
            Msg::JoinReply {
                incarnation,
                members,
            },
        );
        self.effects.push(Effect::Event(Event::Admitted {
            addr: from.clone(),
            incarnation,
        }));
    }

    fn learn(&mut self, now: Millis, u: Update) {
        let was_live = self
            .entries
            .get(&u.addr)
            .is_some_and(|(old, _)| !old.state.is_tombstone());
        if u.state.is_tombstone() {
            if was_live {
                self.effects.push(Effect::Event(Event::Removed {
                    addr: u.addr.clone(),
                    state: u.state,
                }));
            }
        } else if !was_live {
            self.effects.push(Effect::Event(Event::Learned {
                addr: u.addr.clone(),
                incarnation: u.incarnation,
            }));
        }
        self.entries.insert(u.addr.clone(), (u, now));
    }

    fn set_reap(&mut self, now: Millis) {
        self.effects.push(Effect::SetTimer {
            at: now.saturating_add(self.settings.reap_interval),
            timer: Timer::Reap,
        });
    }

    fn send(&mut self, to: NodeAddr, msg: Msg) {
        self.effects.push(Effect::Send { to, msg });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: usize) -> NodeAddr {
        NodeAddr(format!("127.0.0.1:{}", 8000 + i))
    }

    fn intro() -> Introducer {
        Introducer::new(IntroducerSettings::new(
            (1..=3).map(h).collect(),
            10_000,
            1000,
        ))
        .unwrap()
    }

    /// Delivers `msg` from `from` at `now`.
    fn deliver(i: &mut Introducer, now: Millis, from: NodeAddr, msg: Msg) -> Vec<Effect> {
        i.handle(now, Input::Msg { from, msg })
    }

    fn announce(incarnation: Incarnation, joined: Incarnation) -> Msg {
        Msg::Announce {
            incarnation,
            joined,
        }
    }

    fn reply(fx: &[Effect]) -> (Incarnation, Vec<Update>) {
        fx.iter()
            .find_map(|e| match e {
                Effect::Send {
                    msg:
                        Msg::JoinReply {
                            incarnation,
                            members,
                        },
                    ..
                } => Some((*incarnation, members.clone())),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn start_says_hello_to_every_configured_node() {
        let mut i = intro();
        let hellos = i
            .handle(0, Input::Start)
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Effect::Send {
                        msg: Msg::IntroducerHello,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(hellos, 3);
    }

    #[test]
    fn joiners_get_the_others_and_a_safe_incarnation() {
        let mut i = intro();
        let fx = deliver(&mut i, 0, h(1), Msg::JoinRequest { incarnation: 5 });
        let (inc, members) = reply(&fx);
        assert_eq!((inc, members.len()), (5, 0));
        let fx = deliver(&mut i, 1, h(2), Msg::JoinRequest { incarnation: 7 });
        let (_, members) = reply(&fx);
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].addr, h(1));
        // h(1) is buried at 9; a restart asking for 6 must come back above 9.
        let burial = Msg::Updates(vec![Update {
            addr: h(1),
            incarnation: 9,
            joined: 5,
            state: UpdateState::Failed,
        }]);
        deliver(&mut i, 2, h(2), burial);
        assert_eq!(i.members().len(), 1);
        let fx = deliver(&mut i, 3, h(1), Msg::JoinRequest { incarnation: 6 });
        let (inc, members) = reply(&fx);
        assert_eq!(inc, 10);
        assert_eq!(members.len(), 1);
    }

    #[test]
    fn announces_relearn_and_buried_announcers_are_told() {
        let mut i = intro();
        deliver(&mut i, 0, h(3), announce(4, 2));
        assert_eq!(i.members().len(), 1);
        let burial = Msg::Updates(vec![Update {
            addr: h(3),
            incarnation: 4,
            joined: 2,
            state: UpdateState::Failed,
        }]);
        deliver(&mut i, 1, h(1), burial);
        assert!(i.members().is_empty());
        let fx = deliver(&mut i, 2, h(3), announce(5, 2));
        assert!(i.members().is_empty());
        assert!(fx.iter().any(|e| matches!(
            e,
            Effect::Send { to, msg: Msg::Updates(u) }
                if *to == h(3) && u[0].state == UpdateState::Failed
        )));
    }

    #[test]
    fn silent_members_are_forgotten_after_ttl() {
        let mut i = intro();
        deliver(&mut i, 0, h(1), announce(1, 1));
        deliver(&mut i, 0, h(2), announce(1, 1));
        deliver(&mut i, 9_000, h(2), announce(1, 1));
        i.handle(10_500, Input::Timer(Timer::Reap));
        let left: Vec<NodeAddr> = i.members().into_iter().map(|m| m.addr).collect();
        assert_eq!(left, vec![h(2)]);
    }

    /// A joiner in a loop is admitted `admit_limit` times per window, reported once,
    /// and admitted again once the window has passed.
    #[test]
    fn admissions_of_one_address_are_rate_limited() {
        let mut i = intro();
        let mut replies = 0;
        let mut throttled = 0;
        for t in 0..1000 {
            let fx = deliver(&mut i, t, h(1), Msg::JoinRequest { incarnation: 5 });
            replies += fx
                .iter()
                .filter(|e| {
                    matches!(
                        e,
                        Effect::Send {
                            msg: Msg::JoinReply { .. },
                            ..
                        }
                    )
                })
                .count();
            throttled += fx
                .iter()
                .filter(|e| matches!(e, Effect::Event(Event::Throttled { .. })))
                .count();
        }
        assert_eq!((replies, throttled), (ADMIT_LIMIT as usize, 1));
        // Another address is not held back by h(1)'s loop.
        let fx = deliver(&mut i, 1000, h(2), Msg::JoinRequest { incarnation: 5 });
        assert_eq!(reply(&fx).0, 5);
        let fx = deliver(
            &mut i,
            ADMIT_WINDOW + 1,
            h(1),
            Msg::JoinRequest { incarnation: 5 },
        );
        assert!(reply(&fx).0 > 5);
    }

    /// Finding 2: news at `u64::MAX` is not learned, so no joiner is handed an
    /// incarnation that can never be superseded.
    #[test]
    fn implausible_news_is_dropped_and_reported_once() {
        let mut i = intro();
        deliver(&mut i, 0, h(1), announce(4, 2));
        let mut reports = 0;
        for t in 1..100 {
            let poison = Msg::Updates(vec![Update {
                addr: h(1),
                incarnation: u64::MAX,
                joined: u64::MAX,
                state: UpdateState::Failed,
            }]);
            let fx = deliver(&mut i, t, h(3), poison);
            let fx2 = deliver(&mut i, t, h(3), announce(u64::MAX, 1));
            reports += fx
                .iter()
                .chain(&fx2)
                .filter(|e| matches!(e, Effect::Event(Event::Implausible { .. })))
                .count();
        }
        assert_eq!(reports, 1);
        assert_eq!(i.members().len(), 1, "h(1) still listed, h(3) not learned");
        let fx = deliver(&mut i, 200, h(1), Msg::JoinRequest { incarnation: 6 });
        assert_eq!(reply(&fx).0, 6);
    }
}
