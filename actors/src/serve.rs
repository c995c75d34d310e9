//! Online inference (issue 17): the KServe v2 / Open Inference Protocol HTTP endpoint of a
//! node, the dynamic batcher behind it, and the execution of its batches on any node's
//! ModelActors.
//!
//! - [`http`]: the axum server (its own tokio runtime thread), protocol JSON, bearer
//!   token, `/metrics`, job endpoints.
//! - [`jobs_http`]: job endpoints (submit, status, results as JSON Lines).
//! - [`kserve`]: request parsing and response building (pure, unit-tested).
//! - [`batcher`]: the per-model queue that cuts batches (pure, unit-tested).
//! - [`serve_actor`]: the actix shell: queues requests, picks a node, sends the batch,
//!   runs batches other nodes send here, and answers.
//! - [`exec`]: the ModelActor's handler for a batch of raw inputs (logits out).
//! - [`tls`]: HTTPS (rustls) when a certificate is configured.
//! - [`msg`]: what nodes say to each other about it (`Body::Serve`, bulk lane).

pub mod batcher;
pub mod exec;
pub mod http;
pub mod jobs_http;
pub mod kserve;
pub mod msg;
pub mod serve_actor;
pub mod tls;

pub use msg::Msg;
