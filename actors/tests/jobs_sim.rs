//! Seeded discrete-event simulation of the job layer: coordinator, standby and worker
//! cores of several nodes on virtual time, with an in-memory SDFS, kills, pauses and a
//! slow worker. Every scenario runs under several seeds; a failure prints its seed
//! (rerun one with `DML_SIM_SEEDS=7 cargo test -p dml-actors --test jobs_sim`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use dml_actors::jobs::msg::RefuseReason;
use dml_actors::jobs::stats;
use dml_actors::jobs::{
    BatchId, Coordinator, Effect, Executed, JobError, JobId, JobManifest, JobsConfig, ModelSpec,
    Msg, QueryId, ResultFound, RoleKind, RunBatch, StatusKind, StatusReport, Term, Timer, Worker,
    WorkerEffect, WorkerSettings, WorkerTimer,
};
use dml_actors::types::{Millis, NodeAddr};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CLIENT: &str = "client:9";

fn seeds() -> Vec<u64> {
    match std::env::var("DML_SIM_SEEDS") {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => vec![11, 22, 33],
    }
}

/// Runs `f` once per seed and names the seed of a failing run.
fn for_seeds(f: impl Fn(u64)) {
    for seed in seeds() {
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| f(seed))) {
            eprintln!("*** failed with seed {seed} (DML_SIM_SEEDS={seed} to rerun) ***");
            resume_unwind(e);
        }
    }
}

#[derive(Clone, Debug)]
enum Ev {
    Deliver {
        from: NodeAddr,
        to: NodeAddr,
        msg: Msg,
    },
    CoordTimer {
        node: NodeAddr,
        timer: Timer,
    },
    WorkerTimer {
        node: NodeAddr,
        timer: WorkerTimer,
    },
    Executed {
        node: NodeAddr,
        rb: RunBatch,
        ms: Millis,
    },
    ManifestWritten {
        node: NodeAddr,
        manifest: JobManifest,
    },
    Listed {
        node: NodeAddr,
        client: NodeAddr,
        request_id: u64,
        model: String,
        input: String,
    },
    SdfsLoaded {
        node: NodeAddr,
        term: Term,
    },
    Remove {
        node: NodeAddr,
    },
    Rejoin {
        node: NodeAddr,
    },
}

impl Ev {
    fn target(&self) -> Option<&NodeAddr> {
        match self {
            Ev::Deliver { to, .. } => Some(to),
            Ev::CoordTimer { node, .. }
            | Ev::WorkerTimer { node, .. }
            | Ev::Executed { node, .. }
            | Ev::ManifestWritten { node, .. }
            | Ev::Listed { node, .. }
            | Ev::SdfsLoaded { node, .. } => Some(node),
            Ev::Remove { .. } | Ev::Rejoin { .. } => None,
        }
    }
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
    seed: u64,
    now: Millis,
    rng: ChaCha8Rng,
    seq: u64,
    queue: BinaryHeap<Reverse<(Millis, u64)>>,
    events: HashMap<u64, Ev>,
    nodes: BTreeMap<NodeAddr, Node>,
    view: BTreeSet<NodeAddr>,
    link: HashMap<(NodeAddr, NodeAddr), Millis>,
    cost: BTreeMap<String, f64>,
    inputs: BTreeMap<String, Vec<QueryId>>,
    sdfs_manifests: BTreeMap<JobId, JobManifest>,
    sdfs_results: BTreeMap<(JobId, QueryId), ResultMeta>,
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
    fn new(seed: u64, n: usize, cfg: JobsConfig, resnet_ms: f64, inception_ms: f64) -> Sim {
        let mut nodes = BTreeMap::new();
        for i in 1..=n {
            let a = addr(i);
            nodes.insert(
                a.clone(),
                Node {
                    coord: Coordinator::new(a, cfg.clone()),
                    worker: Worker::new(WorkerSettings::default()),
                    life: Life::Up,
                    speed: 1.0,
                    buffer: Vec::new(),
                },
            );
        }
        let view: BTreeSet<NodeAddr> = nodes.keys().cloned().collect();
        let mut sim = Sim {
            seed,
            now: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            nodes,
            view,
            link: HashMap::new(),
            cost: [
                ("resnet50".to_string(), resnet_ms),
                ("inception_v3".to_string(), inception_ms),
            ]
            .into(),
            inputs: BTreeMap::new(),
            sdfs_manifests: BTreeMap::new(),
            sdfs_results: BTreeMap::new(),
            inbox: Vec::new(),
            dispatched: Vec::new(),
            executed: Vec::new(),
            refused_stale: Vec::new(),
            fenced: Vec::new(),
            roles: Vec::new(),
            detect_ms: 1_500,
            next_request: 0,
        };
        let all: Vec<NodeAddr> = sim.view.iter().cloned().collect();
        for a in &all {
            let fx = sim.node(a).coord.on_members(0, &all);
            sim.coord_fx(a, fx);
        }
        let first = addr(1);
        let fx = sim.node(&first).coord.bootstrap(0, &all, 0);
        sim.coord_fx(&first, fx);
        sim
    }

