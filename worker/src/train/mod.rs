//! `textrec-worker train` (owned by the training work; stub until it lands).
use clap::Args;

/// Arguments of `train`.
#[derive(Args, Debug)]
pub struct TrainArgs {}

/// Run `train`; returns the process exit code.
pub fn run(_args: TrainArgs) -> anyhow::Result<i32> {
    anyhow::bail!("train is not built yet")
}
