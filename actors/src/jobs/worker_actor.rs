//! WorkerActor: the shell around the job [`Worker`] core. It runs the batches the
//! coordinator assigns: fetches the inputs from SDFS, runs the model's ModelActor, writes
//! one result object per batch into SDFS (before reporting, so a reported result is never lost),
//! and reports back through the [`Outbox`]. Each batch runs on the weights its job is
//! pinned to (a published version is fetched and loaded first); every few seconds the
//! actor reads each model's active version, loads it ahead of the jobs that will use
//! it, and tells the coordinator what this node serves.
//!
//! Not supervised: its state (the newest term seen, the batches running, the reports not
//! yet acknowledged) lives only here, and a restart that forgot it would let a fenced
//! coordinator's batches run again and leave reports unsent; a failed worker is instead
//! a failed node, whose batches the coordinator requeues.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use futures_util::future::join_all;
use tracing::{debug, info, warn};

use crate::clock;
use crate::jobs::archive;
use crate::jobs::model_actor::{ClassifyBatch, HasWeights, LoadWeights, ModelActor};
use crate::jobs::node_weights::{self, NodeWeights};
use crate::jobs::outbox::Outbox;
use crate::jobs::types::{result_name, JobId};
use crate::jobs::worker::{Effect, Input, Worker, WorkerSettings};
use crate::jobs::{Executed, RunBatch};
use crate::machine::Machine;
use crate::sdfs::client::SdfsClient;
use crate::types::NodeAddr;
use crate::weights::{Serving, WeightsPin};

/// How often the active versions are read and the coordinator told what this node serves.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

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
    /// Archives fetched for recent batches.
    cache: Shared<ArchiveCache>,
    weights: Arc<NodeWeights>,
    /// A watch of the active versions is running.
    watching: bool,
}

impl WorkerActor {
    /// The worker of node `outbox.me()`, running `models` (one ModelActor per network).
    pub fn new(
        outbox: Outbox,
        sdfs: SdfsClient,
        models: HashMap<String, Addr<ModelActor>>,
        weights: Arc<NodeWeights>,
    ) -> Self {
        let mut core = Worker::new(WorkerSettings::default());
        core.set_serving(weights.report());
        WorkerActor {
            core,
            outbox,
            sdfs,
            models: Arc::new(models),
            started: HashSet::new(),
            cache: Arc::default(),
            weights,
            watching: false,
        }
    }

    /// Tells the coordinator of the newest term what this node serves.
    fn report_serving(&self) {
        if let Some(t) = self.core.term() {
            let msg = crate::jobs::Msg::Serving(self.weights.report());
            if let Err(e) = self.outbox.send(&t.coordinator, msg) {
                debug!("serving report dropped: {e}");
            }
        }
    }

    /// Reads each model's active version, loads it where this node runs published
    /// versions (so that a switch costs the first batch nothing), then reports.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        if self.watching {
            return;
        }
        self.watching = true;
        let (sdfs, models, weights) =
            (self.sdfs.clone(), self.models.clone(), self.weights.clone());
        let work = async move {
            let served: Vec<(String, Serving)> = weights
                .models()
                .map(|(m, s)| (m.clone(), s.clone()))
                .collect();
            for (model, serving) in served {
                let active = match node_weights::active_record(&sdfs, &model).await {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(model, "active weights not read: {e}");
                        continue;
                    }
                };
                weights.set_active(&model, active.clone());
                let (Some(record), Serving::Cluster { .. }) = (active, serving) else {
                    continue;
                };
                let Some(addr) = models.get(&model) else {
                    continue;
                };
                let loaded = prepare(&sdfs, addr, &weights, &model, &record.pin()).await;
                weights.set_failed(&model, loaded.err());
            }
        };
        ctx.spawn(work.into_actor(self).map(|(), act, _ctx| {
            act.watching = false;
            act.report_serving();
        }));
    }

    fn drive(&mut self, input: Input, ctx: &mut Context<Self>) {
        let term = self.core.term().cloned();
        let fx = self.core.handle(clock::now(), input);
        if self.core.term() != term.as_ref() {
            // A new coordinator: it learns at once what this node serves.
            self.report_serving();
        }
        for effect in fx {
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
        let cache = self.cache.clone();
        let weights = self.weights.clone();
        let work = async move { run_batch(rb, sdfs, models, cache, weights, me, first).await };
        ctx.spawn(work.into_actor(self).map(move |ex, act, ctx| {
            act.drive(Input::Executed { batch, ex }, ctx);
        }));
    }
}

/// Archives fetched for recent batches, by (job, SDFS name), at most [`CACHE_BYTES`] in
/// all: the coordinator cuts batches from the head of a job's queue, so consecutive
/// batches mostly read the same archive, and a worker fetches it once for all of them.
#[derive(Default)]
pub struct ArchiveCache {
    map: HashMap<(JobId, String), CachedArchive>,
    bytes: usize,
    tick: u64,
}

