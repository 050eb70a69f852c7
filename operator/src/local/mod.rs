//! The local runner: `textrec-operator local run FILE...` runs the same `TrainingRun` and
//! `ModelDeployment` manifests that go to a cluster, on one machine, as child processes.
//!
//! It is a small stand-in for the API server, the Job controller and the Deployment controller,
//! wrapped around the operator's own pure decision code, so that local and cluster semantics
//! cannot drift apart:
//!
//! - [`manifest`] reads multi-document YAML files and validates them with the code the cluster
//!   runs ([`crate::validate::plan_trials`]) plus the CRD's CEL rules;
//! - [`api_server`] stores the objects as the API server would (generations, rollback
//!   requests), and [`inbox`] carries requests from other `local` commands to a running
//!   `local run` ([`handover`] is the side of a second `local run` that hands its manifests on);
//! - [`run_controller`] computes each TrainingRun's plan and status with
//!   [`crate::run_plan::plan`], from synthetic Job and Pod objects that [`trials`] derives from
//!   the local trial records; [`trials`] also holds the restart / preemption /
//!   configuration-error state machine of one trial (a pure function);
//! - [`job_controller`] runs the trials' worker processes ([`process`] starts and signals
//!   them): reaping, backoff, deadlines, stopping;
//! - [`deployment_controller`] decides each ModelDeployment's model with
//!   [`crate::deployment_plan`], and [`serving`] runs `textrec-worker serve` for it and switches
//!   models by hot reload (the same model pointer contract as the cluster's HotReload strategy);
//! - [`state`] keeps everything in one JSON file under the storage root, written atomically, so
//!   `local run` continues where it stopped and `local status` prints what `kubectl get` would;
//! - [`display`] shows live progress (redrawn on a terminal, plain log lines otherwise);
//! - [`runner`] is the loop tying them together, and [`cli`] the subcommands.

pub mod api_server;
pub mod cli;
pub mod deployment_controller;
pub mod display;
pub mod handover;
pub mod inbox;
pub mod job_controller;
pub mod manifest;
pub mod process;
pub mod run_controller;
pub mod runner;
pub mod serving;
pub mod state;
pub mod trials;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Storage of the local runner when neither `--storage` nor a manifest names one.
pub const DEFAULT_STORAGE: &str = "file://./textrec-data";

/// The current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}
