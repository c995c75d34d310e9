//! Inference jobs on a real 8-node loopback cluster (the built binary, fast failure-
//! detector timings, synthetic weights, tiny generated PNGs). One cluster runs the
//! scenarios of issue 5 in order: both models end to end with C1-C5 and refusals, kill -9
//! of a worker, of the coordinator, SIGSTOP/SIGCONT of the coordinator (fencing and
//! rejoin), and kill -9 of coordinator + standby + worker together (rebuild from SDFS).
//! After each, every query of every job has exactly one result name in SDFS and C1
//! counts each query once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Cluster, RoleEvent, Timings};
use dml_actors::control::Command;
use dml_actors::jobs::types::QueryInput;
use dml_actors::jobs::worker_actor::QueryResult;
use dml_actors::jobs::{BatchId, JobId, Msg, RunBatch, Term};
use dml_actors::net::body::Body;
use serde_json::Value;

const NODES: usize = 8;
/// Generous bound for one job on this 2-core machine (several nodes share the cores).
const JOB_WITHIN: Duration = Duration::from_secs(120);

/// Removes the synthetic weights when the test ends, however it ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A job command's JSON answer, or the node's one-line error.
fn ask(via: &str, cmd: Command) -> Result<Value, String> {
    let reply = common::ctl_within(via, cmd, Duration::from_secs(30))??;
    serde_json::from_str(&reply.json).map_err(|e| e.to_string())
}

/// C1 with a short timeout (None while the coordinator is changing hands).
fn c1(via: &str) -> Option<Vec<Value>> {
    let reply = common::ctl_within(via, Command::C1, Duration::from_secs(5))
        .ok()?
        .ok()?;
    serde_json::from_str::<Value>(&reply.json)
        .ok()?
        .as_array()
        .cloned()
}

fn row<'a>(rows: &'a [Value], job: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["job"] == job)
}

fn submit(via: &str, model: &str, input: &str) -> (String, u64) {
    let v = ask(
        via,
        Command::C4 {
            model: model.into(),
            input: input.into(),
        },
    )
    .unwrap_or_else(|e| panic!("C4 {model} {input}: {e}"));
    let job = v["job"].as_str().expect("job id").to_string();
    (job, v["queries"].as_u64().expect("query count"))
}

fn set_batch(via: &str, model: &str, n: usize) {
    let v = ask(
        via,
        Command::C3 {
            model: model.into(),
            batch: n,
        },
    )
    .unwrap_or_else(|e| panic!("C3 {model} {n}: {e}"));
    assert_eq!(v["batch_size"], n as u64, "{v}");
}

/// Polls C1 on `via` until `job` is complete.
fn wait_complete(via: &str, job: &str) -> Duration {
    common::wait_for(JOB_WITHIN, &format!("job {job} complete"), || {
        let rows = c1(via)?;
        (row(&rows, job)?["complete"] == true).then_some(())
    })
    .1
}

/// SDFS names under a prefix.
fn names_under(c: &Cluster, via: &str, prefix: &str) -> Vec<String> {
    let v = c
        .sdfs(via, &format!("ls-prefix {prefix}"))
        .unwrap_or_else(|e| panic!("ls-prefix {prefix}: {e}"));
    v.as_array()
        .expect("ls-prefix answers a list")
        .iter()
        .filter_map(|n| n.as_str().map(String::from))
        .collect()
}

