//! The cluster's message body: every protocol's messages under one enum, carried in the
//! versioned [`crate::net::wire::Envelope`]. Adding a protocol adds a variant here.

use serde::{Deserialize, Serialize};

use crate::control::{Command, Outcome};
use crate::membership;

/// Everything one node (or `dml ctl`) can say to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Body {
    /// Failure detector, dissemination, joins (control lane).
    Membership(membership::Msg),
    /// A console command from `dml ctl` or the local console (a request).
    Command(Command),
    /// The answer to a [`Body::Command`].
    Outcome(Outcome),
    /// SDFS metadata (control lane) and file chunks (bulk lane).
    Sdfs(crate::sdfs::Msg),
    /// Inference jobs: coordinator, standby, workers, clients (control lane).
    Jobs(crate::jobs::Msg),
    /// Online inference: batches and their answers between nodes (bulk lane).
    Serve(crate::serve::Msg),
}

impl Body {
    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Membership(_) => "membership",
            Body::Command(_) => "command",
            Body::Outcome(_) => "outcome",
            Body::Sdfs(_) => "sdfs",
            Body::Jobs(_) => "jobs",
            Body::Serve(_) => "serve",
        }
    }
}

impl crate::net::transport::Message for Body {
    /// Tools (operators' `dml ctl`) send console commands, nothing else: membership,
    /// SDFS and job messages only come from nodes (a `Ping` from a tool made it a member).
    fn tool_may_send(&self) -> bool {
        matches!(self, Body::Command(_))
    }
}
