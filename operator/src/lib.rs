//! textrec's Kubernetes operator: the `TrainingRun` and `ModelDeployment` custom resources,
//! their controllers and the manager that runs them.
//!
//! Everything that decides (search-space expansion, trial naming, spec validation, Job and
//! Deployment construction, status aggregation, promotion) is a pure function in a module that
//! needs no Kubernetes client, so the local runner reuses it: [`search`], [`naming`],
//! [`validate`], [`references`], [`worker_args`], [`job`], [`pod_security`], [`trial_state`],
//! [`pod_problems`], [`early_stopping`], [`run_plan`], [`deployment_plan`], [`promotion`], [`serving`],
//! [`conditions`]. The [`controller`] modules only gather inputs and apply the results, and
//! [`local`] runs the same decisions over local processes instead of Kubernetes objects.
//! [`submit`] is the CI client: it creates a TrainingRun and waits for its outcome.

pub mod conditions;
pub mod controller;
pub mod crd;
pub mod defaults;
pub mod deployment_plan;
pub mod early_stopping;
pub mod evaluation;
pub mod http;
pub mod job;
pub mod leader;
pub mod lineage;
pub mod local;
pub mod manager;
pub mod metrics;
pub mod naming;
pub mod pod_parts;
pub mod pod_problems;
pub mod pod_security;
pub mod progress;
pub mod promotion;
pub mod references;
pub mod run_plan;
pub mod search;
pub mod serving;
pub mod submit;
pub mod trial_state;
pub mod ui;
pub mod util;
pub mod validate;
pub mod worker_args;
