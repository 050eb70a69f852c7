//! `textrec-worker recognize` (owned by the recognizeing work; stub until it lands).
use clap::Args;

/// Arguments of `recognize`.
#[derive(Args, Debug)]
pub struct RecognizeArgs {}

/// Run `recognize`; returns the process exit code.
pub fn run(_args: RecognizeArgs) -> anyhow::Result<i32> {
    anyhow::bail!("recognize is not built yet")
}
