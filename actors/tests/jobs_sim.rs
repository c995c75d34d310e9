//! Seeded discrete-event simulation of the job layer: coordinator, standby, worker and
//! job client cores of several nodes in the shared simulated world (`sim`), with an
//! in-memory SDFS, kills, pauses and a slow worker. Messages are routed to a node's cores
//! by `net::route`, the rule the TransportActor applies. Every scenario runs under several
//! seeds; the output names each seed as it starts (rerun one with
//! `DML_SIM_SEED=7 cargo test -p dml-actors --test jobs_sim <test name>`).

mod sim;

use std::collections::{BTreeMap, BTreeSet};

use dml_actors::jobs::client::{self, Answer, Client, Request};
use dml_actors::jobs::coordinator::{self, Coordinator};
use dml_actors::jobs::msg::RefuseReason;
use dml_actors::jobs::state::Outcome;
use dml_actors::jobs::stats;
use dml_actors::jobs::types::Source;
use dml_actors::jobs::worker::{self, Worker};
use dml_actors::jobs::{
    BatchId, Executed, JobError, JobId, JobManifest, JobsConfig, ModelSpec, Msg, QueryId,
    ResultFound, RoleKind, RunBatch, StatusKind, StatusReport, Term, WorkerSettings,
};
use dml_actors::machine::Machine;
use dml_actors::net::body::Body;
use dml_actors::net::route::{route, To};
use dml_actors::types::{Millis, NodeAddr};
use rand::Rng;
use sim::World;

const CLIENT: &str = "client:9";
/// Where membership changes are delivered (they concern every node, not one).
const MEMBERSHIP: &str = "membership:0";

/// Runs `f` once per seed of the scenario `name`.
fn for_seeds(name: &str, f: impl Fn(u64)) {
    for seed in sim::seeds(name, [11, 22, 33]) {
        f(seed);
    }
}

#[derive(Clone, Debug)]
enum Ev {
    Deliver {
        from: NodeAddr,
        msg: Msg,
    },
    CoordTimer(coordinator::Timer),
    WorkerTimer(worker::Timer),
    ClientTimer(client::Timer),
    Executed {
        rb: RunBatch,
        ms: Millis,
    },
    ManifestWritten(JobManifest),
    Listed {
        client: NodeAddr,
        request_id: u64,
        model: String,
        input: String,
    },
    SdfsLoaded(Term),
    UsedEpoch,
    Remove(NodeAddr),
    Rejoin(NodeAddr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Up,
    Dead,
    Paused,
}

struct Node {
    coord: Coordinator,
    worker: Worker,
    client: Client,
    /// The coordinator last told to the client core (as the actor shell does).
    told: Option<NodeAddr>,
    life: Life,
    /// Multiplies compute time (a slow worker still answers pings).
    speed: f64,
    buffer: Vec<Ev>,
}

struct ResultMeta {
    writes: u32,
    first_at: Millis,
    per_query_ms: f64,
    worker: NodeAddr,
}

struct Sim {
    world: World<Ev>,
    nodes: BTreeMap<NodeAddr, Node>,
    view: BTreeSet<NodeAddr>,
    cost: BTreeMap<String, f64>,
    inputs: BTreeMap<String, Vec<Source>>,
    sdfs_manifests: BTreeMap<JobId, JobManifest>,
    sdfs_results: BTreeMap<(JobId, QueryId), ResultMeta>,
    /// The result objects in SDFS: one per run of a batch.
    sdfs_objects: BTreeMap<(JobId, BatchId), (Vec<QueryId>, ResultMeta)>,
    inbox: Vec<(Millis, Msg)>,
    /// Every RunBatch a coordinator sent: (time, from, to, batch).
    dispatched: Vec<(Millis, NodeAddr, NodeAddr, RunBatch)>,
    /// Every batch a worker started: (time, worker, batch).
    executed: Vec<(Millis, NodeAddr, RunBatch)>,
    /// Every stale-term refusal by a worker: (time, worker, refused sender).
    refused_stale: Vec<(Millis, NodeAddr, NodeAddr)>,
    /// Every `Fenced` sent: (time, from, to).
    fenced: Vec<(Millis, NodeAddr, NodeAddr)>,
    roles: Vec<(Millis, NodeAddr, RoleKind, u64)>,
    /// Every message a node's job client sent: (time, from, to, message).
    client_sent: Vec<(Millis, NodeAddr, NodeAddr, Msg)>,
    /// Every answer a node's job client gave its console: (time, node, ticket, answer).
    answers: Vec<(Millis, NodeAddr, u64, Answer)>,
    detect_ms: Millis,
    next_request: u64,
}

fn addr(i: usize) -> NodeAddr {
    NodeAddr(format!("n{i:02}:7000"))
}

fn cfg(batch: u32, resnet_ms: f64, inception_ms: f64) -> JobsConfig {
    JobsConfig {
        models: vec![
            ModelSpec {
                name: "resnet50".into(),
                batch_size: batch,
                prior_query_ms: resnet_ms,
            },
            ModelSpec {
                name: "inception_v3".into(),
                batch_size: batch,
                prior_query_ms: inception_ms,
            },
        ],
        slow_floor_ms: 500,
        ..JobsConfig::default()
    }
    .validate()
    .expect("valid test config")
}

impl Sim {
    /// `n` nodes on one ring; the first bootstraps the first reign at once.
    fn new(seed: u64, n: usize, cfg: JobsConfig, resnet_ms: f64, inception_ms: f64) -> Sim {
        let mut sim = Sim::forming(seed, n, cfg, resnet_ms, inception_ms, 0);
        sim.run_until_cond(0, "first reign", |s| s.primary().is_some());
        sim
    }