    fn node(&mut self, a: &NodeAddr) -> &mut Node {
        self.nodes.get_mut(a).expect("known node")
    }

    fn add_inputs(&mut self, prefix: &str, n: usize) {
        let qs = (0..n).map(|i| format!("{prefix}img{i:05}.jpg")).collect();
        self.inputs.insert(prefix.to_string(), qs);
    }

    fn schedule(&mut self, at: Millis, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, ev);
    }

    /// TCP-like link: 1-4 ms, in order per (from, to).
    fn send(&mut self, from: &NodeAddr, to: &NodeAddr, msg: Msg) {
        let lat = self.rng.gen_range(1..=4);
        let key = (from.clone(), to.clone());
        let at = (self.now + lat).max(self.link.get(&key).copied().unwrap_or(0));
        self.link.insert(key, at);
        self.schedule(
            at,
            Ev::Deliver {
                from: from.clone(),
                to: to.clone(),
                msg,
            },
        );
    }

    fn coord_fx(&mut self, node: &NodeAddr, fx: Vec<Effect>) {
        for e in fx {
            match e {
                Effect::Send { to, msg } => {
                    match &msg {
                        Msg::RunBatch(rb) => {
                            self.dispatched
                                .push((self.now, node.clone(), to.clone(), rb.clone()))
                        }
                        Msg::Fenced { .. } => {
                            self.fenced.push((self.now, node.clone(), to.clone()))
                        }
                        _ => {}
                    }
                    self.send(node, &to, msg);
                }
                Effect::SetTimer { at, timer } => self.schedule(
                    at,
                    Ev::CoordTimer {
                        node: node.clone(),
                        timer,
                    },
                ),
                Effect::ListInputs {
                    client,
                    request_id,
                    model,
                    input,
                } => self.schedule(
                    self.now + 3,
                    Ev::Listed {
                        node: node.clone(),
                        client,
                        request_id,
                        model,
                        input,
                    },
                ),
                Effect::WriteManifest { manifest } => self.schedule(
                    self.now + 8,
                    Ev::ManifestWritten {
                        node: node.clone(),
                        manifest,
                    },
                ),
                Effect::LoadJobsFromSdfs { term } => self.schedule(
                    self.now + 30,
                    Ev::SdfsLoaded {
                        node: node.clone(),
                        term,
                    },
                ),
                Effect::RoleChanged { role, reign } => {
                    self.roles
                        .push((self.now, node.clone(), role, reign.term.epoch))
                }
            }
        }
    }

    fn worker_fx(&mut self, node: &NodeAddr, fx: Vec<WorkerEffect>) {
        for e in fx {
            match e {
                WorkerEffect::Send { to, msg } => {
                    if let Msg::WorkerRefused {
                        reason: RefuseReason::StaleTerm,
                        ..
                    } = &msg
                    {
                        self.refused_stale
                            .push((self.now, node.clone(), to.clone()));
                    }
                    self.send(node, &to, msg);
                }
                WorkerEffect::Execute(rb) => {
                    let per =
                        self.cost.get(&rb.model).copied().unwrap_or(100.0) * self.node(node).speed;
                    let mut ms = 5.0;
                    for _ in &rb.queries {
                        ms += per * self.rng.gen_range(0.9..1.1);
                    }
                    let ms = ms as Millis;
                    self.executed.push((self.now, node.clone(), rb.clone()));
                    self.schedule(
                        self.now + ms,
                        Ev::Executed {
                            node: node.clone(),
                            rb,
                            ms,
                        },
                    );
                }
                WorkerEffect::SetTimer { at, timer } => self.schedule(
                    at,
                    Ev::WorkerTimer {
                        node: node.clone(),
                        timer,
                    },
                ),
            }
        }
    }

    fn step(&mut self) -> bool {
        let Some(Reverse((at, id))) = self.queue.pop() else {
            return false;
        };
        self.now = self.now.max(at);
        let ev = self.events.remove(&id).expect("scheduled event");
        if let Some(t) = ev.target() {
            if t.as_str() != CLIENT {
                match self.nodes.get(t).map(|n| n.life) {
                    Some(Life::Dead) | None => return true,
                    Some(Life::Paused) => {
                        let t = t.clone();
                        self.node(&t).buffer.push(ev);
                        return true;
                    }
                    Some(Life::Up) => {}
                }
            }
        }
        self.handle(ev);
        true
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Deliver { from, to, msg } => {
                if to.as_str() == CLIENT {
                    self.inbox.push((now, msg));
                    return;
                }
                if msg.is_for_worker() {
                    let fx = self.node(&to).worker.on_message(now, &from, msg.clone());
                    self.worker_fx(&to, fx);
                }
                if msg.is_for_coordinator() {
                    let fx = self.node(&to).coord.on_message(now, &from, msg);
                    self.coord_fx(&to, fx);
                }
            }
            Ev::CoordTimer { node, timer } => {
                let fx = self.node(&node).coord.on_timer(now, timer);
                self.coord_fx(&node, fx);
            }
            Ev::WorkerTimer { node, timer } => {
                let fx = self.node(&node).worker.on_timer(now, timer);
                self.worker_fx(&node, fx);
            }
            Ev::Executed { node, rb, ms } => {
                // Results reach SDFS before the report: a reported result is never lost.
                let per = ms as f64 / rb.queries.len().max(1) as f64;
                for q in &rb.queries {
                    let m = self
                        .sdfs_results
                        .entry((rb.job, q.clone()))
                        .or_insert(ResultMeta {
                            writes: 0,
                            first_at: now,
                            per_query_ms: per,
                            worker: node.clone(),
                        });
                    m.writes += 1;
                }
                let ex = Executed {
                    results_written: rb.queries.clone(),
                    failed: vec![],
                    compute_ms: ms,
                };
                let fx = self.node(&node).worker.on_executed(now, rb.batch, ex);
                self.worker_fx(&node, fx);
            }
            Ev::ManifestWritten { node, manifest } => {
                let id = manifest.id;
                self.sdfs_manifests.insert(id, manifest);
                let fx = self.node(&node).coord.on_manifest_written(now, id);
                self.coord_fx(&node, fx);
            }
            Ev::Listed {
                node,
                client,
                request_id,
                model,
                input,
            } => {
                let qs = self.inputs.get(&input).cloned().unwrap_or_default();
                let fx = self
                    .node(&node)
                    .coord
                    .submit(now, client, request_id, &model, &input, qs);
                self.coord_fx(&node, fx);
            }
            Ev::SdfsLoaded { node, term } => {
                let manifests = self.sdfs_manifests.values().cloned().collect();
                let results = self
                    .sdfs_results
                    .iter()
                    .map(|((job, q), m)| ResultFound {
                        job: *job,
                        query: q.clone(),
                        per_query_ms: Some(m.per_query_ms),
                        at: Some(m.first_at),
                        worker: Some(m.worker.clone()),
                    })
                    .collect();
                let fx = self
                    .node(&node)
                    .coord
                    .on_sdfs_loaded(now, term, manifests, results);
                self.coord_fx(&node, fx);
            }
            Ev::Remove { node } => {
                self.view.remove(&node);
                self.announce_view();
            }
            Ev::Rejoin { node } => {
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
        let now = self.now;
        for a in running {
            let fx = self.node(&a).coord.on_members(now, &live);
            self.coord_fx(&a, fx);
        }
    }

    fn run_until(&mut self, t: Millis) {
        while self.queue.peek().is_some_and(|Reverse((at, _))| *at <= t) {
            self.step();
        }
        self.now = self.now.max(t);
    }

    /// Runs until `done` holds (checked after every event); panics after `limit`.
    fn run_until_cond(&mut self, limit: Millis, what: &str, mut done: impl FnMut(&Sim) -> bool) {
        while !done(self) {
            let next = self.queue.peek().map(|Reverse((at, _))| *at);
            match next {
                Some(at) if at <= limit => {
                    self.step();
                }
                _ => panic!(
                    "seed {}: `{what}` not reached by {limit} ms (now {})",
                    self.seed, self.now
                ),
            }
        }
    }

    fn kill(&mut self, a: &NodeAddr) {
        self.node(a).life = Life::Dead;
        self.schedule(self.now + self.detect_ms, Ev::Remove { node: a.clone() });
    }

    fn pause(&mut self, a: &NodeAddr) {
        self.node(a).life = Life::Paused;
        self.schedule(self.now + self.detect_ms, Ev::Remove { node: a.clone() });
    }

    fn resume(&mut self, a: &NodeAddr) {
        let n = self.node(a);
        n.life = Life::Up;
        let buffered = std::mem::take(&mut n.buffer);
        for ev in buffered {
            self.schedule(self.now, ev);
        }
        self.schedule(self.now + self.detect_ms, Ev::Rejoin { node: a.clone() });
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
            .unwrap_or_else(|| panic!("seed {}: no primary at {}", self.seed, self.now));
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
        self.run_until_cond(self.now + 5_000, "job accepted", |s| {
            s.accepted(r).is_some()
        });
        self.accepted(r).expect("accepted")
    }

    fn processed(&self, coord: &Coordinator, job: JobId) -> u64 {
        stats::c1(coord.state(), self.now, 10_000)
            .into_iter()
            .find(|r| r.job == job)
            .map_or(0, |r| r.processed)
    }

    /// The property the whole design exists for: every query of the job has exactly one
    /// committed result, counted once in the statistics, and a result file in SDFS.
    fn assert_exactly_once(&self, job: JobId) {
        let seed = self.seed;
        let c = self.primary_coord();
        let j = c
            .state()
            .jobs
            .get(&job)
            .unwrap_or_else(|| panic!("seed {seed}: job {job} unknown"));
        let total = j.manifest.queries.len();
        assert!(total > 0);
        assert_eq!(j.outcomes.len(), total, "seed {seed}: outcomes of {job}");
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
        for q in &j.manifest.queries {
            assert!(
                self.sdfs_results.contains_key(&(job, q.clone())),
                "seed {seed}: no result for {q}"
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
    for_seeds(|seed| {
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
    });
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
    for_seeds(|seed| {
        let (resnet, inception) = (100.0, 180.0);
        let mut sim = Sim::new(seed, 8, cfg(4, resnet, inception), resnet, inception);
        sim.add_inputs("a/", 4_000);
        sim.add_inputs("b/", 1_500);
        let a = sim.submit_and_wait("resnet50", "a/");
        sim.run_until(20_000);
        let submitted_b = sim.now;
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
            let rates = stats::c1(c.state(), sim.now, 10_000);
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
        if let StatusReport::Assignment { shares, .. } =
            sim.primary_coord().status(sim.now, StatusKind::Assignment)
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
    });
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
    for_seeds(|seed| {
        let mut sim = Sim::new(seed, 6, cfg(8, 100.0, 170.0), 100.0, 170.0);
        sim.add_inputs("imgs/", 400);
        let job = sim.submit_and_wait("inception_v3", "imgs/");
        sim.run_until(sim.now + 3_000);
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
        let killed_at = sim.now;
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
    });
}

#[test]
fn killed_coordinator_standby_takes_over_with_stats_intact() {
    for_seeds(|seed| {
        let mut sim = Sim::new(seed, 6, cfg(8, 100.0, 170.0), 100.0, 170.0);
        sim.add_inputs("r/", 500);
        sim.add_inputs("i/", 300);
        let a = sim.submit_and_wait("resnet50", "r/");
        let b = sim.submit_and_wait("inception_v3", "i/");
        sim.run_until(sim.now + 4_000);
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
        sim.run_until_cond(sim.now + 5_000, "standby took over", |s| {
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
            .find(|(_, n, r, e)| *n == standby && *r == RoleKind::Primary && *e == old_epoch + 1)
            .map(|(t, ..)| *t)
            .unwrap();
        assert!(
            !sim.executed
                .iter()
                .any(|(t, _, r)| *t > new_term_at + 100 && r.term.epoch == old_epoch),
            "seed {seed}"
        );
    });
}

#[test]
fn coordinator_standby_and_a_worker_killed_together_lose_nothing() {
    for_seeds(|seed| {
        let mut sim = Sim::new(seed, 7, cfg(8, 100.0, 170.0), 100.0, 170.0);
        sim.add_inputs("r/", 600);
        sim.add_inputs("i/", 300);
        let a = sim.submit_and_wait("resnet50", "r/");
        let b = sim.submit_and_wait("inception_v3", "i/");
        sim.run_until(sim.now + 3_000);
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
        sim.run_until_cond(sim.now + 5_000, "heir coordinates", |s| {
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
    });
}

#[test]
fn paused_old_coordinator_is_fenced_when_it_wakes_up() {
    for_seeds(|seed| {
        let mut sim = Sim::new(seed, 6, cfg(8, 100.0, 170.0), 100.0, 170.0);
        sim.add_inputs("r/", 600);
        let job = sim.submit_and_wait("resnet50", "r/");
        sim.run_until(sim.now + 2_000);
        let old = sim.primary().unwrap();
        let old_epoch = sim.primary_coord().reign().unwrap().term.epoch;
        let standby = sim.standby_of_primary().unwrap();
        sim.pause(&old);
        sim.run_until(sim.now + 4_000);
        assert_eq!(
            sim.primary(),
            Some(standby.clone()),
            "seed {seed}: standby took over"
        );
        let resumed_at = sim.now;
        sim.resume(&old);
        // It wakes up believing it coordinates, acts on what it missed...
        assert_eq!(sim.nodes[&old].coord.role(), RoleKind::Primary);
        sim.run_until(sim.now + 500);
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
    });
}

#[test]
fn slow_worker_batch_is_reissued_and_the_first_result_wins() {
    for_seeds(|seed| {
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
        sim.run_until(sim.now + 30_000);
        assert!(
            sim.primary_coord().counters().duplicate_results >= 8,
            "seed {seed}"
        );
        sim.assert_exactly_once(job);
    });
}

#[test]
fn c3_changes_the_size_of_subsequent_batches() {
    for_seeds(|seed| {
        let mut sim = Sim::new(seed, 4, cfg(8, 100.0, 170.0), 100.0, 170.0);
        sim.add_inputs("r/", 400);
        let job = sim.submit_and_wait("resnet50", "r/");
        sim.run_until(sim.now + 2_000);
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
        sim.run_until_cond(sim.now + 1_000, "C3 acknowledged", |s| {
            s.inbox.iter().any(
                |(_, m)| matches!(m, Msg::BatchSizeSet { request_id, .. } if *request_id == good),
            )
        });
        let acked_at = sim.now;
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
