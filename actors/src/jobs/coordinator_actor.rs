//! CoordinatorActor: the shell around two cores of a node, the job [`Coordinator`]
//! (coordinator, hot standby or plain member, as the core decides) and the job
//! [`Client`] (this node's console requests C1-C5 to whichever node coordinates). It
//! feeds them inputs, executes their effects (sends through the [`Outbox`], timers,
//! the SDFS work through [`SdfsClient`]) and hands console answers to
//! `control::jobs_text`. It decides nothing itself.
//!
//! Not supervised: a restarted actor would start a fresh core that knows no reign and
//! holds no replicated state, while the rest of the cluster still took this node for
//! coordinator or standby; the safe recovery is the node's own crash, which the other
//! nodes detect and take over from (standby promotion or rebuild from SDFS).

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::clock;
use crate::control::{jobs_text, Command, Outcome};
use crate::jobs::archive;
use crate::jobs::client::{self, Client, Request};
use crate::jobs::coordinator::{self, Coordinator};
use crate::jobs::msg::{ResultsPage, StatusReport};
use crate::jobs::node_weights;
use crate::jobs::outbox::Outbox;
use crate::jobs::state::{self, ResultFound};
use crate::jobs::types::{
    job_of_name, manifest_name, parse_result_name, JobId, JobManifest, JobsConfig, QueryResult,
    Source, MAX_EPOCH,
};
use crate::jobs::StatusKind;
use crate::machine::Machine;
use crate::membership::membership_actor::View;
use crate::sdfs::client::SdfsClient;
use crate::types::NodeAddr;

pub use crate::jobs::outbox::FromPeer;

/// A job console command: C1-C5.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Exec {
    /// The command.
    pub cmd: Command,
    /// Where its outcome goes.
    pub reply: oneshot::Sender<Outcome>,
}

/// Who waits for a console request's answer.
enum Waiter {
    /// The answer, as console text and JSON.
    Reply(oneshot::Sender<Outcome>),
    /// A page of results: the coordinator's index page, then the rows read from the
    /// result objects it names.
    Rows(oneshot::Sender<Outcome>),
}

/// How long a client request waits for the coordinator.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The actor hosting a node's coordinator and job client cores.
pub struct CoordinatorActor {
    core: Coordinator,
    client: Client,
    outbox: Outbox,
    sdfs: SdfsClient,
    /// The live members last handed to the core.
    live: Vec<NodeAddr>,
    /// The coordinator last told to the client core.
    coordinator: Option<NodeAddr>,
    /// Console requests in the client core, by ticket.
    tickets: HashMap<u64, Waiter>,
    next_ticket: u64,
}

impl CoordinatorActor {
    /// The job actor of node `outbox.me()`; the first live node of `ring` starts the
    /// cluster's first reign after `bootstrap_grace` without news of one.
    pub fn new(
        outbox: Outbox,
        cfg: JobsConfig,
        sdfs: SdfsClient,
        ring: Vec<NodeAddr>,
        bootstrap_grace: Duration,
    ) -> Self {
        let grace = bootstrap_grace.as_millis() as u64;
        CoordinatorActor {
            core: Coordinator::new(outbox.me().clone(), cfg, ring, grace),
            // Unique across restarts: a resubmission is recognised by (client, request id).
            client: Client::new(
                clock::wall_ms().saturating_mul(1000),
                REQUEST_TIMEOUT.as_millis() as u64,
            ),
            outbox,
            sdfs,
            live: Vec::new(),
            coordinator: None,
            tickets: HashMap::new(),
            next_ticket: 0,
        }
    }

    fn send(&self, to: &NodeAddr, msg: crate::jobs::Msg) {
        if let Err(e) = self.outbox.send(to, msg) {
            warn!(peer = %to, "job message dropped: {e}");
        }
    }

    /// Drives the coordinator core, then tells the client core if the coordinator changed.
    fn coord(&mut self, input: coordinator::Input, ctx: &mut Context<Self>) {
        let fx = self.core.handle(clock::now(), input);
        for effect in fx {
            self.exec_coord(effect, ctx);
        }
        let now = self.core.reign().map(|r| r.term.coordinator.clone());
        if now != self.coordinator {
            self.coordinator = now.clone();
            self.client(client::Input::Coordinator(now), ctx);
        }
    }

