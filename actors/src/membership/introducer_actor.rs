//! IntroducerActor: the shell around the [`Introducer`] core, run by `dml introducer`.
//! It also answers `list_mem` from `dml ctl` with the members it knows.

use actix::prelude::*;
use futures_util::stream;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::clock;
use crate::control::{membership_text, Command};
use crate::machine::Machine;
use crate::membership::introducer::{Effect, Event, Input, Introducer, Timer};
use crate::net::body::Body;
use crate::net::transport::{Inbound, Transport};
use crate::net::wire::Lane;

pub struct IntroducerActor {
    core: Introducer,
    transport: Transport<Body>,
    inbound: Option<mpsc::Receiver<Inbound<Body>>>,
}

impl IntroducerActor {
    pub fn new(
        core: Introducer,
        transport: Transport<Body>,
        inbound: mpsc::Receiver<Inbound<Body>>,
    ) -> Self {
        IntroducerActor {
            core,
            transport,
            inbound: Some(inbound),
        }
    }

    /// Feeds the core one input and executes what it asks for.
    fn step(&mut self, input: Input, ctx: &mut Context<Self>) {
        for effect in self.core.handle(clock::now(), input) {
            match effect {
                Effect::Send { to, msg } => {
                    if let Err(e) = self
                        .transport
                        .send(&to, Lane::Control, Body::Membership(msg))
                    {
                        warn!(peer = %to, "introducer send dropped: {e}");
                    }
                }
                Effect::SetTimer { at, timer } => {
                    ctx.run_later(clock::until(at), move |act, ctx| act.on_timer(timer, ctx));
                }
                Effect::Event(ev) => {
                    let wall = clock::wall_ms();
                    match ev {
                        Event::Admitted { addr, incarnation } => {
                            info!(wall, peer = %addr, incarnation, "event=admitted")
                        }
                        Event::Learned { addr, incarnation } => {
                            info!(wall, peer = %addr, incarnation, "event=learned")
                        }
                        Event::Removed { addr, state } => {
                            info!(wall, peer = %addr, ?state, "event=removed")
                        }
                        Event::Forgot { addr } => {
                            info!(wall, peer = %addr, "event=forgot")
                        }
                        Event::Implausible {
                            from,
                            incarnation,
                            suppressed,
                        } => {
                            warn!(wall, peer = %from, incarnation, suppressed,
                                "event=implausible (news dropped: incarnation beyond wall clock + a day)")
                        }
                        Event::Throttled { addr } => {
                            warn!(wall, peer = %addr, "event=admission_throttled (further joins ignored for this window)")
                        }
                    }
                }
            }
        }
    }

    fn on_timer(&mut self, timer: Timer, ctx: &mut Context<Self>) {
        self.step(Input::Timer(timer), ctx);
    }
}

impl Actor for IntroducerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(rx) = self.inbound.take() {
            ctx.add_stream(stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|m| (m, rx))
            }));
        }
        self.step(Input::Start, ctx);
    }
}

impl StreamHandler<Inbound<Body>> for IntroducerActor {
    fn handle(&mut self, m: Inbound<Body>, ctx: &mut Context<Self>) {
        match m.body {
            Body::Membership(msg) => {
                self.step(Input::Msg { from: m.from, msg }, ctx);
            }
            Body::Command(cmd) => {
                let outcome = match cmd {
                    Command::ListMem => {
                        Ok(membership_text::introducer_members(&self.core.members()))
                    }
                    _ => Err(membership_text::introducer_only_list_mem()),
                };
                if let Some(r) = m.responder {
                    let _ = r.respond(Body::Outcome(outcome));
                }
            }
            Body::Outcome(_) | Body::Sdfs(_) | Body::Jobs(_) | Body::Serve(_) => {}
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