    /// `n` nodes that just learnt the membership; the first of the ring starts the first
    /// reign after `grace_ms` without news of one.
    fn forming(
        seed: u64,
        n: usize,
        cfg: JobsConfig,
        resnet_ms: f64,
        inception_ms: f64,
        grace_ms: Millis,
    ) -> Sim {
        let ring: Vec<NodeAddr> = (1..=n).map(addr).collect();
        let mut nodes = BTreeMap::new();
        for (i, a) in ring.iter().enumerate() {
            nodes.insert(
                a.clone(),
                Node {
                    coord: Coordinator::new(a.clone(), cfg.clone(), ring.clone(), grace_ms),
                    worker: Worker::new(WorkerSettings::default()),
                    client: Client::new(1_000 * (i as u64 + 1), 20_000),
                    told: None,
                    life: Life::Up,
                    speed: 1.0,
                    buffer: Vec::new(),
                },
            );
        }
        let mut world = World::new(seed);
        // A TCP-like link: 1-4 ms, in order per (from, to).
        world.set_latency(1, 4);
        world.set_fifo();
        let mut sim = Sim {
            world,
            nodes,
            view: ring.iter().cloned().collect(),
            cost: [
                ("resnet50".to_string(), resnet_ms),
                ("inception_v3".to_string(), inception_ms),
            ]
            .into(),
            inputs: BTreeMap::new(),
            sdfs_manifests: BTreeMap::new(),
            sdfs_results: BTreeMap::new(),
            sdfs_objects: BTreeMap::new(),
            inbox: Vec::new(),
            dispatched: Vec::new(),
            executed: Vec::new(),
            refused_stale: Vec::new(),
            fenced: Vec::new(),
            roles: Vec::new(),
            client_sent: Vec::new(),
            answers: Vec::new(),
            detect_ms: 1_500,
            next_request: 0,
        };
        for a in &ring {
            sim.coord(a, coordinator::Input::Members(ring.clone()));
        }
        sim
    }

    fn now(&self) -> Millis {
        self.world.now()
    }

    fn seed(&self) -> u64 {
        self.world.seed()
    }

    fn node(&mut self, a: &NodeAddr) -> &mut Node {
        self.nodes.get_mut(a).expect("known node")
    }

    fn add_inputs(&mut self, prefix: &str, n: usize) {
        let qs = (0..n)
            .map(|i| Source {
                name: format!("{prefix}img{i:05}.jpg"),
                entries: None,
            })
            .collect();
        self.inputs.insert(prefix.to_string(), qs);
    }

    fn send(&mut self, from: &NodeAddr, to: &NodeAddr, msg: Msg) {
        let ev = Ev::Deliver {
            from: from.clone(),
            msg,
        };
        self.world.send(from, to, ev);
    }

    /// Drives `node`'s coordinator core, then tells its client core if the coordinator
    /// changed (as the CoordinatorActor does).
    fn coord(&mut self, node: &NodeAddr, input: coordinator::Input) {
        let now = self.now();
        let fx = self.node(node).coord.handle(now, input);
        self.coord_fx(node, fx);
        let n = self.node(node);
        let known = n.coord.reign().map(|r| r.term.coordinator.clone());
        if known != n.told {
            n.told = known.clone();
            self.client(node, client::Input::Coordinator(known));
        }
    }

    fn coord_fx(&mut self, node: &NodeAddr, fx: Vec<coordinator::Effect>) {
        use coordinator::{Effect, Event};
        let now = self.now();
        for e in fx {
            match e {
                Effect::Send { to, msg } => {
                    match &msg {
                        Msg::RunBatch(rb) => {
                            self.dispatched
                                .push((now, node.clone(), to.clone(), rb.clone()))
                        }
                        Msg::Fenced { .. } => self.fenced.push((now, node.clone(), to.clone())),
                        _ => {}
                    }
                    self.send(node, &to, msg);
                }
                Effect::SetTimer { at, timer } => self.world.at(at, node, Ev::CoordTimer(timer)),
                Effect::ListInputs {
                    client,
                    request_id,
                    model,
                    input,
                } => {
                    let ev = Ev::Listed {
                        client,
                        request_id,
                        model,
                        input,
                    };
                    self.world.at(now + 3, node, ev);
                }
                Effect::WriteManifest { manifest } => {
                    self.world.at(now + 8, node, Ev::ManifestWritten(manifest))
                }
                Effect::LoadJobsFromSdfs { term } => {
                    self.world.at(now + 30, node, Ev::SdfsLoaded(term))
                }
                Effect::ReadUsedEpoch => self.world.at(now, node, Ev::UsedEpoch),
                Effect::Event(Event::RoleChanged { role, reign }) => {
                    self.roles.push((now, node.clone(), role, reign.term.epoch))
                }
                Effect::Event(Event::Bootstrap { .. })
                | Effect::Event(Event::ImplausibleEpoch { .. })
                | Effect::Event(Event::EpochsExhausted { .. }) => {}
            }
        }
    }

    fn worker(&mut self, node: &NodeAddr, input: worker::Input) {
        let now = self.now();
        let fx = self.node(node).worker.handle(now, input);
        for e in fx {
            match e {
                worker::Effect::Send { to, msg } => {
                    if let Msg::WorkerRefused {
                        reason: RefuseReason::StaleTerm,
                        ..
                    } = &msg
                    {
                        self.refused_stale.push((now, node.clone(), to.clone()));
                    }
                    self.send(node, &to, msg);
                }
                worker::Effect::Execute(rb) => {
                    let per =
                        self.cost.get(&rb.model).copied().unwrap_or(100.0) * self.node(node).speed;
                    let mut ms = 5.0;
                    for _ in &rb.queries {
                        ms += per * self.world.rng().gen_range(0.9..1.1);
                    }
                    let ms = ms as Millis;
                    self.executed.push((now, node.clone(), rb.clone()));
                    self.world.at(now + ms, node, Ev::Executed { rb, ms });
                }
                worker::Effect::SetTimer { at, timer } => {
                    self.world.at(at, node, Ev::WorkerTimer(timer))
                }
            }
        }
    }

    fn client(&mut self, node: &NodeAddr, input: client::Input) {
        let now = self.now();
        let fx = self.node(node).client.handle(now, input);
        for e in fx {
            match e {
                client::Effect::Send { to, msg } => {
                    self.client_sent
                        .push((now, node.clone(), to.clone(), msg.clone()));
                    self.send(node, &to, msg);
                }
                client::Effect::SetTimer { at, timer } => {
                    self.world.at(at, node, Ev::ClientTimer(timer))
                }
                client::Effect::Answer { ticket, answer } => {
                    self.answers.push((now, node.clone(), ticket, answer))
                }
                client::Effect::Event(_) => {}
            }
        }
    }

