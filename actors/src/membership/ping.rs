//! Per-peer prober core: pings one monitored peer every `ping_duration` and reports
//! "suspect" when a probe is not acknowledged within `ping_timeout`.
//!
//! A pure state machine (no socket, no clock, no actix): the PingActor hands it
//! [`Input`]s with its `now` through [`Machine::handle`] and executes the [`Effect`]s it
//! returns. The Ping message itself is built by the membership core (it piggybacks
//! gossip), so this core only decides *when* to ping and *whether* a probe failed.
//!
//! Every timer carries the prober's token and the probe's sequence number (foca's
//! `ProbeNumber` idea): a timeout for a probe that was already acked, a tick left over
//! from a previous prober of the same peer, or an ack that comes after its probe's
//! timeout are recognised as stale and ignored instead of corrupting state.

use std::collections::VecDeque;

use thiserror::Error;

use crate::machine::Machine;
use crate::types::{Millis, NodeAddr};

/// How many unanswered probes are remembered. More than enough for any sane
/// `ping_timeout / ping_duration` ratio; older ones are forgotten without a verdict.
const MAX_OUTSTANDING: usize = 64;

/// Errors from building a prober; nothing is created when one is returned.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProbeError {
    /// `ping_duration` must be positive, or the prober would spin.
    #[error("ping_duration must be positive")]
    ZeroPingDuration,
    /// `ping_timeout` must be positive, or every probe would fail at once.
    #[error("ping_timeout must be positive")]
    ZeroPingTimeout,
}

/// Timing of one prober (from the config's `[failure_detector]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSettings {
    /// Interval between two probes of the peer.
    pub ping_duration: Millis,
    /// How long a probe waits for its ack before the peer is reported.
    pub ping_timeout: Millis,
}

/// Everything that can happen to a prober.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Start probing: the first ping goes out now. A second start does nothing.
    Start,
    /// A timer this prober set is due.
    Timer(Timer),
    /// The peer acked probe `seq` (late or stale acks only count in the stats).
    Ack { seq: u64 },
}

/// A timer the prober asked for; hand it back as [`Input::Timer`] when due.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timer {
    /// The prober instance that set it; another instance ignores it.
    pub token: u64,
    /// What to do when it fires.
    pub kind: TimerKind,
}

/// The two timers of a prober.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// Start the probe numbered `seq` (stale if that probe was already started).
    Tick { seq: u64 },
    /// Probe `seq` is out of time (stale if it was acked).
    Timeout { seq: u64 },
}

/// What the prober's shell must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send the Ping numbered `seq` to `peer`; the membership core builds it.
    Ping { peer: NodeAddr, seq: u64 },
    /// Hand `timer` back as [`Input::Timer`] at `at` (caller's clock).
    SetTimer { at: Millis, timer: Timer },
    /// Probe `seq` got no ack in time: report the peer to the membership core.
    Suspect { peer: NodeAddr, seq: u64 },
    /// For the log.
    Event(Event),
}

/// What the prober reports for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Probe `seq` was answered after `rtt` ms.
    Acked {
        peer: NodeAddr,
        seq: u64,
        rtt: Millis,
    },
}

/// Counters a console or benchmark can show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Probes sent.
    pub sent: u64,
    /// Probes acked in time.
    pub acked: u64,
    /// Probes that timed out.
    pub missed: u64,
    /// Acks that came for no live probe (late or stale).
    pub stale_acks: u64,
    /// Round-trip time of the last acked probe.
    pub last_rtt: Option<Millis>,
    /// Smoothed round-trip time (TCP's 7/8 + 1/8 average).
    pub srtt: Option<Millis>,
}

/// The prober of one monitored peer.
#[derive(Debug)]
pub struct Prober {
    peer: NodeAddr,
    settings: ProbeSettings,
    token: u64,
    /// Counter of the next probe; sequence numbers are `token << 32 | counter` so that
    /// an ack meant for an earlier prober of the same peer never matches this one.
    next: u32,
    started: bool,
    /// Probes sent and not yet acked or timed out: (seq, sent_at).
    outstanding: VecDeque<(u64, Millis)>,
    stats: ProbeStats,
}

impl Machine for Prober {
    type Input = Input;
    type Effect = Effect;

    fn handle(&mut self, now: Millis, input: Input) -> Vec<Effect> {
        let mut fx = Vec::new();
        match input {
            Input::Start => self.start(now, &mut fx),
            Input::Timer(timer) => self.on_timer(now, timer, &mut fx),
            Input::Ack { seq } => self.on_ack(now, seq, &mut fx),
        }
        fx
    }
}

impl Prober {
    /// A prober for `peer`. `token` must differ between probers the same node creates
    /// (a counter is fine): it tags timers and sequence numbers.
    pub fn new(peer: NodeAddr, settings: ProbeSettings, token: u64) -> Result<Self, ProbeError> {
        if settings.ping_duration == 0 {
            return Err(ProbeError::ZeroPingDuration);
        }
        if settings.ping_timeout == 0 {
            return Err(ProbeError::ZeroPingTimeout);
        }
        Ok(Prober {
            peer,
            settings,
            token,
            next: 0,
            started: false,
            outstanding: VecDeque::new(),
            stats: ProbeStats::default(),
        })
    }

