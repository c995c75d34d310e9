//! The one rule that says which of a node's subsystems an inbound message is for. The
//! TransportActor, the in-process benchmark hosts and the jobs simulation all route
//! through [`route`], so they cannot disagree.

use crate::control::Command;
use crate::net::body::Body;

/// A subsystem of a node that messages are delivered to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum To {
    /// The membership core (and through it the probers).
    Membership,
    /// The SDFS core.
    Sdfs,
    /// The coordinator core (coordinator, standby or plain member).
    Coordinator,
    /// The worker core.
    Worker,
    /// This node's job client: answers to the requests its console sent.
    JobClient,
    /// A console command: see [`command_route`] for which subsystem executes it.
    Console,
    /// Online inference (the ServeActor).
    Serve,
    /// Nothing on a node takes it (an `Outcome` arriving as a request).
    Nobody,
}

/// The subsystems `body` goes to, in delivery order (a jobs `Fenced` or `Reign` goes to
/// both the worker and the coordinator core).
pub fn route(body: &Body) -> &'static [To] {
    match body {
        Body::Membership(_) => &[To::Membership],
        Body::Sdfs(_) => &[To::Sdfs],
        Body::Command(_) => &[To::Console],
        Body::Outcome(_) => &[To::Nobody],
        Body::Serve(_) => &[To::Serve],
        Body::Jobs(msg) => match (msg.is_for_worker(), msg.is_for_coordinator()) {
            (true, true) => &[To::Worker, To::Coordinator],
            (true, false) => &[To::Worker],
            (false, true) => &[To::Coordinator],
            (false, false) => &[To::JobClient],
        },
    }
}

/// Which subsystem executes a console command (`Console` for the ones the console
/// answers itself, such as `help`).
pub fn command_route(cmd: &Command) -> To {
    match cmd {
        Command::Join
        | Command::Leave
        | Command::ListMem
        | Command::ListSelf
        | Command::Stats
        | Command::Forgive { .. } => To::Membership,
        Command::PutBegin { .. }
        | Command::PutData { .. }
        | Command::GetBegin { .. }
        | Command::GetData { .. }
        | Command::TransferEnd { .. }
        | Command::Delete { .. }
        | Command::Ls { .. }
        | Command::LsPrefix { .. }
        | Command::Store { .. } => To::Sdfs,
        Command::C1
        | Command::C2
        | Command::C3 { .. }
        | Command::C4 { .. }
        | Command::C4Results { .. }
        | Command::C5 => To::JobClient,
        Command::Help => To::Console,
    }
}

/// Whether a command only reads (listings, file reads, job results, statistics), so that
/// a read-only operator may run it. Matched exhaustively: a new command must be judged.
pub fn is_read_only(cmd: &Command) -> bool {
    match cmd {
        Command::ListMem
        | Command::ListSelf
        | Command::Help
        | Command::GetBegin { .. }
        | Command::GetData { .. }
        | Command::TransferEnd { .. }
        | Command::Ls { .. }
        | Command::LsPrefix { .. }
        | Command::Store { .. }
        | Command::C1
        | Command::C2
        | Command::C4Results { .. }
        | Command::C5
        | Command::Stats => true,
        Command::Join
        | Command::Leave
        | Command::PutBegin { .. }
        | Command::PutData { .. }
        | Command::Forgive { .. }
        | Command::Delete { .. }
        | Command::C3 { .. }
        | Command::C4 { .. } => false,
    }
}
