//! CoordinatorActor: the shell around the job [`Coordinator`] core (coordinator, hot
//! standby or plain member, as the core decides). It also serves this node's console job
//! commands (C1-C5) as a client of whichever node coordinates, and performs the SDFS
//! work the core asks for (list inputs, write manifests, rebuild from SDFS).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::clock;
use crate::control::{Command, Outcome, Reply};
use crate::jobs::types::{job_of_name, manifest_name, parse_result_name};
use crate::jobs::{
    Coordinator, Effect, JobId, JobManifest, JobsConfig, Msg, ResultFound, StatusKind,
    StatusReport, Timer,
};
use crate::membership::membership_actor::View;
use crate::net::body::Body;
use crate::sdfs::sdfs_actor::{self, GetBytes, ListPrefix, PutBytes, SdfsActor};
use crate::net::transport::Transport;
use crate::types::NodeAddr;
use crate::net::wire::Lane;
use crate::jobs::worker_actor::{self, QueryResult, WorkerActor};

/// A job message for the coordinator core (or an answer to this node's client requests).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromPeer {
    pub from: NodeAddr,
    pub msg: Msg,
}

/// A job console command: C1-C5.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Exec {
    pub cmd: Command,
    pub reply: oneshot::Sender<Outcome>,
}

/// Tells the coordinator where this node's worker is (they are created together).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetWorker(pub Addr<WorkerActor>);

/// Routes a job message this node sent to itself, as if it had come over the wire.
pub fn deliver_local(
    me: &NodeAddr,
    msg: Msg,
    coordinator: &Addr<CoordinatorActor>,
    worker: &Addr<WorkerActor>,
) {
    if msg.is_for_worker() {
        worker.do_send(worker_actor::FromPeer {
            from: me.clone(),
            msg: msg.clone(),
        });
    }
    if !msg.is_for_worker() || msg.is_for_coordinator() {
        coordinator.do_send(FromPeer {
            from: me.clone(),
            msg,
        });
    }
}

/// How long a client request waits for the coordinator.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

pub struct CoordinatorActor {
    me: NodeAddr,
    core: Coordinator,
    transport: Transport<Body>,
    sdfs: Addr<SdfsActor>,
    worker: Option<Addr<WorkerActor>>,
    /// This node's outstanding client requests, by request id.
    pending: HashMap<u64, oneshot::Sender<Msg>>,
    next_request: u64,
    ring: Vec<NodeAddr>,
    live: Vec<NodeAddr>,
    /// How long the first live node waits for news of a reign before starting one.
    bootstrap_grace: Duration,
    bootstrap_armed: bool,
    /// Client requests waiting for a coordinator to be known.
    deferred: Vec<Msg>,
}

impl CoordinatorActor {
    pub fn new(
        me: NodeAddr,
        cfg: JobsConfig,
        transport: Transport<Body>,
        sdfs: Addr<SdfsActor>,
        ring: Vec<NodeAddr>,
        bootstrap_grace: Duration,
    ) -> Self {
        CoordinatorActor {
            core: Coordinator::new(me.clone(), cfg),
            me,
            transport,
            sdfs,
            worker: None,
            pending: HashMap::new(),
            // Unique across restarts: a resubmission is recognised by (client, request id).
            next_request: clock::wall_ms().saturating_mul(1000),
            ring,
            live: Vec::new(),
            bootstrap_grace,
            bootstrap_armed: false,
            deferred: Vec::new(),
        }
    }

    /// Where this node's worker is (set before the actor starts).
    pub fn set_worker(&mut self, worker: Addr<WorkerActor>) {
        self.worker = Some(worker);
    }

    fn send(&self, to: &NodeAddr, msg: Msg, ctx: &mut Context<Self>) {
        if *to == self.me {
            match &self.worker {
                Some(w) => deliver_local(&self.me, msg, &ctx.address(), w),
                None => ctx.address().do_send(FromPeer {
                    from: self.me.clone(),
                    msg,
                }),
            }
        } else if let Err(e) = self.transport.send(to, Lane::Control, Body::Jobs(msg)) {
            warn!(peer = %to, "job message dropped: {e}");
        }
    }

