//! A real image set end to end (issue 15, item 6): 10,000 generated JPEGs of varied sizes,
//! packed into tar archives of 1,000 as a user with a large folder would, stored with one
//! directory put, one ResNet-50 job over them on a 10-node local cluster, the results
//! exported with the real `dml ctl results JOB --out FILE` (and an interrupted export
//! resumed to the same file), and every row checked: each input exactly once, numbered
//! in order, classified as `dml classify` classifies the same image. Set `DML_LARGE_JOB_IMAGES` to run another size.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command as Proc;
use std::time::{Duration, Instant};

use common::{Cluster, Timings};
use dml_actors::control::{Command, Request};
use dml_actors::jobs::archive;
use dml_actors::jobs::types::QueryResult;
use serde_json::Value;

const NODES: usize = 10;
const PER_ARCHIVE: usize = 1_000;

fn images() -> usize {
    std::env::var("DML_LARGE_JOB_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Writes `n` JPEGs of varied sizes into `dir` (the ones `dml classify` reads) and the
/// same bytes as tar archives of [`PER_ARCHIVE`] into `tars`.
fn write_set(dir: &Path, tars: &Path, n: usize) {
    fs::create_dir_all(dir).unwrap();
    fs::create_dir_all(tars).unwrap();
    let mut batch = Vec::new();
    for i in 0..n {
        let iu = i as u32;
        let (w, h) = (80 + (iu * 37) % 320, 60 + (iu * 53) % 240);
        let img = dml_bench::images::generated_image(iu, w, h);
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        let name = format!("img{i:05}.jpg");
        fs::write(dir.join(&name), &bytes).unwrap();
        batch.push((name, bytes));
        if batch.len() == PER_ARCHIVE || i + 1 == n {
            let k = i / PER_ARCHIVE;
            fs::write(
                tars.join(format!("part-{k:03}.tar")),
                archive::build(&batch),
            )
            .unwrap();
            batch.clear();
        }
    }
}

fn json(addr: &str, cmd: impl Into<Request>, within: Duration) -> Value {
    let reply = common::ctl_within(addr, cmd, within)
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&reply.json).unwrap()
}

/// Whether two top-5 lists agree: the same class at every rank, except where both lists
/// hold a near tie (synthetic weights give many classes almost the same probability, and
/// a batch of another size may round the last bit differently).
fn same_top5(a: &[(u64, f64)], b: &[(u64, f64)]) -> bool {
    a.len() == 5
        && b.len() == 5
        && a.iter().zip(b).all(|((ia, pa), (ib, pb))| {
            (pa - pb).abs() < 1e-4 && (ia == ib || (pa - pb).abs() < 1e-6)
        })
}

fn top5_of(v: &Value) -> Vec<(u64, f64)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        t["index"].as_u64().unwrap_or(9999),
                        t["prob"].as_f64().unwrap_or(-1.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn ten_thousand_images_in_archives_end_to_end() {
    let n = images();
    let started = Instant::now();
    let t = Timings::fast();
    let root = std::env::temp_dir().join(format!("dml-test-bigset-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let weights = root.join("weights");
    common::synth_weights(&weights);
    let (dir, tars) = (root.join("images"), root.join("bigset"));
    write_set(&dir, &tars, n);
    eprintln!(
        "{n} JPEGs and their archives written in {:?}",
        started.elapsed()
    );
    let extra = format!(
        "[inference]\nthreads = 1\nweights_dir = \"{}\"\n",
        weights.display()
    );
    let c = Cluster::start("large", NODES, &t, &extra);
    let all: Vec<String> = c.nodes.iter().map(|(_, a)| a.clone()).collect();
    c.wait_views(&all, Duration::from_secs(120), "formation", |v| {
        v.len() == NODES && v.iter().all(|(_, _, s)| s == "alive")
    });
    let via = c.addr("H3");
    common::wait_for(Duration::from_secs(60), "a coordinator", || {
        common::ctl_within(&via, Command::C1, Duration::from_secs(5))
            .ok()?
            .ok()
    });
    json(
        &via,
        Command::C3 {
            model: "resnet50".into(),
            batch: 16,
        },
        Duration::from_secs(30),
    );
    let t_put = Instant::now();
    json(
        &via,
        Request::Put {
            local: tars.display().to_string(),
            name: "inputs/bigset".into(),
        },
        Duration::from_secs(600),
    );
    eprintln!("archives stored in {:?}", t_put.elapsed());
    let t_job = Instant::now();
    let accepted = json(
        &via,
        Command::C4 {
            model: "resnet50".into(),
            input: "inputs/bigset".into(),
        },
        Duration::from_secs(120),
    );
    let job = accepted["job"].as_str().unwrap().to_string();
    assert_eq!(accepted["queries"].as_u64(), Some(n as u64), "{accepted}");
    common::wait_for(Duration::from_secs(3600), "the job completes", || {
        let reply = common::ctl_within(&via, Command::C1, Duration::from_secs(30))
            .ok()?
            .ok()?;
        let rows: Value = serde_json::from_str(&reply.json).ok()?;
        let row = rows
            .as_array()?
            .iter()
            .find(|r| r["job"] == job.as_str())?
            .clone();
        (row["complete"] == true).then_some(row)
    });
    eprintln!("job {job} complete in {:?}", t_job.elapsed());

    // The export, with the real binary, into a file.
    let out = root.join("results.jsonl");
    let status = Proc::new(common::dml_bin())
        .arg("ctl")
        .arg("--config")
        .arg(&c.config)
        .args(["--node", &via, "--timeout", "600", "results", &job, "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "dml ctl results failed: {status}");
    let text = fs::read_to_string(&out).unwrap();
    let rows: Vec<QueryResult> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(rows.len(), n, "one row per image");
    assert!(
        !root.join("results.jsonl.dml-export").exists(),
        "sidecar left"
    );

    // An export interrupted a third of the way, halfway through writing a row: run again,
    // it truncates the half row, goes on from its mark, and ends with the same file.
    let cut = n / 3;
    let head: usize = text.lines().take(cut).map(|l| l.len() + 1).sum();
    let partial = root.join("again.jsonl");
    let next_line = text.lines().nth(cut).unwrap_or("");
    fs::write(
        &partial,
        format!("{}{}", &text[..head], &next_line[..next_line.len() / 2]),
    )
    .unwrap();
    fs::write(
        root.join("again.jsonl.dml-export"),
        serde_json::json!({"job": job, "next": cut, "bytes": head, "rows": cut, "errors": 0})
            .to_string(),
    )
    .unwrap();
    let export = || {
        Proc::new(common::dml_bin())
            .arg("ctl")
            .arg("--config")
            .arg(&c.config)
            .args(["--node", &via, "results", &job, "--out"])
            .arg(&partial)
            .status()
            .unwrap()
    };
    let status = export();
    assert!(status.success(), "resumed export failed: {status}");
    assert!(
        fs::read_to_string(&partial).unwrap() == text,
        "the resumed export differs from the uninterrupted one"
    );
    assert!(
        !root.join("again.jsonl.dml-export").exists(),
        "sidecar left"
    );
    // Without a mark, an existing file is not replaced.
    assert_eq!(
        export().code(),
        Some(1),
        "an existing export is not overwritten"
    );

    // What `dml classify` says of each image, from the same weights.
    let t_cls = Instant::now();
    let cls = Proc::new(common::dml_bin())
        .args([
            "classify",
            "--model",
            "resnet50",
            "--threads",
            "2",
            "--json",
            "--weights",
        ])
        .arg(&weights)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(cls.status.success(), "dml classify failed");
    let mut want: BTreeMap<String, Value> = BTreeMap::new();
    for l in String::from_utf8_lossy(&cls.stdout).lines() {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        want.insert(v["file"].as_str().unwrap().to_string(), v);
    }
    assert_eq!(want.len(), n);
    eprintln!("dml classify of {n} images in {:?}", t_cls.elapsed());

    let mut disagree = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.q as usize, i, "rows in query order, each once: {r:?}");
        assert_eq!(r.job, job);
        let (archive_name, entry) = r.query.split_once('!').unwrap_or_else(|| panic!("{r:?}"));
        let k = i / PER_ARCHIVE;
        assert_eq!(archive_name, format!("inputs/bigset/part-{k:03}.tar"));
        assert_eq!(entry, format!("img{i:05}.jpg"), "entry order kept");
        assert!(r.error.is_none(), "{r:?}");
        let cluster: Vec<(u64, f64)> = r
            .top5
            .iter()
            .map(|t| (t.index as u64, f64::from(t.prob)))
            .collect();
        let local = top5_of(&want[entry]["top5"]);
        if !same_top5(&cluster, &local) {
            disagree.push(format!(
                "{entry}: cluster {cluster:?} vs classify {local:?}"
            ));
        }
    }
    assert!(
        disagree.is_empty(),
        "{} of {n} images classified differently, e.g. {:?}",
        disagree.len(),
        &disagree[..disagree.len().min(5)]
    );
    eprintln!("all {n} rows checked; {:?} in all", started.elapsed());
    drop(c);
    let _ = fs::remove_dir_all(&root);
}
