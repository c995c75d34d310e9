//! TransportActor: the session actor between the transport and the node's actors. It
//! consumes the authenticated inbound stream and routes each message by protocol:
//! membership to the MembershipActor, console commands to their executor, and so on.
//! It makes no decisions of its own.

use actix::prelude::*;
use futures_util::stream;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::control::{Command, Outcome};
use crate::coordinator_actor::{self, CoordinatorActor};
use crate::membership_actor::{Exec, FromPeer, MembershipActor};
use crate::msg::Body;
use crate::sdfs_actor::{self, SdfsActor};
use crate::transport::{Inbound, Responder};
use crate::worker_actor::{self, WorkerActor};

/// Where the messages of each protocol go.
#[derive(Clone)]
pub struct Routes {
    pub membership: Addr<MembershipActor>,
    pub sdfs: Addr<SdfsActor>,
    pub coordinator: Addr<CoordinatorActor>,
    pub worker: Addr<WorkerActor>,
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
            if let Err(e) = r.respond(Body::Outcome(outcome)) {
                debug!("reply not delivered: {e}");
            }
        }
    });
}

impl StreamHandler<Inbound<Body>> for TransportActor {
    fn handle(&mut self, m: Inbound<Body>, _ctx: &mut Context<Self>) {
        let Inbound {
            from,
            body,
            responder,
            ..
        } = m;
        match body {
            Body::Membership(msg) => self.routes.membership.do_send(FromPeer { from, msg }),
            Body::Sdfs(msg) => self.routes.sdfs.do_send(sdfs_actor::FromPeer { from, msg }),
            Body::Jobs(msg) => {
                if msg.is_for_worker() {
                    self.routes.worker.do_send(worker_actor::FromPeer {
                        from: from.clone(),
                        msg: msg.clone(),
                    });
                }
                // Coordinator-bound messages, and answers to this node's client requests.
                if !msg.is_for_worker() || msg.is_for_coordinator() {
                    self.routes
                        .coordinator
                        .do_send(coordinator_actor::FromPeer { from, msg });
                }
            }
            Body::Command(cmd) => {
                let (tx, rx) = oneshot::channel();
                match cmd {
                    Command::Join
                    | Command::Leave
                    | Command::ListMem
                    | Command::ListSelf
                    | Command::Stats => {
                        self.routes.membership.do_send(Exec { cmd, reply: tx });
                    }
                    Command::Put { .. }
                    | Command::Get { .. }
                    | Command::Delete { .. }
                    | Command::Ls { .. }
                    | Command::LsPrefix { .. }
                    | Command::Store
                    | Command::GetVersions { .. } => {
                        self.routes
                            .sdfs
                            .do_send(sdfs_actor::Exec { cmd, reply: tx });
                    }
                    Command::C1
                    | Command::C2
                    | Command::C3 { .. }
                    | Command::C4 { .. }
                    | Command::C4Results { .. }
                    | Command::C5 => {
                        self.routes
                            .coordinator
                            .do_send(coordinator_actor::Exec { cmd, reply: tx });
                    }
                    Command::Help => {
                        let _ = tx.send(Ok(crate::control::Reply::new(
                            crate::control::help_text(),
                            serde_json::json!({"help": crate::control::HELP.iter().map(|(u, d)| serde_json::json!({"usage": u, "what": d})).collect::<Vec<_>>()}),
                        )));
                    }
                }
                answer(responder, rx);
            }
            Body::Outcome(_) => warn!(peer = %from, "unexpected outcome message"),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // The transport shut down: the node is going away.
        ctx.stop();
    }
}