    fn exec(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        self.flush_deferred(ctx);
        for effect in effects {
            match effect {
                Effect::Send { to, msg } => self.send(&to, msg, ctx),
                Effect::SetTimer { at, timer } => {
                    ctx.run_later(clock::until(at), move |act, ctx| act.on_timer(timer, ctx));
                }
                Effect::ListInputs {
                    client,
                    request_id,
                    model,
                    input,
                } => {
                    let sdfs = self.sdfs.clone();
                    let prefix = input.clone();
                    ctx.spawn(
                        async move { list_inputs(&sdfs, &prefix).await }
                            .into_actor(self)
                            .map(move |names, act, ctx| {
                                let fx = act.core.submit(
                                    clock::now(),
                                    client,
                                    request_id,
                                    &model,
                                    &input,
                                    names,
                                );
                                act.exec(fx, ctx);
                            }),
                    );
                }
                Effect::WriteManifest { manifest } => self.write_manifest(manifest, ctx),
                Effect::LoadJobsFromSdfs { term } => {
                    let sdfs = self.sdfs.clone();
                    ctx.spawn(
                        async move { load_from_sdfs(&sdfs).await }
                            .into_actor(self)
                            .map(move |(manifests, results), act, ctx| {
                                info!(
                                    wall = clock::wall_ms(),
                                    manifests = manifests.len(),
                                    results = results.len(),
                                    "event=jobs_rebuilt_from_sdfs"
                                );
                                let fx =
                                    act.core
                                        .on_sdfs_loaded(clock::now(), term, manifests, results);
                                act.exec(fx, ctx);
                            }),
                    );
                }
                Effect::RoleChanged { role, reign } => {
                    ctx.notify(Flush);
                    info!(
                        wall = clock::wall_ms(),
                        ?role,
                        epoch = reign.term.epoch,
                        coordinator = %reign.term.coordinator,
                        standby = ?reign.standby.as_ref().map(|s| s.to_string()),
                        "event=role"
                    );
                }
            }
        }
    }

    fn write_manifest(&mut self, manifest: JobManifest, ctx: &mut Context<Self>) {
        let sdfs = self.sdfs.clone();
        let id = manifest.id;
        let data = serde_json::to_vec(&manifest).unwrap_or_default();
        ctx.spawn(
            async move { put_bytes(&sdfs, manifest_name(id), data).await }
                .into_actor(self)
                .map(move |r, act, ctx| match r {
                    Ok(_) => {
                        let fx = act.core.on_manifest_written(clock::now(), id);
                        act.exec(fx, ctx);
                    }
                    Err(e) => {
                        warn!(job = %id, "manifest not written ({e}); retrying");
                        ctx.run_later(Duration::from_secs(1), move |act, ctx| {
                            act.write_manifest(manifest, ctx)
                        });
                    }
                }),
        );
    }

    fn on_timer(&mut self, timer: Timer, ctx: &mut Context<Self>) {
        let fx = self.core.on_timer(clock::now(), timer);
        self.exec(fx, ctx);
    }

    /// The first live node of the ring starts the first reign if, after a grace period,
    /// it has heard of none (a running coordinator announces its reign to joiners).
    fn maybe_bootstrap(&mut self, ctx: &mut Context<Self>) {
        if self.core.reign().is_some() || self.bootstrap_armed {
            return;
        }
        let first = self.ring.iter().find(|a| self.live.contains(a));
        if first != Some(&self.me) {
            return;
        }
        self.bootstrap_armed = true;
        ctx.run_later(self.bootstrap_grace, |act, ctx| {
            act.bootstrap_armed = false;
            let first = act.ring.iter().find(|a| act.live.contains(a)).cloned();
            if act.core.reign().is_none() && first.as_ref() == Some(&act.me) {
                // The job ids SDFS already holds (a cluster restarted on its old data):
                // the first reign starts above their epochs.
                let sdfs = act.sdfs.clone();
                act.bootstrap_armed = true;
                ctx.spawn(async move { used_epoch(&sdfs).await }.into_actor(act).map(
                    |used, act, ctx| {
                        act.bootstrap_armed = false;
                        if act.core.reign().is_some() {
                            return;
                        }
                        info!(
                            wall = clock::wall_ms(),
                            used_epoch = used,
                            "event=bootstrap (no coordinator known: starting the first reign)"
                        );
                        let fx = act.core.bootstrap(clock::now(), &act.live.clone(), used);
                        act.exec(fx, ctx);
                    },
                ));
            }
        });
    }

