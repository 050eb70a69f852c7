//! `textrec-worker eval` (owned by the evaling work; stub until it lands).
use clap::Args;

/// Arguments of `eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {}

/// Run `eval`; returns the process exit code.
pub fn run(_args: EvalArgs) -> anyhow::Result<i32> {
    anyhow::bail!("eval is not built yet")
}
