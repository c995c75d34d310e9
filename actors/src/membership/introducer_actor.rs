//! IntroducerActor: the shell around the [`Introducer`] core, run by `dml introducer`.
//! It also answers `list_mem` from `dml ctl` with the members it knows.

use actix::prelude::*;
use futures_util::stream;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::clock;
use crate::control::{Command, Reply};
use crate::membership::introducer::{Introducer, IntroducerEffect, IntroducerEvent, IntroducerTimer};
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

    fn drain(&mut self, ctx: &mut Context<Self>) {
        for effect in self.core.take_effects() {
            match effect {
                IntroducerEffect::Send { to, msg } => {
                    if let Err(e) = self
                        .transport
                        .send(&to, Lane::Control, Body::Membership(msg))
                    {
                        warn!(peer = %to, "introducer send dropped: {e}");
                    }
                }
                IntroducerEffect::SetTimer { at, timer } => {
                    ctx.run_later(clock::until(at), move |act, ctx| act.on_timer(timer, ctx));
                }
                IntroducerEffect::Event(ev) => {
                    let wall = clock::wall_ms();
                    match ev {
                        IntroducerEvent::Admitted { addr, incarnation } => {
                            info!(wall, peer = %addr, incarnation, "event=admitted")
                        }
                        IntroducerEvent::Learned { addr, incarnation } => {
                            info!(wall, peer = %addr, incarnation, "event=learned")
                        }
                        IntroducerEvent::Removed { addr, state } => {
                            info!(wall, peer = %addr, ?state, "event=removed")
                        }
                        IntroducerEvent::Forgot { addr } => {
                            info!(wall, peer = %addr, "event=forgot")
                        }
                    }
                }
            }
        }
    }

    fn on_timer(&mut self, timer: IntroducerTimer, ctx: &mut Context<Self>) {
        self.core.handle_timer(clock::now(), timer);
        self.drain(ctx);
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
        self.core.start(clock::now());
        self.drain(ctx);
    }
}

impl StreamHandler<Inbound<Body>> for IntroducerActor {
    fn handle(&mut self, m: Inbound<Body>, ctx: &mut Context<Self>) {
        match m.body {
            Body::Membership(msg) => {
                self.core.handle_msg(clock::now(), &m.from, msg);
                self.drain(ctx);
            }
            Body::Command(cmd) => {
                let outcome = match cmd {
                    Command::ListMem => {
                        let members = self.core.members();
                        let text = members
                            .iter()
                            .map(|m| {
                                format!(
                                    "  {}  incarnation {}  {:?}",
                                    m.addr, m.incarnation, m.state
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n");
                        let json: Vec<_> = members
                            .iter()
                            .map(|m| {
                                serde_json::json!({"id": format!("{}#{}", m.addr, m.joined), "addr": m.addr.as_str(),
                                    "incarnation": m.incarnation, "state": m.state})
                            })
                            .collect();
                        Ok(Reply::new(
                            format!("introducer knows {} members:\n{text}", members.len()),
                            serde_json::Value::Array(json),
                        ))
                    }
                    _ => Err("the introducer only answers list_mem".to_string()),
                };
                if let Some(r) = m.responder {
                    let _ = r.respond(Body::Outcome(outcome));
                }
            }
            Body::Outcome(_) | Body::Sdfs(_) | Body::Jobs(_) => {}
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