    /// `node`'s console asks its job client.
    fn console(&mut self, node: &NodeAddr, ticket: u64, request: Request) {
        self.client(node, client::Input::Request { ticket, request });
    }

    fn answer(&self, node: &NodeAddr, ticket: u64) -> Option<(Millis, &Answer)> {
        self.answers
            .iter()
            .find(|(_, n, t, _)| n == node && *t == ticket)
            .map(|(at, _, _, a)| (*at, a))
    }

    /// Processes the next event due by `limit`; false when there is none.
    fn step(&mut self, limit: Millis) -> bool {
        let Some((to, ev)) = self.world.next_until(limit) else {
            return false;
        };
        if to.as_str() != CLIENT && to.as_str() != MEMBERSHIP {
            match self.nodes.get(&to).map(|n| n.life) {
                Some(Life::Dead) | None => return true,
                Some(Life::Paused) => {
                    self.node(&to).buffer.push(ev);
                    return true;
                }
                Some(Life::Up) => {}
            }
        }
        self.handle(to, ev);
        true
    }

    fn handle(&mut self, to: NodeAddr, ev: Ev) {
        let now = self.now();
        match ev {
            Ev::Deliver { from, msg } => {
                if to.as_str() == CLIENT {
                    self.inbox.push((now, msg));
                    return;
                }
                let body = Body::Jobs(msg);
                let targets = route(&body);
                let Body::Jobs(msg) = body else {
                    return;
                };
                for target in targets {
                    let (from, msg) = (from.clone(), msg.clone());
                    match target {
                        To::Worker => self.worker(&to, worker::Input::Message { from, msg }),
                        To::Coordinator => {
                            self.coord(&to, coordinator::Input::Message { from, msg })
                        }
                        To::JobClient => self.client(&to, client::Input::Message { from, msg }),
                        other => panic!("a job message routed to {other:?}"),
                    }
                }
            }
            Ev::CoordTimer(timer) => self.coord(&to, coordinator::Input::Timer(timer)),
            Ev::WorkerTimer(timer) => self.worker(&to, worker::Input::Timer(timer)),
            Ev::ClientTimer(timer) => self.client(&to, client::Input::Timer(timer)),
            Ev::Executed { rb, ms } => {
                // Results reach SDFS before the report: a reported result is never lost.
                let per = ms as f64 / rb.queries.len().max(1) as f64;
                let meta = ResultMeta {
                    writes: 1,
                    first_at: now,
                    per_query_ms: per,
                    worker: to.clone(),
                };
                self.sdfs_objects
                    .insert((rb.job, rb.batch), (rb.queries.clone(), meta));
                for q in &rb.queries {
                    let m = self.sdfs_results.entry((rb.job, *q)).or_insert(ResultMeta {
                        writes: 0,
                        first_at: now,
                        per_query_ms: per,
                        worker: to.clone(),
                    });
                    m.writes += 1;
                }
                let ex = Executed {
                    results_written: rb.queries.clone(),
                    failed: vec![],
                    compute_ms: ms,
                    precision: Some("fp32".into()),
                };
                let batch = rb.batch;
                self.worker(&to, worker::Input::Executed { batch, ex });
            }
            Ev::ManifestWritten(manifest) => {
                let id = manifest.id;
                self.sdfs_manifests.insert(id, manifest);
                self.coord(&to, coordinator::Input::ManifestWritten(id));
            }
            Ev::Listed {
                client,
                request_id,
                model,
                input,
            } => {
                let sources = self.inputs.get(&input).cloned().unwrap_or_default();
                let listed = coordinator::Input::InputsListed {
                    client,
                    request_id,
                    model,
                    input,
                    sources,
                    weights: Ok(Default::default()),
                };
                self.coord(&to, listed);
            }
            Ev::SdfsLoaded(term) => {
                let manifests = self.sdfs_manifests.values().cloned().collect();
                let results = self
                    .sdfs_objects
                    .iter()
                    .map(|((job, batch), (qs, m))| ResultFound {
                        job: *job,
                        batch: *batch,
                        queries: qs.clone(),
                        per_query_ms: Some(m.per_query_ms),
                        at: Some(m.first_at),
                        worker: Some(m.worker.clone()),
                    })
                    .collect();
                let loaded = coordinator::Input::SdfsLoaded {
                    term,
                    manifests,
                    results,
                };
                self.coord(&to, loaded);
            }
            Ev::UsedEpoch => {
                let used = self
                    .sdfs_manifests
                    .keys()
                    .chain(self.sdfs_results.keys().map(|(j, _)| j))
                    .map(|j| j.epoch)
                    .max()
                    .unwrap_or(0);
                self.coord(&to, coordinator::Input::UsedEpoch(used));
            }
            Ev::Remove(node) => {
                self.view.remove(&node);
                self.announce_view();
            }
            Ev::Rejoin(node) => {
                self.view.insert(node);
                self.announce_view();
            }
        }
    }

    /// The membership layer tells every running member the live list.
    fn announce_view(&mut self) {
        let live: Vec<NodeAddr> = self.view.iter().cloned().collect();
        let running: Vec<NodeAddr> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.life == Life::Up)
            .map(|(a, _)| a.clone())
            .collect();
        for a in running {
            self.coord(&a, coordinator::Input::Members(live.clone()));
        }
    }

    fn run_until(&mut self, t: Millis) {
        while self.step(t) {}
    }

    /// Runs until `done` holds (checked after every event); panics after `limit`.
    fn run_until_cond(&mut self, limit: Millis, what: &str, mut done: impl FnMut(&Sim) -> bool) {
        while !done(self) {
            if !self.step(limit) {
                panic!(
                    "seed {}: `{what}` not reached by {limit} ms (now {})",
                    self.seed(),
                    self.now()
                );
            }
        }
    }

