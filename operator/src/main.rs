//! `textrec-operator`: `run` (the controller manager), `crd` (prints the CRDs), `local`
//! (runs the same manifests on this machine) and `submit` (creates a TrainingRun and waits for
//! its outcome, for CI).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "textrec-operator",
    version,
    about = "Kubernetes operator for textrec training runs and model deployments"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller manager (leader election, metrics, both controllers).
    Run(textrec_operator::manager::RunOptions),
    /// Print both CRDs as YAML (what `crds/` holds).
    Crd {
        /// Write one file per CRD into this folder instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Run TrainingRuns and ModelDeployments on this machine, without a cluster.
    ///
    /// The same manifests as in the cluster, validated by the same rules, run as
    /// `textrec-worker` child processes: `local run FILE...`, then `local status`,
    /// `local rollback NAME N` and `local stop`.
    #[command(subcommand)]
    Local(textrec_operator::local::cli::LocalCommand),
    /// Create a TrainingRun from a manifest; with --wait, follow it and exit by its outcome.
    ///
    /// For CI: `submit run.yaml --generate-name --wait --timeout 2h --require 'cer<=0.05'`
    /// creates the run (the API server validates it), prints a line per trial as it
    /// progresses, then the best model (URL, sha256, metric), and exits 0 only if the run
    /// succeeded and every requirement holds. Uses the kubeconfig (KUBECONFIG, ~/.kube/config)
    /// or the in-cluster ServiceAccount.
    Submit(textrec_operator::submit::SubmitArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { out_dir: None } => {
            print!("{}", textrec_operator::crd::crds_yaml());
            Ok(())
        }
        Command::Crd { out_dir: Some(dir) } => {
            std::fs::create_dir_all(&dir)?;
            for (file, yaml) in textrec_operator::crd::crd_files() {
                std::fs::write(dir.join(file), yaml)?;
            }
            Ok(())
        }
        Command::Local(cmd) => match textrec_operator::local::cli::main(cmd) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                // A user-facing message, not a backtrace: these are mostly bad input.
                eprintln!("error: {e:#}");
                std::process::exit(1)
            }
        },
        Command::Submit(args) => std::process::exit(textrec_operator::submit::main(args)),
        Command::Run(opts) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(textrec_operator::manager::run(opts)),
    }
}