    /// Sends a client request to the coordinator and waits for the answer.
    fn request(
        &mut self,
        make: impl FnOnce(u64) -> Msg,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Msg> {
        let id = self.next_request;
        self.next_request += 1;
        let (tx, rx) = oneshot::channel();
        self.pending.insert(id, tx);
        // Until a reign is known (cluster just formed) requests wait, then go out.
        self.deferred.push(make(id));
        self.flush_deferred(ctx);
        ctx.run_later(REQUEST_TIMEOUT, move |act, _| {
            act.pending.remove(&id);
        });
        rx
    }

    fn flush_deferred(&mut self, ctx: &mut Context<Self>) {
        if self.deferred.is_empty() {
            return;
        }
        if let Some(coordinator) = self.core.reign().map(|r| r.term.coordinator.clone()) {
            for msg in std::mem::take(&mut self.deferred) {
                self.send(&coordinator, msg, ctx);
            }
        }
    }

    fn coordinator_name(&self) -> String {
        self.core.reign().map_or_else(
            || "none yet".to_string(),
            |r| r.term.coordinator.to_string(),
        )
    }
}

/// Stores bytes as a new version of `name` in SDFS.
pub async fn put_bytes(sdfs: &Addr<SdfsActor>, name: String, data: Vec<u8>) -> Result<u64, String> {
    let (reply, rx) = oneshot::channel();
    sdfs.do_send(PutBytes { name, data, reply });
    rx.await
        .map_err(|_| "sdfs dropped the request".to_string())?
}

/// The latest version of `name` from SDFS.
pub async fn get_bytes(sdfs: &Addr<SdfsActor>, name: String) -> Result<Vec<u8>, String> {
    let (reply, rx) = oneshot::channel();
    sdfs.do_send(GetBytes { name, reply });
    rx.await
        .map_err(|_| "sdfs dropped the request".to_string())?
}

/// SDFS names under a prefix.
pub async fn list_prefix(sdfs: &Addr<SdfsActor>, prefix: String) -> Result<Vec<String>, String> {
    let (reply, rx) = oneshot::channel();
    sdfs.do_send(ListPrefix { prefix, reply });
    rx.await
        .map_err(|_| "sdfs dropped the request".to_string())?
}

/// Names that are `input` itself or lie under `input/`.
async fn list_inputs(sdfs: &Addr<SdfsActor>, input: &str) -> Vec<String> {
    let dir = input.trim_end_matches('/').to_string();
    match list_prefix(sdfs, dir.clone()).await {
        Ok(names) => names
            .into_iter()
            .filter(|n| *n == dir || n.starts_with(&format!("{dir}/")))
            .collect(),
        Err(e) => {
            warn!(%input, "cannot list inputs: {e}");
            Vec::new()
        }
    }
}

async fn load_from_sdfs(sdfs: &Addr<SdfsActor>) -> (Vec<JobManifest>, Vec<ResultFound>) {
    let names = list_prefix(sdfs, "jobs/".into()).await.unwrap_or_default();
    let manifests = join_all(
        names
            .into_iter()
            .filter(|n| n.ends_with(".manifest"))
            .map(|n| get_bytes(sdfs, n)),
    )
    .await
    .into_iter()
    .filter_map(|r| {
        r.ok()
            .and_then(|b| serde_json::from_slice::<JobManifest>(&b).ok())
    })
    .collect();
    let names: Vec<(String, JobId, String)> = list_prefix(sdfs, "results/".into())
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| parse_result_name(&n).map(|(job, query)| (n, job, query)))
        .collect();
    // Each result file records its processing time, worker and wall time: read them, so
    // that C1 and C2 survive losing coordinator and standby together. A file that cannot
    // be read still counts as a result (its name proves it was written), without timing.
    let (now, now_wall) = (clock::now(), clock::wall_ms());
    let mut results = Vec::with_capacity(names.len());
    for chunk in names.chunks(32) {
        let files = join_all(chunk.iter().map(|(n, _, _)| get_bytes(sdfs, n.clone()))).await;
        for ((_, job, query), file) in chunk.iter().zip(files) {
            let rec = file
                .ok()
                .and_then(|b| serde_json::from_slice::<QueryResult>(&b).ok())
                .filter(|r| r.query == *query && r.job == job.to_string());
            results.push(ResultFound {
                job: *job,
                query: query.clone(),
                per_query_ms: rec.as_ref().map(|r| r.per_query_ms),
                // Commit times are on this process's monotonic clock, the file has wall time.
                at: rec
                    .as_ref()
                    .map(|r| now.saturating_sub(now_wall.saturating_sub(r.at_wall_ms))),
                worker: rec.map(|r| NodeAddr(r.worker)),
            });
        }
    }
    (manifests, results)
}