    fn membership_change(&mut self, ev: Ev) {
        let at = self.now() + self.detect_ms;
        self.world.at(at, &NodeAddr(MEMBERSHIP.into()), ev);
    }

    fn kill(&mut self, a: &NodeAddr) {
        self.node(a).life = Life::Dead;
        // Its timers die with it and what was in flight to it is lost.
        self.world.forget(a);
        self.membership_change(Ev::Remove(a.clone()));
    }

    fn pause(&mut self, a: &NodeAddr) {
        self.node(a).life = Life::Paused;
        self.membership_change(Ev::Remove(a.clone()));
    }

    fn resume(&mut self, a: &NodeAddr) {
        let now = self.now();
        let n = self.node(a);
        n.life = Life::Up;
        let buffered = std::mem::take(&mut n.buffer);
        for ev in buffered {
            self.world.at(now, a, ev);
        }
        self.membership_change(Ev::Rejoin(a.clone()));
    }

    /// The running node that believes it is coordinator with the newest term.
    fn primary(&self) -> Option<NodeAddr> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.life == Life::Up && n.coord.role() == RoleKind::Primary)
            .max_by_key(|(_, n)| n.coord.reign().map(|r| r.term.clone()))
            .map(|(a, _)| a.clone())
    }

    fn primary_coord(&self) -> &Coordinator {
        let p = self
            .primary()
            .unwrap_or_else(|| panic!("seed {}: no primary at {}", self.seed(), self.now()));
        &self.nodes[&p].coord
    }

    fn client_send(&mut self, msg: Msg) -> u64 {
        let to = self.primary().expect("a primary to talk to");
        self.send(&NodeAddr(CLIENT.into()), &to, msg);
        self.next_request
    }

    fn submit(&mut self, model: &str, input: &str) -> u64 {
        self.next_request += 1;
        let request_id = self.next_request;
        self.client_send(Msg::SubmitJob {
            request_id,
            model: model.into(),
            input: input.into(),
        })
    }

    fn accepted(&self, request_id: u64) -> Option<JobId> {
        self.inbox.iter().find_map(|(_, m)| match m {
            Msg::JobAccepted {
                request_id: r, job, ..
            } if *r == request_id => Some(*job),
            _ => None,
        })
    }

    fn accepted_at(&self, request_id: u64) -> Option<Millis> {
        self.inbox.iter().find_map(|(t, m)| match m {
            Msg::JobAccepted { request_id: r, .. } if *r == request_id => Some(*t),
            _ => None,
        })
    }

    fn refused(&self, request_id: u64) -> Option<JobError> {
        self.inbox.iter().find_map(|(_, m)| match m {
            Msg::Refused {
                request_id: r,
                error,
            } if *r == request_id => Some(error.clone()),
            _ => None,
        })
    }

    fn completed(&self, job: JobId) -> bool {
        self.inbox
            .iter()
            .any(|(_, m)| matches!(m, Msg::JobCompleted { job: j, .. } if *j == job))
    }

    fn submit_and_wait(&mut self, model: &str, input: &str) -> JobId {
        let r = self.submit(model, input);
        self.run_until_cond(self.now() + 5_000, "job accepted", |s| {
            s.accepted(r).is_some()
        });
        self.accepted(r).expect("accepted")
    }

    fn processed(&self, coord: &Coordinator, job: JobId) -> u64 {
        stats::c1(coord.state(), self.now(), 10_000)
            .into_iter()
            .find(|r| r.job == job)
            .map_or(0, |r| r.processed)
    }

    /// The property the whole design exists for: every query of the job has exactly one
    /// committed result, counted once in the statistics, and a result file in SDFS.
    fn assert_exactly_once(&self, job: JobId) {
        let seed = self.seed();
        let c = self.primary_coord();
        let j = c
            .state()
            .jobs
            .get(&job)
            .unwrap_or_else(|| panic!("seed {seed}: job {job} unknown"));
        let total = j.manifest.queries.len() as usize;
        assert!(total > 0);
        assert_eq!(
            j.processed() as usize,
            total,
            "seed {seed}: outcomes of {job}"
        );
        assert_eq!(
            j.ok_count() as usize,
            total,
            "seed {seed}: failed queries in {job}"
        );
        let counted: u64 = j.commits.iter().map(|c| u64::from(c.ok)).sum();
        assert_eq!(
            counted, total as u64,
            "seed {seed}: {job} double-counted or lost in commits"
        );
        assert_eq!(
            self.processed(c, job),
            total as u64,
            "seed {seed}: C1 total of {job}"
        );
        let times = stats::c2(c.state());
        let t = times
            .iter()
            .find(|t| t.job == job)
            .and_then(|t| t.stats.clone());
        assert_eq!(
            t.map(|t| t.count),
            Some(total as u64),
            "seed {seed}: C2 sample count of {job}"
        );
        let in_sdfs = self
            .sdfs_results
            .keys()
            .filter(|(jj, _)| *jj == job)
            .count();
        assert_eq!(in_sdfs, total, "seed {seed}: result names of {job} in SDFS");
        for q in 0..j.manifest.queries.len() {
            // The committed result is in the object of the run the commit names.
            let Some(Outcome::Ok(batch)) = j.outcome_of(q) else {
                panic!("seed {seed}: query {q} of {job} has no committed result");
            };
            let obj = self.sdfs_objects.get(&(job, batch));
            assert!(
                obj.is_some_and(|(qs, _)| qs.contains(&q)),
                "seed {seed}: the object of {batch} does not hold query {q}"
            );
        }
        assert!(
            self.completed(job),
            "seed {seed}: client not told {job} completed"
        );
    }

    fn standby_of_primary(&self) -> Option<NodeAddr> {
        self.primary_coord().reign().and_then(|r| r.standby.clone())
    }
}

