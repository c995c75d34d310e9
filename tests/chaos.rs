//! The CI form of `dml bench chaos`: 10 nodes, 10,000 files, two back-to-back waves of
//! 3 kill -9s (the second as soon as the first is re-replicated; nodes left dead) while
//! clients keep putting, getting, deleting and asking `get-versions`. Every read is
//! checked against the history; at the end every name must be back on m+1 = 4 live
//! nodes and read back byte-exact from a survivor.

use std::time::Duration;

use dml_bench::chaos::{soak, Config, Plan, M};

#[test]
fn sdfs_survives_two_waves_of_three_kills_under_load() {
    let seed = std::env::var("DML_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(13);
    let dir = std::env::temp_dir().join(format!("dml-chaos-test-{}", std::process::id()));
    let cfg = Config {
        seed,
        nodes: 10,
        files: 10_000,
        clients: 3,
        plan: Plan::Waves(2),
        duration: Duration::ZERO,
        op_timeout: Duration::from_secs(20),
        // Re-replication counts as stalled after 2 minutes without progress.
        stall: Duration::from_secs(120),
        dir: dir.clone(),
        // Kept until the checks pass, so that a failure leaves the logs to read.
        keep: true,
        partitions: false,
    };
    let s = soak(std::path::Path::new(env!("CARGO_BIN_EXE_dml")), &cfg).expect("the soak ran");
    s.print();
    assert!(
        s.violations.is_empty(),
        "seed {seed}: {} violations (rerun with DML_CHAOS_SEED={seed}); first: {:?}",
        s.violations.len(),
        s.violations.first()
    );
    assert_eq!(s.faults.get("kill -9"), Some(&6), "two waves of 3 kills");
    assert_eq!(s.live_at_end, 4);
    let reads = s.ops.get("Get").map_or(0, |o| o.0);
    assert!(
        reads >= 10_000,
        "the final pass read every name ({reads} reads)"
    );
    assert!(
        s.waves.iter().all(|w| w.took.is_some()) && s.waves.len() == 3,
        "m+1 = {} replicas after each wave and at the end",
        M + 1
    );
    let _ = std::fs::remove_dir_all(&dir);
}
