//! PingActor: one per monitored peer, the thin shell around a [`Prober`]. It turns the
//! prober's timers into actix timers, asks the membership actor to send each ping (so
//! the core can piggyback updates) and reports unanswered probes to it.
//!
//! It knows the membership actor only through [`ToMembership`] (two recipients), so
//! the membership actor, which starts and stops PingActors, is the only one of the two
//! that names the other's type.

use actix::prelude::*;
use tracing::{debug, warn};

use crate::clock;
use crate::machine::Machine;
use crate::membership::ping::{Effect, Event, Input, ProbeError, ProbeSettings, Prober, Timer};
use crate::types::NodeAddr;

/// The peer acked probe `seq`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Acked {
    pub seq: u64,
}

/// The peer is no longer monitored.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// A PingActor asks for a ping (the membership core adds piggybacked updates).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendPing {
    pub peer: NodeAddr,
    pub seq: u64,
}

/// A PingActor's probe went unanswered.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unresponsive {
    pub peer: NodeAddr,
}

/// Where a PingActor's pings and verdicts go (the membership actor).
#[derive(Clone)]
pub struct ToMembership {
    pub send_ping: Recipient<SendPing>,
    pub unresponsive: Recipient<Unresponsive>,
}

pub struct PingActor {
    prober: Prober,
    membership: ToMembership,
}

impl PingActor {
    pub fn new(
        peer: NodeAddr,
        settings: ProbeSettings,
        token: u64,
        membership: ToMembership,
    ) -> Result<Self, ProbeError> {
        Ok(PingActor {
            prober: Prober::new(peer, settings, token)?,
            membership,
        })
    }

    /// Feeds the prober one input and executes what it asks for.
    fn step(&mut self, input: Input, ctx: &mut Context<Self>) {
        for effect in self.prober.handle(clock::now(), input) {
            match effect {
                Effect::Ping { peer, seq } => {
                    self.membership.send_ping.do_send(SendPing { peer, seq })
                }
                Effect::SetTimer { at, timer } => {
                    ctx.run_later(clock::until(at), move |act, ctx| act.on_timer(timer, ctx));
                }
                Effect::Suspect { peer, seq } => {
                    warn!(peer = %peer, seq, "no ack in time");
                    self.membership.unresponsive.do_send(Unresponsive { peer });
                }
                Effect::Event(Event::Acked { peer, seq, rtt }) => {
                    debug!(peer = %peer, seq, rtt, "ack")
                }
            }
        }
    }

    fn on_timer(&mut self, timer: Timer, ctx: &mut Context<Self>) {
        self.step(Input::Timer(timer), ctx);
    }
}

impl Actor for PingActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.step(Input::Start, ctx);
    }
}

impl Supervised for PingActor {}

impl Handler<Acked> for PingActor {
    type Result = ();
    fn handle(&mut self, m: Acked, ctx: &mut Context<Self>) {
        self.step(Input::Ack { seq: m.seq }, ctx);
    }
}

impl Handler<Stop> for PingActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