#[test]
fn one_job_completes_with_exactly_one_result_per_query() {
    for_seeds(
        "one_job_completes_with_exactly_one_result_per_query",
        |seed| {
            let mut sim = Sim::new(seed, 6, cfg(8, 100.0, 170.0), 100.0, 170.0);
            sim.add_inputs("imgs/", 203);
            let job = sim.submit_and_wait("resnet50", "imgs/");
            sim.run_until_cond(120_000, "job completed", |s| s.completed(job));
            sim.assert_exactly_once(job);
            // Every node took part (the coordinator and standby work too).
            let workers: BTreeSet<&NodeAddr> = sim.executed.iter().map(|(_, w, _)| w).collect();
            assert_eq!(workers.len(), 6, "seed {seed}");
            // No batch ran twice in a fault-free run.
            assert!(
                sim.sdfs_results.values().all(|m| m.writes == 1),
                "seed {seed}"
            );
        },
    );
}

#[test]
fn unknown_model_and_missing_inputs_are_refused_with_typed_errors() {
    let mut sim = Sim::new(5, 3, cfg(8, 100.0, 170.0), 100.0, 170.0);
    sim.add_inputs("imgs/", 10);
    let r1 = sim.submit("vgg16", "imgs/");
    let r2 = sim.submit("resnet50", "nothing/");
    sim.run_until(1_000);
    assert!(matches!(
        sim.refused(r1),
        Some(JobError::UnknownModel { ref model, .. }) if model == "vgg16"
    ));
    assert_eq!(
        sim.refused(r2),
        Some(JobError::NoInputs {
            input: "nothing/".into()
        })
    );
    assert!(sim.accepted(r1).is_none() && sim.accepted(r2).is_none());
    assert!(
        sim.primary_coord().state().jobs.is_empty(),
        "nothing was created"
    );

    // A member that is not the coordinator points at the one that is.
    let member = addr(3);
    sim.send(
        &NodeAddr(CLIENT.into()),
        &member,
        Msg::SubmitJob {
            request_id: 99,
            model: "resnet50".into(),
            input: "imgs/".into(),
        },
    );
    sim.run_until(2_000);
    assert_eq!(
        sim.refused(99),
        Some(JobError::NotCoordinator {
            coordinator: Some(addr(1))
        })
    );
    let shown = sim.refused(r1).map(|e| e.to_string()).unwrap_or_default();
    assert!(
        shown.contains("vgg16") && shown.contains("resnet50"),
        "{shown}"
    );
}

#[test]
fn two_jobs_with_different_costs_get_equal_rates_and_the_second_starts_fast() {
    for_seeds(
        "two_jobs_with_different_costs_get_equal_rates_and_the_second_starts_fast",
        |seed| {
            let (resnet, inception) = (100.0, 180.0);
            let mut sim = Sim::new(seed, 8, cfg(4, resnet, inception), resnet, inception);
            sim.add_inputs("a/", 4_000);
            sim.add_inputs("b/", 1_500);
            let a = sim.submit_and_wait("resnet50", "a/");
            sim.run_until(20_000);
            let submitted_b = sim.now();
            let rb = sim.submit("inception_v3", "b/");
            sim.run_until_cond(30_000, "b accepted", |s| s.accepted(rb).is_some());
            let b = sim.accepted(rb).expect("accepted");
            sim.run_until_cond(submitted_b + 3_000, "b's first batch running", |s| {
                s.executed.iter().any(|(_, _, r)| r.job == b)
            });
            let started = sim
                .executed
                .iter()
                .find(|(_, _, r)| r.job == b)
                .map(|(t, _, _)| *t)
                .unwrap();
            assert!(
                started - submitted_b < 3_000,
                "seed {seed}: b started after {} ms",
                started - submitted_b
            );
            assert!(sim.accepted_at(rb).unwrap() - submitted_b < 100);

            // Once a whole 10 s window lies after b's start, the rates stay within 10%,
            // until one of the jobs runs out of queued queries.
            let mut t = started + 12_000;
            let mut checks = 0;
            let mut worst: f64 = 0.0;
            loop {
                sim.run_until(t);
                let c = sim.primary_coord();
                if c.pending_queries(a) == 0 || c.pending_queries(b) == 0 {
                    break;
                }
                let rates = stats::c1(c.state(), sim.now(), 10_000);
                let ra = rates.iter().find(|r| r.job == a).unwrap().rate_qps;
                let rb = rates.iter().find(|r| r.job == b).unwrap().rate_qps;
                let gap = (ra - rb).abs() / ra.max(rb);
                worst = worst.max(gap);
                assert!(
                    gap <= 0.10,
                    "seed {seed} at {t}: rates {ra:.1} vs {rb:.1} q/s ({:.1}%)",
                    gap * 100.0
                );
                checks += 1;
                t += 500;
            }
            assert!(checks >= 40, "seed {seed}: only {checks} checks");
            eprintln!(
                "seed {seed}: worst rate gap {:.1}% over {checks} checks",
                worst * 100.0
            );

            // The slower model holds more of the cluster, as the target shares say.
            if let Ok(StatusReport::Assignment { shares, .. }) = sim
                .primary_coord()
                .status(sim.now(), StatusKind::Assignment)
            {
                let sa = shares.iter().find(|s| s.job == a).unwrap();
                let sb = shares.iter().find(|s| s.job == b).unwrap();
                assert!(sb.target_share > sa.target_share, "seed {seed}: {shares:?}");
                assert!(
                    (sb.target_share - inception / (resnet + inception)).abs() < 0.05,
                    "seed {seed}: {shares:?}"
                );
            } else {
                panic!("wrong report kind");
            }

            // Hysteresis: in the shared period a worker rarely changes job between batches.
            let (from, to) = (started + 12_000, t);
            let mut last: BTreeMap<&NodeAddr, JobId> = BTreeMap::new();
            let (mut switches, mut batches) = (0, 0);
            for (at, _, w, r) in &sim.dispatched {
                if *at >= from && *at < to {
                    batches += 1;
                    if last.get(w).is_some_and(|j| *j != r.job) {
                        switches += 1;
                    }
                }
                last.insert(w, r.job);
            }
            eprintln!(
            "seed {seed}: b started {} ms after submission; {switches} switches in {batches} batches",
            started - submitted_b
        );
            assert!(
                switches * 5 < batches,
                "seed {seed}: {switches} switches in {batches} batches"
            );

            sim.run_until_cond(400_000, "both complete", |s| {
                s.completed(a) && s.completed(b)
            });
            sim.assert_exactly_once(a);
            sim.assert_exactly_once(b);
        },
    );
}

