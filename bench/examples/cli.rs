//! The models' command-line shells (`dml_models::cli`, `dml_bench::models`) without the
//! rest of `dml` (handy while the other crates are being built, and for benchmarks):
//!   cli synth DIR [SEED] | fetch DIR | classify MODEL WEIGHTS DIR [--json] | bench WEIGHTS [BATCH..]
//!   | passes WEIGHTS (one forward pass per stdin line `<network> <batch>`)
//! Threads come from DML_THREADS (default 2).

use std::path::Path;

use dml_bench::models::{bench_models, serve_passes};
use dml_models::cli as models_cli;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let threads: usize = std::env::var("DML_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    match arg(0) {
        "synth" => models_cli::weights_synth(Path::new(arg(1)), arg(2).parse().unwrap_or(0)),
        "fetch" => models_cli::weights_fetch(Path::new(arg(1))),
        "classify" => models_cli::classify(
            arg(1),
            Path::new(arg(2)),
            Path::new(arg(3)),
            threads,
            dml_models::Precision::Fp32,
            arg(4) == "--json",
            &mut |_, _, _| {},
        )
        .and_then(|done| match done.failed.len() {
            0 => Ok(()),
            n => anyhow::bail!("{n} of {} images failed: {:?}", done.total, done.failed),
        }),
        "bench" => {
            let batches: Vec<usize> = args.iter().skip(2).filter_map(|b| b.parse().ok()).collect();
            let all = args.iter().any(|a| a == "--all-kernels");
            bench_models(Path::new(arg(1)), threads, &batches, &[], all)
        }
        "passes" => serve_passes(Path::new(arg(1)), threads, &[dml_models::Precision::Fp32]),
        _ => anyhow::bail!("usage: cli synth DIR [SEED] | fetch DIR | classify MODEL WEIGHTS DIR [--json] | bench WEIGHTS [BATCH..] | passes WEIGHTS"),
    }
}
