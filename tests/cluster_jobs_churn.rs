//! Issue 13, item 4 on a real 10-node loopback cluster (the built binary, fast failure-
//! detector timings, synthetic weights, 2,000 tiny generated PNGs): a ResNet-50 job while
//! kill -9 takes out the coordinator and two workers, then the new coordinator, the new
//! standby and one more. The scenario and its checks are `dml bench jobs-churn`'s
//! (`dml_bench::jobs_churn::scenario`): every query counted once, `C4 --results` lists
//! every input once, every result file readable with `get` and held by all 4 survivors.
//! `DML_CHURN_SEED` replays another choice of victims.

mod common;

use std::time::Instant;

use dml_bench::jobs_churn::{scenario, Setup};

const NODES: usize = 10;
const IMAGES: usize = 2000;

#[test]
fn a_job_over_2000_images_survives_two_waves_that_take_coordinator_and_standby() {
    let seed: u64 = std::env::var("DML_CHURN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(13);
    let dir = std::env::temp_dir().join(format!("dml-test-jobs-churn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let weights = dir.join("weights");
    common::synth_weights(&weights);
    let images = dir.join("images");
    common::write_pngs(&images, "img", IMAGES, seed);
    let started = Instant::now();
    let setup = Setup {
        exe: std::path::Path::new(common::dml_bin()),
        dir: &dir.join("cluster"),
        weights: &weights,
        images: &images,
        nodes: NODES,
        seed,
        batch: 8,
        second_job: false,
    };
    match scenario(&setup, &|line| eprintln!("{line}")) {
        Ok(report) => {
            eprintln!("{}", report.render());
            eprintln!("test wall time {:?}", started.elapsed());
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(e) => panic!(
            "seed {seed}: {e:#}\nlogs and data kept in {}",
            dir.join("cluster").display()
        ),
    }
}
