//! Membership and failure detection: the SWIM-style member list ([`membership`]), the
//! per-peer prober ([`ping`]) and the introducer ([`introducer`]), each a pure state
//! machine, with the actor that drives it beside it (`*_actor`).

// The core carries the folder's name, as the actor beside it (`membership_actor`) does.
#[allow(clippy::module_inception)]
pub mod membership;
pub mod membership_actor;

mod gossip;
mod join;
mod monitors;
pub mod plausible;
mod settings;
mod update;

pub mod introducer;
pub mod introducer_actor;
pub mod ping;
pub mod ping_actor;

pub use self::membership::*;
pub use self::monitors::{compute_monitors, ring_monitors};
pub use self::update::{supersedes, Update, UpdateState};
