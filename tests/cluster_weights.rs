//! Weights as cluster data (issue 18), on real processes: `dml weights publish` refuses a
//! file of the wrong shape naming the tensor and stores nothing; a published version is
//! loaded by nodes with no weights of their own and classifies exactly like `dml
//! classify` with the same file; every result names the version and hash; a job keeps
//! its version while a new one is published, and the next job runs on the new one; a
//! node whose local file differs is never assigned and C5 says why; a damaged cached
//! copy is detected by its hash and fetched again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::time::Duration;

use dml_actors::control::{Command, Request};
use dml_actors::jobs::types::QueryResult;
use dml_cluster::{Cluster, Options, Stop, TestConfig};
use dml_models::{Network, Weights};
use serde_json::Value;

mod common;

const SECRET: &str = common::SECRET;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_dml"))
}

/// Half-precision synthetic ResNet-50 weights with `seed` (about 51 MB), and their hash.
fn weights_file(path: &Path, seed: u64) -> String {
    let w = Weights::synthetic(Network::ResNet50, seed).expect("synthetic weights");
    w.save_safetensors_f16(path).expect("save");
    dml_models::weights::sha256_file(path).expect("hash")
}

/// A safetensors file whose first tensor has the wrong shape (`conv1.weight` is
/// [64, 3, 7, 7] in ResNet-50).
fn wrong_shape_file(path: &Path) {
    let shape = [64usize, 3, 7, 8];
    let len: usize = shape.iter().product::<usize>() * 4;
    let mut header = format!(
        "{{\"conv1.weight\":{{\"dtype\":\"F32\",\"shape\":{shape:?},\"data_offsets\":[0,{len}]}}}}"
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(vec![0u8; len]);
    std::fs::write(path, bytes).unwrap();
}

/// Runs `dml weights ARGS` against `node`; (success, stdout, stderr).
fn weights_cmd(config: &Path, node: &str, args: &[&str]) -> (bool, String, String) {
    let out = Proc::new(bin())
        .arg("weights")
        .args(args)
        .arg("--config")
        .arg(config)
        .args(["--node", node])
        .output()
        .expect("run dml weights");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ask(c: &Cluster, via: &str, cmd: impl Into<Request>) -> Value {
    c.ask_json(via, cmd).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Stores a local folder under `name/`.
fn put_dir(c: &Cluster, via: &str, local: &Path, name: &str) {
    let put = Request::Put {
        local: local.to_string_lossy().into_owned(),
        name: name.into(),
    };
    c.ask(via, put, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}"))
        .unwrap_or_else(|e| panic!("put {name}: {e}"));
}

fn submit(c: &Cluster, via: &str, input: &str) -> String {
    let v = ask(
        c,
        via,
        Command::C4 {
            model: "resnet50".into(),
            input: input.into(),
        },
    );
    v["job"].as_str().expect("job id").to_string()
}

fn complete(c: &Cluster, via: &str, job: &str) -> bool {
    c.ask_json(via, Command::C1).ok().is_some_and(|rows| {
        rows.as_array()
            .into_iter()
            .flatten()
            .any(|r| r["job"] == job && r["complete"] == true)
    })
}

fn wait_complete(c: &Cluster, via: &str, job: &str) {
    common::wait_for(Duration::from_secs(120), &format!("job {job}"), || {
        complete(c, via, job).then_some(())
    });
}

fn results(c: &Cluster, via: &str, job: &str) -> Vec<QueryResult> {
    c.job_results(via, job, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}"))
        .unwrap_or_else(|e| panic!("results of {job}: {e}"))
}

/// `dml classify --json` of every image in `images` with the weights in `dir`, by file.
fn classify(dir: &Path, images: &Path) -> BTreeMap<String, Value> {
    let out = Proc::new(bin())
        .args([
            "classify",
            "--model",
            "resnet50",
            "--threads",
            "1",
            "--json",
            "--weights",
        ])
        .arg(dir)
        .arg(images)
        .output()
        .expect("run dml classify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json line"))
        .map(|v| {
            (
                v["file"].as_str().unwrap_or_default().to_string(),
                v["top5"].clone(),
            )
        })
        .collect()
}

/// Every row ran on `version` / `sha`, on a node other than `not_on`.
fn check_provenance(rows: &[QueryResult], version: u64, sha: &str, not_on: &str) {
    assert!(!rows.is_empty());
    for r in rows {
        assert_eq!(r.error, None, "{r:?}");
        assert_eq!(
            (r.weights_version, r.weights.as_str()),
            (Some(version), sha),
            "{r:?}"
        );
        assert_ne!(
            r.worker, not_on,
            "a node with other local weights ran {r:?}"
        );
    }
}

fn cache_file(dir: &Path, node: &str, sha: &str) -> PathBuf {
    dir.join("data")
        .join(node)
        .join("weights-cache")
        .join(format!("resnet50-{sha}.safetensors"))
}

#[test]
fn weights_are_published_once_pinned_per_job_and_verified() {
    let dir = std::env::temp_dir().join(format!("dml-test-weights-{}", std::process::id()));
    let layout = TestConfig {
        secret: SECRET,
        nodes: 4,
        ping_duration: 0.5,
        ping_timeout: 0.3,
        cleanup_time: 1.5,
        fd_extra: "",
        extra: "[inference]\nthreads = 1\n",
    }
    .write(&dir)
    .unwrap();
    let files = dir.join("files");
    let (v1_dir, v2_dir, local_dir) = (files.join("v1"), files.join("v2"), files.join("h4"));
    for d in [&v1_dir, &v2_dir, &local_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let v1 = weights_file(&v1_dir.join("resnet50.safetensors"), 1);
    let v2 = weights_file(&v2_dir.join("resnet50.safetensors"), 2);
    let local = weights_file(&local_dir.join("resnet50.safetensors"), 9);
    let bad = files.join("bad.safetensors");
    wrong_shape_file(&bad);
    let small = common::write_pngs(&files.join("small"), "s", 6, 1);
    common::write_pngs(&files.join("big"), "b", 40, 2);

    // H1..H3 have no weights at all and no synthetic fallback; H4 has its own file.
    let mut args_of = BTreeMap::new();
    args_of.insert(
        "H4".to_string(),
        vec![
            "--set".to_string(),
            format!("inference.weights_dir={}", local_dir.display()),
        ],
    );
    let opts = Options {
        env: vec![("RUST_LOG".into(), "info".into())],
        stop: Stop::Kill,
        own_dir: Some(dir.clone()),
        reply_within: Duration::from_secs(60),
        args_of,
        synthetic_weights: false,
        ..Options::default()
    };
    let mut c = Cluster::start(bin(), layout.clone(), opts).unwrap();
    c.wait_formed(Duration::from_secs(60)).unwrap();
    let addr = |n: &str| layout.addr(n).unwrap().to_string();
    let (h1, h4) = (addr("H1"), addr("H4"));
    let config = layout.config.clone();

    // Nothing published yet: C5 says that H1 serves no resnet50 and how to fix it.
    let c5 = common::wait_for(Duration::from_secs(20), "C5 weights notes", || {
        let v = c.ask_json(&h1, Command::C5).ok()?;
        let notes = v["weights"].to_string();
        (notes.contains(&format!("{h1}: resnet50: no weights"))
            && notes.contains("dml weights publish resnet50"))
        .then_some(notes)
    })
    .0;
    assert!(!c5.contains(&format!("{h4}: resnet50")), "{c5}");

    // A file of the wrong shape is refused, naming the tensor, and nothing is stored.
    let (ok, _, err) = weights_cmd(
        &config,
        &h1,
        &["publish", "resnet50", bad.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(
        err.contains("conv1.weight") && err.contains("nothing stored"),
        "{err}"
    );
    for prefix in ["weights/", "models/"] {
        let names = ask(&c, &h1, Command::ls_prefix(prefix));
        assert_eq!(names, serde_json::json!([]), "{prefix}");
    }

    // Publish v1 once; the list shows it active.
    let v1_file = v1_dir.join("resnet50.safetensors");
    let (ok, out, err) = weights_cmd(
        &config,
        &h1,
        &["publish", "resnet50", v1_file.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("published resnet50 v1") && out.contains(&v1),
        "{out}"
    );
    let (ok, out, err) = weights_cmd(&config, &h4, &["list"]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains(&v1) && l.contains("v1") && l.contains("(active)")),
        "{out}"
    );

    // Nodes without weights load v1 from SDFS and classify exactly like `dml classify`.
    put_dir(&c, &h1, &files.join("small"), "small");
    let job = submit(&c, &h1, "small");
    wait_complete(&c, &h1, &job);
    let rows = results(&c, &h1, &job);
    check_provenance(&rows, 1, &v1, &h4);
    let reference = classify(&v1_dir, &files.join("small"));
    assert_eq!(rows.len(), small.len());
    for r in &rows {
        let file = r.query.trim_start_matches("small/");
        let want = &reference[file];
        let got = serde_json::to_value(&r.top5).unwrap();
        for (g, w) in got.as_array().unwrap().iter().zip(want.as_array().unwrap()) {
            assert_eq!(g["index"], w["index"], "{file}: {got} vs {want}");
            let (g, w) = (g["prob"].as_f64().unwrap(), w["prob"].as_f64().unwrap());
            assert!((g - w).abs() < 1e-6, "{file}: {got} vs {want}");
        }
    }
    // The text export names the weights too.
    let line = dml_actors::control::jobs_text::result_line(&rows[0]);
    assert!(
        line.contains(&format!("weights v1 sha256:{}", &v1[..12])),
        "{line}"
    );
    // H4's own file differs: C5 says it is not assigned.
    let notes = common::wait_for(Duration::from_secs(20), "C5 on H4", || {
        let v = c.ask_json(&h1, Command::C5).ok()?;
        let notes = v["weights"].to_string();
        notes
            .contains(&format!(
                "{h4}: resnet50: local weights/ file {}",
                &local[..12]
            ))
            .then_some(notes)
    })
    .0;
    assert!(notes.contains("not assigned"), "{notes}");

    // v2 is published while a long job pinned to v1 runs: that job ends on v1, the next
    // job runs on v2.
    put_dir(&c, &h1, &files.join("big"), "big");
    ask(
        &c,
        &h1,
        Command::C3 {
            model: "resnet50".into(),
            batch: 1,
        },
    );
    let long = submit(&c, &h1, "big");
    let v2_file = v2_dir.join("resnet50.safetensors");
    let (ok, out, err) = weights_cmd(
        &config,
        &h1,
        &["publish", "resnet50", v2_file.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert!(out.contains("published resnet50 v2"), "{out}");
    assert!(
        !complete(&c, &h1, &long),
        "the long job ended before v2 was published: the test proves nothing"
    );
    let next = submit(&c, &h1, "small");
    wait_complete(&c, &h1, &long);
    wait_complete(&c, &h1, &next);
    check_provenance(&results(&c, &h1, &long), 1, &v1, &h4);
    check_provenance(&results(&c, &h1, &next), 2, &v2, &h4);

    // A damaged cached copy is detected by its hash and fetched again.
    let cached = cache_file(&dir, "H2", &v2);
    assert!(cached.is_file(), "{}", cached.display());
    c.kill9("H2").unwrap();
    let mut bytes = std::fs::read(&cached).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&cached, &bytes).unwrap();
    c.restart("H2").unwrap();
    common::wait_for(Duration::from_secs(60), "H2 fetches v2 again", || {
        let log = c.log("H2");
        let damaged = log.find("event=weights_cache_damaged")?;
        log[damaged..]
            .contains("event=weights_fetched")
            .then_some(())
    });
    assert_eq!(dml_models::weights::sha256_file(&cached).unwrap(), v2);
    let (ok, out, _) = weights_cmd(&config, &h1, &["list", "resnet50"]);
    assert!(ok);
    let listed: Vec<&str> = out.lines().collect();
    assert_eq!(listed.len(), 2, "{out}");
    assert!(
        listed[0].contains(&v1) && !listed[0].contains("(active)"),
        "{out}"
    );
    assert!(
        listed[1].contains(&v2) && listed[1].contains("(active)"),
        "{out}"
    );
}
