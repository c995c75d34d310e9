//! WorkerActor: the shell around the job [`Worker`] core. It runs the batches the
//! coordinator assigns: fetches the inputs from SDFS, runs the model's ModelActor, writes
//! one result per query into SDFS (before reporting, so a reported result is never lost),
//! and reports back through the [`Outbox`].
//!
//! Not supervised: its state (the newest term seen, the batches running, the reports not
//! yet acknowledged) lives only here, and a restart that forgot it would let a fenced
//! coordinator's batches run again and leave reports unsent; a failed worker is instead
//! a failed node, whose batches the coordinator requeues.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::join_all;
use tracing::{debug, info, warn};

use crate::clock;
use crate::jobs::model_actor::{ClassifyBatch, ModelActor};
use crate::jobs::outbox::Outbox;
use crate::jobs::types::{result_name, JobId};
use crate::jobs::worker::{Effect, Input, Worker, WorkerSettings};
use crate::jobs::{Executed, RunBatch};
use crate::machine::Machine;
use crate::sdfs::client::SdfsClient;
use crate::types::NodeAddr;

pub use crate::jobs::outbox::FromPeer;
pub use crate::jobs::types::QueryResult;

/// The actor hosting a node's worker core.
pub struct WorkerActor {
    core: Worker,
    outbox: Outbox,
    sdfs: SdfsClient,
    models: Arc<HashMap<String, Addr<ModelActor>>>,
    /// Jobs this node has started computing for: the first batch of each is logged as an
    /// event, which is when a job "starts executing" here.
    started: HashSet<JobId>,
}

impl WorkerActor {
    /// The worker of node `outbox.me()`, running `models` (one ModelActor per network).
    pub fn new(
        outbox: Outbox,
        sdfs: SdfsClient,
        models: HashMap<String, Addr<ModelActor>>,
    ) -> Self {
        WorkerActor {
            core: Worker::new(WorkerSettings::default()),
            outbox,
            sdfs,
            models: Arc::new(models),
            started: HashSet::new(),
        }
    }

    fn drive(&mut self, input: Input, ctx: &mut Context<Self>) {
        for effect in self.core.handle(clock::now(), input) {
            match effect {
                Effect::Send { to, msg } => {
                    if let Err(e) = self.outbox.send(&to, msg) {
                        debug!(peer = %to, "job message dropped: {e}");
                    }
                }
                Effect::SetTimer { at, timer } => {
                    ctx.run_later(clock::until(at), move |act, ctx| {
                        act.drive(Input::Timer(timer), ctx)
                    });
                }
                Effect::Execute(rb) => self.execute(rb, ctx),
            }
        }
    }

    fn execute(&mut self, rb: RunBatch, ctx: &mut Context<Self>) {
        let sdfs = self.sdfs.clone();
        let models = self.models.clone();
        let me = self.outbox.me().clone();
        let batch = rb.batch;
        let first = self.started.insert(rb.job);
        let work = async move { run_batch(rb, sdfs, models, me, first).await };
        ctx.spawn(work.into_actor(self).map(move |ex, act, ctx| {
            act.drive(Input::Executed { batch, ex }, ctx);
        }));
    }
}

/// Fetch, classify, write. Inputs that cannot be fetched and results that cannot be
/// written are reported as failed (the coordinator retries them); an input that is not
/// an image gets an error *result* (it was processed; its output is the error).
async fn run_batch(
    rb: RunBatch,
    sdfs: SdfsClient,
    models: Arc<HashMap<String, Addr<ModelActor>>>,
    me: NodeAddr,
    first_of_job: bool,
) -> Executed {
    let mut failed = Vec::new();
    let Some(model) = models.get(&rb.model).cloned() else {
        warn!(model = %rb.model, "batch for a model this node does not serve");
        return Executed {
            results_written: Vec::new(),
            failed: rb.queries.clone(),
            compute_ms: 0,
        };
    };
    let fetched = join_all(rb.queries.iter().map(|q| sdfs.get_bytes(q.clone()))).await;
    let mut names = Vec::new();
    let mut images = Vec::new();
    for (q, r) in rb.queries.iter().zip(fetched) {
        match r {
            Ok(bytes) => {
                names.push(q.clone());
                images.push(bytes);
            }
            Err(e) => {
                warn!(query = %q, "input not fetched: {e}");
                failed.push(q.clone());
            }
        }
    }
    if names.is_empty() {
        return Executed {
            results_written: Vec::new(),
            failed,
            compute_ms: 0,
        };
    }
    if first_of_job {
        info!(
            wall = clock::wall_ms(),
            job = %rb.job,
            model = %rb.model,
            "event=job_compute_started"
        );
    }
    let out = match model.send(ClassifyBatch { images }).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            warn!("model failed: {e}");
            failed.extend(names);
            return Executed {
                results_written: Vec::new(),
                failed,
                compute_ms: 0,
            };
        }
        Err(e) => {
            warn!("model actor unavailable: {e}");
            failed.extend(names);
            return Executed {
                results_written: Vec::new(),
                failed,
                compute_ms: 0,
            };
        }
    };
    let per_query_ms = out.compute_ms / names.len() as f64;
    let wall = clock::wall_ms();
    let writes = names.iter().zip(out.results).map(|(q, r)| {
        let (top5, error) = match r {
            Ok(p) => (p.top5, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let result = QueryResult {
            job: rb.job.to_string(),
            query: q.clone(),
            model: rb.model.clone(),
            top5,
            error,
            synthetic: out.synthetic,
            per_query_ms,
            worker: me.to_string(),
            at_wall_ms: wall,
        };
        let data = serde_json::to_vec(&result).unwrap_or_default();
        let sdfs = sdfs.clone();
        let name = result_name(rb.job, q);
        async move { (q.clone(), sdfs.put_bytes(name, data).await) }
    });
    let mut written = Vec::new();
    for (q, r) in join_all(writes).await {
        match r {
            Ok(_) => written.push(q),
            Err(e) => {
                warn!(query = %q, "result not written: {e}");
                failed.push(q);
            }
        }
    }
    Executed {
        results_written: written,
        failed,
        compute_ms: out.compute_ms.round() as u64,
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;
}

impl Handler<FromPeer> for WorkerActor {
    type Result = ();
    fn handle(&mut self, m: FromPeer, ctx: &mut Context<Self>) {
        let FromPeer { from, msg } = m;
        self.drive(Input::Message { from, msg }, ctx);
    }
}
