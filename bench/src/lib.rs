//! The benchmarks behind `dml bench ...`: `cluster` (failure detection, background
//! traffic, false removals), `idunno` (the inference assignment's measurements), `pings`
//! (ping round trips under load), `jobs-churn` (a job under two waves of kill -9),
//! `models` (forward-pass speed), `scale` (jobs of up to a million queries around a
//! fixed-logits model), `chaos` (a fault-injection soak of SDFS with a
//! checker) and `weights` (roll-out of published weights, a version switch under load). Each prints its
//! figures; the binary only parses the options and calls `run`.

pub mod chaos;
pub mod cluster;
pub mod idunno;
pub mod images;
pub mod jobs_churn;
pub mod logs;
pub mod models;
pub mod pings;
pub mod scale;
pub mod serve;
pub mod session;
pub mod stats;
pub mod weights;
