//! Inference jobs: the coordinator core (batching, fair-time scheduling, hot standby
//! with epoch fencing, rebuild from SDFS), the worker core, the job client core, the
//! console statistics, and the actors that host them.
//!
//! The cores are pure state machines (`crate::machine::Machine`): no sockets, no clock,
//! no actix. The actor shells pass `now` and inputs in and execute the returned effects.
//!
//! Map (each module depends only on those above it):
//! - [`archive`]: tar archives as job inputs (one query per file entry).
//! - [`types`], [`error`]: job and batch ids, fencing terms and reigns, manifests,
//!   result files, configuration; refusals and configuration errors.
//! - [`record`]: the records the coordinator replicates to its standby.
//! - [`state`]: the replicated coordinator state and its rebuild from SDFS.
//! - [`stats`]: C1, C2 and the C5 rows.
//! - [`msg`]: the protocol ([`Msg`]).
//! - [`schedule`]: the fair-time policy.
//! - [`coordinator`]: the coordinator/standby core.
//! - [`worker`]: the worker core.
//! - [`client`]: the job client core (this node's console requests).
//! - [`outbox`]: how the job actors reach each other and other nodes.
//! - [`coordinator_actor`], [`worker_actor`], [`model_actor`]: the actor shells.
#![deny(missing_docs)]

pub mod archive;
pub mod client;
pub mod coordinator;
pub mod coordinator_actor;
pub mod error;
pub mod model_actor;
pub mod msg;
pub mod node_weights;
pub mod outbox;
pub mod record;
pub mod schedule;
pub mod state;
pub mod stats;
pub mod types;
pub mod worker;
pub mod worker_actor;

pub use client::Client;
pub use coordinator::{successor, Coordinator, RoleKind};
pub use error::{ConfigError, JobError};
pub use msg::{BatchDone, Msg, RunBatch, StatusKind, StatusReport};
pub use record::Record;
pub use state::{CoordState, ResultFound};
pub use types::{BatchId, JobId, JobManifest, JobsConfig, ModelSpec, QueryId, Reign, Term};
pub use worker::{Executed, Worker, WorkerSettings};