/// A worker (not coordinator, not standby) with a batch in flight.
fn busy_plain_worker(sim: &Sim) -> NodeAddr {
    let c = sim.primary_coord();
    let primary = sim.primary().unwrap();
    let standby = sim.standby_of_primary();
    c.assignment()
        .into_iter()
        .find(|a| a.job.is_some() && a.node != primary && Some(&a.node) != standby.as_ref())
        .map(|a| a.node)
        .expect("a busy worker")
}

#[test]
fn killed_worker_batch_is_requeued_without_loss_or_double_count() {
    for_seeds(
        "killed_worker_batch_is_requeued_without_loss_or_double_count",
        |seed| {
            let mut sim = Sim::new(seed, 6, cfg(8, 100.0, 170.0), 100.0, 170.0);
            sim.add_inputs("imgs/", 400);
            let job = sim.submit_and_wait("inception_v3", "imgs/");
            sim.run_until(sim.now() + 3_000);
            let victim = busy_plain_worker(&sim);
            let lost: Vec<QueryId> = sim
                .primary_coord()
                .assignment()
                .into_iter()
                .find(|a| a.node == victim)
                .and_then(|a| a.batch)
                .and_then(|b| sim.dispatched.iter().find(|(_, _, _, r)| r.batch == b))
                .map(|(_, _, _, r)| r.queries.clone())
                .unwrap();
            let killed_at = sim.now();
            sim.kill(&victim);
            sim.run_until_cond(200_000, "job completed", |s| s.completed(job));
            assert!(
                sim.primary_coord().counters().requeued >= lost.len() as u64,
                "seed {seed}"
            );
            // The lost queries ran again, elsewhere, after the failure was detected.
            for q in &lost {
                assert!(
                    sim.executed
                        .iter()
                        .any(|(t, w, r)| *t > killed_at && *w != victim && r.queries.contains(q)),
                    "seed {seed}: {q} was not re-run"
                );
            }
            sim.assert_exactly_once(job);
        },
    );
}

#[test]
fn killed_coordinator_standby_takes_over_with_stats_intact() {
    for_seeds(
        "killed_coordinator_standby_takes_over_with_stats_intact",
        |seed| {
            let mut sim = Sim::new(seed, 6, cfg(8, 100.0, 170.0), 100.0, 170.0);
            sim.add_inputs("r/", 500);
            sim.add_inputs("i/", 300);
            let a = sim.submit_and_wait("resnet50", "r/");
            let b = sim.submit_and_wait("inception_v3", "i/");
            sim.run_until(sim.now() + 4_000);
            let old = sim.primary().unwrap();
            let old_epoch = sim.primary_coord().reign().unwrap().term.epoch;
            let standby = sim.standby_of_primary().expect("a standby");
            // What the standby holds is what was acknowledged: it must all survive.
            let held_a = sim.processed(&sim.nodes[&standby].coord, a);
            let held_b = sim.processed(&sim.nodes[&standby].coord, b);
            assert!(
                held_a > 0 && held_a < 500,
                "seed {seed}: kill mid-job ({held_a})"
            );
            sim.kill(&old);
            sim.run_until_cond(sim.now() + 5_000, "standby took over", |s| {
                s.primary().as_ref() == Some(&standby)
            });
            let c = sim.primary_coord();
            let reign = c.reign().unwrap().clone();
            assert_eq!(reign.term.epoch, old_epoch + 1, "seed {seed}");
            assert!(
                reign.standby.is_some() && reign.standby != Some(old.clone()),
                "seed {seed}: new standby"
            );
            assert!(
                sim.processed(c, a) >= held_a && sim.processed(c, b) >= held_b,
                "seed {seed}"
            );
            let c2 = stats::c2(c.state());
            let count_a = c2
                .iter()
                .find(|t| t.job == a)
                .and_then(|t| t.stats.as_ref())
                .map_or(0, |s| s.count);
            assert!(
                count_a >= held_a,
                "seed {seed}: C2 lost samples in the takeover"
            );

            sim.run_until_cond(300_000, "jobs completed", |s| {
                s.completed(a) && s.completed(b)
            });
            sim.assert_exactly_once(a);
            sim.assert_exactly_once(b);
            // No worker ran a batch of the old term after learning the new one.
            let new_term_at = sim
                .roles
                .iter()
                .find(|(_, n, r, e)| {
                    *n == standby && *r == RoleKind::Primary && *e == old_epoch + 1
                })
                .map(|(t, ..)| *t)
                .unwrap();
            assert!(
                !sim.executed
                    .iter()
                    .any(|(t, _, r)| *t > new_term_at + 100 && r.term.epoch == old_epoch),
                "seed {seed}"
            );
        },
    );
}

#[test]
fn coordinator_standby_and_a_worker_killed_together_lose_nothing() {
    for_seeds(
        "coordinator_standby_and_a_worker_killed_together_lose_nothing",
        |seed| {
            let mut sim = Sim::new(seed, 7, cfg(8, 100.0, 170.0), 100.0, 170.0);
            sim.add_inputs("r/", 600);
            sim.add_inputs("i/", 300);
            let a = sim.submit_and_wait("resnet50", "r/");
            let b = sim.submit_and_wait("inception_v3", "i/");
            sim.run_until(sim.now() + 3_000);
            let coord = sim.primary().unwrap();
            let standby = sim.standby_of_primary().unwrap();
            let epoch = sim.primary_coord().reign().unwrap().term.epoch;
            let worker = busy_plain_worker(&sim);
            for v in [&coord, &standby, &worker] {
                sim.kill(v);
            }
            let live: BTreeSet<NodeAddr> = sim
                .view
                .iter()
                .filter(|n| ![&coord, &standby, &worker].contains(n))
                .cloned()
                .collect();
            let heir = dml_actors::jobs::successor(&live, &standby).unwrap();
            sim.run_until_cond(sim.now() + 5_000, "heir coordinates", |s| {
                s.primary().as_ref() == Some(&heir)
            });
            assert!(
                sim.roles
                    .iter()
                    .any(|(_, n, r, _)| *n == heir && *r == RoleKind::Recovering),
                "seed {seed}: heir rebuilt from SDFS"
            );
            assert!(sim.primary_coord().reign().unwrap().term.epoch > epoch);
            sim.run_until_cond(400_000, "jobs completed", |s| {
                s.completed(a) && s.completed(b)
            });
            sim.assert_exactly_once(a);
            sim.assert_exactly_once(b);
        },
    );
}

