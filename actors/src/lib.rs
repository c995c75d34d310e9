//! Everything that runs inside a dml node: the wire format, the protocol cores
//! (pure state machines: no sockets, no clock) and the actix actors that execute them.
//!
//! Map:
//! - [`types`]: identifiers shared by every layer (`NodeAddr`, `Incarnation`).
//! - [`wire`]: the versioned envelope, frame codec and handshake; all bytes live here.
//! - [`transport`]: authenticated, persistent TCP connections (control and bulk lanes).
//! - [`ping`], [`membership`]: failure-detector and membership cores.
//! - [`sdfs`]: replicated versioned file store (core, local store).
//! - [`jobs`]: inference-job coordinator core (scheduling, epochs, statistics).
//! - `*_actor`: thin actix shells around the cores.
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod control;
pub mod jobs;
pub mod machine;
pub mod membership;
pub mod metrics;
pub mod net;
pub mod node;
pub mod sdfs;
pub mod serve;
pub mod types;
pub mod weights;
