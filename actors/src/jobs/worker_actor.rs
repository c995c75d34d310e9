//! WorkerActor: the shell around the job [`Worker`] core. It runs the batches the
//! coordinator assigns: fetches the inputs from SDFS, runs the model's ModelActor, writes
//! one result per query into SDFS (before reporting, so a reported result is never lost),
//! and reports back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::clock;
use crate::jobs::coordinator_actor::{self, get_bytes, put_bytes, CoordinatorActor};
use crate::jobs::types::{result_name, JobId};
use crate::jobs::{Executed, Msg, RunBatch, Worker, WorkerEffect, WorkerSettings, WorkerTimer};
use crate::jobs::model_actor::{ClassifyBatch, ModelActor};
use crate::net::body::Body;
use crate::sdfs::sdfs_actor::SdfsActor;
use crate::net::transport::Transport;
use crate::types::NodeAddr;
use crate::net::wire::Lane;

/// A job message for the worker core.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromPeer {
    pub from: NodeAddr,
    pub msg: Msg,
}

/// What a worker writes to `results/<job>/<query>`: the query's output, or its error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryResult {
    pub job: String,
    pub query: String,
    pub model: String,
    /// Top-5 classes (empty when `error` is set).
    pub top5: Vec<dml_models::TopClass>,
    /// Why the input could not be classified (not an image, say).
    pub error: Option<String>,
    /// The network ran on synthetic weights: labels mean nothing.
    pub synthetic: bool,
    pub per_query_ms: f64,
    pub worker: String,
    pub at_wall_ms: u64,
}

pub struct WorkerActor {
    me: NodeAddr,
    core: Worker,
    transport: Transport<Body>,
    sdfs: Addr<SdfsActor>,
    models: Arc<HashMap<String, Addr<ModelActor>>>,
    coordinator: Addr<CoordinatorActor>,
    /// Jobs this node has started computing for: the first batch of each is logged as an
    /// event, which is when a job "starts executing" here.
    started: HashSet<JobId>,
}

impl WorkerActor {
    pub fn new(
        me: NodeAddr,
        transport: Transport<Body>,
        sdfs: Addr<SdfsActor>,
        models: HashMap<String, Addr<ModelActor>>,
        coordinator: Addr<CoordinatorActor>,
    ) -> Self {
        WorkerActor {
            me,
            core: Worker::new(WorkerSettings::default()),
            transport,
            sdfs,
            models: Arc::new(models),
            coordinator,
            started: HashSet::new(),
        }
    }

    fn exec(&mut self, effects: Vec<WorkerEffect>, ctx: &mut Context<Self>) {
        for effect in effects {
            match effect {
                WorkerEffect::Send { to, msg } => {
                    if to == self.me {
                        coordinator_actor::deliver_local(
                            &self.me,
                            msg,
                            &self.coordinator,
                            &ctx.address(),
                        );
                    } else if let Err(e) = self.transport.send(&to, Lane::Control, Body::Jobs(msg))
                    {
                        debug!(peer = %to, "job message dropped: {e}");
                    }
                }
                WorkerEffect::SetTimer { at, timer } => {
                    ctx.run_later(clock::until(at), move |act, ctx| act.on_timer(timer, ctx));
                }
                WorkerEffect::Execute(rb) => self.execute(rb, ctx),
            }
        }
    }

    fn on_timer(&mut self, timer: WorkerTimer, ctx: &mut Context<Self>) {
        let fx = self.core.on_timer(clock::now(), timer);
        self.exec(fx, ctx);
    }

    fn execute(&mut self, rb: RunBatch, ctx: &mut Context<Self>) {
        let sdfs = self.sdfs.clone();
        let models = self.models.clone();
        let me = self.me.clone();
        let batch = rb.batch;
        let first = self.started.insert(rb.job);
        let work = async move { run_batch(rb, sdfs, models, me, first).await };
        ctx.spawn(work.into_actor(self).map(move |ex, act, ctx| {
            let fx = act.core.on_executed(clock::now(), batch, ex);
            act.exec(fx, ctx);
        }));
    }
}

/// Fetch, classify, write. Inputs that cannot be fetched and results that cannot be
/// written are reported as failed (the coordinator retries them); an input that is not
/// an image gets an error *result* (it was processed; its output is the error).
async fn run_batch(
    rb: RunBatch,
    sdfs: Addr<SdfsActor>,
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
    let fetched = join_all(rb.queries.iter().map(|q| get_bytes(&sdfs, q.clone()))).await;
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
        async move { (q.clone(), put_bytes(&sdfs, name, data).await) }
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
        let fx = self.core.on_message(clock::now(), &m.from, m.msg);
        self.exec(fx, ctx);
    }
}
