//! `dml bench idunno` (SKELETON by the lead; being written).

/// Options of `dml bench idunno`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Trials per measurement.
    #[arg(long, default_value_t = 5)]
    pub trials: usize,
}

pub fn run(_args: &Args) -> anyhow::Result<()> {
    anyhow::bail!("dml bench idunno is not written yet")
}