    fn exec_coord(&mut self, effect: coordinator::Effect, ctx: &mut Context<Self>) {
        use coordinator::{Effect, Event, Input};
        match effect {
            Effect::Send { to, msg } => self.send(&to, msg),
            Effect::SetTimer { at, timer } => {
                ctx.run_later(clock::until(at), move |act, ctx| {
                    act.coord(Input::Timer(timer), ctx)
                });
            }
            Effect::ListInputs {
                client,
                request_id,
                model,
                input,
            } => {
                let sdfs = self.sdfs.clone();
                let prefix = input.clone();
                let name = model.clone();
                ctx.spawn(
                    async move {
                        let sources = list_inputs(&sdfs, &prefix).await;
                        // The job is pinned to the version active now.
                        let weights = node_weights::active_pin(&sdfs, &name).await;
                        (sources, weights)
                    }
                    .into_actor(self)
                    .map(move |(sources, weights), act, ctx| {
                        let listed = Input::InputsListed {
                            client,
                            request_id,
                            model,
                            input,
                            sources,
                            weights,
                        };
                        act.coord(listed, ctx);
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
                            let loaded = Input::SdfsLoaded {
                                term,
                                manifests,
                                results,
                            };
                            act.coord(loaded, ctx);
                        }),
                );
            }
            Effect::ReadUsedEpoch => {
                let sdfs = self.sdfs.clone();
                ctx.spawn(
                    async move { used_epoch(&sdfs).await }
                        .into_actor(self)
                        .map(|used, act, ctx| act.coord(Input::UsedEpoch(used), ctx)),
                );
            }
            Effect::Event(Event::RoleChanged { role, reign }) => info!(
                wall = clock::wall_ms(),
                ?role,
                epoch = reign.term.epoch,
                coordinator = %reign.term.coordinator,
                standby = ?reign.standby.as_ref().map(|s| s.to_string()),
                "event=role"
            ),
            Effect::Event(Event::Bootstrap { used_epoch }) => info!(
                wall = clock::wall_ms(),
                used_epoch, "event=bootstrap (no coordinator known: starting the first reign)"
            ),
            Effect::Event(Event::ImplausibleEpoch { from, epoch, seen }) => warn!(
                wall = clock::wall_ms(),
                from = from.as_ref().map_or("sdfs", |f| f.as_str()),
                epoch,
                seen,
                "event=implausible_epoch (ignored: above the highest believable epoch)"
            ),
            Effect::Event(Event::EpochsExhausted { epoch }) => warn!(
                wall = clock::wall_ms(),
                epoch,
                "event=epochs_exhausted (no epoch left above the current one: not taking over)"
            ),
        }
    }

    fn write_manifest(&mut self, manifest: JobManifest, ctx: &mut Context<Self>) {
        let sdfs = self.sdfs.clone();
        let id = manifest.id;
        let data = serde_json::to_vec(&manifest).unwrap_or_default();
        ctx.spawn(
            async move { sdfs.put_bytes(manifest_name(id), data).await }
                .into_actor(self)
                .map(move |r, act, ctx| match r {
                    Ok(_) => act.coord(coordinator::Input::ManifestWritten(id), ctx),
                    Err(e) => {
                        warn!(job = %id, "manifest not written ({e}); the core retries");
                        act.coord(coordinator::Input::ManifestFailed(id), ctx)
                    }
                }),
        );
    }

    /// Drives the client core.
    fn client(&mut self, input: client::Input, ctx: &mut Context<Self>) {
        use client::{Effect, Event, Input};
        for effect in self.client.handle(clock::now(), input) {
            match effect {
                Effect::Send { to, msg } => self.send(&to, msg),
                Effect::SetTimer { at, timer } => {
                    ctx.run_later(clock::until(at), move |act, ctx| {
                        act.client(Input::Timer(timer), ctx)
                    });
                }
                Effect::Answer { ticket, answer } => match self.tickets.remove(&ticket) {
                    Some(Waiter::Reply(reply)) => {
                        let _ = reply.send(jobs_text::answer(answer));
                    }
                    Some(Waiter::Rows(reply)) => match answer {
                        client::Answer::Status(StatusReport::Results(page)) => {
                            let sdfs = self.sdfs.clone();
                            actix::spawn(async move {
                                let _ = reply.send(result_rows(&sdfs, page).await);
                            });
                        }
                        other => {
                            let _ = reply.send(jobs_text::answer(other));
                        }
                    },
                    None => {}
                },
                Effect::Event(Event::JobCompleted { job, ok, failed }) => {
                    info!(wall = clock::wall_ms(), %job, ok, failed, "event=job_completed")
                }
            }
        }
    }

