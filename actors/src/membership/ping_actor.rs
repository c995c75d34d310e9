//! PingActor: one per monitored peer, the thin shell around a [`Prober`]. It turns the
//! prober's timers into actix timers, asks the MembershipActor to send each ping (so
//! the core can piggyback updates) and reports unanswered probes to it.

use actix::prelude::*;
use tracing::{debug, warn};

use crate::clock;
use crate::membership::membership_actor::{MembershipActor, SendPing, Unresponsive};
use crate::membership::ping::{ProbeEffect, ProbeError, ProbeSettings, ProbeTimer, Prober};
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

pub struct PingActor {
    prober: Prober,
    membership: Addr<MembershipActor>,
}

impl PingActor {
    pub fn new(
        peer: NodeAddr,
        settings: ProbeSettings,
        token: u64,
        membership: Addr<MembershipActor>,
    ) -> Result<Self, ProbeError> {
        Ok(PingActor {
            prober: Prober::new(peer, settings, token)?,
            membership,
        })
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        for effect in self.prober.take_effects() {
            match effect {
                ProbeEffect::SendPing { peer, seq } => {
                    self.membership.do_send(SendPing { peer, seq })
                }
                ProbeEffect::SetTimer { at, timer } => {
                    ctx.run_later(clock::until(at), move |act, ctx| act.on_timer(timer, ctx));
                }
                ProbeEffect::Suspect { peer, seq } => {
                    warn!(peer = %peer, seq, "no ack in time");
                    self.membership.do_send(Unresponsive { peer });
                }
                ProbeEffect::Rtt { peer, seq, rtt } => debug!(peer = %peer, seq, rtt, "ack"),
            }
        }
    }

    fn on_timer(&mut self, timer: ProbeTimer, ctx: &mut Context<Self>) {
        self.prober.handle_timer(clock::now(), timer);
        self.drain(ctx);
    }
}

impl Actor for PingActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.prober.start(clock::now());
        self.drain(ctx);
    }
}

impl Supervised for PingActor {}

impl Handler<Acked> for PingActor {
    type Result = ();
    fn handle(&mut self, m: Acked, ctx: &mut Context<Self>) {
        self.prober.handle_ack(clock::now(), m.seq);
        self.drain(ctx);
    }
}

impl Handler<Stop> for PingActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