    /// The monitored peer.
    pub fn peer(&self) -> &NodeAddr {
        &self.peer
    }

    /// This prober's token.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Counters so far.
    pub fn stats(&self) -> ProbeStats {
        self.stats
    }

    fn start(&mut self, now: Millis, fx: &mut Vec<Effect>) {
        if self.started {
            return;
        }
        self.started = true;
        self.probe(now, fx);
    }

    fn on_timer(&mut self, now: Millis, timer: Timer, fx: &mut Vec<Effect>) {
        if timer.token != self.token || !self.started {
            return;
        }
        match timer.kind {
            TimerKind::Tick { seq } => {
                if seq == self.seq_of(self.next) {
                    self.probe(now, fx);
                }
            }
            TimerKind::Timeout { seq } => {
                if let Some(pos) = self.outstanding.iter().position(|(s, _)| *s == seq) {
                    self.outstanding.remove(pos);
                    self.stats.missed += 1;
                    fx.push(Effect::Suspect {
                        peer: self.peer.clone(),
                        seq,
                    });
                }
            }
        }
    }

    /// A late or stale ack changes nothing but the `stale_acks` counter.
    fn on_ack(&mut self, now: Millis, seq: u64, fx: &mut Vec<Effect>) {
        let Some(pos) = self.outstanding.iter().position(|(s, _)| *s == seq) else {
            self.stats.stale_acks += 1;
            return;
        };
        let Some((_, sent_at)) = self.outstanding.remove(pos) else {
            return;
        };
        let rtt = now.saturating_sub(sent_at);
        self.stats.acked += 1;
        self.stats.last_rtt = Some(rtt);
        self.stats.srtt = Some(match self.stats.srtt {
            None => rtt,
            Some(s) => (s.saturating_mul(7).saturating_add(rtt)) / 8,
        });
        fx.push(Effect::Event(Event::Acked {
            peer: self.peer.clone(),
            seq,
            rtt,
        }));
    }

    fn seq_of(&self, counter: u32) -> u64 {
        (self.token << 32) | u64::from(counter)
    }