    /// Hands a console request to the client core; `reply` gets its answer.
    fn request(
        &mut self,
        request: Request,
        reply: oneshot::Sender<Outcome>,
        ctx: &mut Context<Self>,
    ) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let waiter = match request {
            Request::Status(StatusKind::Results { .. }) => Waiter::Rows(reply),
            _ => Waiter::Reply(reply),
        };
        self.tickets.insert(ticket, waiter);
        self.client(client::Input::Request { ticket, request }, ctx);
    }

    /// C4: the job is submitted to the coordinator, which acknowledges it once its
    /// standby has it. `input` is an SDFS prefix: a tool stores a local directory first,
    /// and the node never reads a path named in a command.
    fn submit(
        &mut self,
        model: String,
        input: String,
        reply: oneshot::Sender<Outcome>,
        ctx: &mut Context<Self>,
    ) {
        self.request(Request::Submit { model, input }, reply, ctx);
    }
}

/// The inputs under `input` (the name itself, or names under `input/`): each file is
/// one query; each `.tar` archive is read once here to count its file entries. An
/// archive that cannot be read or parsed is left out with a warning (its queries could
/// never run).
async fn list_inputs(sdfs: &SdfsClient, input: &str) -> Vec<Source> {
    let dir = input.trim_end_matches('/').to_string();
    let names: Vec<String> = match sdfs.list_prefix(dir.clone()).await {
        Ok(names) => names
            .into_iter()
            .filter(|n| *n == dir || n.starts_with(&format!("{dir}/")))
            .collect(),
        Err(e) => {
            warn!(%input, "cannot list inputs: {e}");
            return Vec::new();
        }
    };
    let mut sources = Vec::with_capacity(names.len());
    let (archives, files): (Vec<String>, Vec<String>) =
        names.into_iter().partition(|n| archive::is_archive_name(n));
    sources.extend(files.into_iter().map(|name| Source {
        name,
        entries: None,
    }));
    // A few at a time: each archive is held whole while its entries are counted.
    for chunk in archives.chunks(4) {
        let read = join_all(chunk.iter().map(|n| sdfs.get_bytes(n.clone()))).await;
        for (name, r) in chunk.iter().zip(read) {
            match r
                .map_err(|e| e.to_string())
                .and_then(|b| archive::count(&b).map_err(|e| e.to_string()))
            {
                Ok(n) => sources.push(Source {
                    name: name.clone(),
                    entries: Some(n),
                }),
                Err(e) => warn!(archive = %name, "archive left out of the job: {e}"),
            }
        }
    }
    sources
}

async fn load_from_sdfs(sdfs: &SdfsClient) -> (Vec<JobManifest>, Vec<ResultFound>) {
    let names = sdfs.list_prefix("jobs/".into()).await.unwrap_or_default();
    let manifests = join_all(
        names
            .into_iter()
            .filter(|n| n.ends_with(".manifest"))
            .map(|n| sdfs.get_bytes(n)),
    )
    .await
    .into_iter()
    .filter_map(|r| {
        r.ok()
            .and_then(|b| serde_json::from_slice::<JobManifest>(&b).ok())
    })
    .collect();
    let names: Vec<(String, JobId, crate::jobs::BatchId)> = sdfs
        .list_prefix("results/".into())
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| parse_result_name(&n).map(|(job, batch)| (n, job, batch)))
        .collect();
    // Each result object says which queries it holds, with processing time, worker and
    // wall time: read them all, so that committed queries stay committed and C1 and C2
    // survive losing coordinator and standby together. An object that cannot be read
    // counts for nothing: its queries run again.
    let (now, now_wall) = (clock::now(), clock::wall_ms());
    let mut results = Vec::with_capacity(names.len());
    for chunk in names.chunks(32) {
        let files = join_all(chunk.iter().map(|(n, _, _)| sdfs.get_bytes(n.clone()))).await;
        for ((name, job, batch), file) in chunk.iter().zip(files) {
            let Ok(bytes) = file else {
                warn!(object = %name, "result object not readable; its queries run again");
                continue;
            };
            let lines = parse_result_lines(&bytes, *job);
            let Some(first) = lines.first() else {
                continue;
            };
            results.push(ResultFound {
                job: *job,
                batch: *batch,
                queries: lines.iter().map(|r| r.q).collect(),
                per_query_ms: Some(first.per_query_ms),
                // Commit times are on this process's monotonic clock, objects have wall time.
                at: Some(now.saturating_sub(now_wall.saturating_sub(first.at_wall_ms))),
                worker: Some(NodeAddr(first.worker.clone())),
            });
        }
    }
    (manifests, results)
}

/// The lines of a result object that belong to `job` (a damaged line is skipped).
fn parse_result_lines(bytes: &[u8], job: JobId) -> Vec<QueryResult> {
    let job = job.to_string();
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<QueryResult>(l).ok())
        .filter(|r| r.job == job)
        .collect()
}