/// Exactly one result per query (`dml_bench::jobs_churn::check_exactly_once`: result
/// names, `C4 --results` and C1), each result from the synthetic weights. Returns the
/// results.
fn check_exactly_once(via: &str, job: &str, model: &str, inputs: &[String]) -> Vec<QueryResult> {
    let results = dml_bench::jobs_churn::check_exactly_once(
        &|cmd| ask(via, cmd),
        &|job| common::job_results(via, job),
        job,
        model,
        inputs,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for r in &results {
        assert!(r.synthetic, "{r:?}");
    }
    results
}

/// Every job so far is complete in C1 with each query counted once.
fn check_c1_totals(via: &str, jobs: &[(String, u64)]) {
    let rows = common::wait_for(Duration::from_secs(30), "C1", || c1(via)).0;
    for (job, n) in jobs {
        let r = row(&rows, job).unwrap_or_else(|| panic!("job {job} missing from C1: {rows:?}"));
        assert_eq!(
            (
                r["processed"].as_u64(),
                r["total"].as_u64(),
                r["complete"].as_bool()
            ),
            (Some(*n), Some(*n), Some(true)),
            "{r}"
        );
    }
}

/// C2 covers every query of every job (statistics survive takeovers).
fn check_c2_counts(via: &str, jobs: &[(String, u64)]) {
    let rows = ask(via, Command::C2).unwrap_or_else(|e| panic!("C2: {e}"));
    for (job, n) in jobs {
        let r = rows
            .as_array()
            .and_then(|a| a.iter().find(|r| r["job"] == job.as_str()))
            .unwrap_or_else(|| panic!("job {job} missing from C2: {rows}"));
        assert_eq!(r["stats"]["count"].as_u64(), Some(*n), "C2 of {job}: {r}");
        assert!(
            r["stats"]["mean_ms"].as_f64().is_some_and(|m| m > 0.0),
            "C2 of {job}: {r}"
        );
    }
}

/// Sizes of the batches that produced a job's results: one batch writes its results
/// with one worker and one timestamp.
fn batch_sizes(results: &[QueryResult]) -> Vec<usize> {
    let mut groups: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for r in results {
        *groups.entry((r.worker.clone(), r.at_wall_ms)).or_default() += 1;
    }
    groups.into_values().collect()
}

/// (node addr, job, model, queries) of every busy worker in C5.
fn busy(via: &str) -> Option<Vec<(String, String, String, u64)>> {
    let reply = common::ctl_within(via, Command::C5, Duration::from_secs(5))
        .ok()?
        .ok()?;
    let v: Value = serde_json::from_str(&reply.json).ok()?;
    Some(
        v["nodes"]
            .as_array()?
            .iter()
            .filter_map(|n| {
                Some((
                    n["node"].as_str()?.to_string(),
                    n["job"].as_str()?.to_string(),
                    n["model"].as_str()?.to_string(),
                    n["queries"].as_u64()?,
                ))
            })
            .collect(),
    )
}

/// Who coordinates and who stands by, from the nodes' own `event=role` lines: the live
/// node whose latest line says Primary with the highest epoch, and the live node whose
/// latest line says Standby (newest).
fn roles(c: &Cluster, live: &[String]) -> Option<(String, String, u64)> {
    let last: Vec<(String, RoleEvent)> = live
        .iter()
        .filter_map(|n| c.role_events(n).pop().map(|e| (n.clone(), e)))
        .collect();
    let (coord, ev) = last
        .iter()
        .filter(|(_, e)| e.role == "Primary")
        .max_by_key(|(_, e)| e.epoch)?;
    let standby = last
        .iter()
        .filter(|(n, e)| e.role == "Standby" && n != coord && e.epoch == ev.epoch)
        .max_by_key(|(_, e)| e.wall)?;
    Some((coord.clone(), standby.0.clone(), ev.epoch))
}

fn wait_roles(c: &Cluster, live: &[String], what: &str) -> (String, String, u64) {
    common::wait_for(Duration::from_secs(30), what, || roles(c, live)).0
}

/// Live nodes other than `except`.
fn others(live: &[String], except: &[&String]) -> Vec<String> {
    live.iter()
        .filter(|n| !except.contains(n))
        .cloned()
        .collect()
}

/// Puts a folder of `n` generated images under `inputs/<name>/`; returns the query ids.
fn put_images(c: &Cluster, via: &str, work: &Path, name: &str, n: usize, seed: u64) -> Vec<String> {
    let dir = work.join(name);
    let files = common::write_pngs(&dir, name, n, seed);
    c.sdfs(via, &format!("put {} inputs/{name}", dir.display()))
        .unwrap_or_else(|e| panic!("put {name}: {e}"));
    let inputs: Vec<String> = files.iter().map(|f| format!("inputs/{name}/{f}")).collect();
    assert_eq!(names_under(c, via, &format!("inputs/{name}/")), inputs);
    inputs
}

/// Waits until every SDFS name under the prefixes has all its replicas on live nodes,
/// so that the next three simultaneous failures leave a copy of each.
fn wait_replicated(c: &Cluster, via: &str, prefixes: &[&str], live_addrs: &[String]) {
    let want = live_addrs.len().min(4);
    let names: Vec<String> = prefixes
        .iter()
        .flat_map(|p| names_under(c, via, p))
        .collect();
    let (_, took) = common::wait_for(
        Duration::from_secs(60),
        "re-replication before the triple kill",
        || {
            names
                .iter()
                .all(|n| {
                    c.sdfs(via, &format!("ls {n}")).is_ok_and(|v| {
                        let hs: Vec<&str> = v["holders"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|h| h.as_str()).collect())
                            .unwrap_or_default();
                        hs.len() >= want && hs.iter().all(|h| live_addrs.iter().any(|a| a == h))
                    })
                })
                .then_some(())
        },
    );
    eprintln!(
        "{} names fully replicated on live nodes ({took:?})",
        names.len()
    );
}