fn refusal(msg: Msg) -> String {
    match msg {
        Msg::Refused { error, .. } => error.to_string(),
        other => format!("unexpected answer from the coordinator: {other:?}"),
    }
}

fn no_answer(coordinator: &str) -> String {
    format!(
        "the coordinator ({coordinator}) did not answer; try again (a takeover may be in progress)"
    )
}

fn format_report(report: StatusReport) -> Reply {
    match report {
        StatusReport::Rates(rows) => {
            let mut text = String::from(
                "job      model          rate(q/s, 10 s)  processed/total  failed  state",
            );
            for r in &rows {
                text.push_str(&format!(
                    "\n{:<8} {:<14} {:>15.2}  {:>7}/{:<7}  {:>6}  {}",
                    r.job.to_string(),
                    r.model,
                    r.rate_qps,
                    r.processed,
                    r.total,
                    r.failed,
                    if r.complete { "complete" } else { "running" }
                ));
            }
            if rows.is_empty() {
                text.push_str("\n(no jobs)");
            }
            Reply::new(text, serde_json::to_value(&rows).unwrap_or_default())
        }
        StatusReport::Times(rows) => {
            let mut text = String::from("job      model          count   mean(ms)   std(ms)  median(ms)  p90(ms)  p95(ms)  p99(ms)");
            for r in &rows {
                match &r.stats {
                    Some(s) => text.push_str(&format!(
                        "\n{:<8} {:<14} {:>5} {:>10.1} {:>9.1} {:>11.1} {:>8.1} {:>8.1} {:>8.1}",
                        r.job.to_string(),
                        r.model,
                        s.count,
                        s.mean_ms,
                        s.std_ms,
                        s.median_ms,
                        s.p90_ms,
                        s.p95_ms,
                        s.p99_ms
                    )),
                    None => text.push_str(&format!(
                        "\n{:<8} {:<14} (no queries yet)",
                        r.job.to_string(),
                        r.model
                    )),
                }
            }
            if rows.is_empty() {
                text.push_str("\n(no jobs)");
            }
            Reply::new(text, serde_json::to_value(&rows).unwrap_or_default())
        }
        StatusReport::Assignment { nodes, shares } => {
            let mut text =
                String::from("node                   job      model          batch queries");
            for a in &nodes {
                text.push_str(&format!(
                    "\n{:<22} {:<8} {:<14} {}",
                    a.node.to_string(),
                    a.job.map_or("-".into(), |j| j.to_string()),
                    a.model.clone().unwrap_or_else(|| "idle".into()),
                    if a.queries > 0 {
                        a.queries.to_string()
                    } else {
                        String::new()
                    }
                ));
            }
            for s in &shares {
                text.push_str(&format!(
                    "\njob {} ({}): {:.0} ms/query, target share {:.0}%, {} workers now",
                    s.job,
                    s.model,
                    s.per_query_ms,
                    s.target_share * 100.0,
                    s.workers_now
                ));
            }
            Reply::new(text, serde_json::json!({"nodes": nodes, "shares": shares}))
        }
    }
}

impl Actor for CoordinatorActor {
    type Context = Context<Self>;
}

/// Re-check deferred client requests (a reign became known).
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