#[test]
fn paused_old_coordinator_is_fenced_when_it_wakes_up() {
    for_seeds(
        "paused_old_coordinator_is_fenced_when_it_wakes_up",
        |seed| {
            let mut sim = Sim::new(seed, 6, cfg(8, 100.0, 170.0), 100.0, 170.0);
            sim.add_inputs("r/", 600);
            let job = sim.submit_and_wait("resnet50", "r/");
            sim.run_until(sim.now() + 2_000);
            let old = sim.primary().unwrap();
            let old_epoch = sim.primary_coord().reign().unwrap().term.epoch;
            let standby = sim.standby_of_primary().unwrap();
            sim.pause(&old);
            sim.run_until(sim.now() + 4_000);
            assert_eq!(
                sim.primary(),
                Some(standby.clone()),
                "seed {seed}: standby took over"
            );
            let resumed_at = sim.now();
            sim.resume(&old);
            // It wakes up believing it coordinates, acts on what it missed...
            assert_eq!(sim.nodes[&old].coord.role(), RoleKind::Primary);
            sim.run_until(sim.now() + 500);
            // ...and every command it sent was refused: its standby fenced its replication,
            // workers refused its batches, so it committed and acknowledged nothing.
            let stale_sent: Vec<&NodeAddr> = sim
                .dispatched
                .iter()
                .filter(|(t, from, to, r)| {
                    *t >= resumed_at && *from == old && *to != old && r.term.epoch == old_epoch
                })
                .map(|(_, _, to, _)| to)
                .collect();
            let refused = sim
                .refused_stale
                .iter()
                .filter(|(t, w, to)| *t >= resumed_at && *to == old && *w != old)
                .count();
            let fenced = sim
                .fenced
                .iter()
                .filter(|(t, _, to)| *t >= resumed_at && *to == old)
                .count();
            assert!(
                fenced >= 1,
                "seed {seed}: the new coordinator fenced the old one"
            );
            assert_eq!(
                refused,
                stale_sent.len(),
                "seed {seed}: every stale batch refused"
            );
            assert!(
                !sim.executed
                    .iter()
                    .any(|(t, w, r)| *t >= resumed_at && *w != old && r.term.epoch == old_epoch),
                "seed {seed}: a worker ran a fenced batch"
            );
            assert_ne!(
                sim.nodes[&old].coord.role(),
                RoleKind::Primary,
                "seed {seed}"
            );
            assert!(sim.nodes[&old].coord.counters().stepped_down >= 1);
            sim.run_until_cond(300_000, "job completed", |s| s.completed(job));
            sim.assert_exactly_once(job);
            // It rejoined as a member and works again.
            let back = sim
                .executed
                .iter()
                .any(|(t, w, r)| *t > resumed_at && *w == old && r.term.epoch > old_epoch);
            assert!(back, "seed {seed}: old coordinator works again as a member");
        },
    );
}

#[test]
fn slow_worker_batch_is_reissued_and_the_first_result_wins() {
    for_seeds(
        "slow_worker_batch_is_reissued_and_the_first_result_wins",
        |seed| {
            let mut sim = Sim::new(seed, 5, cfg(8, 100.0, 170.0), 100.0, 170.0);
            let slow = addr(4);
            sim.node(&slow).speed = 25.0;
            sim.add_inputs("r/", 240);
            let job = sim.submit_and_wait("resnet50", "r/");
            sim.run_until_cond(120_000, "job completed", |s| s.completed(job));
            let c = sim.primary_coord();
            assert!(c.counters().reissued >= 1, "seed {seed}: no re-issue");
            sim.assert_exactly_once(job);
            // The slow worker's batches were committed from the faster copies.
            let slow_batches: Vec<&RunBatch> = sim
                .executed
                .iter()
                .filter(|(_, w, _)| *w == slow)
                .map(|(_, _, r)| r)
                .collect();
            assert!(!slow_batches.is_empty());
            let j = &c.state().jobs[&job];
            assert!(
                j.commits.iter().all(|cm| cm.worker != slow),
                "seed {seed}: slow worker won a race"
            );
            // When the slow worker finally reports, its results are duplicates: counted once.
            sim.run_until(sim.now() + 30_000);
            assert!(
                sim.primary_coord().counters().duplicate_results >= 8,
                "seed {seed}"
            );
            sim.assert_exactly_once(job);
        },
    );
}