struct CachedArchive {
    data: Arc<Vec<u8>>,
    entries: Arc<Vec<archive::Entry>>,
    used: u64,
}

/// The most archive bytes a worker keeps between batches.
pub const CACHE_BYTES: usize = 64 << 20;

type Shared<T> = Arc<Mutex<T>>;

/// An archive's bytes and its file entries.
type Unpacked = (Arc<Vec<u8>>, Arc<Vec<archive::Entry>>);

impl ArchiveCache {
    fn get(&mut self, key: &(JobId, String)) -> Option<Unpacked> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(key).map(|c| {
            c.used = tick;
            (c.data.clone(), c.entries.clone())
        })
    }

    fn insert(
        &mut self,
        key: (JobId, String),
        data: Arc<Vec<u8>>,
        entries: Arc<Vec<archive::Entry>>,
    ) {
        if data.len() > CACHE_BYTES {
            return;
        }
        self.tick += 1;
        self.bytes += data.len();
        if let Some(old) = self.map.insert(
            key,
            CachedArchive {
                data,
                entries,
                used: self.tick,
            },
        ) {
            self.bytes -= old.data.len();
        }
        while self.bytes > CACHE_BYTES {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(c) = self.map.remove(&oldest) {
                self.bytes -= c.data.len();
            }
        }
    }
}

/// One fetched input: the name a result shows, and the bytes to classify.
type Fetched = Result<(String, Vec<u8>), String>;

/// The inputs of a batch, in its order: each file fetched once, each archive fetched
/// (or found in the cache) once and cut into its entries.
async fn fetch_inputs(
    rb: &RunBatch,
    sdfs: &SdfsClient,
    cache: &Shared<ArchiveCache>,
) -> Vec<Fetched> {
    let mut archives: HashMap<String, Result<Unpacked, String>> = HashMap::new();
    for input in rb.inputs.iter().filter(|i| i.entry.is_some()) {
        if archives.contains_key(&input.source) {
            continue;
        }
        let key = (rb.job, input.source.clone());
        let cached = cache.lock().ok().and_then(|mut c| c.get(&key));
        let got = match cached {
            Some(hit) => Ok(hit),
            None => match sdfs.get_bytes(input.source.clone()).await {
                Ok(bytes) => match archive::entries(&bytes) {
                    Ok(es) => {
                        let hit = (Arc::new(bytes), Arc::new(es));
                        if let Ok(mut c) = cache.lock() {
                            c.insert(key, hit.0.clone(), hit.1.clone());
                        }
                        Ok(hit)
                    }
                    Err(e) => Err(format!("{}: {e}", input.source)),
                },
                Err(e) => Err(e),
            },
        };
        archives.insert(input.source.clone(), got);
    }
    let files = join_all(rb.inputs.iter().map(|i| {
        let sdfs = sdfs.clone();
        let name = i.source.clone();
        let is_file = i.entry.is_none();
        async move {
            if is_file {
                Some(sdfs.get_bytes(name).await)
            } else {
                None
            }
        }
    }))
    .await;
    rb.inputs
        .iter()
        .zip(files)
        .map(|(i, file)| match (i.entry, file) {
            (None, Some(r)) => r.map(|b| (i.source.clone(), b)),
            (Some(k), _) => match archives.get(&i.source) {
                Some(Ok((data, es))) => match es.get(k as usize) {
                    Some(e) => Ok((
                        format!("{}!{}", i.source, e.name),
                        data[e.offset..e.offset + e.len].to_vec(),
                    )),
                    None => Err(format!(
                        "{} has {} entries, not {} (replaced since the job began?)",
                        i.source,
                        es.len(),
                        k + 1
                    )),
                },
                Some(Err(e)) => Err(e.clone()),
                None => Err(format!("{} not fetched", i.source)),
            },
            (None, None) => Err(format!("{} not fetched", i.source)),
        })
        .collect()
}

