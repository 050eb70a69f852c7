//! End-to-end suite against a real cluster. Runs only when `TEXTREC_E2E_KUBECONFIG` names a
//! kubeconfig; otherwise every test prints why it skipped and passes. See operator/README.md
//! ("End-to-end tests") for kind/k3d instructions.
//!
//! Environment:
//! - `TEXTREC_E2E_KUBECONFIG` — kubeconfig of a disposable cluster (required).
//! - `TEXTREC_E2E_WORKER_IMAGE` — worker image the cluster can run (default `textrec-worker:e2e`,
//!   e.g. loaded with `kind load docker-image`).
//! - `TEXTREC_E2E_STORAGE` — storage URL the pods can write (default `file:///e2e` on the PVC
//!   `textrec-e2e`, which the test creates).
//! - `TEXTREC_E2E_NO_KUBELET=1` — the cluster has no kubelets (kwok, envtest-style API server):
//!   pod outcomes are simulated by patching pod status instead of running the worker.
//!
//! Every test that starts an operator of its own uses a namespace of its own (`textrec-e2e` for
//! the grid run, `textrec-e2e-<what it tests>` for the others), since they run concurrently. The operator runs in the test process with the kubeconfig's
//! credentials, so the chart's RBAC is not what is exercised here (it may read Secrets, for
//! instance); `submit` runs as the built binary with the same kubeconfig.

//!
//! `support` holds what the tests share; each other module is one area of behaviour.

mod support;

mod early_stopping;
mod fine_tune;
mod grid;
mod serving;
mod submit;
mod trial_status;
