//! `[inference] precision` end to end (issue 16), on the real binary: `dml classify
//! --precision` at every precision this CPU has gives the fp32 top-1 on real photographs;
//! a 3-node cluster configured for int8 runs a job whose every result row says int8 and
//! agrees with `dml classify --precision int8`; a bad precision is a one-line error, on the
//! command line and in config.toml (naming the key).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{temp, Cluster, Timings};
use dml_models::Precision;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// The sample photographs shipped with the repository (not their licence note), copied
/// into `dir`.
fn photos(dir: &Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("samples/images");
    let out = dir.join("photos");
    fs::create_dir_all(&out).unwrap();
    for e in fs::read_dir(&src).expect("samples/images") {
        let path = e.unwrap().path();
        if matches!(
            path.extension().and_then(|x| x.to_str()),
            Some("png" | "jpg")
        ) {
            fs::copy(&path, out.join(path.file_name().unwrap())).unwrap();
        }
    }
    out
}

/// `dml classify --json` at `precision`: file name -> top-1 class index.
fn classify(weights: &Path, dir: &Path, precision: &str) -> BTreeMap<String, u64> {
    let o: Output = Command::new(common::dml_bin())
        .args([
            "classify",
            "--threads",
            "2",
            "--json",
            "--precision",
            precision,
        ])
        .arg("--weights")
        .arg(weights)
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run dml classify");
    assert!(
        o.status.success(),
        "classify {precision}: {}",
        text(&o.stderr)
    );
    text(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            (
                v["file"].as_str().expect("file").to_string(),
                v["top5"][0]["index"].as_u64().expect("top-1"),
            )
        })
        .collect()
}

#[test]
fn precisions_agree_on_photographs_and_run_on_a_cluster() {
    let weights = temp("precision-weights");
    common::synth_weights(&weights.0);
    let samples = photos(&weights.0);
    let samples = || samples.clone();
    let fp32 = classify(&weights.0, &samples(), "fp32");
    assert!(fp32.len() >= 4, "{fp32:?}");
    let mut have_int8 = false;
    for p in [Precision::Bf16, Precision::Int8] {
        if let Err(why) = p.paths() {
            eprintln!("SKIPPED {p}: {why}");
            // The command must say so in one line rather than fall back silently.
            let o = Command::new(common::dml_bin())
                .args(["classify", "--precision", p.name(), "--weights"])
                .arg(&weights.0)
                .arg(samples())
                .output()
                .expect("run dml classify");
            assert!(!o.status.success());
            assert!(text(&o.stderr).contains(p.name()), "{}", text(&o.stderr));
            continue;
        }
        have_int8 |= p == Precision::Int8;
        assert_eq!(
            classify(&weights.0, &samples(), p.name()),
            fp32,
            "{p} top-1"
        );
    }

    // A precision that does not exist: one line naming the choices.
    let o = Command::new(common::dml_bin())
        .args(["classify", "--precision", "fp16", "--weights"])
        .arg(&weights.0)
        .arg(samples())
        .output()
        .expect("run dml classify");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("unknown precision `fp16` (expected fp32, bf16 or int8)"),
        "{}",
        text(&o.stderr)
    );

    // In config.toml (here through --set, which overrides a key of it): the node
    // refuses to start, naming the key.
    let o = Command::new(common::dml_bin())
        .args(["node", "--config"])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config.toml"))
        .args([
            "--set",
            "inference.precision=fp16",
            "--hostname",
            "127.0.0.1",
        ])
        .args(["--port", "1", "--no-console"])
        .stdin(Stdio::null())
        .output()
        .expect("run dml node");
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("inference.precision") && err.contains("fp16"),
        "{err}"
    );

    if !have_int8 {
        eprintln!("SKIPPED the int8 cluster: this CPU has no int8 path");
        return;
    }
    let int8 = classify(&weights.0, &samples(), "int8");
    let t = Timings::fast();
    let extra = format!(
        "[inference]\nthreads = 1\nprecision = \"int8\"\nweights_dir = \"{}\"\n",
        weights.0.display()
    );
    let c = Cluster::start("precision", 3, &t, &extra);
    let all: Vec<String> = c.nodes.iter().map(|(_, a)| a.clone()).collect();
    c.wait_views(&all, Duration::from_secs(120), "formation", |v| {
        v.len() == 3 && v.iter().all(|(_, _, s)| s == "alive")
    });
    let h1 = c.addr("H1");
    let put = Command::new(common::dml_bin())
        .args(["ctl", "--config"])
        .arg(&c.config)
        .args(["--node", &h1, "put"])
        .arg(samples())
        .arg("inputs/photos")
        .stdin(Stdio::null())
        .output()
        .expect("run dml ctl put");
    assert!(put.status.success(), "put: {}", text(&put.stderr));
    let o = Command::new(common::dml_bin())
        .args(["ctl", "--config"])
        .arg(&c.config)
        .args(["--node", &h1, "C4", "resnet50", "inputs/photos"])
        .stdin(Stdio::null())
        .output()
        .expect("run dml ctl C4");
    assert!(o.status.success(), "C4: {}", text(&o.stderr));
    // The first stdout line is `job J accepted: ...`.
    let job = text(&o.stdout)
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("job "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job line: {}", text(&o.stdout)))
        .to_string();
    let rows = common::job_results(&h1, &job).expect("results");
    assert_eq!(rows.len(), int8.len(), "{rows:?}");
    for r in &rows {
        assert_eq!(r.precision.as_deref(), Some("int8"), "{r:?}");
        let file = r.query.rsplit('/').next().unwrap();
        assert_eq!(
            Some(r.top5[0].index as u64),
            int8.get(file).copied(),
            "{file}: the cluster's int8 top-1 differs from dml classify --precision int8"
        );
    }
}