/// A page of a job's results: the rows of the queries in `page`, in query order, read
/// from the result objects the coordinator's index names (16 at a time). A failed
/// query's row carries its error; a query without an outcome yet has no row.
async fn result_rows(sdfs: &SdfsClient, page: ResultsPage) -> Outcome {
    // Per object of the page, its rows by query.
    let mut objects: Vec<HashMap<u32, QueryResult>> = Vec::with_capacity(page.objects.len());
    for chunk in page.objects.chunks(16) {
        let read = join_all(
            chunk
                .iter()
                .map(|b| sdfs.get_bytes(crate::jobs::types::result_name(page.job, *b))),
        )
        .await;
        for (b, r) in chunk.iter().zip(read) {
            let bytes = r.map_err(|e| jobs_text::result_object_unreadable(page.job, *b, &e))?;
            let lines = parse_result_lines(&bytes, page.job);
            objects.push(lines.into_iter().map(|r| (r.q, r)).collect());
        }
    }
    let unfinished: HashMap<u32, &String> = page.unfinished.iter().map(|(q, n)| (*q, n)).collect();
    let mut rows = Vec::with_capacity(page.outcome.len());
    for (i, o) in page.outcome.iter().enumerate() {
        let q = page.from + i as u32;
        match *o {
            state::OPEN => {}
            state::FAILED => rows.push(jobs_text::failed_row(&page, q, unfinished.get(&q))),
            k => {
                let row = (k as usize)
                    .checked_sub(1)
                    .and_then(|k| objects.get_mut(k))
                    .and_then(|lines| lines.remove(&q));
                rows.push(row.ok_or_else(|| jobs_text::result_missing(page.job, q))?);
            }
        }
    }
    Ok(jobs_text::results_page(&page, rows))
}

/// The highest epoch among the job manifests and results in SDFS (0 if none, or if SDFS
/// cannot be listed: then this is a new cluster's first start in practice).
///
/// Job ids above [`MAX_EPOCH`] (a hand-made `jobs/18446744073709551614-1.manifest`) are
/// skipped with one warning: taking them would make the next epoch wrap.
async fn used_epoch(sdfs: &SdfsClient) -> u64 {
    let mut top = 0;
    let mut skipped = 0u64;
    for prefix in ["jobs/", "results/"] {
        for name in sdfs.list_prefix(prefix.into()).await.unwrap_or_default() {
            if let Some(job) = job_of_name(&name) {
                if job.epoch > MAX_EPOCH {
                    skipped += 1;
                } else {
                    top = top.max(job.epoch);
                }
            }
        }
    }
    if skipped > 0 {
        warn!(
            skipped,
            max_epoch = MAX_EPOCH,
            "event=implausible_epoch (job ids in SDFS above the highest believable epoch ignored)"
        );
    }
    top
}

impl Actor for CoordinatorActor {
    type Context = Context<Self>;
}

impl Handler<View> for CoordinatorActor {
    type Result = ();
    fn handle(&mut self, v: View, ctx: &mut Context<Self>) {
        let live = v.live();
        if live == self.live {
            return;
        }
        self.live = live.clone();
        self.coord(coordinator::Input::Members(live), ctx);
    }
}

impl Handler<FromPeer> for CoordinatorActor {
    type Result = ();
    fn handle(&mut self, m: FromPeer, ctx: &mut Context<Self>) {
        let FromPeer { from, msg } = m;
        // Answers to this node's requests are for the client (see `net::route`).
        if msg.is_for_coordinator() {
            self.coord(coordinator::Input::Message { from, msg }, ctx);
        } else {
            self.client(client::Input::Message { from, msg }, ctx);
        }
    }
}

impl Handler<Exec> for CoordinatorActor {
    type Result = ();
    fn handle(&mut self, m: Exec, ctx: &mut Context<Self>) {
        let reply = m.reply;
        match m.cmd {
            Command::C1 => self.request(Request::Status(StatusKind::Rates), reply, ctx),
            Command::C2 => self.request(Request::Status(StatusKind::Times), reply, ctx),
            Command::C5 => self.request(Request::Status(StatusKind::Assignment), reply, ctx),
            Command::C3 { model, batch } => {
                let size = u32::try_from(batch).unwrap_or(u32::MAX);
                self.request(Request::SetBatchSize { model, size }, reply, ctx);
            }
            Command::C4 { model, input } => self.submit(model, input, reply, ctx),
            Command::C4Results { job, from, limit } => match job.parse::<JobId>() {
                Ok(job) => {
                    let kind = StatusKind::Results { job, from, limit };
                    self.request(Request::Status(kind), reply, ctx);
                }
                Err(_) => {
                    let _ = reply.send(Err(jobs_text::not_a_job_id(&job)));
                }
            },
            other => {
                let _ = reply.send(Err(jobs_text::not_a_job_command(&other)));
            }
        }
    }
}
