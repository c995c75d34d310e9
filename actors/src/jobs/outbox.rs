//! How the job actors reach each other and other nodes: one message type for both
//! actors ([`FromPeer`]) and one handle ([`Outbox`]) that sends a job message to a
//! node, delivering it in-process when the node is this one. Routing follows
//! `net::route`, the rule the TransportActor applies to messages from the wire, so a
//! message a node sends itself lands where it would have landed from another node.

use actix::prelude::*;

use super::msg::Msg;
use crate::net::body::Body;
use crate::net::route::{route, To};
use crate::net::transport::Transport;
use crate::net::wire::Lane;
use crate::types::NodeAddr;

/// A job message for one of this node's job actors (the coordinator actor also hosts
/// the job client).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromPeer {
    /// Sender.
    pub from: NodeAddr,
    /// Message.
    pub msg: Msg,
}

/// Sends job messages for the coordinator and worker actors. It holds the two actors as
/// recipients, so neither actor's file names the other.
#[derive(Clone)]
pub struct Outbox {
    me: NodeAddr,
    transport: Transport<Body>,
    worker: Recipient<FromPeer>,
    coordinator: Recipient<FromPeer>,
}

impl Outbox {
    /// An outbox of node `me`, with its two job actors.
    pub fn new(
        me: NodeAddr,
        transport: Transport<Body>,
        worker: Recipient<FromPeer>,
        coordinator: Recipient<FromPeer>,
    ) -> Self {
        Outbox {
            me,
            transport,
            worker,
            coordinator,
        }
    }

    /// This node.
    pub fn me(&self) -> &NodeAddr {
        &self.me
    }

    /// Sends `msg` to `to` (this node included); an error says why it was dropped.
    pub fn send(&self, to: &NodeAddr, msg: Msg) -> Result<(), String> {
        let body = Body::Jobs(msg);
        if *to != self.me {
            return self
                .transport
                .send(to, Lane::Control, body)
                .map_err(|e| e.to_string());
        }
        let targets = route(&body);
        let Body::Jobs(msg) = body else {
            return Ok(());
        };
        for target in targets {
            let local = FromPeer {
                from: self.me.clone(),
                msg: msg.clone(),
            };
            match target {
                To::Worker => self.worker.do_send(local),
                To::Coordinator | To::JobClient => self.coordinator.do_send(local),
                _ => {}
            }
        }
        Ok(())
    }
}