impl Handler<Flush> for CoordinatorActor {
    type Result = ();
    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.flush_deferred(ctx);
    }
}

impl Handler<SetWorker> for CoordinatorActor {
    type Result = ();
    fn handle(&mut self, m: SetWorker, _ctx: &mut Context<Self>) {
        self.worker = Some(m.0);
    }
}

impl Handler<View> for CoordinatorActor {
    type Result = ();
    fn handle(&mut self, v: View, ctx: &mut Context<Self>) {
        let live = v.live();
        if live == self.live {
            return;
        }
        self.live = live;
        let fx = self.core.on_members(clock::now(), &self.live.clone());
        self.exec(fx, ctx);
        self.maybe_bootstrap(ctx);
    }
}

impl Handler<FromPeer> for CoordinatorActor {
    type Result = ();
    fn handle(&mut self, m: FromPeer, ctx: &mut Context<Self>) {
        let request_id = match &m.msg {
            Msg::JobAccepted { request_id, .. }
            | Msg::Refused { request_id, .. }
            | Msg::BatchSizeSet { request_id, .. }
            | Msg::StatusReply { request_id, .. } => Some(*request_id),
            _ => None,
        };
        if let Some(id) = request_id {
            if let Some(tx) = self.pending.remove(&id) {
                let _ = tx.send(m.msg);
            }
            return;
        }
        if let Msg::JobCompleted { job, ok, failed } = &m.msg {
            info!(wall = clock::wall_ms(), %job, ok, failed, "event=job_completed");
            return;
        }
        let fx = self.core.on_message(clock::now(), &m.from, m.msg);
        self.exec(fx, ctx);
        self.flush_deferred(ctx);
    }
}

impl Handler<Exec> for CoordinatorActor {
    type Result = ();
    fn handle(&mut self, m: Exec, ctx: &mut Context<Self>) {
        let coordinator = self.coordinator_name();
        let reply = m.reply;
        match m.cmd {
            Command::C1 | Command::C2 | Command::C5 => {
                let kind = match m.cmd {
                    Command::C1 => StatusKind::Rates,
                    Command::C2 => StatusKind::Times,
                    _ => StatusKind::Assignment,
                };
                let rx = self.request(|request_id| Msg::StatusRequest { request_id, kind }, ctx);
                actix::spawn(async move {
                    let out = match rx.await {
                        Ok(Msg::StatusReply { report, .. }) => Ok(format_report(report)),
                        Ok(other) => Err(refusal(other)),
                        Err(_) => Err(no_answer(&coordinator)),
                    };
                    let _ = reply.send(out);
                });
            }
            Command::C3 { model, batch } => {
                let size = u32::try_from(batch).unwrap_or(u32::MAX);
                let rx = self.request(
                    |request_id| Msg::SetBatchSize {
                        request_id,
                        model: model.clone(),
                        size,
                    },
                    ctx,
                );
                actix::spawn(async move {
                    let out = match rx.await {
                        Ok(Msg::BatchSizeSet { model, size, .. }) => Ok(Reply::new(
                            format!(
                                "batch size of {model} is now {size} (applies to the next batches)"
                            ),
                            serde_json::json!({"model": model, "batch_size": size}),
                        )),
                        Ok(other) => Err(refusal(other)),
                        Err(_) => Err(no_answer(&coordinator)),
                    };
                    let _ = reply.send(out);
                });
            }
            Command::C4 { model, input } => self.submit(model, input, reply, ctx),
            Command::C4Results { job } => {
                let sdfs = self.sdfs.clone();
                actix::spawn(async move {
                    let _ = reply.send(job_results(&sdfs, &job).await);
                });
            }
            other => {
                let _ = reply.send(Err(format!("{other:?} is not a job command")));
            }
        }
    }
}

