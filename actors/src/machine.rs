//! The one shape every protocol core has: `handle(now, input) -> effects`.
//!
//! A core (membership, prober, introducer, SDFS, coordinator, worker, job client) is a
//! plain state machine: no socket, no clock, no actix, no randomness it did not get a
//! seed for. Everything that happens to it arrives as one `Input` value together with
//! the caller's `now`; everything it wants done comes back as a list of `Effect`s, in
//! the order they must be executed. Actors are shells that turn the world into inputs
//! and effects into sends, timers and disk work; the simulations (`actors/tests/sim`)
//! do the same on a virtual clock.
//!
//! Every core's `Effect` enum speaks the same vocabulary for what all of them do:
//! - `Send { to, msg }`: send `msg` to the node `to` (possibly this node itself);
//! - `SetTimer { at, timer }`: hand `timer` back as an input at the absolute time `at`
//!   on the caller's clock (never a delay: a shell that runs late fires it at once);
//! - `Event(..)`: something for the log or the console, never a decision.
//!
//! Anything else an effect asks for (read a file, deliver bytes, answer a console
//! request) is a variant of that core's own enum. Timers carry enough (a sequence
//! number, an epoch, a token) for a stale one to be recognised and ignored, so shells
//! never cancel timers.

use crate::types::Millis;

/// A protocol core: one entry point, effects out.
pub trait Machine {
    /// Everything that can happen to the core.
    type Input;
    /// Everything the core can ask its shell to do.
    type Effect;

    /// Applies `input` at time `now` and returns what to do, in order.
    fn handle(&mut self, now: Millis, input: Self::Input) -> Vec<Self::Effect>;
}
