//! `textrec-worker serve` (owned by the serveing work; stub until it lands).
pub mod client;
use clap::Args;

/// Arguments of `serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {}

/// Run `serve`; returns the process exit code.
pub fn run(_args: ServeArgs) -> anyhow::Result<i32> {
    anyhow::bail!("serve is not built yet")
}