impl CoordinatorActor {
    /// C4: a local directory is first stored in SDFS under `inputs/<dir name>`; then the
    /// job is submitted to the coordinator, which acknowledges it once its standby has it.
    fn submit(
        &mut self,
        model: String,
        input: String,
        reply: oneshot::Sender<Outcome>,
        ctx: &mut Context<Self>,
    ) {
        let path = Path::new(&input);
        if path.is_dir() {
            let base = path
                .file_name()
                .map(|b| b.to_string_lossy().to_string())
                .unwrap_or_else(|| "input".into());
            let prefix = format!("inputs/{base}");
            let (tx, rx) = oneshot::channel();
            self.sdfs.do_send(sdfs_actor::Exec {
                cmd: Command::Put {
                    local: input.clone(),
                    name: prefix.clone(),
                },
                reply: tx,
            });
            ctx.spawn(rx.into_actor(self).map(move |r, act, ctx| match r {
                Ok(Ok(_)) => act.submit_prefix(model, prefix, reply, ctx),
                Ok(Err(e)) => {
                    let _ = reply.send(Err(format!("cannot store {input} in SDFS: {e}")));
                }
                Err(_) => {
                    let _ = reply.send(Err("sdfs dropped the request".into()));
                }
            }));
        } else {
            self.submit_prefix(model, input, reply, ctx);
        }
    }

    fn submit_prefix(
        &mut self,
        model: String,
        input: String,
        reply: oneshot::Sender<Outcome>,
        ctx: &mut Context<Self>,
    ) {
        let coordinator = self.coordinator_name();
        let rx = self.request(
            |request_id| Msg::SubmitJob {
                request_id,
                model: model.clone(),
                input: input.clone(),
            },
            ctx,
        );
        actix::spawn(async move {
            let out = match rx.await {
                Ok(Msg::JobAccepted { job, queries, .. }) => Ok(Reply::new(
                    format!("job {job} accepted: {queries} queries of {model} over {input}"),
                    serde_json::json!({"job": job.to_string(), "queries": queries, "model": model, "input": input}),
                )),
                Ok(other) => Err(refusal(other)),
                Err(_) => Err(no_answer(&coordinator)),
            };
            let _ = reply.send(out);
        });
    }
}

/// The highest epoch among the job manifests and results in SDFS (0 if none, or if SDFS
/// cannot be listed: then this is a new cluster's first start in practice).
async fn used_epoch(sdfs: &Addr<SdfsActor>) -> u64 {
    let mut top = 0;
    for prefix in ["jobs/", "results/"] {
        for name in list_prefix(sdfs, prefix.into()).await.unwrap_or_default() {
            if let Some(job) = job_of_name(&name) {
                top = top.max(job.epoch);
            }
        }
    }
    top
}

/// C4 --results: every result of a job, read back from SDFS.
async fn job_results(sdfs: &Addr<SdfsActor>, job: &str) -> Outcome {
    let id: JobId = job
        .parse()
        .map_err(|_| format!("{job:?} is not a job id (like 1-2)"))?;
    let prefix = format!("results/{id}/");
    let names = list_prefix(sdfs, prefix.clone()).await?;
    if names.is_empty() {
        return Err(format!(
            "no results for job {id} in SDFS (unknown job, or none finished yet)"
        ));
    }
    let mut results = Vec::new();
    for chunk in names.chunks(16) {
        for r in join_all(chunk.iter().map(|n| get_bytes(sdfs, n.clone()))).await {
            let bytes = r?;
            let q: QueryResult =
                serde_json::from_slice(&bytes).map_err(|e| format!("bad result file: {e}"))?;
            results.push(q);
        }
    }
    results.sort_by(|a, b| a.query.cmp(&b.query));
    let synthetic = results.iter().any(|r| r.synthetic);
    let mut text = format!(
        "job {id}: {} results{}",
        results.len(),
        if synthetic {
            " (SYNTHETIC weights: labels are meaningless)"
        } else {
            ""
        }
    );
    for r in &results {
        match &r.error {
            Some(e) => text.push_str(&format!("\n{}: error: {e}", r.query)),
            None => {
                let tops: Vec<String> = r
                    .top5
                    .iter()
                    .map(|t| format!("{} ({:.3})", t.label, t.prob))
                    .collect();
                text.push_str(&format!("\n{}: {}", r.query, tops.join(", ")));
            }
        }
    }
    Ok(Reply::new(
        text,
        serde_json::to_value(&results).unwrap_or_default(),
    ))
}
