//! Inference jobs: the coordinator core (batching, fair-time scheduling, hot standby
//! with epoch fencing, rebuild from SDFS), the worker core and the console statistics.
//!
//! Everything here is a pure state machine: no sockets, no clock, no actix. The actor
//! shells pass `now` and inputs in and execute the returned effects.
//!
//! Map:
//! - [`types`]: job and batch ids, fencing terms and reigns, manifests, configuration.
//! - [`msg`]: the protocol ([`Msg`]) and the replicated records.
//! - [`state`]: the replicated coordinator state and its rebuild from SDFS.
//! - [`coordinator`]: the coordinator/standby core.
//! - [`worker`]: the worker core.
//! - [`schedule`]: the fair-time policy.
//! - [`stats`]: C1, C2, C5.
//! - [`error`]: refusals and configuration errors.
#![deny(missing_docs)]

pub mod coordinator;
#[allow(missing_docs)] // moved in from the crate root; to document
pub mod coordinator_actor;
pub mod error;
pub mod msg;
pub mod schedule;
pub mod state;
pub mod stats;
pub mod types;
#[allow(missing_docs)] // moved in from the crate root; to document
pub mod model_actor;
pub mod worker;
#[allow(missing_docs)] // moved in from the crate root; to document
pub mod worker_actor;

pub use coordinator::{successor, Coordinator, Effect, RoleKind, Timer};
pub use error::{ConfigError, JobError};
pub use msg::{BatchDone, Msg, Record, RunBatch, StatusKind, StatusReport};
pub use state::{CoordState, ResultFound};
pub use types::{BatchId, JobId, JobManifest, JobsConfig, ModelSpec, QueryId, Reign, Term};
pub use worker::{Executed, Worker, WorkerEffect, WorkerSettings, WorkerTimer};
