//! TransportActor: the session actor between the transport and the node's actors. It
//! consumes the authenticated inbound stream and routes each message by protocol:
//! membership to the MembershipActor, console commands to their executor, and so on.
//! It makes no decisions of its own.

use actix::prelude::*;
use futures_util::stream;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::control::Outcome;
use crate::jobs::coordinator_actor::{self, CoordinatorActor};
use crate::jobs::worker_actor::{self, WorkerActor};
use crate::membership::membership_actor::{Exec, FromPeer, MembershipActor};
use crate::net::body::Body;
use crate::net::route::{command_route, is_read_only, route, To};
use crate::net::transport::{Inbound, Responder, TransportError};
use crate::net::wire::{Access, Grant, WireError};
use crate::sdfs::sdfs_actor::{self, SdfsActor};

/// Where the messages of each protocol go.
#[derive(Clone)]
pub struct Routes {
    pub membership: Addr<MembershipActor>,
    pub sdfs: Addr<SdfsActor>,
    pub coordinator: Addr<CoordinatorActor>,
    pub worker: Addr<WorkerActor>,
    pub serve: Addr<crate::serve::serve_actor::ServeActor>,
}

pub struct TransportActor {
    inbound: Option<mpsc::Receiver<Inbound<Body>>>,
    routes: Routes,
}

impl TransportActor {
    pub fn new(inbound: mpsc::Receiver<Inbound<Body>>, routes: Routes) -> Self {
        TransportActor {
            inbound: Some(inbound),
            routes,
        }
    }
}

impl Actor for TransportActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(rx) = self.inbound.take() {
            ctx.add_stream(stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|m| (m, rx))
            }));
        }
    }
}

/// Answers a request once its executor is done, without blocking the router.
fn answer(responder: Option<Responder<Body>>, rx: oneshot::Receiver<Outcome>) {
    actix::spawn(async move {
        let outcome = rx
            .await
            .unwrap_or_else(|_| Err("the node dropped the command (shutting down?)".into()));
        if let Some(r) = responder {
            // A reply over the frame cap would otherwise leave the tool waiting out its
            // timeout with no word of why: it gets the reason instead.
            let too_large = |e: &WireError| Some(Body::Outcome(Err(too_large(e))));
            match r.respond_or(Body::Outcome(outcome), too_large) {
                Ok(()) => {}
                Err(e @ TransportError::Wire(_)) => warn!("reply not sent: {e}"),
                Err(e) => debug!("reply not delivered: {e}"),
            }
        }
    });
}

/// What the tool reads when its answer does not fit in one frame.
pub fn too_large(e: &WireError) -> String {
    format!("the answer is too large to send ({e}); ask for less (a listing: a smaller --limit)")
}

impl StreamHandler<Inbound<Body>> for TransportActor {
    fn handle(&mut self, m: Inbound<Body>, _ctx: &mut Context<Self>) {
        let Inbound {
            from,
            access,
            body,
            responder,
            ..
        } = m;
        if let (
            Access::Operator {
                name,
                grant: Grant::ReadOnly,
            },
            Body::Command(cmd),
        ) = (&access, &body)
        {
            if !is_read_only(cmd) {
                warn!(peer = %from, "read-only operator refused a command that changes state");
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Err(format!(
                    "operator {name} is read-only; this command needs an admin credential"
                )));
                answer(responder, rx);
                return;
            }
        }
        match (route(&body), body) {
            (_, Body::Membership(msg)) => self.routes.membership.do_send(FromPeer { from, msg }),
            (_, Body::Sdfs(msg)) => self.routes.sdfs.do_send(sdfs_actor::FromPeer { from, msg }),
            (_, Body::Serve(msg)) => self
                .routes
                .serve
                .do_send(crate::serve::serve_actor::FromPeer { from, msg }),
            (targets, Body::Jobs(msg)) => {
                for to in targets {
                    match to {
                        To::Worker => self.routes.worker.do_send(worker_actor::FromPeer {
                            from: from.clone(),
                            msg: msg.clone(),
                        }),
                        // The coordinator actor also hosts this node's job client.
                        _ => self
                            .routes
                            .coordinator
                            .do_send(coordinator_actor::FromPeer {
                                from: from.clone(),
                                msg: msg.clone(),
                            }),
                    }
                }
            }
            (_, Body::Command(cmd)) => {
                let (tx, rx) = oneshot::channel();
                match command_route(&cmd) {
                    To::Membership => self.routes.membership.do_send(Exec { cmd, reply: tx }),
                    To::Sdfs => self
                        .routes
                        .sdfs
                        .do_send(sdfs_actor::Exec { cmd, reply: tx }),
                    To::JobClient => self
                        .routes
                        .coordinator
                        .do_send(coordinator_actor::Exec { cmd, reply: tx }),
                    _ => {
                        let _ = tx.send(Ok(crate::control::Reply::new(
                            crate::control::help_text(),
                            serde_json::json!({"help": crate::control::HELP.iter().map(|(u, d)| serde_json::json!({"usage": u, "what": d})).collect::<Vec<_>>()}),
                        )));
                    }
                }
                answer(responder, rx);
            }
            (_, Body::Outcome(_)) => warn!(peer = %from, "unexpected outcome message"),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // The transport shut down: the node is going away.
        ctx.stop();
    }
}