    fn probe(&mut self, now: Millis, fx: &mut Vec<Effect>) {
        let seq = self.seq_of(self.next);
        self.next = self.next.wrapping_add(1);
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back((seq, now));
        self.stats.sent += 1;
        fx.push(Effect::Ping {
            peer: self.peer.clone(),
            seq,
        });
        fx.push(Effect::SetTimer {
            at: now.saturating_add(self.settings.ping_timeout),
            timer: Timer {
                token: self.token,
                kind: TimerKind::Timeout { seq },
            },
        });
        fx.push(Effect::SetTimer {
            at: now.saturating_add(self.settings.ping_duration),
            timer: Timer {
                token: self.token,
                kind: TimerKind::Tick {
                    seq: self.seq_of(self.next),
                },
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ProbeSettings {
        ProbeSettings {
            ping_duration: 2500,
            ping_timeout: 2000,
        }
    }

    fn prober() -> Prober {
        Prober::new(NodeAddr::from("127.0.0.1:8002"), settings(), 7).unwrap()
    }

    fn sent_seq(effects: &[Effect]) -> u64 {
        effects
            .iter()
            .find_map(|e| match e {
                Effect::Ping { seq, .. } => Some(*seq),
                _ => None,
            })
            .unwrap()
    }

    fn timers(effects: &[Effect]) -> Vec<(Millis, Timer)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::SetTimer { at, timer } => Some((*at, *timer)),
                _ => None,
            })
            .collect()
    }

    fn suspects(effects: &[Effect]) -> usize {
        effects
            .iter()
            .filter(|e| matches!(e, Effect::Suspect { .. }))
            .count()
    }

    /// Whether the ack matched a live probe (it then reports the round trip).
    fn matched(effects: &[Effect]) -> bool {
        effects
            .iter()
            .any(|e| matches!(e, Effect::Event(Event::Acked { .. })))
    }

    #[test]
    fn rejects_zero_timings() {
        let peer = NodeAddr::from("a:1");
        let zero_d = ProbeSettings {
            ping_duration: 0,
            ping_timeout: 1,
        };
        let zero_t = ProbeSettings {
            ping_duration: 1,
            ping_timeout: 0,
        };
        assert_eq!(
            Prober::new(peer.clone(), zero_d, 0).unwrap_err(),
            ProbeError::ZeroPingDuration
        );
        assert_eq!(
            Prober::new(peer, zero_t, 0).unwrap_err(),
            ProbeError::ZeroPingTimeout
        );
    }

    #[test]
    fn start_pings_and_sets_both_timers() {
        let mut p = prober();
        let fx = p.handle(1000, Input::Start);
        let seq = sent_seq(&fx);
        let ts = timers(&fx);
        assert!(ts.contains(&(
            3000,
            Timer {
                token: 7,
                kind: TimerKind::Timeout { seq }
            }
        )));
        assert!(ts
            .iter()
            .any(|(at, t)| *at == 3500 && matches!(t.kind, TimerKind::Tick { .. })));
        // Starting twice does not double the probing rate.
        assert!(p.handle(1001, Input::Start).is_empty());
    }

    #[test]
    fn ack_in_time_means_no_suspicion_and_reports_rtt() {
        let mut p = prober();
        let fx = p.handle(0, Input::Start);
        let seq = sent_seq(&fx);
        let fx2 = p.handle(40, Input::Ack { seq });
        assert!(matched(&fx2));
        assert!(fx2.contains(&Effect::Event(Event::Acked {
            peer: p.peer().clone(),
            seq,
            rtt: 40
        })));
        let mut after = Vec::new();
        for (at, t) in timers(&fx) {
            if matches!(t.kind, TimerKind::Timeout { .. }) {
                after.extend(p.handle(at, Input::Timer(t)));
            }
        }
        assert_eq!(suspects(&after), 0);
        assert_eq!(p.stats().acked, 1);
        assert_eq!(p.stats().srtt, Some(40));
    }

    #[test]
    fn timeout_suspects_once_and_late_ack_is_ignored() {
        let mut p = prober();
        let fx = p.handle(0, Input::Start);
        let seq = sent_seq(&fx);
        let (at, timeout) = timers(&fx)
            .into_iter()
            .find(|(_, t)| matches!(t.kind, TimerKind::Timeout { .. }))
            .unwrap();
        assert_eq!(suspects(&p.handle(at, Input::Timer(timeout))), 1);
        // The same timer delivered twice (or late) must not suspect again.
        assert_eq!(suspects(&p.handle(at + 1, Input::Timer(timeout))), 0);
        // An ack after the verdict is stale.
        assert!(!matched(&p.handle(at + 5, Input::Ack { seq })));
        assert_eq!(p.stats().stale_acks, 1);
        assert_eq!(p.stats().missed, 1);
    }

    #[test]
    fn ticks_keep_one_probe_per_period_and_stale_ticks_are_ignored() {
        let mut p = prober();
        let fx = p.handle(0, Input::Start);
        let (at, tick) = timers(&fx)
            .into_iter()
            .find(|(_, t)| matches!(t.kind, TimerKind::Tick { .. }))
            .unwrap();
        let fx2 = p.handle(at, Input::Timer(tick));
        let seq2 = sent_seq(&fx2);
        assert_ne!(seq2, sent_seq(&fx));
        // The same tick again would double the rate: ignored.
        assert!(p.handle(at, Input::Timer(tick)).is_empty());
        // A timer from another prober instance (old token) is ignored too.
        let foreign = Timer {
            token: 8,
            kind: TimerKind::Timeout { seq: seq2 },
        };
        assert!(p.handle(at, Input::Timer(foreign)).is_empty());
        assert_eq!(p.stats().sent, 2);
    }

    #[test]
    fn sequence_numbers_differ_between_tokens() {
        let mut a = Prober::new(NodeAddr::from("x:1"), settings(), 1).unwrap();
        let mut b = Prober::new(NodeAddr::from("x:1"), settings(), 2).unwrap();
        let sa = sent_seq(&a.handle(0, Input::Start));
        let sb = sent_seq(&b.handle(0, Input::Start));
        assert_ne!(sa, sb);
        // An ack for a's probe does not satisfy b.
        assert!(!matched(&b.handle(1, Input::Ack { seq: sa })));
    }

    #[test]
    fn timeout_longer_than_period_tracks_overlapping_probes() {
        let s = ProbeSettings {
            ping_duration: 100,
            ping_timeout: 250,
        };
        let mut p = Prober::new(NodeAddr::from("x:1"), s, 3).unwrap();
        let mut pending: Vec<(Millis, Timer)> = timers(&p.handle(0, Input::Start));
        let mut seqs = Vec::new();
        let mut suspected = 0;
        // Run 1 s of virtual time, acking nothing.
        while let Some(i) = (0..pending.len()).min_by_key(|&i| pending[i].0) {
            let (at, t) = pending.swap_remove(i);
            if at > 1000 {
                break;
            }
            let fx = p.handle(at, Input::Timer(t));
            suspected += suspects(&fx);
            for e in &fx {
                if let Effect::Ping { seq, .. } = e {
                    seqs.push(*seq);
                }
            }
            pending.extend(timers(&fx));
        }
        // Probes at 0,100,...,1000 (11 sent); those sent up to 750 timed out by 1000.
        assert_eq!(p.stats().sent, 11);
        assert_eq!(suspected, 8);
        assert_eq!(p.stats().missed, 8);
    }
}