#[test]
fn inference_jobs_on_a_real_cluster_lose_and_double_count_nothing() {
    let t = Timings::fast();
    let weights =
        TempDir(std::env::temp_dir().join(format!("dml-test-jobs-weights-{}", std::process::id())));
    common::synth_weights(&weights.0);
    let extra = format!(
        "[inference]\nthreads = 1\nweights_dir = \"{}\"\n",
        weights.0.display()
    );
    let started = Instant::now();
    let mut c = Cluster::start("jobs", NODES, &t, &extra);
    let all: Vec<String> = c.nodes.iter().map(|(_, a)| a.clone()).collect();
    c.wait_views(&all, Duration::from_secs(120), "formation", |v| {
        v.len() == NODES && v.iter().all(|(_, _, s)| s == "alive")
    });
    let mut live: Vec<String> = c.nodes.iter().map(|(n, _)| n.clone()).collect();
    let (coord, standby, epoch) = wait_roles(&c, &live, "first reign");
    eprintln!(
        "cluster formed in {:?}: coordinator {coord}, standby {standby}, epoch {epoch}",
        started.elapsed()
    );
    let work = c.dir.join("work");
    let mut done_jobs: Vec<(String, u64)> = Vec::new();

    // ---- 1. End to end: both models at once, C1-C5, C3, refusals. ----
    let via_name = others(&live, &[&coord, &standby])[0].clone();
    let via = c.addr(&via_name);
    let inputs1 = put_images(&c, &via, &work, "e2e", 12, 1);
    // A folder given to C4 is stored in SDFS first, by the tool that holds it.
    let local2 = work.join("e2elocal");
    let files2 = common::write_pngs(&local2, "e2elocal", 12, 2);
    let inputs2: Vec<String> = files2
        .iter()
        .map(|f| format!("inputs/e2elocal/{f}"))
        .collect();
    // C3 before the jobs: every batch they are cut into has the new sizes (default 8).
    set_batch(&via, "resnet50", 3);
    set_batch(&via, "inception_v3", 4);
    let t1 = Instant::now();
    // The folder job first: storing the folder takes a while, and a job submitted before
    // it could be over before C5 is first polled.
    let (j2, n2) = submit(&via, "inception_v3", &local2.display().to_string());
    let (j1, n1) = submit(&via, "resnet50", "inputs/e2e");
    assert_eq!((n1, n2), (12, 12));
    assert_ne!(j1, j2);
    assert_eq!(names_under(&c, &via, "inputs/e2elocal/"), inputs2);
    // Watch C5 while they run.
    let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut c5_nodes: BTreeSet<String> = BTreeSet::new();
    let done = |j: &str| {
        c1(&via)
            .and_then(|r| row(&r, j).map(|r| r["complete"] == true))
            .unwrap_or(false)
    };
    while !(done(&j1) && done(&j2)) {
        assert!(
            t1.elapsed() < JOB_WITHIN,
            "jobs {j1}, {j2} not complete within {JOB_WITHIN:?}"
        );
        if let Ok(Ok(reply)) = common::ctl_within(&via, Command::C5, Duration::from_secs(5)) {
            let v: Value = serde_json::from_str(&reply.json).unwrap();
            for n in v["nodes"].as_array().unwrap() {
                c5_nodes.insert(n["node"].as_str().unwrap().to_string());
                if let (Some(m), Some(q)) = (n["model"].as_str(), n["queries"].as_u64()) {
                    seen.entry(m.to_string()).or_default().insert(q);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    eprintln!("1. both jobs ({j1} resnet50, {j2} inception_v3; 12 queries each) done in {:?}; C5 batch sizes {seen:?}", t1.elapsed());
    assert_eq!(
        c5_nodes,
        all.iter().cloned().collect(),
        "C5 lists every live node"
    );
    // Every worker that ran a batch reports the precision its model computes in (the
    // test config leaves `[inference] precision` at its default, fp32).
    let reply = common::ctl_within(&via, Command::C5, Duration::from_secs(5))
        .expect("C5 in time")
        .expect("C5");
    let v: Value = serde_json::from_str(&reply.json).unwrap();
    let precisions: BTreeSet<String> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["precision"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        precisions,
        BTreeSet::from(["fp32".to_string()]),
        "C5 names the workers' precision: {}",
        reply.text
    );
    assert!(reply.text.contains("precision"), "{}", reply.text);
    assert_eq!(
        seen.get("resnet50"),
        Some(&BTreeSet::from([3])),
        "resnet50 batches after C3 resnet50 3"
    );
    assert_eq!(
        seen.get("inception_v3"),
        Some(&BTreeSet::from([4])),
        "inception_v3 batches after C3 inception_v3 4"
    );
    let r1 = check_exactly_once(&via, &j1, "resnet50", &inputs1);
    let r2 = check_exactly_once(&via, &j2, "inception_v3", &inputs2);
    assert_eq!(
        batch_sizes(&r1),
        vec![3; 4],
        "resnet50 results come from batches of 3"
    );
    assert_eq!(
        batch_sizes(&r2),
        vec![4; 3],
        "inception_v3 results come from batches of 4"
    );
    done_jobs.extend([(j1.clone(), n1), (j2.clone(), n2)]);
    // C2: statistics over every committed query.
    let c2 = ask(&via, Command::C2).unwrap();
    for (job, n) in &done_jobs {
        let s = &c2
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["job"] == job.as_str())
            .unwrap()["stats"];
        assert_eq!(s["count"].as_u64(), Some(*n), "C2 {job}: {s}");
        let f = |k: &str| s[k].as_f64().unwrap();
        assert!(f("mean_ms") > 0.0 && f("std_ms") >= 0.0, "{s}");
        assert!(
            f("median_ms") <= f("p90_ms")
                && f("p90_ms") <= f("p95_ms")
                && f("p95_ms") <= f("p99_ms"),
            "{s}"
        );
    }
    // C1 on any node gives the same answer (the coordinator's).
    let rows = c1(&c.addr(&coord)).unwrap();
    assert_eq!(row(&rows, &j1).unwrap()["processed"], 12);
    // Refusals: one line each, naming the problem; nothing is created.
    let e = ask(
        &via,
        Command::C4 {
            model: "resnet50".into(),
            input: "inputs/missing".into(),
        },
    )
    .unwrap_err();
    assert!(
        e.contains("no input files under `inputs/missing`") && !e.contains('\n'),
        "{e}"
    );
    let e = ask(
        &via,
        Command::C4 {
            model: "vgg16".into(),
            input: "inputs/e2e".into(),
        },
    )
    .unwrap_err();
    assert!(
        e.contains("unknown model `vgg16`") && e.contains("resnet50") && !e.contains('\n'),
        "{e}"
    );
    let e = ask(
        &via,
        Command::C3 {
            model: "vgg16".into(),
            batch: 2,
        },
    )
    .unwrap_err();
    assert!(
        e.contains("unknown model `vgg16`") && !e.contains('\n'),
        "{e}"
    );
    let rows = c1(&via).unwrap();
    assert_eq!(rows.len(), 2, "a refused job left a trace: {rows:?}");

    // ---- 2. kill -9 a worker that is running a batch. ----
    set_batch(&via, "resnet50", 2);
    let inputs3 = put_images(&c, &via, &work, "w", 16, 3);
    let (j3, n3) = submit(&via, "resnet50", "inputs/w");
    let t2 = Instant::now();
    let mut sizes3 = BTreeSet::new();
    let (victim, _) = common::wait_for(Duration::from_secs(60), "a worker running a batch", || {
        let b = busy(&via)?;
        sizes3.extend(b.iter().filter(|x| x.1 == j3).map(|x| x.3));
        b.into_iter()
            .map(|(node, job, _, _)| (c.name_of(&node), job))
            .find(|(n, job)| *job == j3 && ![&coord, &standby, &via_name].contains(&n))
            .map(|(n, _)| n)
    });
    let rows = c1(&via).unwrap();
    assert!(
        !row(&rows, &j3).unwrap()["complete"].as_bool().unwrap(),
        "job finished before the kill"
    );
    c.kill9(&victim);
    live.retain(|n| *n != victim);
    let took = wait_complete(&via, &j3);
    eprintln!(
        "2. killed worker {victim} mid-job; job {j3} complete {took:?} later ({:?} in all)",
        t2.elapsed()
    );
    check_exactly_once(&via, &j3, "resnet50", &inputs3);
    assert_eq!(
        sizes3.iter().max(),
        Some(&2),
        "C3 resnet50 2 applies to the next job's batches: {sizes3:?}"
    );
    done_jobs.push((j3.clone(), n3));

    // ---- 3. kill -9 the coordinator mid-job: the standby takes over. ----
    let (coord, standby, epoch) = wait_roles(&c, &live, "roles before the coordinator kill");
    let via_name = others(&live, &[&coord, &standby])[0].clone();
    let via = c.addr(&via_name);
    let c2_before = ask(&via, Command::C2).unwrap();
    set_batch(&via, "inception_v3", 2);
    let inputs4 = put_images(&c, &via, &work, "c", 24, 4);
    let (j4, n4) = submit(&via, "inception_v3", "inputs/c");
    let (processed, _) =
        common::wait_for(Duration::from_secs(60), "a first committed batch", || {
            let rows = c1(&via)?;
            row(&rows, &j4)?["processed"].as_u64().filter(|p| *p > 0)
        });
    assert!(
        processed < n4,
        "job {j4} finished before the coordinator could be killed"
    );
    let t3 = Instant::now();
    c.kill9(&coord);
    live.retain(|n| *n != coord);
    let (new, _) = common::wait_for(Duration::from_secs(30), "takeover", || {
        roles(&c, &live).filter(|r| r.2 > epoch)
    });
    eprintln!(
        "3. killed coordinator {coord} with {processed}/{n4} done; {} took over in {:?} (epoch {})",
        new.0,
        t3.elapsed(),
        new.2
    );
    assert_eq!(new.0, standby, "the hot standby takes over");
    wait_complete(&via, &j4);
    eprintln!("   job {j4} complete {:?} after the kill", t3.elapsed());
    check_exactly_once(&via, &j4, "inception_v3", &inputs4);
    done_jobs.push((j4.clone(), n4));
    check_c1_totals(&via, &done_jobs);
    // C2 of the earlier jobs survived the takeover unchanged.
    let c2_after = ask(&via, Command::C2).unwrap();
    for before in c2_before.as_array().unwrap() {
        let after = c2_after
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["job"] == before["job"])
            .unwrap();
        assert_eq!(
            before["stats"]["count"], after["stats"]["count"],
            "{before} / {after}"
        );
        let (a, b) = (
            before["stats"]["mean_ms"].as_f64().unwrap(),
            after["stats"]["mean_ms"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-6, "{before} / {after}");
    }

    // ---- 4. SIGSTOP the coordinator past the failure timeout, then SIGCONT. ----
    let (coord, standby, epoch) = wait_roles(&c, &live, "roles before the pause");
    let via_name = others(&live, &[&coord, &standby])[0].clone();
    let via = c.addr(&via_name);
    let coord_addr = c.addr(&coord);
    let old_inc = c
        .members(&via)
        .unwrap()
        .iter()
        .find(|m| m.0 == coord_addr)
        .unwrap()
        .1;
    let inputs5 = put_images(&c, &via, &work, "p", 32, 5);
    let (j5, n5) = submit(&via, "inception_v3", "inputs/p");
    common::wait_for(Duration::from_secs(60), "a first committed batch", || {
        let rows = c1(&via)?;
        row(&rows, &j5)?["processed"].as_u64().filter(|p| *p > 0)
    });
    let t4 = Instant::now();
    c.signal(&coord, "-STOP");
    let rest: Vec<String> = others(&live, &[&coord]);
    let rest_addrs: Vec<String> = rest.iter().map(|n| c.addr(n)).collect();
    c.wait_views(
        &rest_addrs,
        t.bound() + Duration::from_secs(10),
        "paused coordinator removed",
        |v| v.iter().all(|(a, _, _)| *a != coord_addr),
    );
    let (new, _) = common::wait_for(
        Duration::from_secs(30),
        "takeover from the paused coordinator",
        || roles(&c, &rest).filter(|r| r.2 > epoch),
    );
    assert_eq!(new.0, standby, "the hot standby takes over");
    // The new coordinator answers C1 and commits batches before the old one wakes.
    let (p0, _) = common::wait_for(
        Duration::from_secs(30),
        "C1 from the new coordinator",
        || row(&c1(&via)?, &j5)?["processed"].as_u64(),
    );
    common::wait_for(
        JOB_WITHIN,
        "a batch committed by the new coordinator",
        || {
            let rows = c1(&via)?;
            let r = row(&rows, &j5)?;
            (r["processed"].as_u64()? > p0 || r["complete"] == true).then_some(())
        },
    );
    let paused = t4.elapsed();
    let woke = common::wall_ms();
    c.signal(&coord, "-CONT");
    eprintln!(
        "4. paused coordinator {coord} for {paused:?}; {} took over (epoch {}); resumed",
        new.0, new.2
    );
    // It steps down: its next role line (after waking) is not Primary.
    let (step, _) = common::wait_for(
        Duration::from_secs(20),
        "the old coordinator steps down",
        || c.role_events(&coord).into_iter().find(|e| e.wall >= woke),
    );
    assert_ne!(step.role, "Primary", "{step:?}");
    eprintln!("   old coordinator {coord} after waking: {step:?}");
    assert!(
        c.role_events(&coord)
            .iter()
            .all(|e| e.wall < woke || e.role != "Primary"),
        "old coordinator claimed Primary again"
    );
    // It rejoins as a member with a new incarnation.
    c.wait_views(
        &rest_addrs,
        Duration::from_secs(20),
        "old coordinator rejoins",
        |v| {
            v.iter()
                .any(|(a, inc, s)| *a == coord_addr && *inc > old_inc && s == "alive")
        },
    );
    wait_complete(&via, &j5);
    eprintln!(
        "   job {j5} complete {:?} after the pause began",
        t4.elapsed()
    );
    // Fencing, probed directly: a batch command of the old term (what the woken
    // coordinator sends) is refused by every node, while the same command with the current
    // term is run (so the probe does reach the workers and would show an acceptance).
    let old_term = Term {
        epoch,
        coordinator: coord_addr.as_str().into(),
    };
    let cur_term = Term {
        epoch: new.2,
        coordinator: c.addr(&new.0).as_str().into(),
    };
    let stale_job = JobId { epoch, seq: 9001 };
    let probe_job = JobId {
        epoch: new.2,
        seq: 9002,
    };
    for (i, n) in live.iter().enumerate() {
        for (term, job) in [(&old_term, stale_job), (&cur_term, probe_job)] {
            let rb = RunBatch {
                term: term.clone(),
                batch: BatchId {
                    epoch: term.epoch,
                    seq: 1_000_000 + i as u64,
                },
                job,
                model: "resnet50".into(),
                queries: vec![0],
                inputs: vec![QueryInput {
                    source: inputs5[i].clone(),
                    entry: None,
                }],
                weights: Default::default(),
            };
            common::send_oneway(&c.addr(n), Body::Jobs(Msg::RunBatch(rb))).unwrap();
        }
    }
    common::wait_for(
        Duration::from_secs(60),
        "probe batches of the current term run everywhere",
        || {
            (names_under(&c, &via, &format!("results/{probe_job}/")).len() == live.len())
                .then_some(())
        },
    );
    let stale = names_under(&c, &via, &format!("results/{stale_job}/"));
    assert!(
        stale.is_empty(),
        "batches of the fenced term were run: {stale:?}"
    );
    check_exactly_once(&via, &j5, "inception_v3", &inputs5);
    done_jobs.push((j5.clone(), n5));
    check_c1_totals(&via, &done_jobs);
    // Asked directly, the old coordinator answers with the new one's figures.
    check_c1_totals(&coord_addr, &done_jobs);
    check_c2_counts(&via, &done_jobs);

    // ---- 5. kill -9 coordinator + standby + a busy worker together. ----
    let (coord, standby, epoch) = wait_roles(&c, &live, "roles before the triple kill");
    let via_name = others(&live, &[&coord, &standby])[0].clone();
    let via = c.addr(&via_name);
    let inputs6 = put_images(&c, &via, &work, "t", 24, 6);
    let live_addrs: Vec<String> = live.iter().map(|n| c.addr(n)).collect();
    wait_replicated(&c, &via, &["jobs/", "inputs/", "results/"], &live_addrs);
    let (j6, n6) = submit(&via, "resnet50", "inputs/t");
    let (worker, _) = common::wait_for(Duration::from_secs(60), "a worker running a batch", || {
        let rows = c1(&via)?;
        let processed = row(&rows, &j6)?["processed"].as_u64()?;
        if processed == 0 {
            return None;
        }
        busy(&via)?
            .into_iter()
            .map(|(node, job, _, _)| (c.name_of(&node), job))
            .find(|(n, job)| *job == j6 && ![&coord, &standby, &via_name].contains(&n))
            .map(|(n, _)| n)
    });
    let rows = c1(&via).unwrap();
    assert!(
        !row(&rows, &j6).unwrap()["complete"].as_bool().unwrap(),
        "job finished before the kill"
    );
    let t5 = Instant::now();
    for v in [&coord, &standby, &worker] {
        c.kill9(v);
    }
    live.retain(|n| ![&coord, &standby, &worker].contains(&n));
    let (new, _) = common::wait_for(Duration::from_secs(60), "a node rebuilds from SDFS", || {
        roles_after_rebuild(&c, &live, epoch)
    });
    eprintln!("5. killed {coord} (coordinator), {standby} (standby), {worker} (worker); {new} rebuilt from SDFS in {:?}", t5.elapsed());
    wait_complete(&via, &j6);
    eprintln!("   job {j6} complete {:?} after the kill", t5.elapsed());
    check_exactly_once(&via, &j6, "resnet50", &inputs6);
    done_jobs.push((j6.clone(), n6));
    // Every earlier job is back from the manifests and result files alone, statistics
    // included (every result file records its processing time).
    check_c1_totals(&via, &done_jobs);
    check_c2_counts(&via, &done_jobs);
    eprintln!("all scenarios in {:?}", started.elapsed());
}

/// The live node that became coordinator with an epoch above `epoch` after rebuilding
/// the job table from SDFS (its log says so).
fn roles_after_rebuild(c: &Cluster, live: &[String], epoch: u64) -> Option<String> {
    live.iter()
        .find(|n| {
            let ev = c.role_events(n);
            ev.last()
                .is_some_and(|e| e.role == "Primary" && e.epoch > epoch)
                && ev.iter().any(|e| e.role == "Recovering" && e.epoch > epoch)
                && !c.log_lines(n, "event=jobs_rebuilt_from_sdfs").is_empty()
        })
        .cloned()
}

/// Every process of a cluster dies and the cluster restarts on its old data (SDFS keeps
/// the old job's manifest and results): the first reign starts above the old epochs, so
/// a new job never takes the old job's id, and its results are exactly its own queries.
#[test]
fn a_cluster_restarted_on_its_old_data_gives_new_jobs_new_ids() {
    const N: usize = 4;
    let t = Timings::fast();
    let weights = TempDir(
        std::env::temp_dir().join(format!("dml-test-restart-weights-{}", std::process::id())),
    );
    common::synth_weights(&weights.0);
    let extra = format!(
        "[inference]\nthreads = 1\nweights_dir = \"{}\"\n",
        weights.0.display()
    );
    let mut c = Cluster::start("restart", N, &t, &extra);
    let all: Vec<String> = c.nodes.iter().map(|(_, a)| a.clone()).collect();
    let formed = |c: &Cluster, what: &str| {
        c.wait_views(&all, Duration::from_secs(60), what, |v| {
            v.len() == N && v.iter().all(|(_, _, s)| s == "alive")
        });
    };
    formed(&c, "formation");
    let via = c.addr("H2");
    let work = c.dir.join("work");
    put_images(&c, &via, &work, "old", 6, 7);
    let (old, _) = submit(&via, "resnet50", "inputs/old");
    wait_complete(&via, &old);
    assert_eq!(common::job_results(&via, &old).unwrap().len(), 6);
    assert!(!names_under(&c, &via, &format!("results/{old}/")).is_empty());

    let names: Vec<String> = c.nodes.iter().map(|(n, _)| n.clone()).collect();
    for n in names.iter().chain(["introducer".to_string()].iter()) {
        c.kill9(n);
    }
    c.start_introducer();
    for (name, addr) in c.nodes.clone() {
        c.start_node(&name, &addr);
    }
    formed(&c, "formation after the restart");

    // With the old id, the old job's six results would be listed as this job's too.
    let inputs = put_images(&c, &via, &work, "new", 3, 8);
    let (new, n) = submit(&via, "resnet50", "inputs/new");
    assert_eq!(n, 3);
    let epoch = |j: &str| j.parse::<JobId>().expect("job id").epoch;
    assert!(
        epoch(&new) > epoch(&old),
        "job {new} after the restart reuses the epoch of {old}"
    );
    wait_complete(&via, &new);
    let results = common::job_results(&via, &new).unwrap();
    let mut got: Vec<&str> = results.iter().map(|r| r.query.as_str()).collect();
    got.sort();
    let mut want: Vec<&str> = inputs.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(
        got, want,
        "the new job's results are exactly its own inputs"
    );
    for name in names_under(&c, &via, &format!("results/{new}/")) {
        let (job, _) = dml_actors::jobs::types::parse_result_name(&name).expect("a result object");
        assert_eq!(job.to_string(), new, "{name}");
    }
}
