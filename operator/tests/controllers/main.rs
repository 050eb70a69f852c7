//! The controllers against a fake API: the exact objects they write.

#[path = "../support/fake_api.rs"]
pub mod fake_api;

mod early_stopping;
mod harness;
mod model_deployment;
mod promotion_jobs;
mod rbac;
mod reconcile_spans;
mod training_run;
mod trial_pods;