/// Fetch, classify, write one result object for the batch. Inputs that cannot be
/// fetched are reported as failed (the coordinator retries them), and so is everything
/// when the object cannot be written; an input that is not an image gets an error
/// *result* (it was processed; its output is the error).
async fn run_batch(
    rb: RunBatch,
    sdfs: SdfsClient,
    models: Arc<HashMap<String, Addr<ModelActor>>>,
    cache: Shared<ArchiveCache>,
    weights: Arc<NodeWeights>,
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
            precision: None,
        };
    };
    let use_weights = match prepare(&sdfs, &model, &weights, &rb.model, &rb.weights).await {
        Ok(w) => w,
        Err(e) => {
            warn!(job = %rb.job, model = %rb.model, "batch not run: {e}");
            return Executed {
                results_written: Vec::new(),
                failed: rb.queries.clone(),
                compute_ms: 0,
                precision: None,
            };
        }
    };
    let fetched = fetch_inputs(&rb, &sdfs, &cache).await;
    let mut queries = Vec::new();
    let mut names = Vec::new();
    let mut images = Vec::new();
    for (q, r) in rb.queries.iter().zip(fetched) {
        match r {
            Ok((name, bytes)) => {
                queries.push(*q);
                names.push(name);
                images.push(bytes);
            }
            Err(e) => {
                warn!(job = %rb.job, query = q, "input not fetched: {e}");
                failed.push(*q);
            }
        }
    }
    // A batch whose inputs list is shorter than its queries (a malformed message) fails
    // the queries without an input.
    failed.extend(rb.queries.iter().skip(rb.inputs.len()).copied());
    if names.is_empty() {
        return Executed {
            results_written: Vec::new(),
            failed,
            compute_ms: 0,
            precision: None,
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
    let batch = ClassifyBatch {
        images,
        weights: use_weights,
    };
    let out = match model.send(batch).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            warn!("model failed: {e}");
            failed.extend(queries);
            return Executed {
                results_written: Vec::new(),
                failed,
                compute_ms: 0,
                precision: None,
            };
        }
        Err(e) => {
            warn!("model actor unavailable: {e}");
            failed.extend(queries);
            return Executed {
                results_written: Vec::new(),
                failed,
                compute_ms: 0,
                precision: None,
            };
        }
    };
    let per_query_ms = out.compute_ms / names.len() as f64;
    let wall = clock::wall_ms();
    let mut object = Vec::with_capacity(names.len() * 400);
    for ((q, name), r) in queries.iter().zip(names).zip(out.results) {
        let (top5, error) = match r {
            Ok(p) => (p.top5, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let result = QueryResult {
            job: rb.job.to_string(),
            q: *q,
            query: name,
            model: rb.model.clone(),
            top5,
            error,
            synthetic: out.synthetic,
            weights_version: match &rb.weights {
                WeightsPin::Published(p) => Some(p.version),
                WeightsPin::Unpublished => None,
            },
            weights: out.weights.clone(),
            bench_fixed_logits: out.fixed_logits,
            precision: out.precision.clone(),
            per_query_ms,
            worker: me.to_string(),
            at_wall_ms: wall,
        };
        if serde_json::to_writer(&mut object, &result).is_ok() {
            object.push(b'\n');
        }
    }
    match sdfs.put_bytes(result_name(rb.job, rb.batch), object).await {
        Ok(_) => Executed {
            results_written: queries,
            failed,
            compute_ms: out.compute_ms.round() as u64,
            precision: out.precision.clone(),
        },
        Err(e) => {
            warn!(job = %rb.job, batch = %rb.batch, "results not written: {e}");
            failed.extend(queries);
            Executed {
                results_written: Vec::new(),
                failed,
                compute_ms: out.compute_ms.round() as u64,
                precision: out.precision.clone(),
            }
        }
    }
}

/// Makes the weights of `pin` ready in the model actor: `None` runs the node's own
/// weights, `Some(sha)` a published version, fetched (or found in the cache) and loaded
/// first. Refuses weights this node does not serve.
async fn prepare(
    sdfs: &SdfsClient,
    model: &Addr<ModelActor>,
    weights: &NodeWeights,
    name: &str,
    pin: &WeightsPin,
) -> Result<Option<String>, String> {
    let serving = weights
        .serving(name)
        .ok_or_else(|| format!("this node does not run {name}"))?;
    match (serving, pin) {
        (Serving::Local { sha256 }, WeightsPin::Published(p)) if *sha256 != p.sha256 => {
            Err(format!(
                "pinned to {} but this node's local file is {}",
                pin.label(),
                crate::weights::short(sha256)
            ))
        }
        (Serving::Local { .. }, _)
        | (Serving::Cluster { synthetic: true }, WeightsPin::Unpublished) => Ok(None),
        (Serving::Cluster { synthetic: false }, WeightsPin::Unpublished) => Err(format!(
            "no weights for {name}: publish them with `dml weights publish {name} FILE` or copy \
             a file into weights/"
        )),
        (Serving::Cluster { .. }, WeightsPin::Published(p)) => {
            let (sha256, format) = (&p.sha256, &p.format);
            if !model
                .send(HasWeights(sha256.clone()))
                .await
                .map_err(|e| e.to_string())?
            {
                let path = weights.cached(sdfs, name, sha256, format).await?;
                let load = LoadWeights {
                    path,
                    sha256: sha256.clone(),
                };
                model.send(load).await.map_err(|e| e.to_string())??;
            }
            Ok(Some(sha256.clone()))
        }
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.watch(ctx);
        ctx.run_interval(WATCH_EVERY, |act, ctx| act.watch(ctx));
    }
}

impl Handler<FromPeer> for WorkerActor {
    type Result = ();
    fn handle(&mut self, m: FromPeer, ctx: &mut Context<Self>) {
        let FromPeer { from, msg } = m;
        self.drive(Input::Message { from, msg }, ctx);
    }
}
