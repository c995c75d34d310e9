//! Joining and leaving: the join through the introducer (with its timeout), the
//! voluntary leave, and the rejoin of a node that learns its current life was buried.

use rand::seq::IteratorRandom;
use rand::Rng;

use super::membership::{Effect, Event, Membership, MembershipError, Msg, Status, Timer};
use super::{Update, UpdateState};
use crate::types::{Incarnation, Millis, NodeAddr};

impl Membership {
    /// Join through the introducer. `incarnation` is the caller's pick (its start time
    /// in ms, say); the core never goes below one more than any incarnation it used.
    /// Without an answer within `join_timeout` a [`Event::JoinFailed`] follows.
    pub fn join(&mut self, now: Millis, incarnation: Incarnation) -> Result<(), MembershipError> {
        if matches!(self.status, Status::Joining | Status::Member) {
            return Err(MembershipError::AlreadyJoined);
        }
        if self.settings.introducer.is_none() {
            return Err(MembershipError::NoIntroducer);
        }
        // An exhausted incarnation space is left as is: the introducer's reply or a
        // `forgive` is the way out, never a wrap to a small number.
        let inc = incarnation.max(self.incarnation.checked_add(1).unwrap_or(self.incarnation));
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
        self.event(Event::SelfLeft {
            incarnation: self.incarnation,
        });
        self.refresh_monitors(now);
        Ok(())
    }

    pub(super) fn on_join_reply(
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
        if incarnation > self.incarnation && incarnation <= self.incarnation_ceiling(now) {
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
        self.event(Event::SelfJoined {
            incarnation: self.incarnation,
            members: self.live_count() + 1,
        });
    }

    /// This life was declared failed at `buried`: rejoin now, or, if the previous rejoin
    /// was less than the backoff ago, once it has passed. The backoff doubles while
    /// burials keep coming and resets after `rejoin_backoff_max` without one.
    pub(super) fn want_rejoin(
        &mut self,
        now: Millis,
        buried: Incarnation,
        informer: Option<NodeAddr>,
    ) {
        let due = self
            .last_rejoin
            .map(|t| t.saturating_add(self.rejoin_backoff));
        match due {
            Some(at) if now < at => {
                let first = self.rejoin_wanted.is_none();
                let top = self
                    .rejoin_wanted
                    .as_ref()
                    .map_or(buried, |w| w.0.max(buried));
                self.rejoin_wanted = Some((top, informer));
                if first {
                    self.effects.push(Effect::SetTimer {
                        at,
                        timer: Timer::Rejoin { epoch: self.epoch },
                    });
                    self.event(Event::RejoinDeferred { at });
                }
            }
            _ => self.rejoin_now(now, buried, informer),
        }
    }

    pub(super) fn on_rejoin_due(&mut self, now: Millis) {
        let Some((buried, informer)) = self.rejoin_wanted.take() else {
            return;
        };
        // A rejoin since then (through another path) already started a newer life.
        if buried >= self.joined {
            self.rejoin_now(now, buried, informer);
        }
    }

    fn rejoin_now(&mut self, now: Millis, buried: Incarnation, informer: Option<NodeAddr>) {
        let Some(new) = self.incarnation.max(buried).checked_add(1) else {
            return;
        };
        let min = self.settings.rejoin_backoff_min;
        let max = self.settings.rejoin_backoff_max;
        self.rejoin_backoff = match self.last_rejoin {
            // Burials kept coming through the wait itself: wait longer next time.
            Some(t) if now.saturating_sub(t) < self.rejoin_backoff.saturating_add(max) => {
                self.rejoin_backoff.saturating_mul(2).clamp(min, max)
            }
            _ => min,
        };
        self.last_rejoin = Some(now);
        self.rejoin_wanted = None;
        self.rejoin(now, new, informer);
    }

    /// This life was declared failed: start a new one (fresh incarnation), announce it
    /// to everyone we know and to whoever told us, and re-register with the introducer.
    pub(super) fn rejoin(
        &mut self,
        now: Millis,
        new_incarnation: Incarnation,
        informer: Option<NodeAddr>,
    ) {
        let old = self.incarnation;
        self.incarnation = new_incarnation;
        self.joined = new_incarnation;
        self.event(Event::Rejoin {
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

    pub(super) fn request_join(&mut self, now: Millis) {
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

    pub(super) fn schedule_periodic(&mut self, now: Millis) {
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

    /// The introducer did not answer join attempt `attempt`: a first join fails, a
    /// rejoin retries after `join_retry` while the node keeps working.
    pub(super) fn on_join_timeout(&mut self, now: Millis, attempt: u64) {
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
            self.event(Event::JoinFailed { reason });
        } else if self.status == Status::Member && self.rejoin_pending {
            self.event(Event::JoinFailed {
                reason: format!("{reason}; rejoin retries, the node keeps running"),
            });
            self.effects.push(Effect::SetTimer {
                at: now.saturating_add(self.settings.join_retry),
                timer: Timer::JoinRetry { attempt },
            });
        }
    }

    pub(super) fn on_join_retry(&mut self, now: Millis, attempt: u64) {
        if attempt == self.join_attempt && self.status == Status::Member && self.rejoin_pending {
            self.request_join(now);
        }
    }
}