#[test]
fn c3_changes_the_size_of_subsequent_batches() {
    for_seeds("c3_changes_the_size_of_subsequent_batches", |seed| {
        let mut sim = Sim::new(seed, 4, cfg(8, 100.0, 170.0), 100.0, 170.0);
        sim.add_inputs("r/", 400);
        let job = sim.submit_and_wait("resnet50", "r/");
        sim.run_until(sim.now() + 2_000);
        sim.next_request += 1;
        let bad = sim.next_request;
        sim.client_send(Msg::SetBatchSize {
            request_id: bad,
            model: "resnet50".into(),
            size: 0,
        });
        sim.next_request += 1;
        let good = sim.next_request;
        sim.client_send(Msg::SetBatchSize {
            request_id: good,
            model: "resnet50".into(),
            size: 3,
        });
        sim.run_until_cond(sim.now() + 1_000, "C3 acknowledged", |s| {
            s.inbox.iter().any(
                |(_, m)| matches!(m, Msg::BatchSizeSet { request_id, .. } if *request_id == good),
            )
        });
        let acked_at = sim.now();
        assert!(matches!(
            sim.refused(bad),
            Some(JobError::BadBatchSize { size: 0, .. })
        ));
        sim.run_until_cond(200_000, "job completed", |s| s.completed(job));
        let before: Vec<usize> = sim
            .dispatched
            .iter()
            .filter(|(t, ..)| *t < acked_at)
            .map(|(.., r)| r.queries.len())
            .collect();
        let after: Vec<usize> = sim
            .dispatched
            .iter()
            .filter(|(t, ..)| *t > acked_at)
            .map(|(.., r)| r.queries.len())
            .collect();
        assert!(before.iter().all(|n| *n == 8), "seed {seed}: {before:?}");
        assert!(
            after.len() > 50 && after.iter().all(|n| *n <= 3),
            "seed {seed}: {after:?}"
        );
        assert!(after.iter().filter(|n| **n == 3).count() > after.len() / 2);
        sim.assert_exactly_once(job);
        // The size is replicated: the standby has it too.
        let sb = sim.standby_of_primary().unwrap();
        assert_eq!(
            sim.nodes[&sb].coord.state().batch_sizes.get("resnet50"),
            Some(&3)
        );
    });
}

#[test]
fn batch_ids_of_a_reissue_differ_but_target_the_same_queries() {
    // Guard for the sim itself: dispatch records carry distinct ids.
    let mut sim = Sim::new(1, 3, cfg(4, 50.0, 80.0), 50.0, 80.0);
    sim.add_inputs("r/", 40);
    let job = sim.submit_and_wait("resnet50", "r/");
    sim.run_until_cond(60_000, "done", |s| s.completed(job));
    let ids: BTreeSet<BatchId> = sim.dispatched.iter().map(|(.., r)| r.batch).collect();
    assert_eq!(ids.len(), sim.dispatched.len());
    sim.assert_exactly_once(job);
}

/// A console request made before any reign is known waits in the node's job client and
/// goes out, once, to the first coordinator; its answer reaches the console.
#[test]
fn a_console_request_waits_until_a_coordinator_is_known() {
    for_seeds(
        "a_console_request_waits_until_a_coordinator_is_known",
        |seed| {
            let mut sim = Sim::forming(seed, 4, cfg(8, 100.0, 170.0), 100.0, 170.0, 2_000);
            let asker = addr(3);
            sim.console(&asker, 1, Request::Status(StatusKind::Rates));
            sim.run_until(1_000);
            assert!(
                sim.primary().is_none(),
                "seed {seed}: no reign within the grace"
            );
            assert!(
                sim.client_sent.is_empty(),
                "seed {seed}: sent before a coordinator was known"
            );
            assert!(sim.answer(&asker, 1).is_none());
            sim.run_until_cond(5_000, "answer", |s| s.answer(&asker, 1).is_some());
            let (began, first) = sim
                .roles
                .iter()
                .find(|(_, _, r, _)| *r == RoleKind::Primary)
                .map(|(t, n, ..)| (*t, n.clone()))
                .expect("a first reign");
            assert_eq!(first, addr(1), "seed {seed}: the ring's first node");
            assert!(
                began >= 2_000,
                "seed {seed}: reign before the grace ({began})"
            );
            let sent: Vec<_> = sim
                .client_sent
                .iter()
                .filter(|(_, from, ..)| *from == asker)
                .collect();
            assert_eq!(sent.len(), 1, "seed {seed}: sent once");
            assert_eq!(sent[0].2, first);
            assert!(sent[0].0 >= began);
            match sim.answer(&asker, 1) {
                Some((_, Answer::Status(StatusReport::Rates(rows)))) => assert!(rows.is_empty()),
                other => panic!("seed {seed}: {other:?}"),
            }
        },
    );
}

/// A job submitted from a node's console to a coordinator that just died is sent again,
/// with the same request id, to the standby once it has taken over, and accepted there.
#[test]
fn a_console_request_is_answered_after_a_coordinator_change() {
    for_seeds(
        "a_console_request_is_answered_after_a_coordinator_change",
        |seed| {
            let mut sim = Sim::new(seed, 5, cfg(8, 100.0, 170.0), 100.0, 170.0);
            sim.add_inputs("r/", 80);
            sim.run_until(500);
            let old = sim.primary().expect("a coordinator");
            let standby = sim.standby_of_primary().expect("a standby");
            let asker = (1..=5)
                .map(addr)
                .find(|a| *a != old && *a != standby)
                .expect("a plain member");
            sim.kill(&old);
            let asked_at = sim.now();
            let submit = Request::Submit {
                model: "resnet50".into(),
                input: "r/".into(),
            };
            sim.console(&asker, 7, submit);
            sim.run_until_cond(asked_at + 10_000, "answer", |s| {
                s.answer(&asker, 7).is_some()
            });
            let took_over = sim
                .roles
                .iter()
                .find(|(t, n, r, _)| *t >= asked_at && *n == standby && *r == RoleKind::Primary)
                .map(|(t, ..)| *t)
                .expect("the standby took over");
            let (at, answer) = sim.answer(&asker, 7).expect("answered");
            assert!(at > took_over, "seed {seed}: answered at {at}");
            let job = match answer {
                Answer::Accepted { job, queries, .. } => {
                    assert_eq!(*queries, 80, "seed {seed}");
                    *job
                }
                other => panic!("seed {seed}: {other:?}"),
            };
            // Sent twice with the same request id: to the dead coordinator, then to the
            // new one.
            let sent: Vec<_> = sim
                .client_sent
                .iter()
                .filter(|(_, from, ..)| *from == asker)
                .collect();
            assert_eq!(sent.len(), 2, "seed {seed}: {sent:?}");
            assert_eq!((&sent[0].2, &sent[1].2), (&old, &standby), "seed {seed}");
            assert_eq!(sent[0].3, sent[1].3, "seed {seed}: the same request");
            sim.run_until_cond(120_000, "job complete", |s| {
                s.primary_coord().state().jobs[&job].is_complete()
            });
            assert_eq!(sim.primary_coord().state().jobs.len(), 1, "seed {seed}");
        },
    );
}
