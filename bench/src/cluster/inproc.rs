//! In-process nodes for `dml bench cluster`: membership and transport only, for cluster
//! sizes whose full node processes (each with both networks loaded) would not fit in
//! memory.

use std::time::Duration;

use actix::{Actor, Addr};
use anyhow::{anyhow, Context};
use dml_actors::clock::wall_ms;
use dml_actors::config::Config;
use dml_actors::membership::membership_actor::{Exec, FromPeer, MembershipActor};
use dml_actors::membership::ping::ProbeSettings;
use dml_actors::membership::Membership;
use dml_actors::net::body::Body;
use dml_actors::net::route::{command_route, route, To};
use dml_actors::net::transport::{Inbound, Transport};
use dml_actors::node::membership_settings;
use dml_actors::types::NodeAddr;
use dml_cluster::Cluster;
use tokio::sync::mpsc;

/// The nodes of a [`Cluster`] started with `spawn_nodes = false`, hosted on one
/// actix system in a thread of this process. Each node has its own transport (its own
/// listening port and loopback connections) and its own MembershipActor with its
/// PingActors, so pings, acks, gossip and announces cross the wire exactly as between
/// processes; what is missing is SDFS, the models and the jobs, which send nothing in a
/// quiet cluster. Dropping it stops the nodes.
pub(super) struct InProcNodes {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcNodes {
    pub(super) fn start(c: &Cluster) -> anyhow::Result<Self> {
        let config = dml_actors::config::load(&c.layout.config, &[])?;
        let addrs: Vec<NodeAddr> = c
            .layout
            .nodes
            .iter()
            .map(|n| NodeAddr(n.1.clone()))
            .collect();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("bench-nodes".into())
            .spawn(move || {
                actix::System::new().block_on(host_nodes(config, addrs, ready_tx, stop_rx));
            })
            .context("cannot start the node thread")?;
        let nodes = InProcNodes {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => Ok(nodes),
            Ok(Err(e)) => Err(anyhow!("in-process nodes: {e}")),
            Err(_) => Err(anyhow!("in-process nodes did not start")),
        }
    }
}

impl Drop for InProcNodes {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

/// Starts every node, reports readiness (or the first error), runs until `stop`.
async fn host_nodes(
    config: Config,
    addrs: Vec<NodeAddr>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut transports = Vec::new();
    for me in addrs {
        match host_one(&config, me).await {
            Ok(t) => transports.push(t),
            Err(e) => {
                let _ = ready.send(Err(format!("{e:#}")));
                return;
            }
        }
    }
    let _ = ready.send(Ok(()));
    let _ = stop.await;
    for t in &transports {
        t.shutdown();
    }
}

/// One node as `dml node` assembles it, minus SDFS, models and jobs.
async fn host_one(config: &Config, me: NodeAddr) -> anyhow::Result<Transport<Body>> {
    let listener = tokio::net::TcpListener::bind(me.as_str())
        .await
        .with_context(|| format!("cannot listen on {me}"))?;
    let tcfg = dml_actors::net::security::transport_config(config, &me);
    let (transport, inbound) = Transport::<Body>::start(listener, tcfg)?;
    let core = Membership::new(me.clone(), membership_settings(config), wall_ms())?;
    let probe = ProbeSettings {
        ping_duration: millis(config.fd.ping_duration),
        ping_timeout: millis(config.fd.ping_timeout),
    };
    let membership = MembershipActor::new(core, transport.clone(), probe, true).start();
    actix::spawn(route_inbound(inbound, membership));
    Ok(transport)
}

/// The part of the TransportActor these nodes need, routed by the node's one rule:
/// membership messages to the MembershipActor, and the console commands it executes
/// (`list_mem`, `stats`) to it with the answer back. Everything else is for subsystems
/// these nodes do not host and is dropped (a command's asker then sees no answer).
async fn route_inbound(
    mut inbound: mpsc::Receiver<Inbound<Body>>,
    membership: Addr<MembershipActor>,
) {
    while let Some(m) = inbound.recv().await {
        let Inbound {
            from,
            body,
            responder,
            ..
        } = m;
        match (route(&body), body) {
            ([To::Membership], Body::Membership(msg)) => membership.do_send(FromPeer { from, msg }),
            ([To::Console], Body::Command(cmd)) if command_route(&cmd) == To::Membership => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                membership.do_send(Exec { cmd, reply: tx });
                actix::spawn(async move {
                    let outcome = rx.await.unwrap_or_else(|_| Err("node stopped".into()));
                    if let Some(r) = responder {
                        let _ = r.respond(Body::Outcome(outcome));
                    }
                });
            }
            _ => {}
        }
    }
}
